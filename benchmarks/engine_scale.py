"""How the engine's cost grows with providers and traffic: get_status, loop ticks, memory.

Run: `python benchmarks/engine_scale.py` (`--quick`: 3 simulated minutes and 6/60 providers;
`--full`: 3 seeds). Each case runs in its own subprocess, so memory figures do not mix.

For 6, 60 and 200 synthetic in-process providers (an instant adapter: no HTTP, so the figures are
the engine's own work), one `AutonomousSystem` with the default settings runs every loop on a
`ManualClock` for 10 simulated minutes while every provider's telemetry receives
`CALLS_PER_S` calls a second (lognormal latencies, 2 % provider errors): past the ~55 calls/s
at which the old sample rings stopped covering their window. Per case:

- `get_status` work per call: the median of the summed synchronous steps of
  `await system.get_status()` (the whole status, not only telemetry; other tasks that run while
  it awaits are not counted), on the busy system after its 10 minutes and on an idle twin with
  the same providers and no calls, alternately, with one second of calls on the busy one before
  each pair; target: busy within 1.5x of idle at 60 providers.
- event-loop blocking per tick for each loop (self_healer, auto_scaler, predictive_maintenance,
  auto_optimizer): every synchronous step of every tick is timed (a step is what runs between
  two awaits that yield to the event loop, i.e. how long a payment arriving then would wait);
  p99 and max of each tick's longest step. Target at 60 providers: max <= 5 ms.
- RSS per provider: the process's resident memory after the busy minutes, less before the
  providers were registered, over the number of providers.
- telemetry per busy provider: traced memory (tracemalloc) of one provider's telemetry after
  10 minutes at `CALLS_PER_S`, in a separate run; target <= 100 KB (the old rings: ~0.8 MB).
- quantile error: p50/p95/p99 of one provider's 5-minute snapshot against the exact order
  statistics of the latencies it was fed (numpy `method="lower"`); target <= 1 %.
- full garbage collections during the busy minutes: the longest pause (a step a collection
  lands in is that much longer, whichever loop it is).
- the predictor's state writes per tick (one key per changed provider, each its own step and
  commit, where there were two documents of every provider) and what one such commit costs on
  the disk under the temporary directory against tmpfs (`sqlite_commit_on_disk`): on a disk the
  writes are that many fsyncs per tick, each short.

Ratios are against the 6-provider case (and busy against idle). What the figures leave out:
HTTP (the adapters are instant), the MCP/REST layers (see benchmarks/mcp_status_cost.py), and
the payment path itself (benchmarks/router_overhead.py). Development data: seed 1; reporting:
seeds 2-4 (`--full`), the default run uses seed 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import numpy as np

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import load_settings
from mcp_autonomy.providers.base import (
    ErrorClass,
    Money,
    Operation,
    PaymentContext,
    PaymentRequest,
    ProbeResult,
    ProviderCapabilities,
    ProviderError,
    ProviderTransaction,
    TransactionStatus,
)
from mcp_autonomy.store import Fence, Store
from mcp_autonomy.telemetry import Outcome, ProviderTelemetry

PROVIDER_COUNTS = (6, 60, 200)
CALLS_PER_S = 60
ERROR_SHARE = 0.02
SIMULATED_S = 600.0
STATUS_CALLS = 200
TARGET_STATUS_RATIO = 1.5
TARGET_BLOCK_MS = 5.0
TARGET_TELEMETRY_KB = 100.0
TARGET_QUANTILE_ERROR = 0.01
STATE_PARENT = "/dev/shm" if os.path.isdir("/dev/shm") else None
"""The store's file on tmpfs: its fsyncs cost nothing, so the figures are the engine's own work
(`sqlite_commit_on_disk` shows what one commit adds on a disk)."""
LOOPS = ("self_healer", "auto_scaler", "predictive_maintenance", "auto_optimizer")


class InstantAdapter:
    """A provider that answers at once: the engine's own cost, no HTTP."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.capabilities = ProviderCapabilities(
            operations=frozenset({Operation.COLLECT, Operation.PAYOUT}),
            currencies=frozenset({"KES"}),
            countries=frozenset({"KE"}),
        )

    async def initialize(self) -> None:
        return None

    async def refresh_credentials(self) -> None:
        return None

    async def probe(self) -> ProbeResult:
        return ProbeResult(ok=True, latency_ms=1.0, detail="ok")

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        return ProviderTransaction(
            provider=self.name,
            reference=f"{self.name}-{request.idempotency_key}",
            provider_reference=f"P-{request.idempotency_key}",
            status=TransactionStatus.SUCCEEDED,
            money=request.money,
        )

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        return await self.collect(request)

    async def status(
        self, reference: str, provider_reference: str | None = None, *, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        raise ProviderError(self.name, ErrorClass.NOT_PROCESSED, "no such transaction", code="not_found")

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class _TimedSteps:
    """Drives a coroutine and times each synchronous step (what runs between two real yields).

    Steps are timed in this thread's CPU time: on a shared machine, wall time would add whatever
    other processes took while this one was descheduled, which says nothing about the engine.
    """

    def __init__(self, coroutine: Coroutine[Any, Any, Any], steps_s: list[float]) -> None:
        self._coroutine = coroutine
        self._steps_s = steps_s

    def __await__(self) -> Generator[Any, Any, Any]:
        inner = self._coroutine.__await__()
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            started = time.thread_time()
            try:
                yielded = inner.send(to_send) if to_throw is None else inner.throw(to_throw)
            except StopIteration as done:
                self._steps_s.append(time.thread_time() - started)
                return done.value
            except BaseException:
                self._steps_s.append(time.thread_time() - started)
                raise
            self._steps_s.append(time.thread_time() - started)
            try:
                to_send, to_throw = (yield yielded), None
            except BaseException as exc:  # handed to the coroutine, as the event loop would
                to_send, to_throw = None, exc


def timed_tick(tick: Callable[[], Awaitable[None]], longest_ms: list[float]) -> Callable[[], Awaitable[None]]:
    async def wrapper() -> None:
        steps: list[float] = []
        try:
            await _TimedSteps(tick(), steps)  # type: ignore[arg-type]
        finally:
            longest_ms.append(max(steps, default=0.0) * 1000)

    return wrapper


def count_state_writes(system: AutonomousSystem, loop: str) -> list[int]:
    """A one-item list counting the component state writes of `loop` from now on."""
    writes = [0]
    set_state = system.store.set_state

    def counting(
        component: str, key: str, value: Any, *, timestamp: float, fence: Fence | None = None
    ) -> None:
        writes[0] += component == loop
        set_state(component, key, value, timestamp=timestamp, fence=fence)

    system.store.set_state = counting  # type: ignore[method-assign]
    return writes


def commit_ms(parent: str | None, samples: int = 30) -> float:
    """Median wall time of one state write of a provider's size (a commit) in a store under `parent`."""
    value = {
        "traffic": {"requests": [1.0] * 168, "observed_s": [60.0] * 168},
        "history": {"points": [[float(i), 0.01, 100.0, 200.0, 300.0, 60.0, 0.0] for i in range(240)]},
    }
    with tempfile.TemporaryDirectory(dir=parent) as directory:
        store = Store(Path(directory) / "commit.sqlite3").open()
        try:
            took_s = []
            for i in range(samples):
                started = time.perf_counter()
                store.set_state("bench", f"provider/p{i}", value, timestamp=float(i))
                took_s.append(time.perf_counter() - started)
        finally:
            store.close()
    return statistics.median(took_s) * 1000


class FullCollections:
    """Times CPython's full (generation 2) garbage collections: one can land in any step of any
    loop (or of a payment), and its pause grows with the objects alive, not with that step."""

    def __init__(self) -> None:
        self.pauses_ms: list[float] = []
        self._started = 0.0

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        elif info["generation"] == 2:
            self.pauses_ms.append((time.thread_time() - self._started) * 1000)


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Traffic:
    """Synthetic calls: `CALLS_PER_S` a second per provider, lognormal latencies, 2 % errors."""

    def __init__(self, system: AutonomousSystem, clock: ManualClock, names: list[str], seed: int) -> None:
        self._system, self._clock, self._names = system, clock, names
        self._rng = np.random.default_rng(seed)
        self._outcomes = [
            Outcome.NOT_PROCESSED if draw < ERROR_SHARE else Outcome.SUCCESS
            for draw in self._rng.random(10_000).tolist()
        ]
        self.watched: list[tuple[float, float]] = []
        """The first provider's calls (time, latency), for the quantile check."""

    async def one_second(self) -> None:
        for index, name in enumerate(self._names):
            telemetry = self._system.telemetry.provider(name)
            latencies = self._rng.lognormal(np.log(120.0), 0.5, CALLS_PER_S).tolist()
            start = int(self._rng.integers(0, len(self._outcomes) - CALLS_PER_S))
            for outcome, latency in zip(self._outcomes[start : start + CALLS_PER_S], latencies, strict=True):
                telemetry.record(outcome, latency)
            if index == 0:
                now = self._clock.monotonic()
                self.watched.extend((now, latency) for latency in latencies)
        await self._clock.advance(1.0)


async def status_work_us(
    idle: AutonomousSystem, busy: AutonomousSystem, traffic: Traffic
) -> tuple[float, float]:
    """Median work of `get_status` on the idle and the busy system, measured alternately (so both
    see the same machine load), with one second of calls on the busy one before each pair: a
    dashboard polling every second, every provider has new calls each time."""
    for _ in range(10):
        await idle.get_status()
        await busy.get_status()
    idle_s: list[float] = []
    busy_s: list[float] = []
    for _ in range(STATUS_CALLS):
        await traffic.one_second()
        for system, sink in ((idle, idle_s), (busy, busy_s)):
            steps: list[float] = []
            await _TimedSteps(system.get_status(), steps)
            sink.append(sum(steps))  # its own steps only: not other tasks run while it awaits
    return statistics.median(idle_s) * 1e6, statistics.median(busy_s) * 1e6


def build(providers: int, clock: ManualClock, state_dir: str) -> tuple[AutonomousSystem, list[str]]:
    system = AutonomousSystem(load_settings(state_dir=Path(state_dir)), clock=clock)
    names = [f"p{i:03d}" for i in range(providers)]
    for name in names:
        system.register_provider(InstantAdapter(name))
    return system, names


async def one_case(providers: int, seed: int, simulated_s: float) -> dict[str, Any]:
    clock = ManualClock()
    rss_before = rss_bytes()
    with (
        tempfile.TemporaryDirectory(dir=STATE_PARENT) as busy_dir,
        tempfile.TemporaryDirectory(dir=STATE_PARENT) as idle_dir,
    ):
        busy, names = build(providers, clock, busy_dir)
        longest: dict[str, list[float]] = {loop: [] for loop in LOOPS}
        for loop in LOOPS:
            component = busy.components[loop]
            component.tick = timed_tick(component.tick, longest[loop])  # type: ignore[method-assign,assignment]
        predictor_writes = count_state_writes(busy, "predictive_maintenance")
        traffic = Traffic(busy, clock, names, seed)
        async with busy.running():
            with FullCollections() as collections:
                for _ in range(int(simulated_s)):
                    await traffic.one_second()
            rss_after = rss_bytes()
            snap = busy.telemetry.provider(names[0]).snapshot()
            start_s = clock.monotonic() - snap.covered_s - 1e-6
            inside = np.array([lat for at, lat in traffic.watched if at >= start_s])
            ticks = {loop: list(v) for loop, v in longest.items()}  # the busy minutes only
            writes_in_busy_minutes = predictor_writes[0]
            idle, _ = build(providers, clock, idle_dir)
            async with idle.running():
                idle_us, busy_us = await status_work_us(idle, busy, traffic)
        errors = []
        for q, found in ((50, snap.latency_p50_ms), (95, snap.latency_p95_ms), (99, snap.latency_p99_ms)):
            exact = float(np.percentile(inside, q, method="lower"))
            errors.append(abs((found or 0.0) - exact) / exact)
    return {
        "providers": providers,
        "idle_status_us": idle_us,
        "busy_status_us": busy_us,
        "block_p99_ms": {loop: float(np.percentile(v, 99)) if v else 0.0 for loop, v in ticks.items()},
        "block_max_ms": {loop: max(v, default=0.0) for loop, v in ticks.items()},
        "ticks": {loop: len(v) for loop, v in ticks.items()},
        "full_gc_pauses_ms": collections.pauses_ms,
        "predictor_writes_per_tick": writes_in_busy_minutes / max(1, len(ticks["predictive_maintenance"])),
        "rss_per_provider_kb": (rss_after - rss_before) / providers / 1024,
        "quantile_error": max(errors),
    }


def telemetry_kb(seed: int, simulated_s: float) -> float:
    """Traced bytes held by one busy provider's telemetry after `simulated_s` seconds."""
    rng = np.random.default_rng(seed)
    clock = ManualClock()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    telemetry = ProviderTelemetry("p", clock)
    for second in range(int(max(simulated_s, 3600.0))):  # an hour: the long ring full too
        clock._elapsed_s = float(second)
        for latency in rng.lognormal(np.log(120.0), 0.5, CALLS_PER_S).tolist():
            telemetry.record(Outcome.SUCCESS, latency)
    telemetry.snapshot()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held / 1024


def run_child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True, timeout=900
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def spread(values: list[float]) -> str:
    return "" if len(values) < 2 else f" [{min(values):.3g}..{max(values):.3g} over {len(values)} seeds]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 simulated minutes, 6 and 60 providers")
    parser.add_argument("--full", action="store_true", help="seeds 2, 3 and 4")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--telemetry", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=SIMULATED_S, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(anyio.run(one_case, args.case, args.seed, args.seconds)))
        return
    if args.telemetry:
        print(json.dumps({"kb": telemetry_kb(args.seed, args.seconds)}))
        return
    seconds = 180.0 if args.quick else SIMULATED_S
    counts = PROVIDER_COUNTS[:2] if args.quick else PROVIDER_COUNTS
    seeds = [2, 3, 4] if args.full else [2]
    cases: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for seed in seeds:
        for n in counts:
            cases[n].append(run_child(["--case", str(n), "--seed", str(seed), "--seconds", str(seconds)]))

    def med(n: int, key: str, loop: str | None = None) -> float:
        values = [c[key][loop] if loop else c[key] for c in cases[n]]
        return float(statistics.median(values))

    def vals(n: int, key: str, loop: str | None = None) -> list[float]:
        return [c[key][loop] if loop else c[key] for c in cases[n]]

    base = counts[0]
    for n in counts:
        idle, busy = med(n, "idle_status_us"), med(n, "busy_status_us")
        print(
            f"get_status_work_{n}_busy: {busy:.0f} us (baseline: {idle:.0f} us idle, ratio: {busy / idle:.2f}x)"
            f"{spread(vals(n, 'busy_status_us'))}"
        )
        if n != base:
            base_busy = med(base, "busy_status_us")
            print(
                f"get_status_work_{n}_vs_{base}_busy: {busy:.0f} us "
                f"(baseline: {base_busy:.0f} us, ratio: {busy / base_busy:.2f}x)"
            )
    for n in counts:
        for loop in LOOPS:
            p99, worst = med(n, "block_p99_ms", loop), med(n, "block_max_ms", loop)
            base_p99 = med(base, "block_p99_ms", loop)
            ticks = int(med(n, "ticks", loop))
            print(
                f"loop_block_p99_{loop}_{n}: {p99:.2f} ms (baseline: {base_p99:.2f} ms at {base} providers, "
                f"ratio: {p99 / base_p99 if base_p99 else float('nan'):.2f}x) max {worst:.2f} ms over {ticks} ticks"
                f"{spread(vals(n, 'block_max_ms', loop))}"
            )
    for n in counts:
        writes, base_writes = med(n, "predictor_writes_per_tick"), med(base, "predictor_writes_per_tick")
        print(
            f"predictor_state_writes_per_tick_{n}: {writes:.1f} writes (baseline: {base_writes:.1f} writes at "
            f"{base} providers, ratio: {writes / base_writes:.2f}x; before per-provider keys: 2 per tick)"
        )
    for n in counts:
        pauses = [pause for case in cases[n] for pause in case["full_gc_pauses_ms"]]
        base_pauses = [pause for case in cases[base] for pause in case["full_gc_pauses_ms"]]
        print(
            f"full_gc_pause_max_{n}: {max(pauses, default=0.0):.2f} ms over {len(pauses)} collections "
            f"(baseline: {max(base_pauses, default=0.0):.2f} ms at {base} providers; counted in the step it "
            "lands in)"
        )
    disk_ms, tmpfs_ms = commit_ms(None), commit_ms(STATE_PARENT)
    print(
        f"sqlite_commit_on_disk: {disk_ms:.2f} ms in {tempfile.gettempdir()} "
        f"(baseline: {tmpfs_ms:.2f} ms on {STATE_PARENT or 'the same disk'}, ratio: {disk_ms / tmpfs_ms:.1f}x)"
    )
    for n in counts:
        rss, base_rss = med(n, "rss_per_provider_kb"), med(base, "rss_per_provider_kb")
        print(
            f"rss_per_provider_{n}: {rss:.0f} KB (baseline: {base_rss:.0f} KB at {base}, ratio: {rss / base_rss:.2f}x)"
        )
    kbs = [run_child(["--telemetry", "--seed", str(seed)])["kb"] for seed in seeds]
    kb = statistics.median(kbs)
    print(
        f"telemetry_per_busy_provider: {kb:.1f} KB (baseline: 800 KB old sample rings, ratio: {kb / 800:.3f}x){spread(kbs)}"
    )
    worst_error = max(max(vals(n, "quantile_error")) for n in counts)
    print(f"quantile_max_relative_error: {worst_error * 100:.3f} % (baseline: 0 % exact, target <= 1 %)")

    at = 60 if 60 in counts else counts[-1]
    status_ratio = med(at, "busy_status_us") / med(at, "idle_status_us")
    worst_block = max(max(vals(at, "block_max_ms", loop)) for loop in LOOPS)
    checks = {
        f"get_status busy/idle at {at} <= {TARGET_STATUS_RATIO}x ({status_ratio:.2f}x)": status_ratio
        <= TARGET_STATUS_RATIO,
        f"longest tick block at {at} <= {TARGET_BLOCK_MS} ms ({worst_block:.2f} ms)": worst_block
        <= TARGET_BLOCK_MS,
        f"telemetry per busy provider <= {TARGET_TELEMETRY_KB:g} KB ({kb:.1f} KB)": kb <= TARGET_TELEMETRY_KB,
        f"quantiles within 1 % ({worst_error * 100:.3f} %)": worst_error <= TARGET_QUANTILE_ERROR,
    }
    for label, ok in checks.items():
        print(f"  {'ok ' if ok else 'NOT'} {label}")
    print("met" if all(checks.values()) else "not met")


if __name__ == "__main__":
    main()
