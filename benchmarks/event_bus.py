"""Throughput and memory of `EventBus.emit` with a slow and a fast subscriber attached.

Run: `python benchmarks/event_bus.py`. In one process and one anyio event loop, a publisher emits
a million events with a realistic payload (type, component, provider, message, a small data
dict), yielding to the loop every `PUBLISHER_YIELD_EVERY` events as the engine's loops do. Two
phases, back to back:

- baseline: the same million `emit` calls with no subscriber attached;
- subscribed: the same calls while, concurrently in the same task group, a fast subscriber drains
  its buffer whenever it runs and a slow subscriber takes one event and then sleeps
  `SLOW_CONSUMER_PAUSE_S` (a consumer stuck behind a slow client), so it falls hopelessly behind
  and its bounded buffer drops the oldest events.

Throughput is a million over the wall time of the publishing loop, which includes the time the
consumers run when the publisher yields (they share its thread); `event_bus_cpu_per_event` is the
process CPU time of the same loop per event, which other processes on a shared machine cannot
inflate. Memory is the resident set:
sampled after 100k and after 1M events of each phase, and the process peak (`ru_maxrss`), read
once after the baseline (which runs first) and once at the end. Exits 1 if the peak reaches
`PEAK_RSS_LIMIT_MB`: the bus promises bounded memory whoever is subscribed.
"""

from __future__ import annotations

import gc
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# Plain `python benchmarks/event_bus.py` puts benchmarks/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import psutil
from anyio.lowlevel import checkpoint

from mcp_autonomy.clock import SystemClock
from mcp_autonomy.events import EventBus, EventType, Subscription

EVENTS = 1_000_000
WARMUP_EVENTS = 20_000
RSS_CHECKPOINTS = (100_000, EVENTS)
PUBLISHER_YIELD_EVERY = 100  # well under the default 1024-event buffer, so a fast consumer keeps up
SLOW_CONSUMER_PAUSE_S = 0.005  # at most ~200 events/s, thousands of times slower than the publisher
PEAK_RSS_LIMIT_MB = 150.0
BYTES_PER_MB = 1024 * 1024
# ru_maxrss is KiB on Linux and bytes on macOS.
MAXRSS_BYTES_PER_UNIT = 1 if sys.platform == "darwin" else 1024

PROVIDERS = ("mpesa", "paystack", "mtn_momo", "airtel_money", "flutterwave", "intasend")
COMPONENTS = ("self_healer", "auto_scaler", "predictive_maintenance", "auto_optimizer")
TYPES = (
    EventType.PROVIDER_HEALTH_CHANGED,
    EventType.HEALING_EVENT,
    EventType.SCALING_DECISION,
    EventType.PREDICTION,
    EventType.BREAKER_STATE_CHANGED,
    EventType.OPTIMIZATION_APPLIED,
)
PAYLOAD_VARIANTS = 64


@dataclass(frozen=True)
class Payload:
    type: EventType
    component: str
    provider: str
    message: str
    data: dict[str, float | int | str]


def make_payloads() -> list[Payload]:
    """A rotating pool, so the loop measures `emit` and not the building of arguments."""
    payloads = []
    for i in range(PAYLOAD_VARIANTS):
        provider = PROVIDERS[i % len(PROVIDERS)]
        latency_ms = 120.0 + 7.5 * i
        error_rate = round(0.002 * i, 3)
        payloads.append(
            Payload(
                type=TYPES[i % len(TYPES)],
                component=COMPONENTS[i % len(COMPONENTS)],
                provider=provider,
                message=f"{provider}: p95 latency {latency_ms:.0f} ms, error rate {error_rate:.1%}",
                data={
                    "latency_p95_ms": latency_ms,
                    "error_rate": error_rate,
                    "window_s": 60,
                    "state": "degraded" if i % 3 else "healthy",
                },
            )
        )
    return payloads


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / BYTES_PER_MB


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * MAXRSS_BYTES_PER_UNIT / BYTES_PER_MB


