"""The cluster feed against a real PostgreSQL: other replicas' events and every state change arrive.

Rows are written with plain SQL the way the PostgreSQL store writes them (a row and its NOTIFY in
one transaction, `change_seq` bumped on every update), so these tests pin the feed alone.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
import pytest
from anyio import wait_all_tasks_blocked

from mcp_autonomy.clock import Clock, ManualClock, SystemClock
from mcp_autonomy.events import Event, EventBus, EventType, Subscription
from mcp_autonomy.pg.feed import ClusterFeed
from mcp_autonomy.pg.fencing import EVENTS_CHANNEL, STATE_CHANNEL
from mcp_autonomy.pg.store import PostgresStore
from mcp_autonomy.recorder import EventRecorder
from tests.postgres import start_server

DELIVERY_DEADLINE_S = 1.0
"""The issue's target: an event recorded on one replica reaches another's bus within 1 s."""
SLOW_POLL_S = 30.0
"""A poll interval no test waits for: delivery within the deadline then proves NOTIFY works."""


def insert_event(
    conn: psycopg.Connection[Any], origin: str, seq: int, *, notify: bool = True, message: str = ""
) -> str:
    """One event row as the store records it (in the connection's current transaction)."""
    event_id = f"{origin}-{seq}"
    conn.execute(
        "INSERT INTO events (id, origin, seq, type, timestamp, component, provider, severity,"
        " dry_run, message, data) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
        (
            event_id,
            origin,
            seq,
            EventType.FAILOVER_TRIGGERED.value,
            1_767_225_600.0 + seq,
            "healer",
            "mpesa",
            "warning",
            False,
            message or f"event {event_id}",
            json.dumps({"seq": seq, "nested": {"ok": True}}),
        ),
    )
    if notify:
        conn.execute(f"NOTIFY {EVENTS_CHANNEL}")
    return event_id


def set_state(conn: psycopg.Connection[Any], component: str, key: str, value: Any) -> None:
    conn.execute(
        "INSERT INTO component_state (component, key, value, updated_at) VALUES (%s, %s, %s::jsonb, 0)"
        " ON CONFLICT (component, key) DO UPDATE SET value = excluded.value,"
        " change_seq = nextval('change_seq')",
        (component, key, json.dumps(value)),
    )
    conn.execute("DELETE FROM component_state_deleted WHERE component = %s AND key = %s", (component, key))
    conn.execute(f"NOTIFY {STATE_CHANNEL}")


def delete_state(conn: psycopg.Connection[Any], component: str, key: str) -> None:
    conn.execute("DELETE FROM component_state WHERE component = %s AND key = %s", (component, key))
    conn.execute(
        "INSERT INTO component_state_deleted (component, key) VALUES (%s, %s)"
        " ON CONFLICT (component, key) DO UPDATE SET change_seq = nextval('change_seq')",
        (component, key),
    )
    conn.execute(f"NOTIFY {STATE_CHANNEL}")


def put_record(conn: psycopg.Connection[Any], table: str, record_id: str, status: str) -> None:
    conn.execute(
        f"INSERT INTO {table} (id, provider, status, at, record) VALUES (%s, 'mpesa', %s, 0, '{{}}')"
        " ON CONFLICT (id) DO UPDATE SET status = excluded.status, change_seq = nextval('change_seq')",
        (record_id, status),
    )
    conn.execute(f"NOTIFY {STATE_CHANNEL}")


async def next_event(subscription: Subscription, timeout_s: float = DELIVERY_DEADLINE_S) -> Event:
    with anyio.fail_after(timeout_s):
        return await subscription.get()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the feed's connection state signals nothing
            await anyio.sleep(0.01)


class Replica:
    """One replica's view: its bus, a subscription to it, its feed and what its listeners saw."""

    def __init__(self, url: str, origin: str, clock: Clock, poll_s: float) -> None:
        self.bus = EventBus(clock, run_id=origin)
        self.events = self.bus.subscribe()
        self.feed = ClusterFeed(url, origin=origin, bus=self.bus, clock=clock, poll_s=poll_s)
        self.state: list[tuple[str, str, Any]] = []
        self.records: list[tuple[str, list[str]]] = []
        self.state_seen = anyio.Event()
        self.records_seen = anyio.Event()
        self.feed.on_state(self._on_state)
        self.feed.on_records(self._on_records)

    def _on_state(self, component: str, key: str, value: Any) -> None:
        self.state.append((component, key, value))
        self.state_seen.set()

    def _on_records(self, table: str, ids: list[str]) -> None:
        self.records.append((table, ids))
        self.records_seen.set()

    async def next_state(self) -> tuple[str, str, Any]:
        with anyio.fail_after(DELIVERY_DEADLINE_S):
            await self.state_seen.wait()
        self.state_seen = anyio.Event()
        return self.state.pop(0)


@asynccontextmanager
async def replicas(
    url: str, *origins: str, clock: Clock, poll_s: float = SLOW_POLL_S
) -> AsyncIterator[list[Replica]]:
    running = [Replica(url, origin, clock, poll_s) for origin in origins]
    async with anyio.create_task_group() as tg:
        for replica in running:
            await tg.start(replica.feed.run)
        yield running
        tg.cancel_scope.cancel()


@pytest.fixture
def writer(pg_url: str) -> Any:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.mark.anyio
async def test_an_event_reaches_the_other_replica_within_1s_and_never_its_own(
    pg_url: str, writer: psycopg.Connection[Any], clock: ManualClock
) -> None:
    async with replicas(pg_url, "a", "b", clock=clock) as (a, b):
        assert a.feed.connected and b.feed.connected
        sent_at_s = time.perf_counter()
        insert_event(writer, "a", 1)
        received = await next_event(b.events)
        latency_s = time.perf_counter() - sent_at_s
        assert latency_s < DELIVERY_DEADLINE_S
        assert received.id == "a-1"
        assert received.type is EventType.FAILOVER_TRIGGERED
        assert (received.seq, received.provider, received.component) == (1, "mpesa", "healer")
        assert received.data == {"seq": 1, "nested": {"ok": True}}
        assert received.timestamp == 1_767_225_600.0 + 1

        # A reads in gid order: when B's later event reaches A, A's own would have come first.
        insert_event(writer, "b", 1)
        assert (await next_event(a.events)).id == "b-1"
        assert a.events.pending == 0
        assert (a.feed.events_received, b.feed.events_received) == (1, 1)
        assert b.events.pending == 0  # B's own event is not echoed back to it


@pytest.mark.anyio
async def test_the_poll_delivers_when_a_notification_is_lost(
    pg_url: str, writer: psycopg.Connection[Any], clock: ManualClock
) -> None:
    async with replicas(pg_url, "b", clock=clock, poll_s=0.1) as (b,):
        insert_event(writer, "a", 1, notify=False)
        assert (await next_event(b.events)).id == "a-1"


@pytest.mark.anyio
async def test_state_changes_deletions_and_records_reach_every_replica(
    pg_url: str, writer: psycopg.Connection[Any], clock: ManualClock
) -> None:
    async with replicas(pg_url, "a", "b", clock=clock) as (a, b):
        set_state(writer, "router", "kill_switch", {"engaged": True})
        for replica in (a, b):  # the writer's own replica hears its write too
            assert await replica.next_state() == ("router", "kill_switch", {"engaged": True})

        delete_state(writer, "router", "kill_switch")
        for replica in (a, b):
            assert await replica.next_state() == ("router", "kill_switch", None)

        with writer.transaction():
            put_record(writer, "incidents", "inc-1", "open")
            put_record(writer, "incidents", "inc-2", "open")
            put_record(writer, "optimizations", "opt-1", "applied")
        for replica in (a, b):
            with anyio.fail_after(DELIVERY_DEADLINE_S):
                await replica.records_seen.wait()
            assert sorted(replica.records) == [
                ("incidents", ["inc-1", "inc-2"]),
                ("optimizations", ["opt-1"]),
            ]
            assert replica.state == []
        assert b.feed.status().state_changes == 2
        assert b.feed.status().record_changes == 3


@pytest.mark.anyio
async def test_a_failing_listener_does_not_stop_the_others(
    pg_url: str, writer: psycopg.Connection[Any], clock: ManualClock
) -> None:
    def broken(component: str, key: str, value: Any) -> None:
        raise RuntimeError("listener bug")

    async with replicas(pg_url, "b", clock=clock) as (b,):
        b.feed.on_state(broken)
        set_state(writer, "scaler", "replicas", 3)
        assert await b.next_state() == ("scaler", "replicas", 3)
        insert_event(writer, "a", 1)
        assert (await next_event(b.events)).id == "a-1"  # the feed is still running


@pytest.mark.anyio
async def test_history_from_before_the_start_is_not_replayed(
    pg_url: str, writer: psycopg.Connection[Any], clock: ManualClock
) -> None:
    insert_event(writer, "a", 1)
    set_state(writer, "router", "old", 1)
    put_record(writer, "incidents", "old-incident", "open")
    async with replicas(pg_url, "b", clock=clock) as (b,):
        insert_event(writer, "a", 2)
        set_state(writer, "router", "new", 2)
        assert (await next_event(b.events)).id == "a-2"
        assert await b.next_state() == ("router", "new", 2)
        assert b.records == []
        assert b.events.pending == 0


@pytest.mark.anyio
async def test_an_event_committed_after_a_later_one_is_not_lost(
    pg_url: str, writer: psycopg.Connection[Any], clock: ManualClock
) -> None:
    """A batch that took its gid first but commits last (two replicas recording at once)."""
    async with replicas(pg_url, "b", clock=clock) as (b,):
        with psycopg.connect(pg_url) as slow:  # not autocommit: holds its gid uncommitted
            insert_event(slow, "a", 1)
            insert_event(writer, "c", 1)
            assert (await next_event(b.events)).id == "c-1"
            slow.commit()
        assert (await next_event(b.events)).id == "a-1"
        assert b.events.pending == 0


@pytest.mark.anyio
async def test_after_a_server_restart_the_feed_delivers_what_was_written_exactly_once() -> None:
    server = start_server()  # its own server: stopping the session's would break other tests
    try:
        url = server.create_database()
        async with replicas(url, "b", clock=SystemClock()) as (b,):
            with psycopg.connect(url, autocommit=True) as conn:
                insert_event(conn, "a", 1)
            assert (await next_event(b.events)).id == "a-1"

            # SIGINT is PostgreSQL's fast shutdown (ends sessions); `stop()`'s SIGTERM is the
            # smart one, which would wait for the feed's session to end on its own.
            assert server.process is not None
            server.process.send_signal(signal.SIGINT)
            await anyio.to_thread.run_sync(server.stop)
            await wait_until(lambda: not b.feed.connected)
            assert b.feed.status().last_error is not None
            await anyio.to_thread.run_sync(server.start)
            with psycopg.connect(url, autocommit=True) as conn:
                insert_event(conn, "a", 2)
                set_state(conn, "router", "route", "airtel")
            await wait_until(lambda: b.feed.connected)

            assert (await next_event(b.events, timeout_s=10)).id == "a-2"
            assert await b.next_state() == ("router", "route", "airtel")
            with psycopg.connect(url, autocommit=True) as conn:
                insert_event(conn, "a", 3)
            assert (await next_event(b.events)).id == "a-3"  # nothing repeated before it
            assert b.feed.status().events_received == 3
            assert b.feed.status().last_error is None
            assert b.feed.reconnects >= 1
    finally:
        server.close()


@pytest.mark.anyio
async def test_recorded_on_one_replica_published_on_the_other_and_not_recorded_twice(
    pg_url: str, clock: ManualClock
) -> None:
    """End to end with the real store: A's recorder writes, B's feed publishes, B's recorder skips."""
    store_a = PostgresStore(pg_url, origin="a").open()
    store_b = PostgresStore(pg_url, origin="b").open()
    try:
        async with replicas(pg_url, "a", "b", clock=clock) as (a, b), anyio.create_task_group() as tg:
            recorder_a = EventRecorder(a.bus, store_a)
            recorder_b = EventRecorder(b.bus, store_b)
            await tg.start(recorder_a.run)
            await tg.start(recorder_b.run)

            sent_at_s = time.perf_counter()
            emitted = a.bus.emit(EventType.SCALED_UP, component="auto_scaler", message="up", data={"n": 2})
            received = await next_event(b.events)
            assert time.perf_counter() - sent_at_s < DELIVERY_DEADLINE_S
            assert received == emitted

            store_a.set_state("router", "kill_switch", True, timestamp=clock.now())
            assert await b.next_state() == ("router", "kill_switch", True)
            store_a.delete_state("router", "kill_switch")
            assert await b.next_state() == ("router", "kill_switch", None)

            await wait_all_tasks_blocked()
            assert (recorder_b.written, recorder_b.skipped_remote) == (0, 1)
            assert store_b.count_events() == 1
            tg.cancel_scope.cancel()
    finally:
        store_a.close()
        store_b.close()


def test_poll_and_origin_are_validated(clock: ManualClock) -> None:
    bus = EventBus(clock)
    with pytest.raises(ValueError, match="poll_s"):
        ClusterFeed("postgresql:///x", origin="a", bus=bus, clock=clock, poll_s=0)
    with pytest.raises(ValueError, match="origin"):
        ClusterFeed("postgresql:///x", origin="", bus=bus, clock=clock)
