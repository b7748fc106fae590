"""The HTTP authorization guard: who is calling, and may they do this.

`AuthGuard` (ASGI middleware) authenticates every request outside the public paths with the
configured verifiers (static tokens, then OAuth), records the caller in the ASGI scope the way the
SDK's own middleware does (`scope["user"]` an `AuthenticatedUser`, `scope["auth"]` its scopes, so
MCP sessions stay bound to the credential that opened them), and enforces one scope per request:
the route's (`ROUTE_SCOPES`), or on `/mcp` the JSON-RPC message's (`mcp_message_scope`, e.g.
`tools/call send_payment` needs `payments:write`). Refusals follow RFC 6750 and the MCP
authorization specification: 401 with `WWW-Authenticate: Bearer ... resource_metadata="..."`
(RFC 9728) when the token is missing or invalid, 403 `error="insufficient_scope", scope="..."` when
it lacks the scope; on /mcp the 403 body is a JSON-RPC error naming the scope, which SDK clients
surface as the call's error.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import anyio
from mcp.server.auth.handlers.metadata import ProtectedResourceMetadataHandler
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url, cors_middleware
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import AnyHttpUrl
from starlette.authentication import AuthCredentials
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_autonomy.server.asgi_body import read_body
from mcp_autonomy.server.auth.scopes import ALL_SCOPES, mcp_message_scope, route_scope
from mcp_autonomy.server.auth.static import STATIC_ISSUER

logger = logging.getLogger(__name__)

REALM: Final = "mcp-autonomy"
JSONRPC_FORBIDDEN: Final = -32003
"""JSON-RPC error code of an /mcp request refused for a missing scope (HTTP 403)."""
BODY_LIMIT_BYTES: Final = 4 * 1024 * 1024
"""/mcp bodies larger than this are not inspected for their target: they need every scope."""
PRM_ROOT_PATH: Final = "/.well-known/oauth-protected-resource"
MAX_DESCRIPTION_CHARS: Final = 300


class TokenVerifier(Protocol):
    """The SDK's `mcp.server.auth.provider.TokenVerifier`."""

    async def verify_token(self, token: str) -> AccessToken | None: ...


class ChainVerifier:
    """Static tokens first (a hash lookup), then the authorization server."""

    def __init__(self, verifiers: Iterable[TokenVerifier]) -> None:
        self.verifiers = list(verifiers)

    async def verify_token(self, token: str) -> AccessToken | None:
        for verifier in self.verifiers:
            found = await verifier.verify_token(token)
            if found is not None:
                return found
        return None


def caller_identity(token: AccessToken) -> str:
    """Who a token speaks for, as the audit log records it: `token:<name>` for a static token,
    `oauth:<sub> client=<client_id>` for an authorization server's (printable, bounded)."""
    if (token.claims or {}).get("iss") == STATIC_ISSUER:
        label = f"token:{token.client_id}"
    elif token.subject is not None and token.subject != token.client_id:
        label = f"oauth:{token.subject} client={token.client_id}"
    else:
        label = f"oauth:client={token.client_id}"
    return "".join(ch for ch in label if ch.isprintable())[:200]


def caller_of(scope: Scope | dict[str, Any]) -> str | None:
    """The authenticated caller of an ASGI request (see `caller_identity`), or None without auth."""
    user = scope.get("user")
    return caller_identity(user.access_token) if isinstance(user, AuthenticatedUser) else None


def with_caller(scope: Scope | dict[str, Any], channel: str) -> str:
    """`<identity> via <channel>` when the request is authenticated, else `channel` as before."""
    identity = caller_of(scope)
    return f"{identity} via {channel}" if identity is not None else channel


class OpenRequests:
    """The requests (streams included) in flight per static token, to close them when it is removed."""

    def __init__(self) -> None:
        self._scopes: dict[str, set[anyio.CancelScope]] = defaultdict(set)

    def add(self, name: str, scope: anyio.CancelScope) -> None:
        self._scopes[name].add(scope)

    def discard(self, name: str, scope: anyio.CancelScope) -> None:
        scopes = self._scopes.get(name)
        if scopes is not None:
            scopes.discard(scope)
            if not scopes:
                del self._scopes[name]

    def count(self, name: str) -> int:
        return len(self._scopes.get(name, ()))

    def close(self, names: Iterable[str]) -> None:
        """Cancel every request of `names` (an open SSE stream ends; the client sees it close)."""
        for name in names:
            scopes = self._scopes.pop(name, set())
            if scopes:
                logger.info("token %s removed: closing its %d open requests/streams", name, len(scopes))
            for scope in scopes:
                scope.cancel()


@dataclass(frozen=True)
class GuardConfig:
    """Where the guard applies and what its refusals point at."""

    public_paths: frozenset[str]
    public_prefixes: tuple[str, ...]
    mcp_path: str
    resource_metadata_url: str | None
    """RFC 9728 metadata URL (OAuth configured), named in every 401 and 403."""


def _quote(value: str) -> str:
    """A quoted-string body for a header: printable ASCII only (a path or a tool name from the
    request may hold anything, CR LF included), bounded, with quotes and backslashes escaped."""
    printable = "".join(ch for ch in value if " " <= ch <= "~")[:MAX_DESCRIPTION_CHARS]
    return printable.replace("\\", "\\\\").replace('"', '\\"')


def www_authenticate(
    config: GuardConfig, error: str | None, description: str | None, scope: str | None
) -> str:
    """An RFC 6750 challenge; no `error` when no token was sent (RFC 6750 §3.1)."""
    parts = [f'realm="{REALM}"']
    if error is not None:
        parts.append(f'error="{error}"')
    if description is not None:
        parts.append(f'error_description="{_quote(description)}"')
    if scope is not None:
        parts.append(f'scope="{scope}"')
    if config.resource_metadata_url is not None:
        parts.append(f'resource_metadata="{config.resource_metadata_url}"')
    return "Bearer " + ", ".join(parts)


