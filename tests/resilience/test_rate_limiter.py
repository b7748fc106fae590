"""The token bucket: lazy refill, waiting through the clock, run-time retuning."""

from __future__ import annotations

import math

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.resilience import TokenBucket


class SteppedClock(ManualClock):
    """A manual clock a synchronous property test moves by hand; nothing ever sleeps on it."""

    def step(self, seconds: float) -> None:
        self._elapsed_s += seconds


@pytest.mark.parametrize(
    ("rate_per_s", "burst", "message"),
    [
        (0.0, 1.0, "rate_per_s must be a finite number > 0"),
        (-1.0, 1.0, "rate_per_s"),
        (math.inf, 1.0, "rate_per_s"),
        (math.nan, 1.0, "rate_per_s"),
        (1.0, 0.0, "burst must be a finite number of tokens > 0"),
        (1.0, math.inf, "burst"),
    ],
)
def test_rejects_invalid_settings(rate_per_s: float, burst: float, message: str, clock: ManualClock) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBucket(rate_per_s, burst, clock)


@pytest.mark.parametrize("tokens", [0.0, -1.0, 6.0, math.nan])
def test_rejects_requests_that_could_never_be_granted(tokens: float, clock: ManualClock) -> None:
    bucket = TokenBucket(1.0, 5.0, clock)
    with pytest.raises(ValueError, match=r"tokens must be in \(0, burst=5\]"):
        bucket.try_acquire(tokens)


