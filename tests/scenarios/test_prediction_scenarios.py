"""Predictive maintenance end to end: the real adapters over real HTTP to the sandbox, the router,
the healer and the predictor on the manual clock, faults injected into the sandbox.

The failure shapes an operator cares about must each raise a prediction, with its lead time
measured and asserted: latency ramps of three slopes ahead of the provider's timeouts (and the
incident they open), an error rate creeping up, and a collapse of a provider's traffic. Six
fault-free hours of ordinary traffic must raise none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_autonomy.autonomy.predictor import Prediction, PredictionStatus, PredictionType
from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import load_settings
from mcp_autonomy.events import EventType
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest
from mcp_autonomy.sandbox import ErrorRateSpec, LatencySpec
from mcp_autonomy.sandbox.embedded import EmbeddedSandbox, embedded_sandbox
from tests.scenarios.traffic import Traffic

pytestmark = pytest.mark.anyio
WALL_CLOCK_BOUND_S = 240.0
STEP_S = 30.0  # one predictor interval per step
PAYMENTS_PER_STEP = 8  # 16 a minute at M-Pesa
BASELINE_MIN = 15  # the detectors' warm-up (10 points: 5 min) and some ordinary traffic after it
MPESA_TIMEOUT_MS = 15_000.0  # MpesaSettings.timeout_s
RAMP_TO_MS = 18_000.0  # past the timeout near the end of each ramp
MIN_LEAD_S = 120.0


def kes_payment(i: int) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=f"pay-{i:06d}",
        operation=Operation.COLLECT,
        money=Money(amount_minor=10_000 + 100 * (i % 50), currency="KES"),
        phone=f"+2547{i:08d}",
        country="KE",
    )


@dataclass
class Scenario:
    """A running engine on the sandbox, with M-Pesa traffic and what was measured so far."""

    system: AutonomousSystem
    sandbox: EmbeddedSandbox
    clock: ManualClock
    traffic: Traffic
    started_at: float
    timeouts_began_at: float | None = None
    """Start of the first step in which an M-Pesa call timed out (the earliest it can have)."""

    async def run(self, seconds: float, *, until: Callable[[], bool] | None = None) -> bool:
        """Traffic for `seconds` (or until `until()`), watching for M-Pesa's first timeout."""
        for _ in range(max(1, round(seconds / self.traffic.step_s))):
            await self.traffic.run(self.traffic.step_s)
            if self.timeouts_began_at is None:
                recent = self.system.telemetry.provider("mpesa").snapshot(self.traffic.step_s)
                if recent.errors_by_class.get("timeout"):
                    self.timeouts_began_at = self.clock.now() - self.traffic.step_s
            if until is not None and until():
                return True
        return False

    def at(self, minute: float) -> float:
        """Wall-clock time `minute` minutes after the scenario started."""
        return self.started_at + minute * 60.0

    def predictions(self, *, series: Iterable[str] | None = None) -> list[Prediction]:
        """M-Pesa's predictions (of those series), oldest first."""
        wanted = None if series is None else set(series)
        found = [
            p
            for p in self.system.predictive_maintenance.predictions(provider="mpesa", limit=1000)
            if wanted is None or p.series in wanted
        ]
        return sorted(found, key=lambda p: p.created_at)


@asynccontextmanager
async def scenario(
    tmp_path: Path, *, step_s: float = STEP_S, per_step: int = PAYMENTS_PER_STEP, **settings: Any
) -> AsyncIterator[Scenario]:
    clock = ManualClock()
    config = load_settings(
        state_dir=tmp_path / "state",
        prediction_interval_ms=int(step_s * 1000),
        auto_schedule_maintenance=False,  # a window would drain M-Pesa before the trouble it predicts
        auto_scaling_enabled=False,
        # The optimizer would follow a latency ramp up (timeouts at about 3 x p99), and there
        # would be no timeouts to predict.
        auto_optimization_enabled=False,
        **settings,
    )
    with anyio.fail_after(WALL_CLOCK_BOUND_S):
        async with embedded_sandbox(clock) as sandbox:
            system = AutonomousSystem(config, clock=clock)
            for name in ("mpesa", "paystack"):
                system.register_provider(sandbox.adapters[name])
            system.set_backup_providers("mpesa", ["paystack"])
            # Payments take their ordinary time (the STK push endpoint); faults come on top.
            sandbox.state.faults.add(
                "mpesa",
                LatencySpec(distribution="lognormal", median_ms=300, p99_ms=900),
                endpoints=["collect"],
            )
            async with system.running(), anyio.create_task_group() as tasks:
                traffic = Traffic(system, clock, tasks, kes_payment, per_step=per_step, step_s=step_s)
                yield Scenario(system, sandbox, clock, traffic, started_at=clock.now())
                tasks.cancel_scope.cancel()


def _latency_predictions(run: Scenario) -> list[Prediction]:
    return [
        p
        for p in run.predictions(series=("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"))
        if p.type in (PredictionType.DEGRADATION, PredictionType.FAILURE)
    ]


