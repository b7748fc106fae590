"""One leader per loop across replicas: PostgreSQL advisory locks with a fencing epoch.

Every replica keeps ONE dedicated session (not from a pool) in which it tries
`pg_try_advisory_lock(LOCK_NAMESPACE, hashtext(loop))` for each loop it does not hold. Winning a
lock increments the loop's epoch in `leadership`; every leader write carries that epoch as a
`Fence` and is refused in its own transaction once a newer leader has taken over
(`mcp_autonomy.pg.fencing.check_fence`). Every `heartbeat_s` the leader checks that its rows
still hold its epoch (a query that also keeps the session busy); the server ends a session idle
for `session_timeout_s` (`idle_session_timeout`), so a frozen leader (SIGSTOP, a long pause) loses
its locks, and a killed one loses them at once.

A replica trusts its own leadership only until `last heartbeat + session_timeout_s - heartbeat_s`
by its own monotonic clock, re-checked on every read of `is_leader`: a process resumed after a
freeze sees itself deposed before it has sent anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import anyio
import psycopg
from anyio.abc import TaskStatus

from mcp_autonomy.autonomy.scaling.leader import LeaderStatus, StartedLeading, StoppedLeading
from mcp_autonomy.clock import Clock
from mcp_autonomy.pg.connect import connect_kwargs
from mcp_autonomy.store import Fence

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_RETRY_S",
    "DEFAULT_SESSION_TIMEOUT_S",
    "DEFAULT_STATEMENT_TIMEOUT_S",
    "LOCK_NAMESPACE",
    "ClusterLeadership",
    "LeadershipConfig",
    "LoopElector",
]

LOCK_NAMESPACE: Final = 0x6D63_7061
"""First key of every loop's advisory lock ("mcpa"); the second is `hashtext(loop)`."""
DEFAULT_SESSION_TIMEOUT_S: Final = 3.0
"""The server ends a session idle this long (`idle_session_timeout`): a frozen leader's locks go."""
DEFAULT_HEARTBEAT_S: Final = 0.5
"""How often each replica runs a round (heartbeat, status, and try for free loops when due)."""
DEFAULT_RETRY_S: Final = 1.0
"""How often a follower tries to take a free loop, and the pause after a step-down or lost session."""
DEFAULT_STATEMENT_TIMEOUT_S: Final = 1.0
"""Server-side bound on one query of the leadership session (never an anyio timeout: DESIGN 9)."""
HEARTBEATS_PER_SESSION_TIMEOUT: Final = 3
"""`heartbeat_s` must be below `session_timeout_s / 3`: a missed heartbeat or two must not depose."""
_KEEPALIVE_INTERVAL_S: Final = 1
_KEEPALIVE_COUNT: Final = 3

_log = logging.getLogger(__name__)

_UNLOCK = "SELECT pg_advisory_unlock(%s, hashtext(%s))"
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
_TAKE_OVER = """
INSERT INTO leadership (loop, epoch, holder, acquired_at, renewed_at) VALUES (%s, 1, %s, %s, %s)
ON CONFLICT (loop) DO UPDATE SET epoch = leadership.epoch + 1, holder = excluded.holder,
    acquired_at = excluded.acquired_at, renewed_at = excluded.renewed_at
RETURNING epoch
"""
# The check is a plain read, which no row lock blocks: every fenced write holds its loop's row
# FOR SHARE, and a heartbeat that waited on those would stall behind its own leader's writes (or
# behind a frozen writer's open transaction). `renewed_at` is only for people reading the table,
# so it skips a row that is locked at the moment.
_HEARTBEAT = """
WITH held AS (
    SELECT * FROM unnest(%(loops)s::text[], %(epochs)s::bigint[]) AS h(loop, epoch)
), renewable AS (
    SELECT l.loop FROM leadership AS l JOIN held AS h ON l.loop = h.loop AND l.epoch = h.epoch
    WHERE l.holder = %(holder)s
    FOR NO KEY UPDATE OF l SKIP LOCKED
), renewed AS (
    UPDATE leadership AS l SET renewed_at = %(now)s FROM renewable AS r WHERE l.loop = r.loop
)
SELECT l.loop FROM leadership AS l JOIN held AS h ON l.loop = h.loop AND l.epoch = h.epoch
WHERE l.holder = %(holder)s
"""
# `held` asks the lock manager, not the row: a row outlives its holder's session.
_OBSERVE = """
SELECT h.loop, l.holder, l.epoch, EXISTS (
    SELECT 1 FROM pg_locks p
    WHERE p.locktype = 'advisory' AND p.granted AND p.objsubid = 2
      AND p.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND p.classid = %s::int8::oid AND p.objid = hashtext(h.loop)::oid
) AS held
FROM unnest(%s::text[]) AS h(loop) LEFT JOIN leadership AS l ON l.loop = h.loop
"""


