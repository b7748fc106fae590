"""Provider health from measured probe outcomes, with hysteresis so one blip does not flap it.

Rules (named constants below): a failed probe takes a healthy provider to `degraded`;
`UNHEALTHY_AFTER_FAILURES` consecutive failures make it `unhealthy`; it is `healthy` again only
after `HEALTHY_AFTER_SUCCESSES` consecutive successes. Before any probe it is `unknown`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel

from mcp_autonomy.providers.base import ProbeResult

UNHEALTHY_AFTER_FAILURES = 2
HEALTHY_AFTER_SUCCESSES = 2


class HealthStatus(StrEnum):
    """A provider's health as the engine judges it."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class HealthSnapshot(BaseModel):
    """What the health tracker knows about one provider, all measured."""

    status: HealthStatus
    since: float | None
    last_probe_at: float | None
    last_probe_ok: bool | None
    last_probe_latency_ms: float | None
    last_probe_detail: str | None
    consecutive_failures: int
    consecutive_successes: int
    probes_total: int
    probes_failed: int


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
        self.since: float | None = None
        self.last_probe: ProbeResult | None = None
        self.last_probe_at: float | None = None
        self.consecutive_failures = 0
        self.consecutive_successes = 0
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
        else:
            self.probes_failed += 1
            self.consecutive_failures += 1
            self.consecutive_successes = 0
        new = self._next_status(result)
        if new is self.status:
            return None
        transition = HealthTransition(
            self.provider,
            self.status,
            new,
            at,
            f"probe {'ok' if result.ok else 'failed'} ({result.detail or 'no detail'}); "
            f"{self.consecutive_successes} consecutive ok, {self.consecutive_failures} consecutive failed",
        )
        self.status = new
        self.since = at
        return transition

    def _next_status(self, result: ProbeResult) -> HealthStatus:
        if result.ok:
            if self.status is HealthStatus.UNKNOWN or self.consecutive_successes >= HEALTHY_AFTER_SUCCESSES:
                return HealthStatus.HEALTHY
            return self.status
        if self.consecutive_failures >= UNHEALTHY_AFTER_FAILURES:
            return HealthStatus.UNHEALTHY
        if self.status is HealthStatus.HEALTHY:
            return HealthStatus.DEGRADED
        if self.status is HealthStatus.UNKNOWN:
            return HealthStatus.DEGRADED
        return self.status

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
            probes_total=self.probes_total,
            probes_failed=self.probes_failed,
        )
