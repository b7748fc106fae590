"""Fault injection, scheduled on the injected clock so a scenario replays identically.

A `Fault` targets one provider (and optionally some endpoint kinds) from `start_s` to `end_s`
on `clock.monotonic()`. Kinds:

- `outage`: the provider is down. Mode `refused` closes the provider's *gated* port (see
  `sandbox.server`): clients get a genuine ECONNREFUSED, i.e. `httpx.ConnectError`, which is
  the only honest way to say "certainly not processed" - an ASGI app cannot refuse a TCP
  connection itself. A request that still reaches the app (through the ungated port) is answered
  503 instead. Mode `503` answers the provider's unavailable shape; mode `reset` starts a
  response and drops the connection mid-body (the client sees a protocol error).
- `latency`: every matching request waits first, on `clock.sleep()`: fixed, lognormal (given
  median and p99) or a linear ramp from `from_ms` to `to_ms`.
- `error_rate`: a share of requests answered with the provider's own 5xx shape, either before
  processing or - `after_processing` - after the payment was recorded (an ambiguous 5xx).
- `accept_then_hang`: the payment is processed and recorded, then the response is withheld until
  the client gives up (or `hang_s` of clock time pass): the ambiguous timeout.
- `throttle`: more than `max_per_s` matching requests within one clock second get the
  provider's rate-limit answer.
- `flapping`: down for `down_fraction` of every `period_s`, starting down; modes as `outage`.
- `credential_expiry`: credentials issued before a cutoff stop working (each provider module
  says what that means for it: Daraja tokens, Paystack keys).
- `customer_errors`: a storm of customer failures (M-Pesa 1037 for most payers): a `rate` share
  of the prompts created while it lasts fail on the customer's side, with the provider's
  customer `code` (default: its no-answer code) or, `synchronous`, refused as a busy subscriber.
  The provider itself answers normally throughout: nothing here is a provider fault, and a
  breaker that trips on it is wrong (`SandboxContext.customer_for` applies it).

The kinds split in two around the money: `outage` (503 or refused), `throttle` and `error_rate`
before processing refuse a request that was never processed (the ledger has nothing); the
`after_processing` 5xx and `accept_then_hang` answer a request that was (the ledger has it).

All randomness comes from one seeded `random.Random` per fault (seeded from the engine seed and
the fault's id), so a fault's draws do not depend on other providers' traffic.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcp_autonomy.clock import Clock
from mcp_autonomy.timefmt import iso_or_none

Z_99 = 2.3263478740408408
"""The standard normal 99th percentile: sigma = ln(p99 / median) / Z_99 for a lognormal."""
MAX_LATENCY_MS = 600_000.0
"""No injected delay exceeds ten minutes, whatever a distribution's tail draws."""
THROTTLE_WINDOW_S = 1.0


class EndpointKind(StrEnum):
    """What a sandbox route does, so a fault can target part of a provider."""

    AUTH = "auth"
    COLLECT = "collect"
    STATUS = "status"
    PAYOUT = "payout"
    REFUND = "refund"
    PROBE = "probe"


OutageMode = Literal["refused", "503", "reset"]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OutageSpec(_Spec):
    """The provider is down."""

    kind: Literal["outage"] = "outage"
    mode: OutageMode = "refused"


class LatencySpec(_Spec):
    """Requests wait before being handled."""

    kind: Literal["latency"] = "latency"
    distribution: Literal["fixed", "lognormal", "ramp"] = "fixed"
    fixed_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS)
    median_ms: float | None = Field(None, gt=0, le=MAX_LATENCY_MS)
    p99_ms: float | None = Field(None, gt=0, le=MAX_LATENCY_MS)
    from_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS)
    to_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS)
    ramp_s: float | None = Field(None, gt=0, description="ramp length; default: the fault's duration")

    @model_validator(mode="after")
    def _complete(self) -> LatencySpec:
        if self.distribution == "fixed" and self.fixed_ms is None:
            raise ValueError("fixed latency needs fixed_ms")
        if self.distribution == "lognormal":
            if self.median_ms is None or self.p99_ms is None:
                raise ValueError("lognormal latency needs median_ms and p99_ms")
            if self.p99_ms <= self.median_ms:
                raise ValueError("p99_ms must be greater than median_ms")
        if self.distribution == "ramp" and (self.from_ms is None or self.to_ms is None):
            raise ValueError("ramp latency needs from_ms and to_ms")
        return self


