from __future__ import annotations

from pathlib import Path

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import EventBus, EventType
from mcp_autonomy.store import Store


def test_events_audit_and_state_survive_reopening(tmp_path: Path) -> None:
    clock = ManualClock()
    bus = EventBus(clock, run_id="r1")
    path = tmp_path / "state" / "db.sqlite3"
    store = Store(path).open()
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

    reopened = Store(path).open()
    stored = reopened.query_events(types=[EventType.SCALED_UP])
    assert [e.message for e in stored] == ["up 0", "up 1", "up 2"]
    assert stored[0] == events[0]
    (record,) = reopened.audit_log()
    assert (record.id, record.tool, record.client, record.ok) == (audit_id, "scale_to", "test/1", True)
    assert record.arguments == {"replicas": 3, "reason": "load test"}
    assert reopened.get_state("auto_scaler", "mode") == "dry_run"
    assert reopened.get_state("auto_scaler", "missing", 7) == 7
    assert reopened.count_events_by_type() == {"scaled_up": 3}
    journal = reopened._db().execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"
    reopened.close()


def test_query_filters_by_provider_and_time(tmp_path: Path) -> None:
    clock = ManualClock()
    bus = EventBus(clock)
    store = Store(tmp_path / "db.sqlite3").open()
    early = bus.emit(EventType.HEALING_EVENT, component="h", message="a", provider="mpesa")
    clock._elapsed_s += 60
    late = bus.emit(EventType.HEALING_EVENT, component="h", message="b", provider="paystack")
    store.record_events([early, late])
    assert [e.message for e in store.query_events(provider="mpesa")] == ["a"]
    assert [e.message for e in store.query_events(since=late.timestamp)] == ["b"]
    assert [e.message for e in store.query_events(limit=1)] == ["b"]
