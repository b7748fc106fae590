"""The provider adapter protocol and the payment models every adapter speaks.

Money is integer minor units plus an ISO 4217 currency, never a float; phone numbers are E.164;
every request carries an idempotency key. A provider error is classified by what it means for
the money: `not_processed` (certainly not processed, safe to fail over), `ambiguous` (may have
been processed: resolve with a status query before anything else), `invalid_request`, `auth`,
`rate_limited`. Adapters raise `ProviderError`; they never return an error inside a result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

E164_RE = re.compile(r"^\+[1-9]\d{7,14}$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
DIAL_CODES: dict[str, str] = {
    "KE": "254",
    "UG": "256",
    "TZ": "255",
    "RW": "250",
    "NG": "234",
    "GH": "233",
    "ZA": "27",
    "ZM": "260",
    "MW": "265",
    "CI": "225",
    "SN": "221",
    "CM": "237",
    "CD": "243",
    "BJ": "229",
    "EG": "20",
    "ET": "251",
}
"""Country calling codes of the markets the adapters serve (for national phone numbers)."""
MAX_AMOUNT_MINOR = 10**13  # far above any single mobile-money payment; guards against unit mistakes
NOT_FOUND_CODE = "not_found"
"""`ProviderError.code` raised by `status()` when the provider certainly has no such transaction."""


class Operation(StrEnum):
    """What a payment asks a provider to do."""

    COLLECT = "collect"  # request to pay: money from the customer to the merchant
    PAYOUT = "payout"  # send money: from the merchant to the customer
    REFUND = "refund"


class TransactionStatus(StrEnum):
    """Where a transaction stands at the provider."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REVERSED = "reversed"
    UNKNOWN = "unknown"
    NEEDS_OPERATOR_OTP = "needs_operator_otp"
    """A transfer the provider holds until the merchant confirms it with the OTP the provider sent
    the merchant (Paystack `otp`): never finalised automatically; `submit_transfer_otp` does it."""
    NEEDS_RECONCILIATION = "needs_reconciliation"
    """Engine-only: its outcome stayed unknown past the provider's bound; an operator resolves it
    (the reconciler keeps pulling meanwhile). Never re-sent elsewhere under the same key."""

    @property
    def is_final(self) -> bool:
        return self in (TransactionStatus.SUCCEEDED, TransactionStatus.FAILED, TransactionStatus.REVERSED)


class ErrorClass(StrEnum):
    """What a provider error means for the money, which decides retry and failover."""

    NOT_PROCESSED = "not_processed"
    AMBIGUOUS = "ambiguous"
    INVALID_REQUEST = "invalid_request"
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    CUSTOMER = "customer"
    """The customer's own state refused this payment (subscriber busy or locked, insufficient
    funds, wrong PIN, cancelled, no answer from the handset, invalid account, limits): it fails
    this one payment, is never retried or failed over (another provider meets the same customer)
    and never counts toward a breaker, health or an incident."""


class ErrorRule(BaseModel):
    """One row of a provider's classification table: an answer, what it means for the money, and
    where that is written. `match` is the provider's code (or a short description of the answer:
    an HTTP status, a message)."""

    model_config = ConfigDict(frozen=True)

    match: str
    error_class: ErrorClass
    meaning: str
    source: str = Field(description="doc page, SDK file or 'no source: ambiguous by default'")


class Money(BaseModel):
    """An amount in integer minor units (cents, kobo, ...) and its ISO 4217 currency."""

    model_config = ConfigDict(frozen=True)

    amount_minor: int = Field(gt=0, le=MAX_AMOUNT_MINOR)
    currency: str = Field(pattern=CURRENCY_RE.pattern)


