"""Static tokens against the real server: named tokens with scopes from a tokens file, reloaded
without a restart (a removed token is refused and its open streams close), the legacy
MCP_AUTONOMY_BEARER_TOKEN holding every scope, refusals naming the scope, and the audit log,
events and get_stats naming the caller."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from mcp_autonomy.server.auth.static import TokensFileError, parse_tokens
from tests.auth.conftest import mcp_client, wait_until
from tests.server.harness import HttpServer, http_server

READER, OPERATOR, PAYER, ADMIN = "reader-t0ken", "operator-t0ken", "payer-t0ken", "legacy-admin-t0ken"
RELOAD_BOUND_S = 5.0
PAYOUT = {
    "idempotency_key": "static-token-payout-1",
    "amount_minor": 1500,
    "currency": "KES",
    "phone": "+254712345678",
    "country": "KE",
}


def entry(name: str, token: str, *scopes: str) -> dict[str, Any]:
    return {"name": name, "token_sha256": hashlib.sha256(token.encode()).hexdigest(), "scopes": list(scopes)}


def write_tokens(path: Path, entries: list[dict[str, Any]]) -> None:
    # Write then rename, as a Secret update does: the server never reads half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    tmp.replace(path)


INITIAL = [
    entry("reader", READER, "autonomy:read"),
    entry("operator", OPERATOR, "autonomy:read", "autonomy:operate"),
    entry("payer", PAYER, "payments:write", "payments:read"),
]


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    write_tokens(path, INITIAL)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tokens_file: Path) -> Iterator[HttpServer]:
    env = {
        "MCP_AUTONOMY_TOKENS_FILE": str(tokens_file),
        "MCP_AUTONOMY_BEARER_TOKEN": ADMIN,
        "MCP_AUTONOMY_TOKENS_RELOAD_S": "0.5",
        "MCP_AUTONOMY_SANDBOX_REALISM": "ideal",
    }
    with http_server(tmp_path_factory.mktemp("static"), env=env) as running:
        yield running


def get(server: HttpServer, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{server.base_url}{path}", headers=headers, timeout=10)


def post(server: HttpServer, path: str, token: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def test_no_or_unknown_token_is_401_without_leaking_anything(server: HttpServer) -> None:
    missing = get(server, "/autonomous/status", None)
    assert missing.status_code == 401
    challenge = missing.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and "error=" not in challenge  # RFC 6750 §3.1: no token, no code
    wrong = get(server, "/autonomous/status", "not-a-token")
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert get(server, "/healthz", None).status_code == 200
    assert get(server, "/dashboard", None).status_code == 200  # the page holds no data
    for secret in (READER, OPERATOR, PAYER, ADMIN, INITIAL[0]["token_sha256"]):
        assert secret not in server.log()


def test_rest_refuses_a_missing_scope_with_403_naming_it(server: HttpServer) -> None:
    assert get(server, "/autonomous/status", READER).status_code == 200
    refused = post(server, "/autonomous/scale", READER, {"replicas": 3, "reason": "reader tries to scale"})
    assert refused.status_code == 403
    challenge = refused.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="autonomy:operate"' in challenge
    assert refused.json()["scope"] == "autonomy:operate"
    # payments need their own scopes: the operator may not read a payment, the payer may not heal
    assert get(server, "/autonomous/payments", OPERATOR).status_code == 403
    healed = post(server, "/autonomous/heal/mpesa", PAYER, {"reason": "payer tries to heal"})
    assert healed.status_code == 403 and healed.json()["scope"] == "autonomy:operate"
    assert get(server, "/metrics", PAYER).status_code == 403
    assert get(server, "/metrics", READER).status_code == 200
    # What the request names is echoed in the challenge only as bounded, printable ASCII.
    hostile = get(server, "/autonomous/payments/a%0D%0ASet-Cookie:%20x=1" + "b" * 5000, READER)
    assert hostile.status_code == 403 and "set-cookie" not in hostile.headers
    assert "\r" not in hostile.headers["www-authenticate"] and len(hostile.headers["www-authenticate"]) < 600


def test_the_legacy_bearer_token_holds_every_scope(server: HttpServer) -> None:
    for path in ("/autonomous/status", "/autonomous/payments", "/autonomous/callbacks", "/internal/load"):
        assert get(server, path, ADMIN).status_code == 200, path
    scaled = post(server, "/autonomous/scale", ADMIN, {"replicas": 2, "reason": "legacy token scales"})
    assert scaled.status_code == 200, scaled.text


def test_mcp_calls_are_refused_per_tool_and_audited_per_caller(server: HttpServer) -> None:
    async def run() -> None:
        async with mcp_client(server.url, READER) as reader:
            names = {t.name for t in (await reader.list_tools()).tools}
            assert {
                "send_payment",
                "heal_provider",
                "scale_to",
                "inject_fault",
            } <= names  # listed, not callable
            status = await reader.call_tool("get_status", {})
            assert not status.is_error
            for tool, arguments, scope in (
                ("send_payment", PAYOUT, "payments:write"),
                (
                    "heal_provider",
                    {"provider": "mpesa", "reason": "reader tries to heal"},
                    "autonomy:operate",
                ),
                ("scale_to", {"replicas": 3, "reason": "reader tries to scale"}, "autonomy:operate"),
                (
                    "inject_fault",
                    {"provider": "mpesa", "kind": "outage", "reason": "x" * 5},
                    "sandbox:faults",
                ),
            ):
                with pytest.raises(MCPError) as refused:
                    await reader.call_tool(tool, arguments)
                assert "insufficient_scope" in str(refused.value) and scope in str(refused.value), tool
            with pytest.raises(MCPError, match="payments:read"):
                await reader.call_tool("get_payment", {"idempotency_key": "any"})
        async with mcp_client(server.url, PAYER) as payer:
            with pytest.raises(MCPError, match="autonomy:operate"):
                await payer.call_tool("heal_provider", {"provider": "mpesa", "reason": "payer tries to heal"})
            with pytest.raises(MCPError, match="autonomy:read"):
                await payer.call_tool("get_status", {})
            paid = await payer.call_tool("send_payment", PAYOUT)
            assert not paid.is_error, paid.content
        async with mcp_client(server.url, OPERATOR) as operator:
            healed = await operator.call_tool(
                "heal_provider", {"provider": "mpesa", "reason": "operator heals"}
            )
            assert not healed.is_error, healed.content
            stats = (await operator.call_tool("get_stats", {})).structured_content
            assert stats is not None
            by_caller = stats["manual_actions_by_caller"]
            assert by_caller.get("token:operator", 0) >= 1 and by_caller.get("token:payer", 0) >= 1, by_caller

    anyio.run(run)
    events = get(server, "/autonomous/events?type=manual_action&limit=100", ADMIN).json()["events"]
    messages = [e["message"] for e in events]
    assert any(m.startswith("heal_provider by token:operator via ") for m in messages), messages
    assert any(m.startswith("send_payment by token:payer via ") for m in messages), messages
    # Refused calls never reached the engine: nothing is audited for the reader.
    assert not any("token:reader" in m for m in messages), messages
    payout = next(e for e in events if e["data"]["tool"] == "send_payment")
    assert payout["data"]["arguments"]["phone"] != PAYOUT["phone"]  # masked in the audit entry


def test_a_changed_tokens_file_takes_effect_without_restart(server: HttpServer, tokens_file: Path) -> None:
    stream_ended = threading.Event()
    first_event = threading.Event()

    def hold_stream() -> None:
        # The reader's live dashboard stream: it must end when the reader's token is removed.
        headers = {"Authorization": f"Bearer {READER}"}
        with httpx.stream(
            "GET", f"{server.base_url}/dashboard/stream", headers=headers, timeout=30
        ) as response:
            assert response.status_code == 200
            try:
                for _ in response.iter_lines():
                    first_event.set()
            except httpx.HTTPError:
                pass
        stream_ended.set()

    thread = threading.Thread(target=hold_stream, daemon=True)
    thread.start()
    assert first_event.wait(10), "the stream never started"
    new_reader = "reader-rotated-t0ken"
    write_tokens(
        tokens_file,
        [entry("reader2", new_reader, "autonomy:read"), *INITIAL[1:]],
    )
    took = wait_until(
        lambda: get(server, "/autonomous/status", READER).status_code == 401, RELOAD_BOUND_S, "removal"
    )
    assert get(server, "/autonomous/status", new_reader).status_code == 200
    assert stream_ended.wait(RELOAD_BOUND_S - took + 1), "the removed token's stream stayed open"
    assert get(server, "/autonomous/status", OPERATOR).status_code == 200  # untouched tokens keep working
    # An invalid file keeps the tokens in force (and says why in the log, without the content).
    tokens_file.write_text('[{"name": "x", "token_sha256": "zz", "scopes": ["autonomy:read"]}]')
    wait_until(lambda: "token_sha256: must be 64 hex digits" in server.log(), RELOAD_BOUND_S, "the error log")
    assert get(server, "/autonomous/status", new_reader).status_code == 200
    write_tokens(tokens_file, INITIAL)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "expected a JSON list"),
        ("[1]", "[0]: expected an object"),
        (
            '[{"name": "a", "token_sha256": "ab", "scopes": ["autonomy:read"]}]',
            "[0].token_sha256: must be 64 hex",
        ),
        (json.dumps([{**entry("a", "t", "autonomy:read"), "token": "t"}]), "unknown field 'token'"),
        (json.dumps([entry("a", "t", "autonomy:write")]), "[0].scopes: 'autonomy:write' is not a scope"),
        (json.dumps([entry("a", "t")]), "[0].scopes: must be a non-empty list"),
        (
            json.dumps([entry("a", "t", "autonomy:read"), entry("a", "u", "autonomy:read")]),
            "[1].name: 'a' is used",
        ),
        (json.dumps([entry("a", "t", "autonomy:read"), entry("b", "t", "autonomy:read")]), "listed twice"),
        (json.dumps([entry("bad name", "t", "autonomy:read")]), "[0].name: must be"),
        ("[", "not JSON"),
    ],
)
def test_an_invalid_tokens_file_is_explained_by_entry_and_field(content: str, message: str) -> None:
    with pytest.raises(TokensFileError) as refused:
        parse_tokens(content.encode(), "tokens.json")
    assert message in str(refused.value)
    assert hashlib.sha256(b"t").hexdigest() not in str(refused.value)


def test_an_invalid_tokens_file_stops_startup_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "tokens.json"
    bad.write_text(json.dumps([entry("a", "t", "root")]))
    with (
        pytest.raises(RuntimeError) as failed,
        http_server(tmp_path, env={"MCP_AUTONOMY_TOKENS_FILE": str(bad)}),
    ):
        pass
    assert "'root' is not a scope" in str(failed.value)
