"""Prometheus /metrics: scraped from the real server over HTTP and parsed with prometheus-client's parsers."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import Client
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from mcp_autonomy.autonomy.scaling import ReplicaState, ScaleBackendError
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings
from mcp_autonomy.events import EventBus, EventType
from mcp_autonomy.server.metrics import EventCounter, MetricsExporter
from mcp_autonomy.telemetry import LATENCY_BUCKETS_MS, Outcome, ProviderTelemetry
from tests.fakes import ScriptedAdapter
from tests.server.harness import HttpServer, http_server

TOKEN = "metrics-t0ken-for-tests"
ENGINE_FAMILIES = {
    "mcp_autonomy_build_info": "gauge",
    "mcp_autonomy_provider_requests": "counter",
    "mcp_autonomy_provider_latency_seconds": "histogram",
    "mcp_autonomy_breaker_state": "gauge",
    "mcp_autonomy_provider_health": "gauge",
    "mcp_autonomy_provider_failed_over": "gauge",
    "mcp_autonomy_provider_probes": "counter",
    "mcp_autonomy_events": "counter",
    "mcp_autonomy_route_changes": "counter",
    "mcp_autonomy_healings": "counter",
    "mcp_autonomy_scaling_actions": "counter",
    "mcp_autonomy_scaling_decisions": "counter",
    "mcp_autonomy_predictions": "counter",
    "mcp_autonomy_prediction_outcomes": "counter",
    "mcp_autonomy_optimizations": "counter",
    "mcp_autonomy_incidents_opened": "counter",
    "mcp_autonomy_open_incidents": "gauge",
    "mcp_autonomy_component_mode": "gauge",
    "mcp_autonomy_desired_replicas": "gauge",
}
LABELS = {
    "mcp_autonomy_provider_requests": {"provider", "outcome"},
    "mcp_autonomy_provider_latency_seconds": {"provider", "le"},
    "mcp_autonomy_breaker_state": {"provider", "state"},
    "mcp_autonomy_route_changes": {"provider", "change"},
    "mcp_autonomy_healings": {"provider", "result"},
    "mcp_autonomy_scaling_actions": {"direction", "trigger"},
    "mcp_autonomy_predictions": {"provider", "type"},
    "mcp_autonomy_optimizations": {"provider", "status"},
}
SANDBOX_PROVIDERS = {"mpesa", "paystack", "mtn_momo", "airtel_money", "intasend", "flutterwave"}


def parse(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Metric], family: str, sample: str | None = None, **labels: str) -> float:
    """The one sample of `family` named `sample` (default: the family's own) with these labels."""
    wanted = sample or family
    matches = [
        s.value
        for s in families[family].samples
        if s.name == wanted and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) == 1, (family, wanted, labels, matches)
    return matches[0]


def scrape(client: httpx.Client) -> dict[str, Metric]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def request_payment(url: str, key: str) -> dict[str, Any]:
    async with Client(url, mode="legacy", read_timeout_seconds=60) as client:
        result = await client.call_tool(
            "request_payment",
            {
                "idempotency_key": key,
                "amount_minor": 15000,
                "currency": "KES",
                "phone": "0712345678",
                "country": "KE",
            },
        )
        assert not result.is_error, result.content
        record: dict[str, Any] | None = result.structured_content
        assert record is not None
        return record


# --- the server, end to end -----------------------------------------------------------------


def test_scrape_has_every_family_and_moves_after_a_payment_a_heal_and_a_scale(
    shared_http_server: HttpServer,
) -> None:
    server = shared_http_server
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        before = scrape(client)
        for name, kind in ENGINE_FAMILIES.items():
            assert name in before, name
            assert before[name].type == kind, (name, before[name].type)
            assert before[name].samples, name
        for name, labels in LABELS.items():
            assert {k for s in before[name].samples for k in s.labels} == labels, name
        for name in ("process_cpu_seconds", "process_resident_memory_bytes", "python_info"):
            assert name in before, name
        status = client.get("/autonomous/status").json()
        assert (
            value(before, "mcp_autonomy_build_info", run_id=status["run_id"], version=status["version"]) == 1
        )

        providers = {s.labels["provider"] for s in before["mcp_autonomy_breaker_state"].samples}
        assert providers == SANDBOX_PROVIDERS
        for provider in providers:
            states = {
                s.labels["state"]: s.value
                for s in before["mcp_autonomy_breaker_state"].samples
                if s.labels["provider"] == provider
            }
            assert sum(states.values()) == 1 and states["closed"] == 1, (provider, states)
            health = [
                s for s in before["mcp_autonomy_provider_health"].samples if s.labels["provider"] == provider
            ]
            assert sum(s.value for s in health) == 1, provider
            for change in ("failover", "fail_back"):
                changes = value(
                    before,
                    "mcp_autonomy_route_changes",
                    "mcp_autonomy_route_changes_total",
                    provider=provider,
                    change=change,
                )
                assert changes == 0
        assert value(before, "mcp_autonomy_open_incidents") == 0
        assert value(before, "mcp_autonomy_desired_replicas", backend="local") == 2
        assert "mcp_autonomy_ready_replicas" not in before  # the local backend cannot observe readiness
        assert value(before, "mcp_autonomy_component_mode", component="self_healer", mode="on") == 1

        record = anyio.run(request_payment, server.url, "metrics-collect-0001")
        provider = record["provider"]
        heal = client.post("/autonomous/heal/mpesa", json={"reason": "metrics test heal"})
        assert heal.status_code == 200, heal.text
        scale = client.post("/autonomous/scale", json={"replicas": 3, "reason": "metrics test scale"})
        assert scale.status_code == 200, scale.text

        after = scrape(client)

    def delta(family: str, sample: str | None = None, **labels: str) -> float:
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    requests = "mcp_autonomy_provider_requests"
    assert delta(requests, f"{requests}_total", provider=provider, outcome="success") >= 1
    latency = "mcp_autonomy_provider_latency_seconds"
    assert delta(latency, f"{latency}_count", provider=provider) >= 1
    assert value(after, latency, f"{latency}_sum", provider=provider) > 0
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in after[latency].samples
        if s.name == f"{latency}_bucket" and s.labels["provider"] == provider
    )
    assert [b for b, _ in buckets] == [*(ms / 1000 for ms in LATENCY_BUCKETS_MS), float("inf")]
    assert all(a[1] <= b[1] for a, b in pairwise(buckets))
    assert buckets[-1][1] == value(after, latency, f"{latency}_count", provider=provider)

    assert (
        delta("mcp_autonomy_healings", "mcp_autonomy_healings_total", provider="mpesa", result="succeeded")
        == 1
    )
    assert delta("mcp_autonomy_events", "mcp_autonomy_events_total", type="healing_event") == 1
    # the heal, the scale, and the payment (payments submitted over MCP are audited with their caller)
    assert delta("mcp_autonomy_events", "mcp_autonomy_events_total", type="manual_action") == 3
    scaled = delta(
        "mcp_autonomy_scaling_actions", "mcp_autonomy_scaling_actions_total", direction="up", trigger="manual"
    )
    assert scaled == 1
    assert value(after, "mcp_autonomy_desired_replicas", backend="local") == 3
    probes = delta(
        "mcp_autonomy_provider_probes", "mcp_autonomy_provider_probes_total", provider="mpesa", result="ok"
    )
    assert probes >= 1


