"""What every HTTP adapter shares: the client, and what a failed call means for the money.

Classification is the heart of "never double-charge". The question each rule answers is: *could
the provider have processed this request?* Only "certainly not" lets the router fail over at
once; "maybe" (`ambiguous`) must first be resolved with the provider's idempotent status query.

Transport failures (no HTTP answer at all):

| failure | class | why |
|---|---|---|
| `ConnectError` (refused, DNS, unreachable), `ConnectTimeout` | not_processed | no TCP connection, so no byte of the request reached the provider |
| `PoolTimeout` | not_processed | the request never left this process |
| `UnsupportedProtocol`, `LocalProtocolError` | not_processed | rejected by httpx before sending (a bug here, not the provider) |
| `WriteTimeout`, `WriteError` | ambiguous | the connection broke while sending; a server might already hold the whole request (a write error can surface after the last byte was handed to the kernel) |
| `ReadTimeout`, `ReadError`, `RemoteProtocolError` (reset or closed mid-response) | ambiguous | the request was sent: the provider may be processing it right now |
| any other `TransportError` (e.g. `ProxyError`) | ambiguous | unknown means maybe |

HTTP answers (used when the provider's own error code does not say more; adapters check their
provider's codes first, e.g. Daraja reports rate limits as HTTP 500 + `500.003.02`):

| status | class | why |
|---|---|---|
| 429 | rate_limited | refused by the rate limiter before processing; `Retry-After` is honoured |
| 401, 403 | auth | refused at the gate: credentials, never processed |
| 408 | not_processed | the server gave up waiting for the complete request |
| other 4xx | invalid_request | the provider validated and refused it: the caller's fault, retrying elsewhere will not help |
| 5xx | ambiguous | the provider (or a proxy in front of it) failed at an unknown point, possibly after accepting the payment |

Read-only calls (status queries, probes, token fetches) move no money: for them every "maybe"
becomes `not_processed`, so the router may retry or go elsewhere freely. Pass `mutating=False`.

`TRANSPORT_RULES` states these two tables as `ErrorRule`s for the generated README table (see
`error_table`); the functions below are what the adapters run.
"""

from __future__ import annotations

import json
import math
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from mcp_autonomy.providers.base import ErrorClass, ErrorRule, ProviderError

DEFAULT_CONNECT_TIMEOUT_S = 5.0
"""Connect is capped separately: a slow TCP handshake says nothing good, and it is always safe to fail."""
MAX_RETRY_AFTER_S = 3600.0
"""A `Retry-After` beyond an hour is treated as an hour: the breaker, not the header, decides longer."""
MAX_DETAIL_CHARS = 200
"""Provider messages are cut to this length before they travel in errors and events."""

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)

NO_SOURCE = "no source: ambiguous by default"
"""The source of a rule that stays `ambiguous` because nothing written says the request was not
processed (typically a bare 500 or 503 from a gateway): it is resolved by a status query first."""

_HTTPX_EXCEPTIONS = "httpx docs, Exceptions (www.python-httpx.org/exceptions)"
TRANSPORT_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        match="ConnectError, ConnectTimeout (refused, DNS, unreachable)",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="no TCP connection, so no byte of the request reached the provider",
        source=f"{_HTTPX_EXCEPTIONS}: raised while establishing the connection, before the request is sent",
    ),
    ErrorRule(
        match="PoolTimeout",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="the request never left this process",
        source=f"{_HTTPX_EXCEPTIONS}: timed out waiting to acquire a connection from the pool",
    ),
    ErrorRule(
        match="UnsupportedProtocol, LocalProtocolError",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="rejected by httpx before sending (a bug here, not the provider)",
        source=f"{_HTTPX_EXCEPTIONS}: protocol violations detected by the client itself",
    ),
    ErrorRule(
        match="WriteTimeout, WriteError",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="the connection broke while sending; the server may already hold the whole request",
        source=NO_SOURCE,
    ),
    ErrorRule(
        match="ReadTimeout, ReadError, RemoteProtocolError (reset or closed mid-response)",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="the request was sent: the provider may be processing it right now",
        source=NO_SOURCE,
    ),
    ErrorRule(
        match="any other TransportError (e.g. ProxyError)",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="unknown means maybe",
        source=NO_SOURCE,
    ),
    ErrorRule(
        match="HTTP 429",
        error_class=ErrorClass.RATE_LIMITED,
        meaning="refused by the rate limiter before processing; Retry-After is honoured",
        source="RFC 6585 section 4: the user has sent too many requests (the server refuses them)",
    ),
    ErrorRule(
        match="HTTP 401, 403",
        error_class=ErrorClass.AUTH,
        meaning="refused at the gate: credentials or permissions, never processed",
        source="RFC 9110 sections 15.5.2 and 15.5.4: request lacks valid credentials / refused",
    ),
    ErrorRule(
        match="HTTP 408",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="the server gave up waiting for the complete request",
        source="RFC 9110 section 15.5.9: the server did not receive a complete request; the client may repeat it",
    ),
    ErrorRule(
        match="other HTTP 4xx",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="the provider validated and refused it: the caller's fault, another provider will not help",
        source="RFC 9110 section 15.5: the client seems to have erred",
    ),
    ErrorRule(
        match="HTTP 5xx",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="the provider (or a proxy in front of it) failed at an unknown point, possibly after accepting",
        source=NO_SOURCE,
    ),
    ErrorRule(
        match="any 'maybe' on a read-only call (status query, probe, token)",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="a read moves no money: retrying it, here or elsewhere, cannot charge anyone",
        source="RFC 9110 section 9.2.1: safe (read-only) requests change nothing on the server",
    ),
)
"""The two module tables above as rules (classification itself is `classify_transport_error`
and `classify_http_status`)."""


