"""What the payment store costs per payment, and `router.submit` per payment against 80 us.

Run: `python benchmarks/store.py`.

1. Store cost per payment: the store calls the router makes for a payment answered at once,
   timed on the real store classes: a replay check (`get_payment`), the claim with its `sending`
   attempt (`create_payment`), the outcome with the payment (`finish_send`): two commits. The
   baseline is the four-commit pattern the router used before (`create_payment`, `begin_attempt`,
   `finish_attempt`, `save_payment`).
2. `router.submit` per payment, sequentially, with an instant in-process provider (answers at
   once, learns no provider id), on each store; the baseline is the same router on a no-op
   in-memory store, so the store's share is the difference.

Backends: SQLite as the engine opens it (WAL, `synchronous=FULL`) on the filesystem of the default
state directory (a real disk: every commit waits for an fsync) and, for reference, on tmpfs
(`/dev/shm`, where an fsync costs nothing); PostgreSQL when its binaries are installed, on the
test server of `tests/postgres.py` (unix socket, `fsync=off`, `synchronous_commit=off`: the
figure leaves out the WAL flush a production server pays per commit).
Left out everywhere: HTTP to the provider, the adapter's own work, the MCP/REST layer, and
provider ids an adapter learns mid-call (one more commit each on SQLite). The target (issue 15)
is judged on the real-disk SQLite figure, the one a default install gets.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

# Plain `python benchmarks/store.py` puts benchmarks/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_autonomy.clock import SystemClock
from mcp_autonomy.events import EventBus
from mcp_autonomy.payment_store import SqlitePaymentStore
from mcp_autonomy.payments import (
    AttemptOutcome,
    CallbackState,
    InboxCallback,
    PaymentAttempt,
    PaymentRecord,
    PaymentStore,
    ProviderIdentifier,
)
from mcp_autonomy.providers.base import (
    Money,
    Operation,
    PaymentContext,
    PaymentRequest,
    ProbeResult,
    ProviderCapabilities,
    ProviderTransaction,
    TransactionStatus,
)
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.resilience.router import PaymentRouter
from mcp_autonomy.store import Store
from mcp_autonomy.telemetry import Telemetry

TARGET_SUBMIT_US = 80.0
"""Issue 15: `router.submit` with an instant provider, on SQLite, including the durable writes."""
REPEATS = 5
PAYMENTS = {"sqlite_disk": 300, "sqlite_tmpfs": 1000, "postgres": 300, "no_store": 1000}
"""Payments per repeat (fewer where each costs an fsync or a round trip)."""
WARMUP_PAYMENTS = 50
DEFAULT_STATE_DIR = Path(__file__).resolve().parent.parent / "state"
"""Where `MCP_AUTONOMY_STATE_DIR` points by default (`./state` from the project root)."""
UNLIMITED_RATE_PER_S = 1e9  # the router's rate limit is not what is measured


class InstantAdapter:
    """A provider that accepts every payment at once, in process (no HTTP, no provider ids)."""

    name = "instant"
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT}), currencies=frozenset({"KES"}), countries=frozenset({"KE"})
    )

    async def initialize(self) -> None:
        return None

    async def refresh_credentials(self) -> None:
        return None

    async def probe(self) -> ProbeResult:
        return ProbeResult(ok=True, latency_ms=0.0)

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        return ProviderTransaction(
            provider=self.name,
            reference=request.idempotency_key,
            provider_reference=f"P-{request.idempotency_key}",
            status=TransactionStatus.PENDING,
        )

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        return await self.collect(request)

    async def status(
        self, reference: str, provider_reference: str | None = None, *, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        raise NotImplementedError("never asked: every payment is accepted at once")

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class NoStore:
    """A `PaymentStore` that keeps nothing: the router's own cost, without any store."""

    async def create_payment(self, record: PaymentRecord) -> PaymentRecord | None:
        return None

    async def get_payment(self, key_or_reference: str) -> PaymentRecord | None:
        return None

    async def find_payment(self, provider: str, *ids: str) -> PaymentRecord | None:
        return None

    async def begin_attempt(self, key: str, attempt: PaymentAttempt) -> int:
        return 1

    async def finish_attempt(self, key: str, attempt: PaymentAttempt) -> None:
        return None

    async def save_payment(self, record: PaymentRecord) -> None:
        return None

    async def finish_send(self, record: PaymentRecord, attempt: PaymentAttempt) -> None:
        return None

    async def record_identifier(self, identifier: ProviderIdentifier) -> None:
        return None

    def record_identifier_soon(self, identifier: ProviderIdentifier) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def identifiers(self, provider: str, reference: str) -> dict[str, str]:
        return {}

    async def due_for_check(self, now: float, limit: int) -> list[PaymentRecord]:
        return []

    async def list_payments(
        self, *, statuses: tuple[TransactionStatus, ...] = (), provider: str | None = None, limit: int = 100
    ) -> list[PaymentRecord]:
        return []

    async def count_by_status(self) -> dict[str, int]:
        return {}

    async def oldest_open(self) -> dict[str, float]:
        return {}

    async def add_callback(self, callback: InboxCallback) -> InboxCallback:
        return callback

    async def update_callback(self, callback: InboxCallback) -> None:
        return None

    async def callbacks_due(self, now: float, limit: int) -> list[InboxCallback]:
        return []

    async def list_callbacks(
        self,
        *,
        provider: str | None = None,
        states: tuple[CallbackState, ...] = (),
        idempotency_key: str | None = None,
        limit: int = 100,
    ) -> list[InboxCallback]:
        return []

    async def prune(self, *, finished_before: float) -> int:
        return 0

    async def ping(self) -> None:
        return None


