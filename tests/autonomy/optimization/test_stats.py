"""The statistical tests against published and hand-computed reference values, plus invariants."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_autonomy.autonomy.optimization.stats import (
    FISHER_EXACT,
    MANN_WHITNEY,
    TWO_PROPORTION_Z,
    mann_whitney_u,
    two_proportion_test,
)

# -- Mann-Whitney: reference values ------------------------------------------------------------

# SciPy's documented example (Conover's data): ages of males and females; U for males = 17.
MALES = [19, 22, 16, 29, 24]
FEMALES = [20, 11, 17, 12]


def test_exact_matches_scipy_documented_example() -> None:
    result = mann_whitney_u(FEMALES, MALES)  # canary = males
    assert result.statistic == 17
    assert result.method == MANN_WHITNEY
    assert result.p_value == pytest.approx(1 / 9, abs=1e-12)  # scipy: 0.1111111111111111
    assert result.effect == pytest.approx(17 / 20)


def test_asymptotic_matches_scipy_documented_example() -> None:
    result = mann_whitney_u(FEMALES, MALES, method="asymptotic")
    assert result.p_value == pytest.approx(0.11134688653314041, rel=1e-9)  # scipy docs


def test_exact_matches_hollander_wolfe_example() -> None:
    # R's wilcox.test documentation (Hollander & Wolfe, p. 69): W = 35, p-value = 0.1272.
    x = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46]
    y = [1.15, 0.88, 0.90, 0.74, 1.21]
    result = mann_whitney_u(y, x, "canary_greater")
    assert result.statistic == 35
    assert result.p_value == pytest.approx(0.1272, abs=5e-5)


def test_exact_separated_samples_match_textbook_tables() -> None:
    # Completely separated arms: one ordering in C(n1 + n2, n1).
    assert mann_whitney_u([1, 2, 3], [4, 5, 6], "canary_greater").p_value == pytest.approx(1 / 20)
    assert mann_whitney_u([1, 2, 3, 4], [5, 6, 7, 8], "canary_greater").p_value == pytest.approx(1 / 70)
    assert mann_whitney_u([1, 2, 3, 4], [5, 6, 7, 8]).p_value == pytest.approx(2 / 70)
    assert mann_whitney_u([1, 2, 3, 4], [5, 6, 7, 8], "canary_less").p_value == pytest.approx(1.0)


@pytest.mark.parametrize(("n_base", "n_cand"), [(3, 4), (5, 5), (6, 2), (1, 7)])
def test_exact_distribution_matches_enumeration(n_base: int, n_cand: int) -> None:
    """Enumerate every assignment of ranks to the canary: the exact p-values must agree."""
    total = n_base + n_cand
    us = []
    for canary_ranks in itertools.combinations(range(1, total + 1), n_cand):
        us.append(sum(canary_ranks) - n_cand * (n_cand + 1) // 2)
    rng = np.random.default_rng(n_base * 10 + n_cand)
    values = rng.permutation(total).astype(float)
    base, cand = values[:n_base], values[n_base:]
    result = mann_whitney_u(base, cand, "canary_greater")
    u = round(result.statistic)
    expected = Fraction(sum(1 for v in us if v >= u), len(us))
    assert result.p_value == pytest.approx(float(expected), abs=1e-12)
    expected_less = Fraction(sum(1 for v in us if v <= u), len(us))
    assert mann_whitney_u(base, cand, "canary_less").p_value == pytest.approx(float(expected_less), abs=1e-12)


def test_tie_corrected_normal_approximation_by_hand() -> None:
    # baseline 1 2 2 3, canary 2 3 3 4. Sorted: 1b 2b 2b 2c 3b 3c 3c 4c.
    # Mid-ranks: 1 -> 1, the three 2s -> 3, the three 3s -> 6, 4 -> 8.
    # Canary rank sum = 3 + 6 + 6 + 8 = 23; U = 23 - 4 * 5 / 2 = 13; mean = 8.
    # Ties: two groups of 3 -> sum(t^3 - t) = 48.
    # Var = 16 / 12 x (9 - 48 / 56) = 10.857142857...; z = (13 - 8 - 0.5) / sqrt(Var) = 1.365698...
    z = 4.5 / math.sqrt(16 / 12 * (9 - 48 / 56))
    assert z == pytest.approx(1.365698, abs=1e-6)
    expected = 0.5 * math.erfc(z / math.sqrt(2))  # Phi table: 1 - Phi(1.3657) = 0.0860
    result = mann_whitney_u([1, 2, 2, 3], [2, 3, 3, 4], "canary_greater")
    assert result.statistic == 13
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    assert result.p_value == pytest.approx(0.0860, abs=5e-5)
    assert mann_whitney_u([1, 2, 2, 3], [2, 3, 3, 4]).p_value == pytest.approx(2 * expected, rel=1e-12)


def test_large_sample_normal_approximation_by_hand() -> None:
    # 1..30 against 31..60: U = 900, mean 450, Var = 900 x 61 / 12; one-sided z = 449.5 / sqrt(Var).
    z = 449.5 / math.sqrt(900 * 61 / 12)
    result = mann_whitney_u(np.arange(1, 31), np.arange(31, 61), "canary_greater")
    assert result.p_value == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-12)
    assert result.p_value < 1e-10


def test_exact_with_ties_is_refused() -> None:
    with pytest.raises(ValueError, match="without ties"):
        mann_whitney_u([1, 2, 2], [2, 3], method="exact")


def test_degenerate_samples_give_no_evidence() -> None:
    assert mann_whitney_u([], [1.0, 2.0]).p_value == 1.0
    assert mann_whitney_u([5.0] * 40, [5.0] * 40, "canary_greater").p_value == 1.0


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="alternative must be one of"):
        mann_whitney_u([1.0], [2.0], "greater")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        mann_whitney_u([1.0, math.nan], [2.0])


def test_describe_is_one_sentence_with_the_figures() -> None:
    rng = np.random.default_rng(1)
    text = mann_whitney_u(rng.normal(100, 10, 400), rng.normal(90, 10, 410), "canary_less").describe()
    assert text.startswith("canary latency shifted lower")
    assert "Mann-Whitney U=" in text and "n=400/410" in text and "canary_less" in text
    assert "\n" not in text


# -- Mann-Whitney: properties ------------------------------------------------------------------

samples = st.lists(st.integers(0, 30).map(float), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(samples, samples, st.sampled_from(["two-sided", "canary_greater", "canary_less"]))
def test_p_value_is_a_probability(base: list[float], cand: list[float], alternative: str) -> None:
    result = mann_whitney_u(base, cand, alternative)  # type: ignore[arg-type]
    assert 0.0 <= result.p_value <= 1.0
    assert 0.0 <= result.effect <= 1.0


@settings(max_examples=60, deadline=None)
@given(samples, samples)
def test_swapping_the_arms_mirrors_the_test(base: list[float], cand: list[float]) -> None:
    forward = mann_whitney_u(base, cand, "canary_greater")
    backward = mann_whitney_u(cand, base, "canary_less")
    assert forward.p_value == pytest.approx(backward.p_value, rel=1e-9, abs=1e-12)
    assert forward.effect == pytest.approx(1.0 - backward.effect)
    assert mann_whitney_u(base, cand).p_value == pytest.approx(mann_whitney_u(cand, base).p_value, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(samples)
def test_identical_samples_show_no_difference(values: list[float]) -> None:
    result = mann_whitney_u(values, list(values))
    assert result.p_value == pytest.approx(1.0)
    assert result.effect == pytest.approx(0.5)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(50, 500))
def test_large_shift_is_detected(seed: int, shift_ms: float) -> None:
    rng = np.random.default_rng(seed)
    base = rng.lognormal(5, 0.3, 200)
    result = mann_whitney_u(base, base + shift_ms + rng.uniform(0, 1, 200), "canary_greater")
    assert result.p_value < 1e-6
    assert mann_whitney_u(base, base + shift_ms, "canary_less").p_value > 0.99


def test_one_sided_halves_two_sided_away_from_the_null() -> None:
    rng = np.random.default_rng(3)
    base, cand = rng.normal(0, 1, 300), rng.normal(0.3, 1, 300)
    one = mann_whitney_u(base, cand, "canary_greater").p_value
    two = mann_whitney_u(base, cand).p_value
    assert two == pytest.approx(2 * one, rel=1e-9)


# -- proportions: reference values -------------------------------------------------------------


def test_z_test_matches_r_prop_test() -> None:
    # R: prop.test(c(50, 60), c(100, 100), correct = FALSE): X-squared = 2.0202, p-value = 0.1552.
    result = two_proportion_test(50, 100, 60, 100)
    assert result.method == TWO_PROPORTION_Z
    assert result.statistic**2 == pytest.approx(2.0202, abs=1e-4)
    assert result.p_value == pytest.approx(0.1552, abs=5e-5)
    assert result.effect == pytest.approx(0.1)
    # One-sided halves it: 1 - Phi(1.4213) = 0.0776.
    assert two_proportion_test(50, 100, 60, 100, "canary_greater").p_value == pytest.approx(0.0776, abs=5e-5)


def test_z_test_at_the_textbook_critical_value() -> None:
    # 1000 calls per arm, 900 vs 927 successes: pooled 0.9135, SE = sqrt(0.9135 x 0.0865 x 0.002).
    se = math.sqrt(0.9135 * 0.0865 * 0.002)
    z = 0.027 / se
    result = two_proportion_test(900, 1000, 927, 1000, "canary_greater")
    assert result.statistic == pytest.approx(z)
    assert z == pytest.approx(2.1478, abs=1e-4)
    assert result.p_value == pytest.approx(0.0159, abs=2e-4)  # 1 - Phi(2.15) = 0.0158


def test_fisher_matches_the_tea_tasting_table() -> None:
    # Fisher's lady tasting tea, 3 of 4 vs 1 of 4: one-sided p = 17/70, two-sided 34/70
    # (R: fisher.test(matrix(c(3, 1, 1, 3), 2)) -> p-value = 0.4857).
    result = two_proportion_test(3, 4, 1, 4, "canary_less")
    assert result.method == FISHER_EXACT
    assert result.p_value == pytest.approx(17 / 70)
    assert two_proportion_test(3, 4, 1, 4).p_value == pytest.approx(34 / 70)
    assert two_proportion_test(3, 4, 1, 4, "canary_greater").p_value == pytest.approx(69 / 70)


def test_fisher_is_used_for_near_perfect_success_rates() -> None:
    # 100 % vs 97 % of 100: 3 failures in all. P(all 3 in the canary) = C(100, 3) / C(200, 3).
    result = two_proportion_test(100, 100, 97, 100, "canary_less")
    assert result.method == FISHER_EXACT
    assert result.p_value == pytest.approx(math.comb(100, 3) / math.comb(200, 3))


def test_undefined_proportions_give_p_one() -> None:
    assert two_proportion_test(0, 0, 5, 10).p_value == 1.0
    assert two_proportion_test(10, 10, 20, 20).p_value == 1.0  # all successes in both arms
    assert two_proportion_test(0, 10, 0, 20, "canary_less").p_value == 1.0  # all failures


def test_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        two_proportion_test(11, 10, 5, 10)
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        two_proportion_test(-1, 10, 5, 10)


def test_proportion_describe() -> None:
    text = two_proportion_test(990, 1000, 960, 1000, "canary_less").describe()
    assert text.startswith("canary success rate lower (96.00% vs 99.00% baseline)")
    assert "n=1000/1000" in text


# -- proportions: properties -------------------------------------------------------------------


@st.composite
def arms(draw: st.DrawFn) -> tuple[int, int, int, int]:
    n_base = draw(st.integers(0, 2000))
    n_cand = draw(st.integers(0, 2000))
    return draw(st.integers(0, n_base)), n_base, draw(st.integers(0, n_cand)), n_cand


@settings(max_examples=80, deadline=None)
@given(arms(), st.sampled_from(["two-sided", "canary_greater", "canary_less"]))
def test_proportion_p_value_is_a_probability(counts: tuple[int, int, int, int], alternative: str) -> None:
    assert 0.0 <= two_proportion_test(*counts, alternative).p_value <= 1.0  # type: ignore[arg-type]


@settings(max_examples=80, deadline=None)
@given(arms())
def test_proportion_test_is_symmetric(counts: tuple[int, int, int, int]) -> None:
    xb, nb, xc, nc = counts
    forward = two_proportion_test(xb, nb, xc, nc, "canary_greater")
    backward = two_proportion_test(xc, nc, xb, nb, "canary_less")
    assert forward.p_value == pytest.approx(backward.p_value, rel=1e-9, abs=1e-12)
    assert forward.effect == pytest.approx(-backward.effect)
    assert two_proportion_test(*counts).p_value == pytest.approx(
        two_proportion_test(xc, nc, xb, nb).p_value, rel=1e-9, abs=1e-12
    )


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 2000), st.data())
def test_equal_proportions_show_no_difference(n: int, data: st.DataObject) -> None:
    successes = data.draw(st.integers(0, n))
    assert two_proportion_test(successes, n, successes, n).p_value == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.integers(500, 5000))
def test_large_drop_in_success_is_detected(n: int) -> None:
    result = two_proportion_test(int(n * 0.99), n, int(n * 0.90), n, "canary_less")
    assert result.p_value < 1e-6
