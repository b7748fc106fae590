"""The predictive scaling policy against the Kubernetes HPA on synthetic load traces.

Run: `python benchmarks/scaling_policy.py` (`--family NAME`, `--weeks N`, `--seed S` narrow it
down; `--fixed-quantile Q` replays the policy with a fixed safety quantile instead of its cost
budget). Each family's trace is generated with a fixed seed and replayed by
`mcp_autonomy.autonomy.scaling.simulate.replay`, the code behind `mcp-autonomy simulate-scaling`:
15 s steps, pods ready 60 s after they are added, target 100 TPM per instance, 2..80 replicas,
the policy with its defaults against a default-behaviour HPA on a per-pod TPM metric.

Traffic is counted per minute: Poisson arrivals around a mean that drifts slowly (a log-AR(1),
3 % with a 30-minute time constant: busier and quieter spells) with 1.5 % extra independent
jitter (overdispersion). The headline figures are for `daily_weekly`: morning, lunch and evening
peaks on weekdays, a lower and later shape at weekends, an afternoon surge (x2.2 for 20 minutes)
and a night burst (x4 for 12 minutes) that no forecast can know. The other families check that
the policy generalises instead of fitting one shape: step-shaped peaks, growth of 4 % a day,
heavy (25 %) independent noise with random bursts, a smooth page-view-like sinusoid, a daily
clock that moves an hour, load with no seasonality at all, an hourly-resolution trace (as public
page-view dumps are) and timer-triggered bursts every 15 minutes on a daily curve (as serverless
function traces show).

The target: at least 50 % fewer minutes short of capacity at no more instance-minutes than the HPA.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

# Plain `python benchmarks/scaling_policy.py` puts benchmarks/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_autonomy.autonomy.scaling.simulate import (
    LoadTrace,
    ReplayStats,
    SimulationConfig,
    build_hpa,
    build_policy,
    replay,
)

START_S = 1_767_571_200.0  # Monday 2026-01-05 00:00 UTC
MINUTES_PER_DAY = 1440
DEFAULT_WEEKS = 4
TARGET_TPM = 100.0
PEAK_TPM = 3000.0
DRIFT = 0.03  # sigma of the slow log-AR(1) deviation of the mean (30-minute time constant)
JITTER = 0.015  # sigma of the independent per-minute deviation (overdispersion)
SIMULATION = SimulationConfig(
    target_tpm_per_instance=TARGET_TPM, min_replicas=2, max_replicas=80, startup_s=60.0
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


FAMILIES: dict[str, Generator] = {
    "daily_weekly": daily_weekly,
    "sharp_peaks": sharp_peaks,
    "growth": growth,
    "noisy": noisy,
    "smooth_sinusoid": smooth_sinusoid,
    "shifted_clock": shifted_clock,
    "no_seasonality": no_seasonality,
    "hourly_steps": hourly_steps,
    "timer_bursts": timer_bursts,
}
POINT_EVERY_MINUTES = {"hourly_steps": 60}  # the others have one point a minute


def make_trace(family: str, weeks: int, seed: int = 7) -> LoadTrace:
    """The family's trace: `weeks` weeks from Monday 2026-01-05 00:00 UTC."""
    minutes = weeks * 7 * MINUTES_PER_DAY
    load = FAMILIES[family](minutes, np.random.default_rng(seed))
    every = POINT_EVERY_MINUTES.get(family, 1)
    stamps = START_S + 60.0 * np.arange(0, minutes, every)
    return LoadTrace(tuple(stamps.tolist()), tuple(np.round(load[::every], 3).tolist()))


def run_family(
    family: str, weeks: int, seed: int = 7, fixed_quantile: float | None = None
) -> dict[str, ReplayStats]:
    """Replay one family through the policy and the HPA."""
    policy = build_policy(SIMULATION, fixed_quantile=fixed_quantile)
    trace = make_trace(family, weeks, seed)
    return replay(trace, {"policy": policy, "hpa": build_hpa(SIMULATION)}, SIMULATION)


def _ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline else math.inf


def _run(args: tuple[str, int, int, float | None]) -> tuple[str, ReplayStats, ReplayStats]:
    family, weeks, seed, fixed_quantile = args
    stats = run_family(family, weeks, seed, fixed_quantile)
    return family, stats["policy"], stats["hpa"]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--weeks", type=int, default=DEFAULT_WEEKS, help="weeks per trace (default %(default)s)"
    )
    parser.add_argument("--family", choices=sorted(FAMILIES), action="append", help="only these families")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--fixed-quantile", type=float, help="a fixed safety quantile instead of the cost budget"
    )
    args = parser.parse_args()
    families = args.family or list(FAMILIES)
    started = time.perf_counter()
    jobs = [(family, args.weeks, args.seed, args.fixed_quantile) for family in families]
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        rows = list(pool.map(_run, jobs))
    _, policy, hpa = next((row for row in rows if row[0] == "daily_weekly"), rows[0])
    short_ratio = _ratio(policy.minutes_short_of_capacity, hpa.minutes_short_of_capacity)
    cost_ratio = _ratio(policy.instance_minutes, hpa.instance_minutes)
    print(
        f"scaling_minutes_short: {policy.minutes_short_of_capacity:.1f} min "
        f"(baseline: {hpa.minutes_short_of_capacity:.1f} min, ratio: {short_ratio:.3f})"
    )
    print(
        f"scaling_instance_minutes: {policy.instance_minutes:.0f} "
        f"(baseline: {hpa.instance_minutes:.0f}, ratio: {cost_ratio:.3f})"
    )
    print()
    header = (
        f"{'family':<16} {'short min':>10} {'hpa short':>10} {'ratio':>6}  "
        f"{'inst-min':>9} {'hpa inst':>9} {'ratio':>6}  {'actions':>7} {'hpa act':>7}"
    )
    print(header)
    print("-" * len(header))
    for family, policy, hpa in rows:
        print(
            f"{family:<16} {policy.minutes_short_of_capacity:>10.1f} {hpa.minutes_short_of_capacity:>10.1f} "
            f"{_ratio(policy.minutes_short_of_capacity, hpa.minutes_short_of_capacity):>6.3f}  "
            f"{policy.instance_minutes:>9.0f} {hpa.instance_minutes:>9.0f} "
            f"{_ratio(policy.instance_minutes, hpa.instance_minutes):>6.3f}  "
            f"{policy.scaling_actions:>7} {hpa.scaling_actions:>7}"
        )
    mode = (
        f"fixed safety quantile {args.fixed_quantile}"
        if args.fixed_quantile is not None
        else "cost budget 1.0"
    )
    print(
        f"\n({args.weeks} weeks per family, {mode}, seed {args.seed}, {time.perf_counter() - started:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
