"""Customer errors are the customer's: a busy subscriber, the real decline codes, and storms of
them, for every emulator. The provider itself answers normally throughout: nothing here may look
like a provider fault (no 5xx, no refusal but the busy subscriber's own)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from starlette.applications import Starlette

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.sandbox import (
    CustomerBehavior,
    CustomerErrorsSpec,
    EndpointKind,
    FaultEngine,
    LedgerStatus,
    SandboxAddress,
    sandbox_of,
)
from mcp_autonomy.sandbox.core import BUSY_RESULT_DELAY_S
from mcp_autonomy.sandbox.mpesa import MpesaSandboxConfig
from tests.sandbox.payers import (
    PROVIDERS,
    answered_normally,
    collect,
    ledger_reference,
    phone,
    reported_code,
)

pytestmark = pytest.mark.anyio

Served = Callable[..., AbstractAsyncContextManager[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]]
TIMESTAMP = "20260101030000"
LOCKED_SUBSCRIBER = (
    "Unable to lock subscriber, a transaction is already in process for the current subscriber"
)
BUSY_RESULT = {
    "paystack": "Declined",
    "mtn_momo": "APPROVAL_REJECTED",
    "airtel_money": "DP00800001008",
    "intasend": "1001",
    "flutterwave": "Transaction declined by customer",
}
"""What a busy subscriber's prompt ends with where the provider cannot refuse it synchronously."""
NO_ANSWER = {
    "mpesa": ("1037", 60.0),
    "paystack": ("abandoned", 3600.0),
    "mtn_momo": ("EXPIRED", 300.0),
    "airtel_money": ("DP00800001024", 60.0),
    "intasend": ("1037", 60.0),
    "flutterwave": ("Transaction timed out", 180.0),
}
"""Each provider's no-answer code and when it is final (the storm's default)."""
SHORT_OF_FUNDS = {
    "mpesa": "1",
    "paystack": "Insufficient Funds",
    "mtn_momo": "NOT_ENOUGH_FUNDS",
    "airtel_money": "DP00800001007",
    "intasend": "1",
    "flutterwave": "Insufficient funds",
}


# --- a busy (locked) subscriber ----------------------------------------------------------------


async def test_mpesa_refuses_a_busy_subscriber_at_once_and_records_nothing(served: Served) -> None:
    async with served() as (app, _, client):
        sandbox = sandbox_of(app)
        busy = phone("mpesa", 10)
        answer = await client.post("/_control/customers", json={"msisdn": busy, "action": "busy"})
        assert answer.status_code == 201
        refused = await collect(client, "mpesa", "RBUSY", busy)
        body = refused.json()
        assert refused.status_code == 500
        assert set(body) == {"requestId", "errorCode", "errorMessage"}
        assert (body["errorCode"], body["errorMessage"]) == ("500.001.1001", LOCKED_SUBSCRIBER)
        assert len(sandbox.ledger) == 0  # no CheckoutRequestID, nothing to pull, nothing charged
        # Another customer is served normally: the provider is fine.
        assert answered_normally("mpesa", await collect(client, "mpesa", "ROTHER", phone("mpesa", 11)))


@pytest.mark.parametrize("provider", sorted(BUSY_RESULT))
async def test_other_providers_fail_a_busy_subscribers_prompt_at_once(
    served: Served, clock: ManualClock, provider: str
) -> None:
    async with served() as (app, _, client):
        sandbox = sandbox_of(app)
        busy = phone(provider, 12)
        sandbox.customers.set(CustomerBehavior(msisdn=busy, action="busy"))
        assert answered_normally(provider, await collect(client, provider, "RBUSY", busy))
        [entry] = sandbox.ledger.entries(reference=ledger_reference(provider, "RBUSY"))
        await clock.advance(BUSY_RESULT_DELAY_S)
        assert entry.status is LedgerStatus.FAILED and not entry.moved_money
        assert reported_code(entry) == BUSY_RESULT[provider]


