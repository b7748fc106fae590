"""Auto-optimization end to end: the real Paystack adapter over real HTTP to the sandbox, the
router's canary split and the optimizer on the manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from mcp_autonomy.autonomy.optimization import LaneEvidence, Proposal
from mcp_autonomy.autonomy.optimizer import OptimizationStatus
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import load_settings
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest
from mcp_autonomy.resilience.tunables import ProviderTunables
from mcp_autonomy.sandbox import FlappingSpec, LatencySpec
from mcp_autonomy.sandbox.embedded import EmbeddedSandbox, embedded_sandbox
from tests.scenarios.traffic import Traffic

pytestmark = pytest.mark.anyio
WALL_CLOCK_BOUND_S = 300.0
STEP_S = 30.0
PER_STEP = 15  # one payment every 2 s


def ghs_payment(i: int) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=f"opt-{i:06d}",
        operation=Operation.COLLECT,
        money=Money(amount_minor=2_500 + i % 100, currency="GHS"),
        phone=f"+23324{i % 10_000_000:07d}",
        country="GH",
    )


@asynccontextmanager
async def optimizing_system(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[AutonomousSystem, EmbeddedSandbox, ManualClock]]:
    """Every sandbox provider registered, the optimizer ticking every minute, nothing else but healing."""
    clock = ManualClock()
    settings = load_settings(
        state_dir=tmp_path / "state",
        optimization_interval_ms=60_000,
        predictive_maintenance_enabled=False,
        auto_scaling_enabled=False,
        **overrides,
    )
    async with embedded_sandbox(clock) as sandbox:
        system = AutonomousSystem(settings, clock=clock)
        for adapter in sandbox.adapters.values():
            system.register_provider(adapter)
        yield system, sandbox, clock


async def test_timeout_follows_a_latency_shift_and_overrides_are_never_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with anyio.fail_after(WALL_CLOCK_BOUND_S):
        async with optimizing_system(tmp_path) as (system, sandbox, clock):
            faults = sandbox.state.faults
            async with system.running(), anyio.create_task_group() as tasks:
                # An operator pins M-Pesa's timeout: whatever happens, the optimizer leaves it.
                system.set_provider_config("mpesa", {"timeout_s": 25.0}, pin=True, reason="provider SLA")
                fast = faults.add(
                    "paystack",
                    LatencySpec(distribution="lognormal", median_ms=250, p99_ms=700),
                    endpoints=["collect"],
                )
                traffic = Traffic(system, clock, tasks, ghs_payment, per_step=PER_STEP, step_s=STEP_S)
                optimizer = system.auto_optimizer

                # A fast provider: the 10 s default timeout is cut towards its measured p99.9.
                await traffic.run(90 * 60.0)
                lane = system.router.lane("paystack")
                shortened = lane.tunables.timeout_s
                assert shortened < 10.0, optimizer.optimizations(provider="paystack")
                kept = [
                    o
                    for o in optimizer.optimizations(provider="paystack")
                    if o.status is OptimizationStatus.KEPT
                ]
                assert kept and kept[-1].parameter == "timeout_s" and kept[-1].p_values

                # The provider slows down: calls now take several times the shortened timeout.
                faults.remove(fast.id)
                faults.add(
                    "paystack",
                    LatencySpec(distribution="lognormal", median_ms=1_500, p99_ms=4_000),
                    endpoints=["collect"],
                )
                timeouts_before = lane.tally.timeouts
                await traffic.run(60 * 60.0)
                assert lane.tunables.timeout_s > shortened
                latencies = system.telemetry.provider("paystack").latencies_ms(15 * 60.0)
                assert lane.tunables.timeout_s * 1000 > float(np.percentile(latencies, 99))
                # Timeouts stopped piling up: few in the last quarter hour compared with the calls.
                last = optimizer.evidence("paystack")
                assert last.timeouts <= 0.01 * last.calls
                assert lane.tally.timeouts > timeouts_before  # the shift did cause some, before the fix

                # The operator's pin held throughout.
                assert system.router.lane("mpesa").tunables.timeout_s == 25.0
                assert all(o.parameter != "timeout_s" for o in optimizer.optimizations(provider="mpesa"))
                tasks.cancel_scope.cancel()


class NoRetriesTuner:
    """A tuner with a bad idea: switch Paystack's retries off whatever the errors (the change under
    test). A harmful timeout cut would not do here: the timeout guard ends such a canary between
    ticks, before any statistical verdict (tests/autonomy/test_optimizer.py)."""

    parameter = "max_attempts"

    def propose(
        self, provider: str, current: ProviderTunables, evidence: LaneEvidence, *, conservative: bool
    ) -> Proposal | None:
        if provider != "paystack" or current.max_attempts == 1 or evidence.calls < 50:
            return None
        return Proposal("max_attempts", current.max_attempts, 1, "test: a harmful proposal")


async def test_a_change_that_makes_things_worse_is_reverted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with anyio.fail_after(WALL_CLOCK_BOUND_S):
        async with optimizing_system(tmp_path) as (system, sandbox, clock):
            system.auto_optimizer.tuners = (NoRetriesTuner(),)
            async with system.running(), anyio.create_task_group() as tasks:
                # The port refuses connections 2 s in every 10 ("certainly not processed"): a retry
                # a second or two later usually gets through.
                sandbox.state.faults.add(
                    "paystack", FlappingSpec(period_s=10.0, down_fraction=0.2, mode="refused")
                )
                traffic = Traffic(system, clock, tasks, ghs_payment, per_step=PER_STEP, step_s=STEP_S)
                optimizer = system.auto_optimizer

                def decided() -> bool:
                    return any(o.status is OptimizationStatus.REVERTED for o in optimizer.optimizations())

                assert await traffic.run(40 * 60.0, until=decided)
                reverted = next(
                    o for o in optimizer.optimizations() if o.status is OptimizationStatus.REVERTED
                )
                assert reverted.mode == "canary" and reverted.decided_by == "engine"
                assert reverted.parameter == "max_attempts" and reverted.new_value == 1
                after, before = reverted.after["success_rate"], reverted.before["success_rate"]
                assert after is not None and before is not None and after < before
                print(reverted.verdict)
                assert reverted.p_values["success_lower"] < 0.05
                assert reverted.verdict and "significantly worse on success_rate" in reverted.verdict
                lane = system.router.lane("paystack")
                assert lane.tunables.max_attempts == 3 and lane.canary is None
                # Every payment has its outcome: none left unknown, none lost. A 503 from the
                # flapping port is ambiguous and Paystack's lookup may lag acceptance, so its
                # "not found" settles the payment only past the lookup grace: let the reconciler run.
                await traffic.drain()
                grace_s = system.router.money_truth("paystack").not_found_grace_s
                for _ in range(int(grace_s // 10) + 3):
                    await clock.advance(10.0)
                for i in range(traffic.sent - PER_STEP * 4):
                    record = await system.router.get_payment(f"opt-{i:06d}")
                    assert record is not None and record.status.value != "unknown"
                tasks.cancel_scope.cancel()


async def test_an_outage_lowers_the_breaker_threshold_and_its_end_restores_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with anyio.fail_after(WALL_CLOCK_BOUND_S):
        # The window threshold is what this tuner moves; with the fast trip on (the default)
        # three refusals in a row open the breaker whatever the threshold, so the tuner's
        # outage rule never has to act (see DESIGN.md, "Failover speed").
        async with optimizing_system(tmp_path, breaker_consecutive_failures=0) as (system, sandbox, clock):
            optimizer = system.auto_optimizer
            lane = system.router.lane("paystack")
            async with system.running(), anyio.create_task_group() as tasks:
                traffic = Traffic(system, clock, tasks, ghs_payment, per_step=PER_STEP, step_s=STEP_S)
                await traffic.run(10 * 60.0)  # a healthy baseline: the provider's normal error level
                assert lane.tunables.breaker_failure_rate == 0.5  # a clean provider keeps the default
                # Down 30 s of every minute: retries 1-3 s later meet the same down phase.
                outage = sandbox.state.faults.add(
                    "paystack", FlappingSpec(period_s=60.0, down_fraction=0.5, mode="refused")
                )

                def breaker_cut() -> bool:
                    return any(
                        o.parameter == "breaker_failure_rate" and o.new_value < o.old_value
                        for o in optimizer.optimizations(provider="paystack")
                    )

                assert await traffic.run(30 * 60.0, until=breaker_cut)
                cut = next(
                    o
                    for o in optimizer.optimizations(provider="paystack")
                    if o.parameter == "breaker_failure_rate"
                )
                assert (cut.old_value, cut.new_value, cut.mode) == (0.5, 0.35, "switchback")
                assert cut.reason.startswith("outage:") and cut.evidence["recovery_on_retry_rate"] < 0.1
                sandbox.state.faults.remove(outage.id)

                def restored() -> bool:
                    config = optimizer.provider_config("paystack")
                    running = (
                        config.experiment is not None
                        and config.experiment.parameter == "breaker_failure_rate"
                    )
                    return not running and lane.tunables.breaker_failure_rate == 0.5

                assert await traffic.run(10 * 60.0, until=restored)
                assert lane.breaker.config.failure_rate_threshold == 0.5
                records = optimizer.optimizations(provider="paystack")
                ended = [
                    o for o in records if o.parameter == "breaker_failure_rate" and o.decided_at is not None
                ]
                assert ended and "the outage that justified the cut is over" in (
                    ended[0].verdict or ended[0].reason
                )
                tasks.cancel_scope.cancel()
