"""`mcp-autonomy sandbox` (run the provider emulators standalone) and `mcp-autonomy chaos`
(inject faults into a running sandbox through its control API)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

import anyio
import httpx

from mcp_autonomy.clock import SystemClock

FAULT_KINDS = (
    "outage",
    "latency",
    "error_rate",
    "accept_then_hang",
    "throttle",
    "flapping",
    "credential_expiry",
    "customer_errors",
)


def add_sandbox_parsers(subparsers: Any) -> None:
    """Add `sandbox` and `chaos` to the CLI."""
    sandbox = subparsers.add_parser("sandbox", help="run the provider sandbox on loopback")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument(
        "--port", type=int, default=8766, help="control API and every provider (0: any free port)"
    )
    sandbox.add_argument(
        "--seed", type=int, default=0, help="seed of every random draw (replays are identical)"
    )
    sandbox.add_argument(
        "--realism",
        choices=("realistic", "ideal"),
        default="realistic",
        help="realistic (default): lookups lag acceptance and some callbacks are lost, repeated or late, "
        "as at the real providers (tune with PUT /_control/realism); ideal: none of that",
    )

    chaos = subparsers.add_parser(
        "chaos",
        help="inject, list or clear faults in a running sandbox",
        description="Examples: chaos --provider mpesa --kind outage --param mode=refused --duration-s 60; "
        "chaos --provider paystack --kind latency --param distribution=fixed --param fixed_ms=2500; "
        "chaos --provider mpesa --kind customer_errors --param rate=0.8 (M-Pesa 1037 for most payers; "
        "--param code=1032, --param synchronous=true for 'Unable to lock subscriber'); "
        "chaos --list; chaos --clear [--provider mpesa]",
    )
    chaos.add_argument("--url", default="http://127.0.0.1:8766", help="the sandbox's base URL")
    chaos.add_argument("--provider", help="the emulated provider, e.g. mpesa")
    chaos.add_argument("--kind", choices=FAULT_KINDS)
    chaos.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="fault parameter")
    chaos.add_argument("--endpoint", action="append", default=[], help="only this endpoint kind (repeatable)")
    chaos.add_argument("--start-s", type=float, default=0.0, help="seconds from now")
    chaos.add_argument("--duration-s", type=float, help="how long it lasts (default: until cleared)")
    chaos.add_argument("--list", action="store_true", help="list scheduled faults")
    chaos.add_argument("--clear", action="store_true", help="clear faults (of --provider, or all)")


def run_chaos(args: argparse.Namespace) -> int:
    """Talk to the sandbox's control API; prints its JSON answer on stdout."""
    base = args.url.rstrip("/") + "/_control/faults"
    params = {"provider": args.provider} if args.provider else {}
    try:
        with httpx.Client(timeout=10) as http:
            if args.list:
                response = http.get(base, params=params)
            elif args.clear:
                response = http.delete(base, params=params)
            else:
                if not args.provider or not args.kind:
                    print("mcp-autonomy chaos: --provider and --kind are required to inject", file=sys.stderr)
                    return 2
                fault_params: dict[str, Any] = {}
                for item in args.param:
                    name, sep, raw = item.partition("=")
                    if not sep:
                        print(f"mcp-autonomy chaos: --param {item!r} is not NAME=VALUE", file=sys.stderr)
                        return 2
                    fault_params[name] = raw  # the sandbox validates and coerces ("2500" -> 2500.0)
                body: dict[str, Any] = {
                    "provider": args.provider,
                    "kind": args.kind,
                    "params": fault_params,
                    "endpoints": args.endpoint,
                    "start_s": args.start_s,
                }
                if args.duration_s is not None:
                    body["end_s"] = args.start_s + args.duration_s
                response = http.post(base, json=body)
    except httpx.TransportError as exc:
        print(f"mcp-autonomy chaos: cannot reach the sandbox at {args.url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0 if response.is_success else 1


def run_sandbox(args: argparse.Namespace) -> int:
    """Serve every emulator until SIGINT/SIGTERM; prints where each provider listens."""
    from mcp_autonomy.sandbox.app import create_sandbox_app
    from mcp_autonomy.sandbox.server import running_sandbox

    async def serve() -> None:
        from mcp_autonomy.sandbox.core import REALISTIC

        realism = REALISTIC if args.realism == "realistic" else None
        app = create_sandbox_app(SystemClock(), seed=args.seed, realism=realism)
        async with running_sandbox(app, args.host, args.port) as address:
            print(f"sandbox control API: {address.base_url}/_control", file=sys.stderr, flush=True)
            for provider in address.provider_ports:
                print(f"  {provider}: {address.url(provider)}", file=sys.stderr, flush=True)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    return

    anyio.run(serve)
    return 0
