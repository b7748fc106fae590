"""A replica figure the scale backend cannot observe is recorded as not measured, never assumed."""

from __future__ import annotations

import pytest

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.events import EventType
from tests.autonomy.test_scaler_live import TICK_S, make_system

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("policy", ["predictive", "reactive"])
async def test_local_backend_readiness_is_not_claimed(
    settings: Settings, clock: ManualClock, policy: str
) -> None:
    system, load = make_system(settings, clock, scaling_policy=policy)
    async with system.running():
        assert (await system.auto_scaler.backend.read()).ready is None  # local: it cannot see pods
        load[0] = 150.0
        await clock.advance(TICK_S)
        held = system.auto_scaler.details()["last_decision"]
        assert held["ready_replicas"] is None, held
        assert "2/2 ready" not in held["reason"] and "2 replicas (ready: not measured)" in held["reason"]
        load[0] = 950.0
        await clock.advance(TICK_S)
    decision = system.events.history(types=[EventType.SCALING_DECISION])[-1]
    assert decision.data["ready_replicas"] is None
    assert "ready: not measured" in decision.data["reason"] and "/2 ready" not in decision.message
