"""Static bearer tokens for small deployments: several, each with a name and its scopes.

They come from `MCP_AUTONOMY_TOKENS_FILE`, a JSON list of `{"name", "token_sha256", "scopes"}`
(a file or a mounted Secret), re-read every `MCP_AUTONOMY_TOKENS_RELOAD_S` so that adding,
removing or rotating a token takes effect without a restart; `MCP_AUTONOMY_BEARER_TOKEN` is one
more token holding every scope, `MCP_AUTONOMY_PEER_TOKEN` one holding `autonomy:read` (what peers
need for /internal/load). Only SHA-256 hashes are kept in memory and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
from mcp.server.auth.provider import AccessToken

from mcp_autonomy.server.auth.scopes import ALL_SCOPES, SCOPE_NAMES, Scope

logger = logging.getLogger(__name__)

STATIC_ISSUER: Final = "mcp-autonomy:static-tokens"
"""The `iss` claim given to static tokens (it tells them apart from OAuth tokens in the audit log)."""
BEARER_TOKEN_NAME: Final = "bearer-token"
PEER_TOKEN_NAME: Final = "peer"
NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SHA256_RE: Final = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_TOKENS: Final = 1000
MAX_FILE_BYTES: Final = 1_000_000


class TokensFileError(ValueError):
    """The tokens file is unreadable or invalid; the message names the entry and field, never a hash."""


@dataclass(frozen=True)
class StaticToken:
    """One named token: its SHA-256 digest and its scopes."""

    name: str
    digest: bytes
    scopes: frozenset[str]


def token_digest(token: str) -> bytes:
    """SHA-256 of a bearer token (what the tokens file holds, hex-encoded)."""
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(raw: bytes, source: str) -> list[StaticToken]:
    """The entries of a tokens file, or TokensFileError naming the entry and field at fault."""
    if len(raw) > MAX_FILE_BYTES:
        raise TokensFileError(f"{source}: larger than {MAX_FILE_BYTES} bytes")
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TokensFileError(f"{source}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError:
        raise TokensFileError(f"{source}: not UTF-8 JSON") from None
    if not isinstance(data, list):
        raise TokensFileError(f'{source}: expected a JSON list of {{"name", "token_sha256", "scopes"}}')
    if len(data) > MAX_TOKENS:
        raise TokensFileError(f"{source}: {len(data)} entries, at most {MAX_TOKENS} allowed")
    tokens: list[StaticToken] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for index, entry in enumerate(data):
        where = f"{source}[{index}]"
        if not isinstance(entry, dict):
            raise TokensFileError(f'{where}: expected an object {{"name", "token_sha256", "scopes"}}')
        unknown = sorted(set(entry) - {"name", "token_sha256", "scopes"})
        if unknown:
            raise TokensFileError(
                f"{where}: unknown field {unknown[0]!r}; allowed: name, token_sha256, scopes"
            )
        name = entry.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise TokensFileError(
                f"{where}.name: must be 1..64 of A-Z a-z 0-9 . _ @ - (starting alphanumeric)"
            )
        if name in names or name in (BEARER_TOKEN_NAME, PEER_TOKEN_NAME):
            raise TokensFileError(f"{where}.name: {name!r} is used twice (or is reserved)")
        digest_hex = entry.get("token_sha256")
        if not isinstance(digest_hex, str) or not SHA256_RE.match(digest_hex):
            raise TokensFileError(
                f'{where}.token_sha256: must be 64 hex digits (printf %s "$TOKEN" | sha256sum), '
                "never the token itself"
            )
        digest = bytes.fromhex(digest_hex)
        if digest in digests:
            raise TokensFileError(f"{where}.token_sha256: the same token is listed twice")
        scopes = entry.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            raise TokensFileError(
                f"{where}.scopes: must be a non-empty list of {', '.join(sorted(SCOPE_NAMES))}"
            )
        bad = [s for s in scopes if s not in SCOPE_NAMES]
        if bad:
            raise TokensFileError(
                f"{where}.scopes: {bad[0]!r} is not a scope; allowed: {', '.join(sorted(SCOPE_NAMES))}"
            )
        names.add(name)
        digests.add(digest)
        tokens.append(StaticToken(name, digest, frozenset(scopes)))
    return tokens


class StaticTokens:
    """The static tokens in force, and the watcher that reloads the tokens file.

    `verify_token` is the SDK's `TokenVerifier` protocol: every entry is compared (constant time
    per entry, and the loop never stops early) so timing tells nothing about which one matched.
    """

    def __init__(
        self,
        *,
        bearer_token: str | None = None,
        peer_token: str | None = None,
        tokens_file: Path | None = None,
    ) -> None:
        self._fixed: list[StaticToken] = []
        if bearer_token is not None:
            self._fixed.append(
                StaticToken(BEARER_TOKEN_NAME, token_digest(bearer_token), frozenset(ALL_SCOPES))
            )
        if peer_token is not None:
            self._fixed.append(
                StaticToken(PEER_TOKEN_NAME, token_digest(peer_token), frozenset({Scope.READ}))
            )
        self.tokens_file = tokens_file
        self._from_file: list[StaticToken] = []
        self._file_digest: bytes | None = None
        if tokens_file is not None:
            self.reload(strict=True)

    @property
    def names(self) -> list[str]:
        """The names of the tokens in force."""
        return [t.name for t in (*self._fixed, *self._from_file)]

    async def verify_token(self, token: str) -> AccessToken | None:
        """The token's identity and scopes, or None when it is not one of ours."""
        digest = token_digest(token)
        found: StaticToken | None = None
        for entry in (*self._fixed, *self._from_file):
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        if found is None:
            return None
        return AccessToken(
            token="",  # never kept: nothing downstream needs the secret itself
            client_id=found.name,
            subject=found.name,
            scopes=sorted(found.scopes),
            claims={"iss": STATIC_ISSUER},
        )

    def reload(self, *, strict: bool = False) -> set[str]:
        """Re-read the tokens file if its content changed; returns the names no longer valid.

        A name whose hash or scopes changed counts as removed (its open streams are closed; the
        new token opens new ones). An unreadable or invalid file keeps the tokens in force and is
        logged (without its content); with `strict` (at startup) it raises TokensFileError.
        """
        if self.tokens_file is None:
            return set()
        try:
            raw = self.tokens_file.read_bytes()
        except OSError as exc:
            problem = TokensFileError(
                f"MCP_AUTONOMY_TOKENS_FILE={self.tokens_file}: cannot read it ({exc.strerror})"
            )
            if strict:
                raise problem from None
            logger.error("%s; keeping the %d tokens in force", problem, len(self._from_file))
            return set()
        file_digest = hashlib.sha256(raw).digest()
        if file_digest == self._file_digest:
            return set()
        try:
            tokens = parse_tokens(raw, f"MCP_AUTONOMY_TOKENS_FILE={self.tokens_file}")
        except TokensFileError as exc:
            if strict:
                raise
            logger.error("%s; keeping the %d tokens in force", exc, len(self._from_file))
            self._file_digest = file_digest  # log it once, not every poll
            return set()
        kept = set(tokens)
        removed = {t.name for t in self._from_file if t not in kept}
        self._from_file = tokens
        self._file_digest = file_digest
        logger.info(
            "tokens file loaded: %d tokens (%s)%s",
            len(tokens),
            ", ".join(t.name for t in tokens) or "none",
            f"; no longer valid: {', '.join(sorted(removed))}" if removed else "",
        )
        return removed

    async def watch(self, interval_s: float, on_removed: Callable[[Iterable[str]], None]) -> None:
        """Reload the tokens file every `interval_s` until cancelled; report removed names."""
        while True:
            await anyio.sleep(interval_s)
            removed = self.reload()
            if removed:
                on_removed(removed)
