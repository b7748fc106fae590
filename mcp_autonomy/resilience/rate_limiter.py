"""A token bucket: at most `burst` calls at once, `rate_per_s` sustained, refilled lazily.

Nothing ticks in the background: each call reads the injected clock's `monotonic()` and credits
the tokens earned since the last call, so `try_acquire` is O(1) and a test drives it with a
`ManualClock`.

`acquire()` waits by reservation: a caller that must wait takes its tokens now, letting the
balance go negative, and sleeps until the debt would have been repaid. Later callers see the
debt, so waiters are served in arrival order and none is starved; a cancelled waiter gives its
tokens back. The optimizer may retune the bucket at run time with `set_rate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from mcp_autonomy.clock import Clock

# Float refill arithmetic can leave 0.9999999999 of a token where 1 was earned; this much
# shortfall still counts as enough.
TOKEN_EPSILON: Final = 1e-9


def _check_rate(rate_per_s: float) -> None:
    if not (isinstance(rate_per_s, int | float) and math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"rate_per_s must be a finite number > 0, got {rate_per_s!r}")


def _check_burst(burst: float) -> None:
    if not (isinstance(burst, int | float) and math.isfinite(burst) and burst > 0):
        raise ValueError(f"burst must be a finite number of tokens > 0, got {burst!r}")


@dataclass(frozen=True, slots=True)
class TokenBucketSnapshot:
    """A token bucket's settings and balance as of now.

    `tokens` is negative while waiters hold reservations; `tokens_available` never is.
    """

    rate_per_s: float
    burst: float
    tokens: float
    tokens_available: float
    waiting: int
    acquired_total: int
    rejected_total: int


class TokenBucket:
    """A lazily refilled token bucket driven by an injected clock (see the module docstring)."""

    __slots__ = (
        "_acquired_total",
        "_burst",
        "_clock",
        "_monotonic",
        "_rate_per_s",
        "_rejected_total",
        "_tokens",
        "_updated_at",
        "_waiting",
    )

    def __init__(self, rate_per_s: float, burst: float, clock: Clock) -> None:
        _check_rate(rate_per_s)
        _check_burst(burst)
        self._rate_per_s = float(rate_per_s)
        self._burst = float(burst)
        self._clock = clock
        self._monotonic = clock.monotonic  # bound once: one attribute hop less per call
        self._tokens = self._burst  # start full, so a fresh process can serve a burst at once
        self._updated_at = self._monotonic()
        self._waiting = 0
        self._acquired_total = 0
        self._rejected_total = 0

    @property
    def rate_per_s(self) -> float:
        """The sustained rate, in tokens per second."""
        return self._rate_per_s

    @property
    def burst(self) -> float:
        """The bucket's capacity, in tokens."""
        return self._burst

    def _refill(self) -> float:
        now = self._monotonic()
        elapsed = now - self._updated_at
        tokens = self._tokens
        if elapsed > 0:  # a clock that stepped back earns nothing rather than losing tokens
            tokens += elapsed * self._rate_per_s
            if tokens > self._burst:
                tokens = self._burst
        self._updated_at = now
        self._tokens = tokens
        return tokens

    def try_acquire(self, tokens: float = 1.0, now_s: float | None = None) -> bool:
        """Take `tokens` now if the bucket holds them; never waits.

        `now_s` is the clock's monotonic time when the caller has just read it (the router reads
        it once for the whole guard); by default the bucket reads it.

        Raises:
            ValueError: `tokens` is not in (0, burst], so it could never be granted.
        """
        burst = self._burst
        if not 0 < tokens <= burst:
            raise ValueError(f"tokens must be in (0, burst={burst:g}], got {tokens!r}")
        # The refill of `_refill`, inlined: this is the per-call path and a call frame costs more
        # than the arithmetic.
        now = self._monotonic() if now_s is None else now_s
        available = self._tokens
        elapsed = now - self._updated_at
        if elapsed > 0:
            available += elapsed * self._rate_per_s
            if available > burst:
                available = burst
        self._updated_at = now
        if available + TOKEN_EPSILON >= tokens:
            remaining = available - tokens
            self._tokens = remaining if remaining > 0.0 else 0.0  # not the epsilon's crumb of debt
            self._acquired_total += 1
            return True
        self._tokens = available
        self._rejected_total += 1
        return False

    async def acquire(self, tokens: float = 1.0, *, max_wait_s: float) -> bool:
        """Take `tokens`, sleeping through the clock if needed; `False` if that would exceed `max_wait_s`.

        If the rate is lowered while a caller waits, that caller still goes at its original time:
        its tokens were reserved at the old rate.

        Raises:
            ValueError: `tokens` is not in (0, burst], or `max_wait_s` is negative or not finite.
        """
        if not 0 < tokens <= self._burst:
            raise ValueError(f"tokens must be in (0, burst={self._burst:g}], got {tokens!r}")
        if not (math.isfinite(max_wait_s) and max_wait_s >= 0):
            raise ValueError(f"max_wait_s must be a finite number of seconds >= 0, got {max_wait_s!r}")
        available = self._refill()
        if available + TOKEN_EPSILON >= tokens:
            remaining = available - tokens
            self._tokens = remaining if remaining > 0.0 else 0.0  # not the epsilon's crumb of debt
            self._acquired_total += 1
            return True
        wait_s = (tokens - available) / self._rate_per_s
        if wait_s > max_wait_s:
            self._rejected_total += 1
            return False
        self._tokens = available - tokens  # the reservation: later callers queue behind this debt
        self._acquired_total += 1
        self._waiting += 1
        try:
            await self._clock.sleep(wait_s)
        except BaseException:
            # Cancelled while waiting: hand the reservation back so nobody waits for it.
            self._refill()
            self._tokens = min(self._burst, self._tokens + tokens)
            self._acquired_total -= 1
            raise
        finally:
            self._waiting -= 1
        return True

    def set_rate(self, rate_per_s: float, burst: float | None = None) -> None:
        """Retune the bucket; time already elapsed is credited at the old rate.

        A smaller burst trims the balance to it; waiters' reservations stand.
        """
        _check_rate(rate_per_s)
        if burst is not None:
            _check_burst(burst)
        self._refill()
        self._rate_per_s = float(rate_per_s)
        if burst is not None:
            self._burst = float(burst)
            self._tokens = min(self._tokens, self._burst)

    def snapshot(self) -> TokenBucketSnapshot:
        """Settings, balance and counters as of now."""
        tokens = self._refill()
        return TokenBucketSnapshot(
            rate_per_s=self._rate_per_s,
            burst=self._burst,
            tokens=tokens,
            tokens_available=max(0.0, tokens),
            waiting=self._waiting,
            acquired_total=self._acquired_total,
            rejected_total=self._rejected_total,
        )
