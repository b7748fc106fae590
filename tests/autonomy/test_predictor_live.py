"""The live predictive-maintenance loop on measured telemetry, driven by the manual clock."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_autonomy.autonomy.predictor import (
    HISTORY_STATE_KEY,
    LIVE_WARMUP_POINTS,
    PROVIDERS_STATE_KEY,
    SERIES,
    TRAFFIC_STATE_KEY,
    PredictionType,
    PredictiveMaintenance,
)
from mcp_autonomy.autonomy.series_history import HISTORY_MAX_AGE_S
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock, iso
from mcp_autonomy.config import Sensitivity, Settings
from mcp_autonomy.events import EventBus, EventType
from mcp_autonomy.pg.store import PostgresStore
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.server.dashboard import dashboard_snapshot
from mcp_autonomy.server.mcp_tools.models import PredictionList
from mcp_autonomy.store import StateStore, Store
from mcp_autonomy.telemetry import Outcome, Telemetry
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


def _minute_of_traffic(system: AutonomousSystem, rng: random.Random, *, latency_ms: float = 400.0) -> None:
    for _ in range(40):
        failed = rng.random() < 0.02
        outcome = Outcome.NOT_PROCESSED if failed else Outcome.SUCCESS
        system.telemetry.record_call("mpesa", outcome, latency_ms * rng.uniform(0.9, 1.1))


async def test_warm_up_takes_minutes_and_every_surface_says_until_when(
    settings: Settings, clock: ManualClock
) -> None:
    settings = settings.model_copy(update={"self_healing_enabled": False, "prediction_interval_ms": 60_000})
    system = AutonomousSystem(settings, clock=clock)
    system.register_provider(ScriptedAdapter("mpesa"))
    predictor = system.predictive_maintenance
    rng = random.Random(3)
    async with system.running():
        await clock.advance(60.0)
        idle = predictor.warm_up()
        assert idle.providers_without_traffic == ["mpesa"] and not idle.warming_up
        assert "no provider has had traffic yet" in idle.reason
        first_call_at = clock.now()
        for _ in range(3):
            _minute_of_traffic(system, rng)
            await clock.advance(60.0)
        warming = predictor.warm_up()
        assert warming.warming_up and warming.points_needed == LIVE_WARMUP_POINTS
        assert {w.series for w in warming.series} == set(SERIES)
        assert all(w.provider == "mpesa" and w.points_seen == 3 for w in warming.series)
        last_point_at = clock.now() - 60.0  # the newest tick ran at the start of this last minute
        assert warming.ready_at == pytest.approx(last_point_at + (LIVE_WARMUP_POINTS - 3) * 60.0)
        assert "learning their baseline until" in warming.reason
        # Status, the dashboard and the predictions list say it too, with ISO times.
        status = await system.get_status()
        details = status.components["predictive_maintenance"].details["warm_up"]
        assert details["warming_up"] and details["ready_at"] == iso(warming.ready_at)
        snapshot = (await dashboard_snapshot(system)).model_dump(mode="json")
        assert snapshot["prediction_warm_up"]["ready_at"] == iso(warming.ready_at)
        assert snapshot["predictions"] == []
        listed = PredictionList(predictions=[], scores={}, warm_up=predictor.warm_up()).model_dump(
            mode="json"
        )
        assert listed["warm_up"]["series"][0]["ready_at"] == iso(warming.ready_at)

        for _ in range(LIVE_WARMUP_POINTS - 3):
            _minute_of_traffic(system, rng)
            await clock.advance(60.0)
        ready = predictor.warm_up()
        assert not ready.warming_up and ready.series == [] and ready.series_ready == len(SERIES)
        # Minutes after the first call, a slowdown is predicted (the detector's own default
        # warm-up, 30 points, would keep it silent for half an hour).
        first_prediction_minute = None
        for minute in range(5):
            _minute_of_traffic(system, rng, latency_ms=4_000.0)
            await clock.advance(60.0)
            if first_prediction_minute is None and predictor.predictions(provider="mpesa"):
                first_prediction_minute = minute
        assert first_prediction_minute is not None and first_prediction_minute <= 1
        assert clock.now() - first_call_at <= 16 * 60.0  # minutes after the first call, not half an hour
        assert all((p.series or "").startswith("latency") for p in predictor.predictions(provider="mpesa"))


async def test_a_restart_replays_the_recorded_series_instead_of_warming_up_again(
    settings: Settings, clock: ManualClock
) -> None:
    settings = settings.model_copy(update={"self_healing_enabled": False, "prediction_interval_ms": 60_000})
    rng = random.Random(9)
    first = AutonomousSystem(settings, clock=clock)
    first.register_provider(ScriptedAdapter("mpesa"))
    async with first.running():
        for _ in range(20):
            _minute_of_traffic(first, rng)
            await clock.advance(60.0)
        assert first.predictive_maintenance.predictions() == []
    await clock.advance(120.0)  # a deploy

    second = AutonomousSystem(settings, clock=clock)
    second.register_provider(ScriptedAdapter("mpesa"))
    async with second.running():
        warm_up = second.predictive_maintenance.warm_up()
        assert warm_up.replayed_points >= 20
        assert not warm_up.warming_up and warm_up.series_ready == len(SERIES)
        raised_minute = None
        for minute in range(3):
            _minute_of_traffic(second, rng, latency_ms=4_000.0)
            await clock.advance(60.0)
            if raised_minute is None and second.predictive_maintenance.predictions(provider="mpesa"):
                raised_minute = minute
        assert raised_minute is not None and raised_minute <= 1, "blind to a failure after the restart"
        assert all(
            (p.series or "").startswith("latency")
            for p in second.predictive_maintenance.predictions(provider="mpesa")
        )


async def test_old_recorded_series_are_not_replayed(settings: Settings, clock: ManualClock) -> None:
    settings = settings.model_copy(update={"self_healing_enabled": False, "prediction_interval_ms": 60_000})
    rng = random.Random(4)
    first = AutonomousSystem(settings, clock=clock)
    first.register_provider(ScriptedAdapter("mpesa"))
    async with first.running():
        for _ in range(15):
            _minute_of_traffic(first, rng)
            await clock.advance(60.0)
    await clock.advance(HISTORY_MAX_AGE_S + 60.0)  # the engine was down longer than that
    second = AutonomousSystem(settings, clock=clock)
    second.register_provider(ScriptedAdapter("mpesa"))
    async with second.running():
        assert second.predictive_maintenance.warm_up().replayed_points == 0


async def test_a_busy_provider_going_silent_is_a_volume_collapse(
    settings: Settings, clock: ManualClock
) -> None:
    settings = settings.model_copy(update={"self_healing_enabled": False, "prediction_interval_ms": 60_000})
    system = AutonomousSystem(settings, clock=clock)
    system.register_provider(ScriptedAdapter("mpesa"))
    rng = random.Random(12)
    async with system.running():
        for _ in range(60):
            _minute_of_traffic(system, rng)
            await clock.advance(60.0)
        assert system.predictive_maintenance.predictions() == []
        collapsed_at = clock.now()
        await clock.advance(5 * 60.0)  # no call reaches M-Pesa any more
        volume = system.predictive_maintenance.predictions(provider="mpesa")
        assert [(p.series, p.type) for p in volume] == [("requests_per_min", PredictionType.FAILURE)]
        assert volume[0].created_at - collapsed_at <= 3 * 60.0


async def test_a_provider_with_sparse_traffic_going_silent_is_no_news(
    settings: Settings, clock: ManualClock
) -> None:
    settings = settings.model_copy(update={"self_healing_enabled": False, "prediction_interval_ms": 60_000})
    system = AutonomousSystem(settings, clock=clock)
    system.register_provider(ScriptedAdapter("mpesa"))
    rng = random.Random(13)
    async with system.running():
        for minute in range(120):
            if minute % 3 == 0:  # calls every third minute: silence is its ordinary state
                _minute_of_traffic(system, rng)
            await clock.advance(60.0)
        await clock.advance(60 * 60.0)
        assert system.predictive_maintenance.predictions() == []


# --- what is saved and loaded at start or takeover, on both store backends ------------------


@pytest.fixture(params=["sqlite", "postgres"])
def state_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    """Each backend in turn: SQLite on a temporary file, PostgreSQL on a fresh migrated database."""
    store: StateStore
    if request.param == "sqlite":
        store = Store(tmp_path / "state.sqlite3")
    else:
        store = PostgresStore(request.getfixturevalue("pg_url"), origin="test")
    store.open()
    try:
        yield store
    finally:
        store.close()


def _predictor(store: StateStore, clock: ManualClock) -> PredictiveMaintenance:
    providers = ProviderRegistry()
    for name in ("mpesa", "airtel"):
        providers.register(ScriptedAdapter(name))
    return PredictiveMaintenance(
        clock=clock,
        bus=EventBus(clock),
        store=store,
        enabled=True,
        interval_s=60.0,
        sensitivity=Sensitivity.MEDIUM,
        auto_schedule_maintenance=False,
        telemetry=Telemetry(clock),
        providers=providers,
    )


async def _ticks(predictor: PredictiveMaintenance, clock: ManualClock, minutes: int, seed: int) -> None:
    """`minutes` ticks: M-Pesa busy every minute, Airtel every third (gaps in its series)."""
    assert predictor.telemetry is not None
    rng = random.Random(seed)
    for minute in range(minutes):
        for name, calls in (("mpesa", 40), ("airtel", 10 if minute % 3 == 0 else 0)):
            for _ in range(calls):
                predictor.telemetry.record_call(name, Outcome.SUCCESS, 400.0 * rng.uniform(0.9, 1.1))
        await predictor.tick()
        await clock.advance(60.0)


def _loaded(store: StateStore, clock: ManualClock) -> PredictiveMaintenance:
    predictor = _predictor(store, clock)
    predictor.load()
    return predictor


async def test_a_restart_loads_the_saved_traffic_profile_and_series_history(
    state_store: StateStore, clock: ManualClock
) -> None:
    first = _predictor(state_store, clock)
    first.load()
    await _ticks(first, clock, 25, seed=21)
    second = _loaded(state_store, clock)
    assert second.traffic.to_json() == first.traffic.to_json()
    assert set(second.traffic.to_json()["requests"]) == {"mpesa", "airtel"}
    assert second._history.to_json() == first._history.to_json()
    assert second.warm_up().replayed_points == len(first._history) > 25  # both providers
    # Each provider is its own key: one provider's save is bounded by its own history.
    assert set(state_store.get_state(first.name, PROVIDERS_STATE_KEY)) == {"mpesa", "airtel"}
    assert state_store.get_state(first.name, TRAFFIC_STATE_KEY) is None


async def test_state_saved_as_one_document_by_an_older_version_is_loaded_and_migrated(
    state_store: StateStore, clock: ManualClock, tmp_path: Path
) -> None:
    elsewhere = Store(tmp_path / "elsewhere.sqlite3").open()
    measured = _predictor(elsewhere, clock)
    await _ticks(measured, clock, 15, seed=22)
    elsewhere.close()
    # What the previous version wrote at the end of each tick: every provider in one document.
    name = measured.name
    state_store.set_state(name, TRAFFIC_STATE_KEY, measured.traffic.to_json(), timestamp=clock.now())
    state_store.set_state(name, HISTORY_STATE_KEY, measured._history.to_json(), timestamp=clock.now())

    upgraded = _loaded(state_store, clock)
    assert upgraded.traffic.to_json() == measured.traffic.to_json()
    assert upgraded._history.to_json() == measured._history.to_json()
    assert upgraded.warm_up().replayed_points == len(measured._history) > 15
    await _ticks(upgraded, clock, 1, seed=23)  # the first save writes every provider's key ...
    assert state_store.get_state(name, TRAFFIC_STATE_KEY) is None  # ... and drops the old ones
    assert state_store.get_state(name, HISTORY_STATE_KEY) is None
    again = _loaded(state_store, clock)
    assert again.traffic.to_json() == upgraded.traffic.to_json()
    assert again._history.to_json() == upgraded._history.to_json()
