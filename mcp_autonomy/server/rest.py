"""REST under /autonomous: the operator surface for scripts, dashboards and curl.

Every endpoint is a thin call into `AutonomousSystem`, the same call the matching MCP tool makes
with the same validation ranges, and each POST is audited as its tool is
(`record_manual_action`, client `rest:<address> <user-agent>`). Inputs are pydantic models,
bodies are the engine's models, and an error names the input at fault and what it accepts:
`{"error": {"field", "message", "allowed"}}`. The OpenAPI 3.1 document at
/autonomous/openapi.json is generated from the same endpoint table and the same models.

Status codes: 400 a malformed request (bad query or path parameter, a `since` outside
1970..9999, body not JSON, NaN or Infinity in it, nested too deeply), 404 an unknown provider,
payment or path, 405 a wrong method, 413 a body over 64 KiB, 415 a body not sent as JSON,
422 a JSON body whose content is refused (missing `reason`, `replicas` outside the bounds),
502 the scale backend failed; 401 (token), 403 (the token lacks the scope, or a foreign Origin) and
421 (foreign Host) come from the same protections as `/mcp`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, Literal

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from mcp_autonomy import __version__
from mcp_autonomy.autonomy.healer import HealResult
from mcp_autonomy.autonomy.incidents import IncidentStatus
from mcp_autonomy.autonomy.maintenance import MaintenanceStatus
from mcp_autonomy.autonomy.predictor import PredictionStatus
from mcp_autonomy.autonomy.scaler import ScaleBoundsError, ScaleResult
from mcp_autonomy.autonomy.scaling import ScaleBackendError
from mcp_autonomy.autonomy.system import AutonomousSystem, StatusSummary, SystemStats
from mcp_autonomy.config import MAX_REPLICAS_LIMIT
from mcp_autonomy.events import EventType
from mcp_autonomy.payments import CallbackState, PaymentRecord
from mcp_autonomy.pii import mask_text
from mcp_autonomy.providers.base import ProviderError, TransactionStatus
from mcp_autonomy.providers.registry import UnknownProviderError
from mcp_autonomy.server.auth.guard import with_caller
from mcp_autonomy.server.auth.scopes import route_scope
from mcp_autonomy.server.dashboard import DashboardSnapshot, dashboard_snapshot
from mcp_autonomy.server.mcp import (
    CallbackList,
    EventList,
    IncidentList,
    MaintenanceWindowList,
    OptimizationList,
    PaymentList,
    PredictionList,
    Reason,
)
from mcp_autonomy.store import StoreUnavailable

logger = logging.getLogger(__name__)

PREFIX = "/autonomous"
OPENAPI_PATH = f"{PREFIX}/openapi.json"
MAX_BODY_BYTES = 64 * 1024
EVENTS_LIMIT_MAX = 1000
"""As `get_events`."""
LIST_LIMIT_MAX = 500
"""As `get_incidents`, `get_maintenance_windows` and `get_optimizations`."""
PROVIDER_NAME_MAX = 64
"""As the MCP tools' `provider`."""
PAYMENT_KEY_MAX = 100
"""As `PaymentRequest.idempotency_key`."""
SINCE_MIN = datetime(1970, 1, 1, tzinfo=UTC)
SINCE_MAX = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
"""`since` is compared with epoch seconds: before the epoch there is nothing stored, and the
bounds keep the conversion inside what `datetime` can represent."""
DATE_TIME_ALLOWED = (
    "an ISO 8601 date-time from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z (UTC when no offset is "
    "given), e.g. 2026-11-28T10:00:00Z"
)
MAX_BODY_DEPTH = 8
"""How deeply a JSON body may nest; the deepest body the API takes has depth 1."""
ECHO_MAX_CHARS = 80
"""Values of the request quoted back in an error are cut to this many characters."""
JSON = "application/json"
API_DESCRIPTION = (
    "Operate the mcp-autonomy engine over plain HTTP: the same engine calls as the MCP tools, with the "
    "same validation ranges; POST actions are audited like the tools. Phone numbers are masked (+2547****0002) "
    "everywhere but getPayment. Errors are JSON naming the input at "
    'fault and what it accepts: {"error": {"field", "message", "allowed"}, "other_errors": [...]}.'
)


# --- errors -------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """One problem with a request."""

    field: str | None = Field(
        description="The input at fault: a query or path parameter, a body field (dotted path), `body`, or "
        "a header (`content-type`, `host`, `origin`); null when no single input is"
    )
    message: str = Field(description="What is wrong, naming the value")
    allowed: str | list[str] | None = Field(
        None, description="What the field accepts: a range, the allowed values, or a format"
    )


class ErrorResponse(BaseModel):
    """The body of every error answered by /autonomous."""

    error: ErrorDetail
    other_errors: list[ErrorDetail] = Field(
        default_factory=list, description="Further problems found in the same request"
    )


class Unauthorized(BaseModel):
    """The 401 body of the token check, shared with /mcp (`detail` repeats `error_description`)."""

    error: Literal["unauthorized", "invalid_token"]
    error_description: str
    detail: str


class InsufficientScope(BaseModel):
    """The 403 body when the token is valid but lacks the operation's scope (`x-required-scope`)."""

    error: Literal["insufficient_scope"]
    error_description: str
    scope: str


