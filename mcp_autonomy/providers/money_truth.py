"""Every adapter's money-truth table as one markdown table (the README embeds it).

`python -m mcp_autonomy.providers.money_truth` prints it; a test keeps the README's copy equal
to what the adapters declare, so the documented bounds are the ones the engine applies.
"""

from __future__ import annotations

from mcp_autonomy.providers.base import MoneyTruth


def adapter_truths() -> dict[str, MoneyTruth]:
    """Each bundled adapter's `money_truth`, by provider name."""
    from mcp_autonomy.providers.airtel_money import AirtelMoneyAdapter
    from mcp_autonomy.providers.flutterwave import FlutterwaveAdapter
    from mcp_autonomy.providers.intasend import IntaSendAdapter
    from mcp_autonomy.providers.mpesa import MpesaAdapter
    from mcp_autonomy.providers.mtn_momo import MtnMomoAdapter
    from mcp_autonomy.providers.paystack import PaystackAdapter

    adapters = (
        MpesaAdapter,
        PaystackAdapter,
        MtnMomoAdapter,
        AirtelMoneyAdapter,
        IntaSendAdapter,
        FlutterwaveAdapter,
    )
    return {adapter.name: adapter.money_truth for adapter in adapters}


def _seconds(value: float) -> str:
    return f"{value / 60:g} min" if value >= 120 and value % 60 == 0 else f"{value:g} s"


def markdown_table() -> str:
    """The table: one row per provider."""
    lines = [
        "| provider | its pull carries | its callback carries | callback proof | 'not found' is ambiguous for | then | non-final at most | pull path |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, truth in adapter_truths().items():
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    ", ".join(sorted(truth.pull_carries)) or "-",
                    ", ".join(sorted(truth.callback_carries)) or "-",
                    truth.callback_auth,
                    _seconds(truth.not_found_grace_s),
                    "never processed" if truth.not_found_is_final_after_grace else "still ambiguous",
                    _seconds(truth.pending_bound_s),
                    truth.pull_path.replace("|", "/"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
