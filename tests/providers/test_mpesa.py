"""MpesaAdapter against the Daraja emulator over loopback HTTP, time driven by a manual clock."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from pydantic import SecretStr

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.providers.base import (
    NOT_FOUND_CODE,
    CallbackHint,
    CallbackSource,
    ErrorClass,
    MalformedCallback,
    Money,
    Operation,
    PaymentContext,
    PaymentRequest,
    ProviderError,
    TransactionStatus,
)
from mcp_autonomy.providers.http import NO_SOURCE
from mcp_autonomy.providers.mpesa import ERROR_RULES, MpesaAdapter, MpesaSettings
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
from mcp_autonomy.sandbox.core import Realism

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


def context_for(
    request: PaymentRequest,
    *,
    identifiers: dict[str, str] | None = None,
    provider_reference: str | None = None,
    operation: Operation | None = None,
) -> PaymentContext:
    """What the engine would hand `status()` after a restart: the stored request and learnt ids."""
    return PaymentContext(
        reference=MpesaAdapter.reference_for(request.idempotency_key),
        operation=operation or request.operation,
        money=request.money,
        phone=request.phone,
        country=request.country,
        provider_reference=provider_reference,
        identifiers=identifiers or {},
    )


def hint(value: CallbackHint | None) -> CallbackHint:
    assert value is not None
    return value


class Sink:
    """The engine's durable identifier store, as the adapter sees it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, reference: str, kind: str, value: str) -> None:
        self.calls.append((reference, kind, value))

    def of(self, reference: str) -> dict[str, str]:
        return {kind: value for ref, kind, value in self.calls if ref == reference}


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
        assert polled.money is None  # the STK query carries ResultCode only: no amount, no payer
        assert "payer" not in polled.raw

        [callback] = await env.receiver.wait_for(1)
        callback = hint(callback)
        assert callback.status is TransactionStatus.SUCCEEDED
        assert (callback.reference, callback.provider_reference) == (txn.reference, txn.provider_reference)
        assert callback.money == Money(amount_minor=10_000, currency="KES")
        assert callback.payer == PHONE and not callback.authenticated
        assert callback.extras["receipt"] == env.sandbox.ledger.charges_for(PHONE)[0].receipt
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
        assert polled.provider_code in MpesaAdapter.customer_codes  # the engine counts it as the customer's
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
        assert "1037" in MpesaAdapter.customer_codes


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
        assert "CheckoutRequestID" in (unknown.provider_message or "")
        fresh = env.new_adapter()
        no_pull = await fresh.status(reference, context=context_for(request))
        assert (no_pull.status, no_pull.raw_status) == (TransactionStatus.UNKNOWN, "no_pull_path")

        env.sandbox.faults.clear()
        # Resending would be refused by M-Pesa itself while the first prompt is open: the
        # customer is busy, which is the customer's state, never a reason to fail over.
        with pytest.raises(ProviderError) as locked:
            await env.adapter.collect(request)
        assert locked.value.error_class is ErrorClass.CUSTOMER
        assert not locked.value.safe_to_fail_over
        assert "lock subscriber" in locked.value.provider_message

        await env.clock.advance(5)
        [callback] = await env.receiver.wait_for(1)
        callback = hint(callback)
        assert (callback.reference, callback.status) == (reference, TransactionStatus.SUCCEEDED)
        # The callback names the CheckoutRequestID: with it stored, Daraja can be asked (a pull).
        resolved = await fresh.status(
            reference, context=context_for(request, provider_reference=callback.provider_reference)
        )
        assert resolved.status is TransactionStatus.SUCCEEDED
        await fresh.close()
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

        await env.clock.advance(3)
        [result] = await env.receiver.wait_for(1)
        result = hint(result)
        assert (result.status, result.operation) == (TransactionStatus.SUCCEEDED, Operation.PAYOUT)
        assert (result.reference, result.provider_reference) == (first.reference, first.provider_reference)
        assert result.money == Money(amount_minor=50_000, currency="KES") and result.payer == PHONE
        assert result.extras["channel"] == "result"
        [entry] = env.sandbox.ledger.entries(operation="payout")
        assert (entry.status, entry.amount_minor) == (LedgerStatus.SUCCEEDED, 50_000)
        assert result.extras["receipt"] == entry.receipt


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
        result = hint(result)
        # B2C's 2001 is the initiator's (the merchant's), not a customer's wrong PIN.
        assert (result.status, result.provider_code) == (TransactionStatus.FAILED, "b2c:2001")
        assert result.provider_code not in MpesaAdapter.customer_codes
        assert (result.reference, result.operation) == (txn.reference, Operation.PAYOUT)
        assert "receipt" not in result.extras


