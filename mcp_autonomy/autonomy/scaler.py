"""AutoScaler: keeps the replica count in step with the measured load.

Each tick reads the measured cluster load (transactions per minute) and, when there is one,
proposes `ceil(load / TARGET_TPM_PER_INSTANCE)` replicas clamped to MIN..MAX, ignoring changes
inside a tolerance band and holding scale-downs for a stabilisation window (the Kubernetes HPA's
own safeguards). With no load measured there is no decision: nothing is invented.
`scale_to()` is the operator's override (the `scale_to` tool); calls are serialised.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from pydantic import BaseModel, Field

from mcp_autonomy.autonomy.component import Component
from mcp_autonomy.autonomy.scaling.base import ReplicaState, ScaleBackend
from mcp_autonomy.clock import Clock
from mcp_autonomy.config import MAX_REPLICAS_LIMIT
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.store import Store

TOLERANCE = 0.1
"""Ratio band around 1.0 inside which no scaling happens (the HPA's default)."""
SCALE_DOWN_STABILIZATION_S = 300.0
"""A scale-down uses the highest recommendation of this many past seconds (the HPA's default)."""
ROLLOUT_POLL_S = 1.0
DEFAULT_ROLLOUT_TIMEOUT_S = 120.0

LoadSource = Callable[[], float | None]
ProgressFn = Callable[[int, int, str], Awaitable[None]]


class ScaleBoundsError(ValueError):
    """A requested replica count outside the allowed bounds."""


class ScaleResult(BaseModel):
    """The outcome of one scaling request."""

    requested: int
    previous_desired: int
    state: ReplicaState
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
        store: Store,
        backend: ScaleBackend,
        load_source: LoadSource,
        enabled: bool,
        interval_s: float,
        min_replicas: int,
        max_replicas: int,
        target_tpm_per_instance: int,
    ) -> None:
        super().__init__(clock=clock, bus=bus, store=store, enabled=enabled, interval_s=interval_s)
        self.backend = backend
        self.load_source = load_source
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.target_tpm_per_instance = target_tpm_per_instance
        self._lock = anyio.Lock()
        self._recommendations: deque[tuple[float, int]] = deque()
        self._last_load: float | None = None
        self._last_decision: dict[str, Any] | None = None

    async def tick(self) -> None:
        load = self.load_source()
        self._last_load = load
        if load is None:
            self._last_decision = {
                "at": self.clock.now(),
                "decision": "none",
                "reason": "no load measured yet",
            }
            return
        state = await self.backend.read()
        current = state.desired
        recommendation = self.recommend(load, current)
        now = self.clock.monotonic()
        self._recommendations.append((now, recommendation))
        while self._recommendations and now - self._recommendations[0][0] > SCALE_DOWN_STABILIZATION_S:
            self._recommendations.popleft()
        desired = recommendation
        if recommendation < current:
            # Scale down only to the highest recommendation of the stabilisation window.
            desired = max(r for _, r in self._recommendations)
        inputs = {
            "load_tpm": round(load, 3),
            "target_tpm_per_instance": self.target_tpm_per_instance,
            "current_desired": current,
            "recommendation": recommendation,
            "stabilised_desired": desired,
        }
        self._last_decision = {"at": self.clock.now(), **inputs}
        if desired == current:
            self._last_decision["decision"] = "hold"
            return
        reason = (
            f"load {load:.1f} tpm / target {self.target_tpm_per_instance} tpm per instance "
            f"-> {recommendation} (stabilised {desired})"
        )
        self._last_decision["decision"] = f"scale {current} -> {desired}"
        self.bus.emit(
            EventType.SCALING_DECISION,
            component=self.name,
            dry_run=self.dry_run,
            message=f"decided {current} -> {desired} replicas: {reason}",
            data=inputs,
        )
        await self.act(f"scale to {desired}", lambda: self._apply(desired, reason, "automatic", forced=False))

    def recommend(self, load_tpm: float, current: int) -> int:
        """The HPA-style recommendation for `load_tpm`, clamped to MIN..MAX."""
        if current > 0:
            ratio = load_tpm / (current * self.target_tpm_per_instance)
            if abs(ratio - 1.0) <= TOLERANCE:
                return max(self.min_replicas, min(self.max_replicas, current))
        wanted = math.ceil(load_tpm / self.target_tpm_per_instance)
        return max(self.min_replicas, min(self.max_replicas, wanted))

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
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_tpm_per_instance": self.target_tpm_per_instance,
            "last_load_tpm": self._last_load,
            "last_decision": self._last_decision,
        }
