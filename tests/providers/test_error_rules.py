"""The classification tables: every adapter's `error_rules` and `customer_codes`, and the README table."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from mcp_autonomy.providers.base import ErrorClass, ErrorRule
from mcp_autonomy.providers.error_table import (
    FINAL_RESULT_PREFIX,
    TRANSPORT,
    adapter_rules,
    customer_codes_of,
    markdown_table,
    rows,
)
from mcp_autonomy.providers.http import (
    NO_SOURCE,
    TRANSPORT_RULES,
    classify_http_status,
)
from mcp_autonomy.providers.money_truth import adapter_truths

ADAPTERS = sorted(adapter_truths())
"""Every bundled adapter's name (the money-truth table lists the same six)."""


def _cells(rule: ErrorRule) -> list[str]:
    return [" ".join(text.split()).replace("|", "\\|") for text in (rule.match, rule.meaning, rule.source)]


def test_every_adapter_and_the_transport_have_a_table() -> None:
    tables = adapter_rules()
    assert sorted(tables) == sorted([*ADAPTERS, TRANSPORT])
    assert tables[TRANSPORT] == TRANSPORT_RULES
    for name, rules in tables.items():
        assert rules, name
        assert all(isinstance(rule, ErrorRule) for rule in rules), name


def test_the_markdown_table_has_a_row_for_every_rule() -> None:
    table = markdown_table()
    lines = table.splitlines()
    assert lines[0] == "| provider | answer | class | meaning | source |"
    body = lines[2:]
    expected = sum(len(rules) for rules in adapter_rules().values())
    assert len(body) == expected
    for provider, rules in adapter_rules().items():
        for rule in rules:
            match, meaning, source = _cells(rule)
            row = f"| {provider} | {match} | {rule.error_class.value} | {meaning} | {source} |"
            assert row in body, row


def test_rows_are_sorted_by_provider_then_class() -> None:
    order = list(ErrorClass)
    keys = [(provider, order.index(rule.error_class)) for provider, rule in rows()]
    assert keys == sorted(keys)
    assert {provider for provider, _ in rows()} == {*ADAPTERS, TRANSPORT}


@pytest.mark.parametrize("provider", [*ADAPTERS, TRANSPORT])
def test_every_rule_cites_a_source_and_not_processed_never_without_one(provider: str) -> None:
    rules = adapter_rules()[provider]
    matches = [rule.match for rule in rules]
    assert len(matches) == len(set(matches)), "one rule per answer"
    for rule in rules:
        assert rule.meaning.strip() and rule.source.strip(), rule.match
        if rule.error_class is ErrorClass.NOT_PROCESSED:
            # Failing over at once is only for what a source says was not processed.
            assert NO_SOURCE not in rule.source, (provider, rule.match)
        if rule.source.startswith(NO_SOURCE):
            assert rule.error_class is ErrorClass.AMBIGUOUS, (provider, rule.match)


def test_customer_codes_are_the_final_results_the_tables_give_the_customer() -> None:
    classes = {adapter.name: adapter for adapter in _adapter_classes()}
    for name, rules in adapter_rules().items():
        if name == TRANSPORT:
            continue
        codes = classes[name].customer_codes
        assert isinstance(codes, frozenset) and codes, name
        assert codes == customer_codes_of(rules), name
        finals = [rule for rule in rules if rule.match.startswith(FINAL_RESULT_PREFIX)]
        assert all(rule.error_class is ErrorClass.CUSTOMER for rule in finals), name


def test_a_bare_5xx_stays_ambiguous_for_lack_of_a_source() -> None:
    [fivexx] = [rule for rule in TRANSPORT_RULES if rule.match == "HTTP 5xx"]
    assert (fivexx.error_class, fivexx.source) == (ErrorClass.AMBIGUOUS, NO_SOURCE)
    assert classify_http_status(503, mutating=True) is ErrorClass.AMBIGUOUS
    assert classify_http_status(500, mutating=True) is ErrorClass.AMBIGUOUS
    for name, rules in adapter_rules().items():
        for rule in rules:
            if "503" in rule.match or "5xx" in rule.match:
                assert rule.error_class is ErrorClass.AMBIGUOUS, (name, rule.match)


def test_the_module_prints_the_table() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "mcp_autonomy.providers.error_table"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert printed.strip() == markdown_table()


def _adapter_classes() -> list[type[Any]]:
    from mcp_autonomy.providers.airtel_money import AirtelMoneyAdapter
    from mcp_autonomy.providers.flutterwave import FlutterwaveAdapter
    from mcp_autonomy.providers.intasend import IntaSendAdapter
    from mcp_autonomy.providers.mpesa import MpesaAdapter
    from mcp_autonomy.providers.mtn_momo import MtnMomoAdapter
    from mcp_autonomy.providers.paystack import PaystackAdapter

    return [
        MpesaAdapter,
        PaystackAdapter,
        MtnMomoAdapter,
        AirtelMoneyAdapter,
        IntaSendAdapter,
        FlutterwaveAdapter,
    ]


def test_the_docs_embed_the_generated_error_table() -> None:
    from pathlib import Path

    from mcp_autonomy.providers.error_table import markdown_table

    text = (Path(__file__).resolve().parents[2] / "docs" / "provider-errors.md").read_text()
    start, end = "<!-- error-table:start -->\n", "<!-- error-table:end -->"
    embedded = text[text.index(start) + len(start) : text.index(end)].strip()
    assert embedded == markdown_table(), "run: python -m mcp_autonomy.providers.error_table"
