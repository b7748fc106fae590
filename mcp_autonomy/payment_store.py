"""The SQLite backend of `PaymentStore`: payments, attempts, provider ids and the callback inbox.

It shares the `Store`'s file, connection and lock (schema v6, see `store.py`). Every field has its
own column, so the reconciler's and the dashboard's queries are indexed and an update writes only
what changed; the payment's `metadata` and a callback's `extras` (small str -> str dicts) are the
only JSON. Each method is one short transaction on a local file, run on the calling thread under
the store's lock like the rest of `Store`: well under a millisecond, so no worker thread is needed.
Writes take the write lock up front (`BEGIN IMMEDIATE`), so another process's writer makes them
wait (busy timeout) rather than fail halfway through a read-then-write.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from mcp_autonomy.payments import (
    AttemptOutcome,
    CallbackState,
    InboxCallback,
    PaymentAttempt,
    PaymentRecord,
    ProviderIdentifier,
)
from mcp_autonomy.providers.base import CallbackHint, Money, Operation, TransactionStatus
from mcp_autonomy.store import Store

MAX_CALLBACK_BODY_BYTES = 16 * 1024
"""A stored callback body is cut to this many UTF-8 bytes (a provider's body is far smaller; a
hostile one must not grow the file)."""

OPEN_STATUSES: tuple[TransactionStatus, ...] = (
    TransactionStatus.PENDING,
    TransactionStatus.UNKNOWN,
    TransactionStatus.NEEDS_OPERATOR_OTP,
    TransactionStatus.NEEDS_RECONCILIATION,
)
"""Statuses the reconciler keeps pulling (not final)."""

_DUE_CALLBACK_STATES: tuple[CallbackState, ...] = (CallbackState.PENDING, CallbackState.UNMATCHED)

_PAYMENT_COLUMNS = (
    "idempotency_key",
    "operation",
    "amount_minor",
    "currency",
    "phone",
    "country",
    "description",
    "status",
    "status_reason",
    "provider",
    "reference",
    "provider_reference",
    "provider_code",
    "provider_message",
    "failed_over",
    "created_at",
    "updated_at",
    "accepted_at",
    "next_check_at",
    "checks",
    "metadata",
)
# Written by `save_payment`: everything but the key and the creation time.
_PAYMENT_MUTABLE = tuple(c for c in _PAYMENT_COLUMNS if c not in ("idempotency_key", "created_at"))
_CREATED_AT_INDEX = _PAYMENT_COLUMNS.index("created_at")
# `_payment_update` slices a full row around the key (first) and the creation time.
assert (
    _PAYMENT_COLUMNS[0] == "idempotency_key"
    and (_PAYMENT_COLUMNS[1:_CREATED_AT_INDEX] + _PAYMENT_COLUMNS[_CREATED_AT_INDEX + 1 :])
    == _PAYMENT_MUTABLE
)
_SELECT_PAYMENT = "SELECT " + ", ".join(f"p.{c}" for c in _PAYMENT_COLUMNS) + " FROM payments AS p"

_ATTEMPT_COLUMNS = (
    "seq",
    "provider",
    "started_at",
    "latency_ms",
    "outcome",
    "reference",
    "provider_reference",
    "provider_code",
    "detail",
)

# The statements of the payment path, built once (sqlite3 caches the compiled statement by its
# text, so a constant string is also a prepared statement).
_INSERT_PAYMENT = (
    f"INSERT INTO payments ({', '.join(_PAYMENT_COLUMNS)}) VALUES ({','.join('?' * len(_PAYMENT_COLUMNS))})"
    " ON CONFLICT(idempotency_key) DO NOTHING"
)
_UPDATE_PAYMENT = (
    "UPDATE payments SET " + ", ".join(f"{c} = ?" for c in _PAYMENT_MUTABLE) + " WHERE idempotency_key = ?"
)
_INSERT_ATTEMPT = (
    "INSERT INTO payment_attempts (idempotency_key, " + ", ".join(_ATTEMPT_COLUMNS) + ")"
    f" VALUES (?, {','.join('?' * len(_ATTEMPT_COLUMNS))})"
)
# The next seq and the payment's existence are read by the INSERT itself: one statement under
# the write lock instead of two SELECTs and an INSERT. No payment -> no row inserted, none returned.
_APPEND_ATTEMPT = (
    "INSERT INTO payment_attempts (idempotency_key, " + ", ".join(_ATTEMPT_COLUMNS) + ")"
    " SELECT p.idempotency_key, COALESCE((SELECT MAX(a.seq) FROM payment_attempts AS a"
    " WHERE a.idempotency_key = p.idempotency_key), 0) + 1, ?, ?, ?, ?, ?, ?, ?, ?"
    " FROM payments AS p WHERE p.idempotency_key = ? RETURNING seq"
)
_UPDATE_ATTEMPT = (
    "UPDATE payment_attempts SET latency_ms = ?, outcome = ?, reference = ?,"
    " provider_reference = ?, provider_code = ?, detail = ? WHERE idempotency_key = ? AND seq = ?"
)
_EMPTY_METADATA = "{}"

_CALLBACK_COLUMNS = (
    "id",
    "provider",
    "path_kind",
    "received_at",
    "body_sha256",
    "body",
    "reference",
    "provider_reference",
    "operation",
    "claimed_status",
    "claimed_amount_minor",
    "claimed_currency",
    "claimed_payer",
    "provider_code",
    "provider_message",
    "extras",
    "authenticated",
    "idempotency_key",
    "state",
    "detail",
    "checks",
    "next_check_at",
    "resolved_at",
)
_SELECT_CALLBACK = "SELECT " + ", ".join(_CALLBACK_COLUMNS) + " FROM callback_inbox"


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _cut_body(body: str) -> str:
    raw = body.encode("utf-8")
    if len(raw) <= MAX_CALLBACK_BODY_BYTES:
        return body
    # A multi-byte character split by the cut is dropped rather than stored half.
    return raw[:MAX_CALLBACK_BODY_BYTES].decode("utf-8", errors="ignore")


def _metadata_json(record: PaymentRecord) -> str:
    metadata = record.metadata
    return json.dumps(metadata, default=str, separators=(",", ":")) if metadata else _EMPTY_METADATA


def _payment_row(record: PaymentRecord) -> tuple[Any, ...]:
    """Every column of `record`, in `_PAYMENT_COLUMNS` order."""
    money = record.money
    return (
        record.idempotency_key,
        record.operation.value,
        money.amount_minor,
        money.currency,
        record.phone,
        record.country,
        record.description,
        record.status.value,
        record.status_reason,
        record.provider,
        record.reference,
        record.provider_reference,
        record.provider_code,
        record.provider_message,
        int(record.failed_over),
        record.created_at,
        record.updated_at,
        record.accepted_at,
        record.next_check_at,
        record.checks,
        _metadata_json(record),
    )


def _payment_values(record: PaymentRecord) -> dict[str, Any]:
    """Column -> value for `record` (the PostgreSQL backend builds its statements from it)."""
    return dict(zip(_PAYMENT_COLUMNS, _payment_row(record), strict=True))


def _payment_update(record: PaymentRecord) -> tuple[Any, ...]:
    """The parameters of `_UPDATE_PAYMENT`: the mutable columns, then the key."""
    row = _payment_row(record)
    return (*row[1:_CREATED_AT_INDEX], *row[_CREATED_AT_INDEX + 1 :], row[0])


def _attempt_update(key: str, attempt: PaymentAttempt) -> tuple[Any, ...]:
    """The parameters of `_UPDATE_ATTEMPT`."""
    return (
        attempt.latency_ms,
        attempt.outcome.value,
        attempt.reference,
        attempt.provider_reference,
        attempt.provider_code,
        attempt.detail,
        key,
        attempt.seq,
    )


def _payment(row: Sequence[Any], attempts: list[PaymentAttempt]) -> PaymentRecord:
    r = dict(zip(_PAYMENT_COLUMNS, row, strict=True))
    return PaymentRecord(
        idempotency_key=r["idempotency_key"],
        operation=Operation(r["operation"]),
        money=Money(amount_minor=r["amount_minor"], currency=r["currency"]),
        phone=r["phone"],
        country=r["country"],
        description=r["description"],
        status=TransactionStatus(r["status"]),
        status_reason=r["status_reason"],
        provider=r["provider"],
        reference=r["reference"],
        provider_reference=r["provider_reference"],
        provider_code=r["provider_code"],
        provider_message=r["provider_message"],
        attempts=attempts,
        failed_over=bool(r["failed_over"]),
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        accepted_at=r["accepted_at"],
        next_check_at=r["next_check_at"],
        checks=r["checks"],
        metadata=json.loads(r["metadata"]),
    )


def _attempt(row: Sequence[Any]) -> PaymentAttempt:
    r = dict(zip(_ATTEMPT_COLUMNS, row, strict=True))
    return PaymentAttempt(
        seq=r["seq"],
        provider=r["provider"],
        started_at=r["started_at"],
        latency_ms=r["latency_ms"],
        outcome=AttemptOutcome(r["outcome"]),
        reference=r["reference"],
        provider_reference=r["provider_reference"],
        provider_code=r["provider_code"],
        detail=r["detail"],
    )


def _callback(row: Sequence[Any]) -> InboxCallback:
    r = dict(zip(_CALLBACK_COLUMNS, row, strict=True))
    amount, currency = r["claimed_amount_minor"], r["claimed_currency"]
    hint = CallbackHint(
        provider=r["provider"],
        reference=r["reference"],
        provider_reference=r["provider_reference"],
        operation=None if r["operation"] is None else Operation(r["operation"]),
        status=TransactionStatus(r["claimed_status"]),
        money=None if amount is None or currency is None else Money(amount_minor=amount, currency=currency),
        payer=r["claimed_payer"],
        provider_code=r["provider_code"],
        provider_message=r["provider_message"],
        extras=json.loads(r["extras"]),
        authenticated=bool(r["authenticated"]),
    )
    return InboxCallback(
        id=r["id"],
        provider=r["provider"],
        path_kind=r["path_kind"],
        received_at=r["received_at"],
        hint=hint,
        body_sha256=r["body_sha256"],
        body=r["body"],
        idempotency_key=r["idempotency_key"],
        state=CallbackState(r["state"]),
        detail=r["detail"],
        checks=r["checks"],
        next_check_at=r["next_check_at"],
        resolved_at=r["resolved_at"],
    )


class SqlitePaymentStore:
    """`PaymentStore` on the `Store`'s SQLite file: the embedded, single-node default.

    Payments are keyed by idempotency key; `create_payment` is the one place a key is claimed,
    atomically (`INSERT ... ON CONFLICT DO NOTHING`), so two writers racing on one key (even two
    processes on one file) get one payment and the loser gets the winner's record back.
    Writes that could lose money if they vanished silently (`save_payment`, `begin_attempt`,
    `finish_attempt`, `update_callback`) raise `KeyError` when their row does not exist.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    # --- transactions -------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed when the block ends, rolled back if it raises."""
        with self._store.connection() as db:
            # IMMEDIATE takes the write lock now: a read-then-write (next attempt seq, duplicate
            # callback check) cannot be overtaken by another connection between its statements.
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a payment and its attempts come from the same snapshot."""
        with self._store.connection() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                if db.in_transaction:
                    db.execute("COMMIT")

    @staticmethod
    def _with_attempts(db: sqlite3.Connection, rows: list[Any]) -> list[PaymentRecord]:
        """Payments for `rows`, with their attempts read in one query (ordered by seq)."""
        if not rows:
            return []
        keys = [row[0] for row in rows]
        attempts: dict[str, list[PaymentAttempt]] = {key: [] for key in keys}
        # The keys travel as one JSON array parameter: no limit on the number of host variables.
        cursor = db.execute(
            "SELECT idempotency_key, " + ", ".join(_ATTEMPT_COLUMNS) + " FROM payment_attempts"
            " WHERE idempotency_key IN (SELECT value FROM json_each(?)) ORDER BY idempotency_key, seq",
            (json.dumps(keys),),
        )
        for row in cursor:
            attempts[row[0]].append(_attempt(row[1:]))
        return [_payment(row, attempts[row[0]]) for row in rows]

    # --- payments -----------------------------------------------------------------------

    async def create_payment(self, record: PaymentRecord) -> PaymentRecord | None:
        """Insert a new payment (None); the stored record, with its attempts, if the key is taken."""
        row = _payment_row(record)
        with self._write() as db:
            cursor = db.execute(_INSERT_PAYMENT, row)
            if cursor.rowcount == 1:
                if record.attempts:
                    self._insert_attempts(db, record.idempotency_key, record.attempts)
                return None
            rows = db.execute(
                f"{_SELECT_PAYMENT} WHERE p.idempotency_key = ?", (record.idempotency_key,)
            ).fetchall()
            return self._with_attempts(db, rows)[0]

    @staticmethod
    def _insert_attempts(db: sqlite3.Connection, key: str, attempts: list[PaymentAttempt]) -> None:
        db.executemany(
            _INSERT_ATTEMPT,
            [
                (
                    key,
                    # Their list order is their order; a seq they already carry is not trusted.
                    seq,
                    a.provider,
                    a.started_at,
                    a.latency_ms,
                    a.outcome.value,
                    a.reference,
                    a.provider_reference,
                    a.provider_code,
                    a.detail,
                )
                for seq, a in enumerate(attempts, start=1)
            ],
        )

    async def get_payment(self, key_or_reference: str) -> PaymentRecord | None:
        """A payment (with its attempts) by idempotency key, our reference or the provider's."""
        with self._read() as db:
            # Each OR term has its own index; a key match wins over a reference that happens to
            # equal another payment's key.
            rows = db.execute(
                f"{_SELECT_PAYMENT} WHERE p.idempotency_key = ?1 OR p.reference = ?1"
                " OR p.provider_reference = ?1"
                " ORDER BY p.idempotency_key IS ?1 DESC, p.reference IS ?1 DESC, p.created_at LIMIT 1",
                (key_or_reference,),
            ).fetchall()
            records = self._with_attempts(db, rows)
        return records[0] if records else None

    async def find_payment(self, provider: str, *ids: str) -> PaymentRecord | None:
        """The payment at `provider` that any of `ids` names: our reference first, then the
        provider's reference, then an identifier learnt for it (CheckoutRequestID, ...)."""
        wanted = json.dumps(sorted({i for i in ids if i}))
        if wanted == "[]":
            return None
        # One indexed lookup per kind of id, in that order of trust. The unary `+` keeps the
        # provider terms out of index choice: knowing nothing of json_each's size, the planner
        # would otherwise walk every payment of the provider instead of looking the ids up.
        lookups = (
            f"{_SELECT_PAYMENT} WHERE p.reference IN (SELECT value FROM json_each(?2)) AND +p.provider = ?1",
            f"{_SELECT_PAYMENT} WHERE p.provider_reference IN (SELECT value FROM json_each(?2))"
            " AND +p.provider = ?1",
            f"{_SELECT_PAYMENT} JOIN provider_identifiers AS i ON i.reference = p.reference"
            " WHERE i.value IN (SELECT value FROM json_each(?2)) AND +i.provider = ?1 AND +p.provider = ?1",
        )
        with self._read() as db:
            for sql in lookups:
                rows = db.execute(
                    f"{sql} ORDER BY p.created_at, p.idempotency_key LIMIT 1", (provider, wanted)
                )
                found = rows.fetchall()
                if found:
                    return self._with_attempts(db, found)[0]
        return None

    async def begin_attempt(self, key: str, attempt: PaymentAttempt) -> int:
        """Append an attempt (outcome `sending` for one about to leave); returns its seq."""
        with self._write() as db:
            row = db.execute(
                _APPEND_ATTEMPT,
                (
                    attempt.provider,
                    attempt.started_at,
                    attempt.latency_ms,
                    attempt.outcome.value,
                    attempt.reference,
                    attempt.provider_reference,
                    attempt.provider_code,
                    attempt.detail,
                    key,
                ),
            ).fetchall()
            if not row:
                raise KeyError(f"no payment {key!r} to add an attempt to")
        return int(row[0][0])

    async def finish_attempt(self, key: str, attempt: PaymentAttempt) -> None:
        """Write the outcome of the attempt `attempt.seq`."""
        with self._write() as db:
            if db.execute(_UPDATE_ATTEMPT, _attempt_update(key, attempt)).rowcount != 1:
                raise KeyError(f"no attempt {attempt.seq} of payment {key!r}")

    async def save_payment(self, record: PaymentRecord) -> None:
        """Write the payment's own fields (status, provider, references, schedule); not attempts."""
        with self._write() as db:
            if db.execute(_UPDATE_PAYMENT, _payment_update(record)).rowcount != 1:
                raise KeyError(f"no payment {record.idempotency_key!r} to save")

    async def finish_send(self, record: PaymentRecord, attempt: PaymentAttempt) -> None:
        """`finish_attempt` and `save_payment` in one transaction: the payment's outcome and the
        outcome of the attempt that produced it are committed together (one fsync, not two)."""
        key = record.idempotency_key
        with self._write() as db:
            if db.execute(_UPDATE_ATTEMPT, _attempt_update(key, attempt)).rowcount != 1:
                raise KeyError(f"no attempt {attempt.seq} of payment {key!r}")
            if db.execute(_UPDATE_PAYMENT, _payment_update(record)).rowcount != 1:
                raise KeyError(f"no payment {key!r} to save")

    async def due_for_check(self, now: float, limit: int) -> list[PaymentRecord]:
        """Non-final payments whose `next_check_at` is due (or unset), oldest first."""
        with self._read() as db:
            rows = db.execute(
                f"{_SELECT_PAYMENT} WHERE p.status IN ({_marks(len(OPEN_STATUSES))})"
                " AND (p.next_check_at IS NULL OR p.next_check_at <= ?)"
                " ORDER BY p.created_at, p.idempotency_key LIMIT ?",
                (*(s.value for s in OPEN_STATUSES), now, limit),
            ).fetchall()
            return self._with_attempts(db, rows)

    async def list_payments(
        self, *, statuses: tuple[TransactionStatus, ...] = (), provider: str | None = None, limit: int = 100
    ) -> list[PaymentRecord]:
        """Payments by status and provider, newest first."""
        clauses: list[str] = []
        params: list[Any] = []
        if statuses:
            clauses.append(f"p.status IN ({_marks(len(statuses))})")
            params.extend(TransactionStatus(s).value for s in statuses)
        if provider is not None:
            clauses.append("p.provider = ?")
            params.append(provider)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read() as db:
            rows = db.execute(
                f"{_SELECT_PAYMENT}{where} ORDER BY p.created_at DESC, p.idempotency_key DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return self._with_attempts(db, rows)

    async def count_by_status(self) -> dict[str, int]:
        """How many payments are in each status (from the counters the triggers keep: no scan)."""
        with self._store.connection() as db:
            rows = db.execute(
                "SELECT status, SUM(count) FROM payment_counts GROUP BY status HAVING SUM(count) > 0"
                " ORDER BY status"
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    async def oldest_open(self) -> dict[str, float]:
        """Per provider, the `created_at` of its oldest payment that is not final."""
        with self._store.connection() as db:
            rows = db.execute(
                "SELECT provider, MIN(created_at) FROM payments WHERE provider IS NOT NULL"
                f" AND status IN ({_marks(len(OPEN_STATUSES))}) GROUP BY provider ORDER BY provider",
                tuple(s.value for s in OPEN_STATUSES),
            ).fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    # --- provider identifiers -----------------------------------------------------------

    async def record_identifier(self, identifier: ProviderIdentifier) -> None:
        """Store a provider id (idempotent; the key is filled from the reference when known)."""
        self.record_identifier_soon(identifier)

    def record_identifier_soon(self, identifier: ProviderIdentifier) -> None:
        """Store a provider id from synchronous code (an adapter's identifier sink). SQLite is
        local, so the write is durable before this returns; `flush()` has nothing to wait for."""
        with self._write() as db:
            # The first (provider, kind, value) wins; a later sighting only fills a key the first
            # could not know yet (recorded before the payment named its provider and reference).
            db.execute(
                "INSERT INTO provider_identifiers"
                " (provider, kind, value, reference, idempotency_key, recorded_at)"
                " VALUES (?1, ?2, ?3, ?4, COALESCE(?5, (SELECT idempotency_key FROM payments"
                " WHERE provider = ?1 AND reference = ?4 ORDER BY created_at LIMIT 1)), ?6)"
                " ON CONFLICT(provider, kind, value) DO UPDATE SET idempotency_key = excluded.idempotency_key"
                " WHERE provider_identifiers.idempotency_key IS NULL"
                " AND excluded.idempotency_key IS NOT NULL"
                " AND provider_identifiers.reference = excluded.reference",
                (
                    identifier.provider,
                    identifier.kind,
                    identifier.value,
                    identifier.reference,
                    identifier.idempotency_key,
                    identifier.recorded_at,
                ),
            )

    async def flush(self) -> None:
        """Every `record_identifier_soon` write is durable already (see there)."""

    async def identifiers(self, provider: str, reference: str) -> dict[str, str]:
        """Every id learnt for `reference` at `provider`, kind -> value (the latest per kind)."""
        with self._store.connection() as db:
            rows = db.execute(
                "SELECT kind, value FROM provider_identifiers WHERE provider = ? AND reference = ?"
                " ORDER BY recorded_at, kind, value",
                (provider, reference),
            ).fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    # --- callback inbox -----------------------------------------------------------------

    async def add_callback(self, callback: InboxCallback) -> InboxCallback:
        """Store a received callback; returns it with its id (state `duplicate` when the same
        provider already delivered the same body). A duplicate is kept, never dropped: it is
        evidence of a provider's retry, and dropping it would make the inbox lie."""
        body = _cut_body(callback.body)
        hint = callback.hint
        money = hint.money
        state, detail = callback.state, callback.detail
        with self._write() as db:
            first = db.execute(
                "SELECT id FROM callback_inbox WHERE provider = ? AND body_sha256 = ? ORDER BY id LIMIT 1",
                (callback.provider, callback.body_sha256),
            ).fetchone()
            if first is not None:
                state, detail = CallbackState.DUPLICATE, f"duplicate of #{first[0]}"
            cursor = db.execute(
                "INSERT INTO callback_inbox (" + ", ".join(_CALLBACK_COLUMNS[1:]) + ")"
                f" VALUES ({_marks(len(_CALLBACK_COLUMNS) - 1)})",
                (
                    callback.provider,
                    callback.path_kind,
                    callback.received_at,
                    callback.body_sha256,
                    body,
                    hint.reference,
                    hint.provider_reference,
                    None if hint.operation is None else hint.operation.value,
                    hint.status.value,
                    None if money is None else money.amount_minor,
                    None if money is None else money.currency,
                    hint.payer,
                    hint.provider_code,
                    hint.provider_message,
                    json.dumps(hint.extras, separators=(",", ":")),
                    int(hint.authenticated),
                    callback.idempotency_key,
                    state.value,
                    detail,
                    callback.checks,
                    callback.next_check_at,
                    callback.resolved_at,
                ),
            )
            new_id = int(cursor.lastrowid or 0)
        return callback.model_copy(update={"id": new_id, "body": body, "state": state, "detail": detail})

    async def update_callback(self, callback: InboxCallback) -> None:
        """Write a callback's state, match, detail and schedule."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE callback_inbox SET state = ?, idempotency_key = ?, detail = ?, checks = ?,"
                " next_check_at = ?, resolved_at = ? WHERE id = ?",
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

    async def callbacks_due(self, now: float, limit: int) -> list[InboxCallback]:
        """Pending and unmatched callbacks whose `next_check_at` is due (or unset), oldest first."""
        with self._store.connection() as db:
            rows = db.execute(
                f"{_SELECT_CALLBACK} WHERE state IN ({_marks(len(_DUE_CALLBACK_STATES))})"
                " AND (next_check_at IS NULL OR next_check_at <= ?) ORDER BY received_at, id LIMIT ?",
                (*(s.value for s in _DUE_CALLBACK_STATES), now, limit),
            ).fetchall()
        return [_callback(r) for r in rows]

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
            clauses.append("provider = ?")
            params.append(provider)
        if states:
            clauses.append(f"state IN ({_marks(len(states))})")
            params.extend(CallbackState(s).value for s in states)
        if idempotency_key is not None:
            clauses.append("idempotency_key = ?")
            params.append(idempotency_key)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._store.connection() as db:
            rows = db.execute(
                f"{_SELECT_CALLBACK}{where} ORDER BY received_at DESC, id DESC LIMIT ?", (*params, limit)
            ).fetchall()
        return [_callback(r) for r in rows]

    # --- housekeeping -------------------------------------------------------------------

    async def prune(self, *, finished_before: float) -> int:
        """Delete final payments last updated before `finished_before`, with their attempts and
        provider ids, and settled callbacks received before it. Open payments always stay."""
        open_marks = _marks(len(OPEN_STATUSES))
        open_values = tuple(s.value for s in OPEN_STATUSES)
        settled = tuple(s.value for s in CallbackState if s not in _DUE_CALLBACK_STATES)
        with self._write() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS pruned_keys (idempotency_key TEXT PRIMARY KEY)")
            db.execute("DELETE FROM pruned_keys")
            db.execute(
                "INSERT INTO pruned_keys SELECT idempotency_key FROM payments"
                f" WHERE updated_at < ? AND status NOT IN ({open_marks})",
                (finished_before, *open_values),
            )
            for table in ("payment_attempts", "provider_identifiers", "payments"):
                db.execute(
                    f"DELETE FROM {table} WHERE idempotency_key IN (SELECT idempotency_key FROM pruned_keys)"
                )
            pruned = int(db.execute("SELECT COUNT(*) FROM pruned_keys").fetchone()[0])
            db.execute(
                f"DELETE FROM callback_inbox WHERE received_at < ? AND state IN ({_marks(len(settled))})",
                (finished_before, *settled),
            )
            db.execute("DELETE FROM pruned_keys")
        return pruned

    async def ping(self) -> None:
        """The embedded file is always reachable while the store is open."""
        with self._store.connection() as db:
            db.execute("SELECT 1")
