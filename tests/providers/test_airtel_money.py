"""AirtelMoneyAdapter against the Airtel emulator over loopback HTTP, time driven by a manual clock."""

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
from mcp_autonomy.providers.airtel_money import AirtelMoneyAdapter, AirtelMoneySettings, amount_value
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
from mcp_autonomy.sandbox import (
    AcceptThenHangSpec,
    CredentialExpirySpec,
    CustomerBehavior,
    EndpointKind,
    LedgerStatus,
    OutageSpec,
    Sandbox,
    SandboxAddress,
    ThrottleSpec,
    create_sandbox_app,
    sandbox_of,
    serve_sandbox,
)
from mcp_autonomy.sandbox import app as sandbox_app
from mcp_autonomy.sandbox.airtel_money import AirtelMoneyEmulator, AirtelMoneySandboxConfig

pytestmark = pytest.mark.anyio

TEST_DEADLINE_S = 30.0
"""Wall-clock bound on one test's body: real sockets are involved, a hang must fail, not stall."""
PHONE = "+256752000001"
OTHER_PHONE = "+256752000002"


@dataclass
class AirtelEnv:
    """A running sandbox and an Airtel adapter pointed at its gated port."""

    clock: ManualClock
    sandbox: Sandbox
    address: SandboxAddress
    adapter: AirtelMoneyAdapter
    settings: AirtelMoneySettings

    @property
    def emulator(self) -> AirtelMoneyEmulator:
        emulator = self.sandbox.emulators["airtel_money"]
        assert isinstance(emulator, AirtelMoneyEmulator)
        return emulator

    def new_adapter(self, **overrides: Any) -> AirtelMoneyAdapter:
        """Another adapter on the same sandbox, with some settings changed."""
        values = {**self.settings.model_dump(), **overrides}
        return AirtelMoneyAdapter(AirtelMoneySettings(**values), self.clock, timeout_s=2.0)


@asynccontextmanager
async def _airtel_env(
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    *,
    timeout_s: float = 2.0,
    payouts: bool = False,
    **overrides: Any,
) -> AsyncIterator[AirtelEnv]:
    # Registered for this test only: the shared PROVIDERS map is owned by sandbox/app.py.
    monkeypatch.setitem(sandbox_app.PROVIDERS, "airtel_money", AirtelMoneyEmulator)
    app = create_sandbox_app(clock, seed=13, providers=["airtel_money"])
    config = AirtelMoneySandboxConfig()
    with anyio.fail_after(TEST_DEADLINE_S):
        async with anyio.create_task_group() as tg:
            address: SandboxAddress = await tg.start(serve_sandbox, app)
            sandbox = sandbox_of(app)
            values: dict[str, Any] = {
                "client_id": config.client_id,
                "client_secret": SecretStr(config.client_secret),
                "base_url": address.url("airtel_money"),
            }
            if payouts:
                emulator = sandbox.emulators["airtel_money"]
                assert isinstance(emulator, AirtelMoneyEmulator)
                values["disbursement_pin"] = SecretStr(config.disbursement_pin)
                values["pin_public_key"] = SecretStr(emulator.pin_public_key_b64)
            values.update(overrides)
            settings = AirtelMoneySettings(**values)
            adapter = AirtelMoneyAdapter(settings, clock, timeout_s=timeout_s)
            try:
                yield AirtelEnv(clock, sandbox, address, adapter, settings)
            finally:
                await adapter.close()
                tg.cancel_scope.cancel()


Env = Callable[..., AbstractAsyncContextManager[AirtelEnv]]


@pytest.fixture
def airtel_env(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Env:
    """`async with airtel_env(payouts=..., **setting_overrides) as env:`."""
    return partial(_airtel_env, clock, monkeypatch)


def ugx(key: str, amount: int = 1_500, phone: str = PHONE, **kw: Any) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=kw.pop("operation", Operation.COLLECT),
        money=Money(amount_minor=amount, currency=kw.pop("currency", "UGX")),  # UGX has no minor unit
        phone=phone,
        country=kw.pop("country", "UG"),
        description="order 42",
    )


