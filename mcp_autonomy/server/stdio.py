"""Serving MCP on stdio so that a signal stops the process at once.

The SDK's stdio transport reads stdin in a worker thread that cannot be abandoned: while the
client keeps stdin open, a SIGTERM would wait for a line that never comes. Here stdin is read
by a line reader whose blocking reads *can* be abandoned on cancellation, so the engine's loops
stop and the store is flushed within the shutdown budget. As in the SDK, fd 0 is pointed at the
null device while serving (so child processes cannot eat protocol bytes) and the SDK still owns
stdout, diverting stray writes to stderr: only JSON-RPC reaches stdout.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import IO, Any, cast

import anyio
from mcp.server.stdio import stdio_server

from mcp_autonomy.server.mcp import McpApp


class AbandonableLineReader:
    """An async iterator of text lines from a file, each read in a thread it can walk away from."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        line = await anyio.to_thread.run_sync(self._file.readline, abandon_on_cancel=True)
        if not line:
            raise StopAsyncIteration
        return line


def _claim_stdin() -> tuple[IO[str], int]:
    """A private text handle on the real stdin, with fd 0 pointed at the null device."""
    private_fd = os.dup(0)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.close(null_fd)
    # closefd=False: an abandoned reader thread may still block on it; it dies with the process.
    return os.fdopen(private_fd, "r", encoding="utf-8", errors="replace", closefd=False), private_fd


async def serve_stdio(app: McpApp) -> None:
    """Serve `app` on this process's stdin/stdout until stdin closes or the task is cancelled."""
    stdin, private_fd = _claim_stdin()
    try:
        reader = AbandonableLineReader(stdin)
        lowlevel = app.mcp._lowlevel_server
        async with stdio_server(stdin=cast(Any, reader)) as (read_stream, write_stream):
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
    finally:
        os.dup2(private_fd, 0)
