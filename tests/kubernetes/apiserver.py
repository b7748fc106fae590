"""A Kubernetes API server for tests: the subset this project uses, with the real semantics.

    async with running_apiserver() as api:
        api.state.put(deployment("prod", "mcp-autonomy", 2))
        client = api.api_client()
        apps = kubernetes.client.AppsV1Api(client)
        scale = await anyio.to_thread.run_sync(
            lambda: apps.read_namespaced_deployment_scale("mcp-autonomy", "prod")
        )

It serves, over real HTTP on a loopback port in the test's event loop:

- apps/v1 Deployments (get, list, create, update, patch, delete), their `scale` subresource
  (an autoscaling/v1 `Scale`: get, update, patch) and their `status` subresource;
- autoscaling/v2 HorizontalPodAutoscalers (with `status`), coordination.k8s.io/v1 Leases,
  discovery.k8s.io/v1 EndpointSlices, core/v1 Pods and Services (same verbs);
- `/version`, `/api`, `/apis` discovery stubs.

What the real server does and this one does too:

- RBAC: every request is authorised against a Role and the RoleBinding that binds it (by
  default `deploy/kubernetes/role.yaml` and `rolebinding.yaml`, parsed), the client being the
  ServiceAccount the binding names: verb (GET on a collection = list, `?watch=true` = watch,
  on a name = get, PUT = update, PATCH = patch, POST = create, DELETE = delete), API group,
  resource and subresource (`deployments/scale`), `resourceNames` (which never match a create,
  nor a list or watch without a `metadata.name=` field selector). A denial is `403 Forbidden`
  with the apiserver's message; `running_apiserver(role=...)` / `state.role = ...` swap the Role
  (`role_without()` drops one verb), `state.role = None` authorises everything;
- `metadata.resourceVersion` is one global counter, bumped by every write that changes the
  object, status writes included (a no-op update or patch keeps it, as in Kubernetes); `uid`,
  `creationTimestamp`, and `generation` (bumped on spec changes of Deployments and HPAs) are
  server-owned;
- an update carrying a resourceVersion other than the stored one is `409 Conflict`, as is a
  patch whose result carries one; an update without one is unconditional, except for Leases,
  which require it (`422 Invalid`); a Lease update of a missing Lease creates it, other kinds
  answer 404; a create of an existing name is `409 AlreadyExists`; a delete honours
  `preconditions.resourceVersion` and `preconditions.uid`; a Scale whose `metadata.uid` is not
  the Deployment's is `409 Conflict` ("Precondition failed: UID in precondition: ...");
- a Lease's `acquireTime`/`renewTime` are MicroTimes: RFC 3339 with exactly six fractional
  digits (`2026-12-07T10:00:00.000000Z`); anything else is `400 BadRequest`, as the decoder says;
- patches: `application/strategic-merge-patch+json` (what the Python client sends for a dict
  body: its default `application/json-patch+json` is switched when the body is not a list),
  `application/merge-patch+json`, `application/json-patch+json` (RFC 6902, `test` included);
- status is owned by the server: writes to the main resource keep the stored status, writes to
  `/status` keep everything but the status; a Deployment's `readyReplicas`/`availableReplicas`
  follow `spec.replicas` at once when `state.auto_rollout` is true, else only
  `state.set_ready()` moves them; zero counts are omitted from the JSON, as `omitempty` does;
- an HPA controller model (`running_apiserver(hpa_controller=True, clock=...)`): every sync
  period of the clock (15 s) each autoscaling/v2 HPA on a Deployment is reconciled as
  kube-controller-manager does, from a metric the test sets (`state.set_hpa_recommendation`,
  `state.set_hpa_utilization`): see `HpaControllerModel`;
- every error is a `Status` body with the real reason, code, message and details, e.g.
  `deployments.apps "x" not found`, `deployments.apps "x" is forbidden: User "..." cannot patch
  resource "deployments/scale" in API group "apps" in the namespace "ns"`;
- list items carry no `apiVersion`/`kind`; `labelSelector` (`k=v`, `k==v`, `k!=v`, `k`, `!k`,
  `k in (a,b)`, `k notin (a,b)`, comma-joined) and `fieldSelector` (`metadata.name`,
  `metadata.namespace`) filter lists; `dryRun=All` validates without storing.

Not served: watch, server-side apply, admission, garbage collection, ClusterRoles.
The `kubernetes` client is blocking: call it through `anyio.to_thread.run_sync`, never on the
event loop thread (the server runs on that loop and would never answer).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import kubernetes.client
import yaml  # type: ignore[import-untyped]
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_autonomy.clock import Clock, SystemClock
from mcp_autonomy.sandbox.server import running_sandbox

JsonObject = dict[str, Any]

DEPLOY_DIR: Final = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
"""Where the Role and RoleBinding the server authorises with by default are read from."""
HPA_SYNC_PERIOD_S: Final = 15.0
"""kube-controller-manager `--horizontal-pod-autoscaler-sync-period` default."""
HPA_DOWNSCALE_STABILIZATION_S: Final = 300.0
"""`--horizontal-pod-autoscaler-downscale-stabilization` default (also a nil scaleDown window)."""
HPA_TOLERANCE: Final = 0.1
"""`--horizontal-pod-autoscaler-tolerance` default: usage ratios within 10 % of 1 change nothing."""
SERVER_VERSION: Final = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-04-23T00:00:00Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}
VERBS: Final = frozenset({"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"})
PATCH_MEDIA_TYPES: Final = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
    "application/strategic-merge-patch+json",
)
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


# --- resource types --------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceType:
    """One kind as the API serves it, with the storage strategy flags that shape its semantics."""

    group: str
    version: str
    kind: str
    plural: str
    create_on_update: bool = False
    """PUT of a missing object creates it (Leases, Services) instead of answering 404."""
    unconditional_update: bool = True
    """PUT without a resourceVersion overwrites; False (Leases): it must be given."""
    tracks_generation: bool = False
    status_subresource: bool = False
    """Writes to the main resource keep the stored status."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """`deployments.apps`, `pods`: how messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """`Deployment.apps`, `Pod`: how validation messages name the kind."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


DEPLOYMENT: Final = ResourceType(
    "apps", "v1", "Deployment", "deployments", tracks_generation=True, status_subresource=True
)
HPA: Final = ResourceType(
    "autoscaling",
    "v2",
    "HorizontalPodAutoscaler",
    "horizontalpodautoscalers",
    tracks_generation=True,
    status_subresource=True,
)
LEASE: Final = ResourceType(
    "coordination.k8s.io", "v1", "Lease", "leases", create_on_update=True, unconditional_update=False
)
ENDPOINT_SLICE: Final = ResourceType("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
POD: Final = ResourceType("", "v1", "Pod", "pods", status_subresource=True)
SERVICE: Final = ResourceType("", "v1", "Service", "services", create_on_update=True, status_subresource=True)
SCALE_KIND: Final = ResourceType("autoscaling", "v1", "Scale", "scale")
KNOWN_TYPES: Final = (DEPLOYMENT, HPA, LEASE, ENDPOINT_SLICE, POD, SERVICE)


def _group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def _plural_of(kind: str) -> str:
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in "aeiou":
        return lower[:-1] + "ies"
    if lower.endswith(("s", "x", "ch", "sh")):
        return lower + "es"
    return lower + "s"


# --- errors ----------------------------------------------------------------------------------


class ApiError(Exception):
    """A failure answered as a `Status` body."""

    def __init__(self, code: int, reason: str, message: str, details: JsonObject | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JsonObject:
        body: JsonObject = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(rt: ResourceType, name: str, **more: Any) -> JsonObject:
    details: JsonObject = {}
    if name:
        details["name"] = name
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.plural
    details.update(more)
    return details


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def _no_such_resource() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def _already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name))


def _conflict(rt: ResourceType, name: str, why: str | None = None) -> ApiError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
        _details(rt, name),
    )


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _method_not_allowed() -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


@dataclass(frozen=True)
class _FieldError:
    path: str
    detail: str
    value: Any = None
    required: bool = False

    def text(self) -> str:
        if self.required:
            return (
                f"{self.path}: Required value: {self.detail}"
                if self.detail
                else f"{self.path}: Required value"
            )
        shown = json.dumps(self.value) if isinstance(self.value, str) else self.value
        return f"{self.path}: Invalid value: {shown}: {self.detail}"


def _invalid(rt: ResourceType, name: str, errors: list[_FieldError]) -> ApiError:
    texts = [e.text() for e in errors]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    causes = [
        {
            "reason": "FieldValueRequired" if e.required else "FieldValueInvalid",
            "message": e.text().removeprefix(f"{e.path}: "),
            "field": e.path,
        }
        for e in errors
    ]
    details: JsonObject = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.kind
    details["causes"] = causes
    return ApiError(422, "Invalid", f'{rt.qualified_kind} "{name}" is invalid: {joined}', details)


# --- selectors -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # "!=", "notin"


def _split_selector(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


_SET_REQUIREMENT = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)$")
_EQUALITY_REQUIREMENT = re.compile(r"^(?P<key>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>\S*)$")


def parse_label_selector(text: str) -> list[_Requirement]:
    """The requirements of a `labelSelector` query value; `BadRequest` when it does not parse."""
    requirements: list[_Requirement] = []
    if not text.strip():
        return requirements
    for part in _split_selector(text):
        requirement: _Requirement | None = None
        if match := _SET_REQUIREMENT.match(part):
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            requirement = _Requirement(match["key"], match["op"], values)
        elif match := _EQUALITY_REQUIREMENT.match(part):
            op = "=" if match["op"] in ("=", "==") else "!="
            requirement = _Requirement(match["key"], op, frozenset({match["value"]}))
        elif part.startswith("!"):
            requirement = _Requirement(part[1:].strip(), "!")
        elif part and " " not in part:
            requirement = _Requirement(part, "exists")
        if requirement is None or not _LABEL_KEY.fullmatch(requirement.key):
            raise _bad_request(f"unable to parse requirement: {part!r}: invalid label selector")
        if any(not _LABEL_VALUE.fullmatch(v) for v in requirement.values):
            raise _bad_request(f"unable to parse requirement: {part!r}: invalid label value")
        requirements.append(requirement)
    return requirements


def _parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    terms: list[tuple[str, str, str]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = re.fullmatch(r"(?P<field>[^=!]+?)\s*(?P<op>==|=|!=)\s*(?P<value>.*)", part)
        if match is None:
            raise _bad_request(f'invalid field selector: "{part}"')
        if match["field"] not in ("metadata.name", "metadata.namespace"):
            raise _bad_request(
                f'"{match["field"]}" is not a known field selector: only "metadata.name", "metadata.namespace"'
            )
        terms.append((match["field"], "!=" if match["op"] == "!=" else "=", match["value"]))
    return terms


def _selector_string(selector: JsonObject | None) -> str:
    """A LabelSelector as the string the Scale subresource reports (`app=x,tier=y`)."""
    if not selector:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        op = str(expression.get("operator", "")).lower()
        key = expression.get("key", "")
        values = ",".join(sorted(expression.get("values") or []))
        if op == "exists":
            parts.append(key)
        elif op == "doesnotexist":
            parts.append(f"!{key}")
        else:
            parts.append(f"{key} {op} ({values})")
    return ",".join(sorted(parts))


# --- patches ---------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: `null` deletes, objects merge, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Lists merged element by element in a strategic merge patch, by the field of their items that
# identifies them (`patchMergeKey` in the Kubernetes types); every other list is replaced.
_MERGE_KEYS: Final = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "hostAliases": "ip",
}


def _merge_key(field_name: str, items: list[Any]) -> str | None:
    if field_name == "ports" and any(isinstance(i, dict) and "containerPort" in i for i in items):
        return "containerPort"
    return _MERGE_KEYS.get(field_name)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes strategic merge patch for built-in types (the directives this project meets)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    patch = dict(patch)
    directive = patch.pop("$patch", None)
    if directive == "replace":
        return copy.deepcopy(patch)
    if directive == "delete":
        return None
    retain = patch.pop("$retainKeys", None)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [v for v in result.get(name) or [] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            merge_key = _merge_key(key, [*result[key], *value])
            result[key] = _merge_list(result[key], value, merge_key) if merge_key else copy.deepcopy(value)
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            merged.append(copy.deepcopy(item))
            continue
        index = next(
            (
                i
                for i, old in enumerate(merged)
                if isinstance(old, dict) and old.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(strategic_merge_patch({}, item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


class JsonPatchError(ValueError):
    """An RFC 6902 operation that cannot be applied."""


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise JsonPatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(document: Any, tokens: list[str], path: str) -> Any:
    node = document
    for token in tokens:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise JsonPatchError(f"doc is missing path: {path!r}")
    return node


def _add(document: Any, path: str, value: Any, *, replace: bool) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return copy.deepcopy(value)
    parent = _resolve(document, tokens[:-1], path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise JsonPatchError(f"replace operation does not apply: doc is missing key: {path}")
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(copy.deepcopy(value))
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = copy.deepcopy(value)
            else:
                parent.insert(int(last), copy.deepcopy(value))
        else:
            raise JsonPatchError(f"index out of range in {path!r}")
    else:
        raise JsonPatchError(f"doc is missing path: {path!r}")
    return document


def _remove(document: Any, path: str) -> tuple[Any, Any]:
    tokens = _pointer(path)
    if not tokens:
        raise JsonPatchError("cannot remove the whole document")
    parent = _resolve(document, tokens[:-1], path)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return document, parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return document, parent.pop(int(last))
    raise JsonPatchError(f"remove operation does not apply: doc is missing path: {path!r}")


def json_patch(document: Any, operations: Any) -> Any:
    """Apply an RFC 6902 patch (add, remove, replace, move, copy, test) to a copy of `document`."""
    if not isinstance(operations, list):
        raise _bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    result = copy.deepcopy(document)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise JsonPatchError(f"invalid operation {operation!r}")
        op, path = operation["op"], operation["path"]
        if op in ("add", "replace", "test") and "value" not in operation:
            raise JsonPatchError(f"operation {op!r} at {path!r} has no value")
        if op == "add":
            result = _add(result, path, operation["value"], replace=False)
        elif op == "replace":
            result = _add(result, path, operation["value"], replace=True)
        elif op == "remove":
            result, _ = _remove(result, path)
        elif op in ("move", "copy"):
            source = _resolve(result, _pointer(operation.get("from", "")), operation.get("from", ""))
            if op == "move":
                result, source = _remove(result, operation["from"])
            result = _add(result, path, source, replace=False)
        elif op == "test":
            if _resolve(result, _pointer(path), path) != operation["value"]:
                raise JsonPatchError(f"testing value {path} failed: test failed")
        else:
            raise JsonPatchError(f"unexpected kind of operation {op!r}")
    return result


# --- RBAC ------------------------------------------------------------------------------------


def load_manifest(file_name: str) -> JsonObject:
    """The one object in `deploy/kubernetes/<file_name>`, parsed: a fresh copy a test may change."""
    with (DEPLOY_DIR / file_name).open(encoding="utf-8") as handle:
        obj = yaml.safe_load(handle)
    if not isinstance(obj, dict):
        raise ValueError(f"{DEPLOY_DIR / file_name} does not hold one object")
    return obj


def deploy_role() -> JsonObject:
    """`deploy/kubernetes/role.yaml`: the Role the server authorises with by default."""
    return load_manifest("role.yaml")


def deploy_role_binding() -> JsonObject:
    """`deploy/kubernetes/rolebinding.yaml`: who is bound to the Role (its ServiceAccount)."""
    return load_manifest("rolebinding.yaml")


def role_without(role: JsonObject, verb: str, resource: str, *, api_group: str | None = None) -> JsonObject:
    """A copy of `role` whose rules no longer grant `verb` on `resource` (`deployments/scale`).

    Rules listing `*` as a verb are expanded first; a rule left with no verb is dropped.
    """
    if verb not in VERBS:
        raise ValueError(f"role_without.verb must be one of {sorted(VERBS)}, got {verb!r}")
    result = copy.deepcopy(role)
    rules: list[JsonObject] = []
    for rule in result.get("rules") or []:
        verbs = list(rule.get("verbs") or [])
        covers = resource in (rule.get("resources") or []) and (
            api_group is None or api_group in (rule.get("apiGroups") or [])
        )
        if covers and (verb in verbs or "*" in verbs):
            verbs = sorted(VERBS) if "*" in verbs else verbs
            rule["verbs"] = [v for v in verbs if v != verb]
            if not rule["verbs"]:
                continue
        rules.append(rule)
    result["rules"] = rules
    return result


def _rule_allows(rule: JsonObject, verb: str, group: str, resource: str, subresource: str, name: str) -> bool:
    """rbac/v1 `RuleAllows`: verb, API group, resource(/subresource) and resourceNames all match."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and verb not in verbs:
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and group not in groups:
        return False
    combined = f"{resource}/{subresource}" if subresource else resource
    resources = rule.get("resources") or []
    # `deployments` does not cover `deployments/scale`; `*/scale` covers every scale subresource.
    if not any(r in ("*", combined) or (subresource and r == f"*/{subresource}") for r in resources):
        return False
    names = rule.get("resourceNames") or []
    # An empty name (create; list or watch without a metadata.name selector) never matches a list.
    return not names or (bool(name) and name in names)


