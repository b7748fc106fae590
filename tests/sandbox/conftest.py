"""Sandbox tests: the anyio backend, and a sandbox served on loopback inside the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.sandbox import SandboxAddress, create_sandbox_app, serve_sandbox

TEST_DEADLINE_S = 30.0
"""Wall-clock bound on one test's body (real sockets are involved)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def _served(
    clock: ManualClock, **app_options: Any
) -> AsyncIterator[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]:
    app = create_sandbox_app(clock, **app_options)
    with anyio.fail_after(TEST_DEADLINE_S):
        async with anyio.create_task_group() as tg:
            address: SandboxAddress = await tg.start(serve_sandbox, app)
            try:
                async with httpx.AsyncClient(base_url=address.base_url, timeout=5.0) as control:
                    yield app, address, control
            finally:
                tg.cancel_scope.cancel()


@pytest.fixture
def served(
    clock: ManualClock,
) -> Callable[..., AbstractAsyncContextManager[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]]:
    """`async with served(seed=...) as (app, address, control_client):` - a sandbox on loopback."""
    return partial(_served, clock)
