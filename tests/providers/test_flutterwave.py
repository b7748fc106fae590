"""FlutterwaveAdapter against the Flutterwave v3 emulator over loopback HTTP, on a manual clock."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr, ValidationError

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.providers.base import (
    NOT_FOUND_CODE,
    CallbackAuthError,
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
from mcp_autonomy.providers.flutterwave import (
    ERROR_RULES,
    FlutterwaveAdapter,
    FlutterwaveSettings,
    amount_value,
)
from mcp_autonomy.providers.http import NO_SOURCE
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
from mcp_autonomy.sandbox import flutterwave as flutterwave_emulator
from mcp_autonomy.sandbox.core import Realism
from mcp_autonomy.sandbox.flutterwave import FlutterwaveEmulator, FlutterwaveSandboxConfig

pytestmark = pytest.mark.anyio

TEST_DEADLINE_S = 30.0
"""Wall-clock bound on one test's body: real sockets are involved, a hang must fail, not stall."""
KE_PHONE = "+254709000001"
UG_PHONE = "+256772000021"
GH_PHONE = "+233550000031"
SECRET = FlutterwaveSandboxConfig().secret_keys[0]
HASH = "flw-dashboard-secret-hash-7d1e"


@dataclass
class FlutterwaveEnv:
    """A running sandbox and a Flutterwave adapter pointed at its gated port."""

    clock: ManualClock
    sandbox: Sandbox
    address: SandboxAddress
    adapter: FlutterwaveAdapter
    settings: FlutterwaveSettings
    learnt: list[tuple[str, str, str]] = field(default_factory=list)
    """Every (reference, kind, value) the adapter reported to its identifier sink, in order."""

    def identifiers(self, reference: str) -> dict[str, str]:
        """What the engine's durable store would hold for `reference` (the latest per kind)."""
        return {kind: value for ref, kind, value in self.learnt if ref == reference}

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
            env = FlutterwaveEnv(clock, sandbox_of(app), address, adapter, settings)
            adapter.identifier_sink = lambda ref, kind, value: env.learnt.append((ref, kind, value))
            try:
                yield env
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
        # The customer's reason is the result's code, so the engine can tell it from the provider's.
        assert failed.provider_code == "Insufficient funds"
        assert failed.provider_code in FlutterwaveAdapter.customer_codes
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


# --- money truth: contexts, identifiers, lookup lag -----------------------------------------------


def context_of(
    env: FlutterwaveEnv, request: PaymentRequest, operation: Operation | None = None
) -> PaymentContext:
    """What the engine stored for `request`: its facts and every id the sink received."""
    reference = FlutterwaveAdapter.reference_for(request.idempotency_key)
    return PaymentContext(
        reference=reference,
        operation=operation or request.operation,
        money=request.money,
        phone=request.phone,
        country=request.country,
        identifiers=env.identifiers(reference),
    )


def adapter_alone(clock: ManualClock, **overrides: Any) -> FlutterwaveAdapter:
    """An adapter that never calls out: parse_callback and money_truth need no provider."""
    return FlutterwaveAdapter(flw_settings("http://127.0.0.1:9", **overrides), clock)


def test_the_adapter_is_a_callback_source_with_its_money_truth(clock: ManualClock) -> None:
    adapter = adapter_alone(clock)
    assert isinstance(adapter, CallbackSource) and isinstance(adapter, ProviderAdapter)
    truth = FlutterwaveAdapter.money_truth
    assert truth.callback_auth == "shared_secret"
    # Flutterwave answers "No transaction was found" for payments it holds: never proof of absence.
    assert truth.not_found_is_final_after_grace is False and truth.not_found_grace_s > 0
    assert {"status", "amount", "currency", "payer"} <= truth.pull_carries and truth.sources


async def test_initialize_drops_the_probe_cache(flw_env: Env) -> None:
    async with flw_env(probe_min_interval_s=600) as env:
        assert not (await env.adapter.probe()).detail.endswith("(cached)")
        env.sandbox.faults.add("flutterwave", OutageSpec(mode="503"), endpoints=[EndpointKind.PROBE])
        assert (await env.adapter.probe()).detail.endswith("(cached)")  # Flutterwave not asked
        await env.adapter.initialize()
        with pytest.raises(ProviderError) as down:
            await env.adapter.probe()  # a re-initialised adapter reaches the provider again
        assert down.value.http_status == 503


