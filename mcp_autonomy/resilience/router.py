"""PaymentRouter: decides where money goes, and never loses or double-charges a payment.

For each payment, in order:

1. **Idempotency and durability.** The record is written under its idempotency key *before* any
   provider call, and each attempt (provider, the reference sent, outcome `sending`) is written
   before its request leaves; provider ids the adapter learns go to the store at once through
   its identifier sink. A replay of the key returns the first result (a different request under
   the same key is an `IdempotencyConflict`). On the store: a new key is claimed in the same
   commit as its first attempt, and the final outcome of the last attempt in the same commit as
   the payment's final fields, so a payment answered at once costs two commits (see `_Submission`).
2. **Route.** The eligible providers (operation, currency, country) form a chain: the first
   registered eligible provider, then its configured backups. Providers the healer has failed
   over from, or that it measures as unhealthy, move to the end of the chain.
3. **Per provider:** breaker -> rate limit -> timeout -> classify. A local rejection (breaker open,
   rate limit) and an error that certainly means "not processed" (connection refused, auth, 429)
   fail over to the next provider at once; the same provider is
   retried (jittered backoff, within the retry budget) only when no other provider remains. A
   429's retry waits for its Retry-After, and the first `THROTTLE_FREE_RETRIES` of them do not
   use up one of the lane's `max_attempts` (the provider declined to look at the payment).
4. **Ambiguous outcomes** (timeout after sending, reset mid-response, 5xx after acceptance) are
   resolved with the provider's idempotent status query (bypassing the status cache) *before*
   anything else. Found -> that is the payment's result. "Not found" counts as absent only past
   the provider's lookup grace period and where its docs say so (`MoneyTruth`): then it is safe
   to fail over. Otherwise the payment is recorded `unknown` with that provider and is never sent
   anywhere else; the reconciler (`autonomy/reconciler.py`) pulls it until it is final, or marks
   it `needs_reconciliation` once the provider's bound has passed.
5. An invalid request is the caller's fault: it fails at once, without failover.

Every call's outcome and latency goes to `Telemetry`; breaker transitions become events.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import BaseModel

from mcp_autonomy.clock import Clock, SystemClock
from mcp_autonomy.events import EventBus, EventType, Severity
from mcp_autonomy.payments import (
    AttemptOutcome,
    PaymentAttempt,
    PaymentRecord,
    PaymentStore,
    ProviderIdentifier,
)
from mcp_autonomy.providers.base import (
    NOT_FOUND_CODE,
    ErrorClass,
    MoneyTruth,
    Operation,
    PaymentContext,
    PaymentRequest,
    ProviderError,
    ProviderTransaction,
    TransactionStatus,
)
from mcp_autonomy.providers.registry import ProviderEntry, ProviderRegistry
from mcp_autonomy.resilience.breaker import (
    BreakerConfig,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
)
from mcp_autonomy.resilience.canary import ArmTally, CanarySplit
from mcp_autonomy.resilience.customer_errors import CustomerErrorMonitor
from mcp_autonomy.resilience.guard import CallGuard
from mcp_autonomy.resilience.health import HealthStatus
from mcp_autonomy.resilience.rate_limiter import TokenBucket
from mcp_autonomy.resilience.retry import Backoff, RetryBudget
from mcp_autonomy.resilience.status_cache import StatusCache
from mcp_autonomy.resilience.tunables import ProviderTunables, default_tunables
from mcp_autonomy.telemetry import Outcome, ProviderTelemetry, Telemetry
from mcp_autonomy.timefmt import TimestampOrNone

logger = logging.getLogger(__name__)

RESOLVE_ATTEMPTS = 3
"""Status queries tried to resolve one ambiguous outcome before recording it unknown."""
NEAR_TIMEOUT_SHARE = 0.8
"""A call answered after this share of its timeout is reported to the timeout listeners: the
provider is slowing down towards the timeout before any call times out."""
THROTTLE_FREE_RETRIES = 2
"""Retries after a 429 (at its Retry-After) per payment and provider that do not use up an attempt."""
HANG_P99_MULTIPLE = 3.0
HANG_FLOOR_S = 2.0
HANG_TIMEOUT_SHARE = 0.5
"""A call still in flight longer than 3 x the lane's recent p99 (at least 2 s, and without a p99
half the lane's timeout) is hung: no healthy provider keeps a payment that long."""
HANG_TRIP_CALLS = 1
"""One call hung past the threshold opens the breaker. A healthy provider answers 99 % of calls
within its p99, so a call at three times that is rare, and a false trip costs little: new
payments go to the backup until a half-open probe (30 s) brings the provider back. Waiting for a
second hung call would cost another arrival interval (0.6 s at 100 payments a minute) of new
payments sent to a provider that has stopped answering. The hung calls themselves are resolved
by status when their timeout ends, never re-sent."""
HANG_P99_MIN_SAMPLES = 20
HANG_P99_REFRESH_S = 5.0
"""The p99 behind the hang threshold is recomputed at most every 5 s, from 20 or more calls."""
RECONCILE_FIRST_CHECK_S = 5.0
"""When the reconciler first pulls a payment left unknown (then with backoff, see `reconciler`)."""
DEFAULT_MONEY_TRUTH = MoneyTruth(
    not_found_grace_s=60.0,
    not_found_is_final_after_grace=False,
    pending_bound_s=3600.0,
    pull_carries=frozenset({"status"}),
    callback_carries=frozenset(),
    pull_path="the adapter's status query",
    sources=("no provider table: conservative defaults (not found never means not processed)",),
)
"""For adapters that publish no `money_truth` (test doubles, third-party adapters)."""


