"""One side of the two-process `PostgresPaymentLocks` race (run by tests/pg/test_pg_payment_store.py).

Usage: race_payment_lock.py URL SIDE ROUNDS. Each round holds the lock of one shared payment and,
inside it, does a deliberately slow read-modify-write of `lock_probe`: it counts the holders
inside (must be exactly 1) and increments a counter by reading, pausing and writing it back, so
two holders at once would lose increments. Prints one JSON line at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys

import psycopg

from mcp_autonomy.pg.payment_locks import PostgresPaymentLocks

PAUSE_S = 0.002


async def main(url: str, side: int, rounds: int) -> None:
    locks = PostgresPaymentLocks(url, lock_timeout_s=20.0, max_connections=2)
    await locks.open()
    overlaps = 0
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as probe:
            for _ in range(rounds):
                async with locks.hold("shared-payment"):
                    cursor = await probe.execute("UPDATE lock_probe SET inside = inside + 1 RETURNING inside")
                    row = await cursor.fetchone()
                    overlaps += int(row is None or row[0] != 1)
                    cursor = await probe.execute("SELECT counter FROM lock_probe")
                    row = await cursor.fetchone()
                    assert row is not None
                    await asyncio.sleep(PAUSE_S)
                    await probe.execute("UPDATE lock_probe SET counter = %s", (int(row[0]) + 1,))
                    await probe.execute("UPDATE lock_probe SET inside = inside - 1")
    finally:
        await locks.close()
    print(json.dumps({"side": side, "overlaps": overlaps}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
