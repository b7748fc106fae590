"""Both `PaymentStore` backends: payments, attempts, provider ids and the callback inbox.

The behaviour tests run against SQLite and PostgreSQL alike (fixture `payments`); the v5 -> v6
migration, the SQLite file shared by two connections and SQLite's query plans are SQLite-only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from mcp_autonomy.payment_store import MAX_CALLBACK_BODY_BYTES, SqlitePaymentStore
from mcp_autonomy.payments import (
    AttemptOutcome,
    CallbackState,
    InboxCallback,
    PaymentAttempt,
    PaymentRecord,
    PaymentStore,
    ProviderIdentifier,
)
from mcp_autonomy.pg.payment_store import PostgresPaymentStore
from mcp_autonomy.providers.base import CallbackHint, Money, Operation, TransactionStatus
from mcp_autonomy.store import _MIGRATIONS, SCHEMA_VERSION, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "db.sqlite3").open()
    yield opened
    opened.close()


@pytest.fixture
def sqlite_payments(store: Store) -> SqlitePaymentStore:
    return SqlitePaymentStore(store)


@pytest.fixture(params=["sqlite", "postgres"])
async def payments(request: pytest.FixtureRequest, store: Store) -> AsyncIterator[PaymentStore]:
    """Each backend in turn: SQLite on a temporary file, PostgreSQL on a fresh migrated database."""
    if request.param == "sqlite":
        yield SqlitePaymentStore(store)
        return
    shared = PostgresPaymentStore(request.getfixturevalue("pg_url"), min_size=1, max_size=4)
    await shared.open()
    try:
        yield shared
    finally:
        await shared.close()


async def _identifier_keys(payments: PaymentStore) -> dict[str, str | None]:
    """value -> idempotency_key of every stored provider id, read from the backend's own tables."""
    sql = "SELECT value, idempotency_key FROM provider_identifiers"
    if isinstance(payments, SqlitePaymentStore):
        with sqlite3.connect(payments._store.path) as db:
            rows = db.execute(sql).fetchall()
        db.close()
        return dict(rows)
    assert isinstance(payments, PostgresPaymentStore)
    async with await psycopg.AsyncConnection.connect(payments._url) as conn:
        cursor = await conn.execute(sql)
        return {str(r[0]): r[1] for r in await cursor.fetchall()}


def _record(
    key: str,
    *,
    status: TransactionStatus = TransactionStatus.PENDING,
    provider: str | None = "mpesa",
    reference: str | None = None,
    provider_reference: str | None = None,
    created_at: float = 100.0,
    next_check_at: float | None = None,
    amount_minor: int = 15000,
    description: str = "order",
) -> PaymentRecord:
    return PaymentRecord(
        idempotency_key=key,
        operation=Operation.COLLECT,
        money=Money(amount_minor=amount_minor, currency="KES"),
        phone="+254712345678",
        country="KE",
        description=description,
        status=status,
        provider=provider,
        reference=reference if reference is not None else f"R-{key}",
        provider_reference=provider_reference,
        created_at=created_at,
        updated_at=created_at,
        next_check_at=next_check_at,
        metadata={"order": key},
    )


def _attempt(provider: str = "mpesa", outcome: AttemptOutcome = AttemptOutcome.SENDING) -> PaymentAttempt:
    return PaymentAttempt(provider=provider, started_at=1.0, latency_ms=0.0, outcome=outcome, reference="R1")


def _callback(body: str, *, provider: str = "mpesa", received_at: float = 10.0) -> InboxCallback:
    return InboxCallback(
        provider=provider,
        path_kind="collect",
        received_at=received_at,
        hint=CallbackHint(
            provider=provider,
            reference="R-k1",
            provider_reference="ws_CO_1",
            operation=Operation.COLLECT,
            status=TransactionStatus.SUCCEEDED,
            money=Money(amount_minor=15000, currency="KES"),
            payer="+254712345678",
            provider_code="0",
            provider_message="ok",
            extras={"receipt": "QK1"},
            authenticated=True,
        ),
        body_sha256=hashlib.sha256(body.encode()).hexdigest(),
        body=body,
    )


