"""What runs while the server is up: the engine's loops and the resource notifier."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.server.mcp import McpApp


@asynccontextmanager
async def engine_running(system: AutonomousSystem, app: McpApp) -> AsyncIterator[None]:
    """Run the four loops and the notifier for the duration of the block, then stop both."""
    async with system.running(), anyio.create_task_group() as tg:
        await tg.start(app.notifier.run)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()
