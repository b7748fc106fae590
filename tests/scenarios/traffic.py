"""Steady payment traffic for scenario tests on the manual clock.

Each step of `step_s` simulated seconds starts `per_step` payments spread evenly over the step,
each in its own task (so slow answers overlap, as real traffic does), then advances the clock by
the step. Advancing in whole steps keeps the real time of a simulated hour to seconds.
"""

from __future__ import annotations

from collections.abc import Callable

from anyio.abc import TaskGroup

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.providers.base import PaymentRequest


class Traffic:
    """Sends payments built by `make_request(i)` through `system` while the clock advances."""

    def __init__(
        self,
        system: AutonomousSystem,
        clock: ManualClock,
        tasks: TaskGroup,
        make_request: Callable[[int], PaymentRequest],
        *,
        per_step: int,
        step_s: float,
    ) -> None:
        self.system = system
        self.clock = clock
        self.tasks = tasks
        self.make_request = make_request
        self.per_step = per_step
        self.step_s = step_s
        self.sent = 0

    async def _pay(self, i: int, offset_s: float) -> None:
        await self.clock.sleep(offset_s)
        await self.system.submit_payment(self.make_request(i))

    async def run(self, seconds: float, *, until: Callable[[], bool] | None = None) -> bool:
        """Send traffic for `seconds` (stopping early once `until()` is true); returns whether it was."""
        for _ in range(max(1, round(seconds / self.step_s))):
            for k in range(self.per_step):
                self.tasks.start_soon(self._pay, self.sent, k * self.step_s / self.per_step)
                self.sent += 1
            await self.clock.advance(self.step_s)
            if until is not None and until():
                return True
        return False

    async def drain(self, seconds: float = 60.0) -> None:
        """Let the payments in flight finish (no new ones)."""
        await self.clock.advance(seconds)
