"""The Kubernetes HorizontalPodAutoscaler's replica arithmetic, re-implemented as a baseline.

The predictive policy is judged against what Kubernetes itself would do with the same load, so
this module reproduces the controller's rules (autoscaling/v2 with the kube-controller-manager
defaults; `pkg/controller/podautoscaler/horizontal.go` and `replica_calculator.go`), written
from their documented behaviour, not copied:

- one sync every `sync_period_s` (15 s); a call between syncs changes nothing;
- replicas below `minReplicas` or above `maxReplicas` are brought back at once, without metrics;
- the metric proposal (`ReplicaCalculator`):
  * `pods` metric (a per-pod average such as TPM per pod, the usual custom-metrics setup): only
    ready pods report; `usage ratio = average per reporting pod / target` (milli-units, integer
    average); within tolerance -> current replicas, else `ceil(ratio x ready pods)`. When the
    ratio calls for a scale-up and some pods are not ready yet (pending, no metric), they are
    counted as reporting 0 and the ratio is recomputed over all pods; if that new ratio is within
    tolerance or points the other way, the proposal is the current count, else
    `ceil(new ratio x all pods)` (and a change against the ratio's direction is dropped too);
  * `external_average_value` metric (an External metric with an AverageValue target):
    `ratio = total / (target x status replicas)`; outside tolerance -> `ceil(total / target)`;
  * the tolerance check is `1 - tolerance_down <= ratio <= 1 + tolerance_up` (both 0.1);
- behaviour (`normalizeDesiredReplicasWithBehaviors`):
  * stabilisation: every sync records its unstabilised proposal; the result is the current count
    brought up to the lowest proposal of the scale-up window and down to the highest of the
    scale-down window (proposals strictly newer than `now - window`, including this one);
  * rate: for each policy, the replicas at the start of its period are the current ones minus
    the scale-ups plus the scale-downs this autoscaler made strictly within the period; Pods
    allows `start +/- value`, Percent `ceil(start x (1 + value/100))` up and
    `int(start x (1 - value/100))` down; selectPolicy Max takes the most permissive limit, Min the
    least, Disabled forbids the direction; the limit never undoes the current count, and
    `minReplicas`/`maxReplicas` bound the result;
  * defaults: scale-up window 0 s, policies Pods 4 and Percent 100 per 15 s, select Max;
    scale-down window 300 s, Percent 100 per 15 s, select Max.

A pod still starting is modelled as Kubernetes sees a pending pod, or one without a metric yet:
it counts as 0 on a scale-up and is left out otherwise. (For non-CPU metrics, current Kubernetes
counts a running-but-unready pod that already reports a metric as ready; a pod that receives no
traffic until ready reports nothing useful, so the difference does not arise here.)

Not modelled: metric collection delays (both sides see the same load at the same instant), the
CPU initialisation period (CPU only), and scale-from-zero (at 0 replicas autoscaling is off, as in
Kubernetes without the HPAScaleToZero gate).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from mcp_autonomy.autonomy.scaling.decision import (
    DEFAULT_MAX_REPLICAS,
    DEFAULT_MIN_REPLICAS,
    DEFAULT_TARGET_TPM_PER_INSTANCE,
    NO_GUARDS,
    RecommendationHistory,
    ScaleGuards,
    ScalingDecision,
    ScalingRule,
    check_inputs,
)
from mcp_autonomy.config import MAX_REPLICAS_LIMIT, MAX_TARGET_TPM

DEFAULT_SYNC_PERIOD_S: Final = 15.0  # --horizontal-pod-autoscaler-sync-period
DEFAULT_HPA_TOLERANCE: Final = 0.1  # --horizontal-pod-autoscaler-tolerance
DEFAULT_DOWNSCALE_STABILIZATION_S: Final = 300  # --horizontal-pod-autoscaler-downscale-stabilization
DEFAULT_SCALE_UP_PODS: Final = 4
DEFAULT_SCALE_UP_PERCENT: Final = 100
DEFAULT_SCALE_DOWN_PERCENT: Final = 100
DEFAULT_POLICY_PERIOD_S: Final = 15
_SYNC_SLACK_S: Final = 1e-6
_MILLI: Final = 1000


class HpaPolicyType(StrEnum):
    """`HPAScalingPolicy.type`: a step in pods or in percent of the replicas."""

    PODS = "Pods"
    PERCENT = "Percent"


class HpaSelectPolicy(StrEnum):
    """`HPAScalingRules.selectPolicy`: which policy's limit applies."""

    MAX = "Max"  # the policy that allows the largest change
    MIN = "Min"  # the policy that allows the smallest change
    DISABLED = "Disabled"  # no change in this direction


