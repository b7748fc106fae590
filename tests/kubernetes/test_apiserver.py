"""The test API server behaves like kube-apiserver for the official client (real HTTP, real client)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import httpx
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.kubernetes.apiserver import (
    deploy_role,
    deploy_role_binding,
    deployment,
    endpoint_slice,
    hpa,
    json_patch,
    role_without,
    running_apiserver,
    strategic_merge_patch,
)

APP = "mcp-autonomy"
"""The Deployment the deploy Role names in its resourceNames."""

pytestmark = pytest.mark.anyio

TEST_DEADLINE_S = 30.0
_T = TypeVar("_T")


async def call(request: Callable[[], _T]) -> _T:
    """The blocking client runs in a worker thread: the server answers on this event loop."""
    return await anyio.to_thread.run_sync(request)


async def failure(request: Callable[[], Any]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the Status body of a request that must fail."""
    with pytest.raises(ApiException) as caught:
        await call(request)
    return int(caught.value.status or 0), json.loads(caught.value.body or "{}")


async def test_scale_subresource_reads_and_patches_with_the_real_client() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=None) as api:
            api.state.put(deployment("prod", "web", 2))
            apps = k8s.AppsV1Api(api.api_client())

            scale = await call(lambda: apps.read_namespaced_deployment_scale("web", "prod"))
            assert (scale.kind, scale.api_version) == ("Scale", "autoscaling/v1")
            assert scale.spec is not None and scale.spec.replicas == 2
            assert scale.status is not None and scale.status.selector == "app=web"
            assert scale.metadata is not None
            version = scale.metadata.resource_version

            body = {"metadata": {"resourceVersion": version}, "spec": {"replicas": 5}}
            patched = await call(lambda: apps.patch_namespaced_deployment_scale("web", "prod", body))
            assert patched.spec is not None and patched.spec.replicas == 5
            assert patched.metadata is not None and int(patched.metadata.resource_version or 0) > int(
                version or 0
            )

            stored = api.state.get("apps/v1", "Deployment", "prod", "web")
            assert stored is not None
            assert stored["spec"]["replicas"] == 5
            assert stored["status"]["readyReplicas"] == 5  # auto_rollout
            assert stored["metadata"]["generation"] == 2
            assert ("PATCH", "/apis/apps/v1/namespaces/prod/deployments/web/scale") in api.state.requests


async def test_a_dict_patch_is_sent_as_strategic_merge_and_list_patches_as_json_patch() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=None) as api:
            api.state.put(deployment("prod", "web", 2))
            apps = k8s.AppsV1Api(api.api_client())
            await call(lambda: apps.patch_namespaced_deployment("web", "prod", {"spec": {"replicas": 3}}))
            ops = [
                {"op": "test", "path": "/spec/replicas", "value": 3},
                {"op": "replace", "path": "/spec/replicas", "value": 4},
            ]
            await call(lambda: apps.patch_namespaced_deployment("web", "prod", ops))
            merge = {"metadata": {"labels": {"tier": "api"}}}
            await call(
                lambda: apps.patch_namespaced_deployment(
                    "web", "prod", merge, _content_type="application/merge-patch+json"
                )
            )
            stored = api.state.get("apps/v1", "Deployment", "prod", "web")
            assert stored is not None
            assert stored["spec"]["replicas"] == 4
            assert stored["metadata"]["labels"] == {"app": "web", "tier": "api"}

            failing = [{"op": "test", "path": "/spec/replicas", "value": 99}]
            code, status = await failure(lambda: apps.patch_namespaced_deployment("web", "prod", failing))
            assert (code, status["reason"]) == (422, "Invalid")


async def test_rollout_is_driven_by_the_test_when_auto_rollout_is_off() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=None) as api:
            api.state.auto_rollout = False
            api.state.put(deployment("prod", "web", 3))
            apps = k8s.AppsV1Api(api.api_client())
            first = await call(lambda: apps.read_namespaced_deployment("web", "prod"))
            assert first.status is not None
            assert first.status.ready_replicas is None  # 0 is omitted, as omitempty does
            assert first.status.replicas == 3
            api.state.set_ready("prod", "web", 2)
            second = await call(lambda: apps.read_namespaced_deployment("web", "prod"))
            assert second.status is not None and second.status.ready_replicas == 2
            assert second.status.unavailable_replicas == 1


