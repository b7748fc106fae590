"""The multi-replica drill: two `mcp-autonomy serve` processes on one PostgreSQL database.

Everything goes through MCP (the SDK client) and HTTP, with real processes on loopback: one
standalone sandbox (its ledgers are the ground truth of what was charged) and replicas sharing
`MCP_AUTONOMY_DATABASE_URL` and the callback token, each with its own port and state directory.
Times are real; every wait polls a condition until a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import mcp_types as types
import pytest

from mcp_autonomy.providers.intasend import IntaSendAdapter
from mcp_autonomy.providers.mpesa import MpesaAdapter
from mcp_autonomy.timefmt import epoch_of_iso
from tests.pg.replicas import Cluster, Replica, ToolFailed, call_on, start_cluster, wait_for
from tests.postgres import start_server

pytestmark = pytest.mark.anyio

RACED_KEYS = 20
KILL_SWITCH_BOUND_S = 1.0
FANOUT_BOUND_S = 2.0
TAKEOVER_BOUND_S = 5.0
QUIET_WINDOW_S = 1.0
"""How long B must stay silent about a resource before A changes it (a measurement window)."""


def collect_arguments(key: str, n: int) -> dict[str, Any]:
    return {
        "idempotency_key": key,
        "amount_minor": 100 * (100 + n),  # M-Pesa takes whole shillings
        "currency": "KES",
        "phone": f"+25471{n:07d}",
        "country": "KE",
        "description": "replica race",
    }


def references(key: str) -> set[str]:
    """Our reference for `key` at each provider (the ledgers carry it)."""
    return {MpesaAdapter.reference_for(key), IntaSendAdapter.reference_for(key)}


# --- 1. one payment per idempotency key across replicas ------------------------------------


async def test_same_key_on_two_replicas_at_once_is_one_payment_and_one_charge(
    tmp_path: Path, pg_url: str
) -> None:
    keys = [f"race-{n:03d}" for n in range(RACED_KEYS)]
    async with start_cluster(tmp_path, pg_url) as cluster:
        a, b = cluster.replicas
        answers: dict[tuple[str, str], dict[str, Any] | str] = {}
        async with a.session() as on_a, b.session() as on_b:
            go = anyio.Event()

            async def pay(replica: str, client: Any, n: int, key: str) -> None:
                await go.wait()
                try:
                    answers[(replica, key)] = await call_on(
                        client, "request_payment", collect_arguments(key, n)
                    )
                except ToolFailed as exc:
                    answers[(replica, key)] = exc.text

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for n, key in enumerate(keys):
                        tg.start_soon(pay, "a", on_a, n, key)
                        tg.start_soon(pay, "b", on_b, n, key)
                    await anyio.lowlevel.checkpoint()  # every task waits on `go`: they start together
                    go.set()

        errors = {k: v for k, v in answers.items() if isinstance(v, str)}
        assert not errors, f"some calls failed: {errors}\n{cluster.logs()}"
        for key in keys:
            on_a_record, on_b_record = answers[("a", key)], answers[("b", key)]
            assert isinstance(on_a_record, dict) and isinstance(on_b_record, dict)
            assert on_a_record["idempotency_key"] == on_b_record["idempotency_key"] == key
            assert on_a_record["reference"] == on_b_record["reference"], (on_a_record, on_b_record)
            assert on_a_record["created_at"] == on_b_record["created_at"], "two records for one key"
            assert on_a_record["reference"] in references(key) and on_a_record["status"] != "failed", (
                on_a_record
            )

        charged = Counter(entry["reference"] for entry in cluster.charges())
        for key in keys:
            count = sum(charged[reference] for reference in references(key))
            assert count == 1, f"{key}: {count} charges in the ledgers ({charged})"
        listed = (await a.rest("/autonomous/payments", limit=500)).json()
        assert sorted(p["idempotency_key"] for p in listed["payments"]) == keys


# --- 2. the kill switch set on one replica is applied by the other -------------------------


async def test_kill_switch_set_on_a_shows_on_b_within_a_second(tmp_path: Path, pg_url: str) -> None:
    async with start_cluster(tmp_path, pg_url) as cluster:
        a, b = cluster.replicas
        async with a.session() as on_a, b.session() as on_b:
            before = await call_on(on_b, "get_status")
            assert before["components"]["predictive_maintenance"]["mode"] == "on"
            started = time.monotonic()
            await call_on(
                on_a,
                "set_autonomy",
                {"component": "predictive_maintenance", "mode": "dry_run", "reason": "replica drill"},
            )

            async def shown_on_b() -> bool | None:
                status = await call_on(on_b, "get_status")
                return True if status["components"]["predictive_maintenance"]["mode"] == "dry_run" else None

            await wait_for(shown_on_b, 5.0, "B shows A's kill switch")
            propagation_s = time.monotonic() - started
        print(f"kill switch A -> B: {propagation_s * 1000:.0f} ms")
        assert propagation_s < KILL_SWITCH_BOUND_S, f"{propagation_s:.3f} s\n{cluster.logs()}"
        # The others stay as they were on both.
        for replica in (a, b):
            components = (await replica.status())["components"]
            assert components["self_healer"]["mode"] == "on"


# --- 3. events published on one replica reach the other's subscribers ----------------------


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str | None, str]]:
    """(event, id, data) of a text/event-stream as it arrives."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                yield fields.get("event", "message"), fields.get("id"), fields["data"]
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            fields[name] = fields[name] + "\n" + value if name in fields else value


