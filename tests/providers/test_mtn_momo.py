"""MtnMomoAdapter against the MoMo emulator over loopback HTTP, time driven by a manual clock."""

from __future__ import annotations

import base64
import json
import uuid
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
    CallbackSource,
    ErrorClass,
    MalformedCallback,
    Money,
    Operation,
    PaymentContext,
    PaymentRequest,
    ProviderAdapter,
    ProviderError,
    ProviderTransaction,
    TransactionStatus,
)
from mcp_autonomy.providers.http import NO_SOURCE
from mcp_autonomy.providers.mtn_momo import (
    ERROR_RULES,
    MtnMomoAdapter,
    MtnMomoSettings,
    amount_text,
    capabilities_for,
    money_of,
)
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
from mcp_autonomy.sandbox.mtn_momo import MtnMomoEmulator, MtnMomoSandboxConfig

pytestmark = pytest.mark.anyio

TEST_DEADLINE_S = 30.0
"""Wall-clock bound on one test's body: real sockets are involved, a hang must fail, not stall."""
PHONE = "+256772000001"
OTHER_PHONE = "+256772000002"


@dataclass
class MomoEnv:
    """A running sandbox and a MoMo adapter pointed at its gated port."""

    clock: ManualClock
    sandbox: Sandbox
    address: SandboxAddress
    adapter: MtnMomoAdapter
    settings: MtnMomoSettings

    @property
    def emulator(self) -> MtnMomoEmulator:
        emulator = self.sandbox.emulators["mtn_momo"]
        assert isinstance(emulator, MtnMomoEmulator)
        return emulator

    def new_adapter(self, **overrides: Any) -> MtnMomoAdapter:
        """Another adapter on the same sandbox, with some settings changed."""
        return MtnMomoAdapter(momo_settings(self.settings.base_url, **overrides), self.clock, timeout_s=2.0)


def momo_settings(base_url: str, **overrides: Any) -> MtnMomoSettings:
    config = MtnMomoSandboxConfig()
    values: dict[str, Any] = {
        "api_user": config.api_user,
        "api_key": SecretStr(config.api_key),
        "collection_subscription_key": SecretStr(config.collection_subscription_key),
        "disbursement_subscription_key": SecretStr(config.disbursement_subscription_key),
        "base_url": base_url,
        "probe_min_interval_s": 30.0,
    }
    values.update(overrides)
    return MtnMomoSettings(**values)


@asynccontextmanager
async def _momo_env(
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    *,
    timeout_s: float = 2.0,
    config: MtnMomoSandboxConfig | None = None,
    **overrides: Any,
) -> AsyncIterator[MomoEnv]:
    # Registered for this test only: the shared PROVIDERS map is owned by sandbox/app.py.
    monkeypatch.setitem(sandbox_app.PROVIDERS, "mtn_momo", MtnMomoEmulator)
    credentials = SandboxCredentials(mtn_momo=config) if config else None
    app = create_sandbox_app(clock, seed=11, credentials=credentials, providers=["mtn_momo"])
    with anyio.fail_after(TEST_DEADLINE_S):
        async with anyio.create_task_group() as tg:
            address: SandboxAddress = await tg.start(serve_sandbox, app)
            settings = momo_settings(address.url("mtn_momo"), **overrides)
            adapter = MtnMomoAdapter(settings, clock, timeout_s=timeout_s)
            try:
                yield MomoEnv(clock, sandbox_of(app), address, adapter, settings)
            finally:
                await adapter.close()
                tg.cancel_scope.cancel()


Env = Callable[..., AbstractAsyncContextManager[MomoEnv]]


