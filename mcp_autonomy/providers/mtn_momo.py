"""MTN MoMo Open API adapter: request-to-pay collections, disbursement transfers, refunds.

Facts this module is built on (momodeveloper.mtn.com operation pages and "Common Error Codes",
the official SDKs in MTN-Group/MoMoAPIs_*, and the MoMo developer community's best practices):

- Products are separate APIs with separate credentials: each has its own
  `Ocp-Apim-Subscription-Key`, and each needs its own token from `POST /{product}/token/`
  (Basic apiUser:apiKey plus *that product's* subscription key, and no body: a body on the
  token call is a 400). The answer is `{access_token, token_type, expires_in}` (3600 s); MTN
  advises refreshing ten minutes before expiry and never minting a token per payment. A
  collection token is never sent to disbursement (the TypeScript original did exactly that).
- Every call carries `X-Target-Environment` (`sandbox`, or the market such as `mtnuganda`) and
  the product's subscription key. The market fixes the currency: the sandbox takes EUR only.
- `POST /collection/v1_0/requesttopay` with `X-Reference-Id` (a UUID *version 4*; anything else
  is a 400) answers 202 with an empty body. The id is then the resource id:
  `GET /collection/v1_0/requesttopay/{id}` -> `status` PENDING / SUCCESSFUL / FAILED, with
  `reason` on failure (APPROVAL_REJECTED, EXPIRED, NOT_ENOUGH_FUNDS, PAYER_NOT_FOUND,
  COULD_NOT_PERFORM_TRANSACTION, INTERNAL_PROCESSING_ERROR, ...; a string, or `{code, message}`
  in older answers) and `financialTransactionId` on success.
- A reused `X-Reference-Id` is refused with 409 `RESOURCE_ALREADY_EXIST`: the first request
  exists, so this adapter answers it by querying that request's status (never by paying again).
- Disbursement: `POST /disbursement/v1_0/transfer` (payee instead of payer) and
  `GET /disbursement/v1_0/transfer/{id}`; refunds `POST /disbursement/v1_0/refund` with
  `referenceIdToRefund` = the collection's X-Reference-Id, status `GET .../refund/{id}`.
- Errors are `{code, message}`; 404 `RESOURCE_NOT_FOUND` on a status query means the id was never
  accepted; the API gateway (Azure APIM) answers 401 `{statusCode, message}` for a wrong
  subscription key and 429 with `Retry-After` when rate limited (status queries are capped at
  10 per second). The token endpoint answers 401 `{error}` for a wrong apiUser/apiKey.
- Probe: `GET /collection/v1_0/account/balance` (read-only; it also proves the token works).
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
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

PROVIDER = "mtn_momo"
Product = Literal["collection", "disbursement"]

MARKETS: dict[str, tuple[str, frozenset[str]]] = {
    "mtnuganda": ("UGX", frozenset({"UG"})),
    "mtnghana": ("GHS", frozenset({"GH"})),
    "mtnivorycoast": ("XOF", frozenset({"CI"})),
    "mtnzambia": ("ZMW", frozenset({"ZM"})),
    "mtncameroon": ("XAF", frozenset({"CM"})),
    "mtnbenin": ("XOF", frozenset({"BJ"})),
    "mtncongo": ("XAF", frozenset({"CG"})),
    "mtnswaziland": ("SZL", frozenset({"SZ"})),
    "mtnguineaconakry": ("GNF", frozenset({"GN"})),
    "mtnsouthafrica": ("ZAR", frozenset({"ZA"})),
    "mtnliberia": ("LRD", frozenset({"LR"})),
    "mtnrwanda": ("RWF", frozenset({"RW"})),
    "mtnsouthsudan": ("SSP", frozenset({"SS"})),
    "mtnnigeria": ("NGN", frozenset({"NG"})),
}
"""`X-Target-Environment` of each production market -> (its only currency, its country)."""
SANDBOX_ENVIRONMENT = "sandbox"
SANDBOX_CURRENCY = "EUR"
ALL_MARKET_COUNTRIES = frozenset(c for _, countries in MARKETS.values() for c in countries)
MINOR_UNIT_EXPONENTS = {"UGX": 0, "XOF": 0, "XAF": 0, "GNF": 0, "RWF": 0}
"""ISO 4217 exponents that are not 2 (UGX, RWF, XOF, XAF and GNF have no minor unit)."""
MAX_NOTE_CHARS = 160
"""payerMessage and payeeNote are refused beyond 160 characters."""
MAX_REMEMBERED = 100_000

PENDING_STATUSES = frozenset({"PENDING", "CREATED", "ONGOING", "DELAYED"})
FAILED_STATUSES = frozenset({"FAILED", "REJECTED", "TIMEOUT", "EXPIRED", "CANCELLED"})
DUPLICATE_CODE = "RESOURCE_ALREADY_EXIST"
NOT_FOUND_CODES = frozenset({"RESOURCE_NOT_FOUND", "TRANSACTION_NOT_FOUND"})


class MtnMomoSettings(BaseSettings):
    """MoMo credentials and endpoints, from `MTN_MOMO_*` environment variables.

    Each product has its own subscription key; production API users are usually per product
    too, so the disbursement user and key default to the collection ones only when not given.
    """

    model_config = SettingsConfigDict(
        env_prefix="MTN_MOMO_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    api_user: str = Field(description="API user id (a UUID) for the collection product")
    api_key: SecretStr
    collection_subscription_key: SecretStr
    disbursement_subscription_key: SecretStr | None = Field(
        None, description="without it, payouts and refunds are not offered"
    )
    disbursement_api_user: str | None = None
    disbursement_api_key: SecretStr | None = None
    base_url: str = "https://sandbox.momodeveloper.mtn.com"
    target_environment: str = Field(SANDBOX_ENVIRONMENT, description="sandbox, or a market like mtnuganda")
    callback_url: str | None = Field(None, description="sent as X-Callback-Url (polling works without it)")
    timeout_s: float = Field(15.0, ge=0.5, le=120.0)
    token_refresh_margin_s: float = Field(600.0, ge=0.0, le=3000.0)
    probe_min_interval_s: float = Field(30.0, ge=0.0, le=3600.0)

    @field_validator("target_environment")
    @classmethod
    def _known_environment(cls, value: str) -> str:
        if value != SANDBOX_ENVIRONMENT and value not in MARKETS:
            raise ValueError(
                f"MTN_MOMO_TARGET_ENVIRONMENT must be sandbox or one of {', '.join(sorted(MARKETS))}"
            )
        return value


def capabilities_for(target_environment: str, *, disbursement: bool) -> ProviderCapabilities:
    """What one MoMo integration can do: its market's currency (EUR in the sandbox) and country.

    The sandbox stands in for any market, so it accepts the countries of every market (in EUR).
    """
    if target_environment == SANDBOX_ENVIRONMENT:
        currencies, countries = frozenset({SANDBOX_CURRENCY}), ALL_MARKET_COUNTRIES
    else:
        currency, countries = MARKETS[target_environment]
        currencies = frozenset({currency})
    operations = {Operation.COLLECT}
    if disbursement:
        operations |= {Operation.PAYOUT, Operation.REFUND}
    return ProviderCapabilities(
        operations=frozenset(operations), currencies=currencies, countries=countries, refunds=disbursement
    )


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at_s: float  # clock.monotonic() time after which it is not used any more


class _Recent(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries beyond `MAX_REMEMBERED`."""

    def remember(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_REMEMBERED:
            self.popitem(last=False)


def _uuid4_from(text: str) -> str:
    # uuid5 would stamp version 5, and MoMo refuses any X-Reference-Id that is not version 4.
    # A SHA-256 prefix with the v4 version and RFC 4122 variant bits set is deterministic and
    # still a well-formed UUIDv4 (122 bits of the hash survive).
    return str(uuid.UUID(bytes=hashlib.sha256(text.encode()).digest()[:16], version=4))


def amount_text(money: Money) -> str:
    """MoMo's string amount in major units (`"10.50"` EUR, `"1500"` UGX)."""
    exponent = MINOR_UNIT_EXPONENTS.get(money.currency, 2)
    if exponent == 0:
        return str(money.amount_minor)
    whole, part = divmod(money.amount_minor, 10**exponent)
    return f"{whole}.{part:0{exponent}d}"


def money_of(amount: Any, currency: Any) -> Money | None:
    """A MoMo `amount`/`currency` pair as `Money`, or None when it is not one."""
    if not isinstance(currency, str) or len(currency) != 3:
        return None
    try:
        value = Decimal(str(amount))
    except (InvalidOperation, ValueError):
        return None
    minor = value * (10 ** MINOR_UNIT_EXPONENTS.get(currency.upper(), 2))
    if minor <= 0 or minor != minor.to_integral_value():
        return None
    return Money(amount_minor=int(minor), currency=currency.upper())


def _reason(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """A failed transaction's reason: a bare string, or `{code, message}` in older answers."""
    reason = body.get("reason")
    if isinstance(reason, Mapping):
        code = reason.get("code")
        message = reason.get("message")
        return (str(code) if code else None, str(message) if message else None)
    if isinstance(reason, str) and reason:
        return reason, None
    return None, None


class MtnMomoAdapter(HttpClientOwner):
    """Speaks the MoMo Open API: per-product tokens, request-to-pay, transfers, refunds."""

    name = PROVIDER
    capabilities = capabilities_for(SANDBOX_ENVIRONMENT, disbursement=True)
    """Class default (the sandbox); each instance narrows it to its configured market."""

    def __init__(
        self,
        settings: MtnMomoSettings,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        settings_loader: Callable[[], MtnMomoSettings] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._timeout_s = timeout_s if timeout_s is not None else settings.timeout_s
        make_timeout(self._timeout_s)
        self._settings_loader = settings_loader
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._tokens: dict[Product, _Token] = {}
        self._token_locks: dict[Product, anyio.Lock] = {
            "collection": anyio.Lock(),
            "disbursement": anyio.Lock(),
        }
        self._last_probe: tuple[float, ProbeResult] | None = None
        self._products = _Recent()  # reference -> product it was sent to
        self._money = _Recent()  # reference -> Money
        self._refunds = _Recent()  # collection reference -> list of (refund reference, Money)
        self.capabilities = self._capabilities()

    def _capabilities(self) -> ProviderCapabilities:
        return capabilities_for(
            self._settings.target_environment,
            disbursement=self._settings.disbursement_subscription_key is not None,
        )

    # --- identity and tuning -------------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """The payment's `X-Reference-Id`: a UUIDv4 derived from the key (SHA-256, v4 bits set).

        The same key always gives the same id, so a resend meets MoMo's 409 instead of paying twice.
        """
        return _uuid4_from(f"{PROVIDER}:{idempotency_key}")

    @staticmethod
    def refund_reference_for(reference: str, money: Money) -> str:
        """The refund's own `X-Reference-Id`, derived from the collection and the amount.

        A repeated refund of the same amount meets MoMo's 409 and is answered with the first one.
        """
        return _uuid4_from(f"{PROVIDER}:refund:{reference}:{money.amount_minor}:{money.currency}")

    # --- lifecycle -----------------------------------------------------------------------

    async def initialize(self) -> None:
        """A fresh HTTP client and fresh tokens for every configured product."""
        await self.close()
        self._client = self._new_client()
        await self.refresh_credentials()

    async def refresh_credentials(self) -> None:
        """Reload settings (when a loader was given), drop every token, fetch new ones."""
        if self._settings_loader is not None:
            self._settings = self._settings_loader()
            self.capabilities = self._capabilities()
        self._tokens.clear()
        await self._access_token("collection")
        if self._settings.disbursement_subscription_key is not None:
            await self._access_token("disbursement")

    def _new_client(self) -> httpx.AsyncClient:
        return build_client(self._settings.base_url, self._timeout_s, transport=self._transport)

    # --- auth ----------------------------------------------------------------------------

    def _credentials(self, product: Product) -> tuple[str, SecretStr, SecretStr]:
        settings = self._settings
        if product == "collection":
            return settings.api_user, settings.api_key, settings.collection_subscription_key
        if settings.disbursement_subscription_key is None:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                "disbursement is not configured (MTN_MOMO_DISBURSEMENT_SUBSCRIPTION_KEY)",
            )
        return (
            settings.disbursement_api_user or settings.api_user,
            settings.disbursement_api_key or settings.api_key,
            settings.disbursement_subscription_key,
        )

    async def _access_token(self, product: Product) -> str:
        token = self._tokens.get(product)
        if token is not None and self._clock.monotonic() < token.expires_at_s:
            return token.value
        async with self._token_locks[product]:
            token = self._tokens.get(product)  # another caller may have refreshed meanwhile
            if token is not None and self._clock.monotonic() < token.expires_at_s:
                return token.value
            fresh = await self._fetch_token(product)
            self._tokens[product] = fresh
            return fresh.value

    async def _fetch_token(self, product: Product) -> _Token:
        user, key, subscription = self._credentials(product)
        basic = base64.b64encode(f"{user}:{key.get_secret_value()}".encode()).decode()
        response = await send(
            self._http(),
            PROVIDER,
            "POST",
            f"/{product}/token/",
            mutating=False,
            what=f"{product} token",
            headers={
                "Authorization": f"Basic {basic}",
                "Ocp-Apim-Subscription-Key": subscription.get_secret_value(),
            },
        )
        body = json_object(response)
        if response.status_code >= 400:
            raise self._error(response, body, mutating=False, what=f"{product} token")
        value = body.get("access_token")
        try:
            lifetime_s = float(body.get("expires_in", ""))
        except (TypeError, ValueError):
            lifetime_s = -1.0
        if not isinstance(value, str) or not value or lifetime_s <= 0:
            raise ProviderError(PROVIDER, ErrorClass.NOT_PROCESSED, f"{product} token: malformed answer")
        margin_s = min(self._settings.token_refresh_margin_s, lifetime_s / 4)
        return _Token(value, self._clock.monotonic() + lifetime_s - margin_s)

    async def _call(
        self,
        product: Product,
        method: str,
        path: str,
        *,
        mutating: bool,
        what: str,
        payload: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[httpx.Response, dict[str, Any]]:
        """One product call with its own token and key; a refused token is replaced once.

        Resending after a 401 is safe: the gateway refused the request before MoMo processed it.
        """
        _, _, subscription = self._credentials(product)
        for attempt in (1, 2):
            token = await self._access_token(product)
            response = await send(
                self._http(),
                PROVIDER,
                method,
                path,
                mutating=mutating,
                what=what,
                json_body=payload,
                headers={
                    "Authorization": f"Bearer {token}",
                    "X-Target-Environment": self._settings.target_environment,
                    "Ocp-Apim-Subscription-Key": subscription.get_secret_value(),
                    **(headers or {}),
                },
            )
            if response.status_code == 401 and attempt == 1:
                current = self._tokens.get(product)
                if current is not None and current.value == token:
                    del self._tokens[product]
                continue
            return response, json_object(response)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- errors --------------------------------------------------------------------------

    def _error(
        self, response: httpx.Response, body: dict[str, Any], *, mutating: bool, what: str
    ) -> ProviderError:
        """Classify a MoMo failure: `{code, message}`, APIM's `{statusCode, message}`, or `{error}`."""
        code = body.get("code") or body.get("error")
        message = (
            body.get("message") or body.get("error_description") or code or f"HTTP {response.status_code}"
        )
        error_class = classify_http_status(response.status_code, mutating=mutating)
        if error_class is None:  # a 2xx that is still not what was asked for
            error_class = ErrorClass.AMBIGUOUS if mutating else ErrorClass.NOT_PROCESSED
        return ProviderError(
            PROVIDER,
            error_class,
            f"{what}: {short(message)}",
            code=str(code) if code else None,
            http_status=response.status_code,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After"), self._clock.now()),
        )

    @staticmethod
    def _code(body: Mapping[str, Any]) -> str:
        return str(body.get("code") or "")

    # --- probe ---------------------------------------------------------------------------

    async def probe(self) -> ProbeResult:
        """`GET /collection/v1_0/account/balance` (read-only), at most once per interval."""
        now = self._clock.monotonic()
        if self._last_probe is not None and now - self._last_probe[0] < self._settings.probe_min_interval_s:
            cached = self._last_probe[1]
            return cached.model_copy(update={"detail": f"{cached.detail} (cached)"})
        started = time.perf_counter()
        response, body = await self._call(
            "collection", "GET", "/collection/v1_0/account/balance", mutating=False, what="balance"
        )
        if response.status_code != 200:
            raise self._error(response, body, mutating=False, what="balance")
        result = ProbeResult(
            ok=True,
            latency_ms=(time.perf_counter() - started) * 1000,
            detail=f"collection balance in {body.get('currency', '?')} retrieved",
        )
        self._last_probe = (now, result)
        return result

    # --- payments ------------------------------------------------------------------------

    def _check_market(self, request: PaymentRequest) -> None:
        caps = self.capabilities
        if request.money.currency not in caps.currencies:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"MoMo target environment {self._settings.target_environment} takes "
                f"{', '.join(sorted(caps.currencies))}, not {request.money.currency}",
            )
        if request.country not in caps.countries:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"MoMo target environment {self._settings.target_environment} does not serve {request.country}",
            )

    def _headers(self, reference: str) -> dict[str, str]:
        headers = {"X-Reference-Id": reference}
        if self._settings.callback_url:
            headers["X-Callback-Url"] = self._settings.callback_url
        return headers

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        """Request to pay: the customer approves on their phone; pending until then."""
        self._check_market(request)
        reference = self.reference_for(request.idempotency_key)
        note = (request.description or "payment")[:MAX_NOTE_CHARS]
        payload = {
            "amount": amount_text(request.money),
            "currency": request.money.currency,
            "externalId": request.idempotency_key,
            "payer": {"partyIdType": "MSISDN", "partyId": request.phone.lstrip("+")},
            "payerMessage": note,
            "payeeNote": note,
        }
        return await self._submit(
            "collection", "/collection/v1_0/requesttopay", reference, payload, request.money
        )

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        """Disbursement transfer to the customer's wallet; pending until MoMo settles it."""
        self._check_market(request)
        if Operation.PAYOUT not in self.capabilities.operations:
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, "payout: disbursement is not configured"
            )
        reference = self.reference_for(request.idempotency_key)
        note = (request.description or "payout")[:MAX_NOTE_CHARS]
        payload = {
            "amount": amount_text(request.money),
            "currency": request.money.currency,
            "externalId": request.idempotency_key,
            "payee": {"partyIdType": "MSISDN", "partyId": request.phone.lstrip("+")},
            "payerMessage": note,
            "payeeNote": note,
        }
        return await self._submit(
            "disbursement", "/disbursement/v1_0/transfer", reference, payload, request.money
        )

    async def _submit(
        self, product: Product, path: str, reference: str, payload: dict[str, Any], money: Money
    ) -> ProviderTransaction:
        what = "request to pay" if product == "collection" else "transfer"
        self._products.remember(reference, product)
        self._money.remember(reference, money)
        response, body = await self._call(
            product, "POST", path, mutating=True, what=what, payload=payload, headers=self._headers(reference)
        )
        if response.status_code == 202:
            return ProviderTransaction(
                provider=PROVIDER,
                reference=reference,
                provider_reference=reference,
                status=TransactionStatus.PENDING,
                money=money,
                provider_message="accepted (202); the customer is asked to approve"
                if product == "collection"
                else "accepted (202)",
                raw_status="accepted",
            )
        if response.status_code == 409 and self._code(body) == DUPLICATE_CODE:
            # MoMo already holds a request under this X-Reference-Id: an earlier attempt got
            # through. Answer with that request; never create a second one.
            existing = await self._query(product, reference)
            if existing.money is not None and existing.money != money:
                raise ProviderError(
                    PROVIDER,
                    ErrorClass.INVALID_REQUEST,
                    f"{what}: reference {reference} already holds a different payment",
                    code=DUPLICATE_CODE,
                    http_status=409,
                )
            return existing
        raise self._error(response, body, mutating=True, what=what)

    # --- status --------------------------------------------------------------------------

    async def status(self, reference: str, provider_reference: str | None = None) -> ProviderTransaction:
        """Where a payment stands: the request-to-pay, else the transfer, under this id.

        A collection with a succeeded full refund is reported `reversed`. Raises
        `ProviderError(code="not_found")` when MoMo has neither (404 RESOURCE_NOT_FOUND): the
        request was never accepted, so nothing was processed.
        """
        resource = provider_reference or reference
        known = self._products.get(resource)
        order: list[Product] = [known] if known else ["collection"]
        if known is None and self._settings.disbursement_subscription_key is not None:
            order.append("disbursement")
        for product in order:
            try:
                txn = await self._query(product, resource)
            except ProviderError as exc:
                if exc.code == NOT_FOUND_CODE:
                    continue
                raise
            if product == "collection" and txn.status is TransactionStatus.SUCCEEDED:
                return await self._with_refunds(txn)
            return txn
        raise ProviderError(
            PROVIDER,
            ErrorClass.NOT_PROCESSED,
            f"no request to pay or transfer {resource}",
            code=NOT_FOUND_CODE,
        )

    async def _query(self, product: Product, resource: str, kind: str | None = None) -> ProviderTransaction:
        kind = kind or ("requesttopay" if product == "collection" else "transfer")
        response, body = await self._call(
            product, "GET", f"/{product}/v1_0/{kind}/{resource}", mutating=False, what=f"{kind} status"
        )
        if response.status_code == 404 or self._code(body) in NOT_FOUND_CODES:
            raise ProviderError(
                PROVIDER,
                ErrorClass.NOT_PROCESSED,
                f"{kind} status: {short(body.get('message') or 'not found')}",
                code=NOT_FOUND_CODE,
                http_status=response.status_code,
            )
        if response.status_code != 200 or "status" not in body:
            raise self._error(response, body, mutating=False, what=f"{kind} status")
        self._products.remember(resource, product)
        return self._transaction(resource, body)

    def _transaction(self, reference: str, body: dict[str, Any]) -> ProviderTransaction:
        raw_status = str(body.get("status", "")).upper()
        if raw_status == "SUCCESSFUL":
            status = TransactionStatus.SUCCEEDED
        elif raw_status in PENDING_STATUSES:
            status = TransactionStatus.PENDING
        elif raw_status in FAILED_STATUSES:
            status = TransactionStatus.FAILED
        else:
            status = TransactionStatus.UNKNOWN
        reason_code, reason_message = _reason(body)
        financial_id = body.get("financialTransactionId")
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=reference,
            status=status,
            money=money_of(body.get("amount"), body.get("currency")) or self._money.get(reference),
            provider_code=reason_code or raw_status or None,
            provider_message=short(reason_message or reason_code or raw_status),
            raw_status=raw_status or None,
            raw={"financialTransactionId": financial_id} if financial_id else {},
        )

    async def _with_refunds(self, txn: ProviderTransaction) -> ProviderTransaction:
        refunds: list[tuple[str, Money]] = self._refunds.get(txn.reference, [])
        refunded_minor = 0
        for refund_reference, _ in refunds:
            try:
                refund = await self.refund_status(refund_reference)
            except ProviderError as exc:
                if exc.code == NOT_FOUND_CODE:  # that refund's POST never got through
                    continue
                raise
            if refund.status is TransactionStatus.SUCCEEDED and refund.money is not None:
                refunded_minor += refund.money.amount_minor
        if txn.money is not None and refunded_minor >= txn.money.amount_minor:
            return txn.model_copy(
                update={"status": TransactionStatus.REVERSED, "raw_status": "SUCCESSFUL (refunded)"}
            )
        return txn

    # --- refund --------------------------------------------------------------------------

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Refund a succeeded collection, fully or partly, from the disbursement account.

        The answer describes the refund (reference = the collection, provider_reference = the
        refund's own id): pending until MoMo settles it; see `refund_status`.
        """
        if transaction.status is not TransactionStatus.SUCCEEDED:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only a succeeded collection")
        if self._products.get(transaction.reference, "collection") != "collection":
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only collections are refunded")
        original = transaction.money or self._money.get(transaction.reference)
        amount = money or original
        if not isinstance(amount, Money):
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: the amount is unknown")
        if isinstance(original, Money) and (
            amount.currency != original.currency or amount.amount_minor > original.amount_minor
        ):
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                "refund: more than, or another currency than, the payment",
            )
        refund_reference = self.refund_reference_for(transaction.reference, amount)
        payload = {
            "amount": amount_text(amount),
            "currency": amount.currency,
            "externalId": f"refund-{transaction.reference}",
            "payerMessage": "refund",
            "payeeNote": "refund",
            "referenceIdToRefund": transaction.reference,
        }
        known: list[tuple[str, Money]] = list(self._refunds.get(transaction.reference, []))
        if all(ref != refund_reference for ref, _ in known):
            known.append((refund_reference, amount))
        self._refunds.remember(transaction.reference, known)
        response, body = await self._call(
            "disbursement",
            "POST",
            "/disbursement/v1_0/refund",
            mutating=True,
            what="refund",
            payload=payload,
            headers=self._headers(refund_reference),
        )
        if response.status_code == 202:
            return ProviderTransaction(
                provider=PROVIDER,
                reference=transaction.reference,
                provider_reference=refund_reference,
                status=TransactionStatus.PENDING,
                money=amount,
                provider_message="refund accepted (202)",
                raw_status="accepted",
            )
        if response.status_code == 409 and self._code(body) == DUPLICATE_CODE:
            existing = await self.refund_status(refund_reference)
            return existing.model_copy(update={"reference": transaction.reference})
        raise self._error(response, body, mutating=True, what="refund")

    async def refund_status(self, refund_reference: str) -> ProviderTransaction:
        """Where one refund stands (`GET /disbursement/v1_0/refund/{id}`)."""
        txn = await self._query("disbursement", refund_reference, kind="refund")
        self._products.pop(refund_reference, None)  # a refund id is not a payment reference
        return txn