def filesystem_of(path: Path) -> str:
    """The filesystem type and mount point `path` is on (the longest mount point above it)."""
    resolved = str(path.resolve())
    best = ("?", "?", "")
    with open("/proc/mounts") as mounts:
        for line in mounts:
            device, mount_point, fs_type = line.split()[:3]
            inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) > len(best[2]):
                best = (fs_type, device, mount_point)
    return f"{best[0]} ({best[1]} on {best[2]})"


def request(key: str) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=Operation.COLLECT,
        money=Money(amount_minor=15000, currency="KES"),
        phone="+254712345678",
        country="KE",
    )


def record(key: str, now: float) -> PaymentRecord:
    return PaymentRecord(
        idempotency_key=key,
        operation=Operation.COLLECT,
        money=Money(amount_minor=15000, currency="KES"),
        phone="+254712345678",
        country="KE",
        status=TransactionStatus.PENDING,
        created_at=now,
        updated_at=now,
        next_check_at=now + 5.0,
    )


def sending(now: float) -> PaymentAttempt:
    return PaymentAttempt(
        provider="instant", started_at=now, latency_ms=0.0, outcome=AttemptOutcome.SENDING, reference="R"
    )


def accept(payment: PaymentRecord, attempt: PaymentAttempt, now: float) -> None:
    attempt.outcome, attempt.latency_ms, attempt.provider_reference = AttemptOutcome.ACCEPTED, 0.1, "P"
    payment.provider, payment.reference, payment.provider_reference = (
        "instant",
        "R",
        f"P-{payment.idempotency_key}",
    )
    payment.updated_at, payment.next_check_at = now, now + 5.0


async def router_pattern(payments: PaymentStore, key: str) -> None:
    """The store calls of today's router: a read, then two commits."""
    now = time.time()
    payment = record(key, now)
    await payments.get_payment(key)
    attempt = sending(now)
    payment.attempts.append(attempt)
    await payments.create_payment(payment)
    attempt.seq = 1
    accept(payment, attempt, now)
    await payments.finish_send(payment, attempt)


async def four_commit_pattern(payments: PaymentStore, key: str) -> None:
    """The store calls of the router before: four commits."""
    now = time.time()
    payment = record(key, now)
    await payments.create_payment(payment)
    attempt = sending(now)
    attempt.seq = await payments.begin_attempt(key, attempt)
    accept(payment, attempt, now)
    await payments.finish_attempt(key, attempt)
    await payments.save_payment(payment)


async def per_payment_us(one: Callable[[str], Awaitable[Any]], prefix: str, count: int) -> float:
    """Microseconds per payment over `count` sequential payments."""
    keys = [f"{prefix}-{i:06d}" for i in range(count)]
    started = time.perf_counter()
    for key in keys:
        await one(key)
    return (time.perf_counter() - started) / count * 1e6


def make_router(payments: PaymentStore) -> PaymentRouter:
    clock = SystemClock()
    registry = ProviderRegistry()
    registry.register(InstantAdapter())
    router = PaymentRouter(registry, payments, Telemetry(clock), EventBus(clock), clock)
    router.lane("instant").limiter.set_rate(UNLIMITED_RATE_PER_S, UNLIMITED_RATE_PER_S)
    return router


