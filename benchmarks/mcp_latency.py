"""Latency of the `get_status` tool against a trivial real tool, over stdio and streamable HTTP.

Run: `python benchmarks/mcp_latency.py` (add `--profile` for the in-process breakdown below).

For each transport the real server runs as a subprocess, with its own temporary working
directory and `MCP_AUTONOMY_STATE_DIR`, and one SDK `mcp.Client` in the default `mode="auto"`
talks to it:

- stdio: `python -m mcp_autonomy serve --transport stdio`, through `StdioServerParameters`;
- http: `python -m mcp_autonomy serve --transport http --port 0`, whose `MCP URL: ...` line on
  stderr gives the address (used once `/readyz` answers 200).

The server runs as an operator would try it, with providers: `MCP_AUTONOMY_SANDBOX=true`
registers the sandbox providers, so `get_status` has real lanes, breakers and health to report.
The baseline is a trivial real tool on the same server, `get_maintenance_windows` (a read-only
list, empty here): a full tool call through the transport, the dispatcher, argument validation
and result serialisation, with next to no handler work. (The protocol `ping` is not used: at
2026-07-28 it is removed and answered METHOD_NOT_FOUND, which skips the tool path entirely.)
`WARMUP_CALLS` then `MEASURED_CALLS` pairs of calls run
interleaved (the order flips every pair), so both see the same conditions; each phase also has a
time budget (`WARMUP_BUDGET_S`, `MEASURE_BUDGET_S`) so the whole run stays near two minutes.
Printed per transport:

    mcp_get_status_p50_stdio: X ms (baseline: Y ms, ratio: Z x)

with the baseline the trivial tool's same percentile, likewise p99 and http, then whether
get_status is within `TARGET_RATIO` of it, and a last line `met` / `not met` over both
transports. The exit code is 0 either way (a report, not a gate).

`--profile` then runs the server in-process (`mcp.Client(app.mcp)` against `McpApp`, with the
engine running) and prints where a get_status call spends its CPU time: per stage, measured
without a profiler, then the heaviest functions under cProfile.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

# Plain `python benchmarks/mcp_latency.py` puts benchmarks/ on sys.path, not the project root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import httpx
import pydantic_core
from anyio.abc import ByteReceiveStream, Process
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPDeprecationWarning
from pydantic import BaseModel

# Deprecation warnings of the SDK (ping and friends at 2026-07-28) are not what is measured.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SITE_PACKAGES = Path(anyio.__file__).resolve().parent.parent

WARMUP_CALLS = 200
MEASURED_CALLS = 1000
WARMUP_BUDGET_S = 10.0
MEASURE_BUDGET_S = 40.0
TARGET_RATIO = 1.3
SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_TIMEOUT_S = 10.0
READY_POLL_INTERVAL_S = 0.05
HTTP_OK = 200
STDERR_TAIL_CHARS = 4000
URL_LINE = re.compile(r"MCP URL: (\S+)")
NS_PER_MS = 1_000_000
PROFILE_REPEATS = 5
PROFILE_CALLS_PER_REPEAT = 200
PROFILE_CPROFILE_CALLS = 500
PROFILE_TOP_FUNCTIONS = 25

Call = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class TransportResult:
    transport: str
    protocol_version: str
    noop_answer: str
    get_status_ns: list[int]
    noop_ns: list[int]


def percentile(samples_ns: list[int], fraction: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    ordered = sorted(samples_ns)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1] / NS_PER_MS


def server_env(state_dir: str) -> dict[str, str]:
    """Only what the server needs: settings from the developer's shell would change what is measured."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "MCP_AUTONOMY_STATE_DIR": state_dir,
        "MCP_AUTONOMY_SANDBOX": "true",  # providers registered: get_status has lanes to report
        # The working tree under test, not whatever other copy of the package the interpreter sees.
        "PYTHONPATH": str(PROJECT_ROOT),
    }


def serve_command(transport: str) -> list[str]:
    command = [sys.executable, "-m", "mcp_autonomy", "serve", "--transport", transport]
    return [*command, "--port", "0"] if transport == "http" else command


class StderrTail:
    """The last `STDERR_TAIL_CHARS` of a server's stderr, kept to explain a failure."""

    def __init__(self) -> None:
        self.text = ""

    def add(self, chunk: bytes) -> None:
        self.text = (self.text + chunk.decode(errors="replace"))[-STDERR_TAIL_CHARS:]

    async def drain(self, stream: ByteReceiveStream) -> None:
        """Keep reading, so a full pipe never stalls the server."""
        async for chunk in stream:
            self.add(chunk)


async def wait_ready(readyz_url: str) -> None:
    with anyio.fail_after(SERVER_START_TIMEOUT_S):
        async with httpx.AsyncClient(trust_env=False) as http:
            while True:
                try:
                    if (await http.get(readyz_url)).status_code == HTTP_OK:
                        return
                except httpx.TransportError:
                    pass
                await anyio.sleep(READY_POLL_INTERVAL_S)


