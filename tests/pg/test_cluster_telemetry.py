"""Cluster telemetry against a real PostgreSQL: each replica's calls reach the others' figures.

Two `Telemetry` objects with a `ClusterTelemetry` each share one database, as two replicas do.
Real time (the rounds run on the system clock) with polling deadlines.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
import pytest

from mcp_autonomy.clock import SystemClock
from mcp_autonomy.pg.telemetry import DEFAULT_PUBLISH_S, TELEMETRY_APPLICATION_NAME, ClusterTelemetry
from mcp_autonomy.telemetry import Outcome, Telemetry

FAST_PUBLISH_S = 0.05
"""Rounds for tests that do not measure the delay itself."""
DEFAULT_ROUNDS_DEADLINE_S = 2 * DEFAULT_PUBLISH_S + 0.5
"""At the default rounds a sample waits at most one round to be written and one to be read."""


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the rounds signal nothing
            await anyio.sleep(0.01)


def insert_sample(conn: psycopg.Connection[Any], replica: str, at_s: float, outcome: Outcome) -> None:
    conn.execute(
        "INSERT INTO telemetry_samples (replica, provider, at, outcome, latency_ms) VALUES (%s, 'mpesa', %s, %s, 12.5)",
        (replica, at_s, int(outcome)),
    )


def row_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT replica, count(*) FROM telemetry_samples GROUP BY replica").fetchall()
    return {replica: int(count) for replica, count in rows}


class Replica:
    """One replica's telemetry and the cluster telemetry that shares it."""

    def __init__(self, url: str, name: str, publish_s: float, keep_s: float = 900.0) -> None:
        self.clock = SystemClock()
        self.telemetry = Telemetry(self.clock)
        self.cluster = ClusterTelemetry(
            url, replica=name, telemetry=self.telemetry, clock=self.clock, publish_s=publish_s, keep_s=keep_s
        )

    def record(self, outcome: Outcome, count: int) -> None:
        for _ in range(count):
            self.telemetry.record_call("mpesa", outcome, 40.0)


@asynccontextmanager
async def running(*replicas: Replica) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        for replica in replicas:
            await tg.start(replica.cluster.run)
        yield
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_errors_on_b_reach_a_merged_snapshot_within_2s_and_never_its_counters(pg_url: str) -> None:
    a, b = Replica(pg_url, "a", DEFAULT_PUBLISH_S), Replica(pg_url, "b", DEFAULT_PUBLISH_S)
    a.record(Outcome.SUCCESS, 10)
    async with running(a, b):
        started = time.monotonic()
        b.record(Outcome.TIMEOUT, 10)
        await wait_until(
            lambda: a.telemetry.provider("mpesa").snapshot().requests == 20,
            timeout_s=DEFAULT_ROUNDS_DEADLINE_S,
        )
        assert time.monotonic() - started < DEFAULT_ROUNDS_DEADLINE_S
        merged = a.telemetry.provider("mpesa").snapshot()
        assert merged.remote_requests == 10
        assert merged.error_rate == pytest.approx(0.5)
        assert merged.errors_by_class == {"timeout": 10}
        assert a.telemetry.provider("mpesa").failing_since() is not None  # B's errors came last
        # A's Prometheus counters are A's own calls only.
        assert a.telemetry.provider("mpesa").outcome_totals[Outcome.SUCCESS] == 10
        assert sum(a.telemetry.provider("mpesa").outcome_totals) == 10
        own = a.telemetry.provider("mpesa").snapshot(include_remote=False)
        assert (own.requests, own.error_rate) == (10, 0.0)
        # B sees A's calls the same way.
        await wait_until(lambda: b.telemetry.provider("mpesa").snapshot().remote_requests == 10)
        assert a.cluster.status().replicas_seen == ["b"]
        assert b.cluster.status().replicas_seen == ["a"]


@pytest.mark.anyio
async def test_own_samples_never_come_back_as_remote(pg_url: str) -> None:
    a, b = Replica(pg_url, "a", FAST_PUBLISH_S), Replica(pg_url, "b", FAST_PUBLISH_S)
    a.record(Outcome.SUCCESS, 10)
    b.record(Outcome.SUCCESS, 3)
    async with running(a, b):
        await wait_until(lambda: a.cluster.received == 3 and b.cluster.received == 10)
        # A later sample from B proves A has read past its own rows at least once more.
        b.record(Outcome.AUTH, 1)
        await wait_until(lambda: a.cluster.received == 4)
        snap = a.telemetry.provider("mpesa").snapshot()
        assert (snap.requests, snap.remote_requests) == (14, 4)
        assert a.telemetry.provider("mpesa").remote_recorded == 4
        assert row_counts(pg_url) == {"a": 10, "b": 4}
        assert a.cluster.status().published == 10


@pytest.mark.anyio
async def test_local_rejections_stay_local(pg_url: str) -> None:
    a, b = Replica(pg_url, "a", FAST_PUBLISH_S), Replica(pg_url, "b", FAST_PUBLISH_S)
    b.record(Outcome.REJECTED, 5)
    b.record(Outcome.SUCCESS, 1)
    async with running(a, b):
        await wait_until(lambda: a.cluster.received == 1)
        assert a.telemetry.provider("mpesa").snapshot().rejected_locally == 0
        assert row_counts(pg_url) == {"b": 1}