async def test_ids_reach_the_identifier_sink_as_they_are_learnt(flw_env: Env) -> None:
    async with flw_env() as env:
        charge = await env.adapter.collect(kes("flw-ids-charge"))
        ids = env.identifiers(charge.reference)
        assert ids["transaction_id"] == charge.provider_reference and ids["flw_ref"].startswith("FLW")
        payout = await env.adapter.payout(kes("flw-ids-payout", 2_000, operation=Operation.PAYOUT))
        assert env.identifiers(payout.reference) == {"transfer_id": payout.provider_reference}
        redirect = await env.adapter.collect(payment("flw-ids-ug", 1_500, "UGX", UG_PHONE, "UG"))
        assert env.identifiers(redirect.reference) == {}  # redirect mode: no id until authorised
        await env.clock.advance(5)
        verified = await env.adapter.status(redirect.reference)
        assert env.identifiers(redirect.reference)["transaction_id"] == verified.provider_reference
        paid = await env.adapter.status(charge.reference)
        first = await env.adapter.refund(paid, Money(amount_minor=5_000, currency="KES"))
        second = await env.adapter.refund(paid, Money(amount_minor=10_000, currency="KES"))
        assert env.identifiers(charge.reference)["refund_ids"] == (
            f"{first.provider_reference},{second.provider_reference}"
        )


async def test_status_from_a_fresh_adapter_with_only_the_context(flw_env: Env) -> None:
    async with flw_env() as env:
        charge_request = kes("flw-ctx-charge")
        payout_request = kes("flw-ctx-payout", 3_000, phone="+254709000011", operation=Operation.PAYOUT)
        ghana_request = payment("flw-ctx-gh", 2_550, "GHS", GH_PHONE, "GH")
        charge = await env.adapter.collect(charge_request)
        payout = await env.adapter.payout(payout_request)
        ghana = await env.adapter.collect(ghana_request)  # redirect mode: pulled by tx_ref only
        for when in ("pending", "final"):
            fresh = env.new_adapter()  # a restart, or another replica: no memory at all
            try:
                got_charge = await fresh.status(charge.reference, context=context_of(env, charge_request))
                got_payout = await fresh.status(payout.reference, context=context_of(env, payout_request))
                got_ghana = await fresh.status(ghana.reference, context=context_of(env, ghana_request))
            finally:
                await fresh.close()
            assert got_charge.money == charge_request.money and got_charge.raw["payer"] == KE_PHONE
            assert got_payout.money == payout_request.money and got_payout.raw["payer"] == "+254709000011"
            assert got_ghana.money == Money(amount_minor=2_550, currency="GHS")
            assert got_charge.provider_reference == charge.provider_reference
            assert got_payout.provider_reference == payout.provider_reference
            if when == "pending":
                assert got_charge.status is TransactionStatus.PENDING
                assert (got_payout.status, got_payout.raw_status) == (TransactionStatus.PENDING, "NEW")
                await env.clock.advance(5)
            else:
                assert got_charge.status is TransactionStatus.SUCCEEDED
                assert got_payout.status is TransactionStatus.SUCCEEDED
                assert got_ghana.status is TransactionStatus.SUCCEEDED


async def test_refunds_are_seen_from_the_context(flw_env: Env) -> None:
    async with flw_env() as env:
        request = kes("flw-ctx-refund", 20_000)
        charge = await env.adapter.collect(request)
        await env.clock.advance(5)
        paid = await env.adapter.status(charge.reference)
        refund = await env.adapter.refund(paid)
        fresh = env.new_adapter()
        try:
            reversed_ = await fresh.status(charge.reference, context=context_of(env, request))
            assert reversed_.status is TransactionStatus.REVERSED  # the learnt refunds cover it
            one = await fresh.status(charge.reference, context=context_of(env, request, Operation.REFUND))
            assert (one.status, one.provider_reference, one.money) == (
                TransactionStatus.SUCCEEDED,
                refund.provider_reference,
                Money(amount_minor=20_000, currency="KES"),
            )
            blind = context_of(env, request, Operation.REFUND).model_copy(update={"identifiers": {}})
            unknown = await fresh.status(charge.reference, context=blind)
            assert unknown.status is TransactionStatus.UNKNOWN  # no refund id: no pull path, no guess
        finally:
            await fresh.close()


