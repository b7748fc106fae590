"""Every MCP tool error in one shape: `field: what is wrong (got VALUE, a TYPE); allowed: ...`.

Two sources, two functions. `describe_validation_error` turns a schema violation into one sentence
per field from the tool's own published input schema (never pydantic's dump, its error codes or its
URL). `engine_error_message` is the one table mapping the engine's exceptions to tool errors, so no
tool carries its own try/except. Echoes of caller values are cut to `ECHO_MAX_CHARS` and a whole
message to `MESSAGE_MAX_CHARS`, so a 1 MB argument never comes back as a 1 MB error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError

from mcp_autonomy.autonomy.optimizer import ProviderConfigError
from mcp_autonomy.autonomy.scaler import ScaleBoundsError
from mcp_autonomy.autonomy.scaling import ScaleBackendError
from mcp_autonomy.providers.base import ProviderError
from mcp_autonomy.providers.registry import BackupMapError, UnknownProviderError
from mcp_autonomy.resilience.router import IdempotencyConflict, NoRouteError
from mcp_autonomy.store import StoreUnavailable

__all__ = [
    "ECHO_MAX_CHARS",
    "MESSAGE_MAX_CHARS",
    "EngineErrors",
    "bounded",
    "describe_validation_error",
    "echo",
    "engine_error_message",
]

ECHO_MAX_CHARS = 80
"""The longest piece of a caller's value quoted back in an error (the REST surface uses the same)."""
MESSAGE_MAX_CHARS = 1000
"""The longest tool error text; the engine's messages are far shorter, this bounds the unforeseen."""
MAX_PROBLEMS = 3
"""Schema violations named in one error; the rest are counted (fix those first, then call again)."""
DATE_TIME_ALLOWED = "an ISO 8601 date-time, e.g. 2026-11-28T10:00:00Z"
ELLIPSIS = "…"


@dataclass(frozen=True)
class EngineErrors:
    """How a tool's engine refusals read: which argument they are about, and tool-specific hints.

    `field` names the argument a refusal (ValueError, ProviderError, unknown id) concerns;
    `unknown` is the text for an unknown id (a KeyError from the engine), with `{value}` for the
    quoted argument; `provider_field` is the argument a provider refused (a ProviderError), when
    it is not `field`; `refused_hint` is appended to a refusal's own text; `store_hint` follows the
    store-outage text (what happened to the caller's request and what to do).
    """

    field: str | None = None
    unknown: str | None = None
    provider_field: str | None = None
    refused_hint: str = ""
    store_hint: str = "retry later"


