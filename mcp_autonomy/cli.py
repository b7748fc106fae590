"""The `mcp-autonomy` command: serve the MCP server (stdio or HTTP) and the operator tools."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, Final

import anyio

from mcp_autonomy import __version__
from mcp_autonomy.config import Settings, SettingsError, load_settings
from mcp_autonomy.pii import PhoneMaskingFilter

logger = logging.getLogger("mcp_autonomy")

EXIT_INVALID_SETTINGS: Final = 2
EXIT_CANNOT_START: Final = 1


class StartupError(Exception):
    """The server cannot start here (port taken, state directory unusable): one line saying what
    setting, which value, and what to do."""


def check_state_dir(settings: Settings) -> None:
    """The SQLite store's directory exists (or is created) and this user can write in it."""
    if settings.database_url is not None:
        return  # the store is PostgreSQL: nothing is written under the state directory
    path = settings.state_dir
    setting = f"MCP_AUTONOMY_STATE_DIR={path}"
    remedy = "set MCP_AUTONOMY_STATE_DIR (or --state-dir) to a directory this user can write"
    if path.exists() and not path.is_dir():
        raise StartupError(f"{setting} is a file, not a directory: {remedy}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"{setting} cannot be created ({exc.strerror}): {remedy}") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise StartupError(f"{setting} is not writable ({exc.strerror}): {remedy}") from None


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready socket on host:port, or a `StartupError` naming the setting at fault."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: small responses must not wait ~40 ms for delayed ACKs.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        free_port = "choose a free one with MCP_AUTONOMY_PORT or --port (make run PORT=8766; 0 picks any)"
        if exc.errno == errno.EADDRINUSE:
            message = f"MCP_AUTONOMY_PORT={port} is in use on {host}: stop what listens there, or {free_port}"
        elif exc.errno == errno.EACCES:
            message = f"MCP_AUTONOMY_PORT={port} needs privileges this user lacks: {free_port} above 1023"
        elif exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
            message = (
                f"MCP_AUTONOMY_HOST={host} is not an address of this machine ({exc.strerror}): "
                "set MCP_AUTONOMY_HOST (or --host) to 127.0.0.1, 0.0.0.0 or one of its addresses"
            )
        else:
            message = f"cannot listen on MCP_AUTONOMY_HOST={host} MCP_AUTONOMY_PORT={port}: {exc.strerror}"
        raise StartupError(message) from None
    return sock


def configure_logging(level: str) -> None:
    """Everything goes to stderr: in stdio mode stdout carries only the protocol."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    # Payers' phone numbers never reach a log line whole (nor does a megabyte of input).
    handler.addFilter(PhoneMaskingFilter())
    root.addHandler(handler)
    root.setLevel(level)
    # Request logs of uvicorn and httpx are noise at INFO for an operator.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-autonomy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mcp-autonomy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the MCP server")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", help="HTTP listen address (default: MCP_AUTONOMY_HOST or 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="HTTP port, 0 for any free one (default: MCP_AUTONOMY_PORT or 8765)"
    )
    serve.add_argument("--state-dir", help="where the SQLite store lives (default: MCP_AUTONOMY_STATE_DIR)")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="run the bundled provider sandbox in-process and point every provider at it",
    )
    from mcp_autonomy.autonomy.detect_cli import add_detect_parser
    from mcp_autonomy.autonomy.scaling.simulate import add_simulate_parser
    from mcp_autonomy.sandbox.cli import add_sandbox_parsers

    add_detect_parser(commands)
    add_simulate_parser(commands)
    add_sandbox_parsers(commands)
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "state_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "sandbox", False):
        overrides["sandbox"] = True
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("sandbox", "chaos"):
        from mcp_autonomy.sandbox.cli import run_chaos, run_sandbox

        configure_logging("WARNING")
        return run_sandbox(args) if args.command == "sandbox" else run_chaos(args)
    if args.command == "simulate-scaling":
        from mcp_autonomy.autonomy.scaling.simulate import run_simulate

        configure_logging("WARNING")
        return run_simulate(args)
    if args.command == "detect":
        from mcp_autonomy.autonomy.detect_cli import run_detect

        configure_logging("WARNING")
        return run_detect(args)
    try:
        settings = load_settings(**_overrides(args))
    except SettingsError as exc:
        print(f"mcp-autonomy: invalid settings: {exc}", file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    configure_logging(settings.log_level)
    if args.command == "serve":
        try:
            check_state_dir(settings)
            anyio.run(_serve, settings, args.transport)
        except SettingsError as exc:
            print(f"mcp-autonomy: invalid settings: {exc}", file=sys.stderr)
            return EXIT_INVALID_SETTINGS
        except StartupError as exc:
            print(f"mcp-autonomy: cannot start: {exc}", file=sys.stderr)
            return EXIT_CANNOT_START
        except sqlite3.DatabaseError as exc:
            print(
                f"mcp-autonomy: cannot start: the store {settings.db_path} cannot be used ({exc}): "
                "move it aside or set MCP_AUTONOMY_STATE_DIR to another directory",
                file=sys.stderr,
            )
            return EXIT_CANNOT_START
        except KeyboardInterrupt:
            pass
        if args.transport == "stdio":
            # Everything is stopped and flushed; a stdin reader thread abandoned on shutdown may
            # still block on a pipe the client keeps open, and must not hold the exit up.
            logging.shutdown()
            sys.stdout.flush()
            os._exit(0)
        return 0
    return 2


async def _serve(settings: Settings, transport: str) -> None:
    from mcp_autonomy.server.app import assemble

    if transport == "stdio":
        async with assemble(settings) as assembly:
            await _serve_stdio(assembly)
        return
    from mcp_autonomy.server.http import check_exposure

    check_exposure(settings)
    # Bound before the engine starts: provider callbacks need the real port in their URLs.
    sock = bind_socket(settings.host, settings.port)
    port = sock.getsockname()[1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    async with assemble(settings, public_base_url=f"http://{host}:{port}") as assembly:
        await _serve_http(assembly, settings, sock, f"http://{host}:{port}")


async def _stop_on_signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            logger.info("received %s, stopping", signal.Signals(signum).name)
            scope.cancel()
            return


async def _serve_stdio(assembly: Any) -> None:
    from mcp_autonomy.server.runtime import engine_running
    from mcp_autonomy.server.stdio import serve_stdio

    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, tg.cancel_scope)
        async with engine_running(assembly.system, assembly.app):
            logger.info("mcp-autonomy %s serving MCP on stdio", __version__)
            await serve_stdio(assembly.app)
        tg.cancel_scope.cancel()


async def _serve_http(assembly: Any, settings: Settings, sock: socket.socket, base_url: str) -> None:
    import uvicorn

    from mcp_autonomy.server.http import create_http_app

    asgi = create_http_app(assembly.system, assembly.app, extra_routes=assembly.routes)
    config = uvicorn.Config(
        asgi,
        log_level=settings.log_level.lower(),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    from mcp_autonomy.server.dashboard import DASHBOARD_PATH

    logger.info("mcp-autonomy %s serving MCP over HTTP", __version__)
    # One line for people and scripts (tests read the URL after "MCP URL: ").
    print(f"MCP URL: {base_url}/mcp  dashboard: {base_url}{DASHBOARD_PATH}", file=sys.stderr, flush=True)
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    raise SystemExit(main())
