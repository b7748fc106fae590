"""The ledger's queries, and the JSON control API (faults, customers, ledger, callbacks)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from starlette.applications import Starlette

from mcp_autonomy.clock import ManualClock, iso
from mcp_autonomy.sandbox import (
    PROVIDERS,
    Ledger,
    LedgerOperation,
    LedgerStatus,
    MpesaSandboxConfig,
    PaystackSandboxConfig,
    SandboxAddress,
    create_sandbox_app,
    sandbox_of,
)

pytestmark = pytest.mark.anyio

Served = Callable[..., AbstractAsyncContextManager[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]]
PAYSTACK_AUTH = {"Authorization": f"Bearer {PaystackSandboxConfig().secret_keys[0]}"}


def problems(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    return {item["field"]: item["message"] for item in body["detail"]}


# --- the ledger ------------------------------------------------------------------------------


async def test_ledger_queries_prove_single_charges(clock: ManualClock) -> None:
    ledger = Ledger(clock)

    def charge(reference: str, msisdn: str, amount: int = 1_000) -> None:
        ledger.record(
            provider="mpesa",
            operation=LedgerOperation.COLLECT,
            provider_reference=f"ws_CO_{reference}",
            reference=reference,
            msisdn=msisdn,
            amount_minor=amount,
            currency="KES",
        )

    charge("R1", "+254700000031")
    charge("R2", "+254700000031", 2_500)
    charge("R3", "+254700000032")
    payout = ledger.record(
        provider="mpesa",
        operation=LedgerOperation.PAYOUT,
        provider_reference="AG_1",
        reference="R1",
        msisdn="+254700000031",
        amount_minor=500,
        currency="KES",
    )
    await clock.advance(10)
    first = ledger.get("mpesa", "ws_CO_R1")
    assert first is not None
    ledger.settle(first, LedgerStatus.SUCCEEDED, result_code="0", receipt="SABC")
    second = ledger.get("mpesa", "ws_CO_R2")
    assert second is not None
    ledger.settle(second, LedgerStatus.FAILED, result_code="1032")

    assert [e.reference for e in ledger.charges_for("+254700000031")] == ["R1", "R2"]
    assert [e.reference for e in ledger.successful_charges_for("+254700000031")] == ["R1"]
    assert ledger.count_by_reference("R1") == 2  # the charge and the payout share it
    assert ledger.count_by_reference("R1", operation="collect") == 1
    assert ledger.total_collected_minor("+254700000031", "KES") == 1_000
    assert first.updated_at == first.created_at + 10 and first.receipt == "SABC"
    assert payout.status is LedgerStatus.PENDING
    ledger.settle(first, LedgerStatus.REVERSED)
    assert ledger.successful_charges_for("+254700000031")[0].moved_money  # reversed money did move
    assert ledger.total_collected_minor("+254700000031", "KES") == 0
    assert len(ledger) == 4
    assert first.to_json()["status"] == "reversed"


# --- app assembly ----------------------------------------------------------------------------


async def test_app_mounts_chosen_providers_only(clock: ManualClock) -> None:
    assert set(PROVIDERS) >= {"mpesa", "paystack"}
    only = create_sandbox_app(clock, providers=["paystack"])
    assert sandbox_of(only).providers == ["paystack"]
    with pytest.raises(ValueError, match="unknown sandbox provider"):
        create_sandbox_app(clock, providers=["orange"])
    with pytest.raises(TypeError):
        sandbox_of(Starlette())


# --- control API: faults -----------------------------------------------------------------------


async def test_fault_crud(served: Served, clock: ManualClock) -> None:
    async with served() as (_, _, control):
        await clock.advance(100)
        created = await control.post(
            "/_control/faults",
            json={
                "provider": "mpesa",
                "kind": "latency",
                "endpoints": ["collect", "status"],
                "start_s": 5,
                "end_s": 60,
                "params": {"distribution": "lognormal", "median_ms": 80, "p99_ms": 400},
            },
        )
        assert created.status_code == 201
        fault = created.json()["fault"]
        assert (fault["start_s"], fault["end_s"], fault["endpoints"]) == (105, 160, ["collect", "status"])
        # The same window in wall-clock time: the clock's wall time now plus 5 s and 60 s.
        assert (fault["start_at"], fault["end_at"]) == (iso(clock.now() + 5), iso(clock.now() + 60))
        assert fault["params"] == {"distribution": "lognormal", "median_ms": 80, "p99_ms": 400}
        await control.post("/_control/faults", json={"provider": "paystack", "kind": "outage"})

        listed = (await control.get("/_control/faults")).json()
        assert listed["now_s"] == 100 and len(listed["faults"]) == 2
        assert listed["now"] == iso(clock.now()) and listed["faults"][1]["end_at"] is None
        assert (
            len((await control.get("/_control/faults", params={"provider": "paystack"})).json()["faults"])
            == 1
        )

        assert (await control.delete(f"/_control/faults/{fault['id']}")).json() == {"removed": fault["id"]}
        assert (await control.delete(f"/_control/faults/{fault['id']}")).status_code == 404
        assert (await control.delete("/_control/faults")).json() == {"cleared": 1}


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ({"provider": "orange", "kind": "outage"}, "provider", "known: mpesa, paystack"),
        ({"provider": "mpesa", "kind": "earthquake"}, "kind", "outage"),
        (
            {"provider": "mpesa", "kind": "error_rate", "params": {"rate": 2}},
            "params.rate",
            "less than or equal",
        ),
        ({"provider": "mpesa", "kind": "error_rate", "params": {}}, "params.rate", "required"),
        (
            {"provider": "mpesa", "kind": "latency", "params": {"distribution": "lognormal"}},
            "params",
            "median_ms",
        ),
        (
            {"provider": "mpesa", "kind": "throttle", "params": {"max_per_s": 5, "burst": 1}},
            "params.burst",
            "not permitted",
        ),
        (
            {"provider": "mpesa", "kind": "outage", "endpoints": ["collect"]},
            "endpoints",
            "cannot target endpoints",
        ),
        ({"provider": "mpesa", "kind": "outage", "endpoints": ["withdraw"]}, "endpoints.0", "auth"),
        ({"provider": "mpesa", "kind": "outage", "start_s": 10, "end_s": 5}, "end_s", "must be after"),
        ({"provider": "mpesa", "kind": "outage", "when": "now"}, "when", "not permitted"),
    ],
)
async def test_invalid_faults_name_the_bad_field(
    served: Served, body: dict[str, object], field: str, says: str
) -> None:
    async with served() as (_, _, control):
        found = problems(await control.post("/_control/faults", json=body))
        assert field in found, found
        assert says in found[field]


async def test_non_json_bodies_are_refused(served: Served) -> None:
    async with served() as (_, _, control):
        assert "body" in problems(await control.post("/_control/faults", content=b"[1, 2]"))
        assert "body" in problems(await control.post("/_control/customers", content=b"not json"))


# --- control API: customers and ledger --------------------------------------------------------


async def test_customers_drive_the_emulators(served: Served, clock: ManualClock) -> None:
    async with served() as (app, address, control):
        phone = "+233550000041"
        created = await control.post(
            "/_control/customers",
            json={
                "msisdn": phone,
                "provider": "paystack",
                "action": "decline",
                "decline_code": "Declined",
                "delay_s": 2,
            },
        )
        assert created.status_code == 201
        assert (await control.get("/_control/customers")).json()["customers"][0]["action"] == "decline"

        async with httpx.AsyncClient(base_url=address.url("paystack")) as client:
            charge = {
                "email": "c@example.com",
                "amount": 1_200,
                "currency": "GHS",
                "reference": "cust-1",
                "mobile_money": {"phone": "0550000041", "provider": "mtn"},
            }
            assert (await client.post("/charge", json=charge, headers=PAYSTACK_AUTH)).status_code == 200
            await clock.advance(2)
            verified = (await client.get("/transaction/verify/cust-1", headers=PAYSTACK_AUTH)).json()["data"]
        assert (verified["status"], verified["gateway_response"]) == ("failed", "Declined")

        # A raw "+" in a query string arrives as a space; both spellings find the customer.
        for msisdn in (phone, phone[1:]):
            entries = (await control.get("/_control/ledger", params={"msisdn": msisdn})).json()
            assert entries["count"] == 1 and entries["entries"][0]["status"] == "failed"
        spaced = await control.get(f"/_control/ledger?msisdn=+{phone[1:]}&provider=paystack")
        assert spaced.json()["count"] == 1
        assert (await control.get("/_control/ledger", params={"provider": "mpesa"})).json()["count"] == 0
        assert (await control.get("/_control/ledger", params={"status": "failed"})).json()["count"] == 1
        assert "operation" in problems(await control.get("/_control/ledger", params={"operation": "steal"}))
        assert sandbox_of(app).ledger.count_by_reference("cust-1") == 1

        assert (await control.delete("/_control/customers")).json() == {"cleared": 1}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"msisdn": "0712345678"}, "msisdn"),
        ({"msisdn": "+254700000042", "action": "shrug"}, "action"),
        ({"msisdn": "+254700000042", "delay_s": -1}, "delay_s"),
        ({"msisdn": "+254700000042", "provider": "orange"}, "provider"),
    ],
)
async def test_invalid_customers_name_the_bad_field(
    served: Served, body: dict[str, object], field: str
) -> None:
    async with served() as (_, _, control):
        assert field in problems(await control.post("/_control/customers", json=body))


async def test_callbacks_are_recorded_and_only_loopback_ones_delivered(
    served: Served, clock: ManualClock
) -> None:
    config = MpesaSandboxConfig()
    basic = base64.b64encode(f"{config.consumer_key}:{config.consumer_secret}".encode()).decode()
    async with served() as (_, address, control), httpx.AsyncClient(base_url=address.url("mpesa")) as client:
        token = (
            await client.get(
                "/oauth/v1/generate",
                params={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
            )
        ).json()["access_token"]
        timestamp = "20260101030000"
        password = base64.b64encode(f"{config.shortcode}{config.passkey}{timestamp}".encode()).decode()
        push = {
            "BusinessShortCode": config.shortcode,
            "Password": password,
            "Timestamp": timestamp,
            "TransactionType": "CustomerPayBillOnline",
            "Amount": "10",
            "PartyA": "254700000043",
            "PartyB": config.shortcode,
            "PhoneNumber": "254700000043",
            "CallBackURL": "https://merchant.example.com/callbacks/mpesa",
            "AccountReference": "INV-7",
            "TransactionDesc": "test",
        }
        accepted = await client.post(
            "/mpesa/stkpush/v1/processrequest", json=push, headers={"Authorization": f"Bearer {token}"}
        )
        assert accepted.json()["ResponseCode"] == "0"
        await clock.advance(5)
        callbacks = (await control.get("/_control/callbacks", params={"provider": "mpesa"})).json()
        [record] = callbacks["callbacks"]
        assert record["url"] == "https://merchant.example.com/callbacks/mpesa"
        assert record["delivered"] is None  # never sent to the internet
        stk = record["body"]["Body"]["stkCallback"]
        assert stk["ResultCode"] == 0 and stk["CheckoutRequestID"] == accepted.json()["CheckoutRequestID"]
        items = {item["Name"]: item["Value"] for item in stk["CallbackMetadata"]["Item"]}
        assert items["Amount"] == 10 and items["PhoneNumber"] == 254700000043
        ledger = (await control.get("/_control/ledger", params={"reference": "INV-7"})).json()
        assert ledger["entries"][0]["receipt"] == items["MpesaReceiptNumber"]
        assert ledger["entries"][0]["created_at"] <= ledger["entries"][0]["updated_at"] <= iso(clock.now())


async def test_clock_route(served: Served, clock: ManualClock) -> None:
    async with served() as (_, _, control):
        await clock.advance(42)
        assert (await control.get("/_control/clock")).json() == {"now": iso(clock.now()), "monotonic_s": 42}
