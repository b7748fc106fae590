"""The two statistical tests a canary is judged by, without scipy.

- `mann_whitney_u`: are the canary's latencies stochastically higher or lower than the baseline's?
  Rank-based, so a few huge outliers (a provider's 30 s stalls) cannot dominate it the way they
  dominate a t-test on means. Exact null distribution for small samples without ties, else the
  normal approximation with the tie correction and a continuity correction of 1/2 (the same
  figures as `scipy.stats.mannwhitneyu(method="asymptotic")`).
- `two_proportion_test`: is the canary's success (or retry, or timeout) share different? The pooled
  two-proportion z-test, or Fisher's exact test when an expected cell count is below 5 (Cochran's
  rule): payment success rates sit near 99 %, so with a few hundred calls per arm the failure
  cells are tiny and the z-test's p-values would be too small.

Both return a frozen `TestResult` whose `describe()` is one sentence for an optimization record.
Undefined cases (an empty arm, every value equal, a proportion of 0 or 1 in both arms) return
p = 1: no evidence of a difference. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, get_args

import numpy as np
import numpy.typing as npt

Alternative = Literal["two-sided", "canary_greater", "canary_less"]
"""The alternative hypothesis, always phrased as the canary relative to the baseline."""

ALTERNATIVES: Final[tuple[str, ...]] = get_args(Alternative)

MANN_WHITNEY: Final = "Mann-Whitney"
TWO_PROPORTION_Z: Final = "two-proportion z-test"
FISHER_EXACT: Final = "Fisher exact test"

EXACT_MAX_SAMPLES: Final = 20  # exact U distribution when both arms are this small and untied
CONTINUITY_CORRECTION: Final = 0.5  # U moves in steps of 1 (1/2 with ties)
FISHER_MIN_EXPECTED_COUNT: Final = 5.0  # Cochran's rule: below this the z-test is not to be trusted
_FISHER_RELATIVE_TOLERANCE: Final = 1e-7  # R's fisher.test: tables "as extreme" up to float noise

Samples = Sequence[float] | npt.NDArray[np.floating[Any]] | npt.NDArray[np.integer[Any]]


@dataclass(frozen=True, slots=True)
class TestResult:
    """One test's outcome: which test, its statistic and p-value, an effect size and the sample sizes.

    `effect` is the probability of superiority P(canary > baseline) + P(tie) / 2 for Mann-Whitney
    (0.5 = no shift; Vargha and Delaney call 0.56 / 0.64 / 0.71 small / medium / large), and the
    difference of proportions (canary - baseline) for the proportion tests. `statistic` is the
    canary's U for Mann-Whitney, z for the z-test and the canary's count for Fisher's test.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class, despite the name

    method: str
    statistic: float
    p_value: float
    effect: float
    n_baseline: int
    n_canary: int
    alternative: Alternative
    metric: str = "values"
    baseline_rate: float | None = None
    canary_rate: float | None = None

    def significant(self, alpha: float) -> bool:
        """True when the p-value is below `alpha`."""
        return self.p_value < alpha

    def describe(self) -> str:
        """One human sentence: what moved which way, the test, p and n."""
        sides = "two-sided" if self.alternative == "two-sided" else f"one-sided, {self.alternative}"
        tail = f"p={_format_p(self.p_value)} ({sides}), n={self.n_baseline}/{self.n_canary}"
        if self.method == MANN_WHITNEY:
            direction = _direction(self.effect - 0.5, tolerance=1e-9, moved="shifted ")
            return (
                f"canary {self.metric} {direction} (P(canary > baseline)={self.effect:.2f}): "
                f"{self.method} U={self.statistic:g}, {tail}"
            )
        direction = _direction(self.effect, tolerance=1e-12, moved="")
        rates = ""
        if self.canary_rate is not None and self.baseline_rate is not None:
            rates = f" ({self.canary_rate:.2%} vs {self.baseline_rate:.2%} baseline)"
        statistic = f"z={self.statistic:.2f}" if self.method == TWO_PROPORTION_Z else f"x={self.statistic:g}"
        return f"canary {self.metric} {direction}{rates}: {self.method} {statistic}, {tail}"


def _direction(delta: float, *, tolerance: float, moved: str) -> str:
    if delta > tolerance:
        return f"{moved}higher"
    if delta < -tolerance:
        return f"{moved}lower"
    return "unchanged"


def _format_p(p_value: float) -> str:
    return f"{p_value:.1e}" if 0 < p_value < 0.001 else f"{p_value:.3g}"


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z, accurate far into the tail."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _as_samples(name: str, values: Samples) -> npt.NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must hold finite numbers only (no NaN or infinity)")
    return array