class ApiError(Exception):
    """An error answer: the status and the problems it names."""

    def __init__(self, status: int, *details: ErrorDetail, headers: dict[str, str] | None = None) -> None:
        super().__init__(details[0].message)
        self.status = status
        self.details = details
        self.headers = headers

    def response(self) -> Response:
        body = ErrorResponse(error=self.details[0], other_errors=list(self.details[1:]))
        return Response(
            body.model_dump_json(), status_code=self.status, media_type=JSON, headers=self.headers
        )


# --- inputs -------------------------------------------------------------------------------


def _control_characters(text: str) -> bool:
    return any((ord(ch) < 32 and ch not in "\t\n\r") or ord(ch) == 127 for ch in text)


def _supported_since(value: datetime) -> datetime:
    """`value` in UTC (naive taken as UTC) within SINCE_MIN..SINCE_MAX."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    if not SINCE_MIN <= value <= SINCE_MAX:
        raise ValueError("outside the supported range 1970-01-01T00:00:00Z..9999-12-31T23:59:59Z")
    return value


Since = Annotated[datetime, AfterValidator(_supported_since)]
"""A `since` filter: a date-time the engine can compare with its epoch timestamps."""

ProviderFilter = Annotated[
    str, Field(min_length=1, max_length=PROVIDER_NAME_MAX, description="Only this provider, e.g. mpesa")
]


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        # A NUL would reach the store's query (PostgreSQL refuses it in text).
        if isinstance(value, str) and _control_characters(value):
            raise ValueError("control characters are not allowed")
        return value


class NoQuery(_Query):
    """No query parameters."""


class PredictionsQuery(_Query):
    """Filters of `GET /autonomous/predictions` (as `get_predictions`)."""

    provider: ProviderFilter | None = None
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, allow_inf_nan=False, description="Minimum confidence")
    status: PredictionStatus | None = Field(None, description="Only this verdict")
    limit: int = Field(100, ge=1, le=LIST_LIMIT_MAX, description="At most this many, newest first")


class OptimizationsQuery(_Query):
    """Filters of `GET /autonomous/optimizations` (as `get_optimizations`)."""

    provider: ProviderFilter | None = None
    limit: int = Field(50, ge=1, le=LIST_LIMIT_MAX, description="At most this many, newest first")


class EventsQuery(_Query):
    """Filters of `GET /autonomous/events` (as `get_events`)."""

    provider: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=PROVIDER_NAME_MAX,
                description="Only events about this provider (stored events may name a provider no longer "
                "registered, so any name is accepted)",
            ),
        ]
        | None
    ) = None
    type: EventType | None = Field(None, description="Only this event type")
    since: Since | None = Field(None, description="Only events at or after this time (ISO 8601)")
    limit: int = Field(100, ge=1, le=EVENTS_LIMIT_MAX, description="The newest this many")


class IncidentsQuery(_Query):
    """Filters of `GET /autonomous/incidents` (as `get_incidents`, plus `since`)."""

    provider: ProviderFilter | None = None
    status: IncidentStatus | None = Field(None, description="open | resolved")
    since: Since | None = Field(None, description="Only incidents opened at or after this time (ISO 8601)")
    limit: int = Field(50, ge=1, le=LIST_LIMIT_MAX, description="At most this many, newest first")


class MaintenanceQuery(_Query):
    """Filters of `GET /autonomous/maintenance` (as `get_maintenance_windows`)."""

    provider: ProviderFilter | None = None
    status: MaintenanceStatus | None = Field(None, description="Only this status")
    limit: int = Field(50, ge=1, le=LIST_LIMIT_MAX, description="At most this many, latest start first")


class PaymentsQuery(_Query):
    """Filters of `GET /autonomous/payments` (as `list_payments`)."""

    status: TransactionStatus | None = Field(None, description="Only this status, e.g. needs_reconciliation")
    provider: ProviderFilter | None = None
    limit: int = Field(50, ge=1, le=LIST_LIMIT_MAX, description="At most this many, newest first")


class CallbacksQuery(_Query):
    """Filters of `GET /autonomous/callbacks` (as `get_callbacks`)."""

    provider: ProviderFilter | None = None
    state: CallbackState | None = Field(None, description="Only this state")
    idempotency_key: str | None = Field(None, max_length=100, description="Only this payment's callbacks")
    limit: int = Field(50, ge=1, le=LIST_LIMIT_MAX, description="At most this many, newest first")


class _Body(BaseModel):
    # Strict: `"replicas": "5"` or `"force": "yes"` is refused, not coerced, on a destructive action.
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _printable(cls, value: Any) -> Any:
        # A NUL or an escape sequence in a reason would land in the audit log and in terminals
        # (and PostgreSQL text refuses NUL outright).
        if isinstance(value, str) and _control_characters(value):
            raise ValueError("control characters are not allowed (tab and newline are)")
        return value


class HealRequest(_Body):
    """Body of `POST /autonomous/heal/{provider}` (as `heal_provider`)."""

    reason: Reason


class ResolvePaymentRequest(_Body):
    """Body of `POST /autonomous/payments/{key}/resolve` (as `resolve_payment`)."""

    outcome: Literal["succeeded", "failed"] = Field(description="What the provider's own records show")
    reason: Reason
    provider_reference: str | None = Field(None, max_length=100, description="The provider's id or receipt")


class OtpRequest(_Body):
    """Body of `POST /autonomous/payments/{key}/otp` (as `submit_transfer_otp`)."""

    otp: str = Field(min_length=4, max_length=12, pattern=r"^[0-9A-Za-z]+$", description="The merchant's OTP")
    reason: Reason


class ScaleRequest(_Body):
    """Body of `POST /autonomous/scale` (as `scale_to`)."""

    replicas: int = Field(ge=0, le=MAX_REPLICAS_LIMIT, description="Desired replica count")
    reason: Reason
    force: bool = Field(False, description="Allow a count outside MIN_INSTANCES..MAX_INSTANCES")


# --- validation -> errors -----------------------------------------------------------------


@cache
def _allowed_by_field(model: type[BaseModel]) -> dict[str, str | list[str]]:
    """What each field of `model` accepts, in words, from its JSON schema."""
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.get("$defs", {})
    described: dict[str, str | list[str]] = {}
    for name, prop in schema.get("properties", {}).items():
        allowed = _describe(prop, defs)
        if allowed is not None:
            described[name] = allowed
    return described


def _describe(prop: dict[str, Any], defs: dict[str, Any]) -> str | list[str] | None:
    ref = prop.get("$ref")
    if isinstance(ref, str):
        prop = {**defs[ref.rsplit("/", 1)[-1]], **{k: v for k, v in prop.items() if k != "$ref"}}
    branches = [b for b in prop.get("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        return _describe(branches[0], defs)
    if "enum" in prop:
        return [str(v) for v in prop["enum"]]
    if prop.get("format") == "date-time":
        return DATE_TIME_ALLOWED
    kind = prop.get("type")
    if kind in ("integer", "number"):
        noun = "an integer" if kind == "integer" else "a number"
        low, high = prop.get("minimum"), prop.get("maximum")
        return f"{noun} in {low}..{high}" if low is not None and high is not None else noun
    if kind == "string":
        low, high = prop.get("minLength"), prop.get("maxLength")
        return f"a string of {low}..{high} characters" if low is not None and high is not None else "a string"
    if kind == "boolean":
        return "true or false"
    return None


def _short(value: Any) -> str:
    """`value` as quoted in an error: repr (control characters escaped), at most ECHO_MAX_CHARS,
    phone numbers masked (the value may be someone's)."""
    text = repr(value)
    if len(text) > ECHO_MAX_CHARS:
        text = text[: ECHO_MAX_CHARS - 3] + "..."
    return mask_text(text)


def _name(value: str) -> str:
    """A request-supplied name (query parameter, body field, path) fit to quote: printable and
    bounded."""
    text = "".join(ch if ch.isprintable() else "?" for ch in value[: ECHO_MAX_CHARS + 1])
    return text if len(text) <= ECHO_MAX_CHARS else text[: ECHO_MAX_CHARS - 3] + "..."


def _details(exc: ValidationError, model: type[BaseModel], noun: str) -> list[ErrorDetail]:
    allowed = _allowed_by_field(model)
    details: list[ErrorDetail] = []
    for error in exc.errors(include_url=False):
        loc = [_name(str(part)) for part in error["loc"]]
        field = ".".join(loc) if loc else "body"
        top = loc[0] if loc else ""
        kind = error["type"]
        if kind == "extra_forbidden":
            details.append(
                ErrorDetail(
                    field=field, message=f"unknown {noun} '{field}'", allowed=sorted(model.model_fields)
                )
            )
        elif kind == "missing":
            details.append(ErrorDetail(field=field, message=f"{field} is required", allowed=allowed.get(top)))
        elif not loc:
            details.append(
                ErrorDetail(field="body", message=f"the body must be a JSON object: {_bounded(error['msg'])}")
            )
        else:
            details.append(
                ErrorDetail(
                    field=field,
                    message=f"{field}={_short(error['input'])}: {_bounded(error['msg'])}",
                    allowed=allowed.get(top),
                )
            )
    return details


def _bounded(message: str) -> str:
    """A message built by a library from the input (pydantic's, json's): bounded and masked."""
    cut = message if len(message) <= 2 * ECHO_MAX_CHARS else message[: 2 * ECHO_MAX_CHARS - 3] + "..."
    return mask_text(cut)


def _payment_key(request: Request) -> str:
    """The `{key}` path parameter, refused over PAYMENT_KEY_MAX characters."""
    key = str(request.path_params["key"])
    if len(key) > PAYMENT_KEY_MAX:
        raise ApiError(
            400,
            ErrorDetail(
                field="key",
                message=f"key is {len(key)} characters long, longer than {PAYMENT_KEY_MAX}",
                allowed=f"a string of 1..{PAYMENT_KEY_MAX} characters",
            ),
        )
    return key


def _client_label(request: Request) -> str:
    """`rest:<address> <user-agent>`, after the token's identity when authenticated
    (`token:ops via rest:...`): the `caller` an operator action's audit entry records (printable, bounded)."""
    address = request.client.host if request.client is not None else "unknown"
    agent = "".join(ch for ch in request.headers.get("user-agent", "")[:100] if ch.isprintable())
    return with_caller(request.scope, f"rest:{address} {agent}".rstrip())


class _NonFinite:
    """A `NaN` / `Infinity` / `-Infinity` / overflowing number found while checking a body."""

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _json_fault(value: Any, path: str, depth: int) -> ErrorDetail | None:
    """The first thing JSON (RFC 8259) or this API does not take inside a parsed body."""
    if depth > MAX_BODY_DEPTH:
        return ErrorDetail(
            field=path or "body",
            message=f"the body nests deeper than {MAX_BODY_DEPTH} levels",
            allowed=f"a JSON object of at most {MAX_BODY_DEPTH} levels",
        )
    if isinstance(value, _NonFinite):
        return ErrorDetail(
            field=path or "body",
            message=f"{path or 'body'} is {_name(value.text)}: JSON has no NaN or Infinity",
            allowed="a finite number",
        )
    children: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        children = [(f"{path}.{_name(str(k))}" if path else _name(str(k)), v) for k, v in value.items()]
    elif isinstance(value, list):
        children = [(f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value)]
    for child_path, child in children:
        fault = _json_fault(child, child_path, depth + 1)
        if fault is not None:
            return fault
    return None


def _check_json(raw: bytes) -> None:
    """400 for a body that parses only by Python's lenient rules (NaN, Infinity, numbers that
    overflow to infinity), nests too deeply or holds an integer too long to convert; the field
    is named. Not-JSON is left to the model's own parser, whose message says where."""
    try:
        parsed = json.loads(raw, parse_constant=_NonFinite, parse_float=_parse_float)
    except RecursionError:
        raise ApiError(
            400,
            ErrorDetail(
                field="body",
                message=f"the body nests deeper than {MAX_BODY_DEPTH} levels",
                allowed=f"a JSON object of at most {MAX_BODY_DEPTH} levels",
            ),
        ) from None
    except ValueError as exc:  # not JSON, or an integer beyond Python's digit limit
        if "Exceeds the limit" in str(exc):
            raise ApiError(
                400,
                ErrorDetail(field="body", message="the body holds an integer with thousands of digits"),
            ) from None
        return
    fault = _json_fault(parsed, "", 0)
    if fault is not None:
        raise ApiError(400, fault)


# --- endpoints ----------------------------------------------------------------------------

Handler = Callable[[Request, Any, Any], Awaitable[BaseModel]]


@dataclass(frozen=True)
class Endpoint:
    """One REST operation: how it is served and how the OpenAPI document describes it."""

    method: Literal["GET", "POST"]
    path: str
    """Below PREFIX, with `{name}` path parameters."""
    operation_id: str
    summary: str
    description: str
    response: type[BaseModel]
    handler: Handler
    query: type[BaseModel] = NoQuery
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    """Status codes beyond the ones every endpoint can answer."""


ERROR_DESCRIPTIONS = {
    400: "Malformed request: a query or path parameter is invalid, unknown or too long, a date-time is outside "
    "1970-01-01..9999-12-31, or the body is not JSON (NaN and Infinity are not JSON) or nests too deeply",
    403: "Foreign Origin header (DNS-rebinding protection; ErrorResponse), or the token lacks the operation's "
    "scope (InsufficientScope, naming it; see x-required-scope)",
    404: "Unknown provider (the error lists the registered ones) or payment",
    409: "The payment is not open: only needs_reconciliation or unknown payments are resolved by hand",
    413: f"Body larger than {MAX_BODY_BYTES} bytes",
    415: "Body not sent as application/json",
    421: "Foreign Host header (DNS-rebinding protection; MCP_AUTONOMY_ALLOWED_HOSTS adds names)",
    422: "The JSON body is refused: a field is missing, unknown or out of range",
    500: "Internal error (details in the server log)",
    502: "The scale backend refused or failed; the message says what is missing",
}
COMMON_ERRORS = (400, 403, 421, 500)
BODY_ERRORS = (413, 415, 422)


class RestApi:
    """The /autonomous routes for one `AutonomousSystem`."""

    def __init__(
        self, system: AutonomousSystem, security: TransportSecuritySettings, *, bearer_required: bool
    ) -> None:
        self.system = system
        self._guard = TransportSecurityMiddleware(security)
        self.endpoints = self._endpoints()
        self.openapi = openapi_document(self.endpoints, bearer_required=bearer_required)
        self._openapi_json = json.dumps(self.openapi, separators=(",", ":")).encode()

    # --- serving ----------------------------------------------------------------------

    def mount(self) -> Mount:
        routes = [
            Route(e.path, self._serve(e), methods=[e.method], name=e.operation_id) for e in self.endpoints
        ]
        routes.append(Route("/openapi.json", self._serve_openapi, methods=["GET"], name="getOpenApi"))
        app = Starlette(routes=routes, exception_handlers={HTTPException: self._http_error})
        mount = Mount(PREFIX, app=app)
        # Starlette's `.*` stops at a newline, so `/autonomous/payments/a%0Ab` would fall out of
        # this mount to the server's plain-text 404: match the whole path, whatever it holds.
        mount.path_regex = re.compile(mount.path_regex.pattern, re.DOTALL)
        return mount

    def _serve(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            try:
                await self._check_headers(request)
                query = self._parse_query(request, endpoint.query)
                body = await self._parse_body(request, endpoint.body) if endpoint.body is not None else None
                result = await endpoint.handler(request, query, body)
            except ApiError as exc:
                return exc.response()
            except StoreUnavailable as exc:  # the shared store is down: say so, retryable
                return ApiError(503, ErrorDetail(field=None, message=str(exc))).response()
            except Exception:
                logger.exception("%s %s failed", request.method, request.url.path)
                return ApiError(
                    500, ErrorDetail(field=None, message="internal error; the server log has the details")
                ).response()
            # model_dump_json, not json.dumps: measured figures may be inf or NaN, which JSON has
            # not; pydantic writes them as null.
            return Response(result.model_dump_json(), media_type=JSON)

        return serve

    async def _serve_openapi(self, request: Request) -> Response:
        try:
            await self._check_headers(request)
        except ApiError as exc:
            return exc.response()
        return Response(self._openapi_json, media_type=JSON)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        """Unknown paths and wrong methods under /autonomous, as JSON errors."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        operations = [f"{e.method} {PREFIX}{e.path}" for e in self.endpoints] + [f"GET {OPENAPI_PATH}"]
        if status == 405 and isinstance(exc, HTTPException):
            allowed = (exc.headers or {}).get("Allow", "")
            detail = ErrorDetail(
                field="method",
                message=f"{request.method} is not allowed on {_name(request.url.path)}",
                allowed=[m.strip() for m in allowed.split(",") if m.strip()],
            )
            return ApiError(405, detail, headers={"Allow": allowed}).response()
        detail = ErrorDetail(
            field="path",
            message=f"no endpoint {_name(request.method)} {_name(request.url.path)} (see {OPENAPI_PATH})",
            allowed=operations,
        )
        return ApiError(404 if status == 404 else status, detail).response()

    async def _check_headers(self, request: Request) -> None:
        """DNS-rebinding protection as on /mcp; a POST body must be declared JSON."""
        refused = await self._guard.validate_request(request, is_post=False)
        if refused is not None:
            header = "host" if refused.status_code == 421 else "origin"
            raise ApiError(
                refused.status_code,
                ErrorDetail(
                    field=header,
                    message=f"{header} {_short(request.headers.get(header))} is not one of this server's names "
                    "(DNS-rebinding protection)",
                    allowed="this server's address, or a name in MCP_AUTONOMY_ALLOWED_HOSTS",
                ),
            )
        if request.method == "POST":
            content_type = request.headers.get("content-type", "")
            if content_type.split(";")[0].strip().lower() != JSON:
                raise ApiError(
                    415,
                    ErrorDetail(
                        field="content-type",
                        message=f"the body must be sent as {JSON}, got {_short(content_type or 'no content-type')}",
                        allowed=[JSON],
                    ),
                )

    @staticmethod
    def _parse_query(request: Request, model: type[BaseModel]) -> BaseModel:
        values: dict[str, str] = {}
        repeated: list[ErrorDetail] = []
        for key, value in request.query_params.multi_items():
            if key in values:
                repeated.append(
                    ErrorDetail(
                        field=_name(key), message=f"query parameter '{_name(key)}' is given more than once"
                    )
                )
            values[key] = value
        if repeated:
            raise ApiError(400, *repeated)
        try:
            return model.model_validate(values)
        except ValidationError as exc:
            raise ApiError(400, *_details(exc, model, "query parameter")) from None

    @staticmethod
    async def _parse_body(request: Request, model: type[BaseModel]) -> BaseModel:
        too_large = ApiError(
            413,
            ErrorDetail(
                field="body",
                message=f"the body exceeds {MAX_BODY_BYTES} bytes",
                allowed=f"0..{MAX_BODY_BYTES} bytes",
            ),
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise too_large
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise too_large
        if not raw.strip():
            fields = sorted(model.model_fields)
            raise ApiError(
                400, ErrorDetail(field="body", message="a JSON object body is required", allowed=fields)
            )
        _check_json(bytes(raw))
        try:
            return model.model_validate_json(bytes(raw))
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                message = _bounded(exc.errors()[0]["msg"])
                raise ApiError(
                    400,
                    ErrorDetail(
                        field="body", message=f"the body is not valid JSON: {message}", allowed=[JSON]
                    ),
                ) from None
            raise ApiError(422, *_details(exc, model, "body field")) from None

    # --- engine calls -----------------------------------------------------------------

    def _unknown_provider(self, error: UnknownProviderError) -> ApiError:
        return ApiError(404, ErrorDetail(field="provider", message=str(error), allowed=error.known))

    def _check_provider(self, provider: str | None) -> None:
        if provider is not None and provider not in self.system.providers:
            raise self._unknown_provider(UnknownProviderError(provider, self.system.providers.names()))

    def _endpoints(self) -> tuple[Endpoint, ...]:
        system = self.system

        async def get_status(request: Request, query: NoQuery, body: None) -> StatusSummary:
            return await system.get_status_summary()

        async def get_stats(request: Request, query: NoQuery, body: None) -> SystemStats:
            return await system.get_stats()

        async def heal_provider(request: Request, query: NoQuery, body: HealRequest) -> HealResult:
            provider = str(request.path_params["provider"])
            if len(provider) > PROVIDER_NAME_MAX:
                raise ApiError(
                    400,
                    ErrorDetail(
                        field="provider",
                        message=f"provider is longer than {PROVIDER_NAME_MAX} characters",
                        allowed=system.providers.names(),
                    ),
                )
            try:
                return await system.heal_provider(provider, reason=body.reason, caller=_client_label(request))
            except UnknownProviderError as exc:
                raise self._unknown_provider(exc) from None

        async def scale_to(request: Request, query: NoQuery, body: ScaleRequest) -> ScaleResult:
            scaler = system.auto_scaler
            try:
                return await system.scale_to(
                    body.replicas, reason=body.reason, force=body.force, caller=_client_label(request)
                )
            except ScaleBoundsError as exc:
                raise ApiError(
                    422,
                    ErrorDetail(
                        field="replicas",
                        message=str(exc),
                        allowed=f"MIN_INSTANCES..MAX_INSTANCES = {scaler.min_replicas}..{scaler.max_replicas}, "
                        f"or 0..{MAX_REPLICAS_LIMIT} with force=true",
                    ),
                ) from None
            except ScaleBackendError as exc:
                raise ApiError(
                    502, ErrorDetail(field=None, message=f"scale backend refused: {exc}")
                ) from None

        async def get_predictions(request: Request, query: PredictionsQuery, body: None) -> PredictionList:
            self._check_provider(query.provider)
            predictor = system.predictive_maintenance
            return PredictionList(
                predictions=predictor.predictions(
                    provider=query.provider,
                    min_confidence=query.min_confidence,
                    status=query.status,
                    limit=query.limit,
                ),
                scores=predictor.scores(),
                warm_up=predictor.warm_up(),
            )

        async def get_optimizations(
            request: Request, query: OptimizationsQuery, body: None
        ) -> OptimizationList:
            self._check_provider(query.provider)
            return OptimizationList(
                optimizations=system.auto_optimizer.optimizations(provider=query.provider, limit=query.limit)
            )

        async def get_events(request: Request, query: EventsQuery, body: None) -> EventList:
            events = system.query_events(
                provider=query.provider,
                types=[query.type] if query.type is not None else None,
                since=query.since.timestamp() if query.since is not None else None,
                limit=query.limit,
            )
            return EventList(events=events, count=len(events))

        async def get_incidents(request: Request, query: IncidentsQuery, body: None) -> IncidentList:
            self._check_provider(query.provider)
            return IncidentList(
                incidents=system.get_incidents(
                    provider=query.provider,
                    status=query.status,
                    since=query.since.timestamp() if query.since is not None else None,
                    limit=query.limit,
                ),
                stats=system.incidents.stats(),
            )

        async def get_maintenance(
            request: Request, query: MaintenanceQuery, body: None
        ) -> MaintenanceWindowList:
            self._check_provider(query.provider)
            return MaintenanceWindowList(
                windows=system.get_maintenance_windows(
                    provider=query.provider, status=query.status, limit=query.limit
                )
            )

        async def get_dashboard(request: Request, query: NoQuery, body: None) -> DashboardSnapshot:
            return await dashboard_snapshot(system)

        async def list_payments(request: Request, query: PaymentsQuery, body: None) -> PaymentList:
            self._check_provider(query.provider)
            return PaymentList(
                payments=await system.list_payments(
                    status=query.status, provider=query.provider, limit=query.limit
                ),
                oldest_open_age_s=await system.reconciler.oldest_open_age_s(),
            )

        async def get_payment(request: Request, query: NoQuery, body: None) -> PaymentRecord:
            key = _payment_key(request)
            record = await system.get_payment(key)
            if record is None:
                raise ApiError(
                    404, ErrorDetail(field="key", message=f"no payment with key or reference {_short(key)}")
                )
            # The one view that shows the payer in full (lists and errors mask it).
            return record.revealed()

        async def resolve_payment(
            request: Request, query: NoQuery, body: ResolvePaymentRequest
        ) -> PaymentRecord:
            key = _payment_key(request)
            try:
                return await system.resolve_payment(
                    key,
                    TransactionStatus(body.outcome),
                    reason=body.reason,
                    provider_reference=body.provider_reference,
                    caller=_client_label(request),
                )
            except KeyError:
                raise ApiError(404, ErrorDetail(field="key", message=f"no payment {_short(key)}")) from None
            except ValueError as exc:
                raise ApiError(
                    409,
                    ErrorDetail(field="key", message=str(exc), allowed=["needs_reconciliation", "unknown"]),
                ) from None

        async def submit_transfer_otp(request: Request, query: NoQuery, body: OtpRequest) -> PaymentRecord:
            key = _payment_key(request)
            try:
                return await system.submit_transfer_otp(
                    key, body.otp, reason=body.reason, caller=_client_label(request)
                )
            except KeyError:
                raise ApiError(404, ErrorDetail(field="key", message=f"no payment {_short(key)}")) from None
            except ValueError as exc:
                raise ApiError(
                    409, ErrorDetail(field="key", message=str(exc), allowed=["needs_operator_otp"])
                ) from None
            except ProviderError as exc:
                raise ApiError(
                    422, ErrorDetail(field="otp", message=f"the provider refused it: {exc.provider_message}")
                ) from None

        async def get_callbacks(request: Request, query: CallbacksQuery, body: None) -> CallbackList:
            self._check_provider(query.provider)
            return CallbackList(
                callbacks=await system.list_callbacks(
                    provider=query.provider,
                    state=query.state,
                    idempotency_key=query.idempotency_key,
                    limit=query.limit,
                )
            )

        return (
            Endpoint(
                "GET",
                "/status",
                "getStatus",
                "System status at a glance",
                "Overall health with its reason, each provider's health, breaker and 5-minute figures, each loop's "
                "mode and last tick, replica state (as the MCP tool get_status). Null figures are not measured yet.",
                StatusSummary,
                get_status,
            ),
            Endpoint(
                "GET",
                "/stats",
                "getStats",
                "Counters and scores",
                "Events by type (from the store, across restarts), manual actions, healing success rate, scaling, "
                "prediction precision/recall, optimization outcomes (as get_stats).",
                SystemStats,
                get_stats,
            ),
            Endpoint(
                "POST",
                "/heal/{provider}",
                "healProvider",
                "Heal a provider now",
                "Re-initialise the provider's adapter and probe it now; returns each step and the health before "
                "and after (as heal_provider; in dry_run mode nothing is carried out). Audited.",
                HealResult,
                heal_provider,
                body=HealRequest,
                errors=(404,),
            ),
            Endpoint(
                "POST",
                "/scale",
                "scaleTo",
                "Scale to a replica count",
                "Set the replica count now and wait for the rollout (as scale_to). Outside MIN_INSTANCES.."
                f"MAX_INSTANCES only with force=true, never above {MAX_REPLICAS_LIMIT}. Audited.",
                ScaleResult,
                scale_to,
                body=ScaleRequest,
                errors=(502,),
            ),
            Endpoint(
                "GET",
                "/predictions",
                "getPredictions",
                "Predictions",
                "Predictions newest first with indicators, window, confidence and verdict, plus precision, recall "
                "and lead time (as get_predictions).",
                PredictionList,
                get_predictions,
                query=PredictionsQuery,
                errors=(404,),
            ),
            Endpoint(
                "GET",
                "/optimizations",
                "getOptimizations",
                "Optimization history",
                "Tuning changes newest first with before/after figures, p-values and verdicts (as "
                "get_optimizations).",
                OptimizationList,
                get_optimizations,
                query=OptimizationsQuery,
                errors=(404,),
            ),
            Endpoint(
                "GET",
                "/events",
                "getEvents",
                "Stored events",
                "Events from the store (they survive restarts), oldest first, the newest `limit` of those matching "
                "(as get_events).",
                EventList,
                get_events,
                query=EventsQuery,
            ),
            Endpoint(
                "GET",
                "/incidents",
                "getIncidents",
                "Incidents",
                "Incidents newest first with trigger, times to detect / mitigate / recover and every action taken, "
                "plus the statistics computed from them (as get_incidents).",
                IncidentList,
                get_incidents,
                query=IncidentsQuery,
                errors=(404,),
            ),
            Endpoint(
                "GET",
                "/maintenance",
                "getMaintenanceWindows",
                "Maintenance windows",
                "Planned and past maintenance windows, latest start first: when, why that slot, each step run (as "
                "get_maintenance_windows).",
                MaintenanceWindowList,
                get_maintenance,
                query=MaintenanceQuery,
                errors=(404,),
            ),
            Endpoint(
                "GET",
                "/payments",
                "listPayments",
                "Payments",
                "Payments newest first, optionally of one status (e.g. needs_reconciliation) and provider, with each "
                "provider's oldest payment not yet final (as list_payments).",
                PaymentList,
                list_payments,
                query=PaymentsQuery,
                errors=(404,),
            ),
            Endpoint(
                "GET",
                "/payments/{key}",
                "getPayment",
                "One payment",
                "A payment by its idempotency key, our reference or the provider's, with every provider attempt "
                "it took; a pending or unknown one is re-queried at its provider first (as get_payment). The one "
                "view that shows the payer's phone in full: lists, events and errors mask it (+2547****0002).",
                PaymentRecord,
                get_payment,
                errors=(404,),
            ),
            Endpoint(
                "POST",
                "/payments/{key}/resolve",
                "resolvePayment",
                "Resolve a payment by hand",
                "An operator's verdict (succeeded or failed, from the provider's own records) on a payment left "
                "needs_reconciliation or unknown. Sends nothing to any provider. Audited (as resolve_payment).",
                PaymentRecord,
                resolve_payment,
                body=ResolvePaymentRequest,
                errors=(404, 409, 413, 415, 422),
            ),
            Endpoint(
                "POST",
                "/payments/{key}/otp",
                "submitTransferOtp",
                "Submit a transfer's OTP",
                "Finalise a payout its provider holds for the merchant's OTP (status needs_operator_otp). The OTP "
                "goes to the provider only, never stored or echoed. Audited (as submit_transfer_otp).",
                PaymentRecord,
                submit_transfer_otp,
                body=OtpRequest,
                errors=(404, 409, 413, 415, 422),
            ),
            Endpoint(
                "GET",
                "/callbacks",
                "getCallbacks",
                "Provider callbacks received",
                "Callbacks newest first with what each claimed and what became of it: confirmed by a status pull, "
                "pending, refused (audited), unmatched or duplicate (as get_callbacks).",
                CallbackList,
                get_callbacks,
                query=CallbacksQuery,
                errors=(404,),
            ),
            Endpoint(
                "GET",
                "/dashboard",
                "getDashboard",
                "Everything the dashboard shows",
                "One snapshot: status, providers with health, breaker, route order and tunables, the newest events, "
                "the scaling chart's load and replica changes, predictions with scores, incidents and "
                "optimizations (the same document the MCP tool show_dashboard returns).",
                DashboardSnapshot,
                get_dashboard,
            ),
        )


# --- OpenAPI ------------------------------------------------------------------------------

SCHEMA_REF = "#/components/schemas/{model}"
Refs = dict[tuple[Any, JsonSchemaMode], dict[str, Any]]
"""What `models_json_schema` returns for each (model, mode): a `$ref` into components/schemas."""


def _ref(
    refs: Refs,
    model: type[BaseModel],
    mode: JsonSchemaMode,
) -> dict[str, Any]:
    return dict(refs[(model, mode)])


def _schema_name(ref: dict[str, Any]) -> str:
    return str(ref["$ref"]).rsplit("/", 1)[-1]


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`X | None` as `X`: an absent query parameter is the null."""
    branches = schema.get("anyOf")
    if isinstance(branches, list):
        kept = [b for b in branches if b != {"type": "null"}]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            return {**kept[0], **rest}
    return {k: v for k, v in schema.items() if not (k == "default" and v is None)}


def _error_response(code: int, refs: Refs) -> dict[str, Any]:
    schema = _ref(refs, ErrorResponse, "serialization")
    if code == 403:
        schema = {"anyOf": [schema, _ref(refs, InsufficientScope, "serialization")]}
    return {"description": ERROR_DESCRIPTIONS[code], "content": {JSON: {"schema": schema}}}


def openapi_document(endpoints: tuple[Endpoint, ...], *, bearer_required: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `endpoints`, its schemas generated from their pydantic models."""
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorResponse, "serialization"): None,
        (Unauthorized, "serialization"): None,
        (InsufficientScope, "serialization"): None,
    }
    for endpoint in endpoints:
        wanted[(endpoint.response, "serialization")] = None
        wanted[(endpoint.query, "validation")] = None
        if endpoint.body is not None:
            wanted[(endpoint.body, "validation")] = None
    refs, top = models_json_schema(list(wanted), ref_template=SCHEMA_REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    query_schemas = {
        endpoint.query: schemas[_schema_name(refs[(endpoint.query, "validation")])] for endpoint in endpoints
    }
    for model in query_schemas:  # described as parameters, not as schemas
        schemas.pop(_schema_name(refs[(model, "validation")]), None)

    unauthorized = {
        "description": "Missing, invalid or expired token (only when authorization is configured: "
        "MCP_AUTONOMY_BEARER_TOKEN, MCP_AUTONOMY_TOKENS_FILE or MCP_AUTONOMY_AUTH_ISSUER)",
        "content": {JSON: {"schema": _ref(refs, Unauthorized, "serialization")}},
    }
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        parameters: list[dict[str, Any]] = []
        if "{provider}" in endpoint.path:
            parameters.append(
                {
                    "name": "provider",
                    "in": "path",
                    "required": True,
                    "description": "A registered provider name, e.g. mpesa (see getStatus)",
                    "schema": {"type": "string", "minLength": 1, "maxLength": PROVIDER_NAME_MAX},
                }
            )
        if "{key}" in endpoint.path:
            parameters.append(
                {
                    "name": "key",
                    "in": "path",
                    "required": True,
                    "description": "The payment's idempotency key (getPayment also takes a reference)",
                    "schema": {"type": "string", "minLength": 1, "maxLength": PAYMENT_KEY_MAX},
                }
            )
        query_schema = query_schemas[endpoint.query]
        required = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            schema = _without_null(prop)
            parameter: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
            if "description" in schema:
                parameter["description"] = schema.pop("description")
            parameter["schema"] = schema
            parameters.append(parameter)
        codes = sorted(
            {*COMMON_ERRORS, *endpoint.errors, *(BODY_ERRORS if endpoint.body is not None else ())}
        )
        responses: dict[str, Any] = {
            "200": {
                "description": endpoint.response.__doc__ or endpoint.summary,
                "content": {JSON: {"schema": _ref(refs, endpoint.response, "serialization")}},
            },
            "401": unauthorized,
        }
        responses.update({str(code): _error_response(code, refs) for code in codes})
        operation: dict[str, Any] = {
            "operationId": endpoint.operation_id,
            "summary": endpoint.summary,
            "description": endpoint.description,
            "parameters": parameters,
            "responses": dict(sorted(responses.items())),
            "x-required-scope": str(route_scope(endpoint.method, f"{PREFIX}{endpoint.path}")),
        }
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {JSON: {"schema": _ref(refs, endpoint.body, "validation")}},
            }
        paths.setdefault(f"{PREFIX}{endpoint.path}", {})[endpoint.method.lower()] = operation
    paths[OPENAPI_PATH] = {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document",
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                "401": unauthorized,
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mcp-autonomy REST API",
            "version": __version__,
            "description": API_DESCRIPTION,
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A static token (MCP_AUTONOMY_BEARER_TOKEN, MCP_AUTONOMY_TOKENS_FILE) or an "
                    "OAuth access token from MCP_AUTONOMY_AUTH_ISSUER, holding the operation's x-required-scope; "
                    "required on every route but the probes when authorization is configured",
                }
            },
        },
        "security": [{"bearerAuth": []}] if bearer_required else [{}],
    }


def rest_mount(system: AutonomousSystem, security: TransportSecuritySettings) -> Mount:
    """The /autonomous routes of `system`, behind the same DNS-rebinding protection as /mcp."""
    return RestApi(system, security, bearer_required=system.settings.auth_configured).mount()
