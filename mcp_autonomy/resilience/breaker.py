"""A circuit breaker per provider: a time-bucketed failure/slow-call window and a limited half-open trial.

Why our own and not a library's (DESIGN.md section 3): every library measured let a half-open
stampede of 100 callers through and added more overhead per call. This one:

- counts calls, failures and slow calls in a `SlidingTimeWindow` (a ring of `window_s / bucket_s`
  buckets with O(1) running totals, shared with the retry budget and telemetry);
- opens when, with at least `minimum_calls` in the window, the failure rate reaches
  `failure_rate_threshold` or the slow-call rate reaches `slow_call_rate_threshold`;
- after `wait_in_open_s` (doubled on each consecutive failed trial, capped at `max_wait_in_open_s`,
  like Envoy's ejection time x times ejected) lets exactly `permitted_half_open_calls` trial calls
  through, and closes or re-opens on their outcome;
- reads time only through the injected `Clock`, so tests and replays drive it deterministically;
- publishes every state change to hooks registered with `on_transition`, and never logs, raises or
  allocates much on the hot path (`try_acquire` returns `None` to reject);
- refuses, at run time, any state change outside `ALLOWED_TRANSITIONS` (`IllegalTransition`):
  transitions are rare, so the check costs nothing per call;
- lets a caller that keeps the window generation instead of a `Permit` (the router's `CallGuard`)
  buffer successes while none of them could change a decision (`successes_bufferable_until`) and
  hand them over in one `add_buffered_successes`; the breaker calls that caller's flusher before
  it reads or changes anything, so buffered outcomes count in order and in their own bucket.

Classifying a result is the caller's job (M-Pesa reports failures inside HTTP 200 bodies);
`counts_as_failure` gives the default verdict for exceptions.

Not thread-safe by design: it is meant for one event loop, and no method awaits, so no lock is
needed between coroutines.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import ClassVar, Final

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.base import ErrorClass, ProviderError
from mcp_autonomy.resilience.window import MAX_WINDOW_BUCKETS, SlidingTimeWindow

logger = logging.getLogger(__name__)

DEFAULT_FAILURE_RATE_THRESHOLD: Final = 0.5  # resilience4j and Polly default
SLOW_CALL_RATE_THRESHOLD_OFF: Final = 1.0  # this value switches the slow-call rule off
DEFAULT_SLOW_CALL_RATE_THRESHOLD: Final = SLOW_CALL_RATE_THRESHOLD_OFF
DEFAULT_SLOW_CALL_DURATION_S: Final = 5.0  # above a mobile-money API's normal p99
DEFAULT_MINIMUM_CALLS: Final = 10  # fewer calls than this give no rate, so one failure cannot open
DEFAULT_WINDOW_S: Final = 30.0  # Polly's sampling duration
DEFAULT_BUCKET_S: Final = 1.0  # resilience4j's bucket width for time windows
DEFAULT_WAIT_IN_OPEN_S: Final = 30.0  # Envoy's base ejection time
DEFAULT_PERMITTED_HALF_OPEN_CALLS: Final = 1  # Polly: exactly one probe
DEFAULT_MAX_WAIT_IN_OPEN_S: Final = 300.0  # Envoy's max ejection time
DEFAULT_CONSECUTIVE_FAILURES_TO_OPEN: Final = 3
"""The fast trip beside the window: this many provider failures in a row, with no success between
them, open the breaker at once (0 switches it off). Envoy's outlier detection ejects on 5
consecutive 5xx, for a host among many; here every failure that may have been processed leaves a
payment `unknown` until its provider answers, while a false trip only sends traffic to the backup
until a half-open probe brings it back, so the rule trips earlier. At 100 payments a minute the
30 s window needs ~6 s (10 calls at 50 %); three in a row take ~2 s."""
MAX_BUCKETS: Final = (
    MAX_WINDOW_BUCKETS  # bounds the ring's memory and the cost of expiring it after idle time
)
_MAX_BACKOFF_EXPONENT: Final = 62  # 2**62 x any positive wait is past any cap; avoids float overflow


class BreakerState(StrEnum):
    """Where a breaker stands.

    CLOSED, OPEN and HALF_OPEN are automatic; DISABLED (permit all, record nothing), FORCED_OPEN
    (reject all) and METRICS_ONLY (record, never reject or open) are set by an operator and left
    only by an operator.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"
    FORCED_OPEN = "forced_open"
    METRICS_ONLY = "metrics_only"


