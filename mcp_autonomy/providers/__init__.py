"""Payment provider adapters, and `build_adapter` to make one from the environment."""

from __future__ import annotations

from typing import Any

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.base import ProviderAdapter


def build_adapter(name: str, clock: Clock, base_url: str | None = None) -> ProviderAdapter:
    """The adapter called `name`, configured from its environment variables.

    `base_url` overrides the configured endpoint (the sandbox). Credentials are re-read from the
    environment whenever the adapter refreshes them, so a rotated secret is picked up.

    Raises:
        KeyError: no adapter of that name.
        pydantic.ValidationError: its environment variables are missing or invalid.
    """
    # Imported here so importing the package does not pull in httpx for users of `base` only.
    from mcp_autonomy.providers.mpesa import MpesaAdapter, MpesaSettings
    from mcp_autonomy.providers.paystack import PaystackAdapter, PaystackSettings

    overrides: dict[str, Any] = {"base_url": base_url} if base_url else {}
    if name == "mpesa":

        def load_mpesa() -> MpesaSettings:
            return MpesaSettings(**overrides)

        return MpesaAdapter(load_mpesa(), clock, settings_loader=load_mpesa)
    if name == "paystack":

        def load_paystack() -> PaystackSettings:
            return PaystackSettings(**overrides)

        return PaystackAdapter(load_paystack(), clock, settings_loader=load_paystack)
    raise KeyError(f"no adapter named {name!r} (known: mpesa, paystack)")