async def test_refund_reverses_a_collection(mpesa_env: Env, make_payment: MakePayment) -> None:
    async with mpesa_env() as env:
        sink = Sink()
        env.adapter.identifier_sink = sink
        txn = await env.adapter.collect(kes(make_payment, "order-refund", shillings=250))
        with pytest.raises(ProviderError) as early:
            await env.adapter.refund(txn)  # still pending
        assert early.value.error_class is ErrorClass.INVALID_REQUEST

        await env.clock.advance(5)
        [paid] = await env.receiver.wait_for(1)
        paid = hint(paid)
        pulled = await env.adapter.status(txn.reference, txn.provider_reference)
        assert pulled.status is TransactionStatus.SUCCEEDED
        with pytest.raises(ProviderError) as no_receipt:
            await env.adapter.refund(pulled, Money(amount_minor=25_000, currency="KES"))
        assert "receipt" in no_receipt.value.provider_message  # only the callback carries it
        # What the engine holds once the callback is confirmed: the pulled status, the amount
        # it charged, and the receipt from the callback's extras.
        succeeded = pulled.model_copy(
            update={
                "money": Money(amount_minor=25_000, currency="KES"),
                "raw": {"receipt": paid.extras["receipt"]},
            }
        )
        with pytest.raises(ProviderError) as partial_refund:
            await env.adapter.refund(succeeded, Money(amount_minor=100, currency="KES"))
        assert partial_refund.value.error_class is ErrorClass.INVALID_REQUEST

        reversal = await env.adapter.refund(succeeded)
        assert reversal.status is TransactionStatus.PENDING
        await env.clock.advance(3)
        reversed_hint = hint((await env.receiver.wait_for(2))[1])
        assert (reversed_hint.operation, reversed_hint.status) == (
            Operation.REFUND,
            TransactionStatus.SUCCEEDED,
        )
        assert (reversed_hint.reference, reversed_hint.money) == (
            txn.reference,
            Money(amount_minor=25_000, currency="KES"),
        )
        assert reversed_hint.extras["original_receipt"] == paid.extras["receipt"]
        assert reversed_hint.extras["channel"] == "result"
        [collection] = env.sandbox.ledger.charges_for(PHONE)
        assert collection.status is LedgerStatus.REVERSED
        [refund] = env.sandbox.ledger.entries(operation="refund")
        assert (refund.status, refund.amount_minor) == (LedgerStatus.SUCCEEDED, 25_000)

        # The reversal is pulled with a Transaction Status query by its OriginatorConversationID.
        fresh = env.new_adapter()
        fresh.identifier_sink = sink
        refund_context = context_for(
            kes(make_payment, "order-refund", shillings=250),
            operation=Operation.REFUND,
            identifiers=sink.of(txn.reference),
        )
        sent = await fresh.status(txn.reference, context=refund_context)
        assert (sent.status, sent.raw_status) == (TransactionStatus.PENDING, "status_query_sent")
        assert sink.of(txn.reference)["status_query"] == sent.raw["ConversationID"]
        answer = hint((await env.receiver.wait_for(3))[2])
        assert (answer.extras["channel"], answer.status, answer.operation) == (
            "status_query",
            TransactionStatus.SUCCEEDED,
            Operation.REFUND,
        )
        assert answer.extras["receipt"] == refund.receipt
        await fresh.close()


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