async def test_a_stale_put_is_a_conflict_and_a_noop_write_keeps_the_resource_version() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=None) as api:
            api.state.put(deployment("prod", "web", 2))
            apps = k8s.AppsV1Api(api.api_client())
            current = await call(lambda: apps.read_namespaced_deployment("web", "prod"))
            assert current.metadata is not None and current.spec is not None

            same = await call(lambda: apps.replace_namespaced_deployment("web", "prod", current))
            assert same.metadata is not None
            assert same.metadata.resource_version == current.metadata.resource_version

            api.state.bump("apps/v1", "Deployment", "prod", "web")
            current.spec.replicas = 7
            code, status = await failure(lambda: apps.replace_namespaced_deployment("web", "prod", current))
            assert code == 409
            assert status["reason"] == "Conflict"
            assert status["message"] == (
                'Operation cannot be fulfilled on deployments.apps "web": the object has been modified; '
                "please apply your changes to the latest version and try again"
            )
            assert status["details"] == {"name": "web", "group": "apps", "kind": "deployments"}

            fresh = await call(lambda: apps.read_namespaced_deployment("web", "prod"))
            assert fresh.spec is not None and fresh.metadata is not None
            fresh.spec.replicas = 7
            replaced = await call(lambda: apps.replace_namespaced_deployment("web", "prod", fresh))
            assert replaced.spec is not None and replaced.spec.replicas == 7
            assert replaced.metadata is not None
            assert int(replaced.metadata.resource_version or 0) > int(fresh.metadata.resource_version or 0)


async def test_a_racing_writer_makes_the_next_conditional_writes_conflict() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=None) as api:
            api.state.put(deployment("prod", "web", 2))
            apps = k8s.AppsV1Api(api.api_client())
            api.state.conflict_before_next_writes = 1

            async def conditional_patch(replicas: int) -> int:
                scale = await call(lambda: apps.read_namespaced_deployment_scale("web", "prod"))
                assert scale.metadata is not None
                body = {
                    "metadata": {"resourceVersion": scale.metadata.resource_version},
                    "spec": {"replicas": replicas},
                }
                try:
                    await call(lambda: apps.patch_namespaced_deployment_scale("web", "prod", body))
                except ApiException as exc:
                    return int(exc.status or 0)
                return 200

            assert await conditional_patch(4) == 409
            assert await conditional_patch(4) == 200
            assert api.state.conflict_before_next_writes == 0
            # An unconditional patch (no resourceVersion) wins over the racing writer.
            api.state.conflict_before_next_writes = 1
            await call(
                lambda: apps.patch_namespaced_deployment_scale("web", "prod", {"spec": {"replicas": 6}})
            )
            stored = api.state.get("apps/v1", "Deployment", "prod", "web")
            assert stored is not None and stored["spec"]["replicas"] == 6


async def test_lease_create_if_absent_and_compare_and_swap() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=None) as api:
            leases = k8s.CoordinationV1Api(api.api_client())
            now = datetime.now(UTC).replace(microsecond=123456)
            lease = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name="mcp-autonomy-leader"),
                spec=k8s.V1LeaseSpec(holder_identity="pod-a", lease_duration_seconds=15, renew_time=now),
            )
            created = await call(lambda: leases.create_namespaced_lease("prod", lease))
            assert created.metadata is not None and created.metadata.resource_version

            code, status = await failure(lambda: leases.create_namespaced_lease("prod", lease))
            assert (code, status["reason"]) == (409, "AlreadyExists")
            assert status["message"] == 'leases.coordination.k8s.io "mcp-autonomy-leader" already exists'

            # Two candidates read the same version; only the first swap wins.
            seen_a = await call(lambda: leases.read_namespaced_lease("mcp-autonomy-leader", "prod"))
            seen_b = await call(lambda: leases.read_namespaced_lease("mcp-autonomy-leader", "prod"))
            assert seen_a.spec is not None and seen_b.spec is not None
            seen_a.spec.renew_time = datetime.now(UTC).replace(microsecond=654321)
            seen_b.spec.holder_identity = "pod-b"
            await call(lambda: leases.replace_namespaced_lease("mcp-autonomy-leader", "prod", seen_a))
            code, status = await failure(
                lambda: leases.replace_namespaced_lease("mcp-autonomy-leader", "prod", seen_b)
            )
            assert (code, status["reason"]) == (409, "Conflict")

            # A Lease update must carry a resourceVersion (leases do not allow unconditional updates).
            assert seen_b.metadata is not None
            seen_b.metadata.resource_version = None
            code, status = await failure(
                lambda: leases.replace_namespaced_lease("mcp-autonomy-leader", "prod", seen_b)
            )
            assert (code, status["reason"]) == (422, "Invalid")
            assert "metadata.resourceVersion" in status["message"]

            stale = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(resource_version="1"))
            code, status = await failure(
                lambda: leases.delete_namespaced_lease("mcp-autonomy-leader", "prod", body=stale)
            )
            assert code == 409 and "precondition" in status["message"]
            await call(lambda: leases.delete_namespaced_lease("mcp-autonomy-leader", "prod"))
            assert api.state.get("coordination.k8s.io/v1", "Lease", "prod", "mcp-autonomy-leader") is None
            code, status = await failure(lambda: leases.read_namespaced_lease("mcp-autonomy-leader", "prod"))
            assert status["message"] == 'leases.coordination.k8s.io "mcp-autonomy-leader" not found'


