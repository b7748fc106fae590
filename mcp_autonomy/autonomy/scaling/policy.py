"""Scaling policies: how many replicas the measured load calls for, now and one pod start-up ahead.

A policy is asked, every scaling tick, `recommend(now_s, load_tpm, current_replicas,
ready_replicas, guards)` and answers with a `ScalingDecision`: the desired replica count, the rule
that decided it and a reason that quotes the measured inputs. Policies read no clock: every
window, cooldown and forecast is driven by the `now_s` timestamps passed in, so a trace replay
gives the same decisions every run.

Two policies:

- `ReactivePolicy` is the Kubernetes HPA's arithmetic on our own load metric (TPM per instance):
  a tolerance band, separate scale-up and scale-down stabilisation windows, step limits in pods
  and percent per period, optional cooldowns, clamped to MIN..MAX. It only ever reacts, so with a
  pod start-up of a minute it is short of capacity on every rise of the load.
- `PredictivePolicy` learns daily and weekly profiles from the load it is shown (no schedule is
  hard-coded; the original module's weekday peaks are only an optional prior), provisions for the
  highest forecast within the next pod start-up plus a margin, adds a safety margin taken from a
  quantile of its own past forecast errors, and removes pods only when the forecast stays low for
  long enough to be worth it. Scale-up takes the larger of the reactive and the predictive
  counts, so a surprise spike is handled as fast as the reactive policy would. By default the
  safety quantile is steered so that the policy spends what the reactive policy would have spent
  (`CostMatcher`): the same money, spent ahead of the load instead of after it.

Callers that know better pass `ScaleGuards`: no scale-down while an incident is open or during a
maintenance window.
"""

from __future__ import annotations

import math
from bisect import bisect_right, insort
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable

from mcp_autonomy.config import MAX_REPLICAS_LIMIT, MAX_TARGET_TPM, Settings

# ---------------------------------------------------------------------------------------------
# Defaults. The replica bounds and the per-instance target come from `config.py`, the one source
# of truth for the settings operators set; the rest are this module's own.
# ---------------------------------------------------------------------------------------------

_SETTINGS_FIELDS = Settings.model_fields
DEFAULT_MIN_REPLICAS: Final[int] = int(_SETTINGS_FIELDS["min_instances"].default)
DEFAULT_MAX_REPLICAS: Final[int] = int(_SETTINGS_FIELDS["max_instances"].default)
DEFAULT_TARGET_TPM_PER_INSTANCE: Final[float] = float(_SETTINGS_FIELDS["target_tpm_per_instance"].default)

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

DEFAULT_STARTUP_S: Final = 60.0  # time from "replica added" to "replica ready and serving"
DEFAULT_LEAD_MARGIN_S: Final = 60.0  # look this much past the start-up time (one metric interval+)
DEFAULT_SCALE_DOWN_HOLD_S: Final = 600.0  # the forecast must stay low this long to remove a pod
DEFAULT_SCALE_DOWN_HYSTERESIS: Final = 0.0  # remove at least this fraction (and >= 1 pod) at once
DEFAULT_PREDICTIVE_DOWN_COOLDOWN_S: Final = 60.0  # no predictive scale-down this soon after a change
DEFAULT_COST_BUDGET: Final = 0.998  # the reactive spend, less the matcher's ~0.1 % overshoot
DEFAULT_COST_WINDOW_S: Final = 86_400.0  # spend is compared over the last day (a whole daily cycle)
DEFAULT_COST_GAIN: Final = 1.0  # safety-quantile log-odds moved per hour per unit of log overspend
DEFAULT_MIN_SAFETY_QUANTILE: Final = 0.5  # the cost budget never pushes the quantile below this ...
DEFAULT_MAX_SAFETY_QUANTILE: Final = 0.99  # ... or above this

DEFAULT_SAMPLE_S: Final = 60.0  # the forecaster learns from one-minute means (and maxima)
DEFAULT_DAILY_SLOT_S: Final = 300.0  # daily profile resolution
DEFAULT_WEEKLY_SLOT_S: Final = 300.0  # weekly profile resolution
DEFAULT_FINE_SLOT_S: Final = 60.0  # resolution of the extra fine daily and weekly profiles
DEFAULT_DAILY_SMOOTHING: Final = 0.3  # weight of the newest day in the daily profile
DEFAULT_WEEKLY_SMOOTHING: Final = 0.5  # weight of the newest week in the weekly profile
DEFAULT_LEVEL_HALF_LIFE_S: Final = 180.0  # how fast the seasonal models follow the level
DEFAULT_FLAT_HALF_LIFE_S: Final = 120.0  # the non-seasonal (persistence) model's memory
DEFAULT_OUTLIER_RATIO: Final = 2.0  # learning clips a sample to [expected / r, expected x r]
DEFAULT_MIN_PROFILE_COVERAGE: Final = 0.95  # fraction of a profile's slots seen before it is used
DEFAULT_SAFETY_QUANTILE: Final = 0.75  # provision for this quantile of the forecast errors (start)
DEFAULT_RESIDUAL_WINDOW: Final = 2880  # forecast errors kept (samples: two days of minutes)
DEFAULT_MIN_RESIDUALS: Final = 60  # a model is trusted after this many scored forecasts
DEFAULT_MAX_HEADROOM: Final = 1.0  # the safety margin never exceeds +100 %
DEFAULT_SCORE_HALF_LIFE_S: Final = 86_400.0  # memory of the forecast bias used to pick a model

