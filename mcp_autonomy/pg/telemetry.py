"""Cluster telemetry: every replica's provider-call samples reach every other replica.

A loop's leader decides for the cluster, so it must see the calls every replica makes, not only
its own. Each round (`publish_s`) this replica writes the samples it recorded since the last round
to `telemetry_samples` (one COPY), reads the rows other replicas wrote since its position and adds
them to its `Telemetry` with `record_remote` (figures merge; Prometheus counters stay this pod's
own), and now and then deletes rows older than `keep_s`. On start it reads the last
`RECENT_EVIDENCE_S`, so a replica that becomes leader has the recent cluster evidence at once.

It runs on its own connection, with server-side timeouts only (cancelling a running query would
close it, DESIGN section 9), and reconnects with back-off; its positions survive reconnects, so an
outage neither loses nor repeats samples (except a batch whose commit was acknowledged by a
connection that died before the reply: it is written again). Rows committing late leave holes in
the `gid` order, tracked as the cluster feed does.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from pydantic import BaseModel, Field

from mcp_autonomy.clock import Clock
from mcp_autonomy.pg.feed import _Position
from mcp_autonomy.pg.session import DedicatedSession
from mcp_autonomy.telemetry import DEFAULT_WINDOW_S, Outcome, Telemetry

__all__ = [
    "DEFAULT_KEEP_S",
    "DEFAULT_PUBLISH_S",
    "RECENT_EVIDENCE_S",
    "ClusterTelemetry",
    "ClusterTelemetryStatus",
]

logger = logging.getLogger(__name__)

DEFAULT_PUBLISH_S = 1.0
"""How often samples are written and read: a leader sees another replica's call within about two
rounds, well inside the healer's passive window."""
DEFAULT_KEEP_S = 900.0
"""Rows older than this are deleted: three times the longest window any loop asks for."""
RECENT_EVIDENCE_S = DEFAULT_WINDOW_S
"""On start, rows this recent are read (the default snapshot window); older rows are skipped."""
PUBLISH_ROWS_MAX = 20_000
"""Samples written per round at most; a backlog (after an outage) drains over the next rounds."""
PAGE_ROWS = 5_000
"""Rows read per query; a full page is followed by the next at once."""
PRUNE_EVERY_S = 60.0
"""How often this replica deletes old rows (any replica may: a DELETE by the `at` index)."""
PRUNE_ROWS_MAX = 50_000
"""Rows deleted per statement at most, so one prune stays far inside the statement timeout; a
full batch is followed by another on the next round."""
TELEMETRY_APPLICATION_NAME = "mcp-autonomy-telemetry"

_COPY = "COPY telemetry_samples (replica, provider, at, outcome, latency_ms) FROM STDIN"
_START_POSITION = (
    "SELECT (SELECT MIN(gid) FROM telemetry_samples WHERE at >= %(since)s),"
    " (SELECT COALESCE(MAX(gid), 0) FROM telemetry_samples)"
)
# Own rows are read too (their gid is a value seen, not a hole) but without their payload.
_READ = (
    "SELECT gid, replica = %(me)s, CASE WHEN replica = %(me)s THEN NULL ELSE replica END,"
    " provider, at, outcome, latency_ms FROM telemetry_samples"
    " WHERE gid > %(after)s OR gid = ANY(%(holes)s) ORDER BY gid LIMIT %(limit)s"
)
_PRUNE = (
    "DELETE FROM telemetry_samples WHERE gid IN"
    " (SELECT gid FROM telemetry_samples WHERE at < %(before)s LIMIT %(limit)s)"
)
_OUTCOMES = len(Outcome)


class ClusterTelemetryStatus(BaseModel):
    """What cluster telemetry reports for the status tools."""

    connected: bool
    published: int = Field(description="This replica's samples written for the others")
    received: int = Field(description="Other replicas' samples added to this replica's telemetry")
    lost: int = Field(description="Own samples overwritten in the ring before they could be written")
    skipped: int = Field(description="Rows not used: older than the recent window, or an unknown outcome")
    pruned: int = Field(description="Old rows this replica deleted")
    reconnects: int
    last_error: str | None
    replicas_seen: list[str] = Field(description="Other replicas whose samples arrived")


