"""PaystackAdapter against the Paystack emulator over loopback HTTP, time driven by a manual clock."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from pydantic import SecretStr

from mcp_autonomy.providers.base import (
    NOT_FOUND_CODE,
    ErrorClass,
    Money,
    Operation,
    PaymentRequest,
    ProviderError,
    TransactionStatus,
)
from mcp_autonomy.providers.paystack import PaystackAdapter, PaystackSettings
from mcp_autonomy.sandbox import (
    AcceptThenHangSpec,
    CredentialExpirySpec,
    CustomerBehavior,
    EndpointKind,
    ErrorRateSpec,
    LedgerStatus,
    OutageSpec,
    ThrottleSpec,
)

if TYPE_CHECKING:
    from tests.providers.conftest import PaystackEnv

pytestmark = pytest.mark.anyio

KE_PHONE = "+254700000011"
GH_PHONE = "+233550000012"
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
        assert wrong.value.error_class is ErrorClass.INVALID_REQUEST
        offline = await env.adapter.submit_otp(txn.reference, "123456")
        assert offline.raw_status == "pay_offline"
        await env.clock.advance(5)
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.SUCCEEDED
        # Ghanaian numbers travel in national form and are recorded as E.164.
        assert env.sandbox.ledger.charges_for(GH_PHONE)[0].amount_minor == 2_500


@pytest.mark.parametrize(
    ("behavior", "raw", "after_s"), [("decline", "failed", 5), ("ignore", "abandoned", 180)]
)
async def test_declined_and_abandoned_charges_fail(
    paystack_env: Env, make_payment: MakePayment, behavior: str, raw: str, after_s: float
) -> None:
    async with paystack_env() as env:
        env.sandbox.customers.set(
            CustomerBehavior(msisdn=KE_PHONE, action=behavior, decline_code="Insufficient Funds")
        )
        txn = await env.adapter.collect(kes(make_payment, f"ps-order-{behavior}"))
        await env.clock.advance(after_s)
        polled = await env.adapter.status(txn.reference)
        assert (polled.status, polled.raw_status) == (TransactionStatus.FAILED, raw)
        if behavior == "decline":
            assert polled.provider_message == "Insufficient Funds"


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
        assert (await env.adapter.status(txn.reference)).status is TransactionStatus.FAILED


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
