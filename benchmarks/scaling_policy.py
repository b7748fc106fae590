"""The predictive scaling policy against a fairly configured Kubernetes HPA on seeded synthetic traces.

Run: `python benchmarks/scaling_policy.py` (default: the three reporting seeds, 1 week per trace,
about 2 minutes on 2 CPUs; `--quick`: one reporting seed; `--full`: 4 weeks per trace; `--seeds
dev` replays the development seeds instead; `--family NAME` narrows it down). Every trace is replayed by
`mcp_autonomy.autonomy.scaling.simulate.replay`, the code behind `mcp-autonomy simulate-scaling`,
with the same semantics: 15 s steps, pods ready 60 s after they are added, 2..80 replicas,
TARGET_TPM_PER_INSTANCE 100 (the load one instance should carry) and SCALE_UP_THRESHOLD 0.8, so an
instance can carry 125 TPM and a deployment is short of capacity whenever the load exceeds its
ready replicas x 125. The baseline is a default-behaviour HPA on a per-pod TPM metric aiming at
100 TPM per pod: 80 % of capacity, the headroom an operator gives it. The policy runs with its
defaults (cost budget 1.0) and is told the same target.

Traffic is counted per minute: Poisson arrivals around a mean that drifts slowly (a log-AR(1), 3 %
with a 30-minute time constant) with 1.5 % extra jitter. Shapes: seasonal (`daily_weekly`: weekday
and weekend peaks plus two surprise spikes; `sharp_peaks`: step-shaped openings; `smooth_sinusoid`;
`shifted_clock`: the daily clock moves an hour; `hourly_steps`: one point an hour;
`five_minute_rollup`: a quieter shape as 5-minute means, one point every 5 minutes), trending
(`growth`: +4 % a day), bursty (`noisy`: 25 % jitter and random bursts; `timer_bursts`: a job every
15 minutes and random bursts), with gaps (`gaps_level_shift`: hours-long holes in the trace and a
x1.6 level shift) and one with no exploitable pattern (`no_seasonality`).

Development and reporting data are apart: the policy's design and defaults were developed on
seeds 1-3 (`--seeds dev`); the default run reports seeds 101-103, which were not looked at while
tuning. The rule for load metrics that update every few minutes (`scaling.cadence`) was also
developed on four public traces that are not NAB series (5- and 10-minute flight departures,
half-hourly electricity demand, hourly commits): `python scripts/public_scaling_traces.py` builds
them into .cache/public-traces and `--public .cache/public-traces` replays them whole (about 4
minutes); they are development data, not held out. `five_minute_rollup` was added with that rule
and first run on its reporting seeds after it was written.

The target, per trace and seed: minutes short of capacity at most 0.5 x the HPA's + 5 (on the
patternless trace: no more than the HPA's) at no more than 1.0 x its instance-minutes.

Beside both runs the clairvoyant oracle (`simulate.ClairvoyantPolicy`: it knows the whole trace,
adds pods one start-up before the load needs them and removes them at once) is never short at the
least spend any never-short policy could have. Its line shows that floor against the HPA's spend
and how much of the HPA's spend above it the policy saved: the distance left to the best possible,
not a target (no causal policy reaches it on noisy load). The scaling actions (steps at which
the replica count changed) are printed too, not judged: the policy changes the count 1.2x to
8.8x as often as the HPA on the reporting seeds (it scales down sooner and in smaller steps; on
smooth load the HPA's 10 % tolerance rarely moves).

`--restarts` is the restart drill: a deployed engine restarts (deploys, crashes, leader changes),
so each trace is also replayed with the policy restarted once a day at a seeded time between
08:00 and 18:00, warmed up from the load recorded once a minute as the engine does
(`PredictivePolicy.warm_up`), beside the same restarts with only the forecaster fed (what the
engine did before) and no restarts at all; the target applies to the warmed-up restarts.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Plain `python benchmarks/scaling_policy.py` puts benchmarks/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_autonomy.autonomy.scaling.decision import NO_GUARDS, ScaleGuards, ScalingDecision, ScalingPolicy
from mcp_autonomy.autonomy.scaling.predictive import PredictivePolicy
from mcp_autonomy.autonomy.scaling.simulate import (
    ClairvoyantPolicy,
    LoadTrace,
    ReplayStats,
    SimulationConfig,
    build_hpa,
    build_policy,
    read_trace,
    replay,
)

START_S = 1_767_571_200.0  # Monday 2026-01-05 00:00 UTC
MINUTES_PER_DAY = 1440
TARGET_TPM = 100.0
SCALE_UP_THRESHOLD = 0.8  # the HPA aims at 80 % of an instance's capacity
PEAK_TPM = 3000.0
DRIFT = 0.03  # sigma of the slow log-AR(1) deviation of the mean (30-minute time constant)
JITTER = 0.015  # sigma of the independent per-minute deviation (overdispersion)
DEV_SEEDS = (1, 2, 3)
REPORT_SEEDS = (101, 102, 103)
SHORT_RATIO_TARGET = 0.5
SHORT_ALLOWANCE_MIN = 5.0
COST_RATIO_TARGET = 1.0
PATTERNLESS = frozenset({"no_seasonality"})
SIMULATION = SimulationConfig(
    target_tpm_per_instance=TARGET_TPM,
    scale_up_threshold=SCALE_UP_THRESHOLD,
    min_replicas=2,
    max_replicas=80,
    startup_s=60.0,
)

Generator = Callable[[int, np.random.Generator], np.ndarray]


def _bump(hours: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((hours - center) / width) ** 2)


def _hours_and_days(minutes: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(minutes)
    return (index % MINUTES_PER_DAY) / 60.0, index // MINUTES_PER_DAY


def _weekday_weekend(hours: np.ndarray, days: np.ndarray, shift_h: np.ndarray | float = 0.0) -> np.ndarray:
    """Morning, lunch and evening peaks on weekdays; a lower, later, rounder shape at weekends."""
    h = hours - shift_h
    weekday = 0.12 + 0.75 * _bump(h, 9.0, 1.3) + 0.55 * _bump(h, 12.8, 0.9) + 0.95 * _bump(h, 18.0, 1.6)
    weekend = 0.12 + 0.55 * _bump(h, 13.5, 3.0) + 0.35 * _bump(h, 20.0, 1.5)
    is_weekend = (days % 7) >= 5
    return np.where(is_weekend, weekend, weekday)


def _spike(load: np.ndarray, start_minute: int, length: int, factor: float, ramp: int = 2) -> None:
    end = min(start_minute + length, load.size)
    profile = np.ones(end - start_minute) * factor
    profile[:ramp] = np.linspace(1.0, factor, ramp + 1)[1:]
    load[start_minute:end] *= profile


def _noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Independent multiplicative noise per minute, mean 1 (lognormal)."""
    return np.exp(rng.normal(-0.5 * sigma**2, sigma, size))