# --- M-Pesa's real customer codes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("decline_code", "expected", "after_s"),
    [(None, "1032", 5.0), (1, "1", 5.0), (2001, "2001", 5.0), ("1032", "1032", 5.0), (1037, "1037", 60.0)],
)
async def test_mpesa_declines_with_the_real_customer_codes(
    served: Served, clock: ManualClock, decline_code: int | str | None, expected: str, after_s: float
) -> None:
    async with served() as (app, _, client):
        sandbox = sandbox_of(app)
        payer = phone("mpesa", 13)
        behavior = {"msisdn": payer, "action": "decline", "decline_code": decline_code}
        assert (await client.post("/_control/customers", json=behavior)).status_code == 201
        pushed = await collect(client, "mpesa", "RDECLINE", payer)
        [entry] = sandbox.ledger.entries(reference="RDECLINE")
        await clock.advance(after_s - 0.5)
        assert entry.status is LedgerStatus.PENDING  # 1037 comes at the prompt's timeout, not before
        await clock.advance(0.5)
        assert (entry.status, entry.result_code) == (LedgerStatus.FAILED, expected)
        [callback] = [r.body["Body"]["stkCallback"] for r in sandbox.outbox.records("mpesa")]
        assert callback["ResultCode"] == int(expected) and "CallbackMetadata" not in callback
        # The STK query reports the same code, as a string, as Daraja does.
        config = MpesaSandboxConfig()
        token = await client.get(
            "/mpesa/oauth/v1/generate",
            params={"grant_type": "client_credentials"},
            auth=(config.consumer_key, config.consumer_secret),
        )
        query = await client.post(
            "/mpesa/mpesa/stkpushquery/v1/query",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            json={
                "BusinessShortCode": config.shortcode,
                "Password": _password(config, TIMESTAMP),
                "Timestamp": TIMESTAMP,
                "CheckoutRequestID": pushed.json()["CheckoutRequestID"],
            },
        )
        assert (query.json()["ResultCode"], query.json()["ResultDesc"]) == (expected, callback["ResultDesc"])


def _password(config: MpesaSandboxConfig, timestamp: str) -> str:
    return base64.b64encode(f"{config.shortcode}{config.passkey}{timestamp}".encode()).decode()


# --- customer-error storms ------------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_storm_fails_every_payer_with_the_no_answer_code_while_the_provider_answers(
    served: Served, clock: ManualClock, provider: str
) -> None:
    code, final_after_s = NO_ANSWER[provider]
    async with served() as (app, _, client):
        sandbox = sandbox_of(app)
        added = await client.post(
            "/_control/faults",
            json={"provider": provider, "kind": "customer_errors", "params": {"rate": 1.0}},
        )
        assert added.status_code == 201 and added.json()["fault"]["params"] == {
            "rate": 1.0,
            "synchronous": False,
        }
        for n in range(3):
            assert answered_normally(
                provider, await collect(client, provider, f"RSTORM{n}", phone(provider, 20 + n))
            )
        await clock.advance(final_after_s)
        entries = sandbox.ledger.entries(provider=provider)
        assert len(entries) == 3
        assert [(e.status, reported_code(e)) for e in entries] == [(LedgerStatus.FAILED, code)] * 3


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_storm_of_a_given_code(served: Served, clock: ManualClock, provider: str) -> None:
    async with served() as (app, _, client):
        sandbox = sandbox_of(app)
        sandbox.faults.add(provider, CustomerErrorsSpec(rate=1.0, code=SHORT_OF_FUNDS[provider]))
        assert answered_normally(provider, await collect(client, provider, "RSHORT", phone(provider, 30)))
        await clock.advance(5)  # the customer's usual delay
        [entry] = sandbox.ledger.entries(provider=provider)
        assert (entry.status, reported_code(entry)) == (LedgerStatus.FAILED, SHORT_OF_FUNDS[provider])


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_synchronous_storm_refuses_like_a_busy_subscriber(
    served: Served, clock: ManualClock, provider: str
) -> None:
    async with served() as (app, _, client):
        sandbox = sandbox_of(app)
        sandbox.faults.add(provider, CustomerErrorsSpec(rate=1.0, synchronous=True))
        answer = await collect(client, provider, "RSYNC", phone(provider, 31))
        await clock.advance(BUSY_RESULT_DELAY_S)
        if provider == "mpesa":
            assert (answer.status_code, answer.json()["errorMessage"]) == (500, LOCKED_SUBSCRIBER)
            assert len(sandbox.ledger) == 0
        else:
            [entry] = sandbox.ledger.entries(provider=provider)
            assert (entry.status, reported_code(entry)) == (LedgerStatus.FAILED, BUSY_RESULT[provider])


