"""The HTTP server: MCP over streamable HTTP at /mcp, plus /healthz, /readyz and /internal/load,
the REST API under /autonomous (rest.py), Prometheus /metrics (metrics.py) and the live dashboard
at /dashboard (dashboard.py).

One Starlette app, one lifespan: the engine's loops, the notifier and the SDK's session manager
start together and stop together. DNS-rebinding protection (Host/Origin) guards every route but
the probes and the provider callbacks; a bearer token, when configured, is required on every
route but the probes and the dashboard's page and code (which hold no data), and is mandatory
beyond loopback. JSON-RPC requests whose id is not a string or an integer are answered -32600.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

from mcp.server.transport_security import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_autonomy.autonomy.scaling.cluster_load import LOAD_PATH
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.config import Settings, SettingsError
from mcp_autonomy.server.asgi_body import read_body
from mcp_autonomy.server.auth import build_auth, check_tokens_file
from mcp_autonomy.server.auth.guard import AuthGuard
from mcp_autonomy.server.dashboard import PUBLIC_PATHS as DASHBOARD_PUBLIC_PATHS
from mcp_autonomy.server.dashboard import dashboard_routes
from mcp_autonomy.server.mcp import McpApp
from mcp_autonomy.server.metrics import METRICS_PATH, metrics_route
from mcp_autonomy.server.rest import ApiError, ErrorDetail, rest_mount
from mcp_autonomy.server.runtime import engine_running

UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/readyz"})
CALLBACK_PREFIX = "/callbacks/"
"""Provider callbacks carry no bearer token; their path holds an unguessable token instead."""
MCP_PATH: Final = "/mcp"
PEER_PATHS: Final = frozenset({LOAD_PATH, METRICS_PATH})
"""Routes peers and scrapers reach by pod IP (EndpointSlice addresses): POD_IP is a valid Host there."""
JSONRPC_INVALID_REQUEST: Final = -32600
JSONRPC_BODY_LIMIT_BYTES: Final = DEFAULT_MAX_REQUEST_BODY_SIZE
"""Bodies inspected for bad ids at most; larger ones go to the SDK untouched (it answers 413)."""


class HostOriginGuard:
    """DNS-rebinding protection, as the SDK applies it on /mcp, on every route that returns data.

    The probes stay open (the kubelet calls them by IP) and so do provider callbacks (they arrive
    through an ingress under its public name, and their path holds an unguessable token). On
    `PEER_PATHS` the pod's own IP is accepted too. Refusals have the REST error shape.
    """

    def __init__(
        self, app: ASGIApp, security: TransportSecuritySettings, peer_security: TransportSecuritySettings
    ) -> None:
        self.app = app
        self._guard = TransportSecurityMiddleware(security)
        self._peer_guard = TransportSecurityMiddleware(peer_security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in UNAUTHENTICATED_PATHS or path.startswith(CALLBACK_PREFIX):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        guard = self._peer_guard if path in PEER_PATHS else self._guard
        refused = await guard.validate_request(request, is_post=False)
        if refused is None:
            await self.app(scope, receive, send)
            return
        header = "host" if refused.status_code == 421 else "origin"
        supplied = request.headers.get(header, "")[:200]
        response = ApiError(
            refused.status_code,
            ErrorDetail(
                field=header,
                message=f"{header} {supplied!r} is not one of this server's names (DNS-rebinding protection)",
                allowed="this server's address, or a name in MCP_AUTONOMY_ALLOWED_HOSTS",
            ),
        ).response()
        await response(scope, receive, send)


def _invalid_id(message: Any) -> str | None:
    """Why a JSON-RPC request's id is unusable (MCP: a string or an integer, never null), or None."""
    if not isinstance(message, dict) or "method" not in message or "id" not in message:
        return None
    request_id = message["id"]
    if isinstance(request_id, str) or (isinstance(request_id, int) and not isinstance(request_id, bool)):
        return None
    if isinstance(request_id, float) and math.isfinite(request_id) and request_id.is_integer():
        return None  # 1.0: the SDK reads it as 1
    if isinstance(request_id, float):
        kind = "NaN" if math.isnan(request_id) else "Infinity" if math.isinf(request_id) else "a fraction"
    else:
        kinds = {dict: "an object", list: "an array", bool: "a boolean", type(None): "null"}
        kind = kinds.get(type(request_id), type(request_id).__name__)
    return f"Invalid Request: id must be a string or an integer, got {kind}"


