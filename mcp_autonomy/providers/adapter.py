"""The base every HTTP adapter builds on: lifecycle, token cache, probe cache, identifiers.

An adapter is its endpoints and its error table; what they all need lives here once, so a rule
fixed here holds for every provider:

- `initialize()` drops the probe cache, rebuilds the HTTP client and fetches fresh credentials
  (a heal never trusts a probe from before the heal);
- `TokenCache` mints a token under a lock (Daraja warns that minting can invalidate the previous
  token, so concurrent callers must never mint in parallel), refreshes it a margin before it
  expires on the injected clock, and drops exactly the token a gateway rejected;
- `probe()` is rate-capped by `probe_min_interval_s` (provider quotas); a cached answer says so;
- `_learn()` reports every provider identifier the moment it is known to `identifier_sink`,
  which the engine points at its durable store: ids never live only in adapter memory, and
  `status(context=...)` answers with no memory at all.

Why not an `httpx.Auth` subclass for refresh-on-401: a token fetch must raise our classified
`ProviderError` (a refused token endpoint is `auth`, a reset one `not_processed`) and expire on
the injected clock; an auth flow hides both inside httpx. `TokenCache` keeps token flows apart
from transport all the same.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import anyio
import httpx

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.base import (
    ErrorClass,
    PaymentContext,
    ProbeResult,
    ProviderCapabilities,
    ProviderError,
)
from mcp_autonomy.providers.http import (
    HttpClientOwner,
    build_client,
    classify_http_status,
    json_object,
    make_timeout,
    parse_retry_after,
    send,
    short,
)

MAX_REMEMBERED = 100_000
"""Per-map cap on what an adapter remembers about recent payments (oldest forgotten first)."""

IdentifierSink = Callable[[str, str, str], None]
"""Called with (reference, kind, value) the moment an adapter learns a provider id."""


class AdapterSettings(Protocol):
    """What `AdapterBase` reads from an adapter's settings."""

    @property
    def base_url(self) -> str: ...

    @property
    def timeout_s(self) -> float: ...

    @property
    def probe_min_interval_s(self) -> float: ...


SettingsT = TypeVar("SettingsT", bound=AdapterSettings)