@asynccontextmanager
async def http_server(workdir: str, state_dir: str) -> AsyncIterator[str]:
    """Run the HTTP server as a subprocess; yield its MCP URL; terminate it on exit."""
    process: Process = await anyio.open_process(
        serve_command("http"), cwd=workdir, env=server_env(state_dir), stdout=subprocess.DEVNULL
    )
    assert process.stderr is not None
    stderr = StderrTail()
    try:
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(SERVER_START_TIMEOUT_S):
                url = None
                while url is None:
                    try:
                        stderr.add(await process.stderr.receive())
                    except anyio.EndOfStream:
                        raise RuntimeError(
                            f"HTTP server exited before printing its URL:\n{stderr.text}"
                        ) from None
                    if match := URL_LINE.search(stderr.text):
                        url = match.group(1)
            tg.start_soon(stderr.drain, process.stderr)
            # The URL is printed once the socket is bound, before the app is ready to serve it.
            await wait_ready(url.removesuffix("/mcp") + "/readyz")
            yield url
            tg.cancel_scope.cancel()
    except BaseException:
        print(
            f"HTTP server (exit code {process.returncode}) stderr tail:\n{stderr.text}",
            file=sys.stderr,
        )
        raise
    finally:
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(SERVER_STOP_TIMEOUT_S, shield=True):
                await process.wait()
            if process.returncode is None:
                process.kill()
        await process.aclose()


BASELINE_TOOL = "get_maintenance_windows"


async def probe_noop(client: Client) -> str:
    """What the baseline tool answers on this connection, and how many providers get_status sees."""
    baseline = await client.call_tool(BASELINE_TOOL, {})
    if baseline.is_error:
        raise RuntimeError(f"{BASELINE_TOOL} failed: {baseline.content}")
    status = await client.call_tool("get_status", {})
    providers = len((status.structured_content or {}).get("providers", []) or [])
    return f"{BASELINE_TOOL} (a trivial read-only tool); get_status reports {providers} providers"


def calls_for(client: Client) -> tuple[Call, Call]:
    async def get_status() -> None:
        result = await client.call_tool("get_status", {})
        if result.is_error:
            raise RuntimeError(f"get_status failed: {result.content}")

    async def noop() -> None:
        result = await client.call_tool(BASELINE_TOOL, {})
        if result.is_error:
            raise RuntimeError(f"{BASELINE_TOOL} failed: {result.content}")

    return get_status, noop


async def measure_interleaved(get_status: Call, noop: Call) -> tuple[list[int], list[int]]:
    """Warm up, then time pairs of calls, flipping which one goes first every pair.

    Each phase stops early when its time budget is spent, so a slow transport cannot stretch the
    run past a couple of minutes; the report says how many pairs were measured.
    """
    status_ns: list[int] = []
    noop_ns: list[int] = []
    warmup_deadline = time.monotonic() + WARMUP_BUDGET_S
    for _ in range(WARMUP_CALLS):
        await get_status()
        await noop()
        if time.monotonic() > warmup_deadline:
            break
    gc.collect()
    measure_deadline = time.monotonic() + MEASURE_BUDGET_S
    for i in range(MEASURED_CALLS):
        pair = ((get_status, status_ns), (noop, noop_ns))
        for call, samples in pair if i % 2 == 0 else reversed(pair):
            started = time.perf_counter_ns()
            await call()
            samples.append(time.perf_counter_ns() - started)
        if time.monotonic() > measure_deadline:
            break
    return status_ns, noop_ns


async def run_transport(transport: str) -> TransportResult:
    with tempfile.TemporaryDirectory() as workdir, tempfile.TemporaryDirectory() as state_dir:
        if transport == "stdio":
            params = StdioServerParameters(
                command=sys.executable,
                args=serve_command("stdio")[1:],
                env=server_env(state_dir),
                cwd=workdir,
            )
            async with Client(params) as client:
                return await measure_client(transport, client)
        async with http_server(workdir, state_dir) as url, Client(url) as client:
            return await measure_client(transport, client)


async def measure_client(transport: str, client: Client) -> TransportResult:
    noop_answer = await probe_noop(client)
    status_ns, noop_ns = await measure_interleaved(*calls_for(client))
    return TransportResult(transport, client.protocol_version, noop_answer, status_ns, noop_ns)


