"""Per-provider telemetry as bounded, mergeable aggregates: counts per time bucket and latency sketches.

Every call the router makes is recorded here: when, how long, and how it ended. Nothing keeps the
samples themselves. Each provider has two rings of time buckets (`SlidingTimeWindow`): 10 s
buckets over the last 5 minutes and 2-minute buckets over the last hour. A bucket holds the count of
every outcome and a log-bucket latency sketch (`LatencySketch`, within 1 % of the exact value for
any quantile); running totals beside each ring make the full-ring figures O(1), and a shorter
window is the merge of its newest buckets, O(buckets) whatever the traffic. So a window always
covers its whole duration (to half a bucket) at any call rate, and memory per provider is bounded.

Recording stays O(1) and cheap on the payment path: two counter increments per ring and a list
append; the appended latencies are binned in one numpy pass when the bucket closes, when a
reader asks, or every `FLUSH_AT` calls. The router's guard buffers its successes and hands them
over in batches (`add_buffered_successes`); every reader calls its flusher first, so figures stay
exact.

Across replicas the figures are merges too: each replica exports its own calls
(`Telemetry.samples_since`, once `enable_export` is called) and adds the others' with
`record_remote` to a second set of aggregates per provider, so a leader's snapshots cover the
whole cluster. Prometheus counters stay this process's own.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.base import ErrorClass
from mcp_autonomy.resilience.window import SlidingTimeWindow
from mcp_autonomy.sketch import LatencySketch

DEFAULT_WINDOW_S: Final = 300.0
FINE_BUCKET_S: Final = 10.0
"""Width of the short ring's buckets: a 60 s window is six of them (covered to within 5 s)."""
FINE_SPAN_S: Final = DEFAULT_WINDOW_S
"""The short ring spans the default window, so the status figures come from its O(1) totals."""
COARSE_BUCKET_S: Final = 120.0
COARSE_SPAN_S: Final = 3600.0
"""The long ring: the optimizer's long-run window (an hour); longer windows are clamped to it."""
FLUSH_AT: Final = 1024
"""Latencies appended before they are binned at the latest: bounds the pending buffer (8 KB)."""
DEFAULT_EXPORT_CAPACITY: Final = 4096
"""Calls kept for export to other replicas (only once `enable_export` is called): the cluster
publisher drains them every second, so this covers ~4,000 calls a second per provider."""
ERROR_TIMES_KEPT: Final = 64
"""Times of recent provider errors kept per provider, to place the start of a run of errors when
other replicas' successes arrive out of order."""
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 20_000.0, 30_000.0, 60_000.0
)  # fmt: skip
"""Upper bounds (inclusive) of the cumulative latency histogram: mobile-money calls take from tens
of milliseconds (a status query) to tens of seconds (an STK push waiting on the handset)."""
_LATENCY_BOUNDS = np.array(LATENCY_BUCKETS_MS)


class Outcome(IntEnum):
    """How one provider call ended."""

    SUCCESS = 0
    NOT_PROCESSED = 1
    AMBIGUOUS = 2
    INVALID_REQUEST = 3
    AUTH = 4
    RATE_LIMITED = 5
    TIMEOUT = 6
    REJECTED = 7  # refused locally (breaker open, rate limit): never reached the provider
    CUSTOMER = 8  # the customer's side refused it (busy, no funds, ...): not the provider's error

    @classmethod
    def from_error_class(cls, error_class: ErrorClass) -> Outcome:
        return _BY_ERROR_CLASS[error_class]


_BY_ERROR_CLASS = {
    ErrorClass.NOT_PROCESSED: Outcome.NOT_PROCESSED,
    ErrorClass.AMBIGUOUS: Outcome.AMBIGUOUS,
    ErrorClass.INVALID_REQUEST: Outcome.INVALID_REQUEST,
    ErrorClass.AUTH: Outcome.AUTH,
    ErrorClass.RATE_LIMITED: Outcome.RATE_LIMITED,
    ErrorClass.CUSTOMER: Outcome.CUSTOMER,
}
_OUTCOMES: Final = len(Outcome)
_REJECTED = int(Outcome.REJECTED)  # a plain int: an enum member lookup costs ~150 ns on the hot path
_SUCCESS = int(Outcome.SUCCESS)
# Errors that say something about the provider's health; invalid requests are the caller's fault
# and local rejections never reached the provider.
_PROVIDER_ERROR_OUTCOMES = frozenset(
    {Outcome.NOT_PROCESSED, Outcome.AMBIGUOUS, Outcome.AUTH, Outcome.RATE_LIMITED, Outcome.TIMEOUT}
)
_IS_PROVIDER_ERROR: tuple[bool, ...] = tuple(o in _PROVIDER_ERROR_OUTCOMES for o in Outcome)
_QUANTILES: Final = (0.5, 0.95, 0.99)