def _service_account_groups(user: str) -> list[str]:
    parts = user.split(":")
    if len(parts) == 4 and parts[:2] == ["system", "serviceaccount"]:
        return ["system:serviceaccounts", f"system:serviceaccounts:{parts[2]}", "system:authenticated"]
    return ["system:authenticated"]


def _subject_matches(subject: JsonObject, user: str, binding_namespace: str) -> bool:
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        # A RoleBinding's ServiceAccount subject without a namespace means the binding's own.
        namespace = subject.get("namespace") or binding_namespace
        return user == f"system:serviceaccount:{namespace}:{subject.get('name')}"
    if kind == "User":
        return user == subject.get("name")
    if kind == "Group":
        return subject.get("name") in _service_account_groups(user)
    return False


# --- MicroTime -------------------------------------------------------------------------------

_MICROTIME_LAYOUT: Final = "2006-01-02T15:04:05.000000Z07:00"
# Go's layout elements of RFC3339Micro and what each accepts, in order.
_MICROTIME_ELEMENTS: Final = (
    ("2006", r"\d{4}"),
    ("-", "-"),
    ("01", r"\d{2}"),
    ("-", "-"),
    ("02", r"\d{2}"),
    ("T", "T"),
    ("15", r"\d{2}"),
    (":", ":"),
    ("04", r"\d{2}"),
    (":", ":"),
    ("05", r"\d{2}"),
    (".000000", r"\.\d{6}"),
    ("Z07:00", r"Z|[+-]\d{2}:\d{2}"),
)


