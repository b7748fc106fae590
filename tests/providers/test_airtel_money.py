"""AirtelMoneyAdapter against the Airtel emulator over loopback HTTP, time driven by a manual clock."""

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
from mcp_autonomy.providers.airtel_money import (
    ERROR_RULES,
    AirtelMoneyAdapter,
    AirtelMoneySettings,
    amount_value,
    callback_hash,
)
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
from mcp_autonomy.sandbox.core import Realism

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
        assert timed_out.provider_code in AirtelMoneyAdapter.customer_codes  # no answer from the customer


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


async def test_refused_outage_is_not_processed_and_not_found_is_reported_as_such(
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
        # "Not found" is reported at once: whether it is "too early" is the engine's call
        # (`money_truth.not_found_grace_s`), never the adapter's.
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


# --- money truth: status with no memory, lookup lag, identifiers, callbacks ----------------------

KE_PHONE = "+254732000001"
CALLBACK_KEY = "zITVAAGYSlzl1WkUQJn81kbpT5drH3koffT8jCkcJJA="  # the docs' example key: fake


def context_for(request: PaymentRequest, **kw: Any) -> PaymentContext:
    """What the engine would hand `status()` for `request` (no adapter memory needed)."""
    return PaymentContext(
        reference=AirtelMoneyAdapter.reference_for(request.idempotency_key),
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


async def test_initialize_drops_the_probe_cache(airtel_env: Env) -> None:
    async with airtel_env() as env:
        assert (await env.adapter.probe()).ok
        env.sandbox.faults.add("airtel_money", OutageSpec(mode="503"), endpoints=[EndpointKind.PROBE])
        assert (await env.adapter.probe()).detail.endswith("(cached)")  # within the interval
        await env.adapter.initialize()  # a heal: the next probe must ask Airtel again
        with pytest.raises(ProviderError) as down:
            await env.adapter.probe()
        assert down.value.http_status == 503


async def test_status_with_context_from_a_fresh_adapter(airtel_env: Env) -> None:
    async with airtel_env(payouts=True, countries=["UG", "KE"]) as env:
        collect = ugx("airtel-ctx-collect", 2_000, KE_PHONE, currency="KES", country="KE")
        payout = ugx("airtel-ctx-payout", 7_000, OTHER_PHONE, operation=Operation.PAYOUT)
        await env.adapter.collect(collect)
        await env.adapter.payout(payout)
        reference = context_for(collect).reference
        fresh = env.new_adapter()  # a restart, or another replica: knows neither payment
        with pytest.raises(ProviderError) as elsewhere:
            await fresh.status(reference)  # without a context it can only guess the country (UG)
        assert elsewhere.value.code == NOT_FOUND_CODE
        pending = await fresh.status(reference, context=context_for(collect))
        assert (pending.status, pending.raw_status, pending.money) == (
            TransactionStatus.PENDING,
            "TIP",
            None,  # Airtel's enquiry carries no amount: none is invented
        )
        assert "payer" not in pending.raw
        sending = await env.new_adapter().status(context_for(payout).reference, context=context_for(payout))
        assert (sending.status, sending.provider_code) == (TransactionStatus.PENDING, "DP00900001006")
        await env.clock.advance(5)
        paid = await env.new_adapter().status(reference, context=context_for(collect))
        assert (paid.status, paid.raw_status) == (TransactionStatus.SUCCEEDED, "TS")
        assert paid.provider_reference == env.sandbox.ledger.charges_for(KE_PHONE)[0].receipt
        sent = await env.new_adapter().status(context_for(payout).reference, context=context_for(payout))
        assert (sent.status, sent.provider_code) == (TransactionStatus.SUCCEEDED, "DP00900001001")
        refund = await env.new_adapter().status(
            reference, context=context_for(collect).model_copy(update={"operation": Operation.REFUND})
        )
        assert refund.status is TransactionStatus.UNKNOWN  # no refund enquiry exists: never a guess
        assert "no refund enquiry" in (refund.provider_message or "")
        await fresh.close()


async def test_ta_from_context_is_unknown_with_airtels_message(airtel_env: Env) -> None:
    async with airtel_env() as env:
        env.sandbox.customers.set(
            CustomerBehavior(msisdn=PHONE, action="decline", decline_code="DP00800001000", delay_s=1)
        )
        request = ugx("airtel-ctx-ta")
        await env.adapter.collect(request)
        await env.clock.advance(1)
        ta = await env.new_adapter().status(context_for(request).reference, context=context_for(request))
        assert (ta.status, ta.raw_status) == (TransactionStatus.UNKNOWN, "TA")
        assert ta.provider_message == "The transaction is still processing and is in ambiguous state."


async def test_not_found_while_lookups_lag_then_found(airtel_env: Env) -> None:
    async with airtel_env() as env:
        env.sandbox.outbox.realism.set(Realism(lookup_lag_s=5.0), "airtel_money")
        request = ugx("airtel-lag-0001")
        reference = (await env.adapter.collect(request)).reference
        with pytest.raises(ProviderError) as early:
            await env.adapter.status(reference, context=context_for(request))
        assert early.value.code == NOT_FOUND_CODE
        # A resend meets the duplicate id while the enquiry still lags: Airtel holds it.
        replay = await env.adapter.collect(request)
        assert (replay.reference, replay.status) == (reference, TransactionStatus.UNKNOWN)
        await env.clock.advance(5)
        found = await env.adapter.status(reference, context=context_for(request))
        assert found.status is TransactionStatus.SUCCEEDED
        assert env.sandbox.ledger.count_by_reference(reference) == 1


async def test_identifiers_reach_the_sink_before_the_call_returns(airtel_env: Env) -> None:
    async with airtel_env() as env:
        sink = Sink()
        env.adapter.identifier_sink = sink
        request = ugx("airtel-ids-0001", 20_000)
        txn = await env.adapter.collect(request)
        await env.clock.advance(5)
        paid = await env.adapter.status(txn.reference)
        money_id = env.sandbox.ledger.charges_for(PHONE)[0].receipt
        assert sink.identifiers(txn.reference) == {"airtel_money_id": money_id}
        env.sandbox.faults.add("airtel_money", OutageSpec(mode="503"), endpoints=[EndpointKind.REFUND])
        with pytest.raises(ProviderError):
            await env.adapter.refund(paid)
        assert sink.identifiers(txn.reference) == {"airtel_money_id": money_id}  # no refund id invented
        env.sandbox.faults.clear()
        # A fresh adapter refunds with the id the engine stored (the pull showed it first).
        fresh = env.new_adapter()
        fresh.identifier_sink = sink
        refund = await fresh.refund(paid)
        assert refund.status is TransactionStatus.SUCCEEDED
        assert sink.identifiers(txn.reference)["refund_airtel_money_id"] == refund.provider_reference
        context = context_for(request, identifiers=sink.identifiers(txn.reference))
        assert (await env.new_adapter().status(txn.reference, context=context)).status is (
            TransactionStatus.REVERSED
        )
        await fresh.close()


@pytest.mark.parametrize("code", ["DP00900001014", "DP00900001000"])
async def test_an_ambiguous_disbursement_answer_is_never_a_refusal(clock: ManualClock, code: str) -> None:
    # "Transaction Timed Out: may be processed or failed" inside an HTTP 200 with success false:
    # treating it as a refusal would let the router pay the customer a second time elsewhere.
    def airtel(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/oauth2/token":
            return httpx.Response(
                200, json={"access_token": "t", "expires_in": "180", "token_type": "bearer"}
            )
        status = {"code": "200", "message": "Transaction Timed Out", "response_code": code, "success": False}
        return httpx.Response(
            200, json={"data": {"transaction": {"id": "x", "status": "TIP"}}, "status": status}
        )

    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    settings = AirtelMoneySettings(
        client_id="id",
        client_secret=SecretStr("secret"),
        base_url="http://airtel.invalid",
        disbursement_pin=SecretStr("1234"),
        pin_public_key=SecretStr(
            public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
        ),
    )
    adapter = AirtelMoneyAdapter(settings, clock, transport=httpx.MockTransport(airtel))
    with pytest.raises(ProviderError) as maybe:
        await adapter.payout(ugx("airtel-payout-slow", 1_000, operation=Operation.PAYOUT))
    assert (maybe.value.error_class, maybe.value.code) == (ErrorClass.AMBIGUOUS, code)
    assert not maybe.value.safe_to_fail_over
    await adapter.close()


# --- parse_callback (pure) -------------------------------------------------------------------------


def parser(clock: ManualClock, **overrides: Any) -> AirtelMoneyAdapter:
    values: dict[str, Any] = {
        "client_id": "id",
        "client_secret": SecretStr("secret"),
        "base_url": "http://127.0.0.1:9",
        **overrides,
    }
    return AirtelMoneyAdapter(AirtelMoneySettings(**values), clock)


REFERENCE = AirtelMoneyAdapter.reference_for("airtel-order-cb")


def airtel_callback(**overrides: Any) -> dict[str, Any]:
    """A collection callback as Airtel sends it (the docs' example, with our id)."""
    transaction = {
        "id": REFERENCE,
        "message": "Paid UGX 5,000 to TECHNOLOGIES LIMITED Charge UGX 140, Trans ID MP210603.1234.L06941.",
        "status_code": "TS",
        "airtel_money_id": "MP210603.1234.L06941",
    }
    transaction.update(overrides)
    return {"transaction": transaction}


def signed(body: dict[str, Any], key: str = CALLBACK_KEY) -> dict[str, Any]:
    return {**body, "hash": callback_hash(body["transaction"], key)}


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


def test_parse_a_genuine_callback_unsigned_by_default(clock: ManualClock) -> None:
    adapter = parser(clock)
    assert isinstance(adapter, CallbackSource)
    hint = adapter.parse_callback(raw(airtel_callback()), {}, path_kind="collect", path_reference="-")
    assert hint is not None
    assert (hint.reference, hint.provider_reference, hint.operation, hint.status) == (
        REFERENCE,
        "MP210603.1234.L06941",
        Operation.COLLECT,
        TransactionStatus.SUCCEEDED,
    )
    assert (hint.money, hint.payer) == (None, None)  # the callback carries neither (only a text)
    assert hint.authenticated is False  # no private key configured: nothing can be verified
    assert hint.extras == {"airtel_money_id": "MP210603.1234.L06941"}
    failed = adapter.parse_callback(
        raw(airtel_callback(status_code="TF", airtel_money_id=None, message="The transaction was refused.")),
        {},
        path_kind="callback",
        path_reference=None,
    )
    assert failed is not None
    assert (failed.status, failed.provider_reference, failed.operation, failed.provider_code) == (
        TransactionStatus.FAILED,
        None,
        None,  # the dashboard URL did not say which product
        "TF",
    )


def test_callback_authentication_verifies_the_hash(clock: ManualClock) -> None:
    adapter = parser(clock, callback_private_key=SecretStr(CALLBACK_KEY))
    hint = adapter.parse_callback(raw(signed(airtel_callback())), {}, path_kind="collect", path_reference="-")
    assert hint is not None and hint.authenticated is True
    # Some integrators sign the transaction object alone: the same key proves the same sender.
    import base64
    import hashlib
    import hmac

    alone = json.dumps(airtel_callback()["transaction"], separators=(",", ":")).encode()
    digest = base64.b64encode(hmac.new(CALLBACK_KEY.encode(), alone, hashlib.sha256).digest()).decode()
    other = adapter.parse_callback(
        raw({**airtel_callback(), "hash": digest}), {}, path_kind="collect", path_reference="-"
    )
    assert other is not None and other.authenticated
    with pytest.raises(CallbackAuthError) as missing:
        adapter.parse_callback(raw(airtel_callback()), {}, path_kind="collect", path_reference="-")
    assert "hash" in str(missing.value)
    with pytest.raises(CallbackAuthError) as wrong_key:
        adapter.parse_callback(
            raw(signed(airtel_callback(), "not-the-key")), {}, path_kind="collect", path_reference="-"
        )
    assert CALLBACK_KEY not in str(wrong_key.value)
    tampered = signed(airtel_callback(status_code="TF"))
    tampered["transaction"]["status_code"] = "TS"  # signed as failed, claims success
    with pytest.raises(CallbackAuthError):
        adapter.parse_callback(raw(tampered), {}, path_kind="collect", path_reference="-")


def test_a_forged_unsigned_callback_parses_unauthenticated(clock: ManualClock) -> None:
    # Without callback authentication anyone who learns the URL can post this: it parses, and
    # only the engine's pull can refuse it.
    forged = airtel_callback(message="Paid UGX 9,999,999 to THIEF", airtel_money_id="MP000000.0000.X00000")
    hint = parser(clock).parse_callback(raw(forged), {}, path_kind="collect", path_reference="-")
    assert hint is not None
    assert (hint.authenticated, hint.status, hint.money) == (False, TransactionStatus.SUCCEEDED, None)
    assert hint.provider_message == "Paid UGX 9,999,999 to THIEF"  # the claim, carried as is


def test_parse_is_pure_and_a_duplicate_parses_the_same(clock: ManualClock) -> None:
    adapter = parser(clock, callback_private_key=SecretStr(CALLBACK_KEY))
    body = raw(signed(airtel_callback()))
    first = adapter.parse_callback(body, {}, path_kind="collect", path_reference="-")
    assert first == adapter.parse_callback(body, {}, path_kind="collect", path_reference="-")
    assert adapter._identifiers == {}


@pytest.mark.parametrize(
    ("body", "missing"),
    [
        (b"not json at all", "not JSON"),
        (b"\xff", "not JSON"),
        (b'[{"transaction": {}}]', "not a JSON object"),
        (raw({"status": {"code": "200"}}), "missing transaction"),
        (raw({"transaction": "TS"}), "missing transaction"),
        (raw({"transaction": {"status_code": "TS"}}), "transaction.id"),
        (raw({"transaction": {"id": REFERENCE}}), "transaction.status_code"),
    ],
)
def test_malformed_callbacks_are_refused(clock: ManualClock, body: bytes, missing: str) -> None:
    # Airtel sends one callback shape: a body without a transaction is malformed, never "unrelated".
    with pytest.raises(MalformedCallback) as refused:
        parser(clock).parse_callback(body, {}, path_kind="collect", path_reference="-")
    assert missing in str(refused.value)


def test_a_callback_for_another_reference_than_its_url_is_refused(clock: ManualClock) -> None:
    with pytest.raises(MalformedCallback):
        parser(clock).parse_callback(
            raw(airtel_callback()), {}, path_kind="collect", path_reference="AMSOMEONEELSE0000000"
        )


def test_money_truth() -> None:
    truth = AirtelMoneyAdapter.money_truth
    assert truth.pull_carries.isdisjoint({"amount", "currency", "payer"})  # say so, never invent
    assert truth.callback_carries.isdisjoint({"amount", "currency", "payer"})
    assert not truth.not_found_is_final_after_grace
    assert truth.callback_auth == "none"


# --- the classification table ------------------------------------------------------------------------


async def test_a_customers_failure_is_final_with_its_code(airtel_env: Env) -> None:
    async with airtel_env() as env:
        env.sandbox.customers.set(
            CustomerBehavior(msisdn=PHONE, action="decline", decline_code="DP00800001007", delay_s=2)
        )
        txn = await env.adapter.collect(ugx("airtel-order-broke"))
        await env.clock.advance(2)
        failed = await env.adapter.status(txn.reference)
        assert (failed.status, failed.provider_code) == (TransactionStatus.FAILED, "DP00800001007")
        assert failed.provider_code in AirtelMoneyAdapter.customer_codes


def _pin_settings() -> AirtelMoneySettings:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return AirtelMoneySettings(
        client_id="id",
        client_secret=SecretStr("secret"),
        base_url="http://airtel.invalid",
        disbursement_pin=SecretStr("1234"),
        pin_public_key=SecretStr(
            public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
        ),
    )


def scripted(clock: ManualClock, settings: AirtelMoneySettings, status: dict[str, Any]) -> AirtelMoneyAdapter:
    """Airtel that issues tokens and answers every other call HTTP 200 with `status`."""

    def airtel(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/oauth2/token":
            return httpx.Response(
                200, json={"access_token": "t", "expires_in": "180", "token_type": "bearer"}
            )
        return httpx.Response(
            200, json={"data": {"transaction": {"id": "x", "status": "TF"}}, "status": status}
        )

    return AirtelMoneyAdapter(settings, clock, transport=httpx.MockTransport(airtel))


CODE_RULES = [
    rule
    for rule in ERROR_RULES
    if rule.match.startswith(("DP", "ESB", "ROUTER"))
    and rule.match
    not in ("ESB000041", "DP00900001011", "DP00900001017", "DP00800001025", "DP00900001015", "ESB000045")
]


@pytest.mark.parametrize("rule", CODE_RULES, ids=lambda rule: rule.match)
async def test_every_code_rule_classifies_a_refusal(clock: ManualClock, rule: Any) -> None:
    status = {"code": "200", "message": "Airtel said so", "response_code": rule.match, "success": False}
    if rule.match.startswith("DP009"):
        adapter = scripted(clock, _pin_settings(), status)
        call = adapter.payout(ugx("airtel-rule-payout", operation=Operation.PAYOUT))
    else:
        adapter = scripted(clock, _pin_settings(), status)
        call = adapter.collect(ugx("airtel-rule-collect"))
    with pytest.raises(ProviderError) as refused:
        await call
    assert refused.value.error_class is rule.error_class
    await adapter.close()


async def test_an_unlisted_disbursement_refusal_stays_ambiguous(clock: ManualClock) -> None:
    status = {"code": "200", "message": "Something new", "response_code": "DP00900001099", "success": False}
    adapter = scripted(clock, _pin_settings(), status)
    with pytest.raises(ProviderError) as refused:
        await adapter.payout(ugx("airtel-unlisted", operation=Operation.PAYOUT))
    assert refused.value.error_class is ErrorClass.AMBIGUOUS  # no source says it was not sent
    await adapter.close()


def test_error_rules_cite_their_sources() -> None:
    matches = [rule.match for rule in AirtelMoneyAdapter.error_rules]
    assert len(matches) == len(set(matches))
    for rule in AirtelMoneyAdapter.error_rules:
        assert rule.source.strip(), rule.match
        if rule.error_class is ErrorClass.NOT_PROCESSED:
            assert not rule.source.startswith(NO_SOURCE), rule.match
    by_match = {rule.match: rule.error_class for rule in AirtelMoneyAdapter.error_rules}
    assert by_match["DP00900001007"] is ErrorClass.NOT_PROCESSED  # the merchant's float
    assert by_match["DP00800001007"] is ErrorClass.CUSTOMER  # the customer's wallet
    assert "DP00900001007" not in AirtelMoneyAdapter.customer_codes