# --- lifecycle, identifiers, status with no memory --------------------------------------------


async def test_initialize_drops_the_probe_cache(mpesa_env: Env) -> None:
    async with mpesa_env(probe_min_interval_s=3600) as env:
        emulator: Any = env.sandbox.emulators["mpesa"]
        await env.adapter.probe()
        assert (await env.adapter.probe()).detail.endswith("(cached)")
        issued = emulator.tokens_issued
        await env.adapter.initialize()  # a heal: the next probe must reach Daraja
        probed = await env.adapter.probe()
        assert not probed.detail.endswith("(cached)")
        assert emulator.tokens_issued == issued + 2  # initialise's token, then the probe's


async def test_ids_reach_the_sink_before_the_call_returns(mpesa_env: Env, make_payment: MakePayment) -> None:
    async with mpesa_env() as env:
        sink = Sink()
        env.adapter.identifier_sink = sink
        txn = await env.adapter.collect(kes(make_payment, "order-sink"))
        assert sink.of(txn.reference)["checkout_request_id"] == txn.provider_reference
        assert sink.of(txn.reference)["merchant_request_id"] == txn.raw["MerchantRequestID"]
        payout = await env.adapter.payout(
            make_payment("payout-sink", 5_000, "KES", OTHER_PHONE, "KE", operation=Operation.PAYOUT)
        )
        assert sink.of(payout.reference) == {"conversation_id": payout.provider_reference}
        assert isinstance(env.adapter, CallbackSource)


async def test_status_from_a_fresh_adapter_collect_pending_then_final(
    mpesa_env: Env, make_payment: MakePayment
) -> None:
    async with mpesa_env() as env:
        sink = Sink()
        env.adapter.identifier_sink = sink
        request = kes(make_payment, "order-fresh")
        txn = await env.adapter.collect(request)
        await env.adapter.close()  # the process that sent it is gone

        fresh = env.new_adapter()  # knows only what the engine stored
        context = context_for(request, identifiers=sink.of(txn.reference))
        pending = await fresh.status(txn.reference, context=context)
        assert (pending.status, pending.provider_reference) == (
            TransactionStatus.PENDING,
            txn.provider_reference,
        )
        await env.clock.advance(5)
        final = await env.new_adapter().status(txn.reference, context=context)
        assert (final.status, final.provider_code, final.money) == (TransactionStatus.SUCCEEDED, "0", None)
        await fresh.close()


async def test_status_from_a_fresh_adapter_payout_sends_a_transaction_status_query(
    mpesa_env: Env, make_payment: MakePayment
) -> None:
    async with mpesa_env() as env:
        sink = Sink()
        env.adapter.identifier_sink = sink
        request = make_payment("payout-fresh", 20_000, "KES", PHONE, "KE", operation=Operation.PAYOUT)
        txn = await env.adapter.payout(request)
        fresh = env.new_adapter()
        fresh.identifier_sink = sink
        context = context_for(request, identifiers=sink.of(txn.reference))

        sent = await fresh.status(txn.reference, context=context)  # B2C still in M-Pesa's hands
        assert (sent.status, sent.raw_status, sent.money) == (
            TransactionStatus.PENDING,
            "status_query_sent",
            None,
        )
        assert sent.provider_reference == txn.provider_reference
        assert sink.of(txn.reference)["status_query"] == sent.raw["ConversationID"]
        pending = hint((await env.receiver.wait_for(1))[0])
        assert (pending.extras["channel"], pending.status) == ("status_query", TransactionStatus.PENDING)
        assert pending.reference == txn.reference and pending.operation is Operation.PAYOUT

        await env.clock.advance(3)  # the B2C completes; its own Result arrives too
        await fresh.status(txn.reference, context=context)
        hints = [hint(h) for h in await env.receiver.wait_for(3)]
        [b2c] = [h for h in hints if h.extras["channel"] == "result"]
        [final] = [h for h in hints[1:] if h.extras["channel"] == "status_query"]
        assert b2c.status is TransactionStatus.SUCCEEDED
        assert (final.status, final.money, final.payer) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=20_000, currency="KES"),
            PHONE,
        )
        assert final.extras["receipt"] == b2c.extras["receipt"]
        assert final.provider_reference == txn.provider_reference
        assert final.extras["status_query"] == sink.of(txn.reference)["status_query"]
        # The query's result goes to <result_url>/<reference>, like the B2C's.
        assert {(kind, ref) for kind, ref, _ in env.receiver.raw} == {("result", txn.reference)}
        await fresh.close()