# Module-level aliases: an identity test against a global is cheaper than an enum attribute lookup
# on the hot path.
_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN
_DISABLED: Final = BreakerState.DISABLED
_FORCED_OPEN: Final = BreakerState.FORCED_OPEN
_METRICS_ONLY: Final = BreakerState.METRICS_ONLY

# The edges a breaker may take. Automatic: CLOSED -> OPEN -> HALF_OPEN -> CLOSED | OPEN. Operator
# controls add the rest; an operator mode (DISABLED, FORCED_OPEN, METRICS_ONLY) is never left
# automatically.
ALLOWED_TRANSITIONS: Final[frozenset[tuple[BreakerState, BreakerState]]] = frozenset(
    {
        (_CLOSED, _OPEN),
        (_OPEN, _HALF_OPEN),
        (_HALF_OPEN, _CLOSED),
        (_HALF_OPEN, _OPEN),
        (_FORCED_OPEN, _HALF_OPEN),
    }
    | {(source, _CLOSED) for source in BreakerState if source is not _CLOSED}
    | {
        (source, target)
        for source in BreakerState
        for target in (_DISABLED, _FORCED_OPEN, _METRICS_ONLY)
        if source is not target
    }
)


class IllegalTransition(RuntimeError):
    """A state change outside `ALLOWED_TRANSITIONS` was attempted (a bug, never a provider's doing)."""


# The window's counter fields.
_CALLS: Final = 0
_FAILURES: Final = 1
_SLOW: Final = 2


