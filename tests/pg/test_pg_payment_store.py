"""PostgresPaymentStore and PostgresPaymentLocks where sharing matters: two OS processes racing one
key or one payment lock, concurrent writers numbering attempts and receiving one callback,
counts kept by trigger, an outage and the recovery after it, lock timeouts and cancellation."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from mcp_autonomy.payments import (
    AttemptOutcome,
    CallbackState,
    InboxCallback,
    PaymentAttempt,
    PaymentRecord,
    ProviderIdentifier,
)
from mcp_autonomy.pg.payment_locks import LOCK_NAMESPACE, PaymentLockTimeout, PostgresPaymentLocks
from mcp_autonomy.pg.payment_store import PostgresPaymentStore
from mcp_autonomy.providers.base import CallbackHint, Money, Operation, TransactionStatus
from mcp_autonomy.store import StoreUnavailable
from tests.pg.race_create_payment import BARRIER_NAMESPACE
from tests.postgres import PostgresServer, start_server

HERE = Path(__file__).parent
REPO = HERE.parent.parent
RACE_ROUNDS = 50


@pytest.fixture
async def payments(pg_url: str) -> AsyncIterator[PostgresPaymentStore]:
    store = PostgresPaymentStore(pg_url, min_size=1, max_size=4)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def locks(pg_url: str) -> AsyncIterator[PostgresPaymentLocks]:
    opened = PostgresPaymentLocks(pg_url, lock_timeout_s=0.3, max_connections=4)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def _record(
    key: str, *, status: TransactionStatus = TransactionStatus.PENDING, provider: str = "mpesa"
) -> PaymentRecord:
    return PaymentRecord(
        idempotency_key=key,
        operation=Operation.COLLECT,
        money=Money(amount_minor=1500, currency="KES"),
        phone="+254712345678",
        country="KE",
        status=status,
        provider=provider,
        reference=f"R-{key}",
        created_at=100.0,
        updated_at=100.0,
    )


def _attempt(provider: str = "mpesa") -> PaymentAttempt:
    return PaymentAttempt(
        provider=provider, started_at=1.0, latency_ms=0.0, outcome=AttemptOutcome.SENDING, reference="R1"
    )


def _ident(value: str, reference: str, recorded_at: float = 1.0) -> ProviderIdentifier:
    return ProviderIdentifier(
        provider="mpesa",
        kind="checkout_request_id",
        value=value,
        reference=reference,
        idempotency_key=None,
        recorded_at=recorded_at,
    )


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(HERE / script), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str], timeout_s: float = 60.0) -> list[dict[str, Any]]:
    out, err = process.communicate(timeout=timeout_s)
    assert process.returncode == 0, err[-3000:]
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# --- two processes ----------------------------------------------------------------------


def test_two_processes_racing_one_key_make_one_payment(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as gate:
        # Every round starts behind an exclusive advisory lock; both sides queue on it (shared),
        # and it is released only once both wait, so their inserts leave at the same moment.
        for i in range(RACE_ROUNDS):
            gate.execute("SELECT pg_advisory_lock(%s, %s)", (BARRIER_NAMESPACE, i))
        sides = [_spawn("race_create_payment.py", pg_url, str(side), str(RACE_ROUNDS)) for side in (0, 1)]
        try:
            for i in range(RACE_ROUNDS):
                deadline = time.monotonic() + 30
                while True:
                    row = gate.execute(
                        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                        " AND classid = %s AND objid = %s",
                        (BARRIER_NAMESPACE, i),
                    ).fetchone()
                    if row is not None and row[0] == 2:
                        break
                    assert all(s.poll() is None for s in sides), "a racer exited early"
                    assert time.monotonic() < deadline, f"round {i}: the racers never both waited"
                    time.sleep(0.001)
                gate.execute("SELECT pg_advisory_unlock(%s, %s)", (BARRIER_NAMESPACE, i))
            results = [_finish(s) for s in sides]
        finally:
            for s in sides:
                if s.poll() is None:
                    s.kill()
                    s.wait()

    assert [len(r) for r in results] == [RACE_ROUNDS, RACE_ROUNDS]
    wins = [0, 0]
    for i in range(RACE_ROUNDS):
        ours, theirs = results[0][i], results[1][i]
        assert ours["round"] == theirs["round"] == i
        assert [ours["won"], theirs["won"]].count(True) == 1, i
        winner = 0 if ours["won"] else 1
        wins[winner] += 1
        # Both ended with the same record: the winner's, with the attempt it was created with.
        assert ours["record"] == theirs["record"], i
        assert ours["record"]["description"] == f"side {winner}"
        assert [a["reference"] for a in ours["record"]["attempts"]] == [f"A{winner}"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT COUNT(*) FROM payments").fetchone() == (RACE_ROUNDS,)
        assert conn.execute("SELECT COUNT(*) FROM payment_attempts").fetchone() == (RACE_ROUNDS,)


def test_two_processes_never_hold_one_payment_at_once(pg_url: str) -> None:
    rounds = 40
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE lock_probe (inside INTEGER NOT NULL, counter INTEGER NOT NULL)")
        conn.execute("INSERT INTO lock_probe VALUES (0, 0)")
        sides = [_spawn("race_payment_lock.py", pg_url, str(side), str(rounds)) for side in (0, 1)]
        try:
            results = [_finish(s) for s in sides]
        finally:
            for s in sides:
                if s.poll() is None:
                    s.kill()
                    s.wait()
        # Every slow read-modify-write survived: no two holders ever interleaved.
        assert conn.execute("SELECT inside, counter FROM lock_probe").fetchone() == (0, 2 * rounds)
    assert [r[0]["overlaps"] for r in results] == [0, 0]


# --- concurrent writers -----------------------------------------------------------------


@pytest.mark.anyio
async def test_two_pools_numbering_attempts_never_collide(
    pg_url: str, payments: PostgresPaymentStore
) -> None:
    other = PostgresPaymentStore(pg_url, min_size=1, max_size=4)
    await other.open()
    try:
        await payments.create_payment(_record("key-shared"))
        seqs: list[int] = []

        async def add(store: PostgresPaymentStore, provider: str) -> None:
            for _ in range(10):
                seqs.append(await store.begin_attempt("key-shared", _attempt(provider)))

        async with anyio.create_task_group() as tg:
            for n in range(4):
                tg.start_soon(add, payments, f"a{n}")
                tg.start_soon(add, other, f"b{n}")
        assert sorted(seqs) == list(range(1, 81))
        stored = await other.get_payment("key-shared")
        assert stored is not None and [a.seq for a in stored.attempts] == list(range(1, 81))
    finally:
        await other.close()


@pytest.mark.anyio
async def test_one_body_received_by_two_replicas_at_once_is_one_original(
    pg_url: str, payments: PostgresPaymentStore
) -> None:
    other = PostgresPaymentStore(pg_url, min_size=1, max_size=4)
    await other.open()
    body = '{"ResultCode":0}'
    callback = InboxCallback(
        provider="mpesa",
        path_kind="collect",
        received_at=1.0,
        hint=CallbackHint(provider="mpesa", status=TransactionStatus.SUCCEEDED),
        body_sha256=hashlib.sha256(body.encode()).hexdigest(),
        body=body,
    )
    try:
        stored: list[InboxCallback] = []

        async def add(store: PostgresPaymentStore) -> None:
            stored.append(await store.add_callback(callback))

        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(add, payments if n % 2 else other)
        originals = [c for c in stored if c.state is CallbackState.PENDING]
        assert len(originals) == 1
        assert {c.detail for c in stored if c is not originals[0]} == {f"duplicate of #{originals[0].id}"}
    finally:
        await other.close()


@pytest.mark.anyio
async def test_a_hostile_callback_body_with_nul_is_kept(payments: PostgresPaymentStore) -> None:
    body = '{"a":"\x00"}'
    callback = InboxCallback(
        provider="mpesa",
        path_kind="collect",
        received_at=1.0,
        hint=CallbackHint(
            provider="mpesa", status=TransactionStatus.FAILED, provider_message="x\x00y", extras={"k": "\x00"}
        ),
        body_sha256=hashlib.sha256(body.encode()).hexdigest(),
        body=body,
    )
    stored = await payments.add_callback(callback)
    (listed,) = await payments.list_callbacks()
    assert listed.id == stored.id and "\x00" not in listed.body
    assert listed.hint.provider_message == "x\ufffdy" and listed.hint.extras == {"k": "\ufffd"}


# --- identifiers queued by adapters -----------------------------------------------------


@pytest.mark.anyio
async def test_queued_identifiers_are_found_and_flushed(pg_url: str, payments: PostgresPaymentStore) -> None:
    await payments.create_payment(_record("key-q"))
    payments.record_identifier_soon(_ident("CR-q", "R-key-q"))
    # A read drains the queue first: the id an adapter just learnt is already findable.
    found = await payments.find_payment("mpesa", "CR-q")
    assert found is not None and found.idempotency_key == "key-q"

    payments.record_identifier_soon(_ident("CR-q2", "R-key-q", recorded_at=2.0))
    await payments.flush()
    # Durable: another replica (its own pool) sees it without anything left queued here.
    other = PostgresPaymentStore(pg_url, min_size=1, max_size=1)
    await other.open()
    try:
        assert await other.identifiers("mpesa", "R-key-q") == {"checkout_request_id": "CR-q2"}
        found = await other.find_payment("mpesa", "CR-q")
        assert found is not None and found.idempotency_key == "key-q"
    finally:
        await other.close()


# --- counts -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_counts_follow_status_changes_and_prune(pg_url: str, payments: PostgresPaymentStore) -> None:
    for n in range(3):
        await payments.create_payment(_record(f"m-{n}"))
    await payments.create_payment(_record("a-1", provider="airtel"))
    assert await payments.count_by_status() == {"pending": 4}

    done = _record("m-0", status=TransactionStatus.SUCCEEDED).model_copy(update={"updated_at": 110.0})
    await payments.save_payment(done)
    moved = _record("m-1", status=TransactionStatus.FAILED, provider="airtel").model_copy(
        update={"updated_at": 300.0}
    )
    await payments.save_payment(moved)
    assert await payments.count_by_status() == {"pending": 2, "succeeded": 1, "failed": 1}
    assert await payments.oldest_open() == {"airtel": 100.0, "mpesa": 100.0}

    assert await payments.prune(finished_before=200.0) == 1
    assert await payments.count_by_status() == {"pending": 2, "failed": 1}

    # The counts are read from `payment_counts`, not counted from the payments.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE payment_counts SET count = count + 5 WHERE provider = 'airtel' AND status = 'failed'"
        )
    assert await payments.count_by_status() == {"pending": 2, "failed": 6}


@pytest.mark.anyio
async def test_oldest_open_probes_the_provider_status_index(
    pg_url: str, payments: PostgresPaymentStore
) -> None:
    await payments.create_payment(_record("m-1"))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            str(r[0])
            for r in conn.execute(
                "EXPLAIN SELECT c.provider, MIN(o.created_at) FROM payment_counts AS c"
                " CROSS JOIN LATERAL (SELECT p.created_at FROM payments AS p"
                " WHERE p.provider = c.provider AND p.status = c.status ORDER BY p.created_at LIMIT 1) AS o"
                " WHERE c.status = ANY(ARRAY['pending']) AND c.count > 0 GROUP BY c.provider"
            )
        )
    assert "payments_by_provider_status_time" in plan, plan
    assert await payments.oldest_open() == {"mpesa": 100.0}


# --- outage -----------------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server of this test's own, to stop and start (the session's serves everyone else)."""
    server = start_server()
    try:
        yield server
    finally:
        server.close()


