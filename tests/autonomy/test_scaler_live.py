"""The live auto-scaler: policy decisions as events, guards, leadership, load history."""

from __future__ import annotations

import pytest

from mcp_autonomy.autonomy.scaling.policy import PredictivePolicy, ReactivePolicy, ScalingRule
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.events import EventType
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio
TICK_S = 15.0


def make_system(
    settings: Settings, clock: ManualClock, **updates: object
) -> tuple[AutonomousSystem, list[float]]:
    system = AutonomousSystem(
        settings.model_copy(update={"predictive_maintenance_enabled": False, **updates}), clock=clock
    )
    system.register_provider(ScriptedAdapter("mpesa"))
    system.register_provider(ScriptedAdapter("paystack"))
    load = [0.0]
    system.auto_scaler.load_source = lambda: load[0]
    return system, load


async def test_scales_up_with_load_and_explains_each_decision(settings: Settings, clock: ManualClock) -> None:
    system, load = make_system(settings, clock)
    assert isinstance(system.auto_scaler.policy, PredictivePolicy)
    async with system.running():
        load[0] = 950.0
        await clock.advance(TICK_S)
        # The HPA's default step limit: at most +4 pods or +100 % per 15 s, so 2 -> 6 -> 10.
        assert (await system.auto_scaler.backend.read()).desired == 6
        await clock.advance(TICK_S)
        assert (await system.auto_scaler.backend.read()).desired == 10  # ceil(950 / 100)
        first, decision = system.events.history(types=[EventType.SCALING_DECISION])
        assert first.data["rule"] == ScalingRule.RATE_LIMITED.value
        assert decision.data["rule"] == ScalingRule.REACTIVE_UP.value
        assert decision.data["load_tpm"] == 950.0 and decision.data["to"] == 10
        assert "950.0 tpm" in decision.data["reason"]


async def test_no_scale_down_while_an_incident_is_open(settings: Settings, clock: ManualClock) -> None:
    system, load = make_system(settings, clock, scaling_policy="reactive")
    assert isinstance(system.auto_scaler.policy, ReactivePolicy)
    mpesa = system.providers.get("mpesa").adapter
    assert isinstance(mpesa, ScriptedAdapter)
    async with system.running():
        load[0] = 800.0
        await clock.advance(2 * TICK_S)
        assert (await system.auto_scaler.backend.read()).desired == 8
        mpesa.probe_ok = False
        await clock.advance(20.0)
        assert system.incidents.open_incidents()
        load[0] = 100.0
        await clock.advance(600.0)  # long past the 300 s scale-down stabilisation
        assert (await system.auto_scaler.backend.read()).desired == 8
        last = system.auto_scaler.details()["last_decision"]
        assert last["rule"] == ScalingRule.GUARD.value and "incident open" in last["guards"]
        mpesa.probe_ok = True
        await clock.advance(30.0 + 300.0)
        assert not system.incidents.open_incidents()
        assert (await system.auto_scaler.backend.read()).desired == 2


async def test_only_the_leader_decides(settings: Settings, clock: ManualClock) -> None:
    system, load = make_system(settings, clock)
    async with system.running():
        assert system.auto_scaler.is_leader()  # a single process always leads
        system.auto_scaler.is_leader = lambda: False  # as a follower sees it (see test_kubernetes_engine)
        system.auto_scaler.leader = lambda: "pod-b"
        load[0] = 950.0
        await clock.advance(TICK_S * 4)
        assert (await system.auto_scaler.backend.read()).desired == settings.min_instances
        assert system.events.history(types=[EventType.SCALING_DECISION]) == []
        assert "pod-b decides" in system.auto_scaler.details()["last_decision"]["reason"]


async def test_recorded_load_warms_the_forecaster_after_a_restart(
    settings: Settings, clock: ManualClock
) -> None:
    system, load = make_system(settings, clock)
    async with system.running():
        load[0] = 300.0
        await clock.advance(30 * 60.0)  # half an hour: one sample a minute
    restarted, _ = make_system(settings, clock)
    async with restarted.running():
        assert restarted.auto_scaler.samples_replayed == 31
        assert restarted.auto_scaler.details()["load_samples_replayed"] == 31


async def test_after_a_restart_the_recorded_days_let_the_forecast_decide_at_once(
    settings: Settings, clock: ManualClock
) -> None:
    # Two days of a recorded daily step (what the leader stores once a minute): the restarted
    # engine replays them through its policy, so its first decision is the forecast's, trusted
    # against the HPA's record, instead of hours of following the HPA while the ledger refills.
    system, _ = make_system(settings, clock)
    start = clock.now()
    async with system.running():
        for minute in range(2 * 24 * 60):
            at = start - (2 * 24 * 60 - minute) * 60.0
            hour = (at % 86_400.0) / 3600.0
            system.store.record_load(at, 900.0 if 8 <= hour < 12 else 200.0, keep_s=15 * 86_400.0)
    restarted, load = make_system(settings, clock)
    assert isinstance(restarted.auto_scaler.policy, PredictivePolicy)
    async with restarted.running():
        assert restarted.auto_scaler.samples_replayed >= 2 * 24 * 60
        assert restarted.auto_scaler.policy.forecast_trusted
        load[0] = 200.0
        await clock.advance(TICK_S)
        decision = restarted.auto_scaler.details()["last_decision"]
        assert decision["forecast_trusted"] == 1, decision["reason"]


async def test_a_replica_taking_the_loop_over_learns_the_load_the_previous_leader_recorded(
    settings: Settings, clock: ManualClock
) -> None:
    system, load = make_system(settings, clock)
    policy = system.auto_scaler.policy
    assert isinstance(policy, PredictivePolicy)
    async with system.running():
        system.auto_scaler.is_leader = lambda: False  # another replica leads, measures and records
        system.auto_scaler.leader = lambda: "pod-b"
        start = clock.now()
        for minute in range(7 * 60):
            system.store.record_load(start + 60.0 * minute, 400.0, keep_s=15 * 86_400.0)
        await clock.advance(7 * 3600.0)
        assert policy.ledger.comparable_hours == 0  # a follower's policy sees no load
        system.auto_scaler.is_leader = lambda: True  # pod-b is gone: this replica takes over
        load[0] = 400.0
        await clock.advance(TICK_S)
        # Seven hours of pod-b's record went through the policy: its ledger holds the hours the
        # forecast needs (6) before it may act, instead of starting them now.
        assert policy.ledger.comparable_hours >= 6
        assert system.auto_scaler.samples_replayed >= 7 * 60 - 1  # all but the one it decided on itself
