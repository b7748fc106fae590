"""The engine's Kubernetes writes against the test API server, with the real client over HTTP:

- bounded by leadership: a leader paused past its lease sends no write after the new leader's
  first one; releasing the Lease waits for a request in flight; request timeouts are bounded by
  the election's safety margin;
- floor mode against the HPA controller model: raising the floor scales the Deployment at the
  next sync, lowering it lets the HPA scale down by its own rules, no repeated no-op events;
- RBAC from `deploy/kubernetes/role.yaml`: every call the engine makes is allowed, and together
  they use every grant (the Role is exact); a Role without `patch` on `deployments/scale` makes
  the scale call fail with the project's 403 message.

A test sees who sent what through `Gate`, an ASGI middleware in front of the server that logs
every answered request by client (User-Agent) and can hold one request until released.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from kubernetes.client import ApiClient, Configuration
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_autonomy.autonomy.scaler import AutoScaler
from mcp_autonomy.autonomy.scaling.base import ScaleBackendError
from mcp_autonomy.autonomy.scaling.cluster_load import ClusterLoad
from mcp_autonomy.autonomy.scaling.kubernetes import KubernetesScaleBackend, ScaleLeadershipLost
from mcp_autonomy.autonomy.scaling.leader import LeaderElectionConfig, LeaderElector
from mcp_autonomy.autonomy.scaling.policy import NO_GUARDS, ScaleGuards, ScalingDecision, ScalingRule
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import EventBus, EventType
from mcp_autonomy.sandbox.server import running_sandbox
from mcp_autonomy.store import Store
from tests.kubernetes.apiserver import (
    HPA_DOWNSCALE_STABILIZATION_S,
    HPA_SYNC_PERIOD_S,
    ApiServerState,
    JsonObject,
    RunningApiServer,
    create_apiserver_app,
    deploy_role,
    deployment,
    hpa,
    role_without,
    running_apiserver,
)

pytestmark = pytest.mark.anyio

NS = "prod"
NAME = "mcp-autonomy"  # the names role.yaml allows
LEASE = "mcp-autonomy-scaler"
TOKEN = "tok-k2-4d1e9a7c"
DEADLINE_S = 30.0
CONFIG = LeaderElectionConfig(LEASE, NS, jitter_factor=0.0, request_timeout_s=5.0)
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# --- the gate in front of the server ------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One request the server answered."""

    client: str
    method: str
    path: str
    status: int


@dataclass
class Gate:
    """What the middleware logged, and the one request it holds (`hold` picks it) until `release`."""

    log: list[Seen] = field(default_factory=list)
    hold: Callable[[str, str, str], bool] | None = None
    held: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)

    def index(self, client: str, method: str, path_part: str) -> int:
        """Position in the log of the first answered request matching."""
        return next(
            i
            for i, s in enumerate(self.log)
            if (s.client, s.method) == (client, method) and path_part in s.path
        )


class _GateMiddleware:
    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        gate = self.gate
        client = dict(scope["headers"]).get(b"user-agent", b"").decode()
        method, path = str(scope["method"]), str(scope["path"])
        if gate.hold is not None and gate.hold(client, method, path):
            gate.hold = None  # one request only
            gate.held.set()
            await gate.release.wait()
        status = 0

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive, capture)
        gate.log.append(Seen(client, method, path, status))


@asynccontextmanager
async def gated_apiserver(
    gate: Gate, *, clock: ManualClock, role: JsonObject | None = None
) -> AsyncIterator[RunningApiServer]:
    """The test API server (RBAC from `role`, default deploy/kubernetes/role.yaml) behind `gate`."""
    state = ApiServerState(role=role if role is not None else deploy_role(), clock=clock)
    app = create_apiserver_app(state, token=TOKEN)
    app.add_middleware(_GateMiddleware, gate=gate)
    async with running_sandbox(app, gated=False) as address:
        server = RunningApiServer(url=address.base_url, state=state, token=TOKEN)
        try:
            yield server
        finally:
            server.close_clients()


def client_for(api: RunningApiServer, name: str) -> ApiClient:
    """A client of its own whose requests the gate logs as `name`."""
    client = api.api_client()
    client.user_agent = name
    return client


def stored_replicas(api: RunningApiServer) -> int:
    stored = api.state.get("apps/v1", "Deployment", NS, NAME)
    assert stored is not None
    return int(stored["spec"]["replicas"])


