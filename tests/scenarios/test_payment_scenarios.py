"""Payment scenarios end to end: the real adapters over real HTTP to the sandbox, the router and
the healer, on the manual clock. These are the guarantees on-call engineers rely on: no payment
lost, nobody charged twice, traffic moved to the backup once a failure is detected."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import anyio
import pytest

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import load_settings
from mcp_autonomy.payments import AttemptOutcome
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.sandbox import AcceptThenHangSpec, LedgerOperation, OutageSpec
from mcp_autonomy.sandbox.embedded import embedded_sandbox

pytestmark = pytest.mark.anyio
WALL_CLOCK_BOUND_S = 120.0


def kes_payment(i: int) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=f"scenario-{i:05d}",
        operation=Operation.COLLECT,
        money=Money(amount_minor=10_000 + 100 * i, currency="KES"),  # M-Pesa takes whole shillings
        phone=f"+2547{i:08d}",
        country="KE",
    )


async def test_thousand_payments_through_an_mpesa_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    clock = ManualClock()
    settings = load_settings(state_dir=tmp_path / "state", self_healing_interval_ms=5_000)
    with anyio.fail_after(WALL_CLOCK_BOUND_S):
        async with embedded_sandbox(clock) as sandbox:
            system = AutonomousSystem(settings, clock=clock)
            for adapter in sandbox.adapters.values():
                system.register_provider(adapter)
            system.set_backup_providers("mpesa", ["paystack"])
            async with system.running():
                records = []
                outage_at = 300
                for i in range(1000):
                    if i == outage_at:
                        sandbox.state.faults.add("mpesa", OutageSpec(mode="refused"))
                    if i % 10 == 0:
                        await clock.advance(
                            1.0
                        )  # 10 payments a second; the healer probes on its own schedule
                    records.append(await system.submit_payment(kes_payment(i)))

                # No payment lost: every one has a record, held by exactly one provider that took it.
                stored = [await system.router.get_payment(f"scenario-{i:05d}") for i in range(1000)]
                assert all(r is not None for r in stored)
                assert Counter(r.status for r in records) == {TransactionStatus.PENDING: 1000}
                assert all(r.provider in ("mpesa", "paystack") for r in records)

                # Before the outage M-Pesa took everything. Detection (the breaker opening, or the
                # healer's failed probes failing M-Pesa over) comes within seconds; from then on
                # payments go to the backup without M-Pesa being tried first.
                assert {r.provider for r in records[:outage_at]} == {"mpesa"}
                tried_mpesa = [
                    i
                    for i in range(outage_at, 1000)
                    if records[i].attempts[0].provider == "mpesa"
                    and records[i].attempts[0].outcome is AttemptOutcome.NOT_PROCESSED
                ]
                detected_at = max(tried_mpesa) + 1
                assert detected_at - outage_at <= 200  # within 20 s of payments at 10 per second
                assert {r.provider for r in records[outage_at:]} == {"paystack"}
                assert all(
                    r.attempts[0].provider == "paystack"
                    or r.attempts[0].outcome is AttemptOutcome.REJECTED_LOCALLY
                    for r in records[detected_at:]
                )
                assert system.router.failed_over == {"mpesa": "paystack"}

                # Nobody charged twice, across both providers' ledgers.
                ledger = sandbox.state.ledger
                collections = ledger.entries(operation=LedgerOperation.COLLECT)
                assert len(collections) == 1000
                per_customer = Counter(e.msisdn for e in collections)
                assert max(per_customer.values()) == 1


async def test_accept_then_hang_is_resolved_by_status_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paystack takes the charge and never answers: the router asks, and never charges again."""
    monkeypatch.chdir(tmp_path)
    clock = ManualClock()
    settings = load_settings(state_dir=tmp_path / "state", self_healing_enabled=False)
    with anyio.fail_after(WALL_CLOCK_BOUND_S):
        async with embedded_sandbox(clock) as sandbox:
            system = AutonomousSystem(settings, clock=clock)
            for adapter in sandbox.adapters.values():
                system.register_provider(adapter)
            system.set_backup_providers("mpesa", ["paystack"])
            sandbox.state.faults.add("paystack", AcceptThenHangSpec(), endpoints=["collect"])
            request = PaymentRequest(
                idempotency_key="hang-0001",
                operation=Operation.COLLECT,
                money=Money(amount_minor=2_500, currency="GHS"),
                phone="+233241234567",
                country="GH",
            )
            async with system.running():
                results = []

                async def pay() -> None:
                    results.append(await system.submit_payment(request))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(pay)
                    while not results:
                        await clock.advance(1.0)
                (record,) = results
                assert record.provider == "paystack" and not record.failed_over
                assert [a.outcome for a in record.attempts] == [
                    AttemptOutcome.AMBIGUOUS,
                    AttemptOutcome.RESOLVED_BY_STATUS,
                ]
                assert record.status in (TransactionStatus.PENDING, TransactionStatus.SUCCEEDED)
                # A replay of the key returns the first result and sends nothing.
                assert await system.submit_payment(request) == record
                ledger = sandbox.state.ledger
                assert ledger.count_by_reference(record.reference or "", provider="paystack") == 1
                assert len(ledger.charges_for("+233241234567")) == 1


async def test_mpesa_hang_without_checkout_id_stays_unknown_and_is_never_resent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An STK push whose answer never came has no CheckoutRequestID to query: the payment is
    recorded `unknown` at M-Pesa and is not sent to the backup, whatever the wait."""
    monkeypatch.chdir(tmp_path)
    clock = ManualClock()
    settings = load_settings(state_dir=tmp_path / "state", self_healing_enabled=False)
    with anyio.fail_after(WALL_CLOCK_BOUND_S):
        async with embedded_sandbox(clock) as sandbox:
            system = AutonomousSystem(settings, clock=clock)
            for adapter in sandbox.adapters.values():
                system.register_provider(adapter)
            system.set_backup_providers("mpesa", ["paystack"])
            sandbox.state.faults.add("mpesa", AcceptThenHangSpec(), endpoints=["collect"])
            async with system.running():
                results = []

                async def pay() -> None:
                    results.append(await system.submit_payment(kes_payment(7)))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(pay)
                    while not results:
                        await clock.advance(1.0)
                (record,) = results
                assert (record.status, record.provider, record.failed_over) == (
                    TransactionStatus.UNKNOWN,
                    "mpesa",
                    False,
                )
                charges = sandbox.state.ledger.charges_for("+254700000007")
                assert [e.provider for e in charges] == ["mpesa"]
