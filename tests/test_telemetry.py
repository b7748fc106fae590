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


def test_remote_samples_count_in_figures_but_not_in_prometheus_counters() -> None:
    clock = ManualClock()
    telemetry = ProviderTelemetry("p", clock, capacity=64)
    for _ in range(4):
        telemetry.record(Outcome.SUCCESS, 100.0)
    totals_before = list(telemetry.outcome_totals)
    buckets_before = list(telemetry.latency_bucket_counts)
    sum_before = telemetry.latency_sum_ms
    clock._elapsed_s += 1
    for _ in range(4):
        telemetry.record_remote(Outcome.TIMEOUT, 5_000.0, clock.monotonic())
    snap = telemetry.snapshot(60)
    assert snap.requests == 8
    assert snap.remote_requests == 4
    assert snap.error_rate == pytest.approx(0.5)
    assert snap.errors_by_class == {"timeout": 4}
    assert sorted(telemetry.latencies_ms(60).tolist()) == [100.0] * 4 + [5_000.0] * 4
    assert telemetry.failing_since(60) == pytest.approx(clock.now())
    # This process's own view, and its Prometheus counters, are untouched.
    own = telemetry.snapshot(60, include_remote=False)
    assert (own.requests, own.remote_requests, own.error_rate) == (4, 0, 0.0)
    assert telemetry.failing_since(60, include_remote=False) is None
    assert telemetry.latencies_ms(60, include_remote=False).tolist() == [100.0] * 4
    assert telemetry.outcome_totals == totals_before
    assert telemetry.latency_bucket_counts == buckets_before
    assert telemetry.latency_sum_ms == sum_before
    assert telemetry.total_recorded == 4


def test_a_remote_success_ends_the_run_of_errors_by_time() -> None:
    clock = ManualClock()
    telemetry = ProviderTelemetry("p", clock, capacity=64)
    telemetry.record(Outcome.NOT_PROCESSED, 10.0)
    first_error_at = clock.now()
    clock._elapsed_s += 5
    telemetry.record(Outcome.NOT_PROCESSED, 10.0)
    assert telemetry.failing_since(60) == pytest.approx(first_error_at)
    # Another replica's success between the two errors (arriving late) starts a new run.
    telemetry.record_remote(Outcome.SUCCESS, 10.0, clock.monotonic() - 2)
    assert telemetry.failing_since(60) == pytest.approx(clock.now())
    telemetry.record_remote(Outcome.SUCCESS, 10.0, clock.monotonic())
    assert telemetry.failing_since(60) is None


def test_remote_samples_leave_the_window_like_local_ones() -> None:
    clock = ManualClock()
    telemetry = ProviderTelemetry("p", clock, capacity=64)
    telemetry.record_remote(Outcome.AUTH, 10.0, clock.monotonic())
    clock._elapsed_s += 61
    snap = telemetry.snapshot(60)
    assert (snap.requests, snap.remote_requests, snap.error_rate) == (0, 0, None)


def test_a_full_remote_ring_limits_the_covered_part_of_the_window() -> None:
    clock = ManualClock()
    telemetry = ProviderTelemetry("p", clock, capacity=16)
    for second in range(100):
        clock._elapsed_s = float(second)
        telemetry.record(Outcome.SUCCESS, 10.0)
    for k in range(32):  # two remote samples a second over the last 16 s: the ring keeps 8 s
        telemetry.record_remote(Outcome.SUCCESS, 10.0, 83.5 + k / 2)
    snap = telemetry.snapshot(300)
    assert snap.covered_s == pytest.approx(99 - 91.5)
    # Only samples inside the covered part count, so the rate is not inflated by the longer ring.
    assert snap.remote_requests == 16
    assert snap.requests == 16 + 8
    assert snap.requests_per_min == pytest.approx(24 * 60 / 7.5)


def test_samples_since_exports_own_samples_once_in_wall_time() -> None:
    clock = ManualClock()
    telemetry = Telemetry(clock, capacity=16)
    telemetry.record_call("a", Outcome.SUCCESS, 10.0)
    clock._elapsed_s += 2
    telemetry.record_call("b", Outcome.TIMEOUT, 20.0)
    telemetry.record_call("b", Outcome.REJECTED, 0.0)  # never reached the provider: not exported
    telemetry.record_remote("a", Outcome.AUTH, 5.0, clock.monotonic())  # never exported again
    clock._elapsed_s += 3
    export = telemetry.samples_since()
    assert [
        (s.provider, round(s.at_s - clock.now(), 6), s.outcome, s.latency_ms) for s in export.samples
    ] == [
        ("a", -5.0, Outcome.SUCCESS, 10.0),
        ("b", -3.0, Outcome.TIMEOUT, 20.0),
    ]
    assert export.lost == 0
    assert telemetry.samples_since(export.cursor).samples == []
    telemetry.record_call("a", Outcome.AMBIGUOUS, 30.0)
    again = telemetry.samples_since(export.cursor)
    assert [(s.provider, s.outcome) for s in again.samples] == [("a", Outcome.AMBIGUOUS)]


def test_samples_since_pages_with_a_limit_and_counts_overwritten_samples() -> None:
    clock = ManualClock()
    telemetry = Telemetry(clock, capacity=16)
    for i in range(40):
        telemetry.record_call("a", Outcome.SUCCESS, float(i))
    first = telemetry.samples_since(limit=10)
    assert first.lost == 24  # the ring holds the last 16 only
    assert [s.latency_ms for s in first.samples] == [float(i) for i in range(24, 34)]
    rest = telemetry.samples_since(first.cursor, limit=10)
    assert rest.lost == 0
    assert [s.latency_ms for s in rest.samples] == [float(i) for i in range(34, 40)]
    assert telemetry.samples_since(rest.cursor).samples == []


@settings(max_examples=60, deadline=None)
@given(
    samples, st.lists(st.booleans(), min_size=200, max_size=200), st.floats(min_value=1.0, max_value=600.0)
)
def test_merged_snapshot_equals_a_brute_force_recount(
    recorded: list[tuple[float, Outcome, float]], remote_flags: list[bool], window_s: float
) -> None:
    clock = ManualClock()
    telemetry = ProviderTelemetry("p", clock, capacity=1024)
    log: list[tuple[float, Outcome, bool]] = []
    for (gap, outcome, latency), remote in zip(recorded, remote_flags, strict=False):
        clock._elapsed_s += gap
        if remote:
            telemetry.record_remote(outcome, latency, clock.monotonic())
        else:
            telemetry.record(outcome, latency)
        log.append((clock.monotonic(), outcome, remote))
    snap = telemetry.snapshot(window_s)
    reached = [s for s in log if s[0] >= clock.monotonic() - window_s and s[1] is not Outcome.REJECTED]
    assert snap.requests == len(reached)
    assert snap.remote_requests == sum(s[2] for s in reached)
    assert sum(telemetry.outcome_totals) == sum(not s[2] for s in log)
