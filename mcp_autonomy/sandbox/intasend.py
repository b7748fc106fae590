"""IntaSend, emulated: M-Pesa STK push, payment status, send money (B2C), chargebacks, wallets.

Mounted at `/intasend`; paths match `sandbox.intasend.com/api/v1/...`. Shapes follow IntaSend's
documentation repository and SDKs (intasend-python, the Rust SDK's models):

- Auth: `Authorization: Bearer <secret key>` on every call; the payment status call is also
  accepted with the `public_key` in its body (as the SDK sends it). Errors use the current
  `{type, errors: [{code, detail, attr}]}` shape: 401 `not_authenticated` ("Authentication
  credentials were not provided.") or `authentication_failed` ("Invalid token."), 400
  `validation_error`, 404 `not_found`, 429 `throttled` with `Retry-After`, 5xx `server_error`.
  A `credential_expiry` fault revokes the configured secret keys; its `replacement_secret` is
  accepted from the fault's start on (a key rotation).
- `POST /api/v1/payment/mpesa-stk-push/` -> `{id, invoice: {invoice_id, state: "PENDING", ...},
  customer, payment_link, refundable, created_at, updated_at}`. IntaSend does not deduplicate:
  the same `api_ref` twice is two pushes. The customer (see `CustomerBehavior`) makes the invoice
  PROCESSING, then COMPLETE after their delay, or FAILED (their decline code as `failed_code`,
  default 1032 "Request cancelled by user"; 1037 after `stk_timeout_s` when ignored). IntaSend
  relays M-Pesa's ResultCode as `failed_code` and has no synchronous refusal of its own: a
  `busy` customer (or a synchronous `customer_errors` victim) gets the invoice and sees it FAILED
  with M-Pesa's 1001 "Unable to lock subscriber..." within `BUSY_RESULT_DELAY_S`. A storm's
  victims fail with its code (`CUSTOMER_CODES`; default 1037, at the timeout). Each state change
  is posted as a webhook, state COMPLETED on success.
- `POST /api/v1/payment/status/` `{invoice_id}` -> `{invoice, meta}`; unknown -> 404, and so is
  an invoice within the provider's `Realism.lookup_lag_s` of its push (lookups lag writes).
- `POST /api/v1/send-money/initiate/` -> a batch `{tracking_id, status: "Preview and approve",
  status_code: "BP103", nonce, transactions: [{status: "Pending", status_code: "TP101", ...}]}`;
  nothing moves until `POST /api/v1/send-money/approve/` returns it with the same nonce; then
  BP109 and, after `payout_delay_s`, BC100 with items TS100 (or TF106 with the customer's
  `payout_result_code`). A second approval is refused ("already approved").
  `POST /api/v1/send-money/status/` `{tracking_id}`; unknown (or within the lookup lag) -> 404.
  Each batch status change is posted as a send-money webhook.
- `POST /api/v1/chargebacks/` `{invoice, amount, reason}` -> PENDING, COMPLETED after
  `refund_delay_s`; `GET /api/v1/chargebacks/{id}/`. Each status change is a chargeback webhook.
- `GET /api/v1/wallets/` -> `{count, next, previous, results: [...]}`.

Webhooks go to the account's webhook URL (`PUT /_control/webhooks` for `intasend`, else the
config's `webhook_url`) through the outbox (loss, duplication, delay), in the documented event
shapes, each carrying the account's `challenge` (`webhook_challenge`): IntaSend's only proof of
origin, a shared secret that does not sign the body.
"""

from __future__ import annotations

import itertools
import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

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
from mcp_autonomy.sandbox.faults import CredentialExpirySpec, EndpointKind, Rejection
from mcp_autonomy.sandbox.ledger import LedgerEntry, LedgerOperation, LedgerStatus

