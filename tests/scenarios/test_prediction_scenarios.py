"""Predictive maintenance end to end: the real adapters over real HTTP to the sandbox, the router,
the healer and the predictor on the manual clock. A slow latency ramp at M-Pesa must be predicted
before it becomes an outage, and the prediction must be scored against the incident that follows."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mcp_autonomy.autonomy.predictor import PredictionStatus, PredictionType
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import load_settings
from mcp_autonomy.events import EventType
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest
from mcp_autonomy.sandbox import LatencySpec
from mcp_autonomy.sandbox.embedded import embedded_sandbox
from tests.scenarios.traffic import Traffic

pytestmark = pytest.mark.anyio
WALL_CLOCK_BOUND_S = 240.0
STEP_S = 30.0  # one predictor interval per step
PAYMENTS_PER_STEP = 10  # one every 3 s of simulated time
BASELINE_MIN = 90
RAMP_MIN = 60
RAMP_TO_MS = 18_000.0  # past M-Pesa's 15 s timeout near the end of the ramp


def kes_payment(i: int) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=f"ramp-{i:06d}",
        operation=Operation.COLLECT,
        money=Money(amount_minor=10_000 + 100 * (i % 50), currency="KES"),
        phone=f"+2547{i:08d}",
        country="KE",
    )


async def test_slow_latency_ramp_is_predicted_before_the_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    clock = ManualClock()
    settings = load_settings(
        state_dir=tmp_path / "state",
        prediction_interval_ms=int(STEP_S * 1000),
        auto_schedule_maintenance=False,  # a window would drain M-Pesa before the outage it predicts
        auto_scaling_enabled=False,
        # The outage here is the ramp crossing M-Pesa's 15 s timeout; the optimizer would follow the
        # latency up (to about 3 x its p99) and there would be no outage to predict.
        auto_optimization_enabled=False,
    )
    with anyio.fail_after(WALL_CLOCK_BOUND_S):
        async with embedded_sandbox(clock) as sandbox:
            system = AutonomousSystem(settings, clock=clock)
            for adapter in sandbox.adapters.values():
                system.register_provider(adapter)
            system.set_backup_providers("mpesa", ["paystack"])
            faults = sandbox.state.faults
            ramp_start_s = BASELINE_MIN * 60.0
            async with system.running(), anyio.create_task_group() as tasks:
                # Payments slow down (the STK push endpoint); token and probe calls stay quick, so
                # it is the real calls' latency that has to give the trouble away.
                faults.add(
                    "mpesa",
                    LatencySpec(distribution="lognormal", median_ms=300, p99_ms=900),
                    endpoints=["collect"],
                )
                faults.add(
                    "mpesa",
                    LatencySpec(distribution="ramp", from_ms=0, to_ms=RAMP_TO_MS, ramp_s=RAMP_MIN * 60.0),
                    endpoints=["collect"],
                    start_s=ramp_start_s,
                )
                traffic = Traffic(
                    system, clock, tasks, kes_payment, per_step=PAYMENTS_PER_STEP, step_s=STEP_S
                )
                opened = await traffic.run(
                    (BASELINE_MIN + RAMP_MIN + 10) * 60.0,
                    until=lambda: bool(system.incidents.incidents(provider="mpesa")),
                )
                assert opened, "the ramp never became an incident"
                await clock.advance(60.0)
                tasks.cancel_scope.cancel()

                (incident, *_) = system.incidents.incidents(provider="mpesa")
                assert incident.opened_at > clock.now() - 3600  # during the ramp, not the baseline
                opened_into_ramp_s = incident.opened_at - (ManualClock.DEFAULT_START_EPOCH_S + ramp_start_s)
                assert opened_into_ramp_s > 0

                latency = [
                    p
                    for p in system.predictive_maintenance.predictions(provider="mpesa")
                    if p.series is not None
                    and p.series.startswith("latency")
                    and p.type in (PredictionType.DEGRADATION, PredictionType.FAILURE)
                ]
                assert latency, "the latency ramp raised no prediction"
                first = min(latency, key=lambda p: p.created_at)
                assert first.type in (PredictionType.DEGRADATION, PredictionType.FAILURE)
                lead_time_s = incident.opened_at - first.created_at
                assert lead_time_s > 0, f"predicted {-lead_time_s:.0f} s after the incident opened"
                # Raised well before the latency reached the timeout: in the first half of the ramp.
                assert first.created_at - (ManualClock.DEFAULT_START_EPOCH_S + ramp_start_s) < RAMP_MIN * 30
                assert first.status is PredictionStatus.CONFIRMED and first.lead_time_s == pytest.approx(
                    lead_time_s
                )
                assert incident.predicted_by and first.id in incident.predicted_by
                stats = await system.get_stats()
                assert stats.predictions["recall"] == 1.0
                assert stats.predictions["mean_lead_time_s"] >= lead_time_s
                baseline_alarms = [
                    e
                    for e in system.events.history(types=[EventType.PREDICTION], provider="mpesa")
                    if e.timestamp < ManualClock.DEFAULT_START_EPOCH_S + ramp_start_s
                ]
                assert baseline_alarms == [], [
                    (e.timestamp - ManualClock.DEFAULT_START_EPOCH_S, e.message) for e in baseline_alarms
                ]
