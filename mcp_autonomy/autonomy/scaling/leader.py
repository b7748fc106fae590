"""Leader election on a coordination.k8s.io/v1 Lease: one replica decides, the others follow.

Every replica runs a `LeaderElector`; the one holding the Lease makes the scaling decisions, the
others report who does. The algorithm is client-go's `leaderelection` (`tryAcquireOrRenew`),
re-implemented from its documented behaviour:

- the Lease spec is the record: `holderIdentity`, `leaseDurationSeconds`, `acquireTime`,
  `renewTime`, `leaseTransitions`;
- a missing Lease is created (`409 AlreadyExists`: someone else was first); a Lease held by
  another identity is taken only once it has expired, by a PUT carrying the resourceVersion just
  read (`409 Conflict`: someone else won the race); an empty holder (a released Lease) is free;
- expiry is judged by this process's own monotonic clock from the moment it last saw the record
  *change*, never by comparing the remote timestamps with a local clock: clocks of two nodes
  need not agree, elapsed time on one node does;
- the leader renews every retry period (first optimistically with the resourceVersion it holds,
  then by re-reading), and stops leading at once when it sees another holder, or when no renewal
  has succeeded for the renew deadline; since the renew deadline is shorter than the lease
  duration, it has stopped before anyone else may take over;
- on shutdown it releases the Lease (empty holder, duration 1 s) so a successor takes over on
  its next retry instead of waiting for the expiry.

`is_leader` is re-checked against the renew deadline each time it is read, so a replica whose
renewals stall (a hung API call) stops acting even before its loop notices. A single process
uses `SingleProcessElector`, which always leads, behind the same `Elector` interface.

The official client is blocking: every call runs in a worker thread, bounded by a timeout.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus
from pydantic import BaseModel, Field

from mcp_autonomy.clock import Clock, to_datetime
from mcp_autonomy.store import Fence

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from mcp_autonomy.config import Settings

DEFAULT_LEASE_DURATION_S: Final = 15
"""client-go's LeaseDuration: how long others wait, from the last change they saw, to take over."""
DEFAULT_RENEW_DEADLINE_S: Final = 10.0
"""client-go's RenewDeadline: how long the leader keeps leading without a successful renewal."""
DEFAULT_RETRY_PERIOD_S: Final = 2.0
"""client-go's RetryPeriod: how often every replica tries to acquire or renew."""
DEFAULT_JITTER_FACTOR: Final = 1.2
"""client-go's JitterFactor: a candidate waits retry x (1 + jitter x U[0, 1)) between tries."""
DEFAULT_REQUEST_TIMEOUT_S: Final = 5.0
"""Bound on one API request (real time: it is real I/O)."""
LOCAL_IDENTITY: Final = "local"
RELEASED_LEASE_DURATION_S: Final = 1
"""What a release writes (as client-go): the holder is empty, so the duration hardly matters."""
REQUEST_GRACE_S: Final = 1.0
"""Beyond the client's own timeout, how long the worker thread is awaited before it is abandoned."""
_MICROTIME: Final = "%Y-%m-%dT%H:%M:%S.%fZ"
_LEASES_PATH: Final = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
_LEASE_PATH: Final = _LEASES_PATH + "/{name}"

_log = logging.getLogger(__name__)


