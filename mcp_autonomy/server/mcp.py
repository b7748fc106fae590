"""The MCP surface: tools, resources, the incident prompt, completions, logging level.

Thin by design: every tool is a few lines that call the engine (`AutonomousSystem`) and shape a
pydantic result (structured content with an output schema). Input ranges live in the schemas;
anything the engine refuses comes back as a tool error naming the field and what is allowed.
Every manual action is written to the audit log with the calling client.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from mcp.server import MCPServer
from mcp.server.apps import Apps
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolResult,
    Completion,
    CompletionArgument,
    CompletionContext,
    EmptyResult,
    PromptReference,
    ResourceTemplateReference,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    ToolAnnotations,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from mcp_autonomy import __version__
from mcp_autonomy.autonomy.component import Mode
from mcp_autonomy.autonomy.healer import HealResult
from mcp_autonomy.autonomy.incidents import Incident, IncidentStatus
from mcp_autonomy.autonomy.maintenance import MaintenanceStatus, MaintenanceWindow
from mcp_autonomy.autonomy.optimizer import Optimization, ProviderConfig, ProviderConfigError
from mcp_autonomy.autonomy.predictor import Prediction, PredictionStatus
from mcp_autonomy.autonomy.scaler import ScaleBoundsError, ScaleResult
from mcp_autonomy.autonomy.scaling import ScaleBackendError
from mcp_autonomy.autonomy.system import AutonomousSystem, ProviderStatus, StatusSummary, SystemStats
from mcp_autonomy.config import MAX_REPLICAS_LIMIT
from mcp_autonomy.events import Event, EventType
from mcp_autonomy.payments import CallbackState, InboxCallback, PaymentRecord
from mcp_autonomy.providers.base import (
    COUNTRY_RE,
    CURRENCY_RE,
    DIAL_CODES,
    MAX_AMOUNT_MINOR,
    Money,
    Operation,
    PaymentRequest,
    ProviderError,
    TransactionStatus,
    normalize_msisdn,
)
from mcp_autonomy.providers.registry import BackupMapError, UnknownProviderError
from mcp_autonomy.resilience.router import IdempotencyConflict, NoRouteError
from mcp_autonomy.sandbox.faults import EndpointKind, FaultSpec
from mcp_autonomy.server import notifier as uris
from mcp_autonomy.server.dashboard import (
    APP_URI,
    DashboardSnapshot,
    app_html,
    dashboard_snapshot,
    dashboard_summary,
)
from mcp_autonomy.server.notifier import ResourceNotifier
from mcp_autonomy.store import StoreUnavailable

if TYPE_CHECKING:
    from mcp_autonomy.sandbox.embedded import EmbeddedSandbox

logger = logging.getLogger(__name__)

INSTRUCTIONS = """\
mcp-autonomy keeps a payments gateway's providers (M-Pesa, Paystack, MTN MoMo, Airtel Money, ...)
running: self-healing, auto-scaling, predictive maintenance and auto-optimization loops.
Start with `get_status` (overall health, each provider, each loop's mode) and `get_events`
(what the loops decided and why). `heal_provider` and `scale_to` act now and are audited;
`set_autonomy` is the kill switch for each loop (on | off | dry_run). Every figure is measured;
null means not measured yet, never zero."""

READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)

Reason = Annotated[
    str,
    Field(
        min_length=3,
        max_length=500,
        description="Why you are doing this; recorded in the audit log and events",
    ),
]
ProviderName = Annotated[
    str,
    Field(min_length=1, max_length=64, description="A registered provider name, e.g. mpesa (see get_status)"),
]
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


class PaymentList(BaseModel):
    """Payments, newest first."""

    payments: list[PaymentRecord]
    oldest_open_age_s: dict[str, float] = Field(
        description="Per provider, the age of its oldest payment not yet final (seconds)"
    )


class CallbackList(BaseModel):
    """Provider callbacks as received, newest first, with what became of each."""

    callbacks: list[InboxCallback]


class PredictionList(BaseModel):
    """Predictions matching the filters, newest first, with the predictor's scores."""

    predictions: list[Prediction]
    scores: dict[str, Any]


class IncidentList(BaseModel):
    """Incidents (all runs) newest first, with the statistics computed from them."""

    incidents: list[Incident]
    stats: dict[str, Any]


class MaintenanceWindowList(BaseModel):
    """Maintenance windows (all runs), latest start first."""

    windows: list[MaintenanceWindow]


class OptimizationList(BaseModel):
    """Optimization history, newest first."""

    optimizations: list[Optimization]


class EventList(BaseModel):
    """Stored events (across restarts), oldest first."""

    events: list[Event]
    count: int


class ProviderList(BaseModel):
    """Every registered provider: capabilities, measured health, breaker, tunables (never secrets)."""

    providers: list[ProviderStatus]
    backup_map: dict[str, list[str]]
    failed_over: dict[str, str]


IdempotencyKey = Annotated[
    str,
    Field(
        min_length=8,
        max_length=100,
        pattern=r"^[A-Za-z0-9_\-.:]+$",
        description="Your unique key for this payment (8-100 of A-Z a-z 0-9 _ - . :); a retry with the same key "
        "returns the first result and never pays twice",
    ),
]
AmountMinor = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_AMOUNT_MINOR,
        description="Amount in integer minor units (cents, kobo): KES 150.00 is 15000",
    ),
]
Currency = Annotated[
    str, Field(pattern=CURRENCY_RE.pattern, description="ISO 4217 code in capitals, e.g. KES, NGN")
]
Country = Annotated[
    str, Field(pattern=COUNTRY_RE.pattern, description="ISO 3166-1 alpha-2 in capitals, e.g. KE")
]
Phone = Annotated[
    str,
    Field(
        min_length=6,
        max_length=20,
        description="Customer phone: E.164 (+254712345678) or national (0712345678, normalised by country)",
    ),
]


class AutonomyChange(BaseModel):
    """The result of a kill-switch change."""

    component: str
    previous_mode: Mode
    mode: Mode
    reason: str
    audit_id: int


