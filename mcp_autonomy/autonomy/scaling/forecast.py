"""Load forecasting for the predictive policy: learned daily/weekly profiles, priors, persistence.

`LoadForecaster` learns the load's shape online from the samples it is shown (no look-ahead) and
forecasts peaks over a horizon with a safety margin taken from its own past errors.
"""

from __future__ import annotations

import math
from bisect import bisect_right, insort
from collections import deque
from dataclasses import dataclass
from typing import Final, Protocol

from mcp_autonomy.autonomy.scaling.decision import (
    _EPOCH_WEEKDAY,
    SECONDS_PER_DAY,
    SECONDS_PER_WEEK,
    _is_count,
    _is_number,
    _require,
    _require_seconds,
    week_offset_s,
)

DEFAULT_SAMPLE_S: Final = 60.0  # the forecaster learns from one-minute means (and maxima)
DEFAULT_DAILY_SLOT_S: Final = 300.0  # daily profile resolution
DEFAULT_WEEKLY_SLOT_S: Final = 300.0  # weekly profile resolution
DEFAULT_FINE_SLOT_S: Final = 60.0  # resolution of the extra fine daily and weekly profiles
DEFAULT_DAILY_SMOOTHING: Final = 0.3  # weight of the newest day in the daily profile
DEFAULT_WEEKLY_SMOOTHING: Final = 0.5  # weight of the newest week in the weekly profile
DEFAULT_LEVEL_HALF_LIFE_S: Final = 180.0  # how fast the seasonal models follow the level
DEFAULT_FLAT_HALF_LIFE_S: Final = 120.0  # the non-seasonal (persistence) model's memory
DEFAULT_OUTLIER_RATIO: Final = 2.0  # learning clips a sample to [expected / r, expected x r]
DEFAULT_MIN_PROFILE_COVERAGE: Final = 0.95  # fraction of a profile's slots seen before it is used
DEFAULT_SAFETY_QUANTILE: Final = 0.75  # provision for this quantile of the forecast errors (start)
DEFAULT_RESIDUAL_WINDOW: Final = 2880  # forecast errors kept (samples: two days of minutes)
DEFAULT_MIN_RESIDUALS: Final = 60  # a model is trusted after this many scored forecasts
DEFAULT_MAX_HEADROOM: Final = 1.0  # the safety margin never exceeds +100 %
DEFAULT_SCORE_HALF_LIFE_S: Final = 86_400.0  # memory of the forecast bias used to pick a model

_QUANTILE_REFRESH_SAMPLES: Final = 30  # re-sort the residuals at most every 30 new ones
# Forecast errors are kept per load level (in instances' worth of load) as well as pooled.
_LEVEL_BIN_EDGES: Final = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
_MIN_LEVEL_RESIDUALS: Final = 60
_SCORE_QUANTILE: Final = 0.9  # models are compared by the mean of their errors above this quantile


@dataclass(frozen=True, slots=True)
class PriorScheduleEntry:
    """One point of a prior weekly load shape: from `time_of_day` on `weekday` (UTC), the load is
    expected at `load_factor` x normal, until the next entry of the week.

    Priors shape the forecast only until the policy has learned a day of the real load.
    `weekday` is 0 = Monday ... 6 = Sunday.
    """

    weekday: int
    time_of_day: str
    load_factor: float
    description: str = ""

    def __post_init__(self) -> None:
        owner = "PriorScheduleEntry"
        _require(
            _is_count(self.weekday) and 0 <= self.weekday <= 6,
            owner,
            "weekday",
            "an integer in [0, 6] (0 = Monday)",
            self.weekday,
        )
        _require(
            self._minute_of_day() is not None,
            owner,
            "time_of_day",
            "HH:MM in [00:00, 23:59]",
            self.time_of_day,
        )
        _require(
            _is_number(self.load_factor) and 0 < self.load_factor <= 100,
            owner,
            "load_factor",
            "in (0, 100]",
            self.load_factor,
        )

    def _minute_of_day(self) -> int | None:
        parts = self.time_of_day.split(":") if isinstance(self.time_of_day, str) else []
        if len(parts) != 2 or not all(p.isdigit() and len(p) == 2 for p in parts):
            return None
        hour, minute = int(parts[0]), int(parts[1])
        return hour * 60 + minute if hour < 24 and minute < 60 else None

    @property
    def week_offset_s(self) -> int:
        """Seconds from Monday 00:00 UTC to this entry."""
        minute = self._minute_of_day()
        assert minute is not None  # validated in __post_init__
        return self.weekday * SECONDS_PER_DAY + minute * 60


