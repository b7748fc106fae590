"""Crash drill: kill -9 of the server under payment load, restart on the same store.

Acceptance criterion: "~100 payments/min, kill -9 of the server mid-load, restart on the same
store, with lost and late callbacks in the sandbox: zero charged payments that the engine does
not show as `succeeded` once reconciled, zero double charges across all ledgers, every payment
final or `needs_reconciliation` within its documented bound."

Everything is real and on 127.0.0.1: the standalone sandbox and the server are subprocesses,
payments go through MCP `request_payment` / `send_payment` over streamable HTTP, providers post
their callbacks to the server's callback routes, and the sandbox's ledgers are the ground truth.

1. The sandbox loses 20 % of M-Pesa callbacks, repeats 10 %, delays them 0.2-8 s (out of order,
   some land while the server is dead or after its restart); lookups lag acceptance by 2 s;
   M-Pesa waits 0.1-0.6 s before it processes a push or a B2C request. Customers accept after
   1-4 s, or decline (cancelled by the user, insufficient funds); one payout fails.
2. Two payments every 1.2 s (about 100 a minute; every sixth a payout) for 16 s. Then a burst
   of five while M-Pesa processes what reaches it but withholds its answers (`accept_then_hang`):
   the first three are processed at M-Pesa, the last two are held at its door (3 s latency); then
   SIGKILL. So the kill finds payments that M-Pesa took without the engine learning their ids,
   and payments that M-Pesa never processed, both recorded as `sending` in the engine. The server
   restarts at once on the same state directory and port and the load goes on for 10 s (calls
   made while it is down never reach it), with retries under the same idempotency key of calls
   the kill cut, resends of calls that never reached the server, and replays of answered ones.
3. Once the engine has reconciled (bounded wait), the engine and the ledgers must agree.

Two kinds of payment may stay open after reconciliation, by design, until their provider's
documented bound (`MoneyTruth.pending_bound_s`, then `needs_reconciliation`), and the drill does
not wait that long: it checks they are `unknown` with a check scheduled and inside the bound.

- An STK push whose answer the kill cut has no CheckoutRequestID, and Daraja can be asked about
  a push only by it: it stays open even when the customer paid. It is the only case where a
  charge may show as anything but `succeeded`; its status_reason must say there is no pull path.
- A payment the kill cut before its provider processed it: the provider has no record of it,
  and its "not found" does not prove the payment was never processed (M-Pesa documents no such
  meaning), so the engine keeps asking. It must not show `pending` (held by the provider).
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mcp_autonomy.providers.intasend import IntaSendAdapter
from mcp_autonomy.providers.mpesa import MpesaAdapter
from mcp_autonomy.timefmt import epoch_of_iso
from tests.scenarios.drill import (
    CallResult,
    Delivery,
    PaymentClient,
    SandboxProcess,
    ServerProcess,
    free_port,
    server_env,
)

pytestmark = pytest.mark.anyio

SEED = 7
CALLBACK_TOKEN = "crash-drill-callback-token-0123456789"
PAIR_INTERVAL_S = 1.2
"""Two payments every 1.2 s: about 100 a minute."""
LOAD_BEFORE_KILL_S = 16.0
LOAD_AFTER_RESTART_S = 10.0
BURST = (
    ("request_payment", 0.0),
    ("send_payment", 0.05),
    ("request_payment", 0.1),
    ("request_payment", 0.35),
    ("send_payment", 0.4),
)
"""The payments in flight at the kill, and when each starts (seconds into the burst)."""
STALL_AT_S = 0.3
"""From here on (for a second) M-Pesa keeps arriving requests waiting 3 s before processing them:
the burst's last two are still waiting when the server dies, so M-Pesa never processes them. The
first three meet the usual 0.2 s (median) to 0.6 s (p99) and are processed, answers withheld."""
KILL_AT_S = 1.0
HANG_WINDOW_S = 1.5
SETTLE_BOUND_S = 120.0
WALL_CLOCK_BOUND_S = 240.0
FINAL = {"succeeded", "failed", "reversed"}
MOVED = {"succeeded", "reversed"}
OPEN_UNRESOLVABLE = {"unknown", "needs_reconciliation"}
BOUND_S = {
    "mpesa": MpesaAdapter.money_truth.pending_bound_s,
    "intasend": IntaSendAdapter.money_truth.pending_bound_s,
}
"""Each provider's documented bound on an open payment (then `needs_reconciliation`)."""
NO_PULL_PATH_WORDS = ("checkoutrequestid", "pull path")


