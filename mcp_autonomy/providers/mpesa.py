"""M-Pesa (Safaricom Daraja) adapter: STK push collections, B2C payouts, reversals.

Daraja facts this module is built on (Daraja 3.0 portal documentation and its error tables):

- Auth: `GET /oauth/v1/generate?grant_type=client_credentials` with `Basic key:secret` answers
  `{access_token, expires_in}` (about an hour; `expires_in` arrives as a string or a number).
  The token is cached and refreshed `token_refresh_margin_s` before it expires, through the
  injected clock, under a lock: the portal warns that minting a token can invalidate the
  previous one, so concurrent callers must never mint in parallel.
- Errors come as `{requestId, errorCode, errorMessage}`, and the code, not the HTTP status,
  says what happened: `404.001.03` invalid token (HTTP 404 per the docs), `400.002.02` bad
  field, `500.003.02` spike arrest and `500.003.03` quota (HTTP 500), `500.001.1001` is
  "wrong credentials", "merchant does not exist", "unable to lock subscriber" on a push, and
  "the transaction is being processed" on a query. Outcomes also arrive inside HTTP 200 bodies
  (`ResponseCode`, `ResultCode`).
- STK push `POST /mpesa/stkpush/v1/processrequest` (Password = base64(shortcode + passkey +
  timestamp), timestamp `YYYYMMDDHHmmss`, AccountReference <= 12 chars) answers a
  `CheckoutRequestID`; the result comes by callback (`Body.stkCallback`, numeric ResultCode,
  receipt only on success) or by polling `POST /mpesa/stkpushquery/v1/query` (string ResultCode).
  Daraja has no idempotency key for STK: a push that timed out has no CheckoutRequestID to query,
  so its outcome is known only from the callback. The callback URL therefore carries our
  reference as its last path segment (`MPESA_CALLBACK_URL/<reference>`).
- B2C `POST /mpesa/b2c/v3/paymentrequest` dedupes on `OriginatorConversationID` (a repeat is
  refused with `500.002.1001` "Duplicate OriginatorConversationID."), so a payout retried with
  the same reference can never pay twice; the result arrives only at `ResultURL`.
- Reversal `POST /mpesa/reversal/v1/request` (CommandID TransactionReversal, receiver identifier
  type 11, the receipt as TransactionID) reverses an STK collection; result at `ResultURL`.

Callbacks reach this adapter through `ingest_callback()`, which the server's callback routes call.
Result codes: 0 success; 1 insufficient funds, 17 rule limited, 1032 cancelled by the user,
1037 no answer from the handset, 2001 wrong PIN or initiator ... are failures with that code.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import anyio
import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.base import (
    NOT_FOUND_CODE,
    ErrorClass,
    Money,
    Operation,
    PaymentRequest,
    ProbeResult,
    ProviderCapabilities,
    ProviderError,
    ProviderTransaction,
    TransactionStatus,
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

PROVIDER = "mpesa"
EAT = timezone(timedelta(hours=3), "EAT")
"""Daraja timestamps are Nairobi local time."""

STK_MIN_KES = 1
STK_MAX_KES = 250_000
B2C_MIN_KES = 10
B2C_MAX_KES = 250_000
KENYAN_MSISDN_RE = re.compile(r"^\+254(7|1)\d{8}$")
REFERENCE_LENGTH = 12
"""AccountReference is at most 12 characters; 12 base-36 characters carry 62 bits of the key's hash."""
MAX_REMEMBERED = 100_000
"""Per-map cap on remembered references and callback results (oldest forgotten first)."""

TOKEN_REJECTED_CODES = frozenset({"404.001.03", "401.003.01", "401.002.01"})
"""Token invalid or expired: refused at the gateway, so one retry with a fresh token is safe."""
AUTH_ERROR_CODES = TOKEN_REJECTED_CODES | {"404.001.04", "400.008.01"}
RATE_LIMIT_ERROR_CODES = frozenset({"500.003.02", "500.003.03"})
INVALID_ERROR_CODES = frozenset(
    {"400.002.02", "400.002.01", "400.002.05", "400.003.02", "400.008.02", "404.001.01", "405.001"}
)
STK_PENDING_ERROR = "500.001.1001"
DUPLICATE_ERROR = "500.002.1001"
STK_PENDING_RESULT_CODES = frozenset({"4999"})
"""Integrators report ResultCode 4999 "still under processing" on STK queries: not final yet."""
SUCCESS_CODE = "0"


