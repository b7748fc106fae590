"""Run the sandbox on real loopback sockets with uvicorn, inside the caller's task group.

    async with anyio.create_task_group() as tg:
        address = await tg.start(serve_sandbox, app)          # port 0: ephemeral
        adapter = MpesaAdapter(settings(base_url=address.url("mpesa")), clock)
        ...
        tg.cancel_scope.cancel()

or `async with running_sandbox(app) as address: ...`.

The app listens on one port (`address.base_url`: every provider under its prefix, and
`/_control`). Each provider also gets its own *gated* port (`address.url(name)`), a byte-level
forwarder to the app that closes its listening socket while a `refused` outage (or the down
phase of a `refused` flapping fault) lasts. That is how the sandbox produces a genuine
connection refusal - `httpx.ConnectError`, "certainly not processed" - which an ASGI app
cannot do. Point adapters at the gated URLs.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Generator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import anyio
import uvicorn
from anyio.abc import SocketListener, SocketStream, TaskStatus
from starlette.applications import Starlette

from mcp_autonomy.clock import Clock
from mcp_autonomy.sandbox.app import sandbox_of
from mcp_autonomy.sandbox.core import SandboxAbort
from mcp_autonomy.sandbox.faults import FaultEngine

STARTUP_TIMEOUT_S = 10.0
"""Wall-clock bound on uvicorn's startup (real I/O, so not the injected clock)."""
GRACEFUL_SHUTDOWN_S = 2
DATE_REFRESH_S = 1.0


@dataclass(frozen=True)
class SandboxAddress:
    """Where a running sandbox listens."""

    host: str
    port: int
    provider_ports: Mapping[str, int] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """The app's own port: control API and every provider (never refuses connections)."""
        return f"http://{self._host_for_url}:{self.port}"

    def url(self, provider: str) -> str:
        """A provider's base URL on its gated port (refused outages act here)."""
        port = self.provider_ports.get(provider)
        if port is None:
            return self.direct_url(provider)
        return f"http://{self._host_for_url}:{port}/{provider}"

    def direct_url(self, provider: str) -> str:
        """A provider's base URL on the app's own port (outages answer 503 there)."""
        return f"{self.base_url}/{provider}"

    @property
    def _host_for_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


