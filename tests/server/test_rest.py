"""The REST API under /autonomous, over real HTTP against the real server (with the sandbox)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate as validate_openapi

from tests.server.harness import HttpServer, http_server

TOKEN = "rest-t0ken-for-tests"
JSON_HEADERS = {"Content-Type": "application/json"}
EXPECTED_OPERATIONS = {
    ("get", "/autonomous/status"),
    ("get", "/autonomous/stats"),
    ("post", "/autonomous/heal/{provider}"),
    ("post", "/autonomous/scale"),
    ("get", "/autonomous/predictions"),
    ("get", "/autonomous/optimizations"),
    ("get", "/autonomous/events"),
    ("get", "/autonomous/incidents"),
    ("get", "/autonomous/maintenance"),
    ("get", "/autonomous/dashboard"),
    ("get", "/autonomous/payments"),
    ("get", "/autonomous/payments/{key}"),
    ("post", "/autonomous/payments/{key}/resolve"),
    ("post", "/autonomous/payments/{key}/otp"),
    ("get", "/autonomous/callbacks"),
    ("get", "/autonomous/openapi.json"),
}


@pytest.fixture(scope="module")
def server(shared_http_server: HttpServer) -> HttpServer:
    return shared_http_server


@pytest.fixture(scope="module")
def api(server: HttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def openapi(api: httpx.Client) -> dict[str, Any]:
    response = api.get("/autonomous/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def conforms(openapi: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """`instance` is valid against `schema`, whose `$ref`s point into the document's components."""
    validator = OAS31Validator(
        {**schema, "components": openapi["components"]}, format_checker=oas31_format_checker
    )
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]


