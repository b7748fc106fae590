"""`PredictionBuilder`: from a detector alert on a named provider series to a `Prediction`.

The detector knows shapes (spike, level shift, trend, seasonal deviation); the builder knows what
the series means for a payments provider: which direction is bad, what an outage looks like, what
an on-call engineer should do. It maps, per series role:

- errors (`error_rate`): a jump up is a `failure` (at its first point a lasting shift and a spike
  look the same, and provider errors are worth acting on either way), a ramp up is a `degradation`
  (a `failure` when it will cross the outage threshold within the horizon);
- latency (`latency_p50_ms`, `latency_p95_ms`, `latency_p99_ms`): up is a `degradation`, or a
  `failure` once past the outage threshold; a single-point jump is a `spike`;
- volume (`requests_per_min`): a jump up is a `spike`, a lasting drop is a `failure` (traffic that
  stops reaching a provider usually means something upstream broke), and so is a drop to almost
  nothing at its first point (a collapse: at its first point it looks like a spike, as an error
  jump does, and it is worth acting on either way); a smaller one-point dip is a `pattern_anomaly`;
- any seasonal deviation is a `pattern_anomaly`. Improvements (errors or latency going down) raise
  nothing, and neither do changes smaller than the series' `min_change`.

Windows (how long a prediction waits for the trouble it foresees): 15 minutes for a spike, an
hour for a shift, and for a ramp until it would cross the outage threshold (at most
`DEFAULT_TREND_HORIZON_S`). The crossing is projected at the slope moved `TREND_WINDOW_CONFIDENCE_Z`
standard errors towards zero: a ramp is flagged early, when its slope is least certain and, having
been flagged because it looked steep, more likely over- than under-estimated, and a window that
closed before the ramp arrived would count the outage it foresaw as missed and itself as false.
For the same reason a lasting rise of latency is watched for the trend horizon rather than an
hour: under noisy percentiles a slow ramp's first alert is a level shift whose slope cannot be
seen yet. The action text quotes the slope's own estimate.

Confidence is the alert's anomaly score (0.5 at the alarm threshold, towards 1 with stronger
evidence). It is a prior, not a calibrated probability: the predictor records whether each
prediction came true, and those outcomes are what calibrate it later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from mcp_autonomy.autonomy.detection.base import AnomalyKind, DetectorAlert, is_number, require
from mcp_autonomy.prediction_types import Indicator, Prediction, PredictionType

DEFAULT_SPIKE_WINDOW_S: Final = 15 * 60.0
DEFAULT_SHIFT_WINDOW_S: Final = 60 * 60.0
DEFAULT_TREND_HORIZON_S: Final = 6 * 3600.0  # a ramp is projected at most this far ahead
MIN_TREND_WINDOW_S: Final = 10 * 60.0
TREND_WINDOW_CONFIDENCE_Z: Final = 2.0  # a ramp's window ends at its latest plausible crossing
VOLUME_COLLAPSE_SHARE: Final = 0.1  # volume at or under this share of its baseline: a collapse
VOLUME_MIN_RELATIVE_CHANGE: Final = 0.25  # smaller moves of a provider's traffic are no prediction


class SeriesRole(StrEnum):
    """What a series measures, which decides what its anomalies mean."""

    ERRORS = "errors"
    LATENCY = "latency"
    VOLUME = "volume"
    GENERIC = "generic"


@dataclass(frozen=True, slots=True)
class SeriesProfile:
    """The meaning of one named series.

    `bad_direction` is +1 when up is bad, -1 when down is bad, 0 when both are. `outage_threshold`
    (optional, in the series' unit) is the level at which the provider is as good as down: a
    trend is projected to it to date the expected window. `min_change` ignores alerts whose value
    differs from the baseline by less (0.5 % error rate is not worth waking anyone for), and
    `min_relative_change` those that differ by less than that share of the baseline (a count
    series such as requests per minute is quantised: 14 calls in a minute instead of 16 is far
    outside its noise when the traffic is regular, and still nothing an operator should act on).
    """

    name: str
    role: SeriesRole
    unit: str = ""
    bad_direction: int = 0
    outage_threshold: float | None = None
    min_change: float = 0.0
    min_relative_change: float = 0.0

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "a non-empty series name", self.name)
        require(self.bad_direction in (-1, 0, 1), "bad_direction", "-1, 0 or 1", self.bad_direction)
        if self.outage_threshold is not None:
            require(
                is_number(self.outage_threshold), "outage_threshold", "None or finite", self.outage_threshold
            )
        require(
            is_number(self.min_change) and self.min_change >= 0,
            "min_change",
            "finite and >= 0",
            self.min_change,
        )
        require(
            is_number(self.min_relative_change) and 0 <= self.min_relative_change < 1,
            "min_relative_change",
            "in [0, 1)",
            self.min_relative_change,
        )


DEFAULT_SERIES_PROFILES: Final[dict[str, SeriesProfile]] = {
    p.name: p
    for p in (
        SeriesProfile("error_rate", SeriesRole.ERRORS, "ratio", 1, outage_threshold=0.5, min_change=0.01),
        SeriesProfile(
            "latency_p50_ms", SeriesRole.LATENCY, "ms", 1, outage_threshold=10_000.0, min_change=20.0
        ),
        SeriesProfile(
            "latency_p95_ms", SeriesRole.LATENCY, "ms", 1, outage_threshold=15_000.0, min_change=50.0
        ),
        SeriesProfile(
            "latency_p99_ms", SeriesRole.LATENCY, "ms", 1, outage_threshold=30_000.0, min_change=100.0
        ),
        SeriesProfile(
            "requests_per_min",
            SeriesRole.VOLUME,
            "req/min",
            0,
            min_change=1.0,
            min_relative_change=VOLUME_MIN_RELATIVE_CHANGE,
        ),
    )
}


class PredictionBuilder:
    """Turns `DetectorAlert`s on named series of one provider into `Prediction`s.

    Pure: the same alert always gives the same prediction (ids are derived from provider, series
    and time), so a backtest is reproducible. Unknown series get a generic, two-sided profile.
    """

    def __init__(self, profiles: dict[str, SeriesProfile] | None = None) -> None:
        self._profiles = dict(DEFAULT_SERIES_PROFILES if profiles is None else profiles)

    def profile(self, series: str) -> SeriesProfile:
        """The profile of `series` (a generic two-sided one if it is not known)."""
        found = self._profiles.get(series)
        return found if found is not None else SeriesProfile(series, SeriesRole.GENERIC)

    def build(self, provider: str, series: str, alert: DetectorAlert) -> Prediction | None:
        """The prediction this alert warrants, or None (improvement, or too small to matter)."""
        profile = self.profile(series)
        direction = alert.direction
        if (
            profile.bad_direction
            and direction != profile.bad_direction
            and alert.kind is not AnomalyKind.SEASONAL
        ):
            return None
        smallest = max(profile.min_change, profile.min_relative_change * abs(alert.expected))
        if abs(alert.value - alert.expected) < smallest and alert.kind is not AnomalyKind.TREND:
            return None
        kind = self._type(profile, alert)
        window_end = alert.timestamp_s + self._window_s(profile, alert)
        at_outage = self._past_outage(profile, alert.value)
        severity = self._severity(kind, alert.score, at_outage)
        indicators = [
            Indicator(name=series, value=alert.value, threshold=alert.expected, unit=profile.unit),
            *(
                Indicator(name=f"{series}.{i.name}", value=_finite(i.value), threshold=_finite(i.threshold))
                for i in alert.indicators
            ),
        ]
        if profile.outage_threshold is not None:
            indicators.append(
                Indicator(
                    name=f"{series}.outage_threshold",
                    value=alert.value,
                    threshold=profile.outage_threshold,
                    unit=profile.unit,
                )
            )
        return Prediction(
            id=f"{provider}:{series}:{alert.kind.value}:{round(alert.timestamp_s * 1000)}",
            provider=provider,
            type=kind,
            severity=severity,
            confidence=min(1.0, max(0.0, alert.score)),
            created_at=alert.timestamp_s,
            window_start=alert.timestamp_s,
            window_end=window_end,
            indicators=indicators,
            recommended_action=self._action(provider, profile, alert, kind),
        )

    # --- mapping rules ---

    @staticmethod
    def _type(profile: SeriesProfile, alert: DetectorAlert) -> PredictionType:
        kind = alert.kind
        if kind is AnomalyKind.SEASONAL:
            return PredictionType.PATTERN_ANOMALY
        if kind is AnomalyKind.VOLATILITY:
            # The errors around the baseline grew (a flapping dependency, an overloaded host):
            # a degradation to watch, not an outage yet, whatever the series.
            return PredictionType.DEGRADATION
        role = profile.role
        up = alert.direction > 0
        if role is SeriesRole.VOLUME:
            if up:
                return PredictionType.SPIKE
            collapsed = alert.expected > 0.0 and alert.value <= VOLUME_COLLAPSE_SHARE * alert.expected
            if kind is AnomalyKind.LEVEL_SHIFT or collapsed:
                return PredictionType.FAILURE
            return PredictionType.PATTERN_ANOMALY if kind is AnomalyKind.SPIKE else PredictionType.DEGRADATION
        if role is SeriesRole.ERRORS and kind is not AnomalyKind.TREND:
            return PredictionType.FAILURE
        if kind is AnomalyKind.SPIKE:
            return PredictionType.SPIKE
        if role is SeriesRole.ERRORS:
            eta = _seconds_to_threshold(profile, alert)
            soon = eta is not None and eta <= DEFAULT_TREND_HORIZON_S
            return PredictionType.FAILURE if soon else PredictionType.DEGRADATION
        if role is SeriesRole.LATENCY:
            past = profile.outage_threshold is not None and alert.value >= profile.outage_threshold
            return PredictionType.FAILURE if past else PredictionType.DEGRADATION
        return PredictionType.FAILURE if kind is AnomalyKind.LEVEL_SHIFT else PredictionType.DEGRADATION

    @staticmethod
    def _window_s(profile: SeriesProfile, alert: DetectorAlert) -> float:
        if alert.kind is AnomalyKind.TREND:
            eta = _seconds_to_threshold(profile, alert, TREND_WINDOW_CONFIDENCE_Z)
            if eta is None:
                return DEFAULT_TREND_HORIZON_S
            return min(DEFAULT_TREND_HORIZON_S, max(MIN_TREND_WINDOW_S, eta))
        if alert.kind is AnomalyKind.SPIKE:
            return DEFAULT_SPIKE_WINDOW_S
        if (
            alert.kind is AnomalyKind.LEVEL_SHIFT
            and profile.role is SeriesRole.LATENCY
            and profile.outage_threshold is not None
        ):
            # A lasting rise of latency is often the first visible part of a slow ramp whose
            # slope the noise still hides: watch it as long as a ramp would be projected.
            return DEFAULT_TREND_HORIZON_S
        return DEFAULT_SHIFT_WINDOW_S

    @staticmethod
    def _past_outage(profile: SeriesProfile, value: float) -> bool:
        threshold = profile.outage_threshold
        if threshold is None:
            return False
        return value >= threshold if profile.bad_direction >= 0 else value <= threshold

    @staticmethod
    def _severity(kind: str, score: float, at_outage: bool) -> str:
        if at_outage:
            return "critical"
        levels = ("low", "medium", "high", "critical")
        level = 2 if score >= 0.9 else (1 if score >= 0.7 else 0)
        if kind == "failure":
            level += 1
        return levels[level]

    @staticmethod
    def _action(provider: str, profile: SeriesProfile, alert: DetectorAlert, kind: str) -> str:
        series = profile.name
        seen = f"{series} at {_fmt(alert.value)} against an expected {_fmt(alert.expected)}"
        if kind == "pattern_anomaly":
            return (
                f"{provider}: {seen} for this time of day/week. Check for a scheduled maintenance, a "
                f"marketing push or an upstream outage before treating it as normal."
            )
        if alert.kind is AnomalyKind.VOLATILITY:
            return (
                f"{provider}: {series} swinging more than usual ({seen}). Look for a flapping "
                f"dependency or an overloaded host before it settles into an outage."
            )
        role = profile.role
        if role is SeriesRole.ERRORS:
            if kind == "failure":
                return (
                    f"{provider}: {seen}. Check the provider's status page and the errors by class; "
                    f"if it holds, drain traffic to the fallback route and open an incident with the provider."
                )
            return (
                f"{provider}: errors rising ({seen}). Inspect error classes (auth, rate limits, timeouts) "
                f"and prepare the fallback route before it becomes an outage."
            )
        if role is SeriesRole.LATENCY:
            if kind == "spike":
                return f"{provider}: latency blip ({seen}). No action unless it repeats."
            eta = _seconds_to_threshold(profile, alert)
            when = f" It would reach the outage level in about {eta / 60:.0f} min." if eta is not None else ""
            return (
                f"{provider}: latency degrading ({seen}).{when} Check the provider's status and our "
                f"connection pool/timeouts; shift a share of traffic to the fallback route if it keeps rising."
            )
        if role is SeriesRole.VOLUME:
            if kind == "spike":
                return (
                    f"{provider}: traffic surge ({seen}). Check rate-limit headroom and scale out "
                    f"before provider throttling starts."
                )
            return (
                f"{provider}: traffic falling ({seen}). Verify that routing still sends payments "
                f"to this provider and that clients are not failing before they reach it."
            )
        return f"{provider}: {seen} ({alert.kind.value}). Investigate the series and its recent changes."


def _seconds_to_threshold(
    profile: SeriesProfile, alert: DetectorAlert, confidence_z: float = 0.0
) -> float | None:
    """When the series, continuing at its current slope, reaches the outage threshold.

    With `confidence_z`, the slope is first moved that many standard errors towards zero: the
    latest the threshold is plausibly reached (None if even the direction is then uncertain).
    An early estimate of a ramp's slope tends to be high (it alerted because it looked steep), and
    a window that closes before the ramp arrives would miss the very outage it foresaw.
    """
    threshold = profile.outage_threshold
    slope = alert.slope_per_s
    if threshold is None or slope == 0.0 or not math.isfinite(slope):
        return None
    margin = confidence_z * alert.slope_stderr_per_s
    if margin > 0.0:
        if not math.isfinite(margin) or margin >= abs(slope):
            return None
        slope = math.copysign(abs(slope) - margin, slope)
    eta = (threshold - alert.value) / slope
    return eta if eta >= 0.0 else None


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _fmt(value: float) -> str:
    return f"{value:.4g}"
