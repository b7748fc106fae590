"""Auto-optimization through a simulated day of changing regimes, against static defaults.

Run: `python benchmarks/optimizer_effect.py` (10 held-out days, each replayed twice: about 25
minutes on an idle 2-CPU machine; `--quick`: 2 held-out days, no verdict worth the name; `--days
N`; `--seeds dev` replays the development days instead).

Development and reporting days are apart. The scenario and the optimizer's tuners were designed
against the development days (seeds 20260101-20260104, the days this benchmark used to report);
the verdict is given on held-out days (seeds 20261101 on) that were not looked at while tuning.

Each day is one seeded scenario (other seeds: other arrivals, fault draws and jitter), replayed twice in this process on a fresh in-process sandbox with a
`ManualClock`, real HTTP through the real Paystack adapter. GHS mobile-money collections arrive
as a Poisson stream, one every 2 simulated seconds on average (the same arrival times in both
runs), to Paystack alone: no backup, so a payment the lane does not get through is a failed
payment, and only the lane's tunables move the figures. The day is compressed to 3 simulated
hours, six regimes of 30 minutes, scheduled in the sandbox's own fault schedule on the collect
endpoint (a refused port cannot target an endpoint: it closes the provider's whole port):

1. `night`: fast and healthy (lognormal latency, p50 250 ms, p99 700 ms). The 10 s default
   timeout is far above every call.
2. `slow_peak`: latency six times higher (p50 1.5 s, p99 4 s), no errors.
3. `partial_outage`: the port refuses connections 30 s of every minute ("certainly not
   processed"); a retry 0-3 s later almost always meets the same down phase.
4. `throttled`: more than two requests within a clock second are answered 429 with
   `Retry-After: 1`; the stream's bursts exceed that, a retry a second later gets through.
5. `transient`: the port refuses connections 1 s of every 10 s: a retry usually recovers.
6. `evening`: fast, but 1 % of the charges are accepted and then never answered (the
   ambiguous hang): the timeout decides how long those payments wait before the status query
   that finds them.

- **Optimizer on:** the real `AutonomousSystem` with auto-optimization and its default tuners,
  canary and thresholds, ticking at its default interval (`OPTIMIZATION_INTERVAL_MS`, 120 s).
- **Baseline:** the same system with `AUTO_OPTIMIZATION_ENABLED=false`: Paystack's documented
  static tunables all day (timeout 10 s, 3 attempts, 1 s base backoff, 100/s rate limit).

Both runs keep the self-healer on and turn predictive maintenance and auto-scaling off, so the
optimizer is the only difference. Customers approve their prompt 5 s after the charge (the
sandbox default) and the reconciler turns pending payments into succeeded ones.

Figures (a payment belongs to the regime its arrival falls in; latencies in simulated time):

- success rate: payments the provider accepted (pending or succeeded when `submit_payment`
  returned) / payments;
- p99 latency: end to end, `submit_payment` called to returned, of every payment and of the
  accepted ones (a payment that fails sooner also lowers the first);
- retries sent (the lane tally's `retries_sent`), overall and during the outage regime
  (`partial_outage`); timeouts: the lane tally's timed-out attempts;
- optimizations kept and reverted (the optimizer run's records, listed at the end);
- failed payments by cause (the attempts in each payment record);
- payments unknown at the end, and against the sandbox ledger after a 3-minute drain: payments
  recorded failed whose customer was charged anyway, and payments recorded accepted without a
  charge. Both must be 0.
- the same figures per regime.

The first day is reported in full (every figure above, per regime, and the optimizer's changes),
then every day's headline figures.

Targets: with the optimizer on, a higher success rate that a paired test on the per-day
differences finds significant (exact sign-flip permutation test, two-sided, p < 0.05), and no
harm: no regime's success rate, and not the day's p99 latency, worse than static beyond noise
(one-sided p < 0.05 for "worse"). Where the gain is not significant the benchmark says so plainly
and reports whether it showed no harm. The last line is `met` only for a significant gain with no
harm. One day is not enough: the success-rate difference varies by about 0.4 points (sd) from
day to day, mostly with whether the breaker happens to open in the transient regime.

Reproducibility: arrivals, fault draws and backoff jitter are seeded, and the regimes without
refusals replay identically. The refusing port closes live keep-alive connections and clients
reconnect over real sockets, outside the manual clock, so from the partial outage on the figures
vary by a few payments and retries from one run to the next (in both runs alike; the success
rate by up to half a point): read differences of that size there as noise.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import numpy as np
from anyio.abc import TaskGroup
from starlette.requests import ClientDisconnect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_autonomy.autonomy.optimizer import OptimizationStatus
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings, load_settings
from mcp_autonomy.payments import AttemptOutcome, PaymentRecord
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.resilience.tunables import ProviderTunables
from mcp_autonomy.sandbox import (
    AcceptThenHangSpec,
    FlappingSpec,
    LatencySpec,
    LedgerOperation,
    LedgerStatus,
    ThrottleSpec,
)
from mcp_autonomy.sandbox.embedded import EmbeddedSandbox, embedded_sandbox
from mcp_autonomy.sandbox.faults import FaultSpec

PROVIDER = "paystack"
SEED = 20_260_101
DEV_SEEDS = tuple(range(SEED, SEED + 4))
"""The days the scenario and the tuners were developed against."""
REPORT_SEED = 20_261_101
DEFAULT_DAYS = 10
"""Held-out days replayed by default: enough for a paired test to see a gain of a few tenths of a
point per day against a day-to-day sd of about 0.4 points."""
SIGNIFICANCE = 0.05
MEAN_GAP_S = 2.0
"""Mean gap between payments (Poisson arrivals): 30 a minute."""
STEP_S = 30.0
"""The clock advances in steps this long; each step's payments are started at its beginning,
each sleeping until its own arrival time."""
DRAIN_S = 180.0
"""After the day: in-flight retries finish, customers answer, the reconciler catches up."""
OPTIMIZATION_INTERVAL_MS = int(Settings.model_fields["optimization_interval_ms"].default)
"""The optimizer's default interval: the benchmark judges what operators get."""
WALL_CLOCK_BOUND_S = 900.0
"""Real seconds both runs of a day may take together (2 to 2.5 minutes on an idle 2-CPU machine;
a machine shared with other work needs more)."""

