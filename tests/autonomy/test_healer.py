"""The healer's timing rules: exponential backoff between automatic heals, flap-damped fail-back."""

from __future__ import annotations

import itertools

import pytest

from mcp_autonomy.autonomy.healer import (
    FAIL_BACK_HOLD_S,
    FLAP_WINDOW_S,
    HEAL_COOLDOWN_S,
    MAX_FAIL_BACK_HOLD_S,
    MAX_HEAL_BACKOFF_S,
    SelfHealer,
)
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.events import EventType
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio


def test_heal_backoff_doubles_and_is_capped() -> None:
    waits = [SelfHealer.heal_backoff_s(n) for n in range(8)]
    assert waits[:4] == [0.0, HEAL_COOLDOWN_S, 2 * HEAL_COOLDOWN_S, 4 * HEAL_COOLDOWN_S]
    assert max(waits) == MAX_HEAL_BACKOFF_S and waits == sorted(waits)


async def test_automatic_heals_back_off_while_the_provider_stays_down(
    settings: Settings, clock: ManualClock
) -> None:
    system = AutonomousSystem(settings.model_copy(update={"max_healing_attempts": 10}), clock=clock)
    mpesa = ScriptedAdapter("mpesa")
    system.register_provider(mpesa)
    system.register_provider(ScriptedAdapter("paystack"))
    async with system.running():
        mpesa.probe_ok = False
        await clock.advance(20.0 + 30 + 60 + 120 + 5)
        heals = [
            e.timestamp - clock.now()
            for e in system.events.history(types=[EventType.HEALING_EVENT], provider="mpesa")
            if e.data.get("trigger") == "automatic"
        ]
        gaps = [round(b - a) for a, b in itertools.pairwise(heals)]
        assert gaps == [30, 60, 120]


async def test_a_flapping_provider_waits_longer_for_its_traffic_each_time(
    settings: Settings, clock: ManualClock
) -> None:
    system = AutonomousSystem(settings, clock=clock)
    mpesa = ScriptedAdapter("mpesa")
    system.register_provider(mpesa, backups=None)
    system.register_provider(ScriptedAdapter("paystack"))
    system.set_backup_providers("mpesa", ["paystack"])
    healer = system.self_healer

    async def fail_then_recover() -> tuple[float, float]:
        """Take mpesa down until failed over, then up until failed back; returns (down, up) seconds."""
        mpesa.probe_ok = False
        started = clock.monotonic()
        while "mpesa" not in system.router.failed_over:
            await clock.advance(10.0)
        down = clock.monotonic() - started
        mpesa.probe_ok = True
        started = clock.monotonic()
        while "mpesa" in system.router.failed_over:
            await clock.advance(10.0)
        return down, clock.monotonic() - started

    async with system.running():
        await clock.advance(10.0)
        _, first_up = await fail_then_recover()
        assert healer.fail_back_hold_s("mpesa") == FAIL_BACK_HOLD_S
        _, second_up = await fail_then_recover()
        assert healer.fail_back_hold_s("mpesa") == 2 * FAIL_BACK_HOLD_S
        _, third_up = await fail_then_recover()
        assert healer.fail_back_hold_s("mpesa") == 4 * FAIL_BACK_HOLD_S
        # Healthy after two good probes (10-20 s), then the hold: each wait is longer than the last.
        assert first_up < second_up < third_up
        assert third_up >= 4 * FAIL_BACK_HOLD_S
        failover = system.events.history(types=[EventType.FAILOVER_TRIGGERED])[-1]
        assert "failed again" in failover.data["reason"]

        await clock.advance(FLAP_WINDOW_S)  # stable for a whole flap window: forgiven
        assert healer.fail_back_hold_s("mpesa") == FAIL_BACK_HOLD_S
        assert healer.details()["fail_overs"] == 3 and healer.details()["fail_backs"] == 3
    assert MAX_FAIL_BACK_HOLD_S >= 4 * FAIL_BACK_HOLD_S
