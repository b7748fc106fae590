"""Where a replica count is read and written: the `ScaleBackend` protocol and its backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp_autonomy.autonomy.scaling.base import ReplicaState, ScaleBackend, ScaleBackendError
from mcp_autonomy.autonomy.scaling.cluster_load import (
    ClusterLoad,
    ClusterLoadError,
    ClusterLoadReading,
    LoadMeter,
    LocalLoad,
    PodLoad,
)
from mcp_autonomy.autonomy.scaling.kubernetes import KubernetesReplicaState, KubernetesScaleBackend
from mcp_autonomy.autonomy.scaling.leader import (
    Elector,
    LeaderElectionConfig,
    LeaderElector,
    LeaderStatus,
    SingleProcessElector,
    pod_identity,
)
from mcp_autonomy.autonomy.scaling.local import LocalScaleBackend

if TYPE_CHECKING:
    from mcp_autonomy.clock import Clock
    from mcp_autonomy.config import Settings
    from mcp_autonomy.store import StateStore


def build_scale_backend(settings: Settings, store: StateStore, clock: Clock) -> ScaleBackend:
    """The backend `MCP_AUTONOMY_SCALE_BACKEND` names (local: starts at MIN_INSTANCES)."""
    if settings.scale_backend == "kubernetes":
        return KubernetesScaleBackend.from_settings(settings)
    return LocalScaleBackend(store, clock, settings.min_instances)


__all__ = [
    "ClusterLoad",
    "ClusterLoadError",
    "ClusterLoadReading",
    "Elector",
    "KubernetesReplicaState",
    "KubernetesScaleBackend",
    "LeaderElectionConfig",
    "LeaderElector",
    "LeaderStatus",
    "LoadMeter",
    "LocalLoad",
    "LocalScaleBackend",
    "PodLoad",
    "ReplicaState",
    "ScaleBackend",
    "ScaleBackendError",
    "SingleProcessElector",
    "build_scale_backend",
    "pod_identity",
]