async def test_lookups_lag_acceptance_then_find_it(mpesa_env: Env, make_payment: MakePayment) -> None:
    async with mpesa_env() as env:
        env.sandbox.outbox.realism.set(Realism(lookup_lag_s=4), "mpesa")
        txn = await env.adapter.collect(kes(make_payment, "order-lag"))
        with pytest.raises(ProviderError) as lagging:
            await env.adapter.status(txn.reference, txn.provider_reference)
        assert (lagging.value.code, lagging.value.error_class) == (NOT_FOUND_CODE, ErrorClass.NOT_PROCESSED)
        await env.clock.advance(4)
        found = await env.adapter.status(txn.reference, txn.provider_reference)
        assert found.status is TransactionStatus.PENDING  # visible now, still on the phone

        payout = await env.adapter.payout(
            make_payment("payout-lag", 5_000, "KES", OTHER_PHONE, "KE", operation=Operation.PAYOUT)
        )
        await env.adapter.status(payout.reference)
        [not_yet] = [h for h in await env.receiver.wait_for(1) if h and h.extras["channel"] == "status_query"]
        assert (not_yet.status, not_yet.extras["query_result"]) == (TransactionStatus.UNKNOWN, "not_found")
        assert not_yet.reference == payout.reference
        await env.clock.advance(4)  # the push's callback and the B2C's result arrive meanwhile
        await env.adapter.status(payout.reference)
        hints = [hint(h) for h in await env.receiver.wait_for(4)]
        found_payout = [h for h in hints if h.extras.get("query_result") == "found"]
        assert found_payout and found_payout[-1].reference == payout.reference


# --- parse_callback ---------------------------------------------------------------------------


def adapter_for_parsing() -> MpesaAdapter:
    from mcp_autonomy.clock import ManualClock
    from tests.providers.conftest import mpesa_settings

    return MpesaAdapter(mpesa_settings("http://127.0.0.1:9", "http://127.0.0.1:9"), ManualClock())


STK_OK = {
    "Body": {
        "stkCallback": {
            "MerchantRequestID": "29115-34620561-1",
            "CheckoutRequestID": "ws_CO_191220191020363925",
            "ResultCode": 0,
            "ResultDesc": "The service request is processed successfully.",
            "CallbackMetadata": {
                "Item": [
                    {"Name": "Amount", "Value": 1.00},
                    {"Name": "MpesaReceiptNumber", "Value": "NLJ7RT61SV"},
                    {"Name": "TransactionDate", "Value": 20191219102115},
                    {"Name": "PhoneNumber", "Value": 254708374149},
                ]
            },
        }
    }
}


def parse(adapter: MpesaAdapter, body: Any, kind: str = "stk", reference: str | None = "ABCDEF123456") -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return adapter.parse_callback(raw, {}, path_kind=kind, path_reference=reference)