# --- writes bounded by leadership -------------------------------------------------------------


async def test_a_leader_paused_past_its_lease_sends_no_write_after_the_new_leaders_first_write() -> None:
    clock = ManualClock()
    gate = Gate()
    with anyio.fail_after(DEADLINE_S):
        async with gated_apiserver(gate, clock=clock) as api:
            api.state.put(deployment(NS, NAME, 2))
            client_a, client_b = client_for(api, "a"), client_for(api, "b")
            a = LeaderElector(client_a, CONFIG, clock=clock, identity="a")
            b = LeaderElector(client_b, CONFIG, clock=clock, identity="b")
            # Each backend shares its elector's client, as the engine wires them: bound to it.
            backend_a = KubernetesScaleBackend(namespace=NS, deployment=NAME, api_client=client_a)
            backend_b = KubernetesScaleBackend(namespace=NS, deployment=NAME, api_client=client_b)
            assert backend_a.leadership() is a and backend_b.leadership() is b

            await a._try()  # A acquires; then its process pauses: it never renews again
            await b._try()  # B sees A's lease and waits for it to expire
            assert a.is_leader and not b.is_leader

            # A starts scaling; its first request (the HPA list) hangs in the server.
            gate.hold = lambda client, method, path: client == "a" and "horizontalpodautoscalers" in path
            outcome: dict[str, BaseException] = {}

            async def scale_a() -> None:
                try:
                    await backend_a.set_desired(5)
                except ScaleLeadershipLost as exc:
                    outcome["a"] = exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(scale_a)
                await gate.held.wait()
                await clock.advance(CONFIG.lease_duration_s + 1)  # paused past its lease
                await b._try()
                assert b.is_leader and not a.is_leader
                await backend_b.set_desired(3)
                first_write_b = gate.index("b", "PATCH", "/scale")
                gate.release.set()  # A resumes: its request answers, the rest must not be sent

            assert isinstance(outcome.get("a"), ScaleLeadershipLost)
            assert "a (lease prod/mcp-autonomy-scaler) no longer leads" in str(outcome["a"])
            late = [s for s in gate.log[first_write_b + 1 :] if s.client == "a" and s.method in WRITES]
            assert late == []
            assert not any(
                s.client == "a" and s.method in WRITES and "/deployments/" in s.path for s in gate.log
            )
            assert stored_replicas(api) == 3


async def test_the_lease_is_released_only_after_the_request_in_flight_is_answered() -> None:
    clock = ManualClock()
    gate = Gate()
    with anyio.fail_after(DEADLINE_S):
        async with gated_apiserver(gate, clock=clock) as api:
            api.state.put(deployment(NS, NAME, 2))
            client_a = client_for(api, "a")
            a = LeaderElector(client_a, CONFIG, clock=clock, identity="a")
            backend_a = KubernetesScaleBackend(namespace=NS, deployment=NAME, api_client=client_a)
            outcome: dict[str, BaseException] = {}

            async def scale_a() -> None:
                try:
                    await backend_a.set_desired(5)
                except ScaleLeadershipLost as exc:
                    outcome["a"] = exc

            async with anyio.create_task_group() as tg:
                await tg.start(a.run)
                assert a.is_leader
                gate.hold = lambda client, method, path: client == "a" and "horizontalpodautoscalers" in path
                tg.start_soon(scale_a)
                await gate.held.wait()

                a.stop(release=True)  # shutdown while a request of the term is in flight
                await a.wait_draining()  # the release waits for it
                assert not a.is_leader
                lease_writes = [s for s in gate.log if s.method == "PUT" and "/leases/" in s.path]
                assert lease_writes == []  # not released yet
                gate.release.set()

            answered = gate.index("a", "GET", "horizontalpodautoscalers")
            released = gate.index("a", "PUT", "/leases/")
            assert answered < released
            lease = api.state.get("coordination.k8s.io/v1", "Lease", NS, LEASE)
            assert lease is not None and lease["spec"]["holderIdentity"] == ""
            assert isinstance(outcome.get("a"), ScaleLeadershipLost)  # the rest of the change not sent
            assert not any(s.method == "PATCH" for s in gate.log)
            assert stored_replicas(api) == 2


