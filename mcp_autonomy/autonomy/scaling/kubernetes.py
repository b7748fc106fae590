"""The Kubernetes backend: the replica count of this server's own Deployment.

`read()` asks the Deployment's `scale` subresource for the desired replicas and the Deployment's
status for the ready ones. `set_desired(n)` writes the `scale` subresource - unless an
autoscaling/v2 HorizontalPodAutoscaler targets the Deployment and the HPA mode is `floor` (the
default): then two controllers would fight over `spec.replicas`, so the backend moves the HPA's
`minReplicas` to `n` instead (clamped to the HPA's `maxReplicas`, and to 1 since an HPA cannot
have a floor of 0) and lets the HPA scale. Mode `ignore` writes the Deployment anyway and warns.

In floor mode `read()` reports the HPA's current `minReplicas` as `desired` (the Deployment's
own count is in `deployment_replicas`): that is what this backend sets, so a decision is compared
with it, and a floor already where the policy wants it is a hold, not a scale (the HPA may hold
more replicas than the floor because of its own metrics; that is not ours to undo).

Writes are bounded by leadership when the backend is bound to a `LeaderElector` (explicitly, or
the elector built on the same `ApiClient`): `set_desired` takes the elector's current
`LeadershipTerm` and checks it before every request of the change, and each request's worker
thread enters the term right before it sends, so nothing is sent once this replica stops
leading; each request's timeout is bounded by the election's safety margin (lease duration minus
renew deadline), and the elector waits for the term's requests in flight before it releases the
Lease. A change cut short by lost leadership raises `ScaleLeadershipLost`.

Every write is a compare-and-swap: it carries the resourceVersion just read, and a 409 Conflict
(someone else wrote in between) re-reads and tries again, a bounded number of times. Failures
become a `ScaleBackendError` that says what to fix: the missing RBAC rule on a 403, the
namespace and Deployment settings on a 404. Credentials never appear in a message.

The official client is blocking, so every call runs in a worker thread, bounded by the request
timeout. It is imported on first use: the local backend does not pay for it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import anyio
import anyio.to_thread
from pydantic import Field

from mcp_autonomy.autonomy.scaling.base import ReplicaState, ScaleBackendError, ScaleLeadershipLost
from mcp_autonomy.autonomy.scaling.leader import (
    LeaderElector,
    LeadershipTerm,
    NotLeading,
    check_kubernetes_client,
    elector_for,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration, V2HorizontalPodAutoscaler

    from mcp_autonomy.config import Settings

HpaMode = Literal["floor", "ignore"]
DEFAULT_HPA_MODE: Final[HpaMode] = "floor"
DEFAULT_REQUEST_TIMEOUT_S: Final = 10.0
DEFAULT_MAX_CONFLICT_ATTEMPTS: Final = 5
"""Writes tried before giving up when every one of them meets a concurrent writer (409)."""
REQUEST_GRACE_S: Final = 1.0
"""Beyond the client's own timeout, how long the worker thread is awaited before it is abandoned."""
HPA_MIN_FLOOR: Final = 1
"""An HPA's lowest minReplicas (0 needs the alpha HPAScaleToZero gate, not assumed)."""
SERVICE_ACCOUNT_TOKEN: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
IN_CLUSTER_HOST_ENV: Final = "KUBERNETES_SERVICE_HOST"

_log = logging.getLogger(__name__)
_BEARER = re.compile(r"Bearer\s+\S+", re.IGNORECASE)
_T = TypeVar("_T")


class KubernetesReplicaState(ReplicaState):
    """A `ReplicaState` that also says how the count was written and what to know about it."""

    via: str = Field(
        "deployments/scale",
        description="What set_desired writes: `deployments/scale`, or `horizontalpodautoscalers/NAME` (floor)",
    )
    hpa: str | None = Field(None, description="`namespace/name` of the HPA targeting the Deployment, if any")
    deployment_replicas: int | None = Field(
        None, description="The Deployment's spec.replicas (equal to `desired` unless floor mode has an HPA)"
    )
    hpa_min_replicas: int | None = Field(None, description="The HPA's minReplicas (floor mode: `desired`)")
    hpa_max_replicas: int | None = Field(None, description="The HPA's maxReplicas")
    notes: list[str] = Field(default_factory=list, description="Clamps and warnings of the last write")


