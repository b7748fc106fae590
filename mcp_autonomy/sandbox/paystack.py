"""Paystack, emulated: mobile-money charges, verification, transfers, refunds, balance, webhooks.

Mounted at `/paystack`. Shapes follow Paystack's OpenAPI description and error list
(`shared/specs/paystack/`, the referee, with its known errata) and its documentation snippets:

- Auth: `Authorization: Bearer sk_...`; 401 `{"status": false, "message": "Invalid key"}`
  ("No Authorization Header was found", "Format is Authorization Bearer [secret key]").
  A `credential_expiry` fault revokes the configured keys while it lasts; its
  `replacement_secret` (a rotated key) is accepted from the fault's start on.
- Envelope `{status, message, data}`; errors `{status: false, message, meta: {nextStep},
  type: validation_error|processor_error|api_error, code}`; POST validation errors are 400.
- `POST /charge` (email, amount in subunits, currency, reference, `mobile_money: {phone,
  provider}`) -> "Charge attempted", `data.status` `pay_offline` ("Please complete
  authorization process on your mobile phone"), or `send_otp` for Vodafone Cash until
  `POST /charge/submit_otp` (OTP `config.otp`; a wrong one is "Provided registration token is
  invalid", Paystack's text); a pending charge's data is only `{reference, status,
  display_text}`. A reused reference -> 400 `duplicate_reference`. The customer then approves
  (`success`) or declines (`failed`, `gateway_response` their decline code: "Declined" by
  default, "Insufficient Funds"; `CUSTOMER_CODES`). Nobody answering makes it `abandoned` after
  `abandon_after_s`, which is not final: a customer who approves later, until
  `abandoned_final_after_s`, still turns it into `success` (the ledger keeps it pending until
  then, and fails it only at the end of that window). Paystack has no synchronous answer for a
  busy subscriber: a `busy` customer (or a synchronous `customer_errors` victim) fails
  "Declined" within `BUSY_RESULT_DELAY_S`; a storm's default victims abandon.
- `GET /transaction/verify/{reference}` (`VerifyResponse`) -> `ongoing` while the customer has to
  act, then `success` / `failed` / `abandoned` / `reversed`; unknown reference -> 404
  "Transaction reference not found". `GET /charge/{reference}` (`ChargeCheckPendingResponse`)
  answers the charge's own status (`pay_offline`, `send_otp`...).
- `GET /transaction?from=&to=&perPage=&page=&status=` (`TransactionListResponse`, newest first,
  `meta {total, total_volume, skipped, perPage, page, pageCount}`), built from the ledger.
- `POST /transferrecipient` (an existing account returns the same recipient), `POST /transfer`
  ("Transfer has been queued", `pending`, later `success`/`failed`; reused reference refused;
  `TransferCreateResponse`: the recipient by id), `GET /transfer/verify/{reference}`
  (`TransferVerifyResponse`; "Transfer not found" 404).
- Transfers confirmed by OTP (`transfer_otp_required`, a dashboard setting, also switched by
  `POST /transfer/enable_otp`, and by `POST /transfer/disable_otp` then
  `/transfer/disable_otp_finalize {otp}`): `POST /transfer` answers "Transfer requires OTP to
  continue" with status `otp` and its `transfer_code`; nothing is paid and the balance is
  untouched (the ledger holds it pending: the transfer exists) until `POST
  /transfer/finalize_transfer {transfer_code, otp}` with `transfer_otp` ("Transfer has been
  queued", then as any transfer); a wrong OTP is a 400 and changes nothing; verify shows `otp`
  meanwhile. `POST /transfer/resend_otp` answers "OTP has been resent". The OTP goes to the
  merchant (`business_phone`), never to the payee.
- `POST /refund` ("Refund has been queued for processing", `pending` then `processed`; a fully
  refunded charge verifies as `reversed`), `GET /refund/{id}`.
- `GET /balance`, `GET /bank` (mobile-money wallets) for probes.
- Lookups lag acceptance by the realism's `lookup_lag_s`: until then they answer the not-found of
  an unknown reference (`SandboxContext.visible`).
- Webhooks go to the dashboard URL (`ctx.webhooks["paystack"]`) through the outbox (loss,
  duplication, delay): `charge.success` (Paystack sends none for failed or abandoned charges),
  `transfer.success` / `transfer.failed`, `refund.pending` / `refund.processed` (amount as a
  string, as in Paystack's samples); each signed `x-paystack-signature` = hex HMAC-SHA512 of the
  raw body with the secret key in force (a rotated key once its fault starts).
Where Paystack's documents give no exact text (throttling, 5xx, some validation messages) the
envelope is kept and the message is plain.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mcp_autonomy.providers.base import normalize_msisdn
from mcp_autonomy.sandbox.core import (
    BUSY_RESULT_DELAY_S,
    SandboxContext,
    json_response,
    read_json_object,
)
from mcp_autonomy.sandbox.faults import CredentialExpirySpec, EndpointKind, Rejection
from mcp_autonomy.sandbox.ledger import LedgerEntry, LedgerOperation, LedgerStatus

NAME = "paystack"
MOBILE_MONEY: dict[str, tuple[str, frozenset[str]]] = {
    "GHS": ("233", frozenset({"mtn", "atl", "vod"})),
    "KES": ("254", frozenset({"mpesa", "mpesa_offline"})),
}
"""Currency -> (dial code, mobile_money.provider values)."""
COUNTRY_CODES = {"GHS": "GH", "KES": "KE"}
OTP_PROVIDERS = frozenset({"vod"})
WALLET_BANK_CODES: dict[str, frozenset[str]] = {
    "GHS": frozenset({"MTN", "ATL", "VOD"}),
    "KES": frozenset({"MPESA"}),
}
CHARGE_REFERENCE_RE = re.compile(r"^[A-Za-z0-9.=\-]{1,100}$")
TRANSFER_REFERENCE_RE = re.compile(r"^[a-z0-9_\-]{16,100}$")
RECIPIENT_TYPES = frozenset(
    {"nuban", "ghipss", "mobile_money", "basa", "authorization", "mobile_money_business"}
)
DISPLAY_TEXT = "Please complete authorization process on your mobile phone"
INTEGRATION_ID = 100001
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 100
SIGNATURE_HEADER = "x-paystack-signature"
BANKS_LISTED_AT = "2020-01-01T00:00:00.000Z"
"""When the emulated wallets were added to Paystack's bank list (a fixed, plausible time)."""
AWAITING_CUSTOMER = ("pay_offline", "send_otp")
"""Charge statuses while the customer still has to act (verify shows them as `ongoing`)."""
ABANDONED = "abandoned"
ABANDONED_MESSAGE = "The transaction was not completed"
DECLINED = "Declined"
CUSTOMER_CODES = {
    DECLINED: "the customer declined (Paystack's error list: Declined)",
    "Insufficient Funds": "the customer's wallet is short (Paystack's error list: Insufficient Funds)",
    ABANDONED: "the customer never completed the charge: status abandoned, not final at first",
}
"""What a charge the customer failed ends with: the `gateway_response` of a `failed` charge, or
`abandoned` (the status) for one nobody answered."""
TRANSFER_OTP_REQUIRED = "Transfer requires OTP to continue"
TRANSFER_QUEUED = "Transfer has been queued"
TRANSFER_CODE_INVALID = "Transfer ID/code specified is invalid."