def _entry(js_day: int, time_of_day: str, factor: float, description: str) -> PriorScheduleEntry:
    # The original module numbered days like JavaScript's getUTCDay(): 0 = Sunday.
    return PriorScheduleEntry((js_day + 6) % 7, time_of_day, factor, description)


ORIGINAL_MODULE_PRIOR_SCHEDULE: Final[tuple[PriorScheduleEntry, ...]] = (
    *(_entry(d, "08:00", 1.5, "weekday morning peak") for d in range(1, 6)),
    *(_entry(d, "12:00", 1.3, "weekday lunch peak") for d in range(1, 6)),
    *(_entry(d, "17:00", 1.4, "weekday evening peak") for d in range(1, 6)),
    _entry(5, "18:00", 1.8, "Friday night social payments"),
    _entry(0, "00:00", 0.3, "Sunday midnight low"),
    *(_entry(d, "00:00", 0.2, "weekday midnight low") for d in range(1, 6)),
    _entry(6, "00:00", 0.3, "Saturday midnight low"),
)
"""The hard-coded "African market" peaks of the TypeScript module (UTC), usable as a prior only."""


class _StepSchedule:
    """A prior schedule as a weekly step function of the load factor."""

    __slots__ = ("_factors", "_offsets")

    def __init__(self, entries: tuple[PriorScheduleEntry, ...]) -> None:
        ordered = sorted(entries, key=lambda e: e.week_offset_s)
        self._offsets = [float(e.week_offset_s) for e in ordered]
        self._factors = [e.load_factor for e in ordered]

    def at(self, epoch_s: float) -> float:
        # Index -1 (before the week's first entry) is the last entry of the previous week.
        return self._factors[bisect_right(self._offsets, week_offset_s(epoch_s)) - 1]

    def max_over(self, start_s: float, end_s: float) -> float:
        span = end_s - start_s
        if span >= SECONDS_PER_WEEK:
            return max(self._factors)
        offset = week_offset_s(start_s)
        index = bisect_right(self._offsets, offset) - 1
        highest = self._factors[index]
        count = len(self._offsets)
        for step in range(1, count + 1):
            following = (index + step) % count
            distance = (self._offsets[following] - offset) % SECONDS_PER_WEEK
            if distance > span:
                break
            highest = max(highest, self._factors[following])
        return highest