def microtime_error(value: Any) -> str | None:
    """Why `value` is not a MicroTime as metav1.MicroTime decodes it (Go's parse error), or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        return "json: cannot unmarshal number into Go value of type string"
    rest = value
    for layout, pattern in _MICROTIME_ELEMENTS:
        match = re.match(pattern, rest)
        if match is None:
            return f'parsing time "{value}" as "{_MICROTIME_LAYOUT}": cannot parse "{rest}" as "{layout}"'
        rest = rest[match.end() :]
    if rest:
        return f'parsing time "{value}": extra text: "{rest}"'
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return f'parsing time "{value}": day or month out of range'
    return None


def _check_decodable(rt: ResourceType, obj: Any) -> None:
    """The typed decode the apiserver does before anything else: MicroTime fields of a Lease."""
    if rt is not LEASE or not isinstance(obj, dict):
        return
    spec = obj.get("spec") or {}
    for field_name in ("acquireTime", "renewTime"):
        why = microtime_error(spec.get(field_name)) if isinstance(spec, dict) else None
        if why is not None:
            raise _bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: {why}')


# --- state -----------------------------------------------------------------------------------

_Key = tuple[str, str, str, str]  # (group, plural, namespace, name)


def _timestamp(epoch_s: float) -> str:
    """A metav1.Time: RFC 3339 in whole seconds."""
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _omit_zero(values: dict[str, int]) -> JsonObject:
    return {k: v for k, v in values.items() if v}


def _deployment_status(obj: JsonObject, ready: int) -> JsonObject:
    """What the Deployment controller reports once `ready` pods are ready (zero counts omitted)."""
    replicas = int(obj["spec"].get("replicas") or 0)
    return _omit_zero(
        {
            "observedGeneration": int(obj["metadata"].get("generation", 1)),
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, replicas - ready),
        }
    )


class ApiServerState:
    """The objects, the Role the client is bound to, the HPA model and the knobs a test turns.

    Safe to use from any thread. `role`: the Role evaluated for every request (None: no
    authorisation, everything allowed); `role_binding`: who it is bound to; `namespace`: where
    both live and the ServiceAccount's namespace (None: the namespace each request names, as if
    the kustomization were applied in every namespace a test uses).
    """

    def __init__(
        self,
        *,
        role: JsonObject | Literal["deploy"] | None = "deploy",
        role_binding: JsonObject | None = None,
        namespace: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.role: JsonObject | None = deploy_role() if role == "deploy" else role
        """The Role every request is authorised against; None authorises everything."""
        self.role_binding: JsonObject = role_binding if role_binding is not None else deploy_role_binding()
        """The RoleBinding: its `roleRef` must name `role`, its subjects are who may act."""
        self.namespace = namespace
        """The namespace of the Role, the RoleBinding and the ServiceAccount; None: each request's."""
        self.user: str | None = None
        """Who is asking; None: the binding's ServiceAccount (`system:serviceaccount:<ns>:<name>`)."""
        self.clock: Clock = clock if clock is not None else SystemClock()
        """Timestamps (creationTimestamp, lastScaleTime) and the HPA model's windows read it."""
        self.conflict_before_next_writes = 0
        """The next N writes to an existing object first see a concurrent writer bump it."""
        self.auto_rollout = True
        """True: a Deployment's ready replicas follow spec.replicas on every write."""
        self.requests: list[tuple[str, str]] = []
        """Every request as (method, path), in arrival order (401s included)."""
        self._lock = threading.RLock()
        self._objects: dict[_Key, JsonObject] = {}
        self._types: dict[tuple[str, str], ResourceType] = {(t.group, t.kind): t for t in KNOWN_TYPES}
        self._revision = 0
        self._denied: list[tuple[str, str, str | None]] = []
        self.hpa_controller = HpaControllerModel(self)
        """The HPA controller model: `running_apiserver(hpa_controller=True)` syncs it every period."""

    # --- the test API ---

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace `obj` as stored (status kept if given), bump its resourceVersion."""
        rt = self._type_for(str(obj.get("apiVersion", "")), str(obj.get("kind", "")), register=True)
        stored = copy.deepcopy(obj)
        metadata = stored.setdefault("metadata", {})
        if not metadata.get("name"):
            raise ValueError("put() needs metadata.name")
        metadata.setdefault("namespace", "default")
        with self._lock:
            key = self._key(rt, metadata["namespace"], metadata["name"])
            old = self._objects.get(key)
            if old is not None:
                metadata["uid"] = old["metadata"]["uid"]
                metadata["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            self._fill_new_metadata(rt, stored)
            if rt is DEPLOYMENT:
                self._settle_deployment(stored, old, keep_given_status="status" in obj)
            metadata["resourceVersion"] = self._next_revision()
            self._objects[key] = stored
            return copy.deepcopy(stored)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object, or None."""
        rt = self._type_for(api_version, kind)
        with self._lock:
            obj = self._objects.get(self._key(rt, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Remove the object if it exists."""
        rt = self._type_for(api_version, kind)
        with self._lock:
            self._objects.pop(self._key(rt, namespace, name), None)

    def deny(self, verb: str, resource: str, *, namespace: str | None = None) -> None:
        """Forbid `verb` (or `*`) on `resource` (`deployments/scale`, `leases`, `*`) in `namespace` (None: all).

        On top of the Role (RBAC itself has no deny): as if the Role bound in that namespace
        lacked the verb. Prefer `role_without()` for a Role that really lacks it.
        """
        if verb != "*" and verb not in VERBS:
            raise ValueError(f"unknown verb {verb!r}: one of {sorted(VERBS)} or *")
        with self._lock:
            self._denied.append((verb, resource, namespace))

    def allow_all(self) -> None:
        """Drop every `deny()` (the Role still applies; `state.role = None` lifts it too)."""
        with self._lock:
            self._denied.clear()

    def bump(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """Another writer changed the object: its resourceVersion moves, stale writes get 409."""
        rt = self._type_for(api_version, kind)
        with self._lock:
            obj = self._objects.get(self._key(rt, namespace, name))
            if obj is None:
                raise LookupError(f'{rt.qualified} "{name}" not found in namespace {namespace!r}')
            obj["metadata"]["resourceVersion"] = self._next_revision()

    def user_for(self, namespace: str | None) -> str:
        """Who a request in `namespace` comes from: `user` if set, else the bound ServiceAccount."""
        if self.user is not None:
            return self.user
        subjects = [s for s in self.role_binding.get("subjects") or [] if s.get("kind") == "ServiceAccount"]
        if not subjects:
            raise ValueError("the RoleBinding binds no ServiceAccount: set state.user to who is asking")
        binding_namespace = self.namespace or namespace or "default"
        return (
            f"system:serviceaccount:{subjects[0].get('namespace') or binding_namespace}:{subjects[0]['name']}"
        )

    def set_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: JsonObject
    ) -> JsonObject:
        """A controller wrote the object's status: stored as given, resourceVersion moved if it changed."""
        rt = self._type_for(api_version, kind)
        with self._lock:
            key = self._key(rt, namespace, name)
            old = self._objects.get(key)
            if old is None:
                raise LookupError(f'{rt.qualified} "{name}" not found in namespace {namespace!r}')
            return self._commit_status(key, copy.deepcopy(status), old, dry_run=False)

    def set_hpa_recommendation(self, namespace: str, name: str, replicas: int | None) -> None:
        """The HPA's metrics now ask for `replicas` (its raw recommendation); None: metrics unavailable."""
        self.hpa_controller.set_recommendation(namespace, name, replicas)

    def set_hpa_utilization(self, namespace: str, name: str, percent: float) -> None:
        """The HPA's pods now run at `percent` of their request (its Utilization target decides)."""
        self.hpa_controller.set_utilization(namespace, name, percent)

    def sync_hpas(self) -> None:
        """One HPA controller sync of every HPA, now (what each sync period does)."""
        self.hpa_controller.sync()

    def set_ready(self, namespace: str, name: str, ready: int) -> None:
        """The rollout progressed: the Deployment now has `ready` ready (and available) replicas."""
        with self._lock:
            obj = self._objects.get(self._key(DEPLOYMENT, namespace, name))
            if obj is None:
                raise LookupError(f'deployments.apps "{name}" not found in namespace {namespace!r}')
            obj["status"] = _deployment_status(obj, ready)
            obj["metadata"]["resourceVersion"] = self._next_revision()

    # --- internals used by the app ---

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _type_for(self, api_version: str, kind: str, *, register: bool = False) -> ResourceType:
        group = _group_of(api_version)
        with self._lock:
            rt = self._types.get((group, kind))
            if rt is None:
                if not register or not kind or not api_version:
                    raise ValueError(f"unknown kind {kind!r} in {api_version!r}")
                version = api_version.rpartition("/")[2]
                rt = ResourceType(group, version, kind, _plural_of(kind))
                self._types[(group, kind)] = rt
            return rt

    def _type_for_path(self, group: str, version: str, plural: str) -> ResourceType | None:
        with self._lock:
            return next(
                (
                    t
                    for t in self._types.values()
                    if (t.group, t.version, t.plural) == (group, version, plural)
                ),
                None,
            )

    @staticmethod
    def _key(rt: ResourceType, namespace: str, name: str) -> _Key:
        return (rt.group, rt.plural, namespace, name)

    def _fill_new_metadata(self, rt: ResourceType, obj: JsonObject) -> None:
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        metadata = obj["metadata"]
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", _timestamp(self.clock.now()))
        if rt.tracks_generation:
            metadata.setdefault("generation", 1)

    def _settle_deployment(self, obj: JsonObject, old: JsonObject | None, *, keep_given_status: bool) -> None:
        """Default spec.replicas and move the status as the (simulated) controller would."""
        spec = obj.setdefault("spec", {})
        if spec.get("replicas") is None:
            spec["replicas"] = 1
        if keep_given_status:
            return
        replicas = int(spec["replicas"])
        previous_ready = int(_at(old or {}, "status", "readyReplicas") or 0)
        ready = replicas if self.auto_rollout else previous_ready
        obj["status"] = _deployment_status(obj, ready)

    def _check_rbac(
        self, verb: str, rt: ResourceType, subresource: str, namespace: str | None, name: str
    ) -> None:
        """Authorise the request against the Role and its binding (and `deny()`), else 403."""
        resource = f"{rt.plural}/{subresource}" if subresource else rt.plural
        with self._lock:
            user = self.user_for(namespace)
            reason = self._rbac_denial(verb, rt, subresource, namespace, name, user)
            if reason is None and any(
                v in ("*", verb) and r in ("*", resource) and (ns is None or ns == namespace)
                for v, r, ns in self._denied
            ):
                reason = ""
        if reason is None:
            return
        subject = f'{rt.qualified} "{name}"' if name else rt.qualified
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        raise ApiError(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
            f'in API group "{rt.group}" {scope}{reason}',
            _details(rt, name),
        )

    def _rbac_denial(
        self, verb: str, rt: ResourceType, subresource: str, namespace: str | None, name: str, user: str
    ) -> str | None:
        """None when the Role allows the request, else the RBAC reason suffix of the message."""
        role = self.role
        if role is None:
            return None
        binding_namespace = self.namespace or namespace
        # A Role grants in its own namespace only; nothing cluster-wide.
        if namespace is None or binding_namespace != namespace:
            return ""
        subjects = self.role_binding.get("subjects") or []
        if not any(_subject_matches(s, user, binding_namespace) for s in subjects):
            return ""
        ref = self.role_binding.get("roleRef") or {}
        role_name = _at(role, "metadata", "name")
        if ref.get("kind") != "Role" or ref.get("name") != role_name:
            kind = str(ref.get("kind", "")).lower()
            return f': RBAC: {kind}.rbac.authorization.k8s.io "{ref.get("name", "")}" not found'
        rules = role.get("rules") or []
        if any(_rule_allows(rule, verb, rt.group, rt.plural, subresource, name) for rule in rules):
            return None
        return ""

    def _race(self, key: _Key) -> None:
        """A racing writer gets in first when the test asked for it."""
        if self.conflict_before_next_writes > 0 and key in self._objects:
            self.conflict_before_next_writes -= 1
            self._objects[key]["metadata"]["resourceVersion"] = self._next_revision()

    def _commit(
        self, rt: ResourceType, key: _Key, new: JsonObject, old: JsonObject | None, dry_run: bool
    ) -> JsonObject:
        """Store `new` (server fields filled); a write that changes nothing keeps the resourceVersion."""
        if old is not None:
            new_meta, old_meta = new["metadata"], old["metadata"]
            for owned in ("uid", "creationTimestamp", "generation"):
                if owned in old_meta:
                    new_meta[owned] = old_meta[owned]
                else:
                    new_meta.pop(owned, None)
            if rt.status_subresource:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            if rt.tracks_generation and new.get("spec") != old.get("spec"):
                new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        else:
            if rt.status_subresource:
                new.pop("status", None)
            new["metadata"].pop("generation", None)
        self._fill_new_metadata(rt, new)
        if rt is DEPLOYMENT:
            self._settle_deployment(new, old, keep_given_status=False)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"] if old else "0"
        if old is not None and new == old:
            return copy.deepcopy(old)
        new["metadata"]["resourceVersion"] = str(self._revision + 1)
        if not dry_run:
            self._next_revision()
            self._objects[key] = new
        return copy.deepcopy(new)

    def _commit_status(self, key: _Key, status: Any, old: JsonObject, dry_run: bool) -> JsonObject:
        """A status write: only the status changes; a changed one moves the resourceVersion."""
        new = copy.deepcopy(old)
        if status is None:
            new.pop("status", None)
        else:
            new["status"] = status
        if new == old:
            return copy.deepcopy(old)
        new["metadata"]["resourceVersion"] = str(self._revision + 1)
        if not dry_run:
            self._next_revision()
            self._objects[key] = new
        return copy.deepcopy(new)


# --- validation ------------------------------------------------------------------------------


def _at(obj: JsonObject, *path: str) -> Any:
    node: Any = obj
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _validate(rt: ResourceType, obj: JsonObject, old: JsonObject | None) -> None:
    name = obj["metadata"]["name"]
    errors: list[_FieldError] = []
    if old is None and not _DNS1123_SUBDOMAIN.fullmatch(name):
        errors.append(
            _FieldError(
                "metadata.name",
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
                "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
                name,
            )
        )
    if rt is DEPLOYMENT:
        errors += _validate_replicas(obj, "spec.replicas")
        selector = _at(obj, "spec", "selector")
        if not selector:
            errors.append(_FieldError("spec.selector", "", required=True))
        else:
            template_labels = _at(obj, "spec", "template", "metadata", "labels") or {}
            requirements = parse_label_selector(_selector_string(selector))
            if not all(r.matches(template_labels) for r in requirements):
                errors.append(
                    _FieldError(
                        "spec.template.metadata.labels",
                        "`selector` does not match template `labels`",
                        template_labels,
                    )
                )
            if old is not None and selector != _at(old, "spec", "selector"):
                errors.append(_FieldError("spec.selector", "field is immutable", selector))
    elif rt is SCALE_KIND:
        errors += _validate_replicas(obj, "spec.replicas")
    elif rt is HPA:
        ref = _at(obj, "spec", "scaleTargetRef") or {}
        if not ref.get("kind"):
            errors.append(_FieldError("spec.scaleTargetRef.kind", "", required=True))
        if not ref.get("name"):
            errors.append(_FieldError("spec.scaleTargetRef.name", "", required=True))
        low, high = _at(obj, "spec", "minReplicas"), _at(obj, "spec", "maxReplicas")
        if low is not None and (not isinstance(low, int) or low < 1):
            errors.append(_FieldError("spec.minReplicas", "must be greater than or equal to 1", low))
        if not isinstance(high, int) or high < 1:
            errors.append(_FieldError("spec.maxReplicas", "must be greater than 0", high))
        elif isinstance(low, int) and high < low:
            errors.append(
                _FieldError("spec.maxReplicas", "must be greater than or equal to `minReplicas`", high)
            )
    elif rt is LEASE:
        duration = _at(obj, "spec", "leaseDurationSeconds")
        if duration is not None and (not isinstance(duration, int) or duration <= 0):
            errors.append(_FieldError("spec.leaseDurationSeconds", "must be greater than 0", duration))
        transitions = _at(obj, "spec", "leaseTransitions")
        if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
            errors.append(
                _FieldError("spec.leaseTransitions", "must be greater than or equal to 0", transitions)
            )
    if errors:
        raise _invalid(rt, name, errors)


def _validate_replicas(obj: JsonObject, path: str) -> list[_FieldError]:
    replicas = _at(obj, *path.split("."))
    if replicas is not None and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0):
        return [_FieldError(path, "must be greater than or equal to 0", replicas)]
    return []


# --- the HTTP app ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    rt: ResourceType
    namespace: str | None
    name: str
    subresource: str


def _scale_of(deployment_obj: JsonObject) -> JsonObject:
    metadata = deployment_obj["metadata"]
    scale: JsonObject = {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: metadata[k]
            for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if k in metadata
        },
        "spec": _omit_zero({"replicas": int(_at(deployment_obj, "spec", "replicas") or 0)}),
        "status": {"replicas": int(_at(deployment_obj, "status", "replicas") or 0)},
    }
    selector = _selector_string(_at(deployment_obj, "spec", "selector"))
    if selector:
        scale["status"]["selector"] = selector
    return scale


