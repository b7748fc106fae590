"""What every provider emulator shares: customers, the clock-driven scheduler, callbacks,
the fault pipeline around each route, and the emulator protocol.

A provider module implements `ProviderEmulator` (its routes and its own rejection shapes) and
wraps each route body in `SandboxContext.guarded()`, which serves the fault engine's verdict:
latency, refusal, throttling, errors, and the accept-then-hang of an ambiguous outcome.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import anyio
import httpx
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from mcp_autonomy.clock import Clock, iso
from mcp_autonomy.providers.base import E164_RE
from mcp_autonomy.sandbox.faults import EndpointKind, FaultEngine, Rejection
from mcp_autonomy.sandbox.ledger import Ledger

logger = logging.getLogger(__name__)

DEFAULT_CUSTOMER_DELAY_S = 5.0
"""How long an unconfigured test customer takes to approve a prompt."""
BUSY_RESULT_DELAY_S = 1.0
"""How soon a provider that accepts a prompt for a busy (locked) subscriber reports its failure:
the network refuses the lock at once, no customer is involved."""
CALLBACK_TIMEOUT_S = 5.0
MAX_CALLBACK_RECORDS = 10_000


class SandboxAbort(Exception):
    """Raised mid-response to drop the connection (the `reset` fault mode)."""


# --- customers ----------------------------------------------------------------------------


CustomerAction = Literal["accept", "decline", "ignore", "busy"]


class CustomerBehavior(BaseModel):
    """How a test phone number answers prompts and receives payouts.

    Actions: `accept` after `delay_s`; `decline` after `delay_s` with `decline_code`; `ignore`
    the prompt (the provider's no-answer result at its own timeout); `busy`: the subscriber is
    locked in another transaction, so the provider refuses the prompt the way it refuses a busy
    subscriber (M-Pesa synchronously, the others with their customer-declined result; each
    module's docstring says which). `decline_code` is the provider's own failure code (M-Pesa
    ResultCode such as "1032" or 1032, Paystack gateway response such as "Declined"); each
    emulator has a default and lists its customer codes in `customer_codes`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    msisdn: str
    provider: str | None = Field(None, description="only for this provider; default every provider")
    action: CustomerAction = "accept"
    decline_code: str | None = Field(None, max_length=40)
    delay_s: float = Field(DEFAULT_CUSTOMER_DELAY_S, ge=0.0, le=86_400.0)
    payout_result_code: str | None = Field(None, max_length=40, description="None: payouts succeed")

    @field_validator("msisdn")
    @classmethod
    def _e164(cls, value: str) -> str:
        if not E164_RE.match(value):
            raise ValueError("msisdn must be E.164, like +254712345678")
        return value

    @field_validator("decline_code", "payout_result_code", mode="before")
    @classmethod
    def _code_text(cls, value: Any) -> Any:
        # M-Pesa ResultCodes are integers on the wire (1032, 2001): accept them as they are
        # written there, and keep every code as the text the emulators compare.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


class CustomerBook:
    """Behaviours per phone number; a number nobody configured accepts after a short delay."""

    def __init__(self) -> None:
        self._behaviors: dict[tuple[str | None, str], CustomerBehavior] = {}

    def set(self, behavior: CustomerBehavior) -> None:
        """Configure (or replace) one number's behaviour."""
        self._behaviors[(behavior.provider, behavior.msisdn)] = behavior

    def get(self, provider: str, msisdn: str) -> CustomerBehavior:
        """The behaviour for this provider and number: specific, then general, then the default."""
        return (
            self._behaviors.get((provider, msisdn))
            or self._behaviors.get((None, msisdn))
            or CustomerBehavior(msisdn=msisdn)
        )

    def all(self) -> list[CustomerBehavior]:
        """Every configured behaviour."""
        return list(self._behaviors.values())

    def clear(self) -> int:
        """Forget every behaviour; returns how many."""
        count = len(self._behaviors)
        self._behaviors.clear()
        return count


# --- scheduler ----------------------------------------------------------------------------


@dataclass(order=True)
class _Job:
    due_s: float
    seq: int
    action: Callable[[], None] = field(compare=False)


class Scheduler:
    """Clock-driven state transitions (a customer approving, a payout completing).

    Due jobs run on every request (so answers are right even without the background runner) and
    from `run()`, which sleeps on the clock until the next job and so fires callbacks on time.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._jobs: list[_Job] = []
        self._seq = itertools.count()
        self._changed: anyio.Event | None = None  # created lazily: built outside an event loop

    def after(self, delay_s: float, action: Callable[[], None]) -> None:
        """Run `action` once `delay_s` of clock time has passed."""
        heapq.heappush(self._jobs, _Job(self._clock.monotonic() + delay_s, next(self._seq), action))
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def run_due(self) -> int:
        """Run every job that is due, in due order; returns how many ran."""
        now = self._clock.monotonic()
        ran = 0
        while self._jobs and self._jobs[0].due_s <= now:
            job = heapq.heappop(self._jobs)
            try:
                job.action()
            except Exception:  # one broken transition must not stop the others
                logger.exception("sandbox job failed")
            ran += 1
        return ran

    @property
    def pending(self) -> int:
        """Jobs not yet run."""
        return len(self._jobs)

    async def run(self) -> None:
        """Run jobs as they fall due, forever."""
        while True:
            if self._changed is None:
                self._changed = anyio.Event()
            changed = self._changed  # taken before reading the heap: no missed wake-up
            self.run_due()
            delay = self._jobs[0].due_s - self._clock.monotonic() if self._jobs else None
            await _sleep_until_changed(self._clock, changed, delay)


async def _sleep_until_changed(clock: Clock, changed: anyio.Event, delay_s: float | None) -> None:
    """Return when `changed` is set or `delay_s` of clock time passed (never, if None)."""
    async with anyio.create_task_group() as tg:

        async def wake_on_change() -> None:
            await changed.wait()
            tg.cancel_scope.cancel()

        tg.start_soon(wake_on_change)
        if delay_s is not None:
            await clock.sleep(max(0.0, delay_s))
            tg.cancel_scope.cancel()


# --- realism: what makes real providers hard ----------------------------------------------


class Realism(BaseModel):
    """How one emulated provider departs from an ideal one, the way real providers do.

    Real lookups are eventually consistent (MoMo answers 404 shortly after a 202, M-Pesa
    `400.002.02` for a CheckoutRequestID it just issued, Flutterwave "No transaction was found"),
    and real callbacks are lost, late, repeated and out of order. `Realism()` is the ideal
    provider unit tests start from; `REALISTIC` is what `serve --sandbox` and the standalone
    sandbox run by default.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    lookup_lag_s: float = Field(
        0.0, ge=0.0, le=3600.0, description="status lookups say 'not found' this long after acceptance"
    )
    callback_loss: float = Field(0.0, ge=0.0, le=1.0, description="share of callbacks never delivered")
    callback_duplicate: float = Field(0.0, ge=0.0, le=1.0, description="share of callbacks delivered twice")
    callback_delay_min_s: float = Field(0.0, ge=0.0, le=3600.0)
    callback_delay_max_s: float = Field(
        0.0, ge=0.0, le=3600.0, description="uniform delay: a spread reorders callbacks"
    )

    @field_validator("callback_delay_max_s")
    @classmethod
    def _ordered(cls, value: float, info: Any) -> float:
        low = info.data.get("callback_delay_min_s", 0.0)
        if value < low:
            raise ValueError(f"callback_delay_max_s must be >= callback_delay_min_s ({low})")
        return value


REALISTIC = Realism(
    lookup_lag_s=2.0,
    callback_loss=0.02,
    callback_duplicate=0.02,
    callback_delay_min_s=0.2,
    callback_delay_max_s=5.0,
)
"""The default of the sandbox people run: a few lost, repeated and late callbacks, and lookups
that lag acceptance by two seconds."""


class RealismBook:
    """Realism per provider (one default for providers not set)."""

    def __init__(self, default: Realism | None = None) -> None:
        self.default = default or Realism()
        self._by_provider: dict[str, Realism] = {}

    def get(self, provider: str) -> Realism:
        """The realism in force for `provider`."""
        return self._by_provider.get(provider, self.default)

    def set(self, realism: Realism, provider: str | None = None) -> None:
        """Set one provider's realism, or (no provider) the default and clear every override."""
        if provider is None:
            self.default = realism
            self._by_provider.clear()
        else:
            self._by_provider[provider] = realism

    def to_json(self) -> dict[str, Any]:
        """The default and the per-provider overrides."""
        return {
            "default": self.default.model_dump(),
            "providers": {name: r.model_dump() for name, r in sorted(self._by_provider.items())},
        }


# --- callbacks ----------------------------------------------------------------------------


@dataclass
class CallbackRecord:
    """One callback the sandbox sent (or would have sent) to a merchant URL."""

    callback_id: int
    provider: str
    url: str
    body: dict[str, Any]
    created_at: float
    delivered: bool | None = None  # None: not attempted (non-loopback URL or no runner)
    http_status: int | None = None
    error: str | None = None
    lost: bool = False  # dropped by the provider's realism: never sent
    copies: int = 1  # 2 when the realism duplicated it
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly view for the control API."""
        return {
            "callback_id": self.callback_id,
            "provider": self.provider,
            "url": self.url,
            "body": self.body,
            "created_at": iso(self.created_at),
            "delivered": self.delivered,
            "http_status": self.http_status,
            "error": self.error,
            "lost": self.lost,
            "copies": self.copies,
            "delay_s": round(self.delay_s, 3),
        }


def is_loopback_url(url: str) -> bool:
    """True for http(s) URLs on localhost or a loopback address (the only ones the sandbox calls)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https"):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CallbackOutbox:
    """Callbacks to merchant URLs: recorded always, delivered by POST to loopback URLs only.

    The sandbox never calls the internet: a test's fake `https://example.com/cb` is recorded
    (see `GET /_control/callbacks`) but not sent.
    """

    def __init__(self, clock: Clock, realism: RealismBook | None = None, *, seed: int = 0) -> None:
        self._clock = clock
        self.realism = realism or RealismBook()
        self._rng = random.Random(f"callbacks:{seed}")
        self._records: list[CallbackRecord] = []
        self._ids = itertools.count(1)
        self._task_group: TaskGroup | None = None
        self._client: httpx.AsyncClient | None = None

    def attach(self, task_group: TaskGroup, client: httpx.AsyncClient) -> None:
        """Start delivering (called by the app's lifespan)."""
        self._task_group, self._client = task_group, client

    def detach(self) -> None:
        """Stop delivering."""
        self._task_group = self._client = None

    def send(
        self,
        provider: str,
        url: str,
        body: dict[str, Any],
        *,
        headers_for: Callable[[bytes], dict[str, str]] | None = None,
    ) -> CallbackRecord:
        """Record a callback and, if possible, deliver it in the background.

        The body is serialised once; `headers_for(raw)` adds headers computed from those exact
        bytes (Paystack's HMAC signature). The provider's `Realism` decides loss, duplication
        and delay (a spread of delays delivers callbacks out of order).
        """
        raw = json.dumps(body, separators=(",", ":")).encode()
        realism = self.realism.get(provider)
        record = CallbackRecord(
            next(self._ids),
            provider,
            url,
            body,
            self._clock.now(),
            headers={"Content-Type": "application/json", **(headers_for(raw) if headers_for else {})},
            raw=raw,
        )
        record.lost = self._rng.random() < realism.callback_loss
        record.copies = 2 if self._rng.random() < realism.callback_duplicate else 1
        record.delay_s = self._rng.uniform(realism.callback_delay_min_s, realism.callback_delay_max_s)
        self._records.append(record)
        del self._records[:-MAX_CALLBACK_RECORDS]
        if record.lost:
            record.delivered, record.error = False, "lost (sandbox realism)"
        elif self._task_group is not None and self._client is not None and is_loopback_url(url):
            self._task_group.start_soon(self._deliver, self._client, record)
        return record

    async def _deliver(self, client: httpx.AsyncClient, record: CallbackRecord) -> None:
        if record.delay_s > 0:
            await self._clock.sleep(record.delay_s)
        for copy in range(record.copies):
            if copy:  # a repeat arrives a little later, as a provider's retry would
                await self._clock.sleep(self._rng.uniform(0.05, 1.0))
            try:
                response = await client.post(
                    record.url, content=record.raw, headers=record.headers, timeout=CALLBACK_TIMEOUT_S
                )
            except httpx.HTTPError as exc:
                record.delivered, record.error = False, f"{type(exc).__name__}: {exc}"
                continue
            record.http_status = response.status_code
            record.delivered = response.status_code < 400

    def records(self, provider: str | None = None) -> list[CallbackRecord]:
        """Callbacks so far, oldest first."""
        return [r for r in self._records if provider is None or r.provider == provider]


# --- the emulator protocol ------------------------------------------------------------------


class ProviderEmulator(Protocol):
    """One emulated provider: its routes, how it answers refusals in its own shape, and the
    final-result codes that are the customer's (for `CustomerBehavior` and `customer_errors`)."""

    name: str

    @property
    def customer_codes(self) -> Mapping[str, str]:
        """The provider's customer failure codes of a prompt's final result -> what each means."""
        ...

    @property
    def no_answer_code(self) -> str:
        """The code of a prompt nobody answered (M-Pesa 1037): the default of a customer storm."""
        ...

    def routes(self) -> list[BaseRoute]:
        """Starlette routes, relative to the provider's mount prefix (`/<name>`)."""
        ...

    def rejection_response(self, rejection: Rejection, endpoint: EndpointKind) -> Response:
        """The provider's own answer for an outage (503), a throttle, or a server error."""
        ...


class SandboxCredentials(BaseModel):
    """Credentials each emulator accepts, by provider name (each module defines its own model).

    `SandboxCredentials(mpesa=MpesaCredentials(consumer_key="..."))`; a provider not named uses
    its module's defaults.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    def get(self, provider: str) -> BaseModel | None:
        """The credentials given for `provider`, if any."""
        value = (self.model_extra or {}).get(provider)
        return value if isinstance(value, BaseModel) else None


@dataclass
class SandboxContext:
    """Everything an emulator needs: clock, faults, ledger, customers, scheduler, callbacks."""

    clock: Clock
    faults: FaultEngine
    ledger: Ledger
    customers: CustomerBook
    scheduler: Scheduler
    outbox: CallbackOutbox
    credentials: SandboxCredentials
    seed: int = 0
    webhooks: dict[str, str] = field(default_factory=dict)
    """Merchant webhook URL per provider, as set on the provider's dashboard (Paystack,
    Flutterwave, IntaSend, Airtel); M-Pesa and MoMo take a callback URL per request instead."""

    def customer_for(self, provider: str, msisdn: str, *, no_answer_code: str) -> CustomerBehavior:
        """How this customer answers the prompt being created now, storms included.

        Call it once per prompt, when the provider accepts it: an active `customer_errors` fault
        draws here whether this payment is one of its victims. A victim behaves as a busy
        customer (`synchronous`), as one who never answers (the provider's `no_answer_code`), or
        as one who declines with the storm's code, after their usual delay. A decline whose code
        is the no-answer code is an ignored prompt: it ends at the provider's own timeout.
        """
        behavior = self.customers.get(provider, msisdn)
        storm = self.faults.customer_error(provider)
        if storm is not None:
            if storm.synchronous:
                return behavior.model_copy(update={"action": "busy"})
            behavior = behavior.model_copy(
                update={"action": "decline", "decline_code": storm.code or no_answer_code}
            )
        if behavior.action == "decline" and behavior.decline_code == no_answer_code:
            return behavior.model_copy(update={"action": "ignore"})
        return behavior

    def visible(self, provider: str, accepted_at_s: float) -> bool:
        """Whether a status lookup can see a transaction accepted at `accepted_at_s`
        (`clock.monotonic()`): not before the provider's `Realism.lookup_lag_s` has passed."""
        lag_s = self.outbox.realism.get(provider).lookup_lag_s
        return self.clock.monotonic() - accepted_at_s >= lag_s

    async def guarded(
        self,
        emulator: ProviderEmulator,
        request: Request,
        endpoint: EndpointKind,
        handler: Callable[[], Awaitable[Response]],
        *,
        also: tuple[EndpointKind, ...] = (),
    ) -> Response:
        """Run one route body inside the fault pipeline.

        Order: due transitions, injected latency, refusals (outage, flapping, throttle, errors
        before processing), the handler itself, then accept-then-hang and 5xx-after-processing
        for requests the handler accepted.
        """
        self.scheduler.run_due()
        verdict = await self.faults.before_request(emulator.name, endpoint, *also)
        if verdict.rejection is not None:
            if verdict.rejection.kind == "reset":
                return reset_response()
            return emulator.rejection_response(verdict.rejection, endpoint)
        self.scheduler.run_due()
        response = await handler()
        accepted = response.status_code < 400
        if verdict.hang is not None and accepted:
            await hang_until_disconnect(request, self.clock, verdict.hang.hang_s)
        if verdict.error_after_processing is not None and accepted:
            return emulator.rejection_response(verdict.error_after_processing, endpoint)
        return response


async def hang_until_disconnect(request: Request, clock: Clock, hang_s: float) -> None:
    """Withhold the answer until the client hangs up or `hang_s` of clock time pass."""
    async with anyio.create_task_group() as tg:

        async def watch_disconnect() -> None:
            while True:
                message = await request.receive()
                if message.get("type") == "http.disconnect":
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch_disconnect)
        await clock.sleep(hang_s)
        tg.cancel_scope.cancel()


def reset_response() -> Response:
    """A response that starts, sends part of its body, then drops the connection."""

    async def body() -> AsyncIterator[bytes]:
        yield b'{"partial": '
        raise SandboxAbort("connection reset by the sandbox (fault mode 'reset')")

    return StreamingResponse(body(), media_type="application/json")


async def read_json_object(request: Request) -> dict[str, Any] | None:
    """The request body as a JSON object, or None when it is not one."""
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def json_response(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON answer."""
    return JSONResponse(body, status_code=status_code, headers=headers)
