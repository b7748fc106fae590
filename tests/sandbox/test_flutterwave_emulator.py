"""The Flutterwave emulator tells the truth: webhooks with the dashboard's secret hash through the
outbox, lookups that answer "No transaction was found" while they lag, and the v3 list."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import anyio
import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_autonomy.clock import ManualClock, to_datetime
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.providers.flutterwave import FlutterwaveAdapter, FlutterwaveSettings
from mcp_autonomy.sandbox import (
    CustomerBehavior,
    Sandbox,
    SandboxAddress,
    SandboxCredentials,
    sandbox_of,
    serve_sandbox,
)
from mcp_autonomy.sandbox.flutterwave import DEFAULT_WEBHOOK_HASH, FlutterwaveSandboxConfig

pytestmark = pytest.mark.anyio

SECRET = FlutterwaveSandboxConfig().secret_keys[0]
KE_PHONE = "+254709000061"
Served = Callable[..., AbstractAsyncContextManager[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]]


@dataclass
class WebhookReceiver:
    """The merchant's webhook endpoint: records each POST's raw body and headers."""

    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.received.append((await request.body(), dict(request.headers)))
            self._arrived.set()
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/hooks/flutterwave", hook, methods=["POST"])])

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[tuple[bytes, dict[str, str]]]:
        """Wait (wall clock) until `count` webhooks arrived."""
        with anyio.fail_after(timeout_s):
            while len(self.received) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.received


@dataclass
class Env:
    clock: ManualClock
    sandbox: Sandbox
    control: httpx.AsyncClient
    adapter: FlutterwaveAdapter
    receiver: WebhookReceiver
    hook_url: str
    base_url: str


@asynccontextmanager
async def _env(
    served: Served, clock: ManualClock, config: FlutterwaveSandboxConfig | None = None
) -> AsyncIterator[Env]:
    receiver = WebhookReceiver()
    credentials = SandboxCredentials(flutterwave=config) if config else None
    async with (
        served(seed=5, credentials=credentials) as (app, address, control),
        anyio.create_task_group() as tg,
    ):
        hooks: SandboxAddress = await tg.start(partial(serve_sandbox, receiver.app(), gated=False))
        settings = FlutterwaveSettings(
            secret_key=SecretStr(SECRET),
            base_url=address.url("flutterwave"),
            customer_email_domain="customers.example.com",
            webhook_hash=SecretStr(DEFAULT_WEBHOOK_HASH),
        )
        adapter = FlutterwaveAdapter(settings, clock, timeout_s=2.0)
        try:
            yield Env(
                clock,
                sandbox_of(app),
                control,
                adapter,
                receiver,
                f"{hooks.base_url}/hooks/flutterwave",
                address.url("flutterwave"),
            )
        finally:
            await adapter.close()
            tg.cancel_scope.cancel()


EnvFactory = Callable[..., AbstractAsyncContextManager[Env]]


@pytest.fixture
def env(served: Served, clock: ManualClock) -> EnvFactory:
    return partial(_env, served, clock)


def payment(key: str, amount_minor: int = 15_000, operation: Operation = Operation.COLLECT) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=operation,
        money=Money(amount_minor=amount_minor, currency="KES"),
        phone=KE_PHONE,
        country="KE",
    )


async def set_webhook(env: Env) -> None:
    answer = await env.control.put(
        "/_control/webhooks", json={"provider": "flutterwave", "url": env.hook_url}
    )
    assert answer.status_code == 200, answer.text


async def test_webhooks_carry_the_secret_hash_to_the_dashboard_url(env: EnvFactory) -> None:
    async with env() as e:
        await set_webhook(e)
        other = "+254709000062"
        e.sandbox.customers.set(
            CustomerBehavior(msisdn=other, action="decline", decline_code="Cancelled", delay_s=2)
        )
        charge = await e.adapter.collect(payment("flw-hook-charge"))
        declined = await e.adapter.collect(payment("flw-hook-declined").model_copy(update={"phone": other}))
        payout = await e.adapter.payout(payment("flw-hook-payout", 4_000, Operation.PAYOUT))
        await e.clock.advance(5)
        hooks = await e.receiver.wait_for(3)
        hints = {}
        for raw, headers in hooks:
            assert headers["verif-hash"] == DEFAULT_WEBHOOK_HASH
            assert headers["content-type"] == "application/json"
            hint = e.adapter.parse_callback(raw, headers, path_kind="webhook", path_reference="-")
            assert hint is not None and hint.authenticated
            hints[hint.reference] = (json.loads(raw), hint)
        body, got = hints[charge.reference]
        assert body["event"] == "charge.completed" and body["event.type"] == "MPESA_TRANSACTION"
        assert (got.status, got.money, got.payer, got.provider_reference, got.operation) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=15_000, currency="KES"),
            KE_PHONE,
            charge.provider_reference,
            Operation.COLLECT,
        )
        _, failed = hints[declined.reference]
        assert (failed.status, failed.provider_message, failed.payer) == (
            TransactionStatus.FAILED,
            "Cancelled",
            other,
        )
        body, sent = hints[payout.reference]
        assert (body["event"], body["event.type"]) == ("transfer.completed", "Transfer")
        assert (sent.status, sent.money, sent.payer, sent.provider_reference) == (
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=4_000, currency="KES"),
            KE_PHONE,
            payout.provider_reference,
        )
        records = e.sandbox.outbox.records("flutterwave")
        assert [r.delivered for r in records] == [True] * 3 and {r.url for r in records} == {e.hook_url}


async def test_a_dashboard_without_a_secret_hash_sends_no_header(served: Served, clock: ManualClock) -> None:
    async with _env(served, clock, FlutterwaveSandboxConfig(webhook_hash=None)) as e:
        await set_webhook(e)
        await e.adapter.collect(payment("flw-hook-nohash"))
        await e.clock.advance(5)
        [(raw, headers)] = await e.receiver.wait_for(1)
        assert "verif-hash" not in headers
        unconfigured = FlutterwaveAdapter(
            FlutterwaveSettings(secret_key=SecretStr(SECRET), base_url=e.base_url), clock
        )
        hint = unconfigured.parse_callback(raw, headers, path_kind="webhook", path_reference="-")
        assert hint is not None and hint.authenticated is False


async def test_callback_loss_sends_none(env: EnvFactory) -> None:
    async with env() as e:
        await set_webhook(e)
        realism = await e.control.put(
            "/_control/realism", json={"provider": "flutterwave", "callback_loss": 1.0}
        )
        assert realism.status_code == 200
        await e.adapter.collect(payment("flw-hook-lost"))
        await e.adapter.payout(payment("flw-hook-lost-payout", 1_000, Operation.PAYOUT))
        await e.clock.advance(5)
        records = e.sandbox.outbox.records("flutterwave")
        assert len(records) == 2 and all(r.lost and r.delivered is False for r in records)
        assert e.receiver.received == []
        assert len(e.sandbox.ledger.successful_charges_for(KE_PHONE)) == 1  # the ledger is the truth


async def test_lookups_answer_not_found_while_they_lag(env: EnvFactory) -> None:
    async with env() as e:
        lag = await e.control.put("/_control/realism", json={"provider": "flutterwave", "lookup_lag_s": 3})
        assert lag.status_code == 200
        charge = await e.adapter.collect(payment("flw-lag-shape"))
        payout = await e.adapter.payout(payment("flw-lag-shape-payout", 1_000, Operation.PAYOUT))
        not_found = {"status": "error", "message": "No transaction was found for this id", "data": None}
        auth = {"Authorization": f"Bearer {SECRET}"}
        async with httpx.AsyncClient(base_url=e.base_url, headers=auth) as client:
            for path, params in (
                ("/v3/transactions/verify_by_reference", {"tx_ref": charge.reference}),
                (f"/v3/transactions/{charge.provider_reference}/verify", {}),
                (f"/v3/transfers/{payout.provider_reference}", {}),
            ):
                lagging = await client.get(path, params=params)
                assert (lagging.status_code, lagging.json()) == (400, not_found), path
            unknown = await client.get("/v3/transfers/999999999")
            assert (unknown.status_code, unknown.json()) == (400, not_found)  # the same answer
            listed = await client.get("/v3/transfers", params={"reference": payout.reference})
            assert listed.json()["data"] == []
            assert (await client.get("/v3/transactions")).json()["data"] == []
            await e.clock.advance(3)
            seen = await client.get(
                "/v3/transactions/verify_by_reference", params={"tx_ref": charge.reference}
            )
            assert seen.status_code == 200 and seen.json()["data"]["tx_ref"] == charge.reference
            assert (await client.get(f"/v3/transfers/{payout.provider_reference}")).status_code == 200


async def test_the_transaction_list(env: EnvFactory) -> None:
    async with env() as e:
        first = await e.adapter.collect(payment("flw-list-a"))
        await e.clock.advance(86_400)
        second = await e.adapter.collect(payment("flw-list-b", 2_550))
        auth = {"Authorization": f"Bearer {SECRET}"}
        day_one = to_datetime(e.clock.now() - 86_400).date().isoformat()
        async with httpx.AsyncClient(base_url=e.base_url, headers=auth) as client:
            one_day = await client.get("/v3/transactions", params={"from": day_one, "to": day_one})
            body = one_day.json()
            assert (body["status"], body["message"]) == ("success", "Transactions fetched")
            assert body["meta"]["page_info"] == {"total": 1, "current_page": 1, "total_pages": 1}
            [row] = body["data"]
            assert (row["tx_ref"], row["id"], row["amount"], row["currency"], row["status"]) == (
                first.reference,
                first.provider_reference,  # the list sends ids as strings
                150,
                "KES",
                "successful",
            )
            assert {"customer_name", "customer_email", "created_at", "flw_ref"} <= set(row)
            assert "customer" not in row  # no phone in a list row
            both = (await client.get("/v3/transactions")).json()
            assert [r["tx_ref"] for r in both["data"]] == [second.reference, first.reference]  # newest first
            assert both["data"][0]["amount"] == 25.5
            page_two = (await client.get("/v3/transactions", params={"page": 2})).json()
            assert page_two["data"] == [] and page_two["meta"]["page_info"]["current_page"] == 2
            bad = await client.get("/v3/transactions", params={"from": "01/01/2026"})
            assert bad.status_code == 400 and bad.json()["status"] == "error"