@dataclass
class PhaseResult:
    """One phase's publishing loop: wall and process CPU time (RSS sampling excluded), RSS samples."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    rss_mb_at: dict[int, float] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return EVENTS / self.wall_s

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / EVENTS * 1e6


async def publish(bus: EventBus, payloads: list[Payload], count: int, result: PhaseResult) -> None:
    """Emit `count` events, yielding to the loop every `PUBLISHER_YIELD_EVERY`; time the loop."""
    variants = len(payloads)
    sampling_wall_s = sampling_cpu_s = 0.0
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    for i in range(1, count + 1):
        p = payloads[i % variants]
        bus.emit(p.type, component=p.component, message=p.message, provider=p.provider, data=p.data)
        if i % PUBLISHER_YIELD_EVERY == 0:
            await checkpoint()
        if i in RSS_CHECKPOINTS:
            sample_wall, sample_cpu = time.perf_counter(), time.process_time()
            result.rss_mb_at[i] = rss_mb()
            sampling_wall_s += time.perf_counter() - sample_wall
            sampling_cpu_s += time.process_time() - sample_cpu
    result.wall_s = time.perf_counter() - wall_started - sampling_wall_s
    result.cpu_s = time.process_time() - cpu_started - sampling_cpu_s


@dataclass
class ConsumerCounts:
    consumed: int = 0
    last_seq: int = 0


async def fast_consumer(subscription: Subscription, counts: ConsumerCounts) -> None:
    async for event in subscription:
        counts.consumed += 1
        counts.last_seq = event.seq


async def slow_consumer(subscription: Subscription, counts: ConsumerCounts) -> None:
    async for event in subscription:
        counts.consumed += 1
        counts.last_seq = event.seq
        await anyio.sleep(SLOW_CONSUMER_PAUSE_S)


@dataclass
class SubscribedResult:
    phase: PhaseResult
    slow: Subscription
    fast: Subscription
    slow_counts: ConsumerCounts
    fast_counts: ConsumerCounts
    published: int


async def run_baseline(payloads: list[Payload]) -> PhaseResult:
    result = PhaseResult()
    await publish(EventBus(SystemClock(), run_id="bench-baseline"), payloads, EVENTS, result)
    return result


async def run_subscribed(payloads: list[Payload]) -> SubscribedResult:
    bus = EventBus(SystemClock(), run_id="bench-subscribed")
    slow = bus.subscribe()
    fast = bus.subscribe()
    slow_counts, fast_counts = ConsumerCounts(), ConsumerCounts()
    phase = PhaseResult()
    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_consumer, slow, slow_counts)
        tg.start_soon(fast_consumer, fast, fast_counts)
        await checkpoint()  # both consumers are parked in `get()` before the first event
        await publish(bus, payloads, EVENTS, phase)
        # Let the fast consumer take what the last burst left in its buffer, then stop both.
        await checkpoint()
        tg.cancel_scope.cancel()
    return SubscribedResult(phase, slow, fast, slow_counts, fast_counts, bus.published_total)


def line(name: str, value: float, unit: str, baseline: float, baseline_unit: str, fmt: str) -> str:
    ratio = value / baseline if baseline else float("nan")
    return f"{name}: {value:{fmt}} {unit} (baseline: {baseline:{fmt}} {baseline_unit}, ratio: {ratio:.2f}x)"


async def run() -> int:
    payloads = make_payloads()
    # Warm-up: pydantic's validators, the enum lookups and the allocator reach steady state.
    await publish(EventBus(SystemClock(), history_size=100), payloads, WARMUP_EVENTS, PhaseResult())
    gc.collect()
    baseline = await run_baseline(payloads)
    baseline_peak_mb = peak_rss_mb()
    gc.collect()
    subscribed = await run_subscribed(payloads)
    peak_mb = peak_rss_mb()
    check_accounting(subscribed)

    phase, offered = subscribed.phase, subscribed.published
    figures = [
        ("event_bus_throughput", phase.events_per_s, "events/s", baseline.events_per_s, "events/s", ".0f"),
        # CPU time is what other processes on a shared machine cannot inflate; wall time is.
        ("event_bus_cpu_per_event", phase.cpu_us_per_event, "us", baseline.cpu_us_per_event, "us", ".2f"),
        ("event_bus_peak_rss", peak_mb, "MB", baseline_peak_mb, "MB", ".1f"),
        *(
            (
                f"event_bus_rss_after_{at // 1000}k_events",
                phase.rss_mb_at[at],
                "MB",
                baseline.rss_mb_at[at],
                "MB",
                ".1f",
            )
            for at in RSS_CHECKPOINTS
        ),
        # Every event was offered to both subscribers; the baseline is what each was offered.
        (
            "event_bus_slow_subscriber_dropped",
            subscribed.slow.dropped,
            "events",
            offered,
            "events offered",
            "d",
        ),
        (
            "event_bus_slow_subscriber_consumed",
            subscribed.slow_counts.consumed,
            "events",
            offered,
            "events offered",
            "d",
        ),
        (
            "event_bus_fast_subscriber_dropped",
            subscribed.fast.dropped,
            "events",
            offered,
            "events offered",
            "d",
        ),
    ]
    for figure in figures:
        print(line(*figure))
    if peak_mb >= PEAK_RSS_LIMIT_MB:
        print(f"event_bus_peak_rss: {peak_mb:.1f} MB is not under the {PEAK_RSS_LIMIT_MB:.0f} MB limit")
        return 1
    return 0


def check_accounting(result: SubscribedResult) -> None:
    """Offered = consumed + dropped + still buffered, for each subscriber; a broken count is a bug."""
    for name, subscription, counts in (
        ("slow", result.slow, result.slow_counts),
        ("fast", result.fast, result.fast_counts),
    ):
        accounted = counts.consumed + subscription.dropped + subscription.pending
        if accounted != result.published:
            raise SystemExit(f"{name} subscriber lost events: {accounted} accounted of {result.published}")


def main() -> None:
    raise SystemExit(anyio.run(run))


if __name__ == "__main__":
    main()