async def test_event_on_a_reaches_b_subscribers_and_dashboard_stream(tmp_path: Path, pg_url: str) -> None:
    uri = "autonomy://providers/intasend"
    async with start_cluster(tmp_path, pg_url) as cluster:
        a, b = cluster.replicas
        run_a = (await a.status())["run_id"]
        notified_at: list[float] = []

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ResourceUpdatedNotification) and str(message.params.uri) == uri:
                notified_at.append(time.monotonic())

        stream_event: dict[str, Any] = {}
        stream_open, stream_seen = anyio.Event(), anyio.Event()

        async def read_stream(reason: str) -> None:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(10, read=30), trust_env=False) as http,
                http.stream("GET", f"{b.base_url}/dashboard/stream") as response,
            ):
                assert response.status_code == 200
                stream_open.set()
                async for event, event_id, data in sse_events(response):
                    if event != "engine":
                        continue
                    payload = json.loads(data)
                    if (payload.get("data") or {}).get("reason") == reason and payload["id"].startswith(
                        f"{run_a}-"
                    ):
                        stream_event.update(payload, sse_id=event_id, at=time.monotonic())
                        stream_seen.set()
                        return

        reason = "fan-out drill"
        async with b.session(message_handler=on_message) as on_b, anyio.create_task_group() as tg:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # resources/subscribe is deprecated in 2026-07-28 only
                await on_b.subscribe_resource(uri)
            tg.start_soon(read_stream, reason)
            with anyio.fail_after(10):
                await stream_open.wait()
            # B alone says nothing about intasend (idle, no traffic): a notification after A's
            # change can only come from A's event, which B hears through the cluster feed.
            await anyio.sleep(QUIET_WINDOW_S)
            assert not notified_at, f"B notified {uri} on its own ({len(notified_at)} times)"
            started = time.monotonic()
            async with a.session() as on_a:
                await call_on(
                    on_a,
                    "set_backup_providers",
                    {"primary": "intasend", "backups": [], "reason": "fan-out drill"},
                )
                await call_on(
                    on_a, "set_autonomy", {"component": "auto_optimizer", "mode": "off", "reason": reason}
                )

            async def notified() -> float | None:
                return next((t for t in notified_at if t >= started), None)

            notified_s, _ = await wait_for(notified, FANOUT_BOUND_S, f"B notifies {uri} after A's event")
            notify_s = notified_s - started
            with anyio.fail_after(FANOUT_BOUND_S):
                await stream_seen.wait()
            tg.cancel_scope.cancel()
        print(
            f"A's event -> B resource notification {notify_s * 1000:.0f} ms, "
            f"-> B dashboard stream {(stream_event['at'] - started) * 1000:.0f} ms"
        )
        assert stream_event["type"] == "autonomy_mode_changed"
        assert stream_event["sse_id"] == stream_event["id"]


# --- 4. the healer's leader dies: the other replica takes over, and the incident with it --------


def healer_leader(cluster: Cluster, status_by_replica: dict[str, dict[str, Any]]) -> Replica | None:
    """The replica whose get_status says it leads self_healer (and the others agree)."""
    leaders = [r for r in cluster if status_by_replica[r.name]["components"]["self_healer"]["is_leader"]]
    if len(leaders) != 1:
        return None
    named = {status_by_replica[r.name]["components"]["self_healer"]["leader"] for r in cluster}
    return leaders[0] if len(named) == 1 else None