def test_parse_a_genuine_stk_callback() -> None:
    adapter = adapter_for_parsing()
    parsed = parse(adapter, STK_OK)
    assert parsed == CallbackHint(
        provider="mpesa",
        reference="ABCDEF123456",
        provider_reference="ws_CO_191220191020363925",
        operation=Operation.COLLECT,
        status=TransactionStatus.SUCCEEDED,
        money=Money(amount_minor=100, currency="KES"),
        payer="+254708374149",
        provider_code="0",
        provider_message="The service request is processed successfully.",
        extras={
            "channel": "stk",
            "merchant_request_id": "29115-34620561-1",
            "receipt": "NLJ7RT61SV",
            "transaction_date": "20191219102115",
        },
        authenticated=False,  # Daraja signs nothing: anyone who knows the URL can post this
    )
    assert parse(adapter, STK_OK) == parsed  # pure: a duplicate parses the same
    assert parse(adapter, STK_OK, reference="-").reference is None


def test_parse_a_failed_stk_callback_has_no_money() -> None:
    failed = {
        "Body": {
            "stkCallback": {
                "MerchantRequestID": "1",
                "CheckoutRequestID": "ws_CO_1",
                "ResultCode": 1032,
                "ResultDesc": "Request cancelled by user",
            }
        }
    }
    parsed = parse(adapter_for_parsing(), failed)
    assert (parsed.status, parsed.provider_code, parsed.money, parsed.payer) == (
        TransactionStatus.FAILED,
        "1032",
        None,
        None,
    )


def test_a_forged_or_mismatched_callback_is_carried_faithfully() -> None:
    forged = json.loads(json.dumps(STK_OK))
    forged["Body"]["stkCallback"]["CallbackMetadata"]["Item"][0]["Value"] = 999_999
    parsed = parse(adapter_for_parsing(), forged)
    # Unsigned and claiming another amount: parsed as claimed, for the engine to refuse.
    assert parsed.money == Money(amount_minor=99_999_900, currency="KES")
    assert parsed.authenticated is False


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"<html>not json</html>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        ({"Body": {}}, "stkCallback"),
        ({"Body": {"stkCallback": {"ResultCode": 0}}}, "CheckoutRequestID"),
        ({"Body": {"stkCallback": {"CheckoutRequestID": "ws_CO_1"}}}, "ResultCode"),
        ({"Result": {"ResultDesc": "x"}}, "ResultCode"),
        ({"Result": {"ResultCode": 0}}, "ConversationID"),
        ({"hello": "world"}, "expected Body.stkCallback or Result"),
    ],
)
def test_malformed_callbacks(body: Any, complaint: str) -> None:
    with pytest.raises(MalformedCallback, match=complaint):
        parse(adapter_for_parsing(), body)


def test_bad_amount_is_malformed() -> None:
    bad = json.loads(json.dumps(STK_OK))
    bad["Body"]["stkCallback"]["CallbackMetadata"]["Item"][0]["Value"] = "lots"
    with pytest.raises(MalformedCallback, match="Amount"):
        parse(adapter_for_parsing(), bad)


def test_unrelated_callbacks_are_none() -> None:
    balance = {
        "Result": {
            "ResultType": 0,
            "ResultCode": 0,
            "ResultDesc": "The service request is processed successfully.",
            "OriginatorConversationID": "16917-22577599-3",
            "ConversationID": "AG_20200206_00005e091a8ec6b9eac5",
            "TransactionID": "OA90000000",
            "ResultParameters": {
                "ResultParameter": [
                    {"Key": "AccountBalance", "Value": "Working Account|KES|700000.00|700000.00|0.00|0.00"},
                    {"Key": "BOCompletedTime", "Value": 20200109125710},
                ]
            },
        }
    }
    c2b = {"TransactionType": "Pay Bill", "TransID": "RKTQDM7W6S", "TransAmount": "10", "BillRefNumber": "x"}
    adapter = adapter_for_parsing()
    assert parse(adapter, balance, kind="result") is None
    assert parse(adapter, c2b, kind="stk") is None


