"""FlutterwaveAdapter against the Flutterwave v3 emulator over loopback HTTP, on a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr, ValidationError

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
from mcp_autonomy.providers.flutterwave import FlutterwaveAdapter, FlutterwaveSettings, amount_value
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
from mcp_autonomy.sandbox.flutterwave import FlutterwaveEmulator, FlutterwaveSandboxConfig

pytestmark = pytest.mark.anyio

TEST_DEADLINE_S = 30.0
"""Wall-clock bound on one test's body: real sockets are involved, a hang must fail, not stall."""
KE_PHONE = "+254709000001"
UG_PHONE = "+256772000021"
GH_PHONE = "+233550000031"
SECRET = FlutterwaveSandboxConfig().secret_keys[0]


@dataclass
class FlutterwaveEnv:
    """A running sandbox and a Flutterwave adapter pointed at its gated port."""

    clock: ManualClock
    sandbox: Sandbox
    address: SandboxAddress
    adapter: FlutterwaveAdapter
    settings: FlutterwaveSettings

    def new_adapter(self, **overrides: Any) -> FlutterwaveAdapter:
        """Another adapter on the same sandbox, with some settings changed."""
        return FlutterwaveAdapter(
            flw_settings(self.settings.base_url, **overrides), self.clock, timeout_s=2.0
        )


def flw_settings(base_url: str, **overrides: Any) -> FlutterwaveSettings:
    values: dict[str, Any] = {
        "secret_key": SecretStr(SECRET),
        "base_url": base_url,
        "customer_email_domain": "customers.example.com",
    }
    values.update(overrides)
    return FlutterwaveSettings(**values)


@asynccontextmanager
async def _flw_env(
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    *,
    timeout_s: float = 2.0,
    settings_loader: Callable[[], FlutterwaveSettings] | None = None,
    **overrides: Any,
) -> AsyncIterator[FlutterwaveEnv]:
    # Registered for this test only: the shared PROVIDERS map is owned by sandbox/app.py.
    monkeypatch.setitem(sandbox_app.PROVIDERS, "flutterwave", FlutterwaveEmulator)
    app = create_sandbox_app(clock, seed=19, providers=["flutterwave"])
    with anyio.fail_after(TEST_DEADLINE_S):
        async with anyio.create_task_group() as tg:
            address: SandboxAddress = await tg.start(serve_sandbox, app)
            settings = flw_settings(address.url("flutterwave"), **overrides)
            adapter = FlutterwaveAdapter(
                settings, clock, timeout_s=timeout_s, settings_loader=settings_loader
            )
            try:
                yield FlutterwaveEnv(clock, sandbox_of(app), address, adapter, settings)
            finally:
                await adapter.close()
                tg.cancel_scope.cancel()


Env = Callable[..., AbstractAsyncContextManager[FlutterwaveEnv]]


@pytest.fixture
def flw_env(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Env:
    """`async with flw_env(**setting_overrides) as env:`."""
    return partial(_flw_env, clock, monkeypatch)


def payment(
    key: str, amount_minor: int, currency: str, phone: str, country: str, **kw: Any
) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=kw.pop("operation", Operation.COLLECT),
        money=Money(amount_minor=amount_minor, currency=currency),
        phone=phone,
        country=country,
        description="order 42",
        metadata=kw,
    )


def kes(key: str, amount_minor: int = 15_000, phone: str = KE_PHONE, **kw: Any) -> PaymentRequest:
    return payment(key, amount_minor, "KES", phone, "KE", **kw)


async def test_mpesa_charge_succeeds_end_to_end(flw_env: Env) -> None:
    async with flw_env() as env:
        assert isinstance(env.adapter, ProviderAdapter)
        await env.adapter.initialize()
        txn = await env.adapter.collect(kes("flw-order-0001"))
        assert (txn.status, txn.raw_status) == (TransactionStatus.PENDING, "pending")
        assert txn.provider_reference is not None and txn.provider_reference.isdigit()
        assert txn.reference == FlutterwaveAdapter.reference_for("flw-order-0001")
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.PENDING
        await env.clock.advance(5)
        done = await env.adapter.status(txn.reference)
        assert (done.status, done.money) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=15_000, currency="KES"),
        )
        [entry] = env.sandbox.ledger.charges_for(KE_PHONE)
        assert (entry.status, entry.reference) == (LedgerStatus.SUCCEEDED, txn.reference)