@pytest.mark.anyio
async def test_it_is_a_payment_store(payments: PaymentStore) -> None:
    typed: PaymentStore = payments  # mypy checks the protocol; this keeps the test honest at runtime
    assert typed is payments


# --- payments ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_then_replay_returns_the_stored_record(payments: PaymentStore) -> None:
    first = _record("key-00001", provider_reference="ws_CO_1")
    assert await payments.create_payment(first) is None
    seq = await payments.begin_attempt("key-00001", _attempt())

    replay = _record("key-00001", description="a different description", amount_minor=99)
    existing = await payments.create_payment(replay)
    assert existing is not None
    assert existing.description == "order"
    assert existing.money == Money(amount_minor=15000, currency="KES")
    assert [a.seq for a in existing.attempts] == [seq]
    assert existing.model_dump(exclude={"attempts"}) == first.model_dump(exclude={"attempts"})
    assert await payments.get_payment("key-00001") == existing


@pytest.mark.anyio
async def test_create_stores_attempts_it_carries(payments: PaymentStore) -> None:
    record = _record("key-00002").model_copy(
        update={"attempts": [_attempt("mpesa", AttemptOutcome.NOT_PROCESSED), _attempt("airtel")]}
    )
    assert await payments.create_payment(record) is None
    stored = await payments.get_payment("key-00002")
    assert stored is not None
    assert [(a.seq, a.provider, a.outcome) for a in stored.attempts] == [
        (1, "mpesa", AttemptOutcome.NOT_PROCESSED),
        (2, "airtel", AttemptOutcome.SENDING),
    ]


@pytest.mark.anyio
async def test_every_field_round_trips(payments: PaymentStore) -> None:
    record = _record("key-00003").model_copy(
        update={
            "status": TransactionStatus.NEEDS_RECONCILIATION,
            "status_reason": "unknown past the bound",
            "provider_reference": "ws_CO_3",
            "provider_code": "1037",
            "provider_message": "timeout",
            "failed_over": True,
            "accepted_at": 101.5,
            "next_check_at": 160.0,
            "checks": 4,
            "metadata": {"order": "o-3", "channel": "app"},
        }
    )
    await payments.create_payment(record)
    assert await payments.get_payment("key-00003") == record


@pytest.mark.anyio
async def test_get_payment_by_key_or_either_reference(payments: PaymentStore) -> None:
    await payments.create_payment(_record("key-00004", reference="P-4", provider_reference="ws_CO_4"))
    # Another payment whose reference happens to equal the first one's key: the key wins.
    await payments.create_payment(_record("key-00005", reference="key-00004", created_at=50.0))
    for name in ("key-00004", "P-4", "ws_CO_4"):
        found = await payments.get_payment(name)
        assert found is not None and found.idempotency_key == "key-00004", name
    assert await payments.get_payment("nothing") is None


@pytest.mark.anyio
async def test_attempts_are_numbered_in_order_and_finished_by_seq(payments: PaymentStore) -> None:
    await payments.create_payment(_record("key-00006"))
    seqs = [await payments.begin_attempt("key-00006", _attempt(p)) for p in ("mpesa", "airtel", "mtn")]
    assert seqs == [1, 2, 3]
    done = PaymentAttempt(
        seq=2,
        provider="airtel",
        started_at=1.0,
        latency_ms=12.5,
        outcome=AttemptOutcome.ACCEPTED,
        reference="R-airtel",
        provider_reference="AT-9",
        provider_code="DP00800001001",
        detail="accepted",
    )
    await payments.finish_attempt("key-00006", done)
    stored = await payments.get_payment("key-00006")
    assert stored is not None
    assert [a.provider for a in stored.attempts] == ["mpesa", "airtel", "mtn"]
    assert stored.attempts[1] == done
    assert stored.attempts[0].outcome is AttemptOutcome.SENDING
    # Attempts of another payment start at 1 again.
    await payments.create_payment(_record("key-00007"))
    assert await payments.begin_attempt("key-00007", _attempt()) == 1


