"""The streaming detector's statistics: how heavy the tails are, and the change-point and trend evidence.

Stages of `StreamingDetector`'s per-point loop, each holding its own state: `TailEstimate` (raises
the spike threshold for heavy-tailed series), `Autocorrelation` (the long-run variance factor),
`ChangePoint` (a CUSUM, and the memory of the level before the last re-baseline),
`TrendStatistic` (a slope against its own typical variation) and `VolatilityShift` (the recent size
of the errors against its history).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Final

from mcp_autonomy.autonomy.detection.config import StreamingDetectorConfig
from mcp_autonomy.autonomy.detection.forecast import RMS_PER_MEAN_ABS

__all__ = ["Autocorrelation", "ChangePoint", "TailEstimate", "TrendStatistic", "VolatilityShift"]

_SETTLE_BOOST: Final = 5.0  # the tail estimate learns this much faster while settling
_AUTOCORRELATION_CLIP_Z: Final = 3.0
_MAX_PHI: Final = 0.95
_SLOPE_BASELINE_CLIP: Final = 2.0  # typical variations: how far one point moves the base slope
_TREND_LEARNING_WINDOWS: Final = 2.0  # the trend statistic scores after this many windows of learning
_VOLATILITY_CLIP_Z: Final = 4.0  # one point's |z| counts at most this much in the recent average
_VOLATILITY_LEARNING_CLIP: Final = 5.0  # spreads: how far one point moves the long-run yardstick
_GAUSSIAN_MEAN_ABS_Z: Final = 1.0 / RMS_PER_MEAN_ABS  # E|z| of Gaussian noise: the starting mean


class TailEstimate:
    """How heavy-tailed the series is compared with Gaussian noise.

    A streaming estimate of the `tail_quantile` of |z| (multiplicative steps up and down, balanced
    at that quantile) divided by the Gaussian quantile is the tail factor (at least 1). Heavier
    tails raise the spike threshold by tail_factor ** `tail_exponent`, so a series that is normally
    spiky (or quantised) does not alarm on its ordinary jumps; the CUSUM and the clips use the
    tail-normalised scale for the same reason.
    """

    __slots__ = (
        "_down",
        "_exponent",
        "_reference",
        "_spike_threshold_z",
        "_up",
        "quantile",
        "spike_threshold_z",
    )

    def __init__(self, config: StreamingDetectorConfig) -> None:
        self._reference = NormalDist().inv_cdf((1.0 + config.tail_quantile) / 2.0)
        self._up = math.exp(config.tail_learning_rate * config.tail_quantile)
        self._down = math.exp(-config.tail_learning_rate * (1.0 - config.tail_quantile))
        self._exponent = config.tail_exponent
        self._spike_threshold_z = config.spike_threshold_z
        self.quantile = self._reference  # the estimate of the |z| quantile
        self.spike_threshold_z = config.spike_threshold_z  # raised by the tails, at the current point

    def update(self, abs_z: float, learning_iv: float, settling: bool) -> float:
        """Learn from the point's |z|; return the tail factor (>= 1) and set the spike threshold."""
        quantile = self.quantile
        if learning_iv == 1.0 and not settling:
            quantile *= self._up if abs_z > quantile else self._down
        else:
            step = learning_iv * _SETTLE_BOOST if settling else learning_iv
            quantile *= self._up**step if abs_z > quantile else self._down**step
        self.quantile = quantile
        tail_factor = quantile / self._reference
        if tail_factor > 1.0:
            self.spike_threshold_z = self._spike_threshold_z * tail_factor**self._exponent
            return tail_factor
        self.spike_threshold_z = self._spike_threshold_z
        return 1.0


class Autocorrelation:
    """The lag-1 autocorrelation phi of the residuals (clipped z), and from it the long-run variance
    factor sqrt((1 + phi) / (1 - phi)) that the CUSUM divides its increments by, so autocorrelated
    noise does not look like a shift."""

    __slots__ = ("_has_previous", "_lag_product", "_previous_z", "_square", "_time_constant_iv")

    def __init__(self, config: StreamingDetectorConfig) -> None:
        self._time_constant_iv = config.autocorrelation_time_constant_intervals
        self._square = 1.0
        self._lag_product = 0.0
        self._previous_z = 0.0
        self._has_previous = False

    def update(self, z: float, learning_iv: float, gap: bool) -> float:
        """Learn from the point's z; return the long-run variance factor (1 for white noise)."""
        if z > _AUTOCORRELATION_CLIP_Z:
            z = _AUTOCORRELATION_CLIP_Z
        elif z < -_AUTOCORRELATION_CLIP_Z:
            z = -_AUTOCORRELATION_CLIP_Z
        if gap or not self._has_previous:
            self._previous_z = z
            self._has_previous = True
        rate = learning_iv / (self._time_constant_iv + learning_iv)
        square = self._square = self._square + rate * (z * z - self._square)
        lag_product = self._lag_product = self._lag_product + rate * (
            z * self._previous_z - self._lag_product
        )
        self._previous_z = z
        phi = lag_product / square if square > 0.0 else 0.0
        if phi < 0.0:
            phi = 0.0
        elif phi > _MAX_PHI:
            phi = _MAX_PHI
        return math.sqrt((1.0 + phi) / (1.0 - phi))