async def test_request_timeouts_are_bounded_by_the_lease_safety_margin() -> None:
    async def never_answer(stream: SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    config = LeaderElectionConfig.scaled(LEASE, NS, 3)  # lease 3 s, renew deadline 2 s: margin 1 s
    assert (config.safety_margin_s, config.effective_request_timeout_s) == (1.0, 1.0)
    with anyio.fail_after(DEADLINE_S):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, never_answer)
            client = ApiClient(Configuration(host=f"http://127.0.0.1:{port}"))
            LeaderElector(client, config, clock=ManualClock(), identity="a")
            backend = KubernetesScaleBackend(
                namespace=NS, deployment=NAME, api_client=client, request_timeout_s=10.0
            )
            assert backend.request_timeout_for_requests_s() == 1.0

            with pytest.raises(
                ScaleBackendError, match=r"did not answer get deployments/scale .* within 1 s"
            ):
                await backend.read()
            tg.cancel_scope.cancel()


async def test_a_follower_sends_nothing_when_asked_to_scale() -> None:
    clock = ManualClock()
    gate = Gate()
    with anyio.fail_after(DEADLINE_S):
        async with gated_apiserver(gate, clock=clock) as api:
            api.state.put(deployment(NS, NAME, 2))
            a = LeaderElector(client_for(api, "a"), CONFIG, clock=clock, identity="a")
            client_b = client_for(api, "b")
            b = LeaderElector(client_b, CONFIG, clock=clock, identity="b")
            await a._try()
            await b._try()
            backend_b = KubernetesScaleBackend(namespace=NS, deployment=NAME, api_client=client_b)
            before = len(gate.log)

            with pytest.raises(ScaleLeadershipLost, match=r"this replica \(b\) does not lead .*leader: a"):
                await backend_b.set_desired(4)

            assert gate.log[before:] == []
            assert stored_replicas(api) == 2


# --- floor mode against the HPA controller model --------------------------------------------------


async def next_sync(api: RunningApiServer, clock: ManualClock) -> None:
    """Advance to the HPA controller's next sync and wait until it has run."""
    syncs = api.state.hpa_controller.syncs
    await clock.advance(HPA_SYNC_PERIOD_S)  # settles: the woken controller has synced on return
    assert api.state.hpa_controller.syncs == syncs + 1


@asynccontextmanager
async def hpa_cluster(
    clock: ManualClock, replicas: int, floor: int, metric: int
) -> AsyncIterator[RunningApiServer]:
    """The Deployment and its HPA (floor..10), the controller model running on `clock`."""
    async with running_apiserver(token=TOKEN, clock=clock, hpa_controller=True) as api:
        api.state.put(deployment(NS, NAME, replicas))
        api.state.put(hpa(NS, NAME, NAME, floor, 10))
        api.state.set_hpa_recommendation(NS, NAME, metric)
        await next_sync(api, clock)
        yield api


async def test_raising_the_floor_scales_the_deployment_at_the_next_hpa_sync() -> None:
    clock = ManualClock()
    with anyio.fail_after(DEADLINE_S):
        async with hpa_cluster(clock, replicas=2, floor=2, metric=2) as api:
            backend = KubernetesScaleBackend(namespace=NS, deployment=NAME, api_client=api.api_client())
            assert stored_replicas(api) == 2

            state = await backend.set_desired(5)

            assert (state.desired, state.deployment_replicas, state.hpa_min_replicas) == (5, 2, 5)
            assert stored_replicas(api) == 2  # the HPA, not the engine, moves the Deployment
            await next_sync(api, clock)
            assert stored_replicas(api) == 5
            read = await backend.read()
            assert (read.desired, read.deployment_replicas) == (5, 5)


