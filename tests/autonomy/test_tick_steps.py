"""Loop ticks hand the event loop back between providers (issue 18): a payment arriving during a
tick waits for one provider's work at most, not every provider's."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.telemetry import Outcome
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio

PROVIDERS = 12


def yields_of(coroutine: Coroutine[Any, Any, Any]) -> int:
    """Drive a coroutine to its end by hand, counting how often it gives the event loop back."""
    yields = 0
    while True:
        try:
            coroutine.send(None)
        except StopIteration:
            return yields
        yields += 1


@pytest.mark.parametrize("loop", ["self_healer", "predictive_maintenance", "auto_optimizer"])
async def test_a_tick_yields_between_providers(settings: Settings, clock: ManualClock, loop: str) -> None:
    system = AutonomousSystem(settings.model_copy(update={"auto_schedule_maintenance": False}), clock=clock)
    for i in range(PROVIDERS):
        system.register_provider(ScriptedAdapter(f"p{i:02d}"))
    for i in range(PROVIDERS):  # evidence for every provider, so no tick skips one
        for _ in range(30):
            system.telemetry.record_call(f"p{i:02d}", Outcome.SUCCESS, 120.0)
    system.store.open()
    try:
        assert yields_of(system.components[loop].tick()) >= PROVIDERS
    finally:
        system.store.close()
