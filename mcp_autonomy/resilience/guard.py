"""The guard around every provider call: one object per lane for breaker, token bucket and telemetry.

`admit()` before the call and `settle_success()` (or `settle_timeout`, `settle_error`, `release`)
after it: one call and one clock read per side, no `Permit` allocated while the breaker is CLOSED
(the ticket is the breaker's window generation, an int), and a rejection returned as its reason,
never raised.

Successes are the bulk of the traffic, so the guard buffers them while none could change a
decision: the breaker is CLOSED with its rates below their thresholds (a success only lowers
them) and the breaker's and telemetry's open buckets have not ended
(`successes_bufferable_until`). A buffered success costs a list append; the buffer is handed over
(`add_buffered_successes`) every `HAND_OVER_AT` calls and whenever the breaker or telemetry is
about to read or change anything (they call the guard's `fold` first), so every figure stays
exact and every outcome counts in order and in its own bucket. Every other outcome, and every
success outside those conditions, is recorded at once. Half-open trials keep their `Permit`.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from typing import Final

from mcp_autonomy.providers.base import ProviderError
from mcp_autonomy.resilience.breaker import (
    BreakerState,
    CircuitBreaker,
    Permit,
    counts_as_failure,
)
from mcp_autonomy.resilience.rate_limiter import TOKEN_EPSILON, TokenBucket
from mcp_autonomy.telemetry import Outcome, ProviderTelemetry

__all__ = ["BREAKER_OPEN", "HAND_OVER_AT", "RATE_LIMITED_LOCALLY", "CallGuard", "Ticket"]

HAND_OVER_AT: Final = 256
"""Buffered successes handed over at the latest: bounds the buffer (2 KB); one hand-over costs
about what four recorded calls do."""
BREAKER_OPEN: Final = "breaker open"
RATE_LIMITED_LOCALLY: Final = "rate limited locally"

Ticket = int | Permit
"""Leave for one call: the breaker's window generation (CLOSED), else the breaker's `Permit`."""

_CLOSED: Final = BreakerState.CLOSED
_NOT_ARMED: Final = -1  # never a window generation: no ticket matches while not buffering
_SUCCESS: Final = int(Outcome.SUCCESS)
_TIMEOUT: Final = int(Outcome.TIMEOUT)
_REJECTED: Final = int(Outcome.REJECTED)


class CallGuard:
    """One lane's breaker, token bucket and telemetry behind one call per side (see the module
    docstring). The three stay the sources of truth; the guard is their per-call path."""

    __slots__ = (
        "_armed_ticket",
        "_armed_until_s",
        "_breaker",
        "_buffer_ms",
        "_last_ok_s",
        "_limiter",
        "_monotonic",
        "_slow_call_s",
        "_telemetry",
    )

    def __init__(
        self,
        breaker: CircuitBreaker,
        limiter: TokenBucket,
        telemetry: ProviderTelemetry,
        monotonic: Callable[[], float],
    ) -> None:
        """`monotonic`: the clock's monotonic time (the router passes `time.monotonic` itself
        under the system clock: one Python frame less per read)."""
        self._breaker = breaker
        self._limiter = limiter
        self._telemetry = telemetry
        self._monotonic = monotonic
        self._slow_call_s = breaker.config.slow_call_duration_s
        self._buffer_ms: array[float] = array("d")
        self._last_ok_s = 0.0
        # Buffering is armed for tickets equal to `_armed_ticket` ending before `_armed_until_s`.
        self._armed_ticket = _NOT_ARMED
        self._armed_until_s = -math.inf
        breaker.add_flusher(self.fold)
        telemetry.add_flusher(self.fold)

    # -- before the call ---------------------------------------------------------------------------

    def admit(self) -> Ticket | str:
        """A ticket for one call, or the reason it may not go (`BREAKER_OPEN`,
        `RATE_LIMITED_LOCALLY`), counted in telemetry as a local rejection. Never raises."""
        breaker = self._breaker
        ticket: Ticket
        if breaker._state is _CLOSED:
            ticket = breaker._window_generation
        else:
            permit = breaker.try_acquire()
            if permit is None:
                self._telemetry.record(_REJECTED, 0.0)
                return BREAKER_OPEN
            ticket = permit
        # `TokenBucket.try_acquire(1.0, now)`, inlined: a call frame costs more than the arithmetic.
        limiter = self._limiter
        now = self._monotonic()
        tokens = limiter._tokens
        elapsed = now - limiter._updated_at
        if elapsed > 0:  # a clock that stepped back earns nothing rather than losing tokens
            tokens += elapsed * limiter._rate_per_s
            if tokens > limiter._burst:
                tokens = limiter._burst
        limiter._updated_at = now
        if tokens + TOKEN_EPSILON >= 1.0:
            tokens -= 1.0
            limiter._tokens = tokens if tokens > 0.0 else 0.0  # not the epsilon's crumb of debt
            limiter._acquired_total += 1
            return ticket
        limiter._tokens = tokens
        limiter._rejected_total += 1
        if isinstance(ticket, Permit):
            ticket.release()  # a half-open trial slot goes back
        self._telemetry.record(_REJECTED, 0.0, now)
        return RATE_LIMITED_LOCALLY

    # -- after the call ----------------------------------------------------------------------------

    def settle_success(self, ticket: Ticket, call_started_s: float) -> float:
        """Report a call that succeeded (it began at monotonic `call_started_s`); returns its
        latency in ms."""
        ended_s = self._monotonic()
        duration_s = ended_s - call_started_s
        latency_ms = duration_s * 1000.0
        if ticket == self._armed_ticket and ended_s < self._armed_until_s and duration_s <= self._slow_call_s:
            buffer = self._buffer_ms
            buffer.append(latency_ms)
            self._last_ok_s = ended_s
            if len(buffer) >= HAND_OVER_AT:
                self._hand_over()
            return latency_ms
        self._settle(ticket, True, _SUCCESS, duration_s, latency_ms, ended_s)
        self._arm(ticket, ended_s)
        return latency_ms

    def settle_timeout(self, ticket: Ticket, call_started_s: float) -> float:
        """Report a call that timed out (a failure for the breaker); returns its latency in ms."""
        ended_s = self._monotonic()
        duration_s = ended_s - call_started_s
        latency_ms = duration_s * 1000.0
        self._settle(ticket, False, _TIMEOUT, duration_s, latency_ms, ended_s)
        return latency_ms

    def settle_error(self, ticket: Ticket, error: ProviderError, call_started_s: float) -> float:
        """Report a call the provider answered with `error`: the breaker judges it with
        `counts_as_failure` (an error that does not count releases the ticket), telemetry counts
        its error class. Returns its latency in ms."""
        ended_s = self._monotonic()
        duration_s = ended_s - call_started_s
        latency_ms = duration_s * 1000.0
        verdict = counts_as_failure(error)
        outcome = int(Outcome.from_error_class(error.error_class))
        if verdict is None:
            self.release(ticket)
            self._telemetry.record(outcome, latency_ms, ended_s)
        else:
            self._settle(ticket, not verdict, outcome, duration_s, latency_ms, ended_s)
        return latency_ms

    def release(self, ticket: Ticket) -> None:
        """Give the ticket back without an outcome (nothing was sent, or the outcome says nothing
        about the provider): frees a half-open trial slot; nothing to do for an ordinary call."""
        if isinstance(ticket, Permit):
            ticket.release()

    def _settle(
        self, ticket: Ticket, success: bool, outcome: int, duration_s: float, latency_ms: float, now_s: float
    ) -> None:
        """Record one outcome at once, breaker first (it may open), then telemetry; both hand the
        buffer over first, so earlier successes count before it."""
        if isinstance(ticket, Permit):
            ticket.record(success, duration_s, now_s)
        else:
            self._breaker.record_ordinary(ticket, success, duration_s, now_s)
        self._telemetry.record(outcome, latency_ms, now_s)

    # -- the success buffer ------------------------------------------------------------------------

    def _arm(self, ticket: Ticket, now_s: float) -> None:
        """Buffer the next successes of `ticket`'s generation if breaker and telemetry allow it."""
        if isinstance(ticket, Permit):
            return
        breaker_until_s = self._breaker.successes_bufferable_until(ticket, now_s)
        if breaker_until_s is None:
            return
        telemetry_until_s = self._telemetry.successes_bufferable_until(now_s)
        if telemetry_until_s is None:
            return
        self._armed_ticket = ticket
        self._armed_until_s = min(breaker_until_s, telemetry_until_s)

    def _hand_over(self) -> None:
        buffer = self._buffer_ms
        if not buffer:
            return
        # Swapped out before anything is called: a nested fold finds it empty.
        self._buffer_ms = array("d")
        self._breaker.add_buffered_successes(self._armed_ticket, len(buffer))
        self._telemetry.add_buffered_successes(buffer, self._last_ok_s)

    def fold(self) -> None:
        """Hand the buffered successes over and stop buffering until the next outcome recorded
        at once re-arms it. The breaker and telemetry call this before they read or change
        anything (their flusher)."""
        self._hand_over()
        self._armed_ticket = _NOT_ARMED
        self._armed_until_s = -math.inf
