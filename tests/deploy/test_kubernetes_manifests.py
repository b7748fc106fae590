"""deploy/kubernetes/: every manifest loads into the official client's models and agrees with the code.

Each YAML document is deserialized into its `kubernetes.client` model and serialized back: a
field the model does not know (a typo, a wrong indentation level) is dropped on the way and the
round trip fails. The rest checks what ties the manifests together and to the server: probes on
the unauthenticated health routes, RBAC exactly as the scale backend calls the API, names that
match the env vars the server reads, the HPA on the Deployment, the kustomization listing every
base file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from pydantic import AliasChoices

from mcp_autonomy.config import Settings
from mcp_autonomy.server.http import UNAUTHENTICATED_PATHS

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUSTOMIZATION = "kustomization.yaml"
OPTIONAL_FILES = frozenset({"hpa.yaml"})
"""Shipped beside the base but deliberately left out of kustomization.yaml."""

MODELS = {
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Service"): "V1Service",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
}

# (API group, resource, verb): what the Kubernetes scale backend calls, and nothing more.
EXPECTED_GRANTS = {
    ("apps", "deployments", "get"),
    ("apps", "deployments/scale", "get"),
    ("apps", "deployments/scale", "patch"),
    ("autoscaling", "horizontalpodautoscalers", "list"),
    ("autoscaling", "horizontalpodautoscalers", "patch"),
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("", "pods", "list"),
}

PRODUCT_SOURCE = Path(__file__).resolve().parents[2] / "mcp_autonomy"


# --- loading ---------------------------------------------------------------------------------


@cache
def _documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        if path.name == KUSTOMIZATION:
            continue
        with path.open(encoding="utf-8") as handle:
            for doc in yaml.safe_load_all(handle):
                if doc is not None:
                    docs.append((str(path.relative_to(MANIFESTS)), doc))
    return tuple(docs)


def _kustomization() -> dict[str, Any]:
    with (MANIFESTS / KUSTOMIZATION).open(encoding="utf-8") as handle:
        loaded: dict[str, Any] = yaml.safe_load(handle)
    return loaded


def _one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in _documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _deserialize(doc: dict[str, Any]) -> Any:
    model = MODELS[(doc["apiVersion"], doc["kind"])]
    return client.ApiClient().deserialize(json.dumps(doc), model, None)


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _env() -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = _container()["env"]
    return env


def _env_value(name: str) -> str:
    values = [e["value"] for e in _env() if e["name"] == name]
    assert len(values) == 1, f"{name} is set {len(values)} times with a value"
    return str(values[0])


def _settings_env_names() -> set[str]:
    names: set[str] = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias.upper())
    return names


def _resolve_port(port: int | str) -> int:
    if isinstance(port, int):
        return port
    matches = [p["containerPort"] for p in _container()["ports"] if p.get("name") == port]
    assert len(matches) == 1, f"no container port named {port!r}"
    return int(matches[0])


# --- every document --------------------------------------------------------------------------


def test_every_manifest_is_a_known_kind() -> None:
    docs = _documents()
    kinds = Counter(doc["kind"] for _, doc in docs)
    assert set(kinds) == {kind for _, kind in MODELS}
    assert all(count == 1 for count in kinds.values()), kinds
    for path, doc in docs:
        assert (doc["apiVersion"], doc["kind"]) in MODELS, f"{path}: {doc['apiVersion']} {doc['kind']}"


@pytest.mark.parametrize(("path", "doc"), _documents(), ids=[f"{p}:{d['kind']}" for p, d in _documents()])
def test_manifest_survives_the_client_model_round_trip(path: str, doc: dict[str, Any]) -> None:
    model = _deserialize(doc)
    assert type(model).__name__ == MODELS[(doc["apiVersion"], doc["kind"])]
    # Every field the client knows comes back unchanged; one it does not know would be missing.
    assert client.ApiClient().sanitize_for_serialization(model) == doc, path


def test_round_trip_would_catch_an_unknown_field() -> None:
    doc = json.loads(json.dumps(_one("Deployment")))
    doc["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["timeoutSecondz"] = 3
    assert client.ApiClient().sanitize_for_serialization(_deserialize(doc)) != doc


def test_all_share_one_name_and_labels_and_no_namespace() -> None:
    for path, doc in _documents():
        meta = doc["metadata"]
        assert meta["name"] == "mcp-autonomy", path
        assert meta["labels"]["app.kubernetes.io/name"] == "mcp-autonomy", path
        # The namespace comes from kustomization.yaml (or kubectl -n), never from a file.
        assert "namespace" not in meta, path


# --- Deployment ------------------------------------------------------------------------------


def test_probes_use_the_unauthenticated_health_routes_on_the_http_port() -> None:
    container = _container()
    port = int(_env_value("MCP_AUTONOMY_PORT"))
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    for probe, path in expected.items():
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == path, probe
        assert _resolve_port(http_get["port"]) == port, probe
        assert http_get.get("scheme", "HTTP") == "HTTP", probe
        # The kubelet sends no bearer token: the server must not ask for one on these paths.
        assert path in UNAUTHENTICATED_PATHS, probe
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


def test_env_names_are_read_by_the_server() -> None:
    known = _settings_env_names()
    source = "\n".join(p.read_text(encoding="utf-8") for p in PRODUCT_SOURCE.rglob("*.py"))
    names = [e["name"] for e in _env()]
    assert len(names) == len(set(names)), names
    missing = [name for name in names if name not in known and f'"{name}"' not in source]
    assert not missing, f"env vars no setting reads: {missing}"


def test_env_references_only_variables_defined_before() -> None:
    # Kubernetes expands $(NAME) only for a variable defined earlier in the same list.
    defined: set[str] = set()
    for entry in _env():
        for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(entry.get("value", ""))):
            assert ref in defined, f"{entry['name']} refers to $({ref}) before it is defined"
        defined.add(entry["name"])


def test_env_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no developer .env
    namespace = "payments"
    values: dict[str, Any] = {}
    for entry in _env():
        if "value" in entry:
            values[entry["name"]] = entry["value"].replace("$(MCP_AUTONOMY_K8S_NAMESPACE)", namespace)
    values["MCP_AUTONOMY_K8S_NAMESPACE"] = namespace
    values["MCP_AUTONOMY_BEARER_TOKEN"] = "token-from-the-secret"
    settings = Settings(_env_file=None, **values)

    assert settings.scale_backend == "kubernetes"
    assert (settings.host, settings.port) == ("0.0.0.0", 8765)
    assert settings.listens_beyond_loopback and settings.bearer_token is not None
    assert settings.k8s_deployment == _one("Deployment")["metadata"]["name"]
    assert _env_value("MCP_AUTONOMY_K8S_SERVICE") == _one("Service")["metadata"]["name"]
    for host in (
        "mcp-autonomy",
        f"mcp-autonomy.{namespace}.svc",
        f"mcp-autonomy.{namespace}.svc.cluster.local",
    ):
        assert host in settings.allowed_hosts
    assert settings.min_instances == _one("Deployment")["spec"]["replicas"]


def test_env_from_the_secrets_and_the_downward_api() -> None:
    by_name = {e["name"]: e for e in _env()}
    token = by_name["MCP_AUTONOMY_BEARER_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (token["name"], token["key"]) == ("mcp-autonomy-auth", "bearer-token")
    assert not token.get("optional", False)
    peer = by_name["MCP_AUTONOMY_PEER_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (peer["name"], peer["key"], peer["optional"]) == ("mcp-autonomy-auth", "peer-token", True)
    assert by_name["MCP_AUTONOMY_K8S_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert by_name["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert _container()["envFrom"] == [{"secretRef": {"name": "mcp-autonomy-providers"}}]


def test_state_and_tmp_are_writable_emptydirs_under_a_readonly_root() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    state_dir = _env_value("MCP_AUTONOMY_STATE_DIR")
    for path in (state_dir, "/tmp"):
        assert path in mounts, path
        assert "emptyDir" in volumes[mounts[path]], path
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_pod_spec_essentials() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == Settings.model_fields["min_instances"].default == 2
    assert pod["serviceAccountName"] == _one("ServiceAccount")["metadata"]["name"]
    # Service links would inject MCP_AUTONOMY_PORT=tcp://... for the Service named mcp-autonomy.
    assert pod["enableServiceLinks"] is False
    assert pod["terminationGracePeriodSeconds"] >= 30
    resources = _container()["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in spread
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"] == selector


# --- Service, PDB, HPA -----------------------------------------------------------------------


def test_service_exposes_the_http_port_to_the_pods() -> None:
    service = _one("Service")
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http"
    assert port["port"] == 8765
    assert _resolve_port(port["targetPort"]) == int(_env_value("MCP_AUTONOMY_PORT"))


def test_pdb_keeps_one_replica_of_the_pods() -> None:
    spec = _one("PodDisruptionBudget")["spec"]
    deployment = _one("Deployment")
    assert spec["minAvailable"] == 1 < deployment["spec"]["replicas"]
    assert spec["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_hpa_targets_the_deployment_and_leaves_the_scaler_room() -> None:
    hpa = _one("HorizontalPodAutoscaler")
    deployment = _one("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert hpa["spec"]["minReplicas"] == int(_env_value("MIN_INSTANCES"))
    assert hpa["spec"]["maxReplicas"] >= int(_env_value("MAX_INSTANCES"))


# --- RBAC ------------------------------------------------------------------------------------


def test_role_grants_exactly_what_the_scale_backend_calls() -> None:
    rules = _one("Role")["rules"]
    grants = [
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]
    assert len(grants) == len(set(grants)), "a grant is listed twice"
    assert set(grants) == EXPECTED_GRANTS
    assert not any("*" in part for grant in grants for part in grant)


def test_role_restricts_names_wherever_rbac_can() -> None:
    deployment = _env_value("MCP_AUTONOMY_K8S_DEPLOYMENT")
    lease = _env_value("MCP_AUTONOMY_K8S_LEASE_NAME")
    names: dict[tuple[str, str, str], list[str] | None] = {}
    for rule in _one("Role")["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    names[(group, resource, verb)] = rule.get("resourceNames")
    for verb in ("get",):
        assert names[("apps", "deployments", verb)] == [deployment]
    for verb in ("get", "patch"):
        assert names[("apps", "deployments/scale", verb)] == [deployment]
    for verb in ("get", "update"):
        assert names[("coordination.k8s.io", "leases", verb)] == [lease]
    # create and list cannot be restricted by name: the name is not known when they are authorized.
    assert names[("coordination.k8s.io", "leases", "create")] is None
    assert names[("discovery.k8s.io", "endpointslices", "list")] is None
    assert names[("", "pods", "list")] is None


def test_rolebinding_binds_the_role_to_the_deployments_serviceaccount() -> None:
    binding = _one("RoleBinding")
    role = _one("Role")
    account = _one("ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount"
    assert subject["name"] == account["metadata"]["name"]
    assert subject["name"] == _one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    # Left for kustomize to fill with the kustomization's namespace (an explicit one is not rewritten).
    assert "namespace" not in subject


# --- kustomization ---------------------------------------------------------------------------


def test_kustomization_lists_every_base_file_and_not_the_optional_ones() -> None:
    kustomization = _kustomization()
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"]
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {KUSTOMIZATION}
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == files - OPTIONAL_FILES
    assert files >= OPTIONAL_FILES


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_base_into_its_namespace() -> None:
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    namespace = _kustomization()["namespace"]
    assert sorted(doc["kind"] for doc in docs) == sorted(
        doc["kind"] for path, doc in _documents() if path not in OPTIONAL_FILES
    )
    for doc in docs:
        assert doc["metadata"]["namespace"] == namespace, doc["kind"]
        _deserialize(doc)
    (binding,) = (doc for doc in docs if doc["kind"] == "RoleBinding")
    assert binding["subjects"][0]["namespace"] == namespace
