"""Two engines in one process on one PostgreSQL database: one engine, not two.

Real PostgreSQL, real leadership, real cluster feed, real time (polled against deadlines); the
providers are scripted adapters, one instance per engine, so each engine's calls are its own.
The multi-process drill through MCP is `test_replicas.py`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest
from pydantic import SecretStr

from mcp_autonomy.autonomy.component import Mode
from mcp_autonomy.autonomy.system import LEADER_LOOPS, AutonomousSystem
from mcp_autonomy.clock import SystemClock
from mcp_autonomy.config import Settings
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest
from mcp_autonomy.store import StoreUnavailable
from tests.fakes import ScriptedAdapter
from tests.postgres import start_server

pytestmark = pytest.mark.anyio

DEADLINE_S = 5.0


def _request(key: str) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=Operation.COLLECT,
        money=Money(amount_minor=1000, currency="KES"),
        phone="+254712345678",
        country="KE",
    )


def _engine(settings: Settings, url: str) -> tuple[AutonomousSystem, dict[str, ScriptedAdapter]]:
    cluster_settings = settings.model_copy(update={"database_url": SecretStr(url)})
    system = AutonomousSystem(cluster_settings, clock=SystemClock())
    adapters = {name: ScriptedAdapter(name) for name in ("mpesa", "intasend")}
    system.register_provider(adapters["intasend"])
    system.register_provider(adapters["mpesa"], backups=["intasend"])
    return system, adapters


@asynccontextmanager
async def _cluster(
    settings: Settings, url: str, count: int = 2
) -> AsyncIterator[list[tuple[AutonomousSystem, dict[str, ScriptedAdapter]]]]:
    engines = [_engine(settings, url) for _ in range(count)]
    async with AsyncExitStack() as stack:
        for system, _ in engines:
            await stack.enter_async_context(system.running())
        yield engines


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> float:
    """Poll `condition` until true; returns the seconds it took (fails naming `what`)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await anyio.sleep(0.02)
    return time.monotonic() - started


def _leaders(systems: list[AutonomousSystem], loop: str) -> list[AutonomousSystem]:
    return [s for s in systems if s.leadership.elector(loop).is_leader]


async def test_one_leader_per_loop_and_status_names_it(settings: Settings, pg_url: str) -> None:
    async with _cluster(settings, pg_url) as engines:
        systems = [s for s, _ in engines]
        await _until(
            lambda: all(len(_leaders(systems, loop)) == 1 for loop in LEADER_LOOPS), "one leader per loop"
        )
        for system in systems:
            status = await system.get_status()
            assert set(status.leadership) == set(LEADER_LOOPS)
            for loop, leader in status.leadership.items():
                assert leader.is_leader == (system.leadership.elector(loop).is_leader)
                assert leader.leader is not None
            assert status.store.backend == "postgresql" and status.store.shared
            assert "secret" not in status.store.location
            healer = status.components["self_healer"]
            assert healer.is_leader == system.leadership.elector("self_healer").is_leader
        leader_ids = {(await s.get_status()).leadership["self_healer"].leader for s in systems}
        assert len(leader_ids) == 1, "both replicas name the same healer leader"


async def test_same_key_on_two_replicas_charges_once(settings: Settings, pg_url: str) -> None:
    async with _cluster(settings, pg_url) as engines:
        (a, a_adapters), (b, b_adapters) = engines
        keys = [f"race-key-{i:04d}" for i in range(20)]
        answers: dict[tuple[str, str], str | None] = {}

        async def submit(system: AutonomousSystem, name: str, key: str) -> None:
            record = await system.submit_payment(_request(key))
            answers[(name, key)] = record.reference

        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(submit, a, "a", key)
                tg.start_soon(submit, b, "b", key)
        for key in keys:
            assert answers[("a", key)] == answers[("b", key)] is not None
            charged = sum(
                adapter.charges.get(f"{name}-{key}", 0)
                for adapters in (a_adapters, b_adapters)
                for name, adapter in adapters.items()
            )
            assert charged == 1, f"{key} charged {charged} times across the replicas"


