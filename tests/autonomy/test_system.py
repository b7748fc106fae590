from __future__ import annotations

import anyio
import pytest

from mcp_autonomy.autonomy.component import Mode
from mcp_autonomy.autonomy.healer import HEAL_COOLDOWN_S
from mcp_autonomy.autonomy.scaler import ScaleBoundsError
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.events import EventType
from mcp_autonomy.providers.registry import BackupMapError, UnknownProviderError
from mcp_autonomy.resilience.health import HealthStatus
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio


def make_system(
    settings: Settings, clock: ManualClock, *names: str
) -> tuple[AutonomousSystem, list[ScriptedAdapter]]:
    system = AutonomousSystem(settings, clock=clock)
    adapters = [ScriptedAdapter(n) for n in names]
    for adapter in adapters:
        system.register_provider(adapter)
    return system, adapters


async def test_loops_start_tick_on_the_clock_and_stop(settings: Settings, clock: ManualClock) -> None:
    system, (mpesa,) = make_system(settings, clock, "mpesa")
    async with system.running():
        status = await system.get_status()
        assert all(c.running for c in status.components.values())
        assert mpesa.initialize_calls == 1
        await clock.advance(settings.self_healing_interval_ms / 1000 * 3)
        assert system.self_healer.status().ticks == 4  # at 0, 10, 20, 30 s
        assert mpesa.probe_calls == 4
        assert (await system.get_status()).providers[0].health.status is HealthStatus.HEALTHY
    assert not any(c.running for c in system.components.values())
    assert mpesa.closed


async def test_outage_is_detected_healed_and_capped(settings: Settings, clock: ManualClock) -> None:
    settings = settings.model_copy(update={"max_healing_attempts": 2})
    system, (mpesa,) = make_system(settings, clock, "mpesa")
    interval = settings.self_healing_interval_ms / 1000
    async with system.running():
        mpesa.probe_ok = False
        await clock.advance(interval)  # 1st failed probe: degraded
        assert system.providers.get("mpesa").health.status is HealthStatus.DEGRADED
        await clock.advance(interval)  # 2nd: unhealthy -> automatic healing attempt
        assert system.providers.get("mpesa").health.status is HealthStatus.UNHEALTHY
        assert mpesa.initialize_calls == 2
        await clock.advance(HEAL_COOLDOWN_S * 10)
        assert mpesa.initialize_calls == 3  # capped at max_healing_attempts automatic attempts
        critical = system.events.history(types=[EventType.HEALING_EVENT])[-1]
        assert critical.data["action"] == "manual_intervention_required"
        assert system.self_healer.details()["manual_intervention_required"] == ["mpesa"]

        mpesa.probe_ok = True
        result = await system.heal_provider("mpesa", reason="fixed upstream")
        assert result.succeeded is True
        assert [s.name for s in result.steps] == ["reinitialize", "probe", "breaker"]
        await clock.advance(interval)
        assert system.providers.get("mpesa").health.status is HealthStatus.HEALTHY
        assert system.self_healer.details()["manual_intervention_required"] == []


async def test_dry_run_reports_and_changes_nothing(settings: Settings, clock: ManualClock) -> None:
    system, (mpesa,) = make_system(settings, clock, "mpesa")
    async with system.running():
        system.set_autonomy("self_healer", Mode.DRY_RUN, reason="trial")
        before = mpesa.initialize_calls
        result = await system.heal_provider("mpesa", reason="trial heal")
        assert result.dry_run and result.succeeded is None
        assert mpesa.initialize_calls == before
        scale = await system.scale_to(5, reason="dry") if system.auto_scaler.dry_run else None
        assert scale is None
        system.set_autonomy("auto_scaler", Mode.DRY_RUN, reason="trial")
        scale = await system.scale_to(5, reason="dry")
        assert scale.rollout == "dry_run"
        assert (await system.auto_scaler.backend.read()).desired == settings.min_instances


async def test_off_mode_stops_acting_and_survives_restart(settings: Settings, clock: ManualClock) -> None:
    system, (mpesa,) = make_system(settings, clock, "mpesa")
    async with system.running():
        system.set_autonomy("all", Mode.OFF, reason="maintenance")
        probes = mpesa.probe_calls
        await clock.advance(600)
        assert mpesa.probe_calls == probes
        await system.scale_to(4, reason="manual still works")

    restarted, _ = make_system(settings, clock, "mpesa")
    async with restarted.running():
        status = await restarted.get_status()
        assert {c.mode for c in status.components.values()} == {Mode.OFF}
        assert {c.mode_source for c in status.components.values()} == {"operator"}
        assert status.scaling is not None and status.scaling.desired == 4
        assert status.scaling.backend == "local" and status.scaling.external_effect is False
        types = {e.type for e in restarted.query_events(limit=1000)}
        assert {EventType.AUTONOMY_MODE_CHANGED, EventType.SCALED_UP, EventType.SYSTEM_STOPPED} <= types


