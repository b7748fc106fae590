"""The payment reconciler: every non-final payment ends final, or `needs_reconciliation` in bound.

What it does, each tick (`RECONCILE_TICK_S`):

- pulls every payment whose check is due (`pending`, `unknown`, `needs_reconciliation`) at its
  provider, through the status cache, with the payment's stored context so the adapter needs no
  memory; re-checks the callbacks waiting in the inbox;
- applies what the pull says: a final status ends the payment (unless the provider reports
  another amount than we asked: then `needs_reconciliation`); "pending" keeps it; "not found"
  within the provider's lookup grace is ambiguous; after the grace it means never processed only
  where the provider's docs say so (`MoneyTruth.not_found_is_final_after_grace`);
- once a payment is older than its provider's `pending_bound_s` it becomes
  `needs_reconciliation` with its reason and an event; the reconciler keeps pulling it (slowly),
  and an operator resolves it (`resolve_payment`, audited). It is never re-sent elsewhere;
- where a provider lists transactions by time (`list_transactions`), every `LIST_INTERVAL_S` it
  compares the provider's successful charges with the payments it holds and flags a charge
  with no payment (`unmatched_charge`), or pulls at once a payment the list shows succeeded.

On start, `recover()` turns what a crash left behind into work: the last attempt that may have
reached a provider says who holds the payment (`sending` means the request may have left), and
a payment that never reached any attempt was never sent, so it failed without a charge.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import anyio
from anyio.abc import TaskStatus
from pydantic import BaseModel

from mcp_autonomy.clock import Clock
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.payments import AttemptOutcome, PaymentRecord, PaymentStore
from mcp_autonomy.providers.base import ProviderTransaction, TransactionStatus
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.resilience.router import NoAnswer, PaymentRouter

logger = logging.getLogger(__name__)

RECONCILE_TICK_S = 5.0
"""How often due payments and inbox callbacks are looked at."""
FIRST_BACKOFF_S = 5.0
MAX_BACKOFF_S = 120.0
"""Pulls of a pending or unknown payment back off from 5 s, doubling, to at most 2 minutes."""
NEEDS_RECONCILIATION_BACKOFF_S = 900.0
"""A payment an operator must look at is still pulled every 15 minutes: the provider may answer."""
BATCH = 200
"""Payments (and callbacks) handled per tick at most; the rest wait for the next tick."""
LIST_INTERVAL_S = 300.0
LIST_OVERLAP_S = 600.0
"""Transaction lists are read every 5 minutes over the window since the last read, with 10
minutes of overlap (lists are eventually consistent too)."""
OPEN_STATUSES = (
    TransactionStatus.PENDING,
    TransactionStatus.UNKNOWN,
    TransactionStatus.NEEDS_OPERATOR_OTP,
    TransactionStatus.NEEDS_RECONCILIATION,
)
MAY_HOLD = (
    AttemptOutcome.SENDING,
    AttemptOutcome.ACCEPTED,
    AttemptOutcome.AMBIGUOUS,
    AttemptOutcome.RESOLVED_BY_STATUS,
)
"""Attempt outcomes after which the provider may hold the payment."""


class PaymentLocks:
    """One lock per payment in this process: a submit, a callback and a reconciler pull never
    write the same payment at once (each re-reads it under the lock)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    class _Held:
        def __init__(self, owner: PaymentLocks, key: str) -> None:
            self._owner, self._key = owner, key

        async def __aenter__(self) -> None:
            lock, users = self._owner._locks.get(self._key, (anyio.Lock(), 0))
            self._owner._locks[self._key] = (lock, users + 1)
            try:
                await lock.acquire()
            except BaseException:  # cancelled while waiting: no longer a user of the lock
                self._leave()
                raise

        async def __aexit__(self, *exc: object) -> None:
            self._owner._locks[self._key][0].release()
            self._leave()

        def _leave(self) -> None:
            lock, users = self._owner._locks[self._key]
            if users <= 1:
                del self._owner._locks[self._key]
            else:
                self._owner._locks[self._key] = (lock, users - 1)

    def is_held(self, key: str) -> bool:
        """True while some task holds or waits for `key` (a tick skips it rather than wait)."""
        return key in self._locks

    def hold(self, key: str) -> PaymentLocks._Held:
        """`async with locks.hold(key):` the payment `key` is this task's until the block ends."""
        return PaymentLocks._Held(self, key)


