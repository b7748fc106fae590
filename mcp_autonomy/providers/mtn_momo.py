"""MTN MoMo Open API adapter: request-to-pay collections, disbursement transfers, refunds.

Facts this module is built on (momodeveloper.mtn.com operation pages, its "Callback" page and
"Common Error Codes", the official SDKs in MTN-Group/MoMoAPIs_*, and the MoMo developer
community's best practices):

- Products are separate APIs with separate credentials: each has its own
  `Ocp-Apim-Subscription-Key`, and each needs its own token from `POST /{product}/token/`
  (Basic apiUser:apiKey plus *that product's* subscription key, and no body: a body on the
  token call is a 400). The answer is `{access_token, token_type, expires_in}` (3600 s); MTN
  advises refreshing ten minutes before expiry and never minting a token per payment. A
  collection token is never sent to disbursement (the TypeScript original did exactly that):
  one `TokenCache` per product.
- Every call carries `X-Target-Environment` (`sandbox`, or the market such as `mtnuganda`) and
  the product's subscription key. The market fixes the currency: the sandbox takes EUR only.
- `POST /collection/v1_0/requesttopay` with `X-Reference-Id` (a UUID *version 4*; anything else
  is a 400) answers 202 with an empty body. The id is then the resource id:
  `GET /collection/v1_0/requesttopay/{id}` -> `{amount, currency, externalId, payer: {partyIdType,
  partyId}, payerMessage, payeeNote, status, reason?, financialTransactionId?}`, status PENDING /
  SUCCESSFUL / FAILED, `reason` on failure (APPROVAL_REJECTED, EXPIRED, NOT_ENOUGH_FUNDS,
  PAYER_NOT_FOUND, COULD_NOT_PERFORM_TRANSACTION, ...; a string, or `{code, message}` in older
  answers) and `financialTransactionId` on success. Our `X-Reference-Id` is derived from the
  idempotency key, so every payment that was ever sent can be pulled, by any replica.
- Lookups are eventually consistent: a `GET` shortly after the 202 may answer 404
  `RESOURCE_NOT_FOUND`. `status()` reports it as `not_found`; the engine applies the grace
  period of `money_truth`.
- A reused `X-Reference-Id` is refused with 409 `RESOURCE_ALREADY_EXIST`: the first request
  exists, so this adapter answers it by querying that request's status (never by paying again).
- Disbursement: `POST /disbursement/v1_0/transfer` (payee instead of payer) and
  `GET /disbursement/v1_0/transfer/{id}`; refunds `POST /disbursement/v1_0/refund` with
  `referenceIdToRefund` = the collection's X-Reference-Id, status `GET .../refund/{id}`.
- Callbacks: MoMo sends the final state once to the request's `X-Callback-Url` with the same
  body as the `GET` (and without the X-Reference-Id: it goes in our URL, see
  `MtnMomoSettings.callback_url`), by PUT or POST ("Allow PUT & POST on your callback listener
  host"). Nothing is signed: a callback is a hint the engine confirms with a pull.
- Errors are `{code, message}`; the API gateway (Azure APIM) answers 401 `{statusCode,
  message}` for a wrong subscription key and 429 with `Retry-After` when rate limited (status
  queries are capped at 10 per second). The token endpoint answers 401 `{error}` for a wrong
  apiUser/apiKey. `ERROR_RULES` classifies MoMo's codes (each rule cites MoMo's error list):
  PAYER_NOT_FOUND / PAYEE_NOT_FOUND and a payer's NOT_ENOUGH_FUNDS are the customer's, but on a
  transfer the payer is the merchant's disbursement account, so a transfer's NOT_ENOUGH_FUNDS is
  `not_processed` (the merchant's float; another provider may pay); NOT_ALLOWED and
  NOT_ALLOWED_TARGET_ENVIRONMENT are our configuration (`auth`); INTERNAL_PROCESSING_ERROR and
  SERVICE_UNAVAILABLE stay `ambiguous` (nothing says the request was not processed).
- A failed result's `reason` is its `provider_code`: a request to pay's as MoMo sends it, a
  transfer's or refund's as `transfer:<reason>` / `refund:<reason>` (same codes, the merchant's
  side). `customer_codes` lists those that are the customer's.
- Probe: `GET /collection/v1_0/account/balance` (read-only; it also proves the token works).

Identifiers reported to the engine (`identifier_sink`), by kind:

- `financial_transaction_id`: MoMo's own ledger id of a collection or transfer, from a pull;
- `refund_ids`: the X-Reference-Ids of the refunds sent for a collection, comma-separated,
  reported *before* each refund request leaves (a refund whose answer is lost stays findable).
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.adapter import AccessToken, AdapterBase, RecentMap, TokenCache
from mcp_autonomy.providers.base import (
    E164_RE,
    NOT_FOUND_CODE,
    CallbackHint,
    ErrorClass,
    ErrorRule,
    MalformedCallback,
    Money,
    MoneyTruth,
    Operation,
    PaymentContext,
    PaymentRequest,
    ProviderCapabilities,
    ProviderError,
    ProviderTransaction,
    TransactionStatus,
)
from mcp_autonomy.providers.error_table import customer_codes_of, final_result
from mcp_autonomy.providers.http import NO_SOURCE, json_object, send, short

PROVIDER = "mtn_momo"
Product = Literal["collection", "disbursement"]
ResourceKind = Literal["requesttopay", "transfer", "refund"]

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

PENDING_STATUSES = frozenset({"PENDING", "CREATED", "ONGOING", "DELAYED"})
FAILED_STATUSES = frozenset({"FAILED", "REJECTED", "TIMEOUT", "EXPIRED", "CANCELLED"})
DUPLICATE_CODE = "RESOURCE_ALREADY_EXIST"
REFUND_EXTERNAL_PREFIX = "refund-"
"""A refund's `externalId` is this prefix + the collection's X-Reference-Id (see `refund`)."""

RESOURCE_KINDS: dict[Operation, ResourceKind] = {
    Operation.COLLECT: "requesttopay",
    Operation.PAYOUT: "transfer",
    Operation.REFUND: "refund",
}
FINANCIAL_ID = "financial_transaction_id"
REFUND_IDS = "refund_ids"
CALLBACK_KINDS: dict[str, Operation] = {op.value: op for op in Operation}
"""A `<kind>` URL segment that names the operation (when `callback_url` ends with one)."""
_NO_REFERENCE = frozenset({"", "-"})

MOMO_ERRORS = "momodeveloper.mtn.com, API documentation 'Common Error Codes'"
MOMO_SWAGGER = "MoMo Open API swagger ErrorReason codes (as in sparkplug/mtn-momo-api-documentation)"

_NOT_FOUND_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        match="RESOURCE_NOT_FOUND",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="a read (GET status): no request under this X-Reference-Id is visible; raised as "
        "not_found, which the engine weighs with money_truth's grace",
        source=f"{MOMO_ERRORS}: 404 'Reference ID not found. Requested resource does not exist'",
    ),
    ErrorRule(
        match="TRANSACTION_NOT_FOUND",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="a read: no such transaction; raised as not_found (grace applies)",
        source=f"{MOMO_ERRORS} (a read moves no money)",
    ),
)
_DUPLICATE_RULE = ErrorRule(
    match=DUPLICATE_CODE,
    error_class=ErrorClass.AMBIGUOUS,
    meaning="409: MoMo already holds a request under this X-Reference-Id (an earlier attempt got "
    "through): answered with that request, `unknown` while its lookup cannot see it yet",
    source=f"{MOMO_ERRORS}: 409 'Duplicated Reference ID'",
)
_SYNC_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        match="NOT_ALLOWED",
        error_class=ErrorClass.AUTH,
        meaning="Authorization failed: the API user has no permission",
        source=f"{MOMO_SWAGGER}: 'Authorization failed. User does not have permission'",
    ),
    ErrorRule(
        match="NOT_ALLOWED_TARGET_ENVIRONMENT",
        error_class=ErrorClass.AUTH,
        meaning="access to this X-Target-Environment is forbidden for the API user (our configuration, "
        "not the customer)",
        source=f"{MOMO_SWAGGER}: 'Access to target environment is forbidden'",
    ),
    ErrorRule(
        match="INVALID_CALLBACK_URL_HOST",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="the callback host differs from the API user's providerCallbackHost",
        source=f"{MOMO_SWAGGER}: 'Callback URL with different host name than configured for API User'",
    ),
    ErrorRule(
        match="INVALID_CURRENCY",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="currency not supported on the requested account",
        source=f"{MOMO_SWAGGER}: 'Currency not supported on the requested account'",
    ),
    ErrorRule(
        match="PAYER_NOT_FOUND",
        error_class=ErrorClass.CUSTOMER,
        meaning="request to pay: the payer's MSISDN is not registered for Mobile Money",
        source=f"{MOMO_ERRORS}: PAYER_NOT_FOUND 'MSISDN is not registered for Mobile Money Service'",
    ),
    ErrorRule(
        match="PAYEE_NOT_FOUND",
        error_class=ErrorClass.CUSTOMER,
        meaning="transfer: the customer's MSISDN is not registered for Mobile Money",
        source=f"{MOMO_ERRORS}: PAYEE_NOT_FOUND 'MSISDN is not registered for Mobile Money Service'",
    ),
    ErrorRule(
        match="requesttopay:NOT_ENOUGH_FUNDS",
        error_class=ErrorClass.CUSTOMER,
        meaning="request to pay: the payer (the customer) does not have enough funds",
        source=f"{MOMO_ERRORS}: NOT_ENOUGH_FUNDS 'The payer does not have enough funds'",
    ),
    ErrorRule(
        match="requesttopay:PAYER_LIMIT_REACHED",
        error_class=ErrorClass.CUSTOMER,
        meaning="request to pay: the payer's (the customer's) limit is reached",
        source=f"{MOMO_SWAGGER}: PAYER_LIMIT_REACHED",
    ),
    ErrorRule(
        match="requesttopay:PAYEE_NOT_ALLOWED_TO_RECEIVE",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="request to pay: the merchant's collection account cannot receive (e.g. its limit): "
        "refused, nothing charged; another provider may take it",
        source=f"{MOMO_SWAGGER}, RequestToPay error codes: 'Payee cannot receive funds due to e.g. transfer limit'",
    ),
    ErrorRule(
        match="transfer:NOT_ENOUGH_FUNDS",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="transfer: the payer is the merchant's disbursement account, and it is short: refused, "
        "nothing sent (another provider's float may pay)",
        source=f"{MOMO_SWAGGER}, Transfer error codes: 'Not enough funds on payer account'",
    ),
    ErrorRule(
        match="transfer:PAYER_LIMIT_REACHED",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="transfer: the merchant's disbursement account hit its limit: not allowed to send",
        source=f"{MOMO_SWAGGER}, Transfer error codes: 'Not allowed to send due to Payer limit reached'",
    ),
    ErrorRule(
        match="transfer:PAYEE_NOT_ALLOWED_TO_RECEIVE",
        error_class=ErrorClass.CUSTOMER,
        meaning="transfer: the customer's wallet cannot receive (e.g. its limit)",
        source=f"{MOMO_SWAGGER}: 'Payee cannot receive funds due to e.g. transfer limit'",
    ),
    ErrorRule(
        match="refund:NOT_ENOUGH_FUNDS",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="refund: the merchant's disbursement account funds refunds and is short: refused",
        source=f"{MOMO_SWAGGER}, Transfer error codes: 'Not enough funds on payer account' (refunds are "
        "paid from the disbursement account)",
    ),
    ErrorRule(
        match="INTERNAL_PROCESSING_ERROR",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="MoMo's generic failure (customer funds, service denied, or the wallet platform "
        "unreachable): nothing says the request was not processed",
        source=f"{NO_SOURCE} ({MOMO_ERRORS}: 'Default or Generic error code ... when there is no specific "
        "error mapping')",
    ),
    ErrorRule(
        match="SERVICE_UNAVAILABLE",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="503 'Service unavailable, try again later': nothing says the request was not processed",
        source=NO_SOURCE,
    ),
    ErrorRule(
        match="HTTP 5xx with any other code (or none)",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="MoMo or APIM failed at an unknown point, possibly after accepting",
        source=NO_SOURCE,
    ),
)
"""Every synchronous MoMo answer this adapter classifies. `match` is MoMo's `code`, or
`<resource>:<code>` (requesttopay, transfer, refund) where the same code is the customer's on one
resource and the merchant's on another: a transfer's *payer* is the merchant's account."""

