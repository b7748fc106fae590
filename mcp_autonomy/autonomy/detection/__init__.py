"""Streaming anomaly detection for predictive maintenance, and the predictions built on it.

`StreamingDetector` scores one telemetry series point by point (robust seasonal baseline,
change-point and trend statistics, calibrated score, de-duplicated alerts); `PredictionBuilder`
turns its alerts on named provider series into `Prediction` records. The backtest command
(`mcp_autonomy.autonomy.detect_cli`) replays a CSV through the very same detector.
"""

from __future__ import annotations

from mcp_autonomy.autonomy.detection.base import (
    AnomalyKind,
    Detector,
    DetectorAlert,
    DetectorIndicator,
    DetectorResult,
)
from mcp_autonomy.autonomy.detection.calibration import (
    SENSITIVITY_THRESHOLD_SCALE,
    ratio_from_score,
    score_from_ratio,
    threshold_scale,
)
from mcp_autonomy.autonomy.detection.config import StreamingDetectorConfig
from mcp_autonomy.autonomy.detection.prediction import (
    DEFAULT_SERIES_PROFILES,
    PredictionBuilder,
    SeriesProfile,
    SeriesRole,
)
from mcp_autonomy.autonomy.detection.streaming import StreamingDetector

__all__ = [
    "DEFAULT_SERIES_PROFILES",
    "SENSITIVITY_THRESHOLD_SCALE",
    "AnomalyKind",
    "Detector",
    "DetectorAlert",
    "DetectorIndicator",
    "DetectorResult",
    "PredictionBuilder",
    "SeriesProfile",
    "SeriesRole",
    "StreamingDetector",
    "StreamingDetectorConfig",
    "ratio_from_score",
    "score_from_ratio",
    "threshold_scale",
]
