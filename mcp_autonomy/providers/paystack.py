"""Paystack adapter: mobile-money charges, verification, transfers, refunds.

Built on Paystack's OpenAPI description and error list (`shared/specs/paystack/`) and its
documentation snippets (PaystackOSS/doc-code-snippets):

- Every call carries `Authorization: Bearer sk_...`; every answer is the envelope
  `{status, message, data}`; errors are `{status: false, message, meta.nextStep, type, code}`
  (`type` validation_error / processor_error / api_error); a bad key is HTTP 401 "Invalid key".
- Collect: `POST /charge` with `email`, `amount` (subunits), `currency`, our `reference` and
  `mobile_money: {phone, provider}` answers "Charge attempted" with `data.status` `pay_offline`
  (approve on the phone) or `send_otp` (`POST /charge/submit_otp`), later `success` / `failed`.
  Mobile money is offered for GHS (providers mtn, atl, vod) and KES (mpesa).
- The caller's reference is the idempotency key on Paystack's side: reusing it is refused with
  `code: duplicate_reference` ("Duplicate Transaction Reference"). This adapter derives the
  reference from the idempotency key, so a retry either creates the charge once or meets the
  duplicate, which it answers by verifying the existing transaction: a replay returns the first.
- Status: `GET /transaction/verify/{reference}` (`data.status` success, failed, abandoned,
  ongoing, pending, processing, queued, reversed); transfers: `GET /transfer/verify/{reference}`.
- Payout: `POST /transferrecipient` (type `mobile_money`, an existing account returns the same
  recipient) then `POST /transfer` (`source: balance`, a unique lowercase `reference`, >= 16
  characters; a reused reference is refused).
- Refund: `POST /refund` with the transaction reference, "Refund has been queued for processing".
- Probe: `GET /balance` (read-only, cheap).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.base import (
    DIAL_CODES,
    NOT_FOUND_CODE,
    ErrorClass,
    Money,
    Operation,
    PaymentRequest,
    ProbeResult,
    ProviderCapabilities,
    ProviderError,
    ProviderTransaction,
    TransactionStatus,
)
from mcp_autonomy.providers.http import (
    HttpClientOwner,
    build_client,
    classify_http_status,
    json_object,
    make_timeout,
    parse_retry_after,
    send,
    short,
)

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
NATIONAL_FORMAT_COUNTRIES = frozenset({"GH"})
"""Ghanaian numbers go in national form (0551234987), as in Paystack's examples; others as E.164."""

CHARGE_PENDING = frozenset(
    {"pay_offline", "send_otp", "pending", "ongoing", "processing", "queued", "send_pin"}
)
CHARGE_FAILED = frozenset({"failed", "abandoned"})
TRANSFER_PENDING = frozenset({"pending", "otp", "received", "queued", "processing"})
TRANSFER_FAILED = frozenset({"failed", "abandoned", "blocked", "rejected"})
REFUND_PENDING = frozenset({"pending", "processing", "needs-attention"})
DUPLICATE_CODE = "duplicate_reference"
NOT_FOUND_MESSAGES = ("transaction reference not found", "transaction not found", "transfer not found")


class PaystackSettings(BaseSettings):
    """Paystack credentials and endpoint, from `PAYSTACK_*` environment variables."""

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