async def incidents_of(replica: Replica, provider: str) -> list[dict[str, Any]]:
    """Every incident of `provider` in the shared store (open and resolved), newest first."""
    answer = await replica.call("get_incidents", {"provider": provider, "limit": 500})
    incidents: list[dict[str, Any]] = answer["incidents"]
    return incidents


async def test_healer_leader_killed_other_takes_over_and_keeps_the_open_incident(
    tmp_path: Path, pg_url: str
) -> None:
    fast = {"SELF_HEALING_INTERVAL_MS": "500", "MPESA_PROBE_MIN_INTERVAL_S": "0"}
    async with start_cluster(tmp_path, pg_url, extra_env=fast) as cluster:

        async def one_leader() -> Replica | None:
            return healer_leader(cluster, {r.name: await r.status() for r in cluster})

        leader, _ = await wait_for(one_leader, 10.0, "one healer leader agreed by both")
        follower = next(r for r in cluster if r is not leader)

        # M-Pesa (the primary) goes down: the healer's leader opens an incident.
        cluster.sandbox.control(
            "POST", "/faults", json={"provider": "mpesa", "kind": "outage", "params": {"mode": "503"}}
        )

        async def incident_open() -> dict[str, Any] | None:
            found = [i for i in await incidents_of(follower, "mpesa") if i["status"] == "open"]
            return found[0] if found else None

        incident, detect_s = await wait_for(incident_open, 15.0, "an open mpesa incident")
        print(f"incident {incident['id']} open after {detect_s:.1f} s, leader {leader.name}")

        leader.server.kill9()
        killed_at, killed_wall_s = time.monotonic(), time.time()

        async def follower_leads() -> bool | None:
            healer = (await follower.status())["components"]["self_healer"]
            return True if healer["is_leader"] else None

        await wait_for(follower_leads, TAKEOVER_BOUND_S + 5, "the follower leads self_healer")
        takeover_s = time.monotonic() - killed_at
        print(f"self_healer takeover after kill -9: {takeover_s * 1000:.0f} ms")
        assert takeover_s < TAKEOVER_BOUND_S, f"{takeover_s:.2f} s\n{cluster.logs()}"

        # The new leader works on the incident it inherited: its healing attempts land on it
        # (an action's event id starts with the run id of the replica that acted).
        follower_run = (await follower.status())["run_id"]

        async def new_action_on_incident() -> dict[str, Any] | None:
            same = [i for i in await incidents_of(follower, "mpesa") if i["id"] == incident["id"]]
            if not same:
                return None
            ours = [a for a in same[0]["actions"] if str(a["event_id"]).startswith(f"{follower_run}-")]
            return same[0] if ours else None

        await wait_for(new_action_on_incident, 10.0, "an action of the new leader on the same incident")
        cluster.sandbox.control("DELETE", "/faults", params={"provider": "mpesa"})

        async def resolved() -> dict[str, Any] | None:
            found = await incidents_of(follower, "mpesa")
            same = [i for i in found if i["id"] == incident["id"]]
            return same[0] if same and same[0]["status"] == "resolved" else None

        final, _ = await wait_for(resolved, 20.0, "the same incident resolved")
        every = await incidents_of(follower, "mpesa")
        assert [i["id"] for i in every] == [incident["id"]], f"a second incident was opened: {every}"
        assert epoch_of_iso(final["resolved_at"]) > killed_wall_s


# --- 5. only the optimizer's leader experiments ---------------------------------------------

OPTIMIZER_PAYMENTS_PER_REPLICA = 240
"""Above the timeout tuner's 200 measured calls: enough evidence on each replica for a proposal."""
OPTIMIZER_PAYMENTS_PER_S = 40.0


async def pay_many(replica: Replica, prefix: str, count: int) -> None:
    """`count` collections on `replica` through one MCP session, paced under the lane's rate
    limit (50/s by default: a local rejection is no latency sample for the tuners)."""

    async def one(client: Any, n: int) -> None:
        await call_on(client, "request_payment", collect_arguments(f"{prefix}-{n:04d}", n))

    started = time.monotonic()
    async with replica.session() as client, anyio.create_task_group() as tg:
        for n in range(count):
            # Pacing, not waiting for a condition: payment n starts n / rate seconds in.
            await anyio.sleep(max(0.0, started + n / OPTIMIZER_PAYMENTS_PER_S - time.monotonic()))
            tg.start_soon(one, client, n)