_RESULT_RULES: tuple[ErrorRule, ...] = (
    *(
        ErrorRule(match=final_result(code), error_class=ErrorClass.CUSTOMER, meaning=meaning, source=source)
        for code, meaning, source in (
            ("APPROVAL_REJECTED", "request to pay: the payer rejected it", MOMO_SWAGGER),
            ("EXPIRED", "request to pay: the payer did not answer before it expired", MOMO_SWAGGER),
            (
                "COULD_NOT_PERFORM_TRANSACTION",
                "request to pay: not approved within the time frame (5 minutes)",
                f"{MOMO_ERRORS}: 'delay to approve a transaction within the given time frame'",
            ),
            (
                "NOT_ENOUGH_FUNDS",
                "request to pay: the payer does not have enough funds",
                f"{MOMO_ERRORS}: 'The payer does not have enough funds'",
            ),
            ("PAYER_LIMIT_REACHED", "request to pay: the payer's limit is reached", MOMO_SWAGGER),
            (
                "PAYER_NOT_FOUND",
                "request to pay: the payer is not registered for Mobile Money",
                f"{MOMO_ERRORS}: PAYER_NOT_FOUND",
            ),
            ("PAYMENT_NOT_APPROVED", "request to pay: the payer did not approve it", MOMO_SWAGGER),
            ("TRANSACTION_CANCELED", "request to pay: the payer cancelled it", MOMO_SWAGGER),
            (
                "transfer:PAYEE_NOT_FOUND",
                "transfer: the customer is not registered for Mobile Money",
                f"{MOMO_ERRORS}: PAYEE_NOT_FOUND",
            ),
            (
                "transfer:PAYEE_NOT_ALLOWED_TO_RECEIVE",
                "transfer: the customer's wallet cannot receive",
                MOMO_SWAGGER,
            ),
        )
    ),
)
"""Failure reasons of final results that are the customer's. A transfer's or refund's reason is
reported as `transfer:<reason>` / `refund:<reason>`: there the payer is the merchant's account,
so `transfer:NOT_ENOUGH_FUNDS` is the merchant's float, never a customer's."""

