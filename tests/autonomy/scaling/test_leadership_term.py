"""LeadershipTerm: requests on the leader's behalf enter it in their worker thread right before
they send; once the term is over nothing can enter, and a release can wait for those in flight."""

from __future__ import annotations

import threading

import anyio
import anyio.to_thread
import pytest

from mcp_autonomy.autonomy.scaling.leader import LeadershipTerm, NotLeading

pytestmark = pytest.mark.anyio


def test_an_ended_term_refuses_to_send() -> None:
    term = LeadershipTerm(lambda: True, "pod-a (lease prod/l)")
    with term.sending("patch deployments/scale"):
        pass

    term.end()

    assert not term.valid
    with (
        pytest.raises(
            NotLeading, match=r"not sent: patch deployments/scale: pod-a \(lease prod/l\) no longer leads"
        ),
        term.sending("patch deployments/scale"),
    ):
        raise AssertionError("sent after the term ended")
    with pytest.raises(NotLeading):
        term.check("get deployments/scale")
    assert term.in_flight == 0


def test_a_term_whose_elector_stopped_leading_refuses_without_being_ended() -> None:
    leading = [True]
    term = LeadershipTerm(lambda: leading[0], "pod-a")
    term.check("list horizontalpodautoscalers")

    leading[0] = False  # e.g. the renew deadline passed while the loop was stalled

    with pytest.raises(NotLeading), term.sending("patch horizontalpodautoscalers"):
        raise AssertionError("sent while not leading")


async def test_drained_waits_for_the_request_in_flight_in_its_thread() -> None:
    term = LeadershipTerm(lambda: True, "pod-a")
    entered, answer = threading.Event(), threading.Event()

    def request() -> None:
        with term.sending("patch deployments/scale"):
            entered.set()
            answer.wait(10)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, request)
            await anyio.to_thread.run_sync(entered.wait, 10)
            term.end()  # the term is over, but the request already in flight still counts

            assert term.in_flight == 1
            assert not await term.drained(0.01)
            answer.set()
            assert await term.drained(10)
        assert term.in_flight == 0
