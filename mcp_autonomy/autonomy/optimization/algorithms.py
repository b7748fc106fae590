"""Tuners: one small class per tunable, each turning a window of `LaneEvidence` into a `Proposal`.

Every tuner answers `propose(provider, current, evidence, conservative=...)` with a `Proposal`
(the new value, a reason quoting the measured figures, and those figures) or None. Tuners read
no clock, keep no state and do no I/O: the same inputs give the same answer, so a recorded window
replays exactly. Each has a frozen config whose defaults are the named constants below, checked
once with a message naming the allowed range.

Rules every tuner keeps:

- **Bounds.** A proposal is always inside the tuner's configured range, which is inside the
  field's bounds in `ProviderTunables` (`parameter_bounds`).
- **Minimum evidence.** Too few samples -> no proposal.
- **Hysteresis.** A change smaller than the tuner's minimum step is not proposed, so measurement
  noise does not make the value flap (and does not start a canary for nothing).
- **Conservative mode only widens safety margins.** `SAFER_DIRECTION` says, per parameter, which
  way is safer (a longer timeout, a lower rate limit, a shorter cache TTL, a lower breaker
  threshold). In conservative mode a tuner uses wider margins, so its value is never less safe
  than the normal mode's for the same inputs; and it never proposes a value that is less safe
  than both the current value and the provider's documented default. Moving back towards the
  default after an earlier widening is allowed (otherwise a rate limit halved in one 429 storm
  could never recover); moving past it is not.
  Retries are the exception, because there "safer" cuts both ways (fewer retries spare a sick
  provider, more retries save payments): conservative mode keeps at least
  `DEFAULT_CONSERVATIVE_MIN_ATTEMPTS` attempts and otherwise tunes as normal.

There is no backoff (`base_delay_s`) tuner: the evidence has no time-to-recovery of retried
calls to learn it from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol, TypeGuard, runtime_checkable

from annotated_types import Ge, Gt, Le, Lt

from mcp_autonomy.autonomy.optimization.evidence import LaneEvidence
from mcp_autonomy.resilience.tunables import (
    BREAKER_FAILURE_RATE_BOUNDS,
    MAX_ATTEMPTS_BOUNDS,
    RATE_LIMIT_BOUNDS,
    TIMEOUT_S_BOUNDS,
    ProviderTunables,
    default_tunables,
)

# ---------------------------------------------------------------------------------------------
# Defaults
# ---------------------------------------------------------------------------------------------

DEFAULT_TIMEOUT_QUANTILE: Final = 0.999  # the timeout covers all but one call in a thousand ...
DEFAULT_TIMEOUT_MIN_SAMPLES: Final = 200  # ... measured over at least this many calls ...
DEFAULT_TIMEOUT_MARGIN: Final = 1.5  # ... times this margin ...
DEFAULT_CONSERVATIVE_TIMEOUT_MARGIN: Final = 2.0  # ... (this one in conservative mode) ...
DEFAULT_TIMEOUT_FLOOR_S: Final = 0.25  # ... plus this much (jitter of a fast provider's network) ...
# ... and never under 3 x p99: a timed-out collect is an ambiguous payment (an M-Pesa STK push
# without its CheckoutRequestID cannot even be queried), so only the extreme tail may be cut off.
# A lognormal p99.9 x 1.5 still times out ~1 call in 30 000; 3 x p99 about 1 in 600 000.
DEFAULT_TIMEOUT_MIN_P99_MULTIPLE: Final = 3.0
DEFAULT_MIN_TIMEOUT_S: Final = 1.0  # never cut a mobile-money call shorter than this
DEFAULT_MAX_TIMEOUT_S: Final = 60.0  # a payment API call that takes longer is a stuck call
DEFAULT_TIMEOUT_MIN_RELATIVE_CHANGE: Final = 0.2  # hysteresis: change by >= 20 % ...
DEFAULT_TIMEOUT_MIN_ABSOLUTE_CHANGE_S: Final = 0.5  # ... and >= 0.5 s, or not at all
DEFAULT_TIMEOUT_PILEUP_SHARE: Final = 0.01  # >= 1 % of calls timing out: too short or provider down
# Latency regimes recur (a slow peak every day): a quarter-hour of fast calls says nothing about
# the next peak. So a cut never goes below what the long-run horizon's latency needed (the same
# quantile x margin and p99 multiple, on the long-run p99.9 and p99), and is not made at all
# before that horizon has been observed; a fresh process waits for it. An hour is the long-run
# horizon the telemetry keeps (the optimizer's LONG_RUN_WINDOW_S); a day would cover a daily cycle.
DEFAULT_TIMEOUT_MIN_HISTORY_S: Final = 3600.0
MAX_TIMEOUT_MIN_HISTORY_S: Final = 7 * 86_400.0

DEFAULT_RETRY_MIN_RETRIES: Final = 50  # retries seen before judging how often they help
DEFAULT_LOW_RECOVERY_RATE: Final = 0.1  # fewer than 1 retry in 10 saves a payment: one attempt less
DEFAULT_HIGH_RECOVERY_RATE: Final = 0.5  # half the retries save a payment: worth one more ...
DEFAULT_MIN_EXHAUSTED: Final = 5  # ... when this many payments ran out of attempts ...
DEFAULT_MIN_TRANSIENT_SHARE: Final = 0.5  # ... and most errors are the kind a retry can cure
# Never down to 1 attempt on its own: with no retries sent there is no recovery evidence to raise
# it from, so one bad quarter-hour would switch a provider's retries off for good; the retry
# budget already caps what retries add to a sick provider's load (about 1.2 x). An operator (or a
# config with min_attempts=1) may still go to 1.
DEFAULT_MIN_ATTEMPTS: Final = 2
DEFAULT_MAX_ATTEMPTS: Final = 5  # below retry.MAX_ATTEMPTS_LIMIT: more only multiplies load
DEFAULT_CONSERVATIVE_MIN_ATTEMPTS: Final = 2  # conservative mode always keeps one retry
# A cut expires with its reason: attempts below the provider's default come back as soon as this
# many retries in a short recent window recovered at `high_recovery_rate` or better.
DEFAULT_RESTORE_MIN_RETRIES: Final = 10

DEFAULT_RATE_MIN_CALLS: Final = 100
DEFAULT_RATE_LIMITED_SHARE: Final = 0.01  # >= 1 % of calls answered 429: multiplicative decrease
DEFAULT_RATE_DECREASE_FACTOR: Final = 0.7  # Netflix AIMDLimit's backoff ratio ...
DEFAULT_CONSERVATIVE_RATE_DECREASE_FACTOR: Final = 0.5  # ... and a harder one in conservative mode
DEFAULT_UTILISATION_THRESHOLD: Final = 0.8  # raise only a limit that is actually being used ...
DEFAULT_RATE_INCREASE_FRACTION: Final = 0.1  # ... by 10 % of the provider's default ...
DEFAULT_MIN_RATE_INCREASE_PER_S: Final = 5.0  # ... or 5/s, whichever is more ...
DEFAULT_CONSERVATIVE_INCREASE_SCALE: Final = 0.5  # ... (half of that in conservative mode) ...
DEFAULT_LATENCY_RISE_TOLERANCE: Final = 0.2  # ... and only while p50 is within +20 % of normal
DEFAULT_MIN_RATE_PER_S: Final = 1.0
DEFAULT_MAX_RATE_PER_S: Final = 5_000.0
DEFAULT_RATE_MIN_RELATIVE_CHANGE: Final = 0.05

DEFAULT_TTL_MIN_QUERIES: Final = 100
DEFAULT_TTL_MIN_HITS: Final = 20  # cache hits seen before judging their staleness
DEFAULT_STALE_SHARE_THRESHOLD: Final = 0.01  # >= 1 % of hits were stale: shorten the TTL ...
DEFAULT_TTL_DECREASE_FACTOR: Final = 0.5  # ... by half ...
DEFAULT_CONSERVATIVE_TTL_DECREASE_FACTOR: Final = 0.4  # ... (more in conservative mode)
DEFAULT_LOW_HIT_RATE: Final = 0.2  # < 20 % hits and nothing stale: lengthen the TTL ...
DEFAULT_TTL_INCREASE_FACTOR: Final = 1.5  # ... by half ...
DEFAULT_CONSERVATIVE_TTL_INCREASE_FACTOR: Final = 1.25  # ... (by a quarter in conservative mode)
DEFAULT_MIN_TTL_S: Final = 0.5
DEFAULT_MAX_TTL_S: Final = 60.0  # a payment status a minute old is not worth serving
DEFAULT_TTL_MIN_RELATIVE_CHANGE: Final = 0.2
DEFAULT_TTL_MIN_ABSOLUTE_CHANGE_S: Final = 0.25

DEFAULT_BREAKER_MULTIPLIER: Final = 2.0  # threshold = normal error rate x 2 ...
DEFAULT_BREAKER_MARGIN: Final = 0.1  # ... + 10 points ...
DEFAULT_CONSERVATIVE_BREAKER_MULTIPLIER: Final = 1.5  # ... (x 1.5 + 5 points in conservative mode)
DEFAULT_CONSERVATIVE_BREAKER_MARGIN: Final = 0.05
DEFAULT_MIN_BREAKER_THRESHOLD: Final = 0.2  # 2 failures in the breaker's minimum 10 calls
DEFAULT_MAX_BREAKER_THRESHOLD: Final = 0.6  # a provider failing more than this is down, not noisy
DEFAULT_BREAKER_MIN_CALLS: Final = 200
DEFAULT_BREAKER_OUTAGE_RECOVERY_RATE: Final = 0.1  # retries saving fewer payments than this: an outage ...
DEFAULT_BREAKER_OUTAGE_MIN_RETRIES: Final = 50  # ... over at least this many retries ...
DEFAULT_BREAKER_OUTAGE_MIN_TRIALS: Final = 2  # ... while the breaker is opening (half-open trials) ...
DEFAULT_BREAKER_OUTAGE_FACTOR: Final = 0.7  # ... so the threshold steps down by this factor (opens sooner)
DEFAULT_BREAKER_RESTORE_MIN_CALLS: Final = 30  # a threshold cut in an outage comes back once this many ...
DEFAULT_BREAKER_RESTORE_SHARE: Final = 0.5  # ... recent calls fail under half the default threshold
DEFAULT_BREAKER_MIN_ABSOLUTE_CHANGE: Final = 0.05
DEFAULT_BREAKER_MIN_RELATIVE_CHANGE: Final = 0.1

SAFER_DIRECTION: Final[Mapping[str, int]] = MappingProxyType(
    {
        "timeout_s": +1,  # a longer timeout cuts off fewer slow-but-good calls
        "max_attempts": +1,  # more attempts ride out more blips (see the module docstring)
        "base_delay_s": +1,  # longer backoff is gentler on a struggling provider
        "rate_limit_per_s": -1,  # more headroom under the provider's own limit
        "status_cache_ttl_s": -1,  # fresher payment statuses
        "breaker_failure_rate": -1,  # the breaker opens sooner
        "breaker_wait_s": +1,  # a longer open period spares a provider that is down
    }
)
"""+1 where a higher value is the safer one, -1 where a lower value is."""

TUNABLE_PARAMETERS: Final[tuple[str, ...]] = tuple(ProviderTunables.model_fields)


# ---------------------------------------------------------------------------------------------
# Helpers shared by the tuners and by the optimizer loop
# ---------------------------------------------------------------------------------------------


def parameter_bounds(parameter: str) -> tuple[float, float]:
    """The (lowest, highest) value `ProviderTunables` accepts for `parameter`.

    Read from the field's own constraints, so it cannot drift from the model. Raises
    `ValueError` naming the known parameters for an unknown name.
    """
    info = ProviderTunables.model_fields.get(parameter)
    if info is None:
        raise ValueError(
            f"unknown parameter {parameter!r}; tunable parameters: {', '.join(TUNABLE_PARAMETERS)}"
        )
    low, high = -math.inf, math.inf
    for constraint in info.metadata:
        if isinstance(constraint, Ge):
            low = float(constraint.ge)  # type: ignore[arg-type]
        elif isinstance(constraint, Gt):
            low = float(constraint.gt)  # type: ignore[arg-type]
        elif isinstance(constraint, Le):
            high = float(constraint.le)  # type: ignore[arg-type]
        elif isinstance(constraint, Lt):
            high = float(constraint.lt)  # type: ignore[arg-type]
    return low, high


def widens_safety(parameter: str, old_value: float, new_value: float) -> bool | None:
    """True if the change moves `parameter` the safer way, False the other way, None if unknown
    or unchanged."""
    direction = SAFER_DIRECTION.get(parameter)
    if direction is None or new_value == old_value:
        return None
    return (new_value - old_value) * direction > 0


def _safest(parameter: str, *values: float) -> float:
    return max(values) if SAFER_DIRECTION[parameter] > 0 else min(values)


def _least_safe(parameter: str, *values: float) -> float:
    return min(values) if SAFER_DIRECTION[parameter] > 0 else max(values)


def _conservative_target(parameter: str, target: float, current: float, default: float) -> float:
    """Conservative mode: never less safe than both the current value and the default."""
    return _safest(parameter, target, _least_safe(parameter, current, default))


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _passes_hysteresis(current: float, target: float, min_relative: float, min_absolute: float) -> bool:
    change = abs(target - current)
    if change == 0 or change < min_absolute:
        return False
    return current == 0 or change / abs(current) >= min_relative


def _percent_change(current: float, target: float) -> str:
    return f"{(target - current) / current:+.0%}" if current else "new"


def _conservative_note(conservative: bool) -> str:
    if not conservative:
        return ""
    return " (conservative mode: wider margin, never past the default in the less safe direction)"


@dataclass(frozen=True, slots=True)
class Proposal:
    """A tuner's answer: set `parameter` from `old_value` to `new_value`, because of `reason`.

    `evidence` holds the measured figures behind it (for the optimization record); treat it as
    read-only. `new_value` is a float even for an integer field; `apply_proposal` converts it.
    """

    parameter: str
    old_value: float
    new_value: float
    reason: str
    evidence: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        low, high = parameter_bounds(self.parameter)
        value = self.new_value
        if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
            raise ValueError(
                f"Proposal.new_value for {self.parameter} must be in [{low:g}, {high:g}], got {value!r}"
            )

    @property
    def widens_safety(self) -> bool | None:
        """Whether this change moves its parameter the safer way (see `SAFER_DIRECTION`)."""
        return widens_safety(self.parameter, self.old_value, self.new_value)


def apply_proposal(current: ProviderTunables, proposal: Proposal) -> ProviderTunables:
    """`current` with the proposal's value, validated by `ProviderTunables` (integers rounded)."""
    value: float = proposal.new_value
    if ProviderTunables.model_fields[proposal.parameter].annotation is int:
        value = round(value)
    return ProviderTunables.model_validate({**current.model_dump(), proposal.parameter: value})