# ---------------------------------------------------------------------------------------------
# Mann-Whitney U
# ---------------------------------------------------------------------------------------------


def mann_whitney_u(
    baseline: Samples,
    canary: Samples,
    alternative: Alternative = "two-sided",
    *,
    method: Literal["auto", "exact", "asymptotic"] = "auto",
    metric: str = "latency",
) -> TestResult:
    """Mann-Whitney U test of the canary's values against the baseline's.

    "canary_greater" asks whether canary values tend to be larger (slower, for latencies). `auto`
    uses the exact distribution when both arms hold at most `EXACT_MAX_SAMPLES` values and there
    are no ties, the normal approximation otherwise; `exact` with ties raises `ValueError`.
    """
    _check_alternative(alternative)
    if method not in ("auto", "exact", "asymptotic"):
        raise ValueError(f"method must be one of auto, exact, asymptotic, got {method!r}")
    base = _as_samples("baseline", baseline)
    cand = _as_samples("canary", canary)
    n_base, n_cand = int(base.size), int(cand.size)
    if n_base == 0 or n_cand == 0:
        return TestResult(MANN_WHITNEY, 0.0, 1.0, 0.5, n_base, n_cand, alternative, metric)

    combined = np.concatenate((base, cand))
    _, inverse, counts = np.unique(combined, return_inverse=True, return_counts=True)
    # Average (mid) ranks, 1-based: a tie group ending at cumulative position c with t members
    # occupies ranks c - t + 1 .. c, whose mean is c - (t - 1) / 2.
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2.0
    canary_rank_sum = float(mid_ranks[inverse[n_base:]].sum())
    u_canary = canary_rank_sum - n_cand * (n_cand + 1) / 2.0
    pairs = n_base * n_cand
    effect = u_canary / pairs
    has_ties = bool((counts > 1).any())

    if method == "exact" and has_ties:
        raise ValueError("method='exact' needs samples without ties; use 'auto' or 'asymptotic'")
    exact = method == "exact" or (
        method == "auto" and not has_ties and max(n_base, n_cand) <= EXACT_MAX_SAMPLES
    )
    if exact:
        p_value = _exact_p(round(u_canary), n_base, n_cand, alternative)
    else:
        total = n_base + n_cand
        tie_term = float((counts.astype(np.float64) ** 3 - counts).sum())
        variance = pairs / 12.0 * ((total + 1) - tie_term / (total * (total - 1)))
        if variance <= 0:  # every value equal: no ordering, no evidence
            p_value = 1.0
        else:
            sigma = math.sqrt(variance)
            deviation = u_canary - pairs / 2.0
            if alternative == "canary_greater":
                p_value = _normal_sf((deviation - CONTINUITY_CORRECTION) / sigma)
            elif alternative == "canary_less":
                p_value = _normal_sf((-deviation - CONTINUITY_CORRECTION) / sigma)
            else:
                p_value = 2.0 * _normal_sf((abs(deviation) - CONTINUITY_CORRECTION) / sigma)
    return TestResult(MANN_WHITNEY, u_canary, _clip_p(p_value), effect, n_base, n_cand, alternative, metric)


def _clip_p(p_value: float) -> float:
    return min(1.0, max(0.0, p_value))


def _u_frequencies(n_base: int, n_cand: int) -> list[int]:
    """How many of the C(n_base + n_cand, n_cand) orderings give each U = 0 .. n_base x n_cand.

    The generating function of U is the Gaussian binomial coefficient
    prod_{i=1..m} (1 - q^(n + i)) / (1 - q^i) with m = min and n = max of the sizes; multiplying by
    (1 - q^k) and dividing by (1 - q^i) are one pass each over the coefficients, in exact integers.
    """
    small, large = min(n_base, n_cand), max(n_base, n_cand)
    degree = small * large
    coefficients = [1] + [0] * degree
    for i in range(1, small + 1):
        shift = large + i
        for k in range(degree, shift - 1, -1):  # x (1 - q^shift), downwards so reads are old values
            coefficients[k] -= coefficients[k - shift]
        for k in range(i, degree + 1):  # / (1 - q^i): r[k] = c[k] + r[k - i]
            coefficients[k] += coefficients[k - i]
    return coefficients


