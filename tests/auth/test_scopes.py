"""The scope map covers everything: every tool, resource, template, prompt and HTTP route has
exactly one scope (or is deliberately public), and no entry names something that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.routing import Mount, Route

from mcp_autonomy.config import load_settings
from mcp_autonomy.server.app import assemble
from mcp_autonomy.server.auth.scopes import (
    PROMPT_SCOPES,
    RESOURCE_SCOPES,
    ROUTE_SCOPES,
    TOOL_SCOPES,
    Scope,
    mcp_message_scope,
    parse_scopes,
    resource_scope,
    route_scope,
)
from mcp_autonomy.server.dashboard import PUBLIC_PATHS as DASHBOARD_PUBLIC_PATHS
from mcp_autonomy.server.http import CALLBACK_PREFIX, MCP_PATH, UNAUTHENTICATED_PATHS, create_http_app

pytestmark = pytest.mark.anyio

PUBLIC = UNAUTHENTICATED_PATHS | DASHBOARD_PUBLIC_PATHS


def _paths(routes: list[object], prefix: str = "") -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, Mount):
            found.extend(_paths(list(route.routes), prefix + route.path))
        elif isinstance(route, Route):
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                found.append((method, prefix + route.path))
    return found


async def test_every_tool_resource_prompt_and_route_has_exactly_one_scope(tmp_path: Path) -> None:
    settings = load_settings(sandbox=True, state_dir=tmp_path / "state", tokens_file=None)
    async with assemble(settings, public_base_url="http://127.0.0.1:1") as assembly:
        mcp = assembly.app.mcp
        tools = {t.name for t in await mcp.list_tools()}
        resources = {str(r.uri) for r in await mcp.list_resources()}
        templates = {t.uri_template for t in await mcp.list_resource_templates()}
        prompts = {p.name for p in await mcp.list_prompts()}
        app = create_http_app(assembly.system, assembly.app, extra_routes=assembly.routes)
        routes = _paths(list(app.routes))

    # A dict gives one scope per key; both directions must match so nothing is unmapped or stale.
    assert "inject_fault" in tools and "send_payment" in tools
    assert tools == set(TOOL_SCOPES), tools ^ set(TOOL_SCOPES)
    assert resources | templates == set(RESOURCE_SCOPES), (resources | templates) ^ set(RESOURCE_SCOPES)
    assert prompts == set(PROMPT_SCOPES)

    unmapped = []
    for method, path in routes:
        if path in PUBLIC or path.startswith(CALLBACK_PREFIX) or path == MCP_PATH:
            continue
        if (method, path) not in ROUTE_SCOPES:
            unmapped.append((method, path))
    assert not unmapped, f"routes without a scope: {unmapped}"
    stale = set(ROUTE_SCOPES) - set(routes)
    assert not stale, f"scope map names routes that do not exist: {stale}"


def test_the_issue_s_assignments() -> None:
    for tool in (
        "get_status",
        "get_stats",
        "get_events",
        "get_predictions",
        "get_incidents",
        "show_dashboard",
    ):
        assert TOOL_SCOPES[tool] is Scope.READ, tool
    for tool in (
        "heal_provider",
        "scale_to",
        "set_autonomy",
        "set_backup_providers",
        "set_provider_config",
        "cancel_maintenance_window",
        "revert_optimization",
        "mark_prediction",
        "resolve_payment",
    ):
        assert TOOL_SCOPES[tool] is Scope.OPERATE, tool
    assert TOOL_SCOPES["get_payment"] is Scope.PAYMENTS_READ
    assert TOOL_SCOPES["request_payment"] is TOOL_SCOPES["send_payment"] is Scope.PAYMENTS_WRITE
    assert TOOL_SCOPES["inject_fault"] is Scope.SANDBOX_FAULTS
    assert route_scope("POST", "/autonomous/heal/mpesa") is Scope.OPERATE
    assert route_scope("POST", "/autonomous/payments/k-1/resolve") is Scope.OPERATE
    assert route_scope("POST", "/autonomous/payments/k-1/otp") is Scope.PAYMENTS_WRITE
    assert route_scope("GET", "/autonomous/payments/k-1") is Scope.PAYMENTS_READ
    assert route_scope("HEAD", "/autonomous/status") is Scope.READ
    assert route_scope("GET", "/autonomous/no-such-route") is Scope.READ
    assert route_scope("POST", MCP_PATH) is None


def test_mcp_messages_need_their_target_s_scope() -> None:
    def call(method: str, **params: object) -> object:
        return mcp_message_scope({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})

    assert call("tools/call", name="send_payment", arguments={}) == (
        Scope.PAYMENTS_WRITE,
        "tool send_payment",
    )
    assert call("resources/read", uri="autonomy://providers/mpesa") == (
        Scope.READ,
        "resource autonomy://providers/mpesa",
    )
    assert resource_scope("ui://mcp-autonomy/dashboard") is Scope.READ
    assert call("prompts/get", name="incident_report") == (Scope.READ, "prompt incident_report")
    assert call("resources/subscribe", uri="autonomy://status") == (Scope.READ, "resources/subscribe")
    for method in ("initialize", "ping", "tools/list", "resources/list", "completion/complete"):
        assert call(method) is None, method
    assert call("tools/call", name="no_such_tool") is None  # the SDK says it does not exist


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("autonomy:read payments:read", ["autonomy:read", "payments:read"]),
        (["autonomy:read", "payments:write"], ["autonomy:read", "payments:write"]),  # Entra-style scp list
        ("", []),
        (None, []),
        (42, []),
    ],
)
def test_scopes_are_read_from_scope_or_scp(claim: object, expected: list[str]) -> None:
    assert parse_scopes(claim) == expected


def test_scope_names_are_oauth_scope_tokens() -> None:
    # RFC 6749 §3.3: scope tokens are printable ASCII without spaces, quotes or backslashes.
    for scope in Scope:
        assert re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", scope.value), scope