FAST = LatencySpec(distribution="lognormal", median_ms=250, p99_ms=700)
SLOW = LatencySpec(distribution="lognormal", median_ms=1_500, p99_ms=4_000)


@dataclass(frozen=True)
class Regime:
    """One stretch of the day: the provider's faults while it lasts."""

    name: str
    minutes: float
    collect_faults: tuple[FaultSpec, ...]  # on the collect endpoint only
    port_faults: tuple[FaultSpec, ...] = ()  # on the provider's whole port (refusals)
    outage: bool = False


REGIMES: tuple[Regime, ...] = (
    Regime("night", 30, (FAST,)),
    Regime("slow_peak", 30, (SLOW,)),
    Regime(
        "partial_outage",
        30,
        (FAST,),
        (FlappingSpec(period_s=60.0, down_fraction=0.5, mode="refused"),),
        outage=True,
    ),
    Regime("throttled", 30, (FAST, ThrottleSpec(max_per_s=2, retry_after_s=1.0))),
    Regime("transient", 30, (FAST,), (FlappingSpec(period_s=10.0, down_fraction=0.1, mode="refused"),)),
    Regime("evening", 30, (FAST, AcceptThenHangSpec(rate=0.01))),
)
DAY_S = sum(r.minutes for r in REGIMES) * 60.0
FAILURE_CAUSES = (
    "breaker_open",
    "rate_limited_locally",
    "refused",
    "throttled_429",
    "timed_out",
    "ambiguous_not_found",
    "other",
)


