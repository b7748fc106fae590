"""The IntaSend emulator on the wire: webhooks really sent to the dashboard URL with the account's
challenge (or lost), and status lookups that lag the push."""

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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.sandbox import SandboxAddress, SandboxCredentials, sandbox_of, serve_sandbox
from mcp_autonomy.sandbox.intasend import IntaSendSandboxConfig

pytestmark = pytest.mark.anyio

Served = Callable[..., AbstractAsyncContextManager[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]]
CONFIG = IntaSendSandboxConfig()
AUTH = {"Authorization": f"Bearer {CONFIG.secret_keys[0]}"}
PHONE = "254711000061"


@dataclass
class Receiver:
    """The merchant's webhook endpoint on loopback: records every POST."""

    posts: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    base_url: str = ""
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def record(request: Request) -> Response:
            self.posts.append((request.url.path, dict(request.headers), await request.body()))
            self._arrived.set()
            return JSONResponse({"ok": True})

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


def push(api_ref: str, phone: str = PHONE) -> dict[str, Any]:
    return {
        "public_key": CONFIG.public_key,
        "currency": "KES",
        "method": "M-PESA",
        "amount": 150,
        "phone_number": phone,
        "api_ref": api_ref,
    }


async def test_webhooks_go_to_the_dashboard_url_with_the_challenge(
    served: Served, clock: ManualClock
) -> None:
    async with (
        served() as (app, address, control),
        receiving() as receiver,
        httpx.AsyncClient(base_url=address.url("intasend")) as client,
    ):
        url = f"{receiver.base_url}/hooks/intasend"
        assert (
            await control.put("/_control/webhooks", json={"provider": "intasend", "url": url})
        ).status_code == 200
        invoice = (
            await client.post("/api/v1/payment/mpesa-stk-push/", json=push("ORDER-61"), headers=AUTH)
        ).json()
        await clock.advance(5)
        processing, completed = await receiver.wait_for(2)
        assert {path for path, _, _ in receiver.posts} == {"/hooks/intasend"}
        assert [processing["state"], completed["state"]] == ["PROCESSING", "COMPLETED"]
        assert completed["challenge"] == CONFIG.webhook_challenge == "sandbox-challenge"
        assert (completed["invoice_id"], completed["api_ref"]) == (
            invoice["invoice"]["invoice_id"],
            "ORDER-61",
        )
        assert (completed["value"], completed["currency"], completed["account"]) == ("150.00", "KES", PHONE)
        [entry] = sandbox_of(app).ledger.entries(provider="intasend")
        assert completed["mpesa_reference"] == entry.receipt

        # Send money: initiated, approved, completed - each status change is an event, without the nonce.
        batch = await client.post(
            "/api/v1/send-money/initiate/",
            json={
                "provider": "MPESA-B2C",
                "currency": "KES",
                "transactions": [{"name": "x", "account": PHONE, "amount": 100}],
            },
            headers=AUTH,
        )
        await client.post("/api/v1/send-money/approve/", json=batch.json(), headers=AUTH)
        await clock.advance(3)
        events = (await receiver.wait_for(5))[2:]
        assert [e["status"] for e in events] == ["Preview and approve", "Processing payment", "Completed"]
        assert all(e["tracking_id"] == batch.json()["tracking_id"] and "nonce" not in e for e in events)
        assert events[-1]["transactions"][0]["status"] == "Successful"
        assert all(e["challenge"] == "sandbox-challenge" for e in events)

        # Chargeback: PENDING then COMPLETED, with its invoice.
        await client.post(
            "/api/v1/chargebacks/",
            json={"invoice": completed["invoice_id"], "amount": "150", "reason": "Other"},
            headers=AUTH,
        )
        await clock.advance(5)
        pending, done = (await receiver.wait_for(7))[5:]
        assert [pending["status"], done["status"]] == ["PENDING", "COMPLETED"]
        assert done["invoice"]["api_ref"] == "ORDER-61" and done["amount"] == "150.00"


async def test_the_config_url_and_challenge_apply_when_no_dashboard_url_is_set(
    served: Served, clock: ManualClock
) -> None:
    async with receiving() as receiver:
        config = IntaSendSandboxConfig(
            webhook_url=f"{receiver.base_url}/configured", webhook_challenge="c-62"
        )
        async with (
            served(credentials=SandboxCredentials(intasend=config)) as (_, address, _),
            httpx.AsyncClient(base_url=address.url("intasend")) as client,
        ):
            await client.post("/api/v1/payment/mpesa-stk-push/", json=push("ORDER-62"), headers=AUTH)
            await clock.advance(5)
            bodies = await receiver.wait_for(2)
            assert {path for path, _, _ in receiver.posts} == {"/configured"}
            assert {body["challenge"] for body in bodies} == {"c-62"}


async def test_lost_webhooks_are_never_sent(served: Served, clock: ManualClock) -> None:
    async with (
        served() as (app, address, control),
        receiving() as receiver,
        httpx.AsyncClient(base_url=address.url("intasend")) as client,
    ):
        await control.put(
            "/_control/webhooks", json={"provider": "intasend", "url": f"{receiver.base_url}/h"}
        )
        await control.put("/_control/realism", json={"provider": "intasend", "callback_loss": 1.0})
        await client.post("/api/v1/payment/mpesa-stk-push/", json=push("ORDER-63"), headers=AUTH)
        await clock.advance(5)
        records = sandbox_of(app).outbox.records("intasend")
        # Dropped at the source: no delivery was ever scheduled for them.
        assert len(records) == 2 and all(r.lost and r.delivered is False for r in records)
        assert receiver.posts == []
        assert sandbox_of(app).ledger.entries(provider="intasend")[0].status.value == "succeeded"


async def test_status_lookups_lag_the_push(served: Served, clock: ManualClock) -> None:
    async with (
        served() as (_, address, control),
        httpx.AsyncClient(base_url=address.url("intasend")) as client,
    ):
        await control.put("/_control/realism", json={"provider": "intasend", "lookup_lag_s": 2})
        invoice_id = (
            await client.post("/api/v1/payment/mpesa-stk-push/", json=push("ORDER-64"), headers=AUTH)
        ).json()["invoice"]["invoice_id"]
        lagging = await client.post("/api/v1/payment/status/", json={"invoice_id": invoice_id}, headers=AUTH)
        unknown = await client.post("/api/v1/payment/status/", json={"invoice_id": "NOSUCH1"}, headers=AUTH)
        assert lagging.status_code == unknown.status_code == 404
        assert lagging.json() == unknown.json()  # exactly IntaSend's answer for an unknown invoice
        await clock.advance(2)
        found = await client.post("/api/v1/payment/status/", json={"invoice_id": invoice_id}, headers=AUTH)
        invoice = found.json()["invoice"]
        assert (invoice["state"], invoice["value"], invoice["currency"], invoice["api_ref"]) == (
            "PENDING",  # the customer has not seen the prompt yet
            "150.00",
            "KES",
            "ORDER-64",
        )
