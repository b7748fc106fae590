"""Canary splits and per-lane tallies: what the optimizer measures a tuning change with.

A `CanarySplit` sends a stable share of one provider's payments through candidate tunables (the
arm is chosen by a hash of the payment's idempotency key and the optimization's id, so a retried
payment stays in its arm and two experiments do not pick the same payments), while the rest,
measured over the same minutes, is the baseline. Each arm tallies what the statistical tests
need: one latency per attempt that reached the provider, payments handled, successes, retries
sent, timeouts.

`LaneTally` keeps the same counts for every lane all the time (cumulative; the optimizer diffs two
snapshots), plus what the retry tuner needs: retries that recovered a payment and payments whose
retries ran out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final, Literal

from mcp_autonomy.resilience.retry import Backoff
from mcp_autonomy.resilience.tunables import ProviderTunables

MAX_LATENCY_SAMPLES: Final = 20_000
"""Per arm; beyond it the oldest half is dropped (a canary decides long before)."""

Arm = Literal["baseline", "canary"]


@dataclass
class ArmTally:
    """What one arm (or a whole lane) measured."""

    latencies_ms: list[float] = field(default_factory=list)
    calls: int = 0
    successes: int = 0
    retries_sent: int = 0
    timeouts: int = 0
    transient_errors: int = 0
    recovered_on_retry: int = 0
    retries_exhausted: int = 0

    def add_latency(self, latency_ms: float) -> None:
        if len(self.latencies_ms) >= MAX_LATENCY_SAMPLES:
            del self.latencies_ms[: MAX_LATENCY_SAMPLES // 2]
        self.latencies_ms.append(latency_ms)

    def copy(self) -> ArmTally:
        return ArmTally(
            latencies_ms=list(self.latencies_ms),
            calls=self.calls,
            successes=self.successes,
            retries_sent=self.retries_sent,
            timeouts=self.timeouts,
            transient_errors=self.transient_errors,
            recovered_on_retry=self.recovered_on_retry,
            retries_exhausted=self.retries_exhausted,
        )


@dataclass
class CanarySplit:
    """Candidate tunables for a share of one provider's payments, and both arms' tallies."""

    optimization_id: str
    parameter: str
    tunables: ProviderTunables
    share: float
    backoff: Backoff
    started_at: float
    baseline: ArmTally = field(default_factory=ArmTally)
    canary: ArmTally = field(default_factory=ArmTally)

    def arm_for(self, idempotency_key: str) -> Arm:
        digest = hashlib.blake2b(f"{self.optimization_id}:{idempotency_key}".encode(), digest_size=8).digest()
        fraction = int.from_bytes(digest, "big") / 2**64
        return "canary" if fraction < self.share else "baseline"

    def tally(self, arm: Arm) -> ArmTally:
        return self.canary if arm == "canary" else self.baseline
