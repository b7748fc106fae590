"""`StreamingDetector`: robust, seasonal, change-point and trend anomaly scoring for one series.

One point in, one score out, O(1) work and a fixed amount of memory per series. Per point:

1. **Baseline.** The forecast is a robust level plus, once learnt, a seasonal profile. Levels are
   exponentially weighted with Huber-clipped updates (a residual counts at most `huber_c` scales),
   the scale is an exponentially weighted RMS of residuals clipped at `scale_clip` scales, so the
   anomalies being detected barely move the baseline. The scale is floored (relative to the level
   and absolutely), so flat lines never divide by zero.
2. **Tails.** A streaming estimate of the 99.5th percentile of |z| measures how heavy-tailed the
   series is compared with Gaussian noise; heavier tails raise the spike threshold, so a series
   that is normally spiky (or quantised) does not alarm on its ordinary jumps.
3. **Seasonality.** A daily profile (48 half-hour bins) and hourly day-of-week corrections are
   learnt from the series minus a slow (one-day) level, with bias-corrected exponential averages
   interpolated between bin centres. Three forecasts run side by side (no season, daily, daily +
   weekly); a profile is used only after `*_min_periods` periods and only while its one-step
   error is `season_selection_margin` lower than the simpler model's.
4. **Spike statistic.** |z| of the residual against the forecast.
5. **Change point.** A two-sided, slightly leaky CUSUM on clipped z, with increments divided by
   the long-run-variance factor sqrt((1 + phi) / (1 - phi)) of the residuals' lag-1
   autocorrelation phi, so autocorrelated noise does not look like a shift. When it alarms, the
   level is moved by the mean residual since the change began (re-baselining), so a lasting shift
   scores high at its onset and then becomes the new normal; the old level is remembered for
   `recovery_memory_intervals`, and a return to it is not scored as a new anomaly.
6. **Trend.** An exponentially weighted least-squares slope over `trend_window_intervals`
   (winsorised input, O(1) sums re-centred on the current time). The slope's departure from a slow
   baseline slope is compared with its own typical variation (so wandering series need steeper
   ramps) and must also be material (`trend_min_drift_sigma` scales over `trend_horizon_intervals`).
   A slow ramp is flagged long before it reaches an outage threshold. The typical variation is
   learnt over `slope_scale_time_constant_intervals` (10 h at the live loop's 60 s cadence, after
   every start); the statistic scores from two trend windows into that learning, its threshold
   raised by sqrt(time constant / learnt so far), the estimate's relative uncertainty, and with
   the learning input clipped as it is once learnt, so a ramp that starts early is neither
   missed for hours nor learnt as ordinary.
7. **Score and alert.** Each statistic divided by its threshold goes through one calibration map
   (`calibration.score_from_ratio`); the score is the largest. Alerts use hysteresis: one alert
   when the score reaches `enter_score`, then nothing until it stays under `exit_score` for
   `exit_hold_intervals` and a further `cooldown_intervals` pass. The alert's kind is that of the
   largest statistic, with one correction: a point that crosses the spike threshold while the
   CUSUM had already built up a third of its threshold in the same direction *before* it is the
   culmination of a departure that began earlier (a ramp, or a shift), so it is a LEVEL_SHIFT.
8. **Episodes.** Everything above adapts to what it sees: re-baselining makes a shift the new
   normal, and a ramp is chased by a staircase of re-baselines (and inflates the scale and the
   tails) until it no longer stands out. That is right once it has been reported, but it means
   the points after an alert cannot say what the anomaly turned out to be. So each alert opens an
   episode that keeps the baseline (and scale) frozen at its onset and fits a least-squares line
   to the episode's points against it (O(1) running sums), untouched by any re-baselining since:
   - A ramp steep enough for its first step to be an outlier opens as a SPIKE (one point cannot
     tell a spike from the start of a ramp, and spikes must alert on their point). When the
     episode's points, onset included, then make a change point against the frozen baseline
     (the CUSUM on them reaches its threshold) *and* their line is a ramp (slope significant at
     `trend_threshold_z`, the standard error taking the larger of the onset noise times the
     long-run factor and the scatter about the line, and material by `trend_min_drift_sigma`),
     the episode raises its one further alert: a TREND with that slope and its standard error.
     A spike that comes back, a burst, or a step (lasting but flat) raises nothing more, as before.
   - De-duplication: after a lasting episode ends, it is followed for `recovery_memory_intervals`.
     A new alert in its direction whose point is not a spike above the episode's line, while that
     line still clearly rises (slope z >= 2, and material), is the same ramp going on (re-detected
     after the chasing re-baselines lost it), not a new anomaly: it is not raised, and the episode
     resumes (raising its TREND alert then if it opened as a spike and has not yet). A faster rise,
     a jump above the line, or another step after a step is new and alerts.
   These only add or drop alerts; the per-point scores are exactly those of steps 1-7.

Time: constants are in sample intervals; the interval is learnt (or configured) and elapsed time
is converted into it, so irregular timestamps decay the state by time. A silence longer than
`gap_intervals` resets the short-term evidence (CUSUM, trend window) and caps how far the trend is
extrapolated, so a gap alone never alarms. NaN and infinite values (and non-finite timestamps) are
skipped: score 0, state untouched. Everything is plain float arithmetic: deterministic.

The per-point loop is written once, in `_run`, with the state held in local variables (several
times faster than attribute access in CPython); `update` and `score_many` both go through it, so
the live loop and the offline backtest run exactly the same code. Episode bookkeeping runs only
while an episode is open or followed, and alerts are built only when raised, so an ordinary point
costs one more test.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Final

from mcp_autonomy.autonomy.detection.base import (
    AnomalyKind,
    DetectorAlert,
    DetectorIndicator,
    DetectorResult,
)
from mcp_autonomy.autonomy.detection.calibration import score_from_ratio
from mcp_autonomy.autonomy.detection.config import StreamingDetectorConfig

DAY_S: Final = 86_400.0
WEEK_S: Final = 7 * DAY_S
MAX_PENDING_ALERTS: Final = 1_000  # undrained alerts beyond this are dropped, oldest first
_RMS_PER_MEAN_ABS: Final = math.sqrt(math.pi / 2.0)  # Gaussian E|x| -> sigma
_INTERVAL_LEARNING_RATE: Final = 0.01  # per point, in log space
_INTERVAL_STEP_CLIP: Final = 0.7  # one interval moves the estimate by at most x2 in log space
_MAX_LEARNING_STEP_INTERVALS: Final = 2.0  # one point never carries more than 2 intervals' weight
_AUTOCORRELATION_CLIP_Z: Final = 3.0
_MAX_PHI: Final = 0.95
_SLOPE_BASELINE_CLIP: Final = 2.0
_SEASON_ERROR_CLIP: Final = 5.0
_TREND_LEARNING_WINDOWS: Final = 2.0  # the trend statistic scores after this many windows of learning
_CONTINUATION_Z: Final = 2.0  # a remembered episode still rising this clearly is a ramp going on
_BUILD_UP_FRACTION: Final = 1.0 / 3.0  # CUSUM already this far up: a spike-sized point is no spike
# The episode record (`StreamingDetector._episode`): its onset and the sums of its trajectory.
_EP_T0: Final = 0
_EP_LEVEL: Final = 1  # the level (without season) frozen at the onset, drifted by the base slope
_EP_LEVEL_NS: Final = 2  # the same for the no-season model
_EP_SCALE: Final = 3  # the onset's tail-normalised scale: trajectory values are in these units
_EP_DIR: Final = 4
_EP_N: Final = 5
_EP_ST: Final = 6  # sums over the trajectory of tau (intervals since the onset), tau^2, y, ...
_EP_STT: Final = 7
_EP_SY: Final = 8
_EP_STY: Final = 9
_EP_SYY: Final = 10
_EP_CUSUM: Final = 11  # CUSUM of the trajectory, onset included (spike-opened episodes)
_EP_UNTIL: Final = 12  # followed until then (infinite while the episode is open)
_EP_STAGE: Final = 13
_EPISODE_FIELDS: Final = 14
_STAGE_SPIKE: Final = 0.0  # opened as a spike, nothing more known yet
_STAGE_LASTING: Final = 1.0  # opened as a spike, and its points since have stayed away
_STAGE_SETTLED: Final = 2.0  # its kind is final: opened as a lasting kind, or escalated
_TREND_REALIGN_LIMIT: Final = 0.5  # a change point with less trend evidence than this is a step
_RECOVERY_TOLERANCE: Final = 3.0  # scales: "back at the old level"
_SETTLE_BOOST: Final = 5.0  # the tail estimate learns this much faster while settling
_NOT_CALM: Final = math.inf
_MODEL_NAMES: Final = ("none", "daily", "weekly")

_SPIKE: Final = AnomalyKind.SPIKE
_SHIFT: Final = AnomalyKind.LEVEL_SHIFT
_TREND: Final = AnomalyKind.TREND


class StreamingDetector:
    """An online anomaly detector for one series: feed points in time order, read scores.

    See the module docstring for the algorithm. Not thread-safe; one instance per series.
    """

    __slots__ = (
        "_calm_since",
        "_cn",
        "_cn_n",
        "_cn_sum",
        "_config",
        "_cooldown_until",
        "_cp",
        "_cp_n",
        "_cp_sum",
        "_daily_mean",
        "_daily_weight",
        "_dt_typ",
        "_episode",
        "_episode_tracked",
        "_have_zprev",
        "_in_alert",
        "_last",
        "_level_d",
        "_level_ns",
        "_level_slow",
        "_level_w",
        "_mae_d",
        "_mae_ns",
        "_mae_w",
        "_model",
        "_n",
        "_pending",
        "_prev_level",
        "_prev_until",
        "_slope_base",
        "_slope_n",
        "_slope_scale",
        "_sum_w",
        "_sum_wt",
        "_sum_wtt",
        "_sum_wty",
        "_sum_wy",
        "_switch_ok",
        "_t_first",
        "_t_last",
        "_t_settled",
        "_tail",
        "_tail_reference",
        "_var",
        "_warm_t",
        "_warm_x",
        "_weekly_mean",
        "_weekly_weight",
        "_zl",
        "_zprev",
        "_zz",
    )

    def __init__(self, config: StreamingDetectorConfig | None = None) -> None:
        cfg = config if config is not None else StreamingDetectorConfig()
        self._config = cfg
        self._n = 0
        self._warm_t: list[float] = []
        self._warm_x: list[float] = []
        self._t_first = 0.0
        self._t_last = 0.0
        self._t_settled = 0.0
        self._dt_typ = cfg.sample_interval_s or 1.0
        self._level_ns = self._level_d = self._level_w = self._level_slow = 0.0
        self._var = 0.0
        self._tail_reference = NormalDist().inv_cdf((1.0 + cfg.tail_quantile) / 2.0)
        self._tail = self._tail_reference
        self._zz = 1.0
        self._zl = 0.0
        self._zprev = 0.0
        self._have_zprev = False
        self._cp = self._cn = self._cp_sum = self._cn_sum = 0.0
        self._cp_n = self._cn_n = 0
        self._sum_w = self._sum_wt = self._sum_wtt = self._sum_wy = self._sum_wty = 0.0
        self._slope_base = 0.0
        self._slope_scale = 0.0
        self._slope_n = 0.0
        self._prev_level = 0.0
        self._prev_until = -math.inf
        self._daily_mean = [0.0] * cfg.daily_bins
        self._daily_weight = [0.0] * cfg.daily_bins
        self._weekly_mean = [0.0] * cfg.weekly_bins
        self._weekly_weight = [0.0] * cfg.weekly_bins
        self._mae_ns = self._mae_d = self._mae_w = 0.0
        self._model = 0
        self._switch_ok = -math.inf
        self._in_alert = False
        self._episode_tracked = False
        self._episode = [0.0] * _EPISODE_FIELDS
        self._calm_since = _NOT_CALM
        self._cooldown_until = -math.inf
        self._pending: list[DetectorAlert] = []
        self._last: tuple[float, ...] | None = None

    # --- public API ---

    @property
    def config(self) -> StreamingDetectorConfig:
        return self._config

    @property
    def points_seen(self) -> int:
        """Finite points learnt from so far (warm-up included)."""
        return self._n

    @property
    def warmed_up(self) -> bool:
        return self._n >= self._config.warmup_points

    @property
    def sample_interval_s(self) -> float | None:
        """The typical interval between points (configured or learnt); None before warm-up."""
        return self._dt_typ if self.warmed_up or self._config.sample_interval_s else None

    @property
    def seasonal_model(self) -> str:
        """Which forecast is in use: `none`, `daily` or `weekly` (daily plus day-of-week)."""
        return _MODEL_NAMES[self._model]

    @property
    def in_alert(self) -> bool:
        return self._in_alert

    def update(self, timestamp_s: float, value: float) -> DetectorResult:
        """Score one point, learn from it, and explain the score."""
        before = len(self._pending)
        self._run((timestamp_s,), (value,), None)
        alert = self._pending.pop() if len(self._pending) > before else None
        return self._result(timestamp_s, value, alert)

    def score_many(self, timestamps_s: Sequence[float], values: Sequence[float]) -> list[float]:
        """Score a batch exactly as `len(values)` calls of `update` would, only faster."""
        if len(timestamps_s) != len(values):
            raise ValueError(
                f"timestamps_s and values must have the same length, got {len(timestamps_s)} and {len(values)}"
            )
        scores: list[float] = []
        self._run(timestamps_s, values, scores)
        return scores

    def drain_alerts(self) -> list[DetectorAlert]:
        """Alerts raised by `score_many` since the last drain, oldest first."""
        alerts, self._pending = self._pending, []
        return alerts

    # --- the per-point loop ---

    def _run(self, timestamps_s: Sequence[float], values: Sequence[float], out: list[float] | None) -> None:
        cfg = self._config
        warm_n = cfg.warmup_points
        fixed_dt = cfg.sample_interval_s
        tau_level = cfg.level_time_constant_intervals
        tau_scale = cfg.scale_time_constant_intervals
        huber_c = cfg.huber_c
        scale_clip = cfg.scale_clip
        rel_floor = cfg.min_scale_relative
        abs_floor = cfg.min_scale_absolute
        tail_ref = self._tail_reference
        tail_exp = cfg.tail_exponent
        tail_up = math.exp(cfg.tail_learning_rate * cfg.tail_quantile)
        tail_down = math.exp(-cfg.tail_learning_rate * (1.0 - cfg.tail_quantile))
        spike_thr = cfg.spike_threshold_z
        cusum_k = cfg.cusum_slack_z
        cusum_h = cfg.cusum_threshold
        cusum_clip = cfg.cusum_clip_z
        tau_leak = cfg.cusum_leak_time_constant_intervals
        tau_phi = cfg.autocorrelation_time_constant_intervals
        trend_w = cfg.trend_window_intervals
        warm_slope = _TREND_LEARNING_WINDOWS * trend_w
        trend_min_weight = 0.5 * trend_w
        trend_z_thr = cfg.trend_threshold_z
        drift_thr = cfg.trend_min_drift_sigma
        horizon = cfg.trend_horizon_intervals
        tau_sb = cfg.slope_baseline_time_constant_intervals
        tau_ss = cfg.slope_scale_time_constant_intervals
        gap_iv = cfg.gap_intervals
        recovery_iv = cfg.recovery_memory_intervals
        settle_iv = cfg.settle_intervals
        nb_d = cfg.daily_bins
        nb_w = cfg.weekly_bins
        bins_per_s_d = nb_d / DAY_S
        bins_per_s_w = nb_w / WEEK_S
        mem_d_s = cfg.daily_memory_periods * DAY_S / nb_d
        mem_w_s = cfg.weekly_memory_periods * WEEK_S / nb_w
        daily_min_s = cfg.daily_min_periods * DAY_S
        weekly_min_s = cfg.weekly_min_periods * WEEK_S
        keep = 1.0 - cfg.season_selection_margin
        enter_s = cfg.enter_score
        exit_s = cfg.exit_score
        hold_iv = cfg.exit_hold_intervals
        cool_iv = cfg.cooldown_intervals
        steep = cfg.score_steepness
        ln2 = math.log(2.0)
        exp = math.exp
        expm1 = math.expm1
        sqrt = math.sqrt

        n = self._n
        t_first = self._t_first
        t_last = self._t_last
        t_settled = self._t_settled
        dtt = self._dt_typ
        level_ns = self._level_ns
        level_d = self._level_d
        level_w = self._level_w
        level_slow = self._level_slow
        var = self._var
        tail = self._tail
        zz = self._zz
        zl = self._zl
        zprev = self._zprev
        have_zprev = self._have_zprev
        cp = self._cp
        cn = self._cn
        cp_sum = self._cp_sum
        cn_sum = self._cn_sum
        cp_n = self._cp_n
        cn_n = self._cn_n
        sum_w = self._sum_w
        sum_wt = self._sum_wt
        sum_wtt = self._sum_wtt
        sum_wy = self._sum_wy
        sum_wty = self._sum_wty
        slope_base = self._slope_base
        slope_scale = self._slope_scale
        slope_n = self._slope_n
        prev_level = self._prev_level
        prev_until = self._prev_until
        dM = self._daily_mean
        dW = self._daily_weight
        wM = self._weekly_mean
        wW = self._weekly_weight
        mae_ns = self._mae_ns
        mae_d = self._mae_d
        mae_w = self._mae_w
        model = self._model
        switch_ok = self._switch_ok
        in_alert = self._in_alert
        ep_track = self._episode_tracked
        ep = self._episode
        calm_since = self._calm_since
        cooldown_until = self._cooldown_until
        pending = self._pending
        append = out.append if out is not None else None

        u_cached = -1.0
        lam_cached = lr_cached = 1.0
        scored_last = False
        ran = False
        for t, x in zip(timestamps_s, values, strict=True):
            ran = True
            # x - x is 0.0 for finite numbers and NaN for NaN and +-inf: one test for both.
            if x - x != 0.0 or t - t != 0.0:
                scored_last = False
                if append is not None:
                    append(0.0)
                continue
            if n < warm_n:
                n += 1
                if n == 1:
                    t_first = t
                self._warm_t.append(t)
                self._warm_x.append(x)
                if n == warm_n:
                    (level_ns, var, dtt, t_last) = self._initialise(fixed_dt)
                    level_d = level_w = level_slow = level_ns
                    mae_ns = mae_d = mae_w = sqrt(var) / _RMS_PER_MEAN_ABS
                    t_settled = t
                scored_last = False
                if append is not None:
                    append(0.0)
                continue
            n += 1
            dt = t - t_last
            if dt < 0.0:
                dt = 0.0
            else:
                t_last = t
            if fixed_dt is None and dt > 0.0 and dt != dtt:
                step = math.log(dt / dtt)
                if step > _INTERVAL_STEP_CLIP:
                    step = _INTERVAL_STEP_CLIP
                elif step < -_INTERVAL_STEP_CLIP:
                    step = -_INTERVAL_STEP_CLIP
                dtt *= exp(_INTERVAL_LEARNING_RATE * step)
            u = dt / dtt
            ul = u if u < _MAX_LEARNING_STEP_INTERVALS else _MAX_LEARNING_STEP_INTERVALS
            gap = u > gap_iv
            if u != u_cached:
                u_cached = u
                lam_cached = exp(-u / tau_leak)
                lr_cached = 0.0 if gap else exp(-u / trend_w)
            drift = slope_base * (gap_iv * dtt if gap else dt)
            level_ns += drift
            level_d += drift
            level_w += drift
            level_slow += drift

            # Seasonal profiles: linear interpolation between the two nearest bin centres.
            pos = (t % DAY_S) * bins_per_s_d - 0.5
            if pos < 0.0:
                pos += nb_d
            i0 = int(pos)
            f = pos - i0
            i1 = i0 + 1
            if i1 == nb_d:
                i1 = 0
            w0 = dW[i0]
            w1 = dW[i1]
            sd = ((1.0 - f) * dM[i0] / w0 if w0 > 0.0 else 0.0) + (f * dM[i1] / w1 if w1 > 0.0 else 0.0)
            pos = (t % WEEK_S) * bins_per_s_w - 0.5
            if pos < 0.0:
                pos += nb_w
            j0 = int(pos)
            g = pos - j0
            j1 = j0 + 1
            if j1 == nb_w:
                j1 = 0
            w0 = wW[j0]
            w1 = wW[j1]
            sw_delta = (1.0 - g) * wM[j0] / w0 + g * wM[j1] / w1 if (w0 > 0.0 and w1 > 0.0) else 0.0
            sw = sd + sw_delta
            if model == 0:
                level = level_ns
                season = 0.0
            elif model == 1:
                level = level_d
                season = sd
            else:
                level = level_w
                season = sw
            expected = level + season
            r = x - expected
            floor = rel_floor * (expected if expected >= 0.0 else -expected)
            if floor < abs_floor:
                floor = abs_floor
            sc = sqrt(var)
            if sc < floor:
                sc = floor
            z = r / sc
            az = z if z >= 0.0 else -z

            # Tail heaviness: a streaming quantile of |z| against the Gaussian one.
            settling = (t - t_settled) < settle_iv * dtt
            if ul == 1.0 and not settling:
                tail *= tail_up if az > tail else tail_down
            else:
                step = ul * _SETTLE_BOOST if settling else ul
                tail *= tail_up**step if az > tail else tail_down**step
            tf = tail / tail_ref
            if tf > 1.0:
                spike_thr_eff = spike_thr * tf**tail_exp
            else:
                tf = 1.0
                spike_thr_eff = spike_thr

            recovering = False
            pz = az
            if prev_until > t:
                zp = (x - prev_level - season) / sc
                if zp < 0.0:
                    zp = -zp
                if zp < az:
                    recovering = True
                    pz = zp
            spike_ratio = pz / spike_thr_eff

            # Lag-1 autocorrelation of the residuals, for the CUSUM's long-run variance.
            zc = z
            if zc > _AUTOCORRELATION_CLIP_Z:
                zc = _AUTOCORRELATION_CLIP_Z
            elif zc < -_AUTOCORRELATION_CLIP_Z:
                zc = -_AUTOCORRELATION_CLIP_Z
            if gap or not have_zprev:
                zprev = zc
                have_zprev = True
            a_phi = ul / (tau_phi + ul)
            zz += a_phi * (zc * zc - zz)
            zl += a_phi * (zc * zprev - zl)
            zprev = zc
            phi = zl / zz if zz > 0.0 else 0.0
            if phi < 0.0:
                phi = 0.0
            elif phi > _MAX_PHI:
                phi = _MAX_PHI
            long_run = sqrt((1.0 + phi) / (1.0 - phi))

            # Two-sided CUSUM on clipped z.
            if gap:
                cp = cn = cp_sum = cn_sum = 0.0
                cp_n = cn_n = 0
            zk = z / tf  # tail-normalised: ordinary jumps of a spiky series are not a shift
            if zk > cusum_clip:
                zk = cusum_clip
            elif zk < -cusum_clip:
                zk = -cusum_clip
            inc = zk / long_run
            cp = cp * lam_cached + inc - cusum_k
            if cp > 0.0:
                cp_n += 1
                cp_sum += zk * sc * tf
            else:
                cp = cp_sum = 0.0
                cp_n = 0
            cn = cn * lam_cached - inc - cusum_k
            if cn > 0.0:
                cn_n += 1
                cn_sum += zk * sc * tf
            else:
                cn = cn_sum = 0.0
                cn_n = 0
            cusum = cp if cp > cn else cn
            cusum_direction = 1 if cp >= cn else -1
            cusum_ratio = 0.0 if recovering else cusum / cusum_h

            # Trend: exponentially weighted regression on the winsorised series, times relative
            # to now (re-centred each step so the sums stay small and exact).
            tc = scale_clip * sc
            y = level + (r if -tc < r < tc else (tc if r > 0.0 else -tc))
            sum_wtt = (sum_wtt - 2.0 * dt * sum_wt + dt * dt * sum_w) * lr_cached
            sum_wt = (sum_wt - dt * sum_w) * lr_cached
            sum_wty = (sum_wty - dt * sum_wy) * lr_cached
            sum_w = sum_w * lr_cached + 1.0
            sum_wy = sum_wy * lr_cached + y
            trend_ratio = 0.0
            trend_z = 0.0
            drift_sigma = 0.0
            slope = slope_base
            if sum_w > trend_min_weight:
                den = sum_w * sum_wtt - sum_wt * sum_wt
                if den > 0.0:
                    slope = (sum_w * sum_wty - sum_wt * sum_wy) / den
                    dev = slope - slope_base
                    adev = dev if dev >= 0.0 else -dev
                    wd = trend_w * dtt
                    design = sqrt(trend_w * wd * wd * sum_w / den)
                    if design < 1.0:
                        design = 1.0
                    dn = adev / design
                    if slope_n < tau_ss:
                        slope_n += ul
                        if slope_n >= warm_slope and slope_scale > 0.0:
                            # Still learning the slope's typical variation, but far enough in to
                            # judge by it, with the threshold raised by the estimate's relative
                            # uncertainty; its input is clipped as once learnt, so a ramp starting
                            # now does not teach itself away.
                            ss = slope_scale
                            trend_z = dn / ss
                            drift_sigma = adev * horizon * dtt / sc
                            trend_ratio = trend_z / (trend_z_thr * sqrt(tau_ss / slope_n))
                            if drift_sigma / drift_thr < trend_ratio:
                                trend_ratio = drift_sigma / drift_thr
                            cl = scale_clip * ss
                            if dn > cl:
                                dn = cl
                        slope_scale += (dn * _RMS_PER_MEAN_ABS - slope_scale) * ul / slope_n
                    else:
                        ss = slope_scale
                        trend_z = dn / ss if ss > 0.0 else 0.0
                        drift_sigma = adev * horizon * dtt / sc
                        trend_ratio = trend_z / trend_z_thr
                        if drift_sigma / drift_thr < trend_ratio:
                            trend_ratio = drift_sigma / drift_thr
                        cl = scale_clip * ss
                        slope_scale += ul / (tau_ss + ul) * (_RMS_PER_MEAN_ABS * (dn if dn < cl else cl) - ss)
                        cl = _SLOPE_BASELINE_CLIP * ss * design
                        slope_base += (
                            ul / (tau_sb + ul) * (dev if -cl < dev < cl else (cl if dev > 0.0 else -cl))
                        )

            # Change point confirmed: re-baseline by the mean residual since it began.
            if cp >= cusum_h or cn >= cusum_h:
                shift = cp_sum / cp_n if cp >= cn else cn_sum / cn_n
                old_level = level
                level_ns += shift
                level_d += shift
                level_w += shift
                level_slow += shift
                level += shift
                r -= shift
                if trend_ratio < _TREND_REALIGN_LIMIT:
                    # A step, not a ramp: shift the trend window's past with it.
                    sum_wy += shift * sum_w
                    sum_wty += shift * sum_wt
                if recovering and abs(level - prev_level) < _RECOVERY_TOLERANCE * sc:
                    prev_until = -math.inf
                else:
                    prev_level = old_level
                    prev_until = t + recovery_iv * dtt
                cp = cn = cp_sum = cn_sum = 0.0
                cp_n = cn_n = 0

            # Learn: levels (Huber), scale (clipped RMS), seasonal profiles, model errors.
            hc = huber_c * sc * tf
            a_l = ul / (tau_level + ul)
            e = x - level_ns
            level_ns += a_l * (e if -hc < e < hc else (hc if e > 0.0 else -hc))
            e = x - sd - level_d
            level_d += a_l * (e if -hc < e < hc else (hc if e > 0.0 else -hc))
            e = x - sw - level_w
            level_w += a_l * (e if -hc < e < hc else (hc if e > 0.0 else -hc))
            step_s = ul * dtt
            a_slow = step_s / (DAY_S + step_s)
            e = x - (sw if model == 2 else sd) - level_slow
            level_slow += a_slow * (e if -hc < e < hc else (hc if e > 0.0 else -hc))
            cl = scale_clip * sc * tf
            var += ul / (tau_scale + ul) * ((r * r if -cl < r < cl else cl * cl) - var)

            target = x - level_slow
            if dW[i0] > 0.0 and dW[i1] > 0.0:
                e = target - sd
                target = sd + (e if -hc < e < hc else (hc if e > 0.0 else -hc))
            rate = step_s / (mem_d_s + step_s)
            w0 = rate * (1.0 - f)
            w1 = rate * f
            dM[i0] += w0 * (target - dM[i0])
            dW[i0] += w0 * (1.0 - dW[i0])
            dM[i1] += w1 * (target - dM[i1])
            dW[i1] += w1 * (1.0 - dW[i1])
            target = x - level_slow - sd
            if wW[j0] > 0.0 and wW[j1] > 0.0:
                e = target - sw_delta
                target = sw_delta + (e if -hc < e < hc else (hc if e > 0.0 else -hc))
            rate = step_s / (mem_w_s + step_s)
            w0 = rate * (1.0 - g)
            w1 = rate * g
            wM[j0] += w0 * (target - wM[j0])
            wW[j0] += w0 * (1.0 - wW[j0])
            wM[j1] += w1 * (target - wM[j1])
            wW[j1] += w1 * (1.0 - wW[j1])

            cm = _SEASON_ERROR_CLIP * sc * tf
            e = abs(x - level_ns)
            mae_ns += a_slow * ((e if e < cm else cm) - mae_ns)
            e = abs(x - level_d - sd)
            mae_d += a_slow * ((e if e < cm else cm) - mae_d)
            e = abs(x - level_w - sw)
            mae_w += a_slow * ((e if e < cm else cm) - mae_w)
            elapsed = t - t_first
            if elapsed >= daily_min_s and t >= switch_ok:
                best = 0
                best_mae = mae_ns
                if mae_d < best_mae:
                    best = 1
                    best_mae = mae_d
                if elapsed >= weekly_min_s and mae_w < best_mae:
                    best = 2
                    best_mae = mae_w
                current_mae = mae_ns if model == 0 else (mae_d if model == 1 else mae_w)
                if best != model and best_mae < keep * current_mae:
                    # Residuals of the old model say nothing about the new one: restart the
                    # change-point evidence and take the new model's error as the scale.
                    model = best
                    var = (_RMS_PER_MEAN_ABS * best_mae) ** 2
                    cp = cn = cp_sum = cn_sum = 0.0
                    cp_n = cn_n = 0
                    switch_ok = t + DAY_S

            # Score: the strongest statistic, calibrated; doubled thresholds while settling.
            top = spike_ratio
            kind = _SPIKE
            if cusum_ratio > top:
                top = cusum_ratio
                kind = _SHIFT
            if trend_ratio > top:
                top = trend_ratio
                kind = _TREND
            settle = 1.0
            if settling:
                settle = 2.0 - (t - t_settled) / (settle_iv * dtt)
                top /= settle
            if top <= 0.0:
                score = 0.0
            elif top > 1e3:
                score = 1.0
            elif steep == 3.0:
                score = -expm1(-ln2 * top * top * top)
            else:
                score = -expm1(-ln2 * top**steep)
            if kind is _SPIKE:
                direction = 1 if z >= 0.0 else -1
            elif kind is _SHIFT:
                direction = cusum_direction
            else:
                direction = 1 if slope >= slope_base else -1
            scored_last = True

            # Episode trajectory: the points of an open episode (and, for a while, those after a
            # lasting one ended) are measured against the baseline frozen at its onset, which no
            # re-baselining since has moved; what they show refines the episode's kind.
            if ep_track:
                if gap or t > ep[_EP_UNTIL]:
                    ep_track = False  # forgotten, or stale after a silence
                else:
                    ep[_EP_LEVEL] += drift
                    ep[_EP_LEVEL_NS] += drift
                    ep_tau = (t - ep[_EP_T0]) / dtt
                    ep_y = (x - season - ep[_EP_LEVEL]) / ep[_EP_SCALE] * ep[_EP_DIR]
                    ep[_EP_N] += 1.0
                    ep[_EP_ST] += ep_tau
                    ep[_EP_STT] += ep_tau * ep_tau
                    ep[_EP_SY] += ep_y
                    ep[_EP_STY] += ep_tau * ep_y
                    ep[_EP_SYY] += ep_y * ep_y
                    stage = ep[_EP_STAGE]
                    if stage < _STAGE_SETTLED and in_alert:
                        if stage == _STAGE_SPIKE:
                            # Opened as a spike: the CUSUM of its points, onset included, on the
                            # frozen baseline tells whether it was the start of a lasting change.
                            ep_c = (
                                ep[_EP_CUSUM] * lam_cached
                                + (ep_y if ep_y < cusum_clip else cusum_clip) / long_run
                                - cusum_k
                            )
                            ep[_EP_CUSUM] = ep_c if ep_c > 0.0 else 0.0
                            if ep_c >= cusum_h * settle:
                                stage = ep[_EP_STAGE] = _STAGE_LASTING
                        if stage == _STAGE_LASTING and _is_ramp(ep, long_run, tf, settle, cfg):
                            # ... and a ramp: the one further alert of the episode says so.
                            ep[_EP_STAGE] = _STAGE_SETTLED
                            if len(pending) >= MAX_PENDING_ALERTS:
                                del pending[0]
                            pending.append(
                                _escalation(
                                    ep,
                                    t,
                                    x,
                                    season,
                                    sc,
                                    tf,
                                    long_run,
                                    settle,
                                    dtt,
                                    spike_thr_eff * settle,
                                    model,
                                    _RMS_PER_MEAN_ABS * mae_ns,
                                    cfg,
                                )
                            )

            # Alert hysteresis and cooldown.
            if in_alert:
                if score < exit_s:
                    if calm_since == _NOT_CALM:
                        calm_since = t
                    elif t - calm_since >= hold_iv * dtt:
                        in_alert = False
                        calm_since = _NOT_CALM
                        cooldown_until = t + cool_iv * dtt
                        if ep[_EP_STAGE] > _STAGE_SPIKE:
                            ep[_EP_UNTIL] = t + recovery_iv * dtt  # a lasting change may go on
                        else:
                            ep_track = False  # a spike that stayed one: nothing to follow
                else:
                    calm_since = _NOT_CALM
            elif score >= enter_s and t >= cooldown_until:
                in_alert = True
                calm_since = _NOT_CALM
                if kind is _SPIKE and cusum_direction == direction:
                    # The CUSUM before this point's own increment: when the points before it
                    # had already built up change-point evidence in the same direction, the
                    # departure began earlier and this point is its culmination, not a spike.
                    before = cusum - inc + cusum_k if direction > 0 else cusum + inc + cusum_k
                    if before >= _BUILD_UP_FRACTION * cusum_h * settle:
                        kind = _SHIFT
                if (
                    ep_track
                    and direction == ep[_EP_DIR]
                    and _continues(ep, ep_tau, ep_y, sc, long_run, tf, settle, spike_thr_eff * settle, cfg)
                ):
                    # The ramp of the last episode goes on: no new anomaly. Said once, if the
                    # only alert so far was the spike that episode opened with.
                    ep[_EP_UNTIL] = math.inf
                    if ep[_EP_STAGE] < _STAGE_SETTLED:
                        ep[_EP_STAGE] = _STAGE_SETTLED
                        if len(pending) >= MAX_PENDING_ALERTS:
                            del pending[0]
                        pending.append(
                            _escalation(
                                ep,
                                t,
                                x,
                                season,
                                sc,
                                tf,
                                long_run,
                                settle,
                                dtt,
                                spike_thr_eff * settle,
                                model,
                                _RMS_PER_MEAN_ABS * mae_ns,
                                cfg,
                            )
                        )
                else:
                    if len(pending) >= MAX_PENDING_ALERTS:
                        del pending[0]
                    alert = _alert_from(
                        _details(
                            t,
                            x,
                            score,
                            kind,
                            direction,
                            expected,
                            sc,
                            az,
                            spike_thr_eff * settle,
                            cusum,
                            cusum_h * settle,
                            trend_z,
                            trend_z_thr * settle * _learning_inflation(slope_n, tau_ss),
                            drift_sigma,
                            drift_thr * settle,
                            slope,
                            model,
                            x - level_ns,
                            _RMS_PER_MEAN_ABS * mae_ns,
                        ),
                        # The trend statistic's slope is judged by its typical variation: that
                        # is its standard error.
                        abs(slope - slope_base) / trend_z if kind is _TREND and trend_z > 0.0 else 0.0,
                    )
                    pending.append(alert)
                    ep_track = True
                    ep_y = (x - expected) / (sc * tf) * direction
                    ep_c = (ep_y if ep_y < cusum_clip else cusum_clip) / long_run - cusum_k
                    ep[:] = (
                        t,
                        expected - season,
                        level_ns,
                        sc * tf,
                        float(direction),
                        1.0,
                        0.0,
                        0.0,
                        ep_y,
                        0.0,
                        ep_y * ep_y,
                        ep_c if ep_c > 0.0 else 0.0,
                        math.inf,
                        _STAGE_SPIKE if alert.kind is _SPIKE else _STAGE_SETTLED,
                    )
            if append is not None:
                append(score)

        self._n = n
        self._t_first = t_first
        self._t_last = t_last
        self._t_settled = t_settled
        self._dt_typ = dtt
        self._level_ns = level_ns
        self._level_d = level_d
        self._level_w = level_w
        self._level_slow = level_slow
        self._var = var
        self._tail = tail
        self._zz = zz
        self._zl = zl
        self._zprev = zprev
        self._have_zprev = have_zprev
        self._cp = cp
        self._cn = cn
        self._cp_sum = cp_sum
        self._cn_sum = cn_sum
        self._cp_n = cp_n
        self._cn_n = cn_n
        self._sum_w = sum_w
        self._sum_wt = sum_wt
        self._sum_wtt = sum_wtt
        self._sum_wy = sum_wy
        self._sum_wty = sum_wty
        self._slope_base = slope_base
        self._slope_scale = slope_scale
        self._slope_n = slope_n
        self._prev_level = prev_level
        self._prev_until = prev_until
        self._mae_ns = mae_ns
        self._mae_d = mae_d
        self._mae_w = mae_w
        self._model = model
        self._switch_ok = switch_ok
        self._in_alert = in_alert
        self._episode_tracked = ep_track
        self._calm_since = calm_since
        self._cooldown_until = cooldown_until
        if scored_last:
            self._last = _details(
                t,
                x,
                score,
                kind,
                direction,
                expected,
                sc,
                az,
                spike_thr_eff * settle,
                cusum,
                cusum_h * settle,
                trend_z,
                trend_z_thr * settle * _learning_inflation(slope_n, tau_ss),
                drift_sigma,
                drift_thr * settle,
                slope,
                model,
                x - level_ns,
                _RMS_PER_MEAN_ABS * mae_ns,
            )
        elif ran:
            self._last = None

    def _initialise(self, fixed_dt: float | None) -> tuple[float, float, float, float]:
        """Level, variance, interval and last time from the warm-up points (median and MAD)."""
        xs = sorted(self._warm_x)
        mid = len(xs) // 2
        median = xs[mid]
        deviations = sorted(abs(v - median) for v in xs)
        scale = 1.4826 * deviations[mid]
        if scale == 0.0:  # mostly constant (or quantised): fall back to the mean deviation
            scale = _RMS_PER_MEAN_ABS * sum(deviations) / len(deviations)
        if fixed_dt is not None:
            dt_typ = fixed_dt
        else:
            ts = self._warm_t
            steps = sorted(b - a for a, b in itertools.pairwise(ts) if b > a)
            dt_typ = steps[len(steps) // 2] if steps else 1.0
        t_last = max(self._warm_t)
        self._warm_t = []
        self._warm_x = []
        return median, scale * scale, dt_typ, t_last

    def _result(self, timestamp_s: float, value: float, alert: DetectorAlert | None) -> DetectorResult:
        last = self._last
        if last is None:
            return DetectorResult(
                timestamp_s=timestamp_s,
                value=value,
                anomaly_score=0.0,
                kind=AnomalyKind.NONE,
                direction=0,
                expected=None,
                scale=None,
                indicators=(),
                in_alert=self._in_alert,
                alert=None,
            )
        score = last[2]
        kind = _classify(last) if score >= self._config.exit_score else AnomalyKind.NONE
        return DetectorResult(
            timestamp_s=last[0],
            value=last[1],
            anomaly_score=score,
            kind=kind,
            direction=int(last[4]),
            expected=last[5],
            scale=last[6],
            indicators=_indicators(last),
            in_alert=self._in_alert,
            alert=alert,
        )


def _indicators(last: tuple[float, ...]) -> tuple[DetectorIndicator, ...]:
    return (
        DetectorIndicator("residual_z", last[7], last[8]),
        DetectorIndicator("cusum", last[9], last[10]),
        DetectorIndicator("trend_z", last[11], last[12]),
        DetectorIndicator("trend_drift_sigma", last[13], last[14]),
    )


def _classify(last: tuple[float, ...]) -> AnomalyKind:
    """The dominant statistic's kind; a spike or shift that only stands out against the seasonal
    profile (ordinary without it) is a seasonal pattern anomaly."""
    code = last[3]
    kind = _TREND if code == 3.0 else (_SHIFT if code == 2.0 else _SPIKE)
    if kind is not _TREND and last[16] > 0.0:
        deviation_without_season = abs(last[17])
        typical_without_season = max(last[18], last[6])
        if deviation_without_season < last[8] * typical_without_season:
            return AnomalyKind.SEASONAL
    return kind


def _details(
    t: float,
    x: float,
    score: float,
    kind: AnomalyKind,
    direction: int,
    expected: float,
    scale: float,
    abs_z: float,
    spike_threshold: float,
    cusum: float,
    cusum_threshold: float,
    trend_z: float,
    trend_threshold: float,
    drift_sigma: float,
    drift_threshold: float,
    slope: float,
    model: int,
    deviation_without_season: float,
    typical_without_season: float,
) -> tuple[float, ...]:
    """One scored point's figures, packed for `_result` and `_alert_from` (built only when needed)."""
    code = 3.0 if kind is _TREND else (2.0 if kind is _SHIFT else 1.0)
    return (
        t,
        x,
        score,
        code,
        float(direction),
        expected,
        scale,
        abs_z,
        spike_threshold,
        cusum,
        cusum_threshold,
        trend_z,
        trend_threshold,
        drift_sigma,
        drift_threshold,
        slope,
        float(model),
        deviation_without_season,
        typical_without_season,
    )


