"""Retry bookkeeping: a retry budget, jittered exponential backoff, and the policy that sizes them.

There is deliberately no retry loop here. The payment router owns it, because for money the
question "may I retry?" depends on what the error means: an `ambiguous` outcome (a timeout after
the request left, a 5xx from a provider that may have processed it) must first be resolved with an
idempotent status query, and only a request the provider certainly did not process may be sent
again, under the same idempotency key. A generic loop that re-invokes a callable cannot know that,
so this module only answers "is there budget for a retry?" and "how long to wait first?".

- `RetryBudget` (Finagle/Envoy style): retries are allowed while the retries in a sliding time
  window stay within `ratio` x the requests in it plus a floor of `min_retries_per_s` x the
  window, so a struggling provider sees at most about `1 + ratio` times its normal load instead of
  `max_attempts` times.
- `Backoff`: exponential delays with full or decorrelated jitter (AWS architecture blog), drawn
  from a `random.Random` the caller passes in, so tests are deterministic.
- `RetryPolicy`: the frozen, validated settings that build both.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from mcp_autonomy.clock import Clock
from mcp_autonomy.resilience.window import MAX_WINDOW_BUCKETS, SlidingTimeWindow

DEFAULT_MAX_ATTEMPTS: Final = 3  # one call and two retries: enough for a blip, bounded for money
DEFAULT_BASE_DELAY_S: Final = 0.2
DEFAULT_MAX_DELAY_S: Final = 5.0
DEFAULT_BUDGET_RATIO: Final = 0.2  # Envoy and Finagle: retries <= 20 % of requests
DEFAULT_MIN_RETRIES_PER_S: Final = 10.0  # Finagle's floor, so a quiet service can still retry
DEFAULT_BUDGET_WINDOW_S: Final = 10.0  # Finagle's deposit time-to-live
DEFAULT_BUDGET_BUCKET_S: Final = 1.0
MAX_BUDGET_BUCKETS: Final = MAX_WINDOW_BUCKETS
MAX_ATTEMPTS_LIMIT: Final = 10  # more attempts than this only multiplies load on a sick provider
_REQUESTS: Final = 0  # the window's counter fields
_RETRIES: Final = 1
_MAX_EXPONENT: Final = 64  # base x 2**64 is past any sane cap and still a finite float


class Jitter(StrEnum):
    """How a backoff delay is randomised."""

    NONE = "none"  # the plain exponential ceiling; for tests and single clients only
    FULL = "full"  # uniform in [0, ceiling]: the fewest collisions among many clients
    DECORRELATED = "decorrelated"  # uniform in [base, 3 x previous delay], capped


def _check_seconds(field: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and (value >= 0 if allow_zero else value > 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{field} must be a finite number of seconds {bound}, got {value!r}")


def _check_floor(field: str, value: float) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and value >= 0):
        raise ValueError(f"{field} must be a finite number of retries per second >= 0, got {value!r}")


def _check_ratio(field: str, value: float) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and 0 <= value <= 1):
        raise ValueError(f"{field} must be in [0, 1], got {value!r}")


@dataclass(frozen=True, slots=True)
class RetryBudgetSnapshot:
    """A retry budget's window figures as of now."""

    requests_in_window: int
    retries_in_window: int
    retries_allowed_in_window: float
    can_retry: bool


class RetryBudget:
    """Allows a retry only while retries <= ratio x requests + min_retries_per_s x window_s.

    Counts live in a `SlidingTimeWindow` (time buckets with running totals, shared with the
    breaker and telemetry). Call `record_request()` once per original request (not per retry),
    check `can_retry()` before a retry and `record_retry()` when one is sent.
    """

    __slots__ = ("_monotonic", "_ratio", "_reserve", "_window", "_window_s")

    def __init__(
        self,
        clock: Clock,
        *,
        ratio: float = DEFAULT_BUDGET_RATIO,
        min_retries_per_s: float = DEFAULT_MIN_RETRIES_PER_S,
        window_s: float = DEFAULT_BUDGET_WINDOW_S,
        bucket_s: float = DEFAULT_BUDGET_BUCKET_S,
    ) -> None:
        _check_ratio("ratio", ratio)
        _check_floor("min_retries_per_s", min_retries_per_s)
        _check_seconds("window_s", window_s)
        _check_seconds("bucket_s", bucket_s)
        buckets = round(window_s / bucket_s)
        if buckets < 1 or not math.isclose(buckets * bucket_s, window_s, rel_tol=1e-9):
            raise ValueError(f"window_s must be a whole multiple of bucket_s ({bucket_s}), got {window_s!r}")
        if buckets > MAX_BUDGET_BUCKETS:
            raise ValueError(f"window_s must be at most {MAX_BUDGET_BUCKETS} x bucket_s, got {window_s!r}")
        self._monotonic = clock.monotonic
        self._ratio = float(ratio)
        self._reserve = float(min_retries_per_s) * window_s
        self._window_s = float(window_s)
        self._window = SlidingTimeWindow(clock, window_s=window_s, bucket_s=bucket_s, fields=2)

    def record_request(self, now_s: float | None = None) -> None:
        """Deposit: one original request was sent (`now_s`: monotonic time, if just read)."""
        self._window.add(self._monotonic() if now_s is None else now_s, _REQUESTS)

    def record_retry(self) -> None:
        """Withdraw: one retry was sent."""
        self._window.add(self._monotonic(), _RETRIES)

    def can_retry(self) -> bool:
        """Whether one more retry fits in the budget now."""
        requests, retries = self._window.totals_at(self._monotonic())
        return retries + 1 <= self._ratio * requests + self._reserve

    def snapshot(self) -> RetryBudgetSnapshot:
        """The window's counts and what they allow."""
        requests, retries = self._window.totals_at(self._monotonic())
        allowed = self._ratio * requests + self._reserve
        return RetryBudgetSnapshot(
            requests_in_window=int(requests),
            retries_in_window=int(retries),
            retries_allowed_in_window=allowed,
            can_retry=retries + 1 <= allowed,
        )


