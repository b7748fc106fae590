"""Money truth in the engine: persist before send, the reconciler's bounds, callbacks as hints.

Driven with scripted providers and the injected clock; the real adapters and the sandbox are
exercised end to end in tests/scenarios/test_money_truth_scenarios.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from mcp_autonomy.autonomy.callback_inbox import CallbackInbox
from mcp_autonomy.autonomy.reconciler import PaymentLocks, PaymentReconciler
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import EventBus, EventType
from mcp_autonomy.payment_store import SqlitePaymentStore
from mcp_autonomy.payments import AttemptOutcome, CallbackState, PaymentAttempt, PaymentRecord
from mcp_autonomy.providers.base import Money, MoneyTruth, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.resilience.router import PaymentRouter
from mcp_autonomy.store import Store
from mcp_autonomy.telemetry import Telemetry
from tests.fakes import SCRIPTED_TRUTH, CallbackScriptedAdapter, ScriptedAdapter

pytestmark = pytest.mark.anyio

LAGGING_TRUTH = MoneyTruth(
    not_found_grace_s=30.0,
    not_found_is_final_after_grace=False,
    pending_bound_s=600.0,
    pull_carries=frozenset({"status"}),
    callback_carries=frozenset({"status", "amount", "payer"}),
    pull_path="scripted",
)


@dataclass
class World:
    store: Store
    payments: SqlitePaymentStore
    router: PaymentRouter
    reconciler: PaymentReconciler
    inbox: CallbackInbox
    mpesa: CallbackScriptedAdapter
    backup: ScriptedAdapter
    bus: EventBus
    clock: ManualClock

    def events(self, kind: EventType) -> list[str]:
        return [e.message for e in self.bus.history(types=[kind], limit=100_000)]


@pytest.fixture
def world(tmp_path: Path, clock: ManualClock) -> Iterator[World]:
    registry = ProviderRegistry()
    mpesa, backup = CallbackScriptedAdapter("mpesa"), ScriptedAdapter("intasend")
    registry.register(mpesa)
    registry.register(backup)
    registry.set_backups("mpesa", ["intasend"])
    store = Store(tmp_path / "db.sqlite3").open()
    payments = SqlitePaymentStore(store)
    bus = EventBus(clock)
    router = PaymentRouter(registry, payments, Telemetry(clock), bus, clock)
    locks = PaymentLocks()
    reconciler = PaymentReconciler(
        router=router, payments=payments, providers=registry, bus=bus, clock=clock, locks=locks
    )
    inbox = CallbackInbox(
        payments=payments,
        providers=registry,
        reconciler=reconciler,
        locks=locks,
        bus=bus,
        clock=clock,
        audit=store.record_audit,
    )
    yield World(store, payments, router, reconciler, inbox, mpesa, backup, bus, clock)
    store.close()


def payment(key: str, amount: int = 15_000, operation: Operation = Operation.COLLECT) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=operation,
        money=Money(amount_minor=amount, currency="KES"),
        phone="+254712345678",
        country="KE",
    )


async def submit_with_clock(world: World, request: PaymentRequest, run_s: float = 120.0) -> PaymentRecord:
    results: list[PaymentRecord] = []
    async with anyio.create_task_group() as tg:

        async def go() -> None:
            results.append(await world.router.submit(request))

        tg.start_soon(go)
        await world.clock.advance(run_s)
    return results[0]


# --- persist before send --------------------------------------------------------------------


async def test_the_attempt_is_durable_before_the_request_leaves(world: World) -> None:
    seen: list[PaymentRecord | None] = []
    original = world.mpesa.collect

    async def collect(request: PaymentRequest):  # type: ignore[no-untyped-def]
        # What another process would read from the store at the moment the request leaves.
        seen.append(await SqlitePaymentStore(world.store).get_payment(request.idempotency_key))
        return await original(request)

    world.mpesa.collect = collect  # type: ignore[method-assign]
    await world.router.submit(payment("durable-01"))
    (stored,) = seen
    assert stored is not None
    assert [(a.provider, a.outcome, a.reference) for a in stored.attempts] == [
        ("mpesa", AttemptOutcome.SENDING, "mpesa-durable-01")
    ]


async def test_provider_ids_are_stored_the_moment_the_adapter_learns_them(world: World) -> None:
    world.mpesa.default_behaviour = "hang_after_accept"
    record = await submit_with_clock(world, payment("ids-00001"))
    # The call hung after the provider took it: the id it learnt was stored before the timeout.
    assert (
        record.status is TransactionStatus.SUCCEEDED
        and record.attempts[0].outcome is AttemptOutcome.AMBIGUOUS
    )
    ids = await world.payments.identifiers("mpesa", "mpesa-ids-00001")
    assert ids == {"scripted_id": "S-mpesa-ids-00001"}
    found = await world.payments.find_payment("mpesa", "S-mpesa-ids-00001")
    assert found is not None and found.idempotency_key == "ids-00001"


# --- not found is not "not processed" ------------------------------------------------------


async def test_not_found_within_the_grace_period_is_unknown_never_a_failover(world: World) -> None:
    world.mpesa.money_truth = LAGGING_TRUTH
    world.mpesa.behaviours = ["ambiguous"]
    # The provider took the charge but its lookup does not show it yet.
    world.mpesa.status_fails = False
    original_status = world.mpesa.status

    async def lagging_status(reference: str, provider_reference: str | None = None, *, context=None):  # type: ignore[no-untyped-def]
        from mcp_autonomy.providers.base import ErrorClass, ProviderError

        raise ProviderError("mpesa", ErrorClass.NOT_PROCESSED, "not found", code="not_found")

    world.mpesa.status = lagging_status  # type: ignore[method-assign]
    record = await world.router.submit(payment("grace-0001"))
    assert (record.status, record.provider) == (TransactionStatus.UNKNOWN, "mpesa")
    assert "lag" in (record.status_reason or "")
    assert world.backup.calls == 0, "a not-found inside the grace period must never fail over"
    assert world.mpesa.charges == {"mpesa-grace-0001": 1}
    world.mpesa.status = original_status  # type: ignore[method-assign]
    await world.clock.advance(10)
    await world.reconciler.tick()
    stored = await world.payments.get_payment("grace-0001")
    assert stored is not None and stored.status is TransactionStatus.SUCCEEDED


async def test_not_found_past_the_grace_fails_over_only_where_the_provider_says_so(world: World) -> None:
    world.mpesa.behaviours = ["ambiguous"]
    world.mpesa.charges.clear()

    async def absent(reference: str, provider_reference: str | None = None, *, context=None):  # type: ignore[no-untyped-def]
        from mcp_autonomy.providers.base import ErrorClass, ProviderError

        raise ProviderError("mpesa", ErrorClass.NOT_PROCESSED, "not found", code="not_found")

    world.mpesa.status = absent  # type: ignore[method-assign]
    world.mpesa.money_truth = SCRIPTED_TRUTH  # grace 0, "not found" final: safe to fail over
    record = await world.router.submit(payment("grace-0002"))
    assert record.provider == "intasend" and record.failed_over


# --- the reconciler -------------------------------------------------------------------------


async def test_recover_after_a_crash_resolves_by_status_never_by_resend(world: World) -> None:
    now = world.clock.now()
    in_flight = PaymentRecord(
        idempotency_key="crash-0001",
        operation=Operation.COLLECT,
        money=Money(amount_minor=15_000, currency="KES"),
        phone="+254712345678",
        country="KE",
        status=TransactionStatus.PENDING,
        created_at=now,
        updated_at=now,
    )
    never_sent = in_flight.model_copy(update={"idempotency_key": "crash-0002"})
    assert await world.payments.create_payment(in_flight) is None
    assert await world.payments.create_payment(never_sent) is None
    await world.payments.begin_attempt(
        "crash-0001",
        PaymentAttempt(
            provider="mpesa",
            started_at=now,
            latency_ms=0,
            outcome=AttemptOutcome.SENDING,
            reference="mpesa-crash-0001",
        ),
    )
    world.mpesa.charges["mpesa-crash-0001"] = 1  # the request did reach the provider
    assert await world.reconciler.recover() == 2
    tick = await world.reconciler.tick()
    assert tick.finished == 1  # the never-sent one failed at recovery: nothing to ask
    first = await world.payments.get_payment("crash-0001")
    second = await world.payments.get_payment("crash-0002")
    assert first is not None and (first.status, first.provider) == (TransactionStatus.SUCCEEDED, "mpesa")
    assert second is not None and second.status is TransactionStatus.FAILED
    assert "never sent" in (second.status_reason or "")
    assert world.mpesa.calls == 0 and world.backup.calls == 0, "recovery never re-sends"


async def test_a_payment_past_its_bound_needs_reconciliation_and_an_operator_resolves_it(
    world: World,
) -> None:
    world.mpesa.money_truth = LAGGING_TRUTH
    world.mpesa.status_answers["mpesa-bound-0001"] = TransactionStatus.PENDING
    record = await world.router.submit(payment("bound-0001"))
    assert record.status is TransactionStatus.PENDING
    for _ in range(40):
        await world.clock.advance(30)
        await world.reconciler.tick()
    stored = await world.payments.get_payment("bound-0001")
    assert stored is not None and stored.status is TransactionStatus.NEEDS_RECONCILIATION
    assert "bound" in (stored.status_reason or "")
    assert len(world.events(EventType.PAYMENT_NEEDS_RECONCILIATION)) == 1
    with pytest.raises(ValueError, match="outcome"):
        await world.reconciler.resolve("bound-0001", TransactionStatus.PENDING, reason="x")
    resolved = await world.reconciler.resolve(
        "bound-0001", TransactionStatus.SUCCEEDED, reason="seen on the portal", provider_reference="RCP1"
    )
    assert resolved.status is TransactionStatus.SUCCEEDED and resolved.provider_reference == "RCP1"
    with pytest.raises(ValueError, match="only needs_reconciliation"):
        await world.reconciler.resolve("bound-0001", TransactionStatus.FAILED, reason="again")
    with pytest.raises(KeyError):
        await world.reconciler.resolve("nobody-0001", TransactionStatus.FAILED, reason="x")
    assert world.mpesa.calls == 1


async def test_a_needs_reconciliation_payment_still_ends_when_the_provider_answers(world: World) -> None:
    world.mpesa.money_truth = LAGGING_TRUTH
    world.mpesa.status_answers["mpesa-late-0001"] = TransactionStatus.PENDING
    await world.router.submit(payment("late-0001"))
    for _ in range(30):
        await world.clock.advance(30)
        await world.reconciler.tick()
    assert (await world.payments.get_payment("late-0001")).status is TransactionStatus.NEEDS_RECONCILIATION  # type: ignore[union-attr]
    world.mpesa.status_answers["mpesa-late-0001"] = TransactionStatus.FAILED
    await world.clock.advance(1000)
    await world.reconciler.tick()
    assert (await world.payments.get_payment("late-0001")).status is TransactionStatus.FAILED  # type: ignore[union-attr]


async def test_a_pull_reporting_another_amount_needs_reconciliation(world: World) -> None:
    world.mpesa.status_answers["mpesa-amount-01"] = TransactionStatus.PENDING
    await world.router.submit(payment("amount-01"))
    world.mpesa.status_answers["mpesa-amount-01"] = TransactionStatus.SUCCEEDED
    world.mpesa.status_money["mpesa-amount-01"] = Money(amount_minor=100, currency="KES")
    await world.clock.advance(10)
    await world.reconciler.tick()
    stored = await world.payments.get_payment("amount-01")
    assert stored is not None and stored.status is TransactionStatus.NEEDS_RECONCILIATION
    assert "100 KES" in (stored.status_reason or "")


async def test_status_pulls_go_through_the_cache_unless_fresh(world: World) -> None:
    world.mpesa.status_answers["mpesa-cache-001"] = TransactionStatus.PENDING
    await world.router.submit(payment("cache-001"))
    calls = world.mpesa.status_calls
    for _ in range(3):
        await world.router.query_status("mpesa", "mpesa-cache-001")
    assert world.mpesa.status_calls == calls + 1, "a pending answer is cached for status_cache_ttl_s"
    await world.router.query_status("mpesa", "mpesa-cache-001", fresh=True)
    assert world.mpesa.status_calls == calls + 2
    for _ in range(2):  # served from the fresh pull's entry
        await world.router.query_status("mpesa", "mpesa-cache-001")
    assert world.mpesa.status_calls == calls + 2
    world.mpesa.status_answers["mpesa-cache-001"] = TransactionStatus.SUCCEEDED
    await world.clock.advance(6)  # past the 5 s TTL
    await world.router.query_status("mpesa", "mpesa-cache-001")
    cache = world.router.lane("mpesa").status_cache
    assert cache.stale_hits == 2, "the two cached pendings were stale once the status changed"


# --- callbacks are hints --------------------------------------------------------------------


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


async def pending_payment(world: World, key: str) -> None:
    world.mpesa.status_answers[f"mpesa-{key}"] = TransactionStatus.PENDING
    record = await world.router.submit(payment(key))
    assert record.status is TransactionStatus.PENDING


async def test_a_forged_callback_with_another_amount_is_refused_and_audited(world: World) -> None:
    await pending_payment(world, "forged-001")
    receipt = await world.inbox.receive(
        "mpesa", "stk", None, body(reference="mpesa-forged-001", status="succeeded", amount_minor=100), {}
    )
    assert (receipt.http_status, receipt.state) == (200, "refused")
    stored = await world.payments.get_payment("forged-001")
    assert stored is not None and stored.status is TransactionStatus.PENDING
    assert world.events(EventType.CALLBACK_REFUSED)
    assert [a.tool for a in world.store.audit_log()] == ["callback_refused"]


async def test_a_callback_is_confirmed_only_by_a_pull_and_kept_while_the_pull_says_pending(
    world: World,
) -> None:
    await pending_payment(world, "confirm-01")
    receipt = await world.inbox.receive(
        "mpesa", "stk", None, body(reference="mpesa-confirm-01", status="succeeded", amount_minor=15_000), {}
    )
    assert receipt.state == "pending"
    stored = await world.payments.get_payment("confirm-01")
    assert stored is not None and stored.status is TransactionStatus.PENDING, (
        "a callback alone changes nothing"
    )
    world.mpesa.status_answers["mpesa-confirm-01"] = TransactionStatus.SUCCEEDED
    await world.clock.advance(15)
    await world.reconciler.tick()
    (callback,) = await world.payments.list_callbacks(idempotency_key="confirm-01")
    assert callback.state is CallbackState.CONFIRMED
    stored = await world.payments.get_payment("confirm-01")
    assert stored is not None and stored.status is TransactionStatus.SUCCEEDED


async def test_a_callback_contradicted_by_the_pull_is_refused_and_the_pull_wins(world: World) -> None:
    await pending_payment(world, "contra-001")
    world.mpesa.status_answers["mpesa-contra-001"] = TransactionStatus.FAILED
    receipt = await world.inbox.receive(
        "mpesa", "stk", None, body(reference="mpesa-contra-001", status="succeeded"), {}
    )
    assert receipt.state == "refused"
    stored = await world.payments.get_payment("contra-001")
    assert stored is not None and stored.status is TransactionStatus.FAILED


async def test_duplicates_unknown_payments_bad_signatures_and_malformed_bodies(world: World) -> None:
    await pending_payment(world, "dup-00001")
    world.mpesa.status_answers["mpesa-dup-00001"] = TransactionStatus.SUCCEEDED
    payload = body(reference="mpesa-dup-00001", status="succeeded", amount_minor=15_000)
    first = await world.inbox.receive("mpesa", "stk", None, payload, {})
    again = await world.inbox.receive("mpesa", "stk", None, payload, {})
    assert (first.state, again.state) == ("confirmed", "duplicate")

    unknown = await world.inbox.receive(
        "mpesa", "stk", None, body(reference="nobody", status="succeeded"), {}
    )
    assert (unknown.http_status, unknown.state) == (200, "unmatched")
    (kept,) = await world.payments.list_callbacks(states=(CallbackState.UNMATCHED,))
    assert kept.hint.reference == "nobody" and kept.next_check_at is not None

    forged = await world.inbox.receive("mpesa", "stk", None, payload, {"x-sig": "bad"})
    assert forged.http_status == 401
    for bad in (b"not json", b"[1, 2]", body(reference="x")):
        assert (await world.inbox.receive("mpesa", "stk", None, bad, {})).http_status == 400
    assert (
        await world.inbox.receive("mpesa", "stk", None, body(event="ping", status="x"), {})
    ).state == "ignored"
    assert (await world.inbox.receive("nobody", "stk", None, payload, {})).http_status == 404
    assert (await world.inbox.receive("intasend", "stk", None, payload, {})).http_status == 404
    assert (await world.inbox.receive("mpesa", "stk", None, b"x" * 70_000, {})).http_status == 413
    stored = await world.payments.get_payment("dup-00001")
    assert stored is not None and stored.status is TransactionStatus.SUCCEEDED


async def test_an_unmatched_callback_is_matched_once_its_payment_exists(world: World) -> None:
    early = await world.inbox.receive(
        "mpesa", "stk", None, body(reference="mpesa-early-001", status="succeeded"), {}
    )
    assert early.state == "unmatched"
    world.mpesa.status_answers["mpesa-early-001"] = TransactionStatus.SUCCEEDED
    await world.router.submit(payment("early-001"))
    await world.clock.advance(60)
    await world.reconciler.tick()
    (callback,) = await world.payments.list_callbacks(provider="mpesa")
    assert callback.state is CallbackState.CONFIRMED and callback.idempotency_key == "early-001"


async def test_an_asynchronous_pull_answer_counts_only_when_this_engine_asked(world: World) -> None:
    await pending_payment(world, "async-0001")
    unsolicited = await world.inbox.receive(
        "mpesa",
        "result",
        None,
        body(reference="mpesa-async-0001", status="succeeded", amount_minor=15_000, channel="status_query"),
        {},
    )
    assert unsolicited.state == "refused"
    world.mpesa.identifier_sink("mpesa-async-0001", "status_query", "AG_1")  # type: ignore[misc]
    await world.payments.flush()
    solicited = await world.inbox.receive(
        "mpesa",
        "result",
        None,
        body(
            reference="mpesa-async-0001", status="succeeded", amount_minor=15_000, channel="status_query", n=2
        ),
        {},
    )
    assert solicited.state == "confirmed"
    stored = await world.payments.get_payment("async-0001")
    assert stored is not None and stored.status is TransactionStatus.SUCCEEDED


async def test_a_status_query_that_is_only_sent_leaves_an_ambiguous_payout_unknown(world: World) -> None:
    # M-Pesa B2C: the pull is the Transaction Status API, whose answer arrives by callback. Its
    # "query accepted" says nothing about the payout, which may never have reached M-Pesa.
    from mcp_autonomy.providers.base import ProviderTransaction

    world.mpesa.behaviours = ["ambiguous"]

    async def query_sent(reference: str, provider_reference: str | None = None, *, context=None):  # type: ignore[no-untyped-def]
        return ProviderTransaction(
            provider="mpesa",
            reference=reference,
            status=TransactionStatus.PENDING,
            provider_message="Transaction Status query accepted; the answer comes to the ResultURL",
            answer_by_callback=True,
        )

    world.mpesa.status = query_sent  # type: ignore[method-assign]
    record = await world.router.submit(payment("b2c-00001", operation=Operation.PAYOUT))
    assert (record.status, record.provider) == (TransactionStatus.UNKNOWN, "mpesa")
    assert "ResultURL" in (record.status_reason or "")
    assert world.backup.calls == 0


@pytest.mark.anyio
async def test_a_task_cancelled_while_waiting_for_a_payment_lock_leaves_no_trace() -> None:
    """Otherwise the key stays `is_held` for ever and the reconciler skips that payment for ever."""
    locks = PaymentLocks()

    async def waiter() -> None:
        async with locks.hold("k1"):
            raise AssertionError("the lock is held: this waiter must not get it")

    async with locks.hold("k1"), anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        tg.cancel_scope.cancel()
    assert not locks.is_held("k1")
    async with locks.hold("k1"):
        assert locks.is_held("k1")
