"""IntaSend adapter: M-Pesa STK push collections, send-money (B2C) payouts, chargeback refunds.

Facts this module is built on (IntaSend's documentation repository and its official SDKs,
IntaSend/intasend-python and intasend-node, and the community Rust SDK):

- Hosts: `https://sandbox.intasend.com` (test) and `https://payment.intasend.com` (live), every
  path under `/api/v1/`. Authenticated calls carry `Authorization: Bearer <secret key>`; the
  publishable key travels as `public_key` in collection bodies (and the
  `INTASEND_PUBLIC_API_KEY` header the Python SDK sends).
- Collect: `POST /api/v1/payment/mpesa-stk-push/` `{public_key, currency: "KES", method:
  "M-PESA", amount, phone_number: "2547...", api_ref, narrative}` -> `{id, invoice: {invoice_id,
  state, api_ref, value, currency, account, failed_reason, failed_code, ...}, ...}`.
- Status: `POST /api/v1/payment/status/` `{invoice_id, public_key}` -> `{invoice: {invoice_id,
  state, value, currency, account, api_ref, mpesa_reference, failed_reason, failed_code, ...},
  meta: {customer: {phone_number, ...}, ...}}` with `state` PENDING / PROCESSING / RETRY (not
  final), COMPLETE, FAILED. So the pull carries status, amount, currency, payer (`account`),
  receipt (`mpesa_reference`) and the failure reason. IntaSend cannot be asked by `api_ref`:
  a push whose answer (and so its invoice id) was lost has no pull path.
- Payout: `POST /api/v1/send-money/initiate/` `{provider: "MPESA-B2C", currency,
  transactions: [{name, account, amount, narrative}], requires_approval}` returns a batch
  `{tracking_id, status, status_code, nonce, transactions}`; nothing moves until the batch is
  sent back to `POST /api/v1/send-money/approve/`. `POST /api/v1/send-money/status/`
  `{tracking_id}`: batch codes BP1xx in progress, BF102/BF105/BF107 failed, BC100 complete,
  BE111 cancelled; item codes TS100 success, TF103/TF106 failed, TC108 cancelled, TF105
  undetermined, TP101/TP102/TH107/TR109 in progress. Its items carry an amount but no currency.
- Refund: `POST /api/v1/chargebacks/` `{invoice, amount, reason, reason_details}` -> a
  chargeback `{chargeback_id, status: PENDING, ...}`; `GET /api/v1/chargebacks/{id}/`.
- Webhooks (one URL set on the dashboard) post the invoice on every collection state change
  (final state COMPLETED), the batch on every send-money status change, and the chargeback on
  every chargeback status change, each with the account's `challenge`: a shared secret that
  proves the sender knows it (nothing signs the body). `parse_callback` checks it against
  `INTASEND_WEBHOOK_CHALLENGE` when that is set.
- Errors: `{detail}` in older answers, `{type, errors: [{code, detail, attr}]}` in current ones;
  401 bad key, 403 forbidden, 404 unknown, 429 throttled (with `Retry-After`), 5xx. The status
  decides (`ERROR_RULES`, citing IntaSend's error page): a 500 or a 503 ("offline for
  maintenance") stays `ambiguous`, since nothing says the request was not processed and IntaSend
  has no idempotency key that would make a resend safe. A FAILED invoice's `failed_code` is
  M-Pesa's ResultCode; the customer's ones (1032 cancelled, 1037 no answer, ...) are
  `customer_codes`.
- Probe: `GET /api/v1/wallets/` (read-only).

IntaSend documents no idempotency key. So the adapter guards on its own side: a repeat of a
reference whose invoice is known is answered with that invoice, and a push whose first attempt
has an unknown outcome is never resent from this process.

Identifier kinds reported through `identifier_sink`: `invoice_id` and `push_id` (the STK push's
own id), `tracking_id` (send-money batch, reported right after initiate, before approval),
`chargeback_id` (refund).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.adapter import AdapterBase, RecentMap
from mcp_autonomy.providers.base import (
    NOT_FOUND_CODE,
    CallbackAuthError,
    CallbackHint,
    ErrorClass,
    ErrorRule,
    MalformedCallback,
    Money,
    MoneyTruth,
    Operation,
    PaymentContext,
    PaymentRequest,
    ProviderCapabilities,
    ProviderError,
    ProviderTransaction,
    TransactionStatus,
    normalize_msisdn,
)
from mcp_autonomy.providers.error_table import customer_codes_of, final_result
from mcp_autonomy.providers.http import NO_SOURCE, short

PROVIDER = "intasend"
API = "/api/v1"
KENYAN_MSISDN_RE = re.compile(r"^\+254(7|1)\d{8}$")
ACCOUNT_PHONE_RE = re.compile(r"^\+?\d{9,15}$")

INVOICE_PENDING = frozenset({"PENDING", "PROCESSING", "RETRY"})
INVOICE_DONE = frozenset({"COMPLETE", "COMPLETED"})
BATCH_FAILED = frozenset({"BF102", "BF105", "BF107", "BE111"})
BATCH_FAILED_TEXT = frozenset({"failed processing", "failed", "cancelled", "canceled"})
BATCH_AWAITING_APPROVAL = "BP103"
ITEM_SUCCEEDED = "TS100"
ITEM_FAILED = frozenset({"TF103", "TF106", "TC108"})
ITEM_UNDETERMINED = "TF105"
ITEM_SUCCEEDED_TEXT = frozenset({"successful", "success", "completed", "complete"})
ITEM_FAILED_TEXT = frozenset({"unsuccessful", "failed", "cancelled", "canceled"})
CHARGEBACK_DONE = frozenset({"COMPLETED", "COMPLETE", "APPROVED", "REFUNDED", "PROCESSED"})
CHARGEBACK_FAILED = frozenset({"REJECTED", "DECLINED", "CANCELLED", "FAILED"})
CHARGEBACK_PENDING = frozenset({"PENDING", "IN-REVIEW", "DISPUTED", "OVERDUE", ""})
UNRESOLVED_CODE = "unresolved_previous_attempt"
ZERO_DECIMAL_CURRENCIES = frozenset({"UGX", "RWF", "XOF", "XAF", "JPY", "KRW", "BIF", "GNF"})

INTASEND_ERRORS = "IntaSend documentation, resources/errors.md (status codes)"
INTASEND_PAYMENT_STATUS = (
    "IntaSend payment status (failed_code / failed_reason carry M-Pesa's STK ResultCode / ResultDesc); "
    "codes per Daraja 3.0 docs, M-Pesa Express result codes"
)

_HTTP_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        match="HTTP 400",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Bad Request: the request is invalid ({detail} or {errors: [{code, detail, attr}]})",
        source=f"{INTASEND_ERRORS}: 'Your request is invalid'",
    ),
    ErrorRule(
        match="HTTP 401",
        error_class=ErrorClass.AUTH,
        meaning="Unauthorized: the API token (secret key) is wrong",
        source=f"{INTASEND_ERRORS}: 'Your API token is wrong'",
    ),
    ErrorRule(
        match="HTTP 403",
        error_class=ErrorClass.AUTH,
        meaning="Forbidden: no access to the resource",
        source=f"{INTASEND_ERRORS}: 'You do not have access to the resource'",
    ),
    ErrorRule(
        match="HTTP 404",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Not Found on a payment call: no such resource (a status read raises not_found instead)",
        source=f"{INTASEND_ERRORS}: 'The specified resource could not be found'",
    ),
    ErrorRule(
        match="HTTP 429",
        error_class=ErrorClass.RATE_LIMITED,
        meaning="Too Many Requests: throttled (Retry-After honoured)",
        source=f"{INTASEND_ERRORS}: 'You're requesting too many requests! Slow down!'",
    ),
    ErrorRule(
        match="HTTP 500",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="'We had a problem with our server': nothing says the push or approval was not processed",
        source=f"{NO_SOURCE} ({INTASEND_ERRORS}: 'Try again later' says nothing about this request)",
    ),
    ErrorRule(
        match="HTTP 503",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="'temporarily offline for maintenance': a proxy's 503 may follow acceptance, and "
        "IntaSend has no idempotency key to make a resend safe",
        source=f"{NO_SOURCE} ({INTASEND_ERRORS} does not say the request was not processed)",
    ),
    ErrorRule(
        match="HTTP 404 or 400 'not found' on a status read (payment, send money, chargeback)",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="payment or send-money status: IntaSend does not know the id; raised as not_found, "
        "which the engine weighs with money_truth's grace",
        source="a read moves no money (http.TRANSPORT_RULES)",
    ),
    ErrorRule(
        match=UNRESOLVED_CODE,
        error_class=ErrorClass.AMBIGUOUS,
        meaning="this process sent a push under this reference whose outcome is unknown: it is never "
        "pushed again (IntaSend would charge twice)",
        source="IntaSend documents no idempotency key (this module's docstring)",
    ),
)
"""IntaSend answers by HTTP status (its bodies carry only a detail): the class of each."""

_RESULT_RULES: tuple[ErrorRule, ...] = tuple(
    ErrorRule(
        match=final_result(code),
        error_class=ErrorClass.CUSTOMER,
        meaning=meaning,
        source=INTASEND_PAYMENT_STATUS,
    )
    for code, meaning in (
        ("1", "STK push: insufficient funds in the customer's M-Pesa"),
        ("17", "STK push: rule limited (the same amount from this customer again so soon)"),
        ("1001", "STK push: unable to lock subscriber (the customer is in another M-Pesa session)"),
        ("1019", "STK push: expired before the customer answered"),
        ("1032", "STK push: cancelled by the customer"),
        ("1037", "STK push: DS timeout, the customer's handset cannot be reached"),
        ("2001", "STK push: wrong PIN entered by the customer"),
    )
)
"""A FAILED invoice's `failed_code` that is the customer's (send-money items carry IntaSend's own
TF codes, none of which names the customer)."""

ERROR_RULES: tuple[ErrorRule, ...] = _HTTP_RULES + _RESULT_RULES
CUSTOMER_CODES = customer_codes_of(_RESULT_RULES)
_RULE_BY_MATCH = {rule.match: rule for rule in _HTTP_RULES}
_STATUS_NOT_FOUND = _RULE_BY_MATCH[
    "HTTP 404 or 400 'not found' on a status read (payment, send money, chargeback)"
]
_UNRESOLVED = _RULE_BY_MATCH[UNRESOLVED_CODE]


class IntaSendSettings(BaseSettings):
    """IntaSend keys and endpoint, from `INTASEND_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="INTASEND_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    secret_key: SecretStr = Field(description="ISSecretKey_test_... or ISSecretKey_live_...")
    public_key: str = Field(description="ISPubKey_test_... or ISPubKey_live_... (publishable)")
    base_url: str = Field("https://sandbox.intasend.com", description="live: https://payment.intasend.com")
    payout_provider: Literal["MPESA-B2C"] = "MPESA-B2C"
    wallet_id: str | None = Field(
        None, description="settle into / pay from this wallet (default: the main one)"
    )
    webhook_challenge: SecretStr | None = Field(
        None, description="the dashboard's webhook challenge; when set, webhooks must carry it"
    )
    timeout_s: float = Field(15.0, ge=0.5, le=120.0)
    probe_min_interval_s: float = Field(0.0, ge=0.0, le=3600.0)


def _whole_shillings(money: Money) -> int:
    if money.currency != "KES":
        raise ProviderError(
            PROVIDER, ErrorClass.INVALID_REQUEST, f"IntaSend M-Pesa moves KES, not {money.currency}"
        )
    shillings, cents = divmod(money.amount_minor, 100)
    if cents:
        raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "M-Pesa takes whole shillings")
    return shillings


def _money(value: Any, currency: Any) -> Money | None:
    """A major-unit amount (`"150.00"`) and its currency as Money; None unless both are carried."""
    if value is None or isinstance(value, bool) or not isinstance(currency, str) or len(currency) != 3:
        return None
    currency = currency.upper()
    factor = 1 if currency in ZERO_DECIMAL_CURRENCIES else 100
    try:
        minor = Decimal(str(value).strip()) * factor
    except (InvalidOperation, ValueError):
        return None
    if not minor.is_finite() or minor <= 0 or minor != minor.to_integral_value():
        return None
    try:
        return Money(amount_minor=int(minor), currency=currency)
    except ValueError:
        return None


def _claimed_money(value: Any, currency: Any, what: str) -> Money | None:
    """Like `_money`, but a carried amount that is not one is a malformed webhook."""
    if value is None or currency is None:
        return None
    money = _money(value, currency)
    if money is None:
        raise MalformedCallback(f"IntaSend webhook: {what} is not an amount in {currency!r}")
    return money


def _payer(*candidates: Any) -> str | None:
    """The first candidate that is a phone number, as E.164 (IntaSend's `account` may be an email)."""
    for candidate in candidates:
        if candidate is None or isinstance(candidate, bool):
            continue
        text = str(candidate).strip()
        if ACCOUNT_PHONE_RE.match(text):
            try:
                return normalize_msisdn(text, "254")
            except ValueError:
                continue
    return None


def _is_tracking_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool | dict | list):
        return None
    rendered = str(value).strip()
    return rendered or None


def _details(body: Mapping[str, Any]) -> tuple[str | None, str]:
    """(code, message) from `{detail}`, `{details}` or `{type, errors: [{code, detail}]}`."""
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        first = errors[0]
        attr = first.get("attr")
        detail = str(first.get("detail") or "")
        return (
            str(first.get("code")) if first.get("code") else None,
            f"{attr}: {detail}" if attr else detail,
        )
    plain = body.get("detail") or body.get("details") or body.get("message")
    return None, str(plain or "")


def _invoice_status(state: str) -> TransactionStatus:
    if state in INVOICE_DONE:
        return TransactionStatus.SUCCEEDED
    if state in INVOICE_PENDING:
        return TransactionStatus.PENDING
    if state == "FAILED":
        return TransactionStatus.FAILED
    return TransactionStatus.UNKNOWN


def _batch_status(batch: Mapping[str, Any]) -> tuple[TransactionStatus, Mapping[str, Any], str, str]:
    """(status, first item, batch code, item code) of a one-item send-money batch."""
    batch_code = str(batch.get("status_code") or "")
    items = batch.get("transactions")
    item = items[0] if isinstance(items, list) and items and isinstance(items[0], Mapping) else {}
    item_code = str(item.get("status_code") or "")
    item_text = str(item.get("status") or "").strip().lower()
    batch_text = str(batch.get("status") or "").strip().lower()
    if batch_code in BATCH_FAILED or item_code in ITEM_FAILED or batch_text in BATCH_FAILED_TEXT:
        status = TransactionStatus.FAILED
    elif item_code == ITEM_SUCCEEDED:
        status = TransactionStatus.SUCCEEDED
    elif item_code == ITEM_UNDETERMINED:
        status = TransactionStatus.UNKNOWN  # "cannot be determined": never a retry, ask again
    elif not item_code and item_text in ITEM_SUCCEEDED_TEXT:
        status = TransactionStatus.SUCCEEDED  # webhooks may name the item's state in words only
    elif not item_code and item_text in ITEM_FAILED_TEXT:
        status = TransactionStatus.FAILED
    else:
        status = TransactionStatus.PENDING
    return status, item, batch_code, item_code


def _chargeback_status(raw_status: str) -> TransactionStatus:
    if raw_status in CHARGEBACK_DONE:
        return TransactionStatus.SUCCEEDED
    if raw_status in CHARGEBACK_FAILED:
        return TransactionStatus.FAILED
    if raw_status in CHARGEBACK_PENDING:
        return TransactionStatus.PENDING
    return TransactionStatus.UNKNOWN


class IntaSendAdapter(AdapterBase[IntaSendSettings]):
    """Speaks IntaSend's REST API for M-Pesa (KES): STK push, send money, chargebacks."""

    name = PROVIDER
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT, Operation.PAYOUT, Operation.REFUND}),
        currencies=frozenset({"KES"}),
        countries=frozenset({"KE"}),
        refunds=True,
    )
    error_rules = ERROR_RULES
    """Every IntaSend answer this adapter classifies, with its class and source (README table)."""
    customer_codes = CUSTOMER_CODES
    """A failed invoice's `failed_code` (M-Pesa's ResultCode) that is the customer's."""
    money_truth = MoneyTruth(
        not_found_grace_s=120.0,
        not_found_is_final_after_grace=False,
        pending_bound_s=1800.0,
        pull_carries=frozenset(
            {"status", "amount", "currency", "payer", "provider_reference", "receipt", "reason"}
        ),
        callback_carries=frozenset(
            {"status", "amount", "currency", "payer", "provider_reference", "receipt", "reason"}
        ),
        callback_auth="shared_secret",
        pull_path=(
            "collection: POST payment/status/ by invoice_id (none without one: IntaSend cannot be "
            "asked by api_ref); payout: POST send-money/status/ by tracking_id (its items name an "
            "amount but no currency); refund: GET chargebacks/<id>/"
        ),
        sources=(
            "IntaSend docs: payment collection (M-Pesa STK push), payment status, send money, "
            "send money status, chargebacks; webhooks (collection, send money, chargeback events)",
            "IntaSend/intasend-python and intasend-node SDKs; MikeTeddyOmondi/intasend-rs models",
            "grace: IntaSend documents no lookup lag; 120 s is a conservative choice",
            "not found stays ambiguous: IntaSend documents no 'never processed' meaning for it",
            "pending bound: the M-Pesa prompt behind an invoice expires in about a minute, IntaSend "
            "retries webhooks after 5 and 20 minutes, send-money batches queue; 1800 s is a "
            "conservative choice",
        ),
    )

    def __init__(
        self,
        settings: IntaSendSettings,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        settings_loader: Callable[[], IntaSendSettings] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            settings, clock, timeout_s=timeout_s, settings_loader=settings_loader, transport=transport
        )
        # A local guard, not the truth: sent from this process with an unknown outcome and no
        # invoice id, so pushing again could charge twice (IntaSend does not deduplicate).
        self._unresolved = RecentMap()
        self._batches = RecentMap()  # reference -> the send-money batch (approval needs its nonce)
        self._chargebacks = RecentMap()  # reference -> list of (chargeback id, Money)

    # --- identity ------------------------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """`IS-` + 29 hex characters of the key's SHA-256: the `api_ref` and batch reference."""
        return "IS-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:29]

    # --- plumbing ------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._settings.secret_key.get_secret_value()}",
            "INTASEND_PUBLIC_API_KEY": self._settings.public_key,
        }

    async def _call(
        self, method: str, path: str, *, mutating: bool, what: str, payload: dict[str, Any] | None = None
    ) -> tuple[httpx.Response, dict[str, Any]]:
        return await self._request(method, f"{API}{path}", mutating=mutating, what=what, payload=payload)

    def _error(
        self, response: httpx.Response, body: dict[str, Any], *, mutating: bool, what: str
    ) -> ProviderError:
        """Classify by HTTP status through `ERROR_RULES` (other statuses: http.py's table)."""
        code, message = _details(body)
        rule = _RULE_BY_MATCH.get(f"HTTP {response.status_code}")
        error_class = rule.error_class if rule is not None else None
        if error_class is ErrorClass.AMBIGUOUS and not mutating:
            error_class = ErrorClass.NOT_PROCESSED  # a read moves no money
        return self._provider_error(
            response,
            error_class,
            f"{what}: {short(message or f'HTTP {response.status_code}')}",
            code=code,
            mutating=mutating,
        )

    def _not_found(self, response: httpx.Response, body: dict[str, Any]) -> bool:
        return response.status_code == 404 or (
            response.status_code == 400 and "not found" in _details(body)[1].lower()
        )

    @staticmethod
    def _msisdn(phone: str) -> str:
        if not KENYAN_MSISDN_RE.match(phone):
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "IntaSend M-Pesa needs a Kenyan number")
        return phone[1:]

    def _check(self, request: PaymentRequest) -> tuple[int, str]:
        if request.country != "KE":
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, f"IntaSend M-Pesa serves KE, not {request.country}"
            )
        return _whole_shillings(request.money), self._msisdn(request.phone)

    # --- probe ---------------------------------------------------------------------------

    async def _probe_once(self) -> str:
        """`GET /api/v1/wallets/`: authenticated, read-only."""
        response, body = await self._call("GET", "/wallets/", mutating=False, what="wallets")
        if response.status_code != 200:
            raise self._error(response, body, mutating=False, what="wallets")
        # Answered as a bare list or a page `{count, results}`; json_object() keeps only objects.
        results = body.get("results")
        count = body.get("count", len(results) if isinstance(results, list) else 0)
        return f"{count} wallet(s)"

    # --- collect -------------------------------------------------------------------------

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        """M-Pesa STK push through IntaSend; pending until the customer enters their PIN.

        A repeat of a known reference is answered with the existing invoice; a repeat whose
        first attempt has an unknown outcome is refused as ambiguous (pushing again could
        charge twice - IntaSend does not deduplicate).
        """
        shillings, msisdn = self._check(request)
        reference = self.reference_for(request.idempotency_key)
        if self._identifier(reference, "invoice_id"):
            return await self.status(reference)
        if reference in self._unresolved:
            raise ProviderError(
                PROVIDER,
                _UNRESOLVED.error_class,
                "collect: an earlier push under this reference has an unknown outcome; not pushing again",
                code=UNRESOLVED_CODE,
            )
        payload: dict[str, Any] = {
            "public_key": self._settings.public_key,
            "currency": "KES",
            "method": "M-PESA",
            "amount": shillings,
            "phone_number": msisdn,
            "api_ref": reference,
            "narrative": request.description,
        }
        if request.metadata.get("email"):
            payload["email"] = request.metadata["email"]
        if self._settings.wallet_id:
            payload["wallet_id"] = self._settings.wallet_id
        try:
            response, body = await self._call(
                "POST", "/payment/mpesa-stk-push/", mutating=True, what="stk push", payload=payload
            )
        except ProviderError as exc:
            if exc.error_class is ErrorClass.AMBIGUOUS:
                self._unresolved.remember(reference, True)
            raise
        invoice = body.get("invoice")
        if response.status_code >= 400 or not isinstance(invoice, Mapping):
            error = self._error(response, body, mutating=True, what="stk push")
            if error.error_class is ErrorClass.AMBIGUOUS:
                self._unresolved.remember(reference, True)
            raise error
        self._learn(reference, "push_id", _text(body.get("id")))
        invoice_id = _text(invoice.get("invoice_id") or invoice.get("id"))
        if not invoice_id:
            self._unresolved.remember(reference, True)
            raise ProviderError(PROVIDER, ErrorClass.AMBIGUOUS, "stk push: accepted without an invoice id")
        self._learn(reference, "invoice_id", invoice_id)
        self._unresolved.pop(reference, None)
        return self._invoice_transaction(reference, dict(invoice), None)

    def _invoice_transaction(
        self, reference: str, invoice: dict[str, Any], meta: Mapping[str, Any] | None
    ) -> ProviderTransaction:
        state = str(invoice.get("state") or "").upper()
        failed_code = invoice.get("failed_code")
        raw = dict(invoice)
        customer = meta.get("customer") if isinstance(meta, Mapping) else None
        payer = _payer(
            invoice.get("account"), customer.get("phone_number") if isinstance(customer, Mapping) else None
        )
        if payer:
            raw["payer"] = payer
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=_text(invoice.get("invoice_id")) or self._identifier(reference, "invoice_id"),
            status=_invoice_status(state),
            money=_money(invoice.get("value"), invoice.get("currency")),
            provider_code=str(failed_code) if failed_code else state or None,
            provider_message=short(invoice.get("failed_reason") or state),
            raw_status=state or None,
            raw=raw,
        )

    # --- status --------------------------------------------------------------------------

    def _operation_of(
        self, reference: str, provider_reference: str | None, context: PaymentContext | None
    ) -> Operation:
        if context is not None:
            return context.operation
        if self._identifier(reference, "tracking_id") or (
            provider_reference is not None and _is_tracking_id(provider_reference)
        ):
            # Batches are tracked by UUID, invoices by short codes: a fresh process can tell them apart.
            return Operation.PAYOUT
        return Operation.COLLECT

    async def status(
        self, reference: str, provider_reference: str | None = None, *, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        """Where a payment stands, asked of IntaSend every time (never from a webhook).

        A collection is pulled by its invoice id, a payout by its tracking id, a refund by its
        chargeback id. Raises `ProviderError(code="not_found")` when IntaSend does not know the
        id. A collection with no invoice id known (the push's answer was lost) is `unknown`:
        IntaSend cannot be asked by `api_ref`; only its webhook can tell.
        """
        operation = self._operation_of(reference, provider_reference, context)
        stored = context.provider_reference if context is not None else None
        if operation is Operation.PAYOUT:
            tracking_id = self._identifier(reference, "tracking_id", context) or next(
                (ref for ref in (provider_reference, stored) if ref and _is_tracking_id(ref)), None
            )
            if not tracking_id:
                return self._unknown(reference, "no tracking id known: IntaSend finds a batch only by it")
            return await self._payout_status(reference, tracking_id)
        if operation is Operation.REFUND:
            chargeback_id = (
                self._identifier(reference, "chargeback_id", context) or provider_reference or stored
            )
            if not chargeback_id:
                return self._unknown(reference, "no chargeback id known: IntaSend finds a refund only by it")
            return await self.refund_status(chargeback_id, reference)
        invoice_id = self._identifier(reference, "invoice_id", context) or next(
            (ref for ref in (provider_reference, stored) if ref and not _is_tracking_id(ref)), None
        )
        if not invoice_id:
            unknown = self._unknown(
                reference,
                "no invoice id known: IntaSend cannot be asked about a push by api_ref; "
                "only its webhook (which carries api_ref) can tell",
            )
            raw_status = "awaiting_webhook" if reference in self._unresolved else "no_invoice_id"
            return unknown.model_copy(update={"raw_status": raw_status})
        response, body = await self._call(
            "POST",
            "/payment/status/",
            mutating=False,
            what="payment status",
            payload={"invoice_id": invoice_id, "public_key": self._settings.public_key},
        )
        invoice = body.get("invoice")
        if self._not_found(response, body):
            raise ProviderError(
                PROVIDER,
                _STATUS_NOT_FOUND.error_class,
                f"payment status: no invoice {invoice_id}",
                code=NOT_FOUND_CODE,
                http_status=response.status_code,
            )
        if response.status_code != 200 or not isinstance(invoice, Mapping):
            raise self._error(response, body, mutating=False, what="payment status")
        meta = body.get("meta")
        txn = self._invoice_transaction(reference, dict(invoice), meta if isinstance(meta, Mapping) else None)
        if txn.status is TransactionStatus.SUCCEEDED and self._chargebacks.get(reference):
            return await self._with_chargebacks(txn)
        return txn

    @staticmethod
    def _unknown(reference: str, why: str) -> ProviderTransaction:
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            status=TransactionStatus.UNKNOWN,
            provider_message=why,
            raw_status="no_pull_path",
        )

    # --- payout --------------------------------------------------------------------------

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        """M-Pesa B2C via send money: initiate a one-item batch, then approve it.

        Initiating moves no money (a batch waits for approval), so only the approval is a
        mutating call; the tracking id is reported the moment initiate answers, before the
        approval that may fail. A repeat of a known reference re-approves the same batch if it
        still waits for approval (one batch is paid at most once), else reports its status.
        """
        shillings, msisdn = self._check(request)
        reference = self.reference_for(request.idempotency_key)
        batch = self._batches.get(reference)
        if batch is None:
            payload: dict[str, Any] = {
                "provider": self._settings.payout_provider,
                "currency": "KES",
                "batch_reference": reference,
                "requires_approval": "YES",
                "transactions": [
                    {
                        "name": request.metadata.get("recipient_name", msisdn),
                        "account": msisdn,
                        "amount": shillings,
                        "narrative": (request.description or "payout")[:22],
                    }
                ],
            }
            if self._settings.wallet_id:
                payload["wallet_id"] = self._settings.wallet_id
            response, body = await self._call(
                "POST", "/send-money/initiate/", mutating=False, what="send money initiate", payload=payload
            )
            tracking_id = _text(body.get("tracking_id"))
            if response.status_code >= 400 or not tracking_id:
                raise self._error(response, body, mutating=False, what="send money initiate")
            self._learn(reference, "tracking_id", tracking_id)
            batch = body
            self._batches.remember(reference, batch)
        elif str(batch.get("status_code") or "") != BATCH_AWAITING_APPROVAL:
            return await self._payout_status(reference, str(batch.get("tracking_id")))
        response, body = await self._call(
            "POST", "/send-money/approve/", mutating=True, what="send money approve", payload=dict(batch)
        )
        if response.status_code >= 400:
            if "already" in _details(body)[1].lower():  # approved by an earlier attempt
                return await self._payout_status(reference, str(batch.get("tracking_id")))
            raise self._error(response, body, mutating=True, what="send money approve")
        approved = {**batch, **body}
        self._batches.remember(reference, approved)
        return self._batch_transaction(reference, approved)

    async def _payout_status(self, reference: str, tracking_id: str) -> ProviderTransaction:
        response, body = await self._call(
            "POST",
            "/send-money/status/",
            mutating=False,
            what="send money status",
            payload={"tracking_id": tracking_id},
        )
        if self._not_found(response, body):
            raise ProviderError(
                PROVIDER,
                _STATUS_NOT_FOUND.error_class,
                f"send money status: no batch {tracking_id}",
                code=NOT_FOUND_CODE,
                http_status=response.status_code,
            )
        if response.status_code != 200 or not body.get("tracking_id"):
            raise self._error(response, body, mutating=False, what="send money status")
        known = self._batches.get(reference)
        if known is not None:
            self._batches.remember(reference, {**known, **body})
        return self._batch_transaction(reference, body)

    def _batch_transaction(self, reference: str, batch: Mapping[str, Any]) -> ProviderTransaction:
        status, item, batch_code, item_code = _batch_status(batch)
        raw = dict(batch)
        payer = _payer(item.get("account"), item.get("phone_number"))
        if payer:
            raw["payer"] = payer
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=_text(batch.get("tracking_id")),
            status=status,
            # Batch items carry an amount, and a currency only if the answer names one.
            money=_money(item.get("amount"), item.get("currency") or batch.get("currency")),
            provider_code=item_code or batch_code or None,
            provider_message=short(
                item.get("failed_reason") or item.get("status") or batch.get("status") or ""
            ),
            raw_status=f"{batch_code}/{item_code}" if item_code else batch_code or None,
            raw=raw,
        )

    # --- refund --------------------------------------------------------------------------

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Refund (IntaSend chargeback) of a completed collection, fully or partly.

        The answer describes the chargeback (pending until IntaSend processes it); a repeat of
        the same refund from this process is answered with the existing chargeback.
        """
        if transaction.status is not TransactionStatus.SUCCEEDED:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only a completed collection")
        invoice_id = self._identifier(transaction.reference, "invoice_id") or transaction.provider_reference
        if not invoice_id or _is_tracking_id(invoice_id):
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only collections with an invoice"
            )
        original = transaction.money
        amount = money or original
        if amount is None:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: the amount is unknown")
        if original is not None and amount.amount_minor > original.amount_minor:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: more than the payment")
        shillings = _whole_shillings(amount)
        known: list[tuple[str, Money]] = list(self._chargebacks.get(transaction.reference, []))
        for chargeback_id, refunded in known:
            if refunded == amount:  # already asked for: report that chargeback
                return await self.refund_status(chargeback_id, transaction.reference)
        response, body = await self._call(
            "POST",
            "/chargebacks/",
            mutating=True,
            what="chargeback",
            payload={
                "invoice": invoice_id,
                "amount": str(shillings),
                "reason": "Other",
                "reason_details": "refund",
            },
        )
        new_id = _text(body.get("chargeback_id") or body.get("id"))
        if response.status_code >= 400 or not new_id:
            raise self._error(response, body, mutating=True, what="chargeback")
        self._learn(transaction.reference, "chargeback_id", new_id)
        known.append((new_id, amount))
        self._chargebacks.remember(transaction.reference, known)
        return self._chargeback_transaction(transaction.reference, body, amount)

    async def refund_status(self, chargeback_id: str, reference: str | None = None) -> ProviderTransaction:
        """Where one chargeback stands (`GET /api/v1/chargebacks/{id}/`)."""
        response, body = await self._call(
            "GET", f"/chargebacks/{chargeback_id}/", mutating=False, what="chargeback"
        )
        if response.status_code == 404:
            raise ProviderError(
                PROVIDER,
                _STATUS_NOT_FOUND.error_class,
                f"chargeback: no chargeback {chargeback_id}",
                code=NOT_FOUND_CODE,
                http_status=404,
            )
        if response.status_code != 200:
            raise self._error(response, body, mutating=False, what="chargeback")
        return self._chargeback_transaction(reference or chargeback_id, body, None)

    @staticmethod
    def _chargeback_transaction(
        reference: str, body: Mapping[str, Any], amount: Money | None
    ) -> ProviderTransaction:
        raw_status = str(body.get("status") or "").upper()
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=_text(body.get("chargeback_id") or body.get("id")),
            status=_chargeback_status(raw_status),
            money=amount or _money(body.get("amount"), "KES"),
            provider_code=raw_status or None,
            provider_message=short(body.get("resolution") or raw_status),
            raw_status=raw_status or None,
            raw=dict(body),
        )

    async def _with_chargebacks(self, txn: ProviderTransaction) -> ProviderTransaction:
        refunded_minor = 0
        for chargeback_id, _ in self._chargebacks.get(txn.reference, []):
            chargeback = await self.refund_status(chargeback_id, txn.reference)
            if chargeback.status is TransactionStatus.SUCCEEDED and chargeback.money is not None:
                refunded_minor += chargeback.money.amount_minor
        if txn.money is not None and refunded_minor >= txn.money.amount_minor:
            return txn.model_copy(
                update={"status": TransactionStatus.REVERSED, "raw_status": "COMPLETE (refunded)"}
            )
        return txn

    # --- webhooks ------------------------------------------------------------------------

    def parse_callback(
        self, body: bytes, headers: Mapping[str, str], *, path_kind: str, path_reference: str | None
    ) -> CallbackHint | None:
        """What one IntaSend webhook claims: a collection (invoice), send-money or chargeback event.

        With `INTASEND_WEBHOOK_CHALLENGE` set, the body's `challenge` must equal it
        (`authenticated=True`); without it nothing is verified (`authenticated=False`). An event
        carrying none of an invoice, a batch or a chargeback says nothing about a payment: None.

        Raises:
            CallbackAuthError: the `challenge` field is missing or wrong.
            MalformedCallback: not JSON, not an object, or an event missing its fields.
        """
        try:
            event = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedCallback("IntaSend webhook: the body is not JSON") from exc
        if not isinstance(event, dict):
            raise MalformedCallback("IntaSend webhook: the body is not a JSON object")
        authenticated = self._verify_challenge(event)
        reference = None if path_reference in (None, "", "-") else path_reference
        if "chargeback_id" in event:
            return self._chargeback_hint(event, reference, authenticated)
        if "tracking_id" in event:
            return self._send_money_hint(event, reference, authenticated)
        if "invoice_id" in event or "state" in event:
            return self._collection_hint(event, reference, authenticated)
        if "challenge" in event:
            return None  # an IntaSend event about something else (e.g. the dashboard's test ping)
        raise MalformedCallback("IntaSend webhook: expected an invoice, a send-money batch or a chargeback")

    def _verify_challenge(self, event: Mapping[str, Any]) -> bool:
        expected = self._settings.webhook_challenge
        if expected is None:
            return False
        given = event.get("challenge")
        if not isinstance(given, str) or not hmac.compare_digest(
            given.encode(), expected.get_secret_value().encode()
        ):
            raise CallbackAuthError("IntaSend webhook: the `challenge` field is missing or does not match")
        return True

    @staticmethod
    def _collection_hint(
        event: Mapping[str, Any], reference: str | None, authenticated: bool
    ) -> CallbackHint:
        invoice_id, state = _text(event.get("invoice_id")), _text(event.get("state"))
        if invoice_id is None:
            raise MalformedCallback("IntaSend collection event: invoice_id is missing")
        if state is None:
            raise MalformedCallback("IntaSend collection event: state is missing")
        state = state.upper()
        extras = {"channel": "webhook", "event": "collection", "state": state}
        receipt = _text(event.get("mpesa_reference"))
        if receipt:
            extras["receipt"] = receipt
        failed_code = _text(event.get("failed_code"))
        return CallbackHint(
            provider=PROVIDER,
            reference=_text(event.get("api_ref")) or reference,
            provider_reference=invoice_id,
            operation=Operation.COLLECT,
            status=_invoice_status(state),
            money=_claimed_money(event.get("value"), event.get("currency"), "value"),
            payer=_payer(event.get("account")),
            provider_code=failed_code or state,
            provider_message=short(event.get("failed_reason") or state),
            extras=extras,
            authenticated=authenticated,
        )

    @staticmethod
    def _send_money_hint(
        event: Mapping[str, Any], reference: str | None, authenticated: bool
    ) -> CallbackHint:
        tracking_id = _text(event.get("tracking_id"))
        if tracking_id is None:
            raise MalformedCallback("IntaSend send-money event: tracking_id is missing")
        if _text(event.get("status")) is None:
            raise MalformedCallback("IntaSend send-money event: status is missing")
        status, item, batch_code, item_code = _batch_status(event)
        extras = {"channel": "webhook", "event": "send_money", "batch_status": short(event.get("status"))}
        if batch_code:
            extras["batch_code"] = batch_code
        receipt = _text(item.get("mno_reference"))
        if receipt:
            extras["receipt"] = receipt
        return CallbackHint(
            provider=PROVIDER,
            reference=_text(event.get("batch_reference")) or reference,
            provider_reference=tracking_id,
            operation=Operation.PAYOUT,
            status=status,
            money=_claimed_money(item.get("amount"), item.get("currency") or event.get("currency"), "amount"),
            payer=_payer(item.get("account"), item.get("phone_number")),
            provider_code=item_code or batch_code or _text(item.get("status")),
            provider_message=short(item.get("failed_reason") or item.get("status") or event.get("status")),
            extras=extras,
            authenticated=authenticated,
        )

    @staticmethod
    def _chargeback_hint(
        event: Mapping[str, Any], reference: str | None, authenticated: bool
    ) -> CallbackHint:
        chargeback_id = _text(event.get("chargeback_id"))
        raw_status = _text(event.get("status"))
        if chargeback_id is None:
            raise MalformedCallback("IntaSend chargeback event: chargeback_id is missing")
        if raw_status is None:
            raise MalformedCallback("IntaSend chargeback event: status is missing")
        invoice = event.get("invoice")
        invoice = invoice if isinstance(invoice, Mapping) else {}
        extras = {"channel": "webhook", "event": "chargeback", "state": raw_status.upper()}
        invoice_id = _text(invoice.get("invoice_id"))
        if invoice_id:
            extras["invoice_id"] = invoice_id
        return CallbackHint(
            provider=PROVIDER,
            reference=_text(invoice.get("api_ref")) or reference,
            provider_reference=chargeback_id,
            operation=Operation.REFUND,
            status=_chargeback_status(raw_status.upper()),
            money=_claimed_money(event.get("amount"), invoice.get("currency"), "amount"),
            provider_code=raw_status.upper(),
            provider_message=short(event.get("resolution") or raw_status),
            extras=extras,
            authenticated=authenticated,
        )
