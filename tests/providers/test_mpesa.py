"""MpesaAdapter against the Daraja emulator over loopback HTTP, time driven by a manual clock."""

from __future__ import annotations

import base64
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from mcp_autonomy.providers.base import (
    NOT_FOUND_CODE,
    ErrorClass,
    Money,
    Operation,
    PaymentRequest,
    ProviderError,
    TransactionStatus,
)
from mcp_autonomy.providers.mpesa import MpesaAdapter
from mcp_autonomy.sandbox import (
    AcceptThenHangSpec,
    CredentialExpirySpec,
    CustomerBehavior,
    EndpointKind,
    LedgerStatus,
    MpesaSandboxConfig,
    OutageSpec,
    ThrottleSpec,
)

if TYPE_CHECKING:
    from tests.providers.conftest import MpesaEnv

pytestmark = pytest.mark.anyio

PHONE = "+254700000001"
OTHER_PHONE = "+254700000002"
Env = Callable[..., AbstractAsyncContextManager["MpesaEnv"]]
MakePayment = Callable[..., PaymentRequest]


def kes(
    make_payment: MakePayment, key: str, shillings: int = 100, phone: str = PHONE, **kw: Any
) -> PaymentRequest:
    return make_payment(key, shillings * 100, "KES", phone, "KE", **kw)


async def test_collect_succeeds_end_to_end(mpesa_env: Env, make_payment: MakePayment) -> None:
    async with mpesa_env() as env:
        await env.adapter.initialize()
        txn = await env.adapter.collect(kes(make_payment, "order-0001"))
        assert txn.status is TransactionStatus.PENDING
        assert txn.provider_reference is not None and txn.provider_reference.startswith("ws_CO_")
        assert txn.reference == MpesaAdapter.reference_for("order-0001")

        polled = await env.adapter.status(txn.reference, txn.provider_reference)
        assert polled.status is TransactionStatus.PENDING  # 500.001.1001 "being processed"
        assert polled.provider_code == "500.001.1001"

        await env.clock.advance(5)  # the customer enters their PIN
        polled = await env.adapter.status(txn.reference, txn.provider_reference)
        assert polled.status is TransactionStatus.SUCCEEDED
        assert polled.provider_code == "0"
        assert polled.money == Money(amount_minor=10_000, currency="KES")

        [callback] = await env.receiver.wait_for(1)
        assert callback.status is TransactionStatus.SUCCEEDED
        assert callback.reference == txn.reference
        assert env.receiver.bodies[0]["Body"]["stkCallback"]["ResultCode"] == 0

        [entry] = env.sandbox.ledger.charges_for(PHONE)
        assert (entry.status, entry.amount_minor, entry.reference) == (
            LedgerStatus.SUCCEEDED,
            10_000,
            txn.reference,
        )


@pytest.mark.parametrize(("code", "action"), [("1032", "decline"), ("1", "decline"), ("2001", "decline")])
async def test_customer_failures_are_final_with_their_result_code(
    mpesa_env: Env, make_payment: MakePayment, code: str, action: str
) -> None:
    async with mpesa_env() as env:
        env.sandbox.customers.set(CustomerBehavior(msisdn=PHONE, action=action, decline_code=code, delay_s=2))
        txn = await env.adapter.collect(kes(make_payment, f"order-fail-{code}"))
        await env.clock.advance(2)
        polled = await env.adapter.status(txn.reference, txn.provider_reference)
        assert (polled.status, polled.provider_code) == (TransactionStatus.FAILED, code)
        assert env.sandbox.ledger.successful_charges_for(PHONE) == []


async def test_ignored_prompt_times_out_with_1037(mpesa_env: Env, make_payment: MakePayment) -> None:
    async with mpesa_env() as env:
        env.sandbox.customers.set(CustomerBehavior(msisdn=PHONE, action="ignore"))
        txn = await env.adapter.collect(kes(make_payment, "order-ignored"))
        await env.clock.advance(59)
        assert (
            await env.adapter.status(txn.reference, txn.provider_reference)
        ).status is TransactionStatus.PENDING
        await env.clock.advance(1)
        polled = await env.adapter.status(txn.reference, txn.provider_reference)
        assert (polled.status, polled.provider_code) == (TransactionStatus.FAILED, "1037")