@runtime_checkable
class Tuner(Protocol):
    """Proposes a new value for one `ProviderTunables` field from one window of evidence.

    `provider` names the lane (its documented default is `default_tunables(provider)`);
    `current` is the lane's tunables now. Returns None when the evidence is too thin or the
    change would be too small to be worth a canary.
    """

    parameter: str

    def propose(
        self, provider: str, current: ProviderTunables, evidence: LaneEvidence, *, conservative: bool
    ) -> Proposal | None: ...


@runtime_checkable
class RestoringTuner(Tuner, Protocol):
    """A tuner whose cuts below the provider's default expire with the reason for them.

    `restore` reads a short recent window (the optimizer's `RESTORE_WINDOW_S`, not the tuner's
    long one) and proposes the provider's documented default when the condition that justified
    the cut no longer holds. The optimizer applies such a proposal at once, without a canary:
    it moves back to the documented default, which is never less safe than the cut.
    """

    def restore(self, provider: str, current: ProviderTunables, recent: LaneEvidence) -> Proposal | None: ...


# ---------------------------------------------------------------------------------------------
# Config validation
# ---------------------------------------------------------------------------------------------


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool, owner: str, name: str, allowed: str, value: object) -> None:
    if not condition:
        raise ValueError(f"{owner}.{name} must be {allowed}, got {value!r}")


