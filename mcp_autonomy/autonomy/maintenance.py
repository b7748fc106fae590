"""Maintenance windows: planned at the quietest hour the provider's own traffic shows, then run.

When a critical prediction is confident enough (and `AUTO_SCHEDULE_MAINTENANCE` is on), the
predictor asks for a window. Where it goes is learned, not configured: `TrafficProfile` keeps the
measured requests per minute of every provider for each of the 168 hours of the week (UTC), and
the window starts at the hour boundary with the lowest expected traffic between now and the end
of the predicted trouble (at most a day ahead). Hours never observed are not guessed at; when no
hour in reach has been observed, the window takes the earliest slot and says so in its `basis`.

Running a window is a real, reversible action: at its start the provider is drained (failed
over to its first backup that is not unhealthy, when it has one) and healed (re-initialised and
probed); at its end the traffic goes back if the provider is not unhealthy. While a window is in
progress the healer does not fail the provider back on its own. Every step is an event and is
kept on the window's record in the store; an operator can cancel a window that has not ended
(cancelling one in progress gives the traffic back at once).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, Field

from mcp_autonomy.clock import Clock
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.resilience.health import HealthStatus
from mcp_autonomy.resilience.router import PaymentRouter
from mcp_autonomy.store import Fence, StateStore
from mcp_autonomy.timefmt import Timestamp, TimestampOrNone

logger = logging.getLogger(__name__)

HOURS_PER_WEEK: Final = 168
HOUR_S: Final = 3600.0
DEFAULT_WINDOW_DURATION_S: Final = 15 * 60.0
DEFAULT_MIN_LEAD_S: Final = 5 * 60.0
"""A window never starts sooner than this after it is scheduled: time for a human to object."""
MAX_SCHEDULE_AHEAD_S: Final = 24 * HOUR_S
MIN_OBSERVED_S_PER_HOUR: Final = 300.0
"""An hour of the week counts as known once this much of it has been observed."""
MAX_OBSERVED_S_PER_HOUR: Final = 4 * HOUR_S
"""Beyond four weeks of one hour-of-week, old observations are halved: the profile follows change."""


def hour_of_week(at: float) -> int:
    """0 = Monday 00:00-01:00 UTC ... 167 = Sunday 23:00-24:00 UTC."""
    moment = datetime.fromtimestamp(at, UTC)
    return moment.weekday() * 24 + moment.hour


class TrafficProfile:
    """Measured requests per minute of each provider for each hour of the week."""

    def __init__(self) -> None:
        self._requests: dict[str, list[float]] = {}
        self._observed_s: dict[str, list[float]] = {}

    def record(self, provider: str, at: float, requests: int, duration_s: float) -> None:
        """Add `requests` measured over the `duration_s` seconds that ended at `at`."""
        if duration_s <= 0 or requests < 0:
            return
        hour = hour_of_week(at - duration_s / 2)
        counts = self._requests.setdefault(provider, [0.0] * HOURS_PER_WEEK)
        observed = self._observed_s.setdefault(provider, [0.0] * HOURS_PER_WEEK)
        counts[hour] += requests
        observed[hour] += duration_s
        if observed[hour] > MAX_OBSERVED_S_PER_HOUR:
            counts[hour] /= 2
            observed[hour] /= 2

    def requests_per_min(self, provider: str, hour: int) -> float | None:
        """The measured rate for that hour of the week, or None if not observed enough."""
        observed = self._observed_s.get(provider)
        if observed is None or observed[hour] < MIN_OBSERVED_S_PER_HOUR:
            return None
        return self._requests[provider][hour] * 60.0 / observed[hour]

    def hours_known(self, provider: str) -> int:
        observed = self._observed_s.get(provider, [])
        return sum(1 for s in observed if s >= MIN_OBSERVED_S_PER_HOUR)

    def quietest_start(
        self, provider: str, *, earliest: float, latest: float, duration_s: float
    ) -> tuple[float, float | None, str]:
        """The start in [earliest, latest] with the lowest expected traffic over `duration_s`.

        Candidates are `earliest` and every hour boundary after it. Returns the start, the
        expected requests per minute (None when unknown) and a sentence saying why.
        """
        candidates = [earliest]
        boundary = (earliest // HOUR_S + 1) * HOUR_S
        while boundary <= latest:
            candidates.append(boundary)
            boundary += HOUR_S
        best: tuple[float, float] | None = None
        for start in candidates:
            expected = self._expected(provider, start, duration_s)
            if expected is not None and (best is None or expected < best[1]):
                best = (start, expected)
        known = self.hours_known(provider)
        if best is None:
            return (
                earliest,
                None,
                f"no traffic recorded for {provider} in the hours before the predicted trouble "
                f"({known} hours of the week known): earliest slot",
            )
        start, expected = best
        when = datetime.fromtimestamp(start, UTC).strftime("%a %H:%M UTC")
        return (
            start,
            expected,
            f"lowest measured traffic in reach: {expected:.1f} req/min expected from {when} "
            f"(profile of {known} hours of the week, from recorded traffic)",
        )

    def _expected(self, provider: str, start: float, duration_s: float) -> float | None:
        rates = []
        at = start
        while at < start + duration_s:
            rate = self.requests_per_min(provider, hour_of_week(at))
            if rate is None:
                return None
            rates.append(rate)
            at = (at // HOUR_S + 1) * HOUR_S
        return sum(rates) / len(rates) if rates else None

    def to_json(self) -> dict[str, Any]:
        return {"requests": self._requests, "observed_s": self._observed_s}

    @classmethod
    def from_json(cls, value: Any) -> TrafficProfile:
        profile = cls()
        if isinstance(value, dict):
            for name, counts in dict(value.get("requests") or {}).items():
                observed = (value.get("observed_s") or {}).get(name)
                if len(counts) == HOURS_PER_WEEK and observed is not None and len(observed) == HOURS_PER_WEEK:
                    profile._requests[name] = [float(c) for c in counts]
                    profile._observed_s[name] = [float(o) for o in observed]
        return profile


class MaintenanceStatus(StrEnum):
    """Where a window stands."""

    SCHEDULED = "scheduled"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES: Final = (MaintenanceStatus.SCHEDULED, MaintenanceStatus.IN_PROGRESS)


class MaintenanceStep(BaseModel):
    """One thing a window did (or, in dry-run, would have done)."""

    at: Timestamp
    action: str
    ok: bool | None
    detail: str


class MaintenanceWindow(BaseModel):
    """A planned drain-and-heal of one provider, with why it was planned when it was."""

    id: str
    provider: str
    prediction_id: str | None
    reason: str
    status: MaintenanceStatus = MaintenanceStatus.SCHEDULED
    dry_run: bool = False
    scheduled_at: Timestamp
    start_at: Timestamp
    end_at: Timestamp
    expected_requests_per_min: float | None = Field(description="Measured traffic of that hour, if known")
    basis: str = Field(description="Why this slot: the traffic figures it was chosen from")
    drained_to: str | None = None
    steps: list[MaintenanceStep] = Field(default_factory=list)
    finished_at: TimestampOrNone = None
    cancelled_reason: str | None = None


HealFn = Callable[[str, str], Awaitable[bool | None]]
"""heal(provider, reason) -> succeeded (None in dry-run)."""


class MaintenanceScheduler:
    """Plans, runs and cancels maintenance windows (owned by the predictive-maintenance loop)."""

    def __init__(
        self,
        *,
        clock: Clock,
        bus: EventBus,
        store: StateStore,
        providers: ProviderRegistry | None,
        router: PaymentRouter | None,
        traffic: TrafficProfile,
        duration_s: float = DEFAULT_WINDOW_DURATION_S,
        min_lead_s: float = DEFAULT_MIN_LEAD_S,
    ) -> None:
        self.clock = clock
        self.bus = bus
        self.store = store
        self.providers = providers
        self.router = router
        self.traffic = traffic
        self.duration_s = duration_s
        self.min_lead_s = min_lead_s
        self.heal: HealFn | None = None
        self.write_fence: Callable[[], Fence | None] = lambda: None
        """The fence of the predictor's leadership for writes made by its loop (set by it)."""
        self._windows: dict[str, MaintenanceWindow] = {}

    def load(self) -> None:
        """Take back the windows a previous run left scheduled or in progress."""
        self._windows = {}
        for raw in self.store.list_records(
            "maintenance_windows", statuses=[s.value for s in ACTIVE_STATUSES], limit=10_000
        ):
            window = MaintenanceWindow.model_validate_json(raw)
            self._windows[window.id] = window

    # --- queries ------------------------------------------------------------------------

    def active_for(self, provider: str) -> MaintenanceWindow | None:
        return next(
            (w for w in self._windows.values() if w.provider == provider and w.status in ACTIVE_STATUSES),
            None,
        )

    def in_progress(self, provider: str) -> bool:
        """True while a window of `provider` runs (the healer then leaves its traffic alone)."""
        window = self.active_for(provider)
        return window is not None and window.status is MaintenanceStatus.IN_PROGRESS

    def windows(
        self, *, provider: str | None = None, status: MaintenanceStatus | None = None, limit: int = 100
    ) -> list[MaintenanceWindow]:
        """Windows from the store (all runs), soonest start last."""
        raws = self.store.list_records(
            "maintenance_windows",
            provider=provider,
            statuses=[] if status is None else [status.value],
            limit=limit,
        )
        return [MaintenanceWindow.model_validate_json(r) for r in raws]

    def get(self, window_id: str) -> MaintenanceWindow | None:
        found = self._windows.get(window_id)
        if found is not None:
            return found
        raw = self.store.get_record("maintenance_windows", window_id)
        return None if raw is None else MaintenanceWindow.model_validate_json(raw)

    # --- planning -----------------------------------------------------------------------

    def schedule(
        self,
        provider: str,
        *,
        reason: str,
        trouble_expected_by: float,
        prediction_id: str | None = None,
        dry_run: bool = False,
    ) -> MaintenanceWindow | None:
        """Plan a window for `provider` before `trouble_expected_by` if possible; None if one is
        already scheduled or running for it."""
        if self.active_for(provider) is not None:
            return None
        now = self.clock.now()
        earliest = now + self.min_lead_s
        latest = min(max(earliest, trouble_expected_by - self.duration_s), now + MAX_SCHEDULE_AHEAD_S)
        start, expected, basis = self.traffic.quietest_start(
            provider, earliest=earliest, latest=latest, duration_s=self.duration_s
        )
        window = MaintenanceWindow(
            id=f"mw-{provider}-{round(now * 1000)}",
            provider=provider,
            prediction_id=prediction_id,
            reason=reason,
            dry_run=dry_run,
            scheduled_at=now,
            start_at=start,
            end_at=start + self.duration_s,
            expected_requests_per_min=None if expected is None else round(expected, 3),
            basis=basis,
        )
        self._windows[window.id] = window
        self._save(window)
        starts = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.bus.emit(
            EventType.MAINTENANCE_SCHEDULED,
            component="predictive_maintenance",
            provider=provider,
            dry_run=dry_run,
            severity=Severity.WARNING,
            message=f"{provider}: maintenance window {window.id} at {starts} for "
            f"{self.duration_s / 60:.0f} min ({reason}); {basis}",
            data=window.model_dump(mode="json"),
        )
        return window

    def cancel(self, window_id: str, *, reason: str) -> MaintenanceWindow:
        """Cancel a window that has not ended; an in-progress one gives the traffic back now.

        Raises:
            KeyError: no such window.
            ValueError: the window has already ended (completed or cancelled).
        """
        window = self.get(window_id)
        if window is None:
            raise KeyError(window_id)
        if window.status not in ACTIVE_STATUSES:
            raise ValueError(f"window {window_id} is already {window.status.value}")
        if window.status is MaintenanceStatus.IN_PROGRESS:
            self._give_traffic_back(window, why="window cancelled")
        window.status = MaintenanceStatus.CANCELLED
        window.cancelled_reason = reason
        window.finished_at = self.clock.now()
        self._finish(window, EventType.MAINTENANCE_CANCELLED, f"cancelled ({reason})")
        return window

    # --- running ------------------------------------------------------------------------

    async def run_due(self) -> None:
        """Start the windows whose time has come and complete the ones whose time is up."""
        now = self.clock.now()
        for window in list(self._windows.values()):
            if window.status is MaintenanceStatus.SCHEDULED and now >= window.start_at:
                await self._start(window)
            if window.status is MaintenanceStatus.IN_PROGRESS and now >= window.end_at:
                self._complete(window)

    async def _start(self, window: MaintenanceWindow) -> None:
        window.status = MaintenanceStatus.IN_PROGRESS
        provider = window.provider
        if window.dry_run:
            self._step(
                window, "drain", None, "dry-run: would fail the provider over to its first healthy backup"
            )
            self._step(window, "heal", None, "dry-run: would re-initialise and probe the provider")
        else:
            self._drain(window)
            if self.heal is not None:
                try:
                    healed = await self.heal(provider, f"maintenance window {window.id}")
                    self._step(window, "heal", healed, "healed" if healed else "healing did not succeed")
                except Exception as exc:  # reported on the window; the window still ends on time
                    self._step(window, "heal", False, f"{type(exc).__name__}: {exc}")
        self._save(window)
        self.bus.emit(
            EventType.MAINTENANCE_STARTED,
            component="predictive_maintenance",
            provider=provider,
            dry_run=window.dry_run,
            message=f"{provider}: maintenance window {window.id} started: "
            + "; ".join(s.detail for s in window.steps),
            data=window.model_dump(mode="json"),
        )

    def _drain(self, window: MaintenanceWindow) -> None:
        provider = window.provider
        if self.router is None or self.providers is None:
            return
        if provider in self.router.failed_over:
            self._step(window, "drain", True, f"already failed over to {self.router.failed_over[provider]}")
            return
        entry = self.providers.get(provider)
        backup = next(
            (b for b in entry.backups if self.providers.get(b).health.status is not HealthStatus.UNHEALTHY),
            None,
        )
        if backup is None:
            self._step(window, "drain", False, "no healthy backup: traffic stays on the provider")
            return
        self.router.fail_over(provider, backup, reason=f"maintenance window {window.id}")
        window.drained_to = backup
        self._step(window, "drain", True, f"traffic moved to {backup}")

    def _complete(self, window: MaintenanceWindow) -> None:
        if not window.dry_run:
            self._give_traffic_back(window, why="window ended")
        window.status = MaintenanceStatus.COMPLETED
        window.finished_at = self.clock.now()
        self._finish(window, EventType.MAINTENANCE_COMPLETED, "completed")

    def _give_traffic_back(self, window: MaintenanceWindow, *, why: str) -> None:
        provider = window.provider
        if self.router is None or self.providers is None or window.drained_to is None:
            return
        if self.router.failed_over.get(provider) != window.drained_to:
            self._step(window, "restore", None, "traffic already moved by someone else: left as it is")
            return
        if self.providers.get(provider).health.status is HealthStatus.UNHEALTHY:
            self._step(
                window, "restore", False, f"{why}, but {provider} is unhealthy: the healer keeps it drained"
            )
            return
        self.router.fail_back(provider, reason=f"maintenance window {window.id} {why}")
        self._step(window, "restore", True, f"traffic back on {provider}")

    def _finish(self, window: MaintenanceWindow, kind: EventType, outcome: str) -> None:
        self._save(window)
        self._windows.pop(window.id, None)
        self.bus.emit(
            kind,
            component="predictive_maintenance",
            provider=window.provider,
            dry_run=window.dry_run,
            message=f"{window.provider}: maintenance window {window.id} {outcome}",
            data=window.model_dump(mode="json"),
        )

    def _step(self, window: MaintenanceWindow, action: str, ok: bool | None, detail: str) -> None:
        window.steps.append(MaintenanceStep(at=self.clock.now(), action=action, ok=ok, detail=detail))

    def _save(self, window: MaintenanceWindow) -> None:
        if self.store.is_open:
            self.store.put_record(
                "maintenance_windows",
                id=window.id,
                provider=window.provider,
                status=window.status.value,
                at=window.start_at,
                record=window.model_dump_json(),
                fence=self.write_fence(),
            )
