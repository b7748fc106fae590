"""IntaSendAdapter against the IntaSend emulator over loopback HTTP, time driven by a manual clock."""

from __future__ import annotations

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
    ErrorClass,
    Money,
    Operation,
    PaymentRequest,
    ProviderAdapter,
    ProviderError,
    TransactionStatus,
)
from mcp_autonomy.providers.intasend import IntaSendAdapter, IntaSendSettings
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

        env.sandbox.faults.clear()
        with pytest.raises(ProviderError) as guarded:
            await env.adapter.collect(request)  # pushing again could charge twice
        assert (guarded.value.error_class, guarded.value.code) == (
            ErrorClass.AMBIGUOUS,
            "unresolved_previous_attempt",
        )
        await env.clock.advance(5)
        events = [record.body for record in env.sandbox.outbox.records("intasend")]
        assert [event["state"] for event in events] == ["PROCESSING", "COMPLETED"]
        assert events[-1]["api_ref"] == reference and events[-1]["challenge"] == "sandbox-challenge"
        assert env.adapter.ingest_webhook(events[-1]).status is TransactionStatus.SUCCEEDED
        resolved = await env.adapter.status(reference)  # the invoice id is known now: a real query
        assert (resolved.status, resolved.raw_status) == (TransactionStatus.SUCCEEDED, "COMPLETE")
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
        assert (done.status, done.provider_code, done.money) == (
            TransactionStatus.SUCCEEDED,
            "TS100",
            Money(amount_minor=50_000, currency="KES"),
        )
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
