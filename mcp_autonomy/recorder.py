"""EventRecorder: drains the event bus into the store in batches.

The bus never waits for the disk; the recorder holds a large subscription buffer and writes
whatever has queued up in one transaction. `flush()` writes what is pending right now, so a
reader that needs every event so far (a tool, a test) gets them.
"""

from __future__ import annotations

import logging

import anyio
from anyio.abc import TaskStatus

from mcp_autonomy.events import EventBus, Subscription
from mcp_autonomy.store import Store

logger = logging.getLogger(__name__)

RECORDER_BUFFER = 200_000


class EventRecorder:
    """Persists every published event; counts what it wrote and what it had to drop."""

    def __init__(self, bus: EventBus, store: Store, buffer_size: int = RECORDER_BUFFER) -> None:
        self._bus = bus
        self._store = store
        self._buffer_size = buffer_size
        self._subscription: Subscription | None = None
        self.written = 0

    def attach(self) -> None:
        """Start buffering events (before anything is published, so nothing is missed)."""
        if self._subscription is None:
            self._subscription = self._bus.subscribe(buffer_size=self._buffer_size)

    @property
    def dropped(self) -> int:
        return 0 if self._subscription is None else self._subscription.dropped

    def flush(self) -> int:
        """Write every pending event now; returns how many."""
        if self._subscription is None:
            return 0
        batch = self._subscription.drain()
        if batch:
            self._store.record_events(batch)
            self.written += len(batch)
        return len(batch)

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
                self._store.record_events(batch)
                self.written += len(batch)
        finally:
            try:
                self.flush()
            except Exception:  # the store may already be closed on a crash path
                logger.exception("could not write the last events")
