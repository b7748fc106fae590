"""KubernetesScaleBackend against the test API server, with the official client over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream
from kubernetes import client as k8s

from mcp_autonomy.autonomy.scaling import (
    KubernetesScaleBackend,
    LocalScaleBackend,
    ScaleBackend,
    ScaleBackendError,
    build_scale_backend,
)
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import SettingsError, load_settings
from mcp_autonomy.store import Store
from tests.kubernetes.apiserver import RunningApiServer, deployment, hpa, running_apiserver

pytestmark = pytest.mark.anyio

TEST_DEADLINE_S = 30.0
NS = "prod"
NAME = "mcp-autonomy"
TOKEN = "tok-7f3a9c1e5b2d8f40"
SCALE_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}/scale"
HPA_PATH = f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/{NAME}"


@asynccontextmanager
async def cluster(replicas: int | None = 3) -> AsyncIterator[RunningApiServer]:
    """An API server holding the Deployment (unless `replicas` is None), within the test deadline."""
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(token=TOKEN) as api:
            api.state.user = f"system:serviceaccount:{NS}:{NAME}"
            if replicas is not None:
                api.state.put(deployment(NS, NAME, replicas))
            yield api


def backend_for(api: RunningApiServer, **options: Any) -> KubernetesScaleBackend:
    return KubernetesScaleBackend(
        namespace=NS, deployment=NAME, api_client=api.api_client(), request_timeout_s=5.0, **options
    )


def writes(api: RunningApiServer, path: str) -> int:
    return sum(1 for method, p in api.state.requests if method in ("PATCH", "PUT") and p == path)


def assert_no_secret(message: str) -> None:
    assert TOKEN not in message
    assert "Bearer" not in message


async def test_read_reports_the_scale_subresource_and_ready_replicas() -> None:
    async with cluster(replicas=3) as api:
        api.state.auto_rollout = False
        api.state.set_ready(NS, NAME, 2)
        backend = backend_for(api)
        assert isinstance(backend, ScaleBackend)

        state = await backend.read()

        assert (state.backend, state.target) == ("kubernetes", "prod/deployment/mcp-autonomy")
        assert (state.desired, state.ready, state.external_effect) == (3, 2, True)
        api.state.set_ready(NS, NAME, 0)  # 0 is omitted from the status: still read as 0
        assert (await backend.read()).ready == 0


async def test_set_desired_patches_the_scale_subresource() -> None:
    async with cluster(replicas=3) as api:
        backend = backend_for(api)

        state = await backend.set_desired(5)

        stored = api.state.get("apps/v1", "Deployment", NS, NAME)
        assert stored is not None and stored["spec"]["replicas"] == 5
        assert (state.desired, state.ready, state.via, state.hpa, state.notes) == (
            5,
            5,
            "deployments/scale",
            None,
            [],
        )
        assert writes(api, SCALE_PATH) == 1
        await backend.set_desired(5)  # already there: nothing to write
        assert writes(api, SCALE_PATH) == 1


async def test_hpa_floor_mode_moves_min_replicas_and_leaves_the_deployment_alone() -> None:
    async with cluster(replicas=3) as api:
        api.state.put(hpa(NS, NAME, NAME, 2, 10))
        api.state.put(hpa(NS, "unrelated", "other-deployment", 1, 3))
        backend = backend_for(api)

        state = await backend.set_desired(6)

        stored_hpa = api.state.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, NAME)
        stored_deployment = api.state.get("apps/v1", "Deployment", NS, NAME)
        assert stored_hpa is not None and stored_deployment is not None
        assert stored_hpa["spec"]["minReplicas"] == 6
        assert stored_deployment["spec"]["replicas"] == 3
        assert writes(api, SCALE_PATH) == 0
        # Floor mode reports the floor it sets as `desired`; the Deployment's own count beside it.
        assert (state.desired, state.deployment_replicas, state.via, state.hpa) == (
            6,
            3,
            "horizontalpodautoscalers/mcp-autonomy",
            "prod/mcp-autonomy",
        )
        assert (state.hpa_min_replicas, state.hpa_max_replicas) == (6, 10)
        assert any("minReplicas 2 -> 6" in note for note in state.notes)
        unrelated = api.state.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, "unrelated")
        assert unrelated is not None and unrelated["spec"]["minReplicas"] == 1

        clamped = await backend.set_desired(15)
        stored_hpa = api.state.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, NAME)
        assert stored_hpa is not None and stored_hpa["spec"]["minReplicas"] == 10
        assert any("maxReplicas=10" in note and "clamped to 10" in note for note in clamped.notes)
        assert backend.last_notes == tuple(clamped.notes)

        lowered = await backend.set_desired(0)
        stored_hpa = api.state.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, NAME)
        assert stored_hpa is not None and stored_hpa["spec"]["minReplicas"] == 1
        assert any("cannot be below 1" in note for note in lowered.notes)


async def test_hpa_ignore_mode_scales_the_deployment_and_warns() -> None:
    async with cluster(replicas=3) as api:
        api.state.put(hpa(NS, NAME, NAME, 2, 10))
        backend = backend_for(api, hpa_mode="ignore")

        state = await backend.set_desired(7)

        stored_hpa = api.state.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, NAME)
        assert stored_hpa is not None and stored_hpa["spec"]["minReplicas"] == 2
        assert (state.desired, state.via, state.hpa) == (7, "deployments/scale", "prod/mcp-autonomy")
        assert any("may undo this change" in note for note in state.notes)

        api.state.deny("list", "horizontalpodautoscalers")  # ignore mode does not need to see HPAs
        state = await backend.set_desired(4)
        assert state.desired == 4
        assert any("could not check for an HPA" in note for note in state.notes)


async def test_a_raced_write_is_retried_with_a_fresh_read() -> None:
    async with cluster(replicas=3) as api:
        backend = backend_for(api)
        api.state.conflict_before_next_writes = 2

        state = await backend.set_desired(4)

        assert state.desired == 4
        assert writes(api, SCALE_PATH) == 3  # two lost races, then the write
        api.state.put(hpa(NS, NAME, NAME, 2, 10))
        api.state.conflict_before_next_writes = 1
        await backend.set_desired(5)
        stored_hpa = api.state.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, NAME)
        assert stored_hpa is not None and stored_hpa["spec"]["minReplicas"] == 5
        assert writes(api, HPA_PATH) == 2


async def test_persistent_conflicts_give_up_with_an_error() -> None:
    async with cluster(replicas=3) as api:
        backend = backend_for(api, max_conflict_attempts=3)
        api.state.conflict_before_next_writes = 100

        with pytest.raises(ScaleBackendError, match="lost the optimistic-concurrency race 3 times") as caught:
            await backend.set_desired(8)

        stored = api.state.get("apps/v1", "Deployment", NS, NAME)
        assert stored is not None and stored["spec"]["replicas"] == 3
        assert writes(api, SCALE_PATH) == 3
        assert_no_secret(str(caught.value))


async def test_forbidden_names_verb_resource_group_namespace_and_the_rule_to_add() -> None:
    async with cluster(replicas=3) as api:
        api.state.deny("patch", "deployments/scale", namespace=NS)
        backend = backend_for(api)

        with pytest.raises(ScaleBackendError) as caught:
            await backend.set_desired(5)

        message = str(caught.value)
        assert 'verb "patch"' in message
        assert 'resource "deployments/scale"' in message
        assert 'API group "apps"' in message
        assert f'namespace "{NS}"' in message
        assert '{apiGroups: ["apps"], resources: ["deployments/scale"], verbs: ["patch"]}' in message
        assert f"system:serviceaccount:{NS}:{NAME}" in message  # who is asking, from the server's message
        assert_no_secret(message)

        api.state.allow_all()
        api.state.deny("list", "horizontalpodautoscalers")
        with pytest.raises(ScaleBackendError) as caught:
            await backend.set_desired(5)  # floor mode must see HPAs
        message = str(caught.value)
        assert 'verb "list"' in message and 'resource "horizontalpodautoscalers"' in message
        assert 'API group "autoscaling"' in message and "MCP_AUTONOMY_K8S_HPA_MODE" in message
        assert_no_secret(message)


async def test_not_found_names_namespace_deployment_and_the_settings() -> None:
    async with cluster(replicas=None) as api:
        backend = backend_for(api)
        for operation in (backend.read(), backend.set_desired(2)):
            with pytest.raises(ScaleBackendError) as caught:
                await operation
            message = str(caught.value)
            assert f'Deployment "{NAME}" not found in namespace "{NS}"' in message
            assert "MCP_AUTONOMY_K8S_NAMESPACE" in message and "MCP_AUTONOMY_K8S_DEPLOYMENT" in message
            assert_no_secret(message)


async def test_bad_credentials_and_unreachable_api_are_clear_and_carry_no_token() -> None:
    async with cluster(replicas=3) as api:
        configuration = api.configuration()
        configuration.api_key = {"BearerToken": "wrong-" + TOKEN}
        backend = KubernetesScaleBackend(
            namespace=NS, deployment=NAME, api_client=k8s.ApiClient(configuration), request_timeout_s=5.0
        )
        with pytest.raises(ScaleBackendError, match="rejected the credentials") as caught:
            await backend.read()
        assert_no_secret(str(caught.value))

    unreachable = api.configuration()  # the server is gone: its port refuses connections
    backend = KubernetesScaleBackend(
        namespace=NS, deployment=NAME, configuration=unreachable, request_timeout_s=5.0
    )
    with pytest.raises(ScaleBackendError, match="cannot reach the Kubernetes API") as caught:
        await backend.read()
    assert_no_secret(str(caught.value))


async def test_an_api_that_never_answers_times_out() -> None:
    async def never_answer(stream: SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    with anyio.fail_after(TEST_DEADLINE_S):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, never_answer)
            configuration = k8s.Configuration(host=f"http://127.0.0.1:{port}")
            backend = KubernetesScaleBackend(
                namespace=NS, deployment=NAME, configuration=configuration, request_timeout_s=0.05
            )
            with pytest.raises(
                ScaleBackendError, match=r"did not answer get deployments/scale .* within 0.05 s"
            ):
                await backend.read()
            tg.cancel_scope.cancel()


async def test_credentials_from_a_kubeconfig_file(tmp_path: Path) -> None:
    async with cluster(replicas=3) as api:
        kubeconfig = tmp_path / "config"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "test", "cluster": {"server": api.url}}],
                    "users": [{"name": "test", "user": {"token": TOKEN}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                    "current-context": "test",
                }
            )
        )
        backend = KubernetesScaleBackend(namespace=NS, deployment=NAME, kubeconfig=str(kubeconfig))
        assert (await backend.read()).desired == 3

        missing = KubernetesScaleBackend(namespace=NS, deployment=NAME, kubeconfig=str(tmp_path / "absent"))
        with pytest.raises(ScaleBackendError, match="cannot load Kubernetes credentials"):
            await missing.read()


def test_settings_pick_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "db.sqlite3").open()
    local = build_scale_backend(load_settings(state_dir=tmp_path), store, ManualClock())
    assert isinstance(local, LocalScaleBackend)

    monkeypatch.setenv("MCP_AUTONOMY_SCALE_BACKEND", "kubernetes")
    monkeypatch.setenv("MCP_AUTONOMY_K8S_NAMESPACE", NS)
    monkeypatch.setenv("MCP_AUTONOMY_K8S_HPA_MODE", "ignore")
    monkeypatch.setenv("MCP_AUTONOMY_K8S_KUBECONFIG", "/etc/kube/config")
    monkeypatch.setenv("MCP_AUTONOMY_K8S_REQUEST_TIMEOUT_S", "2.5")
    remote = build_scale_backend(load_settings(state_dir=tmp_path), store, ManualClock())
    assert isinstance(remote, KubernetesScaleBackend)
    assert (remote.namespace, remote.deployment, remote.hpa_mode) == (NS, "mcp-autonomy", "ignore")
    assert remote.request_timeout_s == 2.5

    monkeypatch.setenv("MCP_AUTONOMY_K8S_REQUEST_TIMEOUT_S", "0")
    with pytest.raises(
        SettingsError, match=r"MCP_AUTONOMY_K8S_REQUEST_TIMEOUT_S=0 is invalid: allowed is a number"
    ):
        load_settings(state_dir=tmp_path)
    monkeypatch.setenv("MCP_AUTONOMY_K8S_REQUEST_TIMEOUT_S", "10")
    monkeypatch.setenv("MCP_AUTONOMY_K8S_HPA_MODE", "fight")
    with pytest.raises(
        SettingsError, match="MCP_AUTONOMY_K8S_HPA_MODE=fight is invalid: allowed is one of floor, ignore"
    ):
        load_settings(state_dir=tmp_path)
    store.close()
