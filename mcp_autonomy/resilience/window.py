"""One sliding time window for every counter that must forget: breaker, retry budget, telemetry.

A ring of `window_s / bucket_s` time buckets, each a row of `fields` counters, with running
totals kept beside them (resilience4j's `SlidingTimeWindowMetrics`): adding is O(1), and buckets
that fall out of the window are subtracted from the totals as time moves, never re-summed. Time
is read only through the injected `Clock`.

The window holds the bucket containing "now" and the `bucket_count - 1` before it, so it spans
between `window_s - bucket_s` and `window_s` seconds. A sample stamped in the past (another
replica's call arriving late) goes to the bucket of its own time while that bucket is still in
the window, and is dropped otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from mcp_autonomy.clock import Clock

__all__ = ["MAX_WINDOW_BUCKETS", "SlidingTimeWindow"]

MAX_WINDOW_BUCKETS: Final = 3600
"""Bounds a ring's memory and the cost of expiring it after a long idle time."""

ExpireHook = Callable[[int], None]
"""Called with a slot index just before the slot is reused for a newer bucket."""


def _check_positive_seconds(field: str, value: float) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and value > 0):
        raise ValueError(f"{field} must be a finite number of seconds > 0, got {value!r}")


class SlidingTimeWindow:
    """A bucketed sliding time window of counters with O(1) totals.

    `add(now_s, field, amount)` counts into the bucket holding `now_s`; `totals[field]` is the sum
    over the window as of the last `advance` (every `add` and `totals_at` advances). `recent(span_s)`
    sums the newest buckets covering about `span_s` (O(buckets), for callers that ask for shorter
    windows than the ring holds). `on_expire` lets an owner clear per-bucket payloads of its own
    (a latency sketch) when a slot is reused.
    """

    __slots__ = (
        "_bucket_count",
        "_fields",
        "_head_index",
        "_monotonic",
        "_on_expire",
        "_rows",
        "bucket_s",
        "head_end_s",
        "head_row",
        "head_slot",
        "totals",
        "window_s",
    )

    def __init__(
        self,
        clock: Clock,
        *,
        window_s: float,
        bucket_s: float,
        fields: int = 1,
        on_expire: ExpireHook | None = None,
    ) -> None:
        _check_positive_seconds("window_s", window_s)
        _check_positive_seconds("bucket_s", bucket_s)
        buckets = round(window_s / bucket_s)
        if buckets < 1 or not math.isclose(buckets * bucket_s, window_s, rel_tol=1e-9):
            raise ValueError(f"window_s must be a whole multiple of bucket_s ({bucket_s}), got {window_s!r}")
        if buckets > MAX_WINDOW_BUCKETS:
            raise ValueError(
                f"window_s must be at most {MAX_WINDOW_BUCKETS} x bucket_s "
                f"({MAX_WINDOW_BUCKETS * bucket_s} s), got {window_s!r}"
            )
        if not isinstance(fields, int) or isinstance(fields, bool) or fields < 1:
            raise ValueError(f"fields must be an integer >= 1, got {fields!r}")
        self._monotonic = clock.monotonic
        self.window_s = float(window_s)
        self.bucket_s = float(bucket_s)
        self._bucket_count = buckets
        self._fields = fields
        self._on_expire = on_expire
        self._rows: list[list[float]] = [[0] * fields for _ in range(buckets)]
        self.totals: list[float] = [0] * fields
        """The window's sums per field (as of the last advance)."""
        self._head_index = 0
        self.head_slot = 0
        self.head_row = self._rows[0]
        """The counters of the newest bucket (the one `add` writes to)."""
        self.head_end_s = 0.0
        """Monotonic time at which the head bucket ends; callers compare against it to skip `advance`."""
        self._set_head(int(self._monotonic() // self.bucket_s))

    @property
    def bucket_count(self) -> int:
        """How many buckets the ring holds."""
        return self._bucket_count

    @property
    def head_start_s(self) -> float:
        """Monotonic time at which the newest bucket began."""
        return self._head_index * self.bucket_s

    def add(self, now_s: float, field: int, amount: float = 1) -> None:
        """Count `amount` into `field` of the bucket holding `now_s` (see the class docstring)."""
        if now_s >= self.head_end_s:
            self.advance(now_s)
        elif now_s < self._head_index * self.bucket_s:
            self._add_late(now_s, field, amount)
            return
        self.head_row[field] += amount
        self.totals[field] += amount

    def moves_at(self, now_s: float) -> bool:
        """Whether `advance(now_s)` would move the head (`head_end_s` may say so a hair early)."""
        return int(now_s // self.bucket_s) > self._head_index

    def slot_of(self, at_s: float) -> int | None:
        """The slot holding time `at_s` after advancing to it if it is newer; None once it left."""
        if at_s >= self.head_end_s:
            self.advance(at_s)
            return self.head_slot
        index = int(at_s // self.bucket_s)
        if index >= self._head_index:
            return self.head_slot
        if index <= self._head_index - self._bucket_count:
            return None
        return index % self._bucket_count

    def _add_late(self, at_s: float, field: int, amount: float) -> None:
        slot = self.slot_of(at_s)
        if slot is not None:
            self._rows[slot][field] += amount
            self.totals[field] += amount

    def advance(self, now_s: float) -> None:
        """Move the head to the bucket holding `now_s`, subtracting the buckets that left the window.

        A time before the head (a clock that stepped back) leaves the head where it is.
        """
        index = int(now_s // self.bucket_s)
        head = self._head_index
        if index <= head:
            return
        count = self._bucket_count
        totals = self.totals
        fields = range(self._fields)
        steps = min(index - head, count)
        for absolute in range(index - steps + 1, index + 1):
            slot = absolute % count
            row = self._rows[slot]
            for f in fields:
                if row[f]:
                    totals[f] -= row[f]
                    row[f] = 0
            if self._on_expire is not None:
                self._on_expire(slot)
        if steps == count:
            # Every bucket was reused: the totals are exactly zero (no float residue).
            totals[:] = [0] * self._fields
        self._set_head(index)

    def _set_head(self, index: int) -> None:
        self._head_index = index
        self.head_slot = index % self._bucket_count
        self.head_row = self._rows[self.head_slot]
        # Callers compare times instead of dividing; one float below the rounded product, so the
        # comparison may fire a hair early (a no-op `advance`) but never late.
        self.head_end_s = math.nextafter((index + 1) * self.bucket_s, -math.inf)

    def totals_at(self, now_s: float) -> list[float]:
        """The window's sums as of `now_s` (advancing first); the list is the live one, do not edit."""
        if now_s >= self.head_end_s:
            self.advance(now_s)
        return self.totals

    def clear(self) -> None:
        """Zero every bucket and total, and move the head to the bucket holding now."""
        for slot, row in enumerate(self._rows):
            row[:] = [0] * self._fields
            if self._on_expire is not None:
                self._on_expire(slot)
        self.totals[:] = [0] * self._fields
        self._set_head(int(self._monotonic() // self.bucket_s))

    def recent_slots(self, now_s: float, span_s: float) -> tuple[list[int], float]:
        """The slots of the newest buckets covering about `span_s` up to `now_s`, newest first, and
        the monotonic time the oldest of them began.

        The span is rounded to whole buckets (the head counts for the part of it already past), so
        the covered time is within half a bucket of `span_s`, and at most the whole ring.
        """
        self.totals_at(now_s)
        head_start = self._head_index * self.bucket_s
        older = round((span_s - (now_s - head_start)) / self.bucket_s)
        older = max(0, min(self._bucket_count - 1, older))
        count = self._bucket_count
        slots = [(self._head_index - k) % count for k in range(older + 1)]
        return slots, head_start - older * self.bucket_s

    def row(self, slot: int) -> list[float]:
        """The counters of one slot (as returned by `recent_slots` or `slot_of`); do not edit."""
        return self._rows[slot]

    def recent(self, now_s: float, span_s: float) -> tuple[list[float], float]:
        """Sums over the newest buckets covering about `span_s` (see `recent_slots`) and the
        monotonic time they start at."""
        slots, start_s = self.recent_slots(now_s, span_s)
        sums: list[float] = [0] * self._fields
        for slot in slots:
            row = self._rows[slot]
            for f in range(self._fields):
                sums[f] += row[f]
        return sums, start_s