class TransactionLister(Protocol):
    """An adapter whose provider lists its transactions by time (Paystack, Flutterwave)."""

    async def list_transactions(
        self, since_epoch_s: float, until_epoch_s: float
    ) -> list[ProviderTransaction]:
        """Transactions created in the window."""
        ...


class ReconcileTick(BaseModel):
    """What one tick did."""

    pulled: int = 0
    finished: int = 0
    needs_reconciliation: int = 0
    callbacks_rechecked: int = 0
    unmatched_charges: int = 0


class PaymentReconciler:
    """Keeps pulling non-final payments until each is final or flagged (see the module docstring)."""

    def __init__(
        self,
        *,
        router: PaymentRouter,
        payments: PaymentStore,
        providers: ProviderRegistry,
        bus: EventBus,
        clock: Clock,
        locks: PaymentLocks,
        recheck_callbacks: Callable[[int], Any] | None = None,
        state: Any = None,
    ) -> None:
        self.router = router
        self.payments = payments
        self.providers = providers
        self.bus = bus
        self.clock = clock
        self.locks = locks
        self.recheck_callbacks = recheck_callbacks
        """Async `(limit) -> int` re-checking due inbox callbacks (set by the callback inbox)."""
        self._state = state  # the Store, for the list reconciliation's high-water marks
        self._last_listed_at: dict[str, float] = {}
        self._flagged: set[tuple[str, str]] = set()
        self.ticks = 0
        self.last_tick: ReconcileTick | None = None
        self.is_leader: Callable[[], bool] = lambda: True
        """Across replicas only the reconciler's leader pulls due payments (set by the system)."""

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Recover what a crash left, then tick forever."""
        recovered = await self.recover()
        if recovered:
            logger.info("reconciler: %d payment(s) left in flight by the last run will be pulled", recovered)
        task_status.started()
        while True:
            try:
                if self.is_leader():
                    await self.tick()
            except Exception:  # a failing pass must not stop the next one
                logger.exception("payment reconciliation failed")
            await self.clock.sleep(RECONCILE_TICK_S)

    async def recover(self) -> int:
        """Make every payment a crash left non-final due now; returns how many."""
        now = self.clock.now()
        count = 0
        for record in await self.payments.list_payments(statuses=OPEN_STATUSES, limit=1_000_000):
            async with self.locks.hold(record.idempotency_key):
                fresh = await self.payments.get_payment(record.idempotency_key)
                if fresh is None or fresh.status not in OPEN_STATUSES:
                    continue
                if fresh.provider is None:
                    holder = next((a for a in reversed(fresh.attempts) if a.outcome in MAY_HOLD), None)
                    if holder is None:
                        fresh.status = TransactionStatus.FAILED
                        fresh.status_reason = (
                            "never sent: the process stopped before any request left for a provider"
                        )
                        fresh.provider_message = "no provider received it, so nothing was charged"
                    else:
                        fresh.provider = holder.provider
                        fresh.reference = holder.reference
                        fresh.provider_reference = holder.provider_reference
                        fresh.status = (
                            TransactionStatus.PENDING
                            if holder.outcome is AttemptOutcome.ACCEPTED
                            else TransactionStatus.UNKNOWN
                        )
                        fresh.status_reason = (
                            f"the process stopped while this payment was at {holder.provider} "
                            f"(last attempt: {holder.outcome.value}); resolving by status, never by a resend"
                        )
                        if holder.outcome is AttemptOutcome.ACCEPTED:
                            fresh.accepted_at = holder.started_at
                fresh.next_check_at = now
                fresh.updated_at = now
                await self.payments.save_payment(fresh)
                count += 1
        return count

    # --- one tick ------------------------------------------------------------------------

    async def tick(self) -> ReconcileTick:
        """Pull due payments, re-check due callbacks, read transaction lists when due."""
        result = ReconcileTick()
        for record in await self.payments.due_for_check(self.clock.now(), BATCH):
            if self.locks.is_held(record.idempotency_key):
                continue  # being routed or confirmed right now; due again next tick
            before = record.status
            after = await self.pull(record.idempotency_key)
            if after is None:
                continue
            result.pulled += 1
            if after.status.is_final:
                result.finished += 1
            elif after.status is TransactionStatus.NEEDS_RECONCILIATION and before is not after.status:
                result.needs_reconciliation += 1
        if self.recheck_callbacks is not None:
            result.callbacks_rechecked = int(await self.recheck_callbacks(BATCH))
        result.unmatched_charges = await self._read_lists()
        self.ticks += 1
        self.last_tick = result
        return result

    async def pull(self, key: str, *, fresh: bool = False) -> PaymentRecord | None:
        """Pull one payment at its provider now and store what that says; returns the record."""
        async with self.locks.hold(key):
            record = await self.payments.get_payment(key)
            if record is None or record.status.is_final:
                return record
            if record.provider is None or record.reference is None:
                return record  # being routed right now (the submit holds it) or recovered next start
            context = record.context(await self.payments.identifiers(record.provider, record.reference))
            resolution = await self.router.query_status(
                record.provider, record.reference, record.provider_reference, context=context, fresh=fresh
            )
            await self.apply(record, resolution)
            return record

    async def apply(self, record: PaymentRecord, resolution: ProviderTransaction | NoAnswer) -> None:
        """Fold one pull's answer into `record` and store it (the caller holds its lock)."""
        assert record.provider is not None
        truth = self.router.money_truth(record.provider)
        now = self.clock.now()
        since = record.accepted_at or (
            record.attempts[-1].started_at if record.attempts else record.created_at
        )
        age_s = now - since
        record.checks += 1
        previous = record.status
        if isinstance(resolution, ProviderTransaction) and resolution.answer_by_callback:
            # Only asked: the provider posts its answer to the callback inbox.
            record.status_reason = record.status_reason or resolution.provider_message
        elif isinstance(resolution, ProviderTransaction):
            if resolution.money is not None and resolution.money != record.money:
                self._flag(
                    record,
                    f"{record.provider} reports {resolution.money.amount_minor} {resolution.money.currency} "
                    f"for this payment, but {record.money.amount_minor} {record.money.currency} was asked",
                )
            elif resolution.status.is_final:
                self._finish(record, resolution, via="status pull")
            elif resolution.status is TransactionStatus.NEEDS_OPERATOR_OTP:
                self.await_otp(record, resolution)
            elif resolution.status is TransactionStatus.PENDING:
                if record.status is TransactionStatus.UNKNOWN:
                    record.accepted_at = record.accepted_at or since
                record.status = (
                    record.status
                    if record.status is TransactionStatus.NEEDS_RECONCILIATION
                    else TransactionStatus.PENDING
                )
                record.provider_reference = resolution.provider_reference or record.provider_reference
            else:  # UNKNOWN: the provider cannot say, or cannot be asked about it (no pull path)
                record.status_reason = resolution.provider_message or record.status_reason
        elif resolution is NoAnswer.NOT_FOUND:
            if truth.not_found_is_final_after_grace and age_s >= truth.not_found_grace_s:
                record.status = TransactionStatus.FAILED
                record.status_reason = (
                    f"{record.provider} has no such transaction {age_s:.0f} s after it was sent (past its "
                    f"{truth.not_found_grace_s:g} s lookup grace): never processed, nothing charged"
                )
                record.provider_message = record.status_reason
            else:
                record.status_reason = (
                    f"{record.provider} does not show it ({age_s:.0f} s after sending); its lookups lag or its "
                    "'not found' does not prove it was never processed"
                )
        else:
            record.status_reason = record.status_reason or "the provider's status query did not answer"
        if not record.status.is_final:
            if (
                record.status
                not in (TransactionStatus.NEEDS_RECONCILIATION, TransactionStatus.NEEDS_OPERATOR_OTP)
                and age_s > truth.pending_bound_s
            ):
                self._flag(
                    record,
                    f"still {record.status.value} {age_s:.0f} s after it was sent, past {record.provider}'s "
                    f"bound of {truth.pending_bound_s:g} s ({record.status_reason or 'no final answer'})",
                )
            record.next_check_at = now + self._backoff_s(record)
        else:
            record.next_check_at = None
        record.updated_at = now
        await self.payments.save_payment(record)
        if record.status.is_final and previous is not record.status:
            self.bus.emit(
                EventType.PAYMENT_RECONCILED,
                component="reconciler",
                provider=record.provider,
                message=f"payment {record.idempotency_key} {previous.value} -> {record.status.value}",
                data={
                    "idempotency_key": record.idempotency_key,
                    "from": previous.value,
                    "to": record.status.value,
                    "checks": record.checks,
                    "age_s": round(age_s, 3),
                },
            )

    def _finish(self, record: PaymentRecord, txn: ProviderTransaction, *, via: str) -> None:
        if record.status.is_final and not (
            record.status is TransactionStatus.SUCCEEDED and txn.status is TransactionStatus.REVERSED
        ):
            return  # final is final (a reversal of a success is the one move after it)
        record.status = txn.status
        record.provider_reference = txn.provider_reference or record.provider_reference
        record.provider_code = txn.provider_code
        record.provider_message = txn.provider_message
        record.status_reason = f"final by {via}"
        self.observe_customer_outcome(record)

    def observe_customer_outcome(self, record: PaymentRecord) -> None:
        """Feed a payment's final outcome to the customer-error storm signal."""
        if record.provider is None or record.status not in (
            TransactionStatus.SUCCEEDED,
            TransactionStatus.FAILED,
        ):
            return
        codes: frozenset[str] = getattr(
            self.providers.get(record.provider).adapter, "customer_codes", frozenset()
        )
        customer = record.status is TransactionStatus.FAILED and record.provider_code in codes
        self.router.customer_errors.observe(
            record.provider, customer_failure=customer, payer=record.phone, code=record.provider_code
        )

    def await_otp(self, record: PaymentRecord, txn: ProviderTransaction) -> None:
        """The provider holds the transfer for the merchant's OTP: an operator submits it
        (`submit_transfer_otp`); it is never finalised automatically."""
        record.provider_reference = txn.provider_reference or record.provider_reference
        record.provider_message = txn.provider_message
        if record.status is not TransactionStatus.NEEDS_OPERATOR_OTP:
            self.router.hold_for_otp(record)

    async def submit_otp(self, key: str, otp: str) -> PaymentRecord:
        """Finalise a transfer held for the merchant's OTP (the OTP never leaves this call).

        Raises:
            KeyError: no such payment.
            ValueError: the payment is not waiting for an OTP, or its provider cannot take one.
            ProviderError: the provider refused (a wrong OTP is `invalid_request`).
        """
        async with self.locks.hold(key):
            record = await self.payments.get_payment(key)
            if record is None:
                raise KeyError(key)
            if record.status is not TransactionStatus.NEEDS_OPERATOR_OTP:
                raise ValueError(f"payment {key} is {record.status.value}, not waiting for an OTP")
            assert record.provider is not None and record.reference is not None
            finalize = getattr(self.providers.get(record.provider).adapter, "finalize_transfer", None)
            if finalize is None:
                raise ValueError(f"{record.provider} takes no OTP")
            context = record.context(await self.payments.identifiers(record.provider, record.reference))
            txn: ProviderTransaction = await finalize(context, otp)
            await self.payments.flush()
            if txn.status is not TransactionStatus.NEEDS_OPERATOR_OTP:
                # Released by the merchant now: its bound counts from here, and it is pulled.
                record.status = TransactionStatus.PENDING
                record.accepted_at = self.clock.now()
                record.checks = 0
            await self.apply(record, txn)
            return record

    def _flag(self, record: PaymentRecord, reason: str) -> None:
        record.status = TransactionStatus.NEEDS_RECONCILIATION
        record.status_reason = reason
        self.bus.emit(
            EventType.PAYMENT_NEEDS_RECONCILIATION,
            component="reconciler",
            provider=record.provider,
            severity=Severity.WARNING,
            message=f"payment {record.idempotency_key} needs reconciliation: {reason}",
            data={"idempotency_key": record.idempotency_key, "reason": reason, "provider": record.provider},
        )

    def _backoff_s(self, record: PaymentRecord) -> float:
        if record.status is TransactionStatus.NEEDS_RECONCILIATION:
            return NEEDS_RECONCILIATION_BACKOFF_S
        return float(min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** min(record.checks, 10)))

    # --- operator ------------------------------------------------------------------------

    async def resolve(
        self, key: str, outcome: TransactionStatus, *, reason: str, provider_reference: str | None = None
    ) -> PaymentRecord:
        """An operator's verdict on a payment whose outcome the engine could not establish.

        Raises:
            KeyError: no such payment.
            ValueError: the payment is final already, or `outcome` is not succeeded / failed.
        """
        if outcome not in (TransactionStatus.SUCCEEDED, TransactionStatus.FAILED):
            raise ValueError("outcome: succeeded or failed")
        async with self.locks.hold(key):
            record = await self.payments.get_payment(key)
            if record is None:
                raise KeyError(key)
            if record.status not in (TransactionStatus.NEEDS_RECONCILIATION, TransactionStatus.UNKNOWN):
                raise ValueError(
                    f"payment {key} is {record.status.value}: only needs_reconciliation or unknown payments "
                    "are resolved by hand"
                )
            previous = record.status
            record.status = outcome
            record.status_reason = f"resolved by an operator: {reason} (was {previous.value})"
            record.provider_reference = provider_reference or record.provider_reference
            record.next_check_at = None
            record.updated_at = self.clock.now()
            await self.payments.save_payment(record)
            if record.provider is not None and record.reference is not None:
                self.router.lane(record.provider).status_cache.forget(record.reference)
        self.bus.emit(
            EventType.PAYMENT_RESOLVED,
            component="operator",
            provider=record.provider,
            severity=Severity.WARNING,
            message=f"payment {key} resolved by hand: {previous.value} -> {outcome.value} ({reason})",
            data={"idempotency_key": key, "from": previous.value, "to": outcome.value, "reason": reason},
        )
        return record

    # --- transaction lists ---------------------------------------------------------------

    async def _read_lists(self) -> int:
        flagged = 0
        now = self.clock.now()
        for name in self.providers.names():
            adapter = self.providers.get(name).adapter
            lister = getattr(adapter, "list_transactions", None)
            if lister is None:
                continue
            last = self._last_listed_at.get(name)
            if last is not None and now - last < LIST_INTERVAL_S:
                continue
            since = (last if last is not None else now - LIST_INTERVAL_S) - LIST_OVERLAP_S
            try:
                transactions: list[ProviderTransaction] = await lister(since, now)
            except Exception as exc:  # a list that fails is read again next interval
                logger.info("%s: transaction list failed: %s", name, exc)
                continue
            self._last_listed_at[name] = now
            for txn in transactions:
                if txn.status is not TransactionStatus.SUCCEEDED:
                    continue
                ids = [i for i in (txn.reference, txn.provider_reference) if i]
                record = await self.payments.find_payment(name, *ids)
                if record is None:
                    if (name, txn.reference) in self._flagged:
                        continue
                    self._flagged.add((name, txn.reference))
                    flagged += 1
                    money = f"{txn.money.amount_minor} {txn.money.currency}" if txn.money else "an amount"
                    self.bus.emit(
                        EventType.UNMATCHED_CHARGE,
                        component="reconciler",
                        provider=name,
                        severity=Severity.WARNING,
                        message=f"{name} lists a successful charge of {money} (reference {txn.reference}) "
                        "that no payment here holds",
                        data={
                            "reference": txn.reference,
                            "provider_reference": txn.provider_reference,
                            "amount_minor": txn.money.amount_minor if txn.money else None,
                            "currency": txn.money.currency if txn.money else None,
                        },
                    )
                elif not record.status.is_final:
                    record.next_check_at = now
                    await self.payments.save_payment(record)
        return flagged

    # --- views ---------------------------------------------------------------------------

    async def oldest_open_age_s(self) -> dict[str, float]:
        """Per provider, the age in seconds of its oldest payment that is not final."""
        now = self.clock.now()
        return {
            p: round(max(0.0, now - created), 3) for p, created in (await self.payments.oldest_open()).items()
        }
