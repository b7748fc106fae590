"""The optimizer loop's scheduling: which tuner gets the provider's one experiment, and when a
change measured to be ineffective may be tried again. Scripted tuners, a scripted provider and
the manual clock; the canary verdicts themselves are tested in optimization/test_canary.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from mcp_autonomy.autonomy.component import Mode
from mcp_autonomy.autonomy.optimization import CanaryConfig, LaneEvidence, Proposal, RetryTuner
from mcp_autonomy.autonomy.optimizer import (
    GUARD_TIMEOUTS,
    GUARD_WINDOW_S,
    INEFFECTIVE_COOLDOWN_S,
    AutoOptimizer,
    OptimizationStatus,
)
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import EventBus
from mcp_autonomy.payment_store import SqlitePaymentStore
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.resilience.breaker import BreakerConfig
from mcp_autonomy.resilience.canary import ArmTally
from mcp_autonomy.resilience.router import PaymentRouter
from mcp_autonomy.resilience.tunables import ProviderTunables
from mcp_autonomy.store import Store
from mcp_autonomy.telemetry import Outcome, Telemetry
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio
PROVIDER = "paystack"  # default timeout 10 s, 3 attempts
Parts = tuple[PaymentRouter, EventBus, Store, Telemetry, ProviderRegistry]


@dataclass
class ScriptedTuner:
    """Proposes `proposal` (None: nothing) whatever the evidence."""

    parameter: str
    proposal: Proposal | None = None

    def propose(
        self, provider: str, current: ProviderTunables, evidence: LaneEvidence, *, conservative: bool
    ) -> Proposal | None:
        return self.proposal


def cut_timeout() -> Proposal:
    return Proposal("timeout_s", 10.0, 5.0, "scripted cut")


def one_attempt_less() -> Proposal:
    return Proposal("max_attempts", 3.0, 2.0, "scripted")


def pileup_raise(old_s: float = 10.0, new_s: float = 15.0) -> Proposal:
    return Proposal("timeout_s", old_s, new_s, "scripted pile-up", {"timeout_share": 0.02})


@pytest.fixture
def parts(tmp_path: Path, clock: ManualClock) -> Iterator[Parts]:
    registry = ProviderRegistry()
    registry.register(ScriptedAdapter(PROVIDER))
    store = Store(tmp_path / "db.sqlite3").open()
    bus = EventBus(clock)
    telemetry = Telemetry(clock)
    # The breaker's window rule alone: these tests count refusals below its minimum (the fast
    # trip, three failures in a row, is tested in tests/resilience).
    window_only = BreakerConfig(consecutive_failures_to_open=0)
    yield (
        PaymentRouter(registry, SqlitePaymentStore(store), telemetry, bus, clock, breaker_config=window_only),
        bus,
        store,
        telemetry,
        registry,
    )
    store.close()


def optimizer(
    clock: ManualClock,
    parts: Parts,
    *tuners: ScriptedTuner,
) -> AutoOptimizer:
    router, bus, store, telemetry, registry = parts
    return AutoOptimizer(
        clock=clock,
        bus=bus,
        store=store,
        enabled=True,
        interval_s=60.0,
        conservative=False,
        router=router,
        telemetry=telemetry,
        providers=registry,
        tuners=tuners,
    )


def running(opt: AutoOptimizer) -> str | None:
    experiment = opt.provider_config(PROVIDER).experiment
    return None if experiment is None else experiment.parameter


def end_experiment(opt: AutoOptimizer) -> None:
    experiment = opt.provider_config(PROVIDER).experiment
    assert experiment is not None
    opt.revert_optimization(experiment.id, reason="test: next one")


async def test_tuners_take_turns_so_one_cannot_starve_the_others(clock: ManualClock, parts: Parts) -> None:
    opt = optimizer(
        clock,
        parts,
        ScriptedTuner("timeout_s", cut_timeout()),
        ScriptedTuner("max_attempts", one_attempt_less()),
    )
    order: list[str | None] = []
    for _ in range(4):
        await opt.tick()
        order.append(running(opt))
        end_experiment(opt)
        await clock.advance(60.0)
    assert order == ["timeout_s", "max_attempts", "timeout_s", "max_attempts"]


async def test_a_timeout_raise_in_a_pileup_goes_first_whatever_the_turn(
    clock: ManualClock, parts: Parts
) -> None:
    retry = ScriptedTuner("max_attempts", one_attempt_less())
    timeout = ScriptedTuner("timeout_s", cut_timeout())
    opt = optimizer(clock, parts, timeout, retry)
    await opt.tick()
    assert running(opt) == "timeout_s"
    end_experiment(opt)
    timeout.proposal = pileup_raise()  # the retry tuner's turn, but timeouts are piling up
    await clock.advance(60.0)
    await opt.tick()
    assert running(opt) == "timeout_s"


async def test_in_an_outage_a_lower_breaker_threshold_goes_before_a_retry_cut(
    clock: ManualClock, parts: Parts
) -> None:
    retry = ScriptedTuner("max_attempts", one_attempt_less())
    outage_cut = Proposal(
        "breaker_failure_rate", 0.5, 0.35, "scripted outage", {"recovery_on_retry_rate": 0.04}
    )
    breaker = ScriptedTuner("breaker_failure_rate", outage_cut)
    opt = optimizer(clock, parts, retry, breaker)  # the retry tuner's turn first
    await opt.tick()
    assert running(opt) == "breaker_failure_rate"
    end_experiment(opt)
    # Not an outage cut (no retry evidence): the turn decides again.
    breaker.proposal = Proposal("breaker_failure_rate", 0.5, 0.6, "scripted noise floor")
    await clock.advance(60.0)
    await opt.tick()
    assert running(opt) == "max_attempts"


async def test_an_ineffective_raise_rests_before_it_is_tried_again(clock: ManualClock, parts: Parts) -> None:
    router = parts[0]
    timeout = ScriptedTuner("timeout_s")
    opt = optimizer(clock, parts, timeout)
    await opt.tick()  # the first tally point: the window before starts here
    lane = router.lane(PROVIDER)
    lane.tally.calls += 400
    lane.tally.successes += 400
    await clock.advance(60.0)
    timeout.proposal = pileup_raise()
    await opt.tick()
    assert running(opt) == "timeout_s" and lane.tunables.timeout_s == 15.0  # applied to all traffic
    # 1 % of the calls hang: they time out at 15 s as they did at 10 s, and no call answered
    # between the two.
    split = lane.canary
    assert split is not None
    split.canary = ArmTally(latencies_ms=[250.0] * 198 + [15_000.0] * 2, calls=200, successes=200, timeouts=2)
    await clock.advance(60.0)
    await opt.tick()
    (record,) = opt.optimizations(provider=PROVIDER)
    assert record.status is OptimizationStatus.REVERTED and "ineffective" in (record.verdict or "")
    assert lane.tunables.timeout_s == 10.0
    # The tuner still sees the same pile-up; the same raise waits out the cooldown.
    await clock.advance(60.0)
    await opt.tick()
    assert running(opt) is None
    await clock.advance(INEFFECTIVE_COOLDOWN_S)
    await opt.tick()
    assert running(opt) == "timeout_s"


# --- the timeout guard ---------------------------------------------------------------------


def hanging_payment(key: str) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=Operation.COLLECT,
        money=Money(amount_minor=10_000, currency="KES"),
        phone="+254712345678",
        country="KE",
    )


async def test_timeouts_piling_up_on_a_cut_timeout_restore_the_default_at_once(
    clock: ManualClock, parts: Parts
) -> None:
    router, registry = parts[0], parts[4]
    opt = optimizer(clock, parts)  # no tuners, and no tick: the guard acts between ticks
    lane = router.lane(PROVIDER)
    router.set_tunables(PROVIDER, lane.tunables.model_copy(update={"timeout_s": 2.0}))  # cut at night
    adapter = registry.get(PROVIDER).adapter
    assert isinstance(adapter, ScriptedAdapter)
    adapter.default_behaviour = "hang_after_accept"  # the provider got slower than 2 s
    async with anyio.create_task_group() as tg:
        for i in range(GUARD_TIMEOUTS):
            tg.start_soon(router.submit, hanging_payment(f"guard-key-{i:04d}"))
        await clock.advance(3.0)
    assert lane.tunables.timeout_s == 10.0  # paystack's default, restored without waiting for a tick
    (record,) = opt.optimizations(provider=PROVIDER)
    assert (record.parameter, record.old_value, record.new_value) == ("timeout_s", 2.0, 10.0)
    assert record.status is OptimizationStatus.KEPT and record.decided_by == "engine"
    assert f"{GUARD_TIMEOUTS} calls within 30 s timed out ({GUARD_TIMEOUTS})" in record.reason
    assert "at timeout_s 2;" in record.reason and record.evidence["timeout_s"] == 2.0
    # Every one of those payments was found by the status query: none lost, none sent twice.
    assert all(count == 1 for count in adapter.charges.values()) and len(adapter.charges) == GUARD_TIMEOUTS


async def test_calls_answering_close_to_a_cut_timeout_trigger_the_guard_before_any_times_out(
    clock: ManualClock, parts: Parts
) -> None:
    router = parts[0]
    opt = optimizer(clock, parts)
    lane = router.lane(PROVIDER)
    router.set_tunables(PROVIDER, lane.tunables.model_copy(update={"timeout_s": 2.0}))
    for _ in range(GUARD_TIMEOUTS):  # answered after 80 % of 2 s: the latency is closing in
        await clock.advance(1.0)
        opt.on_timeout(PROVIDER, False)
    assert lane.tunables.timeout_s == 10.0
    (record,) = opt.optimizations(provider=PROVIDER)
    assert "timed out (0)" in record.reason and f"of the timeout ({GUARD_TIMEOUTS})" in record.reason


async def test_a_restored_cut_is_not_proposed_again_while_the_window_holds_its_reason(
    clock: ManualClock, parts: Parts
) -> None:
    router = parts[0]
    lane = router.lane(PROVIDER)
    timeout = ScriptedTuner("timeout_s")
    opt = optimizer(clock, parts, timeout)
    router.set_tunables(PROVIDER, lane.tunables.model_copy(update={"timeout_s": 2.0}))
    for _ in range(GUARD_TIMEOUTS):
        opt.on_timeout(PROVIDER)
    assert lane.tunables.timeout_s == 10.0
    timeout.proposal = cut_timeout()  # the 15-minute window still shows the fast night
    await opt.tick()
    assert running(opt) is None
    await clock.advance(INEFFECTIVE_COOLDOWN_S)
    await opt.tick()
    assert running(opt) == "timeout_s"


async def test_the_guard_leaves_default_pinned_and_sparse_timeouts_alone(
    clock: ManualClock, parts: Parts
) -> None:
    router = parts[0]
    opt = optimizer(clock, parts)
    lane = router.lane(PROVIDER)
    for _ in range(GUARD_TIMEOUTS + 2):  # at the default already: nothing to restore
        opt.on_timeout(PROVIDER)
    await clock.advance(GUARD_WINDOW_S + 1)
    router.set_tunables(PROVIDER, lane.tunables.model_copy(update={"timeout_s": 2.0}))
    for _ in range(GUARD_TIMEOUTS + 2):  # spread out: the odd hung call, not a slowdown
        await clock.advance(GUARD_WINDOW_S / 2 + 1)
        opt.on_timeout(PROVIDER)
    assert lane.tunables.timeout_s == 2.0 and opt.optimizations() == []
    opt.set_provider_config(PROVIDER, {"timeout_s": 2.0}, pin=True, reason="test: operator's choice")
    for _ in range(GUARD_TIMEOUTS):
        opt.on_timeout(PROVIDER)
    assert lane.tunables.timeout_s == 2.0 and opt.optimizations() == []


async def test_the_guard_ends_a_timeout_cut_canary_and_any_experiment_on_a_cut_lane(
    clock: ManualClock, parts: Parts
) -> None:
    router = parts[0]
    lane = router.lane(PROVIDER)
    timeout = ScriptedTuner("timeout_s", pileup_raise(10.0, 15.0))
    retry = ScriptedTuner("max_attempts")
    opt = optimizer(clock, parts, timeout, retry)
    # A raise from the default is not the guard's business: nothing was cut.
    timeout.proposal = Proposal("timeout_s", 10.0, 15.0, "scripted raise")
    await opt.tick()
    assert running(opt) == "timeout_s" and lane.canary is not None
    for _ in range(GUARD_TIMEOUTS):
        opt.on_timeout(PROVIDER)
    assert running(opt) == "timeout_s" and lane.canary is not None
    end_experiment(opt)
    # A canary cutting the timeout: its arm is where payments time out, so it ends at once.
    timeout.proposal = cut_timeout()
    await clock.advance(GUARD_WINDOW_S + 1)
    await opt.tick()
    assert running(opt) == "timeout_s" and lane.canary is not None
    for _ in range(GUARD_TIMEOUTS):
        opt.on_timeout(PROVIDER)
    assert running(opt) is None and lane.canary is None and lane.tunables.timeout_s == 10.0
    cut = next(o for o in opt.optimizations(provider=PROVIDER) if o.new_value == 5.0)
    assert cut.status is OptimizationStatus.REVERTED and "timeout guard" in (cut.verdict or "")
    # A cut timeout kept earlier, and an experiment on the attempts in flight when timeouts pile up.
    router.set_tunables(PROVIDER, lane.tunables.model_copy(update={"timeout_s": 2.0}))
    timeout.proposal, retry.proposal = None, one_attempt_less()
    await clock.advance(GUARD_WINDOW_S + 1)
    await opt.tick()
    assert running(opt) == "max_attempts"
    for _ in range(GUARD_TIMEOUTS):
        opt.on_timeout(PROVIDER)
    assert running(opt) is None and lane.canary is None
    ended = next(o for o in opt.optimizations(provider=PROVIDER) if o.parameter == "max_attempts")
    assert ended.status is OptimizationStatus.REVERTED and "timeout guard" in (ended.verdict or "")
    assert lane.tunables.timeout_s == 10.0 and lane.tunables.max_attempts == 3


# --- expired cuts ---------------------------------------------------------------------------


async def pay_one(clock: ManualClock, router: PaymentRouter, key: str) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(router.submit, hanging_payment(key))
        await clock.advance(5.0)  # past any backoff of the one retry


async def test_a_retry_cut_comes_back_as_soon_as_retries_save_payments_again(
    clock: ManualClock, parts: Parts
) -> None:
    router, registry = parts[0], parts[4]
    adapter = registry.get(PROVIDER).adapter
    assert isinstance(adapter, ScriptedAdapter)
    opt = optimizer(clock, parts, RetryTuner())  # type: ignore[arg-type]
    lane = router.lane(PROVIDER)
    router.set_tunables(PROVIDER, lane.tunables.model_copy(update={"max_attempts": 2}))  # cut in an outage
    await opt.tick()  # the tally's starting point
    # Still the outage: both attempts refused. The cut keeps its reason.
    for i in range(4):  # (8 calls: under the breaker's minimum, so the lane stays open to traffic)
        adapter.behaviours += ["refuse", "refuse"]
        await pay_one(clock, router, f"outage-{i:03d}")
    await opt.tick()
    assert lane.tunables.max_attempts == 2 and opt.optimizations() == []
    # Blips: every other payment's first attempt refused and its retry accepted, within 5 minutes.
    await clock.advance(30.0)
    for i in range(10):
        adapter.behaviours += ["refuse", "ok", "ok"]
        await pay_one(clock, router, f"blip-{i:03d}")
        await pay_one(clock, router, f"clean-{i:03d}")
    await opt.tick()
    assert lane.tunables.max_attempts == 3  # paystack's default, without a canary
    (record,) = opt.optimizations(provider=PROVIDER)
    assert (record.parameter, record.old_value, record.new_value) == ("max_attempts", 2.0, 3.0)
    assert record.status is OptimizationStatus.KEPT and record.mode == "before_after"
    assert "10 of 14 retries in the last 300 s saved a payment" in record.reason
    # In a dry run the restore is only announced.
    router.set_tunables(PROVIDER, lane.tunables.model_copy(update={"max_attempts": 2}))
    opt.set_mode(Mode.DRY_RUN, reason="test")
    await opt.tick()
    assert lane.tunables.max_attempts == 2 and len(opt.optimizations(provider=PROVIDER)) == 1
    assert any("would restore the default max_attempts 3" in e.message for e in parts[1].history())
    opt.set_mode(Mode.ON, reason="test")
    # An operator's pin is never touched.
    opt.set_provider_config(PROVIDER, {"max_attempts": 2}, pin=True, reason="test: operator's choice")
    for i in range(10):
        adapter.behaviours += ["refuse", "ok", "ok"]
        await pay_one(clock, router, f"pinned-{i:03d}")
        await pay_one(clock, router, f"pinned-clean-{i:03d}")
    await opt.tick()
    assert lane.tunables.max_attempts == 2


# --- switchback ---------------------------------------------------------------------------


async def test_a_parameter_the_router_cannot_split_is_judged_by_switchback(
    clock: ManualClock, parts: Parts
) -> None:
    router = parts[0]
    lane = router.lane(PROVIDER)
    opt = optimizer(
        clock, parts, ScriptedTuner("rate_limit_per_s", Proposal("rate_limit_per_s", 100.0, 70.0, "x"))
    )
    opt.canary_config = CanaryConfig(min_samples_per_arm=10)
    await opt.tick()
    experiment = opt.provider_config(PROVIDER).experiment
    assert experiment is not None and experiment.mode == "switchback" and lane.canary is None
    # An operator's change to another parameter mid-experiment survives every switch.
    opt.set_provider_config(PROVIDER, {"timeout_s": 5.0}, pin=True, reason="test: operator's choice")
    # What is kept (for a restart and the other replicas) is the value before the trial, not the
    # candidate the lane runs in this slot, with the operator's change.
    kept = opt.store.get_state(opt.name, "tunables")[PROVIDER]
    assert (kept["rate_limit_per_s"], kept["timeout_s"]) == (100.0, 5.0)
    slots: list[float] = []
    for slot in range(4):
        slots.append(lane.tunables.rate_limit_per_s)
        for i in range(12):
            await router.submit(hanging_payment(f"slot-{slot}-{i:03d}"))
        await clock.advance(60.0)
        await opt.tick()
        if running(opt) is None:
            break
    assert slots == [70.0, 100.0]  # the candidate's slot, then the old value's, then the verdict
    (record,) = opt.optimizations(provider=PROVIDER)
    assert record.status is OptimizationStatus.KEPT and record.mode == "switchback"
    assert (record.after["calls"], record.before["calls"]) == (12.0, 12.0)
    assert lane.tunables.rate_limit_per_s == 70.0 and lane.tunables.timeout_s == 5.0


async def test_ending_a_switchback_restores_only_its_parameter(clock: ManualClock, parts: Parts) -> None:
    router = parts[0]
    lane = router.lane(PROVIDER)
    opt = optimizer(
        clock, parts, ScriptedTuner("rate_limit_per_s", Proposal("rate_limit_per_s", 100.0, 70.0, "x"))
    )
    await opt.tick()
    assert lane.tunables.rate_limit_per_s == 70.0
    router.set_tunables(PROVIDER, lane.tunables.model_copy(update={"max_attempts": 4}))  # e.g. a restore
    experiment = opt.provider_config(PROVIDER).experiment
    assert experiment is not None
    opt.revert_optimization(experiment.id, reason="test: operator")
    assert lane.tunables.rate_limit_per_s == 100.0 and lane.tunables.max_attempts == 4


async def test_the_status_cache_counts_reach_the_evidence(clock: ManualClock, parts: Parts) -> None:
    router = parts[0]
    auto = optimizer(clock, parts)
    adapter = router.registry.get(PROVIDER).adapter
    adapter.charges["ref-1"] = 1  # type: ignore[attr-defined]
    adapter.status_answers["ref-1"] = TransactionStatus.PENDING  # type: ignore[attr-defined]
    await auto.tick()
    for _ in range(3):  # one pull, then two answers from the cache
        await router.query_status(PROVIDER, "ref-1")
    adapter.status_answers["ref-1"] = TransactionStatus.SUCCEEDED  # type: ignore[attr-defined]
    await clock.advance(6.0)  # past the 5 s TTL of a pending answer
    await router.query_status(PROVIDER, "ref-1")
    await auto.tick()
    evidence = auto.evidence(PROVIDER)
    assert (evidence.status_queries, evidence.status_cache_hits, evidence.stale_cache_hits) == (4, 2, 2)


async def test_the_long_run_latency_and_its_history_reach_the_evidence(
    clock: ManualClock, parts: Parts
) -> None:
    """The timeout tuner's floor and its history rule read these: without them a cut made in a fast
    hour would stand through the slow one that follows."""
    _, _, _, telemetry, _ = parts
    auto = optimizer(clock, parts)
    await auto.tick()
    early = auto.evidence(PROVIDER)
    assert early.long_run_latency_p99_ms is None and early.long_run_covered_s == 0.0  # nothing measured
    for minute in range(40):
        for _ in range(10):
            telemetry.record_call(PROVIDER, Outcome.SUCCESS, 12_000.0 if minute < 5 else 300.0)
        await clock.advance(60.0)
        await auto.tick()
    evidence = auto.evidence(PROVIDER)
    assert evidence.long_run_latency_p999_ms == pytest.approx(12_000.0, rel=0.02)  # the slow minutes
    assert evidence.long_run_latency_p99_ms == pytest.approx(12_000.0, rel=0.02)
    assert evidence.long_run_covered_s >= 39 * 60.0
