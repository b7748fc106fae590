"""The server as an OAuth 2.1 resource server, against a real OpenID Connect provider
(oidc-provider): RFC 9728 metadata and 401 pointing at it, JWT access tokens checked for issuer,
audience, expiry and signature against the issuer's JWKS (rotation picked up), opaque tokens by
RFC 7662 introspection, scopes enforced per tool and route, and every audited action naming
its caller."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import SettingsError, load_settings
from mcp_autonomy.server.auth.oauth import OAuthConfig, OAuthVerifier
from tests.auth.conftest import Oidc, mcp_client, wait_until
from tests.server.harness import HttpServer, http_server

PUBLIC_URL = "https://mcp.example.test/mcp"
METADATA_URL = "https://mcp.example.test/.well-known/oauth-protected-resource/mcp"
EVERY_SCOPE = "autonomy:read autonomy:operate payments:read payments:write sandbox:faults"
PAYOUT = {
    "idempotency_key": "oauth-payout-1",
    "amount_minor": 2500,
    "currency": "KES",
    "phone": "+254712345678",
    "country": "KE",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, oidc: Oidc) -> Iterator[HttpServer]:
    env = {
        "MCP_AUTONOMY_AUTH_ISSUER": oidc.issuer,
        "MCP_AUTONOMY_PUBLIC_URL": PUBLIC_URL,
        "MCP_AUTONOMY_AUTH_CLIENT_ID": "rs",
        "MCP_AUTONOMY_AUTH_CLIENT_SECRET": "secret",
        "MCP_AUTONOMY_SANDBOX_REALISM": "ideal",
        "MCP_AUTONOMY_AUTH_LEEWAY_S": "0",  # so a 3 s token expires while the test watches
    }
    with http_server(tmp_path_factory.mktemp("oauth"), env=env) as running:
        yield running


def call(
    server: HttpServer,
    method: str,
    path: str,
    token: str | None,
    *,
    json: object = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = {**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx.request(method, f"{server.base_url}{path}", headers=sent, json=json, timeout=30)


def test_no_token_is_401_pointing_at_the_protected_resource_metadata(server: HttpServer, oidc: Oidc) -> None:
    for method, path in (("POST", "/mcp"), ("GET", "/autonomous/status")):
        refused = call(server, method, path, None, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.status_code == 401, path
        assert f'resource_metadata="{METADATA_URL}"' in refused.headers["www-authenticate"], path
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        metadata = call(server, "GET", path, None)
        assert metadata.status_code == 200, path
        document = metadata.json()
        assert document["resource"] == PUBLIC_URL
        assert document["authorization_servers"] == [
            oidc.issuer
        ]  # exactly: clients compare issuers as strings
        assert set(document["scopes_supported"]) == set(EVERY_SCOPE.split())


def test_tokens_not_issued_for_this_server_are_401(server: HttpServer, oidc: Oidc) -> None:
    good = oidc.token("autonomy:read", PUBLIC_URL)
    assert call(server, "GET", "/autonomous/status", good).status_code == 200
    header, payload, signature = good.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    bad = {
        "wrong audience": oidc.token("autonomy:read", "https://other.example.test/mcp"),
        "wrong issuer (same keys)": oidc.token("autonomy:read", PUBLIC_URL, issuer=oidc.other_issuer),
        "bad signature": tampered,
        "not a token": "garbage",
        "unsigned": f"eyJhbGciOiJub25lIn0.{payload}.",
    }
    for what, token in bad.items():
        refused = call(server, "GET", "/autonomous/status", token)
        assert refused.status_code == 401, what
        challenge = refused.headers["www-authenticate"]
        assert 'error="invalid_token"' in challenge and METADATA_URL in challenge, what
    assert good not in server.log()


def test_an_expired_token_is_401(server: HttpServer, oidc: Oidc) -> None:
    token = oidc.token("autonomy:read", PUBLIC_URL, client="short-client")  # lives 3 s
    assert call(server, "GET", "/autonomous/status", token).status_code == 200
    # Waits for the issuer's real clock (the server's own times are covered on ManualClock below).
    wait_until(lambda: call(server, "GET", "/autonomous/status", token).status_code == 401, 10, "expiry")
    refused = call(server, "GET", "/autonomous/status", token)
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert "JWT refused: expired" in server.log()


def test_scopes_decide_what_a_token_may_do_through_the_sdk_client(server: HttpServer, oidc: Oidc) -> None:
    reader_token = oidc.token("autonomy:read", PUBLIC_URL)
    payer_token = oidc.token("payments:write", PUBLIC_URL)
    operator_token = oidc.token("autonomy:read autonomy:operate", PUBLIC_URL)

    async def run() -> None:
        async with mcp_client(server.url, reader_token) as reader:
            assert not (await reader.call_tool("get_status", {})).is_error
            for tool, arguments, scope in (
                ("send_payment", PAYOUT, "payments:write"),
                ("heal_provider", {"provider": "mpesa", "reason": "reader heals"}, "autonomy:operate"),
                ("scale_to", {"replicas": 4, "reason": "reader scales"}, "autonomy:operate"),
            ):
                with pytest.raises(MCPError) as refused:
                    await reader.call_tool(tool, arguments)
                assert scope in str(refused.value), tool
        async with mcp_client(server.url, payer_token, mode="2026-07-28") as payer:  # stateless, too
            with pytest.raises(MCPError, match="autonomy:operate"):
                await payer.call_tool("heal_provider", {"provider": "mpesa", "reason": "payer heals"})
            paid = await payer.call_tool("send_payment", PAYOUT)
            assert not paid.is_error, paid.content
        async with mcp_client(server.url, operator_token) as operator:
            healed = await operator.call_tool(
                "heal_provider", {"provider": "mpesa", "reason": "operator heals"}
            )
            assert not healed.is_error, healed.content

    anyio.run(run)
    # The raw HTTP answer to a refused tools/call: 403 with the scope in WWW-Authenticate.
    refused = call(
        server,
        "POST",
        "/mcp",
        reader_token,
        json={
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "scale_to", "arguments": {}},
        },
        headers={"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"},
    )
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    assert 'scope="autonomy:operate"' in refused.headers["www-authenticate"]
    assert refused.json()["id"] == 7 and "autonomy:operate" in refused.json()["error"]["message"]
    events = call(server, "GET", "/autonomous/events?type=manual_action&limit=100", operator_token).json()[
        "events"
    ]
    messages = [e["message"] for e in events]
    assert any(m.startswith("heal_provider by oauth:client=jwt-client via ") for m in messages), messages
    assert any(m.startswith("send_payment by oauth:client=jwt-client via ") for m in messages), messages


def test_opaque_tokens_are_checked_by_introspection(server: HttpServer, oidc: Oidc) -> None:
    operator = oidc.token("autonomy:read autonomy:operate", PUBLIC_URL, client="opaque-client")
    reader = oidc.token("autonomy:read", PUBLIC_URL, client="opaque-client")
    assert operator.count(".") == 0  # opaque, not a JWT
    body = {"replicas": 2, "reason": "opaque operator scales"}
    assert call(server, "POST", "/autonomous/scale", reader, json=body).status_code == 403
    scaled = call(server, "POST", "/autonomous/scale", operator, json=body)
    assert scaled.status_code == 200, scaled.text
    foreign = oidc.token("autonomy:read", "https://other.example.test/mcp", client="opaque-client")
    assert call(server, "GET", "/autonomous/status", foreign).status_code == 401
    stats = call(server, "GET", "/autonomous/stats", operator).json()
    assert stats["manual_actions_by_caller"].get("oauth:client=opaque-client", 0) >= 1, stats


def test_a_key_rotation_at_the_issuer_is_picked_up(server: HttpServer, oidc: Oidc) -> None:
    before = oidc.token("autonomy:read", PUBLIC_URL)
    assert call(server, "GET", "/autonomous/status", before).status_code == 200
    oidc.rotate()
    after = oidc.token("autonomy:read", PUBLIC_URL)
    assert call(server, "GET", "/autonomous/status", after).status_code == 200  # new kid: JWKS fetched again
    assert call(server, "GET", "/autonomous/status", before).status_code == 401  # the old key is gone


@pytest.mark.anyio
async def test_expiry_and_the_jwks_cache_follow_the_injected_clock(oidc: Oidc) -> None:
    clock = ManualClock(start_epoch_s=time.time())
    config = OAuthConfig(issuer=oidc.issuer, audience=PUBLIC_URL, jwks_cache_s=300, leeway_s=30)
    verifier = OAuthVerifier(config, clock)
    try:
        token = oidc.token("autonomy:read payments:read", PUBLIC_URL)
        checked = await verifier.verify_token(token)
        assert checked is not None and checked.scopes == ["autonomy:read", "payments:read"]
        assert await verifier.verify_token(token) is not None
        assert verifier.jwks_fetches == 1  # cached
        await clock.advance(301)
        assert await verifier.verify_token(token) is not None
        assert verifier.jwks_fetches == 2  # the cache expired
        await clock.advance(600 + 30)  # the provider's token lifetime is 600 s; leeway 30 s
        assert await verifier.verify_token(token) is None
    finally:
        await verifier.aclose()


def test_an_issuer_needs_the_public_url() -> None:
    with pytest.raises(SettingsError, match="MCP_AUTONOMY_AUTH_ISSUER needs MCP_AUTONOMY_PUBLIC_URL"):
        load_settings(auth_issuer="https://login.example.test/realms/payments")
    with pytest.raises(SettingsError, match="MCP_AUTONOMY_PUBLIC_URL"):
        load_settings(public_url="http://mcp.example.test/mcp")  # plain http beyond localhost
    settings = load_settings(
        auth_issuer="https://login.example.test/realms/payments", public_url=PUBLIC_URL, host="0.0.0.0"
    )
    assert settings.resolved_audience == PUBLIC_URL and settings.auth_configured
