"""Output schemas in the form clients validate fastest: `$defs` inlined, `X | None` as a type list."""

from __future__ import annotations

from typing import Any

__all__ = ["compact_schema"]

_ANNOTATION_KEYWORDS = frozenset({"title", "description", "default", "examples", "deprecated"})
# Keywords that constrain only non-null instances, so `{"type": [T, "null"], ...}` keeps their meaning.
_TYPE_SPECIFIC_KEYWORDS = frozenset(
    {
        "type",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "pattern",
        "items",
        "prefixItems",
        "minItems",
        "maxItems",
        "uniqueItems",
        "properties",
        "required",
        "additionalProperties",
        "propertyNames",
        "minProperties",
        "maxProperties",
    }
)


class _RecursiveSchema(Exception):
    """A `$defs` entry refers to itself; such a schema is published unchanged."""


def compact_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same constraints in a form `jsonschema` checks faster: `$defs` inlined, `X | None` as types.

    Every SDK client re-validates each structured tool result against the tool's output schema
    with the pure-Python `jsonschema`; each `$ref` costs it a registry lookup and each nullable
    `anyOf` a failed branch for every null, which made validation most of a get_status call.
    """
    defs: dict[str, Any] = schema.get("$defs", {})

    def walk(node: Any, inlining: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [walk(item, inlining) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if (
            isinstance(ref, str)
            and ref.startswith("#/$defs/")
            and set(node) - {"$ref"} <= _ANNOTATION_KEYWORDS
        ):
            name = ref.removeprefix("#/$defs/")
            if name in inlining:
                raise _RecursiveSchema(name)
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            return walk({**defs[name], **siblings}, inlining | {name})
        compact = {k: walk(v, inlining) for k, v in node.items() if k != "$defs"}
        return _nullable_as_type_list(compact)

    try:
        result: dict[str, Any] = walk(schema, frozenset())
    except _RecursiveSchema:
        return schema
    return result


def _nullable_as_type_list(node: dict[str, Any]) -> dict[str, Any]:
    """`{"anyOf": [{"type": T, ...}, {"type": "null"}]}` as `{"type": [T, "null"], ...}`."""
    branches = node.get("anyOf")
    if not isinstance(branches, list) or len(branches) != 2 or {"type": "null"} not in branches:
        return node
    other = branches[0] if branches[1] == {"type": "null"} else branches[1]
    if not isinstance(other, dict) or not isinstance(other.get("type"), str):
        return node
    keys = set(other)
    if not keys <= _TYPE_SPECIFIC_KEYWORDS | _ANNOTATION_KEYWORDS | {"enum"}:
        return node
    merged = {k: v for k, v in node.items() if k != "anyOf"}
    for key, value in other.items():
        if key in _ANNOTATION_KEYWORDS and key in merged:
            continue  # the outer annotation (the field's own) wins
        merged[key] = value
    merged["type"] = [other["type"], "null"]
    if "enum" in other:
        merged["enum"] = [*other["enum"], None]
    return merged
