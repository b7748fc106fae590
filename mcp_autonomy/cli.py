"""The `mcp-autonomy` command: serve the MCP server (stdio or HTTP) and the operator tools."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from mcp_autonomy import __version__
from mcp_autonomy.config import Settings, SettingsError, load_settings

logger = logging.getLogger("mcp_autonomy")


def configure_logging(level: str) -> None:
    """Everything goes to stderr: in stdio mode stdout carries only the protocol."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
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
        return 2
    configure_logging(settings.log_level)
    if args.command == "serve":
        try:
            anyio.run(_serve, settings, args.transport)
        except SettingsError as exc:
            print(f"mcp-autonomy: invalid settings: {exc}", file=sys.stderr)
            return 2
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
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: small responses must not wait ~40 ms for delayed ACKs.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((settings.host, settings.port))
    port = sock.getsockname()[1]
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    async with assemble(settings, public_base_url=f"http://{host}:{port}") as assembly:
        await _serve_http(assembly, settings, sock, f"http://{host}:{port}/mcp")


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


async def _serve_http(assembly: Any, settings: Settings, sock: socket.socket, url: str) -> None:
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
    logger.info("mcp-autonomy %s: MCP endpoint %s", __version__, url)
    print(f"MCP URL: {url}", file=sys.stderr, flush=True)
    await server.serve(sockets=[sock])


if __name__ == "__main__":
    raise SystemExit(main())
