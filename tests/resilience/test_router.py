"""The router's money rules, driven exactly with scripted providers (the adapters' own HTTP
behaviour is tested against the sandbox in tests/providers and the scenario tests)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from mcp_autonomy.autonomy.reconciler import PaymentLocks, PaymentReconciler
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import EventBus
from mcp_autonomy.payment_store import SqlitePaymentStore
from mcp_autonomy.payments import AttemptOutcome
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.providers.registry import ProviderRegistry
from mcp_autonomy.resilience.breaker import BreakerConfig, BreakerState
from mcp_autonomy.resilience.router import IdempotencyConflict, NoRouteError, PaymentRouter
from mcp_autonomy.store import Store
from mcp_autonomy.telemetry import Telemetry
from tests.fakes import ScriptedAdapter

pytestmark = pytest.mark.anyio

World = tuple[PaymentRouter, ScriptedAdapter, ScriptedAdapter, EventBus]


@pytest.fixture
def world(tmp_path: Path, clock: ManualClock) -> Iterator[World]:
    registry = ProviderRegistry()
    mpesa, intasend = ScriptedAdapter("mpesa"), ScriptedAdapter("intasend")
    registry.register(mpesa)
    registry.register(intasend)
    registry.set_backups("mpesa", ["intasend"])
    store = Store(tmp_path / "db.sqlite3").open()
    bus = EventBus(clock)
    router = PaymentRouter(
        registry,
        SqlitePaymentStore(store),
        Telemetry(clock),
        bus,
        clock,
        breaker_config=BreakerConfig(minimum_calls=5, window_s=30, wait_in_open_s=30),
    )
    yield router, mpesa, intasend, bus
    store.close()


def payment(key: str, amount: int = 10_000, operation: Operation = Operation.COLLECT) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=operation,
        money=Money(amount_minor=amount, currency="KES"),
        phone="+254712345678",
        country="KE",
    )


async def test_success_goes_to_the_primary(world: World) -> None:
    router, mpesa, intasend, _ = world
    record = await router.submit(payment("key-00001"))
    assert (record.status, record.provider, record.failed_over) == (TransactionStatus.PENDING, "mpesa", False)
    assert mpesa.charges == {"mpesa-key-00001": 1} and intasend.charges == {}
    assert await router.get_payment("key-00001") == record
    assert await router.get_payment("P-mpesa-key-00001") == record


async def test_replay_returns_the_first_result_and_never_charges_again(world: World) -> None:
    router, mpesa, _, _ = world
    first = await router.submit(payment("key-00002"))
    again = await router.submit(payment("key-00002"))
    assert again == first
    assert mpesa.calls == 1
    with pytest.raises(IdempotencyConflict, match="already used for a different payment"):
        await router.submit(payment("key-00002", amount=99))


async def test_refused_fails_over_at_once(world: World) -> None:
    router, mpesa, intasend, _ = world
    mpesa.behaviours = ["refuse"]
    record = await router.submit(payment("key-00003"))
    assert (record.provider, record.failed_over) == ("intasend", True)
    assert [a.outcome for a in record.attempts] == [AttemptOutcome.NOT_PROCESSED, AttemptOutcome.ACCEPTED]
    assert intasend.charges == {"intasend-key-00003": 1} and mpesa.charges == {}


async def test_invalid_request_fails_without_failover(world: World) -> None:
    router, mpesa, intasend, _ = world
    mpesa.behaviours = ["invalid"]
    record = await router.submit(payment("key-00004"))
    assert (record.status, record.provider, record.provider_code) == (
        TransactionStatus.FAILED,
        "mpesa",
        "400.002.02",
    )
    assert intasend.calls == 0


async def test_accept_then_hang_is_resolved_by_status_query_not_resent(
    world: World, clock: ManualClock
) -> None:
    router, mpesa, intasend, _ = world
    mpesa.behaviours = ["hang_after_accept"]
    async with anyio.create_task_group() as tg:
        results = []

        async def go() -> None:
            results.append(await router.submit(payment("key-00005")))

        tg.start_soon(go)
        await clock.advance(router.lane("mpesa").tunables.timeout_s + 1)
    (record,) = results
    assert (record.status, record.provider, record.failed_over) == (
        TransactionStatus.SUCCEEDED,
        "mpesa",
        False,
    )
    assert [a.outcome for a in record.attempts] == [
        AttemptOutcome.AMBIGUOUS,
        AttemptOutcome.RESOLVED_BY_STATUS,
    ]
    assert mpesa.charges == {"mpesa-key-00005": 1} and intasend.calls == 0


async def test_ambiguous_with_status_down_is_unknown_and_never_sent_elsewhere(
    world: World, clock: ManualClock
) -> None:
    router, mpesa, intasend, _ = world
    mpesa.behaviours = ["ambiguous"]
    mpesa.status_fails = True
    async with anyio.create_task_group() as tg:
        results = []

        async def go() -> None:
            results.append(await router.submit(payment("key-00006")))

        tg.start_soon(go)
        await clock.advance(120)
    (record,) = results
    assert (record.status, record.provider) == (TransactionStatus.UNKNOWN, "mpesa")
    assert intasend.calls == 0
    mpesa.status_fails = False
    reconciler = PaymentReconciler(
        router=router,
        payments=router.payments,
        providers=router.registry,
        bus=router.bus,
        clock=clock,
        locks=PaymentLocks(),
    )
    await clock.advance_to(max(clock.now(), record.next_check_at or 0.0))
    assert (await reconciler.tick()).finished == 1
    stored = await router.get_payment("key-00006")
    assert stored is not None and stored.status is TransactionStatus.SUCCEEDED


async def test_ambiguous_but_absent_at_provider_fails_over(world: World) -> None:
    router, mpesa, _intasend, _ = world
    mpesa.behaviours = ["refuse"]
    mpesa.charges.clear()
    record = await router.submit(payment("key-00007"))
    assert record.provider == "intasend"


async def test_open_breaker_rejects_locally_and_routes_to_backup(world: World) -> None:
    router, mpesa, _intasend, bus = world
    mpesa.default_behaviour = "refuse"
    for i in range(6):
        await router.submit(payment(f"key-1000{i}"))
    assert router.lane("mpesa").breaker.state is BreakerState.OPEN
    calls = mpesa.calls
    record = await router.submit(payment("key-20000"))
    assert mpesa.calls == calls  # never reached the provider
    assert record.attempts[0].outcome is AttemptOutcome.REJECTED_LOCALLY and record.provider == "intasend"
    assert any(e.type.value == "breaker_state_changed" for e in bus.history())


async def test_a_retry_the_breaker_rejects_is_not_tallied_as_sent(tmp_path: Path, clock: ManualClock) -> None:
    # One provider, nothing to fail over to: refusals are retried there. The breaker opens on the
    # 5th refusal (minimum 5 calls), so the second payment's last retry never leaves: the retry
    # tuner's recovery rate must not count it as a retry that failed to recover.
    registry = ProviderRegistry()
    mpesa = ScriptedAdapter("mpesa")
    mpesa.default_behaviour = "refuse"
    registry.register(mpesa)
    store = Store(tmp_path / "alone.sqlite3").open()
    router = PaymentRouter(
        registry,
        SqlitePaymentStore(store),
        Telemetry(clock),
        EventBus(clock),
        clock,
        # The window rule alone (the fast trip would open on the 3rd refusal in a row).
        breaker_config=BreakerConfig(
            minimum_calls=5, window_s=30, wait_in_open_s=30, consecutive_failures_to_open=0
        ),
    )
    try:
        async with anyio.create_task_group() as tg:
            for key in ("key-50001", "key-50002"):
                tg.start_soon(router.submit, payment(key))
                await clock.advance(20)
        assert mpesa.calls == 5
        assert router.lane("mpesa").breaker.state is BreakerState.OPEN
        last = await router.get_payment("key-50002")
        assert last is not None and last.attempts[-1].outcome is AttemptOutcome.REJECTED_LOCALLY
        assert router.lane("mpesa").tally.retries_sent == 3  # 2 + 1 reached the provider
    finally:
        store.close()


async def test_429s_do_not_open_the_breaker(world: World) -> None:
    # A throttling provider is healthy: it asks us to slow down. Its 429s fail the payment over
    # (nothing was processed), but the breaker stays closed for the calls it does accept.
    router, mpesa, intasend, _ = world
    mpesa.default_behaviour = "throttle"
    for i in range(8):
        record = await router.submit(payment(f"key-3000{i}"))
        assert record.provider == "intasend" and record.attempts[0].outcome is AttemptOutcome.RATE_LIMITED
    assert router.lane("mpesa").breaker.state is BreakerState.CLOSED
    mpesa.default_behaviour = "ok"
    record = await router.submit(payment("key-40000"))
    assert record.provider == "mpesa" and intasend.charges.get("intasend-key-40000") is None


async def test_retries_after_429_do_not_use_up_the_attempts(tmp_path: Path, clock: ManualClock) -> None:
    # One provider with 2 attempts (as the optimizer may leave a lane after an outage): a 429 says
    # "not looked at, come back in 1 s", so its first THROTTLE_FREE_RETRIES retries are free.
    registry = ProviderRegistry()
    mpesa = ScriptedAdapter("mpesa")
    registry.register(mpesa)
    store = Store(tmp_path / "throttled.sqlite3").open()
    router = PaymentRouter(registry, SqlitePaymentStore(store), Telemetry(clock), EventBus(clock), clock)
    router.set_tunables("mpesa", router.lane("mpesa").tunables.model_copy(update={"max_attempts": 2}))
    results = []

    async def go(key: str) -> None:
        results.append(await router.submit(payment(key)))

    try:
        mpesa.behaviours = ["throttle", "throttle", "ok"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(go, "key-60001")
            await clock.advance(30)
        assert results[-1].status is TransactionStatus.PENDING and mpesa.calls == 3
        # Beyond the free ones, 429s count like any refusal: 2 free + 2 counted, then it fails.
        mpesa.behaviours = ["throttle"] * 5
        async with anyio.create_task_group() as tg:
            tg.start_soon(go, "key-60002")
            await clock.advance(60)
        assert results[-1].status is TransactionStatus.FAILED and mpesa.calls == 3 + 4
        # Refusals of another kind get no free retry: 2 attempts.
        mpesa.behaviours = ["refuse", "refuse", "ok"]
        async with anyio.create_task_group() as tg:
            tg.start_soon(go, "key-60003")
            await clock.advance(60)
        assert results[-1].status is TransactionStatus.FAILED and mpesa.calls == 7 + 2
    finally:
        store.close()


async def test_auth_error_refreshes_credentials_once_and_retries(world: World) -> None:
    router, mpesa, intasend, _ = world
    mpesa.behaviours = ["auth"]
    record = await router.submit(payment("key-00008"))
    assert record.provider == "mpesa" and mpesa.initialize_calls == 1
    assert intasend.calls == 0


async def test_no_route_for_an_unsupported_currency(world: World) -> None:
    router, *_ = world
    with pytest.raises(NoRouteError, match="NGN"):
        router.route(Operation.COLLECT, "NGN", "NG")
    request = PaymentRequest(
        idempotency_key="key-00009",
        operation=Operation.COLLECT,
        money=Money(amount_minor=100, currency="NGN"),
        phone="+2348012345678",
        country="NG",
    )
    record = await router.submit(request)
    assert record.status is TransactionStatus.FAILED and "no registered provider" in (
        record.provider_message or ""
    )


async def test_the_open_period_tunable_reaches_the_lane_breaker(world: World) -> None:
    router, *_ = world
    lane = router.lane("mpesa")
    assert lane.tunables.breaker_wait_s == lane.breaker.config.wait_in_open_s == 30
    router.set_tunables("mpesa", lane.tunables.model_copy(update={"breaker_wait_s": 7.5}))
    assert lane.breaker.config.wait_in_open_s == 7.5


async def test_the_threshold_tunable_reaches_the_lane_breaker_and_other_changes_keep_the_budget(
    world: World,
) -> None:
    router, *_ = world
    lane = router.lane("mpesa")
    assert lane.tunables.breaker_failure_rate == lane.breaker.config.failure_rate_threshold == 0.5
    budget, backoff = lane.budget, lane.backoff
    router.set_tunables("mpesa", lane.tunables.model_copy(update={"breaker_failure_rate": 0.35}))
    assert lane.breaker.config.failure_rate_threshold == 0.35
    assert lane.budget is budget and lane.backoff is backoff  # their windows and state carry on
    router.set_tunables(
        "mpesa", lane.tunables.model_copy(update={"retry_budget_ratio": 0.1, "base_delay_s": 3.0})
    )
    assert lane.budget is not budget and lane.backoff is not backoff