ERROR_RULES: tuple[ErrorRule, ...] = (*_NOT_FOUND_RULES, _DUPLICATE_RULE, *_SYNC_RULES, *_RESULT_RULES)
CUSTOMER_CODES = customer_codes_of(_RESULT_RULES)
NOT_FOUND_CODES = frozenset(rule.match for rule in _NOT_FOUND_RULES)
_RULE_BY_CODE = {rule.match: rule for rule in _SYNC_RULES}
_OTHER_5XX = _RULE_BY_CODE["HTTP 5xx with any other code (or none)"]


def _rule_for(code: str | None, kind: ResourceKind | None) -> ErrorRule | None:
    """The rule for MoMo's `code` on `kind` (its resource-specific rule first), or None."""
    if not code:
        return None
    return (_RULE_BY_CODE.get(f"{kind}:{code}") if kind else None) or _RULE_BY_CODE.get(code)


def _result_code(reason: str, operation: Operation | None) -> str:
    """A final result's reason as reported: `transfer:` / `refund:` before a payout's or refund's."""
    if operation is Operation.PAYOUT or operation is Operation.REFUND:
        return f"{RESOURCE_KINDS[operation]}:{reason}"
    return reason


MONEY_TRUTH = MoneyTruth(
    not_found_grace_s=300.0,
    not_found_is_final_after_grace=True,
    pending_bound_s=3600.0,
    pull_carries=frozenset({"status", "amount", "currency", "payer", "receipt", "reason"}),
    callback_carries=frozenset({"status", "amount", "currency", "payer", "receipt", "reason"}),
    callback_auth="none",
    pull_path=(
        "GET /collection/v1_0/requesttopay/{id}, /disbursement/v1_0/transfer/{id} or "
        "/disbursement/v1_0/refund/{id}, where id is the X-Reference-Id derived from the "
        "idempotency key: every payment that was sent can be pulled"
    ),
    sources=(
        "momodeveloper.mtn.com, Collection 'RequesttoPay' POST (202 Accepted, the request is queued) "
        "and GET (404 'Resource not found' for an id it does not hold): a 404 after the grace means "
        "the request was never created, so nothing was charged",
        "not_found_grace_s: MTN documents no lookup lag; integrators report 404 RESOURCE_NOT_FOUND for "
        "a few seconds after a 202, so 300 s is a conservative choice",
        "pending_bound_s: a request to pay fails EXPIRED when the payer does not approve within "
        "minutes (sandbox: 5 min); transfers settle in seconds to minutes; 3600 s covers both with "
        "room for MoMo's own delays (conservative choice)",
        "momodeveloper.mtn.com, API documentation 'Callback': callbacks by PUT or POST, payload like "
        "the GET status, no signature; retried (20 x 1 s, then every 2 min, then hourly) when the "
        "listener does not answer",
        "momodeveloper.mtn.com, 'Common Error Codes' (RESOURCE_NOT_FOUND, RESOURCE_ALREADY_EXIST)",
    ),
)
"""What MoMo's pulls and callbacks carry, and how long a payment may stay open there."""


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
    callback_url: str | None = Field(
        None,
        description=(
            "where MoMo calls back (its host must be the registered providerCallbackHost); each request "
            "sends X-Callback-Url <callback_url>/<X-Reference-Id>, since MoMo's callback body does not "
            "name the request. Polling works without it"
        ),
    )
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
    if not isinstance(currency, str) or len(currency) != 3 or isinstance(amount, bool):
        return None
    try:
        value = Decimal(str(amount))
    except (InvalidOperation, ValueError):
        return None
    if not value.is_finite():
        return None
    minor = value * (10 ** MINOR_UNIT_EXPONENTS.get(currency.upper(), 2))
    if minor <= 0 or minor != minor.to_integral_value():
        return None
    try:
        return Money(amount_minor=int(minor), currency=currency.upper())
    except ValueError:  # beyond MAX_AMOUNT_MINOR, or not an ISO code
        return None


