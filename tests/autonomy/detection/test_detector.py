"""StreamingDetector and PredictionBuilder: behaviour on generated series families."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections import deque

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_autonomy.autonomy.detection import (
    AnomalyKind,
    Detector,
    DetectorAlert,
    StreamingDetector,
    StreamingDetectorConfig,
    ratio_from_score,
    score_from_ratio,
)
from mcp_autonomy.autonomy.detection.alerting import AlertDecision, OnsetRule
from mcp_autonomy.autonomy.detection.prediction import PredictionBuilder
from mcp_autonomy.autonomy.detection.streaming import MAX_PENDING_ALERTS
from mcp_autonomy.autonomy.predictor import PredictionType
from mcp_autonomy.config import Sensitivity

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MINUTE = 60.0


def run(times: np.ndarray, values: np.ndarray, **config: object) -> tuple[list[float], list[DetectorAlert]]:
    detector = StreamingDetector(StreamingDetectorConfig(**config))  # type: ignore[arg-type]
    scores = detector.score_many(times.tolist(), values.tolist())
    return scores, detector.drain_alerts()


def noise(n: int, seed: int, sigma: float = 2.0, level: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return T0 + MINUTE * np.arange(n), level + rng.normal(0.0, sigma, n)


def test_detector_satisfies_protocol() -> None:
    assert isinstance(StreamingDetector(), Detector)


def test_deterministic_and_update_matches_batch() -> None:
    t, x = noise(3000, seed=1)
    x[2000:] += 12.0
    first, alerts_a = run(t, x)
    second, alerts_b = run(t, x)
    assert first == second
    assert alerts_a == alerts_b
    one_by_one = StreamingDetector()
    results = [one_by_one.update(a, b) for a, b in zip(t.tolist(), x.tolist(), strict=True)]
    assert [r.anomaly_score for r in results] == first
    assert [r.alert for r in results if r.alert is not None] == alerts_a


def _state_size(state: object, seen: set[int] | None = None) -> int:
    """Bytes held by an object and everything reachable through its slots and containers
    (the detector holds its state in one object per stage)."""
    total = sys.getsizeof(state)
    if isinstance(state, int | float | bool | str) or state is None:
        return total  # counted per reference: a shared 0.0 is as big as a learnt value
    seen = set() if seen is None else seen
    if id(state) in seen:
        return 0
    seen.add(id(state))
    if isinstance(state, list | tuple | deque):
        return total + sum(_state_size(item, seen) for item in state)
    for cls in type(state).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if hasattr(state, name):
                total += _state_size(getattr(state, name), seen)
    return total


def test_memory_is_bounded() -> None:
    detector = StreamingDetector()
    t, x = noise(40_000, seed=2)
    t[20_000:] += 86_400.0 * 3
    ts, xs = t.tolist(), x.tolist()
    detector.score_many(ts[:5_000], xs[:5_000])
    detector.drain_alerts()
    early = _state_size(detector)
    detector.score_many(ts[5_000:], xs[5_000:])
    detector.drain_alerts()
    assert _state_size(detector) <= early  # 35k more points, days later: nothing grew


def _eager() -> StreamingDetectorConfig:
    """A detector that alerts on ordinary noise every few points (no hold, reports forgotten at once)."""
    return StreamingDetectorConfig(
        exit_hold_intervals=0.0,
        reported_half_life_intervals=0.01,
        spike_threshold_z=1.0,
        tail_exponent=0.0,
        enter_score=0.3,
        exit_score=0.29,
    )


def test_undrained_alerts_are_bounded_and_the_oldest_dropped() -> None:
    t, x = noise(8_000, seed=31)
    drained = StreamingDetector(_eager())
    every_alert: list[DetectorAlert] = []
    for start in range(0, 8_000, 500):
        drained.score_many(t[start : start + 500].tolist(), x[start : start + 500].tolist())
        every_alert += drained.drain_alerts()
    assert len(every_alert) > MAX_PENDING_ALERTS
    undrained = StreamingDetector(_eager())
    undrained.score_many(t.tolist(), x.tolist())
    assert undrained.drain_alerts() == every_alert[-MAX_PENDING_ALERTS:]


def test_update_returns_its_alert_even_when_undrained_alerts_are_at_the_bound() -> None:
    t, x = noise(8_000, seed=31)
    detector = StreamingDetector(_eager())
    detector.score_many(t[:-200].tolist(), x[:-200].tolist())
    results = [detector.update(a, b) for a, b in zip(t[-200:].tolist(), x[-200:].tolist(), strict=True)]
    raised = [r.alert for r in results if r.alert is not None]
    assert raised and all(alert.timestamp_s >= t[-200] for alert in raised)
    pending = detector.drain_alerts()  # what score_many raised, not what update returned
    assert pending and all(alert.timestamp_s < t[-200] for alert in pending)


@dataclasses.dataclass
class _FixedInterval:
    interval_s: float


def _ratios_to_decisions(rule: OnsetRule, ratios: list[float]) -> tuple[list[AlertDecision], list[float]]:
    decisions, onsets = [], []
    for i, ratio in enumerate(ratios):
        onsets.append(rule.step(T0 + MINUTE * i, ratio))
        decisions.append(rule.decision)
    return decisions, onsets


def test_onset_rule_scores_the_news_once_and_clears_after_the_hold() -> None:
    """Evidence ratios in, onset ratios out: the first point at >= 1 raises with its full evidence;
    while the alert lasts the points score what exceeds the reported evidence (absorbed as it
    grows), capped at the exit ratio, and never raise; 2 calm intervals clear it."""
    config = StreamingDetectorConfig(enter_score=0.5, exit_score=0.25, exit_hold_intervals=2.0)
    rule = OnsetRule(config, _FixedInterval(60.0))
    exit_ratio = ratio_from_score(0.25)
    ratios = [0.2, 1.5, 1.6, 1.4, 2.0, 3.2, 0.3, 0.3, 0.3, 0.2, 0.9, 1.1]
    decisions, onsets = _ratios_to_decisions(rule, ratios)
    raise_, clear, none = AlertDecision.RAISE, AlertDecision.CLEAR, AlertDecision.NONE
    assert decisions == [none, raise_, none, none, none, none, none, none, clear, none, none, none]
    assert onsets[:2] == [0.2, 1.5]
    assert onsets[2] == pytest.approx(0.1)  # 1.6 against 1.5 reported
    assert onsets[3] == 0.0
    assert onsets[4] == pytest.approx(0.4)  # 2.0 against 1.6 (absorbed while in alert)
    assert onsets[5] == exit_ratio  # 3.2 against 2.0: worse, but the episode was reported
    assert not rule.in_alert
    # Cleared, 3.2 still reported (decaying): 1.1 is no news two minutes later.
    assert onsets[-1] < 1.0


def test_onset_rule_forgets_a_report_by_its_half_life_once_the_alert_ended() -> None:
    config = StreamingDetectorConfig(exit_hold_intervals=0.0, reported_half_life_intervals=10.0)
    rule = OnsetRule(config, _FixedInterval(60.0))
    assert rule.step(T0, 2.0) == 2.0 and rule.decision is AlertDecision.RAISE
    rule.step(T0 + MINUTE, 0.0)
    rule.step(T0 + 2 * MINUTE, 0.0)  # calm twice: cleared
    assert not rule.in_alert
    # 10 intervals later half of 2.0 is still reported: the same evidence is not news yet...
    assert rule.step(T0 + 12 * MINUTE, 1.9) == pytest.approx(0.9)
    assert rule.decision is AlertDecision.NONE
    # ... 40 intervals later (4 half-lives) it is.
    assert rule.step(T0 + 52 * MINUTE, 2.0) == pytest.approx(2.0 - 1.0 * 0.5**4, rel=1e-6)
    assert rule.decision is AlertDecision.RAISE


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=86_400.0 * 3),
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True),
                st.floats(min_value=-1e6, max_value=1e6),
            ),
        ),
        min_size=1,
        max_size=300,
    )
)
def test_scores_are_always_in_unit_interval(points: list[tuple[float, float]]) -> None:
    detector = StreamingDetector()
    now = T0
    for gap, value in points:
        now += gap
        result = detector.update(now, value)
        assert 0.0 <= result.anomaly_score <= 1.0
        assert not math.isnan(result.anomaly_score)
        if not math.isfinite(value):
            assert result.anomaly_score == 0.0


@pytest.mark.parametrize("jitter", [0.0, 1e-9])
def test_no_alarm_on_a_flat_line(jitter: float) -> None:
    t = T0 + MINUTE * np.arange(5000)
    x = 42.0 + jitter * np.random.default_rng(3).standard_normal(5000)
    scores, alerts = run(t, x)
    assert alerts == []
    assert max(scores) < 0.5


@pytest.mark.parametrize("seed", range(4))
def test_no_alarm_on_noise_only(seed: int) -> None:
    t, x = noise(8000, seed=10 + seed)
    _, alerts = run(t, x)
    assert alerts == []


def test_no_alarm_on_quantised_noise() -> None:
    rng = np.random.default_rng(5)
    t = T0 + MINUTE * np.arange(6000)
    x = np.round(100.0 + rng.normal(0.0, 0.3, 6000))  # mostly 100, sometimes 99 or 101
    _, alerts = run(t, x)
    assert alerts == []


def test_no_alarm_across_a_long_gap_and_irregular_timestamps() -> None:
    rng = np.random.default_rng(6)
    n = 6000
    t = T0 + MINUTE * (np.arange(n) + rng.uniform(-0.3, 0.3, n))
    t[3000:] += 86_400.0  # a day of silence
    x = 100.0 + rng.normal(0.0, 2.0, n)
    scores, alerts = run(t, x)
    assert alerts == []
    assert max(scores[3000:3100]) < 0.5


def test_nan_is_skipped_without_changing_state() -> None:
    t, x = noise(1000, seed=7)
    clean, _ = run(t, x)
    detector = StreamingDetector()
    with_nan = []
    for i, (a, b) in enumerate(zip(t.tolist(), x.tolist(), strict=True)):
        if i % 50 == 0:
            assert detector.update(a, math.nan).anomaly_score == 0.0
        with_nan.append(detector.update(a, b).anomaly_score)
    assert with_nan == clean


def test_spike_alarms_on_its_point() -> None:
    t, x = noise(3000, seed=8)
    x[2000] += 30.0
    scores, alerts = run(t, x)
    assert scores[2000] > 0.9
    assert [a.timestamp_s for a in alerts] == [t[2000]]
    assert alerts[0].kind is AnomalyKind.SPIKE
    assert alerts[0].direction == 1


def test_level_shift_alarms_once_then_becomes_normal() -> None:
    t, x = noise(5000, seed=9)
    x[2500:] += 8.0  # 4 sigma, lasting
    scores, alerts = run(t, x)
    assert len(alerts) == 1
    assert t[2500] <= alerts[0].timestamp_s <= t[2510]
    assert alerts[0].direction == 1
    assert max(scores[2600:]) < 0.5  # re-baselined: the new level is normal


def test_slow_ramp_is_flagged_before_the_outage_threshold() -> None:
    t, x = noise(6000, seed=11, sigma=5.0)  # latency p95 around 100 ms
    start, outage_level = 3000, 300.0
    x[start:] += 0.2 * np.arange(6000 - start)  # +0.2 ms a minute
    outage_index = int(np.argmax(x > outage_level))
    _, alerts = run(t, x)
    assert alerts, "the ramp was never flagged"
    first = alerts[0]
    assert t[start] <= first.timestamp_s < t[outage_index]
    lead_time_s = t[outage_index] - first.timestamp_s
    assert lead_time_s > 12 * 3600  # flagged within the first ~2 hours of a 16-hour ramp
    assert first.slope_per_s > 0


P95_BASE_MS = 400.0
P95_TIMEOUT_MS = 15_000.0  # M-Pesa's call timeout: the breaker opens around here


def _latency_ramp(
    step_s: float, ramp_s: float, seed: int, baseline_h: float = 6.0, hold_h: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """p95 latency as the live loop sees it: `baseline_h` hours around 400 ms with +-10 %
    multiplicative noise, a linear ramp to the 15 s timeout over `ramp_s`, then `hold_h` hours there.
    Returns times, observed values, the true level under the noise, and the ramp's first index."""
    n_base = int(baseline_h * 3600 / step_s)
    n_ramp = int(ramp_s / step_s)
    level = np.concatenate(
        [
            np.full(n_base, P95_BASE_MS),
            np.linspace(P95_BASE_MS, P95_TIMEOUT_MS, n_ramp),
            np.full(int(hold_h * 3600 / step_s), P95_TIMEOUT_MS),
        ]
    )
    observed = level * np.random.default_rng(seed).uniform(0.9, 1.1, len(level))
    return T0 + step_s * np.arange(len(level)), observed, level, n_base


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("ramp_s", [1800.0, 7200.0, 21_600.0])
@pytest.mark.parametrize("step_s", [60.0, 15.0])
def test_latency_ramp_is_flagged_as_lasting_early_and_once(step_s: float, ramp_s: float, seed: int) -> None:
    t, x, level, start = _latency_ramp(step_s, ramp_s, seed)
    _, alerts = run(t, x)
    assert alerts and all(a.timestamp_s >= t[start] for a in alerts), "nothing before the ramp"
    lasting = [a for a in alerts if a.kind in (AnomalyKind.TREND, AnomalyKind.LEVEL_SHIFT)]
    assert len(lasting) == 1, [(a.kind, a.timestamp_s) for a in alerts]
    alert = lasting[0]
    # At most one alert comes first: a spike on the ramp's first steps, when one step is itself
    # an outlier (a single point cannot tell a spike from the start of a ramp), or the errors
    # growing as the ramp starts pulling away (a noise burst, until the points make it a line).
    # Nothing comes after.
    before = alerts[: alerts.index(alert)]
    assert alerts[-1] is alert
    assert len(before) <= 1 and all(a.kind in (AnomalyKind.SPIKE, AnomalyKind.VOLATILITY) for a in before)
    at = round((alert.timestamp_s - T0) / step_s)
    assert alert.direction == 1
    assert level[at] < 3000.0, f"flagged as lasting only at {level[at]:.0f} ms"
    if ramp_s >= 21_600.0:
        assert level[at] < 2 * P95_BASE_MS  # the slow ramp: before the latency has doubled
    prediction = PredictionBuilder().build("mpesa", "latency_p95_ms", alert)
    assert prediction is not None and prediction.type is PredictionType.DEGRADATION
    # ... and it is still open when calls start to time out (p95 x 1.1 past the timeout).
    timeouts_at = t[int(np.argmax(level * 1.1 >= P95_TIMEOUT_MS))]
    assert prediction.created_at < timeouts_at <= prediction.window_end