class _Api:
    """Routes one request to the state, turning `ApiError` into a Status response."""

    def __init__(self, state: ApiServerState, token: str | None) -> None:
        self.state = state
        self.token = token

    async def handle(self, request: Request) -> Response:
        state = self.state
        with state._lock:
            state.requests.append((request.method, request.url.path))
        try:
            if self.token is not None and request.headers.get("authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            body = await request.body()
            code, payload = self._dispatch(request, body)
        except ApiError as error:
            code, payload = error.code, error.status()
        return JSONResponse(payload, status_code=code)

    def _dispatch(self, request: Request, raw_body: bytes) -> tuple[int, JsonObject]:
        path = request.url.path.rstrip("/")
        if path == "/version":
            return 200, dict(SERVER_VERSION)
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if path == "/apis":
            return 200, self._group_list()
        target = self._parse(path)
        method = request.method
        query = request.query_params
        dry_run = query.get("dryRun") == "All"
        state = self.state
        rt = target.rt
        if target.subresource and not (
            (rt is DEPLOYMENT and target.subresource == "scale")
            or (rt.status_subresource and target.subresource == "status")
        ):
            raise _no_such_resource()
        if not target.name:
            if method == "GET":
                verb = "watch" if query.get("watch") in ("true", "1") else "list"
            elif method == "POST":
                verb = "create"
            elif method == "DELETE":
                verb = "deletecollection"
            else:
                raise _method_not_allowed()
        else:
            verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "")
            if not verb:
                raise _method_not_allowed()
        if target.namespace is None and verb != "list":
            raise _no_such_resource()
        name = target.name
        if verb in ("list", "watch"):
            # The apiserver takes the name of a list or watch from a `metadata.name=` field
            # selector, so resourceNames can allow it.
            terms = _parse_field_selector(query.get("fieldSelector", ""))
            name = next((v for f, op, v in terms if f == "metadata.name" and op == "="), "")
        state._check_rbac(verb, rt, target.subresource, target.namespace, name)
        if verb in ("watch", "deletecollection"):
            raise _bad_request(f"{verb} is not supported by this test API server")
        with state._lock:
            if verb == "list":
                return self._list(
                    rt, target.namespace, query.get("labelSelector", ""), query.get("fieldSelector", "")
                )
            assert target.namespace is not None
            key = state._key(rt, target.namespace, target.name)
            if target.subresource == "scale":
                return self._scale(verb, target, key, request, raw_body, dry_run)
            if target.subresource == "status":
                return self._status(verb, target, key, request, raw_body, dry_run)
            if verb == "get":
                obj = state._objects.get(key)
                if obj is None:
                    raise _not_found(rt, target.name)
                return 200, copy.deepcopy(obj)
            if verb == "create":
                return self._create(rt, target.namespace, _json(raw_body), dry_run)
            if verb == "update":
                return self._update(target, key, _json(raw_body), dry_run)
            if verb == "patch":
                return self._patch(target, key, request, raw_body, dry_run)
            return self._delete(target, key, raw_body, dry_run)

    def _group_list(self) -> JsonObject:
        groups: dict[str, list[str]] = {}
        with self.state._lock:
            for t in self.state._types.values():
                if t.group:
                    groups.setdefault(t.group, []).append(t.version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": g,
                    "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                    "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]},
                }
                for g, vs in sorted(groups.items())
            ],
        }

    def _parse(self, path: str) -> _Target:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _no_such_resource()
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not 1 <= len(rest) <= 3:
            raise _no_such_resource()
        rt = self.state._type_for_path(group, version, rest[0])
        if rt is None:
            raise _no_such_resource()
        name = rest[1] if len(rest) > 1 else ""
        subresource = rest[2] if len(rest) > 2 else ""
        return _Target(rt, namespace, name, subresource)

    def _list(
        self, rt: ResourceType, namespace: str | None, label_selector: str, field_selector: str
    ) -> tuple[int, JsonObject]:
        requirements = parse_label_selector(label_selector)
        field_terms = _parse_field_selector(field_selector)
        items = []
        for (group, plural, ns, name), obj in sorted(self.state._objects.items()):
            if (group, plural) != (rt.group, rt.plural) or (namespace is not None and ns != namespace):
                continue
            labels = obj["metadata"].get("labels") or {}
            if not all(r.matches(labels) for r in requirements):
                continue
            fields = {"metadata.name": name, "metadata.namespace": ns}
            if not all((fields[f] == v) == (op == "=") for f, op, v in field_terms):
                continue
            item = copy.deepcopy(obj)
            item.pop("apiVersion", None)
            item.pop("kind", None)
            items.append(item)
        return 200, {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(self.state._revision)},
            "items": items,
        }

    def _check_identity(
        self, rt: ResourceType, body: JsonObject, namespace: str, name: str | None
    ) -> JsonObject:
        if not isinstance(body, dict):
            raise _bad_request("the body of the request was not a JSON object")
        _check_decodable(rt, body)
        api_version, kind = body.get("apiVersion"), body.get("kind")
        expected_version = SCALE_KIND.api_version if rt is SCALE_KIND else rt.api_version
        if api_version and api_version != expected_version:
            raise _bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version ({expected_version})"
            )
        if kind and kind != rt.kind:
            raise _bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        metadata = body.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise _bad_request("metadata must be an object")
        if metadata.get("namespace") not in (None, "", namespace):
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        metadata["namespace"] = namespace
        if name is not None and metadata.get("name") != name:
            raise _bad_request(
                f"the name of the object ({metadata.get('name', '')}) does not match the name on the URL ({name})"
            )
        return body

    def _create(
        self, rt: ResourceType, namespace: str, body: JsonObject, dry_run: bool
    ) -> tuple[int, JsonObject]:
        state = self.state
        obj = self._check_identity(rt, body, namespace, None)
        metadata = obj["metadata"]
        if not metadata.get("name"):
            if metadata.get("generateName"):
                metadata["name"] = metadata["generateName"] + secrets.token_hex(3)[:5]
            else:
                raise _invalid(
                    rt, "", [_FieldError("metadata.name", "name or generateName is required", required=True)]
                )
        if metadata.get("resourceVersion"):
            raise ApiError(
                500,
                "InternalError",
                "Internal error occurred: resourceVersion should not be set on objects to be created",
                {"causes": [{"message": "resourceVersion should not be set on objects to be created"}]},
            )
        key = state._key(rt, namespace, metadata["name"])
        if key in state._objects:
            raise _already_exists(rt, metadata["name"])
        for server_owned in ("uid", "creationTimestamp", "generation"):
            metadata.pop(server_owned, None)
        _validate(rt, obj, None)
        return 201, state._commit(rt, key, obj, None, dry_run)

    def _update(self, target: _Target, key: _Key, body: JsonObject, dry_run: bool) -> tuple[int, JsonObject]:
        state, rt = self.state, target.rt
        assert target.namespace is not None
        obj = self._check_identity(rt, body, target.namespace, target.name)
        old = state._objects.get(key)
        if old is None:
            if not rt.create_on_update:
                raise _not_found(rt, target.name)
            obj["metadata"].pop("resourceVersion", None)
            return self._create(rt, target.namespace, obj, dry_run)
        state._race(key)
        old = state._objects[key]
        given = obj["metadata"].get("resourceVersion") or ""
        if not given and not rt.unconditional_update:
            raise _invalid(
                rt,
                target.name,
                [_FieldError("metadata.resourceVersion", "must be specified for an update", 0)],
            )
        if given and given != old["metadata"]["resourceVersion"]:
            raise _conflict(rt, target.name)
        _validate(rt, obj, old)
        return 200, state._commit(rt, key, obj, old, dry_run)

    def _patch(
        self, target: _Target, key: _Key, request: Request, raw_body: bytes, dry_run: bool
    ) -> tuple[int, JsonObject]:
        state, rt = self.state, target.rt
        old = state._objects.get(key)
        if old is None:
            raise _not_found(rt, target.name)
        state._race(key)
        old = state._objects[key]
        patched = _apply_patch(request, raw_body, old)
        if not isinstance(patched, dict):
            raise _bad_request("the patched object is not a JSON object")
        _check_decodable(rt, patched)
        metadata = patched.setdefault("metadata", {})
        if metadata.get("resourceVersion") != old["metadata"]["resourceVersion"]:
            raise _conflict(rt, target.name)
        if metadata.get("name") != target.name or metadata.get("namespace") != target.namespace:
            raise _bad_request("metadata.name and metadata.namespace cannot be changed by a patch")
        _validate(rt, patched, old)
        return 200, state._commit(rt, key, patched, old, dry_run)

    def _delete(self, target: _Target, key: _Key, raw_body: bytes, dry_run: bool) -> tuple[int, JsonObject]:
        state, rt = self.state, target.rt
        old = state._objects.get(key)
        if old is None:
            raise _not_found(rt, target.name)
        state._race(key)
        old = state._objects[key]
        options = _json(raw_body) if raw_body.strip() else {}
        preconditions = options.get("preconditions") or {} if isinstance(options, dict) else {}
        stored_rv = old["metadata"]["resourceVersion"]
        wanted_rv = preconditions.get("resourceVersion")
        if wanted_rv and wanted_rv != stored_rv:
            raise _conflict(
                rt,
                target.name,
                f"the ResourceVersion in the precondition ({wanted_rv}) does not match the ResourceVersion "
                f"in record ({stored_rv}). The object might have been modified",
            )
        wanted_uid = preconditions.get("uid")
        if wanted_uid and wanted_uid != old["metadata"]["uid"]:
            raise _conflict(
                rt,
                target.name,
                f"the UID in the precondition ({wanted_uid}) does not match the UID in record "
                f"({old['metadata']['uid']}). The object might have been modified",
            )
        if not dry_run:
            del state._objects[key]
            state._next_revision()
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": _details(rt, target.name, uid=old["metadata"]["uid"]),
        }

    def _scale(
        self, verb: str, target: _Target, key: _Key, request: Request, raw_body: bytes, dry_run: bool
    ) -> tuple[int, JsonObject]:
        state, rt = self.state, target.rt
        if verb not in ("get", "update", "patch"):
            raise _method_not_allowed()
        old = state._objects.get(key)
        if old is None:
            raise _not_found(rt, target.name)
        if verb == "get":
            return 200, _scale_of(old)
        assert target.namespace is not None
        state._race(key)
        old = state._objects[key]
        current_rv = old["metadata"]["resourceVersion"]
        if verb == "update":
            scale = self._check_identity(SCALE_KIND, _json(raw_body), target.namespace, target.name)
            given = scale["metadata"].get("resourceVersion")
            if given and given != current_rv:
                raise _conflict(rt, target.name)
        else:
            scale = _apply_patch(request, raw_body, _scale_of(old))
            if not isinstance(scale, dict) or _at(scale, "metadata", "resourceVersion") != current_rv:
                raise _conflict(rt, target.name)
        _validate(SCALE_KIND, {"metadata": {"name": target.name}, **scale}, old)
        wanted_uid = _at(scale, "metadata", "uid")
        if wanted_uid and wanted_uid != old["metadata"]["uid"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on deployments/scale.apps "{target.name}": Precondition failed: '
                f"UID in precondition: {wanted_uid}, UID in object meta: {old['metadata']['uid']}",
                {"name": target.name, "group": "apps", "kind": "deployments/scale"},
            )
        updated = copy.deepcopy(old)
        updated["spec"]["replicas"] = int(_at(scale, "spec", "replicas") or 0)
        stored = state._commit(rt, key, updated, old, dry_run)
        return 200, _scale_of(stored)

    def _status(
        self, verb: str, target: _Target, key: _Key, request: Request, raw_body: bytes, dry_run: bool
    ) -> tuple[int, JsonObject]:
        """`/status`: the whole object is read and written, but only its status changes."""
        state, rt = self.state, target.rt
        if verb not in ("get", "update", "patch"):
            raise _method_not_allowed()
        old = state._objects.get(key)
        if old is None:
            raise _not_found(rt, target.name)
        if verb == "get":
            return 200, copy.deepcopy(old)
        assert target.namespace is not None
        state._race(key)
        old = state._objects[key]
        if verb == "update":
            written = self._check_identity(rt, _json(raw_body), target.namespace, target.name)
            given = written["metadata"].get("resourceVersion")
            if given and given != old["metadata"]["resourceVersion"]:
                raise _conflict(rt, target.name)
        else:
            written = _apply_patch(request, raw_body, old)
            if not isinstance(written, dict) or _at(written, "metadata", "resourceVersion") != _at(
                old, "metadata", "resourceVersion"
            ):
                raise _conflict(rt, target.name)
        return 200, state._commit_status(key, copy.deepcopy(written.get("status")), old, dry_run)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError as exc:
        raise _bad_request(f"the body of the request could not be decoded as JSON: {exc}") from None