async def test_collect_succeeds_end_to_end(airtel_env: Env) -> None:
    async with airtel_env() as env:
        assert isinstance(env.adapter, ProviderAdapter)
        await env.adapter.initialize()
        txn = await env.adapter.collect(ugx("airtel-order-0001"))
        assert (txn.status, txn.provider_code) == (TransactionStatus.PENDING, "DP00800001006")
        assert txn.reference == AirtelMoneyAdapter.reference_for("airtel-order-0001")
        assert txn.reference.isalnum()

        polled = await env.adapter.status(txn.reference)
        assert (polled.status, polled.raw_status) == (TransactionStatus.PENDING, "TIP")
        await env.clock.advance(5)
        done = await env.adapter.status(txn.reference)
        assert (done.status, done.raw_status) == (TransactionStatus.SUCCEEDED, "TS")
        assert done.provider_reference is not None and done.provider_reference.startswith("MP")
        [entry] = env.sandbox.ledger.charges_for(PHONE)
        assert (entry.status, entry.amount_minor, entry.currency) == (LedgerStatus.SUCCEEDED, 1_500, "UGX")


async def test_ta_is_ambiguous_not_pending_and_failures_keep_their_codes(airtel_env: Env) -> None:
    async with airtel_env() as env:
        env.sandbox.customers.set(
            CustomerBehavior(msisdn=PHONE, action="decline", decline_code="DP00800001000", delay_s=2)
        )
        env.sandbox.customers.set(CustomerBehavior(msisdn=OTHER_PHONE, action="ignore"))
        ambiguous = await env.adapter.collect(ugx("airtel-order-ta"))
        ignored = await env.adapter.collect(ugx("airtel-order-ignored", phone=OTHER_PHONE))
        await env.clock.advance(2)
        ta = await env.adapter.status(ambiguous.reference)
        assert (ta.status, ta.raw_status, ta.provider_code) == (
            TransactionStatus.UNKNOWN,
            "TA",
            "DP00800001000",
        )
        assert not ta.status.is_final  # to be queried again, never retried elsewhere
        await env.clock.advance(60)
        timed_out = await env.adapter.status(ignored.reference)
        assert (timed_out.status, timed_out.provider_code) == (TransactionStatus.FAILED, "DP00800001024")


async def test_a_resend_meets_the_duplicate_id_and_returns_the_first(airtel_env: Env) -> None:
    async with airtel_env() as env:
        first = await env.adapter.collect(ugx("airtel-order-twice"))
        again = await env.adapter.collect(ugx("airtel-order-twice"))  # ESB000041
        assert (again.reference, again.status) == (first.reference, TransactionStatus.PENDING)
        assert env.sandbox.ledger.count_by_reference(first.reference) == 1


async def test_invalid_requests_and_unconfigured_routes(airtel_env: Env) -> None:
    async with airtel_env(countries=["UG", "KE", "NG"]) as env:
        with pytest.raises(ProviderError) as currency:
            await env.adapter.collect(ugx("airtel-order-kes", currency="KES"))  # KES is not Uganda's
        assert currency.value.error_class is ErrorClass.INVALID_REQUEST
        with pytest.raises(ProviderError) as length:
            await env.adapter.collect(ugx("airtel-order-len", phone="+2567520000011"))
        error = length.value  # refused inside an HTTP 200 body
        assert (error.error_class, error.http_status, error.code) == (
            ErrorClass.INVALID_REQUEST,
            200,
            "ESB000033",
        )
        with pytest.raises(ProviderError) as route:
            await env.adapter.collect(
                ugx("airtel-order-ng", 10_000, "+2348020000001", currency="NGN", country="NG")
            )
        assert (route.value.error_class, route.value.code) == (ErrorClass.NOT_PROCESSED, "ESB000039")
        assert route.value.safe_to_fail_over  # the vendor is not set up there: another provider may be
        assert len(env.sandbox.ledger) == 0


async def test_wrong_client_secret_is_an_auth_error_and_never_leaks(airtel_env: Env) -> None:
    async with airtel_env(client_secret=SecretStr("not-the-secret-5b8e")) as env:
        with pytest.raises(ProviderError) as refused:
            await env.adapter.collect(ugx("airtel-order-auth"))
        assert (refused.value.error_class, refused.value.code) == (ErrorClass.AUTH, "invalid_client")
        assert "not-the-secret-5b8e" not in str(refused.value)
        assert "not-the-secret-5b8e" not in repr(env.settings)
        assert len(env.sandbox.ledger) == 0


async def test_throttle_is_rate_limited(airtel_env: Env) -> None:
    async with airtel_env() as env:
        env.sandbox.faults.add(
            "airtel_money", ThrottleSpec(max_per_s=1, retry_after_s=3), endpoints=["collect"]
        )
        await env.adapter.collect(ugx("airtel-order-r1"))
        with pytest.raises(ProviderError) as limited:
            await env.adapter.collect(ugx("airtel-order-r2", phone=OTHER_PHONE))
        error = limited.value
        assert (error.error_class, error.http_status, error.retry_after_s) == (
            ErrorClass.RATE_LIMITED,
            429,
            3,
        )


