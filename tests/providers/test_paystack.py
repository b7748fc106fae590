"""PaystackAdapter against the Paystack emulator over loopback HTTP, time driven by a manual clock."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from pydantic import SecretStr

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.providers import paystack as paystack_module
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
from mcp_autonomy.providers.http import NO_SOURCE
from mcp_autonomy.providers.paystack import (
    ABANDONED_FINAL_AFTER_S,
    ERROR_RULES,
    PaystackAdapter,
    PaystackSettings,
)
from mcp_autonomy.sandbox import (
    AcceptThenHangSpec,
    CredentialExpirySpec,
    CustomerBehavior,
    EndpointKind,
    ErrorRateSpec,
    LedgerStatus,
    OutageSpec,
    PaystackSandboxConfig,
    ThrottleSpec,
)
from mcp_autonomy.sandbox.core import Realism

if TYPE_CHECKING:
    from tests.providers.conftest import PaystackEnv

pytestmark = pytest.mark.anyio

KE_PHONE = "+254700000011"
GH_PHONE = "+233550000012"
SECRET = PaystackSandboxConfig().secret_keys[0]
Env = Callable[..., AbstractAsyncContextManager["PaystackEnv"]]
MakePayment = Callable[..., PaymentRequest]


def kes(make_payment: MakePayment, key: str, amount_minor: int = 15_000, **kw: Any) -> PaymentRequest:
    return make_payment(key, amount_minor, "KES", kw.pop("phone", KE_PHONE), "KE", **kw)


def ghs(make_payment: MakePayment, key: str, amount_minor: int = 2_500, **kw: Any) -> PaymentRequest:
    return make_payment(key, amount_minor, "GHS", kw.pop("phone", GH_PHONE), "GH", **kw)


async def test_mobile_money_charge_succeeds_end_to_end(paystack_env: Env, make_payment: MakePayment) -> None:
    async with paystack_env() as env:
        await env.adapter.initialize()
        txn = await env.adapter.collect(kes(make_payment, "ps-order-0001"))
        assert (txn.status, txn.raw_status) == (TransactionStatus.PENDING, "pay_offline")
        assert txn.reference == PaystackAdapter.reference_for("ps-order-0001")

        polled = await env.adapter.status(txn.reference)
        assert (polled.status, polled.raw_status) == (TransactionStatus.PENDING, "ongoing")

        await env.clock.advance(5)
        polled = await env.adapter.status(txn.reference)
        assert polled.status is TransactionStatus.SUCCEEDED
        assert polled.money == Money(amount_minor=15_000, currency="KES")
        assert polled.provider_reference is not None
        [entry] = env.sandbox.ledger.charges_for(KE_PHONE)
        assert (entry.status, entry.reference) == (LedgerStatus.SUCCEEDED, txn.reference)


async def test_vodafone_charge_needs_the_otp(paystack_env: Env, make_payment: MakePayment) -> None:
    async with paystack_env() as env:
        txn = await env.adapter.collect(ghs(make_payment, "ps-order-vod", mobile_money_provider="vod"))
        assert txn.raw_status == "send_otp"
        await env.clock.advance(60)
        assert (
            await env.adapter.status(txn.reference)
        ).status is TransactionStatus.PENDING  # waits for the OTP
        with pytest.raises(ProviderError) as wrong:
            await env.adapter.submit_otp(txn.reference, "000000")
        # "Provided registration token is invalid": the customer's OTP is wrong, like a wrong PIN.
        assert wrong.value.error_class is ErrorClass.CUSTOMER
        offline = await env.adapter.submit_otp(txn.reference, "123456")
        assert offline.raw_status == "pay_offline"
        await env.clock.advance(5)
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.SUCCEEDED
        # Ghanaian numbers travel in national form and are recorded as E.164.
        assert env.sandbox.ledger.charges_for(GH_PHONE)[0].amount_minor == 2_500


async def test_declined_charge_fails(paystack_env: Env, make_payment: MakePayment) -> None:
    async with paystack_env() as env:
        env.sandbox.customers.set(
            CustomerBehavior(msisdn=KE_PHONE, action="decline", decline_code="Insufficient Funds")
        )
        txn = await env.adapter.collect(kes(make_payment, "ps-order-decline"))
        await env.clock.advance(5)
        polled = await env.adapter.status(txn.reference)
        assert (polled.status, polled.raw_status) == (TransactionStatus.FAILED, "failed")
        assert polled.provider_message == "Insufficient Funds"
        # The customer's reason is the result's code, so the engine can tell it from the provider's.
        assert polled.provider_code == "Insufficient Funds"
        assert polled.provider_code in PaystackAdapter.customer_codes


async def test_abandoned_is_pending_while_the_customer_may_still_complete(
    paystack_env: Env, make_payment: MakePayment
) -> None:
    """Abandoned is not final at first (failing over then could charge twice), then it fails."""
    async with paystack_env() as env:
        env.sandbox.customers.set(CustomerBehavior(msisdn=KE_PHONE, action="ignore"))
        txn = await env.adapter.collect(kes(make_payment, "ps-order-ignore"))
        await env.clock.advance(180)
        polled = await env.adapter.status(txn.reference)
        assert (polled.status, polled.raw_status) == (TransactionStatus.PENDING, "abandoned")
        assert polled.provider_message is not None and "may still complete" in polled.provider_message
        await env.clock.advance(ABANDONED_FINAL_AFTER_S - 180)
        polled = await env.adapter.status(txn.reference)
        assert (polled.status, polled.raw_status) == (TransactionStatus.FAILED, "abandoned")
        assert polled.provider_code == "abandoned" and "abandoned" in PaystackAdapter.customer_codes
        assert not env.sandbox.ledger.successful_charges_for(KE_PHONE)


async def test_invalid_requests(paystack_env: Env, make_payment: MakePayment) -> None:
    async with paystack_env() as env:
        with pytest.raises(ProviderError) as currency:
            await env.adapter.collect(make_payment("ps-order-ngn", 10_000, "NGN", "+2348000000013", "NG"))
        assert currency.value.error_class is ErrorClass.INVALID_REQUEST  # no NGN mobile money
        with pytest.raises(ProviderError) as wallet:
            await env.adapter.collect(kes(make_payment, "ps-order-mtn-ke", mobile_money_provider="mtn"))
        assert wallet.value.error_class is ErrorClass.INVALID_REQUEST

        with pytest.raises(ProviderError) as remote:
            await env.adapter.collect(kes(make_payment, "ps-order-email", email="not-an-email"))
        error = remote.value
        assert (error.error_class, error.http_status, error.code) == (
            ErrorClass.INVALID_REQUEST,
            400,
            "missing_params",
        )
        assert "Email address is required" in error.provider_message
        assert len(env.sandbox.ledger) == 0


async def test_wrong_key_is_an_auth_error_and_never_leaks(
    paystack_env: Env, make_payment: MakePayment
) -> None:
    async with paystack_env(secret_key=SecretStr("sk_test_wrong_key_5d1c")) as env:
        with pytest.raises(ProviderError) as refused:
            await env.adapter.collect(kes(make_payment, "ps-order-key"))
        assert (refused.value.error_class, refused.value.http_status) == (ErrorClass.AUTH, 401)
        assert refused.value.provider_message.endswith("Invalid key")
        assert "sk_test_wrong_key_5d1c" not in str(refused.value)
        assert "sk_test_wrong_key_5d1c" not in repr(env.settings)
        with pytest.raises(ProviderError) as probe:
            await env.adapter.probe()
        assert probe.value.error_class is ErrorClass.AUTH


async def test_throttle_is_rate_limited_with_retry_after(
    paystack_env: Env, make_payment: MakePayment
) -> None:
    async with paystack_env() as env:
        env.sandbox.faults.add("paystack", ThrottleSpec(max_per_s=2, retry_after_s=7))
        await env.adapter.probe()
        await env.adapter.collect(kes(make_payment, "ps-order-r1"))
        with pytest.raises(ProviderError) as limited:
            await env.adapter.collect(kes(make_payment, "ps-order-r2", phone="+254700000014"))
        assert (limited.value.error_class, limited.value.http_status) == (ErrorClass.RATE_LIMITED, 429)
        assert limited.value.retry_after_s == 7
        assert limited.value.safe_to_fail_over


async def test_refused_outage_is_not_processed(paystack_env: Env, make_payment: MakePayment) -> None:
    async with paystack_env() as env:
        env.sandbox.faults.add("paystack", OutageSpec(mode="refused"), start_s=10, end_s=20)
        await env.adapter.collect(kes(make_payment, "ps-order-before"))
        await env.clock.advance(10)
        with pytest.raises(ProviderError) as down:
            await env.adapter.collect(kes(make_payment, "ps-order-during", phone="+254700000015"))
        assert (down.value.error_class, down.value.code) == (ErrorClass.NOT_PROCESSED, "ConnectError")
        await env.clock.advance(10)
        await env.adapter.collect(kes(make_payment, "ps-order-during", phone="+254700000015"))
        assert len(env.sandbox.ledger) == 2


async def test_accept_then_hang_is_ambiguous_resolved_by_verify_and_never_charged_twice(
    paystack_env: Env, make_payment: MakePayment
) -> None:
    async with paystack_env(timeout_s=0.3) as env:
        await env.adapter.initialize()
        env.sandbox.faults.add("paystack", AcceptThenHangSpec(), endpoints=[EndpointKind.COLLECT])
        request = kes(make_payment, "ps-order-hang")
        with pytest.raises(ProviderError) as hung:
            await env.adapter.collect(request)
        assert (hung.value.error_class, hung.value.code) == (ErrorClass.AMBIGUOUS, "ReadTimeout")

        reference = PaystackAdapter.reference_for(request.idempotency_key)
        found = await env.adapter.status(reference)  # the idempotent status query resolves it
        assert found.status is TransactionStatus.PENDING

        env.sandbox.faults.clear()
        replay = await env.adapter.collect(request)  # duplicate_reference -> the first charge
        assert replay.reference == reference
        await env.clock.advance(5)
        assert (await env.adapter.status(reference)).status is TransactionStatus.SUCCEEDED
        assert env.sandbox.ledger.count_by_reference(reference) == 1
        assert len(env.sandbox.ledger.successful_charges_for(KE_PHONE)) == 1


async def test_5xx_after_processing_is_ambiguous_and_found_by_status(
    paystack_env: Env, make_payment: MakePayment
) -> None:
    async with paystack_env() as env:
        env.sandbox.faults.add(
            "paystack", ErrorRateSpec(rate=1.0, after_processing=True), endpoints=[EndpointKind.COLLECT]
        )
        request = kes(make_payment, "ps-order-500")
        with pytest.raises(ProviderError) as failed:
            await env.adapter.collect(request)
        assert (failed.value.error_class, failed.value.http_status) == (ErrorClass.AMBIGUOUS, 500)
        found = await env.adapter.status(PaystackAdapter.reference_for(request.idempotency_key))
        assert found.status is TransactionStatus.PENDING


async def test_unknown_reference_is_not_found(paystack_env: Env) -> None:
    async with paystack_env() as env:
        with pytest.raises(ProviderError) as missing:
            await env.adapter.status("ps-never-sent-0000000000000000")
        assert (missing.value.error_class, missing.value.code) == (ErrorClass.NOT_PROCESSED, NOT_FOUND_CODE)


async def test_rotated_key_is_picked_up_on_refresh(paystack_env: Env, make_payment: MakePayment) -> None:
    rotated = "sk_test_rotated_1111111111111111111111"
    current: dict[str, str] = {"key": "sk_test_sandbox_0000000000000000000000"}

    def load() -> PaystackSettings:
        return PaystackSettings(
            secret_key=SecretStr(current["key"]),
            base_url=env.settings.base_url,
            customer_email_domain="customers.example.com",
        )

    async with paystack_env(settings_loader=load) as env:
        await env.adapter.collect(kes(make_payment, "ps-order-k1"))
        env.sandbox.faults.add("paystack", CredentialExpirySpec(replacement_secret=rotated))
        with pytest.raises(ProviderError) as revoked:
            await env.adapter.collect(kes(make_payment, "ps-order-k2", phone="+254700000016"))
        assert revoked.value.error_class is ErrorClass.AUTH
        assert len(env.sandbox.ledger) == 1

        current["key"] = rotated  # the operator rotates PAYSTACK_SECRET_KEY
        await env.adapter.refresh_credentials()
        txn = await env.adapter.collect(kes(make_payment, "ps-order-k2", phone="+254700000016"))
        assert txn.status is TransactionStatus.PENDING
        assert len(env.sandbox.ledger) == 2


async def test_payout_transfers_once_and_completes(paystack_env: Env, make_payment: MakePayment) -> None:
    async with paystack_env() as env:
        request = ghs(make_payment, "ps-payout-0001", 7_500, operation=Operation.PAYOUT)
        first = await env.adapter.payout(request)
        assert (first.status, first.raw_status) == (TransactionStatus.PENDING, "pending")
        again = await env.adapter.payout(request)  # same reference: refused, answered by verify
        assert again.reference == first.reference
        assert len(env.sandbox.ledger.entries(operation="payout")) == 1

        await env.clock.advance(3)
        done = await env.adapter.status(first.reference)  # transaction verify misses, transfer verify hits
        assert (done.status, done.money) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=7_500, currency="GHS"),
        )


async def test_failed_payout(paystack_env: Env, make_payment: MakePayment) -> None:
    async with paystack_env() as env:
        env.sandbox.customers.set(CustomerBehavior(msisdn=KE_PHONE, payout_result_code="Account closed"))
        txn = await env.adapter.payout(kes(make_payment, "ps-payout-0002", operation=Operation.PAYOUT))
        await env.clock.advance(3)
        failed = await env.adapter.status(txn.reference)
        assert (failed.status, failed.provider_code) == (TransactionStatus.FAILED, "Account closed")
        assert failed.provider_code in PaystackAdapter.customer_codes


async def test_refund_reverses_the_charge(paystack_env: Env, make_payment: MakePayment) -> None:
    async with paystack_env() as env:
        txn = await env.adapter.collect(kes(make_payment, "ps-order-refund"))
        await env.clock.advance(5)
        paid = await env.adapter.status(txn.reference)
        refund = await env.adapter.refund(paid)
        assert (refund.status, refund.raw_status) == (TransactionStatus.PENDING, "pending")
        assert refund.money == Money(amount_minor=15_000, currency="KES")
        with pytest.raises(ProviderError) as twice:
            await env.adapter.refund(paid)
        assert twice.value.error_class is ErrorClass.INVALID_REQUEST  # "Transaction has been fully reversed"

        await env.clock.advance(5)
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.REVERSED
        assert env.sandbox.ledger.charges_for(KE_PHONE)[0].status is LedgerStatus.REVERSED
        assert env.sandbox.ledger.entries(operation="refund")[0].amount_minor == 15_000


async def test_probe(paystack_env: Env) -> None:
    async with paystack_env() as env:
        result = await env.adapter.probe()
        assert result.ok and "balance" in result.detail
        env.sandbox.faults.add("paystack", OutageSpec(mode="503"), endpoints=[EndpointKind.PROBE])
        with pytest.raises(ProviderError) as down:
            await env.adapter.probe()
        assert (down.value.error_class, down.value.http_status) == (ErrorClass.NOT_PROCESSED, 503)


async def test_paystack_protocol_shapes(paystack_env: Env) -> None:
    """The emulator answers with Paystack's envelope and documented messages."""
    async with paystack_env() as env, httpx.AsyncClient(base_url=env.address.url("paystack")) as client:
        missing = await client.get("/balance")
        assert missing.json() == {"status": False, "message": "No Authorization Header was found"}
        garbled = await client.get("/balance", headers={"Authorization": "Token x"})
        assert garbled.json()["message"] == "Format is Authorization Bearer [secret key]"
        auth = {"Authorization": f"Bearer {env.settings.secret_key.get_secret_value()}"}
        charge = {
            "email": "a@example.com",
            "amount": 100,
            "currency": "KES",
            "reference": "dup-ref-1",
            "mobile_money": {"phone": "+254700000017", "provider": "mpesa"},
        }
        first = await client.post("/charge", json=charge, headers=auth)
        assert first.json() == {
            "status": True,
            "message": "Charge attempted",
            "data": {
                "reference": "dup-ref-1",
                "status": "pay_offline",
                "display_text": "Please complete authorization process on your mobile phone",
            },
        }
        duplicate = await client.post("/charge", json=charge, headers=auth)
        assert duplicate.status_code == 400
        assert duplicate.json()["code"] == "duplicate_reference"
        assert duplicate.json()["type"] == "validation_error"
        no_channel = await client.post(
            "/charge", json={"email": "a@example.com", "amount": 100}, headers=auth
        )
        assert no_channel.json()["message"].startswith("One of Authorization code, card object")
        banks = await client.get("/bank", params={"currency": "KES", "type": "mobile_money"}, headers=auth)
        assert [b["code"] for b in banks.json()["data"]] == ["MPESA"]


