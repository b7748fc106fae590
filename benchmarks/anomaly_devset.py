"""Synthetic labelled series with the shapes of operations data, for developing detectors (issue 17).

Two disjoint sets come from independent random streams: `development_set(seeds)` to develop and
tune on, `reporting_set(seeds)` to report on (never tune on it). Each seed gives one set of 50
series, 1k-20k points each, sampled every minute or every five minutes: cloud CPU, request counts,
low-count error counts, latencies, heavy-tailed and bursty metrics, slow sensor wander, flat gauges,
a disk-usage sawtooth, and this project's own telemetry (a payment provider's per-minute error
rate, p95 latency in ms and requests per minute) under the faults the sandbox injects. Daily and
weekly seasonality, gaps (timestamps skip), quantised values; 0-4 anomalies per series, labelled
roughly at their onset as a human labeller would. Magnitudes are drawn over a wide range, so some
anomalies are obvious and some barely detectable.

Run `python benchmarks/anomaly_devset.py [--report] [--seeds 0 1] [--list]` for a summary of a set.
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEV_SEEDS",
    "FAMILIES",
    "REPORT_SEEDS",
    "LabelledSeries",
    "development_set",
    "generate_set",
    "reporting_set",
]

FloatArray = npt.NDArray[np.float64]

DEV_SEEDS = (0, 1, 2)
REPORT_SEEDS = (0, 1, 2)
# The two sets draw from independent streams, so seed 0 of one shares nothing with seed 0 of the other.
_DEV_STREAM = 17_001
_REPORT_STREAM = 17_002

MIN_POINTS = 1_000
MAX_POINTS = 20_000
# 2026-01-05 00:00 UTC, a Monday: weekly patterns line up with real weekdays.
_EPOCH_MONDAY_S = 1_767_571_200
_DAY_S = 86_400.0
# Traffic eases into and out of the weekend over about six hours around midnight.
_WEEKEND_EASE_DAYS = 0.25
# Anomalies per series and how often each count occurs (some series have none: FPs only).
_ANOMALY_COUNTS = (0, 1, 2, 3, 4)
_ANOMALY_COUNT_P = (0.12, 0.30, 0.28, 0.18, 0.12)
_GAP_PROBABILITY = 0.25
# The scorer's rules, repeated here only to place anomalies where they can be scored.
_WINDOW_FRACTION = 0.10
_PROBATION_FRACTION = 0.15
_PROBATION_MAX_POINTS = 750
# A payment provider's timeout, what p95 latency reads once requests time out.
_TIMEOUT_MS = 30_000.0


@dataclass(frozen=True, slots=True)
class LabelledSeries:
    """One series with its labels: anomaly onsets (point indices), optionally explicit windows.

    `family` and `kinds` (one per anomaly) say how it was made, for per-shape breakdowns.
    """

    name: str
    timestamps_s: FloatArray
    values: FloatArray
    anomaly_indices: list[int]
    windows: list[tuple[int, int]] | None = None
    family: str = ""
    kinds: tuple[str, ...] = ()


@dataclass(slots=True)
class _Signal:
    """A series before sampling: its normal expectation and the edits anomalies make to it."""

    carrier: FloatArray  # level x weekly pattern (x trend)
    daily: FloatArray  # daily pattern in [-1, 1]
    daily_amp: float
    wander: FloatArray  # slow normal drift, additive
    sampler: Callable[[np.random.Generator, FloatArray, FloatArray], FloatArray]
    # Typical noise sd of the points from `start` on, given their mean: sizes anomalies.
    sd: Callable[[FloatArray, int], FloatArray]
    lower: float = -math.inf
    upper: float = math.inf
    quantum: float | None = None
    load: FloatArray | None = None  # requests per point, for series whose faults depend on traffic
    base: FloatArray = field(init=False)
    factor: FloatArray = field(init=False)
    shift: FloatArray = field(init=False)
    noise_mult: FloatArray = field(init=False)
    post: list[Callable[[FloatArray], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base = self.carrier * (1.0 + self.daily_amp * self.daily) + self.wander
        n = len(self.carrier)
        self.factor = np.ones(n)
        self.shift = np.zeros(n)
        self.noise_mult = np.ones(n)

    def mean(self) -> FloatArray:
        return np.asarray(self.base * self.factor + self.shift, dtype=np.float64)

    def render(self, rng: np.random.Generator) -> FloatArray:
        values = self.sampler(rng, np.clip(self.mean(), self.lower, self.upper), self.noise_mult)
        for edit in self.post:
            edit(values)
        values = np.clip(values, self.lower, self.upper)
        if self.quantum is not None:
            values = np.round(values / self.quantum) * self.quantum
        return np.asarray(values, dtype=np.float64)


# --- samplers: how a family's noise looks ---


def _gaussian(sd: float) -> Callable[[np.random.Generator, FloatArray, FloatArray], FloatArray]:
    def sample(rng: np.random.Generator, mean: FloatArray, mult: FloatArray) -> FloatArray:
        return np.asarray(mean + mult * sd * rng.standard_normal(len(mean)), dtype=np.float64)

    return sample


def _student_t(sd: float, dof: float) -> Callable[[np.random.Generator, FloatArray, FloatArray], FloatArray]:
    def sample(rng: np.random.Generator, mean: FloatArray, mult: FloatArray) -> FloatArray:
        return np.asarray(mean + mult * sd * rng.standard_t(dof, len(mean)), dtype=np.float64)

    return sample


def _poisson(overdispersion: float) -> Callable[[np.random.Generator, FloatArray, FloatArray], FloatArray]:
    # Real counts vary more than Poisson: a gamma-distributed rate (negative binomial counts);
    # a variance burst widens the rate's spread.
    def sample(rng: np.random.Generator, mean: FloatArray, mult: FloatArray) -> FloatArray:
        spread = overdispersion * mult + 0.25 * (mult - 1.0)
        shape = 1.0 / np.maximum(spread, 1e-6) ** 2
        rate = np.maximum(mean, 0.0) * rng.gamma(shape, 1.0 / shape)
        return rng.poisson(rate).astype(np.float64)

    return sample


def _lognormal(sigma: float) -> Callable[[np.random.Generator, FloatArray, FloatArray], FloatArray]:
    def sample(rng: np.random.Generator, mean: FloatArray, mult: FloatArray) -> FloatArray:
        s = sigma * mult
        return np.asarray(mean * np.exp(s * rng.standard_normal(len(mean)) - 0.5 * s * s), dtype=np.float64)

    return sample


# --- calendar ---


def _daily_pattern(rng: np.random.Generator, t_s: FloatArray) -> FloatArray:
    """A smooth daily shape (three harmonics, random phases) in [-1, 1]; `t_s` is local time."""
    hours = (t_s % _DAY_S) / 3600.0
    weights = (1.0, rng.uniform(0.0, 0.5), rng.uniform(0.0, 0.25))
    phases = rng.uniform(0.0, 24.0, 3)
    grid = np.linspace(0.0, 24.0, 289)

    def shape(h: FloatArray) -> FloatArray:
        total = np.zeros_like(h)
        for k, (w, phi) in enumerate(zip(weights, phases, strict=True), start=1):
            total += w * np.cos(2.0 * np.pi * k * (h - phi) / 24.0)
        return total

    return np.asarray(shape(hours) / np.abs(shape(grid)).max(), dtype=np.float64)


def _weekly_pattern(rng: np.random.Generator, t_s: FloatArray, weekend_factor: float) -> FloatArray:
    """1 on weekdays, `weekend_factor` at weekends, eased in and out over the night (local time)."""
    day_of_week = ((t_s - _EPOCH_MONDAY_S) / _DAY_S) % 7.0
    into_weekend = np.minimum(day_of_week - 5.0, 7.0 - day_of_week)  # days; > 0 inside the weekend
    weekend = np.clip(into_weekend / _WEEKEND_EASE_DAYS + 0.5, 0.0, 1.0)
    return np.asarray(1.0 + (weekend_factor - 1.0) * weekend, dtype=np.float64)


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> FloatArray:
    """Stationary AR(1) with marginal sd `sd`: smooth normal wander."""
    innovations = rng.standard_normal(n) * sd * math.sqrt(1.0 - phi * phi)
    out = np.empty(n)
    level = rng.standard_normal() * sd
    for i in range(n):
        level = phi * level + innovations[i]
        out[i] = level
    return out


# --- families: one maker per kind of operations metric ---


@dataclass(frozen=True, slots=True)
class _Family:
    name: str
    steps_s: tuple[int, ...]
    anomaly_kinds: tuple[str, ...]
    make: Callable[[np.random.Generator, FloatArray], _Signal]


def _make_cpu(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    level = rng.uniform(10.0, 60.0)
    sd = rng.uniform(0.8, 4.0)
    return _Signal(
        carrier=level * _weekly_pattern(rng, t_s, rng.uniform(0.6, 1.0)),
        daily=_daily_pattern(rng, t_s),
        daily_amp=rng.uniform(0.0, 0.5),
        wander=_ar1(rng, len(t_s), rng.uniform(0.95, 0.995), rng.uniform(0.0, 2.0) * sd),
        sampler=_gaussian(sd),
        sd=lambda m, start: np.full(len(m), sd),
        lower=0.0,
        upper=100.0,
        quantum=float(rng.choice([0.01, 0.1, 1.0])),
    )


def _make_requests(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    level = math.exp(rng.uniform(math.log(20.0), math.log(5_000.0)))
    dispersion = rng.uniform(0.02, 0.12)
    return _Signal(
        carrier=level * _weekly_pattern(rng, t_s, rng.uniform(0.4, 0.95)),
        daily=_daily_pattern(rng, t_s),
        daily_amp=rng.uniform(0.3, 0.8),
        wander=np.zeros(len(t_s)),
        sampler=_poisson(dispersion),
        sd=lambda m, start: np.sqrt(np.maximum(m, 1.0) + (dispersion * m) ** 2),
        lower=0.0,
        quantum=1.0,
    )


def _make_low_count(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    level = rng.uniform(0.2, 3.0)
    return _Signal(
        carrier=level * _weekly_pattern(rng, t_s, rng.uniform(0.5, 1.0)),
        daily=_daily_pattern(rng, t_s),
        daily_amp=rng.uniform(0.0, 0.6),
        wander=np.zeros(len(t_s)),
        sampler=_poisson(0.1),
        sd=lambda m, start: np.sqrt(np.maximum(m, 0.5)),
        lower=0.0,
        quantum=1.0,
    )


def _make_latency(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    level_ms = math.exp(rng.uniform(math.log(20.0), math.log(800.0)))
    sigma = rng.uniform(0.05, 0.35)
    return _Signal(
        carrier=np.full(len(t_s), level_ms),
        daily=_daily_pattern(rng, t_s),
        daily_amp=rng.uniform(0.0, 0.25),
        wander=np.zeros(len(t_s)),
        sampler=_lognormal(sigma),
        sd=lambda m, start: sigma * m,
        lower=0.0,
        quantum=float(rng.choice([0.001, 1.0])),
    )


def _make_heavy_tail(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    level = rng.uniform(50.0, 500.0)
    sd = level * rng.uniform(0.02, 0.1)
    return _Signal(
        carrier=level * _weekly_pattern(rng, t_s, rng.uniform(0.7, 1.0)),
        daily=_daily_pattern(rng, t_s),
        daily_amp=rng.uniform(0.0, 0.3),
        wander=np.zeros(len(t_s)),
        sampler=_student_t(sd, rng.uniform(2.2, 4.0)),
        sd=lambda m, start: np.full(len(m), 1.5 * sd),
        lower=0.0,
    )


def _make_sensor(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    level = rng.uniform(20.0, 90.0)
    wander_sd = rng.uniform(1.0, 6.0)
    sd = wander_sd * rng.uniform(0.03, 0.3)
    return _Signal(
        carrier=np.full(len(t_s), level),
        daily=_daily_pattern(rng, t_s),
        daily_amp=rng.uniform(0.0, 0.1),
        wander=_ar1(rng, len(t_s), rng.uniform(0.995, 0.9995), wander_sd),
        sampler=_gaussian(sd),
        sd=lambda m, start: np.full(len(m), max(sd, 0.1 * wander_sd)),
        quantum=float(rng.choice([0.0, 0.1, 0.5])) or None,
    )


def _make_flat(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    level = float(rng.choice([1.0, 4.0, 16.0, 100.0]))
    # A gauge that barely moves: rare one-quantum flickers.
    quantum = level / 100.0

    def sample(rng: np.random.Generator, mean: FloatArray, mult: FloatArray) -> FloatArray:
        flicker = (rng.random(len(mean)) < 0.002 * mult) * rng.choice([-1.0, 1.0], len(mean)) * quantum
        return np.asarray(mean + flicker, dtype=np.float64)

    return _Signal(
        carrier=np.full(len(t_s), level),
        daily=np.zeros(len(t_s)),
        daily_amp=0.0,
        wander=np.zeros(len(t_s)),
        sampler=sample,
        sd=lambda m, start: np.full(len(m), quantum),
        lower=0.0,
        quantum=quantum,
    )


def _make_bursty(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    # Social-media-like volume: natural, unlabelled bursts on top of a daily cycle.
    n = len(t_s)
    level = math.exp(rng.uniform(math.log(5.0), math.log(200.0)))
    bursts = np.zeros(n)
    for start in rng.choice(n, size=max(1, n // 1500), replace=False):
        length = int(rng.integers(3, 30))
        bursts[start : start + length] += rng.uniform(0.5, 2.0) * np.exp(
            -np.arange(min(length, n - start)) / 8
        )
    return _Signal(
        carrier=level * (1.0 + bursts) * _weekly_pattern(rng, t_s, rng.uniform(0.7, 1.1)),
        daily=_daily_pattern(rng, t_s),
        daily_amp=rng.uniform(0.2, 0.6),
        wander=np.zeros(n),
        sampler=_poisson(rng.uniform(0.15, 0.4)),
        sd=lambda m, start: np.sqrt(np.maximum(m, 1.0) + (0.3 * m) ** 2),
        lower=0.0,
        quantum=1.0,
    )


def _make_disk(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    # Disk usage: slow growth, cleaned up every day or week back to a floor (a normal sawtooth).
    period_s = float(rng.choice([_DAY_S, _DAY_S, 7 * _DAY_S]))
    floor = rng.uniform(20.0, 50.0)
    growth = rng.uniform(5.0, 30.0)
    phase = ((t_s - t_s[0] + rng.uniform(0.0, period_s)) % period_s) / period_s
    sd = rng.uniform(0.05, 0.3)
    return _Signal(
        carrier=floor + growth * phase,
        daily=np.zeros(len(t_s)),
        daily_amp=0.0,
        wander=np.zeros(len(t_s)),
        sampler=_gaussian(sd),
        sd=lambda m, start: np.full(len(m), max(sd, 0.5)),
        lower=0.0,
        upper=100.0,
        quantum=0.1,
    )


def _provider_traffic(rng: np.random.Generator, t_s: FloatArray) -> FloatArray:
    level = math.exp(rng.uniform(math.log(15.0), math.log(400.0)))
    daily = _daily_pattern(rng, t_s)
    return np.asarray(
        level * _weekly_pattern(rng, t_s, rng.uniform(0.5, 0.9)) * (1.0 + rng.uniform(0.3, 0.7) * daily),
        dtype=np.float64,
    )


def _make_payment_error_rate(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    # Per-minute error rate of one provider: errors / requests, both counted (quantised at low traffic).
    traffic = _provider_traffic(rng, t_s)
    p_normal = rng.uniform(0.002, 0.03)

    def sample(rng: np.random.Generator, p: FloatArray, mult: FloatArray) -> FloatArray:
        requests = rng.poisson(traffic)
        p_now = np.clip(p * np.exp(0.3 * (mult - 1.0) * rng.standard_normal(len(p))), 0.0, 1.0)
        errors = rng.binomial(requests, p_now)
        return np.where(requests > 0, errors / np.maximum(requests, 1), 0.0)

    return _Signal(
        carrier=np.full(len(t_s), p_normal),
        daily=np.zeros(len(t_s)),
        daily_amp=0.0,
        wander=np.zeros(len(t_s)),
        sampler=sample,
        sd=lambda p, start: np.sqrt(
            np.clip(p, 1e-4, 1.0) * (1.0 - np.clip(p, 0.0, 0.99)) / traffic[start : start + len(p)]
        ),
        lower=0.0,
        upper=1.0,
        load=traffic,
    )


def _make_payment_latency(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    # Per-minute p95 latency of one provider in ms: a little slower when busy, noisier when quiet.
    traffic = _provider_traffic(rng, t_s)
    p95_ms = math.exp(rng.uniform(math.log(150.0), math.log(2_500.0)))
    sigma = 0.6 / np.sqrt(np.maximum(traffic, 1.0)) + rng.uniform(0.02, 0.08)

    def sample(rng: np.random.Generator, mean: FloatArray, mult: FloatArray) -> FloatArray:
        s = sigma * mult
        return np.asarray(mean * np.exp(s * rng.standard_normal(len(mean))), dtype=np.float64)

    return _Signal(
        carrier=p95_ms * (1.0 + 0.15 * traffic / traffic.max()),
        daily=np.zeros(len(t_s)),
        daily_amp=0.0,
        wander=np.zeros(len(t_s)),
        sampler=sample,
        sd=lambda m, start: sigma[start : start + len(m)] * m,
        lower=1.0,
        upper=_TIMEOUT_MS,
        quantum=1.0,
    )


def _make_payment_rpm(rng: np.random.Generator, t_s: FloatArray) -> _Signal:
    traffic = _provider_traffic(rng, t_s)
    return _Signal(
        carrier=traffic,
        daily=np.zeros(len(t_s)),
        daily_amp=0.0,
        wander=np.zeros(len(t_s)),
        sampler=_poisson(rng.uniform(0.02, 0.1)),
        sd=lambda m, start: np.sqrt(np.maximum(m, 1.0) + (0.06 * m) ** 2),
        lower=0.0,
        quantum=1.0,
    )


_SPIKES = ("spike", "dip")
FAMILIES: dict[str, _Family] = {
    f.name: f
    for f in (
        _Family(
            "cpu", (300,), (*_SPIKES, "shift_up", "shift_down", "variance", "ramp_fast", "stuck"), _make_cpu
        ),
        _Family(
            "requests",
            (60, 300),
            ("collapse", "shift_down", "shift_up", "spike", "seasonal_break"),
            _make_requests,
        ),
        _Family("low_count", (60,), ("shift_up", "spike", "ramp_fast"), _make_low_count),
        _Family(
            "latency", (60, 300), ("ramp_slow", "ramp_fast", "shift_up", "variance", "spike"), _make_latency
        ),
        _Family("heavy_tail", (60, 300), (*_SPIKES, "shift_up", "shift_down", "variance"), _make_heavy_tail),
        _Family("sensor", (300,), ("ramp_slow", "ramp_fast", "shift_up", "stuck", "dip"), _make_sensor),
        _Family("flat", (60, 300), (*_SPIKES, "shift_up", "shift_down"), _make_flat),
        _Family("bursty", (300,), ("spike", "shift_up", "collapse"), _make_bursty),
        _Family("disk", (300,), ("ramp_fast", "stuck", "shift_up"), _make_disk),
        _Family(
            "payment_error_rate",
            (60,),
            ("creep", "outage", "spike", "ramp_fast", "flapping", "throttle"),
            _make_payment_error_rate,
        ),
        _Family(
            "payment_p95_ms", (60,), ("timeout_ramp", "shift_up", "variance", "spike"), _make_payment_latency
        ),
        _Family(
            "payment_rpm", (60,), ("collapse", "shift_down", "seasonal_break", "spike"), _make_payment_rpm
        ),
    )
}
# Series per family in one set (50 in all).
_COMPOSITION = {
    "cpu": 5,
    "requests": 5,
    "low_count": 4,
    "latency": 5,
    "heavy_tail": 4,
    "sensor": 4,
    "flat": 3,
    "bursty": 4,
    "disk": 2,
    "payment_error_rate": 5,
    "payment_p95_ms": 5,
    "payment_rpm": 4,
}


# --- anomalies: each edits the signal from its onset and returns where a labeller would mark it ---


def _magnitude(rng: np.random.Generator, low: float, high: float) -> float:
    """Log-uniform: as many barely visible anomalies as blatant ones."""
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _direction(kind: str) -> float:
    return -1.0 if kind in ("dip", "shift_down") else 1.0


def _apply(kind: str, rng: np.random.Generator, sig: _Signal, onset: int, half_window: int) -> int:
    n = len(sig.base)
    mean = sig.mean()
    sd_here = float(sig.sd(mean[onset : onset + 1], onset)[0])
    level_here = max(abs(float(mean[onset])), 1e-9)
    sign = _direction(kind)
    if kind in ("spike", "dip"):
        width = int(rng.choice([1, 1, 1, 2, 3]))
        size = sign * _magnitude(rng, 2.5, 25.0) * sd_here

        def spike(values: FloatArray, a: int = onset, b: int = onset + width, d: float = size) -> None:
            values[a:b] += d

        sig.post.append(spike)
    elif kind in ("shift_up", "shift_down"):
        size = _magnitude(rng, 1.0, 15.0) * sd_here
        if sign < 0:
            size = min(size, 0.9 * level_here)
        end = n if rng.random() < 0.5 else min(n, onset + int(rng.integers(30, 600)))
        sig.factor[onset:end] *= 1.0 + sign * size / level_here
    elif kind == "variance":
        end = min(n, onset + int(rng.integers(10, 300)))
        sig.noise_mult[onset:end] *= _magnitude(rng, 1.8, 8.0)
    elif kind == "stuck":
        end = min(n, onset + int(rng.integers(30, 800)))

        def stuck(values: FloatArray, a: int = onset, b: int = end) -> None:
            values[a:b] = values[a - 1]

        sig.post.append(stuck)
    elif kind == "collapse":
        end = min(n, onset + int(rng.integers(5, 300)))
        sig.factor[onset:end] *= rng.uniform(0.0, 0.1)
    elif kind == "outage":
        end = min(n, onset + int(rng.integers(3, 90)))
        sig.shift[onset:end] += rng.uniform(0.2, 1.0)
    elif kind == "flapping":
        # The sandbox's flapping fault: down for part of every period, for a while.
        end = min(n, onset + int(rng.integers(10, 90)))
        period = int(rng.integers(2, 11))
        down = (np.arange(end - onset) % period) < max(1, int(rng.uniform(0.2, 0.8) * period))
        sig.shift[onset:end] += down * rng.uniform(0.3, 1.0)
    elif kind == "throttle":
        return _throttle(rng, sig, onset)
    elif kind in ("ramp_slow", "ramp_fast", "creep", "timeout_ramp"):
        _ramp_to_fault(kind, rng, sig, onset, half_window, sd_here, level_here)
    elif kind == "seasonal_break":
        return _seasonal_break(rng, sig, onset)
    else:  # pragma: no cover - the families name only kinds handled above
        raise ValueError(f"unknown anomaly kind {kind!r}")
    return onset


def _ramp_to_fault(
    kind: str, rng: np.random.Generator, sig: _Signal, onset: int, half_window: int, sd: float, level: float
) -> None:
    """A rise that ends in a fault (a leak filling memory, latency climbing to timeouts)."""
    n = len(sig.base)
    if kind == "ramp_slow":
        ramp_points = int(rng.uniform(0.3, 1.5) * max(half_window, 20))
    elif kind in ("creep", "timeout_ramp"):
        ramp_points = int(rng.integers(5, 120))  # minutes: the sandbox's ramp_s range
    else:
        ramp_points = int(rng.integers(3, 25))
    ramp_end = min(n, onset + ramp_points)
    fault_end = min(n, ramp_end + int(rng.integers(5, 120)))
    ramp = np.linspace(0.0, 1.0, ramp_end - onset, endpoint=False)
    if kind == "creep":
        # Error rate creeping from normal to a failing share of payments.
        top = rng.uniform(0.03, 0.4)
        sig.shift[onset:ramp_end] += top * ramp
        sig.shift[ramp_end:fault_end] += top
    elif kind == "timeout_ramp":
        # Latency x2..x20 over the ramp, then requests time out.
        top = level * (_magnitude(rng, 2.0, 20.0) - 1.0)
        sig.shift[onset:ramp_end] += top * ramp
        sig.shift[ramp_end:fault_end] += _TIMEOUT_MS
    else:
        top = _magnitude(rng, 2.0, 15.0) * sd
        sig.shift[onset:ramp_end] += top * ramp
        sig.shift[ramp_end:fault_end] += top * rng.uniform(1.0, 3.0)


def _throttle(rng: np.random.Generator, sig: _Signal, onset: int) -> int:
    """A rate limit below peak traffic: requests beyond it fail, so errors follow the busy hours.
    Labelled where the errors first show."""
    assert sig.load is not None, "throttle needs a series with traffic"
    n = len(sig.base)
    end = min(n, onset + int(rng.integers(len(sig.base) // 20, len(sig.base) // 5 + 2)))
    load = sig.load[onset:end]
    cap = float(np.quantile(load, rng.uniform(0.4, 0.9)))
    refused = np.clip(1.0 - cap / np.maximum(load, 1e-9), 0.0, 1.0)
    sig.shift[onset:end] += refused
    before = sig.mean()[onset:end] - refused
    visible = refused > 2.0 * sig.sd(before, onset)
    return onset + int(np.argmax(visible)) if visible.any() else onset


def _seasonal_break(rng: np.random.Generator, sig: _Signal, onset: int) -> int:
    """The daily pattern shifts by hours or flattens; labelled where the change first shows."""
    n = len(sig.base)
    end = min(n, onset + int(rng.integers(len(sig.base) // 20, len(sig.base) // 4 + 2)))
    old = sig.base[onset:end].copy()
    if sig.daily_amp == 0.0:
        # Families whose pattern lives in the carrier (payment traffic): flatten it to its mean.
        sig.base[onset:end] = np.full(end - onset, sig.base[onset:end].mean())
    elif rng.random() < 0.5:
        sig.base[onset:end] = sig.carrier[onset:end] + sig.wander[onset:end]
    else:
        shift_points = int(rng.integers(len(sig.daily) // 40 + 1, len(sig.daily) // 10 + 2))
        daily = np.roll(sig.daily, shift_points)
        sig.base[onset:end] = (
            sig.carrier[onset:end] * (1.0 + sig.daily_amp * daily[onset:end]) + sig.wander[onset:end]
        )
    visible = np.abs(sig.base[onset:end] - old) > 2.0 * sig.sd(old, onset)
    return onset + int(np.argmax(visible)) if visible.any() else onset


# --- assembling a set ---


def _probation(n: int) -> int:
    return min(int(_PROBATION_FRACTION * n), _PROBATION_MAX_POINTS)


def _onsets(rng: np.random.Generator, n: int, count: int, half_window: int) -> list[int]:
    """Spread onsets over the scored part, one per equal segment, away from segment edges."""
    first = _probation(n) + half_window + 5
    last = n - max(half_window, 30)
    if count == 0 or last - first < 10 * count:
        return []
    edges = np.linspace(first, last, count + 1)
    onsets = []
    for a, b in itertools.pairwise(edges):
        pad = 0.2 * (b - a)
        onsets.append(int(rng.uniform(a + pad, b - pad)))
    return onsets


def _gaps(
    rng: np.random.Generator, n_full: int, keep_clear: Sequence[tuple[int, int]]
) -> npt.NDArray[np.bool_]:
    keep = np.ones(n_full, dtype=bool)
    if rng.random() >= _GAP_PROBABILITY:
        return keep
    for _ in range(int(rng.integers(1, 4))):
        length = max(5, int(rng.uniform(0.005, 0.03) * n_full))
        start = int(rng.integers(_probation(n_full), max(_probation(n_full) + 1, n_full - length)))
        if any(start < b and start + length > a for a, b in keep_clear):
            continue
        keep[start : start + length] = False
    return keep


def _one_series(rng: np.random.Generator, family: _Family, name: str, deck: list[str]) -> LabelledSeries:
    n = int(math.exp(rng.uniform(math.log(MIN_POINTS), math.log(MAX_POINTS))))
    step_s = int(rng.choice(family.steps_s))
    start_s = _EPOCH_MONDAY_S + float(rng.integers(0, 7 * 24)) * 3600.0 + float(rng.integers(0, 12)) * step_s
    t_s = start_s + step_s * np.arange(n, dtype=np.float64)
    # The families' calendars run on the local time of a random time zone.
    tz_offset_s = float(rng.integers(-8, 9)) * 3600.0
    sig = family.make(rng, t_s + tz_offset_s)

    count = int(rng.choice(_ANOMALY_COUNTS, p=_ANOMALY_COUNT_P))
    half_window = int(_WINDOW_FRACTION * n / max(count, 1) / 2)
    kinds: list[str] = []
    labels: list[int] = []
    for onset in _onsets(rng, n, count, half_window):
        # Deal kinds from a shuffled deck per family, so every set has every kind of anomaly.
        if not deck:
            deck.extend(str(k) for k in rng.permutation(family.anomaly_kinds))
        kind = deck.pop()
        marked = _apply(kind, rng, sig, onset, half_window)
        # Labellers mark the onset roughly, a few points either way.
        jitter = int(rng.integers(-3, 4)) if half_window > 30 else 0
        labels.append(min(max(marked + jitter, 0), n - 1))
        kinds.append(kind)
    values = sig.render(rng)

    keep = _gaps(rng, n, [(a - half_window, a + half_window) for a in labels])
    kept_indices = np.flatnonzero(keep)
    labels = [int(np.searchsorted(kept_indices, a)) for a in labels]
    return LabelledSeries(
        name=name,
        timestamps_s=t_s[keep],
        values=values[keep],
        anomaly_indices=labels,
        family=family.name,
        kinds=tuple(kinds),
    )


def generate_set(stream: int, seed: int) -> list[LabelledSeries]:
    """The 50 series of one set; the same (stream, seed) always gives the same series."""
    rng = np.random.default_rng([stream, seed])
    prefix = "dev" if stream == _DEV_STREAM else ("rep" if stream == _REPORT_STREAM else f"s{stream}")
    out: list[LabelledSeries] = []
    for family_name, copies in _COMPOSITION.items():
        deck: list[str] = []
        for copy in range(copies):
            out.append(_one_series(rng, FAMILIES[family_name], f"{prefix}{seed}/{family_name}-{copy}", deck))
    return out


def _as_seeds(seeds: int | Sequence[int]) -> tuple[int, ...]:
    chosen = (seeds,) if isinstance(seeds, int) else tuple(seeds)
    for s in chosen:
        if s < 0:
            raise ValueError(f"seeds must be integers >= 0, got {s}")
    return chosen


def development_set(seeds: int | Sequence[int] = DEV_SEEDS) -> list[LabelledSeries]:
    """Series to develop and tune detectors on: 50 per seed."""
    return [s for seed in _as_seeds(seeds) for s in generate_set(_DEV_STREAM, seed)]


def reporting_set(seeds: int | Sequence[int] = REPORT_SEEDS) -> list[LabelledSeries]:
    """Series to report on (never tune on these): 50 per seed, disjoint from the development set."""
    return [s for seed in _as_seeds(seeds) for s in generate_set(_REPORT_STREAM, seed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--report", action="store_true", help="the reporting set (default: development)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--list", action="store_true", help="one line per series")
    args = parser.parse_args()
    series = reporting_set(args.seeds) if args.report else development_set(args.seeds)
    for s in series if args.list else ():
        gaps = int(np.sum(np.diff(s.timestamps_s) > 1.5 * np.median(np.diff(s.timestamps_s))))
        labels = ", ".join(f"{k}@{i}" for k, i in zip(s.kinds, s.anomaly_indices, strict=True))
        print(f"{s.name:32} n={len(s.values):6d} gaps={gaps} {labels}")
    total = sum(len(s.values) for s in series)
    anomalies = sum(len(s.anomaly_indices) for s in series)
    print(f"{len(series)} series, {total} points, {anomalies} anomalies")


if __name__ == "__main__":
    main()