class TelemetrySnapshot(BaseModel):
    """Measured figures for one provider over a window; null where there were no calls."""

    provider: str
    window_s: float
    covered_s: float = Field(
        description="How much time the merged buckets span (the window, to half a bucket)"
    )
    requests: int = Field(description="Calls that reached the provider")
    rejected_locally: int
    requests_per_min: float | None
    error_rate: float | None = Field(description="Provider-attributable errors / requests")
    errors_by_class: dict[str, int]
    latency_p50_ms: float | None = Field(description="Within 1 % of the exact quantile")
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    remote_requests: int = Field(
        default=0, description="Of `requests`, how many other replicas made (cluster-wide evidence)"
    )


@dataclass(frozen=True, slots=True)
class ExportedSample:
    """One of this process's calls, stamped with wall-clock time so another replica can use it."""

    provider: str
    at_s: float
    """Wall-clock seconds since the epoch."""
    outcome: int
    latency_ms: float


@dataclass(frozen=True, slots=True)
class TelemetryExport:
    """What `Telemetry.samples_since` returns: the samples, where to resume, and what was missed."""

    samples: list[ExportedSample]
    cursor: dict[str, int]
    """Pass back to the next `samples_since` call (per provider: samples exported or skipped)."""
    lost: int
    """Samples overwritten in the export ring before they could be exported (an export fell behind)."""


@dataclass(frozen=True, slots=True)
class _Figures:
    """Counts by outcome and the latency sketch over the buckets a window merged."""

    counts: list[int]
    sketch: LatencySketch
    start_s: float


