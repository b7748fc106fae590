"""The callback inbox: a provider's callback is a hint, confirmed by a fresh pull before it counts.

For each callback (`receive`):

1. The adapter parses it (`parse_callback`, pure) and verifies what its provider offers
   (Paystack's HMAC-SHA512 of the body, Flutterwave's `verif-hash`, IntaSend's `challenge`): a
   failed check is refused with 401, audited, with an event. A body that is not the provider's
   shape gets 400. An event that says nothing about a payment gets 200 and is not kept.
2. It is stored in the inbox (durable) before it is acknowledged; a repeat of the same body is
   kept as `duplicate`.
3. It is matched to a payment by our reference, the provider's reference, or any provider id
   learnt for it; no payment yet -> `unmatched`, kept and matched again later.
4. Its claims are compared with the stored request: another amount, currency, payer or operation
   is a contradiction -> `refused` (audited, with an event). The payment is untouched.
5. The provider is asked afresh (bypassing the status cache). A final answer that agrees confirms
   the callback and ends the payment with the *pull's* answer; a final answer that disagrees
   refuses the callback and the payment takes the pull's answer; "pending" or "not found" keeps
   the callback `pending` and it is re-checked with backoff (a pull that says pending is not a
   contradiction: lookups lag). A callback whose payment has since become final is confirmed if
   it agrees with that outcome, refused otherwise.

Where a provider's only pull is itself asynchronous (M-Pesa B2C: the Transaction Status API
answers by a second callback), that answer arrives here with `extras["channel"] ==
"status_query"` and counts as the pull only if this engine asked (a `status_query` id was learnt
for the payment); an unsolicited one is refused.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from mcp_autonomy.autonomy.reconciler import PaymentLocks, PaymentReconciler
from mcp_autonomy.clock import Clock
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.payments import (
    CallbackState,
    InboxCallback,
    PaymentRecord,
    PaymentStore,
    ProviderIdentifier,
)
from mcp_autonomy.providers.base import (
    CallbackAuthError,
    CallbackHint,
    CallbackSource,
    MalformedCallback,
    Operation,
    ProviderTransaction,
    TransactionStatus,
)
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.resilience.router import NoAnswer

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
"""A provider callback is a few KiB; anything larger is refused before it is parsed."""
STORED_BODY_CHARS = 16 * 1024
FIRST_RECHECK_S = 5.0
MAX_RECHECK_S = 300.0
UNMATCHED_GIVE_UP_CHECKS = 20
"""An unmatched callback is matched again this many times (about a day with backoff), then kept
as it is for an operator (`list_callbacks`)."""
ASYNC_PULL_CHANNEL = "status_query"
ASYNC_PULL_ID_KIND = "status_query"

AuditFn = Callable[..., Any]


class CallbackReceipt(BaseModel):
    """What the HTTP route answers, and what became of the callback."""

    http_status: int
    state: str
    detail: str
    callback_id: int | None = None


class CallbackInbox:
    """Receives, stores and confirms provider callbacks (see the module docstring)."""

    def __init__(
        self,
        *,
        payments: PaymentStore,
        providers: ProviderRegistry,
        reconciler: PaymentReconciler,
        locks: PaymentLocks,
        bus: EventBus,
        clock: Clock,
        audit: AuditFn | None = None,
    ) -> None:
        self.payments = payments
        self.providers = providers
        self.reconciler = reconciler
        self.router = reconciler.router
        self.locks = locks
        self.bus = bus
        self.clock = clock
        self.audit = audit
        """Called with keyword arguments like `Store.record_audit` for every refusal."""
        self.counters: dict[str, int] = {state.value: 0 for state in CallbackState}
        self.counters.update(rejected_auth=0, malformed=0, ignored=0)
        reconciler.recheck_callbacks = self.recheck_due

    # --- receiving -----------------------------------------------------------------------

    async def receive(
        self,
        provider: str,
        path_kind: str,
        path_reference: str | None,
        body: bytes,
        headers: Mapping[str, str],
        *,
        source: str = "callback",
    ) -> CallbackReceipt:
        """Handle one callback as received over HTTP; never raises for bad input."""
        if provider not in self.providers:
            return CallbackReceipt(http_status=404, state="rejected", detail="unknown provider")
        adapter = self.providers.get(provider).adapter
        if not isinstance(adapter, CallbackSource):
            return CallbackReceipt(http_status=404, state="rejected", detail=f"{provider} takes no callbacks")
        if len(body) > MAX_BODY_BYTES:
            self.counters["malformed"] += 1
            return CallbackReceipt(
                http_status=413, state="rejected", detail=f"body over {MAX_BODY_BYTES} bytes"
            )
        reference = None if path_reference in (None, "", "-") else path_reference
        try:
            hint = adapter.parse_callback(body, headers, path_kind=path_kind, path_reference=reference)
        except CallbackAuthError as exc:
            self.counters["rejected_auth"] += 1
            detail = f"signature check failed: {exc}"
            self._refusal_audit(provider, None, detail, source=source, path_kind=path_kind)
            self._refusal_event(provider, None, detail, callback_id=None)
            return CallbackReceipt(http_status=401, state="rejected", detail=detail)
        except MalformedCallback as exc:
            self.counters["malformed"] += 1
            logger.warning("%s callback refused as malformed: %s", provider, exc)
            return CallbackReceipt(http_status=400, state="rejected", detail=f"malformed: {exc}")
        except ValueError as exc:  # an adapter's own parsing error is still the sender's fault
            self.counters["malformed"] += 1
            logger.warning("%s callback refused: %s", provider, exc)
            return CallbackReceipt(http_status=400, state="rejected", detail=f"malformed: {exc}")
        if hint is None:
            self.counters["ignored"] += 1
            return CallbackReceipt(http_status=200, state="ignored", detail="an event about no payment")
        stored = await self.payments.add_callback(
            InboxCallback(
                provider=provider,
                path_kind=path_kind,
                received_at=self.clock.now(),
                hint=hint,
                # The path is part of what was delivered: MoMo and M-Pesa name the payment there,
                # so the same body at another path is another callback, not a repeat.
                body_sha256=hashlib.sha256(f"{path_kind}/{reference or '-'}\n".encode() + body).hexdigest(),
                body=body[:STORED_BODY_CHARS].decode("utf-8", errors="replace"),
            )
        )
        if stored.state is CallbackState.DUPLICATE:
            self.counters[CallbackState.DUPLICATE.value] += 1
            return CallbackReceipt(
                http_status=200, state=stored.state.value, detail=stored.detail, callback_id=stored.id
            )
        await self.process(stored)
        return CallbackReceipt(
            http_status=200, state=stored.state.value, detail=stored.detail, callback_id=stored.id
        )

    # --- confirming ----------------------------------------------------------------------

    async def process(self, callback: InboxCallback) -> None:
        """Match, compare and confirm one stored callback (its state is updated and stored)."""
        hint = callback.hint
        ids = [i for i in (hint.reference, hint.provider_reference) if i]
        record = await self.payments.find_payment(callback.provider, *ids) if ids else None
        now = self.clock.now()
        callback.checks += 1
        if record is None:
            callback.state = CallbackState.UNMATCHED
            callback.detail = (
                f"no payment at {callback.provider} for {', '.join(ids) or 'an id-less callback'} yet"
            )
            callback.next_check_at = (
                None if callback.checks >= UNMATCHED_GIVE_UP_CHECKS else now + self._backoff_s(callback)
            )
            await self._store(callback)
            return
        callback.idempotency_key = record.idempotency_key
        async with self.locks.hold(record.idempotency_key):
            fresh = await self.payments.get_payment(record.idempotency_key)
            assert fresh is not None
            await self._confirm(callback, fresh)

    async def _confirm(self, callback: InboxCallback, record: PaymentRecord) -> None:
        hint = callback.hint
        if hint.operation is Operation.REFUND and record.operation is not Operation.REFUND:
            # A refund's or reversal's own result: refunds are not payments here, so it is kept
            # for the record and changes nothing.
            callback.state = CallbackState.RECORDED
            callback.detail = f"a refund result ({hint.status.value}); the payment itself is unchanged"
            callback.next_check_at = None
            callback.resolved_at = self.clock.now()
            await self._store(callback)
            return
        contradiction = self._against_request(hint, record)
        if contradiction is not None:
            await self._refuse(callback, record, contradiction)
            return
        if record.status.is_final:
            await self._against_outcome(callback, record)
            return
        if record.provider is None or record.reference is None:
            self._keep(callback, "the payment is still being routed")
            await self._store(callback)
            return
        if hint.extras.get("channel") == ASYNC_PULL_CHANNEL:
            await self._async_pull_answer(callback, record)
            return
        resolution = await self._pull(record, hint)
        if isinstance(resolution, ProviderTransaction) and resolution.status.is_final:
            claimed_final = hint.status.is_final
            await self.reconciler.apply(record, resolution)
            if record.status is TransactionStatus.NEEDS_RECONCILIATION:
                await self._refuse(callback, record, record.status_reason or "the provider's record differs")
            elif claimed_final and hint.status is not resolution.status:
                await self._refuse(
                    callback,
                    record,
                    f"the callback claims {hint.status.value}, {record.provider} says {resolution.status.value}",
                )
            else:
                await self._accept(callback, record, f"confirmed by a status pull: {resolution.status.value}")
            return
        if resolution is not None and not isinstance(resolution, ProviderTransaction):
            why = f"its status pull says {resolution.value}"
        elif isinstance(resolution, ProviderTransaction):
            why = f"its status pull says {resolution.status.value}"
            if resolution.status is TransactionStatus.PENDING:
                await self.reconciler.apply(record, resolution)  # at least: accepted
        else:
            why = "no status pull"
        self._keep(callback, f"not confirmed yet: {why}")
        await self._store(callback)

    async def _pull(self, record: PaymentRecord, hint: CallbackHint) -> ProviderTransaction | NoAnswer:
        """A fresh pull of `record`; through the provider id the callback names when the payment has
        none yet (an M-Pesa push whose answer was lost carries its CheckoutRequestID only in the
        callback). That id is adopted only if a pull with it finds the payment: a forged id finds
        nothing and is never stored."""
        assert record.provider is not None and record.reference is not None
        identifiers = await self.payments.identifiers(record.provider, record.reference)
        candidate = hint.provider_reference
        if record.provider_reference is None and candidate:
            owner = await self.payments.find_payment(record.provider, candidate)
            if owner is None or owner.idempotency_key == record.idempotency_key:
                trial = record.context(identifiers)
                assert trial is not None
                trial = trial.model_copy(update={"provider_reference": candidate})
                found = await self.router.query_status(
                    record.provider, record.reference, candidate, context=trial, fresh=True
                )
                if (
                    isinstance(found, ProviderTransaction)
                    and not found.answer_by_callback
                    and found.status is not TransactionStatus.UNKNOWN
                ):
                    record.provider_reference = candidate
                    await self.payments.record_identifier(
                        ProviderIdentifier(
                            provider=record.provider,
                            kind="provider_reference",
                            value=candidate,
                            reference=record.reference,
                            idempotency_key=record.idempotency_key,
                            recorded_at=self.clock.now(),
                        )
                    )
                    await self.payments.save_payment(record)
                    return found
        return await self.router.query_status(
            record.provider,
            record.reference,
            record.provider_reference,
            context=record.context(identifiers),
            fresh=True,
        )

    async def _async_pull_answer(self, callback: InboxCallback, record: PaymentRecord) -> None:
        assert record.provider is not None and record.reference is not None
        asked = await self.payments.identifiers(record.provider, record.reference)
        if ASYNC_PULL_ID_KIND not in asked:
            await self._refuse(
                callback, record, "an unsolicited status-query result: this engine asked nothing"
            )
            return
        hint = callback.hint
        if hint.extras.get("query_result") in ("not_found", "error"):
            # The provider answered our query without an outcome: "not found" follows the
            # provider's grace rules, an error changes nothing.
            if hint.extras["query_result"] == "not_found":
                await self.reconciler.apply(record, NoAnswer.NOT_FOUND)
            await self._accept(
                callback, record, f"the status query this engine sent answered {hint.extras['query_result']}"
            )
            return
        txn = ProviderTransaction(
            provider=record.provider,
            reference=record.reference,
            provider_reference=hint.provider_reference or record.provider_reference,
            status=hint.status,
            money=hint.money,
            provider_code=hint.provider_code,
            provider_message=hint.provider_message,
            raw_status="status query result",
        )
        await self.reconciler.apply(record, txn)
        if record.status is TransactionStatus.NEEDS_RECONCILIATION:
            await self._refuse(callback, record, record.status_reason or "the result contradicts the request")
            return
        await self._accept(
            callback, record, f"the status query this engine sent answered {hint.status.value}"
        )
        # Result callbacks that waited for this answer are settled against it now.
        for waiting in await self.payments.list_callbacks(
            provider=callback.provider,
            states=(CallbackState.PENDING,),
            idempotency_key=record.idempotency_key,
        ):
            if waiting.id != callback.id:
                await self._confirm(waiting, record)

    async def _against_outcome(self, callback: InboxCallback, record: PaymentRecord) -> None:
        hint = callback.hint
        if not hint.status.is_final or hint.status is record.status:
            await self._accept(callback, record, f"agrees with the payment's outcome ({record.status.value})")
        else:
            await self._refuse(
                callback,
                record,
                f"the callback claims {hint.status.value}; the payment is {record.status.value} "
                f"(established by {record.status_reason or 'its provider'})",
            )

    @staticmethod
    def _against_request(hint: CallbackHint, record: PaymentRecord) -> str | None:
        """A claim that contradicts what was asked, or None."""
        refund = hint.operation is Operation.REFUND
        if hint.operation is not None and not refund and hint.operation is not record.operation:
            return f"the callback is for a {hint.operation.value}, the payment is a {record.operation.value}"
        if hint.money is not None and not refund and hint.money != record.money:
            return (
                f"the callback claims {hint.money.amount_minor} {hint.money.currency}, the payment asked "
                f"{record.money.amount_minor} {record.money.currency}"
            )
        if hint.payer is not None and hint.payer != record.phone:
            return "the callback names another payer than the payment's"
        return None

    # --- outcomes ------------------------------------------------------------------------

    def _keep(self, callback: InboxCallback, detail: str) -> None:
        callback.state = CallbackState.PENDING
        callback.detail = detail
        callback.next_check_at = self.clock.now() + self._backoff_s(callback)

    async def _accept(self, callback: InboxCallback, record: PaymentRecord, detail: str) -> None:
        callback.state = CallbackState.CONFIRMED
        callback.detail = detail
        callback.next_check_at = None
        callback.resolved_at = self.clock.now()
        await self._store(callback)
        self.bus.emit(
            EventType.CALLBACK_CONFIRMED,
            component="callbacks",
            provider=callback.provider,
            message=f"{callback.provider} callback #{callback.id} for {record.idempotency_key}: {detail}",
            data={
                "callback_id": callback.id,
                "idempotency_key": record.idempotency_key,
                "status": record.status.value,
            },
        )

    async def _refuse(self, callback: InboxCallback, record: PaymentRecord | None, detail: str) -> None:
        callback.state = CallbackState.REFUSED
        callback.detail = detail
        callback.next_check_at = None
        callback.resolved_at = self.clock.now()
        await self._store(callback)
        key = record.idempotency_key if record is not None else None
        self._refusal_audit(
            callback.provider,
            key,
            detail,
            source="callback",
            path_kind=callback.path_kind,
            callback_id=callback.id,
        )
        self._refusal_event(callback.provider, key, detail, callback_id=callback.id)

    def _refusal_audit(
        self,
        provider: str,
        key: str | None,
        detail: str,
        *,
        source: str,
        path_kind: str,
        callback_id: int | None = None,
    ) -> None:
        if self.audit is None:
            return
        self.audit(
            timestamp=self.clock.now(),
            tool="callback_refused",
            arguments={
                "provider": provider,
                "idempotency_key": key,
                "path_kind": path_kind,
                "callback_id": callback_id,
            },
            client=f"{source}:{provider}",
            reason=detail,
            ok=False,
            result={"refused": detail},
        )

    def _refusal_event(self, provider: str, key: str | None, detail: str, *, callback_id: int | None) -> None:
        self.counters[CallbackState.REFUSED.value] += 1
        self.bus.emit(
            EventType.CALLBACK_REFUSED,
            component="callbacks",
            provider=provider,
            severity=Severity.WARNING,
            message=f"{provider} callback refused" + (f" for {key}" if key else "") + f": {detail}",
            data={"callback_id": callback_id, "idempotency_key": key, "reason": detail},
        )

    async def _store(self, callback: InboxCallback) -> None:
        if callback.state is not CallbackState.REFUSED:
            self.counters[callback.state.value] = self.counters.get(callback.state.value, 0) + 1
        await self.payments.update_callback(callback)

    @staticmethod
    def _backoff_s(callback: InboxCallback) -> float:
        return float(min(MAX_RECHECK_S, FIRST_RECHECK_S * 2 ** min(callback.checks, 10)))

    # --- re-checking ---------------------------------------------------------------------

    async def recheck_due(self, limit: int) -> int:
        """Re-check pending and unmatched callbacks that are due; returns how many."""
        due = await self.payments.callbacks_due(self.clock.now(), limit)
        for callback in due:
            try:
                await self.process(callback)
            except Exception:  # one bad callback must not stop the others
                logger.exception("re-checking %s callback #%d failed", callback.provider, callback.id)
        return len(due)