def normalize_msisdn(raw: str, default_country_code: str | None = None) -> str:
    """Normalise a phone number to E.164 (`+254712345678`).

    Accepts `+254712345678`, `254712345678`, `00254712345678` and, with `default_country_code`
    (digits, e.g. "254"), a national number with a leading 0 (`0712345678`).

    Raises:
        ValueError: the number cannot be normalised.
    """
    digits = re.sub(r"[\s\-().]", "", raw)
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    if digits.startswith("0") and default_country_code:
        digits = "+" + default_country_code + digits[1:]
    if not digits.startswith("+"):
        digits = "+" + digits
    if not E164_RE.match(digits):
        from mcp_autonomy.pii import mask_text  # here: pii reads this module's dial codes

        shown = raw if len(raw) <= 24 else f"{raw[:20]}…"
        raise ValueError(f"phone number {mask_text(repr(shown))} is not E.164 (expected like +254712345678)")
    return digits


class PaymentRequest(BaseModel):
    """One collect or payout, as the router hands it to an adapter."""

    model_config = ConfigDict(frozen=True)

    idempotency_key: str = Field(min_length=8, max_length=100, pattern=r"^[A-Za-z0-9_\-.:]+$")
    operation: Operation
    money: Money
    phone: str
    country: str = Field(pattern=COUNTRY_RE.pattern)
    description: str = Field(default="payment", max_length=100)
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("phone")
    @classmethod
    def _e164(cls, value: str) -> str:
        if not E164_RE.match(value):
            raise ValueError("phone must be E.164, like +254712345678")
        return value


class ProviderTransaction(BaseModel):
    """A provider's answer about one transaction, normalised."""

    provider: str
    reference: str  # our reference as sent to the provider (derived from the idempotency key)
    provider_reference: str | None = None  # the provider's own id (CheckoutRequestID, invoice id, ...)
    status: TransactionStatus
    money: Money | None = None
    provider_code: str | None = None
    provider_message: str | None = None
    raw_status: str | None = None
    answer_by_callback: bool = Field(
        False,
        description="the pull was only sent: the provider posts its answer later (M-Pesa's Transaction "
        "Status API), so this says nothing about the payment yet",
    )
    raw: dict[str, Any] = Field(default_factory=dict, exclude=True)


class PaymentContext(BaseModel):
    """What the engine stored about one payment at one provider, handed to `status()`.

    It lets an adapter answer a status pull with no memory of its own (after a restart, or on
    another replica): the operation says which endpoint to ask, `identifiers` holds every id the
    adapter reported through its identifier sink (CheckoutRequestID, invoice id, ...).
    """

    model_config = ConfigDict(frozen=True)

    reference: str
    operation: Operation
    money: Money
    phone: str
    country: str
    provider_reference: str | None = None
    identifiers: dict[str, str] = Field(default_factory=dict, description="kind -> value")
    accepted_at: float | None = Field(None, description="epoch s the provider accepted it, if it did")


CallbackAuth = Literal["none", "hmac_sha512", "shared_secret"]
"""How a provider proves a callback is its own: nothing (M-Pesa, MoMo, Airtel), a signature of
the body (Paystack), or a shared secret that proves the sender knows it (Flutterwave, IntaSend)."""


class CallbackHint(BaseModel):
    """What one provider callback *claims*. Never trusted as such: the engine confirms it with a
    fresh status pull and compares amount, currency and payer before anything changes."""

    provider: str
    reference: str | None = Field(None, description="our reference, when the callback carries it")
    provider_reference: str | None = None
    operation: Operation | None = None
    status: TransactionStatus
    money: Money | None = Field(None, description="amount and currency the callback claims, if any")
    payer: str | None = Field(None, description="E.164 phone the callback names, if any")
    provider_code: str | None = None
    provider_message: str | None = None
    extras: dict[str, str] = Field(
        default_factory=dict, description="facts kept once confirmed (e.g. the M-Pesa receipt)"
    )
    authenticated: bool = Field(False, description="the provider's signature or shared secret verified")


class CallbackAuthError(ValueError):
    """A callback whose signature or shared secret does not verify (answered 401, audited)."""


class MalformedCallback(ValueError):
    """A callback body that is not the provider's shape (answered 400)."""


