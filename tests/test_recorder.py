"""The recorder writes this run's events, never events another replica already stored."""

from __future__ import annotations

from pathlib import Path

import anyio
from anyio import wait_all_tasks_blocked

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import Event, EventBus, EventType
from mcp_autonomy.recorder import EventRecorder
from mcp_autonomy.store import Store


def _remote_event(clock: ManualClock, seq: int) -> Event:
    """What the cluster feed publishes for an event another replica (run `other`) recorded."""
    return Event(
        seq=seq,
        id=f"other-{seq}",
        type=EventType.SCALED_UP,
        timestamp=clock.now(),
        component="auto_scaler",
        message=f"remote {seq}",
    )


def test_flush_records_own_events_and_skips_remote_ones(tmp_path: Path, clock: ManualClock) -> None:
    bus = EventBus(clock, run_id="local")
    store = Store(tmp_path / "db.sqlite3").open()
    recorder = EventRecorder(bus, store)
    recorder.attach()
    bus.emit(EventType.SCALED_UP, component="auto_scaler", message="local 1")
    bus.publish(_remote_event(clock, 1))
    bus.emit(EventType.SCALED_DOWN, component="auto_scaler", message="local 2")
    assert recorder.flush() == 2
    assert [e.id for e in store.query_events()] == ["local-1", "local-2"]
    assert (recorder.written, recorder.skipped_remote) == (2, 1)
    store.close()


def test_run_does_not_record_a_batch_of_only_remote_events(tmp_path: Path, clock: ManualClock) -> None:
    bus = EventBus(clock, run_id="local")
    store = Store(tmp_path / "db.sqlite3").open()
    recorder = EventRecorder(bus, store)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(recorder.run)
            bus.publish(_remote_event(clock, 1))
            bus.publish(_remote_event(clock, 2))
            bus.emit(EventType.SCALED_UP, component="auto_scaler", message="local 1")
            await wait_all_tasks_blocked()  # the recorder has taken the whole batch
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert [e.id for e in store.query_events()] == ["local-1"]
    assert recorder.skipped_remote == 2
    store.close()


def test_run_id_is_the_prefix_of_emitted_ids(clock: ManualClock) -> None:
    bus = EventBus(clock, run_id="abc123")
    assert bus.run_id == "abc123"
    assert bus.emit(EventType.SCALED_UP, component="c", message="m").id == "abc123-1"