def submitter(router: PaymentRouter) -> Callable[[str], Awaitable[Any]]:
    async def one(key: str) -> None:
        await router.submit(request(key))

    return one


def spread(runs: list[float]) -> str:
    return f"[median of {len(runs)}; {min(runs):.0f}-{max(runs):.0f}]"


Figures = dict[str, list[float]]


async def measure(payments: PaymentStore, label: str) -> Figures:
    """Each figure once per repeat, interleaved with the no-store router, so a busy machine
    slows every figure of a repeat alike (the ratios stay fair; the spread shows the noise)."""
    count = PAYMENTS[label]
    patterns: dict[str, Callable[[str], Awaitable[Any]]] = {
        "store": lambda key: router_pattern(payments, key),
        "store_before": lambda key: four_commit_pattern(payments, key),
        "submit": submitter(make_router(payments)),
        "no_store": submitter(make_router(NoStore())),
    }
    figures: Figures = {name: [] for name in patterns}
    for name, one in patterns.items():
        for i in range(WARMUP_PAYMENTS):
            await one(f"{label}-{name}-warm-{i:04d}")
    for repeat in range(REPEATS):
        for name, one in patterns.items():
            n = count if name != "no_store" else PAYMENTS["no_store"]
            figures[name].append(await per_payment_us(one, f"{label}-{name}-{repeat}", n))
    return figures


async def sqlite_figures(parent: Path, label: str) -> Figures:
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=parent) as state_dir:
        store = Store(Path(state_dir) / "mcp-autonomy.sqlite3").open()
        try:
            return await measure(SqlitePaymentStore(store), label)
        finally:
            store.close()


async def postgres_figures() -> Figures | str:
    try:
        from mcp_autonomy.pg.payment_store import PostgresPaymentStore
        from tests.postgres import postgres_bin_dir, start_server
    except ImportError as missing:
        return f"n/a ({missing})"
    if postgres_bin_dir() is None:
        return "n/a (PostgreSQL binaries not installed: `make test` installs them)"
    server = start_server()
    try:
        payments = PostgresPaymentStore(server.create_database())
        await payments.open()
        try:
            return await measure(payments, "postgres")
        finally:
            await payments.close()
    finally:
        server.close()


def line(name: str, runs: list[float], baseline: list[float], baseline_what: str) -> str:
    value, base = statistics.median(runs), statistics.median(baseline)
    return (
        f"{name}: {value:.0f} us (baseline: {base:.0f} us {baseline_what}, ratio: {value / base:.2f}x) "
        f"{spread(runs)}"
    )


async def main(sqlite_dirs: dict[str, Path]) -> None:
    backends: dict[str, tuple[str, Figures | str]] = {}
    for label, parent in sqlite_dirs.items():
        backends[label] = (filesystem_of(parent), await sqlite_figures(parent, label))
    backends["postgres"] = ("test server on tmpfs, fsync=off", await postgres_figures())
    for label, (where, figures) in backends.items():
        if isinstance(figures, str):
            print(f"store_cost_per_payment_{label}: {figures}")
            print(f"router_submit_per_payment_{label}: {figures}")
            continue
        print(f"# {label}: {where}")
        print(
            line(f"store_cost_per_payment_{label}", figures["store"], figures["store_before"], "four commits")
        )
        print(
            line(f"router_submit_per_payment_{label}", figures["submit"], figures["no_store"], "no-op store")
        )
        share = statistics.median(figures["submit"]) - statistics.median(figures["no_store"])
        print(f"store_share_of_submit_{label}: {share:.0f} us")
    judged = backends["sqlite_disk"][1]
    assert not isinstance(judged, str)
    submit = statistics.median(judged["submit"])
    verdict = "met" if submit <= TARGET_SUBMIT_US else "not met"
    print(
        f"router.submit on SQLite ({backends['sqlite_disk'][0]}): {submit:.0f} us per payment, "
        f"target <= {TARGET_SUBMIT_US:.0f} us: {verdict}"
    )


def sqlite_dirs() -> dict[str, Path]:
    """Where the SQLite file goes: the default state directory's disk, then tmpfs if present."""
    DEFAULT_STATE_DIR.mkdir(parents=True, exist_ok=True)
    dirs = {"sqlite_disk": DEFAULT_STATE_DIR}
    if os.path.isdir("/dev/shm"):
        dirs["sqlite_tmpfs"] = Path("/dev/shm")
    return dirs


if __name__ == "__main__":
    anyio.run(main, sqlite_dirs())