async def test_build_adapter_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, clock: Any
) -> None:
    from pydantic import ValidationError

    from mcp_autonomy.providers import build_adapter

    monkeypatch.chdir(tmp_path)  # no developer .env
    monkeypatch.delenv("PAYSTACK_SECRET_KEY", raising=False)
    with pytest.raises(ValidationError):
        build_adapter("paystack", clock)
    monkeypatch.setenv("PAYSTACK_SECRET_KEY", "sk_test_from_env_000000000000000000")
    adapter = build_adapter("paystack", clock, base_url="http://127.0.0.1:9/paystack")
    assert isinstance(adapter, PaystackAdapter) and adapter.name == "paystack"
    assert "KES" in adapter.capabilities.currencies
    with pytest.raises(KeyError):
        build_adapter("orange", clock)


# --- money truth: contexts, identifiers, lookup lag -----------------------------------------------


def context_of(
    env: PaystackEnv, request: PaymentRequest, operation: Operation | None = None
) -> PaymentContext:
    """What the engine stored for `request`: its facts and every id the sink received."""
    reference = PaystackAdapter.reference_for(request.idempotency_key)
    return PaymentContext(
        reference=reference,
        operation=operation or request.operation,
        money=request.money,
        phone=request.phone,
        country=request.country,
        identifiers=env.identifiers(reference),
    )