@dataclass(frozen=True)
class _Operation:
    """One API request, described the way RBAC names it (for error messages)."""

    verb: str
    resource: str
    group: str
    namespace: str
    name: str = ""

    def rule(self) -> str:
        return f'{{apiGroups: ["{self.group}"], resources: ["{self.resource}"], verbs: ["{self.verb}"]}}'

    def describe(self) -> str:
        target = f"{self.namespace}/{self.name}" if self.name else f"namespace {self.namespace}"
        return f"{self.verb} {self.resource} ({target})"


@dataclass
class _Notes:
    """What a write wants the caller to know: routine facts, and warnings (also logged as such)."""

    texts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def info(self, text: str) -> None:
        self.texts.append(text)

    def warn(self, text: str) -> None:
        self.texts.append(text)
        self.warnings.append(text)

    def log(self) -> None:
        for text in self.texts:
            _log.log(
                logging.WARNING if text in self.warnings else logging.INFO,
                "kubernetes scale backend: %s",
                text,
            )


class _Conflict(Exception):
    """A 409 Conflict (or the HPA vanished): re-read and try again."""


class KubernetesScaleBackend:
    """Reads and sets the replicas of one Deployment through the Kubernetes API."""

    name = "kubernetes"

    def __init__(
        self,
        *,
        namespace: str,
        deployment: str,
        hpa_mode: HpaMode = DEFAULT_HPA_MODE,
        api_client: ApiClient | None = None,
        configuration: Configuration | None = None,
        kubeconfig: str | None = None,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
        max_conflict_attempts: int = DEFAULT_MAX_CONFLICT_ATTEMPTS,
        leadership: LeaderElector | None = None,
    ) -> None:
        """Credentials, first found: `api_client`, `configuration`, `kubeconfig` (a file), the
        pod's ServiceAccount when running in a cluster, else `$KUBECONFIG` or `~/.kube/config`.

        `leadership` bounds `set_desired` by that elector's term (default: the elector built on
        this backend's `ApiClient`, if any; without one, writes are not bounded). Raises
        `KubernetesClientTooOld` when the installed client is older than the election needs.
        """
        if hpa_mode not in ("floor", "ignore"):
            raise ValueError(f"hpa_mode must be floor or ignore, got {hpa_mode!r}")
        if not request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s}")
        if max_conflict_attempts < 1:
            raise ValueError(f"max_conflict_attempts must be >= 1, got {max_conflict_attempts}")
        if not namespace or not deployment:
            raise ValueError("namespace and deployment must be non-empty")
        check_kubernetes_client()  # at start-up: the Lease election beside this backend needs it
        self.namespace = namespace
        self.deployment = deployment
        self.hpa_mode: HpaMode = hpa_mode
        self.request_timeout_s = request_timeout_s
        self.max_conflict_attempts = max_conflict_attempts
        self._api_client = api_client
        self._configuration = configuration
        self._kubeconfig = kubeconfig or None
        self._leadership = leadership
        self.last_notes: tuple[str, ...] = ()
        """The notes of the last `set_desired` (also in its returned state and the log)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> KubernetesScaleBackend:
        """The backend the `MCP_AUTONOMY_K8S_*` settings describe."""
        return cls(
            namespace=settings.k8s_namespace,
            deployment=settings.k8s_deployment,
            hpa_mode=settings.k8s_hpa_mode,
            kubeconfig=settings.k8s_kubeconfig,
            request_timeout_s=settings.k8s_request_timeout_s,
        )

    @property
    def target(self) -> str:
        return f"{self.namespace}/deployment/{self.deployment}"

    def bind_leadership(self, elector: LeaderElector | None) -> None:
        """Bound `set_desired` by `elector`'s term (None: the elector sharing this client, if any)."""
        self._leadership = elector

    def leadership(self) -> LeaderElector | None:
        """The elector bounding writes: the bound one, else the one built on this backend's client."""
        if self._leadership is not None:
            return self._leadership
        return elector_for(self._api_client) if self._api_client is not None else None

    def request_timeout_for_requests_s(self) -> float:
        """Each request's timeout: the configured one, bounded by the election's safety margin."""
        elector = self.leadership()
        if elector is None:
            return self.request_timeout_s
        return min(self.request_timeout_s, elector.config.safety_margin_s)

    # --- the ScaleBackend protocol ---

    async def read(self) -> KubernetesReplicaState:
        desired, _ = await self._read_scale()
        ready = await self._read_ready()
        hpa = await self._find_hpa(_Notes()) if self.hpa_mode == "floor" else None
        state = KubernetesReplicaState(
            backend=self.name,
            target=self.target,
            desired=desired,
            ready=ready,
            external_effect=True,
            deployment_replicas=desired,
        )
        if hpa is None or hpa.spec is None:
            return state
        floor = hpa.spec.min_replicas if hpa.spec.min_replicas is not None else HPA_MIN_FLOOR
        return state.model_copy(
            update={
                "desired": floor,
                "via": f"horizontalpodautoscalers/{_name_of(hpa)}",
                "hpa": self._hpa_name(hpa),
                "hpa_min_replicas": floor,
                "hpa_max_replicas": hpa.spec.max_replicas,
            }
        )

    async def set_desired(self, replicas: int) -> KubernetesReplicaState:
        """Set the replicas (floor mode with an HPA: its minReplicas); bounded by leadership when bound."""
        if replicas < 0:
            raise ScaleBackendError(f"replicas must be >= 0, got {replicas}")
        term = self._current_term(f"set {replicas} replicas on {self.target}")
        for _ in range(self.max_conflict_attempts):
            try:
                via, hpa, notes = await self._attempt(replicas, term)
            except _Conflict:
                continue
            notes.log()
            self.last_notes = tuple(notes.texts)
            state = await self.read()
            return state.model_copy(update={"via": via, "hpa": hpa, "notes": notes.texts})
        raise ScaleBackendError(
            f"lost the optimistic-concurrency race {self.max_conflict_attempts} times in a row setting "
            f"{replicas} replicas on {self.namespace}/{self.deployment}: another writer (an HPA, kubectl, "
            f"another replica of this server?) kept changing it between read and write"
        )

    def _current_term(self, what: str) -> LeadershipTerm | None:
        """The leadership term bounding a change (None: not bound); `ScaleLeadershipLost` when not leading."""
        elector = self.leadership()
        if elector is None:
            return None
        term = elector.term()
        if term is None:
            raise ScaleLeadershipLost(
                f"not sent: {what}: this replica ({elector.identity}) does not lead the scaler "
                f"(leader: {elector.leader_identity or 'nobody'}); only the Lease holder writes"
            )
        return term

    async def _attempt(self, replicas: int, term: LeadershipTerm | None) -> tuple[str, str | None, _Notes]:
        """One read-decide-write round: (what was written, the HPA if any, notes); `_Conflict` on a race."""
        notes = _Notes()
        hpa = await self._find_hpa(notes, term)
        if hpa is not None and self.hpa_mode == "floor":
            await self._set_hpa_floor(hpa, replicas, notes, term)
            return f"horizontalpodautoscalers/{_name_of(hpa)}", self._hpa_name(hpa), notes
        if hpa is not None:
            notes.warn(
                f"HPA {self._hpa_name(hpa)} also scales this Deployment and may undo this change on its "
                f"next sync (MCP_AUTONOMY_K8S_HPA_MODE=ignore; `floor` moves its minReplicas instead)"
            )
        await self._write_scale(replicas, term)
        return "deployments/scale", self._hpa_name(hpa) if hpa is not None else None, notes

    # --- reads and writes ---

    async def _read_scale(self, term: LeadershipTerm | None = None) -> tuple[int, str]:
        """(spec.replicas, resourceVersion) of the Deployment's scale subresource."""
        from kubernetes.client import AppsV1Api

        apps = AppsV1Api(await self._client())
        op = _Operation("get", "deployments/scale", "apps", self.namespace, self.deployment)
        timeout_s = self.request_timeout_for_requests_s()
        scale = await self._call(
            op,
            lambda: apps.read_namespaced_deployment_scale(
                self.deployment, self.namespace, _request_timeout=timeout_s
            ),
            term=term,
        )
        desired = scale.spec.replicas if scale.spec and scale.spec.replicas is not None else 0
        version = scale.metadata.resource_version if scale.metadata else None
        return desired, version or ""

    async def _read_ready(self) -> int:
        from kubernetes.client import AppsV1Api

        apps = AppsV1Api(await self._client())
        op = _Operation("get", "deployments", "apps", self.namespace, self.deployment)
        timeout_s = self.request_timeout_for_requests_s()
        deployment = await self._call(
            op,
            lambda: apps.read_namespaced_deployment(
                self.deployment, self.namespace, _request_timeout=timeout_s
            ),
        )
        status = deployment.status
        return (status.ready_replicas or 0) if status is not None else 0

    async def _write_scale(self, replicas: int, term: LeadershipTerm | None) -> None:
        from kubernetes.client import AppsV1Api

        current, version = await self._read_scale(term)
        if current == replicas:
            return
        apps = AppsV1Api(await self._client())
        op = _Operation("patch", "deployments/scale", "apps", self.namespace, self.deployment)
        body = {"metadata": {"resourceVersion": version}, "spec": {"replicas": replicas}}
        timeout_s = self.request_timeout_for_requests_s()
        await self._call(
            op,
            lambda: apps.patch_namespaced_deployment_scale(
                self.deployment, self.namespace, body, _request_timeout=timeout_s
            ),
            term=term,
        )
        _log.info("kubernetes scale backend: %s replicas %d -> %d", self.target, current, replicas)

    async def _find_hpa(
        self, notes: _Notes, term: LeadershipTerm | None = None
    ) -> V2HorizontalPodAutoscaler | None:
        """The autoscaling/v2 HPA whose scaleTargetRef is this Deployment, if any."""
        from kubernetes.client import AutoscalingV2Api

        autoscaling = AutoscalingV2Api(await self._client())
        op = _Operation("list", "horizontalpodautoscalers", "autoscaling", self.namespace)
        timeout_s = self.request_timeout_for_requests_s()
        try:
            listed = await self._call(
                op,
                lambda: autoscaling.list_namespaced_horizontal_pod_autoscaler(
                    self.namespace, _request_timeout=timeout_s
                ),
                term=term,
            )
        except ScaleBackendError as exc:
            if self.hpa_mode == "floor":
                raise ScaleBackendError(
                    f"{exc} (MCP_AUTONOMY_K8S_HPA_MODE=floor must see HPAs; set it to `ignore` to scale "
                    f"the Deployment directly)"
                ) from None
            notes.warn(f"could not check for an HPA targeting the Deployment: {exc}")
            return None
        targeting = [h for h in listed.items if self._targets_deployment(h)]
        targeting.sort(key=_name_of)
        if len(targeting) > 1:
            names = ", ".join(self._hpa_name(h) for h in targeting)
            notes.warn(
                f"several HPAs target this Deployment ({names}); Kubernetes disables them all; using the first"
            )
        return targeting[0] if targeting else None

    def _targets_deployment(self, hpa: V2HorizontalPodAutoscaler) -> bool:
        ref = hpa.spec.scale_target_ref if hpa.spec else None
        if ref is None or ref.kind != "Deployment" or ref.name != self.deployment:
            return False
        return ref.api_version is None or ref.api_version.split("/")[0] in ("apps", "extensions")

    async def _set_hpa_floor(
        self, hpa: V2HorizontalPodAutoscaler, replicas: int, notes: _Notes, term: LeadershipTerm | None
    ) -> None:
        """Move the HPA's minReplicas to `replicas` (clamped), compare-and-swap on its resourceVersion."""
        from kubernetes.client import AutoscalingV2Api

        assert hpa.metadata is not None and hpa.spec is not None
        name = _name_of(hpa)
        ceiling = hpa.spec.max_replicas
        floor = replicas
        if floor > ceiling:
            floor = ceiling
            notes.warn(
                f"requested {replicas} replicas is above HPA {self._hpa_name(hpa)} maxReplicas={ceiling}: "
                f"its minReplicas is clamped to {ceiling} (raise maxReplicas to go higher)"
            )
        if floor < HPA_MIN_FLOOR:
            floor = HPA_MIN_FLOOR
            notes.warn(
                f"requested {replicas} replicas but an HPA's minReplicas cannot be below {HPA_MIN_FLOOR}: "
                f"set to {HPA_MIN_FLOOR} (delete the HPA or use MCP_AUTONOMY_K8S_HPA_MODE=ignore to scale to 0)"
            )
        previous = hpa.spec.min_replicas if hpa.spec.min_replicas is not None else HPA_MIN_FLOOR
        if previous == floor:  # compared with the HPA's floor, not the Deployment: nothing to write
            notes.info(f"HPA {self._hpa_name(hpa)} minReplicas is already {floor} (maxReplicas {ceiling})")
            return
        notes.info(
            f"HPA {self._hpa_name(hpa)} scales this Deployment: its minReplicas {previous} -> {floor} "
            f"(maxReplicas {ceiling}); the HPA moves the Deployment on its next sync"
        )
        autoscaling = AutoscalingV2Api(await self._client())
        op = _Operation("patch", "horizontalpodautoscalers", "autoscaling", self.namespace, name)
        version = hpa.metadata.resource_version or ""
        body = {"metadata": {"resourceVersion": version}, "spec": {"minReplicas": floor}}
        timeout_s = self.request_timeout_for_requests_s()
        await self._call(
            op,
            lambda: autoscaling.patch_namespaced_horizontal_pod_autoscaler(
                name, self.namespace, body, _request_timeout=timeout_s
            ),
            not_found_is_conflict=True,  # the HPA went away since the list: decide again
            term=term,
        )

    def _hpa_name(self, hpa: V2HorizontalPodAutoscaler) -> str:
        return f"{self.namespace}/{_name_of(hpa)}"

    # --- the client and its errors ---

    async def api_client(self) -> ApiClient:
        """The client this backend uses (built on first use), shared with leader election and load."""
        return await self._client()

    async def _client(self) -> ApiClient:
        if self._api_client is None:
            self._api_client = await anyio.to_thread.run_sync(self._load_client)
        return self._api_client

    def _load_client(self) -> ApiClient:
        from kubernetes.client import ApiClient, Configuration
        from kubernetes.config import ConfigException, load_incluster_config, load_kube_config

        configuration = self._configuration
        source = "the injected configuration"
        try:
            if configuration is None:
                configuration = Configuration()
                if self._kubeconfig is not None:
                    source = f"MCP_AUTONOMY_K8S_KUBECONFIG={self._kubeconfig}"
                    load_kube_config(  # type: ignore[no-untyped-call]
                        config_file=self._kubeconfig, client_configuration=configuration, persist_config=False
                    )
                elif os.environ.get(IN_CLUSTER_HOST_ENV) and SERVICE_ACCOUNT_TOKEN.exists():
                    source = "the pod's ServiceAccount (in-cluster)"
                    load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                else:
                    source = f"the default kubeconfig ({os.environ.get('KUBECONFIG', '~/.kube/config')})"
                    load_kube_config(  # type: ignore[no-untyped-call]
                        client_configuration=configuration, persist_config=False
                    )
        except (ConfigException, OSError, ValueError) as exc:
            raise ScaleBackendError(
                f"cannot load Kubernetes credentials from {source}: {type(exc).__name__}: "
                f"{self._redact(str(exc))}. Set MCP_AUTONOMY_K8S_KUBECONFIG to a kubeconfig file, or run "
                f"in a pod with a ServiceAccount"
            ) from None
        return ApiClient(configuration)

    async def _call(
        self,
        op: _Operation,
        request: Callable[[], _T],
        *,
        not_found_is_conflict: bool = False,
        term: LeadershipTerm | None = None,
    ) -> _T:
        """Run one blocking request in a worker thread; translate its failures.

        With a `term` (a change on the leader's behalf) leadership is checked before the request
        and again by the worker thread right before it sends: a thread the caller gave up on (the
        grace below) cannot send after the term ends, and the elector awaits the term's requests
        in flight before it releases the Lease.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError, NewConnectionError
        from urllib3.exceptions import TimeoutError as Urllib3Timeout

        timeout_s = self.request_timeout_for_requests_s()

        def send() -> _T:
            if term is None:
                return request()
            with term.sending(op.describe()):
                return request()

        try:
            if term is not None:
                term.check(op.describe())
            with anyio.fail_after(timeout_s + REQUEST_GRACE_S):
                return await anyio.to_thread.run_sync(send, abandon_on_cancel=True)
        except NotLeading as exc:
            raise ScaleLeadershipLost(f"{exc}; stopped the change on {self.target}") from None
        except TimeoutError:
            raise ScaleBackendError(
                f"the Kubernetes API at {self._host()} did not answer {op.describe()} within "
                f"{timeout_s:g} s (MCP_AUTONOMY_K8S_REQUEST_TIMEOUT_S, bounded by the lease's safety margin)"
            ) from None
        except ApiException as exc:
            if exc.status == 409 and _reason(exc) in ("Conflict", ""):
                raise _Conflict from None
            if exc.status == 404 and not_found_is_conflict:
                raise _Conflict from None
            raise self._explain(op, exc) from None
        except (HTTPError, OSError) as exc:
            cause = getattr(exc, "reason", exc)
            # NewConnectionError subclasses ConnectTimeoutError in urllib3 2, yet it is a refusal.
            if isinstance(cause, (Urllib3Timeout, TimeoutError)) and not isinstance(
                cause, NewConnectionError
            ):
                raise ScaleBackendError(
                    f"the Kubernetes API at {self._host()} did not answer {op.describe()} within "
                    f"{timeout_s:g} s (MCP_AUTONOMY_K8S_REQUEST_TIMEOUT_S, bounded by the lease's safety margin)"
                ) from None
            raise ScaleBackendError(
                f"cannot reach the Kubernetes API at {self._host()} for {op.describe()}: "
                f"{type(exc).__name__}: {self._redact(_short(exc))}"
            ) from None

    def _explain(self, op: _Operation, exc: Any) -> ScaleBackendError:
        status = int(exc.status or 0)
        server_message = self._redact(_message(exc))
        if status == 403:
            scope = f'in the namespace "{op.namespace}"'
            return ScaleBackendError(
                f'Kubernetes RBAC forbids verb "{op.verb}" on resource "{op.resource}" in API group '
                f'"{op.group}" {scope} ({server_message}). Add this rule to the Role bound to the '
                f"server's ServiceAccount in namespace {op.namespace}: {op.rule()}"
            )
        if status == 404:
            if op.resource.startswith("deployments"):
                return ScaleBackendError(
                    f'Deployment "{op.name}" not found in namespace "{op.namespace}" ({server_message}): '
                    f"check MCP_AUTONOMY_K8S_NAMESPACE={self.namespace} and "
                    f"MCP_AUTONOMY_K8S_DEPLOYMENT={self.deployment}"
                )
            return ScaleBackendError(f"{op.describe()}: not found ({server_message})")
        if status == 401:
            return ScaleBackendError(
                f"the Kubernetes API at {self._host()} rejected the credentials (401 Unauthorized) for "
                f"{op.describe()}: the ServiceAccount token or kubeconfig user is missing, expired or wrong"
            )
        if status == 422:
            return ScaleBackendError(
                f"the Kubernetes API rejected {op.describe()} as invalid: {server_message}"
            )
        reason = _reason(exc) or str(exc.reason or "")
        return ScaleBackendError(
            f"the Kubernetes API answered {status} {reason} to {op.describe()}: {server_message}"
        )

    def _host(self) -> str:
        client = self._api_client
        host = client.configuration.host if client is not None else None
        return str(host or "(unknown host)")

    def _redact(self, text: str) -> str:
        """`text` without any credential the client holds (bearer tokens, passwords)."""
        secrets: set[str] = set()
        client = self._api_client
        configuration = client.configuration if client is not None else self._configuration
        if configuration is not None:
            secrets.update(str(v) for v in (configuration.api_key or {}).values() if v)
            if configuration.password:
                secrets.add(str(configuration.password))
        for secret in sorted(secrets, key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return _BEARER.sub("Bearer ***", text)


def _name_of(obj: V2HorizontalPodAutoscaler) -> str:
    return (obj.metadata.name or "") if obj.metadata is not None else ""


def _status_body(exc: Any) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _message(exc: Any) -> str:
    return str(_status_body(exc).get("message") or exc.reason or "no message")


def _reason(exc: Any) -> str:
    return str(_status_body(exc).get("reason") or "")


def _short(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc)
