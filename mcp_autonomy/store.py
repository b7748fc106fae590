"""The SQLite store: what must survive a restart.

What lives here: events (every decision, written in batches by the `EventRecorder`), the audit
log (every manual action: tool, arguments, client, reason, result), component state (small JSON
values per component and key, e.g. an operator's kill switch or the local backend's desired
replica count), payments, and the records the loops keep score with (incidents, predictions,
maintenance windows: JSON documents indexed by provider, status and time). WAL mode lets readers (tools, the dashboard) run
beside the writer. Calls are short and synchronous by design: each is one indexed statement on
a local file, well under a millisecond, so they run on the event loop's thread; a lock makes the
connection safe when a helper thread (e.g. the CLI) uses it too.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mcp_autonomy.events import Event, EventType
from mcp_autonomy.payments import PaymentRecord

SCHEMA_VERSION = 5

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
}
RECORD_TABLES = ("incidents", "predictions", "maintenance_windows", "optimizations")
"""Tables of JSON records with an id, a provider, a status and a time (see `Store.put_record`)."""


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
        # NORMAL is durable against process crashes in WAL mode; only an OS crash can lose the
        # last transactions, an accepted trade for an operational log.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for target in sorted(v for v in _MIGRATIONS if v > version):
            conn.executescript("BEGIN;" + _MIGRATIONS[target] + f"PRAGMA user_version={target};COMMIT;")
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

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"store {self.path} is not open")
        return self._conn

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
            before = db.total_changes
            db.execute("BEGIN")
            db.executemany("INSERT OR IGNORE INTO events VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            db.execute("COMMIT")
            return db.total_changes - before

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
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def count_events_by_type(self) -> dict[str, int]:
        with self._lock:
            rows = (
                self._db().execute("SELECT type, COUNT(*) FROM events GROUP BY type ORDER BY type").fetchall()
            )
        return {str(r[0]): int(r[1]) for r in rows}

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

    # --- payments -----------------------------------------------------------------------

    def insert_payment(self, record: PaymentRecord) -> PaymentRecord | None:
        """Insert a new payment; returns the existing record instead if the key is taken."""
        with self._lock:
            db = self._db()
            cursor = db.execute(
                "INSERT OR IGNORE INTO payments VALUES (?,?,?,?,?,?,?,?)",
                (
                    record.idempotency_key,
                    record.status.value,
                    record.provider,
                    record.reference,
                    record.provider_reference,
                    record.created_at,
                    record.updated_at,
                    record.model_dump_json(),
                ),
            )
            if cursor.rowcount == 1:
                return None
            row = db.execute(
                "SELECT record FROM payments WHERE idempotency_key = ?", (record.idempotency_key,)
            ).fetchone()
        return PaymentRecord.model_validate_json(row[0])

    def update_payment(self, record: PaymentRecord) -> None:
        """Write the record's current state (it must exist)."""
        with self._lock:
            self._db().execute(
                "UPDATE payments SET status = ?, provider = ?, reference = ?, provider_reference = ?,"
                " updated_at = ?, record = ? WHERE idempotency_key = ?",
                (
                    record.status.value,
                    record.provider,
                    record.reference,
                    record.provider_reference,
                    record.updated_at,
                    record.model_dump_json(),
                    record.idempotency_key,
                ),
            )

    def get_payment(self, key_or_reference: str) -> PaymentRecord | None:
        """A payment by idempotency key, our reference or the provider's reference."""
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT record FROM payments WHERE idempotency_key = ? OR reference = ?"
                    " OR provider_reference = ? LIMIT 1",
                    (key_or_reference, key_or_reference, key_or_reference),
                )
                .fetchone()
            )
        return None if row is None else PaymentRecord.model_validate_json(row[0])

    def payments_with_status(self, *statuses: str, limit: int = 1000) -> list[PaymentRecord]:
        """Payments whose status is one of `statuses`, oldest first."""
        marks = ",".join("?" * len(statuses))
        with self._lock:
            rows = (
                self._db()
                .execute(
                    f"SELECT record FROM payments WHERE status IN ({marks}) ORDER BY created_at LIMIT ?",
                    (*statuses, limit),
                )
                .fetchall()
            )
        return [PaymentRecord.model_validate_json(r[0]) for r in rows]

    def count_payments_by_status(self) -> dict[str, int]:
        with self._lock:
            rows = self._db().execute("SELECT status, COUNT(*) FROM payments GROUP BY status").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    # --- records: incidents, predictions, maintenance windows ---------------------------

    @staticmethod
    def _record_table(table: str) -> str:
        if table not in RECORD_TABLES:
            raise ValueError(f"unknown record table {table!r}; allowed: {', '.join(RECORD_TABLES)}")
        return table

    def put_record(
        self, table: str, *, id: str, provider: str | None, status: str, at: float, record: str
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

    def record_load(self, at: float, tpm: float, *, keep_s: float) -> None:
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

    def set_state(self, component: str, key: str, value: Any, *, timestamp: float) -> None:
        """Persist a JSON-serialisable value for (component, key)."""
        with self._lock:
            self._db().execute(
                "INSERT INTO component_state (component, key, value, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT(component, key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (component, key, json.dumps(value, default=str), timestamp),
            )

    def delete_state(self, component: str, key: str) -> None:
        with self._lock:
            self._db().execute(
                "DELETE FROM component_state WHERE component = ? AND key = ?", (component, key)
            )
