"""The HPA baseline: Kubernetes' tolerance, unready-pod, stabilisation and rate-limit rules, pinned."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_autonomy.autonomy.scaling.hpa import (
    DEFAULT_SCALE_DOWN_RULES,
    DEFAULT_SCALE_UP_RULES,
    HorizontalPodAutoscaler,
    HpaConfig,
    HpaMetricType,
    HpaPolicyType,
    HpaScalingPolicy,
    HpaScalingRules,
    HpaSelectPolicy,
)
from mcp_autonomy.autonomy.scaling.policy import ScalingPolicy, ScalingRule

T0 = 1_767_571_200.0
SYNC = 15.0


def make_hpa(**overrides: object) -> HorizontalPodAutoscaler:
    config: dict[str, object] = {"target_tpm_per_instance": 100.0, "min_replicas": 1, "max_replicas": 100}
    config.update(overrides)
    return HorizontalPodAutoscaler(HpaConfig(**config))  # type: ignore[arg-type]


def test_defaults_are_kubernetes_defaults() -> None:
    config = HpaConfig()
    assert config.sync_period_s == 15.0
    assert DEFAULT_SCALE_UP_RULES.stabilization_window_s == 0
    assert DEFAULT_SCALE_UP_RULES.select_policy is HpaSelectPolicy.MAX
    assert {(p.type, p.value, p.period_s) for p in DEFAULT_SCALE_UP_RULES.policies} == {
        (HpaPolicyType.PODS, 4, 15),
        (HpaPolicyType.PERCENT, 100, 15),
    }
    assert DEFAULT_SCALE_DOWN_RULES.stabilization_window_s == 300
    assert [(p.type, p.value, p.period_s) for p in DEFAULT_SCALE_DOWN_RULES.policies] == [
        (HpaPolicyType.PERCENT, 100, 15)
    ]
    assert DEFAULT_SCALE_UP_RULES.tolerance == DEFAULT_SCALE_DOWN_RULES.tolerance == 0.1
    assert isinstance(HorizontalPodAutoscaler(), ScalingPolicy)


@pytest.mark.parametrize(
    ("load", "expected", "rule"),
    [
        (1100.0, 10, ScalingRule.WITHIN_TOLERANCE),  # ratio 1.10: inside the band (inclusive)
        (1000.0, 10, ScalingRule.WITHIN_TOLERANCE),
        (900.0, 10, ScalingRule.WITHIN_TOLERANCE),  # ratio 0.90: inside the band (inclusive)
        (1110.0, 12, ScalingRule.REACTIVE_UP),  # ratio 1.11 -> ceil(1.11 x 10) = 12
        (2500.0, 20, ScalingRule.RATE_LIMITED),  # ceil(25) but at most 100 % more per 15 s
    ],
)
def test_tolerance_band_and_ceil_of_ratio(load: float, expected: int, rule: ScalingRule) -> None:
    hpa = make_hpa()
    decision = hpa.recommend(T0, load, 10, 10)
    assert decision.desired_replicas == expected
    assert decision.rule is rule
    assert "usage ratio" in decision.reason


def test_external_average_value_is_ceil_of_total_over_target_whatever_is_ready() -> None:
    hpa = make_hpa(metric_type=HpaMetricType.EXTERNAL_AVERAGE_VALUE)
    assert hpa.recommend(T0, 1210.0, 10, 2).desired_replicas == 13  # ratio 1.21 vs 10 status replicas
    hpa = make_hpa(metric_type=HpaMetricType.EXTERNAL_AVERAGE_VALUE)
    assert hpa.recommend(T0, 1090.0, 10, 2).desired_replicas == 10  # ratio 1.09: within tolerance


def test_unready_pods_count_as_zero_on_scale_up() -> None:
    # 5 of 10 pods still starting. The 5 ready pods report 160 tpm each (ratio 1.6, a scale-up),
    # but with the starting pods at 0 the ratio is 0.8: the direction flips, so no change (and
    # no scale-down to ceil(1.6 x 5) = 8 either).
    hpa = make_hpa()
    decision = hpa.recommend(T0, 800.0, 10, 5)
    assert decision.desired_replicas == 10
    # Ratio 2.1 on the ready pods, 1.05 with the starting ones at 0: within tolerance, hold.
    assert make_hpa().recommend(T0, 1050.0, 10, 5).desired_replicas == 10
    # Ratio 3.0 on ready pods, 1.5 over all: ceil(1.5 x 10) = 15.
    assert make_hpa().recommend(T0, 1500.0, 10, 5).desired_replicas == 15


def test_unready_pods_are_left_out_on_scale_down() -> None:
    # Ratio 0.5 over the 8 ready pods: ceil(0.5 x 8) = 4 (the 2 starting pods do not count).
    hpa = make_hpa()
    hpa.recommend(T0, 1000.0, 10, 10)
    decision = hpa.recommend(T0 + SYNC, 400.0, 10, 8)
    assert decision.inputs["metric_proposal"] == 4
    assert decision.desired_replicas == 10  # ... and the 5-minute window holds it for now
    # A fresh autoscaler has no window yet: the first proposal applies at once.
    assert make_hpa().recommend(T0, 400.0, 10, 8).desired_replicas == 4


def test_no_ready_pod_means_no_metric_and_no_change() -> None:
    decision = make_hpa().recommend(T0, 5000.0, 3, 0)
    assert decision.desired_replicas == 3
    assert decision.rule is ScalingRule.NO_METRICS


def test_scale_down_uses_the_highest_recommendation_of_the_last_300_s() -> None:
    hpa = make_hpa()
    assert hpa.recommend(T0, 2000.0, 10, 10).desired_replicas == 20
    now = T0
    current = 20
    # The load drops at once; the 20 recommended at T0 holds until it is 300 s old.
    for _ in range(19):
        now += SYNC
        decision = hpa.recommend(now, 500.0, current, current)
        assert decision.desired_replicas == 20, now - T0
        assert decision.rule is ScalingRule.STABILIZED
    now += SYNC  # T0 + 300: that recommendation is no longer strictly inside the window
    decision = hpa.recommend(now, 500.0, current, current)
    assert decision.desired_replicas == 5
    assert decision.rule is ScalingRule.REACTIVE_DOWN


def test_scale_down_stabilisation_takes_the_window_maximum_not_the_latest() -> None:
    hpa = make_hpa()
    now = T0
    hpa.recommend(now, 1000.0, 10, 10)
    for load in (700.0, 400.0, 600.0):
        now += SYNC
        decision = hpa.recommend(now, load, 10, 10)
        assert decision.desired_replicas == 10
    now += 300.0
    assert hpa.recommend(now, 300.0, 10, 10).desired_replicas == 3


def test_scale_up_rate_pods_4_or_percent_100_per_15_s_whichever_is_more() -> None:
    hpa = make_hpa()
    now = T0
    steps = []
    current = 2
    for _ in range(5):
        decision = hpa.recommend(now, 9000.0, current, current)
        steps.append(decision.desired_replicas)
        current = decision.desired_replicas
        now += SYNC
    # 2 -> max(2 + 4, 2 x 2) = 6 -> max(10, 12) = 12 -> 24 -> 48 -> ceil(90 / ...) = 90 (< 96).
    assert steps == [6, 12, 24, 48, 90]
    capped = make_hpa(max_replicas=50)
    decision = capped.recommend(T0, 9000.0, 48, 48)
    assert decision.desired_replicas == 50
    assert decision.inputs["limit"] == "TooManyReplicas"
    assert decision.rule is ScalingRule.BOUNDS


def test_rate_limit_counts_changes_strictly_inside_the_period() -> None:
    # A 5 s sync with the default 15 s policy period: changes 5 and 10 s ago still count.
    hpa = make_hpa(sync_period_s=5.0)
    assert hpa.recommend(T0, 5000.0, 2, 2).desired_replicas == 6  # period start 2: limit 6
    decision = hpa.recommend(T0 + 5, 5000.0, 6, 6)
    assert decision.desired_replicas == 6  # period start is still 2: limit max(6, 4) = 6
    assert decision.inputs["limit"] == "ScaleUpLimit"
    assert hpa.recommend(T0 + 10, 5000.0, 6, 6).desired_replicas == 6
    assert hpa.recommend(T0 + 15, 5000.0, 6, 6).desired_replicas == 12  # the T0 change left the period


def test_custom_policies_select_min_and_percent_rounding() -> None:
    up = HpaScalingRules(
        stabilization_window_s=0,
        policies=(
            HpaScalingPolicy(HpaPolicyType.PERCENT, 50, 60),
            HpaScalingPolicy(HpaPolicyType.PODS, 10, 60),
        ),
        select_policy=HpaSelectPolicy.MIN,
    )
    down = HpaScalingRules(
        stabilization_window_s=0,
        policies=(HpaScalingPolicy(HpaPolicyType.PERCENT, 50, 60),),
    )
    hpa = make_hpa(scale_up=up, scale_down=down)
    assert hpa.scale_up_limit(T0, 3) == 5  # min(ceil(3 x 1.5) = 5, 3 + 10)
    assert hpa.recommend(T0, 5000.0, 3, 3).desired_replicas == 5
    # 15 s later the +2 of T0 is still inside the 60 s period: it starts at 5 - 2 = 3 replicas.
    assert hpa.scale_down_limit(T0 + 15, 5) == 1  # int(3 x 0.5)
    other = make_hpa(scale_up=up, scale_down=down)
    assert other.scale_down_limit(T0, 5) == 2  # int(5 x 0.5): truncated like Go's int32 conversion
    assert other.recommend(T0, 100.0, 5, 5).desired_replicas == 2


def test_disabled_direction_never_moves() -> None:
    disabled = HpaScalingRules(stabilization_window_s=0, policies=(), select_policy=HpaSelectPolicy.DISABLED)
    hpa = make_hpa(scale_up=disabled)
    assert hpa.recommend(T0, 5000.0, 3, 3).desired_replicas == 3


def test_bounds_are_restored_at_once_and_zero_means_disabled() -> None:
    hpa = make_hpa(min_replicas=2, max_replicas=10)
    assert hpa.recommend(T0, 0.0, 1, 1).desired_replicas == 2
    assert hpa.recommend(T0 + SYNC, 0.0, 14, 14).desired_replicas == 10
    decision = make_hpa().recommend(T0, 5000.0, 0, 0)
    assert decision.desired_replicas == 0  # scaled to zero: Kubernetes leaves it alone


def test_calls_between_syncs_change_nothing() -> None:
    hpa = make_hpa()
    assert hpa.recommend(T0, 2000.0, 10, 10).desired_replicas == 20
    decision = hpa.recommend(T0 + 5, 9000.0, 20, 10)
    assert decision.rule is ScalingRule.SYNC_PERIOD
    assert decision.desired_replicas == 20
    with pytest.raises(ValueError, match="backwards"):
        hpa.recommend(T0 - 1, 100.0, 20, 20)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_replicas": 0}, "HpaConfig.min_replicas must be an integer in \\[1, 1000\\]"),
        ({"min_replicas": 5, "max_replicas": 4}, "HpaConfig.max_replicas must be"),
        ({"target_tpm_per_instance": 0}, "HpaConfig.target_tpm_per_instance must be in \\(0, "),
        ({"sync_period_s": 0}, "HpaConfig.sync_period_s must be in \\(0, 3600\\]"),
    ],
)
def test_config_errors_name_field_and_range(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HpaConfig(**kwargs)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 20_000), st.integers(1, 60), st.integers(0, 60)),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from(list(HpaMetricType)),
)
def test_never_outside_min_max(steps: list[tuple[float, int, int]], metric: HpaMetricType) -> None:
    hpa = make_hpa(min_replicas=2, max_replicas=30, metric_type=metric)
    now = T0
    for load, current, ready in steps:
        decision = hpa.recommend(now, load, current, min(ready, current))
        assert 2 <= decision.desired_replicas <= 30
        now += SYNC
