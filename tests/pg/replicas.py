"""Helpers of the multi-replica drill (`test_replicas.py`): several `serve` processes on one
PostgreSQL database and one standalone sandbox, driven through MCP and HTTP only.

- `Replica`: one `mcp-autonomy serve --transport http` process (a `ServerProcess`) with its own
  port and state directory, the shared database URL and the shared callback token; `call` runs
  one MCP tool in a fresh session and returns its structured answer (or raises `ToolFailed`).
- `Cluster`: the sandbox and the replicas, started together and stopped together.
- `wait_for`: poll a condition until a deadline (real time; never a bare sleep as a condition).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
from mcp import Client
from mcp_types import CallToolResult

from tests.scenarios.drill import SandboxProcess, ServerProcess, free_port, server_env

CALLBACK_TOKEN = "replicas-drill-callback-token-0123456789"
CALL_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.02
"""How often `wait_for` looks again: small against the 1 s propagation bound measured."""

T = TypeVar("T")


class ToolFailed(AssertionError):
    """A tool answered with an error (`text` is what it said)."""

    def __init__(self, tool: str, text: str) -> None:
        super().__init__(f"{tool}: {text}")
        self.tool = tool
        self.text = text


@dataclass
class Replica:
    """One `serve` process of the cluster."""

    name: str
    server: ServerProcess

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def mcp_url(self) -> str:
        return self.server.mcp_url

    @property
    def alive(self) -> bool:
        return self.server.proc is not None and self.server.proc.poll() is None

    @asynccontextmanager
    async def session(self, **kwargs: Any) -> AsyncIterator[Client]:
        """One MCP session (legacy protocol: resources/subscribe works on it)."""
        async with Client(
            self.mcp_url, mode="legacy", read_timeout_seconds=CALL_TIMEOUT_S, **kwargs
        ) as client:
            yield client

    async def call(self, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call `tool` in a fresh session; its structured answer, or ToolFailed."""
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with self.session() as client:
                result = await client.call_tool(tool, arguments or {})
        # Raised outside the session: inside, the SDK's task group would wrap it in a group.
        return _answer(tool, result)

    async def status(self) -> dict[str, Any]:
        """`get_status` (the summary: per-loop mode, `is_leader`, `leader`, `store_reachable`)."""
        return await self.call("get_status")

    async def full_status(self) -> dict[str, Any]:
        """The `autonomy://status` resource (adds `leadership` per loop and `store`)."""
        with anyio.fail_after(CALL_TIMEOUT_S):
            async with self.session() as client:
                result = await client.read_resource("autonomy://status")
        text = getattr(result.contents[0], "text", None)
        assert isinstance(text, str), result
        answer: dict[str, Any] = json.loads(text)
        return answer

    async def rest(self, path: str, **params: Any) -> httpx.Response:
        """GET `path` on this replica's HTTP API (no proxy from the environment)."""
        async with httpx.AsyncClient(timeout=CALL_TIMEOUT_S, trust_env=False) as http:
            return await http.get(f"{self.base_url}{path}", params=params)

    def log(self) -> str:
        return self.server.log()


async def call_on(client: Client, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call `tool` on an open session; its structured answer, or ToolFailed."""
    return _answer(tool, await client.call_tool(tool, arguments or {}))


def _answer(tool: str, result: CallToolResult) -> dict[str, Any]:
    if result.is_error:
        raise ToolFailed(tool, " ".join(str(getattr(c, "text", c)) for c in result.content))
    return dict(result.structured_content or {})


@dataclass
class Cluster:
    """The sandbox and the replicas sharing one database."""

    sandbox: SandboxProcess
    replicas: list[Replica] = field(default_factory=list)

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)

    def by_name(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def logs(self) -> str:
        return "\n".join(f"===== replica {r.name} =====\n{r.log()[-6000:]}" for r in self.replicas)

    def ledger(self, provider: str) -> list[dict[str, Any]]:
        """The sandbox's ledger entries of `provider` (ground truth of what was charged)."""
        entries: list[dict[str, Any]] = self.sandbox.control("GET", "/ledger", params={"provider": provider})[
            "entries"
        ]
        return entries

    def charges(self) -> list[dict[str, Any]]:
        """Every collection and payout in every ledger, tagged with its provider."""
        return [
            {**entry, "provider": provider}
            for provider in ("mpesa", "intasend")
            for entry in self.ledger(provider)
            if entry["operation"] in ("collect", "payout")
        ]


@asynccontextmanager
async def start_cluster(
    workdir: Path,
    database_url: str,
    *,
    names: tuple[str, ...] = ("a", "b"),
    extra_env: dict[str, str] | None = None,
    seed: int = 7,
) -> AsyncIterator[Cluster]:
    """Start the sandbox and one replica per name (in parallel), all ready; stop them all after."""
    sandbox = SandboxProcess(workdir, seed=seed)
    cluster = Cluster(sandbox)
    try:
        sandbox.start()
        for name in names:
            replica_dir = workdir / name
            replica_dir.mkdir(parents=True, exist_ok=True)
            port = free_port()
            env = server_env(replica_dir / "state", sandbox, port, CALLBACK_TOKEN)
            env.update(
                MCP_AUTONOMY_DATABASE_URL=database_url,
                POD_NAME=f"replica-{name}",
                **(extra_env or {}),
            )
            cluster.replicas.append(Replica(name, ServerProcess(replica_dir, env, port)))
        for replica in cluster.replicas:
            replica.server.spawn()
        async with anyio.create_task_group() as tg:
            for replica in cluster.replicas:
                tg.start_soon(replica.server.wait_ready)
        yield cluster
    finally:
        for replica in cluster.replicas:
            replica.server.stop()
        sandbox.stop()


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = POLL_INTERVAL_S,
) -> tuple[T, float]:
    """Poll `probe` until it returns something other than None; returns it and the seconds taken."""
    started = time.monotonic()
    last_error: BaseException | None = None
    while True:
        try:
            value = await probe()
        except (httpx.TransportError, ToolFailed, OSError) as exc:  # a replica between states
            value, last_error = None, exc
        if value is not None:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s (last error: {last_error!r})")
        await anyio.sleep(interval_s)
