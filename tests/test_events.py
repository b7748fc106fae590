from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import EventBus, EventType

pytestmark = pytest.mark.anyio


def emit(
    bus: EventBus, n: int, type: EventType = EventType.HEALING_EVENT, provider: str | None = None
) -> None:
    for i in range(n):
        bus.emit(type, component="test", message=f"event {i}", provider=provider, data={"i": i})


async def test_subscriber_receives_matching_events_in_order(clock: ManualClock) -> None:
    bus = EventBus(clock)
    received: list[int] = []
    with bus.subscribe(EventType.SCALED_UP) as subscription:
        emit(bus, 2, EventType.HEALING_EVENT)
        emit(bus, 3, EventType.SCALED_UP)
        for _ in range(3):
            received.append((await subscription.get()).data["i"])
    assert received == [0, 1, 2]
    assert bus.subscriber_count == 0


async def test_slow_subscriber_drops_oldest_and_counts_without_blocking(clock: ManualClock) -> None:
    bus = EventBus(clock, history_size=100)
    slow = bus.subscribe(buffer_size=10)
    emit(bus, 1000)  # publishing never awaits: a stuck subscriber cannot block it
    assert slow.pending == 10
    assert slow.dropped == 990
    assert bus.dropped_total == 990
    assert [e.data["i"] for e in slow.drain()] == list(range(990, 1000))
    assert bus.history_size == 100


async def test_async_iteration_ends_when_closed(clock: ManualClock) -> None:
    bus = EventBus(clock)
    subscription = bus.subscribe(provider="mpesa")
    seen: list[str | None] = []

    async def consume() -> None:
        async for event in subscription:
            seen.append(event.provider)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await anyio.wait_all_tasks_blocked()
        emit(bus, 1, provider="paystack")
        emit(bus, 2, provider="mpesa")
        await anyio.wait_all_tasks_blocked()
        subscription.close()
    assert seen == ["mpesa", "mpesa"]


async def test_history_filters_and_limits(clock: ManualClock) -> None:
    bus = EventBus(clock)
    emit(bus, 5, EventType.HEALING_EVENT, "mpesa")
    await clock.advance(10)
    emit(bus, 5, EventType.SCALED_DOWN)
    newest = bus.history(types=[EventType.HEALING_EVENT], limit=2)
    assert [e.data["i"] for e in newest] == [3, 4]
    assert all(e.provider == "mpesa" for e in newest)
    assert len(bus.history(since=clock.now())) == 5


async def test_listener_is_called_synchronously_and_removable(clock: ManualClock) -> None:
    bus = EventBus(clock)
    calls: list[int] = []
    remove = bus.add_listener(lambda e: calls.append(e.seq))
    emit(bus, 2)
    remove()
    emit(bus, 2)
    assert calls == [1, 2]


@given(st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=300))
def test_subscription_buffer_is_bounded_and_counts_are_exact(buffer_size: int, published: int) -> None:
    bus = EventBus(ManualClock(), history_size=100)
    subscription = bus.subscribe(buffer_size=buffer_size)
    emit(bus, published)
    assert subscription.pending == min(buffer_size, published)
    assert subscription.dropped == max(0, published - buffer_size)
    assert subscription.pending + subscription.dropped == published