class IdempotencyConflict(ValueError):
    """The idempotency key is already used by a different payment."""


class NoRouteError(ValueError):
    """No registered provider supports this operation, currency and country."""


class _KeyTaken(Exception):
    """The idempotency key was claimed by another writer between the replay check and this
    payment's first write (another process or replica): this submit is a replay after all."""

    def __init__(self, existing: PaymentRecord) -> None:
        super().__init__(existing.idempotency_key)
        self.existing = existing


@dataclass(slots=True)
class _Submission:
    """The store-call state of one payment while `submit` routes it.

    The payment row is not written on its own: it is claimed (`create_payment`) in the same
    transaction as its first attempt, so a payment costs one commit before its request leaves
    instead of two. An attempt whose outcome ends the payment is written with the payment's final
    fields (`finish_send`): one commit after the call instead of two.
    """

    claimed: bool = False
    finished: PaymentAttempt | None = None
    """An attempt whose outcome is known but not yet written: `_save` writes it with the payment."""


class NoAnswer(Enum):
    """A status pull that returned no transaction: the provider has none (`NOT_FOUND`, which the
    provider's `MoneyTruth` grace turns into "ambiguous" or "never processed"), or it did not
    answer (`UNRESOLVED`)."""

    NOT_FOUND = "not_found"
    UNRESOLVED = "unresolved"


@dataclass
class ProviderLane:
    """One provider's path through the router: its adapter and its guards."""

    entry: ProviderEntry
    breaker: CircuitBreaker
    limiter: TokenBucket
    budget: RetryBudget
    backoff: Backoff
    tunables: ProviderTunables
    telemetry: ProviderTelemetry
    guard: CallGuard
    """Breaker, limiter and telemetry behind one call per side: the path of every provider call."""
    tally: ArmTally = field(default_factory=ArmTally)
    canary: CanarySplit | None = None
    status_cache: StatusCache = field(default_factory=StatusCache)
    in_flight: dict[int, float] = field(default_factory=dict)
    """Calls at the provider now: a token -> the monotonic time each left."""
    hang_threshold_s: float | None = None
    hang_threshold_at: float = -1e18

    @property
    def name(self) -> str:
        return self.entry.name


class LaneStatus(BaseModel):
    """A lane's guards as the router sees them (for status and tools)."""

    provider: str
    breaker_state: BreakerState
    breaker_failure_rate: float | None
    breaker_calls_in_window: int
    breaker_open_until: TimestampOrNone
    rate_limit_per_s: float
    tokens_available: float
    retry_budget_available: bool
    tunables: ProviderTunables
    failed_over_to: str | None


