"""AutoOptimizer: tunes provider parameters from measured data, one measured canary at a time.

Each tick, for every provider:

1. First, cuts that have lost their reason are undone (`RestoringTuner`): a retry cut
   made because retries stopped saving payments in an outage returns to the provider's default
   as soon as retries over the last `RESTORE_WINDOW_S` save payments again. It is applied at once,
   without a canary, because it goes back to the documented default; an experiment in flight is
   ended first. The timeout guard (`on_timeout`) is the same idea between ticks, for a cut
   timeout that calls now outgrow.
2. If an experiment is running, its arms are evaluated (`optimization.canary.evaluate`: a
   one-sided proportion test on success, Mann-Whitney on latency, retries and timeouts per call).
   `keep` makes the candidate the lane's tunables; `revert` ends it and the lane keeps what it had;
   past `MAX_EXPERIMENT_S` an undecided experiment is reverted (a change is kept only on evidence).
3. Otherwise the provider's evidence over the last `EVIDENCE_WINDOW_S` (telemetry plus the
   router's per-lane tallies) goes to the tuners (`optimization.algorithms`) whose parameter an
   operator has not pinned; the first proposal starts an experiment. One experiment per provider
   at a time, so every effect is attributable to one change (the lane has one canary split, and
   a before/after change moves both arms of any canary beside it). So that one tuner with a
   steady stream of proposals cannot starve the others, the tuners are asked **round-robin**,
   starting after the one whose proposal started the last experiment; a timeout raise while
   timeouts pile up goes first all the same, because every minute of it fails payments, and in
   an outage a lower breaker threshold goes before a retry cut (`_urgency`).
4. A change reverted as "ineffective" (a timeout raise that rescued no calls while calls still
   timed out: they hang, see `optimization.canary`) is not proposed again in the same direction
   for `INEFFECTIVE_COOLDOWN_S`: the evidence that proposed it is the evidence it was just
   measured against.

Parameters the router applies per payment (timeout, attempts, backoff) are tried as a **canary**:
`CANARY_SHARE` of the provider's payments (a stable hash of the idempotency key) use the
candidate while the rest, over the same minutes, is the baseline. Parameters that cannot be split
per payment (the rate limit is one bucket for the lane, the breaker one window) are judged by
**switchback**: all traffic runs the candidate for one optimizer interval, the previous value for
the next, and so on, and the candidate's intervals are compared with the previous value's. A
regime change then hits both arms alike; comparing with the window before the change did not
(the rate-limit and breaker experiments of earlier versions were judged against another
regime). A timeout raise while timeouts pile up is applied to all traffic at once and compared
**before / after** with the window before: it is the safer direction, and a half-and-half canary
(or a switchback) would keep failing slow payments for as long as it runs; it is judged by the
calls it rescued. The breaker's failure-rate threshold is tuned live (`BreakerThresholdTuner`:
never under the provider's normal error level, lower during an outage, back to the default when
the outage ends). The status-cache TTL has a live path (the router's per-lane `StatusCache`,
whose queries, hits and stale hits reach the evidence) and a tuner, not yet live: its effect on
payments has not been measured in a benchmark. The breaker's open period (`breaker_wait_s`) has a live path (operators set it with
`set_provider_config`) and a tuner (`BreakerWaitTuner`, from the half-open trials), but the
tuner is not live: measured in `benchmarks/optimizer_effect.py`, halving the period when trials
found the provider back made a periodic outage worse (33.4 % vs 36.1 % success: the breaker's
own doubling back-off then meets the down phases).

`CONSERVATIVE_MODE` only ever widens safety margins (the tuners' conservative configurations) and
halves the canary share. Operator overrides (`set_provider_config`) pin a parameter: the optimizer
never proposes a change to it, and setting it ends an experiment on it. Tunables, pins and every
optimization record are in the store and survive a restart; an experiment interrupted by a
restart is recorded as reverted (its evidence is gone with the process).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Literal, TypeGuard

import numpy as np
import numpy.ma  # np.quantile imports it lazily (~25 ms): at start-up, not inside a tick
from anyio.lowlevel import checkpoint
from pydantic import BaseModel, Field, ValidationError

from mcp_autonomy.autonomy.component import Component, Mode
from mcp_autonomy.autonomy.optimization import (
    ArmSamples,
    BreakerThresholdTuner,
    BreakerThresholdTunerConfig,
    CanaryConfig,
    CanaryDecision,
    CanaryVerdict,
    LaneEvidence,
    Proposal,
    RateLimitTuner,
    RateLimitTunerConfig,
    RestoringTuner,
    RetryTuner,
    RetryTunerConfig,
    TimeoutTuner,
    TimeoutTunerConfig,
    Tuner,
    apply_proposal,
    evaluate,
    parameter_bounds,
)
from mcp_autonomy.autonomy.optimization.evidence import DEFAULT_MIN_QUANTILE_SAMPLES
from mcp_autonomy.clock import Clock
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.resilience.canary import ArmTally
from mcp_autonomy.resilience.router import NEAR_TIMEOUT_SHARE
from mcp_autonomy.resilience.tunables import ProviderTunables, default_tunables
from mcp_autonomy.store import StateStore
from mcp_autonomy.telemetry import Outcome
from mcp_autonomy.timefmt import Timestamp, TimestampOrNone

if TYPE_CHECKING:
    from mcp_autonomy.providers.registry import ProviderRegistry
    from mcp_autonomy.resilience.router import PaymentRouter
    from mcp_autonomy.telemetry import Telemetry

logger = logging.getLogger(__name__)

EVIDENCE_WINDOW_S: Final = 900.0
"""Tuners read the last 15 minutes of a provider's traffic."""
LONG_RUN_WINDOW_S: Final = 3600.0
"""The provider's normal levels (error rate, median latency) are measured over the last hour."""
CANARY_SHARE: Final = 0.5
"""Share of a provider's payments that try a splittable candidate (halved in conservative mode)."""
MAX_EXPERIMENT_S: Final = 1800.0
"""An experiment still undecided after this long is reverted."""
SPLITTABLE: Final = frozenset({"timeout_s", "max_attempts", "base_delay_s"})
"""Parameters the router applies per payment: these get a concurrent canary."""
LIVE_PARAMETERS: Final = ("timeout_s", "max_attempts", "rate_limit_per_s", "breaker_failure_rate")
"""Parameters the optimizer tunes live (see the module docstring for the others)."""
PILEUP_TIMEOUT_SHARE: Final = 0.01
"""A timeout raise proposed while this share of calls times out is applied to all traffic at once."""
GUARD_TIMEOUTS: Final = 3
GUARD_WINDOW_S: Final = 30.0
"""The timeout guard: this many calls within this many seconds that timed out or answered close
to the timeout, on a lane whose timeout the optimizer set below the provider's default, give the
default back at once, between ticks."""
INEFFECTIVE_COOLDOWN_S: Final = EVIDENCE_WINDOW_S
"""After an "ineffective" revert, the same direction of the same parameter rests this long: the
evidence window then holds the experiment's own minutes."""
RESTORE_WINDOW_S: Final = 300.0
"""The recent window a `RestoringTuner` reads to tell whether a cut below the default has lost its
reason (five minutes: long enough for a handful of retries, short enough to follow a regime)."""
STATE_TUNABLES: Final = "tunables"
STATE_PINS: Final = "pins"


