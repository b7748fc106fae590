"""The sandbox app: every provider emulator under its prefix, and a JSON control API.

`create_sandbox_app(clock)` mounts each emulator in `PROVIDERS` at `/<name>` (an adapter's base
URL is `http://host:port/<name>`). Adding a provider is one module with a `ProviderEmulator`
class plus one line in `PROVIDERS`.

Control API (JSON; errors are 400 `{"error": "invalid_request", "detail": [{field, message}]}`):

| route | does |
|---|---|
| `GET /_control/faults?provider=` | scheduled faults (window as `start_s`/`end_s` and `start_at`/`end_at`), and the clock's `now` and `now_s` |
| `POST /_control/faults` | add `{provider, kind, params, endpoints?, start_s?, end_s?, relative?}`; kind `customer_errors` takes `{rate, code?, synchronous?}` with a code from the provider's `customer_codes` |
| `DELETE /_control/faults?provider=` | clear (all, or one provider's) |
| `DELETE /_control/faults/{id}` | remove one |
| `GET /_control/ledger?provider=&msisdn=&reference=&operation=&status=` | accepted transactions |
| `GET/POST/DELETE /_control/customers` | how test numbers behave (`CustomerBehavior`) |
| `GET /_control/callbacks?provider=` | callbacks sent to merchant URLs (with `lost`, `copies`, `delay_s`) |
| `GET /_control/webhooks`, `PUT /_control/webhooks` `{provider, url}` | merchant webhook URLs (a dashboard setting at the real providers); `url: null` removes |
| `GET /_control/realism` | lookup lag and callback loss / duplication / delay, default and per provider |
| `PUT /_control/realism` | set `{provider?, lookup_lag_s, callback_loss, callback_duplicate, callback_delay_min_s, callback_delay_max_s}` (no provider: the default for all) |
| `GET /_control/clock` | the sandbox clock |

Wall-clock times (`now`, `start_at`, `end_at`, `created_at`, ...) are ISO 8601 UTC strings;
`*_s` figures are seconds on the sandbox's `clock.monotonic()` (`now_s` is its reading now, and a
fault's `start_s`/`end_s` its window there). With `relative` (the default) the `start_s`/`end_s`
of a new fault count from now.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import httpx
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from mcp_autonomy.clock import Clock, iso
from mcp_autonomy.sandbox.airtel_money import AirtelMoneyEmulator
from mcp_autonomy.sandbox.core import (
    CallbackOutbox,
    CustomerBehavior,
    CustomerBook,
    ProviderEmulator,
    Realism,
    RealismBook,
    SandboxContext,
    SandboxCredentials,
    Scheduler,
    read_json_object,
)
from mcp_autonomy.sandbox.faults import CustomerErrorsSpec, EndpointKind, Fault, FaultEngine, FaultSpec
from mcp_autonomy.sandbox.flutterwave import FlutterwaveEmulator
from mcp_autonomy.sandbox.intasend import IntaSendEmulator
from mcp_autonomy.sandbox.ledger import Ledger, LedgerOperation, LedgerStatus
from mcp_autonomy.sandbox.mpesa import MpesaEmulator
from mcp_autonomy.sandbox.mtn_momo import MtnMomoEmulator
from mcp_autonomy.sandbox.paystack import PaystackEmulator

EmulatorFactory = Callable[[SandboxContext], ProviderEmulator]

PROVIDERS: dict[str, EmulatorFactory] = {
    "mpesa": MpesaEmulator,
    "paystack": PaystackEmulator,
    "mtn_momo": MtnMomoEmulator,
    "airtel_money": AirtelMoneyEmulator,
    "intasend": IntaSendEmulator,
    "flutterwave": FlutterwaveEmulator,
}
"""Every emulated provider, by mount name. mtn_momo, airtel_money, intasend, flutterwave: one line each."""

_SPEC = TypeAdapter[FaultSpec](FaultSpec)


@dataclass
class Sandbox:
    """The running sandbox's state, for tests and the control API (`sandbox_of(app)`)."""

    context: SandboxContext
    emulators: dict[str, ProviderEmulator]

    @property
    def clock(self) -> Clock:
        """The injected clock every transition and fault runs on."""
        return self.context.clock

    @property
    def faults(self) -> FaultEngine:
        """The fault schedule."""
        return self.context.faults

    @property
    def ledger(self) -> Ledger:
        """Every transaction the emulators accepted."""
        return self.context.ledger

    @property
    def customers(self) -> CustomerBook:
        """How test numbers behave."""
        return self.context.customers

    @property
    def outbox(self) -> CallbackOutbox:
        """Callbacks sent to merchant URLs."""
        return self.context.outbox

    @property
    def providers(self) -> list[str]:
        """Mounted provider names."""
        return list(self.emulators)

    def settle(self) -> int:
        """Run every transition that is due now (the background runner does this too)."""
        return self.context.scheduler.run_due()


