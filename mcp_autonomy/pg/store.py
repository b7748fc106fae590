"""The shared `StateStore` on PostgreSQL: events, audit log, records, load and component state.

Same methods, semantics and results as the embedded SQLite `Store`, so replicas that share one
database URL see one state. What sharing adds: every write made under a `Fence` checks the
leadership epoch in its own transaction; state and record writes bump `change_seq` and send
`NOTIFY` on `fencing.STATE_CHANNEL` (new events on `fencing.EVENTS_CHANNEL`) so the other replicas
learn of them at once. Calls are synchronous (the callers are) on one connection under a lock; a
lost connection becomes `StoreUnavailable` and the next call reconnects by itself.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from mcp_autonomy.events import Event, EventType
from mcp_autonomy.pg import fencing, schema
from mcp_autonomy.pg.connect import connect, redact_url
from mcp_autonomy.store import (
    PRUNE_BATCH_ROWS,
    RECORD_TABLES,
    AuditRecord,
    Fence,
    StoreUnavailable,
)

__all__ = ["PostgresStore"]

_INSERT_BATCH_ROWS = 1_000
"""Events per INSERT statement (11 parameters each stays far below PostgreSQL's 65,535)."""
_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
CONNECT_TIMEOUT_S = 2
"""How long one connection attempt may take. The calls are synchronous, on the event loop: while
the database is unreachable over the network (no refusal, just silence) each attempt stalls the
loop this long, so attempts are also spaced out (`RECONNECT_BACKOFF_*`)."""
RECONNECT_BACKOFF_INITIAL_S = 1.0
RECONNECT_BACKOFF_MAX_S = 5.0
"""After a failed connection attempt, calls fail at once (`StoreUnavailable`) for this long, doubling
after each further failure up to the maximum; the first success resets it."""
STALE_CHECK_AFTER_S = 1.0
"""A connection idle this long is checked with a round trip before use (`_drop_if_stale`)."""


NUL_REPLACEMENT = "\ufffd"
"""What a NUL character becomes: PostgreSQL text and JSONB cannot hold one, and one odd string
from a provider must not make a whole batch of events fail."""


def _text(value: str) -> str:
    return value.replace("\x00", NUL_REPLACEMENT) if "\x00" in value else value


def _storable(value: Any) -> Any:
    """`value` as JSONB can hold it: NaN and infinities (JSON has none) become None, NUL
    characters become `NUL_REPLACEMENT`, anything else that is not JSON becomes its `str`."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {(_text(k) if isinstance(k, str) else k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return _text(str(value))


def _json_text(value: Any) -> str:
    """JSON text for a JSONB column, with the SQLite store's leniency (`default=str`)."""
    try:
        text = json.dumps(value, default=str, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = ""
    # The walk costs a copy, so only values JSONB would refuse take it.
    if not text or "\\u0000" in text:
        text = json.dumps(_storable(value), default=str, allow_nan=False, separators=(",", ":"))
    return text


def _jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=_json_text)


class PostgresStore:
    """The `StateStore` every replica shares (one sync connection, reconnecting after an outage).

    `origin` is this process's run id, stored with each event it records so a replica can tell
    its own events from the others'.
    """

    def __init__(self, url: str, *, origin: str) -> None:
        if not origin:
            raise ValueError("origin must be a non-empty run id")
        self._url = url
        self.origin = origin
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._retry_at_mono = 0.0
        self._backoff_s = RECONNECT_BACKOFF_INITIAL_S
        self._used_at_mono = 0.0
        self._opened = False
        self._secrets = self._passwords(url)

    @staticmethod
    def _passwords(url: str) -> list[str]:
        """The password in the URL (user-info or `password=`), to scrub from any error text."""
        try:
            password = conninfo_to_dict(url).get("password")
        except psycopg.ProgrammingError:
            return []
        return [str(password)] if password else []

    @property
    def url_redacted(self) -> str:
        """The URL as it may be shown: scheme, host, port, database (never user or password)."""
        return redact_url(self._url)

    def open(self) -> PostgresStore:
        """Connect and migrate to the current schema (once: opening an open store returns it);
        `StoreUnavailable` if unreachable."""
        if self._opened:
            return self
        with self._session(opening=True) as conn:
            schema.migrate(conn)
        self._opened = True
        return self

    def close(self) -> None:
        with self._lock:
            self._opened = False
            self._drop()

    @property
    def is_open(self) -> bool:
        """True between `open` and `close`, also while the database is briefly unreachable."""
        return self._opened

    @property
    def shared(self) -> bool:
        """True: other replicas read and write this database."""
        return True

    # --- the connection -------------------------------------------------------------------

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _drop_if_stale(self) -> None:
        """A connection idle for a while may have been ended by the server (a restart, a failover,
        an idle timeout) without libpq knowing until the next statement fails; that failure would
        refuse a call the database can serve. So one idle longer than `STALE_CHECK_AFTER_S` is
        checked with a round trip first, and dropped (reconnected at once) if it is dead."""
        conn = self._conn
        if conn is None or conn.closed or time.monotonic() - self._used_at_mono < STALE_CHECK_AFTER_S:
            return
        try:
            conn.execute("SELECT 1")
        except _CONNECTION_ERRORS:
            self._drop()

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return StoreUnavailable(f"state store {self.url_redacted} unavailable: {detail}")

    @contextmanager
    def _session(self, *, opening: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """The connection under the lock, (re)connecting first; connection errors become
        `StoreUnavailable` and drop the connection, so the next call starts afresh."""
        with self._lock:
            if not (self._opened or opening):
                # As the SQLite store: a closed store must not quietly connect again.
                raise RuntimeError(f"store {self.url_redacted} is not open")
            if (self._conn is None or self._conn.closed) and not opening:
                wait_s = self._retry_at_mono - time.monotonic()
                if wait_s > 0:
                    raise StoreUnavailable(
                        f"state store {self.url_redacted} unavailable: the last connection attempt "
                        f"failed; next attempt in {wait_s:.1f} s"
                    )
            self._drop_if_stale()
            try:
                if self._conn is None or self._conn.closed:
                    try:
                        self._conn = connect(self._url, connect_timeout=CONNECT_TIMEOUT_S)
                    except _CONNECTION_ERRORS:
                        self._retry_at_mono = time.monotonic() + self._backoff_s
                        self._backoff_s = min(self._backoff_s * 2, RECONNECT_BACKOFF_MAX_S)
                        raise
                    self._backoff_s = RECONNECT_BACKOFF_INITIAL_S
                conn = self._conn
                yield conn
                self._used_at_mono = time.monotonic()
            except _CONNECTION_ERRORS as error:
                # A statement timeout leaves a healthy connection; anything else (server gone,
                # socket closed, a transaction left open) is not worth trusting again.
                if self._conn is not None and (
                    self._conn.broken
                    or self._conn.closed
                    or self._conn.info.transaction_status != TransactionStatus.IDLE
                ):
                    self._drop()
                raise self._unavailable(error) from None

    def _notify(self, conn: psycopg.Connection[Any], channel: str) -> None:
        # Inside the write's transaction: delivered on commit, never for a rolled-back write.
        conn.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(channel)))

    # --- events -------------------------------------------------------------------------

    def record_events(self, events: Sequence[Event]) -> int:
        """Insert a batch of events in one transaction; returns how many were new.

        `event_counts` grows by the rows really inserted, in the same statement; its rows are
        upserted in type order so two replicas' batches never deadlock on them.
        """
        if not events:
            return 0
        inserted = 0
        with self._session() as conn, conn.transaction():
            for start in range(0, len(events), _INSERT_BATCH_ROWS):
                chunk = events[start : start + _INSERT_BATCH_ROWS]
                values = sql.SQL(",").join(sql.SQL("(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)") for _ in chunk)
                params: list[Any] = []
                for e in chunk:
                    params.extend(
                        (
                            e.id,
                            self.origin,
                            e.seq,
                            e.type.value,
                            e.timestamp,
                            _text(e.component),
                            e.provider,
                            e.severity.value,
                            e.dry_run,
                            _text(e.message),
                            _jsonb(e.data),
                        )
                    )
                query = sql.SQL(
                    "WITH inserted AS ("
                    " INSERT INTO events (id, origin, seq, type, timestamp, component, provider,"
                    " severity, dry_run, message, data) VALUES {values}"
                    " ON CONFLICT (id) DO NOTHING RETURNING type),"
                    " counted AS ("
                    " INSERT INTO event_counts (type, count)"
                    " SELECT type, COUNT(*) FROM inserted GROUP BY type ORDER BY type"
                    " ON CONFLICT (type) DO UPDATE SET count = event_counts.count + excluded.count)"
                    " SELECT COUNT(*) FROM inserted"
                ).format(values=values)
                row = conn.execute(query, params).fetchone()
                inserted += int(row[0]) if row is not None else 0
            if inserted:
                self._notify(conn, fencing.EVENTS_CHANNEL)
        return inserted

    def query_events(
        self,
        *,
        types: Iterable[EventType | str] = (),
        provider: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """The newest `limit` stored events that match, oldest first."""
        clauses: list[sql.Composable] = []
        params: list[Any] = []
        type_values = [EventType(t).value for t in types]
        if type_values:
            clauses.append(sql.SQL("type = ANY(%s)"))
            params.append(type_values)
        if provider is not None:
            clauses.append(sql.SQL("provider = %s"))
            params.append(provider)
        if since is not None:
            clauses.append(sql.SQL("timestamp >= %s"))
            params.append(since)
        where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
        # gid last: two replicas' events may share a timestamp and a per-process seq.
        query = sql.SQL(
            "SELECT id, seq, type, timestamp, component, provider, severity, dry_run, message, data"
            " FROM events {where} ORDER BY timestamp DESC, seq DESC, gid DESC LIMIT %s"
        ).format(where=where)
        params.append(limit)
        with self._session() as conn:
            rows = conn.execute(query, params).fetchall()
        events = [
            Event(
                id=r[0],
                seq=r[1],
                type=EventType(r[2]),
                timestamp=r[3],
                component=r[4],
                provider=r[5],
                severity=r[6],
                dry_run=bool(r[7]),
                message=r[8],
                data=r[9],
            )
            for r in rows
        ]
        events.reverse()
        return events

    def count_events(self) -> int:
        """Events stored (from `event_counts`: never a scan of the events)."""
        with self._session() as conn:
            row = conn.execute("SELECT COALESCE(SUM(count), 0) FROM event_counts").fetchone()
        return int(row[0]) if row is not None else 0

    def count_events_by_type(self) -> dict[str, int]:
        """Events stored per type (types with none stored are left out, as in SQLite)."""
        with self._session() as conn:
            rows = conn.execute(
                "SELECT type, count FROM event_counts WHERE count > 0 ORDER BY type"
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def prune_events(self, before: float) -> int:
        """Delete events with a timestamp before `before`; returns how many went.

        Deletes in batches of `PRUNE_BATCH_ROWS`, each its own transaction (so a large backlog
        never runs into the statement timeout or holds the lock long), keeping `event_counts` in
        step; counter rows are updated in type order so a concurrent batch of events never
        deadlocks with the prune.
        """
        pruned = 0
        while True:
            with self._session() as conn, conn.transaction():
                rows = conn.execute(
                    "WITH gone AS (DELETE FROM events WHERE gid IN ("
                    " SELECT gid FROM events WHERE timestamp < %s LIMIT %s) RETURNING type)"
                    " SELECT type, COUNT(*) FROM gone GROUP BY type ORDER BY type",
                    (before, PRUNE_BATCH_ROWS),
                ).fetchall()
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "UPDATE event_counts SET count = count - %s WHERE type = %s",
                        [(int(n), str(t)) for t, n in rows],
                    )
            batch = sum(int(n) for _, n in rows)
            pruned += batch
            if batch < PRUNE_BATCH_ROWS:
                return pruned

    # --- audit log ----------------------------------------------------------------------

    def record_audit(
        self,
        *,
        timestamp: float,
        tool: str,
        arguments: dict[str, Any],
        client: str | None,
        reason: str | None,
        ok: bool,
        result: Any,
    ) -> int:
        """Append one manual action; returns its id. The audit log is never pruned."""
        with self._session() as conn:
            row = conn.execute(
                "INSERT INTO audit_log (timestamp, tool, arguments, client, reason, ok, result)"
                " VALUES (%s,%s,%s,%s,%s,%s,%s) RETURNING id",
                (timestamp, tool, _jsonb(arguments), client, reason, ok, _jsonb(result)),
            ).fetchone()
        return int(row[0]) if row is not None else 0

    def count_audit(self) -> int:
        with self._session() as conn:
            row = conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()
        return int(row[0]) if row is not None else 0

    def count_audit_by_client(self) -> dict[str, int]:
        """Audit entries per recorded `client` (the caller label)."""
        with self._session() as conn:
            rows = conn.execute("SELECT client, COUNT(*) FROM audit_log GROUP BY client").fetchall()
        return {str(client or ""): int(count) for client, count in rows}

    def audit_log(self, *, tool: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """The newest `limit` audit records (optionally for one tool), oldest first."""
        query = "SELECT id, timestamp, tool, arguments, client, reason, ok, result FROM audit_log"
        params: list[Any] = []
        if tool is not None:
            query += " WHERE tool = %s"
            params.append(tool)
        query += " ORDER BY id DESC LIMIT %s"
        params.append(limit)
        with self._session() as conn:
            rows = conn.execute(query.encode(), params).fetchall()
        records = [
            AuditRecord(
                id=r[0],
                timestamp=r[1],
                tool=r[2],
                arguments=r[3],
                client=r[4],
                reason=r[5],
                ok=bool(r[6]),
                result=r[7],
            )
            for r in rows
        ]
        records.reverse()
        return records

    # --- records: incidents, predictions, maintenance windows, optimizations -------------

    @staticmethod
    def _record_table(table: str) -> sql.Identifier:
        if table not in RECORD_TABLES:
            raise ValueError(f"unknown record table {table!r}; allowed: {', '.join(RECORD_TABLES)}")
        return sql.Identifier(table)

    def put_record(
        self,
        table: str,
        *,
        id: str,
        provider: str | None,
        status: str,
        at: float,
        record: str,
        fence: Fence | None = None,
    ) -> None:
        """Insert or replace one JSON record (`at` is the time it is listed by)."""
        name = self._record_table(table)
        with self._session() as conn, conn.transaction():
            if fence is not None:
                fencing.check_fence(conn, fence)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {name} (id, provider, status, at, record) VALUES (%s,%s,%s,%s,%s)"
                    " ON CONFLICT (id) DO UPDATE SET provider = excluded.provider,"
                    " status = excluded.status, at = excluded.at, record = excluded.record,"
                    " change_seq = nextval('change_seq')"
                ).format(name=name),
                (id, provider, status, at, record),
            )
            self._notify(conn, fencing.STATE_CHANNEL)

    def get_record(self, table: str, id: str) -> str | None:
        """One record's JSON by id, or None."""
        name = self._record_table(table)
        with self._session() as conn:
            row = conn.execute(
                sql.SQL("SELECT record FROM {name} WHERE id = %s").format(name=name), (id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def list_records(
        self,
        table: str,
        *,
        provider: str | None = None,
        statuses: Iterable[str] = (),
        since: float | None = None,
        limit: int = 1000,
    ) -> list[str]:
        """Records' JSON matching the filters, newest `limit` by time, oldest first."""
        name = self._record_table(table)
        clauses: list[sql.Composable] = []
        params: list[Any] = []
        if provider is not None:
            clauses.append(sql.SQL("provider = %s"))
            params.append(provider)
        wanted = list(statuses)
        if wanted:
            clauses.append(sql.SQL("status = ANY(%s)"))
            params.append(wanted)
        if since is not None:
            clauses.append(sql.SQL("at >= %s"))
            params.append(since)
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
        # COLLATE "C": ties on time break by id in byte order, as SQLite does, whatever the
        # database's default collation.
        query = sql.SQL(
            'SELECT record FROM {name}{where} ORDER BY at DESC, id COLLATE "C" DESC LIMIT %s'
        ).format(name=name, where=where)
        with self._session() as conn:
            rows = conn.execute(query, (*params, limit)).fetchall()
        return [str(r[0]) for r in reversed(rows)]

    # --- load history (what the scaling forecaster learns from) --------------------------

    def record_load(self, at: float, tpm: float, *, keep_s: float, fence: Fence | None = None) -> None:
        """Add one measured load sample and drop those older than `keep_s`."""
        with self._session() as conn, conn.transaction():
            if fence is not None:
                fencing.check_fence(conn, fence)
            conn.execute(
                "INSERT INTO load_samples (at, tpm) VALUES (%s, %s)"
                " ON CONFLICT (at) DO UPDATE SET tpm = excluded.tpm",
                (at, tpm),
            )
            conn.execute("DELETE FROM load_samples WHERE at < %s", (at - keep_s,))

    def load_samples(self, *, since: float) -> list[tuple[float, float]]:
        """Load samples (epoch seconds, transactions per minute) at or after `since`, oldest first."""
        with self._session() as conn:
            rows = conn.execute(
                "SELECT at, tpm FROM load_samples WHERE at >= %s ORDER BY at", (since,)
            ).fetchall()
        return [(float(r[0]), float(r[1])) for r in rows]

    # --- component state ----------------------------------------------------------------

    def get_state(self, component: str, key: str, default: Any = None) -> Any:
        """A component's persisted value for `key`, or `default`."""
        with self._session() as conn:
            row = conn.execute(
                "SELECT value FROM component_state WHERE component = %s AND key = %s",
                (component, key),
            ).fetchone()
        return default if row is None else row[0]

    def set_state(
        self, component: str, key: str, value: Any, *, timestamp: float, fence: Fence | None = None
    ) -> None:
        """Persist a JSON-serialisable value for (component, key), and tell the other replicas."""
        with self._session() as conn, conn.transaction():
            if fence is not None:
                fencing.check_fence(conn, fence)
            conn.execute(
                "INSERT INTO component_state (component, key, value, updated_at)"
                " VALUES (%s,%s,%s,%s)"
                " ON CONFLICT (component, key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at, change_seq = nextval('change_seq')",
                (component, key, _jsonb(value), timestamp),
            )
            conn.execute(
                "DELETE FROM component_state_deleted WHERE component = %s AND key = %s",
                (component, key),
            )
            self._notify(conn, fencing.STATE_CHANNEL)

    def claim_state(self, component: str, key: str, value: Any, *, timestamp: float) -> Any:
        """Store `value` only if (component, key) has none; returns the value stored (one
        winner across replicas, by the primary key)."""
        with self._session() as conn, conn.transaction():
            inserted = conn.execute(
                "INSERT INTO component_state (component, key, value, updated_at)"
                " VALUES (%s,%s,%s,%s) ON CONFLICT (component, key) DO NOTHING RETURNING 1",
                (component, key, _jsonb(value), timestamp),
            ).fetchone()
            if inserted is not None:
                self._notify(conn, fencing.STATE_CHANNEL)
        return self.get_state(component, key)

    def delete_state(self, component: str, key: str, *, fence: Fence | None = None) -> None:
        """Remove (component, key), leaving a tombstone so the other replicas drop it too."""
        with self._session() as conn, conn.transaction():
            if fence is not None:
                fencing.check_fence(conn, fence)
            conn.execute("DELETE FROM component_state WHERE component = %s AND key = %s", (component, key))
            conn.execute(
                "INSERT INTO component_state_deleted (component, key) VALUES (%s, %s)"
                " ON CONFLICT (component, key) DO UPDATE SET change_seq = nextval('change_seq')",
                (component, key),
            )
            self._notify(conn, fencing.STATE_CHANNEL)
