"""The alert rule: from each point's raw score to "an anomaly begins here" and "it has ended".

`StreamingDetector` asks its rule once per scored point (`decide`) and acts on the answer: on RAISE
it raises an alert (unless the episode logic recognises a ramp already reported), on CLEAR it closes
the episode. The rule sees only the point's time, raw score and kind, so it can be replaced without
touching the statistics or the episodes.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Final, Protocol

from mcp_autonomy.autonomy.detection.base import AnomalyKind
from mcp_autonomy.autonomy.detection.config import StreamingDetectorConfig

__all__ = ["AlertDecision", "AlertRule", "HysteresisRule", "IntervalSource"]

_NOT_CALM: Final = math.inf


class AlertDecision(Enum):
    """What a point does to the alert state."""

    NONE = "none"  # nothing changes
    RAISE = "raise"  # an anomaly begins on this point
    CLEAR = "clear"  # the anomaly in progress ended on this point


# Enum members through the class cost an attribute lookup each time (slow in 3.11): the rule
# runs on every point, so it returns these.
_NONE: Final = AlertDecision.NONE
_RAISE: Final = AlertDecision.RAISE
_CLEAR: Final = AlertDecision.CLEAR


class IntervalSource(Protocol):
    """Where a rule reads the series' typical interval (its hold and cooldown are in intervals)."""

    @property
    def interval_s(self) -> float: ...


class AlertRule(Protocol):
    """Decides, point by point, when an alert is raised and when the anomaly has ended."""

    @property
    def in_alert(self) -> bool: ...

    def decide(self, timestamp_s: float, raw_score: float, kind: AnomalyKind) -> AlertDecision: ...


class HysteresisRule:
    """Hysteresis and cooldown: RAISE when the score reaches `enter_score` (and the cooldown has
    passed); CLEAR once it has stayed under `exit_score` for `exit_hold_intervals`; then no new
    alert for `cooldown_intervals`. The kind plays no part."""

    __slots__ = (
        "_calm_since_s",
        "_clock",
        "_cooldown_iv",
        "_cooldown_until_s",
        "_enter",
        "_exit",
        "_hold_iv",
        "in_alert",
    )

    def __init__(self, config: StreamingDetectorConfig, clock: IntervalSource) -> None:
        self._enter = config.enter_score
        self._exit = config.exit_score
        self._hold_iv = config.exit_hold_intervals
        self._cooldown_iv = config.cooldown_intervals
        self._clock = clock
        self.in_alert = False
        self._calm_since_s = _NOT_CALM
        self._cooldown_until_s = -math.inf

    def decide(self, timestamp_s: float, raw_score: float, kind: AnomalyKind) -> AlertDecision:
        if self.in_alert:
            if raw_score >= self._exit:
                self._calm_since_s = _NOT_CALM
            elif self._calm_since_s == _NOT_CALM:
                self._calm_since_s = timestamp_s
            elif timestamp_s - self._calm_since_s >= self._hold_iv * self._clock.interval_s:
                self.in_alert = False
                self._calm_since_s = _NOT_CALM
                self._cooldown_until_s = timestamp_s + self._cooldown_iv * self._clock.interval_s
                return _CLEAR
        elif raw_score >= self._enter and timestamp_s >= self._cooldown_until_s:
            self.in_alert = True
            self._calm_since_s = _NOT_CALM
            return _RAISE
        return _NONE