class _QuietClientDisconnects(logging.Filter):
    """Drop uvicorn's traceback when a sandbox route reads the body of a request whose client
    already gave up (a call the router timed out during injected latency): expected here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ClientDisconnect))


def regime_starts_s() -> list[float]:
    starts, at = [], 0.0
    for regime in REGIMES:
        starts.append(at)
        at += regime.minutes * 60.0
    return starts


def arrivals_s(seed: int) -> list[float]:
    """The payment stream both runs share: seeded Poisson arrivals over the day."""
    rng = random.Random(seed)
    times: list[float] = []
    at = rng.expovariate(1.0 / MEAN_GAP_S)
    while at < DAY_S:
        times.append(at)
        at += rng.expovariate(1.0 / MEAN_GAP_S)
    return times


def regime_of(at_s: float, starts: Sequence[float]) -> int:
    return max(i for i, start in enumerate(starts) if start <= at_s)


def ghs_payment(i: int) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=f"day-{i:06d}",
        operation=Operation.COLLECT,
        money=Money(amount_minor=2_500 + 100 * (i % 50), currency="GHS"),
        phone=f"+23324{i:07d}",  # one customer per payment: the ledger check is per customer
        country="GH",
    )


def schedule_day(sandbox: EmbeddedSandbox) -> None:
    """Every regime's faults, at absolute clock times, in the sandbox's own schedule."""
    faults = sandbox.state.faults
    for regime, start in zip(REGIMES, regime_starts_s(), strict=True):
        end = start + regime.minutes * 60.0
        for spec in regime.collect_faults:
            faults.add(PROVIDER, spec, endpoints=["collect"], start_s=start, end_s=end, relative=False)
        for spec in regime.port_faults:
            faults.add(PROVIDER, spec, start_s=start, end_s=end, relative=False)


def failure_cause(record: PaymentRecord) -> str:
    """Why a failed payment failed, from its attempts."""
    attempts = record.attempts
    if any(
        a.outcome is AttemptOutcome.AMBIGUOUS and a.detail.startswith("no answer within") for a in attempts
    ):
        return "timed_out"
    if any(a.outcome is AttemptOutcome.AMBIGUOUS for a in attempts):
        return "ambiguous_not_found"
    last = attempts[-1].outcome if attempts else None
    if last is AttemptOutcome.REJECTED_LOCALLY:
        return "breaker_open" if attempts[-1].detail == "breaker open" else "rate_limited_locally"
    if last is AttemptOutcome.NOT_PROCESSED:
        return "refused"
    if last is AttemptOutcome.RATE_LIMITED:
        return "throttled_429"
    return "other"


@dataclass(frozen=True)
class PaymentOutcome:
    index: int
    regime: int
    latency_ms: float
    accepted: bool  # pending or succeeded when submit_payment returned


@dataclass(frozen=True)
class TallyPoint:
    retries_sent: int
    timeouts: int


@dataclass
class Audit:
    """What the records and the sandbox ledger say after the drain."""

    unknown: int = 0
    charged_but_failed: int = 0
    accepted_without_charge: int = 0
    failure_causes: Counter[str] = field(default_factory=Counter)
    failure_causes_by_regime: list[Counter[str]] = field(default_factory=lambda: [Counter() for _ in REGIMES])

    def failed(self, cause: str, regime: int) -> None:
        self.failure_causes[cause] += 1
        self.failure_causes_by_regime[regime][cause] += 1


@dataclass
class RunResult:
    """One run's figures."""

    outcomes: list[PaymentOutcome]
    payments: int
    tally_at_regime_start: list[TallyPoint]  # one per regime, then the end of the day
    retries_sent: int
    timeouts: int
    kept: int
    reverted: int
    audit: Audit
    final_tunables: ProviderTunables
    history: list[str]

    def _selected(self, regime: int | None) -> list[PaymentOutcome]:
        return [o for o in self.outcomes if regime is None or o.regime == regime]

    def success_rate_pct(self, regime: int | None = None) -> float | None:
        selected = self._selected(regime)
        return 100 * sum(o.accepted for o in selected) / len(selected) if selected else None

    def p99_ms(self, regime: int | None = None, *, accepted_only: bool = False) -> float | None:
        latencies = [o.latency_ms for o in self._selected(regime) if o.accepted or not accepted_only]
        return float(np.percentile(latencies, 99)) if latencies else None

    def retries_in(self, regimes: Sequence[int]) -> int:
        points = self.tally_at_regime_start
        return sum(points[i + 1].retries_sent - points[i].retries_sent for i in regimes)

    def timeouts_in(self, regime: int) -> int:
        points = self.tally_at_regime_start
        return points[regime + 1].timeouts - points[regime].timeouts


