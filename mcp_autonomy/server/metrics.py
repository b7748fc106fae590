"""Prometheus `/metrics`: one registry per app, filled from the engine at scrape time.

Nothing is counted twice. Request outcomes and latency histograms are the telemetry's own
cumulative counters (`ProviderTelemetry.outcome_totals`, `latency_bucket_counts`), breaker,
health, replicas and open incidents are read from the engine when Prometheus asks, and the
action counters (route changes, healings, scaling, predictions, optimizations) are event counts
kept by one event-bus listener. The listener (a dict increment per event) rather than the
store's `GROUP BY` keeps a scrape O(labels) however many events the store holds; like every
Prometheus counter these start at zero with the process.

Latency is a real histogram, not a summary computed from the ring at scrape time: cumulative
buckets survive the ring's overwriting, add up across replicas (`histogram_quantile` over
`sum by (le)`), and cost one bisect over 13 bounds per recorded call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import anyio
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_autonomy import __version__
from mcp_autonomy.autonomy.component import Mode
from mcp_autonomy.autonomy.optimizer import OptimizationStatus
from mcp_autonomy.autonomy.predictor import PredictionStatus, PredictionType
from mcp_autonomy.autonomy.scaling import ReplicaState
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.events import Event, EventBus, EventType
from mcp_autonomy.providers.base import TransactionStatus
from mcp_autonomy.resilience.breaker import BreakerState
from mcp_autonomy.resilience.health import HealthStatus
from mcp_autonomy.telemetry import LATENCY_BUCKETS_MS, Outcome

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
NAMESPACE = "mcp_autonomy"
REPLICA_READ_TIMEOUT_S = 2.0
"""A scrape waits at most this long for the scale backend; past it the replica gauges are left out."""
SYSTEM_LABEL = "system"
"""The `provider` label of what concerns no single provider (a system-wide incident)."""

_LATENCY_BOUNDS_S: tuple[str, ...] = tuple(
    floatToGoString(bound_ms / 1000)  # type: ignore[no-untyped-call]  # the `le` spelling Prometheus uses
    for bound_ms in LATENCY_BUCKETS_MS
)
_OUTCOME_LABELS = tuple(o.name.lower() for o in Outcome)
EventKey = tuple[EventType, str, str]
"""(type, provider or "", detail): the detail is the one label that type's counter adds."""


def _event_detail(event: Event) -> str:
    """The label that says how an action went, from the event's own data."""
    data = event.data
    kind = event.type
    if kind is EventType.HEALING_EVENT:
        action = data.get("action", "heal")
        if action != "heal":
            return str(action)
        if event.dry_run:
            return "dry_run"
        return "succeeded" if data.get("succeeded") else "failed"
    if kind is EventType.PROVIDER_RECOVERED:
        return "fail_back" if data.get("action") == "fail_back" else "recovered"
    if kind in (EventType.SCALED_UP, EventType.SCALED_DOWN):
        return str(data.get("trigger", "unknown"))
    if kind is EventType.PREDICTION:
        return str(data.get("type", "unknown"))
    if kind is EventType.PREDICTION_OUTCOME:
        return str(data.get("to", "unknown"))
    if kind is EventType.OPTIMIZATION_APPLIED:
        return str(data.get("status", "unknown"))
    return ""


def _summed(
    name: str,
    documentation: str,
    labels: list[str],
    zeros: Iterable[tuple[str, ...]],
    samples: Iterable[tuple[tuple[str, ...], int]],
) -> CounterMetricFamily:
    """A counter family from (label values, count) pairs, summed, every `zeros` label set present."""
    totals = dict.fromkeys(zeros, 0)
    for values, n in samples:
        totals[values] = totals.get(values, 0) + n
    family = CounterMetricFamily(f"{NAMESPACE}_{name}", documentation, labels=labels)
    for values, n in totals.items():
        family.add_metric(list(values), n)
    return family


