"""The MCP resources: status, statistics, providers, predictions, incidents, maintenance,
optimizations, recent events and scaling, each a JSON document read from the engine."""

from __future__ import annotations

import json
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from pydantic import BaseModel

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.events import EventType
from mcp_autonomy.providers.registry import UnknownProviderError
from mcp_autonomy.server import notifier as uris
from mcp_autonomy.server.mcp_tools.models import (
    EventList,
    IncidentList,
    MaintenanceWindowList,
    OptimizationList,
    PredictionList,
)

__all__ = ["register"]


def register(mcp: MCPServer, system: AutonomousSystem) -> None:
    """Register every resource of `system` on `mcp`."""
    json_type = "application/json"

    def dump(model: BaseModel | list[Any] | dict[str, Any]) -> str:
        if isinstance(model, BaseModel):
            return model.model_dump_json(indent=2)
        return json.dumps(model, indent=2, default=str)

    @mcp.resource(
        uris.STATUS,
        name="status",
        description="Full system status: get_status plus every measured detail",
        mime_type=json_type,
    )
    async def status_resource() -> str:
        return dump(await system.get_status())

    @mcp.resource(uris.STATS, name="stats", description="Statistics (as get_stats)", mime_type=json_type)
    async def stats_resource() -> str:
        return dump(await system.get_stats())

    @mcp.resource(
        uris.PROVIDERS,
        name="providers",
        description="Every provider's health and backups",
        mime_type=json_type,
    )
    async def providers_resource() -> str:
        return dump([system.provider_status(n).model_dump(mode="json") for n in system.providers.names()])

    @mcp.resource(
        "autonomy://providers/{name}",
        name="provider",
        description="One provider's health, backups and capabilities",
        mime_type=json_type,
    )
    async def provider_resource(name: str) -> str:
        try:
            return dump(system.provider_status(name))
        except UnknownProviderError as exc:
            raise ResourceNotFoundError(str(exc)) from None

    @mcp.resource(
        uris.PREDICTIONS,
        name="predictions",
        description="Active and judged predictions",
        mime_type=json_type,
    )
    async def predictions_resource() -> str:
        p = system.predictive_maintenance
        return dump(PredictionList(predictions=p.predictions(), scores=p.scores(), warm_up=p.warm_up()))

    @mcp.resource(
        uris.INCIDENTS,
        name="incidents",
        description="The 50 newest incidents with their measured times, and the incident statistics",
        mime_type=json_type,
    )
    async def incidents_resource() -> str:
        return dump(IncidentList(incidents=system.get_incidents(limit=50), stats=system.incidents.stats()))

    @mcp.resource(
        uris.MAINTENANCE,
        name="maintenance",
        description="Maintenance windows: scheduled, running and past",
        mime_type=json_type,
    )
    async def maintenance_resource() -> str:
        return dump(MaintenanceWindowList(windows=system.get_maintenance_windows(limit=50)))

    @mcp.resource(
        uris.OPTIMIZATIONS, name="optimizations", description="Optimization history", mime_type=json_type
    )
    async def optimizations_resource() -> str:
        return dump(OptimizationList(optimizations=system.auto_optimizer.optimizations()))

    @mcp.resource(
        uris.EVENTS_RECENT, name="recent-events", description="The 100 newest events", mime_type=json_type
    )
    async def events_resource() -> str:
        events = system.query_events(limit=100)
        return dump(EventList(events=events, count=len(events)))

    @mcp.resource(
        uris.SCALING,
        name="scaling",
        description="Replica state, scaler decisions and history",
        mime_type=json_type,
    )
    async def scaling_resource() -> str:
        state = await system.auto_scaler.backend.read()
        history = system.query_events(
            types=[EventType.SCALED_UP, EventType.SCALED_DOWN, EventType.SCALING_DECISION], limit=50
        )
        return dump(
            {
                "state": state.model_dump(mode="json"),
                "scaler": system.auto_scaler.status().model_dump(mode="json"),
                "history": [e.model_dump(mode="json") for e in history],
            }
        )