async def audit(sandbox: EmbeddedSandbox, system: AutonomousSystem, times: Sequence[float]) -> Audit:
    """Every payment's record against the sandbox ledger (the ground truth)."""
    charged = {
        e.msisdn
        for e in sandbox.state.ledger.entries(operation=LedgerOperation.COLLECT)
        if e.status is not LedgerStatus.FAILED
    }
    result = Audit()
    starts = regime_starts_s()
    for i, at_s in enumerate(times):
        regime = regime_of(at_s, starts)
        request = ghs_payment(i)
        record = await system.router.get_payment(request.idempotency_key)
        was_charged = request.phone in charged
        if record is None:
            result.charged_but_failed += was_charged
            result.failed("other", regime)
        elif record.status is TransactionStatus.UNKNOWN:
            result.unknown += 1  # honest either way: the reconciler keeps asking
        elif record.status is TransactionStatus.FAILED:
            result.charged_but_failed += was_charged
            result.failed(failure_cause(record), regime)
        elif not was_charged:
            result.accepted_without_charge += 1
    return result


async def run_day(*, optimizer_on: bool, seed: int = SEED) -> RunResult:
    clock = ManualClock()
    starts = regime_starts_s()
    times = arrivals_s(seed)
    outcomes: list[PaymentOutcome] = []
    tallies: list[TallyPoint] = []
    with tempfile.TemporaryDirectory() as state_dir:
        settings = load_settings(
            state_dir=Path(state_dir),
            auto_optimization_enabled=optimizer_on,
            optimization_interval_ms=OPTIMIZATION_INTERVAL_MS,
            predictive_maintenance_enabled=False,
            auto_scaling_enabled=False,
        )
        async with embedded_sandbox(clock, seed=seed) as sandbox:
            schedule_day(sandbox)
            system = AutonomousSystem(settings, clock=clock)
            # Backoff jitter from a seeded generator, so both runs draw their delays alike (the
            # router builds each lane's Backoff from this generator when the lane is first used).
            system.router._rng = random.Random(seed)
            system.register_provider(sandbox.adapters[PROVIDER])
            lane = system.router.lane(PROVIDER)

            def remember_tally() -> None:
                tallies.append(TallyPoint(lane.tally.retries_sent, lane.tally.timeouts))

            async def pay(i: int, delay_s: float) -> None:
                await clock.sleep(delay_s)
                started = clock.monotonic()
                record = await system.submit_payment(ghs_payment(i))
                outcomes.append(
                    PaymentOutcome(
                        i,
                        regime_of(times[i], starts),
                        (clock.monotonic() - started) * 1000,
                        record.status in (TransactionStatus.PENDING, TransactionStatus.SUCCEEDED),
                    )
                )

            async def traffic(tasks: TaskGroup) -> None:
                next_payment = 0
                boundaries = [*starts[1:], DAY_S]
                remember_tally()
                for step in range(math.ceil(DAY_S / STEP_S)):
                    step_end_s = (step + 1) * STEP_S
                    while next_payment < len(times) and times[next_payment] < step_end_s:
                        tasks.start_soon(pay, next_payment, times[next_payment] - clock.monotonic())
                        next_payment += 1
                    await clock.advance(step_end_s - clock.monotonic())
                    if boundaries and clock.monotonic() >= boundaries[0]:
                        boundaries.pop(0)
                        remember_tally()
                await clock.advance(DRAIN_S)

            async with system.running(), anyio.create_task_group() as tasks:
                await traffic(tasks)
                tasks.cancel_scope.cancel()  # nothing should be left in flight after the drain
                checked = await audit(sandbox, system, times)
                records = system.auto_optimizer.optimizations(limit=100_000)
    statuses = Counter(o.status for o in records)
    return RunResult(
        outcomes=outcomes,
        payments=len(times),
        tally_at_regime_start=tallies,
        retries_sent=lane.tally.retries_sent,
        timeouts=lane.tally.timeouts,
        kept=statuses[OptimizationStatus.KEPT],
        reverted=statuses[OptimizationStatus.REVERTED],
        audit=checked,
        final_tunables=lane.tunables,
        history=[
            f"{(o.created_at - ManualClock.DEFAULT_START_EPOCH_S) / 60:5.1f} min "
            f"{regime_of(o.created_at - ManualClock.DEFAULT_START_EPOCH_S, starts) + 1}:"
            f"{REGIMES[regime_of(o.created_at - ManualClock.DEFAULT_START_EPOCH_S, starts)].name:<14} "
            f"{o.parameter} {o.old_value:g} -> {o.new_value:g}: {o.status.value}"
            for o in sorted(records, key=lambda o: o.created_at)
        ],
    )