@pytest.fixture
def momo_env(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Env:
    """`async with momo_env(**setting_overrides) as env:`."""
    return partial(_momo_env, clock, monkeypatch)


def eur(key: str, amount_minor: int = 1_050, phone: str = PHONE, **kw: Any) -> PaymentRequest:
    operation = kw.pop("operation", Operation.COLLECT)
    return PaymentRequest(
        idempotency_key=key,
        operation=operation,
        money=Money(amount_minor=amount_minor, currency="EUR"),
        phone=phone,
        country="UG",
        description=kw.pop("description", "order 42"),
    )


async def test_collect_succeeds_end_to_end_with_a_token_per_product(momo_env: Env) -> None:
    async with momo_env() as env:
        assert isinstance(env.adapter, ProviderAdapter)
        await env.adapter.initialize()
        assert env.emulator.tokens_issued == {"collection": 1, "disbursement": 1}

        txn = await env.adapter.collect(eur("momo-order-0001"))
        assert (txn.status, txn.raw_status) == (TransactionStatus.PENDING, "accepted")
        assert uuid.UUID(txn.reference).version == 4
        assert txn.reference == MtnMomoAdapter.reference_for("momo-order-0001")

        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.PENDING
        await env.clock.advance(5)  # the customer approves
        done = await env.adapter.status(txn.reference)
        assert (done.status, done.raw_status) == (TransactionStatus.SUCCEEDED, "SUCCESSFUL")
        assert done.money == Money(amount_minor=1_050, currency="EUR")
        assert done.raw.get("financialTransactionId")
        [entry] = env.sandbox.ledger.charges_for(PHONE)
        assert (entry.status, entry.amount_minor, entry.reference) == (
            LedgerStatus.SUCCEEDED,
            1_050,
            txn.reference,
        )
        assert env.emulator.tokens_issued == {"collection": 1, "disbursement": 1}


async def test_declined_and_expired_requests_fail_with_their_reason(momo_env: Env) -> None:
    async with momo_env() as env:
        env.sandbox.customers.set(CustomerBehavior(msisdn=PHONE, action="decline", delay_s=2))
        env.sandbox.customers.set(CustomerBehavior(msisdn=OTHER_PHONE, action="ignore"))
        declined = await env.adapter.collect(eur("momo-order-decline"))
        ignored = await env.adapter.collect(eur("momo-order-ignore", phone=OTHER_PHONE))
        await env.clock.advance(2)
        failed = await env.adapter.status(declined.reference)
        assert (failed.status, failed.provider_code) == (TransactionStatus.FAILED, "APPROVAL_REJECTED")
        assert failed.provider_code in MtnMomoAdapter.customer_codes
        assert (await env.adapter.status(ignored.reference)).status is TransactionStatus.PENDING
        await env.clock.advance(300)
        expired = await env.adapter.status(ignored.reference)
        assert (expired.status, expired.provider_code) == (TransactionStatus.FAILED, "EXPIRED")
        assert expired.provider_code in MtnMomoAdapter.customer_codes
        assert env.sandbox.ledger.successful_charges_for(PHONE) == []


async def test_a_resend_meets_409_and_is_answered_with_the_first_request(momo_env: Env) -> None:
    async with momo_env() as env:
        first = await env.adapter.collect(eur("momo-order-twice"))
        again = await env.adapter.collect(eur("momo-order-twice"))  # 409 RESOURCE_ALREADY_EXIST
        assert (again.reference, again.status, again.raw_status) == (
            first.reference,
            TransactionStatus.PENDING,
            "PENDING",
        )
        with pytest.raises(ProviderError) as different:
            await env.adapter.collect(eur("momo-order-twice", amount_minor=9_999))
        assert (different.value.error_class, different.value.code) == (
            ErrorClass.INVALID_REQUEST,
            "RESOURCE_ALREADY_EXIST",
        )
        assert env.sandbox.ledger.count_by_reference(first.reference) == 1


async def test_invalid_requests_locally_and_at_momo(momo_env: Env) -> None:
    async with momo_env() as env:
        ugx = eur("momo-order-ugx").model_copy(update={"money": Money(amount_minor=1_500, currency="UGX")})
        with pytest.raises(ProviderError) as currency:
            await env.adapter.collect(ugx)  # the sandbox environment takes EUR only
        assert currency.value.error_class is ErrorClass.INVALID_REQUEST
        with pytest.raises(ProviderError) as remote:
            await env.adapter.collect(eur("momo-order-quote", description="don't"))
        error = remote.value  # MoMo refuses apostrophes in notes with a 400
        assert (error.error_class, error.http_status, error.code) == (
            ErrorClass.INVALID_REQUEST,
            400,
            "BAD_REQUEST",
        )
        assert len(env.sandbox.ledger) == 0


async def test_wrong_api_key_and_wrong_subscription_key_are_auth_errors(momo_env: Env) -> None:
    async with momo_env() as env:
        wrong_key = env.new_adapter(api_key=SecretStr("not-the-api-key-41c9"))
        with pytest.raises(ProviderError) as login:
            await wrong_key.initialize()
        assert (login.value.error_class, login.value.code, login.value.http_status) == (
            ErrorClass.AUTH,
            "login_failed",
            401,
        )
        assert "not-the-api-key-41c9" not in str(login.value)
        assert "not-the-api-key-41c9" not in repr(wrong_key._settings)
        await wrong_key.close()

        wrong_subscription = env.new_adapter(collection_subscription_key=SecretStr("nope-sub-7e2a"))
        with pytest.raises(ProviderError) as subscription:
            await wrong_subscription.collect(eur("momo-order-sub"))
        assert subscription.value.error_class is ErrorClass.AUTH
        assert "invalid subscription key" in subscription.value.provider_message
        assert subscription.value.safe_to_fail_over
        assert "nope-sub-7e2a" not in str(subscription.value)
        await wrong_subscription.close()
        assert len(env.sandbox.ledger) == 0


async def test_throttled_status_queries_are_rate_limited(momo_env: Env) -> None:
    async with momo_env() as env:
        txn = await env.adapter.collect(eur("momo-order-rate"))
        env.sandbox.faults.add(
            "mtn_momo", ThrottleSpec(max_per_s=1, retry_after_s=2), endpoints=[EndpointKind.STATUS]
        )
        await env.adapter.status(txn.reference)
        with pytest.raises(ProviderError) as limited:
            await env.adapter.status(txn.reference)
        error = limited.value
        assert (error.error_class, error.http_status, error.retry_after_s) == (
            ErrorClass.RATE_LIMITED,
            429,
            2,
        )
        assert error.safe_to_fail_over
        await env.clock.advance(1)
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.PENDING


async def test_refused_outage_is_not_processed(momo_env: Env) -> None:
    async with momo_env() as env:
        await env.adapter.initialize()
        env.sandbox.faults.add("mtn_momo", OutageSpec(mode="refused"), end_s=30)
        await env.clock.advance(0)  # let the gate close the port
        with pytest.raises(ProviderError) as refused:
            await env.adapter.collect(eur("momo-order-down"))
        assert (refused.value.error_class, refused.value.code) == (ErrorClass.NOT_PROCESSED, "ConnectError")
        assert len(env.sandbox.ledger) == 0
        await env.clock.advance(30)
        assert (await env.adapter.collect(eur("momo-order-down"))).status is TransactionStatus.PENDING


async def test_accept_then_hang_is_ambiguous_and_never_charged_twice(momo_env: Env) -> None:
    async with momo_env(timeout_s=5.0) as env:
        await env.adapter.initialize()
        env.adapter.set_timeout(0.3)
        assert env.adapter.timeout_s == 0.3
        env.sandbox.faults.add("mtn_momo", AcceptThenHangSpec(), endpoints=[EndpointKind.COLLECT])
        request = eur("momo-order-hang")
        with pytest.raises(ProviderError) as hung:
            await env.adapter.collect(request)
        assert (hung.value.error_class, hung.value.code) == (ErrorClass.AMBIGUOUS, "ReadTimeout")
        reference = MtnMomoAdapter.reference_for(request.idempotency_key)
        assert env.sandbox.ledger.count_by_reference(reference) == 1

        found = await env.adapter.status(reference)  # resolved by the idempotent status query
        assert found.status is TransactionStatus.PENDING
        env.sandbox.faults.clear()
        replay = await env.adapter.collect(request)  # 409 -> the first request, not a second one
        assert replay.reference == reference
        await env.clock.advance(5)
        assert (await env.adapter.status(reference)).status is TransactionStatus.SUCCEEDED
        assert env.sandbox.ledger.count_by_reference(reference) == 1
        assert len(env.sandbox.ledger.successful_charges_for(PHONE)) == 1


async def test_token_revoked_mid_run_is_replaced_for_that_product_only(momo_env: Env) -> None:
    async with momo_env() as env:
        await env.adapter.initialize()
        await env.adapter.collect(eur("momo-order-before"))
        await env.clock.advance(60)
        env.sandbox.faults.add("mtn_momo", CredentialExpirySpec(), endpoints=[EndpointKind.COLLECT])
        txn = await env.adapter.collect(eur("momo-order-after", phone=OTHER_PHONE))
        assert txn.status is TransactionStatus.PENDING
        assert env.emulator.tokens_issued == {"collection": 2, "disbursement": 1}
        assert len(env.sandbox.ledger) == 2


async def test_tokens_are_refreshed_before_they_expire(momo_env: Env) -> None:
    async with momo_env(config=MtnMomoSandboxConfig(token_ttl_s=120)) as env:
        await env.adapter.initialize()
        await env.clock.advance(80)  # a 120 s token is refreshed 30 s (a quarter) early
        await env.adapter.collect(eur("momo-order-early"))
        assert env.emulator.tokens_issued["collection"] == 1
        await env.clock.advance(15)
        await env.adapter.collect(eur("momo-order-late", phone=OTHER_PHONE))
        assert env.emulator.tokens_issued["collection"] == 2


async def test_payout_uses_disbursement_and_is_found_by_a_fresh_adapter(momo_env: Env) -> None:
    async with momo_env() as env:
        env.sandbox.customers.set(CustomerBehavior(msisdn=OTHER_PHONE, payout_result_code="PAYEE_NOT_FOUND"))
        txn = await env.adapter.payout(eur("momo-payout-0001", 5_000, operation=Operation.PAYOUT))
        failing = await env.adapter.payout(
            eur("momo-payout-0002", 700, OTHER_PHONE, operation=Operation.PAYOUT)
        )
        assert txn.status is TransactionStatus.PENDING
        assert env.emulator.tokens_issued == {"collection": 0, "disbursement": 1}

        fresh = env.new_adapter()  # knows nothing: tries collection (404), then disbursement
        assert (await fresh.status(txn.reference)).status is TransactionStatus.PENDING
        await env.clock.advance(3)
        done = await fresh.status(txn.reference)
        assert (done.status, done.money) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=5_000, currency="EUR"),
        )
        failed = await env.adapter.status(failing.reference)
        # A transfer's reason is named in its own space: there the payer is the merchant.
        assert (failed.status, failed.provider_code) == (TransactionStatus.FAILED, "transfer:PAYEE_NOT_FOUND")
        assert failed.provider_code in MtnMomoAdapter.customer_codes
        await fresh.close()
        [entry, _] = env.sandbox.ledger.entries(operation="payout")
        assert entry.status is LedgerStatus.SUCCEEDED