SECONDS_PER_DAY: Final = 86_400
SECONDS_PER_WEEK: Final = 7 * SECONDS_PER_DAY
_EPOCH_WEEKDAY: Final = 3  # 1970-01-01 was a Thursday; Monday = 0
_CEIL_EPSILON: Final = 1e-9  # 1000 / 100 must stay 10 replicas, not 11, after float noise
_QUANTILE_REFRESH_SAMPLES: Final = 30  # re-sort the residuals at most every 30 new ones
# Forecast errors are kept per load level (in instances' worth of load) as well as pooled.
_LEVEL_BIN_EDGES: Final = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
_MIN_LEVEL_RESIDUALS: Final = 60
_SCORE_QUANTILE: Final = 0.9  # models are compared by the mean of their errors above this quantile
_COST_BUCKET_S: Final = 3600.0  # spend is tallied per hour and the quantile adjusted hourly
_MIN_COST_BUCKETS: Final = 3  # adjust after three hours; a partial day is better than waiting a day
_MAX_GAP_S: Final = 300.0  # a longer gap between calls counts as this long (a paused loop is not spend)


def week_offset_s(epoch_s: float) -> float:
    """Seconds since Monday 00:00 UTC of the week that contains `epoch_s`."""
    return (epoch_s + _EPOCH_WEEKDAY * SECONDS_PER_DAY) % SECONDS_PER_WEEK


def _ceil(value: float) -> int:
    return max(0, math.ceil(value - _CEIL_EPSILON))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool, owner: str, name: str, allowed: str, value: object) -> None:
    if not condition:
        raise ValueError(f"{owner}.{name} must be {allowed}, got {value!r}")


def _require_seconds(owner: str, name: str, value: object, *, positive: bool = False) -> None:
    ok = _is_number(value) and (value > 0 if positive else value >= 0)  # type: ignore[operator]
    allowed = "a finite number of seconds > 0" if positive else "a finite number of seconds >= 0"
    _require(ok, owner, name, allowed, value)


# ---------------------------------------------------------------------------------------------
# The decision, the guards and the protocol
# ---------------------------------------------------------------------------------------------


class ScalingRule(StrEnum):
    """Which rule decided a `ScalingDecision` (the binding one when several applied)."""

    HOLD = "hold"  # nothing calls for a change
    WITHIN_TOLERANCE = "within_tolerance"  # load/capacity inside the tolerance band
    REACTIVE_UP = "reactive_up"  # current load above capacity
    REACTIVE_DOWN = "reactive_down"  # current load well below capacity, stabilised
    PREDICTIVE_UP = "predictive_up"  # the forecast peak within the start-up horizon
    PREDICTIVE_DOWN = "predictive_down"  # the forecast stays low for the hold horizon
    STABILIZED = "stabilized"  # a stabilisation window held the change back
    RATE_LIMITED = "rate_limited"  # the change was cut to the per-period step limit
    COOLDOWN = "cooldown"  # too soon after the previous change
    GUARD = "guard"  # scale-down blocked by an open incident or a maintenance window
    BOUNDS = "bounds"  # clamped to, or brought back into, MIN..MAX
    NOT_WORTH_IT = "not_worth_it"  # scale-down smaller than the hysteresis: keep the pods
    NO_METRICS = "no_metrics"  # HPA: no ready pod reported the metric
    SYNC_PERIOD = "sync_period"  # HPA: called between two controller syncs


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    """What a policy wants: `desired_replicas`, the `rule` that decided and a readable `reason`.

    `inputs` holds the measured inputs and the intermediate figures behind the decision (load,
    replicas, forecast, headroom, ...) so that an event or a log line can show them verbatim.
    """

    desired_replicas: int
    current_replicas: int
    rule: ScalingRule
    reason: str
    inputs: Mapping[str, float | int | str] = field(default_factory=dict)

    @property
    def change(self) -> int:
        """Replicas to add (> 0) or remove (< 0)."""
        return self.desired_replicas - self.current_replicas


@dataclass(frozen=True, slots=True)
class ScaleGuards:
    """Conditions, known to the caller, under which removing capacity is unsafe.

    During an open incident spare capacity is what absorbs retries and failovers; during a
    maintenance window pods are being drained and replaced anyway. Scale-ups are never blocked.
    """

    incident_open: bool = False
    maintenance_window: bool = False
    partial_load: bool = False  # some pods did not report their load: the figure is a lower bound

    @property
    def blocks_scale_down(self) -> bool:
        return self.incident_open or self.maintenance_window or self.partial_load

    def describe(self) -> str:
        reasons = [
            name
            for name, on in (
                ("incident open", self.incident_open),
                ("maintenance window", self.maintenance_window),
                ("load partial (pods missing)", self.partial_load),
            )
            if on
        ]
        return " and ".join(reasons) or "none"


NO_GUARDS: Final = ScaleGuards()


@runtime_checkable
class ScalingPolicy(Protocol):
    """Turns measured load into a desired replica count; one implementation per algorithm.

    `now_s` is epoch seconds (UTC) and must not go backwards between calls; `load_tpm` is the
    measured cluster load in transactions per minute; `ready_replicas` counts pods serving now
    (pods still starting are in `current_replicas` but not in `ready_replicas`). The answer is
    always within the policy's MIN..MAX.
    """

    name: str

    def recommend(
        self,
        now_s: float,
        load_tpm: float,
        current_replicas: int,
        ready_replicas: int,
        guards: ScaleGuards = NO_GUARDS,
    ) -> ScalingDecision: ...