class HpaMetricType(StrEnum):
    """Where the load metric comes from, which decides how replicas are computed."""

    PODS = "pods"
    EXTERNAL_AVERAGE_VALUE = "external_average_value"


@dataclass(frozen=True, slots=True)
class HpaScalingPolicy:
    """One `HPAScalingPolicy`: at most `value` pods or percent per `period_s` seconds."""

    type: HpaPolicyType
    value: int
    period_s: int

    def __post_init__(self) -> None:
        if not isinstance(self.type, HpaPolicyType):
            raise ValueError(f"HpaScalingPolicy.type must be Pods or Percent, got {self.type!r}")
        if not isinstance(self.value, int) or isinstance(self.value, bool) or self.value <= 0:
            raise ValueError(f"HpaScalingPolicy.value must be an integer > 0, got {self.value!r}")
        if (
            not isinstance(self.period_s, int)
            or isinstance(self.period_s, bool)
            or not 0 < self.period_s <= 1800
        ):
            raise ValueError(
                f"HpaScalingPolicy.period_s must be an integer in (0, 1800], got {self.period_s!r}"
            )


@dataclass(frozen=True, slots=True)
class HpaScalingRules:
    """One direction's `HPAScalingRules`, plus that direction's tolerance."""

    stabilization_window_s: int
    policies: tuple[HpaScalingPolicy, ...]
    select_policy: HpaSelectPolicy = HpaSelectPolicy.MAX
    tolerance: float = DEFAULT_HPA_TOLERANCE

    def __post_init__(self) -> None:
        window = self.stabilization_window_s
        if not isinstance(window, int) or isinstance(window, bool) or not 0 <= window <= 3600:
            raise ValueError(
                f"HpaScalingRules.stabilization_window_s must be an integer in [0, 3600], got {window!r}"
            )
        if not self.policies and self.select_policy is not HpaSelectPolicy.DISABLED:
            raise ValueError("HpaScalingRules.policies must not be empty unless select_policy is Disabled")
        if not isinstance(self.tolerance, int | float) or not 0 <= self.tolerance < 1:
            raise ValueError(f"HpaScalingRules.tolerance must be in [0, 1), got {self.tolerance!r}")

    @property
    def longest_period_s(self) -> int:
        return max((p.period_s for p in self.policies), default=0)


DEFAULT_SCALE_UP_RULES: Final = HpaScalingRules(
    stabilization_window_s=0,
    policies=(
        HpaScalingPolicy(HpaPolicyType.PERCENT, DEFAULT_SCALE_UP_PERCENT, DEFAULT_POLICY_PERIOD_S),
        HpaScalingPolicy(HpaPolicyType.PODS, DEFAULT_SCALE_UP_PODS, DEFAULT_POLICY_PERIOD_S),
    ),
)
DEFAULT_SCALE_DOWN_RULES: Final = HpaScalingRules(
    stabilization_window_s=DEFAULT_DOWNSCALE_STABILIZATION_S,
    policies=(HpaScalingPolicy(HpaPolicyType.PERCENT, DEFAULT_SCALE_DOWN_PERCENT, DEFAULT_POLICY_PERIOD_S),),
)


