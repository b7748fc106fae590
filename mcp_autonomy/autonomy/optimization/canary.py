"""The canary verdict: keep a tuning change, revert it, or keep measuring. Pure: no clock, no I/O.

The optimizer runs a proposed value on a share of one provider's traffic (the canary arm) beside
the current value (the baseline arm, over the same period, so time-of-day and provider moods hit
both alike), then calls `evaluate` with what each arm measured. The rules:

- **continue** while either arm has fewer than `min_samples_per_arm` calls.
- **revert** when the canary is significantly worse (one-sided tests at `alpha`) on any of:
  success rate (proportion test); latency (Mann-Whitney, and only when the effect is at least
  `min_effect`, so a statistically certain 1 ms is not a harm); retries per attempt, or timeouts
  per attempt, unless the canary's success rate is significantly *higher* (then the extra
  retries or waits bought something). The harm tests are not corrected for multiplicity on
  purpose: a false revert only costs a missed improvement, a false keep costs payments.
- **continue** (inconclusive) when nothing is significantly worse yet but the canary *looks*
  worse: its success rate lower by more than `success_drop_tolerance`, or its latency shifted
  up by `min_effect` or more. A change is kept only when it shows no harm, not merely when the
  harm is not yet proven.
- **keep** otherwise: "better" when a metric the parameter targets improved significantly (a
  longer timeout targets success and timeouts, a shorter one latency; one attempt more targets
  success, one fewer retries; ...), "neutral" when nothing moved. A neutral change is kept: the
  tuner proposed it for a measured reason (it sheds load, or widens a safety margin, or stops
  waiting for calls that never succeed) and the canary showed it costs nothing. A harmful change
  is never kept.

**A timeout raise is judged by what it rescued.** A longer timeout cannot make a call slower: it
only lets calls finish that the old timeout cut off, and makes the calls that still time out
wait longer. The canary arm shows both: its calls that completed between the old and the new
timeout were *rescued* (the old value would have timed them out), and its timeouts are the cost.
So a raise is "better" on timeouts when at least `min_rescued_share` of the calls the old value
would have cut off (rescued + still timed out) were rescued; it is reverted as "ineffective"
when calls still time out, none or too few were rescued, most calls answered, and nothing else
improved significantly (a concurrent canary's lower timeout share or higher success rate is
evidence too): the calls that time out are not slow ones the raise could wait for (they hang),
so waiting longer only delays them. When most calls time out, nothing shows where their latency lies, and the usual rules
apply (a step up may still be too short for a provider that got much slower).

**Before/after comparisons of a timeout raise** (`concurrent=False`: the raise was applied to all
traffic while timeouts piled up, and the baseline is the window before) do not test latency or
timeouts against the window before, nor count a higher success rate than then as the raise's
doing: that window is from before the latency change that caused the pile-up (or from another
regime altogether), so the comparison measures the provider, not the raise. The rescue rule
above measures the raise within its own arm instead. A significantly lower success rate still
reverts it: a false revert costs a missed improvement, a false keep costs payments.

With `final=True` (the optimizer's canary time is up) every "continue" becomes "revert": not
enough evidence that a change is safe is a reason not to keep it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, TypeGuard, cast

import numpy as np
import numpy.typing as npt

from mcp_autonomy.autonomy.optimization.algorithms import widens_safety
from mcp_autonomy.autonomy.optimization.evidence import LatencySamples, read_only_latencies
from mcp_autonomy.autonomy.optimization.stats import (
    Alternative,
    TestResult,
    mann_whitney_u,
    two_proportion_test,
)

DEFAULT_MIN_SAMPLES_PER_ARM: Final = 100  # calls per arm before any verdict but "continue"
DEFAULT_ALPHA: Final = 0.05  # significance level of every one-sided test
DEFAULT_MIN_EFFECT: Final = 0.06  # P(canary slower) >= 0.56: Vargha and Delaney's "small" effect
DEFAULT_SUCCESS_DROP_TOLERANCE: Final = 0.01  # a canary 1 point less successful is not kept unproven
DEFAULT_MIN_RESCUED_SHARE: Final = 0.1  # a timeout raise must rescue 1 in 10 of the calls it was for

SUCCESS_RATE: Final = "success_rate"
LATENCY: Final = "latency"
RETRIES: Final = "retries_per_call"
TIMEOUTS: Final = "timeout_share"
RESCUED: Final = "rescued_calls"
METRICS: Final = (SUCCESS_RATE, LATENCY, RETRIES, TIMEOUTS)

# What each parameter's change is meant to improve: (when raised, when lowered).
TARGET_METRICS: Final[Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "timeout_s": ((SUCCESS_RATE, TIMEOUTS), (LATENCY,)),
    "max_attempts": ((SUCCESS_RATE,), (RETRIES,)),
    "base_delay_s": ((SUCCESS_RATE, RETRIES), (LATENCY,)),
    "rate_limit_per_s": ((SUCCESS_RATE,), (SUCCESS_RATE, LATENCY)),
    "status_cache_ttl_s": ((LATENCY,), (SUCCESS_RATE,)),
    "breaker_failure_rate": ((SUCCESS_RATE,), (SUCCESS_RATE, LATENCY)),
    "breaker_wait_s": ((SUCCESS_RATE,), (SUCCESS_RATE,)),  # shorter: fewer payments rejected after recovery
}


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and bool(value >= 0)


def _require(condition: bool, owner: str, name: str, allowed: str, value: object) -> None:
    if not condition:
        raise ValueError(f"{owner}.{name} must be {allowed}, got {value!r}")


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    """How a canary is judged; the canary's maximum duration is the optimizer's."""

    min_samples_per_arm: int = DEFAULT_MIN_SAMPLES_PER_ARM
    alpha: float = DEFAULT_ALPHA
    min_effect: float = DEFAULT_MIN_EFFECT
    success_drop_tolerance: float = DEFAULT_SUCCESS_DROP_TOLERANCE
    min_rescued_share: float = DEFAULT_MIN_RESCUED_SHARE

    def __post_init__(self) -> None:
        owner = "CanaryConfig"
        _require(
            _is_count(self.min_samples_per_arm) and self.min_samples_per_arm >= 10,
            owner,
            "min_samples_per_arm",
            "an integer >= 10",
            self.min_samples_per_arm,
        )
        _require(_is_number(self.alpha) and 0 < self.alpha <= 0.5, owner, "alpha", "in (0, 0.5]", self.alpha)
        _require(
            _is_number(self.min_effect) and 0 <= self.min_effect < 0.5,
            owner,
            "min_effect",
            "in [0, 0.5) (added to 0.5 on the P(canary > baseline) scale)",
            self.min_effect,
        )
        _require(
            _is_number(self.success_drop_tolerance) and 0 <= self.success_drop_tolerance <= 1,
            owner,
            "success_drop_tolerance",
            "in [0, 1]",
            self.success_drop_tolerance,
        )
        _require(
            _is_number(self.min_rescued_share) and 0 < self.min_rescued_share <= 1,
            owner,
            "min_rescued_share",
            "in (0, 1]",
            self.min_rescued_share,
        )


@dataclass(frozen=True, slots=True, eq=False)
class ArmSamples:
    """What one arm measured over the canary period.

    `calls` counts the requests (payments) the arm handled at this provider, retries not
    counted; `successes` those that ended successfully there, after any retries; `retries_sent`
    the extra attempts; `timeouts` the attempts that timed out; `latencies_ms` one latency per
    attempt that reached the provider (timed-out ones at their cut-off), stored as a read-only
    float64 array. Compares by identity (it holds an array).
    """

    latencies_ms: LatencySamples
    successes: int
    calls: int
    retries_sent: int = 0
    timeouts: int = 0

    def __post_init__(self) -> None:
        owner = "ArmSamples"
        object.__setattr__(
            self, "latencies_ms", read_only_latencies(f"{owner}.latencies_ms", self.latencies_ms)
        )
        for name in ("successes", "calls", "retries_sent", "timeouts"):
            value = getattr(self, name)
            _require(_is_count(value), owner, name, "an integer >= 0", value)
            object.__setattr__(self, name, int(value))
        _require(self.successes <= self.calls, owner, "successes", f"<= calls ({self.calls})", self.successes)
        _require(
            self.timeouts <= self.attempts,
            owner,
            "timeouts",
            f"<= attempts = calls + retries_sent ({self.attempts})",
            self.timeouts,
        )

    @property
    def latency_array(self) -> npt.NDArray[np.float64]:
        return cast("npt.NDArray[np.float64]", self.latencies_ms)

    @property
    def attempts(self) -> int:
        return self.calls + self.retries_sent

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.calls if self.calls else None

    @property
    def retries_per_call(self) -> float | None:
        return self.retries_sent / self.calls if self.calls else None

    @property
    def timeout_share(self) -> float | None:
        """Timed-out attempts / attempts."""
        return self.timeouts / self.attempts if self.attempts else None

    def completed_between(self, low_ms: float, high_ms: float) -> int:
        """Attempts that answered after `low_ms` and before `high_ms`.

        Timed-out attempts are in the latencies at their cut-off: with `high_ms` at or below the
        arm's own timeout, they are counted by `timeouts`, not here. Latencies within 1 us of
        `high_ms` count as cut off (float arithmetic on a cut-off can land a hair under it).
        """
        latencies = self.latency_array
        return int(np.count_nonzero((latencies > low_ms) & (latencies < high_ms - 1e-3)))

    def figures(self) -> dict[str, float | None]:
        """The before/after figures an optimization record shows (None where unmeasured)."""
        latencies = self.latency_array
        p50 = p95 = p99 = None
        if latencies.size:
            p50, p95, p99 = (float(v) for v in np.quantile(latencies, [0.5, 0.95, 0.99]))
        return {
            "calls": float(self.calls),
            SUCCESS_RATE: self.success_rate,
            "latency_p50_ms": p50,
            "latency_p95_ms": p95,
            "latency_p99_ms": p99,
            RETRIES: self.retries_per_call,
            TIMEOUTS: self.timeout_share,
            "latency_samples": float(latencies.size),
        }


class CanaryDecision(StrEnum):
    """What to do with the canary now."""

    KEEP = "keep"
    REVERT = "revert"
    CONTINUE = "continue"


@dataclass(frozen=True, slots=True)
class CanaryVerdict:
    """The decision, why (one paragraph), the tests behind it and both arms' figures.

    `outcome` refines the decision: "better" or "neutral" for a keep; "worse", "ineffective" (a
    timeout raise that rescued too few calls while calls still time out) or, with `final=True`,
    "insufficient" / "inconclusive" for a revert; "insufficient" (too few samples)
    or "inconclusive" (looks worse, not yet significantly) for a continue. `harmed` and
    `improved` name the metrics that moved significantly.
    """

    parameter: str
    decision: CanaryDecision
    outcome: str
    reason: str
    tests: dict[str, TestResult] = field(default_factory=dict)
    figures_baseline: dict[str, float | None] = field(default_factory=dict)
    figures_canary: dict[str, float | None] = field(default_factory=dict)
    harmed: tuple[str, ...] = ()
    improved: tuple[str, ...] = ()

    @property
    def p_values(self) -> dict[str, float]:
        """Each test's p-value by name (for the optimization record)."""
        return {name: result.p_value for name, result in self.tests.items()}