class MoneyTruth(BaseModel):
    """One provider's facts that bound how long a payment may stay non-final, and what ends it.

    Every figure cites its source in `sources`; the README's table is built from these.
    """

    model_config = ConfigDict(frozen=True)

    not_found_grace_s: float = Field(
        ge=0, description="a lookup's 'not found' this soon after acceptance is ambiguous, not absent"
    )
    not_found_is_final_after_grace: bool = Field(
        description="after the grace, 'not found' means never processed (else it stays ambiguous)"
    )
    pending_bound_s: float = Field(
        gt=0, description="longest a payment may stay pending or unknown before needs_reconciliation"
    )
    pull_carries: frozenset[str] = Field(description="what a status pull returns: status, amount, ...")
    callback_carries: frozenset[str] = Field(description="what a callback carries")
    callback_auth: CallbackAuth = "none"
    pull_path: str = Field(description="how a payment is pulled, and when it cannot be")
    sources: tuple[str, ...] = ()


class ProbeResult(BaseModel):
    """The outcome of one cheap, side-effect-free health probe."""

    ok: bool
    latency_ms: float
    detail: str = ""
    error_class: ErrorClass | None = None


class ProviderCapabilities(BaseModel):
    """What a provider can do, and where."""

    operations: frozenset[Operation]
    currencies: frozenset[str]
    countries: frozenset[str]
    refunds: bool = False


class ProviderError(Exception):
    """A classified provider failure carrying the provider's own code and message."""

    def __init__(
        self,
        provider: str,
        error_class: ErrorClass,
        message: str,
        *,
        code: str | None = None,
        http_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{provider}: {error_class.value}: {message}" + (f" (code {code})" if code else ""))
        self.provider = provider
        self.error_class = error_class
        self.provider_message = message
        self.code = code
        self.http_status = http_status
        self.retry_after_s = retry_after_s

    @property
    def safe_to_fail_over(self) -> bool:
        """True only when the provider certainly did not process the request."""
        return self.error_class in (ErrorClass.NOT_PROCESSED, ErrorClass.RATE_LIMITED, ErrorClass.AUTH)


@runtime_checkable
class ProviderAdapter(Protocol):
    """What the engine needs from a payment provider.

    Implementations speak the provider's real HTTP API with httpx; credentials come from the
    environment and never appear in logs, errors or results.
    """

    name: str
    capabilities: ProviderCapabilities

    async def initialize(self) -> None:
        """(Re)create the HTTP client and fetch fresh credentials. Safe to call again."""
        ...

    async def refresh_credentials(self) -> None:
        """Drop cached tokens and fetch new ones."""
        ...

    async def probe(self) -> ProbeResult:
        """A cheap read-only call that shows whether the provider answers correctly."""
        ...

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        """Ask the customer to pay (STK push, request-to-pay, mobile-money charge)."""
        ...

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        """Send money to the customer (B2C, disbursement, transfer)."""
        ...

    async def status(
        self, reference: str, provider_reference: str | None = None, *, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        """Query a transaction's state; idempotent, used to resolve ambiguous outcomes.

        With `context` the adapter needs no memory of the payment (after a restart, on another
        replica). Raises `ProviderError(code="not_found")` when the provider has no such
        transaction; the engine decides what that means (see `MoneyTruth.not_found_grace_s`).
        """
        ...

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Refund a succeeded collection (raise `NotImplementedError` if the provider has none)."""
        ...

    async def close(self) -> None:
        """Release the HTTP client."""
        ...


@runtime_checkable
class CallbackSource(Protocol):
    """An adapter whose provider posts results to us (every mobile-money API does)."""

    name: str
    money_truth: MoneyTruth

    def parse_callback(
        self, body: bytes, headers: Mapping[str, str], *, path_kind: str, path_reference: str | None
    ) -> CallbackHint | None:
        """What one callback claims; None for an event that says nothing about a payment.

        Pure: changes no state. `path_kind` and `path_reference` are the last two segments of the
        callback URL this adapter chose (`.../<provider>/<kind>/<reference>`; reference "-" when
        the URL carried none).

        Raises:
            CallbackAuthError: the provider's signature or shared secret does not verify.
            MalformedCallback: the body is not this provider's callback shape.
        """
        ...
