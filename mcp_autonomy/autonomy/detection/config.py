"""The streaming detector's tunables: every default a named constant, validated once.

Time constants are in *sample intervals*, not seconds, so one configuration serves a 1-second and
a 1-hour series alike: the detector learns the series' typical interval (or is told it) and
converts elapsed time into intervals. State decays by elapsed time, never by point count, so an
irregular or gappy series is treated by how much time passed. Seasonal settings are in days and
weeks, which are calendar facts, not sampling ones.

The defaults are those of `Sensitivity.MEDIUM`; `StreamingDetectorConfig.for_sensitivity` scales
the four alarm thresholds (spike, change point, trend significance, trend size) for the others.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from mcp_autonomy.autonomy.detection.base import is_number, require
from mcp_autonomy.autonomy.detection.calibration import DEFAULT_STEEPNESS, threshold_scale
from mcp_autonomy.config import Sensitivity

# --- warm-up ---
DEFAULT_WARMUP_POINTS: Final = 30  # baseline = median/MAD of these; no scores before
DEFAULT_SETTLE_INTERVALS: Final = 100.0  # thresholds start doubled and relax to 1x over this span
# --- robust baseline ---
DEFAULT_LEVEL_TIME_CONSTANT_INTERVALS: Final = 40.0
DEFAULT_SCALE_TIME_CONSTANT_INTERVALS: Final = 100.0
DEFAULT_HUBER_C: Final = 2.0  # level updates are clipped to +-c scales: anomalies barely move it
DEFAULT_SCALE_CLIP: Final = 3.0  # squared residuals are clipped at (c scales)^2 before averaging
DEFAULT_MIN_SCALE_RELATIVE: Final = 1e-3  # the scale never drops below 0.1 % of the level ...
DEFAULT_MIN_SCALE_ABSOLUTE: Final = 1e-9  # ... nor below this, so flat lines never divide by 0
# ... nor below this many of the series' smallest step: a quantised gauge that rarely moves cannot
# show less than one step, and its one-step flickers are not spikes.
DEFAULT_MIN_SCALE_QUANTA: Final = 0.5
DEFAULT_TAIL_QUANTILE: Final = 0.995  # tracked quantile of |z| that measures how heavy the tails are
DEFAULT_TAIL_LEARNING_RATE: Final = 0.02
DEFAULT_TAIL_EXPONENT: Final = 1.5  # heavier tails than Gaussian raise the spike threshold by tf^1.5
# --- statistics and their alarm thresholds (medium sensitivity) ---
DEFAULT_SPIKE_THRESHOLD_Z: Final = 5.5
DEFAULT_CUSUM_SLACK_Z: Final = 1.0  # the CUSUM targets shifts of about 2 scales
DEFAULT_CUSUM_THRESHOLD: Final = 6.0
DEFAULT_CUSUM_CLIP_Z: Final = 4.0  # one point adds at most this much: a spike alone is no shift
DEFAULT_CUSUM_LEAK_TIME_CONSTANT_INTERVALS: Final = 50.0
DEFAULT_AUTOCORRELATION_TIME_CONSTANT_INTERVALS: Final = 200.0
# Noise size: the recent mean |z| (over `volatility_short_intervals`) against its own long-run mean
# and spread (learnt over `volatility_long_intervals`), the likelihood of the recent errors against
# their history; alarms at `volatility_threshold` spreads (noise bursts, a stuck or flat-lined metric).
DEFAULT_VOLATILITY_SHORT_INTERVALS: Final = 30.0
DEFAULT_VOLATILITY_LONG_INTERVALS: Final = 1_000.0
DEFAULT_VOLATILITY_THRESHOLD: Final = 5.0
DEFAULT_TREND_WINDOW_INTERVALS: Final = 60.0  # exponentially weighted regression window
DEFAULT_TREND_THRESHOLD_Z: Final = 5.0  # slope change, in units of its own typical variation
DEFAULT_TREND_MIN_DRIFT_SIGMA: Final = 2.0  # ... and material: >= 2 scales over the horizon
DEFAULT_TREND_HORIZON_INTERVALS: Final = 240.0
DEFAULT_SLOPE_BASELINE_TIME_CONSTANT_INTERVALS: Final = 1200.0
DEFAULT_SLOPE_SCALE_TIME_CONSTANT_INTERVALS: Final = 600.0
# --- gaps and recoveries ---
DEFAULT_GAP_INTERVALS: Final = 10.0  # a longer silence resets the short-term evidence
DEFAULT_RECOVERY_MEMORY_INTERVALS: Final = 300.0  # a return to the pre-shift level is no anomaly,
# and a ramp that goes on after its episode ended is not alerted again (see episodes.py)
# --- seasonality ---
DEFAULT_DAILY_BINS: Final = 48  # 30-minute bins, linearly interpolated
DEFAULT_WEEKLY_BINS: Final = 168  # hourly day-of-week corrections on top of the daily profile
DEFAULT_DAILY_MEMORY_PERIODS: Final = 3.0
DEFAULT_WEEKLY_MEMORY_PERIODS: Final = 2.0
DEFAULT_DAILY_MIN_PERIODS: Final = 2.0  # a profile is used only after this many periods ...
DEFAULT_WEEKLY_MIN_PERIODS: Final = 2.0
DEFAULT_SEASON_SELECTION_MARGIN: Final = 0.1  # ... and only if it cuts the error by 10 %
# --- alert de-duplication ---
DEFAULT_ENTER_SCORE: Final = 0.5
DEFAULT_EXIT_SCORE: Final = 0.25
DEFAULT_EXIT_HOLD_INTERVALS: Final = 5.0
# Once an alert has ended, what it reported stops counting against new evidence by half every this
# many intervals (alerting.OnsetRule): an episode is news once, and again only when it grows by a
# whole threshold or is long past. An hour at the live loop's one-minute points.
DEFAULT_REPORTED_HALF_LIFE_INTERVALS: Final = 60.0

MAX_WARMUP_POINTS: Final = 10_000
MAX_BINS: Final = 10_080  # one per minute of a week: bounds the profiles' memory

_THRESHOLD_FIELDS: Final = (
    "spike_threshold_z",
    "cusum_threshold",
    "trend_threshold_z",
    "trend_min_drift_sigma",
    "volatility_threshold",
)


@dataclass(frozen=True, slots=True)
class StreamingDetectorConfig:
    """How `StreamingDetector` learns a series and when it alarms; defaults are medium sensitivity.

    `sample_interval_s=None` lets the detector learn the typical interval from the data (median of
    the warm-up intervals, then a slow robust update); set it when the feed's period is known.
    """

    warmup_points: int = DEFAULT_WARMUP_POINTS
    settle_intervals: float = DEFAULT_SETTLE_INTERVALS
    sample_interval_s: float | None = None
    level_time_constant_intervals: float = DEFAULT_LEVEL_TIME_CONSTANT_INTERVALS
    scale_time_constant_intervals: float = DEFAULT_SCALE_TIME_CONSTANT_INTERVALS
    huber_c: float = DEFAULT_HUBER_C
    scale_clip: float = DEFAULT_SCALE_CLIP
    min_scale_relative: float = DEFAULT_MIN_SCALE_RELATIVE
    min_scale_absolute: float = DEFAULT_MIN_SCALE_ABSOLUTE
    min_scale_quanta: float = DEFAULT_MIN_SCALE_QUANTA
    tail_quantile: float = DEFAULT_TAIL_QUANTILE
    tail_learning_rate: float = DEFAULT_TAIL_LEARNING_RATE
    tail_exponent: float = DEFAULT_TAIL_EXPONENT
    spike_threshold_z: float = DEFAULT_SPIKE_THRESHOLD_Z
    cusum_slack_z: float = DEFAULT_CUSUM_SLACK_Z
    cusum_threshold: float = DEFAULT_CUSUM_THRESHOLD
    cusum_clip_z: float = DEFAULT_CUSUM_CLIP_Z
    cusum_leak_time_constant_intervals: float = DEFAULT_CUSUM_LEAK_TIME_CONSTANT_INTERVALS
    autocorrelation_time_constant_intervals: float = DEFAULT_AUTOCORRELATION_TIME_CONSTANT_INTERVALS
    volatility_short_intervals: float = DEFAULT_VOLATILITY_SHORT_INTERVALS
    volatility_long_intervals: float = DEFAULT_VOLATILITY_LONG_INTERVALS
    volatility_threshold: float = DEFAULT_VOLATILITY_THRESHOLD
    trend_window_intervals: float = DEFAULT_TREND_WINDOW_INTERVALS
    trend_threshold_z: float = DEFAULT_TREND_THRESHOLD_Z
    trend_min_drift_sigma: float = DEFAULT_TREND_MIN_DRIFT_SIGMA
    trend_horizon_intervals: float = DEFAULT_TREND_HORIZON_INTERVALS
    slope_baseline_time_constant_intervals: float = DEFAULT_SLOPE_BASELINE_TIME_CONSTANT_INTERVALS
    slope_scale_time_constant_intervals: float = DEFAULT_SLOPE_SCALE_TIME_CONSTANT_INTERVALS
    gap_intervals: float = DEFAULT_GAP_INTERVALS
    recovery_memory_intervals: float = DEFAULT_RECOVERY_MEMORY_INTERVALS
    daily_bins: int = DEFAULT_DAILY_BINS
    weekly_bins: int = DEFAULT_WEEKLY_BINS
    daily_memory_periods: float = DEFAULT_DAILY_MEMORY_PERIODS
    weekly_memory_periods: float = DEFAULT_WEEKLY_MEMORY_PERIODS
    daily_min_periods: float = DEFAULT_DAILY_MIN_PERIODS
    weekly_min_periods: float = DEFAULT_WEEKLY_MIN_PERIODS
    season_selection_margin: float = DEFAULT_SEASON_SELECTION_MARGIN
    enter_score: float = DEFAULT_ENTER_SCORE
    exit_score: float = DEFAULT_EXIT_SCORE
    exit_hold_intervals: float = DEFAULT_EXIT_HOLD_INTERVALS
    reported_half_life_intervals: float = DEFAULT_REPORTED_HALF_LIFE_INTERVALS
    score_steepness: float = DEFAULT_STEEPNESS

    def __post_init__(self) -> None:
        w = self.warmup_points
        require(
            isinstance(w, int) and not isinstance(w, bool) and 5 <= w <= MAX_WARMUP_POINTS,
            "warmup_points",
            f"an integer in [5, {MAX_WARMUP_POINTS}]",
            w,
        )
        if self.sample_interval_s is not None:
            require(
                is_number(self.sample_interval_s) and self.sample_interval_s > 0,
                "sample_interval_s",
                "None (learnt) or a finite number of seconds > 0",
                self.sample_interval_s,
            )
        positive = (
            "level_time_constant_intervals",
            "scale_time_constant_intervals",
            "huber_c",
            "scale_clip",
            "min_scale_absolute",
            "tail_learning_rate",
            "spike_threshold_z",
            "cusum_threshold",
            "volatility_threshold",
            "cusum_clip_z",
            "cusum_leak_time_constant_intervals",
            "autocorrelation_time_constant_intervals",
            "trend_window_intervals",
            "trend_threshold_z",
            "trend_min_drift_sigma",
            "trend_horizon_intervals",
            "slope_baseline_time_constant_intervals",
            "slope_scale_time_constant_intervals",
            "gap_intervals",
            "daily_memory_periods",
            "weekly_memory_periods",
            "score_steepness",
            "reported_half_life_intervals",
            "volatility_short_intervals",
            "volatility_long_intervals",
        )
        for name in positive:
            value = getattr(self, name)
            require(is_number(value) and value > 0, name, "a finite number > 0", value)
        non_negative = (
            "settle_intervals",
            "min_scale_relative",
            "min_scale_quanta",
            "cusum_slack_z",
            "recovery_memory_intervals",
            "daily_min_periods",
            "weekly_min_periods",
            "season_selection_margin",
            "exit_hold_intervals",
        )
        for name in non_negative:
            value = getattr(self, name)
            require(is_number(value) and value >= 0, name, "a finite number >= 0", value)
        q = self.tail_quantile
        require(is_number(q) and 0.9 <= q < 1.0, "tail_quantile", "in [0.9, 1)", q)
        require(
            is_number(self.tail_exponent) and self.tail_exponent >= 0,
            "tail_exponent",
            "a finite number >= 0 (0 ignores tail heaviness)",
            self.tail_exponent,
        )
        require(
            is_number(self.min_scale_relative) and self.min_scale_relative < 1,
            "min_scale_relative",
            "in [0, 1)",
            self.min_scale_relative,
        )
        require(
            is_number(self.season_selection_margin) and self.season_selection_margin < 1,
            "season_selection_margin",
            "in [0, 1)",
            self.season_selection_margin,
        )
        for name in ("daily_bins", "weekly_bins"):
            value = getattr(self, name)
            require(
                isinstance(value, int) and not isinstance(value, bool) and 2 <= value <= MAX_BINS,
                name,
                f"an integer in [2, {MAX_BINS}]",
                value,
            )
        require(
            is_number(self.enter_score) and 0 < self.enter_score < 1,
            "enter_score",
            "in (0, 1)",
            self.enter_score,
        )
        require(
            is_number(self.exit_score) and 0 <= self.exit_score <= self.enter_score,
            "exit_score",
            f"in [0, enter_score ({self.enter_score})]",
            self.exit_score,
        )

    @classmethod
    def for_sensitivity(cls, sensitivity: Sensitivity | str, **overrides: Any) -> StreamingDetectorConfig:
        """The defaults with the alarm thresholds scaled for `sensitivity`, then `overrides`."""
        scale = threshold_scale(Sensitivity(sensitivity))
        base = cls()
        scaled = {name: getattr(base, name) * scale for name in _THRESHOLD_FIELDS}
        scaled.update(overrides)
        return dataclasses.replace(base, **scaled)