@dataclass
class Slot:
    """One planned payment: what is sent, to whom, and how the customer will behave."""

    key: str
    tool: str
    arguments: dict[str, Any]
    behaviour: dict[str, Any]
    calls: list[CallResult] = field(default_factory=list)
    started_before_kill: bool = False

    @property
    def references(self) -> dict[str, str]:
        """Our reference at each provider (the ledgers carry it)."""
        return {
            "mpesa": MpesaAdapter.reference_for(self.key),
            "intasend": IntaSendAdapter.reference_for(self.key),
        }

    @property
    def answered(self) -> bool:
        return any(c.delivery is Delivery.ANSWERED for c in self.calls)

    @property
    def may_have_reached(self) -> bool:
        return any(c.delivery is not Delivery.NOT_SENT for c in self.calls)


def make_slot(i: int, tool: str, rng: random.Random) -> Slot:
    """A collection (15 % declined, the rest accepted after 1-4 s) or a payout (one fails)."""
    key = f"drill-{SEED}-{i:04d}"
    if tool == "send_payment":
        phone = f"+25479{i:07d}"
        arguments = {"amount_minor": 100 * (50 + i), "description": "drill payout"}
        behaviour: dict[str, Any] = {"msisdn": phone, "payout_result_code": "2040" if i == 11 else None}
    else:
        phone = f"+25471{i:07d}"
        arguments = {"amount_minor": 100 * (10 + i), "description": "drill"}
        draw, delay_s = rng.random(), round(rng.uniform(1.0, 4.0), 2)
        if draw < 0.15:
            code = "1032" if draw < 0.10 else "1"  # cancelled by the user; insufficient funds
            behaviour = {"msisdn": phone, "action": "decline", "decline_code": code, "delay_s": delay_s}
        else:
            behaviour = {"msisdn": phone, "action": "accept", "delay_s": delay_s}
    arguments.update(idempotency_key=key, currency="KES", phone=phone, country="KE")
    return Slot(key, tool, arguments, behaviour)


def plan(rng: random.Random) -> tuple[list[Slot], list[Slot]]:
    """The steady load (every sixth a payout) and the burst at the kill."""
    load = [make_slot(i, "send_payment" if i % 6 == 5 else "request_payment", rng) for i in range(120)]
    burst = [make_slot(900 + n, tool, rng) for n, (tool, _) in enumerate(BURST)]
    return load, burst


def configure_sandbox(sandbox: SandboxProcess, server_port: int, slots: list[Slot]) -> None:
    sandbox.control(
        "PUT",
        "/realism",
        json={
            "provider": "mpesa",
            "lookup_lag_s": 2.0,
            "callback_loss": 0.2,
            "callback_duplicate": 0.1,
            "callback_delay_min_s": 0.2,
            "callback_delay_max_s": 8.0,
        },
    )
    sandbox.control(
        "PUT",
        "/webhooks",
        json={
            "provider": "intasend",
            "url": f"http://127.0.0.1:{server_port}/callbacks/{CALLBACK_TOKEN}/intasend/webhook",
        },
    )
    # M-Pesa takes a moment before it processes a push or a B2C request.
    sandbox.control(
        "POST",
        "/faults",
        json={
            "provider": "mpesa",
            "kind": "latency",
            "params": {"distribution": "lognormal", "median_ms": 200, "p99_ms": 600},
            "endpoints": ["collect", "payout"],
        },
    )
    for slot in slots:
        sandbox.control("POST", "/customers", json=slot.behaviour)