# --- report ---------------------------------------------------------------------------------


def ratio(value: float | None, baseline: float | None) -> str:
    if value is None or baseline is None or baseline == 0:
        return "n/a"
    return f"{value / baseline:.2f}x"


def figure(name: str, value: float | None, baseline: float | None, unit: str, digits: int = 0) -> None:
    def show(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.{digits}f} {unit}"

    print(f"{name}: {show(value)} (baseline: {show(baseline)}, ratio: {ratio(value, baseline)})")


def report(ours: RunResult, baseline: RunResult, elapsed_s: float) -> None:
    outage = [i for i, r in enumerate(REGIMES) if r.outage]
    figure("optimizer_success_rate", ours.success_rate_pct(), baseline.success_rate_pct(), "%", 2)
    figure("optimizer_p99_latency", ours.p99_ms(), baseline.p99_ms(), "ms")
    figure(
        "optimizer_p99_latency_accepted",
        ours.p99_ms(accepted_only=True),
        baseline.p99_ms(accepted_only=True),
        "ms",
    )
    figure("optimizer_retries_sent", ours.retries_sent, baseline.retries_sent, "retries")
    ours_outage_retries, base_outage_retries = ours.retries_in(outage), baseline.retries_in(outage)
    figure("optimizer_retries_during_outage", ours_outage_retries, base_outage_retries, "retries")
    figure("optimizer_timeouts", ours.timeouts, baseline.timeouts, "timeouts")
    figure("optimizer_optimizations_kept", ours.kept, baseline.kept, "optimizations")
    figure("optimizer_optimizations_reverted", ours.reverted, baseline.reverted, "optimizations")
    for cause in FAILURE_CAUSES:
        figure(
            f"optimizer_failed_{cause}",
            ours.audit.failure_causes[cause],
            baseline.audit.failure_causes[cause],
            "payments",
        )
    figure("optimizer_payments_unknown", ours.audit.unknown, baseline.audit.unknown, "payments")
    figure(
        "optimizer_payments_charged_but_failed",
        ours.audit.charged_but_failed,
        baseline.audit.charged_but_failed,
        "payments",
    )
    figure(
        "optimizer_payments_accepted_without_charge",
        ours.audit.accepted_without_charge,
        baseline.audit.accepted_without_charge,
        "payments",
    )
    figure(
        "optimizer_payments_without_outcome",
        ours.payments - len(ours.outcomes),
        baseline.payments - len(baseline.outcomes),
        "payments",
    )
    for i, regime in enumerate(REGIMES):
        name = f"optimizer_{i + 1}_{regime.name}"
        figure(f"{name}_success_rate", ours.success_rate_pct(i), baseline.success_rate_pct(i), "%", 2)
        figure(f"{name}_p99_latency", ours.p99_ms(i), baseline.p99_ms(i), "ms")
        figure(f"{name}_retries_sent", ours.retries_in([i]), baseline.retries_in([i]), "retries")
        figure(f"{name}_timeouts", ours.timeouts_in(i), baseline.timeouts_in(i), "timeouts")
        causes = ours.audit.failure_causes_by_regime[i] + baseline.audit.failure_causes_by_regime[i]
        for cause in (c for c in FAILURE_CAUSES if causes[c]):
            figure(
                f"{name}_failed_{cause}",
                ours.audit.failure_causes_by_regime[i][cause],
                baseline.audit.failure_causes_by_regime[i][cause],
                "payments",
            )
    t = ours.final_tunables
    print(
        f"({ours.payments} payments per run, one every {MEAN_GAP_S:g} s on average, to {PROVIDER} with no "
        f"backup; a day compressed to {DAY_S / 3600:g} simulated hours: "
        f"{', '.join(f'{r.name} {r.minutes:g} min' for r in REGIMES)}; optimizer every "
        f"{OPTIMIZATION_INTERVAL_MS / 1000:g} s, its tunables at the end: timeout {t.timeout_s:g} s, "
        f"{t.max_attempts} attempts, rate limit {t.rate_limit_per_s:g}/s; {elapsed_s:.1f} s wall)"
    )
    print("(the optimizer's changes, by simulated start time and regime:)")
    for entry in ours.history:
        print(f"  {entry}")


