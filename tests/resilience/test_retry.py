"""Retry bookkeeping: the budget's window, jittered backoff, and the policy's validation."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.resilience import Backoff, Jitter, RetryBudget, RetryPolicy
from mcp_autonomy.resilience.retry import (
    DEFAULT_BASE_DELAY_S,
    DEFAULT_BUDGET_RATIO,
    DEFAULT_BUDGET_WINDOW_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_DELAY_S,
    DEFAULT_MIN_RETRIES_PER_S,
)


class SteppedClock(ManualClock):
    """A manual clock a synchronous property test moves by hand; nothing ever sleeps on it."""

    def step(self, seconds: float) -> None:
        self._elapsed_s += seconds


# -- budget ---------------------------------------------------------------------------------------


def test_the_floor_allows_retries_with_no_traffic(clock: ManualClock) -> None:
    budget = RetryBudget(clock, ratio=0.2, min_retries_per_s=0.5, window_s=10.0)
    for _ in range(5):  # 0.5/s over 10 s
        assert budget.can_retry()
        budget.record_retry()
    assert not budget.can_retry()


def test_retries_are_limited_to_the_ratio_of_requests(clock: ManualClock) -> None:
    budget = RetryBudget(clock, ratio=0.2, min_retries_per_s=0.0)
    assert not budget.can_retry()
    for _ in range(100):
        budget.record_request()
    for _ in range(20):
        assert budget.can_retry()
        budget.record_retry()
    assert not budget.can_retry()
    snapshot = budget.snapshot()
    assert (snapshot.requests_in_window, snapshot.retries_in_window) == (100, 20)
    assert snapshot.retries_allowed_in_window == pytest.approx(20.0)
    assert not snapshot.can_retry


@pytest.mark.anyio
async def test_the_budget_refills_as_the_window_slides(clock: ManualClock) -> None:
    budget = RetryBudget(clock, ratio=0.5, min_retries_per_s=0.0, window_s=10.0, bucket_s=1.0)
    for _ in range(10):
        budget.record_request()
    for _ in range(5):
        budget.record_retry()
    assert not budget.can_retry()
    await clock.advance(5.0)
    for _ in range(4):
        budget.record_request()
    assert budget.can_retry()  # 5 retries <= 0.5 x 14 requests, with one more to spare
    budget.record_retry()
    await clock.advance(5.0)  # the first 10 requests and 5 retries have left the window
    snapshot = budget.snapshot()
    assert (snapshot.requests_in_window, snapshot.retries_in_window) == (4, 1)
    await clock.advance(60.0)
    assert budget.snapshot().requests_in_window == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": -0.1}, r"ratio must be in \[0, 1\]"),
        ({"ratio": 1.5}, "ratio"),
        ({"min_retries_per_s": -1.0}, "min_retries_per_s must be a finite number of retries per second"),
        ({"window_s": 0.0}, "window_s must be a finite number of seconds > 0"),
        ({"window_s": 10.0, "bucket_s": 3.0}, "window_s must be a whole multiple of bucket_s"),
        ({"window_s": 100_000.0}, "window_s must be at most 3600"),
    ],
)
def test_budget_validates(clock: ManualClock, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryBudget(clock, **kwargs)


@given(
    bucket_s=st.sampled_from([0.5, 1.0, 2.0]),
    buckets=st.integers(1, 6),
    steps=st.lists(
        st.one_of(
            st.just("request"),
            st.just("retry"),
            st.sampled_from([0.25, 0.5, 1.0, 3.0, 20.0]),
        ),
        max_size=80,
    ),
)
def test_budget_window_equals_a_recount(bucket_s: float, buckets: int, steps: list[str | float]) -> None:
    clock = SteppedClock()
    budget = RetryBudget(
        clock, ratio=0.3, min_retries_per_s=0.1, window_s=bucket_s * buckets, bucket_s=bucket_s
    )
    log: list[tuple[int, str]] = []
    for step in steps:
        if isinstance(step, float):
            clock.step(step)
        else:
            getattr(budget, f"record_{step}")()
            log.append((int(clock.monotonic() // bucket_s), step))
        oldest = int(clock.monotonic() // bucket_s) - buckets + 1
        live = [kind for bucket, kind in log if bucket >= oldest]
        requests, retries = live.count("request"), live.count("retry")
        snapshot = budget.snapshot()
        assert (snapshot.requests_in_window, snapshot.retries_in_window) == (requests, retries)
        allowed = 0.3 * requests + 0.1 * bucket_s * buckets
        assert budget.can_retry() is (retries + 1 <= allowed)


# -- backoff --------------------------------------------------------------------------------------


def test_no_jitter_is_the_capped_exponential() -> None:
    backoff = Backoff(0.5, 5.0, random.Random(1), Jitter.NONE)
    assert [backoff.delay_s(attempt) for attempt in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_full_jitter_stays_under_the_ceiling_and_is_reproducible() -> None:
    first = Backoff(0.1, 2.0, random.Random(42))
    second = Backoff(0.1, 2.0, random.Random(42))
    delays = [first.delay_s(attempt) for attempt in range(1, 30)]
    assert delays == [second.delay_s(attempt) for attempt in range(1, 30)]
    for attempt, delay in enumerate(delays, start=1):
        assert 0.0 <= delay <= first.ceiling_s(attempt)
    assert len(set(delays)) > 20  # actually jittered


def test_decorrelated_jitter_grows_from_the_previous_delay() -> None:
    backoff = Backoff(0.2, 10.0, random.Random(7), Jitter.DECORRELATED)
    previous = None
    for attempt in range(1, 40):
        delay = backoff.delay_s(attempt, previous)
        low, high = 0.2, min(10.0, 3.0 * (previous if previous is not None else 0.2))
        assert low <= delay <= max(low, high)
        previous = delay
    # Without the previous delay, the previous retry's ceiling stands in.
    assert 0.2 <= backoff.delay_s(3) <= 3.0 * 0.4


def test_huge_attempts_do_not_overflow() -> None:
    backoff = Backoff(1.0, 60.0, random.Random(0), Jitter.NONE)
    assert backoff.delay_s(10_000) == 60.0


def test_zero_delays_are_allowed() -> None:
    backoff = Backoff(0.0, 0.0, random.Random(0), Jitter.DECORRELATED)
    assert backoff.delay_s(3) == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1.0, 1.0), "base_delay_s must be a finite number of seconds >= 0"),
        ((1.0, math.inf), "max_delay_s"),
        ((2.0, 1.0), r"max_delay_s must be >= base_delay_s \(2.0\)"),
    ],
)
def test_backoff_validates(args: tuple[float, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(*args, random.Random(0))


@pytest.mark.parametrize("attempt", [0, -1, True])
def test_attempt_numbers_start_at_one(attempt: int) -> None:
    with pytest.raises(ValueError, match="attempt must be an integer >= 1"):
        Backoff(0.1, 1.0, random.Random(0)).delay_s(attempt)


# -- policy ---------------------------------------------------------------------------------------


def test_policy_defaults_are_the_documented_constants(clock: ManualClock) -> None:
    policy = RetryPolicy()
    assert policy.max_attempts == DEFAULT_MAX_ATTEMPTS == 3
    assert policy.max_retries == 2
    assert policy.base_delay_s == DEFAULT_BASE_DELAY_S
    assert policy.max_delay_s == DEFAULT_MAX_DELAY_S
    assert policy.jitter is Jitter.FULL
    assert policy.budget_ratio == DEFAULT_BUDGET_RATIO == 0.2
    assert policy.min_retries_per_s == DEFAULT_MIN_RETRIES_PER_S
    assert policy.budget_window_s == DEFAULT_BUDGET_WINDOW_S
    budget = policy.budget(clock)
    assert budget.snapshot().retries_allowed_in_window == pytest.approx(10.0 * 10.0)
    backoff = policy.backoff(random.Random(3))
    assert 0.0 <= backoff.delay_s(1) <= DEFAULT_BASE_DELAY_S


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_attempts": 0}, r"max_attempts must be an integer in \[1, 10\]"),
        ({"max_attempts": 11}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
        ({"base_delay_s": -0.1}, "base_delay_s"),
        ({"base_delay_s": 3.0, "max_delay_s": 1.0}, "max_delay_s must be >= base_delay_s"),
        ({"jitter": "sometimes"}, "jitter must be one of"),
        ({"budget_ratio": 2.0}, r"budget_ratio must be in \[0, 1\]"),
        ({"min_retries_per_s": math.nan}, "min_retries_per_s"),
        ({"budget_window_s": 2.5}, "budget_window_s must be a whole number of seconds"),
    ],
)
def test_policy_validates(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**overrides)