def make_timeout(timeout_s: float, connect_timeout_s: float | None = None) -> httpx.Timeout:
    """An httpx timeout: `timeout_s` per phase (read, write, pool), connect capped at `connect_timeout_s`.

    These are wall-clock network timeouts. The injected `Clock` drives the engine's logic; a socket
    waits in real time whatever the clock says.
    """
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a finite number > 0, got {timeout_s}")
    connect = min(
        timeout_s, connect_timeout_s if connect_timeout_s is not None else DEFAULT_CONNECT_TIMEOUT_S
    )
    return httpx.Timeout(timeout_s, connect=connect)


def build_client(
    base_url: str,
    timeout_s: float,
    *,
    connect_timeout_s: float | None = None,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The adapters' `httpx.AsyncClient`: base URL, timeouts, JSON headers, no redirects.

    Redirects stay off: a payment POST that is redirected and replayed elsewhere is exactly the
    kind of surprise this layer exists to prevent.
    """
    return httpx.AsyncClient(
        base_url=base_url.rstrip("/"),
        timeout=make_timeout(timeout_s, connect_timeout_s),
        headers={"Accept": "application/json", **(headers or {})},
        follow_redirects=False,
        transport=transport,
    )


def classify_transport_error(exc: httpx.TransportError, *, mutating: bool) -> ErrorClass:
    """What a failure without an HTTP answer means (see the module table)."""
    if isinstance(exc, (*_NOT_SENT, httpx.LocalProtocolError)):
        return ErrorClass.NOT_PROCESSED
    return ErrorClass.AMBIGUOUS if mutating else ErrorClass.NOT_PROCESSED


def classify_http_status(status_code: int, *, mutating: bool) -> ErrorClass | None:
    """What an HTTP status means when the body says nothing more; `None` for success (< 400)."""
    if status_code < 400:
        return None
    if status_code == 429:
        return ErrorClass.RATE_LIMITED
    if status_code in (401, 403):
        return ErrorClass.AUTH
    if status_code == 408:
        return ErrorClass.NOT_PROCESSED
    if status_code < 500:
        return ErrorClass.INVALID_REQUEST
    return ErrorClass.AMBIGUOUS if mutating else ErrorClass.NOT_PROCESSED


def parse_retry_after(value: str | None, now_epoch_s: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - now_epoch_s
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The response body as a JSON object, or `{}` when it is not one (HTML error pages, empty bodies)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def short(text: object) -> str:
    """A provider-supplied text, stringified and cut to `MAX_DETAIL_CHARS`."""
    rendered = str(text)
    return rendered if len(rendered) <= MAX_DETAIL_CHARS else rendered[: MAX_DETAIL_CHARS - 1] + "…"


async def send(
    client: httpx.AsyncClient,
    provider: str,
    method: str,
    url: str,
    *,
    mutating: bool,
    what: str,
    json_body: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Send one request; a transport failure becomes a classified `ProviderError`.

    The error message names `what` was attempted and the exception type only: httpx messages do
    not carry headers, and no adapter puts a secret into a URL, so nothing secret can leak here.
    """
    try:
        return await client.request(method, url, json=json_body, params=params, headers=headers)
    except httpx.TransportError as exc:
        error_class = classify_transport_error(exc, mutating=mutating)
        detail = short(exc) if str(exc) else "no detail"
        raise ProviderError(
            provider, error_class, f"{what}: {type(exc).__name__} ({detail})", code=type(exc).__name__
        ) from exc


class HttpClientOwner:
    """The httpx client lifecycle every adapter shares: one lazily built client, a tunable timeout.

    Subclasses set `_client` (None) and `_timeout_s` in `__init__` and implement `_new_client`
    (base URL, headers, transport).
    """

    _client: httpx.AsyncClient | None
    _timeout_s: float

    @property
    def timeout_s(self) -> float:
        """The current per-phase network timeout."""
        return self._timeout_s

    def set_timeout(self, seconds: float) -> None:
        """Change the network timeout (the optimizer tunes it); applies to the next request."""
        timeout = make_timeout(seconds)
        self._timeout_s = seconds
        if self._client is not None:
            self._client.timeout = timeout

    async def close(self) -> None:
        """Release the HTTP client."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _new_client(self) -> httpx.AsyncClient:
        raise NotImplementedError

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = self._new_client()
        return self._client
