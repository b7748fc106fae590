"""What every detector returns, and the one interface they all share.

A detector is fed one measured point at a time (`update(timestamp_s, value)`) and answers with a
`DetectorResult`: an anomaly score in [0, 1] and the indicators it was derived from, so that a
prediction built on it can show its evidence. When an anomaly begins, one result carries a
`DetectorAlert`; the points after it only report `in_alert=True`. The one exception: an anomaly
that opened as a SPIKE (all a single point can show) and then proves to be a ramp raises one
further alert, of kind TREND, so that what it turned out to be is said once too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


class AnomalyKind(StrEnum):
    """What shape of departure from the learnt baseline a score or an alert stands for.

    SPIKE: one or a few points far from the baseline. LEVEL_SHIFT: a lasting change of level
    (confirmed by a change-point statistic). TREND: a sustained slope that the baseline did not
    have (a slow ramp). SEASONAL: a value that is ordinary overall but not at this time of day or
    week (a missing peak, traffic at night). VOLATILITY: the errors around the baseline grew or
    collapsed while staying centred (a noise burst, a flapping dependency; a stuck, flat-lined metric).
    """

    NONE = "none"
    SPIKE = "spike"
    LEVEL_SHIFT = "level_shift"
    TREND = "trend"
    SEASONAL = "seasonal"
    VOLATILITY = "volatility"


@dataclass(frozen=True, slots=True)
class DetectorIndicator:
    """One statistic behind a score, with the threshold it is compared with (same unit).

    `value >= threshold` is what makes this statistic alarm on its own; the score of the point is
    the calibrated maximum of `value / threshold` over its indicators.
    """

    name: str
    value: float
    threshold: float


@dataclass(frozen=True, slots=True)
class DetectorAlert:
    """The start of an anomaly: raised once, on the point where the score crosses the enter
    threshold, and not again until the anomaly has ended and the cooldown has passed (or, once,
    when an anomaly that opened as a spike proves to be a ramp: then a TREND alert follows).

    `expected` and `scale` are the baseline and the noise scale the point was judged against;
    `slope_per_s` is the trend of the series (value units per second) when it alerted, so a
    prediction can project when a ramp will cross an outage threshold. `slope_stderr_per_s` is
    its standard error on TREND alerts (0 when not estimated): an early estimate of a ramp is
    uncertain, and a projection should say how late the crossing may plausibly come.
    """

    timestamp_s: float
    kind: AnomalyKind
    direction: int
    score: float
    value: float
    expected: float
    scale: float
    slope_per_s: float
    indicators: tuple[DetectorIndicator, ...]
    slope_stderr_per_s: float = 0.0


@dataclass(frozen=True, slots=True)
class DetectorResult:
    """The verdict on one point.

    `anomaly_score` is the point's onset score (`alerting.OnsetRule`): the news in it, high where
    an anomaly begins and low for the rest of an episode already reported; an alert is raised
    exactly where it reaches the enter score. `evidence_score` is how anomalous the point is on its
    own, reported or not (the strongest statistic, calibrated). Both are 0 for points that were
    skipped (NaN, infinite) or fell in the warm-up.
    `expected` and `scale` are None until the baseline exists. `direction` is +1 when the point is
    above its baseline, -1 below, 0 when unscored.
    """

    timestamp_s: float
    value: float
    anomaly_score: float
    kind: AnomalyKind
    direction: int
    expected: float | None
    scale: float | None
    indicators: tuple[DetectorIndicator, ...]
    in_alert: bool
    alert: DetectorAlert | None
    evidence_score: float = 0.0


@runtime_checkable
class Detector(Protocol):
    """A streaming, per-series anomaly detector: O(1) work and bounded memory per point.

    Points must come in time order; a point older than the previous one is treated as simultaneous
    with it. Non-finite values are skipped (score 0) and leave the state untouched.
    """

    def update(self, timestamp_s: float, value: float) -> DetectorResult:
        """Score one point and learn from it."""
        ...

    def score_many(self, timestamps_s: list[float], values: list[float]) -> list[float]:
        """Score a batch of points exactly as the same number of `update` calls would.

        Returns one score per point; alerts raised on the way are kept for `drain_alerts`.
        """
        ...

    def drain_alerts(self) -> list[DetectorAlert]:
        """The alerts raised by `score_many` since the last drain, oldest first."""
        ...


def require(condition: bool, field: str, allowed: str, value: object) -> None:
    """Raise `ValueError` naming the field, the allowed range and the value when `condition` fails."""
    if not condition:
        raise ValueError(f"{field} must be {allowed}, got {value!r}")


def is_number(value: object) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
