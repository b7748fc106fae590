"""Where a replica count is read and written: the `ScaleBackend` protocol and its backends."""

from mcp_autonomy.autonomy.scaling.base import ReplicaState, ScaleBackend, ScaleBackendError
from mcp_autonomy.autonomy.scaling.local import LocalScaleBackend

__all__ = ["LocalScaleBackend", "ReplicaState", "ScaleBackend", "ScaleBackendError"]
