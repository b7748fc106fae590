"""Extra time per call that the resilience primitives add to a bare awaited no-op coroutine.

Run: `python benchmarks/breaker_overhead.py`. Each figure is the median, over several repeats, of
(guarded loop time - bare loop time) / iterations, measured back to back in the same process with
`time.perf_counter_ns`, so interpreter and machine speed cancel out. Guards use the real
`SystemClock`, so the cost of reading `time.monotonic` is included.

The target (DESIGN.md section 3): breaker + token bucket together add at most ~3 us per call.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

# Plain `python benchmarks/breaker_overhead.py` puts benchmarks/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_autonomy.clock import SystemClock
from mcp_autonomy.resilience import CircuitBreaker, RetryBudget, TokenBucket

ITERATIONS = 200_000
REPEATS = 9
CALL_DURATION_S = 0.001  # the duration handed to permit.record; the caller measures it anyway
UNLIMITED_RATE_PER_S = 1e12  # a bucket that always grants, so the measured path is the common one

LoopBody = Callable[[int], Awaitable[int]]


async def noop() -> None:
    return None


async def bare(iterations: int) -> int:
    started = time.perf_counter_ns()
    for _ in range(iterations):
        await noop()
    return time.perf_counter_ns() - started


def guarded_by_breaker(breaker: CircuitBreaker) -> LoopBody:
    async def body(iterations: int) -> int:
        started = time.perf_counter_ns()
        for _ in range(iterations):
            permit = breaker.try_acquire()
            await noop()
            if permit is not None:
                permit.record(True, CALL_DURATION_S)
        return time.perf_counter_ns() - started

    return body


def guarded_by_bucket(bucket: TokenBucket) -> LoopBody:
    async def body(iterations: int) -> int:
        started = time.perf_counter_ns()
        for _ in range(iterations):
            if bucket.try_acquire():
                await noop()
        return time.perf_counter_ns() - started

    return body


def guarded_by_budget(budget: RetryBudget) -> LoopBody:
    async def body(iterations: int) -> int:
        started = time.perf_counter_ns()
        for _ in range(iterations):
            budget.record_request()
            await noop()
            # A real caller asks only after a failure; asking every time bounds the cost from above.
            budget.can_retry()
        return time.perf_counter_ns() - started

    return body


def guarded_by_breaker_and_bucket(breaker: CircuitBreaker, bucket: TokenBucket) -> LoopBody:
    async def body(iterations: int) -> int:
        started = time.perf_counter_ns()
        for _ in range(iterations):
            if not bucket.try_acquire():
                continue
            permit = breaker.try_acquire()
            await noop()
            if permit is not None:
                permit.record(True, CALL_DURATION_S)
        return time.perf_counter_ns() - started

    return body


async def measure(bodies: dict[str, LoopBody]) -> tuple[float, dict[str, float]]:
    """Median bare ns per call, and per guard the median of paired (guarded - bare) ns per call."""
    bare_ns: list[float] = []
    extra_ns: dict[str, list[float]] = {name: [] for name in bodies}
    for _ in range(REPEATS):
        # Interleaved, so drift in machine speed hits the baseline and the guards alike.
        for name, body in bodies.items():
            baseline = await bare(ITERATIONS) / ITERATIONS
            bare_ns.append(baseline)
            extra_ns[name].append(await body(ITERATIONS) / ITERATIONS - baseline)
    return statistics.median(bare_ns), {name: statistics.median(v) for name, v in extra_ns.items()}


def main() -> None:
    clock = SystemClock()
    bodies: dict[str, LoopBody] = {
        "breaker_overhead_per_call": guarded_by_breaker(CircuitBreaker("bench", clock)),
        "token_bucket_overhead_per_call": guarded_by_bucket(
            TokenBucket(UNLIMITED_RATE_PER_S, UNLIMITED_RATE_PER_S, clock)
        ),
        "retry_budget_overhead_per_call": guarded_by_budget(RetryBudget(clock)),
        "breaker_plus_token_bucket_overhead_per_call": guarded_by_breaker_and_bucket(
            CircuitBreaker("bench-both", clock),
            TokenBucket(UNLIMITED_RATE_PER_S, UNLIMITED_RATE_PER_S, clock),
        ),
    }
    gc.collect()
    baseline_ns, extra_ns = asyncio.run(measure(bodies))
    baseline_us = baseline_ns / 1000
    for name, extra in extra_ns.items():
        extra_us = extra / 1000
        print(
            f"{name}: {extra_us:.2f} us (baseline: {baseline_us:.2f} us, ratio: {extra_us / baseline_us:.2f}x)"
        )


if __name__ == "__main__":
    main()
