"""Before acceptance or after it: what each emulator's faults do to the money.

A 503 outage refuses the request before the provider processes it (the ledger has nothing: a
client may fail over at once). A 5xx `after_processing` answers a request the provider did
process (the ledger has it, and it goes on to charge the customer: failing over would charge
twice). An accept-then-hang processes it and withholds the answer until the client hangs up or
`hang_s` passes. Proved for every emulator, on the wire, against the ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.sandbox import (
    AcceptThenHangSpec,
    EndpointKind,
    ErrorRateSpec,
    LedgerStatus,
    OutageSpec,
    SandboxAddress,
    sandbox_of,
)
from tests.sandbox.payers import (
    PROVIDERS,
    answered_normally,
    collect,
    ledger_reference,
    own_error_shape,
    phone,
)

pytestmark = pytest.mark.anyio

Served = Callable[..., AbstractAsyncContextManager[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]]
COLLECT = [EndpointKind.COLLECT]
SETTLE_S = 4 * 3600.0
"""Long enough for every emulator's customer (5 s) and timeouts to have settled a collection."""


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll (wall clock, bounded) until the request crossed the real sockets."""
    with anyio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - nothing signals a request's arrival
            await anyio.sleep(0.005)


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_503_before_acceptance_leaves_no_trace(served: Served, provider: str) -> None:
    async with served() as (app, _, client):
        sandbox = sandbox_of(app)
        sandbox.faults.add(provider, OutageSpec(mode="503"), endpoints=COLLECT)
        answer = await collect(client, provider, "R503", phone(provider, 1))
        assert answer.status_code == 503 and own_error_shape(provider, answer.json())
        assert sandbox.ledger.count_by_reference(ledger_reference(provider, "R503")) == 0
        assert len(sandbox.ledger) == 0


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_a_5xx_after_processing_is_a_charge_in_the_ledger(
    served: Served, clock: ManualClock, provider: str
) -> None:
    async with served() as (app, _, client):
        sandbox = sandbox_of(app)
        sandbox.faults.add(
            provider, ErrorRateSpec(rate=1.0, http_status=502, after_processing=True), endpoints=COLLECT
        )
        answer = await collect(client, provider, "R502", phone(provider, 2))
        assert answer.status_code == 502 and own_error_shape(provider, answer.json())
        [entry] = sandbox.ledger.entries(reference=ledger_reference(provider, "R502"))
        # The provider went on as if it had answered: the customer pays.
        await clock.advance(SETTLE_S)
        assert entry.status is LedgerStatus.SUCCEEDED


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_accept_then_hang_charges_and_answers_only_when_hang_s_passes(
    served: Served, clock: ManualClock, provider: str
) -> None:
    async with served() as (app, _, client):
        sandbox = sandbox_of(app)
        sandbox.faults.add(provider, AcceptThenHangSpec(hang_s=45), endpoints=COLLECT)
        reference = ledger_reference(provider, "RHANG")
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def pay() -> None:
                answers.append(await collect(client, provider, "RHANG", phone(provider, 3)))

            tg.start_soon(pay)
            await wait_until(lambda: sandbox.ledger.count_by_reference(reference) == 1)  # accepted...
            await clock.advance(44)
            assert answers == []  # ...and unanswered
            await clock.advance(1)
        assert answered_normally(provider, answers[0])  # the late answer is the real one


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_accept_then_hang_stops_hanging_when_the_client_gives_up(
    served: Served, clock: ManualClock, provider: str
) -> None:
    async with served() as (app, address, _):
        sandbox = sandbox_of(app)
        sandbox.faults.add(provider, AcceptThenHangSpec(hang_s=3600), endpoints=COLLECT)
        reference = ledger_reference(provider, "RGONE")
        async with httpx.AsyncClient(base_url=address.base_url) as client, anyio.create_task_group() as tg:

            async def pay() -> None:
                await collect(client, provider, "RGONE", phone(provider, 4))

            tg.start_soon(pay)
            await wait_until(lambda: sandbox.ledger.count_by_reference(reference) == 1)
            await clock.advance(0)  # every task runs until blocked: the answer is now withheld
            hanging = clock.pending_sleepers
            tg.cancel_scope.cancel()  # the client's own timeout: it closes the connection
        # The sandbox saw the hang-up and stopped waiting, without the clock moving.
        await wait_until(lambda: clock.pending_sleepers == hanging - 1)
        assert clock.monotonic() == 0.0
        assert sandbox.ledger.count_by_reference(reference) == 1  # the charge stands
