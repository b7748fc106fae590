"""Self-healing through a hard M-Pesa outage, against the original module's fail-over design.

Run: `python benchmarks/healing.py`.

One scenario, replayed twice on a fresh in-process sandbox with a `ManualClock`, real HTTP through
the real adapters: M-Pesa is the primary with Paystack as its backup, KES collections arrive at
10 per simulated second, and at 65 s (the middle of a 10 s poll interval: neither the best nor
the worst phase for a poller) M-Pesa's port starts refusing connections for 2 minutes, over three
times the slower run's fail-over. The payment stream ends with the outage.

- **Ours:** the real `AutonomousSystem` with its default settings, the self-healer polling every
  `SELF_HEALING_INTERVAL_MS` = 10 000 ms like the original: any gain comes from the design
  (breaker and passive error rate, immediate failover of a payment M-Pesa certainly did not take).
- **Baseline:** `OriginalFailover` below, the original module's design as a competent operator
  would run it (not product code): one health check per provider every 10 s, a provider declared
  down after 3 consecutive failed checks and then traffic switched to the backup; until then
  every payment goes to the primary first and, like any real payment gateway, a payment the
  primary certainly did not take (connection refused: `not_processed`) is sent once to the
  backup. Any other failure at the primary is a failed payment. Its checks call M-Pesa's
  `probe()` with the adapter's 30 s probe cache turned off, so every check really reaches the
  provider (the original design's best case).

Figures, in simulated seconds on the `ManualClock` (deterministic: identical on every run):

- time to detect: outage start -> first detection (ours: the first `breaker_state_changed` to open
  or `provider_health_changed` to unhealthy for M-Pesa; baseline: the third failed check);
- time to fail over: outage start -> the first payment after which no payment is sent to M-Pesa
  over the wire any more (a payment the open breaker rejects locally is not sent);
- payments failed: ended `failed`, nobody's money moved and the customer got an error;
- payments unknown: ended `unknown` (an ambiguous answer no status query resolved), left at M-Pesa;
- payments sent to the dead primary: outage payments that reached M-Pesa's refused port;
- payments lost: no record, or a record that disagrees with the sandbox ledger (accepted without a
  ledger entry, failed with one); double charges: customers with more than one ledger collection.
  Both must be 0.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import Settings, load_settings
from mcp_autonomy.events import Event, EventType
from mcp_autonomy.payments import AttemptOutcome, PaymentRecord
from mcp_autonomy.providers.base import (
    ErrorClass,
    Money,
    Operation,
    PaymentRequest,
    ProviderAdapter,
    ProviderError,
    TransactionStatus,
)
from mcp_autonomy.providers.mpesa import MpesaAdapter, MpesaSettings
from mcp_autonomy.sandbox import CustomerBehavior, LedgerOperation, MpesaSandboxConfig, OutageSpec
from mcp_autonomy.sandbox.embedded import EmbeddedSandbox, embedded_sandbox

PRIMARY = "mpesa"
BACKUP = "paystack"
PAYMENTS_PER_S = 10
OUTAGE_START_S = 65.0
OUTAGE_S = 120.0
PAYMENTS = int((OUTAGE_START_S + OUTAGE_S) * PAYMENTS_PER_S)
OUTAGE_INDEX = int(OUTAGE_START_S * PAYMENTS_PER_S)
ORIGINAL_POLL_S = 10.0
"""The original module's health-check interval (and our `SELF_HEALING_INTERVAL_MS` default)."""
ORIGINAL_FAILURES_TO_DOWN = 3
"""Consecutive failed health checks after which the original module declared a provider down."""
CUSTOMER_ANSWERS_AFTER_S = 86_400.0
"""Customers answer their payment prompts only after the scenario (see `prepare_sandbox`)."""
WALL_CLOCK_BOUND_S = 120.0
"""Real seconds both runs may take together (about 30 s on an idle machine): a hang fails, never stalls."""


def kes_payment(i: int) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=f"healing-{i:05d}",
        operation=Operation.COLLECT,
        money=Money(amount_minor=10_000 + 100 * (i % 500), currency="KES"),  # whole shillings
        phone=f"+2547{i:08d}",  # one customer per payment: a second ledger entry is a double charge
        country="KE",
    )


@dataclass(frozen=True)
class PaymentOutcome:
    """What happened to one payment of the stream, as its caller and the providers saw it."""

    index: int
    submitted_at_s: float
    sent_to_primary: bool  # reached M-Pesa over the wire (not rejected locally)
    status: TransactionStatus | None  # None: no record at all


