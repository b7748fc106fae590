"""A dedicated PostgreSQL session that outlives outages: the shape the cluster feed and the
cluster telemetry share.

One long-lived async connection of its own (not from a pool), opened with the engine's
server-side timeouts and TCP keepalives, prepared once per connection (`_prepare`: LISTEN, start
positions), then served until it fails (`_serve`). Any failure closes it and a new one is opened
after a back-off doubling from `RECONNECT_INITIAL_S` to `RECONNECT_MAX_S` on the injected clock;
what the subclass remembers (its positions) carries over. Never cancel a running query on it with
an anyio scope (DESIGN section 9: psycopg then closes the connection): bound queries server-side.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any

import anyio
import psycopg
from anyio.abc import TaskStatus

from mcp_autonomy.clock import Clock
from mcp_autonomy.pg.connect import connect_kwargs, redact_url

logger = logging.getLogger(__name__)

RECONNECT_INITIAL_S = 0.2
RECONNECT_MAX_S = 5.0
"""Back-off between reconnect attempts: doubles from the first value up to the second."""
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
"""TCP keepalives end a connection whose peer vanished (a partition sends no FIN); ignored over a
unix socket, where the server's exit closes the socket."""


def describe(exc: BaseException) -> str:
    """A one-line description of a failure (psycopg's messages never hold the password)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class DedicatedSession(ABC):
    """A connection of its own, reopened after any failure (see the module docstring)."""

    label = "session"
    """What the logs call it (`cluster feed`, `cluster telemetry`)."""

    def __init__(self, url: str, *, clock: Clock, application_name: str) -> None:
        self._url = url
        self._clock = clock
        self._application_name = application_name
        self._connected = False
        self._last_error: str | None = None
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @abstractmethod
    async def _prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Make a new connection ready (LISTEN, positions); raising closes it."""

    @abstractmethod
    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Work on the connection until it fails (it is expected to run until cancelled)."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled, reconnecting after any failure.

        Reports started once the first connection is prepared, or after a first failed attempt
        (a replica starts while the database is down; this keeps trying).
        """
        started = False
        delay_s = RECONNECT_INITIAL_S
        try:
            while True:
                conn: psycopg.AsyncConnection[Any] | None = None
                try:
                    conn = await self._open()
                    self._connected = True
                    self._last_error = None
                    delay_s = RECONNECT_INITIAL_S
                    if not started:
                        started = True
                        task_status.started()
                    await self._serve(conn)
                except Exception as exc:  # any failure: the connection is suspect, start afresh
                    was_connected, self._connected = self._connected, False
                    self._last_error = describe(exc)
                    logger.warning(
                        "%s %s %s: %s; reconnecting in %.1f s",
                        self.label,
                        "lost" if was_connected else "could not open",
                        redact_url(self._url),
                        self._last_error,
                        delay_s,
                        exc_info=not isinstance(exc, psycopg.Error),
                    )
                finally:
                    if conn is not None:
                        with anyio.CancelScope(shield=True):
                            await conn.close()
                if not started:
                    started = True
                    task_status.started()
                await self._clock.sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)
                self.reconnects += 1
        finally:
            self._connected = False

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        kwargs = connect_kwargs(application_name=self._application_name)
        kwargs.update(KEEPALIVES)
        conn = await psycopg.AsyncConnection.connect(self._url, **kwargs)
        try:
            await self._prepare(conn)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        return conn