@pytest.mark.parametrize("ramp_min", [8, 20, 45])
async def test_latency_ramp_is_predicted_before_the_timeouts_begin(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
    ramp_min: int,
) -> None:
    monkeypatch.chdir(tmp_path)
    async with scenario(tmp_path) as run:
        run.sandbox.state.faults.add(
            "mpesa",
            LatencySpec(distribution="ramp", from_ms=0, to_ms=RAMP_TO_MS, ramp_s=ramp_min * 60.0),
            endpoints=["collect"],
            start_s=BASELINE_MIN * 60.0,
        )
        ramp_start = run.at(BASELINE_MIN)
        opened = await run.run(
            (BASELINE_MIN + ramp_min + 15) * 60.0,
            until=lambda: bool(run.system.incidents.incidents(provider="mpesa")),
        )
        assert run.timeouts_began_at is not None, "the ramp never made M-Pesa time out"
        assert opened, "the timeouts never became an incident"
        assert [p for p in run.predictions() if p.created_at < ramp_start] == []  # the baseline is quiet

        latency = _latency_predictions(run)
        assert latency, f"the {ramp_min}-minute ramp raised no latency prediction"
        first = latency[0]
        lead_before_timeouts_s = run.timeouts_began_at - first.created_at
        record_property("lead_before_timeouts_s", lead_before_timeouts_s)
        record_property("raised_into_ramp_s", first.created_at - ramp_start)
        assert lead_before_timeouts_s >= MIN_LEAD_S, (
            f"{ramp_min}-min ramp: predicted {lead_before_timeouts_s:.0f} s before the timeouts began"
        )

        # The incident the timeouts opened confirms it, with the lead time measured to its opening.
        (incident, *_) = run.system.incidents.incidents(provider="mpesa")
        judged = run.system.predictive_maintenance.get_prediction(first.id)
        assert judged is not None and judged.status is PredictionStatus.CONFIRMED
        assert judged.lead_time_s == pytest.approx(incident.opened_at - first.created_at)
        assert judged.lead_time_s >= lead_before_timeouts_s
        assert first.id in incident.predicted_by
        stats = await run.system.get_stats()
        assert stats.predictions["recall"] == 1.0
        assert stats.predictions["mean_lead_time_s"] >= lead_before_timeouts_s


async def test_six_fault_free_hours_raise_no_prediction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # The default one-minute tick, and ordinary (thin) traffic: each point has a handful of calls.
    # Its cost is the payments', not the clock's (six idle hours take seconds): profiled, SQLite's
    # fsync on every payment write is about a third, then the reconciler's status pulls of each
    # pending STK push, the manual clock settling all tasks at each timer, and httpcore's failed
    # `import sniffio` on every request (a tenth).
    async with scenario(tmp_path, step_s=60.0, per_step=4) as run:
        await run.run(6 * 3600.0)
        warm_up = run.system.predictive_maintenance.warm_up()
        assert not warm_up.warming_up and warm_up.series_ready >= 6  # every M-Pesa series was watched
        assert run.system.predictive_maintenance.predictions() == []
        assert run.system.events.history(types=[EventType.PREDICTION]) == []


async def test_error_rate_creeping_up_is_predicted_before_the_incident(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Callable[[str, object], None]
) -> None:
    monkeypatch.chdir(tmp_path)
    async with scenario(tmp_path) as run:
        # A 5xx share that creeps up by 5 points every 2 minutes, until M-Pesa is mostly failing.
        for step in range(12):
            run.sandbox.state.faults.add(
                "mpesa",
                ErrorRateSpec(rate=min(0.9, 0.05 * (step + 1))),
                endpoints=["collect"],
                start_s=(BASELINE_MIN + 2 * step) * 60.0,
                end_s=(BASELINE_MIN + 2 * step + 2) * 60.0 if step < 11 else None,
            )
        creep_start = run.at(BASELINE_MIN)
        opened = await run.run(
            (BASELINE_MIN + 40) * 60.0, until=lambda: bool(run.system.incidents.incidents(provider="mpesa"))
        )
        assert opened, "the failing provider never became an incident"
        assert [p for p in run.predictions() if p.created_at < creep_start] == []
        errors = [
            p
            for p in run.predictions(series=("error_rate", "breaker_opens"))
            if p.type in (PredictionType.DEGRADATION, PredictionType.FAILURE)
        ]
        assert errors, "the creeping error rate raised no prediction"
        (incident, *_) = run.system.incidents.incidents(provider="mpesa")
        lead_s = incident.opened_at - errors[0].created_at
        record_property("lead_before_incident_s", lead_s)
        assert lead_s >= MIN_LEAD_S, f"predicted {lead_s:.0f} s before the incident opened"


async def test_volume_collapse_is_predicted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_property: Callable[[str, object], None]
) -> None:
    monkeypatch.chdir(tmp_path)
    async with scenario(tmp_path) as run:
        await run.run(BASELINE_MIN * 60.0)
        collapse_at = run.clock.now()
        # Upstream breaks: payments stop reaching M-Pesa altogether (no error anywhere to see).
        run.traffic.per_step = 0
        await run.run(10 * 60.0)
        volume = [
            p for p in run.predictions(series=("requests_per_min",)) if p.type is PredictionType.FAILURE
        ]
        assert volume, [(p.series, p.type) for p in run.predictions()]
        assert [p for p in run.predictions() if p.created_at < collapse_at] == []
        detected_after_s = volume[0].created_at - collapse_at
        record_property("detected_after_s", detected_after_s)
        assert detected_after_s <= 3 * STEP_S  # within the first few silent intervals
