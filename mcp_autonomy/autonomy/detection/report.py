"""One scored point's figures (`PointReport`), and how they become a result's kind, indicators and alert.

A report is built only when needed (an alert, or the last point of an `update`), never per point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mcp_autonomy.autonomy.detection.base import AnomalyKind, DetectorAlert, DetectorIndicator

__all__ = ["PointReport"]


@dataclass(frozen=True, slots=True)
class PointReport:
    """The statistics of one scored point beside their thresholds (thresholds already raised while
    the detector settles), and what the point deviates from.

    `score` is the onset score the point was given (what alerts are raised on), `evidence_score`
    the strongest statistic calibrated, reported or not. `kind` is the strongest statistic's
    (SPIKE, LEVEL_SHIFT, TREND or VOLATILITY); `classify` refines it.
    `deviation_without_season` and `typical_without_season` are the point's departure from the
    no-season level and that model's typical error: they tell a seasonal anomaly from an outright one.
    """

    timestamp_s: float
    value: float
    score: float
    evidence_score: float
    kind: AnomalyKind
    direction: int
    expected: float
    scale: float
    residual_z: float
    spike_threshold_z: float
    cusum: float
    cusum_threshold: float
    trend_z: float
    trend_threshold_z: float
    drift_sigma: float
    drift_threshold_sigma: float
    slope_per_s: float
    seasonal_model: bool
    deviation_without_season: float
    typical_without_season: float
    volatility: float = 0.0
    volatility_threshold: float = math.inf

    def indicators(self) -> tuple[DetectorIndicator, ...]:
        return (
            DetectorIndicator("residual_z", self.residual_z, self.spike_threshold_z),
            DetectorIndicator("cusum", self.cusum, self.cusum_threshold),
            DetectorIndicator("trend_z", self.trend_z, self.trend_threshold_z),
            DetectorIndicator("trend_drift_sigma", self.drift_sigma, self.drift_threshold_sigma),
            DetectorIndicator("noise_size_spreads", self.volatility, self.volatility_threshold),
        )

    def classify(self) -> AnomalyKind:
        """The dominant statistic's kind; a spike or shift that only stands out against the seasonal
        profile (ordinary without it) is a seasonal pattern anomaly."""
        kind = self.kind
        if (kind is AnomalyKind.SPIKE or kind is AnomalyKind.LEVEL_SHIFT) and self.seasonal_model:
            deviation = abs(self.deviation_without_season)
            typical = max(self.typical_without_season, self.scale)
            if deviation < self.spike_threshold_z * typical:
                return AnomalyKind.SEASONAL
        return kind

    def alert(self, slope_stderr_per_s: float = 0.0) -> DetectorAlert:
        return DetectorAlert(
            timestamp_s=self.timestamp_s,
            kind=self.classify(),
            direction=self.direction,
            score=self.score,
            value=self.value,
            expected=self.expected,
            scale=self.scale,
            slope_per_s=self.slope_per_s,
            indicators=self.indicators(),
            slope_stderr_per_s=slope_stderr_per_s,
        )