def _apply_patch(request: Request, raw_body: bytes, current: JsonObject) -> Any:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in PATCH_MEDIA_TYPES or media_type == "application/apply-patch+yaml":
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{', '.join(p for p in PATCH_MEDIA_TYPES if p != 'application/apply-patch+yaml')}",
        )
    patch = _json(raw_body)
    if media_type == "application/json-patch+json":
        try:
            return json_patch(current, patch)
        except JsonPatchError as exc:
            raise ApiError(422, "Invalid", str(exc)) from None
    if not isinstance(patch, dict):
        raise _bad_request("the patch is not a JSON object")
    if media_type == "application/merge-patch+json":
        return merge_patch(current, patch)
    return strategic_merge_patch(current, patch)


def create_apiserver_app(state: ApiServerState, *, token: str | None) -> Starlette:
    """The Starlette app serving `state` (every path goes through one dispatcher)."""
    api = _Api(state, token)
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", api.handle, methods=methods)])


# --- object builders -------------------------------------------------------------------------


def deployment(
    namespace: str, name: str, replicas: int, *, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """An apps/v1 Deployment as `kubectl create deployment` would make it (status left to the server)."""
    pod_labels = dict(labels) if labels is not None else {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(pod_labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(pod_labels)},
            "template": {
                "metadata": {"labels": dict(pod_labels)},
                "spec": {"containers": [{"name": name, "image": f"registry.example/{name}:test"}]},
            },
        },
    }