def test_parse_the_documented_transaction_status_result() -> None:
    documented = {
        "Result": {
            "ConversationID": "AG_20180223_0000493344ae97d86f75",
            "OriginatorConversationID": "3213-416199-2",
            "ReferenceData": {"ReferenceItem": {"Key": "Occasion"}},
            "ResultCode": 0,
            "ResultDesc": "The service request is processed successfully.",
            "ResultParameters": {
                "ResultParameter": [
                    {"Key": "DebitPartyName", "Value": "600310 - Safaricom333"},
                    {"Key": "CreditPartyName", "Value": "254708374149 - John Doe"},
                    {"Key": "OriginatorConversationID", "Value": "3211-416020-3"},
                    {"Key": "InitiatedTime", "Value": 20180223054112},
                    {"Key": "DebitAccountType", "Value": "Utility Account"},
                    {"Key": "DebitPartyCharges", "Value": "Fee For B2C Payment|KES|22.40"},
                    {"Key": "TransactionReason"},
                    {"Key": "ReasonType", "Value": "Business Payment to Customer via API"},
                    {"Key": "TransactionStatus", "Value": "Completed"},
                    {"Key": "FinalisedTime", "Value": 20180223054112},
                    {"Key": "Amount", "Value": 300},
                    {"Key": "ConversationID", "Value": "AG_20180223_000041b09c22e613d6c9"},
                    {"Key": "ReceiptNo", "Value": "MBN31H462N"},
                ]
            },
            "ResultType": 0,
            "TransactionID": "MBN0000000",
        }
    }
    parsed = parse(adapter_for_parsing(), documented, kind="result")
    assert (parsed.status, parsed.operation, parsed.reference) == (
        TransactionStatus.SUCCEEDED,
        Operation.PAYOUT,
        "ABCDEF123456",
    )
    assert parsed.money == Money(amount_minor=30_000, currency="KES") and parsed.payer == "+254708374149"
    assert parsed.provider_reference == "AG_20180223_000041b09c22e613d6c9"  # the payment's, not the query's
    assert parsed.extras == {
        "channel": "status_query",
        "status_query": "AG_20180223_0000493344ae97d86f75",
        "reason_type": "Business Payment to Customer via API",
        "query_result": "found",
        "transaction_status": "Completed",
        "receipt": "MBN31H462N",
        "finalised_time": "20180223054112",
    }


def test_a_queue_timeout_is_unknown() -> None:
    timeout = {
        "Result": {
            "ResultType": 0,
            "ResultCode": 1037,
            "ResultDesc": "DS timeout user cannot be reached",
            "OriginatorConversationID": "ABCDEF123456",
            "ConversationID": "AG_1",
        }
    }
    parsed = parse(adapter_for_parsing(), timeout, kind="timeout")
    assert (parsed.status, parsed.extras["channel"]) == (TransactionStatus.UNKNOWN, "timeout")


def test_money_truth_is_declared() -> None:
    truth = MpesaAdapter.money_truth
    assert truth.callback_auth == "none" and truth.pull_carries == {"status", "reason"}
    assert truth.not_found_grace_s >= 60 and not truth.not_found_is_final_after_grace
    assert truth.sources


# --- the classification table ---------------------------------------------------------------------


async def test_a_busy_subscriber_is_the_customers_error(mpesa_env: Env, make_payment: MakePayment) -> None:
    async with mpesa_env() as env:
        env.sandbox.customers.set(CustomerBehavior(msisdn=PHONE, action="accept", delay_s=30))
        await env.adapter.collect(kes(make_payment, "order-busy-1"))
        with pytest.raises(ProviderError) as busy:  # a second prompt while the first is open
            await env.adapter.collect(kes(make_payment, "order-busy-2"))
        assert (busy.value.error_class, busy.value.code) == (ErrorClass.CUSTOMER, "500.001.1001")
        assert not busy.value.safe_to_fail_over  # another provider would meet the same busy customer
        assert len(env.sandbox.ledger.charges_for(PHONE)) == 1


