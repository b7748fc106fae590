"""Every REST endpoint, fuzzed from the OpenAPI document: wrong types, missing and extra fields,
huge and control-character strings, extreme numbers and dates, bodies that are not JSON or not
finite. Every answer is 2xx or 4xx in the one error shape, never a 500, and no answer but the
one-payment view carries a payer's full phone number."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import pytest
from mcp import Client

from tests.server.harness import HttpServer, http_server

SEED = 16
PAYER_A = "+254712340002"  # the payment whose key is reused
PAYER_B = "+254712340077"  # the other caller's number
KEY_A = "fuzz-payment-a1"
HUGE = "x" * 5000
CONTROL = ["\x00", "a\x00b", "\x1b[31mred\x1b[0m", "line\r\nInjected: 1", "\x7f", "\u202etxt"]
DATES = [
    "0001-01-01",
    "0001-01-01T00:00:00Z",
    "9999-12-31",
    "9999-12-31T23:59:59-23:59",
    "10000-01-01",
    "1969-12-31T23:59:59Z",
    "-1",
    "1e308",
    "NaN",
    "2026-02-30",
    "2026-11-28T10:00:00+99:00",
]
NUMBERS = ["-1", "0", "1e308", "-1e308", "NaN", "Infinity", "1.5", "99999999999999999999999999", "0x10", ""]
STRINGS = [HUGE, "", " ", "ümlaut", "../../etc/passwd", "%00", "' OR 1=1 --", *CONTROL]
ERROR_KEYS = {"error", "other_errors"}
DETAIL_KEYS = {"field", "message", "allowed"}
MAX_ERROR_MESSAGE_CHARS = 400
"""An error's message quotes at most a bounded slice of the input."""


@dataclass
class Tally:
    """What the fuzzing saw."""

    calls: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    with http_server(tmp_path_factory.mktemp("rest-fuzz")) as running:
        anyio.run(_make_payments, running.url)
        yield running


async def _make_payments(url: str) -> None:
    """Payment A by one caller, then its key reused by another with another phone (refused)."""
    async with Client(url, mode="legacy", read_timeout_seconds=60) as client:
        first = await client.call_tool(
            "request_payment",
            {
                "idempotency_key": KEY_A,
                "amount_minor": 15000,
                "currency": "KES",
                "phone": PAYER_A,
                "country": "KE",
            },
        )
        assert not first.is_error, first
        assert PAYER_A not in json.dumps(first.structured_content), "request_payment's result masks the payer"
        conflict = await client.call_tool(
            "request_payment",
            {
                "idempotency_key": KEY_A,
                "amount_minor": 99,
                "currency": "KES",
                "phone": PAYER_B,
                "country": "KE",
            },
        )
        assert conflict.is_error
        text = " ".join(getattr(c, "text", "") for c in conflict.content)
        assert "idempotency_key" in text and "already used" in text, text
        assert PAYER_A not in text and "712340002" not in text, text