async def test_not_found_while_lookups_lag_then_found(flw_env: Env) -> None:
    async with flw_env() as env:
        env.sandbox.outbox.realism.set(Realism(lookup_lag_s=4), "flutterwave")
        charge_request = kes("flw-lag-charge")
        payout_request = kes("flw-lag-payout", 2_000, operation=Operation.PAYOUT)
        charge = await env.adapter.collect(charge_request)
        payout = await env.adapter.payout(payout_request)
        blind_adapter = env.new_adapter()  # no ids at all: by tx_ref and by the transfer list
        try:
            for adapter, with_ids in ((env.adapter, True), (blind_adapter, False)):
                for request, reference in (
                    (charge_request, charge.reference),
                    (payout_request, payout.reference),
                ):
                    context = context_of(env, request)
                    if not with_ids:
                        context = context.model_copy(update={"identifiers": {}})
                    with pytest.raises(ProviderError) as lagging:
                        await adapter.status(reference, context=context)
                    assert (lagging.value.error_class, lagging.value.code) == (
                        ErrorClass.NOT_PROCESSED,
                        NOT_FOUND_CODE,
                    )
            # A resend of the transfer meets Flutterwave's duplicate check: it exists even though
            # no lookup sees it yet, so the answer is ambiguous, never "not processed".
            with pytest.raises(ProviderError) as duplicate:
                await blind_adapter.payout(payout_request)
            assert duplicate.value.error_class is ErrorClass.AMBIGUOUS
            assert env.sandbox.ledger.count_by_reference(payout.reference) == 1

            await env.clock.advance(4)
            for adapter in (env.adapter, blind_adapter):
                found = await adapter.status(charge.reference, context=context_of(env, charge_request))
                assert (found.status, found.money) == (TransactionStatus.PENDING, charge_request.money)
                sent = await adapter.status(payout.reference, context=context_of(env, payout_request))
                assert sent.money == payout_request.money
        finally:
            await blind_adapter.close()


# --- webhooks: parse_callback is pure and trusts only the secret hash ------------------------------


CHARGE_COMPLETED: dict[str, Any] = {
    "event": "charge.completed",
    "data": {
        "id": 4193499,
        "tx_ref": "FLW-0123456789abcdef0123456789ab",
        "flw_ref": "FLW123456789012",
        "amount": 25.5,
        "currency": "GHS",
        "charged_amount": 25.5,
        "processor_response": "Approved",
        "status": "successful",
        "payment_type": "mobilemoneygh",
        "created_at": "2026-01-01T00:00:05.000Z",
        "customer": {"id": 1, "name": "Ama", "phone_number": "0550000031", "email": "a@example.com"},
    },
    "event.type": "MOBILEMONEYGH_TRANSACTION",
}
TRANSFER_COMPLETED: dict[str, Any] = {
    "event": "transfer.completed",
    "event.type": "Transfer",
    "data": {
        "id": 33286,
        "account_number": "256772000021",
        "bank_name": "MOBILE MONEY",
        "bank_code": "MPS",
        "fullname": "Bale Gary",
        "currency": "UGX",
        "amount": 1500,
        "fee": 0,
        "status": "FAILED",
        "reference": "FLW-abcdefabcdefabcdefabcdefabcd",
        "narration": "order 42",
        "complete_message": "DISBURSE FAILED: Insufficient funds in customer wallet",
    },
}


def hooked(event: Any, secret: str | None = HASH) -> tuple[bytes, dict[str, str]]:
    raw = event if isinstance(event, bytes) else json.dumps(event).encode()
    return raw, ({"verif-hash": secret} if secret is not None else {})


def parse(adapter: FlutterwaveAdapter, raw: bytes, headers: dict[str, str]) -> Any:
    return adapter.parse_callback(raw, headers, path_kind="webhook", path_reference="-")


def test_a_genuine_charge_webhook_is_authenticated_and_converted_to_minor_units(clock: ManualClock) -> None:
    adapter = adapter_alone(clock, webhook_hash=SecretStr(HASH))
    hint = parse(adapter, *hooked(CHARGE_COMPLETED))
    assert hint is not None and hint.authenticated
    assert (hint.reference, hint.provider_reference, hint.operation, hint.status) == (
        "FLW-0123456789abcdef0123456789ab",
        "4193499",
        Operation.COLLECT,
        TransactionStatus.SUCCEEDED,
    )
    assert hint.money == Money(amount_minor=2_550, currency="GHS")  # 25.5 cedis in pesewas
    assert (hint.payer, hint.provider_message, hint.extras) == (
        "+233550000031",  # Ghana's national form, read with the currency's country
        "Approved",
        {"flw_ref": "FLW123456789012"},
    )
    failed = parse(adapter, *hooked(TRANSFER_COMPLETED))
    assert failed is not None
    assert (failed.operation, failed.status, failed.reference, failed.provider_reference) == (
        Operation.PAYOUT,
        TransactionStatus.FAILED,
        "FLW-abcdefabcdefabcdefabcdefabcd",
        "33286",
    )
    assert failed.money == Money(amount_minor=1_500, currency="UGX")  # no minor unit in UGX
    assert failed.payer == UG_PHONE and failed.provider_message.startswith("DISBURSE FAILED")
    shouted = parse(adapter, hooked(CHARGE_COMPLETED)[0], {"Verif-Hash": HASH})
    assert shouted == hint  # header names are case-insensitive