async def test_deny_takes_a_right_away_on_top_of_the_role_in_one_namespace() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver() as api:
            api.state.put(deployment("prod", APP, 2))
            api.state.put(deployment("staging", APP, 2))
            api.state.deny("patch", "deployments/scale", namespace="prod")
            apps = k8s.AppsV1Api(api.api_client())
            body = {"spec": {"replicas": 3}}

            code, status = await failure(lambda: apps.patch_namespaced_deployment_scale(APP, "prod", body))
            assert (code, status["reason"]) == (403, "Forbidden")
            assert status["message"] == (
                'deployments.apps "mcp-autonomy" is forbidden: User "system:serviceaccount:prod:mcp-autonomy" '
                'cannot patch resource "deployments/scale" in API group "apps" in the namespace "prod"'
            )
            assert status["details"] == {"name": APP, "group": "apps", "kind": "deployments"}
            # Reads and other namespaces are still allowed.
            await call(lambda: apps.read_namespaced_deployment_scale(APP, "prod"))
            await call(lambda: apps.patch_namespaced_deployment_scale(APP, "staging", body))
            api.state.allow_all()
            await call(lambda: apps.patch_namespaced_deployment_scale(APP, "prod", body))


async def test_not_found_names_kind_and_name_like_the_real_server() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=None) as api:
            apps = k8s.AppsV1Api(api.api_client())
            code, status = await failure(lambda: apps.read_namespaced_deployment_scale("ghost", "prod"))
            assert code == 404
            assert status == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": 'deployments.apps "ghost" not found',
                "reason": "NotFound",
                "details": {"name": "ghost", "group": "apps", "kind": "deployments"},
                "code": 404,
            }
            pods = k8s.CoreV1Api(api.api_client())
            _, status = await failure(lambda: pods.read_namespaced_pod("ghost", "prod"))
            assert status["message"] == 'pods "ghost" not found'


async def test_bearer_token_is_required_when_configured() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(token="s3cret-token", role=None) as api:
            async with httpx.AsyncClient(base_url=api.url) as http:
                missing = await http.get("/apis/apps/v1/namespaces/prod/deployments")
                wrong = await http.get(
                    "/apis/apps/v1/namespaces/prod/deployments", headers={"Authorization": "Bearer nope"}
                )
            for response in (missing, wrong):
                assert response.status_code == 401
                assert response.json()["reason"] == "Unauthorized"
            apps = k8s.AppsV1Api(api.api_client())
            assert (await call(lambda: apps.list_namespaced_deployment("prod"))).items == []
            version = await call(lambda: k8s.VersionApi(api.api_client()).get_code())
            assert version.major == "1"


