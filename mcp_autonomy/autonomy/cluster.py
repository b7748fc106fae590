"""What makes N replicas one engine: shared decisions applied everywhere, store health, retention.

With the PostgreSQL store every replica serves payments and measures its providers, and one
replica leads each loop (`mcp_autonomy.pg.leadership`). What a leader or an operator decides is
written to the shared store, and reaches every other replica through the cluster feed
(`mcp_autonomy.pg.feed`): `SharedStateSync` applies it here (the kill switch of each loop, the
failover map, the optimizer's kept tunables and pins, and the records a follower shows: open
incidents, maintenance windows, predictions). It also writes this replica's own route changes.

`StoreHealth` measures whether the store answers (pinged every second): a replica that cannot
reach it refuses new payments before sending anything and reports not ready, and recovers by
itself when the store answers again. `RetentionPruner` deletes what the retention settings say
is old, run by the reconciler's leader only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel, Field

from mcp_autonomy.autonomy.component import Component
from mcp_autonomy.autonomy.incidents import IncidentTracker
from mcp_autonomy.autonomy.optimizer import AutoOptimizer
from mcp_autonomy.autonomy.predictor import PredictiveMaintenance
from mcp_autonomy.clock import Clock
from mcp_autonomy.payments import PaymentStore
from mcp_autonomy.resilience.router import PaymentRouter
from mcp_autonomy.store import Fence, StateStore, StoreError
from mcp_autonomy.timefmt import TimestampOrNone, iso_or_none

logger = logging.getLogger(__name__)

ROUTER_COMPONENT = "router"
"""The component name the failover map is stored under."""
FAILOVER_KEY = "failover"
"""The key of the failover map (primary -> backup taking its traffic)."""
MODE_KEY = "mode"
STORE_PING_S = 1.0
"""How often the store's reachability is measured (readiness follows within this)."""
RETENTION_INTERVAL_S = 3600.0
"""How often the reconciler's leader prunes what retention says is old."""
DAY_S = 86_400.0


class SharedStateSync:
    """Applies the shared decisions other replicas (or this one) wrote, and writes route changes."""

    def __init__(
        self,
        *,
        store: StateStore,
        router: PaymentRouter,
        components: Mapping[str, Component],
        incidents: IncidentTracker,
        predictor: PredictiveMaintenance,
        optimizer: AutoOptimizer,
    ) -> None:
        self.store = store
        self.router = router
        self.components = components
        self.incidents = incidents
        self.predictor = predictor
        self.optimizer = optimizer
        self.applied = 0
        """Shared changes applied here (state keys and record batches)."""
        self.last_error: str | None = None

    def attach(self) -> None:
        """Write this replica's route changes to the shared store from now on."""
        self.router.route_listeners.append(self.persist_routes)

    def load(self) -> None:
        """Apply what the store holds now (at start-up, before the feed takes over)."""
        routes = self.store.get_state(ROUTER_COMPONENT, FAILOVER_KEY)
        if isinstance(routes, dict):
            self.router.apply_failover({str(k): str(v) for k, v in routes.items()})

    # --- writing ------------------------------------------------------------------------

    def _loop_fence(self) -> Fence | None:
        """The fence of the loop whose task makes this change; None for an operator's action."""
        for component in self.components.values():
            fence = component.write_fence()
            if fence is not None:
                return fence
        return None

    def persist_routes(self, routes: dict[str, str]) -> None:
        """Store the whole failover map after a change made on this replica (fenced when a loop
        made it: a deposed leader's change is refused and the shared map is put back here)."""
        try:
            self.store.set_state(
                ROUTER_COMPONENT,
                FAILOVER_KEY,
                routes,
                timestamp=self.router.clock.now(),
                fence=self._loop_fence(),
            )
        except StoreError:
            self._restore_routes()
            raise

    def _restore_routes(self) -> None:
        try:
            stored = self.store.get_state(ROUTER_COMPONENT, FAILOVER_KEY)
        except StoreError as exc:
            logger.warning("failover map not restored from the store: %s", exc)
            return
        self.router.apply_failover(dict(stored) if isinstance(stored, dict) else {})

    # --- applying -----------------------------------------------------------------------

    def on_state(self, component: str, key: str, value: Any) -> None:
        """A shared key changed (value None: deleted); called by the cluster feed."""
        self.applied += 1
        if key == MODE_KEY and component in self.components:
            self.components[component].apply_stored_mode(value)
        elif component == ROUTER_COMPONENT and key == FAILOVER_KEY:
            routes = value if isinstance(value, dict) else {}
            self.router.apply_failover({str(k): str(v) for k, v in routes.items()})
        elif component == self.optimizer.name and not self.optimizer.leadership.is_leader:
            self.optimizer.apply_shared_state(key, value)

    def on_records(self, table: str, ids: list[str]) -> None:
        """Records changed; a follower refreshes what it shows from the store (the leader's
        memory is the truth, so the leader skips its own writes coming back)."""
        self.applied += 1
        try:
            if table == "incidents" and not self.incidents.leadership.is_leader:
                self.incidents.load()
            elif table in ("predictions", "maintenance_windows") and not self.predictor.leadership.is_leader:
                self.predictor.load()
            elif table == "optimizations" and not self.optimizer.leadership.is_leader:
                self.optimizer.load_history()
        except StoreError as exc:
            self.last_error = str(exc)
            logger.warning("refreshing %s from the store failed: %s", table, exc)


