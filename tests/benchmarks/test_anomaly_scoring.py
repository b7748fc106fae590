"""The NAB-style scorer of `benchmarks/anomaly_scoring.py` against a hand-computed example.

s(y) = 2 / (1 + exp(5 y)) - 1; a detection at index i in window [start, end] earns A_TP * s(y)
with y = (i - end) / (end - start + 1).

Series A: 100 points, probation min(15, 750) = 15, one anomaly at 50: window length 0.1 * 100 / 1
= 10, half 5 -> window [45, 55] (11 points). Scores (0 elsewhere): 0.99 at 5 (probation), 0.6 at 20
(outside), 0.7 at 48, 0.9 at 50, 0.95 at 53 (window), 0.3 at 80 (outside).
Series B: 200 points, probation 30, anomalies at 10, 80, 150: length 0.1 * 200 / 3 = 6.67, half 3
-> windows [7, 13] (ends in probation: not scored), [77, 83], [147, 153] (7 points each). Scores:
0.99 at 10 (probation, in the dropped window), 0.8 at 78, 0.85 at 79 (window 1), 0.5 at 100..107
(8 outside points), 0.4 at 150 (window 2), 0.6 at 170 (outside).

Rewards: A@48 s(-7/11) = 0.92029, A@50 s(-5/11) = 0.81319, A@53 s(-2/11) = 0.42563,
B@78 s(-5/7) = 0.94531, B@79 s(-4/7) = 0.89137, B@150 s(-3/7) = 0.79000.
Null (never fires): -3 windows * A_FN = -3. Perfect (each window at its first point):
s(-10/11) + 2 s(-6/7) = 0.97899 + 2 * 0.97285 = 2.92468.

Standard (FP 0.11), raw by threshold (only the earliest detection in a window counts):
  0.95: 0.42563 - 1 - 1 = -1.57437           0.9: 0.81319 - 2 = -1.18681
  0.85: 0.81319 + 0.89137 - 1 = 0.70456       0.8: 0.81319 + 0.94531 - 1 = 0.75850
  0.7:  0.92029 + 0.94531 - 1 = 0.86560       0.6: 0.86560 - 2 * 0.11 = 0.64560
  0.5:  0.86560 - 10 * 0.11 = -0.23440
  0.4:  0.92029 + 0.94531 + 0.79000 - 10 * 0.11 = 2.65559 - 1.1 = 1.55559   <- best
  0.3:  2.65559 - 11 * 0.11 = 1.44559;  0.0: every point fires, far below.
  normalised = 100 * (1.55559 + 3) / (2.92468 + 3) = 76.892; TP 3, FP 10, FN 0.
Low FP (FP 0.22): 0.7 -> 0.86560 (no FP); 0.4 -> 2.65559 - 10 * 0.22 = 0.45559; 0.6 -> 0.42560;
  0.8 -> 0.75850; so 0.7 is best: normalised 100 * 3.86560 / 5.92468 = 65.246; TP 2, FP 0, FN 1.
Were probation ignored, A@5 would be a false positive at every threshold <= 0.99 and B's first
window would be scored; were every detection in a window counted, 0.7 would earn A@48+A@50+A@53.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scoring = _load("anomaly_scoring")


@dataclass
class Series:
    name: str
    values: np.ndarray
    anomaly_indices: list[int]
    windows: list[tuple[int, int]] | None = None


def _example() -> tuple[list[Series], list[np.ndarray]]:
    a_scores = np.zeros(100)
    a_scores[[5, 20, 48, 50, 53, 80]] = [0.99, 0.6, 0.7, 0.9, 0.95, 0.3]
    b_scores = np.zeros(200)
    b_scores[[10, 78, 79, 150, 170]] = [0.99, 0.8, 0.85, 0.4, 0.6]
    b_scores[100:108] = 0.5
    series = [Series("A", np.zeros(100), [50]), Series("B", np.zeros(200), [10, 80, 150])]
    return series, [a_scores, b_scores]


def test_windows_probation_and_sigmoid_follow_the_rules() -> None:
    assert scoring.anomaly_windows(100, [50]) == [(45, 55)]
    assert scoring.anomaly_windows(200, [10, 80, 150]) == [(7, 13), (77, 83), (147, 153)]
    # Overlapping windows merge; windows clip to the series.
    assert scoring.anomaly_windows(100, [50, 52]) == [(48, 54)]
    assert scoring.anomaly_windows(100, [1, 98]) == [(0, 3), (96, 99)]
    assert scoring.probation_length(100) == 15
    assert scoring.probation_length(20_000) == 750
    assert float(scoring.scaled_sigmoid(-1.0)) == pytest.approx(0.98661, abs=1e-5)
    assert float(scoring.scaled_sigmoid(0.0)) == 0.0


def test_standard_profile_matches_the_hand_computed_example() -> None:
    series, scores = _example()
    report = scoring.score_detector(series, scores, scoring.STANDARD)
    assert report.threshold == 0.4
    assert report.raw == pytest.approx(1.55559, abs=1e-5)
    assert report.null_raw == pytest.approx(-3.0)
    assert report.perfect_raw == pytest.approx(2.92468, abs=1e-5)
    assert report.score == pytest.approx(76.892, abs=1e-3)
    assert (report.tp, report.fp, report.fn) == (3, 10, 0)
    a, b = report.per_series
    assert a.windows == ((45, 55),) and a.first_detections == (48,)
    assert b.windows == ((77, 83), (147, 153)) and b.first_detections == (78, 150)
    assert (a.fp, b.fp) == (1, 9)


def test_low_fp_profile_matches_the_hand_computed_example() -> None:
    series, scores = _example()
    report = scoring.score_detector(series, scores, scoring.LOW_FP)
    assert report.threshold == 0.7
    assert report.raw == pytest.approx(0.86560, abs=1e-5)
    assert report.score == pytest.approx(65.246, abs=1e-3)
    assert (report.tp, report.fp, report.fn) == (2, 0, 1)


@pytest.mark.parametrize(
    ("threshold", "raw"),
    [
        (0.95, -1.57437),
        (0.9, -1.18681),
        (0.85, 0.70456),
        (0.8, 0.75850),
        (0.7, 0.86560),
        (0.6, 0.64560),
        (0.5, -0.23440),
        (0.3, 1.44559),
    ],
)
def test_each_threshold_scores_as_computed_by_hand(threshold: float, raw: float) -> None:
    series, scores = _example()
    report = scoring.score_at_threshold(series, scores, scoring.STANDARD, threshold)
    assert report.raw == pytest.approx(raw, abs=1e-5)


@pytest.mark.parametrize("seed", range(12))
def test_threshold_search_agrees_with_direct_evaluation_everywhere(seed: int) -> None:
    """The exact sweep must pick a threshold no direct evaluation beats, on messy random data:
    quantised scores (ties), NaNs, and scores that rise through each window (several records)."""
    rng = np.random.default_rng(seed)
    series = []
    scores = []
    for k in range(3):
        n = int(rng.integers(150, 500))
        anomalies = sorted(rng.choice(np.arange(n), size=int(rng.integers(1, 4)), replace=False).tolist())
        series.append(Series(f"s{k}", np.zeros(n), anomalies))
        s = np.round(rng.random(n) ** 6, 2)
        for a in anomalies:
            lo, hi = max(a - 5, 0), min(a + 25, n)
            rise = np.round(rng.random(hi - lo) * np.linspace(0.3, 1.0, hi - lo), 2)
            s[lo:hi] = np.maximum(s[lo:hi], rise)
        s[rng.random(n) < 0.01] = np.nan
        scores.append(s)
    candidates = np.unique(np.concatenate([s[~np.isnan(s)] for s in scores]))
    for profile in (scoring.STANDARD, scoring.LOW_FP):
        weighted = bool(seed % 2)
        best = scoring.score_detector(series, scores, profile, weighted_fp=weighted)
        direct = [
            scoring.score_at_threshold(series, scores, profile, float(t), weighted_fp=weighted).raw
            for t in candidates
        ]
        assert best.raw == pytest.approx(max([*direct, best.null_raw]), abs=1e-9)
        again = scoring.score_at_threshold(series, scores, profile, best.threshold, weighted_fp=weighted)
        assert again.raw == pytest.approx(best.raw, abs=1e-9)


def test_weighted_false_positives_cost_less_just_after_a_window() -> None:
    series = [Series("A", np.zeros(100), [], windows=[(40, 49)])]
    right_after = np.zeros(100)
    right_after[[45, 50]] = 1.0
    far_after = np.zeros(100)
    far_after[[45, 95]] = 1.0
    near = scoring.score_at_threshold(series, [right_after], scoring.STANDARD, 1.0, weighted_fp=True)
    far = scoring.score_at_threshold(series, [far_after], scoring.STANDARD, 1.0, weighted_fp=True)
    flat = scoring.score_at_threshold(series, [right_after], scoring.STANDARD, 1.0)
    tp_reward = float(scoring.scaled_sigmoid(-4 / 10))
    # One point past a 10-point window: y = 0.1, cost 0.11 * -s(0.1); 46 points past: y > 3, full cost.
    assert near.raw == pytest.approx(tp_reward + 0.11 * float(scoring.scaled_sigmoid(0.1)))
    assert far.raw == pytest.approx(tp_reward - 0.11)
    assert flat.raw == pytest.approx(tp_reward - 0.11)


def test_a_set_without_windows_prefers_silence_and_counts_false_positives() -> None:
    series = [Series("quiet", np.zeros(50), [])]
    s = np.zeros(50)
    s[30] = 0.9
    report = scoring.score_detector(series, [s], scoring.STANDARD)
    assert math.isinf(report.threshold) and report.raw == 0.0 and report.fp == 0
    assert scoring.score_at_threshold(series, [s], scoring.STANDARD, 0.5).fp == 1


def test_mismatched_scores_are_refused_with_the_series_named() -> None:
    with pytest.raises(ValueError, match="'A'"):
        scoring.score_detector([Series("A", np.zeros(10), [])], [np.zeros(9)])


devset = _load("anomaly_devset")
detection = _load("detection")


def test_windowed_gaussian_baseline_uses_only_past_points_in_steps() -> None:
    """Window 4, step 2 on [1, 3, 1, 3, 1, 3, 9]: point 4 and 5 see points 0..3 (mean 2, sd 1,
    |z| = 1 -> 1 / 2); point 6 sees points 2..5 (mean 2, sd 1, |z| = 7 -> 7 / 8); point 1 sees
    only point 0 (sd 0, floored: certain anomaly); point 0 sees nothing (0)."""
    values = np.array([1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 9.0])
    scores = detection.windowed_gaussian_scores(np.arange(7.0), values, window_points=4, step_points=2)
    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(1.0, abs=1e-6)
    assert scores[4] == pytest.approx(0.5) and scores[5] == pytest.approx(0.5)
    assert scores[6] == pytest.approx(7 / 8)
    future = values.copy()
    future[5:] = 1_000.0
    changed = detection.windowed_gaussian_scores(np.arange(7.0), future, window_points=4, step_points=2)
    assert np.array_equal(changed[:5], scores[:5])


def test_evaluate_scores_any_function_on_labelled_series() -> None:
    series = [devset.LabelledSeries("A", np.arange(100.0), np.zeros(100), [50])]
    perfect = detection.evaluate(lambda t, v: (np.arange(len(v)) == 45).astype(float), series, "standard")
    assert perfect.score == pytest.approx(100.0) and (perfect.tp, perfect.fp) == (1, 0)
    silent = detection.evaluate(lambda t, v: np.zeros(len(v)), series, scoring.LOW_FP)
    assert silent.score == 0.0 and silent.fn == 1


def test_development_and_reporting_sets_are_deterministic_disjoint_and_scorable() -> None:
    dev = devset.development_set(0)
    again = devset.development_set(0)
    report = devset.reporting_set(0)
    assert len(dev) == len(report) == 50
    assert all(np.array_equal(a.values, b.values) for a, b in zip(dev, again, strict=True))
    assert not any(
        len(a.values) == len(b.values) and np.allclose(a.values, b.values) for a in dev for b in report
    )
    kinds = {k for s in dev for k in s.kinds}
    assert kinds == {k for f in devset.FAMILIES.values() for k in f.anomaly_kinds}
    assert any(not s.anomaly_indices for s in dev)
    for s in dev:
        n = len(s.values)
        assert 900 <= n <= devset.MAX_POINTS and len(s.timestamps_s) == n
        assert np.all(np.diff(s.timestamps_s) > 0) and np.all(np.isfinite(s.values))
        assert all(scoring.probation_length(n) < i < n for i in s.anomaly_indices)
    gaps = [s for s in dev if np.max(np.diff(s.timestamps_s)) > 1.5 * np.min(np.diff(s.timestamps_s))]
    assert gaps, "some series must have missing stretches"
