"""`Timestamp`: a float in Python, an ISO 8601 UTC string in JSON and in JSON schemas."""

from __future__ import annotations

import math

import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from mcp_autonomy.timefmt import Timestamp, TimestampOrNone, epoch_of_iso, iso_or_none

ISO = "2026-12-07T10:00:00.123Z"
EPOCH_S = 1796637600.123


class Record(BaseModel):
    at: Timestamp = Field(description="when")
    until: TimestampOrNone = None
    history: list[Timestamp] = Field(default_factory=list)


def test_a_float_stays_a_float_in_python_and_is_iso_in_json() -> None:
    record = Record(at=EPOCH_S, until=None, history=[0])
    assert isinstance(record.at, float) and record.at == EPOCH_S
    assert record.model_dump() == {"at": EPOCH_S, "until": None, "history": [0.0]}
    assert record.model_dump(mode="json") == {
        "at": ISO,
        "until": None,
        "history": ["1970-01-01T00:00:00.000Z"],
    }
    assert record.model_dump_json() == f'{{"at":"{ISO}","until":null,"history":["1970-01-01T00:00:00.000Z"]}}'


def test_iso_strings_and_floats_both_validate_to_epoch_seconds() -> None:
    old_row = Record.model_validate_json(f'{{"at": {EPOCH_S}}}')
    new_row = Record.model_validate_json(f'{{"at": "{ISO}", "until": "2026-12-07T12:00:00+02:00"}}')
    assert old_row.at == new_row.at == pytest.approx(EPOCH_S, abs=1e-6)
    assert new_row.until == pytest.approx(EPOCH_S - 0.123, abs=1e-6)
    assert Record.model_validate(new_row.model_dump(mode="json")) == new_row
    assert Record(at="2026-12-07T10:00:00").at == pytest.approx(EPOCH_S - 0.123)  # no offset: UTC


def test_a_malformed_time_is_refused_without_echoing_python_internals() -> None:
    with pytest.raises(ValidationError, match="expected an ISO 8601 date-time or epoch seconds"):
        Record(at="yesterday")


@pytest.mark.parametrize("mode", ["serialization", "validation"])
def test_the_json_schema_says_date_time_string(mode: str) -> None:
    schema = Record.model_json_schema(mode=mode)  # type: ignore[arg-type]
    assert schema["properties"]["at"] == {
        "type": "string",
        "format": "date-time",
        "description": "when",
        "title": "At",
    }
    assert schema["properties"]["until"]["anyOf"] == [
        {"type": "string", "format": "date-time"},
        {"type": "null"},
    ]
    assert schema["properties"]["history"]["items"] == {"type": "string", "format": "date-time"}
    assert TypeAdapter(Timestamp).json_schema(mode=mode) == {"type": "string", "format": "date-time"}  # type: ignore[arg-type]


def test_times_that_no_date_can_show_are_null_in_json() -> None:
    assert iso_or_none(None) is None and iso_or_none(math.inf) is None and iso_or_none(math.nan) is None
    assert iso_or_none(1e300) is None
    assert Record(at=-math.inf).model_dump(mode="json")["at"] is None


def test_epoch_of_iso_is_exact_to_the_microsecond() -> None:
    assert epoch_of_iso("1970-01-01T00:00:00.000001Z") == 1e-6
    assert epoch_of_iso("1969-12-31T23:59:59Z") == -1.0
    assert iso_or_none(epoch_of_iso(ISO)) == ISO