def hpa(
    namespace: str, name: str, target_deployment: str, min_replicas: int, max_replicas: int
) -> dict[str, Any]:
    """An autoscaling/v2 HorizontalPodAutoscaler on a Deployment (CPU utilisation 70 %)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target_deployment},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        },
    }


def endpoint_slice(namespace: str, service: str, addresses: list[tuple[str, int, bool]]) -> dict[str, Any]:
    """A discovery.k8s.io/v1 EndpointSlice of `service`: one endpoint per (ip, port, ready).

    A slice carries one port set, as in Kubernetes: every address must share the port (make one
    slice per port otherwise; the name is derived from service and port, so they do not clash).
    """
    ports = {port for _, port, _ in addresses}
    if len(ports) > 1:
        raise ValueError(
            f"one EndpointSlice serves one port set, got ports {sorted(ports)}: make one slice per port"
        )
    port = next(iter(ports), None)
    suffix = hashlib.sha256(f"{service}:{port}".encode()).hexdigest()[:5]
    ipv6 = any(":" in ip for ip, _, _ in addresses)
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-{suffix}",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv6" if ipv6 else "IPv4",
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": False}}
            for ip, _, ready in addresses
        ],
        "ports": [{"name": "", "port": port, "protocol": "TCP"}] if port is not None else [],
    }


# --- the HPA controller model ----------------------------------------------------------------

_DEFAULT_SCALE_UP_RULES: Final[JsonObject] = {
    "stabilizationWindowSeconds": 0,
    "selectPolicy": "Max",
    "policies": [
        {"type": "Pods", "value": 4, "periodSeconds": 15},
        {"type": "Percent", "value": 100, "periodSeconds": 15},
    ],
}
_DEFAULT_SCALE_DOWN_RULES: Final[JsonObject] = {
    "selectPolicy": "Max",
    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
}
_LEGACY_SCALE_UP_FACTOR: Final = 2.0
_LEGACY_SCALE_UP_MINIMUM: Final = 4
"""Without `behavior`, one sync scales up to at most max(2 x current, 4) replicas."""


@dataclass
class _HpaMemory:
    """What kube-controller-manager keeps in memory per HPA (lost on restart, like there)."""

    recommendations: list[tuple[float, int]] = field(default_factory=list)
    """(time, raw recommendation from metrics): the stabilization windows look at these."""
    scale_up_events: list[tuple[float, int]] = field(default_factory=list)
    scale_down_events: list[tuple[float, int]] = field(default_factory=list)
    """(time, replicas added / removed) by this HPA: the rate policies look at these."""
    recommendation: int | None = None
    utilization_percent: float | None = None


def _rules(behavior: JsonObject, direction: str, defaults: JsonObject) -> JsonObject:
    """The scaling rules of one direction with the apiserver's defaults filled in."""
    given = behavior.get(direction)
    if not isinstance(given, dict):
        return copy.deepcopy(defaults)
    rules = dict(given)
    if not rules.get("policies"):
        rules["policies"] = copy.deepcopy(defaults["policies"])
    rules.setdefault("selectPolicy", "Max")
    if rules.get("stabilizationWindowSeconds") is None and "stabilizationWindowSeconds" in defaults:
        rules["stabilizationWindowSeconds"] = defaults["stabilizationWindowSeconds"]
    return rules