@dataclass(frozen=True)
class LeadershipConfig:
    """How fast leadership moves; the defaults take over from a frozen leader in about 3.5 s."""

    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
    heartbeat_s: float = DEFAULT_HEARTBEAT_S
    retry_s: float = DEFAULT_RETRY_S
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.session_timeout_s > 0:
            raise ValueError(f"session_timeout_s must be > 0, got {self.session_timeout_s}")
        heartbeat_max_s = self.session_timeout_s / HEARTBEATS_PER_SESSION_TIMEOUT
        if not 0 < self.heartbeat_s < heartbeat_max_s:
            raise ValueError(
                f"heartbeat_s must be in (0, session_timeout_s / {HEARTBEATS_PER_SESSION_TIMEOUT} = "
                f"{heartbeat_max_s:g}), got {self.heartbeat_s}"
            )
        if not self.retry_s > 0:
            raise ValueError(f"retry_s must be > 0, got {self.retry_s}")
        if not 0 < self.statement_timeout_s <= self.session_timeout_s:
            raise ValueError(
                f"statement_timeout_s must be in (0, session_timeout_s = {self.session_timeout_s:g}], "
                f"got {self.statement_timeout_s}"
            )

    @property
    def valid_for_s(self) -> float:
        """How long after a heartbeat was sent this replica still trusts its leadership.

        The heartbeat's own interval is the margin: the server cannot have ended the session before
        `session_timeout_s` after the heartbeat, and a decision taken just before the deadline
        still has that long to reach its fenced write.
        """
        return self.session_timeout_s - self.heartbeat_s


@dataclass
class _LoopState:
    """What this replica knows of one loop."""

    leading: bool = False
    locked: bool = False
    """This replica's current session holds the loop's advisory lock (may outlive `leading`)."""
    epoch: int | None = None
    """The epoch this replica won (the fence of its writes while leading)."""
    heartbeat_mono: float | None = None
    """When the last successful heartbeat (or the takeover) was sent, by the monotonic clock."""
    renewed_at: float | None = None
    next_try_mono: float = 0.0
    observed: tuple[str | None, int | None, bool] = (None, None, False)
    """(holder, epoch, lock held) as last read from the database."""
    observed_change_at: float | None = None