def _alert_from(last: tuple[float, ...], slope_stderr: float = 0.0) -> DetectorAlert:
    return DetectorAlert(
        timestamp_s=last[0],
        kind=_classify(last),
        direction=int(last[4]),
        score=last[2],
        value=last[1],
        expected=last[5],
        scale=last[6],
        slope_per_s=last[15],
        indicators=_indicators(last),
        slope_stderr_per_s=slope_stderr,
    )


def _fit(ep: list[float], long_run: float) -> tuple[float, float, float]:
    """The episode's least-squares line: slope (onset scales per interval), its z statistic, and
    the intercept. The slope's standard error takes the larger of the onset noise (inflated by the
    long-run factor of autocorrelated residuals) and the scatter about the line, so a wandering
    or noisier-than-at-onset trajectory needs a steeper slope."""
    n = ep[_EP_N]
    if n < 3.0:
        return 0.0, 0.0, ep[_EP_SY] / n
    st = ep[_EP_ST]
    sy = ep[_EP_SY]
    den = n * ep[_EP_STT] - st * st
    if den <= 0.0:
        return 0.0, 0.0, sy / n
    slope = (n * ep[_EP_STY] - st * sy) / den
    intercept = (sy - slope * st) / n
    sxx = den / n
    rss = ep[_EP_SYY] - sy * sy / n - slope * slope * sxx
    noise = rss / (n - 2.0)
    if noise < long_run * long_run:
        noise = long_run * long_run
    return slope, slope * math.sqrt(sxx / noise), intercept


