"""The sandbox run in-process by `serve --sandbox`: emulators on loopback and adapters aimed at them.

Every emulated provider gets a real adapter configured with the sandbox's fake credentials and
its gated loopback URL (where a `refused` outage really refuses connections), so the engine
talks real HTTP exactly as it would to the providers. Nothing here is used without `--sandbox`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from pydantic import SecretStr
from starlette.applications import Starlette

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.airtel_money import AirtelMoneyAdapter, AirtelMoneySettings
from mcp_autonomy.providers.base import ProviderAdapter
from mcp_autonomy.providers.flutterwave import FlutterwaveAdapter, FlutterwaveSettings
from mcp_autonomy.providers.intasend import IntaSendAdapter, IntaSendSettings
from mcp_autonomy.providers.mpesa import MpesaAdapter, MpesaSettings
from mcp_autonomy.providers.mtn_momo import MtnMomoAdapter, MtnMomoSettings
from mcp_autonomy.providers.paystack import PaystackAdapter, PaystackSettings
from mcp_autonomy.sandbox.airtel_money import AirtelMoneySandboxConfig, sandbox_pin_public_key
from mcp_autonomy.sandbox.app import PROVIDERS, Sandbox, create_sandbox_app, sandbox_of
from mcp_autonomy.sandbox.core import REALISTIC, Realism, SandboxCredentials
from mcp_autonomy.sandbox.flutterwave import FlutterwaveSandboxConfig
from mcp_autonomy.sandbox.intasend import IntaSendSandboxConfig
from mcp_autonomy.sandbox.mpesa import MpesaSandboxConfig
from mcp_autonomy.sandbox.mtn_momo import MtnMomoSandboxConfig
from mcp_autonomy.sandbox.paystack import PaystackSandboxConfig
from mcp_autonomy.sandbox.server import SandboxAddress, serve_sandbox

DEFAULT_BACKUPS: dict[str, list[str]] = {"mpesa": ["intasend", "paystack"]}
"""The default backup map; names not registered are left out."""
SANDBOX_EMAIL_DOMAIN = "sandbox.mcp-autonomy.invalid"


@dataclass
class EmbeddedSandbox:
    """A running in-process sandbox and the adapters pointed at it."""

    app: Starlette
    address: SandboxAddress
    adapters: dict[str, ProviderAdapter]

    @property
    def state(self) -> Sandbox:
        return sandbox_of(self.app)


AdapterBuilder = Callable[[Clock, SandboxAddress, str], ProviderAdapter]
"""Builds one adapter aimed at the sandbox; the string is where its provider's callbacks go."""
WEBHOOK_PROVIDERS = ("paystack", "flutterwave", "intasend", "airtel_money")
"""Providers whose callback URL is a dashboard setting (the sandbox's `webhooks`), not per request."""


def _mpesa(clock: Clock, address: SandboxAddress, callback_base: str) -> ProviderAdapter:
    cfg = MpesaSandboxConfig()
    settings = MpesaSettings(
        consumer_key=SecretStr(cfg.consumer_key),
        consumer_secret=SecretStr(cfg.consumer_secret),
        shortcode=cfg.shortcode,
        passkey=SecretStr(cfg.passkey),
        base_url=address.url("mpesa"),
        b2c_shortcode=cfg.b2c_shortcode,
        initiator_name=cfg.initiator_name,
        security_credential=SecretStr(cfg.security_credential),
        callback_url=f"{callback_base}/stk",
        result_url=f"{callback_base}/result",
        queue_timeout_url=f"{callback_base}/timeout",
    )
    return MpesaAdapter(settings, clock)


def _paystack(clock: Clock, address: SandboxAddress, callback_base: str) -> ProviderAdapter:
    cfg = PaystackSandboxConfig()
    settings = PaystackSettings(
        secret_key=SecretStr(cfg.secret_keys[0]),
        base_url=address.url("paystack"),
        customer_email_domain=SANDBOX_EMAIL_DOMAIN,
    )
    return PaystackAdapter(settings, clock)