class ClusterTelemetry(DedicatedSession):
    """Shares this replica's provider-call samples and merges the other replicas' into `telemetry`.

    `replica` names this process in the table; use an id unique per process (a run id), so a
    restarted pod's previous samples count as evidence from elsewhere, not as its own.
    """

    label = "cluster telemetry"

    def __init__(
        self,
        url: str,
        *,
        replica: str,
        telemetry: Telemetry,
        clock: Clock,
        publish_s: float = DEFAULT_PUBLISH_S,
        keep_s: float = DEFAULT_KEEP_S,
    ) -> None:
        if not replica:
            raise ValueError("replica must be a non-empty id")
        if not 0 < publish_s <= 60:
            raise ValueError(f"publish_s must be in (0, 60] seconds, got {publish_s}")
        if not keep_s >= RECENT_EVIDENCE_S:
            raise ValueError(
                f"keep_s must be >= {RECENT_EVIDENCE_S} seconds (the start window), got {keep_s}"
            )
        super().__init__(url, clock=clock, application_name=TELEMETRY_APPLICATION_NAME)
        self._replica = replica
        self._telemetry = telemetry
        # Telemetry keeps no samples of its own (only aggregates): ask it to keep this process's
        # calls for export from now on.
        telemetry.enable_export()
        self._publish_s = publish_s
        self._keep_s = keep_s
        self._position = _Position()
        self._positioned = False
        self._cursor: dict[str, int] = {}
        self._next_prune_s: float | None = None
        self._replicas_seen: set[str] = set()
        self.published = 0
        self.received = 0
        self.lost = 0
        self.skipped = 0
        self.pruned = 0

    def status(self) -> ClusterTelemetryStatus:
        return ClusterTelemetryStatus(
            connected=self._connected,
            published=self.published,
            received=self.received,
            lost=self.lost,
            skipped=self.skipped,
            pruned=self.pruned,
            reconnects=self.reconnects,
            last_error=self._last_error,
            replicas_seen=sorted(self._replicas_seen),
        )

    async def _prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if not self._positioned:
            cursor = await conn.execute(_START_POSITION, {"since": self._clock.now() - RECENT_EVIDENCE_S})
            row = await cursor.fetchone()
            assert row is not None
            first_recent, last = row
            # Start just before the oldest recent row; with none, after everything there is.
            self._position.value = int(first_recent) - 1 if first_recent is not None else int(last)
            self._positioned = True

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Publish and merge every `publish_s` (the connection's failure ends it)."""
        while True:
            await self._round(conn)
            await self._clock.sleep(self._publish_s)

    async def _round(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await self._publish(conn)
        await self._read(conn)
        await self._prune(conn)

    async def _publish(self, conn: psycopg.AsyncConnection[Any]) -> None:
        export = self._telemetry.samples_since(self._cursor, limit=PUBLISH_ROWS_MAX)
        if export.samples:
            async with conn.cursor() as cursor, cursor.copy(_COPY) as copy:
                for sample in export.samples:
                    await copy.write_row(
                        (self._replica, sample.provider, sample.at_s, sample.outcome, sample.latency_ms)
                    )
        # Advanced only once written: after a failure the same samples are exported again.
        self._cursor = export.cursor
        self.published += len(export.samples)
        self.lost += export.lost
        if export.lost:
            logger.warning(
                "cluster telemetry: %d samples were overwritten before they could be written", export.lost
            )

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            params = {
                "me": self._replica,
                "after": self._position.value,
                "holes": self._position.awaited(self._clock.monotonic()),
                "limit": PAGE_ROWS,
            }
            cursor = await conn.execute(_READ, params)
            rows = await cursor.fetchall()
            self._position.observe((int(row[0]) for row in rows), self._clock.monotonic())
            now_s, mono_s = self._clock.now(), self._clock.monotonic()
            oldest_s = now_s - RECENT_EVIDENCE_S
            for _, own, replica, provider, at_s, outcome, latency_ms in rows:
                if own:
                    continue
                if at_s < oldest_s or not 0 <= outcome < _OUTCOMES:
                    self.skipped += 1
                    continue
                # Another replica's clock may run ahead of ours: its sample cannot be in our future.
                at_monotonic = min(mono_s, mono_s - (now_s - at_s))
                self._telemetry.record_remote(provider, outcome, latency_ms, at_monotonic)
                self._replicas_seen.add(replica)
                self.received += 1
            if len(rows) < PAGE_ROWS:
                return

    async def _prune(self, conn: psycopg.AsyncConnection[Any]) -> None:
        mono_s = self._clock.monotonic()
        if self._next_prune_s is not None and mono_s < self._next_prune_s:
            return
        cursor = await conn.execute(
            _PRUNE, {"before": self._clock.now() - self._keep_s, "limit": PRUNE_ROWS_MAX}
        )
        deleted = max(0, cursor.rowcount)
        self.pruned += deleted
        # A full batch means more is waiting: prune again next round rather than in a minute.
        self._next_prune_s = mono_s if deleted >= PRUNE_ROWS_MAX else mono_s + PRUNE_EVERY_S