def _outage(server: PostgresServer) -> None:
    """Fast shutdown (SIGINT ends the sessions); `stop()`'s SIGTERM is PostgreSQL's smart shutdown,
    which waits for every idle pooled connection to leave and so never comes."""
    assert server.process is not None
    server.process.send_signal(signal.SIGINT)
    server.process.wait(timeout=15)
    server.process = None


@pytest.mark.anyio
async def test_an_outage_is_store_unavailable_and_the_pool_recovers(own_server: PostgresServer) -> None:
    url = own_server.create_database()
    # A password in the URL (trust auth ignores it) must never reach an error.
    url = url.replace(f"{own_server.user}@", f"{own_server.user}:s3cr3t-pw@")
    store = PostgresPaymentStore(url, min_size=2, max_size=3)
    locks = PostgresPaymentLocks(url, lock_timeout_s=2.0, max_connections=2)
    await store.open()
    await locks.open()
    try:
        await store.create_payment(_record("before"))
        _outage(own_server)

        store.record_identifier_soon(_ident("CR-during", "R-before"))
        raised: dict[str, BaseException | None] = {}

        async def hold_lock() -> None:
            async with locks.hold("before"):
                pass

        async def expect_unavailable(name: str, call: Callable[[], Awaitable[object]]) -> None:
            try:
                await call()
            except BaseException as error:
                raised[name] = error
            else:
                raised[name] = None

        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "ping": store.ping,
            "get_payment": lambda: store.get_payment("before"),
            "create_payment": lambda: store.create_payment(_record("during")),
            "flush": store.flush,
            "hold": hold_lock,
        }
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for name, call in calls.items():
                tg.start_soon(expect_unavailable, name, call)
        # Each waited at most its pool timeout (2 s) for a connection that cannot come.
        assert time.monotonic() - started < 4.0
        for name, error in raised.items():
            assert isinstance(error, StoreUnavailable), (name, error)
            assert "s3cr3t" not in str(error) and "unavailable" in str(error), name
        assert not locks.is_held("before")

        own_server.start()
        back_at = time.monotonic()
        deadline = back_at + 20
        while True:
            try:
                await store.ping()
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the pool never reconnected"
                await anyio.sleep(0.1)
        # Within the pool's reconnect bound (5 s), not the minutes of psycopg_pool's default.
        assert time.monotonic() - back_at < 7.0
        assert await store.create_payment(_record("after")) is None
        # The identifier queued during the outage was kept and is written now.
        assert await store.identifiers("mpesa", "R-before") == {"checkout_request_id": "CR-during"}
        while True:
            try:
                async with locks.hold("after"):
                    break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the lock pool never reconnected"
                await anyio.sleep(0.1)
    finally:
        await locks.close()
        await store.close()


