"""Provider health from active probes and passive outcomes, with hysteresis so a blip cannot flap it.

Two measured views are combined, and the worse one wins:

- **active probes** (the healer's cheap read-only calls): a failed probe takes a healthy provider
  to `degraded`; `UNHEALTHY_AFTER_FAILURES` consecutive failures make it `unhealthy`; it is
  `healthy` again only after `HEALTHY_AFTER_SUCCESSES` consecutive successes;
- **passive outcomes** (the real payments' error rate over the last `PASSIVE_WINDOW_S`, from
  telemetry): with at least `PASSIVE_MIN_REQUESTS` requests, an error rate at or above
  `PASSIVE_UNHEALTHY_ERROR_RATE` is `unhealthy`, at or above `PASSIVE_DEGRADED_ERROR_RATE`
  `degraded`; it recovers only below `PASSIVE_RECOVERED_ERROR_RATE`. Too few requests is no
  evidence either way.

- **the breaker** (the router's view of the real calls, seconds old): while it is open the provider
  is `unhealthy`. Probes can be metered by the provider (Daraja caches a token probe for 30 s) and
  the passive error rate stops moving once the open breaker keeps calls away, so without this view
  an outage the breaker already saw would wait for the probes to notice. Half-open or closed is
  no evidence either way: the probes and the real calls decide again.

Before any evidence a provider is `unknown`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field

from mcp_autonomy.providers.base import ProbeResult
from mcp_autonomy.timefmt import TimestampOrNone

UNHEALTHY_AFTER_FAILURES = 2
HEALTHY_AFTER_SUCCESSES = 2
PASSIVE_WINDOW_S = 60.0
PASSIVE_MIN_REQUESTS = 10
PASSIVE_UNHEALTHY_ERROR_RATE = 0.5
PASSIVE_DEGRADED_ERROR_RATE = 0.2
PASSIVE_RECOVERED_ERROR_RATE = 0.1


class HealthStatus(StrEnum):
    """A provider's health as the engine judges it."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class HealthSnapshot(BaseModel):
    """What the health tracker knows about one provider, all measured."""

    status: HealthStatus
    since: TimestampOrNone
    last_probe_at: TimestampOrNone
    last_probe_ok: bool | None
    last_probe_latency_ms: float | None
    last_probe_detail: str | None
    consecutive_failures: int
    consecutive_successes: int
    failing_since: TimestampOrNone = Field(
        None, description="When the current run of failed probes began (null while probes pass)"
    )
    probes_total: int
    probes_failed: int
    probe_status: HealthStatus
    passive_status: HealthStatus
    breaker_status: HealthStatus = HealthStatus.UNKNOWN
    passive_error_rate: float | None
    passive_requests: int


@dataclass(frozen=True, slots=True)
class HealthTransition:
    """A change of health status and why."""

    provider: str
    from_status: HealthStatus
    to_status: HealthStatus
    at: float
    reason: str


