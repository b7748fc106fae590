"""The Daraja emulator on the wire: callbacks really sent (or lost), lookups that lag, and the
Transaction Status query answered asynchronously from the ledger."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.sandbox import MpesaSandboxConfig, SandboxAddress, sandbox_of, serve_sandbox

pytestmark = pytest.mark.anyio

Served = Callable[..., AbstractAsyncContextManager[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]]
CONFIG = MpesaSandboxConfig()
PHONE = "254700000051"


@dataclass
class Receiver:
    """A merchant endpoint on loopback that records what the sandbox posts to it."""

    posts: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    base_url: str = ""
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def record(request: Request) -> Response:
            self.posts.append((request.url.path, dict(request.headers), await request.body()))
            self._arrived.set()
            return JSONResponse({"ResultCode": 0, "ResultDesc": "Accepted"})

        return Starlette(routes=[Route("/{path:path}", record, methods=["POST"])])

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        with anyio.fail_after(5):
            while len(self.posts) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return [json.loads(raw) for _, _, raw in self.posts]


@asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    async with anyio.create_task_group() as tg:
        address: SandboxAddress = await tg.start(partial(serve_sandbox, receiver.app(), gated=False))
        receiver.base_url = address.base_url
        try:
            yield receiver
        finally:
            tg.cancel_scope.cancel()


async def bearer(client: httpx.AsyncClient) -> dict[str, str]:
    basic = base64.b64encode(f"{CONFIG.consumer_key}:{CONFIG.consumer_secret}".encode()).decode()
    token = await client.get(
        "/oauth/v1/generate",
        params={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def stk_push(callback_url: str, reference: str = "INV-51") -> dict[str, Any]:
    timestamp = "20260101030000"
    password = base64.b64encode(f"{CONFIG.shortcode}{CONFIG.passkey}{timestamp}".encode()).decode()
    return {
        "BusinessShortCode": CONFIG.shortcode,
        "Password": password,
        "Timestamp": timestamp,
        "TransactionType": "CustomerPayBillOnline",
        "Amount": 10,
        "PartyA": PHONE,
        "PartyB": CONFIG.shortcode,
        "PhoneNumber": PHONE,
        "CallBackURL": callback_url,
        "AccountReference": reference,
        "TransactionDesc": "test",
    }


def stk_query(checkout_id: str) -> dict[str, Any]:
    push = stk_push("https://unused.example.com")
    return {key: push[key] for key in ("BusinessShortCode", "Password", "Timestamp")} | {
        "CheckoutRequestID": checkout_id
    }


def b2c(result_url: str, originator: str) -> dict[str, Any]:
    return {
        "OriginatorConversationID": originator,
        "InitiatorName": CONFIG.initiator_name,
        "SecurityCredential": CONFIG.security_credential,
        "CommandID": "BusinessPayment",
        "Amount": 250,
        "PartyA": CONFIG.b2c_shortcode,
        "PartyB": PHONE,
        "Remarks": "payout",
        "QueueTimeOutURL": result_url,
        "ResultURL": result_url,
        "Occassion": originator,
    }


def status_query(result_url: str, **fields: Any) -> dict[str, Any]:
    return {
        "Initiator": CONFIG.initiator_name,
        "SecurityCredential": CONFIG.security_credential,
        "CommandID": "TransactionStatusQuery",
        "PartyA": CONFIG.b2c_shortcode,
        "IdentifierType": "4",
        "ResultURL": result_url,
        "QueueTimeOutURL": result_url,
        "Remarks": "status query",
        "Occasion": "status_query",
        **fields,
    }


async def test_stk_callbacks_are_sent_to_the_callback_url_unsigned(
    served: Served, clock: ManualClock
) -> None:
    async with (
        served() as (_, address, control),
        receiving() as receiver,
        httpx.AsyncClient(base_url=address.url("mpesa")) as client,
    ):
        auth = await bearer(client)
        callback_url = f"{receiver.base_url}/mpesa/stk/INV-51"
        accepted = await client.post(
            "/mpesa/stkpush/v1/processrequest", json=stk_push(callback_url), headers=auth
        )
        await clock.advance(5)
        [body] = await receiver.wait_for(1)
        path, headers, _ = receiver.posts[0]
        assert path == "/mpesa/stk/INV-51"
        assert headers["content-type"] == "application/json"
        assert (
            not {"x-signature", "authorization", "x-paystack-signature"} & headers.keys()
        )  # Daraja signs nothing
        stk = body["Body"]["stkCallback"]
        assert (stk["ResultCode"], stk["CheckoutRequestID"]) == (0, accepted.json()["CheckoutRequestID"])
        [record] = (await control.get("/_control/callbacks", params={"provider": "mpesa"})).json()[
            "callbacks"
        ]
        assert (record["delivered"], record["lost"]) == (True, False)


async def test_lost_callbacks_are_never_sent(served: Served, clock: ManualClock) -> None:
    async with (
        served() as (app, address, control),
        receiving() as receiver,
        httpx.AsyncClient(base_url=address.url("mpesa")) as client,
    ):
        realism = await control.put("/_control/realism", json={"provider": "mpesa", "callback_loss": 1.0})
        assert realism.json()["providers"]["mpesa"]["callback_loss"] == 1.0
        auth = await bearer(client)
        await client.post(
            "/mpesa/stkpush/v1/processrequest",
            json=stk_push(f"{receiver.base_url}/mpesa/stk/INV-52", "INV-52"),
            headers=auth,
        )
        await client.post(
            "/mpesa/b2c/v3/paymentrequest", json=b2c(f"{receiver.base_url}/r/X", "ORIG-52"), headers=auth
        )
        await clock.advance(10)
        records = sandbox_of(app).outbox.records("mpesa")
        # Dropped at the source: no delivery was ever scheduled for them.
        assert len(records) == 2 and all(r.lost and r.delivered is False for r in records)
        assert receiver.posts == []
        # The ledger still holds the truth the lost callbacks would have told.
        assert {e.status.value for e in sandbox_of(app).ledger.entries(provider="mpesa")} == {"succeeded"}


async def test_stk_query_says_invalid_while_the_lookup_lags(served: Served, clock: ManualClock) -> None:
    async with served() as (_, address, control), httpx.AsyncClient(base_url=address.url("mpesa")) as client:
        await control.put("/_control/realism", json={"provider": "mpesa", "lookup_lag_s": 3})
        auth = await bearer(client)
        accepted = await client.post(
            "/mpesa/stkpush/v1/processrequest", json=stk_push("https://merchant.example.com/cb"), headers=auth
        )
        checkout_id = accepted.json()["CheckoutRequestID"]
        lagging = await client.post("/mpesa/stkpushquery/v1/query", json=stk_query(checkout_id), headers=auth)
        unknown = await client.post(
            "/mpesa/stkpushquery/v1/query", json=stk_query("ws_CO_nope"), headers=auth
        )
        assert lagging.status_code == unknown.status_code == 400
        assert lagging.json()["errorCode"] == unknown.json()["errorCode"] == "400.002.02"
        assert lagging.json()["errorMessage"] == "Bad Request - Invalid CheckoutRequestID"
        await clock.advance(3)
        pending = await client.post("/mpesa/stkpushquery/v1/query", json=stk_query(checkout_id), headers=auth)
        assert pending.json()["errorMessage"] == "The transaction is being processed"
        await clock.advance(2)
        done = (
            await client.post("/mpesa/stkpushquery/v1/query", json=stk_query(checkout_id), headers=auth)
        ).json()
        assert done["ResultCode"] == "0"
        # The STK query carries ResultCode/ResultDesc only: no amount, payer or receipt.
        assert set(done) == {
            "ResponseCode",
            "ResponseDescription",
            "MerchantRequestID",
            "CheckoutRequestID",
            "ResultCode",
            "ResultDesc",
        }


async def test_transaction_status_answers_by_callback_from_the_ledger(
    served: Served, clock: ManualClock
) -> None:
    async with (
        served() as (app, address, control),
        receiving() as receiver,
        httpx.AsyncClient(base_url=address.url("mpesa")) as client,
    ):
        await control.put("/_control/realism", json={"provider": "mpesa", "lookup_lag_s": 2})
        auth = await bearer(client)
        result_url = f"{receiver.base_url}/mpesa/result/ORIG-53"
        accepted = await client.post(
            "/mpesa/b2c/v3/paymentrequest", json=b2c(result_url, "ORIG-53"), headers=auth
        )
        conversation_id = accepted.json()["ConversationID"]

        query = status_query(result_url, OriginalConversationID="ORIG-53")
        answer = await client.post("/mpesa/transactionstatus/v1/query", json=query, headers=auth)
        assert set(answer.json()) == {
            "OriginatorConversationID",
            "ConversationID",
            "ResponseCode",
            "ResponseDescription",
        }
        assert answer.json()["ResponseCode"] == "0"
        [not_yet] = await receiver.wait_for(1)  # within the lookup lag: not found
        assert (not_yet["Result"]["ResultCode"], not_yet["Result"]["ResultDesc"]) == (
            1,
            "The transaction could not be found.",
        )
        assert not_yet["Result"]["ConversationID"] == answer.json()["ConversationID"]
        assert "ResultParameters" not in not_yet["Result"]

        await clock.advance(3)  # visible, and the B2C completed (its own Result is posted too)
        await client.post("/mpesa/transactionstatus/v1/query", json=query, headers=auth)
        bodies = await receiver.wait_for(3)
        [found] = [b for b in bodies[1:] if "TransactionStatus" in json.dumps(b)]
        parameters = {
            p["Key"]: p.get("Value") for p in found["Result"]["ResultParameters"]["ResultParameter"]
        }
        [entry] = sandbox_of(app).ledger.entries(operation="payout")
        assert found["Result"]["ResultCode"] == 0
        assert parameters["TransactionStatus"] == "Completed"
        assert (parameters["Amount"], parameters["ReceiptNo"]) == (250, entry.receipt)
        assert (parameters["OriginatorConversationID"], parameters["ConversationID"]) == (
            "ORIG-53",
            conversation_id,
        )
        assert parameters["CreditPartyName"].startswith(PHONE)
        assert found["Result"]["ReferenceData"]["ReferenceItem"] == {
            "Key": "Occasion",
            "Value": "status_query",
        }

        by_receipt = status_query(result_url, TransactionID=entry.receipt)
        await client.post("/mpesa/transactionstatus/v1/query", json=by_receipt, headers=auth)
        by_receipt_body = (await receiver.wait_for(4))[3]
        assert by_receipt_body["Result"]["TransactionID"] == entry.receipt


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"CommandID": "TransactionReversal"}, "CommandID"),
        ({}, "TransactionID"),  # neither a receipt nor an OriginalConversationID
        ({"OriginalConversationID": "X", "IdentifierType": "9"}, "IdentifierType"),
        ({"OriginalConversationID": "X", "ResultURL": "not a url"}, "ResultURL"),
        ({"OriginalConversationID": "X", "Remarks": ""}, "Remarks"),
    ],
)
async def test_transaction_status_validates_like_daraja(
    served: Served, change: dict[str, Any], field_name: str
) -> None:
    async with served() as (app, address, _), httpx.AsyncClient(base_url=address.url("mpesa")) as client:
        auth = await bearer(client)
        query = status_query("https://merchant.example.com/r") | change
        refused = await client.post("/mpesa/transactionstatus/v1/query", json=query, headers=auth)
        assert (refused.status_code, refused.json()["errorCode"]) == (400, "400.002.02")
        assert refused.json()["errorMessage"] == f"Bad Request - Invalid {field_name}"
        assert sandbox_of(app).outbox.records("mpesa") == []


async def test_transaction_status_with_a_wrong_initiator_fails_in_the_result(served: Served) -> None:
    async with served() as (app, address, _), httpx.AsyncClient(base_url=address.url("mpesa")) as client:
        auth = await bearer(client)
        query = status_query(
            "https://merchant.example.com/r", OriginalConversationID="X", Initiator="intruder"
        )
        assert (
            await client.post("/mpesa/transactionstatus/v1/query", json=query, headers=auth)
        ).status_code == 200
        sandbox_of(app).settle()
        [record] = sandbox_of(app).outbox.records("mpesa")
        assert record.body["Result"]["ResultCode"] == 2001
