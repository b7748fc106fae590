"""Start-up as a new user meets it: every refusal is one stderr line naming the setting, the value
and what to do, with a non-zero exit code; a server without providers says so; the start-up line
names the MCP and dashboard URLs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.harness import http_server, server_env

RUN_TIMEOUT_S = 60.0
EXIT_INVALID_SETTINGS = 2
EXIT_CANNOT_START = 1


def serve(
    tmp_path: Path,
    *args: str,
    state_dir: Path | None = None,
    env: dict[str, str] | None = None,
    **more_env: str,
) -> subprocess.CompletedProcess[str]:
    """Run `mcp-autonomy serve ARGS` to its exit (the start-up refusals tested here are immediate)."""
    command = [sys.executable, "-m", "mcp_autonomy", "serve", *args]
    return subprocess.run(
        command,
        cwd=tmp_path,
        env=server_env(state_dir or tmp_path / "state", **(env or {}), **more_env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def one_line(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The process exited with `code` having written exactly one stderr line holding each fragment."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    line = lines[0]
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    assert "Traceback" not in line and "pydantic" not in line
    return line


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_busy_port(tmp_path: Path, busy_port: int) -> None:
    result = serve(tmp_path, "--transport", "http", "--sandbox", MCP_AUTONOMY_PORT=str(busy_port))
    one_line(
        result,
        EXIT_CANNOT_START,
        f"MCP_AUTONOMY_PORT={busy_port} is in use",
        "MCP_AUTONOMY_PORT or --port",
        "make run PORT=",
    )


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("x")
    result = serve(tmp_path, "--transport", "http", "--port", "0", "--sandbox", state_dir=not_a_dir)
    one_line(
        result,
        EXIT_CANNOT_START,
        f"MCP_AUTONOMY_STATE_DIR={not_a_dir} is a file",
        "set MCP_AUTONOMY_STATE_DIR",
    )


def test_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    below_a_file = tmp_path / "file" / "state"
    result = serve(tmp_path, "--transport", "stdio", "--sandbox", state_dir=below_a_file)
    one_line(result, EXIT_CANNOT_START, f"MCP_AUTONOMY_STATE_DIR={below_a_file} cannot be created")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_state_dir_that_is_not_writable(tmp_path: Path) -> None:
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        result = serve(tmp_path, "--transport", "http", "--port", "0", "--sandbox", state_dir=read_only)
    finally:
        read_only.chmod(0o700)
    one_line(result, EXIT_CANNOT_START, f"MCP_AUTONOMY_STATE_DIR={read_only} is not writable")


def test_a_store_file_that_is_not_a_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "mcp-autonomy.sqlite3").write_bytes(b"not a database at all" * 100)
    result = serve(tmp_path, "--transport", "http", "--port", "0", "--sandbox")
    one_line(result, EXIT_CANNOT_START, "mcp-autonomy.sqlite3 cannot be used", "MCP_AUTONOMY_STATE_DIR")


def test_missing_provider_credentials_are_named_by_their_environment_variables(tmp_path: Path) -> None:
    result = serve(
        tmp_path, "--transport", "stdio", MCP_AUTONOMY_PROVIDERS="mpesa", MPESA_CONSUMER_SECRET="s"
    )
    line = one_line(
        result, EXIT_INVALID_SETTINGS, "MPESA_CONSUMER_KEY", "MPESA_PASSKEY", "MPESA_SHORTCODE", "'mpesa'"
    )
    assert "MPESA_CONSUMER_SECRET" not in line  # it is set
    assert " consumer_key" not in line


def test_an_invalid_provider_setting_is_named_and_its_value_not_echoed(tmp_path: Path) -> None:
    credentials = {
        "MPESA_CONSUMER_KEY": "key-k3y",
        "MPESA_CONSUMER_SECRET": "secret-s3cret",
        "MPESA_PASSKEY": "pass-p4ss",
        "MPESA_SHORTCODE": "12",
        "MCP_AUTONOMY_PROVIDERS": "mpesa",
    }
    result = serve(tmp_path, "--transport", "stdio", env=credentials)
    line = one_line(result, EXIT_INVALID_SETTINGS, "MPESA_SHORTCODE is invalid", "MCP_AUTONOMY_PROVIDERS")
    for value in ("k3y", "s3cret", "p4ss"):
        assert value not in line


def test_an_unknown_provider(tmp_path: Path) -> None:
    result = serve(tmp_path, "--transport", "stdio", MCP_AUTONOMY_PROVIDERS="mpessa")
    one_line(result, EXIT_INVALID_SETTINGS, "MCP_AUTONOMY_PROVIDERS", "'mpessa'", "mpesa, paystack")


@pytest.mark.parametrize(
    ("env", "fragments"),
    [
        ({"MIN_INSTANCES": "9", "MAX_INSTANCES": "3"}, ["MIN_INSTANCES=9 must be <= MAX_INSTANCES=3"]),
        ({"MCP_AUTONOMY_PORT": "70000"}, ["MCP_AUTONOMY_PORT=70000 is invalid", "[0, 65535]"]),
        ({"MCP_AUTONOMY_BEARER_TOKEN": ""}, ["MCP_AUTONOMY_BEARER_TOKEN is set but empty"]),
        ({"MCP_AUTONOMY_BEARER_TOKEN": "   "}, ["MCP_AUTONOMY_BEARER_TOKEN is set but empty"]),
        ({"MCP_AUTONOMY_BREAKER_CONSECUTIVE_FAILURES": "1"}, ["=1 is invalid", "0 (off) or 2..1000"]),
        ({"POD_IP": "pod-seven"}, ["POD_IP=pod-seven is invalid", "IP address"]),
        ({"MCP_AUTONOMY_HOST": "0.0.0.0"}, ["MCP_AUTONOMY_HOST=0.0.0.0", "set MCP_AUTONOMY_BEARER_TOKEN"]),
        (
            {"MCP_AUTONOMY_AUTH_ISSUER": "https://sso.example.test/realms/pay"},
            ["MCP_AUTONOMY_AUTH_ISSUER needs MCP_AUTONOMY_PUBLIC_URL"],
        ),
        (
            {"MCP_AUTONOMY_PUBLIC_URL": "ftp://x/mcp"},
            ["MCP_AUTONOMY_PUBLIC_URL=ftp://x/mcp is invalid", "https://"],
        ),
        (
            {"MCP_AUTONOMY_AUTH_CLIENT_SECRET": " "},
            ["MCP_AUTONOMY_AUTH_CLIENT_SECRET is invalid", "set but empty"],
        ),
        (
            {"MCP_AUTONOMY_TOKENS_RELOAD_S": "30"},
            ["MCP_AUTONOMY_TOKENS_RELOAD_S=30 is invalid", "[0.1, 5.0]"],
        ),
        (
            {"MCP_AUTONOMY_TOKENS_FILE": "/nonexistent/tokens.json"},
            ["MCP_AUTONOMY_TOKENS_FILE=", "cannot read it"],
        ),
    ],
)
def test_invalid_settings(tmp_path: Path, env: dict[str, str], fragments: list[str]) -> None:
    # No --port: it would win over MCP_AUTONOMY_PORT. Each of these stops before binding.
    result = serve(tmp_path, "--transport", "http", "--sandbox", env=env)
    one_line(result, EXIT_INVALID_SETTINGS, "mcp-autonomy: invalid settings:", *fragments)


def test_a_database_url_password_is_never_echoed(tmp_path: Path) -> None:
    result = serve(tmp_path, "--transport", "stdio", MCP_AUTONOMY_DATABASE_URL="mysql://app:hunter2@db/x")
    line = one_line(result, EXIT_INVALID_SETTINGS, "MCP_AUTONOMY_DATABASE_URL", "postgresql://")
    assert "hunter2" not in line


def stdio_stderr_until_serving(tmp_path: Path, *args: str) -> str:
    """Start the stdio server, read stderr until it serves, then close stdin (it exits)."""
    log = tmp_path / "stderr.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_autonomy", "serve", "--transport", "stdio", *args],
            cwd=tmp_path,
            env=server_env(tmp_path / "state"),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while "serving MCP on stdio" not in log.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return log.read_text()


def test_no_providers_is_a_warning_saying_how_to_add_some(tmp_path: Path) -> None:
    stderr = stdio_stderr_until_serving(tmp_path)
    warnings = [line for line in stderr.splitlines() if "WARNING" in line and "no payment providers" in line]
    assert len(warnings) == 1, stderr
    assert "MCP_AUTONOMY_PROVIDERS" in warnings[0] and "--sandbox" in warnings[0]


def test_no_warning_with_the_sandbox(tmp_path: Path) -> None:
    assert "no payment providers" not in stdio_stderr_until_serving(tmp_path, "--sandbox")


def test_the_start_up_line_names_the_mcp_and_dashboard_urls(tmp_path: Path) -> None:
    with http_server(tmp_path) as server:
        line = next(line for line in server.log().splitlines() if line.startswith("MCP URL: "))
        assert line == f"MCP URL: {server.url}  dashboard: {server.base_url}/dashboard"
        assert httpx.get(f"{server.base_url}/dashboard").status_code == 200