async def main(seeds: Sequence[int]) -> None:
    logging.getLogger("uvicorn.error").addFilter(_QuietClientDisconnects())
    started = time.perf_counter()
    pairs: list[tuple[RunResult, RunResult]] = []
    for seed in seeds:
        with anyio.fail_after(WALL_CLOCK_BOUND_S):
            pairs.append(
                (await run_day(optimizer_on=True, seed=seed), await run_day(optimizer_on=False, seed=seed))
            )
        if len(pairs) == 1:
            report(*pairs[0], time.perf_counter() - started)
    verdict(pairs, list(seeds))
    print(f"({len(pairs)} days, {time.perf_counter() - started:.0f} s wall)")


def pooled_success_pct(runs: Sequence[RunResult]) -> float:
    outcomes = [o for run in runs for o in run.outcomes]
    return 100 * sum(o.accepted for o in outcomes) / len(outcomes) if outcomes else 0.0


def sign_flip_p(diffs: Sequence[float], alternative: str) -> float:
    """Exact paired permutation test of a zero mean difference: every assignment of signs.

    `alternative` is "two-sided", "greater" (the mean is > 0) or "less". No normality assumed;
    with n days there are 2**n assignments (1,024 for 10), so the smallest p-value is 2**-n.
    """
    n = len(diffs)
    if n == 0:
        return 1.0
    if n > 20:
        raise ValueError(f"sign_flip_p: at most 20 days for the exact test, got {n}")
    observed = sum(diffs)
    magnitudes = [abs(d) for d in diffs]
    hits = 0
    for mask in range(2**n):
        total = sum(m if mask >> k & 1 else -m for k, m in enumerate(magnitudes))
        if alternative == "greater":
            hits += total >= observed - 1e-12
        elif alternative == "less":
            hits += total <= observed + 1e-12
        else:
            hits += abs(total) >= abs(observed) - 1e-12
    return hits / 2**n


def _spread(diffs: Sequence[float], digits: int) -> str:
    sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return (
        f"sd {sd:.{digits}f}, min {min(diffs):+.{digits}f}, max {max(diffs):+.{digits}f}, "
        f"per day {' '.join(f'{d:+.{digits}f}' for d in diffs)}"
    )


