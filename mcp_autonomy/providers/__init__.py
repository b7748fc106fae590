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
    from mcp_autonomy.providers.airtel_money import AirtelMoneyAdapter, AirtelMoneySettings
    from mcp_autonomy.providers.flutterwave import FlutterwaveAdapter, FlutterwaveSettings
    from mcp_autonomy.providers.intasend import IntaSendAdapter, IntaSendSettings
    from mcp_autonomy.providers.mpesa import MpesaAdapter, MpesaSettings
    from mcp_autonomy.providers.mtn_momo import MtnMomoAdapter, MtnMomoSettings
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
    if name == "mtn_momo":

        def load_mtn_momo() -> MtnMomoSettings:
            return MtnMomoSettings(**overrides)

        return MtnMomoAdapter(load_mtn_momo(), clock, settings_loader=load_mtn_momo)
    if name == "airtel_money":

        def load_airtel_money() -> AirtelMoneySettings:
            return AirtelMoneySettings(**overrides)

        return AirtelMoneyAdapter(load_airtel_money(), clock, settings_loader=load_airtel_money)
    if name == "intasend":

        def load_intasend() -> IntaSendSettings:
            return IntaSendSettings(**overrides)

        return IntaSendAdapter(load_intasend(), clock, settings_loader=load_intasend)
    if name == "flutterwave":

        def load_flutterwave() -> FlutterwaveSettings:
            return FlutterwaveSettings(**overrides)

        return FlutterwaveAdapter(load_flutterwave(), clock, settings_loader=load_flutterwave)
    raise KeyError(
        f"no adapter named {name!r} (known: mpesa, paystack, mtn_momo, airtel_money, intasend, flutterwave)"
    )