def _mtn_momo(clock: Clock, address: SandboxAddress, callback_base: str) -> ProviderAdapter:
    cfg = MtnMomoSandboxConfig()
    settings = MtnMomoSettings(
        api_user=cfg.api_user,
        api_key=SecretStr(cfg.api_key),
        collection_subscription_key=SecretStr(cfg.collection_subscription_key),
        disbursement_subscription_key=SecretStr(cfg.disbursement_subscription_key),
        base_url=address.url("mtn_momo"),
        target_environment=cfg.target_environment,
        callback_url=f"{callback_base}/callback",
    )
    return MtnMomoAdapter(settings, clock)


def _airtel_money(clock: Clock, address: SandboxAddress, callback_base: str) -> ProviderAdapter:
    cfg = AirtelMoneySandboxConfig()
    settings = AirtelMoneySettings(
        client_id=cfg.client_id,
        client_secret=SecretStr(cfg.client_secret),
        base_url=address.url("airtel_money"),
        countries=list(cfg.markets),
        disbursement_pin=SecretStr(cfg.disbursement_pin),
        pin_public_key=SecretStr(sandbox_pin_public_key()),
    )
    return AirtelMoneyAdapter(settings, clock)


def _intasend(clock: Clock, address: SandboxAddress, callback_base: str) -> ProviderAdapter:
    cfg = IntaSendSandboxConfig()
    settings = IntaSendSettings(
        secret_key=SecretStr(cfg.secret_keys[0]),
        public_key=cfg.public_key,
        base_url=address.url("intasend"),
        webhook_challenge=SecretStr(cfg.webhook_challenge),
    )
    return IntaSendAdapter(settings, clock)


def _flutterwave(clock: Clock, address: SandboxAddress, callback_base: str) -> ProviderAdapter:
    cfg = FlutterwaveSandboxConfig()
    settings = FlutterwaveSettings(
        secret_key=SecretStr(cfg.secret_keys[0]),
        base_url=address.url("flutterwave"),
        customer_email_domain=SANDBOX_EMAIL_DOMAIN,
        webhook_hash=SecretStr(cfg.webhook_hash) if cfg.webhook_hash else None,
    )
    return FlutterwaveAdapter(settings, clock)


ADAPTER_BUILDERS: dict[str, AdapterBuilder] = {
    "mpesa": _mpesa,
    "paystack": _paystack,
    "mtn_momo": _mtn_momo,
    "airtel_money": _airtel_money,
    "intasend": _intasend,
    "flutterwave": _flutterwave,
}
"""How to build each emulated provider's adapter against the sandbox."""


@asynccontextmanager
async def embedded_sandbox(
    clock: Clock, *, seed: int = 0, callback_base: str | None = None, realism: Realism | None = REALISTIC
) -> AsyncIterator[EmbeddedSandbox]:
    """Serve every emulator on loopback for the duration of the block, with adapters for each.

    `callback_base` is where this server's callback routes are (`.../callbacks/<token>`); each
    provider's callbacks and webhooks go to `<callback_base>/<provider>/...`. `realism` is every
    emulator's default (`REALISTIC` unless told otherwise: lookups lag, some callbacks are lost,
    repeated or late, as at the real providers).
    """
    names = [n for n in PROVIDERS if n in ADAPTER_BUILDERS]
    app = create_sandbox_app(
        clock, seed=seed, credentials=SandboxCredentials(), providers=names, realism=realism
    )
    async with anyio.create_task_group() as tg:
        address: SandboxAddress = await tg.start(serve_sandbox, app)
        # Without an HTTP server of ours (stdio mode, tests) callbacks go to the sandbox's own
        # callback log, and results are learnt by status pulls alone.
        base = callback_base or f"{address.base_url}/_control/callbacks"
        adapters = {n: ADAPTER_BUILDERS[n](clock, address, f"{base}/{n}") for n in names}
        if callback_base:
            for name in WEBHOOK_PROVIDERS:
                if name in names:
                    sandbox_of(app).context.webhooks[name] = f"{callback_base}/{name}/webhook"
        try:
            yield EmbeddedSandbox(app, address, adapters)
        finally:
            tg.cancel_scope.cancel()
