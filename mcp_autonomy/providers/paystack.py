"""Paystack adapter: mobile-money charges, verification, transfers, refunds, webhooks.

Built on Paystack's OpenAPI description and error list (`shared/specs/paystack/`) and its
documentation snippets (PaystackOSS/doc-code-snippets):

- Every call carries `Authorization: Bearer sk_...`; every answer is the envelope
  `{status, message, data}`; errors are `{status: false, message, meta.nextStep, type, code}`
  (`type` validation_error / processor_error / api_error); a bad key is HTTP 401 "Invalid key".
- Collect: `POST /charge` with `email`, `amount` (subunits), `currency`, our `reference` and
  `mobile_money: {phone, provider}` answers "Charge attempted" with `data.status` `pay_offline`
  (approve on the phone) or `send_otp` (`POST /charge/submit_otp`), later `success` / `failed`.
  A pending charge's body is only `{reference, status, display_text}`: no transaction id yet.
  Mobile money is offered for GHS (providers mtn, atl, vod) and KES (mpesa).
- The caller's reference is the idempotency key on Paystack's side: reusing it is refused with
  `code: duplicate_reference` ("Duplicate Transaction Reference"). This adapter derives the
  reference from the idempotency key, so a retry either creates the charge once or meets the
  duplicate, which it answers by verifying the existing transaction: a replay returns the first.
- Status (a pull, every time; the operation in the engine's `PaymentContext` picks the endpoint):
  charges `GET /transaction/verify/{reference}` (`data.status` success, failed, abandoned,
  ongoing, pending, processing, queued, reversed; amount in subunits, currency, customer phone,
  `gateway_response`, `id`); transfers `GET /transfer/verify/{reference}` (pending, otp,
  received, queued, success, failed, reversed, abandoned, blocked, rejected; the recipient's
  account number); refunds `GET /refund/{id}` (pending, processing, needs-attention, processed,
  failed). Unknown references answer "Transaction reference not found" / "Transfer not found"
  (400 or 404): `ProviderError(code="not_found")`, which the engine weighs with `money_truth`.
  `abandoned` is not final while the customer may still complete: it reads as pending until
  `ABANDONED_FINAL_AFTER_S` after the transaction was created, then as failed.
- Reconciliation: `GET /transaction?from=&to=&perPage=&page=` (pagination in `meta.pageCount`).
- Payout: `POST /transferrecipient` (type `mobile_money`, an existing account returns the same
  recipient) then `POST /transfer` (`source: balance`, a unique lowercase `reference`, >= 16
  characters; a reused reference is refused). A transfer may stop at `otp` (the OTP goes to the
  merchant; `POST /transfer/finalize_transfer`).
- Refund: `POST /refund` with the transaction reference, "Refund has been queued for processing".
- Webhooks (dashboard URL): `charge.success`, `transfer.success` / `transfer.failed` /
  `transfer.reversed`, `refund.pending` / `refund.processing` / `refund.processed` /
  `refund.failed` / `refund.needs-attention`; header `x-paystack-signature` = hex HMAC-SHA512 of
  the raw body keyed by the secret key. A refund event's `amount` may be a string.
- Probe: `GET /balance` (read-only, cheap).

Identifier kinds reported to the engine (`identifier_sink`): `transaction_id` (the charge's
numeric id), `recipient_code` (learnt by the first payout call, before the transfer),
`transfer_code` and `transfer_id`, `refund_id`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_autonomy.clock import Clock, iso
from mcp_autonomy.providers.adapter import AdapterBase, RecentMap
from mcp_autonomy.providers.base import (
    DIAL_CODES,
    NOT_FOUND_CODE,
    CallbackAuthError,
    CallbackHint,
    ErrorClass,
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
from mcp_autonomy.providers.http import build_client, json_object, send, short

PROVIDER = "paystack"

MOBILE_MONEY_PROVIDERS: dict[str, frozenset[str]] = {
    "GHS": frozenset({"mtn", "atl", "vod"}),
    "KES": frozenset({"mpesa"}),
}
"""Paystack `mobile_money.provider` values per currency."""
DEFAULT_MOBILE_MONEY_PROVIDER = {"GHS": "mtn", "KES": "mpesa"}
TRANSFER_BANK_CODES = {
    ("GHS", "mtn"): "MTN",
    ("GHS", "atl"): "ATL",
    ("GHS", "vod"): "VOD",
    ("KES", "mpesa"): "MPESA",
}
"""Transfer-recipient `bank_code` of each mobile-money wallet (see `GET /bank?type=mobile_money`)."""
COUNTRY_OF_CURRENCY = {"GHS": "GH", "KES": "KE"}
PHONE_COUNTRY_OF_CURRENCY = {**COUNTRY_OF_CURRENCY, "NGN": "NG", "ZAR": "ZA"}
"""Where a national phone number in a pull or webhook comes from, by the payment's currency."""
NATIONAL_FORMAT_COUNTRIES = frozenset({"GH"})
"""Ghanaian numbers go in national form (0551234987), as in Paystack's examples; others as E.164."""