def _drift(rng: np.random.Generator, size: int, sigma: float, minutes: float) -> np.ndarray:
    """Slow multiplicative deviations, mean 1: a log-AR(1) with this stationary sigma and time constant.

    Real traffic is busier or quieter than usual for tens of minutes at a time (a football match,
    a salary day, an outage elsewhere), not only from one minute to the next.
    """
    keep = math.exp(-1.0 / minutes)
    shocks = rng.normal(0.0, sigma * math.sqrt(1.0 - keep**2), size)
    log_dev = np.empty(size)
    value = rng.normal(0.0, sigma)
    for i in range(size):
        value = keep * value + shocks[i]
        log_dev[i] = value
    return np.exp(log_dev - 0.5 * sigma**2)


def _traffic(
    rng: np.random.Generator, mean_tpm: np.ndarray, *, drift: float = DRIFT, jitter: float = JITTER
) -> np.ndarray:
    """Transactions counted per minute: Poisson around a mean with slow drift and extra jitter."""
    size = mean_tpm.size
    rate = mean_tpm * _drift(rng, size, drift, 30.0) * _noise(rng, size, jitter)
    counts: np.ndarray = rng.poisson(rate).astype(float)
    return counts


def daily_weekly(minutes: int, rng: np.random.Generator) -> np.ndarray:
    hours, days = _hours_and_days(minutes)
    load = _traffic(rng, PEAK_TPM * _weekday_weekend(hours, days))
    total_days = minutes // MINUTES_PER_DAY
    # An afternoon surge (x2.2 for 20 minutes) a third of the way in, a night burst (x4) later.
    _spike(load, (total_days // 3) * MINUTES_PER_DAY + 14 * 60 + 10, 20, 2.2)
    _spike(load, (5 * total_days // 7) * MINUTES_PER_DAY + 3 * 60, 12, 4.0)
    return load


def sharp_peaks(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """Step-like peaks: a market opening at 09:00 and a payroll run at 17:30, weekdays only."""
    hours, days = _hours_and_days(minutes)
    weekday = (days % 7) < 5
    level = np.full(minutes, 0.2)
    opening = (hours >= 9.0) & (hours < 10.5)
    payroll = (hours >= 17.5) & (hours < 18.25)
    level = np.where(weekday & opening, 0.9, level)
    level = np.where(weekday & payroll, 1.0, level)
    # Two-minute ramps into and out of each peak.
    kernel = np.ones(3) / 3.0
    level = np.convolve(level, kernel, mode="same")
    return _traffic(rng, PEAK_TPM * level)


def growth(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """The daily/weekly shape growing 4 % a day (about x3 over four weeks)."""
    hours, days = _hours_and_days(minutes)
    trend = 1.04 ** (np.arange(minutes) / MINUTES_PER_DAY)
    return _traffic(rng, 0.5 * PEAK_TPM * trend * _weekday_weekend(hours, days))


def noisy(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """Heavy independent per-minute noise (25 %) plus random bursts (three a day, x1.5-2.5 for 3-15 min)."""
    hours, days = _hours_and_days(minutes)
    load = _traffic(rng, PEAK_TPM * _weekday_weekend(hours, days), jitter=0.25)
    for start in rng.integers(0, minutes - 20, size=3 * max(1, minutes // MINUTES_PER_DAY)):
        _spike(load, int(start), int(rng.integers(3, 16)), float(rng.uniform(1.5, 2.5)), ramp=1)
    return load


def smooth_sinusoid(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """Page-view-like: a sinusoidal day (trough/peak 1:2.5), weekends 15 % lower, Poisson noise."""
    hours, days = _hours_and_days(minutes)
    daily = 1.0 + 0.43 * np.sin(2 * math.pi * (hours - 10.0) / 24.0)
    weekly = np.where((days % 7) >= 5, 0.85, 1.0)
    mean = 0.6 * PEAK_TPM * daily * weekly
    return rng.poisson(mean).astype(float)


def shifted_clock(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """The daily/weekly shape whose clock moves an hour earlier after ten days (a time change)."""
    hours, days = _hours_and_days(minutes)
    shift = np.where(days >= 10, -1.0, 0.0)
    return _traffic(rng, PEAK_TPM * _weekday_weekend(hours, days, shift))


def no_seasonality(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """A mean-reverting random walk in log space (hours-long swings), noise and two spikes."""
    steps = rng.normal(0.0, 0.02, minutes)
    log_level = np.empty(minutes)
    value = 0.0
    reversion = 1.0 / 240.0
    for i in range(minutes):
        value += steps[i] - reversion * value
        log_level[i] = value
    load = _traffic(rng, 0.5 * PEAK_TPM * np.exp(log_level), drift=0.0001)
    _spike(load, minutes // 3, 15, 2.5)
    _spike(load, 2 * minutes // 3, 30, 1.8)
    return load


def hourly_steps(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """`daily_weekly` averaged per hour: a trace with one point an hour, held in between."""
    load = daily_weekly(minutes, rng)
    return np.repeat(load.reshape(-1, 60).mean(axis=1), 60)


def five_minute_rollup(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """`daily_weekly` exported as 5-minute means, one point every 5 minutes held in between (a
    per-5-minute metric or log rollup), each 10 % overdispersed (batched arrivals: the public
    5-minute rollups we developed on vary about that much from one point to the next)."""
    five = daily_weekly(minutes, rng).reshape(-1, 5).mean(axis=1) * _noise(rng, minutes // 5, 0.10)
    return np.repeat(five, 5)


def timer_bursts(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """A daily curve, a timer-triggered job every 15 minutes (+1500 TPM for a minute) and random
    bursts (two a day, +500..2500 TPM for 2-20 minutes)."""
    hours, _ = _hours_and_days(minutes)
    index = np.arange(minutes)
    mean = 300.0 + 200.0 * np.sin(2 * math.pi * (hours - 14.0) / 24.0)
    mean = mean + np.where(index % 15 == 0, 1500.0, 0.0)
    for start in rng.integers(0, minutes - 30, size=2 * max(1, minutes // MINUTES_PER_DAY)):
        mean[start : start + int(rng.integers(2, 21))] += float(rng.uniform(500.0, 2500.0))
    return _traffic(rng, mean)


def gaps_level_shift(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """`daily_weekly` whose level jumps x1.6 for good after the first third (a new customer)."""
    hours, days = _hours_and_days(minutes)
    shift = np.where(np.arange(minutes) >= minutes // 3, 1.6, 1.0)
    return _traffic(rng, 0.6 * PEAK_TPM * shift * _weekday_weekend(hours, days))


FAMILIES: dict[str, Generator] = {
    "daily_weekly": daily_weekly,
    "sharp_peaks": sharp_peaks,
    "growth": growth,
    "noisy": noisy,
    "smooth_sinusoid": smooth_sinusoid,
    "shifted_clock": shifted_clock,
    "no_seasonality": no_seasonality,
    "hourly_steps": hourly_steps,
    "five_minute_rollup": five_minute_rollup,
    "timer_bursts": timer_bursts,
    "gaps_level_shift": gaps_level_shift,
}
POINT_EVERY_MINUTES = {"hourly_steps": 60, "five_minute_rollup": 5}  # the others have one point a minute
GAPPY = frozenset({"gaps_level_shift"})


def _gap_mask(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """Which minutes keep their point: two holes a day of 5 minutes to 3 hours (a collector down)."""
    keep = np.ones(minutes, dtype=bool)
    for start in rng.integers(MINUTES_PER_DAY, minutes - 200, size=2 * max(1, minutes // MINUTES_PER_DAY)):
        keep[int(start) : int(start) + int(rng.integers(5, 181))] = False
    return keep


def make_trace(family: str, weeks: int, seed: int) -> LoadTrace:
    """The family's trace: `weeks` weeks from Monday 2026-01-05 00:00 UTC, seeded."""
    minutes = weeks * 7 * MINUTES_PER_DAY
    rng = np.random.default_rng(seed)
    load = FAMILIES[family](minutes, rng)
    every = POINT_EVERY_MINUTES.get(family, 1)
    index = np.arange(0, minutes, every)
    if family in GAPPY:
        index = index[_gap_mask(minutes, rng)[index]]
    stamps = START_S + 60.0 * index
    return LoadTrace(tuple(stamps.tolist()), tuple(np.round(load[index], 3).tolist()))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One trace's figures: the policy's and the HPA's minutes short and instance-minutes."""

    family: str
    seed: int
    short_min: float
    hpa_short_min: float
    instance_min: float
    hpa_instance_min: float
    oracle_instance_min: float
    actions: int = 0
    hpa_actions: int = 0

    @property
    def short_limit_min(self) -> float:
        if self.family in PATTERNLESS:
            return self.hpa_short_min
        return SHORT_RATIO_TARGET * self.hpa_short_min + SHORT_ALLOWANCE_MIN

    @property
    def cost_ratio(self) -> float:
        return self.instance_min / self.hpa_instance_min

    @property
    def met(self) -> bool:
        return self.short_min <= self.short_limit_min and self.cost_ratio <= COST_RATIO_TARGET

    @property
    def oracle_gap_closed(self) -> float | None:
        """(HPA - policy) / (HPA - oracle) instance-minutes: 1 is the oracle's spend, 0 the HPA's."""
        avoidable = self.hpa_instance_min - self.oracle_instance_min
        return (self.hpa_instance_min - self.instance_min) / avoidable if avoidable > 0 else None


def run_trace(job: tuple[str, int, int]) -> Outcome:
    """Replay one family and seed through the policy, the HPA and the clairvoyant oracle."""
    family, weeks, seed = job
    trace = make_trace(family, weeks, seed)
    policies: dict[str, ScalingPolicy] = {
        "policy": build_policy(SIMULATION),
        "hpa": build_hpa(SIMULATION),
        "oracle": ClairvoyantPolicy(trace, SIMULATION),
    }
    stats = replay(trace, policies, SIMULATION)
    policy, hpa = stats["policy"], stats["hpa"]
    return Outcome(
        family,
        seed,
        policy.minutes_short_of_capacity,
        hpa.minutes_short_of_capacity,
        policy.instance_minutes,
        hpa.instance_minutes,
        stats["oracle"].instance_minutes,
        policy.scaling_actions,
        hpa.scaling_actions,
    )


def _ratio(value: float, baseline: float) -> str:
    if baseline == 0:
        return "1.000" if value == 0 else "inf"
    return f"{value / baseline:.3f}"


RECORD_EVERY_S = 60.0  # the engine records the measured load once a minute (scaler.LOAD_SAMPLE_S)
RECORD_KEPT_S = 15 * 86_400.0  # and keeps 15 days of it (scaler.LOAD_HISTORY_S)


class RestartedPolicy:
    """The predictive policy restarted at given times (a deploy, a crash), as the engine restarts it.

    Between restarts it records the load once a minute, as the engine's store does. At each
    restart a fresh policy learns from that record: through `PredictivePolicy.warm_up` (what the
    engine does) or, with `forecaster_only`, by feeding only its forecaster (what it did before).
    """

    name = "predictive"

    def __init__(self, restarts_s: list[float], *, forecaster_only: bool) -> None:
        self._restarts = sorted(restarts_s)
        self._forecaster_only = forecaster_only
        self._record: list[tuple[float, float]] = []
        self._policy: PredictivePolicy = build_policy(SIMULATION)

    def _restart(self, now_s: float) -> None:
        kept = [(at, tpm) for at, tpm in self._record if at >= now_s - RECORD_KEPT_S]
        self._policy = build_policy(SIMULATION)
        if self._forecaster_only:
            for at, tpm in kept:
                self._policy.forecaster.observe(at, tpm)
        else:
            self._policy.warm_up(kept)

    def recommend(
        self, now_s: float, load_tpm: float, current: int, ready: int, guards: ScaleGuards = NO_GUARDS
    ) -> ScalingDecision:
        while self._restarts and now_s >= self._restarts[0]:
            self._restarts.pop(0)
            self._restart(now_s)
        if not self._record or now_s - self._record[-1][0] >= RECORD_EVERY_S:
            self._record.append((now_s, load_tpm))
        return self._policy.recommend(now_s, load_tpm, current, ready, guards)


def daily_restarts(weeks: int, seed: int) -> list[float]:
    """One restart a day from the second day on, at a seeded time between 08:00 and 18:00 (deploy hours)."""
    rng = np.random.default_rng(seed + 10_000)
    days = range(1, weeks * 7)
    return [START_S + day * 86_400.0 + float(rng.uniform(8 * 3600.0, 18 * 3600.0)) for day in days]


@dataclass(frozen=True, slots=True)
class RestartOutcome:
    """One trace replayed without restarts, with daily restarts warmed up, with forecaster-only restarts."""

    family: str
    seed: int
    stats: dict[str, ReplayStats]

    def met(self) -> bool:
        """The warmed-up restarts meet the benchmark's target against the HPA."""
        warm, hpa = self.stats["warm_restarts"], self.stats["hpa"]
        limit = (
            hpa.minutes_short_of_capacity
            if self.family in PATTERNLESS
            else SHORT_RATIO_TARGET * hpa.minutes_short_of_capacity + SHORT_ALLOWANCE_MIN
        )
        return (
            warm.minutes_short_of_capacity <= limit
            and warm.instance_minutes <= COST_RATIO_TARGET * hpa.instance_minutes
        )


def run_restart_trace(job: tuple[str, int, int]) -> RestartOutcome:
    family, weeks, seed = job
    trace = make_trace(family, weeks, seed)
    restarts = daily_restarts(weeks, seed)
    policies = {
        "no_restarts": build_policy(SIMULATION),
        "warm_restarts": RestartedPolicy(restarts, forecaster_only=False),
        "forecaster_only_restarts": RestartedPolicy(restarts, forecaster_only=True),
        "hpa": build_hpa(SIMULATION),
    }
    return RestartOutcome(family, seed, replay(trace, policies, SIMULATION))  # type: ignore[arg-type]


def report_restarts(families: list[str], weeks: int, seeds: tuple[int, ...]) -> bool:
    """Per family: minutes short and spend without restarts, with warmed and forecaster-only restarts."""
    jobs = [(family, weeks, seed) for family in families for seed in seeds]
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        outcomes = list(pool.map(run_restart_trace, jobs))
    print(
        f"# restart drill: {len(families)} families x seeds {', '.join(map(str, seeds))}, {weeks} week(s) each, "
        "the policy restarted once a day (08:00-18:00) and warmed up from the load recorded once a minute; "
        "target as above, for the warmed-up restarts"
    )
    all_met = True
    for family in families:
        rows = [o for o in outcomes if o.family == family]

        def mean(name: str, rows: list[RestartOutcome] = rows) -> tuple[float, float]:
            short = statistics.fmean(o.stats[name].minutes_short_of_capacity for o in rows)
            cost = statistics.fmean(
                o.stats[name].instance_minutes / o.stats["hpa"].instance_minutes for o in rows
            )
            return short, cost

        (none_s, none_c), (warm_s, warm_c), (cold_s, cold_c) = (
            mean(n) for n in ("no_restarts", "warm_restarts", "forecaster_only_restarts")
        )
        hpa_s = statistics.fmean(o.stats["hpa"].minutes_short_of_capacity for o in rows)
        failed = [o.seed for o in rows if not o.met()]
        all_met = all_met and not failed
        print(
            f"scaling_restarts_{family}: warmed {warm_s:.1f} min short at {warm_c:.3f}x, forecaster-only "
            f"{cold_s:.1f} at {cold_c:.3f}x, no restarts {none_s:.1f} at {none_c:.3f}x (HPA: {hpa_s:.1f} min): "
            + ("met" if not failed else f"not met (seeds {', '.join(map(str, failed))})")
        )
    return all_met


PUBLIC_TRACES = {  # scripts/public_scaling_traces.py: name -> TARGET_TPM_PER_INSTANCE
    "flights_all_5min": 20.0,
    "flights_ord_10min": 25.0,
    "taylor_30min": 100.0,
    "github_1h": 100.0,
}
PUBLIC_SIMULATION_MAX_REPLICAS = 500


def run_public_trace(job: tuple[str, str]) -> tuple[str, ReplayStats, ReplayStats, ReplayStats]:
    """Replay one public trace (built by scripts/public_scaling_traces.py): policy, HPA, oracle."""
    name, directory = job
    config = SimulationConfig(
        target_tpm_per_instance=PUBLIC_TRACES[name],
        scale_up_threshold=SCALE_UP_THRESHOLD,
        max_replicas=PUBLIC_SIMULATION_MAX_REPLICAS,
    )
    trace = read_trace(Path(directory) / f"{name}.csv")
    policies: dict[str, ScalingPolicy] = {
        "policy": build_policy(config),
        "hpa": build_hpa(config),
        "oracle": ClairvoyantPolicy(trace, config),
    }
    stats = replay(trace, policies, config)
    return name, stats["policy"], stats["hpa"], stats["oracle"]


def report_public(directory: str) -> bool:
    """The development traces, whole: per trace minutes short <= 0.5x the HPA's, <= 1.0x its spend."""
    missing = [n for n in PUBLIC_TRACES if not (Path(directory) / f"{n}.csv").exists()]
    if missing:
        raise SystemExit(
            f"--public {directory}: {', '.join(missing)} missing; run scripts/public_scaling_traces.py"
        )
    jobs = [(name, directory) for name in PUBLIC_TRACES]
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        results = list(pool.map(run_public_trace, jobs))
    print("# public development traces (the cadence rule was developed on them: not held out), whole length")
    all_met = True
    for name, policy, hpa, oracle in results:
        short, hpa_short = policy.minutes_short_of_capacity, hpa.minutes_short_of_capacity
        cost = policy.instance_minutes / hpa.instance_minutes
        oracle_cost = oracle.instance_minutes / hpa.instance_minutes
        met = short <= SHORT_RATIO_TARGET * hpa_short and cost <= COST_RATIO_TARGET
        all_met = all_met and met
        print(
            f"scaling_public_{name}: {short:g} min short (baseline: {hpa_short:g} min, ratio: "
            f"{_ratio(short, hpa_short)}) at {cost:.3f}x instance-minutes, peak {policy.peak_replicas} vs "
            f"{hpa.peak_replicas} replicas; oracle never short at {oracle_cost:.3f}x: {'met' if met else 'not met'}"
        )
    return all_met


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="one reporting seed")
    size.add_argument("--full", action="store_true", help="4 weeks per trace")
    parser.add_argument("--weeks", type=int, help="weeks per trace (default 1, --full 4)")
    parser.add_argument("--seeds", choices=("report", "dev"), default="report", help="which seeds")
    parser.add_argument("--family", choices=sorted(FAMILIES), action="append", help="only these families")
    parser.add_argument(
        "--restarts",
        action="store_true",
        help="instead, the restart drill: the policy restarted daily, warmed up vs forecaster-only",
    )
    parser.add_argument(
        "--public",
        metavar="DIR",
        help="instead, replay the public development traces in DIR (scripts/public_scaling_traces.py)",
    )
    args = parser.parse_args()
    if args.public:
        public_met = report_public(args.public)
        print("met" if public_met else "not met")
        return 0
    weeks = args.weeks or (4 if args.full else 1)
    if weeks < 1:
        parser.error("--weeks must be >= 1")
    seeds: tuple[int, ...] = DEV_SEEDS if args.seeds == "dev" else REPORT_SEEDS
    if args.quick:
        seeds = seeds[:1]
    families = args.family or list(FAMILIES)
    started = time.perf_counter()
    if args.restarts:
        restarts_met = report_restarts(families, weeks, seeds)
        print(f"# {time.perf_counter() - started:.0f}s")
        print("met" if restarts_met else "not met")
        return 0
    jobs = [(family, weeks, seed) for family in families for seed in seeds]
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        outcomes = list(pool.map(run_trace, jobs))
    print(
        f"# {len(families)} families x seeds {', '.join(map(str, seeds))} ({args.seeds}), {weeks} week(s) each; "
        f"HPA at {SCALE_UP_THRESHOLD:.0%} of capacity; target: short <= {SHORT_RATIO_TARGET}x HPA + "
        f"{SHORT_ALLOWANCE_MIN:g} min (patternless: <= HPA), instance-minutes <= {COST_RATIO_TARGET}x"
    )
    all_met = True
    for family in families:
        rows = [o for o in outcomes if o.family == family]
        short = [o.short_min for o in rows]
        hpa_short = [o.hpa_short_min for o in rows]
        cost = [o.cost_ratio for o in rows]
        mean_short, mean_hpa_short = statistics.fmean(short), statistics.fmean(hpa_short)
        mean_inst = statistics.fmean(o.instance_min for o in rows)
        mean_hpa_inst = statistics.fmean(o.hpa_instance_min for o in rows)
        print(
            f"scaling_{family}_minutes_short: {mean_short:.1f} min "
            f"(baseline: {mean_hpa_short:.1f} min, ratio: {_ratio(mean_short, mean_hpa_short)}) "
            f"per seed {'/'.join(f'{v:g}' for v in short)} vs {'/'.join(f'{v:g}' for v in hpa_short)}"
        )
        print(
            f"scaling_{family}_instance_minutes: {mean_inst:.0f} instance-min "
            f"(baseline: {mean_hpa_inst:.0f} instance-min, ratio: {_ratio(mean_inst, mean_hpa_inst)}) "
            f"per seed {min(cost):.3f}..{max(cost):.3f}"
        )
        actions = statistics.fmean(o.actions for o in rows)
        hpa_actions = statistics.fmean(o.hpa_actions for o in rows)
        print(
            f"scaling_{family}_scaling_actions: {actions:.0f} (baseline: {hpa_actions:.0f}, ratio: "
            f"{_ratio(actions, hpa_actions)}): steps at which the replica count changed, not judged"
        )
        oracle_cost = [o.oracle_instance_min / o.hpa_instance_min for o in rows]
        closed = [g for g in (o.oracle_gap_closed for o in rows) if g is not None]
        print(
            f"scaling_{family}_oracle: never short at {statistics.fmean(oracle_cost):.3f}x the HPA's "
            f"instance-minutes (per seed {min(oracle_cost):.3f}..{max(oracle_cost):.3f}); the policy saved "
            + (
                f"{statistics.fmean(closed):.0%} of the HPA's spend above it (per seed "
                f"{'/'.join(f'{g:.0%}' for g in closed)})"
                if closed
                else "nothing: the HPA spends no more than the oracle"
            )
        )
        failed = [o for o in rows if not o.met]
        met = not failed
        all_met = all_met and met
        detail = "" if met else " (seeds " + ", ".join(str(o.seed) for o in failed) + ")"
        print(f"scaling_{family}: {'met' if met else 'not met'}{detail}")
    print(f"# {time.perf_counter() - started:.0f}s")
    print("met" if all_met else "not met")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