@dataclass(frozen=True, slots=True)
class ForecastConfig:
    """How `LoadForecaster` learns the load's shape; every default is a named constant above.

    The forecaster averages the observed load over `sample_s` and learns two profiles from those
    samples: a daily one at `daily_slot_s` resolution (the newest day weighs `daily_smoothing` in
    it) and a weekly one at `weekly_slot_s` resolution (the newest week weighs
    `weekly_smoothing`). A profile is used once `min_profile_coverage` of its slots have been
    seen. Each model follows the level of the load with a half-life of `level_half_life_s`
    (`flat_half_life_s` for the shapeless one). Learning clips a sample to within
    `outlier_ratio` of what was expected, so a surprise spike bends a profile only a little.
    Forecast errors at the lead time are kept for the last `residual_window` samples; a model is
    trusted after `min_residuals`; the safety margin is their `safety_quantile`, within
    [0, `max_headroom`]. Models are compared by their bias with a memory of
    `score_half_life_s` and the spread of their errors. `prior_schedule` (empty: none) shapes
    the forecast until the daily profile is trusted.
    """

    sample_s: float = DEFAULT_SAMPLE_S
    daily_slot_s: float = DEFAULT_DAILY_SLOT_S
    weekly_slot_s: float = DEFAULT_WEEKLY_SLOT_S
    fine_slot_s: float | None = DEFAULT_FINE_SLOT_S
    daily_smoothing: float = DEFAULT_DAILY_SMOOTHING
    weekly_smoothing: float = DEFAULT_WEEKLY_SMOOTHING
    level_half_life_s: float = DEFAULT_LEVEL_HALF_LIFE_S
    flat_half_life_s: float = DEFAULT_FLAT_HALF_LIFE_S
    outlier_ratio: float = DEFAULT_OUTLIER_RATIO
    min_profile_coverage: float = DEFAULT_MIN_PROFILE_COVERAGE
    safety_quantile: float = DEFAULT_SAFETY_QUANTILE
    residual_window: int = DEFAULT_RESIDUAL_WINDOW
    min_residuals: int = DEFAULT_MIN_RESIDUALS
    max_headroom: float = DEFAULT_MAX_HEADROOM
    score_half_life_s: float = DEFAULT_SCORE_HALF_LIFE_S
    prior_schedule: tuple[PriorScheduleEntry, ...] = ()

    def __post_init__(self) -> None:
        owner = "ForecastConfig"
        for name in (
            "sample_s",
            "daily_slot_s",
            "weekly_slot_s",
            "level_half_life_s",
            "flat_half_life_s",
            "score_half_life_s",
        ):
            _require_seconds(owner, name, getattr(self, name), positive=True)
        _require(
            self.sample_s <= 3600 and SECONDS_PER_DAY % self.sample_s == 0,
            owner,
            "sample_s",
            "a divisor of 86400 seconds, at most 3600",
            self.sample_s,
        )
        for name, period in (
            ("daily_slot_s", SECONDS_PER_DAY),
            ("weekly_slot_s", SECONDS_PER_WEEK),
            ("fine_slot_s", SECONDS_PER_DAY),
        ):
            value = getattr(self, name)
            if value is None and name == "fine_slot_s":
                continue
            _require(
                period % value == 0 and value % self.sample_s == 0 and value <= SECONDS_PER_DAY,
                owner,
                name,
                f"a divisor of {period}, a multiple of sample_s={self.sample_s:g} and at most 86400",
                value,
            )
        for name in ("daily_smoothing", "weekly_smoothing"):
            value = getattr(self, name)
            _require(_is_number(value) and 0 < value <= 1, owner, name, "in (0, 1]", value)
        _require(
            _is_number(self.outlier_ratio) and self.outlier_ratio > 1,
            owner,
            "outlier_ratio",
            "a number > 1",
            self.outlier_ratio,
        )
        _require(
            _is_number(self.min_profile_coverage) and 0 < self.min_profile_coverage <= 1,
            owner,
            "min_profile_coverage",
            "in (0, 1]",
            self.min_profile_coverage,
        )
        _require(
            _is_number(self.safety_quantile) and 0.5 <= self.safety_quantile < 1,
            owner,
            "safety_quantile",
            "in [0.5, 1)",
            self.safety_quantile,
        )
        _require(
            _is_count(self.residual_window) and 10 <= self.residual_window <= 1_000_000,
            owner,
            "residual_window",
            "an integer in [10, 1000000]",
            self.residual_window,
        )
        _require(
            _is_count(self.min_residuals) and 1 <= self.min_residuals <= self.residual_window,
            owner,
            "min_residuals",
            f"an integer in [1, residual_window={self.residual_window}]",
            self.min_residuals,
        )
        _require(
            _is_number(self.max_headroom) and 0 <= self.max_headroom <= 10,
            owner,
            "max_headroom",
            "in [0, 10]",
            self.max_headroom,
        )
        _require(
            isinstance(self.prior_schedule, tuple)
            and all(isinstance(e, PriorScheduleEntry) for e in self.prior_schedule),
            owner,
            "prior_schedule",
            "a tuple of PriorScheduleEntry",
            self.prior_schedule,
        )


