"""Resource-updated notifications for both protocol generations.

The engine's events say what changed; `RESOURCES_FOR_EVENT` maps each event to the resource
URIs whose content it changes. A listener on the event bus marks those URIs dirty and the
notifier task sends one notification per dirty URI:

- 2026-07-28 clients listen with `subscriptions/listen`: the notifier publishes a
  `ResourceUpdated` on the SDK's subscription bus, which filters by each stream's URIs;
- 2025-11-25 clients call `resources/subscribe`: the notifier remembers each subscribing
  connection and sends `notifications/resources/updated` on its standalone channel, dropping a
  connection once sending to it fails or it closes.

Figures that move continuously (uptime, tick counters) do not trigger notifications; events do.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from anyio.abc import TaskStatus
from mcp.server.session import ServerSession
from mcp.server.subscriptions import ResourceUpdated, SubscriptionBus

from mcp_autonomy.events import Event, EventBus, EventType

logger = logging.getLogger(__name__)

STATUS = "autonomy://status"
STATS = "autonomy://stats"
PROVIDERS = "autonomy://providers"
PREDICTIONS = "autonomy://predictions"
OPTIMIZATIONS = "autonomy://optimizations"
EVENTS_RECENT = "autonomy://events/recent"
SCALING = "autonomy://scaling"
INCIDENTS = "autonomy://incidents"
MAINTENANCE = "autonomy://maintenance"


def provider_uri(name: str) -> str:
    return f"autonomy://providers/{name}"


_PROVIDER_EVENTS = {
    EventType.HEALING_EVENT,
    EventType.PROVIDER_RECOVERED,
    EventType.FAILOVER_TRIGGERED,
    EventType.PROVIDER_REGISTERED,
    EventType.PROVIDER_HEALTH_CHANGED,
    EventType.BREAKER_STATE_CHANGED,
}
_SCALING_EVENTS = {EventType.SCALED_UP, EventType.SCALED_DOWN, EventType.SCALING_DECISION}
_PREDICTION_EVENTS = {EventType.PREDICTION, EventType.PREDICTION_OUTCOME, EventType.MAINTENANCE_SCHEDULED}
_INCIDENT_EVENTS = {EventType.INCIDENT_OPENED, EventType.INCIDENT_RESOLVED}
_MAINTENANCE_EVENTS = {
    EventType.MAINTENANCE_SCHEDULED,
    EventType.MAINTENANCE_STARTED,
    EventType.MAINTENANCE_COMPLETED,
    EventType.MAINTENANCE_CANCELLED,
}


def resources_for_event(event: Event) -> set[str]:
    """The resource URIs whose content `event` changes."""
    uris = {STATUS, STATS, EVENTS_RECENT}
    if event.type in _PROVIDER_EVENTS:
        uris.add(PROVIDERS)
        if event.provider:
            uris.add(provider_uri(event.provider))
    if event.type in _SCALING_EVENTS:
        uris.add(SCALING)
    if event.type in _PREDICTION_EVENTS:
        uris.add(PREDICTIONS)
    if event.type in _INCIDENT_EVENTS:
        uris.add(INCIDENTS)
    if event.type in _MAINTENANCE_EVENTS:
        uris.add(MAINTENANCE)
    if event.type is EventType.OPTIMIZATION_APPLIED:
        uris.add(OPTIMIZATIONS)
    return uris


class ResourceNotifier:
    """Tracks legacy subscriptions and pushes resource-updated notifications."""

    def __init__(self, bus: EventBus, subscriptions: SubscriptionBus) -> None:
        self._bus = bus
        self._listen_bus = subscriptions
        self._dirty: set[str] = set()
        self._wakeup = anyio.Event()
        # uri -> connection key -> the session to notify through (legacy resources/subscribe)
        self._legacy: dict[str, dict[int, ServerSession]] = {}
        self.sent = 0
        self.pruned = 0

    def subscribe_legacy(self, uri: str, session: ServerSession, connection_key: int) -> None:
        self._legacy.setdefault(uri, {})[connection_key] = session

    def unsubscribe_legacy(self, uri: str, connection_key: int) -> None:
        sessions = self._legacy.get(uri)
        if sessions is not None:
            sessions.pop(connection_key, None)
            if not sessions:
                del self._legacy[uri]

    def forget_connection(self, connection_key: int) -> None:
        for uri in list(self._legacy):
            self.unsubscribe_legacy(uri, connection_key)

    @property
    def legacy_subscription_count(self) -> int:
        return sum(len(s) for s in self._legacy.values())

    def _on_event(self, event: Event) -> None:
        self._dirty |= resources_for_event(event)
        self._wakeup.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Send notifications for dirty resources until cancelled."""
        remove = self._bus.add_listener(self._on_event)
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = anyio.Event()
                dirty, self._dirty = self._dirty, set()
                for uri in sorted(dirty):
                    await self._notify(uri)
        finally:
            remove()

    async def _notify(self, uri: str) -> None:
        await self._listen_bus.publish(ResourceUpdated(uri=uri))
        for key, session in list(self._legacy.get(uri, {}).items()):
            try:
                with anyio.fail_after(5):
                    await session.send_resource_updated(uri)
                self.sent += 1
            except Exception as exc:  # a dead session is pruned, the others still get theirs
                logger.info("dropping resource subscription of a closed session: %s", exc)
                self.pruned += 1
                self.forget_connection(key)

    def details(self) -> dict[str, Any]:
        return {
            "legacy_subscriptions": self.legacy_subscription_count,
            "sent": self.sent,
            "pruned": self.pruned,
        }
