"""NAB-style scoring of streaming anomaly detectors on labelled series (issue 17).

The rules are the public Numenta Anomaly Benchmark ones as issue 17 states them, written from that
description (no NAB code or data): a window around each labelled anomaly; the first 15 % of each
series (at most 750 points) is probation and not scored; one threshold for every series, the best
one searched; in a window only the earliest detection counts, rewarded by a scaled sigmoid of its
position; a window with no detection costs A_FN; every detection outside all windows costs A_FP.
The raw score is normalised to 100 for a perfect detector and 0 for one that never fires.

Used by `benchmarks/detection.py`; `score_detector` is the entry point, `score_at_threshold` scores
one given threshold (for a REPL or a test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "LOW_FP",
    "PROBATION_FRACTION",
    "PROBATION_MAX_POINTS",
    "PROFILES",
    "STANDARD",
    "WINDOW_FRACTION",
    "Labelled",
    "Profile",
    "ScoreReport",
    "SeriesScore",
    "anomaly_windows",
    "probation_length",
    "scaled_sigmoid",
    "score_at_threshold",
    "score_detector",
]

# NAB: all windows of a series together cover 10 % of it, split evenly between its anomalies.
WINDOW_FRACTION = 0.10
# NAB: the first 15 % of a series, capped at 750 points, lets a detector learn; it is not scored.
PROBATION_FRACTION = 0.15
PROBATION_MAX_POINTS = 750
# Past three window lengths after a window, NAB's weighted false positive costs the full A_FP.
_FP_FULL_COST_POSITION = 3.0

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Profile:
    """Weights of one application profile: reward of a true positive, costs of an FP and an FN."""

    name: str
    a_tp: float
    a_fp: float
    a_fn: float

    def __post_init__(self) -> None:
        for field, value in (("a_tp", self.a_tp), ("a_fp", self.a_fp), ("a_fn", self.a_fn)):
            if not (value >= 0.0 and math.isfinite(value)):
                raise ValueError(f"Profile.{field} must be a finite number >= 0, got {value!r}")


STANDARD = Profile("standard", a_tp=1.0, a_fp=0.11, a_fn=1.0)
LOW_FP = Profile("low_fp", a_tp=1.0, a_fp=0.22, a_fn=1.0)
PROFILES: dict[str, Profile] = {p.name: p for p in (STANDARD, LOW_FP)}


class Labelled(Protocol):
    """What the scorer reads of a labelled series (`anomaly_devset.LabelledSeries` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def values(self) -> npt.NDArray[np.float64]: ...
    @property
    def anomaly_indices(self) -> list[int]: ...
    @property
    def windows(self) -> list[tuple[int, int]] | None: ...


@dataclass(frozen=True, slots=True)
class SeriesScore:
    """One series at the chosen threshold. Windows are inclusive index pairs after probation."""

    name: str
    raw: float
    null_raw: float
    perfect_raw: float
    tp: int
    fp: int
    fn: int
    windows: tuple[tuple[int, int], ...]
    first_detections: tuple[int | None, ...]  # per window: the index that counted, or None


@dataclass(frozen=True, slots=True)
class ScoreReport:
    """A detector's result over a set of series under one profile, at the best single threshold."""

    profile: Profile
    threshold: float  # +inf when never firing scores best (e.g. a set with no windows)
    score: float  # normalised: 100 perfect, 0 never firing; negative when worse than silence
    raw: float
    null_raw: float
    perfect_raw: float
    tp: int
    fp: int
    fn: int
    per_series: tuple[SeriesScore, ...]


def scaled_sigmoid(position: float | FloatArray) -> FloatArray:
    """2 / (1 + exp(5 y)) - 1: ~0.987 at y = -1 (window start), 0 at y = 0 (window end), -> -1 after."""
    y = np.asarray(position, dtype=np.float64)
    return np.asarray(2.0 / (1.0 + np.exp(5.0 * y)) - 1.0, dtype=np.float64)


def probation_length(n_points: int) -> int:
    """Points at the start of a series that are not scored: 15 % of it, at most 750."""
    return min(math.floor(PROBATION_FRACTION * n_points), PROBATION_MAX_POINTS)


def anomaly_windows(n_points: int, anomaly_indices: Sequence[int]) -> list[tuple[int, int]]:
    """NAB windows: each anomaly gets 10 % of the series / number of anomalies, centred on it,
    clipped to the series; overlapping windows merge. Inclusive (start, end) index pairs."""
    if not anomaly_indices:
        return []
    length = WINDOW_FRACTION * n_points / len(anomaly_indices)
    half = max(int(length // 2), 0)
    raw = sorted((max(i - half, 0), min(i + half, n_points - 1)) for i in anomaly_indices)
    return _merge(raw)


def _merge(windows: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One series cut into what the threshold sweep needs."""

    name: str
    windows: tuple[tuple[int, int], ...]
    # Per window: indices where the running max of the scores (from the first scorable point of
    # the window) reaches a new record, those record values, and the reward if detected there.
    record_indices: tuple[npt.NDArray[np.int64], ...]
    record_values: tuple[FloatArray, ...]
    record_rewards: tuple[FloatArray, ...]
    perfect_rewards: FloatArray  # per window: reward of a detection at its first scorable point
    outside_scores: FloatArray  # scores of scored points outside every window
    outside_indices: npt.NDArray[np.int64]
    outside_costs: FloatArray  # per outside point: the cost of a detection there (> 0)


def _series_windows(series: Labelled, n_points: int) -> list[tuple[int, int]]:
    if series.windows is not None:
        for start, end in series.windows:
            if not 0 <= start <= end < n_points:
                raise ValueError(
                    f"series {series.name!r}: window ({start}, {end}) must satisfy 0 <= start <= end < {n_points}"
                )
        return _merge(series.windows)
    for index in series.anomaly_indices:
        if not 0 <= index < n_points:
            raise ValueError(f"series {series.name!r}: anomaly index {index} must be in [0, {n_points})")
    return anomaly_windows(n_points, series.anomaly_indices)


def _prepare(series: Labelled, scores: npt.ArrayLike, profile: Profile, weighted_fp: bool) -> _Prepared:
    values = np.asarray(series.values)
    score_arr = np.asarray(scores, dtype=np.float64)
    n_points = len(values)
    if score_arr.shape != (n_points,):
        raise ValueError(
            f"series {series.name!r}: scores must have one value per point ({n_points}), got shape {score_arr.shape}"
        )
    # A NaN score (e.g. during a detector's warm-up) never reaches any threshold.
    score_arr = np.where(np.isnan(score_arr), -np.inf, score_arr)
    probation = probation_length(n_points)
    # A window that ends inside probation cannot be scored at all; one that straddles its end is
    # scored on its points after probation, its positions still measured on the whole window.
    windows = [w for w in _series_windows(series, n_points) if w[1] >= probation]

    in_window = np.zeros(n_points, dtype=bool)
    rec_idx: list[npt.NDArray[np.int64]] = []
    rec_val: list[FloatArray] = []
    rec_rew: list[FloatArray] = []
    perfect: list[float] = []
    for start, end in windows:
        in_window[start : end + 1] = True
        first = max(start, probation)
        segment = score_arr[first : end + 1]
        running_max = np.maximum.accumulate(segment)
        is_record = np.empty(len(segment), dtype=bool)
        is_record[0] = True
        is_record[1:] = running_max[1:] > running_max[:-1]
        indices = np.flatnonzero(is_record).astype(np.int64) + first
        finite = np.isfinite(score_arr[indices])
        indices = indices[finite]
        window_length = end - start + 1
        rec_idx.append(indices)
        rec_val.append(score_arr[indices])
        rec_rew.append(profile.a_tp * scaled_sigmoid((indices - end) / window_length))
        perfect.append(float(profile.a_tp * scaled_sigmoid((first - end) / window_length)))

    outside = ~in_window
    outside[:probation] = False
    outside_idx = np.flatnonzero(outside).astype(np.int64)
    costs = np.full(len(outside_idx), profile.a_fp, dtype=np.float64)
    if weighted_fp and windows:
        # NAB's optional weighting: a false positive soon after a window costs less than a full A_FP.
        ends = np.array([w[1] for w in windows], dtype=np.int64)
        lengths = np.array([w[1] - w[0] + 1 for w in windows], dtype=np.float64)
        previous = np.searchsorted(ends, outside_idx, side="left") - 1
        after = previous >= 0
        position = (outside_idx[after] - ends[previous[after]]) / lengths[previous[after]]
        weight = np.where(position > _FP_FULL_COST_POSITION, -1.0, scaled_sigmoid(position))
        costs[after] = -profile.a_fp * weight
    keep = np.isfinite(score_arr[outside_idx])
    return _Prepared(
        name=series.name,
        windows=tuple(windows),
        record_indices=tuple(rec_idx),
        record_values=tuple(rec_val),
        record_rewards=tuple(rec_rew),
        perfect_rewards=np.asarray(perfect, dtype=np.float64),
        outside_scores=score_arr[outside_idx[keep]],
        outside_indices=outside_idx[keep],
        outside_costs=costs[keep],
    )


def _evaluate(prepared: _Prepared, profile: Profile, threshold: float) -> SeriesScore:
    raw = 0.0
    tp = 0
    firsts: list[int | None] = []
    for indices, values, rewards in zip(
        prepared.record_indices, prepared.record_values, prepared.record_rewards, strict=True
    ):
        # Records rise, so the first record at or above the threshold is the earliest detection.
        hit = np.flatnonzero(values >= threshold)
        if len(hit):
            raw += float(rewards[hit[0]])
            tp += 1
            firsts.append(int(indices[hit[0]]))
        else:
            raw -= profile.a_fn
            firsts.append(None)
    fired = prepared.outside_scores >= threshold
    raw -= float(prepared.outside_costs[fired].sum())
    n_windows = len(prepared.windows)
    return SeriesScore(
        name=prepared.name,
        raw=raw,
        null_raw=-profile.a_fn * n_windows,
        perfect_raw=float(prepared.perfect_rewards.sum()),
        tp=tp,
        fp=int(fired.sum()),
        fn=n_windows - tp,
        windows=prepared.windows,
        first_detections=tuple(firsts),
    )


def _best_threshold(prepared: Sequence[_Prepared], profile: Profile) -> float:
    """Exact search: the raw score only changes at a window's score record or an outside score."""
    # Window part: as the threshold falls to a record value, that window's reward changes from
    # the previous (higher-threshold) state to the record's reward.
    event_values: list[FloatArray] = []
    event_deltas: list[FloatArray] = []
    for p in prepared:
        for values, rewards in zip(p.record_values, p.record_rewards, strict=True):
            if not len(values):
                continue
            # Lower thresholds reach earlier records; walk records from the highest (latest) down.
            previous = np.concatenate(([-profile.a_fn], rewards[::-1][:-1]))
            event_values.append(values[::-1])
            event_deltas.append(rewards[::-1] - previous)
    ev_values = np.concatenate(event_values) if event_values else np.empty(0)
    ev_deltas = np.concatenate(event_deltas) if event_deltas else np.empty(0)
    fp_scores = np.concatenate([p.outside_scores for p in prepared]) if prepared else np.empty(0)
    fp_costs = np.concatenate([p.outside_costs for p in prepared]) if prepared else np.empty(0)

    candidates = np.unique(np.concatenate((ev_values, fp_scores)))  # ascending
    if not len(candidates):
        return math.inf

    def suffix_sum(keys: FloatArray, weights: FloatArray) -> FloatArray:
        # Sum of weights whose key >= each candidate.
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        cumulative = np.concatenate(([0.0], np.cumsum(weights[order])))
        below = np.searchsorted(sorted_keys, candidates, side="left")
        return np.asarray(cumulative[-1] - cumulative[below], dtype=np.float64)

    gain = suffix_sum(ev_values, ev_deltas) - suffix_sum(fp_scores, fp_costs)
    best = int(np.argmax(gain[::-1]))  # highest threshold among equal scores
    # Never firing (gain 0) wins over any threshold that does not beat it.
    if gain[::-1][best] <= 0.0:
        return math.inf
    return float(candidates[::-1][best])


def _report(prepared: Sequence[_Prepared], profile: Profile, threshold: float) -> ScoreReport:
    per_series = tuple(_evaluate(p, profile, threshold) for p in prepared)
    raw = sum(s.raw for s in per_series)
    null_raw = sum(s.null_raw for s in per_series)
    perfect_raw = sum(s.perfect_raw for s in per_series)
    span = perfect_raw - null_raw
    score = 100.0 * (raw - null_raw) / span if span > 0.0 else 0.0
    return ScoreReport(
        profile=profile,
        threshold=threshold,
        score=score,
        raw=raw,
        null_raw=null_raw,
        perfect_raw=perfect_raw,
        tp=sum(s.tp for s in per_series),
        fp=sum(s.fp for s in per_series),
        fn=sum(s.fn for s in per_series),
        per_series=per_series,
    )


def _prepare_all(
    series: Sequence[Labelled], scores: Sequence[npt.ArrayLike], profile: Profile, weighted_fp: bool
) -> list[_Prepared]:
    if len(series) != len(scores):
        raise ValueError(f"scores must have one array per series ({len(series)}), got {len(scores)}")
    return [_prepare(s, sc, profile, weighted_fp) for s, sc in zip(series, scores, strict=True)]


def score_at_threshold(
    series: Sequence[Labelled],
    scores: Sequence[npt.ArrayLike],
    profile: Profile = STANDARD,
    threshold: float = 0.5,
    *,
    weighted_fp: bool = False,
) -> ScoreReport:
    """Score the detector at one given threshold (points with score >= threshold are detections)."""
    return _report(_prepare_all(series, scores, profile, weighted_fp), profile, threshold)


def score_detector(
    series: Sequence[Labelled],
    scores: Sequence[npt.ArrayLike],
    profile: Profile = STANDARD,
    *,
    weighted_fp: bool = False,
) -> ScoreReport:
    """Score the detector at the single best threshold for all series (exact search).

    `weighted_fp` applies NAB's optional sigmoid weighting of false positives that follow a window
    (off: every false positive costs A_FP, as issue 17 states the rules).
    """
    prepared = _prepare_all(series, scores, profile, weighted_fp)
    return _report(prepared, profile, _best_threshold(prepared, profile))
