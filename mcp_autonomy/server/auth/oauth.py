"""OAuth 2.1 resource server: access tokens from the organisation's authorization server.

JWT access tokens are checked against the issuer's JWKS (signature with an asymmetric algorithm,
`iss`, `aud`, `exp`, `nbf`); the key set is cached for `MCP_AUTONOMY_AUTH_JWKS_CACHE_S` and
fetched again at once when a token names a key id it does not hold (key rotation). Tokens that
are not JWTs (opaque) are checked by RFC 7662 introspection when the issuer offers it. Scopes are
read from `scope` or `scp` (Entra). Endpoints come from the issuer's metadata
(`/.well-known/openid-configuration`, else RFC 8414) unless configured. Times use the injected
clock; no secret (token, client secret) is ever logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import jwt
from mcp.server.auth.provider import AccessToken

from mcp_autonomy.clock import Clock
from mcp_autonomy.server.auth.scopes import parse_scopes

logger = logging.getLogger(__name__)

ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""Asymmetric algorithms only: `none` and HMAC (a shared secret) are never accepted."""
UNKNOWN_KID_REFETCH_S: Final = 1.0
"""At most one JWKS fetch a second for unknown key ids (so junk tokens cannot flood the issuer)."""
HTTP_TIMEOUT_S: Final = 10.0
MAX_CACHED_INTROSPECTIONS: Final = 10_000


class AuthServerError(RuntimeError):
    """The authorization server could not be reached or answered nonsense."""


@dataclass(frozen=True)
class OAuthConfig:
    """What the resource server checks, from settings (see `Settings.auth_*`)."""

    issuer: str
    audience: str
    jwks_url: str | None = None
    introspection_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    jwks_cache_s: float = 300.0
    leeway_s: float = 30.0
    introspection_cache_s: float = 30.0


def metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata lives: OpenID Connect discovery, then RFC 8414 (path inserted)."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    return [
        issuer.rstrip("/") + "/.well-known/openid-configuration",
        urlunsplit((parts.scheme, parts.netloc, "/.well-known/oauth-authorization-server" + path, "", "")),
    ]


def _audience_matches(aud: Any, audience: str) -> bool:
    values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    wanted = audience.rstrip("/")
    return any(isinstance(v, str) and v.rstrip("/") == wanted for v in values)


def _access_token(claims: dict[str, Any], audience: str) -> AccessToken:
    scopes = parse_scopes(claims.get("scope")) or parse_scopes(claims.get("scp"))
    sub = claims.get("sub")
    client_id = next(
        (claims[k] for k in ("client_id", "azp", "appid") if isinstance(claims.get(k), str)),
        sub if isinstance(sub, str) else "unknown",
    )
    exp = claims.get("exp")
    return AccessToken(
        token="",  # never kept
        client_id=client_id,
        subject=sub if isinstance(sub, str) else None,
        scopes=scopes,
        expires_at=int(exp) if isinstance(exp, int | float) else None,
        resource=audience,
        claims={"iss": claims.get("iss")},
    )


