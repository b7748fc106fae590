"""A replica reduced to its leadership, for the multi-process tests of `mcp_autonomy.pg.leadership`.

Runs a `ClusterLeadership` on the real clock and prints one JSON line per fact, each with `t` (the
system-wide monotonic clock, comparable between processes on one machine):
`started`; `gained` (loop, epoch); `lost` (loop, reason); `write` (loop, epoch, ok, stale, error)
for each fenced write into `fenced_writes`, made every `--write-every-s` under the current fence.
Once the current fence is gone, the fence last held is tried once more (`stale`): a write that
was decided before a freeze and lands after it; it must be refused, then the loop steps down.
SIGTERM stops with release.

    python -m tests.pg.leader_proc --url URL --identity a --loops healer,optimizer
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

import anyio
import psycopg

from mcp_autonomy.clock import SystemClock
from mcp_autonomy.pg.fencing import check_fence_async
from mcp_autonomy.pg.leadership import ClusterLeadership, LeadershipConfig
from mcp_autonomy.store import Fence, LeadershipLost

WRITER_IDLE_IN_TRANSACTION_MS = 500
"""A writer frozen inside its transaction must not block the next leader's takeover for long."""
WRITER_STATEMENT_TIMEOUT_MS = 1_000


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


async def _fenced_write(conn: psycopg.AsyncConnection[Any], fence: Fence) -> None:
    async with conn.transaction():
        await check_fence_async(conn, fence)
        await conn.execute(
            "INSERT INTO fenced_writes (loop, epoch, holder) VALUES (%s, %s, %s)",
            (fence.loop, fence.epoch, fence.holder),
        )


async def writer(url: str, leadership: ClusterLeadership, every_s: float) -> None:
    options = (
        f"-c statement_timeout={WRITER_STATEMENT_TIMEOUT_MS}"
        f" -c idle_in_transaction_session_timeout={WRITER_IDLE_IN_TRANSACTION_MS}"
    )
    conn: psycopg.AsyncConnection[Any] | None = None
    last_fence: dict[str, Fence] = {}
    while True:
        for loop in leadership.loops:
            fence = leadership.fence(loop)
            stale = False
            if fence is not None:
                last_fence[loop] = fence
            elif loop in last_fence:
                fence, stale = last_fence.pop(loop), True
            else:
                continue
            ok, error = False, None
            try:
                if conn is None:
                    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, options=options)
                await _fenced_write(conn, fence)
                ok = True
            except LeadershipLost as exc:
                error = str(exc)
            except psycopg.Error as exc:  # nothing was written; a new connection next time
                error = f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    await conn.close()
                conn = None
            emit("write", loop=loop, epoch=fence.epoch, ok=ok, stale=stale, error=error)
            if not ok:
                leadership.step_down(loop, f"fenced write refused: {error}")
        await anyio.sleep(every_s)


async def main(args: argparse.Namespace) -> None:
    config = LeadershipConfig(
        session_timeout_s=args.session_timeout_s,
        heartbeat_s=args.heartbeat_s,
        retry_s=args.retry_s,
        statement_timeout_s=args.statement_timeout_s,
    )
    loops = args.loops.split(",")
    leadership = ClusterLeadership(
        args.url, identity=args.identity, loops=loops, clock=SystemClock(), config=config
    )
    for loop in loops:
        elector = leadership.elector(loop)

        def gained(loop: str = loop) -> None:
            fence = leadership.fence(loop)
            emit("gained", loop=loop, epoch=fence.epoch if fence else None)

        def lost(reason: str, loop: str = loop) -> None:
            emit("lost", loop=loop, reason=reason)

        elector.on_started_leading, elector.on_stopped_leading = gained, lost
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            await tg.start(leadership.run)
            emit("started")
            if args.write_every_s > 0:
                tg.start_soon(writer, args.url, leadership, args.write_every_s)
            async for _ in signals:
                leadership.stop(release=True)
                tg.cancel_scope.cancel()
                break
    emit("exited")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--loops", default="healer,optimizer")
    parser.add_argument("--session-timeout-s", type=float, default=1.5)
    parser.add_argument("--heartbeat-s", type=float, default=0.2)
    parser.add_argument("--retry-s", type=float, default=0.2)
    parser.add_argument("--statement-timeout-s", type=float, default=1.0)
    parser.add_argument("--write-every-s", type=float, default=0.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse(sys.argv[1:]))