@pytest.mark.anyio
async def test_writes_to_missing_rows_raise(payments: PaymentStore) -> None:
    with pytest.raises(KeyError):
        await payments.begin_attempt("missing", _attempt())
    with pytest.raises(KeyError):
        await payments.save_payment(_record("missing"))
    await payments.create_payment(_record("key-00008"))
    with pytest.raises(KeyError):
        await payments.finish_attempt("key-00008", _attempt().model_copy(update={"seq": 7}))
    with pytest.raises(KeyError):
        await payments.update_callback(_callback("{}").model_copy(update={"id": 42}))
    # A failed write leaves no transaction open behind it.
    assert await payments.begin_attempt("key-00008", _attempt()) == 1


@pytest.mark.anyio
async def test_save_payment_writes_fields_not_attempts(payments: PaymentStore) -> None:
    record = _record("key-00009")
    await payments.create_payment(record)
    await payments.begin_attempt("key-00009", _attempt())
    changed = record.model_copy(
        update={
            "status": TransactionStatus.SUCCEEDED,
            "provider_reference": "ws_CO_9",
            "provider_code": "0",
            "updated_at": 130.0,
            "accepted_at": 101.0,
            "next_check_at": None,
            "checks": 2,
            "created_at": 999.0,  # never rewritten
            "attempts": [],
        }
    )
    await payments.save_payment(changed)
    stored = await payments.get_payment("key-00009")
    assert stored is not None
    assert stored.status is TransactionStatus.SUCCEEDED
    assert (stored.provider_reference, stored.checks, stored.updated_at) == ("ws_CO_9", 2, 130.0)
    assert stored.created_at == 100.0
    assert len(stored.attempts) == 1


@pytest.mark.anyio
async def test_finish_send_writes_attempt_and_payment_together(payments: PaymentStore) -> None:
    record = _record("key-00030")
    await payments.create_payment(record)
    seq = await payments.begin_attempt("key-00030", _attempt())
    accepted = _attempt().model_copy(
        update={
            "seq": seq,
            "outcome": AttemptOutcome.ACCEPTED,
            "provider_reference": "ws_CO_30",
            "latency_ms": 8.0,
        }
    )
    done = record.model_copy(
        update={"status": TransactionStatus.SUCCEEDED, "provider_reference": "ws_CO_30", "updated_at": 140.0}
    )
    await payments.finish_send(done, accepted)
    stored = await payments.get_payment("key-00030")
    assert stored is not None
    assert stored.model_dump(exclude={"attempts"}) == done.model_dump(exclude={"attempts"})
    assert stored.attempts == [accepted]

    # Neither half lands without the other.
    failed = done.model_copy(update={"status": TransactionStatus.FAILED, "updated_at": 150.0})
    with pytest.raises(KeyError):
        await payments.finish_send(failed, accepted.model_copy(update={"seq": 9, "detail": "lost"}))
    with pytest.raises(KeyError):
        await payments.finish_send(_record("missing"), accepted.model_copy(update={"detail": "lost"}))
    assert await payments.get_payment("key-00030") == stored
    assert await payments.count_by_status() == {"succeeded": 1}


@pytest.mark.anyio
async def test_find_payment_by_every_kind_of_id(payments: PaymentStore) -> None:
    await payments.create_payment(_record("key-00010", reference="P-10", provider_reference="ws_CO_10"))
    await payments.create_payment(_record("key-00011", provider="airtel", reference="P-11"))
    await payments.record_identifier(
        ProviderIdentifier(
            provider="mpesa",
            kind="checkout_request_id",
            value="CRID-10",
            reference="P-10",
            idempotency_key=None,
            recorded_at=1.0,
        )
    )

    for ids in (("P-10",), ("ws_CO_10",), ("CRID-10",), ("", "unknown", "CRID-10")):
        found = await payments.find_payment("mpesa", *ids)
        assert found is not None and found.idempotency_key == "key-00010", ids
    assert await payments.find_payment("airtel", "P-10") is None  # another provider's payment
    assert await payments.find_payment("mpesa", "P-11") is None
    assert await payments.find_payment("mpesa", "nothing") is None
    assert await payments.find_payment("mpesa") is None
    assert await payments.find_payment("mpesa", "") is None
    found = await payments.find_payment("airtel", "P-11")
    assert found is not None and found.idempotency_key == "key-00011"


