"""PredictiveMaintenance: forecasts provider failures from measured telemetry series.

Every tick, each provider's telemetry over the last interval becomes one point on each of its
series (error rate, p50/p95/p99 latency, requests per minute, breaker openings), each fed to its
own streaming detector (the very detector `mcp-autonomy detect` replays). A detector alert
becomes a prediction with its indicators, window and recommended action, published as a
`prediction` event. One trouble usually moves several series (a slowdown lifts every latency
quantile): an alert whose provider already has an active prediction of the same type is folded
into it (its indicators added, confidence and window widened) instead of alerting again.

A series predicts minutes after its provider's first calls (`LIVE_WARMUP_POINTS`); the points are
recorded in the store and replayed at start (`series_history.py`), and `warm_up()` tells every
surface which series are still learning and until when.

Predictions are records that keep score of themselves (in the store, across restarts):

- `confirmed`: an incident of that provider opened inside the prediction's window (lead time =
  incident opening - prediction); a prediction raised while its provider's incident is already
  open is confirmed too, with lead time 0 (it saw the outage, it did not foresee it);
- `false_positive`: the window passed and no incident came;
- `resolved`: the window passed without an incident *after* a maintenance window planned for the
  prediction ran (acted on, so neither right nor wrong can be shown);
- an operator can set any of these with `mark_prediction` (recorded as the operator's verdict).

Precision = confirmed / (confirmed + false positives); recall = share of provider incidents
that at least one prediction foresaw (raised before the incident opened); lead time is measured
per foreseen incident from its earliest prediction. Until something is judged, each is null.

Confident critical predictions plan a maintenance window (see `maintenance.py`) when
auto-scheduling is on; the traffic profile those windows are placed by is learned here, from
the same per-tick telemetry, and persisted.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Final, Literal

from anyio.lowlevel import checkpoint
from pydantic import BaseModel, Field

from mcp_autonomy.autonomy.component import Component, Mode
from mcp_autonomy.autonomy.detection import (
    DEFAULT_SERIES_PROFILES,
    AnomalyKind,
    DetectorAlert,
    PredictionBuilder,
    SeriesProfile,
    SeriesRole,
    StreamingDetector,
    StreamingDetectorConfig,
)
from mcp_autonomy.autonomy.maintenance import MaintenanceScheduler, MaintenanceWindow, TrafficProfile
from mcp_autonomy.autonomy.series_history import HISTORY_MAX_AGE_S, SeriesHistory
from mcp_autonomy.clock import Clock
from mcp_autonomy.config import Sensitivity
from mcp_autonomy.events import Event, EventBus, EventType, Severity
from mcp_autonomy.prediction_types import Indicator, Prediction, PredictionStatus, PredictionType
from mcp_autonomy.store import StateStore
from mcp_autonomy.timefmt import TimestampOrNone, iso_or_none

if TYPE_CHECKING:
    from mcp_autonomy.autonomy.incidents import Incident, IncidentTracker
    from mcp_autonomy.providers.registry import ProviderRegistry
    from mcp_autonomy.resilience.router import PaymentRouter
    from mcp_autonomy.telemetry import Telemetry

__all__ = [
    "MAINTENANCE_MIN_CONFIDENCE",
    "MAINTENANCE_SEVERITIES",
    "SERIES",
    "Indicator",
    "Prediction",
    "PredictionStatus",
    "PredictionType",
    "PredictionWarmUp",
    "PredictiveMaintenance",
    "SeriesWarmUp",
]
# Indicator, Prediction, PredictionStatus and PredictionType live in `mcp_autonomy.prediction_types`
# (no import circle with the detection package); they are re-exported here for existing callers.

logger = logging.getLogger(__name__)

SERIES = (
    "error_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "requests_per_min",
    "breaker_opens",
)
"""The per-provider series the detectors watch."""
_SEVERITY_ORDER: Final = ("low", "medium", "high", "critical")
MAINTENANCE_MIN_CONFIDENCE: Final = 0.8
"""A prediction plans a maintenance window only from this confidence ..."""
MAINTENANCE_SEVERITIES: Final = frozenset({"high", "critical"})
"""... at one of these severities, and only for a failure or a degradation."""
MAX_PREDICTIONS_IN_MEMORY: Final = 10_000
"""The store keeps every prediction; memory keeps the newest this many (scores use the store)."""
PROVIDER_STATE_KEY_PREFIX: Final = "provider/"
"""One state key per provider (`provider/<name>`: its traffic profile and its series tail), so a
tick saves what changed one provider per step: one document of every provider held the event loop
for 7 ms at 60 providers and 20 ms at 200 (issue 18)."""
PROVIDERS_STATE_KEY: Final = "providers"
"""The providers that have a key (the state store lists no keys): written when one is added."""
TRAFFIC_STATE_KEY: Final = "traffic_profile"
HISTORY_STATE_KEY: Final = "series_history"
"""The whole-profile and whole-history keys used before per-provider keys: read at load while
no per-provider index exists, and deleted once every provider's key is written."""
_TRAFFIC_FIELDS: Final = ("requests", "observed_s")
"""A provider's traffic profile in its key: the two hour-of-week lists of `TrafficProfile.to_json`."""
LIVE_WARMUP_POINTS: Final = 10
"""Points a live series learns from before it is scored (its baseline is their median and MAD):
10 minutes at the default 60 s tick, where the detector's own default (30, for offline series of
any cadence) kept the panel empty for half an hour. So few points make a rough baseline; the
detector's settling (thresholds doubled at first, relaxing over `LIVE_SETTLE_INTERVALS`) is the
prior that keeps a rough baseline from alarming, and a restart replays the recorded points instead."""
LIVE_SETTLE_INTERVALS: Final = 30.0
"""Intervals over which a new series' alarm thresholds relax from double to their level. The
detector's default (100, for offline series) left a live series half-deaf for 100 minutes at the
60 s tick: a slow latency ramp starting 15 minutes after a start went unseen until it timed out.
The price, measured on synthetic thin-traffic series (10-call error rates, 5-call latency maxima;
120 series-hours): 15 detector alerts instead of 9; the sandbox's six fault-free hours raise no
prediction (tests/scenarios/test_prediction_scenarios.py)."""
SILENCE_AFTER_BUSY_POINTS: Final = 10
"""A provider that had calls in this many consecutive intervals and then none: the silence is
measured (requests_per_min = 0), since traffic that stops reaching a busy provider is the volume
collapse an operator must hear about. A provider with sparser traffic has gaps, not zeros."""
SILENCE_WATCH_POINTS: Final = 30
"""... for at most this many intervals: by then the drop has been alerted, and a long silence is
the provider's new normal (or the night), not news each interval."""
LATENCY_SPIKE_CONFIRM_SHARE: Final = 0.5
"""A latency spike is predicted only if the next point is still at least this share as far out."""


