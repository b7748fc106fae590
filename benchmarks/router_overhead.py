"""What the router's guards cost per call, and the router's end-to-end payment rate.

Run: `python benchmarks/router_overhead.py`.

1. Guard overhead: a bare awaited no-op against the same no-op wrapped the way the router wraps
   every provider call (breaker permit, token bucket, outcome recorded, telemetry sample), with
   the real `SystemClock`, back to back in one process; the median over repeats of the
   difference per call. Target: at most 3 us added.
2. End to end: payments per second through `AutonomousSystem.submit_payment` (idempotency record,
   route, guards, the real M-Pesa adapter over loopback HTTP to the in-process sandbox),
   against the bare adapter's `collect` on the same sandbox as the baseline, sequentially and
   with 20 payments in flight.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import SystemClock
from mcp_autonomy.config import load_settings
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest
from mcp_autonomy.resilience import CircuitBreaker, TokenBucket
from mcp_autonomy.sandbox.embedded import embedded_sandbox
from mcp_autonomy.telemetry import Outcome, Telemetry

ITERATIONS = 100_000
REPEATS = 7
PAYMENTS = 400
CHUNK = 40
CONCURRENCY = 20


async def noop() -> None:
    return None


async def guard_overhead_us() -> tuple[float, float]:
    clock = SystemClock()
    breaker = CircuitBreaker("bench", clock)
    bucket = TokenBucket(1e12, 1e12, clock)
    telemetry = Telemetry(clock).provider("bench")
    bare_ns: list[float] = []
    guarded_ns: list[float] = []
    for _ in range(REPEATS):
        started = time.perf_counter_ns()
        for _ in range(ITERATIONS):
            await noop()
        bare_ns.append((time.perf_counter_ns() - started) / ITERATIONS)
        started = time.perf_counter_ns()
        for _ in range(ITERATIONS):
            permit = breaker.try_acquire()
            if permit is None or not bucket.try_acquire():
                continue
            call_started = time.perf_counter()
            await noop()
            elapsed = time.perf_counter() - call_started
            permit.record(True, elapsed)
            telemetry.record(Outcome.SUCCESS, elapsed * 1000)
        guarded_ns.append((time.perf_counter_ns() - started) / ITERATIONS)
    bare = statistics.median(bare_ns) / 1000
    guarded = statistics.median(guarded_ns) / 1000
    return bare, guarded


def payment(i: int) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=f"bench-{i:07d}",
        operation=Operation.COLLECT,
        money=Money(amount_minor=100 * (100 + i % 50), currency="KES"),
        phone=f"+2547{i:08d}",
        country="KE",
    )


async def rate(submit: object, start: int, count: int, concurrency: int) -> float:
    limiter = anyio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            await submit(payment(i))  # type: ignore[operator]

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(start, start + count):
            tg.start_soon(one, i)
    return count / (time.perf_counter() - started)


async def end_to_end() -> dict[str, tuple[float, float]]:
    clock = SystemClock()
    with tempfile.TemporaryDirectory() as state_dir:
        settings = load_settings(
            state_dir=Path(state_dir), self_healing_enabled=False, auto_scaling_enabled=False
        )
        async with embedded_sandbox(clock) as sandbox:
            system = AutonomousSystem(settings, clock=clock)
            for adapter in sandbox.adapters.values():
                system.register_provider(adapter)
            # The benchmark measures the router, not its rate limit.
            lane = system.router.lane("mpesa")
            lane.limiter.set_rate(1e6, 1e6)
            async with system.running():
                mpesa = sandbox.adapters["mpesa"]
                await mpesa.collect(payment(0))  # warm: token, connection
                results: dict[str, tuple[float, float]] = {}
                offset = 1
                for label, concurrency in (("sequential", 1), (f"{CONCURRENCY}_in_flight", CONCURRENCY)):
                    # Alternate chunks so both see the same sandbox state (its ledger grows).
                    routed_rates: list[float] = []
                    bare_rates: list[float] = []
                    for _ in range(PAYMENTS // CHUNK):
                        bare_rates.append(await rate(mpesa.collect, offset, CHUNK, concurrency))
                        offset += CHUNK
                        routed_rates.append(await rate(system.submit_payment, offset, CHUNK, concurrency))
                        offset += CHUNK
                    results[label] = (statistics.median(routed_rates), statistics.median(bare_rates))
                return results


async def main() -> None:
    bare_us, guarded_us = await guard_overhead_us()
    added = guarded_us - bare_us
    print(
        f"router_guard_overhead_per_call: {added:.2f} us (baseline: {bare_us:.2f} us bare await, "
        f"ratio: {guarded_us / bare_us:.2f}x) target <= 3 us: {'met' if added <= 3 else 'NOT met'}"
    )
    for label, (routed, bare) in (await end_to_end()).items():
        print(
            f"router_payments_per_s_{label}: {routed:.0f} payments/s "
            f"(baseline: {bare:.0f} bare adapter calls/s, ratio: {routed / bare:.2f}x)"
        )


if __name__ == "__main__":
    anyio.run(main)
