"""MTN MoMo Open API, emulated: per-product tokens, request-to-pay, transfers, refunds, balance.

Mounted at `/mtn_momo`; the paths below match `sandbox.momodeveloper.mtn.com`. Shapes follow the
MoMo operation pages, the "Common Error Codes" table and the official SDKs (MTN-Group):

- `POST /{collection|disbursement}/token/`: Basic apiUser:apiKey and *that product's*
  `Ocp-Apim-Subscription-Key`; no body (a body is a 400). -> `{access_token, token_type:
  "access_token", expires_in: 3600}`. Wrong apiUser/apiKey -> 401 `{"error": "login_failed"}`.
  A token works only for the product that issued it.
- Every call: missing or wrong subscription key -> 401 `{statusCode, message}` (the API
  gateway's shape); missing, unknown, expired, other-product or revoked token -> 401
  `{code, message}`; `X-Target-Environment` must match (else 500
  `NOT_ALLOWED_TARGET_ENVIRONMENT`). A `credential_expiry` fault revokes tokens issued before
  its cutoff.
- `POST /collection/v1_0/requesttopay`: `X-Reference-Id` must be a UUID version 4 (else 400);
  reused -> 409 `RESOURCE_ALREADY_EXIST`; currency other than the environment's (EUR in the
  sandbox) -> 400 `INVALID_CURRENCY`; accepted -> 202 with an empty body. The customer (see
  `CustomerBehavior`) approves after their delay (SUCCESSFUL, with a financialTransactionId),
  declines (FAILED, reason `APPROVAL_REJECTED` or their decline code, see `CUSTOMER_CODES`) or
  lets it expire (FAILED, `EXPIRED`, after `approval_timeout_s`). MoMo has no synchronous answer
  for a busy payer (a valid request is always a 202): a `busy` customer, or a synchronous
  `customer_errors` victim, gets the 202 and fails `APPROVAL_REJECTED` within
  `BUSY_RESULT_DELAY_S`. A storm's victims fail with its code (default `EXPIRED`, at
  `approval_timeout_s`). `X-Callback-Url`, when given, receives the final state.
- `GET /collection/v1_0/requesttopay/{id}`: the request's state; unknown -> 404
  `RESOURCE_NOT_FOUND`, and so is a known one for `Realism.lookup_lag_s` after its 202 (MoMo's
  lookups are eventually consistent).
- `POST /disbursement/v1_0/transfer` and `GET .../transfer/{id}`: as above with a payee; the
  result comes after `transfer_delay_s` (FAILED `NOT_ENOUGH_FUNDS` when the disbursement
  balance is short, or the customer's `payout_result_code`).
- `POST /disbursement/v1_0/refund` (`referenceIdToRefund` = a collection's X-Reference-Id) and
  `GET .../refund/{id}`: SUCCESSFUL after `refund_delay_s` when the collection succeeded and
  the refunds stay within its amount, else FAILED.
- Callbacks: the final state of a request to pay, transfer or refund goes once to its
  `X-Callback-Url`, with the same body as the `GET`, unsigned, through the outbox (which applies
  the realism's loss, duplication and delay). MoMo may use PUT or POST ("Allow PUT & POST on
  your callback listener host"); the outbox delivers by POST.
- `GET /{product}/v1_0/account/balance` -> `{availableBalance, currency}`.
- Rate limiting is the gateway's 429 `{statusCode, message}` with `Retry-After`.
Where MoMo documents no exact body (a malformed request), the `{code, message}` shape is kept
with the code `BAD_REQUEST` (the table's "REQUEST REJECTED / BAD REQUEST").
"""

from __future__ import annotations

import base64
import random
import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mcp_autonomy.sandbox.core import (
    BUSY_RESULT_DELAY_S,
    SandboxContext,
    json_response,
    read_json_object,
)
from mcp_autonomy.sandbox.faults import EndpointKind, Rejection
from mcp_autonomy.sandbox.ledger import LedgerEntry, LedgerOperation, LedgerStatus

