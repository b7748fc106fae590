"""Every tool fuzzed from its own input schema, over stdio and streamable HTTP: each answer is a
result or a clean tool error (no pydantic dump, no Python names, no other payment's phone), never a
JSON-RPC error, and the server still answers afterwards."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.server.harness import HttpServer, stdio_params

pytestmark = pytest.mark.anyio

SEED = 16
CALLS_PER_TOOL = 14
HUGE = "x" * 1_000_000
CONTROL = "a\x00b\x1b[31m\r\nc\u202e"
DATES = [
    "0001-01-01",
    "9999-12-31",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-12:00",
    "2026-13-45T99:99:99Z",
]
NUMBERS = [-1, 0, 1e308, -1e308, 10**30, 1.5, 1.0]
FORBIDDEN = (
    "int_parsing",
    "ValidationError",
    "Arguments",
    "Traceback",
    "errors.pydantic.dev",
    "Error executing tool",
)
KNOWN_PHONE = "+254712340002"
PHONE_DIGITS = KNOWN_PHONE.removeprefix("+254")


def _plausible(name: str, prop: dict[str, Any]) -> Any:
    """A value the schema accepts, for the fields a mutation does not touch."""
    if "enum" in prop:
        return prop["enum"][0]
    kinds = prop.get("type")
    kind = kinds[0] if isinstance(kinds, list) else kinds
    if "anyOf" in prop:
        return None
    if name in ("provider", "primary"):
        return "mpesa"
    if name == "reason":
        return "fuzz test"
    if name == "idempotency_key":
        return "fuzz-key-0001"
    if name == "phone":
        return "0712345678"
    if name == "currency":
        return "KES"
    if name == "country":
        return "KE"
    if kind == "integer":
        return max(prop.get("minimum", 1), 1)
    if kind == "number":
        return prop.get("minimum", 0.5)
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return "abcdefgh"


def _mutations(schema: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = list(schema.get("required", []))
    base = {name: _plausible(name, properties[name]) for name in required}
    structural: list[dict[str, Any]] = [{**base, "unexpected_field": 1}]
    structural += [{k: v for k, v in base.items() if k != name} for name in required]
    bad_values: list[Any] = [
        HUGE,
        CONTROL,
        "500",
        "yes",
        {},
        [1, [2, {"x": None}]],
        True,
        None,
        *DATES,
        *NUMBERS,
    ]
    wrong = [{**base, name: value} for name in properties for value in bad_values]
    # The structural cases first (at most 3), then a deterministic sample of wrong values.
    picked = structural[:3]
    return picked + rng.sample(wrong, min(len(wrong), CALLS_PER_TOOL - len(picked)))


def _assert_clean(tool: str, arguments: dict[str, Any], text: str) -> None:
    shown = {k: (v[:40] if isinstance(v, str) else v) for k, v in arguments.items()}
    for fragment in FORBIDDEN:
        assert fragment not in text, (tool, shown, text[:500])
    assert len(text) <= 1000, (tool, shown, len(text))
    assert PHONE_DIGITS not in text, (tool, shown, text)


@asynccontextmanager
async def _client(transport: str, tmp_path: Path, server: HttpServer) -> AsyncIterator[Client]:
    target: Any = server.url if transport == "http" else stdio_params(tmp_path)
    async with Client(target, read_timeout_seconds=60) as client:
        yield client


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_every_tool_fuzzed_from_its_schema(
    transport: str, tmp_path: Path, shared_http_server: HttpServer
) -> None:
    rng = random.Random(SEED)
    async with _client(transport, tmp_path, shared_http_server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        calls = 0
        for name in sorted(tools):
            for arguments in _mutations(tools[name].input_schema, rng):
                try:
                    result = await client.call_tool(name, arguments)
                except MCPError as exc:  # a JSON-RPC error: the server could not handle the call
                    pytest.fail(f"{name}: JSON-RPC error {exc} for {list(arguments)}")
                calls += 1
                if result.is_error:
                    text = " ".join(getattr(block, "text", "") for block in result.content)
                    assert text, (name, list(arguments))
                    _assert_clean(name, arguments, text)
        assert calls >= len(tools) * 5
        status = await client.call_tool("get_status", {})
        assert not status.is_error


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_strict_types_and_one_sentence_errors(
    transport: str, tmp_path: Path, shared_http_server: HttpServer
) -> None:
    async with _client(transport, tmp_path, shared_http_server) as client:
        cases: list[tuple[str, dict[str, Any], str]] = [
            (
                "scale_to",
                {"replicas": "500", "reason": "strict types"},
                'replicas: must be an integer from 0 to 1000 (got "500", a string)',
            ),
            (
                "scale_to",
                {"replicas": 25, "reason": "strict types", "force": "yes"},
                'force: must be true or false (got "yes", a string)',
            ),
            ("scale_to", {"replicas": 1.0, "reason": "strict types"}, "replicas: must be an integer"),
            (
                "scale_to",
                {"replica": 5, "reason": "strict types"},
                "replica: is not accepted here (accepted: replicas, reason, force)",
            ),
            ("get_events", {"since": "0001-01-01"}, "since: must be an ISO 8601 date-time"),
            ("get_events", {"since": "9999-12-31"}, "since: must be an ISO 8601 date-time"),
            ("get_predictions", {"provider": HUGE}, "known providers: mpesa"),
        ]
        for tool, arguments, expected in cases:
            result = await client.call_tool(tool, arguments)
            assert result.is_error, (tool, list(arguments))
            text = result.content[0].text  # type: ignore[union-attr]
            assert expected in text, (tool, text[:300])
            _assert_clean(tool, arguments, text)
        for since in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59-12:00", "9999-12-31T23:59:59"):
            events = await client.call_tool("get_events", {"since": since, "limit": 5})
            assert not events.is_error, (since, events.content)


async def test_reused_key_does_not_echo_the_other_payments_phone(
    tmp_path: Path, shared_http_server: HttpServer
) -> None:
    payment = {
        "idempotency_key": "fuzz-phone-0001",
        "amount_minor": 1500,
        "currency": "KES",
        "phone": KNOWN_PHONE,
        "country": "KE",
    }
    async with _client("http", tmp_path, shared_http_server) as client:
        first = await client.call_tool("request_payment", payment)
        assert not first.is_error, first.content
        reused = await client.call_tool(
            "request_payment", {**payment, "amount_minor": 2500, "phone": "+254712349999"}
        )
        assert reused.is_error
        text = reused.content[0].text  # type: ignore[union-attr]
        assert "idempotency_key" in text and "different payment" in text, text
        assert PHONE_DIGITS not in text and "712349999" not in text, text