def test_openmetrics_when_asked(shared_http_server: HttpServer) -> None:
    response = httpx.get(
        f"{shared_http_server.base_url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(response.text)}  # type: ignore[no-untyped-call]
    assert families["mcp_autonomy_provider_requests"].type == "counter"
    assert families["mcp_autonomy_build"].type == "info"


@pytest.mark.parametrize("public", [False, True])
def test_metrics_are_behind_the_bearer_token_unless_public(tmp_path: Path, public: bool) -> None:
    env = {"MCP_AUTONOMY_BEARER_TOKEN": TOKEN}
    if public:
        env["MCP_AUTONOMY_METRICS_PUBLIC"] = "true"
    with http_server(tmp_path, env=env) as server:
        anonymous = httpx.get(f"{server.base_url}/metrics")
        assert anonymous.status_code == (200 if public else 401)
        with_token = httpx.get(f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert with_token.status_code == 200
        assert "mcp_autonomy_provider_requests" in parse(with_token.text)
        assert TOKEN not in with_token.text
        # Only /metrics is opened: the REST API and MCP still want the token.
        assert httpx.get(f"{server.base_url}/autonomous/status").status_code == 401
        assert httpx.post(server.url, json={}).status_code == 401


# --- the pieces, in process -----------------------------------------------------------------

samples = st.lists(
    st.tuples(st.sampled_from(list(Outcome)), st.floats(min_value=0.0, max_value=120_000.0)), max_size=300
)


@settings(max_examples=60, deadline=None)
@given(samples)
def test_cumulative_counters_equal_a_recount_and_outlive_the_ring(
    recorded: list[tuple[Outcome, float]],
) -> None:
    clock = ManualClock()
    telemetry = ProviderTelemetry("p", clock)
    for outcome, latency_ms in recorded:
        clock._elapsed_s += 30.0  # the windows forget (10 min in 20 calls); the counters must not
        telemetry.record(outcome, latency_ms)
    counts = Counter(outcome for outcome, _ in recorded)
    assert telemetry.outcome_totals == [counts[o] for o in Outcome]
    reached = [latency for outcome, latency in recorded if outcome is not Outcome.REJECTED]
    assert sum(telemetry.latency_bucket_counts) == len(reached)
    cumulative = 0
    for i, bound in enumerate(LATENCY_BUCKETS_MS):
        cumulative += telemetry.latency_bucket_counts[i]
        assert cumulative == sum(1 for latency in reached if latency <= bound)  # `le` is inclusive
    assert telemetry.latency_bucket_counts[-1] == sum(
        1 for latency in reached if latency > LATENCY_BUCKETS_MS[-1]
    )
    assert telemetry.latency_sum_ms == pytest.approx(sum(reached))


def test_event_counter_counts_this_run_from_its_history_and_stops_when_detached() -> None:
    bus = EventBus(ManualClock())
    bus.emit(EventType.PROVIDER_REGISTERED, component="system", provider="mpesa", message="before attach")
    counter = EventCounter(bus)
    counter.attach()
    counter.attach()  # idempotent: nothing counted twice
    bus.emit(
        EventType.HEALING_EVENT,
        component="self_healer",
        provider="mpesa",
        message="healed",
        data={"action": "heal", "succeeded": True},
    )
    bus.emit(
        EventType.HEALING_EVENT,
        component="self_healer",
        provider="mpesa",
        message="dry",
        dry_run=True,
        data={"action": "heal", "succeeded": None},
    )
    bus.emit(
        EventType.PROVIDER_RECOVERED,
        component="router",
        provider="mpesa",
        message="fail-back",
        data={"action": "fail_back"},
    )
    assert counter.counts == {
        (EventType.PROVIDER_REGISTERED, "mpesa", ""): 1,
        (EventType.HEALING_EVENT, "mpesa", "succeeded"): 1,
        (EventType.HEALING_EVENT, "mpesa", "dry_run"): 1,
        (EventType.PROVIDER_RECOVERED, "mpesa", "fail_back"): 1,
    }
    counter.detach()
    bus.emit(EventType.PROVIDER_REGISTERED, component="system", provider="mpesa", message="after detach")
    assert counter.counts[(EventType.PROVIDER_REGISTERED, "mpesa", "")] == 1


class FakeBackend:
    """A scale backend whose readiness is observable, or which fails on demand."""

    name = "fake"

    def __init__(self) -> None:
        self.fail = False

    async def read(self) -> ReplicaState:
        if self.fail:
            raise ScaleBackendError("the API is down")
        return ReplicaState(backend=self.name, target="test", desired=3, ready=2, external_effect=True)

    async def set_desired(self, replicas: int) -> ReplicaState:
        return await self.read()


@pytest.mark.anyio
async def test_route_changes_and_replicas_from_the_engine_in_process(settings: Settings) -> None:
    backend = FakeBackend()
    system = AutonomousSystem(settings, clock=ManualClock(), scale_backend=backend)
    system.register_provider(ScriptedAdapter("mpesa"))
    system.register_provider(ScriptedAdapter("paystack"), backups=[])
    system.set_backup_providers("mpesa", ["paystack"])
    exporter = MetricsExporter(system)
    second = MetricsExporter(system)  # a registry per app: two apps never collide
    system.store.open()
    try:
        system.router.fail_over("mpesa", "paystack", reason="test")
        failed_over = parse((await exporter.scrape())[0].decode())
        system.router.fail_back("mpesa", reason="test")
        body, content_type = await second.scrape()
        families = parse(body.decode())
        backend.fail = True
        without_backend = parse((await exporter.scrape())[0].decode())
    finally:
        system.store.close()
    assert content_type.startswith("text/plain")
    assert value(failed_over, "mcp_autonomy_provider_failed_over", provider="mpesa") == 1
    changes = "mcp_autonomy_route_changes"
    assert value(families, changes, f"{changes}_total", provider="mpesa", change="failover") == 1
    assert value(families, changes, f"{changes}_total", provider="mpesa", change="fail_back") == 1
    assert value(families, "mcp_autonomy_provider_failed_over", provider="mpesa") == 0
    assert value(families, "mcp_autonomy_desired_replicas", backend="fake") == 3
    assert value(families, "mcp_autonomy_ready_replicas", backend="fake") == 2
    assert "mcp_autonomy_desired_replicas" not in without_backend  # skipped, the rest still served
    assert "mcp_autonomy_provider_requests" in without_backend
    assert "mcp_autonomy_provider_requests_total" not in {
        s.name for f in REGISTRY.collect() for s in f.samples
    }