async def test_refunds_partial_then_full_reverse_the_collection(momo_env: Env) -> None:
    async with momo_env() as env:
        txn = await env.adapter.collect(eur("momo-order-refund", 2_000))
        await env.clock.advance(5)
        paid = await env.adapter.status(txn.reference)
        with pytest.raises(ProviderError) as too_much:
            await env.adapter.refund(paid, Money(amount_minor=2_500, currency="EUR"))
        assert too_much.value.error_class is ErrorClass.INVALID_REQUEST

        part = await env.adapter.refund(paid, Money(amount_minor=500, currency="EUR"))
        assert (part.status, part.reference) == (TransactionStatus.PENDING, txn.reference)
        assert part.provider_reference is not None and part.provider_reference != txn.reference
        repeat = await env.adapter.refund(paid, Money(amount_minor=500, currency="EUR"))  # 409 -> same refund
        assert repeat.provider_reference == part.provider_reference
        await env.clock.advance(3)
        assert (
            await env.adapter.refund_status(part.provider_reference)
        ).status is TransactionStatus.SUCCEEDED
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.SUCCEEDED

        env.sandbox.faults.add("mtn_momo", OutageSpec(mode="503"), endpoints=[EndpointKind.REFUND])
        with pytest.raises(ProviderError) as unavailable:
            await env.adapter.refund(paid, Money(amount_minor=1_500, currency="EUR"))
        assert unavailable.value.error_class is ErrorClass.AMBIGUOUS  # a 503 on a money move: maybe
        # MoMo never saw it: the status query skips the unknown refund id instead of failing.
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.SUCCEEDED
        env.sandbox.faults.clear()
        await env.adapter.refund(paid, Money(amount_minor=1_500, currency="EUR"))
        await env.clock.advance(3)
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.REVERSED
        assert env.sandbox.ledger.charges_for(PHONE)[0].status is LedgerStatus.REVERSED
        refunds = env.sandbox.ledger.entries(operation="refund")
        assert [r.amount_minor for r in refunds] == [500, 1_500]


