"""Versioned PostgreSQL migrations, applied once per database under an advisory lock.

Rolling updates run old and new code side by side, so every migration must be *expand only*
(new tables, new nullable or defaulted columns, new indexes): the old code keeps working on the
new schema. A contracting change (dropping or renaming what old code reads) ships one release
later, once no replica runs the old code. A replica that finds a schema newer than it knows keeps
running (expand-only makes that safe) and says so in its log.

Tables mirror the SQLite store's (`mcp_autonomy/store.py`), with what sharing adds:
- `events.gid` orders every replica's events, so each replica can fan out what others recorded;
- `change_seq` on shared state and records says what changed since a replica last looked;
- `leadership` holds each loop's leader and its fencing epoch;
- `payment_counts` is kept by a trigger, so counts by status never scan the payments;
- `telemetry_samples` carries each replica's provider-call samples to the others (migration 2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

logger = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x6D63_7061_7574_6F31 & 0x7FFF_FFFF_FFFF_FFFF
"""The advisory lock every replica takes while migrating (one migrates, the others wait)."""


@dataclass(frozen=True)
class Migration:
    """One schema version: its number, a name for the log, and its SQL."""

    version: int
    name: str
    sql: str


_V1_STATE = """
CREATE SEQUENCE IF NOT EXISTS change_seq;