NAME = "intasend"
PHONE_RE = re.compile(r"^254(7|1)\d{8}$")
FAILURE_REASONS = {
    "1": "The balance is insufficient for the transaction.",
    "17": "Rule limited.",
    "1001": "Unable to lock subscriber, a transaction is already in process for the current subscriber",
    "1019": "Transaction has expired",
    "1032": "Request cancelled by user",
    "1037": "DS timeout user cannot be reached",
    "2001": "The initiator information is invalid.",
}
"""M-Pesa's STK ResultCodes as IntaSend relays them (`failed_code`, `failed_reason`): all the
customer's (insufficient funds, same-amount rule, locked subscriber, expired, cancelled, no
answer, wrong PIN)."""
DECLINE_CODE = "1032"
NO_ANSWER_CODE = "1037"
BUSY_CODE = "1001"
CHARGEBACK_REASONS = frozenset(
    {"Unavailable service", "Delayed delivery", "Wrong service", "Duplicate payment", "Other"}
)


class IntaSendSandboxConfig(BaseModel):
    """The keys the emulated IntaSend accepts (all fake), and its timing knobs."""

    model_config = ConfigDict(frozen=True)

    secret_keys: tuple[str, ...] = ("ISSecretKey_test_sandbox00000000000000000000",)
    public_key: str = "ISPubKey_test_sandbox0000000000000000000000"
    webhook_url: str | None = Field(
        None, description="the account's webhook when `PUT /_control/webhooks` set none (a dashboard setting)"
    )
    webhook_challenge: str = Field("sandbox-challenge", description="sent as `challenge` in every webhook")
    stk_timeout_s: float = Field(60.0, gt=0)
    payout_delay_s: float = Field(3.0, ge=0)
    refund_delay_s: float = Field(5.0, ge=0)
    wallet_balance_minor: int = Field(10**12, ge=0)


@dataclass
class _Invoice:
    entry: LedgerEntry
    invoice_id: str
    api_ref: str | None
    accepted_at_s: float  # clock.monotonic() of the push: lookups lag it (Realism.lookup_lag_s)
    state: str = "PENDING"
    failed_reason: str | None = None
    failed_code: str | None = None
    refunded_minor: int = 0


@dataclass
class _Batch:
    tracking_id: str
    nonce: str
    reference: str | None
    items: list[dict[str, Any]]
    accepted_at_s: float
    created_at: float
    status: str = "Preview and approve"
    status_code: str = "BP103"
    entries: list[LedgerEntry] = field(default_factory=list)


@dataclass
class _Chargeback:
    id: str
    invoice: _Invoice
    amount_minor: int
    reason: str
    status: str = "PENDING"