async def test_probe_is_cached_and_a_read_never_ambiguous(momo_env: Env) -> None:
    async with momo_env() as env:
        first = await env.adapter.probe()
        assert first.ok and "EUR" in first.detail
        assert (await env.adapter.probe()).detail.endswith("(cached)")
        env.sandbox.faults.add("mtn_momo", OutageSpec(mode="503"), endpoints=[EndpointKind.PROBE])
        await env.clock.advance(30)
        with pytest.raises(ProviderError) as down:
            await env.adapter.probe()
        assert (down.value.error_class, down.value.http_status) == (ErrorClass.NOT_PROCESSED, 503)


async def test_unknown_reference_is_not_found(momo_env: Env) -> None:
    async with momo_env() as env:
        with pytest.raises(ProviderError) as missing:
            await env.adapter.status(MtnMomoAdapter.reference_for("momo-never-sent"))
        assert (missing.value.error_class, missing.value.code) == (ErrorClass.NOT_PROCESSED, NOT_FOUND_CODE)


async def test_momo_protocol_shapes(momo_env: Env) -> None:
    """The emulator answers like MoMo on the wire (what the adapter relies on)."""
    async with momo_env() as env, httpx.AsyncClient(base_url=env.address.url("mtn_momo")) as client:
        config = MtnMomoSandboxConfig()
        basic = base64.b64encode(f"{config.api_user}:{config.api_key}".encode()).decode()
        collection_key = {"Ocp-Apim-Subscription-Key": config.collection_subscription_key}
        with_body = await client.post(
            "/collection/token/", json={}, headers={"Authorization": f"Basic {basic}", **collection_key}
        )
        assert with_body.status_code == 400
        no_key = await client.post("/collection/token/", headers={"Authorization": f"Basic {basic}"})
        assert (no_key.status_code, no_key.json()["statusCode"]) == (401, 401)
        token = await client.post(
            "/collection/token/", headers={"Authorization": f"Basic {basic}", **collection_key}
        )
        assert set(token.json()) == {"access_token", "token_type", "expires_in"}
        bearer = {
            "Authorization": f"Bearer {token.json()['access_token']}",
            "X-Target-Environment": "sandbox",
        }
        transfer = {
            "amount": "1",
            "currency": "EUR",
            "externalId": "x",
            "payee": {"partyIdType": "MSISDN", "partyId": "256772000009"},
            "payerMessage": "m",
            "payeeNote": "n",
        }
        cross_product = await client.post(
            "/disbursement/v1_0/transfer",
            json=transfer,
            headers={
                **bearer,
                "X-Reference-Id": str(uuid.uuid4()),
                "Ocp-Apim-Subscription-Key": config.disbursement_subscription_key,
            },
        )
        assert cross_product.status_code == 401  # a collection token is no disbursement token
        pay = {**transfer, "payer": transfer["payee"]}
        v1_id = await client.post(
            "/collection/v1_0/requesttopay",
            json=pay,
            headers={**bearer, **collection_key, "X-Reference-Id": str(uuid.uuid1())},
        )
        assert (v1_id.status_code, v1_id.json()["code"]) == (400, "BAD_REQUEST")
        reference_id = str(uuid.uuid4())
        accepted = await client.post(
            "/collection/v1_0/requesttopay",
            json=pay,
            headers={**bearer, **collection_key, "X-Reference-Id": reference_id},
        )
        assert (accepted.status_code, accepted.content) == (202, b"")
        duplicate = await client.post(
            "/collection/v1_0/requesttopay",
            json=pay,
            headers={**bearer, **collection_key, "X-Reference-Id": reference_id},
        )
        assert duplicate.status_code == 409
        assert duplicate.json() == {
            "code": "RESOURCE_ALREADY_EXIST",
            "message": "Duplicated reference id. Creation of resource failed.",
        }
        missing = await client.get(
            f"/collection/v1_0/requesttopay/{uuid.uuid4()}", headers={**bearer, **collection_key}
        )
        assert (missing.status_code, missing.json()["code"]) == (404, "RESOURCE_NOT_FOUND")


