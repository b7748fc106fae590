"""EventRecorder: drains the event bus into the store in batches.

The bus never waits for the disk; the recorder holds a large subscription buffer and writes
whatever has queued up in one transaction. `flush()` writes what is pending right now, so a
reader that needs every event so far (a tool, a test) gets them.

Only this process run's own events are written: with a shared store the cluster feed
(`mcp_autonomy.pg.feed`) republishes other replicas' events on the local bus, and they are
already stored by the replica that emitted them.
"""

from __future__ import annotations

import logging

import anyio
from anyio.abc import TaskStatus

from mcp_autonomy.events import Event, EventBus, Subscription
from mcp_autonomy.store import StateStore, StoreError

logger = logging.getLogger(__name__)

RECORDER_BUFFER = 200_000
RETRY_S = 1.0
"""Wait between two writes while the store refuses them (an outage): the events wait in memory."""


class EventRecorder:
    """Persists every event this run published; counts what it wrote, dropped and skipped."""

    def __init__(self, bus: EventBus, store: StateStore, buffer_size: int = RECORDER_BUFFER) -> None:
        self._bus = bus
        self._store = store
        self._buffer_size = buffer_size
        # Ids the local bus emits are `<run id>-<seq>`; anything else came from another replica.
        self._own_prefix = f"{bus.run_id}-"
        self._subscription: Subscription | None = None
        self.written = 0
        self.skipped_remote = 0
        self._unwritten: list[Event] = []
        self.lost_in_outage = 0
        """Events dropped because the store stayed unreachable past `buffer_size` waiting events."""
        self.last_error: str | None = None

    def attach(self) -> None:
        """Start buffering events (before anything is published, so nothing is missed)."""
        if self._subscription is None:
            self._subscription = self._bus.subscribe(buffer_size=self._buffer_size)

    @property
    def dropped(self) -> int:
        return 0 if self._subscription is None else self._subscription.dropped

    def _write(self, batch: list[Event]) -> int:
        """Write this run's events of `batch` (and any an outage left waiting). While the store
        refuses, they wait in memory (bounded), and `StoreError` is raised."""
        prefix = self._own_prefix
        own = [event for event in batch if event.id.startswith(prefix)]
        self.skipped_remote += len(batch) - len(own)
        waiting = [*self._unwritten, *own]
        if not waiting:
            return 0
        try:
            self._store.record_events(waiting)
        except StoreError as exc:
            excess = len(waiting) - self._buffer_size
            if excess > 0:
                self.lost_in_outage += excess
                waiting = waiting[excess:]
            self._unwritten = waiting
            self.last_error = str(exc)
            raise
        self._unwritten = []
        self.last_error = None
        self.written += len(waiting)
        return len(waiting)

    def flush(self) -> int:
        """Write every pending event of this run now; returns how many."""
        if self._subscription is None:
            return 0
        return self._write(self._subscription.drain())

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write batches as events arrive, until cancelled (then write what is left)."""
        self.attach()
        subscription = self._subscription
        assert subscription is not None
        task_status.started()
        try:
            while True:
                first = await subscription.get()
                batch = [first, *subscription.drain()]
                while True:
                    try:
                        self._write(batch)
                        break
                    except StoreError as exc:  # an outage: the events wait, and are tried again
                        logger.warning("events not recorded yet (%d waiting): %s", len(self._unwritten), exc)
                        await anyio.sleep(RETRY_S)
                        batch = subscription.drain()
        finally:
            try:
                self.flush()
            except Exception:  # the store may already be closed on a crash path
                logger.exception("could not write the last events")