@dataclass(frozen=True)
class RunResult:
    """One run's figures (simulated seconds since the outage started)."""

    time_to_detect_s: float | None
    time_to_fail_over_s: float | None
    route_change_s: float | None  # ours: the failover_triggered event; baseline: the switch
    payments_failed: int
    payments_unknown: int  # outcome unknown at M-Pesa (ambiguous, unresolved): never sent elsewhere
    sent_to_dead_primary: int
    payments_lost: int
    double_charges: int


async def advance_to(clock: ManualClock, monotonic_s: float) -> None:
    await clock.advance(max(0.0, monotonic_s - clock.monotonic()))


def since_outage(at_s: float | None) -> float | None:
    return None if at_s is None else at_s - OUTAGE_START_S


def fail_over_time_s(outcomes: list[PaymentOutcome]) -> float | None:
    """The first outage payment after the last one sent to M-Pesa; None if it never stopped."""
    during = outcomes[OUTAGE_INDEX:]
    last_sent = max((o.index for o in during if o.sent_to_primary), default=OUTAGE_INDEX - 1)
    if last_sent + 1 >= len(outcomes):
        return None
    return outcomes[last_sent + 1].submitted_at_s


def ledger_checks(sandbox: EmbeddedSandbox, outcomes: list[PaymentOutcome]) -> tuple[int, int]:
    """(payments lost, double charges) against the sandbox ledger, the ground truth."""
    collections = sandbox.state.ledger.entries(operation=LedgerOperation.COLLECT)
    per_customer = Counter(e.msisdn for e in collections)
    lost = 0
    for outcome in outcomes:
        charged = per_customer.get(kes_payment(outcome.index).phone, 0) > 0
        if outcome.status is None:
            lost += 1
        elif outcome.status is not TransactionStatus.UNKNOWN and charged != (
            outcome.status is not TransactionStatus.FAILED
        ):
            lost += 1  # an `unknown` record is honest either way; any other must match the ledger
    double_charges = sum(1 for count in per_customer.values() if count > 1)
    return lost, double_charges


def prepare_sandbox(sandbox: EmbeddedSandbox) -> None:
    """The scenario's sandbox: M-Pesa's outage scheduled, customers who answer after the run.

    The outage is in the sandbox's own fault schedule (absolute clock times), so its gate closes
    M-Pesa's port at exactly OUTAGE_START_S, before the payment due at that instant. Customers
    answer their prompts only after the scenario: payments stay `pending` (accepted, the
    customer prompted), which is all the figures need; scheduled approvals and their callbacks
    would each cost ~100 ms of real time in `ManualClock.advance` (anyio's
    `wait_all_tasks_blocked` on asyncio polls every 0.1 s while any task is runnable).
    """
    sandbox.state.faults.add(
        PRIMARY,
        OutageSpec(mode="refused"),
        start_s=OUTAGE_START_S,
        end_s=OUTAGE_START_S + OUTAGE_S,
        relative=False,
    )
    for i in range(PAYMENTS):
        sandbox.state.customers.set(
            CustomerBehavior(msisdn=kes_payment(i).phone, delay_s=CUSTOMER_ANSWERS_AFTER_S)
        )


async def submit_stream(clock: ManualClock, submit: Callable[[int, PaymentRequest], Awaitable[None]]) -> None:
    """The payment stream both runs share: PAYMENTS_PER_S a second of simulated time."""
    for i in range(PAYMENTS):
        await advance_to(clock, i / PAYMENTS_PER_S)
        await submit(i, kes_payment(i))


# --- ours ---------------------------------------------------------------------------------


def sent_to(record: PaymentRecord, provider: str) -> bool:
    return any(
        a.provider == provider and a.outcome is not AttemptOutcome.REJECTED_LOCALLY for a in record.attempts
    )


