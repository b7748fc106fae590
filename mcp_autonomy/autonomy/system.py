"""AutonomousSystem: owns the four loops, the providers, the event bus and the store.

`async with system.running():` opens the store, initialises the providers and runs every loop
in one anyio TaskGroup; leaving the block cancels the group and waits for every loop to stop.
The server layer (MCP tools, REST) calls the methods here and nothing else.

Two store backends: SQLite (the default; this process only) and PostgreSQL (selected by
`MCP_AUTONOMY_DATABASE_URL`; shared by every replica). With PostgreSQL, payments, idempotency
keys, callbacks, the kill switch, the failover map, kept tunables, incidents, predictions,
optimizations, the audit log and events are shared; one replica leads each loop (an advisory
lock with a fencing epoch) and the others serve payments, measure, and apply the shared decisions
(`mcp_autonomy.autonomy.cluster`).
"""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal, NamedTuple

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python

from mcp_autonomy import __version__
from mcp_autonomy.autonomy.callback_inbox import CallbackInbox, CallbackReceipt
from mcp_autonomy.autonomy.cluster import RetentionPruner, SharedStateSync, StoreHealth, StoreStatus
from mcp_autonomy.autonomy.component import Component, ComponentStatus, FencedLeader, LoopLeader, Mode
from mcp_autonomy.autonomy.healer import HealResult, SelfHealer
from mcp_autonomy.autonomy.incidents import Incident, IncidentStatus, IncidentTracker
from mcp_autonomy.autonomy.maintenance import MaintenanceStatus, MaintenanceWindow
from mcp_autonomy.autonomy.optimizer import (
    STATE_PINS,
    STATE_TUNABLES,
    AutoOptimizer,
    Optimization,
    ProviderConfig,
)
from mcp_autonomy.autonomy.predictor import Prediction, PredictionStatus, PredictiveMaintenance
from mcp_autonomy.autonomy.reconciler import PaymentLocks, PaymentReconciler
from mcp_autonomy.autonomy.scaler import AutoScaler, ScaleResult
from mcp_autonomy.autonomy.scaling import (
    ClusterLoad,
    ClusterLoadError,
    ClusterLoadReading,
    Elector,
    KubernetesScaleBackend,
    LeaderElectionConfig,
    LeaderElector,
    LeaderStatus,
    ReplicaState,
    ScaleBackend,
    SingleProcessElector,
    build_scale_backend,
    pod_identity,
)
from mcp_autonomy.autonomy.scaling.policy import (
    DEFAULT_SCALE_DOWN_HOLD_S,
    ORIGINAL_MODULE_PRIOR_SCHEDULE,
    ForecastConfig,
    PredictiveConfig,
    PredictivePolicy,
    ReactiveConfig,
    ReactivePolicy,
    ScaleGuards,
    ScalingPolicy,
)
from mcp_autonomy.clock import Clock, SystemClock
from mcp_autonomy.config import Settings, load_settings
from mcp_autonomy.events import Event, EventBus, EventType, Severity
from mcp_autonomy.payment_store import SqlitePaymentStore
from mcp_autonomy.payments import CallbackState, InboxCallback, PaymentRecord, PaymentStore
from mcp_autonomy.pii import mask_text
from mcp_autonomy.providers.base import PaymentRequest, ProviderAdapter, ProviderError, TransactionStatus
from mcp_autonomy.providers.registry import ProviderEntry, ProviderRegistry
from mcp_autonomy.recorder import EventRecorder
from mcp_autonomy.resilience.breaker import BreakerConfig
from mcp_autonomy.resilience.customer_errors import CustomerErrorStorm
from mcp_autonomy.resilience.health import HealthSnapshot, HealthStatus
from mcp_autonomy.resilience.router import LaneStatus, PaymentRouter
from mcp_autonomy.store import AuditRecord, StateStore, Store, StoreUnavailable
from mcp_autonomy.telemetry import Telemetry, TelemetrySnapshot
from mcp_autonomy.timefmt import TimestampOrNone

logger = logging.getLogger(__name__)

ComponentName = Literal["self_healer", "auto_scaler", "predictive_maintenance", "auto_optimizer"]
COMPONENT_NAMES: tuple[ComponentName, ...] = (
    "self_healer",
    "auto_scaler",
    "predictive_maintenance",
    "auto_optimizer",
)
ProgressFn = Callable[[int, int, str], Awaitable[None]]
LEADER_LOOPS: tuple[str, ...] = (*COMPONENT_NAMES, "reconciler")
"""The loops one replica leads across the cluster (PostgreSQL store)."""
AUDIT_ERROR_MAX_CHARS = 500
"""The longest refusal text an audit entry keeps (the engine's own messages are far shorter)."""
WITHHELD = "(withheld)"
"""What the audit log records instead of a secret argument (an OTP)."""


MAX_CALLERS_IN_STATS = 50


def actions_by_caller(by_client: dict[str, int]) -> dict[str, int]:
    """Audit counts per caller identity: the part of the label before ` via ` (`token:ops via
    rest:...` -> `token:ops`); labels without an identity (no authorization configured) count whole."""
    counts: dict[str, int] = {}
    for client, count in by_client.items():
        identity = client.split(" via ", 1)[0] or "unknown"
        counts[identity] = counts.get(identity, 0) + count
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_CALLERS_IN_STATS]
    return dict(top)


class ManualAction:
    """One operator action being audited (see `AutonomousSystem.audited`).

    The action sets `result` to what its audit entry records on success; `audit_id` is the
    entry's id once the `with` block has ended without an exception.
    """

    __slots__ = ("audit_id", "result")

    def __init__(self) -> None:
        self.result: Any = None
        self.audit_id: int | None = None


class ModeChange(NamedTuple):
    """What `set_autonomy` did: the mode before, the mode now, and its audit entry."""

    previous: Mode
    mode: Mode
    audit_id: int


def _refusal_text(exc: Exception) -> str:
    """What an audit entry records about why an action was refused (masked and bounded)."""
    if isinstance(exc, ProviderError):
        text = f"the provider refused it: {exc.provider_message}"
    elif type(exc) is KeyError and exc.args:
        # A bare KeyError's text is the repr of the missing id; say what it means.
        text = f"not found: {exc.args[0]}"
    else:
        text = str(exc) or type(exc).__name__
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    if len(text) > AUDIT_ERROR_MAX_CHARS:
        text = text[: AUDIT_ERROR_MAX_CHARS - 1] + "…"
    return mask_text(text)