def _alpha(sample_s: float, half_life_s: float) -> float:
    """The weight of one sample in an exponential average with the given half-life."""
    return 1.0 - math.pow(0.5, sample_s / half_life_s)


def quantile_of_sorted(ordered: list[float], quantile: float) -> float:
    """The `quantile` of non-empty sorted values, interpolated linearly (numpy's default)."""
    position = quantile * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


class _QuantileWindow:
    """The last `capacity` values and a sorted copy of them, re-sorted only every few additions."""

    __slots__ = ("_fresh", "_sorted", "values")

    def __init__(self, capacity: int) -> None:
        self.values: deque[float] = deque(maxlen=capacity)
        self._sorted: list[float] = []
        self._fresh = 0

    def __len__(self) -> int:
        return len(self.values)

    def add(self, value: float) -> None:
        self.values.append(value)
        self._fresh += 1

    def _ordered(self) -> list[float]:
        if not self._sorted or self._fresh >= _QUANTILE_REFRESH_SAMPLES:
            self._sorted = sorted(self.values)
            self._fresh = 0
        return self._sorted

    def quantile(self, quantile: float) -> float | None:
        if not self.values:
            return None
        return quantile_of_sorted(self._ordered(), quantile)

    def tail_mean(self, quantile: float) -> float | None:
        """The mean of the values above `quantile` (expected shortfall), None when empty."""
        if not self.values:
            return None
        ordered = self._ordered()
        tail = ordered[min(int(quantile * len(ordered)), len(ordered) - 1) :]
        return sum(tail) / len(tail)


class LevelQuantiles:
    """Relative errors kept pooled and by load level, with a quantile per level once it has enough.

    Relative noise is larger at low load (counts are Poisson), so a value is filed under its
    load level (in units of one instance's target, binned by `_LEVEL_BIN_EDGES`) as well as in
    the pool; `quantile` answers from the level's own values once it holds `min_per_level`, from
    the pool before that. Used for the forecaster's errors and the load metric's update jumps.
    """

    __slots__ = ("_by_level", "_min_per_level", "pooled")

    def __init__(self, capacity: int, min_per_level: int) -> None:
        self.pooled = _QuantileWindow(capacity)
        self._by_level = [_QuantileWindow(capacity) for _ in range(len(_LEVEL_BIN_EDGES) + 1)]
        self._min_per_level = min_per_level

    def __len__(self) -> int:
        return len(self.pooled)

    def add(self, value: float, level: float) -> None:
        """File `value` (a relative error) seen at `level` (load / one instance's target)."""
        self.pooled.add(value)
        self._by_level[bisect_right(_LEVEL_BIN_EDGES, level)].add(value)

    def quantile(self, quantile: float, level: float | None = None) -> float | None:
        """The `quantile` at `level` (pooled while that level has too few values, or with no
        level); None while there are none."""
        if level is not None:
            by_level = self._by_level[bisect_right(_LEVEL_BIN_EDGES, level)]
            if len(by_level) >= self._min_per_level:
                return by_level.quantile(quantile)
        return self.pooled.quantile(quantile)


class _Shape(Protocol):
    """The relative shape of the load over time; a model forecasts `level x shape`."""

    def at(self, epoch_s: float) -> float: ...

    def max_over(self, start_s: float, end_s: float) -> float: ...


class _FlatShape:
    """No shape at all: persistence."""

    def at(self, epoch_s: float) -> float:
        return 1.0

    def max_over(self, start_s: float, end_s: float) -> float:
        return 1.0