def test_settings_from_the_environment_and_market_capabilities(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, clock: ManualClock
) -> None:
    monkeypatch.chdir(tmp_path)  # no developer .env
    for name, value in {
        "MTN_MOMO_API_USER": "0f3c2a51-8d7e-4b6a-9c1d-2e5f7a8b9c0d",
        "MTN_MOMO_API_KEY": "k",
        "MTN_MOMO_COLLECTION_SUBSCRIPTION_KEY": "c",
        "MTN_MOMO_TARGET_ENVIRONMENT": "mtnuganda",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MTN_MOMO_DISBURSEMENT_SUBSCRIPTION_KEY", raising=False)
    adapter = MtnMomoAdapter(MtnMomoSettings(), clock)
    caps = adapter.capabilities
    assert (caps.currencies, caps.countries, caps.operations) == (
        frozenset({"UGX"}),
        frozenset({"UG"}),
        frozenset({Operation.COLLECT}),  # no disbursement key: no payouts, no refunds
    )
    sandbox = capabilities_for("sandbox", disbursement=True)
    assert sandbox.currencies == {"EUR"} and {"UG", "GH", "CM", "CI", "ZM"} <= sandbox.countries
    assert amount_text(Money(amount_minor=1_500, currency="UGX")) == "1500"
    assert amount_text(Money(amount_minor=1_005, currency="EUR")) == "10.05"
    monkeypatch.setenv("MTN_MOMO_TARGET_ENVIRONMENT", "mtnatlantis")
    with pytest.raises(ValueError):
        MtnMomoSettings()


# --- money truth: status with no memory, lookup lag, identifiers, callbacks ----------------------


def context_for(request: PaymentRequest, **kw: Any) -> PaymentContext:
    """What the engine would hand `status()` for `request` (no adapter memory needed)."""
    return PaymentContext(
        reference=kw.pop("reference", MtnMomoAdapter.reference_for(request.idempotency_key)),
        operation=request.operation,
        money=request.money,
        phone=request.phone,
        country=request.country,
        **kw,
    )


class Sink:
    """An identifier sink that records what it was told, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, reference: str, kind: str, value: str) -> None:
        self.seen.append((reference, kind, value))

    def identifiers(self, reference: str) -> dict[str, str]:
        return {kind: value for ref, kind, value in self.seen if ref == reference}


async def test_initialize_drops_the_probe_cache(momo_env: Env) -> None:
    async with momo_env() as env:
        assert (await env.adapter.probe()).ok
        env.sandbox.faults.add("mtn_momo", OutageSpec(mode="503"), endpoints=[EndpointKind.PROBE])
        assert (await env.adapter.probe()).detail.endswith("(cached)")  # within the interval
        await env.adapter.initialize()  # a heal: the next probe must ask MoMo again
        with pytest.raises(ProviderError) as down:
            await env.adapter.probe()
        assert down.value.http_status == 503


async def test_status_with_context_from_a_fresh_adapter(momo_env: Env) -> None:
    async with momo_env() as env:
        collect = eur("momo-ctx-collect", 2_500)
        payout = eur("momo-ctx-payout", 700, OTHER_PHONE, operation=Operation.PAYOUT)
        await env.adapter.collect(collect)
        await env.adapter.payout(payout)
        fresh = env.new_adapter()  # a restart, or another replica: no memory of either payment
        pending = await fresh.status(context_for(collect).reference, context=context_for(collect))
        assert (pending.status, pending.money) == (
            TransactionStatus.PENDING,
            Money(amount_minor=2_500, currency="EUR"),  # MoMo's pull carries the amount
        )
        assert pending.raw["payer"] == PHONE  # and the payer, in E.164
        sending = await fresh.status(context_for(payout).reference, context=context_for(payout))
        assert sending.status is TransactionStatus.PENDING
        await env.clock.advance(5)
        paid = await env.new_adapter().status(context_for(collect).reference, context=context_for(collect))
        assert (paid.status, paid.raw_status) == (TransactionStatus.SUCCEEDED, "SUCCESSFUL")
        assert paid.raw["financialTransactionId"] == env.sandbox.ledger.charges_for(PHONE)[0].receipt
        sent = await env.new_adapter().status(context_for(payout).reference, context=context_for(payout))
        assert (sent.status, sent.money, sent.raw["payer"]) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=700, currency="EUR"),
            OTHER_PHONE,  # the payee of a transfer: the customer's wallet
        )
        # The context's operation picks the resource: a payout is never looked up as a collection.
        with pytest.raises(ProviderError) as wrong:
            await env.new_adapter().status(
                context_for(payout).reference,
                context=context_for(payout).model_copy(update={"operation": Operation.COLLECT}),
            )
        assert wrong.value.code == NOT_FOUND_CODE
        await fresh.close()


async def test_not_found_while_lookups_lag_then_found(momo_env: Env) -> None:
    async with momo_env() as env:
        env.sandbox.outbox.realism.set(Realism(lookup_lag_s=5.0), "mtn_momo")
        request = eur("momo-lag-0001")
        accepted = await env.adapter.collect(request)
        assert accepted.status is TransactionStatus.PENDING
        with pytest.raises(ProviderError) as early:
            await env.adapter.status(accepted.reference, context=context_for(request))
        assert (early.value.code, early.value.http_status) == (NOT_FOUND_CODE, 404)  # the engine's grace
        # A resend meets the 409 while the lookup still lags: MoMo holds it, so never "not found".
        replay = await env.adapter.collect(request)
        assert (replay.status, replay.provider_code) == (TransactionStatus.UNKNOWN, "RESOURCE_ALREADY_EXIST")
        await env.clock.advance(4)  # the customer approves before the lookup catches up
        with pytest.raises(ProviderError):
            await env.adapter.status(accepted.reference, context=context_for(request))
        await env.clock.advance(1)
        found = await env.adapter.status(accepted.reference, context=context_for(request))
        assert found.status is TransactionStatus.SUCCEEDED
        assert env.sandbox.ledger.count_by_reference(accepted.reference) == 1


async def test_identifiers_reach_the_sink_before_the_call_returns(momo_env: Env) -> None:
    async with momo_env() as env:
        sink = Sink()
        env.adapter.identifier_sink = sink
        request = eur("momo-ids-0001", 2_000)
        txn = await env.adapter.collect(request)
        await env.clock.advance(5)
        paid = await env.adapter.status(txn.reference)
        assert sink.identifiers(txn.reference) == {
            "financial_transaction_id": paid.raw["financialTransactionId"]
        }
        # The refund's id is durable before its request leaves: a refund whose answer is lost
        # (here a 503, maybe processed) stays findable.
        env.sandbox.faults.add("mtn_momo", OutageSpec(mode="503"), endpoints=[EndpointKind.REFUND])
        with pytest.raises(ProviderError) as lost:
            await env.adapter.refund(paid)
        assert lost.value.error_class is ErrorClass.AMBIGUOUS
        refund_id = MtnMomoAdapter.refund_reference_for(txn.reference, paid.money or request.money)
        assert sink.identifiers(txn.reference)["refund_ids"] == refund_id
        env.sandbox.faults.clear()
        refund = await env.adapter.refund(paid)
        assert refund.provider_reference == refund_id
        await env.clock.advance(3)
        # A fresh adapter sees the reversal through the identifiers the engine stored.
        context = context_for(request, identifiers=sink.identifiers(txn.reference))
        reversed_ = await env.new_adapter().status(txn.reference, context=context)
        assert reversed_.status is TransactionStatus.REVERSED
        refund_context = context_for(request).model_copy(
            update={"operation": Operation.REFUND, "provider_reference": refund_id}
        )
        refunded = await env.new_adapter().status(txn.reference, context=refund_context)
        assert (refunded.status, refunded.reference, refunded.provider_reference, refunded.money) == (
            TransactionStatus.SUCCEEDED,
            txn.reference,
            refund_id,
            Money(amount_minor=2_000, currency="EUR"),
        )


# --- parse_callback (pure) -------------------------------------------------------------------------


@pytest.fixture
def momo_parser(clock: ManualClock) -> MtnMomoAdapter:
    return MtnMomoAdapter(momo_settings("http://127.0.0.1:9"), clock)


def momo_callback(**overrides: Any) -> dict[str, Any]:
    """A request-to-pay callback as MoMo sends it: the GET body, no X-Reference-Id."""
    body: dict[str, Any] = {
        "financialTransactionId": "1927264368",
        "externalId": "momo-order-cb",
        "amount": "10.50",
        "currency": "EUR",
        "payer": {"partyIdType": "MSISDN", "partyId": "256772000001"},
        "payerMessage": "order 42",
        "payeeNote": "order 42",
        "status": "SUCCESSFUL",
    }
    body.update(overrides)
    return body


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


def test_parse_a_genuine_collection_callback(momo_parser: MtnMomoAdapter) -> None:
    assert isinstance(momo_parser, CallbackSource)
    reference = MtnMomoAdapter.reference_for("momo-order-cb")
    hint = momo_parser.parse_callback(raw(momo_callback()), {}, path_kind="collect", path_reference=reference)
    assert hint is not None
    assert (hint.reference, hint.provider_reference, hint.operation, hint.status) == (
        reference,
        reference,
        Operation.COLLECT,
        TransactionStatus.SUCCEEDED,
    )
    assert hint.money == Money(amount_minor=1_050, currency="EUR")  # "10.50" EUR -> 1050 cents
    assert (hint.payer, hint.extras) == ("+256772000001", {"financial_transaction_id": "1927264368"})
    assert hint.authenticated is False  # MoMo signs nothing
    # Without a reference in the URL, the externalId (our idempotency key) names it.
    bare = momo_parser.parse_callback(raw(momo_callback()), {}, path_kind="callback", path_reference="-")
    assert bare is not None and (bare.reference, bare.operation) == (reference, Operation.COLLECT)
    ugx = momo_parser.parse_callback(
        raw(momo_callback(amount="1500", currency="UGX")), {}, path_kind="collect", path_reference=reference
    )
    assert ugx is not None and ugx.money == Money(amount_minor=1_500, currency="UGX")  # no minor unit


def test_parse_failed_payout_and_refund_callbacks(momo_parser: MtnMomoAdapter) -> None:
    failed = momo_callback(status="FAILED", reason="NOT_ENOUGH_FUNDS", externalId="momo-payout-cb")
    del failed["financialTransactionId"]
    failed["payee"] = failed.pop("payer")
    hint = momo_parser.parse_callback(raw(failed), {}, path_kind="callback", path_reference="-")
    assert hint is not None
    assert (hint.operation, hint.status, hint.provider_code, hint.payer, hint.extras) == (
        Operation.PAYOUT,
        TransactionStatus.FAILED,
        "transfer:NOT_ENOUGH_FUNDS",  # the merchant's float, not the customer's funds
        "+256772000001",
        {},
    )
    assert hint.provider_code not in MtnMomoAdapter.customer_codes
    assert hint.reference == MtnMomoAdapter.reference_for("momo-payout-cb")
    collection = MtnMomoAdapter.reference_for("momo-order-cb")
    refund_id = MtnMomoAdapter.refund_reference_for(collection, Money(amount_minor=500, currency="EUR"))
    refund = {
        "amount": "5.00",
        "currency": "EUR",
        "externalId": f"refund-{collection}",
        "status": "SUCCESSFUL",
    }
    hint = momo_parser.parse_callback(raw(refund), {}, path_kind="callback", path_reference=refund_id)
    assert hint is not None
    assert (hint.operation, hint.reference, hint.provider_reference, hint.money) == (
        Operation.REFUND,
        collection,
        refund_id,
        Money(amount_minor=500, currency="EUR"),
    )


def test_a_payment_key_that_looks_like_a_refund_is_not_one(momo_parser: MtnMomoAdapter) -> None:
    body = raw(momo_callback(externalId="refund-order-7"))  # a customer's key, not our refund's
    hint = momo_parser.parse_callback(body, {}, path_kind="callback", path_reference="-")
    assert hint is not None
    assert (hint.operation, hint.reference) == (
        Operation.COLLECT,
        MtnMomoAdapter.reference_for("refund-order-7"),
    )


def test_a_forged_or_mismatched_callback_is_parsed_faithfully(momo_parser: MtnMomoAdapter) -> None:
    # Anyone who learns the URL can post this: it parses, unauthenticated, claim carried as is
    # so the engine's pull can refuse it.
    forged = momo_callback(amount="99999", payer={"partyIdType": "MSISDN", "partyId": "256700000666"})
    hint = momo_parser.parse_callback(
        raw(forged), {"X-Signature": "made-up"}, path_kind="collect", path_reference="-"
    )
    assert hint is not None
    assert (hint.authenticated, hint.money, hint.payer) == (
        False,
        Money(amount_minor=9_999_900, currency="EUR"),
        "+256700000666",
    )


def test_parse_is_pure_and_a_duplicate_parses_the_same(momo_parser: MtnMomoAdapter) -> None:
    body = raw(momo_callback())
    first = momo_parser.parse_callback(body, {}, path_kind="collect", path_reference="-")
    second = momo_parser.parse_callback(body, {}, path_kind="collect", path_reference="-")
    assert first == second
    assert momo_parser._identifiers == {}  # nothing learnt, nothing remembered


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        (b"<html>not json</html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (raw({k: v for k, v in momo_callback().items() if k != "status"}), "status"),
        (raw({k: v for k, v in momo_callback().items() if k != "amount"}), "amount"),
        (raw(momo_callback(amount="ten")), "amount"),
        (raw(momo_callback(amount="-1")), "amount"),
    ],
)
def test_malformed_callbacks_are_refused(momo_parser: MtnMomoAdapter, body: bytes, missing: str) -> None:
    with pytest.raises(MalformedCallback) as refused:
        momo_parser.parse_callback(body, {}, path_kind="collect", path_reference="-")
    assert missing in str(refused.value)


def test_a_preapproval_callback_says_nothing_about_a_payment(momo_parser: MtnMomoAdapter) -> None:
    preapproval = {
        "payer": {"partyIdType": "MSISDN", "partyId": "256772000001"},
        "payerCurrency": "EUR",
        "payerMessage": "subscription",
        "validityTime": 3600,
        "status": "SUCCESSFUL",
    }
    assert (
        momo_parser.parse_callback(raw(preapproval), {}, path_kind="preapproval", path_reference="-") is None
    )


def test_money_truth_and_amount_parsing() -> None:
    truth = MtnMomoAdapter.money_truth
    assert truth.callback_auth == "none" and truth.not_found_is_final_after_grace
    assert {"amount", "currency", "payer", "status"} <= truth.pull_carries
    assert truth.not_found_grace_s >= 60 and truth.pending_bound_s >= 300
    assert money_of("10.5", "EUR") == Money(amount_minor=1_050, currency="EUR")
    assert money_of("10.505", "EUR") is None  # not a whole number of cents
    assert money_of("1500.5", "UGX") is None
    assert money_of(True, "EUR") is None


# --- the classification table ------------------------------------------------------------------------


async def test_the_merchants_short_float_fails_a_transfer_and_is_not_the_customers(momo_env: Env) -> None:
    async with momo_env(config=MtnMomoSandboxConfig(disbursement_balance_minor=100)) as env:
        txn = await env.adapter.payout(eur("momo-payout-float", 5_000, operation=Operation.PAYOUT))
        await env.clock.advance(5)
        failed = await env.adapter.status(txn.reference)
        assert (failed.status, failed.provider_code) == (
            TransactionStatus.FAILED,
            "transfer:NOT_ENOUGH_FUNDS",
        )
        assert failed.provider_code not in MtnMomoAdapter.customer_codes
        assert "NOT_ENOUGH_FUNDS" in MtnMomoAdapter.customer_codes  # a payer's, on a request to pay


def scripted(clock: ManualClock, answer: httpx.Response) -> MtnMomoAdapter:
    """An adapter on a MoMo that issues tokens and gives every other call `answer`."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token/"):
            return httpx.Response(
                200, json={"access_token": "t", "token_type": "access_token", "expires_in": 3600}
            )
        return answer

    return MtnMomoAdapter(momo_settings("http://momo.invalid"), clock, transport=httpx.MockTransport(handler))