def _require(condition: bool, field: str, allowed: str, value: object) -> None:
    if not condition:
        raise ValueError(f"{field} must be {allowed}, got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How a breaker judges a provider; every default is a named constant above.

    A call is slow when it takes longer than `slow_call_duration_s`. The window holds the current
    bucket and the `window_s / bucket_s - 1` before it, so it spans between `window_s - bucket_s`
    and `window_s` seconds. A rate is `>=`-compared with its threshold; a slow-call threshold of
    1.0 switches the slow-call rule off.
    """

    failure_rate_threshold: float = DEFAULT_FAILURE_RATE_THRESHOLD
    slow_call_rate_threshold: float = DEFAULT_SLOW_CALL_RATE_THRESHOLD
    slow_call_duration_s: float = DEFAULT_SLOW_CALL_DURATION_S
    minimum_calls: int = DEFAULT_MINIMUM_CALLS
    window_s: float = DEFAULT_WINDOW_S
    bucket_s: float = DEFAULT_BUCKET_S
    wait_in_open_s: float = DEFAULT_WAIT_IN_OPEN_S
    permitted_half_open_calls: int = DEFAULT_PERMITTED_HALF_OPEN_CALLS
    max_wait_in_open_s: float = DEFAULT_MAX_WAIT_IN_OPEN_S
    consecutive_failures_to_open: int = DEFAULT_CONSECUTIVE_FAILURES_TO_OPEN

    def __post_init__(self) -> None:
        rate = self.failure_rate_threshold
        _require(_is_number(rate) and 0 < rate <= 1, "failure_rate_threshold", "in (0, 1]", rate)
        rate = self.slow_call_rate_threshold
        _require(
            _is_number(rate) and 0 < rate <= 1, "slow_call_rate_threshold", "in (0, 1] (1.0 = off)", rate
        )
        for field in ("slow_call_duration_s", "window_s", "bucket_s", "wait_in_open_s"):
            value = getattr(self, field)
            _require(_is_number(value) and value > 0, field, "a finite number of seconds > 0", value)
        for field in ("minimum_calls", "permitted_half_open_calls"):
            value = getattr(self, field)
            _require(_is_count(value) and value >= 1, field, "an integer >= 1", value)
        value = self.consecutive_failures_to_open
        _require(
            _is_count(value) and (value == 0 or value >= 2),
            "consecutive_failures_to_open",
            "0 (off) or an integer >= 2",
            value,
        )
        _require(
            _is_number(self.max_wait_in_open_s) and self.max_wait_in_open_s >= self.wait_in_open_s,
            "max_wait_in_open_s",
            f"a finite number of seconds >= wait_in_open_s ({self.wait_in_open_s})",
            self.max_wait_in_open_s,
        )
        buckets = round(self.window_s / self.bucket_s)
        _require(
            buckets >= 1 and math.isclose(buckets * self.bucket_s, self.window_s, rel_tol=1e-9),
            "window_s",
            f"a whole multiple of bucket_s ({self.bucket_s})",
            self.window_s,
        )
        _require(
            buckets <= MAX_BUCKETS,
            "window_s",
            f"at most {MAX_BUCKETS} x bucket_s ({MAX_BUCKETS * self.bucket_s} s)",
            self.window_s,
        )

    @property
    def bucket_count(self) -> int:
        """How many buckets the window ring holds."""
        return round(self.window_s / self.bucket_s)

    @property
    def slow_call_rule_enabled(self) -> bool:
        """False when the slow-call threshold is the 'off' value 1.0."""
        return self.slow_call_rate_threshold < SLOW_CALL_RATE_THRESHOLD_OFF


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One state change: which breaker, from where to where, why (with the measured figures), when.

    `at` is wall-clock epoch seconds from the injected clock.
    """

    name: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What a breaker knows right now, all measured.

    Rates are `None` while the window holds fewer than `minimum_calls` calls. `opened_at` and
    `open_until` are wall-clock epoch seconds, set only while the state is OPEN; the move to
    HALF_OPEN happens on the first `try_acquire` after `open_until`, so a snapshot may show OPEN
    with `open_until` already past.
    """

    name: str
    state: BreakerState
    failure_rate: float | None
    slow_call_rate: float | None
    calls_in_window: int
    failures_in_window: int
    slow_in_window: int
    half_open_in_flight: int
    half_open_completed: int
    opened_at: float | None
    open_until: float | None
    times_opened: int
    consecutive_reopens: int


TransitionHook = Callable[[BreakerTransition], None]
Flusher = Callable[[], None]
"""Hands buffered successes over (`add_buffered_successes`); called before the breaker reads or
changes its window, its run of failures or its state."""


class Permit:
    """Leave to make one call through a breaker; report its outcome exactly once.

    Handed out by `CircuitBreaker.try_acquire`, never built by callers. `record(success,
    duration_s)` reports the outcome; `release()` gives the permit back without one (cancellation,
    or an outcome that says nothing about the provider such as an `invalid_request` error), which
    frees a half-open trial slot. Only the first report counts, so `release()` in a `finally` after
    `record()` is safe.
    """

    # No __init__: on CPython a class call that runs no Python-level __init__ costs a fraction of
    # one that does, and try_acquire fills the two slots itself. `_breaker` doubles as the
    # "not yet reported" flag: it is dropped on the first report.
    __slots__ = ("_breaker", "_window_generation")

    _breaker: CircuitBreaker | None
    _window_generation: int
    _is_trial: ClassVar[bool] = False

    @property
    def is_half_open_trial(self) -> bool:
        """True if this permit is one of the half-open trial calls."""
        return self._is_trial

    @property
    def pending(self) -> bool:
        """True until the outcome is recorded or the permit released."""
        return self._breaker is not None

    def record(self, success: bool, duration_s: float, now_s: float | None = None) -> None:
        """Report the call's outcome and how long it took (for slow-call detection).

        `now_s`: the clock's monotonic time, when the caller has just read it (saves a read).
        """
        breaker = self._breaker
        if breaker is not None:
            self._breaker = None
            breaker.record_ordinary(self._window_generation, success, duration_s, now_s)

    def record_error(self, error: BaseException, duration_s: float) -> bool | None:
        """Report a call that raised, classified by `counts_as_failure`; returns the verdict.

        An error that does not count (`None`) releases the permit instead.
        """
        verdict = counts_as_failure(error)
        if verdict is None:
            self.release()
        else:
            self.record(not verdict, duration_s)
        return verdict

    def release(self) -> None:
        """Give the permit back without an outcome."""
        self._breaker = None


class _TrialPermit(Permit):
    """A half-open trial permit: its outcome decides the trial, and releasing it frees a slot."""

    __slots__ = ("_epoch",)

    _epoch: int
    _is_trial: ClassVar[bool] = True

    def record(self, success: bool, duration_s: float, now_s: float | None = None) -> None:
        breaker = self._breaker
        if breaker is not None:
            self._breaker = None
            breaker._on_trial_outcome(self._epoch, success, duration_s)

    def release(self) -> None:
        breaker = self._breaker
        if breaker is not None:
            self._breaker = None
            breaker._on_trial_release(self._epoch)


class CircuitBreaker:
    """A per-provider circuit breaker over a time-bucketed sliding window (see the module docstring).

    Hot path: `permit = breaker.try_acquire()`; `None` means rejected; otherwise make the call and
    `permit.record(success, duration_s)` (or `permit.release()`).
    """

    __slots__ = (
        "_clock",
        "_config",
        "_consecutive_failures",
        "_consecutive_reopens",
        "_consecutive_to_open",
        "_disabled_permit",
        "_epoch",
        "_failure_rate_threshold",
        "_flushers",
        "_half_open_completed",
        "_half_open_failures",
        "_half_open_in_flight",
        "_half_open_slow",
        "_hooks",
        "_minimum_calls",
        "_monotonic",
        "_name",
        "_open_until_mono",
        "_opened_at_mono",
        "_permitted_half_open_calls",
        "_slow_call_duration_s",
        "_slow_call_rate_threshold",
        "_slow_rule",
        "_state",
        "_times_opened",
        "_trials_failed",
        "_trials_passed",
        "_window",
        "_window_generation",
    )

    def __init__(self, name: str, clock: Clock, config: BreakerConfig | None = None) -> None:
        cfg = config if config is not None else BreakerConfig()
        self._name = name
        self._clock = clock
        self._config = cfg
        # Copies of hot config fields and the bound clock method: attribute hops cost on every call.
        self._monotonic = clock.monotonic
        self._minimum_calls = cfg.minimum_calls
        self._failure_rate_threshold = cfg.failure_rate_threshold
        self._slow_call_rate_threshold = cfg.slow_call_rate_threshold
        self._slow_call_duration_s = cfg.slow_call_duration_s
        self._slow_rule = cfg.slow_call_rule_enabled
        self._permitted_half_open_calls = cfg.permitted_half_open_calls
        self._consecutive_to_open = cfg.consecutive_failures_to_open
        self._consecutive_failures = 0
        self._hooks: list[TransitionHook] = []
        self._flushers: list[Flusher] = []
        self._state = _CLOSED
        # Bumped on every transition; a trial permit from an earlier half-open episode is ignored.
        self._epoch = 0
        # Bumped whenever the window is cleared; outcomes of calls begun before are dropped.
        self._window_generation = 0
        self._half_open_in_flight = 0
        self._half_open_completed = 0
        self._half_open_failures = 0
        self._half_open_slow = 0
        self._opened_at_mono = 0.0
        self._open_until_mono = 0.0
        self._times_opened = 0
        self._consecutive_reopens = 0
        self._trials_passed = 0  # half-open episodes that closed the breaker
        self._trials_failed = 0  # half-open episodes that re-opened it
        # DISABLED hands out one shared permit that was never linked to the breaker, so every
        # report on it is dropped without a branch in the hot path.
        self._disabled_permit = Permit()
        self._disabled_permit._breaker = None
        self._window = SlidingTimeWindow(clock, window_s=cfg.window_s, bucket_s=cfg.bucket_s, fields=3)
        self._clear_window()

    # -- read-only views ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The breaker's name (the provider it guards)."""
        return self._name

    @property
    def config(self) -> BreakerConfig:
        """The configuration it was built with (and `set_wait_in_open` or
        `set_failure_rate_threshold` changed since)."""
        return self._config

    @property
    def window_generation(self) -> int:
        """Bumped whenever the window is cleared: outcomes of calls admitted before are dropped."""
        return self._window_generation

    @property
    def trials_passed(self) -> int:
        """Half-open trials that closed the breaker (the provider was back when it was asked)."""
        return self._trials_passed

    @property
    def trials_failed(self) -> int:
        """Half-open trials that re-opened it (the provider was still down)."""
        return self._trials_failed

    def set_wait_in_open(self, wait_s: float) -> None:
        """Change the base open period from the next opening on (the optimizer's live path).

        Raises `ValueError` naming the field for a value that is not a finite number > 0.
        """
        self._config = replace(
            self._config,
            wait_in_open_s=wait_s,
            max_wait_in_open_s=max(self._config.max_wait_in_open_s, wait_s),
        )

    def set_failure_rate_threshold(self, threshold: float) -> None:
        """Change the failure-rate threshold from the next outcome on (the optimizer's live path).

        The window keeps its counts: a window already over the new threshold opens the breaker
        on the next outcome recorded. Raises `ValueError` naming the field for a value outside
        (0, 1].
        """
        config = replace(self._config, failure_rate_threshold=threshold)
        self._flush_buffered()  # buffering was judged against the old threshold
        self._config = config
        self._failure_rate_threshold = config.failure_rate_threshold

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN moves to HALF_OPEN lazily, on the next `try_acquire`)."""
        return self._state

    def snapshot(self) -> BreakerSnapshot:
        """The state and the window's figures as of now."""
        self._flush_buffered()
        calls, failures, slow = self._window.totals_at(self._monotonic())
        rated = calls >= self._minimum_calls
        is_open = self._state is _OPEN
        wall_offset = self._clock.now() - self._monotonic()
        return BreakerSnapshot(
            name=self._name,
            state=self._state,
            failure_rate=failures / calls if rated else None,
            slow_call_rate=slow / calls if rated else None,
            calls_in_window=int(calls),
            failures_in_window=int(failures),
            slow_in_window=int(slow),
            half_open_in_flight=self._half_open_in_flight,
            half_open_completed=self._half_open_completed,
            opened_at=self._opened_at_mono + wall_offset if is_open else None,
            open_until=self._open_until_mono + wall_offset if is_open else None,
            times_opened=self._times_opened,
            consecutive_reopens=self._consecutive_reopens,
        )

    # -- hot path -----------------------------------------------------------------------------

    def try_acquire(self) -> Permit | None:
        """A permit to make one call, or `None` if the breaker rejects it. Never raises."""
        state = self._state
        if state is _CLOSED or state is _METRICS_ONLY:
            permit = Permit()
            permit._breaker = self
            permit._window_generation = self._window_generation
            return permit
        if state is _HALF_OPEN:
            if self._half_open_in_flight + self._half_open_completed >= self._permitted_half_open_calls:
                return None
            self._half_open_in_flight += 1
            trial = _TrialPermit()
            trial._breaker = self
            trial._epoch = self._epoch
            return trial
        if state is _OPEN:
            if self._monotonic() < self._open_until_mono:
                return None
            self._transition(
                _HALF_OPEN,
                f"open for {self._monotonic() - self._opened_at_mono:.3f} s; "
                f"trying {self._permitted_half_open_calls} call(s)",
            )
            # Re-dispatch: a transition hook may have moved the breaker on again.
            return self.try_acquire()
        if state is _DISABLED:
            return self._disabled_permit
        return None  # FORCED_OPEN

    def record_ordinary(
        self, window_generation: int, success: bool, duration_s: float, now_s: float | None = None
    ) -> None:
        """Count an ordinary (not half-open trial) call's outcome and open if a threshold is crossed.

        What `Permit.record` does, for a caller that kept the `window_generation` of the moment it
        was admitted (in CLOSED or METRICS_ONLY) instead of a `Permit`; report each call once.
        `now_s`: the clock's monotonic time, when the caller has just read it.
        """
        if self._flushers:
            self._flush_buffered()
        state = self._state
        if state is _DISABLED or window_generation != self._window_generation:
            return  # recording is off, or the window was cleared after the call began
        now = self._monotonic() if now_s is None else now_s
        window = self._window
        if now >= window.head_end_s:
            window.advance(now)
        # The window's fast path: write the head bucket and the totals directly (one attribute
        # read each instead of a method call per field).
        row = window.head_row
        totals = window.totals
        row[_CALLS] += 1
        totals[_CALLS] += 1
        calls = totals[_CALLS]
        if duration_s > self._slow_call_duration_s:
            row[_SLOW] += 1
            totals[_SLOW] += 1
        if success:
            self._consecutive_failures = 0
        else:
            row[_FAILURES] += 1
            totals[_FAILURES] += 1
            consecutive = self._consecutive_failures + 1
            self._consecutive_failures = consecutive
            if state is _CLOSED and self._consecutive_to_open and consecutive >= self._consecutive_to_open:
                self._open(f"{self._consecutive_to_open} provider failures in a row")
                return
        # Checked on every outcome, not only failures: a success can lift the window past
        # minimum_calls while the rate is already over the threshold.
        if (
            state is _CLOSED
            and calls >= self._minimum_calls
            and self._rates_reach_thresholds(calls, totals[_FAILURES], totals[_SLOW])
        ):
            self._open_on_window(int(calls))

    def _rates_reach_thresholds(self, calls: float, failures: float, slow: float) -> bool:
        """The window rule (for `calls` > 0): the failure or the slow-call rate at its threshold."""
        return failures / calls >= self._failure_rate_threshold or (
            self._slow_rule and slow / calls >= self._slow_call_rate_threshold
        )

    # -- buffered successes (the router's CallGuard) ----------------------------------------------

    def add_flusher(self, flush: Flusher) -> None:
        """Register a caller that buffers successes: `flush` hands them over (with
        `add_buffered_successes`) and is called before the breaker reads or changes its window,
        its run of failures or its state, so a buffer never outlives the conditions it was
        allowed under (`successes_bufferable_until`)."""
        self._flushers.append(flush)

    def _flush_buffered(self) -> None:
        for flush in self._flushers:
            flush()

    def successes_bufferable_until(self, window_generation: int, now_s: float) -> float | None:
        """Until when (monotonic) successes of calls admitted under `window_generation` may be
        buffered and counted later with one `add_buffered_successes`; None when they may not.

        Only while CLOSED with both rates below their thresholds (an empty window has no rate): a
        success no slower than `slow_call_duration_s` only lowers the rates, whether or not the
        window holds `minimum_calls` yet, so none of the buffered ones could have opened the
        breaker and buffering changes no decision. Only until the head bucket ends, because they are counted in it. Anything that
        could change the verdict first calls the flushers (a transition, a cleared window, a new
        threshold, another outcome, a snapshot).
        """
        if self._state is not _CLOSED or window_generation != self._window_generation:
            return None
        window = self._window
        if now_s >= window.head_end_s:
            return None  # the head bucket is over: the next outcome moves the window first
        calls, failures, slow = window.totals
        if calls and self._rates_reach_thresholds(calls, failures, slow):
            return None
        return window.head_end_s

    def add_buffered_successes(self, window_generation: int, count: int) -> None:
        """Count `count` successes, none of them slow, made in the head bucket by calls admitted
        under `window_generation` while `successes_bufferable_until` allowed it (so no threshold
        check: they cannot have opened the breaker). Calls no flusher."""
        if count <= 0 or self._state is _DISABLED or window_generation != self._window_generation:
            return
        window = self._window
        window.head_row[_CALLS] += count
        window.totals[_CALLS] += count
        self._consecutive_failures = 0

    def _on_trial_release(self, epoch: int) -> None:
        if epoch == self._epoch and self._state is _HALF_OPEN:
            self._half_open_in_flight -= 1

    # -- window ----------------------------------------------------------------------------------

    def _clear_window(self) -> None:
        if self._flushers:
            self._flush_buffered()
        self._window.clear()
        self._window_generation += 1
        self._consecutive_failures = 0

    # -- automatic transitions -----------------------------------------------------------------

    def _open_on_window(self, calls: int) -> None:
        _, failures, slow = self._window.totals
        failure_rate = failures / calls
        slow_rate = slow / calls
        if failure_rate >= self._failure_rate_threshold:
            rule = f"failure rate {failure_rate:.1%} >= {self._failure_rate_threshold:.1%}"
        else:
            rule = f"slow-call rate {slow_rate:.1%} >= {self._slow_call_rate_threshold:.1%}"
        self._open(
            f"{rule} over {calls} calls in the last {self._config.window_s:g} s "
            f"({int(failures)} failed, {int(slow)} slower than "
            f"{self._slow_call_duration_s:g} s)"
        )

    def _on_trial_outcome(self, epoch: int, success: bool, duration_s: float) -> None:
        """Count a trial call's outcome; when all trial calls are in, close or re-open."""
        if epoch != self._epoch or self._state is not _HALF_OPEN:
            return  # a trial from an episode an operator (or a hook) already ended
        slow = duration_s > self._slow_call_duration_s
        self._half_open_in_flight -= 1
        self._half_open_completed += 1
        if not success:
            self._half_open_failures += 1
        if slow:
            self._half_open_slow += 1
        trial_calls = self._half_open_completed
        if trial_calls < self._permitted_half_open_calls:
            return
        failure_rate = self._half_open_failures / trial_calls
        slow_rate = self._half_open_slow / trial_calls
        figures = (
            f"trial of {trial_calls} call(s): {self._half_open_failures} failed ({failure_rate:.1%}), "
            f"{self._half_open_slow} slow ({slow_rate:.1%})"
        )
        if failure_rate >= self._failure_rate_threshold:
            self._consecutive_reopens += 1
            self._trials_failed += 1
            self._open(f"{figures}; failure rate >= {self._failure_rate_threshold:.1%}")
        elif self._slow_rule and slow_rate >= self._slow_call_rate_threshold:
            self._consecutive_reopens += 1
            self._trials_failed += 1
            self._open(f"{figures}; slow-call rate >= {self._slow_call_rate_threshold:.1%}")
        else:
            self._consecutive_reopens = 0
            self._trials_passed += 1
            self._clear_window()
            self._transition(_CLOSED, f"{figures}; below thresholds")

    def trip(self, reason: str) -> bool:
        """Open now on evidence the window cannot hold yet (calls hung past the slow threshold
        while still in flight); only from CLOSED. Returns True if it opened."""
        if self._state is not _CLOSED:
            return False
        self._open(reason)
        return True

    def _open(self, reason: str) -> None:
        exponent = min(self._consecutive_reopens, _MAX_BACKOFF_EXPONENT)
        wait_s = min(self._config.wait_in_open_s * 2.0**exponent, self._config.max_wait_in_open_s)
        now = self._monotonic()
        self._opened_at_mono = now
        self._open_until_mono = now + wait_s
        self._times_opened += 1
        self._transition(_OPEN, f"{reason}; open for {wait_s:g} s")

    def _transition(self, to_state: BreakerState, reason: str) -> None:
        from_state = self._state
        if (from_state, to_state) not in ALLOWED_TRANSITIONS:
            raise IllegalTransition(
                f"breaker {self._name}: {from_state} -> {to_state} is not allowed ({reason})"
            )
        self._flush_buffered()  # successes made in the old state count before it ends
        self._state = to_state
        self._epoch += 1
        self._consecutive_failures = 0  # a run of failures counts within one state only
        self._half_open_in_flight = 0
        self._half_open_completed = 0
        self._half_open_failures = 0
        self._half_open_slow = 0
        if not self._hooks:
            return
        event = BreakerTransition(self._name, from_state, to_state, reason, self._clock.now())
        for hook in tuple(self._hooks):
            try:
                hook(event)
            except Exception:
                # A broken observer must not break the call that crossed the threshold. Transitions
                # are rare, so logging here is off the per-call path.
                logger.exception("breaker %s: transition hook %r failed", self._name, hook)

    # -- operator controls ------------------------------------------------------------------------

    def on_transition(self, hook: TransitionHook) -> Callable[[], None]:
        """Call `hook` with every state change; returns a function that unregisters it."""
        self._hooks.append(hook)

        def unregister() -> None:
            if hook in self._hooks:
                self._hooks.remove(hook)

        return unregister

    def force_open(self, reason: str = "operator") -> None:
        """Reject every call until an operator moves the breaker on."""
        if self._state is not _FORCED_OPEN:
            self._transition(_FORCED_OPEN, f"force_open: {reason}")

    def disable(self, reason: str = "operator") -> None:
        """Permit every call and record nothing."""
        if self._state is not _DISABLED:
            self._transition(_DISABLED, f"disable: {reason}")

    def metrics_only(self, reason: str = "operator") -> None:
        """Record outcomes in the window but never reject or open (a shadow mode)."""
        if self._state is not _METRICS_ONLY:
            self._transition(_METRICS_ONLY, f"metrics_only: {reason}")

    def reset(self, reason: str = "operator") -> None:
        """Back to CLOSED with an empty window and no open-time growth.

        Outcomes of calls already in flight are dropped: they describe the provider before the reset.
        """
        self._consecutive_reopens = 0
        self._clear_window()
        if self._state is not _CLOSED:
            self._transition(_CLOSED, f"reset: {reason}")

    def transition_to_half_open(self, reason: str = "healer probe succeeded") -> bool:
        """Start a half-open trial now (from OPEN or FORCED_OPEN); returns whether it did.

        Used by healing after a successful probe, so traffic resumes without waiting out
        `open_until`. CLOSED, HALF_OPEN and the operator's DISABLED and METRICS_ONLY are left
        alone.
        """
        if self._state is _OPEN or self._state is _FORCED_OPEN:
            self._transition(_HALF_OPEN, f"transition_to_half_open: {reason}")
            return True
        return False