def _require_fraction(owner: str, name: str, value: object, *, allow_zero: bool = True) -> None:
    ok = _is_number(value) and (value >= 0 if allow_zero else value > 0) and value <= 1
    _require(ok, owner, name, "in [0, 1]" if allow_zero else "in (0, 1]", value)


def _require_factor(owner: str, name: str, value: object) -> None:
    """A multiplicative decrease: strictly between 0 and 1."""
    _require(_is_number(value) and 0 < value < 1, owner, name, "in (0, 1)", value)


def _require_count(owner: str, name: str, value: object, minimum: int = 1) -> None:
    _require(_is_count(value) and value >= minimum, owner, name, f"an integer >= {minimum}", value)


def _require_range(
    owner: str, low_name: str, low: object, high_name: str, high: object, bounds: tuple[float, float]
) -> None:
    _require(
        _is_number(low) and bounds[0] <= low,
        owner,
        low_name,
        f"a number in [{bounds[0]:g}, {high_name}]",
        low,
    )
    _require(
        _is_number(low) and _is_number(high) and low <= high <= bounds[1],
        owner,
        high_name,
        f"a number in [{low_name}={low!r}, {bounds[1]:g}]",
        high,
    )


# ---------------------------------------------------------------------------------------------
# Timeout
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeoutTunerConfig:
    """Timeout = latency quantile x margin + floor, clamped, changed only by a worthwhile step."""

    quantile: float = DEFAULT_TIMEOUT_QUANTILE
    min_samples: int = DEFAULT_TIMEOUT_MIN_SAMPLES
    margin: float = DEFAULT_TIMEOUT_MARGIN
    conservative_margin: float = DEFAULT_CONSERVATIVE_TIMEOUT_MARGIN
    floor_s: float = DEFAULT_TIMEOUT_FLOOR_S
    min_p99_multiple: float = DEFAULT_TIMEOUT_MIN_P99_MULTIPLE
    min_timeout_s: float = DEFAULT_MIN_TIMEOUT_S
    max_timeout_s: float = DEFAULT_MAX_TIMEOUT_S
    min_relative_change: float = DEFAULT_TIMEOUT_MIN_RELATIVE_CHANGE
    min_absolute_change_s: float = DEFAULT_TIMEOUT_MIN_ABSOLUTE_CHANGE_S
    pileup_timeout_share: float = DEFAULT_TIMEOUT_PILEUP_SHARE
    min_history_s: float = DEFAULT_TIMEOUT_MIN_HISTORY_S

    def __post_init__(self) -> None:
        owner = "TimeoutTunerConfig"
        _require(
            _is_number(self.min_history_s) and 0 <= self.min_history_s <= MAX_TIMEOUT_MIN_HISTORY_S,
            owner,
            "min_history_s",
            f"in [0, {MAX_TIMEOUT_MIN_HISTORY_S:g}] seconds",
            self.min_history_s,
        )
        _require(
            _is_number(self.quantile) and 0.5 <= self.quantile < 1,
            owner,
            "quantile",
            "in [0.5, 1)",
            self.quantile,
        )
        _require_count(owner, "min_samples", self.min_samples)
        _require(
            _is_number(self.margin) and 1 <= self.margin <= 10, owner, "margin", "in [1, 10]", self.margin
        )
        _require(
            _is_number(self.conservative_margin) and self.margin <= self.conservative_margin <= 10,
            owner,
            "conservative_margin",
            f"in [margin={self.margin!r}, 10] (conservative mode only widens margins)",
            self.conservative_margin,
        )
        _require(
            _is_number(self.floor_s) and 0 <= self.floor_s <= 10,
            owner,
            "floor_s",
            "in [0, 10] seconds",
            self.floor_s,
        )
        _require_range(
            owner, "min_timeout_s", self.min_timeout_s, "max_timeout_s", self.max_timeout_s, TIMEOUT_S_BOUNDS
        )
        _require_fraction(owner, "min_relative_change", self.min_relative_change)
        _require(
            _is_number(self.min_absolute_change_s) and self.min_absolute_change_s >= 0,
            owner,
            "min_absolute_change_s",
            "a number of seconds >= 0",
            self.min_absolute_change_s,
        )
        _require_fraction(owner, "pileup_timeout_share", self.pileup_timeout_share, allow_zero=False)