def _learning_inflation(slope_n: float, tau_ss: float) -> float:
    """How much the trend threshold is raised while the slope's typical variation is learnt."""
    return math.sqrt(tau_ss / slope_n) if 0.0 < slope_n < tau_ss else 1.0


def _ramp_slope(
    ep: list[float],
    long_run: float,
    tail_factor: float,
    settle: float,
    cfg: StreamingDetectorConfig,
    z_threshold: float | None = None,
) -> tuple[float, float, float] | None:
    """The episode's line (slope, its z, intercept) if it is a ramp in the episode's direction:
    a significant slope (`trend_threshold_z`, or `z_threshold`) that is also material
    (`trend_min_drift_sigma` over the horizon), the trend statistic's own two tests; else None."""
    slope, slope_z, intercept = _fit(ep, long_run)
    if (
        slope_z >= (cfg.trend_threshold_z * settle if z_threshold is None else z_threshold)
        and slope * tail_factor * cfg.trend_horizon_intervals >= cfg.trend_min_drift_sigma * settle
    ):
        return slope, slope_z, intercept
    return None


def _is_ramp(
    ep: list[float], long_run: float, tail_factor: float, settle: float, cfg: StreamingDetectorConfig
) -> bool:
    return _ramp_slope(ep, long_run, tail_factor, settle, cfg) is not None


