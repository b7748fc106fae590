"""One leader per loop on PostgreSQL advisory locks: real processes for the failures, a manual clock
for the deadline rules (`mcp_autonomy.pg.leadership`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.pg.leadership import LOCK_NAMESPACE, ClusterLeadership, LeadershipConfig
from mcp_autonomy.store import Fence

ROOT = Path(__file__).resolve().parents[2]
LOOPS = ("healer", "optimizer")
# The processes' timing (leader_proc.py defaults): takeover from a frozen leader in about 1.7 s.
SESSION_TIMEOUT_S = 1.5
HEARTBEAT_S = 0.2
RETRY_S = 0.2
WAIT_S = 15.0
"""Polling deadline for a process to report something (start-up included)."""

# --- processes ---


class LeaderProc:
    """One `leader_proc.py` process and the JSON lines it printed (with their index)."""

    def __init__(self, url: str, identity: str, log_dir: Path, *, write_every_s: float = 0.0) -> None:
        self.identity = identity
        self.stderr_path = log_dir / f"{identity}.stderr"
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.pg.leader_proc",
                    "--url",
                    url,
                    "--identity",
                    identity,
                    "--loops",
                    ",".join(LOOPS),
                    "--session-timeout-s",
                    str(SESSION_TIMEOUT_S),
                    "--heartbeat-s",
                    str(HEARTBEAT_S),
                    "--retry-s",
                    str(RETRY_S),
                    "--write-every-s",
                    str(write_every_s),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(json.loads(line))

    def events(self, event: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [
                line
                for line in self.lines
                if line["event"] == event and all(line.get(k) == v for k, v in match.items())
            ]

    def wait_for(
        self, event: str, timeout_s: float = WAIT_S, *, after_t: float = 0.0, **match: Any
    ) -> dict[str, Any]:
        """The first `event` line matching `match` printed after `after_t` (monotonic)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [line for line in self.events(event, **match) if line["t"] > after_t]
            if found:
                return found[0]
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(
                    f"{self.identity}: no {event} {match} within {timeout_s} s; printed {self.lines}; "
                    f"stderr: {self.stderr_path.read_text()[-3000:]}"
                )
            time.sleep(0.01)

    def signal(self, signum: int) -> float:
        """Send `signum`; the monotonic time it was sent."""
        sent_at = time.monotonic()
        self.process.send_signal(signum)
        return sent_at

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=5)


