"""Scopes: who may do what. Every tool, resource, prompt and HTTP route maps to exactly one scope.

`autonomy:read` sees (status, stats, predictions, incidents, events, resources, the dashboard),
`autonomy:operate` acts on the engine (heal, scale, kill switch, backups, provider config,
maintenance, revert, mark_prediction, resolving `needs_reconciliation`), `payments:read` sees
payments (they show the payer), `payments:write` moves money, `sandbox:faults` injects faults into
the bundled emulators. Routes that are not in `ROUTE_SCOPES` are either `PUBLIC_ROUTES` (probes,
provider callbacks, the dashboard's page and code, the OAuth metadata) or `/mcp`, where the scope
is decided per JSON-RPC message (`mcp_message_scope`).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Final


class Scope(StrEnum):
    """The OAuth scopes this server enforces."""

    READ = "autonomy:read"
    OPERATE = "autonomy:operate"
    PAYMENTS_READ = "payments:read"
    PAYMENTS_WRITE = "payments:write"
    SANDBOX_FAULTS = "sandbox:faults"


ALL_SCOPES: Final = tuple(Scope)
SCOPE_NAMES: Final = frozenset(s.value for s in Scope)

TOOL_SCOPES: Final[dict[str, Scope]] = {
    # seeing
    "get_status": Scope.READ,
    "get_stats": Scope.READ,
    "get_events": Scope.READ,
    "get_predictions": Scope.READ,
    "get_maintenance_windows": Scope.READ,
    "get_optimizations": Scope.READ,
    "get_provider_config": Scope.READ,
    "get_incidents": Scope.READ,
    "list_providers": Scope.READ,
    "show_dashboard": Scope.READ,
    # acting on the engine
    "set_autonomy": Scope.OPERATE,
    "heal_provider": Scope.OPERATE,
    "scale_to": Scope.OPERATE,
    "set_backup_providers": Scope.OPERATE,
    "mark_prediction": Scope.OPERATE,
    "cancel_maintenance_window": Scope.OPERATE,
    "set_provider_config": Scope.OPERATE,
    "revert_optimization": Scope.OPERATE,
    "resolve_payment": Scope.OPERATE,
    # payments
    "get_payment": Scope.PAYMENTS_READ,
    "list_payments": Scope.PAYMENTS_READ,
    "get_callbacks": Scope.PAYMENTS_READ,
    "request_payment": Scope.PAYMENTS_WRITE,
    "send_payment": Scope.PAYMENTS_WRITE,
    "submit_transfer_otp": Scope.PAYMENTS_WRITE,
    # the sandbox
    "inject_fault": Scope.SANDBOX_FAULTS,
}

RESOURCE_SCOPES: Final[dict[str, Scope]] = {
    "autonomy://status": Scope.READ,
    "autonomy://stats": Scope.READ,
    "autonomy://providers": Scope.READ,
    "autonomy://providers/{name}": Scope.READ,
    "autonomy://predictions": Scope.READ,
    "autonomy://incidents": Scope.READ,
    "autonomy://maintenance": Scope.READ,
    "autonomy://optimizations": Scope.READ,
    "autonomy://events/recent": Scope.READ,
    "autonomy://scaling": Scope.READ,
    "ui://mcp-autonomy/dashboard": Scope.READ,
}
"""Resource URIs and URI templates (`{name}` matches one path segment)."""

PROMPT_SCOPES: Final[dict[str, Scope]] = {"incident_report": Scope.READ}

REST_PREFIX: Final = "/autonomous"
ROUTE_SCOPES: Final[dict[tuple[str, str], Scope]] = {
    ("GET", "/autonomous/status"): Scope.READ,
    ("GET", "/autonomous/stats"): Scope.READ,
    ("GET", "/autonomous/predictions"): Scope.READ,
    ("GET", "/autonomous/optimizations"): Scope.READ,
    ("GET", "/autonomous/events"): Scope.READ,
    ("GET", "/autonomous/incidents"): Scope.READ,
    ("GET", "/autonomous/maintenance"): Scope.READ,
    ("GET", "/autonomous/dashboard"): Scope.READ,
    ("GET", "/autonomous/openapi.json"): Scope.READ,
    ("POST", "/autonomous/heal/{provider}"): Scope.OPERATE,
    ("POST", "/autonomous/scale"): Scope.OPERATE,
    ("POST", "/autonomous/payments/{key}/resolve"): Scope.OPERATE,
    ("GET", "/autonomous/payments"): Scope.PAYMENTS_READ,
    ("GET", "/autonomous/payments/{key}"): Scope.PAYMENTS_READ,
    ("GET", "/autonomous/callbacks"): Scope.PAYMENTS_READ,
    ("POST", "/autonomous/payments/{key}/otp"): Scope.PAYMENTS_WRITE,
    ("GET", "/dashboard/stream"): Scope.READ,
    ("GET", "/metrics"): Scope.READ,
    ("GET", "/internal/load"): Scope.READ,
}
"""HTTP method and path (Starlette `{param}` syntax) -> the scope a request needs."""

MCP_METHOD_SCOPES: Final[dict[str, Scope]] = {
    "resources/subscribe": Scope.READ,
    "resources/unsubscribe": Scope.READ,
}
"""MCP methods with a fixed scope; tools/call, resources/read and prompts/get depend on their target.
Every other method (initialize, ping, */list, completion, logging) needs a valid token only."""


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^{}/]+\})", template)
    return re.compile(
        "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts) + r"\Z", re.DOTALL
    )


_RESOURCE_PATTERNS: Final = [(_template_regex(uri), scope) for uri, scope in RESOURCE_SCOPES.items()]
_ROUTE_PATTERNS: Final = [
    (method, _template_regex(path), scope) for (method, path), scope in ROUTE_SCOPES.items()
]


def resource_scope(uri: str) -> Scope:
    """The scope reading `uri` needs; an unknown URI needs `autonomy:read` (the server answers 404)."""
    for pattern, scope in _RESOURCE_PATTERNS:
        if pattern.match(uri):
            return scope
    return Scope.READ


def route_scope(method: str, path: str) -> Scope | None:
    """The scope `method path` needs, or None for a path without a fixed scope (/mcp, unknown paths).

    HEAD is GET; an unknown path under /autonomous (a 404 or 405) needs `autonomy:read`, so nobody
    learns the API's shape without a token that may read it.
    """
    method = "GET" if method == "HEAD" else method
    for route_method, pattern, scope in _ROUTE_PATTERNS:
        if route_method == method and pattern.match(path):
            return scope
    if path == REST_PREFIX or path.startswith(REST_PREFIX + "/"):
        return Scope.READ
    return None


def mcp_message_scope(message: Any) -> tuple[Scope, str] | None:
    """(scope, what) for one JSON-RPC message sent to /mcp, or None when a valid token suffices.

    `what` names the target for the refusal (`tool send_payment`, `resource autonomy://status`).
    An unknown tool or prompt needs nothing beyond a valid token: the SDK answers that it does not exist.
    """
    if not isinstance(message, dict):
        return None
    method = message.get("method")
    params = message.get("params")
    params = params if isinstance(params, dict) else {}
    if method == "tools/call":
        name = params.get("name")
        scope = TOOL_SCOPES.get(name) if isinstance(name, str) else None
        return (scope, f"tool {name}") if scope is not None else None
    if method == "resources/read":
        uri = params.get("uri")
        return (resource_scope(uri), f"resource {uri}") if isinstance(uri, str) else None
    if method == "prompts/get":
        name = params.get("name")
        scope = PROMPT_SCOPES.get(name) if isinstance(name, str) else None
        return (scope, f"prompt {name}") if scope is not None else None
    if isinstance(method, str) and method in MCP_METHOD_SCOPES:
        return MCP_METHOD_SCOPES[method], method
    return None


def parse_scopes(value: Any) -> list[str]:
    """Scopes from a token's `scope` (space-separated, RFC 8693/9068) or `scp` (Entra: a string or a list)."""
    if isinstance(value, str):
        return [s for s in value.split() if s]
    if isinstance(value, list):
        return [s for s in value if isinstance(s, str) and s]
    return []