class SeriesWarmUp(BaseModel):
    """One provider series still learning its baseline: it raises nothing before `ready_at`."""

    provider: str
    series: str
    points_seen: int
    points_needed: int
    ready_at: TimestampOrNone = Field(
        None, description="When it will have its baseline, one point per interval from its latest"
    )


class PredictionWarmUp(BaseModel):
    """Which series are still learning their baseline, until when, and why nothing may be predicted."""

    warming_up: bool = Field(description="Some provider series is still learning its baseline")
    ready_at: TimestampOrNone = Field(None, description="When the last of them will have it")
    point_interval_s: float = Field(description="One point per series per interval (the loop's tick)")
    points_needed: int = Field(description="Points a series learns from before it is scored")
    replayed_points: int = Field(description="Recorded points replayed into the detectors at start")
    full_sensitivity_at: TimestampOrNone = Field(
        None,
        description="When the newest series' alarm thresholds, doubled after its warm-up, are back to "
        "their level (null: all are)",
    )
    series_ready: int = Field(description="Provider series past their warm-up (watched)")
    series: list[SeriesWarmUp] = Field(description="The series still warming up")
    providers_without_traffic: list[str] = Field(
        description="Providers not measured yet: their series start learning with their first calls"
    )
    reason: str = Field(description="Why predictions may be absent, in a sentence")