async def test_invalid_requests_are_refused_before_and_by_the_provider(
    mpesa_env: Env, make_payment: MakePayment
) -> None:
    async with mpesa_env(callback_url="ftp://not-a-callback") as env:
        with pytest.raises(ProviderError) as local:
            await env.adapter.collect(make_payment("order-cents", 10_050, "KES", PHONE, "KE"))
        assert local.value.error_class is ErrorClass.INVALID_REQUEST  # M-Pesa takes whole shillings
        with pytest.raises(ProviderError) as foreign:
            await env.adapter.collect(make_payment("order-ugx", 10_000, "UGX", "+256700000001", "UG"))
        assert foreign.value.error_class is ErrorClass.INVALID_REQUEST

        with pytest.raises(ProviderError) as remote:
            await env.adapter.collect(kes(make_payment, "order-bad-url"))
        assert remote.value.error_class is ErrorClass.INVALID_REQUEST
        assert remote.value.code == "400.002.02"
        assert "CallBackURL" in remote.value.provider_message
        assert len(env.sandbox.ledger) == 0


async def test_bad_consumer_secret_and_bad_passkey_are_auth_errors(
    mpesa_env: Env, make_payment: MakePayment
) -> None:
    async with mpesa_env() as env:
        wrong_secret = env.new_adapter(consumer_secret="not-the-secret-7a1f")
        with pytest.raises(ProviderError) as token_error:
            await wrong_secret.initialize()
        assert (token_error.value.error_class, token_error.value.code) == (ErrorClass.AUTH, "400.008.01")
        assert "not-the-secret-7a1f" not in str(token_error.value)
        await wrong_secret.close()

        wrong_passkey = env.new_adapter(passkey="not-the-passkey-9c2e")
        with pytest.raises(ProviderError) as push_error:
            await wrong_passkey.collect(kes(make_payment, "order-passkey"))
        assert (push_error.value.error_class, push_error.value.code) == (ErrorClass.AUTH, "500.001.1001")
        assert push_error.value.safe_to_fail_over
        assert "not-the-passkey-9c2e" not in str(push_error.value)
        assert "not-the-passkey-9c2e" not in repr(wrong_passkey._settings)
        await wrong_passkey.close()
        assert len(env.sandbox.ledger) == 0


async def test_spike_arrest_is_rate_limited_despite_http_500(
    mpesa_env: Env, make_payment: MakePayment
) -> None:
    async with mpesa_env() as env:
        env.sandbox.faults.add(
            "mpesa", ThrottleSpec(max_per_s=1, retry_after_s=2), endpoints=[EndpointKind.COLLECT]
        )
        await env.adapter.collect(kes(make_payment, "order-t1"))
        with pytest.raises(ProviderError) as throttled:
            await env.adapter.collect(kes(make_payment, "order-t2", phone=OTHER_PHONE))
        error = throttled.value
        assert (error.error_class, error.code, error.http_status) == (
            ErrorClass.RATE_LIMITED,
            "500.003.02",
            500,
        )
        assert error.retry_after_s == 2
        await env.clock.advance(1)  # a new second: admitted again
        await env.adapter.collect(kes(make_payment, "order-t2", phone=OTHER_PHONE))
        assert len(env.sandbox.ledger.entries(provider="mpesa")) == 2