def report(result: TransportResult) -> bool:
    """Print the figure lines for one transport; True if get_status met the target."""
    met = True
    ratios = []
    for label, fraction in (("p50", 0.50), ("p99", 0.99)):
        status_ms = percentile(result.get_status_ns, fraction)
        noop_ms = percentile(result.noop_ns, fraction)
        ratio = status_ms / noop_ms
        ratios.append(f"{label} {ratio:.2f}x")
        met = met and ratio <= TARGET_RATIO
        print(
            f"mcp_get_status_{label}_{result.transport}: {status_ms:.3f} ms "
            f"(baseline: {noop_ms:.3f} ms, ratio: {ratio:.2f}x)"
        )
    verdict = "met" if met else "NOT met"
    print(
        f"mcp_get_status_target_{result.transport}: {verdict} ({', '.join(ratios)} of the baseline tool; "
        f"target <= {TARGET_RATIO:.2f}x; protocol {result.protocol_version}; "
        f"baseline {result.noop_answer}; {len(result.noop_ns)} calls each)"
    )
    return met


# --- --profile: the in-process breakdown ------------------------------------------------


class BenchNoop(BaseModel):
    """The smallest structured result: what any structured tool call costs, whatever it does."""

    ok: bool


async def cpu_us_per_call(call: Call) -> float:
    """Median over repeats of the process CPU time per call, in microseconds."""
    per_call_us = []
    for _ in range(PROFILE_REPEATS):
        started = time.process_time()
        for _ in range(PROFILE_CALLS_PER_REPEAT):
            await call()
        per_call_us.append((time.process_time() - started) / PROFILE_CALLS_PER_REPEAT * 1e6)
    per_call_us.sort()
    return per_call_us[len(per_call_us) // 2]


async def profile_in_process() -> None:
    from mcp_autonomy.autonomy.system import AutonomousSystem
    from mcp_autonomy.config import load_settings
    from mcp_autonomy.server.mcp import McpApp
    from mcp_autonomy.server.runtime import engine_running

    with tempfile.TemporaryDirectory() as state_dir:
        system = AutonomousSystem(load_settings(state_dir=state_dir, log_level="WARNING"))
        app = McpApp(system)

        # Registered on this in-process app only, as the floor every structured tool call pays.
        @app.mcp.tool(name="bench_noop")
        async def bench_noop() -> BenchNoop:
            return BenchNoop(ok=True)

        async with engine_running(system, app), Client(app.mcp) as client:
            get_status, noop = calls_for(client)
            first = await client.call_tool("get_status", {})
            structured = first.structured_content
            schema = client.session._tool_output_schemas["get_status"]
            assert schema is not None
            validator = client.session._output_schema_validator("get_status", schema)

            async def bench_noop_call() -> None:
                await client.call_tool("bench_noop", {})

            async def validation_only() -> None:
                for _ in validator.iter_errors(structured):
                    raise RuntimeError("get_status result does not match its schema")

            tool = app.mcp._tool_manager.get_tool("get_status")  # the SDK has no public accessor
            assert tool is not None

            async def tool_body() -> None:
                await tool.fn()

            async def tool_body_and_dumps() -> None:
                # What the SDK does with the result: structured content, plus the same as text.
                result = await tool.fn()
                result.model_dump(mode="json", by_alias=True)
                pydantic_core.to_json(result, fallback=str, indent=2)

            stages: list[tuple[str, Call]] = [
                ("get_maintenance_windows call (the baseline tool)", noop),
                ("bench_noop tool call (tiny structured result)", bench_noop_call),
                ("get_status tool call", get_status),
                ("  of which client output-schema validation", validation_only),
                ("  of which the tool function (the engine's work)", tool_body),
                ("  of which the tool function + structured and text dumps", tool_body_and_dumps),
            ]
            for _ in range(WARMUP_CALLS):
                await get_status()
                await bench_noop_call()
            print(
                f"profile: protocol {client.protocol_version}, in-process; get_status result "
                f"{len(first.model_dump_json(by_alias=True))} B as JSON (structured content and its text "
                f"copy), output schema {len(json.dumps(schema))} B"
            )
            for label, call in stages:
                print(f"profile: {label}: {await cpu_us_per_call(call):.0f} us CPU per call")

            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(PROFILE_CPROFILE_CALLS):
                await get_status()
            profiler.disable()
    print_profile(profiler)


def print_profile(profiler: cProfile.Profile) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    # Library and project frames only: the event loop and this file's wrappers add nothing to read.
    stats.sort_stats("cumulative").print_stats(r"site-packages|mcp_autonomy/", PROFILE_TOP_FUNCTIONS)
    print(
        f"profile: cProfile of {PROFILE_CPROFILE_CALLS} get_status calls, "
        f"top {PROFILE_TOP_FUNCTIONS} library and project functions by cumulative time:"
    )
    print(out.getvalue().replace(f"{SITE_PACKAGES}{os.sep}", "").replace(f"{PROJECT_ROOT}{os.sep}", ""))


async def run(args: argparse.Namespace) -> int:
    results = [await run_transport(transport) for transport in ("stdio", "http")]
    met = all([report(result) for result in results])
    if args.profile:
        await profile_in_process()
    print("met" if met else "not met")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="also print the in-process breakdown")
    raise SystemExit(anyio.run(run, parser.parse_args()))


if __name__ == "__main__":
    main()
