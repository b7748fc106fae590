"""The HTTP surface as a browser or a peer meets it: DNS-rebinding protection on every route that
returns data, the pod's own address accepted where peers call by IP, and JSON-RPC requests with
unusable ids answered -32600 instead of a silent 202."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mcp_autonomy.autonomy.scaling.cluster_load import LOAD_PATH
from mcp_autonomy.server.dashboard import ASSET_PATHS, DASHBOARD_PATH, STREAM_PATH
from mcp_autonomy.server.metrics import METRICS_PATH
from mcp_autonomy.server.rest import OPENAPI_PATH
from tests.server.harness import HttpServer, http_server

TOKEN = "surface-t0ken-for-tests"
POD_IP = "10.244.7.9"
FOREIGN_HOST = "evil.example:80"
FOREIGN_ORIGIN = "http://evil.example"
MCP_ACCEPT = "application/json, text/event-stream"
PROTOCOL = "2025-11-25"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    env = {"MCP_AUTONOMY_BEARER_TOKEN": TOKEN, "POD_IP": POD_IP}
    with http_server(tmp_path_factory.mktemp("surface"), env=env) as running:
        yield running


@pytest.fixture
def api(server: HttpServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as client:
        yield client


def data_routes(api: httpx.Client) -> list[tuple[str, str]]:
    """(method, path) of every route that returns data: the fixed ones and every REST operation."""
    document = api.get(OPENAPI_PATH).json()
    rest = [
        (method.upper(), re.sub(r"\{[^}]+\}", "mpesa", path))
        for path, operations in document["paths"].items()
        for method in operations
    ]
    assert len(rest) >= 10, rest
    fixed = [
        ("POST", "/mcp"),
        ("GET", "/mcp"),
        ("GET", METRICS_PATH),
        ("GET", LOAD_PATH),
        ("GET", DASHBOARD_PATH),
        ("GET", STREAM_PATH),
        *(("GET", path) for path in ASSET_PATHS),
    ]
    return fixed + rest


def send(api: httpx.Client, method: str, path: str, **headers: str) -> httpx.Response:
    body: dict[str, Any] | None = None
    if method == "POST":
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"} if path == "/mcp" else {"reason": "rebinding"}
    return api.request(method, path, json=body, headers={"Accept": MCP_ACCEPT, **headers})


def test_a_foreign_host_is_refused_on_every_route_that_returns_data(api: httpx.Client) -> None:
    for method, path in data_routes(api):
        response = send(api, method, path, Host=FOREIGN_HOST)
        assert response.status_code == 421, (method, path, response.status_code, response.text[:200])
        error = response.json()["error"]
        assert error["field"] == "host" and "evil.example" in error["message"], (path, error)


def test_a_foreign_origin_is_refused_on_every_route_that_returns_data(api: httpx.Client) -> None:
    for method, path in data_routes(api):
        response = send(api, method, path, Origin=FOREIGN_ORIGIN)
        assert response.status_code == 403, (method, path, response.status_code, response.text[:200])
        assert response.json()["error"]["field"] == "origin", path


def test_the_check_comes_before_the_token(server: HttpServer) -> None:
    """A rebinding page cannot send the token anyway; it learns nothing either way, but the refusal
    names the real reason."""
    response = httpx.get(f"{server.base_url}{METRICS_PATH}", headers={"Host": FOREIGN_HOST})
    assert response.status_code == 421


def test_probes_stay_open_to_any_host(api: httpx.Client) -> None:
    # The kubelet calls them by the pod's IP, whatever the allowed names.
    assert api.get("/healthz", headers={"Host": "10.0.0.1:8765"}).status_code == 200
    assert api.get("/readyz", headers={"Host": FOREIGN_HOST}).status_code == 200


def test_the_pod_ip_is_a_valid_host_only_where_peers_call_by_address(api: httpx.Client) -> None:
    by_ip = {"Host": f"{POD_IP}:8765"}
    load = api.get(LOAD_PATH, headers=by_ip)
    assert load.status_code == 200, load.text
    assert "transactions_per_minute" in load.json()
    assert api.get(METRICS_PATH, headers=by_ip).status_code == 200
    assert api.get("/autonomous/status", headers=by_ip).status_code == 421
    assert send(api, "POST", "/mcp", **by_ip).status_code == 421


def test_provider_callbacks_are_not_host_checked(api: httpx.Client) -> None:
    """They arrive through an ingress under its public name; the secret path is their guard."""
    response = api.post("/callbacks/not-the-token/mpesa/stk", json={}, headers={"Host": "pay.example.com"})
    assert response.status_code != 421, response.text


# --- JSON-RPC ids ------------------------------------------------------------------------------

BAD_IDS = {
    "an object": '{"a": 1}',
    "NaN": "NaN",
    "Infinity": "Infinity",
    "an array": "[1]",
    "a boolean": "true",
    "null": "null",
    "a fraction": "1.5",
}


@pytest.mark.parametrize("kind", list(BAD_IDS))
def test_a_request_with_an_unusable_id_gets_invalid_request(api: httpx.Client, kind: str) -> None:
    """Inside a live session, where the SDK alone would take it for a notification: 202, no answer."""
    session = initialize(api, 1).headers["mcp-session-id"]
    raw = f'{{"jsonrpc": "2.0", "id": {BAD_IDS[kind]}, "method": "tools/list", "params": {{}}}}'
    headers = {
        "Content-Type": "application/json",
        "Accept": MCP_ACCEPT,
        "Mcp-Session-Id": session,
        "Mcp-Protocol-Version": PROTOCOL,
    }
    response = api.post("/mcp", content=raw, headers=headers)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None
    assert body["error"]["code"] == -32600
    assert kind in body["error"]["message"], body
    assert api.get("/healthz").status_code == 200


def initialize(api: httpx.Client, request_id: str | int) -> httpx.Response:
    message = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "surface-test", "version": "0"},
        },
    }
    return api.post("/mcp", json=message, headers={"Accept": MCP_ACCEPT})


def answer_of(response: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer, whether sent as JSON or as one server-sent event."""
    if response.headers["content-type"].startswith("application/json"):
        answer: dict[str, Any] = response.json()
        return answer
    data = [
        line.removeprefix("data:").strip() for line in response.text.splitlines() if line.startswith("data:")
    ]
    answers: list[dict[str, Any]] = [json.loads(d) for d in data if d]
    return next(a for a in answers if "id" in a)


def test_valid_ids_still_reach_the_sdk(api: httpx.Client) -> None:
    for request_id in ("abc", 7):
        response = initialize(api, request_id)
        assert response.status_code == 200, response.text
        assert answer_of(response)["id"] == request_id


def test_notifications_without_an_id_are_still_accepted(api: httpx.Client) -> None:
    session = initialize(api, 1).headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    headers = {"Accept": MCP_ACCEPT, "Mcp-Session-Id": session, "Mcp-Protocol-Version": PROTOCOL}
    response = api.post("/mcp", json=note, headers=headers)
    assert response.status_code == 202, response.text
