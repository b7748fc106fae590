"""Incidents: first-class records of every outage, what was done about it and how long it took.

An incident opens the moment the engine *detects* trouble with a provider: its health turns
`unhealthy` or its breaker opens. A system-wide incident opens when more than half of the
providers are unhealthy at once. The tracker listens to the event bus, so it sees the router's
breaker transitions and the healer's health transitions without either knowing about it.

Every incident carries three measured times, which are what on-call engineers are judged on:

- **time to detect**: from the first evidence (the first failed probe of the current run, or
  the first failed real call since the last success, whichever came first) to the opening;
- **time to mitigate**: from the opening to the first action that protected payments (a
  fail-over, or a healing that succeeded);
- **time to recover**: from the opening to the provider being healthy again with its breaker
  no longer open.

Actions taken while it is open (healings, fail-overs, fail-backs, manual tool calls, maintenance)
are appended with their outcome. Incidents live in the SQLite store, so open ones survive a
restart (they resolve when the provider is seen healthy again) and the statistics (healing
success rate, mean times) span runs. Observers (the predictor, which scores its predictions
against incidents) are called when an incident opens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, Field

from mcp_autonomy.autonomy.component import SOLE_LEADER, LoopLeader
from mcp_autonomy.clock import Clock
from mcp_autonomy.events import Event, EventBus, EventType, Severity
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.resilience.breaker import BreakerState
from mcp_autonomy.resilience.health import HealthStatus
from mcp_autonomy.resilience.router import PaymentRouter
from mcp_autonomy.store import LeadershipLost, StateStore
from mcp_autonomy.telemetry import Telemetry
from mcp_autonomy.timefmt import Timestamp, TimestampOrNone

logger = logging.getLogger(__name__)

COMPONENT: Final = "incidents"
SYSTEM_KEY: Final = "*system*"
"""The key of the system-wide incident among the open ones (no provider has this name)."""
STATS_LIMIT: Final = 10_000
"""Statistics are computed over at most this many most recent incidents."""
_ACTION_EVENTS: Final = frozenset(
    {
        EventType.HEALING_EVENT,
        EventType.FAILOVER_TRIGGERED,
        EventType.PROVIDER_RECOVERED,
        EventType.MANUAL_ACTION,
        EventType.MAINTENANCE_STARTED,
        EventType.MAINTENANCE_COMPLETED,
    }
)


class IncidentScope(StrEnum):
    """One provider, or the whole system (more than half of the providers down)."""

    PROVIDER = "provider"
    SYSTEM = "system"


class IncidentStatus(StrEnum):
    """Open until recovery is observed."""

    OPEN = "open"
    RESOLVED = "resolved"


class IncidentAction(BaseModel):
    """Something done while the incident was open, and how it went."""

    at: Timestamp
    component: str
    action: str
    detail: str
    ok: bool | None = Field(description="null when the outcome is not known (or in dry-run)")
    dry_run: bool = False
    event_id: str | None = None


class Incident(BaseModel):
    """An outage from detection to recovery, with its measured times and the actions taken."""

    id: str
    scope: IncidentScope
    provider: str | None
    status: IncidentStatus = IncidentStatus.OPEN
    severity: str = Field(description="`critical` for critical providers and system-wide incidents")
    trigger: str = Field(description="What detected it (health or breaker transition and why)")
    first_evidence_at: Timestamp
    opened_at: Timestamp
    mitigated_at: TimestampOrNone = None
    resolved_at: TimestampOrNone = None
    resolution: str | None = None
    time_to_detect_s: float
    time_to_mitigate_s: float | None = None
    time_to_recover_s: float | None = None
    actions: list[IncidentAction] = Field(default_factory=list)
    predicted_by: list[str] = Field(
        default_factory=list, description="ids of predictions raised before it opened and confirmed by it"
    )
    run_id: str | None = None


IncidentObserver = Callable[[Incident], None]


class IncidentTracker:
    """Opens, annotates and resolves incidents from the engine's own events.

    `attach()` subscribes it to the bus (synchronously: every transition is seen in order);
    `load()` reloads the incidents still open from the store after a restart.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        bus: EventBus,
        store: StateStore,
        providers: ProviderRegistry,
        router: PaymentRouter,
        telemetry: Telemetry,
        run_id: str | None = None,
    ) -> None:
        self.clock = clock
        self.bus = bus
        self.store = store
        self.providers = providers
        self.router = router
        self.telemetry = telemetry
        self.run_id = run_id
        self._open: dict[str, Incident] = {}
        self.leadership: LoopLeader = SOLE_LEADER
        """Across replicas only the healer's leader tracks incidents (set by the system)."""
        self._observers: list[IncidentObserver] = []
        self._detach: Callable[[], None] | None = None
        self._seq = 0

    # --- lifecycle ----------------------------------------------------------------------

    def attach(self) -> None:
        if self._detach is None:
            self._detach = self.bus.add_listener(self._on_event)

    def detach(self) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None

    def load(self) -> None:
        """Take back the incidents left open (by a previous run, or by the previous leader)."""
        self._open = {}
        for raw in self.store.list_records("incidents", statuses=[IncidentStatus.OPEN.value]):
            incident = Incident.model_validate_json(raw)
            key = SYSTEM_KEY if incident.scope is IncidentScope.SYSTEM else incident.provider or SYSTEM_KEY
            self._open[key] = incident

    def add_observer(self, observer: IncidentObserver) -> None:
        """Call `observer(incident)` whenever an incident opens (it must not raise)."""
        self._observers.append(observer)

    # --- queries ------------------------------------------------------------------------

    def open_incidents(self) -> list[Incident]:
        """Incidents open now, oldest first."""
        return sorted(self._open.values(), key=lambda i: i.opened_at)

    def open_for(self, provider: str) -> Incident | None:
        return self._open.get(provider)

    def get(self, incident_id: str) -> Incident | None:
        raw = self.store.get_record("incidents", incident_id)
        return None if raw is None else Incident.model_validate_json(raw)

    def incidents(
        self,
        *,
        provider: str | None = None,
        status: IncidentStatus | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[Incident]:
        """Incidents from the store (all runs), newest first."""
        raws = self.store.list_records(
            "incidents",
            provider=provider,
            statuses=[] if status is None else [status.value],
            since=since,
            limit=limit,
        )
        return [Incident.model_validate_json(r) for r in reversed(raws)]

    def stats(self) -> dict[str, Any]:
        """Counts and mean times over the stored incidents; null where nothing was measured."""
        incidents = [
            Incident.model_validate_json(r) for r in self.store.list_records("incidents", limit=STATS_LIMIT)
        ]
        resolved = [i for i in incidents if i.time_to_recover_s is not None]
        mitigated = [i for i in incidents if i.time_to_mitigate_s is not None]
        heals = [
            a
            for i in incidents
            for a in i.actions
            if a.action == "heal" and not a.dry_run and a.ok is not None
        ]
        return {
            "incidents_total": len(incidents),
            "open": sum(1 for i in incidents if i.status is IncidentStatus.OPEN),
            "system_wide": sum(1 for i in incidents if i.scope is IncidentScope.SYSTEM),
            "mean_time_to_detect_s": _mean([i.time_to_detect_s for i in incidents]),
            "mean_time_to_mitigate_s": _mean([i.time_to_mitigate_s for i in mitigated]),
            "mean_time_to_recover_s": _mean([i.time_to_recover_s for i in resolved]),
            "healings_in_incidents": len(heals),
            "healing_success_rate": None if not heals else sum(1 for a in heals if a.ok) / len(heals),
        }

    # --- the listener -------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if event.component == COMPONENT or not self.leadership.is_leader:
            return
        try:
            self._handle(event)
        except LeadershipLost as exc:  # a stale leader: nothing written; the new leader tracks
            logger.warning("incident tracking stepped down: %s", exc)
            self.leadership.step_down(str(exc))
        except Exception:  # a listener must never break the publisher
            logger.exception("incident tracking failed on %s", event.type)

    def _handle(self, event: Event) -> None:
        kind = event.type
        provider = event.provider
        if kind is EventType.PROVIDER_HEALTH_CHANGED and provider is not None:
            to = event.data.get("to")
            if to == HealthStatus.UNHEALTHY.value:
                self._open_provider(provider, f"health unhealthy: {event.data.get('reason')}", event)
            elif to == HealthStatus.HEALTHY.value:
                self._maybe_resolve(provider, event)
            self._check_system(event)
        elif kind is EventType.BREAKER_STATE_CHANGED and provider is not None:
            to = event.data.get("to")
            if to == BreakerState.OPEN.value:
                self._open_provider(provider, f"breaker opened: {event.data.get('reason')}", event)
            elif to in (BreakerState.HALF_OPEN.value, BreakerState.CLOSED.value):
                self._maybe_resolve(provider, event)
        elif kind in _ACTION_EVENTS:
            self._annotate(event)

    # --- opening, annotating, resolving -------------------------------------------------

    def _new_id(self, at: float, key: str) -> str:
        self._seq += 1
        run = f"{self.run_id[:8]}-" if self.run_id else ""
        return f"inc-{run}{round(at * 1000)}-{key.strip('*')}-{self._seq}"

    def _first_evidence(self, provider: str, opened_at: float) -> float:
        candidates = [opened_at]
        health = self.providers.get(provider).health if provider in self.providers else None
        if health is not None and health.failing_since is not None:
            candidates.append(health.failing_since)
        failing = self.telemetry.provider(provider).failing_since()
        if failing is not None:
            candidates.append(failing)
        return min(candidates)

    def _open_provider(self, provider: str, trigger: str, event: Event) -> None:
        if provider in self._open:
            return
        opened_at = event.timestamp
        first = self._first_evidence(provider, opened_at)
        critical = provider in self.providers and self.providers.get(provider).critical
        incident = Incident(
            id=self._new_id(opened_at, provider),
            scope=IncidentScope.PROVIDER,
            provider=provider,
            severity="critical" if critical else "major",
            trigger=trigger,
            first_evidence_at=first,
            opened_at=opened_at,
            time_to_detect_s=round(opened_at - first, 3),
            run_id=self.run_id,
        )
        self._open[provider] = incident
        self._save(incident)
        self.bus.emit(
            EventType.INCIDENT_OPENED,
            component=COMPONENT,
            provider=provider,
            severity=Severity.CRITICAL if critical else Severity.WARNING,
            message=f"incident {incident.id} opened: {provider} ({trigger}); "
            f"detected {incident.time_to_detect_s:.1f} s after the first failure",
            data=incident.model_dump(mode="json"),
        )
        self._notify(incident)

    def _check_system(self, event: Event) -> None:
        total = len(self.providers)
        unhealthy = [e.name for e in self.providers.entries() if e.health.status is HealthStatus.UNHEALTHY]
        critical_now = total > 0 and len(unhealthy) * 2 > total
        current = self._open.get(SYSTEM_KEY)
        if critical_now and current is None:
            at = event.timestamp
            first = min(
                (i.first_evidence_at for i in self._open.values() if i.provider in unhealthy), default=at
            )
            incident = Incident(
                id=self._new_id(at, "system"),
                scope=IncidentScope.SYSTEM,
                provider=None,
                severity="critical",
                trigger=f"{len(unhealthy)} of {total} providers unhealthy: {', '.join(unhealthy)}",
                first_evidence_at=first,
                opened_at=at,
                time_to_detect_s=round(at - first, 3),
                run_id=self.run_id,
            )
            self._open[SYSTEM_KEY] = incident
            self._save(incident)
            self.bus.emit(
                EventType.INCIDENT_OPENED,
                component=COMPONENT,
                severity=Severity.CRITICAL,
                message=f"system critical: {incident.trigger}",
                data=incident.model_dump(mode="json"),
            )
            self._notify(incident)
        elif not critical_now and current is not None:
            self._resolve(
                SYSTEM_KEY, current, event.timestamp, f"{len(unhealthy)} of {total} providers unhealthy"
            )

    def _recovered(self, provider: str) -> bool:
        if provider not in self.providers:
            return True
        healthy = self.providers.get(provider).health.status is HealthStatus.HEALTHY
        return healthy and self.router.lane(provider).breaker.state is not BreakerState.OPEN

    def _maybe_resolve(self, provider: str, event: Event) -> None:
        incident = self._open.get(provider)
        if incident is None or not self._recovered(provider):
            return
        self._resolve(provider, incident, event.timestamp, f"{event.type.value}: {event.message}")

    def _resolve(self, key: str, incident: Incident, at: float, resolution: str) -> None:
        del self._open[key]
        incident.status = IncidentStatus.RESOLVED
        incident.resolved_at = at
        incident.resolution = resolution
        incident.time_to_recover_s = round(at - incident.opened_at, 3)
        self._save(incident)
        self.bus.emit(
            EventType.INCIDENT_RESOLVED,
            component=COMPONENT,
            provider=incident.provider,
            message=f"incident {incident.id} resolved after {incident.time_to_recover_s:.1f} s ({resolution})",
            data=incident.model_dump(mode="json"),
        )

    def _annotate(self, event: Event) -> None:
        provider = event.provider
        targets = [i for key, i in self._open.items() if key in (provider, SYSTEM_KEY)]
        if not targets:
            return
        action, ok = _action_of(event)
        for incident in targets:
            incident.actions.append(
                IncidentAction(
                    at=event.timestamp,
                    component=event.component,
                    action=action,
                    detail=event.message,
                    ok=ok,
                    dry_run=event.dry_run,
                    event_id=event.id,
                )
            )
            protects = action == "fail_over" or (action == "heal" and ok is True)
            if protects and not event.dry_run and incident.mitigated_at is None:
                incident.mitigated_at = event.timestamp
                incident.time_to_mitigate_s = round(event.timestamp - incident.opened_at, 3)
            self._save(incident)

    def link_prediction(self, incident: Incident, prediction_id: str) -> None:
        """Record that `prediction_id` foresaw this incident (called by the predictor)."""
        if prediction_id not in incident.predicted_by and self.leadership.is_leader:
            incident.predicted_by.append(prediction_id)
            try:
                self._save(incident)
            except LeadershipLost as exc:  # the healer's leader (elsewhere now) owns the incident
                logger.warning("prediction %s not linked to %s: %s", prediction_id, incident.id, exc)

    # --- plumbing -----------------------------------------------------------------------

    def _save(self, incident: Incident) -> None:
        if not self.store.is_open:
            return
        self.store.put_record(
            "incidents",
            id=incident.id,
            provider=incident.provider,
            status=incident.status.value,
            at=incident.opened_at,
            record=incident.model_dump_json(),
            fence=self.leadership.fence(),
        )

    def _notify(self, incident: Incident) -> None:
        for observer in self._observers:
            try:
                observer(incident)
            except Exception:  # one observer's bug must not hide the incident from the others
                logger.exception("incident observer failed")


def _action_of(event: Event) -> tuple[str, bool | None]:
    """A short action name and its outcome, from the event that reported it."""
    data = event.data
    if event.type is EventType.FAILOVER_TRIGGERED:
        return "fail_over", True
    if event.type is EventType.PROVIDER_RECOVERED:
        return str(data.get("action") or "recovered"), True
    if event.type is EventType.MANUAL_ACTION:
        return f"manual:{data.get('tool')}", bool(data.get("ok"))
    if event.type is EventType.HEALING_EVENT:
        action = str(data.get("action") or "heal")
        succeeded = data.get("succeeded")
        return action, succeeded if isinstance(succeeded, bool) else None
    return event.type.value, None


def _mean(values: list[float | None]) -> float | None:
    measured = [v for v in values if v is not None]
    return None if not measured else round(sum(measured) / len(measured), 3)