def test_a_wrong_or_missing_hash_is_refused_and_never_shown(clock: ManualClock) -> None:
    adapter = adapter_alone(clock, webhook_hash=SecretStr(HASH))
    for forged in (
        hooked(CHARGE_COMPLETED, None),
        hooked(CHARGE_COMPLETED, "guess"),
        hooked(CHARGE_COMPLETED, ""),
    ):
        with pytest.raises(CallbackAuthError) as refused:
            parse(adapter, *forged)
        assert "verif-hash" in str(refused.value) and HASH not in str(refused.value)


def test_without_a_configured_hash_webhooks_parse_unauthenticated(clock: ManualClock) -> None:
    adapter = adapter_alone(clock)
    for headers in ({}, {"verif-hash": "anything"}):
        hint = parse(adapter, hooked(CHARGE_COMPLETED)[0], headers)
        assert hint is not None and hint.authenticated is False
        assert hint.money == Money(amount_minor=2_550, currency="GHS")


def test_a_mismatched_amount_is_carried_faithfully_and_parsing_is_pure(clock: ManualClock) -> None:
    adapter = adapter_alone(clock, webhook_hash=SecretStr(HASH))
    cheap = {**CHARGE_COMPLETED, "data": {**CHARGE_COMPLETED["data"], "amount": 1, "currency": "KES"}}
    raw, headers = hooked(cheap)
    first, again = parse(adapter, raw, headers), parse(adapter, raw, headers)
    assert first == again and first.money == Money(amount_minor=100, currency="KES")
    assert adapter._identifiers == {}  # nothing learnt from a claim


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"<html>not json</html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"data": {}}).encode(), "missing event"),
        (json.dumps({"event": "charge.completed", "data": []}).encode(), "missing data"),
        (json.dumps({"event": "charge.completed", "data": {"status": "successful"}}).encode(), "data.tx_ref"),
        (
            json.dumps({"event": "charge.completed", "data": {"tx_ref": "FLW-x", "amount": 10}}).encode(),
            "data.status",
        ),
        (
            json.dumps(
                {"event": "charge.completed", "data": {**CHARGE_COMPLETED["data"], "amount": "lots"}}
            ).encode(),
            "data.amount",
        ),
        (
            json.dumps(
                {"event": "charge.completed", "data": {**CHARGE_COMPLETED["data"], "amount": 10.001}}
            ).encode(),
            "data.amount",
        ),
        (
            json.dumps({"event": "transfer.completed", "data": {"status": "FAILED"}}).encode(),
            "data.reference",
        ),
    ],
)
def test_malformed_webhooks(clock: ManualClock, body: bytes, names: str) -> None:
    with pytest.raises(MalformedCallback) as malformed:
        parse(adapter_alone(clock, webhook_hash=SecretStr(HASH)), *hooked(body))
    assert names in str(malformed.value)


def test_events_about_no_payment_are_none(clock: ManualClock) -> None:
    adapter = adapter_alone(clock, webhook_hash=SecretStr(HASH))
    for event in ("subscription.cancelled", "chargeback.created"):
        assert parse(adapter, *hooked({"event": event, "data": {"id": 1}})) is None


def test_the_webhook_hash_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.setenv("FLUTTERWAVE_SECRET_KEY", "FLWSECK-live-0000-X")
    monkeypatch.setenv("FLUTTERWAVE_WEBHOOK_HASH", "from-the-dashboard")
    settings = FlutterwaveSettings()
    assert (
        settings.webhook_hash is not None and settings.webhook_hash.get_secret_value() == "from-the-dashboard"
    )
    assert "from-the-dashboard" not in repr(settings)
    monkeypatch.setenv("FLUTTERWAVE_WEBHOOK_HASH", "")
    assert FlutterwaveSettings().webhook_hash is None  # empty is "not set", never "accept empty"


# --- reconciliation by list ------------------------------------------------------------------------