class JsonRpcIdCheck:
    """Answers -32600 (id null, HTTP 400) to a POST /mcp request whose id is an object, NaN, ...

    The SDK reads such a message as a notification and answers 202 with nothing, so the client
    waits for ever. Bodies up to `JSONRPC_BODY_LIMIT_BYTES` are read here and replayed to the SDK.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != MCP_PATH:
            await self.app(scope, receive, send)
            return
        read = await read_body(receive, JSONRPC_BODY_LIMIT_BYTES)
        buffered = read.messages
        if read.complete:
            body = read.body
            try:
                problem = _invalid_id(json.loads(body))
            except ValueError:
                problem = None  # not JSON: the SDK answers its parse error
            if problem is not None:
                error = {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": JSONRPC_INVALID_REQUEST, "message": problem},
                }
                await JSONResponse(error, status_code=400)(scope, receive, send)
                return

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def transport_security_for(settings: Settings, *, peer: bool = False) -> TransportSecuritySettings:
    """DNS-rebinding protection: only Host/Origin headers naming this server are accepted.

    The listen address is always one of them (an address literal cannot be a rebound name); with
    `peer`, so is `POD_IP`, for the routes other pods and scrapers reach by address.
    """
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    own = [settings.host] if settings.host not in ("127.0.0.1", "localhost", "::1") else []
    if peer and settings.pod_ip is not None:
        own.append(settings.pod_ip)
    for address in own:
        host = _bracketed(address)
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
    """Refuse to listen beyond loopback without any credential configured, or with a bad tokens file."""
    if settings.listens_beyond_loopback and not settings.auth_configured:
        raise SettingsError(
            f"MCP_AUTONOMY_HOST={settings.host} listens beyond loopback: set MCP_AUTONOMY_BEARER_TOKEN, "
            "MCP_AUTONOMY_TOKENS_FILE or MCP_AUTONOMY_AUTH_ISSUER (or listen on 127.0.0.1)"
        )
    check_tokens_file(settings)  # before anything starts: a bad file is an invalid setting


def create_http_app(
    system: AutonomousSystem, app: McpApp, *, extra_routes: list[BaseRoute] | None = None
) -> Starlette:
    """The ASGI app serving /mcp, /healthz and /readyz for `system`."""
    settings = system.settings
    check_exposure(settings)
    auth = build_auth(settings, system.clock)
    security = transport_security_for(settings)
    sdk_app = app.mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
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
        async with AsyncExitStack() as stack:
            if auth is not None:
                await stack.enter_async_context(auth.running())
            await stack.enter_async_context(engine_running(system, app))
            await stack.enter_async_context(app.mcp.session_manager.run())
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
        *(auth.routes if auth is not None else []),
    ]
    starlette = Starlette(routes=routes, lifespan=lifespan)
    # The last added runs first: Host/Origin, then the token, then the id check before /mcp.
    starlette.add_middleware(JsonRpcIdCheck)
    if auth is not None:
        public = {*DASHBOARD_PUBLIC_PATHS, *([METRICS_PATH] if settings.metrics_public else [])}
        starlette.add_middleware(
            AuthGuard,
            verifier=auth.verifier,
            config=auth.guard_config(
                public_paths=UNAUTHENTICATED_PATHS | frozenset(public),
                public_prefixes=(CALLBACK_PREFIX,),
                mcp_path=MCP_PATH,
            ),
            open_requests=auth.open_requests,
        )
        starlette.state.auth = auth
    starlette.add_middleware(
        HostOriginGuard, security=security, peer_security=transport_security_for(settings, peer=True)
    )
    return starlette