def adapter_alone(clock: ManualClock) -> PaystackAdapter:
    """An adapter that never calls out: parse_callback and money_truth need no provider."""
    return PaystackAdapter(
        PaystackSettings(secret_key=SecretStr(SECRET), base_url="http://127.0.0.1:9"), clock
    )


async def test_the_adapter_is_a_callback_source_with_its_money_truth(clock: ManualClock) -> None:
    adapter = adapter_alone(clock)
    assert isinstance(adapter, CallbackSource) and isinstance(adapter, ProviderAdapter)
    truth = PaystackAdapter.money_truth
    assert truth.callback_auth == "hmac_sha512"
    assert {"status", "amount", "currency", "payer"} <= truth.pull_carries
    assert truth.not_found_grace_s > 0 and truth.sources


async def test_initialize_drops_the_probe_cache(paystack_env: Env) -> None:
    async with paystack_env(probe_min_interval_s=600) as env:
        first = await env.adapter.probe()
        assert first.ok and not first.detail.endswith("(cached)")
        env.sandbox.faults.add("paystack", OutageSpec(mode="503"), endpoints=[EndpointKind.PROBE])
        cached = await env.adapter.probe()  # within the interval: Paystack is not asked
        assert cached.ok and cached.detail.endswith("(cached)")
        await env.adapter.initialize()
        with pytest.raises(ProviderError) as down:
            await env.adapter.probe()  # a re-initialised adapter reaches the provider again
        assert down.value.http_status == 503


