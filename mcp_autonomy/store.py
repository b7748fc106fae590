"""The SQLite store: what must survive a restart.

What lives here: events (every decision, written in batches by the `EventRecorder`), the audit
log (every manual action: tool, arguments, client, reason, result), component state (small JSON
values per component and key, e.g. an operator's kill switch or the local backend's desired
replica count), the payment tables (payments, their attempts, provider ids and the callback
inbox, in narrow columns; `SqlitePaymentStore` in `payment_store.py` reads and writes them), and
the records the loops keep score with (incidents, predictions, maintenance windows: JSON
documents indexed by provider, status and time). WAL mode lets readers (tools, the dashboard) run
beside the writer. Calls are short and synchronous by design: each is one indexed statement on
a local file, well under a millisecond, so they run on the event loop's thread; a lock makes the
connection safe when a helper thread (e.g. the CLI) uses it too.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from mcp_autonomy.events import Event, EventType

SCHEMA_VERSION = 7

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        timestamp REAL NOT NULL,
        component TEXT NOT NULL,
        provider TEXT,
        severity TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        message TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS events_by_time ON events(timestamp);
    CREATE INDEX IF NOT EXISTS events_by_type_time ON events(type, timestamp);
    CREATE INDEX IF NOT EXISTS events_by_provider_time ON events(provider, timestamp);
    CREATE TABLE IF NOT EXISTS audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        timestamp REAL NOT NULL,
        tool TEXT NOT NULL,
        arguments TEXT NOT NULL,
        client TEXT,
        reason TEXT,
        ok INTEGER NOT NULL,
        result TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS audit_by_time ON audit_log(timestamp);
    CREATE TABLE IF NOT EXISTS component_state (
        component TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (component, key)
    );
    """,
    2: """
    CREATE TABLE IF NOT EXISTS payments (
        idempotency_key TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        provider TEXT,
        reference TEXT,
        provider_reference TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS payments_by_reference ON payments(reference);
    CREATE INDEX IF NOT EXISTS payments_by_provider_reference ON payments(provider_reference);
    CREATE INDEX IF NOT EXISTS payments_by_status ON payments(status);
    """,
    3: """
    CREATE TABLE IF NOT EXISTS incidents (
        id TEXT PRIMARY KEY,
        provider TEXT,
        status TEXT NOT NULL,
        at REAL NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS incidents_by_time ON incidents(at);
    CREATE INDEX IF NOT EXISTS incidents_by_status ON incidents(status);
    CREATE TABLE IF NOT EXISTS predictions (
        id TEXT PRIMARY KEY,
        provider TEXT,
        status TEXT NOT NULL,
        at REAL NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions(at);
    CREATE INDEX IF NOT EXISTS predictions_by_status ON predictions(status);
    CREATE TABLE IF NOT EXISTS maintenance_windows (
        id TEXT PRIMARY KEY,
        provider TEXT,
        status TEXT NOT NULL,
        at REAL NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS maintenance_by_time ON maintenance_windows(at);
    CREATE INDEX IF NOT EXISTS maintenance_by_status ON maintenance_windows(status);
    """,
    4: """
    CREATE TABLE IF NOT EXISTS load_samples (
        at REAL PRIMARY KEY,
        tpm REAL NOT NULL
    );
    """,
    5: """
    CREATE TABLE IF NOT EXISTS optimizations (
        id TEXT PRIMARY KEY,
        provider TEXT,
        status TEXT NOT NULL,
        at REAL NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS optimizations_by_time ON optimizations(at);
    CREATE INDEX IF NOT EXISTS optimizations_by_status ON optimizations(status);
    """,
    6: """
    -- Payments move from one JSON document per row to one column per field, with their attempts,
    -- the provider ids learnt for them and the callback inbox beside them.
    -- A renamed table keeps its indexes under their old names: drop the v2 ones first, so the
    -- new table gets its own (and a leftover name can never make a CREATE INDEX a no-op).
    DROP INDEX IF EXISTS payments_by_reference;
    DROP INDEX IF EXISTS payments_by_provider_reference;
    DROP INDEX IF EXISTS payments_by_status;
    ALTER TABLE payments RENAME TO payments_v2_legacy;
    CREATE TABLE payments (
        idempotency_key TEXT PRIMARY KEY,
        operation TEXT NOT NULL,
        amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
        currency TEXT NOT NULL,
        phone TEXT NOT NULL,
        country TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        status_reason TEXT,
        provider TEXT,
        reference TEXT,
        provider_reference TEXT,
        provider_code TEXT,
        provider_message TEXT,
        failed_over INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        accepted_at REAL,
        next_check_at REAL,
        checks INTEGER NOT NULL DEFAULT 0,
        metadata TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX payments_by_reference ON payments(reference);
    CREATE INDEX payments_by_provider_reference ON payments(provider_reference);
    CREATE INDEX payments_by_status_check ON payments(status, next_check_at);
    CREATE INDEX payments_by_provider_status_time ON payments(provider, status, created_at);
    -- Listing every payment newest first must not sort the whole table.
    CREATE INDEX payments_by_time ON payments(created_at);
    CREATE TABLE payment_attempts (
        idempotency_key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        provider TEXT NOT NULL,
        started_at REAL NOT NULL,
        latency_ms REAL NOT NULL,
        outcome TEXT NOT NULL,
        reference TEXT,
        provider_reference TEXT,
        provider_code TEXT,
        detail TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (idempotency_key, seq)
    );
    CREATE TABLE provider_identifiers (
        provider TEXT NOT NULL,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        reference TEXT NOT NULL,
        idempotency_key TEXT,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (provider, kind, value)
    );
    CREATE INDEX provider_identifiers_by_reference ON provider_identifiers(provider, reference);
    CREATE INDEX provider_identifiers_by_value ON provider_identifiers(value);
    CREATE TABLE callback_inbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        provider TEXT NOT NULL,
        path_kind TEXT NOT NULL,
        received_at REAL NOT NULL,
        body_sha256 TEXT NOT NULL,
        body TEXT NOT NULL,
        reference TEXT,
        provider_reference TEXT,
        operation TEXT,
        claimed_status TEXT NOT NULL,
        claimed_amount_minor INTEGER,
        claimed_currency TEXT,
        claimed_payer TEXT,
        provider_code TEXT,
        provider_message TEXT,
        extras TEXT NOT NULL DEFAULT '{}',
        authenticated INTEGER NOT NULL DEFAULT 0,
        idempotency_key TEXT,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        checks INTEGER NOT NULL DEFAULT 0,
        next_check_at REAL,
        resolved_at REAL
    );
    CREATE INDEX callback_inbox_by_state_check ON callback_inbox(state, next_check_at);
    CREATE INDEX callback_inbox_by_body ON callback_inbox(provider, body_sha256);
    CREATE INDEX callback_inbox_by_key ON callback_inbox(idempotency_key);
    -- Every legacy payment is copied field by field from its JSON document (the key, times and
    -- status columns were kept equal to it; they stand in for fields an old document lacks).
    INSERT INTO payments (
        idempotency_key, operation, amount_minor, currency, phone, country, description, status,
        status_reason, provider, reference, provider_reference, provider_code, provider_message,
        failed_over, created_at, updated_at, accepted_at, next_check_at, checks, metadata
    )
    SELECT
        l.idempotency_key,
        json_extract(l.record, '$.operation'),
        json_extract(l.record, '$.money.amount_minor'),
        json_extract(l.record, '$.money.currency'),
        json_extract(l.record, '$.phone'),
        json_extract(l.record, '$.country'),
        COALESCE(json_extract(l.record, '$.description'), ''),
        COALESCE(json_extract(l.record, '$.status'), l.status),
        json_extract(l.record, '$.status_reason'),
        json_extract(l.record, '$.provider'),
        json_extract(l.record, '$.reference'),
        json_extract(l.record, '$.provider_reference'),
        json_extract(l.record, '$.provider_code'),
        json_extract(l.record, '$.provider_message'),
        COALESCE(json_extract(l.record, '$.failed_over'), 0),
        COALESCE(json_extract(l.record, '$.created_at'), l.created_at),
        COALESCE(json_extract(l.record, '$.updated_at'), l.updated_at),
        json_extract(l.record, '$.accepted_at'),
        -- NULL: due at once, so the reconciler pulls every migrated open payment on start.
        json_extract(l.record, '$.next_check_at'),
        COALESCE(json_extract(l.record, '$.checks'), 0),
        COALESCE(json_extract(l.record, '$.metadata'), '{}')
    FROM payments_v2_legacy AS l;
    -- The attempts list keeps its order: its array index + 1 is the attempt's seq.
    INSERT INTO payment_attempts (
        idempotency_key, seq, provider, started_at, latency_ms, outcome, reference,
        provider_reference, provider_code, detail
    )
    SELECT
        l.idempotency_key,
        a.key + 1,
        json_extract(a.value, '$.provider'),
        json_extract(a.value, '$.started_at'),
        COALESCE(json_extract(a.value, '$.latency_ms'), 0),
        json_extract(a.value, '$.outcome'),
        json_extract(a.value, '$.reference'),
        json_extract(a.value, '$.provider_reference'),
        json_extract(a.value, '$.provider_code'),
        COALESCE(json_extract(a.value, '$.detail'), '')
    FROM payments_v2_legacy AS l, json_each(l.record, '$.attempts') AS a;
    DROP TABLE payments_v2_legacy;
    """,
    7: """
    -- Counts kept beside the rows by triggers, so status and stats never scan events or
    -- payments (counts are of rows stored: pruning lowers them). Backfilled from what exists.
    CREATE TABLE event_counts (
        type TEXT PRIMARY KEY,
        count INTEGER NOT NULL
    );
    INSERT INTO event_counts (type, count) SELECT type, COUNT(*) FROM events GROUP BY type;
    CREATE TRIGGER events_counted_insert AFTER INSERT ON events BEGIN
        INSERT INTO event_counts (type, count) VALUES (NEW.type, 1)
        ON CONFLICT (type) DO UPDATE SET count = count + 1;
    END;
    CREATE TRIGGER events_counted_delete AFTER DELETE ON events BEGIN
        UPDATE event_counts SET count = count - 1 WHERE type = OLD.type;
    END;
    -- A payment without a provider yet is counted under '' (as on PostgreSQL).
    CREATE TABLE payment_counts (
        provider TEXT NOT NULL,
        status TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (provider, status)
    );
    INSERT INTO payment_counts (provider, status, count)
    SELECT COALESCE(provider, ''), status, COUNT(*) FROM payments GROUP BY COALESCE(provider, ''), status;
    CREATE TRIGGER payments_counted_insert AFTER INSERT ON payments BEGIN
        INSERT INTO payment_counts (provider, status, count)
        VALUES (COALESCE(NEW.provider, ''), NEW.status, 1)
        ON CONFLICT (provider, status) DO UPDATE SET count = count + 1;
    END;
    CREATE TRIGGER payments_counted_delete AFTER DELETE ON payments BEGIN
        UPDATE payment_counts SET count = count - 1
        WHERE provider = COALESCE(OLD.provider, '') AND status = OLD.status;
    END;
    CREATE TRIGGER payments_counted_update AFTER UPDATE OF status, provider ON payments BEGIN
        UPDATE payment_counts SET count = count - 1
        WHERE provider = COALESCE(OLD.provider, '') AND status = OLD.status;
        INSERT INTO payment_counts (provider, status, count)
        VALUES (COALESCE(NEW.provider, ''), NEW.status, 1)
        ON CONFLICT (provider, status) DO UPDATE SET count = count + 1;
    END;
    """,
}
PRUNE_BATCH_ROWS = 5_000
"""Events deleted per transaction when pruning: a large backlog goes in short steps, so writers
(and, on PostgreSQL, the statement timeout) never wait on one long delete."""
RECORD_TABLES = ("incidents", "predictions", "maintenance_windows", "optimizations")
"""Tables of JSON records with an id, a provider, a status and a time (see `Store.put_record`)."""


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration script, one at a time (`sqlite3.complete_statement` knows
    a `;` inside a string, a comment or a trigger body from one that ends a statement)."""
    pending = ""
    for part in script.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"incomplete statement at the end of a migration: {pending!r}")


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to `SCHEMA_VERSION` in one transaction.

    The version is read again under `BEGIN IMMEDIATE` (the write lock): when two processes open
    the same old file at once, the second waits for the first and then finds nothing to do,
    instead of running a migration that is not repeatable (v6 renames a table) a second time.
    Statements run one by one because `executescript` would commit the open transaction first.
    """
    if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for target in sorted(v for v in _MIGRATIONS if v > version):
            for statement in _statements(_MIGRATIONS[target]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={target}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class StoreError(Exception):
    """Base of the store's own errors."""


class StoreUnavailable(StoreError):
    """The shared database cannot be reached (nothing was written; a payment is not sent)."""


class LeadershipLost(StoreError):
    """A leader's write was refused: its leadership epoch is no longer the current one."""

    def __init__(self, loop: str, epoch: int, detail: str = "") -> None:
        self.loop = loop
        self.epoch = epoch
        super().__init__(
            f"{loop}: write refused, leadership epoch {epoch} is no longer current"
            + (f" ({detail})" if detail else "")
        )


@dataclass(frozen=True, slots=True)
class Fence:
    """The leadership a write is made under: the loop, the epoch won, and who won it.

    A store that is shared between replicas checks it in the same transaction as the write and
    raises `LeadershipLost` when a newer leader has taken over; the embedded SQLite store has one
    process, so it has nothing to check.
    """

    loop: str
    epoch: int
    holder: str


class StateStore(Protocol):
    """What the loops, the audit log and the event recorder read and write (SQLite: `Store`;
    PostgreSQL: `mcp_autonomy.pg.store.PostgresStore`). Calls are synchronous and short."""

    @property
    def is_open(self) -> bool: ...

    def open(self) -> StateStore:
        """Connect and migrate (a no-op when already open); returns the store itself."""
        ...

    def close(self) -> None: ...

    @property
    def shared(self) -> bool:
        """True when other replicas read and write the same store."""
        ...

    def record_events(self, events: Sequence[Event]) -> int: ...

    def query_events(
        self,
        *,
        types: Iterable[EventType | str] = (),
        provider: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[Event]: ...

    def count_events(self) -> int: ...

    def count_events_by_type(self) -> dict[str, int]: ...

    def prune_events(self, before: float) -> int:
        """Delete events with a timestamp before `before`; returns how many (the audit log is
        never pruned: it is the compliance record)."""
        ...

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
    ) -> int: ...

    def count_audit(self) -> int: ...

    def count_audit_by_client(self) -> dict[str, int]: ...

    def audit_log(self, *, tool: str | None = None, limit: int = 100) -> list[AuditRecord]: ...

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
    ) -> None: ...

    def get_record(self, table: str, id: str) -> str | None: ...

    def list_records(
        self,
        table: str,
        *,
        provider: str | None = None,
        statuses: Iterable[str] = (),
        since: float | None = None,
        limit: int = 1000,
    ) -> list[str]: ...

    def record_load(self, at: float, tpm: float, *, keep_s: float, fence: Fence | None = None) -> None: ...

    def load_samples(self, *, since: float) -> list[tuple[float, float]]: ...

    def get_state(self, component: str, key: str, default: Any = None) -> Any: ...

    def set_state(
        self, component: str, key: str, value: Any, *, timestamp: float, fence: Fence | None = None
    ) -> None: ...

    def delete_state(self, component: str, key: str, *, fence: Fence | None = None) -> None: ...

    def claim_state(self, component: str, key: str, value: Any, *, timestamp: float) -> Any:
        """Store `value` only if (component, key) has none; returns the value stored (the first
        one written wins across replicas: e.g. the callback token every replica must share)."""
        ...


