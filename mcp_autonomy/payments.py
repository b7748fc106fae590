"""Payment records: one per idempotency key, with every provider attempt it took.

A record is written *before* the first provider call and updated after each attempt, so a
crash can never leave a payment the engine does not know about: on restart, a record whose
outcome is still `unknown` is resolved by the provider's status query, never by a resend.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from mcp_autonomy.providers.base import Money, Operation, TransactionStatus


class AttemptOutcome(StrEnum):
    """How one attempt at one provider ended."""

    ACCEPTED = "accepted"  # the provider took it (pending or final)
    REJECTED_LOCALLY = "rejected_locally"  # breaker open / rate limit: never sent
    NOT_PROCESSED = "not_processed"
    AMBIGUOUS = "ambiguous"
    RESOLVED_BY_STATUS = "resolved_by_status"
    INVALID_REQUEST = "invalid_request"
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"


class PaymentAttempt(BaseModel):
    """One try at one provider."""

    provider: str
    started_at: float
    latency_ms: float
    outcome: AttemptOutcome
    reference: str | None = None
    provider_reference: str | None = None
    provider_code: str | None = None
    detail: str = ""


class PaymentRecord(BaseModel):
    """A payment as the engine knows it; the first result for its idempotency key."""

    idempotency_key: str
    operation: Operation
    money: Money
    phone: str
    country: str
    description: str = ""
    status: TransactionStatus
    provider: str | None = Field(None, description="The provider that holds the payment, if any took it")
    reference: str | None = None
    provider_reference: str | None = None
    provider_code: str | None = None
    provider_message: str | None = None
    attempts: list[PaymentAttempt] = Field(default_factory=list)
    failed_over: bool = False
    created_at: float
    updated_at: float
    metadata: dict[str, Any] = Field(default_factory=dict)

    def same_request(self, other: PaymentRecord) -> bool:
        """True when `other` asks for the same thing (a legitimate replay of the same key)."""
        return (
            self.operation == other.operation
            and self.money == other.money
            and self.phone == other.phone
            and self.country == other.country
        )