class ChangePoint:
    """A two-sided, slightly leaky CUSUM on clipped, tail-normalised z, and re-baselining.

    Increments are divided by the long-run variance factor. When one side reaches the threshold
    the change is confirmed: the level is to move by the mean residual since the change began
    (`mean_shift`), so a lasting shift scores high at its onset and then becomes the new normal.
    The old level is remembered for `recovery_memory_intervals`: a return to it is not a new anomaly.
    """

    __slots__ = (
        "_clip_z",
        "_fall",
        "_fall_points",
        "_fall_sum",
        "_rise",
        "_rise_points",
        "_rise_sum",
        "_slack_z",
        "direction",
        "increment",
        "previous_level",
        "previous_level_until_s",
        "statistic",
    )

    def __init__(self, config: StreamingDetectorConfig) -> None:
        self._slack_z = config.cusum_slack_z
        self._clip_z = config.cusum_clip_z
        self._rise = self._fall = self._rise_sum = self._fall_sum = 0.0
        self._rise_points = self._fall_points = 0
        self.statistic = 0.0  # the larger side, at the current point (before any reset)
        self.direction = 1
        self.increment = 0.0  # the current point's increment (clipped z over the long-run factor)
        self.previous_level = 0.0
        self.previous_level_until_s = -math.inf

    def reset(self) -> None:
        """Forget the evidence (after a re-baseline, a gap, or a change of seasonal model)."""
        self._rise = self._fall = self._rise_sum = self._fall_sum = 0.0
        self._rise_points = self._fall_points = 0

    def update(
        self, z: float, tail_factor: float, scale: float, long_run: float, decay: float, gap: bool
    ) -> float:
        """Add the point; return the statistic (the larger side)."""
        if gap:
            self.reset()
        # Tail-normalised: the ordinary jumps of a spiky series are not a shift.
        clipped = z / tail_factor
        if clipped > self._clip_z:
            clipped = self._clip_z
        elif clipped < -self._clip_z:
            clipped = -self._clip_z
        increment = self.increment = clipped / long_run
        rise = self._rise * decay + increment - self._slack_z
        if rise > 0.0:
            self._rise_points += 1
            self._rise_sum += clipped * scale * tail_factor
        else:
            rise = self._rise_sum = 0.0
            self._rise_points = 0
        self._rise = rise
        fall = self._fall * decay - increment - self._slack_z
        if fall > 0.0:
            self._fall_points += 1
            self._fall_sum += clipped * scale * tail_factor
        else:
            fall = self._fall_sum = 0.0
            self._fall_points = 0
        self._fall = fall
        self.direction = 1 if rise >= fall else -1
        statistic = self.statistic = rise if rise > fall else fall
        return statistic

    def mean_shift(self) -> float:
        """The mean residual since the confirmed change began (value units)."""
        if self._rise >= self._fall:
            return self._rise_sum / self._rise_points
        return self._fall_sum / self._fall_points

    def built_up_before(self, direction: int) -> float:
        """The statistic before the current point's own increment, on the side of `direction`."""
        if direction > 0:
            return self.statistic - self.increment + self._slack_z
        return self.statistic + self.increment + self._slack_z

    def distance_to_previous_z(self, x: float, season: float, scale: float) -> float:
        """How many scales `x` is from the remembered pre-shift level (while it is remembered:
        until `previous_level_until_s`)."""
        distance = (x - self.previous_level - season) / scale
        return distance if distance >= 0.0 else -distance


