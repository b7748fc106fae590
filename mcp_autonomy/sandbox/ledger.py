"""The sandbox's ledger: every charge, payout and refund a provider emulator accepted.

It is the ground truth a test checks the engine against: whatever the adapters and the router
believed, `charges_for(msisdn)` says how often the customer was really asked to pay, and
`count_by_reference(reference)` proves a payment was taken at most once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mcp_autonomy.clock import Clock, iso


class LedgerOperation(StrEnum):
    """Which way the money goes."""

    COLLECT = "collect"
    PAYOUT = "payout"
    REFUND = "refund"


class LedgerStatus(StrEnum):
    """Where an accepted transaction stands inside the emulated provider."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REVERSED = "reversed"


@dataclass
class LedgerEntry:
    """One accepted transaction. Amounts are integer minor units; times are `clock.now()` epochs."""

    entry_id: int
    provider: str
    operation: LedgerOperation
    provider_reference: str
    reference: str | None
    msisdn: str
    amount_minor: int
    currency: str
    status: LedgerStatus
    created_at: float
    updated_at: float
    result_code: str | None = None
    result_desc: str | None = None
    receipt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def moved_money(self) -> bool:
        """True once the money really moved (succeeded, or succeeded and later reversed)."""
        return self.status in (LedgerStatus.SUCCEEDED, LedgerStatus.REVERSED)

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly view for the control API."""
        return {
            "entry_id": self.entry_id,
            "provider": self.provider,
            "operation": self.operation.value,
            "provider_reference": self.provider_reference,
            "reference": self.reference,
            "msisdn": self.msisdn,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "status": self.status.value,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "result_code": self.result_code,
            "result_desc": self.result_desc,
            "receipt": self.receipt,
        }


class Ledger:
    """Append-only record of accepted transactions, with the queries tests need."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: list[LedgerEntry] = []
        self._by_provider_reference: dict[tuple[str, str], LedgerEntry] = {}
        self._ids = itertools.count(1)

    def record(
        self,
        *,
        provider: str,
        operation: LedgerOperation,
        provider_reference: str,
        reference: str | None,
        msisdn: str,
        amount_minor: int,
        currency: str,
        extra: dict[str, Any] | None = None,
    ) -> LedgerEntry:
        """Add an accepted, pending transaction."""
        now = self._clock.now()
        entry = LedgerEntry(
            entry_id=next(self._ids),
            provider=provider,
            operation=operation,
            provider_reference=provider_reference,
            reference=reference,
            msisdn=msisdn,
            amount_minor=amount_minor,
            currency=currency,
            status=LedgerStatus.PENDING,
            created_at=now,
            updated_at=now,
            extra=dict(extra or {}),
        )
        self._entries.append(entry)
        self._by_provider_reference[(provider, provider_reference)] = entry
        return entry

    def settle(
        self,
        entry: LedgerEntry,
        status: LedgerStatus,
        *,
        result_code: str | None = None,
        result_desc: str | None = None,
        receipt: str | None = None,
    ) -> LedgerEntry:
        """Move an entry to a new status (final outcome, or reversal)."""
        entry.status = status
        entry.updated_at = self._clock.now()
        if result_code is not None:
            entry.result_code = result_code
        if result_desc is not None:
            entry.result_desc = result_desc
        if receipt is not None:
            entry.receipt = receipt
        return entry

    def get(self, provider: str, provider_reference: str) -> LedgerEntry | None:
        """The entry with this provider-side id."""
        return self._by_provider_reference.get((provider, provider_reference))

    def entries(
        self,
        *,
        provider: str | None = None,
        msisdn: str | None = None,
        reference: str | None = None,
        operation: LedgerOperation | str | None = None,
        status: LedgerStatus | str | None = None,
    ) -> list[LedgerEntry]:
        """Entries matching every given filter, oldest first."""
        return [
            e
            for e in self._entries
            if (provider is None or e.provider == provider)
            and (msisdn is None or e.msisdn == msisdn)
            and (reference is None or e.reference == reference)
            and (operation is None or e.operation == operation)
            and (status is None or e.status == status)
        ]

    def charges_for(self, msisdn: str, *, provider: str | None = None) -> list[LedgerEntry]:
        """Every collection asked of this customer (any status), oldest first."""
        return self.entries(provider=provider, msisdn=msisdn, operation=LedgerOperation.COLLECT)

    def successful_charges_for(self, msisdn: str, *, provider: str | None = None) -> list[LedgerEntry]:
        """Collections that actually took the customer's money."""
        return [e for e in self.charges_for(msisdn, provider=provider) if e.moved_money]

    def count_by_reference(
        self, reference: str, *, provider: str | None = None, operation: LedgerOperation | str | None = None
    ) -> int:
        """How many accepted transactions carry our reference: more than 1 is a double charge."""
        return len(self.entries(provider=provider, reference=reference, operation=operation))

    def total_collected_minor(self, msisdn: str, currency: str, *, provider: str | None = None) -> int:
        """Money taken from this customer and not reversed, in minor units."""
        return sum(
            e.amount_minor
            for e in self.charges_for(msisdn, provider=provider)
            if e.status is LedgerStatus.SUCCEEDED and e.currency == currency
        )

    def __len__(self) -> int:
        return len(self._entries)