async def test_lowering_the_floor_lets_the_hpa_scale_down_by_its_own_rules() -> None:
    clock = ManualClock()
    with anyio.fail_after(DEADLINE_S):
        async with hpa_cluster(clock, replicas=2, floor=2, metric=2) as api:
            backend = KubernetesScaleBackend(namespace=NS, deployment=NAME, api_client=api.api_client())
            await backend.set_desired(5)
            await next_sync(api, clock)
            assert stored_replicas(api) == 5

            # The metrics asked for 2 all along: the window keeps raw recommendations, not pods,
            # so a lower floor drops pods at the very next sync.
            await backend.set_desired(3)
            assert stored_replicas(api) == 5
            await next_sync(api, clock)
            assert stored_replicas(api) == 3

            # Load rises: the HPA scales up by itself; the engine follows with the floor.
            api.state.set_hpa_recommendation(NS, NAME, 6)
            await next_sync(api, clock)
            assert stored_replicas(api) == 6
            await backend.set_desired(6)
            # Load gone: the engine lowers the floor at once, the HPA keeps the pods for its
            # scale-down stabilization window (the largest recommendation of the last 300 s).
            api.state.set_hpa_recommendation(NS, NAME, 2)
            await backend.set_desired(2)
            last_high_s = clock.monotonic()  # the last sync that recommended 6
            held_for_s = 0.0
            while stored_replicas(api) == 6:
                await next_sync(api, clock)
                held_for_s = clock.monotonic() - last_high_s
                assert held_for_s <= HPA_DOWNSCALE_STABILIZATION_S + HPA_SYNC_PERIOD_S
            assert held_for_s >= HPA_DOWNSCALE_STABILIZATION_S
            assert stored_replicas(api) == 2
            hpa_obj = api.state.get("autoscaling/v2", "HorizontalPodAutoscaler", NS, NAME)
            assert hpa_obj is not None and hpa_obj["spec"]["minReplicas"] == 2


class FixedPolicy:
    """A scaling policy that wants `replicas`, whatever the load (the test sets it)."""

    name = "fixed"

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas

    def recommend(
        self,
        now_s: float,
        load_tpm: float,
        current_replicas: int,
        ready_replicas: int,
        guards: ScaleGuards = NO_GUARDS,
    ) -> ScalingDecision:
        rule = ScalingRule.HOLD if self.replicas == current_replicas else ScalingRule.REACTIVE_UP
        return ScalingDecision(self.replicas, current_replicas, rule, f"the test wants {self.replicas}")


def floor_scaler(
    api: RunningApiServer, clock: ManualClock, store: Store, policy: FixedPolicy, *, max_replicas: int
) -> tuple[AutoScaler, EventBus]:
    """The real AutoScaler on the Deployment of `api`, deciding what `policy` says."""
    bus = EventBus(clock)
    backend = KubernetesScaleBackend(namespace=NS, deployment=NAME, api_client=api.api_client())
    scaler = AutoScaler(
        clock=clock,
        bus=bus,
        store=store,
        backend=backend,
        load_source=lambda: 300.0,
        enabled=True,
        interval_s=15.0,
        min_replicas=1,
        max_replicas=max_replicas,
        target_tpm_per_instance=100,
        policy=policy,
    )
    return scaler, bus


async def test_no_event_while_the_hpa_holds_more_replicas_than_the_floor(tmp_path: Path) -> None:
    clock = ManualClock()
    with anyio.fail_after(DEADLINE_S):
        async with hpa_cluster(clock, replicas=3, floor=3, metric=6) as api:
            await next_sync(api, clock)
            assert stored_replicas(api) == 6  # the HPA's metrics hold 6, above the floor of 3
            store = Store(tmp_path / "state.sqlite3").open()
            policy = FixedPolicy(3)
            scaler, bus = floor_scaler(api, clock, store, policy, max_replicas=10)
            kinds = (EventType.SCALED_UP, EventType.SCALED_DOWN, EventType.SCALING_DECISION)
            hpa_path = f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/{NAME}"

            def hpa_writes() -> int:
                return sum(1 for method, path in api.state.requests if method == "PATCH" and path == hpa_path)

            for _ in range(3):  # the floor is where the policy wants it: a hold, every tick
                await scaler.tick()
                await next_sync(api, clock)
            assert bus.history(types=kinds) == []
            assert scaler.details()["last_decision"]["decision"] == "hold"
            assert hpa_writes() == 0
            assert stored_replicas(api) == 6

            policy.replicas = 5  # a real change of the floor: one decision, one event, one write
            await scaler.tick()
            for _ in range(3):
                await next_sync(api, clock)
                await scaler.tick()
            events = bus.history(types=(EventType.SCALED_UP, EventType.SCALED_DOWN))
            assert [e.message for e in events] == ["automatic scale 3 -> 5 (the test wants 5)"]
            assert len(bus.history(types=(EventType.SCALING_DECISION,))) == 1
            assert hpa_writes() == 1
            assert stored_replicas(api) == 6
            store.close()