@pytest.mark.anyio
async def test_find_payment_prefers_our_reference(payments: PaymentStore) -> None:
    await payments.create_payment(_record("key-00012", reference="A", created_at=5.0))
    await payments.create_payment(
        _record("key-00013", reference="B", provider_reference="A-ish", created_at=1.0)
    )
    found = await payments.find_payment("mpesa", "A-ish", "A")
    assert found is not None and found.idempotency_key == "key-00012"


@pytest.mark.anyio
async def test_identifiers_fill_the_key_from_the_reference(payments: PaymentStore) -> None:
    def ident(kind: str, value: str, reference: str, key: str | None = None) -> ProviderIdentifier:
        return ProviderIdentifier(
            provider="mpesa",
            kind=kind,
            value=value,
            reference=reference,
            idempotency_key=key,
            recorded_at=2.0,
        )

    # Learnt before the payment names its provider and reference: no key yet.
    await payments.record_identifier(ident("merchant_request_id", "MR-1", "P-14"))
    await payments.create_payment(_record("key-00014", reference="P-14"))
    await payments.record_identifier(ident("checkout_request_id", "CR-1", "P-14"))
    await payments.record_identifier(ident("checkout_request_id", "CR-1", "P-14"))  # idempotent
    await payments.record_identifier(ident("merchant_request_id", "MR-1", "P-14"))  # fills the key
    await payments.record_identifier(ident("other", "X-1", "P-unknown"))
    await payments.record_identifier(ident("explicit", "E-1", "P-unknown", key="given-key"))

    assert await payments.identifiers("mpesa", "P-14") == {
        "merchant_request_id": "MR-1",
        "checkout_request_id": "CR-1",
    }
    assert await payments.identifiers("airtel", "P-14") == {}
    assert await _identifier_keys(payments) == {
        "MR-1": "key-00014",
        "CR-1": "key-00014",
        "X-1": None,
        "E-1": "given-key",
    }


@pytest.mark.anyio
async def test_due_for_check_filters_and_orders(payments: PaymentStore) -> None:
    await payments.create_payment(_record("late-unset", created_at=30.0))
    await payments.create_payment(_record("early-due", created_at=10.0, next_check_at=50.0))
    await payments.create_payment(
        _record("mid-unknown", status=TransactionStatus.UNKNOWN, created_at=20.0, next_check_at=60.0)
    )
    await payments.create_payment(
        _record("recon", status=TransactionStatus.NEEDS_RECONCILIATION, created_at=25.0, next_check_at=10.0)
    )
    await payments.create_payment(_record("not-yet", created_at=5.0, next_check_at=61.0))
    await payments.create_payment(_record("final", status=TransactionStatus.SUCCEEDED, created_at=1.0))
    await payments.create_payment(_record("failed", status=TransactionStatus.FAILED, created_at=2.0))

    due = await payments.due_for_check(60.0, 10)
    assert [p.idempotency_key for p in due] == ["early-due", "mid-unknown", "recon", "late-unset"]
    assert [p.idempotency_key for p in await payments.due_for_check(60.0, 2)] == ["early-due", "mid-unknown"]
    assert [p.idempotency_key for p in await payments.due_for_check(0.0, 10)] == ["late-unset"]


@pytest.mark.anyio
async def test_list_count_and_oldest_open(payments: PaymentStore) -> None:
    await payments.create_payment(_record("m-1", created_at=10.0))
    await payments.create_payment(_record("m-2", status=TransactionStatus.UNKNOWN, created_at=20.0))
    await payments.create_payment(_record("m-3", status=TransactionStatus.SUCCEEDED, created_at=5.0))
    await payments.create_payment(_record("a-1", provider="airtel", created_at=15.0))
    await payments.create_payment(
        _record("a-2", provider="airtel", status=TransactionStatus.NEEDS_RECONCILIATION, created_at=12.0)
    )
    await payments.create_payment(_record("none-1", provider=None, reference=None, created_at=1.0))

    newest = await payments.list_payments()
    assert [p.idempotency_key for p in newest] == ["m-2", "a-1", "a-2", "m-1", "m-3", "none-1"]
    assert [p.idempotency_key for p in await payments.list_payments(limit=2)] == ["m-2", "a-1"]
    pending = await payments.list_payments(statuses=(TransactionStatus.PENDING,))
    assert [p.idempotency_key for p in pending] == ["a-1", "m-1", "none-1"]
    mpesa_open = await payments.list_payments(
        statuses=(TransactionStatus.PENDING, TransactionStatus.UNKNOWN), provider="mpesa"
    )
    assert [p.idempotency_key for p in mpesa_open] == ["m-2", "m-1"]

    assert await payments.count_by_status() == {
        "needs_reconciliation": 1,
        "pending": 3,
        "succeeded": 1,
        "unknown": 1,
    }
    assert await payments.oldest_open() == {"airtel": 12.0, "mpesa": 10.0}


