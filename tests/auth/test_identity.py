"""How callers are named in the audit log and counted in get_stats, and how refusals are worded."""

from __future__ import annotations

import hashlib

import anyio
import pytest
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from mcp_autonomy.autonomy.system import MAX_CALLERS_IN_STATS, actions_by_caller
from mcp_autonomy.server.auth.guard import GuardConfig, caller_identity, with_caller, www_authenticate
from mcp_autonomy.server.auth.static import STATIC_ISSUER, StaticTokens


def token(client_id: str, subject: str | None, issuer: str) -> AccessToken:
    return AccessToken(token="", client_id=client_id, subject=subject, scopes=[], claims={"iss": issuer})


def test_callers_are_named_by_token_name_or_subject_and_client() -> None:
    assert caller_identity(token("ops", "ops", STATIC_ISSUER)) == "token:ops"
    assert caller_identity(token("claude", "alice", "https://sso")) == "oauth:alice client=claude"
    assert caller_identity(token("batch", "batch", "https://sso")) == "oauth:client=batch"
    assert caller_identity(token("batch", None, "https://sso")) == "oauth:client=batch"
    assert caller_identity(token("x\nforged", "a\x00b", "https://sso")) == "oauth:ab client=xforged"
    scope = {"user": AuthenticatedUser(token("ops", "ops", STATIC_ISSUER))}
    assert with_caller(scope, "rest:127.0.0.1 curl/8") == "token:ops via rest:127.0.0.1 curl/8"
    assert with_caller({}, "rest:127.0.0.1 curl/8") == "rest:127.0.0.1 curl/8"  # no authorization: as before


def test_get_stats_counts_actions_per_identity_not_per_session() -> None:
    counted = actions_by_caller(
        {
            "token:ops via claude/1.0 session=a": 2,
            "token:ops via claude/1.0 session=b": 3,
            "token:ops via rest:10.0.0.1 curl/8": 1,
            "oauth:alice client=claude via claude/1.0 session=c": 4,
            "rest:127.0.0.1 curl/8": 1,
        }
    )
    assert counted == {"token:ops": 6, "oauth:alice client=claude": 4, "rest:127.0.0.1 curl/8": 1}
    many = actions_by_caller({f"token:t{i} via x": i + 1 for i in range(MAX_CALLERS_IN_STATS + 10)})
    assert len(many) == MAX_CALLERS_IN_STATS and min(many.values()) == 11  # the most active kept


def test_challenges_follow_rfc_6750() -> None:
    plain = GuardConfig(frozenset(), (), "/mcp", None)
    oauth = GuardConfig(
        frozenset(), (), "/mcp", "https://mcp.example.test/.well-known/oauth-protected-resource/mcp"
    )
    assert www_authenticate(plain, None, None, None) == 'Bearer realm="mcp-autonomy"'
    challenge = www_authenticate(oauth, "insufficient_scope", 'tool "x" needs', "payments:write")
    assert challenge == (
        'Bearer realm="mcp-autonomy", error="insufficient_scope", error_description="tool \\"x\\" needs", '
        'scope="payments:write", resource_metadata="https://mcp.example.test/.well-known/oauth-protected-resource/mcp"'
    )


@pytest.mark.parametrize("bearer", [None, "legacy"])
def test_static_tokens_match_by_hash_only(bearer: str | None) -> None:
    tokens = StaticTokens(bearer_token=bearer, peer_token="peer-secret")
    assert "legacy" not in repr(vars(tokens)) and "peer-secret" not in repr(vars(tokens))
    found = anyio.run(tokens.verify_token, "peer-secret")
    assert found is not None and found.client_id == "peer" and found.scopes == ["autonomy:read"]
    assert found.token == ""  # the secret is not carried along
    admin = anyio.run(tokens.verify_token, "legacy")
    assert (admin is not None) == (bearer is not None)
    if admin is not None:
        assert len(admin.scopes) == 5
    assert anyio.run(tokens.verify_token, hashlib.sha256(b"peer-secret").hexdigest()) is None