async def test_endpoint_slices_and_pods_are_listed_by_label_selector() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=None) as api:
            api.state.put(
                endpoint_slice("prod", "mcp-autonomy", [("10.0.0.1", 8765, True), ("10.0.0.2", 8765, False)])
            )
            api.state.put(endpoint_slice("prod", "mcp-autonomy", [("10.0.0.3", 9000, True)]))
            api.state.put(endpoint_slice("prod", "other", [("10.0.1.1", 8765, True)]))
            api.state.put(endpoint_slice("staging", "mcp-autonomy", [("10.0.2.1", 8765, True)]))
            discovery = k8s.DiscoveryV1Api(api.api_client())

            listed = await call(
                lambda: discovery.list_namespaced_endpoint_slice(
                    "prod", label_selector="kubernetes.io/service-name=mcp-autonomy"
                )
            )
            endpoints = sorted(
                (
                    e.addresses[0],
                    s.ports[0].port if s.ports else None,
                    e.conditions.ready if e.conditions else None,
                )
                for s in listed.items
                for e in s.endpoints or []
            )
            assert endpoints == [
                ("10.0.0.1", 8765, True),
                ("10.0.0.2", 8765, False),
                ("10.0.0.3", 9000, True),
            ]
            both = await call(
                lambda: discovery.list_namespaced_endpoint_slice(
                    "prod",
                    label_selector=(
                        "kubernetes.io/service-name=mcp-autonomy,"
                        "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"
                    ),
                )
            )
            assert len(both.items) == 2

            for name, role in (("web-1", "api"), ("web-2", "api"), ("worker-1", "batch")):
                api.state.put(
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": name,
                            "namespace": "prod",
                            "labels": {"app": "gw", "role": role},
                        },
                        "spec": {"containers": [{"name": "gw", "image": "gw:1"}]},
                    }
                )
            core = k8s.CoreV1Api(api.api_client())

            async def pod_names(selector: str) -> list[str]:
                pods = await call(lambda: core.list_namespaced_pod("prod", label_selector=selector))
                return [p.metadata.name or "" for p in pods.items if p.metadata]

            assert await pod_names("app=gw,role=api") == ["web-1", "web-2"]
            assert await pod_names("role!=api") == ["worker-1"]
            assert await pod_names("role in (batch, other)") == ["worker-1"]
            assert await pod_names("!role") == []
            code, status = await failure(
                lambda: core.list_namespaced_pod("prod", label_selector="role in (x")
            )
            assert (code, status["reason"]) == (400, "BadRequest")


async def test_hpa_crud_with_validation_and_conflicts() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=None) as api:
            api.state.put(deployment("prod", "web", 2))
            autoscaling = k8s.AutoscalingV2Api(api.api_client())
            created = await call(
                lambda: autoscaling.create_namespaced_horizontal_pod_autoscaler(
                    "prod", k8s.V2HorizontalPodAutoscaler.model_validate(hpa("prod", "web", "web", 2, 10))
                )
            )
            assert created.spec is not None and created.spec.scale_target_ref.name == "web"
            assert created.metadata is not None
            version = created.metadata.resource_version
            patched = await call(
                lambda: autoscaling.patch_namespaced_horizontal_pod_autoscaler(
                    "web", "prod", {"metadata": {"resourceVersion": version}, "spec": {"minReplicas": 4}}
                )
            )
            assert patched.spec is not None and patched.spec.min_replicas == 4
            stale = {"metadata": {"resourceVersion": version}, "spec": {"minReplicas": 5}}
            code, _ = await failure(
                lambda: autoscaling.patch_namespaced_horizontal_pod_autoscaler("web", "prod", stale)
            )
            assert code == 409
            code, status = await failure(
                lambda: autoscaling.patch_namespaced_horizontal_pod_autoscaler(
                    "web", "prod", {"spec": {"minReplicas": 11}}
                )
            )
            assert (code, status["reason"]) == (422, "Invalid")
            assert status["message"].startswith(
                'HorizontalPodAutoscaler.autoscaling "web" is invalid: spec.maxReplicas'
            )
            listed = await call(lambda: autoscaling.list_namespaced_horizontal_pod_autoscaler("prod"))
            assert [h.metadata.name for h in listed.items if h.metadata] == ["web"]


def test_strategic_merge_merges_containers_by_name_and_json_patch_follows_rfc_6902() -> None:
    current = {"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}}
    patched = strategic_merge_patch(current, {"spec": {"containers": [{"name": "b", "image": "b:2"}]}})
    assert patched["spec"]["containers"] == [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}]
    deleted = strategic_merge_patch(current, {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}})
    assert deleted["spec"]["containers"] == [{"name": "b", "image": "b:1"}]

    document = {"a": {"b": [1, 2]}, "c~d": 1}
    result = json_patch(
        document,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "remove", "path": "/c~0d"},
            {"op": "copy", "from": "/a/b/0", "path": "/first"},
            {"op": "move", "from": "/first", "path": "/moved"},
            {"op": "test", "path": "/moved", "value": 1},
        ],
    )
    assert result == {"a": {"b": [1, 2, 3]}, "moved": 1}
    assert document == {"a": {"b": [1, 2]}, "c~d": 1}