def check_inputs(now_s: float, load_tpm: float, current_replicas: int, ready_replicas: int) -> None:
    """Raise `ValueError` naming the first malformed `recommend` argument."""
    if (
        type(now_s) is float
        and type(load_tpm) is float
        and type(current_replicas) is int
        and type(ready_replicas) is int
        and math.isfinite(now_s)
        and 0.0 <= load_tpm < math.inf
        and 0 <= current_replicas <= MAX_REPLICAS_LIMIT
        and ready_replicas >= 0
    ):
        return  # the common case, checked without building any message
    _require(_is_number(now_s), "recommend", "now_s", "finite epoch seconds", now_s)
    _require(
        _is_number(load_tpm) and load_tpm >= 0, "recommend", "load_tpm", "a finite number >= 0", load_tpm
    )
    _require(
        _is_count(current_replicas) and 0 <= current_replicas <= MAX_REPLICAS_LIMIT,
        "recommend",
        "current_replicas",
        f"an integer in [0, {MAX_REPLICAS_LIMIT}]",
        current_replicas,
    )
    _require(
        _is_count(ready_replicas) and ready_replicas >= 0,
        "recommend",
        "ready_replicas",
        "an integer >= 0",
        ready_replicas,
    )


class RecommendationHistory:
    """Timestamped recommendations in time order, for stabilisation windows.

    `highest_since(cutoff)` / `lowest_since(cutoff)` look at the entries strictly newer than
    `cutoff` (the HPA's `timestamp.After(cutoff)`); those form a suffix, so the scan stops at the
    first older entry, and a window covering everything kept is one C-level `max`/`min`.
    """

    __slots__ = ("_horizon_s", "_times", "_values")

    def __init__(self, horizon_s: float) -> None:
        self._horizon_s = horizon_s
        self._times: deque[float] = deque()
        self._values: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._values)

    def add(self, now_s: float, value: int) -> None:
        """Append a recommendation and forget those older than the horizon."""
        self._times.append(now_s)
        self._values.append(value)
        cutoff = now_s - self._horizon_s
        times, values = self._times, self._values
        while times and times[0] <= cutoff:
            times.popleft()
            values.popleft()

    def _since(self, cutoff_s: float) -> list[int] | deque[int]:
        times = self._times
        if not times or times[-1] <= cutoff_s:
            return []
        if times[0] > cutoff_s:
            return self._values
        values = self._values
        newer: list[int] = []
        for index in range(len(times) - 1, -1, -1):
            if times[index] <= cutoff_s:
                break
            newer.append(values[index])
        return newer

    def highest_since(self, cutoff_s: float, default: int) -> int:
        newer = self._since(cutoff_s)
        return max(default, max(newer)) if newer else default

    def lowest_since(self, cutoff_s: float, default: int) -> int:
        newer = self._since(cutoff_s)
        return min(default, min(newer)) if newer else default


class _MonotonicTime:
    """Rejects a `now_s` earlier than the previous one: windows and cooldowns assume time moves on."""

    __slots__ = ("_last_s",)

    def __init__(self) -> None:
        self._last_s: float | None = None

    def advance(self, now_s: float) -> None:
        if self._last_s is not None and now_s < self._last_s:
            raise ValueError(f"recommend.now_s must not go backwards: {now_s!r} < previous {self._last_s!r}")
        self._last_s = now_s