def pod_identity(pod_name: str | None = None) -> str:
    """`<pod name>_<random>`: unique even when a restarted pod keeps its name.

    The pod name is `pod_name`, else `$POD_NAME`, else `$HOSTNAME`, else the host name.
    """
    name = pod_name or os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{name}_{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaderElectionConfig:
    """Where the Lease is and how fast it moves; defaults are client-go's (15 s, 10 s, 2 s)."""

    lease_name: str
    namespace: str
    lease_duration_s: int = DEFAULT_LEASE_DURATION_S
    renew_deadline_s: float = DEFAULT_RENEW_DEADLINE_S
    retry_period_s: float = DEFAULT_RETRY_PERIOD_S
    jitter_factor: float = DEFAULT_JITTER_FACTOR
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.lease_name or not self.namespace:
            raise ValueError("lease_name and namespace must be non-empty")
        if not self.retry_period_s > 0:
            raise ValueError(f"retry_period_s must be > 0, got {self.retry_period_s}")
        if not 0 <= self.jitter_factor <= 10:
            raise ValueError(f"jitter_factor must be in [0, 10], got {self.jitter_factor}")
        if not self.renew_deadline_s > self.retry_period_s * max(1.0, self.jitter_factor):
            raise ValueError(
                f"renew_deadline_s must be > retry_period_s x max(1, jitter_factor) = "
                f"{self.retry_period_s * max(1.0, self.jitter_factor):g}, got {self.renew_deadline_s}"
            )
        if not self.lease_duration_s > self.renew_deadline_s:
            raise ValueError(
                f"lease_duration_s must be > renew_deadline_s = {self.renew_deadline_s:g} (a leader must stop "
                f"before others may take over), got {self.lease_duration_s}"
            )
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")

    @classmethod
    def scaled(cls, lease_name: str, namespace: str, lease_duration_s: int) -> LeaderElectionConfig:
        """client-go's proportions (lease 15 : renew deadline 10 : retry 2) for another lease duration."""
        ratio = lease_duration_s / DEFAULT_LEASE_DURATION_S
        return cls(
            lease_name=lease_name,
            namespace=namespace,
            lease_duration_s=lease_duration_s,
            renew_deadline_s=DEFAULT_RENEW_DEADLINE_S * ratio,
            retry_period_s=DEFAULT_RETRY_PERIOD_S * ratio,
            request_timeout_s=min(DEFAULT_REQUEST_TIMEOUT_S, DEFAULT_RENEW_DEADLINE_S * ratio / 2),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> LeaderElectionConfig:
        """The Lease `MCP_AUTONOMY_K8S_LEASE_NAME` in `MCP_AUTONOMY_K8S_NAMESPACE`, scaled to its duration."""
        return cls.scaled(settings.k8s_lease_name, settings.k8s_namespace, settings.k8s_lease_duration_s)


@dataclass(frozen=True)
class LeaseRecord:
    """The election record held in a Lease's spec (times as the API server returned them)."""

    holder: str
    """Empty when nobody holds the Lease (never held, or released)."""
    lease_duration_s: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration_s=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration_s,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


class LeaderStatus(BaseModel):
    """Who leads, as this replica sees it (part of `get_status`)."""

    identity: str = Field(description="This replica's identity in the election")
    is_leader: bool
    leader: str | None = Field(description="The holder as last observed; null when nobody holds the lease")
    lease_name: str | None = Field(description="null for a single process (no election)")
    lease_namespace: str | None
    last_renew_at: float | None = Field(
        description="Epoch seconds of this replica's last successful acquire or renewal"
    )
    transitions: int | None = Field(description="leaseTransitions as last observed")
    observed_change_at: float | None = Field(
        None, description="Epoch seconds when this replica last saw the lease record change"
    )
    last_error: str | None = Field(None, description="The last failed API request, if the last try failed")


StartedLeading = Callable[[], object]
StoppedLeading = Callable[[str], object]
"""Called with the reason: `released`, `stopped`, `another holder observed: ...`, `renewal failed ...`."""
NewLeader = Callable[[str | None], object]


@runtime_checkable
class Elector(Protocol):
    """Who may act: `is_leader` is read before every decision and every write."""

    @property
    def identity(self) -> str: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_identity(self) -> str | None: ...

    def status(self) -> LeaderStatus: ...

    def fence(self) -> Fence | None:
        """What a leader write carries to a shared store, checked in the write's transaction; None
        when there is nothing to check (a single process, a Lease without a fencing epoch) or when
        this replica does not lead (an elector with an epoch)."""
        ...

    def step_down(self, reason: str) -> None:
        """Stop leading now: a fenced write raised `LeadershipLost`, so a newer leader exists."""
        ...

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Take part in the election until cancelled or `stop()`ped; started after the first try."""
        ...

    def stop(self, *, release: bool = True) -> None:
        """End `run()`; `release=False` leaves the lease to expire, as a killed process would."""
        ...


def _notify(hook: Callable[..., object] | None, *args: Any) -> None:
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:  # a hook must not break the election
        _log.exception("leader election hook %r failed", hook)


class _Conflict(Exception):
    """A write met a concurrent writer (409): someone else got there first."""


class LeaderElector:
    """Campaigns for, holds and releases one Lease (see the module docstring for the rules)."""

    def __init__(
        self,
        api_client: ApiClient,
        config: LeaderElectionConfig,
        *,
        clock: Clock,
        identity: str | None = None,
        rng: random.Random | None = None,
        on_started_leading: StartedLeading | None = None,
        on_stopped_leading: StoppedLeading | None = None,
        on_new_leader: NewLeader | None = None,
    ) -> None:
        self._api_client = api_client
        self.config = config
        self._clock = clock
        self._identity = identity or pod_identity()
        self._rng = rng or random.Random()
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self.on_new_leader = on_new_leader
        self._lease: dict[str, Any] | None = None
        """The Lease object last read or written: the resourceVersion of the next write."""
        self._observed: LeaseRecord | None = None
        self._observed_at_mono: float | None = None
        self._observed_at: float | None = None
        self._leading = False
        self._renewed_at_mono: float | None = None
        self._renewed_at: float | None = None
        self._last_error: str | None = None
        self._scope: anyio.CancelScope | None = None
        self._release_on_exit = True
        self._attempted: anyio.Event | None = None
        self.attempts = 0
        """Completed tries to acquire or renew (each is one round of API requests)."""

    # --- the Elector interface ---

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def is_leader(self) -> bool:
        """True while leading and the last successful renewal is within the renew deadline."""
        return (
            self._leading
            and self._renewed_at_mono is not None
            and self._clock.monotonic() - self._renewed_at_mono < self.config.renew_deadline_s
        )

    @property
    def leader_identity(self) -> str | None:
        """The holder of the lease as last observed (None when nobody holds it)."""
        if self._observed is None or not self._observed.holder:
            return None
        return self._observed.holder

    def status(self) -> LeaderStatus:
        return LeaderStatus(
            identity=self._identity,
            is_leader=self.is_leader,
            leader=self.leader_identity,
            lease_name=self.config.lease_name,
            lease_namespace=self.config.namespace,
            last_renew_at=self._renewed_at,
            transitions=self._observed.transitions if self._observed is not None else None,
            observed_change_at=self._observed_at,
            last_error=self._last_error,
        )

    def fence(self) -> Fence | None:
        """None: a Lease has no fencing epoch (the renew deadline keeps two leaders apart)."""
        return None

    def step_down(self, reason: str) -> None:
        """Stop leading until the next successful renewal."""
        self._step_down(reason)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if self._scope is not None:
            raise RuntimeError(f"elector {self._identity} is already running")
        self._release_on_exit = True
        scope = self._scope = anyio.CancelScope()
        try:
            with scope:
                await self._try()
                task_status.started()
                while True:
                    await self._clock.sleep(self._next_wait_s())
                    await self._try()
        finally:
            self._scope = None
            with anyio.CancelScope(shield=True):
                if self._release_on_exit:
                    await self._release()
                self._step_down("stopped")

    def stop(self, *, release: bool = True) -> None:
        self._release_on_exit = release
        if self._scope is not None:
            self._scope.cancel()

    async def wait_attempts(self, count: int) -> None:
        """Return once `attempts >= count` (lets a caller await real I/O, not guess a delay)."""
        while self.attempts < count:
            if self._attempted is None:
                self._attempted = anyio.Event()
            await self._attempted.wait()

    # --- one round ---

    def _next_wait_s(self) -> float:
        retry = self.config.retry_period_s
        if self._leading:
            return retry
        return retry * (1.0 + self.config.jitter_factor * self._rng.random())

    async def _try(self) -> None:
        started_mono, started_at = self._clock.monotonic(), self._clock.now()
        try:
            held = await self._try_acquire_or_renew(started_at)
            self._last_error = None
        except _Conflict as exc:
            held, self._last_error = False, str(exc)
            _log.debug("lease %s: %s", self._describe(), exc)
        except Exception as exc:  # API down, forbidden, bad answer: the next try may do better
            held, self._last_error = False, _short(exc)
            _log.warning("lease %s: try to acquire or renew failed: %s", self._describe(), self._last_error)
        if held:
            # The deadline counts from when the request was sent: the lease may be older than the answer.
            self._renewed_at_mono, self._renewed_at = started_mono, started_at
            if not self._leading:
                self._leading = True
                _log.info("lease %s: %s started leading", self._describe(), self._identity)
                _notify(self.on_started_leading)
        elif self._leading:
            holder = self.leader_identity
            if holder != self._identity:
                self._step_down(f"another holder observed: {holder or 'nobody'}")
            elif not self.is_leader:
                self._step_down(
                    f"renewal failed for {self.config.renew_deadline_s:g} s (renew deadline): "
                    f"{self._last_error or 'lease held by another'}"
                )
        self.attempts += 1
        if self._attempted is not None:
            self._attempted.set()
            self._attempted = None

    async def _try_acquire_or_renew(self, now: float) -> bool:
        """client-go's tryAcquireOrRenew: True when this replica holds the lease afterwards."""
        stamp = _microtime(now)
        record = LeaseRecord(
            holder=self._identity,
            lease_duration_s=self.config.lease_duration_s,
            acquire_time=stamp,
            renew_time=stamp,
            transitions=0,
        )
        # 1. The leader renews optimistically with the resourceVersion it holds (one request).
        observed = self._observed
        if self._holds_observed() and self._observed_valid() and self._lease is not None:
            assert observed is not None
            renewal = replace(record, acquire_time=observed.acquire_time, transitions=observed.transitions)
            try:
                await self._write(renewal)
                return True
            except Exception as exc:  # a race or an error: the slow path finds out which
                _log.debug("lease %s: optimistic renewal failed (%s), re-reading", self._describe(), exc)
        # 2. Read the lease, or create it.
        lease = await self._read()
        if lease is None:
            await self._create(record)
            return True
        # 3. Note a change (expiry counts from here), and respect a valid foreign holder.
        self._lease = lease
        self._observe(LeaseRecord.from_lease(lease))
        observed = self._observed
        assert observed is not None
        if observed.holder and self._observed_valid() and not self._holds_observed():
            return False
        # 4. Renew (keeping acquireTime) or take over (one more transition).
        if self._holds_observed():
            record = replace(record, acquire_time=observed.acquire_time, transitions=observed.transitions)
        else:
            record = replace(record, transitions=observed.transitions + 1)
        await self._write(record)
        return True

    def _holds_observed(self) -> bool:
        return self._observed is not None and self._observed.holder == self._identity

    def _observed_valid(self) -> bool:
        if self._observed is None or self._observed_at_mono is None:
            return False
        return self._observed_at_mono + self._observed.lease_duration_s > self._clock.monotonic()

    def _observe(self, record: LeaseRecord) -> None:
        if record == self._observed:
            return
        previous = self._observed.holder if self._observed is not None else None
        self._observed = record
        self._observed_at_mono, self._observed_at = self._clock.monotonic(), self._clock.now()
        if record.holder != previous:
            _notify(self.on_new_leader, record.holder or None)

    def _step_down(self, reason: str) -> None:
        if not self._leading:
            return
        self._leading = False
        _log.info("lease %s: %s stopped leading (%s)", self._describe(), self._identity, reason)
        _notify(self.on_stopped_leading, reason)

    async def _release(self) -> None:
        """Hand the lease over now: empty holder, so the next candidate's try takes it."""
        if not self._holds_observed() or self._lease is None:
            return
        assert self._observed is not None
        # Stop acting before the lease is handed over: never two leaders, even for one response.
        self._step_down("released")
        stamp = _microtime(self._clock.now())
        released = LeaseRecord(
            holder="",
            lease_duration_s=RELEASED_LEASE_DURATION_S,
            acquire_time=stamp,
            renew_time=stamp,
            transitions=self._observed.transitions,
        )
        try:
            try:
                await self._write(released)
            except _Conflict:
                # Written since we last looked: release only if it is still ours.
                lease = await self._read()
                if lease is None or LeaseRecord.from_lease(lease).holder != self._identity:
                    return
                self._lease = lease
                await self._write(released)
            _log.info("lease %s: %s released it", self._describe(), self._identity)
        except Exception as exc:  # the lease then expires after its duration instead
            _log.warning("lease %s: release failed: %s", self._describe(), _short(exc))

    # --- API requests ---

    def _describe(self) -> str:
        return f"{self.config.namespace}/{self.config.lease_name}"

    async def _read(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return await self._request("GET", _LEASE_PATH)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def _create(self, record: LeaseRecord) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.config.lease_name, "namespace": self.config.namespace},
            "spec": record.to_spec(),
        }
        try:
            created = await self._request("POST", _LEASES_PATH, body)
        except ApiException as exc:
            if exc.status == 409:
                raise _Conflict("lease created by another replica first (409 AlreadyExists)") from None
            raise
        self._lease = created
        self._observe(LeaseRecord.from_lease(created))

    async def _write(self, record: LeaseRecord) -> None:
        """PUT `record` with the resourceVersion last seen; `_Conflict` when someone wrote since."""
        from kubernetes.client.exceptions import ApiException

        assert self._lease is not None
        body = {**self._lease, "spec": record.to_spec()}
        try:
            written = await self._request("PUT", _LEASE_PATH, body)
        except ApiException as exc:
            if exc.status == 409:
                raise _Conflict("lease changed by another replica since it was read (409 Conflict)") from None
            raise
        self._lease = written
        self._observe(LeaseRecord.from_lease(written))

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One blocking request in a worker thread; the answer's JSON object.

        The generated `CoordinationV1Api` methods are not used for writes: they turn the body into
        a model and back, which writes a whole-second MicroTime without its fractional digits,
        a form the API server's RFC 3339 micro parser rejects. The JSON sent here is as written.
        """
        from kubernetes.client.exceptions import ApiException

        client = self._api_client
        path_params = {"namespace": self.config.namespace, "name": self.config.lease_name}
        headers = {"Accept": "application/json", "Content-Type": "application/json"}

        def call() -> dict[str, Any]:
            params = client.param_serialize(
                method=method,
                resource_path=path,
                path_params=path_params,
                header_params=dict(headers),
                body=body,
                auth_settings=["BearerToken"],
            )
            response = client.call_api(*params, _request_timeout=self.config.request_timeout_s)
            response.read()  # type: ignore[no-untyped-call]
            if not 200 <= response.status <= 299:
                raise ApiException.from_response(http_resp=response, body=None, data=None)
            parsed = json.loads(response.data or b"null")
            if not isinstance(parsed, dict):
                raise ValueError(f"the API answered {type(parsed).__name__}, not an object")
            return parsed

        # The client's own timeout bounds the thread; the grace covers a client that ignores it.
        with anyio.fail_after(self.config.request_timeout_s + REQUEST_GRACE_S):
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)


class SingleProcessElector:
    """A process alone always leads: the `Elector` of the local backend (no API, no lease)."""

    def __init__(
        self,
        *,
        on_started_leading: StartedLeading | None = None,
        on_stopped_leading: StoppedLeading | None = None,
    ) -> None:
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self._scope: anyio.CancelScope | None = None

    @property
    def identity(self) -> str:
        return LOCAL_IDENTITY

    @property
    def is_leader(self) -> bool:
        return True

    @property
    def leader_identity(self) -> str | None:
        return LOCAL_IDENTITY

    def status(self) -> LeaderStatus:
        return LeaderStatus(
            identity=LOCAL_IDENTITY,
            is_leader=True,
            leader=LOCAL_IDENTITY,
            lease_name=None,
            lease_namespace=None,
            last_renew_at=None,
            transitions=None,
        )

    def fence(self) -> Fence | None:
        """None: a process alone has no other leader to be fenced against."""
        return None

    def step_down(self, reason: str) -> None:
        """Nothing to do: no other replica can have taken over."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        scope = self._scope = anyio.CancelScope()
        try:
            with scope:
                _notify(self.on_started_leading)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._scope = None
            _notify(self.on_stopped_leading, "stopped")

    def stop(self, *, release: bool = True) -> None:
        if self._scope is not None:
            self._scope.cancel()


def _microtime(epoch_s: float) -> str:
    """A MicroTime as the API server writes it: RFC 3339, six fractional digits, `Z`."""
    return to_datetime(epoch_s).strftime(_MICROTIME)


def _short(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status is not None and reason is not None:
        body = getattr(exc, "body", None)
        message = ""
        if body:
            try:
                message = str(json.loads(body).get("message", ""))
            except (ValueError, AttributeError):
                message = ""
        return f"{status} {reason}" + (f": {message}" if message else "")
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