def forbidden_message(verb: str, resource: str, group: str, subject: str, namespace: str = "prod") -> str:
    return (
        f'{subject} is forbidden: User "system:serviceaccount:{namespace}:mcp-autonomy" cannot {verb} '
        f'resource "{resource}" in API group "{group}" in the namespace "{namespace}"'
    )


async def test_the_deploy_role_decides_by_verb_resource_subresource_and_resource_name() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver() as api:
            api.state.put(deployment("prod", APP, 2))
            api.state.put(deployment("prod", "other", 2))
            apps = k8s.AppsV1Api(api.api_client())
            leases = k8s.CoordinationV1Api(api.api_client())
            autoscaling = k8s.AutoscalingV2Api(api.api_client())

            assert (await call(lambda: apps.read_namespaced_deployment_scale(APP, "prod"))).spec is not None
            # Not in the rule's resourceNames: 403, as a real cluster answers.
            code, status = await failure(lambda: apps.read_namespaced_deployment_scale("other", "prod"))
            assert (code, status["reason"]) == (403, "Forbidden")
            assert status["message"] == forbidden_message(
                "get", "deployments/scale", "apps", 'deployments.apps "other"'
            )
            assert status["details"] == {"name": "other", "group": "apps", "kind": "deployments"}
            # `deployments` does not cover `deployments/scale` nor the other way round.
            _, status = await failure(lambda: apps.patch_namespaced_deployment(APP, "prod", {"spec": {}}))
            assert status["message"] == forbidden_message(
                "patch", "deployments", "apps", f'deployments.apps "{APP}"'
            )
            _, status = await failure(lambda: apps.list_namespaced_deployment("prod"))
            assert status["message"] == forbidden_message("list", "deployments", "apps", "deployments.apps")
            # list cannot be limited by name (the HPA rule has none: allowed); watch is not granted.
            assert (
                await call(lambda: autoscaling.list_namespaced_horizontal_pod_autoscaler("prod"))
            ).items == []
            async with httpx.AsyncClient(
                base_url=api.url, headers={"Authorization": "Bearer test-token"}
            ) as http:
                watch = await http.get(
                    "/apis/autoscaling/v2/namespaces/prod/horizontalpodautoscalers?watch=true"
                )
            assert watch.status_code == 403
            assert "cannot watch resource" in watch.json()["message"]

            # create has its own rule without resourceNames: any Lease name can be created ...
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": "someone-else"},
                "spec": {"holderIdentity": "a", "renewTime": "2026-12-07T10:00:00.250000Z"},
            }
            await call(lambda: leases.create_namespaced_lease("prod", k8s.V1Lease.model_validate(lease)))
            # ... but only the scaler's Lease can be read, and Leases cannot be listed.
            _, status = await failure(lambda: leases.read_namespaced_lease("someone-else", "prod"))
            assert status["message"] == forbidden_message(
                "get", "leases", "coordination.k8s.io", 'leases.coordination.k8s.io "someone-else"'
            )
            _, status = await failure(lambda: leases.list_namespaced_lease("prod"))
            assert status["message"] == forbidden_message(
                "list", "leases", "coordination.k8s.io", "leases.coordination.k8s.io"
            )
            code, _ = await failure(lambda: leases.read_namespaced_lease("mcp-autonomy-scaler", "prod"))
            assert code == 404  # allowed, just absent

            api.state.role = None  # no authorisation at all
            assert (
                await call(lambda: apps.read_namespaced_deployment_scale("other", "prod"))
            ).spec is not None


async def test_a_role_without_patch_on_the_scale_subresource_forbids_exactly_that() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=role_without(deploy_role(), "patch", "deployments/scale")) as api:
            api.state.put(deployment("prod", APP, 2))
            apps = k8s.AppsV1Api(api.api_client())
            body = {"spec": {"replicas": 3}}
            code, status = await failure(lambda: apps.patch_namespaced_deployment_scale(APP, "prod", body))
            assert code == 403
            assert status["message"] == forbidden_message(
                "patch", "deployments/scale", "apps", f'deployments.apps "{APP}"'
            )
            await call(lambda: apps.read_namespaced_deployment_scale(APP, "prod"))  # get is still granted
            api.state.role = deploy_role()
            patched = await call(lambda: apps.patch_namespaced_deployment_scale(APP, "prod", body))
            assert patched.spec is not None and patched.spec.replicas == 3