class _Series:
    """One origin's aggregates for one provider (this process's calls, or the other replicas')."""

    __slots__ = (
        "coarse",
        "coarse_sketches",
        "coarse_total",
        "error_times",
        "fine",
        "fine_sketches",
        "fine_total",
        "last_error_at",
        "last_ok_at",
        "on_flush",
        "pending",
        "run_start_at",
    )

    def __init__(
        self, clock: Clock, on_flush: Callable[[npt.NDArray[np.float64]], None] | None = None
    ) -> None:
        self.fine = SlidingTimeWindow(
            clock, window_s=FINE_SPAN_S, bucket_s=FINE_BUCKET_S, fields=_OUTCOMES, on_expire=self._expire_fine
        )
        self.coarse = SlidingTimeWindow(
            clock,
            window_s=COARSE_SPAN_S,
            bucket_s=COARSE_BUCKET_S,
            fields=_OUTCOMES,
            on_expire=self._expire_coarse,
        )
        self.fine_sketches: list[LatencySketch | None] = [None] * self.fine.bucket_count
        self.coarse_sketches: list[LatencySketch | None] = [None] * self.coarse.bucket_count
        self.fine_total = LatencySketch()
        self.coarse_total = LatencySketch()
        self.pending: array[float] = array("d")
        """Latencies of calls in the newest fine bucket, not yet binned (8 bytes each)."""
        self.on_flush = on_flush
        self.last_ok_at: float | None = None
        """Monotonic time of the newest call that reached the provider and was not its error."""
        self.last_error_at: float | None = None
        self.run_start_at: float | None = None
        """The first provider error after `last_ok_at` (the start of the current run), if any."""
        self.error_times: deque[float] = deque(maxlen=ERROR_TIMES_KEPT)

    def _expire_fine(self, slot: int) -> None:
        sketch = self.fine_sketches[slot]
        if sketch is not None:
            self.fine_total.subtract(sketch)
            self.fine_sketches[slot] = None

    def _expire_coarse(self, slot: int) -> None:
        sketch = self.coarse_sketches[slot]
        if sketch is not None:
            self.coarse_total.subtract(sketch)
            self.coarse_sketches[slot] = None

    def flush(self) -> None:
        """Bin the pending latencies into the newest fine bucket's sketch (and the fine total).

        The coarse ring gets the fine bucket's sketch once, when the fine bucket closes (`roll`),
        so a flush costs two merges, not four.
        """
        pending = self.pending
        if not pending:
            return
        values = np.frombuffer(pending, dtype=np.float64)
        self.pending = array("d")
        self._add_sketch(LatencySketch.of(values), self.fine.head_slot, None)
        if self.on_flush is not None:
            self.on_flush(values)

    def _add_sketch(self, sketch: LatencySketch, fine_slot: int | None, coarse_slot: int | None) -> None:
        if fine_slot is not None:
            held = self.fine_sketches[fine_slot]
            if held is None:
                self.fine_sketches[fine_slot] = held = LatencySketch(compact=True)
            held.merge(sketch)
            self.fine_total.merge(sketch)
        if coarse_slot is not None:
            held = self.coarse_sketches[coarse_slot]
            if held is None:
                self.coarse_sketches[coarse_slot] = held = LatencySketch(compact=True)
            held.merge(sketch)
            self.coarse_total.merge(sketch)

    def roll(self, now_s: float) -> None:
        """Close the newest fine bucket (its latencies binned, its counts and sketch folded into
        the coarse bucket holding it), then move both rings to `now_s`.

        The per-call path writes the fine ring only; the coarse buckets are whole multiples of the
        fine ones, so a fine bucket always lies inside the coarse head bucket, and both rings move
        together, here only.
        """
        if now_s < self.fine.head_end_s or not self.fine.moves_at(now_s):
            return  # the second test: a time a hair before the bucket's end (it would fold twice)
        self.flush()
        fine_row = self.fine.head_row
        if any(fine_row):
            coarse_row, coarse_totals = self.coarse.head_row, self.coarse.totals
            for outcome, count in enumerate(fine_row):
                coarse_row[outcome] += count
                coarse_totals[outcome] += count
        head = self.fine_sketches[self.fine.head_slot]
        if head is not None:
            self._add_sketch(head, None, self.coarse.head_slot)
        self.fine.advance(now_s)
        self.coarse.advance(now_s)

    def record_late(self, outcome: int, latency_ms: float, at_s: float) -> None:
        """Count a call stamped before the newest fine bucket (another replica's, arriving late).

        Its fine bucket is closed (already folded into the coarse ring): both rings get it here.
        """
        fine_slot = self.fine.slot_of(at_s)
        coarse_slot = self.coarse.slot_of(at_s)
        if fine_slot is not None:
            self.fine.row(fine_slot)[outcome] += 1
            self.fine.totals[outcome] += 1
        if coarse_slot is not None:
            self.coarse.row(coarse_slot)[outcome] += 1
            self.coarse.totals[outcome] += 1
        if outcome != _REJECTED and (fine_slot is not None or coarse_slot is not None):
            sketch = LatencySketch()
            sketch.add(latency_ms)
            self._add_sketch(sketch, fine_slot, coarse_slot)

    def note_run(self, outcome: int, at_s: float) -> None:
        """Track the current run of provider errors (calls may arrive out of time order)."""
        if outcome == _REJECTED:
            return
        if _IS_PROVIDER_ERROR[outcome]:
            self.error_times.append(at_s)
            if self.last_error_at is None or at_s > self.last_error_at:
                self.last_error_at = at_s
            after_last_ok = self.last_ok_at is None or at_s > self.last_ok_at
            if after_last_ok and (self.run_start_at is None or at_s < self.run_start_at):
                self.run_start_at = at_s
        elif self.last_ok_at is None or at_s > self.last_ok_at:
            self.last_ok_at = at_s
            self.run_start_at = _first_after(self.error_times, at_s)

    def figures(self, now_s: float, window_s: float, *, bin_pending: bool = True) -> _Figures:
        """Counts and latency sketch over the newest buckets covering about `window_s`.

        Without `bin_pending` the sketch holds the calls binned so far (see `snapshot`).
        """
        self.roll(now_s)
        if bin_pending:
            self.flush()
        if window_s <= FINE_SPAN_S:
            ring, sketches, total = self.fine, self.fine_sketches, self.fine_total
        else:
            ring, sketches, total = self.coarse, self.coarse_sketches, self.coarse_total
        slots, start_s = ring.recent_slots(now_s, window_s)
        whole = len(slots) == ring.bucket_count
        if ring is self.fine and whole:
            # The whole short ring: its running totals, O(1) in the number of buckets.
            return _Figures([int(v) for v in ring.totals], total, start_s)
        if whole:
            counts = [int(v) for v in ring.totals]
            parts = [total]
        else:
            counts = [int(sum(column)) for column in zip(*(ring.row(slot) for slot in slots), strict=True)]
            parts = [held for slot in slots if (held := sketches[slot]) is not None]
        if ring is self.coarse:
            # The open fine bucket is folded into the coarse ring only when it closes.
            counts = [int(a + b) for a, b in zip(counts, self.fine.head_row, strict=True)]
            open_bucket = self.fine_sketches[self.fine.head_slot]
            if open_bucket is not None:
                parts.append(open_bucket)
        sketch = LatencySketch.merged(parts)
        return _Figures(counts, sketch, start_s)


