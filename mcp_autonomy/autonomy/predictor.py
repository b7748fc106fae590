"""PredictiveMaintenance: forecasts provider failures from measured telemetry series.

Every tick, each provider's telemetry over the last interval becomes one point on three series
(error rate, p95 latency, requests per minute), each fed to its own streaming detector (the very
detector `mcp-autonomy detect` replays). A detector alert becomes a prediction with its
indicators, window and recommended action, published as a `prediction` event.

Predictions are records that keep score of themselves: each one is later marked `confirmed`,
`false_positive` or `resolved`, and precision/recall are computed from those outcomes only.
Until there is telemetry to analyse there are no predictions and every score is null.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from mcp_autonomy.autonomy.component import Component
from mcp_autonomy.clock import Clock
from mcp_autonomy.config import Sensitivity
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.store import Store

if TYPE_CHECKING:
    from mcp_autonomy.autonomy.detection import StreamingDetector
    from mcp_autonomy.providers.registry import ProviderRegistry
    from mcp_autonomy.telemetry import Telemetry

SERIES = ("error_rate", "latency_p95_ms", "requests_per_min")
"""The per-provider series the detectors watch."""


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
        telemetry: Telemetry | None = None,
        providers: ProviderRegistry | None = None,
    ) -> None:
        super().__init__(clock=clock, bus=bus, store=store, enabled=enabled, interval_s=interval_s)
        self.sensitivity = sensitivity
        self.auto_schedule_maintenance = auto_schedule_maintenance
        self.telemetry = telemetry
        self.providers = providers
        self._predictions: dict[str, Prediction] = {}
        self._detectors: dict[tuple[str, str], StreamingDetector] = {}

    @property
    def _series_tracked(self) -> int:
        return len(self._detectors)

    def _detector(self, provider: str, series: str) -> StreamingDetector:
        from mcp_autonomy.autonomy.detection import StreamingDetector, StreamingDetectorConfig

        key = (provider, series)
        detector = self._detectors.get(key)
        if detector is None:
            config = StreamingDetectorConfig.for_sensitivity(self.sensitivity)
            detector = self._detectors[key] = StreamingDetector(config)
        return detector

    async def tick(self) -> None:
        if self.telemetry is None or self.providers is None:
            return
        from mcp_autonomy.autonomy.detection import PredictionBuilder

        builder = PredictionBuilder()
        now = self.clock.now()
        for provider in self.providers.names():
            snapshot = self.telemetry.provider(provider).snapshot(self.interval_s)
            if snapshot.requests == 0:
                continue  # no traffic is no evidence: a gap, not a zero
            values = {
                "error_rate": snapshot.error_rate,
                "latency_p95_ms": snapshot.latency_p95_ms,
                "requests_per_min": snapshot.requests_per_min,
            }
            for series in SERIES:
                value = values[series]
                if value is None:
                    continue
                result = self._detector(provider, series).update(now, float(value))
                if result.alert is None:
                    continue
                prediction = builder.build(provider, series, result.alert)
                if prediction is not None:
                    self._record(prediction)

    def _record(self, prediction: Prediction) -> None:
        self._predictions[prediction.id] = prediction
        self.bus.emit(
            EventType.PREDICTION,
            component=self.name,
            provider=prediction.provider,
            dry_run=self.dry_run,
            severity=Severity.CRITICAL if prediction.severity == "critical" else Severity.WARNING,
            message=f"{prediction.provider}: {prediction.type.value} predicted "
            f"(confidence {prediction.confidence:.2f}): {prediction.recommended_action}",
            data=prediction.model_dump(mode="json"),
        )

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