CREATE TABLE IF NOT EXISTS events (
    gid BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    origin TEXT NOT NULL,
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    timestamp DOUBLE PRECISION NOT NULL,
    component TEXT NOT NULL,
    provider TEXT,
    severity TEXT NOT NULL,
    dry_run BOOLEAN NOT NULL,
    message TEXT NOT NULL,
    data JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON events(timestamp);
CREATE INDEX IF NOT EXISTS events_by_type_time ON events(type, timestamp);
CREATE INDEX IF NOT EXISTS events_by_provider_time ON events(provider, timestamp);
CREATE TABLE IF NOT EXISTS event_counts (
    type TEXT PRIMARY KEY,
    count BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS audit_log (
    id BIGSERIAL PRIMARY KEY,
    timestamp DOUBLE PRECISION NOT NULL,
    tool TEXT NOT NULL,
    arguments JSONB NOT NULL,
    client TEXT,
    reason TEXT,
    ok BOOLEAN NOT NULL,
    result JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit_log(timestamp);

CREATE TABLE IF NOT EXISTS component_state (
    component TEXT NOT NULL,
    key TEXT NOT NULL,
    value JSONB NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    change_seq BIGINT NOT NULL DEFAULT nextval('change_seq'),
    PRIMARY KEY (component, key)
);
CREATE INDEX IF NOT EXISTS component_state_by_change ON component_state(change_seq);
-- A deleted key must reach the other replicas too.
CREATE TABLE IF NOT EXISTS component_state_deleted (
    component TEXT NOT NULL,
    key TEXT NOT NULL,
    change_seq BIGINT NOT NULL DEFAULT nextval('change_seq'),
    PRIMARY KEY (component, key)
);

CREATE TABLE IF NOT EXISTS load_samples (
    at DOUBLE PRECISION PRIMARY KEY,
    tpm DOUBLE PRECISION NOT NULL
);
"""

_RECORD_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id TEXT PRIMARY KEY,
    provider TEXT,
    status TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    record TEXT NOT NULL,
    change_seq BIGINT NOT NULL DEFAULT nextval('change_seq')
);
CREATE INDEX IF NOT EXISTS {name}_by_time ON {name}(at);
CREATE INDEX IF NOT EXISTS {name}_by_status ON {name}(status);
CREATE INDEX IF NOT EXISTS {name}_by_change ON {name}(change_seq);
"""

_V1_RECORDS = "".join(
    _RECORD_TABLE.format(name=name)
    for name in ("incidents", "predictions", "maintenance_windows", "optimizations")
)

_V1_PAYMENTS = """
CREATE TABLE IF NOT EXISTS payments (
    idempotency_key TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
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
    failed_over BOOLEAN NOT NULL DEFAULT FALSE,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    accepted_at DOUBLE PRECISION,
    next_check_at DOUBLE PRECISION,
    checks INTEGER NOT NULL DEFAULT 0,
    metadata JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS payments_by_reference ON payments(reference);
CREATE INDEX IF NOT EXISTS payments_by_provider_reference ON payments(provider_reference);
CREATE INDEX IF NOT EXISTS payments_by_status_check ON payments(status, next_check_at);
CREATE INDEX IF NOT EXISTS payments_by_provider_status_time ON payments(provider, status, created_at);
CREATE INDEX IF NOT EXISTS payments_by_time ON payments(created_at);

CREATE TABLE IF NOT EXISTS payment_attempts (
    idempotency_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    provider TEXT NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    outcome TEXT NOT NULL,
    reference TEXT,
    provider_reference TEXT,
    provider_code TEXT,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (idempotency_key, seq)
);

CREATE TABLE IF NOT EXISTS provider_identifiers (
    provider TEXT NOT NULL,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    reference TEXT NOT NULL,
    idempotency_key TEXT,
    recorded_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (provider, kind, value)
);
CREATE INDEX IF NOT EXISTS provider_identifiers_by_reference ON provider_identifiers(provider, reference);
CREATE INDEX IF NOT EXISTS provider_identifiers_by_value ON provider_identifiers(value);

CREATE TABLE IF NOT EXISTS callback_inbox (
    id BIGSERIAL PRIMARY KEY,
    provider TEXT NOT NULL,
    path_kind TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    body_sha256 TEXT NOT NULL,
    body TEXT NOT NULL,
    reference TEXT,
    provider_reference TEXT,
    operation TEXT,
    claimed_status TEXT NOT NULL,
    claimed_amount_minor BIGINT,
    claimed_currency TEXT,
    claimed_payer TEXT,
    provider_code TEXT,
    provider_message TEXT,
    extras JSONB NOT NULL DEFAULT '{}'::jsonb,
    authenticated BOOLEAN NOT NULL DEFAULT FALSE,
    idempotency_key TEXT,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    checks INTEGER NOT NULL DEFAULT 0,
    next_check_at DOUBLE PRECISION,
    resolved_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS callback_inbox_by_state_check ON callback_inbox(state, next_check_at);
CREATE INDEX IF NOT EXISTS callback_inbox_by_body ON callback_inbox(provider, body_sha256);
CREATE INDEX IF NOT EXISTS callback_inbox_by_key ON callback_inbox(idempotency_key);

-- Counts by provider and status, kept by a trigger so `get_stats` never scans the payments.
CREATE TABLE IF NOT EXISTS payment_counts (
    provider TEXT NOT NULL,
    status TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (provider, status)
);
CREATE OR REPLACE FUNCTION payment_counts_keep() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE payment_counts SET count = count - 1
        WHERE provider = COALESCE(OLD.provider, '') AND status = OLD.status;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO payment_counts (provider, status, count)
        VALUES (COALESCE(NEW.provider, ''), NEW.status, 1)
        ON CONFLICT (provider, status) DO UPDATE SET count = payment_counts.count + 1;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS payments_counted ON payments;
CREATE TRIGGER payments_counted AFTER INSERT OR DELETE OR UPDATE OF status, provider ON payments
    FOR EACH ROW EXECUTE FUNCTION payment_counts_keep();
"""

_V1_LEADERSHIP = """
-- One row per loop: who leads it, and the fencing epoch every leader write is checked against
-- (a new leader increments it, so a deposed leader's writes are refused in their transaction).
CREATE TABLE IF NOT EXISTS leadership (
    loop TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL,
    holder TEXT NOT NULL,
    acquired_at DOUBLE PRECISION NOT NULL,
    renewed_at DOUBLE PRECISION NOT NULL
);
"""

_V2_TELEMETRY = """
-- Each replica's provider-call samples, so a loop's leader decides from the whole cluster's calls
-- (mcp_autonomy/pg/telemetry.py). `at` is wall-clock time; rows older than a few minutes are pruned.
CREATE TABLE IF NOT EXISTS telemetry_samples (
    gid BIGSERIAL PRIMARY KEY,
    replica TEXT NOT NULL,
    provider TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    outcome SMALLINT NOT NULL,
    latency_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS telemetry_samples_by_time ON telemetry_samples(at);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1, "state, records, payments, leadership", _V1_STATE + _V1_RECORDS + _V1_PAYMENTS + _V1_LEADERSHIP
    ),
    Migration(2, "telemetry samples shared across replicas", _V2_TELEMETRY),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the database to `SCHEMA_VERSION`; returns the version it is at afterwards.

    Runs in one transaction under `pg_advisory_xact_lock`, so replicas starting together migrate
    once: the others wait, then find nothing to do.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        current = int(row[0]) if row is not None else 0
        for migration in MIGRATIONS:
            if migration.version <= current:
                continue
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            logger.info("database migrated to schema version %d (%s)", migration.version, migration.name)
            current = migration.version
    if current > SCHEMA_VERSION:
        logger.info(
            "database schema is at version %d, newer than this code's %d: running on it (migrations "
            "only expand, so older code keeps working during a rolling update)",
            current,
            SCHEMA_VERSION,
        )
    return current
