"""The cluster feed: every replica sees every replica's events and shared-state changes.

One dedicated connection LISTENs on the events and state channels. On a notification (or every
`poll_s`, the fallback when a NOTIFY is lost) it reads what is new since its remembered positions:
other replicas' events, republished on the local `EventBus` so local subscribers see the whole
cluster, and changed shared state and records, handed to registered listeners. Positions start at
what the database holds when the feed starts (history is not replayed) and survive reconnects, so
an outage neither loses nor repeats anything.

Sequence values are taken when a row is written but become visible when its transaction commits,
so a smaller `gid` can appear after a larger one was read. A value skipped over is remembered as a
*hole* and looked for again until `HOLE_GRACE_S` has passed (a rolled-back or overwritten value
never appears; a slow transaction's does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from mcp_autonomy.clock import Clock
from mcp_autonomy.events import Event, EventBus, EventType, Severity
from mcp_autonomy.pg.fencing import EVENTS_CHANNEL, STATE_CHANNEL
from mcp_autonomy.pg.session import DedicatedSession, describe

__all__ = [
    "DEFAULT_POLL_S",
    "HOLE_GRACE_S",
    "RECORD_TABLES",
    "ClusterFeed",
    "FeedStatus",
    "RecordsListener",
    "StateListener",
]

logger = logging.getLogger(__name__)

DEFAULT_POLL_S = 1.0
"""Read even without a notification this often: NOTIFY is the fast path (~1 ms, DESIGN section 9),
the poll bounds the delay when one is lost."""
PAGE_ROWS = 1000
"""Rows read per query; a full page is followed by the next at once."""
HOLE_GRACE_S = 10.0
"""How long a skipped sequence value is looked for again: twice the server-side statement timeout
(`connect.STATEMENT_TIMEOUT_MS`), so a write still committing has long finished by then."""
MAX_TRACKED_HOLES = 10_000
"""Bound on remembered holes (the newest are kept: they belong to the writes still in flight)."""
FEED_APPLICATION_NAME = "mcp-autonomy-feed"

RECORD_TABLES = ("incidents", "predictions", "maintenance_windows", "optimizations")
"""Record tables whose changed ids reach `on_records` listeners."""
STATE_TABLE = "component_state"
STATE_DELETED_TABLE = "component_state_deleted"

StateListener = Callable[[str, str, Any], None]
"""Called with (component, key, value) for a changed key; value None when it was deleted."""
RecordsListener = Callable[[str, list[str]], None]
"""Called with (table, ids) for records that changed."""


class FeedStatus(BaseModel):
    """What the feed reports for the status tools and readiness."""

    connected: bool
    events_received: int = Field(description="Other replicas' events published on the local bus")
    events_skipped: int = Field(description="Events this code cannot read (e.g. a newer event type)")
    state_changes: int = Field(description="Shared-state changes handed to the state listeners")
    record_changes: int = Field(description="Changed records handed to the record listeners")
    reconnects: int
    last_error: str | None
    lag_s: float | None = Field(
        description="Seconds since the feed last caught up with the database (None: not yet)"
    )


class _Position:
    """A read position on one sequence, with the values skipped over (holes) still awaited."""

    def __init__(self) -> None:
        self.value = 0
        self._holes: dict[int, float] = {}  # value -> monotonic time it was first skipped

    def awaited(self, now_s: float) -> list[int]:
        """The holes still worth looking for (expiring the old ones)."""
        expired = [value for value, since_s in self._holes.items() if now_s - since_s > HOLE_GRACE_S]
        for value in expired:
            del self._holes[value]
        return list(self._holes)

    @property
    def hole_count(self) -> int:
        return len(self._holes)

    def observe(self, values: Iterable[int], now_s: float) -> None:
        """Record the values read (ascending): fill holes, and remember the ones newly skipped."""
        expected = self.value + 1
        for value in values:
            if value < expected:
                self._holes.pop(value, None)
                continue
            skipped_from = max(expected, value - MAX_TRACKED_HOLES)
            for missing in range(skipped_from, value):
                self._holes[missing] = now_s
            expected = value + 1
        self.value = expected - 1
        if len(self._holes) > MAX_TRACKED_HOLES:
            keep = sorted(self._holes)[-MAX_TRACKED_HOLES:]
            self._holes = {value: self._holes[value] for value in keep}


_START_POSITIONS = sql.SQL("SELECT (SELECT COALESCE(MAX(gid), 0) FROM events), GREATEST({}, 0)").format(
    sql.SQL(", ").join(
        sql.SQL("(SELECT MAX(change_seq) FROM {})").format(sql.Identifier(table))
        for table in (STATE_TABLE, STATE_DELETED_TABLE, *RECORD_TABLES)
    )
)

# Own rows are read too (their gid is a value seen, not a hole) but without their payload.
_EVENTS_QUERY = sql.SQL(
    'SELECT gid, origin = %(origin)s, id, seq, type, "timestamp", component, provider, severity,'
    " dry_run, CASE WHEN origin = %(origin)s THEN NULL ELSE message END,"
    " CASE WHEN origin = %(origin)s THEN NULL ELSE data END"
    " FROM events WHERE gid > %(after)s OR gid = ANY(%(holes)s) ORDER BY gid LIMIT %(limit)s"
)

_CHANGED = sql.SQL("WHERE change_seq > %(after)s OR change_seq = ANY(%(holes)s)")
_STATE_QUERY = sql.SQL(" UNION ALL ").join(
    [
        sql.SQL("SELECT change_seq, {name}, component, key, value FROM {table} {where}").format(
            name=sql.Literal(STATE_TABLE), table=sql.Identifier(STATE_TABLE), where=_CHANGED
        ),
        sql.SQL("SELECT change_seq, {name}, component, key, NULL::jsonb FROM {table} {where}").format(
            name=sql.Literal(STATE_DELETED_TABLE), table=sql.Identifier(STATE_DELETED_TABLE), where=_CHANGED
        ),
        *(
            sql.SQL("SELECT change_seq, {name}, id, NULL, NULL::jsonb FROM {table} {where}").format(
                name=sql.Literal(table), table=sql.Identifier(table), where=_CHANGED
            )
            for table in RECORD_TABLES
        ),
    ]
) + sql.SQL(" ORDER BY 1 LIMIT %(limit)s")


class ClusterFeed(DedicatedSession):
    """Fans other replicas' events and every shared-state change out to this replica.

    Start it (`run`) before the replica loads shared state from the store: a change made in
    between then arrives twice, which listeners must tolerate anyway (own writes come back too).
    """

    label = "cluster feed"

    def __init__(
        self, url: str, *, origin: str, bus: EventBus, clock: Clock, poll_s: float = DEFAULT_POLL_S
    ) -> None:
        if not origin:
            raise ValueError("origin must be a non-empty run id")
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0 seconds, got {poll_s}")
        super().__init__(url, clock=clock, application_name=FEED_APPLICATION_NAME)
        self._origin = origin
        self._bus = bus
        self._poll_s = poll_s
        self._events = _Position()
        self._changes = _Position()
        self._positioned = False
        self._state_listeners: dict[int, StateListener] = {}
        self._records_listeners: dict[int, RecordsListener] = {}
        self._next_listener = 0
        self._caught_up_at_s: float | None = None
        self.events_received = 0
        self.events_skipped = 0
        self.state_changes = 0
        self.record_changes = 0

    # --- listeners ---------------------------------------------------------------------

    def on_state(self, callback: StateListener) -> Callable[[], None]:
        """Call `callback(component, key, value)` on every shared-state change (value None: deleted).

        Returns a function that removes it. Callbacks run on the event loop and must be quick.
        """
        key = self._next_listener
        self._next_listener += 1
        self._state_listeners[key] = callback

        def remove() -> None:
            self._state_listeners.pop(key, None)

        return remove

    def on_records(self, callback: RecordsListener) -> Callable[[], None]:
        """Call `callback(table, ids)` when records of `RECORD_TABLES` change; returns a remover."""
        key = self._next_listener
        self._next_listener += 1
        self._records_listeners[key] = callback

        def remove() -> None:
            self._records_listeners.pop(key, None)

        return remove

    # --- status ------------------------------------------------------------------------

    def status(self) -> FeedStatus:
        caught_up = self._caught_up_at_s
        return FeedStatus(
            connected=self._connected,
            events_received=self.events_received,
            events_skipped=self.events_skipped,
            state_changes=self.state_changes,
            record_changes=self.record_changes,
            reconnects=self.reconnects,
            last_error=self._last_error,
            lag_s=None if caught_up is None else max(0.0, self._clock.monotonic() - caught_up),
        )

    # --- the loop ----------------------------------------------------------------------

    async def _prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # LISTEN before reading positions: a commit after the read is then always notified.
        for channel in (EVENTS_CHANNEL, STATE_CHANNEL):
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        if not self._positioned:
            cursor = await conn.execute(_START_POSITIONS)
            row = await cursor.fetchone()
            assert row is not None
            self._events.value, self._changes.value = int(row[0]), int(row[1])
            self._positioned = True

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await self._follow(conn)

    async def _follow(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            await self._read_events(conn)
            await self._read_changes(conn)
            self._caught_up_at_s = self._clock.monotonic()
            # psycopg's own timeout, never an anyio one: cancelling a wait or a query closes the
            # connection (DESIGN section 9). Notifications that arrived during the reads are kept
            # in psycopg's backlog and returned here at once, all in one go.
            async for _ in conn.notifies(timeout=self._poll_s, stop_after=1):
                pass

    async def _read_events(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            params = {
                "origin": self._origin,
                "after": self._events.value,
                "holes": self._events.awaited(self._clock.monotonic()),
                "limit": PAGE_ROWS,
            }
            cursor = await conn.execute(_EVENTS_QUERY, params)
            rows = await cursor.fetchall()
            self._events.observe((int(row[0]) for row in rows), self._clock.monotonic())
            for row in rows:
                if not row[1]:
                    self._publish(row)
            if len(rows) < PAGE_ROWS:
                return

    def _publish(self, row: tuple[Any, ...]) -> None:
        (_, _, event_id, seq, type_, timestamp, component, provider, severity, dry_run, message, data) = row
        try:
            event = Event(
                id=event_id,
                seq=seq,
                type=EventType(type_),
                timestamp=timestamp,
                component=component,
                provider=provider,
                severity=Severity(severity),
                dry_run=dry_run,
                message=message,
                data=data,
            )
        except ValueError as exc:  # a newer replica's event type during a rolling update
            self.events_skipped += 1
            logger.warning("cluster feed skipped event %s: %s", event_id, describe(exc))
            return
        self.events_received += 1
        self._bus.publish(event)

    async def _read_changes(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            params = {
                "after": self._changes.value,
                "holes": self._changes.awaited(self._clock.monotonic()),
                "limit": PAGE_ROWS,
            }
            cursor = await conn.execute(_STATE_QUERY, params)
            rows = await cursor.fetchall()
            self._changes.observe((int(row[0]) for row in rows), self._clock.monotonic())
            changed_ids: dict[str, dict[str, None]] = {}  # table -> ids, first-seen order, once
            for _, table, first, second, value in rows:
                if table == STATE_TABLE:
                    self._deliver_state(first, second, value)
                elif table == STATE_DELETED_TABLE:
                    self._deliver_state(first, second, None)
                else:
                    changed_ids.setdefault(table, {})[first] = None
            for table, ids in changed_ids.items():
                self._deliver_records(table, list(ids))
            if len(rows) < PAGE_ROWS:
                return

    def _deliver_state(self, component: str, key: str, value: Any) -> None:
        self.state_changes += 1
        for callback in tuple(self._state_listeners.values()):
            try:
                callback(component, key, value)
            except Exception:  # one broken listener must not stop the feed or the others
                logger.exception("state listener failed on %s/%s", component, key)

    def _deliver_records(self, table: str, ids: list[str]) -> None:
        self.record_changes += len(ids)
        for callback in tuple(self._records_listeners.values()):
            try:
                callback(table, ids)
            except Exception:
                logger.exception("records listener failed on %s", table)
