"""Trace replay: reading traces, the simulated deployment, the CLI round trip and its invariants."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_autonomy.autonomy.scaling.policy import ReactiveConfig, ReactivePolicy, ScalingPolicy
from mcp_autonomy.autonomy.scaling.simulate import (
    TIMELINE_COLUMNS,
    ClairvoyantPolicy,
    LoadTrace,
    ReplayStats,
    SimulatedDeployment,
    SimulationConfig,
    TraceError,
    add_simulate_parser,
    build_hpa,
    build_policy,
    oracle_gap_closed,
    parse_timestamp,
    read_trace,
    replay,
    run_simulate,
)

MONDAY_S = 1_767_571_200.0  # 2026-01-05T00:00:00Z


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mcp-autonomy")
    add_simulate_parser(root.add_subparsers(dest="command", required=True))
    return root


def write_trace(
    path: Path, rows: list[tuple[str, str]], header: tuple[str, str] = ("timestamp", "value")
) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def trace_from_gaps(points: list[tuple[float, float]]) -> LoadTrace:
    """A trace from (seconds since the previous point, load) pairs, the first after MONDAY_S."""
    stamps, now = [], MONDAY_S
    for gap_s, _ in points:
        now += gap_s
        stamps.append(now)
    return LoadTrace.from_points(zip(stamps, (load for _, load in points), strict=True))


def ramp_rows(hours: int = 6) -> list[tuple[str, str]]:
    """One point a minute: 300 tpm, a climb to 2400 tpm over the third hour, back down at the fifth."""
    rows = []
    for minute in range(hours * 60):
        if minute < 120:
            load = 300.0
        elif minute < 180:
            load = 300.0 + 35.0 * (minute - 120)
        elif minute < 240:
            load = 2400.0
        else:
            load = 400.0
        rows.append((str(int(MONDAY_S) + 60 * minute), f"{load:.1f}"))
    return rows


# -- traces ---------------------------------------------------------------------------------------


def test_timestamps_iso_8601_or_epoch_seconds() -> None:
    assert parse_timestamp("2026-01-05T00:00:00Z") == MONDAY_S
    assert parse_timestamp("2026-01-05T02:00:00+02:00") == MONDAY_S
    assert parse_timestamp("2026-01-05 00:00:00") == MONDAY_S  # naive means UTC
    assert parse_timestamp("1767571200") == MONDAY_S
    assert parse_timestamp(" 1767571200.5 ") == MONDAY_S + 0.5
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


def test_irregular_gappy_and_unordered_traces_hold_the_last_value(tmp_path: Path) -> None:
    path = write_trace(
        tmp_path / "trace.csv",
        [
            ("2026-01-05T00:10:00Z", "50"),
            ("2026-01-05T00:00:00Z", "10"),
            ("1767571230", "20"),  # 00:00:30, epoch seconds in the same file
            ("2026-01-05T01:00:00Z", "70"),
            ("2026-01-05T01:00:00Z", "75"),  # a later duplicate wins
        ],
    )
    trace = read_trace(path)
    assert trace.timestamps_s == (MONDAY_S, MONDAY_S + 30, MONDAY_S + 600, MONDAY_S + 3600)
    assert trace.reordered_rows == 1
    assert trace.value_at(MONDAY_S + 29) == 10.0
    assert trace.value_at(MONDAY_S + 599) == 20.0  # the gap holds the last value
    assert trace.value_at(MONDAY_S + 3600) == 75.0
    assert trace.value_at(MONDAY_S - 1) == 10.0
    assert trace.max_gap_s == 3000.0


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("2026-01-05T00:00:00Z", "-3")], r":2: value '-3' is not a finite load >= 0 tpm"),
        ([("2026-01-05T00:00:00Z", "nan")], r":2: value 'nan' is not a finite load"),
        ([("not a time", "3")], r":2: timestamp 'not a time' is neither ISO 8601 nor epoch seconds"),
        ([("2026-01-05T00:00:00Z", "3"), ("2026-01-05T00:01:00Z",)], r":3: expected timestamp,value"),
        ([], r"no data rows"),
    ],
)
def test_bad_traces_name_the_line(tmp_path: Path, rows: list[tuple[str, ...]], message: str) -> None:
    path = tmp_path / "bad.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("timestamp", "value"))
        writer.writerows(rows)
    with pytest.raises(TraceError, match=message):
        read_trace(path)


def test_missing_trace_is_a_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="cannot read the trace"):
        read_trace(tmp_path / "missing.csv")


# -- the simulated deployment ---------------------------------------------------------------------


def test_pods_become_ready_after_startup_and_the_unready_go_first() -> None:
    deployment = SimulatedDeployment(2, startup_s=60.0, ready_since_s=0.0)
    deployment.scale_to(100.0, 5)
    assert (
        deployment.replicas,
        deployment.ready(100.0),
        deployment.ready(159.0),
        deployment.ready(160.0),
    ) == (5, 2, 2, 5)
    deployment.scale_to(130.0, 7)
    deployment.scale_to(140.0, 4)  # the 2 added at 130 s and one added at 100 s go
    assert (deployment.replicas, deployment.ready(160.0)) == (4, 4)
    deployment.scale_to(150.0, 1)
    assert deployment.ready(150.0) == 1


def test_replay_counts_cost_shortage_and_actions() -> None:
    trace = LoadTrace((MONDAY_S, MONDAY_S + 60.0, MONDAY_S + 120.0), (100.0, 1000.0, 1000.0))
    config = SimulationConfig(target_tpm_per_instance=100.0, min_replicas=1, max_replicas=20, startup_s=60.0)
    hpa: ScalingPolicy = build_hpa(config)
    stats = replay(trace, {"hpa": hpa}, config)["hpa"]
    assert config.capacity_tpm_per_instance == 125.0  # target 100 at the default threshold 0.8
    # 1 pod until 60 s; then 1 + 4 = 5 (Pods 4 allows more than Percent 100), and at 75 s
    # ceil(1000 / 100) = 10 (the 4 starting pods count as 0, the +4 of 60 s is out of the period).
    # Ready: 1 until 120 s, 5 from 120 s, 10 from 135 s: short of 1000 tpm (1 x 125, then
    # 5 x 125 of capacity) at 60, 75, 90, 105 and 120 s.
    assert stats.minutes_short_of_capacity == pytest.approx(5 * 0.25)
    assert stats.scaling_actions == 2
    assert stats.peak_replicas == 10
    assert stats.instance_minutes == pytest.approx(0.25 * (4 * 1 + 5 + 4 * 10))
    assert stats.shortfall_tpm_minutes == pytest.approx(0.25 * (4 * 875 + 375))


# -- the CLI --------------------------------------------------------------------------------------


def test_cli_round_trip(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.csv", ramp_rows())
    timeline = tmp_path / "out" / "timeline.csv"
    args = parser().parse_args(
        [
            "simulate-scaling",
            str(trace),
            "--target-tpm-per-instance",
            "100",
            "--min",
            "2",
            "--max",
            "30",
            "--startup-s",
            "60",
            "--hpa-target-tpm",
            "125",
            "--output",
            str(timeline),
        ]
    )
    stdout, stderr = io.StringIO(), io.StringIO()
    assert run_simulate(args, stdout=stdout, stderr=stderr) == 0, stderr.getvalue()
    summary = json.loads(stdout.getvalue())
    with timeline.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == TIMELINE_COLUMNS
    assert len(rows) == (6 * 60 - 1) * 4 + 1  # one row per 15 s step, first to last point
    assert rows[0]["timestamp"] == "2026-01-05T00:00:00.000Z"
    for row in rows:
        for side in ("policy", "hpa", "oracle"):
            replicas, ready = int(row[f"{side}_replicas"]), int(row[f"{side}_ready"])
            assert 2 <= replicas <= 30
            assert 0 <= ready <= replicas
    for side in ("policy", "hpa", "oracle"):
        figures = summary[side]
        assert set(figures) >= {"instance_minutes", "minutes_short_of_capacity", "scaling_actions"}
        minutes_short = sum(0.25 for row in rows if float(row["load"]) > int(row[f"{side}_ready"]) * 125)
        assert figures["minutes_short_of_capacity"] == pytest.approx(minutes_short)
        assert figures["instance_minutes"] == pytest.approx(
            sum(0.25 * int(row[f"{side}_replicas"]) for row in rows)
        )
    # An HPA aimed at 100 % of capacity (--hpa-target-tpm 125: no headroom) is outrun by the climb.
    assert summary["hpa"]["minutes_short_of_capacity"] > 0
    ratios = summary["ratios"]
    assert ratios["instance_minutes"] == pytest.approx(
        summary["policy"]["instance_minutes"] / summary["hpa"]["instance_minutes"], rel=1e-3
    )
    # The oracle, which knows the climb in advance, is never short (the others are, and spend
    # less or more: only a count never short has to spend at least the oracle's).
    assert summary["oracle"]["minutes_short_of_capacity"] == 0
    assert ratios["oracle_instance_minutes"] == pytest.approx(
        summary["oracle"]["instance_minutes"] / summary["hpa"]["instance_minutes"], rel=1e-3
    )
    # This HPA, short at the climb, spends less than the oracle: no gap to close.
    assert summary["hpa"]["instance_minutes"] < summary["oracle"]["instance_minutes"]
    assert ratios["oracle_gap_closed"] is None
    assert summary["settings"]["startup_s"] == 60.0
    assert summary["settings"]["capacity_tpm_per_instance"] == 125.0
    assert summary["settings"]["hpa_target_tpm"] == 125.0
    assert summary["trace"]["points"] == 360


def test_cli_reports_bad_input_with_exit_code_2(tmp_path: Path) -> None:
    bad = write_trace(tmp_path / "bad.csv", [("2026-01-05T00:00:00Z", "oops")])
    args = parser().parse_args(
        [
            "simulate-scaling",
            str(bad),
            "--target-tpm-per-instance",
            "100",
            "--output",
            str(tmp_path / "t.csv"),
        ]
    )
    stderr = io.StringIO()
    assert run_simulate(args, stdout=io.StringIO(), stderr=stderr) == 2
    assert "bad.csv:2: value 'oops'" in stderr.getvalue()
    args = parser().parse_args(
        [
            "simulate-scaling",
            str(bad),
            "--target-tpm-per-instance",
            "100",
            "--min",
            "9",
            "--max",
            "3",
            "--output",
            "t.csv",
        ]
    )
    stderr = io.StringIO()
    assert run_simulate(args, stdout=io.StringIO(), stderr=stderr) == 2
    assert "min <= max" in stderr.getvalue()
    with pytest.raises(SystemExit):
        parser().parse_args(["simulate-scaling", "t.csv", "--target-tpm-per-instance", "-5", "--output", "x"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.floats(1, 900), st.floats(0, 20_000)), min_size=1, max_size=40),
    st.integers(1, 5),
    st.integers(5, 40),
    st.sampled_from([0.0, 30.0, 60.0, 100.0]),
)
def test_replay_never_leaves_min_max_and_ready_never_exceeds_replicas(
    points: list[tuple[float, float]], low: int, high: int, startup_s: float
) -> None:
    trace = trace_from_gaps(points)
    config = SimulationConfig(
        target_tpm_per_instance=100.0, min_replicas=low, max_replicas=high, startup_s=startup_s
    )
    seen: list[tuple[int, int]] = []
    policies: dict[str, ScalingPolicy] = {
        "policy": build_policy(config),
        "hpa": build_hpa(config),
        "reactive": ReactivePolicy(
            ReactiveConfig(target_tpm_per_instance=100.0, min_replicas=low, max_replicas=high)
        ),
    }
    stats = replay(trace, policies, config, on_step=lambda _t, _l, observed: seen.extend(observed.values()))
    assert all(low <= replicas <= high and 0 <= ready <= replicas for replicas, ready in seen)
    steps = len(seen) // 3
    for figures in stats.values():
        assert 0 <= figures.minutes_short_of_capacity <= steps * 0.25 + 1e-9
        assert low * steps * 0.25 - 1e-9 <= figures.instance_minutes <= high * steps * 0.25 + 1e-9
        assert not math.isnan(figures.shortfall_tpm_minutes)


def test_cli_fixed_quantile_switches_the_cost_budget_off(tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "trace.csv", ramp_rows(hours=3))
    base = [
        "simulate-scaling",
        str(trace),
        "--target-tpm-per-instance",
        "100",
        "--output",
        str(tmp_path / "t.csv"),
    ]
    stdout = io.StringIO()
    assert run_simulate(parser().parse_args([*base, "--fixed-quantile", "0.9"]), stdout=stdout) == 0
    settings_out = json.loads(stdout.getvalue())["settings"]
    assert (settings_out["fixed_quantile"], settings_out["cost_budget"]) == (0.9, None)
    with pytest.raises(SystemExit):
        parser().parse_args([*base, "--fixed-quantile", "0.9", "--cost-budget", "1.1"])
    with pytest.raises(SystemExit):
        parser().parse_args([*base, "--fixed-quantile", "0.2"])


# -- the oracle -----------------------------------------------------------------------------------


def test_the_oracle_adds_pods_one_start_up_ahead_and_removes_them_at_once() -> None:
    # 300 tpm, 1000 tpm for minutes 10-11, 300 again: capacity 125, start-up 60 s, steps of 15 s.
    loads = [300.0] * 10 + [1000.0] * 2 + [300.0] * 10
    trace = LoadTrace(tuple(MONDAY_S + 60.0 * m for m in range(len(loads))), tuple(loads))
    config = SimulationConfig(target_tpm_per_instance=100.0, min_replicas=1, max_replicas=30, startup_s=60.0)
    seen: list[tuple[int, int]] = []
    stats = replay(
        trace,
        {"oracle": ClairvoyantPolicy(trace, config)},
        config,
        on_step=lambda _t, _l, observed: seen.append(observed["oracle"]),
    )["oracle"]
    assert stats.minutes_short_of_capacity == 0
    # ceil(300 / 125) = 3 and ceil(1000 / 125) = 8: the 8 are asked for at minute 9 (4 steps, one
    # start-up, before the burst), ready at minute 10, and go at the first step after it.
    replicas = [r for r, _ in seen]
    assert replicas[: 9 * 4] == [3] * (9 * 4)
    assert replicas[9 * 4 : 12 * 4] == [8] * (3 * 4)
    assert replicas[12 * 4 :] == [3] * (len(replicas) - 12 * 4)
    assert seen[10 * 4] == (8, 8)
    assert stats.instance_minutes == pytest.approx(0.25 * sum(replicas))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.floats(1, 900), st.floats(0, 20_000)), min_size=2, max_size=40),
    st.sampled_from([0.0, 30.0, 60.0, 100.0]),
)
def test_the_oracle_is_never_short_and_no_policy_that_is_never_short_spends_less(
    points: list[tuple[float, float]], startup_s: float
) -> None:
    trace = trace_from_gaps(points)
    # Every deployment starts with 200 ready pods: a load that rises within the first start-up
    # is no one's to foresee (the oracle included: its docstring says so).
    config = SimulationConfig(
        target_tpm_per_instance=100.0,
        min_replicas=1,
        max_replicas=200,
        startup_s=startup_s,
        initial_replicas=200,
    )
    policies: dict[str, ScalingPolicy] = {
        "oracle": ClairvoyantPolicy(trace, config),
        "hpa": build_hpa(config),
        "policy": build_policy(config),
        "generous": ReactivePolicy(
            ReactiveConfig(target_tpm_per_instance=10.0, min_replicas=1, max_replicas=200)
        ),
    }
    stats = replay(trace, policies, config)
    oracle = stats["oracle"]
    assert oracle.minutes_short_of_capacity == 0
    for name, figures in stats.items():
        if figures.minutes_short_of_capacity == 0:
            assert figures.instance_minutes >= oracle.instance_minutes - 1e-9, name


def test_the_oracle_gap_closed_reads_from_the_hpa_to_the_oracle() -> None:
    def spent(instance_minutes: float) -> ReplayStats:
        return ReplayStats(instance_minutes=instance_minutes)

    assert oracle_gap_closed(spent(100.0), spent(100.0), spent(60.0)) == 0.0
    assert oracle_gap_closed(spent(60.0), spent(100.0), spent(60.0)) == 1.0
    assert oracle_gap_closed(spent(90.0), spent(100.0), spent(60.0)) == 0.25
    assert oracle_gap_closed(spent(110.0), spent(100.0), spent(60.0)) == -0.25
    assert oracle_gap_closed(spent(90.0), spent(60.0), spent(60.0)) is None


def test_the_oracle_refuses_a_time_outside_its_trace() -> None:
    trace = LoadTrace((MONDAY_S, MONDAY_S + 60.0), (100.0, 200.0))
    oracle = ClairvoyantPolicy(trace, SimulationConfig(target_tpm_per_instance=100.0))
    with pytest.raises(ValueError, match="outside the trace"):
        oracle.recommend(MONDAY_S + 3600.0, 100.0, 2, 2)


def test_a_trace_spanning_too_many_steps_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    # A typo in a year: two points ten years apart would be 21 million steps of 15 s. The oracle,
    # built before the replay, must not allocate them: the step count is checked first.
    trace = write_trace(
        tmp_path / "typo.csv", [("2026-01-05T00:00:00Z", "100"), ("2036-01-05T00:00:00Z", "100")]
    )
    args = parser().parse_args(
        [
            "simulate-scaling",
            str(trace),
            "--target-tpm-per-instance",
            "100",
            "--output",
            str(tmp_path / "t.csv"),
        ]
    )
    stderr = io.StringIO()
    assert run_simulate(args, stdout=io.StringIO(), stderr=stderr) == 2
    assert "at most 10000000 are simulated" in stderr.getvalue()