class ErrorRateSpec(_Spec):
    """A share of requests fail with the provider's 5xx shape."""

    kind: Literal["error_rate"] = "error_rate"
    rate: float = Field(ge=0.0, le=1.0)
    http_status: int = Field(500, ge=500, le=599)
    after_processing: bool = False


class AcceptThenHangSpec(_Spec):
    """Process the payment, then withhold the answer."""

    kind: Literal["accept_then_hang"] = "accept_then_hang"
    rate: float = Field(1.0, ge=0.0, le=1.0)
    hang_s: float = Field(3600.0, gt=0, description="clock seconds before the late answer is sent")


class ThrottleSpec(_Spec):
    """Rate-limit answers beyond `max_per_s` requests per clock second."""

    kind: Literal["throttle"] = "throttle"
    max_per_s: float = Field(gt=0)
    retry_after_s: float | None = Field(None, ge=0)
    http_status: int | None = Field(None, ge=400, le=599, description="default: the provider's own")


class FlappingSpec(_Spec):
    """Alternately down and up."""

    kind: Literal["flapping"] = "flapping"
    period_s: float = Field(gt=0)
    down_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    mode: OutageMode = "503"


class CredentialExpirySpec(_Spec):
    """Credentials issued before `issued_before_s` (default: the fault's start) stop working.

    "Before" is strict: on a manual clock, advance time between issuing and revoking, or a
    token minted at the very instant the fault starts stays valid.
    """

    kind: Literal["credential_expiry"] = "credential_expiry"
    issued_before_s: float | None = Field(None, description="absolute clock.monotonic() time")
    replacement_secret: str | None = Field(
        None, description="static-key providers: the new secret that stays valid (a rotation)"
    )


class CustomerErrorsSpec(_Spec):
    """A storm of customer failures: `rate` of the prompts fail on the customer's side.

    `code` is the provider's own customer code (M-Pesa "1", "1032", "2001"...; see each
    emulator's `customer_codes`); None means its no-answer code (M-Pesa 1037). `synchronous`
    refuses the request as the provider refuses a busy subscriber instead (M-Pesa HTTP 500
    "Unable to lock subscriber"; providers with no synchronous refusal fail the prompt).
    """

    kind: Literal["customer_errors"] = "customer_errors"
    rate: float = Field(ge=0.0, le=1.0)
    code: str | None = Field(None, min_length=1, max_length=40)
    synchronous: bool = False

    @field_validator("code", mode="before")
    @classmethod
    def _code_text(cls, value: object) -> object:
        # M-Pesa ResultCodes travel as integers; the emulators compare text.
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


FaultSpec = Annotated[
    OutageSpec
    | LatencySpec
    | ErrorRateSpec
    | AcceptThenHangSpec
    | ThrottleSpec
    | FlappingSpec
    | CredentialExpirySpec
    | CustomerErrorsSpec,
    Field(discriminator="kind"),
]