async def test_ids_reach_the_identifier_sink_as_they_are_learnt(
    paystack_env: Env, make_payment: MakePayment
) -> None:
    async with paystack_env() as env:
        request = ghs(make_payment, "ps-payout-ids", 5_000, operation=Operation.PAYOUT)
        txn = await env.adapter.payout(request)
        seen_at_return = [kind for ref, kind, _ in env.learnt if ref == txn.reference]
        assert seen_at_return == ["recipient_code", "transfer_code", "transfer_id"]
        ids = env.identifiers(txn.reference)
        assert ids["recipient_code"].startswith("RCP_") and ids["transfer_code"].startswith("TRF_")
        assert ids["transfer_id"] == txn.provider_reference

        charge = await env.adapter.collect(kes(make_payment, "ps-order-ids"))
        assert env.identifiers(charge.reference) == {}  # a pending charge's answer carries no id
        await env.clock.advance(5)
        done = await env.adapter.status(charge.reference)
        assert env.identifiers(charge.reference) == {"transaction_id": done.provider_reference}
        refund = await env.adapter.refund(done)
        assert env.identifiers(charge.reference)["refund_id"] == refund.provider_reference


async def test_the_recipient_is_reported_even_when_the_transfer_then_fails(
    paystack_env: Env, make_payment: MakePayment
) -> None:
    async with paystack_env(config=PaystackSandboxConfig(balances_minor={"GHS": 1_000})) as env:
        request = ghs(make_payment, "ps-payout-broke", 5_000, operation=Operation.PAYOUT)
        with pytest.raises(ProviderError) as refused:
            await env.adapter.payout(request)
        assert refused.value.code == "insufficient_balance"
        reference = PaystackAdapter.reference_for(request.idempotency_key)
        assert env.identifiers(reference)["recipient_code"].startswith("RCP_")
        assert env.sandbox.ledger.entries(operation="payout") == []


async def test_status_from_a_fresh_adapter_with_only_the_context(
    paystack_env: Env, make_payment: MakePayment
) -> None:
    async with paystack_env() as env:
        charge_request = kes(make_payment, "ps-order-ctx")
        payout_request = kes(
            make_payment, "ps-payout-ctx", 4_000, phone="+254700000021", operation=Operation.PAYOUT
        )
        charge = await env.adapter.collect(charge_request)
        payout = await env.adapter.payout(payout_request)
        for when in ("pending", "final"):
            fresh = env.new_adapter()  # a restart, or another replica: no memory at all
            try:
                got_charge = await fresh.status(charge.reference, context=context_of(env, charge_request))
                got_payout = await fresh.status(payout.reference, context=context_of(env, payout_request))
            finally:
                await fresh.close()
            # The pull carries amount, currency and the phone: all three come from Paystack.
            assert got_charge.money == charge_request.money and got_charge.raw["payer"] == KE_PHONE
            assert got_payout.money == payout_request.money and got_payout.raw["payer"] == "+254700000021"
            if when == "pending":
                assert (got_charge.status, got_charge.raw_status) == (TransactionStatus.PENDING, "ongoing")
                assert (got_payout.status, got_payout.raw_status) == (TransactionStatus.PENDING, "pending")
                await env.clock.advance(5)
            else:
                assert got_charge.status is TransactionStatus.SUCCEEDED
                assert got_payout.status is TransactionStatus.SUCCEEDED
                assert got_payout.provider_reference == env.identifiers(payout.reference)["transfer_id"]