async def test_a_floor_asked_past_the_hpas_max_is_announced_once(tmp_path: Path) -> None:
    """The HPA's maxReplicas (10 here) bounds the floor: asking for 50 writes 10 once, then holds."""
    clock = ManualClock()
    with anyio.fail_after(DEADLINE_S):
        async with hpa_cluster(clock, replicas=3, floor=3, metric=10) as api:
            while stored_replicas(api) < 10:  # the HPA's metrics already hold its max
                await next_sync(api, clock)
            store = Store(tmp_path / "state.sqlite3").open()
            scaler, bus = floor_scaler(api, clock, store, FixedPolicy(50), max_replicas=100)
            for _ in range(4):
                await scaler.tick()
                await next_sync(api, clock)
            decisions = bus.history(types=(EventType.SCALING_DECISION,))
            assert [e.data["to"] for e in decisions] == [10]
            assert scaler.details()["last_decision"]["decision"] == "hold"
            assert "the HPA's bounds allow a floor of 10" in scaler.details()["last_decision"]["reason"]
            store.close()


# --- RBAC: the Role is exactly what the engine calls ----------------------------------------------

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/[^/]+)/namespaces/[^/]+/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)


def rbac_request(method: str, path: str) -> tuple[str, str, str]:
    """(API group, resource[/subresource], verb) of a request, as the apiserver authorises it."""
    match = _PATH.match(path)
    assert match is not None, path
    resource = match["plural"] + (f"/{match['sub']}" if match["sub"] else "")
    if match["name"] is None:
        verb = {"GET": "list", "POST": "create"}[method]
    else:
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    return match["group"] or "", resource, verb


def role_grants(role: JsonObject) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


async def test_every_call_the_engine_makes_is_allowed_and_every_grant_is_used(tmp_path: Path) -> None:
    clock = ManualClock()
    gate = Gate()
    with anyio.fail_after(DEADLINE_S):
        async with gated_apiserver(gate, clock=clock) as api:
            api.state.put(deployment(NS, NAME, 2))
            client = client_for(api, "engine")
            elector = LeaderElector(client, CONFIG, clock=clock, identity="a")
            async with anyio.create_task_group() as tg:

                async def run(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
                    await elector.run(task_status=task_status)

                await tg.start(run)  # get (404), create
                attempts = elector.attempts
                await clock.advance(CONFIG.retry_period_s)
                await elector.wait_attempts(attempts + 1)  # renew: update
                assert elector.is_leader

                ignore = KubernetesScaleBackend(
                    namespace=NS, deployment=NAME, api_client=client, hpa_mode="ignore"
                )
                await ignore.set_desired(3)  # list HPAs, get + patch scale, get Deployment
                api.state.put(hpa(NS, NAME, NAME, 2, 10))
                floor = KubernetesScaleBackend(namespace=NS, deployment=NAME, api_client=client)
                await floor.set_desired(4)  # list + patch HPA
                load = ClusterLoad(
                    client, namespace=NS, service=NAME, deployment=NAME, port=8765, clock=clock
                )
                await load.measure()  # list EndpointSlices (none), get Deployment, list Pods
                elector.stop(release=True)  # update (release)

            denied = [s for s in gate.log if s.status == 403]
            assert denied == []
            used = {rbac_request(s.method, s.path) for s in gate.log}
            assert used == role_grants(deploy_role())


async def test_a_role_without_patch_on_the_scale_fails_with_the_clear_403_message() -> None:
    clock = ManualClock()
    role = role_without(deploy_role(), "patch", "deployments/scale")
    with anyio.fail_after(DEADLINE_S):
        async with gated_apiserver(Gate(), clock=clock, role=role) as api:
            api.state.put(deployment(NS, NAME, 2))
            backend = KubernetesScaleBackend(namespace=NS, deployment=NAME, api_client=api.api_client())

            with pytest.raises(ScaleBackendError) as caught:
                await backend.set_desired(5)

            message = str(caught.value)
            assert 'Kubernetes RBAC forbids verb "patch" on resource "deployments/scale"' in message
            assert 'in API group "apps" in the namespace "prod"' in message
            assert '{apiGroups: ["apps"], resources: ["deployments/scale"], verbs: ["patch"]}' in message
            assert TOKEN not in message
            assert stored_replicas(api) == 2


def test_floor_and_margin_figures_are_consistent() -> None:
    assert math.isclose(CONFIG.safety_margin_s, CONFIG.lease_duration_s - CONFIG.renew_deadline_s)
    assert CONFIG.effective_request_timeout_s <= CONFIG.safety_margin_s
