"""The alert rule: from each point's evidence to its score, "an anomaly begins here" and "it has ended".

`StreamingDetector` hands its rule one number per scored point, the evidence ratio (the strongest
statistic over its threshold, 1.0 = at the alarm threshold), and gets back the point's onset ratio,
which becomes the score `score_many` writes, and a decision: on RAISE it raises an alert (unless the
episode logic recognises a ramp already reported), on CLEAR it closes the episode. The rule sees
only the point's time and evidence, so it can be replaced without touching the statistics.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Final, Protocol

from mcp_autonomy.autonomy.detection.calibration import ratio_from_score
from mcp_autonomy.autonomy.detection.config import StreamingDetectorConfig

__all__ = ["AlertDecision", "AlertRule", "IntervalSource", "OnsetRule"]

_NOT_CALM: Final = math.inf
_LN2: Final = math.log(2.0)


class AlertDecision(Enum):
    """What a point does to the alert state."""

    NONE = "none"  # nothing changes
    RAISE = "raise"  # an anomaly begins on this point
    CLEAR = "clear"  # the anomaly in progress ended on this point


# Enum members through the class cost an attribute lookup each time (slow in 3.11): the rule
# runs on every point, so it uses these.
_NONE: Final = AlertDecision.NONE
_RAISE: Final = AlertDecision.RAISE
_CLEAR: Final = AlertDecision.CLEAR


class IntervalSource(Protocol):
    """Where a rule reads the series' typical interval (its hold and half-life are in intervals)."""

    @property
    def interval_s(self) -> float: ...


class AlertRule(Protocol):
    """Turns each point's evidence into its onset ratio and decides when alerts begin and end."""

    @property
    def in_alert(self) -> bool: ...

    @property
    def decision(self) -> AlertDecision:
        """What the last `step` decided."""
        ...

    def step(self, timestamp_s: float, evidence_ratio: float) -> float: ...


class OnsetRule:
    """Scores the news in a point: its evidence minus what has already been reported.

    Why: a detector's evidence stays high for every point of an episode (a shifted level, a ramp,
    a burst), and a score that does the same raises one alarm per point. An operator, and a single
    threshold across series, want the score highest where the anomaly begins and low once it has
    been said. So the rule keeps `reported`, the evidence ratio of the last alert, which absorbs
    every stronger point while that alert lasts and, once it has ended, halves every
    `reported_half_life_intervals` of elapsed time. A point's onset ratio is `evidence - reported`:

    - at the first point of an anomaly nothing is reported: the onset ratio is the evidence itself;
    - while the alert lasts, its points score what exceeds the reported evidence, never more than
      the exit score: one episode, one alert (the episode logic may add its one TREND alert);
    - after it has ended, the score rises again only for evidence beyond what is still reported:
      a new anomaly, or the old one once its report has decayed (news again).

    RAISE exactly when the onset ratio reaches the enter ratio (`enter_score` through the
    calibration map), so the score and the alerts agree point by point. CLEAR once the evidence has
    stayed under the exit ratio (`exit_score`) for `exit_hold_intervals`; the episode logic uses it.
    """

    __slots__ = (
        "_calm_since_s",
        "_clock",
        "_decay_per_iv",
        "_enter_ratio",
        "_exit_ratio",
        "_hold_iv",
        "_last_t_s",
        "decision",
        "in_alert",
        "reported",
    )

    def __init__(self, config: StreamingDetectorConfig, clock: IntervalSource) -> None:
        self._enter_ratio = ratio_from_score(config.enter_score, config.score_steepness)
        self._exit_ratio = ratio_from_score(config.exit_score, config.score_steepness)
        self._hold_iv = config.exit_hold_intervals
        self._decay_per_iv = _LN2 / config.reported_half_life_intervals
        self._clock = clock
        self.in_alert = False
        self.reported = 0.0  # evidence ratio already reported, decayed to now
        self.decision = _NONE
        self._calm_since_s = _NOT_CALM
        self._last_t_s = -math.inf

    def step(self, timestamp_s: float, evidence_ratio: float) -> float:
        """Take one point's evidence ratio; return its onset ratio (>= 0) and set `decision`."""
        reported = self.reported
        if reported > 0.0 and not self.in_alert:
            elapsed_iv = (timestamp_s - self._last_t_s) / self._clock.interval_s
            if elapsed_iv > 0.0:
                reported *= math.exp(-self._decay_per_iv * elapsed_iv)
        self._last_t_s = timestamp_s
        onset = evidence_ratio - reported
        decision = _NONE
        if self.in_alert:
            if onset > self._exit_ratio:
                onset = self._exit_ratio
            if evidence_ratio > reported:
                reported = evidence_ratio
            if evidence_ratio >= self._exit_ratio:
                self._calm_since_s = _NOT_CALM
            elif self._calm_since_s == _NOT_CALM:
                self._calm_since_s = timestamp_s
            elif timestamp_s - self._calm_since_s >= self._hold_iv * self._clock.interval_s:
                self.in_alert = False
                self._calm_since_s = _NOT_CALM
                decision = _CLEAR
        elif onset >= self._enter_ratio:
            decision = _RAISE
            self.in_alert = True
            self._calm_since_s = _NOT_CALM
            reported = evidence_ratio
        self.reported = reported
        self.decision = decision
        return onset if onset > 0.0 else 0.0