async def test_refund_status_from_the_context(paystack_env: Env, make_payment: MakePayment) -> None:
    async with paystack_env() as env:
        request = kes(make_payment, "ps-order-refund-ctx")
        txn = await env.adapter.collect(request)
        await env.clock.advance(5)
        refund = await env.adapter.refund(await env.adapter.status(txn.reference))
        context = context_of(env, request, Operation.REFUND)
        fresh = env.new_adapter()
        try:
            queued = await fresh.status(txn.reference, context=context)
            assert (queued.status, queued.provider_reference) == (
                TransactionStatus.PENDING,
                refund.provider_reference,
            )
            await env.clock.advance(5)
            done = await fresh.status(txn.reference, context=context)
            assert (done.status, done.money) == (TransactionStatus.SUCCEEDED, request.money)
            blind = await fresh.status(txn.reference, context=context.model_copy(update={"identifiers": {}}))
            assert blind.status is TransactionStatus.UNKNOWN  # no refund id: no pull path, no guess
            assert blind.provider_message is not None and "refund id" in blind.provider_message
        finally:
            await fresh.close()


async def test_not_found_while_lookups_lag_then_found(paystack_env: Env, make_payment: MakePayment) -> None:
    async with paystack_env() as env:
        env.sandbox.outbox.realism.set(Realism(lookup_lag_s=4), "paystack")
        charge_request = kes(make_payment, "ps-order-lag")
        payout_request = kes(make_payment, "ps-payout-lag", 2_000, operation=Operation.PAYOUT)
        charge = await env.adapter.collect(charge_request)
        payout = await env.adapter.payout(payout_request)
        for request, reference in ((charge_request, charge.reference), (payout_request, payout.reference)):
            with pytest.raises(ProviderError) as lagging:
                await env.adapter.status(reference, context=context_of(env, request))
            assert (lagging.value.error_class, lagging.value.code) == (
                ErrorClass.NOT_PROCESSED,
                NOT_FOUND_CODE,
            )
        # A resend meets duplicate_reference: the charge exists even though verify cannot see it,
        # so the answer is ambiguous, never "not found".
        with pytest.raises(ProviderError) as duplicate:
            await env.adapter.collect(charge_request)
        assert duplicate.value.error_class is ErrorClass.AMBIGUOUS
        assert env.sandbox.ledger.count_by_reference(charge.reference) == 1

        await env.clock.advance(4)
        found = await env.adapter.status(charge.reference, context=context_of(env, charge_request))
        assert (found.status, found.money) == (TransactionStatus.PENDING, charge_request.money)
        sent = await env.adapter.status(payout.reference, context=context_of(env, payout_request))
        assert (sent.status, sent.money) == (
            TransactionStatus.SUCCEEDED,
            payout_request.money,
        )  # 3 s transfer


# --- webhooks: parse_callback is pure and trusts only the signature ------------------------------


def signed(event: Any, key: str = SECRET) -> tuple[bytes, dict[str, str]]:
    """A webhook body (an object, or raw bytes as sent) and its x-paystack-signature header."""
    raw = event if isinstance(event, bytes) else json.dumps(event).encode()
    return raw, {"x-paystack-signature": hmac.new(key.encode(), raw, hashlib.sha512).hexdigest()}


CHARGE_SUCCESS: dict[str, Any] = {
    "event": "charge.success",
    "data": {
        "id": 4099260516,
        "domain": "test",
        "status": "success",
        "reference": "ps-0123456789abcdef0123456789a",
        "amount": 15_050,
        "gateway_response": "Approved",
        "currency": "KES",
        "channel": "mobile_money",
        "customer": {"email": "a@example.com", "phone": "0700000011", "international_format_phone": None},
    },
}
TRANSFER_FAILED: dict[str, Any] = {
    "event": "transfer.failed",
    "data": {
        "amount": 7_500,
        "currency": "GHS",
        "id": 37272792,
        "reference": "ps-abcdefabcdefabcdefabcdefabcde",
        "status": "failed",
        "transfer_code": "TRF_wpl1dem4967avzm",
        "gateway_response": "Account closed",
        "recipient": {
            "recipient_code": "RCP_x",
            "details": {"account_number": "0550000012", "bank_code": "MTN"},
        },
    },
}
REFUND_PROCESSED: dict[str, Any] = {
    "event": "refund.processed",
    "data": {
        "status": "processed",
        "transaction_reference": "ps-0123456789abcdef0123456789a",
        "refund_reference": "132013318360",
        "amount": "5000",
        "currency": "KES",
        "processor": "mpesa",
        "customer": {"first_name": "Ada", "last_name": "L", "email": "a@example.com"},
        "integration": 412829,
        "domain": "live",
    },
}


def parse(adapter: PaystackAdapter, raw: bytes, headers: dict[str, str]) -> Any:
    return adapter.parse_callback(raw, headers, path_kind="webhook", path_reference="-")


