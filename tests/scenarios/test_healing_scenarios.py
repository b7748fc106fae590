"""Healing scenarios end to end: the real adapters over real HTTP to the sandbox, the router and
the self-healer, on the manual clock. They hold the healer to its promises in time: a hard outage
is detected and failed over within a bound that follows from the design, the provider gets its
traffic back only after the fail-back hold, and a flapping provider moves the traffic a bounded
number of times (flap damping) - all without losing a payment or charging anybody twice."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from mcp_autonomy.autonomy.healer import FAIL_BACK_HOLD_S
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import load_settings
from mcp_autonomy.events import Event, EventType
from mcp_autonomy.payments import AttemptOutcome, PaymentRecord
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.providers.mpesa import MpesaSettings
from mcp_autonomy.resilience.breaker import DEFAULT_FAILURE_RATE_THRESHOLD, DEFAULT_WINDOW_S
from mcp_autonomy.resilience.health import HEALTHY_AFTER_SUCCESSES
from mcp_autonomy.sandbox import FlappingSpec, LedgerOperation, OutageSpec
from mcp_autonomy.sandbox.embedded import EmbeddedSandbox, embedded_sandbox

pytestmark = pytest.mark.anyio
WALL_CLOCK_BOUND_S = 120.0

HEALER_INTERVAL_S = 10.0
"""The healer's probe interval: the default `self_healing_interval_ms` (10 000), stated here."""
MPESA_PROBE_CACHE_S: float = MpesaSettings.model_fields["probe_min_interval_s"].default
"""Daraja meters token calls: a successful M-Pesa probe is reused for this long (30 s)."""


def kes_payment(i: int) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=f"healing-{i:05d}",
        operation=Operation.COLLECT,
        money=Money(amount_minor=10_000 + 100 * (i % 1000), currency="KES"),  # whole shillings
        phone=f"+2547{i:08d}",  # one customer per payment: a second charge would show
        country="KE",
    )


@dataclass
class Sent:
    """One payment: when it was submitted (clock monotonic seconds) and what the router said."""

    at: float
    record: PaymentRecord


def build_system(tmp_path: Path, clock: ManualClock, sandbox: EmbeddedSandbox) -> AutonomousSystem:
    settings = load_settings(
        state_dir=tmp_path / "state", self_healing_interval_ms=int(HEALER_INTERVAL_S * 1000)
    )
    system = AutonomousSystem(settings, clock=clock)
    for name in ("mpesa", "paystack"):
        system.register_provider(sandbox.adapters[name])
    system.set_backup_providers("mpesa", ["paystack"])
    return system


async def advance(system: AutonomousSystem, clock: ManualClock, seconds: float) -> None:
    """Advance the clock, then let the healer's tick due by now finish before going on.

    `ManualClock.advance` runs woken tasks until all are blocked, and a task waiting on a real
    socket counts as blocked: without this wait a probe still in flight would be stamped - and the
    healer's next tick scheduled - at a later clock time, shifting every later tick. Steps must
    divide the healer's interval, so that every tick falls at the end of a step.
    """
    await clock.advance(seconds)
    due = math.floor(clock.monotonic() / HEALER_INTERVAL_S) + 1
    with anyio.fail_after(10.0):  # a bound on the probes' real sockets, never reached when they answer
        await system.self_healer.wait_ticks(due)


def mpesa_events(system: AutonomousSystem, *types: EventType) -> list[Event]:
    """M-Pesa's events of these types from the store (every one: the bus keeps a bounded history)."""
    return system.query_events(types=list(types), provider="mpesa", limit=100_000)


def at_monotonic(clock: ManualClock, event: Event) -> float:
    """An event's time on the clock's monotonic scale (events carry wall-clock timestamps)."""
    return event.timestamp - (clock.now() - clock.monotonic())


def fail_backs(system: AutonomousSystem) -> list[Event]:
    return [
        e for e in mpesa_events(system, EventType.PROVIDER_RECOVERED) if e.data.get("action") == "fail_back"
    ]


async def assert_nothing_lost_or_charged_twice(
    system: AutonomousSystem, sandbox: EmbeddedSandbox, sent: Sequence[Sent]
) -> None:
    """Every payment has a record; every accepted one was charged exactly once, at the provider
    its record names; one whose outcome is unknown was charged at most once; nobody twice."""
    assert all([await system.router.get_payment(s.record.idempotency_key) is not None for s in sent])
    charges = sandbox.state.ledger.entries(operation=LedgerOperation.COLLECT)
    per_customer = Counter(e.msisdn for e in charges)
    charged_at = {e.msisdn: e.provider for e in charges}
    assert max(per_customer.values()) == 1
    for s in sent:
        record = s.record
        if record.status is TransactionStatus.UNKNOWN:
            assert per_customer[record.phone] <= 1, record
            continue
        assert record.status is TransactionStatus.PENDING, record
        assert per_customer[record.phone] == 1, record
        assert charged_at[record.phone] == record.provider, record


