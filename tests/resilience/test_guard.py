"""The router's per-call guard: the same decisions and figures as breaker, bucket and telemetry
driven one call at a time through permits, with successes buffered in between."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.providers.base import ErrorClass, ProviderError
from mcp_autonomy.resilience.breaker import (
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    Permit,
)
from mcp_autonomy.resilience.guard import (
    BREAKER_OPEN,
    HAND_OVER_AT,
    RATE_LIMITED_LOCALLY,
    CallGuard,
    Ticket,
)
from mcp_autonomy.resilience.rate_limiter import TokenBucket
from mcp_autonomy.telemetry import Outcome, ProviderTelemetry

SLOW_CALL_S = 0.5


class SteppedClock(ManualClock):
    """A manual clock moved synchronously (nothing sleeps on it; hypothesis rules are not coroutines)."""

    def step(self, seconds: float) -> None:
        self._elapsed_s += seconds


class Guarded:
    """Breaker, bucket and telemetry behind a `CallGuard` (the router's path)."""

    def __init__(self, clock: SteppedClock, config: BreakerConfig, rate_per_s: float, burst: float) -> None:
        self.breaker = CircuitBreaker("p", clock, config)
        self.limiter = TokenBucket(rate_per_s, burst, clock)
        self.telemetry = ProviderTelemetry("p", clock)
        self.guard = CallGuard(self.breaker, self.limiter, self.telemetry, clock.monotonic)
        self.events: list[tuple[BreakerState, BreakerState]] = []
        self.breaker.on_transition(self._on_transition)

    def _on_transition(self, event: BreakerTransition) -> None:
        self.events.append((event.from_state, event.to_state))


class Reference(Guarded):
    """The same three driven one call at a time with permits, as the router did before the guard."""

    def __init__(self, clock: SteppedClock, config: BreakerConfig, rate_per_s: float, burst: float) -> None:
        super().__init__(clock, config, rate_per_s, burst)
        self.clock = clock

    def admit(self) -> Permit | str:
        permit = self.breaker.try_acquire()
        if permit is None:
            self.telemetry.record(int(Outcome.REJECTED), 0.0)
            return BREAKER_OPEN
        now = self.clock.monotonic()
        if not self.limiter.try_acquire(1.0, now):
            permit.release()
            self.telemetry.record(int(Outcome.REJECTED), 0.0, now)
            return RATE_LIMITED_LOCALLY
        return permit

    def settle(self, permit: Permit, outcome: str, started_s: float) -> None:
        ended_s = self.clock.monotonic()
        duration_s = ended_s - started_s
        latency_ms = duration_s * 1000.0
        if outcome == "success":
            permit.record(True, duration_s, ended_s)
            self.telemetry.record(int(Outcome.SUCCESS), latency_ms, ended_s)
        elif outcome == "timeout":
            permit.record(False, duration_s)
            self.telemetry.record(int(Outcome.TIMEOUT), latency_ms)
        elif outcome == "release":
            permit.release()
        else:
            error = provider_error(outcome)
            permit.record_error(error, duration_s)
            self.telemetry.record(int(Outcome.from_error_class(error.error_class)), latency_ms)


def provider_error(outcome: str) -> ProviderError:
    return ProviderError("p", ErrorClass(outcome), "scripted")


def settle_guarded(side: Guarded, ticket: Ticket, outcome: str, started_s: float) -> None:
    guard = side.guard
    if outcome == "success":
        guard.settle_success(ticket, started_s)
    elif outcome == "timeout":
        guard.settle_timeout(ticket, started_s)
    elif outcome == "release":
        guard.release(ticket)
    else:
        guard.settle_error(ticket, provider_error(outcome), started_s)


@dataclass
class InFlight:
    ticket: Ticket
    permit: Permit
    started_s: float


ACTIONS = ["force_open", "disable", "metrics_only", "reset", "transition_to_half_open", "trip"]
READS = ["breaker", "telemetry", "outcome_totals", "failing_since", "latency_buckets", "samples", "limiter"]
OUTCOMES = ["success", "timeout", "release", "not_processed", "rate_limited", "invalid_request", "customer"]


@st.composite
def configs(draw: st.DrawFn) -> BreakerConfig:
    buckets = draw(st.integers(1, 5))
    # 7 s buckets end where telemetry's 10 s buckets do not: both deadlines matter.
    bucket_s = draw(st.sampled_from([1.0, 1.0, 7.0]))
    return BreakerConfig(
        failure_rate_threshold=draw(st.sampled_from([0.2, 0.5, 1.0])),
        slow_call_rate_threshold=draw(st.sampled_from([0.5, 1.0])),
        slow_call_duration_s=SLOW_CALL_S,
        minimum_calls=draw(st.integers(1, 5)),
        window_s=buckets * bucket_s,
        bucket_s=bucket_s,
        wait_in_open_s=2.0,
        permitted_half_open_calls=draw(st.integers(1, 3)),
        max_wait_in_open_s=8.0,
        consecutive_failures_to_open=draw(st.sampled_from([0, 2, 3])),
    )


class GuardMachine(RuleBasedStateMachine):
    """Random calls, outcomes, time, reads and operator actions on a guard and on its reference;
    every decision and every figure must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = SteppedClock()
        self.in_flight: list[InFlight] = []

    @initialize(
        config=configs(),
        rate_per_s=st.sampled_from([3.0, 1e6, 1e6]),
        burst=st.sampled_from([1.0, 1e3, 1e3]),
        export=st.sampled_from([False, False, False, True]),
    )
    def build(self, config: BreakerConfig, rate_per_s: float, burst: float, export: bool) -> None:
        self.guarded = Guarded(self.clock, config, rate_per_s, burst)
        self.reference = Reference(self.clock, config, rate_per_s, burst)
        if export:  # a cluster: every call exported with its own time
            self.guarded.telemetry.enable_export()
            self.reference.telemetry.enable_export()

    def begin(self) -> None:
        ticket = self.guarded.guard.admit()
        permit = self.reference.admit()
        if isinstance(permit, str):
            assert ticket == permit
            return
        assert not isinstance(ticket, str), f"the guard refused ({ticket}) a call the reference admitted"
        assert (isinstance(ticket, Permit) and ticket.is_half_open_trial) == permit.is_half_open_trial
        self.in_flight.append(InFlight(ticket, permit, self.clock.monotonic()))

    def finish(self, pick: int, outcome: str, duration_s: float) -> None:
        call = self.in_flight.pop(pick % len(self.in_flight))
        self.clock.step(duration_s)
        settle_guarded(self.guarded, call.ticket, outcome, call.started_s)
        self.reference.settle(call.permit, outcome, call.started_s)

    @rule()
    def start_call(self) -> None:
        self.begin()

    @precondition(lambda self: bool(self.in_flight))
    @rule(
        pick=st.integers(0, 100),
        outcome=st.sampled_from(OUTCOMES),
        duration_s=st.sampled_from([0.0, 0.01, 0.3, 0.6, 1.2]),
    )
    def end_call(self, pick: int, outcome: str, duration_s: float) -> None:
        self.finish(pick, outcome, duration_s)

    @rule(outcome=st.sampled_from(OUTCOMES), duration_s=st.sampled_from([0.0, 0.01, 0.6]))
    def call_through(self, outcome: str, duration_s: float) -> None:
        self.begin()
        if self.in_flight and self.in_flight[-1].started_s == self.clock.monotonic():
            self.finish(len(self.in_flight) - 1, outcome, duration_s)

    @rule(
        calls=st.sampled_from([5, 40, HAND_OVER_AT + 10]),
        gap_s=st.sampled_from([0.001, 0.01]),
        then=st.sampled_from([*ACTIONS, *READS, "retune_breaker", "success", "timeout", "rate_limited"]),
        then_step_s=st.sampled_from([0.0, 11.0, 301.0]),
    )
    def successes(self, calls: int, gap_s: float, then: str, then_step_s: float) -> None:
        """A run of quick successes (the traffic the guard buffers), then something that must
        see them, or end their buffering, in order."""
        for _ in range(calls):
            self.call_through("success", gap_s)
        if then in ACTIONS:
            self.operate(then)
        elif then == "retune_breaker":
            self.retune_breaker(0.1)
        elif then in READS:
            self.read(then)
        else:
            self.step(then_step_s)
            self.call_through(then, 0.6 if then == "success" else 0.0)  # a slow success

    @rule(seconds=st.sampled_from([0.01, 0.3, 1.0, 2.5, 11.0]))
    def step(self, seconds: float) -> None:
        self.clock.step(seconds)

    @rule(action=st.sampled_from([*ACTIONS, "reset", "reset"]))  # operator modes stick until a reset
    def operate(self, action: str) -> None:
        for side in (self.guarded, self.reference):
            getattr(side.breaker, action)("test")

    @rule(threshold=st.sampled_from([0.1, 0.5, 0.9]))
    def retune_breaker(self, threshold: float) -> None:
        for side in (self.guarded, self.reference):
            side.breaker.set_failure_rate_threshold(threshold)

    @rule(rate_per_s=st.sampled_from([2.0, 1e6]))
    def retune_limiter(self, rate_per_s: float) -> None:
        for side in (self.guarded, self.reference):
            side.limiter.set_rate(rate_per_s)

    @rule(what=st.sampled_from(READS))
    def read(self, what: str) -> None:
        """One figure a reader can ask for (each read hands the guard's buffer over on its own)."""
        guarded, reference = self.guarded, self.reference
        if what == "breaker":
            assert guarded.breaker.snapshot() == reference.breaker.snapshot()
        elif what == "telemetry":
            for window_s in (10.0, 60.0, 300.0, 3600.0):
                assert guarded.telemetry.snapshot(window_s) == reference.telemetry.snapshot(window_s)
        elif what == "outcome_totals":
            assert guarded.telemetry.outcome_totals == reference.telemetry.outcome_totals
        elif what == "failing_since":
            assert guarded.telemetry.failing_since() == reference.telemetry.failing_since()
        elif what == "latency_buckets":
            assert guarded.telemetry.latency_bucket_counts == reference.telemetry.latency_bucket_counts
        elif what == "samples":
            assert guarded.telemetry.samples_since(0) == reference.telemetry.samples_since(0)
        else:
            assert guarded.limiter.snapshot() == reference.limiter.snapshot()

    @invariant()
    def same_state_and_transitions(self) -> None:
        # Reading the state hands nothing over: buffered successes stay buffered across checks.
        if hasattr(self, "guarded"):
            assert self.guarded.breaker.state is self.reference.breaker.state
            assert self.guarded.events == self.reference.events

    def teardown(self) -> None:
        if hasattr(self, "guarded"):
            for what in READS:
                self.read(what)


TestGuardMatchesPermits = GuardMachine.TestCase
TestGuardMatchesPermits.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- pinned cases ------------------------------------------------------------------------------------


@pytest.fixture
def stepped() -> SteppedClock:
    return SteppedClock()


def quick_successes(side: Guarded, clock: SteppedClock, calls: int, gap_s: float = 0.001) -> None:
    for _ in range(calls):
        ticket = side.guard.admit()
        assert not isinstance(ticket, str)
        started_s = clock.monotonic()
        clock.step(gap_s)
        side.guard.settle_success(ticket, started_s)


def failures(side: Guarded, clock: SteppedClock, calls: int) -> None:
    for _ in range(calls):
        ticket = side.guard.admit()
        assert not isinstance(ticket, str)
        side.guard.settle_timeout(ticket, clock.monotonic())


def test_reads_count_every_success_the_guard_buffered(stepped: SteppedClock) -> None:
    side = Guarded(stepped, BreakerConfig(minimum_calls=5), 1e6, 1e6)
    quick_successes(side, stepped, 100)
    assert side.breaker.snapshot().calls_in_window == 100
    snap = side.telemetry.snapshot(60.0)
    assert snap.requests == 100 and snap.latency_p50_ms == pytest.approx(1.0, rel=0.011)
    assert side.telemetry.outcome_totals[Outcome.SUCCESS] == 100


def test_buffered_successes_leave_the_window_with_the_bucket_they_were_made_in(
    stepped: SteppedClock,
) -> None:
    """Handed over late (at the read), they still count in their own bucket and expire with it."""
    side = Guarded(stepped, BreakerConfig(minimum_calls=2, window_s=30.0, bucket_s=1.0), 1e6, 1e6)
    quick_successes(side, stepped, 50)  # within the first second
    stepped.step(30.5)  # the first second's bucket has left the 30 s window
    assert side.breaker.snapshot().calls_in_window == 0
    stepped.step(300.0)  # and the 10 s telemetry bucket has left the 5-minute ring
    assert side.telemetry.snapshot(300.0).requests == 0
    assert side.telemetry.snapshot(3600.0).requests == 50  # the hour ring still holds them


def test_successes_are_buffered_only_until_the_first_bucket_of_either_ring_ends(
    stepped: SteppedClock,
) -> None:
    """Breaker buckets of 7 s end at 21 s, telemetry's 10 s bucket at 20 s: a success at 20.5 s
    belongs to telemetry's next bucket, whatever the breaker allows."""
    side = Guarded(stepped, BreakerConfig(minimum_calls=2, window_s=35.0, bucket_s=7.0), 1e6, 1e6)
    stepped.step(19.005)
    quick_successes(side, stepped, 150, gap_s=0.01)  # ending 19.015 s to 20.505 s: 51 after 20 s
    stepped.step(8.5)  # 29 s: a 10 s window is telemetry's [20 s, 30 s) bucket alone
    assert side.telemetry.snapshot(10.0).requests == 51
    assert side.breaker.snapshot().calls_in_window == 150


def test_a_run_of_failures_after_buffered_successes_still_opens(stepped: SteppedClock) -> None:
    side = Guarded(stepped, BreakerConfig(minimum_calls=5, consecutive_failures_to_open=3), 1e6, 1e6)
    quick_successes(side, stepped, 200)
    failures(side, stepped, 2)
    quick_successes(side, stepped, 1)  # breaks the run
    failures(side, stepped, 2)
    assert side.breaker.state is BreakerState.CLOSED
    failures(side, stepped, 1)
    assert side.breaker.state is BreakerState.OPEN
    assert side.breaker.snapshot().calls_in_window == 205 + 1


def test_a_success_that_lifts_the_window_to_minimum_calls_opens_it(stepped: SteppedClock) -> None:
    """Below minimum_calls the guard buffers nothing: the success that makes the window rated
    opens the breaker at once when the failure rate is already over the threshold."""
    side = Guarded(stepped, BreakerConfig(minimum_calls=4, consecutive_failures_to_open=0), 1e6, 1e6)
    failures(side, stepped, 2)
    quick_successes(side, stepped, 1)
    assert side.breaker.state is BreakerState.CLOSED
    quick_successes(side, stepped, 1)  # 2 failed of 4: 50 % >= 50 %
    assert side.breaker.state is BreakerState.OPEN
    assert side.guard.admit() == BREAKER_OPEN


def test_a_lowered_threshold_applies_to_the_next_success(stepped: SteppedClock) -> None:
    side = Guarded(stepped, BreakerConfig(minimum_calls=4, consecutive_failures_to_open=0), 1e6, 1e6)
    quick_successes(side, stepped, 6)
    failures(side, stepped, 2)
    quick_successes(side, stepped, 2)  # 2 of 10 failed: buffered while under 50 %
    side.breaker.set_failure_rate_threshold(0.15)
    assert side.breaker.state is BreakerState.CLOSED
    quick_successes(side, stepped, 1)  # 2 of 11 = 18 % >= 15 %
    assert side.breaker.state is BreakerState.OPEN


def test_half_open_admits_only_the_permitted_trials(stepped: SteppedClock) -> None:
    side = Guarded(
        stepped,
        BreakerConfig(minimum_calls=2, permitted_half_open_calls=2, wait_in_open_s=5.0),
        1e6,
        1e6,
    )
    quick_successes(side, stepped, 20)
    side.breaker.trip("test")
    stepped.step(5.0)
    tickets = [side.guard.admit() for _ in range(5)]
    trials = [t for t in tickets if isinstance(t, Permit)]
    assert len(trials) == 2 and all(t.is_half_open_trial for t in trials)
    assert tickets[2:] == [BREAKER_OPEN] * 3
    side.guard.release(trials[0])  # nothing was sent: its slot is free again
    assert isinstance(side.guard.admit(), Permit)
    assert side.guard.admit() == BREAKER_OPEN


def test_a_local_rate_limit_gives_a_trial_slot_back(stepped: SteppedClock) -> None:
    side = Guarded(stepped, BreakerConfig(permitted_half_open_calls=1, wait_in_open_s=5.0), 1.0, 1.0)
    side.breaker.trip("test")
    stepped.step(5.0)
    first = side.guard.admit()
    assert isinstance(first, Permit)
    side.guard.settle_timeout(first, stepped.monotonic())  # the trial failed: open again
    stepped.step(10.0)
    side.limiter.set_rate(1.0, 1.0)
    assert side.guard.admit() != BREAKER_OPEN  # takes the only token (and the trial slot)
    assert side.breaker.snapshot().half_open_in_flight == 1


def test_exported_calls_keep_their_own_times(stepped: SteppedClock) -> None:
    """A cluster exports each call with its time: nothing is buffered while exporting."""
    side = Guarded(stepped, BreakerConfig(minimum_calls=2), 1e6, 1e6)
    quick_successes(side, stepped, 10)
    side.telemetry.enable_export()
    quick_successes(side, stepped, 5, gap_s=0.25)
    samples, _, _ = side.telemetry.samples_since(0)
    assert [round(at, 3) for at, _, _ in samples] == [0.26, 0.51, 0.76, 1.01, 1.26]