def _continues(
    ep: list[float],
    tau: float,
    y: float,
    scale: float,
    long_run: float,
    tail_factor: float,
    settle: float,
    spike_threshold: float,
    cfg: StreamingDetectorConfig,
) -> bool:
    """Whether the point (`tau` intervals after the onset, `y` onset scales towards the episode's
    direction, already in `ep`'s sums) is the remembered ramp going on: the trajectory still
    clearly rises (slope z >= `_CONTINUATION_Z` and material; suppressing a repeat needs less
    evidence than raising an alert), and the point is not a spike above its line (a faster rise,
    or a new jump, is a new anomaly; a step is never continued).
    """
    ramp = _ramp_slope(ep, long_run, tail_factor, settle, cfg, _CONTINUATION_Z)
    if ramp is None:
        return False
    slope, _, intercept = ramp
    return (y - intercept - slope * tau) * ep[_EP_SCALE] < spike_threshold * scale


def _escalation(
    ep: list[float],
    t: float,
    x: float,
    season: float,
    scale: float,
    tail_factor: float,
    long_run: float,
    settle: float,
    dt_typ: float,
    spike_threshold: float,
    model: int,
    typical_without_season: float,
    cfg: StreamingDetectorConfig,
) -> DetectorAlert:
    """The TREND alert of a spike-opened episode whose points since have proved a ramp, judged
    against the baseline frozen at its onset; it carries the episode's own slope and its standard
    error, so a prediction can project when the ramp will cross a threshold."""
    slope, slope_z, _ = _fit(ep, long_run)
    drift_sigma = slope * tail_factor * cfg.trend_horizon_intervals
    trend_thr = cfg.trend_threshold_z * settle
    drift_thr = cfg.trend_min_drift_sigma * settle
    slope_per_s = ep[_EP_DIR] * slope * ep[_EP_SCALE] / dt_typ
    expected = ep[_EP_LEVEL] + season
    return _alert_from(
        _details(
            t,
            x,
            score_from_ratio(min(slope_z / trend_thr, drift_sigma / drift_thr), cfg.score_steepness),
            _TREND,
            int(ep[_EP_DIR]),
            expected,
            scale,
            abs(x - expected) / scale,
            spike_threshold,
            ep[_EP_CUSUM],
            cfg.cusum_threshold * settle,
            slope_z,
            trend_thr,
            drift_sigma,
            drift_thr,
            slope_per_s,
            model,
            x - ep[_EP_LEVEL_NS],
            typical_without_season,
        ),
        abs(slope_per_s) / slope_z,
    )
