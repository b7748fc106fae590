"""One side of the two-process `create_payment` race (run by tests/pg/test_pg_payment_store.py).

Usage: race_create_payment.py URL SIDE ROUNDS. Before each round it waits on a shared advisory
lock the test holds (the test releases it once both sides wait, so both insert at once), then
creates payment `race-<round>` described as `side <SIDE>` and prints one JSON line: whether it won,
and the record it ended with (the winner's own record read back, or what the loser was handed).
"""

from __future__ import annotations

import asyncio
import json
import sys

import psycopg

from mcp_autonomy.payments import AttemptOutcome, PaymentAttempt, PaymentRecord
from mcp_autonomy.pg.payment_store import PostgresPaymentStore
from mcp_autonomy.providers.base import Money, Operation, TransactionStatus

BARRIER_NAMESPACE = 0x7E57_0001


def record(key: str, side: int) -> PaymentRecord:
    return PaymentRecord(
        idempotency_key=key,
        operation=Operation.COLLECT,
        money=Money(amount_minor=1000 + side, currency="KES"),
        phone="+254712345678",
        country="KE",
        description=f"side {side}",
        status=TransactionStatus.PENDING,
        provider="mpesa",
        reference=f"R-{key}-{side}",
        created_at=100.0 + side,
        updated_at=100.0 + side,
        attempts=[
            PaymentAttempt(
                provider="mpesa",
                started_at=1.0,
                latency_ms=0.0,
                outcome=AttemptOutcome.SENDING,
                reference=f"A{side}",
            )
        ],
        metadata={"side": side},
    )


async def main(url: str, side: int, rounds: int) -> None:
    store = PostgresPaymentStore(url, min_size=1, max_size=2)
    await store.open()
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as barrier:
            for i in range(rounds):
                await barrier.execute("SELECT pg_advisory_lock_shared(%s, %s)", (BARRIER_NAMESPACE, i))
                await barrier.execute("SELECT pg_advisory_unlock_shared(%s, %s)", (BARRIER_NAMESPACE, i))
                key = f"race-{i:04d}"
                existing = await store.create_payment(record(key, side))
                seen = existing if existing is not None else await store.get_payment(key)
                assert seen is not None
                line = {"round": i, "won": existing is None, "record": seen.model_dump(mode="json")}
                print(json.dumps(line), flush=True)
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