CHARGE_PENDING = frozenset(
    {"pay_offline", "send_otp", "pending", "ongoing", "processing", "queued", "send_pin", "abandoned"}
)
CHARGE_FAILED = frozenset({"failed"})
TRANSFER_PENDING = frozenset({"pending", "otp", "received", "queued", "processing", "abandoned"})
TRANSFER_FAILED = frozenset({"failed", "blocked", "rejected"})
REFUND_PENDING = frozenset({"pending", "processing", "needs-attention"})
ABANDONED_FINAL_AFTER_S = 3600.0
"""`abandoned` means the customer has not completed yet, and they still may: it reads as pending
for this long after the transaction was created (Paystack documents no bound; chosen generously
against a failover that would charge the customer twice), then as failed."""
DUPLICATE_CODE = "duplicate_reference"
NOT_FOUND_MESSAGES = (
    "transaction reference not found",
    "transaction not found",
    "transfer not found",
    "refund not found",
)
SIGNATURE_HEADER = "x-paystack-signature"
LIST_PAGE_SIZE = 100
MAX_LIST_PAGES = 1_000
"""A reconciliation window never walks more pages than this (100 000 transactions)."""


class PaystackSettings(BaseSettings):
    """Paystack credentials and endpoint, from `PAYSTACK_*` environment variables.

    Webhooks need no setting of their own: Paystack signs them with the secret key.
    """

    model_config = SettingsConfigDict(
        env_prefix="PAYSTACK_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    secret_key: SecretStr
    base_url: str = "https://api.paystack.co"
    customer_email_domain: str | None = Field(
        None, description="Charges need an email: <msisdn>@<domain> when the payment carries none"
    )
    timeout_s: float = Field(10.0, ge=0.5, le=120.0)
    probe_min_interval_s: float = Field(0.0, ge=0.0, le=3600.0)

    @field_validator("secret_key")
    @classmethod
    def _is_secret_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("sk_"):
            raise ValueError("PAYSTACK_SECRET_KEY must be a secret key (sk_test_... or sk_live_...)")
        return value


def _data(body: Mapping[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    return dict(data) if isinstance(data, Mapping) else {}


def _status_of(raw: str, pending: frozenset[str], failed: frozenset[str]) -> TransactionStatus:
    if raw == "success":
        return TransactionStatus.SUCCEEDED
    if raw == "reversed":
        return TransactionStatus.REVERSED
    if raw in pending:
        return TransactionStatus.PENDING
    if raw in failed:
        return TransactionStatus.FAILED
    return TransactionStatus.UNKNOWN


def _refund_status(raw: str) -> TransactionStatus:
    if raw == "processed":
        return TransactionStatus.SUCCEEDED
    if raw == "failed":
        return TransactionStatus.FAILED
    return TransactionStatus.PENDING if raw in REFUND_PENDING else TransactionStatus.UNKNOWN


def _epoch_of(value: Any) -> float | None:
    """An ISO 8601 timestamp (`2026-01-01T00:00:00.000Z`) as epoch seconds, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _minor_amount(value: Any) -> int | None:
    """An amount in subunits: an integer, or a string of digits (refund events send strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def money_of(amount: Any, currency: Any) -> Money | None:
    """Paystack's amount (subunits) and currency as `Money`, or None when either is missing/bad."""
    minor = _minor_amount(amount)
    if minor is None or minor <= 0 or not isinstance(currency, str) or len(currency) != 3:
        return None
    try:
        return Money(amount_minor=minor, currency=currency.upper())
    except ValueError:
        return None


def payer_of(phone: Any, currency: Any) -> str | None:
    """A phone number as Paystack reports it (E.164, international digits or national) in E.164."""
    if not isinstance(phone, str) or not phone.strip():
        return None
    country = PHONE_COUNTRY_OF_CURRENCY.get(currency) if isinstance(currency, str) else None
    try:
        return normalize_msisdn(phone, DIAL_CODES.get(country) if country else None)
    except ValueError:
        return None


def _customer_phone(data: Mapping[str, Any]) -> Any:
    customer = data.get("customer")
    if not isinstance(customer, Mapping):
        return None
    return customer.get("international_format_phone") or customer.get("phone")


def _recipient_account(data: Mapping[str, Any]) -> Any:
    recipient = data.get("recipient")
    details = recipient.get("details") if isinstance(recipient, Mapping) else None
    return details.get("account_number") if isinstance(details, Mapping) else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name, from any mapping (a plain dict is case-sensitive)."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


class PaystackAdapter(AdapterBase[PaystackSettings]):
    """Speaks Paystack's REST API for mobile money (GHS, KES) and reads its signed webhooks."""

    name = PROVIDER
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT, Operation.PAYOUT, Operation.REFUND}),
        currencies=frozenset(MOBILE_MONEY_PROVIDERS),
        countries=frozenset(COUNTRY_OF_CURRENCY.values()),
        refunds=True,
    )
    money_truth = MoneyTruth(
        not_found_grace_s=300.0,
        not_found_is_final_after_grace=True,
        pending_bound_s=86_400.0,
        pull_carries=frozenset({"status", "amount", "currency", "payer", "provider_reference", "reason"}),
        callback_carries=frozenset({"status", "amount", "currency", "payer", "provider_reference", "reason"}),
        callback_auth="hmac_sha512",
        pull_path=(
            "Every charge and transfer is pulled by our own reference (known before the first call): "
            "GET /transaction/verify/{reference}, GET /transfer/verify/{reference}; a refund by its "
            "id (GET /refund/{id}) once learnt, else it has no pull path."
        ),
        sources=(
            "Paystack OpenAPI (PaystackOSS/openapi, shared/specs/paystack): /transaction/verify, "
            "/transfer/verify, /refund/{id}, /transaction (list), /charge/{reference}",
            "Paystack API errors (api-errors.json): 'Transaction reference not found' = no transaction "
            "with this reference on the integration; 'Transfer not found' likewise",
            "Paystack docs, Webhooks: x-paystack-signature = HMAC SHA512 of the payload with the "
            "secret key; events charge.success, transfer.success/failed/reversed, refund.*",
            "PaystackOSS/doc-code-snippets doc/payments/refunds/events.js (refund event bodies)",
            "Paystack docs, Transfers: statuses pending, otp, success, failed, reversed; "
            "finalize_transfer with the OTP",
            "not_found_grace_s: Paystack documents no lookup lag; 300 s chosen conservatively (the "
            "reference is registered by the synchronous /charge or /transfer call)",
            "pending_bound_s: Paystack documents no bound on ongoing/otp/abandoned; 24 h chosen "
            "conservatively (abandoned reads as pending for 1 h, transfers may wait at otp)",
        ),
    )

    def __init__(
        self,
        settings: PaystackSettings,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        settings_loader: Callable[[], PaystackSettings] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            settings, clock, timeout_s=timeout_s, settings_loader=settings_loader, transport=transport
        )
        # (account, bank code, currency) -> RCP_...: a cache of Paystack's own dedupe of recipients.
        self._recipients = RecentMap()
        # reference -> operation: lets a status() without context try the right endpoint first.
        self._operations = RecentMap()

    # --- identity and plumbing -----------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """`ps-` + 29 hex characters of the key's SHA-256.

        Valid both as a charge reference (alphanumerics, `-`, `.`, `=`) and as a transfer
        reference (lowercase alphanumerics, `-`, `_`, at least 16 characters), and the same on
        every retry, so Paystack's duplicate-reference check guards every resend.
        """
        return "ps-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:29]

    def _new_client(self) -> httpx.AsyncClient:
        # The key travels per request (see `_call`), so a reloaded key applies without a new client.
        return build_client(self._base_url(), self._timeout_s, transport=self._transport)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        mutating: bool,
        what: str,
        payload: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[httpx.Response, dict[str, Any]]:
        response = await send(
            self._http(),
            PROVIDER,
            method,
            path,
            mutating=mutating,
            what=what,
            json_body=payload,
            params=params,
            headers={"Authorization": f"Bearer {self._settings.secret_key.get_secret_value()}"},
        )
        return response, json_object(response)

    def _error(
        self, response: httpx.Response, body: dict[str, Any], *, mutating: bool, what: str
    ) -> ProviderError:
        message = str(body.get("message") or f"HTTP {response.status_code}")
        # HTTP 2xx with `status: false`: Paystack refused the request without processing it.
        error_class = None if response.status_code >= 400 else ErrorClass.INVALID_REQUEST
        return self._provider_error(
            response,
            error_class,
            f"{what}: {message}",
            code=str(body.get("code") or "") or None,
            mutating=mutating,
        )

    @staticmethod
    def _ok(response: httpx.Response, body: dict[str, Any]) -> bool:
        return response.status_code < 400 and body.get("status") is True

    @staticmethod
    def _is_duplicate(body: dict[str, Any]) -> bool:
        message = str(body.get("message", "")).lower()
        return (
            body.get("code") == DUPLICATE_CODE
            or "duplicate" in message
            or "reference already exists" in message
        )

    @staticmethod
    def _is_not_found(response: httpx.Response, body: dict[str, Any]) -> bool:
        message = str(body.get("message", "")).lower()
        return response.status_code in (400, 404) and (
            any(text in message for text in NOT_FOUND_MESSAGES) or body.get("code") == "transaction_not_found"
        )

    def _not_found(self, what: str, reference: str) -> ProviderError:
        return ProviderError(
            PROVIDER, ErrorClass.NOT_PROCESSED, f"no {what} {reference}", code=NOT_FOUND_CODE
        )

    def _phone(self, phone: str, currency: str) -> str:
        country = COUNTRY_OF_CURRENCY[currency]
        if country in NATIONAL_FORMAT_COUNTRIES:
            dial = DIAL_CODES[country]
            if phone.startswith(f"+{dial}"):
                return "0" + phone[len(dial) + 1 :]
        return phone

    def _check_market(self, request: PaymentRequest) -> tuple[str, str]:
        currency = request.money.currency
        if currency not in MOBILE_MONEY_PROVIDERS:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"Paystack mobile money takes {', '.join(sorted(MOBILE_MONEY_PROVIDERS))}, not {currency}",
            )
        if COUNTRY_OF_CURRENCY[currency] != request.country:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"{currency} mobile money is not offered in {request.country}",
            )
        wallet = request.metadata.get(
            "mobile_money_provider", DEFAULT_MOBILE_MONEY_PROVIDER[currency]
        ).lower()
        if wallet not in MOBILE_MONEY_PROVIDERS[currency]:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"mobile money provider {wallet!r} is not offered for {currency} "
                f"(one of {', '.join(sorted(MOBILE_MONEY_PROVIDERS[currency]))})",
            )
        return currency, wallet

    def _abandoned(self, data: Mapping[str, Any]) -> tuple[TransactionStatus, str]:
        """`abandoned` is final only once the customer can no longer complete (see the constant)."""
        created = _epoch_of(data.get("created_at") or data.get("createdAt"))
        if created is not None and self._clock.now() - created >= ABANDONED_FINAL_AFTER_S:
            return TransactionStatus.FAILED, "abandoned: the customer never completed it"
        return TransactionStatus.PENDING, "abandoned for now: the customer may still complete it"

    def _transaction(
        self,
        reference: str,
        data: dict[str, Any],
        status: TransactionStatus,
        message: str,
        *,
        fallback_money: Money | None = None,
        payer: str | None = None,
        provider_reference: str | None = None,
    ) -> ProviderTransaction:
        """A normalised answer: money only when `data` carried amount and currency (or a caller's
        fallback for its own request), the payer in `raw["payer"]` only when `data` named one."""
        raw_status = str(data.get("status", ""))
        raw = dict(data)
        if payer is not None:
            raw["payer"] = payer
        if provider_reference is None and data.get("id") is not None:
            provider_reference = str(data["id"])
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=provider_reference,
            status=status,
            money=money_of(data.get("amount"), data.get("currency")) or fallback_money,
            provider_code=raw_status or None,
            provider_message=short(message) if message else None,
            raw_status=raw_status or None,
            raw=raw,
        )

    # --- probe ---------------------------------------------------------------------------

    async def _probe_once(self) -> str:
        """`GET /balance`: authenticated, read-only, cheap."""
        response, body = await self._call("GET", "/balance", mutating=False, what="balance")
        if not self._ok(response, body):
            raise self._error(response, body, mutating=False, what="balance")
        balances = body.get("data")
        return f"{len(balances) if isinstance(balances, list) else 0} balance(s) retrieved"

    # --- collect -------------------------------------------------------------------------

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        """A mobile-money charge; pending until the customer approves on their phone."""
        currency, wallet = self._check_market(request)
        email = request.metadata.get("email")
        if not email:
            domain = self._settings.customer_email_domain
            if not domain:
                raise ProviderError(
                    PROVIDER,
                    ErrorClass.INVALID_REQUEST,
                    "Paystack needs the customer's email: pass metadata.email or set PAYSTACK_CUSTOMER_EMAIL_DOMAIN",
                )
            email = f"{request.phone.lstrip('+')}@{domain}"
        reference = self.reference_for(request.idempotency_key)
        self._operations.remember(reference, Operation.COLLECT)
        payload = {
            "email": email,
            "amount": request.money.amount_minor,
            "currency": currency,
            "reference": reference,
            "mobile_money": {"phone": self._phone(request.phone, currency), "provider": wallet},
            "metadata": {"description": request.description},
        }
        response, body = await self._call("POST", "/charge", mutating=True, what="charge", payload=payload)
        if not self._ok(response, body):
            if self._is_duplicate(body):
                return await self._replay(reference, request.money, Operation.COLLECT)
            raise self._error(response, body, mutating=True, what="charge")
        return self._charge_step(reference, _data(body), body, request.money)

    def _charge_step(
        self, reference: str, data: dict[str, Any], body: dict[str, Any], money: Money | None
    ) -> ProviderTransaction:
        """The answer of `/charge` or `/charge/submit_otp`: a step (`pay_offline`, ...) or, when the
        charge completed at once, the transaction itself."""
        self._learn(reference, "transaction_id", str(data["id"]) if data.get("id") is not None else None)
        raw_status = str(data.get("status", ""))
        if raw_status == "abandoned":
            status, note = self._abandoned(data)
        else:
            status, note = _status_of(raw_status, CHARGE_PENDING, CHARGE_FAILED), ""
        message = data.get("display_text") or data.get("gateway_response") or note or body.get("message", "")
        return self._transaction(reference, data, status, str(message), fallback_money=money)

    async def submit_otp(self, reference: str, otp: str) -> ProviderTransaction:
        """Complete a `send_otp` charge (Vodafone Cash) with the OTP the customer received."""
        response, body = await self._call(
            "POST",
            "/charge/submit_otp",
            mutating=True,
            what="submit otp",
            payload={"otp": otp, "reference": reference},
        )
        if not self._ok(response, body):
            raise self._error(response, body, mutating=True, what="submit otp")
        return self._charge_step(reference, _data(body), body, None)

    async def _replay(self, reference: str, money: Money, operation: Operation) -> ProviderTransaction:
        """The reference exists at Paystack: return that transaction if it is the same payment."""
        try:
            if operation is Operation.PAYOUT:
                existing = await self._verify_transfer(reference)
            else:
                existing = await self._verify_charge(reference)
        except ProviderError as exc:
            if exc.code != NOT_FOUND_CODE:
                raise
            # The refusal proves the payment exists; a lookup that cannot see it yet (Paystack's
            # lag) must never read as "not processed", or the engine could charge twice.
            raise ProviderError(
                PROVIDER,
                ErrorClass.AMBIGUOUS,
                f"reference {reference} exists (duplicate_reference) but its lookup does not see it yet",
                code=DUPLICATE_CODE,
            ) from exc
        if existing.money is not None and existing.money != money:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"reference {reference} already holds a different payment ({existing.money.amount_minor} "
                f"{existing.money.currency})",
                code=DUPLICATE_CODE,
            )
        return existing

    # --- status --------------------------------------------------------------------------

    async def status(
        self, reference: str, provider_reference: str | None = None, *, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        """Ask Paystack where a payment stands (always a fresh pull).

        The context's operation picks the endpoint: a charge is verified by reference, a transfer
        by reference, a refund by its learnt id. Without a context, a charge is tried, then a
        transfer. Raises `ProviderError(code="not_found")` when Paystack knows no such payment.
        """
        operation = context.operation if context is not None else self._operations.get(reference)
        if operation is Operation.REFUND:
            refund_id = self._identifier(reference, "refund_id", context) or provider_reference
            if not refund_id:
                return ProviderTransaction(
                    provider=PROVIDER,
                    reference=reference,
                    status=TransactionStatus.UNKNOWN,
                    provider_message="no refund id was learnt: Paystack fetches a refund only by its id",
                )
            return await self.refund_status(refund_id, reference)
        if operation is Operation.PAYOUT:
            return await self._verify_transfer(reference)
        if operation is Operation.COLLECT:
            return await self._verify_charge(reference)
        try:
            return await self._verify_charge(reference)
        except ProviderError as exc:
            if exc.code != NOT_FOUND_CODE:
                raise
        try:
            return await self._verify_transfer(reference)
        except ProviderError as exc:
            if exc.code != NOT_FOUND_CODE:
                raise
        raise self._not_found("transaction or transfer", reference)

    async def _verify_charge(self, reference: str) -> ProviderTransaction:
        response, body = await self._call(
            "GET", f"/transaction/verify/{reference}", mutating=False, what="verify"
        )
        if not self._ok(response, body):
            if self._is_not_found(response, body):
                raise self._not_found("transaction", reference)
            raise self._error(response, body, mutating=False, what="verify")
        data = _data(body)
        return self._charge_transaction(reference, data, str(body.get("message", "")))

    def _charge_transaction(self, reference: str, data: dict[str, Any], message: str) -> ProviderTransaction:
        self._learn(reference, "transaction_id", str(data["id"]) if data.get("id") is not None else None)
        raw_status = str(data.get("status", ""))
        if raw_status == "abandoned":
            status, note = self._abandoned(data)
            message = f"{note} ({data.get('gateway_response') or 'no response'})"
        else:
            status = _status_of(raw_status, CHARGE_PENDING, CHARGE_FAILED)
            message = str(data.get("gateway_response") or message)
        return self._transaction(
            reference, data, status, message, payer=payer_of(_customer_phone(data), data.get("currency"))
        )

    async def _verify_transfer(self, reference: str) -> ProviderTransaction:
        response, body = await self._call(
            "GET", f"/transfer/verify/{reference}", mutating=False, what="transfer verify"
        )
        if not self._ok(response, body):
            if self._is_not_found(response, body):
                raise self._not_found("transfer", reference)
            raise self._error(response, body, mutating=False, what="transfer verify")
        return self._transfer_transaction(reference, _data(body), str(body.get("message", "")))

    def _transfer_transaction(
        self, reference: str, data: dict[str, Any], message: str, fallback_money: Money | None = None
    ) -> ProviderTransaction:
        transfer_id = str(data["id"]) if data.get("id") is not None else None
        self._learn(reference, "transfer_code", data.get("transfer_code") or None)
        self._learn(reference, "transfer_id", transfer_id)
        raw_status = str(data.get("status", ""))
        if raw_status == "abandoned":
            status, note = self._abandoned(data)
        else:
            status, note = _status_of(raw_status, TRANSFER_PENDING, TRANSFER_FAILED), ""
        if raw_status == "otp":
            note = "the transfer waits for the OTP sent to the merchant (finalize_transfer)"
        detail = data.get("gateway_response") or data.get("failures") or note or message
        return self._transaction(
            reference,
            data,
            status,
            str(detail),
            fallback_money=fallback_money,
            payer=payer_of(_recipient_account(data), data.get("currency")),
            provider_reference=transfer_id,
        )

    async def refund_status(self, refund_id: str, reference: str | None = None) -> ProviderTransaction:
        """Where one refund stands (`GET /refund/{id}`)."""
        response, body = await self._call("GET", f"/refund/{refund_id}", mutating=False, what="refund")
        if not self._ok(response, body):
            if self._is_not_found(response, body):
                raise self._not_found("refund", refund_id)
            raise self._error(response, body, mutating=False, what="refund")
        data = _data(body)
        transaction = data.get("transaction")
        reference = reference or str(
            data.get("transaction_reference")
            or (transaction.get("reference") if isinstance(transaction, Mapping) else None)
            or refund_id
        )
        raw_status = str(data.get("status", ""))
        return self._transaction(
            reference,
            data,
            _refund_status(raw_status),
            str(body.get("message", "")),
            provider_reference=refund_id,
        )

    # --- reconciliation ------------------------------------------------------------------

    async def list_transactions(
        self, since_epoch_s: float, until_epoch_s: float
    ) -> list[ProviderTransaction]:
        """Every transaction Paystack created in `[since, until)`, page by page (reconciliation).

        Pure reading: nothing is learnt (rows may not be ours). Each row carries its reference,
        id, status, money and, when the customer has a phone, `raw["payer"]`.
        """
        found: list[ProviderTransaction] = []
        for page in range(1, MAX_LIST_PAGES + 1):
            params = {
                "from": iso(since_epoch_s),
                "to": iso(until_epoch_s),
                "perPage": str(LIST_PAGE_SIZE),
                "page": str(page),
            }
            response, body = await self._call(
                "GET", "/transaction", mutating=False, what="list transactions", params=params
            )
            if not self._ok(response, body):
                raise self._error(response, body, mutating=False, what="list transactions")
            rows = body.get("data")
            rows = rows if isinstance(rows, list) else []
            for row in rows:
                txn = self._listed(row, since_epoch_s, until_epoch_s)
                if txn is not None:
                    found.append(txn)
            meta = body.get("meta")
            page_count = meta.get("pageCount") if isinstance(meta, Mapping) else None
            if not rows or not isinstance(page_count, int) or page >= page_count:
                break
        return found

    def _listed(self, row: Any, since_epoch_s: float, until_epoch_s: float) -> ProviderTransaction | None:
        if not isinstance(row, Mapping) or not isinstance(row.get("reference"), str):
            return None
        data = dict(row)
        created = _epoch_of(data.get("created_at") or data.get("createdAt"))
        if created is not None and not since_epoch_s <= created < until_epoch_s:
            return None  # the window is Paystack's; the exact bounds are ours
        raw_status = str(data.get("status", ""))
        if raw_status == "abandoned":
            status, message = self._abandoned(data)
        else:
            status = _status_of(raw_status, CHARGE_PENDING, CHARGE_FAILED)
            message = str(data.get("gateway_response") or raw_status)
        return self._transaction(
            str(data["reference"]),
            data,
            status,
            message,
            payer=payer_of(_customer_phone(data), data.get("currency")),
        )

    # --- payout --------------------------------------------------------------------------

    async def _recipient(self, request: PaymentRequest, reference: str, currency: str, wallet: str) -> str:
        bank_code = TRANSFER_BANK_CODES[(currency, wallet)]
        account = self._phone(request.phone, currency)
        key = f"{account}|{bank_code}|{currency}"
        cached = self._recipients.get(key)
        if cached:
            self._learn(reference, "recipient_code", str(cached))
            return str(cached)
        payload = {
            "type": "mobile_money",
            "name": request.metadata.get("recipient_name", account),
            "account_number": account,
            "bank_code": bank_code,
            "currency": currency,
        }
        # No money moves here and Paystack returns the existing recipient for a known account,
        # so any failure of this step is safe to retry anywhere: read it as non-mutating.
        response, body = await self._call(
            "POST", "/transferrecipient", mutating=False, what="recipient", payload=payload
        )
        data = _data(body)
        code = data.get("recipient_code")
        if not self._ok(response, body) or not isinstance(code, str) or not code:
            raise self._error(response, body, mutating=False, what="recipient")
        # Learnt before the transfer call, which may fail: the engine holds it either way.
        self._learn(reference, "recipient_code", code)
        self._recipients.remember(key, code)
        return code

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        """A transfer from the Paystack balance to the customer's wallet (recipient, then transfer)."""
        currency, wallet = self._check_market(request)
        reference = self.reference_for(request.idempotency_key)
        self._operations.remember(reference, Operation.PAYOUT)
        recipient = await self._recipient(request, reference, currency, wallet)
        payload = {
            "source": "balance",
            "amount": request.money.amount_minor,
            "recipient": recipient,
            "reference": reference,
            "reason": request.description,
            "currency": currency,
        }
        response, body = await self._call(
            "POST", "/transfer", mutating=True, what="transfer", payload=payload
        )
        if not self._ok(response, body):
            if self._is_duplicate(body):
                return await self._replay(reference, request.money, Operation.PAYOUT)
            raise self._error(response, body, mutating=True, what="transfer")
        return self._transfer_transaction(
            reference, _data(body), str(body.get("message", "")), fallback_money=request.money
        )

    # --- refund --------------------------------------------------------------------------

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Refund a succeeded charge, fully or partly; the answer describes the refund.

        `pending` until Paystack processes it, then `succeeded`; the charge itself then verifies
        as `reversed` (full refunds). The refund id is learnt as `refund_id` under the charge's
        reference.
        """
        if transaction.status is not TransactionStatus.SUCCEEDED:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only a succeeded charge")
        payload: dict[str, Any] = {"transaction": transaction.reference}
        if money is not None:
            if transaction.money is not None and money.currency != transaction.money.currency:
                raise ProviderError(
                    PROVIDER, ErrorClass.INVALID_REQUEST, "refund: currency differs from the charge"
                )
            payload["amount"] = money.amount_minor
            payload["currency"] = money.currency
        response, body = await self._call("POST", "/refund", mutating=True, what="refund", payload=payload)
        if not self._ok(response, body):
            raise self._error(response, body, mutating=True, what="refund")
        data = _data(body)
        refund_id = str(data["id"]) if data.get("id") is not None else None
        self._learn(transaction.reference, "refund_id", refund_id)
        return self._transaction(
            transaction.reference,
            data,
            _refund_status(str(data.get("status", ""))),
            str(body.get("message", "")),
            fallback_money=money or transaction.money,
            provider_reference=refund_id,
        )

    # --- webhooks ------------------------------------------------------------------------

    def parse_callback(
        self, body: bytes, headers: Mapping[str, str], *, path_kind: str, path_reference: str | None
    ) -> CallbackHint | None:
        """What one Paystack webhook claims, once its HMAC-SHA512 signature verified.

        Pure: no state changes. Raises `CallbackAuthError` for a missing or wrong
        `x-paystack-signature`, `MalformedCallback` for a body that is not Paystack's shape;
        returns None for events about no payment (disputes, subscriptions, ...).
        """
        signature = _header(headers, SIGNATURE_HEADER)
        if not signature:
            raise CallbackAuthError(f"missing {SIGNATURE_HEADER} header")
        key = self._settings.secret_key.get_secret_value().encode()
        expected = hmac.new(key, body, hashlib.sha512).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
            raise CallbackAuthError(f"{SIGNATURE_HEADER} does not match the body")
        try:
            event = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedCallback("Paystack webhook: the body is not JSON") from exc
        if not isinstance(event, dict):
            raise MalformedCallback("Paystack webhook: the body is not a JSON object")
        name = event.get("event")
        if not isinstance(name, str) or not name:
            raise MalformedCallback("Paystack webhook: missing event")
        data = event.get("data")
        if name == "charge.success":
            return self._hint(name, data, Operation.COLLECT, "reference", path_reference)
        if name in ("transfer.success", "transfer.failed", "transfer.reversed"):
            return self._hint(name, data, Operation.PAYOUT, "reference", path_reference)
        if name.startswith("refund."):
            return self._hint(name, data, Operation.REFUND, "transaction_reference", path_reference)
        return None

    def _hint(
        self, event: str, data: Any, operation: Operation, reference_field: str, path_reference: str | None
    ) -> CallbackHint:
        if not isinstance(data, dict):
            raise MalformedCallback(f"Paystack {event}: missing data")
        reference = data.get(reference_field)
        from_path = path_reference if path_reference not in (None, "", "-") else None
        if reference is not None and not isinstance(reference, str):
            raise MalformedCallback(f"Paystack {event}: data.{reference_field} is not a string")
        if reference and from_path and reference != from_path:
            raise MalformedCallback(f"Paystack {event}: data.{reference_field} differs from the URL's")
        reference = reference or from_path
        if not reference:
            raise MalformedCallback(f"Paystack {event}: missing data.{reference_field}")
        raw_status = data.get("status")
        if raw_status is None:
            raw_status = event.split(".", 1)[1]  # the event names the outcome when the body does not
        raw_status = str(raw_status)
        if operation is Operation.REFUND:
            status = _refund_status(raw_status)
        elif operation is Operation.PAYOUT:
            status = _status_of(raw_status, TRANSFER_PENDING, TRANSFER_FAILED)
        else:
            status = _status_of(raw_status, CHARGE_PENDING, CHARGE_FAILED)
        currency = data.get("currency")
        money: Money | None = None
        if data.get("amount") is not None:
            money = money_of(data.get("amount"), currency)
            if money is None:
                raise MalformedCallback(
                    f"Paystack {event}: data.amount/currency is not an amount in subunits"
                )
        if operation is Operation.PAYOUT:
            payer = payer_of(_recipient_account(data), currency)
            message = data.get("gateway_response") or data.get("failures") or raw_status
            extras = {"transfer_code": str(data["transfer_code"])} if data.get("transfer_code") else {}
        elif operation is Operation.REFUND:
            payer = None  # refund events name the customer, not their phone
            message = data.get("processor") or raw_status
            extras = (
                {"refund_reference": str(data["refund_reference"])} if data.get("refund_reference") else {}
            )
        else:
            payer = payer_of(_customer_phone(data), currency)
            message = data.get("gateway_response") or raw_status
            extras = {}
        return CallbackHint(
            provider=PROVIDER,
            reference=reference,
            provider_reference=str(data["id"]) if data.get("id") is not None else None,
            operation=operation,
            status=status,
            money=money,
            payer=payer,
            provider_code=short(raw_status),
            provider_message=short(message),
            extras=extras,
            authenticated=True,
        )