class Fault(BaseModel):
    """One scheduled fault (times are absolute `clock.monotonic()` seconds)."""

    model_config = ConfigDict(frozen=True)

    id: str
    provider: str
    spec: FaultSpec
    endpoints: frozenset[EndpointKind] = frozenset()
    start_s: float
    end_s: float | None = None

    def active(self, now_s: float) -> bool:
        """Inside its window."""
        return self.start_s <= now_s and (self.end_s is None or now_s < self.end_s)

    def applies_to(self, endpoint: EndpointKind) -> bool:
        """Targets this endpoint kind (no endpoints listed = every endpoint)."""
        return not self.endpoints or endpoint in self.endpoints

    def down(self, now_s: float) -> bool:
        """For outages and flapping: is the provider down right now?"""
        if not self.active(now_s):
            return False
        if isinstance(self.spec, OutageSpec):
            return True
        if isinstance(self.spec, FlappingSpec):
            phase = (now_s - self.start_s) % self.spec.period_s
            return phase < self.spec.period_s * self.spec.down_fraction
        return False

    def refusing(self, now_s: float) -> bool:
        """Down with mode `refused` (the gate closes the provider's port)."""
        mode = getattr(self.spec, "mode", None)
        return mode == "refused" and self.down(now_s)

    def next_change_s(self, now_s: float) -> float | None:
        """The next clock time at which `down()` may change, if any."""
        if now_s < self.start_s:
            return self.start_s
        if self.end_s is not None and now_s >= self.end_s:
            return None
        candidates: list[float] = []
        if self.end_s is not None:
            candidates.append(self.end_s)
        if isinstance(self.spec, FlappingSpec):
            period = self.spec.period_s
            cycle_start = self.start_s + math.floor((now_s - self.start_s) / period) * period
            for edge in (cycle_start + period * self.spec.down_fraction, cycle_start + period):
                if edge > now_s:
                    candidates.append(edge)
                    break
        return min(candidates) if candidates else None

    def to_json(self, *, wall_minus_monotonic_s: float) -> dict[str, object]:
        """A JSON-friendly view for the control API: the window on the sandbox's monotonic clock
        (`start_s`, `end_s`) and as wall-clock ISO 8601 UTC times (`start_at`, `end_at`), given
        the clock's wall time minus its monotonic time."""
        return {
            "id": self.id,
            "provider": self.provider,
            "kind": self.spec.kind,
            "endpoints": sorted(e.value for e in self.endpoints),
            "start_s": self.start_s,
            "end_s": self.end_s,
            "start_at": iso_or_none(self.start_s + wall_minus_monotonic_s),
            "end_at": None if self.end_s is None else iso_or_none(self.end_s + wall_minus_monotonic_s),
            "params": {
                # A rotated key is a secret even in a sandbox: show that one is set, not its value.
                key: "***" if key == "replacement_secret" else value
                for key, value in self.spec.model_dump(exclude={"kind"}, exclude_none=True).items()
            },
        }


RejectionKind = Literal["unavailable", "reset", "throttled", "server_error"]


@dataclass(frozen=True)
class Rejection:
    """How to refuse a request before it is processed."""

    kind: RejectionKind
    http_status: int | None = None
    retry_after_s: float | None = None
    fault_id: str | None = None


@dataclass
class Verdict:
    """What the faults decided for one request, after any latency was served."""

    rejection: Rejection | None = None
    error_after_processing: Rejection | None = None
    hang: AcceptThenHangSpec | None = None
    delayed_s: float = 0.0


@dataclass
class _FaultState:
    rng: random.Random
    admitted: deque[float] = field(default_factory=deque)


