"""AutoOptimizer: tunes provider parameters from measured data, one canary at a time.

Every optimization is a record: what changed, the figures before and after, the statistical
verdict, and whether it was kept or rolled back. With no tunables measured yet there are none.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from mcp_autonomy.autonomy.component import Component
from mcp_autonomy.clock import Clock
from mcp_autonomy.events import EventBus
from mcp_autonomy.store import Store


class OptimizationStatus(StrEnum):
    """The life of one change: proposed, tried, then kept or reverted."""

    PROPOSED = "proposed"
    CANARY = "canary"
    KEPT = "kept"
    REVERTED = "reverted"


class Optimization(BaseModel):
    """One tuning change with its evidence."""

    id: str
    provider: str
    parameter: str
    old_value: float
    new_value: float
    status: OptimizationStatus
    reason: str
    created_at: float
    decided_at: float | None = None
    before: dict[str, float | None] = Field(default_factory=dict)
    after: dict[str, float | None] = Field(default_factory=dict)
    verdict: str | None = None


class AutoOptimizer(Component):
    """Proposes, canaries, keeps or reverts tuning changes per provider and parameter."""

    name = "auto_optimizer"

    def __init__(
        self,
        *,
        clock: Clock,
        bus: EventBus,
        store: Store,
        enabled: bool,
        interval_s: float,
        conservative: bool,
    ) -> None:
        super().__init__(clock=clock, bus=bus, store=store, enabled=enabled, interval_s=interval_s)
        self.conservative = conservative
        self._optimizations: dict[str, Optimization] = {}

    async def tick(self) -> None:
        # Nothing to tune until providers expose tunables with measured outcomes.
        return None

    def optimizations(self, *, provider: str | None = None, limit: int = 50) -> list[Optimization]:
        """History, newest first."""
        selected = [o for o in self._optimizations.values() if provider is None or o.provider == provider]
        selected.sort(key=lambda o: o.created_at, reverse=True)
        return selected[:limit]

    def details(self) -> dict[str, Any]:
        statuses = [o.status for o in self._optimizations.values()]
        return {
            "conservative_mode": self.conservative,
            "optimizations_total": len(statuses),
            "kept": statuses.count(OptimizationStatus.KEPT),
            "reverted": statuses.count(OptimizationStatus.REVERTED),
            "in_flight": statuses.count(OptimizationStatus.CANARY),
        }