def _data(body: dict[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    return data if isinstance(data, dict) else {}


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


class PaystackAdapter(HttpClientOwner):
    """Speaks Paystack's REST API for mobile money (GHS, KES)."""

    name = PROVIDER
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT, Operation.PAYOUT, Operation.REFUND}),
        currencies=frozenset(MOBILE_MONEY_PROVIDERS),
        countries=frozenset(COUNTRY_OF_CURRENCY.values()),
        refunds=True,
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
        self._settings = settings
        self._clock = clock
        self._timeout_s = timeout_s if timeout_s is not None else settings.timeout_s
        make_timeout(self._timeout_s)
        self._settings_loader = settings_loader
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._recipients: dict[tuple[str, str, str], str] = {}  # (phone, bank code, currency) -> RCP_...
        self._last_probe: tuple[float, ProbeResult] | None = None

    # --- identity and tuning -------------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """`ps-` + 29 hex characters of the key's SHA-256.

        Valid both as a charge reference (alphanumerics, `-`, `.`, `=`) and as a transfer
        reference (lowercase alphanumerics, `-`, `_`, at least 16 characters), and the same on
        every retry, so Paystack's duplicate-reference check guards every resend.
        """
        return "ps-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:29]

    # --- lifecycle -----------------------------------------------------------------------

    async def initialize(self) -> None:
        """A fresh HTTP client with the current key (Paystack keys are static: nothing to fetch)."""
        await self.close()
        if self._settings_loader is not None:
            self._settings = self._settings_loader()
        self._client = self._new_client()

    async def refresh_credentials(self) -> None:
        """Re-read the key (a rotated `PAYSTACK_SECRET_KEY`) and rebuild the client with it."""
        await self.initialize()

    def _new_client(self) -> httpx.AsyncClient:
        return build_client(
            self._settings.base_url,
            self._timeout_s,
            headers={"Authorization": f"Bearer {self._settings.secret_key.get_secret_value()}"},
            transport=self._transport,
        )

    # --- plumbing ------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, *, mutating: bool, what: str, payload: dict[str, Any] | None = None
    ) -> tuple[httpx.Response, dict[str, Any]]:
        response = await send(
            self._http(), PROVIDER, method, path, mutating=mutating, what=what, json_body=payload
        )
        return response, json_object(response)

    def _error(
        self, response: httpx.Response, body: dict[str, Any], *, mutating: bool, what: str
    ) -> ProviderError:
        message = str(body.get("message") or f"HTTP {response.status_code}")
        code = str(body.get("code") or "") or None
        error_class = classify_http_status(response.status_code, mutating=mutating)
        if error_class is None:
            # HTTP 2xx with `status: false`: Paystack refused the request without processing it.
            error_class = ErrorClass.INVALID_REQUEST
        return ProviderError(
            PROVIDER,
            error_class,
            f"{what}: {short(message)}",
            code=code,
            http_status=response.status_code,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After"), self._clock.now()),
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

    def _transaction(
        self,
        reference: str,
        data: dict[str, Any],
        raw_status: str,
        status: TransactionStatus,
        message: str,
        fallback_money: Money | None = None,
    ) -> ProviderTransaction:
        amount, currency = data.get("amount"), data.get("currency")
        money = fallback_money
        if isinstance(amount, int) and amount > 0 and isinstance(currency, str) and len(currency) == 3:
            money = Money(amount_minor=amount, currency=currency.upper())
        provider_reference = data.get("id") or data.get("transfer_code")
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=str(provider_reference) if provider_reference else None,
            status=status,
            money=money,
            provider_code=raw_status,
            provider_message=short(message),
            raw_status=raw_status,
            raw=data,
        )

    # --- probe ---------------------------------------------------------------------------

    async def probe(self) -> ProbeResult:
        """`GET /balance`: authenticated, read-only, cheap."""
        now = self._clock.monotonic()
        if self._last_probe is not None and now - self._last_probe[0] < self._settings.probe_min_interval_s:
            cached = self._last_probe[1]
            return cached.model_copy(update={"detail": f"{cached.detail} (cached)"})
        started = time.perf_counter()
        response, body = await self._call("GET", "/balance", mutating=False, what="balance")
        latency_ms = (time.perf_counter() - started) * 1000
        if not self._ok(response, body):
            raise self._error(response, body, mutating=False, what="balance")
        balances = body.get("data")
        count = len(balances) if isinstance(balances, list) else 0
        result = ProbeResult(ok=True, latency_ms=latency_ms, detail=f"{count} balance(s) retrieved")
        self._last_probe = (now, result)
        return result

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
                return await self._replay(reference, request.money)
            raise self._error(response, body, mutating=True, what="charge")
        data = _data(body)
        raw_status = str(data.get("status", ""))
        return self._transaction(
            reference,
            data,
            raw_status,
            _status_of(raw_status, CHARGE_PENDING, CHARGE_FAILED),
            str(data.get("display_text") or data.get("gateway_response") or body.get("message", "")),
            fallback_money=request.money,
        )

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
        data = _data(body)
        raw_status = str(data.get("status", ""))
        return self._transaction(
            reference,
            data,
            raw_status,
            _status_of(raw_status, CHARGE_PENDING, CHARGE_FAILED),
            str(data.get("display_text") or body.get("message", "")),
        )

    async def _replay(self, reference: str, money: Money) -> ProviderTransaction:
        """The reference exists at Paystack: return that transaction if it is the same payment."""
        existing = await self.status(reference)
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

    async def status(self, reference: str, provider_reference: str | None = None) -> ProviderTransaction:
        """Verify a charge, else a transfer, by our reference.

        Raises `ProviderError(code="not_found")` when Paystack has neither: nothing was processed.
        """
        response, body = await self._call(
            "GET", f"/transaction/verify/{reference}", mutating=False, what="verify"
        )
        if self._ok(response, body):
            data = _data(body)
            raw_status = str(data.get("status", ""))
            return self._transaction(
                reference,
                data,
                raw_status,
                _status_of(raw_status, CHARGE_PENDING, CHARGE_FAILED),
                str(data.get("gateway_response") or body.get("message", "")),
            )
        if not self._is_not_found(response, body):
            raise self._error(response, body, mutating=False, what="verify")
        response, body = await self._call(
            "GET", f"/transfer/verify/{reference}", mutating=False, what="transfer verify"
        )
        if self._ok(response, body):
            data = _data(body)
            raw_status = str(data.get("status", ""))
            return self._transaction(
                reference,
                data,
                raw_status,
                _status_of(raw_status, TRANSFER_PENDING, TRANSFER_FAILED),
                str(data.get("reason") or body.get("message", "")),
            )
        if self._is_not_found(response, body):
            raise ProviderError(
                PROVIDER,
                ErrorClass.NOT_PROCESSED,
                f"no transaction or transfer {reference}",
                code=NOT_FOUND_CODE,
            )
        raise self._error(response, body, mutating=False, what="transfer verify")

    # --- payout --------------------------------------------------------------------------

    async def _recipient(self, request: PaymentRequest, currency: str, wallet: str) -> str:
        bank_code = TRANSFER_BANK_CODES[(currency, wallet)]
        account = self._phone(request.phone, currency)
        key = (account, bank_code, currency)
        cached = self._recipients.get(key)
        if cached:
            return cached
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
        self._recipients[key] = code
        return code

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        """A transfer from the Paystack balance to the customer's wallet (recipient, then transfer)."""
        currency, wallet = self._check_market(request)
        recipient = await self._recipient(request, currency, wallet)
        reference = self.reference_for(request.idempotency_key)
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
                return await self._replay(reference, request.money)
            raise self._error(response, body, mutating=True, what="transfer")
        data = _data(body)
        raw_status = str(data.get("status", ""))
        return self._transaction(
            reference,
            data,
            raw_status,
            _status_of(raw_status, TRANSFER_PENDING, TRANSFER_FAILED),
            str(body.get("message", "")),
            fallback_money=request.money,
        )

    # --- refund --------------------------------------------------------------------------

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Refund a succeeded charge, fully or partly; the answer describes the refund.

        `pending` until Paystack processes it, then `succeeded`; the charge itself then verifies
        as `reversed` (full refunds).
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
        raw_status = str(data.get("status", ""))
        if raw_status == "processed":
            status = TransactionStatus.SUCCEEDED
        elif raw_status == "failed":
            status = TransactionStatus.FAILED
        else:
            status = TransactionStatus.PENDING if raw_status in REFUND_PENDING else TransactionStatus.UNKNOWN
        return self._transaction(
            transaction.reference,
            data,
            raw_status,
            status,
            str(body.get("message", "")),
            fallback_money=money or transaction.money,
        )
