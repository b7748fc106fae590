"""The local backend: the desired count lives in the store and nothing outside changes.

It is the embedded default so a single process (a laptop, a test, `make run`) has a scaler
whose decisions can be watched without a cluster. Every status says `backend: local` and
`external_effect: false`, and `ready` is null: there is nothing whose readiness could be seen.
"""

from __future__ import annotations

from mcp_autonomy.autonomy.scaling.base import ReplicaState
from mcp_autonomy.clock import Clock
from mcp_autonomy.store import StateStore

STATE_COMPONENT = "auto_scaler"
STATE_KEY = "local_desired_replicas"


class LocalScaleBackend:
    """Keeps the desired replica count in the SQLite store."""

    name = "local"

    def __init__(self, store: StateStore, clock: Clock, initial_replicas: int) -> None:
        self._store = store
        self._clock = clock
        self._initial = initial_replicas

    async def read(self) -> ReplicaState:
        desired = int(self._store.get_state(STATE_COMPONENT, STATE_KEY, self._initial))
        return ReplicaState(
            backend=self.name, target="local", desired=desired, ready=None, external_effect=False
        )

    async def set_desired(self, replicas: int) -> ReplicaState:
        self._store.set_state(STATE_COMPONENT, STATE_KEY, replicas, timestamp=self._clock.now())
        return await self.read()