class AuthGuard:
    """Authenticate, then require the request's scope (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, verifier: TokenVerifier, config: GuardConfig, open_requests: OpenRequests
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.config = config
        self.open_requests = open_requests

    def _is_public(self, path: str) -> bool:
        return path in self.config.public_paths or path.startswith(self.config.public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or self._is_public(path):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self._unauthorized(
                scope, receive, send, None, "send an access token: Authorization: Bearer <token>"
            )
            return
        access = await self.verifier.verify_token(token.strip())
        if access is None:
            await self._unauthorized(
                scope,
                receive,
                send,
                "invalid_token",
                "the access token is invalid, expired or not for this server",
            )
            return
        scope["user"] = AuthenticatedUser(access)
        scope["auth"] = AuthCredentials(access.scopes)
        needed = route_scope(scope.get("method", "GET"), path)
        if needed is not None and needed not in access.scopes:
            refusal = self._forbidden_app(needed, f"{scope.get('method')} {path}", None, jsonrpc=False)
            await refusal(scope, receive, send)
            return
        if path == self.config.mcp_path and scope.get("method") == "POST":
            receive, denied = await self._check_message(scope, receive, access)
            if denied is not None:
                await denied(scope, receive, send)
                return
        static_name = access.client_id if (access.claims or {}).get("iss") == STATIC_ISSUER else None
        context = auth_context_var.set(scope["user"])
        try:
            if static_name is None:
                await self.app(scope, receive, send)
                return
            with anyio.CancelScope() as cancel:
                self.open_requests.add(static_name, cancel)
                try:
                    await self.app(scope, receive, send)
                finally:
                    self.open_requests.discard(static_name, cancel)
        finally:
            auth_context_var.reset(context)

    async def _check_message(
        self, scope: Scope, receive: Receive, access: AccessToken
    ) -> tuple[Receive, ASGIApp | None]:
        """Read the JSON-RPC body (replayed to the app) and refuse it if it lacks its scope."""
        read = await read_body(receive, BODY_LIMIT_BYTES)
        buffered = read.messages

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        if not read.complete:
            missing = [s for s in ALL_SCOPES if s not in access.scopes]
            if not missing:
                return replay, None
            return replay, self._forbidden_app(
                missing[0], "a request too large to inspect", None, jsonrpc=True
            )
        try:
            parsed = json.loads(read.body)
        except ValueError:
            return replay, None  # the SDK answers its parse error
        messages = parsed if isinstance(parsed, list) else [parsed]
        for item in messages:
            target = mcp_message_scope(item)
            if target is not None and target[0] not in access.scopes:
                request_id = item.get("id") if isinstance(item, dict) else None
                return replay, self._forbidden_app(target[0], target[1], request_id, jsonrpc=True)
        return replay, None

    async def _unauthorized(
        self, scope: Scope, receive: Receive, send: Send, error: str | None, description: str
    ) -> None:
        response = JSONResponse(
            # `detail` repeats the description for clients of the single-token era.
            {"error": error or "unauthorized", "error_description": description, "detail": description},
            status_code=401,
            headers={"WWW-Authenticate": www_authenticate(self.config, error, description, None)},
        )
        await response(scope, receive, send)

    def _forbidden_app(self, needed: str, what: str, request_id: Any, *, jsonrpc: bool) -> ASGIApp:
        description = f"{what[:MAX_DESCRIPTION_CHARS]} needs scope {needed}"
        headers = {
            "WWW-Authenticate": www_authenticate(self.config, "insufficient_scope", description, needed)
        }
        body: dict[str, Any] = {
            "error": "insufficient_scope",
            "error_description": description,
            "scope": needed,
        }
        if jsonrpc:
            # SDK clients read a JSON-RPC error in a non-2xx body as the call's answer.
            body = {
                "jsonrpc": "2.0",
                "id": request_id,
                "error": {
                    "code": JSONRPC_FORBIDDEN,
                    "message": f"insufficient_scope: {description}; use a token that has {needed}",
                    "data": {"required_scope": needed},
                },
            }
        return JSONResponse(body, status_code=403, headers=headers)


def metadata_routes(resource_url: str, issuer: str) -> list[Route]:
    """RFC 9728 Protected Resource Metadata (the SDK's model, handler and CORS wrapper), at the
    path-inserted URL (`build_resource_metadata_url`) and at the root one.

    The URLs are validated from strings, not `AnyHttpUrl` objects: those append a slash to a
    path-less issuer, and clients compare the issuer exactly (RFC 8414 §3.3).
    """
    metadata = ProtectedResourceMetadata.model_validate(
        {
            "resource": resource_url,
            "authorization_servers": [issuer],
            "scopes_supported": [s.value for s in ALL_SCOPES],
            "resource_name": "mcp-autonomy",
        }
    )
    endpoint = cors_middleware(ProtectedResourceMetadataHandler(metadata).handle, ["GET", "OPTIONS"])
    path = urlsplit(resource_metadata_url(resource_url)).path
    paths = [path] if path == PRM_ROOT_PATH else [path, PRM_ROOT_PATH]
    return [Route(p, endpoint=endpoint, methods=["GET", "OPTIONS"]) for p in paths]


def resource_metadata_url(resource_url: str) -> str:
    """Where RFC 9728 metadata for `resource_url` lives (the SDK's rule)."""
    return str(build_resource_metadata_url(AnyHttpUrl(resource_url)))
