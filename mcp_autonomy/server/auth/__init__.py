"""Authorization: scopes per tool/resource/route, static tokens, OAuth 2.1 resource server.

`build_auth(settings, clock)` assembles what the HTTP app needs from settings, or None when no
credential is configured (loopback only: `make run` keeps working without a token).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from starlette.routing import Route

from mcp_autonomy.clock import Clock
from mcp_autonomy.config import Settings, SettingsError
from mcp_autonomy.server.auth.guard import (
    ChainVerifier,
    GuardConfig,
    OpenRequests,
    TokenVerifier,
    caller_identity,
    caller_of,
    metadata_routes,
    resource_metadata_url,
    with_caller,
)
from mcp_autonomy.server.auth.oauth import OAuthConfig, OAuthVerifier
from mcp_autonomy.server.auth.scopes import ALL_SCOPES, Scope
from mcp_autonomy.server.auth.static import StaticTokens, TokensFileError

__all__ = [
    "ALL_SCOPES",
    "AuthSetup",
    "Scope",
    "build_auth",
    "caller_identity",
    "caller_of",
    "check_tokens_file",
    "with_caller",
]


@dataclass
class AuthSetup:
    """The verifiers, the guard's configuration and the metadata routes of one server."""

    verifier: ChainVerifier
    static: StaticTokens | None
    oauth: OAuthVerifier | None
    reload_s: float
    resource_metadata_url: str | None
    routes: list[Route] = field(default_factory=list)
    open_requests: OpenRequests = field(default_factory=OpenRequests)

    def guard_config(
        self, *, public_paths: frozenset[str], public_prefixes: tuple[str, ...], mcp_path: str
    ) -> GuardConfig:
        metadata_paths = frozenset(r.path for r in self.routes)
        return GuardConfig(
            public_paths=public_paths | metadata_paths,
            public_prefixes=public_prefixes,
            mcp_path=mcp_path,
            resource_metadata_url=self.resource_metadata_url,
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Reload the tokens file while the server runs; close the HTTP client after."""
        try:
            async with anyio.create_task_group() as tg:
                if self.static is not None and self.static.tokens_file is not None:
                    tg.start_soon(self.static.watch, self.reload_s, self.open_requests.close)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if self.oauth is not None:
                with anyio.CancelScope(shield=True):
                    await self.oauth.aclose()


def check_tokens_file(settings: Settings) -> None:
    """SettingsError naming the entry and field when MCP_AUTONOMY_TOKENS_FILE cannot be used."""
    if settings.tokens_file is not None:
        try:
            StaticTokens(tokens_file=settings.tokens_file)
        except TokensFileError as exc:
            raise SettingsError(str(exc)) from None


def build_auth(settings: Settings, clock: Clock) -> AuthSetup | None:
    """The authorization of a server with these settings, or None when none is configured."""
    if not settings.auth_configured:
        return None
    verifiers: list[TokenVerifier] = []
    static: StaticTokens | None = None
    if (
        settings.bearer_token is not None
        or settings.tokens_file is not None
        or settings.peer_token is not None
    ):
        try:
            static = StaticTokens(
                bearer_token=settings.bearer_token.get_secret_value() if settings.bearer_token else None,
                peer_token=settings.peer_token.get_secret_value() if settings.peer_token else None,
                tokens_file=settings.tokens_file,
            )
        except TokensFileError as exc:
            raise SettingsError(str(exc)) from None
        verifiers.append(static)
    oauth: OAuthVerifier | None = None
    routes: list[Route] = []
    metadata_url: str | None = None
    if settings.auth_issuer is not None:
        assert settings.public_url is not None and settings.resolved_audience is not None  # settings check it
        oauth = OAuthVerifier(
            OAuthConfig(
                issuer=settings.auth_issuer,
                audience=settings.resolved_audience,
                jwks_url=settings.auth_jwks_url,
                introspection_url=settings.auth_introspection_url,
                client_id=settings.auth_client_id,
                client_secret=settings.auth_client_secret.get_secret_value()
                if settings.auth_client_secret
                else None,
                jwks_cache_s=settings.auth_jwks_cache_s,
                leeway_s=settings.auth_leeway_s,
                introspection_cache_s=settings.auth_introspection_cache_s,
            ),
            clock,
        )
        verifiers.append(oauth)
        routes = metadata_routes(settings.public_url, settings.auth_issuer)
        metadata_url = resource_metadata_url(settings.public_url)
    return AuthSetup(
        verifier=ChainVerifier(verifiers),
        static=static,
        oauth=oauth,
        reload_s=settings.tokens_reload_s,
        resource_metadata_url=metadata_url,
        routes=routes,
    )
