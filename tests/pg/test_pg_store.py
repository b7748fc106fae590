"""What only the shared PostgreSQL store does: outages and reconnection, fencing, change
notifications, change sequence numbers, and never showing the password."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator

import psycopg
import pytest

from mcp_autonomy.events import Event, EventType
from mcp_autonomy.pg import fencing
from mcp_autonomy.pg.store import PostgresStore
from mcp_autonomy.store import Fence, LeadershipLost, StateStore, StoreUnavailable
from tests.postgres import PostgresServer, start_server

NOTIFY_WAIT_S = 2.0
"""How long a test waits for a notification that must come (it comes in about a millisecond)."""
NO_NOTIFY_WAIT_S = 0.3
"""How long a test listens to be sure a notification does not come."""


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_url, origin="run-a").open()
    yield opened
    opened.close()


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server of this test's own, to stop and start (the session one stays up for the rest)."""
    server = start_server()
    try:
        yield server
    finally:
        server.close()


SERVER_STOP_WAIT_S = 15.0


def _stop_now(server: PostgresServer) -> None:
    """A fast shutdown (SIGINT): clients are cut off, as in an outage. `PostgresServer.stop`
    sends SIGTERM, a *smart* shutdown that waits for every client to leave first."""
    assert server.process is not None
    server.process.send_signal(signal.SIGINT)
    server.process.wait(timeout=SERVER_STOP_WAIT_S)
    server.process = None


def _event(n: int, *, at: float = 1.0) -> Event:
    return Event(
        seq=n, id=f"run-a-{n}", type=EventType.HEALING_EVENT, timestamp=at, component="t", message=f"m{n}"
    )


def _sql(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query.encode())
        return cursor.fetchall() if cursor.description else []


def test_it_is_a_state_store(store: PostgresStore) -> None:
    typed: StateStore = store  # mypy checks the protocol
    assert typed.shared is True and typed.is_open
    # The tests' server listens on a unix socket: its directory is shown, never a user or password.
    assert store.url_redacted.startswith("postgresql:///t_") and "?host=/" in store.url_redacted


def test_a_closed_store_does_not_connect_again(pg_url: str) -> None:
    store = PostgresStore(pg_url, origin="run-a")
    with pytest.raises(RuntimeError, match="not open"):
        store.get_state("c", "k")
    assert store.open() is store.open()  # opening an open store: the same, still open
    store.close()
    with pytest.raises(RuntimeError, match="not open"):
        store.set_state("c", "k", 1, timestamp=1.0)


# --- outages ------------------------------------------------------------------------------


def test_an_outage_raises_store_unavailable_and_the_next_call_after_it_reconnects(
    own_server: PostgresServer,
) -> None:
    url = own_server.create_database()
    store = PostgresStore(url, origin="run-a").open()
    try:
        store.set_state("switch", "engaged", False, timestamp=1.0)
        store.record_events([_event(1)])

        _stop_now(own_server)
        with pytest.raises(StoreUnavailable, match="unavailable"):
            store.set_state("switch", "engaged", True, timestamp=2.0)
        with pytest.raises(StoreUnavailable):
            store.record_events([_event(2), _event(3)])
        with pytest.raises(StoreUnavailable):  # reconnecting while down fails the same way
            store.get_state("switch", "engaged")
        assert store.is_open  # still open: it recovers on its own

        # Attempts are spaced out while it is down: a call in the back-off fails at once.
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="next attempt in"):
            store.get_state("switch", "engaged")
        assert time.monotonic() - started < 0.05

        own_server.start()
        deadline = time.monotonic() + 10
        while True:  # the next attempt after the back-off reconnects by itself
            try:
                engaged = store.get_state("switch", "engaged")
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "never reconnected"
                time.sleep(0.05)
        # Nothing of the refused writes landed, and the counters agree with the rows.
        assert engaged is False
        assert [e.seq for e in store.query_events()] == [1]
        assert store.count_events() == 1
        assert _sql(url, "SELECT COUNT(*) FROM events") == [(1,)]
        store.set_state("switch", "engaged", True, timestamp=3.0)
        assert store.get_state("switch", "engaged") is True
    finally:
        store.close()