def route_switches(sent: Sequence[Sent]) -> int:
    """How often the provider of consecutive successfully routed payments changed."""
    providers = [s.record.provider for s in sent if s.record.status is TransactionStatus.PENDING]
    return sum(1 for a, b in itertools.pairwise(providers) if a != b)


# --- a hard outage ------------------------------------------------------------------------------

STEP_S = 1.0
PAYMENTS_PER_STEP = 5
"""Five payments a second (the rate limiters' bursts are 20, so a step must stay below that)."""
OUTAGE_LENGTH_S = 60.0

DETECTION_BOUND_S = DEFAULT_WINDOW_S * DEFAULT_FAILURE_RATE_THRESHOLD + 1.0
"""Steady traffic, every M-Pesa call refused: the breaker's 30 s window is half failures half a
window after the outage starts, and it opens at 50 %: 30 x 0.5 = 15 s, plus one 1 s bucket for
where the window's edges fall."""
FAILOVER_BOUND_S = DETECTION_BOUND_S + HEALER_INTERVAL_S
"""An open breaker makes the provider unhealthy at the healer's next tick, and the healer fails
over in that same tick: 16 + 10 = 26 s. (Probes alone would take up to 40 s: a good Daraja probe is
reused for 30 s, so the first failing probe may come 30 s after the outage starts, and the
`UNHEALTHY_AFTER_FAILURES` (2) th one interval later: 30 + (2 - 1) x 10.)"""
FAIL_BACK_BOUND_S = HEALTHY_AFTER_SUCCESSES * HEALER_INTERVAL_S + FAIL_BACK_HOLD_S
"""After the outage ends: `HEALTHY_AFTER_SUCCESSES` (2) good probes, one per tick, make M-Pesa
healthy within 2 x 10 = 20 s; it gets its traffic back at the tick where it has been healthy for
the hold (60 s, a whole number of ticks): 20 + 60 = 80 s."""


@pytest.mark.parametrize(
    "outage_at_s",
    [
        pytest.param(25.0, id="seen-by-the-30s-probe"),
        # One second after a real (uncached) M-Pesa probe: the probes cannot see the outage
        # before 60 s, so detection has to come from the real calls.
        pytest.param(31.0, id="just-after-a-real-probe"),
    ],
)
async def test_hard_outage_is_detected_and_failed_over_within_bounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outage_at_s: float
) -> None:
    monkeypatch.chdir(tmp_path)
    clock = ManualClock()
    outage_end_s = outage_at_s + OUTAGE_LENGTH_S
    run_until_s = outage_end_s + FAIL_BACK_BOUND_S + 120.0  # long enough to see a late fail-back
    with anyio.fail_after(WALL_CLOCK_BOUND_S):
        async with embedded_sandbox(clock) as sandbox:
            system = build_system(tmp_path, clock, sandbox)
            async with system.running():
                await advance(system, clock, 0.0)  # the healer's first tick, at 0 s
                # Scheduled on the clock: M-Pesa's gate closes its port at the start and reopens
                # it at the end, on time whatever the step.
                sandbox.state.faults.add(
                    "mpesa",
                    OutageSpec(mode="refused"),
                    start_s=outage_at_s,
                    end_s=outage_end_s,
                    relative=False,
                )
                sent: list[Sent] = []
                while clock.monotonic() < run_until_s:
                    await advance(system, clock, STEP_S)  # the healer probes on its own schedule
                    now = clock.monotonic()
                    for _ in range(PAYMENTS_PER_STEP):
                        record = await system.submit_payment(kes_payment(len(sent)))
                        sent.append(Sent(now, record))

                # Detection: the breaker opening or the health turning unhealthy, whichever first.
                detected_s = min(
                    at_monotonic(clock, e)
                    for e in mpesa_events(
                        system, EventType.BREAKER_STATE_CHANGED, EventType.PROVIDER_HEALTH_CHANGED
                    )
                    if e.data.get("to") in ("open", "unhealthy")
                )
                assert outage_at_s <= detected_s <= outage_at_s + DETECTION_BOUND_S

                # The healer's fail-over: once, to the backup, within its bound.
                (failover,) = mpesa_events(system, EventType.FAILOVER_TRIGGERED)
                failover_s = at_monotonic(clock, failover)
                assert failover.data["to"] == "paystack"
                assert outage_at_s <= failover_s <= outage_at_s + FAILOVER_BOUND_S

                # Before the outage M-Pesa took everything. During it the backup took everything;
                # after detection nothing reached M-Pesa (a breaker rejection never leaves the
                # process), and after the fail-over M-Pesa was not even tried.
                assert {s.record.provider for s in sent if s.at < outage_at_s} == {"mpesa"}
                during = [s.record for s in sent if outage_at_s <= s.at < outage_end_s]
                assert {r.provider for r in during} == {"paystack"}
                assert all(
                    a.outcome is AttemptOutcome.REJECTED_LOCALLY
                    for s in sent
                    if detected_s < s.at < outage_end_s
                    for a in s.record.attempts
                    if a.provider == "mpesa"
                )

                # Fail-back: only after M-Pesa stayed healthy for the hold.
                backs = fail_backs(system)
                assert len(backs) == 1, f"M-Pesa fail-backs by {run_until_s:.0f} s: {backs}"
                fail_back_s = at_monotonic(clock, backs[0])
                healthy_s = max(
                    at_monotonic(clock, e)
                    for e in mpesa_events(system, EventType.PROVIDER_HEALTH_CHANGED)
                    if e.data["to"] == "healthy" and at_monotonic(clock, e) <= fail_back_s
                )
                assert outage_end_s <= healthy_s
                assert fail_back_s - healthy_s >= FAIL_BACK_HOLD_S
                assert fail_back_s >= outage_end_s + FAIL_BACK_HOLD_S
                assert system.router.failed_over == {}

                # From the fail-over to the fail-back the backup kept the traffic, M-Pesa untried;
                # then M-Pesa took it back, at the first try, every time.
                assert all(
                    [a.provider for a in s.record.attempts] == ["paystack"]
                    for s in sent
                    if failover_s <= s.at < fail_back_s
                )
                after = [s.record for s in sent if s.at >= fail_back_s]
                assert after and all([a.provider for a in r.attempts] == ["mpesa"] for r in after)

                await assert_nothing_lost_or_charged_twice(system, sandbox, sent)
                assert route_switches(sent) == 2

                # ... and soon after the outage ends: two good probes and the hold.
                assert fail_back_s <= outage_end_s + FAIL_BACK_BOUND_S, (
                    f"fail-back {fail_back_s - outage_end_s:.0f} s after the outage ended "
                    f"(healthy again after {healthy_s - outage_end_s:.0f} s), "
                    f"bound {FAIL_BACK_BOUND_S:.0f} s"
                )