@pytest.mark.anyio
async def test_empty_store_answers(payments: PaymentStore) -> None:
    assert await payments.list_payments() == []
    assert await payments.due_for_check(1e12, 10) == []
    assert await payments.count_by_status() == {}
    assert await payments.oldest_open() == {}
    assert await payments.callbacks_due(1e12, 10) == []
    assert await payments.list_callbacks() == []


# --- callback inbox ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_callback_round_trip_and_duplicates_are_kept(payments: PaymentStore) -> None:
    first = await payments.add_callback(_callback('{"ResultCode":0}'))
    assert first.id > 0 and first.state is CallbackState.PENDING
    again = await payments.add_callback(_callback('{"ResultCode":0}', received_at=11.0))
    assert again.id > first.id
    assert (again.state, again.detail) == (CallbackState.DUPLICATE, f"duplicate of #{first.id}")
    third = await payments.add_callback(_callback('{"ResultCode":0}', received_at=12.0))
    assert third.detail == f"duplicate of #{first.id}"  # points at the original, not the copy
    other_provider = await payments.add_callback(_callback('{"ResultCode":0}', provider="airtel"))
    assert other_provider.state is CallbackState.PENDING

    stored = await payments.list_callbacks(provider="mpesa")
    assert [c.id for c in stored] == [third.id, again.id, first.id]
    assert stored[-1] == first
    assert stored[-1].hint == _callback("{}").hint
    dupes = await payments.list_callbacks(states=(CallbackState.DUPLICATE,))
    assert [c.id for c in dupes] == [third.id, again.id]


@pytest.mark.anyio
async def test_callback_hint_without_money_or_operation(payments: PaymentStore) -> None:
    callback = _callback("{}")
    bare = callback.model_copy(
        update={
            "hint": CallbackHint(provider="mpesa", status=TransactionStatus.FAILED),
            "idempotency_key": "key-1",
            "state": CallbackState.UNMATCHED,
            "detail": "no payment yet",
            "checks": 1,
            "next_check_at": 40.0,
        }
    )
    stored = await payments.add_callback(bare)
    (listed,) = await payments.list_callbacks()
    assert listed == stored == bare.model_copy(update={"id": stored.id})
    assert listed.hint.money is None and listed.hint.operation is None and listed.hint.extras == {}


@pytest.mark.anyio
async def test_callback_body_is_cut_to_16_kib(payments: PaymentStore) -> None:
    body = "é" * MAX_CALLBACK_BODY_BYTES  # two bytes each
    stored = await payments.add_callback(_callback(body))
    assert len(stored.body.encode()) == MAX_CALLBACK_BODY_BYTES
    (listed,) = await payments.list_callbacks()
    assert listed.body == stored.body
    # The hash is of the body as received, not of the cut one.
    assert listed.body_sha256 == hashlib.sha256(body.encode()).hexdigest()