class OAuthVerifier:
    """The SDK's `TokenVerifier` for tokens issued by one authorization server."""

    def __init__(self, config: OAuthConfig, clock: Clock, *, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.clock = clock
        self._http = http or httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False)
        self._owns_http = http is None
        self._metadata: dict[str, Any] | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_fetched_at: float | None = None
        self._last_unknown_fetch: float | None = None
        self._lock = anyio.Lock()
        self._introspected: dict[bytes, tuple[float, AccessToken | None]] = {}
        self.jwks_fetches = 0
        """How many times the key set was fetched (tests and /metrics read it)."""

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # --- the authorization server's endpoints --------------------------------------------

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise AuthServerError(f"GET {url}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise AuthServerError(f"GET {url}: HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise AuthServerError(f"GET {url}: not JSON") from None
        if not isinstance(data, dict):
            raise AuthServerError(f"GET {url}: not a JSON object")
        return data

    async def metadata(self) -> dict[str, Any]:
        """The issuer's metadata (fetched once); its `issuer` must be the configured one."""
        if self._metadata is not None:
            return self._metadata
        problems = []
        for url in metadata_urls(self.config.issuer):
            try:
                data = await self._get_json(url)
            except AuthServerError as exc:
                problems.append(str(exc))
                continue
            if str(data.get("issuer", "")).rstrip("/") != self.config.issuer.rstrip("/"):
                raise AuthServerError(
                    f"{url} names issuer {data.get('issuer')!r}, not MCP_AUTONOMY_AUTH_ISSUER={self.config.issuer}"
                )
            self._metadata = data
            return data
        raise AuthServerError("no issuer metadata: " + "; ".join(problems))

    async def _jwks_url(self) -> str:
        if self.config.jwks_url:
            return self.config.jwks_url
        url = (await self.metadata()).get("jwks_uri")
        if not isinstance(url, str):
            raise AuthServerError("the issuer's metadata has no jwks_uri; set MCP_AUTONOMY_AUTH_JWKS_URL")
        return url

    async def _introspection_url(self) -> str | None:
        if self.config.introspection_url:
            return self.config.introspection_url
        url = (await self.metadata()).get("introspection_endpoint")
        return url if isinstance(url, str) else None

    async def _fetch_keys(self) -> None:
        data = await self._get_json(await self._jwks_url())
        keys: dict[str, jwt.PyJWK] = {}
        for raw in data.get("keys", []) if isinstance(data.get("keys"), list) else []:
            if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(raw)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                continue  # a key type or algorithm we do not use
            keys[str(raw.get("kid", ""))] = key
        self._keys = keys
        self._keys_fetched_at = self.clock.monotonic()
        self.jwks_fetches += 1
        logger.info("JWKS fetched: %d signing keys (%s)", len(keys), ", ".join(sorted(keys)) or "none")

    async def _key(self, kid: str) -> jwt.PyJWK | None:
        """The signing key `kid`, from the cache while fresh; an unknown kid refetches (rotation)."""
        async with self._lock:
            now = self.clock.monotonic()
            stale = self._keys_fetched_at is None or now - self._keys_fetched_at >= self.config.jwks_cache_s
            if stale:
                await self._fetch_keys()
            elif kid not in self._keys and (
                self._last_unknown_fetch is None or now - self._last_unknown_fetch >= UNKNOWN_KID_REFETCH_S
            ):
                self._last_unknown_fetch = now
                await self._fetch_keys()
            if kid in self._keys:
                return self._keys[kid]
            if kid == "" and len(self._keys) == 1:  # a token without kid, an issuer with one key
                return next(iter(self._keys.values()))
            return None

    # --- verification ----------------------------------------------------------------------

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's identity and scopes, or None (the reason is logged at INFO, never the token)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            return await self._introspect(token)
        try:
            return await self._verify_jwt(token, header)
        except AuthServerError as exc:
            logger.warning("cannot check a JWT access token: %s", exc)
            return None

    def _check_times(self, claims: dict[str, Any]) -> str | None:
        now = self.clock.now()
        exp = claims.get("exp")
        if not isinstance(exp, int | float):
            return "no exp claim"
        if now > exp + self.config.leeway_s:
            return "expired"
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and now + self.config.leeway_s < nbf:
            return "not valid yet (nbf)"
        return None

    async def _verify_jwt(self, token: str, header: dict[str, Any]) -> AccessToken | None:
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            logger.info("JWT refused: algorithm %r is not one of %s", alg, ", ".join(ALGORITHMS))
            return None
        key = await self._key(str(header.get("kid", "")))
        if key is None:
            logger.info("JWT refused: key id %r is not in the issuer's JWKS", header.get("kid"))
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=self.config.audience,
                issuer=self.config.issuer,
                # Times are checked against the injected clock below.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["iss", "aud"],
                },
            )
        except jwt.InvalidTokenError as exc:
            logger.info("JWT refused: %s", exc)
            return None
        problem = self._check_times(claims)
        if problem is not None:
            logger.info("JWT refused: %s", problem)
            return None
        return _access_token(claims, self.config.audience)

    async def _introspect(self, token: str) -> AccessToken | None:
        """RFC 7662: ask the issuer about an opaque token (cached for introspection_cache_s)."""
        digest = hashlib.sha256(token.encode()).digest()
        now = self.clock.monotonic()
        cached = self._introspected.get(digest)
        if cached is not None and now < cached[0]:
            return cached[1]
        try:
            url = await self._introspection_url()
        except AuthServerError as exc:
            logger.warning("cannot introspect an opaque token: %s", exc)
            return None
        if url is None:
            logger.info("opaque token refused: the issuer offers no introspection endpoint")
            return None
        auth = (
            (self.config.client_id, self.config.client_secret or "")
            if self.config.client_id is not None
            else None
        )
        try:
            response = await self._http.post(
                url,
                data={"token": token, "token_type_hint": "access_token"},
                auth=auth or httpx.USE_CLIENT_DEFAULT,
            )
            data = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, json.JSONDecodeError) as exc:
            logger.warning("introspection at %s failed: %s", url, type(exc).__name__)
            return None
        if not isinstance(data, dict):
            logger.warning("introspection at %s answered HTTP %d", url, response.status_code)
            return None
        result = self._introspection_result(data)
        if len(self._introspected) >= MAX_CACHED_INTROSPECTIONS:
            self._introspected.clear()
        self._introspected[digest] = (now + self.config.introspection_cache_s, result)
        return result

    def _introspection_result(self, data: dict[str, Any]) -> AccessToken | None:
        if data.get("active") is not True:
            logger.info("opaque token refused: not active")
            return None
        if "iss" in data and str(data["iss"]).rstrip("/") != self.config.issuer.rstrip("/"):
            logger.info("opaque token refused: issued by %r", data["iss"])
            return None
        if not _audience_matches(data.get("aud"), self.config.audience):
            logger.info("opaque token refused: audience %r is not %s", data.get("aud"), self.config.audience)
            return None
        problem = self._check_times(data)
        if problem is not None:
            logger.info("opaque token refused: %s", problem)
            return None
        return _access_token(data, self.config.audience)
