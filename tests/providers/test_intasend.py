"""IntaSendAdapter against the IntaSend emulator over loopback HTTP, time driven by a manual clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.providers.base import (
    NOT_FOUND_CODE,
    CallbackAuthError,
    CallbackHint,
    CallbackSource,
    ErrorClass,
    MalformedCallback,
    Money,
    Operation,
    PaymentContext,
    PaymentRequest,
    ProviderAdapter,
    ProviderError,
    TransactionStatus,
)
from mcp_autonomy.providers.http import NO_SOURCE
from mcp_autonomy.providers.intasend import ERROR_RULES, IntaSendAdapter, IntaSendSettings
from mcp_autonomy.sandbox import (
    AcceptThenHangSpec,
    CredentialExpirySpec,
    CustomerBehavior,
    EndpointKind,
    LedgerStatus,
    OutageSpec,
    Sandbox,
    SandboxAddress,
    SandboxCredentials,
    ThrottleSpec,
    create_sandbox_app,
    sandbox_of,
    serve_sandbox,
)
from mcp_autonomy.sandbox import app as sandbox_app
from mcp_autonomy.sandbox.core import Realism
from mcp_autonomy.sandbox.intasend import IntaSendEmulator, IntaSendSandboxConfig

pytestmark = pytest.mark.anyio

TEST_DEADLINE_S = 30.0
"""Wall-clock bound on one test's body: real sockets are involved, a hang must fail, not stall."""
PHONE = "+254711000001"
OTHER_PHONE = "+254711000002"
SECRET = IntaSendSandboxConfig().secret_keys[0]
WEBHOOK_URL = "https://merchant.example.com/intasend/events"  # recorded by the sandbox, never called


@dataclass
class IntaSendEnv:
    """A running sandbox and an IntaSend adapter pointed at its gated port."""

    clock: ManualClock
    sandbox: Sandbox
    address: SandboxAddress
    adapter: IntaSendAdapter
    settings: IntaSendSettings

    def new_adapter(self, **overrides: Any) -> IntaSendAdapter:
        """Another adapter on the same sandbox, with some settings changed."""
        return IntaSendAdapter(
            intasend_settings(self.settings.base_url, **overrides), self.clock, timeout_s=2.0
        )


def intasend_settings(base_url: str, **overrides: Any) -> IntaSendSettings:
    values: dict[str, Any] = {
        "secret_key": SecretStr(SECRET),
        "public_key": IntaSendSandboxConfig().public_key,
        "base_url": base_url,
    }
    values.update(overrides)
    return IntaSendSettings(**values)


@asynccontextmanager
async def _intasend_env(
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    *,
    timeout_s: float = 2.0,
    config: IntaSendSandboxConfig | None = None,
    settings_loader: Callable[[], IntaSendSettings] | None = None,
    **overrides: Any,
) -> AsyncIterator[IntaSendEnv]:
    # Registered for this test only: the shared PROVIDERS map is owned by sandbox/app.py.
    monkeypatch.setitem(sandbox_app.PROVIDERS, "intasend", IntaSendEmulator)
    credentials = SandboxCredentials(intasend=config) if config else None
    app = create_sandbox_app(clock, seed=17, credentials=credentials, providers=["intasend"])
    with anyio.fail_after(TEST_DEADLINE_S):
        async with anyio.create_task_group() as tg:
            address: SandboxAddress = await tg.start(serve_sandbox, app)
            settings = intasend_settings(address.url("intasend"), **overrides)
            adapter = IntaSendAdapter(settings, clock, timeout_s=timeout_s, settings_loader=settings_loader)
            try:
                yield IntaSendEnv(clock, sandbox_of(app), address, adapter, settings)
            finally:
                await adapter.close()
                tg.cancel_scope.cancel()


Env = Callable[..., AbstractAsyncContextManager[IntaSendEnv]]


