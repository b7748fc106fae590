"""The predictor's recorded series points (replayed at start) and the volume-collapse mapping."""

from __future__ import annotations

import json

import pytest

from mcp_autonomy.autonomy.detection import PredictionBuilder
from mcp_autonomy.autonomy.detection.base import AnomalyKind, DetectorAlert
from mcp_autonomy.autonomy.series_history import SeriesHistory
from mcp_autonomy.prediction_types import PredictionType

T0 = 1_767_225_600.0


def test_history_keeps_the_newest_points_and_round_trips_through_json() -> None:
    history = SeriesHistory(("error_rate", "latency_p95_ms"), max_points=3)
    for i in range(5):
        history.add(
            "mpesa", T0 + 60 * i, {"error_rate": 0.01 * i, "latency_p95_ms": None if i == 3 else 400.0 + i}
        )
    assert [at for at, _ in history.points("mpesa")] == [T0 + 120, T0 + 180, T0 + 240]
    assert history.series_points("mpesa", "latency_p95_ms") == ([T0 + 120, T0 + 240], [402.0, 404.0])
    stored = json.loads(json.dumps(history.to_json()))
    loaded = SeriesHistory.from_json(stored, ("error_rate", "latency_p95_ms"), max_points=3, since_s=T0 + 150)
    assert [at for at, _ in loaded.points("mpesa")] == [T0 + 180, T0 + 240]  # older than since_s: dropped
    assert loaded.series_points("mpesa", "error_rate") == ([T0 + 180, T0 + 240], [0.03, 0.04])


def test_history_written_with_other_series_loads_by_name() -> None:
    old = SeriesHistory(("latency_p95_ms", "gone"))
    old.add("mpesa", T0, {"latency_p95_ms": 400.0, "gone": 1.0})
    loaded = SeriesHistory.from_json(old.to_json(), ("error_rate", "latency_p95_ms"), since_s=0.0)
    assert loaded.points("mpesa") == [(T0, (None, 400.0))]


def test_one_providers_points_round_trip_alone() -> None:
    history = SeriesHistory(("error_rate", "latency_p95_ms"))
    for i in range(3):
        history.add("mpesa", T0 + 60 * i, {"error_rate": 0.01 * i, "latency_p95_ms": 400.0 + i})
        history.add("airtel", T0 + 60 * i, {"error_rate": 0.5})
    stored = json.loads(json.dumps(history.provider_to_json("mpesa")))
    loaded = SeriesHistory(("latency_p95_ms", "error_rate"))  # another order: values go by name
    assert loaded.add_provider_json("mpesa", stored, since_s=T0 + 60) == 2
    assert loaded.providers() == ["mpesa"]
    assert loaded.series_points("mpesa", "latency_p95_ms") == ([T0 + 60, T0 + 120], [401.0, 402.0])
    assert (
        loaded.add_provider_json("airtel", {"version": 1, "series": ["a"], "points": [[T0, 1, 2]]}, since_s=0)
        == 0
    )
    assert loaded.points("airtel") == []  # an unreadable record: that provider starts empty, the others load


@pytest.mark.parametrize(
    "raw", [{"version": 99}, {"version": 1, "series": ["a"], "providers": {"p": [["x", 1]]}}, "junk"]
)
def test_unreadable_history_is_ignored(raw: object) -> None:
    assert len(SeriesHistory.from_json(raw, ("a",), since_s=0.0)) == 0


def _volume_alert(kind: AnomalyKind, value: float, expected: float) -> DetectorAlert:
    return DetectorAlert(
        timestamp_s=T0,
        kind=kind,
        direction=-1,
        score=0.8,
        value=value,
        expected=expected,
        scale=1.0,
        slope_per_s=0.0,
        indicators=(),
    )


def test_volume_dropping_to_almost_nothing_is_a_failure_at_its_first_point() -> None:
    builder = PredictionBuilder()
    collapse = builder.build("mpesa", "requests_per_min", _volume_alert(AnomalyKind.SPIKE, 0.0, 16.0))
    assert collapse is not None and collapse.type is PredictionType.FAILURE
    dip = builder.build("mpesa", "requests_per_min", _volume_alert(AnomalyKind.SPIKE, 8.0, 16.0))
    assert dip is not None and dip.type is PredictionType.PATTERN_ANOMALY
    shift = builder.build("mpesa", "requests_per_min", _volume_alert(AnomalyKind.LEVEL_SHIFT, 8.0, 16.0))
    assert shift is not None and shift.type is PredictionType.FAILURE


def test_a_small_move_of_regular_traffic_is_no_prediction() -> None:
    builder = PredictionBuilder()
    assert builder.build("mpesa", "requests_per_min", _volume_alert(AnomalyKind.SPIKE, 14.0, 16.0)) is None
    assert (
        builder.build("mpesa", "requests_per_min", _volume_alert(AnomalyKind.LEVEL_SHIFT, 13.0, 16.0)) is None
    )