async def test_kill_9_under_load_loses_nothing_and_charges_nobody_twice(tmp_path: Path) -> None:
    wall_started = time.monotonic()
    load, burst = plan(random.Random(SEED))
    sandbox = SandboxProcess(tmp_path, seed=SEED)
    server_port = free_port()
    server = ServerProcess(
        tmp_path, server_env(tmp_path / "state", sandbox, server_port, CALLBACK_TOKEN), server_port
    )
    try:
        sandbox.start()
        configure_sandbox(sandbox, server_port, load + burst)
        server.spawn()
        first_ready_s = await server.wait_ready()
        with anyio.fail_after(WALL_CLOCK_BOUND_S):
            timeline = await drive(server, sandbox, load, burst)
            payments, ledger, settle_s = await wait_settled(server, sandbox)
        callbacks = sandbox.control("GET", "/callbacks")["callbacks"]
        summary, problems = check(load + burst, payments, ledger, callbacks)
        summary.update(
            retried_cut=timeline["retried_cut"],
            resent=timeline["resent"],
            replayed=timeline["replayed"],
            first_start_s=round(first_ready_s, 2),
            restart_s=round(timeline["restart_s"], 2),
            load_s=round(timeline["load_s"], 1),
            settle_s=round(settle_s, 1),
        )
    except BaseException:
        print(server.log()[-20_000:])
        print(sandbox.log()[-5_000:])
        raise
    finally:
        server.stop()
        sandbox.stop()
    summary["wall_s"] = round(time.monotonic() - wall_started, 1)
    print("\ncrash drill:", ", ".join(f"{k}={v}" for k, v in summary.items()))
    assert not problems, "crash drill found:\n" + "\n".join(problems) + f"\nsummary: {summary}"


async def drive(
    server: ServerProcess, sandbox: SandboxProcess, load: list[Slot], burst: list[Slot]
) -> dict[str, float]:
    """Send the load, kill the server mid-burst, restart it, go on; returns timings."""
    client = PaymentClient(server.mcp_url)
    queue = iter(load)
    killed = anyio.Event()
    ready = anyio.Event()
    timeline: dict[str, float] = {}

    async def send(slot: Slot, delay_s: float = 0.0) -> None:
        await anyio.sleep(delay_s)
        if not killed.is_set():
            slot.started_before_kill = True
        slot.calls.append(await client.call(slot.tool, slot.arguments))

    async with anyio.create_task_group() as tg:
        started = time.monotonic()
        while time.monotonic() - started < LOAD_BEFORE_KILL_S:
            tg.start_soon(send, next(queue))
            tg.start_soon(send, next(queue))
            await anyio.sleep(PAIR_INTERVAL_S)

        # The kill: M-Pesa processes what reaches it but withholds its answers; SIGKILL while
        # the burst is there; restart at once on the same store and port.
        sandbox.control(
            "POST",
            "/faults",
            json={
                "provider": "mpesa",
                "kind": "accept_then_hang",
                "params": {"rate": 1.0},
                "endpoints": ["collect", "payout"],
                "end_s": HANG_WINDOW_S,
            },
        )
        for slot, (_, offset) in zip(burst, BURST, strict=True):
            tg.start_soon(send, slot, offset)
        await anyio.sleep(STALL_AT_S)
        sandbox.control(
            "POST",
            "/faults",
            json={
                "provider": "mpesa",
                "kind": "latency",
                "params": {"distribution": "fixed", "fixed_ms": 3000},
                "endpoints": ["collect", "payout"],
                "end_s": 1.0,
            },
        )
        await anyio.sleep(KILL_AT_S - STALL_AT_S)
        server.kill9()
        killed.set()
        kill_at = time.monotonic()
        server.spawn()

        async def restarted() -> None:
            await server.wait_ready()
            timeline["restart_s"] = time.monotonic() - kill_at
            ready.set()

        tg.start_soon(restarted)
        # The load goes on while the server is down (those calls never reach it) and after.
        while not ready.is_set() or time.monotonic() - kill_at - timeline["restart_s"] < LOAD_AFTER_RESTART_S:
            tg.start_soon(send, next(queue))
            tg.start_soon(send, next(queue))
            await anyio.sleep(PAIR_INTERVAL_S)
            if ready.is_set() and "retried" not in timeline:
                timeline["retried"] = time.monotonic()
                # A client retries what it could not confirm, under the same key; calls that
                # never reached the server are sent again (but one: it must stay unknown
                # everywhere); a few answered ones are replayed.
                slots = load + burst
                cut = [s for s in slots if s.calls and not s.answered and s.may_have_reached]
                not_sent = [s for s in slots if s.calls and not s.may_have_reached][1:]
                replays = [s for s in slots if s.answered and s.started_before_kill][:3]
                for slot in [*cut[::2], *not_sent, *replays]:
                    tg.start_soon(send, slot)
                timeline.update(retried_cut=len(cut[::2]), resent=len(not_sent), replayed=len(replays))
    timeline["load_s"] = time.monotonic() - started
    return timeline