class ProviderHealth:
    """Tracks one provider's health from active probe results."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.status = HealthStatus.UNKNOWN
        self.probe_status = HealthStatus.UNKNOWN
        self.passive_status = HealthStatus.UNKNOWN
        self.breaker_status = HealthStatus.UNKNOWN
        self.passive_error_rate: float | None = None
        self.passive_requests = 0
        self.since: float | None = None
        self.last_probe: ProbeResult | None = None
        self.last_probe_at: float | None = None
        self.consecutive_failures = 0
        self.consecutive_successes = 0
        self.failing_since: float | None = None
        self.probes_total = 0
        self.probes_failed = 0

    def record_probe(self, result: ProbeResult, at: float) -> HealthTransition | None:
        """Fold one probe result in; returns the transition it caused, if any."""
        self.last_probe = result
        self.last_probe_at = at
        self.probes_total += 1
        if result.ok:
            self.consecutive_successes += 1
            self.consecutive_failures = 0
            self.failing_since = None
        else:
            if self.consecutive_failures == 0:
                self.failing_since = at
            self.probes_failed += 1
            self.consecutive_failures += 1
            self.consecutive_successes = 0
        self.probe_status = self._next_probe_status(result)
        return self._combine(
            at,
            f"probe {'ok' if result.ok else 'failed'} ({result.detail or 'no detail'}); "
            f"{self.consecutive_successes} consecutive ok, {self.consecutive_failures} consecutive failed",
        )

    def record_passive(self, requests: int, error_rate: float | None, at: float) -> HealthTransition | None:
        """Fold in the real calls' error rate over the last `PASSIVE_WINDOW_S`."""
        self.passive_requests = requests
        self.passive_error_rate = error_rate
        if requests < PASSIVE_MIN_REQUESTS or error_rate is None:
            self.passive_status = HealthStatus.UNKNOWN
        elif error_rate >= PASSIVE_UNHEALTHY_ERROR_RATE:
            self.passive_status = HealthStatus.UNHEALTHY
        elif error_rate >= PASSIVE_DEGRADED_ERROR_RATE:
            if self.passive_status is not HealthStatus.UNHEALTHY:
                self.passive_status = HealthStatus.DEGRADED
        elif error_rate < PASSIVE_RECOVERED_ERROR_RATE:
            self.passive_status = HealthStatus.HEALTHY
        # Between the recovered and degraded rates the passive view keeps its state (hysteresis).
        return self._combine(
            at,
            f"{error_rate:.0%} of {requests} real calls failed in {PASSIVE_WINDOW_S:.0f} s"
            if error_rate is not None
            else "no real calls",
        )

    def record_breaker(self, is_open: bool, at: float) -> HealthTransition | None:
        """Fold in whether the provider's breaker is open now."""
        self.breaker_status = HealthStatus.UNHEALTHY if is_open else HealthStatus.UNKNOWN
        return self._combine(
            at, "breaker open: real calls are failing" if is_open else "breaker no longer open"
        )

    def _combine(self, at: float, reason: str) -> HealthTransition | None:
        new = _worse(_worse(self.probe_status, self.passive_status), self.breaker_status)
        if new is self.status:
            return None
        transition = HealthTransition(self.provider, self.status, new, at, reason)
        self.status = new
        self.since = at
        return transition

    def _next_probe_status(self, result: ProbeResult) -> HealthStatus:
        current = self.probe_status
        if result.ok:
            if current is HealthStatus.UNKNOWN or self.consecutive_successes >= HEALTHY_AFTER_SUCCESSES:
                return HealthStatus.HEALTHY
            return current
        if self.consecutive_failures >= UNHEALTHY_AFTER_FAILURES:
            return HealthStatus.UNHEALTHY
        if current in (HealthStatus.HEALTHY, HealthStatus.UNKNOWN):
            return HealthStatus.DEGRADED
        return current

    def snapshot(self) -> HealthSnapshot:
        probe = self.last_probe
        return HealthSnapshot(
            status=self.status,
            since=self.since,
            last_probe_at=self.last_probe_at,
            last_probe_ok=None if probe is None else probe.ok,
            last_probe_latency_ms=None if probe is None else probe.latency_ms,
            last_probe_detail=None if probe is None else probe.detail,
            consecutive_failures=self.consecutive_failures,
            consecutive_successes=self.consecutive_successes,
            failing_since=self.failing_since,
            probes_total=self.probes_total,
            probes_failed=self.probes_failed,
            probe_status=self.probe_status,
            passive_status=self.passive_status,
            breaker_status=self.breaker_status,
            passive_error_rate=self.passive_error_rate,
            passive_requests=self.passive_requests,
        )


_SEVERITY = {
    HealthStatus.UNKNOWN: 0,
    HealthStatus.HEALTHY: 1,
    HealthStatus.DEGRADED: 2,
    HealthStatus.UNHEALTHY: 3,
}


def _worse(a: HealthStatus, b: HealthStatus) -> HealthStatus:
    """The worse of two views; `unknown` (no evidence) never hides the other view."""
    return a if _SEVERITY[a] >= _SEVERITY[b] else b
