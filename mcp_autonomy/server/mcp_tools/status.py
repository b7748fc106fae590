"""Status tools: the system at a glance, statistics, the event log, and the kill switch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp_types import ToolAnnotations
from pydantic import Field

from mcp_autonomy.autonomy.component import Mode
from mcp_autonomy.autonomy.system import StatusSummary, SystemStats
from mcp_autonomy.events import EventType
from mcp_autonomy.server.mcp_tools.models import READ_ONLY, AutonomyChange, EventList, Reason
from mcp_autonomy.server.mcp_tools.tool import ToolSet, client_of

__all__ = ["register"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_s(moment: datetime) -> float:
    """`moment` in epoch seconds; a time without an offset is taken as UTC (the examples say Z).

    Computed as a difference of aware datetimes, which holds for every year 1..9999 (where
    `datetime.timestamp()` of a naive 0001-01-01 fails in the local-time conversion).
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH).total_seconds()


def register(tools: ToolSet) -> None:
    """Register get_status, get_stats, get_events and set_autonomy."""
    system = tools.system

    @tools.tool(
        title="Get system status",
        description=(
            "The system at a glance: overall health (healthy | degraded | critical | unknown, with the "
            "reason), each provider's measured health, breaker state and 5-minute error rate and p95 latency, "
            "each autonomy loop's mode (on | off | dry_run) and last tick, and the replica state. Call this "
            "first when investigating anything; list_providers and the autonomy://status resource have the "
            "full detail. Null figures are not measured yet."
        ),
        annotations=READ_ONLY,
    )
    async def get_status() -> StatusSummary:
        return await system.get_status_summary()

    @tools.tool(
        title="Get statistics",
        description=(
            "Counters and scores: events by type (from the store, spanning restarts), manual actions, "
            "healing success rate, scaling decisions, prediction precision/recall (from judged "
            "predictions only), optimization outcomes."
        ),
        annotations=READ_ONLY,
    )
    async def get_stats() -> SystemStats:
        return await system.get_stats()

    @tools.tool(
        title="Get events",
        description=(
            "Events from the store (they survive restarts), oldest first: every decision of the loops "
            "with its measured inputs in `data`, every manual action, health and breaker changes. "
            "Filter by provider, event type and a start time (ISO 8601, e.g. 2026-11-28T10:00:00Z)."
        ),
        annotations=READ_ONLY,
    )
    async def get_events(
        provider: Annotated[str | None, Field(description="Only events about this provider")] = None,
        type: Annotated[EventType | None, Field(description="Only this event type")] = None,
        since: Annotated[datetime | None, Field(description="Only events at or after this time")] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="The newest this many")] = 100,
    ) -> EventList:
        events = system.query_events(
            provider=provider,
            types=[type] if type is not None else None,
            since=epoch_s(since) if since is not None else None,
            limit=limit,
        )
        return EventList(events=events, count=len(events))

    @tools.tool(
        title="Set autonomy mode (kill switch)",
        description=(
            "Turn one autonomy loop (self_healer, auto_scaler, predictive_maintenance, auto_optimizer) "
            "or all of them on, off, or to dry_run (decide and report, act on nothing). Takes effect "
            "at once, survives restarts until changed again, and is audited."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def set_autonomy(
        component: Annotated[
            Literal["self_healer", "auto_scaler", "predictive_maintenance", "auto_optimizer", "all"],
            Field(description="Which loop, or all"),
        ],
        mode: Annotated[Mode, Field(description="on | off | dry_run")],
        reason: Reason,
        ctx: Context,
    ) -> AutonomyChange:
        change = system.set_autonomy(component, mode, reason=reason, caller=client_of(ctx))
        return AutonomyChange(
            component=component,
            previous_mode=change.previous,
            mode=change.mode,
            reason=reason,
            audit_id=change.audit_id,
        )
