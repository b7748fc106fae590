"""Canary verdicts: keep, revert or continue, with the evidence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_autonomy.autonomy.optimization import (
    ArmSamples,
    CanaryConfig,
    CanaryDecision,
    evaluate,
    target_metrics,
)


def latencies(median_ms: float, n: int, seed: int, sigma: float = 0.3) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(math.log(median_ms), sigma, n)


def arm(
    calls: int,
    successes: int,
    *,
    median_ms: float = 300.0,
    seed: int = 1,
    retries: int = 0,
    timeouts: int = 0,
) -> ArmSamples:
    return ArmSamples(
        latencies_ms=latencies(median_ms, calls + retries, seed),
        successes=successes,
        calls=calls,
        retries_sent=retries,
        timeouts=timeouts,
    )


FIGURES = {
    "calls",
    "success_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "retries_per_call",
    "timeout_share",
    "latency_samples",
}


def test_too_few_samples_continue_then_revert_when_time_is_up() -> None:
    baseline, canary = arm(500, 495), arm(60, 60, seed=2)
    verdict = evaluate("timeout_s", baseline, canary)
    assert verdict.decision is CanaryDecision.CONTINUE
    assert verdict.outcome == "insufficient"
    assert verdict.tests == {}
    assert "fewer than 100 calls in an arm" in verdict.reason
    final = evaluate("timeout_s", baseline, canary, final=True)
    assert final.decision is CanaryDecision.REVERT
    assert "kept only with evidence that it is safe" in final.reason


def test_clearly_worse_success_reverts() -> None:
    verdict = evaluate("timeout_s", arm(1000, 995), arm(1000, 950, seed=2), old_value=10.0, new_value=4.0)
    assert verdict.decision is CanaryDecision.REVERT
    assert verdict.outcome == "worse"
    assert "success_rate" in verdict.harmed
    assert verdict.tests["success_lower"].p_value < 0.001
    assert verdict.reason.startswith(
        "timeout_s 10 -> 4: canary 1000 calls vs baseline 1000: success 95.00% vs 99.50%"
    )
    assert "A harmful change is never kept" in verdict.reason
    assert "\n" not in verdict.reason


def test_equal_arms_keep_as_neutral() -> None:
    verdict = evaluate(
        "rate_limit_per_s", arm(800, 792), arm(800, 792, seed=2), old_value=100.0, new_value=70.0
    )
    assert verdict.decision is CanaryDecision.KEEP
    assert verdict.outcome == "neutral"
    assert verdict.harmed == ()
    assert "widens a safety margin at no measured cost" in verdict.reason
    assert set(verdict.figures_baseline) == FIGURES == set(verdict.figures_canary)
    assert verdict.figures_canary["success_rate"] == pytest.approx(0.99)
    assert set(verdict.p_values) == set(verdict.tests)


def test_much_slower_canary_reverts() -> None:
    verdict = evaluate("status_cache_ttl_s", arm(400, 400), arm(400, 400, median_ms=420.0, seed=2))
    assert verdict.decision is CanaryDecision.REVERT
    assert verdict.harmed == ("latency",)
    assert "Mann-Whitney" in verdict.reason


def test_significant_but_negligible_latency_shift_is_not_harm() -> None:
    # 20 000 calls a side, 1 % slower: significant, but P(canary slower) is only about 0.51.
    baseline = ArmSamples(latencies(300.0, 20_000, 1), 20_000, 20_000)
    canary = ArmSamples(latencies(303.0, 20_000, 2), 20_000, 20_000)
    verdict = evaluate("status_cache_ttl_s", baseline, canary)
    assert verdict.tests["latency_higher"].p_value < 0.05
    assert verdict.tests["latency_higher"].effect < 0.5 + CanaryConfig().min_effect
    assert verdict.decision is CanaryDecision.KEEP


def test_more_retries_without_more_success_reverts() -> None:
    verdict = evaluate(
        "max_attempts",
        arm(1000, 980, retries=50),
        arm(1000, 981, retries=150, seed=2),
        old_value=3,
        new_value=4,
    )
    assert verdict.decision is CanaryDecision.REVERT
    assert verdict.harmed == ("retries_per_call",)
    assert "without a higher success rate" in verdict.reason


def test_more_retries_that_buy_success_keep_as_better() -> None:
    verdict = evaluate(
        "max_attempts",
        arm(2000, 1900, retries=100),
        arm(2000, 1960, retries=200, seed=2),
        old_value=3,
        new_value=4,
    )
    assert verdict.decision is CanaryDecision.KEEP
    assert verdict.outcome == "better"
    assert "success_rate" in verdict.improved


def test_fewer_retries_at_equal_success_is_better_for_a_lower_attempt_count() -> None:
    verdict = evaluate(
        "max_attempts",
        arm(2000, 1980, retries=300),
        arm(2000, 1979, retries=100, seed=2),
        old_value=3,
        new_value=2,
    )
    assert verdict.decision is CanaryDecision.KEEP
    assert verdict.outcome == "better"
    assert verdict.improved == ("retries_per_call",)


def test_longer_timeout_with_fewer_timeouts_is_better() -> None:
    verdict = evaluate(
        "timeout_s",
        arm(2000, 1940, timeouts=60),
        arm(2000, 1945, timeouts=5, seed=2),
        old_value=2.0,
        new_value=4.0,
    )
    assert verdict.decision is CanaryDecision.KEEP
    assert verdict.outcome == "better"
    assert "timeout_share" in verdict.improved


def hanging_arm(
    calls: int, hangs: int, timeout_s: float, *, median_ms: float = 250.0, seed: int = 2
) -> ArmSamples:
    """Fast calls, and `hangs` that never answer (cut off at `timeout_s`)."""
    answered = latencies(median_ms, calls - hangs, seed)
    return ArmSamples(
        latencies_ms=np.concatenate([answered, np.full(hangs, timeout_s * 1000.0)]),
        successes=calls,  # a hung charge is found by its status query
        calls=calls,
        timeouts=hangs,
    )


@pytest.mark.parametrize("concurrent", [True, False])
def test_a_timeout_raise_that_rescues_nothing_while_calls_hang_is_reverted(concurrent: bool) -> None:
    # 1 % of the calls are accepted and never answered: at 3.6 s they time out just as at 2.2 s.
    verdict = evaluate(
        "timeout_s",
        hanging_arm(800, 8, 2.2, seed=1),
        hanging_arm(300, 3, 3.6),
        old_value=2.2,
        new_value=3.6,
        concurrent=concurrent,
    )
    assert verdict.decision is CanaryDecision.REVERT
    assert verdict.outcome == "ineffective"
    assert verdict.figures_canary["rescued_calls"] == 0.0
    assert "0 of the 3 canary calls" in verdict.reason


def test_a_before_after_raise_is_not_credited_with_a_better_window_than_before() -> None:
    # The window before had refusals (88 % success); the raise went in as they stopped. The
    # higher success rate is the provider's recovery, not the raise, which rescued nothing.
    before = hanging_arm(800, 8, 2.2, seed=1)
    before = ArmSamples(latencies_ms=before.latencies_ms, successes=700, calls=800, timeouts=8)
    verdict = evaluate(
        "timeout_s", before, hanging_arm(300, 3, 3.6), old_value=2.2, new_value=3.6, concurrent=False
    )
    assert verdict.decision is CanaryDecision.REVERT
    assert verdict.outcome == "ineffective"
    assert "success_rate" not in verdict.improved


def test_a_timeout_raise_with_no_timeouts_left_to_judge_stays_a_neutral_keep() -> None:
    # Nothing timed out in either arm: the raise cost no call any wait, a widened margin.
    verdict = evaluate("timeout_s", arm(500, 500), arm(500, 500, seed=2), old_value=5.0, new_value=8.0)
    assert verdict.decision is CanaryDecision.KEEP
    assert verdict.outcome == "neutral"


def test_a_timeout_raise_when_almost_every_call_times_out_is_not_called_ineffective() -> None:
    # The provider got far slower than even the raised timeout: nothing shows where its calls
    # end, so a step up is not judged as "waiting for hangs".
    baseline = hanging_arm(300, 280, 2.0, seed=1)
    canary = hanging_arm(300, 280, 3.0)
    verdict = evaluate("timeout_s", baseline, canary, old_value=2.0, new_value=3.0, concurrent=False)
    assert verdict.outcome != "ineffective"


def test_a_pileup_raise_judged_before_after_is_kept_on_the_calls_it_rescued() -> None:
    # The window before was fast (250 ms); the provider then slowed to p50 1.5 s, and a 2.1 s
    # timeout cut off a fifth of the calls. Raised to 6.3 s for all traffic: latency is far above
    # the window before (the provider's doing), but every call that used to time out completes.
    before = ArmSamples(
        latencies_ms=np.concatenate([latencies(250, 440, 1, sigma=0.44), np.full(6, 2100.0)]),
        successes=440,
        calls=446,
        timeouts=6,
    )
    after = ArmSamples(latencies_ms=latencies(1500, 150, 2, sigma=0.42), successes=150, calls=150)
    verdict = evaluate("timeout_s", before, after, old_value=2.1, new_value=6.3, concurrent=False)
    assert verdict.decision is CanaryDecision.KEEP
    assert verdict.outcome == "better"
    assert "timeout_share" in verdict.improved
    assert verdict.figures_canary["rescued_calls"] == pytest.approx(
        float(np.count_nonzero(after.latency_array > 2100.0))
    )
    # The same arms as a concurrent canary: a latency shift that large is harm.
    concurrent = evaluate("timeout_s", before, after, old_value=2.1, new_value=6.3)
    assert concurrent.decision is CanaryDecision.REVERT and "latency" in concurrent.harmed


def test_more_timeouts_without_more_success_reverts() -> None:
    verdict = evaluate(
        "timeout_s",
        arm(2000, 1990, timeouts=2),
        arm(2000, 1990, timeouts=40, seed=2),
        old_value=10.0,
        new_value=3.0,
    )
    assert verdict.decision is CanaryDecision.REVERT
    assert verdict.harmed == ("timeout_share",)


def test_looks_worse_but_not_significantly_continues_then_reverts() -> None:
    # 100 % vs 97 % of 150: Fisher's one-sided p is about 0.06, and the drop is over 1 point.
    baseline, canary = arm(150, 150), arm(150, 146, seed=2)
    verdict = evaluate("breaker_failure_rate", baseline, canary)
    assert verdict.tests["success_lower"].p_value > 0.05
    assert verdict.decision is CanaryDecision.CONTINUE
    assert verdict.outcome == "inconclusive"
    assert "looks worse but not significantly yet" in verdict.reason
    final = evaluate("breaker_failure_rate", baseline, canary, final=True)
    assert final.decision is CanaryDecision.REVERT
    assert final.outcome == "inconclusive"


def test_target_metrics_follow_the_direction_of_the_change() -> None:
    assert target_metrics("timeout_s", 2.0, 4.0) == ("success_rate", "timeout_share")
    assert target_metrics("timeout_s", 4.0, 2.0) == ("latency",)
    assert target_metrics("max_attempts", 3, 2) == ("retries_per_call",)
    assert set(target_metrics("timeout_s")) == {"success_rate", "timeout_share", "latency"}
    assert len(target_metrics("unknown")) == 4


def test_config_and_samples_are_validated() -> None:
    with pytest.raises(ValueError, match=r"CanaryConfig.alpha must be in \(0, 0.5\]"):
        CanaryConfig(alpha=0.0)
    with pytest.raises(ValueError, match=r"CanaryConfig\.min_samples_per_arm must be an integer >= 10"):
        CanaryConfig(min_samples_per_arm=5)
    with pytest.raises(ValueError, match=r"CanaryConfig\.min_rescued_share must be in \(0, 1\]"):
        CanaryConfig(min_rescued_share=0.0)
    with pytest.raises(ValueError, match=r"ArmSamples.successes must be <= calls \(10\)"):
        ArmSamples((), 11, 10)
    with pytest.raises(ValueError, match=r"ArmSamples\.timeouts must be <= attempts"):
        ArmSamples((), 1, 10, retries_sent=1, timeouts=12)


@st.composite
def same_arms(draw: st.DrawFn) -> tuple[ArmSamples, ArmSamples]:
    calls = draw(st.integers(100, 1500))
    successes = draw(st.integers(0, calls))
    retries = draw(st.integers(0, calls))
    timeouts = draw(st.integers(0, calls + retries))
    seed = draw(st.integers(0, 10_000))
    median = draw(st.floats(20.0, 5000.0))
    samples = latencies(median, calls + retries, seed)

    def one() -> ArmSamples:
        return ArmSamples(samples, successes, calls, retries, timeouts)

    return one(), one()


@settings(max_examples=40, deadline=None)
@given(
    same_arms(), st.sampled_from(["timeout_s", "max_attempts", "rate_limit_per_s", "other"]), st.booleans()
)
def test_identical_arms_are_never_reverted(
    arms: tuple[ArmSamples, ArmSamples], parameter: str, final: bool
) -> None:
    baseline, canary = arms
    verdict = evaluate(parameter, baseline, canary, final=final)
    assert verdict.decision is CanaryDecision.KEEP
    assert verdict.outcome == "neutral"
    assert evaluate(parameter, baseline, canary, final=final) == verdict  # deterministic


@settings(max_examples=40, deadline=None)
@given(st.integers(100, 3000), st.floats(0.9, 0.999), st.integers(0, 10_000))
def test_a_collapse_in_success_is_always_reverted(calls: int, rate: float, seed: int) -> None:
    baseline = arm(calls, round(calls * rate), seed=seed)
    canary = arm(calls, round(calls * (rate - 0.1)), seed=seed + 1)
    verdict = evaluate("rate_limit_per_s", baseline, canary)
    assert verdict.decision is CanaryDecision.REVERT
    assert "success_rate" in verdict.harmed
