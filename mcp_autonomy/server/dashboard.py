"""The live dashboard: one snapshot of everything an operator looks at, a page that shows it, and
the server-sent event stream that keeps the page current.

- `dashboard_snapshot(system)` composes the engine's own read calls (the ones behind
  `get_status`, `list_providers`, `get_events`, `get_predictions`, `get_incidents`,
  `get_optimizations` and the `autonomy://scaling` resource) into one `DashboardSnapshot`. It is
  served as `GET /autonomous/dashboard` (rest.py) and returned by the MCP tool `show_dashboard`,
  so the page and the MCP App render the same document.
- `GET /dashboard` serves the page: HTML, CSS and JavaScript from `static/`, all from this process
  (no CDN), under a Content-Security-Policy that allows nothing but this origin. The page itself
  holds no data and is served without the bearer token; every call it makes for data sends the
  token the operator typed (kept in the tab's sessionStorage) like any other API client.
- `GET /dashboard/stream` is a `text/event-stream` of the engine's events as they are published
  (`id` = the event id, so a reconnecting client names the last one it saw with `Last-Event-ID`
  and gets what it missed from the in-memory history), with a comment line every
  `HEARTBEAT_S` seconds so proxies keep the connection open. The page refreshes its snapshot when
  events arrive, at most once per second.
- `app_html()` is the same page as one self-contained document for the MCP App resource
  (`ui://mcp-autonomy/dashboard`): there the page talks to its host over postMessage and calls
  the MCP tools instead of the REST API.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from functools import cache
from importlib import resources
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from mcp_autonomy import __version__
from mcp_autonomy.autonomy.incidents import Incident
from mcp_autonomy.autonomy.optimizer import Optimization
from mcp_autonomy.autonomy.predictor import Prediction, PredictionWarmUp
from mcp_autonomy.autonomy.scaling.decision import capacity_tpm
from mcp_autonomy.autonomy.system import AutonomousSystem, ProviderStatus, StatusSummary
from mcp_autonomy.events import Event, EventType
from mcp_autonomy.timefmt import Timestamp

logger = logging.getLogger(__name__)

DASHBOARD_PATH = "/dashboard"
STREAM_PATH = f"{DASHBOARD_PATH}/stream"
ASSET_PATHS = {
    f"{DASHBOARD_PATH}/dashboard.js": "dashboard.js",
    f"{DASHBOARD_PATH}/dashboard.css": "dashboard.css",
}
PUBLIC_PATHS = frozenset({DASHBOARD_PATH, *ASSET_PATHS})
"""Served without the bearer token: the page and its code, no data."""
APP_URI = "ui://mcp-autonomy/dashboard"

HEARTBEAT_S = 15.0
"""A comment line this often on an idle stream (real time: it keeps sockets and proxies alive)."""
STREAM_BUFFER = 1000
"""Events buffered per stream while the client reads slowly; the oldest are dropped beyond it."""
SCALING_WINDOW_S = 6 * 3600.0
"""The scaling chart's span: the last six hours of measured load and replica changes."""
MAX_LOAD_POINTS = 360
EVENTS_SHOWN = 100
PREDICTIONS_SHOWN = 20
INCIDENTS_SHOWN = 10
OPTIMIZATIONS_SHOWN = 20
SCALING_EVENTS = [EventType.SCALED_UP, EventType.SCALED_DOWN]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class LoadPoint(BaseModel):
    """One measured load sample of this replica's scaler."""

    at: Timestamp = Field(description="When it was measured")
    tpm: float = Field(description="Transactions per minute measured then")


class ScalingView(BaseModel):
    """What the scaling chart draws: measured load, replica changes and the bounds."""

    state: dict[str, Any] | None = Field(
        description="Replica state as the backend reports it; null if unreadable"
    )
    min_replicas: int
    max_replicas: int
    target_tpm_per_instance: int = Field(
        description="Load one replica should carry (TARGET_TPM_PER_INSTANCE)"
    )
    capacity_tpm_per_instance: float = Field(
        description="Load one replica can carry: target / SCALE_UP_THRESHOLD (the capacity line)"
    )
    window_s: float
    load: list[LoadPoint] = Field(description="Measured load over the window, oldest first (downsampled)")
    changes: list[Event] = Field(description="scaled_up / scaled_down events over the window, oldest first")


