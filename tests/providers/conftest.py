"""Adapters against the sandbox over real loopback HTTP, on a manual clock.

`mpesa_env()` / `paystack_env()` (fixtures returning async context managers) start the sandbox
with `serve_sandbox` inside the test's task group, plus - for M-Pesa, whose results arrive only
by callback - a small receiver that parses Daraja's callbacks with `MpesaAdapter.parse_callback`.
Every environment bounds the whole test body with a wall-clock deadline.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.providers.base import CallbackHint, Money, Operation, PaymentRequest
from mcp_autonomy.providers.mpesa import MpesaAdapter, MpesaSettings
from mcp_autonomy.providers.paystack import PaystackAdapter, PaystackSettings
from mcp_autonomy.sandbox import (
    MpesaSandboxConfig,
    PaystackSandboxConfig,
    Sandbox,
    SandboxAddress,
    SandboxCredentials,
    create_sandbox_app,
    sandbox_of,
    serve_sandbox,
)

TEST_DEADLINE_S = 30.0
"""Wall-clock bound on one test's body: real sockets are involved, a hang must fail, not stall."""
PAYSTACK_KEY = "sk_test_sandbox_0000000000000000000000"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def payment(
    key: str,
    amount_minor: int,
    currency: str,
    phone: str,
    country: str,
    operation: Operation = Operation.COLLECT,
    **metadata: str,
) -> PaymentRequest:
    """A payment request with fake test data."""
    return PaymentRequest(
        idempotency_key=key,
        operation=operation,
        money=Money(amount_minor=amount_minor, currency=currency),
        phone=phone,
        country=country,
        description="order 42",
        metadata=metadata,
    )


@dataclass
class CallbackReceiver:
    """The merchant side of Daraja callbacks: POST <base>/mpesa/<kind>/<reference> -> parse_callback.

    Keeps every raw body and what the adapter parsed from it (None for an unrelated callback).
    """

    adapter: MpesaAdapter | None = None
    received: list[CallbackHint | None] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    raw: list[tuple[str, str, bytes]] = field(default_factory=list)
    _arrived: anyio.Event | None = None

    def app(self) -> Starlette:
        async def callback(request: Request) -> Response:
            raw = await request.body()
            kind, reference = request.path_params["kind"], request.path_params["reference"]
            self.raw.append((kind, reference, raw))
            self.bodies.append(json.loads(raw))
            assert self.adapter is not None
            self.received.append(
                self.adapter.parse_callback(raw, request.headers, path_kind=kind, path_reference=reference)
            )
            if self._arrived is not None:
                self._arrived.set()
            return JSONResponse({"ResultCode": 0, "ResultDesc": "Accepted"})

        return Starlette(routes=[Route("/mpesa/{kind}/{reference}", callback, methods=["POST"])])

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[CallbackHint | None]:
        """Wait (wall clock) until `count` callbacks arrived."""
        with anyio.fail_after(timeout_s):
            while len(self.received) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.received


@dataclass
class MpesaEnv:
    """A running sandbox, an M-Pesa adapter pointed at its gated port, and the callback receiver."""

    clock: ManualClock
    sandbox: Sandbox
    address: SandboxAddress
    adapter: MpesaAdapter
    receiver: CallbackReceiver
    settings: MpesaSettings

    def new_adapter(self, **overrides: Any) -> MpesaAdapter:
        """Another adapter on the same sandbox, with some settings changed."""
        settings = MpesaSettings(**{**self.settings.model_dump(), **overrides})
        return MpesaAdapter(settings, self.clock, timeout_s=2.0)


def mpesa_settings(base_url: str, receiver_url: str, **overrides: Any) -> MpesaSettings:
    config = MpesaSandboxConfig()
    values: dict[str, Any] = {
        "consumer_key": SecretStr(config.consumer_key),
        "consumer_secret": SecretStr(config.consumer_secret),
        "shortcode": config.shortcode,
        "passkey": SecretStr(config.passkey),
        "base_url": base_url,
        "callback_url": f"{receiver_url}/mpesa/stk",
        "b2c_shortcode": config.b2c_shortcode,
        "initiator_name": config.initiator_name,
        "security_credential": SecretStr(config.security_credential),
        "result_url": f"{receiver_url}/mpesa/result",
    }
    values.update(overrides)
    return MpesaSettings(**values)


