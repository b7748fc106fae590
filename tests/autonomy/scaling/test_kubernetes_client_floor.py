"""The kubernetes client floor: what leader election calls exists in the installed client, the
start-up check fails loudly (installed and required versions) when it does not, and the floor in
pyproject.toml is the one the code states. `make k8s-floor` runs the Kubernetes tests with it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client import ApiClient

from mcp_autonomy.autonomy.scaling.kubernetes import KubernetesScaleBackend
from mcp_autonomy.autonomy.scaling.leader import (
    MIN_KUBERNETES_CLIENT,
    KubernetesClientTooOld,
    LeaderElectionConfig,
    LeaderElector,
    check_kubernetes_client,
)
from mcp_autonomy.clock import ManualClock

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"
CONFIG = LeaderElectionConfig("mcp-autonomy-scaler", "prod")


class _ClientBefore37:
    """An ApiClient as kubernetes 31-36 had it: `call_api`, but no `param_serialize`."""

    def call_api(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("never called")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_the_installed_client_passes_the_start_up_check() -> None:
    check_kubernetes_client()
    check_kubernetes_client(ApiClient())
    assert _version(kubernetes.__version__) >= _version(MIN_KUBERNETES_CLIENT)


def test_a_client_without_param_serialize_fails_naming_installed_and_required_versions() -> None:
    with pytest.raises(KubernetesClientTooOld) as caught:
        check_kubernetes_client(_ClientBefore37())

    message = str(caught.value)
    assert "ApiClient.param_serialize" in message
    assert f"installed kubernetes client {kubernetes.__version__}" in message
    assert f"kubernetes>={MIN_KUBERNETES_CLIENT} is required" in message


def test_leader_election_refuses_to_start_on_a_client_that_is_too_old() -> None:
    with pytest.raises(KubernetesClientTooOld, match=re.escape(f"kubernetes>={MIN_KUBERNETES_CLIENT}")):
        LeaderElector(_ClientBefore37(), CONFIG, clock=ManualClock(), identity="a")  # type: ignore[arg-type]


def test_the_scale_backend_checks_the_installed_client_class_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(ApiClient, "param_serialize")

    with pytest.raises(KubernetesClientTooOld, match="param_serialize"):
        KubernetesScaleBackend(namespace="prod", deployment="mcp-autonomy", api_client=ApiClient())


def test_pyproject_floor_is_the_version_the_code_needs() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    floors = [d for d in dependencies if d.startswith("kubernetes")]
    assert floors == [f"kubernetes>={MIN_KUBERNETES_CLIENT}"]
