"""Failover per fault kind at 100 payments a minute, against a router that fails over only on
refused connections.

Run: `python benchmarks/failover.py [--seeds N]` (3 seeds by default).

Each scenario is replayed on a fresh in-process sandbox with a `ManualClock`, real HTTP through
the real M-Pesa and IntaSend adapters and the real `PaymentRouter`: KES collections every 0.6 s
(100 a minute), each from its own customer, M-Pesa primary and IntaSend its backup. After
`WARM_UP_S` of healthy traffic the fault starts and lasts `FAULT_S`; then the reconciler settles
every payment (the clock runs on past M-Pesa's pending bound). Only the router and the reconciler
run: no healer, optimizer or predictor, in either arm, so the figures are the router's alone.

- **Ours:** `PaymentRouter` as shipped: each payment a provider certainly did not process fails
  over at once; the breaker opens on three provider failures in a row or on its 30 s window; two
  calls hung past the lane's slow threshold open it while they are still in flight; customer
  errors count for nothing but the customer-error storm signal.
- **Baseline:** the same router with the breaker unable to open and no hang detection: a payment
  fails over only when the provider certainly did not process it (a refused connection, a
  sourced "not processed" code), which any real gateway does; everything else waits for the
  status query, payment by payment.

Figures per fault kind (median and range over the seeds; simulated seconds from the fault's start):
- first backup success: the first payment taken by the backup;
- failed / unknown / needs_reconciliation among the payments that arrived during the fault:
  failed at the end of settling; unknown at the end of the fault (left at M-Pesa while the
  status query could not tell); needs_reconciliation at the end of settling;
- failed on the customers' side (a customer code or error: not an outage loss), and the
  customer-error storm signals raised;
- double charges: customers with more than one charge across all ledgers (must be 0);
- breaker trips and payments failed over (the customer scenarios must have none).

Targets (issue "Money truth II"): refused and a 503 *documented* as not processed: first backup
success within 1 s and at most 5 payments failed or unknown; hang: new payments on the backup
within 1 s of the first call passing the slow threshold; busy customer and customer-error storm:
no breaker trip, no failover; zero double charges everywhere. M-Pesa's 503 has no source saying
it was not processed, so it stays ambiguous: its scenario is reported against the same target and
the line says so. What the figures leave out: the healer (probes and passive health would fail
M-Pesa over too, in both arms, after 10-30 s), callbacks (the reconciler learns outcomes by
status pulls only here), and network time (loopback).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_autonomy.autonomy.reconciler import PaymentLocks, PaymentReconciler
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import EventBus, EventType
from mcp_autonomy.payment_store import SqlitePaymentStore
from mcp_autonomy.payments import PaymentRecord
from mcp_autonomy.providers.base import ErrorClass, Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.resilience.breaker import BreakerConfig
from mcp_autonomy.resilience.router import PaymentRouter
from mcp_autonomy.sandbox import (
    AcceptThenHangSpec,
    CustomerBehavior,
    CustomerErrorsSpec,
    ErrorRateSpec,
    FlappingSpec,
    LedgerOperation,
    OutageSpec,
)
from mcp_autonomy.sandbox.core import Realism
from mcp_autonomy.sandbox.embedded import EmbeddedSandbox, embedded_sandbox
from mcp_autonomy.store import Store
from mcp_autonomy.telemetry import Telemetry

PRIMARY, BACKUP = "mpesa", "intasend"
INTERVAL_S = 0.6  # 100 payments a minute
WARM_UP_S = 60.0
FAULT_S = 60.0
SETTLE_S = 2400.0  # past M-Pesa's 30-minute pending bound
CUSTOMER_DELAY_S = 3.0
BUSY_EVERY = 4  # the busy customer tries every 4th payment slot
REALISM = Realism(lookup_lag_s=2.0)  # lookups lag acceptance as at the real providers
BASELINE_BREAKER = BreakerConfig(
    failure_rate_threshold=1.0, minimum_calls=1_000_000, consecutive_failures_to_open=0
)
WALL_CLOCK_BOUND_S = 600.0


@dataclass
class Scenario:
    name: str
    start: Callable[[EmbeddedSandbox], None]
    kind: str  # "outage" | "hang" | "customer"
    documented_not_processed: bool = True


def _fault(spec: object) -> Callable[[EmbeddedSandbox], None]:
    def start(sandbox: EmbeddedSandbox) -> None:
        sandbox.state.faults.add(PRIMARY, spec, relative=True, end_s=FAULT_S)  # type: ignore[arg-type]

    return start


def _busy_customer(sandbox: EmbeddedSandbox) -> None:
    sandbox.state.customers.set(CustomerBehavior(msisdn=BUSY_PHONE, action="busy"))


def _storm(sandbox: EmbeddedSandbox) -> None:
    # Most payers' handsets never answer (M-Pesa 1037), as when a SIM toolkit rollout goes wrong.
    sandbox.state.faults.add(PRIMARY, CustomerErrorsSpec(rate=0.9), relative=True, end_s=FAULT_S)


BUSY_PHONE = "+254799999999"


def scenarios() -> list[Scenario]:
    return [
        Scenario("refused", _fault(OutageSpec(mode="refused")), "outage"),
        Scenario(
            "503_before_acceptance", _fault(OutageSpec(mode="503")), "outage", documented_not_processed=False
        ),
        Scenario(
            "5xx_after_acceptance",
            _fault(ErrorRateSpec(rate=1.0, http_status=500, after_processing=True)),
            "outage",
            documented_not_processed=False,
        ),
        Scenario("hang", _fault(AcceptThenHangSpec(rate=1.0, hang_s=600.0)), "hang"),
        Scenario(
            "flapping", _fault(FlappingSpec(period_s=20.0, down_fraction=0.5, mode="refused")), "outage"
        ),
        Scenario("customer_storm", _storm, "customer"),
        Scenario("busy_customer", _busy_customer, "customer"),
    ]


@dataclass
class RunFigures:
    first_backup_s: float | None
    failed: int
    unknown: int
    needs_reconciliation: int
    double_charges: int
    breaker_trips: int
    failed_over: int
    hang_threshold_s: float | None = None
    customer_failed: int = 0
    storm_signals: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


def payment(i: int, busy: bool) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=f"failover-{i:05d}",
        operation=Operation.COLLECT,
        money=Money(amount_minor=10_000 + 100 * (i % 50), currency="KES"),
        phone=BUSY_PHONE if busy else f"+2547{i:08d}",
        country="KE",
    )


async def run(scenario: Scenario, *, ours: bool, seed: int) -> RunFigures:
    clock = ManualClock()
    with tempfile.TemporaryDirectory() as state:
        async with embedded_sandbox(clock, seed=seed, realism=REALISM) as sandbox:
            registry = ProviderRegistry()
            registry.register(sandbox.adapters[PRIMARY])
            registry.register(sandbox.adapters[BACKUP])
            registry.set_backups(PRIMARY, [BACKUP])
            for adapter in (sandbox.adapters[PRIMARY], sandbox.adapters[BACKUP]):
                await adapter.initialize()
            store = Store(Path(state) / "db.sqlite3").open()
            payments = SqlitePaymentStore(store)
            bus = EventBus(clock)
            router = PaymentRouter(
                registry,
                payments,
                Telemetry(clock),
                bus,
                clock,
                breaker_config=None if ours else BASELINE_BREAKER,
                hang_detection=ours,
            )
            reconciler = PaymentReconciler(
                router=router,
                payments=payments,
                providers=registry,
                bus=bus,
                clock=clock,
                locks=PaymentLocks(),
            )
            sandbox.state.customers.set(
                CustomerBehavior(msisdn="+254700000000", action="accept", delay_s=CUSTOMER_DELAY_S)
            )
            returned: dict[str, tuple[float, PaymentRecord]] = {}
            fault_at = clock.monotonic() + WARM_UP_S
            total = int((WARM_UP_S + FAULT_S) / INTERVAL_S)
            fault_first = int(WARM_UP_S / INTERVAL_S)
            hang_threshold: float | None = None
            async with anyio.create_task_group() as tg:
                # Its own task: a pull may back off on the clock, which only this task advances.
                await tg.start(reconciler.run)

                async def send(i: int, busy: bool) -> None:
                    record = await router.submit(payment(i, busy))
                    returned[record.idempotency_key] = (clock.monotonic(), record)

                for i in range(total):
                    if i == fault_first:
                        if scenario.kind == "hang":
                            lane = router.lane(PRIMARY)
                            hang_threshold = router.hang_threshold_s(
                                lane, lane.tunables.timeout_s, clock.monotonic()
                            )
                        scenario.start(sandbox)
                    busy = scenario.name == "busy_customer" and i >= fault_first and i % BUSY_EVERY == 0
                    tg.start_soon(send, i, busy)
                    await clock.advance(INTERVAL_S)
                end_of_fault = {
                    key: record.status
                    for key, (_, record) in returned.items()
                    if int(key.split("-")[1]) >= fault_first
                }
                for _ in range(int(SETTLE_S / 5)):
                    await clock.advance(5.0)
                tg.cancel_scope.cancel()
            fault_keys = [payment(i, False).idempotency_key for i in range(fault_first, total)]
            final: dict[str, PaymentRecord] = {}
            for key in fault_keys:
                record = await payments.get_payment(key)
                if record is not None:
                    final[key] = record
            backups = sorted(
                at - fault_at
                for key, (at, record) in returned.items()
                if key in final
                and record.provider == BACKUP
                and record.status is not TransactionStatus.FAILED
            )
            charges = Counter(
                e.msisdn
                for provider in (PRIMARY, BACKUP)
                for e in sandbox.state.ledger.entries(provider=provider, operation=LedgerOperation.COLLECT)
                if e.status.value != "failed"
            )
            double = sum(1 for phone, n in charges.items() if n > 1 and phone != BUSY_PHONE)
            trips = sum(
                1
                for e in bus.history(types=[EventType.BREAKER_STATE_CHANGED], provider=PRIMARY, limit=100_000)
                if e.data.get("to") == "open"
            )
            storms = sum(
                1
                for e in bus.history(types=[EventType.CUSTOMER_ERROR_STORM], provider=PRIMARY, limit=1000)
                if e.data.get("state") == "started"
            )
            codes: frozenset[str] = frozenset().union(
                *(getattr(registry.get(p).adapter, "customer_codes", frozenset()) for p in (PRIMARY, BACKUP))
            )
            store.close()
            outcomes = Counter(r.status.value for r in final.values())
            return RunFigures(
                first_backup_s=backups[0] if backups else None,
                failed=sum(
                    1
                    for r in final.values()
                    if r.status is TransactionStatus.FAILED and not _customer(r, codes)
                ),
                customer_failed=sum(
                    1 for r in final.values() if r.status is TransactionStatus.FAILED and _customer(r, codes)
                ),
                storm_signals=storms,
                unknown=sum(1 for s in end_of_fault.values() if s is TransactionStatus.UNKNOWN),
                needs_reconciliation=outcomes.get(TransactionStatus.NEEDS_RECONCILIATION.value, 0),
                double_charges=double,
                breaker_trips=trips,
                failed_over=sum(1 for r in final.values() if r.failed_over),
                hang_threshold_s=hang_threshold,
                outcomes=outcomes,
            )


def _customer(record: PaymentRecord, codes: frozenset[str]) -> bool:
    """Failed on the customer's side (the busy customer, a storm's unanswered prompts): not an
    outage loss."""
    return (
        record.phone == BUSY_PHONE
        or record.provider_code in codes
        or any(a.outcome.value == ErrorClass.CUSTOMER.value for a in record.attempts)
    )


def spread(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "none"
    if len(set(known)) == 1:
        return f"{known[0]:g}"
    return f"{statistics.median(known):g} ({min(known):g}..{max(known):g})"


def judge(scenario: Scenario, ours: list[RunFigures]) -> tuple[bool | None, str]:
    """(met, what was judged); met is None where the issue's target does not apply."""
    worst = max(ours, key=lambda r: (r.failed + r.unknown, r.first_backup_s or 1e9))
    no_double = all(r.double_charges == 0 for r in ours)
    if scenario.kind == "customer":
        met = no_double and all(r.breaker_trips == 0 and r.failed_over == 0 for r in ours)
        if scenario.name == "customer_storm":
            met = met and all(r.storm_signals >= 1 for r in ours)
            return met, "no breaker trip, no failover, no double charge, the storm signalled"
        return met, "no breaker trip, no failover, no double charge"
    if scenario.kind == "hang":
        late = [
            None
            if r.first_backup_s is None or r.hang_threshold_s is None
            else r.first_backup_s - r.hang_threshold_s
            for r in ours
        ]
        met = no_double and all(v is not None and v <= 1.0 for v in late)
        return (
            met,
            f"on the backup {spread(late)} s after the first call passed the slow threshold (target <= 1 s)",
        )
    first = [r.first_backup_s for r in ours]
    bounded = no_double and worst.failed + worst.unknown <= 5
    if not scenario.documented_not_processed:
        # The 1 s target is for a 503 a provider documents as "not processed"; this one has no
        # such source, so it is ambiguous by design and only the bound on failed or unknown applies.
        return None if bounded else False, (
            f"no source says it was not processed, so it stays ambiguous: first backup success "
            f"{spread(first)} s (the 1 s target is for a documented 503); <= 5 failed or unknown: "
            f"{'met' if bounded else 'not met'}"
        )
    met = bounded and all(v is not None and v <= 1.0 for v in first)
    return met, "first backup success <= 1 s and <= 5 failed or unknown"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", help="one scenario by name")
    args = parser.parse_args()
    chosen = [s for s in scenarios() if args.only in (None, s.name)]
    all_met = True
    with anyio.fail_after(WALL_CLOCK_BOUND_S * len(chosen)):
        for scenario in chosen:
            ours = [await run(scenario, ours=True, seed=seed) for seed in range(args.seeds)]
            base = [await run(scenario, ours=False, seed=seed) for seed in range(args.seeds)]
            for label, attr in (
                ("first backup success", "first_backup_s"),
                ("failed", "failed"),
                ("failed on the customers' side", "customer_failed"),
                ("customer-error storm signals", "storm_signals"),
                ("unknown at the end of the fault", "unknown"),
                ("needs_reconciliation", "needs_reconciliation"),
                ("double charges", "double_charges"),
                ("breaker trips", "breaker_trips"),
                ("failed over", "failed_over"),
            ):
                unit = {"first_backup_s": " s", "breaker_trips": " trips", "storm_signals": " events"}.get(
                    attr, " payments"
                )
                print(
                    f"{scenario.name} {label}: {spread([getattr(r, attr) for r in ours])}{unit} "
                    f"(baseline: {spread([getattr(r, attr) for r in base])}{unit})"
                )
            met, target = judge(scenario, ours)
            all_met &= met is not False
            verdict = "n/a" if met is None else "met" if met else "not met"
            print(f"{scenario.name}: {verdict}: {target}")
    print(f"failover: {'met' if all_met else 'not met'} (every target that applies) over {args.seeds} seeds")


if __name__ == "__main__":
    anyio.run(main)