@pytest.mark.anyio
async def test_update_callback_and_callbacks_due(payments: PaymentStore) -> None:
    a = await payments.add_callback(_callback("a", received_at=30.0))
    b = await payments.add_callback(_callback("b", received_at=10.0))
    c = await payments.add_callback(_callback("c", received_at=20.0))
    d = await payments.add_callback(_callback("d", received_at=5.0))
    await payments.add_callback(_callback("a", received_at=1.0))  # duplicate: never due

    await payments.update_callback(
        b.model_copy(update={"state": CallbackState.UNMATCHED, "checks": 1, "next_check_at": 100.0})
    )
    await payments.update_callback(
        c.model_copy(
            update={
                "state": CallbackState.CONFIRMED,
                "idempotency_key": "key-c",
                "detail": "pull agreed",
                "resolved_at": 21.0,
            }
        )
    )
    await payments.update_callback(d.model_copy(update={"checks": 3, "next_check_at": 50.0}))

    assert [x.id for x in await payments.callbacks_due(60.0, 10)] == [d.id, a.id]
    assert [x.id for x in await payments.callbacks_due(100.0, 10)] == [d.id, b.id, a.id]
    assert [x.id for x in await payments.callbacks_due(100.0, 1)] == [d.id]

    (confirmed,) = await payments.list_callbacks(idempotency_key="key-c")
    assert (confirmed.state, confirmed.detail, confirmed.resolved_at) == (
        CallbackState.CONFIRMED,
        "pull agreed",
        21.0,
    )
    assert [x.id for x in await payments.list_callbacks(limit=2)] == [a.id, c.id]


# --- migration --------------------------------------------------------------------------

_LEGACY_ATTEMPT: dict[str, object] = {
    "provider": "mpesa",
    "started_at": 1.0,
    "latency_ms": 2.0,
    "outcome": "accepted",
    "reference": "R1",
    "provider_reference": "ws_CO_1",
    "provider_code": "0",
    "detail": "pending",
}
_LEGACY_RECORD: dict[str, object] = {
    "idempotency_key": "legacy-00001",
    "operation": "collect",
    "money": {"amount_minor": 15000, "currency": "KES"},
    "phone": "+254712345678",
    "country": "KE",
    "description": "x",
    "status": "pending",
    "provider": "mpesa",
    "reference": "R1",
    "provider_reference": "ws_CO_1",
    "provider_code": None,
    "provider_message": None,
    "attempts": [_LEGACY_ATTEMPT],
    "failed_over": False,
    "created_at": 1.0,
    "updated_at": 2.0,
    "metadata": {},
}