def verdict(pairs: Sequence[tuple[RunResult, RunResult]], seeds: Sequence[int]) -> None:
    """Per-day figures and differences, paired tests, the no-harm check per regime, the verdict."""
    outage = [i for i, r in enumerate(REGIMES) if r.outage]
    success, p99, retries = [], [], []
    for seed, (a, b) in zip(seeds, pairs, strict=True):
        rate_a, rate_b = a.success_rate_pct() or 0.0, b.success_rate_pct() or 0.0
        success.append(rate_a - rate_b)
        p99.append((a.p99_ms() or 0.0) - (b.p99_ms() or 0.0))
        retries.append(float(a.retries_in(outage) - b.retries_in(outage)))
        print(
            f"optimizer_day_{seed}: success {rate_a:.2f} % vs {rate_b:.2f} %, p99 {a.p99_ms() or 0:.0f} vs "
            f"{b.p99_ms() or 0:.0f} ms, retries during the outage {a.retries_in(outage)} vs {b.retries_in(outage)}"
        )
        by_regime = ", ".join(
            f"{regime.name} {a.success_rate_pct(i) or 0:.2f}/{b.success_rate_pct(i) or 0:.2f}"
            for i, regime in enumerate(REGIMES)
        )
        print(f"  (success % by regime, optimizer/static: {by_regime})")
    days = len(pairs)
    ours_rate = pooled_success_pct([a for a, _ in pairs])
    base_rate = pooled_success_pct([b for _, b in pairs])
    p_gain = sign_flip_p(success, "two-sided")
    mean_gain = statistics.fmean(success)
    print(
        f"optimizer_success_rate: {ours_rate:.2f} % (baseline: {base_rate:.2f} %, ratio: "
        f"{ours_rate / base_rate if base_rate else math.nan:.4f}) over {days} days pooled"
    )
    print(
        f"optimizer_success_rate_difference: {mean_gain:+.2f} points/day mean ({_spread(success, 2)}; "
        f"paired sign-flip p={p_gain:.3f}, two-sided)"
    )
    print(
        f"optimizer_p99_latency_difference: {statistics.fmean(p99):+.0f} ms/day mean ({_spread(p99, 0)}; "
        f"p(worse)={sign_flip_p(p99, 'greater'):.3f})"
    )
    print(
        f"optimizer_outage_retries_difference: {statistics.fmean(retries):+.1f} retries/day mean "
        f"({_spread(retries, 0)}; p={sign_flip_p(retries, 'two-sided'):.3f}, two-sided)"
    )
    harmed: list[str] = []
    for i, regime in enumerate(REGIMES):
        diffs = [(a.success_rate_pct(i) or 0.0) - (b.success_rate_pct(i) or 0.0) for a, b in pairs]
        p_worse = sign_flip_p(diffs, "less")
        worse = statistics.fmean(diffs) < 0 and p_worse < SIGNIFICANCE
        if worse:
            harmed.append(regime.name)
        print(
            f"optimizer_regime_{i + 1}_{regime.name}_success_difference: {statistics.fmean(diffs):+.2f} "
            f"points/day mean ({_spread(diffs, 2)}; p(worse)={p_worse:.3f}): "
            f"{'WORSE than static beyond noise' if worse else 'no harm shown'}"
        )
    if statistics.fmean(p99) > 0 and sign_flip_p(p99, "greater") < SIGNIFICANCE:
        harmed.append("p99 latency")
    gain = mean_gain > 0 and p_gain < SIGNIFICANCE
    no_harm = not harmed
    if gain:
        plain = f"a significant gain of {mean_gain:+.2f} points/day (p={p_gain:.3f})"
    else:
        plain = f"no significant gain ({mean_gain:+.2f} points/day, p={p_gain:.3f})"
    plain += "; no harm shown" if no_harm else f"; harm beyond noise in: {', '.join(harmed)}"
    print(
        f"optimizer_verdict: over {days} days ({'held-out' if seeds[0] >= REPORT_SEED else 'development'}): {plain}"
    )
    print(f"optimizer_target significant_gain: {'met' if gain else 'not met'}")
    print(f"optimizer_target no_harm: {'met' if no_harm else 'not met'}")
    print("met" if gain and no_harm else "not met")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="2 days only (a smoke run, not a verdict)")
    size.add_argument("--days", type=int, help=f"days to replay (default {DEFAULT_DAYS}, at most 20)")
    parser.add_argument(
        "--seeds", choices=("report", "dev"), default="report", help="held-out (default) or development days"
    )
    args = parser.parse_args()
    count = 2 if args.quick else args.days or DEFAULT_DAYS
    if not 1 <= count <= 20:
        parser.error("--days must be in [1, 20]")
    first = SEED if args.seeds == "dev" else REPORT_SEED  # SEED..SEED+3 are the development days
    chosen = [first + i for i in range(count)]
    anyio.run(main, chosen)