def _changed_in_period(events: list[tuple[float, int]], now_s: float, period_s: float) -> int:
    cutoff = now_s - period_s
    return sum(change for at_s, change in events if at_s > cutoff)


class HpaControllerModel:
    """The HPA controller of kube-controller-manager (autoscaling/v2), as far as the engine meets it.

    Each `sync()` reconciles every HPA whose `scaleTargetRef` is a Deployment served here, as
    `HorizontalController.reconcileAutoscaler` does:

    - the first sync of an HPA records the current replicas as a recommendation;
    - Deployment at 0 replicas (minReplicas > 0): autoscaling is off, nothing changes;
    - replicas above `maxReplicas`: scale to `maxReplicas`; below `minReplicas` (default 1):
      scale to `minReplicas` at once, whatever the metrics or windows say;
    - otherwise the raw recommendation comes from the metric the test set:
      `set_recommendation` (the replicas the metrics ask for) or `set_utilization` (percent of
      the request: ceil(replicas x utilization / target), unchanged within the 10 % tolerance;
      the pods are taken to be the current replicas, all ready); with no metric the HPA cannot
      compute one and changes nothing;
    - without `spec.behavior`: the recommendation is the largest raw one of the last 300 s
      (scale-down stabilization; scale-up is immediate), then clamped to
      [minReplicas, min(maxReplicas, max(2 x replicas, 4))];
    - with `spec.behavior` (defaults filled as the apiserver does: scale-up window 0, Max of
      4 pods / 100 % per 15 s; scale-down window 300 s, 100 % per 15 s): the recommendation is
      held between the smallest raw one of the scale-up window and the largest of the
      scale-down window, then limited by the rate policies (`Pods`, `Percent`, `selectPolicy`
      Max/Min/Disabled) against the scale events of their periods, and by min/max replicas;
    - a change writes the Deployment's `spec.replicas` (its resourceVersion moves) and sets
      `status.lastScaleTime`; the status (`currentReplicas`, `desiredReplicas`,
      `lastScaleTime`) is written when it changed.

    The windows keep raw recommendations, not replica counts, as the real controller does.
    Not modelled: conditions, currentMetrics, pods without metrics, targets other than
    Deployments. Every HPA is synced on the same tick (the real one offsets each by when it
    was queued).
    """

    def __init__(
        self,
        state: ApiServerState,
        *,
        downscale_stabilization_s: float = HPA_DOWNSCALE_STABILIZATION_S,
        tolerance: float = HPA_TOLERANCE,
    ) -> None:
        if not 0 <= downscale_stabilization_s <= 3600:
            raise ValueError(
                f"downscale_stabilization_s must be in [0, 3600], got {downscale_stabilization_s!r}"
            )
        if not 0 <= tolerance < 1:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
        self._state = state
        self.downscale_stabilization_s = downscale_stabilization_s
        self.tolerance = tolerance
        self._memory: dict[_Key, _HpaMemory] = {}
        self.syncs = 0
        """How many syncs ran (a test can wait for the next one)."""

    def set_recommendation(self, namespace: str, name: str, replicas: int | None) -> None:
        """The replicas the HPA's metrics ask for from now on (None: no metric)."""
        if replicas is not None and replicas < 0:
            raise ValueError(f"set_recommendation.replicas must be >= 0, got {replicas!r}")
        with self._state._lock:
            memory = self._memory.setdefault(self._state._key(HPA, namespace, name), _HpaMemory())
            memory.recommendation, memory.utilization_percent = replicas, None

    def set_utilization(self, namespace: str, name: str, percent: float) -> None:
        """The average utilization of the target's pods, in percent of their request."""
        if not 0 <= percent < 100_000:
            raise ValueError(f"set_utilization.percent must be in [0, 100000), got {percent!r}")
        with self._state._lock:
            memory = self._memory.setdefault(self._state._key(HPA, namespace, name), _HpaMemory())
            memory.recommendation, memory.utilization_percent = None, percent

    def recommendations(self, namespace: str, name: str) -> list[tuple[float, int]]:
        """The (time, raw recommendation) pairs the controller remembers for an HPA."""
        with self._state._lock:
            memory = self._memory.get(self._state._key(HPA, namespace, name))
            return list(memory.recommendations) if memory else []

    def sync(self) -> None:
        """Reconcile every HPA now."""
        state = self._state
        with state._lock:
            self.syncs += 1
            now_s = state.clock.now()
            for key in sorted(k for k in state._objects if k[:2] == (HPA.group, HPA.plural)):
                self._reconcile(key, now_s)

    def _reconcile(self, key: _Key, now_s: float) -> None:
        state = self._state
        hpa_obj = state._objects[key]
        spec = hpa_obj.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        if ref.get("kind") != "Deployment" or _group_of(str(ref.get("apiVersion", ""))) != "apps":
            return
        target_key = state._key(DEPLOYMENT, key[2], str(ref.get("name", "")))
        target = state._objects.get(target_key)
        if target is None:
            return  # FailedGetScale: the real controller only sets a condition
        memory = self._memory.setdefault(key, _HpaMemory())
        current = int(_at(target, "spec", "replicas") or 0)
        if not memory.recommendations:
            memory.recommendations.append((now_s, current))
        min_replicas = int(spec.get("minReplicas") or 1)
        max_replicas = int(spec.get("maxReplicas") or 1)
        behavior = spec.get("behavior")
        status = copy.deepcopy(hpa_obj.get("status") or {})
        desired = current
        rescale = True
        if current == 0 and min_replicas != 0:
            desired, rescale = 0, False
        elif current > max_replicas:
            desired = max_replicas
        elif current < min_replicas:
            desired = min_replicas
        else:
            raw = self._raw_recommendation(memory, spec, current)
            if raw is None:
                # Metrics unavailable: status keeps its desiredReplicas, nothing scales.
                desired, rescale = int(status.get("desiredReplicas") or 0), False
            else:
                if isinstance(behavior, dict):
                    desired = self._with_behavior(
                        memory, behavior, now_s, current, raw, min_replicas, max_replicas
                    )
                else:
                    desired = self._legacy(memory, now_s, current, raw, min_replicas, max_replicas)
                rescale = desired != current
        if rescale:
            updated = copy.deepcopy(target)
            updated["spec"]["replicas"] = desired
            state._commit(DEPLOYMENT, target_key, updated, target, dry_run=False)
            status["lastScaleTime"] = _timestamp(now_s)
            if isinstance(behavior, dict):
                self._store_scale_event(memory, behavior, now_s, current, desired)
        if current:
            status["currentReplicas"] = current
        else:
            status.pop("currentReplicas", None)  # omitempty
        status["desiredReplicas"] = desired
        state._commit_status(key, status, hpa_obj, dry_run=False)

    def _raw_recommendation(self, memory: _HpaMemory, spec: JsonObject, current: int) -> int | None:
        if memory.recommendation is not None:
            return memory.recommendation
        if memory.utilization_percent is None:
            return None
        target_percent = next(
            (
                _at(m, "resource", "target", "averageUtilization")
                for m in spec.get("metrics") or []
                if m.get("type") == "Resource" and _at(m, "resource", "target", "type") == "Utilization"
            ),
            None,
        )
        if not target_percent:
            return None
        ratio = memory.utilization_percent / float(target_percent)
        if abs(1.0 - ratio) <= self.tolerance:
            return current
        return math.ceil(ratio * current)

    def _legacy(
        self, memory: _HpaMemory, now_s: float, current: int, raw: int, min_replicas: int, max_replicas: int
    ) -> int:
        """`normalizeDesiredReplicas`: the max of the window's raw recommendations, then the limits."""
        cutoff = now_s - self.downscale_stabilization_s
        stabilized = max([raw, *(r for at_s, r in memory.recommendations if at_s >= cutoff)])
        self._record(memory, now_s, raw, [cutoff])
        scale_up_limit = max(int(_LEGACY_SCALE_UP_FACTOR * current), _LEGACY_SCALE_UP_MINIMUM)
        return max(min_replicas, min(stabilized, min(max_replicas, scale_up_limit)))

    def _with_behavior(
        self,
        memory: _HpaMemory,
        behavior: JsonObject,
        now_s: float,
        current: int,
        raw: int,
        min_replicas: int,
        max_replicas: int,
    ) -> int:
        """`normalizeDesiredReplicasWithBehaviors`: both windows, then the rate policies."""
        up = _rules(behavior, "scaleUp", _DEFAULT_SCALE_UP_RULES)
        down = _rules(behavior, "scaleDown", _DEFAULT_SCALE_DOWN_RULES)
        up_window_s = float(up.get("stabilizationWindowSeconds") or 0)
        down_window = down.get("stabilizationWindowSeconds")
        down_window_s = float(down_window) if down_window is not None else self.downscale_stabilization_s
        up_cutoff, down_cutoff = now_s - up_window_s, now_s - down_window_s
        up_recommendation = min([raw, *(r for at_s, r in memory.recommendations if at_s > up_cutoff)])
        down_recommendation = max([raw, *(r for at_s, r in memory.recommendations if at_s > down_cutoff)])
        stabilized = min(max(current, up_recommendation), down_recommendation)
        self._record(memory, now_s, raw, [up_cutoff, down_cutoff])
        if stabilized > current:
            limit = max(self._scale_up_limit(memory, up, now_s, current), current)
            return min(stabilized, min(max_replicas, limit))
        if stabilized < current:
            limit = min(self._scale_down_limit(memory, down, now_s, current), current)
            return max(stabilized, max(min_replicas, limit))
        return stabilized

    @staticmethod
    def _record(memory: _HpaMemory, now_s: float, raw: int, cutoffs: list[float]) -> None:
        """Keep the raw recommendation; one that fell out of every window is dropped."""
        memory.recommendations = [
            (at_s, r) for at_s, r in memory.recommendations if any(at_s >= c for c in cutoffs)
        ]
        memory.recommendations.append((now_s, raw))

    @staticmethod
    def _period_start(memory: _HpaMemory, now_s: float, current: int, period_s: float) -> int:
        added = _changed_in_period(memory.scale_up_events, now_s, period_s)
        removed = _changed_in_period(memory.scale_down_events, now_s, period_s)
        return current - added + removed

    def _scale_up_limit(self, memory: _HpaMemory, rules: JsonObject, now_s: float, current: int) -> int:
        select = rules.get("selectPolicy", "Max")
        if select == "Disabled":
            return current
        proposals = []
        for policy in rules.get("policies") or []:
            start = self._period_start(memory, now_s, current, float(policy.get("periodSeconds", 15)))
            value = int(policy.get("value", 0))
            if policy.get("type") == "Pods":
                proposals.append(start + value)
            else:
                proposals.append(math.ceil(start * (1 + value / 100)))
        if not proposals:
            return current
        return min(proposals) if select == "Min" else max(proposals)

    def _scale_down_limit(self, memory: _HpaMemory, rules: JsonObject, now_s: float, current: int) -> int:
        select = rules.get("selectPolicy", "Max")
        if select == "Disabled":
            return current
        proposals = []
        for policy in rules.get("policies") or []:
            start = self._period_start(memory, now_s, current, float(policy.get("periodSeconds", 15)))
            value = int(policy.get("value", 0))
            if policy.get("type") == "Pods":
                proposals.append(start - value)
            else:
                proposals.append(int(start * (1 - value / 100)))
        if not proposals:
            return current
        return max(proposals) if select == "Min" else min(proposals)

    @staticmethod
    def _store_scale_event(
        memory: _HpaMemory, behavior: JsonObject, now_s: float, previous: int, desired: int
    ) -> None:
        up = _rules(behavior, "scaleUp", _DEFAULT_SCALE_UP_RULES)
        down = _rules(behavior, "scaleDown", _DEFAULT_SCALE_DOWN_RULES)
        longest_s = max(
            [float(p.get("periodSeconds", 15)) for p in [*up["policies"], *down["policies"]]] or [15.0]
        )
        cutoff = now_s - longest_s
        memory.scale_up_events = [e for e in memory.scale_up_events if e[0] > cutoff]
        memory.scale_down_events = [e for e in memory.scale_down_events if e[0] > cutoff]
        if desired > previous:
            memory.scale_up_events.append((now_s, desired - previous))
        else:
            memory.scale_down_events.append((now_s, previous - desired))


