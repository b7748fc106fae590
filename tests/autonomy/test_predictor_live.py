"""The live predictive-maintenance loop on measured telemetry, driven by the manual clock."""

from __future__ import annotations

import random

import pytest

from mcp_autonomy.autonomy.predictor import PredictionType
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.events import EventType
from mcp_autonomy.telemetry import Outcome
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio


async def test_error_rate_jump_raises_a_failure_prediction(settings: Settings, clock: ManualClock) -> None:
    settings = settings.model_copy(update={"self_healing_enabled": False, "prediction_interval_ms": 60_000})
    system = AutonomousSystem(settings, clock=clock)
    system.register_provider(ScriptedAdapter("mpesa"))
    rng = random.Random(7)
    async with system.running():
        first_prediction_minute = None
        for minute in range(6 * 60):
            failing_share = 0.02 if minute < 5 * 60 else 0.35
            for _ in range(40):
                failed = rng.random() < failing_share
                outcome = Outcome.NOT_PROCESSED if failed else Outcome.SUCCESS
                system.telemetry.record_call("mpesa", outcome, 400.0 * rng.uniform(0.9, 1.1))
            await clock.advance(60.0)
            if first_prediction_minute is None and system.predictive_maintenance.predictions(
                provider="mpesa"
            ):
                first_prediction_minute = minute
        assert first_prediction_minute is not None and 5 * 60 <= first_prediction_minute <= 5 * 60 + 5
        predictions = system.predictive_maintenance.predictions(provider="mpesa")
        assert predictions[-1].type is PredictionType.FAILURE
        assert all(0.0 <= p.confidence <= 1.0 and p.indicators for p in predictions)
        events = system.events.history(types=[EventType.PREDICTION])
        assert events and events[0].provider == "mpesa" and events[0].data["type"] == "failure"
        assert system.predictive_maintenance.details()["series_tracked"] == 6


async def test_no_prediction_on_steady_noisy_traffic(settings: Settings, clock: ManualClock) -> None:
    settings = settings.model_copy(update={"self_healing_enabled": False, "prediction_interval_ms": 60_000})
    system = AutonomousSystem(settings, clock=clock)
    system.register_provider(ScriptedAdapter("mpesa"))
    rng = random.Random(11)
    async with system.running():
        for _ in range(6 * 60):
            for _ in range(30):
                system.telemetry.record_call("mpesa", Outcome.SUCCESS, 400.0 * rng.uniform(0.9, 1.1))
            await clock.advance(60.0)
        assert system.predictive_maintenance.predictions() == []


@pytest.mark.parametrize("ramp_min", [30, 360])
async def test_latency_ramp_raises_a_degradation_prediction_before_the_timeout(
    settings: Settings, clock: ManualClock, ramp_min: int
) -> None:
    settings = settings.model_copy(update={"self_healing_enabled": False, "prediction_interval_ms": 60_000})
    system = AutonomousSystem(settings, clock=clock)
    system.register_provider(ScriptedAdapter("mpesa"))
    rng = random.Random(5)
    baseline_min, timeout_ms = 4 * 60, 15_000.0
    ramp_start = clock.now() + baseline_min * 60.0
    async with system.running():
        for minute in range(baseline_min + ramp_min):
            share = min(1.0, max(0.0, (minute - baseline_min) / ramp_min))
            level_ms = 400.0 + share * (timeout_ms - 400.0)  # reaches the timeout at the end
            for _ in range(20):
                system.telemetry.record_call("mpesa", Outcome.SUCCESS, level_ms * rng.uniform(0.9, 1.1))
            await clock.advance(60.0)
        predictions = system.predictive_maintenance.predictions(provider="mpesa")
        assert all(p.created_at >= ramp_start for p in predictions)  # four quiet hours raised nothing
        degradations = [
            p
            for p in predictions
            if p.type is PredictionType.DEGRADATION
            and (p.series == "latency_p95_ms" or any(i.name == "latency_p95_ms" for i in p.indicators))
        ]
        assert len(degradations) == 1, [(p.type, p.series, p.created_at - ramp_start) for p in predictions]
        first = degradations[0]
        timeout_reached = ramp_start + ramp_min * 60.0
        assert first.created_at < ramp_start + ramp_min * 60.0 * 0.2  # in the first fifth of the ramp
        # Still open when calls begin to time out (latency x 1.1 past the timeout): an incident
        # opened by the breaker then would confirm it with a positive lead time.
        first_timeouts = ramp_start + ramp_min * 60.0 * (timeout_ms / 1.1 - 400.0) / (timeout_ms - 400.0)
        assert first.created_at < first_timeouts <= first.window_end
        assert first.created_at < timeout_reached
