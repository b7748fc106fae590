"""The load the scaler sizes for: transactions per minute across every ready replica.

Each replica measures only the payments it routes itself (`Telemetry.transactions_per_minute`)
and serves that figure at `GET /internal/load` (behind the same authorization as every other
route). The leader adds them up:

- `ClusterLoad` lists the Service's EndpointSlices (label `kubernetes.io/service-name`) and
  keeps the *ready* endpoints; when slices are forbidden or there are none, it falls back to the
  Pods that the Deployment's selector matches (Running, Ready, not being deleted). It asks every
  pod concurrently with a short timeout and sums the answers. A pod that does not answer is
  listed as missing, never counted as 0: the reading says how many answered and, when some did
  not, that the sum is a lower bound (`partial`).
- `LocalLoad` is a single process's own figure, in the same `ClusterLoadReading`.

`tpm` is null when nothing was measured: no pod answered, or every pod that answered has not
handled a payment yet (a scaler makes no decision on no data).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import httpx
from pydantic import BaseModel, Field

from mcp_autonomy.clock import Clock
from mcp_autonomy.timefmt import Timestamp

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from mcp_autonomy.config import Settings
    from mcp_autonomy.telemetry import Telemetry

LoadReadingSource = Literal["endpointslices", "pods", "local"]

LOAD_PATH: Final = "/internal/load"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
DEFAULT_POD_TIMEOUT_S: Final = 1.0
"""A pod that has not answered its load within this (real) time is reported missing."""
DEFAULT_REQUEST_TIMEOUT_S: Final = 5.0
"""Bound on one Kubernetes API request (real time)."""
REQUEST_GRACE_S: Final = 1.0
"""Beyond the client's own timeout, how long the worker thread is awaited before it is abandoned."""
LOCAL_POD: Final = "local"

_log = logging.getLogger(__name__)


class PodLoad(BaseModel):
    """One pod's answer, or why there was none."""

    pod: str = Field(description="Pod name when known, else its address")
    address: str = Field(description="`ip:port` asked (`local` for a single process)")
    answered: bool
    transactions_per_minute: float | None = Field(
        description="What the pod measured; null if it did not answer or has routed no payment yet"
    )
    error: str | None = None


class ClusterLoadReading(BaseModel):
    """Transactions per minute summed over the ready pods that answered."""

    tpm: float | None = Field(
        description="Sum over the pods that answered (a lower bound when partial); null when nothing was measured"
    )
    pods_total: int = Field(description="Ready pods found")
    pods_answered: int
    partial: bool = Field(description="Some ready pods did not answer: tpm counts only the others")
    per_pod: list[PodLoad]
    source: LoadReadingSource
    at: Timestamp = Field(description="When the reading was taken")


class ClusterLoadError(RuntimeError):
    """No pod list could be obtained; the message names the API requests that failed and why."""


@runtime_checkable
class LoadMeter(Protocol):
    """Measures the load the scaler sizes for."""

    async def measure(self) -> ClusterLoadReading: ...


class LocalLoad:
    """A single process: its own transactions per minute is the whole load."""

    def __init__(self, telemetry: Telemetry, clock: Clock, *, pod: str = LOCAL_POD) -> None:
        self._telemetry = telemetry
        self._clock = clock
        self._pod = pod

    async def measure(self) -> ClusterLoadReading:
        tpm = self._telemetry.transactions_per_minute()
        return ClusterLoadReading(
            tpm=tpm,
            pods_total=1,
            pods_answered=1,
            partial=False,
            per_pod=[PodLoad(pod=self._pod, address="local", answered=True, transactions_per_minute=tpm)],
            source="local",
            at=self._clock.now(),
        )