async def run_ours() -> RunResult:
    clock = ManualClock()
    default_interval_ms = Settings.model_fields["self_healing_interval_ms"].default
    assert default_interval_ms == ORIGINAL_POLL_S * 1000, "the comparison assumes the same poll interval"
    detected_at: list[float] = []
    route_changed_at: list[float] = []

    def watch(event: Event) -> None:
        if event.provider != PRIMARY:
            return
        now = clock.monotonic()
        if (event.type is EventType.BREAKER_STATE_CHANGED and event.data.get("to") == "open") or (
            event.type is EventType.PROVIDER_HEALTH_CHANGED and event.data.get("to") == "unhealthy"
        ):
            detected_at.append(now)
        elif event.type is EventType.FAILOVER_TRIGGERED:
            route_changed_at.append(now)

    with tempfile.TemporaryDirectory() as state_dir:
        settings = load_settings(state_dir=Path(state_dir), self_healing_interval_ms=default_interval_ms)
        async with embedded_sandbox(clock) as sandbox:
            prepare_sandbox(sandbox)
            system = AutonomousSystem(settings, clock=clock)
            for adapter in sandbox.adapters.values():
                system.register_provider(adapter)
            system.set_backup_providers(PRIMARY, [BACKUP])
            system.events.add_listener(watch)
            outcomes: list[PaymentOutcome] = []

            async def submit(i: int, request: PaymentRequest) -> None:
                record = await system.submit_payment(request)
                stored = await system.router.get_payment(request.idempotency_key)
                outcomes.append(
                    PaymentOutcome(
                        i,
                        clock.monotonic(),
                        sent_to(record, PRIMARY),
                        None if stored is None else stored.status,
                    )
                )

            async with system.running():
                await submit_stream(clock, submit)
            lost, double_charges = ledger_checks(sandbox, outcomes)
    during = outcomes[OUTAGE_INDEX:]
    return RunResult(
        time_to_detect_s=since_outage(min((t for t in detected_at if t >= OUTAGE_START_S), default=None)),
        time_to_fail_over_s=since_outage(fail_over_time_s(outcomes)),
        route_change_s=since_outage(min(route_changed_at, default=None)),
        payments_failed=sum(1 for o in outcomes if o.status is TransactionStatus.FAILED),
        payments_unknown=sum(1 for o in outcomes if o.status is TransactionStatus.UNKNOWN),
        sent_to_dead_primary=sum(1 for o in during if o.sent_to_primary),
        payments_lost=lost,
        double_charges=double_charges,
    )


# --- baseline: the original module's design, replayed ---------------------------------------


class OriginalFailover:
    """A replay of the original module's fail-over design (benchmark baseline, not product code).

    A health check of every provider each `poll_s`; a provider is down after `failures_to_down`
    consecutive failed checks and up again after one good check. A payment goes to the primary
    unless it is down (then to the backup). A refused connection (`not_processed`: certainly not
    taken) at the primary sends it once to the backup, as any gateway would; no breaker, no
    retry, and any other failure is a failed payment.
    """

    def __init__(
        self,
        clock: ManualClock,
        payment_adapters: dict[str, ProviderAdapter],
        checkers: dict[str, ProviderAdapter],
        *,
        primary: str,
        backup: str,
        poll_s: float = ORIGINAL_POLL_S,
        failures_to_down: int = ORIGINAL_FAILURES_TO_DOWN,
    ) -> None:
        self.clock = clock
        self.payment_adapters = payment_adapters
        self.checkers = checkers
        self.primary = primary
        self.backup = backup
        self.poll_s = poll_s
        self.failures_to_down = failures_to_down
        self.consecutive_failures: dict[str, int] = dict.fromkeys(checkers, 0)
        self.down: set[str] = set()
        self.declared_down_at: dict[str, float] = {}

    async def poll_forever(self) -> None:
        while True:
            for name, checker in self.checkers.items():
                await self.check(name, checker)
            await self.clock.sleep(self.poll_s)

    async def check(self, name: str, checker: ProviderAdapter) -> None:
        try:
            ok = (await checker.probe()).ok
        except ProviderError:
            ok = False
        if ok:
            self.consecutive_failures[name] = 0
            self.down.discard(name)
            return
        self.consecutive_failures[name] += 1
        if self.consecutive_failures[name] >= self.failures_to_down and name not in self.down:
            self.down.add(name)
            self.declared_down_at.setdefault(name, self.clock.monotonic())

    def provider_for_next_payment(self) -> str:
        if self.primary in self.down and self.backup not in self.down:
            return self.backup
        return self.primary

    async def submit(self, request: PaymentRequest) -> tuple[str, TransactionStatus]:
        """Send the payment; returns the first provider it was sent to and its final status."""
        provider = self.provider_for_next_payment()
        try:
            txn = await self.payment_adapters[provider].collect(request)
        except ProviderError as exc:
            if provider == self.backup or exc.error_class is not ErrorClass.NOT_PROCESSED:
                return provider, TransactionStatus.FAILED
        else:
            return provider, txn.status
        try:
            txn = await self.payment_adapters[self.backup].collect(request)
        except ProviderError:
            return provider, TransactionStatus.FAILED
        return provider, txn.status


