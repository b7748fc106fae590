"""Cluster load: the leader sums `GET /internal/load` over the ready pods of the Service.

Each "pod" is the real HTTP app (`create_http_app`, bearer token on) of its own engine, served by
uvicorn on its own loopback address (127.0.0.1, 127.0.0.2, ...) and one shared port, as pods
share the container port. The pod list comes from the test Kubernetes API server.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import SocketStream

from mcp_autonomy.autonomy.scaling.cluster_load import (
    LOAD_PATH,
    ClusterLoad,
    ClusterLoadError,
    LoadMeter,
    LocalLoad,
    label_selector,
)
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import load_settings
from mcp_autonomy.sandbox.server import running_sandbox
from mcp_autonomy.server.http import create_http_app
from mcp_autonomy.server.mcp import McpApp
from mcp_autonomy.telemetry import Outcome, Telemetry
from tests.kubernetes.apiserver import RunningApiServer, deployment, endpoint_slice, running_apiserver

pytestmark = pytest.mark.anyio

NAMESPACE = "payments"
SERVICE = "mcp-autonomy"
TOKEN = "pod-network-t0ken"
LABELS = {"app.kubernetes.io/name": "mcp-autonomy"}


@pytest.fixture(autouse=True)
def _no_developer_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # settings must not pick up a developer's .env


def pod_system(tmp_path: Path, name: str, ip: str, clock: ManualClock, payments: int) -> AutonomousSystem:
    """An engine that has routed `payments` payments in the last minute."""
    settings = load_settings(state_dir=tmp_path / name, pod_name=name, bearer_token=TOKEN, host=ip)
    system = AutonomousSystem(settings, clock=clock)
    for _ in range(payments):
        system.telemetry.record_payment(Outcome.SUCCESS, 12.0)
    return system


@dataclass
class Pods:
    port: int
    systems: dict[str, AutonomousSystem]


@asynccontextmanager
async def serving_pods(tmp_path: Path, loads: dict[str, tuple[str, int]]) -> AsyncIterator[Pods]:
    """Serve one real app per pod: name -> (ip, payments in the last minute), all on one port."""
    clock = ManualClock()
    port = 0
    systems: dict[str, AutonomousSystem] = {}
    async with AsyncExitStack() as stack:
        for name, (ip, payments) in loads.items():
            system = systems[name] = pod_system(tmp_path, name, ip, clock, payments)
            app = create_http_app(system, McpApp(system))
            address = await stack.enter_async_context(running_sandbox(app, ip, port, gated=False))
            port = address.port
        yield Pods(port, systems)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def silent_pod(ip: str, port: int) -> AsyncIterator[None]:
    """Accepts connections and never answers (a pod stuck under load)."""
    listener = await anyio.create_tcp_listener(local_host=ip, local_port=port)
    parked: list[SocketStream] = []

    async def hold(stream: SocketStream) -> None:
        parked.append(stream)
        await anyio.sleep_forever()

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, hold)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


def meter(api: RunningApiServer, port: int, **kwargs: Any) -> ClusterLoad:
    options: dict[str, Any] = {"bearer_token": TOKEN, "pod_timeout_s": 0.5, **kwargs}
    return ClusterLoad(
        api.api_client(),
        namespace=NAMESPACE,
        service=SERVICE,
        deployment=SERVICE,
        port=port,
        clock=ManualClock(),
        **options,
    )


def with_pod_names(slice_obj: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Add the `targetRef` the EndpointSlice controller writes (ip -> pod name)."""
    for endpoint in slice_obj["endpoints"]:
        name = names.get(endpoint["addresses"][0])
        if name is not None:
            endpoint["targetRef"] = {"kind": "Pod", "name": name, "namespace": NAMESPACE}
    return slice_obj


def pod(name: str, ip: str, *, ready: bool, phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "labels": dict(LABELS)}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": [{"name": "mcp-autonomy", "image": "registry.example/mcp-autonomy:test"}]},
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