class TrendStatistic:
    """A slope the baseline did not have, against the slope's own typical variation.

    An exponentially weighted least-squares slope over `trend_window_intervals` of the winsorised
    series, with O(1) sums re-centred on the current time (so they stay small and exact). Its
    departure from a slow base slope is compared with its own typical variation (so wandering
    series need steeper ramps) and must also be material (`trend_min_drift_sigma` scales over
    `trend_horizon_intervals`): a slow ramp is flagged long before it reaches an outage threshold.

    The typical variation is learnt over `slope_scale_time_constant_intervals` (10 h at a 60 s
    cadence, after every start); the statistic scores from two trend windows into that learning,
    its threshold raised by sqrt(time constant / learnt so far), the estimate's relative
    uncertainty, and with the learning input clipped as it is once learnt, so a ramp that starts
    early is neither missed for hours nor learnt as ordinary.
    """

    __slots__ = (
        "_base_iv",
        "_drift_threshold",
        "_horizon_iv",
        "_learning_start_iv",
        "_min_weight",
        "_scale_clip",
        "_scale_iv",
        "_sum_w",
        "_sum_wt",
        "_sum_wtt",
        "_sum_wty",
        "_sum_wy",
        "_window_iv",
        "_z_threshold",
        "drift_sigma",
        "learnt_iv",
        "slope",
        "slope_base",
        "slope_scale",
        "z",
    )

    def __init__(self, config: StreamingDetectorConfig) -> None:
        self._window_iv = config.trend_window_intervals
        self._learning_start_iv = _TREND_LEARNING_WINDOWS * config.trend_window_intervals
        self._min_weight = 0.5 * config.trend_window_intervals
        self._z_threshold = config.trend_threshold_z
        self._drift_threshold = config.trend_min_drift_sigma
        self._horizon_iv = config.trend_horizon_intervals
        self._base_iv = config.slope_baseline_time_constant_intervals
        self._scale_iv = config.slope_scale_time_constant_intervals
        self._scale_clip = config.scale_clip
        # Sums over the window, times relative to now (seconds): weights, w*t, w*t^2, w*y, w*t*y.
        self._sum_w = self._sum_wt = self._sum_wtt = self._sum_wy = self._sum_wty = 0.0
        self.slope_base = 0.0  # per second: the slope the baseline already has
        self.slope_scale = 0.0  # the typical variation of the slope's departure from it
        self.learnt_iv = 0.0  # intervals the typical variation has been learnt over
        # The current point's figures:
        self.slope = 0.0
        self.z = 0.0
        self.drift_sigma = 0.0

    def threshold_z(self, settling_factor: float) -> float:
        """The slope z threshold, raised while the typical variation is still being learnt."""
        learnt = self.learnt_iv
        inflation = math.sqrt(self._scale_iv / learnt) if 0.0 < learnt < self._scale_iv else 1.0
        return self._z_threshold * settling_factor * inflation

    def realign(self, shift: float) -> None:
        """Move the window's past by a step's shift: a step is not a ramp."""
        self._sum_wy += shift * self._sum_w
        self._sum_wty += shift * self._sum_wt

    def update(
        self,
        level: float,
        residual: float,
        scale: float,
        elapsed_s: float,
        decay: float,
        learning_iv: float,
        interval_s: float,
    ) -> float:
        """Add the point (winsorised at `scale_clip` scales); return the statistic's ratio to its
        threshold (0 until enough is known) and set `slope`, `z` and `drift_sigma`."""
        clip = self._scale_clip * scale
        y = level + (residual if -clip < residual < clip else (clip if residual > 0.0 else -clip))
        sum_w = self._sum_w
        sum_wt = self._sum_wt
        sum_wy = self._sum_wy
        sum_wtt = self._sum_wtt = (
            self._sum_wtt - 2.0 * elapsed_s * sum_wt + elapsed_s * elapsed_s * sum_w
        ) * decay
        sum_wt = self._sum_wt = (sum_wt - elapsed_s * sum_w) * decay
        sum_wty = self._sum_wty = (self._sum_wty - elapsed_s * sum_wy) * decay
        sum_w = self._sum_w = sum_w * decay + 1.0
        sum_wy = self._sum_wy = sum_wy * decay + y
        slope_base = self.slope_base
        self.slope = slope_base
        self.z = 0.0
        self.drift_sigma = 0.0
        if sum_w <= self._min_weight:
            return 0.0
        den = sum_w * sum_wtt - sum_wt * sum_wt
        if den <= 0.0:
            return 0.0
        slope = self.slope = (sum_w * sum_wty - sum_wt * sum_wy) / den
        departure = slope - slope_base
        abs_departure = departure if departure >= 0.0 else -departure
        window_s = self._window_iv * interval_s
        # How much less certain this window's slope is than a full window's (>= 1).
        design = math.sqrt(self._window_iv * window_s * window_s * sum_w / den)
        if design < 1.0:
            design = 1.0
        normalised = abs_departure / design
        slope_scale = self.slope_scale
        ratio = 0.0
        if self.learnt_iv < self._scale_iv:
            learnt = self.learnt_iv = self.learnt_iv + learning_iv
            if learnt >= self._learning_start_iv and slope_scale > 0.0:
                # Still learning the typical variation, but far enough in to judge by it, with the
                # threshold raised by the estimate's relative uncertainty; its input is clipped as
                # once learnt, so a ramp starting now does not teach itself away.
                z = self.z = normalised / slope_scale
                drift_sigma = self.drift_sigma = abs_departure * self._horizon_iv * interval_s / scale
                ratio = z / (self._z_threshold * math.sqrt(self._scale_iv / learnt))
                if drift_sigma / self._drift_threshold < ratio:
                    ratio = drift_sigma / self._drift_threshold
                clip = self._scale_clip * slope_scale
                if normalised > clip:
                    normalised = clip
            self.slope_scale = (
                slope_scale + (normalised * RMS_PER_MEAN_ABS - slope_scale) * learning_iv / learnt
            )
            return ratio
        z = self.z = normalised / slope_scale if slope_scale > 0.0 else 0.0
        drift_sigma = self.drift_sigma = abs_departure * self._horizon_iv * interval_s / scale
        ratio = z / self._z_threshold
        if drift_sigma / self._drift_threshold < ratio:
            ratio = drift_sigma / self._drift_threshold
        clip = self._scale_clip * slope_scale
        self.slope_scale = slope_scale + learning_iv / (self._scale_iv + learning_iv) * (
            RMS_PER_MEAN_ABS * (normalised if normalised < clip else clip) - slope_scale
        )
        clip = _SLOPE_BASELINE_CLIP * slope_scale * design
        self.slope_base = slope_base + learning_iv / (self._base_iv + learning_iv) * (
            departure if -clip < departure < clip else (clip if departure > 0.0 else -clip)
        )
        return ratio


