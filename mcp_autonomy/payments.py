"""Payment records: one per idempotency key, with every provider attempt it took.

A record is written *before* the first provider call, and each attempt is written *before* its
request leaves (outcome `sending`), so a crash can never leave a payment the engine does not
know about: on restart, every non-final payment is resolved by the provider's status query,
never by a resend. Provider callbacks land in a durable inbox and change a payment only once a
fresh status pull confirms them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, Field, model_serializer

from mcp_autonomy.pii import mask_data, mask_phone, mask_text
from mcp_autonomy.providers.base import CallbackHint, Money, Operation, PaymentContext, TransactionStatus
from mcp_autonomy.timefmt import Timestamp, TimestampOrNone

# The masking serialisers below (`_masked`) carry no type annotations on purpose: pydantic derives
# a model's serialisation JSON schema from a wrap serialiser's return annotation, and with none it
# keeps the model's own, so the MCP tools' output schemas and the OpenAPI document stay as they are.
_FREE_TEXT_FIELDS = ("description", "status_reason", "provider_message")
REVEAL_PAYER = "reveal_payer"
"""Serialisation context key: `record.model_dump(context={REVEAL_PAYER: True})` shows the phone
in full (the one-payment views only); any other dump masks it."""


class AttemptOutcome(StrEnum):
    """How one attempt at one provider ended."""

    SENDING = "sending"  # durable before the request leaves; found after a crash it means ambiguous
    ACCEPTED = "accepted"  # the provider took it (pending or final)
    REJECTED_LOCALLY = "rejected_locally"  # breaker open / rate limit: never sent
    NOT_PROCESSED = "not_processed"
    AMBIGUOUS = "ambiguous"
    RESOLVED_BY_STATUS = "resolved_by_status"
    INVALID_REQUEST = "invalid_request"
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    CUSTOMER = "customer"  # the customer's side refused it: this payment fails, nothing else


class PaymentAttempt(BaseModel):
    """One try at one provider: what was sent (reference, amount, payer) and how it ended."""

    seq: int = Field(0, description="order within the payment, from 1 (0 until stored)")
    provider: str
    started_at: Timestamp
    latency_ms: float
    outcome: AttemptOutcome
    reference: str | None = Field(None, description="our reference / idempotency header as sent")
    provider_reference: str | None = None
    provider_code: str | None = None
    detail: str = ""

    # Provider answers may name the payer (`ReceiverPartyPublicName: 2547... - NAME`).
    @model_serializer(mode="wrap")
    def _masked(self, handler):  # type: ignore[no-untyped-def]  # schema: see top
        dumped = handler(self)
        if isinstance(dumped.get("detail"), str):
            dumped["detail"] = mask_text(dumped["detail"])
        return dumped


class PaymentRecord(BaseModel):
    """A payment as the engine knows it; the first result for its idempotency key."""

    # Serialised (JSON or `model_dump`), the payer's phone reads `+2547****0002` and phone numbers
    # in its free text are masked too, so lists, errors, events and resources show it so. Only the
    # one-payment views show the phone in full, through `revealed()` or the `REVEAL_PAYER`
    # context. The attributes always hold the real values (the stores write them).

    _reveals_payer: ClassVar[bool] = False

    idempotency_key: str
    operation: Operation
    money: Money
    phone: str
    country: str
    description: str = ""
    status: TransactionStatus
    status_reason: str | None = Field(
        None, description="why it is unknown or needs reconciliation, or how an operator resolved it"
    )
    provider: str | None = Field(None, description="The provider that holds the payment, if any took it")
    reference: str | None = None
    provider_reference: str | None = None
    provider_code: str | None = None
    provider_message: str | None = None
    attempts: list[PaymentAttempt] = Field(default_factory=list)
    failed_over: bool = False
    created_at: Timestamp
    updated_at: Timestamp
    accepted_at: TimestampOrNone = Field(None, description="when its provider accepted it")
    next_check_at: TimestampOrNone = Field(None, description="when the reconciler pulls it next")
    checks: int = Field(0, description="status pulls the reconciler made for it")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _masked(self, handler, info):  # type: ignore[no-untyped-def]  # schema: see top
        dumped = handler(self)
        context = info.context
        reveal = self._reveals_payer or (isinstance(context, dict) and context.get(REVEAL_PAYER) is True)
        if not reveal and isinstance(dumped.get("phone"), str):
            dumped["phone"] = mask_phone(dumped["phone"])
        for name in _FREE_TEXT_FIELDS:
            if isinstance(dumped.get(name), str):
                dumped[name] = mask_text(dumped[name])
        if "metadata" in dumped:
            dumped["metadata"] = mask_data(dumped["metadata"])
        return dumped

    def masked(self) -> PaymentRecord:
        """This record as it may be shown anywhere: a copy whose phone and free text are masked in
        its attributes too (for code that reads attributes rather than serialising)."""
        return PaymentRecord.model_validate(self.model_dump())

    def revealed(self) -> PaymentRecord:
        """This record as the one-payment view shows it: serialised with the phone in full (its
        free text stays masked). Return it from `get_payment` and nowhere else."""
        return RevealedPaymentRecord(**dict(self))

    def same_request(self, other: PaymentRecord) -> bool:
        """True when `other` asks for the same thing (a legitimate replay of the same key)."""
        return (
            self.operation == other.operation
            and self.money == other.money
            and self.phone == other.phone
            and self.country == other.country
        )

    def context(self, identifiers: dict[str, str] | None = None) -> PaymentContext | None:
        """What its provider's adapter needs to pull its status with no memory (None: not sent)."""
        if self.provider is None or self.reference is None:
            return None
        return PaymentContext(
            reference=self.reference,
            operation=self.operation,
            money=self.money,
            phone=self.phone,
            country=self.country,
            provider_reference=self.provider_reference,
            identifiers=dict(identifiers or {}),
            accepted_at=self.accepted_at,
        )