def test_a_genuine_charge_success_is_authenticated_and_read_in_subunits(clock: ManualClock) -> None:
    adapter = adapter_alone(clock)
    hint = parse(adapter, *signed(CHARGE_SUCCESS))
    assert hint is not None and hint.authenticated
    assert (hint.reference, hint.provider_reference, hint.operation, hint.status) == (
        "ps-0123456789abcdef0123456789a",
        "4099260516",
        Operation.COLLECT,
        TransactionStatus.SUCCEEDED,
    )
    assert hint.money == Money(amount_minor=15_050, currency="KES")  # subunits as sent, not 15050 KES x 100
    assert hint.payer == "+254700000011"  # a national number, read with the currency's country
    assert hint.provider_message == "Approved"
    # Header names are case-insensitive, whatever mapping carries them.
    raw, headers = signed(CHARGE_SUCCESS)
    shouted = parse(adapter, raw, {"X-Paystack-Signature": headers["x-paystack-signature"]})
    assert shouted == hint


def test_transfer_and_refund_events(clock: ManualClock) -> None:
    adapter = adapter_alone(clock)
    failed = parse(adapter, *signed(TRANSFER_FAILED))
    assert failed is not None
    assert (failed.operation, failed.status, failed.provider_reference, failed.payer) == (
        Operation.PAYOUT,
        TransactionStatus.FAILED,
        "37272792",
        "+233550000012",
    )
    assert (failed.money, failed.provider_message, failed.extras) == (
        Money(amount_minor=7_500, currency="GHS"),
        "Account closed",
        {"transfer_code": "TRF_wpl1dem4967avzm"},
    )
    reversed_ = {"event": "transfer.reversed", "data": {**TRANSFER_FAILED["data"], "status": "reversed"}}
    assert parse(adapter, *signed(reversed_)).status is TransactionStatus.REVERSED
    refund = parse(adapter, *signed(REFUND_PROCESSED))
    assert refund is not None
    assert (refund.operation, refund.status, refund.reference, refund.money, refund.payer) == (
        Operation.REFUND,
        TransactionStatus.SUCCEEDED,
        "ps-0123456789abcdef0123456789a",
        Money(amount_minor=5_000, currency="KES"),  # Paystack sends this amount as a string
        None,
    )
    pending = {"event": "refund.pending", "data": {**REFUND_PROCESSED["data"], "status": "pending"}}
    assert parse(adapter, *signed(pending)).status is TransactionStatus.PENDING


def test_forged_webhooks_are_refused_and_never_show_the_secret(clock: ManualClock) -> None:
    adapter = adapter_alone(clock)
    raw, headers = signed(CHARGE_SUCCESS)
    forgeries: list[tuple[bytes, dict[str, str]]] = [
        (raw, {}),  # no signature
        signed(CHARGE_SUCCESS, key="sk_test_someone_else_000000000000000"),  # another key
        (raw.replace(b"15050", b"15"), headers),  # a body changed after signing
        (raw, {"x-paystack-signature": ""}),
    ]
    for body, forged in forgeries:
        with pytest.raises(CallbackAuthError) as refused:
            parse(adapter, body, forged)
        assert "x-paystack-signature" in str(refused.value)
        assert SECRET not in str(refused.value)


def test_a_mismatched_amount_is_carried_faithfully(clock: ManualClock) -> None:
    """The hint claims what the body says; the engine compares it with the pull and refuses."""
    adapter = adapter_alone(clock)
    cheap = {"event": "charge.success", "data": {**CHARGE_SUCCESS["data"], "amount": 100, "currency": "GHS"}}
    hint = parse(adapter, *signed(cheap))
    assert hint.money == Money(amount_minor=100, currency="GHS") and hint.authenticated


def test_parsing_is_pure_a_duplicate_parses_the_same(clock: ManualClock) -> None:
    adapter = adapter_alone(clock)
    raw, headers = signed(CHARGE_SUCCESS)
    assert parse(adapter, raw, headers) == parse(adapter, raw, headers)
    assert adapter._identifiers == {}  # nothing learnt from a claim


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b"not json at all", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"{}", "missing event"),
        (json.dumps({"event": "charge.success"}).encode(), "missing data"),
        (json.dumps({"event": "charge.success", "data": {"status": "success"}}).encode(), "data.reference"),
        (
            json.dumps(
                {"event": "charge.success", "data": {**CHARGE_SUCCESS["data"], "amount": 10.5}}
            ).encode(),
            "data.amount",
        ),
        (
            json.dumps(
                {"event": "charge.success", "data": {**CHARGE_SUCCESS["data"], "amount": -5}}
            ).encode(),
            "data.amount",
        ),
        (
            json.dumps({"event": "refund.processed", "data": {"status": "processed"}}).encode(),
            "data.transaction_reference",
        ),
    ],
)
def test_malformed_webhooks(clock: ManualClock, body: bytes, names: str) -> None:
    with pytest.raises(MalformedCallback) as malformed:
        parse(adapter_alone(clock), *signed(body))
    assert names in str(malformed.value)


def test_events_about_no_payment_are_none(clock: ManualClock) -> None:
    adapter = adapter_alone(clock)
    for event in ("subscription.create", "charge.dispute.create", "customeridentification.success"):
        assert parse(adapter, *signed({"event": event, "data": {"id": 1}})) is None


def test_the_url_reference_fills_in_and_must_agree(clock: ManualClock) -> None:
    adapter = adapter_alone(clock)
    no_reference = {
        "event": "charge.success",
        "data": {k: v for k, v in CHARGE_SUCCESS["data"].items() if k != "reference"},
    }
    hint = adapter.parse_callback(*signed(no_reference), path_kind="webhook", path_reference="ps-from-url")
    assert hint is not None and hint.reference == "ps-from-url"
    with pytest.raises(MalformedCallback):
        adapter.parse_callback(*signed(CHARGE_SUCCESS), path_kind="webhook", path_reference="ps-other")


# --- reconciliation by list ------------------------------------------------------------------------


