"""Scaling policies: the reactive rules, the predictive forecast, guards, bounds and determinism."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_autonomy.autonomy.scaling.policy import (
    DEFAULT_MAX_REPLICAS,
    DEFAULT_MAX_SAFETY_QUANTILE,
    DEFAULT_MIN_REPLICAS,
    DEFAULT_TARGET_TPM_PER_INSTANCE,
    ORIGINAL_MODULE_PRIOR_SCHEDULE,
    ForecastConfig,
    LoadForecaster,
    PredictiveConfig,
    PredictivePolicy,
    PriorScheduleEntry,
    ReactiveConfig,
    ReactivePolicy,
    ScaleGuards,
    ScalingDecision,
    ScalingPolicy,
    ScalingRule,
)
from mcp_autonomy.config import Settings

MONDAY_S = 1_767_571_200.0  # 2026-01-05 00:00 UTC, a Monday
HOUR_S = 3600.0
DAY_S = 86_400.0
TARGET = 100.0

LoadAt = Callable[[float], float]


def reactive(**overrides: object) -> ReactivePolicy:
    config: dict[str, object] = {"target_tpm_per_instance": TARGET, "min_replicas": 2, "max_replicas": 60}
    config.update(overrides)
    return ReactivePolicy(ReactiveConfig(**config))  # type: ignore[arg-type]


def predictive(*, cost_budget: float | None = None, **overrides: object) -> PredictivePolicy:
    rcfg = ReactiveConfig(target_tpm_per_instance=TARGET, min_replicas=2, max_replicas=60)
    return PredictivePolicy(PredictiveConfig(reactive=rcfg, cost_budget=cost_budget, **overrides))  # type: ignore[arg-type]


def square_day(seconds_of_day: float) -> float:
    """500 tpm, but 3000 from 08:00 to 10:00 and from 10:08 to 12:00 (an 8-minute dip at 10:00)."""
    hour = seconds_of_day / HOUR_S
    if 8.0 <= hour < 10.0 or 10.0 + 8 / 60 <= hour < 12.0:
        return 3000.0
    return 500.0


def drive(
    policy: ScalingPolicy,
    load_at: LoadAt,
    start_s: float,
    end_s: float,
    step_s: float = 60.0,
    current: int = 5,
    guards_at: Callable[[float], ScaleGuards] | None = None,
) -> list[tuple[float, float, ScalingDecision]]:
    """Call the policy every step, applying each decision at once (pods ready at once)."""
    decisions = []
    now = start_s
    while now < end_s:
        load = load_at(now)
        guards = guards_at(now) if guards_at is not None else ScaleGuards()
        decision = policy.recommend(now, load, current, current, guards)
        decisions.append((now, load, decision))
        current = decision.desired_replicas
        now += step_s
    return decisions


# -- configuration ------------------------------------------------------------------------------


def test_defaults_come_from_the_settings() -> None:
    fields = Settings.model_fields
    assert fields["min_instances"].default == DEFAULT_MIN_REPLICAS
    assert fields["max_instances"].default == DEFAULT_MAX_REPLICAS
    assert fields["target_tpm_per_instance"].default == DEFAULT_TARGET_TPM_PER_INSTANCE
    reactive_config = ReactiveConfig()
    assert (reactive_config.tolerance, reactive_config.scale_down_stabilization_s) == (0.1, 300.0)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: ReactiveConfig(tolerance=1.5), r"ReactiveConfig\.tolerance must be in \[0, 1\), got 1\.5"),
        (
            lambda: ReactiveConfig(min_replicas=5, max_replicas=3),
            r"ReactiveConfig\.min_replicas must be <= max",
        ),
        (
            lambda: ReactiveConfig(target_tpm_per_instance=0),
            r"ReactiveConfig\.target_tpm_per_instance must be in",
        ),
        (lambda: ReactiveConfig(scale_up_max_pods=0), r"ReactiveConfig\.scale_up_max_pods must be None or"),
        (
            lambda: ReactiveConfig(scale_down_cooldown_s=-1),
            r"ReactiveConfig\.scale_down_cooldown_s must be a finite",
        ),
        (
            lambda: ForecastConfig(safety_quantile=0.3),
            r"ForecastConfig\.safety_quantile must be in \[0\.5, 1\)",
        ),
        (lambda: ForecastConfig(daily_slot_s=7), r"ForecastConfig\.daily_slot_s must be a divisor of 86400"),
        (
            lambda: ForecastConfig(min_residuals=0),
            r"ForecastConfig\.min_residuals must be an integer in \[1, ",
        ),
        (
            lambda: PredictiveConfig(scale_down_hold_s=10),
            r"PredictiveConfig\.scale_down_hold_s must be in \[startup_s",
        ),
        (lambda: PredictiveConfig(cost_budget=0.1), r"PredictiveConfig\.cost_budget must be None \(fixed"),
        (
            lambda: PriorScheduleEntry(7, "08:00", 1.5),
            r"PriorScheduleEntry\.weekday must be an integer in \[0, 6\]",
        ),
        (lambda: PriorScheduleEntry(0, "24:00", 1.5), r"PriorScheduleEntry\.time_of_day must be HH:MM"),
        (lambda: PriorScheduleEntry(0, "08:00", 0), r"PriorScheduleEntry\.load_factor must be in \(0, 100\]"),
    ],
)
def test_invalid_config_names_the_field_and_the_range(factory: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


def test_the_original_schedule_is_a_prior_with_monday_first_weekdays() -> None:
    by_description = {(e.weekday, e.time_of_day): e for e in ORIGINAL_MODULE_PRIOR_SCHEDULE}
    assert by_description[(0, "08:00")].load_factor == 1.5  # JavaScript day 1 = Monday
    assert by_description[(4, "18:00")].description == "Friday night social payments"
    assert by_description[(6, "00:00")].load_factor == 0.3  # JavaScript day 0 = Sunday
    assert len(ORIGINAL_MODULE_PRIOR_SCHEDULE) == 23
    assert ForecastConfig().prior_schedule == ()  # priors are opt-in


# -- reactive ------------------------------------------------------------------------------------


def test_reactive_holds_inside_the_tolerance_and_scales_up_at_once() -> None:
    policy = reactive()
    assert isinstance(policy, ScalingPolicy)
    decision = policy.recommend(MONDAY_S, 1050.0, 10, 10)
    assert (decision.desired_replicas, decision.rule) == (10, ScalingRule.WITHIN_TOLERANCE)
    decision = policy.recommend(MONDAY_S + 15, 1200.0, 10, 10)
    assert (decision.desired_replicas, decision.rule) == (12, ScalingRule.REACTIVE_UP)
    assert "load 1200.0 tpm on 10/10 ready" in decision.reason
    assert decision.inputs["ratio"] == pytest.approx(1.2)


def test_reactive_scale_down_waits_for_the_stabilisation_window() -> None:
    policy = reactive()
    policy.recommend(MONDAY_S, 2000.0, 20, 20)
    for offset in range(15, 300, 15):
        decision = policy.recommend(MONDAY_S + offset, 400.0, 20, 20)
        assert (decision.desired_replicas, decision.rule) == (20, ScalingRule.STABILIZED)
    decision = policy.recommend(MONDAY_S + 300, 400.0, 20, 20)
    assert (decision.desired_replicas, decision.rule) == (4, ScalingRule.REACTIVE_DOWN)


def test_reactive_step_limits_and_cooldowns() -> None:
    policy = reactive(
        scale_up_max_pods=2, scale_up_max_percent=None, scale_up_period_s=60.0, scale_up_cooldown_s=30.0
    )
    decision = policy.recommend(MONDAY_S, 2000.0, 4, 4)
    assert (decision.desired_replicas, decision.rule) == (6, ScalingRule.RATE_LIMITED)
    decision = policy.recommend(MONDAY_S + 15, 2000.0, 6, 6)
    assert decision.rule is ScalingRule.COOLDOWN
    decision = policy.recommend(MONDAY_S + 45, 2000.0, 6, 6)
    assert (decision.desired_replicas, decision.rule) == (
        6,
        ScalingRule.RATE_LIMITED,
    )  # 2 already this minute
    decision = policy.recommend(MONDAY_S + 60, 2000.0, 6, 6)
    assert decision.desired_replicas == 8

    down = reactive(
        scale_down_stabilization_s=0.0,
        scale_down_cooldown_s=120.0,
        scale_down_max_pods=3,
        scale_down_max_percent=None,
    )
    down.recommend(MONDAY_S, 3000.0, 20, 20)  # a scale-up to 30 starts the quiet time
    assert down.recommend(MONDAY_S + 60, 500.0, 30, 30).rule is ScalingRule.COOLDOWN
    decision = down.recommend(MONDAY_S + 120, 500.0, 30, 30)
    assert (decision.desired_replicas, decision.rule) == (27, ScalingRule.RATE_LIMITED)


def test_reactive_guards_block_scale_down_only() -> None:
    policy = reactive(scale_down_stabilization_s=0.0)
    guards = ScaleGuards(incident_open=True)
    decision = policy.recommend(MONDAY_S, 300.0, 10, 10, guards)
    assert (decision.desired_replicas, decision.rule) == (10, ScalingRule.GUARD)
    assert "incident open" in decision.reason
    decision = policy.recommend(MONDAY_S + 15, 3000.0, 10, 10, ScaleGuards(maintenance_window=True))
    assert decision.desired_replicas == 20  # scale-ups are never blocked (rate limit: 100 %)


def test_reactive_bounds_and_input_checks() -> None:
    policy = reactive()
    assert policy.recommend(MONDAY_S, 0.0, 1, 1).desired_replicas == 2
    assert policy.recommend(MONDAY_S + 15, 100_000.0, 60, 60).desired_replicas == 60
    decision = policy.recommend(MONDAY_S + 30, 100.0, 70, 70)
    assert (decision.desired_replicas, decision.rule) == (60, ScalingRule.BOUNDS)
    with pytest.raises(ValueError, match="now_s must not go backwards"):
        policy.recommend(MONDAY_S, 100.0, 10, 10)
    with pytest.raises(ValueError, match=r"recommend\.load_tpm must be a finite number >= 0"):
        policy.recommend(MONDAY_S + 60, -1.0, 10, 10)
    with pytest.raises(ValueError, match=r"recommend\.current_replicas must be an integer"):
        policy.recommend(MONDAY_S + 60, 1.0, 10.5, 10)  # type: ignore[arg-type]


# -- predictive -----------------------------------------------------------------------------------


def test_predictive_is_reactive_while_warming_up() -> None:
    policy = predictive()
    decision = policy.recommend(MONDAY_S, 800.0, 5, 5)
    assert (decision.desired_replicas, decision.rule) == (8, ScalingRule.REACTIVE_UP)
    assert "warming up" in decision.reason
    assert "model" not in decision.inputs


def test_predictive_learns_a_daily_peak_and_is_ready_before_it() -> None:
    policy = predictive()
    load_at: LoadAt = lambda now: square_day(now % DAY_S)  # noqa: E731
    decisions = drive(policy, load_at, MONDAY_S, MONDAY_S + 2 * DAY_S + 7.5 * HOUR_S)
    assert decisions[-1][2].inputs["model"] in {"daily", "daily_fine"}
    # Day 3, on the 15 s loop: 24 pods (3000 tpm at 125 tpm of capacity each) asked for by 07:59,
    # one start-up before the step.
    day3 = MONDAY_S + 2 * DAY_S
    tail = drive(
        policy,
        load_at,
        day3 + 7.5 * HOUR_S,
        day3 + 8 * HOUR_S,
        step_s=15.0,
        current=decisions[-1][2].desired_replicas,
    )
    by_time = {now: d for now, _, d in tail}
    assert by_time[day3 + 7.5 * HOUR_S].desired_replicas == 4  # no early spending half an hour ahead
    at_0759 = by_time[day3 + 8 * HOUR_S - 60]
    assert at_0759.desired_replicas >= 24, at_0759.reason
    assert any(d.rule is ScalingRule.PREDICTIVE_UP for d in by_time.values())
    assert "forecast (daily" in at_0759.reason


def test_predictive_scale_down_waits_for_a_long_enough_low_and_respects_guards() -> None:
    policy = predictive(scale_down_hold_s=600.0)
    load_at: LoadAt = lambda now: square_day(now % DAY_S)  # noqa: E731
    day3 = MONDAY_S + 2 * DAY_S
    warm = drive(policy, load_at, MONDAY_S, day3 + 10 * HOUR_S - 60)
    current = warm[-1][2].desired_replicas
    assert current >= 24
    # The 8-minute dip at 10:00: the forecast says 3000 again within the 10-minute hold.
    dip = drive(policy, load_at, day3 + 10 * HOUR_S, day3 + 10 * HOUR_S + 8 * 60, current=current)
    assert min(d.desired_replicas for _, _, d in dip) >= 24
    # 12:00: low for the rest of the day. With an incident open nothing is removed ...
    current = dip[-1][2].desired_replicas
    noon = day3 + 12 * HOUR_S
    guarded = drive(
        policy,
        load_at,
        dip[-1][0] + 60,
        noon + 300,
        current=current,
        guards_at=lambda now: ScaleGuards(incident_open=now >= noon),
    )
    after_noon = [d for now, _, d in guarded if now >= noon + 60]
    assert all(d.desired_replicas == d.current_replicas for d in after_noon)
    assert any(d.rule is ScalingRule.GUARD for d in after_noon)
    # ... and once it is closed the pods go within two minutes, not after a 5-minute window.
    released = drive(policy, load_at, noon + 360, noon + 480, current=guarded[-1][2].desired_replicas)
    assert released[0][2].rule is ScalingRule.PREDICTIVE_DOWN
    assert released[-1][2].desired_replicas <= 8


def test_predictive_takes_the_reactive_count_for_a_surprise_spike() -> None:
    policy = predictive()
    load_at: LoadAt = lambda now: square_day(now % DAY_S)  # noqa: E731
    day3 = MONDAY_S + 2 * DAY_S
    warm = drive(policy, load_at, MONDAY_S, day3 + 15 * HOUR_S)
    current = warm[-1][2].desired_replicas
    decision = policy.recommend(day3 + 15 * HOUR_S, 5000.0, current, current)
    assert decision.desired_replicas >= min(50, current * 2)
    assert decision.rule in {ScalingRule.REACTIVE_UP, ScalingRule.RATE_LIMITED}


def test_a_prior_schedule_shapes_the_first_day_only() -> None:
    policy = predictive(forecast=ForecastConfig(prior_schedule=ORIGINAL_MODULE_PRIOR_SCHEDULE))
    prior = {(e.weekday, e.time_of_day): e.load_factor for e in ORIGINAL_MODULE_PRIOR_SCHEDULE}

    def load_at(now: float) -> float:  # Monday as the prior describes it, x 1000
        hour = (now - MONDAY_S) % DAY_S / HOUR_S
        start = max(h for h in (0, 8, 12, 17) if h <= hour)
        return 1000.0 * prior[(0, f"{start:02d}:00")]

    decisions = drive(policy, load_at, MONDAY_S, MONDAY_S + 7 * HOUR_S + 59 * 60)  # last call at 07:58
    last = decisions[-1][2]
    assert last.inputs["model"] == "prior"
    assert float(last.inputs["forecast_peak_up_tpm"]) >= 1400.0  # the 08:00 x1.5 step, 2 minutes ahead
    assert last.inputs["predictive_up"] == 12  # 1500 tpm at 125 tpm of capacity each
    assert last.rule is ScalingRule.RATE_LIMITED
    later = drive(policy, load_at, MONDAY_S + 8 * HOUR_S, MONDAY_S + 2 * DAY_S, current=last.desired_replicas)
    assert later[-1][2].inputs["model"] != "prior"


def test_the_cost_budget_moves_the_safety_quantile_within_its_bounds() -> None:
    load_at: LoadAt = lambda now: square_day(now % DAY_S)  # noqa: E731
    frugal = predictive(cost_budget=0.5)
    drive(frugal, load_at, MONDAY_S, MONDAY_S + DAY_S + 12 * HOUR_S)
    generous = predictive(cost_budget=2.0)
    drive(generous, load_at, MONDAY_S, MONDAY_S + DAY_S + 12 * HOUR_S)
    start = ForecastConfig().safety_quantile
    assert 0.5 <= frugal.safety_quantile < start
    assert start < generous.safety_quantile <= DEFAULT_MAX_SAFETY_QUANTILE
    assert predictive().safety_quantile == start  # a fixed quantile without a budget


def test_decisions_are_deterministic() -> None:
    def run() -> list[tuple[int, str, str]]:
        policy = predictive(cost_budget=1.0)
        load_at: LoadAt = lambda now: square_day(now % DAY_S) * (1.0 + 0.1 * ((now // 60) % 7) / 7)  # noqa: E731
        return [
            (d.desired_replicas, d.rule.value, d.reason)
            for _, _, d in drive(policy, load_at, MONDAY_S, MONDAY_S + 1.5 * DAY_S)
        ]

    assert run() == run()


def test_config_is_frozen_and_replaceable() -> None:
    config = PredictiveConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.startup_s = 5.0  # type: ignore[misc]
    assert dataclasses.replace(config, startup_s=90.0).up_horizon_s == 150.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(1, 900), st.floats(0, 50_000), st.integers(0, 200), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from(["reactive", "predictive"]),
)
def test_never_outside_min_max(steps: list[tuple[float, float, int, bool]], kind: str) -> None:
    policy: ScalingPolicy = (
        reactive(min_replicas=3, max_replicas=40)
        if kind == "reactive"
        else predictive(forecast=ForecastConfig(min_residuals=1))
    )
    now = MONDAY_S
    for gap_s, load, current, incident in steps:
        now += gap_s
        decision = policy.recommend(now, load, current, current, ScaleGuards(incident_open=incident))
        low, high = (3, 40) if kind == "reactive" else (2, 60)
        assert low <= decision.desired_replicas <= high


def test_a_day_with_no_load_at_night_still_forecasts_the_morning() -> None:
    policy = predictive()

    def load_at(now: float) -> float:
        hour = now % DAY_S / HOUR_S
        return 0.0 if hour < 7.0 else 2000.0 if hour < 19.0 else 0.0

    day3 = MONDAY_S + 2 * DAY_S
    warm = drive(policy, load_at, MONDAY_S, day3 + 6.5 * HOUR_S)
    tail = drive(
        policy,
        load_at,
        day3 + 6.5 * HOUR_S,
        day3 + 7 * HOUR_S,
        step_s=15.0,
        current=warm[-1][2].desired_replicas,
    )
    at_0659 = {now: d for now, _, d in tail}[day3 + 7 * HOUR_S - 60]
    assert at_0659.desired_replicas >= 16, at_0659.reason  # 2000 tpm at 125 tpm of capacity each


# -- capacity, trust and the fall-back to the reactive rule ------------------------------------------


def test_capacity_is_the_target_over_the_scale_up_threshold() -> None:
    assert ReactiveConfig(target_tpm_per_instance=100.0).capacity_tpm_per_instance == 125.0
    assert (
        ReactiveConfig(target_tpm_per_instance=100.0, scale_up_threshold=0.5).capacity_tpm_per_instance
        == 200.0
    )
    with pytest.raises(ValueError, match=r"ReactiveConfig\.scale_up_threshold must be in \[0\.1, 1\]"):
        ReactiveConfig(scale_up_threshold=1.2)


def test_the_engine_passes_the_threshold_to_its_policy() -> None:
    from mcp_autonomy.autonomy.system import scaling_policy

    policy = scaling_policy(Settings(scale_up_threshold=0.5, target_tpm_per_instance=100))
    assert isinstance(policy, PredictivePolicy)
    assert policy.config.reactive.capacity_tpm_per_instance == 200.0


def random_walk(seed: int) -> LoadAt:
    """A load with no daily shape: a log random walk, one step a minute, reproducible."""
    import random

    rng = random.Random(seed)
    levels: dict[int, float] = {}
    level = 1.0

    def load_at(now: float) -> float:
        nonlocal level
        minute = int(now // 60)
        if minute not in levels:
            level = min(max(level * (1.0 + rng.gauss(0.0, 0.05)), 0.2), 5.0)
            levels[minute] = 1000.0 * level
        return levels[minute]

    return load_at


def test_on_load_with_no_pattern_it_follows_the_reactive_rule() -> None:
    policy = predictive()
    decisions = drive(policy, random_walk(5), MONDAY_S, MONDAY_S + 2 * DAY_S, step_s=15.0)
    flat = [d for _, _, d in decisions if d.inputs.get("model") == "flat"]
    assert len(flat) > len(decisions) // 2  # persistence forecasts a random walk best
    assert all(d.inputs["forecast_trusted"] == 0 for d in flat)
    assert all("following it" in d.reason for d in flat)


def test_the_margin_never_exceeds_the_reactive_rules_headroom() -> None:
    policy = predictive(cost_budget=None, forecast=ForecastConfig(safety_quantile=0.99))

    def bursty(now: float) -> float:  # the daily square wave with a x3 burst every 37 minutes
        return square_day(now % DAY_S) * (3.0 if int(now // 60) % 37 == 0 else 1.0)

    decisions = drive(policy, bursty, MONDAY_S, MONDAY_S + 2 * DAY_S)
    # (Not counting the minutes after a burst, when the surprise floor takes the reactive count.)
    forecasting = [d for _, _, d in decisions if d.inputs.get("surprised") == 0]
    assert any(float(d.inputs["headroom"]) > 0.25 for d in forecasting)  # the errors call for more ...
    for d in forecasting:  # ... but no more than the reactive rule's 1/0.8 - 1 = 25 % is bought
        peak = max(float(d.inputs["forecast_peak_up_tpm"]), float(d.inputs["load_tpm"]))
        assert int(d.inputs["predictive_up"]) <= max(2, math.ceil(peak * 1.25 / 125.0 - 1e-9))


def test_a_busier_night_than_usual_does_not_multiply_the_morning_forecast() -> None:
    # A learned profile is in tpm: where it is near 0 the load/profile ratio is noise, and the
    # forecast (level x shape) once put the 06:00 step at many times any load seen.
    forecaster = LoadForecaster(ForecastConfig(), lead_s=60.0, floor_tpm=TARGET)

    def usual(now: float) -> float:  # 5 tpm at night, 3000 from 06:00 to 12:00, 500 otherwise
        hour = (now - MONDAY_S) % DAY_S / HOUR_S
        return 5.0 if hour < 6.0 else 3000.0 if hour < 12.0 else 500.0

    now = MONDAY_S
    while now < MONDAY_S + 3 * DAY_S + 5.9 * HOUR_S:
        night_of_day_4 = now >= MONDAY_S + 3 * DAY_S
        forecaster.observe(now, 60.0 if night_of_day_4 else usual(now))  # twelve times the usual
        now += 60.0
    outlook = forecaster.outlook(now, 600.0, 600.0)  # from 05:54, over the 06:00 step
    assert outlook is not None and outlook.model != "flat"
    assert 3000.0 <= outlook.peak_up_tpm <= 2 * 3000.0  # the step, at most the clip ratio above it


def test_a_policy_warmed_up_from_recorded_load_is_ready_before_the_peak_after_a_restart() -> None:
    # Two days and a morning of load recorded once a minute (what the engine stores), replayed at
    # start-up: the restarted policy trusts its forecast at once and asks for the 24 pods of the
    # 08:00 step by 07:59. A policy that only learnt the forecaster's profile (the old warm-up)
    # or nothing would follow the HPA's rule and be short for a start-up at 08:00.
    load_at: LoadAt = lambda now: square_day(now % DAY_S)  # noqa: E731
    day3 = MONDAY_S + 2 * DAY_S
    recorded = [
        (MONDAY_S + 60.0 * i, load_at(MONDAY_S + 60.0 * i)) for i in range(int((day3 - MONDAY_S) / 60) + 450)
    ]
    malformed = [(day3, -5.0), (MONDAY_S, 500.0), (day3 + 1.0, math.nan)]  # negative, earlier, NaN
    warmed = predictive(cost_budget=1.0)
    assert warmed.warm_up(recorded + malformed) == len(recorded)
    live_from = recorded[-1][0] + 15.0
    forecaster_only = predictive(cost_budget=1.0)
    for at, tpm in recorded:
        forecaster_only.forecaster.observe(at, tpm)
    for policy, ready in ((warmed, True), (forecaster_only, False), (predictive(cost_budget=1.0), False)):
        tail = drive(policy, load_at, live_from, day3 + 8 * HOUR_S, step_s=15.0, current=4)
        at_0759 = {now: d for now, _, d in tail}[day3 + 8 * HOUR_S - 60]
        assert (at_0759.desired_replicas >= 24) is ready, at_0759.reason
        assert (
            at_0759.rule is ScalingRule.PREDICTIVE_UP or at_0759.inputs.get("forecast_trusted") == 1
        ) is ready


def test_the_warm_up_decides_at_the_live_loops_step_not_once_per_recorded_minute() -> None:
    # A 4-minute job every 15 minutes (3000 tpm on 500), recorded once a minute for two days.
    # Replayed at the live 15 s step, the ledger sees what the forecast does live (ready before
    # each job, 0.78x the HPA's spend) and trusts it; deciding once per recorded minute instead
    # misjudges the same forecast's spend (0.91x here; 1.35x on the benchmark's timer_bursts
    # trace, where the restarted policy then followed the HPA).
    def job_every_15_minutes(now_s: float) -> float:
        return 3000.0 if (now_s % 900.0) < 240.0 else 500.0

    recorded = [(MONDAY_S + 60.0 * i, job_every_15_minutes(MONDAY_S + 60.0 * i)) for i in range(2 * 1440)]
    live_step = predictive(cost_budget=1.0)
    live_step.warm_up(recorded)
    per_minute = predictive(cost_budget=1.0)
    per_minute.warm_up(recorded, step_s=60.0)
    live_ratio, minute_ratio = live_step.ledger.spend_ratio, per_minute.ledger.spend_ratio
    assert live_ratio is not None and minute_ratio is not None
    assert live_step.forecast_trusted and live_ratio < 1.0
    assert minute_ratio > live_ratio
    with pytest.raises(ValueError, match="step_s"):
        predictive().warm_up(recorded, step_s=0.5)


def test_over_the_cost_budget_the_policy_runs_no_more_than_the_hpa() -> None:
    # Two policies warmed up on two days of the square day, both trusted. One then ran 60 pods for
    # the night (an operator's scale-up, a stuck count): over the last day it spent far more than
    # the HPA would, so at 07:59 it does not buy the morning step ahead of the HPA; the other does.
    load_at: LoadAt = lambda now: square_day(now % DAY_S)  # noqa: E731
    day3 = MONDAY_S + 2 * DAY_S
    recorded = [(MONDAY_S + 60.0 * i, load_at(MONDAY_S + 60.0 * i)) for i in range(2 * 1440)]
    at_0759: dict[bool, ScalingDecision] = {}
    for overspent in (False, True):
        policy = predictive(cost_budget=1.0)
        policy.warm_up(recorded)
        assert policy.forecast_trusted
        now, current = day3, 5
        while now <= day3 + 8 * HOUR_S - 60.0:
            if overspent and now < day3 + 6 * HOUR_S:
                current = 60
            decision = policy.recommend(now, load_at(now), current, current)
            current = decision.desired_replicas
            now += 15.0
        at_0759[overspent] = decision
    assert at_0759[False].desired_replicas >= 24
    assert at_0759[False].inputs["over_budget"] == 0
    capped = at_0759[True]
    assert capped.inputs["over_budget"] == 1
    assert capped.desired_replicas <= int(capped.inputs["shadow_replicas"]) < 24
    assert "over the cost budget" in capped.reason