async def test_sums_the_ready_endpoints_and_flags_missing_pods_as_partial(tmp_path: Path) -> None:
    loads = {"pod-a": ("127.0.0.1", 120), "pod-b": ("127.0.0.2", 30), "pod-c": ("127.0.0.3", 500)}
    async with running_apiserver() as api, serving_pods(tmp_path, loads) as pods:
        port = pods.port
        api.state.put(
            endpoint_slice(
                NAMESPACE,
                SERVICE,
                [
                    ("127.0.0.1", port, True),
                    ("127.0.0.2", port, True),
                    ("127.0.0.3", port, False),  # not ready: left out, never asked
                    ("127.0.0.4", port, True),  # ready but nothing answers there
                ],
            )
        )
        reading = await meter(api, port).measure()
    assert reading.source == "endpointslices"
    assert reading.tpm == pytest.approx(150.0)
    assert (reading.pods_total, reading.pods_answered, reading.partial) == (3, 2, True)
    by_address = {p.address: p for p in reading.per_pod}
    assert set(by_address) == {f"127.0.0.{i}:{port}" for i in (1, 2, 4)}
    assert by_address[f"127.0.0.1:{port}"].pod == "pod-a"  # named by its own answer
    assert by_address[f"127.0.0.1:{port}"].transactions_per_minute == pytest.approx(120.0)
    missing = by_address[f"127.0.0.4:{port}"]
    assert not missing.answered and missing.transactions_per_minute is None
    assert missing.pod == f"127.0.0.4:{port}" and "ConnectError" in (missing.error or "")


async def test_all_answering_is_not_partial_and_pods_are_named_from_the_slice(tmp_path: Path) -> None:
    loads = {"pod-a": ("127.0.0.1", 60), "pod-b": ("127.0.0.2", 45)}
    async with running_apiserver() as api, serving_pods(tmp_path, loads) as pods:
        addresses = [("127.0.0.1", pods.port, True), ("127.0.0.2", pods.port, True)]
        names = {"127.0.0.1": "mcp-autonomy-7d9f-a", "127.0.0.2": "mcp-autonomy-7d9f-b"}
        api.state.put(with_pod_names(endpoint_slice(NAMESPACE, SERVICE, addresses), names))
        reading = await meter(api, pods.port).measure()
    assert reading.tpm == pytest.approx(105.0)
    assert (reading.pods_total, reading.pods_answered, reading.partial) == (2, 2, False)
    assert [p.pod for p in reading.per_pod] == ["mcp-autonomy-7d9f-a", "mcp-autonomy-7d9f-b"]


async def test_a_pod_that_hangs_is_missing_after_the_timeout(tmp_path: Path) -> None:
    async with (
        running_apiserver() as api,
        serving_pods(tmp_path, {"pod-a": ("127.0.0.1", 90)}) as pods,
        silent_pod("127.0.0.5", pods.port),
    ):
        addresses = [("127.0.0.1", pods.port, True), ("127.0.0.5", pods.port, True)]
        api.state.put(endpoint_slice(NAMESPACE, SERVICE, addresses))
        with anyio.fail_after(5):  # real I/O: the pod timeout (0.2 s) bounds it
            reading = await meter(api, pods.port, pod_timeout_s=0.2).measure()
    assert reading.tpm == pytest.approx(90.0)
    assert (reading.pods_total, reading.pods_answered, reading.partial) == (2, 1, True)
    hung = next(p for p in reading.per_pod if not p.answered)
    assert "Timeout" in (hung.error or "")


async def test_a_wrong_token_is_a_missing_pod_with_a_hint(tmp_path: Path) -> None:
    async with running_apiserver() as api, serving_pods(tmp_path, {"pod-a": ("127.0.0.1", 10)}) as pods:
        api.state.put(endpoint_slice(NAMESPACE, SERVICE, [("127.0.0.1", pods.port, True)]))
        reading = await meter(api, pods.port, bearer_token="not-the-token").measure()
    assert reading.tpm is None and reading.partial and reading.pods_answered == 0
    assert "HTTP 401" in (reading.per_pod[0].error or "")
    assert "MCP_AUTONOMY_BEARER_TOKEN" in (reading.per_pod[0].error or "")


async def test_pods_with_no_payment_yet_answer_null_and_nothing_is_measured(tmp_path: Path) -> None:
    loads = {"pod-a": ("127.0.0.1", 0), "pod-b": ("127.0.0.2", 0)}
    async with running_apiserver() as api, serving_pods(tmp_path, loads) as pods:
        addresses = [("127.0.0.1", pods.port, True), ("127.0.0.2", pods.port, True)]
        api.state.put(endpoint_slice(NAMESPACE, SERVICE, addresses))
        reading = await meter(api, pods.port).measure()
    assert reading.tpm is None  # no decision on no data
    assert (reading.pods_total, reading.pods_answered, reading.partial) == (2, 2, False)


async def test_no_ready_endpoint_is_an_empty_reading() -> None:
    async with running_apiserver() as api:
        port = free_port()
        api.state.put(endpoint_slice(NAMESPACE, SERVICE, [("127.0.0.1", port, False)]))
        reading = await meter(api, port).measure()
    assert reading.source == "endpointslices"
    assert (reading.tpm, reading.pods_total, reading.pods_answered, reading.partial) == (None, 0, 0, False)


