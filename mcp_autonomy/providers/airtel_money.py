"""Airtel Money (Airtel Africa Open API) adapter: USSD-push collections, enquiry, refunds, disbursements.

Facts this module is built on (Airtel's developer portal pages as quoted by integrators, the
UNICEF/510 "121 platform" Airtel integration and its mock, and the published code tables):

- Auth: `POST /auth/oauth2/token` with JSON `{client_id, client_secret, grant_type:
  "client_credentials"}` -> `{access_token, expires_in: "180", token_type: "bearer"}`: tokens
  live three minutes, so they are cached on the injected clock and refreshed early. Wrong
  credentials -> `{error: "invalid_client", error_description: "Invalid client
  authentication"}`; a rejected token -> `{error: "invalid_token", error_description: "The
  access token is invalid or has expired"}` (401/403).
- Every call carries `X-Country` and `X-Currency`; msisdns go *without* the country code.
- Collection: `POST /merchant/v2/payments/` `{reference, subscriber: {country, currency, msisdn},
  transaction: {amount, country, currency, id}}` where `transaction.id` is the partner's own id
  (alphanumeric: a hyphen breaks the later enquiry). Answers arrive inside HTTP 200 bodies:
  `status: {code, message, result_code, response_code, success}`; `DP00800001006` "in process"
  means the push reached the customer. Result codes: ESB000010 ok, ESB000008 field validation,
  ESB000033/35/36 bad msisdn/currency, ESB000039 vendor not configured for the country,
  ESB000041 "External Transaction ID already exists", ESB000045 no transaction with that id.
- Enquiry: `GET /standard/v1/payments/{id}` -> `data.transaction.status` TS (success), TF
  (failed), TIP (in progress) and **TA: ambiguous** - Airtel itself does not know yet; it is
  *not* pending and *not* failed, so it maps to `unknown` and must be re-queried, never retried.
  Response codes DP00800001000 ambiguous, ...001 success, ...002 wrong PIN, ...003 limit,
  ...004 invalid amount, ...005 no PIN entered, ...006 in process, ...007 no balance,
  ...008 refused, ...010 payee barred, ...024 timed out, ...025 not found (also "too early").
- Refund: `POST /standard/v1/payments/refund` `{transaction: {airtel_money_id}}` (full amount).
- Disbursement: `POST /standard/v2/disbursements/` `{payee: {msisdn, wallet_type}, reference,
  pin, transaction: {amount, id, type: "B2C"}}` where `pin` is the disbursement PIN
  RSA-encrypted (PKCS#1 v1.5) with Airtel's public key, base64. Enquiry
  `GET /standard/v2/disbursements/{id}?transactionType=B2C`; codes DP00900001001 success,
  ...000 ambiguous, ...006 in process, ...011 duplicate, ...015 not found.
- Probe: `GET /standard/v1/users/balance` (read-only).

Not implemented: v2 message signing (`x-signature`/`x-key`, only for merchants who enabled it).
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import anyio
import httpx
from pydantic import Field, SecretStr, field_validator
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

PROVIDER = "airtel_money"
Kind = Literal["collection", "disbursement"]

MARKETS: dict[str, tuple[str, str]] = {
    "UG": ("UGX", "256"),
    "KE": ("KES", "254"),
    "TZ": ("TZS", "255"),
    "RW": ("RWF", "250"),
    "ZM": ("ZMW", "260"),
    "MW": ("MWK", "265"),
    "NG": ("NGN", "234"),
    "CD": ("CDF", "243"),
    "CG": ("XAF", "242"),
    "GA": ("XAF", "241"),
    "TD": ("XAF", "235"),
    "NE": ("XOF", "227"),
    "MG": ("MGA", "261"),
    "SC": ("SCR", "248"),
}
"""Airtel Money markets: country -> (currency, dial code)."""
MINOR_UNIT_EXPONENTS = {"UGX": 0, "RWF": 0, "XAF": 0, "XOF": 0}
REFERENCE_LENGTH = 20
MAX_REMEMBERED = 100_000

TRANSACTION_STATUS = {
    "TS": TransactionStatus.SUCCEEDED,
    "TF": TransactionStatus.FAILED,
    "TE": TransactionStatus.FAILED,  # expired
    "TIP": TransactionStatus.PENDING,
    "TA": TransactionStatus.UNKNOWN,  # ambiguous: Airtel does not know yet; query again later
}
COLLECTION_IN_PROCESS = "DP00800001006"
COLLECTION_SUCCESS = "DP00800001001"
COLLECTION_AMBIGUOUS = "DP00800001000"
COLLECTION_NOT_FOUND = "DP00800001025"
DISBURSEMENT_SUCCESS = "DP00900001001"
DISBURSEMENT_AMBIGUOUS = "DP00900001000"
DISBURSEMENT_IN_PROCESS = "DP00900001006"
DISBURSEMENT_DUPLICATE = "DP00900001011"
DISBURSEMENT_NOT_FOUND = "DP00900001015"
ESB_OK = "ESB000010"
ESB_DUPLICATE = "ESB000041"
ESB_NOT_FOUND = "ESB000045"
NOT_PROCESSED_CODES = frozenset({"ESB000039", "ROUTER001", "ROUTER005", "ROUTER007"})
"""Refused for the route (vendor or country not configured): another provider may carry it."""
INVALID_DISBURSEMENT_CODES = frozenset({"DP00900001004", "DP00900001013"})


class AirtelMoneySettings(BaseSettings):
    """Airtel Money credentials and endpoint, from `AIRTEL_MONEY_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="AIRTEL_MONEY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    client_id: str
    client_secret: SecretStr
    base_url: str = Field(
        "https://openapiuat.airtel.africa", description="production: https://openapi.airtel.africa"
    )
    countries: list[str] = Field(
        default_factory=lambda: ["UG", "KE", "TZ", "RW", "ZM", "MW"],
        description="the countries this merchant is configured for (the first is the default route)",
    )
    disbursement_pin: SecretStr | None = Field(None, description="the disbursement wallet's PIN (4 digits)")
    pin_public_key: SecretStr | None = Field(
        None, description="Airtel's RSA public key for PIN encryption (base64 DER or PEM)"
    )
    timeout_s: float = Field(15.0, ge=0.5, le=120.0)
    token_refresh_margin_s: float = Field(30.0, ge=0.0, le=600.0)
    not_found_grace_s: float = Field(
        120.0, ge=0.0, le=3600.0, description="a 'not found' this soon after our own send means 'too early'"
    )
    probe_min_interval_s: float = Field(30.0, ge=0.0, le=3600.0)

    @field_validator("countries")
    @classmethod
    def _known_countries(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in MARKETS]
        if not value or unknown:
            raise ValueError(f"AIRTEL_MONEY_COUNTRIES must be some of {', '.join(MARKETS)} (got {value})")
        return value


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at_s: float


@dataclass
class _Sent:
    """What this process sent under one reference."""

    kind: Kind
    country: str
    money: Money
    sent_at_s: float


class _Recent(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries beyond `MAX_REMEMBERED`."""

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


def amount_value(money: Money) -> int | float:
    """Airtel's JSON amount in major units (an integer whenever it is whole)."""
    exponent = MINOR_UNIT_EXPONENTS.get(money.currency, 2)
    whole, part = divmod(money.amount_minor, 10**exponent)
    return whole if part == 0 else float(Decimal(money.amount_minor) / (10**exponent))


def encrypt_pin(pin: str, public_key: str) -> str:
    """The PIN RSA-encrypted (PKCS#1 v1.5) with Airtel's public key, base64 - as Airtel asks.

    Raises:
        NotImplementedError: the `cryptography` package is not installed.
        ValueError: the key is not an RSA public key.
    """
    try:
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
        from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
    except ImportError as exc:  # pragma: no cover - cryptography is present in this environment
        raise NotImplementedError(
            "Airtel disbursements need the disbursement PIN RSA-encrypted; install the 'cryptography' package"
        ) from exc
    text = public_key.strip()
    key = (
        load_pem_public_key(text.encode())
        if text.startswith("-----BEGIN")
        else load_der_public_key(base64.b64decode("".join(text.split())))
    )
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the Airtel PIN key must be an RSA public key")
    return base64.b64encode(key.encrypt(pin.encode(), padding.PKCS1v15())).decode()


def _transaction_data(body: Mapping[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    txn = data.get("transaction") if isinstance(data, Mapping) else None
    return dict(txn) if isinstance(txn, Mapping) else {}


def _status_block(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status")
    return dict(status) if isinstance(status, Mapping) else {}


class AirtelMoneyAdapter(HttpClientOwner):
    """Speaks the Airtel Africa Open API: token cache, USSD push, enquiry, refund, disbursement."""

    name = PROVIDER
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT, Operation.PAYOUT, Operation.REFUND}),
        currencies=frozenset(currency for currency, _ in MARKETS.values()),
        countries=frozenset(MARKETS),
        refunds=True,
    )
    """Every Airtel Money market; each instance narrows it to its configured countries."""

    def __init__(
        self,
        settings: AirtelMoneySettings,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        settings_loader: Callable[[], AirtelMoneySettings] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._timeout_s = timeout_s if timeout_s is not None else settings.timeout_s
        make_timeout(self._timeout_s)
        self._settings_loader = settings_loader
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._token: _Token | None = None
        self._token_lock = anyio.Lock()
        self._last_probe: tuple[float, ProbeResult] | None = None
        self._sent = _Recent()  # reference -> _Sent
        self._money_ids = _Recent()  # reference -> airtel_money_id (needed for refunds)
        self._refunded = _Recent()  # reference -> True once a refund succeeded
        self.capabilities = self._capabilities()

    def _capabilities(self) -> ProviderCapabilities:
        countries = frozenset(self._settings.countries)
        operations = {Operation.COLLECT, Operation.REFUND}
        if self._settings.disbursement_pin is not None and self._settings.pin_public_key is not None:
            operations.add(Operation.PAYOUT)
        return ProviderCapabilities(
            operations=frozenset(operations),
            currencies=frozenset(MARKETS[c][0] for c in countries),
            countries=countries,
            refunds=True,
        )

    # --- identity and tuning -------------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """`transaction.id`: "AM" + 18 base-36 characters of the key's SHA-256.

        Alphanumeric only (Airtel's enquiry fails on ids with hyphens) and the same on every
        retry, so Airtel's "External Transaction ID already exists" guards every resend.
        """
        digest = int.from_bytes(hashlib.sha256(idempotency_key.encode()).digest()[:16], "big")
        return "AM" + _base36(digest, REFERENCE_LENGTH - 2)

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
            self.capabilities = self._capabilities()
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
            token = self._token
            if token is not None and self._clock.monotonic() < token.expires_at_s:
                return token.value
            self._token = await self._fetch_token()
            return self._token.value

    async def _fetch_token(self) -> _Token:
        response = await send(
            self._http(),
            PROVIDER,
            "POST",
            "/auth/oauth2/token",
            mutating=False,
            what="token",
            json_body={
                "client_id": self._settings.client_id,
                "client_secret": self._settings.client_secret.get_secret_value(),
                "grant_type": "client_credentials",
            },
        )
        body = json_object(response)
        if response.status_code >= 400 or "error" in body:
            raise self._error(response, body, mutating=False, what="token")
        value = body.get("access_token")
        try:
            lifetime_s = float(body.get("expires_in", ""))  # "180": a string in Airtel's answers
        except (TypeError, ValueError):
            lifetime_s = -1.0
        if not isinstance(value, str) or not value or lifetime_s <= 0:
            raise ProviderError(PROVIDER, ErrorClass.NOT_PROCESSED, "token: malformed answer")
        margin_s = min(self._settings.token_refresh_margin_s, lifetime_s / 6)
        return _Token(value, self._clock.monotonic() + lifetime_s - margin_s)

    async def _call(
        self,
        method: str,
        path: str,
        country: str,
        *,
        mutating: bool,
        what: str,
        payload: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[httpx.Response, dict[str, Any]]:
        """One API call for `country`; a rejected token is replaced once and the call resent.

        Resending is safe: `invalid_token` comes from the gateway, before Airtel saw the request.
        """
        for attempt in (1, 2):
            token = await self._access_token()
            response = await send(
                self._http(),
                PROVIDER,
                method,
                path,
                mutating=mutating,
                what=what,
                json_body=payload,
                params=params,
                headers={
                    "Authorization": f"Bearer {token}",
                    "X-Country": country,
                    "X-Currency": MARKETS[country][0],
                },
            )
            body = json_object(response)
            if attempt == 1 and (response.status_code == 401 or body.get("error") == "invalid_token"):
                if self._token is not None and self._token.value == token:
                    self._token = None
                continue
            return response, body
        raise AssertionError("unreachable")  # pragma: no cover

    # --- errors --------------------------------------------------------------------------

    def _error(
        self,
        response: httpx.Response,
        body: dict[str, Any],
        *,
        mutating: bool,
        what: str,
        default: ErrorClass | None = None,
    ) -> ProviderError:
        """Classify an Airtel failure: OAuth `{error}`, the gateway's `{message}`, or `status{}`."""
        status = _status_block(body)
        code = (
            body.get("error")
            or status.get("response_code")
            or status.get("result_code")
            or body.get("status_code")
            or None
        )
        message = (
            body.get("error_description")
            or status.get("message")
            or body.get("status_message")
            or body.get("message")
            or f"HTTP {response.status_code}"
        )
        result_code = str(status.get("result_code") or "")
        error_class: ErrorClass | None
        if body.get("error") in ("invalid_client", "invalid_token", "unauthorized_client"):
            error_class = ErrorClass.AUTH  # refused at the gate, whatever the HTTP status says
        elif code in NOT_PROCESSED_CODES or result_code in NOT_PROCESSED_CODES:
            error_class = ErrorClass.NOT_PROCESSED
        elif response.status_code < 400:
            # HTTP 200 with `success: false`: Airtel validated the request and refused it.
            error_class = default or ErrorClass.INVALID_REQUEST
        else:
            error_class = classify_http_status(response.status_code, mutating=mutating)
        assert error_class is not None
        return ProviderError(
            PROVIDER,
            error_class,
            f"{what}: {short(message)}",
            code=str(code) if code else None,
            http_status=response.status_code,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After"), self._clock.now()),
        )

    # --- probe ---------------------------------------------------------------------------

    async def probe(self) -> ProbeResult:
        """`GET /standard/v1/users/balance` for the primary country (read-only), rate-capped."""
        now = self._clock.monotonic()
        if self._last_probe is not None and now - self._last_probe[0] < self._settings.probe_min_interval_s:
            cached = self._last_probe[1]
            return cached.model_copy(update={"detail": f"{cached.detail} (cached)"})
        started = time.perf_counter()
        country = self._settings.countries[0]
        response, body = await self._call(
            "GET", "/standard/v1/users/balance", country, mutating=False, what="balance"
        )
        if response.status_code >= 400 or _status_block(body).get("success") is not True:
            raise self._error(
                response, body, mutating=False, what="balance", default=ErrorClass.NOT_PROCESSED
            )
        result = ProbeResult(
            ok=True, latency_ms=(time.perf_counter() - started) * 1000, detail=f"{country} balance retrieved"
        )
        self._last_probe = (now, result)
        return result

    # --- collect -------------------------------------------------------------------------

    def _check_market(self, request: PaymentRequest) -> tuple[str, str]:
        country = request.country
        if country not in self.capabilities.countries:
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, f"Airtel Money is not configured for {country}"
            )
        currency, dial = MARKETS[country]
        if request.money.currency != currency:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"Airtel Money {country} takes {currency}, not {request.money.currency}",
            )
        if not request.phone.startswith(f"+{dial}"):
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, f"not a {country} number (+{dial}...)")
        return country, request.phone[len(dial) + 1 :]  # national number: no country code

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        """USSD push: the customer enters their PIN; pending (TIP) until they do."""
        country, msisdn = self._check_market(request)
        reference = self.reference_for(request.idempotency_key)
        currency = request.money.currency
        payload = {
            "reference": reference,  # alphanumeric, 4-64 characters, as Airtel requires
            "subscriber": {"country": country, "currency": currency, "msisdn": msisdn},
            "transaction": {
                "amount": amount_value(request.money),
                "country": country,
                "currency": currency,
                "id": reference,
            },
        }
        self._sent.remember(reference, _Sent("collection", country, request.money, self._clock.monotonic()))
        response, body = await self._call(
            "POST", "/merchant/v2/payments/", country, mutating=True, what="payment", payload=payload
        )
        status = _status_block(body)
        codes = {str(status.get("response_code") or ""), str(status.get("result_code") or "")}
        if ESB_DUPLICATE in codes:
            # Airtel already holds a payment under this id: an earlier attempt got through.
            return await self._replay(reference, request.money)
        if response.status_code >= 400 or status.get("success") is not True:
            raise self._error(response, body, mutating=True, what="payment")
        if COLLECTION_AMBIGUOUS in codes:
            raise ProviderError(
                PROVIDER,
                ErrorClass.AMBIGUOUS,
                f"payment: {short(status.get('message') or 'ambiguous')}",
                code=COLLECTION_AMBIGUOUS,
                http_status=response.status_code,
            )
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=reference,
            status=TransactionStatus.SUCCEEDED if COLLECTION_SUCCESS in codes else TransactionStatus.PENDING,
            money=request.money,
            provider_code=str(status.get("response_code") or status.get("result_code") or "") or None,
            provider_message=short(status.get("message") or ""),
            raw_status="in process"
            if COLLECTION_IN_PROCESS in codes
            else str(status.get("response_code") or ""),
            raw=body,
        )

    async def _replay(self, reference: str, money: Money) -> ProviderTransaction:
        existing = await self.status(reference)
        if existing.money is not None and existing.money != money:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"id {reference} already holds a different payment",
                code=ESB_DUPLICATE,
            )
        return existing

    # --- status --------------------------------------------------------------------------

    async def status(self, reference: str, provider_reference: str | None = None) -> ProviderTransaction:
        """Enquire about a collection, else a disbursement, under our id.

        `TA` (ambiguous) is reported `unknown`, never pending or failed. A "not found" within
        `not_found_grace_s` of our own send is also `unknown` (Airtel may simply not have
        registered it yet); otherwise it raises `ProviderError(code="not_found")`.
        """
        sent: _Sent | None = self._sent.get(reference)
        country = sent.country if sent else self._settings.countries[0]
        kinds: list[Kind] = [sent.kind] if sent else ["collection", "disbursement"]
        for kind in kinds:
            txn = await self._enquire(kind, reference, country, sent)
            if txn is not None:
                return txn
        if sent is not None and self._clock.monotonic() - sent.sent_at_s < self._settings.not_found_grace_s:
            return ProviderTransaction(
                provider=PROVIDER,
                reference=reference,
                provider_reference=reference,
                status=TransactionStatus.UNKNOWN,
                money=sent.money,
                provider_message="not found yet; Airtel may still be registering it",
                raw_status="not found (too early)",
            )
        raise ProviderError(
            PROVIDER, ErrorClass.NOT_PROCESSED, f"no payment or disbursement {reference}", code=NOT_FOUND_CODE
        )

    async def _enquire(
        self, kind: Kind, reference: str, country: str, sent: _Sent | None
    ) -> ProviderTransaction | None:
        if kind == "collection":
            path, params = f"/standard/v1/payments/{reference}", None
        else:
            path, params = f"/standard/v2/disbursements/{reference}", {"transactionType": "B2C"}
        response, body = await self._call(
            "GET", path, country, mutating=False, what=f"{kind} enquiry", params=params
        )
        status = _status_block(body)
        codes = {str(status.get("response_code") or ""), str(status.get("result_code") or "")}
        if (
            codes & {COLLECTION_NOT_FOUND, DISBURSEMENT_NOT_FOUND, ESB_NOT_FOUND}
            or response.status_code == 404
        ):
            return None
        data = _transaction_data(body)
        raw_status = str(data.get("status") or "")
        if response.status_code >= 400 or status.get("success") is not True or not raw_status:
            raise self._error(
                response, body, mutating=False, what=f"{kind} enquiry", default=ErrorClass.NOT_PROCESSED
            )
        money_id = data.get("airtel_money_id")
        if isinstance(money_id, str) and money_id:
            self._money_ids.remember(reference, money_id)
        txn_status = TRANSACTION_STATUS.get(raw_status.upper(), TransactionStatus.UNKNOWN)
        if txn_status is TransactionStatus.SUCCEEDED and self._refunded.get(reference):
            txn_status = TransactionStatus.REVERSED
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=str(money_id) if money_id else reference,
            status=txn_status,
            money=sent.money if sent else None,
            provider_code=str(status.get("response_code") or raw_status),
            provider_message=short(data.get("message") or status.get("message") or ""),
            raw_status=raw_status,
            raw=data,
        )

    # --- refund --------------------------------------------------------------------------

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Refund a succeeded collection in full (Airtel refunds by `airtel_money_id`)."""
        if transaction.status is not TransactionStatus.SUCCEEDED:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only a succeeded collection")
        if money is not None and transaction.money is not None and money != transaction.money:
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, "refund: Airtel refunds the full amount only"
            )
        money_id = self._money_ids.get(transaction.reference) or transaction.raw.get("airtel_money_id")
        if not isinstance(money_id, str) or not money_id:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                "refund: no airtel_money_id known (query the status first)",
            )
        sent: _Sent | None = self._sent.get(transaction.reference)
        country = sent.country if sent else self._settings.countries[0]
        response, body = await self._call(
            "POST",
            "/standard/v1/payments/refund",
            country,
            mutating=True,
            what="refund",
            payload={"transaction": {"airtel_money_id": money_id}},
        )
        status = _status_block(body)
        if response.status_code >= 400 or status.get("success") is not True:
            raise self._error(response, body, mutating=True, what="refund")
        data = _transaction_data(body)
        raw_status = str(data.get("status") or "SUCCESS")
        succeeded = raw_status.upper() in ("SUCCESS", "TS")
        if succeeded:
            self._refunded.remember(transaction.reference, True)
        return ProviderTransaction(
            provider=PROVIDER,
            reference=transaction.reference,
            provider_reference=money_id,
            status=TransactionStatus.SUCCEEDED if succeeded else TransactionStatus.PENDING,
            money=transaction.money,
            provider_code=str(status.get("result_code") or "") or None,
            provider_message=short(status.get("message") or ""),
            raw_status=raw_status,
            raw=data,
        )

    # --- payout --------------------------------------------------------------------------

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        """B2C disbursement from the merchant wallet, authorised by the RSA-encrypted PIN.

        Raises:
            NotImplementedError: the `cryptography` package is missing (the PIN cannot be encrypted).
        """
        country, msisdn = self._check_market(request)
        pin, key = self._settings.disbursement_pin, self._settings.pin_public_key
        if pin is None or key is None:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                "payout: AIRTEL_MONEY_DISBURSEMENT_PIN and AIRTEL_MONEY_PIN_PUBLIC_KEY must be configured",
            )
        try:
            encrypted_pin = encrypt_pin(pin.get_secret_value(), key.get_secret_value())
        except ValueError as exc:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"payout: unusable PIN public key ({type(exc).__name__})",
            ) from None
        reference = self.reference_for(request.idempotency_key)
        payload = {
            "payee": {"msisdn": msisdn, "wallet_type": "NORMAL"},
            "reference": reference,
            "pin": encrypted_pin,
            "transaction": {"amount": amount_value(request.money), "id": reference, "type": "B2C"},
        }
        self._sent.remember(reference, _Sent("disbursement", country, request.money, self._clock.monotonic()))
        response, body = await self._call(
            "POST",
            "/standard/v2/disbursements/",
            country,
            mutating=True,
            what="disbursement",
            payload=payload,
        )
        status = _status_block(body)
        code = str(status.get("response_code") or "")
        if code == DISBURSEMENT_DUPLICATE or status.get("result_code") == ESB_DUPLICATE:
            return await self._replay(reference, request.money)  # paid once already: never twice
        if code == DISBURSEMENT_AMBIGUOUS:
            raise ProviderError(
                PROVIDER,
                ErrorClass.AMBIGUOUS,
                "disbursement: ambiguous",
                code=code,
                http_status=response.status_code,
            )
        if response.status_code >= 400 or status.get("success") is not True:
            # A refused disbursement moved no money: a bad request is the caller's, the rest
            # (balance, PIN, barred payee) leave another provider free to pay.
            default = (
                ErrorClass.INVALID_REQUEST if code in INVALID_DISBURSEMENT_CODES else ErrorClass.NOT_PROCESSED
            )
            raise self._error(response, body, mutating=True, what="disbursement", default=default)
        data = _transaction_data(body)
        raw_status = str(data.get("status") or "")
        txn_status = TRANSACTION_STATUS.get(raw_status.upper(), TransactionStatus.PENDING)
        if code == DISBURSEMENT_SUCCESS:
            txn_status = TransactionStatus.SUCCEEDED
        money_id = data.get("airtel_money_id")
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=str(money_id) if money_id else reference,
            status=txn_status,
            money=request.money,
            provider_code=code or None,
            provider_message=short(status.get("message") or ""),
            raw_status=raw_status or None,
            raw=data,
        )
