"""The streaming detector's baseline: elapsed time in sample intervals, and the robust seasonal forecast.

Stages of `StreamingDetector`'s per-point loop, each holding its own state: `IntervalClock` (the
typical interval and how far a point is from the previous one), `SeasonalProfile` (one periodic
profile) and `Forecaster` (levels, noise scale, the seasonal profiles and which model is used).
"""

from __future__ import annotations

import math
from array import array
from typing import Final

from mcp_autonomy.autonomy.detection.config import StreamingDetectorConfig

__all__ = ["DAY_S", "RMS_PER_MEAN_ABS", "WEEK_S", "Forecaster", "IntervalClock", "SeasonalProfile"]

DAY_S: Final = 86_400.0
WEEK_S: Final = 7 * DAY_S
RMS_PER_MEAN_ABS: Final = math.sqrt(math.pi / 2.0)  # Gaussian E|x| -> sigma
_INTERVAL_LEARNING_RATE: Final = 0.01  # per point, in log space
_INTERVAL_STEP_CLIP: Final = 0.7  # one interval moves the estimate by at most x2 in log space
_MAX_LEARNING_STEP_INTERVALS: Final = 2.0  # one point never carries more than 2 intervals' weight
_SEASON_ERROR_CLIP: Final = 5.0  # scales: one point's weight in a model's error is bounded
MODEL_NONE: Final = 0
MODEL_DAILY: Final = 1
MODEL_WEEKLY: Final = 2  # daily plus day-of-week corrections


class IntervalClock:
    """Elapsed time in sample intervals.

    Constants are in intervals and the interval is learnt (in log space, robust to jitter) or
    configured, so irregular timestamps decay the state by time, not by point count. A point older
    than the previous one counts as simultaneous with it. A silence longer than `gap_intervals` is
    a gap: it resets the short-term evidence, so a gap alone never alarms.
    """

    __slots__ = (
        "_cached_elapsed_iv",
        "_cusum_leak_iv",
        "_gap_iv",
        "_learn_interval",
        "_trend_window_iv",
        "cusum_decay",
        "gap",
        "interval_s",
        "last_t_s",
        "learning_iv",
        "trend_decay",
    )

    def __init__(self, config: StreamingDetectorConfig) -> None:
        self.interval_s = config.sample_interval_s or 1.0
        self._learn_interval = config.sample_interval_s is None
        self._gap_iv = config.gap_intervals
        self._cusum_leak_iv = config.cusum_leak_time_constant_intervals
        self._trend_window_iv = config.trend_window_intervals
        self.last_t_s = 0.0
        self.learning_iv = 0.0  # the point's weight in learning: elapsed intervals, at most 2
        self.gap = False
        # Decay factors over the elapsed time, recomputed only when it changes (regular series).
        self._cached_elapsed_iv = -1.0
        self.cusum_decay = 1.0
        self.trend_decay = 1.0

    def start(self, interval_s: float, last_t_s: float) -> None:
        """Begin at the end of the warm-up, with the interval it measured."""
        self.interval_s = interval_s
        self.last_t_s = last_t_s

    def advance(self, t_s: float) -> float:
        """Move to the point at `t_s`; return the seconds elapsed since the previous one."""
        elapsed_s = t_s - self.last_t_s
        if elapsed_s < 0.0:
            elapsed_s = 0.0
        else:
            self.last_t_s = t_s
        interval_s = self.interval_s
        if self._learn_interval and elapsed_s > 0.0 and elapsed_s != interval_s:
            step = math.log(elapsed_s / interval_s)
            if step > _INTERVAL_STEP_CLIP:
                step = _INTERVAL_STEP_CLIP
            elif step < -_INTERVAL_STEP_CLIP:
                step = -_INTERVAL_STEP_CLIP
            interval_s *= math.exp(_INTERVAL_LEARNING_RATE * step)
            self.interval_s = interval_s
        elapsed_iv = elapsed_s / interval_s
        self.learning_iv = (
            elapsed_iv if elapsed_iv < _MAX_LEARNING_STEP_INTERVALS else _MAX_LEARNING_STEP_INTERVALS
        )
        gap = self.gap = elapsed_iv > self._gap_iv
        if elapsed_iv != self._cached_elapsed_iv:
            self._cached_elapsed_iv = elapsed_iv
            self.cusum_decay = math.exp(-elapsed_iv / self._cusum_leak_iv)
            self.trend_decay = 0.0 if gap else math.exp(-elapsed_iv / self._trend_window_iv)
        return elapsed_s