async def test_a_partial_storm_hits_its_rate_the_same_way_on_every_replay(
    served: Served, clock: ManualClock
) -> None:
    async def victims(seed: int) -> list[bool]:
        async with served(seed=seed) as (app, _, client):
            sandbox = sandbox_of(app)
            sandbox.faults.add("mpesa", CustomerErrorsSpec(rate=0.5), start_s=0, end_s=3600)
            for n in range(40):
                answer = await collect(client, "mpesa", f"RPART{n}", phone("mpesa", 100 + n))
                assert answered_normally("mpesa", answer)
            await clock.advance(60)
            return [e.result_code == "1037" for e in sandbox.ledger.entries(provider="mpesa")]

    first = await victims(seed=1)
    assert 10 <= sum(first) <= 30
    assert first == await victims(seed=1)
    assert first != await victims(seed=2)


async def test_a_storm_ends_with_its_window_and_spares_other_providers(
    served: Served, clock: ManualClock
) -> None:
    async with served() as (app, _, client):
        sandbox = sandbox_of(app)
        sandbox.faults.add("mpesa", CustomerErrorsSpec(rate=1.0, code="1032"), end_s=10)
        await collect(client, "mpesa", "RIN", phone("mpesa", 40))
        await collect(client, "intasend", "RSPARED", phone("intasend", 41))
        await clock.advance(10)
        await collect(client, "mpesa", "ROUT", phone("mpesa", 42))
        await clock.advance(5)
        outcomes = {e.reference: reported_code(e) for e in sandbox.ledger.entries()}
        assert outcomes == {"RIN": "1032", "RSPARED": "COMPLETE", "ROUT": "0"}


async def test_a_storm_is_invisible_to_the_fault_pipeline(clock: ManualClock) -> None:
    """What breakers feed on (the verdict of each request) sees nothing wrong during a storm."""
    engine = FaultEngine(clock)
    engine.add("mpesa", CustomerErrorsSpec(rate=1.0))
    for endpoint in EndpointKind:
        verdict = await engine.before_request("mpesa", endpoint)
        assert (verdict.rejection, verdict.error_after_processing, verdict.hang) == (None, None, None)
    assert engine.customer_error("mpesa") is not None and engine.customer_error("paystack") is None


async def test_the_control_api_checks_a_storms_code_and_target(served: Served) -> None:
    async with served() as (_, _, client):

        async def add(params: dict[str, object], **extra: object) -> httpx.Response:
            body = {"provider": "mpesa", "kind": "customer_errors", "params": params, **extra}
            return await client.post("/_control/faults", json=body)

        assert (await add({"rate": 0.8, "code": 1032})).json()["fault"]["params"]["code"] == "1032"
        unknown = await add({"rate": 0.8, "code": "9999"})
        assert unknown.status_code == 400 and "1037" in unknown.json()["detail"][0]["message"]
        assert (await add({"rate": 1.5})).status_code == 400
        payouts = await add({"rate": 0.5}, endpoints=["payout"])
        assert payouts.status_code == 400 and payouts.json()["detail"][0]["field"] == "endpoints"
        assert (await add({"rate": 0.5}, endpoints=["collect"])).status_code == 201