async def test_the_binding_decides_who_and_where() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(namespace="payments") as api:
            api.state.put(deployment("payments", APP, 2))
            api.state.put(deployment("prod", APP, 2))
            apps = k8s.AppsV1Api(api.api_client())
            await call(lambda: apps.read_namespaced_deployment_scale(APP, "payments"))
            # The Role is bound in `payments` only.
            _, status = await failure(lambda: apps.read_namespaced_deployment_scale(APP, "prod"))
            assert status["message"] == (
                f'deployments.apps "{APP}" is forbidden: User "system:serviceaccount:payments:mcp-autonomy" '
                'cannot get resource "deployments/scale" in API group "apps" in the namespace "prod"'
            )
            # Another ServiceAccount is not bound.
            api.state.user = "system:serviceaccount:payments:default"
            code, _ = await failure(lambda: apps.read_namespaced_deployment_scale(APP, "payments"))
            assert code == 403
            api.state.user = None
            # A binding whose roleRef names another Role grants nothing, and says why.
            binding = deploy_role_binding()
            binding["roleRef"]["name"] = "renamed"
            api.state.role_binding = binding
            _, status = await failure(lambda: apps.read_namespaced_deployment_scale(APP, "payments"))
            assert status["message"].endswith(': RBAC: role.rbac.authorization.k8s.io "renamed" not found')


async def test_resource_names_allow_a_list_only_with_a_metadata_name_field_selector() -> None:
    role = deploy_role()
    role["rules"].append(
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["mcp-autonomy-scaler"],
            "verbs": ["list"],
        }
    )
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=role) as api:
            leases = k8s.CoordinationV1Api(api.api_client())
            code, _ = await failure(lambda: leases.list_namespaced_lease("prod"))
            assert code == 403
            listed = await call(
                lambda: leases.list_namespaced_lease(
                    "prod", field_selector="metadata.name=mcp-autonomy-scaler"
                )
            )
            assert listed.items == []


async def test_lease_times_must_be_microtimes() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver() as api:
            leases = k8s.CoordinationV1Api(api.api_client())
            name = "mcp-autonomy-scaler"

            def lease(**spec: Any) -> dict[str, Any]:
                return {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": name},
                    "spec": spec,
                }

            # The client refuses to send garbage, so it goes over plain HTTP (another client could).
            async with httpx.AsyncClient(
                base_url=api.url, headers={"Authorization": "Bearer test-token"}
            ) as http:
                response = await http.post(
                    "/apis/coordination.k8s.io/v1/namespaces/prod/leases", json=lease(acquireTime="yesterday")
                )
            assert response.status_code == 400
            assert response.json()["reason"] == "BadRequest"
            assert response.json()["message"] == (
                'Lease in version "v1" cannot be handled as a Lease: parsing time "yesterday" as '
                '"2006-01-02T15:04:05.000000Z07:00": cannot parse "yesterday" as "2006"'
            )
            # A whole-second datetime is sent without fractional digits: not a MicroTime either.
            whole_second = k8s.V1Lease(
                metadata=k8s.V1ObjectMeta(name=name),
                spec=k8s.V1LeaseSpec(holder_identity="a", renew_time=datetime(2026, 12, 7, 10, tzinfo=UTC)),
            )
            code, status = await failure(lambda: leases.create_namespaced_lease("prod", whole_second))
            assert (code, status["reason"]) == (400, "BadRequest")
            assert status["message"].endswith('cannot parse "+00:00" as ".000000"')
            assert api.state.get("coordination.k8s.io/v1", "Lease", "prod", name) is None

            # The client re-serialises what it parsed: nonzero microseconds keep their six digits.
            good = lease(
                acquireTime="2026-12-07T10:00:00.000100Z", renewTime="2026-12-07T10:00:00.000001+01:00"
            )
            created = await call(
                lambda: leases.create_namespaced_lease("prod", k8s.V1Lease.model_validate(good))
            )
            assert created.metadata is not None
            # A renewal (PUT) at a whole second is refused the same way.
            seen = await call(lambda: leases.read_namespaced_lease(name, "prod"))
            assert seen.spec is not None
            seen.spec.renew_time = datetime(2026, 12, 7, 10, 0, 15, tzinfo=UTC)
            code, status = await failure(lambda: leases.replace_namespaced_lease(name, "prod", seen))
            assert (code, status["reason"]) == (400, "BadRequest")
            assert "cannot be handled as a Lease" in status["message"]
            stored = api.state.get("coordination.k8s.io/v1", "Lease", "prod", name)
            assert stored is not None and stored["spec"]["acquireTime"] == "2026-12-07T10:00:00.000100+00:00"
            assert stored["metadata"]["resourceVersion"] == created.metadata.resource_version


