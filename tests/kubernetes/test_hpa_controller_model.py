"""The test API server's HPA controller model scales like kube-controller-manager, on a manual clock.

Time moves only through `ManualClock.advance`: every 15 s of it the model syncs each HPA. The
engine's view goes through the real client (patching `minReplicas` as floor mode does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import pytest
from kubernetes import client as k8s

from mcp_autonomy.clock import ManualClock
from tests.kubernetes.apiserver import (
    HPA_SYNC_PERIOD_S,
    RunningApiServer,
    deployment,
    hpa,
    load_manifest,
    running_apiserver,
)

pytestmark = pytest.mark.anyio

TEST_DEADLINE_S = 30.0
NS = "prod"
APP = "mcp-autonomy"
HPA_API = "autoscaling/v2"
_T = TypeVar("_T")


async def call(request: Callable[[], _T]) -> _T:
    """The blocking client runs in a worker thread: the server answers on this event loop."""
    return await anyio.to_thread.run_sync(request)


def replicas(api: RunningApiServer) -> int:
    stored = api.state.get("apps/v1", "Deployment", NS, APP)
    assert stored is not None
    return int(stored["spec"]["replicas"])


def hpa_status(api: RunningApiServer) -> dict[str, Any]:
    stored = api.state.get(HPA_API, "HorizontalPodAutoscaler", NS, APP)
    assert stored is not None
    return dict(stored.get("status") or {})


def deploy_hpa() -> dict[str, Any]:
    """deploy/kubernetes/hpa.yaml (min 2, max 20, scale-down window 300 s) in the test namespace."""
    manifest = load_manifest("hpa.yaml")
    manifest["metadata"]["namespace"] = NS
    return manifest


async def set_floor(api: RunningApiServer, min_replicas: int) -> None:
    """What floor mode does: patch the HPA's minReplicas with the real client."""
    autoscaling = k8s.AutoscalingV2Api(api.api_client())
    body = {"spec": {"minReplicas": min_replicas}}
    await call(lambda: autoscaling.patch_namespaced_horizontal_pod_autoscaler(APP, NS, body))


async def test_below_min_scales_to_the_floor_at_the_next_sync_not_before(clock: ManualClock) -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(clock=clock, hpa_controller=True) as api:
            api.state.put(deployment(NS, APP, 1))
            created = api.state.put(hpa(NS, APP, APP, 3, 10))  # no metric: only the min/max branches act
            await clock.advance(HPA_SYNC_PERIOD_S - 1)
            assert replicas(api) == 1
            await clock.advance(1)
            assert replicas(api) == 3
            status = hpa_status(api)
            assert status["currentReplicas"] == 1 and status["desiredReplicas"] == 3
            assert status["lastScaleTime"] == "2026-01-01T00:00:15Z"  # the clock's time
            stored = api.state.get(HPA_API, "HorizontalPodAutoscaler", NS, APP)
            assert stored is not None
            assert int(stored["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

            # Floor mode raises minReplicas: the Deployment follows at the next sync.
            await clock.advance(5)
            await set_floor(api, 5)
            assert replicas(api) == 3
            await clock.advance(HPA_SYNC_PERIOD_S - 5 - 1)
            assert replicas(api) == 3
            await clock.advance(1)
            assert replicas(api) == 5
            assert hpa_status(api)["lastScaleTime"] == "2026-01-01T00:00:30Z"
            assert api.state.hpa_controller.syncs == 2


async def test_scale_down_stabilization_holds_replicas_for_300_s_after_the_metric_drops(
    clock: ManualClock,
) -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(clock=clock, hpa_controller=True) as api:
            api.state.put(deployment(NS, APP, 2))
            api.state.put(deploy_hpa())
            api.state.set_hpa_recommendation(NS, APP, 6)
            await clock.advance(HPA_SYNC_PERIOD_S)  # t = 15: scale-up is immediate (4 pods / 100 % per 15 s)
            assert replicas(api) == 6
            assert (hpa_status(api)["currentReplicas"], hpa_status(api)["desiredReplicas"]) == (2, 6)

            api.state.set_hpa_recommendation(NS, APP, 2)
            seen: list[tuple[float, int]] = []
            while clock.monotonic() < 315:
                await clock.advance(HPA_SYNC_PERIOD_S)
                seen.append((clock.monotonic(), replicas(api)))
            # The 6 recommended at t = 15 stays in the window until t = 315 (strictly newer than now - 300).
            assert all(count == 6 for at_s, count in seen if at_s < 315), seen
            assert seen[-1] == (315, 2)
            status = hpa_status(api)
            assert (status["currentReplicas"], status["desiredReplicas"]) == (6, 2)
            assert status["lastScaleTime"] == "2026-01-01T00:05:15Z"


async def test_lowering_the_floor_lets_the_hpa_drop_pods_at_the_next_sync(clock: ManualClock) -> None:
    """The window keeps raw recommendations, not replica counts: a floor that held pods up
    leaves nothing in it, so the HPA scales down as soon as the floor is lowered."""
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(clock=clock, hpa_controller=True) as api:
            api.state.put(deployment(NS, APP, 2))
            api.state.put(deploy_hpa())
            api.state.set_hpa_recommendation(NS, APP, 2)
            await clock.advance(HPA_SYNC_PERIOD_S)
            assert replicas(api) == 2
            await set_floor(api, 5)
            await clock.advance(HPA_SYNC_PERIOD_S)
            assert replicas(api) == 5
            await clock.advance(HPA_SYNC_PERIOD_S)
            assert replicas(api) == 5  # held by the floor
            await set_floor(api, 2)
            await clock.advance(HPA_SYNC_PERIOD_S)
            assert replicas(api) == 2
            # The first sync's current replicas and every metric sync's raw 2 (t = 15, 15, 45, 60);
            # the below-min sync at t = 30 records none.
            assert [r for _, r in api.state.hpa_controller.recommendations(NS, APP)] == [2, 2, 2, 2]


async def test_without_behavior_scale_up_is_limited_to_twice_the_replicas_and_clamped_to_max(
    clock: ManualClock,
) -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(clock=clock, hpa_controller=True) as api:
            api.state.put(deployment(NS, APP, 2))
            api.state.put(hpa(NS, APP, APP, 1, 10))  # CPU target 70 %, no behavior
            api.state.set_hpa_utilization(NS, APP, 500.0)
            counts = []
            for _ in range(3):
                await clock.advance(HPA_SYNC_PERIOD_S)
                counts.append(replicas(api))
            assert counts == [4, 8, 10]  # max(2 x replicas, 4) per sync, then maxReplicas
            api.state.set_hpa_utilization(NS, APP, 75.0)  # within the 10 % tolerance of 70 %
            await clock.advance(HPA_SYNC_PERIOD_S)
            assert replicas(api) == 10
            api.state.set_hpa_recommendation(NS, APP, None)  # metrics unavailable: nothing moves
            await clock.advance(HPA_SYNC_PERIOD_S * 30)
            assert replicas(api) == 10


async def test_a_scaled_to_zero_deployment_is_left_alone_and_sync_can_be_driven_directly() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver() as api:  # no controller loop: the test syncs
            api.state.put(deployment(NS, APP, 0))
            api.state.put(hpa(NS, APP, APP, 2, 10))
            api.state.set_hpa_recommendation(NS, APP, 5)
            api.state.sync_hpas()
            assert replicas(api) == 0
            assert hpa_status(api) == {"desiredReplicas": 0}
            api.state.put(deployment(NS, APP, 12))
            api.state.sync_hpas()
            assert replicas(api) == 10  # above max: clamped at once