class StoreStatus(BaseModel):
    """The store this replica uses, and whether it answers (measured)."""

    backend: str = Field(description="`sqlite` (this process only) or `postgresql` (shared by the replicas)")
    location: str = Field(description="The SQLite file, or the PostgreSQL URL without its password")
    shared: bool
    reachable: bool | None = Field(description="null until measured")
    checked_at: TimestampOrNone = None
    unreachable_since: TimestampOrNone = None
    last_error: str | None = None
    feed: dict[str, Any] | None = Field(
        None, description="The cluster feed (other replicas' events and decisions), PostgreSQL only"
    )


class StoreHealth:
    """Whether the payment store answers, pinged every `interval_s`; what readiness follows."""

    def __init__(
        self,
        *,
        payments: PaymentStore,
        clock: Clock,
        backend: str,
        location: str,
        shared: bool,
        interval_s: float = STORE_PING_S,
    ) -> None:
        self.payments = payments
        self.clock = clock
        self.backend = backend
        self.location = location
        self.shared = shared
        self.interval_s = interval_s
        self.reachable: bool | None = None
        self.checked_at: float | None = None
        self.unreachable_since: float | None = None
        self.last_error: str | None = None
        self.feed_status: Callable[[], dict[str, Any]] | None = None

    async def check(self) -> bool:
        """Ping the store now; returns whether it answered."""
        try:
            await self.payments.ping()
        except Exception as exc:  # any failure to answer is unreachability, reported as such
            if self.reachable is not False:
                logger.error("the %s store does not answer: %s", self.backend, exc)
                self.unreachable_since = self.clock.now()
            self.reachable = False
            self.last_error = str(exc)
        else:
            if self.reachable is False:
                logger.warning("the %s store answers again", self.backend)
            self.reachable = True
            self.unreachable_since = None
        self.checked_at = self.clock.now()
        return self.reachable

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.check()
        task_status.started()
        while True:
            await self.clock.sleep(self.interval_s)
            await self.check()

    def status(self) -> StoreStatus:
        return StoreStatus(
            backend=self.backend,
            location=self.location,
            shared=self.shared,
            reachable=self.reachable,
            checked_at=self.checked_at,
            unreachable_since=self.unreachable_since,
            last_error=self.last_error,
            feed=None if self.feed_status is None else self.feed_status(),
        )


class RetentionPruner:
    """Deletes events and finished payments older than the retention settings (audit: never).

    Runs hourly on the reconciler's leader (every pass on a single process). Non-final payments
    are never pruned, whatever their age: they are still owed an outcome."""

    def __init__(
        self,
        *,
        store: StateStore,
        payments: PaymentStore,
        clock: Clock,
        events_days: float,
        payments_days: float,
        is_leader: Callable[[], bool],
        interval_s: float = RETENTION_INTERVAL_S,
    ) -> None:
        if events_days < 0 or payments_days < 0:
            raise ValueError(
                f"retention must be >= 0 days (0: keep for ever), got events {events_days}, "
                f"payments {payments_days}"
            )
        self.store = store
        self.payments = payments
        self.clock = clock
        self.events_days = events_days
        self.payments_days = payments_days
        self.is_leader = is_leader
        self.interval_s = interval_s
        self.runs = 0
        self.events_pruned = 0
        self.payments_pruned = 0
        self.last_run_at: float | None = None
        self.last_error: str | None = None

    async def prune_once(self) -> tuple[int, int]:
        """Prune now; returns (events, payments) deleted (a retention of 0 days keeps for ever)."""
        now = self.clock.now()
        events = self.store.prune_events(now - self.events_days * DAY_S) if self.events_days else 0
        payments = (
            await self.payments.prune(finished_before=now - self.payments_days * DAY_S)
            if self.payments_days
            else 0
        )
        self.runs += 1
        self.events_pruned += events
        self.payments_pruned += payments
        self.last_run_at = now
        if events or payments:
            logger.info("retention: pruned %d event(s) and %d finished payment(s)", events, payments)
        return events, payments

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if self.is_leader():
                try:
                    await self.prune_once()
                    self.last_error = None
                except Exception as exc:  # pruning failing must not stop the next pass
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    logger.warning("retention pruning failed: %s", self.last_error)
            await self.clock.sleep(self.interval_s)

    def status(self) -> dict[str, Any]:
        return {
            "events_days": self.events_days,
            "payments_days": self.payments_days,
            "runs": self.runs,
            "events_pruned": self.events_pruned,
            "payments_pruned": self.payments_pruned,
            "last_run_at": iso_or_none(self.last_run_at),
            "last_error": self.last_error,
        }