# --- locks ------------------------------------------------------------------------------


def _try_lock(pg_url: str, key: str) -> bool:
    """Whether a separate session can take `key`'s lock now (it gives it back at once)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_NAMESPACE, key)).fetchone()
        return bool(row and row[0])


@pytest.mark.anyio
async def test_a_held_payment_is_locked_in_the_database_until_the_block_ends(
    pg_url: str, locks: PostgresPaymentLocks
) -> None:
    assert not locks.is_held("k1")
    async with locks.hold("k1"):
        assert locks.is_held("k1")
        assert not await anyio.to_thread.run_sync(_try_lock, pg_url, "k1")
        assert await anyio.to_thread.run_sync(_try_lock, pg_url, "k2")
    assert not locks.is_held("k1")
    assert await anyio.to_thread.run_sync(_try_lock, pg_url, "k1")


@pytest.mark.anyio
async def test_tasks_of_one_replica_queue_locally_on_one_connection(
    pg_url: str, locks: PostgresPaymentLocks
) -> None:
    order: list[str] = []
    first_in = anyio.Event()
    release = anyio.Event()

    async def first() -> None:
        async with locks.hold("k"):
            order.append("first in")
            first_in.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold("k"):
            order.append("second in")

    def lock_waits() -> int:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s",
                (LOCK_NAMESPACE,),
            ).fetchone()
            return int(row[0]) if row else -1

    async with anyio.create_task_group() as tg:
        tg.start_soon(first)
        await first_in.wait()
        tg.start_soon(second)
        await anyio.sleep(0.05)
        # The second waits in this process, not on a second database session.
        assert await anyio.to_thread.run_sync(lock_waits) == 1
        assert locks.is_held("k")
        release.set()
    assert order == ["first in", "first out", "second in"]


@pytest.mark.anyio
async def test_another_replica_holding_past_the_timeout_is_a_clear_error(
    pg_url: str, locks: PostgresPaymentLocks
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as other_replica:
        await other_replica.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_NAMESPACE, "k"))
        started = time.monotonic()
        with pytest.raises(PaymentLockTimeout, match="held by another replica"):
            async with locks.hold("k"):
                pytest.fail("entered a payment another replica holds")
        assert 0.25 <= time.monotonic() - started < 2.0
        assert not locks.is_held("k")
        await other_replica.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_NAMESPACE, "k"))
    async with locks.hold("k"):
        assert locks.is_held("k")


@pytest.mark.anyio
async def test_cancellation_never_leaves_a_lock_behind(pg_url: str, locks: PostgresPaymentLocks) -> None:
    # Cancelled inside the block: the lock is given back.
    with anyio.move_on_after(0.05):
        async with locks.hold("k"):
            await anyio.sleep(10)
    assert not locks.is_held("k")
    assert await anyio.to_thread.run_sync(_try_lock, pg_url, "k")

    # Cancelled while waiting for another replica: nothing is held afterwards either, even when
    # the other replica lets go just as the wait is cancelled.
    slow = PostgresPaymentLocks(pg_url, lock_timeout_s=5.0, max_connections=2)
    await slow.open()
    try:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as other_replica:
            await other_replica.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_NAMESPACE, "k"))
            with anyio.move_on_after(0.1) as scope:
                async with slow.hold("k"):
                    pytest.fail("entered a payment another replica holds")
            assert scope.cancelled_caught
            await other_replica.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_NAMESPACE, "k"))
        assert not slow.is_held("k")
        assert await anyio.to_thread.run_sync(_try_lock, pg_url, "k")
        async with slow.hold("k"):
            pass
    finally:
        await slow.close()


def test_lock_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="lock_timeout_s"):
        PostgresPaymentLocks("postgresql:///x", lock_timeout_s=0)
    with pytest.raises(ValueError, match="max_connections"):
        PostgresPaymentLocks("postgresql:///x", max_connections=0)
    with pytest.raises(ValueError, match="max_size"):
        PostgresPaymentStore("postgresql:///x", min_size=3, max_size=2)
