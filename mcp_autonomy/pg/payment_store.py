"""The PostgreSQL backend of `PaymentStore`: the payments every replica shares.

Same tables, rules and answers as `SqlitePaymentStore` (`mcp_autonomy/payment_store.py`), whose
row helpers it reuses; what sharing changes is how a race between replicas is settled:
- an idempotency key is claimed by `INSERT ... ON CONFLICT DO NOTHING RETURNING` (one winner, the
  loser waits for its commit and reads its record);
- an attempt's seq is numbered under the payment's row lock;
- a duplicate callback is detected under a transaction advisory lock on its body hash.
Counts by status come from `payment_counts` (kept by a trigger), never from a scan. Every way the
database can be out of reach surfaces as `StoreUnavailable`, naming the database without its
credentials; the pool replaces dead connections and reconnects by itself once it is back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from mcp_autonomy.payment_store import (
    _ATTEMPT_COLUMNS,
    _CALLBACK_COLUMNS,
    _DUE_CALLBACK_STATES,
    _PAYMENT_COLUMNS,
    _PAYMENT_MUTABLE,
    OPEN_STATUSES,
    _attempt,
    _callback,
    _cut_body,
    _payment,
    _payment_values,
)
from mcp_autonomy.payments import (
    CallbackState,
    InboxCallback,
    PaymentAttempt,
    PaymentRecord,
    ProviderIdentifier,
)
from mcp_autonomy.pg.connect import connect_kwargs, redact_url
from mcp_autonomy.providers.base import TransactionStatus
from mcp_autonomy.store import StoreUnavailable

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MIN_SIZE",
    "OPEN_TIMEOUT_S",
    "POOL_TIMEOUT_S",
    "RECONNECT_TIMEOUT_S",
    "PostgresPaymentStore",
]
PING_TIMEOUT_S = 0.5
"""The longest a readiness ping waits for a pooled connection, or for its own (`ping`)."""

logger = logging.getLogger(__name__)

DEFAULT_MIN_SIZE = 2
"""Connections kept open per replica (a submit and a reconciler pull at once without a connect)."""
DEFAULT_MAX_SIZE = 10
"""Connections a replica may open for payments (each call holds one for one short transaction)."""
POOL_TIMEOUT_S = 2.0
"""How long a call waits for a connection before the store counts as unavailable: a payment
must fail fast (nothing written, nothing sent) rather than hang while the database is away."""
OPEN_TIMEOUT_S = 10.0
"""How long `open()` waits for the first `min_size` connections."""
RECONNECT_TIMEOUT_S = 5.0
"""How long the pool retries one lost connection (backoff 1, 2, 4 s ...) before it gives up and
regrows on the next request. psycopg_pool's default of 5 minutes lets the backoff reach minutes,
so a replica would stay unavailable long after the database is back."""

_APPLICATION_NAME = "mcp-autonomy-payments"
_CALLBACK_LOCK_NAMESPACE = 0x6D63_7001
"""First key of the transaction advisory lock that serialises duplicate checks of one callback
body (the second key is a hash of provider and body hash)."""

_OPEN_VALUES = [s.value for s in OPEN_STATUSES]
_DUE_CALLBACK_VALUES = [s.value for s in _DUE_CALLBACK_STATES]
_SETTLED_CALLBACK_VALUES = [s.value for s in CallbackState if s not in _DUE_CALLBACK_STATES]

# JSON columns are read back as text, so the SQLite row helpers parse them unchanged (psycopg would
# otherwise hand over a dict). Ties are broken in byte order (COLLATE "C"), as SQLite's BINARY does.
# Each payment row carries its attempts (a JSON array of arrays, in seq order) as a last column:
# one statement, so one round trip and one snapshot, with no transaction around it.
_SELECT_PAYMENT = (
    "SELECT "
    + ", ".join("p.metadata::text" if c == "metadata" else f"p.{c}" for c in _PAYMENT_COLUMNS)
    + ", (SELECT json_agg(json_build_array("
    + ", ".join(f"a.{c}" for c in _ATTEMPT_COLUMNS)
    + ") ORDER BY a.seq) FROM payment_attempts AS a WHERE a.idempotency_key = p.idempotency_key)::text"
    + " FROM payments AS p"
)
_SELECT_CALLBACK = (
    "SELECT "
    + ", ".join("extras::text" if c == "extras" else c for c in _CALLBACK_COLUMNS)
    + " FROM callback_inbox"
)
_KEY_ORDER = 'p.idempotency_key COLLATE "C"'
_SET_MUTABLE = ", ".join(
    f"{c} = %({c})s::jsonb" if c == "metadata" else f"{c} = %({c})s" for c in _PAYMENT_MUTABLE
)
_INSERT_ATTEMPT = (
    "INSERT INTO payment_attempts (idempotency_key, "
    + ", ".join(_ATTEMPT_COLUMNS)
    + ") VALUES (%s, "
    + ", ".join(["%s"] * len(_ATTEMPT_COLUMNS))
    + ")"
)
_RECORD_IDENTIFIER = (
    "INSERT INTO provider_identifiers (provider, kind, value, reference, idempotency_key, recorded_at)"
    " VALUES (%(provider)s, %(kind)s, %(value)s, %(reference)s, COALESCE(%(key)s::text,"
    " (SELECT idempotency_key FROM payments WHERE provider = %(provider)s AND reference = %(reference)s"
    " ORDER BY created_at LIMIT 1)), %(recorded_at)s)"
    # The first (provider, kind, value) wins; a later sighting only fills a key the first could
    # not know yet (recorded before the payment named its provider and reference).
    " ON CONFLICT (provider, kind, value) DO UPDATE SET idempotency_key = excluded.idempotency_key"
    " WHERE provider_identifiers.idempotency_key IS NULL AND excluded.idempotency_key IS NOT NULL"
    " AND provider_identifiers.reference = excluded.reference"
)

_UNAVAILABLE_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)
"""What "the database is out of reach" looks like from psycopg (a statement or lock timeout is an
`OperationalError` too: the database did not answer in time)."""


def unavailable(url: str, error: BaseException) -> StoreUnavailable:
    """A `StoreUnavailable` for `error` at `url`, naming the database without its credentials.

    libpq never puts the password in its messages; the URL is redacted anyway because the error
    may travel to an operator or a client.
    """
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return StoreUnavailable(f"database {redact_url(url)} unavailable: {first_line}")


def _attempt_row(key: str, seq: int, attempt: PaymentAttempt) -> tuple[Any, ...]:
    return (
        key,
        seq,
        attempt.provider,
        attempt.started_at,
        attempt.latency_ms,
        attempt.outcome.value,
        attempt.reference,
        attempt.provider_reference,
        attempt.provider_code,
        attempt.detail,
    )


def _without_nul(text: str) -> str:
    # PostgreSQL text and jsonb cannot hold NUL; a callback is hostile input from the internet and
    # must be kept (as evidence) rather than refused, so NUL becomes U+FFFD in what is stored.
    return text.replace("\x00", "\ufffd")


def _pg_payment_values(record: PaymentRecord) -> dict[str, Any]:
    values = _payment_values(record)
    values["failed_over"] = record.failed_over  # BOOLEAN here, 0/1 in SQLite
    return values


def _value_marks(columns: Sequence[str]) -> str:
    return ", ".join(f"%({c})s::jsonb" if c == "metadata" else f"%({c})s" for c in columns)


_ATTEMPT_ARRAY_TYPES = ("int", "text", "float8", "float8", "text", "text", "text", "text", "text")
"""The SQL type of each of `_ATTEMPT_COLUMNS`, for the arrays `_CLAIM_PAYMENT` unnests."""
_CLAIM_PAYMENT = (
    "WITH claimed AS ("
    f"INSERT INTO payments ({', '.join(_PAYMENT_COLUMNS)}) VALUES ({_value_marks(_PAYMENT_COLUMNS)})"
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key"
    "), attempts AS ("
    f"INSERT INTO payment_attempts (idempotency_key, {', '.join(_ATTEMPT_COLUMNS)})"
    " SELECT claimed.idempotency_key, a.* FROM claimed, unnest("
    + ", ".join(f"%(a_{c})s::{t}[]" for c, t in zip(_ATTEMPT_COLUMNS, _ATTEMPT_ARRAY_TYPES, strict=True))
    + ") AS a) SELECT idempotency_key FROM claimed"
)
"""A new payment and its first attempts in ONE statement (one round trip, atomic under autocommit):
the attempts are written only when the key was free."""


CHECK_IDLE_S = 1.0
"""A pooled connection returned this recently is handed out without a check (a round trip saved on
every call under load); one idle longer is checked first, since a database restart leaves idle
connections dead. A connection that died within the window fails its call with `StoreUnavailable`
(a payment is then refused before anything is sent) and is discarded."""


class _IdleCheck:
    """The pool's check and reset callbacks: check a connection only when it sat idle."""

    def __init__(self) -> None:
        self._returned_at: dict[int, float] = {}

    async def returned(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._returned_at[id(conn)] = time.monotonic()

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        returned_at = self._returned_at.pop(id(conn), None)
        if returned_at is not None and time.monotonic() - returned_at < CHECK_IDLE_S:
            return
        await AsyncConnectionPool.check_connection(conn)


class PostgresPaymentStore:
    """`PaymentStore` on a PostgreSQL database shared by every replica.

    `open()` before use, `close()` at shutdown. Writes that could lose money if they vanished
    silently (`save_payment`, `begin_attempt`, `finish_attempt`, `update_callback`) raise
    `KeyError` when their row does not exist; a database out of reach raises `StoreUnavailable`.
    """

    def __init__(
        self, url: str, *, min_size: int = DEFAULT_MIN_SIZE, max_size: int = DEFAULT_MAX_SIZE
    ) -> None:
        if min_size < 1:
            raise ValueError(f"min_size must be at least 1, got {min_size}")
        if max_size < min_size:
            raise ValueError(f"max_size must be at least min_size ({min_size}), got {max_size}")
        self._url = url
        self._idle_check = _IdleCheck()
        self._pool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs=connect_kwargs(application_name=_APPLICATION_NAME),
            open=False,
            check=self._idle_check.check,
            reset=self._idle_check.returned,
            timeout=POOL_TIMEOUT_S,
            reconnect_timeout=RECONNECT_TIMEOUT_S,
            name="payments",
        )
        # Readiness's own connection, used only while the pool is busy with payments (`ping`).
        self._ping_conn: psycopg.AsyncConnection[Any] | None = None
        # Identifiers from `record_identifier_soon`, oldest first, until a flush commits them.
        self._queued: list[ProviderIdentifier] = []
        self._flush_lock = anyio.Lock()

    # --- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Open the pool; `StoreUnavailable` when the database does not answer in time."""
        try:
            await self._pool.open(wait=True, timeout=OPEN_TIMEOUT_S)
        except _UNAVAILABLE_ERRORS as error:
            await self._pool.close()
            raise unavailable(self._url, error) from error

    async def close(self) -> None:
        """Write what is queued (when the database answers), then close every connection."""
        try:
            await self.flush()
        except StoreUnavailable as error:
            logger.warning(
                "closing the payment store with %d provider ids unwritten: %s", len(self._queued), error
            )
        await self._close_ping_connection()
        await self._pool.close()

    async def _close_ping_connection(self) -> None:
        conn, self._ping_conn = self._ping_conn, None
        if conn is not None:
            with contextlib.suppress(*_UNAVAILABLE_ERRORS):  # dead already: why it is being closed
                await conn.close()

    @asynccontextmanager
    async def _connection(
        self, timeout_s: float | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with self._pool.connection(timeout=timeout_s) as conn:
                yield conn
        except _UNAVAILABLE_ERRORS as error:
            raise unavailable(self._url, error) from error

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One transaction, committed when the block ends, rolled back if it raises."""
        async with self._connection() as conn, conn.transaction():
            yield conn

    @staticmethod
    def _with_attempts(rows: list[Any]) -> list[PaymentRecord]:
        """Payments for `rows` of `_SELECT_PAYMENT` (each with its attempts in its last column)."""
        return [
            _payment(row[:-1], [_attempt(a) for a in json.loads(row[-1])] if row[-1] else []) for row in rows
        ]

    async def _read_payments(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[PaymentRecord]:
        async with self._connection() as conn:
            return self._with_attempts(await (await conn.execute(sql, params)).fetchall())

    # --- payments -----------------------------------------------------------------------

    async def create_payment(self, record: PaymentRecord) -> PaymentRecord | None:
        """Insert a new payment (None); the stored record, with its attempts, if the key is taken."""
        values = _pg_payment_values(record)
        # Their list order is their order; a seq they already carry is not trusted.
        rows = [
            _attempt_row(record.idempotency_key, seq, a)[1:] for seq, a in enumerate(record.attempts, start=1)
        ]
        columns = (
            [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in _ATTEMPT_COLUMNS]
        )
        arrays = {f"a_{c}": column for c, column in zip(_ATTEMPT_COLUMNS, columns, strict=True)}
        async with self._connection() as conn:
            cursor = await conn.execute(_CLAIM_PAYMENT, {**values, **arrays})
            if await cursor.fetchone() is not None:
                return None
            # The loser of a race waited for the winner's commit; this statement's fresh snapshot
            # (READ COMMITTED) sees the winner's payment and attempts.
            rows = await (
                await conn.execute(
                    f"{_SELECT_PAYMENT} WHERE p.idempotency_key = %s", (record.idempotency_key,)
                )
            ).fetchall()
            return self._with_attempts(rows)[0]

    async def get_payment(self, key_or_reference: str) -> PaymentRecord | None:
        """A payment (with its attempts) by idempotency key, our reference or the provider's."""
        # Each OR term has its own index; a key match wins over a reference that happens to equal
        # another payment's key.
        records = await self._read_payments(
            f"{_SELECT_PAYMENT} WHERE p.idempotency_key = %(k)s OR p.reference = %(k)s"
            " OR p.provider_reference = %(k)s"
            " ORDER BY (p.idempotency_key = %(k)s) DESC, (p.reference IS NOT DISTINCT FROM %(k)s) DESC,"
            f" p.created_at, {_KEY_ORDER} LIMIT 1",
            {"k": key_or_reference},
        )
        return records[0] if records else None

    async def find_payment(self, provider: str, *ids: str) -> PaymentRecord | None:
        """The payment at `provider` that any of `ids` names: our reference first, then the
        provider's reference, then an identifier learnt for it (CheckoutRequestID, ...)."""
        wanted = sorted({i for i in ids if i})
        if not wanted:
            return None
        await self.flush()  # an id an adapter just learnt must be findable
        lookups = (
            f"{_SELECT_PAYMENT} WHERE p.reference = ANY(%(ids)s) AND p.provider = %(provider)s",
            f"{_SELECT_PAYMENT} WHERE p.provider_reference = ANY(%(ids)s) AND p.provider = %(provider)s",
            f"{_SELECT_PAYMENT} JOIN provider_identifiers AS i ON i.reference = p.reference"
            " WHERE i.value = ANY(%(ids)s) AND i.provider = %(provider)s AND p.provider = %(provider)s",
        )
        params = {"provider": provider, "ids": wanted}
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            for sql in lookups:
                cursor = await conn.execute(f"{sql} ORDER BY p.created_at, {_KEY_ORDER} LIMIT 1", params)
                found = await cursor.fetchall()
                if found:
                    return self._with_attempts(found)[0]
        return None

    async def begin_attempt(self, key: str, attempt: PaymentAttempt) -> int:
        """Append an attempt (outcome `sending` for one about to leave); returns its seq."""
        async with self._transaction() as conn:
            # The payment's row lock orders replicas appending to one payment: the next MAX(seq) is
            # read only once the previous appender has committed.
            locked = await conn.execute(
                "SELECT 1 FROM payments WHERE idempotency_key = %s FOR NO KEY UPDATE", (key,)
            )
            if await locked.fetchone() is None:
                raise KeyError(f"no payment {key!r} to add an attempt to")
            row = await (
                await conn.execute(
                    "SELECT COALESCE(MAX(seq), 0) + 1 FROM payment_attempts WHERE idempotency_key = %s",
                    (key,),
                )
            ).fetchone()
            seq = int(row[0]) if row is not None else 1
            await conn.execute(_INSERT_ATTEMPT, _attempt_row(key, seq, attempt))
        return seq

    async def finish_attempt(self, key: str, attempt: PaymentAttempt) -> None:
        """Write the outcome of the attempt `attempt.seq`."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                "UPDATE payment_attempts SET latency_ms = %s, outcome = %s, reference = %s,"
                " provider_reference = %s, provider_code = %s, detail = %s"
                " WHERE idempotency_key = %s AND seq = %s",
                (
                    attempt.latency_ms,
                    attempt.outcome.value,
                    attempt.reference,
                    attempt.provider_reference,
                    attempt.provider_code,
                    attempt.detail,
                    key,
                    attempt.seq,
                ),
            )
            if cursor.rowcount != 1:
                raise KeyError(f"no attempt {attempt.seq} of payment {key!r}")

    async def save_payment(self, record: PaymentRecord) -> None:
        """Write the payment's own fields (status, provider, references, schedule); not attempts."""
        values = _pg_payment_values(record)
        async with self._connection() as conn:
            cursor = await conn.execute(
                f"UPDATE payments SET {_SET_MUTABLE} WHERE idempotency_key = %(idempotency_key)s", values
            )
            if cursor.rowcount != 1:
                raise KeyError(f"no payment {record.idempotency_key!r} to save")

    async def finish_send(self, record: PaymentRecord, attempt: PaymentAttempt) -> None:
        """`finish_attempt` and `save_payment` at once: the payment's outcome and the outcome of
        the attempt that produced it commit together, in one statement (one round trip)."""
        key = record.idempotency_key
        values = _pg_payment_values(record)
        values.update(
            {
                "seq": attempt.seq,
                "a_latency_ms": attempt.latency_ms,
                "a_outcome": attempt.outcome.value,
                "a_reference": attempt.reference,
                "a_provider_reference": attempt.provider_reference,
                "a_provider_code": attempt.provider_code,
                "a_detail": attempt.detail,
            }
        )
        # Each update is gated on the other's row, so the statement changes both or neither.
        async with self._connection() as conn:
            cursor = await conn.execute(
                "WITH attempt AS (UPDATE payment_attempts SET latency_ms = %(a_latency_ms)s,"
                " outcome = %(a_outcome)s, reference = %(a_reference)s,"
                " provider_reference = %(a_provider_reference)s, provider_code = %(a_provider_code)s,"
                " detail = %(a_detail)s WHERE idempotency_key = %(idempotency_key)s AND seq = %(seq)s"
                " AND EXISTS (SELECT 1 FROM payments WHERE idempotency_key = %(idempotency_key)s)"
                " RETURNING 1),"
                f" payment AS (UPDATE payments SET {_SET_MUTABLE} WHERE idempotency_key = %(idempotency_key)s"
                " AND EXISTS (SELECT 1 FROM attempt) RETURNING 1)"
                " SELECT (SELECT COUNT(*) FROM attempt), (SELECT COUNT(*) FROM payment),"
                " EXISTS (SELECT 1 FROM payments WHERE idempotency_key = %(idempotency_key)s)",
                values,
            )
            row = await cursor.fetchone()
        if row is None or not row[2]:
            raise KeyError(f"no payment {key!r} to save")
        if row[0] != 1 or row[1] != 1:
            raise KeyError(f"no attempt {attempt.seq} of payment {key!r}")

    async def due_for_check(self, now: float, limit: int) -> list[PaymentRecord]:
        """Non-final payments whose `next_check_at` is due (or unset), oldest first."""
        return await self._read_payments(
            f"{_SELECT_PAYMENT} WHERE p.status = ANY(%s)"
            " AND (p.next_check_at IS NULL OR p.next_check_at <= %s)"
            f" ORDER BY p.created_at, {_KEY_ORDER} LIMIT %s",
            (_OPEN_VALUES, now, limit),
        )

    async def list_payments(
        self, *, statuses: tuple[TransactionStatus, ...] = (), provider: str | None = None, limit: int = 100
    ) -> list[PaymentRecord]:
        """Payments by status and provider, newest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if statuses:
            clauses.append("p.status = ANY(%s)")
            params.append([TransactionStatus(s).value for s in statuses])
        if provider is not None:
            clauses.append("p.provider = %s")
            params.append(provider)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._read_payments(
            f"{_SELECT_PAYMENT}{where} ORDER BY p.created_at DESC, {_KEY_ORDER} DESC LIMIT %s",
            (*params, limit),
        )

    async def count_by_status(self) -> dict[str, int]:
        """How many payments are in each status (from the trigger-kept `payment_counts`)."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT status, SUM(count) FROM payment_counts GROUP BY status"
                ' HAVING SUM(count) > 0 ORDER BY status COLLATE "C"'
            )
            rows = await cursor.fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    async def oldest_open(self) -> dict[str, float]:
        """Per provider, the `created_at` of its oldest payment that is not final."""
        # `payment_counts` names the (provider, status) pairs that have payments; each pair is then
        # one probe of the (provider, status, created_at) index, however many payments there are.
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT c.provider, MIN(o.created_at) FROM payment_counts AS c"
                " CROSS JOIN LATERAL (SELECT p.created_at FROM payments AS p"
                " WHERE p.provider = c.provider AND p.status = c.status ORDER BY p.created_at LIMIT 1) AS o"
                ' WHERE c.status = ANY(%s) AND c.count > 0 GROUP BY c.provider ORDER BY c.provider COLLATE "C"',
                (_OPEN_VALUES,),
            )
            rows = await cursor.fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    # --- provider identifiers -----------------------------------------------------------

    async def record_identifier(self, identifier: ProviderIdentifier) -> None:
        """Store a provider id (idempotent; the key is filled from the reference when known)."""
        self._queued.append(identifier)
        await self.flush()

    def record_identifier_soon(self, identifier: ProviderIdentifier) -> None:
        """Queue a provider id from synchronous code (an adapter's identifier sink); the next
        `flush()` (the router awaits one after each provider call) makes it durable."""
        self._queued.append(identifier)

    async def flush(self) -> None:
        """Return once every identifier queued before this call is committed, in one transaction.

        Flushes run one at a time: a flush that finds another writing waits for its commit, then
        writes what is left, so none returns while an identifier queued before it is unwritten. On
        failure the identifiers stay queued (writing one twice is harmless) and it raises.
        """
        async with self._flush_lock:
            batch = list(self._queued)
            if not batch:
                return
            async with self._transaction() as conn, conn.cursor() as cursor:
                await cursor.executemany(
                    _RECORD_IDENTIFIER,
                    [
                        {
                            "provider": i.provider,
                            "kind": i.kind,
                            "value": i.value,
                            "reference": i.reference,
                            "key": i.idempotency_key,
                            "recorded_at": i.recorded_at,
                        }
                        for i in batch
                    ],
                )
            # Only this task removes from the queue (under the lock); appends go to the end.
            del self._queued[: len(batch)]

    async def identifiers(self, provider: str, reference: str) -> dict[str, str]:
        """Every id learnt for `reference` at `provider`, kind -> value (the latest per kind)."""
        await self.flush()
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT kind, value FROM provider_identifiers WHERE provider = %s AND reference = %s"
                ' ORDER BY recorded_at, kind COLLATE "C", value COLLATE "C"',
                (provider, reference),
            )
            rows = await cursor.fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    # --- callback inbox -----------------------------------------------------------------

    async def add_callback(self, callback: InboxCallback) -> InboxCallback:
        """Store a received callback; returns it with its id (state `duplicate` when the same
        provider already delivered the same body). A duplicate is kept, never dropped: it is
        evidence of a provider's retry, and dropping it would make the inbox lie."""
        body = _without_nul(_cut_body(callback.body))
        hint = callback.hint
        money = hint.money

        def text(value: str | None) -> str | None:
            return None if value is None else _without_nul(value)

        extras = json.dumps(
            {_without_nul(k): _without_nul(v) for k, v in hint.extras.items()}, separators=(",", ":")
        )
        state, detail = callback.state, callback.detail
        async with self._transaction() as conn:
            # Two replicas receiving the same body at once: the second waits here for the first's
            # commit, so it sees the first and calls itself the duplicate.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (_CALLBACK_LOCK_NAMESPACE, f"{callback.provider}\n{callback.body_sha256}"),
            )
            first = await (
                await conn.execute(
                    "SELECT id FROM callback_inbox WHERE provider = %s AND body_sha256 = %s ORDER BY id LIMIT 1",
                    (callback.provider, callback.body_sha256),
                )
            ).fetchone()
            if first is not None:
                state, detail = CallbackState.DUPLICATE, f"duplicate of #{first[0]}"
            marks = ", ".join("%s::jsonb" if c == "extras" else "%s" for c in _CALLBACK_COLUMNS[1:])
            cursor = await conn.execute(
                f"INSERT INTO callback_inbox ({', '.join(_CALLBACK_COLUMNS[1:])}) VALUES ({marks}) RETURNING id",
                (
                    callback.provider,
                    callback.path_kind,
                    callback.received_at,
                    callback.body_sha256,
                    body,
                    text(hint.reference),
                    text(hint.provider_reference),
                    None if hint.operation is None else hint.operation.value,
                    hint.status.value,
                    None if money is None else money.amount_minor,
                    None if money is None else money.currency,
                    text(hint.payer),
                    text(hint.provider_code),
                    text(hint.provider_message),
                    extras,
                    hint.authenticated,
                    callback.idempotency_key,
                    state.value,
                    detail,
                    callback.checks,
                    callback.next_check_at,
                    callback.resolved_at,
                ),
            )
            row = await cursor.fetchone()
            new_id = int(row[0]) if row is not None else 0
        return callback.model_copy(update={"id": new_id, "body": body, "state": state, "detail": detail})

    async def update_callback(self, callback: InboxCallback) -> None:
        """Write a callback's state, match, detail and schedule."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                "UPDATE callback_inbox SET state = %s, idempotency_key = %s, detail = %s, checks = %s,"
                " next_check_at = %s, resolved_at = %s WHERE id = %s",
                (
                    callback.state.value,
                    callback.idempotency_key,
                    callback.detail,
                    callback.checks,
                    callback.next_check_at,
                    callback.resolved_at,
                    callback.id,
                ),
            )
            if cursor.rowcount != 1:
                raise KeyError(f"no callback #{callback.id} to update")

    async def _read_callbacks(self, sql: str, params: Sequence[Any]) -> list[InboxCallback]:
        async with self._connection() as conn:
            rows = await (await conn.execute(sql, params)).fetchall()
        return [_callback(r) for r in rows]

    async def callbacks_due(self, now: float, limit: int) -> list[InboxCallback]:
        """Pending and unmatched callbacks whose `next_check_at` is due (or unset), oldest first."""
        return await self._read_callbacks(
            f"{_SELECT_CALLBACK} WHERE state = ANY(%s)"
            " AND (next_check_at IS NULL OR next_check_at <= %s) ORDER BY received_at, id LIMIT %s",
            (_DUE_CALLBACK_VALUES, now, limit),
        )

    async def list_callbacks(
        self,
        *,
        provider: str | None = None,
        states: tuple[CallbackState, ...] = (),
        idempotency_key: str | None = None,
        limit: int = 100,
    ) -> list[InboxCallback]:
        """Received callbacks, newest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if provider is not None:
            clauses.append("provider = %s")
            params.append(provider)
        if states:
            clauses.append("state = ANY(%s)")
            params.append([CallbackState(s).value for s in states])
        if idempotency_key is not None:
            clauses.append("idempotency_key = %s")
            params.append(idempotency_key)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return await self._read_callbacks(
            f"{_SELECT_CALLBACK}{where} ORDER BY received_at DESC, id DESC LIMIT %s", (*params, limit)
        )

    # --- housekeeping -------------------------------------------------------------------

    async def prune(self, *, finished_before: float) -> int:
        """Delete final payments last updated before `finished_before`, with their attempts and
        provider ids, and settled callbacks received before it. Open payments always stay."""
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "WITH gone AS (DELETE FROM payments WHERE updated_at < %s AND status <> ALL(%s)"
                " RETURNING idempotency_key),"
                " attempts AS (DELETE FROM payment_attempts"
                " WHERE idempotency_key IN (SELECT idempotency_key FROM gone)),"
                " ids AS (DELETE FROM provider_identifiers"
                " WHERE idempotency_key IN (SELECT idempotency_key FROM gone))"
                " SELECT COUNT(*) FROM gone",
                (finished_before, _OPEN_VALUES),
            )
            row = await cursor.fetchone()
            await conn.execute(
                "DELETE FROM callback_inbox WHERE received_at < %s AND state = ANY(%s)",
                (finished_before, _SETTLED_CALLBACK_VALUES),
            )
        return int(row[0]) if row is not None else 0

    async def ping(self) -> None:
        """Return when the database answers; `StoreUnavailable` when it does not (readiness).

        Through the payments' pool, at most `PING_TIMEOUT_S`, so readiness also says that the
        pool can serve a payment (after an outage it regrows its connections first). One case is
        told apart: when every pooled connection is busy with payments the wait says nothing
        about the database, and a ping that failed for that reason alone would stop the very
        payments that keep the pool busy; the database is then asked on a connection of its own.
        """
        try:
            async with self._connection(timeout_s=PING_TIMEOUT_S) as conn:
                await conn.execute("SELECT 1")
            return
        except StoreUnavailable:
            if not self._pool_busy():
                raise
        await self._ping_own_connection()

    def _pool_busy(self) -> bool:
        """Every connection the pool may open is open and lent out."""
        stats = self._pool.get_stats()
        return stats.get("pool_size", 0) >= stats.get("pool_max", 1) and stats.get("pool_available", 0) == 0

    async def _ping_own_connection(self) -> None:
        """`SELECT 1` on the ping's own connection (kept between pings; a connection the server
        ended since is replaced at once), within `PING_TIMEOUT_S` in all."""
        try:
            with anyio.fail_after(PING_TIMEOUT_S):
                for _ in range(2):
                    conn = self._ping_conn
                    fresh = conn is None or conn.closed
                    if conn is None or conn.closed:
                        conn = self._ping_conn = await psycopg.AsyncConnection.connect(
                            self._url, **connect_kwargs(application_name=_APPLICATION_NAME)
                        )
                    try:
                        await conn.execute("SELECT 1")
                        return
                    except _UNAVAILABLE_ERRORS:
                        await self._close_ping_connection()
                        if fresh:
                            raise
        except TimeoutError as error:
            await self._close_ping_connection()
            raise unavailable(self._url, error) from error
        except _UNAVAILABLE_ERRORS as error:
            raise unavailable(self._url, error) from error