class Backoff:
    """Exponential backoff with jitter: how long to wait before retry number `attempt`.

    The ceiling for retry `attempt` (1 = the first retry) is `min(max_delay_s, base_delay_s x
    2**(attempt - 1))`. Randomness comes only from the `random.Random` passed in.
    """

    __slots__ = ("_base_delay_s", "_jitter", "_max_delay_s", "_rng")

    def __init__(
        self,
        base_delay_s: float,
        max_delay_s: float,
        rng: random.Random,
        jitter: Jitter = Jitter.FULL,
    ) -> None:
        # Zero is allowed: an immediate retry is a legitimate (if blunt) setting for a tunable.
        _check_seconds("base_delay_s", base_delay_s, allow_zero=True)
        _check_seconds("max_delay_s", max_delay_s, allow_zero=True)
        if max_delay_s < base_delay_s:
            raise ValueError(f"max_delay_s must be >= base_delay_s ({base_delay_s}), got {max_delay_s!r}")
        self._base_delay_s = float(base_delay_s)
        self._max_delay_s = float(max_delay_s)
        self._rng = rng
        self._jitter = Jitter(jitter)

    def ceiling_s(self, attempt: int) -> float:
        """The un-jittered exponential delay for retry `attempt`, capped at `max_delay_s`."""
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            raise ValueError(f"attempt must be an integer >= 1 (1 = first retry), got {attempt!r}")
        exponent = min(attempt - 1, _MAX_EXPONENT)
        return min(self._max_delay_s, self._base_delay_s * 2.0**exponent)

    def delay_s(self, attempt: int, previous_delay_s: float | None = None) -> float:
        """The delay before retry `attempt` (1 = first retry).

        Decorrelated jitter grows from the previous delay; pass the one you slept last time.
        Without it the previous retry's ceiling stands in (or `base_delay_s` for the first).
        """
        ceiling = self.ceiling_s(attempt)
        if self._jitter is Jitter.NONE:
            return ceiling
        if self._jitter is Jitter.FULL:
            return self._rng.uniform(0.0, ceiling)
        if previous_delay_s is None:
            previous_delay_s = self._base_delay_s if attempt == 1 else self.ceiling_s(attempt - 1)
        upper = max(self._base_delay_s, 3.0 * previous_delay_s)
        return min(self._max_delay_s, self._rng.uniform(self._base_delay_s, upper))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How the router may retry a request the provider certainly did not process.

    `max_attempts` counts the first call, so 3 means at most two retries.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    base_delay_s: float = DEFAULT_BASE_DELAY_S
    max_delay_s: float = DEFAULT_MAX_DELAY_S
    jitter: Jitter = Jitter.FULL
    budget_ratio: float = DEFAULT_BUDGET_RATIO
    min_retries_per_s: float = DEFAULT_MIN_RETRIES_PER_S
    budget_window_s: float = DEFAULT_BUDGET_WINDOW_S

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if not (isinstance(attempts, int) and not isinstance(attempts, bool)) or not (
            1 <= attempts <= MAX_ATTEMPTS_LIMIT
        ):
            raise ValueError(
                f"max_attempts must be an integer in [1, {MAX_ATTEMPTS_LIMIT}], got {attempts!r}"
            )
        _check_seconds("base_delay_s", self.base_delay_s, allow_zero=True)
        _check_seconds("max_delay_s", self.max_delay_s, allow_zero=True)
        if self.max_delay_s < self.base_delay_s:
            raise ValueError(
                f"max_delay_s must be >= base_delay_s ({self.base_delay_s}), got {self.max_delay_s!r}"
            )
        if self.jitter not in tuple(Jitter):
            raise ValueError(f"jitter must be one of {[j.value for j in Jitter]}, got {self.jitter!r}")
        _check_ratio("budget_ratio", self.budget_ratio)
        _check_floor("min_retries_per_s", self.min_retries_per_s)
        _check_seconds("budget_window_s", self.budget_window_s)
        if not (float(self.budget_window_s).is_integer() and self.budget_window_s <= MAX_BUDGET_BUCKETS):
            # The budget's window is a ring of one-second buckets.
            raise ValueError(
                f"budget_window_s must be a whole number of seconds in [1, {MAX_BUDGET_BUCKETS}], "
                f"got {self.budget_window_s!r}"
            )

    @property
    def max_retries(self) -> int:
        """Retries after the first call."""
        return self.max_attempts - 1

    def backoff(self, rng: random.Random) -> Backoff:
        """A `Backoff` with this policy's delays and jitter."""
        return Backoff(self.base_delay_s, self.max_delay_s, rng, Jitter(self.jitter))

    def budget(self, clock: Clock) -> RetryBudget:
        """A fresh `RetryBudget` with this policy's ratio, floor and window."""
        return RetryBudget(
            clock,
            ratio=self.budget_ratio,
            min_retries_per_s=self.min_retries_per_s,
            window_s=self.budget_window_s,
            bucket_s=DEFAULT_BUDGET_BUCKET_S,
        )
