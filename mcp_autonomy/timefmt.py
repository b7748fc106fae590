"""Times on every surface as ISO 8601 UTC strings, as epoch seconds inside the engine.

`Timestamp` annotates a model field that holds epoch seconds as a float: engine arithmetic,
`model_dump()` and the stores' SQL columns keep the float, while JSON (`model_dump(mode="json")`,
`model_dump_json()`, tool results, resources, REST) carries `2026-12-07T10:00:00.123Z` and JSON
schemas (MCP output schemas, OpenAPI) say `{"type": "string", "format": "date-time"}`. It
validates from either form, so a record stored as JSON before times were strings (a float) and
one stored after (an ISO string) both load.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from mcp_autonomy.clock import iso

__all__ = ["DATE_TIME_SCHEMA", "Timestamp", "TimestampOrNone", "epoch_of_iso", "iso_or_none"]

DATE_TIME_SCHEMA: dict[str, Any] = {"type": "string", "format": "date-time"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_of_iso(text: str) -> float:
    """An ISO 8601 date-time as epoch seconds (UTC when it gives no offset)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # Subtracting, not `.timestamp()`: exact to the microsecond, and defined before 1970 too.
    return (moment - _EPOCH).total_seconds()


def iso_or_none(epoch_s: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds; None for None and for no representable time."""
    if epoch_s is None or not math.isfinite(epoch_s):
        return None
    try:
        return iso(epoch_s)
    except (OverflowError, OSError, ValueError):  # beyond what datetime represents
        return None


def _epoch_s(value: Any) -> Any:
    """Epoch seconds from an ISO string or a datetime; anything else goes on to float validation."""
    if isinstance(value, str):
        try:
            return epoch_of_iso(value)
        except ValueError:
            raise ValueError("expected an ISO 8601 date-time or epoch seconds") from None
    if isinstance(value, datetime):
        return epoch_of_iso(value.isoformat())
    return value


Timestamp = Annotated[
    float,
    BeforeValidator(_epoch_s),
    PlainSerializer(iso_or_none, return_type=str, when_used="json"),
    # One schema for both modes: responses carry strings, and an input model never takes a
    # Timestamp (REST's `since` is its own ISO parameter), so the schema names stay unsuffixed.
    WithJsonSchema(DATE_TIME_SCHEMA),
]
"""Epoch seconds in Python, an ISO 8601 UTC string (`2026-12-07T10:00:00.123Z`) in JSON."""

TimestampOrNone = Timestamp | None
"""A `Timestamp` that is null until measured."""