class PredictiveMaintenance(Component):
    """Watches per-provider series and raises predictions before failures happen."""

    name = "predictive_maintenance"

    def __init__(
        self,
        *,
        clock: Clock,
        bus: EventBus,
        store: StateStore,
        enabled: bool,
        interval_s: float,
        sensitivity: Sensitivity,
        auto_schedule_maintenance: bool,
        telemetry: Telemetry | None = None,
        providers: ProviderRegistry | None = None,
        router: PaymentRouter | None = None,
        incidents: IncidentTracker | None = None,
    ) -> None:
        super().__init__(clock=clock, bus=bus, store=store, enabled=enabled, interval_s=interval_s)
        self.sensitivity = sensitivity
        self.auto_schedule_maintenance = auto_schedule_maintenance
        self.telemetry = telemetry
        self.providers = providers
        self.incidents = incidents
        self._predictions: dict[str, Prediction] = {}
        self._detectors: dict[tuple[str, str], StreamingDetector] = {}
        self.traffic = TrafficProfile()
        self._traffic_measured_until: float | None = None  # monotonic; None until the first tick
        self.maintenance = MaintenanceScheduler(
            clock=clock, bus=bus, store=store, providers=providers, router=router, traffic=self.traffic
        )
        self.maintenance.write_fence = self.write_fence
        if incidents is not None:
            incidents.add_observer(self._on_incident)
        self._breaker_opens: dict[str, int] = {}
        self._builder: PredictionBuilder | None = None
        self._history = SeriesHistory(SERIES)
        self._replayed_points = 0
        self._unsaved: dict[str, None] = {}  # providers changed since their key was written (ordered)
        self._indexed: frozenset[str] = frozenset()  # providers listed under PROVIDERS_STATE_KEY
        self._keyed: set[str] = set()  # providers whose key is written (the index follows)
        self._legacy_keys_stored = False
        self._busy_intervals: dict[str, int] = {}
        self._held_spikes: dict[tuple[str, str], DetectorAlert] = {}
        self._silent_intervals: dict[str, int] = {}
        bus.add_listener(self._count_breaker_opens)

    def _count_breaker_opens(self, event: Event) -> None:
        if (
            event.type is EventType.BREAKER_STATE_CHANGED
            and event.provider is not None
            and event.data.get("to") == "open"
        ):
            self._breaker_opens[event.provider] = self._breaker_opens.get(event.provider, 0) + 1

    def load(self) -> None:
        """Reload predictions, maintenance windows and the traffic profile from the store."""
        self._predictions = {}
        for raw in self.store.list_records("predictions", limit=MAX_PREDICTIONS_IN_MEMORY):
            prediction = Prediction.model_validate_json(raw)
            self._predictions[prediction.id] = prediction
        self.maintenance.load()
        self._load_provider_state()
        self._seed_from_history()

    def _load_provider_state(self) -> None:
        """The traffic profile and series history from the per-provider keys, or from the
        whole-document keys of an older version (then every provider is saved at the next tick
        and the old keys are deleted)."""
        since_s = self.clock.now() - HISTORY_MAX_AGE_S
        legacy_traffic = self.store.get_state(self.name, TRAFFIC_STATE_KEY)
        legacy_history = self.store.get_state(self.name, HISTORY_STATE_KEY)
        self._legacy_keys_stored = legacy_traffic is not None or legacy_history is not None
        indexed = self.store.get_state(self.name, PROVIDERS_STATE_KEY)
        if not isinstance(indexed, list):
            self.traffic = self.maintenance.traffic = TrafficProfile.from_json(legacy_traffic)
            self._history = SeriesHistory.from_json(legacy_history, SERIES, since_s=since_s)
            self._indexed = frozenset()
            self._keyed = set()
            traffic_json = self.traffic.to_json()
            self._unsaved = dict.fromkeys([*traffic_json["requests"], *self._history.providers()])
            return
        self._indexed = frozenset(str(name) for name in indexed)
        self._keyed = set()
        self._unsaved = {}
        requests: dict[str, Any] = {}
        observed_s: dict[str, Any] = {}
        self._history = SeriesHistory(SERIES)
        for provider in sorted(self._indexed):
            stored = self.store.get_state(self.name, PROVIDER_STATE_KEY_PREFIX + provider)
            if not isinstance(stored, dict):
                continue
            self._keyed.add(provider)
            traffic = stored.get("traffic")
            if isinstance(traffic, dict) and all(isinstance(traffic.get(k), list) for k in _TRAFFIC_FIELDS):
                requests[provider] = traffic["requests"]
                observed_s[provider] = traffic["observed_s"]
            if stored.get("history") is not None:
                self._history.add_provider_json(provider, stored["history"], since_s=since_s)
        self.traffic = self.maintenance.traffic = TrafficProfile.from_json(
            {"requests": requests, "observed_s": observed_s}
        )

    def _seed_from_history(self) -> None:
        """Fresh detectors, fed the series points recorded by earlier runs (or the previous leader).

        Alerts the replay raises are dropped: the run that measured those points judged them
        already, and its predictions are in the store.
        """
        self._detectors = {}
        self._held_spikes = {}
        replayed = 0
        for provider in self._history.providers():
            for series in SERIES:
                times_s, values = self._history.series_points(provider, series)
                if not values:
                    continue
                detector = self._detector(provider, series)
                detector.score_many(times_s, values)
                detector.drain_alerts()
            replayed += len(self._history.points(provider))
        self._replayed_points = replayed
        if replayed:
            logger.info(
                "predictor: %d recorded points of %d providers replayed into the detectors",
                replayed,
                len(self._history.providers()),
            )

    @property
    def _series_tracked(self) -> int:
        return len(self._detectors)

    def _detector(self, provider: str, series: str) -> StreamingDetector:
        key = (provider, series)
        detector = self._detectors.get(key)
        if detector is None:
            # One point per tick: the interval is known, not learnt (a learnt one wanders during a
            # warm-up this short), and the warm-up is counted in live points (see LIVE_WARMUP_POINTS).
            config = StreamingDetectorConfig.for_sensitivity(
                self.sensitivity,
                warmup_points=LIVE_WARMUP_POINTS,
                settle_intervals=LIVE_SETTLE_INTERVALS,
                sample_interval_s=self.interval_s,
            )
            detector = self._detectors[key] = StreamingDetector(config)
        return detector

    def _point(
        self, provider: str, telemetry: Telemetry, breaker_opens: int
    ) -> dict[str, float | None] | None:
        """This interval's value of each series of `provider`; None when the interval is a gap."""
        snapshot = telemetry.provider(provider).snapshot(self.interval_s)
        if snapshot.requests == 0 and snapshot.rejected_locally == 0 and breaker_opens == 0:
            silent = self._silent_intervals[provider] = self._silent_intervals.get(provider, 0) + 1
            if (
                self._busy_intervals.get(provider, 0) < SILENCE_AFTER_BUSY_POINTS
                or silent > SILENCE_WATCH_POINTS
            ):
                self._busy_intervals[provider] = 0
                return None  # no traffic is no evidence: a gap, not a zero
            return {"requests_per_min": 0.0}
        after_silence = self._silent_intervals.get(provider, 0) > 0
        self._silent_intervals[provider] = 0
        self._busy_intervals[provider] = 1 if after_silence else self._busy_intervals.get(provider, 0) + 1
        return {
            "error_rate": snapshot.error_rate,
            "latency_p50_ms": snapshot.latency_p50_ms,
            "latency_p95_ms": snapshot.latency_p95_ms,
            "latency_p99_ms": snapshot.latency_p99_ms,
            "requests_per_min": snapshot.requests_per_min,
            "breaker_opens": float(breaker_opens),
        }

    async def tick(self) -> None:
        if self.telemetry is None or self.providers is None:
            return
        builder = self._prediction_builder()
        now = self.clock.now()
        self._expire(now)
        await self.maintenance.run_due()
        # Traffic is learnt only over time this process measured: the first tick after a start
        # (or after a long pause) has no past interval of its own, and a zero there would be invented.
        mono = self.clock.monotonic()
        measured_s = None if self._traffic_measured_until is None else mono - self._traffic_measured_until
        self._traffic_measured_until = mono
        for provider in self.providers.names():
            await checkpoint()  # one provider per step: the event loop serves payments between
            if measured_s is not None and 0 < measured_s <= 5 * self.interval_s:
                traffic = self.telemetry.provider(provider).snapshot(measured_s)
                self.traffic.record(provider, now, traffic.requests, measured_s)
                self._unsaved[provider] = None
            values = self._point(provider, self.telemetry, self._breaker_opens.pop(provider, 0))
            if values is None:
                continue
            self._history.add(provider, now, values)
            self._unsaved[provider] = None
            for series in SERIES:
                value = values.get(series)
                if value is None:
                    continue
                result = self._detector(provider, series).update(now, float(value))
                for alert in self._alerts_to_predict(provider, series, now, float(value), result.alert):
                    prediction = builder.build(provider, series, alert)
                    if prediction is not None:
                        prediction.series = series
                        self.record(prediction)
        if self.store.is_open:
            await self._save_changed(now)

    async def _save_changed(self, now: float) -> None:
        """Write the key of each provider changed since its last save, one provider per step.

        A provider leaves `_unsaved` only once its write succeeded: a failed save is retried at
        the next tick. The index lists a provider only after its key is written, and the old
        whole-document keys go only once every provider's key is.
        """
        for provider in list(self._unsaved):
            await checkpoint()
            self.store.set_state(
                self.name,
                PROVIDER_STATE_KEY_PREFIX + provider,
                self._provider_state(provider),
                timestamp=now,
                fence=self.write_fence(),
            )
            del self._unsaved[provider]
            self._keyed.add(provider)
        if not self._keyed <= self._indexed:
            await checkpoint()
            indexed = self._indexed | self._keyed
            self.store.set_state(
                self.name, PROVIDERS_STATE_KEY, sorted(indexed), timestamp=now, fence=self.write_fence()
            )
            self._indexed = indexed
        if self._legacy_keys_stored and not self._unsaved:
            await checkpoint()
            for key in (TRAFFIC_STATE_KEY, HISTORY_STATE_KEY):
                self.store.delete_state(self.name, key, fence=self.write_fence())
            self._legacy_keys_stored = False

    def _provider_state(self, provider: str) -> dict[str, Any]:
        """What `provider/<name>` holds: the provider's traffic profile and its series tail."""
        profile = self.traffic.to_json()  # the profile's own dicts, not copies: O(1)
        traffic = {field: profile[field].get(provider) for field in _TRAFFIC_FIELDS}
        history = self._history.provider_to_json(provider)
        return {
            "traffic": traffic if traffic["requests"] is not None else None,
            "history": history if history["points"] else None,
        }

    def _alerts_to_predict(
        self, provider: str, series: str, now: float, value: float, alert: DetectorAlert | None
    ) -> list[DetectorAlert]:
        """The alerts of this point that become predictions.

        A latency spike (one point far out) is held for one interval: a blip that is gone at the
        next point is nothing to act on (thin traffic gives an odd slow minute now and then), while
        one still at least halfway out is a lasting rise and is predicted then, as a level shift
        at that point. Other alerts are predicted at once (an error jump or a traffic collapse is
        worth acting on at its first point).
        """
        key = (provider, series)
        found: list[DetectorAlert] = []
        held = self._held_spikes.pop(key, None)
        if held is not None and (value - held.expected) * held.direction >= LATENCY_SPIKE_CONFIRM_SHARE * abs(
            held.value - held.expected
        ):
            found.append(
                dataclasses.replace(held, timestamp_s=now, value=value, kind=AnomalyKind.LEVEL_SHIFT)
            )
        if alert is not None:
            if (
                alert.kind is AnomalyKind.SPIKE
                and self._prediction_builder().profile(series).role is SeriesRole.LATENCY
            ):
                self._held_spikes[key] = alert
            else:
                found.append(alert)
        return found

    def _prediction_builder(self) -> PredictionBuilder:
        if self._builder is None:
            # Breaker openings per interval: counted events, bad when up, and one more opening
            # is the smallest change worth a prediction.
            breaker = SeriesProfile("breaker_opens", SeriesRole.ERRORS, "opens", 1, min_change=1.0)
            self._builder = PredictionBuilder({**DEFAULT_SERIES_PROFILES, breaker.name: breaker})
        return self._builder

    def record(self, prediction: Prediction) -> None:
        """Add a prediction (from the detectors): judged at once if its provider's incident is
        already open, folded into an active one of the same provider and type, else published
        (and possibly given a maintenance window)."""
        if prediction.id in self._predictions:
            return  # the same alert replayed (ids are derived from provider, series and time)
        if self._fold(prediction):
            return
        ongoing = None if self.incidents is None else self.incidents.open_for(prediction.provider)
        if ongoing is not None:
            self._judge(
                prediction,
                PredictionStatus.CONFIRMED,
                by="engine",
                reason=f"raised while incident {ongoing.id} was open",
                incident_id=ongoing.id,
                lead_time_s=0.0,
                publish=False,
            )
        self._predictions[prediction.id] = prediction
        if len(self._predictions) > MAX_PREDICTIONS_IN_MEMORY:
            oldest = min(self._predictions.values(), key=lambda p: p.created_at)
            del self._predictions[oldest.id]
        self._save(prediction)
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
        if ongoing is None:
            self._maybe_schedule_maintenance(prediction)

    def _fold(self, prediction: Prediction) -> bool:
        """Merge into an active prediction of the same provider and type; False if there is none."""
        into = next(
            (
                p
                for p in self._predictions.values()
                if p.status is PredictionStatus.ACTIVE
                and p.provider == prediction.provider
                and p.type is prediction.type
                and p.window_end >= prediction.created_at
            ),
            None,
        )
        if into is None:
            return False
        known = {i.name for i in into.indicators}
        into.indicators.extend(i for i in prediction.indicators if i.name not in known)
        into.confidence = max(into.confidence, prediction.confidence)
        into.window_end = max(into.window_end, prediction.window_end)
        if _SEVERITY_ORDER.index(prediction.severity) > _SEVERITY_ORDER.index(into.severity):
            into.severity = prediction.severity
        self._save(into)
        logger.debug("prediction %s folded into %s", prediction.id, into.id)
        if into.maintenance_window_id is None and (
            self.incidents is None or self.incidents.open_for(into.provider) is None
        ):
            self._maybe_schedule_maintenance(into)
        return True

    def _maybe_schedule_maintenance(self, prediction: Prediction) -> None:
        if not (
            self.auto_schedule_maintenance
            and prediction.confidence >= MAINTENANCE_MIN_CONFIDENCE
            and prediction.severity in MAINTENANCE_SEVERITIES
            and prediction.type in (PredictionType.FAILURE, PredictionType.DEGRADATION)
        ):
            return
        window = self.maintenance.schedule(
            prediction.provider,
            reason=f"{prediction.type.value} predicted with confidence {prediction.confidence:.2f} "
            f"({prediction.id})",
            trouble_expected_by=prediction.window_end,
            prediction_id=prediction.id,
            dry_run=self.dry_run,
        )
        if window is not None:
            prediction.maintenance_window_id = window.id
            self._save(prediction)
            self._actions_dry_run += 1 if self.dry_run else 0
            self._actions_taken += 0 if self.dry_run else 1

    # --- outcomes -----------------------------------------------------------------------

    def _on_incident(self, incident: Incident) -> None:
        """An incident opened: the active predictions whose window it falls in came true."""
        for prediction in list(self._predictions.values()):
            if prediction.status is not PredictionStatus.ACTIVE:
                continue
            if incident.provider is not None and prediction.provider != incident.provider:
                continue
            if not prediction.created_at <= incident.opened_at <= prediction.window_end:
                continue
            self._judge(
                prediction,
                PredictionStatus.CONFIRMED,
                by="engine",
                reason=f"incident {incident.id} opened {incident.opened_at - prediction.created_at:.0f} s later",
                incident_id=incident.id,
                lead_time_s=round(incident.opened_at - prediction.created_at, 3),
            )
            if self.incidents is not None:
                self.incidents.link_prediction(incident, prediction.id)

    def _expire(self, now: float) -> None:
        for prediction in list(self._predictions.values()):
            if prediction.status is not PredictionStatus.ACTIVE or now <= prediction.window_end:
                continue
            window = (
                None
                if prediction.maintenance_window_id is None
                else self.maintenance.get(prediction.maintenance_window_id)
            )
            if window is not None and window.status.value == "completed" and not window.dry_run:
                self._judge(
                    prediction,
                    PredictionStatus.RESOLVED,
                    by="engine",
                    reason=f"no incident after maintenance window {window.id}",
                )
            else:
                self._judge(
                    prediction,
                    PredictionStatus.FALSE_POSITIVE,
                    by="engine",
                    reason="window passed, no incident",
                )

    def _judge(
        self,
        prediction: Prediction,
        status: PredictionStatus,
        *,
        by: Literal["engine", "operator"],
        reason: str,
        incident_id: str | None = None,
        lead_time_s: float | None = None,
        publish: bool = True,
    ) -> None:
        previous = prediction.status
        prediction.status = status
        prediction.outcome_at = self.clock.now()
        prediction.outcome_by = by
        prediction.outcome_reason = reason
        if incident_id is not None:
            prediction.incident_id = incident_id
            prediction.lead_time_s = lead_time_s
        if not publish:
            return
        self._save(prediction)
        self.bus.emit(
            EventType.PREDICTION_OUTCOME,
            component=self.name,
            provider=prediction.provider,
            message=f"prediction {prediction.id}: {previous.value} -> {status.value} ({reason})",
            data={
                "id": prediction.id,
                "from": previous.value,
                "to": status.value,
                "by": by,
                "reason": reason,
                "incident_id": prediction.incident_id,
                "lead_time_s": prediction.lead_time_s,
            },
        )

    def mark_prediction(self, prediction_id: str, verdict: PredictionStatus, *, reason: str) -> Prediction:
        """An operator's verdict on a prediction (overrides the engine's).

        Raises:
            KeyError: no such prediction.
            ValueError: `verdict` is `active`.
        """
        if verdict is PredictionStatus.ACTIVE:
            raise ValueError("verdict must be confirmed, false_positive or resolved")
        prediction = self.get_prediction(prediction_id)
        if prediction is None:
            raise KeyError(prediction_id)
        self._predictions.setdefault(prediction.id, prediction)
        self._judge(prediction, verdict, by="operator", reason=reason)
        return prediction

    def get_prediction(self, prediction_id: str) -> Prediction | None:
        found = self._predictions.get(prediction_id)
        if found is not None or not self.store.is_open:
            return found
        raw = self.store.get_record("predictions", prediction_id)
        return None if raw is None else Prediction.model_validate_json(raw)

    def _save(self, prediction: Prediction) -> None:
        if self.store.is_open:
            self.store.put_record(
                "predictions",
                id=prediction.id,
                provider=prediction.provider,
                status=prediction.status.value,
                at=prediction.created_at,
                record=prediction.model_dump_json(),
                fence=self.write_fence(),
            )

    def maintenance_windows(self, **filters: Any) -> list[MaintenanceWindow]:
        """See `MaintenanceScheduler.windows`."""
        return self.maintenance.windows(**filters)

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
        """Precision, recall and lead time from judged predictions and incidents; null until measured."""
        if self.store.is_open:
            stored = [
                Prediction.model_validate_json(r)
                for r in self.store.list_records("predictions", limit=MAX_PREDICTIONS_IN_MEMORY)
            ]
        else:
            stored = list(self._predictions.values())
        by_status = {status: 0 for status in PredictionStatus}
        for p in stored:
            by_status[p.status] += 1
        confirmed = by_status[PredictionStatus.CONFIRMED]
        false_pos = by_status[PredictionStatus.FALSE_POSITIVE]
        decided = confirmed + false_pos
        recall: float | None = None
        lead_times: list[float] = []
        incidents_total = 0
        if self.incidents is not None and self.store.is_open:
            incidents = [i for i in self.incidents.incidents(limit=MAX_PREDICTIONS_IN_MEMORY) if i.provider]
            incidents_total = len(incidents)
            leads = {p.id: p.lead_time_s for p in stored if p.lead_time_s is not None}
            foreseen = [i for i in incidents if any(leads.get(pid, 0.0) > 0 for pid in i.predicted_by)]
            recall = None if not incidents else len(foreseen) / len(incidents)
            lead_times = [max(leads.get(pid, 0.0) for pid in i.predicted_by) for i in foreseen]
        return {
            "predictions_total": len(stored),
            "active": by_status[PredictionStatus.ACTIVE],
            "confirmed": confirmed,
            "false_positive": false_pos,
            "resolved": by_status[PredictionStatus.RESOLVED],
            "precision": None if decided == 0 else round(confirmed / decided, 4),
            "recall": None if recall is None else round(recall, 4),
            "incidents_scored": incidents_total,
            "mean_lead_time_s": None if not lead_times else round(sum(lead_times) / len(lead_times), 3),
            "maintenance_windows_active": len(
                [
                    w
                    for w in self.maintenance.windows(limit=1000)
                    if w.status.value in ("scheduled", "in_progress")
                ]
            )
            if self.store.is_open
            else 0,
        }

    def warm_up(self) -> PredictionWarmUp:
        """Which provider series are warming up and until when (one point per tick from now on)."""
        names = self.providers.names() if self.providers is not None else []
        needed = LIVE_WARMUP_POINTS
        warming: list[SeriesWarmUp] = []
        ready = 0
        without_traffic: list[str] = []
        settled_at: float | None = None
        full_points = needed + LIVE_SETTLE_INTERVALS
        for provider in names:
            points = self._history.points(provider)
            if not points:
                without_traffic.append(provider)
                continue
            last_point_s = points[-1][0]
            for series in SERIES:
                detector = self._detectors.get((provider, series))
                seen = 0 if detector is None else detector.points_seen
                if seen < full_points:
                    settles_at = last_point_s + (full_points - seen) * self.interval_s
                    settled_at = settles_at if settled_at is None else max(settled_at, settles_at)
                if seen >= needed:
                    ready += 1
                    continue
                warming.append(
                    SeriesWarmUp(
                        provider=provider,
                        series=series,
                        points_seen=seen,
                        points_needed=needed,
                        ready_at=last_point_s + (needed - seen) * self.interval_s,
                    )
                )
        ready_at = max((w.ready_at for w in warming if w.ready_at is not None), default=None)
        return PredictionWarmUp(
            warming_up=bool(warming),
            ready_at=ready_at,
            point_interval_s=self.interval_s,
            points_needed=needed,
            replayed_points=self._replayed_points,
            full_sensitivity_at=settled_at,
            series_ready=ready,
            series=warming,
            providers_without_traffic=without_traffic,
            reason=self._warm_up_reason(names, warming, ready, without_traffic, ready_at, settled_at),
        )

    def _warm_up_reason(
        self,
        names: list[str],
        warming: list[SeriesWarmUp],
        ready: int,
        without_traffic: list[str],
        ready_at: float | None,
        settled_at: float | None,
    ) -> str:
        if self.mode is Mode.OFF:
            return "predictive maintenance is off: no series is watched"
        if not names:
            return "no provider is registered"
        if len(without_traffic) == len(names):
            return (
                "no provider has had traffic yet: each series starts learning with its provider's first calls"
            )
        parts = []
        if warming:
            providers = sorted({w.provider for w in warming})
            parts.append(
                f"{len(warming)} series of {', '.join(providers)} learning their baseline until "
                f"{iso_or_none(ready_at)}: they predict nothing before"
            )
        if ready:
            parts.append(f"{ready} series watched")
        if settled_at is not None and not warming:
            parts.append(f"alarm thresholds at their level from {iso_or_none(settled_at)}")
        if without_traffic:
            parts.append(f"no traffic yet at {', '.join(without_traffic)}")
        return "; ".join(parts)

    def details(self) -> dict[str, Any]:
        warm_up = self.warm_up()
        return {
            "sensitivity": self.sensitivity.value,
            "auto_schedule_maintenance": self.auto_schedule_maintenance,
            "series_tracked": self._series_tracked,
            # Status is read often: in-memory counts only. Precision, recall and lead time read the
            # store, so they are in `scores()` (get_stats, get_predictions), not here.
            "active_predictions": sum(
                1 for p in self._predictions.values() if p.status is PredictionStatus.ACTIVE
            ),
            "maintenance_windows_active": sum(
                1
                for name in (self.providers.names() if self.providers else [])
                if self.maintenance.active_for(name)
            ),
            # Which series learn their baseline until when, and why the panel may be empty.
            "warm_up": warm_up.model_dump(mode="json"),
        }
