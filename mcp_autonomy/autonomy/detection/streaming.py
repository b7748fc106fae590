"""`StreamingDetector`: robust, seasonal, change-point and trend anomaly scoring for one series.

One point in, one score out, O(1) work and a fixed amount of memory per series. Each point goes
through the stages of `_run` in order: elapsed time (`forecast.IntervalClock`), the robust seasonal
forecast (`forecast.Forecaster`), the spike, change-point and trend statistics (`evidence`), one
calibrated raw score, the episode that refines an anomaly's kind (`episodes`), and the alert rule
(`alerting`). Non-finite values and timestamps are skipped (score 0, state untouched); everything
is plain float arithmetic, so it is deterministic.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from typing import Final

from mcp_autonomy.autonomy.detection.alerting import AlertDecision, AlertRule, OnsetRule
from mcp_autonomy.autonomy.detection.base import AnomalyKind, DetectorAlert, DetectorResult
from mcp_autonomy.autonomy.detection.config import StreamingDetectorConfig
from mcp_autonomy.autonomy.detection.episodes import Episode, EpisodeStage
from mcp_autonomy.autonomy.detection.evidence import (
    Autocorrelation,
    ChangePoint,
    TailEstimate,
    TrendStatistic,
    VolatilityShift,
)
from mcp_autonomy.autonomy.detection.forecast import (
    DAY_S,
    MODEL_NONE,
    RMS_PER_MEAN_ABS,
    WEEK_S,
    Forecaster,
    IntervalClock,
)
from mcp_autonomy.autonomy.detection.report import PointReport

__all__ = ["DAY_S", "MAX_PENDING_ALERTS", "WEEK_S", "StreamingDetector"]

MAX_PENDING_ALERTS: Final = 1_000  # undrained alerts beyond this are dropped, oldest first
_MODEL_NAMES: Final = ("none", "daily", "weekly")
_TREND_REALIGN_LIMIT: Final = 0.5  # a change point with less trend evidence than this is a step
_RECOVERY_TOLERANCE: Final = 3.0  # scales: "back at the old level"
_BUILD_UP_FRACTION: Final = 1.0 / 3.0  # CUSUM already this far up: a spike-sized point is no spike
_MAX_RATIO: Final = 1e3  # the score is 1.0 to machine precision long before; avoids overflow
_LN2: Final = math.log(2.0)

_SPIKE: Final = AnomalyKind.SPIKE
_SHIFT: Final = AnomalyKind.LEVEL_SHIFT
_TREND: Final = AnomalyKind.TREND
_VOLATILITY: Final = AnomalyKind.VOLATILITY
_RAISE: Final = AlertDecision.RAISE
_CLEAR: Final = AlertDecision.CLEAR


class StreamingDetector:
    """An online anomaly detector for one series: feed points in time order, read scores.

    `update` and `score_many` both go through `_run`, so the live loop and the offline backtest
    run exactly the same code. Not thread-safe; one instance per series.
    """

    __slots__ = (
        "_alert_rule",
        "_autocorrelation",
        "_change_point",
        "_clock",
        "_config",
        "_episode",
        "_forecast",
        "_last",
        "_pending",
        "_points_seen",
        "_settled_at_s",
        "_tails",
        "_trend",
        "_volatility",
        "_warmup_t_s",
        "_warmup_values",
    )

    def __init__(self, config: StreamingDetectorConfig | None = None) -> None:
        cfg = config if config is not None else StreamingDetectorConfig()
        self._config = cfg
        self._points_seen = 0
        self._warmup_t_s: list[float] = []
        self._warmup_values: list[float] = []
        self._settled_at_s = 0.0  # the warm-up's last point: thresholds relax from 2x from here
        self._clock = IntervalClock(cfg)
        self._forecast = Forecaster(cfg)
        self._tails = TailEstimate(cfg)
        self._autocorrelation = Autocorrelation(cfg)
        self._change_point = ChangePoint(cfg)
        self._trend = TrendStatistic(cfg)
        self._volatility = VolatilityShift(cfg)
        self._alert_rule: AlertRule = OnsetRule(cfg, self._clock)
        self._episode: Episode | None = None
        self._pending: deque[DetectorAlert] = deque(maxlen=MAX_PENDING_ALERTS)
        self._last: PointReport | None = None

    # --- public API ---

    @property
    def config(self) -> StreamingDetectorConfig:
        return self._config

    @property
    def points_seen(self) -> int:
        """Finite points learnt from so far (warm-up included)."""
        return self._points_seen

    @property
    def warmed_up(self) -> bool:
        return self._points_seen >= self._config.warmup_points

    @property
    def sample_interval_s(self) -> float | None:
        """The typical interval between points (configured or learnt); None before warm-up."""
        return self._clock.interval_s if self.warmed_up or self._config.sample_interval_s else None

    @property
    def seasonal_model(self) -> str:
        """Which forecast is in use: `none`, `daily` or `weekly` (daily plus day-of-week)."""
        return _MODEL_NAMES[self._forecast.model]

    @property
    def in_alert(self) -> bool:
        return self._alert_rule.in_alert

    def update(self, timestamp_s: float, value: float) -> DetectorResult:
        """Score one point, learn from it, and explain the score."""
        pending = self._pending
        newest_before = pending[-1] if pending else None
        self._run((timestamp_s,), (value,), None)
        alert = pending.pop() if pending and pending[-1] is not newest_before else None
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
        alerts = list(self._pending)
        self._pending.clear()
        return alerts

    # --- the per-point loop ---

    def _run(
        self, timestamps_s: Sequence[float], values: Sequence[float], scores: list[float] | None
    ) -> None:
        """Score and learn from each point in turn; append the scores to `scores` if given.

        `evidence_score` is the strongest statistic, calibrated; `score`, what `score_many` returns,
        is the onset score the alert rule derives from it (the news in the point), so an episode
        scores high once, where it begins, and its alert is raised exactly there. The stages keep their state in slotted
        attributes and what flows between them on one point stays in locals; against the single
        loop this replaced (all state in locals) that costs about a quarter of the throughput
        (`benchmarks/detect_throughput.py`: ~245k -> ~180k points/s of CPU time), for code that
        can be read one stage at a time.
        """
        cfg = self._config
        warmup_points = cfg.warmup_points
        settle_iv = cfg.settle_intervals
        gap_iv = cfg.gap_intervals
        cusum_threshold = cfg.cusum_threshold
        steepness = cfg.score_steepness
        clock = self._clock
        forecast = self._forecast
        tails = self._tails
        autocorrelation = self._autocorrelation
        change_point = self._change_point
        trend = self._trend
        volatility = self._volatility
        volatility_threshold = cfg.volatility_threshold
        enter_score = cfg.enter_score
        exit_score = cfg.exit_score
        alert_rule = self._alert_rule
        pending = self._pending
        record = scores.append if scores is not None else None
        points_seen = self._points_seen

        report_last = False
        ran = False
        for t, x in zip(timestamps_s, values, strict=True):
            ran = True
            # x - x is 0.0 for finite numbers and NaN for NaN and +-inf: one test for both.
            if x - x != 0.0 or t - t != 0.0:
                report_last = False
                if record is not None:
                    record(0.0)
                continue
            points_seen += 1
            if points_seen <= warmup_points:
                self._warm_up(t, x, points_seen)
                report_last = False
                if record is not None:
                    record(0.0)
                continue

            # Elapsed time; the baseline moves along its slope meanwhile.
            elapsed_s = clock.advance(t)
            interval_s = clock.interval_s
            learning_iv = clock.learning_iv
            gap = clock.gap
            drift = trend.slope_base * (gap_iv * interval_s if gap else elapsed_s)

            # Forecast and residual.
            level, season, scale = forecast.predict(t, drift)
            expected = level + season
            residual = x - expected
            z = residual / scale
            abs_z = z if z >= 0.0 else -z

            # Thresholds start doubled after the warm-up and relax to 1x over `settle_intervals`.
            since_settled_s = t - self._settled_at_s
            settling = since_settled_s < settle_iv * interval_s
            settling_factor = 2.0 - since_settled_s / (settle_iv * interval_s) if settling else 1.0

            tail_factor = tails.update(abs_z, learning_iv, settling)
            # Noise size: skipped across a silence (the short average would mix two regimes).
            volatility_ratio = (
                0.0 if gap else volatility.update(abs_z, tail_factor, learning_iv) / volatility_threshold
            )

            # Spike statistic: |z|, or the distance to the pre-shift level if the series is
            # returning to it (a recovery is not a new anomaly).
            recovering = False
            spike_z = abs_z
            if change_point.previous_level_until_s > t:
                previous_z = change_point.distance_to_previous_z(x, season, scale)
                if previous_z < abs_z:
                    recovering = True
                    spike_z = previous_z
            spike_ratio = spike_z / tails.spike_threshold_z

            # Change point and trend.
            long_run = autocorrelation.update(z, learning_iv, gap)
            cusum = change_point.update(z, tail_factor, scale, long_run, clock.cusum_decay, gap)
            cusum_ratio = 0.0 if recovering else cusum / cusum_threshold
            trend_ratio = trend.update(
                level, residual, scale, elapsed_s, clock.trend_decay, learning_iv, interval_s
            )
            if cusum >= cusum_threshold:  # one side has confirmed a change point
                residual -= self._rebaseline(t, level, scale, recovering, trend_ratio, interval_s)

            # Learn the baseline; a change of seasonal model restarts the change-point evidence
            # (the old model's residuals say nothing about the new one).
            if forecast.learn(t, x, residual, scale, tail_factor, learning_iv, interval_s):
                change_point.reset()

            # The evidence: the strongest statistic over its threshold, and its kind.
            evidence_ratio, kind = _strongest(
                spike_ratio, cusum_ratio, trend_ratio, volatility_ratio, settling_factor
            )
            if kind is _SPIKE:
                direction = 1 if z >= 0.0 else -1
            elif kind is _SHIFT:
                direction = change_point.direction
            elif kind is _TREND:
                direction = 1 if trend.slope >= trend.slope_base else -1
            else:
                direction = volatility.direction
            report_last = True

            # Episodes, then the score (the news in the point) and the alert it decides.
            newest = pending[-1] if pending else None
            episode = self._episode
            if episode is not None:
                self._follow_episode(
                    episode, t, x, season, drift, scale, tail_factor, long_run, settling_factor, gap
                )
            score = _score(alert_rule.step(t, evidence_ratio), steepness)
            decision = alert_rule.decision
            if decision is _RAISE:
                kind = self._raise(
                    t,
                    x,
                    score,
                    _score(evidence_ratio, steepness),
                    kind,
                    direction,
                    expected,
                    season,
                    scale,
                    abs_z,
                    tail_factor,
                    long_run,
                    settling_factor,
                    volatility_ratio * volatility_threshold,
                )
            elif decision is _CLEAR:
                self._clear(t)
            if (pending[-1] if pending else None) is not newest:
                # An alert on this point (its onset, or an episode's TREND alert): the score says so.
                if score < enter_score:
                    score = enter_score
            elif score >= enter_score:
                # Raised, but the episode knew it (the ramp it follows going on): no news after all.
                score = exit_score
            if record is not None:
                record(score)

        self._points_seen = points_seen
        if report_last:
            self._last = self._report(
                t,
                x,
                score,
                _score(evidence_ratio, steepness),
                kind,
                direction,
                expected,
                scale,
                abs_z,
                settling_factor,
                volatility_ratio * volatility_threshold,
            )
        elif ran:
            self._last = None

    # --- stages that run on some points only ---

    def _warm_up(self, t_s: float, x: float, points_seen: int) -> None:
        """Collect the warm-up; at its last point, start every stage from its median and MAD."""
        if points_seen == 1:
            self._forecast.first_t_s = t_s
        self._warmup_t_s.append(t_s)
        self._warmup_values.append(x)
        self._forecast.observe(x)
        if points_seen < self._config.warmup_points:
            return
        values = sorted(self._warmup_values)
        mid = len(values) // 2
        median = values[mid]
        deviations = sorted(abs(v - median) for v in values)
        scale = 1.4826 * deviations[mid]
        if scale == 0.0:  # mostly constant (or quantised): fall back to the mean deviation
            scale = RMS_PER_MEAN_ABS * sum(deviations) / len(deviations)
        interval_s = self._config.sample_interval_s
        if interval_s is None:
            steps = sorted(b - a for a, b in itertools.pairwise(self._warmup_t_s) if b > a)
            interval_s = steps[len(steps) // 2] if steps else 1.0
        self._clock.start(interval_s, max(self._warmup_t_s))
        self._forecast.start(median, scale * scale)
        self._settled_at_s = t_s
        self._warmup_t_s = []
        self._warmup_values = []

    def _rebaseline(
        self, t_s: float, level: float, scale: float, recovering: bool, trend_ratio: float, interval_s: float
    ) -> float:
        """A confirmed change point: move the baseline by the mean residual since the change began,
        so the shift becomes the new normal; remember the old level for `recovery_memory_intervals`
        (forgotten at once if this shift is the return to it). Returns the shift."""
        change_point = self._change_point
        shift = change_point.mean_shift()
        self._forecast.drift(shift)
        if trend_ratio < _TREND_REALIGN_LIMIT:
            self._trend.realign(shift)  # a step, not a ramp: shift the trend window's past with it
        if recovering and abs(level + shift - change_point.previous_level) < _RECOVERY_TOLERANCE * scale:
            change_point.previous_level_until_s = -math.inf
        else:
            change_point.previous_level = level
            change_point.previous_level_until_s = t_s + self._config.recovery_memory_intervals * interval_s
        change_point.reset()
        return shift

    def _follow_episode(
        self,
        episode: Episode,
        t_s: float,
        x: float,
        season: float,
        drift: float,
        scale: float,
        tail_factor: float,
        long_run: float,
        settling_factor: float,
        gap: bool,
    ) -> None:
        """Add the point to the followed episode's trajectory (frozen baseline); a spike-opened
        episode in alert that proves a lasting ramp raises its one TREND alert."""
        if gap or t_s > episode.followed_until_s:
            self._episode = None  # forgotten, or stale after a silence
            return
        interval_s = self._clock.interval_s
        episode.follow(t_s, x, season, drift, interval_s)
        if episode.stage is EpisodeStage.SETTLED or not self._alert_rule.in_alert:
            return
        cfg = self._config
        if episode.stage is EpisodeStage.SPIKE and episode.build_up(
            self._clock.cusum_decay, long_run, cfg, cfg.cusum_threshold * settling_factor
        ):
            episode.stage = EpisodeStage.LASTING
        if episode.stage is EpisodeStage.LASTING and episode.ramp(
            long_run, tail_factor, settling_factor, cfg
        ):
            episode.stage = EpisodeStage.SETTLED
            self._pending.append(
                self._escalation(episode, t_s, x, season, scale, tail_factor, long_run, settling_factor)
            )

    def _raise(
        self,
        t_s: float,
        x: float,
        score: float,
        evidence_score: float,
        kind: AnomalyKind,
        direction: int,
        expected: float,
        season: float,
        scale: float,
        abs_z: float,
        tail_factor: float,
        long_run: float,
        settling_factor: float,
        volatility: float,
    ) -> AnomalyKind:
        """The alert rule raised: alert and open an episode, unless the point is the followed ramp
        going on (then nothing, or the TREND alert of a spike-opened episode). Returns the point's
        kind as alerted (`_onset_kind`)."""
        kind = self._onset_kind(kind, direction, settling_factor)
        cfg = self._config
        episode = self._episode
        if (
            episode is not None
            and direction == episode.direction
            and episode.continues(
                scale,
                long_run,
                tail_factor,
                settling_factor,
                self._tails.spike_threshold_z * settling_factor,
                cfg,
            )
        ):
            # The ramp of the followed episode goes on: no new anomaly. Said once, if the only
            # alert so far was the spike that episode opened with.
            episode.followed_until_s = math.inf
            if episode.stage is not EpisodeStage.SETTLED:
                episode.stage = EpisodeStage.SETTLED
                self._pending.append(
                    self._escalation(episode, t_s, x, season, scale, tail_factor, long_run, settling_factor)
                )
            return kind
        trend = self._trend
        report = self._report(
            t_s,
            x,
            score,
            evidence_score,
            kind,
            direction,
            expected,
            scale,
            abs_z,
            settling_factor,
            volatility,
        )
        # The trend statistic's slope is judged by its typical variation: that is its standard error.
        slope_stderr = (
            abs(trend.slope - trend.slope_base) / trend.z if kind is _TREND and trend.z > 0.0 else 0.0
        )
        alert = report.alert(slope_stderr)
        self._pending.append(alert)
        self._episode = Episode.open(
            t_s,
            x,
            expected,
            season,
            self._forecast.level_none,
            scale * tail_factor,
            direction,
            EpisodeStage.SPIKE if alert.kind is _SPIKE or alert.kind is _VOLATILITY else EpisodeStage.SETTLED,
            long_run,
            cfg,
        )
        return kind

    def _onset_kind(self, kind: AnomalyKind, direction: int, settling_factor: float) -> AnomalyKind:
        """A point that crosses the spike threshold while the CUSUM had already built up a third of
        its threshold in the same direction *before* it is the culmination of a departure that
        began earlier (a ramp, or a shift): a LEVEL_SHIFT, not a SPIKE."""
        change_point = self._change_point
        if (
            kind is _SPIKE
            and change_point.direction == direction
            and change_point.built_up_before(direction)
            >= _BUILD_UP_FRACTION * self._config.cusum_threshold * settling_factor
        ):
            return _SHIFT
        return kind

    def _clear(self, t_s: float) -> None:
        """The anomaly ended: a lasting episode is followed for a while (the change may go on), a
        spike that stayed one is forgotten."""
        episode = self._episode
        if episode is None:
            return
        if episode.stage is EpisodeStage.SPIKE:
            self._episode = None
        else:
            episode.followed_until_s = t_s + self._config.recovery_memory_intervals * self._clock.interval_s

    def _escalation(
        self,
        episode: Episode,
        t_s: float,
        x: float,
        season: float,
        scale: float,
        tail_factor: float,
        long_run: float,
        settling_factor: float,
    ) -> DetectorAlert:
        forecast = self._forecast
        return episode.escalation(
            t_s,
            x,
            season,
            scale,
            tail_factor,
            long_run,
            settling_factor,
            self._clock.interval_s,
            self._tails.spike_threshold_z * settling_factor,
            forecast.model != MODEL_NONE,
            RMS_PER_MEAN_ABS * forecast.mae_none,
            self._config,
        )

    def _report(
        self,
        t_s: float,
        x: float,
        score: float,
        evidence_score: float,
        kind: AnomalyKind,
        direction: int,
        expected: float,
        scale: float,
        abs_z: float,
        settling_factor: float,
        volatility: float,
    ) -> PointReport:
        """The current point's figures, read from the stages after it has been learnt."""
        cfg = self._config
        trend = self._trend
        forecast = self._forecast
        return PointReport(
            timestamp_s=t_s,
            value=x,
            score=score,
            evidence_score=evidence_score,
            kind=kind,
            direction=direction,
            expected=expected,
            scale=scale,
            residual_z=abs_z,
            spike_threshold_z=self._tails.spike_threshold_z * settling_factor,
            cusum=self._change_point.statistic,
            cusum_threshold=cfg.cusum_threshold * settling_factor,
            trend_z=trend.z,
            trend_threshold_z=trend.threshold_z(settling_factor),
            drift_sigma=trend.drift_sigma,
            drift_threshold_sigma=cfg.trend_min_drift_sigma * settling_factor,
            slope_per_s=trend.slope,
            seasonal_model=forecast.model != MODEL_NONE,
            deviation_without_season=x - forecast.level_none,
            typical_without_season=RMS_PER_MEAN_ABS * forecast.mae_none,
            volatility=volatility,
            volatility_threshold=cfg.volatility_threshold * settling_factor,
        )

    def _result(self, timestamp_s: float, value: float, alert: DetectorAlert | None) -> DetectorResult:
        last = self._last
        in_alert = self._alert_rule.in_alert
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
                in_alert=in_alert,
                alert=None,
            )
        return DetectorResult(
            timestamp_s=last.timestamp_s,
            value=last.value,
            anomaly_score=last.score,
            kind=last.classify() if last.evidence_score >= self._config.exit_score else AnomalyKind.NONE,
            direction=last.direction,
            expected=last.expected,
            scale=last.scale,
            indicators=last.indicators(),
            in_alert=in_alert,
            alert=alert,
            evidence_score=last.evidence_score,
        )


def _strongest(
    spike_ratio: float,
    cusum_ratio: float,
    trend_ratio: float,
    volatility_ratio: float,
    settling_factor: float,
) -> tuple[float, AnomalyKind]:
    """The strongest statistic's ratio to its threshold (divided by the settling factor) and its kind."""
    top = spike_ratio
    kind = _SPIKE
    if cusum_ratio > top:
        top = cusum_ratio
        kind = _SHIFT
    if trend_ratio > top:
        top = trend_ratio
        kind = _TREND
    if volatility_ratio > top:
        top = volatility_ratio
        kind = _VOLATILITY
    return top / settling_factor, kind


def _score(ratio: float, steepness: float) -> float:
    """`calibration.score_from_ratio`, written out: at the default steepness of 3 the cube is a
    product, faster than a power (and not always equal to it in the last bit)."""
    if ratio <= 0.0:
        return 0.0
    if ratio > _MAX_RATIO:
        return 1.0
    if steepness == 3.0:
        return -math.expm1(-_LN2 * ratio * ratio * ratio)
    return -math.expm1(-_LN2 * ratio**steepness)
