"""AutoScaler: keeps the replica count in step with the measured load.

Each tick, if this replica leads (see `scaling/leader.py`; a single process always does), reads
the measured cluster load (transactions per minute) and asks its `ScalingPolicy` (predictive by
default, see `scaling/policy.py`) for a replica count, passing the guards that forbid a
scale-down (an open incident, a maintenance window in progress). Every change is a
`scaling_decision` event with the policy's inputs, rule and reason. With no load measured there is
no decision: nothing is invented.

The load is also recorded once a minute in the store, and replayed into the policy's forecaster
at start-up, so a restarted replica (or a new leader) forecasts from the history, not from zero.
`scale_to()` is the operator's override (the `scale_to` tool); calls are serialised.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from pydantic import BaseModel, Field, SerializeAsAny

from mcp_autonomy.autonomy.component import Component
from mcp_autonomy.autonomy.scaling.base import ReplicaState, ScaleBackend, ScaleLeadershipLost
from mcp_autonomy.autonomy.scaling.policy import (
    NO_GUARDS,
    ReactiveConfig,
    ReactivePolicy,
    ScaleGuards,
    ScalingPolicy,
)
from mcp_autonomy.clock import Clock, iso
from mcp_autonomy.config import MAX_REPLICAS_LIMIT
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.store import StateStore

logger = logging.getLogger(__name__)

ROLLOUT_POLL_S = 1.0
DEFAULT_ROLLOUT_TIMEOUT_S = 120.0
LOAD_SAMPLE_S = 60.0
"""One load sample a minute is kept in the store for the forecaster ..."""
LOAD_HISTORY_S = 15 * 86_400.0
"""... for two weeks and a day: enough for the weekly profile to be learned again after a restart."""

LoadSource = Callable[[], float | Awaitable[float | None] | None]
GuardSource = Callable[[], ScaleGuards]
ProgressFn = Callable[[int, int, str], Awaitable[None]]


class ScaleBoundsError(ValueError):
    """A requested replica count outside the allowed bounds."""


class ScaleResult(BaseModel):
    """The outcome of one scaling request."""

    requested: int
    previous_desired: int
    state: SerializeAsAny[ReplicaState] = Field(
        description="The backend's view after the request (the kubernetes backend adds how it scaled and notes)"
    )
    reason: str
    forced: bool
    dry_run: bool
    rollout: str = Field(description="complete | timed_out | not_observable (local backend) | dry_run")
    waited_s: float


class AutoScaler(Component):
    """Scales the server's own replicas from measured load, within MIN..MAX."""

    name = "auto_scaler"

    def __init__(
        self,
        *,
        clock: Clock,
        bus: EventBus,
        store: StateStore,
        backend: ScaleBackend,
        load_source: LoadSource,
        enabled: bool,
        interval_s: float,
        min_replicas: int,
        max_replicas: int,
        target_tpm_per_instance: int,
        policy: ScalingPolicy | None = None,
        guards: GuardSource | None = None,
    ) -> None:
        super().__init__(clock=clock, bus=bus, store=store, enabled=enabled, interval_s=interval_s)
        self.backend = backend
        self.load_source = load_source
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.target_tpm_per_instance = target_tpm_per_instance
        self.policy: ScalingPolicy = policy or ReactivePolicy(
            ReactiveConfig(
                target_tpm_per_instance=float(target_tpm_per_instance),
                min_replicas=min_replicas,
                max_replicas=max_replicas,
            )
        )
        self.guards: GuardSource = guards or (lambda: NO_GUARDS)
        self.is_leader: Callable[[], bool] = lambda: True
        """Only the leader decides (set by the system from its leader elector)."""
        self.leader: Callable[[], str | None] = lambda: "local"
        self._lock = anyio.Lock()
        self._last_load: float | None = None
        self._last_decision: dict[str, Any] | None = None
        self._last_sample_at: float | None = None
        self._policy_seen_until: float | None = None  # the newest load time the policy has learnt
        self._following = False  # another replica decided at the last tick
        self.samples_replayed = 0

    def warm_up_from_history(self) -> int:
        """Replay the recorded load of the last two weeks through the policy; returns how many samples.

        A predictive policy learns from it as if it had been deciding (`PredictivePolicy.warm_up`:
        its forecast, the load's cadence, the record of the forecast against the HPA, its cost
        quantile), so a restart does not send it back to the HPA's rule for hours; the reactive
        rule has nothing to learn.
        """
        replayed = self._learn_recorded_load()
        if replayed:
            self._last_sample_at = self._policy_seen_until
        return replayed

    def _catch_up(self) -> None:
        """On taking the loop over from another replica: learn the load it recorded meanwhile.

        A follower's policy sees no load (only the leader measures and decides), so without this
        a replica that took over would decide from what it learnt at its own start, hours or days
        old, and follow the HPA's rule until its ledger refilled.
        """
        caught_up = self._learn_recorded_load()
        if caught_up:
            logger.info(
                "scaling policy caught up on %d load samples recorded by the previous leader", caught_up
            )

    def _learn_recorded_load(self) -> int:
        """Feed the policy the stored samples it has not seen (within LOAD_HISTORY_S, not after now)."""
        warm_up = getattr(self.policy, "warm_up", None)
        if warm_up is None or not self.store.is_open:
            return 0
        now = self.clock.now()
        seen = self._policy_seen_until
        since = now - LOAD_HISTORY_S if seen is None else max(seen, now - LOAD_HISTORY_S)
        # A sample stamped after now (another replica's clock ahead of ours) would put the
        # policy's time past the live ticks: it is left out.
        samples = [
            s for s in self.store.load_samples(since=since) if (seen is None or s[0] > seen) and s[0] <= now
        ]
        if not samples:
            return 0
        warm_up(samples, step_s=min(max(self.interval_s, 1.0), 3600.0))
        self.samples_replayed += len(samples)
        self._policy_seen_until = samples[-1][0]
        return len(samples)

    async def _measure(self) -> float | None:
        value = self.load_source()
        if inspect.isawaitable(value):
            value = await value
        return value

    def _record_sample(self, load: float) -> None:
        now = self.clock.now()
        if self._last_sample_at is not None and now - self._last_sample_at < LOAD_SAMPLE_S:
            return
        self._last_sample_at = now
        if self.store.is_open:
            self.store.record_load(now, load, keep_s=LOAD_HISTORY_S, fence=self.write_fence())

    async def tick(self) -> None:
        if not self.is_leader():
            self._following = True
            self._last_decision = {
                "at": iso(self.clock.now()),
                "decision": "none",
                "reason": f"not the leader: {self.leader() or 'nobody'} decides",
            }
            return
        if self._following:
            self._following = False
            self._catch_up()
        load = await self._measure()
        self._last_load = load
        if load is None:
            self._last_decision = {
                "at": iso(self.clock.now()),
                "decision": "none",
                "reason": "no load measured yet",
            }
            return
        self._record_sample(load)
        state = await self.backend.read()
        current = state.desired
        guards = self.guards()
        decision = self.policy.recommend(
            self.clock.now(), float(load), current, current if state.ready is None else state.ready, guards
        )
        self._policy_seen_until = self.clock.now()
        desired = decision.desired_replicas
        inputs: dict[str, Any] = {
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in decision.inputs.items()},
            "policy": self.policy.name,
            "rule": decision.rule.value,
            "guards": guards.describe(),
        }
        reason = decision.reason
        if state.ready is None:
            # The backend cannot see readiness (local): the policy was given `current` to decide
            # with, but the record must not claim it was measured.
            inputs["ready_replicas"] = None
            reason = reason.replace(
                f" on {current}/{current} ready ", f" on {current} replicas (ready: not measured) ", 1
            )
        # An HPA's bounds (floor mode) are where a floor can go: asking past them writes a clamped
        # floor, and the next tick would see the same difference again and announce it for ever.
        hpa_max = getattr(state, "hpa_max_replicas", None)
        if getattr(state, "hpa_min_replicas", None) is not None:
            bounded = max(1, desired if hpa_max is None else min(desired, hpa_max))
            if bounded != desired:
                inputs["hpa_bounds"] = {"min": 1, "max": hpa_max}
                reason = f"{reason}; the HPA's bounds allow a floor of {bounded}, not {desired}"
                desired = bounded
        self._last_decision = {"at": iso(self.clock.now()), **inputs, "reason": reason}
        if desired == current:
            self._last_decision["decision"] = "hold"
            return
        self._last_decision["decision"] = f"scale {current} -> {desired}"
        self.bus.emit(
            EventType.SCALING_DECISION,
            component=self.name,
            dry_run=self.dry_run,
            message=f"decided {current} -> {desired} replicas ({decision.rule.value}): {reason}",
            data={**inputs, "from": current, "to": desired, "reason": reason},
        )
        if not self.is_leader():  # measuring took time: leadership may have been lost meanwhile
            self._last_decision["decision"] = "none: leadership lost before acting"
            return
        try:
            await self.act(
                f"scale to {desired}", lambda: self._apply(desired, reason, "automatic", forced=False)
            )
        except ScaleLeadershipLost as exc:  # deposed mid-change: nothing more was sent
            self._last_decision["decision"] = f"none: leadership lost while scaling ({exc})"
            logger.warning("scaling stopped: %s", exc)

    def check_bounds(self, replicas: int, force: bool) -> None:
        """Raise `ScaleBoundsError` naming the bounds when `replicas` is outside them."""
        if not 0 <= replicas <= MAX_REPLICAS_LIMIT:
            raise ScaleBoundsError(f"replicas must be in [0, {MAX_REPLICAS_LIMIT}], got {replicas}")
        if not force and not self.min_replicas <= replicas <= self.max_replicas:
            raise ScaleBoundsError(
                f"replicas={replicas} is outside MIN_INSTANCES..MAX_INSTANCES = "
                f"{self.min_replicas}..{self.max_replicas}; set force=true to override"
            )

    async def scale_to(
        self,
        replicas: int,
        *,
        reason: str,
        force: bool = False,
        progress: ProgressFn | None = None,
        timeout_s: float = DEFAULT_ROLLOUT_TIMEOUT_S,
    ) -> ScaleResult:
        """Set the desired replicas now (operator override), wait for the rollout, report."""
        self.check_bounds(replicas, force)
        async with self._lock:
            if self.dry_run:
                state = await self.backend.read()
                self.bus.emit(
                    EventType.SCALING_DECISION,
                    component=self.name,
                    dry_run=True,
                    message=f"dry-run: would scale {state.desired} -> {replicas} ({reason})",
                    data={"requested": replicas, "current_desired": state.desired, "reason": reason},
                )
                return ScaleResult(
                    requested=replicas,
                    previous_desired=state.desired,
                    state=state,
                    reason=reason,
                    forced=force,
                    dry_run=True,
                    rollout="dry_run",
                    waited_s=0.0,
                )
            result = await self._apply(
                replicas, reason, "manual", forced=force, progress=progress, timeout_s=timeout_s
            )
            self.count_action()
            return result

    async def _apply(
        self,
        replicas: int,
        reason: str,
        trigger: str,
        *,
        forced: bool,
        progress: ProgressFn | None = None,
        timeout_s: float = DEFAULT_ROLLOUT_TIMEOUT_S,
    ) -> ScaleResult:
        before = await self.backend.read()
        state = await self.backend.set_desired(replicas)
        started = self.clock.monotonic()
        rollout = "not_observable"
        if state.ready is not None:
            rollout = "complete"
            while state.ready is not None and state.ready < replicas:
                if progress is not None:
                    await progress(state.ready, replicas, f"{state.ready}/{replicas} replicas ready")
                if self.clock.monotonic() - started >= timeout_s:
                    rollout = "timed_out"
                    break
                await self.clock.sleep(ROLLOUT_POLL_S)
                state = await self.backend.read()
        if progress is not None:
            await progress(replicas, replicas, f"rollout {rollout}")
        if replicas != before.desired:
            up = replicas > before.desired
            self.bus.emit(
                EventType.SCALED_UP if up else EventType.SCALED_DOWN,
                component=self.name,
                severity=Severity.WARNING if forced else Severity.INFO,
                message=f"{trigger} scale {before.desired} -> {replicas} ({reason})",
                data={
                    "from": before.desired,
                    "to": replicas,
                    "reason": reason,
                    "trigger": trigger,
                    "forced": forced,
                    "backend": state.backend,
                    "rollout": rollout,
                },
            )
        return ScaleResult(
            requested=replicas,
            previous_desired=before.desired,
            state=state,
            reason=reason,
            forced=forced,
            dry_run=False,
            rollout=rollout,
            waited_s=round(self.clock.monotonic() - started, 3),
        )

    def details(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "policy": self.policy.name,
            "leader": self.leader(),
            "is_leader": self.is_leader(),
            "load_samples_replayed": self.samples_replayed,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_tpm_per_instance": self.target_tpm_per_instance,
            "last_load_tpm": self._last_load,
            "last_decision": self._last_decision,
        }