class RecentMap(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries beyond `limit`: bounded memory for long runs.

    It is a cache of what the engine's store holds durably, never the only copy.
    """

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: str, value: Any) -> None:
        """Set `key` and make it the newest entry."""
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and the monotonic clock time after which it is refreshed."""

    value: str
    refresh_at_s: float


class TokenCache:
    """One cached token, minted under a lock by `fetch`, refreshed before it expires.

    Example:
        cache = TokenCache(clock, fetch=self._fetch_token)
        token = await cache.get()
        ...
        cache.drop(token)  # the gateway rejected exactly this token
    """

    def __init__(self, clock: Clock, fetch: Callable[[], Awaitable[AccessToken]]) -> None:
        self._clock = clock
        self._fetch = fetch
        self._token: AccessToken | None = None
        self._lock = anyio.Lock()

    def _valid(self) -> AccessToken | None:
        token = self._token
        return token if token is not None and self._clock.monotonic() < token.refresh_at_s else None

    async def get(self) -> str:
        """A valid token, minting one (once, whatever the number of waiting callers) if needed."""
        token = self._valid()
        if token is not None:
            return token.value
        async with self._lock:
            token = self._valid()  # another caller may have minted while this one waited
            if token is None:
                token = self._token = await self._fetch()
            return token.value

    def drop(self, rejected: str | None = None) -> None:
        """Forget the token (only if it is still `rejected`, when given)."""
        if rejected is None or (self._token is not None and self._token.value == rejected):
            self._token = None

    def expiring_at(self, lifetime_s: float, margin_s: float) -> float:
        """The refresh time of a token minted now that lives `lifetime_s`: `margin_s` early, but
        never so early (a tenth of its life at most) that a short-lived token is minted per call."""
        return self._clock.monotonic() + lifetime_s - min(margin_s, lifetime_s / 10)


class AdapterBase(HttpClientOwner, Generic[SettingsT]):
    """Lifecycle, probe cache and identifier reporting shared by every HTTP adapter.

    A subclass sets `name` and `capabilities`, implements `_base_url()`, `_probe_once()` and
    its money calls, and (if it uses tokens) overrides `_reset_credentials()` / `_warm_credentials()`.
    Its settings object is an `AdapterSettings` (base_url, timeout_s, probe_min_interval_s).
    """

    name: str
    capabilities: ProviderCapabilities

    def __init__(
        self,
        settings: SettingsT,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        settings_loader: Callable[[], SettingsT] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._timeout_s = timeout_s if timeout_s is not None else float(settings.timeout_s)
        make_timeout(self._timeout_s)  # validate now, not on the first payment
        self._settings_loader = settings_loader
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._last_probe: tuple[float, ProbeResult] | None = None
        self.identifier_sink: IdentifierSink | None = None
        """Where learnt provider ids go the moment they are known (the engine's durable store)."""
        self._identifiers = RecentMap()  # reference -> {kind: value}

    # --- lifecycle -----------------------------------------------------------------------

    async def initialize(self) -> None:
        """A fresh HTTP client and fresh credentials; the probe cache is dropped."""
        self._last_probe = None  # a re-initialised adapter is probed afresh, never from the cache
        await self.close()
        self._client = self._new_client()
        await self.refresh_credentials()

    async def refresh_credentials(self) -> None:
        """Reload settings (when a loader was given), drop cached tokens, fetch new ones."""
        if self._settings_loader is not None:
            self._settings = self._settings_loader()
            self._settings_reloaded()
        self._reset_credentials()
        await self._warm_credentials()

    def _settings_reloaded(self) -> None:
        """Hook: derive what depends on settings (capabilities, ...) after a reload."""

    def _reset_credentials(self) -> None:
        """Hook: drop every cached token."""

    async def _warm_credentials(self) -> None:
        """Hook: fetch the tokens a payment will need (a bad key shows at initialise, not at pay)."""

    def _base_url(self) -> str:
        return str(self._settings.base_url)

    def _new_client(self) -> httpx.AsyncClient:
        return build_client(self._base_url(), self._timeout_s, transport=self._transport)

    # --- probe ---------------------------------------------------------------------------

    async def probe(self) -> ProbeResult:
        """The provider's cheap read-only call, at most once per `probe_min_interval_s`."""
        now = self._clock.monotonic()
        interval_s = float(self._settings.probe_min_interval_s)
        if self._last_probe is not None and now - self._last_probe[0] < interval_s:
            cached = self._last_probe[1]
            return cached.model_copy(update={"detail": f"{cached.detail} (cached)"})
        started = time.perf_counter()
        detail = await self._probe_once()
        result = ProbeResult(ok=True, latency_ms=(time.perf_counter() - started) * 1000, detail=detail)
        self._last_probe = (now, result)
        return result

    async def _probe_once(self) -> str:
        """One read-only call; returns a short detail, raises `ProviderError` on failure."""
        raise NotImplementedError

    # --- identifiers ---------------------------------------------------------------------

    def _learn(self, reference: str, kind: str, value: str | None) -> None:
        """Remember a provider id for `reference` and report it to the sink at once."""
        if not value:
            return
        known = self._identifiers.get(reference)
        if known is None:
            known = {}
            self._identifiers.remember(reference, known)
        if known.get(kind) == value:
            return
        known[kind] = value
        if self.identifier_sink is not None:
            self.identifier_sink(reference, kind, value)

    def _identifier(self, reference: str, kind: str, context: PaymentContext | None = None) -> str | None:
        """A learnt id: from memory, else from the engine's stored context."""
        known = self._identifiers.get(reference)
        if known is not None and kind in known:
            return str(known[kind])
        if context is not None:
            return context.identifiers.get(kind)
        return None

    # --- requests ------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a call (static-key providers); read per call, so a reloaded
        (rotated) key applies at once. Token providers send theirs through their own flow."""
        return {}

    async def _request(
        self,
        method: str,
        path: str,
        *,
        mutating: bool,
        what: str,
        payload: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[httpx.Response, dict[str, Any]]:
        """One call with `_auth_headers()`; the answer and its JSON object ({} when it is none)."""
        response = await send(
            self._http(),
            self.name,
            method,
            path,
            mutating=mutating,
            what=what,
            json_body=payload,
            params=params,
            headers=self._auth_headers(),
        )
        return response, json_object(response)

    # --- errors --------------------------------------------------------------------------

    def _provider_error(
        self,
        response: httpx.Response,
        error_class: ErrorClass | None,
        message: str,
        *,
        code: str | None = None,
        mutating: bool,
    ) -> ProviderError:
        """A `ProviderError` for an HTTP answer: `error_class` from the provider's own code table,
        or (None) from the HTTP status; message cut, `Retry-After` parsed."""
        if error_class is None:
            error_class = classify_http_status(response.status_code, mutating=mutating)
            if error_class is None:  # a 2xx that did not carry what was asked for
                error_class = ErrorClass.AMBIGUOUS if mutating else ErrorClass.NOT_PROCESSED
        return ProviderError(
            self.name,
            error_class,
            short(message),
            code=code,
            http_status=response.status_code,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After"), self._clock.now()),
        )