@pytest.mark.anyio
async def test_a_lost_connection_resumes_without_duplicates_or_gaps(pg_url: str) -> None:
    a, b = Replica(pg_url, "a", FAST_PUBLISH_S), Replica(pg_url, "b", FAST_PUBLISH_S)
    async with running(a, b):
        b.record(Outcome.SUCCESS, 5)
        a.record(Outcome.SUCCESS, 2)
        await wait_until(lambda: a.cluster.received == 5 and b.cluster.received == 2)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (TELEMETRY_APPLICATION_NAME,),
            )
        b.record(Outcome.NOT_PROCESSED, 3)
        a.record(Outcome.SUCCESS, 1)
        await wait_until(lambda: a.cluster.reconnects >= 1 and b.cluster.reconnects >= 1)
        await wait_until(lambda: a.cluster.received == 8 and b.cluster.received == 3)
        b.record(Outcome.SUCCESS, 1)
        await wait_until(lambda: a.cluster.received == 9)
        assert a.telemetry.provider("mpesa").snapshot().remote_requests == 9
        assert row_counts(pg_url) == {"a": 3, "b": 9}
        assert a.cluster.status().connected and a.cluster.status().last_error is None

    # Stopped and started again (same process): positions kept, nothing read or written twice.
    b.record(Outcome.SUCCESS, 2)
    async with running(a, b):
        await wait_until(lambda: a.cluster.received == 11)
        await anyio.sleep(5 * FAST_PUBLISH_S)
        assert a.cluster.received == 11
        assert row_counts(pg_url) == {"a": 3, "b": 11}


@pytest.mark.anyio
async def test_a_new_replica_starts_with_the_last_5_minutes_of_cluster_evidence(pg_url: str) -> None:
    now_s = time.time()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        insert_sample(conn, "gone", now_s - 400, Outcome.TIMEOUT)  # older than any decision window
        insert_sample(conn, "b", now_s - 100, Outcome.TIMEOUT)
        insert_sample(conn, "b", now_s - 50, Outcome.SUCCESS)
    a = Replica(pg_url, "a", FAST_PUBLISH_S)
    async with running(a):
        await wait_until(lambda: a.cluster.received == 2)
        snap = a.telemetry.provider("mpesa").snapshot()
        assert (snap.requests, snap.remote_requests, snap.error_rate) == (2, 2, 0.5)
        # Placed at their own times: the error 100 s ago is outside a 60 s window.
        assert a.telemetry.provider("mpesa").snapshot(60).requests == 1
        assert a.cluster.status().replicas_seen == ["b"]


@pytest.mark.anyio
async def test_a_row_committed_after_a_later_one_is_not_lost(pg_url: str) -> None:
    a = Replica(pg_url, "a", FAST_PUBLISH_S)
    async with running(a):
        with (
            psycopg.connect(pg_url) as slow,  # not autocommit: holds its gid uncommitted
            psycopg.connect(pg_url, autocommit=True) as fast,
        ):
            insert_sample(slow, "b", time.time(), Outcome.AUTH)
            insert_sample(fast, "c", time.time(), Outcome.SUCCESS)
            await wait_until(lambda: a.cluster.received == 1)
            slow.commit()
        await wait_until(lambda: a.cluster.received == 2)
        assert a.telemetry.provider("mpesa").snapshot().errors_by_class == {"auth": 1}


@pytest.mark.anyio
async def test_rows_older_than_keep_s_are_pruned(pg_url: str) -> None:
    now_s = time.time()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        insert_sample(conn, "gone", now_s - 1_000, Outcome.TIMEOUT)
        insert_sample(conn, "b", now_s - 500, Outcome.TIMEOUT)
    a = Replica(pg_url, "a", FAST_PUBLISH_S, keep_s=900.0)
    async with running(a):
        await wait_until(lambda: a.cluster.pruned == 1)
        assert row_counts(pg_url) == {"b": 1}
        assert a.cluster.received == 0  # the kept row is older than the start window


@pytest.mark.anyio
async def test_an_unreachable_database_starts_disconnected_and_keeps_trying(
    postgres_server: Any,
) -> None:
    url = postgres_server.url("no_such_database")
    a = Replica(url, "a", FAST_PUBLISH_S)
    async with running(a):
        status = a.cluster.status()
        assert not status.connected and status.last_error is not None
        assert "no_such_database" in status.last_error  # the database, never a password


def test_settings_are_validated() -> None:
    telemetry = Telemetry(SystemClock())
    clock = SystemClock()
    with pytest.raises(ValueError, match="publish_s"):
        ClusterTelemetry("postgresql:///x", replica="a", telemetry=telemetry, clock=clock, publish_s=0)
    with pytest.raises(ValueError, match="keep_s"):
        ClusterTelemetry("postgresql:///x", replica="a", telemetry=telemetry, clock=clock, keep_s=60)
    with pytest.raises(ValueError, match="replica"):
        ClusterTelemetry("postgresql:///x", replica="", telemetry=telemetry, clock=clock)
