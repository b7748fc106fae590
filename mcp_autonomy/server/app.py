"""Assembles the engine and its MCP app from settings (providers, sandbox, backups, callbacks)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from pydantic import ValidationError
from starlette.routing import BaseRoute

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.config import Settings, SettingsError
from mcp_autonomy.providers import build_adapter
from mcp_autonomy.providers.registry import BackupMapError, UnknownProviderError
from mcp_autonomy.server.callbacks import callback_routes
from mcp_autonomy.server.mcp import McpApp

logger = logging.getLogger(__name__)

NO_PROVIDERS_WARNING = (
    "no payment providers configured: payments will be refused. Set MCP_AUTONOMY_PROVIDERS "
    "(e.g. mpesa,paystack) and each provider's credentials (MPESA_CONSUMER_KEY, "
    "PAYSTACK_SECRET_KEY, ...; see README 'Providers'), or add --sandbox to try the bundled emulators"
)


def _env_prefixes() -> dict[str, str]:
    """Each provider settings class's name -> its environment prefix (`MpesaSettings` -> `MPESA_`)."""
    from mcp_autonomy.providers.airtel_money import AirtelMoneySettings
    from mcp_autonomy.providers.flutterwave import FlutterwaveSettings
    from mcp_autonomy.providers.intasend import IntaSendSettings
    from mcp_autonomy.providers.mpesa import MpesaSettings
    from mcp_autonomy.providers.mtn_momo import MtnMomoSettings
    from mcp_autonomy.providers.paystack import PaystackSettings

    classes = (AirtelMoneySettings, FlutterwaveSettings, IntaSendSettings, MpesaSettings, MtnMomoSettings)
    return {c.__name__: str(c.model_config.get("env_prefix", "")) for c in (*classes, PaystackSettings)}


def provider_problem(name: str, exc: Exception) -> str:
    """One line saying why provider `name` cannot start, naming environment variables, never values."""
    if isinstance(exc, KeyError):
        return f"MCP_AUTONOMY_PROVIDERS names {name!r}: {exc.args[0] if exc.args else exc}"
    remedy = f"or remove {name} from MCP_AUTONOMY_PROVIDERS (--sandbox tries the emulators instead)"
    if isinstance(exc, ValidationError):
        prefix = _env_prefixes().get(exc.title, f"{name.upper()}_")
        errors = exc.errors()
        missing = [f"{prefix}{e['loc'][0]}".upper() for e in errors if e["type"] == "missing" and e["loc"]]
        if missing:
            variables = ", ".join(missing)
            verb, pronoun = ("is", "it") if len(missing) == 1 else ("are", "them")
            return f"{variables} {verb} not set: provider {name!r} needs {pronoun}; set {variables}, {remedy}"
        first = errors[0]
        variable = f"{prefix}{first['loc'][0]}".upper() if first["loc"] else prefix.rstrip("_")
        reason = str(first["msg"]).removeprefix("Value error, ")
        return f"{variable} is invalid for provider {name!r}: {reason}; fix it, {remedy}"
    detail = " ".join(str(exc).split())[:300]
    return f"provider {name!r} (MCP_AUTONOMY_PROVIDERS) cannot start: {detail}; {remedy}"


@dataclass
class Assembly:
    """What `serve` runs: the engine, its MCP app, and extra HTTP routes (provider callbacks)."""

    system: AutonomousSystem
    app: McpApp
    routes: list[BaseRoute] = field(default_factory=list)


def callback_path_prefix(token: str) -> str:
    """Where provider callbacks arrive; the random token keeps the path unguessable."""
    return f"/callbacks/{token}"


def callback_token(settings: Settings, system: AutonomousSystem) -> str:
    """MCP_AUTONOMY_CALLBACK_TOKEN, or the one generated on first start and kept in the state
    directory: callback URLs sent to providers before a restart must still reach us after it."""
    if settings.callback_token:
        return settings.callback_token.get_secret_value()
    store = system.store.open()
    token = store.get_state("server", "callback_token")
    if not isinstance(token, str) or len(token) < 16:
        # Claimed, not overwritten: replicas starting together on one shared store all end up
        # with the first token written (a provider's callback may land on any of them).
        token = store.claim_state(
            "server", "callback_token", secrets.token_urlsafe(16), timestamp=system.clock.now()
        )
        if not isinstance(token, str) or len(token) < 16:  # a short token left by an old version
            token = secrets.token_urlsafe(16)
            store.set_state("server", "callback_token", token, timestamp=system.clock.now())
    return token


@asynccontextmanager
async def assemble(settings: Settings, *, public_base_url: str | None = None) -> AsyncIterator[Assembly]:
    """The system with its providers registered, the MCP app, and its callback routes.

    `public_base_url` is where this server's HTTP routes are reachable (for provider callbacks);
    None in stdio mode, where results are fetched with status queries instead.
    """
    system = AutonomousSystem(settings)
    token = callback_token(settings, system)
    prefix = callback_path_prefix(token)
    callback_base = f"{public_base_url}{prefix}" if public_base_url else None
    async with AsyncExitStack() as stack:
        sandbox = None
        if settings.sandbox:
            from mcp_autonomy.sandbox.core import REALISTIC
            from mcp_autonomy.sandbox.embedded import DEFAULT_BACKUPS, embedded_sandbox

            sandbox = await stack.enter_async_context(
                embedded_sandbox(
                    system.clock,
                    callback_base=callback_base,
                    realism=REALISTIC if settings.sandbox_realism == "realistic" else None,
                )
            )
            for adapter in sandbox.adapters.values():
                system.register_provider(adapter)
            for primary, backups in DEFAULT_BACKUPS.items():
                if primary in system.providers:
                    system.set_backup_providers(primary, [b for b in backups if b in system.providers])
            logger.info("provider sandbox on %s (%s)", sandbox.address.base_url, ", ".join(sandbox.adapters))
        else:
            for name in settings.providers:
                try:
                    system.register_provider(build_adapter(name, system.clock))
                except Exception as exc:  # one line naming the provider and what is wrong
                    raise SettingsError(provider_problem(name, exc)) from None
            for primary, backups in settings.backups.items():
                try:
                    system.set_backup_providers(primary, backups)
                except (UnknownProviderError, BackupMapError) as exc:
                    raise SettingsError(f"MCP_AUTONOMY_BACKUPS ({primary}): {exc}") from None
            if not system.providers:
                logger.warning(NO_PROVIDERS_WARNING)
        app = McpApp(system, sandbox=sandbox)
        yield Assembly(system, app, callback_routes(system, prefix))