def target_metrics(
    parameter: str, old_value: float | None = None, new_value: float | None = None
) -> tuple[str, ...]:
    """The metrics a change of `parameter` is meant to improve (all of them when unknown)."""
    targets = TARGET_METRICS.get(parameter)
    if targets is None or old_value is None or new_value is None or new_value == old_value:
        if targets is None:
            return METRICS
        return tuple(dict.fromkeys(targets[0] + targets[1]))
    return targets[0] if new_value > old_value else targets[1]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _ratio_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _figures_sentence(baseline: dict[str, float | None], canary: dict[str, float | None]) -> str:
    def latency(f: dict[str, float | None]) -> str:
        return f"{_ms(f['latency_p50_ms'])}/{_ms(f['latency_p95_ms'])}/{_ms(f['latency_p99_ms'])} ms"

    return (
        f"canary {canary['calls']:.0f} calls vs baseline {baseline['calls']:.0f}: success "
        f"{_pct(canary[SUCCESS_RATE])} vs {_pct(baseline[SUCCESS_RATE])}, p50/p95/p99 {latency(canary)} vs "
        f"{latency(baseline)}, retries/call {_ratio_text(canary[RETRIES])} vs {_ratio_text(baseline[RETRIES])}, "
        f"timeouts {_pct(canary[TIMEOUTS])} vs {_pct(baseline[TIMEOUTS])}"
    )