def test_opening_while_the_database_is_down_raises_store_unavailable(own_server: PostgresServer) -> None:
    url = own_server.create_database()
    own_server.stop()
    store = PostgresStore(url, origin="run-a")
    with pytest.raises(StoreUnavailable):
        store.open()
    assert not store.is_open
    own_server.start()
    assert store.open().is_open
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://admin:secret123@127.0.0.1:1/payments",
        "postgresql://admin@127.0.0.1:1/payments?password=secret123",
    ],
)
def test_the_password_never_appears_in_store_unavailable(url: str) -> None:
    store = PostgresStore(url, origin="run-a")
    with pytest.raises(StoreUnavailable) as raised:
        store.open()
    message = str(raised.value)
    assert "postgresql://127.0.0.1:1/payments" in message
    assert "secret123" not in message and "admin" not in message
    assert "secret123" not in repr(raised.value)
    assert "secret123" not in store.url_redacted


def test_a_password_in_the_driver_message_is_scrubbed() -> None:
    # libpq does not echo passwords today; the store must not rely on that.
    store = PostgresStore("postgresql://u:hunter2pass@127.0.0.1:1/db", origin="run-a")
    error = store._unavailable(psycopg.OperationalError("auth failed for hunter2pass\nmore"))
    assert "hunter2pass" not in str(error)
    assert str(error) == "state store postgresql://127.0.0.1:1/db unavailable: auth failed for ***"


# --- fencing -------------------------------------------------------------------------------


def test_fenced_writes_pass_while_leading_and_are_refused_after_a_takeover(
    store: PostgresStore, pg_url: str
) -> None:
    _sql(
        pg_url,
        "INSERT INTO leadership (loop, epoch, holder, acquired_at, renewed_at)"
        " VALUES ('healer', 1, 'run-a', 0, 0)",
    )
    fence = Fence(loop="healer", epoch=1, holder="run-a")
    store.set_state("healer", "route", {"mpesa": "airtel"}, timestamp=1.0, fence=fence)
    store.put_record("incidents", id="i1", provider="mpesa", status="open", at=1.0, record="{}", fence=fence)
    store.record_load(1.0, 10.0, keep_s=60.0, fence=fence)
    store.set_state("healer", "doomed", 1, timestamp=1.0, fence=fence)
    store.delete_state("healer", "doomed", fence=fence)

    _sql(pg_url, "UPDATE leadership SET epoch = 2, holder = 'run-b' WHERE loop = 'healer'")
    with pytest.raises(LeadershipLost, match="epoch 1"):
        store.set_state("healer", "route", {"mpesa": "mtn"}, timestamp=2.0, fence=fence)
    with pytest.raises(LeadershipLost):
        store.put_record(
            "incidents", id="i1", provider="mpesa", status="resolved", at=2.0, record='{"v":2}', fence=fence
        )
    with pytest.raises(LeadershipLost):
        store.record_load(2.0, 99.0, keep_s=60.0, fence=fence)
    store.set_state("healer", "kept", 1, timestamp=1.0)  # unfenced writes are not leader writes
    with pytest.raises(LeadershipLost):
        store.delete_state("healer", "kept", fence=fence)

    assert store.get_state("healer", "route") == {"mpesa": "airtel"}
    assert store.get_record("incidents", "i1") == "{}"
    assert store.load_samples(since=0.0) == [(1.0, 10.0)]
    assert store.get_state("healer", "kept") == 1
    # The refusal leaves the connection usable.
    assert store.set_state("healer", "route", "x", timestamp=3.0, fence=Fence("healer", 2, "run-b")) is None


def test_a_fence_for_a_loop_nobody_leads_is_refused(store: PostgresStore) -> None:
    with pytest.raises(LeadershipLost, match="no leader recorded"):
        store.set_state("scaler", "desired", 3, timestamp=1.0, fence=Fence("scaler", 1, "run-a"))
    assert store.get_state("scaler", "desired") is None


# --- what the other replicas learn ---------------------------------------------------------