async def test_kill_switch_and_failover_reach_the_other_replica_within_a_second(
    settings: Settings, pg_url: str
) -> None:
    async with _cluster(settings, pg_url) as engines:
        (a, _), (b, _) = engines
        a.set_autonomy("auto_optimizer", Mode.OFF, reason="drill")
        took = await _until(lambda: b.auto_optimizer.mode is Mode.OFF, "kill switch on B", timeout_s=1.0)
        print(f"kill switch reached B in {took * 1000:.0f} ms")
        assert b.auto_optimizer.status().mode_source == "operator"
        a.router.fail_over("mpesa", "intasend", reason="drill")
        took = await _until(
            lambda: b.router.failed_over == {"mpesa": "intasend"}, "failover on B", timeout_s=1.0
        )
        print(f"failover map reached B in {took * 1000:.0f} ms")
        a.router.fail_back("mpesa", reason="drill over")
        await _until(lambda: b.router.failed_over == {}, "fail-back on B", timeout_s=1.0)


async def test_events_of_one_replica_reach_the_other_replicas_bus(settings: Settings, pg_url: str) -> None:
    async with _cluster(settings, pg_url) as engines:
        (a, _), (b, _) = engines
        with b.events.subscribe(buffer_size=1000) as subscription:
            a.record_manual_action(
                tool="drill", arguments={}, client="test", reason="fan-out", ok=True, result=None
            )

            def arrived() -> bool:
                return any(e.data.get("tool") == "drill" for e in subscription.drain())

            took = await _until(arrived, "A's event on B's bus", timeout_s=1.0)
            print(f"A's event reached B's bus in {took * 1000:.0f} ms")
        stored = a.query_events(limit=1000)
        assert sum(1 for e in stored if e.data.get("tool") == "drill") == 1, "stored once, by A only"


async def test_a_lost_leader_hands_healing_over_and_the_open_incident_continues(
    settings: Settings, pg_url: str
) -> None:
    fast = settings.model_copy(update={"self_healing_interval_ms": 200})
    async with _cluster(fast, pg_url) as engines:
        systems = [s for s, _ in engines]
        await _until(lambda: len(_leaders(systems, "self_healer")) == 1, "a healer leader")
        leader = _leaders(systems, "self_healer")[0]
        follower = next(s for s in systems if s is not leader)
        for _, adapters in engines:
            adapters["mpesa"].probe_ok = False
        await _until(lambda: leader.incidents.open_for("mpesa") is not None, "an incident on the leader")
        incident = leader.incidents.open_for("mpesa")
        assert incident is not None
        await _until(lambda: follower.incidents.open_for("mpesa") is not None, "the follower shows it")
        assert follower.self_healer.status().actions_taken == 0, "a follower never acts"
        started = time.monotonic()
        leader.leadership.stop(release=False)  # its session ends as a crashed process's would
        await _until(lambda: follower.leadership.elector("self_healer").is_leader, "takeover", timeout_s=6.0)
        print(f"healing handed over in {time.monotonic() - started:.2f} s")
        await _until(lambda: follower.self_healer.status().is_leader, "the new leader's healer leads")
        ticks = follower.self_healer.status().ticks
        await _until(lambda: follower.self_healer.status().ticks >= ticks + 3, "ticks as the leader")
        stored = follower.incidents.incidents(provider="mpesa")
        assert [i.id for i in stored if i.status.value == "open"] == [incident.id], "no second incident"
        assert follower.incidents.open_for("mpesa") is not None
        assert follower.incidents.open_for("mpesa").id == incident.id  # type: ignore[union-attr]


async def test_database_down_refuses_payments_before_sending_and_recovers(settings: Settings) -> None:
    server = start_server()
    try:
        url = server.create_database()
        system, adapters = _engine(settings, url)
        async with system.running():
            record = await system.submit_payment(_request("before-outage"))
            assert record.reference is not None
            server.stop()
            await _until(lambda: not system.ready, "not ready while the database is down")
            calls = adapters["mpesa"].calls
            with pytest.raises(StoreUnavailable):
                await system.submit_payment(_request("during-outage"))
            assert adapters["mpesa"].calls == calls, "nothing sent while the store is down"
            server.start()
            await _until(lambda: system.ready, "ready again by itself", timeout_s=15.0)
            record = await system.submit_payment(_request("after-outage"))
            assert record.reference is not None
    finally:
        server.close()