@pytest.mark.parametrize("step_s", [60.0, 15.0])
def test_no_alarm_on_steady_noisy_latency(step_s: float) -> None:
    t, x, _, _ = _latency_ramp(step_s, 0.0, seed=21, baseline_h=12.0, hold_h=0.0)
    _, alerts = run(t, x)
    assert alerts == []


def test_a_big_step_and_a_short_burst_keep_their_single_alert() -> None:
    t, x = noise(5000, seed=22)
    x[2500:] += 40.0  # 20 sigma, lasting: a step, not a ramp, so no second (trend) alert
    x[4000:4003] += 40.0  # a three-point burst on top of the new level
    _, alerts = run(t, x)
    assert [(a.timestamp_s, a.kind) for a in alerts] == [
        (t[2500], AnomalyKind.SPIKE),
        (t[4000], AnomalyKind.SPIKE),
    ]


def test_a_continuing_ramp_is_not_alerted_again() -> None:
    t, x, _, start = _latency_ramp(15.0, 21_600.0, seed=23, hold_h=0.0)
    detector = StreamingDetector()
    detector.score_many(t.tolist(), x.tolist())
    alerts = detector.drain_alerts()
    assert len(alerts) == 1 and alerts[0].timestamp_s < t[start + 60]


def _daily(n_days: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    step = 600.0  # ten minutes
    n = int(n_days * 86_400 / step)
    t = T0 + step * np.arange(n)
    hour = (t % 86_400) / 3600.0
    pattern = 50.0 * np.exp(-(((hour - 13.0) / 3.0) ** 2))
    x = 100.0 + pattern + np.random.default_rng(seed).normal(0.0, 2.0, n)
    return t, x, pattern


def test_daily_pattern_is_learnt_and_deviations_from_it_alarm() -> None:
    t, x, pattern = _daily(21, seed=12)
    per_day = 144
    missing_peak = slice(18 * per_day + 72, 18 * per_day + 84)  # 12:00-14:00 on day 18
    x[missing_peak] -= pattern[missing_peak]
    detector = StreamingDetector()
    scores = detector.score_many(t.tolist(), x.tolist())
    alerts = detector.drain_alerts()
    assert detector.seasonal_model in ("daily", "weekly")
    after_two_weeks = [a for a in alerts if a.timestamp_s >= t[14 * per_day]]
    assert len(after_two_weeks) == 1
    alert = after_two_weeks[0]
    assert t[missing_peak.start] <= alert.timestamp_s <= t[missing_peak.stop]
    assert alert.direction == -1
    assert alert.kind is AnomalyKind.SEASONAL
    assert max(scores[14 * per_day : 18 * per_day]) < 0.5


def test_sensitivity_scales_thresholds() -> None:
    low = StreamingDetectorConfig.for_sensitivity(Sensitivity.LOW)
    high = StreamingDetectorConfig.for_sensitivity("high")
    medium = StreamingDetectorConfig.for_sensitivity(Sensitivity.MEDIUM)
    assert medium == StreamingDetectorConfig()
    assert low.spike_threshold_z > medium.spike_threshold_z > high.spike_threshold_z
    t, x = noise(3000, seed=13)
    x[2000] += 11.0  # about 5.5 sigma: at the medium threshold
    s_low, _ = run(t, x, **{"spike_threshold_z": low.spike_threshold_z})
    s_high, _ = run(t, x, **{"spike_threshold_z": high.spike_threshold_z})
    assert s_high[2000] > s_low[2000]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("warmup_points", 2, "warmup_points must be an integer in [5, 10000]"),
        ("spike_threshold_z", 0.0, "spike_threshold_z must be a finite number > 0"),
        ("exit_score", 0.9, "exit_score must be in [0, enter_score (0.5)]"),
        ("sample_interval_s", -1.0, "sample_interval_s must be None (learnt)"),
    ],
)
def test_config_validation_names_field_and_range(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        StreamingDetectorConfig(**{field: value})  # type: ignore[arg-type]


@given(st.floats(min_value=0.0, max_value=50.0))
def test_calibration_is_monotone_and_invertible(ratio: float) -> None:
    score = score_from_ratio(ratio)
    assert 0.0 <= score <= 1.0
    assert score_from_ratio(ratio + 0.01) >= score
    if 0.0 < score < 1.0 - 1e-9:
        assert ratio_from_score(score) == pytest.approx(ratio, rel=1e-6)
    assert score_from_ratio(1.0) == 0.5


def _alert(
    kind: AnomalyKind, direction: int, value: float, expected: float, slope: float = 0.0
) -> DetectorAlert:
    return DetectorAlert(
        timestamp_s=T0,
        kind=kind,
        direction=direction,
        score=0.8,
        value=value,
        expected=expected,
        scale=1.0,
        slope_per_s=slope,
        indicators=(),
    )


def test_prediction_types_follow_series_meaning() -> None:
    builder = PredictionBuilder()
    failure = builder.build("mpesa", "error_rate", _alert(AnomalyKind.LEVEL_SHIFT, 1, 0.2, 0.01))
    assert failure is not None and failure.type is PredictionType.FAILURE
    ramp = builder.build("mpesa", "latency_p95_ms", _alert(AnomalyKind.TREND, 1, 900.0, 400.0, slope=0.5))
    assert ramp is not None and ramp.type is PredictionType.DEGRADATION
    assert ramp.window_end > ramp.window_start
    assert "outage level" in ramp.recommended_action
    jump = builder.build("mpesa", "requests_per_min", _alert(AnomalyKind.SPIKE, 1, 900.0, 300.0))
    assert jump is not None and jump.type is PredictionType.SPIKE
    pattern = builder.build("mpesa", "requests_per_min", _alert(AnomalyKind.SEASONAL, -1, 10.0, 300.0))
    assert pattern is not None and pattern.type is PredictionType.PATTERN_ANOMALY
    assert builder.build("mpesa", "error_rate", _alert(AnomalyKind.LEVEL_SHIFT, -1, 0.0, 0.2)) is None
    assert builder.build("mpesa", "error_rate", _alert(AnomalyKind.SPIKE, 1, 0.012, 0.01)) is None
    swinging = builder.build("mpesa", "error_rate", _alert(AnomalyKind.VOLATILITY, 1, 0.2, 0.05))
    assert swinging is not None and swinging.type is PredictionType.DEGRADATION
    assert "swinging more than usual" in swinging.recommended_action
    # Errors swinging less than usual is no trouble.
    assert builder.build("mpesa", "error_rate", _alert(AnomalyKind.VOLATILITY, -1, 0.2, 0.05)) is None
    for prediction in (failure, ramp, jump, pattern, swinging):
        assert 0.0 <= prediction.confidence <= 1.0
        assert prediction.indicators and prediction.recommended_action


def test_trend_window_runs_to_the_latest_plausible_crossing() -> None:
    builder = PredictionBuilder()
    exact = _alert(AnomalyKind.TREND, 1, 900.0, 400.0, slope=1.5)  # ms per second
    uncertain = dataclasses.replace(exact, slope_stderr_per_s=0.25)
    narrow = builder.build("mpesa", "latency_p95_ms", exact)
    wide = builder.build("mpesa", "latency_p95_ms", uncertain)
    assert narrow is not None and wide is not None
    assert narrow.window_end - narrow.window_start == pytest.approx((15_000.0 - 900.0) / 1.5)
    assert wide.window_end - wide.window_start == pytest.approx((15_000.0 - 900.0) / 1.0)  # 2 SE slower
    assert "in about 157 min" in wide.recommended_action  # the action quotes the estimate itself
    unknown = dataclasses.replace(exact, slope_stderr_per_s=1.0)  # not even the direction is sure
    wider = builder.build("mpesa", "latency_p95_ms", unknown)
    assert wider is not None and wider.window_end - wider.window_start == 6 * 3600.0


def test_a_lasting_latency_rise_is_watched_for_the_trend_horizon() -> None:
    builder = PredictionBuilder()
    shift = builder.build("mpesa", "latency_p95_ms", _alert(AnomalyKind.LEVEL_SHIFT, 1, 900.0, 400.0))
    assert shift is not None and shift.type is PredictionType.DEGRADATION
    assert shift.window_end - shift.window_start == 6 * 3600.0
    errors = builder.build("mpesa", "error_rate", _alert(AnomalyKind.LEVEL_SHIFT, 1, 0.2, 0.01))
    assert errors is not None and errors.window_end - errors.window_start == 3600.0


# --- the onset score: one alert per episode, the score and the alerts agree ---


def _episodes_series() -> tuple[np.ndarray, np.ndarray]:
    """Noise with a lasting shift, a spike, a noise burst and a ramp, far enough apart."""
    t, x = noise(9_000, seed=41)
    x[2_000:] += 16.0  # 8 sigma, lasting
    x[4_000] += 30.0
    x[5_500:5_700] += np.random.default_rng(42).normal(0.0, 8.0, 200)  # the noise quadruples
    x[7_000:] += np.linspace(0.0, 0.05 * 2_000, 2_000)  # 0.05 per minute
    return t, x


def test_an_alert_is_raised_exactly_where_the_score_reaches_the_enter_score() -> None:
    t, x = _episodes_series()
    scores, alerts = run(t, x)
    crossing = {float(t[i]) for i, score in enumerate(scores) if score >= 0.5}
    assert crossing == {alert.timestamp_s for alert in alerts}
    assert all(alert.score >= 0.5 for alert in alerts)
    # One alert per episode, at its start (a burst's first sign may be one big point in it).
    kinds = [(round((a.timestamp_s - T0) / MINUTE), a.kind) for a in alerts]
    assert len(kinds) == 4, kinds
    (shift_at, shift), (spike_at, spike), (burst_at, burst), (ramp_at, ramp) = kinds
    assert shift_at == 2_000 and shift is AnomalyKind.SPIKE  # one point cannot tell it is lasting
    assert spike_at == 4_000 and spike is AnomalyKind.SPIKE
    assert 5_500 <= burst_at < 5_530 and burst in (AnomalyKind.SPIKE, AnomalyKind.VOLATILITY)
    assert 7_000 < ramp_at < 7_200 and ramp is AnomalyKind.TREND


def test_the_points_of_a_reported_episode_score_low_while_their_evidence_stays_high() -> None:
    t, x = noise(4_000, seed=43)
    x[2_000:] += 16.0
    detector = StreamingDetector()
    detector.score_many(t[:2_000].tolist(), x[:2_000].tolist())
    results = [
        detector.update(a, b) for a, b in zip(t[2_000:2_010].tolist(), x[2_000:2_010].tolist(), strict=True)
    ]
    assert results[0].alert is not None and results[0].anomaly_score >= 0.5
    assert all(r.alert is None and r.anomaly_score < 0.5 for r in results[1:])
    assert sum(r.evidence_score >= 0.5 for r in results[1:]) >= 3  # still anomalous, already said


def test_a_gauge_that_rarely_flickers_by_one_step_is_quiet_after_its_first_step() -> None:
    """The first step a flat gauge ever takes is news; after that the step is its resolution and a
    one-step flicker is no spike, while a ten-step shift still is."""
    rng = np.random.default_rng(44)
    t = T0 + MINUTE * np.arange(6_000)
    x = np.full(6_000, 50.0)
    flickers = rng.random(6_000) < 0.003
    x[flickers] += rng.choice([-0.5, 0.5], int(flickers.sum()))
    first_flicker = int(np.argmax(flickers[30:])) + 30
    _, alerts = run(t, x)
    assert [a.timestamp_s for a in alerts] == [t[first_flicker]]
    x[5_000:] += 5.0
    _, alerts = run(t, x)
    assert [a.timestamp_s for a in alerts] == [t[first_flicker], t[5_000]]


def test_a_noise_burst_is_a_volatility_alert_and_steady_noise_is_not() -> None:
    t, x = noise(5_000, seed=45)
    _, alerts = run(t, x)
    assert alerts == []
    x[4_000:4_200] = 100.0 + np.random.default_rng(46).normal(0.0, 6.0, 200)  # three times the noise
    _, alerts = run(t, x)
    assert alerts and alerts[0].kind is AnomalyKind.VOLATILITY and alerts[0].direction == 1
    assert t[4_000] <= alerts[0].timestamp_s <= t[4_030]
    noise_size = {i.name: i for i in alerts[0].indicators}["noise_size_spreads"]
    assert noise_size.value >= noise_size.threshold