class _PeriodicProfile:
    """The load over a repeating period (a day, a week) in slots, learned from samples.

    Each slot is an exponential average over periods of the samples that fell in it (a sample
    further than `outlier_ratio` from the slot's value is clipped first). Between slot centres the
    profile is linear, so a ramp is not flattened into steps; a slot not seen yet borrows the
    nearest seen slot before it.
    """

    __slots__ = (
        "_count",
        "_current_abs",
        "_current_count",
        "_current_sum",
        "_outlier_ratio",
        "_period_s",
        "_phase_s",
        "_seen",
        "_seen_slots",
        "_slot_s",
        "_smoothing",
        "_values",
        "known",
    )

    def __init__(
        self, *, period_s: int, slot_s: float, phase_s: float, smoothing: float, outlier_ratio: float
    ) -> None:
        self._period_s = period_s
        self._slot_s = slot_s
        self._phase_s = phase_s
        self._smoothing = smoothing
        self._outlier_ratio = outlier_ratio
        self._count = int(period_s // slot_s)
        self._values = [0.0] * self._count
        self._seen = [False] * self._count
        self._seen_slots: list[int] = []
        self.known = 0
        self._current_abs: int | None = None
        self._current_sum = 0.0
        self._current_count = 0

    @property
    def coverage(self) -> float:
        """The fraction of slots seen at least once."""
        return self.known / self._count

    def learn(self, mid_s: float, x_mean: float) -> None:
        """Add one sample (its mid-time and mean load); a slot is committed when the next begins."""
        slot_abs = int((mid_s + self._phase_s) // self._slot_s)
        if slot_abs != self._current_abs:
            if self._current_abs is not None and self._current_count:
                self._commit(self._current_abs % self._count, self._current_sum / self._current_count)
            self._current_abs = slot_abs
            self._current_sum = 0.0
            self._current_count = 0
        self._current_sum += x_mean
        self._current_count += 1

    def _commit(self, slot: int, value: float) -> None:
        if not self._seen[slot]:
            self._seen[slot] = True
            self._values[slot] = value
            self.known += 1
            insort(self._seen_slots, slot)
            return
        old = self._values[slot]
        ratio = self._outlier_ratio
        clipped = min(max(value, old / ratio), old * ratio + 1e-9)
        self._values[slot] = old + self._smoothing * (clipped - old)

    def _slot_value(self, slot: int) -> float:
        if self._seen[slot]:
            return self._values[slot]
        # Index -1 (no seen slot before this one) wraps to the last seen slot of the period.
        return self._values[self._seen_slots[bisect_right(self._seen_slots, slot) - 1]]

    def at(self, epoch_s: float) -> float:
        if not self.known:
            return 0.0
        position = ((epoch_s + self._phase_s) % self._period_s) / self._slot_s - 0.5
        left = math.floor(position)
        before = self._slot_value(left % self._count)
        after = self._slot_value((left + 1) % self._count)
        return before + (after - before) * (position - left)

    def max_over(self, start_s: float, end_s: float) -> float:
        """The highest of the interpolated profile over [start, end] and of the slots it overlaps.

        A slot's value is the mean load of its whole slot, so a one-minute burst learned in a
        one-minute slot must count for all of that minute, not only around its centre.
        """
        highest = max(self.at(start_s), self.at(end_s))
        if self.known:
            for edge_s in (start_s, end_s):
                slot = int(((edge_s + self._phase_s) % self._period_s) // self._slot_s)
                highest = max(highest, self._slot_value(slot))
        slot_s = self._slot_s
        centre = (math.floor((start_s + self._phase_s) / slot_s - 0.5) + 1.5) * slot_s - self._phase_s
        while centre < end_s:
            highest = max(highest, self.at(centre))
            centre += slot_s
        return highest


class _Model:
    """One forecasting model: a shape (learned profile, prior or flat) times a smoothed level.

    It keeps its own level, its pending forecasts, its bias, and its errors at the lead time
    (relative to the forecast, or to one instance's target when the forecast is smaller), pooled
    and by load level: relative noise is larger at low load (Poisson counts), so each level gets
    the margin its own errors call for.
    """

    __slots__ = (
        "_bias",
        "_clip_ratio",
        "_ew_shape",
        "_ew_x",
        "_floor_tpm",
        "_level_alpha",
        "_pending",
        "_score_alpha",
        "_shape_floor",
        "active",
        "name",
        "residuals",
        "shape",
    )

    def __init__(
        self,
        name: str,
        shape: _Shape,
        *,
        level_alpha: float,
        score_alpha: float,
        clip_ratio: float | None,
        shape_floor: float,
        residual_window: int,
        floor_tpm: float,
    ) -> None:
        self.name = name
        self.shape = shape
        self.active = False
        self._level_alpha = level_alpha
        self._score_alpha = score_alpha
        self._clip_ratio = clip_ratio
        self._shape_floor = shape_floor
        self._floor_tpm = floor_tpm
        self._ew_x = 0.0
        self._ew_shape = 0.0
        self._bias = 0.0
        self._pending: deque[tuple[int, float]] = deque()
        self.residuals = LevelQuantiles(residual_window, _MIN_LEVEL_RESIDUALS)

    def activate(self, x_mean: float, shape: float) -> None:
        self.active = True
        self._ew_x = x_mean
        self._ew_shape = shape

    def deactivate(self) -> None:
        self.active = False
        self._pending.clear()

    @property
    def level(self) -> float:
        """Load per unit of shape: the forecast at time t is `level x shape(t)`.

        A learned profile can be 0 (no load at night); `_shape_floor` (in its units) keeps the
        ratio near 1 there instead of 0/0, so the morning ramp is still forecast.
        """
        floor = self._shape_floor
        if self._ew_shape + floor <= 0:
            return self._ew_x
        level = (self._ew_x + floor) / (self._ew_shape + floor)
        clip = self._clip_ratio
        if clip is None or not isinstance(self.shape, _PeriodicProfile):
            return level  # persistence, or a prior schedule of unitless factors
        # A learned profile is in tpm, so its level is about 1. Where the profile is near 0 (the night)
        # the ratio is noise (60 tpm against a learned 5 is x12), and times the morning's shape it
        # would forecast a peak many times any seen. The level is kept under the clip ratio: a
        # bigger rise is a surprise (the reactive floor) until the profile has learned it.
        return min(level, clip)

    def on_sample(
        self, index: int, x_mean: float, x_max: float, mid_s: float, target_index: int, target_mid_s: float
    ) -> None:
        """Score the forecast made for this sample, follow the level, forecast `target_index`."""
        pending = self._pending
        while pending and pending[0][0] < index:
            pending.popleft()
        if pending and pending[0][0] == index:
            _, forecast = pending.popleft()
            floor = self._floor_tpm
            residual = (x_max - forecast) / max(forecast, floor)
            self.residuals.add(residual, forecast / floor)
            self._bias += self._score_alpha * (math.log((forecast + floor) / (x_mean + floor)) - self._bias)
        shape_now = self.shape.at(mid_s)
        x = x_mean
        if self._clip_ratio is not None and self._ew_shape > 0:
            expected = self.level * shape_now
            x = min(max(x, expected / self._clip_ratio), expected * self._clip_ratio + self._floor_tpm)
        self._ew_x += self._level_alpha * (x - self._ew_x)
        self._ew_shape += self._level_alpha * (shape_now - self._ew_shape)
        pending.append((target_index, self.level * self.shape.at(target_mid_s)))

    def headroom(self, quantile: float, forecast_tpm: float | None = None) -> float | None:
        """The `quantile` of the relative errors at this forecast's load level (pooled when that
        level has too few errors, or when no forecast is given); None until there are any."""
        level = None if forecast_tpm is None else forecast_tpm / self._floor_tpm
        return self.residuals.quantile(quantile, level)

    def score(self) -> float | None:
        """About log(capacity provisioned / load served) to cover the worst errors: lower is better.

        The tail mean (not the quantile) of the errors counts: a model that misses rare steps by
        a lot (persistence on step-shaped load) must not win on its ordinary days.
        """
        spread = self.residuals.pooled.tail_mean(_SCORE_QUANTILE)
        if spread is None:
            return None
        return self._bias + math.log1p(max(spread, -0.99))


@dataclass(frozen=True, slots=True)
class ForecastOutlook:
    """What the forecaster expects: peaks over two horizons, the model used and its safety margins.

    `peak_up_tpm` is the highest forecast load from now to the scale-up horizon, `peak_hold_tpm`
    the highest to the scale-down hold horizon; `headroom_up` / `headroom_hold` are the relative
    safety margins (the safety quantile of past forecast errors at each peak's load level) to
    add on top, relative to max(peak, one instance's target).
    """

    model: str
    nowcast_tpm: float
    peak_up_tpm: float
    peak_hold_tpm: float
    headroom_up: float
    headroom_hold: float
    scored_forecasts: int


class LoadForecaster:
    """Learns the load's daily and weekly shape from the samples it is shown and forecasts ahead.

    Several models compete, each `level x shape(t)` with its own exponentially smoothed level (so
    a model follows growth and unusual days, and its shape only has to be right relative to
    now): `weekly` (a week-long profile: weekday/weekend and day-specific shapes), `daily` (a
    day-long profile from every day), the same two at `fine_slot_s` resolution (step-shaped
    load), `prior` (the configured schedule, only until the daily profile is trusted) and `flat`
    (no shape: persistence, for load without seasonality). This is a Holt-Winters-style
    multiplicative seasonal model whose seasonal profiles are robust exponential averages over
    periods. Every model's forecast one `lead_s` ahead is scored against what came; the model with
    the lowest bias plus tail of errors (what it would cost to cover its worst misses) is used.
    No wall clock: time is the timestamps given to `observe`.
    """

    def __init__(self, config: ForecastConfig, *, lead_s: float, floor_tpm: float) -> None:
        _require_seconds("LoadForecaster", "lead_s", lead_s)
        _require(
            _is_number(floor_tpm) and floor_tpm > 0, "LoadForecaster", "floor_tpm", "a number > 0", floor_tpm
        )
        self.config = config
        self.lead_s = lead_s
        self._lead_samples = int(lead_s // config.sample_s)

        def profile(period_s: int, slot_s: float, smoothing: float) -> _PeriodicProfile:
            return _PeriodicProfile(
                period_s=period_s,
                slot_s=slot_s,
                phase_s=0.0 if period_s == SECONDS_PER_DAY else _EPOCH_WEEKDAY * SECONDS_PER_DAY,
                smoothing=smoothing,
                outlier_ratio=config.outlier_ratio,
            )

        self.daily = profile(SECONDS_PER_DAY, config.daily_slot_s, config.daily_smoothing)
        self.weekly = profile(SECONDS_PER_WEEK, config.weekly_slot_s, config.weekly_smoothing)
        profiles: list[tuple[str, _PeriodicProfile]] = [("weekly", self.weekly), ("daily", self.daily)]
        if config.fine_slot_s is not None:
            # Step-shaped load (a market opening, a batch job) needs fine slots; smooth load is
            # forecast better by coarse ones. Both are learned and the scores decide.
            profiles += [
                ("weekly_fine", profile(SECONDS_PER_WEEK, config.fine_slot_s, config.weekly_smoothing)),
                ("daily_fine", profile(SECONDS_PER_DAY, config.fine_slot_s, config.daily_smoothing)),
            ]
        self._profiles = tuple(p for _, p in profiles)
        score_alpha = _alpha(config.sample_s, config.score_half_life_s)

        def model(
            name: str, shape: _Shape, half_life_s: float, clip: float | None, shape_floor: float = 0.0
        ) -> _Model:
            return _Model(
                name,
                shape,
                level_alpha=_alpha(config.sample_s, half_life_s),
                score_alpha=score_alpha,
                clip_ratio=clip,
                shape_floor=shape_floor,
                residual_window=config.residual_window,
                floor_tpm=floor_tpm,
            )

        level_half_life_s = config.level_half_life_s
        ratio = config.outlier_ratio
        # Profiles are in tpm: a hundredth of an instance's target is "no load" for the level.
        seasonal = [
            model(name, shape, level_half_life_s, ratio, 0.01 * floor_tpm) for name, shape in profiles
        ]
        self._daily_model = seasonal[1]
        self._prior_model = (
            model("prior", _StepSchedule(config.prior_schedule), level_half_life_s, ratio)
            if config.prior_schedule
            else None
        )
        self._flat_model = model("flat", _FlatShape(), config.flat_half_life_s, None)
        self._models = tuple(m for m in (*seasonal, self._prior_model, self._flat_model) if m is not None)
        self._sample_index: int | None = None
        self._sample_sum = 0.0
        self._sample_max = 0.0
        self._sample_count = 0
        # Models and errors only change when a sample closes: the choice is cached until then.
        self._choice: _Model | None = None
        self._choice_stale = True

    def observe(self, now_s: float, load_tpm: float) -> None:
        """Record one load measurement; a sample closes when time moves past it."""
        index = int(now_s // self.config.sample_s)
        if self._sample_index is None:
            self._sample_index = index
        elif index > self._sample_index:
            self._close_sample(self._sample_index, self._sample_sum / self._sample_count, self._sample_max)
            self._sample_index = index
            self._sample_sum = 0.0
            self._sample_max = 0.0
            self._sample_count = 0
        self._sample_sum += load_tpm
        self._sample_count += 1
        if load_tpm > self._sample_max:
            self._sample_max = load_tpm

    def _trusted(self, model: _Model | None) -> bool:
        return model is not None and model.active and len(model.residuals) >= self.config.min_residuals

    def _close_sample(self, index: int, x_mean: float, x_max: float) -> None:
        sample_s = self.config.sample_s
        mid_s = (index + 0.5) * sample_s
        target_index = index + 1 + self._lead_samples
        target_mid_s = (target_index + 0.5) * sample_s
        coverage = self.config.min_profile_coverage
        prior = self._prior_model
        for model in self._models:
            if not model.active:
                shape = model.shape
                if isinstance(shape, _PeriodicProfile):
                    ready = shape.coverage >= coverage
                else:
                    ready = model is self._flat_model or not self._trusted(self._daily_model)
                if ready:
                    model.activate(x_mean, max(model.shape.at(mid_s), 1e-9))
            if model.active:
                model.on_sample(index, x_mean, x_max, mid_s, target_index, target_mid_s)
        if prior is not None and prior.active and self._trusted(self._daily_model):
            prior.deactivate()
        for profile in self._profiles:
            profile.learn(mid_s, x_mean)
        self._choice_stale = True

    def _choose(self) -> _Model | None:
        """The trusted model with the lowest score (bias plus the tail of its errors)."""
        best: tuple[float, _Model] | None = None
        for model in self._models:
            if not self._trusted(model):
                continue
            score = model.score()
            if score is not None and (best is None or score < best[0]):
                best = (score, model)
        return None if best is None else best[1]

    def outlook(
        self, now_s: float, up_horizon_s: float, hold_horizon_s: float, quantile: float | None = None
    ) -> ForecastOutlook | None:
        """Peaks of the best trusted model over both horizons, with safety margins at `quantile`
        of its errors (default: the configured safety quantile); None while no model is trusted."""
        if quantile is None:
            quantile = self.config.safety_quantile
        if self._choice_stale:
            self._choice = self._choose()
            self._choice_stale = False
        model = self._choice
        if model is None:
            return None
        level = model.level
        peak_up = level * model.shape.max_over(now_s, now_s + up_horizon_s)
        peak_hold = level * model.shape.max_over(now_s, now_s + hold_horizon_s)
        cap = self.config.max_headroom
        return ForecastOutlook(
            model=model.name,
            nowcast_tpm=level * model.shape.at(now_s),
            peak_up_tpm=peak_up,
            peak_hold_tpm=peak_hold,
            headroom_up=min(max(model.headroom(quantile, peak_up) or 0.0, 0.0), cap),
            headroom_hold=min(max(model.headroom(quantile, peak_hold) or 0.0, 0.0), cap),
            scored_forecasts=len(model.residuals),
        )

    def learned_days(self) -> float:
        """How much of a day the daily profile has seen (1.0: every slot)."""
        return self.daily.coverage
