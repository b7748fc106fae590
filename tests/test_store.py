"""The state store's behaviour, pinned on both backends (SQLite `Store`, `PostgresStore`), plus
the SQLite file's own concerns (WAL, migrating an old file and its counters)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mcp_autonomy import store as store_module
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import Event, EventBus, EventType
from mcp_autonomy.pg import store as pg_store_module
from mcp_autonomy.pg.store import PostgresStore
from mcp_autonomy.store import _MIGRATIONS, SCHEMA_VERSION, StateStore, Store
from tests.postgres import PostgresServer

OpenStore = Callable[[], StateStore]
"""Opens another store on the same database (a restart, or a second replica)."""


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    opened: list[StateStore] = []
    if request.param == "sqlite":
        path = tmp_path / "state" / "db.sqlite3"

        def make() -> StateStore:
            return Store(path).open()
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database()

        def make() -> StateStore:
            return PostgresStore(url, origin=f"run-{len(opened)}").open()

    def opener() -> StateStore:
        store = make()
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def state_store(open_store: OpenStore) -> StateStore:
    """An open store of each backend, on a fresh database."""
    return open_store()


def _event(
    n: int, type: EventType = EventType.HEALING_EVENT, *, at: float, provider: str | None = None
) -> Event:
    return Event(
        seq=n,
        id=f"run-{n}",
        type=type,
        timestamp=at,
        component="test",
        message=f"m{n}",
        provider=provider,
        data={"n": n, "nested": {"ok": True, "list": [1, 2.5, "x"]}},
    )


def test_events_audit_and_state_survive_reopening(open_store: OpenStore) -> None:
    clock = ManualClock()
    bus = EventBus(clock, run_id="r1")
    store = open_store()
    events = [bus.emit(EventType.SCALED_UP, component="auto_scaler", message=f"up {i}") for i in range(3)]
    assert store.record_events(events) == 3
    assert store.record_events(events) == 0  # idempotent by event id
    audit_id = store.record_audit(
        timestamp=clock.now(),
        tool="scale_to",
        arguments={"replicas": 3, "reason": "load test"},
        client="test/1",
        reason="load test",
        ok=True,
        result={"desired": 3},
    )
    store.set_state("auto_scaler", "mode", "dry_run", timestamp=clock.now())
    store.close()
    assert not store.is_open

    reopened = open_store()
    assert reopened.is_open
    stored = reopened.query_events(types=[EventType.SCALED_UP])
    assert [e.message for e in stored] == ["up 0", "up 1", "up 2"]
    assert stored[0] == events[0]
    (record,) = reopened.audit_log()
    assert (record.id, record.tool, record.client, record.ok) == (audit_id, "scale_to", "test/1", True)
    assert record.arguments == {"replicas": 3, "reason": "load test"}
    assert record.result == {"desired": 3}
    assert reopened.get_state("auto_scaler", "mode") == "dry_run"
    assert reopened.get_state("auto_scaler", "missing", 7) == 7
    assert reopened.count_events_by_type() == {"scaled_up": 3}
    assert reopened.count_events() == 3
    assert reopened.count_audit() == 1


def test_query_filters_by_provider_and_time(state_store: StateStore) -> None:
    clock = ManualClock()
    bus = EventBus(clock)
    early = bus.emit(EventType.HEALING_EVENT, component="h", message="a", provider="mpesa")
    clock._elapsed_s += 60
    late = bus.emit(EventType.HEALING_EVENT, component="h", message="b", provider="paystack")
    state_store.record_events([early, late])
    assert [e.message for e in state_store.query_events(provider="mpesa")] == ["a"]
    assert [e.message for e in state_store.query_events(since=late.timestamp)] == ["b"]
    assert [e.message for e in state_store.query_events(limit=1)] == ["b"]


def test_query_returns_the_newest_matching_oldest_first(state_store: StateStore) -> None:
    events = [
        _event(n, EventType.SCALED_UP if n % 2 else EventType.SCALED_DOWN, at=100.0 + n) for n in range(10)
    ]
    state_store.record_events(events)
    up = state_store.query_events(types=[EventType.SCALED_UP], limit=3)
    assert [e.seq for e in up] == [5, 7, 9]
    assert up[-1] == events[9]  # data (nested JSON) comes back as it went in
    both = state_store.query_events(types=["scaled_up", EventType.SCALED_DOWN], limit=4)
    assert [e.seq for e in both] == [6, 7, 8, 9]
    # Same timestamp: the sequence number orders them.
    tied = [_event(n, at=500.0) for n in range(20, 23)]
    state_store.record_events(tied)
    assert [e.seq for e in state_store.query_events(since=500.0)] == [20, 21, 22]


def test_a_batch_with_a_repeated_event_counts_it_once(state_store: StateStore) -> None:
    first = _event(1, at=1.0)
    assert state_store.record_events([first, first, _event(2, at=2.0)]) == 2
    assert state_store.record_events([]) == 0
    assert state_store.count_events() == 2
    assert state_store.count_events_by_type() == {"healing_event": 2}


def test_prune_events_drops_old_events_and_keeps_counts_and_audit(
    state_store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches, so the prune has to loop over several of them.
    monkeypatch.setattr(store_module, "PRUNE_BATCH_ROWS", 4)
    monkeypatch.setattr(pg_store_module, "PRUNE_BATCH_ROWS", 4)
    events = [
        _event(n, EventType.SCALED_UP if n < 7 else EventType.SCALED_DOWN, at=float(n)) for n in range(12)
    ]
    state_store.record_events(events)
    state_store.record_audit(
        timestamp=0.0, tool="pause", arguments={}, client=None, reason=None, ok=True, result=None
    )
    assert state_store.count_events_by_type() == {"scaled_down": 5, "scaled_up": 7}

    assert state_store.prune_events(before=9.0) == 9  # timestamps 0..8
    assert [e.seq for e in state_store.query_events(limit=100)] == [9, 10, 11]
    assert state_store.count_events() == 3
    assert state_store.count_events_by_type() == {"scaled_down": 3}  # none left: not listed
    assert state_store.count_audit() == 1  # the audit log is never pruned
    assert state_store.prune_events(before=9.0) == 0
    # Counts keep following new rows after a prune.
    state_store.record_events([_event(50, EventType.SCALED_UP, at=50.0)])
    assert state_store.count_events_by_type() == {"scaled_down": 3, "scaled_up": 1}


def test_audit_log_filters_by_tool_newest_first_limit(state_store: StateStore) -> None:
    for n, tool in enumerate(["pause", "scale_to", "pause", "pause"]):
        state_store.record_audit(
            timestamp=float(n),
            tool=tool,
            arguments={"n": n},
            client="c",
            reason=None if n else "why",
            ok=n != 1,
            result=[n, "done"],
        )
    records = state_store.audit_log(tool="pause", limit=2)
    assert [r.arguments for r in records] == [{"n": 2}, {"n": 3}]
    assert [r.result for r in records] == [[2, "done"], [3, "done"]]
    everything = state_store.audit_log()
    assert [r.tool for r in everything] == ["pause", "scale_to", "pause", "pause"]
    assert [r.id for r in everything] == sorted(r.id for r in everything)
    assert (everything[0].reason, everything[1].ok) == ("why", False)
    assert state_store.count_audit() == 4


def test_audit_entries_are_counted_per_caller(state_store: StateStore) -> None:
    for n, client in enumerate(["token:ops via rest:a", "token:ops via rest:a", "oauth:x via mcp", None]):
        state_store.record_audit(
            timestamp=float(n), tool="scale_to", arguments={}, client=client, reason="r", ok=True, result=None
        )
    assert state_store.count_audit_by_client() == {"token:ops via rest:a": 2, "oauth:x via mcp": 1, "": 1}


def test_records_insert_replace_and_list(state_store: StateStore) -> None:
    put = state_store.put_record
    put("incidents", id="i1", provider="mpesa", status="open", at=10.0, record='{"id":"i1"}')
    put("incidents", id="i2", provider="airtel", status="open", at=20.0, record='{"id":"i2"}')
    put("incidents", id="i3", provider="mpesa", status="resolved", at=30.0, record='{"id":"i3"}')
    put("incidents", id="i0", provider="mpesa", status="open", at=30.0, record='{"id":"i0"}')
    put("predictions", id="p1", provider=None, status="pending", at=5.0, record='{"id":"p1"}')
    assert state_store.get_record("incidents", "i2") == '{"id":"i2"}'
    assert state_store.get_record("incidents", "nope") is None
    assert state_store.get_record("predictions", "i1") is None

    put("incidents", id="i1", provider="mpesa", status="resolved", at=40.0, record='{"id":"i1","v":2}')
    assert state_store.get_record("incidents", "i1") == '{"id":"i1","v":2}'
    listed = state_store.list_records("incidents")
    assert listed == ['{"id":"i2"}', '{"id":"i0"}', '{"id":"i3"}', '{"id":"i1","v":2}']
    assert state_store.list_records("incidents", provider="mpesa", statuses=["resolved"]) == [
        '{"id":"i3"}',
        '{"id":"i1","v":2}',
    ]
    assert state_store.list_records("incidents", since=30.0, limit=2) == ['{"id":"i3"}', '{"id":"i1","v":2}']
    assert state_store.list_records("predictions") == ['{"id":"p1"}']
    with pytest.raises(ValueError, match="unknown record table"):
        state_store.get_record("payments", "x")


def test_load_samples_keep_only_the_window(state_store: StateStore) -> None:
    for minute in range(5):
        state_store.record_load(60.0 * minute, 100.0 + minute, keep_s=150.0)
    state_store.record_load(240.0, 999.0, keep_s=150.0)  # same instant: replaced
    assert state_store.load_samples(since=0.0) == [(120.0, 102.0), (180.0, 103.0), (240.0, 999.0)]
    assert state_store.load_samples(since=150.0) == [(180.0, 103.0), (240.0, 999.0)]


def test_state_values_round_trip_and_delete(state_store: StateStore) -> None:
    values: dict[str, object] = {
        "dict": {"a": 1, "b": [True, None, 2.5], "c": {"d": "e"}},
        "list": [3, 2, 1],
        "int": 42,
        "float": 0.25,
        "bool": False,
        "none": None,
        "text": "ünïcode",
    }
    for key, value in values.items():
        state_store.set_state("c", key, value, timestamp=1.0)
    for key, value in values.items():
        assert state_store.get_state("c", key, "default") == value
    state_store.set_state("c", "int", 43, timestamp=2.0)
    assert state_store.get_state("c", "int") == 43
    state_store.delete_state("c", "int")
    state_store.delete_state("c", "never-set")
    assert state_store.get_state("c", "int", "gone") == "gone"
    state_store.set_state("c", "int", 44, timestamp=3.0)
    assert state_store.get_state("c", "int") == 44
    assert state_store.get_state("other", "dict") is None


def test_a_second_store_on_the_same_database_sees_the_writes(open_store: OpenStore) -> None:
    first, second = open_store(), open_store()
    first.set_state("kill_switch", "engaged", True, timestamp=1.0)
    first.record_events([_event(1, at=1.0)])
    assert second.get_state("kill_switch", "engaged") is True
    assert second.count_events() == 1
    second.delete_state("kill_switch", "engaged")
    assert first.get_state("kill_switch", "engaged") is None


# --- SQLite only: the file ----------------------------------------------------------------


def test_sqlite_uses_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3").open()
    try:
        assert store._db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.shared is False
    finally:
        store.close()


def _v6_database(path: Path) -> None:
    """A database as v6 left it, with events and payments but no counters."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for version in range(1, 7):
            db.executescript("BEGIN;" + _MIGRATIONS[version] + f"PRAGMA user_version={version};COMMIT;")
        for n, type in enumerate(["scaled_up", "scaled_up", "prediction"]):
            db.execute(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
                (f"old-{n}", n, type, float(n), "c", None, "info", 0, "m", "{}"),
            )
        for key, provider, status in [
            ("k1", "mpesa", "pending"),
            ("k2", "mpesa", "pending"),
            ("k3", "mpesa", "succeeded"),
            ("k4", None, "failed"),
        ]:
            _insert_payment(db, key, provider, status)
    finally:
        db.close()


