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
from mcp_autonomy.providers.base import ProviderAdapter
from mcp_autonomy.providers.mpesa import MpesaAdapter, MpesaSettings
from mcp_autonomy.providers.paystack import PaystackAdapter, PaystackSettings
from mcp_autonomy.sandbox.app import PROVIDERS, Sandbox, create_sandbox_app, sandbox_of
from mcp_autonomy.sandbox.core import SandboxCredentials
from mcp_autonomy.sandbox.mpesa import MpesaSandboxConfig
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


AdapterBuilder = Callable[[Clock, SandboxAddress, "str | None"], ProviderAdapter]


def _mpesa(clock: Clock, address: SandboxAddress, callback_base: str | None) -> ProviderAdapter:
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
        callback_url=f"{callback_base}/stk" if callback_base else None,
        result_url=f"{callback_base}/result" if callback_base else None,
        queue_timeout_url=f"{callback_base}/timeout" if callback_base else None,
    )
    return MpesaAdapter(settings, clock)


def _paystack(clock: Clock, address: SandboxAddress, callback_base: str | None) -> ProviderAdapter:
    cfg = PaystackSandboxConfig()
    settings = PaystackSettings(
        secret_key=SecretStr(cfg.secret_keys[0]),
        base_url=address.url("paystack"),
        customer_email_domain=SANDBOX_EMAIL_DOMAIN,
    )
    return PaystackAdapter(settings, clock)


ADAPTER_BUILDERS: dict[str, AdapterBuilder] = {"mpesa": _mpesa, "paystack": _paystack}
"""How to build each emulated provider's adapter against the sandbox."""


@asynccontextmanager
async def embedded_sandbox(
    clock: Clock, *, seed: int = 0, mpesa_callback_base: str | None = None
) -> AsyncIterator[EmbeddedSandbox]:
    """Serve every emulator on loopback for the duration of the block, with adapters for each."""
    names = [n for n in PROVIDERS if n in ADAPTER_BUILDERS]
    app = create_sandbox_app(clock, seed=seed, credentials=SandboxCredentials(), providers=names)
    async with anyio.create_task_group() as tg:
        address: SandboxAddress = await tg.start(serve_sandbox, app)
        # Daraja requires callback URLs. Without an HTTP server of ours (stdio mode, tests) they
        # point at the sandbox's own callback log, and results are fetched by status query.
        callback_base = mpesa_callback_base or f"{address.base_url}/_control/callbacks/mpesa"
        adapters = {
            n: ADAPTER_BUILDERS[n](clock, address, callback_base if n == "mpesa" else None) for n in names
        }
        try:
            yield EmbeddedSandbox(app, address, adapters)
        finally:
            tg.cancel_scope.cancel()
