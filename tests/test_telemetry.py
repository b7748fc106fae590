from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.telemetry import Outcome, ProviderTelemetry, Telemetry

samples = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=30.0),  # seconds since the previous sample
        st.sampled_from(list(Outcome)),
        st.floats(min_value=0.1, max_value=60_000.0),
    ),
    max_size=200,
)


@settings(max_examples=80, deadline=None)
@given(samples, st.floats(min_value=1.0, max_value=600.0))
def test_snapshot_equals_a_brute_force_recount(
    recorded: list[tuple[float, Outcome, float]], window_s: float
) -> None:
    clock = ManualClock()
    telemetry = ProviderTelemetry("p", clock, capacity=1024)
    log: list[tuple[float, Outcome, float]] = []
    for gap, outcome, latency in recorded:
        clock._elapsed_s += gap
        telemetry.record(outcome, latency)
        log.append((clock.monotonic(), outcome, float(np.float32(latency))))
    snap = telemetry.snapshot(window_s)
    inside = [s for s in log if s[0] >= clock.monotonic() - window_s]
    reached = [s for s in inside if s[1] is not Outcome.REJECTED]
    provider_errors = {
        Outcome.NOT_PROCESSED,
        Outcome.AMBIGUOUS,
        Outcome.AUTH,
        Outcome.RATE_LIMITED,
        Outcome.TIMEOUT,
    }
    assert snap.requests == len(reached)
    assert snap.rejected_locally == len(inside) - len(reached)
    if reached:
        assert snap.error_rate == pytest.approx(sum(s[1] in provider_errors for s in reached) / len(reached))
        assert snap.latency_p50_ms == pytest.approx(
            float(np.percentile([s[2] for s in reached], 50)), rel=1e-5
        )
        assert snap.requests_per_min == pytest.approx(len(reached) * 60 / window_s)
    else:
        assert snap.error_rate is None and snap.latency_p99_ms is None and snap.requests_per_min is None


def test_ring_overwrites_oldest_and_reports_coverage() -> None:
    clock = ManualClock()
    telemetry = ProviderTelemetry("p", clock, capacity=16)
    for _ in range(32):
        clock._elapsed_s += 1
        telemetry.record(Outcome.SUCCESS, 10.0)
    snap = telemetry.snapshot(300)
    assert snap.requests == 16
    assert snap.covered_s == 15.0
    assert snap.requests_per_min == pytest.approx(16 * 60 / 15.0)


def test_transactions_per_minute_is_none_before_any_payment() -> None:
    clock = ManualClock()
    telemetry = Telemetry(clock)
    assert telemetry.transactions_per_minute() is None
    for _ in range(30):
        telemetry.record_payment(Outcome.SUCCESS, 100.0)
    assert telemetry.transactions_per_minute() == pytest.approx(30.0)