def conforms_to_response(openapi: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """The response's status and body are the ones the document promises for the operation."""
    responses = openapi["paths"][path][method]["responses"]
    assert str(response.status_code) in responses, (path, response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    schema = responses[str(response.status_code)]["content"]["application/json"]["schema"]
    conforms(openapi, schema, response.json())


def audit_rows(state_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(state_dir / "mcp-autonomy.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM audit_log ORDER BY id")]


def assert_error(response: httpx.Response, status: int, field: str | None, *fragments: str) -> dict[str, Any]:
    """The answer is `status` with a JSON error naming `field`, and its message/allowed mention each fragment."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    problems = [body["error"], *body["other_errors"]]
    named = [p for p in problems if p["field"] == field]
    assert named, (field, body)
    text = json.dumps(named)
    for fragment in fragments:
        assert fragment in text, (fragment, body)
    return body


# --- the document ---------------------------------------------------------------------------


def test_openapi_document_validates_and_covers_every_route(openapi: dict[str, Any]) -> None:
    validate_openapi(openapi)  # raises on any violation of the OpenAPI 3.1 schema
    assert openapi["openapi"].startswith("3.1")
    operations = {(method, path) for path, item in openapi["paths"].items() for method in item}
    assert operations == EXPECTED_OPERATIONS
    assert openapi["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": openapi["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    schemas = openapi["components"]["schemas"]
    for name in ("StatusSummary", "SystemStats", "HealResult", "ScaleResult", "ErrorResponse", "Event"):
        assert name in schemas, name
    assert set(schemas["ScaleRequest"]["required"]) == {"replicas", "reason"}
    assert schemas["ScaleRequest"]["properties"]["replicas"]["maximum"] == 1000
    assert schemas["HealRequest"]["properties"]["reason"]["minLength"] == 3
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            assert "401" in operation["responses"], (method, path)
            if path == "/autonomous/openapi.json":
                continue
            for code in ("400", "500"):
                schema = operation["responses"][code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, code)
            if method == "post":
                assert operation["requestBody"]["required"] is True
                assert "422" in operation["responses"]
    parameters = {p["name"]: p for p in openapi["paths"]["/autonomous/events"]["get"]["parameters"]}
    assert set(parameters) == {"provider", "type", "since", "limit"}
    assert parameters["limit"]["schema"]["maximum"] == 1000
    assert parameters["since"]["schema"]["format"] == "date-time"
    assert parameters["type"]["schema"] == {"$ref": "#/components/schemas/EventType"}
    assert "healing_event" in schemas["EventType"]["enum"]
    assert openapi["security"] == [{}]  # this server has no bearer token


# --- reads ----------------------------------------------------------------------------------

GOOD_READS: list[tuple[str, dict[str, str]]] = [
    ("/autonomous/status", {}),
    ("/autonomous/stats", {}),
    ("/autonomous/predictions", {}),
    (
        "/autonomous/predictions",
        {"provider": "mpesa", "min_confidence": "0.5", "status": "active", "limit": "5"},
    ),
    ("/autonomous/optimizations", {}),
    ("/autonomous/optimizations", {"provider": "paystack", "limit": "5"}),
    ("/autonomous/events", {}),
    ("/autonomous/events", {"type": "provider_registered", "since": "2020-01-01T00:00:00Z", "limit": "3"}),
    ("/autonomous/events", {"provider": "a-provider-long-gone"}),
    ("/autonomous/incidents", {}),
    (
        "/autonomous/incidents",
        {"provider": "mpesa", "status": "resolved", "since": "2020-01-01", "limit": "5"},
    ),
    ("/autonomous/maintenance", {}),
    ("/autonomous/maintenance", {"provider": "mpesa", "status": "scheduled", "limit": "1"}),
    ("/autonomous/dashboard", {}),
]


@pytest.mark.parametrize(("path", "params"), GOOD_READS)
def test_reads_answer_the_documented_schema(
    api: httpx.Client, openapi: dict[str, Any], path: str, params: dict[str, str]
) -> None:
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    conforms_to_response(openapi, "get", path, response)


def test_reads_return_what_the_engine_holds(api: httpx.Client) -> None:
    status = api.get("/autonomous/status").json()
    assert status["started"] is True
    assert {p["name"] for p in status["providers"]} >= {"mpesa", "paystack", "intasend"}
    assert set(status["components"]) == {
        "self_healer",
        "auto_scaler",
        "predictive_maintenance",
        "auto_optimizer",
    }
    stats = api.get("/autonomous/stats").json()
    assert stats["run_id"] == status["run_id"]
    assert stats["events_by_type"]["provider_registered"] >= 6

    events = api.get("/autonomous/events", params={"type": "provider_registered", "limit": 2}).json()
    assert events["count"] == 2 == len(events["events"])
    assert {e["type"] for e in events["events"]} == {"provider_registered"}
    future = api.get("/autonomous/events", params={"since": "2999-01-01T00:00:00+00:00"}).json()
    assert future == {"events": [], "count": 0}
    mpesa_only = api.get("/autonomous/events", params={"provider": "mpesa"}).json()["events"]
    assert mpesa_only and {e["provider"] for e in mpesa_only} == {"mpesa"}

    predictions = api.get("/autonomous/predictions").json()
    assert set(predictions) == {"predictions", "scores", "warm_up"}
    incidents = api.get("/autonomous/incidents").json()
    assert set(incidents) == {"incidents", "stats"}
    assert isinstance(api.get("/autonomous/maintenance").json()["windows"], list)
    assert isinstance(api.get("/autonomous/optimizations").json()["optimizations"], list)


BAD_READS: list[tuple[str, dict[str, Any], int, str, tuple[str, ...]]] = [
    ("/autonomous/events", {"limit": "0"}, 400, "limit", ("greater than or equal to 1", "1..1000")),
    ("/autonomous/events", {"limit": "5000"}, 400, "limit", ("less than or equal to 1000", "1..1000")),
    ("/autonomous/events", {"limit": "many"}, 400, "limit", ("valid integer",)),
    ("/autonomous/events", {"since": "yesterday"}, 400, "since", ("'yesterday'", "ISO 8601")),
    ("/autonomous/events", {"type": "coffee_break"}, 400, "type", ("healing_event", "failover_triggered")),
    ("/autonomous/events", {"provder": "mpesa"}, 400, "provder", ("unknown query parameter", "provider")),
    ("/autonomous/events", {"limit": ["1", "2"]}, 400, "limit", ("more than once",)),
    ("/autonomous/predictions", {"min_confidence": "2"}, 400, "min_confidence", ("0.0..1.0",)),
    ("/autonomous/predictions", {"min_confidence": "nan"}, 400, "min_confidence", ("0.0..1.0",)),
    ("/autonomous/predictions", {"status": "maybe"}, 400, "status", ("confirmed", "false_positive")),
    ("/autonomous/predictions", {"provider": "nope"}, 404, "provider", ("unknown provider 'nope'", "mpesa")),
    ("/autonomous/optimizations", {"limit": "501"}, 400, "limit", ("1..500",)),
    ("/autonomous/optimizations", {"provider": "nope"}, 404, "provider", ("paystack",)),
    ("/autonomous/incidents", {"status": "closed"}, 400, "status", ("open", "resolved")),
    ("/autonomous/incidents", {"since": "2026-13-45"}, 400, "since", ("ISO 8601",)),
    ("/autonomous/incidents", {"provider": "nope"}, 404, "provider", ("mpesa",)),
    ("/autonomous/maintenance", {"status": "done"}, 400, "status", ("scheduled", "cancelled")),
    ("/autonomous/maintenance", {"provider": "nope"}, 404, "provider", ("mpesa",)),
    ("/autonomous/maintenance", {"limit": "-1"}, 400, "limit", ("1..500",)),
    ("/autonomous/status", {"verbose": "1"}, 400, "verbose", ("unknown query parameter",)),
    ("/autonomous/stats", {"x": "1"}, 400, "x", ("unknown query parameter",)),
    ("/autonomous/dashboard", {"limit": "5"}, 400, "limit", ("unknown query parameter",)),
]


@pytest.mark.parametrize(("path", "params", "status", "field", "fragments"), BAD_READS)
def test_bad_reads_are_json_errors_naming_the_field(
    api: httpx.Client,
    openapi: dict[str, Any],
    path: str,
    params: dict[str, Any],
    status: int,
    field: str,
    fragments: tuple[str, ...],
) -> None:
    response = api.get(path, params=params)
    assert_error(response, status, field, *fragments)
    conforms_to_response(openapi, "get", path, response)


def test_several_problems_are_reported_together(api: httpx.Client) -> None:
    body = api.get("/autonomous/events", params={"limit": "0", "since": "x", "foo": "1"}).json()
    assert {p["field"] for p in [body["error"], *body["other_errors"]]} == {"limit", "since", "foo"}


# --- actions --------------------------------------------------------------------------------


def test_heal_returns_the_heal_result_and_is_audited(
    api: httpx.Client, openapi: dict[str, Any], server: HttpServer
) -> None:
    before = len(audit_rows(server.state_dir))
    response = api.post(
        "/autonomous/heal/mpesa",
        json={"reason": "rest test heal"},
        headers={"User-Agent": "ops-script/1.0"},
    )
    assert response.status_code == 200, response.text
    conforms_to_response(openapi, "post", "/autonomous/heal/{provider}", response)
    result = response.json()
    assert result["provider"] == "mpesa" and result["trigger"] == "manual"
    assert result["reason"] == "rest test heal" and result["succeeded"] is True
    assert [s["name"] for s in result["steps"]] == ["reinitialize", "probe", "breaker"]

    rows = audit_rows(server.state_dir)[before:]
    assert len(rows) == 1
    row = rows[0]
    assert row["tool"] == "heal_provider" and row["ok"] == 1 and row["reason"] == "rest test heal"
    assert row["client"] == "rest:127.0.0.1 ops-script/1.0"
    assert json.loads(row["arguments"]) == {"provider": "mpesa", "reason": "rest test heal"}
    assert json.loads(row["result"]) == {"succeeded": True, "dry_run": False}

    manual = api.get("/autonomous/events", params={"type": "manual_action", "limit": 1}).json()["events"]
    assert manual[-1]["data"]["tool"] == "heal_provider"
    assert manual[-1]["data"]["audit_id"] == row["id"]


def test_heal_unknown_provider_is_404_naming_the_known_ones_and_audited(
    api: httpx.Client, openapi: dict[str, Any], server: HttpServer
) -> None:
    before = len(audit_rows(server.state_dir))
    response = api.post("/autonomous/heal/no-such-provider", json={"reason": "bad input"})
    body = assert_error(response, 404, "provider", "unknown provider 'no-such-provider'", "mpesa")
    assert "intasend" in body["error"]["allowed"]
    conforms_to_response(openapi, "post", "/autonomous/heal/{provider}", response)
    rows = audit_rows(server.state_dir)[before:]
    assert [(r["tool"], r["ok"]) for r in rows] == [("heal_provider", 0)]  # refused, like the MCP tool


def test_heal_of_an_overlong_provider_name_is_400(api: httpx.Client, openapi: dict[str, Any]) -> None:
    response = api.post(f"/autonomous/heal/{'x' * 65}", json={"reason": "bad input"})
    assert_error(response, 400, "provider", "longer than 64 characters", "mpesa")
    conforms_to_response(openapi, "post", "/autonomous/heal/{provider}", response)


BAD_HEALS: list[tuple[dict[str, Any], int, str, tuple[str, ...]]] = [
    ({"content": b""}, 400, "body", ("JSON object body is required", "reason")),
    ({"json": {}}, 422, "reason", ("reason is required", "3..500")),
    ({"json": {"reason": "ab"}}, 422, "reason", ("at least 3 characters", "3..500")),
    ({"json": {"reason": "x" * 501}}, 422, "reason", ("at most 500 characters",)),
    ({"json": {"reason": 12345}}, 422, "reason", ("valid string",)),
    ({"json": {"reason": "fine reason", "force": True}}, 422, "force", ("unknown body field", "reason")),
    ({"json": ["reason"]}, 422, "body", ("JSON object",)),
    ({"content": b"{reason: nope"}, 400, "body", ("not valid JSON",)),
]


@pytest.mark.parametrize(("request_kwargs", "status", "field", "fragments"), BAD_HEALS)
def test_bad_heal_bodies_are_refused_before_the_engine(
    api: httpx.Client,
    openapi: dict[str, Any],
    server: HttpServer,
    request_kwargs: dict[str, Any],
    status: int,
    field: str,
    fragments: tuple[str, ...],
) -> None:
    before = len(audit_rows(server.state_dir))
    headers = JSON_HEADERS if "content" in request_kwargs else {}
    response = api.post("/autonomous/heal/mpesa", headers=headers, **request_kwargs)
    assert_error(response, status, field, *fragments)
    conforms_to_response(openapi, "post", "/autonomous/heal/{provider}", response)
    assert len(audit_rows(server.state_dir)) == before  # like a tool call its schema refuses


def test_bodies_must_be_json_and_small(api: httpx.Client, openapi: dict[str, Any]) -> None:
    form = api.post("/autonomous/heal/mpesa", data={"reason": "as a form"})
    assert_error(form, 415, "content-type", "application/json", "application/x-www-form-urlencoded")
    conforms_to_response(openapi, "post", "/autonomous/heal/{provider}", form)
    huge = api.post("/autonomous/scale", json={"replicas": 3, "reason": "x" * 70_000})
    assert_error(huge, 413, "body", "65536")
    conforms_to_response(openapi, "post", "/autonomous/scale", huge)


def test_scale_returns_the_scale_result_and_is_audited(
    api: httpx.Client, openapi: dict[str, Any], server: HttpServer
) -> None:
    before = len(audit_rows(server.state_dir))
    response = api.post("/autonomous/scale", json={"replicas": 4, "reason": "rest test scale"})
    assert response.status_code == 200, response.text
    conforms_to_response(openapi, "post", "/autonomous/scale", response)
    result = response.json()
    assert result["requested"] == 4 and result["forced"] is False and result["dry_run"] is False
    assert result["state"]["desired"] == 4 and result["state"]["backend"] == "local"
    assert result["rollout"] == "not_observable"

    forced = api.post("/autonomous/scale", json={"replicas": 25, "reason": "rest test force", "force": True})
    assert forced.status_code == 200, forced.text
    assert forced.json()["forced"] is True and forced.json()["state"]["desired"] == 25

    rows = audit_rows(server.state_dir)[before:]
    assert [(r["tool"], r["ok"]) for r in rows] == [("scale_to", 1), ("scale_to", 1)]
    assert json.loads(rows[0]["arguments"]) == {"replicas": 4, "reason": "rest test scale", "force": False}
    assert json.loads(rows[0]["result"]) == result
    assert rows[1]["client"].startswith("rest:127.0.0.1 python-httpx/")
    assert api.get("/autonomous/status").json()["scaling"]["desired"] == 25
    api.post("/autonomous/scale", json={"replicas": 2, "reason": "rest test: back to MIN"})


def test_scale_out_of_bounds_is_422_naming_the_bounds_and_force(
    api: httpx.Client, openapi: dict[str, Any], server: HttpServer
) -> None:
    before = len(audit_rows(server.state_dir))
    response = api.post("/autonomous/scale", json={"replicas": 50, "reason": "bad input"})
    assert_error(response, 422, "replicas", "MIN_INSTANCES..MAX_INSTANCES = 2..20", "force")
    conforms_to_response(openapi, "post", "/autonomous/scale", response)
    rows = audit_rows(server.state_dir)[before:]
    assert [(r["tool"], r["ok"]) for r in rows] == [("scale_to", 0)]  # refused by the engine: audited


BAD_SCALES: list[tuple[Any, str, tuple[str, ...]]] = [
    ({"replicas": -1, "reason": "bad input"}, "replicas", ("greater than or equal to 0", "0..1000")),
    ({"replicas": 10**9, "reason": "bad input"}, "replicas", ("less than or equal to 1000",)),
    ({"replicas": "5", "reason": "bad input"}, "replicas", ("valid integer",)),
    ({"replicas": 3.5, "reason": "bad input"}, "replicas", ("valid integer",)),
    ({"reason": "bad input"}, "replicas", ("replicas is required",)),
    ({"replicas": 3}, "reason", ("reason is required", "3..500")),
    ({"replicas": 3, "reason": "bad input", "force": "yes"}, "force", ("valid boolean", "true or false")),
    ({"replicas": 3, "reason": "bad input", "replica": 3}, "replica", ("unknown body field",)),
]


@pytest.mark.parametrize(("payload", "field", "fragments"), BAD_SCALES)
def test_bad_scale_bodies_are_422_naming_the_field(
    api: httpx.Client,
    openapi: dict[str, Any],
    server: HttpServer,
    payload: Any,
    field: str,
    fragments: tuple[str, ...],
) -> None:
    before = len(audit_rows(server.state_dir))
    response = api.post("/autonomous/scale", json=payload)
    assert_error(response, 422, field, *fragments)
    conforms_to_response(openapi, "post", "/autonomous/scale", response)
    assert len(audit_rows(server.state_dir)) == before


# --- routing and protections ----------------------------------------------------------------


def test_unknown_paths_and_methods_are_json_errors(api: httpx.Client) -> None:
    missing = api.get("/autonomous/nothing-here")
    body = assert_error(missing, 404, "path", "GET /autonomous/nothing-here", "openapi.json")
    assert "POST /autonomous/scale" in body["error"]["allowed"]
    wrong = api.delete("/autonomous/status")
    assert_error(wrong, 405, "method", "DELETE", "GET")
    assert "GET" in wrong.headers["allow"]
    get_on_post = api.get("/autonomous/scale")
    assert_error(get_on_post, 405, "method", "POST")


def test_foreign_host_and_origin_are_refused(api: httpx.Client) -> None:
    host = api.get("/autonomous/status", headers={"Host": "evil.example:80"})
    assert_error(host, 421, "host", "evil.example", "MCP_AUTONOMY_ALLOWED_HOSTS")
    origin = api.post(
        "/autonomous/scale",
        json={"replicas": 3, "reason": "rebinding attempt"},
        headers={"Origin": "http://evil.example"},
    )
    assert_error(origin, 403, "origin", "evil.example")


def test_bearer_token_guards_every_rest_route(tmp_path: Path) -> None:
    with (
        http_server(tmp_path, env={"MCP_AUTONOMY_BEARER_TOKEN": TOKEN}) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        good = {"Authorization": f"Bearer {TOKEN}"}
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/autonomous/status", {}),
            ("GET", "/autonomous/events", {"params": {"limit": 1}}),
            ("GET", "/autonomous/openapi.json", {}),
            ("GET", "/autonomous/dashboard", {}),
            ("GET", "/autonomous/payments", {"params": {"status": "needs_reconciliation"}}),
            ("GET", "/autonomous/callbacks", {}),
            ("POST", "/autonomous/heal/mpesa", {"json": {"reason": "token test"}}),
            ("POST", "/autonomous/scale", {"json": {"replicas": 3, "reason": "token test"}}),
            ("GET", "/metrics", {}),  # behind the token too unless MCP_AUTONOMY_METRICS_PUBLIC=true
        ]
        for method, path, kwargs in calls:
            missing = client.request(method, path, **kwargs)
            assert missing.status_code == 401, (path, missing.text)
            assert missing.json()["error"] == "unauthorized" and TOKEN not in missing.text
            wrong = client.request(method, path, headers={"Authorization": "Bearer nope"}, **kwargs)
            assert wrong.status_code == 401, path
            allowed = client.request(method, path, headers=good, **kwargs)
            assert allowed.status_code == 200, (path, allowed.text)
        assert audit_rows(server.state_dir)[-1]["tool"] == "scale_to"
        document = client.get("/autonomous/openapi.json", headers=good).json()
        validate_openapi(document)
        assert document["security"] == [{"bearerAuth": []}]
        conforms_to_response(
            document, "get", "/autonomous/status", client.get("/autonomous/status")
        )  # the 401 body is documented too
        assert client.get("/healthz").status_code == 200
        # The dashboard's page and code hold no data: served without the token; its stream is not.
        for public in ("/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css"):
            assert client.get(public).status_code == 200, public
        assert client.get("/dashboard/stream").status_code == 401
        with client.stream("GET", "/dashboard/stream", headers=good) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
        assert TOKEN not in server.log()


def test_payments_and_callbacks_are_listed_and_resolving_names_what_is_wrong(
    api: httpx.Client, openapi: dict[str, Any]
) -> None:
    listed = api.get("/autonomous/payments", params={"status": "needs_reconciliation", "limit": 5})
    assert listed.status_code == 200, listed.text
    conforms_to_response(openapi, "get", "/autonomous/payments", listed)
    bad_status = api.get("/autonomous/payments", params={"status": "maybe"})
    assert bad_status.status_code == 400 and bad_status.json()["error"]["field"] == "status"
    callbacks = api.get("/autonomous/callbacks", params={"state": "refused"})
    assert callbacks.status_code == 200, callbacks.text
    conforms_to_response(openapi, "get", "/autonomous/callbacks", callbacks)
    unknown = api.post(
        "/autonomous/payments/no-such-key-1/resolve",
        json={"outcome": "failed", "reason": "portal shows none"},
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "key"
    conforms_to_response(openapi, "post", "/autonomous/payments/{key}/resolve", unknown)
    wrong = api.post(
        "/autonomous/payments/no-such-key-1/resolve",
        json={"outcome": "pending", "reason": "portal shows none"},
    )
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "outcome"