@asynccontextmanager
async def optimizing_cluster(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[Cluster, Replica, Replica]]:
    """Two replicas with a fast optimizer, the same traffic on both, and a first optimization
    recorded: (cluster, the optimizer's leader, the follower)."""
    # Seconds, not the hour a timeout cut waits for in production: this is about who experiments.
    fast = {
        "AUTO_OPTIMIZATION_ENABLED": "true",
        "OPTIMIZATION_INTERVAL_MS": "1000",
        "OPTIMIZATION_TIMEOUT_MIN_HISTORY_S": "5",
    }
    async with start_cluster(tmp_path, pg_url, extra_env=fast) as cluster:

        async def one_leader() -> tuple[Replica, Replica] | None:
            statuses = {r.name: await r.status() for r in cluster}
            leads = [r for r in cluster if statuses[r.name]["components"]["auto_optimizer"]["is_leader"]]
            return (leads[0], next(r for r in cluster if r is not leads[0])) if len(leads) == 1 else None

        (leader, follower), _ = await wait_for(one_leader, 10.0, "one optimizer leader")
        # The same traffic on both: each replica has the evidence for a proposal of its own.
        started = time.monotonic()
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for replica in cluster:
                    tg.start_soon(pay_many, replica, f"opt-{replica.name}", OPTIMIZER_PAYMENTS_PER_REPLICA)
        print(f"{2 * OPTIMIZER_PAYMENTS_PER_REPLICA} payments in {time.monotonic() - started:.1f} s")

        async def optimizations() -> list[dict[str, Any]] | None:
            found: list[dict[str, Any]] = (await leader.call("get_optimizations", {"limit": 500}))[
                "optimizations"
            ]
            return found or None

        records, took_s = await wait_for(optimizations, 20.0, "an optimization record", interval_s=0.25)
        print(f"first optimization {took_s:.1f} s after the traffic: {[r['id'] for r in records]}")
        # Two optimizer ticks more: a follower that experimented would have by now.
        ticks = (await leader.full_status())["components"]["auto_optimizer"]["ticks"]

        async def two_more_ticks() -> bool | None:
            now = (await leader.full_status())["components"]["auto_optimizer"]["ticks"]
            return True if now >= ticks + 2 else None

        await wait_for(two_more_ticks, 10.0, "two more optimizer ticks", interval_s=0.1)
        yield cluster, leader, follower


async def test_only_the_optimizer_leader_runs_experiments(tmp_path: Path, pg_url: str) -> None:
    async with optimizing_cluster(tmp_path, pg_url) as (cluster, leader, follower):
        leader_run = (await leader.status())["run_id"]
        records = (await leader.call("get_optimizations", {"limit": 500}))["optimizations"]
        assert records
        events = (await follower.call("get_events", {"type": "optimization_applied", "limit": 1000}))[
            "events"
        ]
        # Who created each record: the run id in the id of the event that announced it.
        creators = {e["data"]["id"]: e["id"].rsplit("-", 1)[0] for e in events}
        assert set(creators.values()) == {leader_run}, (creators, leader_run)
        for record in records:
            assert creators.get(record["id"]) == leader_run, (record["id"], creators, leader_run)
        summary = {r.name: (await r.status())["components"]["auto_optimizer"] for r in cluster}
        assert summary[leader.name]["is_leader"] and summary[leader.name]["actions_taken"] >= 1, summary
        assert not summary[follower.name]["is_leader"], summary
        assert summary[follower.name]["actions_taken"] == 0, summary
        assert summary[follower.name]["leader"] == summary[leader.name]["leader"], summary
        # The follower routes with the leader's experiment off: no canary of its own in flight.
        config = await follower.call("get_provider_config", {"provider": "mpesa"})
        assert config["experiment"] is None, config


async def test_follower_shows_the_leaders_optimizations(tmp_path: Path, pg_url: str) -> None:
    async with optimizing_cluster(tmp_path, pg_url) as (_cluster, leader, follower):
        on_leader = (await leader.call("get_optimizations", {"limit": 500}))["optimizations"]
        on_follower = (await follower.call("get_optimizations", {"limit": 500}))["optimizations"]
        assert [r["id"] for r in on_follower] == [r["id"] for r in on_leader]


# --- 6. the database stops and comes back ----------------------------------------------------

STORE_DOWN_READYZ_BOUND_S = 2.0
"""The store is pinged every second (`STORE_PING_S`) and a ping gives up after 0.5 s
(`PING_TIMEOUT_S`) when no connection answers: 1.5 s at worst, plus a margin."""
STORE_BACK_BOUND_S = 20.0


async def readyz(replica: Replica) -> int:
    return (await replica.rest("/readyz")).status_code


