"""The circuit breaker: thresholds, the half-open trial, operator modes, and a stateful model check."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.providers.base import ErrorClass, ProviderError
from mcp_autonomy.resilience import (
    ALLOWED_TRANSITIONS,
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    Permit,
    counts_as_failure,
)
from mcp_autonomy.resilience.breaker import (
    DEFAULT_BUCKET_S,
    DEFAULT_FAILURE_RATE_THRESHOLD,
    DEFAULT_MAX_WAIT_IN_OPEN_S,
    DEFAULT_MINIMUM_CALLS,
    DEFAULT_PERMITTED_HALF_OPEN_CALLS,
    DEFAULT_SLOW_CALL_DURATION_S,
    DEFAULT_SLOW_CALL_RATE_THRESHOLD,
    DEFAULT_WAIT_IN_OPEN_S,
    DEFAULT_WINDOW_S,
    IllegalTransition,
)

S = BreakerState

# Written out independently of the module's ALLOWED_TRANSITIONS, so a wrong edge there shows up.
EXPECTED_EDGES = {
    (S.CLOSED, S.OPEN),
    (S.OPEN, S.HALF_OPEN),
    (S.HALF_OPEN, S.CLOSED),
    (S.HALF_OPEN, S.OPEN),
    (S.FORCED_OPEN, S.HALF_OPEN),
    # reset()
    (S.OPEN, S.CLOSED),
    (S.FORCED_OPEN, S.CLOSED),
    (S.DISABLED, S.CLOSED),
    (S.METRICS_ONLY, S.CLOSED),
    # force_open(), disable(), metrics_only() from anywhere else
    *((src, dst) for src in S for dst in (S.FORCED_OPEN, S.DISABLED, S.METRICS_ONLY) if src is not dst),
}


def state_of(breaker: CircuitBreaker) -> BreakerState:
    # Read through a call so mypy does not carry a narrowed state across calls that change it.
    return breaker.state


def breaker_with(clock: ManualClock, **overrides: Any) -> tuple[CircuitBreaker, list[BreakerTransition]]:
    """A breaker judged by its window alone unless the test asks for the fast trip."""
    events: list[BreakerTransition] = []
    overrides.setdefault("consecutive_failures_to_open", 0)
    breaker = CircuitBreaker("mpesa", clock, BreakerConfig(**overrides))
    breaker.on_transition(events.append)
    return breaker, events


def call(breaker: CircuitBreaker, success: bool, duration_s: float = 0.1) -> bool:
    """One call through the breaker; False if it was rejected."""
    permit = breaker.try_acquire()
    if permit is None:
        return False
    permit.record(success, duration_s)
    return True


def open_breaker(breaker: CircuitBreaker) -> None:
    while state_of(breaker) is S.CLOSED:
        call(breaker, success=False)
    assert state_of(breaker) is S.OPEN


# -- configuration ----------------------------------------------------------------------------


def test_defaults_are_the_documented_constants() -> None:
    config = BreakerConfig()
    assert config.failure_rate_threshold == DEFAULT_FAILURE_RATE_THRESHOLD == 0.5
    assert config.slow_call_rate_threshold == DEFAULT_SLOW_CALL_RATE_THRESHOLD == 1.0
    assert not config.slow_call_rule_enabled
    assert config.slow_call_duration_s == DEFAULT_SLOW_CALL_DURATION_S
    assert config.minimum_calls == DEFAULT_MINIMUM_CALLS == 10
    assert config.window_s == DEFAULT_WINDOW_S == 30
    assert config.bucket_s == DEFAULT_BUCKET_S == 1
    assert config.bucket_count == 30
    assert config.wait_in_open_s == DEFAULT_WAIT_IN_OPEN_S == 30
    assert config.permitted_half_open_calls == DEFAULT_PERMITTED_HALF_OPEN_CALLS == 1
    assert config.max_wait_in_open_s == DEFAULT_MAX_WAIT_IN_OPEN_S == 300


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"failure_rate_threshold": 0.0}, r"failure_rate_threshold must be in \(0, 1\]"),
        ({"failure_rate_threshold": 1.5}, "failure_rate_threshold"),
        ({"failure_rate_threshold": math.nan}, "failure_rate_threshold"),
        ({"slow_call_rate_threshold": 0.0}, r"slow_call_rate_threshold must be in \(0, 1\]"),
        ({"slow_call_duration_s": 0.0}, "slow_call_duration_s must be a finite number of seconds > 0"),
        ({"slow_call_duration_s": math.inf}, "slow_call_duration_s"),
        ({"minimum_calls": 0}, "minimum_calls must be an integer >= 1"),
        ({"minimum_calls": 2.5}, "minimum_calls"),
        ({"minimum_calls": True}, "minimum_calls"),
        ({"window_s": -1.0}, "window_s must be a finite number"),
        ({"bucket_s": 0.0}, "bucket_s must be a finite number"),
        ({"window_s": 10.0, "bucket_s": 3.0}, r"window_s must be a whole multiple of bucket_s \(3.0\)"),
        ({"window_s": 1.0, "bucket_s": 2.0}, "window_s must be a whole multiple"),
        ({"window_s": 10_000.0, "bucket_s": 1.0}, "window_s must be at most 3600"),
        ({"wait_in_open_s": 0.0}, "wait_in_open_s"),
        ({"permitted_half_open_calls": 0}, "permitted_half_open_calls must be an integer >= 1"),
        ({"max_wait_in_open_s": 10.0}, r"max_wait_in_open_s must be .* >= wait_in_open_s \(30.0\)"),
    ],
)
def test_config_rejects_out_of_range_values_naming_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BreakerConfig(**overrides)


def test_fractional_buckets_are_accepted() -> None:
    assert BreakerConfig(window_s=3.0, bucket_s=0.1).bucket_count == 30


def test_module_edge_table_matches_the_documented_edges() -> None:
    assert set(ALLOWED_TRANSITIONS) == EXPECTED_EDGES


@pytest.mark.parametrize(
    ("source", "target"),
    sorted((s, t) for s in BreakerState for t in BreakerState if s is not t and (s, t) not in EXPECTED_EDGES),
)
def test_an_edge_outside_the_table_is_refused_at_run_time(
    clock: ManualClock, source: BreakerState, target: BreakerState
) -> None:
    breaker = CircuitBreaker("p", clock)
    breaker._state = source  # put it there directly: no public path leads to a forbidden edge
    seen: list[BreakerTransition] = []
    breaker.on_transition(seen.append)
    with pytest.raises(IllegalTransition, match=f"{source} -> {target}"):
        breaker._transition(target, "test")
    assert breaker.state is source and seen == []


# -- closed -> open ---------------------------------------------------------------------------


def test_stays_closed_below_minimum_calls_then_opens_with_measured_reason(clock: ManualClock) -> None:
    breaker, events = breaker_with(clock, minimum_calls=10)
    for _ in range(9):
        call(breaker, success=False)
    snapshot = breaker.snapshot()
    assert snapshot.state is S.CLOSED
    assert snapshot.failure_rate is None  # no rate below minimum_calls
    assert snapshot.failures_in_window == 9
    call(breaker, success=False)
    assert state_of(breaker) is S.OPEN
    assert [(e.from_state, e.to_state) for e in events] == [(S.CLOSED, S.OPEN)]
    assert events[0].name == "mpesa"
    assert events[0].at == clock.now()
    assert "failure rate 100.0% >= 50.0% over 10 calls" in events[0].reason
    assert "open for 30 s" in events[0].reason


def test_opens_at_exactly_the_threshold_not_below(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=10, failure_rate_threshold=0.5)
    for index in range(10):
        call(breaker, success=index % 3 != 0)  # 4 failures of 10: 40 %
    assert state_of(breaker) is S.CLOSED
    assert breaker.snapshot().failure_rate == pytest.approx(0.4)
    call(breaker, success=False)  # 5 of 11: 45 %
    call(breaker, success=False)  # 6 of 12: 50 %
    assert state_of(breaker) is S.OPEN


def test_a_success_that_reaches_minimum_calls_can_open(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=4)
    for _ in range(3):
        call(breaker, success=False)
    call(breaker, success=True)  # 3 of 4 failed
    assert state_of(breaker) is S.OPEN


@pytest.mark.anyio
async def test_failures_expire_from_the_window(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=4, window_s=10.0, bucket_s=1.0)
    for _ in range(3):
        call(breaker, success=False)
    await clock.advance(5.0)
    call(breaker, success=True)
    assert breaker.snapshot().calls_in_window == 4
    assert state_of(breaker) is S.OPEN  # 3 of 4 within 10 s

    breaker, _ = breaker_with(clock, minimum_calls=4, window_s=10.0, bucket_s=1.0)
    for _ in range(3):
        call(breaker, success=False)
    await clock.advance(10.0)  # the three failures' bucket has left the window
    assert breaker.snapshot().calls_in_window == 0
    call(breaker, success=True)
    assert state_of(breaker) is S.CLOSED
    assert breaker.snapshot().failures_in_window == 0


def test_slow_call_rule(clock: ManualClock) -> None:
    breaker, events = breaker_with(
        clock, minimum_calls=4, slow_call_rate_threshold=0.8, slow_call_duration_s=2.0
    )
    for _ in range(3):
        call(breaker, success=True, duration_s=2.5)
    call(breaker, success=True, duration_s=2.0)  # not slower than the limit
    assert state_of(breaker) is S.CLOSED
    assert breaker.snapshot().slow_call_rate == pytest.approx(0.75)
    call(breaker, success=True, duration_s=3.0)  # 4 of 5 slow: 80 %
    assert state_of(breaker) is S.OPEN
    assert "slow-call rate 80.0% >= 80.0%" in events[-1].reason


def test_slow_calls_never_open_when_the_rule_is_off(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=2, slow_call_duration_s=1.0)
    for _ in range(50):
        call(breaker, success=True, duration_s=60.0)
    assert state_of(breaker) is S.CLOSED
    assert breaker.snapshot().slow_call_rate == 1.0


# -- open -> half-open -> closed / open ---------------------------------------------------------


@pytest.mark.anyio
async def test_rejects_while_open_and_moves_to_half_open_lazily(clock: ManualClock) -> None:
    breaker, events = breaker_with(clock, minimum_calls=1, wait_in_open_s=30.0)
    open_breaker(breaker)
    snapshot = breaker.snapshot()
    assert snapshot.opened_at == clock.now()
    assert snapshot.open_until == clock.now() + 30.0
    assert snapshot.times_opened == 1
    await clock.advance(29.5)
    assert breaker.try_acquire() is None
    await clock.advance(0.5)
    assert state_of(breaker) is S.OPEN  # nothing moves it until someone asks
    permit = breaker.try_acquire()
    assert permit is not None and permit.is_half_open_trial
    assert state_of(breaker) is S.HALF_OPEN
    assert events[-1].from_state is S.OPEN and events[-1].to_state is S.HALF_OPEN
    assert breaker.try_acquire() is None  # the single trial slot is taken
    permit.record(True, 0.2)
    assert state_of(breaker) is S.CLOSED
    assert "trial of 1 call(s): 0 failed" in events[-1].reason


@pytest.mark.anyio
async def test_a_closed_breaker_starts_with_an_empty_window(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=3, wait_in_open_s=1.0)
    open_breaker(breaker)
    await clock.advance(1.0)
    trial = breaker.try_acquire()
    assert trial is not None
    trial.record(True, 0.1)
    snapshot = breaker.snapshot()
    assert snapshot.state is S.CLOSED
    assert snapshot.calls_in_window == 0
    assert snapshot.opened_at is None and snapshot.open_until is None


@pytest.mark.anyio
async def test_each_failed_trial_doubles_the_open_time_up_to_the_cap(clock: ManualClock) -> None:
    breaker, events = breaker_with(clock, minimum_calls=1, wait_in_open_s=30.0, max_wait_in_open_s=100.0)
    open_breaker(breaker)
    waits = []
    for _ in range(4):
        snapshot = breaker.snapshot()
        assert snapshot.open_until is not None and snapshot.opened_at is not None
        wait_s = snapshot.open_until - snapshot.opened_at
        waits.append(wait_s)
        await clock.advance(wait_s)
        assert call(breaker, success=False)  # the trial was let through, and failed
        assert state_of(breaker) is S.OPEN
    assert waits == [30.0, 60.0, 100.0, 100.0]
    assert breaker.snapshot().consecutive_reopens == 4
    assert breaker.snapshot().times_opened == 5
    # A successful trial resets the growth.
    await clock.advance(100.0)
    call(breaker, success=True)
    assert state_of(breaker) is S.CLOSED
    open_breaker(breaker)
    snapshot = breaker.snapshot()
    assert snapshot.open_until is not None and snapshot.opened_at is not None
    assert snapshot.open_until - snapshot.opened_at == 30.0
    assert all((e.from_state, e.to_state) in EXPECTED_EDGES for e in events)


@pytest.mark.parametrize(("trial_failures", "expected"), [(0, S.CLOSED), (1, S.CLOSED), (2, S.OPEN)])
@pytest.mark.anyio
async def test_a_trial_of_several_calls_is_judged_on_all_of_them(
    clock: ManualClock, trial_failures: int, expected: BreakerState
) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=1, permitted_half_open_calls=3, wait_in_open_s=5.0)
    open_breaker(breaker)
    await clock.advance(5.0)
    permits = [breaker.try_acquire() for _ in range(4)]
    trials = [p for p in permits if p is not None]
    assert len(trials) == 3 and permits[3] is None
    for index, permit in enumerate(trials):
        assert state_of(breaker) is S.HALF_OPEN  # undecided until all three are in
        permit.record(index >= trial_failures, 0.1)
    assert state_of(breaker) is expected


@pytest.mark.parametrize("permitted", [1, 3])
@pytest.mark.anyio
async def test_half_open_stampede_lets_exactly_the_permitted_calls_through(
    clock: ManualClock, permitted: int
) -> None:
    breaker, _ = breaker_with(
        clock, minimum_calls=1, permitted_half_open_calls=permitted, wait_in_open_s=30.0
    )
    open_breaker(breaker)
    await clock.advance(30.0)
    granted: list[int] = []
    rejected: list[int] = []
    probe_duration_s = 4.0

    async def caller(index: int) -> None:
        await anyio.lowlevel.checkpoint()  # all 100 are scheduled before any of them asks
        permit = breaker.try_acquire()
        if permit is None:
            rejected.append(index)
            return
        granted.append(index)
        await clock.sleep(probe_duration_s)  # a slow probe: the others arrive while it is out
        permit.record(True, probe_duration_s)

    async with anyio.create_task_group() as tg:
        for index in range(100):
            tg.start_soon(caller, index)
        await anyio.wait_all_tasks_blocked()
        assert len(granted) == permitted
        assert len(rejected) == 100 - permitted
        assert breaker.snapshot().half_open_in_flight == permitted
        await clock.advance(probe_duration_s)
    assert state_of(breaker) is S.CLOSED


@pytest.mark.anyio
async def test_releasing_a_trial_permit_frees_its_slot(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=1, wait_in_open_s=1.0)
    open_breaker(breaker)
    await clock.advance(1.0)
    first = breaker.try_acquire()
    assert first is not None
    assert breaker.try_acquire() is None
    first.release()  # cancelled before an answer
    assert breaker.snapshot().half_open_in_flight == 0
    assert state_of(breaker) is S.HALF_OPEN
    second = breaker.try_acquire()
    assert second is not None
    second.record(True, 0.1)
    assert state_of(breaker) is S.CLOSED


@pytest.mark.anyio
async def test_an_invalid_request_releases_instead_of_counting(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=1, wait_in_open_s=1.0)
    open_breaker(breaker)
    await clock.advance(1.0)
    permit = breaker.try_acquire()
    assert permit is not None
    verdict = permit.record_error(ProviderError("mpesa", ErrorClass.INVALID_REQUEST, "bad phone"), 0.1)
    assert verdict is None
    assert state_of(breaker) is S.HALF_OPEN
    assert breaker.snapshot().half_open_in_flight == 0
    permit = breaker.try_acquire()
    assert permit is not None
    assert permit.record_error(ProviderError("mpesa", ErrorClass.NOT_PROCESSED, "down"), 0.1) is True
    assert state_of(breaker) is S.OPEN


@pytest.mark.anyio
async def test_trial_permits_of_an_ended_episode_are_ignored(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=1, wait_in_open_s=1.0)
    open_breaker(breaker)
    await clock.advance(1.0)
    stale = breaker.try_acquire()
    assert stale is not None
    breaker.force_open("incident")
    assert breaker.transition_to_half_open()
    fresh = breaker.try_acquire()
    assert fresh is not None
    stale.record(False, 0.1)  # from the episode force_open ended: must not decide this one
    assert state_of(breaker) is S.HALF_OPEN
    assert breaker.snapshot().half_open_in_flight == 1
    fresh.record(True, 0.1)
    assert state_of(breaker) is S.CLOSED


# -- permits ------------------------------------------------------------------------------------


def test_only_the_first_report_of_a_permit_counts(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock)
    permit = breaker.try_acquire()
    assert isinstance(permit, Permit)
    assert permit.pending and not permit.is_half_open_trial
    permit.record(False, 0.1)
    permit.record(False, 0.1)
    permit.release()
    assert not permit.pending
    assert breaker.snapshot().calls_in_window == 1


def test_outcomes_of_calls_begun_before_a_reset_are_dropped(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=1)
    in_flight = breaker.try_acquire()
    assert in_flight is not None
    breaker.reset()
    in_flight.record(False, 0.1)
    assert breaker.snapshot().calls_in_window == 0
    assert state_of(breaker) is S.CLOSED


# -- operator modes -----------------------------------------------------------------------------


def test_disabled_permits_everything_and_records_nothing(clock: ManualClock) -> None:
    breaker, events = breaker_with(clock, minimum_calls=1)
    breaker.disable()
    for _ in range(100):
        assert call(breaker, success=False)
    assert state_of(breaker) is S.DISABLED
    assert breaker.snapshot().calls_in_window == 0
    assert events[-1].reason == "disable: operator"


def test_a_call_begun_while_closed_records_nothing_once_disabled(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=1)
    permit = breaker.try_acquire()
    assert permit is not None
    breaker.disable()
    permit.record(False, 0.1)
    assert breaker.snapshot().calls_in_window == 0


def test_metrics_only_records_but_never_rejects_or_opens(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=1)
    breaker.metrics_only("shadow rollout")
    for _ in range(20):
        assert call(breaker, success=False)
    snapshot = breaker.snapshot()
    assert snapshot.state is S.METRICS_ONLY
    assert snapshot.failure_rate == 1.0
    assert snapshot.calls_in_window == 20


def test_forced_open_rejects_until_an_operator_moves_it(clock: ManualClock) -> None:
    breaker, events = breaker_with(clock)
    breaker.force_open("provider incident INC-1")
    assert breaker.try_acquire() is None
    assert events[-1].reason == "force_open: provider incident INC-1"
    breaker.force_open()  # already there: no second event
    assert len(events) == 1
    breaker.reset()
    assert state_of(breaker) is S.CLOSED
    assert breaker.try_acquire() is not None


@pytest.mark.parametrize(
    ("prepare", "expected"),
    [
        ("open", True),
        ("force_open", True),
        ("closed", False),
        ("disable", False),
        ("metrics_only", False),
    ],
)
def test_transition_to_half_open_only_from_open_states(
    clock: ManualClock, prepare: str, expected: bool
) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=1)
    if prepare == "open":
        open_breaker(breaker)
    elif prepare != "closed":
        getattr(breaker, prepare)()
    before = breaker.state
    assert breaker.transition_to_half_open() is expected
    assert state_of(breaker) is (S.HALF_OPEN if expected else before)


def test_reset_clears_the_window_and_the_open_time_growth(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=5)
    for _ in range(4):
        call(breaker, success=False)
    breaker.reset()
    snapshot = breaker.snapshot()
    assert snapshot.calls_in_window == 0 and snapshot.state is S.CLOSED


# -- hooks --------------------------------------------------------------------------------------


def test_a_failing_hook_does_not_break_the_caller_and_can_be_removed(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = CircuitBreaker("paystack", clock, BreakerConfig(minimum_calls=1))
    seen: list[BreakerTransition] = []

    def broken(_: BreakerTransition) -> None:
        raise RuntimeError("observer bug")

    unregister_broken = breaker.on_transition(broken)
    unregister_seen = breaker.on_transition(seen.append)
    call(breaker, success=False)
    assert state_of(breaker) is S.OPEN
    assert len(seen) == 1
    assert "transition hook" in caplog.text
    unregister_broken()
    unregister_seen()
    unregister_seen()  # twice is harmless
    breaker.reset()
    assert len(seen) == 1


@pytest.mark.anyio
async def test_a_hook_may_move_the_breaker_during_the_lazy_half_open_move(clock: ManualClock) -> None:
    breaker = CircuitBreaker("paystack", clock, BreakerConfig(minimum_calls=1, wait_in_open_s=1.0))
    call(breaker, success=False)

    def veto(event: BreakerTransition) -> None:
        if event.to_state is S.HALF_OPEN:
            breaker.force_open("operator veto")

    breaker.on_transition(veto)
    await clock.advance(1.0)
    assert breaker.try_acquire() is None
    assert state_of(breaker) is S.FORCED_OPEN


# -- classification -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ProviderError("mpesa", ErrorClass.INVALID_REQUEST, "bad amount"), None),
        (ProviderError("mpesa", ErrorClass.AUTH, "token expired"), True),
        (ProviderError("mpesa", ErrorClass.RATE_LIMITED, "slow down"), None),  # backpressure, not failure
        (ProviderError("mpesa", ErrorClass.NOT_PROCESSED, "system busy"), True),
        (ProviderError("mpesa", ErrorClass.AMBIGUOUS, "502 after send"), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (httpx.ConnectTimeout("connect"), True),
        (httpx.ReadError("reset"), True),
        (ValueError("unexpected"), True),
        (KeyboardInterrupt(), None),
        (BaseExceptionGroup("g", [KeyboardInterrupt()]), None),
        (
            ExceptionGroup("g", [ProviderError("mpesa", ErrorClass.INVALID_REQUEST, "x"), TimeoutError()]),
            True,
        ),
    ],
)
def test_counts_as_failure(error: BaseException, expected: bool | None) -> None:
    assert counts_as_failure(error) is expected


@pytest.mark.anyio
async def test_cancellation_does_not_count() -> None:
    with anyio.move_on_after(0) as scope:
        try:
            await anyio.sleep(1)
        except BaseException as error:
            assert counts_as_failure(error) is None
            raise
    assert scope.cancelled_caught


# -- stateful model check -------------------------------------------------------------------------

EPOCH_S = 1_000_000.0


class SteppedClock(ManualClock):
    """A manual clock the state machine moves synchronously (hypothesis rules are not coroutines).

    Nothing ever sleeps on it, so stepping time needs none of `advance()`'s task scheduling.
    """

    def step(self, seconds: float) -> None:
        self._elapsed_s += seconds


@dataclass
class Outstanding:
    permit: Permit
    kind: str  # "ordinary", "trial" or "disabled"
    window_generation: int
    episode: int


@dataclass
class Model:
    """The breaker's specification, computed the slow and obvious way."""

    config: BreakerConfig
    state: BreakerState = S.CLOSED
    recorded: list[tuple[int, bool, bool]] = field(default_factory=list)  # (bucket, failed, slow)
    window_generation: int = 0
    episode: int = 0
    trial_in_flight: set[int] = field(default_factory=set)
    trial_outcomes: list[tuple[bool, bool]] = field(default_factory=list)  # (failed, slow)
    consecutive_reopens: int = 0
    open_until_s: float = 0.0
    times_opened: int = 0
    consecutive_failures: int = 0

    def bucket(self, now_s: float) -> int:
        return int(now_s // self.config.bucket_s)

    def in_window(self, now_s: float) -> list[tuple[int, bool, bool]]:
        oldest = self.bucket(now_s) - self.config.bucket_count + 1
        return [entry for entry in self.recorded if entry[0] >= oldest]

    def over_threshold(self, outcomes: list[tuple[bool, bool]]) -> bool:
        calls = len(outcomes)
        failure_rate = sum(failed for failed, _ in outcomes) / calls
        slow_rate = sum(slow for _, slow in outcomes) / calls
        return failure_rate >= self.config.failure_rate_threshold or (
            self.config.slow_call_rate_threshold < 1.0 and slow_rate >= self.config.slow_call_rate_threshold
        )

    def clear_window(self) -> None:
        self.recorded = []
        self.window_generation += 1
        self.consecutive_failures = 0

    def move(self, to_state: BreakerState, now_s: float) -> tuple[BreakerState, BreakerState]:
        """Apply a transition's side effects; returns the edge."""
        edge = (self.state, to_state)
        if to_state is S.OPEN:
            if self.state is S.HALF_OPEN:
                self.consecutive_reopens += 1
            wait_s = min(
                self.config.wait_in_open_s * 2**self.consecutive_reopens, self.config.max_wait_in_open_s
            )
            self.open_until_s = now_s + wait_s
            self.times_opened += 1
        if self.state is S.HALF_OPEN and to_state is S.CLOSED:
            self.consecutive_reopens = 0
            self.clear_window()
        if to_state is S.HALF_OPEN:
            self.episode += 1
        self.consecutive_failures = 0
        self.trial_in_flight = set()
        self.trial_outcomes = []
        self.state = to_state
        return edge


@st.composite
def breaker_configs(draw: st.DrawFn) -> BreakerConfig:
    bucket_s = draw(st.sampled_from([0.5, 1.0, 2.0]))
    wait_in_open_s = draw(st.sampled_from([1.0, 2.0, 4.0]))
    return BreakerConfig(
        failure_rate_threshold=draw(st.sampled_from([0.25, 0.5, 0.75, 1.0])),
        slow_call_rate_threshold=draw(st.sampled_from([0.5, 1.0])),
        slow_call_duration_s=1.0,
        minimum_calls=draw(st.integers(1, 5)),
        bucket_s=bucket_s,
        window_s=bucket_s * draw(st.integers(1, 5)),
        wait_in_open_s=wait_in_open_s,
        permitted_half_open_calls=draw(st.integers(1, 3)),
        max_wait_in_open_s=wait_in_open_s * draw(st.sampled_from([1, 4])),
        consecutive_failures_to_open=draw(st.sampled_from([0, 2, 3])),
    )


class BreakerMachine(RuleBasedStateMachine):
    """Drives a breaker with random calls, outcomes, time and operator actions against `Model`."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = SteppedClock(start_epoch_s=EPOCH_S)
        self.events: list[BreakerTransition] = []
        self.outstanding: list[Outstanding] = []
        self.finished: list[Permit] = []

    @initialize(config=breaker_configs())
    def build(self, config: BreakerConfig) -> None:
        self.breaker = CircuitBreaker("model", self.clock, config)
        self.breaker.on_transition(self.events.append)
        self.model = Model(config)

    def expect(self, *edges: tuple[BreakerState, BreakerState]) -> None:
        observed = [(e.from_state, e.to_state) for e in self.events]
        self.events.clear()
        assert observed == list(edges)
        for edge in observed:
            assert edge in EXPECTED_EDGES

    @property
    def now_s(self) -> float:
        return self.clock.monotonic()

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.step(seconds)

    @rule()
    def acquire(self) -> None:
        model = self.model
        edges = []
        if model.state is S.OPEN and self.now_s >= model.open_until_s:
            edges.append(model.move(S.HALF_OPEN, self.now_s))
        permit = self.breaker.try_acquire()
        self.expect(*edges)
        state = model.state
        if state in (S.OPEN, S.FORCED_OPEN):
            assert permit is None, f"a call was permitted while {state}"
            return
        if state is S.HALF_OPEN:
            free = (
                model.config.permitted_half_open_calls
                - len(model.trial_in_flight)
                - len(model.trial_outcomes)
            )
            if free <= 0:
                assert permit is None, "more half-open calls than permitted"
                return
            assert permit is not None and permit.is_half_open_trial
            model.trial_in_flight.add(id(permit))
            self.outstanding.append(Outstanding(permit, "trial", model.window_generation, model.episode))
            return
        assert permit is not None and not permit.is_half_open_trial
        kind = "disabled" if state is S.DISABLED else "ordinary"
        self.outstanding.append(Outstanding(permit, kind, model.window_generation, model.episode))

    @precondition(lambda self: bool(self.outstanding))
    @rule(
        pick=st.integers(0, 1_000),
        outcome=st.sampled_from(["success", "failure", "release"]),
        duration_s=st.sampled_from([0.5, 1.0, 1.5]),
    )
    def report(self, pick: int, outcome: str, duration_s: float) -> None:
        item = self.outstanding.pop(pick % len(self.outstanding))
        model = self.model
        failed, slow = outcome == "failure", duration_s > model.config.slow_call_duration_s
        if outcome == "release":
            item.permit.release()
        else:
            item.permit.record(outcome == "success", duration_s)
        self.finished.append(item.permit)
        edges = []
        if item.kind == "trial":
            if item.episode == model.episode and model.state is S.HALF_OPEN:
                model.trial_in_flight.discard(id(item.permit))
                if outcome != "release":
                    model.trial_outcomes.append((failed, slow))
                if len(model.trial_outcomes) == model.config.permitted_half_open_calls:
                    verdict = S.OPEN if model.over_threshold(model.trial_outcomes) else S.CLOSED
                    edges.append(model.move(verdict, self.now_s))
        elif (
            item.kind == "ordinary"
            and outcome != "release"
            and model.state is not S.DISABLED
            and item.window_generation == model.window_generation
        ):
            model.recorded.append((model.bucket(self.now_s), failed, slow))
            model.consecutive_failures = model.consecutive_failures + 1 if failed else 0
            run = model.config.consecutive_failures_to_open
            window = [(f, s) for _, f, s in model.in_window(self.now_s)]
            fast_trip = bool(run) and model.consecutive_failures >= run
            window_trip = len(window) >= model.config.minimum_calls and model.over_threshold(window)
            if model.state is S.CLOSED and (fast_trip or window_trip):
                edges.append(model.move(S.OPEN, self.now_s))
        self.expect(*edges)

    @rule(
        outcome=st.sampled_from(["success", "failure", "release"]),
        duration_s=st.sampled_from([0.5, 1.0, 1.5]),
    )
    def call_through(self, outcome: str, duration_s: float) -> None:
        """Acquire and report at once: the common case, and it reaches OPEN in few steps."""
        self.acquire()
        if self.outstanding and self.outstanding[-1].permit.pending:
            self.report(len(self.outstanding) - 1, outcome, duration_s)

    @precondition(lambda self: bool(self.finished))
    @rule(pick=st.integers(0, 1_000), success=st.booleans())
    def report_again(self, pick: int, success: bool) -> None:
        before = self.breaker.snapshot()
        self.finished[pick % len(self.finished)].record(success, 9.0)
        assert self.breaker.snapshot() == before
        self.expect()

    @rule(action=st.sampled_from(["force_open", "disable", "metrics_only"]))
    def operator_mode(self, action: str) -> None:
        target = {"force_open": S.FORCED_OPEN, "disable": S.DISABLED, "metrics_only": S.METRICS_ONLY}[action]
        getattr(self.breaker, action)()
        edges = [] if self.model.state is target else [self.model.move(target, self.now_s)]
        self.expect(*edges)

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        model = self.model
        edges = [] if model.state is S.CLOSED else [model.move(S.CLOSED, self.now_s)]
        model.consecutive_reopens = 0
        model.clear_window()
        self.expect(*edges)

    @rule()
    def transition_to_half_open(self) -> None:
        allowed = self.model.state in (S.OPEN, S.FORCED_OPEN)
        assert self.breaker.transition_to_half_open() is allowed
        self.expect(*([self.model.move(S.HALF_OPEN, self.now_s)] if allowed else []))

    @invariant()
    def matches_the_model(self) -> None:
        if not hasattr(self, "model"):
            return
        model = self.model
        snapshot = self.breaker.snapshot()
        assert snapshot.state is model.state
        window = model.in_window(self.now_s)
        calls = len(window)
        failures = sum(failed for _, failed, _ in window)
        slow = sum(is_slow for _, _, is_slow in window)
        assert (snapshot.calls_in_window, snapshot.failures_in_window, snapshot.slow_in_window) == (
            calls,
            failures,
            slow,
        )
        if calls >= model.config.minimum_calls:
            assert snapshot.failure_rate == failures / calls
            assert snapshot.slow_call_rate == slow / calls
        else:
            assert snapshot.failure_rate is None and snapshot.slow_call_rate is None
        assert snapshot.half_open_in_flight <= model.config.permitted_half_open_calls
        if model.state is S.HALF_OPEN:
            assert snapshot.half_open_in_flight == len(model.trial_in_flight)
            assert snapshot.half_open_completed == len(model.trial_outcomes)
        else:
            assert snapshot.half_open_in_flight == 0
        if model.state is S.OPEN:
            assert snapshot.open_until is not None
            assert snapshot.open_until - EPOCH_S == pytest.approx(model.open_until_s)
        assert snapshot.times_opened == model.times_opened
        assert snapshot.consecutive_reopens == model.consecutive_reopens


TestBreakerStateMachine = BreakerMachine.TestCase
TestBreakerStateMachine.settings = settings(
    max_examples=300, stateful_step_count=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- the open period as a live tunable ---------------------------------------------------------


@pytest.mark.anyio
async def test_trials_are_counted_and_the_open_period_changes_from_the_next_opening(
    clock: ManualClock,
) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=2, wait_in_open_s=30.0)
    open_breaker(breaker)
    await clock.advance(30.0)
    assert call(breaker, success=False)  # the trial: still down
    assert (breaker.trials_passed, breaker.trials_failed) == (0, 1)
    await clock.advance(60.0)  # the breaker's own back-off doubled the period
    assert call(breaker, success=True)
    assert state_of(breaker) is S.CLOSED and (breaker.trials_passed, breaker.trials_failed) == (1, 1)

    breaker.set_wait_in_open(10.0)
    assert breaker.config.wait_in_open_s == 10.0
    open_breaker(breaker)
    await clock.advance(9.0)
    assert not call(breaker, success=True)
    await clock.advance(1.0)
    assert call(breaker, success=True) and state_of(breaker) is S.CLOSED
    with pytest.raises(ValueError, match="wait_in_open_s"):
        breaker.set_wait_in_open(0.0)


def test_the_failure_rate_threshold_changes_live_and_keeps_the_window(clock: ManualClock) -> None:
    breaker, _ = breaker_with(clock, minimum_calls=10)
    for success in [False] * 4 + [True] * 6:  # 40 % failed: under the default 50 %
        call(breaker, success=success)
    assert state_of(breaker) is S.CLOSED
    breaker.set_failure_rate_threshold(0.35)
    assert breaker.config.failure_rate_threshold == 0.35
    call(breaker, success=True)  # 4 of 11 (36 %) is over the new threshold: the next outcome opens it
    assert state_of(breaker) is S.OPEN
    with pytest.raises(ValueError, match="failure_rate_threshold"):
        breaker.set_failure_rate_threshold(1.5)


def test_consecutive_failures_open_at_once_and_a_success_resets_the_run(clock: ManualClock) -> None:
    breaker, events = breaker_with(clock, consecutive_failures_to_open=3)
    for success in (False, False, True, False, False):  # the success breaks the run
        call(breaker, success=success)
    assert breaker.snapshot().state is S.CLOSED
    call(breaker, success=False)
    assert breaker.snapshot().state is S.OPEN
    assert events[-1].reason.startswith("3 provider failures in a row")


def test_trip_opens_only_a_closed_breaker(clock: ManualClock) -> None:
    breaker, events = breaker_with(clock)
    assert breaker.trip("2 calls in flight past 3 s") is True
    assert breaker.trip("again") is False
    assert [e.to_state for e in events] == [S.OPEN]
    assert "in flight" in events[0].reason


@pytest.mark.parametrize("value", [1, -1, 2.5])
def test_consecutive_failures_to_open_is_validated(value: Any) -> None:
    with pytest.raises(ValueError, match="consecutive_failures_to_open"):
        BreakerConfig(consecutive_failures_to_open=value)