@dataclass(frozen=True, slots=True)
class HpaConfig:
    """An HPA spec reduced to what the arithmetic needs; defaults are Kubernetes' defaults.

    `target_tpm_per_instance` is the per-pod target (`AverageValue`) of the load metric.
    """

    target_tpm_per_instance: float = DEFAULT_TARGET_TPM_PER_INSTANCE
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    metric_type: HpaMetricType = HpaMetricType.PODS
    sync_period_s: float = DEFAULT_SYNC_PERIOD_S
    scale_up: HpaScalingRules = field(default=DEFAULT_SCALE_UP_RULES)
    scale_down: HpaScalingRules = field(default=DEFAULT_SCALE_DOWN_RULES)

    def __post_init__(self) -> None:
        target = self.target_tpm_per_instance
        if not isinstance(target, int | float) or not 0 < target <= MAX_TARGET_TPM:
            raise ValueError(
                f"HpaConfig.target_tpm_per_instance must be in (0, {MAX_TARGET_TPM}], got {target!r}"
            )
        if not isinstance(self.min_replicas, int) or not 1 <= self.min_replicas <= MAX_REPLICAS_LIMIT:
            # An HPA's minReplicas is at least 1 (0 needs the HPAScaleToZero alpha gate).
            raise ValueError(
                f"HpaConfig.min_replicas must be an integer in [1, {MAX_REPLICAS_LIMIT}], got {self.min_replicas!r}"
            )
        if (
            not isinstance(self.max_replicas, int)
            or not self.min_replicas <= self.max_replicas <= MAX_REPLICAS_LIMIT
        ):
            raise ValueError(
                f"HpaConfig.max_replicas must be an integer in [min_replicas={self.min_replicas}, "
                f"{MAX_REPLICAS_LIMIT}], got {self.max_replicas!r}"
            )
        if not isinstance(self.metric_type, HpaMetricType):
            raise ValueError(
                f"HpaConfig.metric_type must be one of pods, external_average_value, got {self.metric_type!r}"
            )
        if not isinstance(self.sync_period_s, int | float) or not 0 < self.sync_period_s <= 3600:
            raise ValueError(f"HpaConfig.sync_period_s must be in (0, 3600], got {self.sync_period_s!r}")


def _within(ratio: float, rules_up: HpaScalingRules, rules_down: HpaScalingRules) -> bool:
    return 1.0 - rules_down.tolerance <= ratio <= 1.0 + rules_up.tolerance