async def test_refused_outage_is_not_processed_and_recovers(
    mpesa_env: Env, make_payment: MakePayment
) -> None:
    async with mpesa_env() as env:
        await env.adapter.initialize()
        env.sandbox.faults.add("mpesa", OutageSpec(mode="refused"), end_s=30)
        await env.clock.advance(0)  # let the gate close the port
        with pytest.raises(ProviderError) as refused:
            await env.adapter.collect(kes(make_payment, "order-down"))
        assert refused.value.error_class is ErrorClass.NOT_PROCESSED
        assert refused.value.code == "ConnectError"
        assert refused.value.safe_to_fail_over
        assert len(env.sandbox.ledger) == 0

        await env.clock.advance(30)
        txn = await env.adapter.collect(kes(make_payment, "order-down"))
        assert txn.status is TransactionStatus.PENDING
        assert env.sandbox.ledger.count_by_reference(txn.reference) == 1


async def test_unavailable_503_on_a_push_is_ambiguous(mpesa_env: Env, make_payment: MakePayment) -> None:
    async with mpesa_env() as env:
        await env.adapter.initialize()
        env.sandbox.faults.add("mpesa", OutageSpec(mode="503"), endpoints=[EndpointKind.COLLECT])
        with pytest.raises(ProviderError) as unavailable:
            await env.adapter.collect(kes(make_payment, "order-503"))
        # A 503 does not prove the push was not sent: the router must resolve before failing over.
        assert (unavailable.value.error_class, unavailable.value.http_status) == (ErrorClass.AMBIGUOUS, 503)


async def test_accept_then_hang_is_ambiguous_and_resolved_by_the_callback(
    mpesa_env: Env, make_payment: MakePayment
) -> None:
    async with mpesa_env(timeout_s=0.3) as env:
        await env.adapter.initialize()
        env.sandbox.faults.add("mpesa", AcceptThenHangSpec(), endpoints=[EndpointKind.COLLECT])
        request = kes(make_payment, "order-hang")
        with pytest.raises(ProviderError) as hung:
            await env.adapter.collect(request)
        assert hung.value.error_class is ErrorClass.AMBIGUOUS
        assert hung.value.code == "ReadTimeout"
        reference = MpesaAdapter.reference_for(request.idempotency_key)
        assert env.sandbox.ledger.count_by_reference(reference) == 1  # the push did reach the phone

        # No CheckoutRequestID came back: Daraja cannot be queried, only its callback can tell.
        unknown = await env.adapter.status(reference)
        assert unknown.status is TransactionStatus.UNKNOWN

        env.sandbox.faults.clear()
        # Resending would be refused by M-Pesa itself while the first prompt is open.
        with pytest.raises(ProviderError) as locked:
            await env.adapter.collect(request)
        assert locked.value.error_class is ErrorClass.NOT_PROCESSED
        assert "lock subscriber" in locked.value.provider_message

        await env.clock.advance(5)
        await env.receiver.wait_for(1)
        resolved = await env.adapter.status(reference)
        assert resolved.status is TransactionStatus.SUCCEEDED
        assert env.sandbox.ledger.count_by_reference(reference) == 1
        assert len(env.sandbox.ledger.successful_charges_for(PHONE)) == 1


async def test_token_revoked_mid_run_is_refreshed_and_the_call_succeeds(
    mpesa_env: Env, make_payment: MakePayment
) -> None:
    async with mpesa_env() as env:
        await env.adapter.initialize()
        await env.adapter.collect(kes(make_payment, "order-before"))
        emulator: Any = env.sandbox.emulators["mpesa"]
        assert emulator.tokens_issued == 1
        await env.clock.advance(60)
        env.sandbox.faults.add("mpesa", CredentialExpirySpec())  # tokens issued before now are revoked

        txn = await env.adapter.collect(kes(make_payment, "order-after", phone=OTHER_PHONE))
        assert txn.status is TransactionStatus.PENDING
        assert emulator.tokens_issued == 2  # 404.001.03 -> one refresh -> the push went through
        assert len(env.sandbox.ledger.entries(provider="mpesa")) == 2


