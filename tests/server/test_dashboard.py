"""The dashboard's server side on the real server: the page, the event stream, the snapshot and the
MCP App (tool bound to its `ui://` page). The page itself is driven in a browser in tests/browser."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp import Client

from tests.server.harness import HttpServer

APP_URI = "ui://mcp-autonomy/dashboard"


@dataclass
class SseMessage:
    event: str
    data: str
    id: str | None


STREAM_DEADLINE_S = 60.0
"""A broken stream fails the test instead of hanging it (keep-alives arrive every 15 s)."""


def sse_messages(response: httpx.Response) -> Iterator[SseMessage]:
    """Parse a text/event-stream body as it arrives (comments skipped)."""
    fields: dict[str, str] = {}
    deadline = time.monotonic() + STREAM_DEADLINE_S
    for line in response.iter_lines():
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching message within {STREAM_DEADLINE_S} s")
        if line == "":
            if "data" in fields or "event" in fields:
                yield SseMessage(fields.get("event", "message"), fields.get("data", ""), fields.get("id"))
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value


def next_engine_event(messages: Iterator[SseMessage], **match: Any) -> dict[str, Any]:
    for message in messages:
        if message.event != "engine":
            continue
        event = json.loads(message.data)
        assert message.id == event["id"]
        if all(event.get(key) == value for key, value in match.items()):
            return event
    raise AssertionError(f"stream ended before an event matching {match}")


@pytest.fixture(scope="module")
def api(shared_http_server: HttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_http_server.base_url, timeout=httpx.Timeout(30, read=30)) as client:
        yield client


def test_page_is_served_whole_from_this_process_under_a_strict_policy(api: httpx.Client) -> None:
    page = api.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    html = page.text
    assert 'data-mode="http"' in html
    # Everything it loads is on this server: no scheme-qualified or protocol-relative address.
    for reference in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert reference.startswith("/dashboard/") or reference == "data:,", reference
        if reference.startswith("/"):
            assert api.get(reference).status_code == 200, reference
    script = api.get("/dashboard/dashboard.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "http://" not in script.text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in script.text


def test_snapshot_holds_what_the_dashboard_shows(api: httpx.Client) -> None:
    snapshot = api.get("/autonomous/dashboard").json()
    names = [p["name"] for p in snapshot["providers"]]
    assert {"mpesa", "paystack", "mtn_momo", "airtel_money", "intasend", "flutterwave"} <= set(names)
    mpesa = next(p for p in snapshot["providers"] if p["name"] == "mpesa")
    assert mpesa["lane"]["tunables"]["timeout_s"] > 0 and mpesa["lane"]["breaker_state"] == "closed"
    assert snapshot["backup_map"]["mpesa"] == mpesa["backups"]
    assert snapshot["status"]["overall"] in {"healthy", "degraded", "critical", "unknown"}
    assert snapshot["scaling"]["min_replicas"] <= snapshot["scaling"]["max_replicas"]
    assert snapshot["scaling"]["state"]["desired"] >= 0
    # The capacity line: what a replica can carry, the target over SCALE_UP_THRESHOLD (0.8).
    scaling = snapshot["scaling"]
    assert scaling["capacity_tpm_per_instance"] == pytest.approx(scaling["target_tpm_per_instance"] / 0.8)
    timestamps = [e["timestamp"] for e in snapshot["events"]]
    assert timestamps and timestamps == sorted(timestamps, reverse=True)
    assert {"precision", "recall"} <= set(snapshot["prediction_scores"])
    assert "mean_time_to_detect_s" in snapshot["incident_stats"]
    assert isinstance(snapshot["optimizations"], list) and isinstance(snapshot["incidents"], list)


def test_stream_sends_engine_events_as_they_happen_and_replays_after_reconnect(api: httpx.Client) -> None:
    with api.stream("GET", "/dashboard/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        messages = sse_messages(response)
        hello = next(messages)
        assert hello.event == "hello" and json.loads(hello.data)["run_id"]
        healed = api.post("/autonomous/heal/mpesa", json={"reason": "dashboard stream test"})
        assert healed.status_code == 200
        heal_event = next_engine_event(messages, type="healing_event", provider="mpesa")
        audit_event = next_engine_event(messages, type="manual_action")
        assert audit_event["seq"] > heal_event["seq"]
        first = heal_event
    # A client that saw `first` reconnects naming it: it gets what followed, in order, from memory.
    with api.stream("GET", "/dashboard/stream", headers={"Last-Event-ID": first["id"]}) as response:
        messages = sse_messages(response)
        assert next(messages).event == "hello"
        replayed = next_engine_event(messages)
        assert replayed["seq"] == first["seq"] + 1
        assert replayed["seq"] <= audit_event["seq"]
    # An id from another run replays nothing: the stream starts with what happens next.
    with api.stream("GET", "/dashboard/stream", headers={"Last-Event-ID": "otherrun-1"}) as response:
        messages = sse_messages(response)
        assert next(messages).event == "hello"
        api.post("/autonomous/heal/paystack", json={"reason": "dashboard stream test"})
        assert next_engine_event(messages)["seq"] > heal_event["seq"]


def test_stream_is_behind_the_dns_rebinding_protection(api: httpx.Client) -> None:
    assert api.get("/dashboard/stream", headers={"Host": "evil.example:80"}).status_code == 421
    assert api.get("/dashboard/stream", headers={"Origin": "http://evil.example"}).status_code == 403


@pytest.mark.anyio
async def test_dashboard_is_an_mcp_app(shared_http_server: HttpServer, tmp_path: Path) -> None:
    async with Client(shared_http_server.url, read_timeout_seconds=60) as client:  # type: ignore[arg-type]
        tools = {t.name: t for t in (await client.list_tools()).tools}
        tool = tools["show_dashboard"]
        assert tool.meta is not None and tool.meta["ui"]["resourceUri"] == APP_URI
        assert tool.annotations is not None and tool.annotations.read_only_hint is True

        listed = {str(r.uri): r for r in (await client.list_resources()).resources}
        assert listed[APP_URI].mime_type == "text/html;profile=mcp-app"
        read = await client.read_resource(APP_URI)
        content = read.contents[0]
        assert isinstance(content, types.TextResourceContents)
        assert content.mime_type == "text/html;profile=mcp-app"
        html = content.text
        # One self-contained document: style and script inlined, nothing fetched.
        assert 'data-mode="app"' in html and "<style>" in html and "<script>" in html
        assert not re.search(r'(?:src|href)="(?!data:)', html)
        assert "ui/initialize" in html and "tools/call" in html

        result = await client.call_tool("show_dashboard", {})
        assert not result.is_error
        snapshot = result.structured_content
        assert snapshot is not None
        assert {p["name"] for p in snapshot["providers"]} >= {"mpesa", "paystack"}
        assert snapshot["status"]["overall"] in {"healthy", "degraded", "critical", "unknown"}
        # Clients without MCP Apps read a summary, not the whole document.
        text = result.content[0]
        assert isinstance(text, types.TextContent)
        assert text.text.startswith(f"Overall {snapshot['status']['overall']}")
        assert "- mpesa: " in text.text and "route mpesa -> " in text.text
        assert len(text.text) < 2000