class HorizontalPodAutoscaler:
    """The HPA controller's decisions for one Deployment, driven by the timestamps passed in.

    It implements the `ScalingPolicy` protocol so the simulator can replay it beside our own
    policies; `guards` are ignored (the HPA knows no incidents).
    """

    name: str = "hpa"

    def __init__(self, config: HpaConfig | None = None) -> None:
        self.config = config if config is not None else HpaConfig()
        self._recommendations = RecommendationHistory(
            max(self.config.scale_up.stabilization_window_s, self.config.scale_down.stabilization_window_s)
        )
        self._scale_ups: deque[tuple[float, int]] = deque()
        self._scale_downs: deque[tuple[float, int]] = deque()
        self._last_sync_s: float | None = None
        self._target_milli = round(self.config.target_tpm_per_instance * _MILLI)

    # -- ReplicaCalculator ----------------------------------------------------------------------

    def metric_proposal(self, load_tpm: float, current: int, ready: int) -> tuple[int | None, float]:
        """`(replicas, usage ratio)` from the metric; replicas is None when no pod reported."""
        cfg = self.config
        up, down = cfg.scale_up, cfg.scale_down
        total_milli = round(load_tpm * _MILLI)
        if cfg.metric_type is HpaMetricType.EXTERNAL_AVERAGE_VALUE:
            ratio = total_milli / (self._target_milli * current)
            if _within(ratio, up, down):
                return current, ratio
            return math.ceil(total_milli / self._target_milli), ratio
        ready = min(ready, current)
        if ready <= 0:
            return None, math.nan
        # Each ready pod reports its share; the metrics client averages with integer division.
        per_pod_milli = round(total_milli / ready)
        ratio = (per_pod_milli * ready // ready) / self._target_milli
        unready = current - ready
        if not (unready > 0 and ratio > 1.0):
            if _within(ratio, up, down):
                return current, ratio
            return math.ceil(ratio * ready), ratio
        # Scale-up with pods still starting: they count as reporting 0.
        new_ratio = (per_pod_milli * ready // current) / self._target_milli
        if _within(new_ratio, up, down) or new_ratio < 1.0:
            return current, ratio
        proposal = math.ceil(new_ratio * current)
        if proposal < current:
            return current, ratio
        return proposal, ratio

    # -- normalizeDesiredReplicasWithBehaviors ------------------------------------------------

    def _stabilize(self, now_s: float, current: int, proposal: int) -> int:
        cfg = self.config
        up_cutoff = now_s - cfg.scale_up.stabilization_window_s
        down_cutoff = now_s - cfg.scale_down.stabilization_window_s
        history = self._recommendations
        history.add(now_s, proposal)  # first, so the horizon's pruning leaves the longest window whole
        up_recommendation = history.lowest_since(up_cutoff, proposal)
        down_recommendation = history.highest_since(down_cutoff, proposal)
        recommendation = max(current, up_recommendation)
        return min(recommendation, down_recommendation)

    @staticmethod
    def _changed_within(events: deque[tuple[float, int]], now_s: float, period_s: int) -> int:
        cutoff = now_s - period_s
        return sum(change for at_s, change in events if at_s > cutoff)

    def _period_start(self, now_s: float, current: int, period_s: int) -> int:
        return (
            current
            - self._changed_within(self._scale_ups, now_s, period_s)
            + self._changed_within(self._scale_downs, now_s, period_s)
        )

    def scale_up_limit(self, now_s: float, current: int) -> int:
        """The most replicas the scale-up policies allow now."""
        rules = self.config.scale_up
        if rules.select_policy is HpaSelectPolicy.DISABLED:
            return current
        limits = []
        for policy in rules.policies:
            start = self._period_start(now_s, current, policy.period_s)
            if policy.type is HpaPolicyType.PODS:
                limits.append(start + policy.value)
            else:
                limits.append(math.ceil(start * (1 + policy.value / 100)))
        return max(limits) if rules.select_policy is HpaSelectPolicy.MAX else min(limits)

    def scale_down_limit(self, now_s: float, current: int) -> int:
        """The fewest replicas the scale-down policies allow now."""
        rules = self.config.scale_down
        if rules.select_policy is HpaSelectPolicy.DISABLED:
            return current
        limits = []
        for policy in rules.policies:
            start = self._period_start(now_s, current, policy.period_s)
            if policy.type is HpaPolicyType.PODS:
                limits.append(start - policy.value)
            else:
                limits.append(int(start * (1 - policy.value / 100)))
        return min(limits) if rules.select_policy is HpaSelectPolicy.MAX else max(limits)

    def _apply_rate(self, now_s: float, current: int, stabilized: int) -> tuple[int, str]:
        cfg = self.config
        if stabilized > current:
            limit = max(self.scale_up_limit(now_s, current), current)
            if cfg.max_replicas > limit:
                allowed, reason = limit, "ScaleUpLimit"
            else:
                allowed, reason = cfg.max_replicas, "TooManyReplicas"
            return (allowed, reason) if stabilized > allowed else (stabilized, "DesiredWithinRange")
        if stabilized < current:
            limit = min(self.scale_down_limit(now_s, current), current)
            if cfg.min_replicas < limit:
                allowed, reason = limit, "ScaleDownLimit"
            else:
                allowed, reason = cfg.min_replicas, "TooFewReplicas"
            return (allowed, reason) if stabilized < allowed else (stabilized, "DesiredWithinRange")
        return stabilized, "DesiredWithinRange"

    def _store_scale_event(self, now_s: float, current: int, desired: int) -> None:
        if desired > current:
            events, horizon = self._scale_ups, self.config.scale_up.longest_period_s
            events.append((now_s, desired - current))
        else:
            events, horizon = self._scale_downs, self.config.scale_down.longest_period_s
            events.append((now_s, current - desired))
        cutoff = now_s - horizon
        while events and events[0][0] < cutoff:
            events.popleft()

    # -- the sync -------------------------------------------------------------------------------

    def recommend(
        self,
        now_s: float,
        load_tpm: float,
        current_replicas: int,
        ready_replicas: int,
        guards: ScaleGuards = NO_GUARDS,
    ) -> ScalingDecision:
        """One controller sync (or nothing, between syncs) for the measured load."""
        check_inputs(now_s, load_tpm, current_replicas, ready_replicas)
        cfg = self.config
        last = self._last_sync_s
        if last is not None and now_s < last:
            raise ValueError(f"recommend.now_s must not go backwards: {now_s!r} < previous {last!r}")
        inputs: dict[str, float | int | str] = {
            "load_tpm": load_tpm,
            "current_replicas": current_replicas,
            "ready_replicas": ready_replicas,
            "target_tpm_per_instance": cfg.target_tpm_per_instance,
        }
        if last is not None and now_s < last + cfg.sync_period_s - _SYNC_SLACK_S:
            return ScalingDecision(
                current_replicas, current_replicas, ScalingRule.SYNC_PERIOD, "between HPA syncs", inputs
            )
        self._last_sync_s = now_s
        current = current_replicas
        if current == 0:
            return ScalingDecision(0, 0, ScalingRule.HOLD, "scaled to zero: autoscaling is disabled", inputs)
        if current > cfg.max_replicas or current < cfg.min_replicas:
            desired = min(max(current, cfg.min_replicas), cfg.max_replicas)
            which = "above maxReplicas" if current > cfg.max_replicas else "below minReplicas"
            self._store_scale_event(now_s, current, desired)
            return ScalingDecision(
                desired, current, ScalingRule.BOUNDS, f"current number of replicas {which}: {desired}", inputs
            )
        proposal, ratio = self.metric_proposal(load_tpm, current, ready_replicas)
        inputs["usage_ratio"] = ratio
        if proposal is None:
            return ScalingDecision(
                current, current, ScalingRule.NO_METRICS, "did not receive metrics for any ready pods", inputs
            )
        stabilized = self._stabilize(now_s, current, proposal)
        desired, limit_reason = self._apply_rate(now_s, current, stabilized)
        inputs.update(metric_proposal=proposal, stabilized=stabilized, limit=limit_reason)
        if desired != current:
            self._store_scale_event(now_s, current, desired)
        if desired > current:
            rule = (
                ScalingRule.REACTIVE_UP if limit_reason == "DesiredWithinRange" else ScalingRule.RATE_LIMITED
            )
        elif desired < current:
            rule = (
                ScalingRule.REACTIVE_DOWN
                if limit_reason == "DesiredWithinRange"
                else ScalingRule.RATE_LIMITED
            )
        elif stabilized == current and proposal != current:
            rule = ScalingRule.STABILIZED
        elif proposal == current:
            rule = ScalingRule.WITHIN_TOLERANCE
        else:
            rule = ScalingRule.HOLD
        if limit_reason == "TooManyReplicas" or limit_reason == "TooFewReplicas":
            rule = ScalingRule.BOUNDS if desired != stabilized else rule
        reason = (
            f"{cfg.metric_type.value} metric: load {load_tpm:.1f} tpm on {min(ready_replicas, current)}/{current} "
            f"ready, usage ratio {ratio:.3f} to {cfg.target_tpm_per_instance:g} tpm/pod -> proposal {proposal}, "
            f"stabilised {stabilized}, desired {desired} ({limit_reason})"
        )
        return ScalingDecision(desired, current, rule, reason, inputs)