# ---------------------------------------------------------------------------------------------
# Reactive policy
# ---------------------------------------------------------------------------------------------


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
    time after any change before a scale-down.
    """

    target_tpm_per_instance: float = DEFAULT_TARGET_TPM_PER_INSTANCE
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


# ---------------------------------------------------------------------------------------------
# Forecasting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriorScheduleEntry:
    """One point of a prior weekly load shape: from `time_of_day` on `weekday` (UTC), the load is
    expected at `load_factor` x normal, until the next entry of the week.

    Priors shape the forecast only until the policy has learned a day of the real load.
    `weekday` is 0 = Monday ... 6 = Sunday.
    """

    weekday: int
    time_of_day: str
    load_factor: float
    description: str = ""

    def __post_init__(self) -> None:
        owner = "PriorScheduleEntry"
        _require(
            _is_count(self.weekday) and 0 <= self.weekday <= 6,
            owner,
            "weekday",
            "an integer in [0, 6] (0 = Monday)",
            self.weekday,
        )
        _require(
            self._minute_of_day() is not None,
            owner,
            "time_of_day",
            "HH:MM in [00:00, 23:59]",
            self.time_of_day,
        )
        _require(
            _is_number(self.load_factor) and 0 < self.load_factor <= 100,
            owner,
            "load_factor",
            "in (0, 100]",
            self.load_factor,
        )

    def _minute_of_day(self) -> int | None:
        parts = self.time_of_day.split(":") if isinstance(self.time_of_day, str) else []
        if len(parts) != 2 or not all(p.isdigit() and len(p) == 2 for p in parts):
            return None
        hour, minute = int(parts[0]), int(parts[1])
        return hour * 60 + minute if hour < 24 and minute < 60 else None

    @property
    def week_offset_s(self) -> int:
        """Seconds from Monday 00:00 UTC to this entry."""
        minute = self._minute_of_day()
        assert minute is not None  # validated in __post_init__
        return self.weekday * SECONDS_PER_DAY + minute * 60


def _entry(js_day: int, time_of_day: str, factor: float, description: str) -> PriorScheduleEntry:
    # The original module numbered days like JavaScript's getUTCDay(): 0 = Sunday.
    return PriorScheduleEntry((js_day + 6) % 7, time_of_day, factor, description)


ORIGINAL_MODULE_PRIOR_SCHEDULE: Final[tuple[PriorScheduleEntry, ...]] = (
    *(_entry(d, "08:00", 1.5, "weekday morning peak") for d in range(1, 6)),
    *(_entry(d, "12:00", 1.3, "weekday lunch peak") for d in range(1, 6)),
    *(_entry(d, "17:00", 1.4, "weekday evening peak") for d in range(1, 6)),
    _entry(5, "18:00", 1.8, "Friday night social payments"),
    _entry(0, "00:00", 0.3, "Sunday midnight low"),
    *(_entry(d, "00:00", 0.2, "weekday midnight low") for d in range(1, 6)),
    _entry(6, "00:00", 0.3, "Saturday midnight low"),
)
"""The hard-coded "African market" peaks of the TypeScript module (UTC), usable as a prior only."""


class _StepSchedule:
    """A prior schedule as a weekly step function of the load factor."""

    __slots__ = ("_factors", "_offsets")

    def __init__(self, entries: tuple[PriorScheduleEntry, ...]) -> None:
        ordered = sorted(entries, key=lambda e: e.week_offset_s)
        self._offsets = [float(e.week_offset_s) for e in ordered]
        self._factors = [e.load_factor for e in ordered]

    def at(self, epoch_s: float) -> float:
        # Index -1 (before the week's first entry) is the last entry of the previous week.
        return self._factors[bisect_right(self._offsets, week_offset_s(epoch_s)) - 1]

    def max_over(self, start_s: float, end_s: float) -> float:
        span = end_s - start_s
        if span >= SECONDS_PER_WEEK:
            return max(self._factors)
        offset = week_offset_s(start_s)
        index = bisect_right(self._offsets, offset) - 1
        highest = self._factors[index]
        count = len(self._offsets)
        for step in range(1, count + 1):
            following = (index + step) % count
            distance = (self._offsets[following] - offset) % SECONDS_PER_WEEK
            if distance > span:
                break
            highest = max(highest, self._factors[following])
        return highest


@dataclass(frozen=True, slots=True)
class ForecastConfig:
    """How `LoadForecaster` learns the load's shape; every default is a named constant above.

    The forecaster averages the observed load over `sample_s` and learns two profiles from those
    samples: a daily one at `daily_slot_s` resolution (the newest day weighs `daily_smoothing` in
    it) and a weekly one at `weekly_slot_s` resolution (the newest week weighs
    `weekly_smoothing`). A profile is used once `min_profile_coverage` of its slots have been
    seen. Each model follows the level of the load with a half-life of `level_half_life_s`
    (`flat_half_life_s` for the shapeless one). Learning clips a sample to within
    `outlier_ratio` of what was expected, so a surprise spike bends a profile only a little.
    Forecast errors at the lead time are kept for the last `residual_window` samples; a model is
    trusted after `min_residuals`; the safety margin is their `safety_quantile`, within
    [0, `max_headroom`]. Models are compared by their bias with a memory of
    `score_half_life_s` and the spread of their errors. `prior_schedule` (empty: none) shapes
    the forecast until the daily profile is trusted.
    """

    sample_s: float = DEFAULT_SAMPLE_S
    daily_slot_s: float = DEFAULT_DAILY_SLOT_S
    weekly_slot_s: float = DEFAULT_WEEKLY_SLOT_S
    fine_slot_s: float | None = DEFAULT_FINE_SLOT_S
    daily_smoothing: float = DEFAULT_DAILY_SMOOTHING
    weekly_smoothing: float = DEFAULT_WEEKLY_SMOOTHING
    level_half_life_s: float = DEFAULT_LEVEL_HALF_LIFE_S
    flat_half_life_s: float = DEFAULT_FLAT_HALF_LIFE_S
    outlier_ratio: float = DEFAULT_OUTLIER_RATIO
    min_profile_coverage: float = DEFAULT_MIN_PROFILE_COVERAGE
    safety_quantile: float = DEFAULT_SAFETY_QUANTILE
    residual_window: int = DEFAULT_RESIDUAL_WINDOW
    min_residuals: int = DEFAULT_MIN_RESIDUALS
    max_headroom: float = DEFAULT_MAX_HEADROOM
    score_half_life_s: float = DEFAULT_SCORE_HALF_LIFE_S
    prior_schedule: tuple[PriorScheduleEntry, ...] = ()

    def __post_init__(self) -> None:
        owner = "ForecastConfig"
        for name in (
            "sample_s",
            "daily_slot_s",
            "weekly_slot_s",
            "level_half_life_s",
            "flat_half_life_s",
            "score_half_life_s",
        ):
            _require_seconds(owner, name, getattr(self, name), positive=True)
        _require(
            self.sample_s <= 3600 and SECONDS_PER_DAY % self.sample_s == 0,
            owner,
            "sample_s",
            "a divisor of 86400 seconds, at most 3600",
            self.sample_s,
        )
        for name, period in (
            ("daily_slot_s", SECONDS_PER_DAY),
            ("weekly_slot_s", SECONDS_PER_WEEK),
            ("fine_slot_s", SECONDS_PER_DAY),
        ):
            value = getattr(self, name)
            if value is None and name == "fine_slot_s":
                continue
            _require(
                period % value == 0 and value % self.sample_s == 0 and value <= SECONDS_PER_DAY,
                owner,
                name,
                f"a divisor of {period}, a multiple of sample_s={self.sample_s:g} and at most 86400",
                value,
            )
        for name in ("daily_smoothing", "weekly_smoothing"):
            value = getattr(self, name)
            _require(_is_number(value) and 0 < value <= 1, owner, name, "in (0, 1]", value)
        _require(
            _is_number(self.outlier_ratio) and self.outlier_ratio > 1,
            owner,
            "outlier_ratio",
            "a number > 1",
            self.outlier_ratio,
        )
        _require(
            _is_number(self.min_profile_coverage) and 0 < self.min_profile_coverage <= 1,
            owner,
            "min_profile_coverage",
            "in (0, 1]",
            self.min_profile_coverage,
        )
        _require(
            _is_number(self.safety_quantile) and 0.5 <= self.safety_quantile < 1,
            owner,
            "safety_quantile",
            "in [0.5, 1)",
            self.safety_quantile,
        )
        _require(
            _is_count(self.residual_window) and 10 <= self.residual_window <= 1_000_000,
            owner,
            "residual_window",
            "an integer in [10, 1000000]",
            self.residual_window,
        )
        _require(
            _is_count(self.min_residuals) and 1 <= self.min_residuals <= self.residual_window,
            owner,
            "min_residuals",
            f"an integer in [1, residual_window={self.residual_window}]",
            self.min_residuals,
        )
        _require(
            _is_number(self.max_headroom) and 0 <= self.max_headroom <= 10,
            owner,
            "max_headroom",
            "in [0, 10]",
            self.max_headroom,
        )
        _require(
            isinstance(self.prior_schedule, tuple)
            and all(isinstance(e, PriorScheduleEntry) for e in self.prior_schedule),
            owner,
            "prior_schedule",
            "a tuple of PriorScheduleEntry",
            self.prior_schedule,
        )


def _alpha(sample_s: float, half_life_s: float) -> float:
    """The weight of one sample in an exponential average with the given half-life."""
    return 1.0 - math.pow(0.5, sample_s / half_life_s)


def quantile_of_sorted(ordered: list[float], quantile: float) -> float:
    """The `quantile` of non-empty sorted values, interpolated linearly (numpy's default)."""
    position = quantile * (len(ordered) - 1)
    below = int(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


class _QuantileWindow:
    """The last `capacity` values and a sorted copy of them, re-sorted only every few additions."""

    __slots__ = ("_fresh", "_sorted", "values")

    def __init__(self, capacity: int) -> None:
        self.values: deque[float] = deque(maxlen=capacity)
        self._sorted: list[float] = []
        self._fresh = 0

    def __len__(self) -> int:
        return len(self.values)

    def add(self, value: float) -> None:
        self.values.append(value)
        self._fresh += 1

    def _ordered(self) -> list[float]:
        if not self._sorted or self._fresh >= _QUANTILE_REFRESH_SAMPLES:
            self._sorted = sorted(self.values)
            self._fresh = 0
        return self._sorted

    def quantile(self, quantile: float) -> float | None:
        if not self.values:
            return None
        return quantile_of_sorted(self._ordered(), quantile)

    def tail_mean(self, quantile: float) -> float | None:
        """The mean of the values above `quantile` (expected shortfall), None when empty."""
        if not self.values:
            return None
        ordered = self._ordered()
        tail = ordered[min(int(quantile * len(ordered)), len(ordered) - 1) :]
        return sum(tail) / len(tail)


class _Shape(Protocol):
    """The relative shape of the load over time; a model forecasts `level x shape`."""

    def at(self, epoch_s: float) -> float: ...

    def max_over(self, start_s: float, end_s: float) -> float: ...


class _FlatShape:
    """No shape at all: persistence."""

    def at(self, epoch_s: float) -> float:
        return 1.0

    def max_over(self, start_s: float, end_s: float) -> float:
        return 1.0


class _PeriodicProfile:
    """The load over a repeating period (a day, a week) in slots, learned from samples.

    Each slot is an exponential average over periods of the samples that fell in it (a sample
    further than `outlier_ratio` from the slot's value is clipped first). Between slot centres the
    profile is linear, so a ramp is not flattened into steps; a slot not seen yet borrows the
    nearest seen slot before it.
    """

    __slots__ = (
        "_count",
        "_current_abs",
        "_current_count",
        "_current_sum",
        "_outlier_ratio",
        "_period_s",
        "_phase_s",
        "_seen",
        "_seen_slots",
        "_slot_s",
        "_smoothing",
        "_values",
        "known",
    )

    def __init__(
        self, *, period_s: int, slot_s: float, phase_s: float, smoothing: float, outlier_ratio: float
    ) -> None:
        self._period_s = period_s
        self._slot_s = slot_s
        self._phase_s = phase_s
        self._smoothing = smoothing
        self._outlier_ratio = outlier_ratio
        self._count = int(period_s // slot_s)
        self._values = [0.0] * self._count
        self._seen = [False] * self._count
        self._seen_slots: list[int] = []
        self.known = 0
        self._current_abs: int | None = None
        self._current_sum = 0.0
        self._current_count = 0

    @property
    def coverage(self) -> float:
        """The fraction of slots seen at least once."""
        return self.known / self._count

    def learn(self, mid_s: float, x_mean: float) -> None:
        """Add one sample (its mid-time and mean load); a slot is committed when the next begins."""
        slot_abs = int((mid_s + self._phase_s) // self._slot_s)
        if slot_abs != self._current_abs:
            if self._current_abs is not None and self._current_count:
                self._commit(self._current_abs % self._count, self._current_sum / self._current_count)
            self._current_abs = slot_abs
            self._current_sum = 0.0
            self._current_count = 0
        self._current_sum += x_mean
        self._current_count += 1

    def _commit(self, slot: int, value: float) -> None:
        if not self._seen[slot]:
            self._seen[slot] = True
            self._values[slot] = value
            self.known += 1
            insort(self._seen_slots, slot)
            return
        old = self._values[slot]
        ratio = self._outlier_ratio
        clipped = min(max(value, old / ratio), old * ratio + 1e-9)
        self._values[slot] = old + self._smoothing * (clipped - old)

    def _slot_value(self, slot: int) -> float:
        if self._seen[slot]:
            return self._values[slot]
        # Index -1 (no seen slot before this one) wraps to the last seen slot of the period.
        return self._values[self._seen_slots[bisect_right(self._seen_slots, slot) - 1]]

    def at(self, epoch_s: float) -> float:
        if not self.known:
            return 0.0
        position = ((epoch_s + self._phase_s) % self._period_s) / self._slot_s - 0.5
        left = math.floor(position)
        before = self._slot_value(left % self._count)
        after = self._slot_value((left + 1) % self._count)
        return before + (after - before) * (position - left)

    def max_over(self, start_s: float, end_s: float) -> float:
        """The exact maximum over [start, end]: the profile is linear between slot centres."""
        highest = max(self.at(start_s), self.at(end_s))
        slot_s = self._slot_s
        centre = (math.floor((start_s + self._phase_s) / slot_s - 0.5) + 1.5) * slot_s - self._phase_s
        while centre < end_s:
            highest = max(highest, self.at(centre))
            centre += slot_s
        return highest


class _Model:
    """One forecasting model: a shape (learned profile, prior or flat) times a smoothed level.

    It keeps its own level, its pending forecasts, its bias, and its errors at the lead time
    (relative to the forecast, or to one instance's target when the forecast is smaller), pooled
    and by load level: relative noise is larger at low load (Poisson counts), so each level gets
    the margin its own errors call for.
    """

    __slots__ = (
        "_bias",
        "_by_level",
        "_clip_ratio",
        "_ew_shape",
        "_ew_x",
        "_floor_tpm",
        "_level_alpha",
        "_pending",
        "_score_alpha",
        "_shape_floor",
        "active",
        "name",
        "residuals",
        "shape",
    )

    def __init__(
        self,
        name: str,
        shape: _Shape,
        *,
        level_alpha: float,
        score_alpha: float,
        clip_ratio: float | None,
        shape_floor: float,
        residual_window: int,
        floor_tpm: float,
    ) -> None:
        self.name = name
        self.shape = shape
        self.active = False
        self._level_alpha = level_alpha
        self._score_alpha = score_alpha
        self._clip_ratio = clip_ratio
        self._shape_floor = shape_floor
        self._floor_tpm = floor_tpm
        self._ew_x = 0.0
        self._ew_shape = 0.0
        self._bias = 0.0
        self._pending: deque[tuple[int, float]] = deque()
        self.residuals = _QuantileWindow(residual_window)
        self._by_level = [_QuantileWindow(residual_window) for _ in range(len(_LEVEL_BIN_EDGES) + 1)]

    def activate(self, x_mean: float, shape: float) -> None:
        self.active = True
        self._ew_x = x_mean
        self._ew_shape = shape

    def deactivate(self) -> None:
        self.active = False
        self._pending.clear()

    @property
    def level(self) -> float:
        """Load per unit of shape: the forecast at time t is `level x shape(t)`.

        A learned profile can be 0 (no load at night); `_shape_floor` (in its units) keeps the
        ratio near 1 there instead of 0/0, so the morning ramp is still forecast.
        """
        floor = self._shape_floor
        if self._ew_shape + floor <= 0:
            return self._ew_x
        return (self._ew_x + floor) / (self._ew_shape + floor)

    def _level_bin(self, forecast_tpm: float) -> _QuantileWindow:
        return self._by_level[bisect_right(_LEVEL_BIN_EDGES, forecast_tpm / self._floor_tpm)]

    def on_sample(
        self, index: int, x_mean: float, x_max: float, mid_s: float, target_index: int, target_mid_s: float
    ) -> None:
        """Score the forecast made for this sample, follow the level, forecast `target_index`."""
        pending = self._pending
        while pending and pending[0][0] < index:
            pending.popleft()
        if pending and pending[0][0] == index:
            _, forecast = pending.popleft()
            floor = self._floor_tpm
            residual = (x_max - forecast) / max(forecast, floor)
            self.residuals.add(residual)
            self._level_bin(forecast).add(residual)
            self._bias += self._score_alpha * (math.log((forecast + floor) / (x_mean + floor)) - self._bias)
        shape_now = self.shape.at(mid_s)
        x = x_mean
        if self._clip_ratio is not None and self._ew_shape > 0:
            expected = self.level * shape_now
            x = min(max(x, expected / self._clip_ratio), expected * self._clip_ratio + self._floor_tpm)
        self._ew_x += self._level_alpha * (x - self._ew_x)
        self._ew_shape += self._level_alpha * (shape_now - self._ew_shape)
        pending.append((target_index, self.level * self.shape.at(target_mid_s)))

    def headroom(self, quantile: float, forecast_tpm: float | None = None) -> float | None:
        """The `quantile` of the relative errors at this forecast's load level (pooled when that
        level has too few errors, or when no forecast is given); None until there are any."""
        if forecast_tpm is not None:
            by_level = self._level_bin(forecast_tpm)
            if len(by_level) >= _MIN_LEVEL_RESIDUALS:
                return by_level.quantile(quantile)
        return self.residuals.quantile(quantile)

    def score(self) -> float | None:
        """About log(capacity provisioned / load served) to cover the worst errors: lower is better.

        The tail mean (not the quantile) of the errors counts: a model that misses rare steps by
        a lot (persistence on step-shaped load) must not win on its ordinary days.
        """
        spread = self.residuals.tail_mean(_SCORE_QUANTILE)
        if spread is None:
            return None
        return self._bias + math.log1p(max(spread, -0.99))


@dataclass(frozen=True, slots=True)
class ForecastOutlook:
    """What the forecaster expects: peaks over two horizons, the model used and its safety margins.

    `peak_up_tpm` is the highest forecast load from now to the scale-up horizon, `peak_hold_tpm`
    the highest to the scale-down hold horizon; `headroom_up` / `headroom_hold` are the relative
    safety margins (the safety quantile of past forecast errors at each peak's load level) to
    add on top, relative to max(peak, one instance's target).
    """

    model: str
    nowcast_tpm: float
    peak_up_tpm: float
    peak_hold_tpm: float
    headroom_up: float
    headroom_hold: float
    scored_forecasts: int


class LoadForecaster:
    """Learns the load's daily and weekly shape from the samples it is shown and forecasts ahead.

    Several models compete, each `level x shape(t)` with its own exponentially smoothed level (so
    a model follows growth and unusual days, and its shape only has to be right relative to
    now): `weekly` (a week-long profile: weekday/weekend and day-specific shapes), `daily` (a
    day-long profile from every day), the same two at `fine_slot_s` resolution (step-shaped
    load), `prior` (the configured schedule, only until the daily profile is trusted) and `flat`
    (no shape: persistence, for load without seasonality). This is a Holt-Winters-style
    multiplicative seasonal model whose seasonal profiles are robust exponential averages over
    periods. Every model's forecast one `lead_s` ahead is scored against what came; the model with
    the lowest bias plus tail of errors (what it would cost to cover its worst misses) is used.
    No wall clock: time is the timestamps given to `observe`.
    """

    def __init__(self, config: ForecastConfig, *, lead_s: float, floor_tpm: float) -> None:
        _require_seconds("LoadForecaster", "lead_s", lead_s)
        _require(
            _is_number(floor_tpm) and floor_tpm > 0, "LoadForecaster", "floor_tpm", "a number > 0", floor_tpm
        )
        self.config = config
        self.lead_s = lead_s
        self._lead_samples = int(lead_s // config.sample_s)

        def profile(period_s: int, slot_s: float, smoothing: float) -> _PeriodicProfile:
            return _PeriodicProfile(
                period_s=period_s,
                slot_s=slot_s,
                phase_s=0.0 if period_s == SECONDS_PER_DAY else _EPOCH_WEEKDAY * SECONDS_PER_DAY,
                smoothing=smoothing,
                outlier_ratio=config.outlier_ratio,
            )

        self.daily = profile(SECONDS_PER_DAY, config.daily_slot_s, config.daily_smoothing)
        self.weekly = profile(SECONDS_PER_WEEK, config.weekly_slot_s, config.weekly_smoothing)
        profiles: list[tuple[str, _PeriodicProfile]] = [("weekly", self.weekly), ("daily", self.daily)]
        if config.fine_slot_s is not None:
            # Step-shaped load (a market opening, a batch job) needs fine slots; smooth load is
            # forecast better by coarse ones. Both are learned and the scores decide.
            profiles += [
                ("weekly_fine", profile(SECONDS_PER_WEEK, config.fine_slot_s, config.weekly_smoothing)),
                ("daily_fine", profile(SECONDS_PER_DAY, config.fine_slot_s, config.daily_smoothing)),
            ]
        self._profiles = tuple(p for _, p in profiles)
        score_alpha = _alpha(config.sample_s, config.score_half_life_s)

        def model(
            name: str, shape: _Shape, half_life_s: float, clip: float | None, shape_floor: float = 0.0
        ) -> _Model:
            return _Model(
                name,
                shape,
                level_alpha=_alpha(config.sample_s, half_life_s),
                score_alpha=score_alpha,
                clip_ratio=clip,
                shape_floor=shape_floor,
                residual_window=config.residual_window,
                floor_tpm=floor_tpm,
            )

        level_half_life_s = config.level_half_life_s
        ratio = config.outlier_ratio
        # Profiles are in tpm: a hundredth of an instance's target is "no load" for the level.
        seasonal = [
            model(name, shape, level_half_life_s, ratio, 0.01 * floor_tpm) for name, shape in profiles
        ]
        self._daily_model = seasonal[1]
        self._prior_model = (
            model("prior", _StepSchedule(config.prior_schedule), level_half_life_s, ratio)
            if config.prior_schedule
            else None
        )
        self._flat_model = model("flat", _FlatShape(), config.flat_half_life_s, None)
        self._models = tuple(m for m in (*seasonal, self._prior_model, self._flat_model) if m is not None)
        self._sample_index: int | None = None
        self._sample_sum = 0.0
        self._sample_max = 0.0
        self._sample_count = 0
        # Models and errors only change when a sample closes: the choice is cached until then.
        self._choice: _Model | None = None
        self._choice_stale = True

    def observe(self, now_s: float, load_tpm: float) -> None:
        """Record one load measurement; a sample closes when time moves past it."""
        index = int(now_s // self.config.sample_s)
        if self._sample_index is None:
            self._sample_index = index
        elif index > self._sample_index:
            self._close_sample(self._sample_index, self._sample_sum / self._sample_count, self._sample_max)
            self._sample_index = index
            self._sample_sum = 0.0
            self._sample_max = 0.0
            self._sample_count = 0
        self._sample_sum += load_tpm
        self._sample_count += 1
        if load_tpm > self._sample_max:
            self._sample_max = load_tpm

    def _trusted(self, model: _Model | None) -> bool:
        return model is not None and model.active and len(model.residuals) >= self.config.min_residuals

    def _close_sample(self, index: int, x_mean: float, x_max: float) -> None:
        sample_s = self.config.sample_s
        mid_s = (index + 0.5) * sample_s
        target_index = index + 1 + self._lead_samples
        target_mid_s = (target_index + 0.5) * sample_s
        coverage = self.config.min_profile_coverage
        prior = self._prior_model
        for model in self._models:
            if not model.active:
                shape = model.shape
                if isinstance(shape, _PeriodicProfile):
                    ready = shape.coverage >= coverage
                else:
                    ready = model is self._flat_model or not self._trusted(self._daily_model)
                if ready:
                    model.activate(x_mean, max(model.shape.at(mid_s), 1e-9))
            if model.active:
                model.on_sample(index, x_mean, x_max, mid_s, target_index, target_mid_s)
        if prior is not None and prior.active and self._trusted(self._daily_model):
            prior.deactivate()
        for profile in self._profiles:
            profile.learn(mid_s, x_mean)
        self._choice_stale = True

    def _choose(self) -> _Model | None:
        """The trusted model with the lowest score (bias plus the tail of its errors)."""
        best: tuple[float, _Model] | None = None
        for model in self._models:
            if not self._trusted(model):
                continue
            score = model.score()
            if score is not None and (best is None or score < best[0]):
                best = (score, model)
        return None if best is None else best[1]

    def outlook(
        self, now_s: float, up_horizon_s: float, hold_horizon_s: float, quantile: float | None = None
    ) -> ForecastOutlook | None:
        """Peaks of the best trusted model over both horizons, with safety margins at `quantile`
        of its errors (default: the configured safety quantile); None while no model is trusted."""
        if quantile is None:
            quantile = self.config.safety_quantile
        if self._choice_stale:
            self._choice = self._choose()
            self._choice_stale = False
        model = self._choice
        if model is None:
            return None
        level = model.level
        peak_up = level * model.shape.max_over(now_s, now_s + up_horizon_s)
        peak_hold = level * model.shape.max_over(now_s, now_s + hold_horizon_s)
        cap = self.config.max_headroom
        return ForecastOutlook(
            model=model.name,
            nowcast_tpm=level * model.shape.at(now_s),
            peak_up_tpm=peak_up,
            peak_hold_tpm=peak_hold,
            headroom_up=min(max(model.headroom(quantile, peak_up) or 0.0, 0.0), cap),
            headroom_hold=min(max(model.headroom(quantile, peak_hold) or 0.0, 0.0), cap),
            scored_forecasts=len(model.residuals),
        )

    def learned_days(self) -> float:
        """How much of a day the daily profile has seen (1.0: every slot)."""
        return self.daily.coverage


# ---------------------------------------------------------------------------------------------
# Predictive policy
# ---------------------------------------------------------------------------------------------


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


def _logit(probability: float) -> float:
    return math.log(probability / (1.0 - probability))


class CostMatcher:
    """Holds the predictive policy's spend at `cost_budget` x what the reactive policy would spend.

    Why: a predictive policy can always buy fewer minutes short with more instances; the question
    operators ask is whether it does better for the same money. A shadow `ReactivePolicy` runs on
    the same load with its own replica count; both spends (replica-seconds) are tallied per hour
    over the last `cost_window_s` (a whole number of days, so the daily cycle cancels out). Every
    hour, once three hours are tallied, the safety quantile's log-odds move by `cost_gain x
    log(budget x reactive spend / own spend)`, within [min_safety_quantile, max_safety_quantile].
    Spend is not tallied while a guard blocks scale-downs (the shadow knows no incidents).
    """

    __slots__ = (
        "_buckets",
        "_budget",
        "_gain",
        "_hour",
        "_last_s",
        "_logit",
        "_logit_max",
        "_logit_min",
        "_own_s",
        "_reactive_s",
        "_shadow",
        "_shadow_replicas",
        "_window_hours",
    )

    def __init__(self, config: PredictiveConfig) -> None:
        assert config.cost_budget is not None
        self._budget = config.cost_budget
        self._gain = config.cost_gain
        self._shadow = ReactivePolicy(config.reactive)
        self._shadow_replicas: int | None = None
        self._window_hours = max(1, int(config.cost_window_s // _COST_BUCKET_S))
        self._buckets: deque[tuple[float, float]] = deque(maxlen=self._window_hours)
        self._hour: int | None = None
        self._own_s = 0.0
        self._reactive_s = 0.0
        self._last_s: float | None = None
        self._logit_min = _logit(config.min_safety_quantile)
        self._logit_max = _logit(config.max_safety_quantile)
        start = _logit(config.forecast.safety_quantile)
        self._logit = min(max(start, self._logit_min), self._logit_max)

    @property
    def quantile(self) -> float:
        """The safety quantile to provision at now."""
        return 1.0 / (1.0 + math.exp(-self._logit))

    @property
    def spend_ratio(self) -> float | None:
        """Own spend / reactive spend over the window so far (None before any)."""
        own = sum(b[0] for b in self._buckets)
        reactive = sum(b[1] for b in self._buckets)
        return own / reactive if reactive > 0 else None

    def observe(self, now_s: float, load_tpm: float, current_replicas: int, *, paused: bool) -> None:
        """Tally the spend since the previous call and step the shadow reactive policy."""
        shadow = self._shadow_replicas if self._shadow_replicas is not None else current_replicas
        if self._last_s is not None and not paused:
            elapsed_s = min(now_s - self._last_s, _MAX_GAP_S)
            self._own_s += current_replicas * elapsed_s
            self._reactive_s += shadow * elapsed_s
        self._last_s = now_s
        self._shadow_replicas = self._shadow.decide(now_s, load_tpm, shadow)[0]
        hour = int(now_s // _COST_BUCKET_S)
        if self._hour is None:
            self._hour = hour
        elif hour != self._hour:
            self._buckets.append((self._own_s, self._reactive_s))
            self._hour = hour
            self._own_s = self._reactive_s = 0.0
            if len(self._buckets) >= _MIN_COST_BUCKETS:
                self._adjust()

    def _adjust(self) -> None:
        own = sum(b[0] for b in self._buckets)
        reactive = sum(b[1] for b in self._buckets)
        if own <= 0 or reactive <= 0:
            return
        error = math.log(self._budget * reactive / own)
        self._logit = min(max(self._logit + self._gain * error, self._logit_min), self._logit_max)


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
