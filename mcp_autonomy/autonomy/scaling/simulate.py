"""Trace replay: how a scaling policy and the Kubernetes HPA would have served a recorded load.

Operators run `mcp-autonomy simulate-scaling TRACE.csv --target-tpm-per-instance N --output
TIMELINE.csv` on their own traffic before turning autoscaling on. The trace is `timestamp,value`
with a header (ISO 8601 or epoch seconds; the value is the load in TPM); irregular and gappy
traces are fine: between points the last value holds (as a metric exported every few minutes
does; the predictive policy learns that cadence, see `scaling.cadence`). Optional: `--scale-up-threshold T`
(default 0.8: an instance can carry target / T), `--hpa-target-tpm N` (the baseline HPA's target;
default the per-instance target), `--cost-budget B` (spend at most B x what the reactive rule
would; default 1) or `--fixed-quantile Q`, `--prior-schedule original`,
`--hpa-metric external_average_value`.

Every `step_s` (15 s, the HPA's sync period) the load of that instant is shown to each policy with
its deployment's current and ready replicas, and the decision is applied at once: added pods
become ready `startup_s` later, removed pods go at once (the not-yet-ready ones first, as a
ReplicaSet does). Readiness is sampled at the steps, so with a start-up that is not a multiple of
the step a pod counts as ready from the first step after it is. The policies are the same classes
the scaler runs, driven by the trace's timestamps instead of a clock.

Figures per deployment: `instance_minutes` (every pod, ready or not, costs), `minutes_short_of_
capacity` (minutes where load > ready replicas x capacity, capacity = target / scale-up threshold,
the same definition the engine and the benchmarks use) and `scaling_actions` (steps at which the
replica count changed). Beside the two runs the oracle (`ClairvoyantPolicy`): it knows the whole
trace and is never short at the least spend, so `ratios.oracle_instance_minutes` is the floor of
what any policy that is never short could spend, and `ratios.oracle_gap_closed` how much of the
HPA's spend above it the policy saved.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import math
import sys
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Final, TextIO

from mcp_autonomy.autonomy.scaling.decision import (
    NO_GUARDS,
    ScaleGuards,
    ScalingDecision,
    ScalingRule,
    capacity_tpm,
    check_scale_up_threshold,
)
from mcp_autonomy.autonomy.scaling.hpa import HorizontalPodAutoscaler, HpaConfig, HpaMetricType
from mcp_autonomy.autonomy.scaling.policy import (
    DEFAULT_COST_BUDGET,
    DEFAULT_MAX_REPLICAS,
    DEFAULT_MIN_REPLICAS,
    DEFAULT_SCALE_DOWN_HOLD_S,
    DEFAULT_SCALE_UP_THRESHOLD,
    DEFAULT_STARTUP_S,
    ORIGINAL_MODULE_PRIOR_SCHEDULE,
    ForecastConfig,
    PredictiveConfig,
    PredictivePolicy,
    ReactiveConfig,
    ScalingPolicy,
)
from mcp_autonomy.clock import iso
from mcp_autonomy.config import MAX_REPLICAS_LIMIT, MAX_TARGET_TPM, MIN_SCALE_UP_THRESHOLD

DEFAULT_STEP_S: Final = 15.0  # the HPA's sync period: both sides decide equally often
MAX_SIMULATION_STEPS: Final = 10_000_000  # about 4.7 years at 15 s; a typo in a timestamp trips it
TIMELINE_COLUMNS: Final = (
    "timestamp",
    "load",
    "policy_replicas",
    "policy_ready",
    "hpa_replicas",
    "hpa_ready",
    "oracle_replicas",
    "oracle_ready",
)
PRIOR_SCHEDULES: Final = {"none": (), "original": ORIGINAL_MODULE_PRIOR_SCHEDULE}


class TraceError(ValueError):
    """A trace that cannot be replayed; the message names the file, line and problem."""


@dataclass(frozen=True, slots=True)
class LoadTrace:
    """A load trace sorted by time: `timestamps_s[i]` (epoch seconds) had load `values_tpm[i]`."""

    timestamps_s: tuple[float, ...]
    values_tpm: tuple[float, ...]
    reordered_rows: int = 0

    def __post_init__(self) -> None:
        if not self.timestamps_s or len(self.timestamps_s) != len(self.values_tpm):
            raise TraceError("a trace needs at least one point and one value per timestamp")

    @property
    def start_s(self) -> float:
        return self.timestamps_s[0]

    @property
    def end_s(self) -> float:
        return self.timestamps_s[-1]

    @property
    def max_gap_s(self) -> float:
        stamps = self.timestamps_s
        return max((b - a for a, b in pairwise(stamps)), default=0.0)

    def value_at(self, epoch_s: float) -> float:
        """The last value at or before `epoch_s` (the first value before the trace starts)."""
        index = bisect_right(self.timestamps_s, epoch_s) - 1
        return self.values_tpm[max(index, 0)]

    @classmethod
    def from_points(cls, points: Iterable[tuple[float, float]]) -> LoadTrace:
        """A trace from `(epoch_s, load_tpm)` pairs in any order; later duplicates win."""
        listed = list(points)
        reordered = sum(1 for a, b in pairwise(listed) if b[0] < a[0])
        ordered = sorted(enumerate(listed), key=lambda item: (item[1][0], item[0]))
        stamps: list[float] = []
        values: list[float] = []
        for _, (at_s, value) in ordered:
            if stamps and stamps[-1] == at_s:
                values[-1] = value
                continue
            stamps.append(at_s)
            values.append(value)
        return cls(tuple(stamps), tuple(values), reordered)


def parse_timestamp(text: str) -> float:
    """Epoch seconds from an ISO 8601 timestamp (naive means UTC) or a number of epoch seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise ValueError(f"timestamp {text!r} is not finite")
        return value
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def read_trace(path: Path | str) -> LoadTrace:
    """Read a `timestamp,value` CSV (with a header) into a `LoadTrace`.

    Raises:
        TraceError: naming the file and line of the first row that cannot be read.
    """
    path = Path(path)
    points: list[tuple[float, float]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for line_no, row in enumerate(csv.reader(handle), start=1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) < 2:
                    raise TraceError(f"{path}:{line_no}: expected timestamp,value, got {row!r}")
                stamp_text, value_text = row[0], row[1]
                if line_no == 1 and not _is_float(value_text):
                    continue  # the header
                try:
                    at_s = parse_timestamp(stamp_text)
                except ValueError:
                    raise TraceError(
                        f"{path}:{line_no}: timestamp {stamp_text!r} is neither ISO 8601 nor epoch seconds"
                    ) from None
                if not _is_float(value_text) or not math.isfinite(float(value_text)) or float(value_text) < 0:
                    raise TraceError(f"{path}:{line_no}: value {value_text!r} is not a finite load >= 0 tpm")
                points.append((at_s, float(value_text)))
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the trace: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceError(f"{path}: the trace is not UTF-8 text") from None
    if not points:
        raise TraceError(f"{path}: no data rows (expected a header, then timestamp,value rows)")
    return LoadTrace.from_points(points)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """The replayed deployment: the per-instance target, bounds, pod start-up and step.

    `scale_up_threshold` makes the target that fraction of what an instance can carry (capacity
    = target / threshold); `hpa_target_tpm` is what the baseline HPA aims at per pod (None: the
    target, as an operator would configure it).
    """

    target_tpm_per_instance: float
    scale_up_threshold: float = DEFAULT_SCALE_UP_THRESHOLD
    hpa_target_tpm: float | None = None
    min_replicas: int = DEFAULT_MIN_REPLICAS
    max_replicas: int = DEFAULT_MAX_REPLICAS
    startup_s: float = DEFAULT_STARTUP_S
    step_s: float = DEFAULT_STEP_S
    initial_replicas: int | None = None  # None: what the first load needs, all ready

    def __post_init__(self) -> None:
        target = self.target_tpm_per_instance
        if not isinstance(target, int | float) or not 0 < target <= MAX_TARGET_TPM:
            raise ValueError(
                f"SimulationConfig.target_tpm_per_instance must be in (0, {MAX_TARGET_TPM}], got {target!r}"
            )
        check_scale_up_threshold("SimulationConfig", self.scale_up_threshold)
        hpa_target = self.hpa_target_tpm
        if hpa_target is not None and (
            not isinstance(hpa_target, int | float) or not 0 < hpa_target <= MAX_TARGET_TPM
        ):
            raise ValueError(
                f"SimulationConfig.hpa_target_tpm must be None or in (0, {MAX_TARGET_TPM}], got {hpa_target!r}"
            )
        if not 1 <= self.min_replicas <= self.max_replicas <= MAX_REPLICAS_LIMIT:
            raise ValueError(
                f"SimulationConfig.min_replicas/max_replicas must satisfy 1 <= min <= max <= {MAX_REPLICAS_LIMIT}, "
                f"got {self.min_replicas}..{self.max_replicas}"
            )
        if not isinstance(self.startup_s, int | float) or not 0 <= self.startup_s <= 86_400:
            raise ValueError(
                f"SimulationConfig.startup_s must be in [0, 86400] seconds, got {self.startup_s!r}"
            )
        if not isinstance(self.step_s, int | float) or not 1 <= self.step_s <= 3600:
            raise ValueError(f"SimulationConfig.step_s must be in [1, 3600] seconds, got {self.step_s!r}")
        if (
            self.initial_replicas is not None
            and not self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError(
                f"SimulationConfig.initial_replicas must be in {self.min_replicas}..{self.max_replicas}, "
                f"got {self.initial_replicas}"
            )

    @property
    def capacity_tpm_per_instance(self) -> float:
        """What one ready instance can carry: target / scale_up_threshold."""
        return capacity_tpm(self.target_tpm_per_instance, self.scale_up_threshold)

    @property
    def hpa_target(self) -> float:
        """The baseline HPA's per-pod target."""
        return self.hpa_target_tpm if self.hpa_target_tpm is not None else self.target_tpm_per_instance

    def initial_for(self, load_tpm: float) -> int:
        if self.initial_replicas is not None:
            return self.initial_replicas
        wanted = math.ceil(load_tpm / self.target_tpm_per_instance - 1e-9)
        return max(self.min_replicas, min(self.max_replicas, wanted))


class SimulatedDeployment:
    """Pods with the time each becomes ready; the newest (least ready) are removed first."""

    __slots__ = ("_ready_at", "startup_s")

    def __init__(self, replicas: int, *, startup_s: float, ready_since_s: float) -> None:
        self.startup_s = startup_s
        self._ready_at: list[float] = [ready_since_s] * replicas

    @property
    def replicas(self) -> int:
        return len(self._ready_at)

    def ready(self, now_s: float) -> int:
        return bisect_right(self._ready_at, now_s)

    def scale_to(self, now_s: float, replicas: int) -> None:
        current = len(self._ready_at)
        if replicas > current:
            self._ready_at.extend([now_s + self.startup_s] * (replicas - current))
        elif replicas < current:
            del self._ready_at[replicas:]


@dataclass(slots=True)
class ReplayStats:
    """What serving the trace cost one policy and how often it was short of capacity."""

    instance_minutes: float = 0.0
    minutes_short_of_capacity: float = 0.0
    scaling_actions: int = 0
    scale_ups: int = 0
    scale_downs: int = 0
    peak_replicas: int = 0
    shortfall_tpm_minutes: float = 0.0  # transactions that found no ready capacity, summed
    rules: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance_minutes": round(self.instance_minutes, 3),
            "minutes_short_of_capacity": round(self.minutes_short_of_capacity, 3),
            "scaling_actions": self.scaling_actions,
            "scale_ups": self.scale_ups,
            "scale_downs": self.scale_downs,
            "peak_replicas": self.peak_replicas,
            "shortfall_transactions": round(self.shortfall_tpm_minutes, 1),
            "decisions_by_rule": dict(sorted(self.rules.items())),
        }


StepObserver = Callable[[float, float, Mapping[str, tuple[int, int]]], None]
"""Called after every step with (timestamp, load, {policy name: (replicas, ready)})."""


def step_loads(trace: LoadTrace, step_s: float) -> Iterator[tuple[float, float]]:
    """(time, load) at every step from the trace's first point to its last, the last value holding.

    Raises:
        TraceError: when the trace spans more than `MAX_SIMULATION_STEPS` steps (checked first).
    """
    steps = int((trace.end_s - trace.start_s) // step_s) + 1
    if steps > MAX_SIMULATION_STEPS:
        raise TraceError(
            f"the trace spans {trace.end_s - trace.start_s:.0f}s = {steps} steps of {step_s:g}s; "
            f"at most {MAX_SIMULATION_STEPS} are simulated"
        )
    stamps, values = trace.timestamps_s, trace.values_tpm
    cursor = 0
    last_index = len(stamps) - 1
    for step in range(steps):
        now_s = trace.start_s + step * step_s
        while cursor < last_index and stamps[cursor + 1] <= now_s:
            cursor += 1
        yield now_s, values[cursor]


def replay(
    trace: LoadTrace,
    policies: Mapping[str, ScalingPolicy],
    config: SimulationConfig,
    on_step: StepObserver | None = None,
) -> dict[str, ReplayStats]:
    """Replay `trace` through each policy on its own simulated deployment; stats per name."""
    step_s = config.step_s
    loads = step_loads(trace, step_s)  # checks the number of steps before anything is built
    first_step = next(loads)
    initial = config.initial_for(trace.values_tpm[0])
    ready_since = trace.start_s - config.startup_s
    names = list(policies)
    deployments = {
        name: SimulatedDeployment(initial, startup_s=config.startup_s, ready_since_s=ready_since)
        for name in names
    }
    stats = {name: ReplayStats() for name in names}
    capacity_per_instance = config.capacity_tpm_per_instance
    step_minutes = step_s / 60.0
    for now_s, load in itertools.chain((first_step,), loads):
        observed: dict[str, tuple[int, int]] = {}
        for name in names:
            deployment = deployments[name]
            current = deployment.replicas
            decision = policies[name].recommend(now_s, load, current, deployment.ready(now_s))
            desired = decision.desired_replicas
            record = stats[name]
            record.rules[decision.rule.value] = record.rules.get(decision.rule.value, 0) + 1
            if desired != current:
                deployment.scale_to(now_s, desired)
                record.scaling_actions += 1
                if desired > current:
                    record.scale_ups += 1
                else:
                    record.scale_downs += 1
            replicas = deployment.replicas
            ready = deployment.ready(now_s)
            record.instance_minutes += replicas * step_minutes
            capacity = ready * capacity_per_instance
            if load > capacity:
                record.minutes_short_of_capacity += step_minutes
                record.shortfall_tpm_minutes += (load - capacity) * step_minutes
            if replicas > record.peak_replicas:
                record.peak_replicas = replicas
            observed[name] = (replicas, ready)
        if on_step is not None:
            on_step(now_s, load, observed)
    return stats


class ClairvoyantPolicy:
    """The oracle: a policy that knows the whole trace and is never short at the least spend.

    It is the bound no real policy reaches, printed beside the others so a figure can be read
    against what was possible (`instance_minutes` of a policy never short of capacity). At every
    step it runs what the highest load from now until one pod start-up (rounded up to steps)
    later needs at capacity: pods it adds are ready when that load arrives, and with the newest
    pods removed first the ones serving at any step were all added at least one start-up
    earlier. It is short only where MAX_REPLICAS cannot carry the load, or in the first
    start-up of the trace (the deployment starts with what the first point needs).
    """

    name: str = "oracle"

    def __init__(self, trace: LoadTrace, config: SimulationConfig) -> None:
        step_s = config.step_s
        capacity = config.capacity_tpm_per_instance
        needs = [
            max(config.min_replicas, min(config.max_replicas, math.ceil(load / capacity - 1e-9)))
            for _, load in step_loads(trace, step_s)
        ]
        steps = len(needs)
        ahead = math.ceil(config.startup_s / step_s - 1e-9)
        # The highest need from each step to `ahead` steps later: a sliding maximum, run backwards.
        window: deque[int] = deque()
        desired = [0] * steps
        for step in range(steps - 1, -1, -1):
            while window and needs[window[-1]] <= needs[step]:
                window.pop()
            window.append(step)
            while window[0] > step + ahead:
                window.popleft()
            desired[step] = needs[window[0]]
        self._desired = desired
        self._start_s = trace.start_s
        self._step_s = step_s

    def recommend(
        self,
        now_s: float,
        load_tpm: float,
        current_replicas: int,
        ready_replicas: int,
        guards: ScaleGuards = NO_GUARDS,
    ) -> ScalingDecision:
        step = round((now_s - self._start_s) / self._step_s)
        if not 0 <= step < len(self._desired):
            raise ValueError(
                f"ClairvoyantPolicy.recommend: now_s {now_s!r} is outside the trace it was built on"
            )
        desired = self._desired[step]
        if desired > current_replicas:
            rule = ScalingRule.PREDICTIVE_UP
        elif desired < current_replicas:
            rule = ScalingRule.PREDICTIVE_DOWN
        else:
            rule = ScalingRule.HOLD
        return ScalingDecision(
            desired_replicas=desired,
            current_replicas=current_replicas,
            rule=rule,
            reason=f"clairvoyant: the trace's highest load within one start-up needs {desired}",
            inputs={"load_tpm": load_tpm},
        )


def build_policy(
    config: SimulationConfig,
    *,
    prior: str = "none",
    cost_budget: float | None = DEFAULT_COST_BUDGET,
    fixed_quantile: float | None = None,
) -> PredictivePolicy:
    """The predictive policy with default settings for the simulated deployment.

    `fixed_quantile` provisions at that quantile of the forecast errors and switches the cost
    budget off; otherwise the quantile follows `cost_budget` (None: the default quantile, fixed).
    """
    forecast = ForecastConfig(prior_schedule=PRIOR_SCHEDULES[prior])
    if fixed_quantile is not None:
        forecast = dataclasses.replace(forecast, safety_quantile=fixed_quantile)
        cost_budget = None
    return PredictivePolicy(
        PredictiveConfig(
            reactive=ReactiveConfig(
                target_tpm_per_instance=config.target_tpm_per_instance,
                scale_up_threshold=config.scale_up_threshold,
                min_replicas=config.min_replicas,
                max_replicas=config.max_replicas,
            ),
            forecast=forecast,
            startup_s=config.startup_s,
            scale_down_hold_s=max(DEFAULT_SCALE_DOWN_HOLD_S, config.startup_s),
            cost_budget=cost_budget,
        )
    )


def build_hpa(
    config: SimulationConfig, *, metric: HpaMetricType = HpaMetricType.PODS
) -> HorizontalPodAutoscaler:
    """A default-behaviour HPA for the simulated deployment, aiming at `config.hpa_target`."""
    return HorizontalPodAutoscaler(
        HpaConfig(
            target_tpm_per_instance=config.hpa_target,
            min_replicas=config.min_replicas,
            max_replicas=config.max_replicas,
            metric_type=metric,
            sync_period_s=config.step_s,
        )
    )


def _ratio(value: float, baseline: float) -> float | None:
    if baseline == 0:
        return None if value else 1.0
    return round(value / baseline, 4)


def summarize(
    trace: LoadTrace,
    config: SimulationConfig,
    stats: Mapping[str, ReplayStats],
    *,
    source: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON summary: the trace, the settings, each side's figures and policy/hpa ratios."""
    policy, hpa = stats["policy"], stats["hpa"]
    oracle = stats.get("oracle")
    summary: dict[str, Any] = {
        "trace": {
            "source": source,
            "points": len(trace.timestamps_s),
            "start": iso(trace.start_s),
            "end": iso(trace.end_s),
            "duration_minutes": round((trace.end_s - trace.start_s) / 60.0, 3),
            "max_gap_s": trace.max_gap_s,
            "reordered_rows": trace.reordered_rows,
        },
        "settings": {
            "target_tpm_per_instance": config.target_tpm_per_instance,
            "scale_up_threshold": config.scale_up_threshold,
            "capacity_tpm_per_instance": config.capacity_tpm_per_instance,
            "hpa_target_tpm": config.hpa_target,
            "min_replicas": config.min_replicas,
            "max_replicas": config.max_replicas,
            "startup_s": config.startup_s,
            "step_s": config.step_s,
            **(extra or {}),
        },
        "policy": policy.as_dict(),
        "hpa": hpa.as_dict(),
        "ratios": {
            "instance_minutes": _ratio(policy.instance_minutes, hpa.instance_minutes),
            "minutes_short_of_capacity": _ratio(
                policy.minutes_short_of_capacity, hpa.minutes_short_of_capacity
            ),
            "scaling_actions": _ratio(policy.scaling_actions, hpa.scaling_actions),
        },
    }
    if oracle is not None:
        summary["oracle"] = oracle.as_dict()
        summary["ratios"]["oracle_instance_minutes"] = _ratio(oracle.instance_minutes, hpa.instance_minutes)
        summary["ratios"]["oracle_gap_closed"] = oracle_gap_closed(policy, hpa, oracle)
    return summary


def oracle_gap_closed(policy: ReplayStats, hpa: ReplayStats, oracle: ReplayStats) -> float | None:
    """How much of the HPA's spend above the oracle's the policy saved: (hpa - policy) / (hpa -
    oracle) in instance-minutes. 1 is the oracle's cost, 0 the HPA's, below 0 more than the HPA;
    None when the HPA already spends no more than the oracle. Read it with minutes short: only the
    oracle saves without being short."""
    avoidable = hpa.instance_minutes - oracle.instance_minutes
    if avoidable <= 0:
        return None
    return round((hpa.instance_minutes - policy.instance_minutes) / avoidable, 4)


def simulate_to_timeline(
    trace: LoadTrace,
    config: SimulationConfig,
    timeline: TextIO,
    *,
    prior: str = "none",
    hpa_metric: HpaMetricType = HpaMetricType.PODS,
    cost_budget: float | None = DEFAULT_COST_BUDGET,
    fixed_quantile: float | None = None,
) -> dict[str, ReplayStats]:
    """Replay `trace` through the predictive policy, the HPA and the clairvoyant oracle, writing one
    CSV row per step."""
    writer = csv.writer(timeline, lineterminator="\n")
    writer.writerow(TIMELINE_COLUMNS)

    def write(now_s: float, load: float, observed: Mapping[str, tuple[int, int]]) -> None:
        policy_replicas, policy_ready = observed["policy"]
        hpa_replicas, hpa_ready = observed["hpa"]
        oracle_replicas, oracle_ready = observed["oracle"]
        writer.writerow(
            (
                iso(now_s),
                f"{load:g}",
                policy_replicas,
                policy_ready,
                hpa_replicas,
                hpa_ready,
                oracle_replicas,
                oracle_ready,
            )
        )

    policies: dict[str, ScalingPolicy] = {
        "policy": build_policy(config, prior=prior, cost_budget=cost_budget, fixed_quantile=fixed_quantile),
        "hpa": build_hpa(config, metric=hpa_metric),
        "oracle": ClairvoyantPolicy(trace, config),
    }
    return replay(trace, policies, config, on_step=write)


# ---------------------------------------------------------------------------------------------
# CLI glue: `mcp-autonomy simulate-scaling`
# ---------------------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number > 0")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def _quantile(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.5 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0.5, 1)")
    return value


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not MIN_SCALE_UP_THRESHOLD <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [{MIN_SCALE_UP_THRESHOLD}, 1]")
    return value


def _replicas(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= MAX_REPLICAS_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [1, {MAX_REPLICAS_LIMIT}]")
    return value


def add_simulate_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `simulate-scaling` command to the `mcp-autonomy` parser's subcommands."""
    parser = subparsers.add_parser(
        "simulate-scaling",
        help="replay a load trace through the scaling policy and the Kubernetes HPA",
        description=(
            "Replay a load trace (CSV timestamp,value with a header; ISO 8601 or epoch seconds; value = "
            "load in TPM) through the predictive scaling policy and a default Kubernetes HPA, beside a "
            "clairvoyant oracle (never short at the least spend possible: the floor to read both against), "
            "write one row per 15 s step to --output and print a JSON summary on stdout."
        ),
    )
    parser.add_argument("trace", type=Path, help="the load trace, timestamp,value CSV with a header")
    parser.add_argument(
        "--target-tpm-per-instance",
        type=_positive_float,
        required=True,
        help="the load one instance should carry (TARGET_TPM_PER_INSTANCE)",
    )
    parser.add_argument(
        "--scale-up-threshold",
        type=_threshold,
        default=DEFAULT_SCALE_UP_THRESHOLD,
        help="SCALE_UP_THRESHOLD: the target is this fraction of an instance's capacity (default %(default)s)",
    )
    parser.add_argument(
        "--hpa-target-tpm",
        type=_positive_float,
        help="the baseline HPA's per-pod target (default: --target-tpm-per-instance)",
    )
    parser.add_argument(
        "--min", type=_replicas, default=DEFAULT_MIN_REPLICAS, help="MIN_INSTANCES (default %(default)s)"
    )
    parser.add_argument(
        "--max", type=_replicas, default=DEFAULT_MAX_REPLICAS, help="MAX_INSTANCES (default %(default)s)"
    )
    parser.add_argument(
        "--startup-s",
        type=_non_negative_float,
        default=DEFAULT_STARTUP_S,
        help="seconds from adding a pod to it serving (default %(default)s)",
    )
    parser.add_argument("--output", type=Path, required=True, help="where to write the timeline CSV")
    parser.add_argument(
        "--prior-schedule",
        choices=sorted(PRIOR_SCHEDULES),
        default="none",
        help="a prior weekly shape used until a day of load is learned (default: none)",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--cost-budget",
        type=_positive_float,
        default=DEFAULT_COST_BUDGET,
        help="spend this many times what the reactive policy would (default %(default)s)",
    )
    budget.add_argument(
        "--fixed-quantile",
        type=_quantile,
        help="provision at this fixed quantile of the forecast errors instead (no cost budget)",
    )
    parser.add_argument(
        "--hpa-metric",
        choices=[m.value for m in HpaMetricType],
        default=HpaMetricType.PODS.value,
        help="how the baseline HPA sees the load: a per-pod metric or an External AverageValue (default pods)",
    )


def run_simulate(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run `simulate-scaling`: 0 on success, 2 on a bad trace or settings (message on stderr)."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    try:
        config = SimulationConfig(
            target_tpm_per_instance=args.target_tpm_per_instance,
            scale_up_threshold=args.scale_up_threshold,
            hpa_target_tpm=args.hpa_target_tpm,
            min_replicas=args.min,
            max_replicas=args.max,
            startup_s=args.startup_s,
        )
        trace = read_trace(args.trace)
        output: Path = args.output
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", newline="", encoding="utf-8") as timeline:
            stats = simulate_to_timeline(
                trace,
                config,
                timeline,
                prior=args.prior_schedule,
                hpa_metric=HpaMetricType(args.hpa_metric),
                cost_budget=args.cost_budget,
                fixed_quantile=args.fixed_quantile,
            )
    except (TraceError, ValueError) as exc:
        print(f"mcp-autonomy simulate-scaling: {exc}", file=err)
        return 2
    except OSError as exc:
        print(f"mcp-autonomy simulate-scaling: cannot write {args.output}: {exc.strerror or exc}", file=err)
        return 2
    summary = summarize(
        trace,
        config,
        stats,
        source=str(args.trace),
        extra={
            "prior_schedule": args.prior_schedule,
            "hpa_metric": args.hpa_metric,
            "cost_budget": None if args.fixed_quantile is not None else args.cost_budget,
            "fixed_quantile": args.fixed_quantile,
            "timeline": str(args.output),
        },
    )
    json.dump(summary, out, indent=2)
    out.write("\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `simulate-scaling` on its own (the `mcp-autonomy` CLI wires the same two functions)."""
    parser = argparse.ArgumentParser(prog="mcp-autonomy")
    add_simulate_parser(parser.add_subparsers(dest="command", required=True))
    return run_simulate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
