"""The load metric's update cadence: learned from readings, and what the predictive policy does with it."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping

import pytest

from mcp_autonomy.autonomy.scaling.cadence import MIN_CADENCE_CHANGES, MIN_CHANGE_SIZES, LoadCadence
from mcp_autonomy.autonomy.scaling.policy import PredictivePolicy
from mcp_autonomy.autonomy.scaling.simulate import (
    LoadTrace,
    SimulationConfig,
    build_hpa,
    build_policy,
    replay,
)

MONDAY_S = 1_767_571_200.0  # 2026-01-05 00:00 UTC, a Monday
DAY_S = 86_400.0


def held(cadence: LoadCadence, values: list[float], every_s: float, *, start_s: float = MONDAY_S) -> float:
    """Show `cadence` each value held for `every_s`, read every 15 s from `start_s`; returns the end."""
    now = start_s
    for value in values:
        end = now + every_s
        while now < end:
            cadence.observe(now, value)
            now += 15.0
    return now


def test_it_learns_a_five_minute_metric_read_every_15_seconds() -> None:
    cadence = LoadCadence()
    end = held(cadence, [100.0 + i for i in range(MIN_CADENCE_CHANGES)], 300.0)
    assert cadence.interval_s is None  # the first value is no change, the first change no interval
    held(cadence, [500.0, 501.0], 300.0, start_s=end)
    assert cadence.interval_s == 300.0
    assert cadence.known(120.0)
    anchor = cadence.last_change_s
    assert anchor is not None
    # Slack: 10 % of the interval plus the 15 s between readings -> an update may come from 255 s.
    assert not cadence.may_change_within(anchor + 15.0, 120.0)
    assert not cadence.may_change_within(anchor + 130.0, 120.0)
    assert cadence.may_change_within(anchor + 140.0, 120.0)
    assert cadence.may_change_within(anchor + 15.0, 300.0)  # the next update is inside 5 minutes


def test_a_load_that_changes_at_every_reading_has_no_usable_cadence() -> None:
    cadence = LoadCadence()
    held(cadence, [100.0 + (i % 7) for i in range(50)], 15.0)
    assert cadence.interval_s == 15.0
    assert not cadence.known(120.0)


def test_one_early_update_makes_it_more_careful_and_an_overdue_one_means_any_moment() -> None:
    cadence = LoadCadence()
    held(cadence, [float(i) for i in range(12)], 1800.0)
    anchor = cadence.last_change_s
    assert cadence.interval_s == 1800.0 and anchor is not None
    cadence.observe(anchor + 600.0, 99.0)  # an update after 10 minutes instead of 30
    assert cadence.interval_s == 600.0
    quiet = LoadCadence()
    held(quiet, [float(i) for i in range(12)], 600.0)
    anchor = quiet.last_change_s
    assert anchor is not None
    assert not quiet.may_change_within(anchor + 60.0, 120.0)
    # A hole in the metric: no update for 40 minutes. It is overdue, so it may come at any moment.
    assert quiet.may_change_within(anchor + 2400.0, 1.0)


def test_change_sizes_are_kept_per_load_level() -> None:
    cadence = LoadCadence()
    assert cadence.surprise_quantile(0.9, 1.0) is None
    for i in range(MIN_CHANGE_SIZES):
        cadence.record_change_size(0.5 + i / 1000, level=1.0)  # low load: big relative jumps
    for i in range(MIN_CHANGE_SIZES):
        cadence.record_change_size(0.05 + i / 1000, level=40.0)  # high load: small ones
    low, high = cadence.surprise_quantile(0.9, 1.0), cadence.surprise_quantile(0.9, 40.0)
    assert low is not None and high is not None
    assert low > 0.5 > 0.1 > high
    pooled = cadence.surprise_quantile(0.9, 10.0)  # a level with no sizes of its own: all of them
    assert pooled is not None and high < pooled
    cadence.record_change_size(math.nan, level=1.0)  # ignored


def test_a_cadence_window_too_short_to_learn_from_is_refused() -> None:
    with pytest.raises(ValueError, match=r"LoadCadence\.window must be an integer >= 8, got 3"):
        LoadCadence(window=3)


def half_hourly_trace(days: int, seed: int) -> LoadTrace:
    """A half-hourly export: a daily curve (600..3000 tpm) with 8 % noise, held between points."""
    rng = random.Random(seed)
    points = []
    for index in range(days * 48):
        at = MONDAY_S + index * 1800.0
        hour = (index % 48) / 2
        mean = 600.0 + 2400.0 * max(0.0, math.sin(math.pi * (hour - 6.0) / 16.0)) if 6 <= hour < 22 else 600.0
        points.append((at, round(mean * rng.lognormvariate(0.0, 0.08), 1)))
    return LoadTrace.from_points(points)


def test_on_a_half_hourly_metric_it_scales_between_updates_and_is_ready_at_them() -> None:
    config = SimulationConfig(target_tpm_per_instance=100.0, max_replicas=100)
    trace = half_hourly_trace(days=5, seed=3)
    aware = build_policy(config)
    blind = PredictivePolicy(dataclasses.replace(aware.config, cadence_aware=False))
    stats = replay(trace, {"aware": aware, "blind": blind, "hpa": build_hpa(config)}, config)
    aware_stats, blind_stats, hpa = stats["aware"], stats["blind"], stats["hpa"]
    assert aware.cadence.interval_s == 1800.0
    # Between updates the load cannot move: the aware policy runs what carries it, not a margin,
    # and pays for the margin only around the updates, so it is cheaper than both ...
    assert aware_stats.instance_minutes < 0.95 * blind_stats.instance_minutes
    assert aware_stats.instance_minutes < 0.95 * hpa.instance_minutes
    # ... and provisioned before the updates, so it is short at most half as long as the HPA.
    assert hpa.minutes_short_of_capacity > 0
    assert aware_stats.minutes_short_of_capacity <= 0.5 * hpa.minutes_short_of_capacity


def test_the_decision_says_when_the_next_update_may_come() -> None:
    config = SimulationConfig(target_tpm_per_instance=100.0, max_replicas=100)
    trace = half_hourly_trace(days=3, seed=4)
    policy = build_policy(config)
    replay(trace, {"policy": policy}, config)
    decision = policy.recommend(trace.end_s + 60.0, trace.values_tpm[-1], 20, 20)
    assert decision.inputs["load_update_interval_s"] == 1800.0
    assert decision.inputs["update_due_within_up"] == 0
    assert "the load metric updates every 1800s: no update within 120s" in decision.reason
    now = trace.end_s + 60.0
    while now < trace.end_s + 1750.0:  # the scaler reads the unchanged metric every 15 s
        now += 15.0
        late = policy.recommend(now, trace.values_tpm[-1], 20, 20)
    assert late.inputs["update_due_within_up"] == 1
    assert "an update may come within 120s" in late.reason


def test_a_reading_that_stops_moving_is_stale_but_a_held_zero_is_not() -> None:
    cadence = LoadCadence()
    end = held(cadence, [100.0 + (i % 7) for i in range(40)], 60.0)  # a per-minute metric
    anchor = cadence.last_change_s
    assert cadence.interval_s == 60.0 and anchor is not None
    assert not cadence.stale(anchor + 240.0)
    assert cadence.stale(anchor + 301.0)  # five minutes without a move: a collector down
    cadence.observe(end + 600.0, 0.0)
    assert not cadence.stale(end + 6 * 3600.0)  # hours of no traffic are no traffic


def test_through_a_hole_in_the_metric_it_provisions_for_the_forecast_not_the_held_value() -> None:
    # A per-minute load of 500 tpm that steps to 3000 from 06:00 to 12:00 every day (the HPA is
    # late for the step, the forecast is not); on day 4 the collector stops at 05:50 and the trace
    # holds its last reading until it comes back at 07:00.
    rng = random.Random(7)
    points = []
    for minute in range(4 * 1440):
        hour = (minute % 1440) / 60
        if minute // 1440 == 3 and 5.0 + 50 / 60 <= hour < 7.0:
            continue
        mean = 3000.0 if 6.0 <= hour < 12.0 else 500.0
        points.append((MONDAY_S + 60.0 * minute, round(mean * rng.lognormvariate(0.0, 0.03))))
    trace = LoadTrace.from_points(points)
    config = SimulationConfig(target_tpm_per_instance=100.0, max_replicas=100)
    aware = build_policy(config)
    blind = PredictivePolicy(dataclasses.replace(aware.config, cadence_aware=False))
    seen: dict[float, tuple[float, int, int]] = {}
    inside, back = MONDAY_S + 3 * DAY_S + 6.5 * 3600, MONDAY_S + 3 * DAY_S + 7 * 3600 + 15

    def watch(now_s: float, load: float, observed: Mapping[str, tuple[int, int]]) -> None:
        if now_s in (inside, back):  # 06:30 on day 4, inside the hole; 07:00:15, readings are back
            seen[now_s] = (load, observed["aware"][1], observed["blind"][1])

    replay(trace, {"aware": aware, "blind": blind}, config, on_step=watch)
    held_load, aware_ready, blind_ready = seen[inside]
    assert held_load < 600.0  # the trace holds the last reading before the hole
    assert aware_ready * 125.0 >= 3000.0  # ready for the step the reading no longer shows
    assert blind_ready * 125.0 < 1000.0  # the forecaster that learned the frozen value is not
    load, aware_ready, blind_ready = seen[back]
    assert aware_ready * 125.0 >= load > blind_ready * 125.0  # so only the blind one is short