def ledger_index(ledger: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Payment entries (collections and payouts) by (provider, our reference)."""
    index: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for provider, entries in ledger.items():
        for entry in entries:
            if entry["operation"] in ("collect", "payout"):
                index[(provider, entry["reference"])].append({**entry, "provider": provider})
    return index


def unpullable_push(payment: dict[str, Any]) -> bool:
    """An STK push at M-Pesa, not final, with no CheckoutRequestID known: Daraja cannot be asked
    about it (only its callback, unsigned and possibly lost, could tell)."""
    return (
        payment["status"] not in FINAL
        and payment["operation"] == "collect"
        and payment["provider"] == "mpesa"
        and not payment["provider_reference"]
        and not any(a["provider_reference"] for a in payment["attempts"])
    )


def stays_open(payment: dict[str, Any], index: dict[tuple[str, str], list[dict[str, Any]]]) -> bool:
    """Open by design until its provider's bound: an unpullable push, or a payment its provider
    has no transaction for (a provider's "not found" does not prove it was never processed)."""
    if payment["status"] in FINAL or payment["provider"] is None:
        return False
    return unpullable_push(payment) or not index.get((payment["provider"], payment["reference"]))


async def wait_settled(
    server: ServerProcess, sandbox: SandboxProcess
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], float]:
    """Poll the REST list (it pulls nothing itself) and the ledgers until every payment is final,
    or open by design and pulled at least twice since."""
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        while True:
            response = await http.get(f"{server.base_url}/autonomous/payments", params={"limit": 500})
            response.raise_for_status()
            payments: list[dict[str, Any]] = response.json()["payments"]
            assert len(payments) < 500, "more payments than one page"
            ledger = {
                provider: sandbox.control("GET", "/ledger", params={"provider": provider})["entries"]
                for provider in ("mpesa", "intasend")
            }
            index = ledger_index(ledger)
            done = all(p["status"] in FINAL or (stays_open(p, index) and p["checks"] >= 2) for p in payments)
            if done or time.monotonic() - started > SETTLE_BOUND_S:
                return payments, ledger, time.monotonic() - started
            await anyio.sleep(1.0)


def check(
    slots: list[Slot],
    payments: list[dict[str, Any]],
    ledger: dict[str, list[dict[str, Any]]],
    callbacks: list[dict[str, Any]],
) -> tuple[dict[str, Any], list[str]]:
    """Check the criteria; returns the summary and every problem found."""
    sent = [s for s in slots if s.calls]
    engine = {p["idempotency_key"]: p for p in payments}
    index = ledger_index(ledger)
    key_of = {(provider, ref): s.key for s in sent for provider, ref in s.references.items()}
    entries_by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    problems: list[str] = []
    now = time.time()

    def where(entries: list[dict[str, Any]]) -> str:
        return str([(e["provider"], e["provider_reference"], e["status"]) for e in entries])

    for (provider, reference), entries in index.items():
        key = key_of.get((provider, reference))
        if key is None:
            problems.append(f"{provider} ledger: {reference} {where(entries)} matches no key sent")
        else:
            entries_by_key[key].extend(entries)

    # Every answer is the payment asked for (a tool error here would hide a payment).
    for slot in sent:
        for call in slot.calls:
            if call.delivery is Delivery.ANSWERED and call.record is None:
                problems.append(f"{slot.key}: tool error {call.error}")
            elif call.record is not None and call.record.get("idempotency_key") != slot.key:
                problems.append(f"{slot.key}: answered with payment {call.record.get('idempotency_key')}")

    # (d) Nothing lost, nothing invented.
    for key in sorted(set(engine) - {s.key for s in sent}):
        problems.append(f"{key}: in the engine, never sent")
    for slot in sent:
        if slot.answered and slot.key not in engine:
            problems.append(f"{slot.key}: answered to the client, missing from the engine")
        if not slot.may_have_reached and slot.key in engine:
            problems.append(f"{slot.key}: never reached the server, yet the engine holds it")
        if slot.key not in engine and entries_by_key.get(slot.key):
            problems.append(
                f"{slot.key}: at a provider {where(entries_by_key[slot.key])}, unknown to the engine"
            )

    # (a) Zero double charges: at most one provider transaction per key, across all ledgers.
    for key, entries in entries_by_key.items():
        if sum(1 for e in entries if e["status"] in MOVED) > 1:
            problems.append(f"{key}: DOUBLE CHARGE {where(entries)}")
        elif len({e["provider"] for e in entries}) > 1:
            problems.append(f"{key}: sent to two providers {where(entries)}")
        elif len(entries) > 1:
            problems.append(f"{key}: the customer was asked {len(entries)} times {where(entries)}")

    # (b), (c) and the bound: the engine agrees with the ledgers once reconciled.
    open_by_design: Counter[str] = Counter()
    for key, record in engine.items():
        entries = entries_by_key.get(key, [])
        mine = index.get((record["provider"], record["reference"]), []) if record["provider"] else []
        status, reason = record["status"], record["status_reason"]
        if status == "succeeded":
            if not any(e["status"] in MOVED for e in mine):
                problems.append(
                    f"{key}: succeeded at {record['provider']}, not in its ledger: {where(entries)}"
                )
        elif status in FINAL:
            if any(e["status"] in MOVED for e in entries):
                problems.append(f"{key}: {status} in the engine, charged per the ledger {where(entries)}")
        elif not stays_open(record, index):
            problems.append(f"{key}: still {status} after reconciliation ({reason}); ledger {where(entries)}")
        else:
            if status not in OPEN_UNRESOLVABLE:
                problems.append(
                    f"{key}: shown {status} (held pending at {record['provider']}), but {record['provider']} "
                    f"has no such transaction (ledger {where(entries)}); status_reason {reason!r}"
                )
            if unpullable_push(record):
                open_by_design["unpullable_push"] += 1
                if any(e["status"] in MOVED for e in mine):
                    open_by_design["unpullable_push_charged"] += 1
                if not any(word in (reason or "").lower() for word in NO_PULL_PATH_WORDS):
                    problems.append(
                        f"{key}: {status}, an STK push with no CheckoutRequestID (no pull path), but its "
                        f"status_reason does not say so: {reason!r}"
                    )
            else:
                open_by_design["provider_has_no_record"] += 1
            if record["next_check_at"] is None:
                problems.append(f"{key}: {status} with no check scheduled")
            bound_s = BOUND_S[record["provider"]]
            since = epoch_of_iso(record["accepted_at"] or record["attempts"][-1]["started_at"])
            if now - since >= bound_s and status != "needs_reconciliation":
                problems.append(f"{key}: {status} past {record['provider']}'s bound of {bound_s:g} s")
    for key, entries in entries_by_key.items():
        held = engine.get(key)
        if held is None:
            continue
        for entry in entries:
            if entry["status"] in MOVED and held["status"] != "succeeded" and not unpullable_push(held):
                problems.append(
                    f"{key}: charged at {entry['provider']} ({entry['provider_reference']}), the engine shows "
                    f"{held['status']} ({held['status_reason']})"
                )

    statuses = Counter(p["status"] for p in payments)
    summary: dict[str, Any] = {
        "sent": len(sent),
        "calls": sum(len(s.calls) for s in sent),
        "calls_cut": sum(1 for s in sent for c in s.calls if c.delivery is Delivery.AMBIGUOUS),
        "calls_not_sent": sum(1 for s in sent for c in s.calls if c.delivery is Delivery.NOT_SENT),
        "never_reached": sum(1 for s in sent if not s.may_have_reached),
        "engine": len(payments),
        "ledger_entries": sum(len(e) for e in entries_by_key.values()),
        "charged": sum(1 for e in entries_by_key.values() for x in e if x["status"] in MOVED),
        "succeeded": statuses["succeeded"],
        "failed": statuses["failed"],
        "pending": statuses["pending"],
        "unknown": statuses["unknown"],
        "needs_reconciliation": statuses["needs_reconciliation"],
        "open_by_design": dict(open_by_design),
        "by_provider": dict(Counter(p["provider"] for p in payments)),
        "callbacks": len(callbacks),
        "callbacks_lost": sum(1 for c in callbacks if c["lost"]),
        "callbacks_duplicated": sum(1 for c in callbacks if c["copies"] > 1),
        "callbacks_undelivered": sum(1 for c in callbacks if not c["lost"] and c["delivered"] is False),
    }
    return summary, problems