def echo(value: Any) -> str:
    """`value` as JSON text, cut to ECHO_MAX_CHARS with an ellipsis (control characters escaped)."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # a circular structure cannot come from JSON; be safe anyway
        text = repr(value)
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    return text if len(text) <= ECHO_MAX_CHARS else text[: ECHO_MAX_CHARS - 1] + ELLIPSIS


def bounded(message: str, arguments: dict[str, Any] | None = None) -> str:
    """`message` with long caller values it quotes shortened, then capped at MESSAGE_MAX_CHARS."""
    for value in _strings_in(arguments or {}):
        if len(value) > ECHO_MAX_CHARS and value in message:
            message = message.replace(value, value[: ECHO_MAX_CHARS - 1] + ELLIPSIS)
    message = "".join(ch if ch.isprintable() else " " for ch in message)
    return message if len(message) <= MESSAGE_MAX_CHARS else message[: MESSAGE_MAX_CHARS - 1] + ELLIPSIS


def _strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value, repr(value)[1:-1]]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings_in(k), *_strings_in(v))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _strings_in(item)]
    return []


def engine_error_message(exc: BaseException, errors: EngineErrors, arguments: dict[str, Any]) -> str | None:
    """The tool error text for an exception the engine raises on purpose; None for a crash.

    Order matters: the engine's specific errors subclass ValueError or KeyError.
    """
    field = errors.field
    message: str | None
    match exc:
        case ToolError():
            message = str(exc)
        case UnknownProviderError():
            message = f"{field or 'provider'}: {exc}"
        case ScaleBoundsError():
            message = str(exc)
        case ScaleBackendError():
            message = f"scale backend refused: {exc}"
        case ProviderConfigError():
            message = f"values.{exc}"
        case BackupMapError():
            message = f"backups: {exc}"
        case IdempotencyConflict():
            message = f"idempotency_key: {exc}"
        case NoRouteError():
            message = f"currency/country: {exc}"
        case StoreUnavailable():
            message = f"{exc}. {errors.store_hint[:1].upper()}{errors.store_hint[1:]}"
        case ProviderError() if (errors.provider_field or field) is not None:
            message = f"{errors.provider_field or field}: the provider refused it: {exc.provider_message}"
        case ValidationError():
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or field or "arguments"
            message = f"{where}: {str(first['msg']).removeprefix('Value error, ')}"
        case KeyError() if field is not None and errors.unknown is not None:
            message = f"{field}: {errors.unknown.format(value=echo(arguments.get(field)))}"
        case ValueError() if field is not None:
            message = f"{field}: {exc}{errors.refused_hint}"
        case _:
            message = None
    return None if message is None else bounded(message, arguments)


# --- schema violations -------------------------------------------------------------------


def describe_validation_error(
    exc: ValidationError, schema: dict[str, Any], arguments: dict[str, Any], prefix: str = "", skip: int = 0
) -> str:
    """One sentence per offending field (at most MAX_PROBLEMS), from the published input schema.

    `prefix` goes before each field name and `skip` drops leading location parts (a tagged union's
    tag), for a value validated on its own, such as a fault's `params`.
    """
    defs: dict[str, Any] = schema.get("$defs", {})
    problems: list[str] = []
    seen: set[str] = set()
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]][skip:]
        field = prefix + ".".join(loc) if loc else prefix.rstrip(".") or "arguments"
        if field in seen:
            continue  # one sentence per field: a union reports each branch separately
        seen.add(field)
        problems.append(_problem(error["type"], field, loc, error, schema, defs, arguments))
    named = problems[:MAX_PROBLEMS]
    if len(problems) > MAX_PROBLEMS:
        named.append(f"and {len(problems) - MAX_PROBLEMS} more")
    return bounded("; ".join(named))


def _problem(
    kind: str,
    field: str,
    loc: list[str],
    error: Any,
    schema: dict[str, Any],
    defs: dict[str, Any],
    arguments: dict[str, Any],
) -> str:
    if kind == "extra_forbidden":
        parent = _schema_at(schema, loc[:-1], defs) or {}
        names = ", ".join(parent.get("properties", {})) or "none"
        return f"{field}: is not accepted here (accepted: {names})"
    node = _schema_at(schema, loc, defs)
    allowed = _allowed(node, defs) if node is not None else None
    if kind == "missing":
        return f"{field}: is required" + (f" ({allowed})" if allowed else "")
    value = _value_at(arguments, loc)
    got = f"got {echo(value)}, {_json_type(value)}"
    if allowed is None:
        return f"{field}: {str(error['msg']).removeprefix('Value error, ')} ({got})"
    return f"{field}: must be {allowed} ({got})"


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"), {})
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    branches = [b for b in node.get("anyOf", []) if b.get("type") != "null"]
    if len(branches) == 1:
        inner = _resolve(branches[0], defs)
        return {**inner, **{k: v for k, v in node.items() if k not in ("anyOf", "default")}}
    return node


def _schema_at(schema: dict[str, Any], loc: list[str], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The sub-schema a validation error's location points at (None when it cannot be followed)."""
    node: dict[str, Any] | None = schema
    for part in loc:
        if node is None:
            return None
        node = _resolve(node, defs)
        if "properties" in node and part in node["properties"]:
            node = node["properties"][part]
        elif node.get("type") == "array" and part.isdigit():
            node = node.get("items")
        elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    return None if node is None else _resolve(node, defs)


def _value_at(arguments: Any, loc: list[str]) -> Any:
    value = arguments
    for part in loc:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        if not value:
            return "an empty string"
        return "a string" if len(value) <= ECHO_MAX_CHARS else f"a string of {len(value)} characters"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "an object"
    return "a value"


def _range(low: Any, high: Any, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None and not low_open and not high_open:
        return f" from {low} to {high}"
    parts = []
    if low is not None:
        parts.append(f"above {low}" if low_open else f"at least {low}")
    if high is not None:
        parts.append(f"below {high}" if high_open else f"at most {high}")
    return (" " + " and ".join(parts)) if parts else ""


def _allowed(node: dict[str, Any], defs: dict[str, Any]) -> str | None:
    """What a schema node accepts, in words."""
    node = _resolve(node, defs)
    if "enum" in node:
        return "one of " + ", ".join(str(v) for v in node["enum"] if v is not None)
    if "const" in node:
        return f"{node['const']}"
    if node.get("format") == "date-time":
        return DATE_TIME_ALLOWED
    kind = node.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind in ("integer", "number"):
        noun = "an integer" if kind == "integer" else "a number"
        low = node.get("minimum", node.get("exclusiveMinimum"))
        high = node.get("maximum", node.get("exclusiveMaximum"))
        return noun + _range(low, high, "exclusiveMinimum" in node, "exclusiveMaximum" in node)
    if kind == "string":
        text = "a string"
        low, high = node.get("minLength"), node.get("maxLength")
        if low is not None or high is not None:
            text += (_range(low, high) or "") + " characters long"
        if "pattern" in node:
            text += f" matching {node['pattern']}"
        return text
    if kind == "boolean":
        return "true or false"
    if kind == "array":
        items = node.get("items")
        what = _allowed(items, defs) if isinstance(items, dict) else None
        text = "a list"
        if "maxItems" in node:
            text += f" of at most {node['maxItems']} items"
        return text + (f", each {what}" if what else "")
    if kind == "object":
        values = node.get("additionalProperties")
        what = _allowed(values, defs) if isinstance(values, dict) else None
        return "an object" + (f" whose values are each {what}" if what else "")
    return None