class ProviderStatus(BaseModel):
    """One provider as the engine sees it (never its credentials)."""

    name: str
    health: HealthSnapshot
    backups: list[str]
    critical: bool
    initialized: bool
    last_init_error: str | None
    operations: list[str]
    currencies: list[str]
    countries: list[str]
    refunds: bool
    lane: LaneStatus = Field(description="Breaker, rate limit and tunables of the provider's router lane")
    telemetry: TelemetrySnapshot = Field(description="Measured over the last 5 minutes")
    oldest_open_payment_age_s: float | None = Field(
        None, description="Age of its oldest payment not yet final (pending, unknown, needs_reconciliation)"
    )
    customer_error_storm: CustomerErrorStorm | None = Field(
        None,
        description="Most of its payers failing on their side at once (a degradation signal, never a "
        "breaker trip or a failover)",
    )


class EventBusStatus(BaseModel):
    """The event bus's own counters."""

    published: int
    dropped: int
    subscribers: int
    in_memory: int
    recorded: int
    recorder_dropped: int


class SystemStatus(BaseModel):
    """The whole system at a glance: every figure is measured, null when not yet known."""

    version: str
    run_id: str
    started: bool
    started_at: TimestampOrNone
    uptime_s: float | None
    overall: Literal["healthy", "degraded", "critical", "unknown"]
    overall_reason: str
    open_incidents: list[Incident]
    components: dict[str, ComponentStatus]
    providers: list[ProviderStatus]
    scaling: ReplicaState | None
    scaling_leader: LeaderStatus | None = Field(description="Who decides scaling (leader election)")
    replica: str = Field(description="This replica's identity (what `leadership` names)")
    leadership: dict[str, LeaderStatus] = Field(
        description="For each loop (self_healer, auto_scaler, predictive_maintenance, auto_optimizer, "
        "reconciler): the replica that leads it and whether this one does"
    )
    store: StoreStatus
    events: EventBusStatus


class ComponentSummary(BaseModel):
    """One loop at a glance."""

    mode: str
    mode_source: str
    running: bool
    last_tick_at: TimestampOrNone
    errors: int
    last_error: str | None
    actions_taken: int
    is_leader: bool = Field(description="Whether this replica leads (acts for) the loop")
    leader: str | None = Field(
        description="The replica leading the loop; null: this single process or nobody yet"
    )


class ProviderSummary(BaseModel):
    """One provider at a glance (details: `list_providers`, `autonomy://providers/{name}`)."""

    name: str
    health: str
    breaker: str
    failed_over_to: str | None
    error_rate_5m: float | None
    latency_p95_ms_5m: float | None
    requests_per_min_5m: float | None


class StatusSummary(BaseModel):
    """The whole system at a glance; `autonomy://status` holds the full detail."""

    version: str
    run_id: str
    started: bool
    uptime_s: float | None
    overall: Literal["healthy", "degraded", "critical", "unknown"]
    overall_reason: str
    open_incidents: list[str] = Field(description="ids of the incidents open now (see `get_incidents`)")
    components: dict[str, ComponentSummary]
    providers: list[ProviderSummary]
    scaling: ReplicaState | None
    scaling_leader: str | None = Field(description="The replica that decides scaling (this one: `is_leader`)")
    is_leader: bool
    replica: str
    store_reachable: bool | None = Field(description="Whether the store answers (null until measured)")
    events_published: int
    events_dropped: int


class SystemStats(BaseModel):
    """Counters and scores over the life of the store (events) and of this run (components)."""

    run_id: str
    uptime_s: float | None
    events_by_type: dict[str, int]
    events_stored: int
    manual_actions: int
    manual_actions_by_caller: dict[str, int] = Field(
        default_factory=dict,
        description="operator actions and payments per caller identity (token name, OAuth sub/client), "
        f"the {MAX_CALLERS_IN_STATS} most active",
    )
    incidents: dict[str, Any]
    healing: dict[str, Any]
    scaling: dict[str, Any]
    predictions: dict[str, Any]
    optimizations: dict[str, Any]
    payments: dict[str, Any]


def _redacted(url: str) -> str:
    from mcp_autonomy.pg.connect import redact_url

    return redact_url(url)


def scaling_policy(settings: Settings) -> ScalingPolicy:
    """The policy the settings ask for, bounded by MIN..MAX and aimed at TARGET_TPM_PER_INSTANCE."""
    reactive = ReactiveConfig(
        target_tpm_per_instance=float(settings.target_tpm_per_instance),
        scale_up_threshold=settings.scale_up_threshold,
        min_replicas=settings.min_instances,
        max_replicas=settings.max_instances,
    )
    if settings.scaling_policy == "reactive":
        return ReactivePolicy(reactive)
    prior = ORIGINAL_MODULE_PRIOR_SCHEDULE if settings.scaling_prior == "original" else ()
    return PredictivePolicy(
        PredictiveConfig(
            reactive=reactive,
            forecast=ForecastConfig(prior_schedule=prior),
            startup_s=float(settings.pod_startup_s),
            scale_down_hold_s=max(float(settings.pod_startup_s), DEFAULT_SCALE_DOWN_HOLD_S),
        )
    )


