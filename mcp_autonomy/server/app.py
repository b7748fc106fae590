"""Assembles the engine and its MCP app from settings (providers, sandbox, backups)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.config import Settings
from mcp_autonomy.server.mcp import McpApp


@asynccontextmanager
async def build_system_and_app(settings: Settings) -> AsyncIterator[tuple[AutonomousSystem, McpApp]]:
    """The system with its providers registered, and the MCP app bound to it."""
    system = AutonomousSystem(settings)
    yield system, McpApp(system)
