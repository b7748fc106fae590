"""Per-provider tunables: timeout, retries and backoff, rate limit, status-cache TTL, breaker threshold
and open period.

Defaults come from the original module's starting points; the optimizer moves them from
measured data later, and an operator override pins a value against it. Bounds are named once
and enforced on every change with an error naming the field and the allowed range.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from mcp_autonomy.resilience.breaker import DEFAULT_FAILURE_RATE_THRESHOLD, DEFAULT_WAIT_IN_OPEN_S

TIMEOUT_S_BOUNDS = (0.5, 120.0)
MAX_ATTEMPTS_BOUNDS = (1, 10)
BASE_DELAY_S_BOUNDS = (0.0, 60.0)
RATE_LIMIT_BOUNDS = (0.1, 10_000.0)
# A ratio in the unit of BreakerConfig.failure_rate_threshold (0.5 = 50 %); below 5 % a breaker
# would open on the normal error noise of any real provider.
BREAKER_FAILURE_RATE_BOUNDS = (0.05, 1.0)
# The breaker's base open period: under 5 s it would ask a provider that is down every few
# seconds; over 5 minutes, payments with nowhere else to go fail long after it is back.
BREAKER_WAIT_S_BOUNDS = (5.0, 300.0)


class ProviderTunables(BaseModel):
    """The knobs of one provider's lane in the router."""

    model_config = ConfigDict(frozen=True)

    timeout_s: float = Field(10.0, ge=TIMEOUT_S_BOUNDS[0], le=TIMEOUT_S_BOUNDS[1])
    max_attempts: int = Field(3, ge=MAX_ATTEMPTS_BOUNDS[0], le=MAX_ATTEMPTS_BOUNDS[1])
    base_delay_s: float = Field(1.0, ge=BASE_DELAY_S_BOUNDS[0], le=BASE_DELAY_S_BOUNDS[1])
    max_delay_s: float = Field(30.0, ge=0.0, le=300.0)
    rate_limit_per_s: float = Field(100.0, ge=RATE_LIMIT_BOUNDS[0], le=RATE_LIMIT_BOUNDS[1])
    rate_limit_burst: int = Field(20, ge=1, le=100_000)
    retry_budget_ratio: float = Field(0.2, ge=0.0, le=1.0)
    status_cache_ttl_s: float = Field(5.0, ge=0.0, le=3600.0)
    breaker_failure_rate: float = Field(
        DEFAULT_FAILURE_RATE_THRESHOLD, ge=BREAKER_FAILURE_RATE_BOUNDS[0], le=BREAKER_FAILURE_RATE_BOUNDS[1]
    )
    breaker_wait_s: float = Field(
        DEFAULT_WAIT_IN_OPEN_S, ge=BREAKER_WAIT_S_BOUNDS[0], le=BREAKER_WAIT_S_BOUNDS[1]
    )


DEFAULT_TUNABLES: dict[str, ProviderTunables] = {
    "mpesa": ProviderTunables(timeout_s=15.0, max_attempts=3, base_delay_s=2.0, rate_limit_per_s=50.0),
    "paystack": ProviderTunables(timeout_s=10.0, max_attempts=3, base_delay_s=1.0, rate_limit_per_s=100.0),
    "mtn_momo": ProviderTunables(timeout_s=20.0, max_attempts=4, base_delay_s=2.0, rate_limit_per_s=100.0),
}
OTHER_TUNABLES = ProviderTunables()


def default_tunables(provider: str) -> ProviderTunables:
    """The documented starting point for `provider`."""
    return DEFAULT_TUNABLES.get(provider, OTHER_TUNABLES)