def party_phone(party: Any) -> str | None:
    """The E.164 number of a MoMo party (`{partyIdType: MSISDN, partyId: "2567..."}`), if it is one."""
    if not isinstance(party, Mapping) or str(party.get("partyIdType", "")).upper() != "MSISDN":
        return None
    digits = str(party.get("partyId") or "").strip().lstrip("+")
    phone = f"+{digits}"
    return phone if E164_RE.match(phone) else None


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


def _status_of(raw_status: str) -> TransactionStatus:
    if raw_status == "SUCCESSFUL":
        return TransactionStatus.SUCCEEDED
    if raw_status in PENDING_STATUSES:
        return TransactionStatus.PENDING
    if raw_status in FAILED_STATUSES:
        return TransactionStatus.FAILED
    return TransactionStatus.UNKNOWN


def _refunded_reference(body: Mapping[str, Any]) -> str | None:
    """The collection a refund body names: `referenceIdToRefund`, else our own `externalId`
    (`refund-<X-Reference-Id>`, a UUIDv4: no idempotency key of a payment is mistaken for it)."""
    named = body.get("referenceIdToRefund")
    if isinstance(named, str) and named:
        return named
    external_id = body.get("externalId")
    if isinstance(external_id, str) and external_id.startswith(REFUND_EXTERNAL_PREFIX):
        candidate = external_id[len(REFUND_EXTERNAL_PREFIX) :]
        try:
            parsed = uuid.UUID(candidate)
        except ValueError:
            return None
        if parsed.version == 4 and str(parsed) == candidate:
            return candidate
    return None