def mock_settings() -> MpesaSettings:
    """Settings for an adapter that talks to a `MockTransport` (fake credentials)."""
    config = MpesaSandboxConfig()
    return MpesaSettings(
        consumer_key=SecretStr(config.consumer_key),
        consumer_secret=SecretStr(config.consumer_secret),
        shortcode=config.shortcode,
        passkey=SecretStr(config.passkey),
        base_url="http://daraja.invalid",
        callback_url="http://merchant.invalid/mpesa/stk",
    )


def daraja(answer: httpx.Response) -> httpx.MockTransport:
    """Daraja that issues tokens and gives every other call `answer`."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/v1/generate":
            return httpx.Response(200, json={"access_token": "token", "expires_in": "3599"})
        return answer

    return httpx.MockTransport(handler)


def _answer_of(match: str) -> tuple[int, dict[str, Any]]:
    """The Daraja answer a synchronous rule describes (its code, and its phrase as the message)."""
    code, _, phrase = match.partition(": ")
    if code.startswith("policies.") or code.startswith("messaging."):
        return 503 if "ServiceUnavailable" in code else 500, {
            "fault": {"faultstring": "edge fault", "detail": {"errorcode": code}}
        }
    status = int(code[:3])
    return status, {"requestId": "1-2-3", "errorCode": code, "errorMessage": phrase or "Daraja said so"}


SYNC_CODE_RULES = [
    rule
    for rule in ERROR_RULES
    if not rule.match.startswith(("final result", "HTTP", "400.002.02: invalid checkoutrequestid"))
]


@pytest.mark.parametrize("rule", SYNC_CODE_RULES, ids=lambda rule: rule.match)
async def test_every_synchronous_rule_classifies_a_push(
    clock: ManualClock, make_payment: MakePayment, rule: Any
) -> None:
    status, body = _answer_of(rule.match)
    adapter = MpesaAdapter(mock_settings(), clock, transport=daraja(httpx.Response(status, json=body)))
    with pytest.raises(ProviderError) as refused:
        await adapter.collect(kes(make_payment, "order-rule"))
    assert refused.value.error_class is rule.error_class
    await adapter.close()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            httpx.Response(200, json={"ResponseCode": "1", "ResponseDescription": "Rejected"}),
            ErrorClass.NOT_PROCESSED,
        ),
        (
            httpx.Response(500, json={"errorCode": "500.001.1001", "errorMessage": "Something"}),
            ErrorClass.AMBIGUOUS,
        ),
        (httpx.Response(502, text="<html>bad gateway</html>"), ErrorClass.AMBIGUOUS),
    ],
    ids=["refused-at-submission", "unlisted-500.001.1001", "bare-502"],
)
async def test_answers_without_a_listed_code(
    clock: ManualClock, make_payment: MakePayment, answer: httpx.Response, expected: ErrorClass
) -> None:
    adapter = MpesaAdapter(mock_settings(), clock, transport=daraja(answer))
    with pytest.raises(ProviderError) as refused:
        await adapter.collect(kes(make_payment, "order-answer"))
    assert refused.value.error_class is expected
    await adapter.close()


def test_error_rules_cite_their_sources() -> None:
    matches = [rule.match for rule in MpesaAdapter.error_rules]
    assert len(matches) == len(set(matches))
    for rule in MpesaAdapter.error_rules:
        assert rule.source.strip(), rule.match
        if rule.error_class is ErrorClass.NOT_PROCESSED:
            assert not rule.source.startswith(NO_SOURCE), rule.match
    # Unable to lock subscriber, synchronous or final, is the customer's.
    assert {"1", "17", "1001", "1019", "1032", "1037", "2001"} <= MpesaAdapter.customer_codes
    # A B2C result's 1 and 2001 are the merchant's (short account, wrong initiator).
    assert not {"b2c:1", "b2c:2001"} & MpesaAdapter.customer_codes
