"""Provider callbacks: where asynchronous results and webhooks arrive over HTTP.

Providers POST (MoMo may PUT) to the URLs the adapters sent or the merchant configured on the
provider's dashboard. The routes live under `/callbacks/<token>/<provider>/<kind>[/<reference>]`:
the token (MCP_AUTONOMY_CALLBACK_TOKEN, or one generated once and kept in the state directory so
URLs sent before a restart still work) keeps the path unguessable, since M-Pesa, MoMo and Airtel
sign nothing; restrict the source addresses at your ingress too. The route hands the raw body
and headers to the engine's callback inbox (`AutonomousSystem.receive_callback`), which stores
it before answering and changes a payment only once a fresh status pull confirms it.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mcp_autonomy.autonomy.callback_inbox import MAX_BODY_BYTES
from mcp_autonomy.autonomy.system import AutonomousSystem

logger = logging.getLogger(__name__)


async def _read_capped(request: Request) -> bytes | None:
    """The body, or None once it passes `MAX_BODY_BYTES` (read no further)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def callback_routes(system: AutonomousSystem, prefix: str) -> list[BaseRoute]:
    """The callback routes (every registered adapter that parses callbacks answers on them)."""

    async def receive(request: Request) -> Response:
        provider = request.path_params["provider"]
        kind = request.path_params["kind"]
        reference = request.path_params.get("reference")
        body = await _read_capped(request)
        if body is None:
            return JSONResponse({"error": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        receipt = await system.receive_callback(provider, kind, reference, body, request.headers)
        if receipt.http_status >= 400:
            return JSONResponse({"error": receipt.detail}, status_code=receipt.http_status)
        # Daraja expects this acknowledgement shape; the other providers only read the status.
        return JSONResponse({"ResultCode": 0, "ResultDesc": "Accepted", "state": receipt.state})

    return [
        Route(f"{prefix}/{{provider}}/{{kind}}/{{reference}}", receive, methods=["POST", "PUT"]),
        Route(f"{prefix}/{{provider}}/{{kind}}", receive, methods=["POST", "PUT"]),
    ]
