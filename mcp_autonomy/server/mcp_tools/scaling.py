"""The scaling tool: an operator's replica count, within the scaler's bounds unless forced."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from mcp_types import ToolAnnotations
from pydantic import Field

from mcp_autonomy.autonomy.scaler import ScaleResult
from mcp_autonomy.config import MAX_REPLICAS_LIMIT
from mcp_autonomy.server.mcp_tools.models import Reason
from mcp_autonomy.server.mcp_tools.tool import ToolSet, client_of, progress

__all__ = ["register"]


def register(tools: ToolSet) -> None:
    """Register scale_to."""
    system = tools.system

    @tools.tool(
        title="Scale to a replica count",
        description=(
            "Set this server's replica count now (operator override of the auto-scaler) and wait for "
            "the rollout, with progress notifications. `replicas` must be within MIN_INSTANCES.."
            "MAX_INSTANCES (see get_stats -> scaling: min_replicas, max_replicas) unless force=true; "
            f"never above {MAX_REPLICAS_LIMIT}. With the local backend the count is recorded and "
            "nothing outside the process changes (the result says so). Concurrent calls run one at a "
            "time. Audited."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True
        ),
    )
    async def scale_to(
        replicas: Annotated[int, Field(ge=0, le=MAX_REPLICAS_LIMIT, description="Desired replica count")],
        reason: Reason,
        ctx: Context,
        force: Annotated[
            bool, Field(description="Allow a count outside MIN_INSTANCES..MAX_INSTANCES")
        ] = False,
    ) -> ScaleResult:
        return await system.scale_to(
            replicas,
            reason=reason,
            force=force,
            caller=client_of(ctx),
            progress=lambda d, t, m: progress(ctx, d, t, m),
        )
