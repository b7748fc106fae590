"""The reactive policy: the Kubernetes HPA's arithmetic on our own load metric (TPM per instance).

A tolerance band, separate scale-up and scale-down stabilisation windows, step limits in pods and
percent per period, optional cooldowns, clamped to MIN..MAX. It only ever reacts, so with a pod
start-up of a minute it is short of capacity on every fast rise of the load.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

from mcp_autonomy.autonomy.scaling.decision import (
    DEFAULT_MAX_REPLICAS,
    DEFAULT_MIN_REPLICAS,
    DEFAULT_SCALE_UP_THRESHOLD,
    DEFAULT_TARGET_TPM_PER_INSTANCE,
    NO_GUARDS,
    RecommendationHistory,
    ScaleGuards,
    ScalingDecision,
    ScalingRule,
    _ceil,
    _is_count,
    _is_number,
    _MonotonicTime,
    _require,
    _require_seconds,
    capacity_tpm,
    check_inputs,
    check_scale_up_threshold,
)
from mcp_autonomy.config import MAX_REPLICAS_LIMIT, MAX_TARGET_TPM

DEFAULT_TOLERANCE: Final = 0.1  # the HPA's --horizontal-pod-autoscaler-tolerance
DEFAULT_HEADROOM: Final = 0.0  # HPA-like: aim at exactly the target per instance
DEFAULT_SCALE_UP_STABILIZATION_S: Final = 0.0  # HPA default: scale up at once
DEFAULT_SCALE_DOWN_STABILIZATION_S: Final = 300.0  # HPA default: highest recommendation of 5 min
DEFAULT_SCALE_UP_MAX_PODS: Final = 4  # HPA default scale-up policy: 4 pods ...
DEFAULT_SCALE_UP_MAX_PERCENT: Final = 100.0  # ... or 100 % (whichever allows more) ...
DEFAULT_SCALE_UP_PERIOD_S: Final = 15.0  # ... per 15 s
DEFAULT_SCALE_DOWN_MAX_PERCENT: Final = 100.0  # HPA default scale-down policy: 100 % per 15 s
DEFAULT_SCALE_DOWN_PERIOD_S: Final = 15.0
DEFAULT_SCALE_UP_COOLDOWN_S: Final = 0.0
DEFAULT_SCALE_DOWN_COOLDOWN_S: Final = 0.0


@dataclass(frozen=True, slots=True)
class ReactiveConfig:
    """The HPA's knobs on our own metric; the defaults reproduce the HPA's default behaviour.

    `desired = ceil(load / (target x (1 - headroom)))` unless `load / (current x target x
    (1 - headroom))` is within `tolerance` of 1. A scale-up uses the lowest recommendation of the
    last `scale_up_stabilization_s`, a scale-down the highest of the last
    `scale_down_stabilization_s`. Per `scale_*_period_s` a change may move at most
    `scale_*_max_pods` pods or `scale_*_max_percent` percent of the replicas counted at the start
    of the period, whichever allows more (None switches that limit off; both None: unlimited).
    `scale_up_cooldown_s` separates consecutive scale-ups; `scale_down_cooldown_s` is the quiet
    time after any change before a scale-down. `scale_up_threshold` does not change this rule's
    arithmetic (it aims at the target, as an HPA does); it says what an instance can carry
    (`capacity_tpm_per_instance` = target / threshold), which the predictive policy provisions
    against and every replay counts minutes short of.
    """

    target_tpm_per_instance: float = DEFAULT_TARGET_TPM_PER_INSTANCE
    scale_up_threshold: float = DEFAULT_SCALE_UP_THRESHOLD
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    tolerance: float = DEFAULT_TOLERANCE
    headroom: float = DEFAULT_HEADROOM
    scale_up_stabilization_s: float = DEFAULT_SCALE_UP_STABILIZATION_S
    scale_down_stabilization_s: float = DEFAULT_SCALE_DOWN_STABILIZATION_S
    scale_up_max_pods: int | None = DEFAULT_SCALE_UP_MAX_PODS
    scale_up_max_percent: float | None = DEFAULT_SCALE_UP_MAX_PERCENT
    scale_up_period_s: float = DEFAULT_SCALE_UP_PERIOD_S
    scale_down_max_pods: int | None = None
    scale_down_max_percent: float | None = DEFAULT_SCALE_DOWN_MAX_PERCENT
    scale_down_period_s: float = DEFAULT_SCALE_DOWN_PERIOD_S
    scale_up_cooldown_s: float = DEFAULT_SCALE_UP_COOLDOWN_S
    scale_down_cooldown_s: float = DEFAULT_SCALE_DOWN_COOLDOWN_S

    def __post_init__(self) -> None:
        owner = "ReactiveConfig"
        target = self.target_tpm_per_instance
        _require(
            _is_number(target) and 0 < target <= MAX_TARGET_TPM,
            owner,
            "target_tpm_per_instance",
            f"in (0, {MAX_TARGET_TPM}]",
            target,
        )
        check_scale_up_threshold(owner, self.scale_up_threshold)
        for name in ("min_replicas", "max_replicas"):
            value = getattr(self, name)
            _require(
                _is_count(value) and 0 <= value <= MAX_REPLICAS_LIMIT,
                owner,
                name,
                f"an integer in [0, {MAX_REPLICAS_LIMIT}]",
                value,
            )
        _require(
            self.max_replicas >= 1, owner, "max_replicas", f"in [1, {MAX_REPLICAS_LIMIT}]", self.max_replicas
        )
        _require(
            self.min_replicas <= self.max_replicas,
            owner,
            "min_replicas",
            f"<= max_replicas={self.max_replicas}",
            self.min_replicas,
        )
        _require(
            _is_number(self.tolerance) and 0 <= self.tolerance < 1,
            owner,
            "tolerance",
            "in [0, 1)",
            self.tolerance,
        )
        _require(
            _is_number(self.headroom) and 0 <= self.headroom < 1,
            owner,
            "headroom",
            "in [0, 1)",
            self.headroom,
        )
        for name in (
            "scale_up_stabilization_s",
            "scale_down_stabilization_s",
            "scale_up_cooldown_s",
            "scale_down_cooldown_s",
        ):
            _require_seconds(owner, name, getattr(self, name))
        for name in ("scale_up_period_s", "scale_down_period_s"):
            _require_seconds(owner, name, getattr(self, name), positive=True)
        for name in ("scale_up_max_pods", "scale_down_max_pods"):
            value = getattr(self, name)
            _require(
                value is None or (_is_count(value) and 1 <= value <= MAX_REPLICAS_LIMIT),
                owner,
                name,
                f"None or an integer in [1, {MAX_REPLICAS_LIMIT}]",
                value,
            )
        _require(
            self.scale_up_max_percent is None
            or (_is_number(self.scale_up_max_percent) and self.scale_up_max_percent > 0),
            owner,
            "scale_up_max_percent",
            "None or a number > 0",
            self.scale_up_max_percent,
        )
        _require(
            self.scale_down_max_percent is None
            or (_is_number(self.scale_down_max_percent) and 0 < self.scale_down_max_percent <= 100),
            owner,
            "scale_down_max_percent",
            "None or in (0, 100]",
            self.scale_down_max_percent,
        )

    @property
    def effective_target_tpm(self) -> float:
        """The load one instance should carry once the headroom is set aside."""
        return self.target_tpm_per_instance * (1.0 - self.headroom)

    @property
    def capacity_tpm_per_instance(self) -> float:
        """What one instance can carry: target / scale_up_threshold."""
        return capacity_tpm(self.target_tpm_per_instance, self.scale_up_threshold)

    def clamp(self, replicas: int) -> int:
        """`replicas` brought into MIN..MAX."""
        return max(self.min_replicas, min(self.max_replicas, replicas))


class _ChangeLog:
    """The changes a policy decided, for per-period step limits and cooldowns.

    Like the HPA, a policy remembers its own decisions (not observed counts): the replicas at the
    start of a period are the current ones minus the changes decided strictly inside it.
    """

    __slots__ = ("_config", "_downs", "_horizon_s", "_ups", "last_change_s", "last_up_s")

    def __init__(self, config: ReactiveConfig) -> None:
        self._config = config
        self._ups: deque[tuple[float, int]] = deque()
        self._downs: deque[tuple[float, int]] = deque()
        self._horizon_s = max(config.scale_up_period_s, config.scale_down_period_s)
        self.last_up_s: float | None = None
        self.last_change_s: float | None = None

    @staticmethod
    def _within(events: deque[tuple[float, int]], now_s: float, period_s: float) -> int:
        cutoff = now_s - period_s
        return sum(change for at_s, change in events if at_s > cutoff)

    def _period_start(self, now_s: float, current: int, period_s: float) -> int:
        return current - self._within(self._ups, now_s, period_s) + self._within(self._downs, now_s, period_s)

    def scale_up_limit(self, now_s: float, current: int) -> int | None:
        """The most replicas a scale-up may reach now; None when unlimited."""
        cfg = self._config
        start = self._period_start(now_s, current, cfg.scale_up_period_s)
        allowed: list[int] = []
        if cfg.scale_up_max_pods is not None:
            allowed.append(start + cfg.scale_up_max_pods)
        if cfg.scale_up_max_percent is not None:
            allowed.append(math.ceil(start * (1 + cfg.scale_up_max_percent / 100)))
        return max(current, max(allowed)) if allowed else None

    def scale_down_limit(self, now_s: float, current: int) -> int | None:
        """The fewest replicas a scale-down may reach now; None when unlimited."""
        cfg = self._config
        start = self._period_start(now_s, current, cfg.scale_down_period_s)
        allowed: list[int] = []
        if cfg.scale_down_max_pods is not None:
            allowed.append(start - cfg.scale_down_max_pods)
        if cfg.scale_down_max_percent is not None:
            allowed.append(int(start * (1 - cfg.scale_down_max_percent / 100)))
        return min(current, min(allowed)) if allowed else None

    def record(self, now_s: float, current: int, desired: int) -> None:
        if desired == current:
            return
        if desired > current:
            self._ups.append((now_s, desired - current))
            self.last_up_s = now_s
        else:
            self._downs.append((now_s, current - desired))
        self.last_change_s = now_s
        cutoff = now_s - self._horizon_s
        for events in (self._ups, self._downs):
            while events and events[0][0] <= cutoff:
                events.popleft()


def _apply_limits(
    config: ReactiveConfig,
    changes: _ChangeLog,
    now_s: float,
    current: int,
    wanted: int,
    guards: ScaleGuards,
    *,
    scale_down_cooldown_s: float,
) -> tuple[int, ScalingRule | None, str]:
    """Bounds, guards, cooldowns and step limits on a wanted count.

    Returns the count to ask for, the rule that bound it (None when nothing did) and a note.
    """
    target = config.clamp(wanted)
    if not config.min_replicas <= current <= config.max_replicas:
        return (
            target,
            ScalingRule.BOUNDS,
            f"current {current} outside {config.min_replicas}..{config.max_replicas}",
        )
    bound: ScalingRule | None = ScalingRule.BOUNDS if target != wanted else None
    note = f"clamped to {config.min_replicas}..{config.max_replicas}" if bound else ""
    if target > current:
        last_up = changes.last_up_s
        if last_up is not None and now_s - last_up < config.scale_up_cooldown_s:
            return (
                current,
                ScalingRule.COOLDOWN,
                f"scale-up cooldown until +{config.scale_up_cooldown_s:.0f}s",
            )
        limit = changes.scale_up_limit(now_s, current)
        if limit is not None and target > limit:
            return limit, ScalingRule.RATE_LIMITED, f"scale-up limited to {limit} this period"
    elif target < current:
        if guards.blocks_scale_down:
            return current, ScalingRule.GUARD, f"scale-down blocked: {guards.describe()}"
        last_change = changes.last_change_s
        if last_change is not None and now_s - last_change < scale_down_cooldown_s:
            return (
                current,
                ScalingRule.COOLDOWN,
                f"scale-down cooldown ({scale_down_cooldown_s:.0f}s after a change)",
            )
        limit = changes.scale_down_limit(now_s, current)
        if limit is not None and target < limit:
            return limit, ScalingRule.RATE_LIMITED, f"scale-down limited to {limit} this period"
    return target, bound, note


class ReactivePolicy:
    """The HPA algorithm on measured TPM: react to the load of now, within the tolerance band.

    Why keep it: it is the baseline behaviour operators know, it handles load no forecast
    foresaw, and `PredictivePolicy` uses its recommendation as the floor of every scale-up.
    """

    name: str = "reactive"

    def __init__(self, config: ReactiveConfig | None = None) -> None:
        self.config = config if config is not None else ReactiveConfig()
        self._recommendations = RecommendationHistory(
            max(self.config.scale_up_stabilization_s, self.config.scale_down_stabilization_s)
        )
        self._changes = _ChangeLog(self.config)
        self._time = _MonotonicTime()

    def raw_recommendation(self, load_tpm: float, current_replicas: int) -> tuple[int, float]:
        """`(replicas, ratio)`: what the load of now calls for, before windows and limits.

        Inside the tolerance band the answer is `current_replicas` (not clamped to MIN..MAX).
        """
        per_instance = self.config.effective_target_tpm
        if current_replicas <= 0:
            return _ceil(load_tpm / per_instance), math.inf if load_tpm > 0 else 0.0
        ratio = load_tpm / (current_replicas * per_instance)
        if abs(ratio - 1.0) <= self.config.tolerance:
            return current_replicas, ratio
        return _ceil(load_tpm / per_instance), ratio

    def stabilize(self, now_s: float, raw: int, current_replicas: int) -> int:
        """Record `raw` and bring `current_replicas` within the windows' lowest and highest."""
        cfg = self.config
        up_cutoff = now_s - cfg.scale_up_stabilization_s
        down_cutoff = now_s - cfg.scale_down_stabilization_s
        history = self._recommendations
        history.add(now_s, raw)  # first, so the horizon's pruning leaves the longest window whole
        lowest = history.lowest_since(up_cutoff, raw)
        highest = history.highest_since(down_cutoff, raw)
        return min(max(current_replicas, lowest), highest)

    def decide(
        self, now_s: float, load_tpm: float, current_replicas: int, guards: ScaleGuards = NO_GUARDS
    ) -> tuple[int, ScalingRule, int, float, int, str]:
        """The decision without its explanation: `(desired, rule, raw, ratio, stabilized, note)`.

        Records the decision (windows, step limits, cooldowns) like `recommend`; arguments are
        not checked. `PredictivePolicy` runs a shadow reactive policy through this.
        """
        cfg = self.config
        raw, ratio = self.raw_recommendation(load_tpm, current_replicas)
        stabilized = self.stabilize(now_s, raw, current_replicas)
        desired, bound, note = _apply_limits(
            cfg,
            self._changes,
            now_s,
            current_replicas,
            stabilized,
            guards,
            scale_down_cooldown_s=cfg.scale_down_cooldown_s,
        )
        if bound is not None:
            rule = bound
        elif desired > current_replicas:
            rule = ScalingRule.REACTIVE_UP
        elif desired < current_replicas:
            rule = ScalingRule.REACTIVE_DOWN
        elif raw != current_replicas and stabilized == current_replicas:
            rule = ScalingRule.STABILIZED
        elif raw == current_replicas and current_replicas > 0:
            rule = ScalingRule.WITHIN_TOLERANCE
        else:
            rule = ScalingRule.HOLD
        self._changes.record(now_s, current_replicas, desired)
        return desired, rule, raw, ratio, stabilized, note

    def recommend(
        self,
        now_s: float,
        load_tpm: float,
        current_replicas: int,
        ready_replicas: int,
        guards: ScaleGuards = NO_GUARDS,
    ) -> ScalingDecision:
        check_inputs(now_s, load_tpm, current_replicas, ready_replicas)
        self._time.advance(now_s)
        cfg = self.config
        desired, rule, raw, ratio, stabilized, note = self.decide(now_s, load_tpm, current_replicas, guards)
        reason = (
            f"load {load_tpm:.1f} tpm on {min(ready_replicas, current_replicas)}/{current_replicas} ready "
            f"(ratio {ratio:.2f} to {cfg.effective_target_tpm:g} tpm/instance, tolerance {cfg.tolerance:g})"
            f" -> {raw}, stabilised {stabilized}, desired {desired}"
        )
        if note:
            reason += f" ({note})"
        return ScalingDecision(
            desired_replicas=desired,
            current_replicas=current_replicas,
            rule=rule,
            reason=reason,
            inputs={
                "load_tpm": load_tpm,
                "current_replicas": current_replicas,
                "ready_replicas": ready_replicas,
                "target_tpm_per_instance": cfg.target_tpm_per_instance,
                "ratio": ratio,
                "raw_recommendation": raw,
                "stabilized": stabilized,
            },
        )