SYNC_RULES = [
    rule
    for rule in ERROR_RULES
    if not rule.match.startswith(("final result", "HTTP", "RESOURCE_", "TRANSACTION_"))
]


@pytest.mark.parametrize("rule", SYNC_RULES, ids=lambda rule: rule.match)
async def test_every_synchronous_rule_classifies_its_request(clock: ManualClock, rule: Any) -> None:
    scope, _, code = rule.match.rpartition(":")
    status = 503 if code == "SERVICE_UNAVAILABLE" else 500
    adapter = scripted(clock, httpx.Response(status, json={"code": code, "message": "MoMo said so"}))
    with pytest.raises(ProviderError) as refused:
        if scope == "refund":
            paid = ProviderTransaction(
                provider="mtn_momo",
                reference=MtnMomoAdapter.reference_for("momo-refund-rule"),
                status=TransactionStatus.SUCCEEDED,
                money=Money(amount_minor=1_050, currency="EUR"),
            )
            await adapter.refund(paid)
        elif scope == "transfer":
            await adapter.payout(eur(f"momo-rule-{code.lower()}", operation=Operation.PAYOUT))
        else:
            await adapter.collect(eur(f"momo-rule-{code.lower()}"))
    assert refused.value.error_class is rule.error_class
    await adapter.close()


