"""The Airtel emulator's collection callbacks: sent to the dashboard's URL (the control API's
webhooks), with Airtel's `hash` when callback authentication is on, through the outbox's realism."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.providers.airtel_money import AirtelMoneyAdapter, AirtelMoneySettings
from mcp_autonomy.providers.base import CallbackAuthError, Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.sandbox import (
    CustomerBehavior,
    SandboxAddress,
    SandboxCredentials,
    running_sandbox,
    sandbox_of,
)
from mcp_autonomy.sandbox.airtel_money import AirtelMoneySandboxConfig
from mcp_autonomy.sandbox.core import Realism

pytestmark = pytest.mark.anyio

Served = Callable[..., AbstractAsyncContextManager[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]]
PHONE = "+256752000031"
DECLINER = "+256752000032"
PRIVATE_KEY = "sandbox-callback-private-key-7f3a"


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """The merchant's Airtel callback listener."""

    deliveries: list[Delivery] = field(default_factory=list)
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def receive(request: Request) -> Response:
            self.deliveries.append(Delivery(request.url.path, dict(request.headers), await request.body()))
            self._arrived.set()
            return JSONResponse({})

        return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Delivery]:
        """Wait (wall clock: real sockets) until `count` deliveries arrived."""
        with anyio.fail_after(timeout_s):
            while len(self.deliveries) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.deliveries


def adapter_for(clock: ManualClock, address: SandboxAddress, key: str | None) -> AirtelMoneyAdapter:
    config = AirtelMoneySandboxConfig()
    settings = AirtelMoneySettings(
        client_id=config.client_id,
        client_secret=SecretStr(config.client_secret),
        base_url=address.url("airtel_money"),
        callback_private_key=SecretStr(key) if key else None,
    )
    return AirtelMoneyAdapter(settings, clock, timeout_s=2.0)


def ugx(key: str, amount: int, phone: str = PHONE) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=Operation.COLLECT,
        money=Money(amount_minor=amount, currency="UGX"),
        phone=phone,
        country="UG",
    )


async def test_hashed_callbacks_reach_the_dashboard_url_and_a_lost_one_never_does(
    served: Served, clock: ManualClock
) -> None:
    receiver = Receiver()
    credentials = SandboxCredentials(airtel_money=AirtelMoneySandboxConfig(callback_private_key=PRIVATE_KEY))
    async with (
        served(seed=5, providers=["airtel_money"], credentials=credentials) as (app, address, control),
        running_sandbox(receiver.app(), gated=False) as receiver_address,
    ):
        sandbox = sandbox_of(app)
        url = f"{receiver_address.base_url}/hooks/airtel_money/collect/-"
        answer = await control.put("/_control/webhooks", json={"provider": "airtel_money", "url": url})
        assert answer.status_code == 200, answer.text
        adapter = adapter_for(clock, address, PRIVATE_KEY)
        try:
            sandbox.outbox.realism.set(Realism(callback_loss=1.0), "airtel_money")
            await adapter.collect(ugx("airtel-cb-lost", 1_000))
            await clock.advance(5)
            [record] = sandbox.outbox.records("airtel_money")
            assert (record.lost, record.delivered) == (True, False)

            sandbox.outbox.realism.set(Realism(callback_loss=0.0), "airtel_money")
            sandbox.customers.set(CustomerBehavior(msisdn=DECLINER, action="decline", delay_s=5))
            paid = await adapter.collect(ugx("airtel-cb-paid", 5_000))
            refused = await adapter.collect(ugx("airtel-cb-refused", 700, DECLINER))
            await clock.advance(5)
            deliveries = await receiver.wait_for(2)
            assert {d.path for d in deliveries} == {"/hooks/airtel_money/collect/-"}  # the lost one: never
            hints = {}
            for delivery in deliveries:
                body = json.loads(delivery.body)
                assert set(body) == {"transaction", "hash"}  # Airtel's authenticated callback
                hint = adapter.parse_callback(
                    delivery.body, delivery.headers, path_kind="collect", path_reference="-"
                )
                assert hint is not None and hint.authenticated
                hints[hint.reference] = hint
            entry = sandbox.ledger.get("airtel_money", paid.reference)
            assert entry is not None
            receipt = entry.receipt
            assert (hints[paid.reference].status, hints[paid.reference].provider_reference) == (
                TransactionStatus.SUCCEEDED,
                receipt,
            )
            assert "UGX 5,000" in (hints[paid.reference].provider_message or "")
            assert (hints[refused.reference].status, hints[refused.reference].provider_reference) == (
                TransactionStatus.FAILED,
                None,
            )
            # The same bytes under another key do not verify: the hash is Airtel's proof.
            with pytest.raises(CallbackAuthError):
                adapter_for(clock, address, "another-key").parse_callback(
                    deliveries[0].body, {}, path_kind="collect", path_reference="-"
                )
        finally:
            await adapter.close()


async def test_without_callback_authentication_callbacks_are_unsigned(
    served: Served, clock: ManualClock
) -> None:
    receiver = Receiver()
    async with (
        served(seed=5, providers=["airtel_money"]) as (app, address, _),
        running_sandbox(receiver.app(), gated=False) as receiver_address,
    ):
        sandbox_of(app).context.webhooks["airtel_money"] = f"{receiver_address.base_url}/airtel"
        adapter = adapter_for(clock, address, None)
        try:
            paid = await adapter.collect(ugx("airtel-cb-plain", 2_000))
            await clock.advance(5)
            [delivery] = await receiver.wait_for(1)
            assert "hash" not in json.loads(delivery.body)
            hint = adapter.parse_callback(delivery.body, {}, path_kind="airtel", path_reference=None)
            assert hint is not None
            assert (hint.reference, hint.status, hint.authenticated, hint.money) == (
                paid.reference,
                TransactionStatus.SUCCEEDED,
                False,
                None,
            )
        finally:
            await adapter.close()