class EventCounter:
    """Counts published events by (type, provider, detail) with one bus listener."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self.counts: dict[EventKey, int] = {}
        self._detach: Callable[[], None] | None = None

    def attach(self) -> None:
        """Count what the bus still holds of this run, then every event published from now on."""
        if self._detach is not None:
            return
        for event in self._bus.history(limit=self._bus.history_size):
            self(event)
        self._detach = self._bus.add_listener(self)

    def detach(self) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None

    def __call__(self, event: Event) -> None:
        try:
            key = (event.type, event.provider or "", _event_detail(event))
        except Exception:  # a listener must never raise into the publisher
            key = (event.type, event.provider or "", "unknown")
        self.counts[key] = self.counts.get(key, 0) + 1

    def by(self, *types: EventType) -> Iterator[tuple[EventKey, int]]:
        wanted = frozenset(types)
        return ((key, n) for key, n in self.counts.items() if key[0] in wanted)


class EngineCollector:
    """A prometheus-client collector reading one `AutonomousSystem` at scrape time."""

    def __init__(self, system: AutonomousSystem, events: EventCounter) -> None:
        self.system = system
        self.events = events
        self.replicas: ReplicaState | None = None
        """Set by the scrape handler just before collecting (reading it is async, `collect` is not)."""
        self.oldest_open_s: dict[str, float] = {}
        self.payments_by_status: dict[str, int] = {}
        """Read from the payment store by the scrape handler, like `replicas`."""

    def collect(self) -> Iterable[Metric]:
        sections: tuple[Callable[[], Iterable[Metric]], ...] = (
            self._build_info,
            self._providers,
            self._event_counters,
            self._engine_gauges,
        )
        for section in sections:
            try:
                yield from list(section())
            except Exception:  # one broken section must not cost the whole scrape
                logger.exception("metrics: %s failed", section.__name__)

    # --- sections -----------------------------------------------------------------------

    def _build_info(self) -> Iterable[Metric]:
        info = InfoMetricFamily(f"{NAMESPACE}_build", "The running server: version and this run's id")
        info.add_metric([], {"version": __version__, "run_id": self.system.run_id})
        yield info

    def _providers(self) -> Iterable[Metric]:
        system = self.system
        requests = CounterMetricFamily(
            f"{NAMESPACE}_provider_requests",
            "Provider calls by how they ended (rejected: refused locally by the breaker or rate limit)",
            labels=["provider", "outcome"],
        )
        latency = HistogramMetricFamily(
            f"{NAMESPACE}_provider_latency_seconds",
            "Latency of the provider calls that reached the provider",
            labels=["provider"],
        )
        breaker = GaugeMetricFamily(
            f"{NAMESPACE}_breaker_state",
            "Circuit breaker state of each provider's lane: 1 for the current state",
            labels=["provider", "state"],
        )
        health = GaugeMetricFamily(
            f"{NAMESPACE}_provider_health",
            "Each provider's health as the engine judges it: 1 for the current status",
            labels=["provider", "status"],
        )
        failed_over = GaugeMetricFamily(
            f"{NAMESPACE}_provider_failed_over",
            "1 while the provider's traffic goes to its backups first",
            labels=["provider"],
        )
        probes = CounterMetricFamily(
            f"{NAMESPACE}_provider_probes",
            "Active health probes by result",
            labels=["provider", "result"],
        )
        routed_away = system.router.failed_over
        for entry in system.providers.entries():
            name = entry.name
            telemetry = system.telemetry.provider(name)
            for label, total in zip(_OUTCOME_LABELS, telemetry.outcome_totals, strict=True):
                requests.add_metric([name, label], total)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, in_bucket in zip(_LATENCY_BOUNDS_S, telemetry.latency_bucket_counts, strict=False):
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            buckets.append(("+Inf", cumulative + telemetry.latency_bucket_counts[-1]))
            latency.add_metric([name], buckets, sum_value=telemetry.latency_sum_ms / 1000)
            current_breaker = system.router.lane_status(name).breaker_state
            for state in BreakerState:
                breaker.add_metric([name, state.value], 1.0 if state is current_breaker else 0.0)
            for status in HealthStatus:
                health.add_metric([name, status.value], 1.0 if status is entry.health.status else 0.0)
            failed_over.add_metric([name], 1.0 if name in routed_away else 0.0)
            probes.add_metric([name, "ok"], entry.health.probes_total - entry.health.probes_failed)
            probes.add_metric([name, "failed"], entry.health.probes_failed)
        yield from (requests, latency, breaker, health, failed_over, probes)

    def _event_counters(self) -> Iterable[Metric]:
        # Every label set that can occur for a registered provider starts at zero, so `rate()` and
        # `increase()` see the first event instead of a series appearing out of nowhere.
        by = self.events.by
        providers = self.system.providers.names()
        yield _summed(
            "events",
            "Events published by this process, by type",
            ["type"],
            [(t.value,) for t in EventType],
            (((kind.value,), n) for (kind, _, _), n in self.events.counts.items()),
        )
        yield _summed(
            "route_changes",
            "Route changes: a provider failed over to its backups (failover) or given its traffic back (fail_back)",
            ["provider", "change"],
            [(p, change) for p in providers for change in ("failover", "fail_back")],
            (
                ((provider, "failover" if kind is EventType.FAILOVER_TRIGGERED else "fail_back"), n)
                for (kind, provider, detail), n in by(
                    EventType.FAILOVER_TRIGGERED, EventType.PROVIDER_RECOVERED
                )
                if kind is EventType.FAILOVER_TRIGGERED or detail == "fail_back"
            ),
        )
        yield _summed(
            "healings",
            "Healing runs (automatic, manual, maintenance) by result; manual_intervention_required when the "
            "automatic attempts ran out",
            ["provider", "result"],
            [(p, result) for p in providers for result in ("succeeded", "failed", "dry_run")],
            (((provider, detail), n) for (_, provider, detail), n in by(EventType.HEALING_EVENT)),
        )
        yield _summed(
            "scaling_actions",
            "Replica count changes by direction and trigger (automatic, manual)",
            ["direction", "trigger"],
            [(d, t) for d in ("up", "down") for t in ("automatic", "manual")],
            (
                (("up" if kind is EventType.SCALED_UP else "down", trigger), n)
                for (kind, _, trigger), n in by(EventType.SCALED_UP, EventType.SCALED_DOWN)
            ),
        )
        yield _summed(
            "scaling_decisions",
            "Scaler decisions recorded (dry-run ones included)",
            [],
            [()],
            (((), n) for _, n in by(EventType.SCALING_DECISION)),
        )
        yield _summed(
            "predictions",
            "Predictions raised, by predicted type",
            ["provider", "type"],
            [(p, t.value) for p in providers for t in PredictionType],
            (((provider, detail), n) for (_, provider, detail), n in by(EventType.PREDICTION)),
        )
        yield _summed(
            "prediction_outcomes",
            "Verdicts on predictions",
            ["provider", "outcome"],
            [(p, s.value) for p in providers for s in PredictionStatus if s is not PredictionStatus.ACTIVE],
            (((provider, detail), n) for (_, provider, detail), n in by(EventType.PREDICTION_OUTCOME)),
        )
        yield _summed(
            "optimizations",
            "Optimization records published, by status",
            ["provider", "status"],
            [(p, s.value) for p in providers for s in OptimizationStatus],
            (((provider, detail), n) for (_, provider, detail), n in by(EventType.OPTIMIZATION_APPLIED)),
        )
        yield _summed(
            "incidents_opened",
            f"Incidents opened (provider={SYSTEM_LABEL}: system-wide)",
            ["provider"],
            [(p,) for p in [*providers, SYSTEM_LABEL]],
            (((provider or SYSTEM_LABEL,), n) for (_, provider, _), n in by(EventType.INCIDENT_OPENED)),
        )

    def _engine_gauges(self) -> Iterable[Metric]:
        system = self.system
        open_incidents = GaugeMetricFamily(f"{NAMESPACE}_open_incidents", "Incidents open now")
        open_incidents.add_metric([], len(system.incidents.open_incidents()))
        yield open_incidents

        modes = GaugeMetricFamily(
            f"{NAMESPACE}_component_mode",
            "Each autonomy loop's mode (the kill switch): 1 for the current mode",
            labels=["component", "mode"],
        )
        for name, component in system.components.items():
            for mode in Mode:
                modes.add_metric([name, mode.value], 1.0 if component.mode is mode else 0.0)
        yield modes

        oldest = GaugeMetricFamily(
            f"{NAMESPACE}_oldest_open_payment_age_seconds",
            "Age of each provider's oldest payment not yet final (pending, unknown, needs_reconciliation); "
            "0 when it has none",
            labels=["provider"],
        )
        for name in system.providers.names():
            oldest.add_metric([name], self.oldest_open_s.get(name, 0.0))
        yield oldest
        payments = GaugeMetricFamily(
            f"{NAMESPACE}_payments",
            "Payments in the store by status (needs_reconciliation: an operator must resolve them)",
            labels=["status"],
        )
        for status in TransactionStatus:
            payments.add_metric([status.value], float(self.payments_by_status.get(status.value, 0)))
        yield payments

        tpm = system.telemetry.transactions_per_minute()
        if tpm is not None:
            load = GaugeMetricFamily(
                f"{NAMESPACE}_transactions_per_minute",
                "Payments per minute through this replica over the last minute (the scaler's load)",
            )
            load.add_metric([], tpm)
            yield load

        state = self.replicas
        if state is not None:
            desired = GaugeMetricFamily(
                f"{NAMESPACE}_desired_replicas",
                "Replica count the scale backend is set to",
                labels=["backend"],
            )
            desired.add_metric([state.backend], state.desired)
            yield desired
            if state.ready is not None:
                ready = GaugeMetricFamily(
                    f"{NAMESPACE}_ready_replicas",
                    "Replicas ready, as the scale backend reports",
                    labels=["backend"],
                )
                ready.add_metric([state.backend], state.ready)
                yield ready


class MetricsExporter:
    """The registry of one HTTP app: the engine collector plus the process and platform collectors."""

    def __init__(self, system: AutonomousSystem) -> None:
        self.system = system
        self.registry = CollectorRegistry(auto_describe=False)
        self.events = EventCounter(system.events)
        self.events.attach()
        self.collector = EngineCollector(system, self.events)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    async def read_replicas(self) -> ReplicaState | None:
        """The scale backend's replica counts, or None when it cannot answer promptly."""
        if not self.system.store.is_open:  # the local backend keeps its count in the store
            return None
        with anyio.move_on_after(REPLICA_READ_TIMEOUT_S):
            try:
                return await self.system.auto_scaler.backend.read()
            except Exception as exc:  # an unreachable backend leaves the replica gauges out
                logger.debug("metrics: reading replica state failed: %s", exc)
        return None

    async def scrape(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics when `accept` asks for it)."""
        replicas = await self.read_replicas()
        oldest: dict[str, float] = {}
        by_status: dict[str, int] = {}
        if self.system.store.is_open:
            oldest = await self.system.reconciler.oldest_open_age_s()
            by_status = await self.system.payments.count_by_status()
        encoder, content_type = choose_encoder(accept)
        # No await between setting the state and collecting: concurrent scrapes cannot mix.
        self.collector.replicas = replicas
        self.collector.oldest_open_s = oldest
        self.collector.payments_by_status = by_status
        return encoder(self.registry), content_type

    async def endpoint(self, request: Request) -> Response:
        body, content_type = await self.scrape(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)


def metrics_route(system: AutonomousSystem) -> Route:
    """`GET /metrics` for `system` (the bearer-token rule is the HTTP app's)."""
    exporter = MetricsExporter(system)
    return Route(METRICS_PATH, exporter.endpoint, methods=["GET"])
