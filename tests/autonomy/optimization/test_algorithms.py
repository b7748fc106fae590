"""Tuners: scenario tests for each algorithm, and properties every tuner must keep."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_autonomy.autonomy.optimization import (
    DEFAULT_TUNERS,
    SAFER_DIRECTION,
    TUNABLE_PARAMETERS,
    BreakerThresholdTuner,
    BreakerThresholdTunerConfig,
    BreakerWaitTuner,
    CacheTtlTuner,
    CacheTtlTunerConfig,
    LaneEvidence,
    Proposal,
    RateLimitTuner,
    RateLimitTunerConfig,
    RestoringTuner,
    RetryTuner,
    RetryTunerConfig,
    TimeoutTuner,
    TimeoutTunerConfig,
    Tuner,
    apply_proposal,
    parameter_bounds,
    widens_safety,
)
from mcp_autonomy.autonomy.optimization.algorithms import DEFAULT_TIMEOUT_MIN_HISTORY_S
from mcp_autonomy.resilience.breaker import DEFAULT_FAILURE_RATE_THRESHOLD, BreakerConfig
from mcp_autonomy.resilience.tunables import (
    BREAKER_FAILURE_RATE_BOUNDS,
    MAX_ATTEMPTS_BOUNDS,
    RATE_LIMIT_BOUNDS,
    TIMEOUT_S_BOUNDS,
    ProviderTunables,
    default_tunables,
)


def lognormal_ms(median_ms: float, sigma: float, n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(math.log(median_ms), sigma, n)


def evidence(**overrides: Any) -> LaneEvidence:
    fields: dict[str, Any] = {"window_s": 300.0, "latencies_ms": (), "calls": 0, "successes": 0}
    fields.update(overrides)
    return LaneEvidence(**fields)


def tunables(**overrides: Any) -> ProviderTunables:
    return ProviderTunables(**overrides)


# -- the tunables field and helpers ------------------------------------------------------------


def test_breaker_failure_rate_field_uses_the_breaker_default_and_unit() -> None:
    assert ProviderTunables().breaker_failure_rate == DEFAULT_FAILURE_RATE_THRESHOLD
    assert ProviderTunables().breaker_failure_rate == BreakerConfig().failure_rate_threshold
    assert parameter_bounds("breaker_failure_rate") == BREAKER_FAILURE_RATE_BOUNDS
    BreakerConfig(failure_rate_threshold=BREAKER_FAILURE_RATE_BOUNDS[0])  # both ends valid there too
    BreakerConfig(failure_rate_threshold=BREAKER_FAILURE_RATE_BOUNDS[1])


def test_parameter_bounds_come_from_the_model() -> None:
    assert parameter_bounds("timeout_s") == TIMEOUT_S_BOUNDS
    assert parameter_bounds("max_attempts") == MAX_ATTEMPTS_BOUNDS
    assert parameter_bounds("rate_limit_per_s") == RATE_LIMIT_BOUNDS
    assert parameter_bounds("status_cache_ttl_s") == (0.0, 3600.0)
    assert set(SAFER_DIRECTION) <= set(TUNABLE_PARAMETERS)
    with pytest.raises(ValueError, match=r"unknown parameter 'timeout'.*timeout_s"):
        parameter_bounds("timeout")


def test_default_tuners_cover_one_parameter_each() -> None:
    parameters = [tuner.parameter for tuner in DEFAULT_TUNERS]
    assert len(parameters) == len(set(parameters))
    assert all(isinstance(tuner, Tuner) for tuner in DEFAULT_TUNERS)
    assert all(p in TUNABLE_PARAMETERS for p in parameters)


def test_proposal_validates_its_value_and_applies() -> None:
    with pytest.raises(ValueError, match=r"timeout_s must be in \[0.5, 120\]"):
        Proposal("timeout_s", 10.0, 500.0, "too long")
    proposal = Proposal("max_attempts", 3.0, 4.0, "more")
    updated = apply_proposal(ProviderTunables(), proposal)
    assert updated.max_attempts == 4 and isinstance(updated.max_attempts, int)
    assert proposal.widens_safety is True
    assert widens_safety("rate_limit_per_s", 100, 70) is True
    assert widens_safety("rate_limit_per_s", 70, 100) is False
    assert widens_safety("rate_limit_burst", 1, 2) is None


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: TimeoutTunerConfig(margin=0.5), r"TimeoutTunerConfig.margin must be in \[1, 10\]"),
        (lambda: TimeoutTunerConfig(conservative_margin=1.2), "conservative_margin must be in"),
        (
            lambda: TimeoutTunerConfig(max_timeout_s=500.0),
            r"max_timeout_s must be a number in \[min_timeout_s",
        ),
        (lambda: TimeoutTunerConfig(quantile=1.0), r"quantile must be in \[0.5, 1\)"),
        (lambda: TimeoutTunerConfig(min_history_s=-1.0), r"min_history_s must be in \[0, 604800\] seconds"),
        (lambda: RetryTunerConfig(high_recovery_rate=0.05), "high_recovery_rate must be in"),
        (lambda: RetryTunerConfig(max_attempts=11), r"max_attempts must be an integer in"),
        (lambda: RateLimitTunerConfig(conservative_decrease_factor=0.9), "conservative_decrease_factor"),
        (lambda: CacheTtlTunerConfig(conservative_increase_factor=2.0), "conservative_increase_factor"),
        (lambda: BreakerThresholdTunerConfig(multiplier=0.5), r"multiplier must be in \[1, 10\]"),
        (lambda: BreakerThresholdTunerConfig(max_threshold=1.5), "max_threshold must be a number in"),
    ],
)
def test_configs_name_the_allowed_range(factory: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


def test_evidence_validates_and_derives() -> None:
    ev = evidence(
        latencies_ms=[100.0] * 30,
        calls=100,
        successes=80,
        timeouts=5,
        rate_limited=5,
        auth_errors=10,
        retries_sent=20,
        recovered_on_retry=5,
        status_queries=10,
        status_cache_hits=4,
        stale_cache_hits=1,
    )
    assert ev.error_rate == pytest.approx(0.2)
    assert ev.transient_share == pytest.approx(0.5)
    assert ev.recovery_on_retry_rate == pytest.approx(0.25)
    assert ev.status_cache_hit_rate == pytest.approx(0.4)
    assert ev.stale_hit_share == pytest.approx(0.25)
    assert ev.latency_quantile(0.5) == 100.0
    assert ev.latency_quantile(0.5, min_samples=31) is None
    assert not ev.latency_array.flags.writeable
    with pytest.raises(ValueError, match="calls must be >= successes"):
        evidence(calls=5, successes=5, timeouts=1)
    with pytest.raises(ValueError, match="recovered_on_retry must be <= retries_sent"):
        evidence(calls=5, successes=5, retries_sent=1, recovered_on_retry=2)
    with pytest.raises(ValueError, match="latencies_ms must hold finite"):
        evidence(latencies_ms=[1.0, -2.0])


# -- timeout -----------------------------------------------------------------------------------


def test_latency_shift_up_raises_the_timeout_above_the_new_tail() -> None:
    latencies = lognormal_ms(800, 0.4, 2000)  # p99.9 around 2.7 s
    p999_s = float(np.quantile(latencies, 0.999)) / 1000
    ev = evidence(latencies_ms=latencies, calls=2000, successes=2000)
    proposal = TimeoutTuner().propose("paystack", tunables(timeout_s=2.0), ev, conservative=False)
    assert proposal is not None
    assert proposal.new_value > p999_s
    p99_s = float(np.quantile(latencies, 0.99)) / 1000
    expected = max(p999_s * 1.5 + 0.25, 3 * p99_s)  # the p99 multiple binds for a tight distribution
    assert proposal.new_value == pytest.approx(math.ceil(expected * 10) / 10)
    assert f"p99.9 latency {p999_s * 1000:.0f} ms" in proposal.reason
    assert proposal.evidence["latency_quantile_ms"] == pytest.approx(p999_s * 1000)


def test_fast_provider_gets_a_shorter_timeout_within_bounds() -> None:
    ev = evidence(latencies_ms=lognormal_ms(150, 0.2, 1000), calls=1000, successes=1000)
    proposal = TimeoutTuner().propose("paystack", tunables(timeout_s=10.0), ev, conservative=False)
    assert proposal is not None
    assert proposal.new_value == TimeoutTunerConfig().min_timeout_s  # the clamp, not 0.6 s
    assert "10 s -> 1 s" in proposal.reason


def test_timeout_needs_enough_samples() -> None:
    ev = evidence(latencies_ms=lognormal_ms(150, 0.2, 199), calls=199, successes=199)
    assert TimeoutTuner().propose("paystack", tunables(timeout_s=10.0), ev, conservative=False) is None


def test_timeout_hysteresis_ignores_small_changes() -> None:
    latencies = lognormal_ms(2000, 0.1, 1000)  # target about 4.3 s
    ev = evidence(latencies_ms=latencies, calls=1000, successes=1000)
    target = TimeoutTuner().propose("paystack", tunables(timeout_s=10.0), ev, conservative=False)
    assert target is not None
    near = target.new_value * 1.15  # 15 % away: below the 20 % step
    assert TimeoutTuner().propose("paystack", tunables(timeout_s=near), ev, conservative=False) is None


def test_timeout_pileup_never_shortens() -> None:
    # Timeouts are piling up (5 % of calls) but the latencies look fast: never shorten then.
    ev = evidence(latencies_ms=lognormal_ms(150, 0.2, 1000), calls=1000, successes=950, timeouts=50)
    assert TimeoutTuner().propose("paystack", tunables(timeout_s=10.0), ev, conservative=False) is None


def test_timeout_pileup_at_the_cutoff_raises() -> None:
    latencies = np.concatenate([lognormal_ms(500, 0.2, 950), np.full(50, 3000.0)])  # cut off at 3 s
    ev = evidence(latencies_ms=latencies, calls=1000, successes=950, timeouts=50)
    proposal = TimeoutTuner().propose("paystack", tunables(timeout_s=3.0), ev, conservative=False)
    assert proposal is not None and proposal.new_value > 3.0
    assert "only ever raised" in proposal.reason


# The long-run horizon: a quarter-hour of fast calls at night is no evidence about the slow peak
# that follows every day (benchmarks/optimizer_effect.py: a night cut 10 -> 1.9 s timed the next
# slow regime out, p50 1.5 s, p99 4 s).
NIGHT_MS = lognormal_ms(250, 0.45, 1000)  # p99 about 700 ms: the window alone says ~2 s
SLOW_PEAK_P99_MS = 4000.0
SLOW_PEAK_P999_MS = 5500.0


def night_evidence(**long_run: Any) -> LaneEvidence:
    return evidence(latencies_ms=NIGHT_MS, calls=1000, successes=1000, **long_run)


def test_the_window_alone_would_cut_a_fast_night_to_about_two_seconds() -> None:
    proposal = TimeoutTuner().propose(
        "paystack", tunables(timeout_s=10.0), night_evidence(), conservative=False
    )
    assert proposal is not None and proposal.new_value < 3.0  # the harm the long-run rules prevent


def test_no_cut_before_the_long_run_horizon_has_been_observed() -> None:
    tuner = TimeoutTuner()
    young = night_evidence(long_run_covered_s=1800.0)  # half an hour of history: too new
    assert tuner.propose("paystack", tunables(timeout_s=10.0), young, conservative=False) is None
    grown = night_evidence(long_run_covered_s=DEFAULT_TIMEOUT_MIN_HISTORY_S)
    proposal = tuner.propose("paystack", tunables(timeout_s=10.0), grown, conservative=False)
    assert proposal is not None and proposal.new_value < 3.0  # a whole fast horizon: cut as before
    shorter = TimeoutTuner(TimeoutTunerConfig(min_history_s=900.0))
    assert shorter.propose("paystack", tunables(timeout_s=10.0), young, conservative=False) is not None


def test_a_raise_is_never_held_back_by_a_short_history() -> None:
    slow = evidence(
        latencies_ms=lognormal_ms(1500, 0.42, 1000), calls=1000, successes=1000, long_run_covered_s=60.0
    )
    proposal = TimeoutTuner().propose("paystack", tunables(timeout_s=1.9), slow, conservative=False)
    assert proposal is not None and proposal.new_value > 1.9


def test_a_cut_never_goes_below_what_the_long_run_latency_needed() -> None:
    tuner = TimeoutTuner()
    seen_slow = night_evidence(
        long_run_covered_s=7200.0,
        long_run_latency_p99_ms=SLOW_PEAK_P99_MS,
        long_run_latency_p999_ms=SLOW_PEAK_P999_MS,
    )
    need_s = max(SLOW_PEAK_P999_MS / 1000 * 1.5 + 0.25, 3 * SLOW_PEAK_P99_MS / 1000)  # 12 s
    # At the horizon's need already: the fast window does not cut it.
    assert tuner.propose("paystack", tunables(timeout_s=need_s), seen_slow, conservative=False) is None
    # From the default, a cut stops at the need (here above 10 s: a raise), never at the window's 2 s.
    proposal = tuner.propose("paystack", tunables(timeout_s=10.0), seen_slow, conservative=False)
    assert proposal is not None and proposal.new_value == pytest.approx(need_s)
    # A timeout cut earlier is raised back to it, saying why.
    back = tuner.propose("paystack", tunables(timeout_s=1.9), seen_slow, conservative=False)
    assert back is not None and back.new_value == pytest.approx(need_s)
    assert "long-run horizon's need 12.00 s" in back.reason
    assert back.evidence["long_run_target_s"] == pytest.approx(need_s)


def test_a_fast_long_run_horizon_allows_the_same_cut_as_the_window() -> None:
    fast_day = night_evidence(
        long_run_covered_s=7200.0, long_run_latency_p99_ms=700.0, long_run_latency_p999_ms=1000.0
    )
    alone = TimeoutTuner().propose("paystack", tunables(timeout_s=10.0), night_evidence(), conservative=False)
    held = TimeoutTuner().propose("paystack", tunables(timeout_s=10.0), fast_day, conservative=False)
    assert alone is not None and held is not None
    assert held.new_value == pytest.approx(max(alone.new_value, 2.1))  # 3 x 700 ms binds at most


def test_evidence_checks_the_long_run_figures() -> None:
    with pytest.raises(ValueError, match="long_run_covered_s must be None or a finite number of seconds"):
        evidence(long_run_covered_s=-1.0)
    with pytest.raises(ValueError, match="long_run_latency_p999_ms must be None or a finite number of ms"):
        evidence(long_run_latency_p999_ms=math.inf)


def test_conservative_timeout_is_wider_and_not_below_the_default() -> None:
    ev = evidence(latencies_ms=lognormal_ms(800, 0.4, 2000), calls=2000, successes=2000)
    normal = TimeoutTuner().propose("paystack", tunables(timeout_s=2.0), ev, conservative=False)
    careful = TimeoutTuner().propose("paystack", tunables(timeout_s=2.0), ev, conservative=True)
    assert normal is not None and careful is not None
    assert careful.new_value > normal.new_value
    fast = evidence(latencies_ms=lognormal_ms(150, 0.2, 1000), calls=1000, successes=1000)
    assert TimeoutTuner().propose("paystack", tunables(timeout_s=10.0), fast, conservative=True) is None


# -- retries -----------------------------------------------------------------------------------


def test_retries_that_recover_get_one_more_attempt() -> None:
    ev = evidence(
        calls=2000,
        successes=1900,
        not_processed=100,
        retries_sent=200,
        recovered_on_retry=150,
        retries_exhausted=20,
    )
    proposal = RetryTuner().propose("paystack", tunables(max_attempts=3), ev, conservative=False)
    assert proposal is not None and proposal.new_value == 4
    assert "150 of 200 retries saved a payment (75%)" in proposal.reason
    assert RetryTuner().propose("paystack", tunables(max_attempts=5), ev, conservative=False) is None


def test_retries_that_never_recover_lose_an_attempt_but_one_retry_stays() -> None:
    ev = evidence(calls=2000, successes=1800, not_processed=200, retries_sent=200, recovered_on_retry=4)
    tuner = RetryTuner()
    normal = tuner.propose("paystack", tunables(max_attempts=3), ev, conservative=False)
    assert normal is not None and normal.new_value == 2
    # At 2 attempts it stops: 1 would send no retries, and without them no evidence to come back.
    assert tuner.propose("paystack", tunables(max_attempts=2), ev, conservative=False) is None
    assert tuner.propose("paystack", tunables(max_attempts=2), ev, conservative=True) is None
    careful = tuner.propose("paystack", tunables(max_attempts=3), ev, conservative=True)
    assert careful is not None and careful.new_value == 2
    # A configuration may still allow switching retries off.
    off = RetryTuner(RetryTunerConfig(min_attempts=1)).propose(
        "paystack", tunables(max_attempts=2), ev, conservative=False
    )
    assert off is not None and off.new_value == 1


def test_retries_need_enough_evidence_and_a_clear_signal() -> None:
    tuner = RetryTuner()
    few = evidence(calls=100, successes=100, retries_sent=10, recovered_on_retry=0)
    assert tuner.propose("paystack", tunables(), few, conservative=False) is None
    middling = evidence(
        calls=1000, successes=1000, retries_sent=100, recovered_on_retry=30, retries_exhausted=50
    )
    assert tuner.propose("paystack", tunables(), middling, conservative=False) is None


def test_a_retry_cut_expires_when_retries_recover_again() -> None:
    tuner = RetryTuner()
    assert isinstance(tuner, RestoringTuner)
    recovering = evidence(calls=120, successes=110, not_processed=10, retries_sent=12, recovered_on_retry=9)
    restored = tuner.restore("paystack", tunables(max_attempts=2), recovering)
    assert restored is not None and (restored.old_value, restored.new_value) == (2, 3)  # paystack's default
    assert "9 of 12 retries in the last 300 s saved a payment (75%" in restored.reason
    assert restored.evidence["recovery_on_retry_rate"] == 0.75
    # Still an outage (retries fail), too few retries to tell, or nothing cut: no restore.
    outage = evidence(calls=120, successes=60, not_processed=60, retries_sent=40, recovered_on_retry=3)
    assert tuner.restore("paystack", tunables(max_attempts=2), outage) is None
    few = evidence(calls=60, successes=58, not_processed=2, retries_sent=4, recovered_on_retry=4)
    assert tuner.restore("paystack", tunables(max_attempts=2), few) is None
    assert tuner.restore("paystack", tunables(max_attempts=3), recovering) is None
    assert tuner.restore("paystack", tunables(max_attempts=4), recovering) is None  # above: the canary's job
    assert tuner.restore("paystack", tunables(max_attempts=1), recovering) is None  # an operator's choice
    with pytest.raises(ValueError, match="restore_min_retries must be"):
        RetryTunerConfig(restore_min_retries=0)


# -- rate limit --------------------------------------------------------------------------------


def test_429_storm_cuts_the_rate_limit() -> None:
    ev = evidence(window_s=60.0, calls=3000, successes=2700, rate_limited=300)  # 50/s sent, 10 % 429s
    normal = RateLimitTuner().propose("mpesa", tunables(rate_limit_per_s=50.0), ev, conservative=False)
    careful = RateLimitTuner().propose("mpesa", tunables(rate_limit_per_s=50.0), ev, conservative=True)
    assert normal is not None and normal.new_value == pytest.approx(35.0)
    assert careful is not None and careful.new_value == pytest.approx(25.0)
    assert "10.0% of 3000 calls answered 429" in normal.reason


def test_429s_cut_from_the_rate_actually_sent() -> None:
    ev = evidence(window_s=100.0, calls=2000, successes=1900, rate_limited=100)  # 20/s sent
    proposal = RateLimitTuner().propose("paystack", tunables(rate_limit_per_s=100.0), ev, conservative=False)
    assert proposal is not None and proposal.new_value == pytest.approx(14.0)


def test_busy_lane_without_429s_grows_additively() -> None:
    ev = evidence(window_s=100.0, calls=4500, successes=4500, latencies_ms=lognormal_ms(300, 0.2, 500))
    proposal = RateLimitTuner().propose("mpesa", tunables(rate_limit_per_s=50.0), ev, conservative=False)
    assert proposal is not None and proposal.new_value == pytest.approx(55.0)  # +max(10 % of 50, 5)
    # Conservative mode never raises past the provider's default (50/s for M-Pesa) ...
    assert RateLimitTuner().propose("mpesa", tunables(rate_limit_per_s=50.0), ev, conservative=True) is None
    # ... but recovers towards it after a cut.
    low = evidence(window_s=100.0, calls=3600, successes=3600)
    back = RateLimitTuner().propose("mpesa", tunables(rate_limit_per_s=40.0), low, conservative=True)
    assert back is not None and back.new_value == pytest.approx(42.5)


def test_rising_latency_blocks_an_increase() -> None:
    ev = evidence(
        window_s=100.0,
        calls=4500,
        successes=4500,
        latencies_ms=lognormal_ms(600, 0.2, 500),
        long_run_latency_p50_ms=300.0,
    )
    assert RateLimitTuner().propose("mpesa", tunables(rate_limit_per_s=50.0), ev, conservative=False) is None


def test_idle_lane_keeps_its_rate_limit() -> None:
    ev = evidence(window_s=100.0, calls=1000, successes=1000)  # 10/s of 50/s
    assert RateLimitTuner().propose("mpesa", tunables(rate_limit_per_s=50.0), ev, conservative=False) is None


def test_a_quiet_lane_cut_below_its_default_recovers_towards_it() -> None:
    # A 429 storm cut Paystack's limit to the 1/s floor; the lane sends 0.5/s, far under 80 % of
    # any limit, and no 429 has come since: the limit climbs back, step by step, to the default.
    quiet = evidence(window_s=900.0, calls=450, successes=450, latencies_ms=lognormal_ms(250, 0.4, 450))
    tuner = RateLimitTuner()
    step = tuner.propose("paystack", tunables(rate_limit_per_s=1.0), quiet, conservative=False)
    assert step is not None and step.new_value == pytest.approx(11.0)  # +max(10 % of 100, 5)
    assert "recovery towards it" in step.reason
    last = tuner.propose("paystack", tunables(rate_limit_per_s=95.0), quiet, conservative=False)
    assert last is not None and last.new_value == pytest.approx(100.0)  # never past the default
    # At the default, a quiet lane is not raised, and one 429 in the window stops the recovery.
    assert tuner.propose("paystack", tunables(rate_limit_per_s=100.0), quiet, conservative=False) is None
    throttled = evidence(window_s=900.0, calls=450, successes=449, rate_limited=1)
    assert tuner.propose("paystack", tunables(rate_limit_per_s=1.0), throttled, conservative=False) is None


# -- status-cache TTL --------------------------------------------------------------------------


def test_stale_hits_shorten_the_ttl() -> None:
    ev = evidence(status_queries=500, status_cache_hits=200, stale_cache_hits=10)
    proposal = CacheTtlTuner().propose("paystack", tunables(status_cache_ttl_s=10.0), ev, conservative=False)
    assert proposal is not None and proposal.new_value == pytest.approx(5.0)
    assert "10 of 200 cached statuses were stale" in proposal.reason


def test_low_hit_rate_without_staleness_lengthens_the_ttl() -> None:
    ev = evidence(status_queries=500, status_cache_hits=20, stale_cache_hits=0)
    proposal = CacheTtlTuner().propose("paystack", tunables(status_cache_ttl_s=4.0), ev, conservative=False)
    assert proposal is not None and proposal.new_value == pytest.approx(6.0)
    # Conservative mode stops at the default (5 s) ...
    careful = CacheTtlTuner().propose("paystack", tunables(status_cache_ttl_s=4.0), ev, conservative=True)
    assert careful is not None and careful.new_value == pytest.approx(5.0)
    # ... and a disabled cache stays disabled.
    assert (
        CacheTtlTuner().propose("paystack", tunables(status_cache_ttl_s=0.0), ev, conservative=False) is None
    )


# -- breaker threshold -------------------------------------------------------------------------


def test_noisy_provider_gets_a_threshold_above_its_normal_error_level() -> None:
    ev = evidence(calls=1000, successes=920, not_processed=80, long_run_error_rate=0.08)
    proposal = BreakerThresholdTuner().propose(
        "paystack", tunables(breaker_failure_rate=0.1), ev, conservative=False
    )
    assert proposal is not None
    assert proposal.new_value == pytest.approx(0.26)  # 8 % x 2 + 10 points: does not trip at 10 %
    assert "normal error rate 8.0%" in proposal.reason


def test_breaker_threshold_is_capped_and_never_raised_during_an_incident() -> None:
    sick = evidence(calls=1000, successes=600, not_processed=400, long_run_error_rate=0.4)
    proposal = BreakerThresholdTuner().propose("paystack", tunables(), sick, conservative=False)
    assert proposal is not None and proposal.new_value == pytest.approx(0.6)
    incident = evidence(calls=1000, successes=500, not_processed=500, long_run_error_rate=0.02)
    tuner = BreakerThresholdTuner()
    assert tuner.propose("paystack", tunables(breaker_failure_rate=0.1), incident, conservative=False) is None
    # Rising errors alone do not lower it either: retries may still be saving payments (blips).
    assert tuner.propose("paystack", tunables(), incident, conservative=False) is None


def test_a_clean_provider_keeps_the_default_threshold() -> None:
    clean = evidence(calls=1000, successes=1000, long_run_error_rate=0.0)
    assert BreakerThresholdTuner().propose("paystack", tunables(), clean, conservative=False) is None
    assert BreakerThresholdTuner().propose("paystack", tunables(), clean, conservative=True) is None
    # A threshold raised for a noise level that is gone comes back down to the default.
    high = BreakerThresholdTuner().propose(
        "paystack", tunables(breaker_failure_rate=0.6), clean, conservative=False
    )
    assert high is not None and high.new_value == pytest.approx(0.5)


def test_an_outage_where_retries_stop_saving_payments_lowers_the_threshold_step_by_step() -> None:
    def window(recovered: int, trials: int) -> LaneEvidence:
        return evidence(
            calls=1000,
            successes=450,
            not_processed=550,
            retries_sent=200,
            recovered_on_retry=recovered,
            breaker_trials_passed=trials,
            breaker_trials_failed=trials,
            long_run_error_rate=0.35,  # an outage drags the hour's rate up: not the yardstick
        )

    outage = window(recovered=8, trials=3)
    tuner = BreakerThresholdTuner()
    step = tuner.propose("paystack", tunables(), outage, conservative=False)
    assert step is not None and step.new_value == pytest.approx(0.35)  # 0.5 x 0.7
    assert (
        "the breaker opened and tried the provider 6 times" in step.reason
        and "8 of 200 retries" in step.reason
    )
    floor = tuner.propose("paystack", tunables(breaker_failure_rate=0.28), outage, conservative=False)
    assert floor is not None and floor.new_value == pytest.approx(0.2)  # never below min_threshold
    assert tuner.propose("paystack", tunables(breaker_failure_rate=0.2), outage, conservative=False) is None
    # Retries that still save payments: blips, not an outage; the threshold is not lowered.
    blips = tuner.propose("paystack", tunables(), window(recovered=120, trials=3), conservative=False)
    assert blips is None or blips.new_value >= 0.5
    # A breaker that is not opening: lowering it would turn a steady partial failure into an outage.
    steady = tuner.propose("paystack", tunables(), window(recovered=8, trials=0), conservative=False)
    assert steady is None or steady.new_value >= 0.5


def test_a_threshold_cut_in_an_outage_is_restored_when_calls_stop_failing() -> None:
    tuner = BreakerThresholdTuner()
    assert isinstance(tuner, RestoringTuner)
    quiet = evidence(calls=150, successes=140, not_processed=6, rate_limited=4)
    restored = tuner.restore("paystack", tunables(breaker_failure_rate=0.35), quiet)
    assert restored is not None and restored.new_value == pytest.approx(0.5)
    assert "4.0% of 150 calls in the last 300 s failed, under 25%" in restored.reason
    still_down = evidence(calls=150, successes=90, not_processed=60)
    assert tuner.restore("paystack", tunables(breaker_failure_rate=0.35), still_down) is None
    few = evidence(calls=10, successes=10)
    assert tuner.restore("paystack", tunables(breaker_failure_rate=0.35), few) is None
    assert tuner.restore("paystack", tunables(), quiet) is None
    # The noise floor still lifts a cut threshold that real noise would trip.
    noisy = evidence(calls=1000, successes=920, not_processed=80, long_run_error_rate=0.08)
    lifted = tuner.propose("paystack", tunables(breaker_failure_rate=0.2), noisy, conservative=False)
    assert lifted is not None and lifted.new_value == pytest.approx(0.26)


def test_conservative_breaker_trips_earlier() -> None:
    ev = evidence(calls=1000, successes=700, not_processed=300, long_run_error_rate=0.3)
    normal = BreakerThresholdTuner().propose("paystack", tunables(), ev, conservative=False)
    careful = BreakerThresholdTuner().propose("paystack", tunables(), ev, conservative=True)
    assert normal is not None and normal.new_value == pytest.approx(0.6)  # 30 % x 2 + 10 points, capped
    assert careful is None  # 30 % x 1.5 + 5 points = 50 %: the default is already right


def test_breaker_needs_the_long_run_error_rate() -> None:
    ev = evidence(calls=1000, successes=1000)
    assert BreakerThresholdTuner().propose("paystack", tunables(), ev, conservative=False) is None


# -- properties of every tuner -----------------------------------------------------------------

PROVIDERS = ("mpesa", "paystack", "mtn_momo", "someone_else")


@st.composite
def lane_evidence(draw: st.DrawFn) -> LaneEvidence:
    calls = draw(st.integers(0, 5000))
    remaining = calls
    counts: dict[str, int] = {}
    for name in ("successes", "timeouts", "rate_limited", "not_processed", "ambiguous", "auth_errors"):
        counts[name] = draw(st.integers(0, remaining))
        remaining -= counts[name]
    retries = draw(st.integers(0, calls))
    queries = draw(st.integers(0, 2000))
    hits = draw(st.integers(0, queries))
    samples = draw(st.integers(0, min(calls, 3000)))
    latencies = lognormal_ms(
        draw(st.floats(5.0, 20_000.0)), draw(st.floats(0.01, 1.5)), samples, seed=draw(st.integers(0, 1000))
    )
    return LaneEvidence(
        window_s=draw(st.floats(1.0, 3600.0)),
        latencies_ms=latencies,
        calls=calls,
        retries_sent=retries,
        recovered_on_retry=draw(st.integers(0, retries)),
        retries_exhausted=draw(st.integers(0, calls)),
        status_queries=queries,
        status_cache_hits=hits,
        stale_cache_hits=draw(st.integers(0, hits)),
        long_run_error_rate=draw(st.none() | st.floats(0.0, 1.0)),
        long_run_latency_p50_ms=draw(st.none() | st.floats(1.0, 10_000.0)),
        long_run_latency_p99_ms=draw(st.none() | st.floats(1.0, 20_000.0)),
        long_run_latency_p999_ms=draw(st.none() | st.floats(1.0, 30_000.0)),
        long_run_covered_s=draw(st.none() | st.floats(0.0, 90_000.0)),
        **counts,
    )


@st.composite
def current_tunables(draw: st.DrawFn) -> ProviderTunables:
    return ProviderTunables(
        timeout_s=draw(st.floats(*TIMEOUT_S_BOUNDS)),
        max_attempts=draw(st.integers(*MAX_ATTEMPTS_BOUNDS)),
        rate_limit_per_s=draw(st.floats(*RATE_LIMIT_BOUNDS)),
        status_cache_ttl_s=draw(st.sampled_from([0.0, 0.5, 5.0]) | st.floats(0.0, 3600.0)),
        breaker_failure_rate=draw(st.floats(*BREAKER_FAILURE_RATE_BOUNDS)),
    )


def _safety(parameter: str, value: float) -> float:
    return value * SAFER_DIRECTION[parameter]


def _effective(proposal: Proposal | None, current: ProviderTunables, parameter: str) -> float:
    return proposal.new_value if proposal is not None else float(getattr(current, parameter))


@settings(max_examples=60, deadline=None)
@given(lane_evidence(), current_tunables(), st.sampled_from(PROVIDERS), st.booleans())
def test_proposals_are_bounded_valid_and_deterministic(
    ev: LaneEvidence, current: ProviderTunables, provider: str, conservative: bool
) -> None:
    for tuner in DEFAULT_TUNERS:
        proposal = tuner.propose(provider, current, ev, conservative=conservative)
        again = tuner.propose(provider, current, ev, conservative=conservative)
        assert proposal == again  # deterministic (and no state kept between calls)
        if proposal is None:
            continue
        low, high = parameter_bounds(tuner.parameter)
        assert low <= proposal.new_value <= high
        assert proposal.parameter == tuner.parameter
        assert proposal.old_value == getattr(current, tuner.parameter)
        assert proposal.new_value != proposal.old_value
        assert proposal.reason
        assert all(math.isfinite(v) for v in proposal.evidence.values())
        apply_proposal(current, proposal)  # a valid ProviderTunables


@settings(max_examples=60, deadline=None)
@given(lane_evidence(), current_tunables(), st.sampled_from(PROVIDERS))
def test_conservative_is_never_less_safe_than_normal(
    ev: LaneEvidence, current: ProviderTunables, provider: str
) -> None:
    for tuner in DEFAULT_TUNERS:
        parameter = tuner.parameter
        normal = _effective(tuner.propose(provider, current, ev, conservative=False), current, parameter)
        careful = _effective(tuner.propose(provider, current, ev, conservative=True), current, parameter)
        assert _safety(parameter, careful) >= _safety(parameter, normal) - 1e-12, parameter


@settings(max_examples=60, deadline=None)
@given(lane_evidence(), current_tunables(), st.sampled_from(PROVIDERS))
def test_conservative_never_goes_past_the_default_in_the_unsafe_direction(
    ev: LaneEvidence, current: ProviderTunables, provider: str
) -> None:
    default = default_tunables(provider)
    for tuner in DEFAULT_TUNERS:
        parameter = tuner.parameter
        proposal = tuner.propose(provider, current, ev, conservative=True)
        if proposal is None:
            continue
        if parameter == "max_attempts":
            assert proposal.new_value >= RetryTunerConfig().conservative_min_attempts
            continue
        floor = min(
            _safety(parameter, getattr(current, parameter)), _safety(parameter, getattr(default, parameter))
        )
        assert _safety(parameter, proposal.new_value) >= floor - 1e-12, parameter


HYSTERESIS = {
    "timeout_s": (TimeoutTunerConfig().min_relative_change, TimeoutTunerConfig().min_absolute_change_s),
    "rate_limit_per_s": (RateLimitTunerConfig().min_relative_change, 0.0),
    "status_cache_ttl_s": (
        CacheTtlTunerConfig().min_relative_change,
        CacheTtlTunerConfig().min_absolute_change_s,
    ),
    "breaker_failure_rate": (
        BreakerThresholdTunerConfig().min_relative_change,
        BreakerThresholdTunerConfig().min_absolute_change,
    ),
    "max_attempts": (0.0, 1.0),
}


@settings(max_examples=60, deadline=None)
@given(lane_evidence(), current_tunables(), st.sampled_from(PROVIDERS), st.booleans())
def test_no_proposal_for_a_tiny_change(
    ev: LaneEvidence, current: ProviderTunables, provider: str, conservative: bool
) -> None:
    for tuner in DEFAULT_TUNERS:
        proposal = tuner.propose(provider, current, ev, conservative=conservative)
        if proposal is None:
            continue
        min_relative, min_absolute = HYSTERESIS[tuner.parameter]
        change = abs(proposal.new_value - proposal.old_value)
        assert change >= min_absolute - 1e-9
        assert change >= min_relative * abs(proposal.old_value) - 1e-9


@settings(max_examples=60, deadline=None)
@given(st.floats(20.0, 5000.0), st.floats(0.05, 0.8), st.floats(*TIMEOUT_S_BOUNDS), st.booleans())
def test_timeout_stays_in_its_configured_range(
    median_ms: float, sigma: float, timeout_s: float, conservative: bool
) -> None:
    cfg = TimeoutTunerConfig()
    ev = evidence(latencies_ms=lognormal_ms(median_ms, sigma, 400), calls=400, successes=400)
    proposal = TimeoutTuner(cfg).propose(
        "paystack", tunables(timeout_s=timeout_s), ev, conservative=conservative
    )
    if proposal is not None:
        assert cfg.min_timeout_s <= proposal.new_value <= cfg.max_timeout_s


# -- the breaker's open period -------------------------------------------------------------------


def test_breaker_wait_shortens_when_trials_find_the_provider_back_and_grows_back_when_not() -> None:
    tuner = BreakerWaitTuner()
    current = default_tunables("paystack")
    assert current.breaker_wait_s == 30.0
    assert tuner.propose("paystack", current, evidence(breaker_trials_passed=2), conservative=False) is None
    shorter = tuner.propose("paystack", current, evidence(breaker_trials_passed=5), conservative=False)
    assert shorter is not None and (shorter.old_value, shorter.new_value) == (30.0, 15.0)
    assert "5 of 5 half-open trials found the provider back" in shorter.reason
    floor = current.model_copy(update={"breaker_wait_s": 6.0})
    lowest = tuner.propose("paystack", floor, evidence(breaker_trials_passed=4), conservative=False)
    assert lowest is not None and lowest.new_value == 5.0
    at_floor = current.model_copy(update={"breaker_wait_s": 5.0})
    assert tuner.propose("paystack", at_floor, evidence(breaker_trials_passed=9), conservative=False) is None
    # Conservative mode never shortens it.
    assert tuner.propose("paystack", current, evidence(breaker_trials_passed=5), conservative=True) is None
    # Trials that find it still down grow it back, never past the default.
    longer = tuner.propose("paystack", floor, evidence(breaker_trials_failed=4), conservative=True)
    assert longer is not None and longer.new_value == 12.0
    near = current.model_copy(update={"breaker_wait_s": 20.0})
    capped = tuner.propose("paystack", near, evidence(breaker_trials_failed=4), conservative=False)
    assert capped is not None and capped.new_value == 30.0
    assert tuner.propose("paystack", current, evidence(breaker_trials_failed=4), conservative=False) is None
    # A mixed record says nothing.
    mixed = evidence(breaker_trials_passed=3, breaker_trials_failed=3)
    assert tuner.propose("paystack", near, mixed, conservative=False) is None
    assert widens_safety("breaker_wait_s", 30.0, 15.0) is False
