"""The shared sliding time window: totals equal a brute-force recount however time moves."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.resilience.window import MAX_WINDOW_BUCKETS, SlidingTimeWindow
from mcp_autonomy.telemetry import Outcome, ProviderTelemetry

steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=25.0),  # seconds the clock moves first
        st.integers(min_value=0, max_value=2),  # field
        st.integers(min_value=1, max_value=5),  # amount
        st.floats(min_value=0.0, max_value=12.0),  # how far in the past the sample is stamped
    ),
    max_size=150,
)


@settings(max_examples=120, deadline=None)
@given(
    steps, st.sampled_from([(10.0, 1.0), (30.0, 5.0), (6.0, 0.5)]), st.floats(min_value=0.1, max_value=40.0)
)
def test_totals_and_recent_sums_equal_a_brute_force_recount(
    recorded: list[tuple[float, int, int, float]], shape: tuple[float, float], span_s: float
) -> None:
    window_s, bucket_s = shape
    clock = ManualClock()
    window = SlidingTimeWindow(clock, window_s=window_s, bucket_s=bucket_s, fields=3)
    log: list[tuple[float, int, int]] = []
    for gap, field, amount, age in recorded:
        clock._elapsed_s += gap
        at = max(0.0, clock.monotonic() - age)
        window.add(at, field, amount)
        log.append((at, field, amount))
    now = clock.monotonic()
    window.advance(now)
    head_start = (now // bucket_s) * bucket_s
    oldest_start = head_start - (window.bucket_count - 1) * bucket_s
    # A late sample counts in the bucket of its own time; the ones older than the ring are gone.
    expected = [0, 0, 0]
    for at, field, amount in log:
        if at >= oldest_start:
            expected[field] += amount
    assert window.totals == pytest.approx(expected)
    sums, start_s = window.recent(now, span_s)
    covered_s = now - start_s
    # Whole buckets nearest the span: the head always, never more than the ring.
    assert covered_s <= min(window_s, max(now - head_start, span_s + bucket_s / 2)) + 1e-9
    assert covered_s >= min(span_s - bucket_s / 2, now - oldest_start) - 1e-9
    assert sums == [sum(a for at, f, a in log if f == field and at >= start_s) for field in range(3)]


def test_late_samples_older_than_the_window_are_dropped() -> None:
    clock = ManualClock()
    window = SlidingTimeWindow(clock, window_s=10.0, bucket_s=1.0)
    clock._elapsed_s = 100.0
    window.add(100.0, 0)
    window.add(95.5, 0)  # still in the window: counted in its own bucket
    window.add(80.0, 0)  # gone
    assert window.totals == [2]
    clock._elapsed_s = 105.2
    assert window.totals_at(105.2) == [1]  # the 95.5 s bucket left at 105 s
    assert window.recent(105.2, 1.0)[0] == [0]


def test_a_long_idle_time_clears_everything_and_calls_the_expire_hook() -> None:
    clock = ManualClock()
    expired: list[int] = []
    window = SlidingTimeWindow(clock, window_s=4.0, bucket_s=1.0, fields=2, on_expire=expired.append)
    window.add(0.5, 1, 3)
    assert window.totals_at(10_000.0) == [0, 0]
    assert sorted(expired) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window_s": 0.0, "bucket_s": 1.0}, "window_s"),
        ({"window_s": 10.0, "bucket_s": -1.0}, "bucket_s"),
        ({"window_s": 10.0, "bucket_s": 3.0}, "whole multiple"),
        ({"window_s": MAX_WINDOW_BUCKETS + 1.0, "bucket_s": 1.0}, "at most"),
        ({"window_s": 10.0, "bucket_s": 1.0, "fields": 0}, "fields"),
    ],
)
def test_settings_are_validated_naming_the_field(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SlidingTimeWindow(ManualClock(), **kwargs)  # type: ignore[arg-type]


def test_a_time_a_hair_before_a_bucket_end_stays_in_that_bucket() -> None:
    """`head_end_s` is one float below the bucket's end; a time there moves nothing, and telemetry
    does not fold its open bucket into the hour ring twice (it did: a call counted as two)."""
    clock = ManualClock()
    at_s = math.nextafter(30.0, -math.inf)  # 29.999999999999996
    window = SlidingTimeWindow(clock, window_s=300.0, bucket_s=10.0)
    window.add(25.0, 0)
    assert at_s >= window.head_end_s and not window.moves_at(at_s)
    clock._elapsed_s = at_s
    telemetry = ProviderTelemetry("p", clock)
    telemetry.record(int(Outcome.SUCCESS), 1.0)
    assert telemetry.snapshot(301.0).requests == 1