class AuditRecord(BaseModel):
    """One manual action as recorded in the audit log."""

    id: int
    timestamp: float
    tool: str
    arguments: dict[str, Any]
    client: str | None
    reason: str | None
    ok: bool
    result: Any


class Store:
    """A SQLite database under the state directory (WAL mode, schema migrations by version)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> Store:
        """Open (creating the file and directory if needed) and migrate to the current schema."""
        if self._conn is not None:
            return self
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: payments and their attempts live here, and an attempt must survive power loss,
        # not only a process crash (NORMAL in WAL mode loses the last commits to an OS crash).
        # Events are written in batches, so the fsync per commit costs little.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        try:
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @property
    def shared(self) -> bool:
        """False: one process owns this file (a `Fence` is accepted and has nothing to check)."""
        return False

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"store {self.path} is not open")
        return self._conn

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """The open connection, held under the store's lock until the block ends.

        For the other stores that share this file and connection (`SqlitePaymentStore`): the
        lock keeps a helper thread's statements out of a transaction the block has open.
        """
        with self._lock:
            yield self._db()

    # --- events -------------------------------------------------------------------------

    def record_events(self, events: Sequence[Event]) -> int:
        """Insert a batch of events in one transaction; returns how many were new."""
        if not events:
            return 0
        rows = [
            (
                e.id,
                e.seq,
                e.type.value,
                e.timestamp,
                e.component,
                e.provider,
                e.severity.value,
                int(e.dry_run),
                e.message,
                json.dumps(e.data, default=str, separators=(",", ":")),
            )
            for e in events
        ]
        with self._lock:
            db = self._db()
            db.execute("BEGIN")
            try:
                # rowcount, not total_changes: the latter also counts the trigger's counter rows.
                inserted = db.executemany(
                    "INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows
                ).rowcount
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
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
        clauses: list[str] = []
        params: list[Any] = []
        type_values = [EventType(t).value for t in types]
        if type_values:
            clauses.append(f"type IN ({','.join('?' * len(type_values))})")
            params.extend(type_values)
        if provider is not None:
            clauses.append("provider = ?")
            params.append(provider)
        if since is not None:
            clauses.append("timestamp >= ?")
            params.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM events {where} ORDER BY timestamp DESC, seq DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db().execute(sql, params).fetchall()
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
                data=json.loads(r[9]),
            )
            for r in rows
        ]
        events.reverse()
        return events

    def count_events(self) -> int:
        """Events stored (from `event_counts`: never a scan of the events)."""
        with self._lock:
            return int(self._db().execute("SELECT COALESCE(SUM(count), 0) FROM event_counts").fetchone()[0])

    def count_events_by_type(self) -> dict[str, int]:
        """Events stored per type (types with none stored are left out)."""
        with self._lock:
            rows = (
                self._db()
                .execute("SELECT type, count FROM event_counts WHERE count > 0 ORDER BY type")
                .fetchall()
            )
        return {str(r[0]): int(r[1]) for r in rows}

    def prune_events(self, before: float) -> int:
        """Delete events with a timestamp before `before`, `PRUNE_BATCH_ROWS` per transaction
        (the lock is let go between batches); the trigger keeps `event_counts` in step."""
        pruned = 0
        while True:
            with self._lock:
                batch = (
                    self._db()
                    .execute(
                        "DELETE FROM events WHERE rowid IN"
                        " (SELECT rowid FROM events WHERE timestamp < ? LIMIT ?)",
                        (before, PRUNE_BATCH_ROWS),
                    )
                    .rowcount
                )
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
        """Append one manual action; returns its id."""
        with self._lock:
            cursor = self._db().execute(
                "INSERT INTO audit_log (timestamp, tool, arguments, client, reason, ok, result)"
                " VALUES (?,?,?,?,?,?,?)",
                (
                    timestamp,
                    tool,
                    json.dumps(arguments, default=str),
                    client,
                    reason,
                    int(ok),
                    json.dumps(result, default=str),
                ),
            )
            return int(cursor.lastrowid or 0)

    def count_audit(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM audit_log").fetchone()[0])

    def count_audit_by_client(self) -> dict[str, int]:
        """Audit entries per recorded `client` (the caller label)."""
        with self._lock:
            rows = self._db().execute("SELECT client, COUNT(*) FROM audit_log GROUP BY client").fetchall()
        return {str(client or ""): int(count) for client, count in rows}

    def audit_log(self, *, tool: str | None = None, limit: int = 100) -> list[AuditRecord]:
        """The newest `limit` audit records (optionally for one tool), oldest first."""
        sql = "SELECT id, timestamp, tool, arguments, client, reason, ok, result FROM audit_log"
        params: list[Any] = []
        if tool is not None:
            sql += " WHERE tool = ?"
            params.append(tool)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = self._db().execute(sql, params).fetchall()
        records = [
            AuditRecord(
                id=r[0],
                timestamp=r[1],
                tool=r[2],
                arguments=json.loads(r[3]),
                client=r[4],
                reason=r[5],
                ok=bool(r[6]),
                result=json.loads(r[7]),
            )
            for r in rows
        ]
        records.reverse()
        return records

    # --- records: incidents, predictions, maintenance windows ---------------------------

    @staticmethod
    def _record_table(table: str) -> str:
        if table not in RECORD_TABLES:
            raise ValueError(f"unknown record table {table!r}; allowed: {', '.join(RECORD_TABLES)}")
        return table

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
        with self._lock:
            self._db().execute(
                f"INSERT INTO {name} (id, provider, status, at, record) VALUES (?,?,?,?,?)"
                " ON CONFLICT(id) DO UPDATE SET provider = excluded.provider, status = excluded.status,"
                " at = excluded.at, record = excluded.record",
                (id, provider, status, at, record),
            )

    def get_record(self, table: str, id: str) -> str | None:
        """One record's JSON by id, or None."""
        name = self._record_table(table)
        with self._lock:
            row = self._db().execute(f"SELECT record FROM {name} WHERE id = ?", (id,)).fetchone()
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
        clauses: list[str] = []
        params: list[Any] = []
        if provider is not None:
            clauses.append("provider = ?")
            params.append(provider)
        wanted = list(statuses)
        if wanted:
            clauses.append(f"status IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        if since is not None:
            clauses.append("at >= ?")
            params.append(since)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    f"SELECT record FROM {name}{where} ORDER BY at DESC, id DESC LIMIT ?", (*params, limit)
                )
                .fetchall()
            )
        return [str(r[0]) for r in reversed(rows)]

    # --- load history (what the scaling forecaster learns from) --------------------------

    def record_load(self, at: float, tpm: float, *, keep_s: float, fence: Fence | None = None) -> None:
        """Add one measured load sample and drop those older than `keep_s`."""
        with self._lock:
            db = self._db()
            db.execute("INSERT OR REPLACE INTO load_samples (at, tpm) VALUES (?, ?)", (at, tpm))
            db.execute("DELETE FROM load_samples WHERE at < ?", (at - keep_s,))

    def load_samples(self, *, since: float) -> list[tuple[float, float]]:
        """Load samples (epoch seconds, transactions per minute) at or after `since`, oldest first."""
        with self._lock:
            rows = (
                self._db()
                .execute("SELECT at, tpm FROM load_samples WHERE at >= ? ORDER BY at", (since,))
                .fetchall()
            )
        return [(float(r[0]), float(r[1])) for r in rows]

    # --- component state ----------------------------------------------------------------

    def get_state(self, component: str, key: str, default: Any = None) -> Any:
        """A component's persisted value for `key`, or `default`."""
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT value FROM component_state WHERE component = ? AND key = ?", (component, key)
                )
                .fetchone()
            )
        return default if row is None else json.loads(row[0])

    def set_state(
        self, component: str, key: str, value: Any, *, timestamp: float, fence: Fence | None = None
    ) -> None:
        """Persist a JSON-serialisable value for (component, key)."""
        with self._lock:
            self._db().execute(
                "INSERT INTO component_state (component, key, value, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT(component, key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (component, key, json.dumps(value, default=str), timestamp),
            )

    def claim_state(self, component: str, key: str, value: Any, *, timestamp: float) -> Any:
        """Store `value` only if (component, key) has none; returns the value stored."""
        with self._lock:
            self._db().execute(
                "INSERT INTO component_state (component, key, value, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT(component, key) DO NOTHING",
                (component, key, json.dumps(value, default=str), timestamp),
            )
        return self.get_state(component, key)

    def delete_state(self, component: str, key: str, *, fence: Fence | None = None) -> None:
        with self._lock:
            self._db().execute(
                "DELETE FROM component_state WHERE component = ? AND key = ?", (component, key)
            )
