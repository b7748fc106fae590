"""Leader election against a real (test) Kubernetes API server, on a manual clock.

Every elector has its own API client and identity. Time moves only through `ManualClock.advance`
in steps of the retry period; after each step the test waits for every running elector to finish
its round of real HTTP requests (`wait_attempts`), then checks that at most one leads.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup, TaskStatus
from kubernetes.client import ApiClient

from mcp_autonomy.autonomy.scaling.leader import (
    DEFAULT_LEASE_DURATION_S,
    DEFAULT_RENEW_DEADLINE_S,
    DEFAULT_RETRY_PERIOD_S,
    Elector,
    LeaderElectionConfig,
    LeaderElector,
    LeaseRecord,
    SingleProcessElector,
    pod_identity,
)
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import SettingsError, load_settings
from tests.kubernetes.apiserver import RunningApiServer, running_apiserver

pytestmark = pytest.mark.anyio

NAMESPACE = "payments"
LEASE = "mcp-autonomy-scaler"
LEASE_API = "coordination.k8s.io/v1"
RETRY = DEFAULT_RETRY_PERIOD_S
IO_TIMEOUT_S = 10.0
"""Wall-clock bound on one round of real HTTP requests (never reached when things work)."""
CONFIG = LeaderElectionConfig(LEASE, NAMESPACE, jitter_factor=0.0, request_timeout_s=5.0)


@dataclass
class Member:
    elector: LeaderElector
    events: list[tuple[float, str]] = field(default_factory=list)
    holders_seen: list[str | None] = field(default_factory=list)
    done: anyio.Event | None = None

    @property
    def running(self) -> bool:
        return self.done is not None and not self.done.is_set()


@dataclass
class Cluster:
    """Electors of one lease, each with its own API client, driven step by step."""

    api: RunningApiServer
    clock: ManualClock
    tg: TaskGroup
    members: list[Member] = field(default_factory=list)

    def add(self, name: str, config: LeaderElectionConfig = CONFIG) -> Member:
        member = Member(elector=LeaderElector(self.api.api_client(), config, clock=self.clock, identity=name))
        elector = member.elector
        elector.on_started_leading = lambda: member.events.append((self.clock.monotonic(), "started"))
        elector.on_stopped_leading = lambda reason: member.events.append(
            (self.clock.monotonic(), f"stopped: {reason}")
        )
        elector.on_new_leader = member.holders_seen.append
        self.members.append(member)
        return member

    async def start(self, member: Member) -> None:
        """Run the elector; returns after its first try (real I/O) is complete."""

        async def run(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                await member.elector.run(task_status=task_status)
            finally:
                assert member.done is not None
                member.done.set()

        member.done = anyio.Event()
        with anyio.fail_after(IO_TIMEOUT_S):
            await self.tg.start(run)
        self.check_one_leader()

    async def stop(self, member: Member, *, release: bool = True) -> None:
        member.elector.stop(release=release)
        assert member.done is not None
        with anyio.fail_after(IO_TIMEOUT_S):
            await member.done.wait()
        self.check_one_leader()

    async def step(self, seconds: float = RETRY) -> None:
        """Advance the clock one retry period and wait until every running elector has tried."""
        running = [m for m in self.members if m.running]
        expected = {id(m): m.elector.attempts + 1 for m in running}
        await self.clock.advance(seconds)
        self.check_one_leader()  # also while the requests are still in flight
        with anyio.fail_after(IO_TIMEOUT_S):
            for member in running:
                await member.elector.wait_attempts(expected[id(member)])
        self.check_one_leader()

    def leaders(self) -> list[Member]:
        return [m for m in self.members if m.elector.is_leader]

    def leader(self) -> Member:
        leaders = self.leaders()
        assert len(leaders) == 1, [m.elector.identity for m in leaders]
        return leaders[0]

    def check_one_leader(self) -> None:
        leading = [m.elector.identity for m in self.leaders()]
        assert len(leading) <= 1, f"two leaders at t={self.clock.monotonic()}: {leading}"

    def lease(self) -> dict[str, Any]:
        lease = self.api.state.get(LEASE_API, "Lease", NAMESPACE, LEASE)
        assert lease is not None
        return lease

    def record(self) -> LeaseRecord:
        return LeaseRecord.from_lease(self.lease())


@asynccontextmanager
async def cluster(count: int) -> AsyncIterator[Cluster]:
    clock = ManualClock()
    async with running_apiserver() as api, anyio.create_task_group() as tg:
        c = Cluster(api, clock, tg)
        for index in range(count):
            await c.start(c.add(f"mcp-autonomy-{index}_abcd"))
        try:
            yield c
        finally:
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("count", [2, 3])
async def test_exactly_one_leads_and_the_others_name_it(count: int) -> None:
    async with cluster(count) as c:
        leader = c.leader()
        assert leader is c.members[0]  # the first to try created the lease
        record = c.record()
        assert record.holder == leader.elector.identity
        assert record.lease_duration_s == DEFAULT_LEASE_DURATION_S
        assert record.transitions == 0
        for _ in range(10):
            await c.step()
            assert c.leader() is leader
        for member in c.members:
            status = member.elector.status()
            assert status.leader == leader.elector.identity
            assert status.is_leader is (member is leader)
            assert (status.lease_name, status.lease_namespace) == (LEASE, NAMESPACE)
            assert status.transitions == 0
        # Renewals move renewTime and keep acquireTime: one holder, never re-acquired.
        renewed = c.record()
        assert renewed.acquire_time == record.acquire_time
        assert renewed.renew_time == "2026-01-01T00:00:20.000000Z"
        assert leader.elector.status().last_renew_at == c.clock.now()
        assert leader.events == [(0.0, "started")]


async def test_a_released_lease_is_taken_on_the_next_retry() -> None:
    async with cluster(3) as c:
        await c.step()
        old = c.leader()
        await c.stop(old)  # graceful: the lease is released
        assert not old.elector.is_leader
        assert old.events[-1][1] == "stopped: released"
        released = c.record()
        assert released.holder == ""
        assert released.transitions == 0
        stopped_at = c.clock.monotonic()
        await c.step()
        new = c.leader()
        assert new is not old
        assert c.clock.monotonic() - stopped_at == RETRY
        taken = c.record()
        assert taken.holder == new.elector.identity
        assert taken.transitions == 1
        # A follower that lost the race for the free lease names the winner after its next read.
        await c.step()
        assert c.leader() is new
        for member in c.members:
            assert member.elector.leader_identity == new.elector.identity or not member.running
            if member.running:  # each saw the old holder, then (maybe) nobody, then the new one
                assert member.holders_seen[0] == old.elector.identity
                assert member.holders_seen[-1] == new.elector.identity
                assert set(member.holders_seen) <= {old.elector.identity, None, new.elector.identity}


async def test_a_killed_leader_is_replaced_only_after_the_lease_duration() -> None:
    async with cluster(3) as c:
        await c.step()
        old = c.leader()
        last_renewal = c.clock.monotonic()
        await c.stop(old, release=False)  # as if the pod were killed: the lease still names it
        assert c.record().holder == old.elector.identity
        while not c.leaders():
            await c.step()
            # Nobody may take over while the lease can still be valid for the old holder.
            assert c.leaders() == [] or c.clock.monotonic() - last_renewal >= DEFAULT_LEASE_DURATION_S
        waited = c.clock.monotonic() - last_renewal
        # Expiry counts from when each follower saw the last renewal: at most one retry late.
        assert DEFAULT_LEASE_DURATION_S <= waited <= DEFAULT_LEASE_DURATION_S + 2 * RETRY
        new = c.leader()
        assert new is not old
        assert c.record().transitions == 1
        assert c.record().holder == new.elector.identity


async def test_expiry_is_judged_by_the_local_clock_not_the_remote_timestamps() -> None:
    async with cluster(0) as c:
        # A lease renewed "a day ago" by another clock, but just seen: valid for 15 s from now.
        stale = {
            "apiVersion": LEASE_API,
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": NAMESPACE},
            "spec": LeaseRecord(
                holder="elsewhere_1234",
                lease_duration_s=DEFAULT_LEASE_DURATION_S,
                acquire_time="2025-12-31T00:00:00.000000Z",
                renew_time="2025-12-31T00:00:00.000000Z",
                transitions=4,
            ).to_spec(),
        }
        c.api.state.put(stale)
        member = c.add("mcp-autonomy-0_abcd")
        await c.start(member)
        assert member.elector.leader_identity == "elsewhere_1234"
        assert not member.elector.is_leader
        for _ in range(7):  # 14 s: still within 15 s of the first sight of the record
            await c.step()
            assert not member.elector.is_leader
        await c.step()  # 16 s
        assert member.elector.is_leader
        assert c.record().transitions == 5


async def test_a_leader_whose_renewals_fail_stops_at_the_renew_deadline() -> None:
    async with cluster(3) as c:
        await c.step()
        leader = c.leader()
        last_renewal = c.clock.monotonic()
        c.api.state.deny("update", "leases", namespace=NAMESPACE)
        steps = int(DEFAULT_RENEW_DEADLINE_S / RETRY)
        for _ in range(steps - 1):
            await c.step()
            assert leader.elector.is_leader  # still within the renew deadline
            assert "403" in (leader.elector.status().last_error or "")
        attempts = leader.elector.attempts
        await c.clock.advance(RETRY)
        # The deadline has passed: not leading any more, whether or not its round has finished.
        assert c.clock.monotonic() - last_renewal == DEFAULT_RENEW_DEADLINE_S
        assert not leader.elector.is_leader
        with anyio.fail_after(IO_TIMEOUT_S):
            await leader.elector.wait_attempts(attempts + 1)
        assert leader.events[-1][0] == last_renewal + DEFAULT_RENEW_DEADLINE_S
        assert "renew deadline" in leader.events[-1][1]
        assert c.leaders() == []  # the others cannot write either
        c.api.state.allow_all()
        await c.step()
        assert len(c.leaders()) == 1


async def test_a_leader_that_sees_another_holder_stops_at_once() -> None:
    async with cluster(2) as c:
        await c.step()
        leader = c.leader()
        lease = c.lease()
        lease["spec"]["holderIdentity"] = "intruder_9999"
        c.api.state.put(lease)  # another writer took it (its resourceVersion moved too)
        await c.step()
        assert not leader.elector.is_leader
        assert leader.events[-1] == (c.clock.monotonic(), "stopped: another holder observed: intruder_9999")
        assert c.leaders() == []
        assert all(m.elector.leader_identity == "intruder_9999" for m in c.members)


async def test_a_renewal_that_meets_a_conflict_re_reads_and_keeps_leading() -> None:
    async with cluster(2) as c:
        await c.step()
        leader = c.leader()
        c.api.state.bump(LEASE_API, "Lease", NAMESPACE, LEASE)  # resourceVersion moved, record did not
        await c.step()
        assert c.leader() is leader
        c.api.state.conflict_before_next_writes = 1
        await c.step()
        assert c.leader() is leader
        assert leader.events == [(0.0, "started")]


async def test_conflicts_and_crashes_never_make_two_leaders() -> None:
    rng = random.Random(20260101)
    async with cluster(3) as c:
        names = iter(range(3, 100))
        for _ in range(30):
            roll = rng.random()
            if roll < 0.3:
                c.api.state.conflict_before_next_writes = rng.randint(1, 3)
            elif roll < 0.4:
                current = c.leaders()
                if current and sum(m.running for m in c.members) > 1:
                    await c.stop(current[0], release=rng.random() < 0.5)
                    await c.start(c.add(f"mcp-autonomy-{next(names)}_abcd"))
            await c.step()  # asserts at most one leader, in flight and after
        assert sum(m.running for m in c.members) == 3


async def test_shutdown_through_the_task_group_releases() -> None:
    clock = ManualClock()
    async with running_apiserver() as api:
        elector = LeaderElector(api.api_client(), CONFIG, clock=clock, identity="solo_1")
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(IO_TIMEOUT_S):
                await tg.start(elector.run)
            assert elector.is_leader
            tg.cancel_scope.cancel()
        assert not elector.is_leader
        lease = api.state.get(LEASE_API, "Lease", NAMESPACE, LEASE)
        assert lease is not None and LeaseRecord.from_lease(lease).holder == ""


async def test_an_unreachable_api_means_not_leading() -> None:
    clock = ManualClock()
    async with running_apiserver(token="right") as api:
        client = api.api_client()
        client.configuration.api_key = {"BearerToken": "wrong"}
        elector = LeaderElector(client, CONFIG, clock=clock, identity="solo_1")
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(IO_TIMEOUT_S):
                await tg.start(elector.run)
            assert not elector.is_leader
            assert elector.leader_identity is None
            assert (elector.status().last_error or "").startswith("401")
            tg.cancel_scope.cancel()


async def test_single_process_always_leads() -> None:
    started: list[str] = []
    elector = SingleProcessElector(
        on_started_leading=lambda: started.append("started"),
        on_stopped_leading=lambda reason: started.append(f"stopped: {reason}"),
    )
    assert isinstance(elector, Elector)
    assert elector.is_leader and elector.leader_identity == "local" and elector.identity == "local"
    async with anyio.create_task_group() as tg:
        await tg.start(elector.run)
        assert started == ["started"]
        elector.stop()
    assert started == ["started", "stopped: stopped"]
    status = elector.status()
    assert status.is_leader and status.leader == "local" and status.lease_name is None


def test_the_kubernetes_elector_has_the_same_interface() -> None:
    assert isinstance(LeaderElector(ApiClient(), CONFIG, clock=ManualClock(), identity="x"), Elector)


def test_identity_is_the_pod_name_and_a_random_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "mcp-autonomy-7d9f-x2")
    first, second = pod_identity(), pod_identity()
    assert first.startswith("mcp-autonomy-7d9f-x2_") and second.startswith("mcp-autonomy-7d9f-x2_")
    assert first != second
    assert pod_identity("given").startswith("given_")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lease_duration_s": 10}, "lease_duration_s must be > renew_deadline_s"),
        ({"renew_deadline_s": 2.0}, "renew_deadline_s must be > retry_period_s"),
        ({"retry_period_s": 0.0}, "retry_period_s must be > 0"),
        ({"request_timeout_s": 0.0}, "request_timeout_s must be > 0"),
    ],
)
def test_config_is_validated_with_the_allowed_range(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LeaderElectionConfig(LEASE, NAMESPACE, **kwargs)


def test_scaled_config_keeps_client_go_proportions() -> None:
    assert LeaderElectionConfig.scaled(LEASE, NAMESPACE, 15) == LeaderElectionConfig(
        LEASE, NAMESPACE, request_timeout_s=5.0
    )
    scaled = LeaderElectionConfig.scaled(LEASE, NAMESPACE, 30)
    assert (scaled.renew_deadline_s, scaled.retry_period_s) == (20.0, 4.0)


def test_config_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MCP_AUTONOMY_K8S_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("MCP_AUTONOMY_K8S_LEASE_NAME", "scaler")
    monkeypatch.setenv("MCP_AUTONOMY_K8S_LEASE_DURATION_S", "30")
    config = LeaderElectionConfig.from_settings(load_settings())
    assert (config.lease_name, config.namespace, config.lease_duration_s) == ("scaler", NAMESPACE, 30)
    assert (config.renew_deadline_s, config.retry_period_s) == (20.0, 4.0)
    monkeypatch.delenv("MCP_AUTONOMY_K8S_LEASE_NAME")
    monkeypatch.delenv("MCP_AUTONOMY_K8S_LEASE_DURATION_S")
    defaults = load_settings()
    assert (defaults.k8s_lease_name, defaults.k8s_lease_duration_s) == (LEASE, DEFAULT_LEASE_DURATION_S)
    assert defaults.k8s_service == "mcp-autonomy"
    monkeypatch.setenv("MCP_AUTONOMY_K8S_LEASE_DURATION_S", "2")
    with pytest.raises(
        SettingsError, match=r"LEASE_DURATION_S=2 is invalid: allowed is an integer in \[5, 300\]"
    ):
        load_settings()


def test_pod_name_is_pod_name_else_hostname(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.setenv("HOSTNAME", "mcp-autonomy-7d9f-x2")
    assert load_settings().pod_name == "mcp-autonomy-7d9f-x2"
    monkeypatch.setenv("POD_NAME", "from-the-downward-api")
    assert load_settings().pod_name == "from-the-downward-api"
