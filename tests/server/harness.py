"""Start the real server as a subprocess (stdio or HTTP) for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from mcp import StdioServerParameters

START_TIMEOUT_S = 60.0
URL_RE = re.compile(r"MCP URL: (\S+)")


def server_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """A clean environment: only what the server needs, nothing from the developer's shell."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "MCP_AUTONOMY_STATE_DIR": str(state_dir),
        "MCP_AUTONOMY_LOG_LEVEL": "INFO",
        # Slow background loops: the tests drive what they check through tools.
        "SELF_HEALING_INTERVAL_MS": "600000",
        "MCP_AUTONOMY_SCALING_INTERVAL_MS": "600000",
    }
    env.update(extra)
    return env


@dataclass
class HttpServer:
    """A running HTTP server subprocess."""

    proc: subprocess.Popen[str]
    url: str
    state_dir: Path
    log_path: Path

    @property
    def base_url(self) -> str:
        return self.url.removesuffix("/mcp")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> float:
        """Send `sig` and wait for exit; returns the seconds it took."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout_s)
        return time.monotonic() - started


@contextmanager
def http_server(
    tmp_path: Path, *extra_args: str, env: dict[str, str] | None = None, sandbox: bool = True
) -> Iterator[HttpServer]:
    """Run `mcp-autonomy serve --transport http --port 0` until the block ends."""
    state_dir = tmp_path / "state"
    log_path = tmp_path / "server.log"
    args = [sys.executable, "-m", "mcp_autonomy", "serve", "--transport", "http", "--port", "0", *extra_args]
    if sandbox:
        args.append("--sandbox")
    log = log_path.open("w")
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        env=server_env(state_dir, **(env or {})),
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    server = None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        url = None
        while time.monotonic() < deadline and url is None:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            match = URL_RE.search(log_path.read_text(errors="replace"))
            if match:
                url = match.group(1)
            else:
                time.sleep(0.05)
        if url is None:
            raise RuntimeError(f"server did not print its URL:\n{log_path.read_text()}")
        server = HttpServer(proc, url, state_dir, log_path)
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{server.base_url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError(f"server never became ready:\n{server.log()}")
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def stdio_params(tmp_path: Path, *, tap: Path | None = None, sandbox: bool = True) -> StdioServerParameters:
    """Parameters to launch the stdio server; with `tap`, every stdout byte is also copied there."""
    server_args = ["-m", "mcp_autonomy", "serve", "--transport", "stdio"]
    if sandbox:
        server_args.append("--sandbox")
    if tap is not None:
        command_args = [
            str(Path(__file__).with_name("stdout_tap.py")),
            str(tap),
            sys.executable,
            *server_args,
        ]
    else:
        command_args = server_args
    return StdioServerParameters(
        command=sys.executable, args=command_args, env=server_env(tmp_path / "state"), cwd=str(tmp_path)
    )