class TimeoutTuner:
    """Sets `timeout_s` from a high latency quantile with a margin.

    target = quantile(latencies, q) x margin + floor, rounded up to 0.1 s and clamped to
    [min_timeout_s, max_timeout_s]; proposed only when it moves the timeout by at least
    `min_relative_change` and `min_absolute_change_s`. When `pileup_timeout_share` or more of the
    calls already time out, the timeout is either too short or the provider is down, and
    neither is a reason to shorten it: only increases are proposed then. Timed-out calls are in
    the latencies at the current timeout, so in a pile-up the quantile sits at the timeout and
    the target is margin x the timeout.

    The long-run horizon bounds every cut (latency regimes recur, and the window may have seen
    only the fast one): the target is at least the same formula on the long-run p99.9 and p99
    (`LaneEvidence.long_run_latency_p999_ms`, `_p99_ms`), and no cut at all is proposed while the
    long-run figures span less than `min_history_s` of the provider's history
    (`long_run_covered_s`). Raises are never held back. Evidence without these long-run figures
    (None) is judged on the window alone.
    """

    parameter: str = "timeout_s"

    def __init__(self, config: TimeoutTunerConfig | None = None) -> None:
        self.config = config if config is not None else TimeoutTunerConfig()

    def propose(
        self, provider: str, current: ProviderTunables, evidence: LaneEvidence, *, conservative: bool
    ) -> Proposal | None:
        cfg = self.config
        quantile_ms = evidence.latency_quantile(cfg.quantile, min_samples=cfg.min_samples)
        if quantile_ms is None:
            return None
        now_s = current.timeout_s
        margin = cfg.conservative_margin if conservative else cfg.margin
        p99_ms = evidence.latency_quantile(0.99, min_samples=cfg.min_samples) or quantile_ms
        p99_multiple = cfg.min_p99_multiple * margin / cfg.margin  # conservative widens it alike
        raw_s = max(quantile_ms / 1000.0 * margin + cfg.floor_s, p99_ms / 1000.0 * p99_multiple)
        window_raw_s = raw_s
        long_run_s = _long_run_timeout_s(evidence, margin, cfg.floor_s, p99_multiple)
        if long_run_s is not None:
            raw_s = max(raw_s, long_run_s)
        target_s = raw_s
        if conservative:
            target_s = _conservative_target(
                self.parameter, target_s, now_s, default_tunables(provider).timeout_s
            )
        low, high = parameter_bounds(self.parameter)
        rounded_up = math.ceil(target_s * 10.0 - 1e-9) / 10.0
        target_s = _clamp(rounded_up, max(low, cfg.min_timeout_s), min(high, cfg.max_timeout_s))
        timeout_share = evidence.timeout_share or 0.0
        pileup = timeout_share >= cfg.pileup_timeout_share
        if pileup and target_s <= now_s:
            return None
        covered_s = evidence.long_run_covered_s
        too_new = covered_s is not None and covered_s < cfg.min_history_s
        if too_new and target_s < now_s:
            return None
        if not _passes_hysteresis(now_s, target_s, cfg.min_relative_change, cfg.min_absolute_change_s):
            return None
        q_label = f"p{cfg.quantile * 100:g}"
        reason = (
            f"{q_label} latency {quantile_ms:.0f} ms over {evidence.latency_count} calls x margin {margin:g} "
            f"+ {cfg.floor_s:g} s, at least {p99_multiple:g} x p99 {p99_ms:.0f} ms = {raw_s:.2f} s; "
            f"timeout {now_s:g} s -> {target_s:g} s "
            f"({_percent_change(now_s, target_s)})"
        )
        if long_run_s is not None and long_run_s > window_raw_s:
            reason += (
                f"; held at the long-run horizon's need {long_run_s:.2f} s (p99.9 "
                f"{evidence.long_run_latency_p999_ms or 0:.0f} ms, p99 {evidence.long_run_latency_p99_ms or 0:.0f} ms)"
            )
        if pileup:
            reason += f"; {timeout_share:.1%} of calls timed out, so the timeout is only ever raised now"
        reason += _conservative_note(conservative)
        figures = {
            "quantile": cfg.quantile,
            "latency_quantile_ms": quantile_ms,
            "samples": float(evidence.latency_count),
            "margin": margin,
            "timeout_share": timeout_share,
            "raw_target_s": raw_s,
            "window_target_s": window_raw_s,
        }
        if long_run_s is not None:
            figures["long_run_target_s"] = long_run_s
        return Proposal(self.parameter, now_s, target_s, reason, figures)


def _long_run_timeout_s(
    evidence: LaneEvidence, margin: float, floor_s: float, p99_multiple: float
) -> float | None:
    """The timeout the long-run horizon's latency needs (p99.9 x margin + floor, at least the
    p99 multiple x p99), or None when the evidence has neither long-run quantile."""
    needs = []
    if evidence.long_run_latency_p999_ms is not None:
        needs.append(evidence.long_run_latency_p999_ms / 1000.0 * margin + floor_s)
    if evidence.long_run_latency_p99_ms is not None:
        needs.append(evidence.long_run_latency_p99_ms / 1000.0 * p99_multiple)
    return max(needs) if needs else None


# ---------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryTunerConfig:
    """One attempt more or less, from how often retries turn a failure into a success."""

    min_retries: int = DEFAULT_RETRY_MIN_RETRIES
    low_recovery_rate: float = DEFAULT_LOW_RECOVERY_RATE
    high_recovery_rate: float = DEFAULT_HIGH_RECOVERY_RATE
    min_exhausted: int = DEFAULT_MIN_EXHAUSTED
    min_transient_share: float = DEFAULT_MIN_TRANSIENT_SHARE
    min_attempts: int = DEFAULT_MIN_ATTEMPTS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    conservative_min_attempts: int = DEFAULT_CONSERVATIVE_MIN_ATTEMPTS
    restore_min_retries: int = DEFAULT_RESTORE_MIN_RETRIES

    def __post_init__(self) -> None:
        owner = "RetryTunerConfig"
        _require_count(owner, "min_retries", self.min_retries)
        _require_count(owner, "restore_min_retries", self.restore_min_retries)
        _require_fraction(owner, "low_recovery_rate", self.low_recovery_rate)
        _require(
            _is_number(self.high_recovery_rate) and self.low_recovery_rate < self.high_recovery_rate <= 1,
            owner,
            "high_recovery_rate",
            f"in (low_recovery_rate={self.low_recovery_rate!r}, 1]",
            self.high_recovery_rate,
        )
        _require_count(owner, "min_exhausted", self.min_exhausted)
        _require_fraction(owner, "min_transient_share", self.min_transient_share)
        lo, hi = MAX_ATTEMPTS_BOUNDS
        _require(
            _is_count(self.min_attempts) and lo <= self.min_attempts <= hi,
            owner,
            "min_attempts",
            f"an integer in [{lo}, {hi}]",
            self.min_attempts,
        )
        _require(
            _is_count(self.conservative_min_attempts)
            and self.min_attempts <= self.conservative_min_attempts <= hi,
            owner,
            "conservative_min_attempts",
            f"an integer in [min_attempts={self.min_attempts}, {hi}]",
            self.conservative_min_attempts,
        )
        _require(
            _is_count(self.max_attempts) and self.conservative_min_attempts <= self.max_attempts <= hi,
            owner,
            "max_attempts",
            f"an integer in [conservative_min_attempts={self.conservative_min_attempts}, {hi}]",
            self.max_attempts,
        )


