"""The predictive policy: provision for a high quantile of the load expected one pod start-up ahead.

`PredictivePolicy` forecasts the peak load of the next window (the best of learned weekly/daily
profiles and persistence, see `forecast`), adds the calibrated quantile of its own past errors,
and runs enough instances to carry that at capacity. A shadow reactive rule (the HPA's) is
replayed beside it (`cost.ShadowLedger`); where the forecast has not beaten that rule lately, in
minutes short and in spend, the policy does what the rule does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from mcp_autonomy.autonomy.scaling.cadence import LoadCadence
from mcp_autonomy.autonomy.scaling.cost import (
    _COST_BUCKET_S,
    DEFAULT_COST_BUDGET,
    DEFAULT_COST_GAIN,
    DEFAULT_COST_WINDOW_S,
    DEFAULT_MAX_SAFETY_QUANTILE,
    DEFAULT_MIN_SAFETY_QUANTILE,
    DEFAULT_MIN_TRUST_HOURS,
    CostMatcher,
    CounterfactualReplicas,
    ShadowLedger,
)
from mcp_autonomy.autonomy.scaling.decision import (
    NO_GUARDS,
    SECONDS_PER_DAY,
    SECONDS_PER_WEEK,
    ScaleGuards,
    ScalingDecision,
    ScalingRule,
    _ceil,
    _is_count,
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
DEFAULT_SCALE_DOWN_HOLD_S: Final = 300.0  # the forecast must stay low this long to remove a pod
# (as long as the HPA's own scale-down stabilisation window)
DEFAULT_SCALE_DOWN_HYSTERESIS: Final = 0.0  # remove at least this fraction (and >= 1 pod) at once
DEFAULT_PREDICTIVE_DOWN_COOLDOWN_S: Final = 60.0  # no predictive scale-down this soon after a change
WARM_UP_DECIDE_S: Final = 2 * SECONDS_PER_DAY  # recorded load replayed through the decisions (the
# ledger's day of record, and a day for the cost quantile to settle); older samples teach the forecaster
WARM_UP_STEP_S: Final = 15.0  # the engine's scaling loop interval (MCP_AUTONOMY_SCALING_INTERVAL_MS default)
_MAX_HOLD_S: Final = 300.0  # a recorded value stands this long at most (longer: the engine was down)
DEFAULT_SURPRISE_HOLD_S: Final = 300.0  # after a load above the forecast band, the reactive floor
# holds this long: the HPA's own scale-down stabilisation window


@dataclass(frozen=True, slots=True)
class PredictiveConfig:
    """The predictive policy's knobs; bounds, target and step limits live in `reactive`.

    Scale-up provisions for the highest forecast within `startup_s + lead_margin_s`, plus the
    forecaster's safety margin. Scale-down goes to what the forecast needs over the next
    `scale_down_hold_s` (the time a pod must stay unneeded for its removal to be worth its later
    start-up), only if that removes at least `scale_down_hysteresis` of the replicas (and at least
    one), and not within `scale_down_cooldown_s` of the previous change. Both provision against
    an instance's capacity (`reactive.capacity_tpm_per_instance`), not its target: the forecast's
    safety margin replaces the HPA's blanket headroom. With `cost_budget` set, the safety quantile
    starts at `forecast.safety_quantile` and is lowered after every hour in which the forecast
    would have spent more than (just under) `cost_budget` x the reactive rule, raised after one in
    which it would have spent less, by `cost_gain` x that hour's over- or underspend
    (`cost.CostMatcher`, within [`min_safety_quantile`, `max_safety_quantile`]): its total spend
    tracks the budget. The budget is also a ceiling: while what the deployment ran as the forecast
    decided, over the last week, exceeds `cost_budget` x the reactive rule
    (`ShadowLedger.over_budget`), the trusted forecast runs no more than the reactive rule's count. None keeps the quantile fixed. With `fall_back_to_reactive`, the forecast
    acts only while, over that window (and at least `min_trust_hours`), it would have been short of capacity no
    longer than the reactive rule at no more than the budget; otherwise the reactive rule decides.
    With `cadence_aware`, a load metric that updates less often than a pod start-up plus the
    margin (a per-5-minute or half-hourly figure, `cadence.LoadCadence`) is provisioned for what
    carries it now while no update can come, and for the forecast plus how far updates have
    risen past it (their safety quantile, at this load level) where one may. A reading that has
    not moved for five update intervals (`LoadCadence.stale`) is not learned from, so the
    forecast carries on through a stopped metric.
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
    surprise_hold_s: float = DEFAULT_SURPRISE_HOLD_S
    fall_back_to_reactive: bool = True
    min_trust_hours: int = DEFAULT_MIN_TRUST_HOURS
    cadence_aware: bool = True

    def __post_init__(self) -> None:
        owner = "PredictiveConfig"
        _require(isinstance(self.cadence_aware, bool), owner, "cadence_aware", "a bool", self.cadence_aware)
        _require(
            isinstance(self.fall_back_to_reactive, bool),
            owner,
            "fall_back_to_reactive",
            "a bool",
            self.fall_back_to_reactive,
        )
        _require(
            _is_count(self.min_trust_hours) and 1 <= self.min_trust_hours <= self.cost_window_s // 3600,
            owner,
            "min_trust_hours",
            f"an integer in [1, cost_window_s / 3600 = {self.cost_window_s // 3600:g}]",
            self.min_trust_hours,
        )
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
        for name in ("startup_s", "lead_margin_s", "scale_down_cooldown_s", "surprise_hold_s"):
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
    """Provisions for a high quantile of the load expected over the next pod start-up.

    Each call feeds the load to a `LoadForecaster` (learned daily/weekly profiles, an optional
    prior, or persistence when the load has no shape) and computes the candidate count:

    - scale-up: `ceil(max(peak forecast within startup_s + lead_margin_s, load now) x (1 +
      headroom) / capacity)`, the headroom being the safety quantile of the forecaster's past
      errors at that load level, so pods are ready when the forecast peak arrives and a load
      already above the forecast is provisioned for at once;
    - scale-down: to the same figure over the next `scale_down_hold_s`, after the cooldown, and
      never while `guards` block it;

    then, unless the forecast is trusted (see `PredictiveConfig.fall_back_to_reactive`), follows
    the shadow reactive rule instead, and never runs more than that rule while the forecast's
    spending is over its cost budget for the week. Always within MIN..MAX and the reactive config's step
    limits. Until the forecaster has scored `min_residuals` forecasts, the reactive rule decides.
    """

    name: str = "predictive"

    def __init__(self, config: PredictiveConfig | None = None) -> None:
        self.config = config if config is not None else PredictiveConfig()
        cfg = self.config
        self.reactive = ReactivePolicy(cfg.reactive)
        self.forecaster = LoadForecaster(
            cfg.forecast,
            lead_s=cfg.startup_s,
            floor_tpm=cfg.reactive.target_tpm_per_instance,
        )
        self._changes = _ChangeLog(cfg.reactive)
        self._time = _MonotonicTime()
        self.ledger = ShadowLedger(
            cfg.reactive,
            startup_s=cfg.startup_s,
            window_s=cfg.cost_window_s,
            cost_budget=cfg.cost_budget if cfg.cost_budget is not None else math.inf,
            min_trust_hours=cfg.min_trust_hours,
        )
        self.cost = (
            CostMatcher(
                cost_budget=cfg.cost_budget,
                cost_gain=cfg.cost_gain,
                start_quantile=cfg.forecast.safety_quantile,
                min_quantile=cfg.min_safety_quantile,
                max_quantile=cfg.max_safety_quantile,
            )
            if cfg.cost_budget is not None
            else None
        )
        self._candidate: int | None = None
        self._forecast_acting = False  # whether the forecast decided the last call's count
        self._surprise_until_s = -math.inf
        self.cadence = LoadCadence()
        self._prepared_for_tpm: float | None = None

    @property
    def safety_quantile(self) -> float:
        """The quantile of forecast errors provisioned for now (moved by the cost budget)."""
        return self.cost.quantile if self.cost is not None else self.config.forecast.safety_quantile

    @property
    def forecast_trusted(self) -> bool:
        """Whether the forecast decides now (False: the reactive rule does)."""
        return self.ledger.trusted or not self.config.fall_back_to_reactive

    def _replicas_for(self, forecast_tpm: float, headroom: float) -> int:
        """Instances that carry a forecast plus its safety margin at capacity.

        The margin never exceeds the reactive rule's own headroom (capacity / target - 1, +25 %
        at a threshold of 0.8): past that the forecast would buy what the reactive rule buys
        anyway, at a higher price. Bursts beyond it are the surprise floor's job.
        """
        reactive = self.config.reactive
        headroom = min(headroom, 1.0 / reactive.scale_up_threshold - 1.0)
        margin = headroom * max(forecast_tpm, reactive.target_tpm_per_instance)
        return reactive.clamp(_ceil((forecast_tpm + margin) / reactive.capacity_tpm_per_instance))

    def _replicas_at_change(self, load_tpm: float, headroom: float) -> int:
        """Instances that carry `load_tpm` plus `headroom` at capacity, the margin up to `max_headroom`.

        Used where the load metric may update within the horizon: its changes come all at once,
        so the reactive rule's blanket headroom is no cap (it would be short for a pod start-up).
        """
        reactive = self.config.reactive
        headroom = min(max(headroom, 0.0), self.config.forecast.max_headroom)
        return reactive.clamp(_ceil(load_tpm * (1.0 + headroom) / reactive.capacity_tpm_per_instance))

    def warm_up(self, samples: Iterable[tuple[float, float]], *, step_s: float = WARM_UP_STEP_S) -> int:
        """Learn from recorded load as if the policy had been deciding on it; returns samples used.

        Why: the forecast acts only once the shadow ledger has seen it beat the reactive rule for
        `min_trust_hours` (and its safety quantile has settled), so a policy that learnt only the
        forecaster's profiles after a restart would follow the reactive rule for hours after
        every deploy. The samples, (epoch seconds, tpm) oldest first, teach the forecaster; the
        last `WARM_UP_DECIDE_S` of them also go through `recommend` every `step_s` (the live
        loop's interval: each sample's value held until the next, for at most `_MAX_HOLD_S`) on
        a simulated deployment (pods ready one `startup_s` after they are added, as the ledger
        counts them), so the load cadence, the ledger and the cost matcher carry on from the
        record too. Deciding once per recorded minute instead would misjudge the forecast (on
        load with 15-minute jobs its spend came out at 1.35x the HPA's instead of 0.80x). A
        full replay of two weeks would hold up the start for seconds. The step limits, cooldowns
        and the reactive rule's stabilisation window are then reset: they held simulated
        changes, not the deployment's. Malformed samples (negative or non-finite) and samples not
        later than the previous one are skipped.
        """
        _require(
            _is_number(step_s) and 1 <= step_s <= 3600, "warm_up", "step_s", "in [1, 3600] seconds", step_s
        )
        valid: list[tuple[float, float]] = []
        for at_s, load_tpm in samples:
            at_s, load_tpm = float(at_s), float(load_tpm)
            well_formed = math.isfinite(at_s) and math.isfinite(load_tpm) and load_tpm >= 0
            if well_formed and (not valid or at_s > valid[-1][0]):
                valid.append((at_s, load_tpm))
        if not valid:
            return 0
        rcfg = self.config.reactive
        decide_from_s = valid[-1][0] - WARM_UP_DECIDE_S
        pods: CounterfactualReplicas | None = None
        for index, (at_s, load_tpm) in enumerate(valid):
            if at_s < decide_from_s:
                self.forecaster.observe(at_s, load_tpm)
                continue
            if pods is None:
                pods = CounterfactualReplicas(
                    self.config.startup_s, rcfg.clamp(_ceil(load_tpm / rcfg.target_tpm_per_instance))
                )
            until_s = valid[index + 1][0] if index + 1 < len(valid) else at_s + step_s
            until_s = min(until_s, at_s + _MAX_HOLD_S)
            now_s = at_s
            while now_s < until_s:
                current = pods.replicas
                decision = self.recommend(now_s, load_tpm, current, min(current, pods.ready(now_s)))
                pods.set(now_s, decision.desired_replicas)
                now_s += step_s
        self._changes = _ChangeLog(rcfg)
        self.reactive = ReactivePolicy(rcfg)
        return len(valid)

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
        if self.cadence.observe(now_s, load_tpm) and self._prepared_for_tpm is not None:
            prepared = max(self._prepared_for_tpm, rcfg.target_tpm_per_instance)
            self.cadence.record_change_size(
                load_tpm / prepared - 1.0, prepared / rcfg.target_tpm_per_instance
            )
        # A reading that stopped moving for many of its update intervals is a metric that stopped
        # reporting (a collector down, a hole in the trace), not the load: the forecaster does not
        # learn from it, so its level and the seasonal shape carry on until readings move again.
        stale = cfg.cadence_aware and self.cadence.stale(now_s)
        if not stale:
            self.forecaster.observe(now_s, load_tpm)
        ledger = self.ledger
        # Neither count is judged short against a stale reading (what it holds is not the load),
        # but what each spends meanwhile counts.
        closed = ledger.observe(
            now_s,
            load_tpm,
            current_replicas,
            paused=guards.blocks_scale_down,
            load_known=not stale,
            forecast_acting=self._forecast_acting,
        )
        if closed and self.cost:
            self.cost.adjust(ledger)
        shadow = ledger.shadow_replicas
        assert shadow is not None  # observe() has run
        over_budget = ledger.over_budget
        quantile = self.safety_quantile
        raw, ratio = self.reactive.raw_recommendation(load_tpm, current_replicas)
        stabilized = self.reactive.stabilize(now_s, raw, current_replicas)
        outlook = self.forecaster.outlook(now_s, cfg.up_horizon_s, cfg.scale_down_hold_s, quantile)
        inputs: dict[str, float | int | str] = {
            "load_tpm": load_tpm,
            "current_replicas": current_replicas,
            "ready_replicas": ready_replicas,
            "target_tpm_per_instance": rcfg.target_tpm_per_instance,
            "capacity_tpm_per_instance": rcfg.capacity_tpm_per_instance,
            "ratio": ratio,
            "reactive_recommendation": raw,
            "reactive_stabilized": stabilized,
            "shadow_replicas": shadow,
            "reading_stale": int(stale),
            "over_budget": int(over_budget),
        }
        down_cooldown_s = rcfg.scale_down_cooldown_s
        self._forecast_acting = False
        preliminary: ScalingRule | None = None
        up_rule, down_rule = ScalingRule.REACTIVE_UP, ScalingRule.REACTIVE_DOWN
        if outlook is None:
            wanted = stabilized
            basis = f"forecaster warming up ({self.forecaster.learned_days():.0%} of a day learned): reactive"
        else:
            expected_up = max(outlook.peak_up_tpm, load_tpm)
            expected_hold = max(outlook.peak_hold_tpm, load_tpm)
            self._prepared_for_tpm = expected_up
            cadenced = cfg.cadence_aware and self.cadence.known(cfg.up_horizon_s)
            level = max(expected_up, rcfg.target_tpm_per_instance) / rcfg.target_tpm_per_instance
            change_size = self.cadence.surprise_quantile(quantile, level) if cadenced else None
            if change_size is not None:
                # The load metric updates on a cadence longer than a pod start-up: until an update
                # may come the load cannot move, so what carries it now is enough; where one may
                # come, provision for how far updates have jumped past the forecast.
                quiet_up = not self.cadence.may_change_within(now_s, cfg.up_horizon_s)
                quiet_hold = not self.cadence.may_change_within(now_s, cfg.scale_down_hold_s)
                predicted_up = self._replicas_at_change(
                    load_tpm if quiet_up else expected_up, 0.0 if quiet_up else change_size
                )
                predicted_hold = self._replicas_at_change(
                    load_tpm if quiet_hold else expected_hold, 0.0 if quiet_hold else change_size
                )
                surprised = False
                inputs.update(
                    load_update_interval_s=self.cadence.interval_s or 0.0,
                    update_due_within_up=int(not quiet_up),
                    update_due_within_hold=int(not quiet_hold),
                    update_headroom=change_size,
                )
            else:
                predicted_up = self._replicas_for(expected_up, outlook.headroom_up)
                predicted_hold = self._replicas_for(expected_hold, outlook.headroom_hold)
                # A load above the forecast's own upper band is a surprise (a burst, a level
                # shift): the forecast is unreliable for a while, so the policy keeps at least what
                # the reactive rule, with its headroom, runs until the load has been back within
                # the band for `surprise_hold_s`.
                if load_tpm > outlook.peak_up_tpm * (1.0 + outlook.headroom_up):
                    self._surprise_until_s = now_s + cfg.surprise_hold_s
                surprised = now_s < self._surprise_until_s
            if surprised:
                predicted_up = max(predicted_up, shadow)
                predicted_hold = max(predicted_hold, shadow)
            previous = self._candidate if self._candidate is not None else current_replicas
            # What the forecast alone would run: up to the up-horizon figure, down only as far as
            # the hold horizon allows (the rule below, without limits and cooldowns).
            if predicted_up >= previous:
                self._candidate = predicted_up
            else:
                self._candidate = min(previous, max(predicted_hold, predicted_up))
            ledger.set_candidate(now_s, self._candidate)
            # Persistence forecasting best means the load has no pattern to exploit: the reactive
            # rule, with its headroom, is then what the policy runs, unless the load metric's
            # cadence is (between updates the load cannot move).
            trusted = self.forecast_trusted and (outlook.model != "flat" or change_size is not None)
            inputs.update(
                model=outlook.model,
                nowcast_tpm=outlook.nowcast_tpm,
                forecast_peak_up_tpm=outlook.peak_up_tpm,
                forecast_peak_hold_tpm=outlook.peak_hold_tpm,
                headroom=outlook.headroom_up,
                safety_quantile=quantile,
                predictive_up=predicted_up,
                predictive_hold=predicted_hold,
                forecast_trusted=int(trusted),
                surprised=int(surprised),
            )
            basis = (
                f"forecast ({outlook.model}) peak {outlook.peak_up_tpm:.1f} tpm within {cfg.up_horizon_s:.0f}s"
                f" -> {predicted_up}, {outlook.peak_hold_tpm:.1f} tpm within {cfg.scale_down_hold_s:.0f}s"
                f" -> {predicted_hold} (headroom +{outlook.headroom_up:.0%} at q{quantile:.3f},"
                f" capacity {rcfg.capacity_tpm_per_instance:g} tpm/instance)"
            )
            if change_size is not None:
                basis += (
                    f"; the load metric updates every {self.cadence.interval_s:.0f}s:"
                    f" {'an update may come' if inputs['update_due_within_up'] else 'no update'} within"
                    f" {cfg.up_horizon_s:.0f}s (updates rise up to +{max(change_size, 0.0):.0%} past the forecast)"
                )
            if stale:
                basis += (
                    f"; the reading has not changed for {now_s - (self.cadence.last_change_s or now_s):.0f}s"
                    " (a stopped metric): the forecast carries on without it"
                )
            if not trusted:
                # Following the reactive rule never removes pods the load needs by its own
                # arithmetic (the shadow may still be climbing towards it, rate-limited).
                wanted = shadow if shadow >= current_replicas else min(current_replicas, max(shadow, raw))
                basis += f"; forecast not ahead of the reactive rule lately: following it ({shadow})"
            else:
                self._forecast_acting = True
                down_cooldown_s = max(down_cooldown_s, cfg.scale_down_cooldown_s)
                up_rule, down_rule = ScalingRule.PREDICTIVE_UP, ScalingRule.PREDICTIVE_DOWN
                if predicted_up > current_replicas:
                    wanted = predicted_up
                else:
                    down_target = max(predicted_hold, predicted_up, rcfg.min_replicas)
                    step = current_replicas - down_target
                    if step <= 0:
                        wanted = current_replicas
                    elif step < max(1, math.ceil(cfg.scale_down_hysteresis * current_replicas)):
                        wanted = current_replicas
                        preliminary = ScalingRule.NOT_WORTH_IT
                        basis += f"; removing {step} not worth it"
                    else:
                        wanted = down_target
                if over_budget and wanted > shadow and not stale:
                    # The budget is a ceiling, not an aim: over it, run no more than the HPA would.
                    # Not while the reading is stale: the HPA's count then follows a frozen value.
                    wanted = max(shadow, rcfg.min_replicas)
                    preliminary = None
                    basis += (
                        f"; over the cost budget for the last week: no more than the reactive rule ({shadow})"
                    )
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
