"""What every scaling policy shares: the decision it returns, the guards, the protocol and checks.

A policy is asked, every scaling tick, `recommend(now_s, load_tpm, current_replicas,
ready_replicas, guards)` and answers with a `ScalingDecision`: the desired replica count, the rule
that decided it and a reason that quotes the measured inputs. Policies read no clock: every
window, cooldown and forecast is driven by the `now_s` timestamps passed in, so a trace replay
gives the same decisions every run. The algorithms live in `reactive`, `forecast`, `cost` and
`predictive`; `policy` re-exports them all.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol, runtime_checkable

from mcp_autonomy.config import MAX_REPLICAS_LIMIT, MIN_SCALE_UP_THRESHOLD, Settings

# The replica bounds, the per-instance target and the scale-up threshold come from `config.py`,
# the one source of truth for the settings operators set.
_SETTINGS_FIELDS = Settings.model_fields
DEFAULT_MIN_REPLICAS: Final[int] = int(_SETTINGS_FIELDS["min_instances"].default)
DEFAULT_MAX_REPLICAS: Final[int] = int(_SETTINGS_FIELDS["max_instances"].default)
DEFAULT_TARGET_TPM_PER_INSTANCE: Final[float] = float(_SETTINGS_FIELDS["target_tpm_per_instance"].default)
DEFAULT_SCALE_UP_THRESHOLD: Final[float] = float(_SETTINGS_FIELDS["scale_up_threshold"].default)

SECONDS_PER_DAY: Final = 86_400
SECONDS_PER_WEEK: Final = 7 * SECONDS_PER_DAY
_EPOCH_WEEKDAY: Final = 3  # 1970-01-01 was a Thursday; Monday = 0
_CEIL_EPSILON: Final = 1e-9  # 1000 / 100 must stay 10 replicas, not 11, after float noise


def capacity_tpm(target_tpm_per_instance: float, scale_up_threshold: float) -> float:
    """What one instance can carry: the target is `scale_up_threshold` of it (100 / 0.8 = 125 TPM).

    One definition for the engine, `simulate-scaling` and the benchmarks: a deployment is short
    of capacity whenever the load exceeds its ready replicas x this.
    """
    return target_tpm_per_instance / scale_up_threshold


def check_scale_up_threshold(owner: str, value: object) -> None:
    """Raise `ValueError` naming `owner.scale_up_threshold` unless it is in [0.1, 1]."""
    _require(
        _is_number(value) and MIN_SCALE_UP_THRESHOLD <= value <= 1.0,  # type: ignore[operator]
        owner,
        "scale_up_threshold",
        f"in [{MIN_SCALE_UP_THRESHOLD}, 1] (the target's fraction of an instance's capacity)",
        value,
    )


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