def _v5_database(path: Path, *records: dict[str, object]) -> None:
    """A database as v5 left it, with its payments as JSON documents."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for version in range(1, 6):
            db.executescript("BEGIN;" + _MIGRATIONS[version] + f"PRAGMA user_version={version};COMMIT;")
        for record in records:
            db.execute(
                "INSERT INTO payments VALUES (?,?,?,?,?,?,?,?)",
                (
                    record["idempotency_key"],
                    record["status"],
                    record["provider"],
                    record["reference"],
                    record["provider_reference"],
                    record["created_at"],
                    record["updated_at"],
                    json.dumps(record),
                ),
            )
    finally:
        db.close()


@pytest.mark.anyio
async def test_v5_payments_migrate_to_columns_with_their_attempts(tmp_path: Path) -> None:
    second = {
        **_LEGACY_RECORD,
        "idempotency_key": "legacy-00002",
        "operation": "payout",
        "money": {"amount_minor": 250, "currency": "UGX"},
        "status": "succeeded",
        "provider": None,
        "reference": None,
        "provider_reference": None,
        "attempts": [
            {**_LEGACY_ATTEMPT, "outcome": "not_processed"},
            {**_LEGACY_ATTEMPT, "provider": "airtel", "detail": ""},
        ],
        "failed_over": True,
        "created_at": 3.0,
        "metadata": {"order": "o-2"},
    }
    path = tmp_path / "v5.sqlite3"
    _v5_database(path, _LEGACY_RECORD, second)

    store = Store(path).open()
    try:
        payments = SqlitePaymentStore(store)
        migrated = await payments.get_payment("legacy-00001")
        assert migrated is not None
        assert migrated == PaymentRecord(
            idempotency_key="legacy-00001",
            operation=Operation.COLLECT,
            money=Money(amount_minor=15000, currency="KES"),
            phone="+254712345678",
            country="KE",
            description="x",
            status=TransactionStatus.PENDING,
            provider="mpesa",
            reference="R1",
            provider_reference="ws_CO_1",
            attempts=[
                PaymentAttempt(
                    seq=1,
                    provider="mpesa",
                    started_at=1.0,
                    latency_ms=2.0,
                    outcome=AttemptOutcome.ACCEPTED,
                    reference="R1",
                    provider_reference="ws_CO_1",
                    provider_code="0",
                    detail="pending",
                )
            ],
            created_at=1.0,
            updated_at=2.0,
        )
        assert await payments.get_payment("ws_CO_1") == migrated
        # Its next check is unset: the reconciler pulls it at once.
        assert [p.idempotency_key for p in await payments.due_for_check(0.0, 10)] == ["legacy-00001"]

        other = await payments.get_payment("legacy-00002")
        assert other is not None
        assert (other.operation, other.money, other.status, other.failed_over, other.metadata) == (
            Operation.PAYOUT,
            Money(amount_minor=250, currency="UGX"),
            TransactionStatus.SUCCEEDED,
            True,
            {"order": "o-2"},
        )
        assert [(a.seq, a.provider, a.outcome) for a in other.attempts] == [
            (1, "mpesa", AttemptOutcome.NOT_PROCESSED),
            (2, "airtel", AttemptOutcome.ACCEPTED),
        ]
        # New attempts continue after the migrated ones.
        assert await payments.begin_attempt("legacy-00002", _attempt()) == 3

        with store.connection() as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            indexes = {
                r[0]
                for r in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'payments'"
                )
            }
            plan = " ".join(
                str(r[3])
                for r in db.execute("EXPLAIN QUERY PLAN SELECT * FROM payments WHERE reference = 'R1'")
            )
        assert "payments_v2_legacy" not in tables
        assert {"payment_attempts", "provider_identifiers", "callback_inbox"} <= tables
        assert {
            "payments_by_reference",
            "payments_by_provider_reference",
            "payments_by_status_check",
        } <= indexes
        assert "payments_by_status" not in indexes  # the v2 index went with the legacy table
        assert "payments_by_reference" in plan
    finally:
        store.close()


def test_two_processes_opening_a_v5_file_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "v5.sqlite3"
    _v5_database(path, _LEGACY_RECORD)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    opened: list[Store] = []

    def open_it() -> None:
        barrier.wait()
        try:
            opened.append(Store(path).open())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    try:
        record = asyncio.run(SqlitePaymentStore(opened[0]).get_payment("legacy-00001"))
        assert record is not None and len(record.attempts) == 1
    finally:
        for s in opened:
            s.close()


def test_a_failed_migration_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "v5.sqlite3"
    # A legacy document that is not JSON: the copy fails, the whole migration rolls back.
    _v5_database(path, _LEGACY_RECORD)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE payments SET record = 'not json'")
    db.close()
    with pytest.raises(sqlite3.OperationalError):
        Store(path).open()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
        assert db.execute("SELECT record FROM payments").fetchone()[0] == "not json"
    db.close()


# --- concurrency ------------------------------------------------------------------------


def test_two_connections_racing_one_key_make_one_payment(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    stores = [Store(path).open(), Store(path).open()]
    try:
        rounds = 30
        barrier = threading.Barrier(2)
        results: dict[int, list[PaymentRecord | None]] = {0: [], 1: []}

        def race(side: int) -> None:
            payments = SqlitePaymentStore(stores[side])

            async def run() -> None:
                for i in range(rounds):
                    barrier.wait()
                    mine = _record(f"race-{i:04d}", description=f"side {side}")
                    results[side].append(await payments.create_payment(mine))

            asyncio.run(run())

        threads = [threading.Thread(target=race, args=(side,)) for side in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        assert len(results[0]) == len(results[1]) == rounds
        check = SqlitePaymentStore(stores[0])
        for i in range(rounds):
            outcomes = (results[0][i], results[1][i])
            winners = [side for side, got in enumerate(outcomes) if got is None]
            assert len(winners) == 1, i
            loser_saw = outcomes[1 - winners[0]]
            assert loser_saw is not None and loser_saw.description == f"side {winners[0]}"
            stored = asyncio.run(check.get_payment(f"race-{i:04d}"))
            assert stored == loser_saw
        assert asyncio.run(check.count_by_status()) == {"pending": rounds}
    finally:
        for s in stores:
            s.close()


def test_two_connections_numbering_attempts_never_collide(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    stores = [Store(path).open(), Store(path).open()]
    try:
        asyncio.run(SqlitePaymentStore(stores[0]).create_payment(_record("key-shared")))
        barrier = threading.Barrier(2)
        seqs: list[int] = []
        lock = threading.Lock()

        def add(side: int) -> None:
            payments = SqlitePaymentStore(stores[side])
            barrier.wait()
            for _ in range(25):
                seq = asyncio.run(payments.begin_attempt("key-shared", _attempt(f"p{side}")))
                with lock:
                    seqs.append(seq)

        threads = [threading.Thread(target=add, args=(side,)) for side in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(seqs) == list(range(1, 51))
        stored = asyncio.run(SqlitePaymentStore(stores[1]).get_payment("key-shared"))
        assert stored is not None and [a.seq for a in stored.attempts] == list(range(1, 51))
    finally:
        for s in stores:
            s.close()


@pytest.mark.anyio
async def test_lookups_by_id_use_their_indexes(store: Store, sqlite_payments: SqlitePaymentStore) -> None:
    """A callback's lookup must not walk every payment of its provider (the planner, knowing no
    sizes, would pick the provider index unless told otherwise)."""
    await sqlite_payments.create_payment(_record("key-00020", reference="P-20"))
    statements: list[str] = []
    with store.connection() as db:
        db.set_trace_callback(statements.append)
    try:
        await sqlite_payments.find_payment("mpesa", "nothing-1", "nothing-2")
        await sqlite_payments.get_payment("nothing")
    finally:
        with store.connection() as db:
            db.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 4  # three lookups in order of trust, one get
    with store.connection() as db:
        for sql in selects:
            plan = " | ".join(str(r[3]) for r in db.execute("EXPLAIN QUERY PLAN " + sql))
            assert "SCAN p" not in plan and "payments_by_provider_status_time" not in plan, plan


# --- housekeeping -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_prune_drops_old_final_payments_and_settled_callbacks(payments: PaymentStore) -> None:
    def at(record: PaymentRecord, updated_at: float) -> PaymentRecord:
        return record.model_copy(update={"updated_at": updated_at})

    await payments.create_payment(at(_record("old-final", status=TransactionStatus.SUCCEEDED), 10.0))
    await payments.create_payment(at(_record("old-failed", status=TransactionStatus.FAILED), 20.0))
    await payments.create_payment(at(_record("old-open", status=TransactionStatus.UNKNOWN), 10.0))
    await payments.create_payment(at(_record("new-final", status=TransactionStatus.SUCCEEDED), 100.0))
    await payments.begin_attempt("old-final", _attempt())
    for key in ("old-final", "old-open"):
        await payments.record_identifier(
            ProviderIdentifier(
                provider="mpesa",
                kind="checkout_request_id",
                value=f"CR-{key}",
                reference=f"R-{key}",
                idempotency_key=None,
                recorded_at=1.0,
            )
        )
    settled_old = await payments.add_callback(_callback("settled", received_at=5.0))
    await payments.update_callback(settled_old.model_copy(update={"state": CallbackState.CONFIRMED}))
    pending_old = await payments.add_callback(_callback("pending", received_at=5.0))
    settled_new = await payments.add_callback(_callback("new", received_at=80.0))
    await payments.update_callback(settled_new.model_copy(update={"state": CallbackState.REFUSED}))

    assert await payments.prune(finished_before=50.0) == 2

    assert await payments.get_payment("old-final") is None
    assert await payments.get_payment("old-failed") is None
    assert await payments.get_payment("old-open") is not None
    assert await payments.get_payment("new-final") is not None
    assert await payments.identifiers("mpesa", "R-old-final") == {}
    assert await payments.identifiers("mpesa", "R-old-open") == {"checkout_request_id": "CR-old-open"}
    assert await payments.find_payment("mpesa", "CR-old-final") is None
    assert {c.id for c in await payments.list_callbacks()} == {pending_old.id, settled_new.id}
    assert await payments.count_by_status() == {"succeeded": 1, "unknown": 1}
    # A new payment may take a pruned key's attempts numbering from 1 again.
    await payments.create_payment(_record("old-final"))
    assert await payments.begin_attempt("old-final", _attempt()) == 1
    assert await payments.prune(finished_before=50.0) == 0


@pytest.mark.anyio
async def test_ping_answers(payments: PaymentStore) -> None:
    await payments.ping()
