"""Maintenance windows: placed at the quietest measured hour, run as drain + heal + restore."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mcp_autonomy.autonomy.maintenance import HOURS_PER_WEEK, MaintenanceStatus, TrafficProfile, hour_of_week
from mcp_autonomy.autonomy.predictor import Indicator, Prediction, PredictionStatus, PredictionType
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.events import EventType
from mcp_autonomy.telemetry import Outcome
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio
SATURDAY_0100 = datetime(2026, 1, 3, 1, 0, tzinfo=UTC).timestamp()
WEEK_START = datetime(2025, 12, 29, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC
QUIET_HOUR = 3


def learned_profile(provider: str = "mpesa") -> TrafficProfile:
    """A week of measured traffic: 100 req/min, except 5 req/min from 03:00 to 04:00 every day."""
    profile = TrafficProfile()
    for hour in range(HOURS_PER_WEEK):
        rate = 5.0 if hour % 24 == QUIET_HOUR else 100.0
        profile.record(provider, WEEK_START + hour * 3600 + 3600, round(rate * 60), 3600.0)
    return profile


def test_quietest_start_follows_measured_traffic() -> None:
    profile = learned_profile()
    start, expected, basis = profile.quietest_start(
        "mpesa", earliest=SATURDAY_0100, latest=SATURDAY_0100 + 6 * 3600, duration_s=900
    )
    assert datetime.fromtimestamp(start, UTC).hour == QUIET_HOUR
    assert expected == pytest.approx(5.0)
    assert "lowest measured traffic" in basis and "168 hours" in basis
    # Nothing recorded for a provider: no guess, the earliest slot, and the window says why.
    start, expected, basis = profile.quietest_start(
        "paystack", earliest=SATURDAY_0100, latest=SATURDAY_0100 + 6 * 3600, duration_s=900
    )
    assert (start, expected) == (SATURDAY_0100, None) and "no traffic recorded" in basis


def test_profile_round_trips_and_forgets_slowly() -> None:
    profile = learned_profile()
    again = TrafficProfile.from_json(profile.to_json())
    hour = hour_of_week(SATURDAY_0100 + 2 * 3600)
    assert again.requests_per_min("mpesa", hour) == pytest.approx(5.0)
    assert TrafficProfile.from_json({"requests": {"x": [1.0]}}).hours_known("x") == 0


def critical_prediction(
    clock: ManualClock, *, confidence: float = 0.9, window_s: float = 6 * 3600
) -> Prediction:
    now = clock.now()
    return Prediction(
        id=f"mpesa:error_rate:trend:{round(now * 1000)}",
        provider="mpesa",
        type=PredictionType.FAILURE,
        severity="critical",
        confidence=confidence,
        created_at=now,
        window_start=now,
        window_end=now + window_s,
        indicators=[Indicator(name="error_rate", value=0.2, threshold=0.02)],
        recommended_action="drain and re-initialise",
    )


def make_system(settings: Settings, clock: ManualClock) -> tuple[AutonomousSystem, ScriptedAdapter]:
    system = AutonomousSystem(settings, clock=clock)
    mpesa = ScriptedAdapter("mpesa")
    system.register_provider(mpesa)
    system.register_provider(ScriptedAdapter("paystack"))
    system.set_backup_providers("mpesa", ["paystack"])
    return system, mpesa


async def test_confident_critical_prediction_runs_a_window_at_the_quiet_hour(settings: Settings) -> None:
    clock = ManualClock(start_epoch_s=SATURDAY_0100)
    system, mpesa = make_system(settings, clock)
    async with system.running():
        pm = system.predictive_maintenance
        pm.traffic = pm.maintenance.traffic = learned_profile()
        foreseen = critical_prediction(clock)
        pm.record(foreseen)
        (window,) = system.get_maintenance_windows(provider="mpesa")
        assert window.status is MaintenanceStatus.SCHEDULED and window.prediction_id == foreseen.id
        assert datetime.fromtimestamp(window.start_at, UTC).hour == QUIET_HOUR
        assert window.expected_requests_per_min == pytest.approx(5.0)
        assert system.events.history(types=[EventType.MAINTENANCE_SCHEDULED])

        await clock.advance(window.start_at - clock.now() + 60)
        running = pm.maintenance.get(window.id)
        assert running is not None and running.status is MaintenanceStatus.IN_PROGRESS
        assert system.router.failed_over == {"mpesa": "paystack"}
        assert [s.action for s in running.steps] == ["drain", "heal"]
        initialisations = mpesa.initialize_calls
        assert initialisations >= 2  # start-up, then the window's heal

        await clock.advance(300.0)  # healthy all along: the healer must not take the traffic back
        assert system.router.failed_over == {"mpesa": "paystack"}

        await clock.advance(window.end_at - clock.now() + 60)
        (done,) = system.get_maintenance_windows(provider="mpesa")
        assert done.status is MaintenanceStatus.COMPLETED and system.router.failed_over == {}
        assert [s.action for s in done.steps] == ["drain", "heal", "restore"]

        await clock.advance(foreseen.window_end - clock.now() + 120)
        judged = pm.get_prediction(foreseen.id)
        assert judged is not None and judged.status is PredictionStatus.RESOLVED
        assert (await system.get_stats()).predictions["resolved"] == 1


async def test_cancel_gives_traffic_back_and_refuses_twice(settings: Settings) -> None:
    clock = ManualClock(start_epoch_s=SATURDAY_0100)
    system, _ = make_system(settings, clock)
    async with system.running():
        system.predictive_maintenance.record(critical_prediction(clock, window_s=1800))
        (window,) = system.get_maintenance_windows()
        assert window.start_at == clock.now() + 300  # no history: the earliest slot
        await clock.advance(360.0)
        assert system.router.failed_over == {"mpesa": "paystack"}
        cancelled = system.cancel_maintenance_window(window.id, reason="change freeze")
        assert cancelled.status is MaintenanceStatus.CANCELLED and system.router.failed_over == {}
        with pytest.raises(ValueError, match="already cancelled"):
            system.cancel_maintenance_window(window.id, reason="again")
        with pytest.raises(KeyError):
            system.cancel_maintenance_window("mw-none", reason="x")


async def test_weak_predictions_and_dry_run_change_no_traffic(settings: Settings) -> None:
    clock = ManualClock(start_epoch_s=SATURDAY_0100)
    system, _ = make_system(settings, clock)
    async with system.running():
        system.predictive_maintenance.record(critical_prediction(clock, confidence=0.6))
        assert system.get_maintenance_windows() == []
        system.set_autonomy(
            "predictive_maintenance", system.predictive_maintenance.mode.DRY_RUN, reason="test"
        )
        await clock.advance(1.0)
        system.predictive_maintenance.record(critical_prediction(clock, window_s=1800))
        (window,) = system.get_maintenance_windows()
        assert window.dry_run
        await clock.advance(window.end_at - clock.now() + 60)
        (done,) = system.get_maintenance_windows()
        assert done.status is MaintenanceStatus.COMPLETED
        assert all(s.ok is None for s in done.steps) and system.router.failed_over == {}


async def test_the_loop_learns_traffic_from_telemetry(settings: Settings) -> None:
    clock = ManualClock(start_epoch_s=SATURDAY_0100)
    system, _ = make_system(settings, clock)
    async with system.running():
        for _ in range(10):
            for _ in range(30):
                system.telemetry.record_call("mpesa", Outcome.SUCCESS, 200.0)
            await clock.advance(60.0)
        rate = system.predictive_maintenance.traffic.requests_per_min("mpesa", hour_of_week(clock.now()))
        assert rate == pytest.approx(30.0, rel=0.05)
    restarted, _ = make_system(settings, clock)
    async with restarted.running():
        again = restarted.predictive_maintenance.traffic.requests_per_min("mpesa", hour_of_week(clock.now()))
        assert again == pytest.approx(rate)