class RetryTuner:
    """Moves `max_attempts` by one from the recovery-on-retry rate.

    - Fewer than `low_recovery_rate` of `min_retries`+ retries saved a payment: retries only add
      load, one attempt less (never below `min_attempts`, by default 2: one retry for a blip and
      the evidence to tune from; `conservative_min_attempts` in conservative mode).
    - At least `high_recovery_rate` of them did, at least `min_exhausted` payments still ran out
      of attempts, and most errors are transient: one attempt more (at most `max_attempts`).

    Between the two rates nothing changes: that band is the hysteresis. With `max_attempts` = 1
    no retries are sent, so there is no evidence to raise it from: that is why the default
    `min_attempts` is 2, and why a lane an operator set to 1 is left to the operator.

    A cut expires with its reason (`restore`): it was made because retries stopped saving
    payments (an outage), so once `restore_min_retries` retries in the recent window recover at
    `high_recovery_rate` or better, the provider's default comes back at once. Waiting for the
    long window to forget the outage cost a transient regime after it a few points of success.
    """

    parameter: str = "max_attempts"

    def __init__(self, config: RetryTunerConfig | None = None) -> None:
        self.config = config if config is not None else RetryTunerConfig()

    def propose(
        self, provider: str, current: ProviderTunables, evidence: LaneEvidence, *, conservative: bool
    ) -> Proposal | None:
        cfg = self.config
        recovery = evidence.recovery_on_retry_rate
        if evidence.retries_sent < cfg.min_retries or recovery is None:
            return None
        now = current.max_attempts
        transient = evidence.transient_share
        figures = (
            f"{evidence.recovered_on_retry} of {evidence.retries_sent} retries saved a payment "
            f"({recovery:.0%}), {evidence.retries_exhausted} payments ran out of attempts"
        )
        if recovery < cfg.low_recovery_rate:
            floor = cfg.conservative_min_attempts if conservative else cfg.min_attempts
            target = max(now - 1, floor)
            if target >= now:
                return None
            reason = (
                f"{figures}: below {cfg.low_recovery_rate:.0%}, retries mostly add load; "
                f"max_attempts {now} -> {target}"
            )
            if conservative:
                reason += f" (conservative mode keeps at least {cfg.conservative_min_attempts} attempts)"
        elif (
            recovery >= cfg.high_recovery_rate
            and evidence.retries_exhausted >= cfg.min_exhausted
            and (transient is None or transient >= cfg.min_transient_share)
        ):
            target = min(now + 1, cfg.max_attempts)
            if target <= now:
                return None
            reason = (
                f"{figures}: at least {cfg.high_recovery_rate:.0%} of retries recover, so one more "
                f"attempt would save some of those; max_attempts {now} -> {target}"
            )
        else:
            return None
        figures_used = {
            "retries_sent": float(evidence.retries_sent),
            "recovered_on_retry": float(evidence.recovered_on_retry),
            "recovery_on_retry_rate": recovery,
            "retries_exhausted": float(evidence.retries_exhausted),
        }
        if transient is not None:
            figures_used["transient_share"] = transient
        return Proposal(self.parameter, float(now), float(target), reason, figures_used)

    def restore(self, provider: str, current: ProviderTunables, recent: LaneEvidence) -> Proposal | None:
        """The provider's default attempts, when a cut below it no longer has its reason."""
        cfg = self.config
        now, default = current.max_attempts, default_tunables(provider).max_attempts
        recovery = recent.recovery_on_retry_rate
        if (
            now >= default
            or now < 2  # one attempt sends no retries: an operator's setting, not the tuner's cut
            or recovery is None
            or recent.retries_sent < cfg.restore_min_retries
            or recovery < cfg.high_recovery_rate
        ):
            return None
        reason = (
            f"{recent.recovered_on_retry} of {recent.retries_sent} retries in the last "
            f"{recent.window_s:g} s saved a payment ({recovery:.0%}, at least {cfg.high_recovery_rate:.0%}): "
            f"retries pay again, so the cut to {now} attempts has lost its reason; the provider's "
            f"default {default} restored"
        )
        figures = {
            "window_s": recent.window_s,
            "retries_sent": float(recent.retries_sent),
            "recovered_on_retry": float(recent.recovered_on_retry),
            "recovery_on_retry_rate": recovery,
        }
        return Proposal(self.parameter, float(now), float(default), reason, figures)


# ---------------------------------------------------------------------------------------------
# Rate limit
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimitTunerConfig:
    """AIMD on the provider's 429s, with a latency-gradient brake on increases."""

    min_calls: int = DEFAULT_RATE_MIN_CALLS
    rate_limited_share: float = DEFAULT_RATE_LIMITED_SHARE
    decrease_factor: float = DEFAULT_RATE_DECREASE_FACTOR
    conservative_decrease_factor: float = DEFAULT_CONSERVATIVE_RATE_DECREASE_FACTOR
    utilisation_threshold: float = DEFAULT_UTILISATION_THRESHOLD
    increase_fraction_of_default: float = DEFAULT_RATE_INCREASE_FRACTION
    min_increase_per_s: float = DEFAULT_MIN_RATE_INCREASE_PER_S
    conservative_increase_scale: float = DEFAULT_CONSERVATIVE_INCREASE_SCALE
    latency_rise_tolerance: float = DEFAULT_LATENCY_RISE_TOLERANCE
    min_rate_per_s: float = DEFAULT_MIN_RATE_PER_S
    max_rate_per_s: float = DEFAULT_MAX_RATE_PER_S
    min_relative_change: float = DEFAULT_RATE_MIN_RELATIVE_CHANGE

    def __post_init__(self) -> None:
        owner = "RateLimitTunerConfig"
        _require_count(owner, "min_calls", self.min_calls)
        _require_fraction(owner, "rate_limited_share", self.rate_limited_share, allow_zero=False)
        _require_factor(owner, "decrease_factor", self.decrease_factor)
        _require(
            _is_number(self.conservative_decrease_factor)
            and 0 < self.conservative_decrease_factor <= self.decrease_factor,
            owner,
            "conservative_decrease_factor",
            f"in (0, decrease_factor={self.decrease_factor!r}] (conservative mode cuts harder)",
            self.conservative_decrease_factor,
        )
        _require_fraction(owner, "utilisation_threshold", self.utilisation_threshold, allow_zero=False)
        _require(
            _is_number(self.increase_fraction_of_default) and 0 < self.increase_fraction_of_default <= 1,
            owner,
            "increase_fraction_of_default",
            "in (0, 1]",
            self.increase_fraction_of_default,
        )
        _require(
            _is_number(self.min_increase_per_s) and self.min_increase_per_s >= 0,
            owner,
            "min_increase_per_s",
            "a number of calls per second >= 0",
            self.min_increase_per_s,
        )
        _require_fraction(
            owner, "conservative_increase_scale", self.conservative_increase_scale, allow_zero=False
        )
        _require(
            _is_number(self.latency_rise_tolerance) and self.latency_rise_tolerance >= 0,
            owner,
            "latency_rise_tolerance",
            "a number >= 0",
            self.latency_rise_tolerance,
        )
        _require_range(
            owner,
            "min_rate_per_s",
            self.min_rate_per_s,
            "max_rate_per_s",
            self.max_rate_per_s,
            RATE_LIMIT_BOUNDS,
        )
        _require_fraction(owner, "min_relative_change", self.min_relative_change)