def _first_after(times: deque[float], after_s: float) -> float | None:
    later = [t for t in times if t > after_s]
    return min(later) if later else None


class ProviderTelemetry:
    """Aggregates of one provider's calls: this process's, and other replicas' (`record_remote`).

    Figures cover both unless asked for this process's own only.
    """

    def __init__(
        self,
        provider: str,
        clock: Clock,
        *,
        export: bool = False,
        export_capacity: int = DEFAULT_EXPORT_CAPACITY,
    ) -> None:
        if not isinstance(export_capacity, int) or export_capacity < 16:
            raise ValueError(f"export_capacity must be an integer >= 16, got {export_capacity!r}")
        self.provider = provider
        self._clock = clock
        self._monotonic = clock.monotonic
        self._local = _Series(clock, on_flush=self._count_latencies)
        self._remote: _Series | None = None  # allocated on the first remote call
        self.remote_recorded = 0
        # Cumulative since start, for /metrics: windows forget, Prometheus counters must not.
        # `outcome_totals[o]` counts calls that ended with outcome `o`; the latency histogram
        # (`latency_bucket_counts`, LATENCY_BUCKETS_MS plus one slot above every bound) and sum
        # are filled when pending latencies are binned, so a record stays O(1).
        self._outcome_totals: list[int] = [0] * _OUTCOMES
        self._latency_buckets = np.zeros(len(LATENCY_BUCKETS_MS) + 1, dtype=np.int64)
        self._latency_sum_ms = 0.0
        # This process's calls for other replicas: allocated only when exporting (a cluster).
        self._export_capacity = export_capacity
        self._export_at: array[float] | None = None
        self._export_latency_ms: array[float] = array("d")
        self._export_outcome: array[int] = array("b")
        self._export_next = 0
        self._export_count = 0
        self.export_recorded = 0
        self._flushers: list[Callable[[], None]] = []
        if export:
            self.enable_export()

    def add_flusher(self, flush: Callable[[], None]) -> None:
        """Register a caller that buffers successes (the router's `CallGuard`): `flush` hands them
        over with `add_buffered_successes`, and is called before any figure is read or another
        call recorded, so buffered calls count in order and in their own bucket."""
        self._flushers.append(flush)

    def _flush_buffered(self) -> None:
        for flush in self._flushers:
            flush()

    def successes_bufferable_until(self, now_s: float) -> float | None:
        """Until when (monotonic) this process's successes may be buffered and handed over later,
        or None: within the open fine bucket (they are counted in it), and never while exporting
        (the export ring keeps each call's own time)."""
        fine = self._local.fine
        if self._export_at is not None or now_s >= fine.head_end_s:
            return None
        return fine.head_end_s

    def add_buffered_successes(self, latencies_ms: array[float], last_at_s: float) -> None:
        """Count successes made in the open fine bucket (see `successes_bufferable_until`), the
        newest at monotonic `last_at_s`, as `record` would have one by one. Calls no flusher."""
        count = len(latencies_ms)
        if not count:
            return
        series = self._local
        fine = series.fine
        fine.head_row[_SUCCESS] += count
        fine.totals[_SUCCESS] += count
        self._outcome_totals[_SUCCESS] += count
        pending = series.pending
        pending.extend(latencies_ms)
        if len(pending) >= FLUSH_AT:
            series.flush()
        series.last_ok_at = last_at_s
        series.run_start_at = None

    @property
    def outcome_totals(self) -> list[int]:
        """Calls that ended with each outcome since start (`outcome_totals[o]`), for /metrics."""
        if self._flushers:
            self._flush_buffered()
        return self._outcome_totals

    def enable_export(self) -> None:
        """Keep this process's calls from now on for `samples_since` (a cluster publisher)."""
        self._flush_buffered()  # buffered calls have no time of their own to export
        if self._export_at is None:
            self._export_at = array("d", bytes(8 * self._export_capacity))
            self._export_latency_ms = array("d", bytes(8 * self._export_capacity))
            self._export_outcome = array("b", bytes(self._export_capacity))

    def _count_latencies(self, values: npt.NDArray[np.float64]) -> None:
        self._latency_buckets += np.bincount(
            np.searchsorted(_LATENCY_BOUNDS, values, side="left"), minlength=len(LATENCY_BUCKETS_MS) + 1
        )
        self._latency_sum_ms += float(values.sum())

    @property
    def total_recorded(self) -> int:
        """This process's calls recorded since start (local rejections included)."""
        return sum(self.outcome_totals)

    @property
    def latency_bucket_counts(self) -> list[int]:
        """Cumulative calls that reached the provider per latency bucket (see LATENCY_BUCKETS_MS)."""
        self._flush_buffered()
        self._local.flush()
        counts: list[int] = self._latency_buckets.tolist()
        return counts

    @property
    def latency_sum_ms(self) -> float:
        """Cumulative latency of the calls that reached the provider."""
        self._flush_buffered()
        self._local.flush()
        return self._latency_sum_ms

    def record(self, outcome: int, latency_ms: float, now_s: float | None = None) -> None:
        """Count one call (an `Outcome`), stamped with the clock's monotonic time (the payment
        path: O(1)); `now_s` is that time when the caller has just read it."""
        if self._flushers:
            self._flush_buffered()  # buffered successes came first
        now = self._monotonic() if now_s is None else now_s
        series = self._local
        fine = series.fine
        if now >= fine.head_end_s:
            series.roll(now)
        # The windows' fast path: write the head buckets and totals directly.
        fine.head_row[outcome] += 1
        fine.totals[outcome] += 1
        self._outcome_totals[outcome] += 1
        if outcome != _REJECTED:
            pending = series.pending
            pending.append(latency_ms)
            if len(pending) >= FLUSH_AT:
                series.flush()
            if _IS_PROVIDER_ERROR[outcome]:
                series.note_run(outcome, now)
            else:
                series.last_ok_at = now
                if series.run_start_at is not None:
                    series.run_start_at = None
        export_at = self._export_at
        if export_at is not None:
            i = self._export_next
            export_at[i] = now
            self._export_latency_ms[i] = latency_ms
            self._export_outcome[i] = outcome
            self._export_next = i + 1 if i + 1 < self._export_capacity else 0
            if self._export_count < self._export_capacity:
                self._export_count += 1
            self.export_recorded += 1

    def record_remote(self, outcome: int, latency_ms: float, at_monotonic: float) -> None:
        """Add another replica's call, stamped in this clock's monotonic time.

        It counts in snapshots, `failing_since` and `latencies_ms`, never in the Prometheus
        counters (`outcome_totals`, latency buckets): each replica exports its own.
        """
        series = self._remote
        if series is None:
            series = self._remote = _Series(self._clock)
        fine = series.fine
        if at_monotonic >= fine.head_end_s:
            series.roll(at_monotonic)
        if at_monotonic >= fine.head_start_s:
            fine.head_row[outcome] += 1
            fine.totals[outcome] += 1
            if outcome != _REJECTED:
                series.pending.append(latency_ms)
                if len(series.pending) >= FLUSH_AT:
                    series.flush()
        else:
            series.record_late(outcome, latency_ms, at_monotonic)
        series.note_run(outcome, at_monotonic)
        self.remote_recorded += 1

    def samples_since(
        self, cursor: int, limit: int | None = None
    ) -> tuple[list[tuple[float, int, float]], int, int]:
        """This process's calls recorded after `cursor` (a past `export_recorded`), oldest first.

        Returns ((monotonic time, outcome, latency ms) samples, the cursor to resume from, how many
        were overwritten before this call). At most `limit` samples: the rest wait for the next call.
        Empty until `enable_export` is called.
        """
        self._flush_buffered()
        if not 0 <= cursor <= self.export_recorded:
            raise ValueError(f"cursor must be within [0, {self.export_recorded}], got {cursor}")
        export_at = self._export_at
        pending = self.export_recorded - cursor
        if export_at is None or not pending:
            return [], cursor, 0
        available = min(pending, self._export_count)
        lost = pending - available
        taken = available if limit is None else min(available, max(0, limit))
        capacity = self._export_capacity
        first = (self._export_next - available) % capacity
        samples = []
        for k in range(taken):
            i = (first + k) % capacity
            samples.append((export_at[i], self._export_outcome[i], self._export_latency_ms[i]))
        return samples, cursor + lost + taken, lost

    def _series(self, include_remote: bool) -> list[_Series]:
        """The series a reader merges (buffered successes handed over first)."""
        if self._flushers:
            self._flush_buffered()
        if include_remote and self._remote is not None:
            return [self._local, self._remote]
        return [self._local]

    def _figures(
        self, window_s: float, include_remote: bool, bin_pending: bool = True
    ) -> tuple[list[_Figures], float]:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0 seconds, got {window_s!r}")
        now_s = self._monotonic()
        series = self._series(include_remote)
        return [s.figures(now_s, window_s, bin_pending=bin_pending) for s in series], now_s

    def snapshot(
        self, window_s: float = DEFAULT_WINDOW_S, *, include_remote: bool = True, bin_pending: bool = True
    ) -> TelemetrySnapshot:
        """Figures over the last `window_s` seconds (other replicas' calls too, by default).

        Merges the newest buckets covering about `window_s` (the whole 5-minute ring for the
        default: O(1)); `covered_s` says how much time they span. Windows past an hour are
        clamped to the hour the long ring holds.

        `bin_pending=False` (status pages) leaves the latencies not yet binned where they are:
        counts and rates stay exact, the latency quantiles cover the calls binned so far (every
        closed 10 s bucket, and the open one's calls up to the last `FLUSH_AT`), and the read's
        cost no longer depends on the traffic since the previous one.
        """
        parts, now_s = self._figures(window_s, include_remote, bin_pending)
        counts = list(parts[0].counts)
        sketch = parts[0].sketch
        remote_requests = 0
        if len(parts) > 1:
            remote = parts[1]
            counts = [a + b for a, b in zip(counts, remote.counts, strict=True)]
            remote_requests = sum(remote.counts) - remote.counts[_REJECTED]
            if remote.sketch.count:
                sketch = LatencySketch.merged((sketch, remote.sketch))
        covered_s = now_s - min(p.start_s for p in parts)
        rate_over_s = max(1.0, covered_s)
        requests = sum(counts) - counts[_REJECTED]
        errors = sum(n for o, n in enumerate(counts) if _IS_PROVIDER_ERROR[o])
        quantiles = sketch.quantiles(_QUANTILES)
        p50, p95, p99 = quantiles if quantiles is not None else (None, None, None)
        return TelemetrySnapshot(
            provider=self.provider,
            window_s=window_s,
            covered_s=round(covered_s, 3),
            requests=requests,
            rejected_locally=counts[_REJECTED],
            requests_per_min=None if requests == 0 else requests * 60.0 / rate_over_s,
            error_rate=None if requests == 0 else errors / requests,
            errors_by_class={
                o.name.lower(): counts[o] for o in Outcome if o is not Outcome.SUCCESS and counts[o]
            },
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            latency_p99_ms=p99,
            remote_requests=remote_requests,
        )

    def latency_quantiles_ms(
        self, quantiles: Sequence[float], window_s: float = DEFAULT_WINDOW_S, *, include_remote: bool = True
    ) -> tuple[int, list[float] | None]:
        """(calls that reached the provider, their latency at each quantile) over the window."""
        sketch = self._merged_sketch(window_s, include_remote)
        return sketch.count, sketch.quantiles(quantiles)

    def _merged_sketch(self, window_s: float, include_remote: bool) -> LatencySketch:
        parts, _ = self._figures(window_s, include_remote)
        return parts[0].sketch if len(parts) == 1 else LatencySketch.merged(p.sketch for p in parts)

    def failing_since(
        self, window_s: float = DEFAULT_WINDOW_S, *, include_remote: bool = True
    ) -> float | None:
        """Wall time of the first provider error of the current run of errors, within the window.

        The run is the calls since the last success (local rejections do not break it: they never
        reached the provider). None when the latest call that reached the provider succeeded, or
        there is none in the window: this is the earliest evidence of a failure still going on,
        which incidents use to measure time to detect. Other replicas' calls count by when they
        were made: a success anywhere in the cluster ends the run.
        """
        series = self._series(include_remote)
        now_s = self._monotonic()
        window_start_s = now_s - window_s
        last_ok = max((s.last_ok_at for s in series if s.last_ok_at is not None), default=None)
        last_error = max((s.last_error_at for s in series if s.last_error_at is not None), default=None)
        if (
            last_error is None
            or last_error < window_start_s
            or (last_ok is not None and last_ok >= last_error)
        ):
            return None
        after_s = window_start_s if last_ok is None else max(last_ok, window_start_s)
        candidates = [
            t for s in series for t in s.error_times if t > after_s or (t == after_s and last_ok is None)
        ]
        candidates += [
            s.run_start_at
            for s in series
            if s.run_start_at is not None
            and s.run_start_at >= after_s
            and (last_ok is None or s.run_start_at > last_ok)
        ]
        if not candidates:
            return None
        start_s = min(candidates)
        return self._clock.now() - (now_s - start_s)

    def latencies_ms(
        self, window_s: float = DEFAULT_WINDOW_S, *, include_remote: bool = True
    ) -> npt.NDArray[np.float64]:
        """Latencies of the calls that reached the provider within the window, ascending.

        Rebuilt from the latency sketch: every value within 1 % of the one recorded, the count exact.
        """
        return self._merged_sketch(window_s, include_remote).values()