def evaluate(
    parameter: str,
    baseline: ArmSamples,
    canary: ArmSamples,
    config: CanaryConfig | None = None,
    *,
    old_value: float | None = None,
    new_value: float | None = None,
    final: bool = False,
    concurrent: bool = True,
) -> CanaryVerdict:
    """Judge the canary arm against the baseline (see the module docstring).

    `old_value` / `new_value` (the baseline's and the canary's value of `parameter`) pick the
    metrics the change targets and go into the reason; without them every metric counts as a
    target. `final=True` turns "continue" into "revert". `concurrent=False` says the baseline is
    the window before the change (a before/after comparison), not the same minutes.
    """
    cfg = config if config is not None else CanaryConfig()
    figures_baseline = baseline.figures()
    figures_canary = canary.figures()
    change = parameter
    if old_value is not None and new_value is not None:
        change = f"{parameter} {old_value:g} -> {new_value:g}"
    figures = _figures_sentence(figures_baseline, figures_canary)

    def verdict(
        decision: CanaryDecision,
        outcome: str,
        because: str,
        tests: dict[str, TestResult] | None = None,
        harmed: tuple[str, ...] = (),
        improved: tuple[str, ...] = (),
    ) -> CanaryVerdict:
        reason = f"{change}: {figures}. {decision.value.upper()} ({outcome}): {because}"
        return CanaryVerdict(
            parameter,
            decision,
            outcome,
            reason,
            tests or {},
            figures_baseline,
            figures_canary,
            harmed,
            improved,
        )

    needed = cfg.min_samples_per_arm
    if min(baseline.calls, canary.calls) < needed:
        because = f"fewer than {needed} calls in an arm"
        if final:
            return verdict(
                CanaryDecision.REVERT,
                "insufficient",
                f"{because} when the canary's time ran out; a change is kept only with evidence that it is safe.",
            )
        return verdict(CanaryDecision.CONTINUE, "insufficient", f"{because}; collecting more.")

    alpha = cfg.alpha
    tests: dict[str, TestResult] = {
        "success_lower": two_proportion_test(
            baseline.successes, baseline.calls, canary.successes, canary.calls, "canary_less"
        ),
        "success_higher": two_proportion_test(
            baseline.successes, baseline.calls, canary.successes, canary.calls, "canary_greater"
        ),
    }
    sides: tuple[tuple[str, Alternative], ...] = (("higher", "canary_greater"), ("lower", "canary_less"))
    for side, alternative in sides:
        tests[f"retries_{side}"] = two_proportion_test(
            baseline.retries_sent,
            baseline.attempts,
            canary.retries_sent,
            canary.attempts,
            alternative,
            metric="retry share of attempts",
        )
    for side, alternative in sides:
        tests[f"timeouts_{side}"] = two_proportion_test(
            baseline.timeouts,
            baseline.attempts,
            canary.timeouts,
            canary.attempts,
            alternative,
            metric="timeout share of attempts",
        )
    latency_compared = min(baseline.latency_array.size, canary.latency_array.size) >= needed
    if latency_compared:
        tests["latency_higher"] = mann_whitney_u(
            baseline.latency_array, canary.latency_array, "canary_greater"
        )
        tests["latency_lower"] = mann_whitney_u(baseline.latency_array, canary.latency_array, "canary_less")

    def significant(name: str) -> bool:
        return name in tests and tests[name].significant(alpha)

    timeout_raise = (
        parameter == "timeout_s" and old_value is not None and new_value is not None and new_value > old_value
    )
    # Before/after, a timeout raise is not compared on latency or timeouts with the window before:
    # that window predates the latency change the raise answers (see the module docstring).
    provider_confounded = timeout_raise and not concurrent
    slower_effect = tests["latency_higher"].effect - 0.5 if latency_compared else 0.0
    success_up = significant("success_higher")
    harm: dict[str, str] = {}
    if significant("success_lower"):
        harm[SUCCESS_RATE] = tests["success_lower"].describe()
    if significant("latency_higher") and slower_effect >= cfg.min_effect and not provider_confounded:
        harm[LATENCY] = tests["latency_higher"].describe()
    if significant("retries_higher") and not success_up:
        harm[RETRIES] = f"{tests['retries_higher'].describe()}, without a higher success rate"
    if significant("timeouts_higher") and not success_up and not provider_confounded:
        harm[TIMEOUTS] = f"{tests['timeouts_higher'].describe()}, without a higher success rate"
    improved: dict[str, str] = {}
    if success_up and not provider_confounded:
        improved[SUCCESS_RATE] = tests["success_higher"].describe()
    if significant("latency_lower") and -slower_effect >= cfg.min_effect and not provider_confounded:
        improved[LATENCY] = tests["latency_lower"].describe()
    if significant("retries_lower"):
        improved[RETRIES] = tests["retries_lower"].describe()
    if significant("timeouts_lower") and not provider_confounded:
        improved[TIMEOUTS] = tests["timeouts_lower"].describe()
    ineffective_raise = ""
    if timeout_raise:
        assert old_value is not None and new_value is not None
        rescued = canary.completed_between(old_value * 1000.0, new_value * 1000.0)
        would_time_out = rescued + canary.timeouts  # at the old value, in the canary's own minutes
        answered = canary.latency_array.size - canary.timeouts
        figures_canary[RESCUED] = float(rescued)
        rescue = (
            f"{rescued} of the {would_time_out} canary calls the old {old_value:g} s timeout would have "
            f"cut off completed under the new {new_value:g} s"
        )
        if would_time_out and rescued >= cfg.min_rescued_share * would_time_out:
            improved.setdefault(TIMEOUTS, rescue)
        elif (
            canary.timeouts
            and answered > canary.timeouts
            and not (SUCCESS_RATE in improved or TIMEOUTS in improved)
        ):
            ineffective_raise = (
                f"{rescue} (under {cfg.min_rescued_share:.0%}), while {answered} calls answered: the calls "
                f"that time out do not answer at all, and waiting longer for them only delays them"
            )
    improved_names = tuple(improved)
    not_compared = (
        "" if latency_compared else f" Latency not compared (fewer than {needed} samples in an arm)."
    )
    if provider_confounded:
        not_compared += (
            " Latency and timeouts not compared with the window before: it predates the latency change "
            "the raise answers; the raise is judged by the calls it rescued."
        )

    if harm:
        because = "significantly worse on " + "; ".join(f"{name} ({text})" for name, text in harm.items())
        return verdict(
            CanaryDecision.REVERT,
            "worse",
            f"{because}. A harmful change is never kept.{not_compared}",
            tests,
            tuple(harm),
            improved_names,
        )
    if ineffective_raise:
        return verdict(
            CanaryDecision.REVERT,
            "ineffective",
            f"{ineffective_raise}. A raise is kept only when it rescues calls the old timeout cut off.{not_compared}",
            tests,
            (),
            improved_names,
        )

    looks_worse: list[str] = []
    base_rate, canary_rate = baseline.success_rate, canary.success_rate
    if (
        base_rate is not None
        and canary_rate is not None
        and base_rate - canary_rate > cfg.success_drop_tolerance
    ):
        looks_worse.append(
            f"success rate {(base_rate - canary_rate) * 100:.2f} points lower (tolerance "
            f"{cfg.success_drop_tolerance * 100:.2f}), "
            f"p={tests['success_lower'].p_value:.3g}"
        )
    if latency_compared and slower_effect >= cfg.min_effect and not provider_confounded:
        looks_worse.append(
            f"latency shifted up (P(canary slower)={0.5 + slower_effect:.2f}), "
            f"p={tests['latency_higher'].p_value:.3g}"
        )
    if looks_worse:
        because = "looks worse but not significantly yet: " + "; ".join(looks_worse)
        if final:
            return verdict(
                CanaryDecision.REVERT,
                "inconclusive",
                f"{because}; the canary's time ran out, and a change is kept only when it shows no harm."
                f"{not_compared}",
                tests,
                (),
                improved_names,
            )
        return verdict(
            CanaryDecision.CONTINUE,
            "inconclusive",
            f"{because}; collecting more.{not_compared}",
            tests,
            (),
            improved_names,
        )

    targets = target_metrics(parameter, old_value, new_value)
    hits = [name for name in improved_names if name in targets]
    if hits:
        because = "no metric significantly worse, better on its target " + "; ".join(
            f"{name} ({improved[name]})" for name in hits
        )
        return verdict(CanaryDecision.KEEP, "better", f"{because}.{not_compared}", tests, (), improved_names)
    because = f"no metric significantly worse or better on its target ({', '.join(targets)})"
    others = [name for name in improved_names if name not in targets]
    if others:
        because += f"; better on {', '.join(others)}"
    safety = (
        widens_safety(parameter, old_value, new_value)
        if old_value is not None and new_value is not None
        else None
    )
    if safety is True:
        because += "; it widens a safety margin at no measured cost"
    else:
        because += "; the measured reason the tuner proposed it stands, and it costs nothing measurable"
    return verdict(
        CanaryDecision.KEEP,
        "neutral",
        f"{because}, so it is kept.{not_compared}",
        tests,
        (),
        improved_names,
    )
