"""Provider tools: list them, set their backups, heal one now, and the incidents they had."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from mcp_types import ToolAnnotations
from pydantic import Field

from mcp_autonomy.autonomy.healer import HealResult
from mcp_autonomy.autonomy.incidents import IncidentStatus
from mcp_autonomy.server.mcp_tools.errors import EngineErrors
from mcp_autonomy.server.mcp_tools.models import READ_ONLY, IncidentList, ProviderList, ProviderName, Reason
from mcp_autonomy.server.mcp_tools.tool import ToolSet, check_provider, client_of, progress

__all__ = ["register"]


def register(tools: ToolSet) -> None:
    """Register heal_provider, get_incidents, list_providers and set_backup_providers."""
    system = tools.system

    @tools.tool(
        title="Heal a provider now",
        description=(
            "Run the healing sequence on one provider now: re-initialise its adapter (new HTTP "
            "client, fresh credentials), then probe it. Reports each step with its measured outcome "
            "and the provider's health before and after; sends progress notifications per step. In "
            "dry_run mode (see set_autonomy) it reports what it would do and changes nothing. "
            "Audited. Errors if the provider is not registered (the error lists the known ones)."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
        ),
        errors=EngineErrors(field="provider"),
    )
    async def heal_provider(provider: ProviderName, reason: Reason, ctx: Context) -> HealResult:
        return await system.heal_provider(
            provider,
            reason=reason,
            caller=client_of(ctx),
            progress=lambda d, t, m: progress(ctx, d, t, m),
        )

    @tools.tool(
        title="Get incidents",
        description=(
            "Incidents newest first (they survive restarts): what detected each one, when the first "
            "failure was seen, time to detect / mitigate / recover in seconds, every action taken while "
            "it was open with its outcome, and the predictions that foresaw it. `stats` holds the mean "
            "times and the healing success rate computed from the stored incidents. An open system-wide "
            "incident means more than half of the providers are unhealthy."
        ),
        annotations=READ_ONLY,
    )
    async def get_incidents(
        provider: Annotated[str | None, Field(description="Only this provider")] = None,
        status: Annotated[IncidentStatus | None, Field(description="open | resolved")] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="At most this many")] = 50,
    ) -> IncidentList:
        check_provider(system, provider)
        return IncidentList(
            incidents=system.get_incidents(provider=provider, status=status, limit=limit),
            stats=system.incidents.stats(),
        )

    @tools.tool(
        title="List providers",
        description=(
            "Every registered provider: operations, currencies and countries it supports, measured health, "
            "breaker state, rate limit and current tunables, backups and failover state. Never secrets."
        ),
        annotations=READ_ONLY,
    )
    async def list_providers() -> ProviderList:
        return provider_list(tools)

    @tools.tool(
        title="Set backup providers",
        description=(
            "Set the ordered failover targets of one provider (the original setBackupProviders). Validated: "
            "every backup must be registered, share a currency with the primary, not be the primary, and the "
            "backup map must stay free of cycles. Takes effect for the next payment. Audited."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
        errors=EngineErrors(field="backups"),
    )
    async def set_backup_providers(
        primary: ProviderName,
        backups: Annotated[
            list[str], Field(max_length=10, description="Ordered backups, e.g. [intasend, paystack]")
        ],
        reason: Reason,
        ctx: Context,
    ) -> ProviderList:
        system.set_backup_providers(primary, backups, reason=reason, caller=client_of(ctx))
        return provider_list(tools)


def provider_list(tools: ToolSet) -> ProviderList:
    """Every provider's status with the backup map and the failovers in force."""
    system = tools.system
    return ProviderList(
        providers=[system.provider_status(n) for n in system.providers.names()],
        backup_map=system.providers.backup_map(),
        failed_over=system.router.failed_over,
    )