class Telemetry:
    """Telemetry for every provider, plus the process-wide transaction rate."""

    def __init__(
        self, clock: Clock, *, export: bool = False, export_capacity: int = DEFAULT_EXPORT_CAPACITY
    ) -> None:
        self._clock = clock
        self._export = export
        self._export_capacity = export_capacity
        self._providers: dict[str, ProviderTelemetry] = {}
        self._payments = ProviderTelemetry("*", clock)

    def provider(self, name: str) -> ProviderTelemetry:
        found = self._providers.get(name)
        if found is None:
            found = self._providers[name] = ProviderTelemetry(
                name, self._clock, export=self._export, export_capacity=self._export_capacity
            )
        return found

    def enable_export(self) -> None:
        """Keep every provider's calls from now on for `samples_since` (cluster telemetry calls it)."""
        self._export = True
        for telemetry in self._providers.values():
            telemetry.enable_export()

    def record_call(self, provider: str, outcome: int, latency_ms: float, now_s: float | None = None) -> None:
        """One call to `provider` (see `ProviderTelemetry.record`)."""
        self.provider(provider).record(outcome, latency_ms, now_s)

    def record_remote(self, provider: str, outcome: int, latency_ms: float, at_monotonic: float) -> None:
        """Another replica's call to `provider` (see `ProviderTelemetry.record_remote`)."""
        self.provider(provider).record_remote(outcome, latency_ms, at_monotonic)

    def samples_since(
        self, cursor: Mapping[str, int] | None = None, *, limit: int | None = None
    ) -> TelemetryExport:
        """This process's provider calls recorded since `cursor`, for other replicas.

        Times are converted to wall clock. Local rejections are skipped (they never reached the
        provider and each replica's guards decide its own); other replicas' calls are never
        exported again. At most `limit` samples, oldest providers' backlog first per provider.
        """
        cursor = cursor or {}
        now_s, mono_s = self._clock.now(), self._clock.monotonic()
        samples: list[ExportedSample] = []
        next_cursor: dict[str, int] = {}
        lost = 0
        for name, telemetry in self._providers.items():
            room = None if limit is None else max(0, limit - len(samples))
            taken, next_cursor[name], lost_here = telemetry.samples_since(cursor.get(name, 0), room)
            lost += lost_here
            samples.extend(
                ExportedSample(name, now_s - (mono_s - at), outcome, latency_ms)
                for at, outcome, latency_ms in taken
                if outcome != _REJECTED
            )
        return TelemetryExport(samples=samples, cursor=next_cursor, lost=lost)

    def record_payment(self, outcome: Outcome, latency_ms: float) -> None:
        """One payment handled end to end (whatever providers it took)."""
        self._payments.record(outcome, latency_ms)

    def transactions_per_minute(self, window_s: float = 60.0) -> float | None:
        """Payments per minute over the last `window_s`; None before any payment."""
        if self._payments.total_recorded == 0:
            return None
        snap = self._payments.snapshot(window_s)
        return 0.0 if snap.requests_per_min is None else snap.requests_per_min

    def snapshots(self, window_s: float = DEFAULT_WINDOW_S) -> dict[str, TelemetrySnapshot]:
        return {name: t.snapshot(window_s) for name, t in self._providers.items()}
