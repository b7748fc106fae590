"""The fencing check every leader write makes in its own transaction.

A leader holds its loop's row in `leadership` at the epoch it won. A newer leader increments the
epoch when it takes over, so a leader that froze (SIGSTOP, a long GC pause, a partition) and woke
up finds its epoch stale and its write refused, in the same transaction as the write itself.
`FOR SHARE` makes a concurrent takeover wait for this write's commit (or this write wait for the
takeover's), so no write can land after a newer leader's first one under an older epoch.
"""

from __future__ import annotations

from typing import Any

import psycopg

from mcp_autonomy.store import Fence, LeadershipLost

EVENTS_CHANNEL = "mcp_autonomy_events"
"""NOTIFY channel: new rows in `events` (the payload is empty; readers poll by `gid`)."""
STATE_CHANNEL = "mcp_autonomy_state"
"""NOTIFY channel: shared state or a record changed (readers poll by `change_seq`)."""


def check_fence(conn: psycopg.Connection[Any], fence: Fence) -> None:
    """Raise `LeadershipLost` unless `fence` is still the loop's current leadership.

    Must run inside the transaction of the write it guards.
    """
    row = conn.execute(
        "SELECT epoch, holder FROM leadership WHERE loop = %s FOR SHARE", (fence.loop,)
    ).fetchone()
    if row is None:
        raise LeadershipLost(fence.loop, fence.epoch, "no leader recorded")
    epoch, holder = int(row[0]), str(row[1])
    if epoch != fence.epoch or holder != fence.holder:
        raise LeadershipLost(fence.loop, fence.epoch, f"current: epoch {epoch} held by {holder}")


async def check_fence_async(conn: psycopg.AsyncConnection[Any], fence: Fence) -> None:
    """`check_fence` for an async connection (same rule, same transaction requirement)."""
    cursor = await conn.execute(
        "SELECT epoch, holder FROM leadership WHERE loop = %s FOR SHARE", (fence.loop,)
    )
    row = await cursor.fetchone()
    if row is None:
        raise LeadershipLost(fence.loop, fence.epoch, "no leader recorded")
    epoch, holder = int(row[0]), str(row[1])
    if epoch != fence.epoch or holder != fence.holder:
        raise LeadershipLost(fence.loop, fence.epoch, f"current: epoch {epoch} held by {holder}")