@pytest.fixture
def start_proc(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., LeaderProc]]:
    """Starts leader processes on a database with a `fenced_writes` table; kills them at the end."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE fenced_writes (id BIGSERIAL PRIMARY KEY, loop TEXT NOT NULL, "
            "epoch BIGINT NOT NULL, holder TEXT NOT NULL)"
        )
    started: list[LeaderProc] = []

    def start(identity: str, *, write_every_s: float = 0.0) -> LeaderProc:
        proc = LeaderProc(pg_url, identity, tmp_path, write_every_s=write_every_s)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()


def leadership_rows(url: str) -> dict[str, tuple[str, int]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT loop, holder, epoch FROM leadership").fetchall()
    return {str(loop): (str(holder), int(epoch)) for loop, holder, epoch in rows}


def start_leader_and_follower(
    start_proc: Callable[..., LeaderProc], *, write_every_s: float = 0.0
) -> tuple[LeaderProc, LeaderProc]:
    leader = start_proc("a", write_every_s=write_every_s)
    for loop in LOOPS:
        leader.wait_for("gained", loop=loop, epoch=1)
    follower = start_proc("b", write_every_s=write_every_s)
    follower.wait_for("started")
    assert follower.events("gained") == []
    return leader, follower


def test_two_processes_one_leader_per_loop_and_release_hands_over(
    start_proc: Callable[..., LeaderProc], pg_url: str
) -> None:
    a, b = start_proc("a"), start_proc("b")
    a.wait_for("started")
    b.wait_for("started")
    for loop in LOOPS:
        (a if a.events("gained", loop=loop) else b).wait_for("gained", loop=loop)
    # An observation window of many follower retries: nobody else may take a held loop.
    window_end = time.monotonic() + 5 * RETRY_S
    while time.monotonic() < window_end:
        for loop in LOOPS:
            gains = a.events("gained", loop=loop) + b.events("gained", loop=loop)
            assert [g["epoch"] for g in gains] == [1], f"{loop}: {gains}"
        time.sleep(0.02)
    rows = leadership_rows(pg_url)
    holders = {loop: "a" if a.events("gained", loop=loop) else "b" for loop in LOOPS}
    assert rows == {loop: (holders[loop], 1) for loop in LOOPS}

    # A graceful stop releases at once: the other takes over at the next epoch, after the release.
    leaving, staying = (a, b) if holders["healer"] == "a" else (b, a)
    handed_over = [loop for loop in LOOPS if holders[loop] == leaving.identity]
    sent_at = leaving.signal(signal.SIGTERM)
    leaving.wait_for("exited")
    for loop in handed_over:
        released = leaving.wait_for("lost", loop=loop, reason="released")
        gained = staying.wait_for("gained", loop=loop, epoch=2)
        assert released["t"] < gained["t"]
        print(f"{loop}: handover after release in {gained['t'] - sent_at:.3f} s")
        assert gained["t"] - sent_at < 5 * RETRY_S + 1.0
    expected = {loop: (staying.identity, 2 if loop in handed_over else 1) for loop in LOOPS}
    assert leadership_rows(pg_url) == expected


def test_kill_9_leader_the_other_leads_within_5_s(start_proc: Callable[..., LeaderProc], pg_url: str) -> None:
    a, b = start_leader_and_follower(start_proc)
    killed_at = a.signal(signal.SIGKILL)
    gains = [b.wait_for("gained", loop=loop, epoch=2) for loop in LOOPS]
    takeover_s = max(g["t"] for g in gains) - killed_at
    print(f"takeover after kill -9: {takeover_s:.3f} s")
    assert takeover_s < 5.0
    assert leadership_rows(pg_url) == {loop: ("b", 2) for loop in LOOPS}


def test_sigstop_leader_is_deposed_and_fenced_after_resume(
    start_proc: Callable[..., LeaderProc], pg_url: str
) -> None:
    a, b = start_leader_and_follower(start_proc, write_every_s=0.1)
    for loop in LOOPS:
        a.wait_for("write", loop=loop, epoch=1, ok=True)

    stopped_at = a.signal(signal.SIGSTOP)
    gains = [b.wait_for("gained", loop=loop, epoch=2) for loop in LOOPS]
    takeover_s = max(g["t"] for g in gains) - stopped_at
    print(f"takeover from a frozen leader: {takeover_s:.3f} s (session timeout {SESSION_TIMEOUT_S} s)")
    assert SESSION_TIMEOUT_S - HEARTBEAT_S < takeover_s < SESSION_TIMEOUT_S + 5 * HEARTBEAT_S
    for loop in LOOPS:
        b.wait_for("write", loop=loop, epoch=2, ok=True)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = conn.execute("SELECT loop, min(id) FROM fenced_writes WHERE epoch = 2 GROUP BY loop")
        first_new: dict[str, int] = {str(loop): int(first_id) for loop, first_id in rows}

    resumed_at = a.signal(signal.SIGCONT)
    for loop in LOOPS:
        a.wait_for("lost", loop=loop)
        refused = a.wait_for("write", loop=loop, stale=True, after_t=resumed_at)
        assert refused["ok"] is False and refused["epoch"] == 1
    # The resumed leader stays deposed: a few of its rounds later it still leads nothing.
    settle_until = time.monotonic() + 5 * RETRY_S
    while time.monotonic() < settle_until:
        assert [w for w in a.events("write", ok=True) if w["t"] > resumed_at] == []
        assert [g for g in a.events("gained") if g["t"] > stopped_at] == []
        time.sleep(0.02)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for loop in LOOPS:
            late = conn.execute(
                "SELECT count(*) FROM fenced_writes WHERE loop = %s AND epoch = 1 AND id > %s",
                (loop, first_new[loop]),
            ).fetchone()
            assert late == (0,), f"{loop}: a write under the old epoch landed after the new leader's first"
    assert leadership_rows(pg_url) == {loop: ("b", 2) for loop in LOOPS}


# --- in process, on the manual clock ---

CONFIG = LeadershipConfig(session_timeout_s=3.0, heartbeat_s=0.5, retry_s=1.0, statement_timeout_s=3.0)


async def eventually(condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Real-time polling deadline for real I/O (the manual clock does not move meanwhile)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.01)


async def tick(clock: ManualClock, *members: ClusterLeadership) -> None:
    """One heartbeat of the manual clock, and every member's round (real I/O) finished."""
    rounds = [member.rounds for member in members]
    await clock.advance(CONFIG.heartbeat_s)
    for member, before in zip(members, rounds, strict=True):
        await member.wait_rounds(before + 1)