_NOT_PROVIDER_FAILURES: Final = frozenset(
    {ErrorClass.INVALID_REQUEST, ErrorClass.RATE_LIMITED, ErrorClass.CUSTOMER}
)


def counts_as_failure(error: BaseException) -> bool | None:
    """Whether an exception from a guarded call counts against the provider.

    `None` means do not count it (release the permit): an `invalid_request` is our fault, a
    `customer` error is the customer's own state (busy, no funds), not the provider's, a
    `rate_limited` answer (HTTP 429) is a healthy provider asking us to slow down (the rate
    limiter's multiplicative decrease and the answer's Retry-After handle it; opening the breaker
    on it would turn throttling into an outage of our own making), and a cancellation or
    interpreter exit says nothing about the provider. Every other provider error class, timeouts
    and connection errors count. Any other `Exception` counts too, because the
    breaker's job is to stop hammering a dependency whose calls keep failing, whatever the cause.
    A group counts if any member counts.
    """
    if isinstance(error, ProviderError):
        return None if error.error_class in _NOT_PROVIDER_FAILURES else True
    if isinstance(error, BaseExceptionGroup):
        verdicts = [counts_as_failure(member) for member in error.exceptions]
        if True in verdicts:
            return True
        return False if False in verdicts else None
    # Timeouts, connection errors (httpx's transport errors included) and anything unexpected.
    return True if isinstance(error, Exception) else None
