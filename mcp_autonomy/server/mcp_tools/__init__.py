"""The MCP tools by concern (status, providers, scaling, maintenance, optimization, payments,
sandbox), the resources, and the wrapper every tool call runs through (`tool.AutonomyTool`)."""

from __future__ import annotations

from mcp_autonomy.server.mcp_tools.errors import EngineErrors, describe_validation_error, engine_error_message
from mcp_autonomy.server.mcp_tools.tool import AutonomyTool, ToolSet

__all__ = ["AutonomyTool", "EngineErrors", "ToolSet", "describe_validation_error", "engine_error_message"]
