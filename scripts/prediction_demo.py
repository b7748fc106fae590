"""A prediction appearing ahead of an outage, in minutes of simulated time (seconds of real time).

The engine runs on the sandbox (real adapters, real HTTP, the router, healer and predictor) on a
manual clock, with steady M-Pesa payments. After a cold start the predictor's series warm up;
then a latency ramp is injected into M-Pesa's STK push endpoint (what the `inject_fault` tool and
`mcp-autonomy chaos` schedule), and the run goes on until M-Pesa's calls time out and the incident
opens. It prints the warm-up as status reports it, each prediction when it is raised, and the lead
times: prediction -> first timeout, prediction -> incident.

    python scripts/prediction_demo.py --ramp-min 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import anyio

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock, iso
from mcp_autonomy.config import load_settings
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest
from mcp_autonomy.sandbox import LatencySpec
from mcp_autonomy.sandbox.embedded import embedded_sandbox

STEP_S = 30.0
PAYMENTS_PER_STEP = 8
RAMP_TO_MS = 18_000.0  # past M-Pesa's 15 s timeout


def _payment(i: int) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=f"demo-{i:06d}",
        operation=Operation.COLLECT,
        money=Money(amount_minor=10_000 + 100 * (i % 50), currency="KES"),
        phone=f"+2547{i:08d}",
        country="KE",
    )


async def demo(ramp_min: float, baseline_min: float, max_min: float) -> int:
    clock = ManualClock()
    state = Path(tempfile.mkdtemp(prefix="prediction-demo-"))
    os.chdir(state)  # no .env of the caller's
    settings = load_settings(
        state_dir=state / "state",
        prediction_interval_ms=int(STEP_S * 1000),
        auto_schedule_maintenance=False,  # a window would drain M-Pesa before the outage it predicts
        auto_scaling_enabled=False,
        auto_optimization_enabled=False,  # it would raise the timeout along with the ramp
    )
    start = clock.now()

    def minute(at: float) -> str:
        return f"[{(at - start) / 60:5.1f} min]"

    async with embedded_sandbox(clock) as sandbox:
        system = AutonomousSystem(settings, clock=clock)
        for name in ("mpesa", "paystack"):
            system.register_provider(sandbox.adapters[name])
        system.set_backup_providers("mpesa", ["paystack"])
        faults = sandbox.state.faults
        faults.add(
            "mpesa", LatencySpec(distribution="lognormal", median_ms=300, p99_ms=900), endpoints=["collect"]
        )
        sent = 0
        seen: set[str] = set()
        last_reason = ""
        timeouts_at: float | None = None
        ramp_at = start + baseline_min * 60.0

        async def pay(i: int, offset_s: float) -> None:
            await clock.sleep(offset_s)
            await system.submit_payment(_payment(i))

        async with system.running(), anyio.create_task_group() as tasks:
            print(
                f"{minute(clock.now())} cold start at {iso(start)}; {PAYMENTS_PER_STEP} M-Pesa payments every {STEP_S:.0f} s"
            )
            ramp_added = False
            for _ in range(int(max_min * 60 / STEP_S)):
                if not ramp_added and clock.now() >= ramp_at:
                    faults.add(
                        "mpesa",
                        LatencySpec(distribution="ramp", from_ms=0, to_ms=RAMP_TO_MS, ramp_s=ramp_min * 60.0),
                        endpoints=["collect"],
                    )
                    ramp_added = True
                    print(
                        f"{minute(clock.now())} fault: M-Pesa collect latency ramps +0 -> +{RAMP_TO_MS:.0f} ms over {ramp_min:g} min"
                    )
                for k in range(PAYMENTS_PER_STEP):
                    tasks.start_soon(pay, sent, k * STEP_S / PAYMENTS_PER_STEP)
                    sent += 1
                await clock.advance(STEP_S)
                warm_up = system.predictive_maintenance.warm_up()
                if warm_up.reason != last_reason and "mpesa" in warm_up.reason:
                    last_reason = warm_up.reason
                    print(f"{minute(clock.now())} predictor: {warm_up.reason}")
                for p in reversed(system.predictive_maintenance.predictions(provider="mpesa")):
                    if p.id not in seen:
                        seen.add(p.id)
                        print(
                            f"{minute(p.created_at)} PREDICTION {p.type.value} ({p.series}, confidence "
                            f"{p.confidence:.2f}): {p.recommended_action}"
                        )
                recent = system.telemetry.provider("mpesa").snapshot(STEP_S)
                if timeouts_at is None and recent.errors_by_class.get("timeout"):
                    timeouts_at = clock.now() - STEP_S
                    print(f"{minute(timeouts_at)} M-Pesa calls begin to time out")
                incidents = system.incidents.incidents(provider="mpesa")
                if incidents:
                    incident = incidents[0]
                    print(f"{minute(incident.opened_at)} incident {incident.id} opened: {incident.trigger}")
                    break
            tasks.cancel_scope.cancel()

        predictions = sorted(
            (
                p
                for p in system.predictive_maintenance.predictions(provider="mpesa")
                if p.created_at >= ramp_at
            ),
            key=lambda p: p.created_at,
        )
        if not predictions:
            print("no prediction was raised")
            return 1
        first = predictions[0]
        if timeouts_at is not None:
            print(f"lead time, first prediction -> first timeout: {timeouts_at - first.created_at:.0f} s")
        judged = system.predictive_maintenance.get_prediction(first.id)
        if judged is not None and judged.lead_time_s is not None:
            print(
                f"lead time, first prediction -> incident: {judged.lead_time_s:.0f} s ({judged.status.value})"
            )
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--ramp-min", type=float, default=20.0, help="minutes the latency ramp takes to reach +18 s"
    )
    parser.add_argument("--baseline-min", type=float, default=15.0, help="ordinary traffic before the ramp")
    parser.add_argument(
        "--max-min", type=float, default=120.0, help="give up after this many simulated minutes"
    )
    args = parser.parse_args()
    raise SystemExit(anyio.run(demo, args.ramp_min, args.baseline_min, args.max_min))


if __name__ == "__main__":
    main()
