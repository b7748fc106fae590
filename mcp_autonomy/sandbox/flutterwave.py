"""Flutterwave v3, emulated: mobile-money charges, verification, transfers, refunds, balances.

Mounted at `/flutterwave`; paths match `api.flutterwave.com/v3/...`. Shapes follow the v3
documentation and the official Node-v3 SDK (its samples and request schemas):

- Auth: `Authorization: Bearer FLWSECK_TEST-...`; otherwise 401 `{status: "error", message:
  "Invalid authorization key", data: null}`. A `credential_expiry` fault revokes the configured
  keys; its `replacement_secret` is accepted from the fault's start on (a key rotation).
- Envelope `{status: "success"|"error", message, data}`; validation errors are 400.
- `POST /v3/charges?type=` mpesa, mobile_money_ghana / uganda / rwanda / zambia / tanzania /
  franco: "Charge initiated". M-Pesa, Tanzania and francophone answer `data` (`status:
  "pending"`); Ghana, Uganda, Rwanda and Zambia answer `meta.authorization {mode: "redirect",
  redirect}` and no data. The customer (see `CustomerBehavior`) then approves ("successful"),
  declines ("failed", `processor_response` = their decline code) or lets it time out after
  `charge_timeout_s`. v3 does not refuse a reused `tx_ref`: it is another charge. Flutterwave
  documents no synchronous answer for a busy subscriber nor a list of processor texts: a `busy`
  customer (or a synchronous `customer_errors` victim) fails "Transaction declined by customer"
  within `BUSY_RESULT_DELAY_S`; a storm's victims fail with its code (`CUSTOMER_CODES`, the
  texts this emulator sends; default "Transaction timed out", at the timeout).
- `GET /v3/transactions/verify_by_reference?tx_ref=` (the latest charge under it) and
  `GET /v3/transactions/{id}/verify`; unknown -> 400 "No transaction was found for this id".
- `GET /v3/transactions?from=YYYY-MM-DD&to=YYYY-MM-DD&page=N` (10 a page, newest first,
  `meta.page_info {total, current_page, total_pages}`; rows carry `customer_name` and
  `customer_email`, no phone), built from the ledger.
- Lookups lag acceptance by the realism's `lookup_lag_s` (`SandboxContext.visible`): until then
  verify, transfer and refund lookups answer "No transaction was found for this id", as
  Flutterwave does for payments it created moments ago, and lists leave them out.
- `POST /v3/transfers` (account_bank MPS / the Ghana network / FMM, account_number = the
  wallet's number, a unique `reference`) -> "Transfer Queued Successfully", status NEW, then
  PENDING and, after `transfer_delay_s`, SUCCESSFUL or FAILED (`complete_message` = the
  customer's `payout_result_code`). `GET /v3/transfers/{id}` (unknown: "No transaction was found
  for this id"), `GET /v3/transfers?reference=`.
- `POST /v3/transactions/{id}/refund` `{amount}` -> "Transaction refund initiated", status
  "completed" (after `refund_delay_s`, "pending" until then); `GET /v3/refunds/{id}`.
- `GET /v3/balances` -> "Wallet balances fetched".
- Webhooks go to the dashboard URL (`ctx.webhooks["flutterwave"]`) through the outbox (loss,
  duplication, delay) with the `verif-hash` header set to the dashboard's secret hash
  (`FlutterwaveSandboxConfig.webhook_hash`): `charge.completed` when a charge succeeds or fails,
  `transfer.completed` when a transfer does (v3 documents no refund webhook).
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
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

NAME = "flutterwave"
CHARGE_TYPES: dict[str, tuple[frozenset[str], frozenset[str], bool]] = {
    "mpesa": (frozenset({"KES"}), frozenset(), False),
    "mobile_money_ghana": (frozenset({"GHS"}), frozenset({"MTN", "VODAFONE", "AIRTELTIGO"}), True),
    "mobile_money_uganda": (frozenset({"UGX"}), frozenset({"MTN", "AIRTEL"}), True),
    "mobile_money_rwanda": (frozenset({"RWF"}), frozenset(), True),
    "mobile_money_zambia": (frozenset({"ZMW"}), frozenset(), True),
    "mobile_money_tanzania": (frozenset({"TZS"}), frozenset(), False),
    "mobile_money_franco": (frozenset({"XAF", "XOF"}), frozenset(), False),
}
"""Charge type -> (currencies, networks it requires (empty: none), answers in redirect mode)."""
TRANSFER_BANKS: dict[str, frozenset[str]] = {
    "KES": frozenset({"MPS"}),
    "UGX": frozenset({"MPS"}),
    "RWF": frozenset({"MPS"}),
    "ZMW": frozenset({"MPS"}),
    "GHS": frozenset({"MTN", "VODAFONE", "AIRTELTIGO", "TIGO", "AIRTEL"}),
    "XAF": frozenset({"FMM"}),
    "XOF": frozenset({"FMM"}),
}
MINOR_UNIT_EXPONENTS = {"UGX": 0, "RWF": 0, "XAF": 0, "XOF": 0}
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
PHONE_RE = re.compile(r"^\+?\d{8,15}$")
NATIONAL_DIAL = {"GHS": "233"}
"""Ghanaian numbers arrive in national form (054...): the ledger records them as E.164."""
NOT_FOUND = "No transaction was found for this id"
DECLINE_TEXT = "Transaction declined by customer"
NO_ANSWER_TEXT = "Transaction timed out"
CUSTOMER_CODES = {
    DECLINE_TEXT: "the customer declined the prompt",
    "Cancelled": "the customer cancelled",
    "Insufficient funds": "the customer's wallet is short",
    NO_ANSWER_TEXT: "the customer never answered the prompt",
}
"""`processor_response` texts of a charge the customer failed (Flutterwave publishes no list;
these are the texts this emulator sends)."""
LIST_PAGE_SIZE = 10
HASH_HEADER = "verif-hash"
DEFAULT_WEBHOOK_HASH = "sandbox-flutterwave-secret-hash-0000"
"""The secret hash the emulated dashboard has set: its webhooks carry it as `verif-hash`."""
EVENT_TYPES = {
    "mpesa": "MPESA_TRANSACTION",
    "mobile_money_ghana": "MOBILEMONEYGH_TRANSACTION",
    "mobile_money_uganda": "MOBILEMONEYUG_TRANSACTION",
    "mobile_money_rwanda": "MOBILEMONEYRW_TRANSACTION",
    "mobile_money_zambia": "MOBILEMONEYZM_TRANSACTION",
    "mobile_money_tanzania": "MOBILEMONEYTZ_TRANSACTION",
}
"""The informational `event.type` of a charge webhook, per charge type (where documented)."""


class FlutterwaveSandboxConfig(BaseModel):
    """The keys the emulated Flutterwave accepts (all fake), balances and timing knobs."""

    model_config = ConfigDict(frozen=True)

    secret_keys: tuple[str, ...] = ("FLWSECK_TEST-sandbox0000000000000000000000000000-X",)
    balances_minor: dict[str, int] = Field(default_factory=lambda: {c: 10**12 for c in TRANSFER_BANKS})
    charge_timeout_s: float = Field(180.0, gt=0)
    transfer_delay_s: float = Field(3.0, ge=0)
    refund_delay_s: float = Field(0.0, ge=0)
    webhook_hash: str | None = Field(
        DEFAULT_WEBHOOK_HASH,
        description="the dashboard's secret hash, sent as verif-hash; None: none set, no header",
    )


@dataclass
class _Charge:
    entry: LedgerEntry
    id: int
    tx_ref: str
    flw_ref: str
    charge_type: str
    email: str
    accepted_s: float  # clock.monotonic() at acceptance: lookups lag it
    status: str = "pending"
    processor_response: str = "Transaction in progress"
    refunded_minor: int = 0


@dataclass
class _Transfer:
    entry: LedgerEntry
    id: int
    body: dict[str, Any]
    accepted_s: float
    status: str = "NEW"
    complete_message: str = ""


@dataclass
class _Refund:
    id: int
    charge: _Charge
    amount_minor: int
    status: str
    created_at: str
    accepted_s: float


class FlutterwaveEmulator:
    """The emulated Flutterwave v3 API (see the module docstring for its behaviour)."""

    name = NAME
    customer_codes = CUSTOMER_CODES
    no_answer_code = NO_ANSWER_TEXT

    def __init__(self, ctx: SandboxContext) -> None:
        self.ctx = ctx
        given = ctx.credentials.get(NAME)
        self.config = given if isinstance(given, FlutterwaveSandboxConfig) else FlutterwaveSandboxConfig()
        self._rng = random.Random(f"{ctx.seed}:{NAME}")
        self._ids = itertools.count(4_193_428)
        # Customers are Flutterwave's own records, one per email, numbered apart from transactions.
        self._customer_ids: dict[str, int] = {}
        self._balances = dict(self.config.balances_minor)
        self._charges: dict[int, _Charge] = {}
        self._by_tx_ref: dict[str, _Charge] = {}  # the latest charge under each tx_ref
        self._transfers: dict[int, _Transfer] = {}
        self._transfer_refs: dict[str, _Transfer] = {}
        self._refunds: dict[int, _Refund] = {}

    def routes(self) -> list[BaseRoute]:
        """Flutterwave's v3 paths, relative to the `/flutterwave` mount."""
        return [
            Route("/v3/charges", self._route(EndpointKind.COLLECT, self._charge), methods=["POST"]),
            Route(
                "/v3/transactions/verify_by_reference",
                self._route(EndpointKind.STATUS, self._verify_by_reference),
                methods=["GET"],
            ),
            Route(
                "/v3/transactions", self._route(EndpointKind.STATUS, self._list_transactions), methods=["GET"]
            ),
            Route(
                "/v3/transactions/{tx_id}/verify",
                self._route(EndpointKind.STATUS, self._verify),
                methods=["GET"],
            ),
            Route(
                "/v3/transactions/{tx_id}/refund",
                self._route(EndpointKind.REFUND, self._refund),
                methods=["POST"],
            ),
            Route(
                "/v3/refunds/{refund_id}", self._route(EndpointKind.STATUS, self._get_refund), methods=["GET"]
            ),
            Route("/v3/transfers", self._route(EndpointKind.PAYOUT, self._transfer), methods=["POST"]),
            Route("/v3/transfers", self._route(EndpointKind.STATUS, self._list_transfers), methods=["GET"]),
            Route(
                "/v3/transfers/{transfer_id}",
                self._route(EndpointKind.STATUS, self._get_transfer),
                methods=["GET"],
            ),
            Route("/v3/balances", self._route(EndpointKind.PROBE, self._balances_view), methods=["GET"]),
        ]

    # --- shapes --------------------------------------------------------------------------

    @staticmethod
    def _ok(message: str, data: Any, **extra: Any) -> Response:
        return json_response({"status": "success", "message": message, **extra, "data": data})

    @staticmethod
    def _fail(http_status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return json_response({"status": "error", "message": message, "data": None}, http_status, headers)

    def rejection_response(self, rejection: Rejection, endpoint: EndpointKind) -> Response:
        """The v3 envelope for a throttle, an outage or a server error."""
        if rejection.kind == "throttled":
            headers = {"Retry-After": f"{rejection.retry_after_s:g}"} if rejection.retry_after_s else None
            return self._fail(
                rejection.http_status or 429, "Too many requests, please try again later.", headers
            )
        if rejection.kind == "unavailable":
            return self._fail(503, "Service unavailable")
        return self._fail(rejection.http_status or 500, "An error occurred while processing your request")

    def _iso(self) -> str:
        return datetime.fromtimestamp(self.ctx.clock.now(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def _visible(self, accepted_s: float) -> bool:
        return self.ctx.visible(NAME, accepted_s)

    def _webhook(self, body: dict[str, Any]) -> None:
        """Post one event to the dashboard's webhook URL (if set) with the secret hash."""
        url = self.ctx.webhooks.get(NAME)
        if not url:
            return  # no URL on the dashboard: Flutterwave sends nothing
        secret = self.config.webhook_hash

        def headers_for(raw: bytes) -> dict[str, str]:
            return {HASH_HEADER: secret} if secret else {}

        self.ctx.outbox.send(NAME, url, body, headers_for=headers_for)

    # --- auth ----------------------------------------------------------------------------

    def _valid_keys(self, endpoint: EndpointKind) -> set[str]:
        keys = set(self.config.secret_keys)
        if self.ctx.faults.credential_cutoff(NAME, endpoint) is not None:
            keys.clear()
        now = self.ctx.clock.monotonic()
        for fault in self.ctx.faults.faults(NAME):
            spec = fault.spec
            if isinstance(spec, CredentialExpirySpec) and spec.replacement_secret and fault.start_s <= now:
                keys.add(spec.replacement_secret)
        return keys

    def _route(self, endpoint: EndpointKind, handler: Any) -> Any:
        async def endpoint_fn(request: Request) -> Response:
            async def authorized() -> Response:
                scheme, _, key = request.headers.get("authorization", "").partition(" ")
                if scheme != "Bearer" or key not in self._valid_keys(endpoint):
                    return self._fail(401, "Invalid authorization key")
                response: Response = await handler(request)
                return response

            return await self.ctx.guarded(self, request, endpoint, authorized)

        return endpoint_fn

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def _minor(amount: Any, currency: str) -> int | None:
        if isinstance(amount, bool) or not isinstance(amount, int | float | str):
            return None
        try:
            minor = Decimal(str(amount)) * (10 ** MINOR_UNIT_EXPONENTS.get(currency, 2))
        except (InvalidOperation, ValueError):
            return None
        if minor <= 0 or minor != minor.to_integral_value():
            return None
        return int(minor)

    @staticmethod
    def _e164(phone: str, currency: str) -> str:
        digits = phone.lstrip("+")
        dial = NATIONAL_DIAL.get(currency)
        if dial and digits.startswith("0"):
            return f"+{dial}{digits[1:]}"
        return f"+{digits}"

    # --- charges -------------------------------------------------------------------------

    def _charge_data(self, charge: _Charge) -> dict[str, Any]:
        entry = charge.entry
        exponent = MINOR_UNIT_EXPONENTS.get(entry.currency, 2)
        amount = Decimal(entry.amount_minor) / (10**exponent)
        value: int | float = int(amount) if amount == amount.to_integral_value() else float(amount)
        return {
            "id": charge.id,
            "tx_ref": charge.tx_ref,
            "flw_ref": charge.flw_ref,
            "device_fingerprint": "N/A",
            "amount": value,
            "charged_amount": value,
            "app_fee": 0,
            "merchant_fee": 0,
            "processor_response": charge.processor_response,
            "auth_model": "LIPA_MPESA" if charge.charge_type == "mpesa" else "MOBILEMONEY",
            "currency": entry.currency,
            "status": charge.status,
            "payment_type": charge.charge_type,
            "created_at": datetime.fromtimestamp(entry.created_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "customer": {
                "id": self._customer_ids.setdefault(charge.email, 215_604_089 + len(self._customer_ids)),
                "phone_number": entry.msisdn[1:],
                "email": charge.email,
            },
        }

    async def _charge(self, request: Request) -> Response:
        charge_type = request.query_params.get("type", "")
        if charge_type not in CHARGE_TYPES:
            return self._fail(400, "Invalid charge type")
        currencies, networks, redirect = CHARGE_TYPES[charge_type]
        body = await read_json_object(request)
        if body is None:
            return self._fail(400, "Invalid request body")
        currency, email, tx_ref = body.get("currency"), body.get("email"), body.get("tx_ref")
        phone = str(body.get("phone_number", ""))
        if not isinstance(tx_ref, str) or not tx_ref or len(tx_ref) > 100:
            return self._fail(400, "tx_ref is required")
        if currency not in currencies:
            return self._fail(400, f"Invalid currency for {charge_type}")
        assert isinstance(currency, str)
        if not isinstance(email, str) or not EMAIL_RE.match(email):
            return self._fail(400, "A valid email is required")
        if not PHONE_RE.match(phone):
            return self._fail(400, "phone number should be digits")
        if networks and str(body.get("network", "")).upper() not in networks:
            return self._fail(400, f"Only {', '.join(sorted(networks))} are valid for {currency}.")
        if charge_type == "mobile_money_franco" and not isinstance(body.get("country"), str):
            return self._fail(400, "country is required for francophone mobile money")
        minor = self._minor(body.get("amount"), currency)
        if minor is None:
            return self._fail(400, "amount must be a positive number")
        charge_id = next(self._ids)
        entry = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.COLLECT,
            provider_reference=str(charge_id),
            reference=tx_ref,
            msisdn=self._e164(phone, currency),
            amount_minor=minor,
            currency=currency,
            extra={"charge_type": charge_type},
        )
        charge = _Charge(
            entry,
            charge_id,
            tx_ref,
            f"FLW{self._rng.getrandbits(48):012d}",
            charge_type,
            email,
            accepted_s=self.ctx.clock.monotonic(),
        )
        self._charges[charge_id] = charge
        self._by_tx_ref[tx_ref] = charge
        behavior = self.ctx.customer_for(NAME, entry.msisdn, no_answer_code=NO_ANSWER_TEXT)
        if behavior.action == "accept":
            self.ctx.scheduler.after(behavior.delay_s, lambda: self._finish(charge, "successful", "Approved"))
        elif behavior.action == "decline":
            reason = behavior.decline_code or DECLINE_TEXT
            self.ctx.scheduler.after(behavior.delay_s, lambda: self._finish(charge, "failed", reason))
        elif behavior.action == "busy":
            self.ctx.scheduler.after(
                BUSY_RESULT_DELAY_S, lambda: self._finish(charge, "failed", DECLINE_TEXT)
            )
        else:
            self.ctx.scheduler.after(
                self.config.charge_timeout_s, lambda: self._finish(charge, "failed", NO_ANSWER_TEXT)
            )
        if redirect:
            url = f"https://checkout.flutterwave.com/captcha/verify/{charge_id}:{self._rng.getrandbits(64):016x}"
            return self._ok(
                "Charge initiated", None, meta={"authorization": {"redirect": url, "mode": "redirect"}}
            )
        return self._ok("Charge initiated", self._charge_data(charge))

    def _finish(self, charge: _Charge, status: str, processor_response: str) -> None:
        if charge.status != "pending":
            return
        charge.status, charge.processor_response = status, processor_response
        if status == "successful":
            self.ctx.ledger.settle(
                charge.entry, LedgerStatus.SUCCEEDED, result_code=status, receipt=charge.flw_ref
            )
        else:
            self.ctx.ledger.settle(
                charge.entry, LedgerStatus.FAILED, result_code=status, result_desc=processor_response
            )
        data = self._charge_data(charge)
        data.update(ip="127.0.0.1", narration="Mobile money charge", account_id=73362)
        data["customer"] = {**data["customer"], "name": data["customer"]["email"].split("@")[0]}
        data["customer"]["created_at"] = data["created_at"]
        event: dict[str, Any] = {"event": "charge.completed", "data": data}
        if charge.charge_type in EVENT_TYPES:
            event["event.type"] = EVENT_TYPES[charge.charge_type]
        self._webhook(event)

    async def _verify_by_reference(self, request: Request) -> Response:
        charge = self._by_tx_ref.get(request.query_params.get("tx_ref", ""))
        if charge is None or not self._visible(charge.accepted_s):
            return self._fail(400, NOT_FOUND)
        return self._ok("Transaction fetched successfully", self._charge_data(charge))

    async def _verify(self, request: Request) -> Response:
        raw = request.path_params["tx_id"]
        charge = self._charges.get(int(raw)) if str(raw).isdigit() else None
        if charge is None or not self._visible(charge.accepted_s):
            return self._fail(400, NOT_FOUND)
        return self._ok("Transaction fetched successfully", self._charge_data(charge))

    def _list_row(self, charge: _Charge) -> dict[str, Any]:
        """One row of `GET /v3/transactions` (Node-v3 documentation/transactions.md sample)."""
        data = self._charge_data(charge)
        customer = data.pop("customer")
        settled = data["amount"] if charge.status == "successful" else None
        return {
            **data,
            "id": str(charge.id),
            "ip": "127.0.0.1",
            "narration": "Mobile money charge",
            "amount_settled": settled,
            "customer_name": customer["email"].split("@")[0],
            "customer_email": customer["email"],
            "account_id": "73362",
        }

    async def _list_transactions(self, request: Request) -> Response:
        params = request.query_params
        try:
            start = date.fromisoformat(params["from"]) if params.get("from") else None
            end = date.fromisoformat(params["to"]) if params.get("to") else None
        except ValueError:
            return self._fail(400, "from and to must be dates (YYYY-MM-DD)")
        raw_page = params.get("page") or "1"
        if not raw_page.isdigit() or int(raw_page) < 1:
            return self._fail(400, "page must be a positive integer")
        page = int(raw_page)
        wanted_status, wanted_ref = params.get("status"), params.get("tx_ref")
        charges: list[_Charge] = []
        # The ledger is the truth of what was charged; newest first, as Flutterwave lists them.
        for entry in reversed(self.ctx.ledger.entries(provider=NAME, operation=LedgerOperation.COLLECT)):
            charge = self._charges.get(int(entry.provider_reference))
            if charge is None or not self._visible(charge.accepted_s):
                continue
            day = datetime.fromtimestamp(entry.created_at, tz=UTC).date()
            if (start is not None and day < start) or (end is not None and day > end):
                continue
            if (wanted_status and charge.status != wanted_status) or (
                wanted_ref and charge.tx_ref != wanted_ref
            ):
                continue
            charges.append(charge)
        rows = [self._list_row(c) for c in charges[(page - 1) * LIST_PAGE_SIZE : page * LIST_PAGE_SIZE]]
        page_info = {
            "total": len(charges),
            "current_page": page,
            "total_pages": -(-len(charges) // LIST_PAGE_SIZE),
        }
        return self._ok("Transactions fetched", rows, meta={"page_info": page_info})

    # --- refunds -------------------------------------------------------------------------

    def _refund_data(self, refund: _Refund) -> dict[str, Any]:
        charge = refund.charge
        exponent = MINOR_UNIT_EXPONENTS.get(charge.entry.currency, 2)
        amount = Decimal(refund.amount_minor) / (10**exponent)
        return {
            "id": refund.id,
            "account_id": 73362,
            "tx_id": charge.id,
            "flw_ref": f"URF_{charge.id}_{refund.id}",
            "wallet_id": 74639,
            "amount_refunded": int(amount) if amount == amount.to_integral_value() else float(amount),
            "currency": charge.entry.currency,
            "status": refund.status,
            "destination": "payment_source",
            "meta": {"source": "availablebalance"},
            "created_at": refund.created_at,
        }

    async def _refund(self, request: Request) -> Response:
        raw = request.path_params["tx_id"]
        charge = self._charges.get(int(raw)) if str(raw).isdigit() else None
        if charge is None:
            return self._fail(400, "No transaction was found for this id")
        if charge.status != "successful":
            return self._fail(400, "Only successful transactions can be refunded")
        body = await read_json_object(request) or {}
        remaining = charge.entry.amount_minor - charge.refunded_minor
        minor = self._minor(body.get("amount"), charge.entry.currency) if "amount" in body else remaining
        if minor is None or minor > remaining or remaining <= 0:
            return self._fail(400, "Refund amount exceeds the amount left to refund")
        charge.refunded_minor += minor  # reserved now: two refunds cannot exceed the charge
        delayed = self.config.refund_delay_s > 0
        refund = _Refund(
            next(self._ids),
            charge,
            minor,
            "pending" if delayed else "completed",
            self._iso(),
            accepted_s=self.ctx.clock.monotonic(),
        )
        self._refunds[refund.id] = refund
        if delayed:
            self.ctx.scheduler.after(self.config.refund_delay_s, lambda: self._complete_refund(refund))
        else:
            self._complete_refund(refund)
        return self._ok("Transaction refund initiated", self._refund_data(refund))

    def _complete_refund(self, refund: _Refund) -> None:
        refund.status = "completed"
        charge = refund.charge
        entry = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.REFUND,
            provider_reference=str(refund.id),
            reference=charge.tx_ref,
            msisdn=charge.entry.msisdn,
            amount_minor=refund.amount_minor,
            currency=charge.entry.currency,
        )
        self.ctx.ledger.settle(entry, LedgerStatus.SUCCEEDED, result_code="completed")
        if charge.refunded_minor >= charge.entry.amount_minor:
            self.ctx.ledger.settle(charge.entry, LedgerStatus.REVERSED)

    async def _get_refund(self, request: Request) -> Response:
        raw = request.path_params["refund_id"]
        refund = self._refunds.get(int(raw)) if str(raw).isdigit() else None
        if refund is None or not self._visible(refund.accepted_s):
            return self._fail(404, "Refund not found")
        return self._ok("Refund fetched", self._refund_data(refund))

    # --- transfers -----------------------------------------------------------------------

    def _transfer_data(self, transfer: _Transfer) -> dict[str, Any]:
        body, entry = transfer.body, transfer.entry
        return {
            "id": transfer.id,
            "account_number": body.get("account_number"),
            "bank_code": body.get("account_bank"),
            "full_name": body.get("beneficiary_name") or "N/A",
            "created_at": datetime.fromtimestamp(entry.created_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "currency": entry.currency,
            "debit_currency": entry.currency,
            "amount": body.get("amount"),
            "fee": 0,
            "status": transfer.status,
            "reference": body.get("reference"),
            "meta": None,
            "narration": body.get("narration"),
            "complete_message": transfer.complete_message,
            "requires_approval": 0,
            "is_approved": 1,
            "bank_name": "MOBILE MONEY",
        }

    async def _transfer(self, request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return self._fail(400, "Invalid request body")
        currency, bank = body.get("currency"), body.get("account_bank")
        account, reference = str(body.get("account_number", "")), body.get("reference")
        if currency not in TRANSFER_BANKS:
            return self._fail(400, "Currency is not supported for transfers")
        assert isinstance(currency, str)
        if bank not in TRANSFER_BANKS[currency]:
            return self._fail(400, "Invalid account bank")
        if not account.isdigit() or not 8 <= len(account) <= 15:
            return self._fail(400, "Invalid account number")
        minor = self._minor(body.get("amount"), currency)
        if minor is None:
            return self._fail(400, "amount must be a positive number")
        if not isinstance(reference, str) or not reference:
            return self._fail(400, "reference is required")
        if reference in self._transfer_refs:
            return self._fail(400, "Duplicate reference: a transfer with this reference already exists")
        if self._balances.get(currency, 0) < minor:
            return self._fail(400, "Insufficient funds in your wallet")
        self._balances[currency] -= minor
        transfer_id = next(self._ids)
        entry = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.PAYOUT,
            provider_reference=str(transfer_id),
            reference=reference,
            msisdn=f"+{account}",
            amount_minor=minor,
            currency=currency,
        )
        transfer = _Transfer(entry, transfer_id, dict(body), accepted_s=self.ctx.clock.monotonic())
        self._transfers[transfer_id] = transfer
        self._transfer_refs[reference] = transfer
        result = self.ctx.customers.get(NAME, entry.msisdn).payout_result_code
        self.ctx.scheduler.after(self.config.transfer_delay_s / 2, lambda: self._transfer_pending(transfer))
        self.ctx.scheduler.after(
            self.config.transfer_delay_s, lambda: self._finish_transfer(transfer, result)
        )
        return self._ok("Transfer Queued Successfully", self._transfer_data(transfer))

    @staticmethod
    def _transfer_pending(transfer: _Transfer) -> None:
        if transfer.status == "NEW":
            transfer.status = "PENDING"

    def _finish_transfer(self, transfer: _Transfer, result: str | None) -> None:
        if transfer.status not in ("NEW", "PENDING"):
            return
        if result in (None, "0", "SUCCESSFUL"):
            transfer.status, transfer.complete_message = "SUCCESSFUL", "Transaction was successful"
            self.ctx.ledger.settle(transfer.entry, LedgerStatus.SUCCEEDED, result_code="SUCCESSFUL")
        else:
            transfer.status, transfer.complete_message = "FAILED", str(result)
            self._balances[transfer.entry.currency] += transfer.entry.amount_minor
            self.ctx.ledger.settle(
                transfer.entry, LedgerStatus.FAILED, result_code="FAILED", result_desc=result
            )
        data = self._transfer_data(transfer)
        # The webhook names the beneficiary `fullname` (the fetch calls it `full_name`).
        data["fullname"] = data.pop("full_name")
        data.update(approver=None)
        self._webhook({"event": "transfer.completed", "event.type": "Transfer", "data": data})

    async def _get_transfer(self, request: Request) -> Response:
        raw = request.path_params["transfer_id"]
        transfer = self._transfers.get(int(raw)) if str(raw).isdigit() else None
        if transfer is None or not self._visible(transfer.accepted_s):
            return self._fail(400, NOT_FOUND)
        return self._ok("Transfer fetched", self._transfer_data(transfer))

    async def _list_transfers(self, request: Request) -> Response:
        reference = request.query_params.get("reference")
        status = request.query_params.get("status")
        rows = [
            self._transfer_data(t)
            for t in self._transfers.values()
            if self._visible(t.accepted_s)
            and (reference is None or t.body.get("reference") == reference)
            and (status is None or t.status.lower() == status.lower())
        ]
        page_info = {"total": len(rows), "current_page": 1, "total_pages": 1 if rows else 0}
        return self._ok("Transfers fetched", rows, meta={"page_info": page_info})

    # --- balances ------------------------------------------------------------------------

    async def _balances_view(self, request: Request) -> Response:
        rows = []
        for currency, minor in sorted(self._balances.items()):
            value = Decimal(minor) / (10 ** MINOR_UNIT_EXPONENTS.get(currency, 2))
            rows.append(
                {"currency": currency, "available_balance": float(value), "ledger_balance": float(value)}
            )
        return self._ok("Wallet balances fetched", rows)