# --- running it ------------------------------------------------------------------------------


@dataclass
class RunningApiServer:
    """A served API server: its URL, its state, and clients configured for it."""

    url: str
    state: ApiServerState
    token: str | None
    _clients: list[kubernetes.client.ApiClient] = field(default_factory=list, init=False, repr=False)

    def configuration(self) -> kubernetes.client.Configuration:
        """host = url, the bearer token if any, plain HTTP, no proxy."""
        configuration = kubernetes.client.Configuration(host=self.url, no_proxy="127.0.0.1,localhost,::1")
        if self.token is not None:
            configuration.api_key = {"BearerToken": self.token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return configuration

    def api_client(self) -> kubernetes.client.ApiClient:
        """A new client for this server (closed when the server stops)."""
        client = kubernetes.client.ApiClient(self.configuration())
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close every client `api_client()` made (their connection pools)."""
        for client in self._clients:
            client.close()  # type: ignore[no-untyped-call]
        self._clients.clear()


@asynccontextmanager
async def running_apiserver(
    *,
    token: str | None = "test-token",
    role: JsonObject | Literal["deploy"] | None = "deploy",
    role_binding: JsonObject | None = None,
    namespace: str | None = None,
    clock: Clock | None = None,
    hpa_controller: bool = False,
    hpa_sync_period_s: float = HPA_SYNC_PERIOD_S,
) -> AsyncIterator[RunningApiServer]:
    """Serve a fresh `ApiServerState` on a loopback port for the length of the block.

    `role`: the Role requests are authorised against ("deploy": `deploy/kubernetes/role.yaml`;
    None: everything allowed); `role_binding`: None reads `deploy/kubernetes/rolebinding.yaml`;
    `namespace`: where the Role is bound (None: in every namespace a request names);
    `clock`: the server's time (default the system clock); `hpa_controller`: run the HPA
    controller model every `hpa_sync_period_s` of `clock` (with a `ManualClock`, each
    `advance()` past a period boundary runs a sync).
    """
    if not 1.0 <= hpa_sync_period_s <= 3600.0:
        raise ValueError(f"hpa_sync_period_s must be in [1, 3600], got {hpa_sync_period_s!r}")
    state = ApiServerState(role=role, role_binding=role_binding, namespace=namespace, clock=clock)
    app = create_apiserver_app(state, token=token)
    async with running_sandbox(app, gated=False) as address, anyio.create_task_group() as tg:
        if hpa_controller:
            tg.start_soon(_run_hpa_controller, state, hpa_sync_period_s)
        server = RunningApiServer(url=address.base_url, state=state, token=token)
        try:
            yield server
        finally:
            server.close_clients()
            tg.cancel_scope.cancel()


async def _run_hpa_controller(state: ApiServerState, period_s: float) -> None:
    """Sync every HPA each `period_s` of the state's clock, as kube-controller-manager does."""
    while True:
        await state.clock.sleep(period_s)
        state.sync_hpas()