class RateLimitTuner:
    """AIMD on `rate_limit_per_s`, like Netflix's AIMDLimit with a Gradient2-style latency brake.

    - Multiplicative decrease: `rate_limited_share` or more of the calls got a 429 -> the limit
      becomes min(limit, calls/s actually sent) x `decrease_factor` (x `conservative_decrease_factor`
      in conservative mode). Starting from the rate actually sent makes the cut bind even when
      the limit was far above the traffic.
    - Additive increase: no 429 at all, the limit at least `utilisation_threshold` used, and the
      median latency not above the long-run median by more than `latency_rise_tolerance` (a
      rising latency is the provider queueing: Gradient2's signal) -> the limit grows by
      max(`increase_fraction_of_default` x the provider's default, `min_increase_per_s`), halved
      in conservative mode. Without a long-run median the latency brake is skipped: the step
      is small and the next 429s undo it.
    - Recovery: a limit below the provider's documented default grows by the same step (never
      past the default) after a window without 429s, however little of it is used. The
      utilisation rule is there to keep a limit from growing past what traffic has tested; below
      the default it would strand a limit cut in one 429 storm at a quiet lane's traffic level
      for ever, and the first busy minute would then be rejected locally.
    """

    parameter: str = "rate_limit_per_s"

    def __init__(self, config: RateLimitTunerConfig | None = None) -> None:
        self.config = config if config is not None else RateLimitTunerConfig()

    def propose(
        self, provider: str, current: ProviderTunables, evidence: LaneEvidence, *, conservative: bool
    ) -> Proposal | None:
        cfg = self.config
        if evidence.calls < cfg.min_calls:
            return None
        now = current.rate_limit_per_s
        default = default_tunables(provider).rate_limit_per_s
        sent_per_s = evidence.calls_per_s
        limited_share = evidence.rate_limited_share or 0.0
        utilisation = sent_per_s / now
        figures: dict[str, float] = {
            "calls_per_s": sent_per_s,
            "rate_limited_share": limited_share,
            "utilisation": utilisation,
        }
        if limited_share >= cfg.rate_limited_share:
            factor = cfg.conservative_decrease_factor if conservative else cfg.decrease_factor
            raw = min(now, sent_per_s) * factor
            decreasing = True
            why = (
                f"{limited_share:.1%} of {evidence.calls} calls answered 429 (threshold "
                f"{cfg.rate_limited_share:.1%}): multiplicative decrease, min({now:g}, {sent_per_s:.1f} sent/s) "
                f"x {factor:g}"
            )
        else:
            recovering = now < default
            if evidence.rate_limited > 0 or (utilisation < cfg.utilisation_threshold and not recovering):
                return None
            p50_ms = evidence.latency_quantile(0.5)
            normal_ms = evidence.long_run_latency_p50_ms
            if p50_ms is not None and normal_ms is not None and normal_ms > 0:
                figures["latency_p50_ms"] = p50_ms
                figures["long_run_latency_p50_ms"] = normal_ms
                if p50_ms > normal_ms * (1.0 + cfg.latency_rise_tolerance):
                    return None
            step = max(cfg.increase_fraction_of_default * default, cfg.min_increase_per_s)
            if conservative:
                step *= cfg.conservative_increase_scale
            raw = now + step
            decreasing = False
            why = (
                f"no 429s in {evidence.calls} calls at {utilisation:.0%} of the limit "
                f"({sent_per_s:.1f}/s sent) and latency not rising: additive increase +{step:g}/s"
            )
            if utilisation < cfg.utilisation_threshold:
                raw = min(raw, default)
                why = (
                    f"no 429s in {evidence.calls} calls and latency not rising, the limit below the "
                    f"provider's default {default:g}/s: recovery towards it, additive increase +{step:g}/s"
                )
        target = raw
        if conservative:
            target = _conservative_target(self.parameter, target, now, default)
        low, high = parameter_bounds(self.parameter)
        target = _clamp(round(target, 1), max(low, cfg.min_rate_per_s), min(high, cfg.max_rate_per_s))
        if (decreasing and target >= now) or (not decreasing and target <= now):
            return None
        if not _passes_hysteresis(now, target, cfg.min_relative_change, 0.0):
            return None
        reason = f"{why}; rate limit {now:g}/s -> {target:g}/s ({_percent_change(now, target)})"
        reason += _conservative_note(conservative)
        return Proposal(self.parameter, now, target, reason, figures)


# ---------------------------------------------------------------------------------------------
# Status-cache TTL
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheTtlTunerConfig:
    """Shorter TTL on stale hits, longer on a low hit rate with nothing stale."""

    min_queries: int = DEFAULT_TTL_MIN_QUERIES
    min_hits: int = DEFAULT_TTL_MIN_HITS
    stale_share_threshold: float = DEFAULT_STALE_SHARE_THRESHOLD
    decrease_factor: float = DEFAULT_TTL_DECREASE_FACTOR
    conservative_decrease_factor: float = DEFAULT_CONSERVATIVE_TTL_DECREASE_FACTOR
    low_hit_rate: float = DEFAULT_LOW_HIT_RATE
    increase_factor: float = DEFAULT_TTL_INCREASE_FACTOR
    conservative_increase_factor: float = DEFAULT_CONSERVATIVE_TTL_INCREASE_FACTOR
    min_ttl_s: float = DEFAULT_MIN_TTL_S
    max_ttl_s: float = DEFAULT_MAX_TTL_S
    min_relative_change: float = DEFAULT_TTL_MIN_RELATIVE_CHANGE
    min_absolute_change_s: float = DEFAULT_TTL_MIN_ABSOLUTE_CHANGE_S

    def __post_init__(self) -> None:
        owner = "CacheTtlTunerConfig"
        _require_count(owner, "min_queries", self.min_queries)
        _require_count(owner, "min_hits", self.min_hits)
        _require_fraction(owner, "stale_share_threshold", self.stale_share_threshold, allow_zero=False)
        _require_factor(owner, "decrease_factor", self.decrease_factor)
        _require(
            _is_number(self.conservative_decrease_factor)
            and 0 < self.conservative_decrease_factor <= self.decrease_factor,
            owner,
            "conservative_decrease_factor",
            f"in (0, decrease_factor={self.decrease_factor!r}] (conservative mode cuts harder)",
            self.conservative_decrease_factor,
        )
        _require_fraction(owner, "low_hit_rate", self.low_hit_rate, allow_zero=False)
        _require(
            _is_number(self.increase_factor) and 1 < self.increase_factor <= 10,
            owner,
            "increase_factor",
            "in (1, 10]",
            self.increase_factor,
        )
        _require(
            _is_number(self.conservative_increase_factor)
            and 1 < self.conservative_increase_factor <= self.increase_factor,
            owner,
            "conservative_increase_factor",
            f"in (1, increase_factor={self.increase_factor!r}] (conservative mode lengthens less)",
            self.conservative_increase_factor,
        )
        _require_range(
            owner,
            "min_ttl_s",
            self.min_ttl_s,
            "max_ttl_s",
            self.max_ttl_s,
            parameter_bounds("status_cache_ttl_s"),
        )
        _require_fraction(owner, "min_relative_change", self.min_relative_change)
        _require(
            _is_number(self.min_absolute_change_s) and self.min_absolute_change_s >= 0,
            owner,
            "min_absolute_change_s",
            "a number of seconds >= 0",
            self.min_absolute_change_s,
        )


class CacheTtlTuner:
    """Tunes `status_cache_ttl_s` from the hit rate and the share of stale hits.

    - At least `min_hits` cache hits and `stale_share_threshold` or more of them stale (the
      status had changed already): the TTL shrinks by `decrease_factor`.
    - A hit rate below `low_hit_rate` and no stale hit at all: the TTL grows by `increase_factor`
      (repeat queries arrive after entries expired; a longer TTL answers them).

    A TTL of 0 means an operator turned the cache off; it is left off.
    """

    parameter: str = "status_cache_ttl_s"

    def __init__(self, config: CacheTtlTunerConfig | None = None) -> None:
        self.config = config if config is not None else CacheTtlTunerConfig()

    def propose(
        self, provider: str, current: ProviderTunables, evidence: LaneEvidence, *, conservative: bool
    ) -> Proposal | None:
        cfg = self.config
        now_s = current.status_cache_ttl_s
        if now_s <= 0 or evidence.status_queries < cfg.min_queries:
            return None
        hit_rate = evidence.status_cache_hit_rate or 0.0
        stale_share = evidence.stale_hit_share or 0.0
        figures = {
            "status_queries": float(evidence.status_queries),
            "status_cache_hit_rate": hit_rate,
            "stale_hit_share": stale_share,
        }
        if evidence.status_cache_hits >= cfg.min_hits and stale_share >= cfg.stale_share_threshold:
            factor = cfg.conservative_decrease_factor if conservative else cfg.decrease_factor
            decreasing = True
            why = (
                f"{evidence.stale_cache_hits} of {evidence.status_cache_hits} cached statuses were stale "
                f"({stale_share:.1%}, threshold {cfg.stale_share_threshold:.1%}): TTL x {factor:g}"
            )
        elif evidence.stale_cache_hits == 0 and hit_rate < cfg.low_hit_rate:
            factor = cfg.conservative_increase_factor if conservative else cfg.increase_factor
            decreasing = False
            why = (
                f"hit rate {hit_rate:.0%} of {evidence.status_queries} status queries (below "
                f"{cfg.low_hit_rate:.0%}) and nothing stale: TTL x {factor:g}"
            )
        else:
            return None
        target = now_s * factor
        if conservative:
            target = _conservative_target(
                self.parameter, target, now_s, default_tunables(provider).status_cache_ttl_s
            )
        low, high = parameter_bounds(self.parameter)
        target = _clamp(round(target, 1), max(low, cfg.min_ttl_s), min(high, cfg.max_ttl_s))
        if (decreasing and target >= now_s) or (not decreasing and target <= now_s):
            return None
        if not _passes_hysteresis(now_s, target, cfg.min_relative_change, cfg.min_absolute_change_s):
            return None
        reason = f"{why}; status-cache TTL {now_s:g} s -> {target:g} s ({_percent_change(now_s, target)})"
        reason += _conservative_note(conservative)
        return Proposal(self.parameter, now_s, target, reason, figures)