def _short(exc: BaseException) -> str:
    """An error for a log line or a status (psycopg's messages never hold the password)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _call_hook(hook: Callable[..., object] | None, *args: Any) -> None:
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:  # an engine hook must never stop the election
        _log.exception("leadership hook %r failed", hook)


class ClusterLeadership:
    """This replica's part in electing one leader per loop (see the module docstring).

    Run `run()` once per replica; hand each loop its `elector(loop)`.
    """

    def __init__(
        self,
        url: str,
        *,
        identity: str,
        loops: Sequence[str],
        clock: Clock,
        config: LeadershipConfig | None = None,
    ) -> None:
        if not identity:
            raise ValueError("identity must be non-empty")
        if not loops or any(not loop for loop in loops) or len(set(loops)) != len(loops):
            raise ValueError(f"loops must be non-empty, distinct, non-empty names, got {list(loops)}")
        self._url = url
        self._identity = identity
        self._loops = tuple(loops)
        self._clock = clock
        self.config = config or LeadershipConfig()
        self._states = {loop: _LoopState() for loop in self._loops}
        self._electors = {loop: LoopElector(self, loop) for loop in self._loops}
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._reconnect_at_mono = 0.0
        self._last_error: str | None = None
        self._scope: anyio.CancelScope | None = None
        self._pause_scope: anyio.CancelScope | None = None
        self._wake_pending = False
        self._release_on_exit = True
        self._round_done: anyio.Event | None = None
        self.rounds = 0
        """Completed rounds (each is one connect-or-heartbeat pass, successful or not)."""

    # --- reading ---

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def loops(self) -> tuple[str, ...]:
        return self._loops

    def is_leader(self, loop: str) -> bool:
        """True while this replica leads `loop` and its last heartbeat is recent enough."""
        state = self._state(loop)
        return (
            state.leading
            and state.heartbeat_mono is not None
            and self._clock.monotonic() < state.heartbeat_mono + self.config.valid_for_s
        )

    def leader_identity(self, loop: str) -> str | None:
        """This replica while it leads, else the lock's holder as last observed (None: nobody)."""
        if self.is_leader(loop):
            return self._identity
        holder, _, held = self._state(loop).observed
        return holder if held else None

    def fence(self, loop: str) -> Fence | None:
        """The fence of a write made now for `loop`, or None when this replica does not lead it."""
        if not self.is_leader(loop):
            return None
        epoch = self._state(loop).epoch
        assert epoch is not None
        return Fence(loop, epoch, self._identity)

    def elector(self, loop: str) -> LoopElector:
        """The `Elector` of one loop (the same object on every call)."""
        self._state(loop)
        return self._electors[loop]

    def status(self) -> dict[str, LeaderStatus]:
        """Every loop's leadership as this replica sees it."""
        return {loop: self.loop_status(loop) for loop in self._loops}

    def loop_status(self, loop: str) -> LeaderStatus:
        state = self._state(loop)
        _, observed_epoch, _ = state.observed
        return LeaderStatus(
            identity=self._identity,
            is_leader=self.is_leader(loop),
            leader=self.leader_identity(loop),
            lease_name=f"pg-advisory:{loop}",
            lease_namespace=None,
            last_renew_at=state.renewed_at,
            transitions=observed_epoch if observed_epoch is not None else state.epoch,
            observed_change_at=state.observed_change_at,
            last_error=self._last_error,
        )

    # --- acting ---

    def step_down(self, loop: str, reason: str) -> None:
        """Stop leading `loop` now (a fenced write was refused): the lock is released by the next
        round, which starts at once, and this replica waits `retry_s` before trying again.

        Call it from the event loop's thread (from a worker thread: `anyio.from_thread.run_sync`).
        """
        state = self._state(loop)
        state.next_try_mono = self._clock.monotonic() + self.config.retry_s
        self._stop_leading(loop, reason)
        if state.locked:
            self._wake()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take part until cancelled or `stop()`ped; started after the first round."""
        if self._scope is not None:
            raise RuntimeError(f"leadership of {self._identity} is already running")
        self._release_on_exit = True
        scope = self._scope = anyio.CancelScope()
        try:
            with scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch_deadlines)
                    await self._attempt()
                    task_status.started()
                    while True:
                        await self._pause(self.config.heartbeat_s if self._conn else self.config.retry_s)
                        await self._attempt()
        finally:
            self._scope = None
            with anyio.CancelScope(shield=True):
                await self._close(release=self._release_on_exit)

    def stop(self, *, release: bool = True) -> None:
        """End `run()`: unlock every loop and close; `release=False` just closes, as a crash would."""
        self._release_on_exit = release
        if self._scope is not None:
            self._scope.cancel()

    async def wait_rounds(self, count: int) -> None:
        """Return once `rounds >= count` (lets a test await real I/O instead of guessing a delay)."""
        while self.rounds < count:
            if self._round_done is None:
                self._round_done = anyio.Event()
            await self._round_done.wait()

    # --- the round ---

    def _state(self, loop: str) -> _LoopState:
        try:
            return self._states[loop]
        except KeyError:
            raise ValueError(f"unknown loop {loop!r}: this leadership covers {list(self._loops)}") from None

    def _stop_leading(self, loop: str, reason: str) -> None:
        """The one place leadership of a loop ends (the lock itself goes in the next round)."""
        state = self._states[loop]
        if not state.leading:
            return
        state.leading = False
        _log.info("leadership %s: %s stopped leading (%s)", loop, self._identity, reason)
        _call_hook(self._electors[loop].on_stopped_leading, reason)

    def _stop_leading_all(self, reason: str) -> None:
        for loop in self._loops:
            self._stop_leading(loop, reason)

    def _expire_lapsed(self) -> None:
        for loop, state in self._states.items():
            if state.leading and not self.is_leader(loop):
                self._stop_leading(loop, "no heartbeat within the session timeout")

    async def _watch_deadlines(self) -> None:
        """Fire the stop hook when a deadline passes while a round is stuck in a query."""
        while True:
            await self._clock.sleep(self.config.heartbeat_s)
            self._expire_lapsed()

    def _wake(self) -> None:
        if self._pause_scope is not None:
            self._pause_scope.cancel()
        else:
            self._wake_pending = True

    async def _pause(self, seconds: float) -> None:
        if self._wake_pending:
            self._wake_pending = False
            return
        with anyio.CancelScope() as scope:
            self._pause_scope = scope
            try:
                await self._clock.sleep(seconds)
            finally:
                self._pause_scope = None

    async def _attempt(self) -> None:
        """Connect if needed, then one round; any error ends the session and every leadership."""
        try:
            if self._conn is None:
                if self._clock.monotonic() < self._reconnect_at_mono:
                    return
                self._conn = await self._connect()
            # Never let a cancel interrupt a query: psycopg would close this session, silently
            # dropping every lock. The server's statement_timeout bounds each query instead.
            with anyio.CancelScope(shield=True):
                await self._round(self._conn)
            self._last_error = None
        except Exception as exc:
            self._last_error = _short(exc)
            _log.warning("leadership session of %s failed: %s", self._identity, self._last_error)
            self._stop_leading_all(f"leadership session failed: {self._last_error}")
            self._reconnect_at_mono = self._clock.monotonic() + self.config.retry_s
            with anyio.CancelScope(shield=True):
                await self._discard_connection()
        finally:
            self.rounds += 1
            if self._round_done is not None:
                self._round_done.set()
                self._round_done = None

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        config = self.config
        kwargs = connect_kwargs(
            application_name=f"mcp-autonomy-leadership:{self._identity}",
            statement_timeout_ms=round(config.statement_timeout_s * 1000),
        )
        session_timeout_ms = round(config.session_timeout_s * 1000)
        # The server, not this process, ends a frozen replica's session, and with it its locks.
        kwargs["options"] += (
            f" -c idle_session_timeout={session_timeout_ms}"
            f" -c idle_in_transaction_session_timeout={session_timeout_ms}"
        )
        # Over TCP, a dead peer or a partition is noticed within about the session timeout.
        kwargs.update(
            keepalives=1,
            keepalives_idle=max(1, round(config.session_timeout_s / 2)),
            keepalives_interval=_KEEPALIVE_INTERVAL_S,
            keepalives_count=_KEEPALIVE_COUNT,
            tcp_user_timeout=session_timeout_ms,
        )
        conn = await psycopg.AsyncConnection.connect(self._url, **kwargs)
        for state in self._states.values():
            state.locked = False  # a new session holds nothing
        return conn

    async def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        for state in self._states.values():
            state.locked = False  # the server releases a closed session's locks
        if conn is not None:
            try:
                await conn.close()
            except Exception as exc:  # already broken: nothing more to release
                _log.debug("closing the leadership session failed: %s", _short(exc))

    async def _round(self, conn: psycopg.AsyncConnection[Any]) -> None:
        started_mono, started_at = self._clock.monotonic(), self._clock.now()
        self._expire_lapsed()
        await self._release_unled(conn)
        await self._heartbeat(conn, started_mono, started_at)
        await self._release_unled(conn)  # those just found deposed
        for loop, state in self._states.items():
            if not state.locked and not state.leading and started_mono >= state.next_try_mono:
                await self._try_acquire(conn, loop, started_mono, started_at)
        await self._observe(conn, started_at)

    async def _release_unled(self, conn: psycopg.AsyncConnection[Any]) -> None:
        for loop, state in self._states.items():
            if state.locked and not state.leading:
                await conn.execute(_UNLOCK, (LOCK_NAMESPACE, loop))
                state.locked = False
                state.next_try_mono = max(state.next_try_mono, self._clock.monotonic() + self.config.retry_s)

    async def _heartbeat(
        self, conn: psycopg.AsyncConnection[Any], started_mono: float, started_at: float
    ) -> None:
        held = [(loop, state.epoch) for loop, state in self._states.items() if state.leading]
        if not held:
            return
        cursor = await conn.execute(
            _HEARTBEAT,
            {
                "loops": [loop for loop, _ in held],
                "epochs": [epoch for _, epoch in held],
                "holder": self._identity,
                "now": started_at,
            },
        )
        renewed = {str(row[0]) for row in await cursor.fetchall()}
        for loop, epoch in held:
            state = self._states[loop]
            if not state.leading or state.epoch != epoch:
                continue  # stepped down (or lapsed) while the heartbeat was in flight
            if loop in renewed:
                state.heartbeat_mono, state.renewed_at = started_mono, started_at
            else:
                self._stop_leading(loop, f"deposed: the leadership row no longer holds epoch {epoch}")

    async def _try_acquire(
        self, conn: psycopg.AsyncConnection[Any], loop: str, started_mono: float, started_at: float
    ) -> None:
        state = self._states[loop]
        row = await (await conn.execute(_TRY_LOCK, (LOCK_NAMESPACE, loop))).fetchone()
        if row is None or not row[0]:
            state.next_try_mono = started_mono + self.config.retry_s
            return
        state.locked = True
        # One statement, so one transaction: it waits for any write still fenced by the old epoch
        # (FOR SHARE in check_fence) to commit, and every later such write sees the new epoch.
        try:
            taken = await (
                await conn.execute(_TAKE_OVER, (loop, self._identity, started_at, started_at))
            ).fetchone()
        except psycopg.errors.QueryCanceled as exc:
            # A write under the old epoch stays open past statement_timeout (its writer frozen in
            # its transaction): give this loop back and retry later; the other loops and this
            # session are unaffected (autocommit: the session is usable after a cancel).
            _log.warning("leadership %s: takeover by %s timed out: %s", loop, self._identity, _short(exc))
            await conn.execute(_UNLOCK, (LOCK_NAMESPACE, loop))
            state.locked = False
            state.next_try_mono = started_mono + self.config.retry_s
            return
        assert taken is not None
        state.epoch = int(taken[0])
        state.heartbeat_mono, state.renewed_at = started_mono, started_at
        state.leading = True
        _log.info("leadership %s: %s started leading at epoch %d", loop, self._identity, state.epoch)
        _call_hook(self._electors[loop].on_started_leading)

    async def _observe(self, conn: psycopg.AsyncConnection[Any], started_at: float) -> None:
        cursor = await conn.execute(_OBSERVE, (LOCK_NAMESPACE, list(self._loops)))
        for loop, holder, epoch, held in await cursor.fetchall():
            state = self._states[str(loop)]
            observed = (
                str(holder) if holder is not None else None,
                int(epoch) if epoch is not None else None,
                bool(held),
            )
            if observed != state.observed:
                state.observed, state.observed_change_at = observed, started_at

    async def _close(self, *, release: bool) -> None:
        # Stop acting before the locks go: never two leaders, even for one round trip.
        self._stop_leading_all("released" if release else "stopped")
        conn = self._conn
        if conn is not None and release and any(state.locked for state in self._states.values()):
            try:
                await conn.execute("SELECT pg_advisory_unlock_all()")
            except Exception as exc:  # closing the session releases them anyway
                _log.warning("leadership release failed: %s", _short(exc))
        await self._discard_connection()


class LoopElector:
    """One loop's view of a `ClusterLeadership`, with the `Elector` interface of the scaling package.

    The shared session is run once by `ClusterLeadership.run`; `run` here only fits where an
    `Elector` is run. The hooks are called from that session's rounds.
    """

    def __init__(self, leadership: ClusterLeadership, loop: str) -> None:
        self._leadership = leadership
        self.loop = loop
        self.on_started_leading: StartedLeading | None = None
        self.on_stopped_leading: StoppedLeading | None = None
        self._scope: anyio.CancelScope | None = None

    @property
    def identity(self) -> str:
        return self._leadership.identity

    @property
    def is_leader(self) -> bool:
        return self._leadership.is_leader(self.loop)

    @property
    def leader_identity(self) -> str | None:
        return self._leadership.leader_identity(self.loop)

    def status(self) -> LeaderStatus:
        return self._leadership.loop_status(self.loop)

    def fence(self) -> Fence | None:
        """The fence of a write made now, or None when this replica does not lead the loop."""
        return self._leadership.fence(self.loop)

    def step_down(self, reason: str) -> None:
        """Stop leading now (a fenced write raised `LeadershipLost`)."""
        self._leadership.step_down(self.loop, reason)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Started at once; waits until `stop()` (the election itself is `ClusterLeadership.run`)."""
        scope = self._scope = anyio.CancelScope()
        try:
            with scope:
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._scope = None

    def stop(self, *, release: bool = True) -> None:
        if self._scope is not None:
            self._scope.cancel()
