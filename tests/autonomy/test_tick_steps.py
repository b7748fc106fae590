"""Loop ticks hand the event loop back between providers (issue 18): a payment arriving during a
tick waits for one provider's work at most, not every provider's."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.store import Fence, Store
from mcp_autonomy.telemetry import Outcome
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio

PROVIDERS = 12


def yields_of(coroutine: Coroutine[Any, Any, Any], on_yield: Any = None) -> int:
    """Drive a coroutine to its end by hand, counting how often it gives the event loop back
    (calling `on_yield` each time, when given)."""
    yields = 0
    while True:
        try:
            coroutine.send(None)
        except StopIteration:
            return yields
        yields += 1
        if on_yield is not None:
            on_yield()


def busy_system(settings: Settings, clock: ManualClock) -> AutonomousSystem:
    system = AutonomousSystem(settings.model_copy(update={"auto_schedule_maintenance": False}), clock=clock)
    for i in range(PROVIDERS):
        system.register_provider(ScriptedAdapter(f"p{i:02d}"))
    record_traffic(system)
    return system


def record_traffic(system: AutonomousSystem) -> None:
    for i in range(PROVIDERS):  # evidence for every provider, so no tick skips one
        for _ in range(30):
            system.telemetry.record_call(f"p{i:02d}", Outcome.SUCCESS, 120.0)


@pytest.mark.parametrize("loop", ["self_healer", "predictive_maintenance", "auto_optimizer"])
async def test_a_tick_yields_between_providers(settings: Settings, clock: ManualClock, loop: str) -> None:
    system = busy_system(settings, clock)
    system.store.open()
    try:
        assert yields_of(system.components[loop].tick()) >= PROVIDERS
    finally:
        system.store.close()


class StepWriteLog(Store):
    """The SQLite store, noting how many bytes of component state each step of a tick writes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.bytes_by_step = [0]

    def next_step(self) -> None:
        self.bytes_by_step.append(0)

    def set_state(
        self, component: str, key: str, value: Any, *, timestamp: float, fence: Fence | None = None
    ) -> None:
        self.bytes_by_step[-1] += len(json.dumps(value))
        super().set_state(component, key, value, timestamp=timestamp, fence=fence)


async def test_the_predictor_saves_its_state_one_provider_per_step(
    settings: Settings, clock: ManualClock, tmp_path: Path
) -> None:
    system = busy_system(settings, clock)
    predictor = system.predictive_maintenance
    store = predictor.store = StepWriteLog(tmp_path / "steps.sqlite3")
    store.open()
    try:
        for _ in range(20):  # a history and a traffic profile for every provider
            yields_of(predictor.tick(), store.next_step)
            await clock.advance(predictor.interval_s)
            record_traffic(system)
        store.bytes_by_step = [0]
        yields_of(predictor.tick(), store.next_step)
    finally:
        store.close()
    written = sum(store.bytes_by_step)
    assert written > PROVIDERS * 1000  # every provider's tail and profile were saved
    # One provider's state per step (1/12 of the whole): saving every provider in one step, as
    # one document or one write after another, would hold the event loop for all of them.
    assert max(store.bytes_by_step) <= 1.5 * written / PROVIDERS
