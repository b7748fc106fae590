from __future__ import annotations

import anyio
import pytest

from mcp_autonomy.clock import Clock, ManualClock, SystemClock, iso

pytestmark = pytest.mark.anyio


async def test_manual_clock_wakes_sleepers_in_deadline_order(clock: ManualClock) -> None:
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(sleeper, "late", 10.0)
        tg.start_soon(sleeper, "early", 3.0)
        tg.start_soon(sleeper, "middle", 5.0)
        await anyio.wait_all_tasks_blocked()
        assert clock.pending_sleepers == 3
        await clock.advance(4.0)
        assert woke == [("early", 3.0)]
        await clock.advance(6.0)
    assert woke == [("early", 3.0), ("middle", 5.0), ("late", 10.0)]
    assert clock.monotonic() == 10.0


async def test_periodic_loop_ticks_once_per_interval(clock: ManualClock) -> None:
    ticks: list[float] = []

    async def loop() -> None:
        while True:
            ticks.append(clock.monotonic())
            await clock.sleep(2.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop)
        await clock.advance(9.0)
        tg.cancel_scope.cancel()
    assert ticks == [0.0, 2.0, 4.0, 6.0, 8.0]


async def test_cancelled_sleeper_is_skipped(clock: ManualClock) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.sleep, 100.0)
        await anyio.wait_all_tasks_blocked()
        assert clock.next_deadline == 100.0
        tg.cancel_scope.cancel()
    assert clock.next_deadline is None
    await clock.advance(200.0)
    assert clock.now() == ManualClock.DEFAULT_START_EPOCH_S + 200.0


async def test_advance_rejects_negative(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="advance seconds"):
        await clock.advance(-1)


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(SystemClock(), Clock)
    assert isinstance(ManualClock(), Clock)
    assert iso(ManualClock.DEFAULT_START_EPOCH_S) == "2026-01-01T00:00:00.000Z"


async def test_fail_after_times_out_on_the_manual_clock(clock: ManualClock) -> None:
    outcome: list[str] = []

    async def slow() -> None:
        try:
            with clock.fail_after(5.0):
                await clock.sleep(10.0)
            outcome.append("finished")
        except TimeoutError:
            outcome.append(f"timed out at {clock.monotonic()}")

    async def quick() -> None:
        with clock.fail_after(5.0):
            await clock.sleep(1.0)
        outcome.append("quick finished")

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow)
        tg.start_soon(quick)
        await clock.advance(20.0)
    assert outcome == ["quick finished", "timed out at 5.0"]
    assert clock.next_deadline is None