def _exact_p(u_canary: int, n_base: int, n_cand: int, alternative: Alternative) -> float:
    frequencies = _u_frequencies(n_base, n_cand)
    total = math.comb(n_base + n_cand, n_cand)
    at_most = sum(frequencies[: u_canary + 1]) / total
    at_least = sum(frequencies[u_canary:]) / total
    if alternative == "canary_greater":
        return at_least
    if alternative == "canary_less":
        return at_most
    return min(1.0, 2.0 * min(at_most, at_least))


# ---------------------------------------------------------------------------------------------
# Two proportions
# ---------------------------------------------------------------------------------------------


def _check_counts(name: str, successes: int, n: int) -> None:
    ok = (
        isinstance(successes, int | np.integer)
        and isinstance(n, int | np.integer)
        and not isinstance(successes, bool)
        and not isinstance(n, bool)
        and 0 <= successes <= n
    )
    if not ok:
        raise ValueError(
            f"{name}: successes and n must be integers with 0 <= successes <= n, got {successes!r} of {n!r}"
        )


def two_proportion_test(
    successes_baseline: int,
    n_baseline: int,
    successes_canary: int,
    n_canary: int,
    alternative: Alternative = "two-sided",
    *,
    method: Literal["auto", "z", "fisher"] = "auto",
    metric: str = "success rate",
) -> TestResult:
    """Compare the canary's proportion with the baseline's.

    "canary_less" asks whether the canary's proportion is lower (a worse success rate). `auto`
    runs the pooled z-test unless an expected cell count is below `FISHER_MIN_EXPECTED_COUNT`,
    then Fisher's exact test. An empty arm, or a pooled proportion of exactly 0 or 1 (both arms
    all successes or all failures), gives p = 1.
    """
    _check_alternative(alternative)
    if method not in ("auto", "z", "fisher"):
        raise ValueError(f"method must be one of auto, z, fisher, got {method!r}")
    _check_counts("baseline", successes_baseline, n_baseline)
    _check_counts("canary", successes_canary, n_canary)
    x_base, n_base, x_cand, n_cand = (
        int(successes_baseline),
        int(n_baseline),
        int(successes_canary),
        int(n_canary),
    )
    rate_base = x_base / n_base if n_base else None
    rate_cand = x_cand / n_cand if n_cand else None
    effect = (rate_cand - rate_base) if rate_base is not None and rate_cand is not None else 0.0
    total = n_base + n_cand
    pooled_successes = x_base + x_cand
    if n_base == 0 or n_cand == 0 or pooled_successes in (0, total):
        return TestResult(
            TWO_PROPORTION_Z, 0.0, 1.0, effect, n_base, n_cand, alternative, metric, rate_base, rate_cand
        )
    pooled = pooled_successes / total
    smallest_expected = min(n_base, n_cand) * min(pooled, 1.0 - pooled)
    if method == "fisher" or (method == "auto" and smallest_expected < FISHER_MIN_EXPECTED_COUNT):
        p_value = _fisher_p(x_cand, n_cand, pooled_successes, total, alternative)
        return TestResult(
            FISHER_EXACT,
            float(x_cand),
            _clip_p(p_value),
            effect,
            n_base,
            n_cand,
            alternative,
            metric,
            rate_base,
            rate_cand,
        )
    standard_error = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_base + 1.0 / n_cand))
    z = effect / standard_error
    if alternative == "canary_greater":
        p_value = _normal_sf(z)
    elif alternative == "canary_less":
        p_value = _normal_sf(-z)
    else:
        p_value = 2.0 * _normal_sf(abs(z))
    return TestResult(
        TWO_PROPORTION_Z,
        z,
        _clip_p(p_value),
        effect,
        n_base,
        n_cand,
        alternative,
        metric,
        rate_base,
        rate_cand,
    )


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _fisher_p(x_cand: int, n_cand: int, successes: int, total: int, alternative: Alternative) -> float:
    """Fisher's exact test: the canary's success count is hypergeometric given the margins."""
    failures = total - successes
    low, high = max(0, n_cand - failures), min(successes, n_cand)
    support = np.arange(low, high + 1)
    log_denominator = _log_comb(total, n_cand)
    log_pmf = np.array(
        [
            _log_comb(successes, k) + _log_comb(failures, n_cand - k) - log_denominator
            for k in support.tolist()
        ]
    )
    pmf = np.exp(log_pmf)
    observed = pmf[x_cand - low]
    if alternative == "canary_greater":
        return float(pmf[support >= x_cand].sum())
    if alternative == "canary_less":
        return float(pmf[support <= x_cand].sum())
    return float(pmf[pmf <= observed * (1.0 + _FISHER_RELATIVE_TOLERANCE)].sum())
