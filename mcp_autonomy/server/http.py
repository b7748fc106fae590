"""The HTTP server: MCP over streamable HTTP at /mcp, plus /healthz, /readyz and /internal/load,
the REST API under /autonomous (rest.py), Prometheus /metrics (metrics.py) and the live dashboard
at /dashboard (dashboard.py).

One Starlette app, one lifespan: the engine's loops, the notifier and the SDK's session manager
start together and stop together. DNS-rebinding protection stays on; a bearer token, when
configured, is required on every route but the probes and the dashboard's page and code (which
hold no data), and is mandatory beyond loopback.
"""

from __future__ import annotations

import hmac
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_autonomy.autonomy.scaling.cluster_load import LOAD_PATH
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.config import Settings, SettingsError
from mcp_autonomy.server.dashboard import PUBLIC_PATHS as DASHBOARD_PUBLIC_PATHS
from mcp_autonomy.server.dashboard import dashboard_routes
from mcp_autonomy.server.mcp import McpApp
from mcp_autonomy.server.metrics import METRICS_PATH, metrics_route
from mcp_autonomy.server.rest import rest_mount
from mcp_autonomy.server.runtime import engine_running

UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/readyz"})
CALLBACK_PREFIX = "/callbacks/"
"""Provider callbacks carry no bearer token; their path holds an unguessable token instead."""


class BearerTokenMiddleware:
    """Requires `Authorization: Bearer <token>` on every path but the probes and `public_paths`."""

    def __init__(self, app: ASGIApp, token: str, public_paths: Iterable[str] = ()) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._exempt = UNAUTHENTICATED_PATHS | frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self._exempt or path.startswith(CALLBACK_PREFIX):
            await self.app(scope, receive, send)
            return
        supplied = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not hmac.compare_digest(supplied, self._expected):
            response = JSONResponse(
                {
                    "error": "unauthorized",
                    "detail": "send the configured bearer token: Authorization: Bearer <token>",
                },
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="mcp-autonomy"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def transport_security_for(settings: Settings) -> TransportSecuritySettings:
    """DNS-rebinding protection: only Host/Origin headers naming this server are accepted."""
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    if settings.listens_beyond_loopback:
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        hosts.append(f"{host}:*")
        origins.append(f"http://{host}:*")
        origins.append(f"https://{host}:*")
    for extra in settings.allowed_hosts:
        hosts.append(extra if ":" in extra else f"{extra}:*")
        origins.extend([f"http://{extra}", f"https://{extra}"])
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond loopback without a bearer token."""
    if settings.listens_beyond_loopback and settings.bearer_token is None:
        raise SettingsError(
            f"MCP_AUTONOMY_HOST={settings.host} listens beyond loopback: set MCP_AUTONOMY_BEARER_TOKEN "
            "(or listen on 127.0.0.1)"
        )


def create_http_app(
    system: AutonomousSystem, app: McpApp, *, extra_routes: list[BaseRoute] | None = None
) -> Starlette:
    """The ASGI app serving /mcp, /healthz and /readyz for `system`."""
    settings = system.settings
    check_exposure(settings)
    security = transport_security_for(settings)
    sdk_app = app.mcp.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=security,
        host=settings.host,
    )

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        if system.ready:
            return JSONResponse({"status": "ready", "run_id": system.run_id})
        return JSONResponse({"status": "starting"}, status_code=503)

    pod_name = settings.pod_name or socket.gethostname()

    async def internal_load(request: Request) -> Response:
        # This replica's own load: the scaling leader sums it over the ready pods (cluster_load.py).
        return JSONResponse(
            {
                "pod": pod_name,
                "transactions_per_minute": system.telemetry.transactions_per_minute(),
                "at": system.clock.now(),
            }
        )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with engine_running(system, app), app.mcp.session_manager.run():
            yield

    routes: list[BaseRoute] = [
        *sdk_app.routes,
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route(LOAD_PATH, internal_load, methods=["GET"]),
        rest_mount(system, security),
        metrics_route(system),
        *dashboard_routes(system, security),
        *(extra_routes or []),
    ]
    starlette = Starlette(routes=routes, lifespan=lifespan)
    if settings.bearer_token is not None:
        starlette.add_middleware(
            BearerTokenMiddleware,
            token=settings.bearer_token.get_secret_value(),
            public_paths=[*DASHBOARD_PUBLIC_PATHS, *([METRICS_PATH] if settings.metrics_public else [])],
        )
    return starlette
