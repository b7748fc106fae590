"""Two engine replicas against the test Kubernetes API server: one leads, the other reports it, a
stopped leader hands over, and scaling goes through the Deployment's scale subresource."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mcp_autonomy.autonomy.scaling import KubernetesScaleBackend, LeaderElector
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import load_settings
from tests.fakes import ScriptedAdapter
from tests.kubernetes.apiserver import RunningApiServer, deployment, running_apiserver

pytestmark = pytest.mark.anyio
NS = "payments"
NAME = "mcp-autonomy"
DEADLINE_S = 60.0


def replica(api: RunningApiServer, clock: ManualClock, state_dir: Path, pod: str) -> AutonomousSystem:
    settings = load_settings(
        state_dir=state_dir,
        scale_backend="kubernetes",
        k8s_namespace=NS,
        k8s_deployment=NAME,
        pod_name=pod,
        predictive_maintenance_enabled=False,
        auto_optimization_enabled=False,
    )
    backend = KubernetesScaleBackend(
        namespace=NS, deployment=NAME, api_client=api.api_client(), request_timeout_s=5.0
    )
    system = AutonomousSystem(settings, clock=clock, scale_backend=backend)
    system.register_provider(ScriptedAdapter("mpesa"))
    return system


async def test_two_replicas_elect_one_leader_and_hand_over(tmp_path: Path) -> None:
    clock = ManualClock()
    with anyio.fail_after(DEADLINE_S):
        async with running_apiserver() as api:
            api.state.put(deployment(NS, NAME, 2))
            a = replica(api, clock, tmp_path / "a", "pod-a")
            b = replica(api, clock, tmp_path / "b", "pod-b")
            stop_a, stop_b = anyio.Event(), anyio.Event()

            async def serve(system: AutonomousSystem, stop: anyio.Event) -> None:
                async with system.running():
                    await stop.wait()

            async with anyio.create_task_group() as tg:
                tg.start_soon(serve, a, stop_a)
                await a.wait_ready()
                tg.start_soon(serve, b, stop_b)
                await b.wait_ready()

                status_a, status_b = await a.get_status_summary(), await b.get_status_summary()
                assert status_a.is_leader and not status_b.is_leader
                assert status_a.scaling_leader == status_b.scaling_leader == a.elector.identity
                assert a.elector.identity.startswith("pod-a")
                assert (await b.get_status()).scaling_leader is not None

                # The leader scales through the Deployment's scale subresource.
                result = await a.scale_to(3, reason="engine test")
                assert result.state.backend == "kubernetes" and result.rollout == "complete"
                stored = api.state.get("apps/v1", "Deployment", NS, NAME)
                assert stored is not None and stored["spec"]["replicas"] == 3

                # The leader stops (its lease is released): the other takes over on its next retry.
                stop_a.set()
                elector = b.elector
                assert isinstance(elector, LeaderElector)
                for _ in range(10):
                    if elector.is_leader:
                        break
                    attempts = elector.attempts
                    await clock.advance(4.5)  # past the longest jittered retry period (2 s x 2.2)
                    await elector.wait_attempts(attempts + 1)  # its real HTTP round, not a guessed delay
                assert elector.is_leader
                assert (await b.get_status_summary()).scaling_leader == b.elector.identity
                stop_b.set()