def _split_ids(value: str | None) -> list[str]:
    return [part for part in (value or "").split(",") if part]


class MtnMomoAdapter(AdapterBase[MtnMomoSettings]):
    """Speaks the MoMo Open API: per-product tokens, request-to-pay, transfers, refunds."""

    name = PROVIDER
    capabilities = capabilities_for(SANDBOX_ENVIRONMENT, disbursement=True)
    """Class default (the sandbox); each instance narrows it to its configured market."""
    money_truth = MONEY_TRUTH
    error_rules = ERROR_RULES
    """Every MoMo answer this adapter classifies, with its class and source (README table)."""
    customer_codes = CUSTOMER_CODES
    """Failure reasons of final results that are the customer's (`transfer:<reason>` for payouts)."""

    def __init__(
        self,
        settings: MtnMomoSettings,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        settings_loader: Callable[[], MtnMomoSettings] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            settings, clock, timeout_s=timeout_s, settings_loader=settings_loader, transport=transport
        )
        self._tokens: dict[Product, TokenCache] = {
            product: TokenCache(clock, partial(self._fetch_token, product))
            for product in ("collection", "disbursement")
        }
        # A cache of which product a reference went to; `status(context=...)` never needs it.
        self._products = RecentMap()
        self.capabilities = self._capabilities()

    def _capabilities(self) -> ProviderCapabilities:
        return capabilities_for(
            self._settings.target_environment,
            disbursement=self._settings.disbursement_subscription_key is not None,
        )

    # --- identity ------------------------------------------------------------------------

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

    # --- lifecycle hooks -----------------------------------------------------------------

    def _settings_reloaded(self) -> None:
        self.capabilities = self._capabilities()

    def _reset_credentials(self) -> None:
        for cache in self._tokens.values():
            cache.drop()

    async def _warm_credentials(self) -> None:
        await self._tokens["collection"].get()
        if self._settings.disbursement_subscription_key is not None:
            await self._tokens["disbursement"].get()

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

    async def _fetch_token(self, product: Product) -> AccessToken:
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
        # MTN's advice (refresh ten minutes early), but never more than a quarter of a token's
        # life, so a short-lived token is not re-minted on every call.
        margin_s = min(self._settings.token_refresh_margin_s, lifetime_s / 4)
        return AccessToken(value, self._clock.monotonic() + lifetime_s - margin_s)

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
        cache = self._tokens[product]
        for attempt in (1, 2):
            token = await cache.get()
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
                cache.drop(token)
                continue
            return response, json_object(response)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- errors --------------------------------------------------------------------------

    def _error(
        self,
        response: httpx.Response,
        body: dict[str, Any],
        *,
        mutating: bool,
        what: str,
        kind: ResourceKind | None = None,
    ) -> ProviderError:
        """Classify a MoMo failure: `{code, message}`, APIM's `{statusCode, message}`, or `{error}`.

        MoMo's `code` decides through `ERROR_RULES` (on `kind`, the resource asked for); a 5xx
        with no listed code is ambiguous; any other status is left to http.py's table.
        """
        code = body.get("code") or body.get("error")
        message = (
            body.get("message") or body.get("error_description") or code or f"HTTP {response.status_code}"
        )
        rule = _rule_for(str(code) if code else None, kind)
        if rule is None and response.status_code >= 500:
            rule = _OTHER_5XX
        error_class = rule.error_class if rule is not None else None
        if error_class is ErrorClass.AMBIGUOUS and not mutating:
            error_class = ErrorClass.NOT_PROCESSED  # a read moves no money
        return self._provider_error(
            response, error_class, f"{what}: {message}", code=str(code) if code else None, mutating=mutating
        )

    @staticmethod
    def _code(body: Mapping[str, Any]) -> str:
        return str(body.get("code") or "")

    # --- probe ---------------------------------------------------------------------------

    async def _probe_once(self) -> str:
        """`GET /collection/v1_0/account/balance` (read-only)."""
        response, body = await self._call(
            "collection", "GET", "/collection/v1_0/account/balance", mutating=False, what="balance"
        )
        if response.status_code != 200:
            raise self._error(response, body, mutating=False, what="balance")
        return f"collection balance in {body.get('currency', '?')} retrieved"

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

    def _headers(self, resource_id: str) -> dict[str, str]:
        headers = {"X-Reference-Id": resource_id}
        if self._settings.callback_url:
            # MoMo's callback body does not name the request: the URL does.
            headers["X-Callback-Url"] = f"{self._settings.callback_url.rstrip('/')}/{resource_id}"
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
            Operation.COLLECT, "/collection/v1_0/requesttopay", reference, payload, request.money
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
            Operation.PAYOUT, "/disbursement/v1_0/transfer", reference, payload, request.money
        )

    async def _submit(
        self, operation: Operation, path: str, reference: str, payload: dict[str, Any], money: Money
    ) -> ProviderTransaction:
        product: Product = "collection" if operation is Operation.COLLECT else "disbursement"
        what = "request to pay" if product == "collection" else "transfer"
        self._products.remember(reference, product)
        response, body = await self._call(
            product,
            "POST",
            path,
            mutating=True,
            what=what,
            payload=payload,
            headers=self._headers(reference),
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
            try:
                existing = await self._pull(operation, reference)
            except ProviderError as exc:
                if exc.code != NOT_FOUND_CODE:
                    raise
                # The 409 proves MoMo holds it; its lookup just does not show it yet.
                return ProviderTransaction(
                    provider=PROVIDER,
                    reference=reference,
                    provider_reference=reference,
                    status=TransactionStatus.UNKNOWN,
                    provider_code=DUPLICATE_CODE,
                    provider_message=f"{what}: MoMo already holds this X-Reference-Id (409) but its "
                    "lookup does not show it yet",
                    raw_status=DUPLICATE_CODE,
                )
            if existing.money is not None and existing.money != money:
                raise ProviderError(
                    PROVIDER,
                    ErrorClass.INVALID_REQUEST,
                    f"{what}: reference {reference} already holds a different payment",
                    code=DUPLICATE_CODE,
                    http_status=409,
                )
            return existing
        raise self._error(response, body, mutating=True, what=what, kind=RESOURCE_KINDS[operation])

    # --- status --------------------------------------------------------------------------

    async def status(
        self, reference: str, provider_reference: str | None = None, *, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        """Where a payment stands, pulled from MoMo every time.

        With `context`, its operation picks the resource (request to pay, transfer, refund) and
        nothing from this instance's memory is needed. Without it, a reference this instance sent
        goes to its product; an unknown one is looked up as a request to pay, then as a transfer.
        A collection whose refunds (learnt under `refund_ids`) add up to its amount is reported
        `reversed`. Raises `ProviderError(code="not_found")` when MoMo answers 404 for it.
        """
        if context is not None:
            if context.operation is Operation.REFUND:
                refund_id = (
                    provider_reference
                    or context.provider_reference
                    or self.refund_reference_for(context.reference, context.money)
                )
                txn = await self._pull(Operation.REFUND, refund_id)
                return txn.model_copy(update={"reference": context.reference})
            txn = await self._pull(context.operation, reference)
            if context.operation is Operation.COLLECT and txn.status is TransactionStatus.SUCCEEDED:
                return await self._with_refunds(txn, context)
            return txn
        known = self._products.get(reference)
        operations = (
            [Operation.COLLECT if known == "collection" else Operation.PAYOUT]
            if known
            else [Operation.COLLECT]
        )
        if known is None and self._settings.disbursement_subscription_key is not None:
            operations.append(Operation.PAYOUT)
        for operation in operations:
            try:
                txn = await self._pull(operation, reference)
            except ProviderError as exc:
                if exc.code == NOT_FOUND_CODE:
                    continue
                raise
            if operation is Operation.COLLECT and txn.status is TransactionStatus.SUCCEEDED:
                return await self._with_refunds(txn, None)
            return txn
        raise ProviderError(
            PROVIDER,
            ErrorClass.NOT_PROCESSED,
            f"no request to pay or transfer {reference}",
            code=NOT_FOUND_CODE,
            http_status=404,
        )

    async def _pull(self, operation: Operation, resource: str) -> ProviderTransaction:
        """`GET` one resource: a request to pay, a transfer or a refund, by its X-Reference-Id."""
        product: Product = "collection" if operation is Operation.COLLECT else "disbursement"
        kind = RESOURCE_KINDS[operation]
        response, body = await self._call(
            product, "GET", f"/{product}/v1_0/{kind}/{resource}", mutating=False, what=f"{kind} status"
        )
        if response.status_code == 404 or self._code(body) in NOT_FOUND_CODES:
            # Right after a 202 this may only mean "not visible yet": the engine decides.
            raise ProviderError(
                PROVIDER,
                ErrorClass.NOT_PROCESSED,
                f"{kind} status: {short(body.get('message') or 'not found')}",
                code=NOT_FOUND_CODE,
                http_status=response.status_code,
            )
        if response.status_code != 200 or "status" not in body:
            raise self._error(response, body, mutating=False, what=f"{kind} status", kind=kind)
        if kind != "refund":
            self._products.remember(resource, product)
        txn = self._transaction(resource, body, operation)
        self._learn(resource, FINANCIAL_ID, txn.raw.get("financialTransactionId"))
        return txn

    @staticmethod
    def _transaction(resource: str, body: dict[str, Any], operation: Operation) -> ProviderTransaction:
        raw_status = str(body.get("status", "")).upper()
        reason_code, reason_message = _reason(body)
        raw: dict[str, Any] = {}
        financial_id = body.get("financialTransactionId")
        if financial_id:
            raw["financialTransactionId"] = str(financial_id)
        # "payer" is the customer's wallet the pull names: the payer of a request to pay, the
        # payee of a transfer (what the engine compares with the payment's phone).
        customer = party_phone(body.get("payee") if operation is Operation.PAYOUT else body.get("payer"))
        if customer is not None:
            raw["payer"] = customer
        if isinstance(body.get("externalId"), str):
            raw["externalId"] = body["externalId"]
        return ProviderTransaction(
            provider=PROVIDER,
            reference=resource,
            provider_reference=resource,
            status=_status_of(raw_status),
            money=money_of(body.get("amount"), body.get("currency")),  # only what the pull carries
            provider_code=(_result_code(reason_code, operation) if reason_code else raw_status) or None,
            provider_message=short(reason_message or reason_code or raw_status),
            raw_status=raw_status or None,
            raw=raw,
        )

    async def _with_refunds(
        self, txn: ProviderTransaction, context: PaymentContext | None
    ) -> ProviderTransaction:
        """A succeeded collection whose succeeded refunds cover its amount is `reversed`."""
        refund_ids = _split_ids(self._identifier(txn.reference, REFUND_IDS, context))
        if context is not None:  # memory may hold fewer than the store after a restart
            refund_ids += [i for i in _split_ids(context.identifiers.get(REFUND_IDS)) if i not in refund_ids]
        refunded_minor = 0
        for refund_id in refund_ids:
            try:
                refund = await self._pull(Operation.REFUND, refund_id)
            except ProviderError as exc:
                if exc.code == NOT_FOUND_CODE:  # that refund's POST never got through (yet)
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
        refund's own id): pending until MoMo settles it; see `refund_status`. The refund's id is
        reported under `refund_ids` before the request leaves.
        """
        if transaction.status is not TransactionStatus.SUCCEEDED:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only a succeeded collection")
        if self._products.get(transaction.reference, "collection") != "collection":
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only collections are refunded")
        original = transaction.money
        amount = money or original
        if amount is None:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: the amount is unknown")
        if original is not None and (
            amount.currency != original.currency or amount.amount_minor > original.amount_minor
        ):
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                "refund: more than, or another currency than, the payment",
            )
        refund_reference = self.refund_reference_for(transaction.reference, amount)
        known = _split_ids(self._identifier(transaction.reference, REFUND_IDS))
        if refund_reference not in known:
            self._learn(transaction.reference, REFUND_IDS, ",".join([*known, refund_reference]))
        payload = {
            "amount": amount_text(amount),
            "currency": amount.currency,
            "externalId": f"{REFUND_EXTERNAL_PREFIX}{transaction.reference}",
            "payerMessage": "refund",
            "payeeNote": "refund",
            "referenceIdToRefund": transaction.reference,
        }
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
        raise self._error(response, body, mutating=True, what="refund", kind="refund")

    async def refund_status(self, refund_reference: str) -> ProviderTransaction:
        """Where one refund stands (`GET /disbursement/v1_0/refund/{id}`)."""
        return await self._pull(Operation.REFUND, refund_reference)

    # --- callbacks -----------------------------------------------------------------------

    def parse_callback(
        self, body: bytes, headers: Mapping[str, str], *, path_kind: str, path_reference: str | None
    ) -> CallbackHint | None:
        """What one MoMo callback claims (unsigned: `authenticated` is always False).

        The body is the `GET` status body of the request to pay, transfer or refund; its
        X-Reference-Id comes from our URL (`<callback_url>/<X-Reference-Id>`), else from
        `referenceId` when MoMo adds it, else (collections, transfers) from `externalId`, which is
        our idempotency key. The operation is the URL's `<kind>` when that names one, else the
        body's: a refund's `externalId` is ours (`refund-<collection X-Reference-Id>`), a transfer
        has a payee, a request to pay a payer. A pre-approval result says nothing about a
        payment: None.
        """
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedCallback(f"MoMo callback: not JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise MalformedCallback("MoMo callback: not a JSON object")
        if "amount" not in data and any(
            k in data for k in ("payerCurrency", "validityTime", "expirationDateTime")
        ):
            return None  # a pre-approval's result: no payment
        raw_status = data.get("status")
        if not isinstance(raw_status, str) or not raw_status:
            raise MalformedCallback("MoMo callback: missing status")
        if "amount" not in data or "currency" not in data:
            raise MalformedCallback("MoMo callback: missing amount or currency")
        money = money_of(data.get("amount"), data.get("currency"))
        if money is None:
            raise MalformedCallback("MoMo callback: amount/currency is not an amount")
        external_id = data.get("externalId")
        refunded = _refunded_reference(data)
        operation = CALLBACK_KINDS.get(path_kind)
        if operation is None:
            operation = (
                Operation.REFUND
                if refunded is not None
                else Operation.PAYOUT
                if "payee" in data
                else Operation.COLLECT
                if "payer" in data
                else None
            )
        resource = path_reference if path_reference not in _NO_REFERENCE else None
        if resource is None and isinstance(data.get("referenceId"), str) and data["referenceId"]:
            resource = data["referenceId"]
        reference = resource
        if operation is Operation.REFUND:
            reference = refunded  # our reference for a refund is the collection's (see `refund`)
        elif reference is None and isinstance(external_id, str) and external_id:
            reference = self.reference_for(external_id)
            resource = reference
        upper = raw_status.upper()
        reason_code, reason_message = _reason(data)
        party = data.get("payee") if operation is Operation.PAYOUT else data.get("payer")
        financial_id = data.get("financialTransactionId")
        return CallbackHint(
            provider=PROVIDER,
            reference=reference,
            provider_reference=resource,
            operation=operation,
            status=_status_of(upper),
            money=money,
            payer=party_phone(party),
            provider_code=short(_result_code(reason_code, operation) if reason_code else upper),
            provider_message=short(reason_message or reason_code or upper),
            extras={FINANCIAL_ID: short(financial_id)} if financial_id else {},
            authenticated=False,  # MoMo signs nothing
        )
