"""The README's commands, as written there, work: every `mcp-autonomy` line parses, and the ones
that can run here (detect, simulate-scaling, the standalone sandbox and chaos against it, make
run's PORT) run. Editing a command in the README without the code (or the reverse) fails here."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mcp_autonomy.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN_TIMEOUT_S = 120.0
SANDBOX_PORT = 8766  # what the README's `sandbox` line and chaos's default URL say


def readme_commands() -> list[list[str]]:
    """Each command of the README's bash blocks, continuation lines joined and comments dropped."""
    commands: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(shlex.split(line, comments=True))
    return commands


def cli_commands(subcommand: str | None = None) -> list[list[str]]:
    """The README's `mcp-autonomy ...` commands (arguments only), optionally of one subcommand."""
    found = [c[1:] for c in readme_commands() if c and c[0] == "mcp-autonomy"]
    return [c for c in found if subcommand is None or (c and c[0] == subcommand)]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_autonomy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_every_mcp_autonomy_command_in_the_readme_parses() -> None:
    commands = cli_commands()
    subcommands = {c[0] for c in commands}
    assert {"serve", "sandbox", "chaos", "detect", "simulate-scaling"} <= subcommands, subcommands
    parser = build_parser()
    for args in commands:
        if "..." in args:
            continue  # an ellipsis stands for "the same arguments"
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"README command does not parse (exit {exc.code}): mcp-autonomy {shlex.join(args)}")


def test_help_of_each_documented_subcommand(tmp_path: Path) -> None:
    assert run_cli(["--help"], tmp_path).returncode == 0
    for subcommand in sorted({c[0] for c in cli_commands()}):
        result = run_cli([subcommand, "--help"], tmp_path)
        assert result.returncode == 0, (subcommand, result.stderr)
        assert f"mcp-autonomy {subcommand}" in result.stdout


def test_detect_as_written(tmp_path: Path) -> None:
    (command,) = cli_commands("detect")
    rows = ["timestamp,value"] + [
        f"{1_700_000_000 + 10 * i},{100 + (400 if 300 <= i < 320 else 0)}" for i in range(600)
    ]
    (tmp_path / command[1]).write_text("\n".join(rows) + "\n")
    result = run_cli(command, tmp_path)
    assert result.returncode == 0, result.stderr
    output = command[command.index("--output") + 1]
    assert (tmp_path / output).read_text().splitlines()[0] == "timestamp,value,anomaly_score"
    if "--predictions" in command:
        assert isinstance(
            json.loads((tmp_path / command[command.index("--predictions") + 1]).read_text()), list
        )


def test_simulate_scaling_as_written(tmp_path: Path) -> None:
    (command,) = cli_commands("simulate-scaling")
    # Two days at one point a minute: a daily wave between 100 and 1100 tpm.
    rows = ["timestamp,value"] + [
        f"{1_700_000_000 + 60 * i},{600 + 500 * math.sin(2 * math.pi * i / 1440):.1f}"
        for i in range(2 * 1440)
    ]
    (tmp_path / command[1]).write_text("\n".join(rows) + "\n")
    result = run_cli(command, tmp_path)
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), dict)
    output = command[command.index("--output") + 1]
    assert len((tmp_path / output).read_text().splitlines()) > 100


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def readme_sandbox(tmp_path: Path) -> Iterator[str]:
    """The README's standalone sandbox line, run as written."""
    (command,) = cli_commands("sandbox")
    if not port_free(SANDBOX_PORT):
        pytest.skip(f"port {SANDBOX_PORT} (the README's sandbox port) is taken on this machine")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_autonomy", *command],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{SANDBOX_PORT}"
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the sandbox exited"
            try:
                httpx.get(f"{url}/_control/faults", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_chaos_as_written_against_the_readme_sandbox(readme_sandbox: str, tmp_path: Path) -> None:
    commands = cli_commands("chaos")
    assert len(commands) >= 2
    for command in commands:
        assert "--url" not in command or readme_sandbox in command, command
        result = run_cli(command, tmp_path)
        assert result.returncode == 0, (command, result.stdout, result.stderr)


def test_make_run_takes_a_port() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    assert "make run PORT=" in README.read_text()
    dry = subprocess.run(
        ["make", "-n", "run", "PORT=8799"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "--port 8799" in dry.stdout


def test_the_claude_example_has_a_state_directory_of_its_own() -> None:
    example = json.loads((ROOT / "claude_config.example.json").read_text())
    (server,) = example["mcpServers"].values()
    state_dir = server["env"]["MCP_AUTONOMY_STATE_DIR"]
    # `make run` uses the default ./state of the checkout; sharing it makes two engines fight.
    assert Path(state_dir).name not in ("state", ""), state_dir
    args = build_parser().parse_args(server["args"])
    assert args.command == "serve" and args.transport == "stdio"
    assert "MCP_AUTONOMY_STATE_DIR" not in (ROOT / "Makefile").read_text()
