"""Incidents: opened on detection, annotated with every action, resolved on recovery, persisted."""

from __future__ import annotations

import pytest

from mcp_autonomy.autonomy.incidents import IncidentScope, IncidentStatus
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.events import EventType
from mcp_autonomy.telemetry import Outcome
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio
TICK_S = 10.0  # the healer's default probe interval


def make_system(
    settings: Settings, clock: ManualClock, *names: str
) -> tuple[AutonomousSystem, list[ScriptedAdapter]]:
    system = AutonomousSystem(
        settings.model_copy(update={"predictive_maintenance_enabled": False}), clock=clock
    )
    adapters = [ScriptedAdapter(n) for n in names]
    for adapter in adapters:
        system.register_provider(adapter)
    return system, adapters


async def test_outage_opens_an_incident_with_measured_times_and_actions(
    settings: Settings, clock: ManualClock
) -> None:
    system, (mpesa, _) = make_system(settings, clock, "mpesa", "paystack")
    system.set_backup_providers("mpesa", ["paystack"])
    async with system.running():
        await clock.advance(30.0)  # probes at 0, 10, 20, 30 pass
        mpesa.probe_ok = False
        await clock.advance(20.0)  # probe at 40 fails (first evidence), at 50 fails: unhealthy
        (incident,) = system.incidents.open_incidents()
        assert incident.provider == "mpesa" and incident.scope is IncidentScope.PROVIDER
        assert incident.first_evidence_at == clock.now() - 10.0
        assert incident.opened_at == clock.now()
        assert incident.time_to_detect_s == 10.0
        assert "health unhealthy" in incident.trigger
        actions = [a.action for a in incident.actions]
        assert "fail_over" in actions and "heal" in actions
        assert incident.time_to_mitigate_s == 0.0  # failed over in the tick that detected it
        heal = next(a for a in incident.actions if a.action == "heal")
        assert heal.ok is False  # the probe after re-initialising still failed
        assert (await system.get_status_summary()).open_incidents == [incident.id]

        mpesa.probe_ok = True
        await clock.advance(30.0)  # ok at 60 and 70: healthy again
        assert system.incidents.open_incidents() == []
        (resolved,) = system.get_incidents(provider="mpesa")
        assert resolved.status is IncidentStatus.RESOLVED
        assert resolved.time_to_recover_s == 20.0
        opened = system.events.history(types=[EventType.INCIDENT_OPENED])
        closed = system.events.history(types=[EventType.INCIDENT_RESOLVED])
        assert len(opened) == 1 and len(closed) == 1

        stats = (await system.get_stats()).incidents
        assert stats["incidents_total"] == 1 and stats["open"] == 0
        assert stats["mean_time_to_detect_s"] == 10.0
        assert stats["mean_time_to_recover_s"] == 20.0
        assert stats["healing_success_rate"] == 0.0


async def test_first_failed_payment_is_the_first_evidence(settings: Settings, clock: ManualClock) -> None:
    system, (mpesa, _) = make_system(settings, clock, "mpesa", "paystack")
    async with system.running():
        await clock.advance(4.0)
        system.telemetry.record_call("mpesa", Outcome.SUCCESS, 300.0)
        await clock.advance(1.0)
        failed_at = clock.now()
        for _ in range(20):
            system.telemetry.record_call("mpesa", Outcome.NOT_PROCESSED, 5.0)
        await clock.advance(5.0)  # the tick at 10 s sees 20 of 21 calls failed: unhealthy
        (incident,) = system.incidents.open_incidents()
        assert incident.first_evidence_at == failed_at
        assert incident.time_to_detect_s == 5.0
        assert mpesa.probe_ok  # probes pass: it was the real calls that showed it


async def test_more_than_half_unhealthy_opens_a_system_incident(
    settings: Settings, clock: ManualClock
) -> None:
    system, adapters = make_system(settings, clock, "mpesa", "paystack", "intasend")
    async with system.running():
        await clock.advance(10.0)
        adapters[0].probe_ok = adapters[1].probe_ok = False
        await clock.advance(20.0)
        scopes = sorted(i.scope.value for i in system.incidents.open_incidents())
        assert scopes == ["provider", "provider", "system"]
        system_incident = next(
            i for i in system.incidents.open_incidents() if i.scope is IncidentScope.SYSTEM
        )
        assert system_incident.severity == "critical" and "2 of 3" in system_incident.trigger
        assert (await system.get_status()).overall == "critical"
        adapters[1].probe_ok = True
        await clock.advance(20.0)
        assert [i.provider for i in system.incidents.open_incidents()] == ["mpesa"]


async def test_open_incident_survives_a_restart_and_resolves_after_it(
    settings: Settings, clock: ManualClock
) -> None:
    system, (mpesa, _) = make_system(settings, clock, "mpesa", "paystack")
    async with system.running():
        mpesa.probe_ok = False
        await clock.advance(20.0)
        (incident,) = system.incidents.open_incidents()

    restarted, (mpesa2, _) = make_system(settings, clock, "mpesa", "paystack")
    async with restarted.running():
        # The first probe after the restart passes (from `unknown`, one good probe is healthy):
        # the incident carried over from the last run is resolved, not forgotten or duplicated.
        (resolved,) = restarted.get_incidents()
        assert resolved.id == incident.id and resolved.status is IncidentStatus.RESOLVED
        assert resolved.time_to_recover_s == 0.0 and mpesa2.probe_calls == 1
        assert restarted.incidents.open_incidents() == []


async def test_critical_provider_incidents_are_critical(settings: Settings, clock: ManualClock) -> None:
    system = AutonomousSystem(settings, clock=clock)
    adapter = ScriptedAdapter("mpesa")
    system.register_provider(adapter, critical=True)
    system.register_provider(ScriptedAdapter("paystack"))
    async with system.running():
        adapter.probe_ok = False
        await clock.advance(20.0)
        (incident,) = system.incidents.open_incidents()
        assert incident.severity == "critical"
        assert (await system.get_status()).overall == "critical"