class OptimizationStatus(StrEnum):
    """The life of one change: tried, then kept or reverted."""

    PROPOSED = "proposed"
    CANARY = "canary"
    KEPT = "kept"
    REVERTED = "reverted"


class Optimization(BaseModel):
    """One tuning change with its evidence, its test results and its outcome."""

    id: str
    provider: str
    parameter: str
    old_value: float
    new_value: float
    status: OptimizationStatus
    mode: Literal["canary", "before_after", "switchback"] = Field(
        description="canary: a share of traffic against the concurrent rest; before_after: all traffic, "
        "compared with the window just before; switchback: all traffic alternating between the new and "
        "the old value every optimizer interval, the two sets of intervals compared"
    )
    share: float
    reason: str
    evidence: dict[str, float] = Field(default_factory=dict, description="The measured figures behind it")
    created_at: Timestamp
    decided_at: TimestampOrNone = None
    before: dict[str, float | None] = Field(default_factory=dict, description="Baseline arm's figures")
    after: dict[str, float | None] = Field(default_factory=dict, description="Candidate arm's figures")
    p_values: dict[str, float] = Field(default_factory=dict)
    verdict: str | None = None
    decided_by: Literal["engine", "operator"] | None = None
    dry_run: bool = False


class ProviderConfig(BaseModel):
    """One provider's tunables now, their defaults and bounds, pins and the experiment in flight."""

    provider: str
    tunables: ProviderTunables
    defaults: ProviderTunables
    pinned: dict[str, float] = Field(description="Operator overrides the optimizer never touches")
    bounds: dict[str, tuple[float, float]]
    experiment: Optimization | None


class ProviderConfigError(ValueError):
    """A `set_provider_config` value that is unknown or out of bounds (the message names both)."""


@dataclass
class _TallyPoint:
    at: float
    calls: int
    successes: int
    retries_sent: int
    timeouts: int
    recovered_on_retry: int
    retries_exhausted: int
    trials_passed: int = 0  # the lane breaker's half-open trials, cumulative
    trials_failed: int = 0
    status_queries: int = 0  # the lane's status cache, cumulative
    status_cache_hits: int = 0
    stale_cache_hits: int = 0


@dataclass
class _Experiment:
    record: Optimization
    candidate: ProviderTunables
    started_mono: float
    baseline: ArmSamples | None  # before/after: the window before; canary: read from the split
    # Switchback only: the arm the lane runs in the current slot, the lane's tally when the slot
    # began, and each arm's samples from its slots so far.
    slot_arm: Literal["candidate", "previous"] = "candidate"
    slot_start: _TallyPoint | None = None
    slots: dict[str, list[ArmSamples]] = field(default_factory=lambda: {"candidate": [], "previous": []})


def _slot_delta(newest: _TallyPoint, start: _TallyPoint) -> _TallyPoint:
    return _TallyPoint(
        newest.at - start.at,
        newest.calls - start.calls,
        newest.successes - start.successes,
        newest.retries_sent - start.retries_sent,
        newest.timeouts - start.timeouts,
        newest.recovered_on_retry - start.recovered_on_retry,
        newest.retries_exhausted - start.retries_exhausted,
        newest.trials_passed - start.trials_passed,
        newest.trials_failed - start.trials_failed,
        newest.status_queries - start.status_queries,
        newest.status_cache_hits - start.status_cache_hits,
        newest.stale_cache_hits - start.stale_cache_hits,
    )


def _merged(samples: list[ArmSamples]) -> ArmSamples:
    """One arm's slots as one sample (latencies concatenated, counts summed)."""
    if not samples:
        return ArmSamples(latencies_ms=(), successes=0, calls=0)
    return ArmSamples(
        latencies_ms=np.concatenate([s.latency_array for s in samples]),
        successes=sum(s.successes for s in samples),
        calls=sum(s.calls for s in samples),
        retries_sent=sum(s.retries_sent for s in samples),
        timeouts=sum(s.timeouts for s in samples),
    )