@pytest.mark.parametrize("slices", ["forbidden", "absent"])
async def test_falls_back_to_the_pods_of_the_deployment(tmp_path: Path, slices: str) -> None:
    loads = {"pod-a": ("127.0.0.1", 80), "pod-b": ("127.0.0.2", 40), "pod-c": ("127.0.0.3", 999)}
    async with running_apiserver() as api, serving_pods(tmp_path, loads) as pods:
        state = api.state
        if slices == "forbidden":
            state.deny("list", "endpointslices", namespace=NAMESPACE)
        state.put(deployment(NAMESPACE, SERVICE, 4, labels=LABELS))
        state.put(pod("mcp-autonomy-a", "127.0.0.1", ready=True))
        state.put(pod("mcp-autonomy-b", "127.0.0.2", ready=True))
        state.put(pod("mcp-autonomy-c", "127.0.0.3", ready=False))
        state.put(pod("mcp-autonomy-d", "127.0.0.4", ready=True, deleting=True))
        state.put(pod("mcp-autonomy-e", "127.0.0.6", ready=True, phase="Pending"))
        other = pod("someone-else", "127.0.0.7", ready=True)
        other["metadata"]["labels"] = {"app": "other"}
        state.put(other)
        reading = await meter(api, pods.port).measure()
    assert reading.source == "pods"
    assert reading.tpm == pytest.approx(120.0)
    assert [p.pod for p in reading.per_pod] == ["mcp-autonomy-a", "mcp-autonomy-b"]
    assert (reading.pods_total, reading.pods_answered, reading.partial) == (2, 2, False)


async def test_no_way_to_list_pods_names_both_requests() -> None:
    async with running_apiserver() as api:
        api.state.deny("list", "endpointslices")
        api.state.deny("list", "pods")
        api.state.put(deployment(NAMESPACE, SERVICE, 2, labels=LABELS))
        with pytest.raises(ClusterLoadError) as info:
            await meter(api, 8765).measure()
    message = str(info.value)
    assert "list endpointslices.discovery.k8s.io in namespace payments: 403 forbidden by RBAC" in message
    assert "list pods in namespace payments: 403 forbidden by RBAC" in message


async def test_the_load_route_serves_this_replica_behind_the_bearer_token(tmp_path: Path) -> None:
    clock = ManualClock()
    system = pod_system(tmp_path, "pod-a", "127.0.0.1", clock, 42)
    app = create_http_app(system, McpApp(system))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8765") as http:
        assert (await http.get(LOAD_PATH)).status_code == 401
        answer = await http.get(LOAD_PATH, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200
    assert answer.json() == {"pod": "pod-a", "transactions_per_minute": 42.0, "at": clock.now()}


async def test_local_mode_is_this_process_alone() -> None:
    clock = ManualClock()
    telemetry = Telemetry(clock)
    local = LocalLoad(telemetry, clock)
    assert isinstance(local, LoadMeter)
    empty = await local.measure()
    assert (empty.tpm, empty.source, empty.pods_total, empty.pods_answered) == (None, "local", 1, 1)
    for _ in range(75):
        telemetry.record_payment(Outcome.SUCCESS, 8.0)
    reading = await local.measure()
    assert reading.tpm == pytest.approx(75.0) and not reading.partial
    assert reading.per_pod[0].pod == "local" and reading.at == clock.now()


def test_label_selector_from_a_deployment_selector() -> None:
    selector = {
        "matchLabels": {"app": "mcp-autonomy", "tier": "api"},
        "matchExpressions": [
            {"key": "track", "operator": "In", "values": ["stable", "canary"]},
            {"key": "legacy", "operator": "DoesNotExist"},
            {"key": "zone", "operator": "Exists"},
            {"key": "env", "operator": "NotIn", "values": ["dev"]},
        ],
    }
    assert label_selector(selector) == (
        "app=mcp-autonomy,tier=api,track in (canary,stable),!legacy,zone,env notin (dev)"
    )
    assert label_selector(None) == ""


def test_from_settings_asks_the_service_on_the_server_port_with_its_token() -> None:
    settings = load_settings(
        k8s_namespace=NAMESPACE, k8s_service="mcp-autonomy-svc", port=9000, bearer_token=TOKEN
    )
    load = ClusterLoad.from_settings(settings, object(), ManualClock())  # type: ignore[arg-type]
    assert (load.namespace, load.service, load.deployment, load.port) == (
        NAMESPACE,
        "mcp-autonomy-svc",
        "mcp-autonomy",
        9000,
    )
    assert load._headers == {"Authorization": f"Bearer {TOKEN}"}
