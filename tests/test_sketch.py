"""The latency sketch: quantiles within 1 % of the exact ones, exact merges and subtractions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_autonomy.sketch import RELATIVE_ACCURACY, LatencySketch

latencies = st.lists(st.floats(min_value=0.0, max_value=120_000.0), min_size=1, max_size=400)
QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
# The bound itself plus float rounding in log(): a value on a bin edge may land one bin over.
TOLERANCE = RELATIVE_ACCURACY * (1 + 1e-6)


def assert_within_accuracy(sketch: LatencySketch, values: list[float]) -> None:
    found = sketch.quantiles(QUANTILES)
    assert found is not None
    for q, value in zip(QUANTILES, found, strict=True):
        exact = float(np.percentile(values, q * 100, method="lower"))
        if exact <= 1e-3:
            assert value == 0.0
        else:
            assert abs(value - exact) <= TOLERANCE * exact, (q, value, exact)


@settings(max_examples=150, deadline=None)
@given(latencies)
def test_quantiles_are_within_the_relative_accuracy_of_the_exact_ones(values: list[float]) -> None:
    sketch = LatencySketch.of(values)
    assert sketch.count == len(values)
    assert_within_accuracy(sketch, values)


@settings(max_examples=100, deadline=None)
@given(latencies, latencies)
def test_a_merge_equals_the_sketch_of_the_union_and_subtract_undoes_it(
    a: list[float], b: list[float]
) -> None:
    merged = LatencySketch.of(a)
    merged.merge(LatencySketch.of(b))
    union = LatencySketch.of(a + b)
    assert merged.quantiles(QUANTILES) == union.quantiles(QUANTILES)
    assert merged.count == len(a) + len(b)
    assert_within_accuracy(merged, a + b)
    merged.subtract(LatencySketch.of(b))
    assert merged.quantiles(QUANTILES) == LatencySketch.of(a).quantiles(QUANTILES)


@settings(max_examples=60, deadline=None)
@given(latencies)
def test_one_at_a_time_equals_all_at_once_and_values_round_trip(values: list[float]) -> None:
    single = LatencySketch()
    for value in values:
        single.add(value)
    assert single.quantiles(QUANTILES) == LatencySketch.of(values).quantiles(QUANTILES)
    rebuilt = single.values()
    assert len(rebuilt) == len(values)
    for got, exact in zip(rebuilt, sorted(values), strict=True):
        assert got == 0.0 if exact <= 1e-3 else abs(got - exact) <= TOLERANCE * exact
    assert LatencySketch.from_dict(single.to_dict()).quantiles(QUANTILES) == single.quantiles(QUANTILES)


def test_an_empty_sketch_has_no_quantiles_and_bad_input_is_refused() -> None:
    assert LatencySketch().quantiles([0.5]) is None
    with pytest.raises(ValueError, match="quantile"):
        LatencySketch.of([1.0]).quantiles([1.5])
    with pytest.raises(ValueError, match="relative_accuracy"):
        LatencySketch.from_dict({"relative_accuracy": 0.05, "bins": {}})


@settings(max_examples=60, deadline=None)
@given(st.lists(latencies, max_size=6))
def test_merged_equals_merging_one_by_one(parts: list[list[float]]) -> None:
    one_by_one = LatencySketch()
    for part in parts:
        one_by_one.merge(LatencySketch.of(part))
    merged = LatencySketch.merged(LatencySketch.of(part) for part in parts)
    assert merged.count == one_by_one.count == sum(len(p) for p in parts)
    assert merged.quantiles(QUANTILES) == one_by_one.quantiles(QUANTILES)