async def test_list_transactions_walks_pages_and_keeps_the_exact_window(
    flw_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flutterwave_emulator, "LIST_PAGE_SIZE", 2)  # 5 charges: three pages
    async with flw_env() as env:
        start = env.clock.now()
        references = []
        for n in range(5):
            request = kes(f"flw-list-{n}", 1_000 + n, phone=f"+25470900004{n}")
            references.append((await env.adapter.collect(request)).reference)
            await env.clock.advance(10)
        learnt_before = list(env.learnt)
        listed = await env.adapter.list_transactions(start, start + 30)  # the day, cut to 30 s
        assert [t.reference for t in listed] == references[2::-1]  # newest first
        first = {t.reference: t for t in listed}[references[0]]
        assert (first.status, first.money) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=1_000, currency="KES"),
        )
        assert "payer" not in first.raw  # list rows carry no phone
        everything = await env.adapter.list_transactions(start, env.clock.now())
        assert sorted(t.reference for t in everything) == sorted(references)
        assert env.learnt == learnt_before  # listing learns nothing: rows need not be ours


# --- the classification table ------------------------------------------------------------------------


def scripted(clock: ManualClock, answers: dict[str, httpx.Response]) -> FlutterwaveAdapter:
    """Flutterwave answering each path as given (404 elsewhere)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.get(request.url.path, httpx.Response(404, json={"status": "error", "message": "nope"}))

    return FlutterwaveAdapter(
        flw_settings("http://flutterwave.invalid"), clock, transport=httpx.MockTransport(handler)
    )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(401, json={"status": "error", "message": "Invalid authorization key"}), "auth"),
        (httpx.Response(400, json={"status": "error", "message": "merchant secret key required"}), "auth"),
        (httpx.Response(200, json={"status": "error", "message": "Something refused"}), "invalid_request"),
        (httpx.Response(400, json={"status": "error", "message": "Cardno is required"}), "invalid_request"),
        (
            httpx.Response(
                500,
                json={
                    "error_id": "ERRNO1",
                    "message": "Application error. Please contact support",
                    "code": "app_error",
                },
            ),
            "ambiguous",
        ),
        (httpx.Response(503, text="Service Unavailable"), "ambiguous"),
    ],
    ids=["bad-key", "no-key", "2xx-error", "validation", "app-error", "bare-503"],
)
async def test_charge_answers_are_classified_by_the_table(
    clock: ManualClock, answer: httpx.Response, expected: str
) -> None:
    adapter = scripted(clock, {"/v3/charges": answer})
    with pytest.raises(ProviderError) as refused:
        await adapter.collect(kes("flw-order-rule"))
    assert refused.value.error_class.value == expected
    await adapter.close()


async def test_the_merchants_empty_balance_on_a_transfer_is_not_the_customers(clock: ManualClock) -> None:
    # Flutterwave calls the merchant its customer: "customer wallet" here is the merchant's balance.
    failed = {
        "id": 1933,
        "reference": FlutterwaveAdapter.reference_for("flw-payout-float"),
        "status": "FAILED",
        "amount": 1000,
        "currency": "KES",
        "account_number": "254709000004",
        "complete_message": "DISBURSE FAILED: Insufficient funds in customer wallet",
    }
    adapter = scripted(
        clock,
        {
            "/v3/transfers/1933": httpx.Response(
                200, json={"status": "success", "message": "ok", "data": failed}
            )
        },
    )
    request = kes("flw-payout-float", 100_000, operation=Operation.PAYOUT)
    context = PaymentContext(
        reference=str(failed["reference"]),
        operation=Operation.PAYOUT,
        money=request.money,
        phone=request.phone,
        country=request.country,
        identifiers={"transfer_id": "1933"},
    )
    txn = await adapter.status(context.reference, context=context)
    assert (txn.status, txn.provider_code) == (TransactionStatus.FAILED, "FAILED")
    assert txn.provider_code not in FlutterwaveAdapter.customer_codes
    await adapter.close()


def test_error_rules_cite_their_sources() -> None:
    matches = [rule.match for rule in FlutterwaveAdapter.error_rules]
    assert len(matches) == len(set(matches))
    for rule in FlutterwaveAdapter.error_rules:
        assert rule.source.strip(), rule.match
        if rule.error_class is ErrorClass.NOT_PROCESSED:
            assert not rule.source.startswith(NO_SOURCE), rule.match
    fivexx = [rule for rule in ERROR_RULES if rule.match.startswith("HTTP 5xx")]
    assert [rule.error_class for rule in fivexx] == [ErrorClass.AMBIGUOUS]
    assert {"Insufficient funds", "Request cancelled by user"} <= FlutterwaveAdapter.customer_codes