class RevealedPaymentRecord(PaymentRecord):
    """A `PaymentRecord` whose serialisation shows the payer's phone in full (`revealed()`): the
    MCP SDK dumps a returned subclass through the instance, so a tool declared to return
    `PaymentRecord` can return this one without changing its output schema."""

    _reveals_payer: ClassVar[bool] = True


class ProviderIdentifier(BaseModel):
    """One provider id learnt for a payment (CheckoutRequestID, invoice id, X-Reference-Id, ...)."""

    provider: str
    kind: str
    value: str
    reference: str
    idempotency_key: str | None
    recorded_at: Timestamp


class CallbackState(StrEnum):
    """Where one received callback stands."""

    PENDING = "pending"  # kept: its pull said pending / not found yet; re-checked with backoff
    CONFIRMED = "confirmed"  # a fresh pull agreed; the payment took the pull's answer
    REFUSED = "refused"  # contradicted by the stored request or by the pull (audited, evented)
    UNMATCHED = "unmatched"  # no payment known for it yet: kept, matched again later
    DUPLICATE = "duplicate"  # the same body as one already received
    RECORDED = "recorded"  # a refund's or reversal's result: kept; it does not change the payment


class InboxCallback(BaseModel):
    """A received callback, durable before it is acknowledged."""

    id: int = Field(0, description="0 until stored")
    provider: str
    path_kind: str
    received_at: Timestamp
    hint: CallbackHint
    body_sha256: str = Field(description="SHA-256 of what was delivered: path kind, path reference, body")
    body: str = Field(
        exclude=True,
        description="the raw body as received (cut to 16 KiB); never shown: it can hold a shared secret",
    )
    idempotency_key: str | None = None
    state: CallbackState = CallbackState.PENDING
    detail: str = ""
    checks: int = 0
    next_check_at: TimestampOrNone = None
    resolved_at: TimestampOrNone = None

    @model_serializer(mode="wrap")
    def _masked(self, handler):  # type: ignore[no-untyped-def]  # schema: see top
        dumped = handler(self)
        hint = dumped.get("hint")
        if isinstance(hint, dict):
            if isinstance(hint.get("payer"), str):
                hint["payer"] = mask_phone(hint["payer"])
            if isinstance(hint.get("provider_message"), str):
                hint["provider_message"] = mask_text(hint["provider_message"])
            if "extras" in hint:
                hint["extras"] = mask_data(hint["extras"])
        if isinstance(dumped.get("detail"), str):
            dumped["detail"] = mask_text(dumped["detail"])
        return dumped