class DashboardSnapshot(BaseModel):
    """Everything the dashboard shows, read from the engine at one moment."""

    version: str
    generated_at: Timestamp = Field(description="Engine clock")
    status: StatusSummary
    providers: list[ProviderStatus]
    backup_map: dict[str, list[str]] = Field(description="Route order after each provider: its backups")
    failed_over: dict[str, str] = Field(description="Providers whose traffic goes to a backup now")
    events: list[Event] = Field(description=f"The newest {EVENTS_SHOWN} stored events, newest first")
    scaling: ScalingView
    predictions: list[Prediction] = Field(description=f"The newest {PREDICTIONS_SHOWN} predictions")
    prediction_scores: dict[str, Any]
    prediction_warm_up: PredictionWarmUp = Field(
        description="Which series are learning their baseline until when, and why predictions may be absent"
    )
    incidents: list[Incident] = Field(description=f"The newest {INCIDENTS_SHOWN} incidents")
    incident_stats: dict[str, Any]
    optimizations: list[Optimization] = Field(description=f"The newest {OPTIMIZATIONS_SHOWN} optimizations")


def _downsample(samples: list[tuple[float, float]], limit: int) -> list[LoadPoint]:
    if len(samples) <= limit:
        return [LoadPoint(at=at, tpm=tpm) for at, tpm in samples]
    step = len(samples) / limit
    return [LoadPoint(at=samples[int(i * step)][0], tpm=samples[int(i * step)][1]) for i in range(limit)] + [
        LoadPoint(at=samples[-1][0], tpm=samples[-1][1])
    ]


async def dashboard_snapshot(system: AutonomousSystem) -> DashboardSnapshot:
    """Compose the dashboard's document from the engine's read calls."""
    now = system.clock.now()
    status = await system.get_status_summary()
    since = now - SCALING_WINDOW_S
    samples = system.store.load_samples(since=since) if system.store.is_open else []
    scaler = system.auto_scaler
    scaling = ScalingView(
        state=status.scaling.model_dump(mode="json") if status.scaling is not None else None,
        min_replicas=scaler.min_replicas,
        max_replicas=scaler.max_replicas,
        target_tpm_per_instance=system.settings.target_tpm_per_instance,
        capacity_tpm_per_instance=capacity_tpm(
            system.settings.target_tpm_per_instance, system.settings.scale_up_threshold
        ),
        window_s=SCALING_WINDOW_S,
        load=_downsample(samples, MAX_LOAD_POINTS),
        changes=system.query_events(types=SCALING_EVENTS, since=since, limit=500),
    )
    predictor = system.predictive_maintenance
    events = system.query_events(limit=EVENTS_SHOWN)
    events.reverse()
    return DashboardSnapshot(
        version=__version__,
        generated_at=now,
        status=status,
        providers=[system.provider_status(name) for name in system.providers.names()],
        backup_map=system.providers.backup_map(),
        failed_over=dict(system.router.failed_over),
        events=events,
        scaling=scaling,
        predictions=predictor.predictions(limit=PREDICTIONS_SHOWN),
        prediction_scores=predictor.scores(),
        prediction_warm_up=predictor.warm_up(),
        incidents=system.get_incidents(limit=INCIDENTS_SHOWN),
        incident_stats=system.incidents.stats(),
        optimizations=system.auto_optimizer.optimizations(limit=OPTIMIZATIONS_SHOWN),
    )


def dashboard_summary(snapshot: DashboardSnapshot) -> str:
    """The snapshot in a few lines of text, for MCP clients that do not render MCP Apps."""
    status = snapshot.status
    lines = [f"Overall {status.overall}: {status.overall_reason}."]
    for provider in snapshot.providers:
        route = " -> ".join([provider.name, *snapshot.backup_map.get(provider.name, [])])
        failed_over = snapshot.failed_over.get(provider.name)
        lines.append(
            f"- {provider.name}: {provider.health.status.value}, breaker {provider.lane.breaker_state.value}, "
            f"route {route}" + (f", traffic on {failed_over}" if failed_over else "")
        )
    if snapshot.scaling.state is not None:
        state = snapshot.scaling.state
        lines.append(
            f"Replicas: {state['desired']} desired, ready {state['ready']} "
            f"(bounds {snapshot.scaling.min_replicas}..{snapshot.scaling.max_replicas})."
        )
    open_incidents = [i.id for i in snapshot.incidents if i.status.value == "open"]
    active = [p for p in snapshot.predictions if p.status.value == "active"]
    lines.append(
        f"Open incidents: {len(open_incidents)}; active predictions: {len(active)}; "
        f"optimizations listed: {len(snapshot.optimizations)}; newest events: {len(snapshot.events)}."
    )
    lines.append(
        "The whole snapshot is in the structured content; MCP Apps hosts render it as the dashboard."
    )
    return "\n".join(lines)