async def test_refused_outage_is_not_processed_and_not_found_is_trusted_only_after_a_grace(
    airtel_env: Env,
) -> None:
    async with airtel_env() as env:
        await env.adapter.initialize()
        env.sandbox.faults.add("airtel_money", OutageSpec(mode="refused"), end_s=10)
        await env.clock.advance(0)
        request = ugx("airtel-order-down")
        with pytest.raises(ProviderError) as refused:
            await env.adapter.collect(request)
        assert (refused.value.error_class, refused.value.code) == (ErrorClass.NOT_PROCESSED, "ConnectError")
        await env.clock.advance(10)
        reference = AirtelMoneyAdapter.reference_for(request.idempotency_key)
        early = await env.adapter.status(reference)  # Airtel's "not found" may mean "too early"
        assert early.status is TransactionStatus.UNKNOWN
        await env.clock.advance(120)
        with pytest.raises(ProviderError) as missing:
            await env.adapter.status(reference)
        assert (missing.value.error_class, missing.value.code) == (ErrorClass.NOT_PROCESSED, NOT_FOUND_CODE)
        with pytest.raises(ProviderError) as never:
            await env.adapter.status(AirtelMoneyAdapter.reference_for("airtel-never-sent"))
        assert never.value.code == NOT_FOUND_CODE  # neither a payment nor a disbursement


async def test_accept_then_hang_is_ambiguous_and_never_charged_twice(airtel_env: Env) -> None:
    async with airtel_env(timeout_s=0.3) as env:
        await env.adapter.initialize()
        env.sandbox.faults.add("airtel_money", AcceptThenHangSpec(), endpoints=[EndpointKind.COLLECT])
        request = ugx("airtel-order-hang")
        with pytest.raises(ProviderError) as hung:
            await env.adapter.collect(request)
        assert (hung.value.error_class, hung.value.code) == (ErrorClass.AMBIGUOUS, "ReadTimeout")
        reference = AirtelMoneyAdapter.reference_for(request.idempotency_key)
        assert (await env.adapter.status(reference)).status is TransactionStatus.PENDING
        env.sandbox.faults.clear()
        assert (await env.adapter.collect(request)).reference == reference  # duplicate id -> the first
        await env.clock.advance(5)
        assert (await env.adapter.status(reference)).status is TransactionStatus.SUCCEEDED
        assert env.sandbox.ledger.count_by_reference(reference) == 1


async def test_short_lived_tokens_are_refreshed_early_and_after_revocation(airtel_env: Env) -> None:
    async with airtel_env() as env:
        await env.adapter.initialize()
        await env.clock.advance(140)  # a 180 s token is renewed 30 s early
        await env.adapter.collect(ugx("airtel-order-t1"))
        assert env.emulator.tokens_issued == 1
        await env.clock.advance(11)
        await env.adapter.collect(ugx("airtel-order-t2", phone=OTHER_PHONE))
        assert env.emulator.tokens_issued == 2
        await env.clock.advance(1)
        env.sandbox.faults.add("airtel_money", CredentialExpirySpec())  # invalid_token -> one refresh
        done = await env.adapter.status(AirtelMoneyAdapter.reference_for("airtel-order-t1"))
        assert done.status is TransactionStatus.SUCCEEDED
        assert env.emulator.tokens_issued == 3


async def test_refund_is_full_and_once(airtel_env: Env) -> None:
    async with airtel_env() as env:
        txn = await env.adapter.collect(ugx("airtel-order-refund", 20_000))
        await env.clock.advance(5)
        paid = await env.adapter.status(txn.reference)
        with pytest.raises(ProviderError) as partial_refund:
            await env.adapter.refund(paid, Money(amount_minor=5_000, currency="UGX"))
        assert partial_refund.value.error_class is ErrorClass.INVALID_REQUEST
        refund = await env.adapter.refund(paid)
        assert (refund.status, refund.provider_reference) == (
            TransactionStatus.SUCCEEDED,
            paid.provider_reference,
        )
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.REVERSED
        with pytest.raises(ProviderError) as twice:
            await env.adapter.refund(paid)
        assert (twice.value.error_class, twice.value.code) == (ErrorClass.INVALID_REQUEST, "ESB000011")
        assert env.sandbox.ledger.charges_for(PHONE)[0].status is LedgerStatus.REVERSED
        assert [r.amount_minor for r in env.sandbox.ledger.entries(operation="refund")] == [20_000]


