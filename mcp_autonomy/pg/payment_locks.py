"""Payment locks across replicas: one payment is worked on by one task in the whole cluster.

A submit, a callback and a reconciler pull each re-read a payment under its lock before they
write it; with several replicas that lock must be the cluster's. It is a PostgreSQL session
advisory lock on a connection held for the block (`pg_advisory_lock(namespace, hashtext(key))`),
with the in-process `PaymentLocks` in front: tasks of one replica queue locally, so a replica
holds at most one connection per payment, and `is_held` answers without a round trip. The wait
for another replica is bounded by a server-side `lock_timeout` (an anyio timeout would make
psycopg drop the connection mid-query, DESIGN section 9).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool

from mcp_autonomy.autonomy.reconciler import PaymentLocks
from mcp_autonomy.pg.connect import connect_kwargs
from mcp_autonomy.pg.payment_store import RECONNECT_TIMEOUT_S, unavailable
from mcp_autonomy.store import StoreUnavailable

__all__ = [
    "DEFAULT_LOCK_TIMEOUT_S",
    "DEFAULT_MAX_CONNECTIONS",
    "LOCK_NAMESPACE",
    "PaymentLockTimeout",
    "PostgresPaymentLocks",
]

logger = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x6D63_7002
"""First key of every payment lock (the second is `hashtext(idempotency key)`), so payment locks
never collide with the migration, leadership or callback locks. Two keys hashing alike only
share a lock: they queue, never run at once on one payment."""
DEFAULT_LOCK_TIMEOUT_S = 30.0
"""Longest wait for a payment another replica holds. A holder is routing a payment or pulling its
status, bounded by the provider call timeouts; past this something is stuck and the caller gets
`PaymentLockTimeout` instead of waiting forever."""
MIN_LOCK_TIMEOUT_S = 0.01
MAX_LOCK_TIMEOUT_S = 600.0
DEFAULT_MAX_CONNECTIONS = 32
"""Payments one replica can hold at once (each held payment keeps one connection for its block)."""
_STATEMENT_MARGIN_MS = 1_000
"""The lock connections' statement_timeout is the lock timeout plus this, so the lock wait is the
one that ends first and says why."""
_APPLICATION_NAME = "mcp-autonomy-payment-locks"


class PaymentLockTimeout(StoreUnavailable):
    """Another replica held the payment for longer than the lock timeout (nothing was done)."""


class PostgresPaymentLocks:
    """`PaymentLocks` for the cluster: `hold(key)` makes payment `key` this task's alone across
    every replica sharing the database; `is_held(key)` is True while a task of this replica holds
    or waits for it. `open()` before use, `close()` at shutdown."""

    def __init__(
        self,
        url: str,
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if not MIN_LOCK_TIMEOUT_S <= lock_timeout_s <= MAX_LOCK_TIMEOUT_S:
            raise ValueError(
                f"lock_timeout_s must be within [{MIN_LOCK_TIMEOUT_S}, {MAX_LOCK_TIMEOUT_S}], got {lock_timeout_s}"
            )
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self._url = url
        self._lock_timeout_s = lock_timeout_s
        self._local = PaymentLocks()
        lock_timeout_ms = max(1, round(lock_timeout_s * 1000))
        kwargs = connect_kwargs(
            application_name=_APPLICATION_NAME, statement_timeout_ms=lock_timeout_ms + _STATEMENT_MARGIN_MS
        )
        kwargs["options"] += f" -c lock_timeout={lock_timeout_ms}"
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs=kwargs,
            open=False,
            check=AsyncConnectionPool.check_connection,
            # Waiting for a free connection is waiting for the lock by another name: same bound.
            timeout=lock_timeout_s,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            name="payment-locks",
        )

    async def open(self) -> None:
        """Open the pool; `StoreUnavailable` when the database does not answer in time."""
        try:
            await self._pool.open(wait=True, timeout=self._lock_timeout_s)
        except psycopg.Error as error:
            await self._pool.close()
            raise unavailable(self._url, error) from error

    async def close(self) -> None:
        """Close every connection (a lock still held ends with its session)."""
        await self._pool.close()

    def is_held(self, key: str) -> bool:
        """True while a task of this replica holds or waits for `key` (a tick skips it)."""
        return self._local.is_held(key)

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        """`async with locks.hold(key):` payment `key` is this task's, cluster-wide, until the
        block ends. Raises `PaymentLockTimeout` when another replica keeps it past the lock
        timeout, `StoreUnavailable` when the database is out of reach."""
        return self._hold(key)

    @asynccontextmanager
    async def _hold(self, key: str) -> AsyncIterator[None]:
        async with self._local.hold(key), self._connection() as conn:
            await self._acquire(conn, key)
            try:
                yield
            finally:
                # Shielded: a cancelled block must still give the lock back before the connection
                # goes back to the pool, or the next user of that connection would hold it.
                with anyio.CancelScope(shield=True):
                    await self._release(conn, key)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        # getconn/putconn rather than `pool.connection()`: only the wait for a connection maps to
        # `StoreUnavailable`, never an error raised by the caller's block.
        try:
            conn = await self._pool.getconn()
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            raise unavailable(self._url, error) from error
        try:
            yield conn
        finally:
            with anyio.CancelScope(shield=True):
                await self._pool.putconn(conn)

    async def _acquire(self, conn: psycopg.AsyncConnection[Any], key: str) -> None:
        try:
            await conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_NAMESPACE, key))
        except psycopg.errors.LockNotAvailable as error:
            raise PaymentLockTimeout(
                f"payment {key!r} is held by another replica for more than {self._lock_timeout_s:g} s"
            ) from error
        except BaseException:
            # Cancelled or failed mid-wait: the server may have granted the lock as the wait
            # ended. Closing the session is the one sure way to give it back; the pool replaces
            # a closed connection.
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise

    async def _release(self, conn: psycopg.AsyncConnection[Any], key: str) -> None:
        try:
            cursor = await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (LOCK_NAMESPACE, key))
            row = await cursor.fetchone()
            if row is not None and row[0]:
                return
            logger.warning("payment lock %r was no longer held at release (its session was reset)", key)
        except psycopg.Error as error:
            # The session is gone or unusable; a lock ends with its session, so closing it is the
            # release. The block's own outcome stands.
            logger.warning("payment lock %r released by closing its connection: %s", key, error)
        await conn.close()
