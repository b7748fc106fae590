"""The real server, end to end, through the SDK's client: stdio and HTTP, both protocol generations."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client

from tests.server.harness import HttpServer, stdio_params

pytestmark = pytest.mark.anyio

MODES = ["legacy", "2026-07-28"]
TRANSPORTS = ["stdio", "http"]
EXPECTED_TOOLS = {
    "get_status",
    "get_stats",
    "heal_provider",
    "scale_to",
    "get_predictions",
    "get_optimizations",
    "get_events",
    "set_autonomy",
    "set_backup_providers",
    "request_payment",
    "send_payment",
    "get_payment",
    "list_payments",
    "resolve_payment",
    "submit_transfer_otp",
    "get_callbacks",
    "list_providers",
    "get_incidents",
    "mark_prediction",
    "get_maintenance_windows",
    "cancel_maintenance_window",
    "get_provider_config",
    "set_provider_config",
    "revert_optimization",
    "inject_fault",  # present only with --sandbox, as these servers run
    "show_dashboard",
}
STATIC_RESOURCES = {
    "autonomy://status",
    "autonomy://stats",
    "autonomy://providers",
    "autonomy://predictions",
    "autonomy://optimizations",
    "autonomy://events/recent",
    "autonomy://scaling",
    "autonomy://incidents",
    "autonomy://maintenance",
}
APP_RESOURCES = {"ui://mcp-autonomy/dashboard"}
VALID_CALLS: dict[str, dict[str, Any]] = {
    "get_status": {},
    "get_stats": {},
    "heal_provider": {"provider": "mpesa", "reason": "end-to-end test"},
    "scale_to": {"replicas": 3, "reason": "end-to-end test"},
    "get_predictions": {"min_confidence": 0.5},
    "get_optimizations": {"limit": 5},
    "get_events": {"limit": 10, "since": "2020-01-01T00:00:00Z"},
    "set_autonomy": {"component": "auto_optimizer", "mode": "dry_run", "reason": "end-to-end test"},
    "set_backup_providers": {"primary": "mpesa", "backups": ["paystack"], "reason": "end-to-end test"},
    "list_providers": {},
    "get_incidents": {"status": "resolved", "limit": 5},
    "get_maintenance_windows": {"provider": "mpesa"},
    "get_provider_config": {"provider": "paystack"},
    "set_provider_config": {"provider": "intasend", "values": {"timeout_s": 12}, "reason": "end-to-end test"},
    "request_payment": {
        "idempotency_key": "e2e-collect-0001",
        "amount_minor": 15000,
        "currency": "KES",
        "phone": "0712345678",
        "country": "KE",
    },
    "get_payment": {"key_or_reference": "e2e-collect-0001"},
    "send_payment": {
        "idempotency_key": "e2e-payout-0001",
        "amount_minor": 5000,
        "currency": "KES",
        "phone": "+254712345678",
        "country": "KE",
    },
    "list_payments": {"provider": "mpesa", "limit": 5},
    "get_callbacks": {"state": "refused", "limit": 5},
    "show_dashboard": {},
    "inject_fault": {
        "provider": "paystack",
        "kind": "latency",
        "params": {"distribution": "fixed", "fixed_ms": 1},
        "duration_s": 1,
        "reason": "end-to-end test",
    },
}


@asynccontextmanager
async def connect(
    transport: str, mode: str, tmp_path: Path, server: HttpServer | None, **kwargs: Any
) -> AsyncIterator[Client]:
    target: Any = server.url if transport == "http" and server is not None else stdio_params(tmp_path)
    async with Client(target, mode=mode, read_timeout_seconds=60, **kwargs) as client:  # type: ignore[arg-type]
        yield client


@pytest.fixture(params=TRANSPORTS)
def transport(
    request: pytest.FixtureRequest, shared_http_server: HttpServer
) -> tuple[str, HttpServer | None]:
    return request.param, shared_http_server if request.param == "http" else None


@pytest.mark.parametrize("mode", MODES)
async def test_every_tool_resource_and_prompt(
    mode: str, transport: tuple[str, HttpServer | None], tmp_path: Path
) -> None:
    name, server = transport
    async with connect(name, mode, tmp_path, server) as client:
        expected_version = "2025-11-25" if mode == "legacy" else "2026-07-28"
        assert client.protocol_version == expected_version

        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == EXPECTED_TOOLS
        for tool in tools.values():
            assert tool.description and len(tool.description) > 60, tool.name
            assert tool.annotations is not None and tool.annotations.read_only_hint is not None, tool.name
            assert tool.output_schema is not None, tool.name
        assert tools["get_status"].annotations.read_only_hint is True  # type: ignore[union-attr]
        assert tools["scale_to"].annotations.destructive_hint is True  # type: ignore[union-attr]
        assert tools["scale_to"].input_schema["properties"]["replicas"]["maximum"] == 1000

        for tool_name, arguments in VALID_CALLS.items():
            result = await client.call_tool(tool_name, arguments)
            assert not result.is_error, (tool_name, result.content)
            assert result.structured_content is not None, tool_name

        status = (await client.call_tool("get_status", {})).structured_content
        assert status is not None
        assert {p["name"] for p in status["providers"]} >= {"mpesa", "paystack"}
        assert status["components"]["auto_optimizer"]["mode"] == "dry_run"

        listed = {str(r.uri) for r in (await client.list_resources()).resources}
        assert listed == STATIC_RESOURCES | APP_RESOURCES
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        assert templates == ["autonomy://providers/{name}"]
        for uri in [*sorted(STATIC_RESOURCES), "autonomy://providers/mpesa"]:
            read = await client.read_resource(uri)
            content = read.contents[0]
            assert isinstance(content, types.TextResourceContents) and content.mime_type == "application/json"
            json.loads(content.text)

        prompts = (await client.list_prompts()).prompts
        assert [p.name for p in prompts] == ["incident_report"]
        prompt = await client.get_prompt("incident_report", {"provider": "mpesa"})
        text = prompt.messages[0].content
        assert (
            isinstance(text, types.TextContent) and "mpesa" in text.text and "## Recent events" in text.text
        )

        completion = await client.complete(
            types.PromptReference(type="ref/prompt", name="incident_report"),
            {"name": "provider", "value": "mp"},
        )
        assert "mpesa" in completion.completion.values
        assert all(v.startswith("mp") for v in completion.completion.values)

        payment = (
            await client.call_tool("get_payment", {"key_or_reference": "e2e-collect-0001"})
        ).structured_content
        assert payment is not None and payment["phone"] == "+254712345678"
        assert payment["money"] == {"amount_minor": 15000, "currency": "KES"}
        # Only a payment whose outcome could not be established is resolved by hand, and never resent.
        refused = await client.call_tool(
            "resolve_payment",
            {"idempotency_key": "e2e-collect-0001", "outcome": "failed", "reason": "end-to-end test"},
        )
        assert refused.is_error and "only needs_reconciliation" in str(refused.content)
        storm = await client.call_tool(
            "inject_fault",
            {
                "provider": "mpesa",
                "kind": "customer_errors",
                "params": {"rate": 0.5},
                "duration_s": 1,
                "reason": "end-to-end test",
            },
        )
        assert not storm.is_error, storm.content


@pytest.mark.parametrize("mode", MODES)
async def test_bad_input_is_a_tool_error_naming_the_field(
    mode: str, transport: tuple[str, HttpServer | None], tmp_path: Path
) -> None:
    name, server = transport
    async with connect(name, mode, tmp_path, server) as client:
        cases = [
            (
                "scale_to",
                {"replicas": -1, "reason": "bad input"},
                ["replicas: must be an integer from 0 to 1000 (got -1, an integer)"],
            ),
            (
                "scale_to",
                {"replicas": 10**9, "reason": "bad input"},
                ["replicas: must be an integer from 0 to 1000"],
            ),
            (
                "scale_to",
                {"replicas": 50, "reason": "bad input"},
                ["MIN_INSTANCES..MAX_INSTANCES = 2..20", "force"],
            ),
            ("heal_provider", {"provider": "no-such-provider", "reason": "bad input"}, ["provider", "mpesa"]),
            (
                "set_autonomy",
                {"component": "x", "mode": "on", "reason": "bad input"},
                ["component", "self_healer"],
            ),
            (
                "get_predictions",
                {"min_confidence": 2},
                ["min_confidence: must be a number from 0.0 to 1.0 (got 2, an integer)"],
            ),
            (
                "mark_prediction",
                {"id": "no-such-prediction", "verdict": "confirmed", "reason": "bad input"},
                ["id", "get_predictions"],
            ),
            (
                "mark_prediction",
                {"id": "x", "verdict": "maybe", "reason": "bad input"},
                ["verdict", "false_positive"],
            ),
            (
                "cancel_maintenance_window",
                {"id": "mw-none", "reason": "bad input"},
                ["id", "get_maintenance_windows"],
            ),
            ("get_incidents", {"limit": 0}, ["limit: must be an integer from 1 to 500 (got 0, an integer)"]),
            (
                "set_provider_config",
                {"provider": "mpesa", "values": {"timeout_s": 500}, "reason": "bad input"},
                ["timeout_s", "120"],
            ),
            (
                "set_provider_config",
                {"provider": "mpesa", "values": {"speed": 1}, "reason": "bad input"},
                ["speed", "timeout_s"],
            ),
            ("revert_optimization", {"id": "opt-none", "reason": "bad input"}, ["id", "get_optimizations"]),
            (
                "request_payment",
                {
                    "idempotency_key": "bad-phone-01",
                    "amount_minor": 100,
                    "currency": "KES",
                    "phone": "12",
                    "country": "KE",
                },
                ["phone"],
            ),
            (
                "request_payment",
                {
                    "idempotency_key": "bad-amount-1",
                    "amount_minor": 0,
                    "currency": "KES",
                    "phone": "+254712345678",
                    "country": "KE",
                },
                ["amount_minor: must be an integer from 1 to"],
            ),
            (
                "request_payment",
                {
                    "idempotency_key": "bad-curr-01",
                    "amount_minor": 100,
                    "currency": "kes",
                    "phone": "+254712345678",
                    "country": "KE",
                },
                ["currency"],
            ),
            ("get_payment", {"key_or_reference": "never-seen-key"}, ["key_or_reference", "no payment"]),
            (
                "set_backup_providers",
                {"primary": "mpesa", "backups": ["mpesa"], "reason": "bad input"},
                ["backups", "own backup"],
            ),
        ]
        for tool, arguments, fragments in cases:
            result = await client.call_tool(tool, arguments)
            assert result.is_error, (tool, arguments)
            text = result.content[0].text  # type: ignore[union-attr]
            for fragment in fragments:
                assert fragment in text, (tool, arguments, text)


@pytest.mark.parametrize("mode", MODES)
async def test_resource_updated_notification_after_heal(
    mode: str, transport: tuple[str, HttpServer | None], tmp_path: Path
) -> None:
    name, server = transport
    uri = "autonomy://providers/mpesa"
    if mode == "legacy":
        updated = anyio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ResourceUpdatedNotification) and message.params.uri == uri:
                updated.set()

        async with connect(name, mode, tmp_path, server, message_handler=on_message) as client:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # resources/subscribe is deprecated only in 2026-07-28
                await client.subscribe_resource(uri)
            result = await client.call_tool(
                "heal_provider", {"provider": "mpesa", "reason": "notification test"}
            )
            assert not result.is_error
            with anyio.fail_after(10):
                await updated.wait()
    else:
        async with (
            connect(name, mode, tmp_path, server) as client,
            client.listen(resource_subscriptions=[uri]) as sub,
        ):
            result = await client.call_tool(
                "heal_provider", {"provider": "mpesa", "reason": "notification test"}
            )
            assert not result.is_error
            with anyio.fail_after(10):
                async for event in sub:
                    assert getattr(event, "uri", None) == uri
                    break


async def test_heal_reports_progress_per_step(shared_http_server: HttpServer, tmp_path: Path) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with connect("http", "legacy", tmp_path, shared_http_server) as client:
        result = await client.call_tool(
            "heal_provider",
            {"provider": "paystack", "reason": "progress test"},
            progress_callback=on_progress,
        )
    assert not result.is_error
    assert [p[0] for p in progress] == [0, 1, 2, 3]
    assert progress[-1][2] is not None and "paystack" in progress[-1][2]