async def lock_held(url: str, loop: str) -> bool:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 "
            "AND classid = %s::int8::oid AND objid = hashtext(%s)::oid",
            (LOCK_NAMESPACE, loop),
        )
        row = await cursor.fetchone()
    return row is not None and int(row[0]) > 0


@pytest.mark.anyio
async def test_is_leader_false_once_the_deadline_passes_without_heartbeat(
    pg_url: str, clock: ManualClock
) -> None:
    a = ClusterLeadership(pg_url, identity="a", loops=["healer"], clock=clock, config=CONFIG)
    stopped: list[str] = []
    elector = a.elector("healer")
    elector.on_stopped_leading = stopped.append
    async with anyio.create_task_group() as tg:
        await tg.start(a.run)
        assert a.is_leader("healer") and elector.is_leader
        assert a.fence("healer") is not None and a.fence("healer") == elector.fence()
        blocker = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        async with blocker, blocker.transaction():
            # The heartbeat waits on this table lock: no heartbeat succeeds from here on.
            await blocker.execute("LOCK TABLE leadership IN ACCESS EXCLUSIVE MODE")
            await clock.advance(CONFIG.heartbeat_s)
            assert a.is_leader("healer")
            await clock.advance(CONFIG.valid_for_s - CONFIG.heartbeat_s - 0.01)
            assert a.is_leader("healer")
            await clock.advance(0.01)
            assert not a.is_leader("healer")
            assert a.fence("healer") is None
            assert not elector.status().is_leader
            assert stopped == ["no heartbeat within the session timeout"]
        # The heartbeat lands late: the lapsed leadership is released, not resumed.
        await eventually(lambda: _not(lock_held(pg_url, "healer")))
        assert not a.is_leader("healer")
        a.stop()


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


@pytest.mark.anyio
async def test_step_down_releases_and_another_session_acquires(pg_url: str, clock: ManualClock) -> None:
    a = ClusterLeadership(pg_url, identity="a", loops=LOOPS, clock=clock, config=CONFIG)
    b = ClusterLeadership(pg_url, identity="b", loops=LOOPS, clock=clock, config=CONFIG)
    async with anyio.create_task_group() as tg:
        await tg.start(a.run)
        await tg.start(b.run)
        first = a.fence("healer")
        assert first is not None and first.epoch == 1 and first.holder == "a"
        assert b.fence("healer") is None and not b.is_leader("healer")
        assert b.leader_identity("healer") == "a"
        assert b.status()["healer"].transitions == 1

        await clock.advance(CONFIG.heartbeat_s)
        a.step_down("healer", "fenced write refused")
        assert not a.is_leader("healer") and a.fence("healer") is None
        await eventually(lambda: _not(lock_held(pg_url, "healer")))
        assert a.is_leader("optimizer")

        await clock.advance(CONFIG.heartbeat_s)  # b's retry is due, a's is not (it waits retry_s)
        await eventually(lambda: b.is_leader("healer"))
        second = b.fence("healer")
        assert second is not None and second.epoch == first.epoch + 1 and second.holder == "b"
        assert b.elector("healer").status().lease_name == "pg-advisory:healer"
        assert a.is_leader("optimizer") and not b.is_leader("optimizer")
        await clock.advance(CONFIG.heartbeat_s)  # a's next round observes the new holder
        await eventually(lambda: a.leader_identity("healer") == "b")
        assert not a.is_leader("healer")  # a's retry found the lock taken
        a.stop()
        b.stop()