async def test_redirect_mode_charges_in_uganda_and_ghana(flw_env: Env) -> None:
    async with flw_env() as env:
        ugx = await env.adapter.collect(
            payment("flw-order-ug", 1_500, "UGX", UG_PHONE, "UG", network="airtel")
        )
        assert (ugx.status, ugx.raw_status, ugx.provider_reference) == (
            TransactionStatus.PENDING,
            "authorization:redirect",
            None,
        )
        assert ugx.raw["authorization"]["redirect"].startswith("https://")
        ghs = await env.adapter.collect(payment("flw-order-gh", 2_550, "GHS", GH_PHONE, "GH"))
        await env.clock.advance(5)
        done = await env.adapter.status(ugx.reference)
        assert (done.status, done.money) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=1_500, currency="UGX"),
        )
        assert done.provider_reference is not None  # the transaction id, learnt by verification
        assert (await env.adapter.status(ghs.reference)).money == Money(amount_minor=2_550, currency="GHS")
        # Ghanaian numbers travel in national form (0550...) and are recorded as E.164.
        assert env.sandbox.ledger.charges_for(GH_PHONE)[0].amount_minor == 2_550


async def test_declined_and_timed_out_charges_fail(flw_env: Env) -> None:
    async with flw_env() as env:
        other = "+254709000002"
        env.sandbox.customers.set(
            CustomerBehavior(msisdn=KE_PHONE, action="decline", decline_code="Insufficient funds")
        )
        env.sandbox.customers.set(CustomerBehavior(msisdn=other, action="ignore"))
        declined = await env.adapter.collect(kes("flw-order-decline"))
        ignored = await env.adapter.collect(kes("flw-order-ignore", phone=other))
        await env.clock.advance(5)
        failed = await env.adapter.status(declined.reference)
        assert (failed.status, failed.provider_message) == (TransactionStatus.FAILED, "Insufficient funds")
        await env.clock.advance(180)
        timed_out = await env.adapter.status(ignored.reference)
        assert (timed_out.status, timed_out.provider_message) == (
            TransactionStatus.FAILED,
            "Transaction timed out",
        )


async def test_a_repeat_is_verified_first_and_never_charged_again(flw_env: Env) -> None:
    async with flw_env() as env:
        first = await env.adapter.collect(kes("flw-order-twice"))
        again = await env.adapter.collect(kes("flw-order-twice"))  # v3 itself would charge twice
        assert again.provider_reference == first.provider_reference
        assert env.sandbox.ledger.count_by_reference(first.reference) == 1


async def test_invalid_requests_locally_and_at_flutterwave(flw_env: Env) -> None:
    async with flw_env() as env:
        for request in (
            payment("flw-order-ngn", 10_000, "NGN", "+2348030000001", "NG"),  # no mobile money for NGN
            payment("flw-order-ug-ke", 1_500, "UGX", KE_PHONE, "KE"),
            payment("flw-order-net", 1_500, "UGX", UG_PHONE, "UG", network="orange"),
        ):
            with pytest.raises(ProviderError) as local:
                await env.adapter.collect(request)
            assert local.value.error_class is ErrorClass.INVALID_REQUEST
        with pytest.raises(ProviderError) as remote:
            await env.adapter.collect(kes("flw-order-email", email="not-an-email"))
        error = remote.value
        assert (error.error_class, error.http_status) == (ErrorClass.INVALID_REQUEST, 400)
        assert error.provider_message == "charge: A valid email is required"
        assert len(env.sandbox.ledger) == 0


async def test_wrong_key_is_auth_and_a_rotated_key_is_picked_up(flw_env: Env) -> None:
    rotated = "FLWSECK_TEST-rotated000000000000000000000000000-X"
    current = {"key": SECRET}

    def load() -> FlutterwaveSettings:
        return flw_settings(env.settings.base_url, secret_key=SecretStr(current["key"]))

    async with flw_env(settings_loader=load) as env:
        wrong = env.new_adapter(secret_key=SecretStr("FLWSECK_TEST-wrong-9d2c-X"))
        with pytest.raises(ProviderError) as refused:
            await wrong.collect(kes("flw-order-key"))
        assert (refused.value.error_class, refused.value.http_status) == (ErrorClass.AUTH, 401)
        assert "FLWSECK_TEST-wrong-9d2c-X" not in str(refused.value)
        await wrong.close()

        await env.adapter.collect(kes("flw-order-k1"))
        env.sandbox.faults.add("flutterwave", CredentialExpirySpec(replacement_secret=rotated))
        with pytest.raises(ProviderError) as revoked:
            await env.adapter.collect(kes("flw-order-k2", phone="+254709000003"))
        assert revoked.value.error_class is ErrorClass.AUTH
        current["key"] = rotated  # the operator rotates FLUTTERWAVE_SECRET_KEY
        await env.adapter.refresh_credentials()
        assert (
            await env.adapter.collect(kes("flw-order-k2", phone="+254709000003"))
        ).status is TransactionStatus.PENDING
        assert len(env.sandbox.ledger) == 2