_ANNOTATION_KEYWORDS = frozenset({"title", "description", "default", "examples", "deprecated"})
# Keywords that constrain only non-null instances, so `{"type": [T, "null"], ...}` keeps their meaning.
_TYPE_SPECIFIC_KEYWORDS = frozenset(
    {
        "type",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "properties",
        "required",
        "additionalProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
    }
)


class _RecursiveSchema(Exception):
    """A `$defs` entry refers to itself; such a schema is published unchanged."""


def compact_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same constraints in a form `jsonschema` checks faster: `$defs` inlined, `X | None` as types.

    Every SDK client re-validates each structured tool result against the tool's output schema
    with the pure-Python `jsonschema`; each `$ref` costs it a registry lookup and each nullable
    `anyOf` a failed branch for every null, which made validation most of a get_status call.
    """
    defs: dict[str, Any] = schema.get("$defs", {})

    def walk(node: Any, inlining: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [walk(item, inlining) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if (
            isinstance(ref, str)
            and ref.startswith("#/$defs/")
            and set(node) - {"$ref"} <= _ANNOTATION_KEYWORDS
        ):
            name = ref.removeprefix("#/$defs/")
            if name in inlining:
                raise _RecursiveSchema(name)
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**defs[name], **siblings}, inlining | {name})
        compact = {k: walk(v, inlining) for k, v in node.items() if k != "$defs"}
        return _nullable_as_type_list(compact)

    try:
        result: dict[str, Any] = walk(schema, frozenset())
    except _RecursiveSchema:
        return schema
    return result


def _nullable_as_type_list(node: dict[str, Any]) -> dict[str, Any]:
    """`{"anyOf": [{"type": T, ...}, {"type": "null"}]}` as `{"type": [T, "null"], ...}`."""
    branches = node.get("anyOf")
    if not isinstance(branches, list) or len(branches) != 2 or {"type": "null"} not in branches:
        return node
    other = branches[0] if branches[1] == {"type": "null"} else branches[1]
    if not isinstance(other, dict) or not isinstance(other.get("type"), str):
        return node
    keys = set(other)
    if not keys <= _TYPE_SPECIFIC_KEYWORDS | _ANNOTATION_KEYWORDS | {"enum"}:
        return node
    merged = {k: v for k, v in node.items() if k != "anyOf"}
    for key, value in other.items():
        if key in _ANNOTATION_KEYWORDS and key in merged:
            continue  # the outer annotation (the field's own) wins
        merged[key] = value
    merged["type"] = [other["type"], "null"]
    if "enum" in other:
        merged["enum"] = [*other["enum"], None]
    return merged


def _client_of(ctx: Context[Any, Any]) -> str:
    """`name/version` of the calling client, plus the HTTP session id when there is one."""
    try:
        params = ctx.session.client_params
    except ValueError:
        return "in-process"
    label = "unknown-client"
    if params is not None and params.client_info is not None:
        label = f"{params.client_info.name}/{params.client_info.version}"
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    if headers is not None and headers.get("mcp-session-id"):
        label += f" session={headers.get('mcp-session-id')}"
    return label


def _connection_of(session: Any) -> Any:
    """The client connection behind a request's session proxy.

    The SDK builds a new `ServerSession` proxy per request; the `Connection` it wraps lives as
    long as the client, so subscriptions and log levels are keyed by it and released when its
    exit stack unwinds (the client went away).
    """
    return getattr(session, "_connection", session)


class McpApp:
    """The MCP server bound to one `AutonomousSystem`."""

    def __init__(self, system: AutonomousSystem, *, sandbox: EmbeddedSandbox | None = None) -> None:
        self.system = system
        self.sandbox = sandbox
        self.subscriptions = InMemorySubscriptionBus()
        self.mcp: MCPServer = MCPServer(
            "mcp-autonomy",
            title="mcp-autonomy",
            description="Autonomous operations for an African payments gateway",
            instructions=INSTRUCTIONS,
            version=__version__,
            subscriptions=self.subscriptions,
            log_level=system.settings.log_level,
            extensions=[self._dashboard_app()],
        )
        self.notifier = ResourceNotifier(system.events, self.subscriptions)
        self.log_levels: dict[int, str] = {}
        self._tracked_connections: set[int] = set()
        self._register_tools()
        self._register_payment_tools()
        if sandbox is not None:
            self._register_sandbox_tools(sandbox)
        self._register_resources()
        self._register_prompt()
        self._register_protocol_handlers()
        self._compact_output_schemas()

    def _dashboard_app(self) -> Apps:
        """The dashboard as an MCP App: the `show_dashboard` tool bound to its `ui://` page.

        Hosts that render MCP Apps show the page and feed it this tool's result; the page then calls
        `show_dashboard`, `heal_provider` and `scale_to` through the host. Other clients get the same
        snapshot as structured content.
        """
        system = self.system
        apps = Apps()

        @apps.tool(
            resource_uri=APP_URI,
            name="show_dashboard",
            title="Show the live dashboard",
            description=(
                "Everything the operator dashboard shows, as one snapshot: overall health, each provider's health, "
                "breaker, route order and tunables, the newest events, the last six hours of measured load and "
                "replica changes, predictions with precision/recall, incidents and optimizations. Hosts that "
                "render MCP Apps display it as the interactive dashboard (heal and scale with confirmation); for "
                "a quick look get_status is smaller."
            ),
            annotations=READ_ONLY,
        )
        async def show_dashboard() -> Annotated[CallToolResult, DashboardSnapshot]:
            snapshot = await dashboard_snapshot(system)
            # The text is for clients without MCP Apps: a summary, not 100 events of JSON.
            return CallToolResult(
                content=[TextContent(type="text", text=dashboard_summary(snapshot))],
                structured_content=snapshot.model_dump(mode="json"),
            )

        apps.add_html_resource(
            APP_URI,
            app_html(),
            name="dashboard",
            title="mcp-autonomy dashboard",
            description="The live operator dashboard as an MCP App (rendered by hosts that support MCP Apps)",
            prefers_border=False,
        )
        return apps

    def _compact_output_schemas(self) -> None:
        """Publish each tool's output schema in the form clients validate fastest (see `compact_schema`).

        Runs before anything lists the tools: `Tool.output_schema` caches the first value it reads.
        """
        for tool in self.mcp._tool_manager.list_tools():  # the SDK has no public tool accessor
            if tool.fn_metadata.output_schema is not None:
                tool.fn_metadata.output_schema = compact_schema(tool.fn_metadata.output_schema)

    # --- helpers ------------------------------------------------------------------------

    def _audit(
        self, ctx: Context[Any, Any], tool: str, arguments: dict[str, Any], ok: bool, result: Any
    ) -> int:
        return self.system.record_manual_action(
            tool=tool,
            arguments=arguments,
            client=_client_of(ctx),
            reason=arguments.get("reason"),
            ok=ok,
            result=result,
        )

    def _forget_connection(self, key: int) -> None:
        self._tracked_connections.discard(key)
        self.log_levels.pop(key, None)
        self.notifier.forget_connection(key)

    async def _log(self, ctx: Context[Any, Any], level: str, message: str) -> None:
        """Send a log notification if the client asked for this level (logging/setLevel)."""
        wanted = self.log_levels.get(id(_connection_of(ctx.session)))
        if wanted is not None and LOG_LEVELS.index(level) < LOG_LEVELS.index(wanted):
            return
        try:
            await ctx.log(level, message, logger_name="mcp_autonomy")  # type: ignore[arg-type]
        except Exception as exc:  # logging to the client is best-effort
            logger.debug("log notification not delivered: %s", exc)

    @staticmethod
    async def _progress(ctx: Context[Any, Any], done: int, total: int, message: str) -> None:
        try:
            await ctx.report_progress(done, total, message)
        except Exception as exc:  # progress is best-effort: a client without a token gets none
            logger.debug("progress not delivered: %s", exc)

    # --- tools --------------------------------------------------------------------------

    def _register_tools(self) -> None:
        system = self.system
        mcp = self.mcp

        @mcp.tool(
            title="Get system status",
            description=(
                "The system at a glance: overall health (healthy | degraded | critical | unknown, with the "
                "reason), each provider's measured health, breaker state and 5-minute error rate and p95 latency, "
                "each autonomy loop's mode (on | off | dry_run) and last tick, and the replica state. Call this "
                "first when investigating anything; list_providers and the autonomy://status resource have the "
                "full detail. Null figures are not measured yet."
            ),
            annotations=READ_ONLY,
        )
        async def get_status() -> StatusSummary:
            return await system.get_status_summary()

        @mcp.tool(
            title="Get statistics",
            description=(
                "Counters and scores: events by type (from the store, spanning restarts), manual actions, "
                "healing success rate, scaling decisions, prediction precision/recall (from judged "
                "predictions only), optimization outcomes."
            ),
            annotations=READ_ONLY,
        )
        async def get_stats() -> SystemStats:
            return await system.get_stats()

        @mcp.tool(
            title="Heal a provider now",
            description=(
                "Run the healing sequence on one provider now: re-initialise its adapter (new HTTP "
                "client, fresh credentials), then probe it. Reports each step with its measured outcome "
                "and the provider's health before and after; sends progress notifications per step. In "
                "dry_run mode (see set_autonomy) it reports what it would do and changes nothing. "
                "Audited. Errors if the provider is not registered (the error lists the known ones)."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
            ),
        )
        async def heal_provider(provider: ProviderName, reason: Reason, ctx: Context) -> HealResult:
            arguments = {"provider": provider, "reason": reason}
            try:
                result = await system.heal_provider(
                    provider, reason=reason, progress=lambda d, t, m: self._progress(ctx, d, t, m)
                )
            except UnknownProviderError as exc:
                self._audit(ctx, "heal_provider", arguments, False, {"error": str(exc)})
                raise ToolError(f"provider: {exc}") from None
            self._audit(
                ctx,
                "heal_provider",
                arguments,
                True,
                {"succeeded": result.succeeded, "dry_run": result.dry_run},
            )
            return result

        @mcp.tool(
            title="Scale to a replica count",
            description=(
                "Set this server's replica count now (operator override of the auto-scaler) and wait for "
                "the rollout, with progress notifications. `replicas` must be within MIN_INSTANCES.."
                "MAX_INSTANCES (see get_status -> components.auto_scaler.details) unless force=true; "
                f"never above {MAX_REPLICAS_LIMIT}. With the local backend the count is recorded and "
                "nothing outside the process changes (the result says so). Concurrent calls run one at a "
                "time. Audited."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True
            ),
        )
        async def scale_to(
            replicas: Annotated[int, Field(ge=0, le=MAX_REPLICAS_LIMIT, description="Desired replica count")],
            reason: Reason,
            ctx: Context,
            force: Annotated[
                bool, Field(description="Allow a count outside MIN_INSTANCES..MAX_INSTANCES")
            ] = False,
        ) -> ScaleResult:
            arguments = {"replicas": replicas, "reason": reason, "force": force}
            try:
                result = await system.scale_to(
                    replicas,
                    reason=reason,
                    force=force,
                    progress=lambda d, t, m: self._progress(ctx, d, t, m),
                )
            except ScaleBoundsError as exc:
                self._audit(ctx, "scale_to", arguments, False, {"error": str(exc)})
                raise ToolError(str(exc)) from None
            except ScaleBackendError as exc:
                self._audit(ctx, "scale_to", arguments, False, {"error": str(exc)})
                raise ToolError(f"scale backend refused: {exc}") from None
            self._audit(ctx, "scale_to", arguments, True, result.model_dump(mode="json"))
            return result

        @mcp.tool(
            title="Get predictions",
            description=(
                "Predicted failures and degradations per provider (type, severity, confidence in [0, 1], "
                "expected window, the indicators with their values and thresholds, recommended action, "
                "and the later verdict), newest first, plus the predictor's precision and recall."
            ),
            annotations=READ_ONLY,
        )
        async def get_predictions(
            provider: Annotated[str | None, Field(description="Only this provider")] = None,
            min_confidence: Annotated[float, Field(ge=0.0, le=1.0, description="Minimum confidence")] = 0.0,
            status: Annotated[PredictionStatus | None, Field(description="Only this verdict")] = None,
        ) -> PredictionList:
            self._check_provider(provider)
            p = system.predictive_maintenance
            return PredictionList(
                predictions=p.predictions(provider=provider, min_confidence=min_confidence, status=status),
                scores=p.scores(),
            )

        @mcp.tool(
            title="Judge a prediction",
            description=(
                "Record an operator's verdict on a prediction (ids from get_predictions): confirmed (the "
                "predicted trouble happened), false_positive (it did not) or resolved (it was acted on "
                "before it happened). Overrides the engine's own verdict; precision and recall in get_stats "
                "are recomputed from it. Audited."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
            ),
        )
        async def mark_prediction(
            id: Annotated[str, Field(min_length=1, max_length=200, description="The prediction's id")],
            verdict: Annotated[
                Literal["confirmed", "false_positive", "resolved"], Field(description="Your verdict")
            ],
            reason: Reason,
            ctx: Context,
        ) -> Prediction:
            arguments = {"id": id, "verdict": verdict, "reason": reason}
            try:
                prediction = system.mark_prediction(id, PredictionStatus(verdict), reason=reason)
            except KeyError:
                self._audit(ctx, "mark_prediction", arguments, False, {"error": "unknown id"})
                raise ToolError(f"id: no prediction {id!r} (see get_predictions for the ids)") from None
            self._audit(ctx, "mark_prediction", arguments, True, {"status": prediction.status.value})
            return prediction

        @mcp.tool(
            title="Get incidents",
            description=(
                "Incidents newest first (they survive restarts): what detected each one, when the first "
                "failure was seen, time to detect / mitigate / recover in seconds, every action taken while "
                "it was open with its outcome, and the predictions that foresaw it. `stats` holds the mean "
                "times and the healing success rate computed from the stored incidents. An open system-wide "
                "incident means more than half of the providers are unhealthy."
            ),
            annotations=READ_ONLY,
        )
        async def get_incidents(
            provider: Annotated[str | None, Field(description="Only this provider")] = None,
            status: Annotated[IncidentStatus | None, Field(description="open | resolved")] = None,
            limit: Annotated[int, Field(ge=1, le=500, description="At most this many")] = 50,
        ) -> IncidentList:
            self._check_provider(provider)
            return IncidentList(
                incidents=system.get_incidents(provider=provider, status=status, limit=limit),
                stats=system.incidents.stats(),
            )

        @mcp.tool(
            title="Get maintenance windows",
            description=(
                "Maintenance windows planned from confident critical predictions (AUTO_SCHEDULE_MAINTENANCE): "
                "provider, the prediction behind it, start and end (epoch seconds), the measured traffic it "
                "was placed by (`basis`, `expected_requests_per_min`), status (scheduled | in_progress | "
                "completed | cancelled) and each step run (drain to backup, heal, restore). Latest first."
            ),
            annotations=READ_ONLY,
        )
        async def get_maintenance_windows(
            provider: Annotated[str | None, Field(description="Only this provider")] = None,
            status: Annotated[MaintenanceStatus | None, Field(description="Only this status")] = None,
            limit: Annotated[int, Field(ge=1, le=500, description="At most this many")] = 50,
        ) -> MaintenanceWindowList:
            self._check_provider(provider)
            return MaintenanceWindowList(
                windows=system.get_maintenance_windows(provider=provider, status=status, limit=limit)
            )

        @mcp.tool(
            title="Cancel a maintenance window",
            description=(
                "Cancel a scheduled or in-progress maintenance window (ids from get_maintenance_windows). A "
                "window in progress gives the provider its traffic back at once (unless it is unhealthy, "
                "then the healer keeps it drained). Audited."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
            ),
        )
        async def cancel_maintenance_window(
            id: Annotated[str, Field(min_length=1, max_length=200, description="The window's id")],
            reason: Reason,
            ctx: Context,
        ) -> MaintenanceWindow:
            arguments = {"id": id, "reason": reason}
            try:
                window = system.cancel_maintenance_window(id, reason=reason)
            except KeyError:
                self._audit(ctx, "cancel_maintenance_window", arguments, False, {"error": "unknown id"})
                raise ToolError(f"id: no maintenance window {id!r} (see get_maintenance_windows)") from None
            except ValueError as exc:
                self._audit(ctx, "cancel_maintenance_window", arguments, False, {"error": str(exc)})
                raise ToolError(
                    f"id: {exc}; only scheduled or in_progress windows can be cancelled"
                ) from None
            self._audit(ctx, "cancel_maintenance_window", arguments, True, {"status": window.status.value})
            return window

        @mcp.tool(
            title="Get optimizations",
            description=(
                "History of tuning changes (timeouts, retries, rate limits, breaker thresholds) newest first: "
                "old and new value, why (the measured figures), how it was tried (mode: canary on a share of "
                "payments, switchback alternating whole intervals, or before_after), both arms' figures, the "
                "statistical verdict with p-values, and whether it was kept or reverted."
            ),
            annotations=READ_ONLY,
        )
        async def get_optimizations(
            provider: Annotated[str | None, Field(description="Only this provider")] = None,
            limit: Annotated[int, Field(ge=1, le=500, description="At most this many")] = 50,
        ) -> OptimizationList:
            self._check_provider(provider)
            return OptimizationList(
                optimizations=system.auto_optimizer.optimizations(provider=provider, limit=limit)
            )

        @mcp.tool(
            title="Get a provider's tunables",
            description=(
                "One provider's tunables now (timeout_s, max_attempts, base_delay_s, max_delay_s, "
                "rate_limit_per_s, rate_limit_burst, retry_budget_ratio, status_cache_ttl_s, "
                "breaker_failure_rate, breaker_wait_s), their documented defaults, the allowed range of each, the values "
                "an operator pinned, and the optimizer's experiment in flight if any."
            ),
            annotations=READ_ONLY,
        )
        async def get_provider_config(provider: ProviderName) -> ProviderConfig:
            self._check_provider(provider)
            return system.get_provider_config(provider)

        @mcp.tool(
            title="Set a provider's tunables",
            description=(
                'Override tunables of one provider now, e.g. {"timeout_s": 20}. Each value must be within '
                "the range get_provider_config lists. With pin=true (default) the optimizer never changes "
                'those parameters until released with release=[names] (or release=["*"] for all); an '
                "experiment on a parameter you set is ended. Audited."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
            ),
        )
        async def set_provider_config(
            provider: ProviderName,
            reason: Reason,
            ctx: Context,
            values: Annotated[
                dict[str, float], Field(description="parameter -> new value (empty to only release)")
            ]
            | None = None,
            pin: Annotated[bool, Field(description="Keep the optimizer off these parameters")] = True,
            release: Annotated[
                list[str] | None,
                Field(description="Pinned parameters to hand back to the optimizer; * = all"),
            ] = None,
        ) -> ProviderConfig:
            self._check_provider(provider)
            arguments = {
                "provider": provider,
                "values": values or {},
                "pin": pin,
                "release": release,
                "reason": reason,
            }
            try:
                config = system.get_provider_config(provider)
                if values:
                    config = system.set_provider_config(provider, values, pin=pin, reason=reason)
                if release:
                    config = system.release_provider_config(provider, None if "*" in release else release)
            except ProviderConfigError as exc:
                self._audit(ctx, "set_provider_config", arguments, False, {"error": str(exc)})
                raise ToolError(f"values.{exc}") from None
            self._audit(ctx, "set_provider_config", arguments, True, config.model_dump(mode="json"))
            return config

        @mcp.tool(
            title="Revert an optimization",
            description=(
                "Undo one optimization (ids from get_optimizations): a running experiment ends and the lane gets "
                "its previous value back; a kept change is rolled back to its old value, unless the parameter was changed "
                "since (then use set_provider_config). Audited."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
            ),
        )
        async def revert_optimization(
            id: Annotated[str, Field(min_length=1, max_length=200, description="The optimization's id")],
            reason: Reason,
            ctx: Context,
        ) -> Optimization:
            arguments = {"id": id, "reason": reason}
            try:
                record = system.revert_optimization(id, reason=reason)
            except KeyError:
                self._audit(ctx, "revert_optimization", arguments, False, {"error": "unknown id"})
                raise ToolError(f"id: no optimization {id!r} (see get_optimizations)") from None
            except ValueError as exc:
                self._audit(ctx, "revert_optimization", arguments, False, {"error": str(exc)})
                raise ToolError(f"id: {exc}") from None
            self._audit(ctx, "revert_optimization", arguments, True, {"status": record.status.value})
            return record

        @mcp.tool(
            title="Get events",
            description=(
                "Events from the store (they survive restarts), oldest first: every decision of the loops "
                "with its measured inputs in `data`, every manual action, health and breaker changes. "
                "Filter by provider, event type and a start time (ISO 8601, e.g. 2026-11-28T10:00:00Z)."
            ),
            annotations=READ_ONLY,
        )
        async def get_events(
            provider: Annotated[str | None, Field(description="Only events about this provider")] = None,
            type: Annotated[EventType | None, Field(description="Only this event type")] = None,
            since: Annotated[datetime | None, Field(description="Only events at or after this time")] = None,
            limit: Annotated[int, Field(ge=1, le=1000, description="The newest this many")] = 100,
        ) -> EventList:
            events = system.query_events(
                provider=provider,
                types=[type] if type is not None else None,
                since=since.timestamp() if since is not None else None,
                limit=limit,
            )
            return EventList(events=events, count=len(events))

        @mcp.tool(
            title="Set autonomy mode (kill switch)",
            description=(
                "Turn one autonomy loop (self_healer, auto_scaler, predictive_maintenance, auto_optimizer) "
                "or all of them on, off, or to dry_run (decide and report, act on nothing). Takes effect "
                "at once, survives restarts until changed again, and is audited."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
            ),
        )
        async def set_autonomy(
            component: Annotated[
                Literal["self_healer", "auto_scaler", "predictive_maintenance", "auto_optimizer", "all"],
                Field(description="Which loop, or all"),
            ],
            mode: Annotated[Mode, Field(description="on | off | dry_run")],
            reason: Reason,
            ctx: Context,
        ) -> AutonomyChange:
            previous, new = system.set_autonomy(component, mode, reason=reason)
            audit_id = self._audit(
                ctx,
                "set_autonomy",
                {"component": component, "mode": mode.value, "reason": reason},
                True,
                {"previous_mode": previous.value, "mode": new.value},
            )
            return AutonomyChange(
                component=component, previous_mode=previous, mode=new, reason=reason, audit_id=audit_id
            )

    def _register_payment_tools(self) -> None:
        system = self.system
        mcp = self.mcp
        money_annotations = ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True
        )

        def build_request(
            operation: Operation,
            idempotency_key: str,
            amount_minor: int,
            currency: str,
            phone: str,
            country: str,
            description: str,
        ) -> PaymentRequest:
            try:
                e164 = normalize_msisdn(phone, DIAL_CODES.get(country))
            except ValueError as exc:
                raise ToolError(f"phone: {exc}") from None
            return PaymentRequest(
                idempotency_key=idempotency_key,
                operation=operation,
                money=Money(amount_minor=amount_minor, currency=currency),
                phone=e164,
                country=country,
                description=description,
            )

        async def submit(request: PaymentRequest) -> PaymentRecord:
            try:
                return await system.submit_payment(request)
            except IdempotencyConflict as exc:
                raise ToolError(f"idempotency_key: {exc}") from None
            except NoRouteError as exc:
                raise ToolError(f"currency/country: {exc}") from None
            except StoreUnavailable as exc:
                raise ToolError(
                    f"{exc}. Nothing was sent to any provider; retry later with the same idempotency_key"
                ) from None

        @mcp.tool(
            title="Request a payment (collect)",
            description=(
                "Ask a customer to pay (M-Pesa STK push, MoMo request-to-pay, mobile-money charge) through the "
                "best healthy provider for the currency and country, failing over along the backup map only when "
                "the provider certainly did not process it. Moves real money: always pass a unique "
                "idempotency_key and reuse it when retrying. Returns the payment record: status is usually "
                "`pending` until the customer confirms (poll get_payment); `unknown` means the provider may have "
                "it and it was not sent elsewhere."
            ),
            annotations=money_annotations,
        )
        async def request_payment(
            idempotency_key: IdempotencyKey,
            amount_minor: AmountMinor,
            currency: Currency,
            phone: Phone,
            country: Country,
            description: Annotated[
                str, Field(max_length=100, description="Shown to the customer")
            ] = "payment",
        ) -> PaymentRecord:
            return await submit(
                build_request(
                    Operation.COLLECT, idempotency_key, amount_minor, currency, phone, country, description
                )
            )

        @mcp.tool(
            title="Send a payment (payout)",
            description=(
                "Send money to a customer's mobile wallet (M-Pesa B2C, MoMo disbursement, transfer) with the same "
                "routing and no-double-payment rules as request_payment. Moves real money: pass a unique "
                "idempotency_key and reuse it when retrying."
            ),
            annotations=money_annotations,
        )
        async def send_payment(
            idempotency_key: IdempotencyKey,
            amount_minor: AmountMinor,
            currency: Currency,
            phone: Phone,
            country: Country,
            description: Annotated[
                str, Field(max_length=100, description="Shown to the customer")
            ] = "payout",
        ) -> PaymentRecord:
            return await submit(
                build_request(
                    Operation.PAYOUT, idempotency_key, amount_minor, currency, phone, country, description
                )
            )

        @mcp.tool(
            title="Get a payment",
            description=(
                "A payment by its idempotency key, our reference or the provider's reference, with every provider "
                "attempt it took. A pending or unknown payment is re-queried at its provider first."
            ),
            annotations=READ_ONLY,
        )
        async def get_payment(
            key_or_reference: Annotated[
                str, Field(min_length=1, max_length=200, description="Idempotency key or a reference")
            ],
        ) -> PaymentRecord:
            record = await system.get_payment(key_or_reference)
            if record is None:
                raise ToolError(f"key_or_reference: no payment with key or reference {key_or_reference!r}")
            return record

        @mcp.tool(
            title="List payments",
            description=(
                "Payments newest first, optionally only one status and provider. `needs_reconciliation` lists "
                "the payments whose outcome the engine could not establish within their provider's bound "
                "(status_reason says why): resolve each with resolve_payment after checking the provider's "
                "portal. Also returns, per provider, the age of its oldest payment not yet final."
            ),
            annotations=READ_ONLY,
        )
        async def list_payments(
            status: Annotated[TransactionStatus | None, Field(description="Only this status")] = None,
            provider: Annotated[str | None, Field(description="Only this provider")] = None,
            limit: Annotated[int, Field(ge=1, le=500, description="At most this many")] = 50,
        ) -> PaymentList:
            self._check_provider(provider)
            return PaymentList(
                payments=await system.list_payments(status=status, provider=provider, limit=limit),
                oldest_open_age_s=await system.reconciler.oldest_open_age_s(),
            )

        @mcp.tool(
            title="Resolve a payment by hand",
            description=(
                "Record an operator's verdict on a payment left `needs_reconciliation` (or `unknown`) after "
                "checking the provider's own records: `succeeded` (the customer was charged / paid) or "
                "`failed` (nothing moved). Never sends anything to a provider. Give the provider's reference "
                "(receipt) you found when there is one. Audited."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
            ),
        )
        async def resolve_payment(
            idempotency_key: Annotated[
                str, Field(min_length=1, max_length=100, description="The payment's key")
            ],
            outcome: Annotated[
                Literal["succeeded", "failed"], Field(description="What the provider's records show")
            ],
            reason: Reason,
            ctx: Context,
            provider_reference: Annotated[
                str | None, Field(max_length=100, description="The provider's id or receipt, if found")
            ] = None,
        ) -> PaymentRecord:
            arguments = {
                "idempotency_key": idempotency_key,
                "outcome": outcome,
                "reason": reason,
                "provider_reference": provider_reference,
            }
            try:
                record = await system.resolve_payment(
                    idempotency_key,
                    TransactionStatus(outcome),
                    reason=reason,
                    provider_reference=provider_reference,
                )
            except KeyError:
                self._audit(ctx, "resolve_payment", arguments, False, {"error": "unknown key"})
                raise ToolError(f"idempotency_key: no payment {idempotency_key!r}") from None
            except ValueError as exc:
                self._audit(ctx, "resolve_payment", arguments, False, {"error": str(exc)})
                raise ToolError(f"idempotency_key: {exc}") from None
            self._audit(ctx, "resolve_payment", arguments, True, {"status": record.status.value})
            return record

        @mcp.tool(
            title="Submit a transfer's OTP",
            description=(
                "Finalise a payout its provider holds for the merchant's one-time password (status "
                "`needs_operator_otp`: Paystack sends the OTP to the merchant's phone or email when OTP is on for "
                "transfers). The engine never finalises one by itself. The OTP is sent to the provider only and "
                "never stored, logged or echoed. Audited."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True
            ),
        )
        async def submit_transfer_otp(
            idempotency_key: Annotated[
                str, Field(min_length=1, max_length=100, description="The payout's key")
            ],
            otp: Annotated[
                str, Field(min_length=4, max_length=12, pattern=r"^[0-9A-Za-z]+$", description="The OTP")
            ],
            reason: Reason,
            ctx: Context,
        ) -> PaymentRecord:
            arguments = {"idempotency_key": idempotency_key, "otp": "(withheld)", "reason": reason}
            try:
                record = await system.submit_transfer_otp(idempotency_key, otp)
            except KeyError:
                self._audit(ctx, "submit_transfer_otp", arguments, False, {"error": "unknown key"})
                raise ToolError(f"idempotency_key: no payment {idempotency_key!r}") from None
            except ValueError as exc:
                self._audit(ctx, "submit_transfer_otp", arguments, False, {"error": str(exc)})
                raise ToolError(f"idempotency_key: {exc}") from None
            except ProviderError as exc:
                self._audit(ctx, "submit_transfer_otp", arguments, False, {"error": exc.provider_message})
                raise ToolError(f"otp: the provider refused it: {exc.provider_message}") from None
            self._audit(ctx, "submit_transfer_otp", arguments, True, {"status": record.status.value})
            return record

        @mcp.tool(
            title="Get provider callbacks",
            description=(
                "Callbacks the providers posted, newest first: what each claimed (status, amount, payer), whether "
                "its signature verified, and what became of it: confirmed by a status pull, pending (the pull "
                "said pending or not found yet; re-checked), refused (it contradicted the payment or the "
                "provider: audited), unmatched (no payment yet), or duplicate."
            ),
            annotations=READ_ONLY,
        )
        async def get_callbacks(
            provider: Annotated[str | None, Field(description="Only this provider")] = None,
            state: Annotated[CallbackState | None, Field(description="Only this state")] = None,
            idempotency_key: Annotated[
                str | None, Field(max_length=100, description="Only this payment's callbacks")
            ] = None,
            limit: Annotated[int, Field(ge=1, le=500, description="At most this many")] = 50,
        ) -> CallbackList:
            self._check_provider(provider)
            return CallbackList(
                callbacks=await system.list_callbacks(
                    provider=provider, state=state, idempotency_key=idempotency_key, limit=limit
                )
            )

        @mcp.tool(
            title="List providers",
            description=(
                "Every registered provider: operations, currencies and countries it supports, measured health, "
                "breaker state, rate limit and current tunables, backups and failover state. Never secrets."
            ),
            annotations=READ_ONLY,
        )
        async def list_providers() -> ProviderList:
            return ProviderList(
                providers=[system.provider_status(n) for n in system.providers.names()],
                backup_map=system.providers.backup_map(),
                failed_over=system.router.failed_over,
            )

        @mcp.tool(
            title="Set backup providers",
            description=(
                "Set the ordered failover targets of one provider (the original setBackupProviders). Validated: "
                "every backup must be registered, share a currency with the primary, not be the primary, and the "
                "backup map must stay free of cycles. Takes effect for the next payment. Audited."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
            ),
        )
        async def set_backup_providers(
            primary: ProviderName,
            backups: Annotated[
                list[str], Field(max_length=10, description="Ordered backups, e.g. [intasend, paystack]")
            ],
            reason: Reason,
            ctx: Context,
        ) -> ProviderList:
            arguments = {"primary": primary, "backups": backups, "reason": reason}
            try:
                previous = system.set_backup_providers(primary, backups)
            except (UnknownProviderError, BackupMapError) as exc:
                self._audit(ctx, "set_backup_providers", arguments, False, {"error": str(exc)})
                raise ToolError(f"backups: {exc}") from None
            self._audit(
                ctx, "set_backup_providers", arguments, True, {"previous": previous, "backups": backups}
            )
            return await list_providers()

    def _register_sandbox_tools(self, sandbox: EmbeddedSandbox) -> None:
        spec_adapter: TypeAdapter[Any] = TypeAdapter(FaultSpec)
        faults = sandbox.state.faults

        @self.mcp.tool(
            title="Inject a fault into the sandbox (demo)",
            description=(
                "Sandbox mode only: schedule a fault on an emulated provider so the autonomy loops have "
                "something real to react to. kind: outage (params.mode refused|503|reset), latency "
                "(distribution fixed: fixed_ms; lognormal: median_ms, p99_ms; ramp: from_ms, to_ms), error_rate "
                "(rate 0..1, http_status, after_processing: a 5xx after the payment was taken), accept_then_hang "
                "(rate, hang_s), throttle (max_per_s), flapping (period_s, down_fraction), credential_expiry, "
                "customer_errors (rate, code, synchronous: most payers fail on their side, e.g. M-Pesa 1037; "
                "no breaker should trip). Starts after start_s seconds and lasts duration_s (omit: "
                "until cleared with kind=clear). Audited."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
            ),
        )
        async def inject_fault(
            provider: ProviderName,
            kind: Annotated[
                Literal[
                    "outage",
                    "latency",
                    "error_rate",
                    "accept_then_hang",
                    "throttle",
                    "flapping",
                    "credential_expiry",
                    "customer_errors",
                    "clear",
                ],
                Field(description="The fault, or clear to remove this provider's faults"),
            ],
            reason: Reason,
            ctx: Context,
            params: Annotated[dict[str, Any], Field(description="Parameters of the fault kind")]
            | None = None,
            endpoints: Annotated[
                list[EndpointKind] | None, Field(description="Only these endpoints (default: all)")
            ] = None,
            start_s: Annotated[float, Field(ge=0, le=86_400, description="Seconds from now")] = 0.0,
            duration_s: Annotated[
                float | None, Field(gt=0, le=86_400, description="How long it lasts")
            ] = None,
        ) -> dict[str, Any]:
            arguments = {"provider": provider, "kind": kind, "params": params or {}, "reason": reason}
            if provider not in sandbox.adapters:
                raise ToolError(
                    f"provider: {provider!r} is not emulated; emulated: {', '.join(sandbox.adapters)}"
                )
            if kind == "clear":
                removed = faults.clear(provider)
                self._audit(ctx, "inject_fault", arguments, True, {"cleared": removed})
                return {"cleared": removed, "faults": [f.to_json() for f in faults.faults(provider)]}
            try:
                spec = spec_adapter.validate_python({"kind": kind, **(params or {})})
                fault = faults.add(
                    provider,
                    spec,
                    endpoints=endpoints or (),
                    start_s=start_s,
                    end_s=None if duration_s is None else start_s + duration_s,
                )
            except ValidationError as exc:
                problems = "; ".join(
                    f"params.{'.'.join(str(p) for p in e['loc'][1:]) or kind}: {e['msg']}"
                    for e in exc.errors()
                )
                raise ToolError(problems) from None
            except ValueError as exc:
                raise ToolError(f"params: {exc}") from None
            self._audit(ctx, "inject_fault", arguments, True, fault.to_json())
            return {"injected": fault.to_json(), "faults": [f.to_json() for f in faults.faults(provider)]}

    def _check_provider(self, provider: str | None) -> None:
        if provider is not None and provider not in self.system.providers:
            raise ToolError(f"provider: {UnknownProviderError(provider, self.system.providers.names())}")

    # --- resources ----------------------------------------------------------------------

    def _register_resources(self) -> None:
        system = self.system
        mcp = self.mcp
        json_type = "application/json"

        def dump(model: BaseModel | list[Any] | dict[str, Any]) -> str:
            if isinstance(model, BaseModel):
                return model.model_dump_json(indent=2)
            return json.dumps(model, indent=2, default=str)

        @mcp.resource(
            uris.STATUS,
            name="status",
            description="Full system status: get_status plus every measured detail",
            mime_type=json_type,
        )
        async def status_resource() -> str:
            return dump(await system.get_status())

        @mcp.resource(uris.STATS, name="stats", description="Statistics (as get_stats)", mime_type=json_type)
        async def stats_resource() -> str:
            return dump(await system.get_stats())

        @mcp.resource(
            uris.PROVIDERS,
            name="providers",
            description="Every provider's health and backups",
            mime_type=json_type,
        )
        async def providers_resource() -> str:
            return dump([system.provider_status(n).model_dump(mode="json") for n in system.providers.names()])

        @mcp.resource(
            "autonomy://providers/{name}",
            name="provider",
            description="One provider's health, backups and capabilities",
            mime_type=json_type,
        )
        async def provider_resource(name: str) -> str:
            try:
                return dump(system.provider_status(name))
            except UnknownProviderError as exc:
                raise ResourceNotFoundError(str(exc)) from None

        @mcp.resource(
            uris.PREDICTIONS,
            name="predictions",
            description="Active and judged predictions",
            mime_type=json_type,
        )
        async def predictions_resource() -> str:
            p = system.predictive_maintenance
            return dump(PredictionList(predictions=p.predictions(), scores=p.scores()))

        @mcp.resource(
            uris.INCIDENTS,
            name="incidents",
            description="The 50 newest incidents with their measured times, and the incident statistics",
            mime_type=json_type,
        )
        async def incidents_resource() -> str:
            return dump(
                IncidentList(incidents=system.get_incidents(limit=50), stats=system.incidents.stats())
            )

        @mcp.resource(
            uris.MAINTENANCE,
            name="maintenance",
            description="Maintenance windows: scheduled, running and past",
            mime_type=json_type,
        )
        async def maintenance_resource() -> str:
            return dump(MaintenanceWindowList(windows=system.get_maintenance_windows(limit=50)))

        @mcp.resource(
            uris.OPTIMIZATIONS, name="optimizations", description="Optimization history", mime_type=json_type
        )
        async def optimizations_resource() -> str:
            return dump(OptimizationList(optimizations=system.auto_optimizer.optimizations()))

        @mcp.resource(
            uris.EVENTS_RECENT, name="recent-events", description="The 100 newest events", mime_type=json_type
        )
        async def events_resource() -> str:
            events = system.query_events(limit=100)
            return dump(EventList(events=events, count=len(events)))

        @mcp.resource(
            uris.SCALING,
            name="scaling",
            description="Replica state, scaler decisions and history",
            mime_type=json_type,
        )
        async def scaling_resource() -> str:
            state = await system.auto_scaler.backend.read()
            history = system.query_events(
                types=[EventType.SCALED_UP, EventType.SCALED_DOWN, EventType.SCALING_DECISION], limit=50
            )
            return dump(
                {
                    "state": state.model_dump(mode="json"),
                    "scaler": system.auto_scaler.status().model_dump(mode="json"),
                    "history": [e.model_dump(mode="json") for e in history],
                }
            )

    # --- prompt -------------------------------------------------------------------------

    def _register_prompt(self) -> None:
        system = self.system

        @self.mcp.prompt(
            name="incident_report",
            title="Incident report",
            description="Gather one provider's status, recent events and predictions for an incident write-up",
        )
        async def incident_report(provider: str) -> str:
            try:
                status = system.provider_status(provider)
            except UnknownProviderError as exc:
                raise MCPError(INVALID_PARAMS, f"provider: {exc}") from None
            events = system.query_events(provider=provider, limit=50)
            predictions = system.predictive_maintenance.predictions(provider=provider)
            incidents = system.get_incidents(provider=provider, limit=10)
            lines = [
                f"Write an incident report for payment provider `{provider}`.",
                "Use only the measured data below; say 'not measured' where a figure is null.",
                "Structure: summary, impact, timeline (from the events), actions taken by the autonomy "
                "loops and operators, current state, predictions, follow-ups.",
                "",
                "## Provider status",
                status.model_dump_json(indent=2),
                "",
                f"## Recent events ({len(events)}, oldest first)",
                *(f"- {e.time_iso} [{e.severity.value}] {e.type.value}: {e.message}" for e in events),
                "",
                f"## Predictions ({len(predictions)})",
                *(p.model_dump_json() for p in predictions),
                "",
                f"## Incidents ({len(incidents)}, newest first; times in seconds)",
                *(i.model_dump_json() for i in incidents),
            ]
            return "\n".join(lines)

    # --- protocol handlers: subscribe, logging level, completions ------------------------

    def _register_protocol_handlers(self) -> None:
        lowlevel = self.mcp._lowlevel_server  # the SDK exposes these methods only on the low-level server
        notifier = self.notifier

        def track(ctx: ServerRequestContext[Any, Any]) -> int:
            connection = _connection_of(ctx.session)
            key = id(connection)
            if key not in self._tracked_connections:
                self._tracked_connections.add(key)
                exit_stack = getattr(connection, "exit_stack", None)
                if exit_stack is not None:
                    exit_stack.callback(self._forget_connection, key)
            return key

        async def on_subscribe(
            ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams
        ) -> EmptyResult:
            notifier.subscribe_legacy(str(params.uri), ctx.session, track(ctx))
            return EmptyResult()

        async def on_unsubscribe(
            ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
        ) -> EmptyResult:
            notifier.unsubscribe_legacy(str(params.uri), track(ctx))
            return EmptyResult()

        async def on_set_level(
            ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams
        ) -> EmptyResult:
            self.log_levels[track(ctx)] = params.level
            return EmptyResult()

        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
        lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, on_set_level)

        @self.mcp.completion()  # type: ignore[no-untyped-call, untyped-decorator]  # SDK decorator is untyped
        async def complete(
            ref: PromptReference | ResourceTemplateReference,
            argument: CompletionArgument,
            context: CompletionContext | None,
        ) -> Completion | None:
            if argument.name not in ("provider", "name"):
                return None
            names = [n for n in self.system.providers.names() if n.startswith(argument.value)]
            return Completion(values=names[:100], total=len(names), has_more=len(names) > 100)