class VolatilityShift:
    """How unusual the recent size of the errors is against its own history.

    Why: the spike, change-point and trend statistics all look at where the errors lie; none sees
    their size change while they stay centred. A noise burst (a flapping dependency, an overloaded
    host) and a collapse of the noise (a stuck sensor, a metric that flat-lines when its exporter
    dies) are both that. As HTM's anomaly likelihood judges the recent anomaly scores against their
    own distribution, this judges the recent mean of the tail-normalised |z| (an exponential average
    over `volatility_short_intervals`) against the long-run mean and spread of that same average
    (learnt over `volatility_long_intervals`, each point's pull clipped at a few spreads so the
    episode being measured barely moves its yardstick). The statistic is the departure in spreads,
    either way; it scores only once a whole long window has been learnt.
    """

    __slots__ = ("_learnt_iv", "_long_iv", "_short_iv", "long_mean", "long_variance", "recent")

    def __init__(self, config: StreamingDetectorConfig) -> None:
        self._short_iv = config.volatility_short_intervals
        self._long_iv = config.volatility_long_intervals
        self.recent = self.long_mean = _GAUSSIAN_MEAN_ABS_Z
        self.long_variance = 0.0
        self._learnt_iv = 0.0

    @property
    def direction(self) -> int:
        """+1 when the errors are larger than usual, -1 when smaller."""
        return 1 if self.recent >= self.long_mean else -1

    def update(self, abs_z: float, tail_factor: float, learning_iv: float) -> float:
        """Learn from one point's |z|; return how many spreads the recent average is from usual."""
        size = abs_z / tail_factor
        if size > _VOLATILITY_CLIP_Z:
            size = _VOLATILITY_CLIP_Z
        self.recent += learning_iv / (self._short_iv + learning_iv) * (size - self.recent)
        deviation = self.recent - self.long_mean
        spread = math.sqrt(self.long_variance)
        learnt = self._learnt_iv >= self._long_iv and spread > 0.0
        statistic = (deviation if deviation >= 0.0 else -deviation) / spread if learnt else 0.0
        if learnt:
            limit = _VOLATILITY_LEARNING_CLIP * spread
            if deviation > limit:
                deviation = limit
            elif deviation < -limit:
                deviation = -limit
        rate = learning_iv / (self._long_iv + learning_iv)
        self.long_mean += rate * deviation
        self.long_variance += rate * (deviation * deviation - self.long_variance)
        self._learnt_iv += learning_iv
        return statistic