def _is_outage_breaker_cut(proposal: Proposal) -> bool:
    """A breaker threshold lowered because retries stopped saving payments (an outage)."""
    return (
        proposal.parameter == "breaker_failure_rate"
        and proposal.new_value < proposal.old_value
        and "recovery_on_retry_rate" in proposal.evidence
    )


def _urgency(proposal: Proposal) -> int:
    """Which proposal goes first, whatever the round-robin turn (lower first): a timeout raise
    while timeouts pile up fails payments every minute it waits; in an outage the breaker sheds
    the calls that fail anyway, while a retry cut also drops the retries that save payments at
    the edges of the bad stretches (measured: 39.7 % of payments through and 104 retries at a
    0.35 threshold, 33.9 % and 120 at 2 attempts, 36.3 % and 169 with neither)."""
    if _is_pileup_raise(proposal):
        return 0
    if _is_outage_breaker_cut(proposal):
        return 1
    return 2


def _is_pileup_raise(proposal: Proposal) -> bool:
    """A timeout raise proposed while `PILEUP_TIMEOUT_SHARE` or more of the calls time out."""
    return (
        proposal.parameter == "timeout_s"
        and proposal.new_value > proposal.old_value
        and proposal.evidence.get("timeout_share", 0.0) >= PILEUP_TIMEOUT_SHARE
    )


def _live_tuners(timeout_min_history_s: float | None = None) -> tuple[Tuner, ...]:
    timeout = (
        TimeoutTunerConfig()
        if timeout_min_history_s is None
        else TimeoutTunerConfig(min_history_s=timeout_min_history_s)
    )
    return (
        TimeoutTuner(timeout),
        RetryTuner(RetryTunerConfig()),
        RateLimitTuner(RateLimitTunerConfig()),
        BreakerThresholdTuner(BreakerThresholdTunerConfig()),
    )


_RESTORES_BY_TYPE: dict[type, bool] = {}


def _restores(tuner: Tuner) -> TypeGuard[RestoringTuner]:
    """`isinstance(tuner, RestoringTuner)`, remembered per class: a runtime protocol check walks
    every attribute (~20 us), and the optimizer asks it for every tuner of every provider each tick."""
    kind = type(tuner)
    found = _RESTORES_BY_TYPE.get(kind)
    if found is None:
        found = _RESTORES_BY_TYPE[kind] = isinstance(tuner, RestoringTuner)
    return found