class AutonomousSystem:
    """The engine: four autonomy loops over the registered providers.

    Example:
        system = AutonomousSystem(Settings(min_instances=2, max_instances=20))
        system.register_provider("mpesa", backups=["intasend", "paystack"])
        async with system.running():
            ...
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        scale_backend: ScaleBackend | None = None,
        adapter_factory: Callable[[str], ProviderAdapter] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.run_id = uuid.uuid4().hex[:12]
        self.replica = pod_identity(self.settings.pod_name)
        database_url = self.settings.database_url
        self._database_url = None if database_url is None else database_url.get_secret_value()
        self.store: StateStore
        self.payments: PaymentStore
        self.payment_locks: PaymentLocks
        if self._database_url is None:
            self.store = Store(self.settings.db_path)
        else:
            from mcp_autonomy.pg.store import PostgresStore

            self.store = PostgresStore(self._database_url, origin=self.run_id)
        self.events = EventBus(self.clock, history_size=self.settings.event_history, run_id=self.run_id)
        self.recorder = EventRecorder(self.events, self.store)
        self.recorder.attach()
        self.providers = ProviderRegistry()
        self._adapter_factory = adapter_factory
        self.telemetry = Telemetry(self.clock)
        if self._database_url is None:
            assert isinstance(self.store, Store)
            self.payments = SqlitePaymentStore(self.store)
            self.payment_locks = PaymentLocks()
        else:
            from mcp_autonomy.pg.payment_locks import PostgresPaymentLocks
            from mcp_autonomy.pg.payment_store import PostgresPaymentStore

            self.payments = PostgresPaymentStore(self._database_url)
            self.payment_locks = PostgresPaymentLocks(self._database_url)  # type: ignore[assignment]
        self.router = PaymentRouter(
            self.providers,
            self.payments,
            self.telemetry,
            self.events,
            self.clock,
            breaker_config=BreakerConfig(
                consecutive_failures_to_open=self.settings.breaker_consecutive_failures
            ),
        )
        self.reconciler = PaymentReconciler(
            router=self.router,
            payments=self.payments,
            providers=self.providers,
            bus=self.events,
            clock=self.clock,
            locks=self.payment_locks,
        )
        self.callbacks = CallbackInbox(
            payments=self.payments,
            providers=self.providers,
            reconciler=self.reconciler,
            locks=self.payment_locks,
            bus=self.events,
            clock=self.clock,
            audit=self.store.record_audit,
        )
        self.incidents = IncidentTracker(
            clock=self.clock,
            bus=self.events,
            store=self.store,
            providers=self.providers,
            router=self.router,
            telemetry=self.telemetry,
            run_id=self.run_id,
        )
        self.incidents.attach()
        s = self.settings
        self.self_healer = SelfHealer(
            clock=self.clock,
            bus=self.events,
            store=self.store,
            providers=self.providers,
            router=self.router,
            enabled=s.self_healing_enabled,
            interval_s=s.self_healing_interval_ms / 1000,
            max_attempts=s.max_healing_attempts,
        )
        self.auto_scaler = AutoScaler(
            clock=self.clock,
            bus=self.events,
            store=self.store,
            backend=scale_backend or build_scale_backend(s, self.store, self.clock),
            load_source=self.measured_load_tpm,
            enabled=s.auto_scaling_enabled,
            interval_s=s.scaling_interval_ms / 1000,
            min_replicas=s.min_instances,
            max_replicas=s.max_instances,
            target_tpm_per_instance=s.target_tpm_per_instance,
            policy=scaling_policy(s),
            guards=self.scale_guards,
        )
        self.predictive_maintenance = PredictiveMaintenance(
            clock=self.clock,
            bus=self.events,
            store=self.store,
            enabled=s.predictive_maintenance_enabled,
            interval_s=s.prediction_interval_ms / 1000,
            sensitivity=s.prediction_sensitivity,
            auto_schedule_maintenance=s.auto_schedule_maintenance,
            telemetry=self.telemetry,
            providers=self.providers,
            router=self.router,
            incidents=self.incidents,
        )
        self.predictive_maintenance.maintenance.heal = self._maintenance_heal
        self.self_healer.holds_traffic = self.predictive_maintenance.maintenance.in_progress
        self.auto_optimizer = AutoOptimizer(
            clock=self.clock,
            bus=self.events,
            store=self.store,
            enabled=s.auto_optimization_enabled,
            interval_s=s.optimization_interval_ms / 1000,
            conservative=s.conservative_mode,
            router=self.router,
            telemetry=self.telemetry,
            providers=self.providers,
            timeout_min_history_s=s.optimization_timeout_min_history_s,
        )
        self.components: dict[str, Component] = {
            c.name: c
            for c in (self.self_healer, self.auto_scaler, self.predictive_maintenance, self.auto_optimizer)
        }
        self.elector: Elector = SingleProcessElector()
        self.store_health = StoreHealth(
            payments=self.payments,
            clock=self.clock,
            backend="sqlite" if self._database_url is None else "postgresql",
            location=str(self.settings.db_path)
            if self._database_url is None
            else _redacted(self._database_url),
            shared=self._database_url is not None,
        )
        self.shared_state = SharedStateSync(
            store=self.store,
            router=self.router,
            components=self.components,
            incidents=self.incidents,
            predictor=self.predictive_maintenance,
            optimizer=self.auto_optimizer,
        )
        self.leadership: Any = None  # ClusterLeadership with PostgreSQL
        self.feed: Any = None  # ClusterFeed with PostgreSQL
        self.cluster_telemetry: Any = None  # ClusterTelemetry with PostgreSQL
        self._reconciler_leader: LoopLeader | None = None
        if self._database_url is not None:
            self._lead_across_replicas(self._database_url)
        self.retention = RetentionPruner(
            store=self.store,
            payments=self.payments,
            clock=self.clock,
            events_days=s.retention_events_days,
            payments_days=s.retention_payments_days,
            is_leader=lambda: self._reconciler_leader is None or self._reconciler_leader.is_leader,
        )
        self.cluster_load: ClusterLoad | None = None
        self.last_load_reading: ClusterLoadReading | None = None
        self._task_group: TaskGroup | None = None
        self._started_at: float | None = None
        self._started_mono: float | None = None
        self._ready = anyio.Event()

    def _lead_across_replicas(self, url: str) -> None:
        """One leader per loop on PostgreSQL advisory locks; the cluster feed applies the rest."""
        from mcp_autonomy.pg.feed import ClusterFeed
        from mcp_autonomy.pg.leadership import ClusterLeadership
        from mcp_autonomy.pg.telemetry import ClusterTelemetry

        self.leadership = ClusterLeadership(url, identity=self.replica, loops=LEADER_LOOPS, clock=self.clock)
        self.feed = ClusterFeed(url, origin=self.run_id, bus=self.events, clock=self.clock)
        # Each replica's calls, merged into every replica's telemetry: leaders decide from the
        # whole cluster's evidence (the run id, not the pod name: a restarted pod's earlier
        # samples are another run's).
        self.cluster_telemetry = ClusterTelemetry(
            url, replica=self.run_id, telemetry=self.telemetry, clock=self.clock
        )
        leaders: dict[str, LoopLeader] = {
            loop: FencedLeader(loop, self.leadership.elector(loop)) for loop in LEADER_LOOPS
        }
        self.self_healer.use_leadership(leaders["self_healer"])
        self.incidents.leadership = leaders["self_healer"]
        self.self_healer.elected_hooks.append(self.incidents.load)
        self.predictive_maintenance.use_leadership(leaders["predictive_maintenance"])
        self.predictive_maintenance.elected_hooks.append(self.predictive_maintenance.load)
        self.auto_optimizer.use_leadership(leaders["auto_optimizer"])
        self.auto_optimizer.elected_hooks.append(self.auto_optimizer.reload)
        self.auto_optimizer.deposed_hooks.append(self.auto_optimizer.abandon_experiments)
        # The scaler checks leadership itself (and keeps the Kubernetes Lease when it scales a
        # Deployment, set up at start); only its writes are fenced by this election.
        self.auto_scaler.use_leadership(leaders["auto_scaler"], gate=False)
        self.elector = self.leadership.elector("auto_scaler")
        self._reconciler_leader = leaders["reconciler"]
        self.reconciler.is_leader = lambda: leaders["reconciler"].is_leader
        self.feed.on_state(self.shared_state.on_state)
        self.feed.on_records(self.shared_state.on_records)
        self.store_health.feed_status = lambda: {
            **self.feed.status().model_dump(mode="json"),
            "telemetry": self.cluster_telemetry.status().model_dump(mode="json"),
        }

    # --- providers ----------------------------------------------------------------------

    def register_provider(
        self,
        provider: str | ProviderAdapter,
        backups: list[str] | None = None,
        *,
        critical: bool = False,
    ) -> ProviderEntry:
        """Register a provider by adapter or by name (built by the adapter factory)."""
        if isinstance(provider, str):
            if self._adapter_factory is None:
                raise ValueError(f"cannot build provider {provider!r}: no adapter factory configured")
            adapter = self._adapter_factory(provider)
        else:
            adapter = provider
        entry = self.providers.register(
            adapter, backups=backups, critical=critical, registered_at=self.clock.now()
        )
        self.events.emit(
            EventType.PROVIDER_REGISTERED,
            component="system",
            provider=adapter.name,
            message=f"provider {adapter.name} registered",
            data={"backups": list(entry.backups), "critical": critical},
        )
        return entry

    def set_backup_providers(
        self, primary: str, backups: list[str], *, reason: str | None = None, caller: str | None = None
    ) -> list[str]:
        """Validate and set `primary`'s backups; returns the previous list.

        With a `reason` or a `caller` this is an operator action and is audited (ok or refused);
        without either it is configuration (start-up settings, a library wiring its providers).
        """
        if reason is None and caller is None:
            return self._set_backups(primary, backups)
        arguments = {"primary": primary, "backups": backups, "reason": reason}
        with self.audited("set_backup_providers", arguments, caller=caller, reason=reason) as action:
            previous = self._set_backups(primary, backups)
            action.result = {"backups": backups, "backup_map": self.providers.backup_map().get(primary, [])}
        return previous

    def _set_backups(self, primary: str, backups: list[str]) -> list[str]:
        previous = self.providers.set_backups(primary, backups)
        self.events.emit(
            EventType.PROVIDER_REGISTERED,
            component="system",
            provider=primary,
            message=f"{primary} backups: {', '.join(backups) or 'none'} (were {', '.join(previous) or 'none'})",
            data={"backups": backups, "previous": previous, "action": "set_backup_providers"},
        )
        return previous

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._task_group is not None

    @property
    def ready(self) -> bool:
        """True once every loop is running and the store answers (what `/readyz` reports)."""
        return self._ready.is_set() and self.store_health.reachable is not False

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[AutonomousSystem]:
        """Run every loop for the duration of the block."""
        if self._task_group is not None:
            raise RuntimeError("the system is already running")
        self.store.open()
        # The predictor imports `autonomy.detection` on its first tick (lazily, to keep imports
        # acyclic); that import takes ~10 ms of the event loop: take it here, before any loop runs.
        importlib.import_module("mcp_autonomy.autonomy.detection.prediction")
        try:
            await self._open_shared()
            async with anyio.create_task_group() as tg:
                if self.feed is not None:
                    # Listening before the shared state is read: a change in between arrives twice
                    # (harmless), never not at all.
                    await tg.start(self.feed.run)
                if self.cluster_telemetry is not None:
                    await tg.start(self.cluster_telemetry.run)
                for component in self.components.values():
                    component.load_persisted_mode()
                self.incidents.load()
                self.predictive_maintenance.load()
                if self.leadership is None:
                    self.auto_optimizer.load()
                else:  # only the optimizer's leader may end experiments: followers adopt values
                    for key in (STATE_PINS, STATE_TUNABLES):
                        self.auto_optimizer.apply_shared_state(
                            key, self.store.get_state(self.auto_optimizer.name, key)
                        )
                    self.auto_optimizer.load_history()
                    self.shared_state.load()
                self.shared_state.attach()
                replayed = self.auto_scaler.warm_up_from_history()
                if replayed:
                    logger.info("scaling policy warmed up from %d recorded load samples", replayed)
                await tg.start(self.store_health.run)
                if self.leadership is not None:
                    await tg.start(self.leadership.run)
                await tg.start(self.recorder.run)
                await self._initialize_providers()
                # Every payment a crash left non-final is due at once: pulled, never re-sent.
                await tg.start(self.reconciler.run)
                await self._start_scaling_coordination(tg)
                self._started_at = self.clock.now()
                self._started_mono = self.clock.monotonic()
                self._task_group = tg
                for component in self.components.values():
                    await component.start(tg)
                # Published once every loop runs: "started" means the whole system is up.
                self.events.emit(
                    EventType.SYSTEM_STARTED,
                    component="system",
                    message=f"mcp-autonomy {__version__} started (run {self.run_id})",
                    data={"providers": self.providers.names(), "components": list(self.components)},
                )
                await tg.start(self.retention.run)
                self._ready.set()
                try:
                    yield self
                finally:
                    self.events.emit(EventType.SYSTEM_STOPPED, component="system", message="stopping")
                    tg.cancel_scope.cancel()
        finally:
            self._task_group = None
            self._ready = anyio.Event()
            with anyio.CancelScope(shield=True):
                for entry in self.providers.entries():
                    try:
                        await entry.adapter.close()
                    except Exception:  # closing must not hide the real exit reason
                        logger.exception("closing %s failed", entry.name)
                try:
                    self.recorder.flush()
                except Exception:  # the store may be down: the events are lost, the exit is not
                    logger.exception("flushing the event recorder failed")
                await self._close_shared()
            self.store.close()

    async def _open_shared(self) -> None:
        """Open the PostgreSQL payment store and payment locks (nothing to do for SQLite)."""
        if self._database_url is None:
            return
        await self.payments.open()  # type: ignore[attr-defined]
        await self.payment_locks.open()  # type: ignore[attr-defined]

    async def _close_shared(self) -> None:
        if self._database_url is None:
            return
        if self.leadership is not None:
            self.leadership.stop()
        closers: list[Callable[[], Awaitable[None]]] = [
            self.payment_locks.close,  # type: ignore[attr-defined]
            self.payments.close,  # type: ignore[attr-defined]
        ]
        for close in closers:
            try:
                await close()
            except Exception:  # one failing close must not leave the other open
                logger.exception("closing the shared store failed")

    async def _start_scaling_coordination(self, tg: TaskGroup) -> None:
        """One replica decides scaling: elect it on a Lease (kubernetes) and measure the cluster's load."""
        backend = self.auto_scaler.backend
        if isinstance(backend, KubernetesScaleBackend):
            s = self.settings
            client = await backend.api_client()
            self.elector = LeaderElector(
                client,
                LeaderElectionConfig.from_settings(s),
                clock=self.clock,
                identity=pod_identity(s.pod_name),
            )
            self.cluster_load = ClusterLoad.from_settings(s, client, self.clock)
            self.auto_scaler.load_source = self._measure_cluster_load
            # The Lease decides scaling (and fences nothing in the store): its holder records load.
            self.auto_scaler.use_leadership(self.elector, gate=False)
        elector = self.elector
        await tg.start(elector.run)
        self.auto_scaler.is_leader = lambda: elector.is_leader
        self.auto_scaler.leader = lambda: elector.leader_identity

    async def _measure_cluster_load(self) -> float | None:
        """The cluster's transactions per minute; None (no decision) when no pod list is readable."""
        assert self.cluster_load is not None
        try:
            self.last_load_reading = await self.cluster_load.measure()
        except ClusterLoadError as exc:
            logger.warning("cluster load not measured: %s", exc)
            self.last_load_reading = None
            return None
        return self.last_load_reading.tpm

    def leadership_status(self) -> dict[str, LeaderStatus]:
        """Who leads each loop, as this replica sees it (one process: this one, always)."""
        if self.leadership is None:
            single = SingleProcessElector().status()
            return {loop: single for loop in LEADER_LOOPS}
        statuses: dict[str, LeaderStatus] = self.leadership.status()
        if isinstance(self.auto_scaler.backend, KubernetesScaleBackend):
            statuses["auto_scaler"] = self.elector.status()  # the Lease decides scaling there
        return statuses

    def leader_status(self) -> LeaderStatus:
        """Who decides scaling, as this replica sees it."""
        return self.elector.status()

    async def _initialize_providers(self) -> None:
        for entry in self.providers.entries():
            try:
                await entry.adapter.initialize()
                entry.initialized = True
                entry.last_init_error = None
            except Exception as exc:  # a provider down at start-up is for the healer, not fatal
                entry.last_init_error = f"{type(exc).__name__}: {exc}"
                logger.warning("initialising %s failed: %s", entry.name, entry.last_init_error)

    # --- measurements -------------------------------------------------------------------

    def measured_load_tpm(self) -> float | None:
        """Transactions per minute measured through the router; None until payments flow."""
        return self.telemetry.transactions_per_minute()

    def scale_guards(self) -> ScaleGuards:
        """What forbids removing capacity now: an open incident, a maintenance window running."""
        maintenance = self.predictive_maintenance.maintenance
        reading = self.last_load_reading
        return ScaleGuards(
            incident_open=bool(self.incidents.open_incidents()),
            maintenance_window=any(maintenance.in_progress(name) for name in self.providers.names()),
            partial_load=reading is not None and reading.partial,
        )

    # --- payments -----------------------------------------------------------------------

    async def submit_payment(self, request: PaymentRequest) -> PaymentRecord:
        """Route a payment (idempotent by its key); see `PaymentRouter.submit`.

        StoreUnavailable: the store does not answer, so nothing is sent (an attempt that cannot
        be recorded first is never made)."""
        if self.store_health.reachable is False:
            raise StoreUnavailable(
                f"the {self.store_health.backend} store does not answer ({self.store_health.last_error}); "
                "this replica refuses new payments until it does"
            )
        async with self.payment_locks.hold(request.idempotency_key):
            return await self.router.submit(request)

    async def receive_callback(
        self,
        provider: str,
        path_kind: str,
        path_reference: str | None,
        body: bytes,
        headers: Mapping[str, str],
    ) -> CallbackReceipt:
        """A provider's callback as received over HTTP: stored, then confirmed by a status pull
        before it changes anything (see `CallbackInbox`)."""
        return await self.callbacks.receive(provider, path_kind, path_reference, body, headers)

    async def get_payment(self, key_or_reference: str, *, refresh: bool = True) -> PaymentRecord | None:
        """A payment by idempotency key or reference; a non-final one is pulled at its provider
        first (through the status cache)."""
        record = await self.router.get_payment(key_or_reference)
        if record is not None and refresh and not record.status.is_final:
            pulled = await self.reconciler.pull(record.idempotency_key)
            record = pulled or record
        return record

    async def list_payments(
        self, *, status: TransactionStatus | None = None, provider: str | None = None, limit: int = 50
    ) -> list[PaymentRecord]:
        """Payments, newest first, optionally of one status and provider."""
        if provider is not None:
            self.providers.get(provider)
        statuses = (status,) if status is not None else ()
        return await self.payments.list_payments(statuses=statuses, provider=provider, limit=limit)

    async def resolve_payment(
        self,
        key: str,
        outcome: TransactionStatus,
        *,
        reason: str,
        provider_reference: str | None = None,
        caller: str | None = None,
    ) -> PaymentRecord:
        """An operator's verdict on a payment left `needs_reconciliation` (or `unknown`): never a
        resend. KeyError: unknown key; ValueError: the payment is not open, or a bad outcome. Audited."""
        arguments = {
            "idempotency_key": key,
            "outcome": outcome,
            "reason": reason,
            "provider_reference": provider_reference,
        }
        with self.audited("resolve_payment", arguments, caller=caller, reason=reason) as action:
            record = await self.reconciler.resolve(
                key, outcome, reason=reason, provider_reference=provider_reference
            )
            action.result = {"status": record.status.value}
        return record

    async def submit_transfer_otp(
        self, key: str, otp: str, *, reason: str, caller: str | None = None
    ) -> PaymentRecord:
        """Finalise a transfer its provider holds for the merchant's OTP (Paystack `otp`).
        KeyError: unknown key; ValueError: not waiting for an OTP; ProviderError: refused.
        Audited, the OTP withheld."""
        arguments = {"idempotency_key": key, "otp": WITHHELD, "reason": reason}
        with self.audited("submit_transfer_otp", arguments, caller=caller, reason=reason) as action:
            record = await self.reconciler.submit_otp(key, otp)
            action.result = {"status": record.status.value}
        return record

    async def list_callbacks(
        self,
        *,
        provider: str | None = None,
        state: CallbackState | None = None,
        idempotency_key: str | None = None,
        limit: int = 50,
    ) -> list[InboxCallback]:
        """Received provider callbacks, newest first."""
        states = (state,) if state is not None else ()
        return await self.payments.list_callbacks(
            provider=provider, states=states, idempotency_key=idempotency_key, limit=limit
        )

    # --- status -------------------------------------------------------------------------

    def provider_status(self, name: str, oldest_open_s: dict[str, float] | None = None) -> ProviderStatus:
        entry = self.providers.get(name)
        caps = entry.adapter.capabilities
        return ProviderStatus(
            name=entry.name,
            health=entry.health.snapshot(),
            backups=list(entry.backups),
            critical=entry.critical,
            initialized=entry.initialized,
            last_init_error=entry.last_init_error,
            operations=sorted(op.value for op in caps.operations),
            currencies=sorted(caps.currencies),
            countries=sorted(caps.countries),
            refunds=caps.refunds,
            lane=self.router.lane_status(name),
            # Maintained aggregates only: the read costs the same however busy the provider is.
            telemetry=self.telemetry.provider(name).snapshot(bin_pending=False),
            oldest_open_payment_age_s=(oldest_open_s or {}).get(name),
            customer_error_storm=self.router.customer_errors.storm(name),
        )

    def _overall(
        self, providers: list[ProviderStatus]
    ) -> tuple[Literal["healthy", "degraded", "critical", "unknown"], str]:
        if not providers:
            return "unknown", "no providers registered"
        statuses = [p.health.status for p in providers]
        unhealthy = [p.name for p in providers if p.health.status is HealthStatus.UNHEALTHY]
        if len(unhealthy) * 2 > len(providers):
            return "critical", f"more than half of the providers are unhealthy: {', '.join(unhealthy)}"
        critical_down = [
            p.name for p in providers if p.critical and p.health.status is HealthStatus.UNHEALTHY
        ]
        if critical_down:
            return "critical", f"critical provider(s) unhealthy: {', '.join(critical_down)}"
        if all(s is HealthStatus.UNKNOWN for s in statuses):
            return "unknown", "no provider probed yet"
        not_ok = [p.name for p in providers if p.health.status is not HealthStatus.HEALTHY]
        if not_ok:
            return "degraded", f"not healthy: {', '.join(not_ok)}"
        storms = [p.name for p in providers if p.customer_error_storm is not None]
        if storms:
            return (
                "degraded",
                f"most payers failing on their side at {', '.join(storms)} (not a provider fault)",
            )
        return "healthy", "every provider healthy"

    async def get_status(self) -> SystemStatus:
        """Everything an operator needs at a glance."""
        oldest = await self._oldest_open_age_s()
        providers = [self.provider_status(n, oldest) for n in self.providers.names()]
        overall, reason = self._overall(providers)
        scaling: ReplicaState | None
        try:
            scaling = await self.auto_scaler.backend.read() if self.store.is_open else None
        except Exception as exc:  # an unreachable backend is shown, not fatal for status
            logger.warning("reading replica state failed: %s", exc)
            scaling = None
        return SystemStatus(
            version=__version__,
            run_id=self.run_id,
            started=self.started,
            started_at=self._started_at,
            uptime_s=self.uptime_s,
            overall=overall,
            overall_reason=reason,
            open_incidents=self.incidents.open_incidents(),
            components={name: c.status() for name, c in self.components.items()},
            providers=providers,
            scaling=scaling,
            scaling_leader=self.elector.status(),
            replica=self.replica,
            leadership=self.leadership_status(),
            store=self.store_health.status(),
            events=EventBusStatus(
                published=self.events.published_total,
                dropped=self.events.dropped_total,
                subscribers=self.events.subscriber_count,
                in_memory=self.events.history_size,
                recorded=self.recorder.written,
                recorder_dropped=self.recorder.dropped,
            ),
        )

    async def _oldest_open_age_s(self) -> dict[str, float]:
        """Per provider, the age of its oldest open payment; empty when the store cannot say
        (status must answer during a store outage: that is when an operator needs it)."""
        if not self.store.is_open or self.store_health.reachable is False:
            return {}
        try:
            return await self.reconciler.oldest_open_age_s()
        except StoreUnavailable as exc:
            logger.warning("oldest open payments not read: %s", exc)
            return {}

    async def get_status_summary(self) -> StatusSummary:
        """The compact view of `get_status()`: what an operator reads first."""
        full = await self.get_status()
        return StatusSummary(
            version=full.version,
            run_id=full.run_id,
            started=full.started,
            uptime_s=full.uptime_s,
            overall=full.overall,
            overall_reason=full.overall_reason,
            open_incidents=[i.id for i in full.open_incidents],
            components={
                name: ComponentSummary(
                    mode=c.mode.value,
                    mode_source=c.mode_source,
                    running=c.running,
                    last_tick_at=c.last_tick_at,
                    errors=c.errors,
                    last_error=c.last_error,
                    actions_taken=c.actions_taken,
                    is_leader=c.is_leader,
                    leader=c.leader,
                )
                for name, c in full.components.items()
            },
            providers=[
                ProviderSummary(
                    name=p.name,
                    health=p.health.status.value,
                    breaker=p.lane.breaker_state.value,
                    failed_over_to=p.lane.failed_over_to,
                    error_rate_5m=p.telemetry.error_rate,
                    latency_p95_ms_5m=p.telemetry.latency_p95_ms,
                    requests_per_min_5m=p.telemetry.requests_per_min,
                )
                for p in full.providers
            ],
            scaling=full.scaling,
            scaling_leader=None if full.scaling_leader is None else full.scaling_leader.leader,
            is_leader=full.scaling_leader is not None and full.scaling_leader.is_leader,
            replica=full.replica,
            store_reachable=full.store.reachable,
            events_published=full.events.published,
            events_dropped=full.events.dropped,
        )

    @property
    def uptime_s(self) -> float | None:
        return None if self._started_mono is None else round(self.clock.monotonic() - self._started_mono, 3)

    async def get_stats(self) -> SystemStats:
        """Counters and scores (events counted from the store, so they span restarts)."""
        self.recorder.flush()
        return SystemStats(
            run_id=self.run_id,
            uptime_s=self.uptime_s,
            events_by_type=self.store.count_events_by_type(),
            events_stored=self.store.count_events(),
            manual_actions=self.store.count_audit(),
            manual_actions_by_caller=actions_by_caller(self.store.count_audit_by_client()),
            incidents=self.incidents.stats() if self.store.is_open else {},
            healing=self.self_healer.details(),
            scaling=self.auto_scaler.details(),
            predictions=self.predictive_maintenance.scores(),
            optimizations=self.auto_optimizer.details(),
            payments={
                **(await self.router.stats()),
                "callbacks": dict(self.callbacks.counters),
                "oldest_open_payment_age_s": await self.reconciler.oldest_open_age_s(),
            }
            if self.store.is_open
            else {},
        )

    # --- operator actions ---------------------------------------------------------------
    # Each operator action takes `caller` (who asked: the MCP client, `rest:<address> <agent>`,
    # a library's own name, later an identity) and writes one audit entry through `audited`,
    # ok or refused, whichever surface called it.

    @contextmanager
    def audited(
        self, tool: str, arguments: dict[str, Any], *, caller: str | None, reason: str | None
    ) -> Iterator[ManualAction]:
        """Audit the operator action run in the `with` block: one entry, ok or refused.

        The block sets `action.result` (what a success records); an exception records a refusal
        with its text and propagates unchanged. A cancellation is not an outcome and records
        nothing. `arguments` are recorded as given (withhold secrets before).

        Example:
            with system.audited("heal_provider", {"provider": p, "reason": r}, caller=c, reason=r) as a:
                a.result = {"succeeded": True}
        """
        action = ManualAction()
        recorded = to_jsonable_python(arguments)
        try:
            yield action
        except Exception as exc:
            try:
                self.record_manual_action(
                    tool=tool,
                    arguments=recorded,
                    caller=caller,
                    reason=reason,
                    ok=False,
                    result={"error": _refusal_text(exc)},
                )
            except Exception as audit_exc:  # the refusal is the caller's answer; say what was lost
                logger.error("%s refused, and its audit entry could not be written: %s", tool, audit_exc)
            raise
        action.audit_id = self.record_manual_action(
            tool=tool,
            arguments=recorded,
            caller=caller,
            reason=reason,
            ok=True,
            result=to_jsonable_python(action.result),
        )

    def set_autonomy(
        self, component: str, mode: Mode, *, reason: str, caller: str | None = None
    ) -> ModeChange:
        """The kill switch: set one component (or `all`) to on / off / dry_run. Audited."""
        arguments = {"component": component, "mode": mode, "reason": reason}
        with self.audited("set_autonomy", arguments, caller=caller, reason=reason) as action:
            targets = list(self.components.values()) if component == "all" else [self._component(component)]
            previous = targets[0].mode
            for target in targets:
                target.set_mode(mode, reason=reason)
            action.result = {"previous_mode": previous.value, "mode": mode.value}
        assert action.audit_id is not None, "set after a block that did not raise"
        return ModeChange(previous, mode, action.audit_id)

    def _component(self, name: str) -> Component:
        try:
            return self.components[name]
        except KeyError:
            raise ValueError(
                f"unknown component {name!r}; allowed: {', '.join([*self.components, 'all'])}"
            ) from None

    async def heal_provider(
        self, provider: str, *, reason: str, caller: str | None = None, progress: ProgressFn | None = None
    ) -> HealResult:
        """Run the healing sequence on `provider` now (respects the healer's dry-run mode). Audited."""
        arguments = {"provider": provider, "reason": reason}
        with self.audited("heal_provider", arguments, caller=caller, reason=reason) as action:
            result = await self.self_healer.heal(provider, reason=reason, trigger="manual", progress=progress)
            action.result = {"succeeded": result.succeeded, "dry_run": result.dry_run}
        return result

    async def scale_to(
        self,
        replicas: int,
        *,
        reason: str,
        force: bool = False,
        caller: str | None = None,
        progress: ProgressFn | None = None,
    ) -> ScaleResult:
        """Set the replica count now (operator override), waiting for the rollout. Audited."""
        arguments = {"replicas": replicas, "reason": reason, "force": force}
        with self.audited("scale_to", arguments, caller=caller, reason=reason) as action:
            result = await self.auto_scaler.scale_to(replicas, reason=reason, force=force, progress=progress)
            action.result = result.model_dump(mode="json")
        return result

    async def _maintenance_heal(self, provider: str, reason: str) -> bool | None:
        result = await self.self_healer.heal(provider, reason=reason, trigger="maintenance", dry_run=False)
        return result.succeeded

    def get_incidents(
        self,
        *,
        provider: str | None = None,
        status: IncidentStatus | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[Incident]:
        """Incidents from the store (all runs), newest first."""
        if provider is not None:
            self.providers.get(provider)
        return self.incidents.incidents(provider=provider, status=status, since=since, limit=limit)

    def mark_prediction(
        self, prediction_id: str, verdict: PredictionStatus, *, reason: str, caller: str | None = None
    ) -> Prediction:
        """An operator's verdict on a prediction; see `PredictiveMaintenance.mark_prediction`. Audited."""
        arguments = {"id": prediction_id, "verdict": verdict, "reason": reason}
        with self.audited("mark_prediction", arguments, caller=caller, reason=reason) as action:
            prediction = self.predictive_maintenance.mark_prediction(prediction_id, verdict, reason=reason)
            action.result = {"status": prediction.status.value}
        return prediction

    def get_maintenance_windows(
        self, *, provider: str | None = None, status: MaintenanceStatus | None = None, limit: int = 50
    ) -> list[MaintenanceWindow]:
        """Maintenance windows from the store (all runs), latest start first."""
        if provider is not None:
            self.providers.get(provider)
        windows = self.predictive_maintenance.maintenance.windows(
            provider=provider, status=status, limit=limit
        )
        return list(reversed(windows))

    def cancel_maintenance_window(
        self, window_id: str, *, reason: str, caller: str | None = None
    ) -> MaintenanceWindow:
        """Cancel a window that has not ended (KeyError: unknown id; ValueError: already ended). Audited."""
        arguments = {"id": window_id, "reason": reason}
        with self.audited("cancel_maintenance_window", arguments, caller=caller, reason=reason) as action:
            window = self.predictive_maintenance.maintenance.cancel(window_id, reason=reason)
            action.result = {"status": window.status.value}
        return window

    def get_provider_config(self, provider: str) -> ProviderConfig:
        """A provider's tunables, defaults, bounds, pins and running experiment (UnknownProviderError)."""
        self.providers.get(provider)
        return self.auto_optimizer.provider_config(provider)

    def set_provider_config(
        self,
        provider: str,
        values: dict[str, float] | None,
        *,
        pin: bool = True,
        reason: str,
        release: list[str] | None = None,
        caller: str | None = None,
    ) -> ProviderConfig:
        """Override tunables now; pinned ones are never touched by the optimizer until released.

        `release` names pinned parameters to hand back in the same action (`"*"`: all of them).
        Audited as one action, whatever it changed.
        """
        arguments = {"provider": provider, "reason": reason, "values": values, "pin": pin, "release": release}
        with self.audited("set_provider_config", arguments, caller=caller, reason=reason) as action:
            self.providers.get(provider)
            config = self.auto_optimizer.provider_config(provider)
            if values:
                config = self.auto_optimizer.set_provider_config(provider, values, pin=pin, reason=reason)
            if release:
                config = self.auto_optimizer.release_pins(provider, None if "*" in release else release)
            action.result = config.model_dump(mode="json")
        return config

    def release_provider_config(
        self,
        provider: str,
        parameters: list[str] | None,
        *,
        reason: str | None = None,
        caller: str | None = None,
    ) -> ProviderConfig:
        """Give pinned parameters back to the optimizer (None: all of them). Audited."""
        arguments = {"provider": provider, "parameters": parameters, "reason": reason}
        with self.audited("release_provider_config", arguments, caller=caller, reason=reason) as action:
            self.providers.get(provider)
            config = self.auto_optimizer.release_pins(provider, parameters)
            action.result = config.model_dump(mode="json")
        return config

    def revert_optimization(
        self, optimization_id: str, *, reason: str, caller: str | None = None
    ) -> Optimization:
        """Undo one optimization (KeyError: unknown id; ValueError: cannot be reverted, says why). Audited."""
        arguments = {"id": optimization_id, "reason": reason}
        with self.audited("revert_optimization", arguments, caller=caller, reason=reason) as action:
            optimization = self.auto_optimizer.revert_optimization(optimization_id, reason=reason)
            action.result = {"status": optimization.status.value}
        return optimization

    def query_events(
        self,
        *,
        provider: str | None = None,
        types: list[EventType] | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """Events from the store (all runs), newest `limit`, oldest first."""
        self.recorder.flush()
        return self.store.query_events(types=types or (), provider=provider, since=since, limit=limit)

    def record_manual_action(
        self,
        *,
        tool: str,
        arguments: dict[str, Any],
        client: str | None = None,
        caller: str | None = None,
        reason: str | None,
        ok: bool,
        result: Any,
    ) -> int:
        """Write the audit log entry for a manual action and publish it as an event.

        Operator actions call this through `audited`; it stays public for actions recorded by
        hand. `caller` names who acted (`mcp:<client>`, `rest:<address> <agent>`, later an identity);
        `client` is its older name, kept for existing callers. Either is recorded in the audit
        row's `client` field; giving both with different values is a programming error.
        """
        if caller is not None and client is not None and caller != client:
            raise ValueError(
                f"record_manual_action: caller {caller!r} and client {client!r} differ; give one"
            )
        client = caller if caller is not None else client
        audit_id = self.store.record_audit(
            timestamp=self.clock.now(),
            tool=tool,
            arguments=arguments,
            client=client,
            reason=reason,
            ok=ok,
            result=result,
        )
        self.events.emit(
            EventType.MANUAL_ACTION,
            component="operator",
            provider=arguments.get("provider") if isinstance(arguments.get("provider"), str) else None,
            severity=Severity.INFO if ok else Severity.WARNING,
            message=f"{tool} by {client or 'unknown client'}: {'ok' if ok else 'refused'}"
            + (f" ({reason})" if reason else ""),
            data={"tool": tool, "arguments": arguments, "audit_id": audit_id, "ok": ok},
        )
        return audit_id

    def audit_log(self, *, tool: str | None = None, limit: int = 100) -> list[AuditRecord]:
        return self.store.audit_log(tool=tool, limit=limit)