@pytest.fixture
def listener(pg_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    conn = psycopg.connect(pg_url, autocommit=True)
    conn.execute(f"LISTEN {fencing.STATE_CHANNEL}".encode())
    conn.execute(f"LISTEN {fencing.EVENTS_CHANNEL}".encode())
    yield conn
    conn.close()


def _channels(conn: psycopg.Connection[tuple[object, ...]], *, wait_s: float, expected: int) -> list[str]:
    return [n.channel for n in conn.notifies(timeout=wait_s, stop_after=expected)]


def test_state_record_and_event_writes_notify_the_other_replicas(
    store: PostgresStore, listener: psycopg.Connection[tuple[object, ...]]
) -> None:
    store.set_state("switch", "engaged", True, timestamp=1.0)
    assert _channels(listener, wait_s=NOTIFY_WAIT_S, expected=1) == [fencing.STATE_CHANNEL]
    store.delete_state("switch", "engaged")
    assert _channels(listener, wait_s=NOTIFY_WAIT_S, expected=1) == [fencing.STATE_CHANNEL]
    store.put_record("incidents", id="i1", provider=None, status="open", at=1.0, record="{}")
    assert _channels(listener, wait_s=NOTIFY_WAIT_S, expected=1) == [fencing.STATE_CHANNEL]
    store.record_events([_event(1)])
    assert _channels(listener, wait_s=NOTIFY_WAIT_S, expected=1) == [fencing.EVENTS_CHANNEL]
    # Nothing new, nothing refused, nothing to tell.
    store.record_events([_event(1)])
    with pytest.raises(LeadershipLost):
        store.set_state("switch", "engaged", False, timestamp=2.0, fence=Fence("healer", 1, "run-a"))
    assert _channels(listener, wait_s=NO_NOTIFY_WAIT_S, expected=1) == []


def test_every_state_and_record_change_takes_a_new_change_seq(store: PostgresStore, pg_url: str) -> None:
    def state_seq() -> int:
        rows = _sql(pg_url, "SELECT change_seq FROM component_state WHERE component = 'c' AND key = 'k'")
        return int(str(rows[0][0]))

    def tombstones() -> list[tuple[object, ...]]:
        return _sql(pg_url, "SELECT component, key, change_seq FROM component_state_deleted")

    store.set_state("c", "k", 1, timestamp=1.0)
    first = state_seq()
    store.set_state("c", "k", 2, timestamp=2.0)
    second = state_seq()
    assert second > first

    store.delete_state("c", "k")
    ((component, key, deleted_seq),) = tombstones()
    assert (component, key) == ("c", "k") and int(str(deleted_seq)) > second
    store.delete_state("c", "k")  # deleting again moves the tombstone on
    assert int(str(tombstones()[0][2])) > int(str(deleted_seq))
    store.set_state("c", "k", 3, timestamp=3.0)
    assert tombstones() == []  # set again: no longer deleted
    assert state_seq() > int(str(deleted_seq))

    store.put_record("optimizations", id="o1", provider=None, status="applied", at=1.0, record="{}")
    (before,) = _sql(pg_url, "SELECT change_seq FROM optimizations WHERE id = 'o1'")
    store.put_record("optimizations", id="o1", provider=None, status="reverted", at=2.0, record="{}")
    (after,) = _sql(pg_url, "SELECT change_seq FROM optimizations WHERE id = 'o1'")
    assert int(str(after[0])) > int(str(before[0]))


def test_events_carry_the_store_origin_and_odd_values_do_not_fail_a_batch(
    store: PostgresStore, pg_url: str
) -> None:
    odd = Event(
        seq=7,
        id="run-a-7",
        type=EventType.PREDICTION,
        timestamp=1.0,
        component="predictor",
        message="odd\x00message",
        data={"score": math.nan, "bound": [math.inf, 1.5], "why": {"x": -math.inf, "raw": "a\x00b"}},
    )
    assert store.record_events([odd, _event(8)]) == 2
    assert _sql(pg_url, "SELECT DISTINCT origin FROM events") == [("run-a",)]
    (stored,) = store.query_events(types=[EventType.PREDICTION])
    assert stored.message == "odd\ufffdmessage"
    assert stored.data == {"score": None, "bound": [None, 1.5], "why": {"x": None, "raw": "a\ufffdb"}}
    store.set_state("c", "k", {"text": "\x00", "literal": "\\u0000"}, timestamp=1.0)
    assert store.get_state("c", "k") == {"text": "\ufffd", "literal": "\\u0000"}


def test_two_replicas_share_one_store(pg_url: str) -> None:
    first = PostgresStore(pg_url, origin="run-a").open()
    second = PostgresStore(pg_url, origin="run-b").open()
    try:
        first.record_events([_event(1)])
        second.record_events(
            [
                Event(
                    seq=1,
                    id="run-b-1",
                    type=EventType.HEALING_EVENT,
                    timestamp=1.0,
                    component="t",
                    message="b",
                )
            ]
        )
        # Same timestamp and seq from two replicas: both kept, in the order they were stored.
        assert [e.id for e in first.query_events()] == ["run-a-1", "run-b-1"]
        assert second.count_events_by_type() == {"healing_event": 2}
        assert sorted(r[0] for r in _sql(pg_url, "SELECT origin FROM events")) == ["run-a", "run-b"]
    finally:
        first.close()
        second.close()
