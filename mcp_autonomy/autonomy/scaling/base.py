"""The scale backend protocol: read the replica state, ask for a new desired count."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field


class ReplicaState(BaseModel):
    """Replica counts as the backend reports them; `ready` is null when it cannot be observed."""

    backend: str
    target: str = Field(description="What is scaled, e.g. `production/deployment/mcp-autonomy`")
    desired: int
    ready: int | None
    external_effect: bool = Field(description="False for the local backend: nothing outside changes")


class ScaleBackendError(RuntimeError):
    """The backend refused or failed; the message names what is missing (verb, resource, ...)."""


class ScaleLeadershipLost(ScaleBackendError):
    """A scale or floor change stopped because this replica no longer leads: nothing more was sent."""


@runtime_checkable
class ScaleBackend(Protocol):
    """Reads and changes the replica count of what this server runs as."""

    name: str

    async def read(self) -> ReplicaState:
        """The current desired and ready replicas."""
        ...

    async def set_desired(self, replicas: int) -> ReplicaState:
        """Ask for `replicas`; returns the state right after the request was accepted."""
        ...
