"""SelfHealer: probes every provider, and heals the ones that fail.

Each tick probes every registered provider (a cheap, side-effect-free call) and folds the result
into its health. A provider that turns unhealthy gets a healing sequence: re-initialise the
adapter (new HTTP client, fresh credentials), then probe again. Automatic attempts respect a
cooldown and a cap per window; past the cap the healer stops trying and says that a human is
needed. `heal()` runs the same sequence on demand (the `heal_provider` tool).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from anyio.lowlevel import checkpoint
from pydantic import BaseModel, Field

from mcp_autonomy.autonomy.component import Component
from mcp_autonomy.clock import Clock
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.providers.base import ProbeResult, ProviderError
from mcp_autonomy.providers.registry import ProviderEntry, ProviderRegistry
from mcp_autonomy.resilience.breaker import BreakerState
from mcp_autonomy.resilience.health import PASSIVE_WINDOW_S, HealthSnapshot, HealthStatus, HealthTransition
from mcp_autonomy.resilience.router import PaymentRouter
from mcp_autonomy.store import StateStore
from mcp_autonomy.timefmt import Timestamp

logger = logging.getLogger(__name__)

HEAL_COOLDOWN_S = 30.0
"""Minimum time between the first two automatic healing attempts on one provider; it doubles
after each further attempt in the window (exponential backoff), up to `MAX_HEAL_BACKOFF_S`."""
MAX_HEAL_BACKOFF_S = 900.0
"""The longest wait between two automatic healing attempts."""
HEAL_WINDOW_S = 3600.0
"""The window over which MAX_HEALING_ATTEMPTS automatic attempts are allowed."""
FAIL_BACK_HOLD_S = 60.0
"""A failed-over provider gets its traffic back only after staying healthy this long ..."""
MAX_FAIL_BACK_HOLD_S = 3600.0
"""... and a flapping one waits longer: the hold doubles each time the provider fails again within
`FLAP_WINDOW_S` of getting its traffic back, up to this cap (flap damping)."""
FLAP_WINDOW_S = 1800.0
"""A failure this soon after a fail-back counts as a flap; a provider that stays up this long
after a fail-back gets the base hold again."""

ProgressFn = Callable[[int, int, str], Awaitable[None]]


class HealStep(BaseModel):
    """One step of a healing sequence and its measured outcome."""

    name: str
    ok: bool | None = Field(description="null when the step was skipped (dry-run)")
    detail: str
    duration_ms: float | None = None


class HealResult(BaseModel):
    """What a healing sequence did and the provider's health afterwards."""

    provider: str
    trigger: str = Field(description="`manual` (tool call) or `automatic` (the healer's loop)")
    reason: str
    dry_run: bool
    succeeded: bool | None = Field(description="null in dry-run: nothing was carried out")
    steps: list[HealStep]
    health_before: HealthSnapshot
    health_after: HealthSnapshot
    started_at: Timestamp
    duration_ms: float


