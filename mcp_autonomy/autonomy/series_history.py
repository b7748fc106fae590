"""The predictor's recent per-provider series points, kept in the store across restarts.

Each predictor tick turns a provider's telemetry into one point per series; the detectors learn
from those points, and a fresh detector says nothing until it has seen a warm-up's worth. The
points are what the engine measured, so they are recorded (a bounded tail per provider, in the
store's component state) and replayed into fresh detectors at start, or when another replica
takes over the loop: the baseline survives a restart instead of being learnt again from nothing.
Each provider's tail is its own JSON document (`provider_to_json`), so saving one provider is
bounded work whatever the number of providers; `to_json` is the older whole-history form.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["HISTORY_MAX_AGE_S", "HISTORY_POINTS", "SeriesHistory"]

logger = logging.getLogger(__name__)

HISTORY_POINTS: Final = 240
"""Points kept per provider: 4 h at the default 60 s tick, past the detectors' warm-up and the
settling of their thresholds (see `predictor.LIVE_WARMUP_POINTS`)."""
HISTORY_MAX_AGE_S: Final = 3 * 3600.0
"""Points older than this at start are not replayed: after a longer stop the provider's normal
may have moved, and a baseline learnt from it would alarm on the present."""
_FORMAT_VERSION: Final = 1

Point = tuple[float, tuple[float | None, ...]]
"""(wall-clock epoch seconds, one value per series in `SeriesHistory.series` order; None = unmeasured)."""


class SeriesHistory:
    """The newest `max_points` points per provider, oldest first, and their JSON form.

    Values are aligned with `series`; the JSON names the series, so a record written with
    another set or order of series still loads (unknown series are dropped, missing ones None).
    """

    def __init__(self, series: Iterable[str], *, max_points: int = HISTORY_POINTS) -> None:
        self.series = tuple(series)
        if not self.series:
            raise ValueError("series must name at least one series")
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        self.max_points = max_points
        self._points: dict[str, deque[Point]] = {}

    def add(self, provider: str, at_s: float, values: Mapping[str, float | None]) -> None:
        """Record one tick's point of `provider` (series missing from `values` are None)."""
        row = tuple(_finite_or_none(values.get(name)) for name in self.series)
        points = self._points.get(provider)
        if points is None:
            points = self._points[provider] = deque(maxlen=self.max_points)
        points.append((at_s, row))

    def providers(self) -> list[str]:
        return list(self._points)

    def points(self, provider: str) -> list[Point]:
        """`provider`'s points, oldest first."""
        return list(self._points.get(provider, ()))

    def series_points(self, provider: str, series: str) -> tuple[list[float], list[float]]:
        """(times, values) of one series of `provider`, unmeasured points left out."""
        index = self.series.index(series)
        times: list[float] = []
        values: list[float] = []
        for at_s, row in self._points.get(provider, ()):
            value = row[index]
            if value is not None:
                times.append(at_s)
                values.append(value)
        return times, values

    def __len__(self) -> int:
        return sum(len(points) for points in self._points.values())

    def to_json(self) -> dict[str, Any]:
        """Every provider's points in one document (the form stored before per-provider keys)."""
        return {
            "version": _FORMAT_VERSION,
            "series": list(self.series),
            "providers": {provider: self._rows(provider) for provider in self._points},
        }

    def provider_to_json(self, provider: str) -> dict[str, Any]:
        """`provider`'s points alone (what `add_provider_json` reads back)."""
        return {"version": _FORMAT_VERSION, "series": list(self.series), "points": self._rows(provider)}

    def _rows(self, provider: str) -> list[list[float | None]]:
        return [[at_s, *row] for at_s, row in self._points.get(provider, ())]

    def add_provider_json(self, provider: str, raw: object, *, since_s: float) -> int:
        """Add `provider`'s points stored as `raw` (from `provider_to_json`) at or after `since_s`;
        returns how many. An unreadable record adds nothing (logged): that provider's detectors
        warm up from live points, as on a first start."""
        try:
            if not isinstance(raw, dict) or raw.get("version") != _FORMAT_VERSION:
                raise ValueError(f"unknown history format {type(raw).__name__}")
            points = _parse_rows(raw["points"], [str(name) for name in raw["series"]], since_s)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            logger.warning("ignoring the recorded series history of %s: %s", provider, exc)
            return 0
        for at_s, values in points:
            self.add(provider, at_s, values)
        return len(points)

    @classmethod
    def from_json(
        cls, raw: object, series: Iterable[str], *, max_points: int = HISTORY_POINTS, since_s: float
    ) -> SeriesHistory:
        """The history stored as `raw` (from `to_json`), keeping points at or after `since_s`.

        A missing or unreadable record gives an empty history (logged): the detectors then warm
        up from live points, as on a first start.
        """
        history = cls(series, max_points=max_points)
        if raw is None:
            return history
        try:
            if not isinstance(raw, dict) or raw.get("version") != _FORMAT_VERSION:
                raise ValueError(f"unknown history format {type(raw).__name__}")
            stored_series = [str(name) for name in raw["series"]]
            parsed = {
                str(provider): _parse_rows(rows, stored_series, since_s)
                for provider, rows in dict(raw["providers"]).items()
            }
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            logger.warning("ignoring the recorded series history: %s", exc)
            return history
        for provider, points in parsed.items():
            for at_s, values in points:
                history.add(provider, at_s, values)
        return history


def _parse_rows(
    rows: Iterable[Any], stored_series: list[str], since_s: float
) -> list[tuple[float, dict[str, float | None]]]:
    """Stored rows `[at_s, value per stored series...]` at or after `since_s`, values by series
    name; raises on any malformed row (a record is read whole or not at all)."""
    points: list[tuple[float, dict[str, float | None]]] = []
    for row in rows:
        at_s = float(row[0])
        if not math.isfinite(at_s) or at_s < since_s:
            continue
        values = dict(zip(stored_series, row[1:], strict=True))
        points.append((at_s, {k: None if v is None else float(v) for k, v in values.items()}))
    return points


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)