class SeasonalProfile:
    """One periodic profile (a day, or a week of hourly corrections): bias-corrected exponential
    averages per bin, interpolated linearly between the two nearest bin centres.

    With `needs_both_bins`, the profile says 0 until both bins around a time have been learnt (the
    weekly corrections); otherwise a learnt bin counts alone (the daily profile fills in gradually).
    """

    __slots__ = (
        "_bins",
        "_bins_per_s",
        "_memory_s",
        "_needs_both_bins",
        "_period_s",
        "lower",
        "means",
        "upper",
        "upper_fraction",
        "weights",
    )

    def __init__(self, bins: int, period_s: float, memory_periods: float, needs_both_bins: bool) -> None:
        # Arrays, not lists: a list of floats is a container the garbage collector walks item by
        # item (hundreds of thousands with many providers: tens of ms per full collection, on the
        # event loop); an array of doubles holds no references and is never walked.
        self.means = array("d", bytes(8 * bins))
        self.weights = array("d", bytes(8 * bins))  # the bias correction: the mean's total weight
        self._bins = bins
        self._period_s = period_s
        self._bins_per_s = bins / period_s
        self._memory_s = memory_periods * period_s / bins
        self._needs_both_bins = needs_both_bins
        self.lower = 0
        self.upper = 0
        self.upper_fraction = 0.0

    def at(self, t_s: float) -> float:
        """The profile's value at `t_s` (and remember where, for `learn`)."""
        position = (t_s % self._period_s) * self._bins_per_s - 0.5
        if position < 0.0:
            position += self._bins
        lower = int(position)
        fraction = position - lower
        upper = lower + 1
        if upper == self._bins:
            upper = 0
        self.lower = lower
        self.upper = upper
        self.upper_fraction = fraction
        means = self.means
        w0 = self.weights[lower]
        w1 = self.weights[upper]
        if self._needs_both_bins:
            if w0 > 0.0 and w1 > 0.0:
                return (1.0 - fraction) * means[lower] / w0 + fraction * means[upper] / w1
            return 0.0
        return ((1.0 - fraction) * means[lower] / w0 if w0 > 0.0 else 0.0) + (
            fraction * means[upper] / w1 if w1 > 0.0 else 0.0
        )

    def learn(self, target: float, current: float, clip: float, step_s: float) -> None:
        """Move the two bins of the last `at` towards `target`; once both are learnt, the target's
        departure from the `current` profile value is clipped at `clip` (anomalies barely teach)."""
        lower = self.lower
        upper = self.upper
        means = self.means
        weights = self.weights
        if weights[lower] > 0.0 and weights[upper] > 0.0:
            e = target - current
            target = current + (e if -clip < e < clip else (clip if e > 0.0 else -clip))
        rate = step_s / (self._memory_s + step_s)
        w0 = rate * (1.0 - self.upper_fraction)
        w1 = rate * self.upper_fraction
        means[lower] += w0 * (target - means[lower])
        weights[lower] += w0 * (1.0 - weights[lower])
        means[upper] += w1 * (target - means[upper])
        weights[upper] += w1 * (1.0 - weights[upper])