@pytest.fixture(scope="module")
def api(server: HttpServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def openapi(api: httpx.Client) -> dict[str, Any]:
    document: dict[str, Any] = api.get("/autonomous/openapi.json").json()
    return document


def check(response: httpx.Response, tally: Tally, *, reveals_payer: bool = False) -> None:
    """Never a 5xx; a 4xx is the one error shape, bounded; no full phone unless allowed."""
    tally.calls += 1
    tally.statuses[response.status_code] = tally.statuses.get(response.status_code, 0) + 1
    where = f"{response.request.method} {response.request.url!s:.200}"
    assert response.status_code < 500, (where, response.status_code, response.text[:500])
    assert 200 <= response.status_code < 300 or 400 <= response.status_code < 500, where
    if not reveals_payer:
        assert "712340002" not in response.text, (where, response.text[:500])
    if response.status_code >= 400:
        assert response.headers.get("content-type", "").startswith("application/json"), (
            where,
            response.text[:200],
        )
        body = response.json()
        assert set(body) == ERROR_KEYS, (where, body)
        for detail in [body["error"], *body["other_errors"]]:
            assert set(detail) == DETAIL_KEYS, (where, detail)
            assert isinstance(detail["message"], str) and detail["message"], (where, detail)
            assert len(detail["message"]) <= MAX_ERROR_MESSAGE_CHARS, (where, len(detail["message"]))
            assert detail["field"] is None or len(detail["field"]) <= 200, (where, detail["field"][:300])
            assert "Traceback" not in detail["message"] and "errors.pydantic.dev" not in detail["message"]


def operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return sorted(
        (method, path, operation)
        for path, item in openapi["paths"].items()
        for method, operation in item.items()
    )


def _resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        resolved: dict[str, Any] = openapi["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        return resolved
    return schema


def _path(path: str, **values: str) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", quote(value, safe=""))
    return path


def _good_path_values() -> dict[str, str]:
    return {"provider": "mpesa", "key": KEY_A}


def _query_values(schema: dict[str, Any]) -> list[str]:
    """Values a query parameter of this schema should refuse or take, by its type."""
    kind = schema.get("type")
    values = [*STRINGS]
    if kind in ("integer", "number"):
        values += NUMBERS
    if schema.get("format") == "date-time":
        values += DATES
    if "enum" in schema:
        values += [str(schema["enum"][0]).upper(), f"{schema['enum'][0]} "]
    return values


def test_every_query_and_path_parameter(api: httpx.Client, openapi: dict[str, Any]) -> None:
    tally = Tally()
    for method, path, operation in operations(openapi):
        good = _good_path_values()
        is_one_payment = method == "get" and path == "/autonomous/payments/{key}"
        # Path parameters: each bad value in turn, the others good.
        for parameter in (p for p in operation.get("parameters", []) if p["in"] == "path"):
            for value in [*STRINGS, "x" * 101, "no-such-thing-1"]:
                if value == "":
                    continue  # an empty segment is another route
                url = _path(path, **{**good, parameter["name"]: value})
                check(api.request(method.upper(), url, json={} if method == "post" else None), tally)
        url = _path(path, **good)
        if method == "get":
            check(api.get(url), tally, reveals_payer=is_one_payment)
            check(api.get(url, params={"unexpected": "1"}), tally, reveals_payer=is_one_payment)
            check(api.get(url, params={HUGE: "1"}), tally)
            check(api.get(url, params={"\x00": "1"}), tally)
        for parameter in (p for p in operation.get("parameters", []) if p["in"] == "query"):
            name = parameter["name"]
            for value in _query_values(parameter["schema"]):
                check(api.request(method.upper(), url, params={name: value}), tally)
            check(api.request(method.upper(), url, params=[(name, "1"), (name, "2")]), tally)
    assert tally.calls > 400, tally
    assert 400 in tally.statuses and 500 not in tally.statuses


def _body_variants(openapi: dict[str, Any], schema: dict[str, Any], rng: random.Random) -> list[Any]:
    """Bodies derived from the request schema, each wrong in one way (a scale request is never
    valid, so nothing is scaled)."""
    model = _resolve(openapi, schema)
    properties: dict[str, Any] = model.get("properties", {})
    required: list[str] = model.get("required", [])
    # A base that is wrong only in what the variant changes: required fields filled with
    # plausible values, `replicas` out of bounds so no variant of a scale request can scale.
    base: dict[str, Any] = {}
    for name in required:
        prop = _resolve(openapi, properties[name])
        if name == "replicas":
            base[name] = -1
        elif "enum" in prop:
            base[name] = prop["enum"][0]
        elif prop.get("type") == "integer":
            base[name] = 1
        elif prop.get("type") == "boolean":
            base[name] = False
        else:
            base[name] = "fuzz"
    wrong_values: list[Any] = [
        None,
        True,
        0,
        -1,
        2**63,
        1.5,
        "5",
        "yes",
        [],
        {},
        [[[[]]]],
        {"nested": {"deeper": {"deepest": [1, 2, 3]}}},
        "y" * 70_000,  # over the body limit once encoded
        "z" * 10_000,
        *CONTROL,
    ]
    variants: list[Any] = []
    for name in properties:
        for value in wrong_values:
            variants.append({**base, name: value})
    for name in required:
        variants.append({k: v for k, v in base.items() if k != name})
    variants += [
        {**base, "extra": 1},
        {**base, "x" * 5000: 1},
        {**base, "\x00": 1},
        [],
        [base],
        "a string",
        42,
        None,
    ]
    rng.shuffle(variants)
    return variants


RAW_BODIES = [
    b"",
    b"   ",
    b"{",
    b"not json",
    b'{"replicas": NaN, "reason": "x"}',
    b'{"replicas": Infinity, "reason": "x"}',
    b'{"replicas": -Infinity, "reason": "x"}',
    b'{"replicas": 1e400, "reason": "x"}',
    b'{"replicas": ' + b"9" * 5000 + b', "reason": "x"}',
    b'{"reason": "x", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"reason": "x", "a": ' + b'{"a":' * 300 + b"1" + b"}" * 300 + b"}",
    b'{"reason": "\\u0000"}',
    b'{"reason": "\xff\xfe"}',
    b'{"reason": "x", "reason": "y"}',
    b"\xef\xbb\xbf{}",
]


def test_every_request_body(api: httpx.Client, openapi: dict[str, Any]) -> None:
    rng = random.Random(SEED)
    tally = Tally()
    for _method, path, operation in operations(openapi):
        if "requestBody" not in operation:
            continue
        # An unknown provider: a body that happens to be valid heals nothing (404); the payment is
        # pending, so a valid resolve or OTP is refused (409).
        url = _path(path, provider="no-such-provider", key=KEY_A)
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        for body in _body_variants(openapi, schema, rng):
            check(
                api.post(url, content=json.dumps(body), headers={"Content-Type": "application/json"}), tally
            )
        for raw in RAW_BODIES:
            check(api.post(url, content=raw, headers={"Content-Type": "application/json"}), tally)
        for content_type in ["text/plain", "", "application/json-patch+json", "x" * 3000]:
            check(api.post(url, content=b"{}", headers={"Content-Type": content_type}), tally)
        check(
            api.post(url, content=b"{}" + b" " * 70_000, headers={"Content-Type": "application/json"}), tally
        )
    assert tally.calls > 250, tally
    assert {400, 413, 415, 422} <= set(tally.statuses) and 200 not in tally.statuses, tally


def test_nan_and_infinity_name_the_field(api: httpx.Client) -> None:
    for raw, shown in [(b"NaN", "NaN"), (b"Infinity", "Infinity"), (b"1e400", "1e400")]:
        response = api.post(
            "/autonomous/scale",
            content=b'{"replicas": ' + raw + b', "reason": "fuzz"}',
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["field"] == "replicas" and shown in error["message"], error
    nested = api.post(
        "/autonomous/heal/mpesa",
        content=b'{"reason": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert nested.status_code == 400 and "nests deeper" in nested.json()["error"]["message"], nested.text


@pytest.mark.parametrize("path", ["/autonomous/events", "/autonomous/incidents"])
@pytest.mark.parametrize("since", ["0001-01-01", "9999-12-31T23:59:59-23:59", "1969-12-31T23:59:59Z"])
def test_since_outside_the_supported_range_names_the_field_and_range(
    api: httpx.Client, path: str, since: str
) -> None:
    response = api.get(path, params={"since": since})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "since"
    assert "1970-01-01T00:00:00Z" in error["allowed"] and "9999-12-31T23:59:59Z" in error["allowed"], error


@pytest.mark.parametrize("since", ["1970-01-01", "2026-01-01T00:00:00+03:00", "9999-12-31T23:59:59Z"])
def test_since_inside_the_range_is_a_result(api: httpx.Client, since: str) -> None:
    for path in ["/autonomous/events", "/autonomous/incidents"]:
        assert api.get(path, params={"since": since}).status_code == 200


def test_huge_values_are_refused_with_the_maximum_and_not_echoed(api: httpx.Client) -> None:
    # Past the HTTP server's request-line limit: refused before the API sees it, never a 500.
    response = api.get("/autonomous/payments", params={"provider": "p" * 60_000})
    assert 400 <= response.status_code < 500, response.status_code
    provider = api.get("/autonomous/events", params={"provider": "p" * 5000})
    assert provider.status_code == 400
    error = provider.json()["error"]
    assert error["field"] == "provider" and error["allowed"] == "a string of 1..64 characters", error
    assert len(provider.text) < 1000
    key = api.get(f"/autonomous/payments/{'k' * 5000}")
    assert key.status_code == 400 and key.json()["error"]["allowed"] == "a string of 1..100 characters"
    assert len(key.text) < 1000


def test_only_the_one_payment_view_shows_the_payer(api: httpx.Client) -> None:
    one = api.get(f"/autonomous/payments/{KEY_A}")
    assert one.status_code == 200 and one.json()["phone"] == PAYER_A
    listed = api.get("/autonomous/payments").json()["payments"]
    mine = [p for p in listed if p["idempotency_key"] == KEY_A]
    assert mine and mine[0]["phone"] == "+2547****0002"
    for path in [
        "/autonomous/events",
        "/autonomous/dashboard",
        "/autonomous/callbacks",
        "/autonomous/status",
    ]:
        response = api.get(path)
        assert response.status_code == 200 and "712340002" not in response.text, path
    unknown = api.get("/autonomous/payments/no-such-payment-1")
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "key"


def test_the_server_still_answers_after_the_fuzz(api: httpx.Client) -> None:
    assert api.get("/autonomous/status").status_code == 200
    assert api.get("/readyz").status_code == 200
