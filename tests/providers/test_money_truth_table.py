"""The README's money-truth table is the one the adapters declare (docs that cannot drift)."""

from __future__ import annotations

from pathlib import Path

from mcp_autonomy.providers.money_truth import adapter_truths, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_matches_the_adapters() -> None:
    text = README.read_text()
    start, end = "<!-- money-truth:start -->\n", "<!-- money-truth:end -->"
    embedded = text[text.index(start) + len(start) : text.index(end)].strip()
    assert embedded == markdown_table(), "run: python -m mcp_autonomy.providers.money_truth"


def test_every_adapter_cites_its_sources_and_bounds_cover_the_grace() -> None:
    for name, truth in adapter_truths().items():
        assert truth.sources, name
        assert truth.pending_bound_s > truth.not_found_grace_s, name
        assert "status" in truth.pull_carries, name