def sandbox_of(app: Starlette) -> Sandbox:
    """The `Sandbox` behind an app made by `create_sandbox_app`."""
    sandbox = getattr(app.state, "sandbox", None)
    if not isinstance(sandbox, Sandbox):
        raise TypeError("not a sandbox app (use create_sandbox_app)")
    return sandbox


class _FaultRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str
    kind: Literal[
        "outage",
        "latency",
        "error_rate",
        "accept_then_hang",
        "throttle",
        "flapping",
        "credential_expiry",
        "customer_errors",
    ]
    params: dict[str, Any] = Field(default_factory=dict)
    endpoints: list[EndpointKind] = Field(default_factory=list)
    start_s: float = 0.0
    end_s: float | None = None
    relative: bool = True


def _invalid(*problems: tuple[str, str]) -> JSONResponse:
    detail = [{"field": field, "message": message} for field, message in problems]
    return JSONResponse({"error": "invalid_request", "detail": detail}, status_code=400)


def _from_validation(exc: ValidationError, prefix: str = "") -> JSONResponse:
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        problems.append((".".join([prefix, *loc]) if prefix else ".".join(loc) or "body", error["msg"]))
    return _invalid(*problems)


def _msisdn_param(value: str | None) -> str | None:
    # A raw "+" in a query string decodes to a space; accept "254..." and " 254..." too.
    if value is None:
        return None
    value = value.strip()
    return value if value.startswith("+") else f"+{value}"