async def test_database_down_refuses_payments_and_recovers_by_itself(tmp_path: Path) -> None:
    server = start_server()  # dedicated: stopping it must not touch the other tests' server
    try:
        async with start_cluster(tmp_path, server.create_database()) as cluster:
            a, b = cluster.replicas
            before = await a.call("request_payment", collect_arguments("outage-before", 1))
            assert before["status"] == "pending", before
            charges_before = len(cluster.charges())

            server.stop()
            stopped_at = time.monotonic()
            for replica in (a, b):

                async def not_ready(replica: Replica = replica) -> bool | None:
                    return True if await readyz(replica) == 503 else None

                await wait_for(not_ready, STORE_DOWN_READYZ_BOUND_S + 3, f"{replica.name} /readyz 503")
            down_s = time.monotonic() - stopped_at
            print(f"/readyz 503 on both {down_s * 1000:.0f} ms after the database stopped")
            assert down_s < STORE_DOWN_READYZ_BOUND_S, f"{down_s:.2f} s\n{cluster.logs()}"

            with pytest.raises(ToolFailed) as refused:
                await a.call("request_payment", collect_arguments("outage-during", 2))
            assert "store" in refused.value.text.lower() and "answer" in refused.value.text.lower(), (
                refused.value.text
            )
            assert "password" not in refused.value.text.lower()
            assert len(cluster.charges()) == charges_before, "a payment was charged while the store was down"

            server.start()
            restarted_at = time.monotonic()
            for replica in (a, b):

                async def ready(replica: Replica = replica) -> bool | None:
                    return True if await readyz(replica) == 200 else None

                await wait_for(ready, STORE_BACK_BOUND_S, f"{replica.name} /readyz 200 again", interval_s=0.1)
            print(f"/readyz 200 on both {time.monotonic() - restarted_at:.1f} s after the database restarted")

            after = await b.call("request_payment", collect_arguments("outage-after", 3))
            assert after["status"] == "pending", after
            assert len(cluster.charges()) == charges_before + 1
            again = await a.call("request_payment", collect_arguments("outage-after", 3))
            assert again["reference"] == after["reference"] and again["created_at"] == after["created_at"]
            assert len(cluster.charges()) == charges_before + 1
    finally:
        server.close()


async def test_status_answers_while_the_database_is_down(tmp_path: Path) -> None:
    server = start_server()
    try:
        async with start_cluster(tmp_path, server.create_database(), names=("a",)) as cluster:
            (a,) = cluster.replicas
            server.stop()

            async def not_ready() -> bool | None:
                return True if await readyz(a) == 503 else None

            await wait_for(not_ready, STORE_DOWN_READYZ_BOUND_S + 3, "/readyz 503")
            status = await a.status()
            assert status["store_reachable"] is False, status
    finally:
        server.close()


# --- 7. a frozen healer leader (SIGSTOP) loses the lead and knows it once resumed -------------

FROZEN_TAKEOVER_BOUND_S = 8.0
"""The leadership session ends after its 3 s timeout when the holder stops heartbeating; then
the other replica's next attempt takes the lock."""


async def test_frozen_healer_leader_is_replaced_and_steps_down_when_resumed(
    tmp_path: Path, pg_url: str
) -> None:
    async with start_cluster(tmp_path, pg_url) as cluster:

        async def one_leader() -> Replica | None:
            return healer_leader(cluster, {r.name: await r.status() for r in cluster})

        leader, _ = await wait_for(one_leader, 10.0, "one healer leader agreed by both")
        follower = next(r for r in cluster if r is not leader)
        assert leader.server.proc is not None
        pid = leader.server.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped_at = time.monotonic()

            async def follower_leads() -> bool | None:
                return True if (await follower.status())["components"]["self_healer"]["is_leader"] else None

            await wait_for(follower_leads, FROZEN_TAKEOVER_BOUND_S, "the follower leads self_healer")
            print(f"self_healer takeover from a frozen leader: {time.monotonic() - stopped_at:.1f} s")
        finally:
            os.kill(pid, signal.SIGCONT)
        new_leader = (await follower.status())["components"]["self_healer"]["leader"]

        async def resumed_follows() -> dict[str, Any] | None:
            healer = (await leader.status())["components"]["self_healer"]
            return healer if not healer["is_leader"] and healer["leader"] == new_leader else None

        await wait_for(resumed_follows, 5.0, "the resumed replica reports the new leader")
        stepped_down = [
            line for line in leader.log().splitlines() if "self_healer" in line and "stopped leading" in line
        ]
        assert stepped_down, leader.log()[-3000:]
        print(stepped_down[0])
