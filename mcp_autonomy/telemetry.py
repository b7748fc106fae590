"""Per-provider rolling telemetry on numpy ring buffers (lists on the hot path, numpy for the figures).

Every call the router makes is recorded here: when, how long, and how it ended. Snapshots
compute request rate, error rate by class and latency percentiles over a time window from
the samples still inside it. The buffers are fixed-size: recording is O(1) and allocates
nothing; when more calls arrive within the window than the buffer holds, the oldest are
overwritten and the snapshot says how much of the window it really covers.

Across replicas the figures are mergeable: each replica exports its own samples
(`Telemetry.samples_since`) and adds the others' to a second ring per provider (`record_remote`),
so a leader's snapshots cover the whole cluster. Prometheus counters stay this process's own.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from pydantic import BaseModel, Field

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.base import ErrorClass

DEFAULT_CAPACITY = 16_384
DEFAULT_WINDOW_S = 300.0
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 20_000.0, 30_000.0, 60_000.0
)  # fmt: skip
"""Upper bounds (inclusive) of the cumulative latency histogram: mobile-money calls take from tens
of milliseconds (a status query) to tens of seconds (an STK push waiting on the handset)."""


class Outcome(IntEnum):
    """How one provider call ended (stored as int8 in the ring)."""

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
_REJECTED = int(Outcome.REJECTED)  # a plain int: an enum member lookup costs ~150 ns on the hot path
# Errors that say something about the provider's health; invalid requests are the caller's fault
# and local rejections never reached the provider.
_PROVIDER_ERRORS = np.array(
    [
        o in (Outcome.NOT_PROCESSED, Outcome.AMBIGUOUS, Outcome.AUTH, Outcome.RATE_LIMITED, Outcome.TIMEOUT)
        for o in Outcome
    ]
)


class TelemetrySnapshot(BaseModel):
    """Measured figures for one provider over a window; null where there were no samples."""

    provider: str
    window_s: float
    covered_s: float = Field(description="How much of the window the samples span")
    requests: int = Field(description="Calls that reached the provider")
    rejected_locally: int
    requests_per_min: float | None
    error_rate: float | None = Field(description="Provider-attributable errors / requests")
    errors_by_class: dict[str, int]
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    remote_requests: int = Field(
        default=0, description="Of `requests`, how many other replicas made (cluster-wide evidence)"
    )


@dataclass(frozen=True, slots=True)
class ExportedSample:
    """One of this process's samples, stamped with wall-clock time so another replica can use it."""

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
    """Samples overwritten in the ring before they could be exported (an export fell behind)."""