# --- a flapping provider ------------------------------------------------------------------------

FLAP_DURATION_S = 3600.0
FLAP_STEP_S = HEALER_INTERVAL_S
FLAP_PAYMENTS_PER_STEP = 4
"""0.4 payments a second: 12 in the breaker's 30 s window, above its 10-call minimum, so the
breaker takes part; sparser than the outage scenario to keep an hour's wall time down."""


def max_fail_backs(period_s: float, down_fraction: float) -> int:
    """How many fail-backs flap damping allows while the provider keeps flapping.

    The k-th fail-back needs M-Pesa healthy without a break for the k-th hold, 60 x 2^(k-1) s (each
    failure soon after a fail-back doubles it). A healthy stretch lasts at most one up phase plus
    the 30 s a good Daraja probe is reused (the first failing probe can come that late) plus one
    tick; every hold that fits is one fail-back. (With periods of minutes every failure comes well
    within `FLAP_WINDOW_S` of the fail-back before it, so no hold is forgiven.)
    """
    longest_healthy_s = period_s * (1 - down_fraction) + MPESA_PROBE_CACHE_S + HEALER_INTERVAL_S
    fits = 0
    while FAIL_BACK_HOLD_S * 2**fits <= longest_healthy_s:
        fits += 1
    return fits


@pytest.mark.parametrize("period_s", [60.0, 300.0])
async def test_flapping_provider_causes_bounded_route_switches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, period_s: float
) -> None:
    down_fraction = 0.5
    # A fail-back moves the traffic to M-Pesa, the fail-over after it back to the backup; the
    # first fail-over is one more.
    fail_back_bound = max_fail_backs(period_s, down_fraction)
    switch_bound = 1 + 2 * fail_back_bound
    monkeypatch.chdir(tmp_path)
    clock = ManualClock()
    with anyio.fail_after(WALL_CLOCK_BOUND_S):
        async with embedded_sandbox(clock) as sandbox:
            system = build_system(tmp_path, clock, sandbox)
            async with system.running():
                await advance(system, clock, 0.0)
                for _ in range(6):  # a calm minute: every provider probed healthy
                    await advance(system, clock, FLAP_STEP_S)
                flap_start_s = clock.monotonic()
                sandbox.state.faults.add(
                    "mpesa",
                    FlappingSpec(period_s=period_s, down_fraction=down_fraction, mode="503"),
                    end_s=FLAP_DURATION_S,
                )
                sent: list[Sent] = []
                while clock.monotonic() < flap_start_s + FLAP_DURATION_S:
                    await advance(system, clock, FLAP_STEP_S)
                    for _ in range(FLAP_PAYMENTS_PER_STEP):
                        record = await system.submit_payment(kes_payment(len(sent)))
                        sent.append(Sent(clock.monotonic(), record))

                healer_fail_overs = len(mpesa_events(system, EventType.FAILOVER_TRIGGERED))
                healer_fail_backs = len(fail_backs(system))
                assert 1 <= healer_fail_overs <= healer_fail_backs + 1
                assert healer_fail_backs <= fail_back_bound
                assert route_switches(sent) <= switch_bound
                await assert_nothing_lost_or_charged_twice(system, sandbox, sent)