NAME = "mtn_momo"
Product = Literal["collection", "disbursement"]
MSISDN_RE = re.compile(r"^\d{8,15}$")
MINOR_UNIT_EXPONENTS = {"UGX": 0, "XOF": 0, "XAF": 0, "GNF": 0, "RWF": 0}
MAX_NOTE_CHARS = 160
DECLINE_REASON = "APPROVAL_REJECTED"
NO_ANSWER_REASON = "EXPIRED"
CUSTOMER_CODES = {
    "APPROVAL_REJECTED": "The payer rejected the request.",
    "EXPIRED": "The payer did not answer before the request expired.",
    "NOT_ENOUGH_FUNDS": "The payer does not have enough funds.",
    "PAYER_LIMIT_REACHED": "The payer's limit has been reached.",
    "PAYER_NOT_FOUND": "The payer does not exist or is not registered.",
    "PAYMENT_NOT_APPROVED": "The payer did not approve the payment.",
    "TRANSACTION_CANCELED": "The payer cancelled the transaction.",
}
"""Failure reasons of a request to pay that are the payer's (MoMo's ErrorReason codes)."""
INVALID_KEY = "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription."
MISSING_KEY = (
    "Access denied due to missing subscription key. Make sure to include subscription key when making "
    "requests to an API."
)


class MtnMomoSandboxConfig(BaseModel):
    """What the emulated MoMo accepts (all fake), its market, and its timing knobs."""

    model_config = ConfigDict(frozen=True)

    api_user: str = "0f3c2a51-8d7e-4b6a-9c1d-2e5f7a8b9c0d"
    api_key: str = "sandbox-momo-api-key"
    collection_subscription_key: str = "sandbox-momo-collection-key"
    disbursement_subscription_key: str = "sandbox-momo-disbursement-key"
    target_environment: str = "sandbox"
    currency: str = "EUR"
    token_ttl_s: int = Field(3600, ge=1)
    approval_timeout_s: float = Field(300.0, gt=0, description="an ignored request expires after this")
    transfer_delay_s: float = Field(3.0, ge=0)
    refund_delay_s: float = Field(3.0, ge=0)
    disbursement_balance_minor: int = Field(10**12, ge=0)


@dataclass
class _Token:
    product: Product
    issued_at_s: float
    expires_at_s: float


