"""A scripted provider adapter for engine tests that need no HTTP (the outermost edge only).

Tests of the adapters themselves and of the server end to end use the real adapters against the
sandbox over HTTP; this one exists so the engine's own state machines can be driven exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import anyio

from mcp_autonomy.providers.base import (
    CallbackAuthError,
    CallbackHint,
    ErrorClass,
    MalformedCallback,
    Money,
    MoneyTruth,
    Operation,
    PaymentContext,
    PaymentRequest,
    ProbeResult,
    ProviderCapabilities,
    ProviderError,
    ProviderTransaction,
    TransactionStatus,
)

SCRIPTED_TRUTH = MoneyTruth(
    not_found_grace_s=0.0,
    not_found_is_final_after_grace=True,
    pending_bound_s=3600.0,
    pull_carries=frozenset({"status"}),
    callback_carries=frozenset(),
    pull_path="the script's ledger",
    sources=("a test double: its ledger is exact, so 'not found' is final at once",),
)
"""The scripted provider's money truth (replace `adapter.money_truth` to test grace periods)."""


class ScriptedAdapter:
    """Answers from a script: `probe_ok` decides probes; `behaviours` decides each collect/payout.

    Behaviours (consumed in order, then `default_behaviour`): "ok" (accepted, pending), "refuse"
    (connection refused: not processed), "invalid" (validation error), "hang_after_accept" (the
    charge is taken, then no answer), "ambiguous" (charge taken, reset mid-response), "auth"
    (token expired), "throttle" (HTTP 429: not processed, retry after 1 s), "customer" (a busy
    subscriber: the customer's error), "otp" (a transfer held for the merchant's OTP). `charges`
    is the provider-side ledger: reference -> times charged.
    """

    def __init__(self, name: str, currencies: frozenset[str] = frozenset({"KES"})) -> None:
        self.name = name
        self.capabilities = ProviderCapabilities(
            operations=frozenset({Operation.COLLECT, Operation.PAYOUT}),
            currencies=currencies,
            countries=frozenset({"KE"}),
        )
        self.probe_ok = True
        self.initialize_calls = 0
        self.probe_calls = 0
        self.closed = False
        self.fail_initialize = False
        self.behaviours: list[str] = []
        self.default_behaviour = "ok"
        self.status_fails = False
        self.charges: dict[str, int] = {}
        self.calls = 0
        self.status_calls = 0
        self.money_truth = SCRIPTED_TRUTH
        self.status_answers: dict[str, TransactionStatus] = {}
        """What a status pull says per reference (default: succeeded once charged)."""
        self.status_money: dict[str, Money] = {}
        """The amount a status pull reports per reference (default: none carried)."""
        self.status_codes: dict[str, str] = {}
        """The result code a status pull reports per reference (default: none)."""
        self.identifier_sink: Callable[[str, str, str], None] | None = None
        self.customer_codes = frozenset({"1037", "1032"})
        self.expected_otp = "123456"

    async def initialize(self) -> None:
        self.initialize_calls += 1
        if self.fail_initialize:
            raise ProviderError(self.name, ErrorClass.AUTH, "credentials rejected", code="401")

    async def refresh_credentials(self) -> None:
        await self.initialize()

    async def probe(self) -> ProbeResult:
        self.probe_calls += 1
        if self.probe_ok:
            return ProbeResult(ok=True, latency_ms=1.0, detail="ok")
        raise ProviderError(self.name, ErrorClass.NOT_PROCESSED, "connection refused")

    def reference_for(self, idempotency_key: str) -> str:
        return f"{self.name}-{idempotency_key}"

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        self.calls += 1
        behaviour = self.behaviours.pop(0) if self.behaviours else self.default_behaviour
        reference = self.reference_for(request.idempotency_key)
        if behaviour == "refuse":
            raise ProviderError(self.name, ErrorClass.NOT_PROCESSED, "connection refused")
        if behaviour == "customer":
            raise ProviderError(self.name, ErrorClass.CUSTOMER, "unable to lock subscriber", code="busy")
        if behaviour == "invalid":
            raise ProviderError(self.name, ErrorClass.INVALID_REQUEST, "bad phone", code="400.002.02")
        if behaviour == "auth":
            raise ProviderError(self.name, ErrorClass.AUTH, "token expired", code="404.001.03")
        if behaviour == "throttle":
            raise ProviderError(
                self.name, ErrorClass.RATE_LIMITED, "too many requests", code="429", retry_after_s=1.0
            )
        self.charges[reference] = self.charges.get(reference, 0) + 1
        if self.identifier_sink is not None:
            self.identifier_sink(reference, "scripted_id", f"S-{reference}")
        if behaviour == "hang_after_accept":
            await anyio.sleep_forever()
        if behaviour == "ambiguous":
            raise ProviderError(self.name, ErrorClass.AMBIGUOUS, "connection reset mid-response")
        if behaviour == "otp":
            self.status_answers[reference] = TransactionStatus.NEEDS_OPERATOR_OTP
            return self._txn(reference, request.money, TransactionStatus.NEEDS_OPERATOR_OTP)
        return self._txn(reference, request.money)

    async def finalize_transfer(self, context: PaymentContext, otp: str) -> ProviderTransaction:
        """Paystack-like: the right OTP releases the transfer; a wrong one is refused."""
        if otp != self.expected_otp:
            raise ProviderError(self.name, ErrorClass.INVALID_REQUEST, "the OTP is not valid")
        self.status_answers[context.reference] = TransactionStatus.SUCCEEDED
        return self._txn(context.reference, None, TransactionStatus.PENDING)

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        return await self.collect(request)

    async def status(
        self, reference: str, provider_reference: str | None = None, *, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        self.status_calls += 1
        if self.status_fails:
            raise ProviderError(self.name, ErrorClass.NOT_PROCESSED, "status endpoint down")
        if reference not in self.charges:
            raise ProviderError(self.name, ErrorClass.NOT_PROCESSED, "no such transaction", code="not_found")
        answer = self.status_answers.get(reference, TransactionStatus.SUCCEEDED)
        txn = self._txn(reference, self.status_money.get(reference), answer)
        return txn.model_copy(update={"provider_code": self.status_codes.get(reference)})

    def _txn(
        self, reference: str, money: Money | None, status: TransactionStatus = TransactionStatus.PENDING
    ) -> ProviderTransaction:
        return ProviderTransaction(
            provider=self.name,
            reference=reference,
            provider_reference=f"P-{reference}",
            status=status,
            money=money,
        )

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        raise NotImplementedError

    async def close(self) -> None:
        self.closed = True


class CallbackScriptedAdapter(ScriptedAdapter):
    """A scripted provider that also posts callbacks: JSON `{reference, status, amount_minor?,
    currency?, payer?, channel?}`; header `x-sig: bad` fails the signature check."""

    def parse_callback(
        self, body: bytes, headers: Mapping[str, str], *, path_kind: str, path_reference: str | None
    ) -> CallbackHint | None:
        if headers.get("x-sig") == "bad":
            raise CallbackAuthError("x-sig does not verify")
        try:
            data = json.loads(body)
        except ValueError:
            raise MalformedCallback("not JSON") from None
        if not isinstance(data, dict) or "status" not in data:
            raise MalformedCallback("status is missing")
        if data.get("event") == "ping":
            return None
        money = (
            Money(amount_minor=data["amount_minor"], currency=data.get("currency", "KES"))
            if "amount_minor" in data
            else None
        )
        return CallbackHint(
            provider=self.name,
            reference=data.get("reference") or path_reference,
            status=TransactionStatus(data["status"]),
            money=money,
            payer=data.get("payer"),
            extras={"channel": data["channel"]} if "channel" in data else {},
            authenticated=headers.get("x-sig") == "good",
        )