async def test_scale_bounds_and_force(settings: Settings, clock: ManualClock) -> None:
    system, _ = make_system(settings, clock)
    async with system.running():
        with pytest.raises(ScaleBoundsError, match=r"outside MIN_INSTANCES..MAX_INSTANCES = 2..20"):
            await system.scale_to(21, reason="too many")
        with pytest.raises(ScaleBoundsError, match=r"\[0, 1000\]"):
            await system.scale_to(10**9, reason="absurd", force=True)
        forced = await system.scale_to(21, reason="incident", force=True)
        assert forced.state.desired == 21 and forced.forced


async def test_concurrent_scale_calls_are_serialised(settings: Settings, clock: ManualClock) -> None:
    system, _ = make_system(settings, clock)
    async with system.running():
        async with anyio.create_task_group() as tg:
            for n in (3, 4, 5, 6):
                tg.start_soon(lambda n=n: system.scale_to(n, reason=f"to {n}"))
        scaled = system.events.history(types=[EventType.SCALED_UP])
        assert [(e.data["from"], e.data["to"]) for e in scaled] == [(2, 3), (3, 4), (4, 5), (5, 6)]


async def test_overall_is_critical_when_more_than_half_unhealthy(
    settings: Settings, clock: ManualClock
) -> None:
    system, adapters = make_system(settings, clock, "a", "b", "c")
    async with system.running():
        assert (await system.get_status()).overall == "healthy"
        adapters[0].probe_ok = adapters[1].probe_ok = False
        system.set_autonomy("self_healer", Mode.DRY_RUN, reason="observe only")
        await clock.advance(settings.self_healing_interval_ms / 1000 * 2)
        status = await system.get_status()
        assert status.overall == "critical"
        assert "a, b" in status.overall_reason


def test_backup_map_is_validated(settings: Settings, clock: ManualClock) -> None:
    system, _ = make_system(settings, clock, "mpesa", "intasend")
    system.register_provider(ScriptedAdapter("paystack", currencies=frozenset({"NGN"})))
    system.set_backup_providers("mpesa", ["intasend"])
    with pytest.raises(BackupMapError, match="cycle"):
        system.set_backup_providers("intasend", ["mpesa"])
    with pytest.raises(BackupMapError, match="none of mpesa's currencies"):
        system.set_backup_providers("mpesa", ["paystack"])
    with pytest.raises(BackupMapError, match="not a registered provider"):
        system.set_backup_providers("mpesa", ["wave"])
    with pytest.raises(UnknownProviderError, match="known providers: mpesa, intasend, paystack"):
        system.set_backup_providers("orange", [])
    assert system.providers.backup_map() == {"mpesa": ["intasend"]}


async def test_failover_and_fail_back_after_hold(settings: Settings, clock: ManualClock) -> None:
    from mcp_autonomy.autonomy.healer import FAIL_BACK_HOLD_S
    from mcp_autonomy.providers.base import Operation

    system, (mpesa, _intasend) = make_system(settings, clock, "mpesa", "intasend")
    system.set_backup_providers("mpesa", ["intasend"])
    interval = settings.self_healing_interval_ms / 1000
    async with system.running():
        assert system.router.route(Operation.COLLECT, "KES", "KE") == ["mpesa", "intasend"]
        mpesa.probe_ok = False
        await clock.advance(interval * 2)
        assert system.router.failed_over == {"mpesa": "intasend"}
        assert system.router.route(Operation.COLLECT, "KES", "KE") == ["intasend", "mpesa"]
        (failover,) = system.events.history(types=[EventType.FAILOVER_TRIGGERED])
        assert failover.provider == "mpesa" and failover.data["to"] == "intasend"

        mpesa.probe_ok = True
        await clock.advance(interval * 2)  # healthy again, but not for long enough
        assert system.router.failed_over == {"mpesa": "intasend"}
        await clock.advance(FAIL_BACK_HOLD_S + interval)
        assert system.router.failed_over == {}
        assert system.router.route(Operation.COLLECT, "KES", "KE") == ["mpesa", "intasend"]