@dataclass
class _Resource:
    """A request to pay, a transfer or a refund, under its X-Reference-Id."""

    kind: Literal["requesttopay", "transfer", "refund"]
    entry: LedgerEntry | None
    body: dict[str, Any]
    callback_url: str | None
    accepted_at_s: float  # clock.monotonic() of the 202: lookups lag it (see `Realism`)
    status: str = "PENDING"
    reason: str | None = None
    financial_id: str | None = None
    refunded_minor: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class MtnMomoEmulator:
    """The emulated MoMo Open API (see the module docstring for its behaviour)."""

    name = NAME
    customer_codes = CUSTOMER_CODES
    no_answer_code = NO_ANSWER_REASON

    def __init__(self, ctx: SandboxContext) -> None:
        self.ctx = ctx
        given = ctx.credentials.get(NAME)
        self.config = given if isinstance(given, MtnMomoSandboxConfig) else MtnMomoSandboxConfig()
        self._rng = random.Random(f"{ctx.seed}:{NAME}")
        self._tokens: dict[str, _Token] = {}
        self._resources: dict[tuple[str, str], _Resource] = {}  # (kind, X-Reference-Id)
        self._disbursement_balance_minor = self.config.disbursement_balance_minor
        self.tokens_issued: dict[Product, int] = {"collection": 0, "disbursement": 0}
        """Tokens minted per product (tests check per-product tokens and refreshes with it)."""

    def routes(self) -> list[BaseRoute]:
        """MoMo's paths, relative to the `/mtn_momo` mount."""
        routes: list[BaseRoute] = []
        for product in ("collection", "disbursement"):
            routes += [
                Route(f"/{product}/token/", self._token_route(product), methods=["POST"]),
                Route(
                    f"/{product}/v1_0/account/balance",
                    self._route(product, EndpointKind.PROBE, self._balance),
                    methods=["GET"],
                ),
            ]
        routes += [
            Route(
                "/collection/v1_0/requesttopay",
                self._route("collection", EndpointKind.COLLECT, self._create("requesttopay")),
                methods=["POST"],
            ),
            Route(
                "/collection/v1_0/requesttopay/{reference_id}",
                self._route("collection", EndpointKind.STATUS, self._get("requesttopay")),
                methods=["GET"],
            ),
            Route(
                "/disbursement/v1_0/transfer",
                self._route("disbursement", EndpointKind.PAYOUT, self._create("transfer")),
                methods=["POST"],
            ),
            Route(
                "/disbursement/v1_0/transfer/{reference_id}",
                self._route("disbursement", EndpointKind.STATUS, self._get("transfer")),
                methods=["GET"],
            ),
            Route(
                "/disbursement/v1_0/refund",
                self._route("disbursement", EndpointKind.REFUND, self._create("refund")),
                methods=["POST"],
            ),
            Route(
                "/disbursement/v1_0/refund/{reference_id}",
                self._route("disbursement", EndpointKind.STATUS, self._get("refund")),
                methods=["GET"],
            ),
        ]
        return routes

    # --- shapes --------------------------------------------------------------------------

    @staticmethod
    def _error(http_status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
        return json_response({"code": code, "message": message}, http_status, headers)

    @staticmethod
    def _gateway(http_status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return json_response({"statusCode": http_status, "message": message}, http_status, headers)

    def rejection_response(self, rejection: Rejection, endpoint: EndpointKind) -> Response:
        """The gateway's 429 and 503, and MoMo's own 500 `INTERNAL_PROCESSING_ERROR`."""
        if rejection.kind == "throttled":
            wait_s = rejection.retry_after_s or 1
            return self._gateway(
                rejection.http_status or 429,
                f"Rate limit is exceeded. Try again in {wait_s:g} seconds.",
                {"Retry-After": f"{wait_s:g}"},
            )
        if rejection.kind == "unavailable":
            return self._error(503, "SERVICE_UNAVAILABLE", "Service unavailable, try again later.")
        return self._error(
            rejection.http_status or 500, "INTERNAL_PROCESSING_ERROR", "An internal error occurred."
        )

    def _subscription_key(self, product: Product) -> str:
        if product == "collection":
            return self.config.collection_subscription_key
        return self.config.disbursement_subscription_key

    def _check_key(self, request: Request, product: Product) -> Response | None:
        key = request.headers.get("ocp-apim-subscription-key")
        if not key:
            return self._gateway(401, MISSING_KEY)
        if key != self._subscription_key(product):
            return self._gateway(401, INVALID_KEY)
        return None

    # --- auth ----------------------------------------------------------------------------

    def _token_route(self, product: Product) -> Any:
        async def endpoint(request: Request) -> Response:
            return await self.ctx.guarded(
                self, request, EndpointKind.AUTH, lambda: self._issue(request, product)
            )

        return endpoint

    async def _issue(self, request: Request, product: Product) -> Response:
        refused = self._check_key(request, product)
        if refused is not None:
            return refused
        if await request.body():
            return self._error(400, "BAD_REQUEST", "The token API takes no body.")
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, key = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            user, key = "", ""
        if scheme.lower() != "basic" or (user, key) != (self.config.api_user, self.config.api_key):
            return json_response({"error": "login_failed"}, 401)
        now = self.ctx.clock.monotonic()
        token = f"eyJ0eXAiOiJKV1QiLCJhbGciOiJSMjU2In0.{self._rng.getrandbits(192):048x}.{product}"
        self._tokens[token] = _Token(product, now, now + self.config.token_ttl_s)
        self.tokens_issued[product] += 1
        return json_response(
            {"access_token": token, "token_type": "access_token", "expires_in": self.config.token_ttl_s}
        )

    def _check_bearer(self, request: Request, product: Product, endpoint: EndpointKind) -> Response | None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = self._tokens.get(value) if scheme.lower() == "bearer" else None
        now = self.ctx.clock.monotonic()
        expiry = self.ctx.faults.credential_cutoff(NAME, endpoint)
        if (
            token is None
            or token.product != product
            or now >= token.expires_at_s
            or (expiry is not None and token.issued_at_s < expiry.issued_before_s)
        ):
            return self._error(401, "UNAUTHORIZED", "Access token is missing, invalid or expired.")
        if request.headers.get("x-target-environment") != self.config.target_environment:
            return self._error(
                500, "NOT_ALLOWED_TARGET_ENVIRONMENT", "Access to target environment is forbidden."
            )
        return None

    def _route(self, product: Product, endpoint: EndpointKind, handler: Any) -> Any:
        async def endpoint_fn(request: Request) -> Response:
            async def authorized() -> Response:
                refused = self._check_key(request, product) or self._check_bearer(request, product, endpoint)
                return refused if refused is not None else await handler(request, product)

            return await self.ctx.guarded(self, request, endpoint, authorized)

        return endpoint_fn

    # --- creation ------------------------------------------------------------------------

    def _minor(self, amount: Any, currency: str) -> int | None:
        if not isinstance(amount, str | int) or isinstance(amount, bool):
            return None
        try:
            value = Decimal(str(amount)) * (10 ** MINOR_UNIT_EXPONENTS.get(currency, 2))
        except (InvalidOperation, ValueError):
            return None
        if value <= 0 or value != value.to_integral_value():
            return None
        return int(value)

    def _create(self, kind: Literal["requesttopay", "transfer", "refund"]) -> Any:
        async def handler(request: Request, product: Product) -> Response:
            reference_id = request.headers.get("x-reference-id", "")
            try:
                parsed = uuid.UUID(reference_id)
            except ValueError:
                parsed = None
            if parsed is None or parsed.version != 4 or str(parsed) != reference_id.lower():
                return self._error(400, "BAD_REQUEST", "X-Reference-Id must be a UUID version 4.")
            body = await read_json_object(request)
            if body is None:
                return self._error(400, "BAD_REQUEST", "The request body is not valid JSON.")
            if (kind, reference_id) in self._resources:
                return self._error(
                    409, "RESOURCE_ALREADY_EXIST", "Duplicated reference id. Creation of resource failed."
                )
            currency = body.get("currency")
            if currency != self.config.currency:
                return self._error(400, "INVALID_CURRENCY", "Currency not supported.")
            minor = self._minor(body.get("amount"), currency)
            if minor is None:
                return self._error(400, "BAD_REQUEST", "Invalid amount.")
            for note in ("payerMessage", "payeeNote"):
                text = body.get(note, "")
                if not isinstance(text, str) or len(text) > MAX_NOTE_CHARS or "'" in text:
                    return self._error(400, "BAD_REQUEST", f"Invalid {note}.")
            callback = request.headers.get("x-callback-url")
            if kind == "refund":
                return self._accept_refund(reference_id, body, minor, callback)
            party = body.get("payer" if kind == "requesttopay" else "payee")
            party_id = party.get("partyId") if isinstance(party, dict) else None
            if (
                not isinstance(party, dict)
                or party.get("partyIdType") != "MSISDN"
                or not isinstance(party_id, str)
                or not MSISDN_RE.match(party_id)
            ):
                return self._error(
                    400, "BAD_REQUEST", "Invalid party: an MSISDN with its country code is required."
                )
            entry = self.ctx.ledger.record(
                provider=NAME,
                operation=LedgerOperation.COLLECT if kind == "requesttopay" else LedgerOperation.PAYOUT,
                provider_reference=reference_id,
                reference=reference_id,
                msisdn=f"+{party_id}",
                amount_minor=minor,
                currency=currency,
                extra={"external_id": body.get("externalId")},
            )
            resource = _Resource(kind, entry, body, callback, self.ctx.clock.monotonic())
            self._resources[(kind, reference_id)] = resource
            if kind == "requesttopay":
                self._prompt(resource)
            else:
                self._schedule_transfer(resource)
            return Response(status_code=202)

        return handler

    def _prompt(self, resource: _Resource) -> None:
        assert resource.entry is not None
        behavior = self.ctx.customer_for(NAME, resource.entry.msisdn, no_answer_code=NO_ANSWER_REASON)
        if behavior.action == "accept":
            self.ctx.scheduler.after(behavior.delay_s, lambda: self._finish(resource, "SUCCESSFUL", None))
        elif behavior.action == "decline":
            reason = behavior.decline_code or DECLINE_REASON
            self.ctx.scheduler.after(behavior.delay_s, lambda: self._finish(resource, "FAILED", reason))
        elif behavior.action == "busy":
            self.ctx.scheduler.after(
                BUSY_RESULT_DELAY_S, lambda: self._finish(resource, "FAILED", DECLINE_REASON)
            )
        else:
            self.ctx.scheduler.after(
                self.config.approval_timeout_s,
                lambda: self._finish(resource, "FAILED", NO_ANSWER_REASON),
            )

    def _schedule_transfer(self, resource: _Resource) -> None:
        assert resource.entry is not None
        entry = resource.entry
        reason: str | None
        if self._disbursement_balance_minor < entry.amount_minor:
            outcome, reason = "FAILED", "NOT_ENOUGH_FUNDS"
        else:
            self._disbursement_balance_minor -= entry.amount_minor
            code = self.ctx.customers.get(NAME, entry.msisdn).payout_result_code
            outcome, reason = ("SUCCESSFUL", None) if code in (None, "0", "SUCCESSFUL") else ("FAILED", code)
        self.ctx.scheduler.after(
            self.config.transfer_delay_s, lambda: self._finish(resource, outcome, reason)
        )

    def _finish(self, resource: _Resource, outcome: str, reason: str | None) -> None:
        if resource.status != "PENDING":
            return
        resource.status, resource.reason = outcome, reason
        entry = resource.entry
        if outcome == "SUCCESSFUL":
            resource.financial_id = str(self._rng.randint(10**9, 10**10 - 1))
            if entry is not None:
                self.ctx.ledger.settle(
                    entry, LedgerStatus.SUCCEEDED, result_code=outcome, receipt=resource.financial_id
                )
        else:
            if entry is not None:
                self.ctx.ledger.settle(entry, LedgerStatus.FAILED, result_code=outcome, result_desc=reason)
                if resource.kind == "transfer" and reason != "NOT_ENOUGH_FUNDS":
                    self._disbursement_balance_minor += entry.amount_minor
        if resource.callback_url:
            # The same body as the GET, unsigned: MoMo signs nothing.
            self.ctx.outbox.send(NAME, resource.callback_url, self._view(resource))

    def _accept_refund(
        self, reference_id: str, body: dict[str, Any], minor: int, callback: str | None
    ) -> Response:
        target = body.get("referenceIdToRefund")
        resource = _Resource(
            "refund", None, body, callback, self.ctx.clock.monotonic(), extra={"amount_minor": minor}
        )
        self._resources[("refund", reference_id)] = resource
        original = self._resources.get(("requesttopay", str(target))) if isinstance(target, str) else None
        if original is None or original.entry is None:
            outcome, reason = "FAILED", "PAYER_NOT_FOUND"
        elif original.status != "SUCCESSFUL" or original.refunded_minor + minor > original.entry.amount_minor:
            outcome, reason = "FAILED", "NOT_ALLOWED"
        else:
            outcome, reason = "SUCCESSFUL", None
            original.refunded_minor += minor  # reserved now: two refunds cannot exceed the payment

        def settle() -> None:
            if outcome == "SUCCESSFUL" and original is not None and original.entry is not None:
                entry = self.ctx.ledger.record(
                    provider=NAME,
                    operation=LedgerOperation.REFUND,
                    provider_reference=reference_id,
                    reference=original.entry.reference,
                    msisdn=original.entry.msisdn,
                    amount_minor=minor,
                    currency=original.entry.currency,
                )
                resource.entry = entry
                if original.refunded_minor >= original.entry.amount_minor:
                    self.ctx.ledger.settle(original.entry, LedgerStatus.REVERSED)
            self._finish(resource, outcome, reason)

        self.ctx.scheduler.after(self.config.refund_delay_s, settle)
        return Response(status_code=202)

    # --- queries -------------------------------------------------------------------------

    def _view(self, resource: _Resource) -> dict[str, Any]:
        body = resource.body
        view: dict[str, Any] = {
            "amount": str(body.get("amount")),
            "currency": body.get("currency"),
            "externalId": body.get("externalId"),
        }
        if resource.kind == "requesttopay":
            view["payer"] = body.get("payer")
        elif resource.kind == "transfer":
            view["payee"] = body.get("payee")
        else:
            view["referenceIdToRefund"] = body.get("referenceIdToRefund")
        view["payerMessage"] = body.get("payerMessage")
        view["payeeNote"] = body.get("payeeNote")
        if resource.financial_id:
            view["financialTransactionId"] = resource.financial_id
        view["status"] = resource.status
        if resource.reason:
            view["reason"] = resource.reason
        return view

    def _get(self, kind: Literal["requesttopay", "transfer", "refund"]) -> Any:
        async def handler(request: Request, product: Product) -> Response:
            resource = self._resources.get((kind, request.path_params["reference_id"]))
            if resource is None or not self.ctx.visible(NAME, resource.accepted_at_s):
                # Not visible yet looks exactly like unknown: that is what makes it hard.
                return self._error(404, "RESOURCE_NOT_FOUND", "Requested resource was not found.")
            return json_response(self._view(resource))

        return handler

    async def _balance(self, request: Request, product: Product) -> Response:
        minor = self._disbursement_balance_minor if product == "disbursement" else 0
        exponent = MINOR_UNIT_EXPONENTS.get(self.config.currency, 2)
        available = Decimal(minor) / (10**exponent)
        return json_response({"availableBalance": f"{available:f}", "currency": self.config.currency})
