"""PredictiveMaintenance: forecasts provider failures from measured telemetry series.

Predictions are records that keep score of themselves: each one is later marked `confirmed`,
`false_positive` or `resolved`, and precision/recall are computed from those outcomes only.
Until there is telemetry to analyse there are no predictions and every score is null.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from mcp_autonomy.autonomy.component import Component
from mcp_autonomy.clock import Clock
from mcp_autonomy.config import Sensitivity
from mcp_autonomy.events import EventBus
from mcp_autonomy.store import Store


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
    created_at: float
    window_start: float
    window_end: float
    indicators: list[Indicator]
    recommended_action: str
    status: PredictionStatus = PredictionStatus.ACTIVE
    outcome_at: float | None = None


class PredictiveMaintenance(Component):
    """Watches per-provider series and raises predictions before failures happen."""

    name = "predictive_maintenance"

    def __init__(
        self,
        *,
        clock: Clock,
        bus: EventBus,
        store: Store,
        enabled: bool,
        interval_s: float,
        sensitivity: Sensitivity,
        auto_schedule_maintenance: bool,
    ) -> None:
        super().__init__(clock=clock, bus=bus, store=store, enabled=enabled, interval_s=interval_s)
        self.sensitivity = sensitivity
        self.auto_schedule_maintenance = auto_schedule_maintenance
        self._predictions: dict[str, Prediction] = {}
        self._series_tracked = 0

    async def tick(self) -> None:
        # No series are fed yet: the detectors arrive with the telemetry they analyse.
        self._series_tracked = 0

    def predictions(
        self,
        *,
        provider: str | None = None,
        min_confidence: float = 0.0,
        status: PredictionStatus | None = None,
        limit: int = 100,
    ) -> list[Prediction]:
        """Predictions matching the filters, newest first."""
        selected = [
            p
            for p in self._predictions.values()
            if (provider is None or p.provider == provider)
            and p.confidence >= min_confidence
            and (status is None or p.status is status)
        ]
        selected.sort(key=lambda p: p.created_at, reverse=True)
        return selected[:limit]

    def scores(self) -> dict[str, Any]:
        """Precision and counts from judged predictions only; null until any is judged."""
        judged = [p for p in self._predictions.values() if p.status is not PredictionStatus.ACTIVE]
        confirmed = sum(1 for p in judged if p.status is PredictionStatus.CONFIRMED)
        false_pos = sum(1 for p in judged if p.status is PredictionStatus.FALSE_POSITIVE)
        decided = confirmed + false_pos
        return {
            "predictions_total": len(self._predictions),
            "active": sum(1 for p in self._predictions.values() if p.status is PredictionStatus.ACTIVE),
            "confirmed": confirmed,
            "false_positive": false_pos,
            "precision": None if decided == 0 else confirmed / decided,
            "recall": None,
            "mean_lead_time_s": None,
        }

    def details(self) -> dict[str, Any]:
        return {
            "sensitivity": self.sensitivity.value,
            "auto_schedule_maintenance": self.auto_schedule_maintenance,
            "series_tracked": self._series_tracked,
            **self.scores(),
        }