class SelfHealer(Component):
    """Keeps providers healthy: active probes, re-initialisation, recovery tracking."""

    name = "self_healer"

    def __init__(
        self,
        *,
        clock: Clock,
        bus: EventBus,
        store: StateStore,
        providers: ProviderRegistry,
        router: PaymentRouter,
        enabled: bool,
        interval_s: float,
        max_attempts: int,
    ) -> None:
        super().__init__(clock=clock, bus=bus, store=store, enabled=enabled, interval_s=interval_s)
        self.providers = providers
        self.router = router
        self.max_attempts = max_attempts
        self._attempts: dict[str, deque[float]] = {}
        self._given_up: set[str] = set()
        self._fail_back_hold_s: dict[str, float] = {}
        self._failed_back_at: dict[str, float] = {}
        self.fail_overs = 0
        self.fail_backs = 0
        self.holds_traffic: Callable[[str], bool] = lambda _provider: False
        """True while something else (a maintenance window) keeps a provider drained on purpose."""
        self.heals_total = 0
        self.heals_succeeded = 0

    # --- the loop -----------------------------------------------------------------------

    async def tick(self) -> None:
        for entry in self.providers.entries():
            # One provider per step: a payment arriving during the tick waits for one provider's
            # work at most, not every provider's (issue 18).
            await checkpoint()
            await self._observe(entry)
            if entry.health.status is HealthStatus.UNHEALTHY:
                await self._maybe_fail_over(entry)
                await self._maybe_auto_heal(entry)
            elif entry.health.status is HealthStatus.HEALTHY:
                self._given_up.discard(entry.name)
                await self._maybe_fail_back(entry)

    async def follower_tick(self) -> None:
        """Another replica leads healing: keep this replica's view of every provider's health
        measured (its own calls, its own probes), and act on nothing."""
        for entry in self.providers.entries():
            await checkpoint()
            await self._observe(entry)

    async def _observe(self, entry: ProviderEntry) -> None:
        """Fold this replica's passive evidence, breaker and a probe into the provider's health."""
        snapshot = self.router.telemetry.provider(entry.name).snapshot(PASSIVE_WINDOW_S)
        self._publish(
            entry, entry.health.record_passive(snapshot.requests, snapshot.error_rate, self.clock.now())
        )
        # Only an open period still running is evidence: a failed-over provider gets no calls,
        # so its breaker stays OPEN past `open_until` until a call tries it, and would
        # otherwise keep a recovered provider unhealthy. An operator's FORCED_OPEN is a
        # decision, not a measurement.
        breaker = self.router.lane(entry.name).breaker.snapshot()
        breaker_open = breaker.state is BreakerState.OPEN and (
            breaker.open_until is None or self.clock.now() < breaker.open_until
        )
        self._publish(entry, entry.health.record_breaker(breaker_open, self.clock.now()))
        await self.probe(entry)

    async def _maybe_fail_over(self, entry: ProviderEntry) -> None:
        if entry.name in self.router.failed_over or not entry.backups:
            return
        backup = next(
            (b for b in entry.backups if self.providers.get(b).health.status is not HealthStatus.UNHEALTHY),
            None,
        )
        if backup is None:
            return
        health = entry.health
        if health.breaker_status is HealthStatus.UNHEALTHY:
            reason = f"{entry.name} unhealthy: its breaker opened on failing real calls"
        elif health.passive_status is HealthStatus.UNHEALTHY:
            reason = (
                f"{entry.name} unhealthy: {health.passive_error_rate or 0:.0%} of "
                f"{health.passive_requests} real calls failed"
            )
        else:
            reason = f"{entry.name} unhealthy: {health.consecutive_failures} consecutive failed probes"
        now = self.clock.monotonic()
        hold = self.fail_back_hold_s(entry.name)
        failed_back_at = self._failed_back_at.get(entry.name)
        if failed_back_at is not None and now - failed_back_at < FLAP_WINDOW_S:
            hold = min(hold * 2, MAX_FAIL_BACK_HOLD_S)
            reason += f"; failed again {now - failed_back_at:.0f} s after getting its traffic back"
        reason += f"; fail-back after {hold:.0f} s healthy"
        if await self.act(
            f"fail {entry.name} over to {backup}",
            lambda: self._fail_over_now(entry.name, backup, reason),
        ):
            self._fail_back_hold_s[entry.name] = hold
            self.fail_overs += 1

    async def _fail_over_now(self, primary: str, backup: str, reason: str) -> bool:
        self.router.fail_over(primary, backup, reason=reason)
        return True

    def fail_back_hold_s(self, provider: str) -> float:
        """How long `provider` must stay healthy before it gets its traffic back (flap-damped)."""
        hold = self._fail_back_hold_s.get(provider, FAIL_BACK_HOLD_S)
        failed_back_at = self._failed_back_at.get(provider)
        if (
            provider not in self.router.failed_over
            and failed_back_at is not None
            and self.clock.monotonic() - failed_back_at >= FLAP_WINDOW_S
        ):
            hold = self._fail_back_hold_s[provider] = FAIL_BACK_HOLD_S  # stable again: forgiven
        return hold

    async def _maybe_fail_back(self, entry: ProviderEntry) -> None:
        if entry.name not in self.router.failed_over or entry.health.since is None:
            return
        if self.holds_traffic(entry.name):
            return
        healthy_for = self.clock.now() - entry.health.since
        hold = self.fail_back_hold_s(entry.name)
        if healthy_for < hold:
            return
        reason = f"{entry.name} healthy for {healthy_for:.0f} s (hold {hold:.0f} s)"
        if await self.act(
            f"fail {entry.name} back", lambda: self._async(self.router.fail_back, entry.name, reason=reason)
        ):
            self._failed_back_at[entry.name] = self.clock.monotonic()
            self.fail_backs += 1

    @staticmethod
    async def _async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    async def probe(self, entry: ProviderEntry) -> ProbeResult:
        """Probe one provider now and fold the result into its health (publishing transitions)."""
        started = self.clock.monotonic()
        try:
            result = await entry.adapter.probe()
        except ProviderError as exc:
            result = ProbeResult(
                ok=False,
                latency_ms=(self.clock.monotonic() - started) * 1000,
                detail=str(exc),
                error_class=exc.error_class,
            )
        except Exception as exc:  # an adapter bug must not stop the healer from seeing it
            result = ProbeResult(
                ok=False,
                latency_ms=(self.clock.monotonic() - started) * 1000,
                detail=f"{type(exc).__name__}: {exc}",
            )
        self._publish(entry, entry.health.record_probe(result, self.clock.now()), result.latency_ms)
        return result

    def _publish(
        self, entry: ProviderEntry, transition: HealthTransition | None, probe_ms: float | None = None
    ) -> None:
        if transition is not None:
            self.bus.emit(
                EventType.PROVIDER_HEALTH_CHANGED,
                component=self.name,
                provider=entry.name,
                severity=Severity.WARNING
                if transition.to_status in (HealthStatus.UNHEALTHY, HealthStatus.DEGRADED)
                else Severity.INFO,
                message=f"{entry.name}: {transition.from_status.value} -> {transition.to_status.value}",
                data={
                    "from": transition.from_status.value,
                    "to": transition.to_status.value,
                    "reason": transition.reason,
                    "probe_latency_ms": None if probe_ms is None else round(probe_ms, 3),
                },
            )

    async def _maybe_auto_heal(self, entry: ProviderEntry) -> None:
        now = self.clock.monotonic()
        attempts = self._attempts.setdefault(entry.name, deque())
        while attempts and now - attempts[0] > HEAL_WINDOW_S:
            attempts.popleft()
        if attempts and now - attempts[-1] < self.heal_backoff_s(len(attempts)):
            return
        if len(attempts) >= self.max_attempts:
            if entry.name not in self._given_up:
                self._given_up.add(entry.name)
                self.bus.emit(
                    EventType.HEALING_EVENT,
                    component=self.name,
                    provider=entry.name,
                    severity=Severity.CRITICAL,
                    message=(
                        f"{entry.name}: {len(attempts)} automatic healing attempts in "
                        f"{HEAL_WINDOW_S:.0f} s did not help; manual intervention required"
                    ),
                    data={"action": "manual_intervention_required", "attempts": len(attempts)},
                )
            return
        if not self.dry_run:
            attempts.append(now)
        await self.heal(entry.name, reason="provider unhealthy", trigger="automatic")

    @staticmethod
    def heal_backoff_s(attempts_in_window: int) -> float:
        """The wait after `attempts_in_window` automatic attempts: 30 s, 60 s, 120 s ... capped."""
        if attempts_in_window <= 0:
            return 0.0
        return float(min(HEAL_COOLDOWN_S * 2 ** (attempts_in_window - 1), MAX_HEAL_BACKOFF_S))

    # --- healing ------------------------------------------------------------------------

    async def heal(
        self,
        provider: str,
        *,
        reason: str,
        trigger: str = "manual",
        progress: ProgressFn | None = None,
        dry_run: bool | None = None,
    ) -> HealResult:
        """Run the healing sequence on `provider` now and report each step.

        Raises:
            UnknownProviderError: no such provider.
        """
        entry = self.providers.get(provider)
        is_dry_run = self.dry_run if dry_run is None else dry_run
        started_at = self.clock.now()
        started = self.clock.monotonic()
        before = entry.health.snapshot()
        was_unhealthy = before.status in (HealthStatus.UNHEALTHY, HealthStatus.DEGRADED)
        steps: list[HealStep] = []
        total_steps = 3

        async def report(done: int, message: str) -> None:
            if progress is not None:
                await progress(done, total_steps, message)

        if is_dry_run:
            steps.append(
                HealStep(name="reinitialize", ok=None, detail="dry-run: would re-initialise the adapter")
            )
            steps.append(HealStep(name="probe", ok=None, detail="dry-run: would probe the provider"))
            steps.append(
                HealStep(
                    name="breaker",
                    ok=None,
                    detail="dry-run: would let a trial call through if the probe passed",
                )
            )
            await report(total_steps, "dry-run: nothing carried out")
            succeeded: bool | None = None
        else:
            await report(0, f"re-initialising {provider}")
            steps.append(await self._reinitialize(entry))
            await report(1, f"probing {provider}")
            result = await self.probe(entry)
            steps.append(
                HealStep(
                    name="probe",
                    ok=result.ok,
                    detail=result.detail or ("ok" if result.ok else "failed"),
                    duration_ms=round(result.latency_ms, 3),
                )
            )
            await report(2, f"checking {provider}'s breaker")
            steps.append(self._release_breaker(provider, probe_ok=result.ok))
            succeeded = all(s.ok for s in steps)
            await report(total_steps, f"{provider} {'healed' if succeeded else 'still failing'}")
            self.heals_total += 1
            if succeeded:
                self.heals_succeeded += 1
            if trigger == "manual":
                self.count_action()
            else:
                self._actions_taken += 1

        after = entry.health.snapshot()
        heal_result = HealResult(
            provider=provider,
            trigger=trigger,
            reason=reason,
            dry_run=is_dry_run,
            succeeded=succeeded,
            steps=steps,
            health_before=before,
            health_after=after,
            started_at=started_at,
            duration_ms=round((self.clock.monotonic() - started) * 1000, 3),
        )
        self.bus.emit(
            EventType.HEALING_EVENT,
            component=self.name,
            provider=provider,
            dry_run=is_dry_run,
            severity=Severity.INFO if succeeded is not False else Severity.WARNING,
            message=(
                f"{provider}: {trigger} healing "
                + ("planned (dry-run)" if is_dry_run else "succeeded" if succeeded else "failed")
                + f" ({reason})"
            ),
            data={
                "action": "heal",
                "succeeded": succeeded,
                "trigger": trigger,
                "reason": reason,
                "steps": [s.model_dump() for s in steps],
                "health_before": before.status.value,
                "health_after": after.status.value,
            },
        )
        if succeeded and was_unhealthy and after.status is HealthStatus.HEALTHY:
            self.bus.emit(
                EventType.PROVIDER_RECOVERED,
                component=self.name,
                provider=provider,
                message=f"{provider} recovered after healing",
                data={
                    "downtime_s": None if before.since is None else round(self.clock.now() - before.since, 3)
                },
            )
        return heal_result

    def _release_breaker(self, provider: str, *, probe_ok: bool) -> HealStep:
        """After a good probe, let real traffic test the provider again (half-open, not closed)."""
        breaker = self.router.lane(provider).breaker
        state = breaker.state
        if state not in (BreakerState.OPEN, BreakerState.HALF_OPEN):
            return HealStep(name="breaker", ok=True, detail=f"breaker {state.value}: nothing to release")
        if not probe_ok:
            return HealStep(name="breaker", ok=False, detail=f"breaker stays {state.value}: the probe failed")
        moved = breaker.transition_to_half_open("healer probe succeeded")
        return HealStep(
            name="breaker",
            ok=True,
            detail="breaker half-open: the next real call is a trial" if moved else f"breaker {state.value}",
        )

    async def _reinitialize(self, entry: ProviderEntry) -> HealStep:
        started = self.clock.monotonic()
        try:
            await entry.adapter.initialize()
        except Exception as exc:  # reported as a failed step, the sequence goes on to the probe
            entry.last_init_error = f"{type(exc).__name__}: {exc}"
            return HealStep(
                name="reinitialize",
                ok=False,
                detail=entry.last_init_error,
                duration_ms=round((self.clock.monotonic() - started) * 1000, 3),
            )
        entry.initialized = True
        entry.last_init_error = None
        return HealStep(
            name="reinitialize",
            ok=True,
            detail="new HTTP client, fresh credentials",
            duration_ms=round((self.clock.monotonic() - started) * 1000, 3),
        )

    def details(self) -> dict[str, Any]:
        return {
            "providers_monitored": len(self.providers),
            "heals_total": self.heals_total,
            "heals_succeeded": self.heals_succeeded,
            "heal_success_rate": None if self.heals_total == 0 else self.heals_succeeded / self.heals_total,
            "manual_intervention_required": sorted(self._given_up),
            "max_attempts_per_window": self.max_attempts,
            "attempt_window_s": HEAL_WINDOW_S,
            "cooldown_s": HEAL_COOLDOWN_S,
            "max_backoff_s": MAX_HEAL_BACKOFF_S,
            "failed_over": self.router.failed_over,
            "fail_overs": self.fail_overs,
            "fail_backs": self.fail_backs,
            "fail_back_hold_s": {name: self.fail_back_hold_s(name) for name in self.providers.names()},
        }