# ---------------------------------------------------------------------------------------------
# Breaker threshold
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreakerThresholdTunerConfig:
    """Breaker failure-rate threshold: above the provider's normal error level, lower in an outage."""

    multiplier: float = DEFAULT_BREAKER_MULTIPLIER
    margin: float = DEFAULT_BREAKER_MARGIN
    conservative_multiplier: float = DEFAULT_CONSERVATIVE_BREAKER_MULTIPLIER
    conservative_margin: float = DEFAULT_CONSERVATIVE_BREAKER_MARGIN
    min_threshold: float = DEFAULT_MIN_BREAKER_THRESHOLD
    max_threshold: float = DEFAULT_MAX_BREAKER_THRESHOLD
    min_calls: int = DEFAULT_BREAKER_MIN_CALLS
    outage_recovery_rate: float = DEFAULT_BREAKER_OUTAGE_RECOVERY_RATE
    outage_min_retries: int = DEFAULT_BREAKER_OUTAGE_MIN_RETRIES
    outage_factor: float = DEFAULT_BREAKER_OUTAGE_FACTOR
    outage_min_trials: int = DEFAULT_BREAKER_OUTAGE_MIN_TRIALS
    restore_min_calls: int = DEFAULT_BREAKER_RESTORE_MIN_CALLS
    restore_share: float = DEFAULT_BREAKER_RESTORE_SHARE
    min_absolute_change: float = DEFAULT_BREAKER_MIN_ABSOLUTE_CHANGE
    min_relative_change: float = DEFAULT_BREAKER_MIN_RELATIVE_CHANGE

    def __post_init__(self) -> None:
        owner = "BreakerThresholdTunerConfig"
        _require(
            _is_number(self.multiplier) and 1 <= self.multiplier <= 10,
            owner,
            "multiplier",
            "in [1, 10] (the threshold must sit above the normal error level)",
            self.multiplier,
        )
        _require(_is_number(self.margin) and 0 < self.margin <= 1, owner, "margin", "in (0, 1]", self.margin)
        _require(
            _is_number(self.conservative_multiplier) and 1 <= self.conservative_multiplier <= self.multiplier,
            owner,
            "conservative_multiplier",
            f"in [1, multiplier={self.multiplier!r}] (conservative mode trips earlier)",
            self.conservative_multiplier,
        )
        _require(
            _is_number(self.conservative_margin) and 0 < self.conservative_margin <= self.margin,
            owner,
            "conservative_margin",
            f"in (0, margin={self.margin!r}] (conservative mode trips earlier)",
            self.conservative_margin,
        )
        _require_range(
            owner,
            "min_threshold",
            self.min_threshold,
            "max_threshold",
            self.max_threshold,
            BREAKER_FAILURE_RATE_BOUNDS,
        )
        _require_count(owner, "min_calls", self.min_calls)
        _require_fraction(owner, "outage_recovery_rate", self.outage_recovery_rate)
        _require_count(owner, "outage_min_retries", self.outage_min_retries)
        _require_count(owner, "outage_min_trials", self.outage_min_trials)
        _require_factor(owner, "outage_factor", self.outage_factor)
        _require_count(owner, "restore_min_calls", self.restore_min_calls)
        _require_fraction(owner, "restore_share", self.restore_share, allow_zero=False)
        _require_fraction(owner, "min_absolute_change", self.min_absolute_change)
        _require_fraction(owner, "min_relative_change", self.min_relative_change)


def _breaker_failures(evidence: LaneEvidence) -> int:
    """Calls the breaker counts as failures: timeouts, refusals, ambiguous answers (not 429s)."""
    return evidence.timeouts + evidence.not_processed + evidence.ambiguous


