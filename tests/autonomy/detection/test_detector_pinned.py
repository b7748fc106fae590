"""Pins `StreamingDetector`'s exact behaviour on fixed series, so a refactor cannot change it.

The fixture `detector_pinned.json` was first recorded before the per-point loop was split into
stages (issue 17), then re-recorded once on purpose when the score became the onset score
(`alerting.OnsetRule`), the scale learnt the series' step and the noise-size statistic was added. Every score of `score_many`, every alert drained, and the
full `update()` result on a few series must stay the same (floats rounded to 12 significant
digits, which tolerates a last-bit difference from reordered arithmetic but nothing a reader of
the scores could notice). A change that is *meant* to change scores regenerates the fixture:

    .venv/bin/python tests/autonomy/detection/test_detector_pinned.py --write

and says in its commit why the pinned numbers moved.
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mcp_autonomy.autonomy.detection import (
    DetectorAlert,
    DetectorResult,
    StreamingDetector,
    StreamingDetectorConfig,
)

FIXTURE = Path(__file__).with_name("detector_pinned.json")
T0_S = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MINUTE_S = 60.0
FIVE_MINUTES_S = 300.0
HOUR_S = 3600.0
DAY_S = 86_400.0
SIGNIFICANT_DIGITS = 12

Series = tuple[list[float], list[float]]


def _noise(rng: random.Random, n: int, sigma: float, level: float = 100.0) -> list[float]:
    return [level + rng.gauss(0.0, sigma) for _ in range(n)]


def _grid(n: int, step_s: float) -> list[float]:
    return [T0_S + step_s * i for i in range(n)]


def noise() -> Series:
    rng = random.Random(1)
    return _grid(3000, MINUTE_S), _noise(rng, 3000, 2.0)


def seasonal_daily() -> Series:
    """A daily peak at 5-minute sampling over 5 days, with a missing peak on the last day."""
    rng = random.Random(2)
    n = 5 * 288
    t = _grid(n, FIVE_MINUTES_S)
    x = []
    for i, ts in enumerate(t):
        hour = (ts % DAY_S) / HOUR_S
        peak = 50.0 * math.exp(-(((hour - 13.0) / 3.0) ** 2))
        if 4 * 288 + 150 <= i < 4 * 288 + 170:
            peak = 0.0
        x.append(100.0 + peak + rng.gauss(0.0, 2.0))
    return t, x


def seasonal_weekly() -> Series:
    """Hourly points over 3 weeks: daily cycle plus quiet weekends, then a busy Sunday."""
    rng = random.Random(3)
    n = 21 * 24
    t = _grid(n, HOUR_S)
    x = []
    for i, ts in enumerate(t):
        hour = (ts % DAY_S) / HOUR_S
        weekday = int(((ts - T0_S) // DAY_S) % 7)
        value = 200.0 + 80.0 * math.sin(2.0 * math.pi * hour / 24.0)
        if weekday >= 5 and i < 20 * 24:
            value *= 0.5
        x.append(value + rng.gauss(0.0, 4.0))
    return t, x


def level_shifts() -> Series:
    """Up by 4 sigma, then back to the old level (a recovery), then a big step down."""
    rng = random.Random(4)
    x = _noise(rng, 6000, 2.0)
    for i in range(2500, 4000):
        x[i] += 8.0
    for i in range(5000, 6000):
        x[i] -= 40.0
    return _grid(6000, MINUTE_S), x


def ramp_slow() -> Series:
    rng = random.Random(5)
    x = _noise(rng, 6000, 5.0)
    for i in range(3000, 6000):
        x[i] += 0.2 * (i - 3000)
    return _grid(6000, MINUTE_S), x


def ramp_fast() -> Series:
    """A latency ramp at 15-second sampling from 400 ms to 15 s over 30 minutes, multiplicative noise."""
    rng = random.Random(6)
    n_base, n_ramp, n_hold = 1440, 120, 240
    level = [400.0] * n_base + [400.0 + (15_000.0 - 400.0) * k / (n_ramp - 1) for k in range(n_ramp)]
    level += [15_000.0] * n_hold
    return _grid(len(level), 15.0), [v * rng.uniform(0.9, 1.1) for v in level]


def ramp_continuing() -> Series:
    """A 6-hour ramp at 15 s that re-baselining chases: the de-duplication of a ramp going on."""
    rng = random.Random(7)
    n_base, n_ramp = 1440, 1440
    level = [400.0] * n_base + [400.0 + (15_000.0 - 400.0) * k / (n_ramp - 1) for k in range(n_ramp)]
    return _grid(len(level), 15.0), [v * rng.uniform(0.9, 1.1) for v in level]


def ramp_multiplicative() -> Series:
    """A long ramp under +-10 % multiplicative noise: after its episode ends, the ramp going on is
    detected again and recognised as the same one (the continuation that raises nothing)."""
    rng = random.Random(4)
    x = [(100.0 + (0.3 * (i - 2000) if i >= 2000 else 0.0)) * rng.uniform(0.9, 1.1) for i in range(8000)]
    return _grid(8000, MINUTE_S), x


def spikes() -> Series:
    """Isolated spikes both ways, a three-point burst, and a spike that opens a ramp."""
    rng = random.Random(8)
    x = _noise(rng, 5000, 2.0)
    x[1000] += 40.0
    x[1500] -= 40.0
    for i in range(2000, 2003):
        x[i] += 30.0
    x[3000] += 30.0
    for i in range(3000, 5000):
        x[i] += 25.0 + 0.05 * (i - 3000)
    return _grid(5000, MINUTE_S), x


def gaps_and_irregular() -> Series:
    """Jittered timestamps (the interval is learnt), two long silences, an out-of-order point."""
    rng = random.Random(9)
    t: list[float] = []
    now = T0_S
    for i in range(4000):
        now += MINUTE_S * rng.uniform(0.5, 1.5)
        if i in (1200, 2600):
            now += 6 * HOUR_S
        t.append(now)
    t[3000] = t[2999] - 30.0
    for i in range(3500, 3600):  # a burst of points a second apart: the interval estimate shrinks
        t[i] = t[3499] + (i - 3499)
    for i in range(3600, 4000):
        t[i] = t[3599] + MINUTE_S * (i - 3599)
    x = _noise(rng, 4000, 3.0, level=50.0)
    for i in range(2600, 4000):
        x[i] += 12.0
    return t, x


def quantised_counts() -> Series:
    """Small integer counts (Poisson-like), then a surge."""
    rng = random.Random(10)
    x = []
    for i in range(4000):
        mean = 3.0 if i < 3000 else 12.0
        x.append(float(sum(1 for _ in range(20) if rng.random() < mean / 20.0)))
    return _grid(4000, MINUTE_S), x


def flat_line() -> Series:
    """Constant, then a tiny bump, then constant at a new value."""
    x = [42.0] * 3000
    x[1500] = 42.5
    x[1800] = 1000.0  # thousands of thresholds: the score saturates at 1
    for i in range(2200, 3000):
        x[i] = 43.0
    return _grid(3000, MINUTE_S), x


def flat_zero() -> Series:
    """Exactly zero (the absolute scale floor), with one bump."""
    x = [0.0] * 2000
    x[1000] = 1e-6
    return _grid(2000, MINUTE_S), x


def with_non_finite() -> Series:
    """NaNs and infinities in values and timestamps, some during the warm-up."""
    rng = random.Random(11)
    t = _grid(2500, MINUTE_S)
    x = _noise(rng, 2500, 2.0)
    for i in (5, 17, 400, 401, 402, 1500, 2100):
        x[i] = math.nan
    x[800] = math.inf
    x[801] = -math.inf
    t[900] = math.nan
    t[901] = math.inf
    x[1800] += 30.0
    return t, x


def heavy_tails() -> Series:
    """Laplace-like noise with frequent ordinary jumps, then a real burst."""
    rng = random.Random(12)
    x = [100.0 + rng.expovariate(0.5) * (1.0 if rng.random() < 0.5 else -1.0) for _ in range(4000)]
    for i in range(3200, 3260):
        x[i] += 40.0
    return _grid(4000, MINUTE_S), x


SERIES: dict[str, Callable[[], Series]] = {
    "noise": noise,
    "seasonal_daily": seasonal_daily,
    "seasonal_weekly": seasonal_weekly,
    "level_shifts": level_shifts,
    "ramp_slow": ramp_slow,
    "ramp_fast": ramp_fast,
    "ramp_continuing": ramp_continuing,
    "ramp_multiplicative": ramp_multiplicative,
    "spikes": spikes,
    "gaps_and_irregular": gaps_and_irregular,
    "quantised_counts": quantised_counts,
    "flat_line": flat_line,
    "flat_zero": flat_zero,
    "with_non_finite": with_non_finite,
    "heavy_tails": heavy_tails,
}

# Configurations besides the default: another sensitivity and another steepness (the score's
# general branch), a fixed interval, a short warm-up, and an eager one that raises more alerts than
# the pending list holds (the oldest are dropped).
CONFIGS: dict[str, Callable[[], StreamingDetectorConfig]] = {
    "default": StreamingDetectorConfig,
    "high_steep2": lambda: StreamingDetectorConfig.for_sensitivity("high", score_steepness=2.0),
    "fixed_interval_short_warmup": lambda: StreamingDetectorConfig(sample_interval_s=60.0, warmup_points=10),
    "eager": lambda: StreamingDetectorConfig(
        exit_hold_intervals=0.0, reported_half_life_intervals=0.01, spike_threshold_z=0.3, cusum_threshold=0.5
    ),
}
# (config, series) pairs run through score_many; every series runs with the default config.
BATCH_CASES: list[tuple[str, str]] = [("default", name) for name in SERIES] + [
    ("high_steep2", "spikes"),
    ("high_steep2", "ramp_slow"),
    ("high_steep2", "seasonal_daily"),
    ("fixed_interval_short_warmup", "gaps_and_irregular"),
    ("fixed_interval_short_warmup", "level_shifts"),
    ("eager", "noise"),
]
# Series also replayed point by point through update(), every result recorded in full.
UPDATE_CASES: list[str] = ["spikes", "with_non_finite", "ramp_fast"]


def _round(value: float) -> float | str:
    """12 significant digits; non-finite values as strings (JSON has no NaN or infinity)."""
    if not math.isfinite(value):
        return repr(value)
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def _alert(alert: DetectorAlert) -> dict[str, Any]:
    return {
        "timestamp_s": _round(alert.timestamp_s),
        "kind": alert.kind.value,
        "direction": alert.direction,
        "score": _round(alert.score),
        "value": _round(alert.value),
        "expected": _round(alert.expected),
        "scale": _round(alert.scale),
        "slope_per_s": _round(alert.slope_per_s),
        "slope_stderr_per_s": _round(alert.slope_stderr_per_s),
        "indicators": [[i.name, _round(i.value), _round(i.threshold)] for i in alert.indicators],
    }


def _result(result: DetectorResult) -> list[Any]:
    """A result as a flat list (the fixture holds thousands): the fields in declaration order,
    indicators as (value, threshold) pairs (their names are pinned with the alerts)."""
    return [
        _round(result.timestamp_s),
        _round(result.value),
        _round(result.anomaly_score),
        result.kind.value,
        result.direction,
        None if result.expected is None else _round(result.expected),
        None if result.scale is None else _round(result.scale),
        [[_round(i.value), _round(i.threshold)] for i in result.indicators],
        result.in_alert,
        None if result.alert is None else _alert(result.alert),
    ]


def _state(detector: StreamingDetector) -> dict[str, Any]:
    interval = detector.sample_interval_s
    return {
        "points_seen": detector.points_seen,
        "warmed_up": detector.warmed_up,
        "seasonal_model": detector.seasonal_model,
        "in_alert": detector.in_alert,
        "sample_interval_s": None if interval is None else _round(interval),
    }


def record_batch(config_name: str, series_name: str) -> dict[str, Any]:
    t, x = SERIES[series_name]()
    detector = StreamingDetector(CONFIGS[config_name]())
    # Two batches, drained in between: state carries across calls of score_many.
    half = len(t) // 2
    scores = detector.score_many(t[:half], x[:half])
    alerts = detector.drain_alerts()
    scores += detector.score_many(t[half:], x[half:])
    alerts += detector.drain_alerts()
    return {
        "scores": [_round(s) for s in scores],
        "alerts": [_alert(a) for a in alerts],
        "state": _state(detector),
    }


def record_updates(series_name: str) -> dict[str, Any]:
    t, x = SERIES[series_name]()
    detector = StreamingDetector()
    results = [_result(detector.update(a, b)) for a, b in zip(t, x, strict=True)]
    return {"results": results, "state": _state(detector)}


def record_all() -> dict[str, Any]:
    return {
        "batch": {f"{c}/{s}": record_batch(c, s) for c, s in BATCH_CASES},
        "update": {s: record_updates(s) for s in UPDATE_CASES},
    }


@pytest.fixture(scope="module")
def pinned() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize(("config_name", "series_name"), BATCH_CASES)
def test_score_many_matches_the_pinned_scores_and_alerts(
    pinned: dict[str, Any], config_name: str, series_name: str
) -> None:
    expected = pinned["batch"][f"{config_name}/{series_name}"]
    actual = record_batch(config_name, series_name)
    assert actual["state"] == expected["state"]
    assert actual["alerts"] == expected["alerts"]
    mismatches = [
        i for i, (a, b) in enumerate(zip(actual["scores"], expected["scores"], strict=True)) if a != b
    ]
    assert not mismatches, f"{len(mismatches)} scores differ, first at index {mismatches[0]}"


@pytest.mark.parametrize("series_name", UPDATE_CASES)
def test_update_matches_the_pinned_results(pinned: dict[str, Any], series_name: str) -> None:
    expected = pinned["update"][series_name]
    actual = record_updates(series_name)
    assert actual["state"] == expected["state"]
    mismatches = [
        i for i, (a, b) in enumerate(zip(actual["results"], expected["results"], strict=True)) if a != b
    ]
    assert not mismatches, (
        f"{len(mismatches)} results differ, first at index {mismatches[0]}: "
        f"{actual['results'][mismatches[0]]} != {expected['results'][mismatches[0]]}"
    )


def test_the_pinned_series_exercise_every_kind_of_alert(pinned: dict[str, Any]) -> None:
    """The fixture is only a pin if it covers what the detector can say: every alert kind, the
    TREND escalation of a spike-opened episode, and a daily and weekly seasonal model."""
    kinds = {a["kind"] for case in pinned["batch"].values() for a in case["alerts"]}
    assert kinds >= {"spike", "level_shift", "trend", "seasonal"}, kinds
    escalated = [
        a
        for case in pinned["batch"].values()
        for a in case["alerts"]
        if a["kind"] == "trend" and a["slope_stderr_per_s"] != 0.0
    ]
    assert escalated
    models = {case["state"]["seasonal_model"] for case in pinned["batch"].values()}
    assert models >= {"daily", "weekly"}, models


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: test_detector_pinned.py --write  (regenerates the fixture)")
    FIXTURE.write_text(json.dumps(record_all(), indent=None, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE}")
