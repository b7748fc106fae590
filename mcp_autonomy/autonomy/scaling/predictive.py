"""The predictive policy: scale ahead of the load it has learned to expect, down when worth it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from mcp_autonomy.autonomy.scaling.cost import (
    _COST_BUCKET_S,
    DEFAULT_COST_BUDGET,
    DEFAULT_COST_GAIN,
    DEFAULT_COST_WINDOW_S,
    DEFAULT_MAX_SAFETY_QUANTILE,
    DEFAULT_MIN_SAFETY_QUANTILE,
    CostMatcher,
)
from mcp_autonomy.autonomy.scaling.decision import (
    NO_GUARDS,
    SECONDS_PER_DAY,
    SECONDS_PER_WEEK,
    ScaleGuards,
    ScalingDecision,
    ScalingRule,
    _ceil,
    _is_number,
    _MonotonicTime,
    _require,
    _require_seconds,
    check_inputs,
)
from mcp_autonomy.autonomy.scaling.forecast import ForecastConfig, LoadForecaster
from mcp_autonomy.autonomy.scaling.reactive import ReactiveConfig, ReactivePolicy, _apply_limits, _ChangeLog

DEFAULT_STARTUP_S: Final = 60.0  # time from "replica added" to "replica ready and serving"
DEFAULT_LEAD_MARGIN_S: Final = 60.0  # look this much past the start-up time (one metric interval+)
DEFAULT_SCALE_DOWN_HOLD_S: Final = 600.0  # the forecast must stay low this long to remove a pod
DEFAULT_SCALE_DOWN_HYSTERESIS: Final = 0.0  # remove at least this fraction (and >= 1 pod) at once
DEFAULT_PREDICTIVE_DOWN_COOLDOWN_S: Final = 60.0  # no predictive scale-down this soon after a change


@dataclass(frozen=True, slots=True)
class PredictiveConfig:
    """The predictive policy's knobs; bounds, target and step limits live in `reactive`.

    Scale-up provisions for the highest forecast within `startup_s + lead_margin_s`, plus the
    forecaster's safety margin. Scale-down goes to what the forecast needs over the next
    `scale_down_hold_s` (the time a pod must stay unneeded for its removal to be worth its later
    start-up), only if that removes at least `scale_down_hysteresis` of the replicas (and at least
    one), and not within `scale_down_cooldown_s` of the previous change. With `cost_budget` set,
    the safety quantile starts at `forecast.safety_quantile` and is moved hourly (by `cost_gain`,
    within [`min_safety_quantile`, `max_safety_quantile`]) so that the spend over the last
    `cost_window_s` is `cost_budget` x the reactive policy's; None keeps the quantile fixed.
    """

    reactive: ReactiveConfig = field(default_factory=ReactiveConfig)
    forecast: ForecastConfig = field(default_factory=ForecastConfig)
    startup_s: float = DEFAULT_STARTUP_S
    lead_margin_s: float = DEFAULT_LEAD_MARGIN_S
    scale_down_hold_s: float = DEFAULT_SCALE_DOWN_HOLD_S
    scale_down_hysteresis: float = DEFAULT_SCALE_DOWN_HYSTERESIS
    scale_down_cooldown_s: float = DEFAULT_PREDICTIVE_DOWN_COOLDOWN_S
    cost_budget: float | None = DEFAULT_COST_BUDGET
    cost_window_s: float = DEFAULT_COST_WINDOW_S
    cost_gain: float = DEFAULT_COST_GAIN
    min_safety_quantile: float = DEFAULT_MIN_SAFETY_QUANTILE
    max_safety_quantile: float = DEFAULT_MAX_SAFETY_QUANTILE

    def __post_init__(self) -> None:
        owner = "PredictiveConfig"
        _require(
            self.cost_budget is None or (_is_number(self.cost_budget) and 0.5 <= self.cost_budget <= 10),
            owner,
            "cost_budget",
            "None (fixed safety quantile) or in [0.5, 10]",
            self.cost_budget,
        )
        _require(
            _is_number(self.cost_window_s) and _COST_BUCKET_S <= self.cost_window_s <= 30 * SECONDS_PER_DAY,
            owner,
            "cost_window_s",
            f"in [{_COST_BUCKET_S:g}, {30 * SECONDS_PER_DAY}] seconds",
            self.cost_window_s,
        )
        _require(
            _is_number(self.cost_gain) and 0 < self.cost_gain <= 100,
            owner,
            "cost_gain",
            "in (0, 100]",
            self.cost_gain,
        )
        _require(
            _is_number(self.min_safety_quantile)
            and _is_number(self.max_safety_quantile)
            and 0.5 <= self.min_safety_quantile <= self.max_safety_quantile < 1,
            owner,
            "min_safety_quantile",
            f"in [0.5, max_safety_quantile={self.max_safety_quantile!r}] (and max < 1)",
            self.min_safety_quantile,
        )
        _require(
            isinstance(self.reactive, ReactiveConfig), owner, "reactive", "a ReactiveConfig", self.reactive
        )
        _require(
            isinstance(self.forecast, ForecastConfig), owner, "forecast", "a ForecastConfig", self.forecast
        )
        for name in ("startup_s", "lead_margin_s", "scale_down_cooldown_s"):
            _require_seconds(owner, name, getattr(self, name))
        _require(
            _is_number(self.startup_s) and self.startup_s <= SECONDS_PER_DAY,
            owner,
            "startup_s",
            "in [0, 86400] seconds",
            self.startup_s,
        )
        _require(
            _is_number(self.scale_down_hold_s)
            and self.startup_s <= self.scale_down_hold_s <= SECONDS_PER_WEEK,
            owner,
            "scale_down_hold_s",
            f"in [startup_s={self.startup_s:g}, 604800] seconds",
            self.scale_down_hold_s,
        )
        _require(
            _is_number(self.scale_down_hysteresis) and 0 <= self.scale_down_hysteresis < 1,
            owner,
            "scale_down_hysteresis",
            "in [0, 1)",
            self.scale_down_hysteresis,
        )

    @property
    def up_horizon_s(self) -> float:
        """How far ahead a scale-up looks: one pod start-up plus the margin."""
        return self.startup_s + self.lead_margin_s


class PredictivePolicy:
    """Scales ahead of the load it has learned to expect, and down only when it is worth it.

    Each call feeds the load to a `LoadForecaster` (learned daily/weekly profiles, an optional
    prior, or persistence when the load has no shape), then:

    - scale-up: to the larger of the reactive recommendation (the load of now) and
      `ceil((peak forecast within startup_s + lead_margin_s) + headroom) / target)`, so pods are
      ready when the forecast peak arrives and a surprise spike still gets the reactive answer;
      the headroom is the safety quantile of past forecast errors at that load level;
    - scale-down: to the larger of what the load of now needs and what the forecast (with its
      headroom) needs over the next `scale_down_hold_s`, only when that removes at least the
      hysteresis, after the cooldown, and never while `guards` block it;
    - never outside MIN..MAX, within the reactive config's step limits;
    - with a cost budget, the safety quantile is the `CostMatcher`'s.

    Until a model has been scored `min_residuals` times, the reactive policy decides alone.
    """

    name: str = "predictive"

    def __init__(self, config: PredictiveConfig | None = None) -> None:
        self.config = config if config is not None else PredictiveConfig()
        self.reactive = ReactivePolicy(self.config.reactive)
        self.forecaster = LoadForecaster(
            self.config.forecast,
            lead_s=self.config.startup_s,
            floor_tpm=self.config.reactive.target_tpm_per_instance,
        )
        self._changes = _ChangeLog(self.config.reactive)
        self._time = _MonotonicTime()
        self.cost = CostMatcher(self.config) if self.config.cost_budget is not None else None

    @property
    def safety_quantile(self) -> float:
        """The quantile of forecast errors provisioned for now (moved by the cost budget)."""
        return self.cost.quantile if self.cost is not None else self.config.forecast.safety_quantile

    def _replicas_for(self, forecast_tpm: float, headroom: float) -> int:
        """Instances for a forecast plus its safety margin (relative to max(forecast, one target))."""
        reactive = self.config.reactive
        margin = headroom * max(forecast_tpm, reactive.target_tpm_per_instance)
        return _ceil((forecast_tpm + margin) / reactive.effective_target_tpm)

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
        rcfg = cfg.reactive
        self.forecaster.observe(now_s, load_tpm)
        if self.cost is not None:
            self.cost.observe(now_s, load_tpm, current_replicas, paused=guards.blocks_scale_down)
        quantile = self.safety_quantile
        raw, ratio = self.reactive.raw_recommendation(load_tpm, current_replicas)
        stabilized = self.reactive.stabilize(now_s, raw, current_replicas)
        outlook = self.forecaster.outlook(now_s, cfg.up_horizon_s, cfg.scale_down_hold_s, quantile)
        inputs: dict[str, float | int | str] = {
            "load_tpm": load_tpm,
            "current_replicas": current_replicas,
            "ready_replicas": ready_replicas,
            "target_tpm_per_instance": rcfg.target_tpm_per_instance,
            "ratio": ratio,
            "reactive_recommendation": raw,
            "reactive_stabilized": stabilized,
        }
        down_cooldown_s = rcfg.scale_down_cooldown_s
        if outlook is None:
            wanted = stabilized
            basis = f"forecaster warming up ({self.forecaster.learned_days():.0%} of a day learned): reactive"
            up_rule, down_rule = ScalingRule.REACTIVE_UP, ScalingRule.REACTIVE_DOWN
            preliminary: ScalingRule | None = None
        else:
            down_cooldown_s = max(down_cooldown_s, cfg.scale_down_cooldown_s)
            predicted_up = self._replicas_for(outlook.peak_up_tpm, outlook.headroom_up)
            predicted_hold = self._replicas_for(outlook.peak_hold_tpm, outlook.headroom_hold)
            inputs.update(
                model=outlook.model,
                nowcast_tpm=outlook.nowcast_tpm,
                forecast_peak_up_tpm=outlook.peak_up_tpm,
                forecast_peak_hold_tpm=outlook.peak_hold_tpm,
                headroom=outlook.headroom_up,
                safety_quantile=quantile,
                predictive_up=predicted_up,
                predictive_hold=predicted_hold,
            )
            basis = (
                f"forecast ({outlook.model}) peak {outlook.peak_up_tpm:.1f} tpm within {cfg.up_horizon_s:.0f}s"
                f" -> {predicted_up}, {outlook.peak_hold_tpm:.1f} tpm within {cfg.scale_down_hold_s:.0f}s"
                f" -> {predicted_hold} (headroom +{outlook.headroom_up:.0%} at q{quantile:.2f})"
            )
            preliminary = None
            up_target = max(stabilized, predicted_up)
            if up_target > current_replicas:
                wanted = up_target
                up_rule = ScalingRule.PREDICTIVE_UP if predicted_up >= stabilized else ScalingRule.REACTIVE_UP
                down_rule = ScalingRule.PREDICTIVE_DOWN
            else:
                up_rule = ScalingRule.REACTIVE_UP
                down_rule = ScalingRule.PREDICTIVE_DOWN
                needed_now = _ceil(load_tpm / rcfg.effective_target_tpm)
                down_target = max(predicted_hold, needed_now, rcfg.min_replicas)
                step = current_replicas - down_target
                if step <= 0:
                    wanted = current_replicas
                elif step < max(1, math.ceil(cfg.scale_down_hysteresis * current_replicas)):
                    wanted = current_replicas
                    preliminary = ScalingRule.NOT_WORTH_IT
                    basis += f"; removing {step} not worth it"
                else:
                    wanted = down_target
        desired, bound, note = _apply_limits(
            rcfg,
            self._changes,
            now_s,
            current_replicas,
            wanted,
            guards,
            scale_down_cooldown_s=down_cooldown_s,
        )
        if bound is not None:
            rule = bound
        elif desired > current_replicas:
            rule = up_rule
        elif desired < current_replicas:
            rule = down_rule
        elif preliminary is not None:
            rule = preliminary
        elif outlook is None and raw != current_replicas and stabilized == current_replicas:
            rule = ScalingRule.STABILIZED
        elif raw == current_replicas and current_replicas > 0 and outlook is None:
            rule = ScalingRule.WITHIN_TOLERANCE
        else:
            rule = ScalingRule.HOLD
        self._changes.record(now_s, current_replicas, desired)
        reason = (
            f"load {load_tpm:.1f} tpm on {min(ready_replicas, current_replicas)}/{current_replicas} ready "
            f"(ratio {ratio:.2f} to {rcfg.effective_target_tpm:g} tpm/instance) -> reactive {raw}; {basis}; "
            f"desired {desired}"
        )
        if note:
            reason += f" ({note})"
        return ScalingDecision(
            desired_replicas=desired,
            current_replicas=current_replicas,
            rule=rule,
            reason=reason,
            inputs=inputs,
        )