async def test_list_transactions_walks_pages_and_keeps_the_exact_window(
    paystack_env: Env, make_payment: MakePayment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paystack_module, "LIST_PAGE_SIZE", 2)  # 5 charges: three pages
    async with paystack_env() as env:
        start = env.clock.now()
        references = []
        for n in range(5):
            phone = f"+25470000004{n}"
            references.append(
                (
                    await env.adapter.collect(kes(make_payment, f"ps-list-{n}", 1_000 + n, phone=phone))
                ).reference
            )
            await env.clock.advance(10)
        await env.clock.advance(5)  # the first charges are approved by now
        listed = await env.adapter.list_transactions(start, start + 30)  # the first three only
        assert [t.reference for t in listed] == references[2::-1]  # newest first, as Paystack lists
        by_reference = {t.reference: t for t in listed}
        first = by_reference[references[0]]
        assert (first.status, first.money, first.raw["payer"]) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=1_000, currency="KES"),
            "+254700000040",
        )
        assert (
            first.provider_reference
            == env.sandbox.ledger.entries(reference=references[0])[0].provider_reference
        )
        everything = await env.adapter.list_transactions(start, env.clock.now())
        assert sorted(t.reference for t in everything) == sorted(references)
        assert env.learnt == []  # listing learns nothing: rows need not be ours


# --- the shared classification (providers.http) -------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "mutating", "expected"),
    [
        (httpx.ConnectError("refused"), True, ErrorClass.NOT_PROCESSED),
        (httpx.ConnectTimeout("slow handshake"), True, ErrorClass.NOT_PROCESSED),
        (httpx.PoolTimeout("pool"), True, ErrorClass.NOT_PROCESSED),
        (httpx.ReadTimeout("sent, no answer"), True, ErrorClass.AMBIGUOUS),
        (httpx.RemoteProtocolError("reset mid-response"), True, ErrorClass.AMBIGUOUS),
        (httpx.ReadError("reset"), True, ErrorClass.AMBIGUOUS),
        (httpx.WriteError("broken pipe"), True, ErrorClass.AMBIGUOUS),
        (httpx.ReadTimeout("a status query"), False, ErrorClass.NOT_PROCESSED),
    ],
)
async def test_transport_failures_are_classified_by_what_may_have_happened(
    exc: httpx.TransportError, mutating: bool, expected: ErrorClass
) -> None:
    from mcp_autonomy.providers.http import classify_transport_error

    assert classify_transport_error(exc, mutating=mutating) is expected


async def test_http_statuses_and_retry_after() -> None:
    from mcp_autonomy.providers.http import classify_http_status, parse_retry_after

    table = {200: None, 400: "invalid_request", 401: "auth", 403: "auth", 404: "invalid_request"}
    table |= {408: "not_processed", 409: "invalid_request", 422: "invalid_request", 429: "rate_limited"}
    table |= {500: "ambiguous", 502: "ambiguous", 503: "ambiguous"}
    for status, expected in table.items():
        got = classify_http_status(status, mutating=True)
        assert (got.value if got else None) == expected, status
    assert classify_http_status(503, mutating=False) is ErrorClass.NOT_PROCESSED
    now = 1_767_225_600.0
    assert parse_retry_after("7", now) == 7
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("999999", now) == 3600


# --- the classification table, transfer OTPs ---------------------------------------------------------

OTP = "482913"
TRANSFER_CODE = "TRF_1ptvuv321ahaa7q"


