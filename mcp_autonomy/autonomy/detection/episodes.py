"""Episodes: what an anomaly turned out to be, measured against the baseline frozen at its onset.

Everything else in the detector adapts to what it sees: re-baselining makes a shift the new
normal, and a ramp is chased by a staircase of re-baselines (and inflates the scale and the
tails) until it no longer stands out. That is right once it has been reported, but it means the
points after an alert cannot say what the anomaly turned out to be. So each alert opens an
`Episode` that keeps the baseline (and scale) of its onset and fits a least-squares line to the
episode's points against it (O(1) running sums), untouched by any re-baselining since.

Episodes only add or drop alerts (a TREND escalation; a repeat of a ramp going on); they never
change a point's score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from mcp_autonomy.autonomy.detection.base import AnomalyKind, DetectorAlert
from mcp_autonomy.autonomy.detection.calibration import score_from_ratio
from mcp_autonomy.autonomy.detection.config import StreamingDetectorConfig
from mcp_autonomy.autonomy.detection.report import PointReport

__all__ = ["Episode", "EpisodeStage"]

_CONTINUATION_Z: Final = 2.0  # a remembered episode still rising this clearly is a ramp going on


class EpisodeStage(IntEnum):
    """How much is known about what an episode is."""

    SPIKE = 0  # opened as a spike (or a noise burst), nothing more known yet
    LASTING = 1  # opened as a spike, and its points since have stayed away (a change point)
    SETTLED = 2  # its kind is final: opened as a lasting kind, or escalated to TREND


@dataclass(slots=True)
class Episode:
    """One anomaly from its alert on: its onset baseline and the running sums of its trajectory.

    Trajectory values `y` are the points' departures from the onset level, in onset scales,
    towards the episode's direction, at `tau` intervals since the onset. An open episode is
    followed until it ends (`followed_until_s` is infinite); a lasting one is then followed for
    `recovery_memory_intervals` more, to recognise the same ramp if it is detected again.

    - A ramp steep enough for its first step to be an outlier opens as a SPIKE (one point cannot
      tell a spike from the start of a ramp, and spikes must alert on their point). When the
      episode's points, onset included, then make a change point against the frozen baseline (its
      own CUSUM reaches the threshold) *and* their line is a ramp (`ramp`), the episode raises its
      one further alert: a TREND with that slope and its standard error (`escalation`). A spike
      that comes back, a burst, or a step (lasting but flat) raises nothing more.
    - De-duplication: a new alert in the direction of a followed episode whose point is not a
      spike above the episode's line, while that line still clearly rises, is the same ramp going
      on (re-detected after the chasing re-baselines lost it), not a new anomaly (`continues`).
    """

    onset_s: float
    level: float  # the forecast level (without season) at the onset, drifted by the base slope
    level_no_season: float  # the same for the no-season model
    scale: float  # the onset's tail-normalised scale: trajectory values are in these units
    direction: int
    stage: EpisodeStage
    sum_y: float
    sum_y2: float
    cusum: float  # CUSUM of the trajectory, onset included (spike-opened episodes)
    points: int = 1
    sum_tau: float = 0.0
    sum_tau2: float = 0.0
    sum_tau_y: float = 0.0
    followed_until_s: float = math.inf
    tau: float = 0.0  # the latest point's position and value
    y: float = 0.0

    @classmethod
    def open(
        cls,
        t_s: float,
        x: float,
        expected: float,
        season: float,
        level_no_season: float,
        onset_scale: float,
        direction: int,
        stage: EpisodeStage,
        long_run: float,
        config: StreamingDetectorConfig,
    ) -> Episode:
        """The episode an alert at `t_s` opens, its onset point already in the trajectory."""
        y = (x - expected) / onset_scale * direction
        cusum = (y if y < config.cusum_clip_z else config.cusum_clip_z) / long_run - config.cusum_slack_z
        return cls(
            onset_s=t_s,
            level=expected - season,
            level_no_season=level_no_season,
            scale=onset_scale,
            direction=direction,
            stage=stage,
            sum_y=y,
            sum_y2=y * y,
            cusum=cusum if cusum > 0.0 else 0.0,
        )

    def follow(self, t_s: float, x: float, season: float, drift: float, interval_s: float) -> None:
        """Add a point to the trajectory; the frozen levels drift with the base slope."""
        self.level += drift
        self.level_no_season += drift
        tau = self.tau = (t_s - self.onset_s) / interval_s
        y = self.y = (x - season - self.level) / self.scale * self.direction
        self.points += 1
        self.sum_tau += tau
        self.sum_tau2 += tau * tau
        self.sum_y += y
        self.sum_tau_y += tau * y
        self.sum_y2 += y * y

    def build_up(
        self, decay: float, long_run: float, config: StreamingDetectorConfig, threshold: float
    ) -> bool:
        """Add the latest point to the trajectory's CUSUM (on the frozen baseline); True when it
        reaches `threshold`: the spike was the start of a lasting change."""
        y = self.y
        clip = config.cusum_clip_z
        cusum = self.cusum * decay + (y if y < clip else clip) / long_run - config.cusum_slack_z
        self.cusum = cusum if cusum > 0.0 else 0.0
        return cusum >= threshold

    def line(self, long_run: float) -> tuple[float, float, float]:
        """The trajectory's least-squares line: slope (onset scales per interval), its z statistic,
        and the intercept. The slope's standard error takes the larger of the onset noise (inflated
        by the long-run factor of autocorrelated residuals) and the scatter about the line, so a
        wandering or noisier-than-at-onset trajectory needs a steeper slope."""
        n = self.points
        sum_y = self.sum_y
        if n < 3:
            return 0.0, 0.0, sum_y / n
        sum_tau = self.sum_tau
        den = n * self.sum_tau2 - sum_tau * sum_tau
        if den <= 0.0:
            return 0.0, 0.0, sum_y / n
        slope = (n * self.sum_tau_y - sum_tau * sum_y) / den
        intercept = (sum_y - slope * sum_tau) / n
        spread = den / n
        residual_ss = self.sum_y2 - sum_y * sum_y / n - slope * slope * spread
        noise = residual_ss / (n - 2.0)
        if noise < long_run * long_run:
            noise = long_run * long_run
        return slope, slope * math.sqrt(spread / noise), intercept

    def ramp(
        self,
        long_run: float,
        tail_factor: float,
        settling_factor: float,
        config: StreamingDetectorConfig,
        z_threshold: float | None = None,
    ) -> tuple[float, float, float] | None:
        """The line (slope, its z, intercept) if it is a ramp in the episode's direction: a
        significant slope (`trend_threshold_z`, or `z_threshold`) that is also material
        (`trend_min_drift_sigma` over the horizon), the trend statistic's own two tests; else None."""
        slope, slope_z, intercept = self.line(long_run)
        threshold = config.trend_threshold_z * settling_factor if z_threshold is None else z_threshold
        if (
            slope_z >= threshold
            and slope * tail_factor * config.trend_horizon_intervals
            >= config.trend_min_drift_sigma * settling_factor
        ):
            return slope, slope_z, intercept
        return None

    def continues(
        self,
        scale: float,
        long_run: float,
        tail_factor: float,
        settling_factor: float,
        spike_threshold: float,
        config: StreamingDetectorConfig,
    ) -> bool:
        """Whether the latest point is this (remembered) ramp going on: the trajectory still
        clearly rises (slope z >= `_CONTINUATION_Z` and material; suppressing a repeat needs less
        evidence than raising an alert), and the point is not a spike above its line (a faster
        rise, or a new jump, is a new anomaly; a step is never continued)."""
        ramp = self.ramp(long_run, tail_factor, settling_factor, config, _CONTINUATION_Z)
        if ramp is None:
            return False
        slope, _, intercept = ramp
        return (self.y - intercept - slope * self.tau) * self.scale < spike_threshold * scale

    def escalation(
        self,
        t_s: float,
        x: float,
        season: float,
        scale: float,
        tail_factor: float,
        long_run: float,
        settling_factor: float,
        interval_s: float,
        spike_threshold: float,
        seasonal_model: bool,
        typical_without_season: float,
        config: StreamingDetectorConfig,
    ) -> DetectorAlert:
        """The TREND alert of a spike-opened episode whose points since have proved a ramp, judged
        against the baseline frozen at its onset; it carries the episode's own slope and its
        standard error, so a prediction can project when the ramp will cross a threshold."""
        slope, slope_z, _ = self.line(long_run)
        drift_sigma = slope * tail_factor * config.trend_horizon_intervals
        z_threshold = config.trend_threshold_z * settling_factor
        drift_threshold = config.trend_min_drift_sigma * settling_factor
        slope_per_s = self.direction * slope * self.scale / interval_s
        expected = self.level + season
        evidence_score = score_from_ratio(
            min(slope_z / z_threshold, drift_sigma / drift_threshold), config.score_steepness
        )
        report = PointReport(
            timestamp_s=t_s,
            value=x,
            score=evidence_score,
            evidence_score=evidence_score,
            kind=AnomalyKind.TREND,
            direction=self.direction,
            expected=expected,
            scale=scale,
            residual_z=abs(x - expected) / scale,
            spike_threshold_z=spike_threshold,
            cusum=self.cusum,
            cusum_threshold=config.cusum_threshold * settling_factor,
            trend_z=slope_z,
            trend_threshold_z=z_threshold,
            drift_sigma=drift_sigma,
            drift_threshold_sigma=drift_threshold,
            slope_per_s=slope_per_s,
            seasonal_model=seasonal_model,
            deviation_without_season=x - self.level_no_season,
            typical_without_season=typical_without_season,
        )
        return report.alert(abs(slope_per_s) / slope_z)