async def test_a_scale_with_another_uid_is_a_precondition_conflict() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=None) as api:  # the Role need not grant a Scale PUT
            stored = api.state.put(deployment("prod", APP, 2))
            uid = stored["metadata"]["uid"]
            apps = k8s.AppsV1Api(api.api_client())
            wrong = "00000000-0000-0000-0000-000000000001"

            body = {"metadata": {"uid": wrong}, "spec": {"replicas": 4}}
            code, status = await failure(lambda: apps.patch_namespaced_deployment_scale(APP, "prod", body))
            assert (code, status["reason"]) == (409, "Conflict")
            assert status["message"] == (
                f'Operation cannot be fulfilled on deployments/scale.apps "{APP}": Precondition failed: '
                f"UID in precondition: {wrong}, UID in object meta: {uid}"
            )
            scale = await call(lambda: apps.read_namespaced_deployment_scale(APP, "prod"))
            assert scale.metadata is not None and scale.metadata.uid == uid
            scale.metadata.uid = wrong
            code, _ = await failure(lambda: apps.replace_namespaced_deployment_scale(APP, "prod", scale))
            assert code == 409
            current = api.state.get("apps/v1", "Deployment", "prod", APP)
            assert current is not None and current["spec"]["replicas"] == 2

            ok = {"metadata": {"uid": uid}, "spec": {"replicas": 4}}
            patched = await call(lambda: apps.patch_namespaced_deployment_scale(APP, "prod", ok))
            assert patched.spec is not None and patched.spec.replicas == 4


async def test_status_writes_move_the_resource_version_and_change_only_the_status() -> None:
    with anyio.fail_after(TEST_DEADLINE_S):
        async with running_apiserver(role=None) as api:
            api.state.put(deployment("prod", APP, 2))
            created = api.state.put(hpa("prod", APP, APP, 2, 10))
            autoscaling = k8s.AutoscalingV2Api(api.api_client())
            before = created["metadata"]["resourceVersion"]

            body = {"status": {"currentReplicas": 2, "desiredReplicas": 3}, "spec": {"minReplicas": 9}}
            written = await call(
                lambda: autoscaling.patch_namespaced_horizontal_pod_autoscaler_status(APP, "prod", body)
            )
            assert written.status is not None and written.status.desired_replicas == 3
            assert (
                written.spec is not None and written.spec.min_replicas == 2
            )  # spec is not written via /status
            assert written.metadata is not None
            moved = written.metadata.resource_version
            assert int(moved or 0) > int(before)
            again = await call(
                lambda: autoscaling.patch_namespaced_horizontal_pod_autoscaler_status(APP, "prod", body)
            )
            assert again.metadata is not None and again.metadata.resource_version == moved  # no-op

            # A spec write keeps the status (it is owned by /status).
            patched = await call(
                lambda: autoscaling.patch_namespaced_horizontal_pod_autoscaler(
                    APP, "prod", {"spec": {"minReplicas": 3}}
                )
            )
            assert patched.status is not None and patched.status.desired_replicas == 3

            stale = {"metadata": {"resourceVersion": before}, "status": {"desiredReplicas": 5}}
            code, _ = await failure(
                lambda: autoscaling.patch_namespaced_horizontal_pod_autoscaler_status(APP, "prod", stale)
            )
            assert code == 409

            # A controller's status write (state.set_status, set_ready) moves it too.
            stored = api.state.get("apps/v1", "Deployment", "prod", APP)
            assert stored is not None
            api.state.set_status(
                "apps/v1", "Deployment", "prod", APP, {**stored["status"], "readyReplicas": 1}
            )
            after = api.state.get("apps/v1", "Deployment", "prod", APP)
            assert after is not None
            assert int(after["metadata"]["resourceVersion"]) > int(stored["metadata"]["resourceVersion"])
            assert after["status"]["readyReplicas"] == 1 and after["spec"] == stored["spec"]