async def test_token_is_refreshed_before_it_expires(mpesa_env: Env, make_payment: MakePayment) -> None:
    async with mpesa_env(config=MpesaSandboxConfig(token_ttl_s=120)) as env:
        await env.adapter.initialize()
        emulator: Any = env.sandbox.emulators["mpesa"]
        await env.clock.advance(100)
        await env.adapter.collect(kes(make_payment, "order-early"))
        assert emulator.tokens_issued == 1
        await env.clock.advance(10)  # 110 s: inside the refresh margin (12 s of a 120 s token)
        await env.adapter.collect(kes(make_payment, "order-late", phone=OTHER_PHONE))
        assert emulator.tokens_issued == 2


async def test_b2c_payout_is_deduplicated_and_completed_by_its_result(
    mpesa_env: Env, make_payment: MakePayment
) -> None:
    async with mpesa_env() as env:
        request = make_payment("payout-0001", 50_000, "KES", PHONE, "KE", operation=Operation.PAYOUT)
        first = await env.adapter.payout(request)
        assert first.status is TransactionStatus.PENDING
        assert first.provider_reference is not None and first.provider_reference.startswith("AG_")

        again = await env.adapter.payout(request)  # Daraja: "Duplicate OriginatorConversationID."
        assert again.status is TransactionStatus.PENDING
        assert again.provider_code == "500.002.1001"
        assert len(env.sandbox.ledger.entries(operation="payout")) == 1

        assert (await env.adapter.status(first.reference)).status is TransactionStatus.PENDING
        await env.clock.advance(3)
        [result] = await env.receiver.wait_for(1)
        assert result.status is TransactionStatus.SUCCEEDED
        assert (await env.adapter.status(first.reference)).status is TransactionStatus.SUCCEEDED
        [entry] = env.sandbox.ledger.entries(operation="payout")
        assert (entry.status, entry.amount_minor) == (LedgerStatus.SUCCEEDED, 50_000)


async def test_b2c_with_a_wrong_initiator_fails_in_the_result(
    mpesa_env: Env, make_payment: MakePayment
) -> None:
    async with mpesa_env(initiator_name="someone-else") as env:
        txn = await env.adapter.payout(
            make_payment("payout-0002", 5_000, "KES", PHONE, "KE", operation=Operation.PAYOUT)
        )
        assert txn.status is TransactionStatus.PENDING  # accepted synchronously, as on Daraja
        await env.clock.advance(3)
        [result] = await env.receiver.wait_for(1)
        assert (result.status, result.provider_code) == (TransactionStatus.FAILED, "2001")


async def test_refund_reverses_a_collection(mpesa_env: Env, make_payment: MakePayment) -> None:
    async with mpesa_env() as env:
        txn = await env.adapter.collect(kes(make_payment, "order-refund", shillings=250))
        with pytest.raises(ProviderError) as early:
            await env.adapter.refund(txn)  # still pending
        assert early.value.error_class is ErrorClass.INVALID_REQUEST

        await env.clock.advance(5)
        await env.receiver.wait_for(1)
        succeeded = await env.adapter.status(txn.reference, txn.provider_reference)
        with pytest.raises(ProviderError) as partial_refund:
            await env.adapter.refund(succeeded, Money(amount_minor=100, currency="KES"))
        assert partial_refund.value.error_class is ErrorClass.INVALID_REQUEST

        reversal = await env.adapter.refund(succeeded)
        assert reversal.status is TransactionStatus.PENDING
        await env.clock.advance(3)
        await env.receiver.wait_for(2)
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.REVERSED
        [collection] = env.sandbox.ledger.charges_for(PHONE)
        assert collection.status is LedgerStatus.REVERSED
        [refund] = env.sandbox.ledger.entries(operation="refund")
        assert (refund.status, refund.amount_minor) == (LedgerStatus.SUCCEEDED, 25_000)


async def test_unknown_checkout_id_is_not_found(mpesa_env: Env) -> None:
    async with mpesa_env() as env:
        with pytest.raises(ProviderError) as missing:
            await env.adapter.status("NOSUCHREF", "ws_CO_000000000000000000")
        assert (missing.value.error_class, missing.value.code) == (ErrorClass.NOT_PROCESSED, NOT_FOUND_CODE)