# --- the page -----------------------------------------------------------------------------


@cache
def _asset(name: str) -> str:
    return resources.files("mcp_autonomy.server").joinpath("static", name).read_text(encoding="utf-8")


def page_html() -> str:
    """The page as served at /dashboard: its script and style are separate same-origin files."""
    return (
        _asset("dashboard.html")
        .replace("{{MODE}}", "http")
        .replace("<!--STYLE-->", f'<link rel="stylesheet" href="{DASHBOARD_PATH}/dashboard.css">')
        .replace("<!--SCRIPT-->", f'<script src="{DASHBOARD_PATH}/dashboard.js"></script>')
    )


@cache
def app_html() -> str:
    """The page as one document for the MCP App resource: style and script inlined."""
    script = _asset("dashboard.js").replace("</", "<\\/")
    return (
        _asset("dashboard.html")
        .replace("{{MODE}}", "app")
        .replace("<!--STYLE-->", f"<style>\n{_asset('dashboard.css')}</style>")
        .replace("<!--SCRIPT-->", f"<script>\n{script}</script>")
    )


def _format_event(event: Event) -> str:
    payload = event.model_dump_json()
    return f"id: {event.id}\nevent: engine\ndata: {payload}\n\n"


def dashboard_routes(system: AutonomousSystem, security: TransportSecuritySettings) -> list[BaseRoute]:
    """The page, its two assets and the event stream (behind the DNS-rebinding protection of /mcp)."""
    guard = TransportSecurityMiddleware(security)
    security_headers = {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }

    async def page(request: Request) -> Response:
        return Response(page_html(), media_type="text/html; charset=utf-8", headers=security_headers)

    async def asset(request: Request) -> Response:
        name = ASSET_PATHS[request.url.path]
        media = "text/javascript" if name.endswith(".js") else "text/css"
        return Response(_asset(name), media_type=f"{media}; charset=utf-8", headers=security_headers)

    async def stream(request: Request) -> Response:
        refused = await guard.validate_request(request, is_post=False)
        if refused is not None:
            return refused
        last_id = request.headers.get("last-event-id", "")
        subscription = system.events.subscribe(buffer_size=STREAM_BUFFER)

        async def body() -> AsyncIterator[str]:
            try:
                hello = {"run_id": system.run_id, "version": __version__, "heartbeat_s": HEARTBEAT_S}
                yield f"retry: 3000\nevent: hello\ndata: {json.dumps(hello)}\n\n"
                last_seq = 0
                run, _, seq = last_id.rpartition("-")
                if run == system.run_id and seq.isdigit():
                    # Reconnected within this run: what it missed, from the in-memory history.
                    last_seq = int(seq)
                    for event in system.events.history(limit=STREAM_BUFFER):
                        if event.seq > last_seq:
                            last_seq = event.seq
                            yield _format_event(event)
                while True:
                    # No yield inside the cancel scope: an async generator may not suspend in one.
                    next_event: Event | None = None
                    with anyio.move_on_after(HEARTBEAT_S):
                        next_event = await subscription.get()
                    if next_event is None:
                        yield ": keep-alive\n\n"
                    elif next_event.seq > last_seq:
                        yield _format_event(next_event)
            except anyio.EndOfStream:
                return
            finally:
                subscription.close()

        return StreamingResponse(
            body(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    routes: list[BaseRoute] = [
        Route(DASHBOARD_PATH, page, methods=["GET"]),
        Route(STREAM_PATH, stream, methods=["GET"]),
    ]
    routes.extend(Route(path, asset, methods=["GET"]) for path in ASSET_PATHS)
    return routes
