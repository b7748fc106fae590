"""Process-level guarantees: stdout purity in stdio mode, restarts keep state, signals stop fast."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client

from tests.server.harness import http_server, server_env, stdio_params
from tests.server.test_mcp_e2e import VALID_CALLS

COMPONENTS = {"self_healer", "auto_scaler", "predictive_maintenance", "auto_optimizer"}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_stdio_stdout_carries_only_json_rpc(mode: str, tmp_path: Path) -> None:
    tap = tmp_path / "stdout.bin"
    async with Client(stdio_params(tmp_path, tap=tap), mode=mode, read_timeout_seconds=60) as client:  # type: ignore[arg-type]
        for tool, arguments in VALID_CALLS.items():
            await client.call_tool(tool, arguments)
        await client.call_tool("scale_to", {"replicas": -1, "reason": "an error path too"})
        await client.call_tool("heal_provider", {"provider": "nope", "reason": "an error path too"})
        await client.read_resource("autonomy://status")
    raw = tap.read_bytes()
    assert raw, "the server wrote nothing"
    lines = raw.split(b"\n")
    assert lines[-1] == b"", "stdout must end with a complete message"
    messages = [json.loads(line) for line in lines[:-1]]
    for message in messages:
        assert message.get("jsonrpc") == "2.0", message
        assert "id" in message or "method" in message, message
    assert sum(1 for m in messages if "result" in m or "error" in m) >= len(VALID_CALLS) + 3


def stored_events(state_dir: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(state_dir / "mcp-autonomy.sqlite3") as db:
        return [
            tuple(r) for r in db.execute("SELECT id, type, component FROM events ORDER BY timestamp, seq")
        ]


def audit_tools(state_dir: Path) -> list[str]:
    with sqlite3.connect(state_dir / "mcp-autonomy.sqlite3") as db:
        return [r[0] for r in db.execute("SELECT tool FROM audit_log ORDER BY id")]


def assert_clean_stop(state_dir: Path) -> None:
    """The last run recorded a stop of every loop and of the system."""
    events = stored_events(state_dir)
    last_start = max(i for i, e in enumerate(events) if e[1] == "system_started")
    after = events[last_start:]
    stopped = {component for _, kind, component in after if kind == "component_stopped"}
    assert stopped == COMPONENTS
    assert any(kind == "system_stopped" for _, kind, _ in after)


@pytest.mark.anyio
async def test_restart_keeps_events_and_audit_log(tmp_path: Path) -> None:
    with http_server(tmp_path) as server:
        async with Client(server.url, mode="legacy") as client:
            await client.call_tool("scale_to", {"replicas": 4, "reason": "before restart"})
            await client.call_tool(
                "set_autonomy", {"component": "auto_scaler", "mode": "off", "reason": "restart"}
            )
    first_run = stored_events(tmp_path / "state")
    assert audit_tools(tmp_path / "state") == ["scale_to", "set_autonomy"]

    with http_server(tmp_path) as server:
        async with Client(server.url, mode="2026-07-28") as client:
            events = (await client.call_tool("get_events", {"limit": 1000})).structured_content
            status = (await client.call_tool("get_status", {})).structured_content
            stats = (await client.call_tool("get_stats", {})).structured_content
    assert events is not None and status is not None and stats is not None
    ids = [e["id"] for e in events["events"]]
    assert [e[0] for e in first_run if e[0] in ids] == [e[0] for e in first_run]
    assert {e["type"] for e in events["events"]} >= {"scaled_up", "autonomy_mode_changed", "manual_action"}
    assert status["components"]["auto_scaler"]["mode"] == "off"
    assert status["scaling"]["desired"] == 4
    assert stats["manual_actions"] == 2
    assert audit_tools(tmp_path / "state") == ["scale_to", "set_autonomy"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_http_server_stops_within_two_seconds(sig: signal.Signals, tmp_path: Path) -> None:
    with http_server(tmp_path) as server:
        # An open SSE stream must not hold the shutdown up.
        with httpx.Client(timeout=5) as http:
            init = http.post(
                server.url,
                headers={"Accept": "application/json, text/event-stream", "Content-Type": "application/json"},
                json={
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-11-25",
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                },
            )
            assert init.status_code == 200
        took = server.terminate(sig)
    assert took < 2.0, f"took {took:.2f} s"
    assert_clean_stop(tmp_path / "state")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stdio_server_stops_within_two_seconds(sig: signal.Signals, tmp_path: Path) -> None:
    params = stdio_params(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, *params.args],
        cwd=tmp_path,
        env=server_env(tmp_path / "state"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        db = tmp_path / "state" / "mcp-autonomy.sqlite3"
        while time.monotonic() < deadline:
            try:
                if db.exists() and any(e[1] == "system_started" for e in stored_events(tmp_path / "state")):
                    break
            except sqlite3.OperationalError:
                pass  # the schema is being created right now
            time.sleep(0.05)
        started = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=10)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 2.0, f"took {took:.2f} s"
    assert proc.stdout is not None and proc.stdout.read() == b""
    assert_clean_stop(tmp_path / "state")


def test_probes_and_bearer_token(tmp_path: Path) -> None:
    with http_server(tmp_path, env={"MCP_AUTONOMY_BEARER_TOKEN": "t0ken-for-tests"}) as server:
        assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "alive"}
        assert httpx.get(f"{server.base_url}/readyz").json()["status"] == "ready"
        denied = httpx.post(server.url, json={})
        assert denied.status_code == 401
        assert "t0ken" not in denied.text
        wrong = httpx.post(server.url, json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401

        async def authorised() -> list[str]:
            headers = {"Authorization": "Bearer t0ken-for-tests"}
            async with (
                httpx2.AsyncClient(headers=headers) as http_client,
                Client(_transport(server.url, http_client), mode="2026-07-28") as client,
            ):
                return [t.name for t in (await client.list_tools()).tools]

        assert "get_status" in anyio.run(authorised)
        assert "t0ken-for-tests" not in server.log()


def test_dns_rebinding_protection_refuses_foreign_host(tmp_path: Path) -> None:
    with http_server(tmp_path) as server:
        response = httpx.post(
            server.url,
            headers={"Host": "evil.example:80", "Accept": "application/json, text/event-stream"},
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        )
        assert response.status_code in (403, 421)


def _transport(url: str, http_client: httpx2.AsyncClient) -> Any:
    from mcp.client.streamable_http import streamable_http_client

    return streamable_http_client(url, http_client=http_client)
