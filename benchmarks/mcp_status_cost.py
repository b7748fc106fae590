"""Over MCP, does `get_status` stay as cheap as a small tool once payments flow? (issue 18)

Run: `python benchmarks/mcp_status_cost.py` (`--quick`: 20 s of load; `--full`: three runs).

The real server runs as a subprocess (`python -m mcp_autonomy serve --transport http --port 0
--sandbox`, the bundled emulators in-process, `MCP_AUTONOMY_SANDBOX_REALISM=ideal` so every
payment is answered) with its own state directory; one SDK `mcp.Client` talks to it over
streamable HTTP. The baseline is `get_provider_config` on the same server: a tool with the same
transport, session and dispatch and a small fixed answer. `PAIRS` pairs of calls run
interleaved (the order flips every pair), once on the idle server and once after `LOAD_S`
seconds of payments (`request_payment` from `WORKERS` concurrent clients at about
`PAYMENTS_PER_S` in all, one market of every provider in turn; the load goes on while the
second pairs are measured). Printed: the p50 of each tool in both phases, their ratio, and how
much the ratio grew from idle to loaded, then `met` / `not met` against the issue's targets
(loaded ratio <= 1.3x, growth <= 1.2x). Which providers received payments is printed too (the
router picks a market's primary, so a provider that is no market's first choice sees none).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
import httpx
from mcp import Client

from mcp_autonomy.providers.base import DIAL_CODES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
URL_LINE = re.compile(r"MCP URL: (\S+)")
PAIRS = 300
LOAD_S = 60.0
PAYMENTS_PER_S = 10.0
WORKERS = 5
TARGET_RATIO = 1.3
TARGET_GROWTH = 1.2
SERVER_START_TIMEOUT_S = 60.0


def server_env(state_dir: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "MCP_AUTONOMY_STATE_DIR": state_dir,
        "MCP_AUTONOMY_SANDBOX_REALISM": "ideal",
        "PYTHONPATH": str(PROJECT_ROOT),
    }


@asynccontextmanager
async def http_server(workdir: str, state_dir: str) -> AsyncIterator[str]:
    """The HTTP server as a subprocess; yields its MCP URL once /readyz answers."""
    command = [
        sys.executable,
        "-m",
        "mcp_autonomy",
        "serve",
        "--transport",
        "http",
        "--port",
        "0",
        "--sandbox",
    ]
    process = await anyio.open_process(
        command, cwd=workdir, env=server_env(state_dir), stdout=subprocess.DEVNULL
    )
    assert process.stderr is not None
    text = ""
    try:
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(SERVER_START_TIMEOUT_S):
                while not (match := URL_LINE.search(text)):
                    text += (await process.stderr.receive()).decode(errors="replace")
            url = match.group(1)

            async def drain() -> None:
                async for _ in process.stderr:  # type: ignore[union-attr]
                    pass

            tg.start_soon(drain)
            with anyio.fail_after(SERVER_START_TIMEOUT_S):
                async with httpx.AsyncClient(trust_env=False) as http:
                    while True:
                        try:
                            if (await http.get(url.removesuffix("/mcp") + "/readyz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        await anyio.sleep(0.05)
            yield url
            tg.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(10, shield=True):
                await process.wait()
            if process.returncode is None:
                process.kill()
        await process.aclose()


def structured(result: Any) -> Any:
    if getattr(result, "structured_content", None) is not None:
        return result.structured_content
    if getattr(result, "structuredContent", None) is not None:
        return result.structuredContent
    return json.loads(result.content[0].text)


async def markets(client: Client) -> list[tuple[str, str, str]]:
    """One (provider, currency, country) a payment can use per provider, from list_providers."""
    listed = structured(await client.call_tool("list_providers", {}))
    chosen = []
    for provider in listed["providers"]:
        for country in provider["countries"]:
            currencies = provider["currencies"]
            if country in DIAL_CODES and currencies:
                chosen.append((provider["name"], sorted(currencies)[0], country))
                break
    return chosen


async def measure_pairs(client: Client, pairs: int) -> tuple[float, float]:
    """p50 (ms) of get_status and get_provider_config, interleaved, order flipped every pair."""
    status_s: list[float] = []
    config_s: list[float] = []
    calls = (
        (lambda: client.call_tool("get_status", {}), status_s),
        (lambda: client.call_tool("get_provider_config", {"provider": "mpesa"}), config_s),
    )
    for i in range(pairs):
        for call, sink in calls if i % 2 == 0 else reversed(calls):
            started = time.perf_counter()
            await call()
            sink.append(time.perf_counter() - started)
    return statistics.median(status_s) * 1000, statistics.median(config_s) * 1000


async def load(
    url: str, chosen: list[tuple[str, str, str]], stop: anyio.Event, counts: dict[str, int]
) -> None:
    """`request_payment` at about PAYMENTS_PER_S from WORKERS clients, every market in turn."""
    sequence = itertools.count()
    interval_s = WORKERS / PAYMENTS_PER_S

    async def worker(index: int) -> None:
        async with Client(url) as client:
            next_at = time.monotonic() + index * interval_s / WORKERS
            while not stop.is_set():
                n = next(sequence)
                provider, currency, country = chosen[n % len(chosen)]
                phone = f"+{DIAL_CODES[country]}7{n % 10**8:08d}"
                try:
                    await client.call_tool(
                        "request_payment",
                        {
                            "idempotency_key": f"bench-{os.getpid()}-{n}",
                            "amount_minor": 1_000 + n % 500,
                            "currency": currency,
                            "phone": phone,
                            "country": country,
                        },
                    )
                    counts[provider] = counts.get(provider, 0) + 1
                except Exception as exc:  # a refused payment is still load; count it apart
                    counts["refused"] = counts.get("refused", 0) + 1
                    counts.setdefault("first_refusal", str(exc)[:200])  # type: ignore[arg-type]
                next_at += interval_s
                await anyio.sleep(max(0.0, next_at - time.monotonic()))

    async with anyio.create_task_group() as tg:
        for index in range(WORKERS):
            tg.start_soon(worker, index)


async def one_run(load_s: float, pairs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir, tempfile.TemporaryDirectory() as state_dir:
        async with http_server(workdir, state_dir) as url, Client(url) as client:
            chosen = await markets(client)
            await measure_pairs(client, 20)  # warm
            idle_status, idle_config = await measure_pairs(client, pairs)
            stop = anyio.Event()
            counts: dict[str, int] = {}
            async with anyio.create_task_group() as tg:
                tg.start_soon(load, url, chosen, stop, counts)
                await anyio.sleep(load_s)
                loaded_status, loaded_config = await measure_pairs(client, pairs)
                stop.set()
            status = structured(await client.call_tool("get_status", {}))
            seen = {p["name"]: p["requests_per_min_5m"] for p in status["providers"]}
    return {
        "idle": (idle_status, idle_config),
        "loaded": (loaded_status, loaded_config),
        "payments": counts,
        "provider_requests_5m": seen,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 s of load, 100 pairs")
    parser.add_argument("--full", action="store_true", help="three runs")
    args = parser.parse_args()
    load_s, pairs = (20.0, 100) if args.quick else (LOAD_S, PAIRS)
    runs = [anyio.run(one_run, load_s, pairs) for _ in range(3 if args.full else 1)]

    def spread(values: list[float]) -> str:
        return "" if len(values) < 2 else f" [{min(values):.3g}..{max(values):.3g} over {len(values)} runs]"

    idle_ratios = [r["idle"][0] / r["idle"][1] for r in runs]
    loaded_ratios = [r["loaded"][0] / r["loaded"][1] for r in runs]
    growths = [lo / idle for lo, idle in zip(loaded_ratios, idle_ratios, strict=True)]
    for phase, ratios in (("idle", idle_ratios), ("loaded", loaded_ratios)):
        status_ms = statistics.median(r[phase][0] for r in runs)
        config_ms = statistics.median(r[phase][1] for r in runs)
        print(
            f"mcp_get_status_p50_{phase}: {status_ms:.2f} ms (baseline: {config_ms:.2f} ms get_provider_config, "
            f"ratio: {statistics.median(ratios):.2f}x){spread(ratios)}"
        )
    growth = statistics.median(growths)
    print(
        f"mcp_get_status_ratio_growth_idle_to_loaded: {growth:.2f}x "
        f"(baseline: {statistics.median(idle_ratios):.2f}x idle ratio, ratio: {growth:.2f}x){spread(growths)}"
    )
    last = runs[-1]
    print(f"  payments sent in the last run: {json.dumps(last['payments'])}")
    print(f"  requests per minute per provider (get_status): {json.dumps(last['provider_requests_5m'])}")
    loaded = statistics.median(loaded_ratios)
    ok_ratio = loaded <= TARGET_RATIO
    ok_growth = growth <= TARGET_GROWTH
    print(
        f"  {'ok ' if ok_ratio else 'NOT'} loaded get_status / get_provider_config <= {TARGET_RATIO}x ({loaded:.2f}x)"
    )
    print(f"  {'ok ' if ok_growth else 'NOT'} ratio growth from idle <= {TARGET_GROWTH}x ({growth:.2f}x)")
    print("met" if ok_ratio and ok_growth and not math.isnan(loaded) else "not met")


if __name__ == "__main__":
    main()