@asynccontextmanager
async def _mpesa_env(
    clock: ManualClock,
    *,
    timeout_s: float = 2.0,
    seed: int = 7,
    config: MpesaSandboxConfig | None = None,
    **overrides: Any,
) -> AsyncIterator[MpesaEnv]:
    credentials = SandboxCredentials(mpesa=config) if config else None
    app = create_sandbox_app(clock, seed=seed, credentials=credentials)
    receiver = CallbackReceiver()
    with anyio.fail_after(TEST_DEADLINE_S):
        async with anyio.create_task_group() as tg:
            address: SandboxAddress = await tg.start(serve_sandbox, app)
            receiver_address: SandboxAddress = await tg.start(
                partial(serve_sandbox, receiver.app(), gated=False)
            )
            settings = mpesa_settings(address.url("mpesa"), receiver_address.base_url, **overrides)
            adapter = MpesaAdapter(settings, clock, timeout_s=timeout_s)
            receiver.adapter = adapter
            try:
                yield MpesaEnv(clock, sandbox_of(app), address, adapter, receiver, settings)
            finally:
                await adapter.close()
                tg.cancel_scope.cancel()


@pytest.fixture
def mpesa_env(clock: ManualClock) -> Callable[..., AbstractAsyncContextManager[MpesaEnv]]:
    """`async with mpesa_env(**setting_overrides) as env:`."""
    return partial(_mpesa_env, clock)


@dataclass
class PaystackEnv:
    """A running sandbox and a Paystack adapter pointed at its gated port."""

    clock: ManualClock
    sandbox: Sandbox
    address: SandboxAddress
    adapter: PaystackAdapter
    settings: PaystackSettings
    learnt: list[tuple[str, str, str]] = field(default_factory=list)
    """Every (reference, kind, value) the adapter reported to its identifier sink, in order."""

    def new_adapter(self, **overrides: Any) -> PaystackAdapter:
        """A fresh adapter (no memory at all) on the same sandbox, with some settings changed."""
        settings = paystack_settings(self.settings.base_url, **overrides)
        return PaystackAdapter(settings, self.clock, timeout_s=2.0)

    def identifiers(self, reference: str) -> dict[str, str]:
        """What the engine's durable store would hold for `reference` (the latest per kind)."""
        return {kind: value for ref, kind, value in self.learnt if ref == reference}


def paystack_settings(base_url: str, **overrides: Any) -> PaystackSettings:
    values: dict[str, Any] = {
        "secret_key": SecretStr(PAYSTACK_KEY),
        "base_url": base_url,
        "customer_email_domain": "customers.example.com",
    }
    values.update(overrides)
    return PaystackSettings(**values)


@asynccontextmanager
async def _paystack_env(
    clock: ManualClock,
    *,
    timeout_s: float = 2.0,
    seed: int = 7,
    config: PaystackSandboxConfig | None = None,
    settings_loader: Callable[[], PaystackSettings] | None = None,
    **overrides: Any,
) -> AsyncIterator[PaystackEnv]:
    credentials = SandboxCredentials(paystack=config) if config else None
    app = create_sandbox_app(clock, seed=seed, credentials=credentials)
    with anyio.fail_after(TEST_DEADLINE_S):
        async with anyio.create_task_group() as tg:
            address: SandboxAddress = await tg.start(serve_sandbox, app)
            settings = paystack_settings(address.url("paystack"), **overrides)
            adapter = PaystackAdapter(settings, clock, timeout_s=timeout_s, settings_loader=settings_loader)
            env = PaystackEnv(clock, sandbox_of(app), address, adapter, settings)
            adapter.identifier_sink = lambda ref, kind, value: env.learnt.append((ref, kind, value))
            try:
                yield env
            finally:
                await adapter.close()
                tg.cancel_scope.cancel()


@pytest.fixture
def paystack_env(clock: ManualClock) -> Callable[..., AbstractAsyncContextManager[PaystackEnv]]:
    """`async with paystack_env(**setting_overrides) as env:`."""
    return partial(_paystack_env, clock)


@pytest.fixture
def make_payment() -> Callable[..., PaymentRequest]:
    """`make_payment(key, amount_minor, currency, phone, country, operation=..., **metadata)`."""
    return payment
