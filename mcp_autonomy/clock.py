"""Time, injected: the system clock for production and a manual clock for tests and replays.

Every loop in the engine reads time and sleeps through a `Clock`, never through `time` or
`anyio.sleep` directly, so a test or a trace replay can drive hours of behaviour in
milliseconds and get the same answer every run.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, runtime_checkable

import anyio
from anyio.lowlevel import checkpoint


@runtime_checkable
class Clock(Protocol):
    """A source of time and of sleeping.

    `now()` is wall-clock time in seconds since the epoch (timestamps in events and the store);
    `monotonic()` never goes backwards (durations, deadlines, windows).
    """

    def now(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def fail_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        """A scope that cancels its body and raises `TimeoutError` after `seconds` of this clock."""
        ...


def to_datetime(epoch_s: float) -> datetime:
    """An epoch timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch_s, tz=UTC)


def iso(epoch_s: float) -> str:
    """An epoch timestamp as ISO 8601 with a `Z` suffix, millisecond precision."""
    return to_datetime(epoch_s).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SystemClock:
    """The real clock: `time.time`, `time.monotonic` and `anyio.sleep`."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    def fail_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        return anyio.fail_after(seconds)


@dataclass(order=True)
class _Sleeper:
    wake_at: float
    seq: int
    event: anyio.Event = field(compare=False)
    on_wake: Callable[[], None] | None = field(default=None, compare=False)


class _ManualTimeout:
    """`ManualClock.fail_after`: a cancel scope armed with a timer in the clock's heap."""

    def __init__(self, clock: ManualClock, seconds: float) -> None:
        self._clock = clock
        self._seconds = seconds
        self._scope = anyio.CancelScope()
        self._fired = False
        self._timer: _Sleeper | None = None

    def _fire(self) -> None:
        self._fired = True
        self._scope.cancel()

    def __enter__(self) -> anyio.CancelScope:
        self._timer = self._clock._add_timer(self._seconds, self._fire)
        return self._scope.__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._timer is not None:
            self._timer.event.set()  # disarm
        suppressed = bool(self._scope.__exit__(exc_type, exc, tb))
        if self._fired and self._scope.cancelled_caught:
            raise TimeoutError
        return suppressed


_SETTLE_IDLE_ROUNDS = 3
"""Loop rounds in a row with every other task waiting before the manual clock moves on."""
_SETTLE_MAX_SPINS = 10_000
"""Past this many busy rounds a settle yields with a real millisecond (a task that never waits)."""


class ManualClock:
    """A clock that moves only when told to.

    `sleep()` parks the caller until `advance()` moves time past its deadline. `advance()`
    walks through the pending deadlines in order, waking each sleeper exactly at its deadline
    and letting every woken task run until all tasks are blocked again before moving on, so
    the interleaving of loops is deterministic and identical on every run.
    """

    DEFAULT_START_EPOCH_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a fixed, readable origin

    def __init__(self, start_epoch_s: float = DEFAULT_START_EPOCH_S) -> None:
        self._epoch_offset_s = start_epoch_s
        self._elapsed_s = 0.0
        self._sleepers: list[_Sleeper] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._epoch_offset_s + self._elapsed_s

    def monotonic(self) -> float:
        return self._elapsed_s

    @property
    def pending_sleepers(self) -> int:
        """How many tasks are parked in `sleep()` (or armed timeouts) right now."""
        return sum(1 for s in self._sleepers if not s.event.is_set())

    @property
    def next_deadline(self) -> float | None:
        """The monotonic time of the earliest pending sleeper, if any."""
        self._drop_cancelled()
        return self._sleepers[0].wake_at if self._sleepers else None

    async def sleep(self, seconds: float) -> None:
        if not math.isfinite(seconds):
            raise ValueError(f"sleep seconds must be finite, got {seconds}")
        if seconds <= 0:
            await checkpoint()
            return
        sleeper = _Sleeper(self._elapsed_s + seconds, next(self._seq), anyio.Event())
        heapq.heappush(self._sleepers, sleeper)
        try:
            await sleeper.event.wait()
        finally:
            # A cancelled sleeper stays in the heap with its event unset; it is skipped later.
            sleeper.event.set()

    def fail_after(self, seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError(f"timeout seconds must be finite and >= 0, got {seconds}")
        return _ManualTimeout(self, seconds)

    def _add_timer(self, seconds: float, on_wake: Callable[[], None]) -> _Sleeper:
        timer = _Sleeper(self._elapsed_s + seconds, next(self._seq), anyio.Event(), on_wake)
        heapq.heappush(self._sleepers, timer)
        return timer

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking every sleeper whose deadline falls inside."""
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError(f"advance seconds must be finite and >= 0, got {seconds}")
        target = self._elapsed_s + seconds
        await self._settle()
        while self._sleepers and self._sleepers[0].wake_at <= target:
            sleeper = heapq.heappop(self._sleepers)
            if sleeper.event.is_set():
                continue
            self._elapsed_s = max(self._elapsed_s, sleeper.wake_at)
            sleeper.event.set()
            if sleeper.on_wake is not None:
                sleeper.on_wake()
            await self._settle()
        self._elapsed_s = target
        await self._settle()

    async def advance_to(self, epoch_s: float) -> None:
        """Move time forward to the wall-clock instant `epoch_s`."""
        await self.advance(max(0.0, epoch_s - self.now()))

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0].event.is_set():
            heapq.heappop(self._sleepers)

    @staticmethod
    async def _settle() -> None:
        """Let every runnable task run until all are blocked again.

        On asyncio this yields to the loop (each yield also polls the sockets) until every other
        task has waited on something for `_SETTLE_IDLE_ROUNDS` rounds in a row: anyio's
        `wait_all_tasks_blocked` sleeps 100 ms of real time whenever a task is runnable, which
        made every simulated network answer cost a tenth of a second. Other backends use anyio's.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not asyncio (trio)
            await anyio.wait_all_tasks_blocked()
            return
        this_task = asyncio.current_task()
        idle_rounds = spins = 0
        while idle_rounds < _SETTLE_IDLE_ROUNDS:
            await asyncio.sleep(0 if spins < _SETTLE_MAX_SPINS else 0.001)
            busy = False
            for task in asyncio.all_tasks():
                if task is this_task:
                    continue
                waiter = task._fut_waiter  # type: ignore[attr-defined]  # what asyncio itself inspects
                if waiter is None or waiter.done():
                    busy = True
                    break
            if busy:
                idle_rounds = 0
                spins += 1
            else:
                idle_rounds += 1
