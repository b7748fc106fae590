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


def test_threshold_search_agrees_with_direct_evaluation_everywhere() -> None:
    """The exact sweep must pick a threshold no direct evaluation beats, on messy random data."""
    rng = np.random.default_rng(3)
    series = []
    scores = []
    for k in range(6):
        n = int(rng.integers(300, 2_000))
        anomalies = sorted(rng.choice(np.arange(n), size=k % 4, replace=False).tolist())
        series.append(Series(f"s{k}", np.zeros(n), anomalies))
        s = np.round(rng.random(n) ** 8, 3)  # quantised: many ties
        s[rng.random(n) < 0.01] = np.nan
        scores.append(s)
    for profile in (scoring.STANDARD, scoring.LOW_FP):
        for weighted in (False, True):
            best = scoring.score_detector(series, scores, profile, weighted_fp=weighted)
            candidates = np.unique(np.concatenate([s[~np.isnan(s)] for s in scores]))
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