class AutoOptimizer(Component):
    """Proposes, canaries, keeps or reverts tuning changes per provider, from measured data."""

    name = "auto_optimizer"

    def __init__(
        self,
        *,
        clock: Clock,
        bus: EventBus,
        store: StateStore,
        enabled: bool,
        interval_s: float,
        conservative: bool,
        router: PaymentRouter | None = None,
        telemetry: Telemetry | None = None,
        providers: ProviderRegistry | None = None,
        tuners: tuple[Tuner, ...] | None = None,
        canary_config: CanaryConfig | None = None,
        timeout_min_history_s: float | None = None,
    ) -> None:
        super().__init__(clock=clock, bus=bus, store=store, enabled=enabled, interval_s=interval_s)
        self.conservative = conservative
        self.router = router
        self.telemetry = telemetry
        self.providers = providers
        self.tuners = tuners if tuners is not None else _live_tuners(timeout_min_history_s)
        self.canary_config = canary_config or CanaryConfig()
        self.canary_share = CANARY_SHARE / 2 if conservative else CANARY_SHARE
        self._optimizations: dict[str, Optimization] = {}
        self._experiments: dict[str, _Experiment] = {}
        self._pins: dict[str, dict[str, float]] = {}
        self._tally_history: dict[str, deque[_TallyPoint]] = {}
        self._next_tuner: dict[str, int] = {}  # provider -> index of the tuner asked first next time
        self._cooldown_until: dict[tuple[str, str, bool], float] = {}  # (provider, parameter, raise)
        # provider -> (monotonic time, timed out) of calls at or near the timeout (the guard)
        self._timeouts_seen: dict[str, deque[tuple[float, bool]]] = {}
        self._seq = 0
        if router is not None:
            router.timeout_listeners.append(self.on_timeout)

    # --- persistence --------------------------------------------------------------------

    def load(self) -> None:
        """Reload history, pins and the tunables kept by earlier runs, and apply them."""
        for raw in self.store.list_records("optimizations", limit=10_000):
            record = Optimization.model_validate_json(raw)
            if record.status in (OptimizationStatus.CANARY, OptimizationStatus.PROPOSED):
                record.status = OptimizationStatus.REVERTED
                record.verdict = "interrupted by a restart before a verdict: the lane kept its previous value"
                record.decided_at = self.clock.now()
                record.decided_by = "engine"
                self._save(record)
            self._optimizations[record.id] = record
        self._pins = {
            provider: {str(k): float(v) for k, v in pins.items()}
            for provider, pins in dict(self.store.get_state(self.name, STATE_PINS, {}) or {}).items()
        }
        if self.router is None or self.providers is None:
            return
        saved = dict(self.store.get_state(self.name, STATE_TUNABLES, {}) or {})
        for provider, values in saved.items():
            if provider in self.providers:
                try:
                    self.router.set_tunables(provider, ProviderTunables.model_validate(values))
                except ValidationError as exc:  # a value from an older version's bounds: keep defaults
                    logger.warning("ignoring stored tunables of %s: %s", provider, exc)

    def apply_shared_state(self, key: str, value: Any) -> None:
        """Adopt tunables or pins the optimizer's leader (another replica) kept, so every replica
        routes with the same values. Unknown keys are ignored; a value out of bounds is logged."""
        if key == STATE_PINS and isinstance(value, dict):
            self._pins = {
                str(provider): {str(k): float(v) for k, v in dict(pins).items()}
                for provider, pins in value.items()
            }
        elif key == STATE_TUNABLES and isinstance(value, dict):
            if self.router is None or self.providers is None:
                return
            for provider, values in value.items():
                if provider not in self.providers or provider in self._experiments:
                    continue
                try:
                    tunables = ProviderTunables.model_validate(values)
                except ValidationError as exc:
                    logger.warning("ignoring shared tunables of %s: %s", provider, exc)
                    continue
                if tunables != self.router.lane(provider).tunables:
                    self.router.set_tunables(provider, tunables)

    def abandon_experiments(self) -> None:
        """This replica stopped leading: its running experiments end here (the new leader records
        them as interrupted) and every lane goes back to the values kept in the store."""
        if self.router is not None:
            for provider in self._experiments:
                self.router.stop_canary(provider)
        self._experiments = {}
        if self.store.is_open:
            self.apply_shared_state(STATE_TUNABLES, self.store.get_state(self.name, STATE_TUNABLES, {}))

    def load_history(self) -> None:
        """Show the optimizations the leader (another replica) recorded, as they are stored:
        a follower reads them, it never ends or reverts them."""
        self._optimizations = {
            record.id: record
            for record in (
                Optimization.model_validate_json(raw)
                for raw in self.store.list_records("optimizations", limit=10_000)
            )
        }

    def reload(self) -> None:
        """Start over from the store (this replica just became the optimizer's leader): the
        previous leader's unfinished experiments end as interrupted, its kept values apply."""
        self._optimizations = {}
        self._experiments = {}
        self.load()

    def _save_tunables(self) -> None:
        if self.router is None or self.providers is None or not self.store.is_open:
            return
        kept: dict[str, dict[str, Any]] = {}
        for name in self.providers.names():
            values = self.router.lane(name).tunables.model_dump()
            experiment = self._experiments.get(name)
            if experiment is not None:
                # What is kept is the value before the experiment: a candidate in its slot (switchback,
                # before/after) is on trial, and must not reach other replicas or survive a restart.
                values[experiment.record.parameter] = experiment.record.old_value
            kept[name] = values
        self.store.set_state(
            self.name, STATE_TUNABLES, kept, timestamp=self.clock.now(), fence=self.write_fence()
        )

    def _save_pins(self) -> None:
        if self.store.is_open:
            self.store.set_state(
                self.name, STATE_PINS, self._pins, timestamp=self.clock.now(), fence=self.write_fence()
            )

    def _save(self, record: Optimization) -> None:
        self._optimizations[record.id] = record
        if self.store.is_open:
            self.store.put_record(
                "optimizations",
                id=record.id,
                provider=record.provider,
                status=record.status.value,
                at=record.created_at,
                record=record.model_dump_json(),
                fence=self.write_fence(),
            )

    # --- the loop -----------------------------------------------------------------------

    async def tick(self) -> None:
        if self.router is None or self.telemetry is None or self.providers is None:
            return
        for provider in self.providers.names():
            await checkpoint()  # one provider per step: the event loop serves payments between
            self._remember_tally(provider)
            if self._restore_expired_cuts(provider):
                continue
            experiment = self._experiments.get(provider)
            if experiment is not None:
                self._evaluate(provider, experiment)
            else:
                self._maybe_propose(provider)

    def _remember_tally(self, provider: str) -> None:
        assert self.router is not None
        lane = self.router.lane(provider)
        tally = lane.tally
        history = self._tally_history.setdefault(provider, deque())
        now = self.clock.monotonic()
        history.append(
            _TallyPoint(
                now,
                tally.calls,
                tally.successes,
                tally.retries_sent,
                tally.timeouts,
                tally.recovered_on_retry,
                tally.retries_exhausted,
                lane.breaker.trials_passed,
                lane.breaker.trials_failed,
                lane.status_cache.queries,
                lane.status_cache.hits,
                lane.status_cache.stale_hits,
            )
        )
        while len(history) > 2 and now - history[1].at >= LONG_RUN_WINDOW_S:
            history.popleft()

    def _tally_since(self, provider: str, window_s: float) -> _TallyPoint:
        """Counts over (roughly) the last `window_s`: the newest point minus the one at its start."""
        history = self._tally_history.get(provider)
        if not history:
            return _TallyPoint(0.0, 0, 0, 0, 0, 0, 0)
        newest = history[-1]
        start = next((p for p in history if newest.at - p.at <= window_s), history[0])
        return _slot_delta(newest, start)

    def evidence(self, provider: str, window_s: float = EVIDENCE_WINDOW_S) -> LaneEvidence:
        """What the tuners read for `provider`: telemetry plus the router's lane tallies."""
        assert self.telemetry is not None
        series = self.telemetry.provider(provider)
        snapshot = series.snapshot(window_s)
        long_run = series.snapshot(LONG_RUN_WINDOW_S)
        long_run_count, long_run_high = series.latency_quantiles_ms((0.99, 0.999), LONG_RUN_WINDOW_S)
        if long_run_count < DEFAULT_MIN_QUANTILE_SAMPLES:
            long_run_high = None
        history = self._tally_history.get(provider)
        errors = snapshot.errors_by_class
        counts = self._tally_since(provider, window_s)
        # Local rejections never reached the provider; customer refusals are not its doing.
        not_failures = (Outcome.REJECTED.name.lower(), Outcome.CUSTOMER.name.lower())
        failures = sum(v for k, v in errors.items() if k not in not_failures)
        return LaneEvidence(
            window_s=window_s,
            latencies_ms=series.latencies_ms(window_s),
            calls=snapshot.requests,
            successes=max(0, snapshot.requests - failures),
            timeouts=errors.get(Outcome.TIMEOUT.name.lower(), 0),
            not_processed=errors.get(Outcome.NOT_PROCESSED.name.lower(), 0),
            ambiguous=errors.get(Outcome.AMBIGUOUS.name.lower(), 0),
            rate_limited=errors.get(Outcome.RATE_LIMITED.name.lower(), 0),
            auth_errors=errors.get(Outcome.AUTH.name.lower(), 0),
            retries_sent=counts.retries_sent,
            recovered_on_retry=counts.recovered_on_retry,
            retries_exhausted=counts.retries_exhausted,
            breaker_trials_passed=counts.trials_passed,
            breaker_trials_failed=counts.trials_failed,
            status_queries=counts.status_queries,
            status_cache_hits=counts.status_cache_hits,
            stale_cache_hits=counts.stale_cache_hits,
            long_run_error_rate=long_run.error_rate,
            long_run_latency_p50_ms=long_run.latency_p50_ms,
            # What the provider's latency needed over the long run (the timeout tuner never cuts
            # below it: a slow regime of the day comes back), and how much history that spans.
            long_run_latency_p99_ms=long_run_high[0] if long_run_high is not None else None,
            long_run_latency_p999_ms=long_run_high[1] if long_run_high is not None else None,
            long_run_covered_s=history[-1].at - history[0].at if history else 0.0,
        )

    def _maybe_propose(self, provider: str) -> None:
        assert self.router is not None
        current = self.router.lane(provider).tunables
        evidence = self.evidence(provider)
        pinned = self._pins.get(provider, {})
        now = self.clock.monotonic()
        count = len(self.tuners)
        first = self._next_tuner.get(provider, 0) % count if count else 0
        proposals: list[tuple[int, Proposal]] = []
        for offset in range(count):
            index = (first + offset) % count
            tuner = self.tuners[index]
            if tuner.parameter not in LIVE_PARAMETERS or tuner.parameter in pinned:
                continue
            proposal = tuner.propose(provider, current, evidence, conservative=self.conservative)
            if proposal is None:
                continue
            key = (provider, proposal.parameter, proposal.new_value > proposal.old_value)
            if self._cooldown_until.get(key, -float("inf")) > now:
                continue
            proposals.append((index, proposal))
        if not proposals:
            return
        index, proposal = min(proposals, key=lambda item: _urgency(item[1]))  # stable: the turn breaks ties
        self._next_tuner[provider] = index + 1
        self._start(provider, proposal, current)

    # --- the timeout guard --------------------------------------------------------------

    def on_timeout(self, provider: str, timed_out: bool = True) -> None:
        """The router's timeout listener: the guard against a tuned timeout the provider outgrew.

        A timeout the optimizer cut below the provider's default was right for the latency it was
        measured on; when the provider slows down, every call past it fails a payment, and the next
        tick may be a minute away. `GUARD_TIMEOUTS` calls within `GUARD_WINDOW_S` that timed out,
        or answered after `router.NEAR_TIMEOUT_SHARE` of the timeout (the slowdown seen before it
        costs a payment), restore the default at once. An experiment in flight is ended first:
        its arms would no longer compare like with like. That includes a canary cutting the
        timeout below the default: its arm is where the payments fail, and waiting minutes for a
        statistical verdict on a cut that times calls out costs payments. A canary raising the
        timeout from the default is left alone. The tuner may cut the timeout again later, on new
        evidence. Runs inside the payment's call path, so it only changes
        state (no I/O, no waiting).
        """
        if self.router is None or self.mode is Mode.OFF:
            return
        now = self.clock.monotonic()
        seen = self._timeouts_seen.setdefault(provider, deque())
        seen.append((now, timed_out))
        while seen and now - seen[0][0] > GUARD_WINDOW_S:
            seen.popleft()
        if len(seen) < GUARD_TIMEOUTS or "timeout_s" in self._pins.get(provider, {}):
            return
        default = default_tunables(provider).timeout_s
        lane_cut = self.router.lane(provider).tunables.timeout_s < default
        experiment = self._experiments.get(provider)
        canary_cut = (
            experiment is not None
            and experiment.record.mode == "canary"
            and experiment.candidate.timeout_s < default
        )
        if not (lane_cut or canary_cut):
            return
        count = len(seen)
        timeouts = sum(1 for _, out in seen if out)
        seen.clear()
        why = (
            f"{count} calls within {GUARD_WINDOW_S:g} s timed out ({timeouts}) or answered after "
            f"{NEAR_TIMEOUT_SHARE:.0%} of the timeout ({count - timeouts})"
        )
        self._restore_default(
            provider,
            "timeout_s",
            why=f"timeout guard: {why}",
            evidence={
                "calls_at_or_near_timeout": float(count),
                "timeouts": float(timeouts),
                "window_s": GUARD_WINDOW_S,
            },
            verdict="guard: restored without an experiment (the safe direction, payments failing now)",
        )

    # --- expired cuts -------------------------------------------------------------------

    def _restore_expired_cuts(self, provider: str) -> bool:
        """Ask every `RestoringTuner` whether a cut below the default lost its reason; True if one
        was restored (see `RestoringTuner`: the recent window is `RESTORE_WINDOW_S`)."""
        assert self.router is not None
        pinned = self._pins.get(provider, {})
        recent: LaneEvidence | None = None
        for tuner in self.tuners:
            if not _restores(tuner) or tuner.parameter in pinned:
                continue
            if tuner.parameter not in LIVE_PARAMETERS:
                continue
            current = self.router.lane(provider).tunables
            recent = recent if recent is not None else self.evidence(provider, RESTORE_WINDOW_S)
            proposal = tuner.restore(provider, current, recent)
            if proposal is None:
                continue
            self._restore_default(
                provider,
                proposal.parameter,
                why=proposal.reason,
                evidence=proposal.evidence,
                verdict="restored without an experiment: back to the provider's documented default",
            )
            return not self.dry_run  # a dry run changed nothing: the tick goes on as usual
        return False

    def _restore_default(
        self, provider: str, parameter: str, *, why: str, evidence: Mapping[str, float], verdict: str
    ) -> None:
        """Put `parameter` back to the provider's documented default on all traffic, at once.

        For changes that cannot wait for a canary because payments are failing now, and that are
        never less safe than the cut they undo (the timeout guard, an expired retry cut). An
        experiment in flight is ended first: its arms would no longer compare like with like, and
        if it was trying a cut of this very parameter, ending it is the restore. The lane's value,
        if still off the default, is then set to the default, with a kept record that says why.
        The same direction of change rests for `EVIDENCE_WINDOW_S`: the tuners' window still holds
        the minutes that justified the cut, and would propose it again at once.
        """
        assert self.router is not None
        default = float(getattr(default_tunables(provider), parameter))
        if self.dry_run:
            self._actions_dry_run += 1
            self.bus.emit(
                EventType.OPTIMIZATION_APPLIED,
                component=self.name,
                provider=provider,
                dry_run=True,
                severity=Severity.WARNING,
                message=f"{provider}: {why}: would restore the default {parameter} {default:g}",
                data={"parameter": parameter, **evidence},
            )
            return
        experiment = self._experiments.get(provider)
        if experiment is not None:
            self._end_experiment(provider, experiment, f"ended: {why}")
        current = self.router.lane(provider).tunables
        old = float(getattr(current, parameter))
        cut = old
        if old == default and experiment is not None and experiment.record.parameter == parameter:
            cut = experiment.record.new_value  # the experiment was the cut; ending it restored the default
        if cut != default:
            # The evidence window still holds the minutes that justified the cut: the same cut is
            # not proposed again until they have left it.
            self._cooldown_until[(provider, parameter, cut > default)] = (
                self.clock.monotonic() + EVIDENCE_WINDOW_S
            )
        if old == default:
            return
        self._seq += 1
        record = Optimization(
            id=f"opt-{provider}-{parameter}-{round(self.clock.now() * 1000)}-{self._seq}",
            provider=provider,
            parameter=parameter,
            old_value=old,
            new_value=default,
            status=OptimizationStatus.KEPT,
            mode="before_after",
            share=1.0,
            reason=f"{why} at {parameter} {old:g}; the provider's default {default:g} restored at once",
            evidence={**{k: round(float(v), 6) for k, v in evidence.items()}, parameter: old},
            created_at=self.clock.now(),
            decided_at=self.clock.now(),
            decided_by="engine",
            verdict=verdict,
        )
        self.router.set_tunables(
            provider, apply_proposal(current, Proposal(parameter, old, default, why, {}))
        )
        self._save(record)
        self._save_tunables()
        self._actions_taken += 1
        self._emit(
            record,
            f"{why} at {old:g}, restored the default {parameter} {default:g}",
            severity=Severity.WARNING,
        )

    def _end_experiment(
        self,
        provider: str,
        experiment: _Experiment,
        verdict: str,
        *,
        decided_by: Literal["engine", "operator"] = "engine",
    ) -> None:
        """End an experiment without a statistical verdict: the lane goes back to its previous tunables."""
        assert self.router is not None
        self.router.stop_canary(provider)
        self._experiments.pop(provider, None)
        record = experiment.record
        self._set_parameter(provider, record.parameter, record.old_value)
        record.status = OptimizationStatus.REVERTED
        record.decided_at = self.clock.now()
        record.decided_by = decided_by
        record.verdict = verdict
        self._save(record)
        self._save_tunables()
        self._emit(
            record,
            f"reverted {record.parameter} {record.old_value:g} -> {record.new_value:g}: {verdict}",
            severity=Severity.WARNING,
        )

    def _start(self, provider: str, proposal: Proposal, current: ProviderTunables) -> None:
        assert self.router is not None
        candidate = apply_proposal(current, proposal)
        # A longer timeout while timeouts pile up is the safer direction, and every minute on a
        # half-and-half canary fails the other half's slow payments: apply it to all traffic at
        # once and judge it against the window before. What the router cannot split per payment
        # is judged by switchback: whole slots alternate between the candidate and the value before.
        mode: Literal["canary", "before_after", "switchback"]
        if _is_pileup_raise(proposal):
            mode = "before_after"
        elif proposal.parameter in SPLITTABLE:
            mode = "canary"
        else:
            mode = "switchback"
        self._seq += 1
        record = Optimization(
            id=f"opt-{provider}-{proposal.parameter}-{round(self.clock.now() * 1000)}-{self._seq}",
            provider=provider,
            parameter=proposal.parameter,
            old_value=proposal.old_value,
            new_value=float(getattr(candidate, proposal.parameter)),
            status=OptimizationStatus.CANARY,
            mode=mode,
            share=self.canary_share if mode == "canary" else 1.0 if mode == "before_after" else 0.5,
            reason=proposal.reason,
            evidence={k: round(float(v), 6) for k, v in proposal.evidence.items()},
            created_at=self.clock.now(),
            dry_run=self.dry_run,
        )
        if self.dry_run:
            record.status = OptimizationStatus.PROPOSED
            record.verdict = "dry-run: proposed, not tried"
            self._save(record)
            self._emit(record, f"would try {record.parameter} {record.old_value:g} -> {record.new_value:g}")
            self._actions_dry_run += 1
            return
        experiment = _Experiment(
            record=record, candidate=candidate, started_mono=self.clock.monotonic(), baseline=None
        )
        if mode == "canary":
            self.router.start_canary(provider, record.id, record.parameter, candidate, share=record.share)
            how = f"canary on {record.share:.0%} of payments"
        elif mode == "before_after":
            experiment.baseline = self._window_samples(provider, EVIDENCE_WINDOW_S)
            self._set_parameter(provider, record.parameter, record.new_value)
            self.router.start_canary(provider, record.id, record.parameter, candidate, share=1.0)
            how = "applied to all traffic, compared with the previous window"
        else:
            history = self._tally_history.get(provider)
            experiment.slot_start = history[-1] if history else None
            self._set_parameter(provider, record.parameter, record.new_value)
            how = (
                f"switchback: all traffic alternates between {record.new_value:g} and {record.old_value:g} "
                "every optimizer interval, and the two sets of slots are compared"
            )
        self._experiments[provider] = experiment
        self._save(record)
        self._actions_taken += 1
        self._emit(record, f"trying {record.parameter} {record.old_value:g} -> {record.new_value:g} ({how})")

    def _set_parameter(self, provider: str, parameter: str, value: float) -> None:
        """Set one tunable on the lane, leaving the others as they are now (an operator may have
        changed one since the experiment began)."""
        assert self.router is not None
        current = self.router.lane(provider).tunables
        if float(getattr(current, parameter)) != value:
            self.router.set_tunables(
                provider, apply_proposal(current, Proposal(parameter, 0.0, value, "", {}))
            )

    def _window_samples(self, provider: str, window_s: float) -> ArmSamples:
        assert self.telemetry is not None
        counts = self._tally_since(provider, window_s)
        return ArmSamples(
            latencies_ms=self.telemetry.provider(provider).latencies_ms(window_s),
            successes=min(counts.successes, counts.calls),
            calls=counts.calls,
            retries_sent=counts.retries_sent,
            timeouts=counts.timeouts,
        )

    @staticmethod
    def _samples(tally: ArmTally) -> ArmSamples:
        return ArmSamples(
            latencies_ms=tally.latencies_ms,
            successes=min(tally.successes, tally.calls),
            calls=tally.calls,
            retries_sent=tally.retries_sent,
            timeouts=tally.timeouts,
        )

    def _evaluate(self, provider: str, experiment: _Experiment) -> None:
        assert self.router is not None
        record = experiment.record
        if record.mode == "switchback":
            self._evaluate_switchback(provider, experiment)
            return
        split = self.router.lane(provider).canary
        if split is None or split.optimization_id != record.id:  # ended elsewhere (operator)
            self._experiments.pop(provider, None)
            return
        canary = self._samples(split.canary)
        baseline = experiment.baseline if experiment.baseline is not None else self._samples(split.baseline)
        verdict = self._verdict(experiment, baseline, canary)
        if verdict.decision is not CanaryDecision.CONTINUE:
            self._decide(provider, experiment, verdict)

    def _evaluate_switchback(self, provider: str, experiment: _Experiment) -> None:
        """Close the slot that just ended into its arm, judge both arms' slots so far, and, while
        the verdict is "continue", hand the lane to the other arm for the next slot."""
        assert self.telemetry is not None
        history = self._tally_history.get(provider)
        if not history:
            return
        newest = history[-1]
        start = experiment.slot_start
        if start is not None and newest.at > start.at:
            counts = _slot_delta(newest, start)
            experiment.slots[experiment.slot_arm].append(
                ArmSamples(
                    latencies_ms=self.telemetry.provider(provider).latencies_ms(counts.at),
                    successes=min(counts.successes, counts.calls),
                    calls=counts.calls,
                    retries_sent=counts.retries_sent,
                    timeouts=counts.timeouts,
                )
            )
        experiment.slot_start = newest
        verdict = self._verdict(
            experiment, _merged(experiment.slots["previous"]), _merged(experiment.slots["candidate"])
        )
        if verdict.decision is not CanaryDecision.CONTINUE:
            self._decide(provider, experiment, verdict)
            return
        record = experiment.record
        experiment.slot_arm = "previous" if experiment.slot_arm == "candidate" else "candidate"
        value = record.new_value if experiment.slot_arm == "candidate" else record.old_value
        self._set_parameter(provider, record.parameter, value)

    def _verdict(self, experiment: _Experiment, baseline: ArmSamples, canary: ArmSamples) -> CanaryVerdict:
        record = experiment.record
        return evaluate(
            record.parameter,
            baseline,
            canary,
            self.canary_config,
            old_value=record.old_value,
            new_value=record.new_value,
            final=self.clock.monotonic() - experiment.started_mono >= MAX_EXPERIMENT_S,
            concurrent=record.mode != "before_after",
        )

    def _decide(self, provider: str, experiment: _Experiment, verdict: CanaryVerdict) -> None:
        """Keep or revert on the verdict: the lane gets the candidate's or the old value."""
        assert self.router is not None
        record = experiment.record
        self.router.stop_canary(provider)
        self._experiments.pop(provider, None)
        keep = verdict.decision is CanaryDecision.KEEP
        self._set_parameter(provider, record.parameter, record.new_value if keep else record.old_value)
        if verdict.outcome == "ineffective":
            raised = record.new_value > record.old_value
            self._cooldown_until[(provider, record.parameter, raised)] = (
                self.clock.monotonic() + INEFFECTIVE_COOLDOWN_S
            )
        record.status = OptimizationStatus.KEPT if keep else OptimizationStatus.REVERTED
        record.decided_at = self.clock.now()
        record.decided_by = "engine"
        record.before = dict(verdict.figures_baseline)
        record.after = dict(verdict.figures_canary)
        record.p_values = {k: round(v, 6) for k, v in verdict.p_values.items()}
        record.verdict = verdict.reason
        self._save(record)
        self._save_tunables()
        self._emit(
            record,
            f"{'kept' if keep else 'reverted'} {record.parameter} {record.old_value:g} -> {record.new_value:g}: "
            f"{verdict.reason}",
            severity=Severity.INFO if keep else Severity.WARNING,
        )

    def _emit(self, record: Optimization, message: str, *, severity: Severity = Severity.INFO) -> None:
        self.bus.emit(
            EventType.OPTIMIZATION_APPLIED,
            component=self.name,
            provider=record.provider,
            dry_run=record.dry_run,
            severity=severity,
            message=f"{record.provider}: {message}",
            data=record.model_dump(mode="json"),
        )

    # --- operator surface ---------------------------------------------------------------

    def optimizations(self, *, provider: str | None = None, limit: int = 50) -> list[Optimization]:
        """History, newest first."""
        selected = [o for o in self._optimizations.values() if provider is None or o.provider == provider]
        selected.sort(key=lambda o: o.created_at, reverse=True)
        return selected[:limit]

    def provider_config(self, provider: str) -> ProviderConfig:
        """A provider's tunables, defaults, bounds, pins and running experiment."""
        assert self.router is not None
        tunables = self.router.lane(provider).tunables
        experiment = self._experiments.get(provider)
        return ProviderConfig(
            provider=provider,
            tunables=tunables,
            defaults=default_tunables(provider),
            pinned=dict(self._pins.get(provider, {})),
            bounds={name: parameter_bounds(name) for name in type(tunables).model_fields},
            experiment=None if experiment is None else experiment.record,
        )

    def set_provider_config(
        self, provider: str, values: dict[str, float], *, pin: bool, reason: str
    ) -> ProviderConfig:
        """Set tunables now (an operator override); with `pin`, the optimizer leaves them alone.

        Raises:
            ProviderConfigError: an unknown parameter or a value out of bounds (named in the message).
        """
        assert self.router is not None
        current = self.router.lane(provider).tunables
        fields = type(current).model_fields
        for name, value in values.items():
            if name not in fields:
                raise ProviderConfigError(f"{name}: unknown parameter; allowed: {', '.join(sorted(fields))}")
            low, high = parameter_bounds(name)
            if not low <= value <= high:
                raise ProviderConfigError(f"{name}={value:g} is outside [{low:g}, {high:g}]")
        try:
            updated = ProviderTunables.model_validate({**current.model_dump(), **values})
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ProviderConfigError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
        experiment = self._experiments.get(provider)
        if experiment is not None and experiment.record.parameter in values:
            self._end_experiment(
                provider,
                experiment,
                f"ended by an operator override of {experiment.record.parameter} ({reason})",
                decided_by="operator",
            )
        elif experiment is not None:  # an experiment on another parameter goes on, with these values
            experiment.candidate = experiment.candidate.model_copy(update=values)
            self.router.override_canary(provider, values)
        self.router.set_tunables(provider, updated)
        if pin:
            self._pins.setdefault(provider, {}).update({k: float(v) for k, v in values.items()})
        self._save_pins()
        self._save_tunables()
        self.count_action()
        return self.provider_config(provider)

    def release_pins(self, provider: str, parameters: list[str] | None = None) -> ProviderConfig:
        """Hand pinned parameters (all if None) back to the optimizer; values stay as they are."""
        pins = self._pins.get(provider, {})
        for name in list(pins) if parameters is None else parameters:
            pins.pop(name, None)
        if not pins:
            self._pins.pop(provider, None)
        self._save_pins()
        return self.provider_config(provider)

    def revert_optimization(self, optimization_id: str, *, reason: str) -> Optimization:
        """Undo one optimization: end it if still running, restore the old value if it was kept.

        Raises:
            KeyError: no such optimization.
            ValueError: already reverted, or the parameter has changed since (the message says to what).
        """
        assert self.router is not None
        record = self._optimizations.get(optimization_id)
        if record is None:
            raise KeyError(optimization_id)
        if record.status is OptimizationStatus.REVERTED:
            raise ValueError(f"optimization {optimization_id} is already reverted")
        provider = record.provider
        experiment = self._experiments.get(provider)
        if experiment is not None and experiment.record.id == optimization_id:
            self.router.stop_canary(provider)
            self._experiments.pop(provider, None)
            self._set_parameter(provider, record.parameter, record.old_value)
        elif record.status is OptimizationStatus.KEPT:
            current = self.router.lane(provider).tunables
            now_value = float(getattr(current, record.parameter))
            if abs(now_value - record.new_value) > 1e-9:
                raise ValueError(
                    f"{record.parameter} of {provider} is {now_value:g} now, not the {record.new_value:g} this "
                    f"optimization set; use set_provider_config to change it"
                )
            restored = ProviderTunables.model_validate(
                {**current.model_dump(), record.parameter: record.old_value}
            )
            self.router.set_tunables(provider, restored)
        record.status = OptimizationStatus.REVERTED
        record.decided_at = self.clock.now()
        record.decided_by = "operator"
        record.verdict = f"reverted by an operator ({reason})"
        self._save(record)
        self._save_tunables()
        self.count_action()
        self._emit(
            record,
            f"reverted {record.parameter} to {record.old_value:g} ({reason})",
            severity=Severity.WARNING,
        )
        return record

    def details(self) -> dict[str, Any]:
        statuses = [o.status for o in self._optimizations.values()]
        return {
            "conservative_mode": self.conservative,
            "canary_share": self.canary_share,
            "optimizations_total": len(statuses),
            "kept": statuses.count(OptimizationStatus.KEPT),
            "reverted": statuses.count(OptimizationStatus.REVERTED),
            "in_flight": sorted(e.record.id for e in self._experiments.values()),
            "pinned": {p: sorted(v) for p, v in self._pins.items()},
        }
