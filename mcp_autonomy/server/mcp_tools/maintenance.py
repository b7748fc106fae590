"""Predictive-maintenance tools: predictions and their verdicts, maintenance windows."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp_types import ToolAnnotations
from pydantic import Field

from mcp_autonomy.autonomy.maintenance import MaintenanceStatus, MaintenanceWindow
from mcp_autonomy.autonomy.predictor import Prediction, PredictionStatus
from mcp_autonomy.server.mcp_tools.errors import EngineErrors
from mcp_autonomy.server.mcp_tools.models import READ_ONLY, MaintenanceWindowList, PredictionList, Reason
from mcp_autonomy.server.mcp_tools.tool import ToolSet, check_provider, client_of

__all__ = ["register"]


def register(tools: ToolSet) -> None:
    """Register get_predictions, mark_prediction, get_maintenance_windows, cancel_maintenance_window."""
    system = tools.system
    predictive = system.predictive_maintenance

    @tools.tool(
        title="Get predictions",
        description=(
            "Predicted failures and degradations per provider (type, severity, confidence in [0, 1], "
            "expected window, the indicators with their values and thresholds, recommended action, "
            "and the later verdict), newest first, plus the predictor's precision and recall."
        ),
        annotations=READ_ONLY,
    )
    async def get_predictions(
        provider: Annotated[str | None, Field(description="Only this provider")] = None,
        min_confidence: Annotated[float, Field(ge=0.0, le=1.0, description="Minimum confidence")] = 0.0,
        status: Annotated[PredictionStatus | None, Field(description="Only this verdict")] = None,
    ) -> PredictionList:
        check_provider(system, provider)
        return PredictionList(
            predictions=predictive.predictions(
                provider=provider, min_confidence=min_confidence, status=status
            ),
            scores=predictive.scores(),
            warm_up=predictive.warm_up(),
        )

    @tools.tool(
        title="Judge a prediction",
        description=(
            "Record an operator's verdict on a prediction (ids from get_predictions): confirmed (the "
            "predicted trouble happened), false_positive (it did not) or resolved (it was acted on "
            "before it happened). Overrides the engine's own verdict; precision and recall in get_stats "
            "are recomputed from it. Audited."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
        errors=EngineErrors(field="id", unknown="no prediction {value} (see get_predictions for the ids)"),
    )
    async def mark_prediction(
        id: Annotated[str, Field(min_length=1, max_length=200, description="The prediction's id")],
        verdict: Annotated[
            Literal["confirmed", "false_positive", "resolved"], Field(description="Your verdict")
        ],
        reason: Reason,
        ctx: Context,
    ) -> Prediction:
        return system.mark_prediction(id, PredictionStatus(verdict), reason=reason, caller=client_of(ctx))

    @tools.tool(
        title="Get maintenance windows",
        description=(
            "Maintenance windows planned from confident critical predictions (AUTO_SCHEDULE_MAINTENANCE): "
            "provider, the prediction behind it, start and end (epoch seconds), the measured traffic it "
            "was placed by (`basis`, `expected_requests_per_min`), status (scheduled | in_progress | "
            "completed | cancelled) and each step run (drain to backup, heal, restore). Latest first."
        ),
        annotations=READ_ONLY,
    )
    async def get_maintenance_windows(
        provider: Annotated[str | None, Field(description="Only this provider")] = None,
        status: Annotated[MaintenanceStatus | None, Field(description="Only this status")] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="At most this many")] = 50,
    ) -> MaintenanceWindowList:
        check_provider(system, provider)
        return MaintenanceWindowList(
            windows=system.get_maintenance_windows(provider=provider, status=status, limit=limit)
        )

    @tools.tool(
        title="Cancel a maintenance window",
        description=(
            "Cancel a scheduled or in-progress maintenance window (ids from get_maintenance_windows). A "
            "window in progress gives the provider its traffic back at once (unless it is unhealthy, "
            "then the healer keeps it drained). Audited."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
        errors=EngineErrors(
            field="id",
            unknown="no maintenance window {value} (see get_maintenance_windows)",
            refused_hint="; only scheduled or in_progress windows can be cancelled",
        ),
    )
    async def cancel_maintenance_window(
        id: Annotated[str, Field(min_length=1, max_length=200, description="The window's id")],
        reason: Reason,
        ctx: Context,
    ) -> MaintenanceWindow:
        return system.cancel_maintenance_window(id, reason=reason, caller=client_of(ctx))
