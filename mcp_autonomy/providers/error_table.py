"""Every adapter's error classification as one markdown table (the README embeds it).

`python -m mcp_autonomy.providers.error_table` prints it: one row per rule of each adapter's
`error_rules` plus the transport rules every adapter shares (`http.TRANSPORT_RULES`), with the
class that rule gives the answer and where that is written. A `not_processed` row always cites
a source that says the request was not processed; a row without one stays `ambiguous` and says
so (`http.NO_SOURCE`). Rows whose answer starts with `final result` are codes of a payment's
final failed result (a pull or a callback), not errors of a request: the customer's ones make up
the adapter's `customer_codes`.
"""

from __future__ import annotations

from collections.abc import Iterable

from mcp_autonomy.providers.base import ErrorClass, ErrorRule
from mcp_autonomy.providers.http import TRANSPORT_RULES

FINAL_RESULT_PREFIX = "final result "
"""How a rule's `match` names a code of a final result (`final result 1032`)."""
TRANSPORT = "transport"
"""The table's provider name for the rules every adapter shares."""
_CLASS_ORDER = {error_class: rank for rank, error_class in enumerate(ErrorClass)}


def final_result(code: str) -> str:
    """The `match` of a rule about the final-result code `code`."""
    return f"{FINAL_RESULT_PREFIX}{code}"


def customer_codes_of(rules: Iterable[ErrorRule]) -> frozenset[str]:
    """The final-result codes `rules` give to the customer (an adapter's `customer_codes`)."""
    return frozenset(
        rule.match.removeprefix(FINAL_RESULT_PREFIX)
        for rule in rules
        if rule.error_class is ErrorClass.CUSTOMER and rule.match.startswith(FINAL_RESULT_PREFIX)
    )


def adapter_rules() -> dict[str, tuple[ErrorRule, ...]]:
    """Each bundled adapter's `error_rules` by provider name, and the shared transport rules."""
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
    tables = {adapter.name: adapter.error_rules for adapter in adapters}
    tables[TRANSPORT] = TRANSPORT_RULES
    return tables


def rows() -> list[tuple[str, ErrorRule]]:
    """(provider, rule) sorted by provider, then by class in `ErrorClass` order (not processed
    first, customer last); rules of one class keep the order their adapter lists them in."""
    found = [(provider, rule) for provider, rules in adapter_rules().items() for rule in rules]
    return sorted(found, key=lambda row: (row[0], _CLASS_ORDER[row[1].error_class]))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown_table() -> str:
    """The table: provider | answer | class | meaning | source."""
    lines = ["| provider | answer | class | meaning | source |", "|---|---|---|---|---|"]
    for provider, rule in rows():
        cells = (provider, rule.match, rule.error_class.value, rule.meaning, rule.source)
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
