"""What the optimizer measured for one provider over one window: the only input the tuners read.

The optimizer loop fills a `LaneEvidence` from telemetry and the router's counters; the tuners
never see telemetry, the router or a clock, so a recorded window replays to the same proposal.

Counting conventions (the loop must fill the fields this way):

- `calls` counts every attempt that reached the provider, retries included (one telemetry sample
  each; local rejections are not calls). The outcome counts split them: `successes`, `timeouts`,
  `not_processed`, `ambiguous`, `rate_limited` (HTTP 429), `auth_errors`; invalid requests are the
  caller's fault and are in `calls` only, so the outcome counts may sum to less than `calls`.
- `latencies_ms` holds those calls' latencies, timed-out ones at the time they were cut off
  (what `ProviderTelemetry.latencies_ms` returns). Timed-out calls must stay in: without them a
  too-short timeout would hide its own evidence.
- `retries_sent` counts the calls that were retries; `recovered_on_retry` the payments whose
  earlier attempt at this provider failed transiently and a later retry there succeeded;
  `retries_exhausted` the payments that stopped retrying here with a retryable error because
  `max_attempts` or the retry budget ran out.
- `status_queries` counts status look-ups, `status_cache_hits` those answered from the cache, and
  `stale_cache_hits` the cached answers later found to have changed already.
- `long_run_error_rate` is the provider's normal error rate over hours (None when unknown);
  `long_run_latency_p50_ms` its normal median latency (None when unknown), so a tuner can tell
  rising latency from the usual level.
- `long_run_latency_p99_ms` and `long_run_latency_p999_ms` are the high quantiles of the latency
  over the same long horizon, and `long_run_covered_s` how much of the provider's history those
  long-run figures actually span (a fresh process has minutes, not hours): the timeout tuner never
  cuts below what that horizon needed, nor before it has been observed (None: unknown).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt

DEFAULT_MIN_QUANTILE_SAMPLES: Final = 20  # fewer latencies than this give no quantile at all

LatencySamples = Sequence[float] | npt.NDArray[np.floating[Any]]

_COUNT_FIELDS: Final = (
    "calls",
    "successes",
    "timeouts",
    "not_processed",
    "ambiguous",
    "rate_limited",
    "auth_errors",
    "retries_sent",
    "recovered_on_retry",
    "retries_exhausted",
    "status_queries",
    "status_cache_hits",
    "stale_cache_hits",
    "breaker_trials_passed",
    "breaker_trials_failed",
)


def _is_count(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(value >= 0)


def _require(condition: bool, name: str, allowed: str, value: object) -> None:
    if not condition:
        raise ValueError(f"LaneEvidence.{name} must be {allowed}, got {value!r}")


def read_only_latencies(name: str, values: LatencySamples) -> npt.NDArray[np.float64]:
    """A read-only float64 copy of `values`; raises naming `name` if any is negative or not finite."""
    array = np.array(values, dtype=np.float64).ravel()
    if array.size and not (np.isfinite(array).all() and (array >= 0).all()):
        raise ValueError(f"{name} must hold finite latencies >= 0 ms")
    array.flags.writeable = False
    return array


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


@dataclass(frozen=True, slots=True, eq=False)
class LaneEvidence:
    """One provider's measured window (see the module docstring for how each field is counted).

    `latencies_ms` may be passed as a tuple or any numpy array; it is stored as a read-only
    float64 array. Instances compare by identity (`eq=False`): they hold an array.
    """

    window_s: float
    latencies_ms: LatencySamples
    calls: int
    successes: int
    timeouts: int = 0
    not_processed: int = 0
    ambiguous: int = 0
    rate_limited: int = 0
    auth_errors: int = 0
    retries_sent: int = 0
    recovered_on_retry: int = 0
    retries_exhausted: int = 0
    status_queries: int = 0
    status_cache_hits: int = 0
    stale_cache_hits: int = 0
    breaker_trials_passed: int = 0
    """Half-open trials in the window that closed the breaker (the provider was already back)."""
    breaker_trials_failed: int = 0
    """Half-open trials in the window that re-opened it (the provider was still down)."""
    long_run_error_rate: float | None = None
    long_run_latency_p50_ms: float | None = None
    long_run_latency_p99_ms: float | None = None
    long_run_latency_p999_ms: float | None = None
    long_run_covered_s: float | None = None
    """Seconds of the provider's history the long-run figures span; None when unknown."""

    def __post_init__(self) -> None:
        _require(
            isinstance(self.window_s, int | float)
            and not isinstance(self.window_s, bool)
            and math.isfinite(self.window_s)
            and self.window_s > 0,
            "window_s",
            "a finite number of seconds > 0",
            self.window_s,
        )
        object.__setattr__(
            self, "latencies_ms", read_only_latencies("LaneEvidence.latencies_ms", self.latencies_ms)
        )
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            _require(_is_count(value), name, "an integer >= 0", value)
            object.__setattr__(self, name, int(value))
        outcomes = self.successes + self.errors
        _require(
            outcomes <= self.calls,
            "calls",
            f">= successes + provider errors ({outcomes})",
            self.calls,
        )
        _require(
            self.retries_sent <= self.calls, "retries_sent", f"<= calls ({self.calls})", self.retries_sent
        )
        _require(
            self.recovered_on_retry <= self.retries_sent,
            "recovered_on_retry",
            f"<= retries_sent ({self.retries_sent}): each recovery took a retry",
            self.recovered_on_retry,
        )
        _require(
            self.status_cache_hits <= self.status_queries,
            "status_cache_hits",
            f"<= status_queries ({self.status_queries})",
            self.status_cache_hits,
        )
        _require(
            self.stale_cache_hits <= self.status_cache_hits,
            "stale_cache_hits",
            f"<= status_cache_hits ({self.status_cache_hits})",
            self.stale_cache_hits,
        )
        rate = self.long_run_error_rate
        _require(
            rate is None or (isinstance(rate, int | float) and 0.0 <= rate <= 1.0),
            "long_run_error_rate",
            "None or in [0, 1]",
            rate,
        )
        for name, unit in (
            ("long_run_latency_p50_ms", "ms"),
            ("long_run_latency_p99_ms", "ms"),
            ("long_run_latency_p999_ms", "ms"),
            ("long_run_covered_s", "seconds"),
        ):
            value = getattr(self, name)
            _require(
                value is None
                or (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                    and value >= 0
                ),
                name,
                f"None or a finite number of {unit} >= 0",
                value,
            )

    # -- latencies ------------------------------------------------------------------------------

    @property
    def latency_array(self) -> npt.NDArray[np.float64]:
        """The latencies as the read-only float64 array they are stored as."""
        return cast("npt.NDArray[np.float64]", self.latencies_ms)

    @property
    def latency_count(self) -> int:
        return int(self.latency_array.size)

    def latency_quantile(self, q: float, *, min_samples: int = DEFAULT_MIN_QUANTILE_SAMPLES) -> float | None:
        """The `q` quantile of the latencies in ms (linear interpolation), or None with fewer than
        `min_samples` (at least 1) latencies."""
        if not (isinstance(q, int | float) and 0.0 <= q <= 1.0):
            raise ValueError(f"q must be in [0, 1], got {q!r}")
        if self.latency_count < max(1, min_samples):
            return None
        return float(np.quantile(self.latency_array, q))

    # -- derived rates --------------------------------------------------------------------------

    @property
    def errors(self) -> int:
        """Provider-attributable errors: the classes telemetry's error rate counts."""
        return self.timeouts + self.not_processed + self.ambiguous + self.rate_limited + self.auth_errors

    @property
    def transient_errors(self) -> int:
        """Errors a later attempt may not meet: everything but authentication failures."""
        return self.errors - self.auth_errors

    @property
    def error_rate(self) -> float | None:
        """Provider errors / calls; None without calls."""
        return _ratio(self.errors, self.calls)

    @property
    def transient_share(self) -> float | None:
        """Transient errors / all provider errors; None without errors."""
        return _ratio(self.transient_errors, self.errors)

    @property
    def recovery_on_retry_rate(self) -> float | None:
        """Recovered payments / retries sent: how often a retry turned a failure into a success."""
        return _ratio(self.recovered_on_retry, self.retries_sent)

    @property
    def retries_per_call(self) -> float | None:
        return _ratio(self.retries_sent, self.calls)

    @property
    def timeout_share(self) -> float | None:
        return _ratio(self.timeouts, self.calls)

    @property
    def rate_limited_share(self) -> float | None:
        """HTTP 429s / calls; None without calls."""
        return _ratio(self.rate_limited, self.calls)

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.window_s

    @property
    def status_cache_hit_rate(self) -> float | None:
        return _ratio(self.status_cache_hits, self.status_queries)

    @property
    def stale_hit_share(self) -> float | None:
        """Stale hits / cache hits; None without hits."""
        return _ratio(self.stale_cache_hits, self.status_cache_hits)
