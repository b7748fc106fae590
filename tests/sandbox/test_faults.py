"""The fault engine: windows, distributions, seeded replays, and what clients see over HTTP."""

from __future__ import annotations

import base64
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.sandbox import (
    AcceptThenHangSpec,
    EndpointKind,
    ErrorRateSpec,
    FaultEngine,
    FlappingSpec,
    LatencySpec,
    MpesaSandboxConfig,
    OutageSpec,
    PaystackSandboxConfig,
    SandboxAddress,
    ThrottleSpec,
    sandbox_of,
)

pytestmark = pytest.mark.anyio

Served = Callable[..., AbstractAsyncContextManager[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]]
PAYSTACK_AUTH = {"Authorization": f"Bearer {PaystackSandboxConfig().secret_keys[0]}"}
_MPESA = MpesaSandboxConfig()
MPESA_BASIC = {
    "Authorization": "Basic "
    + base64.b64encode(f"{_MPESA.consumer_key}:{_MPESA.consumer_secret}".encode()).decode()
}


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll (wall clock, bounded) until a request has reached the sandbox."""
    with anyio.fail_after(timeout_s):
        # Polling is the point: the request travels through real sockets, nothing signals it.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)


# --- the schedule ----------------------------------------------------------------------------


async def test_windows_are_relative_to_now_or_absolute(clock: ManualClock) -> None:
    engine = FaultEngine(clock)
    await clock.advance(10)
    relative = engine.add("mpesa", OutageSpec(), start_s=5, end_s=10)
    absolute = engine.add("mpesa", OutageSpec(mode="503"), start_s=12, relative=False)
    assert (relative.start_s, relative.end_s) == (15, 20)
    assert (absolute.start_s, absolute.end_s) == (12, None)
    assert [f.active(14) for f in (relative, absolute)] == [False, True]
    assert relative.active(15) and not relative.active(20)
    assert engine.refusing("mpesa", 16) and not engine.refusing("mpesa", 20)
    assert engine.next_change_s("mpesa", 10) == 15
    assert engine.remove(relative.id) and not engine.remove(relative.id)
    assert engine.clear("paystack") == 0 and engine.clear() == 1


async def test_invalid_schedules_are_refused(clock: ManualClock) -> None:
    engine = FaultEngine(clock)
    with pytest.raises(ValueError, match="cannot target endpoints"):
        engine.add("mpesa", OutageSpec(mode="refused"), endpoints=[EndpointKind.COLLECT])
    with pytest.raises(ValueError, match="must be after"):
        engine.add("mpesa", OutageSpec(), start_s=5, end_s=5)
    with pytest.raises(ValueError, match="ramp"):
        engine.add("mpesa", LatencySpec(distribution="ramp", from_ms=1, to_ms=2))
    with pytest.raises(ValidationError, match="p99_ms"):
        LatencySpec(distribution="lognormal", median_ms=100)
    with pytest.raises(ValidationError):
        ErrorRateSpec(rate=1.5)


async def test_fixed_latency_waits_on_the_clock(clock: ManualClock) -> None:
    engine = FaultEngine(clock)
    engine.add("paystack", LatencySpec(fixed_ms=200), endpoints=[EndpointKind.COLLECT])
    verdicts: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def request() -> None:
            verdicts.append(await engine.before_request("paystack", EndpointKind.COLLECT))

        tg.start_soon(request)
        await clock.advance(0.199)
        assert engine.delayed_requests == 1 and verdicts == []
        await clock.advance(0.001)
    assert engine.delayed_requests == 0
    assert verdicts[0].delayed_s == pytest.approx(0.2)
    assert (await engine.before_request("paystack", EndpointKind.STATUS)).delayed_s == 0  # other endpoint


async def test_lognormal_latency_has_the_requested_median_and_p99(clock: ManualClock) -> None:
    def draws(seed: int, count: int) -> np.ndarray:
        engine = FaultEngine(clock, seed=seed)
        fault = engine.add("mpesa", LatencySpec(distribution="lognormal", median_ms=120, p99_ms=900))
        return np.array([engine.latency_s(fault, 0.0) for _ in range(count)]) * 1000

    sample = draws(seed=3, count=40_000)
    assert np.median(sample) == pytest.approx(120, rel=0.04)
    assert np.percentile(sample, 99) == pytest.approx(900, rel=0.08)
    assert np.array_equal(draws(seed=3, count=50), sample[:50])  # same seed, same stream
    assert not np.array_equal(draws(seed=4, count=50), sample[:50])


async def test_latency_ramp_is_linear_over_the_fault(clock: ManualClock) -> None:
    engine = FaultEngine(clock)
    fault = engine.add("mpesa", LatencySpec(distribution="ramp", from_ms=100, to_ms=500), end_s=100)
    assert [round(engine.latency_s(fault, t) * 1000) for t in (0, 25, 50, 100, 150)] == [
        100,
        200,
        300,
        500,
        500,
    ]
    explicit = engine.add("mpesa", LatencySpec(distribution="ramp", from_ms=0, to_ms=1000, ramp_s=10))
    assert engine.latency_s(explicit, 5) == pytest.approx(0.5)


async def test_error_rate_draws_are_seeded_and_near_the_rate(clock: ManualClock) -> None:
    async def outcomes(seed: int) -> list[bool]:
        engine = FaultEngine(clock, seed=seed)
        engine.add("mpesa", ErrorRateSpec(rate=0.3, http_status=502))
        verdicts = [await engine.before_request("mpesa", EndpointKind.COLLECT) for _ in range(400)]
        assert all(v.rejection is None or v.rejection.http_status == 502 for v in verdicts)
        return [v.rejection is not None for v in verdicts]

    first = await outcomes(seed=11)
    assert first == await outcomes(seed=11)
    assert first != await outcomes(seed=12)
    assert 0.24 < sum(first) / len(first) < 0.36


async def test_error_after_processing_and_hang_verdicts(clock: ManualClock) -> None:
    engine = FaultEngine(clock)
    engine.add("paystack", ErrorRateSpec(rate=1.0, after_processing=True))
    engine.add("paystack", AcceptThenHangSpec(hang_s=30), endpoints=[EndpointKind.PAYOUT])
    verdict = await engine.before_request("paystack", EndpointKind.PAYOUT)
    assert verdict.rejection is None  # processed first...
    assert verdict.error_after_processing is not None and verdict.error_after_processing.http_status == 500
    assert verdict.hang is not None and verdict.hang.hang_s == 30


async def test_throttle_admits_n_per_clock_second(clock: ManualClock) -> None:
    engine = FaultEngine(clock)
    engine.add("mpesa", ThrottleSpec(max_per_s=3, retry_after_s=1))
    kinds = [(await engine.before_request("mpesa", EndpointKind.STATUS)).rejection for _ in range(5)]
    assert [r is None for r in kinds] == [True, True, True, False, False]
    assert kinds[3] is not None and (kinds[3].kind, kinds[3].retry_after_s) == ("throttled", 1)
    await clock.advance(1)
    assert (await engine.before_request("mpesa", EndpointKind.STATUS)).rejection is None


async def test_flapping_alternates_starting_down(clock: ManualClock) -> None:
    engine = FaultEngine(clock)
    fault = engine.add("mpesa", FlappingSpec(period_s=10, down_fraction=0.3), end_s=25)
    assert [fault.down(t) for t in (0, 2.9, 3, 9.9, 10, 13, 24, 25)] == [
        True,
        True,
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    assert [fault.next_change_s(t) for t in (0, 3, 10, 21, 25)] == [3, 10, 13, 23, None]
    verdict = await engine.before_request("mpesa", EndpointKind.AUTH)
    assert verdict.rejection is not None and verdict.rejection.kind == "unavailable"


# --- over HTTP --------------------------------------------------------------------------------


async def test_latency_holds_the_http_answer_until_the_clock_moves(
    served: Served, clock: ManualClock
) -> None:
    async with served() as (app, address, _), httpx.AsyncClient(base_url=address.url("paystack")) as client:
        sandbox_of(app).faults.add("paystack", LatencySpec(fixed_ms=1500), endpoints=[EndpointKind.PROBE])
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def probe() -> None:
                answers.append(await client.get("/balance", headers=PAYSTACK_AUTH))

            tg.start_soon(probe)
            await wait_until(lambda: sandbox_of(app).faults.delayed_requests == 1)
            await clock.advance(1.4)
            assert answers == []
            await clock.advance(0.1)
        assert answers[0].status_code == 200


async def test_reset_mode_drops_the_connection_mid_response(served: Served) -> None:
    async with served() as (app, address, _), httpx.AsyncClient(base_url=address.url("paystack")) as client:
        sandbox_of(app).faults.add("paystack", OutageSpec(mode="reset"))
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get("/balance", headers=PAYSTACK_AUTH)


async def test_refused_flapping_opens_and_closes_the_gated_port(served: Served, clock: ManualClock) -> None:
    async with served() as (app, address, control):
        sandbox_of(app).faults.add("mpesa", FlappingSpec(period_s=10, mode="refused"), end_s=30)
        await clock.advance(0)
        url = f"{address.url('mpesa')}/oauth/v1/generate"
        params = {"grant_type": "client_credentials"}
        seen: list[int | str] = []
        for _ in range(4):
            async with httpx.AsyncClient() as client:
                try:
                    seen.append((await client.get(url, params=params, headers=MPESA_BASIC)).status_code)
                except httpx.ConnectError:
                    seen.append("refused")
            await clock.advance(5)
        assert seen == ["refused", 200, "refused", 200]
        # The ungated port never refuses: there a refused outage answers 503.
        await clock.advance(0)  # t = 20: down phase again
        direct = await control.get("/mpesa/oauth/v1/generate", params=params, headers=MPESA_BASIC)
        assert direct.status_code == 503
        assert direct.json()["fault"]["detail"]["errorcode"].endswith("ServiceUnavailable")


async def test_accept_then_hang_answers_late_when_the_client_waits(
    served: Served, clock: ManualClock
) -> None:
    async with served() as (app, address, _), httpx.AsyncClient(base_url=address.url("paystack")) as client:
        sandbox = sandbox_of(app)
        sandbox.faults.add("paystack", AcceptThenHangSpec(hang_s=45), endpoints=[EndpointKind.COLLECT])
        charge = {
            "email": "late@example.com",
            "amount": 500,
            "currency": "GHS",
            "reference": "late-1",
            "mobile_money": {"phone": "0550000021", "provider": "mtn"},
        }
        answers: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def charge_it() -> None:
                answers.append(await client.post("/charge", json=charge, headers=PAYSTACK_AUTH))

            tg.start_soon(charge_it)
            await wait_until(lambda: sandbox.ledger.count_by_reference("late-1") == 1)  # accepted...
            await clock.advance(44)
            assert answers == []  # ...but unanswered
            await clock.advance(1)
        assert answers[0].status_code == 200 and answers[0].json()["data"]["status"] == "pay_offline"


async def test_a_scenario_replays_identically(served: Served, clock: ManualClock) -> None:
    async def scenario(seed: int) -> list[tuple[int, str]]:
        async with (
            served(seed=seed) as (app, address, _),
            httpx.AsyncClient(base_url=address.url("mpesa")) as client,
        ):
            sandbox_of(app).faults.add("mpesa", ErrorRateSpec(rate=0.5), endpoints=[EndpointKind.AUTH])
            trace = []
            for index in range(16):
                answer = await client.get(
                    "/oauth/v1/generate", params={"grant_type": "client_credentials"}, headers=MPESA_BASIC
                )
                body = answer.json()
                trace.append((answer.status_code, body.get("access_token") or body.get("errorCode")))
                if index % 4 == 3:
                    await clock.advance(1)
            return trace

    first = await scenario(seed=5)
    assert first == await scenario(seed=5)
    assert first != await scenario(seed=6)
    assert {status for status, _ in first} == {200, 500}