async def test_disbursement_with_the_rsa_encrypted_pin(airtel_env: Env) -> None:
    async with airtel_env(payouts=True) as env:
        assert Operation.PAYOUT in env.adapter.capabilities.operations
        request = ugx("airtel-payout-0001", 7_000, operation=Operation.PAYOUT)
        txn = await env.adapter.payout(request)
        assert (txn.status, txn.provider_code) == (TransactionStatus.PENDING, "DP00900001006")
        again = await env.adapter.payout(request)  # DP00900001011 duplicate -> the first one
        assert again.reference == txn.reference
        assert len(env.sandbox.ledger.entries(operation="payout")) == 1
        await env.clock.advance(3)
        done = await env.adapter.status(txn.reference)
        assert (done.status, done.provider_code) == (TransactionStatus.SUCCEEDED, "DP00900001001")

        wrong_pin = env.new_adapter(disbursement_pin=SecretStr("9999"))
        with pytest.raises(ProviderError) as refused:
            await wrong_pin.payout(ugx("airtel-payout-0002", 100, operation=Operation.PAYOUT))
        assert (refused.value.error_class, refused.value.code) == (
            ErrorClass.INVALID_REQUEST,
            "DP00900001013",
        )
        assert "9999" not in str(refused.value)
        await wrong_pin.close()


async def test_payout_needs_a_pin_and_its_key(airtel_env: Env) -> None:
    async with airtel_env() as env:
        assert Operation.PAYOUT not in env.adapter.capabilities.operations
        with pytest.raises(ProviderError) as unconfigured:
            await env.adapter.payout(ugx("airtel-payout-none", operation=Operation.PAYOUT))
        assert unconfigured.value.error_class is ErrorClass.INVALID_REQUEST


async def test_probe(airtel_env: Env) -> None:
    async with airtel_env(probe_min_interval_s=0) as env:
        result = await env.adapter.probe()
        assert result.ok and result.detail == "UG balance retrieved"
        env.sandbox.faults.add("airtel_money", OutageSpec(mode="503"), endpoints=[EndpointKind.PROBE])
        with pytest.raises(ProviderError) as down:
            await env.adapter.probe()
        assert (down.value.error_class, down.value.http_status) == (ErrorClass.NOT_PROCESSED, 503)


async def test_airtel_protocol_shapes(airtel_env: Env) -> None:
    """The emulator answers like Airtel on the wire (what the adapter relies on)."""
    async with airtel_env() as env, httpx.AsyncClient(base_url=env.address.url("airtel_money")) as client:
        config = AirtelMoneySandboxConfig()
        credentials = {"client_id": config.client_id, "client_secret": config.client_secret}
        token = await client.post(
            "/auth/oauth2/token", json={**credentials, "grant_type": "client_credentials"}
        )
        assert token.json()["expires_in"] == "180" and token.json()["token_type"] == "bearer"
        bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
        bad_token = await client.get("/standard/v1/payments/ABC123", headers={"Authorization": "Bearer nope"})
        assert (bad_token.status_code, bad_token.json()["error"]) == (401, "invalid_token")
        no_country = await client.get("/standard/v1/payments/ABC123", headers=bearer)
        assert no_country.json()["status_code"] == "ROUTER110"
        unknown = await client.get(
            "/standard/v1/payments/ABC123", headers={**bearer, "X-Country": "UG", "X-Currency": "UGX"}
        )
        assert unknown.status_code == 200
        assert unknown.json()["status"]["success"] is False
        assert unknown.json()["status"]["result_code"] == "ESB000045"


def test_settings_amounts_and_capabilities(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, clock: ManualClock
) -> None:
    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.setenv("AIRTEL_MONEY_CLIENT_ID", "id")
    monkeypatch.setenv("AIRTEL_MONEY_CLIENT_SECRET", "secret")
    monkeypatch.setenv("AIRTEL_MONEY_COUNTRIES", '["ZM", "MW"]')
    adapter = AirtelMoneyAdapter(AirtelMoneySettings(), clock)
    assert adapter.capabilities.currencies == {"ZMW", "MWK"}
    assert adapter.capabilities.countries == {"ZM", "MW"}
    assert {"UGX", "KES", "TZS", "RWF", "ZMW", "MWK"} <= AirtelMoneyAdapter.capabilities.currencies
    assert amount_value(Money(amount_minor=1_500, currency="UGX")) == 1_500
    assert amount_value(Money(amount_minor=1_050, currency="ZMW")) == 10.5
    monkeypatch.setenv("AIRTEL_MONEY_COUNTRIES", '["XX"]')
    with pytest.raises(ValueError):
        AirtelMoneySettings()
