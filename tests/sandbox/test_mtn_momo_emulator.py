"""The MoMo emulator's callbacks: sent to the request's X-Callback-Url, the GET's body, unsigned,
through the outbox's realism (a lost callback is never delivered)."""

from __future__ import annotations

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
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.providers.mtn_momo import MtnMomoAdapter, MtnMomoSettings
from mcp_autonomy.sandbox import SandboxAddress, running_sandbox, sandbox_of
from mcp_autonomy.sandbox.core import Realism
from mcp_autonomy.sandbox.mtn_momo import MtnMomoSandboxConfig

pytestmark = pytest.mark.anyio

Served = Callable[..., AbstractAsyncContextManager[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]]
PHONE = "+256772000031"
CALLBACK_PATH = "/callbacks/token/mtn_momo/callback"
"""As the server lays them out: `<prefix>/<provider>/<kind>`, the adapter adds `/<X-Reference-Id>`."""


@dataclass
class Delivery:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A merchant's callback listener (MoMo may use PUT or POST: both are accepted)."""

    deliveries: list[Delivery] = field(default_factory=list)
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def receive(request: Request) -> Response:
            self.deliveries.append(
                Delivery(request.method, request.url.path, dict(request.headers), await request.body())
            )
            self._arrived.set()
            return JSONResponse({})

        return Starlette(routes=[Route("/{path:path}", receive, methods=["POST", "PUT"])])

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Delivery]:
        """Wait (wall clock: real sockets) until `count` deliveries arrived."""
        with anyio.fail_after(timeout_s):
            while len(self.deliveries) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.deliveries


def adapter_for(clock: ManualClock, address: SandboxAddress, callback_base: str) -> MtnMomoAdapter:
    config = MtnMomoSandboxConfig()
    settings = MtnMomoSettings(
        api_user=config.api_user,
        api_key=SecretStr(config.api_key),
        collection_subscription_key=SecretStr(config.collection_subscription_key),
        disbursement_subscription_key=SecretStr(config.disbursement_subscription_key),
        base_url=address.url("mtn_momo"),
        callback_url=f"{callback_base}{CALLBACK_PATH}",
    )
    return MtnMomoAdapter(settings, clock, timeout_s=2.0)


def eur(key: str, amount_minor: int, operation: Operation = Operation.COLLECT) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=operation,
        money=Money(amount_minor=amount_minor, currency="EUR"),
        phone=PHONE,
        country="UG",
    )


async def test_callbacks_reach_the_callback_url_and_a_lost_one_never_does(
    served: Served, clock: ManualClock
) -> None:
    receiver = Receiver()
    async with (
        served(seed=3, providers=["mtn_momo"]) as (app, address, _),
        running_sandbox(receiver.app(), gated=False) as receiver_address,
    ):
        sandbox = sandbox_of(app)
        adapter = adapter_for(clock, address, receiver_address.base_url)
        try:
            sandbox.outbox.realism.set(Realism(callback_loss=1.0), "mtn_momo")
            lost = await adapter.collect(eur("momo-cb-lost", 1_000))
            await clock.advance(5)  # approved: the callback is drawn as lost
            [record] = sandbox.outbox.records("mtn_momo")
            assert (record.lost, record.delivered) == (True, False)

            sandbox.outbox.realism.set(Realism(callback_loss=0.0), "mtn_momo")
            sent = await adapter.collect(eur("momo-cb-sent", 1_050))
            await clock.advance(5)
            [delivery] = await receiver.wait_for(1)
            # Only the second: the lost one was never sent, not merely late.
            assert delivery.path == f"{CALLBACK_PATH}/{sent.reference}"
            assert delivery.method in ("POST", "PUT")
            assert not {"authorization", "x-signature"} & set(delivery.headers)  # MoMo signs nothing
            hint = adapter.parse_callback(
                delivery.body, delivery.headers, path_kind="callback", path_reference=sent.reference
            )
            assert hint is not None
            pulled = await adapter.status(sent.reference)
            assert (hint.status, hint.money, hint.payer, hint.reference) == (
                TransactionStatus.SUCCEEDED,
                Money(amount_minor=1_050, currency="EUR"),
                PHONE,
                sent.reference,
            )
            assert hint.extras["financial_transaction_id"] == pulled.raw["financialTransactionId"]
            assert hint.money == pulled.money  # the callback's body is the GET's body
            assert lost.reference != sent.reference
        finally:
            await adapter.close()


async def test_payout_and_refund_callbacks_name_their_resource(served: Served, clock: ManualClock) -> None:
    receiver = Receiver()
    async with (
        served(seed=3, providers=["mtn_momo"]) as (_, address, _),
        running_sandbox(receiver.app(), gated=False) as receiver_address,
    ):
        adapter = adapter_for(clock, address, receiver_address.base_url)
        try:
            collected = await adapter.collect(eur("momo-cb-refund", 2_000))
            await clock.advance(5)
            paid = await adapter.status(collected.reference)
            refund = await adapter.refund(paid, Money(amount_minor=500, currency="EUR"))
            payout = await adapter.payout(eur("momo-cb-payout", 300, Operation.PAYOUT))
            await clock.advance(3)
            deliveries = await receiver.wait_for(3)
            by_path = {d.path: d for d in deliveries}
            refund_path = f"{CALLBACK_PATH}/{refund.provider_reference}"
            payout_path = f"{CALLBACK_PATH}/{payout.reference}"
            assert {refund_path, payout_path} <= set(by_path)
            hint = adapter.parse_callback(
                by_path[refund_path].body, {}, path_kind="callback", path_reference=refund.provider_reference
            )
            assert hint is not None
            assert (hint.operation, hint.reference, hint.status, hint.money) == (
                Operation.REFUND,
                collected.reference,
                TransactionStatus.SUCCEEDED,
                Money(amount_minor=500, currency="EUR"),
            )
            payout_hint = adapter.parse_callback(
                by_path[payout_path].body, {}, path_kind="callback", path_reference=payout.reference
            )
            assert payout_hint is not None
            assert (payout_hint.operation, payout_hint.payer, payout_hint.status) == (
                Operation.PAYOUT,
                PHONE,
                TransactionStatus.SUCCEEDED,
            )
        finally:
            await adapter.close()