class BreakerThresholdTuner:
    """Sets `breaker_failure_rate` from the provider's normal error level, and lower in an outage.

    - **Noise floor.** A provider that normally fails 8 % of calls would keep tripping a 10 %
      threshold: the threshold is kept at or above long-run error rate x `multiplier` + `margin`
      (x `conservative_multiplier` + `conservative_margin` in conservative mode), and otherwise at
      the provider's default, clamped to [min_threshold, max_threshold]. Never raised while the
      window's failure rate is above the long-run rate: errors that are rising (an incident, or a
      slow degradation that drags the long-run rate up behind it) are not the provider's noise.
      It is not lowered below the default on a clean provider: measured in
      `benchmarks/optimizer_effect.py`, a tight threshold turns the first blips of a transient
      regime into 30-second open periods that fail every payment of a lane without a backup.
    - **Outage.** While the breaker keeps opening (at least `outage_min_trials` half-open trials
      in the window) and retries stopped saving payments (fewer than `outage_recovery_rate` of
      `outage_min_retries`+ retries recover), the threshold steps down by `outage_factor` (never
      below `min_threshold`): the breaker then opens sooner in each bad stretch, sheds the calls
      that would fail anyway, and its half-open trial finds the provider back sooner. Measured on
      a provider down 30 s of every minute: 39.7 % of payments through at 0.35 against 36.3 % at
      0.5, with 104 retries against 169. A breaker that is not opening is left alone: lowering
      its threshold would turn a steady partial failure (say 25 % of calls) into a full outage.
      The long-run error rate is not the yardstick here: an outage drags it up within the hour.
    - **Restore** (`restore`). A threshold below the default comes back to it as soon as
      `restore_min_calls` recent calls fail at under `restore_share` of the default: the outage
      that justified it is over, and the same threshold would now trip on blips.

    The value is a ratio, in the unit of `BreakerConfig.failure_rate_threshold`.
    """

    parameter: str = "breaker_failure_rate"

    def __init__(self, config: BreakerThresholdTunerConfig | None = None) -> None:
        self.config = config if config is not None else BreakerThresholdTunerConfig()

    def propose(
        self, provider: str, current: ProviderTunables, evidence: LaneEvidence, *, conservative: bool
    ) -> Proposal | None:
        cfg = self.config
        normal = evidence.long_run_error_rate
        if normal is None or evidence.calls < cfg.min_calls:
            return None
        now = current.breaker_failure_rate
        default = default_tunables(provider).breaker_failure_rate
        low, high = parameter_bounds(self.parameter)
        low, high = max(low, cfg.min_threshold), min(high, cfg.max_threshold)
        window_rate = _breaker_failures(evidence) / evidence.calls
        recovery = evidence.recovery_on_retry_rate
        figures = {"long_run_error_rate": normal, "window_failure_rate": window_rate}
        trials = evidence.breaker_trials_passed + evidence.breaker_trials_failed
        if (
            trials >= cfg.outage_min_trials
            and recovery is not None
            and evidence.retries_sent >= cfg.outage_min_retries
            and recovery < cfg.outage_recovery_rate
        ):
            target = _clamp(round(now * cfg.outage_factor, 2), low, high)
            figures.update(
                {
                    "retries_sent": float(evidence.retries_sent),
                    "recovery_on_retry_rate": recovery,
                    "breaker_trials": float(trials),
                }
            )
            reason = (
                f"outage: the breaker opened and tried the provider {trials} times, {window_rate:.1%} of "
                f"{evidence.calls} calls failed, and {evidence.recovered_on_retry} of {evidence.retries_sent} "
                f"retries "
                f"saved a payment ({recovery:.0%}, under {cfg.outage_recovery_rate:.0%}): the breaker should "
                f"open sooner in each bad stretch; threshold {now:.0%} -> {target:.0%} (x {cfg.outage_factor:g})"
            )
        else:
            multiplier = cfg.conservative_multiplier if conservative else cfg.multiplier
            margin = cfg.conservative_margin if conservative else cfg.margin
            floor = normal * multiplier + margin
            # Below the default (a cut made in an outage, or an operator's value released to the
            # optimizer), only the noise floor lifts it; `restore` decides when the default returns.
            target = floor if now < default else max(floor, default)
            if conservative:
                target = _conservative_target(self.parameter, target, now, default)
            target = _clamp(round(target, 2), low, high)
            if target <= now and now < default:
                return None
            if target > now and window_rate > normal:
                return None  # rising errors (an incident, or a slow degradation) never raise it
            figures.update({"multiplier": multiplier, "margin": margin})
            reason = (
                f"normal error rate {normal:.1%} x {multiplier:g} + {margin:.0%} = {floor:.1%}, the "
                f"default {default:.0%}: breaker failure-rate threshold {now:.0%} -> {target:.0%} (window "
                f"failure rate {window_rate:.1%} over {evidence.calls} calls)"
            )
            reason += _conservative_note(conservative)
        if not _passes_hysteresis(now, target, cfg.min_relative_change, cfg.min_absolute_change):
            return None
        return Proposal(self.parameter, now, target, reason, figures)

    def restore(self, provider: str, current: ProviderTunables, recent: LaneEvidence) -> Proposal | None:
        """The provider's default threshold, when a cut below it no longer has its outage."""
        cfg = self.config
        now, default = current.breaker_failure_rate, default_tunables(provider).breaker_failure_rate
        if now >= default or recent.calls < cfg.restore_min_calls:
            return None
        failing = _breaker_failures(recent) / recent.calls
        level = default * cfg.restore_share
        if failing >= level:
            return None
        reason = (
            f"{failing:.1%} of {recent.calls} calls in the last {recent.window_s:g} s failed, under "
            f"{level:.0%} ({cfg.restore_share:g} x the default threshold): the outage that justified the cut is over, and a "
            f"{now:.0%} threshold would now trip on blips; the provider's default {default:.0%} restored"
        )
        figures = {"window_s": recent.window_s, "calls": float(recent.calls), "failure_rate": failing}
        return Proposal(self.parameter, now, default, reason, figures)


@dataclass(frozen=True)
class BreakerWaitTunerConfig:
    """The breaker's open period from how its half-open trials went."""

    min_trials: int = 3
    passed_share: float = 0.75  # this share of trials found the provider back: open too long
    failed_share: float = 0.75  # this share found it still down: open too short
    decrease_factor: float = 0.5
    increase_factor: float = 2.0
    min_wait_s: float = 5.0

    def __post_init__(self) -> None:
        owner = "BreakerWaitTunerConfig"
        _require(
            _is_count(self.min_trials) and self.min_trials >= 1, owner, "min_trials", ">= 1", self.min_trials
        )
        for name in ("passed_share", "failed_share"):
            value = getattr(self, name)
            _require(_is_number(value) and 0.5 < value <= 1, owner, name, "in (0.5, 1]", value)
        _require_factor(owner, "decrease_factor", self.decrease_factor)
        _require(
            _is_number(self.increase_factor) and self.increase_factor > 1,
            owner,
            "increase_factor",
            "> 1",
            self.increase_factor,
        )
        _require(
            _is_number(self.min_wait_s) and self.min_wait_s > 0, owner, "min_wait_s", "> 0", self.min_wait_s
        )


class BreakerWaitTuner:
    """Sets `breaker_wait_s`, the base period an opened breaker rejects calls before a trial.

    Each half-open trial is a measurement: passed, the provider was back before the breaker
    asked, so every payment it rejected in between failed for nothing when the lane has nowhere
    else to send it (an intermittent outage: down half a minute, up half a minute); failed, it
    asked too early (the breaker's own back-off already doubles the next period). When at least
    `passed_share` of `min_trials`+ trials in the window passed, the period is multiplied by
    `decrease_factor` (never under `min_wait_s` or the field's bound); when `failed_share` failed
    and it is below the provider's default, it grows by `increase_factor` back towards the
    default. Conservative mode never shortens it.
    """

    parameter: str = "breaker_wait_s"

    def __init__(self, config: BreakerWaitTunerConfig | None = None) -> None:
        self.config = config if config is not None else BreakerWaitTunerConfig()

    def propose(
        self, provider: str, current: ProviderTunables, evidence: LaneEvidence, *, conservative: bool
    ) -> Proposal | None:
        cfg = self.config
        passed, failed = evidence.breaker_trials_passed, evidence.breaker_trials_failed
        trials = passed + failed
        if trials < cfg.min_trials:
            return None
        now = current.breaker_wait_s
        default = default_tunables(provider).breaker_wait_s
        low, high = parameter_bounds(self.parameter)
        figures = {"trials_passed": float(passed), "trials_failed": float(failed)}
        if passed / trials >= cfg.passed_share and not conservative:
            target = round(max(now * cfg.decrease_factor, cfg.min_wait_s, low), 1)
            if target >= now:
                return None
            why = (
                f"{passed} of {trials} half-open trials found the provider back: the breaker kept rejecting "
                f"payments after it had recovered; open period {now:g} s -> {target:g} s"
            )
        elif failed / trials >= cfg.failed_share and now < default:
            target = round(min(now * cfg.increase_factor, default, high), 1)
            if target <= now:
                return None
            why = (
                f"{failed} of {trials} half-open trials found the provider still down: open period "
                f"{now:g} s -> {target:g} s, back towards the default {default:g} s"
            )
        else:
            return None
        return Proposal(self.parameter, now, target, why + _conservative_note(conservative), figures)


DEFAULT_TUNERS: Final[tuple[Tuner, ...]] = (
    TimeoutTuner(),
    RetryTuner(),
    RateLimitTuner(),
    CacheTtlTuner(),
    BreakerThresholdTuner(),
    BreakerWaitTuner(),
)
"""One tuner per tunable parameter, default configs, in the order the optimizer should try them."""