def _insert_payment(db: sqlite3.Connection, key: str, provider: str | None, status: str) -> None:
    db.execute(
        "INSERT INTO payments (idempotency_key, operation, amount_minor, currency, phone, country,"
        " status, provider, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (key, "collect", 100, "KES", "+254700000000", "KE", status, provider, 1.0, 1.0),
    )


def _payment_counts(store: Store) -> dict[tuple[str, str], int]:
    with store.connection() as db:
        rows = db.execute("SELECT provider, status, count FROM payment_counts WHERE count > 0").fetchall()
    return {(str(r[0]), str(r[1])): int(r[2]) for r in rows}


def test_v6_file_migrates_with_counters_backfilled_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "v6.sqlite3"
    _v6_database(path)
    store = Store(path).open()
    try:
        with store.connection() as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        assert store.count_events_by_type() == {"prediction": 1, "scaled_up": 2}
        assert store.count_events() == 3
        assert _payment_counts(store) == {
            ("mpesa", "pending"): 2,
            ("mpesa", "succeeded"): 1,
            ("", "failed"): 1,
        }

        # The triggers keep them from now on: insert, status change, provider change, delete.
        with store.connection() as db:
            _insert_payment(db, "k5", "airtel", "pending")
            db.execute("UPDATE payments SET status = 'succeeded' WHERE idempotency_key = 'k1'")
            db.execute("UPDATE payments SET provider = 'airtel' WHERE idempotency_key = 'k4'")
            db.execute("UPDATE payments SET updated_at = 9.0 WHERE idempotency_key = 'k2'")
            db.execute("DELETE FROM payments WHERE idempotency_key = 'k3'")
        assert _payment_counts(store) == {
            ("mpesa", "pending"): 1,
            ("mpesa", "succeeded"): 1,
            ("airtel", "failed"): 1,
            ("airtel", "pending"): 1,
        }
        store.record_events([_event(9, EventType.PREDICTION, at=9.0)])
        assert store.count_events_by_type() == {"prediction": 2, "scaled_up": 2}
        assert store.prune_events(before=1.5) == 2
        assert store.count_events_by_type() == {"prediction": 2}
    finally:
        store.close()


def test_claim_state_keeps_the_first_value_written(state_store: StateStore) -> None:
    """Replicas starting together must agree on one callback token: the first claim wins."""
    assert state_store.claim_state("server", "callback_token", "first-token-value", timestamp=1.0) == (
        "first-token-value"
    )
    assert state_store.claim_state("server", "callback_token", "second-token-val", timestamp=2.0) == (
        "first-token-value"
    )
    assert state_store.get_state("server", "callback_token") == "first-token-value"