class PaymentRouter:
    """Routes payments through the registered providers (see the module docstring)."""

    def __init__(
        self,
        registry: ProviderRegistry,
        payments: PaymentStore,
        telemetry: Telemetry,
        bus: EventBus,
        clock: Clock,
        *,
        breaker_config: BreakerConfig | None = None,
        rng: random.Random | None = None,
        hang_detection: bool = True,
    ) -> None:
        self.registry = registry
        self.timeout_listeners: list[Callable[[str, bool], None]] = []
        """Called with (provider, timed_out) after each call that timed out (True) or answered
        after `NEAR_TIMEOUT_SHARE` of its timeout (False): the optimizer's timeout guard."""
        self.route_listeners: list[Callable[[dict[str, str]], None]] = []
        """Called with the whole failover map after each fail-over or fail-back made here (the
        cluster shares it); never for a map applied from another replica."""
        self.payments = payments
        self.telemetry = telemetry
        self.bus = bus
        self.clock = clock
        self.monotonic: Callable[[], float] = (
            time.monotonic if type(clock) is SystemClock else clock.monotonic
        )
        """The clock's monotonic time, for the per-call guard: with the system clock, the function
        `SystemClock.monotonic` wraps (one Python frame less per read, three reads a call)."""
        self._breaker_config = breaker_config
        self._rng = rng if rng is not None else random.Random()
        self._lanes: dict[str, ProviderLane] = {}
        self._failed_over: dict[str, str] = {}
        self._in_flight: dict[tuple[str, str], str] = {}  # (provider, reference) -> idempotency key
        self._submissions: dict[int, _Submission] = {}  # id(record) -> its store-call state
        self._call_tokens = iter(range(1, 2**62))
        self.hang_detection = hang_detection
        """Hung in-flight calls trip the lane's breaker (off only for a baseline in benchmarks)."""
        self.customer_errors = CustomerErrorMonitor(clock, bus)
        """Customer failures per provider: a storm is a signal, never a breaker trip."""
        self.counters: dict[str, int] = {
            "payments": 0,
            "replays": 0,
            "failovers": 0,
            "ambiguous_resolved": 0,
            "unknown": 0,
            "no_provider_accepted": 0,
        }

    # --- lanes --------------------------------------------------------------------------

    def lane(self, provider: str) -> ProviderLane:
        """The lane of `provider`, built on first use with its default tunables."""
        lane = self._lanes.get(provider)
        if lane is None:
            entry = self.registry.get(provider)
            breaker = CircuitBreaker(provider, self.clock, self._breaker_config)
            breaker.on_transition(self._on_breaker_transition)
            # The lane's open period and threshold are the breaker's (a custom BreakerConfig may
            # set others).
            tunables = default_tunables(provider).model_copy(
                update={
                    "breaker_wait_s": breaker.config.wait_in_open_s,
                    "breaker_failure_rate": breaker.config.failure_rate_threshold,
                }
            )
            limiter = TokenBucket(tunables.rate_limit_per_s, tunables.rate_limit_burst, self.clock)
            telemetry = self.telemetry.provider(provider)
            lane = ProviderLane(
                entry=entry,
                breaker=breaker,
                limiter=limiter,
                budget=RetryBudget(self.clock, ratio=tunables.retry_budget_ratio),
                backoff=Backoff(
                    tunables.base_delay_s, max(tunables.max_delay_s, tunables.base_delay_s), self._rng
                ),
                tunables=tunables,
                telemetry=telemetry,
                guard=CallGuard(breaker, limiter, telemetry, self.monotonic),
            )
            if hasattr(entry.adapter, "identifier_sink"):
                # Ids the adapter learns (CheckoutRequestID, invoice id, ...) are durable at once.
                entry.adapter.identifier_sink = self._identifier_sink(provider)
            self._lanes[provider] = lane
        return lane

    def set_tunables(self, provider: str, tunables: ProviderTunables) -> ProviderTunables:
        """Apply new tunables to a lane now; returns the previous ones.

        Only what changed is rebuilt: the retry budget keeps its window and the breaker its counts
        when another parameter moves (the optimizer's switchback flips one parameter every tick).
        """
        lane = self.lane(provider)
        previous = lane.tunables
        lane.tunables = tunables
        lane.limiter.set_rate(tunables.rate_limit_per_s, tunables.rate_limit_burst)
        if tunables.retry_budget_ratio != previous.retry_budget_ratio:
            lane.budget = RetryBudget(self.clock, ratio=tunables.retry_budget_ratio)
        if (tunables.base_delay_s, tunables.max_delay_s) != (previous.base_delay_s, previous.max_delay_s):
            lane.backoff = Backoff(
                tunables.base_delay_s, max(tunables.max_delay_s, tunables.base_delay_s), self._rng
            )
        if tunables.breaker_wait_s != previous.breaker_wait_s:
            lane.breaker.set_wait_in_open(tunables.breaker_wait_s)
        if tunables.breaker_failure_rate != previous.breaker_failure_rate:
            lane.breaker.set_failure_rate_threshold(tunables.breaker_failure_rate)
        return previous

    def override_canary(self, provider: str, values: dict[str, float]) -> None:
        """Apply an operator's override to the running canary's candidate too (no-op without one),
        so the canary arm does not keep the values the operator just replaced."""
        split = self.lane(provider).canary
        if split is None:
            return
        split.tunables = ProviderTunables.model_validate({**split.tunables.model_dump(), **values})
        split.backoff = Backoff(
            split.tunables.base_delay_s,
            max(split.tunables.max_delay_s, split.tunables.base_delay_s),
            self._rng,
        )

    def start_canary(
        self, provider: str, optimization_id: str, parameter: str, tunables: ProviderTunables, *, share: float
    ) -> CanarySplit:
        """Send `share` of `provider`'s payments through `tunables` until `stop_canary`.

        A share of 1 sends every payment through them: a tally of "after" for a change that
        cannot be split (compared with the window before it).
        """
        lane = self.lane(provider)
        if lane.canary is not None:
            raise ValueError(f"{provider}: canary {lane.canary.optimization_id} is already running")
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share}")
        lane.canary = CanarySplit(
            optimization_id=optimization_id,
            parameter=parameter,
            tunables=tunables,
            share=share,
            backoff=Backoff(
                tunables.base_delay_s, max(tunables.max_delay_s, tunables.base_delay_s), self._rng
            ),
            started_at=self.clock.now(),
        )
        return lane.canary

    def stop_canary(self, provider: str) -> CanarySplit | None:
        """End the running canary (its tallies are returned); all traffic uses the lane's tunables."""
        lane = self.lane(provider)
        split, lane.canary = lane.canary, None
        return split

    def lane_status(self, provider: str) -> LaneStatus:
        lane = self.lane(provider)
        breaker = lane.breaker.snapshot()
        return LaneStatus(
            provider=provider,
            breaker_state=breaker.state,
            breaker_failure_rate=breaker.failure_rate,
            breaker_calls_in_window=breaker.calls_in_window,
            breaker_open_until=breaker.open_until,
            rate_limit_per_s=lane.limiter.rate_per_s,
            tokens_available=round(lane.limiter.snapshot().tokens, 3),
            retry_budget_available=lane.budget.can_retry(),
            tunables=lane.tunables,
            failed_over_to=self._failed_over.get(provider),
        )

    def _on_breaker_transition(self, transition: BreakerTransition) -> None:
        opened = transition.to_state in (BreakerState.OPEN, BreakerState.FORCED_OPEN)
        self.bus.emit(
            EventType.BREAKER_STATE_CHANGED,
            component="router",
            provider=transition.name,
            severity=Severity.WARNING if opened else Severity.INFO,
            message=f"{transition.name} breaker {transition.from_state.value} -> {transition.to_state.value}",
            data={
                "from": transition.from_state.value,
                "to": transition.to_state.value,
                "reason": transition.reason,
            },
        )

    # --- failover state (driven by the healer) ------------------------------------------

    def fail_over(self, primary: str, backup: str, *, reason: str) -> None:
        """Send `primary`'s traffic to its backups first until `fail_back`."""
        self.registry.get(primary)
        self.registry.get(backup)
        self._failed_over[primary] = backup
        self.bus.emit(
            EventType.FAILOVER_TRIGGERED,
            component="router",
            provider=primary,
            severity=Severity.WARNING,
            message=f"{primary} failed over to {backup} ({reason})",
            data={
                "from": primary,
                "to": backup,
                "reason": reason,
                "route": self.registry.get(primary).backups,
            },
        )
        self._routes_changed()

    def fail_back(self, primary: str, *, reason: str) -> bool:
        """Give `primary` its traffic back; returns False if it was not failed over."""
        backup = self._failed_over.pop(primary, None)
        if backup is None:
            return False
        self.bus.emit(
            EventType.PROVIDER_RECOVERED,
            component="router",
            provider=primary,
            message=f"{primary} takes its traffic back from {backup} ({reason})",
            data={"from": backup, "to": primary, "reason": reason, "action": "fail_back"},
        )
        self._routes_changed()
        return True

    def _routes_changed(self) -> None:
        routes = dict(self._failed_over)
        for listener in self.route_listeners:
            listener(routes)

    def apply_failover(self, routes: dict[str, str]) -> None:
        """Adopt the failover map another replica decided (unknown providers are ignored: this
        replica may not serve them). Silent: the deciding replica published the events."""
        known = set(self.registry.names())
        self._failed_over = {p: b for p, b in routes.items() if p in known and b in known}

    @property
    def failed_over(self) -> dict[str, str]:
        return dict(self._failed_over)

    # --- routing ------------------------------------------------------------------------

    def route(self, operation: Operation, currency: str, country: str) -> list[str]:
        """The ordered providers a payment would try."""

        def eligible(entry: ProviderEntry) -> bool:
            caps = entry.adapter.capabilities
            return operation in caps.operations and currency in caps.currencies and country in caps.countries

        entries = [e for e in self.registry.entries() if eligible(e)]
        if not entries:
            raise NoRouteError(
                f"no registered provider supports {operation.value} in {currency} for country {country}"
            )
        primary = entries[0]
        chain = [primary.name] + [
            b for b in primary.backups if b in self.registry and eligible(self.registry.get(b))
        ]

        def demoted(name: str) -> bool:
            return (
                name in self._failed_over or self.registry.get(name).health.status is HealthStatus.UNHEALTHY
            )

        return sorted(chain, key=demoted)  # stable: keeps the configured order within each group

    # --- payments -----------------------------------------------------------------------

    async def submit(self, request: PaymentRequest) -> PaymentRecord:
        """Route one payment; returns its record (the first one, for a replayed key)."""
        now = self.clock.now()
        record = PaymentRecord(
            idempotency_key=request.idempotency_key,
            operation=request.operation,
            money=request.money,
            phone=request.phone,
            country=request.country,
            description=request.description,
            status=TransactionStatus.PENDING,
            created_at=now,
            updated_at=now,
            # If this process stops mid-route, the reconciler takes the payment up from here.
            next_check_at=now + RECONCILE_FIRST_CHECK_S,
            metadata=dict(request.metadata),
        )
        # A replay is answered from a read (no commit); a new key is claimed atomically with the
        # payment's first write (`_store_attempt`), which also catches a writer that raced us.
        # `get_payment` also matches references: only a record under this very key is a replay.
        existing = await self.payments.get_payment(request.idempotency_key)
        if existing is not None and existing.idempotency_key == request.idempotency_key:
            return self._replay(record, existing)
        submission = _Submission()
        self._submissions[id(record)] = submission
        try:
            return await self._route(request, record)
        except _KeyTaken as taken:
            # Lost a race for the key before anything was sent (the provider call comes after the
            # claim). The lane's tallies and one rate-limit token may count this try: rare, harmless.
            self.counters["payments"] -= 1
            return self._replay(record, taken.existing)
        finally:
            # An outcome still unwritten here means submit is failing (the store raised, or it
            # was cancelled): its attempt stays `sending`, and the reconciler resolves it by status.
            del self._submissions[id(record)]

    def _replay(self, record: PaymentRecord, existing: PaymentRecord) -> PaymentRecord:
        if not existing.same_request(record):
            # Never echo the other payment's details: the key's owner may be someone else.
            raise IdempotencyConflict(
                f"idempotency_key {record.idempotency_key!r} was already used for a different payment "
                "(another operation, amount, currency, phone or country); use a new key"
            )
        self.counters["replays"] += 1
        return existing

    async def _route(self, request: PaymentRequest, record: PaymentRecord) -> PaymentRecord:
        self.counters["payments"] += 1
        started = self.clock.monotonic()
        try:
            chain = self.route(request.operation, request.money.currency, request.country)
        except NoRouteError as exc:
            record.status = TransactionStatus.FAILED
            record.provider_message = str(exc)
            return await self._save(record, started)
        for index, provider in enumerate(chain):
            is_last = index == len(chain) - 1
            outcome = await self._try_provider(self.lane(provider), request, record, is_last)
            if outcome == "done":
                return await self._save(record, started)
            if index + 1 < len(chain):
                record.failed_over = True
                self.counters["failovers"] += 1
        self.counters["no_provider_accepted"] += 1
        record.status = TransactionStatus.FAILED
        record.provider_message = (
            "no provider accepted the payment; none processed it, so nothing was charged"
        )
        return await self._save(record, started)

    async def _save(self, record: PaymentRecord, started: float) -> PaymentRecord:
        record.updated_at = self.clock.now()
        if record.status.is_final:
            record.next_check_at = None
        elif record.status in (TransactionStatus.PENDING, TransactionStatus.NEEDS_OPERATOR_OTP):
            record.next_check_at = record.updated_at + RECONCILE_FIRST_CHECK_S
        if record.status is TransactionStatus.NEEDS_OPERATOR_OTP:
            self.hold_for_otp(record)
        submission = self._submissions.get(id(record))
        if submission is not None and not submission.claimed:
            # Nothing was attempted (no route): the payment is claimed with its final fields.
            existing = await self.payments.create_payment(record)
            if existing is not None:
                raise _KeyTaken(existing)
            submission.claimed = True
        elif submission is not None and submission.finished is not None:
            finished, submission.finished = submission.finished, None
            await self.payments.finish_send(record, finished)
        else:
            await self.payments.save_payment(record)
        ok = record.status in (TransactionStatus.SUCCEEDED, TransactionStatus.PENDING)
        self.telemetry.record_payment(
            Outcome.SUCCESS if ok else Outcome.NOT_PROCESSED, (self.clock.monotonic() - started) * 1000
        )
        if record.status is TransactionStatus.UNKNOWN:
            self.counters["unknown"] += 1
        return record

    async def _call(
        self, lane: ProviderLane, request: PaymentRequest, timeout_s: float
    ) -> ProviderTransaction:
        adapter = lane.entry.adapter
        with self.clock.fail_after(timeout_s):
            if request.operation is Operation.PAYOUT:
                return await adapter.payout(request)
            return await adapter.collect(request)

    async def _try_provider(
        self, lane: ProviderLane, request: PaymentRequest, record: PaymentRecord, is_last: bool
    ) -> str:
        """Try one provider; returns "done" (the payment has its outcome) or "next" (fail over).

        The lane's tunables apply, or the canary's for the payments in its arm; both the lane's
        tally and the arm's count the outcome.
        """
        split = lane.canary
        arm_tally: ArmTally | None = None
        tunables, backoff = lane.tunables, lane.backoff
        if split is not None:
            arm = split.arm_for(request.idempotency_key)
            arm_tally = split.tally(arm)
            if arm == "canary":
                tunables, backoff = split.tunables, split.backoff
        tallies = (lane.tally,) if arm_tally is None else (lane.tally, arm_tally)
        for tally in tallies:
            tally.calls += 1
        result = await self._attempts_at(lane, request, record, is_last, tunables, backoff, tallies)
        if (
            result == "done"
            and record.provider == lane.name
            and record.status is not TransactionStatus.FAILED
        ):
            retried = (
                sum(
                    1
                    for a in record.attempts
                    if a.provider == lane.name and a.outcome is not AttemptOutcome.RESOLVED_BY_STATUS
                )
                > 1
            )
            for tally in tallies:
                tally.successes += 1
                if retried:
                    tally.recovered_on_retry += 1
        return result

    async def _attempts_at(
        self,
        lane: ProviderLane,
        request: PaymentRequest,
        record: PaymentRecord,
        is_last: bool,
        tunables: ProviderTunables,
        backoff: Backoff,
        tallies: tuple[ArmTally, ...],
    ) -> str:
        lane.budget.record_request(self.clock.monotonic())
        guard = lane.guard
        refreshed_credentials = False
        retrying = False  # the next call is a retry (tallied once it reaches the provider)
        throttled_free = 0  # 429s answered with a retry that did not use up an attempt
        attempt = 0
        reference = self._reference_for(lane, request)
        while True:
            attempt += 1
            attempt_started = self.clock.now()
            self._trip_on_hung_calls(lane, tunables.timeout_s)
            ticket = guard.admit()
            if isinstance(ticket, str):
                await self._attempt(
                    record, lane, attempt_started, 0.0, AttemptOutcome.REJECTED_LOCALLY, ticket
                )
                return "next"
            if retrying:
                # Counted here, not when the backoff began: a retry the breaker or the limiter
                # rejects never reached the provider and can recover nothing (the retry tuner's
                # recovery rate is recovered payments / retries that reached the provider).
                retrying = False
                for tally in tallies:
                    tally.retries_sent += 1
            # Durable before the request leaves: a crash from here on leaves an attempt that says
            # where the payment may be, and the restart resolves it by status, never by a resend.
            try:
                sending = await self._begin_send(record, lane, attempt_started, reference)
            except BaseException:
                guard.release(ticket)  # nothing was sent: the ticket (maybe a half-open trial) is free
                raise
            call_started = self.monotonic()
            key = (lane.name, reference)
            self._in_flight[key] = request.idempotency_key
            token = next(self._call_tokens)
            lane.in_flight[token] = call_started
            try:
                txn = await self._call(lane, request, tunables.timeout_s)
            except TimeoutError:
                latency_ms = guard.settle_timeout(ticket, call_started)
                for tally in tallies:
                    tally.timeouts += 1
                    tally.add_latency(latency_ms)
                self._near_timeout(lane.name, timed_out=True)
                await self._finish_send(
                    record,
                    sending,
                    latency_ms,
                    AttemptOutcome.AMBIGUOUS,
                    f"no answer within {tunables.timeout_s} s",
                )
                return await self._resolve_ambiguous(lane, request, record)
            except ProviderError as exc:
                latency_ms = guard.settle_error(ticket, exc, call_started)
                for tally in tallies:
                    tally.add_latency(latency_ms)
                    if exc.error_class in (ErrorClass.NOT_PROCESSED, ErrorClass.RATE_LIMITED):
                        tally.transient_errors += 1
                await self._finish_send(
                    record,
                    sending,
                    latency_ms,
                    AttemptOutcome(exc.error_class.value),
                    exc.provider_message,
                    code=exc.code,
                    # These end the payment here: the outcome is written with it by `_save`.
                    final=exc.error_class in (ErrorClass.CUSTOMER, ErrorClass.INVALID_REQUEST),
                )
                if exc.error_class is ErrorClass.CUSTOMER:
                    # The customer's own state refused it: another provider meets the same
                    # customer, so neither a retry nor a failover; and not the provider's fault.
                    record.status = TransactionStatus.FAILED
                    record.provider = lane.name
                    record.provider_code = exc.code
                    record.provider_message = exc.provider_message
                    record.status_reason = "refused on the customer's side; nothing was charged"
                    self.customer_errors.observe(
                        lane.name, customer_failure=True, payer=request.phone, code=exc.code
                    )
                    return "done"
                if exc.error_class is ErrorClass.INVALID_REQUEST:
                    record.status = TransactionStatus.FAILED
                    record.provider = lane.name
                    record.provider_code = exc.code
                    record.provider_message = exc.provider_message
                    return "done"
                if exc.error_class is ErrorClass.AMBIGUOUS:
                    return await self._resolve_ambiguous(lane, request, record)
                if exc.error_class is ErrorClass.AUTH and not refreshed_credentials:
                    refreshed_credentials = True
                    try:
                        await lane.entry.adapter.refresh_credentials()
                        continue  # the request was refused before processing: resending is safe
                    except Exception as refresh_error:
                        logger.warning("%s: refreshing credentials failed: %s", lane.name, refresh_error)
                # A 429 is the provider declining to look at the payment and saying when to come back:
                # the retry that honours its Retry-After is not a second try at processing it, so
                # the first THROTTLE_FREE_RETRIES of them leave `max_attempts` alone (the retry budget
                # still bounds them). Without it, a lane tuned to fewer attempts for an outage
                # would fail payments a throttling provider asked us to resend a second later.
                if exc.error_class is ErrorClass.RATE_LIMITED and throttled_free < THROTTLE_FREE_RETRIES:
                    throttled_free += 1
                # Certainly not processed: fail over now, or retry here if nothing else is left.
                counted = attempt - throttled_free
                if not is_last or counted >= tunables.max_attempts or not lane.budget.can_retry():
                    if is_last:
                        for tally in tallies:
                            tally.retries_exhausted += 1
                    return "next"
                lane.budget.record_retry()
                retrying = True
                delay = backoff.delay_s(attempt)
                if exc.retry_after_s is not None:
                    delay = max(delay, exc.retry_after_s)
                await self.clock.sleep(delay)
                continue
            finally:
                self._in_flight.pop(key, None)
                lane.in_flight.pop(token, None)
                await self.payments.flush()
            latency_ms = guard.settle_success(ticket, call_started)
            for tally in tallies:
                tally.add_latency(latency_ms)
            if latency_ms >= NEAR_TIMEOUT_SHARE * 1000 * tunables.timeout_s:
                self._near_timeout(lane.name, timed_out=False)
            await self._finish_send(
                record, sending, latency_ms, AttemptOutcome.ACCEPTED, txn.status.value, txn=txn, final=True
            )
            self._adopt(record, lane.name, txn)
            record.accepted_at = attempt_started
            return "done"

    def hold_for_otp(self, record: PaymentRecord) -> None:
        """Mark a transfer its provider holds for the merchant's OTP, and say so once: the OTP
        goes to the merchant, and only an operator (`submit_transfer_otp`) finalises it."""
        record.status = TransactionStatus.NEEDS_OPERATOR_OTP
        record.status_reason = (
            f"{record.provider} holds this transfer until the merchant confirms it with the OTP it sent "
            "the merchant: submit it with submit_transfer_otp"
        )
        self.bus.emit(
            EventType.PAYMENT_NEEDS_OTP,
            component="router",
            provider=record.provider,
            severity=Severity.WARNING,
            message=f"payment {record.idempotency_key} waits for the merchant's OTP at {record.provider}",
            data={"idempotency_key": record.idempotency_key, "provider_reference": record.provider_reference},
        )

    def _trip_on_hung_calls(self, lane: ProviderLane, timeout_s: float) -> None:
        """Open the lane's breaker when calls hang in flight (see `HANG_TRIP_CALLS`): hung calls
        are slow-call evidence while still running, long before their timeouts end."""
        if (
            not self.hang_detection
            or len(lane.in_flight) < HANG_TRIP_CALLS
            or lane.breaker.state is not BreakerState.CLOSED
        ):
            return
        now = self.clock.monotonic()
        threshold_s = self.hang_threshold_s(lane, timeout_s, now)
        hung = sum(1 for started in lane.in_flight.values() if now - started > threshold_s)
        if hung >= HANG_TRIP_CALLS:
            oldest_s = now - min(lane.in_flight.values())
            lane.breaker.trip(
                f"{hung} calls in flight longer than {threshold_s:.1f} s (the oldest {oldest_s:.1f} s): "
                "the provider is hanging; they are resolved by status, never re-sent"
            )

    def hang_threshold_s(self, lane: ProviderLane, timeout_s: float, now: float) -> float:
        """How long a call at `lane` may stay in flight before it counts as hung (monotonic `now`)."""
        if now - lane.hang_threshold_at >= HANG_P99_REFRESH_S:
            calls, p99_ms = self.telemetry.provider(lane.name).latency_quantiles_ms((0.99,), 300.0)
            p99_s = p99_ms[0] / 1000 if p99_ms is not None and calls >= HANG_P99_MIN_SAMPLES else None
            lane.hang_threshold_s = (
                max(HANG_FLOOR_S, HANG_P99_MULTIPLE * p99_s) if p99_s is not None else None
            )
            lane.hang_threshold_at = now
        threshold = lane.hang_threshold_s
        fallback = max(HANG_FLOOR_S, HANG_TIMEOUT_SHARE * timeout_s)
        return min(threshold if threshold is not None else fallback, timeout_s)

    def _near_timeout(self, provider: str, *, timed_out: bool) -> None:
        for listener in self.timeout_listeners:
            try:
                listener(provider, timed_out)
            except Exception:  # a listener must never cost a payment
                logger.exception("%s: timeout listener failed", provider)

    async def _resolve_ambiguous(
        self, lane: ProviderLane, request: PaymentRequest, record: PaymentRecord
    ) -> str:
        """Ask the provider about an outcome that may have been processed (never re-send first).

        Found: that is the payment's result. Not found after the provider's grace period, where
        its docs say that means never processed: safe to fail over. Anything else (no answer, or
        "not found" while lookups may still lag acceptance): the payment is `unknown` at this
        provider, never sent anywhere else, and the reconciler pulls it until it is final or its
        bound passes (then `needs_reconciliation`).
        """
        sent = record.attempts[-1]
        reference = sent.reference or self._reference_for(lane, request)
        truth = self.money_truth(lane.name)
        context = PaymentContext(
            reference=reference,
            operation=request.operation,
            money=request.money,
            phone=request.phone,
            country=request.country,
            provider_reference=sent.provider_reference,
            identifiers=await self.payments.identifiers(lane.name, reference),
            accepted_at=sent.started_at,
        )
        resolution = await self.query_status(
            lane.name, reference, sent.provider_reference, context=context, fresh=True
        )
        if (
            isinstance(resolution, ProviderTransaction)
            and resolution.status is not TransactionStatus.UNKNOWN
            and not resolution.answer_by_callback  # only asked (M-Pesa B2C): no answer yet
        ):
            self.counters["ambiguous_resolved"] += 1
            await self._attempt(
                record,
                lane,
                self.clock.now(),
                0.0,
                AttemptOutcome.RESOLVED_BY_STATUS,
                resolution.status.value,
                txn=resolution,
            )
            self._adopt(record, lane.name, resolution)
            record.accepted_at = sent.started_at
            return "done"
        age_s = self.clock.now() - sent.started_at
        if (
            resolution is NoAnswer.NOT_FOUND
            and truth.not_found_is_final_after_grace
            and age_s >= truth.not_found_grace_s
        ):
            self.counters["ambiguous_resolved"] += 1
            await self._attempt(
                record,
                lane,
                self.clock.now(),
                0.0,
                AttemptOutcome.NOT_PROCESSED,
                "status query: the provider has no such transaction, past its lookup grace period; "
                "safe to fail over",
            )
            return "next"
        if resolution is NoAnswer.NOT_FOUND:
            why = (
                f"the provider does not show it yet ({age_s:.1f} s after sending; its lookups may lag "
                f"acceptance by up to {truth.not_found_grace_s:g} s)"
            )
        elif isinstance(resolution, ProviderTransaction):
            why = resolution.provider_message or "the provider cannot say yet"
        else:
            why = "its status query did not answer"
        record.status = TransactionStatus.UNKNOWN
        record.provider = lane.name
        record.reference = reference
        record.provider_reference = sent.provider_reference or record.provider_reference
        record.status_reason = f"outcome unknown: {why}"
        record.provider_message = (
            "outcome unknown: the provider may have processed it; not sent anywhere else, "
            "the reconciler keeps asking the provider"
        )
        record.next_check_at = self.clock.now() + RECONCILE_FIRST_CHECK_S
        return "done"

    @staticmethod
    def _reference_for(lane: ProviderLane, request: PaymentRequest) -> str:
        reference_for = getattr(lane.entry.adapter, "reference_for", None)
        return reference_for(request.idempotency_key) if callable(reference_for) else request.idempotency_key

    def money_truth(self, provider: str) -> MoneyTruth:
        """`provider`'s money-truth table (a conservative default for adapters without one)."""
        truth = getattr(self.registry.get(provider).adapter, "money_truth", None)
        return truth if isinstance(truth, MoneyTruth) else DEFAULT_MONEY_TRUTH

    async def query_status(
        self,
        provider: str,
        reference: str,
        provider_reference: str | None = None,
        *,
        context: PaymentContext | None = None,
        fresh: bool = False,
    ) -> ProviderTransaction | NoAnswer:
        """Ask the provider where a transaction stands, a few times; never raises.

        Goes through the lane's status cache (final answers kept for good, pending ones for the
        tunable `status_cache_ttl_s`) unless `fresh`: confirming a callback or resolving an
        ambiguous outcome must see the provider's present answer.
        """
        lane = self.lane(provider)
        if not fresh:
            cached = lane.status_cache.get(
                reference, self.clock.monotonic(), lane.tunables.status_cache_ttl_s
            )
            if cached is not None:
                return cached
        for attempt in range(1, RESOLVE_ATTEMPTS + 1):
            try:
                with self.clock.fail_after(lane.tunables.timeout_s):
                    txn = await lane.entry.adapter.status(reference, provider_reference, context=context)
                lane.status_cache.put(reference, txn, self.clock.monotonic())
                return txn
            except ProviderError as exc:
                if exc.code == NOT_FOUND_CODE:
                    return NoAnswer.NOT_FOUND
                logger.info("%s: status query %d for %s failed: %s", provider, attempt, reference, exc)
            except TimeoutError:
                logger.info("%s: status query %d for %s timed out", provider, attempt, reference)
            finally:
                await self.payments.flush()
            if attempt < RESOLVE_ATTEMPTS:
                await self.clock.sleep(lane.backoff.delay_s(attempt))
        return NoAnswer.UNRESOLVED

    async def _begin_send(
        self, record: PaymentRecord, lane: ProviderLane, started_at: float, reference: str
    ) -> PaymentAttempt:
        attempt = PaymentAttempt(
            provider=lane.name,
            started_at=started_at,
            latency_ms=0.0,
            outcome=AttemptOutcome.SENDING,
            reference=reference,
            detail="sending",
        )
        await self._store_attempt(record, attempt)
        return attempt

    async def _store_attempt(self, record: PaymentRecord, attempt: PaymentAttempt) -> None:
        """Append `attempt` durably: with the payment row itself if this is its first write
        (raises `_KeyTaken` when another writer holds the key), else as one more attempt."""
        submission = self._submissions.get(id(record))
        if submission is not None and submission.finished is not None:
            # Never reached by the paths that defer an outcome; kept so attempts stay in order.
            finished, submission.finished = submission.finished, None
            await self.payments.finish_attempt(record.idempotency_key, finished)
        if submission is None or submission.claimed:
            attempt.seq = await self.payments.begin_attempt(record.idempotency_key, attempt)
            record.attempts.append(attempt)
            return
        record.attempts.append(attempt)
        try:
            existing = await self.payments.create_payment(record)
        except BaseException:
            record.attempts.pop()
            raise
        if existing is not None:
            record.attempts.pop()
            raise _KeyTaken(existing)
        submission.claimed = True
        attempt.seq = len(record.attempts)  # `create_payment` numbers attempts by list order

    async def _finish_send(
        self,
        record: PaymentRecord,
        attempt: PaymentAttempt,
        latency_ms: float,
        outcome: AttemptOutcome,
        detail: str,
        *,
        code: str | None = None,
        txn: ProviderTransaction | None = None,
        final: bool = False,
    ) -> None:
        """Record how a sent attempt ended. A `final` outcome (the payment ends with it) is
        written by `_save` together with the payment, in one commit."""
        attempt.latency_ms = round(latency_ms, 3)
        attempt.outcome = outcome
        attempt.detail = detail
        if txn is not None:
            attempt.reference = txn.reference or attempt.reference
            attempt.provider_reference = txn.provider_reference
        attempt.provider_code = code if code is not None else (txn.provider_code if txn is not None else None)
        submission = self._submissions.get(id(record))
        if final and submission is not None:
            submission.finished = attempt
            return
        await self.payments.finish_attempt(record.idempotency_key, attempt)

    async def _attempt(
        self,
        record: PaymentRecord,
        lane: ProviderLane,
        started_at: float,
        latency_ms: float,
        outcome: AttemptOutcome,
        detail: str,
        *,
        code: str | None = None,
        txn: ProviderTransaction | None = None,
    ) -> None:
        """Append an attempt that sent nothing (a local rejection) or a status resolution."""
        attempt = PaymentAttempt(
            provider=lane.name,
            started_at=started_at,
            latency_ms=round(latency_ms, 3),
            outcome=outcome,
            reference=txn.reference if txn is not None else None,
            provider_reference=txn.provider_reference if txn is not None else None,
            provider_code=code if code is not None else (txn.provider_code if txn is not None else None),
            detail=detail,
        )
        await self._store_attempt(record, attempt)

    @staticmethod
    def _adopt(record: PaymentRecord, provider: str, txn: ProviderTransaction) -> None:
        record.provider = provider
        record.status = txn.status
        record.reference = txn.reference
        record.provider_reference = txn.provider_reference or record.provider_reference
        record.provider_code = txn.provider_code
        record.provider_message = txn.provider_message
        if txn.status is TransactionStatus.UNKNOWN:
            record.status_reason = txn.provider_message

    def _identifier_sink(self, provider: str) -> Callable[[str, str, str], None]:
        def sink(reference: str, kind: str, value: str) -> None:
            self.payments.record_identifier_soon(
                ProviderIdentifier(
                    provider=provider,
                    kind=kind,
                    value=value,
                    reference=reference,
                    idempotency_key=self._in_flight.get((provider, reference)),
                    recorded_at=self.clock.now(),
                )
            )

        return sink

    # --- after the fact -----------------------------------------------------------------

    async def get_payment(self, key_or_reference: str) -> PaymentRecord | None:
        return await self.payments.get_payment(key_or_reference)

    async def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "by_status": await self.payments.count_by_status(),
            "failed_over": self.failed_over,
        }
