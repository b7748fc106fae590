"""Predictions keep score of themselves: confirmed by incidents, expired as false positives,
resolved by maintenance, corrected by operators, and every score survives a restart."""

from __future__ import annotations

import pytest

from mcp_autonomy.autonomy.predictor import Indicator, Prediction, PredictionStatus, PredictionType
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.events import EventType
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio


def make_system(
    settings: Settings, clock: ManualClock, **updates: object
) -> tuple[AutonomousSystem, ScriptedAdapter]:
    system = AutonomousSystem(
        settings.model_copy(update={"auto_schedule_maintenance": False, **updates}), clock=clock
    )
    mpesa = ScriptedAdapter("mpesa")
    system.register_provider(mpesa)
    system.register_provider(ScriptedAdapter("paystack"))
    system.set_backup_providers("mpesa", ["paystack"])
    return system, mpesa


def prediction(clock: ManualClock, *, window_s: float = 3600.0, confidence: float = 0.7) -> Prediction:
    now = clock.now()
    return Prediction(
        id=f"mpesa:latency_p95_ms:trend:{round(now * 1000)}",
        provider="mpesa",
        type=PredictionType.DEGRADATION,
        severity="high",
        confidence=confidence,
        created_at=now,
        window_start=now,
        window_end=now + window_s,
        indicators=[Indicator(name="latency_p95_ms", value=2400.0, threshold=400.0, unit="ms")],
        recommended_action="check the provider",
    )


async def test_incident_inside_the_window_confirms_with_lead_time(
    settings: Settings, clock: ManualClock
) -> None:
    system, mpesa = make_system(settings, clock)
    async with system.running():
        foreseen = prediction(clock)
        system.predictive_maintenance.record(foreseen)
        await clock.advance(590.0)
        mpesa.probe_ok = False
        await clock.advance(20.0)  # failed probes at 600 and 610: incident opens at 610
        judged = system.predictive_maintenance.get_prediction(foreseen.id)
        assert judged is not None and judged.status is PredictionStatus.CONFIRMED
        assert judged.lead_time_s == 610.0 and judged.outcome_by == "engine"
        (incident,) = system.incidents.open_incidents()
        assert judged.incident_id == incident.id and incident.predicted_by == [foreseen.id]
        scores = (await system.get_stats()).predictions
        assert scores["precision"] == 1.0 and scores["recall"] == 1.0
        assert scores["mean_lead_time_s"] == 610.0
        outcome = system.events.history(types=[EventType.PREDICTION_OUTCOME])[-1]
        assert outcome.data["to"] == "confirmed"


async def test_window_passing_without_incident_is_a_false_positive(
    settings: Settings, clock: ManualClock
) -> None:
    system, _ = make_system(settings, clock, prediction_interval_ms=60_000)
    async with system.running():
        wrong = prediction(clock, window_s=900.0)
        system.predictive_maintenance.record(wrong)
        await clock.advance(840.0)
        assert system.predictive_maintenance.get_prediction(wrong.id).status is PredictionStatus.ACTIVE  # type: ignore[union-attr]
        await clock.advance(120.0)
        judged = system.predictive_maintenance.get_prediction(wrong.id)
        assert judged is not None and judged.status is PredictionStatus.FALSE_POSITIVE
        scores = (await system.get_stats()).predictions
        assert scores["precision"] == 0.0 and scores["recall"] is None  # no incident to recall


async def test_prediction_raised_during_an_incident_has_no_lead_time(
    settings: Settings, clock: ManualClock
) -> None:
    system, mpesa = make_system(settings, clock)
    async with system.running():
        mpesa.probe_ok = False
        await clock.advance(20.0)
        late = prediction(clock)
        system.predictive_maintenance.record(late)
        judged = system.predictive_maintenance.get_prediction(late.id)
        assert judged is not None and judged.status is PredictionStatus.CONFIRMED
        assert judged.lead_time_s == 0.0
        scores = (await system.get_stats()).predictions
        assert scores["precision"] == 1.0
        assert scores["recall"] == 0.0  # it saw the outage; it did not foresee it


async def test_operator_verdict_overrides_and_survives_a_restart(
    settings: Settings, clock: ManualClock
) -> None:
    system, _ = make_system(settings, clock)
    async with system.running():
        p = prediction(clock)
        system.predictive_maintenance.record(p)
        marked = system.mark_prediction(
            p.id, PredictionStatus.FALSE_POSITIVE, reason="provider confirmed no issue"
        )
        assert marked.status is PredictionStatus.FALSE_POSITIVE and marked.outcome_by == "operator"
        with pytest.raises(KeyError):
            system.mark_prediction("no-such-id", PredictionStatus.CONFIRMED, reason="x")
        with pytest.raises(ValueError, match="verdict"):
            system.mark_prediction(p.id, PredictionStatus.ACTIVE, reason="x")

    restarted, _ = make_system(settings, clock)
    async with restarted.running():
        again = restarted.predictive_maintenance.get_prediction(p.id)
        assert again is not None and again.status is PredictionStatus.FALSE_POSITIVE
        assert again.outcome_reason == "provider confirmed no issue"
        assert (await restarted.get_stats()).predictions["false_positive"] == 1
        assert [x.id for x in restarted.predictive_maintenance.predictions()] == [p.id]