async def test_throttle_is_rate_limited(flw_env: Env) -> None:
    async with flw_env() as env:
        env.sandbox.faults.add("flutterwave", ThrottleSpec(max_per_s=1, retry_after_s=4))
        await env.adapter.probe()
        with pytest.raises(ProviderError) as limited:
            await env.adapter.collect(kes("flw-order-r1"))
        error = limited.value
        assert (error.error_class, error.http_status, error.retry_after_s) == (
            ErrorClass.RATE_LIMITED,
            429,
            4,
        )
        assert len(env.sandbox.ledger) == 0


async def test_refused_outage_is_not_processed(flw_env: Env) -> None:
    async with flw_env() as env:
        env.sandbox.faults.add("flutterwave", OutageSpec(mode="refused"), end_s=10)
        await env.clock.advance(0)
        with pytest.raises(ProviderError) as refused:
            await env.adapter.collect(kes("flw-order-down"))
        assert (refused.value.error_class, refused.value.code) == (ErrorClass.NOT_PROCESSED, "ConnectError")
        await env.clock.advance(10)
        assert (await env.adapter.collect(kes("flw-order-down"))).status is TransactionStatus.PENDING
        assert len(env.sandbox.ledger) == 1


async def test_accept_then_hang_is_ambiguous_resolved_by_verify_and_never_charged_twice(flw_env: Env) -> None:
    async with flw_env(timeout_s=0.3) as env:
        env.sandbox.faults.add("flutterwave", AcceptThenHangSpec(), endpoints=[EndpointKind.COLLECT])
        request = kes("flw-order-hang")
        with pytest.raises(ProviderError) as hung:
            await env.adapter.collect(request)
        assert (hung.value.error_class, hung.value.code) == (ErrorClass.AMBIGUOUS, "ReadTimeout")
        reference = FlutterwaveAdapter.reference_for(request.idempotency_key)
        assert (await env.adapter.status(reference)).status is TransactionStatus.PENDING
        env.sandbox.faults.clear()
        replay = await env.adapter.collect(request)  # verified first: the charge exists
        assert replay.reference == reference
        await env.clock.advance(5)
        assert (await env.adapter.status(reference)).status is TransactionStatus.SUCCEEDED
        assert env.sandbox.ledger.count_by_reference(reference) == 1


async def test_payouts_to_mobile_money_wallets(flw_env: Env) -> None:
    async with flw_env() as env:
        other = "+254709000004"
        env.sandbox.customers.set(CustomerBehavior(msisdn=other, payout_result_code="Wallet not found"))
        request = kes("flw-payout-0001", 50_000, operation=Operation.PAYOUT)
        txn = await env.adapter.payout(request)
        assert (txn.status, txn.raw_status) == (TransactionStatus.PENDING, "NEW")
        again = await env.adapter.payout(request)  # looked up first: the same transfer
        assert again.provider_reference == txn.provider_reference
        failing = await env.adapter.payout(
            kes("flw-payout-0002", 1_000, phone=other, operation=Operation.PAYOUT)
        )
        ghana = await env.adapter.payout(
            payment(
                "flw-payout-gh", 2_000, "GHS", GH_PHONE, "GH", operation=Operation.PAYOUT, network="vodafone"
            )
        )
        assert ghana.raw["bank_code"] == "VODAFONE"
        await env.clock.advance(3)
        fresh = env.new_adapter()  # no memory: verify misses, the transfer list by reference hits
        done = await fresh.status(txn.reference)
        assert (done.status, done.money) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=50_000, currency="KES"),
        )
        failed = await env.adapter.status(failing.reference)
        assert (failed.status, failed.provider_message) == (TransactionStatus.FAILED, "Wallet not found")
        await fresh.close()
        assert len(env.sandbox.ledger.entries(operation="payout")) == 3