@pytest.mark.anyio
async def test_a_takeover_blocked_by_an_open_old_epoch_write_gives_the_loop_back_only(
    pg_url: str, clock: ManualClock
) -> None:
    a = ClusterLeadership(pg_url, identity="a", loops=["healer"], clock=clock, config=CONFIG)
    fast_timeout = LeadershipConfig(
        session_timeout_s=3.0, heartbeat_s=0.5, retry_s=1.0, statement_timeout_s=0.2
    )
    b = ClusterLeadership(pg_url, identity="b", loops=LOOPS, clock=clock, config=fast_timeout)
    async with anyio.create_task_group() as tg:
        await tg.start(a.run)
        await tg.start(b.run)
        assert a.is_leader("healer") and b.is_leader("optimizer") and not b.is_leader("healer")
        writer = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        async with writer, writer.transaction():
            # A write fenced by a's epoch, still open (its process frozen before the commit).
            await writer.execute("SELECT 1 FROM leadership WHERE loop = 'healer' FOR SHARE")
            await tick(clock, a, b)
            a.stop()  # a's session ends; its write is still open
            await eventually(lambda: _not(lock_held(pg_url, "healer")))
            await tick(clock, b)  # b's retry of healer is due: the takeover waits, then gives up
            assert not b.is_leader("healer")
            assert not await lock_held(pg_url, "healer")
            optimizer = b.fence("optimizer")
            assert optimizer is not None and optimizer.epoch == 1  # same session, still leading
        for _ in range(round(fast_timeout.retry_s / fast_timeout.heartbeat_s)):
            await tick(clock, b)
        assert b.is_leader("healer")
        assert b.fence("healer") == Fence("healer", 2, "b")
        b.stop()


@pytest.mark.anyio
async def test_lost_session_steps_down_everywhere_then_reacquires_at_the_next_epoch(
    pg_url: str, clock: ManualClock
) -> None:
    a = ClusterLeadership(pg_url, identity="a", loops=LOOPS, clock=clock, config=CONFIG)
    reasons: dict[str, list[str]] = {loop: [] for loop in LOOPS}
    for loop in LOOPS:
        a.elector(loop).on_stopped_leading = reasons[loop].append
    async with anyio.create_task_group() as tg:
        await tg.start(a.run)
        assert all(a.is_leader(loop) for loop in LOOPS)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'mcp-autonomy-leadership:a'"
            )
        await clock.advance(CONFIG.heartbeat_s)
        await eventually(lambda: all(reasons[loop] for loop in LOOPS))
        assert not any(a.is_leader(loop) for loop in LOOPS)
        assert all(r[0].startswith("leadership session failed") for r in reasons.values())
        assert a.status()["healer"].last_error is not None

        await clock.advance(CONFIG.retry_s)
        await eventually(lambda: all(a.is_leader(loop) for loop in LOOPS))
        assert {loop: a.fence(loop).epoch for loop in LOOPS} == {loop: 2 for loop in LOOPS}  # type: ignore[union-attr]
        a.stop()


def test_config_is_validated_with_the_field_and_its_range() -> None:
    with pytest.raises(ValueError, match=r"heartbeat_s must be in \(0, session_timeout_s / 3 = 1\)"):
        LeadershipConfig(session_timeout_s=3.0, heartbeat_s=1.0)
    with pytest.raises(ValueError, match="retry_s must be > 0"):
        LeadershipConfig(retry_s=0)
    with pytest.raises(ValueError, match="statement_timeout_s must be in"):
        LeadershipConfig(statement_timeout_s=5.0)
    with pytest.raises(ValueError, match="unknown loop"):
        ClusterLeadership("postgresql:///x", identity="a", loops=LOOPS, clock=ManualClock()).is_leader(
            "scaler"
        )