def test_starts_full_and_serves_a_burst_then_rejects(clock: ManualClock) -> None:
    bucket = TokenBucket(10.0, 5, clock)
    assert [bucket.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    snapshot = bucket.snapshot()
    assert snapshot.acquired_total == 5
    assert snapshot.rejected_total == 1
    assert snapshot.tokens_available == 0.0


@pytest.mark.anyio
async def test_refills_lazily_at_the_rate_up_to_the_burst(clock: ManualClock) -> None:
    bucket = TokenBucket(4.0, 2.0, clock)
    assert bucket.try_acquire(2.0)
    await clock.advance(0.25)
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    await clock.advance(3600.0)  # a long idle earns no more than the burst
    assert bucket.snapshot().tokens_available == 2.0


def test_fractional_refill_does_not_lose_a_token_to_rounding() -> None:
    clock = SteppedClock()
    bucket = TokenBucket(10.0, 1.0, clock)
    assert bucket.try_acquire()
    for _ in range(10):
        clock.step(0.01)  # 0.1 s in total, in steps that do not add up exactly in binary
        bucket.snapshot()
    assert bucket.try_acquire()


@pytest.mark.anyio
async def test_acquire_waits_through_the_clock(clock: ManualClock) -> None:
    bucket = TokenBucket(2.0, 1.0, clock)
    assert bucket.try_acquire()
    done_at: list[float] = []

    async def waiter() -> None:
        assert await bucket.acquire(max_wait_s=1.0)
        done_at.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert bucket.snapshot().waiting == 1
        await clock.advance(1.0)
    assert done_at == [0.5]


@pytest.mark.anyio
async def test_acquire_returns_false_at_once_when_the_wait_is_too_long(clock: ManualClock) -> None:
    bucket = TokenBucket(1.0, 1.0, clock)
    assert bucket.try_acquire()
    assert not await bucket.acquire(max_wait_s=0.5)
    assert clock.monotonic() == 0.0
    assert bucket.snapshot().rejected_total == 1


@pytest.mark.anyio
async def test_acquire_without_waiting_when_tokens_are_there(clock: ManualClock) -> None:
    bucket = TokenBucket(1.0, 3.0, clock)
    assert await bucket.acquire(3.0, max_wait_s=0.0)


@pytest.mark.anyio
@pytest.mark.parametrize("max_wait_s", [-1.0, math.inf, math.nan])
async def test_acquire_rejects_a_bad_max_wait(clock: ManualClock, max_wait_s: float) -> None:
    with pytest.raises(ValueError, match="max_wait_s"):
        await TokenBucket(1.0, 1.0, clock).acquire(max_wait_s=max_wait_s)


@pytest.mark.anyio
async def test_waiters_are_served_in_arrival_order(clock: ManualClock) -> None:
    bucket = TokenBucket(1.0, 1.0, clock)
    assert bucket.try_acquire()
    served: list[tuple[str, float]] = []

    async def waiter(name: str) -> None:
        assert await bucket.acquire(max_wait_s=10.0)
        served.append((name, clock.monotonic()))

    async with anyio.create_task_group() as tg:
        for name in ("first", "second", "third"):
            tg.start_soon(waiter, name)
            await anyio.wait_all_tasks_blocked()
        # The three reservations leave the bucket in debt; a newcomer cannot jump the queue.
        assert bucket.snapshot().tokens == -3.0
        assert not bucket.try_acquire()
        await clock.advance(5.0)
    assert served == [("first", 1.0), ("second", 2.0), ("third", 3.0)]


@pytest.mark.anyio
async def test_a_cancelled_waiter_hands_its_tokens_back(clock: ManualClock) -> None:
    bucket = TokenBucket(1.0, 2.0, clock)
    assert bucket.try_acquire(2.0)

    async with anyio.create_task_group() as tg:

        async def waiter() -> None:
            await bucket.acquire(2.0, max_wait_s=10.0)

        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert bucket.snapshot().tokens == -2.0
        await clock.advance(0.5)
        tg.cancel_scope.cancel()
    snapshot = bucket.snapshot()
    assert snapshot.waiting == 0
    assert snapshot.tokens == pytest.approx(0.5)  # what the elapsed time earned, nothing owed
    assert snapshot.acquired_total == 1


@pytest.mark.anyio
async def test_set_rate_credits_elapsed_time_at_the_old_rate(clock: ManualClock) -> None:
    bucket = TokenBucket(1.0, 10.0, clock)
    assert bucket.try_acquire(10.0)
    await clock.advance(2.0)
    bucket.set_rate(100.0)
    assert bucket.snapshot().tokens == pytest.approx(2.0)
    await clock.advance(0.05)
    assert bucket.snapshot().tokens == pytest.approx(7.0)
    assert bucket.rate_per_s == 100.0


def test_set_rate_with_a_smaller_burst_trims_the_balance(clock: ManualClock) -> None:
    bucket = TokenBucket(1.0, 10.0, clock)
    bucket.set_rate(2.0, burst=3)
    snapshot = bucket.snapshot()
    assert (snapshot.rate_per_s, snapshot.burst, snapshot.tokens) == (2.0, 3.0, 3.0)
    assert bucket.burst == 3.0


@pytest.mark.parametrize(("rate_per_s", "burst"), [(0.0, None), (1.0, 0.0), (math.nan, None)])
def test_set_rate_validates(clock: ManualClock, rate_per_s: float, burst: float | None) -> None:
    bucket = TokenBucket(1.0, 1.0, clock)
    with pytest.raises(ValueError, match=r"rate_per_s|burst"):
        bucket.set_rate(rate_per_s, burst)
    assert (bucket.rate_per_s, bucket.burst) == (1.0, 1.0)


@given(
    rate_per_s=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    burst=st.integers(1, 5),
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 0.1, 0.25, 1.0]), st.sampled_from([0.5, 1.0, 2.0])),
        max_size=60,
    ),
)
def test_never_grants_more_than_burst_plus_rate_times_elapsed(
    rate_per_s: float, burst: int, steps: list[tuple[float, float]]
) -> None:
    clock = SteppedClock()
    bucket = TokenBucket(rate_per_s, burst, clock)
    granted = 0.0
    for advance_s, tokens in steps:
        clock.step(advance_s)
        if tokens <= burst and bucket.try_acquire(tokens):
            granted += tokens
        assert granted <= burst + rate_per_s * clock.monotonic() + 1e-6
        assert 0.0 <= bucket.snapshot().tokens <= burst + 1e-9
