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
  (alphanumeric: a hyphen breaks the later enquiry), derived here from the idempotency key.
  Answers arrive inside HTTP 200 bodies: `status: {code, message, result_code, response_code,
  success}`; `DP00800001006` "in process" means the push reached the customer. Result codes:
  ESB000010 ok, ESB000008 field validation, ESB000033/35/36 bad msisdn/currency, ESB000039
  vendor not configured for the country, ESB000041 "External Transaction ID already exists",
  ESB000045 "No Transaction Found With Provided Transaction Id".
- Enquiry: `GET /standard/v1/payments/{id}` -> `data.transaction {id, status, airtel_money_id,
  message}` and nothing else: no amount, no payer. Status TS (success), TF (failed), TE
  (expired), TIP (in progress) and **TA: ambiguous** - Airtel itself does not know yet; it is
  *not* pending and *not* failed, so it maps to `unknown` and must be re-queried, never retried.
  Response codes DP00800001000 ambiguous, ...001 success, ...002 wrong PIN, ...003 limit,
  ...004 invalid amount, ...005 no PIN entered, ...006 in process, ...007 no balance,
  ...008 refused, ...010 payee barred, ...024 timed out, ...025 not found, ...029 expired. An id
  Airtel does not know is answered `success: false`, ESB000045 / DP00800001025: `status()`
  raises `not_found` (right after a push it may only be "too early": the engine's grace).
- Refund: `POST /standard/v1/payments/refund` `{transaction: {airtel_money_id}}` (full amount,
  answered at once). Airtel offers no refund enquiry.
- Disbursement: `POST /standard/v2/disbursements/` `{payee: {msisdn, wallet_type}, reference,
  pin, transaction: {amount, id, type: "B2C"}}` where `pin` is the disbursement PIN
  RSA-encrypted (PKCS#1 v1.5) with Airtel's public key, base64. Enquiry (the v2 one that
  matches a v2 disbursement, as the 121 platform uses it)
  `GET /standard/v2/disbursements/{id}?transactionType=B2C`; codes DP00900001001 success,
  ...000 ambiguous, ...006 in process, ...011 "transaction with similar information already
  exists" and ...017 duplicate id, ...014 timed out ("may be processed"), ...015 not found.
- Callback ("collection callback", a URL set on the Airtel developer dashboard): a POST of
  `{"transaction": {"id", "message", "status_code": "TS"|"TF", "airtel_money_id"}}`. Unsigned
  by default; with "callback authentication" enabled for the app, Airtel adds `"hash"`: the
  HMAC-SHA256, base64, of the payload (`{"transaction": {...}}` as compact JSON) keyed with the
  private key shown in the app's settings. Set `AIRTEL_MONEY_CALLBACK_PRIVATE_KEY` to require
  and verify it. The callback carries no amount and no payer (only the message text).
- Probe: `GET /standard/v1/users/balance` (read-only).
- Classification: `ERROR_RULES` (each rule cites Airtel's code tables) is the one table `_error`
  reads. The customer's codes (wrong PIN, no balance, limit, no answer, barred or unknown number)
  are `customer`, also as the final codes of a failed enquiry (`customer_codes`); the merchant's
  disbursement float or limits, and a router that cannot route the request, are `not_processed`;
  DP...000 / DP00900001014 / ESB000004 are `ambiguous` whatever `success` says; a disbursement
  refused with a code no table lists stays `ambiguous` (nothing says it was not sent).

Identifiers reported to the engine (`identifier_sink`), by kind:

- `airtel_money_id`: Airtel's id of a collection or disbursement (from an answer, a pull);
- `airtel_reference_id`: the `reference_id` a disbursement answer may carry;
- `refund_airtel_money_id`: the id of a succeeded refund (a collection with one is `reversed`);
  `pending_refund_airtel_money_id` if a refund answer was not final.

Not implemented: v2 message signing (`x-signature`/`x-key`, only for merchants who enabled it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.adapter import AccessToken, AdapterBase, RecentMap, TokenCache
from mcp_autonomy.providers.base import (
    NOT_FOUND_CODE,
    CallbackAuthError,
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
DISBURSEMENT_TIMED_OUT = "DP00900001014"
""""The transaction may be processed or failed due to time out": ambiguous, never a refusal."""
DISBURSEMENT_NOT_FOUND = "DP00900001015"
ESB_OK = "ESB000010"
ESB_DUPLICATE = "ESB000041"
ESB_NOT_FOUND = "ESB000045"
AIRTEL_COLLECTION_CODES = "developers.airtel.africa, Collection APIs: response codes (DP008000010xx)"
AIRTEL_DISBURSEMENT_CODES = "developers.airtel.africa, Disbursement APIs: response codes (DP009000010xx)"
AIRTEL_RESULT_CODES = "developers.airtel.africa, result codes (ESB0000xx)"
AIRTEL_ROUTER_CODES = "developers.airtel.africa, router error codes (ROUTERxxx)"
_DISBURSEMENT_FAILED = (
    f"{AIRTEL_DISBURSEMENT_CODES}: a failed code, distinct from the ambiguous DP00900001000 and "
    "DP00900001014 ('may be processed or failed')"
)


def _rules(error_class: ErrorClass, source: str, *rows: tuple[str, str]) -> tuple[ErrorRule, ...]:
    return tuple(
        ErrorRule(match=code, error_class=error_class, meaning=meaning, source=source)
        for code, meaning in rows
    )


_NOT_FOUND_RULES: tuple[ErrorRule, ...] = (
    *_rules(
        ErrorClass.NOT_PROCESSED,
        "a read (enquiry) moves no money; the engine weighs not_found with money_truth's grace",
        (COLLECTION_NOT_FOUND, "collection enquiry: Transaction Not Found (raised as not_found)"),
        (DISBURSEMENT_NOT_FOUND, "disbursement enquiry: Transaction Not Found (raised as not_found)"),
        (ESB_NOT_FOUND, "enquiry: No Transaction Found With Provided Transaction Id (raised as not_found)"),
    ),
)
_DUPLICATE_RULES: tuple[ErrorRule, ...] = _rules(
    ErrorClass.AMBIGUOUS,
    f"{AIRTEL_DISBURSEMENT_CODES} / {AIRTEL_RESULT_CODES}",
    (ESB_DUPLICATE, "External Transaction ID already exists: answered with the first payment's enquiry"),
    ("DP00900001011", "transaction with similar information already exists: answered with the first one"),
    ("DP00900001017", "Duplicate Transaction Id: answered with the first one's enquiry"),
)
"""A resend meeting the first attempt: answered with it (`unknown` while its enquiry cannot see it)."""

_SYNC_RULES: tuple[ErrorRule, ...] = (
    *_rules(
        ErrorClass.AUTH,
        "Airtel OAuth2 token errors (RFC 6749 section 5.2 error codes)",
        ("invalid_client", "wrong client id or secret"),
        ("invalid_token", "the access token is invalid or expired (replaced once, then auth)"),
        ("unauthorized_client", "the app may not use this grant"),
    ),
    *_rules(
        ErrorClass.AUTH,
        AIRTEL_ROUTER_CODES,
        ("ROUTER114", "disbursement: an error while validating the merchant's PIN"),
        ("ROUTER115", "disbursement: the merchant's PIN is incorrect"),
        ("ROUTER116", "disbursement: the encrypted PIN is wrong (key or padding)"),
    ),
    *_rules(
        ErrorClass.AUTH,
        f"{AIRTEL_COLLECTION_CODES} / {AIRTEL_DISBURSEMENT_CODES}",
        ("DP00800001026", "Forbidden: x-signature and payload did not match"),
        ("DP00900001016", "Forbidden: x-signature and payload did not match"),
    ),
    *_rules(
        ErrorClass.NOT_PROCESSED,
        f"{AIRTEL_ROUTER_CODES}: refused by Airtel's API router before it routes the request",
        ("ROUTER001", "the wallet is not configured: refused before routing (another provider may carry it)"),
        ("ROUTER005", "the country route is not configured: refused before routing"),
        ("ROUTER007", "not authorised for this country: refused before routing"),
    ),
    ErrorRule(
        match="ESB000039",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="the vendor is not configured for this country: refused before any push",
        source=f"{AIRTEL_RESULT_CODES}: 'Vendor is not configured to do transaction in the country'",
    ),
    *_rules(
        ErrorClass.NOT_PROCESSED,
        _DISBURSEMENT_FAILED,
        ("DP00900001003", "disbursement: the merchant's maximum transaction limit for the day is reached"),
        ("DP00900001005", "disbursement: Transaction failed (nothing was sent)"),
        ("DP00900001007", "disbursement: not enough funds in the merchant's disbursement wallet (its float)"),
        ("DP00900001009", "disbursement: the initiatee (the merchant's wallet) is invalid"),
        ("DP00900001010", "disbursement: the payer (the merchant's wallet) is not an allowed user"),
    ),
    *_rules(
        ErrorClass.CUSTOMER,
        AIRTEL_COLLECTION_CODES,
        ("DP00800001002", "collection: the customer entered an incorrect PIN"),
        ("DP00800001003", "collection: the customer exceeded their wallet's transaction limit"),
        ("DP00800001005", "collection: the customer did not enter the PIN"),
        ("DP00800001007", "collection: the customer's wallet does not have enough money"),
        ("DP00800001008", "collection: the customer refused the transaction"),
        ("DP00800001010", "collection: the customer is barred or not registered on Airtel Money"),
        ("DP00800001024", "collection: the push timed out waiting for the customer"),
        ("DP00800001029", "collection: the transaction expired before the customer answered"),
    ),
    ErrorRule(
        match="DP00900001012",
        error_class=ErrorClass.CUSTOMER,
        meaning="disbursement: the customer's mobile number is not a valid Airtel Money number",
        source=f"{AIRTEL_DISBURSEMENT_CODES}: 'Mobile number entered is incorrect'",
    ),
    *_rules(
        ErrorClass.INVALID_REQUEST,
        AIRTEL_RESULT_CODES,
        ("ESB000008", "field validation"),
        (
            "ESB000011",
            "the request failed (Airtel says no more): the payment fails, never fails over on so little",
        ),
        ("ESB000033", "invalid MSISDN length"),
        ("ESB000034", "invalid country"),
        ("ESB000035", "invalid currency"),
        ("ESB000036", "invalid MSISDN length (national form expected)"),
    ),
    *_rules(
        ErrorClass.INVALID_REQUEST,
        AIRTEL_ROUTER_CODES,
        ("ROUTER003", "mandatory header or body parameters are missing"),
        ("ROUTER006", "invalid country code"),
        ("ROUTER112", "invalid currency"),
    ),
    *_rules(
        ErrorClass.INVALID_REQUEST,
        f"{AIRTEL_COLLECTION_CODES} / {AIRTEL_DISBURSEMENT_CODES}",
        ("DP00800001004", "collection: the amount is below the minimum allowed"),
        ("DP00900001004", "disbursement: the amount is out of the defined limits"),
        ("DP00900001013", "disbursement: the transaction was refused"),
    ),
    ErrorRule(
        match=COLLECTION_AMBIGUOUS,
        error_class=ErrorClass.AMBIGUOUS,
        meaning="collection: still processing, ambiguous: enquire, never resend",
        source=f"{AIRTEL_COLLECTION_CODES}: 'ambiguous state. Please do the transaction enquiry'",
    ),
    ErrorRule(
        match=DISBURSEMENT_AMBIGUOUS,
        error_class=ErrorClass.AMBIGUOUS,
        meaning="disbursement: still processing, ambiguous: enquire, never resend",
        source=f"{AIRTEL_DISBURSEMENT_CODES}: 'ambiguous state. Please do the transaction enquiry'",
    ),
    ErrorRule(
        match=DISBURSEMENT_TIMED_OUT,
        error_class=ErrorClass.AMBIGUOUS,
        meaning="disbursement: timed out, 'may be processed or failed'",
        source=f"{AIRTEL_DISBURSEMENT_CODES}: 'To know the exact status please do the transaction enquiry'",
    ),
    ErrorRule(
        match="ESB000004",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="an error occurred while initiating the payment: the push may be on the phone",
        source=f"{AIRTEL_RESULT_CODES}: 'The request can be in ambiguous state please do a transaction enquiry'",
    ),
    ErrorRule(
        match="ESB000014",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="an error while fetching the transaction status (a read: not_processed there)",
        source=f"{AIRTEL_RESULT_CODES}: 'ambiguous state please do a transaction enquiry after some time'",
    ),
    ErrorRule(
        match="ESB000001",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="'Something went wrong': Airtel failed at an unknown point",
        source=NO_SOURCE,
    ),
    ErrorRule(
        match="ROUTER117",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="Request Timeout at the router: the request may have been routed",
        source=NO_SOURCE,
    ),
)
"""Every code this adapter classifies, looked for in `status.response_code`, `status.result_code`
and `status.code` (an ambiguous one wins: never less careful than the most careful code)."""

_ANSWER_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        match="HTTP 200, success false, unlisted code: collection or refund",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Airtel validated and refused the request (no failover on an unknown code)",
        source="developers.airtel.africa: status.success false = the request was not successful",
    ),
    ErrorRule(
        match="HTTP 200, success false, unlisted code: disbursement",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="an unknown disbursement code: nothing says it was not sent; enquire first",
        source=NO_SOURCE,
    ),
    ErrorRule(
        match="HTTP 200, success false, unlisted code: a read (enquiry, balance)",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="a read refused: it moved no money",
        source="a read moves no money (http.TRANSPORT_RULES)",
    ),
    ErrorRule(
        match="HTTP 5xx with an unlisted code (or none)",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="Airtel or its gateway failed at an unknown point, possibly after accepting",
        source=NO_SOURCE,
    ),
)
_UNLISTED_REFUSAL, _UNLISTED_DISBURSEMENT, _UNLISTED_READ, _OTHER_5XX = _ANSWER_RULES

_RESULT_RULES: tuple[ErrorRule, ...] = tuple(
    ErrorRule(
        match=final_result(rule.match), error_class=rule.error_class, meaning=rule.meaning, source=rule.source
    )
    for rule in _SYNC_RULES
    if rule.error_class is ErrorClass.CUSTOMER
)
"""A failed enquiry's `status.response_code` that is the customer's (the callback carries only
TS/TF: the engine confirms it by an enquiry, which carries the code)."""

ERROR_RULES: tuple[ErrorRule, ...] = (
    _NOT_FOUND_RULES + _DUPLICATE_RULES + _SYNC_RULES + _ANSWER_RULES + _RESULT_RULES
)
CUSTOMER_CODES = customer_codes_of(_RESULT_RULES)
NOT_FOUND_CODES = frozenset(rule.match for rule in _NOT_FOUND_RULES)
DUPLICATE_CODES = frozenset(rule.match for rule in _DUPLICATE_RULES)
_RULE_BY_CODE = {rule.match: rule for rule in _SYNC_RULES}
TOKEN_REJECTED = "invalid_token"
OAUTH_REFUSALS = frozenset(("invalid_client", TOKEN_REJECTED, "unauthorized_client"))


def _status_codes(body: Mapping[str, Any]) -> list[str]:
    """The codes an answer carries: OAuth's `error`, then `status.response_code`, `result_code`, `code`."""
    status = _status_block(body)
    candidates = (
        body.get("error"),
        status.get("response_code"),
        status.get("result_code"),
        status.get("code"),
    )
    return [str(code) for code in candidates if code not in (None, "")]


def _rule_for(body: Mapping[str, Any]) -> ErrorRule | None:
    """The rule for an answer's codes: an ambiguous one if any, else the first listed one."""
    rules = [rule for code in _status_codes(body) if (rule := _RULE_BY_CODE.get(code)) is not None]
    ambiguous = [rule for rule in rules if rule.error_class is ErrorClass.AMBIGUOUS]
    chosen = ambiguous or rules
    return chosen[0] if chosen else None


MONEY_ID = "airtel_money_id"
REFERENCE_ID = "airtel_reference_id"
REFUND_ID = "refund_airtel_money_id"
PENDING_REFUND_ID = "pending_refund_airtel_money_id"
CALLBACK_KINDS: dict[str, Operation] = {
    "collect": Operation.COLLECT,
    "collection": Operation.COLLECT,
    "payout": Operation.PAYOUT,
    "disbursement": Operation.PAYOUT,
    "refund": Operation.REFUND,
}
"""The `<kind>` segment of the dashboard's callback URL, when it names one."""
_NO_REFERENCE = frozenset({"", "-"})

MONEY_TRUTH = MoneyTruth(
    not_found_grace_s=120.0,
    not_found_is_final_after_grace=False,
    pending_bound_s=3600.0,
    pull_carries=frozenset({"status", "provider_reference", "reason"}),
    callback_carries=frozenset({"status", "provider_reference", "reason"}),
    callback_auth="none",
    pull_path=(
        "GET /standard/v1/payments/{id} (collections) or /standard/v2/disbursements/{id}"
        "?transactionType=B2C (payouts), id being our transaction.id derived from the idempotency "
        "key; they return only a status, airtel_money_id and a message (no amount, no payer). A "
        "refund has no enquiry: its answer is final, and one whose answer was lost cannot be pulled"
    ),
    sources=(
        "developers.airtel.africa, Collection 'Transaction Enquiry': data.transaction {id, status "
        "TS/TF/TA/TIP, airtel_money_id, message}; TA = ambiguous, enquire again",
        "developers.airtel.africa, response codes: DP00800001025 / DP00900001015 'Transaction Not "
        "Found', ESB000045 'No Transaction Found With Provided Transaction Id' (not documented as "
        "'never processed', so a not-found stays ambiguous)",
        "not_found_grace_s: Airtel documents no lookup lag; integrators see 'not found' right after "
        "a push; 120 s (twice the push timeout) is a conservative choice",
        "pending_bound_s: a USSD push times out after about a minute (DP00800001024) but a TA "
        "transaction stays ambiguous until Airtel resolves it; 3600 s is a conservative choice",
        "developers.airtel.africa, Collection 'Callback' (status_code TS/TF, airtel_money_id) and "
        "'Callback with authentication' (hash = base64 HmacSHA256 with the app's private key)",
        "global-121/121-platform services/121-service/src/fsp-integrations/integrations/airtel/"
        "services/airtel.api.service.ts (v2 disbursement and enquiry ?transactionType=B2C)",
    ),
)
"""What Airtel's pulls and callbacks carry, and how long a payment may stay open there.

`callback_auth` is "none": Airtel's optional callback hash (HMAC-SHA256) has no name among
`CallbackAuth`'s values; `parse_callback` verifies it when the private key is configured."""


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
    callback_private_key: SecretStr | None = Field(
        None,
        description=(
            "the private key of the app's 'callback authentication' (Airtel dashboard); with it, a "
            "callback must carry a `hash` that verifies, without it callbacks are unauthenticated"
        ),
    )
    timeout_s: float = Field(15.0, ge=0.5, le=120.0)
    token_refresh_margin_s: float = Field(30.0, ge=0.0, le=600.0)
    probe_min_interval_s: float = Field(30.0, ge=0.0, le=3600.0)

    @field_validator("countries")
    @classmethod
    def _known_countries(cls, value: list[str]) -> list[str]:
        unknown = [c for c in value if c not in MARKETS]
        if not value or unknown:
            raise ValueError(f"AIRTEL_MONEY_COUNTRIES must be some of {', '.join(MARKETS)} (got {value})")
        return value


@dataclass(frozen=True)
class _Sent:
    """Where this process sent one reference (a cache: `status(context=...)` does not need it)."""

    kind: Kind
    country: str


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


def callback_hash(transaction: Mapping[str, Any], private_key: str) -> str:
    """Airtel's callback `hash`: base64 HMAC-SHA256 of `{"transaction": {...}}` as compact JSON.

    Airtel's example signs the payload without the hash, serialised compactly in its own key
    order (id, message, status_code, airtel_money_id); `parse_callback` keeps the received order.
    """
    message = json.dumps({"transaction": transaction}, separators=(",", ":"), ensure_ascii=False)
    digest = hmac.new(private_key.encode(), message.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _transaction_data(body: Mapping[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    txn = data.get("transaction") if isinstance(data, Mapping) else None
    return dict(txn) if isinstance(txn, Mapping) else {}


def _status_block(body: Mapping[str, Any]) -> dict[str, Any]:
    status = body.get("status")
    return dict(status) if isinstance(status, Mapping) else {}


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) and str(value) else None


class AirtelMoneyAdapter(AdapterBase[AirtelMoneySettings]):
    """Speaks the Airtel Africa Open API: token cache, USSD push, enquiry, refund, disbursement."""

    name = PROVIDER
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT, Operation.PAYOUT, Operation.REFUND}),
        currencies=frozenset(currency for currency, _ in MARKETS.values()),
        countries=frozenset(MARKETS),
        refunds=True,
    )
    """Every Airtel Money market; each instance narrows it to its configured countries."""
    money_truth = MONEY_TRUTH
    error_rules = ERROR_RULES
    """Every Airtel answer this adapter classifies, with its class and source (README table)."""
    customer_codes = CUSTOMER_CODES
    """Response codes of failed enquiries that are the customer's (wrong PIN, no balance, ...)."""

    def __init__(
        self,
        settings: AirtelMoneySettings,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        settings_loader: Callable[[], AirtelMoneySettings] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            settings, clock, timeout_s=timeout_s, settings_loader=settings_loader, transport=transport
        )
        self._token = TokenCache(clock, self._fetch_token)
        self._sent = RecentMap()  # reference -> _Sent (a cache of where it went)
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

    # --- identity ------------------------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """`transaction.id`: "AM" + 18 base-36 characters of the key's SHA-256.

        Alphanumeric only (Airtel's enquiry fails on ids with hyphens) and the same on every
        retry, so Airtel's "External Transaction ID already exists" guards every resend.
        """
        digest = int.from_bytes(hashlib.sha256(idempotency_key.encode()).digest()[:16], "big")
        return "AM" + _base36(digest, REFERENCE_LENGTH - 2)

    # --- lifecycle hooks -----------------------------------------------------------------

    def _settings_reloaded(self) -> None:
        self.capabilities = self._capabilities()

    def _reset_credentials(self) -> None:
        self._token.drop()

    async def _warm_credentials(self) -> None:
        await self._token.get()

    # --- auth ----------------------------------------------------------------------------

    async def _fetch_token(self) -> AccessToken:
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
        # Early enough that a token never expires in flight, never so early (a sixth of its
        # three-minute life at most) that one is minted per call.
        margin_s = min(self._settings.token_refresh_margin_s, lifetime_s / 6)
        return AccessToken(value, self._clock.monotonic() + lifetime_s - margin_s)

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
            token = await self._token.get()
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
            if attempt == 1 and (response.status_code == 401 or body.get("error") == TOKEN_REJECTED):
                self._token.drop(token)
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
        unlisted: ErrorRule = _UNLISTED_REFUSAL,
    ) -> ProviderError:
        """Classify an Airtel failure: OAuth `{error}`, the gateway's `{message}`, or `status{}`.

        Its codes decide through `ERROR_RULES`; an answer with no listed code is `unlisted` (the
        caller's rule for a refusal inside HTTP 200) or, from 5xx, ambiguous; any other status is
        left to http.py's table.
        """
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
        rule = _rule_for(body)
        if rule is None and response.status_code < 400:
            rule = unlisted
        elif rule is None and response.status_code >= 500:
            rule = _OTHER_5XX
        error_class = rule.error_class if rule is not None else None
        if error_class is ErrorClass.AMBIGUOUS and not mutating:
            error_class = ErrorClass.NOT_PROCESSED  # a read moves no money
        return self._provider_error(
            response, error_class, f"{what}: {message}", code=str(code) if code else None, mutating=mutating
        )

    # --- probe ---------------------------------------------------------------------------

    async def _probe_once(self) -> str:
        """`GET /standard/v1/users/balance` for the primary country (read-only)."""
        country = self._settings.countries[0]
        response, body = await self._call(
            "GET", "/standard/v1/users/balance", country, mutating=False, what="balance"
        )
        if response.status_code >= 400 or _status_block(body).get("success") is not True:
            raise self._error(response, body, mutating=False, what="balance", unlisted=_UNLISTED_READ)
        return f"{country} balance retrieved"

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
        self._sent.remember(reference, _Sent("collection", country))
        response, body = await self._call(
            "POST", "/merchant/v2/payments/", country, mutating=True, what="payment", payload=payload
        )
        status = _status_block(body)
        codes = {str(status.get("response_code") or ""), str(status.get("result_code") or "")}
        if codes & DUPLICATE_CODES:
            # Airtel already holds a payment under this id: an earlier attempt got through.
            return await self._replay(reference, Operation.COLLECT, country, "payment")
        if response.status_code >= 400 or status.get("success") is not True:
            raise self._error(response, body, mutating=True, what="payment")
        data = _transaction_data(body)
        self._learn(reference, MONEY_ID, _text(data.get("airtel_money_id")))
        rule = _rule_for(body)
        if rule is not None and rule.error_class is ErrorClass.AMBIGUOUS:
            # "Success" that says ambiguous (DP00800001000): the push may or may not be out.
            raise ProviderError(
                PROVIDER,
                ErrorClass.AMBIGUOUS,
                f"payment: {short(status.get('message') or 'ambiguous')}",
                code=rule.match,
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

    async def _replay(
        self, reference: str, operation: Operation, country: str, what: str
    ) -> ProviderTransaction:
        """A resend Airtel refused as a duplicate: the first one's state (never a second payment).

        Airtel's enquiry carries no amount, so the first payment's amount cannot be compared here.
        """
        kind: Kind = "collection" if operation is Operation.COLLECT else "disbursement"
        try:
            return await self._enquire(kind, reference, country)
        except ProviderError as exc:
            if exc.code != NOT_FOUND_CODE:
                raise
        # The duplicate refusal proves Airtel holds it; its enquiry just does not show it yet.
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=reference,
            status=TransactionStatus.UNKNOWN,
            provider_message=f"{what}: Airtel already holds this id but its enquiry does not show it yet",
            raw_status="duplicate",
        )

    # --- status --------------------------------------------------------------------------

    async def status(
        self, reference: str, provider_reference: str | None = None, *, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        """Enquire about a payment under our id, from Airtel every time.

        With `context`, its operation picks the enquiry (collection or disbursement) and its
        country the `X-Country`. Without it, a reference this instance sent goes to its enquiry;
        an unknown one is tried as a collection, then as a disbursement, in the first configured
        country. `TA` (ambiguous) is `unknown`, never pending or failed. A refund has no enquiry:
        `unknown`. A succeeded collection with a learnt `refund_airtel_money_id` is `reversed`.
        Raises `ProviderError(code="not_found")` when Airtel does not know the id.
        """
        sent: _Sent | None = self._sent.get(reference)
        if context is not None:
            if context.operation is Operation.REFUND:
                return ProviderTransaction(
                    provider=PROVIDER,
                    reference=reference,
                    provider_reference=provider_reference or context.provider_reference,
                    status=TransactionStatus.UNKNOWN,
                    provider_message="Airtel offers no refund enquiry: a refund's answer is final when "
                    "it comes, and one whose answer was lost cannot be pulled",
                    raw_status="no enquiry",
                )
            country = context.country if context.country in MARKETS else self._settings.countries[0]
            kinds: list[Kind] = ["collection" if context.operation is Operation.COLLECT else "disbursement"]
        else:
            country = sent.country if sent else self._settings.countries[0]
            kinds = [sent.kind] if sent else ["collection", "disbursement"]
        for kind in kinds:
            try:
                txn = await self._enquire(kind, reference, country)
            except ProviderError as exc:
                if exc.code == NOT_FOUND_CODE and kind != kinds[-1]:
                    continue
                raise
            if (
                kind == "collection"
                and txn.status is TransactionStatus.SUCCEEDED
                and self._identifier(reference, REFUND_ID, context)
            ):
                txn = txn.model_copy(update={"status": TransactionStatus.REVERSED})
            return txn
        raise AssertionError("unreachable")  # pragma: no cover

    async def _enquire(self, kind: Kind, reference: str, country: str) -> ProviderTransaction:
        if kind == "collection":
            path, params = f"/standard/v1/payments/{reference}", None
        else:
            path, params = f"/standard/v2/disbursements/{reference}", {"transactionType": "B2C"}
        response, body = await self._call(
            "GET", path, country, mutating=False, what=f"{kind} enquiry", params=params
        )
        status = _status_block(body)
        codes = {str(status.get("response_code") or ""), str(status.get("result_code") or "")}
        if codes & NOT_FOUND_CODES or response.status_code == 404:
            # Right after a push this may only mean "too early": the engine decides.
            raise ProviderError(
                PROVIDER,
                ErrorClass.NOT_PROCESSED,
                f"{kind} enquiry: {short(status.get('message') or 'not found')}",
                code=NOT_FOUND_CODE,
                http_status=response.status_code,
            )
        data = _transaction_data(body)
        raw_status = str(data.get("status") or "").upper()
        if response.status_code >= 400 or status.get("success") is not True or not raw_status:
            raise self._error(response, body, mutating=False, what=f"{kind} enquiry", unlisted=_UNLISTED_READ)
        money_id = _text(data.get("airtel_money_id"))
        self._learn(reference, MONEY_ID, money_id)
        self._sent.remember(reference, _Sent(kind, country))
        txn_status = TRANSACTION_STATUS.get(raw_status, TransactionStatus.UNKNOWN)
        message = data.get("message") or status.get("message") or ""
        if raw_status == "TA" and not message:
            message = "TA: ambiguous; Airtel does not know the outcome yet, enquire again"
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=money_id or reference,
            status=txn_status,
            money=None,  # Airtel's enquiry carries no amount
            provider_code=str(status.get("response_code") or raw_status),
            provider_message=short(message),
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
        if money is not None and money != transaction.money:
            # Airtel refunds the whole payment. An amount that cannot be checked against the
            # payment's (Airtel's enquiry carries none) could be a partial refund made full.
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                "refund: Airtel refunds the full amount only (refund without an amount, or pass the "
                "payment's amount on the transaction)",
            )
        money_id = self._identifier(transaction.reference, MONEY_ID) or _text(
            transaction.raw.get("airtel_money_id")
        )
        if not money_id:
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
        refund_id = _text(data.get("airtel_money_id")) or money_id
        self._learn(transaction.reference, REFUND_ID if succeeded else PENDING_REFUND_ID, refund_id)
        return ProviderTransaction(
            provider=PROVIDER,
            reference=transaction.reference,
            provider_reference=refund_id,
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
        self._sent.remember(reference, _Sent("disbursement", country))
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
        data = _transaction_data(body)
        self._learn(reference, MONEY_ID, _text(data.get("airtel_money_id")))
        self._learn(reference, REFERENCE_ID, _text(data.get("reference_id")))
        if DUPLICATE_CODES.intersection(_status_codes(body)):
            return await self._replay(reference, Operation.PAYOUT, country, "disbursement")  # never twice
        rule = _rule_for(body)
        if rule is not None and rule.error_class is ErrorClass.AMBIGUOUS:
            # "May be processed or failed" even inside a success: never read as a refusal.
            raise ProviderError(
                PROVIDER,
                ErrorClass.AMBIGUOUS,
                f"disbursement: {short(status.get('message') or 'ambiguous')}",
                code=rule.match,
                http_status=response.status_code,
            )
        if response.status_code >= 400 or status.get("success") is not True:
            # The rules tell the merchant's side (float, limits: not processed), the customer's
            # (a wrong number) and a bad request apart; an unknown code is never a refusal.
            raise self._error(
                response, body, mutating=True, what="disbursement", unlisted=_UNLISTED_DISBURSEMENT
            )
        raw_status = str(data.get("status") or "")
        txn_status = TRANSACTION_STATUS.get(raw_status.upper(), TransactionStatus.PENDING)
        if code == DISBURSEMENT_SUCCESS:
            txn_status = TransactionStatus.SUCCEEDED
        money_id = _text(data.get("airtel_money_id"))
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=money_id or reference,
            status=txn_status,
            money=request.money,
            provider_code=code or None,
            provider_message=short(status.get("message") or ""),
            raw_status=raw_status or None,
            raw=data,
        )

    # --- callbacks -----------------------------------------------------------------------

    def parse_callback(
        self, body: bytes, headers: Mapping[str, str], *, path_kind: str, path_reference: str | None
    ) -> CallbackHint | None:
        """What one Airtel callback claims.

        `{"transaction": {id, message, status_code, airtel_money_id}}` (+ `hash` when the app has
        callback authentication). With `callback_private_key` configured the hash is required and
        verified (`authenticated=True`); without it nothing can be verified (`authenticated=False`).
        The callback carries no amount and no payer. Airtel sends no other callback type, so a
        body without a `transaction` is malformed, never "unrelated".
        """
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedCallback(f"Airtel callback: not JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise MalformedCallback("Airtel callback: not a JSON object")
        transaction = data.get("transaction")
        if not isinstance(transaction, dict):
            raise MalformedCallback("Airtel callback: missing transaction")
        txn_id = _text(transaction.get("id"))
        if txn_id is None:
            raise MalformedCallback("Airtel callback: missing transaction.id")
        status_code = _text(transaction.get("status_code"))
        if status_code is None:
            raise MalformedCallback("Airtel callback: missing transaction.status_code")
        authenticated = self._verify_hash(data, transaction)
        if path_reference not in _NO_REFERENCE and path_reference is not None and path_reference != txn_id:
            raise MalformedCallback("Airtel callback: transaction.id does not match the callback URL")
        money_id = _text(transaction.get("airtel_money_id"))
        message = _text(transaction.get("message"))
        upper = status_code.upper()
        return CallbackHint(
            provider=PROVIDER,
            reference=txn_id,  # transaction.id is ours (see `reference_for`)
            provider_reference=money_id,
            operation=CALLBACK_KINDS.get(path_kind),
            status=TRANSACTION_STATUS.get(upper, TransactionStatus.UNKNOWN),
            money=None,  # only the free-text message names an amount; it is not parsed as a claim
            payer=None,
            provider_code=short(upper),
            provider_message=short(message) if message else None,
            extras={MONEY_ID: short(money_id)} if money_id else {},
            authenticated=authenticated,
        )

    def _verify_hash(self, data: Mapping[str, Any], transaction: Mapping[str, Any]) -> bool:
        """True when the configured private key verifies the callback's `hash`; False when no
        key is configured. Raises `CallbackAuthError` when a key is configured and it does not."""
        key = self._settings.callback_private_key
        if key is None:
            return False
        given = data.get("hash")
        if not isinstance(given, str) or not given:
            raise CallbackAuthError("Airtel callback: the hash field is missing")
        secret = key.get_secret_value()
        # Airtel's docs show the signed payload as {"transaction": {...}}; some integrators sign the
        # transaction object alone. Either proves the sender holds the key.
        candidates = (
            callback_hash(transaction, secret),
            base64.b64encode(
                hmac.new(
                    secret.encode(),
                    json.dumps(transaction, separators=(",", ":"), ensure_ascii=False).encode(),
                    hashlib.sha256,
                ).digest()
            ).decode(),
        )
        if not any(hmac.compare_digest(given.encode(), expected.encode()) for expected in candidates):
            raise CallbackAuthError("Airtel callback: the hash field does not verify")
        return True