class ProviderTelemetry:
    """A ring of (time, latency, outcome) samples for one provider.

    A second ring, filled by `record_remote`, holds other replicas' samples of the same provider;
    figures cover both unless asked for this process's own only.
    """

    def __init__(self, provider: str, clock: Clock, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 16:
            raise ValueError(f"capacity must be >= 16, got {capacity}")
        self.provider = provider
        self._clock = clock
        # Plain lists on the hot path (an item assignment costs ~30 ns, a numpy one ~500 ns);
        # snapshots, which are rare, turn them into arrays.
        self._at: list[float] = [0.0] * capacity
        self._latency_ms: list[float] = [0.0] * capacity
        self._outcome: list[int] = [0] * capacity
        self._capacity = capacity
        self._next = 0
        self._count = 0
        self.total_recorded = 0
        # Cumulative since start, for /metrics: the ring forgets, Prometheus counters must not.
        # `outcome_totals[o]` counts calls that ended with outcome `o`; `latency_bucket_counts[i]`
        # counts calls that reached the provider with latency in (bound[i-1], bound[i]] of
        # LATENCY_BUCKETS_MS (the last slot: above every bound), so a record stays O(1) + a bisect.
        self.outcome_totals: list[int] = [0] * len(Outcome)
        self.latency_bucket_counts: list[int] = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.latency_sum_ms = 0.0
        # Other replicas' samples: allocated on the first one (a single process never needs them).
        self._remote_at: list[float] = []
        self._remote_latency_ms: list[float] = []
        self._remote_outcome: list[int] = []
        self._remote_next = 0
        self._remote_count = 0
        self.remote_recorded = 0

    def record(self, outcome: Outcome, latency_ms: float) -> None:
        """Add one sample stamped with the clock's monotonic time."""
        i = self._next
        self._at[i] = self._clock.monotonic()
        self._latency_ms[i] = latency_ms
        self._outcome[i] = outcome  # an IntEnum is an int
        self._next = i + 1 if i + 1 < self._capacity else 0
        if self._count < self._capacity:
            self._count += 1
        self.total_recorded += 1
        self.outcome_totals[outcome] += 1
        if outcome != _REJECTED:
            self.latency_bucket_counts[bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
            self.latency_sum_ms += latency_ms

    def record_remote(self, outcome: int, latency_ms: float, at_monotonic: float) -> None:
        """Add another replica's sample, stamped in this clock's monotonic time.

        It counts in snapshots, `failing_since` and `latencies_ms`, never in the Prometheus
        counters (`outcome_totals`, latency buckets): each replica exports its own.
        """
        if not self._remote_at:
            self._remote_at = [0.0] * self._capacity
            self._remote_latency_ms = [0.0] * self._capacity
            self._remote_outcome = [0] * self._capacity
        i = self._remote_next
        self._remote_at[i] = at_monotonic
        self._remote_latency_ms[i] = latency_ms
        self._remote_outcome[i] = outcome
        self._remote_next = i + 1 if i + 1 < self._capacity else 0
        if self._remote_count < self._capacity:
            self._remote_count += 1
        self.remote_recorded += 1

    def samples_since(
        self, cursor: int, limit: int | None = None
    ) -> tuple[list[tuple[float, int, float]], int, int]:
        """This process's samples recorded after `cursor` (a past `total_recorded`), oldest first.

        Returns ((monotonic time, outcome, latency ms) samples, the cursor to resume from, how many
        were overwritten before this call). At most `limit` samples: the rest wait for the next call.
        """
        if not 0 <= cursor <= self.total_recorded:
            raise ValueError(f"cursor must be within [0, {self.total_recorded}], got {cursor}")
        pending = self.total_recorded - cursor
        available = min(pending, self._count)
        lost = pending - available
        taken = available if limit is None else min(available, max(0, limit))
        first = (self._next - available) % self._capacity
        samples = []
        for k in range(taken):
            i = (first + k) % self._capacity
            samples.append((self._at[i], self._outcome[i], self._latency_ms[i]))
        return samples, cursor + lost + taken, lost

    def _window(
        self, window_s: float, include_remote: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, float]:
        """The samples inside the window: (times, latencies, outcomes, how many are remote, and the
        start of the part of the window the rings really cover)."""
        now_s = self._clock.monotonic()
        start_s = now_s - window_s
        rings = [(self._at, self._latency_ms, self._outcome, self._count)]
        if include_remote and self._remote_count:
            rings.append((self._remote_at, self._remote_latency_ms, self._remote_outcome, self._remote_count))
        covered_from_s = start_s
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for at_list, lat_list, out_list, n in rings:
            at = np.array(at_list[:n], dtype=np.float64)
            if n == self._capacity and at.size:
                # A full ring may have overwritten samples still inside the window: the merged
                # figures then only cover the time since its oldest sample.
                covered_from_s = max(covered_from_s, float(at.min()))
            parts.append(
                (at, np.array(lat_list[:n], dtype=np.float32), np.array(out_list[:n], dtype=np.int8))
            )
        masked = []
        for at, lat, out in parts:
            mask = at >= covered_from_s
            masked.append((at[mask], lat[mask], out[mask]))
        remote = int(masked[1][0].size) if len(masked) > 1 else 0
        if len(masked) == 1:
            at, lat, out = masked[0]
        else:
            at = np.concatenate([m[0] for m in masked])
            lat = np.concatenate([m[1] for m in masked])
            out = np.concatenate([m[2] for m in masked])
        return at, lat, out, remote, covered_from_s

    def snapshot(
        self, window_s: float = DEFAULT_WINDOW_S, *, include_remote: bool = True
    ) -> TelemetrySnapshot:
        """Figures over the last `window_s` seconds (other replicas' samples too, by default)."""
        now_s = self._clock.monotonic()
        at, lat, out, remote, covered_from_s = self._window(window_s, include_remote)
        reached = out != Outcome.REJECTED
        requests = int(reached.sum())
        remote_requests = int(reached[at.size - remote :].sum()) if remote else 0
        counts = np.bincount(out.astype(np.int64), minlength=len(Outcome))
        errors = int(counts[_PROVIDER_ERRORS].sum())
        # Rates are computed over the part of the window the samples cover (at least one second).
        truncated = covered_from_s > now_s - window_s
        window_covered = (
            max(1.0, min(window_s, now_s - covered_from_s)) if truncated and at.size else window_s
        )
        p50 = p95 = p99 = None
        reached_lat = lat[reached]
        if reached_lat.size:
            p50, p95, p99 = (float(v) for v in np.percentile(reached_lat, [50, 95, 99]))
        return TelemetrySnapshot(
            provider=self.provider,
            window_s=window_s,
            covered_s=round(window_covered, 3),
            requests=requests,
            rejected_locally=int(counts[Outcome.REJECTED]),
            requests_per_min=None if requests == 0 else requests * 60.0 / window_covered,
            error_rate=None if requests == 0 else errors / requests,
            errors_by_class={
                o.name.lower(): int(counts[o]) for o in Outcome if o is not Outcome.SUCCESS and counts[o]
            },
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            latency_p99_ms=p99,
            remote_requests=remote_requests,
        )

    def failing_since(
        self, window_s: float = DEFAULT_WINDOW_S, *, include_remote: bool = True
    ) -> float | None:
        """Wall time of the first provider error of the current run of errors, within the window.

        The run is the calls since the last success (local rejections do not break it: they never
        reached the provider). None when the latest call that reached the provider succeeded, or
        there is none: this is the earliest evidence of a failure still going on, which incidents
        use to measure time to detect. Other replicas' calls count by when they were made: a
        success anywhere in the cluster ends the run.
        """
        at, _, out, _, _ = self._window(window_s, include_remote)
        if not at.size:
            return None
        order = np.argsort(at, kind="stable")
        at, out = at[order], out[order]
        reached = out != Outcome.REJECTED
        at, out = at[reached], out[reached]
        if not at.size or not _PROVIDER_ERRORS[out[-1]]:
            return None
        ok = ~_PROVIDER_ERRORS[out]
        first = int(np.flatnonzero(ok)[-1]) + 1 if ok.any() else 0
        return self._clock.now() - (self._clock.monotonic() - float(at[first]))

    def latencies_ms(self, window_s: float = DEFAULT_WINDOW_S, *, include_remote: bool = True) -> np.ndarray:
        """Latencies of calls that reached the provider within the window (a copy)."""
        _, lat, out, _, _ = self._window(window_s, include_remote)
        reached: np.ndarray = lat[out != Outcome.REJECTED].copy()
        return reached


class Telemetry:
    """Telemetry for every provider, plus the process-wide transaction rate."""

    def __init__(self, clock: Clock, capacity: int = DEFAULT_CAPACITY) -> None:
        self._clock = clock
        self._capacity = capacity
        self._providers: dict[str, ProviderTelemetry] = {}
        self._payments = ProviderTelemetry("*", clock, capacity)

    def provider(self, name: str) -> ProviderTelemetry:
        found = self._providers.get(name)
        if found is None:
            found = self._providers[name] = ProviderTelemetry(name, self._clock, self._capacity)
        return found

    def record_call(self, provider: str, outcome: Outcome, latency_ms: float) -> None:
        self.provider(provider).record(outcome, latency_ms)

    def record_remote(self, provider: str, outcome: int, latency_ms: float, at_monotonic: float) -> None:
        """Another replica's call to `provider` (see `ProviderTelemetry.record_remote`)."""
        self.provider(provider).record_remote(outcome, latency_ms, at_monotonic)

    def samples_since(
        self, cursor: Mapping[str, int] | None = None, *, limit: int | None = None
    ) -> TelemetryExport:
        """This process's provider-call samples recorded since `cursor`, for other replicas.

        Times are converted to wall clock. Local rejections are skipped (they never reached the
        provider and each replica's guards decide its own); other replicas' samples are never
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
