"""Fast, safe failover: customer errors are not provider faults, a run of failures trips at once,
hung calls move new payments to the backup, and a transfer held for an OTP waits for a human."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from mcp_autonomy.autonomy.reconciler import PaymentLocks, PaymentReconciler
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import EventBus, EventType
from mcp_autonomy.payment_store import SqlitePaymentStore
from mcp_autonomy.payments import AttemptOutcome, PaymentRecord
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest, ProviderError, TransactionStatus
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.resilience.breaker import BreakerState
from mcp_autonomy.resilience.router import PaymentRouter
from mcp_autonomy.store import Store
from mcp_autonomy.telemetry import Telemetry
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio


@dataclass
class World:
    router: PaymentRouter
    reconciler: PaymentReconciler
    mpesa: ScriptedAdapter
    backup: ScriptedAdapter
    bus: EventBus
    clock: ManualClock

    def events(self, kind: EventType) -> list[str]:
        return [e.message for e in self.bus.history(types=[kind], limit=100_000)]


@pytest.fixture
def world(tmp_path: Path, clock: ManualClock) -> Iterator[World]:
    registry = ProviderRegistry()
    mpesa, backup = ScriptedAdapter("mpesa"), ScriptedAdapter("intasend")
    registry.register(mpesa)
    registry.register(backup)
    registry.set_backups("mpesa", ["intasend"])
    store = Store(tmp_path / "db.sqlite3").open()
    payments = SqlitePaymentStore(store)
    bus = EventBus(clock)
    router = PaymentRouter(registry, payments, Telemetry(clock), bus, clock)
    reconciler = PaymentReconciler(
        router=router, payments=payments, providers=registry, bus=bus, clock=clock, locks=PaymentLocks()
    )
    yield World(router, reconciler, mpesa, backup, bus, clock)
    store.close()


def payment(i: int, operation: Operation = Operation.COLLECT) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=f"rule-{i:05d}",
        operation=operation,
        money=Money(amount_minor=10_000, currency="KES"),
        phone=f"+2547{i:08d}",
        country="KE",
    )


async def test_a_busy_customer_fails_one_payment_and_nothing_else(world: World) -> None:
    world.mpesa.default_behaviour = "customer"
    for i in range(25):  # the same busy customer, over and over (a second apart: under the rate limit)
        await world.clock.advance(1)
        record = await world.router.submit(payment(1).model_copy(update={"idempotency_key": f"busy-{i:04d}"}))
        assert (record.status, record.provider) == (TransactionStatus.FAILED, "mpesa")
        assert [a.outcome for a in record.attempts] == [AttemptOutcome.CUSTOMER]
    lane = world.router.lane_status("mpesa")
    assert lane.breaker_state is BreakerState.CLOSED and lane.breaker_calls_in_window == 0
    assert world.backup.calls == 0, "another provider meets the same busy customer: never a failover"
    snapshot = world.router.telemetry.provider("mpesa").snapshot()
    assert snapshot.error_rate == 0.0, "customer errors are not the provider's errors"
    assert not world.events(EventType.CUSTOMER_ERROR_STORM), "one customer is not a storm"


async def test_a_storm_of_customer_failures_is_a_signal_not_a_trip(world: World) -> None:
    world.mpesa.default_behaviour = "customer"
    for i in range(30):  # thirty payers, each refused on their side
        await world.router.submit(payment(i))
        await world.clock.advance(2)
    (message,) = world.events(EventType.CUSTOMER_ERROR_STORM)
    assert "not a provider fault" in message
    storm = world.router.customer_errors.storm("mpesa")
    assert storm is not None and storm.payers >= 10 and storm.share == 1.0
    assert world.router.lane_status("mpesa").breaker_state is BreakerState.CLOSED
    assert world.backup.calls == 0
    world.mpesa.default_behaviour = "ok"
    for i in range(30, 130):  # settled outcomes that are not the customers' failures
        record = await world.router.submit(payment(i))
        world.mpesa.status_answers[record.reference or ""] = TransactionStatus.SUCCEEDED
        await world.clock.advance(1)
        await world.reconciler.tick()
    assert world.router.customer_errors.storm("mpesa") is None
    assert any("back to" in m for m in world.events(EventType.CUSTOMER_ERROR_STORM))


@pytest.mark.parametrize(("code", "storm"), [("1037", True), ("E500", False)])
async def test_customer_codes_in_final_results_feed_the_storm(world: World, code: str, storm: bool) -> None:
    # Accepted pushes whose final result is a failure: 1037 (no answer from the handset) is the
    # customers' doing (in the adapter's customer_codes), E500 is not.
    for i in range(24):
        record = await world.router.submit(payment(i))
        world.mpesa.status_answers[record.reference or ""] = TransactionStatus.FAILED
        world.mpesa.status_codes[record.reference or ""] = code
        await world.clock.advance(1)
    for _ in range(4):
        await world.clock.advance(10)
        await world.reconciler.tick()
    assert (world.router.customer_errors.storm("mpesa") is not None) is storm
    assert world.router.lane_status("mpesa").breaker_state is BreakerState.CLOSED


async def test_three_failures_in_a_row_move_the_next_payment_to_the_backup(world: World) -> None:
    world.mpesa.default_behaviour = "refuse"
    for i in range(3):
        record = await world.router.submit(payment(i))
        assert record.provider == "intasend" and record.failed_over  # each failed over at once
    assert world.router.lane_status("mpesa").breaker_state is BreakerState.OPEN
    calls = world.mpesa.calls
    record = await world.router.submit(payment(3))
    assert record.provider == "intasend" and world.mpesa.calls == calls, "not even tried: the breaker is open"
    assert record.attempts[0].outcome is AttemptOutcome.REJECTED_LOCALLY


async def test_hung_calls_move_new_payments_to_the_backup_within_a_second(world: World) -> None:
    # A healthy minute first: the lane learns its p99 (the scripted provider answers at once).
    for i in range(30):
        await world.router.submit(payment(i))
        await world.clock.advance(0.5)
    world.mpesa.default_behaviour = "hang_after_accept"
    results: dict[str, PaymentRecord] = {}
    async with anyio.create_task_group() as tg:

        async def send(i: int) -> None:
            record = await world.router.submit(payment(i))
            results[record.idempotency_key] = record

        tg.start_soon(send, 100)
        await world.clock.advance(0.6)
        tg.start_soon(send, 101)
        await world.clock.advance(1.6)  # the first has now hung past the 2 s floor, the second nearly
        tg.start_soon(send, 102)
        await world.clock.advance(0.6)  # both past it now
        started = world.clock.monotonic()
        tg.start_soon(send, 103)
        await world.clock.advance(0.1)
        assert "rule-00103" in results, "the next payment did not wait for the hung ones"
        assert results["rule-00103"].provider == "intasend"
        assert world.clock.monotonic() - started < 1.0
        assert world.router.lane_status("mpesa").breaker_state is BreakerState.OPEN
        await world.clock.advance(60)  # the hung calls time out and are resolved by status
    for key in ("rule-00100", "rule-00101"):
        record = results[key]
        assert record.provider == "mpesa", "a hung payment is never re-sent elsewhere"
        assert record.status is TransactionStatus.SUCCEEDED  # the provider had taken it
    assert all(n == 1 for n in world.mpesa.charges.values()), "nobody charged twice"


async def test_a_transfer_held_for_an_otp_waits_for_the_operator(world: World) -> None:
    world.mpesa.default_behaviour = "otp"
    record = await world.router.submit(payment(7, Operation.PAYOUT))
    assert record.status is TransactionStatus.NEEDS_OPERATOR_OTP
    assert world.events(EventType.PAYMENT_NEEDS_OTP)
    for _ in range(10):  # the reconciler keeps pulling but never finalises it, nor flags it
        await world.clock.advance(600)
        await world.reconciler.tick()
    held = await world.router.get_payment("rule-00007")
    assert held is not None and held.status is TransactionStatus.NEEDS_OPERATOR_OTP
    with pytest.raises(ProviderError):
        await world.reconciler.submit_otp("rule-00007", "000000")
    done = await world.reconciler.submit_otp("rule-00007", "123456")
    assert done.status is TransactionStatus.PENDING
    await world.clock.advance(10)
    await world.reconciler.tick()
    final = await world.router.get_payment("rule-00007")
    assert final is not None and final.status is TransactionStatus.SUCCEEDED
    with pytest.raises(ValueError, match="not waiting for an OTP"):
        await world.reconciler.submit_otp("rule-00007", "123456")
