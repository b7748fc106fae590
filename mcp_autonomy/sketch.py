"""A mergeable latency histogram with a relative-error guarantee (DDSketch-style log buckets).

Bin `i` holds the values in (gamma^(i-1), gamma^i] with gamma = (1 + a) / (1 - a); a quantile is
reported as the bin's midpoint 2 gamma^i / (gamma + 1), which is within `a` (relative) of every
value in the bin, so of the exact quantile too (Masson et al., "DDSketch", VLDB 2019). Unlike
t-digest, whose bound is on rank, the bound is on the value, and two sketches merge exactly by
adding their bin counts: buckets of time and replicas of a cluster combine without losing the
guarantee. Subtraction is exact as well (counts are integers), which keeps window totals O(1).

Counts live in one dense numpy array over the range of bins seen (a latency distribution spans a
few decades at most: ~115 bins per decade at a = 1 %).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["MIN_TRACKED_MS", "RELATIVE_ACCURACY", "LatencySketch"]

RELATIVE_ACCURACY: Final = 0.01
"""Every reported quantile is within 1 % of the exact one (the issue's target)."""
MIN_TRACKED_MS: Final = 1e-3
"""Values at or below one microsecond are counted as zero: no provider call is that fast."""
_GAMMA: Final = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_INV_LOG_GAMMA: Final = 1.0 / math.log(_GAMMA)
_MIDPOINT: Final = 2.0 / (_GAMMA + 1.0)
_COUNT_DTYPE: Final = np.int64
_COMPACT_DTYPE: Final = np.uint32


def bin_of(value_ms: float) -> int:
    """The bin index of one value above `MIN_TRACKED_MS`."""
    return math.ceil(math.log(value_ms) * _INV_LOG_GAMMA)


class LatencySketch:
    """Counts of latencies in log-spaced bins; `quantiles` is within `RELATIVE_ACCURACY` of exact.

    The quantile at q is the value of rank floor(q x (n - 1)) in sorted order (numpy's
    `method="lower"`), within the relative accuracy.
    """

    __slots__ = ("_counts", "_dtype", "_offset", "_quantile_cache", "count", "zero_count")

    def __init__(self, *, compact: bool = False) -> None:
        # Compact sketches (one time bucket's) count in 4 bytes a bin: 4 billion calls a bucket.
        self._dtype: type[np.integer] = _COMPACT_DTYPE if compact else _COUNT_DTYPE
        self._offset = 0
        self._counts: npt.NDArray[np.integer] = np.zeros(0, dtype=self._dtype)
        self.count = 0
        """Values held (zeros included)."""
        self.zero_count = 0
        """Values at or below `MIN_TRACKED_MS`."""
        # The last quantiles asked and their answer, dropped by every change: a sketch read more
        # often than it changes (a status page polled between flushes) answers at once.
        self._quantile_cache: tuple[tuple[float, ...], list[float] | None] | None = None

    @classmethod
    def of(cls, values_ms: Iterable[float] | npt.NDArray[np.floating]) -> LatencySketch:
        """A sketch of these values."""
        sketch = cls()
        sketch.add_many(np.asarray(values_ms if isinstance(values_ms, np.ndarray) else list(values_ms)))
        return sketch

    @property
    def nbytes(self) -> int:
        """Bytes held by the bin counts."""
        return int(self._counts.nbytes)

    def _ensure(self, low: int, high: int) -> None:
        """Widen the bin range to hold bins [low, high]."""
        size = self._counts.size
        if size and low >= self._offset and high < self._offset + size:
            return
        new_low = low if not size else min(low, self._offset)
        new_high = high if not size else max(high, self._offset + size - 1)
        grown = np.zeros(new_high - new_low + 1, dtype=self._dtype)
        if size:
            start = self._offset - new_low
            grown[start : start + size] = self._counts
        self._counts = grown
        self._offset = new_low

    def add(self, value_ms: float, count: int = 1) -> None:
        """Count one value (`count` times)."""
        self._quantile_cache = None
        self.count += count
        if value_ms <= MIN_TRACKED_MS:
            self.zero_count += count
            return
        index = bin_of(value_ms)
        self._ensure(index, index)
        self._counts[index - self._offset] += count

    def add_many(self, values_ms: npt.NDArray[np.floating]) -> None:
        """Count many values at once (vectorised: ~10 ns a value)."""
        if values_ms.size == 0:
            return
        self._quantile_cache = None
        values = values_ms.astype(np.float64, copy=False)
        tracked = values[values > MIN_TRACKED_MS]
        self.count += int(values.size)
        self.zero_count += int(values.size - tracked.size)
        if not tracked.size:
            return
        indices = np.ceil(np.log(tracked) * _INV_LOG_GAMMA).astype(np.int64)
        low, high = int(indices.min()), int(indices.max())
        self._ensure(low, high)
        start = low - self._offset
        binned = np.bincount(indices - low, minlength=high - low + 1).astype(self._dtype, copy=False)
        self._counts[start : start + high - low + 1] += binned

    def merge(self, other: LatencySketch) -> None:
        """Add another sketch's counts to this one (exact)."""
        self._quantile_cache = None
        self.count += other.count
        self.zero_count += other.zero_count
        size = other._counts.size
        if not size:
            return
        self._ensure(other._offset, other._offset + size - 1)
        start = other._offset - self._offset
        self._counts[start : start + size] += other._counts.astype(self._dtype, copy=False)

    @classmethod
    def merged(cls, sketches: Iterable[LatencySketch]) -> LatencySketch:
        """One sketch holding all of these (one allocation for the union of their bin ranges)."""
        parts = [s for s in sketches if s.count]
        result = cls()
        ranged = [s for s in parts if s._counts.size]
        if ranged:
            low = min(s._offset for s in ranged)
            high = max(s._offset + s._counts.size for s in ranged)
            result._offset = low
            result._counts = np.zeros(high - low, dtype=_COUNT_DTYPE)
            for part in ranged:
                start = part._offset - low
                result._counts[start : start + part._counts.size] += part._counts
        result.count = sum(s.count for s in parts)
        result.zero_count = sum(s.zero_count for s in parts)
        return result

    def subtract(self, other: LatencySketch) -> None:
        """Remove counts another sketch added earlier (exact; `other` must be a part of this one)."""
        self._quantile_cache = None
        self.count -= other.count
        self.zero_count -= other.zero_count
        size = other._counts.size
        if not size:
            return
        start = other._offset - self._offset
        self._counts[start : start + size] -= other._counts.astype(self._dtype, copy=False)
        if self.count == 0:
            self.clear()

    def clear(self) -> None:
        """Forget every value (and the bin range)."""
        self._quantile_cache = None
        self._offset = 0
        self._counts = np.zeros(0, dtype=self._dtype)
        self.count = 0
        self.zero_count = 0

    def quantiles(self, qs: Sequence[float]) -> list[float] | None:
        """The values at quantiles `qs` (each in [0, 1]); None when the sketch is empty."""
        cached = self._quantile_cache
        if cached is not None and cached[0] == tuple(qs):
            return None if cached[1] is None else list(cached[1])
        found = self._quantiles(qs)
        self._quantile_cache = (tuple(qs), found)
        return None if found is None else list(found)

    def _quantiles(self, qs: Sequence[float]) -> list[float] | None:
        if self.count <= 0:
            return None
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile must be in [0, 1], got {q!r}")
        last = self.count - 1
        ranks = [math.floor(q * last) for q in qs]
        if not self._counts.size:
            return [0.0] * len(ranks)
        # One pass: the first bin whose cumulative count passes each rank.
        cumulative = np.cumsum(self._counts)
        positions = np.searchsorted(cumulative, np.array(ranks) - self.zero_count, side="right").tolist()
        return [
            0.0 if rank < self.zero_count else _MIDPOINT * _GAMMA ** (self._offset + position)
            for rank, position in zip(ranks, positions, strict=True)
        ]

    def values(self) -> npt.NDArray[np.float64]:
        """Every value as its bin's midpoint (within the relative accuracy), in ascending order."""
        if self._counts.size == 0:
            return np.zeros(self.zero_count, dtype=np.float64)
        mids = _MIDPOINT * np.power(_GAMMA, np.arange(self._offset, self._offset + self._counts.size))
        body = np.repeat(mids, self._counts)
        return np.concatenate([np.zeros(self.zero_count), body]) if self.zero_count else body

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form (for another replica to `merge` after `from_dict`)."""
        nonzero = np.flatnonzero(self._counts)
        return {
            "relative_accuracy": RELATIVE_ACCURACY,
            "zero_count": self.zero_count,
            "bins": {str(int(self._offset + i)): int(self._counts[i]) for i in nonzero},
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LatencySketch:
        """The sketch `to_dict` described; refuses one built with another accuracy."""
        accuracy = data.get("relative_accuracy")
        if accuracy != RELATIVE_ACCURACY:
            raise ValueError(f"relative_accuracy must be {RELATIVE_ACCURACY}, got {accuracy!r}")
        sketch = cls()
        zero = data.get("zero_count", 0)
        bins = data.get("bins", {})
        if not isinstance(zero, int) or zero < 0 or not isinstance(bins, dict):
            raise ValueError("zero_count must be an integer >= 0 and bins a mapping of bin -> count")
        sketch.zero_count = zero
        sketch.count = zero
        for key, value in bins.items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"bins[{key}] must be an integer count >= 0, got {value!r}")
            index = int(key)
            sketch._ensure(index, index)
            sketch._counts[index - sketch._offset] += value
            sketch.count += value
        return sketch