def uncached_mpesa_checker(clock: ManualClock, sandbox: EmbeddedSandbox) -> MpesaAdapter:
    """An M-Pesa adapter whose `probe()` always calls Daraja (its 30 s probe cache off)."""
    cfg = MpesaSandboxConfig()
    settings = MpesaSettings(
        consumer_key=SecretStr(cfg.consumer_key),
        consumer_secret=SecretStr(cfg.consumer_secret),
        shortcode=cfg.shortcode,
        passkey=SecretStr(cfg.passkey),
        base_url=sandbox.address.url(PRIMARY),
        probe_min_interval_s=0.0,
    )
    return MpesaAdapter(settings, clock)


async def initialize(adapters: Iterable[ProviderAdapter]) -> None:
    for adapter in adapters:
        await adapter.initialize()


async def close(adapters: Iterable[ProviderAdapter]) -> None:
    for adapter in adapters:
        await adapter.close()


async def run_baseline() -> RunResult:
    clock = ManualClock()
    async with embedded_sandbox(clock) as sandbox:
        prepare_sandbox(sandbox)
        payment_adapters = {name: sandbox.adapters[name] for name in (PRIMARY, BACKUP)}
        checkers: dict[str, ProviderAdapter] = {
            PRIMARY: uncached_mpesa_checker(clock, sandbox),
            BACKUP: sandbox.adapters[BACKUP],
        }
        adapters = [*payment_adapters.values(), checkers[PRIMARY]]
        await initialize(adapters)
        original = OriginalFailover(clock, payment_adapters, checkers, primary=PRIMARY, backup=BACKUP)
        outcomes: list[PaymentOutcome] = []

        async def submit(i: int, request: PaymentRequest) -> None:
            provider, status = await original.submit(request)
            outcomes.append(PaymentOutcome(i, clock.monotonic(), provider == PRIMARY, status))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(original.poll_forever)
                await submit_stream(clock, submit)
                tg.cancel_scope.cancel()
        finally:
            await close(adapters)
        lost, double_charges = ledger_checks(sandbox, outcomes)
    declared_down_at = original.declared_down_at.get(PRIMARY)
    return RunResult(
        time_to_detect_s=since_outage(declared_down_at),
        time_to_fail_over_s=since_outage(fail_over_time_s(outcomes)),
        route_change_s=since_outage(declared_down_at),
        payments_failed=sum(1 for o in outcomes if o.status is TransactionStatus.FAILED),
        payments_unknown=sum(1 for o in outcomes if o.status is TransactionStatus.UNKNOWN),
        sent_to_dead_primary=sum(1 for o in outcomes[OUTAGE_INDEX:] if o.sent_to_primary),
        payments_lost=lost,
        double_charges=double_charges,
    )


# --- report ---------------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def ratio(value: float | None, baseline: float | None) -> str:
    if value is None or baseline is None or baseline == 0:
        return "n/a"
    return f"{value / baseline:.2f}x"


async def main() -> None:
    started = time.perf_counter()
    with anyio.fail_after(WALL_CLOCK_BOUND_S):
        ours = await run_ours()
        baseline = await run_baseline()
    elapsed_s = time.perf_counter() - started
    for name, value, base in (
        ("healing_time_to_detect", ours.time_to_detect_s, baseline.time_to_detect_s),
        ("healing_time_to_fail_over", ours.time_to_fail_over_s, baseline.time_to_fail_over_s),
    ):
        print(f"{name}: {seconds(value)} (baseline: {seconds(base)}, ratio: {ratio(value, base)})")
    for name, count, base_count in (
        ("healing_payments_failed", ours.payments_failed, baseline.payments_failed),
        ("healing_payments_unknown", ours.payments_unknown, baseline.payments_unknown),
        ("healing_payments_sent_to_dead_primary", ours.sent_to_dead_primary, baseline.sent_to_dead_primary),
        ("healing_payments_lost", ours.payments_lost, baseline.payments_lost),
        ("healing_double_charges", ours.double_charges, baseline.double_charges),
    ):
        print(
            f"{name}: {count} payments (baseline: {base_count} payments, ratio: {ratio(count, base_count)})"
        )
    print(
        f"({PAYMENTS} payments per run at {PAYMENTS_PER_S}/s, M-Pesa refusing from {OUTAGE_START_S:.0f} s "
        f"for {OUTAGE_S:.0f} s, simulated seconds; ours failed over at "
        f"+{seconds(ours.route_change_s)} by the healer; {elapsed_s:.1f} s wall)"
    )


if __name__ == "__main__":
    anyio.run(main)