@dataclass(frozen=True)
class _Target:
    pod: str | None
    ip: str
    port: int

    @property
    def address(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


class _ApiUnavailable(Exception):
    """A list the fallback can replace: forbidden (403) or not served (404)."""


class ClusterLoad:
    """Sums `GET /internal/load` over the ready pods behind the Service (the leader's load)."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        service: str,
        deployment: str,
        port: int,
        clock: Clock,
        bearer_token: str | None = None,
        port_name: str | None = None,
        scheme: Literal["http", "https"] = "http",
        pod_timeout_s: float = DEFAULT_POD_TIMEOUT_S,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        """`port` is used when the slice names none and for the Pods fallback; `port_name` picks
        one of a slice's ports (else its first port)."""
        if not namespace or not service or not deployment:
            raise ValueError("namespace, service and deployment must be non-empty")
        if not 0 < port <= 65535:
            raise ValueError(f"port must be in [1, 65535], got {port}")
        if not pod_timeout_s > 0 or not request_timeout_s > 0:
            raise ValueError(
                f"pod_timeout_s and request_timeout_s must be > 0, got {pod_timeout_s}, {request_timeout_s}"
            )
        self._api_client = api_client
        self.namespace = namespace
        self.service = service
        self.deployment = deployment
        self.port = port
        self.port_name = port_name
        self.scheme = scheme
        self.pod_timeout_s = pod_timeout_s
        self.request_timeout_s = request_timeout_s
        self._clock = clock
        self._headers = {"Authorization": f"Bearer {bearer_token}"} if bearer_token else {}
        self._slices_unavailable_logged = False

    @classmethod
    def from_settings(cls, settings: Settings, api_client: ApiClient, clock: Clock) -> ClusterLoad:
        """The pods of `MCP_AUTONOMY_K8S_SERVICE` / `_DEPLOYMENT`, asked on `MCP_AUTONOMY_PORT` with the
        service credential every replica shares: `MCP_AUTONOMY_PEER_TOKEN` (scope autonomy:read),
        else the server's own bearer token."""
        secret = settings.peer_token or settings.bearer_token
        token = secret.get_secret_value() if secret is not None else None
        return cls(
            api_client,
            namespace=settings.k8s_namespace,
            service=settings.k8s_service,
            deployment=settings.k8s_deployment,
            port=settings.port,
            clock=clock,
            bearer_token=token,
        )

    async def measure(self) -> ClusterLoadReading:
        """Ask every ready pod now; raises `ClusterLoadError` only when no pod list can be had."""
        targets, source = await self._targets()
        results: dict[int, PodLoad] = {}
        if targets:
            async with (
                httpx.AsyncClient(timeout=self.pod_timeout_s, trust_env=False, headers=self._headers) as http,
                anyio.create_task_group() as tg,
            ):
                for index, target in enumerate(targets):

                    async def ask(index: int = index, target: _Target = target) -> None:
                        results[index] = await self._ask(http, target)

                    tg.start_soon(ask)
        per_pod = [results[index] for index in range(len(targets))]
        answered = [p for p in per_pod if p.answered]
        measured = [p.transactions_per_minute for p in answered if p.transactions_per_minute is not None]
        missing = [p for p in per_pod if not p.answered]
        if missing:
            _log.info(
                "cluster load: %d of %d ready pods did not answer (%s)",
                len(missing),
                len(per_pod),
                "; ".join(f"{p.pod}: {p.error}" for p in missing),
            )
        return ClusterLoadReading(
            tpm=sum(measured) if measured else None,
            pods_total=len(per_pod),
            pods_answered=len(answered),
            partial=bool(missing),
            per_pod=sorted(per_pod, key=lambda p: (p.pod, p.address)),
            source=source,
            at=self._clock.now(),
        )

    async def _ask(self, http: httpx.AsyncClient, target: _Target) -> PodLoad:
        name = target.pod or target.address
        url = f"{self.scheme}://{target.address}{LOAD_PATH}"
        try:
            response = await http.get(url)
            if response.status_code != 200:
                hint = {
                    401: " (do the pods share MCP_AUTONOMY_BEARER_TOKEN?)",
                    421: " (the pod refused its address as Host: set POD_IP from the downward API "
                    "(status.podIP), or add the address to MCP_AUTONOMY_ALLOWED_HOSTS)",
                }.get(response.status_code, "")
                raise ValueError(f"HTTP {response.status_code}{hint}")
            body = response.json()
            if not isinstance(body, dict):
                raise ValueError("the answer is not a JSON object")
            tpm = body.get("transactions_per_minute")
            if tpm is not None and (
                isinstance(tpm, bool) or not isinstance(tpm, int | float) or not 0 <= tpm < math.inf
            ):
                raise ValueError(f"transactions_per_minute={tpm!r} is not a number >= 0")
            reported = body.get("pod")
            pod = target.pod or (reported if isinstance(reported, str) and reported else target.address)
            return PodLoad(
                pod=pod,
                address=target.address,
                answered=True,
                transactions_per_minute=None if tpm is None else float(tpm),
            )
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except ValueError as exc:  # includes a body that is not JSON
            error = str(exc) or type(exc).__name__
        return PodLoad(
            pod=name, address=target.address, answered=False, transactions_per_minute=None, error=error
        )

    # --- which pods ---

    async def _targets(self) -> tuple[list[_Target], LoadReadingSource]:
        slice_problem: str
        try:
            slices = await self._list_slices()
        except _ApiUnavailable as exc:
            slice_problem = str(exc)
            if not self._slices_unavailable_logged:
                self._slices_unavailable_logged = True
                _log.info("cluster load: EndpointSlices unavailable (%s); using the Pods API", exc)
        else:
            if slices:
                return _dedupe([t for s in slices for t in self._slice_targets(s)]), "endpointslices"
            slice_problem = f"no EndpointSlice labelled {SERVICE_NAME_LABEL}={self.service}"
        try:
            return _dedupe(await self._pod_targets()), "pods"
        except _ApiUnavailable as exc:
            raise ClusterLoadError(
                f"cannot find the pods of {self.namespace}/{self.service}: EndpointSlices: {slice_problem}; "
                f"Pods API: {exc}"
            ) from None

    def _slice_targets(self, endpoint_slice: Mapping[str, Any]) -> list[_Target]:
        port = self._slice_port(endpoint_slice.get("ports") or [])
        targets = []
        for endpoint in endpoint_slice.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            # An unknown (absent) readiness is to be taken as ready, says the EndpointSlice API.
            if conditions.get("ready") is False:
                continue
            addresses = endpoint.get("addresses") or []
            if not addresses:
                continue
            ref = endpoint.get("targetRef") or {}
            pod = ref.get("name") if ref.get("kind") == "Pod" else None
            targets.append(_Target(pod=pod, ip=str(addresses[0]), port=port))
        return targets

    def _slice_port(self, ports: list[Mapping[str, Any]]) -> int:
        named = [p for p in ports if p.get("port")]
        if self.port_name is not None:
            named = [p for p in named if p.get("name") == self.port_name]
        return int(named[0]["port"]) if named else self.port

    async def _list_slices(self) -> list[dict[str, Any]]:
        from kubernetes.client import DiscoveryV1Api

        discovery = DiscoveryV1Api(self._api_client)
        listed = await self._get(
            "list endpointslices.discovery.k8s.io",
            lambda: discovery.list_namespaced_endpoint_slice(
                self.namespace,
                label_selector=f"{SERVICE_NAME_LABEL}={self.service}",
                _preload_content=False,
                _request_timeout=self.request_timeout_s,
            ),
        )
        return list(listed.get("items") or [])

    async def _pod_targets(self) -> list[_Target]:
        from kubernetes.client import AppsV1Api, CoreV1Api

        apps, core = AppsV1Api(self._api_client), CoreV1Api(self._api_client)
        deployment = await self._get(
            "get deployments.apps",
            lambda: apps.read_namespaced_deployment(
                self.deployment,
                self.namespace,
                _preload_content=False,
                _request_timeout=self.request_timeout_s,
            ),
        )
        selector = label_selector((deployment.get("spec") or {}).get("selector"))
        if not selector:
            raise _ApiUnavailable(f"Deployment {self.namespace}/{self.deployment} has no selector")
        listed = await self._get(
            "list pods",
            lambda: core.list_namespaced_pod(
                self.namespace,
                label_selector=selector,
                _preload_content=False,
                _request_timeout=self.request_timeout_s,
            ),
        )
        targets = []
        for pod in listed.get("items") or []:
            metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
            if metadata.get("deletionTimestamp") or status.get("phase") != "Running":
                continue
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
            )
            if ready and status.get("podIP"):
                targets.append(_Target(pod=metadata.get("name"), ip=str(status["podIP"]), port=self.port))
        return targets

    async def _get(self, what: str, request: Callable[[], Any]) -> dict[str, Any]:
        """One blocking GET in a worker thread; its JSON object. 403/404 become `_ApiUnavailable`."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        def call() -> dict[str, Any]:
            response = request()
            try:
                parsed = json.loads(response.data)
            finally:
                response.release_conn()
            if not isinstance(parsed, dict):
                raise ValueError(f"{what}: the API answered {type(parsed).__name__}, not an object")
            return parsed

        try:
            with anyio.fail_after(self.request_timeout_s + REQUEST_GRACE_S):
                return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except ApiException as exc:
            if exc.status in (403, 404):
                reason = "forbidden by RBAC" if exc.status == 403 else "not found"
                raise _ApiUnavailable(
                    f"{what} in namespace {self.namespace}: {exc.status} {reason}{_api_message(exc)}"
                ) from None
            raise ClusterLoadError(
                f"{what} in namespace {self.namespace}: {exc.status} {exc.reason}{_api_message(exc)}"
            ) from None
        except TimeoutError:
            raise ClusterLoadError(
                f"{what} in namespace {self.namespace}: no answer within {self.request_timeout_s:g} s"
            ) from None
        except (HTTPError, OSError, ValueError) as exc:
            raise ClusterLoadError(
                f"{what} in namespace {self.namespace}: {type(exc).__name__}: {exc}"
            ) from None


def label_selector(selector: Mapping[str, Any] | None) -> str:
    """A LabelSelector object (matchLabels, matchExpressions) as the `labelSelector` query string."""
    if not selector:
        return ""
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(sorted(expression.get("values") or []))
        if operator == "In":
            terms.append(f"{key} in ({values})")
        elif operator == "NotIn":
            terms.append(f"{key} notin ({values})")
        elif operator == "Exists":
            terms.append(str(key))
        elif operator == "DoesNotExist":
            terms.append(f"!{key}")
        else:
            raise ValueError(f"unknown label selector operator {operator!r}")
    return ",".join(terms)


def _dedupe(targets: list[_Target]) -> list[_Target]:
    """One entry per address (an endpoint may sit in two slices while they are being updated)."""
    seen: dict[tuple[str, int], _Target] = {}
    for target in targets:
        previous = seen.get((target.ip, target.port))
        if previous is None or (previous.pod is None and target.pod is not None):
            seen[(target.ip, target.port)] = target
    return list(seen.values())


def _api_message(exc: Any) -> str:
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        return ""
    return f" ({message})" if message else ""