class FakePaystack:
    """A scripted Paystack: each path answers what the test says; every request is kept."""

    def __init__(self, answers: dict[str, httpx.Response]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for path, answer in self.answers.items():
            if request.url.path == path:
                return answer
        return httpx.Response(404, json={"status": False, "message": "Entity not found"})

    def paths(self) -> list[str]:
        return [request.url.path for request in self.requests]


def scripted(clock: ManualClock, fake: FakePaystack) -> PaystackAdapter:
    settings = PaystackSettings(
        secret_key=SecretStr(SECRET),
        base_url="http://paystack.invalid",
        customer_email_domain="customers.example.com",
    )
    return PaystackAdapter(settings, clock, transport=httpx.MockTransport(fake))


def transfer_data(status: str, **extra: Any) -> dict[str, Any]:
    """`data` of a transfer answer (TransferCreateResponse / TransferVerifyResponse)."""
    reference = PaystackAdapter.reference_for("ps-payout-otp")
    return {
        "amount": 7_500,
        "currency": "GHS",
        "reference": reference,
        "status": status,
        "transfer_code": TRANSFER_CODE,
        "id": 476948,
        "createdAt": "2026-01-01T00:00:00.000Z",
        **extra,
    }


def ok(message: str, data: Any) -> httpx.Response:
    return httpx.Response(200, json={"status": True, "message": message, "data": data})


def otp_context(make_payment: MakePayment, **identifiers: str) -> PaymentContext:
    request = ghs(make_payment, "ps-payout-otp", 7_500, operation=Operation.PAYOUT)
    return PaymentContext(
        reference=PaystackAdapter.reference_for(request.idempotency_key),
        operation=Operation.PAYOUT,
        money=request.money,
        phone=request.phone,
        country=request.country,
        identifiers=identifiers,
    )


async def test_a_transfer_at_otp_needs_the_operator_and_is_never_finalised_alone(
    clock: ManualClock, make_payment: MakePayment
) -> None:
    fake = FakePaystack(
        {
            "/transferrecipient": ok("Transfer recipient created successfully", {"recipient_code": "RCP_1"}),
            "/transfer": ok("Transfer requires OTP to continue", transfer_data("otp")),
            f"/transfer/verify/{PaystackAdapter.reference_for('ps-payout-otp')}": ok(
                "Transfer retrieved", transfer_data("otp")
            ),
        }
    )
    adapter = scripted(clock, fake)
    learnt: list[tuple[str, str, str]] = []
    adapter.identifier_sink = lambda ref, kind, value: learnt.append((ref, kind, value))
    request = ghs(make_payment, "ps-payout-otp", 7_500, operation=Operation.PAYOUT)
    held = await adapter.payout(request)
    assert held.status is TransactionStatus.NEEDS_OPERATOR_OTP
    assert not held.status.is_final
    assert (held.reference, "transfer_code", TRANSFER_CODE) in learnt
    pulled = await adapter.status(held.reference, context=otp_context(make_payment))
    assert (pulled.status, pulled.raw_status) == (TransactionStatus.NEEDS_OPERATOR_OTP, "otp")
    assert "/transfer/finalize_transfer" not in fake.paths()  # only an operator finalises
    await adapter.close()


async def test_finalize_transfer_sends_exactly_the_transfer_code_and_the_otp(
    clock: ManualClock, make_payment: MakePayment
) -> None:
    fake = FakePaystack(
        {"/transfer/finalize_transfer": ok("Transfer has been queued", transfer_data("pending"))}
    )
    adapter = scripted(clock, fake)
    released = await adapter.finalize_transfer(otp_context(make_payment, transfer_code=TRANSFER_CODE), OTP)
    [sent] = fake.requests
    assert (sent.method, sent.url.path) == ("POST", "/transfer/finalize_transfer")
    assert json.loads(sent.content) == {"transfer_code": TRANSFER_CODE, "otp": OTP}
    assert released.status is TransactionStatus.PENDING
    assert OTP not in released.model_dump_json() and OTP not in json.dumps(released.raw)
    await adapter.close()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # Paystack publishes no text for a wrong transfer OTP; one that echoes it must not leak it.
        (
            httpx.Response(400, json={"status": False, "message": f"Invalid OTP {OTP}", "code": OTP}),
            "invalid_request",
        ),
        (
            httpx.Response(400, json={"status": False, "message": "Transfer is not currently awaiting OTP"}),
            "invalid_request",
        ),
        (httpx.Response(401, json={"status": False, "message": "Invalid key"}), "auth"),
        (httpx.Response(503, json={"status": False, "message": "Service Unavailable"}), "ambiguous"),
    ],
    ids=["wrong-otp", "not-awaiting", "bad-key", "503"],
)
async def test_a_refused_finalize_never_shows_the_otp(
    clock: ManualClock, make_payment: MakePayment, answer: httpx.Response, expected: str
) -> None:
    adapter = scripted(clock, FakePaystack({"/transfer/finalize_transfer": answer}))
    with pytest.raises(ProviderError) as refused:
        await adapter.finalize_transfer(otp_context(make_payment, transfer_code=TRANSFER_CODE), OTP)
    assert refused.value.error_class.value == expected
    for text in (str(refused.value), repr(refused.value), refused.value.provider_message, refused.value.code):
        assert OTP not in (text or "")
    await adapter.close()


async def test_finalize_needs_a_known_transfer_code(clock: ManualClock, make_payment: MakePayment) -> None:
    fake = FakePaystack({})
    adapter = scripted(clock, fake)
    with pytest.raises(ProviderError) as unknown:
        await adapter.finalize_transfer(otp_context(make_payment), OTP)
    assert unknown.value.error_class is ErrorClass.INVALID_REQUEST
    assert OTP not in str(unknown.value) and fake.requests == []
    await adapter.close()


async def test_the_merchants_empty_balance_is_not_processed_and_not_the_customers(
    clock: ManualClock, make_payment: MakePayment
) -> None:
    answer = httpx.Response(
        400,
        json={
            "status": False,
            "message": "Your balance is not enough to fulfil this request",
            "code": "insufficient_balance",
        },
    )
    fake = FakePaystack(
        {
            "/transferrecipient": ok("Transfer recipient created successfully", {"recipient_code": "RCP_1"}),
            "/transfer": answer,
        }
    )
    adapter = scripted(clock, fake)
    with pytest.raises(ProviderError) as short_float:
        await adapter.payout(ghs(make_payment, "ps-payout-float", 7_500, operation=Operation.PAYOUT))
    assert short_float.value.error_class is ErrorClass.NOT_PROCESSED  # another provider's float may pay
    await adapter.close()


MESSAGE_RULES = [
    rule
    for rule in ERROR_RULES
    if not rule.match.startswith(("final result", "HTTP", "POST "))
    and rule not in paystack_module._NOT_FOUND_RULES + paystack_module._DUPLICATE_RULES
]


@pytest.mark.parametrize("rule", MESSAGE_RULES, ids=lambda rule: rule.match[:40])
async def test_every_documented_message_classifies_a_charge(
    clock: ManualClock, make_payment: MakePayment, rule: Any
) -> None:
    message = rule.match.replace(" X ", " 5 ")
    answer = httpx.Response(400, json={"status": False, "message": message, "type": "validation_error"})
    adapter = scripted(clock, FakePaystack({"/charge": answer}))
    with pytest.raises(ProviderError) as refused:
        await adapter.collect(kes(make_payment, "ps-order-rule"))
    assert refused.value.error_class is rule.error_class
    await adapter.close()


def test_error_rules_cite_their_sources() -> None:
    matches = [rule.match for rule in PaystackAdapter.error_rules]
    assert len(matches) == len(set(matches))
    for rule in PaystackAdapter.error_rules:
        assert rule.source.strip(), rule.match
        if rule.error_class is ErrorClass.NOT_PROCESSED:
            assert not rule.source.startswith(NO_SOURCE), rule.match
    assert {"Declined", "Insufficient Funds", "abandoned"} <= PaystackAdapter.customer_codes
    # The merchant's balance is never the customer's.
    assert not any("balance" in code.lower() for code in PaystackAdapter.customer_codes)