class PaystackSandboxConfig(BaseModel):
    """The keys the emulated Paystack accepts (and signs webhooks with), balances, timing knobs."""

    model_config = ConfigDict(frozen=True)

    secret_keys: tuple[str, ...] = ("sk_test_sandbox_0000000000000000000000",)
    otp: str = "123456"
    balances_minor: dict[str, int] = Field(
        default_factory=lambda: {"NGN": 10**12, "GHS": 10**12, "KES": 10**12, "ZAR": 10**12}
    )
    abandon_after_s: float = Field(
        180.0, gt=0, description="an unanswered charge shows `abandoned` after this"
    )
    abandoned_final_after_s: float = Field(
        3600.0,
        gt=0,
        description="until this long after acceptance an abandoned charge can still complete (a late "
        "approval turns it into success); then it is over. Paystack documents no bound",
    )
    transfer_delay_s: float = Field(3.0, ge=0)
    refund_delay_s: float = Field(5.0, ge=0)
    transfer_otp_required: bool = Field(
        False,
        description="the integration confirms transfers by OTP (a dashboard setting; also toggled by "
        "POST /transfer/enable_otp and /transfer/disable_otp + /transfer/disable_otp_finalize)",
    )
    transfer_otp: str = Field("123456", description="the OTP Paystack 'sends' the merchant for transfers")
    business_phone: str = Field("+254700000000", description="where Paystack sends transfer OTPs")

    @model_validator(mode="after")
    def _windows_ordered(self) -> PaystackSandboxConfig:
        if self.abandoned_final_after_s < self.abandon_after_s:
            raise ValueError("abandoned_final_after_s must be >= abandon_after_s")
        return self


@dataclass
class _Charge:
    entry: LedgerEntry
    id: int
    email: str
    wallet: str
    status: str
    accepted_s: float  # clock.monotonic() at acceptance: lookups lag it
    gateway_response: str = "Awaiting customer"
    paid_at: str | None = None
    refunded_minor: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)  # the merchant's, echoed back


@dataclass
class _Transfer:
    entry: LedgerEntry
    id: int
    transfer_code: str
    recipient: dict[str, Any]
    reason: str
    accepted_s: float
    status: str = "pending"
    failure: str | None = None
    transferred_at: str | None = None


