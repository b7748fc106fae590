"""The prediction records shared by the predictor and the detection package.

`Prediction`, its `PredictionType`, `PredictionStatus` and `Indicator` live here, in a module that
imports nothing from `mcp_autonomy.autonomy`, so `autonomy.detection.prediction` (which builds
predictions) and `autonomy.predictor` (which keeps them) can both import them at module level
without an import circle. The old paths (`mcp_autonomy.autonomy.predictor.Prediction`, ...) still
work: the predictor re-exports them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

from mcp_autonomy.timefmt import Timestamp, TimestampOrNone

__all__ = ["Indicator", "Prediction", "PredictionStatus", "PredictionType"]


class PredictionType(StrEnum):
    """What kind of trouble a prediction foresees."""

    FAILURE = "failure"
    DEGRADATION = "degradation"
    SPIKE = "spike"
    PATTERN_ANOMALY = "pattern_anomaly"


class PredictionStatus(StrEnum):
    """Where a prediction stands: open, or judged by what happened."""

    ACTIVE = "active"
    CONFIRMED = "confirmed"
    FALSE_POSITIVE = "false_positive"
    RESOLVED = "resolved"


class Indicator(BaseModel):
    """One measured signal behind a prediction."""

    name: str
    value: float
    threshold: float
    unit: str = ""


class Prediction(BaseModel):
    """A forecast of trouble for one provider, with the evidence and its later verdict."""

    id: str
    provider: str
    type: PredictionType
    severity: str
    confidence: float = Field(ge=0.0, le=1.0)
    created_at: Timestamp
    window_start: Timestamp
    window_end: Timestamp
    indicators: list[Indicator]
    recommended_action: str
    series: str | None = Field(None, description="The series whose detector raised it")
    status: PredictionStatus = PredictionStatus.ACTIVE
    outcome_at: TimestampOrNone = None
    outcome_by: Literal["engine", "operator"] | None = None
    outcome_reason: str | None = None
    incident_id: str | None = Field(None, description="The incident that confirmed it")
    lead_time_s: float | None = Field(
        None, description="Incident opening - prediction time (0 if raised during the incident)"
    )
    maintenance_window_id: str | None = None