class IntaSendEmulator:
    """The emulated IntaSend API (see the module docstring for its behaviour)."""

    name = NAME
    customer_codes = FAILURE_REASONS
    no_answer_code = NO_ANSWER_CODE

    def __init__(self, ctx: SandboxContext) -> None:
        self.ctx = ctx
        given = ctx.credentials.get(NAME)
        self.config = given if isinstance(given, IntaSendSandboxConfig) else IntaSendSandboxConfig()
        self._rng = random.Random(f"{ctx.seed}:{NAME}")
        self._ids = itertools.count(1)
        self._invoices: dict[str, _Invoice] = {}
        self._batches: dict[str, _Batch] = {}
        self._chargebacks: dict[str, _Chargeback] = {}
        self._balance_minor = self.config.wallet_balance_minor

    def routes(self) -> list[BaseRoute]:
        """IntaSend's paths, relative to the `/intasend` mount."""
        api = "/api/v1"
        return [
            Route(
                f"{api}/payment/mpesa-stk-push/",
                self._route(EndpointKind.COLLECT, self._stk_push),
                methods=["POST"],
            ),
            Route(
                f"{api}/payment/status/",
                self._route(EndpointKind.STATUS, self._payment_status, public_key_ok=True),
                methods=["POST"],
            ),
            Route(
                f"{api}/send-money/initiate/",
                self._route(EndpointKind.PAYOUT, self._initiate),
                methods=["POST"],
            ),
            Route(
                f"{api}/send-money/approve/",
                self._route(EndpointKind.PAYOUT, self._approve),
                methods=["POST"],
            ),
            Route(
                f"{api}/send-money/status/",
                self._route(EndpointKind.STATUS, self._batch_status),
                methods=["POST"],
            ),
            Route(
                f"{api}/chargebacks/", self._route(EndpointKind.REFUND, self._chargeback), methods=["POST"]
            ),
            Route(
                f"{api}/chargebacks/{{chargeback_id}}/",
                self._route(EndpointKind.STATUS, self._chargeback_detail),
                methods=["GET"],
            ),
            Route(f"{api}/wallets/", self._route(EndpointKind.PROBE, self._wallets), methods=["GET"]),
        ]

    # --- shapes --------------------------------------------------------------------------

    @staticmethod
    def _fail(
        http_status: int,
        code: str,
        detail: str,
        *,
        attr: str | None = None,
        kind: str = "client_error",
        headers: dict[str, str] | None = None,
    ) -> Response:
        body = {"type": kind, "errors": [{"code": code, "detail": detail, "attr": attr}]}
        return json_response(body, http_status, headers)

    def _invalid(self, attr: str, detail: str) -> Response:
        return self._fail(400, "invalid", detail, attr=attr, kind="validation_error")

    def rejection_response(self, rejection: Rejection, endpoint: EndpointKind) -> Response:
        """DRF's throttled answer, a 503 during maintenance, a server error otherwise."""
        if rejection.kind == "throttled":
            wait_s = rejection.retry_after_s or 1
            return self._fail(
                rejection.http_status or 429,
                "throttled",
                f"Request was throttled. Expected available in {wait_s:g} seconds.",
                headers={"Retry-After": f"{wait_s:g}"},
            )
        if rejection.kind == "unavailable":
            return self._fail(
                503, "service_unavailable", "Service temporarily unavailable.", kind="server_error"
            )
        return self._fail(
            rejection.http_status or 500, "error", "A server error occurred.", kind="server_error"
        )

    def _now(self) -> str:
        return datetime.fromtimestamp(self.ctx.clock.now(), tz=UTC).isoformat(timespec="microseconds")

    # --- auth ----------------------------------------------------------------------------

    def _valid_keys(self, endpoint: EndpointKind) -> set[str]:
        keys = set(self.config.secret_keys)
        if self.ctx.faults.credential_cutoff(NAME, endpoint) is not None:
            keys.clear()  # the configured keys are revoked while the fault lasts
        now = self.ctx.clock.monotonic()
        for fault in self.ctx.faults.faults(NAME):
            spec = fault.spec
            if isinstance(spec, CredentialExpirySpec) and spec.replacement_secret and fault.start_s <= now:
                keys.add(spec.replacement_secret)
        return keys

    def _route(self, endpoint: EndpointKind, handler: Any, *, public_key_ok: bool = False) -> Any:
        async def endpoint_fn(request: Request) -> Response:
            async def authorized() -> Response:
                body = await read_json_object(request) if request.method == "POST" else {}
                scheme, _, key = request.headers.get("authorization", "").partition(" ")
                by_public_key = public_key_ok and (body or {}).get("public_key") == self.config.public_key
                if not by_public_key:
                    if not key:
                        return self._fail(
                            401, "not_authenticated", "Authentication credentials were not provided."
                        )
                    if scheme != "Bearer" or key not in self._valid_keys(endpoint):
                        return self._fail(401, "authentication_failed", "Invalid token.")
                if body is None:
                    return self._fail(400, "parse_error", "JSON parse error.")
                response: Response = await handler(request, body)
                return response

            return await self.ctx.guarded(self, request, endpoint, authorized)

        return endpoint_fn

    # --- collection ----------------------------------------------------------------------

    def _invoice_view(self, invoice: _Invoice) -> dict[str, Any]:
        entry = invoice.entry
        value = Decimal(entry.amount_minor) / 100
        return {
            "invoice_id": invoice.invoice_id,
            "state": invoice.state,
            "provider": "M-PESA",
            "charges": "0.00",
            "net_amount": f"{value:.2f}",
            "currency": entry.currency,
            "value": f"{value:.2f}",
            "account": entry.msisdn[1:],
            "api_ref": invoice.api_ref,
            "mpesa_reference": entry.receipt,
            "host": "https://sandbox.intasend.com",
            "retry_count": 0,
            "failed_reason": invoice.failed_reason,
            "failed_code": invoice.failed_code,
            "created_at": datetime.fromtimestamp(entry.created_at, tz=UTC).isoformat(),
            "updated_at": datetime.fromtimestamp(entry.updated_at, tz=UTC).isoformat(),
        }

    async def _stk_push(self, request: Request, body: dict[str, Any]) -> Response:
        if body.get("public_key") != self.config.public_key:
            return self._invalid("public_key", "Invalid public key.")
        if body.get("currency", "KES") != "KES":
            return self._invalid("currency", "M-PESA supports KES only.")
        if body.get("method", "M-PESA") != "M-PESA":
            return self._invalid("method", "Unsupported method.")
        phone = str(body.get("phone_number", ""))
        if not PHONE_RE.match(phone):
            return self._invalid("phone_number", "Phone number is not valid. Use the format 2547XXXXXXXX.")
        amount = body.get("amount")
        try:
            shillings = Decimal(str(amount))
        except (InvalidOperation, ValueError):
            shillings = Decimal(0)
        if isinstance(amount, bool) or shillings < 1 or shillings != shillings.to_integral_value():
            return self._invalid("amount", "Ensure this value is a whole number greater than or equal to 1.")
        invoice_id = "".join(self._rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(7))
        api_ref = body.get("api_ref") if isinstance(body.get("api_ref"), str) else None
        entry = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.COLLECT,
            provider_reference=invoice_id,
            reference=api_ref,
            msisdn=f"+{phone}",
            amount_minor=int(shillings) * 100,
            currency="KES",
        )
        invoice = _Invoice(entry, invoice_id, api_ref, self.ctx.clock.monotonic())
        self._invoices[invoice_id] = invoice
        behavior = self.ctx.customer_for(NAME, entry.msisdn, no_answer_code=NO_ANSWER_CODE)
        if behavior.action == "ignore":
            self.ctx.scheduler.after(
                self.config.stk_timeout_s, lambda: self._finish(invoice, "FAILED", NO_ANSWER_CODE)
            )
        elif behavior.action == "busy":
            # M-Pesa refused the lock: the prompt never reached the phone, no PROCESSING step.
            self.ctx.scheduler.after(BUSY_RESULT_DELAY_S, lambda: self._finish(invoice, "FAILED", BUSY_CODE))
        else:
            self.ctx.scheduler.after(behavior.delay_s / 2, lambda: self._processing(invoice))
            if behavior.action == "accept":
                self.ctx.scheduler.after(behavior.delay_s, lambda: self._finish(invoice, "COMPLETE", None))
            else:
                code = behavior.decline_code or DECLINE_CODE
                self.ctx.scheduler.after(behavior.delay_s, lambda: self._finish(invoice, "FAILED", code))
        now = self._now()
        return json_response(
            {
                "id": str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
                "invoice": self._invoice_view(invoice),
                "customer": {
                    "customer_id": f"C{next(self._ids):06d}",
                    "phone_number": phone,
                    "country": "KE",
                },
                "payment_link": None,
                "refundable": False,
                "created_at": now,
                "updated_at": now,
            },
            201,
        )

    def _processing(self, invoice: _Invoice) -> None:
        if invoice.state == "PENDING":
            invoice.state = "PROCESSING"
            self._webhook(invoice)

    def _finish(self, invoice: _Invoice, state: str, code: str | None) -> None:
        if invoice.state not in ("PENDING", "PROCESSING"):
            return
        invoice.state = state
        if state == "COMPLETE":
            receipt = "S" + "".join(
                self._rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(9)
            )
            self.ctx.ledger.settle(invoice.entry, LedgerStatus.SUCCEEDED, result_code=state, receipt=receipt)
        else:
            invoice.failed_code = code
            invoice.failed_reason = FAILURE_REASONS.get(code or "", "The transaction has failed.")
            self.ctx.ledger.settle(
                invoice.entry, LedgerStatus.FAILED, result_code=code, result_desc=invoice.failed_reason
            )
        self._webhook(invoice)

    def _post_webhook(self, event: dict[str, Any]) -> None:
        """Post one event to the account's webhook URL, with its challenge (if a URL is set)."""
        url = self.ctx.webhooks.get(NAME) or self.config.webhook_url
        if not url:
            return
        self.ctx.outbox.send(NAME, url, {**event, "challenge": self.config.webhook_challenge})

    def _webhook(self, invoice: _Invoice) -> None:
        event = self._invoice_view(invoice)
        if event["state"] == "COMPLETE":
            event["state"] = "COMPLETED"  # the collection events name the final state this way
        event["failed_code_link"] = "https://intasend.com/troubleshooting"
        self._post_webhook(event)

    async def _payment_status(self, request: Request, body: dict[str, Any]) -> Response:
        invoice = self._invoices.get(str(body.get("invoice_id", "")))
        if invoice is None or not self.ctx.visible(NAME, invoice.accepted_at_s):
            # Within the lookup lag IntaSend answers exactly as for an invoice it never issued.
            return self._fail(404, "not_found", "Invoice not found.", attr="invoice_id")
        return json_response(
            {
                "invoice": self._invoice_view(invoice),
                "meta": {
                    "id": str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
                    "customer": {"phone_number": invoice.entry.msisdn[1:], "country": "KE"},
                    "customer_comment": None,
                    "created_at": self._now(),
                    "updated_at": self._now(),
                },
            }
        )

    # --- send money ----------------------------------------------------------------------

    def _batch_view(self, batch: _Batch) -> dict[str, Any]:
        return {
            "tracking_id": batch.tracking_id,
            "batch_reference": batch.reference,
            "status": batch.status,
            "status_code": batch.status_code,
            "nonce": batch.nonce,
            "transactions": [dict(item) for item in batch.items],
            "charge_estimate": 0.0,
            "total_amount_estimate": float(sum(Decimal(str(i["amount"])) for i in batch.items)),
        }

    async def _initiate(self, request: Request, body: dict[str, Any]) -> Response:
        if body.get("provider") not in ("MPESA-B2C", "MPESA-B2B", "INTASEND"):
            return self._invalid("provider", "Select a valid provider.")
        if body.get("currency") != "KES":
            return self._invalid("currency", "Currency not supported for this provider.")
        rows = body.get("transactions")
        if not isinstance(rows, list) or not rows:
            return self._invalid("transactions", "Transaction details required.")
        items: list[dict[str, Any]] = []
        for row in rows:
            account = str(row.get("account", "")) if isinstance(row, dict) else ""
            amount = row.get("amount") if isinstance(row, dict) else None
            if not PHONE_RE.match(account):
                return self._invalid("transactions", f"Invalid account {account!r}: use 2547XXXXXXXX.")
            if (
                isinstance(amount, bool)
                or not isinstance(amount, int | float | str)
                or Decimal(str(amount)) < 10
            ):
                return self._invalid("transactions", "Amount must be at least 10.")
            assert isinstance(row, dict)
            items.append(
                {
                    "status": "Pending",
                    "status_code": "TP101",
                    "request_reference_id": str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
                    "name": row.get("name"),
                    "account": account,
                    "amount": amount,
                    "narrative": row.get("narrative"),
                }
            )
        reference = body.get("batch_reference") if isinstance(body.get("batch_reference"), str) else None
        batch = _Batch(
            str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            f"{self._rng.getrandbits(24):06x}",
            reference,
            items,
            self.ctx.clock.monotonic(),
            self.ctx.clock.now(),
        )
        self._batches[batch.tracking_id] = batch
        self._batch_webhook(batch)
        if body.get("requires_approval", "YES") == "NO":
            self._start_batch(batch)
        return json_response(self._batch_view(batch))

    async def _approve(self, request: Request, body: dict[str, Any]) -> Response:
        batch = self._batches.get(str(body.get("tracking_id", "")))
        if batch is None:
            return self._fail(404, "not_found", "Not found.", attr="tracking_id")
        if batch.status_code != "BP103":
            return self._fail(400, "invalid", "Request already approved.", attr="tracking_id")
        if body.get("nonce") != batch.nonce:
            return self._invalid("nonce", "Invalid nonce.")
        total_minor = sum(int(Decimal(str(i["amount"])) * 100) for i in batch.items)
        if total_minor > self._balance_minor:
            batch.status, batch.status_code = "Failed checking float balance", "BF105"
            self._batch_webhook(batch)
            return json_response(self._batch_view(batch))
        self._start_batch(batch)
        return json_response(self._batch_view(batch))

    def _start_batch(self, batch: _Batch) -> None:
        batch.status, batch.status_code = "Processing payment", "BP109"
        for item in batch.items:
            minor = int(Decimal(str(item["amount"])) * 100)
            self._balance_minor -= minor
            item["status"], item["status_code"] = "Processing", "TP102"
            batch.entries.append(
                self.ctx.ledger.record(
                    provider=NAME,
                    operation=LedgerOperation.PAYOUT,
                    provider_reference=str(item["request_reference_id"]),
                    reference=batch.reference,
                    msisdn=f"+{item['account']}",
                    amount_minor=minor,
                    currency="KES",
                    extra={"tracking_id": batch.tracking_id},
                )
            )
        self._batch_webhook(batch)
        self.ctx.scheduler.after(self.config.payout_delay_s, lambda: self._finish_batch(batch))

    def _finish_batch(self, batch: _Batch) -> None:
        for item, entry in zip(batch.items, batch.entries, strict=True):
            result = self.ctx.customers.get(NAME, entry.msisdn).payout_result_code
            if result in (None, "0", "TS100"):
                item["status"], item["status_code"] = "Successful", "TS100"
                item["mno_reference"] = "S" + f"{self._rng.getrandbits(40):010X}"[:9]
                self.ctx.ledger.settle(entry, LedgerStatus.SUCCEEDED, result_code="TS100")
            else:
                item["status"], item["status_code"] = "Unsuccessful", "TF106"
                item["failed_reason"] = result
                self._balance_minor += entry.amount_minor
                self.ctx.ledger.settle(entry, LedgerStatus.FAILED, result_code="TF106", result_desc=result)
        batch.status, batch.status_code = "Completed", "BC100"
        self._batch_webhook(batch)

    def _batch_webhook(self, batch: _Batch) -> None:
        """The documented send-money event: the batch and its items (never its nonce)."""
        paid = sum(Decimal(str(i["amount"])) for i in batch.items if i["status_code"] == "TS100")
        failed = sum(Decimal(str(i["amount"])) for i in batch.items if i["status_code"] == "TF106")
        self._post_webhook(
            {
                "tracking_id": batch.tracking_id,
                "status": batch.status,
                "status_code": batch.status_code,
                "transactions": [
                    {
                        key: item.get(key)
                        for key in (
                            "status",
                            "status_code",
                            "request_reference_id",
                            "name",
                            "account",
                            "amount",
                            "narrative",
                            "mno_reference",
                            "failed_reason",
                        )
                        if key in item
                    }
                    | {"provider": "MPESA-B2C"}
                    for item in batch.items
                ],
                "actual_charges": 0,
                "paid_amount": float(paid),
                "failed_amount": float(failed),
                "created_at": datetime.fromtimestamp(batch.created_at, tz=UTC).isoformat(),
                "updated_at": self._now(),
            }
        )

    async def _batch_status(self, request: Request, body: dict[str, Any]) -> Response:
        batch = self._batches.get(str(body.get("tracking_id", "")))
        if batch is None or not self.ctx.visible(NAME, batch.accepted_at_s):
            return self._fail(404, "not_found", "Not found.", attr="tracking_id")
        return json_response(self._batch_view(batch))

    # --- chargebacks ---------------------------------------------------------------------

    def _chargeback_view(self, chargeback: _Chargeback) -> dict[str, Any]:
        return {
            "chargeback_id": chargeback.id,
            "invoice": chargeback.invoice.invoice_id,
            "amount": f"{Decimal(chargeback.amount_minor) / 100:.2f}",
            "reason": chargeback.reason,
            "status": chargeback.status,
            "resolution": "",
            "staff_created": False,
            "created_at": self._now(),
            "updated_at": self._now(),
        }

    async def _chargeback(self, request: Request, body: dict[str, Any]) -> Response:
        invoice = self._invoices.get(str(body.get("invoice", "")))
        if invoice is None:
            return self._invalid("invoice", "Invoice not found.")
        if invoice.state != "COMPLETE":
            return self._invalid("invoice", "Only completed transactions can be refunded.")
        try:
            minor = int(Decimal(str(body.get("amount"))) * 100)
        except (InvalidOperation, ValueError):
            minor = 0
        if minor <= 0 or invoice.refunded_minor + minor > invoice.entry.amount_minor:
            return self._invalid("amount", "Amount must be equal or less than the billed amount.")
        reason = body.get("reason")
        if reason not in CHARGEBACK_REASONS:
            return self._invalid("reason", f"Select a valid reason: {', '.join(sorted(CHARGEBACK_REASONS))}.")
        invoice.refunded_minor += minor  # reserved now: two chargebacks cannot exceed the invoice
        chargeback = _Chargeback(f"CB{next(self._ids):06d}", invoice, minor, str(reason))
        self._chargebacks[chargeback.id] = chargeback
        self.ctx.scheduler.after(self.config.refund_delay_s, lambda: self._finish_chargeback(chargeback))
        self._chargeback_webhook(chargeback)
        return json_response(self._chargeback_view(chargeback), 201)

    def _chargeback_webhook(self, chargeback: _Chargeback) -> None:
        """The documented chargeback event: the chargeback with its invoice."""
        invoice = self._invoice_view(chargeback.invoice)
        invoice["failed_code_link"] = "https://intasend.com/troubleshooting"
        event = self._chargeback_view(chargeback)
        event["invoice"] = invoice
        event["transaction"] = {
            "invoice": invoice,
            "value": invoice["value"],
            "narrative": chargeback.invoice.api_ref,
            "created_at": invoice["created_at"],
            "updated_at": invoice["updated_at"],
        }
        self._post_webhook(event)

    def _finish_chargeback(self, chargeback: _Chargeback) -> None:
        chargeback.status = "COMPLETED"
        original = chargeback.invoice.entry
        refund = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.REFUND,
            provider_reference=chargeback.id,
            reference=original.reference,
            msisdn=original.msisdn,
            amount_minor=chargeback.amount_minor,
            currency=original.currency,
        )
        self.ctx.ledger.settle(refund, LedgerStatus.SUCCEEDED, result_code="COMPLETED")
        if chargeback.invoice.refunded_minor >= original.amount_minor:
            self.ctx.ledger.settle(original, LedgerStatus.REVERSED)
        self._chargeback_webhook(chargeback)

    async def _chargeback_detail(self, request: Request, body: dict[str, Any]) -> Response:
        chargeback = self._chargebacks.get(request.path_params["chargeback_id"])
        if chargeback is None:
            return self._fail(404, "not_found", "Not found.")
        return json_response(self._chargeback_view(chargeback))

    # --- wallets -------------------------------------------------------------------------

    async def _wallets(self, request: Request, body: dict[str, Any]) -> Response:
        balance = f"{Decimal(self._balance_minor) / 100:.2f}"
        wallet = {
            "wallet_id": "SANDBOX01",
            "label": "default",
            "can_disburse": True,
            "currency": "KES",
            "wallet_type": "SETTLEMENT",
            "current_balance": balance,
            "available_balance": balance,
            "updated_at": self._now(),
        }
        return json_response({"count": 1, "next": None, "previous": None, "results": [wallet]})