def _bind_probe_port(host: str) -> int:
    """An ephemeral port that is free right now (bound once, then released for reuse)."""
    sock = _bind(host, 0)
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: small responses must not wait ~40 ms for delayed ACKs.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _EmbeddedServer(uvicorn.Server):
    """uvicorn as a guest inside a host process whose tests drive a manual clock.

    - It leaves signals alone: the host owns SIGINT/SIGTERM (uvicorn would capture them while
      serving and re-raise them only after the sandbox stopped).
    - It does not poll every 0.1 s: such a task can fall into lockstep with
      `anyio.wait_all_tasks_blocked()`, which re-checks every 0.1 s and finds it runnable every
      time, so `ManualClock.advance()` never returns. It waits for `stop()` instead, waking once
      a second to refresh the Date header.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stop_requested: anyio.Event | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        self._stop_requested = anyio.Event()
        await self.on_tick(0)
        while not self.should_exit:
            with anyio.move_on_after(DATE_REFRESH_S):
                await self._stop_requested.wait()
            await self.on_tick(0)

    def stop(self) -> None:
        """Ask the server to shut down gracefully (from the server's own event loop)."""
        self.should_exit = True
        if self._stop_requested is not None:
            self._stop_requested.set()


class _QuietAborts(logging.Filter):
    """Drop uvicorn's traceback for the sandbox's deliberate mid-response resets."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, SandboxAbort):
                return False
            if isinstance(exc, BaseExceptionGroup) and any(
                isinstance(e, SandboxAbort) for e in exc.exceptions
            ):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


_QUIET = _QuietAborts()


class _Gate:
    """A provider's own port: forwards bytes to the app, and refuses connections on demand."""

    def __init__(
        self, provider: str, host: str, upstream_port: int, faults: FaultEngine, clock: Clock
    ) -> None:
        self.provider = provider
        self.host = host
        self.upstream_port = upstream_port
        self.faults = faults
        self.clock = clock

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        port = _bind_probe_port(self.host)
        task_status.started(port)
        serving: anyio.CancelScope | None = None
        closed = anyio.Event()
        async with anyio.create_task_group() as tg:
            try:
                while True:
                    changed = self.faults.changed  # before reading the schedule: no missed change
                    refusing = self.faults.refusing(self.provider)
                    if refusing and serving is not None:
                        serving.cancel()
                        await closed.wait()  # the port is really closed before anyone connects again
                        serving = None
                    elif not refusing and serving is None:
                        # The same port every time: clients keep their base URL across outages.
                        listener = await SocketListener.from_socket(_bind(self.host, port))
                        serving, closed = anyio.CancelScope(), anyio.Event()
                        tg.start_soon(self._serve, listener, serving, closed)
                    await self._wait(changed)
            finally:
                if serving is not None:
                    serving.cancel()

    async def _wait(self, changed: anyio.Event) -> None:
        next_change = self.faults.next_change_s(self.provider)
        async with anyio.create_task_group() as tg:

            async def on_change() -> None:
                await changed.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_change)
            if next_change is not None:
                await self.clock.sleep(max(0.0, next_change - self.clock.monotonic()))
                tg.cancel_scope.cancel()

    async def _serve(self, listener: SocketListener, scope: anyio.CancelScope, closed: anyio.Event) -> None:
        try:
            with scope:
                await listener.serve(self._pipe)
        finally:
            # Closed here, after the accept loop stopped, so no accept() meets a closed socket.
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            closed.set()

    async def _pipe(self, client: SocketStream) -> None:
        try:
            upstream = await anyio.connect_tcp(self.host, self.upstream_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, anyio.create_task_group() as tg:

            async def pump(source: SocketStream, sink: SocketStream) -> None:
                try:
                    async for chunk in source:
                        await sink.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass
                tg.cancel_scope.cancel()  # either side gone: close both

            tg.start_soon(pump, client, upstream)
            tg.start_soon(pump, upstream, client)


async def serve_sandbox(
    app: Starlette,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    gated: bool | Iterable[str] = True,
    task_status: TaskStatus[SandboxAddress] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` with uvicorn on `host:port` (0: ephemeral) until cancelled.

    Reports a `SandboxAddress` through `task_status` once the socket accepts connections.
    `gated` adds a refusable per-provider port for every provider (or those named); it is
    ignored for apps that are not sandbox apps (e.g. a test's callback receiver).
    """
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    server = _EmbeddedServer(config)
    logging.getLogger("uvicorn.error").addFilter(_QUIET)
    served = anyio.Event()

    async def run_server() -> None:
        try:
            # Shielded: on cancellation uvicorn is asked to exit and shuts down gracefully
            # (lifespan shutdown, connections closed) instead of being torn mid-flight.
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=[sock])
        finally:
            served.set()

    try:
        faults: FaultEngine | None = sandbox_of(app).faults
        providers = sandbox_of(app).providers
    except TypeError:
        faults, providers = None, []
    if gated is False or faults is None:
        gate_names: list[str] = []
    elif gated is True:
        gate_names = providers
    else:
        gate_names = [name for name in gated if name in providers]

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_server)
        try:
            with anyio.fail_after(STARTUP_TIMEOUT_S):
                while not server.started:
                    if served.is_set():
                        raise RuntimeError("the sandbox server stopped during startup")
                    await anyio.sleep(0.005)
            async with anyio.create_task_group() as gates:
                ports: dict[str, int] = {}
                for name in gate_names:
                    assert faults is not None
                    gate = _Gate(name, host, bound_port, faults, sandbox_of(app).clock)
                    ports[name] = await gates.start(gate.run)
                task_status.started(SandboxAddress(host, bound_port, ports))
                await anyio.sleep_forever()
        finally:
            server.stop()
            with anyio.CancelScope(shield=True):
                await served.wait()


@asynccontextmanager
async def running_sandbox(
    app: Starlette, host: str = "127.0.0.1", port: int = 0, *, gated: bool | Iterable[str] = True
) -> AsyncIterator[SandboxAddress]:
    """`serve_sandbox` for the length of an `async with` block."""
    async with anyio.create_task_group() as tg:
        address: SandboxAddress = await tg.start(partial(serve_sandbox, app, host, port, gated=gated))
        try:
            yield address
        finally:
            tg.cancel_scope.cancel()
