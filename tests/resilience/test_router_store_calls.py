"""The router's store calls on the payment path: what is committed when, and how many commits.

Money safety: the payment and its `sending` attempt are committed before the request leaves, and
the final outcome before `submit` returns (checked from a second SQLite connection, which sees
only committed rows). Cost: a payment answered at once takes two commits, a replay none.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import EventBus
from mcp_autonomy.payment_store import SqlitePaymentStore
from mcp_autonomy.payments import PaymentRecord
from mcp_autonomy.providers.base import (
    Money,
    Operation,
    PaymentRequest,
    ProviderTransaction,
    TransactionStatus,
)
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.resilience.breaker import BreakerConfig
from mcp_autonomy.resilience.router import IdempotencyConflict, PaymentRouter
from mcp_autonomy.store import Store
from mcp_autonomy.telemetry import Telemetry
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio

Committed = tuple[tuple[object, ...] | None, list[tuple[object, ...]]]


def committed(path: Path, key: str) -> Committed:
    """The payment (status, provider) and its attempts (provider, outcome), as committed."""
    other = sqlite3.connect(str(path))
    try:
        payment = other.execute(
            "SELECT status, provider FROM payments WHERE idempotency_key = ?", (key,)
        ).fetchone()
        attempts = other.execute(
            "SELECT provider, outcome FROM payment_attempts WHERE idempotency_key = ? ORDER BY seq", (key,)
        ).fetchall()
    finally:
        other.close()
    return payment, attempts


class WatchingAdapter(ScriptedAdapter):
    """A scripted provider that looks at what is committed the moment each request arrives."""

    def __init__(self, name: str, db_path: Path) -> None:
        super().__init__(name)
        self.db_path = db_path
        self.seen: list[Committed] = []

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        self.seen.append(committed(self.db_path, request.idempotency_key))
        return await super().collect(request)


class RivalStore(SqlitePaymentStore):
    """A store where another writer claims the key between the router's replay check and its
    first write (another process or replica on the same database)."""

    def __init__(self, store: Store, rival: PaymentRecord) -> None:
        super().__init__(store)
        self.rival = rival

    async def get_payment(self, key_or_reference: str) -> PaymentRecord | None:
        found = await super().get_payment(key_or_reference)
        assert found is None
        assert await super().create_payment(self.rival) is None
        return None


class World:
    def __init__(self, tmp_path: Path, clock: ManualClock) -> None:
        self.path = tmp_path / "db.sqlite3"
        self.store = Store(self.path).open()
        self.payments = SqlitePaymentStore(self.store)
        self.registry = ProviderRegistry()
        self.mpesa = WatchingAdapter("mpesa", self.path)
        self.backup = WatchingAdapter("intasend", self.path)
        self.registry.register(self.mpesa)
        self.registry.register(self.backup)
        self.registry.set_backups("mpesa", ["intasend"])
        self.clock = clock
        self.router = self.router_on(self.payments)
        self.commits = 0
        self._writing = False
        with self.store.connection() as db:  # the one connection every write goes through
            db.set_trace_callback(self._trace)

    def router_on(self, payments: SqlitePaymentStore) -> PaymentRouter:
        return PaymentRouter(
            self.registry,
            payments,
            Telemetry(self.clock),
            EventBus(self.clock),
            self.clock,
            breaker_config=BreakerConfig(minimum_calls=5, window_s=30, wait_in_open_s=30),
        )

    def _trace(self, statement: str) -> None:
        # Write transactions only (they cost an fsync); a read's BEGIN ... COMMIT writes nothing.
        statement = statement.strip().upper()
        if statement == "BEGIN IMMEDIATE":
            self._writing = True
        elif statement == "COMMIT" and self._writing:
            self._writing = False
            self.commits += 1


@pytest.fixture
def world(tmp_path: Path, clock: ManualClock) -> Iterator[World]:
    made = World(tmp_path, clock)
    yield made
    made.store.close()


def payment(key: str, amount: int = 10_000, currency: str = "KES") -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=Operation.COLLECT,
        money=Money(amount_minor=amount, currency=currency),
        phone="+254712345678",
        country="KE",
    )


async def test_payment_and_sending_attempt_are_committed_before_the_request_leaves(world: World) -> None:
    record = await world.router.submit(payment("key-00001"))
    assert world.mpesa.seen == [(("pending", None), [("mpesa", "sending")])]
    assert record.status.value == "pending" and record.provider == "mpesa"
    # Before submit returned, the outcome was committed with the payment's final fields.
    assert committed(world.path, "key-00001") == (("pending", "mpesa"), [("mpesa", "accepted")])
    assert [a.seq for a in record.attempts] == [1]


async def test_a_payment_answered_at_once_costs_two_commits_and_its_learnt_id_and_a_replay_none(
    world: World,
) -> None:
    await world.router.submit(payment("key-00002"))
    # Claim + first attempt; the id the adapter learnt (its identifier sink); outcome + payment.
    assert world.commits == 3
    again = await world.router.submit(payment("key-00002"))
    assert world.commits == 3 and world.mpesa.calls == 1
    assert again == await world.payments.get_payment("key-00002")
    with pytest.raises(IdempotencyConflict):
        await world.router.submit(payment("key-00002", amount=99))
    assert world.commits == 3


async def test_a_failed_over_attempt_is_committed_before_the_next_provider_is_called(world: World) -> None:
    world.mpesa.behaviours = ["refuse"]
    record = await world.router.submit(payment("key-00003"))
    assert record.provider == "intasend" and record.failed_over
    assert world.backup.seen == [(("pending", None), [("mpesa", "not_processed"), ("intasend", "sending")])]
    assert committed(world.path, "key-00003") == (
        ("pending", "intasend"),
        [("mpesa", "not_processed"), ("intasend", "accepted")],
    )
    assert [a.seq for a in record.attempts] == [1, 2]


async def test_a_customer_refusal_is_written_with_the_payment(world: World) -> None:
    world.mpesa.behaviours = ["customer"]
    record = await world.router.submit(payment("key-00004"))
    assert record.status.value == "failed" and world.backup.calls == 0
    assert committed(world.path, "key-00004") == (("failed", "mpesa"), [("mpesa", "customer")])
    assert world.commits == 2


async def test_a_payment_with_no_route_is_stored_failed_in_one_commit(world: World) -> None:
    record = await world.router.submit(payment("key-00005", currency="USD"))
    assert record.status.value == "failed" and "no registered provider" in (record.provider_message or "")
    assert committed(world.path, "key-00005") == (("failed", None), [])
    assert world.commits == 1
    assert await world.router.submit(payment("key-00005", currency="USD")) == record


async def test_a_key_claimed_by_another_writer_meanwhile_is_a_replay_and_never_sent(
    world: World, clock: ManualClock
) -> None:
    rival = PaymentRecord(
        idempotency_key="key-00006",
        operation=Operation.COLLECT,
        money=Money(amount_minor=10_000, currency="KES"),
        phone="+254712345678",
        country="KE",
        status=TransactionStatus.PENDING,
        created_at=1.0,
        updated_at=1.0,
    )
    router = world.router_on(RivalStore(world.store, rival))
    # Half-open: the send that never happens holds one of the few trial permits.
    breaker = router.lane("mpesa").breaker
    breaker.trip("test")
    await clock.advance(31.0)
    result = await router.submit(payment("key-00006"))
    assert result.idempotency_key == "key-00006" and result.attempts == []
    assert world.mpesa.calls == 0 and world.backup.calls == 0
    assert router.counters["payments"] == 0 and router.counters["replays"] == 1
    # The trial permit taken for the send that never happened was given back.
    snapshot = breaker.snapshot()
    assert snapshot.state.value == "half_open" and snapshot.half_open_in_flight == 0
    assert committed(world.path, "key-00006") == (("pending", None), [])
