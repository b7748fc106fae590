"""Customer errors are not provider faults; a storm of them is a degradation signal.

An insufficient balance, a wrong PIN, a cancelled prompt, a handset that never answered or a
subscriber already busy fails one payment. None of them counts toward a breaker, health or an
incident (one busy customer must not fail a provider over for everyone). But when most payers
of one provider fail this way at once (M-Pesa answering 1037 "no response from the handset" for
most of them, say), something between the provider and the customers is wrong: that raises a
`customer_error_storm` event and a status flag, and nothing else acts on it.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from pydantic import BaseModel, Field

from mcp_autonomy.clock import Clock
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.timefmt import Timestamp

STORM_WINDOW_S = 300.0
STORM_RECENT_OUTCOMES = 50
"""The newest 50 outcomes of the last 5 minutes are judged: at 100 payments a minute that is the
last half minute, so a storm shows within seconds of its start instead of being diluted by the
healthy minutes before it; at low traffic the 5 minutes bound how stale the evidence may be."""
STORM_MIN_OUTCOMES = 20
STORM_MIN_PAYERS = 10
"""A storm needs at least 20 outcomes from at least 10 different payers: one customer retrying
a dozen times is that customer's problem."""
STORM_SHARE = 0.5
"""Half of the payments failing on the customers' side is far above any normal mobile-money mix
(declines and timeouts are a few percent to a few tens of percent of pushes)."""
STORM_CLEAR_SHARE = 0.25
"""The storm is over once the share falls under half the trigger (hysteresis: no flapping)."""
MAX_OUTCOMES = 10_000
"""Outcomes kept per provider at most, whatever the rate."""


@dataclass(frozen=True)
class _Outcome:
    at_s: float
    customer_failure: bool
    payer: str
    code: str | None


class CustomerErrorStorm(BaseModel):
    """A provider whose customers fail in a storm (see the module docstring)."""

    provider: str
    since: Timestamp = Field(description="when the storm was detected")
    share: float = Field(description="customer failures / outcomes over the window")
    outcomes: int
    payers: int
    top_codes: dict[str, int] = Field(description="the commonest customer failure codes")


class CustomerErrorMonitor:
    """Counts payment outcomes per provider and raises the storm signal (module docstring)."""

    def __init__(self, clock: Clock, bus: EventBus) -> None:
        self.clock = clock
        self.bus = bus
        self._outcomes: dict[str, deque[_Outcome]] = {}
        self._storms: dict[str, CustomerErrorStorm] = {}

    def observe(self, provider: str, *, customer_failure: bool, payer: str, code: str | None = None) -> None:
        """One payment outcome that reached the customer: failed on their side, or not."""
        now = self.clock.now()
        outcomes = self._outcomes.setdefault(provider, deque(maxlen=MAX_OUTCOMES))
        outcomes.append(_Outcome(now, customer_failure, payer, code))
        while outcomes and now - outcomes[0].at_s > STORM_WINDOW_S:
            outcomes.popleft()
        self._judge(provider, outcomes, now)

    def storm(self, provider: str) -> CustomerErrorStorm | None:
        """The storm `provider` is in, if any."""
        return self._storms.get(provider)

    def _judge(self, provider: str, outcomes: deque[_Outcome], now: float) -> None:
        recent = list(outcomes)[-STORM_RECENT_OUTCOMES:]
        total = len(recent)
        failures = [o for o in recent if o.customer_failure]
        share = len(failures) / total if total else 0.0
        current = self._storms.get(provider)
        if current is None:
            payers = len({o.payer for o in failures})
            if total >= STORM_MIN_OUTCOMES and payers >= STORM_MIN_PAYERS and share >= STORM_SHARE:
                codes = Counter(o.code or "unknown" for o in failures).most_common(3)
                storm = CustomerErrorStorm(
                    provider=provider,
                    since=now,
                    share=round(share, 4),
                    outcomes=total,
                    payers=payers,
                    top_codes=dict(codes),
                )
                self._storms[provider] = storm
                self.bus.emit(
                    EventType.CUSTOMER_ERROR_STORM,
                    component="router",
                    provider=provider,
                    severity=Severity.WARNING,
                    message=f"{provider}: {share:.0%} of {total} payments from {payers} payers failed on the "
                    f"customers' side in {STORM_WINDOW_S:.0f} s (codes {dict(codes)}); not a provider fault, "
                    "no breaker or failover acts on it",
                    data={"state": "started", **storm.model_dump()},
                )
        elif share < STORM_CLEAR_SHARE:
            del self._storms[provider]
            self.bus.emit(
                EventType.CUSTOMER_ERROR_STORM,
                component="router",
                provider=provider,
                message=f"{provider}: customer failures back to {share:.0%} of {total} payments",
                data={
                    "state": "ended",
                    "provider": provider,
                    "share": round(share, 4),
                    "since": current.since,
                },
            )
