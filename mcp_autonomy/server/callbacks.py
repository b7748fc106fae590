"""Provider callbacks: where asynchronous results (M-Pesa STK, B2C) arrive over HTTP.

Daraja delivers results by POSTing to the URLs the adapter sent with each request. The routes
live under `/callbacks/<token>/`: the random token (MCP_AUTONOMY_CALLBACK_TOKEN, or a fresh one
per process) keeps the path unguessable, since Daraja signs nothing; restrict the source
addresses at your ingress too. A callback updates the adapter's view and the payment record.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mcp_autonomy.autonomy.system import AutonomousSystem

logger = logging.getLogger(__name__)


def callback_routes(system: AutonomousSystem, prefix: str) -> list[BaseRoute]:
    """The callback routes for every registered adapter that ingests callbacks."""

    async def receive(request: Request) -> Response:
        provider = request.path_params["provider"]
        reference = request.path_params["reference"]
        if provider not in system.providers:
            return JSONResponse({"error": "unknown provider"}, status_code=404)
        adapter: Any = system.providers.get(provider).adapter
        ingest = getattr(adapter, "ingest_callback", None)
        if ingest is None:
            return JSONResponse({"error": f"{provider} takes no callbacks"}, status_code=404)
        try:
            body = await request.json()
            txn = ingest(body, reference=reference)
        except ValueError as exc:
            logger.warning("%s callback for %s rejected: %s", provider, reference, exc)
            return JSONResponse({"ResultCode": 1, "ResultDesc": "rejected"}, status_code=400)
        await system.apply_provider_result(provider, txn)
        # Daraja expects this acknowledgement shape.
        return JSONResponse({"ResultCode": 0, "ResultDesc": "Accepted"})

    return [Route(f"{prefix}/{{provider}}/{{kind}}/{{reference}}", receive, methods=["POST"])]
