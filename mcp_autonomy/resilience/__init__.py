"""Resilience primitives, ours for speed and a half-open trial that cannot be stampeded.

A circuit breaker per provider, a token-bucket rate limiter, and retry bookkeeping (a budget,
jittered backoff, the policy), over one sliding time window class. The retry loop itself belongs to the payment router, which must
resolve ambiguous outcomes by status query before any retry. Provider health tracking lives in
`mcp_autonomy.resilience.health`.
"""

from __future__ import annotations

from mcp_autonomy.resilience.breaker import (
    ALLOWED_TRANSITIONS,
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    IllegalTransition,
    Permit,
    TransitionHook,
    counts_as_failure,
)
from mcp_autonomy.resilience.rate_limiter import TokenBucket, TokenBucketSnapshot
from mcp_autonomy.resilience.retry import (
    Backoff,
    Jitter,
    RetryBudget,
    RetryBudgetSnapshot,
    RetryPolicy,
)
from mcp_autonomy.resilience.window import SlidingTimeWindow

__all__ = [
    "ALLOWED_TRANSITIONS",
    "Backoff",
    "BreakerConfig",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "IllegalTransition",
    "Jitter",
    "Permit",
    "RetryBudget",
    "RetryBudgetSnapshot",
    "RetryPolicy",
    "SlidingTimeWindow",
    "TokenBucket",
    "TokenBucketSnapshot",
    "TransitionHook",
    "counts_as_failure",
]