@pytest.fixture
def intasend_env(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Env:
    """`async with intasend_env(**setting_overrides) as env:`."""
    return partial(_intasend_env, clock, monkeypatch)


def context_for(
    request: PaymentRequest,
    *,
    identifiers: dict[str, str] | None = None,
    provider_reference: str | None = None,
) -> PaymentContext:
    """What the engine would hand `status()` after a restart: the stored request and learnt ids."""
    return PaymentContext(
        reference=IntaSendAdapter.reference_for(request.idempotency_key),
        operation=request.operation,
        money=request.money,
        phone=request.phone,
        country=request.country,
        provider_reference=provider_reference,
        identifiers=identifiers or {},
    )


class Sink:
    """The engine's durable identifier store, as the adapter sees it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, reference: str, kind: str, value: str) -> None:
        self.calls.append((reference, kind, value))

    def of(self, reference: str) -> dict[str, str]:
        return {kind: value for ref, kind, value in self.calls if ref == reference}


def kes(key: str, shillings: int = 150, phone: str = PHONE, **kw: Any) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=kw.pop("operation", Operation.COLLECT),
        money=Money(amount_minor=shillings * 100, currency="KES"),
        phone=phone,
        country=kw.pop("country", "KE"),
        description="order 42",
    )


async def test_stk_push_succeeds_end_to_end(intasend_env: Env) -> None:
    async with intasend_env() as env:
        assert isinstance(env.adapter, ProviderAdapter)
        await env.adapter.initialize()
        txn = await env.adapter.collect(kes("is-order-0001"))
        assert (txn.status, txn.raw_status) == (TransactionStatus.PENDING, "PENDING")
        assert txn.provider_reference is not None and len(txn.provider_reference) == 7
        assert txn.reference == IntaSendAdapter.reference_for("is-order-0001")
        await env.clock.advance(2.5)  # the prompt is on the phone
        assert (await env.adapter.status(txn.reference)).raw_status == "PROCESSING"
        await env.clock.advance(2.5)
        done = await env.adapter.status(txn.reference)
        assert (done.status, done.money) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=15_000, currency="KES"),
        )
        [entry] = env.sandbox.ledger.charges_for(PHONE)
        assert (entry.status, entry.reference) == (LedgerStatus.SUCCEEDED, txn.reference)


async def test_a_repeat_is_answered_from_the_known_invoice_never_pushed_again(intasend_env: Env) -> None:
    async with intasend_env() as env:
        first = await env.adapter.collect(kes("is-order-twice"))
        again = await env.adapter.collect(kes("is-order-twice"))  # IntaSend would push twice
        assert (again.provider_reference, again.status) == (
            first.provider_reference,
            TransactionStatus.PENDING,
        )
        assert env.sandbox.ledger.count_by_reference(first.reference) == 1


async def test_declined_and_ignored_pushes_fail_with_their_codes(intasend_env: Env) -> None:
    async with intasend_env() as env:
        env.sandbox.customers.set(CustomerBehavior(msisdn=PHONE, action="decline", delay_s=2))
        env.sandbox.customers.set(CustomerBehavior(msisdn=OTHER_PHONE, action="ignore"))
        declined = await env.adapter.collect(kes("is-order-decline"))
        ignored = await env.adapter.collect(kes("is-order-ignored", phone=OTHER_PHONE))
        await env.clock.advance(2)
        failed = await env.adapter.status(declined.reference)
        assert (failed.status, failed.provider_code) == (TransactionStatus.FAILED, "1032")
        assert failed.provider_message == "Request cancelled by user"
        await env.clock.advance(60)
        timed_out = await env.adapter.status(ignored.reference)
        assert (timed_out.status, timed_out.provider_code) == (TransactionStatus.FAILED, "1037")
        # Both are the customer's: the engine counts them toward a storm, never a breaker.
        assert {failed.provider_code, timed_out.provider_code} <= IntaSendAdapter.customer_codes


async def test_invalid_requests_locally_and_at_intasend(intasend_env: Env) -> None:
    async with intasend_env(public_key="ISPubKey_test_wrong") as env:
        with pytest.raises(ProviderError) as cents:
            await env.adapter.collect(
                kes("is-order-cents").model_copy(update={"money": Money(amount_minor=15_050, currency="KES")})
            )
        assert cents.value.error_class is ErrorClass.INVALID_REQUEST
        with pytest.raises(ProviderError) as foreign:
            await env.adapter.collect(kes("is-order-ug", phone="+256772000001", country="UG"))
        assert foreign.value.error_class is ErrorClass.INVALID_REQUEST
        with pytest.raises(ProviderError) as remote:
            await env.adapter.collect(kes("is-order-pubkey"))
        error = remote.value
        assert (error.error_class, error.http_status, error.code) == (
            ErrorClass.INVALID_REQUEST,
            400,
            "invalid",
        )
        assert error.provider_message == "stk push: public_key: Invalid public key."
        assert len(env.sandbox.ledger) == 0


async def test_wrong_secret_key_is_an_auth_error_and_never_leaks(intasend_env: Env) -> None:
    async with intasend_env(secret_key=SecretStr("ISSecretKey_test_wrong_83f1")) as env:
        with pytest.raises(ProviderError) as refused:
            await env.adapter.collect(kes("is-order-key"))
        assert (refused.value.error_class, refused.value.code) == (ErrorClass.AUTH, "authentication_failed")
        assert "ISSecretKey_test_wrong_83f1" not in str(refused.value)
        assert "ISSecretKey_test_wrong_83f1" not in repr(env.settings)
        with pytest.raises(ProviderError) as probe:
            await env.adapter.probe()
        assert probe.value.error_class is ErrorClass.AUTH


async def test_throttle_is_rate_limited_with_retry_after(intasend_env: Env) -> None:
    async with intasend_env() as env:
        env.sandbox.faults.add("intasend", ThrottleSpec(max_per_s=1, retry_after_s=7))
        await env.adapter.collect(kes("is-order-r1"))
        with pytest.raises(ProviderError) as limited:
            await env.adapter.collect(kes("is-order-r2", phone=OTHER_PHONE))
        error = limited.value
        assert (error.error_class, error.http_status, error.code, error.retry_after_s) == (
            ErrorClass.RATE_LIMITED,
            429,
            "throttled",
            7,
        )


async def test_refused_outage_is_not_processed_and_may_be_retried(intasend_env: Env) -> None:
    async with intasend_env() as env:
        env.sandbox.faults.add("intasend", OutageSpec(mode="refused"), end_s=10)
        await env.clock.advance(0)
        request = kes("is-order-down")
        with pytest.raises(ProviderError) as refused:
            await env.adapter.collect(request)
        assert (refused.value.error_class, refused.value.code) == (ErrorClass.NOT_PROCESSED, "ConnectError")
        await env.clock.advance(10)
        assert (
            await env.adapter.collect(request)
        ).status is TransactionStatus.PENDING  # certainly not sent before
        assert len(env.sandbox.ledger) == 1


async def test_accept_then_hang_is_never_pushed_twice_and_resolved_by_the_webhook(intasend_env: Env) -> None:
    async with intasend_env(timeout_s=0.3, config=IntaSendSandboxConfig(webhook_url=WEBHOOK_URL)) as env:
        env.sandbox.faults.add("intasend", AcceptThenHangSpec(), endpoints=[EndpointKind.COLLECT])
        request = kes("is-order-hang")
        with pytest.raises(ProviderError) as hung:
            await env.adapter.collect(request)
        assert (hung.value.error_class, hung.value.code) == (ErrorClass.AMBIGUOUS, "ReadTimeout")
        reference = IntaSendAdapter.reference_for(request.idempotency_key)
        unknown = await env.adapter.status(reference)  # no invoice id: IntaSend cannot be asked by api_ref
        assert (unknown.status, unknown.raw_status) == (TransactionStatus.UNKNOWN, "awaiting_webhook")
        assert "api_ref" in (unknown.provider_message or "")

        env.sandbox.faults.clear()
        with pytest.raises(ProviderError) as guarded:
            await env.adapter.collect(request)  # pushing again could charge twice
        assert (guarded.value.error_class, guarded.value.code) == (
            ErrorClass.AMBIGUOUS,
            "unresolved_previous_attempt",
        )
        await env.clock.advance(5)
        records = env.sandbox.outbox.records("intasend")
        events = [record.body for record in records]
        assert [event["state"] for event in events] == ["PROCESSING", "COMPLETED"]
        assert events[-1]["api_ref"] == reference and events[-1]["challenge"] == "sandbox-challenge"
        checking = env.new_adapter(webhook_challenge=SecretStr("sandbox-challenge"))
        claim = checking.parse_callback(
            records[-1].raw, records[-1].headers, path_kind="webhook", path_reference="-"
        )
        assert claim is not None and claim.authenticated
        assert (claim.status, claim.reference) == (TransactionStatus.SUCCEEDED, reference)
        # The webhook names the invoice: with it stored, IntaSend can be asked (a real pull).
        resolved = await checking.status(
            reference, context=context_for(request, provider_reference=claim.provider_reference)
        )
        assert (resolved.status, resolved.raw_status) == (TransactionStatus.SUCCEEDED, "COMPLETE")
        assert resolved.money == Money(amount_minor=15_000, currency="KES") and resolved.raw["payer"] == PHONE
        await checking.close()
        assert env.sandbox.ledger.count_by_reference(reference) == 1


async def test_rotated_secret_key_is_picked_up_on_refresh(intasend_env: Env) -> None:
    rotated = "ISSecretKey_test_rotated000000000000000000"
    current = {"key": SECRET}

    def load() -> IntaSendSettings:
        return intasend_settings(env.settings.base_url, secret_key=SecretStr(current["key"]))

    async with intasend_env(settings_loader=load) as env:
        await env.adapter.collect(kes("is-order-k1"))
        env.sandbox.faults.add("intasend", CredentialExpirySpec(replacement_secret=rotated))
        with pytest.raises(ProviderError) as revoked:
            await env.adapter.collect(kes("is-order-k2", phone=OTHER_PHONE))
        assert revoked.value.error_class is ErrorClass.AUTH
        current["key"] = rotated  # the operator rotates INTASEND_SECRET_KEY
        await env.adapter.refresh_credentials()
        assert (
            await env.adapter.collect(kes("is-order-k2", phone=OTHER_PHONE))
        ).status is TransactionStatus.PENDING
        assert len(env.sandbox.ledger) == 2


async def test_payout_initiates_approves_once_and_completes(intasend_env: Env) -> None:
    async with intasend_env() as env:
        env.sandbox.customers.set(CustomerBehavior(msisdn=OTHER_PHONE, payout_result_code="Invalid account"))
        request = kes("is-payout-0001", 500, operation=Operation.PAYOUT)
        txn = await env.adapter.payout(request)
        assert (txn.status, txn.raw_status) == (TransactionStatus.PENDING, "BP109/TP102")
        again = await env.adapter.payout(request)  # the batch is approved: report it, never a second
        assert again.provider_reference == txn.provider_reference
        failing = await env.adapter.payout(kes("is-payout-0002", 40, OTHER_PHONE, operation=Operation.PAYOUT))
        assert len(env.sandbox.ledger.entries(operation="payout")) == 2
        await env.clock.advance(3)
        fresh = env.new_adapter()  # knows only what the router stored: reference and tracking id
        done = await fresh.status(txn.reference, txn.provider_reference)
        assert (done.status, done.provider_code) == (TransactionStatus.SUCCEEDED, "TS100")
        # The send-money status names the item's amount but no currency: no Money is claimed.
        assert done.money is None and done.raw["transactions"][0]["amount"] == 500
        assert done.raw["payer"] == PHONE
        failed = await env.adapter.status(failing.reference)
        assert (failed.status, failed.provider_code) == (TransactionStatus.FAILED, "TF106")
        await fresh.close()


async def test_refund_by_chargeback_then_reversed(intasend_env: Env) -> None:
    async with intasend_env() as env:
        txn = await env.adapter.collect(kes("is-order-refund", 1_000))
        await env.clock.advance(5)
        paid = await env.adapter.status(txn.reference)
        part = await env.adapter.refund(paid, Money(amount_minor=40_000, currency="KES"))
        assert (part.status, part.raw_status) == (TransactionStatus.PENDING, "PENDING")
        repeat = await env.adapter.refund(paid, Money(amount_minor=40_000, currency="KES"))
        assert repeat.provider_reference == part.provider_reference  # no second chargeback
        await env.clock.advance(5)
        assert part.provider_reference is not None
        assert (
            await env.adapter.refund_status(part.provider_reference)
        ).status is TransactionStatus.SUCCEEDED
        await env.adapter.refund(paid, Money(amount_minor=60_000, currency="KES"))
        await env.clock.advance(5)
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.REVERSED
        assert env.sandbox.ledger.charges_for(PHONE)[0].status is LedgerStatus.REVERSED
        assert [r.amount_minor for r in env.sandbox.ledger.entries(operation="refund")] == [40_000, 60_000]


async def test_probe_and_status_not_found(intasend_env: Env) -> None:
    async with intasend_env() as env:
        result = await env.adapter.probe()
        assert result.ok and result.detail == "1 wallet(s)"
        with pytest.raises(ProviderError) as missing:
            await env.adapter.status("IS-never-sent", "NOSUCH1")
        assert (missing.value.error_class, missing.value.code) == (ErrorClass.NOT_PROCESSED, NOT_FOUND_CODE)
        env.sandbox.faults.add("intasend", OutageSpec(mode="503"), endpoints=[EndpointKind.PROBE])
        with pytest.raises(ProviderError) as down:
            await env.adapter.probe()
        assert (down.value.error_class, down.value.http_status) == (ErrorClass.NOT_PROCESSED, 503)


async def test_intasend_protocol_shapes(intasend_env: Env) -> None:
    """The emulator answers like IntaSend on the wire (what the adapter relies on)."""
    async with intasend_env() as env, httpx.AsyncClient(base_url=env.address.url("intasend")) as client:
        config = IntaSendSandboxConfig()
        anonymous = await client.get("/api/v1/wallets/")
        assert anonymous.status_code == 401
        assert anonymous.json() == {
            "type": "client_error",
            "errors": [
                {
                    "code": "not_authenticated",
                    "detail": "Authentication credentials were not provided.",
                    "attr": None,
                }
            ],
        }
        auth = {"Authorization": f"Bearer {SECRET}"}
        push = {
            "public_key": config.public_key,
            "currency": "KES",
            "method": "M-PESA",
            "amount": 10,
            "phone_number": "254711000009",
            "api_ref": "same-ref",
        }
        first = await client.post("/api/v1/payment/mpesa-stk-push/", json=push, headers=auth)
        second = await client.post("/api/v1/payment/mpesa-stk-push/", json=push, headers=auth)
        assert first.json()["invoice"]["invoice_id"] != second.json()["invoice"]["invoice_id"]  # no dedupe
        by_public_key = await client.post(
            "/api/v1/payment/status/",
            json={"invoice_id": first.json()["invoice"]["invoice_id"], "public_key": config.public_key},
        )
        assert by_public_key.json()["invoice"]["state"] == "PENDING"
        batch = await client.post(
            "/api/v1/send-money/initiate/",
            json={
                "provider": "MPESA-B2C",
                "currency": "KES",
                "transactions": [{"name": "x", "account": "254711000009", "amount": 10}],
            },
            headers=auth,
        )
        assert (batch.json()["status"], batch.json()["status_code"]) == ("Preview and approve", "BP103")
        assert (
            await client.post("/api/v1/send-money/approve/", json=batch.json(), headers=auth)
        ).status_code == 200
        twice = await client.post("/api/v1/send-money/approve/", json=batch.json(), headers=auth)
        assert (twice.status_code, twice.json()["errors"][0]["detail"]) == (400, "Request already approved.")


# --- lifecycle, identifiers, status with no memory --------------------------------------------


async def test_initialize_drops_the_probe_cache(intasend_env: Env) -> None:
    async with intasend_env(probe_min_interval_s=3600) as env:
        await env.adapter.probe()
        assert (await env.adapter.probe()).detail.endswith("(cached)")
        env.sandbox.faults.add("intasend", OutageSpec(mode="503"), endpoints=[EndpointKind.PROBE])
        assert (await env.adapter.probe()).detail.endswith("(cached)")  # the cache hides the outage
        await env.adapter.initialize()  # a heal: the next probe must reach IntaSend
        with pytest.raises(ProviderError) as down:
            await env.adapter.probe()
        assert down.value.http_status == 503


async def test_ids_reach_the_sink_before_the_call_returns(intasend_env: Env) -> None:
    async with intasend_env() as env:
        sink = Sink()
        env.adapter.identifier_sink = sink
        assert isinstance(env.adapter, CallbackSource)
        txn = await env.adapter.collect(kes("is-order-sink"))
        assert sink.of(txn.reference)["invoice_id"] == txn.provider_reference
        assert "push_id" in sink.of(txn.reference)
        payout = await env.adapter.payout(kes("is-payout-sink", 100, OTHER_PHONE, operation=Operation.PAYOUT))
        assert sink.of(payout.reference) == {"tracking_id": payout.provider_reference}


async def test_the_tracking_id_is_reported_even_when_the_approval_fails(intasend_env: Env) -> None:
    async with intasend_env() as env:
        sink = Sink()
        env.adapter.identifier_sink = sink
        # One payout call per second: initiate goes through, the approval right after is throttled.
        env.sandbox.faults.add(
            "intasend", ThrottleSpec(max_per_s=1, retry_after_s=1), endpoints=[EndpointKind.PAYOUT]
        )
        request = kes("is-payout-midway", 100, operation=Operation.PAYOUT)
        with pytest.raises(ProviderError) as throttled:
            await env.adapter.payout(request)
        assert throttled.value.error_class is ErrorClass.RATE_LIMITED
        reference = IntaSendAdapter.reference_for(request.idempotency_key)
        tracking_id = sink.of(reference)["tracking_id"]
        assert env.sandbox.ledger.entries(operation="payout") == []  # initiated, not approved: no money
        fresh = env.new_adapter()
        waiting = await fresh.status(reference, context=context_for(request, identifiers=sink.of(reference)))
        assert (waiting.status, waiting.provider_reference, waiting.raw_status) == (
            TransactionStatus.PENDING,
            tracking_id,
            "BP103/TP101",
        )
        await fresh.close()


async def test_status_from_a_fresh_adapter_for_collect_and_payout(intasend_env: Env) -> None:
    async with intasend_env() as env:
        sink = Sink()
        env.adapter.identifier_sink = sink
        collect = kes("is-order-fresh")
        payout = kes("is-payout-fresh", 300, OTHER_PHONE, operation=Operation.PAYOUT)
        collected = await env.adapter.collect(collect)
        paid_out = await env.adapter.payout(payout)
        await env.adapter.close()

        fresh = env.new_adapter()  # knows only what the engine stored
        collect_context = context_for(collect, identifiers=sink.of(collected.reference))
        payout_context = context_for(payout, identifiers=sink.of(paid_out.reference))
        pending = await fresh.status(collected.reference, context=collect_context)
        assert (pending.status, pending.provider_reference) == (
            TransactionStatus.PENDING,
            collected.provider_reference,
        )
        assert pending.money == Money(
            amount_minor=15_000, currency="KES"
        )  # the status carries value + currency
        assert pending.raw["payer"] == PHONE
        sending = await fresh.status(paid_out.reference, context=payout_context)
        assert (sending.status, sending.raw_status) == (TransactionStatus.PENDING, "BP109/TP102")

        await env.clock.advance(5)
        done = await env.new_adapter().status(collected.reference, context=collect_context)
        assert (done.status, done.raw["mpesa_reference"]) == (
            TransactionStatus.SUCCEEDED,
            env.sandbox.ledger.charges_for(PHONE)[0].receipt,
        )
        sent = await env.new_adapter().status(paid_out.reference, context=payout_context)
        assert (sent.status, sent.provider_code, sent.raw["payer"]) == (
            TransactionStatus.SUCCEEDED,
            "TS100",
            OTHER_PHONE,
        )
        await fresh.close()


async def test_a_push_without_an_invoice_id_has_no_pull_path(intasend_env: Env) -> None:
    async with intasend_env() as env:
        request = kes("is-order-never-answered")
        unknown = await env.adapter.status(
            IntaSendAdapter.reference_for(request.idempotency_key), context=context_for(request)
        )
        assert (unknown.status, unknown.raw_status) == (TransactionStatus.UNKNOWN, "no_invoice_id")
        assert "api_ref" in (unknown.provider_message or "")


async def test_lookups_lag_acceptance_then_find_it(intasend_env: Env) -> None:
    async with intasend_env() as env:
        env.sandbox.outbox.realism.set(Realism(lookup_lag_s=2), "intasend")
        txn = await env.adapter.collect(kes("is-order-lag"))
        payout = await env.adapter.payout(kes("is-payout-lag", 100, OTHER_PHONE, operation=Operation.PAYOUT))
        for reference in (txn.reference, payout.reference):
            with pytest.raises(ProviderError) as lagging:
                await env.adapter.status(reference)
            assert (lagging.value.code, lagging.value.error_class) == (
                NOT_FOUND_CODE,
                ErrorClass.NOT_PROCESSED,
            )
        await env.clock.advance(2)
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.PENDING
        assert (await env.adapter.status(payout.reference)).status is TransactionStatus.PENDING


# --- parse_callback ---------------------------------------------------------------------------


def parsing_adapter(challenge: str | None = "testnet") -> IntaSendAdapter:
    settings = intasend_settings(
        "http://127.0.0.1:9", webhook_challenge=SecretStr(challenge) if challenge is not None else None
    )
    return IntaSendAdapter(settings, ManualClock())


COLLECTION_EVENT = {  # IntaSend's documented collection event, for an M-Pesa payment
    "invoice_id": "BRZKGPR",
    "state": "COMPLETED",
    "provider": "M-PESA",
    "charges": "0.00",
    "net_amount": "10.36",
    "currency": "KES",
    "value": "10.36",
    "account": "254708374149",
    "api_ref": "IS-0123456789abcdef0123456789abc",
    "mpesa_reference": "QHJ3K4L5M6",
    "host": "https://sandbox.intasend.com",
    "failed_reason": None,
    "failed_code": None,
    "failed_code_link": "https://intasend.com/troubleshooting",
    "created_at": "2021-08-18T12:33:50.425886+03:00",
    "updated_at": "2021-08-18T12:33:51.304105+03:00",
    "challenge": "testnet",
}


def webhook(adapter: IntaSendAdapter, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return adapter.parse_callback(raw, {}, path_kind="webhook", path_reference="-")


def test_parse_a_genuine_collection_webhook() -> None:
    adapter = parsing_adapter()
    parsed = webhook(adapter, COLLECTION_EVENT)
    assert parsed == CallbackHint(
        provider="intasend",
        reference="IS-0123456789abcdef0123456789abc",
        provider_reference="BRZKGPR",
        operation=Operation.COLLECT,
        status=TransactionStatus.SUCCEEDED,
        money=Money(amount_minor=1_036, currency="KES"),
        payer="+254708374149",
        provider_code="COMPLETED",
        provider_message="COMPLETED",
        extras={"channel": "webhook", "event": "collection", "state": "COMPLETED", "receipt": "QHJ3K4L5M6"},
        authenticated=True,
    )
    assert webhook(adapter, COLLECTION_EVENT) == parsed  # pure: a duplicate parses the same
    unchecked = webhook(parsing_adapter(challenge=None), COLLECTION_EVENT)
    assert unchecked.authenticated is False and unchecked.status is TransactionStatus.SUCCEEDED


@pytest.mark.parametrize("challenge", ["guessed", None, 12345])
def test_a_forged_webhook_is_refused(challenge: Any) -> None:
    forged = {k: v for k, v in COLLECTION_EVENT.items() if k != "challenge"}
    if challenge is not None:
        forged["challenge"] = challenge
    with pytest.raises(CallbackAuthError, match="challenge") as refused:
        webhook(parsing_adapter(), forged)
    assert "testnet" not in str(refused.value)  # the secret never appears in the error


def test_a_mismatched_amount_is_carried_faithfully() -> None:
    parsed = webhook(parsing_adapter(), {**COLLECTION_EVENT, "value": "99999.00"})
    assert parsed.money == Money(amount_minor=9_999_900, currency="KES")


def test_a_failed_collection_webhook() -> None:
    failed = {
        **COLLECTION_EVENT,
        "state": "FAILED",
        "failed_code": "1032",
        "failed_reason": "Request cancelled by user",
    }
    parsed = webhook(parsing_adapter(), failed)
    assert (parsed.status, parsed.provider_code, parsed.provider_message) == (
        TransactionStatus.FAILED,
        "1032",
        "Request cancelled by user",
    )


def test_parse_send_money_and_chargeback_webhooks() -> None:
    send_money = {  # IntaSend's documented send-money event
        "tracking_id": "7e96bc5c-191c-40bd-94f2-be4a0226c69c",
        "status": "Completed",
        "transactions": [
            {
                "status": "Successful",
                "request_reference_id": "66aa1c24-a698-409f-9372-3ea55dc32af8",
                "provider": "MPESA-B2C",
                "name": "John Doe",
                "account": 254708374149,
                "amount": "100.00",
                "narrative": "Webhook test",
            }
        ],
        "actual_charges": 0,
        "paid_amount": 100,
        "failed_amount": 0,
        "challenge": "testnet",
    }
    payout = webhook(parsing_adapter(), send_money)
    assert (payout.operation, payout.status, payout.provider_reference) == (
        Operation.PAYOUT,
        TransactionStatus.SUCCEEDED,
        "7e96bc5c-191c-40bd-94f2-be4a0226c69c",
    )
    assert (payout.payer, payout.money, payout.reference) == (
        "+254708374149",
        None,
        None,
    )  # no currency named
    chargeback = {  # IntaSend's documented chargeback event (trimmed)
        "chargeback_id": "VYBBVY4",
        "invoice": {
            "invoice_id": "VQ3X4OY",
            "state": "COMPLETE",
            "currency": "KES",
            "value": "103.63",
            "api_ref": "IS-x",
        },
        "amount": "103.63",
        "reason": "Unavailable service",
        "status": "COMPLETED",
        "resolution": None,
        "challenge": "testnet",
    }
    refund = webhook(parsing_adapter(), chargeback)
    assert (refund.operation, refund.status, refund.reference, refund.money) == (
        Operation.REFUND,
        TransactionStatus.SUCCEEDED,
        "IS-x",
        Money(amount_minor=10_363, currency="KES"),
    )
    assert refund.extras["invoice_id"] == "VQ3X4OY"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b'["invoice_id"]', "not a JSON object"),
        ({"invoice_id": "BRZKGPR", "challenge": "testnet"}, "state is missing"),
        ({"state": "COMPLETED", "challenge": "testnet"}, "invoice_id is missing"),
        ({"tracking_id": "x", "challenge": "testnet"}, "status is missing"),
        ({"chargeback_id": "x", "challenge": "testnet"}, "status is missing"),
        ({**COLLECTION_EVENT, "value": "ten"}, "not an amount"),
    ],
)
def test_malformed_webhooks(body: Any, complaint: str) -> None:
    with pytest.raises(MalformedCallback, match=complaint):
        webhook(parsing_adapter(), body)


def test_unrelated_and_shapeless_webhooks() -> None:
    assert webhook(parsing_adapter(), {"event": "wallet.updated", "challenge": "testnet"}) is None
    with pytest.raises(MalformedCallback, match="expected an invoice"):
        webhook(parsing_adapter(challenge=None), {"hello": "world"})


def test_money_truth_is_declared() -> None:
    truth = IntaSendAdapter.money_truth
    assert truth.callback_auth == "shared_secret"
    assert {"status", "amount", "currency", "payer"} <= truth.pull_carries
    assert not truth.not_found_is_final_after_grace and truth.sources


# --- the classification table ------------------------------------------------------------------------


def scripted(clock: ManualClock, answer: httpx.Response) -> IntaSendAdapter:
    return IntaSendAdapter(
        intasend_settings("http://intasend.invalid"), clock, transport=httpx.MockTransport(lambda _: answer)
    )


STATUS_RULES = [rule for rule in ERROR_RULES if rule.match.startswith("HTTP ") and rule.match[5:].isdigit()]


@pytest.mark.parametrize("rule", STATUS_RULES, ids=lambda rule: rule.match)
async def test_every_status_rule_classifies_a_push(clock: ManualClock, rule: Any) -> None:
    status = int(rule.match.removeprefix("HTTP "))
    adapter = scripted(clock, httpx.Response(status, json={"detail": "IntaSend said so"}))
    with pytest.raises(ProviderError) as refused:
        await adapter.collect(kes("is-order-rule"))
    assert refused.value.error_class is rule.error_class
    await adapter.close()


async def test_a_503_on_a_push_stays_ambiguous_and_is_never_pushed_again(clock: ManualClock) -> None:
    adapter = scripted(clock, httpx.Response(503, json={"detail": "offline for maintenance"}))
    with pytest.raises(ProviderError) as unavailable:
        await adapter.collect(kes("is-order-503"))
    assert unavailable.value.error_class is ErrorClass.AMBIGUOUS
    with pytest.raises(ProviderError) as again:
        await adapter.collect(kes("is-order-503"))
    assert (again.value.error_class, again.value.code) == (
        ErrorClass.AMBIGUOUS,
        "unresolved_previous_attempt",
    )
    await adapter.close()


def test_error_rules_cite_their_sources() -> None:
    matches = [rule.match for rule in IntaSendAdapter.error_rules]
    assert len(matches) == len(set(matches))
    for rule in IntaSendAdapter.error_rules:
        assert rule.source.strip(), rule.match
        if rule.error_class is ErrorClass.NOT_PROCESSED:
            assert not rule.source.startswith(NO_SOURCE), rule.match
    by_match = {rule.match: rule for rule in IntaSendAdapter.error_rules}
    assert by_match["HTTP 503"].source.startswith(NO_SOURCE)  # ambiguous for lack of a source
    assert {"1032", "1037", "1", "2001"} <= IntaSendAdapter.customer_codes
