"""Every time the server reports is an ISO 8601 UTC string, on every surface (issue 16).

Walks the JSON of the MCP tools' results (structured and text), the resources and the REST
responses of a real server that has taken payments and operator actions, and finds no epoch
float under a time key. Durations (`*_s`, `*_ms`) and events' free-form `data` are not times.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp import Client

from tests.server.harness import HttpServer

pytestmark = pytest.mark.anyio

TIME_KEYS = frozenset(
    {"at", "timestamp", "since", "failing_since", "unreachable_since", "open_until", "breaker_open_until"}
)
"""Keys holding a wall-clock time besides those ending in `_at`."""
NOT_TIMES = frozenset({"window_start", "window_end"})
ACTIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "request_payment",
        {
            "idempotency_key": "times-collect-0001",
            "amount_minor": 15000,
            "currency": "KES",
            "phone": "0712345678",
            "country": "KE",
        },
    ),
    ("heal_provider", {"provider": "mpesa", "reason": "times test"}),
    ("scale_to", {"replicas": 2, "reason": "times test"}),
    (
        "inject_fault",
        {
            "provider": "paystack",
            "kind": "latency",
            "params": {"distribution": "fixed", "fixed_ms": 1},
            "duration_s": 1,
            "reason": "times test",
        },
    ),
]
READS: list[tuple[str, dict[str, Any]]] = [
    ("get_status", {}),
    ("get_stats", {}),
    ("get_events", {"limit": 100}),
    ("get_incidents", {}),
    ("get_predictions", {}),
    ("get_optimizations", {}),
    ("get_maintenance_windows", {}),
    ("list_providers", {}),
    ("get_provider_config", {"provider": "mpesa"}),
    ("list_payments", {}),
    ("get_payment", {"key_or_reference": "times-collect-0001"}),
    ("get_callbacks", {}),
    ("show_dashboard", {}),
]
REST_PATHS = [
    "/autonomous/status",
    "/autonomous/stats",
    "/autonomous/events",
    "/autonomous/incidents",
    "/autonomous/predictions",
    "/autonomous/optimizations",
    "/autonomous/maintenance",
    "/autonomous/dashboard",
    "/autonomous/payments",
    "/autonomous/payments/times-collect-0001",
    "/autonomous/callbacks",
]


def is_time_key(key: str) -> bool:
    return key not in NOT_TIMES and (key.endswith("_at") or key in TIME_KEYS)


def time_values(document: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    """(path, value) of every time-keyed value, skipping events' free-form `data`."""
    if isinstance(document, list):
        for index, item in enumerate(document):
            yield from time_values(item, f"{path}[{index}]")
    elif isinstance(document, dict):
        is_event = {"seq", "type", "component", "data"} <= document.keys()
        for key, value in document.items():
            if is_event and key == "data":
                continue
            if is_time_key(key) and not isinstance(value, dict | list):
                yield f"{path}.{key}", value
            else:
                yield from time_values(value, f"{path}.{key}")


def assert_iso_times(documents: dict[str, Any]) -> int:
    """Every time in `documents` is null or an ISO 8601 UTC string; returns how many were seen."""
    problems, seen = [], 0
    for name, document in documents.items():
        for path, value in time_values(document):
            seen += 1
            if value is None:
                continue
            if not isinstance(value, str) or not value.endswith("Z"):
                problems.append(f"{name} {path} = {value!r}")
                continue
            parsed = datetime.fromisoformat(value)
            if parsed.utcoffset() != UTC.utcoffset(None):
                problems.append(f"{name} {path} = {value!r} is not UTC")
    assert not problems, problems[:20]
    return seen


def test_time_keys_are_found() -> None:
    document = {
        "created_at": 1.5,
        "uptime_s": 3.0,
        "events": [{"seq": 1, "type": "x", "component": "c", "timestamp": "t", "data": {"since": 2.0}}],
        "health": {"since": None, "window_start": 4.0},
    }
    assert sorted(time_values(document)) == [
        ("$.created_at", 1.5),
        ("$.events[0].timestamp", "t"),
        ("$.health.since", None),
    ]
    with pytest.raises(AssertionError, match="created_at"):
        assert_iso_times({"doc": document})


async def test_every_time_in_tools_resources_and_rest_is_iso(shared_http_server: HttpServer) -> None:
    documents: dict[str, Any] = {}
    async with Client(shared_http_server.url, read_timeout_seconds=60) as client:
        for tool, arguments in [*ACTIONS, *READS]:
            result = await client.call_tool(tool, arguments)
            assert not result.is_error, (tool, result.content)
            documents[f"{tool} structured"] = result.structured_content
            for index, block in enumerate(result.content):
                if isinstance(block, types.TextContent) and block.text.startswith(("{", "[")):
                    documents[f"{tool} text[{index}]"] = json.loads(block.text)
        for resource in (await client.list_resources()).resources:
            uri = str(resource.uri)
            if not uri.startswith("autonomy://"):
                continue
            content = (await client.read_resource(uri)).contents[0]
            assert isinstance(content, types.TextResourceContents), uri
            documents[uri] = json.loads(content.text)
    async with httpx.AsyncClient(base_url=shared_http_server.base_url, timeout=30) as api:
        for path in REST_PATHS:
            response = await api.get(path)
            assert response.status_code == 200, (path, response.text)
            documents[f"GET {path}"] = response.json()
    seen = assert_iso_times(documents)
    # The walk saw the times it is about (a payment's, events', the loops' ticks, ...).
    assert seen > 50, seen
    payment = documents["get_payment structured"]
    assert payment["created_at"].endswith("Z") and payment["attempts"][0]["started_at"].endswith("Z")
    fault = documents["inject_fault structured"]["injected"]
    assert fault["start_at"] < fault["end_at"] and fault["end_s"] - fault["start_s"] == 1