async def test_refunds_partial_then_full(flw_env: Env) -> None:
    async with flw_env() as env:
        txn = await env.adapter.collect(kes("flw-order-refund", 20_000))
        await env.clock.advance(5)
        paid = await env.adapter.status(txn.reference)
        part = await env.adapter.refund(paid, Money(amount_minor=5_000, currency="KES"))
        assert (part.status, part.raw_status) == (TransactionStatus.SUCCEEDED, "completed")
        repeat = await env.adapter.refund(paid, Money(amount_minor=5_000, currency="KES"))
        assert repeat.provider_reference == part.provider_reference  # no second refund
        with pytest.raises(ProviderError) as too_much:
            await env.adapter.refund(paid, Money(amount_minor=25_000, currency="KES"))
        assert too_much.value.error_class is ErrorClass.INVALID_REQUEST
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.SUCCEEDED
        await env.adapter.refund(paid, Money(amount_minor=15_000, currency="KES"))
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.REVERSED
        assert env.sandbox.ledger.charges_for(KE_PHONE)[0].status is LedgerStatus.REVERSED
        assert [r.amount_minor for r in env.sandbox.ledger.entries(operation="refund")] == [5_000, 15_000]


async def test_probe_and_not_found(flw_env: Env) -> None:
    async with flw_env() as env:
        result = await env.adapter.probe()
        assert result.ok and result.detail == "7 balance(s)"
        with pytest.raises(ProviderError) as missing:
            await env.adapter.status(FlutterwaveAdapter.reference_for("flw-never-sent"))
        assert (missing.value.error_class, missing.value.code) == (ErrorClass.NOT_PROCESSED, NOT_FOUND_CODE)
        env.sandbox.faults.add("flutterwave", OutageSpec(mode="503"), endpoints=[EndpointKind.PROBE])
        with pytest.raises(ProviderError) as down:
            await env.adapter.probe()
        assert (down.value.error_class, down.value.http_status) == (ErrorClass.NOT_PROCESSED, 503)


async def test_flutterwave_protocol_shapes(flw_env: Env) -> None:
    """The emulator answers with Flutterwave's v3 envelope (what the adapter relies on)."""
    async with flw_env() as env, httpx.AsyncClient(base_url=env.address.url("flutterwave")) as client:
        anonymous = await client.get("/v3/balances")
        assert anonymous.json() == {"status": "error", "message": "Invalid authorization key", "data": None}
        auth = {"Authorization": f"Bearer {SECRET}"}
        missing = await client.get(
            "/v3/transactions/verify_by_reference", params={"tx_ref": "nope"}, headers=auth
        )
        assert missing.json() == {
            "status": "error",
            "message": "No transaction was found for this id",
            "data": None,
        }
        charge = {
            "tx_ref": "same",
            "amount": 10,
            "currency": "KES",
            "email": "a@example.com",
            "phone_number": "254709000009",
        }
        first = await client.post("/v3/charges", params={"type": "mpesa"}, json=charge, headers=auth)
        second = await client.post("/v3/charges", params={"type": "mpesa"}, json=charge, headers=auth)
        assert first.json()["message"] == "Charge initiated"
        assert first.json()["data"]["id"] != second.json()["data"]["id"]  # v3 does not deduplicate tx_ref
        transfer = {
            "account_bank": "MPS",
            "account_number": "254709000009",
            "amount": 10,
            "currency": "KES",
            "reference": "r1",
        }
        queued = await client.post("/v3/transfers", json=transfer, headers=auth)
        assert (queued.json()["message"], queued.json()["data"]["status"]) == (
            "Transfer Queued Successfully",
            "NEW",
        )
        duplicate = await client.post("/v3/transfers", json=transfer, headers=auth)
        assert duplicate.status_code == 400 and "already exists" in duplicate.json()["message"]


def test_settings_capabilities_and_amounts(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.setenv("FLUTTERWAVE_SECRET_KEY", "sk_live_not_a_flutterwave_key")
    with pytest.raises(ValidationError):
        FlutterwaveSettings()
    monkeypatch.setenv("FLUTTERWAVE_SECRET_KEY", "FLWSECK-live-0000-X")
    assert FlutterwaveSettings().base_url == "https://api.flutterwave.com"
    caps = FlutterwaveAdapter.capabilities
    assert {"KES", "GHS", "UGX", "RWF", "ZMW", "TZS", "XAF", "XOF"} == caps.currencies
    assert "NGN" not in caps.currencies  # Flutterwave has no NGN mobile money to a phone number
    assert {"KE", "GH", "UG", "CM", "CI", "SN"} <= caps.countries
    assert amount_value(Money(amount_minor=1_500, currency="UGX")) == 1_500
    assert amount_value(Money(amount_minor=2_550, currency="GHS")) == 25.5
