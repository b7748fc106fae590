"""Operator actions are audited once, by the engine: one entry per action, ok or refused, the same
shape whether MCP, REST or a library called it (issue 16)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from mcp import Client
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import Implementation
from starlette.applications import Starlette

from mcp_autonomy.autonomy.component import Mode
from mcp_autonomy.autonomy.predictor import PredictionStatus
from mcp_autonomy.autonomy.scaler import ScaleBoundsError
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.events import EventType
from mcp_autonomy.providers.base import TransactionStatus
from mcp_autonomy.providers.registry import UnknownProviderError
from mcp_autonomy.server.mcp import McpApp
from mcp_autonomy.server.rest import rest_mount
from mcp_autonomy.store import AuditRecord
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio

MCP_CLIENT = Implementation(name="audit-test", version="1.0")
REST_AGENT = "ops-script/1.0"
NO_REBINDING_CHECK = TransportSecuritySettings(enable_dns_rebinding_protection=False)


def make_system(settings: Settings, clock: ManualClock) -> AutonomousSystem:
    system = AutonomousSystem(settings, clock=clock)
    for name in ("mpesa", "intasend"):
        system.register_provider(ScriptedAdapter(name))
    return system


def entries_after(system: AutonomousSystem, before: int) -> list[AuditRecord]:
    """The audit entries written since the log held `before` of them, oldest first."""
    added = system.store.count_audit() - before
    return list(reversed(system.audit_log(limit=added))) if added > 0 else []


def shape(record: AuditRecord) -> dict[str, Any]:
    """An entry without what differs between two calls of one action (id, time, caller)."""
    return record.model_dump(exclude={"id", "timestamp", "client"})


@asynccontextmanager
async def surfaces(
    settings: Settings, clock: ManualClock
) -> AsyncIterator[tuple[AutonomousSystem, Client, httpx.AsyncClient]]:
    """A running engine with its MCP server (in process) and its REST routes (over ASGI)."""
    system = make_system(settings, clock)
    async with system.running():
        app = McpApp(system)
        rest = Starlette(routes=[rest_mount(system, NO_REBINDING_CHECK)])
        async with (
            Client(app.mcp, client_info=MCP_CLIENT, read_timeout_seconds=30) as mcp,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=rest),
                base_url="http://127.0.0.1",
                headers={"User-Agent": REST_AGENT},
            ) as http,
        ):
            yield system, mcp, http


async def test_heal_through_mcp_and_through_rest_each_write_one_entry_of_the_same_shape(
    settings: Settings, clock: ManualClock
) -> None:
    async with surfaces(settings, clock) as (system, mcp, http):
        before = system.store.count_audit()
        result = await mcp.call_tool("heal_provider", {"provider": "mpesa", "reason": "audit test heal"})
        assert not result.is_error, result.content
        (by_mcp,) = entries_after(system, before)

        before = system.store.count_audit()
        response = await http.post("/autonomous/heal/mpesa", json={"reason": "audit test heal"})
        assert response.status_code == 200, response.text
        (by_rest,) = entries_after(system, before)

    assert (
        shape(by_mcp)
        == shape(by_rest)
        == {
            "tool": "heal_provider",
            "arguments": {"provider": "mpesa", "reason": "audit test heal"},
            "reason": "audit test heal",
            "ok": True,
            "result": {"succeeded": True, "dry_run": False},
        }
    )
    assert by_mcp.client == "audit-test/1.0"
    assert by_rest.client == f"rest:127.0.0.1 {REST_AGENT}"


async def test_a_refused_action_writes_one_refused_entry_on_either_surface(
    settings: Settings, clock: ManualClock
) -> None:
    async with surfaces(settings, clock) as (system, mcp, http):
        before = system.store.count_audit()
        result = await mcp.call_tool("heal_provider", {"provider": "no-such", "reason": "bad provider"})
        assert result.is_error
        (heal,) = entries_after(system, before)

        before = system.store.count_audit()
        response = await http.post("/autonomous/scale", json={"replicas": 50, "reason": "out of bounds"})
        assert response.status_code == 422, response.text
        (scale,) = entries_after(system, before)

        before = system.store.count_audit()
        result = await mcp.call_tool("scale_to", {"replicas": 50, "reason": "out of bounds"})
        assert result.is_error
        (scale_by_mcp,) = entries_after(system, before)

    assert (heal.tool, heal.ok, heal.client) == ("heal_provider", False, "audit-test/1.0")
    assert heal.arguments == {"provider": "no-such", "reason": "bad provider"}
    assert "unknown provider 'no-such'" in heal.result["error"]
    assert (scale.tool, scale.ok, scale.client) == ("scale_to", False, f"rest:127.0.0.1 {REST_AGENT}")
    assert scale.arguments == {"replicas": 50, "reason": "out of bounds", "force": False}
    assert "MIN_INSTANCES" in scale.result["error"]
    assert shape(scale_by_mcp) == shape(scale)


async def test_schema_refusals_never_reach_the_engine_and_are_not_audited(
    settings: Settings, clock: ManualClock
) -> None:
    async with surfaces(settings, clock) as (system, mcp, http):
        before = system.store.count_audit()
        assert (await mcp.call_tool("scale_to", {"replicas": "5", "reason": "a string"})).is_error
        response = await http.post("/autonomous/scale", json={"replicas": "5", "reason": "a string"})
        assert response.status_code == 422
        assert entries_after(system, before) == []


async def test_set_autonomy_reports_the_id_of_its_one_entry(settings: Settings, clock: ManualClock) -> None:
    async with surfaces(settings, clock) as (system, mcp, _):
        before = system.store.count_audit()
        result = await mcp.call_tool(
            "set_autonomy", {"component": "auto_scaler", "mode": "dry_run", "reason": "audit test"}
        )
        assert result.structured_content is not None
        (entry,) = entries_after(system, before)
        assert result.structured_content["audit_id"] == entry.id
        assert entry.arguments == {"component": "auto_scaler", "mode": "dry_run", "reason": "audit test"}
        assert entry.result == {"previous_mode": "on", "mode": "dry_run"}
        assert entry.client == "audit-test/1.0"


async def test_an_engine_call_without_any_surface_is_audited(settings: Settings, clock: ManualClock) -> None:
    system = make_system(settings, clock)
    async with system.running():
        before = system.store.count_audit()
        result = await system.heal_provider("mpesa", reason="library heal", caller="library")
        (entry,) = entries_after(system, before)
        manual = system.events.history(types=[EventType.MANUAL_ACTION])
    assert result.succeeded is True
    assert (entry.tool, entry.client, entry.ok, entry.reason) == (
        "heal_provider",
        "library",
        True,
        "library heal",
    )
    assert entry.result == {"succeeded": True, "dry_run": False}
    assert manual[-1].data["audit_id"] == entry.id and manual[-1].provider == "mpesa"


async def _set_autonomy(system: AutonomousSystem) -> Any:
    return system.set_autonomy("self_healer", Mode.DRY_RUN, reason="audit test", caller="library")


async def _heal(system: AutonomousSystem) -> Any:
    return await system.heal_provider("mpesa", reason="audit test", caller="library")


async def _scale(system: AutonomousSystem) -> Any:
    return await system.scale_to(3, reason="audit test", caller="library")


async def _backups(system: AutonomousSystem) -> Any:
    return system.set_backup_providers("mpesa", ["intasend"], reason="audit test", caller="library")


async def _provider_config(system: AutonomousSystem) -> Any:
    # Setting and releasing in one call is one action, one entry.
    return system.set_provider_config(
        "mpesa", {"timeout_s": 20.0}, pin=True, release=["*"], reason="audit test", caller="library"
    )


async def _release(system: AutonomousSystem) -> Any:
    return system.release_provider_config("mpesa", None, reason="audit test", caller="library")


async def _revert(system: AutonomousSystem) -> Any:
    return system.revert_optimization("opt-none", reason="audit test", caller="library")


async def _mark(system: AutonomousSystem) -> Any:
    return system.mark_prediction(
        "pred-none", PredictionStatus.CONFIRMED, reason="audit test", caller="library"
    )


async def _cancel(system: AutonomousSystem) -> Any:
    return system.cancel_maintenance_window("mw-none", reason="audit test", caller="library")


async def _resolve(system: AutonomousSystem) -> Any:
    return await system.resolve_payment(
        "pay-none", TransactionStatus.FAILED, reason="audit test", caller="library"
    )


async def _otp(system: AutonomousSystem) -> Any:
    return await system.submit_transfer_otp("pay-none", "123456", reason="audit test", caller="library")


Action = Callable[[AutonomousSystem], Awaitable[Any]]
ACTIONS: list[tuple[str, Action, bool]] = [
    ("set_autonomy", _set_autonomy, True),
    ("heal_provider", _heal, True),
    ("scale_to", _scale, True),
    ("set_backup_providers", _backups, True),
    ("set_provider_config", _provider_config, True),
    ("release_provider_config", _release, True),
    ("revert_optimization", _revert, False),
    ("mark_prediction", _mark, False),
    ("cancel_maintenance_window", _cancel, False),
    ("resolve_payment", _resolve, False),
    ("submit_transfer_otp", _otp, False),
]


@pytest.mark.parametrize(("tool", "action", "ok"), ACTIONS, ids=[a[0] for a in ACTIONS])
async def test_every_operator_action_writes_exactly_one_entry(
    settings: Settings, clock: ManualClock, tool: str, action: Action, ok: bool
) -> None:
    system = make_system(settings, clock)
    async with system.running():
        before = system.store.count_audit()
        if ok:
            await action(system)
        else:
            with pytest.raises(KeyError):  # an unknown id: refused, and audited as refused
                await action(system)
        (entry,) = entries_after(system, before)
    assert (entry.tool, entry.ok, entry.client, entry.reason) == (tool, ok, "library", "audit test")
    if not ok:
        assert set(entry.result) == {"error"} and "not found: " in entry.result["error"]


async def test_the_otp_is_never_written_to_the_audit_log(settings: Settings, clock: ManualClock) -> None:
    system = make_system(settings, clock)
    async with system.running():
        before = system.store.count_audit()
        with pytest.raises(KeyError):
            await _otp(system)
        (entry,) = entries_after(system, before)
    assert entry.arguments == {"idempotency_key": "pay-none", "otp": "(withheld)", "reason": "audit test"}
    assert "123456" not in entry.model_dump_json()


async def test_backups_from_configuration_are_not_an_operator_action(
    settings: Settings, clock: ManualClock
) -> None:
    system = make_system(settings, clock)
    system.set_backup_providers("mpesa", ["intasend"])  # start-up wiring, before the store is open
    async with system.running():
        assert system.store.count_audit() == 0
        with pytest.raises(UnknownProviderError):
            system.set_backup_providers("orange", [], reason="audit test", caller="library")
        (entry,) = entries_after(system, 0)
    assert (entry.tool, entry.ok) == ("set_backup_providers", False)
    assert entry.arguments == {"primary": "orange", "backups": [], "reason": "audit test"}


async def test_a_refusal_propagates_unchanged(settings: Settings, clock: ManualClock) -> None:
    system = make_system(settings, clock)
    async with system.running():
        with pytest.raises(ScaleBoundsError):
            await system.scale_to(10_000, reason="audit test", caller="library")
        (entry,) = entries_after(system, 0)
    assert entry.ok is False and entry.arguments["replicas"] == 10_000


async def test_a_cancelled_action_writes_no_entry(settings: Settings, clock: ManualClock) -> None:
    system = make_system(settings, clock)
    async with system.running():

        async def report(done: int, total: int, message: str) -> None:
            await anyio.lowlevel.checkpoint()  # where the cancellation lands, mid-action

        with anyio.CancelScope() as scope:
            scope.cancel()
            await system.heal_provider("mpesa", reason="audit test", caller="library", progress=report)
        assert scope.cancelled_caught
        assert system.store.count_audit() == 0
