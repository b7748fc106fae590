"""Helpers of the crash drill (`test_crash_drill.py`): real processes on loopback, no mocks.

- `SandboxProcess`: `mcp-autonomy sandbox` as a subprocess, and its control API.
- `ServerProcess`: `mcp-autonomy serve --transport http` as a subprocess, with the provider
  settings aimed at that sandbox; it can be killed with SIGKILL and started again on the same
  state directory and port (callback URLs sent before the kill must still reach it).
- `PaymentClient`: one MCP session per call (a client that lost its server opens a new one), and
  a verdict on each call that says whether the request can have reached the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client

from mcp_autonomy.sandbox.intasend import IntaSendSandboxConfig
from mcp_autonomy.sandbox.mpesa import MpesaSandboxConfig

START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 20.0


def free_port() -> int:
    """A loopback port free right now (the server must keep one port across its restart)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli_command() -> list[str]:
    """`.venv/bin/mcp-autonomy`, next to the interpreter running the tests."""
    script = Path(sys.executable).with_name("mcp-autonomy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mcp_autonomy"]


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


# --- the sandbox ----------------------------------------------------------------------------


@dataclass
class SandboxProcess:
    """The standalone provider sandbox (`mcp-autonomy sandbox`)."""

    workdir: Path
    seed: int = 7
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "sandbox.log"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *cli_command(),
                    "sandbox",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--seed",
                    str(self.seed),
                    "--realism",
                    "realistic",
                ],
                cwd=self.workdir,
                env=clean_env(),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sandbox exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/_control/clock", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sandbox never answered:\n{self.log()}")

    def stop(self) -> None:
        _stop(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def control(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the control API (`path` under `/_control`); returns the JSON answer."""
        response = httpx.request(method, f"{self.base_url}/_control{path}", timeout=10, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"sandbox {method} {path}: {response.status_code} {response.text}")
        return response.json()


# --- the server -----------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """Nothing from the developer's shell but PATH and HOME."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env.update(extra)
    return env


def server_env(state_dir: Path, sandbox: SandboxProcess, server_port: int, token: str) -> dict[str, str]:
    """`serve` with M-Pesa (primary) and IntaSend (backup) aimed at the standalone sandbox.

    Credentials are the sandbox configs' defaults; M-Pesa's callback URLs and IntaSend's webhook
    point at this server's callback routes, which keep working across a restart because the
    token and port stay the same.
    """
    mpesa, intasend = MpesaSandboxConfig(), IntaSendSandboxConfig()
    callbacks = f"http://127.0.0.1:{server_port}/callbacks/{token}"
    return clean_env(
        MCP_AUTONOMY_STATE_DIR=str(state_dir),
        MCP_AUTONOMY_LOG_LEVEL="INFO",
        MCP_AUTONOMY_PROVIDERS="mpesa,intasend",
        MCP_AUTONOMY_BACKUPS="mpesa:intasend",
        MCP_AUTONOMY_CALLBACK_TOKEN=token,
        # Loops that would change the lanes under the drill stay off; self-healing stays on.
        AUTO_OPTIMIZATION_ENABLED="false",
        AUTO_SCALING_ENABLED="false",
        AUTO_SCHEDULE_MAINTENANCE="false",
        MPESA_BASE_URL=f"{sandbox.base_url}/mpesa",
        MPESA_CONSUMER_KEY=mpesa.consumer_key,
        MPESA_CONSUMER_SECRET=mpesa.consumer_secret,
        MPESA_SHORTCODE=mpesa.shortcode,
        MPESA_PASSKEY=mpesa.passkey,
        MPESA_B2C_SHORTCODE=mpesa.b2c_shortcode,
        MPESA_INITIATOR_NAME=mpesa.initiator_name,
        MPESA_SECURITY_CREDENTIAL=mpesa.security_credential,
        MPESA_CALLBACK_URL=f"{callbacks}/mpesa/stk",
        MPESA_RESULT_URL=f"{callbacks}/mpesa/result",
        MPESA_QUEUE_TIMEOUT_URL=f"{callbacks}/mpesa/timeout",
        INTASEND_BASE_URL=f"{sandbox.base_url}/intasend",
        INTASEND_SECRET_KEY=intasend.secret_keys[0],
        INTASEND_PUBLIC_KEY=intasend.public_key,
        INTASEND_WEBHOOK_CHALLENGE=intasend.webhook_challenge,
    )


@dataclass
class ServerProcess:
    """`mcp-autonomy serve --transport http` on a fixed port, restartable on the same store."""

    workdir: Path
    env: dict[str, str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"

    def log_path(self, run: int) -> Path:
        return self.workdir / f"server-{run}.log"

    def spawn(self) -> None:
        """Start the process (returns at once; `wait_ready` waits for /readyz)."""
        self.starts += 1
        with self.log_path(self.starts).open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *cli_command(),
                    "serve",
                    "--transport",
                    "http",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    async def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Wait until /readyz answers 200; returns the seconds it took."""
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
            while time.monotonic() - started < timeout_s:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if (await http.get(f"{self.base_url}/readyz")).status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                await anyio.sleep(0.05)
        raise RuntimeError(f"server never became ready:\n{self.log()}")

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs, exactly as a crashed process."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        _stop(self.proc)

    def log(self) -> str:
        return "\n".join(
            f"--- server run {run} ---\n{self.log_path(run).read_text(errors='replace')}"
            for run in range(1, self.starts + 1)
            if self.log_path(run).exists()
        )


# --- the client -----------------------------------------------------------------------------


class Delivery(StrEnum):
    """What one client call can say about whether its request reached the server."""

    ANSWERED = "answered"  # the tool answered (a payment record, or a tool error)
    NOT_SENT = "not_sent"  # no session could be opened: the tool call was never sent
    AMBIGUOUS = "ambiguous"  # the call was sent (or being sent) and no answer came back


@dataclass
class CallResult:
    delivery: Delivery
    record: dict[str, Any] | None = None
    error: str | None = None
    started_at: float = 0.0
    ended_at: float = 0.0


class PaymentClient:
    """MCP `request_payment` / `send_payment` over streamable HTTP, one session per call."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def call(self, tool: str, arguments: dict[str, Any]) -> CallResult:
        started = time.monotonic()
        sent = False
        answer: Any = None
        error: str | None = None
        try:
            with anyio.fail_after(CALL_TIMEOUT_S):
                async with Client(self.url, mode="legacy", read_timeout_seconds=CALL_TIMEOUT_S) as client:
                    sent = True  # the session is open: from here on the call may reach the tool
                    answer = await client.call_tool(tool, arguments)
        except BaseException as exc:  # connection errors arrive wrapped in exception groups
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            error = _describe(exc)
        ended = time.monotonic()
        if answer is not None:
            # An answer is an answer even if closing the session failed afterwards.
            if answer.is_error:
                return CallResult(Delivery.ANSWERED, None, str(answer.content), started, ended)
            return CallResult(Delivery.ANSWERED, dict(answer.structured_content or {}), None, started, ended)
        return CallResult(Delivery.AMBIGUOUS if sent else Delivery.NOT_SENT, None, error, started, ended)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"[:200]