class PaymentStore(Protocol):
    """Where payments, their attempts, provider ids and the callback inbox live durably.

    SQLite (`SqlitePaymentStore`) is the embedded default; a PostgreSQL backend implements the
    same protocol for several replicas. Methods are async so either can be awaited the same way.
    Every write is committed before the method returns.
    """

    async def create_payment(self, record: PaymentRecord) -> PaymentRecord | None:
        """Insert a new payment; returns the existing record instead when the key is taken."""
        ...

    async def get_payment(self, key_or_reference: str) -> PaymentRecord | None:
        """A payment (with its attempts) by idempotency key, our reference or the provider's."""
        ...

    async def find_payment(self, provider: str, *ids: str) -> PaymentRecord | None:
        """The payment at `provider` that any of `ids` names (reference, provider reference or a
        learnt identifier value)."""
        ...

    async def begin_attempt(self, key: str, attempt: PaymentAttempt) -> int:
        """Append an attempt (outcome `sending` for one about to leave); returns its seq."""
        ...

    async def finish_attempt(self, key: str, attempt: PaymentAttempt) -> None:
        """Write the outcome of the attempt `attempt.seq`."""
        ...

    async def save_payment(self, record: PaymentRecord) -> None:
        """Write the payment's own fields (status, provider, references, schedule); not attempts."""
        ...

    async def finish_send(self, record: PaymentRecord, attempt: PaymentAttempt) -> None:
        """`finish_attempt(record.idempotency_key, attempt)` and `save_payment(record)` in one
        transaction (the router's last write for a payment: one commit instead of two)."""
        ...

    async def record_identifier(self, identifier: ProviderIdentifier) -> None:
        """Store a provider id (idempotent; the key is filled from the reference when known)."""
        ...

    def record_identifier_soon(self, identifier: ProviderIdentifier) -> None:
        """Store a provider id from synchronous code (an adapter's identifier sink, called the
        moment the adapter learns the id). A local backend writes it before returning; a networked
        one may queue it, and `flush()` returns once every queued write is durable."""
        ...

    async def flush(self) -> None:
        """Wait until every `record_identifier_soon` write is durable (the router awaits this
        after each provider call, before it acts on the answer)."""
        ...

    async def identifiers(self, provider: str, reference: str) -> dict[str, str]:
        """Every id learnt for `reference` at `provider`, kind -> value."""
        ...

    async def due_for_check(self, now: float, limit: int) -> list[PaymentRecord]:
        """Non-final payments whose `next_check_at` is due (or unset), oldest first."""
        ...

    async def list_payments(
        self, *, statuses: tuple[TransactionStatus, ...] = (), provider: str | None = None, limit: int = 100
    ) -> list[PaymentRecord]:
        """Payments by status and provider, newest first."""
        ...

    async def count_by_status(self) -> dict[str, int]:
        """How many payments are in each status."""
        ...

    async def oldest_open(self) -> dict[str, float]:
        """Per provider, the `created_at` of its oldest payment that is not final."""
        ...

    async def add_callback(self, callback: InboxCallback) -> InboxCallback:
        """Store a received callback; returns it with its id (state `duplicate` when the same
        provider already delivered the same body)."""
        ...

    async def update_callback(self, callback: InboxCallback) -> None:
        """Write a callback's state, match, detail and schedule."""
        ...

    async def callbacks_due(self, now: float, limit: int) -> list[InboxCallback]:
        """Pending and unmatched callbacks whose `next_check_at` is due, oldest first."""
        ...

    async def list_callbacks(
        self,
        *,
        provider: str | None = None,
        states: tuple[CallbackState, ...] = (),
        idempotency_key: str | None = None,
        limit: int = 100,
    ) -> list[InboxCallback]:
        """Received callbacks, newest first."""
        ...

    async def prune(self, *, finished_before: float) -> int:
        """Delete final payments last updated before `finished_before` (with their attempts and
        provider ids) and settled callbacks received before it; returns how many payments went.
        Open payments are never pruned, whatever their age."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; `StoreUnavailable` when it does not (readiness)."""
        ...