class MpesaSettings(BaseSettings):
    """Daraja credentials and endpoints, from `MPESA_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="MPESA_", env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    consumer_key: SecretStr
    consumer_secret: SecretStr
    shortcode: str = Field(pattern=r"^\d{5,7}$", description="BusinessShortCode (paybill or HO number)")
    passkey: SecretStr
    base_url: str = "https://sandbox.safaricom.co.ke"
    callback_url: str | None = Field(None, description="STK callbacks: <callback_url>/<reference>")
    transaction_type: Literal["CustomerPayBillOnline", "CustomerBuyGoodsOnline"] = "CustomerPayBillOnline"
    till_number: str | None = Field(None, pattern=r"^\d{5,8}$", description="PartyB for Buy Goods")
    b2c_shortcode: str | None = Field(None, pattern=r"^\d{5,7}$", description="B2C PartyA; default shortcode")
    initiator_name: str | None = None
    security_credential: SecretStr | None = Field(None, description="Initiator password, RSA-encrypted")
    result_url: str | None = Field(None, description="B2C and reversal results: <result_url>/<reference>")
    queue_timeout_url: str | None = None
    b2c_command_id: Literal["BusinessPayment", "SalaryPayment", "PromotionPayment"] = "BusinessPayment"
    timeout_s: float = Field(15.0, ge=0.5, le=120.0)
    token_refresh_margin_s: float = Field(60.0, ge=0.0, le=1800.0)
    probe_min_interval_s: float = Field(30.0, ge=0.0, le=3600.0)


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at_s: float  # clock.monotonic() time after which Daraja refuses it


class _Recent(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries beyond `MAX_REMEMBERED` (bounded memory for long runs)."""

    def remember(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_REMEMBERED:
            self.popitem(last=False)


def _base36(value: int, width: int) -> str:
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = []
    for _ in range(width):
        value, rest = divmod(value, 36)
        out.append(digits[rest])
    return "".join(reversed(out))


def _whole_shillings(money: Money, minimum: int, maximum: int) -> int:
    if money.currency != "KES":
        raise ProviderError(
            PROVIDER, ErrorClass.INVALID_REQUEST, f"M-Pesa moves KES only, not {money.currency}"
        )
    shillings, cents = divmod(money.amount_minor, 100)
    if cents:
        raise ProviderError(
            PROVIDER,
            ErrorClass.INVALID_REQUEST,
            f"M-Pesa takes whole shillings; {money.amount_minor} cents is not",
        )
    if not minimum <= shillings <= maximum:
        raise ProviderError(
            PROVIDER, ErrorClass.INVALID_REQUEST, f"amount KES {shillings} outside {minimum}..{maximum}"
        )
    return shillings


def _msisdn(phone: str) -> str:
    if not KENYAN_MSISDN_RE.match(phone):
        raise ProviderError(
            PROVIDER, ErrorClass.INVALID_REQUEST, "M-Pesa needs a Kenyan mobile number (+2547... or +2541...)"
        )
    return phone[1:]


def _items(container: Any, key: str) -> dict[str, Any]:
    """Daraja's `{Item: [{Name, Value}]}` / `{ResultParameter: [{Key, Value}]}` lists as a dict."""
    if not isinstance(container, Mapping):
        return {}
    raw = container.get(key)
    rows = raw if isinstance(raw, list) else [raw] if isinstance(raw, Mapping) else []
    out: dict[str, Any] = {}
    for row in rows:
        if isinstance(row, Mapping):
            name = row.get("Name", row.get("Key"))
            if isinstance(name, str):
                out[name] = row.get("Value")
    return out


class MpesaAdapter(HttpClientOwner):
    """Speaks Daraja: OAuth token cache, STK push and query, B2C, reversal, callbacks."""

    name = PROVIDER
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT, Operation.PAYOUT, Operation.REFUND}),
        currencies=frozenset({"KES"}),
        countries=frozenset({"KE"}),
        refunds=True,
    )

    def __init__(
        self,
        settings: MpesaSettings,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        settings_loader: Callable[[], MpesaSettings] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._timeout_s = timeout_s if timeout_s is not None else settings.timeout_s
        make_timeout(self._timeout_s)  # validate now, not on the first payment
        self._settings_loader = settings_loader
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._token: _Token | None = None
        self._token_lock = anyio.Lock()
        self._last_probe: tuple[float, ProbeResult] | None = None
        # What this process learned about its own payments; callbacks are the source of truth
        # for outcomes Daraja reports only asynchronously.
        self._checkouts = _Recent()  # reference -> CheckoutRequestID
        self._checkout_refs = _Recent()  # CheckoutRequestID -> reference
        self._money = _Recent()  # reference -> Money
        self._payouts = _Recent()  # reference (OriginatorConversationID) -> ConversationID | None
        self._conversations = _Recent()  # ConversationID -> ("payout" | "reversal", reference)
        self._receipts = _Recent()  # reference -> MpesaReceiptNumber
        self._results = _Recent()  # reference -> final ProviderTransaction from a callback

    # --- identity and tuning -------------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """Our reference for a payment: 12 base-36 characters of the key's SHA-256.

        Deterministic, so a retry of the same key reuses the same B2C OriginatorConversationID
        (which Daraja dedupes) and the same callback path. It doubles as the STK AccountReference.
        """
        digest = int.from_bytes(hashlib.sha256(idempotency_key.encode()).digest()[:16], "big")
        return _base36(digest, REFERENCE_LENGTH)

    # --- lifecycle -----------------------------------------------------------------------

    async def initialize(self) -> None:
        """A fresh HTTP client and a fresh token."""
        self._last_probe = None  # a re-initialised adapter is probed afresh, never from the cache
        await self.close()
        self._client = self._new_client()
        await self.refresh_credentials()

    async def refresh_credentials(self) -> None:
        """Reload settings (when a loader was given), drop the token, fetch a new one."""
        if self._settings_loader is not None:
            self._settings = self._settings_loader()
        self._token = None
        await self._access_token()

    def _new_client(self) -> httpx.AsyncClient:
        return build_client(self._settings.base_url, self._timeout_s, transport=self._transport)

    # --- auth ----------------------------------------------------------------------------

    async def _access_token(self) -> str:
        token = self._token
        if token is not None and self._clock.monotonic() < token.expires_at_s:
            return token.value
        async with self._token_lock:
            # Another caller may have refreshed while this one waited for the lock.
            token = self._token
            if token is not None and self._clock.monotonic() < token.expires_at_s:
                return token.value
            self._token = await self._fetch_token()
            return self._token.value

    async def _fetch_token(self) -> _Token:
        pair = f"{self._settings.consumer_key.get_secret_value()}:{self._settings.consumer_secret.get_secret_value()}"
        basic = base64.b64encode(pair.encode()).decode()
        response = await send(
            self._http(),
            PROVIDER,
            "GET",
            "/oauth/v1/generate",
            mutating=False,
            what="token",
            params={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {basic}"},
        )
        body = json_object(response)
        if response.status_code >= 400:
            raise self._error(response, body, mutating=False, what="token")
        value = body.get("access_token")
        try:
            lifetime_s = float(body.get("expires_in", ""))
        except (TypeError, ValueError):
            lifetime_s = -1.0
        if not isinstance(value, str) or not value or lifetime_s <= 0:
            raise ProviderError(PROVIDER, ErrorClass.NOT_PROCESSED, "token: malformed OAuth answer")
        # Refresh early, but never so early that a short-lived token is refreshed on every call.
        margin_s = min(self._settings.token_refresh_margin_s, lifetime_s / 10)
        return _Token(value, self._clock.monotonic() + lifetime_s - margin_s)

    def _drop_token(self, rejected: str) -> None:
        if self._token is not None and self._token.value == rejected:
            self._token = None

    async def _post(
        self, path: str, payload: dict[str, Any], *, mutating: bool, what: str
    ) -> tuple[httpx.Response, dict[str, Any]]:
        """POST with the bearer token; a rejected token is replaced once and the call resent.

        Resending is safe: an invalid-token answer comes from the gateway, before M-Pesa saw it.
        """
        for attempt in (1, 2):
            token = await self._access_token()
            response = await send(
                self._http(),
                PROVIDER,
                "POST",
                path,
                mutating=mutating,
                what=what,
                json_body=payload,
                headers={"Authorization": f"Bearer {token}"},
            )
            body = json_object(response)
            if attempt == 1 and (
                str(body.get("errorCode", "")) in TOKEN_REJECTED_CODES or response.status_code == 401
            ):
                self._drop_token(token)
                continue
            return response, body
        raise AssertionError("unreachable")  # pragma: no cover

    # --- error classification ------------------------------------------------------------

    def _error(
        self, response: httpx.Response, body: dict[str, Any], *, mutating: bool, what: str
    ) -> ProviderError:
        """Classify a Daraja failure by its errorCode first, the HTTP status last."""
        code = str(body.get("errorCode") or body.get("ResponseCode") or "") or None
        message = str(body.get("errorMessage") or body.get("ResponseDescription") or "")
        fault = body.get("fault")
        if not message and isinstance(fault, Mapping):  # Apigee's own error shape at the edge
            message = str(fault.get("faultstring", ""))
            detail = fault.get("detail")
            if isinstance(detail, Mapping) and not code:
                code = str(detail.get("errorcode", "")) or None
        lowered = message.lower()
        retry_after = parse_retry_after(response.headers.get("Retry-After"), self._clock.now())
        error_class: ErrorClass | None
        if code in AUTH_ERROR_CODES:
            error_class = ErrorClass.AUTH
        elif code in RATE_LIMIT_ERROR_CODES or (code and ("SpikeArrest" in code or "Quota" in code)):
            error_class = ErrorClass.RATE_LIMITED
        elif code in INVALID_ERROR_CODES:
            error_class = ErrorClass.INVALID_REQUEST
        elif code == STK_PENDING_ERROR and (
            "wrong credentials" in lowered or "merchant does not exist" in lowered
        ):
            # Passkey or shortcode misconfigured: refused before processing, another provider may work.
            error_class = ErrorClass.AUTH
        elif code == STK_PENDING_ERROR and "lock subscriber" in lowered:
            # The customer has another M-Pesa session in flight: this push was not sent.
            error_class = ErrorClass.NOT_PROCESSED
        elif response.status_code < 400:
            # HTTP 200 with a non-zero ResponseCode: refused at submission, nothing was started.
            error_class = ErrorClass.NOT_PROCESSED
        else:
            error_class = classify_http_status(response.status_code, mutating=mutating)
        if error_class is None:  # pragma: no cover - < 400 is handled above
            error_class = ErrorClass.AMBIGUOUS if mutating else ErrorClass.NOT_PROCESSED
        return ProviderError(
            PROVIDER,
            error_class,
            f"{what}: {short(message) if message else f'HTTP {response.status_code}'}",
            code=code,
            http_status=response.status_code,
            retry_after_s=retry_after,
        )

    # --- probe ---------------------------------------------------------------------------

    async def probe(self) -> ProbeResult:
        """A token fetch, at most once per `probe_min_interval_s` (Daraja meters token calls).

        Within the interval the last successful probe is returned, marked cached. The fetched
        token becomes the adapter's token, so probing never leaves a stale one behind.
        """
        now = self._clock.monotonic()
        if self._last_probe is not None and now - self._last_probe[0] < self._settings.probe_min_interval_s:
            cached = self._last_probe[1]
            return cached.model_copy(update={"detail": f"{cached.detail} (cached)"})
        started = time.perf_counter()
        async with self._token_lock:
            self._token = await self._fetch_token()
        result = ProbeResult(
            ok=True, latency_ms=(time.perf_counter() - started) * 1000, detail="oauth token issued"
        )
        self._last_probe = (now, result)
        return result

    # --- collect -------------------------------------------------------------------------

    def _password(self, timestamp: str) -> str:
        raw = f"{self._settings.shortcode}{self._settings.passkey.get_secret_value()}{timestamp}"
        return base64.b64encode(raw.encode()).decode()

    def _timestamp(self) -> str:
        return datetime.fromtimestamp(self._clock.now(), tz=UTC).astimezone(EAT).strftime("%Y%m%d%H%M%S")

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        """STK push: the customer gets a PIN prompt; the result is pending until they act."""
        shillings = _whole_shillings(request.money, STK_MIN_KES, STK_MAX_KES)
        phone = _msisdn(request.phone)
        if not self._settings.callback_url:
            raise ProviderError(
                PROVIDER, ErrorClass.NOT_PROCESSED, "collect: MPESA_CALLBACK_URL is not configured"
            )
        reference = self.reference_for(request.idempotency_key)
        timestamp = self._timestamp()
        payload = {
            "BusinessShortCode": self._settings.shortcode,
            "Password": self._password(timestamp),
            "Timestamp": timestamp,
            "TransactionType": self._settings.transaction_type,
            "Amount": shillings,
            "PartyA": phone,
            "PartyB": self._settings.till_number or self._settings.shortcode,
            "PhoneNumber": phone,
            "CallBackURL": f"{self._settings.callback_url.rstrip('/')}/{reference}",
            "AccountReference": reference,
            # TransactionDesc is at most 13 characters.
            "TransactionDesc": (request.description or "payment")[:13],
        }
        self._money.remember(reference, request.money)
        response, body = await self._post(
            "/mpesa/stkpush/v1/processrequest", payload, mutating=True, what="stk push"
        )
        if response.status_code >= 400 or str(body.get("ResponseCode", "")) != SUCCESS_CODE:
            raise self._error(response, body, mutating=True, what="stk push")
        checkout_id = body.get("CheckoutRequestID")
        if not isinstance(checkout_id, str) or not checkout_id:
            # Accepted (ResponseCode 0) but unusable: the push may be on the customer's phone.
            raise ProviderError(
                PROVIDER, ErrorClass.AMBIGUOUS, "stk push: accepted without a CheckoutRequestID"
            )
        self._checkouts.remember(reference, checkout_id)
        self._checkout_refs.remember(checkout_id, reference)
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=checkout_id,
            status=TransactionStatus.PENDING,
            money=request.money,
            provider_code=SUCCESS_CODE,
            provider_message=short(body.get("CustomerMessage") or body.get("ResponseDescription") or ""),
            raw_status="accepted",
            raw=body,
        )

    # --- payout --------------------------------------------------------------------------

    def _require_initiator(self, what: str) -> tuple[str, str, str]:
        settings = self._settings
        if not (settings.initiator_name and settings.security_credential and settings.result_url):
            raise ProviderError(
                PROVIDER,
                ErrorClass.NOT_PROCESSED,
                f"{what}: MPESA_INITIATOR_NAME, MPESA_SECURITY_CREDENTIAL and MPESA_RESULT_URL must be configured",
            )
        return settings.initiator_name, settings.security_credential.get_secret_value(), settings.result_url

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        """B2C payment. Idempotent per key: a repeat is refused by Daraja as a duplicate."""
        shillings = _whole_shillings(request.money, B2C_MIN_KES, B2C_MAX_KES)
        phone = _msisdn(request.phone)
        initiator, credential, result_url = self._require_initiator("payout")
        reference = self.reference_for(request.idempotency_key)
        result_target = f"{result_url.rstrip('/')}/{reference}"
        payload = {
            "OriginatorConversationID": reference,
            "InitiatorName": initiator,
            "SecurityCredential": credential,
            "CommandID": self._settings.b2c_command_id,
            "Amount": shillings,
            "PartyA": self._settings.b2c_shortcode or self._settings.shortcode,
            "PartyB": phone,
            "Remarks": (request.description or "payout")[:100].ljust(2, "."),
            "QueueTimeOutURL": self._settings.queue_timeout_url or result_target,
            "ResultURL": result_target,
            "Occassion": reference,  # sic: Daraja's field name
        }
        self._money.remember(reference, request.money)
        response, body = await self._post("/mpesa/b2c/v3/paymentrequest", payload, mutating=True, what="b2c")
        code = str(body.get("errorCode", ""))
        if code == DUPLICATE_ERROR and "duplicate" in str(body.get("errorMessage", "")).lower():
            # Daraja already holds a request under this OriginatorConversationID: an earlier
            # attempt got through. Report it as the accepted payout it is; never pay twice.
            known = self._results.get(reference)
            if isinstance(known, ProviderTransaction):
                return known
            return ProviderTransaction(
                provider=PROVIDER,
                reference=reference,
                provider_reference=self._payouts.get(reference),
                status=TransactionStatus.PENDING,
                money=request.money,
                provider_code=DUPLICATE_ERROR,
                provider_message="already accepted earlier under this OriginatorConversationID",
                raw_status="duplicate",
                raw=body,
            )
        if response.status_code >= 400 or str(body.get("ResponseCode", "")) != SUCCESS_CODE:
            raise self._error(response, body, mutating=True, what="b2c")
        conversation_id = body.get("ConversationID")
        conversation = conversation_id if isinstance(conversation_id, str) and conversation_id else None
        self._payouts.remember(reference, conversation)
        if conversation:
            self._conversations.remember(conversation, ("payout", reference))
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=conversation,
            status=TransactionStatus.PENDING,
            money=request.money,
            provider_code=SUCCESS_CODE,
            provider_message=short(body.get("ResponseDescription") or ""),
            raw_status="accepted",
            raw=body,
        )

    # --- status --------------------------------------------------------------------------

    async def status(self, reference: str, provider_reference: str | None = None) -> ProviderTransaction:
        """Where a payment stands.

        A final outcome from a callback wins. An STK push with a known CheckoutRequestID is
        queried (`500.001.1001` "being processed" means pending). A payout, or a push whose answer
        never arrived, can only be learnt from its callback: until then the answer is `pending`
        (accepted) or `unknown` (we cannot tell whether Daraja got it) - never a guess.
        Raises `ProviderError(code="not_found")` when Daraja does not know the CheckoutRequestID.
        """
        known = self._results.get(reference)
        if known is None and provider_reference is not None:
            ref_of_checkout = self._checkout_refs.get(provider_reference)
            known = self._results.get(ref_of_checkout) if ref_of_checkout else None
        if isinstance(known, ProviderTransaction):
            return known
        is_payout = reference in self._payouts or (provider_reference or "").startswith("AG_")
        checkout_id = None if is_payout else provider_reference or self._checkouts.get(reference)
        if checkout_id:
            return await self._query_stk(reference, checkout_id)
        accepted = reference in self._payouts
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=provider_reference or self._payouts.get(reference),
            status=TransactionStatus.PENDING if accepted else TransactionStatus.UNKNOWN,
            money=self._money.get(reference),
            provider_message=(
                "accepted; Daraja reports the result only to the ResultURL"
                if accepted
                else "no CheckoutRequestID known: the outcome arrives only by callback"
            ),
            raw_status="awaiting_callback",
        )

    async def _query_stk(self, reference: str, checkout_id: str) -> ProviderTransaction:
        timestamp = self._timestamp()
        payload = {
            "BusinessShortCode": self._settings.shortcode,
            "Password": self._password(timestamp),
            "Timestamp": timestamp,
            "CheckoutRequestID": checkout_id,
        }
        response, body = await self._post(
            "/mpesa/stkpushquery/v1/query", payload, mutating=False, what="stk query"
        )
        code = str(body.get("errorCode", ""))
        message = str(body.get("errorMessage", ""))
        base = {"provider": PROVIDER, "reference": reference, "provider_reference": checkout_id, "raw": body}
        if code == STK_PENDING_ERROR and "being processed" in message.lower():
            return ProviderTransaction(
                **base,
                status=TransactionStatus.PENDING,
                money=self._money.get(reference),
                provider_code=code,
                provider_message=short(message),
                raw_status="processing",
            )
        if code == "400.002.02" and "checkoutrequestid" in message.lower():
            raise ProviderError(
                PROVIDER, ErrorClass.NOT_PROCESSED, f"stk query: {short(message)}", code=NOT_FOUND_CODE
            )
        if response.status_code >= 400 or "ResultCode" not in body:
            raise self._error(response, body, mutating=False, what="stk query")
        result_code = str(body.get("ResultCode"))
        if result_code == SUCCESS_CODE:
            status = TransactionStatus.SUCCEEDED
        elif result_code in STK_PENDING_RESULT_CODES:
            status = TransactionStatus.PENDING
        else:
            status = TransactionStatus.FAILED
        return ProviderTransaction(
            **base,
            status=status,
            money=self._money.get(reference),
            provider_code=result_code,
            provider_message=short(body.get("ResultDesc", "")),
            raw_status=f"ResultCode {result_code}",
        )

    # --- refund --------------------------------------------------------------------------

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Reverse a succeeded STK collection (Daraja Reversal API; full amount only).

        Needs the M-Pesa receipt, which Daraja sends only in the success callback. The answer is
        `pending`; the reversal's result arrives at `ResultURL` (see `ingest_callback`).
        """
        if transaction.status is not TransactionStatus.SUCCEEDED:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only a succeeded collection")
        original = transaction.money or self._money.get(transaction.reference)
        if not isinstance(original, Money):
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, "refund: the original amount is unknown"
            )
        if money is not None and money != original:
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, "refund: M-Pesa reversals are for the full amount only"
            )
        receipt = self._receipts.get(transaction.reference) or transaction.raw.get("MpesaReceiptNumber")
        if not isinstance(receipt, str) or not receipt:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                "refund: no M-Pesa receipt known (it arrives with the STK success callback)",
            )
        initiator, credential, result_url = self._require_initiator("refund")
        result_target = f"{result_url.rstrip('/')}/{transaction.reference}"
        payload = {
            "Initiator": initiator,
            "SecurityCredential": credential,
            "CommandID": "TransactionReversal",
            "TransactionID": receipt,
            "Amount": _whole_shillings(original, STK_MIN_KES, STK_MAX_KES),
            "ReceiverParty": self._settings.shortcode,
            "RecieverIdentifierType": "11",  # sic: Daraja's field name; 11 = organisation
            "ResultURL": result_target,
            "QueueTimeOutURL": self._settings.queue_timeout_url or result_target,
            "Remarks": "refund",
            "Occasion": transaction.reference,
        }
        response, body = await self._post(
            "/mpesa/reversal/v1/request", payload, mutating=True, what="reversal"
        )
        if response.status_code >= 400 or str(body.get("ResponseCode", "")) != SUCCESS_CODE:
            raise self._error(response, body, mutating=True, what="reversal")
        conversation_id = str(body.get("ConversationID") or "") or None
        if conversation_id:
            self._conversations.remember(conversation_id, ("reversal", transaction.reference))
        return ProviderTransaction(
            provider=PROVIDER,
            reference=transaction.reference,
            provider_reference=conversation_id,
            status=TransactionStatus.PENDING,
            money=original,
            provider_code=SUCCESS_CODE,
            provider_message=short(body.get("ResponseDescription") or ""),
            raw_status="reversal_accepted",
            raw=body,
        )

    # --- callbacks -----------------------------------------------------------------------

    def ingest_callback(
        self, body: Mapping[str, Any], *, reference: str | None = None
    ) -> ProviderTransaction:
        """Fold one Daraja callback in and return what it says.

        Accepts the STK shape (`Body.stkCallback`) and the result shape of B2C and reversals
        (`Result`). `reference` is the last path segment of the callback URL this adapter chose.

        Raises:
            ValueError: the body is neither shape.
        """
        stk = body.get("Body", {}).get("stkCallback") if isinstance(body.get("Body"), Mapping) else None
        if isinstance(stk, Mapping):
            return self._ingest_stk(stk, reference)
        result = body.get("Result")
        if isinstance(result, Mapping):
            return self._ingest_result(result, reference)
        raise ValueError("not a Daraja callback: expected Body.stkCallback or Result")

    def _ingest_stk(self, stk: Mapping[str, Any], reference: str | None) -> ProviderTransaction:
        checkout_id = str(stk.get("CheckoutRequestID", ""))
        ref = reference or self._checkout_refs.get(checkout_id) or checkout_id
        result_code = str(stk.get("ResultCode", ""))
        metadata = _items(stk.get("CallbackMetadata"), "Item")
        receipt = metadata.get("MpesaReceiptNumber")
        if isinstance(receipt, str) and receipt:
            self._receipts.remember(ref, receipt)
        if checkout_id:
            self._checkouts.remember(ref, checkout_id)
            self._checkout_refs.remember(checkout_id, ref)
        money = self._money.get(ref)
        amount = metadata.get("Amount")
        if money is None and isinstance(amount, int | float) and amount > 0:
            money = Money(amount_minor=round(amount * 100), currency="KES")
        txn = ProviderTransaction(
            provider=PROVIDER,
            reference=ref,
            provider_reference=checkout_id or None,
            status=TransactionStatus.SUCCEEDED if result_code == SUCCESS_CODE else TransactionStatus.FAILED,
            money=money,
            provider_code=result_code,
            provider_message=short(stk.get("ResultDesc", "")),
            raw_status=f"ResultCode {result_code}",
            raw={"MpesaReceiptNumber": receipt} if receipt else {},
        )
        self._results.remember(ref, txn)
        return txn

    def _ingest_result(self, result: Mapping[str, Any], reference: str | None) -> ProviderTransaction:
        conversation_id = str(result.get("ConversationID", ""))
        originator_id = str(result.get("OriginatorConversationID", ""))
        result_code = str(result.get("ResultCode", ""))
        parameters = _items(result.get("ResultParameters"), "ResultParameter")
        kind, ref = self._conversations.get(conversation_id, (None, None))
        if kind is None:
            is_reversal = "OriginalTransactionID" in parameters
            kind = "reversal" if is_reversal else "payout"
            ref = reference or (originator_id if kind == "payout" else None) or conversation_id
        assert isinstance(ref, str)
        ok = result_code == SUCCESS_CODE
        if kind == "reversal":
            txn = ProviderTransaction(
                provider=PROVIDER,
                reference=ref,
                provider_reference=conversation_id or None,
                status=TransactionStatus.REVERSED if ok else TransactionStatus.FAILED,
                money=self._money.get(ref),
                provider_code=result_code,
                provider_message=short(result.get("ResultDesc", "")),
                raw_status=f"reversal ResultCode {result_code}",
            )
            if ok:  # the collection itself is now reversed; a failed reversal leaves it as it was
                self._results.remember(ref, txn)
            return txn
        receipt = parameters.get("TransactionReceipt") or result.get("TransactionID")
        txn = ProviderTransaction(
            provider=PROVIDER,
            reference=ref,
            provider_reference=conversation_id or self._payouts.get(ref),
            status=TransactionStatus.SUCCEEDED if ok else TransactionStatus.FAILED,
            money=self._money.get(ref),
            provider_code=result_code,
            provider_message=short(result.get("ResultDesc", "")),
            raw_status=f"b2c ResultCode {result_code}",
            raw={"TransactionReceipt": receipt} if ok and receipt else {},
        )
        self._results.remember(ref, txn)
        return txn
