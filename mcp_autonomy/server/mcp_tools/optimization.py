"""Optimization tools: the tuning history, a provider's tunables, overrides and reverts."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from mcp_types import ToolAnnotations
from pydantic import Field

from mcp_autonomy.autonomy.optimizer import Optimization, ProviderConfig
from mcp_autonomy.server.mcp_tools.errors import EngineErrors
from mcp_autonomy.server.mcp_tools.models import READ_ONLY, OptimizationList, ProviderName, Reason
from mcp_autonomy.server.mcp_tools.tool import ToolSet, check_provider, client_of

__all__ = ["register"]


def register(tools: ToolSet) -> None:
    """Register get_optimizations, get_provider_config, set_provider_config, revert_optimization."""
    system = tools.system

    @tools.tool(
        title="Get optimizations",
        description=(
            "History of tuning changes (timeouts, retries, rate limits, breaker thresholds) newest first: "
            "old and new value, why (the measured figures), how it was tried (mode: canary on a share of "
            "payments, switchback alternating whole intervals, or before_after), both arms' figures, the "
            "statistical verdict with p-values, and whether it was kept or reverted."
        ),
        annotations=READ_ONLY,
    )
    async def get_optimizations(
        provider: Annotated[str | None, Field(description="Only this provider")] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="At most this many")] = 50,
    ) -> OptimizationList:
        check_provider(system, provider)
        return OptimizationList(
            optimizations=system.auto_optimizer.optimizations(provider=provider, limit=limit)
        )

    @tools.tool(
        title="Get a provider's tunables",
        description=(
            "One provider's tunables now (timeout_s, max_attempts, base_delay_s, max_delay_s, "
            "rate_limit_per_s, rate_limit_burst, retry_budget_ratio, status_cache_ttl_s, "
            "breaker_failure_rate, breaker_wait_s), their documented defaults, the allowed range of each, the values "
            "an operator pinned, and the optimizer's experiment in flight if any."
        ),
        annotations=READ_ONLY,
    )
    async def get_provider_config(provider: ProviderName) -> ProviderConfig:
        check_provider(system, provider)
        return system.get_provider_config(provider)

    @tools.tool(
        title="Set a provider's tunables",
        description=(
            'Override tunables of one provider now, e.g. {"timeout_s": 20}. Each value must be within '
            "the range get_provider_config lists. With pin=true (default) the optimizer never changes "
            'those parameters until released with release=[names] (or release=["*"] for all); an '
            "experiment on a parameter you set is ended. Audited."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
        errors=EngineErrors(field="provider"),
    )
    async def set_provider_config(
        provider: ProviderName,
        reason: Reason,
        ctx: Context,
        values: Annotated[
            dict[str, float], Field(description="parameter -> new value (empty to only release)")
        ]
        | None = None,
        pin: Annotated[bool, Field(description="Keep the optimizer off these parameters")] = True,
        release: Annotated[
            list[str] | None,
            Field(description="Pinned parameters to hand back to the optimizer; * = all"),
        ] = None,
    ) -> ProviderConfig:
        return system.set_provider_config(
            provider, values, pin=pin, reason=reason, release=release, caller=client_of(ctx)
        )

    @tools.tool(
        title="Revert an optimization",
        description=(
            "Undo one optimization (ids from get_optimizations): a running experiment ends and the lane gets "
            "its previous value back; a kept change is rolled back to its old value, unless the parameter was changed "
            "since (then use set_provider_config). Audited."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
        errors=EngineErrors(field="id", unknown="no optimization {value} (see get_optimizations)"),
    )
    async def revert_optimization(
        id: Annotated[str, Field(min_length=1, max_length=200, description="The optimization's id")],
        reason: Reason,
        ctx: Context,
    ) -> Optimization:
        return system.revert_optimization(id, reason=reason, caller=client_of(ctx))
