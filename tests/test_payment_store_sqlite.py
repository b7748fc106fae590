"""SqlitePaymentStore's payment-path writes: `finish_send` (one transaction for an attempt's
outcome and the payment's fields), and the single-statement `begin_attempt`."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_autonomy.payment_store import SqlitePaymentStore
from mcp_autonomy.payments import AttemptOutcome, PaymentAttempt, PaymentRecord
from mcp_autonomy.providers.base import Money, Operation, TransactionStatus
from mcp_autonomy.store import Store

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "payments.sqlite3").open()
    yield opened
    opened.close()


def _record(key: str) -> PaymentRecord:
    return PaymentRecord(
        idempotency_key=key,
        operation=Operation.COLLECT,
        money=Money(amount_minor=15000, currency="KES"),
        phone="+254712345678",
        country="KE",
        status=TransactionStatus.PENDING,
        created_at=100.0,
        updated_at=100.0,
        next_check_at=105.0,
    )


def _sending(provider: str = "mpesa") -> PaymentAttempt:
    return PaymentAttempt(
        provider=provider, started_at=100.0, latency_ms=0.0, outcome=AttemptOutcome.SENDING, reference="R1"
    )


def _committed(store: Store, key: str) -> tuple[tuple[object, ...], list[tuple[object, ...]]]:
    """The payment's status and provider, and its attempts, as another connection sees them."""
    other = sqlite3.connect(str(store.path))
    try:
        payment = other.execute(
            "SELECT status, provider, provider_reference FROM payments WHERE idempotency_key = ?", (key,)
        ).fetchone()
        attempts = other.execute(
            "SELECT seq, outcome, latency_ms, provider_reference FROM payment_attempts"
            " WHERE idempotency_key = ? ORDER BY seq",
            (key,),
        ).fetchall()
    finally:
        other.close()
    return payment, attempts


async def test_finish_send_commits_the_attempt_and_the_payment_together(store: Store) -> None:
    payments = SqlitePaymentStore(store)
    record = _record("key-1")
    assert await payments.create_payment(record) is None
    attempt = _sending()
    attempt.seq = await payments.begin_attempt("key-1", attempt)
    attempt.outcome, attempt.latency_ms, attempt.provider_reference = AttemptOutcome.ACCEPTED, 12.5, "P-1"
    record.status, record.provider, record.provider_reference = TransactionStatus.SUCCEEDED, "mpesa", "P-1"
    await payments.finish_send(record, attempt)
    assert _committed(store, "key-1") == (("succeeded", "mpesa", "P-1"), [(1, "accepted", 12.5, "P-1")])
    stored = await payments.get_payment("key-1")
    assert stored is not None and stored.attempts == [attempt]


async def test_finish_send_of_a_missing_attempt_changes_nothing(store: Store) -> None:
    payments = SqlitePaymentStore(store)
    record = _record("key-2")
    await payments.create_payment(record)
    await payments.begin_attempt("key-2", _sending())
    ghost = _sending().model_copy(update={"seq": 9, "outcome": AttemptOutcome.ACCEPTED})
    record.status = TransactionStatus.SUCCEEDED
    with pytest.raises(KeyError, match="no attempt 9"):
        await payments.finish_send(record, ghost)
    # Rolled back as one: the payment did not take the outcome of an attempt that was not written.
    assert _committed(store, "key-2") == (("pending", None, None), [(1, "sending", 0.0, None)])


async def test_finish_send_of_a_missing_payment_raises(store: Store) -> None:
    payments = SqlitePaymentStore(store)
    with pytest.raises(KeyError):
        await payments.finish_send(_record("nobody"), _sending().model_copy(update={"seq": 1}))


async def test_begin_attempt_numbers_after_the_stored_attempts_and_refuses_a_missing_payment(
    store: Store,
) -> None:
    payments = SqlitePaymentStore(store)
    record = _record("key-3").model_copy(update={"attempts": [_sending("a"), _sending("b")]})
    await payments.create_payment(record)
    assert await payments.begin_attempt("key-3", _sending("c")) == 3
    assert await payments.begin_attempt("key-3", _sending("d")) == 4
    with pytest.raises(KeyError, match="no payment 'missing'"):
        await payments.begin_attempt("missing", _sending())
    assert [row[0] for row in _committed(store, "key-3")[1]] == [1, 2, 3, 4]
    assert _committed(store, "missing") == (None, [])


async def test_count_by_status_reads_the_maintained_counters_not_the_rows(store: Store) -> None:
    """`get_stats` at a million payments must not scan them on the event loop."""
    payments = SqlitePaymentStore(store)
    await payments.create_payment(_record("count-key-0001"))
    await payments.create_payment(_record("count-key-0002"))
    assert await payments.count_by_status() == {"pending": 2}
    with store.connection() as db:  # a counter out of step with the rows shows: no scan
        db.execute("UPDATE payment_counts SET count = count + 40 WHERE status = 'pending'")
    assert await payments.count_by_status() == {"pending": 42}
