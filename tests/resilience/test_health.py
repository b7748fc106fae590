from __future__ import annotations

from mcp_autonomy.providers.base import ProbeResult
from mcp_autonomy.resilience.health import HealthStatus, ProviderHealth

OK = ProbeResult(ok=True, latency_ms=5.0)
FAILED = ProbeResult(ok=False, latency_ms=5.0, detail="refused")


def test_probes_need_two_in_a_row_to_change_a_settled_state() -> None:
    health = ProviderHealth("mpesa")
    assert health.status is HealthStatus.UNKNOWN
    assert health.record_probe(OK, 1.0) is not None and health.status is HealthStatus.HEALTHY
    health.record_probe(FAILED, 2.0)
    assert health.status is HealthStatus.DEGRADED
    health.record_probe(FAILED, 3.0)
    assert health.status is HealthStatus.UNHEALTHY
    health.record_probe(OK, 4.0)
    assert health.status is HealthStatus.UNHEALTHY  # one good probe is not a recovery
    transition = health.record_probe(OK, 5.0)
    assert transition is not None and transition.to_status is HealthStatus.HEALTHY and health.since == 5.0


def test_passive_error_rate_overrides_good_probes_with_hysteresis() -> None:
    health = ProviderHealth("paystack")
    health.record_probe(OK, 1.0)
    assert health.record_passive(5, 1.0, 2.0) is None  # too few calls: no evidence
    transition = health.record_passive(40, 0.6, 3.0)
    assert transition is not None and health.status is HealthStatus.UNHEALTHY
    assert "60% of 40 real calls failed" in transition.reason
    health.record_probe(OK, 4.0)
    assert health.status is HealthStatus.UNHEALTHY  # the probe alone cannot clear real failures
    health.record_passive(40, 0.15, 5.0)
    assert health.status is HealthStatus.UNHEALTHY  # between the thresholds: held
    health.record_passive(40, 0.05, 6.0)
    assert health.status is HealthStatus.HEALTHY
    health.record_passive(40, 0.25, 7.0)
    assert health.status is HealthStatus.DEGRADED
    snapshot = health.snapshot()
    assert (snapshot.probe_status, snapshot.passive_status) == (HealthStatus.HEALTHY, HealthStatus.DEGRADED)