class Forecaster:
    """The robust seasonal baseline: what a point is expected to be, and the noise scale around it.

    Levels are exponentially weighted with Huber-clipped updates (a residual counts at most
    `huber_c` scales) and the scale is an exponentially weighted RMS of residuals clipped at
    `scale_clip` scales, so the anomalies being detected barely move the baseline. The scale is
    floored (relative to the level, absolutely, and at `min_scale_quanta` of the smallest step
    between consecutive values seen), so flat lines never divide by zero and a quantised gauge's
    one-step flickers are not spikes.

    Seasonality: a daily profile and hourly day-of-week corrections are learnt from the series minus
    a slow (one-day) level. Three forecasts run side by side (no season, daily, daily + weekly), each
    with its own level and its error; a profile is used only after `*_min_periods` periods and only
    while its error is `season_selection_margin` lower than the model in use.
    """

    __slots__ = (
        "_daily_min_s",
        "_huber_c",
        "_keep",
        "_level_iv",
        "_min_scale_absolute",
        "_min_scale_quanta",
        "_min_scale_relative",
        "_scale_clip",
        "_scale_iv",
        "_weekly_min_s",
        "daily",
        "daily_season",
        "first_t_s",
        "last_value",
        "level_daily",
        "level_none",
        "level_slow",
        "level_weekly",
        "mae_daily",
        "mae_none",
        "mae_weekly",
        "model",
        "quantum",
        "switch_allowed_s",
        "variance",
        "weekly",
        "weekly_delta",
        "weekly_season",
    )

    def __init__(self, config: StreamingDetectorConfig) -> None:
        self._level_iv = config.level_time_constant_intervals
        self._scale_iv = config.scale_time_constant_intervals
        self._huber_c = config.huber_c
        self._scale_clip = config.scale_clip
        self._min_scale_relative = config.min_scale_relative
        self._min_scale_absolute = config.min_scale_absolute
        self._min_scale_quanta = config.min_scale_quanta
        self.quantum = math.inf  # the smallest non-zero step between consecutive values seen
        self.last_value = math.nan
        self._daily_min_s = config.daily_min_periods * DAY_S
        self._weekly_min_s = config.weekly_min_periods * WEEK_S
        self._keep = 1.0 - config.season_selection_margin
        self.daily = SeasonalProfile(config.daily_bins, DAY_S, config.daily_memory_periods, False)
        self.weekly = SeasonalProfile(config.weekly_bins, WEEK_S, config.weekly_memory_periods, True)
        self.level_none = self.level_daily = self.level_weekly = self.level_slow = 0.0
        self.variance = 0.0
        self.mae_none = self.mae_daily = self.mae_weekly = 0.0  # each model's mean absolute error
        self.model = MODEL_NONE
        self.switch_allowed_s = -math.inf
        self.first_t_s = 0.0
        self.daily_season = self.weekly_delta = self.weekly_season = 0.0  # at the current point

    def start(self, level: float, variance: float) -> None:
        """Begin from the warm-up's robust level and variance."""
        self.level_none = self.level_daily = self.level_weekly = self.level_slow = level
        self.variance = variance
        self.mae_none = self.mae_daily = self.mae_weekly = math.sqrt(variance) / RMS_PER_MEAN_ABS

    def observe(self, x: float) -> None:
        """Track the series' resolution: the smallest non-zero step between consecutive values."""
        step = x - self.last_value
        if step < 0.0:
            step = -step
        if 0.0 < step < self.quantum:
            self.quantum = step
        self.last_value = x

    def drift(self, amount: float) -> None:
        """Move every level by `amount` (a re-baseline)."""
        self.level_none += amount
        self.level_daily += amount
        self.level_weekly += amount
        self.level_slow += amount

    def predict(self, t_s: float, drift: float) -> tuple[float, float, float]:
        """Move the levels along the base slope (`drift`, value units since the last point); return
        the level and seasonal term of the model in use at `t_s`, and the noise scale (floored
        relative to the expected value and absolutely)."""
        level_none = self.level_none = self.level_none + drift
        level_daily = self.level_daily = self.level_daily + drift
        level_weekly = self.level_weekly = self.level_weekly + drift
        self.level_slow += drift
        daily = self.daily_season = self.daily.at(t_s)
        weekly_delta = self.weekly_delta = self.weekly.at(t_s)
        weekly = self.weekly_season = daily + weekly_delta
        model = self.model
        if model == MODEL_NONE:
            level = level_none
            season = 0.0
        elif model == MODEL_DAILY:
            level = level_daily
            season = daily
        else:
            level = level_weekly
            season = weekly
        expected = level + season
        floor = self._min_scale_relative * (expected if expected >= 0.0 else -expected)
        if floor < self._min_scale_absolute:
            floor = self._min_scale_absolute
        quantum_floor = self._min_scale_quanta * self.quantum  # inf until two values differ
        if floor < quantum_floor < math.inf:
            floor = quantum_floor
        scale = math.sqrt(self.variance)
        return level, season, (scale if scale >= floor else floor)

    def learn(
        self,
        t_s: float,
        x: float,
        residual: float,
        scale: float,
        tail_factor: float,
        learning_iv: float,
        interval_s: float,
    ) -> bool:
        """Learn from the point: levels (Huber), scale (clipped RMS), seasonal profiles, model errors,
        and which model to use. Clips are in tail-normalised scales, so a spiky series' ordinary
        jumps count in full. True when the model changed (the scale restarted from its error)."""
        self.observe(x)
        huber = self._huber_c * scale * tail_factor
        daily = self.daily_season
        weekly = self.weekly_season
        rate = learning_iv / (self._level_iv + learning_iv)
        level_none = self.level_none
        e = x - level_none
        level_none += rate * (e if -huber < e < huber else (huber if e > 0.0 else -huber))
        level_daily = self.level_daily
        e = x - daily - level_daily
        level_daily += rate * (e if -huber < e < huber else (huber if e > 0.0 else -huber))
        level_weekly = self.level_weekly
        e = x - weekly - level_weekly
        level_weekly += rate * (e if -huber < e < huber else (huber if e > 0.0 else -huber))
        step_s = learning_iv * interval_s
        slow_rate = step_s / (DAY_S + step_s)  # the slow level the profiles are learnt against
        level_slow = self.level_slow
        e = x - (weekly if self.model == MODEL_WEEKLY else daily) - level_slow
        level_slow += slow_rate * (e if -huber < e < huber else (huber if e > 0.0 else -huber))
        self.level_none = level_none
        self.level_daily = level_daily
        self.level_weekly = level_weekly
        self.level_slow = level_slow
        clip = self._scale_clip * scale * tail_factor
        variance = self.variance
        self.variance = variance + learning_iv / (self._scale_iv + learning_iv) * (
            (residual * residual if -clip < residual < clip else clip * clip) - variance
        )

        self.daily.learn(x - level_slow, daily, huber, step_s)
        self.weekly.learn(x - level_slow - daily, self.weekly_delta, huber, step_s)

        clip = _SEASON_ERROR_CLIP * scale * tail_factor
        e = abs(x - level_none)
        mae = self.mae_none
        self.mae_none = mae + slow_rate * ((e if e < clip else clip) - mae)
        e = abs(x - level_daily - daily)
        mae = self.mae_daily
        self.mae_daily = mae + slow_rate * ((e if e < clip else clip) - mae)
        e = abs(x - level_weekly - weekly)
        mae = self.mae_weekly
        self.mae_weekly = mae + slow_rate * ((e if e < clip else clip) - mae)
        if t_s - self.first_t_s < self._daily_min_s or t_s < self.switch_allowed_s:
            return False  # profiles are not used before their minimum periods, nor switched twice a day
        return self._select_model(t_s)

    def _select_model(self, t_s: float) -> bool:
        """Switch to the model with the lowest error if it beats the current one by the margin (the
        weekly one only after its minimum periods); True when it switched, and then the scale
        restarts from the new model's error."""
        elapsed_s = t_s - self.first_t_s
        best = MODEL_NONE
        best_mae = self.mae_none
        if self.mae_daily < best_mae:
            best = MODEL_DAILY
            best_mae = self.mae_daily
        if elapsed_s >= self._weekly_min_s and self.mae_weekly < best_mae:
            best = MODEL_WEEKLY
            best_mae = self.mae_weekly
        model = self.model
        current_mae = (
            self.mae_none
            if model == MODEL_NONE
            else (self.mae_daily if model == MODEL_DAILY else self.mae_weekly)
        )
        if best == model or not best_mae < self._keep * current_mae:
            return False
        self.model = best
        self.variance = (RMS_PER_MEAN_ABS * best_mae) ** 2
        self.switch_allowed_s = t_s + DAY_S
        return True