async def test_a_busy_or_unknown_payer_refused_at_once_is_the_customers(clock: ManualClock) -> None:
    adapter = scripted(
        clock, httpx.Response(500, json={"code": "PAYER_NOT_FOUND", "message": "Payer not found"})
    )
    with pytest.raises(ProviderError) as refused:
        await adapter.collect(eur("momo-unknown-payer"))
    assert refused.value.error_class is ErrorClass.CUSTOMER and not refused.value.safe_to_fail_over
    await adapter.close()


def test_error_rules_cite_their_sources() -> None:
    matches = [rule.match for rule in MtnMomoAdapter.error_rules]
    assert len(matches) == len(set(matches))
    for rule in MtnMomoAdapter.error_rules:
        assert rule.source.strip(), rule.match
        if rule.error_class is ErrorClass.NOT_PROCESSED:
            assert not rule.source.startswith(NO_SOURCE), rule.match
    by_match = {rule.match: rule.error_class for rule in MtnMomoAdapter.error_rules}
    assert by_match["SERVICE_UNAVAILABLE"] is ErrorClass.AMBIGUOUS  # a 503 with no source stays ambiguous
    assert by_match["transfer:NOT_ENOUGH_FUNDS"] is ErrorClass.NOT_PROCESSED
    assert by_match["requesttopay:NOT_ENOUGH_FUNDS"] is ErrorClass.CUSTOMER