@dataclass
class _Refund:
    id: int
    charge: _Charge
    amount_minor: int
    accepted_s: float
    status: str = "pending"
    created_at: str = ""
    refunded_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _iso_of(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _parse_bound(value: str | None, *, end: bool) -> float | None:
    """A `from`/`to` query value (date-time, or a date meaning the whole day) as epoch seconds."""
    if not value:
        return None
    text = value.strip().replace(" ", "+")  # a raw "+" in a query string decodes to a space
    if len(text) == 10:
        day = date.fromisoformat(text)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        return start + 86_400 - 0.001 if end else start
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


class PaystackEmulator:
    """The emulated Paystack API (see the module docstring for its behaviour)."""

    name = NAME
    customer_codes = CUSTOMER_CODES
    no_answer_code = ABANDONED

    def __init__(self, ctx: SandboxContext) -> None:
        self.ctx = ctx
        given = ctx.credentials.get(NAME)
        self.config = given if isinstance(given, PaystackSandboxConfig) else PaystackSandboxConfig()
        self._rng = random.Random(f"{ctx.seed}:{NAME}")
        self._ids = itertools.count(4_000_000_001)
        self._balances = dict(self.config.balances_minor)
        self._charges: dict[str, _Charge] = {}
        self._charges_by_id: dict[int, _Charge] = {}
        self._recipients: dict[str, dict[str, Any]] = {}
        self._recipient_of_account: dict[tuple[str, str, str], str] = {}
        self._transfers: dict[str, _Transfer] = {}
        self._transfer_codes: dict[str, _Transfer] = {}
        self.transfer_otp_required = self.config.transfer_otp_required
        """Whether `POST /transfer` stops at `otp` (the integration's setting, toggled over the API)."""
        self._otp_disable_requested = False
        self._refunds: dict[int, _Refund] = {}
        # Customers are Paystack's own records, one per email, numbered apart from transactions.
        self._customer_ids: dict[str, int] = {}

    def routes(self) -> list[BaseRoute]:
        """Paystack's paths, relative to the `/paystack` mount."""
        return [
            Route("/charge", self._route(EndpointKind.COLLECT, self._charge), methods=["POST"]),
            Route(
                "/charge/submit_otp", self._route(EndpointKind.COLLECT, self._submit_otp), methods=["POST"]
            ),
            Route(
                "/charge/{reference}", self._route(EndpointKind.STATUS, self._check_charge), methods=["GET"]
            ),
            Route(
                "/transaction/verify/{reference}",
                self._route(EndpointKind.STATUS, self._verify),
                methods=["GET"],
            ),
            Route("/transaction", self._route(EndpointKind.STATUS, self._list_transactions), methods=["GET"]),
            Route("/transferrecipient", self._route(EndpointKind.PAYOUT, self._recipient), methods=["POST"]),
            Route("/transfer", self._route(EndpointKind.PAYOUT, self._transfer), methods=["POST"]),
            Route(
                "/transfer/finalize_transfer",
                self._route(EndpointKind.PAYOUT, self._finalize_transfer),
                methods=["POST"],
            ),
            Route(
                "/transfer/resend_otp", self._route(EndpointKind.PAYOUT, self._resend_otp), methods=["POST"]
            ),
            Route(
                "/transfer/enable_otp", self._route(EndpointKind.PAYOUT, self._enable_otp), methods=["POST"]
            ),
            Route(
                "/transfer/disable_otp", self._route(EndpointKind.PAYOUT, self._disable_otp), methods=["POST"]
            ),
            Route(
                "/transfer/disable_otp_finalize",
                self._route(EndpointKind.PAYOUT, self._disable_otp_finalize),
                methods=["POST"],
            ),
            Route(
                "/transfer/verify/{reference}",
                self._route(EndpointKind.STATUS, self._verify_transfer),
                methods=["GET"],
            ),
            Route("/refund", self._route(EndpointKind.REFUND, self._refund), methods=["POST"]),
            Route("/refund/{id}", self._route(EndpointKind.STATUS, self._fetch_refund), methods=["GET"]),
            Route("/balance", self._route(EndpointKind.PROBE, self._balance), methods=["GET"]),
            Route("/bank", self._route(EndpointKind.PROBE, self._banks), methods=["GET"]),
        ]

    def _route(self, endpoint: EndpointKind, handler: Any) -> Any:
        async def endpoint_fn(request: Request) -> Response:
            async def authorized() -> Response:
                refused = self._check_key(request, endpoint)
                return refused if refused is not None else await handler(request)

            return await self.ctx.guarded(self, request, endpoint, authorized)

        return endpoint_fn

    # --- shapes --------------------------------------------------------------------------

    @staticmethod
    def _ok(message: str, data: Any, http_status: int = 200, **extra: Any) -> Response:
        return json_response({"status": True, "message": message, "data": data, **extra}, http_status)

    @staticmethod
    def _fail(
        http_status: int,
        message: str,
        *,
        code: str | None = None,
        error_type: str | None = "validation_error",
        next_step: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        body: dict[str, Any] = {"status": False, "message": message}
        if next_step:
            body["meta"] = {"nextStep": next_step}
        if error_type:
            body["type"] = error_type
        if code:
            body["code"] = code
        return json_response(body, http_status, headers)

    def rejection_response(self, rejection: Rejection, endpoint: EndpointKind) -> Response:
        """Paystack's envelope for an outage, a throttle or a server error."""
        if rejection.kind == "unavailable":
            return self._fail(503, "Service Unavailable", error_type="api_error")
        if rejection.kind == "throttled":
            headers = {"Retry-After": f"{rejection.retry_after_s:g}"} if rejection.retry_after_s else None
            return self._fail(
                rejection.http_status or 429,
                "Too many requests. Please try again later.",
                error_type="api_error",
                headers=headers,
            )
        return self._fail(
            rejection.http_status or 500, "An error occurred, please try again.", error_type="api_error"
        )

    def _iso(self) -> str:
        return _iso_of(self.ctx.clock.now())

    def _visible(self, accepted_s: float) -> bool:
        return self.ctx.visible(NAME, accepted_s)

    def _reference_not_found(self, http_status: int = 404) -> Response:
        # The OpenAPI description answers an unknown verify reference with 404 (a POST naming
        # one is a validation error, 400); the message, code and next step are those of
        # Paystack's error list.
        return self._fail(
            http_status,
            "Transaction reference not found",
            code="transaction_not_found",
            next_step="Ensure that you're passing the reference of a transaction that exists on this integration",
        )

    # --- auth ----------------------------------------------------------------------------

    def _valid_keys(self, endpoint: EndpointKind) -> set[str]:
        now = self.ctx.clock.monotonic()
        keys = set(self.config.secret_keys)
        if self.ctx.faults.credential_cutoff(NAME, endpoint) is not None:
            keys.clear()  # the configured keys are revoked while the fault lasts
        for fault in self.ctx.faults.faults(NAME):
            spec = fault.spec
            if isinstance(spec, CredentialExpirySpec) and spec.replacement_secret and fault.start_s <= now:
                keys.add(spec.replacement_secret)
        return keys

    def _signing_key(self) -> str:
        """The secret key webhooks are signed with: a rotated key once its fault started."""
        now = self.ctx.clock.monotonic()
        key = self.config.secret_keys[0]
        for fault in self.ctx.faults.faults(NAME):
            spec = fault.spec
            if isinstance(spec, CredentialExpirySpec) and spec.replacement_secret and fault.start_s <= now:
                key = spec.replacement_secret
        return key

    def _check_key(self, request: Request, endpoint: EndpointKind) -> Response | None:
        header = request.headers.get("authorization")
        if not header:
            return self._fail(401, "No Authorization Header was found", error_type=None)
        scheme, _, key = header.partition(" ")
        if scheme != "Bearer" or not key:
            return self._fail(401, "Format is Authorization Bearer [secret key]", error_type=None)
        if key not in self._valid_keys(endpoint):
            return self._fail(401, "Invalid key", error_type=None)
        return None

    # --- webhooks ------------------------------------------------------------------------

    def _webhook(self, event: str, data: dict[str, Any]) -> None:
        """Post one event to the dashboard's webhook URL (if set), signed over the exact bytes sent."""
        url = self.ctx.webhooks.get(NAME)
        if not url:
            return  # no URL on the dashboard: Paystack sends nothing
        key = self._signing_key().encode()

        def sign(raw: bytes) -> dict[str, str]:
            return {SIGNATURE_HEADER: hmac.new(key, raw, hashlib.sha512).hexdigest()}

        self.ctx.outbox.send(NAME, url, {"event": event, "data": data}, headers_for=sign)

    # --- charge --------------------------------------------------------------------------

    async def _charge(self, request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return self._fail(400, "Invalid JSON body", code="invalid_params")
        email, amount, currency = body.get("email"), body.get("amount"), body.get("currency", "NGN")
        mobile = body.get("mobile_money")
        if not isinstance(email, str) or "@" not in email:
            return self._fail(
                400,
                "Email address is required to create charge",
                code="missing_params",
                next_step="Provide all required params",
            )
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            return self._fail(400, "Amount must be an integer", code="invalid_params")
        if not isinstance(mobile, dict):
            return self._fail(
                400,
                "One of Authorization code, card object, bank object, ussd object, mobile money object, "
                "qr object, or EFT object should be passed.",
                code="missing_params",
            )
        if currency not in MOBILE_MONEY:
            return self._fail(400, "Currency not supported by merchant", code="unsupported_currency")
        dial, wallets = MOBILE_MONEY[currency]
        wallet = str(mobile.get("provider", "")).lower()
        if wallet not in wallets:
            return self._fail(
                400, f"Mobile money provider is not supported for {currency}", code="invalid_params"
            )
        try:
            msisdn = normalize_msisdn(str(mobile.get("phone", "")), dial)
        except ValueError:
            return self._fail(400, "Please provide a valid phone number", code="invalid_params")
        reference = body.get("reference") or f"T{self._rng.getrandbits(48):012x}"
        if not isinstance(reference, str) or not CHARGE_REFERENCE_RE.match(reference):
            return self._fail(400, "Invalid character in transaction reference", code="invalid_params")
        if reference in self._charges:  # the write path sees every charge at once: no lag here
            return self._fail(
                400,
                "Duplicate Transaction Reference",
                code="duplicate_reference",
                next_step="Try and create the Transaction or Charge with a new reference",
            )
        charge_id = next(self._ids)
        entry = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.COLLECT,
            provider_reference=str(charge_id),
            reference=reference,
            msisdn=msisdn,
            amount_minor=amount,
            currency=currency,
        )
        needs_otp = wallet in OTP_PROVIDERS
        charge = _Charge(
            entry,
            charge_id,
            email,
            wallet,
            "send_otp" if needs_otp else "pay_offline",
            accepted_s=self.ctx.clock.monotonic(),
            metadata=dict(body["metadata"]) if isinstance(body.get("metadata"), dict) else {},
        )
        self._charges[reference] = charge
        self._charges_by_id[charge_id] = charge
        self._watch_abandonment(charge)
        if not needs_otp:
            self._prompt_customer(charge)
        return self._ok("Charge attempted", self._charge_step(charge))

    def _charge_step(self, charge: _Charge) -> dict[str, Any]:
        if charge.status == "send_otp":
            return {
                "reference": charge.entry.reference,
                "status": "send_otp",
                "display_text": "Please enter OTP",
            }
        if charge.status == "pay_offline":
            return {
                "reference": charge.entry.reference,
                "status": "pay_offline",
                "display_text": DISPLAY_TEXT,
            }
        return self._transaction_data(charge)

    def _prompt_customer(self, charge: _Charge) -> None:
        """The customer's answer to the prompt on their phone (storms included), on the clock."""
        behavior = self.ctx.customer_for(NAME, charge.entry.msisdn, no_answer_code=ABANDONED)
        if behavior.action == "busy":
            self.ctx.scheduler.after(
                BUSY_RESULT_DELAY_S, lambda: self._finish_charge(charge, "failed", DECLINED)
            )
        elif behavior.action != "ignore":
            outcome = "success" if behavior.action == "accept" else "failed"
            decline = behavior.decline_code or DECLINED
            self.ctx.scheduler.after(behavior.delay_s, lambda: self._finish_charge(charge, outcome, decline))

    def _watch_abandonment(self, charge: _Charge) -> None:
        """A charge nobody completes is `abandoned` after `abandon_after_s`, but the customer may
        still complete it until `abandoned_final_after_s`; only then is it over (the ledger's
        failure). Scheduled at acceptance: a Vodafone charge still waiting for its OTP counts."""

        def abandon() -> None:
            if charge.status in AWAITING_CUSTOMER:
                charge.status, charge.gateway_response = ABANDONED, ABANDONED_MESSAGE
                self.ctx.ledger.settle(charge.entry, LedgerStatus.PENDING, result_code=ABANDONED)

        def give_up() -> None:
            if charge.status in (*AWAITING_CUSTOMER, ABANDONED):
                charge.status, charge.gateway_response = ABANDONED, ABANDONED_MESSAGE
                self.ctx.ledger.settle(
                    charge.entry, LedgerStatus.FAILED, result_code=ABANDONED, result_desc=ABANDONED_MESSAGE
                )

        self.ctx.scheduler.after(self.config.abandon_after_s, abandon)
        self.ctx.scheduler.after(self.config.abandoned_final_after_s, give_up)

    def _finish_charge(self, charge: _Charge, outcome: str, decline: str) -> None:
        # An abandoned charge can still complete while its ledger entry is pending: the customer
        # approved late. Once `give_up` failed it, a late answer changes nothing.
        if (
            charge.status not in (*AWAITING_CUSTOMER, ABANDONED)
            or charge.entry.status is not LedgerStatus.PENDING
        ):
            return
        charge.status = outcome
        if outcome == "success":
            charge.gateway_response = "Approved"
            charge.paid_at = self._iso()
            self.ctx.ledger.settle(
                charge.entry, LedgerStatus.SUCCEEDED, result_code="success", result_desc="Approved"
            )
            self._webhook("charge.success", self._transaction_data(charge))
        else:
            charge.gateway_response = decline
            self.ctx.ledger.settle(
                charge.entry, LedgerStatus.FAILED, result_code=outcome, result_desc=charge.gateway_response
            )

    async def _submit_otp(self, request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return self._fail(400, "Invalid JSON body", code="invalid_params")
        reference, otp = body.get("reference"), body.get("otp")
        if not isinstance(reference, str) or not isinstance(otp, str):
            return self._fail(400, "reference and otp are required", code="missing_params")
        charge = self._charges.get(reference)
        if charge is None:
            return self._reference_not_found(400)
        if charge.status != "send_otp":
            return self._fail(400, "Charge is not awaiting an OTP", code="invalid_params")
        if otp != self.config.otp:
            # Paystack's error list: the mobile-money OTP is wrong ("registration token").
            return self._fail(
                400,
                "Provided registration token is invalid",
                code="invalid_params",
                error_type="processor_error",
                next_step="Show the error to the customer and ask for correct OTP.",
            )
        charge.status = "pay_offline"
        self._prompt_customer(charge)
        return self._ok("Charge attempted", self._charge_step(charge))

    def _customer(self, charge: _Charge) -> dict[str, Any]:
        msisdn = charge.entry.msisdn
        customer_id = self._customer_ids.setdefault(charge.email, 25_000_001 + len(self._customer_ids))
        return {
            "id": customer_id,
            "first_name": None,
            "last_name": None,
            "email": charge.email,
            "customer_code": f"CUS_{customer_id:x}sandbox",
            "phone": msisdn,
            "metadata": None,
            "risk_action": "default",
            "international_format_phone": msisdn,
        }

    def _authorization(self, charge: _Charge) -> dict[str, Any]:
        # Paystack masks a wallet number like a card: the national prefix as the "bin".
        dial = MOBILE_MONEY.get(charge.entry.currency, ("", frozenset()))[0]
        national = "0" + charge.entry.msisdn.removeprefix(f"+{dial}")
        return {
            "authorization_code": f"AUTH_{charge.id:x}",
            "bin": f"{national[:3]}XXX",
            "last4": charge.entry.msisdn[-4:],
            "exp_month": "12",
            "exp_year": "9999",
            "channel": "mobile_money",
            "card_type": "",
            "bank": charge.wallet.upper(),
            "country_code": COUNTRY_CODES.get(charge.entry.currency, ""),
            "brand": charge.wallet,
            "reusable": False,
            "signature": None,
            "account_name": None,
        }

    def _shown_status(self, charge: _Charge) -> str:
        # While the customer still has to act, verify reports the transaction as ongoing.
        return "ongoing" if charge.status in AWAITING_CUSTOMER else charge.status

    def _transaction_data(self, charge: _Charge) -> dict[str, Any]:
        """`VerifyResponse.data` (also the `charge.success` webhook's data)."""
        entry = charge.entry
        created = _iso_of(entry.created_at)
        authorization = self._authorization(charge)
        authorization["signature"] = ""  # verify types it as a string
        authorization.update(receiver_bank_account_number=None, receiver_bank=None)
        return {
            "id": charge.id,
            "domain": "test",
            "status": self._shown_status(charge),
            "reference": entry.reference,
            "receipt_number": None,
            "amount": entry.amount_minor,
            "message": None,
            "gateway_response": charge.gateway_response,
            "paid_at": charge.paid_at,
            "created_at": created,
            "channel": "mobile_money",
            "currency": entry.currency,
            "ip_address": "",
            "metadata": charge.metadata or "",
            "log": None,
            "fees": None,
            "fees_split": None,
            "authorization": authorization,
            "customer": self._customer(charge),
            "plan": None,
            "split": {},
            "order_id": None,
            "paidAt": charge.paid_at,
            "createdAt": created,
            "requested_amount": entry.amount_minor,
            "pos_transaction_data": None,
            "source": None,
            "fees_breakdown": None,
            "connect": None,
            "transaction_date": created,
            "plan_object": {},
            "subaccount": {},
        }

    def _list_row(self, charge: _Charge) -> dict[str, Any]:
        """One `TransactionListResponseArray` item."""
        entry = charge.entry
        created = _iso_of(entry.created_at)
        customer = self._customer(charge)
        del customer["international_format_phone"]  # the list's customer has no such field
        return {
            "id": charge.id,
            "domain": "test",
            "status": self._shown_status(charge),
            "reference": entry.reference,
            "amount": entry.amount_minor,
            "message": None,
            "gateway_response": charge.gateway_response,
            "paid_at": charge.paid_at,
            "created_at": created,
            "channel": "mobile_money",
            "currency": entry.currency,
            "ip_address": None,
            "metadata": None,
            "log": None,
            "fees": None,
            "fees_split": None,
            "customer": customer,
            "authorization": self._authorization(charge),
            "plan": {},
            "split": {},
            "subaccount": {},
            "order_id": None,
            "paidAt": charge.paid_at,
            "createdAt": created,
            "requested_amount": entry.amount_minor,
            "source": None,
            "connect": None,
            "pos_transaction_data": None,
        }

    def _charge_check_data(self, charge: _Charge) -> dict[str, Any]:
        """`ChargeCheckPendingResponse.data`: the charge itself, its raw status included."""
        authorization = {
            key: value for key, value in self._authorization(charge).items() if key not in ("account_name",)
        }
        authorization["signature"] = ""
        customer = self._customer(charge)
        return {
            "status": charge.status,
            "amount": charge.entry.amount_minor,
            "currency": charge.entry.currency,
            "transaction_date": _iso_of(charge.entry.created_at),
            "reference": charge.entry.reference,
            "domain": "test",
            "redirect_url": None,
            "metadata": charge.metadata,
            "gateway_response": charge.gateway_response,
            "message": None,
            "channel": "mobile_money",
            "fees": None,
            "authorization": authorization,
            "customer": {
                key: customer[key]
                for key in ("first_name", "last_name", "email", "customer_code", "phone", "risk_action")
            },
        }

    async def _check_charge(self, request: Request) -> Response:
        charge = self._charges.get(request.path_params["reference"])
        if charge is None or not self._visible(charge.accepted_s):
            return self._fail(404, "Entity not found", error_type=None)
        return self._ok("Reference check successful", self._charge_check_data(charge))

    async def _verify(self, request: Request) -> Response:
        charge = self._charges.get(request.path_params["reference"])
        if charge is None or not self._visible(charge.accepted_s):
            return self._reference_not_found()
        return self._ok("Verification successful", self._transaction_data(charge))

    async def _list_transactions(self, request: Request) -> Response:
        params = request.query_params
        try:
            since = _parse_bound(params.get("from"), end=False)
            until = _parse_bound(params.get("to"), end=True)
        except ValueError:
            return self._fail(400, "Invalid date supplied for from or to", code="invalid_params")
        raw_per_page = params.get("perPage") or params.get("per_page") or str(DEFAULT_PER_PAGE)
        raw_page = params.get("page") or "1"
        if not raw_per_page.isdigit() or not raw_page.isdigit() or int(raw_page) < 1:
            return self._fail(400, "perPage and page must be positive integers", code="invalid_params")
        per_page = min(max(int(raw_per_page), 1), MAX_PER_PAGE)
        page = int(raw_page)
        wanted_status = params.get("status")
        charges = []
        # The ledger is the truth of what was charged; newest first, as Paystack lists them.
        for entry in reversed(self.ctx.ledger.entries(provider=NAME, operation=LedgerOperation.COLLECT)):
            charge = self._charges.get(entry.reference or "")
            if charge is None or charge.entry is not entry or not self._visible(charge.accepted_s):
                continue
            if (since is not None and entry.created_at < since) or (
                until is not None and entry.created_at > until
            ):
                continue
            if wanted_status and self._shown_status(charge) != wanted_status:
                continue
            charges.append(charge)
        rows = [self._list_row(c) for c in charges[(page - 1) * per_page : page * per_page]]
        meta = {
            "total": len(charges),
            "total_volume": sum(c.entry.amount_minor for c in charges),
            "skipped": (page - 1) * per_page,
            "perPage": per_page,
            "page": page,
            "pageCount": math.ceil(len(charges) / per_page),
        }
        return self._ok("Transactions retrieved", rows, meta=meta)

    # --- transfers -----------------------------------------------------------------------

    async def _recipient(self, request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return self._fail(400, "Invalid JSON body", code="invalid_params")
        kind, name = body.get("type"), body.get("name")
        account, bank_code, currency = (
            body.get("account_number"),
            body.get("bank_code"),
            body.get("currency", "NGN"),
        )
        if kind not in RECIPIENT_TYPES:
            return self._fail(400, "Recipient type is invalid", code="invalid_params")
        if not isinstance(name, str) or not name:
            return self._fail(400, "Name is required", code="missing_params")
        if not isinstance(account, str) or not account:
            return self._fail(400, "Account number is required", code="missing_params")
        if not isinstance(bank_code, str) or not bank_code:
            return self._fail(400, "bank_code is required", code="missing_params")
        if kind == "mobile_money" and bank_code not in WALLET_BANK_CODES.get(str(currency), frozenset()):
            return self._fail(400, "Unknown bank code", code="invalid_bank_code")
        key = (account, bank_code, str(currency))
        existing = self._recipient_of_account.get(key)
        if (
            existing is not None
        ):  # "A duplicate account number will lead to the retrieval of the existing record"
            return self._ok("Transfer recipient created successfully", self._recipients[existing], 201)
        code = f"RCP_{self._rng.getrandbits(60):015x}"
        now = self._iso()
        recipient = {
            "active": True,
            "createdAt": now,
            "currency": currency,
            "description": "",
            "domain": "test",
            "email": None,  # nullable in practice (an erratum of the description)
            "id": next(self._ids),
            "integration": INTEGRATION_ID,
            "metadata": None,
            "name": name,
            "recipient_code": code,
            "type": kind,
            "updatedAt": now,
            "is_deleted": False,
            "isDeleted": False,
            "details": {
                "authorization_code": None,
                "account_number": account,
                "account_name": None,
                "bank_code": bank_code,
                "bank_name": bank_code,
            },
        }
        self._recipients[code] = recipient
        self._recipient_of_account[key] = code
        return self._ok("Transfer recipient created successfully", recipient, 201)

    async def _transfer(self, request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return self._fail(400, "Invalid JSON body", code="invalid_params")
        amount, recipient_code = body.get("amount"), body.get("recipient")
        reference, currency = body.get("reference"), body.get("currency", "NGN")
        if body.get("source") != "balance":
            return self._fail(400, "Source is invalid", code="invalid_params")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            return self._fail(400, "Amount must be an integer", code="invalid_params")
        recipient = self._recipients.get(recipient_code) if isinstance(recipient_code, str) else None
        if recipient is None or recipient["currency"] != currency:
            return self._fail(
                400,
                "Recipient specified is invalid",
                code="invalid_transfer_recipient",
                next_step="Provide a valid recipient. Ensure you are passing the recipient code in the recipient param",
            )
        if not isinstance(reference, str) or not TRANSFER_REFERENCE_RE.match(reference):
            return self._fail(
                400, "Your reference contains illegal special characters", code="invalid_params"
            )
        if reference in self._transfers:
            return self._fail(
                400,
                "Please provide a unique reference. Reference already exists on a transfer",
                code="duplicate_reference",
            )
        if self._balances.get(str(currency), 0) < amount:
            return self._insufficient_balance()
        dial = MOBILE_MONEY.get(str(currency), ("", frozenset()))[0]
        try:
            msisdn = normalize_msisdn(str(recipient["details"]["account_number"]), dial or None)
        except ValueError:
            msisdn = str(recipient["details"]["account_number"])
        transfer_id = next(self._ids)
        # The ledger has the transfer from its acceptance, at `otp` too: Paystack holds it (a
        # second transfer for the same payout would be a second payment), though no money moved.
        entry = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.PAYOUT,
            provider_reference=str(transfer_id),
            reference=reference,
            msisdn=msisdn,
            amount_minor=amount,
            currency=str(currency),
        )
        transfer = _Transfer(
            entry,
            transfer_id,
            f"TRF_{self._rng.getrandbits(60):015x}",
            recipient,
            str(body.get("reason") or ""),
            accepted_s=self.ctx.clock.monotonic(),
        )
        self._transfers[reference] = transfer
        self._transfer_codes[transfer.transfer_code] = transfer
        if self.transfer_otp_required:
            # The OTP goes to the merchant's business phone, never to the recipient: nothing is
            # paid until `POST /transfer/finalize_transfer` brings it back.
            transfer.status = "otp"
            return self._ok(TRANSFER_OTP_REQUIRED, self._transfer_created(transfer))
        self._send_transfer(transfer)
        return self._ok(TRANSFER_QUEUED, self._transfer_created(transfer))

    def _insufficient_balance(self) -> Response:
        return self._fail(
            400, "Your balance is not enough to fulfil this request", code="insufficient_balance"
        )

    def _send_transfer(self, transfer: _Transfer) -> None:
        """Debit the balance and let the transfer complete after `transfer_delay_s`."""
        self._balances[transfer.entry.currency] -= transfer.entry.amount_minor
        transfer.status = "pending"
        result = self.ctx.customers.get(NAME, transfer.entry.msisdn).payout_result_code
        self.ctx.scheduler.after(
            self.config.transfer_delay_s, lambda: self._finish_transfer(transfer, result)
        )

    def _finish_transfer(self, transfer: _Transfer, result: str | None) -> None:
        if transfer.status != "pending":
            return
        if result in (None, "0", "success"):
            transfer.status, transfer.transferred_at = "success", self._iso()
            self.ctx.ledger.settle(transfer.entry, LedgerStatus.SUCCEEDED, result_code="success")
        else:
            transfer.status, transfer.failure = "failed", result
            self._balances[transfer.entry.currency] += transfer.entry.amount_minor
            self.ctx.ledger.settle(
                transfer.entry, LedgerStatus.FAILED, result_code="failed", result_desc=result
            )
        data = self._transfer_data(transfer)
        # The webhook's transfer names its integration in full and carries snake-case times.
        data["integration"] = {"id": INTEGRATION_ID, "is_live": False, "business_name": "Sandbox"}
        data["created_at"], data["updated_at"] = data["createdAt"], data["updatedAt"]
        self._webhook(f"transfer.{transfer.status}", data)

    async def _finalize_transfer(self, request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return self._fail(400, "Invalid JSON body", code="invalid_params")
        code, otp = body.get("transfer_code"), body.get("otp")
        if not isinstance(code, str) or not isinstance(otp, str):
            return self._fail(400, "transfer_code and otp are required", code="missing_params")
        transfer = self._transfer_codes.get(code)
        if transfer is None:
            return self._fail(400, TRANSFER_CODE_INVALID, code="invalid_params")
        if transfer.status != "otp":
            return self._fail(400, "Transfer is not currently awaiting OTP", code="invalid_params")
        if otp != self.config.transfer_otp:
            # Paystack publishes no text for a wrong transfer OTP; the envelope is its own.
            return self._fail(400, "Invalid OTP", code="invalid_params", error_type="processor_error")
        if self._balances.get(transfer.entry.currency, 0) < transfer.entry.amount_minor:
            return self._insufficient_balance()
        self._send_transfer(transfer)
        return self._ok(TRANSFER_QUEUED, self._transfer_created(transfer))

    async def _resend_otp(self, request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return self._fail(400, "Invalid JSON body", code="invalid_params")
        code, reason = body.get("transfer_code"), body.get("reason", "transfer")
        if not isinstance(code, str) or reason not in ("resend_otp", "transfer", "disable_otp"):
            return self._fail(400, "transfer_code and a valid reason are required", code="invalid_params")
        transfer = self._transfer_codes.get(code)
        if transfer is None or transfer.status != "otp":
            return self._fail(400, TRANSFER_CODE_INVALID, code="invalid_params")
        return json_response({"status": True, "message": "OTP has been resent"})

    async def _enable_otp(self, request: Request) -> Response:
        self.transfer_otp_required = True
        return json_response({"status": True, "message": "OTP requirement for transfers has been enabled"})

    async def _disable_otp(self, request: Request) -> Response:
        # Turning the confirmation off needs the merchant's OTP too (disable_otp_finalize).
        self._otp_disable_requested = True
        last4 = self.config.business_phone[-4:]
        return json_response(
            {"status": True, "message": f"OTP has been sent to mobile number ending with {last4}"}
        )

    async def _disable_otp_finalize(self, request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return self._fail(400, "Invalid JSON body", code="invalid_params")
        otp = body.get("otp")
        if not isinstance(otp, str):
            return self._fail(400, "otp is required", code="missing_params")
        if not self._otp_disable_requested or otp != self.config.transfer_otp:
            return self._fail(400, "Invalid OTP", code="invalid_params", error_type="processor_error")
        self._otp_disable_requested = False
        self.transfer_otp_required = False
        return json_response({"status": True, "message": "OTP requirement for transfers has been disabled"})

    def _transfer_created(self, transfer: _Transfer) -> dict[str, Any]:
        """`TransferCreateResponse.data`: the recipient as its id, nothing transferred yet."""
        entry = transfer.entry
        return {
            "transfersessionid": [],
            "transfertrials": [],
            "domain": "test",
            "amount": entry.amount_minor,
            "currency": entry.currency,
            "reference": entry.reference,
            "source": "balance",
            "source_details": None,
            "reason": transfer.reason,
            "status": transfer.status,
            "failures": None,
            "transfer_code": transfer.transfer_code,
            "titan_code": None,
            "transferred_at": None,
            "id": transfer.id,
            "integration": INTEGRATION_ID,
            "request": transfer.id,
            "recipient": transfer.recipient["id"],
            "createdAt": _iso_of(entry.created_at),
            "updatedAt": _iso_of(entry.updated_at),
        }

    def _transfer_data(self, transfer: _Transfer) -> dict[str, Any]:
        """`TransferVerifyResponse.data`."""
        entry = transfer.entry
        return {
            "amount": entry.amount_minor,
            "createdAt": _iso_of(entry.created_at),
            "currency": entry.currency,
            "domain": "test",
            "failures": None,
            "id": transfer.id,
            "integration": INTEGRATION_ID,
            "reason": transfer.reason,
            "reference": entry.reference,
            "source": "balance",
            "source_details": None,
            "status": transfer.status,
            "titan_code": None,
            "transfer_code": transfer.transfer_code,
            "transferred_at": transfer.transferred_at,
            "updatedAt": _iso_of(entry.updated_at),
            "recipient": transfer.recipient,
            "session": {"provider": None, "id": None},
            "gateway_response": transfer.failure,
        }

    async def _verify_transfer(self, request: Request) -> Response:
        transfer = self._transfers.get(request.path_params["reference"])
        if transfer is None or not self._visible(transfer.accepted_s):
            return self._fail(404, "Transfer not found", error_type=None)
        return self._ok("Transfer retrieved", self._transfer_data(transfer))

    # --- refunds -------------------------------------------------------------------------

    async def _refund(self, request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return self._fail(400, "Invalid JSON body", code="invalid_params")
        target = body.get("transaction")
        charge = None
        if isinstance(target, str):
            charge = self._charges.get(target) or (
                self._charges_by_id.get(int(target)) if target.isdigit() else None
            )
        elif isinstance(target, int) and not isinstance(target, bool):
            charge = self._charges_by_id.get(target)
        if charge is None:
            return self._fail(400, "Transaction reference not found", code="transaction_not_found")
        if charge.status == "reversed" or charge.refunded_minor >= charge.entry.amount_minor:
            return self._fail(400, "Transaction has been fully reversed", code="transaction_reversed")
        if charge.status != "success":
            return self._fail(
                400, "Cannot refund a transaction that is not successful", code="invalid_params"
            )
        remaining = charge.entry.amount_minor - charge.refunded_minor
        amount = body.get("amount", remaining)
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= remaining:
            return self._fail(
                400, "Refund amount cannot be greater than the transaction amount", code="invalid_params"
            )
        if body.get("currency", charge.entry.currency) != charge.entry.currency:
            return self._fail(400, "Currency does not match the transaction's", code="invalid_params")
        charge.refunded_minor += amount  # reserved now, so two refunds cannot exceed the charge
        refund = _Refund(
            next(self._ids), charge, amount, accepted_s=self.ctx.clock.monotonic(), created_at=self._iso()
        )
        self._refunds[refund.id] = refund
        self.ctx.scheduler.after(self.config.refund_delay_s, lambda: self._finish_refund(refund))
        self._webhook("refund.pending", self._refund_event(refund))
        return self._ok("Refund has been queued for processing", self._refund_data(refund))

    def _finish_refund(self, refund: _Refund) -> None:
        charge = refund.charge
        refund.status, refund.refunded_at = "processed", self._iso()
        entry = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.REFUND,
            provider_reference=str(refund.id),
            reference=charge.entry.reference,
            msisdn=charge.entry.msisdn,
            amount_minor=refund.amount_minor,
            currency=charge.entry.currency,
        )
        self.ctx.ledger.settle(entry, LedgerStatus.SUCCEEDED, result_code="processed")
        if charge.refunded_minor >= charge.entry.amount_minor:
            charge.status = "reversed"
            self.ctx.ledger.settle(charge.entry, LedgerStatus.REVERSED)
        self._webhook("refund.processed", self._refund_event(refund))

    def _refund_event(self, refund: _Refund) -> dict[str, Any]:
        """A `refund.*` webhook's data, as in Paystack's samples (the amount is a string)."""
        charge = refund.charge
        return {
            "status": refund.status,
            "transaction_reference": charge.entry.reference,
            "refund_reference": f"RFD{refund.id}" if refund.status == "processed" else None,
            "amount": str(refund.amount_minor),
            "currency": charge.entry.currency,
            "processor": "mobile_money",
            "customer": {"first_name": None, "last_name": None, "email": charge.email},
            "integration": INTEGRATION_ID,
            "domain": "test",
        }

    def _refund_data(self, refund: _Refund) -> dict[str, Any]:
        """`RefundCreateResponse.data`: the transaction in the slim form of Paystack's sample."""
        charge = refund.charge
        entry = charge.entry
        return {
            "transaction": {
                "id": charge.id,
                "domain": "test",
                "reference": entry.reference,
                "amount": entry.amount_minor,
                "paid_at": charge.paid_at,
                "channel": "mobile_money",
                "currency": entry.currency,
                "authorization": {"exp_month": None, "exp_year": None, "account_name": None},
                "customer": {"international_format_phone": entry.msisdn},
                "plan": {},
                "subaccount": {"currency": None},
                "split": {},
                "order_id": None,
                "paidAt": charge.paid_at,
                "pos_transaction_data": None,
                "source": None,
                "fees_breakdown": None,
            },
            "integration": INTEGRATION_ID,
            "deducted_amount": 0,
            "channel": None,
            "merchant_note": f"Refund for transaction {entry.reference}",
            "customer_note": f"Refund for transaction {entry.reference}",
            "status": refund.status,
            "refunded_by": "sandbox@example.invalid",
            "expected_at": refund.created_at,
            "currency": entry.currency,
            "domain": "test",
            "amount": refund.amount_minor,
            "fully_deducted": False,
            "id": refund.id,
            "createdAt": refund.created_at,
            "updatedAt": refund.created_at,
        }

    def _refund_fetched(self, refund: _Refund) -> dict[str, Any]:
        """`RefundFetchResponse.data`: the transaction by id, the customer in full."""
        charge = refund.charge
        entry = charge.entry
        customer = self._customer(charge)
        # The fetched refund types every customer field as a string: unknown names are empty.
        customer.update(first_name="", last_name="", metadata="")
        return {
            "integration": INTEGRATION_ID,
            "transaction": charge.id,
            "dispute": None,
            "settlement": None,
            "id": refund.id,
            "domain": "test",
            "currency": entry.currency,
            "amount": refund.amount_minor,
            "status": refund.status,
            "refunded_at": refund.refunded_at,
            "refunded_by": "sandbox@example.invalid",
            "customer_note": f"Refund for transaction {entry.reference}",
            "merchant_note": f"Refund for transaction {entry.reference}",
            "deducted_amount": refund.amount_minor if refund.status == "processed" else 0,
            "fully_deducted": 1 if refund.status == "processed" else 0,
            "createdAt": refund.created_at,
            "bank_reference": None,
            "transaction_reference": entry.reference,
            "reason": f"Refund for transaction {entry.reference}",
            "customer": customer,
            "refund_type": "full" if refund.amount_minor >= entry.amount_minor else "partial",
            "transaction_amount": entry.amount_minor,
            "initiated_by": "api",
            "refund_channel": "mobile_money",
            "session_id": None,
            "collect_account_number": False,
        }

    async def _fetch_refund(self, request: Request) -> Response:
        raw = request.path_params["id"]
        refund = self._refunds.get(int(raw)) if str(raw).isdigit() else None
        if refund is None or not self._visible(refund.accepted_s):
            return self._fail(404, "Refund not found", error_type=None)
        return self._ok("Refund retrieved", self._refund_fetched(refund))

    # --- probes --------------------------------------------------------------------------

    async def _balance(self, request: Request) -> Response:
        data = [{"currency": c, "balance": b} for c, b in sorted(self._balances.items())]
        return self._ok("Balances retrieved", data)

    async def _banks(self, request: Request) -> Response:
        currency = request.query_params.get("currency")
        rows: list[dict[str, Any]] = []
        for cur, codes in sorted(WALLET_BANK_CODES.items()):
            if currency and cur != currency:
                continue
            for code in sorted(codes):
                rows.append(
                    {
                        "name": code,
                        "slug": code.lower(),
                        "code": code,
                        "longcode": "",
                        "gateway": None,
                        "pay_with_bank": False,
                        "supports_transfer": True,
                        "available_for_direct_debit": False,
                        "active": True,
                        "is_deleted": False,
                        "country": "Ghana" if cur == "GHS" else "Kenya",
                        "currency": cur,
                        "type": "mobile_money",
                        "id": len(rows) + 1,
                        "createdAt": BANKS_LISTED_AT,
                        "updatedAt": BANKS_LISTED_AT,
                    }
                )
        return self._ok("Banks retrieved", rows)