def create_sandbox_app(
    clock: Clock,
    *,
    seed: int = 0,
    credentials: SandboxCredentials | None = None,
    providers: Iterable[str] | None = None,
    realism: Realism | None = None,
) -> Starlette:
    """A Starlette app emulating the providers (all of `PROVIDERS` unless `providers` names some).

    Randomness (fault draws, generated ids and tokens, callback loss) comes from `seed`, time
    from `clock`: the same scenario on a `ManualClock` replays identically. `realism` is every
    provider's default (`Realism()`, an ideal provider, unless given; see `REALISTIC`).
    """
    names = list(PROVIDERS) if providers is None else list(providers)
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown sandbox provider(s) {unknown}; known: {', '.join(PROVIDERS)}")
    context = SandboxContext(
        clock=clock,
        faults=FaultEngine(clock, seed=seed),
        ledger=Ledger(clock),
        customers=CustomerBook(),
        scheduler=Scheduler(clock),
        outbox=CallbackOutbox(clock, RealismBook(realism), seed=seed),
        credentials=credentials or SandboxCredentials(),
        seed=seed,
    )
    emulators = {name: PROVIDERS[name](context) for name in names}
    sandbox = Sandbox(context, emulators)

    def known_provider(name: str) -> tuple[str, str] | None:
        if name in emulators:
            return None
        return ("provider", f"unknown provider {name!r}; known: {', '.join(emulators)}")

    async def list_faults(request: Request) -> Response:
        provider = request.query_params.get("provider")
        faults = sandbox.faults.faults(provider)
        return JSONResponse(
            {
                "now": iso(clock.now()),
                "now_s": clock.monotonic(),
                "faults": [sandbox.faults.describe(f) for f in faults],
            }
        )

    async def add_fault(request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return _invalid(("body", "expected a JSON object"))
        try:
            wanted = _FaultRequest.model_validate(body)
        except ValidationError as exc:
            return _from_validation(exc)
        if problem := known_provider(wanted.provider):
            return _invalid(problem)
        try:
            spec = _SPEC.validate_python({**wanted.params, "kind": wanted.kind})
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                loc = [str(p) for p in error["loc"][1:]]  # drop the discriminator tag
                problems.append((".".join(["params", *loc]), error["msg"]))
            return _invalid(*problems)
        if isinstance(spec, CustomerErrorsSpec) and spec.code is not None:
            # A storm of a code the provider never sends would test nothing real.
            codes = emulators[wanted.provider].customer_codes
            if spec.code not in codes:
                return _invalid(
                    ("params.code", f"not a {wanted.provider} customer code; one of {', '.join(codes)}")
                )
        try:
            fault: Fault = sandbox.faults.add(
                wanted.provider,
                spec,
                endpoints=wanted.endpoints,
                start_s=wanted.start_s,
                end_s=wanted.end_s,
                relative=wanted.relative,
            )
        except ValueError as exc:
            field = "endpoints" if "endpoints" in str(exc) else "end_s" if "end_s" in str(exc) else "params"
            return _invalid((field, str(exc)))
        return JSONResponse({"fault": sandbox.faults.describe(fault)}, status_code=201)

    async def clear_faults(request: Request) -> Response:
        provider = request.query_params.get("provider")
        if provider is not None and (problem := known_provider(provider)):
            return _invalid(problem)
        return JSONResponse({"cleared": sandbox.faults.clear(provider)})

    async def remove_fault(request: Request) -> Response:
        fault_id = request.path_params["fault_id"]
        if not sandbox.faults.remove(fault_id):
            return JSONResponse({"error": "not_found", "detail": f"no fault {fault_id!r}"}, status_code=404)
        return JSONResponse({"removed": fault_id})

    async def ledger(request: Request) -> Response:
        params = request.query_params
        sandbox.settle()
        problems = []
        operation, status = params.get("operation"), params.get("status")
        if operation is not None and operation not in LedgerOperation.__members__.values():
            problems.append(("operation", f"one of {', '.join(o.value for o in LedgerOperation)}"))
        if status is not None and status not in LedgerStatus.__members__.values():
            problems.append(("status", f"one of {', '.join(s.value for s in LedgerStatus)}"))
        if problems:
            return _invalid(*problems)
        entries = sandbox.ledger.entries(
            provider=params.get("provider"),
            msisdn=_msisdn_param(params.get("msisdn")),
            reference=params.get("reference"),
            operation=operation,
            status=status,
        )
        return JSONResponse({"count": len(entries), "entries": [e.to_json() for e in entries]})

    async def list_customers(request: Request) -> Response:
        return JSONResponse({"customers": [c.model_dump() for c in sandbox.customers.all()]})

    async def set_customer(request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return _invalid(("body", "expected a JSON object"))
        try:
            behavior = CustomerBehavior.model_validate(body)
        except ValidationError as exc:
            return _from_validation(exc)
        if behavior.provider is not None and (problem := known_provider(behavior.provider)):
            return _invalid(problem)
        sandbox.customers.set(behavior)
        return JSONResponse({"customer": behavior.model_dump()}, status_code=201)

    async def clear_customers(request: Request) -> Response:
        return JSONResponse({"cleared": sandbox.customers.clear()})

    async def callbacks(request: Request) -> Response:
        records = sandbox.outbox.records(request.query_params.get("provider"))
        return JSONResponse({"count": len(records), "callbacks": [r.to_json() for r in records]})

    async def get_webhooks(request: Request) -> Response:
        return JSONResponse({"webhooks": dict(sandbox.context.webhooks)})

    async def set_webhook(request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return _invalid(("body", "expected a JSON object"))
        provider, url = body.get("provider"), body.get("url")
        if not isinstance(provider, str) or known_provider(provider) is not None:
            return _invalid(("provider", f"one of {', '.join(emulators)}"))
        if url is None:
            sandbox.context.webhooks.pop(provider, None)
        elif isinstance(url, str) and url.startswith(("http://", "https://")) and len(url) <= 2000:
            sandbox.context.webhooks[provider] = url
        else:
            return _invalid(("url", "an http(s) URL of at most 2000 characters, or null to remove"))
        return JSONResponse({"webhooks": dict(sandbox.context.webhooks)})

    async def get_realism(request: Request) -> Response:
        return JSONResponse(sandbox.outbox.realism.to_json())

    async def set_realism(request: Request) -> Response:
        body = await read_json_object(request)
        if body is None:
            return _invalid(("body", "expected a JSON object"))
        provider = body.pop("provider", None)
        if provider is not None and (not isinstance(provider, str) or known_provider(provider) is not None):
            return _invalid(("provider", f"one of {', '.join(emulators)}"))
        try:
            realism = Realism.model_validate(body)
        except ValidationError as exc:
            return _from_validation(exc)
        sandbox.outbox.realism.set(realism, provider)
        return JSONResponse(sandbox.outbox.realism.to_json())

    async def clock_state(request: Request) -> Response:
        return JSONResponse({"now": iso(clock.now()), "monotonic_s": clock.monotonic()})

    control = [
        Route("/faults", list_faults, methods=["GET"]),
        Route("/faults", add_fault, methods=["POST"]),
        Route("/faults", clear_faults, methods=["DELETE"]),
        Route("/faults/{fault_id}", remove_fault, methods=["DELETE"]),
        Route("/ledger", ledger, methods=["GET"]),
        Route("/customers", list_customers, methods=["GET"]),
        Route("/customers", set_customer, methods=["POST"]),
        Route("/customers", clear_customers, methods=["DELETE"]),
        Route("/callbacks", callbacks, methods=["GET"]),
        Route("/webhooks", get_webhooks, methods=["GET"]),
        Route("/webhooks", set_webhook, methods=["PUT"]),
        Route("/realism", get_realism, methods=["GET"]),
        Route("/realism", set_realism, methods=["PUT"]),
        Route("/clock", clock_state, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # trust_env=False: callbacks go to loopback URLs only, never through a proxy.
        async with httpx.AsyncClient(trust_env=False) as client, anyio.create_task_group() as tg:
            sandbox.outbox.attach(tg, client)
            tg.start_soon(sandbox.context.scheduler.run)
            try:
                yield
            finally:
                sandbox.outbox.detach()
                tg.cancel_scope.cancel()

    routes = [Mount("/_control", routes=control)]
    routes += [Mount(f"/{name}", routes=emulator.routes()) for name, emulator in emulators.items()]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sandbox = sandbox
    return app