async def test_probe_fetches_a_token_at_most_once_per_interval(mpesa_env: Env) -> None:
    async with mpesa_env(probe_min_interval_s=30) as env:
        emulator: Any = env.sandbox.emulators["mpesa"]
        first = await env.adapter.probe()
        assert first.ok and first.detail == "oauth token issued"
        cached = await env.adapter.probe()
        assert cached.detail.endswith("(cached)")
        assert emulator.tokens_issued == 1
        await env.clock.advance(30)
        await env.adapter.probe()
        assert emulator.tokens_issued == 2

        env.sandbox.faults.add("mpesa", OutageSpec(mode="503"), endpoints=[EndpointKind.PROBE])
        await env.clock.advance(30)
        with pytest.raises(ProviderError) as down:
            await env.adapter.probe()
        assert down.value.error_class is ErrorClass.NOT_PROCESSED  # a read: nothing to be ambiguous about


async def test_set_timeout_applies_to_the_next_call(mpesa_env: Env, make_payment: MakePayment) -> None:
    async with mpesa_env(timeout_s=5.0) as env:
        await env.adapter.initialize()
        env.adapter.set_timeout(0.2)
        assert env.adapter.timeout_s == 0.2
        env.sandbox.faults.add("mpesa", AcceptThenHangSpec(), endpoints=[EndpointKind.COLLECT])
        with pytest.raises(ProviderError) as hung:
            await env.adapter.collect(kes(make_payment, "order-tuned"))
        assert hung.value.error_class is ErrorClass.AMBIGUOUS
        with pytest.raises(ValueError):
            env.adapter.set_timeout(0)


async def test_daraja_protocol_shapes(mpesa_env: Env) -> None:
    """The emulator answers like Daraja on the wire (what the adapter relies on)."""
    async with mpesa_env() as env:
        config = MpesaSandboxConfig()
        basic = base64.b64encode(f"{config.consumer_key}:{config.consumer_secret}".encode()).decode()
        async with httpx.AsyncClient(base_url=env.address.url("mpesa")) as client:
            token = await client.get(
                "/oauth/v1/generate",
                params={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
            )
            assert token.status_code == 200 and token.json()["expires_in"] == "3599"
            wrong_grant = await client.get(
                "/oauth/v1/generate",
                params={"grant_type": "password"},
                headers={"Authorization": f"Basic {basic}"},
            )
            assert (wrong_grant.status_code, wrong_grant.json()["errorCode"]) == (400, "400.008.02")
            no_header = await client.post("/mpesa/stkpushquery/v1/query", json={})
            assert no_header.json()["errorCode"] == "404.001.04"
            bad_token = await client.post(
                "/mpesa/stkpushquery/v1/query", json={}, headers={"Authorization": "Bearer nope"}
            )
            assert (bad_token.status_code, bad_token.json()["errorCode"]) == (404, "404.001.03")
            assert set(bad_token.json()) == {"requestId", "errorCode", "errorMessage"}
            bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
            push = {
                "BusinessShortCode": config.shortcode,
                "Password": base64.b64encode(b"wrong").decode(),
                "Timestamp": "20260101030000",
                "TransactionType": "CustomerPayBillOnline",
                "Amount": 1,
                "PartyA": "254700000001",
                "PartyB": config.shortcode,
                "PhoneNumber": "254700000001",
                "CallBackURL": "https://merchant.example.com/cb",
                "AccountReference": "ACC1",
                "TransactionDesc": "test",
            }
            wrong_password = await client.post("/mpesa/stkpush/v1/processrequest", json=push, headers=bearer)
            assert wrong_password.status_code == 500
            assert wrong_password.json()["errorMessage"] == "[MerchantValidate] - Wrong credentials"
            too_long = await client.post(
                "/mpesa/stkpush/v1/processrequest",
                json={**push, "AccountReference": "X" * 13},
                headers=bearer,
            )
            assert too_long.json()["errorMessage"] == "Bad Request - Invalid AccountReference"