class FaultEngine:
    """The scheduled faults of every provider, and their verdicts on each request."""

    def __init__(self, clock: Clock, *, seed: int = 0) -> None:
        self._clock = clock
        self._seed = seed
        self._faults: dict[str, Fault] = {}
        self._state: dict[str, _FaultState] = {}
        self._ids = itertools.count(1)
        self._changed: anyio.Event | None = None  # created lazily: the engine may be built outside a loop
        self._delayed_now = 0

    def describe(self, fault: Fault) -> dict[str, object]:
        """`fault` as the control API and the `inject_fault` tool show it (see `Fault.to_json`)."""
        return fault.to_json(wall_minus_monotonic_s=self._clock.now() - self._clock.monotonic())

    # --- schedule ------------------------------------------------------------------------

    def add(
        self,
        provider: str,
        spec: FaultSpec,
        *,
        endpoints: Iterable[EndpointKind | str] = (),
        start_s: float = 0.0,
        end_s: float | None = None,
        relative: bool = True,
    ) -> Fault:
        """Schedule a fault. With `relative`, `start_s`/`end_s` count from `clock.monotonic()` now.

        Raises:
            ValueError: the window is empty or a `refused` outage names endpoints.
        """
        now = self._clock.monotonic()
        start = now + start_s if relative else start_s
        end = (now + end_s if relative else end_s) if end_s is not None else None
        if end is not None and end <= start:
            raise ValueError(f"end_s ({end}) must be after start_s ({start})")
        kinds = frozenset(EndpointKind(e) for e in endpoints)
        if kinds and getattr(spec, "mode", None) == "refused":
            raise ValueError(
                "mode 'refused' closes the provider's whole port and cannot target endpoints; "
                "omit endpoints or use mode '503' or 'reset'"
            )
        if isinstance(spec, CustomerErrorsSpec) and kinds - {EndpointKind.COLLECT}:
            raise ValueError(
                "customer_errors hits customer prompts (collect) only; omit endpoints or give ['collect']"
            )
        if (
            isinstance(spec, LatencySpec)
            and spec.distribution == "ramp"
            and spec.ramp_s is None
            and end is None
        ):
            raise ValueError("a latency ramp needs ramp_s or an end_s")
        fault = Fault(
            id=f"f{next(self._ids)}", provider=provider, spec=spec, endpoints=kinds, start_s=start, end_s=end
        )
        self._faults[fault.id] = fault
        self._state[fault.id] = _FaultState(random.Random(f"{self._seed}:{fault.id}"))
        self._notify()
        return fault

    def remove(self, fault_id: str) -> bool:
        """Drop one fault; False when there was none."""
        found = self._faults.pop(fault_id, None) is not None
        self._state.pop(fault_id, None)
        if found:
            self._notify()
        return found

    def clear(self, provider: str | None = None) -> int:
        """Drop every fault (of `provider`); returns how many."""
        doomed = [f.id for f in self._faults.values() if provider is None or f.provider == provider]
        for fault_id in doomed:
            self._faults.pop(fault_id)
            self._state.pop(fault_id)
        if doomed:
            self._notify()
        return len(doomed)

    def faults(self, provider: str | None = None, *, active_only: bool = False) -> list[Fault]:
        """The scheduled faults, in the order they were added."""
        now = self._clock.monotonic()
        return [
            f
            for f in self._faults.values()
            if (provider is None or f.provider == provider) and (not active_only or f.active(now))
        ]

    # --- watchers (the gates in sandbox.server) -------------------------------------------

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    @property
    def changed(self) -> anyio.Event:
        """Set at the next change of the schedule (take it *before* reading the schedule)."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def refusing(self, provider: str, now_s: float | None = None) -> bool:
        """Is a `refused` outage (or flapping down phase) closing this provider's port now?"""
        now = self._clock.monotonic() if now_s is None else now_s
        return any(f.refusing(now) for f in self._faults.values() if f.provider == provider)

    def next_change_s(self, provider: str, now_s: float | None = None) -> float | None:
        """The next clock time at which `refusing(provider)` may change."""
        now = self._clock.monotonic() if now_s is None else now_s
        times = [
            t
            for f in self._faults.values()
            if f.provider == provider and getattr(f.spec, "mode", None) == "refused"
            for t in [f.next_change_s(now)]
            if t is not None
        ]
        return min(times) if times else None

    @property
    def delayed_requests(self) -> int:
        """Requests waiting in an injected latency right now (tests wait for them to arrive)."""
        return self._delayed_now

    # --- verdicts ------------------------------------------------------------------------

    def _matching(self, provider: str, endpoints: tuple[EndpointKind, ...], now_s: float) -> list[Fault]:
        return [
            f
            for f in self._faults.values()
            if f.provider == provider and f.active(now_s) and any(f.applies_to(e) for e in endpoints)
        ]

    def latency_s(self, fault: Fault, now_s: float) -> float:
        """One latency draw of a latency fault, in seconds (consumes its random stream)."""
        spec = fault.spec
        if not isinstance(spec, LatencySpec):
            return 0.0
        if spec.distribution == "fixed":
            delay_ms = spec.fixed_ms or 0.0
        elif spec.distribution == "lognormal":
            assert spec.median_ms is not None and spec.p99_ms is not None
            sigma = math.log(spec.p99_ms / spec.median_ms) / Z_99
            delay_ms = self._state[fault.id].rng.lognormvariate(math.log(spec.median_ms), sigma)
        else:
            assert spec.from_ms is not None and spec.to_ms is not None
            length = spec.ramp_s or ((fault.end_s or now_s) - fault.start_s)
            progress = 1.0 if length <= 0 else min(1.0, max(0.0, (now_s - fault.start_s) / length))
            delay_ms = spec.from_ms + (spec.to_ms - spec.from_ms) * progress
        return min(delay_ms, MAX_LATENCY_MS) / 1000.0

    def _throttled(self, fault: Fault, spec: ThrottleSpec, now_s: float) -> bool:
        admitted = self._state[fault.id].admitted
        while admitted and admitted[0] <= now_s - THROTTLE_WINDOW_S:
            admitted.popleft()
        if len(admitted) >= spec.max_per_s:
            return True
        admitted.append(now_s)
        return False

    async def before_request(self, provider: str, *endpoints: EndpointKind) -> Verdict:
        """Serve injected latency (on the clock), then decide the request's fate.

        A route may count as several endpoint kinds (Daraja's token call is both `auth` and
        `probe`); a fault targeting any of them applies.
        """
        verdict = Verdict()
        now = self._clock.monotonic()
        delay_s = sum(
            self.latency_s(f, now)
            for f in self._matching(provider, endpoints, now)
            if f.spec.kind == "latency"
        )
        if delay_s > 0:
            self._delayed_now += 1
            try:
                await self._clock.sleep(delay_s)
            finally:
                self._delayed_now -= 1
            verdict.delayed_s = delay_s
            now = self._clock.monotonic()
        for fault in self._matching(provider, endpoints, now):
            spec = fault.spec
            if isinstance(spec, OutageSpec | FlappingSpec) and fault.down(now):
                kind: RejectionKind = "reset" if spec.mode == "reset" else "unavailable"
                verdict.rejection = Rejection(kind, 503, fault_id=fault.id)
                return verdict
        for fault in self._matching(provider, endpoints, now):
            spec = fault.spec
            if isinstance(spec, ThrottleSpec) and self._throttled(fault, spec, now):
                verdict.rejection = Rejection("throttled", spec.http_status, spec.retry_after_s, fault.id)
                return verdict
        for fault in self._matching(provider, endpoints, now):
            spec = fault.spec
            if isinstance(spec, ErrorRateSpec) and self._state[fault.id].rng.random() < spec.rate:
                rejection = Rejection("server_error", spec.http_status, fault_id=fault.id)
                if spec.after_processing:
                    verdict.error_after_processing = rejection
                else:
                    verdict.rejection = rejection
                    return verdict
            elif isinstance(spec, AcceptThenHangSpec) and self._state[fault.id].rng.random() < spec.rate:
                verdict.hang = spec
        return verdict

    def customer_error(self, provider: str) -> CustomerErrorsSpec | None:
        """Whether the prompt being created now is a victim of a customer-error storm.

        Each active storm draws once from its own seeded stream (so a storm's victims do not
        depend on other traffic); the first that hits decides. Called by the emulators when they
        accept a collection, never by the fault pipeline: the provider answers normally.
        """
        now = self._clock.monotonic()
        for fault in self._matching(provider, (EndpointKind.COLLECT,), now):
            spec = fault.spec
            if isinstance(spec, CustomerErrorsSpec) and self._state[fault.id].rng.random() < spec.rate:
                return spec
        return None

    def credential_cutoff(self, provider: str, *endpoints: EndpointKind) -> CredentialExpiry | None:
        """The active credential expiry for this request, if any."""
        now = self._clock.monotonic()
        for fault in self._matching(provider, endpoints, now):
            if isinstance(fault.spec, CredentialExpirySpec):
                cutoff = (
                    fault.spec.issued_before_s if fault.spec.issued_before_s is not None else fault.start_s
                )
                return CredentialExpiry(cutoff, fault.spec.replacement_secret)
        return None


@dataclass(frozen=True)
class CredentialExpiry:
    """Credentials issued before `issued_before_s` are refused; `replacement_secret` stays valid."""

    issued_before_s: float
    replacement_secret: str | None = None
