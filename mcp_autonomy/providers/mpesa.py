"""M-Pesa (Safaricom Daraja) adapter: STK push collections, B2C payouts, reversals.

Daraja facts this module is built on (Daraja 3.0 portal documentation and its error tables):

- Auth: `GET /oauth/v1/generate?grant_type=client_credentials` with `Basic key:secret` answers
  `{access_token, expires_in}` (about an hour; `expires_in` arrives as a string or a number).
  The token is cached and refreshed `token_refresh_margin_s` before it expires (`TokenCache`:
  minted under a lock, since the portal warns that minting can invalidate the previous token).
- Errors come as `{requestId, errorCode, errorMessage}`, and the code, not the HTTP status,
  says what happened: `404.001.03` invalid token (HTTP 404 per the docs), `400.002.02` bad
  field, `500.003.02` spike arrest and `500.003.03` quota (HTTP 500), `500.001.1001` is
  "wrong credentials", "merchant does not exist", "unable to lock subscriber" on a push, and
  "the transaction is being processed" on a query. Outcomes also arrive inside HTTP 200 bodies
  (`ResponseCode`, `ResultCode`). `ERROR_RULES` is the classification table (each rule cites
  its source) and the only one `_error` reads: "Unable to lock subscriber" is the customer's
  (busy in another session: the push was not accepted, and another provider would meet the same
  busy customer), a bare 5xx is ambiguous (no source says such a push was not sent).
- STK push `POST /mpesa/stkpush/v1/processrequest` (Password = base64(shortcode + passkey +
  timestamp), timestamp `YYYYMMDDHHmmss`, AccountReference <= 12 chars) answers a
  `CheckoutRequestID`; the result comes by callback (`Body.stkCallback`, numeric ResultCode;
  `CallbackMetadata` with Amount, MpesaReceiptNumber, TransactionDate, PhoneNumber on success
  only) or by polling `POST /mpesa/stkpushquery/v1/query`, which carries ResultCode/ResultDesc
  only: no amount, no payer, no receipt. Right after a push the query may answer `400.002.02`
  "Invalid CheckoutRequestID" for the id it just issued (eventual consistency): `status()`
  raises not-found and the engine applies `money_truth.not_found_grace_s`. Daraja has no
  idempotency key for STK: a push that got no CheckoutRequestID has no pull path at all.
- B2C `POST /mpesa/b2c/v3/paymentrequest` dedupes on `OriginatorConversationID` (our
  reference; a repeat is refused with `500.002.1001` "Duplicate OriginatorConversationID."), so
  a payout retried with the same reference can never pay twice; the result arrives only at
  `ResultURL` (`Result`, with TransactionAmount, TransactionReceipt, ReceiverPartyPublicName).
- Transaction Status `POST /mpesa/transactionstatus/v1/query` (CommandID TransactionStatusQuery,
  the transaction's receipt as TransactionID or its `OriginalConversationID`, PartyA,
  IdentifierType 4) is the only pull for a payout or a reversal. Its HTTP answer is acceptance
  only (`{OriginatorConversationID, ConversationID, ResponseCode "0", ResponseDescription}`);
  the status itself arrives asynchronously at ResultURL as a second, unsigned `Result`
  (ResultParameters ReceiptNo, TransactionStatus "Completed" / "Declined" / ..., Amount,
  DebitPartyName, CreditPartyName, FinalisedTime, ReasonType, OriginatorConversationID). So
  `status()` of a payout sends the query and answers `pending` (`status_query_sent`).
- Reversal `POST /mpesa/reversal/v1/request` (CommandID TransactionReversal, receiver identifier
  type 11, the receipt as TransactionID) reverses an STK collection; result at `ResultURL`.

Callback URLs carry our reference as their last path segment: STK `MPESA_CALLBACK_URL/<ref>`,
B2C, reversal and status-query results `MPESA_RESULT_URL/<ref>`, queue timeouts
`MPESA_QUEUE_TIMEOUT_URL/<ref>` (a timeout's outcome is unknown). Nothing Daraja posts is
signed, so `parse_callback` returns hints with `authenticated=False` and the engine confirms
each by a pull. Result codes: 0 success; 1 insufficient funds, 17 rule limited, 1032 cancelled
by the user, 1037 no answer from the handset, 2001 wrong PIN or initiator ... are failures.
The customer's final codes are `customer_codes`; a failed B2C or reversal result is reported as
`b2c:<ResultCode>` / `reversal:<ResultCode>`, since there the same numbers are the merchant's
(B2C 1: the merchant's account is short; 2001: the initiator's credential is wrong).

Identifier kinds reported through `identifier_sink`: `checkout_request_id` and
`merchant_request_id` (STK push), `conversation_id` (B2C), `reversal_conversation_id` and
`reversal_originator_id` (reversal), `status_query` (a Transaction Status query's
ConversationID; its result's outer ConversationID).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.adapter import AccessToken, AdapterBase, TokenCache
from mcp_autonomy.providers.base import (
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
    normalize_msisdn,
)
from mcp_autonomy.providers.error_table import customer_codes_of, final_result
from mcp_autonomy.providers.http import NO_SOURCE, json_object, send, short

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
REFERENCE_RE = re.compile(r"^[0-9A-Z]{12}$")
PARTY_PHONE_RE = re.compile(r"^\s*\+?(\d{9,15})\b")
"""The MSISDN that leads a Daraja party name such as `254708374149 - John Doe`."""

DARAJA_ERRORS = "Daraja 3.0 docs (developer.safaricom.co.ke), API error codes"
DARAJA_RESULTS = "Daraja 3.0 docs, M-Pesa Express (STK push) result codes (DESIGN.md section 7)"
DARAJA_B2C_RESULTS = "Daraja 3.0 docs, B2C v3 result codes"

_SYNC_RULES: tuple[ErrorRule, ...] = (
    # --- refused at the gate: credentials ----------------------------------------------------
    ErrorRule(
        match="404.001.03",
        error_class=ErrorClass.AUTH,
        meaning="Invalid Access Token: refused at the gateway (resent once with a fresh token, then auth)",
        source=DARAJA_ERRORS,
    ),
    ErrorRule(
        match="401.003.01",
        error_class=ErrorClass.AUTH,
        meaning="access token invalid or expired: refused at the gateway (resent once with a fresh token)",
        source=DARAJA_ERRORS,
    ),
    ErrorRule(
        match="401.002.01",
        error_class=ErrorClass.AUTH,
        meaning="access token invalid or expired: refused at the gateway (resent once with a fresh token)",
        source=DARAJA_ERRORS,
    ),
    ErrorRule(
        match="404.001.04",
        error_class=ErrorClass.AUTH,
        meaning="Invalid Authentication Header",
        source=DARAJA_ERRORS,
    ),
    ErrorRule(
        match="400.008.01",
        error_class=ErrorClass.AUTH,
        meaning="Invalid Authentication passed: wrong consumer key or secret (token call)",
        source=f"{DARAJA_ERRORS} (Authorization API)",
    ),
    ErrorRule(
        match="500.001.1001: wrong credentials",
        error_class=ErrorClass.AUTH,
        meaning="[MerchantValidate] Wrong credentials: the passkey does not match the shortcode; the push "
        "is refused before it is sent",
        source=f"{DARAJA_ERRORS} (M-Pesa Express: 500.001.1001 'Wrong credentials')",
    ),
    ErrorRule(
        match="500.001.1001: merchant does not exist",
        error_class=ErrorClass.AUTH,
        meaning="the shortcode is unknown: refused at merchant validation, before the push is sent",
        source=f"{DARAJA_ERRORS} (M-Pesa Express: 500.001.1001 'Merchant does not exist')",
    ),
    # --- refused by the rate limiter ---------------------------------------------------------
    ErrorRule(
        match="500.003.02",
        error_class=ErrorClass.RATE_LIMITED,
        meaning="Spike Arrest Violation (HTTP 500): refused by the gateway's rate limiter",
        source=DARAJA_ERRORS,
    ),
    ErrorRule(
        match="500.003.03",
        error_class=ErrorClass.RATE_LIMITED,
        meaning="Quota Violation (HTTP 500): the app's quota is spent",
        source=DARAJA_ERRORS,
    ),
    ErrorRule(
        match="policies.ratelimit.SpikeArrestViolation",
        error_class=ErrorClass.RATE_LIMITED,
        meaning="Apigee's spike arrest fault at the edge (`fault.detail.errorcode`)",
        source="Apigee docs, SpikeArrest policy runtime errors (Daraja is served by Apigee)",
    ),
    ErrorRule(
        match="policies.ratelimit.QuotaViolation",
        error_class=ErrorClass.RATE_LIMITED,
        meaning="Apigee's quota fault at the edge (`fault.detail.errorcode`)",
        source="Apigee docs, Quota policy runtime errors (Daraja is served by Apigee)",
    ),
    # --- validated and refused ---------------------------------------------------------------
    ErrorRule(
        match="400.002.01",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Bad Request: a field is missing or invalid",
        source=DARAJA_ERRORS,
    ),
    ErrorRule(
        match="400.002.02",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Bad Request - Invalid <field> (Amount, CallBackURL, PartyA, ...)",
        source=DARAJA_ERRORS,
    ),
    ErrorRule(
        match="400.002.05",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Invalid Request Payload",
        source=DARAJA_ERRORS,
    ),
    ErrorRule(
        match="400.003.02",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Bad Request (request rejected by validation)",
        source=DARAJA_ERRORS,
    ),
    ErrorRule(
        match="400.008.02",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Invalid grant type passed (token call)",
        source=f"{DARAJA_ERRORS} (Authorization API)",
    ),
    ErrorRule(
        match="404.001.01",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Resource not found: no such API path",
        source=DARAJA_ERRORS,
    ),
    ErrorRule(
        match="405.001",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Method Not Allowed",
        source=DARAJA_ERRORS,
    ),
    # --- the customer's state ----------------------------------------------------------------
    ErrorRule(
        match="500.001.1001: unable to lock subscriber",
        error_class=ErrorClass.CUSTOMER,
        meaning="'Unable to lock subscriber, a transaction is already in process for the current "
        "subscriber': the customer is busy in another M-Pesa session; this push was not accepted "
        "(no CheckoutRequestID). Another provider would meet the same busy customer",
        source=f"{DARAJA_ERRORS} (M-Pesa Express: 500.001.1001); ResultCode 1001 in {DARAJA_RESULTS}",
    ),
    # --- answers that say nothing was started ------------------------------------------------
    ErrorRule(
        match="HTTP 200 with ResponseCode other than 0",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="the submission itself failed: no CheckoutRequestID / ConversationID was issued",
        source="Daraja 3.0 docs, M-Pesa Express and B2C responses: ResponseCode 0 is a successful "
        "submission, any other code means the submission failed",
    ),
    ErrorRule(
        match="400.002.02: invalid checkoutrequestid",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="STK query (a read): Daraja does not see this CheckoutRequestID (yet); raised as "
        "not_found, which the engine weighs with money_truth's grace (never as 'never charged')",
        source="a read moves no money (http.TRANSPORT_RULES); DESIGN.md section 10: a just-issued "
        "CheckoutRequestID may answer 400.002.02",
    ),
    # --- failed at an unknown point -----------------------------------------------------------
    ErrorRule(
        match="500.003.1001",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="Internal Server Error: Daraja failed at an unknown point, possibly after accepting",
        source=NO_SOURCE,
    ),
    ErrorRule(
        match="messaging.adaptors.http.flow.ServiceUnavailable",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="Apigee's 503 'The Service is temporarily unavailable' at the edge: nothing says the "
        "push did not reach M-Pesa behind it",
        source=NO_SOURCE,
    ),
    ErrorRule(
        match="HTTP 5xx with any other errorCode (or none)",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="Daraja reuses 500.001.1001 and 5xx for many answers; an unlisted one may follow acceptance",
        source=NO_SOURCE,
    ),
)
"""Every synchronous Daraja answer this adapter classifies. `match` is the errorCode, or
`<errorCode>: <phrase>` when Daraja reuses one code for several answers (the phrase is looked
for in errorMessage, lower case)."""

_RESULT_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        match=final_result("1"),
        error_class=ErrorClass.CUSTOMER,
        meaning="STK push: insufficient funds (the customer's balance and Fuliza cannot cover it)",
        source=DARAJA_RESULTS,
    ),
    ErrorRule(
        match=final_result("17"),
        error_class=ErrorClass.CUSTOMER,
        meaning="STK push: rule limited (M-Pesa refuses the same amount from this customer again so soon)",
        source=DARAJA_RESULTS,
    ),
    ErrorRule(
        match=final_result("1001"),
        error_class=ErrorClass.CUSTOMER,
        meaning="STK push: unable to lock subscriber (another M-Pesa session of the customer is open)",
        source=DARAJA_RESULTS,
    ),
    ErrorRule(
        match=final_result("1019"),
        error_class=ErrorClass.CUSTOMER,
        meaning="STK push: transaction expired before the customer answered",
        source=DARAJA_RESULTS,
    ),
    ErrorRule(
        match=final_result("1032"),
        error_class=ErrorClass.CUSTOMER,
        meaning="STK push: request cancelled by the customer",
        source=DARAJA_RESULTS,
    ),
    ErrorRule(
        match=final_result("1037"),
        error_class=ErrorClass.CUSTOMER,
        meaning="STK push: DS timeout, the customer's handset cannot be reached / did not answer",
        source=DARAJA_RESULTS,
    ),
    ErrorRule(
        match=final_result("2001"),
        error_class=ErrorClass.CUSTOMER,
        meaning="STK push: wrong PIN entered by the customer (a B2C 2001 is the initiator's: b2c:2001)",
        source=DARAJA_RESULTS,
    ),
    ErrorRule(
        match=final_result("b2c:8"),
        error_class=ErrorClass.CUSTOMER,
        meaning="B2C: declined, the recipient's wallet would exceed its maximum balance",
        source=DARAJA_B2C_RESULTS,
    ),
    ErrorRule(
        match=final_result("b2c:2040"),
        error_class=ErrorClass.CUSTOMER,
        meaning="B2C: the recipient's customer type (unregistered) cannot receive this payment",
        source=DARAJA_B2C_RESULTS,
    ),
)
"""Final-result codes that are the customer's. STK codes are Daraja's ResultCode as it comes;
B2C and reversal results name a failed code `b2c:<ResultCode>` / `reversal:<ResultCode>`, because
the same numbers mean the merchant's side there (B2C 1: the merchant's account is short, B2C 2001:
the initiator's credential is wrong)."""

ERROR_RULES: tuple[ErrorRule, ...] = _SYNC_RULES + _RESULT_RULES
CUSTOMER_CODES = customer_codes_of(_RESULT_RULES)


def _rule_keys(rule: ErrorRule) -> tuple[str, str]:
    code, _, phrase = rule.match.partition(": ")
    return code, phrase


_RULE_BY_CODE = {rule.match: rule for rule in _SYNC_RULES if ": " not in rule.match}
_RULE_BY_PHRASE = {_rule_keys(rule): rule for rule in _SYNC_RULES if ": " in rule.match}
_REFUSED_AT_SUBMISSION = _RULE_BY_CODE["HTTP 200 with ResponseCode other than 0"]
_OTHER_5XX = _RULE_BY_CODE["HTTP 5xx with any other errorCode (or none)"]
_STK_QUERY_NOT_FOUND = _RULE_BY_PHRASE[("400.002.02", "invalid checkoutrequestid")]
TOKEN_REJECTED_CODES = frozenset(
    code for code, rule in _RULE_BY_CODE.items() if "resent once with a fresh token" in rule.meaning
)
"""Token invalid or expired: refused at the gateway, so one retry with a fresh token is safe."""


def _rule_for(code: str | None, message: str) -> ErrorRule | None:
    """The rule for a Daraja errorCode and its message, or None when no rule names it."""
    if not code:
        return None
    lowered = message.lower()
    for (rule_code, phrase), rule in _RULE_BY_PHRASE.items():
        if rule_code == code and phrase in lowered:
            return rule
    return _RULE_BY_CODE.get(code)


STK_PENDING_ERROR = "500.001.1001"
DUPLICATE_ERROR = "500.002.1001"
STK_PENDING_RESULT_CODES = frozenset({"4999"})
"""Integrators report ResultCode 4999 "still under processing" on STK queries: not final yet."""
SUCCESS_CODE = "0"
STATUS_QUERY_OCCASION = "status_query"
"""The Occasion of our Transaction Status queries; Daraja echoes it in the result's ReferenceData."""
REVERSAL_RESULT_CODES = frozenset({"R000001", "R000002"})

TS_COMPLETED = frozenset({"completed"})
TS_FAILED = frozenset({"declined", "cancelled", "canceled", "expired", "failed"})
TS_PENDING = frozenset({"initiated", "authorized", "pending authorized", "pending", "authorised"})
TS_MARKERS = frozenset(
    {"TransactionStatus", "ReceiptNo", "FinalisedTime", "DebitPartyName", "CreditPartyName", "ReasonType"}
)
"""ResultParameters only a Transaction Status result carries."""
B2C_MARKERS = frozenset(
    {"TransactionAmount", "TransactionReceipt", "ReceiverPartyPublicName", "B2CRecipientIsRegisteredCustomer"}
)
UNRELATED_RESULT_MARKERS = frozenset({"AccountBalance", "BOCompletedTime"})
"""An Account Balance result: says nothing about a payment."""
NOT_FOUND_WORDS = ("not found", "could not be found", "does not exist", "invalid transaction")


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
    result_url: str | None = Field(
        None, description="B2C, reversal and Transaction Status results: <result_url>/<reference>"
    )
    queue_timeout_url: str | None = Field(
        None, description="queue timeouts: <queue_timeout_url>/<reference> (default: the result URL)"
    )
    b2c_command_id: Literal["BusinessPayment", "SalaryPayment", "PromotionPayment"] = "BusinessPayment"
    timeout_s: float = Field(15.0, ge=0.5, le=120.0)
    token_refresh_margin_s: float = Field(60.0, ge=0.0, le=1800.0)
    probe_min_interval_s: float = Field(30.0, ge=0.0, le=3600.0)


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
    """Daraja's `{Item: [{Name, Value}]}` / `{ResultParameter: [{Key, Value}]}` lists as a dict.

    Keys are normalised without spaces: real results spell some keys both ways
    ("Originator Conversation ID" and "OriginatorConversationID").
    """
    if not isinstance(container, Mapping):
        return {}
    raw = container.get(key)
    rows = raw if isinstance(raw, list) else [raw] if isinstance(raw, Mapping) else []
    out: dict[str, Any] = {}
    for row in rows:
        if isinstance(row, Mapping):
            name = row.get("Name", row.get("Key"))
            if isinstance(name, str):
                out[name.replace(" ", "")] = row.get("Value")
    return out


def _text(value: Any) -> str | None:
    """A scalar as a non-empty string (Daraja sends numbers and strings interchangeably)."""
    if value is None or isinstance(value, bool | dict | list):
        return None
    rendered = str(value).strip()
    return rendered or None


def _kes(value: Any, what: str) -> Money | None:
    """An amount in whole or decimal shillings as KES minor units; None when not carried.

    Daraja moves KES only and never names the currency in a callback: KES is the provider's,
    the amount is the callback's claim.

    Raises:
        MalformedCallback: an amount is there but is not a positive number of cents.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise MalformedCallback(f"{what} is not an amount")
    try:
        minor = Decimal(str(value).strip()) * 100
    except (InvalidOperation, ValueError) as exc:
        raise MalformedCallback(f"{what} is not an amount") from exc
    if not minor.is_finite() or minor <= 0 or minor != minor.to_integral_value():
        raise MalformedCallback(f"{what} is not a positive amount in whole cents")
    try:
        return Money(amount_minor=int(minor), currency="KES")
    except ValueError as exc:
        raise MalformedCallback(f"{what} is out of range") from exc


def _phone(value: Any) -> str | None:
    """An MSISDN (`254708374149`, `0790422909`, or a party name led by one) as E.164."""
    text = _text(value)
    if text is None:
        return None
    match = PARTY_PHONE_RE.match(text)
    if match is None:
        return None
    try:
        return normalize_msisdn(match.group(1), "254")
    except ValueError:
        return None


def _path_reference(path_reference: str | None) -> str | None:
    return None if path_reference in (None, "", "-") else path_reference


def _result_code(container: Mapping[str, Any], where: str) -> str:
    code = _text(container.get("ResultCode"))
    if code is None:
        raise MalformedCallback(f"{where}.ResultCode is missing")
    return code


class MpesaAdapter(AdapterBase[MpesaSettings]):
    """Speaks Daraja: OAuth token cache, STK push and query, B2C, Transaction Status, reversal."""

    name = PROVIDER
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT, Operation.PAYOUT, Operation.REFUND}),
        currencies=frozenset({"KES"}),
        countries=frozenset({"KE"}),
        refunds=True,
    )
    error_rules = ERROR_RULES
    """Every Daraja answer this adapter classifies, with its class and source (README table)."""
    customer_codes = CUSTOMER_CODES
    """Final-result codes that are the customer's (STK ResultCodes; `b2c:<code>` for B2C)."""
    money_truth = MoneyTruth(
        not_found_grace_s=120.0,
        not_found_is_final_after_grace=False,
        pending_bound_s=1800.0,
        pull_carries=frozenset({"status", "reason"}),
        callback_carries=frozenset({"status", "amount", "payer", "provider_reference", "receipt", "reason"}),
        callback_auth="none",
        pull_path=(
            "STK push: STK query by CheckoutRequestID (ResultCode only; none without a CheckoutRequestID); "
            "payout and reversal: Transaction Status query by OriginalConversationID, answered only by "
            "an unsigned callback to the ResultURL"
        ),
        sources=(
            "Daraja 3.0 docs: M-Pesa Express (STK push, STK query: ResultCode/ResultDesc only)",
            "Daraja 3.0 docs: B2C v3 (OriginatorConversationID dedupe), Reversal",
            "Daraja 3.0 docs: Transaction Status (asynchronous; receipt or OriginatorConversationID)",
            "grace: Daraja documents no lookup lag; 400.002.02 for a just-issued CheckoutRequestID is "
            "integrators' experience (DESIGN.md section 10); 120 s is a conservative choice",
            "not found stays ambiguous: Daraja documents no 'never processed' meaning for it",
            "pending bound: STK prompts expire in about a minute (ResultCode 1037/1019); B2C results "
            "may wait in M-Pesa's queue (QueueTimeOutURL); 1800 s is a conservative choice",
        ),
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
        super().__init__(
            settings, clock, timeout_s=timeout_s, settings_loader=settings_loader, transport=transport
        )
        self._tokens = TokenCache(clock, self._fetch_token)

    # --- identity ------------------------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """Our reference for a payment: 12 base-36 characters of the key's SHA-256.

        Deterministic (the engine stores it before sending), so a retry of the same key reuses
        the same B2C OriginatorConversationID (which Daraja dedupes) and the same callback path.
        It doubles as the STK AccountReference.
        """
        digest = int.from_bytes(hashlib.sha256(idempotency_key.encode()).digest()[:16], "big")
        return _base36(digest, REFERENCE_LENGTH)

    # --- auth ----------------------------------------------------------------------------

    def _reset_credentials(self) -> None:
        self._tokens.drop()

    async def _warm_credentials(self) -> None:
        await self._tokens.get()

    async def _fetch_token(self) -> AccessToken:
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
        return AccessToken(value, self._tokens.expiring_at(lifetime_s, self._settings.token_refresh_margin_s))

    async def _post(
        self, path: str, payload: dict[str, Any], *, mutating: bool, what: str
    ) -> tuple[httpx.Response, dict[str, Any]]:
        """POST with the bearer token; a rejected token is replaced once and the call resent.

        Resending is safe: an invalid-token answer comes from the gateway, before M-Pesa saw it.
        """
        for attempt in (1, 2):
            token = await self._tokens.get()
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
                self._tokens.drop(token)
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
        rule = _rule_for(code, message)
        error_class: ErrorClass | None
        if rule is not None:
            error_class = rule.error_class
        elif response.status_code < 400:
            error_class = _REFUSED_AT_SUBMISSION.error_class
        elif response.status_code >= 500:
            error_class = _OTHER_5XX.error_class
        else:
            error_class = None  # another 4xx: http.py's table decides
        if error_class is ErrorClass.AMBIGUOUS and not mutating:
            error_class = ErrorClass.NOT_PROCESSED  # a read moves no money
        return self._provider_error(
            response,
            error_class,
            f"{what}: {short(message) if message else f'HTTP {response.status_code}'}",
            code=code,
            mutating=mutating,
        )

    # --- probe ---------------------------------------------------------------------------

    async def _probe_once(self) -> str:
        """A fresh token (Daraja meters token calls; `probe()` caps how often this runs).

        The minted token becomes the adapter's token, so probing never leaves a stale one behind.
        """
        self._tokens.drop()
        await self._tokens.get()
        return "oauth token issued"

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
        response, body = await self._post(
            "/mpesa/stkpush/v1/processrequest", payload, mutating=True, what="stk push"
        )
        if response.status_code >= 400 or str(body.get("ResponseCode", "")) != SUCCESS_CODE:
            raise self._error(response, body, mutating=True, what="stk push")
        checkout_id = body.get("CheckoutRequestID")
        self._learn(reference, "merchant_request_id", _text(body.get("MerchantRequestID")))
        if not isinstance(checkout_id, str) or not checkout_id:
            # Accepted (ResponseCode 0) but unusable: the push may be on the customer's phone.
            raise ProviderError(
                PROVIDER, ErrorClass.AMBIGUOUS, "stk push: accepted without a CheckoutRequestID"
            )
        self._learn(reference, "checkout_request_id", checkout_id)
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

    def _timeout_target(self, reference: str, result_target: str) -> str:
        """Where Daraja reports a request that timed out in its queue: `.../timeout/<reference>`."""
        base = self._settings.queue_timeout_url
        return f"{base.rstrip('/')}/{reference}" if base else result_target

    def _b2c_party(self) -> str:
        return self._settings.b2c_shortcode or self._settings.shortcode

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
            "PartyA": self._b2c_party(),
            "PartyB": phone,
            "Remarks": (request.description or "payout")[:100].ljust(2, "."),
            "QueueTimeOutURL": self._timeout_target(reference, result_target),
            "ResultURL": result_target,
            "Occassion": reference,  # sic: Daraja's field name
        }
        response, body = await self._post("/mpesa/b2c/v3/paymentrequest", payload, mutating=True, what="b2c")
        code = str(body.get("errorCode", ""))
        if code == DUPLICATE_ERROR and "duplicate" in str(body.get("errorMessage", "")).lower():
            # Daraja already holds a request under this OriginatorConversationID: an earlier
            # attempt got through. Report it as the accepted payout it is; never pay twice.
            return ProviderTransaction(
                provider=PROVIDER,
                reference=reference,
                provider_reference=self._identifier(reference, "conversation_id"),
                status=TransactionStatus.PENDING,
                money=request.money,
                provider_code=DUPLICATE_ERROR,
                provider_message="already accepted earlier under this OriginatorConversationID",
                raw_status="duplicate",
                raw=body,
            )
        if response.status_code >= 400 or str(body.get("ResponseCode", "")) != SUCCESS_CODE:
            raise self._error(response, body, mutating=True, what="b2c")
        conversation = _text(body.get("ConversationID"))
        self._learn(reference, "conversation_id", conversation)
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

    def _operation_of(
        self, reference: str, provider_reference: str | None, context: PaymentContext | None
    ) -> Operation | None:
        if context is not None:
            return context.operation
        if self._identifier(reference, "conversation_id") or (provider_reference or "").startswith("AG_"):
            return Operation.PAYOUT
        if self._identifier(reference, "checkout_request_id") or provider_reference:
            return Operation.COLLECT
        return None

    async def status(
        self, reference: str, provider_reference: str | None = None, *, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        """Where a payment stands, asked of Daraja every time (never from a callback).

        A collection is pulled with the STK query by its CheckoutRequestID (`500.001.1001`
        "being processed" means pending; `400.002.02` "Invalid CheckoutRequestID" raises
        not-found). A push that never got a CheckoutRequestID has no pull path: `unknown`.
        A payout (or a reversal) is pulled with a Transaction Status query, whose answer Daraja
        posts to the ResultURL: the answer here is `pending` with raw_status `status_query_sent`.
        """
        operation = self._operation_of(reference, provider_reference, context)
        if operation is Operation.PAYOUT:
            return await self._query_transaction_status(
                reference,
                self._identifier(reference, "conversation_id", context)
                or (context.provider_reference if context else None)
                or provider_reference,
                original_id=reference,  # B2C's OriginatorConversationID is our reference
                party=self._b2c_party(),
            )
        if operation is Operation.REFUND:
            original_id = self._identifier(reference, "reversal_originator_id", context)
            if not original_id:
                return self._unknown(
                    reference,
                    provider_reference,
                    "no reversal OriginatorConversationID known: Daraja can be asked about a reversal "
                    "only by it (or by a receipt only its result carries)",
                )
            return await self._query_transaction_status(
                reference,
                self._identifier(reference, "reversal_conversation_id", context) or provider_reference,
                original_id=original_id,
                party=self._settings.shortcode,
            )
        checkout_id = self._identifier(reference, "checkout_request_id", context) or (
            provider_reference if provider_reference and not provider_reference.startswith("AG_") else None
        )
        if checkout_id is None and context is not None:
            checkout_id = context.provider_reference
        if not checkout_id:
            return self._unknown(
                reference,
                provider_reference,
                "no CheckoutRequestID known: the STK push got no answer, and Daraja can be asked "
                "about a push only by its CheckoutRequestID (its callback is the only other source)",
            )
        return await self._query_stk(reference, checkout_id)

    @staticmethod
    def _unknown(reference: str, provider_reference: str | None, why: str) -> ProviderTransaction:
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=provider_reference,
            status=TransactionStatus.UNKNOWN,
            provider_message=why,
            raw_status="no_pull_path",
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
                provider_code=code,
                provider_message=short(message),
                raw_status="processing",
            )
        if _rule_for(code, message) is _STK_QUERY_NOT_FOUND:
            raise ProviderError(
                PROVIDER,
                _STK_QUERY_NOT_FOUND.error_class,
                f"stk query: {short(message)}",
                code=NOT_FOUND_CODE,
                http_status=response.status_code,
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
        # The STK query carries no amount, payer or receipt: money stays None.
        return ProviderTransaction(
            **base,
            status=status,
            provider_code=result_code,
            provider_message=short(body.get("ResultDesc", "")),
            raw_status=f"ResultCode {result_code}",
        )

    async def _query_transaction_status(
        self, reference: str, provider_reference: str | None, *, original_id: str, party: str
    ) -> ProviderTransaction:
        """Send a Transaction Status query; its answer arrives later at `<result_url>/<reference>`."""
        initiator, credential, result_url = self._require_initiator("status")
        result_target = f"{result_url.rstrip('/')}/{reference}"
        payload = {
            "Initiator": initiator,
            "SecurityCredential": credential,
            "CommandID": "TransactionStatusQuery",
            "OriginalConversationID": original_id,
            "PartyA": party,
            "IdentifierType": "4",  # organisation shortcode
            "ResultURL": result_target,
            "QueueTimeOutURL": self._timeout_target(reference, result_target),
            "Remarks": "status query",
            "Occasion": STATUS_QUERY_OCCASION,
        }
        response, body = await self._post(
            "/mpesa/transactionstatus/v1/query", payload, mutating=False, what="transaction status"
        )
        if response.status_code >= 400 or str(body.get("ResponseCode", "")) != SUCCESS_CODE:
            raise self._error(response, body, mutating=False, what="transaction status")
        self._learn(reference, "status_query", _text(body.get("ConversationID")))
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=provider_reference,
            status=TransactionStatus.PENDING,
            provider_code=SUCCESS_CODE,
            provider_message="Transaction Status query accepted; Daraja posts its answer to the ResultURL",
            raw_status="status_query_sent",
            answer_by_callback=True,
            raw=body,
        )

    # --- refund --------------------------------------------------------------------------

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Reverse a succeeded STK collection (Daraja Reversal API; full amount only).

        Needs the M-Pesa receipt, which Daraja sends only in the success callback: pass it in
        `transaction.raw["receipt"]` (or `MpesaReceiptNumber`), as the confirmed callback's
        extras carry it. The answer is `pending`; the reversal's result arrives at `ResultURL`.
        """
        if transaction.status is not TransactionStatus.SUCCEEDED:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only a succeeded collection")
        original = transaction.money or money
        if original is None:
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, "refund: the original amount is unknown"
            )
        if money is not None and money != original:
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, "refund: M-Pesa reversals are for the full amount only"
            )
        receipt = _text(transaction.raw.get("receipt")) or _text(transaction.raw.get("MpesaReceiptNumber"))
        if not receipt:
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
            "QueueTimeOutURL": self._timeout_target(transaction.reference, result_target),
            "Remarks": "refund",
            "Occasion": transaction.reference,
        }
        response, body = await self._post(
            "/mpesa/reversal/v1/request", payload, mutating=True, what="reversal"
        )
        if response.status_code >= 400 or str(body.get("ResponseCode", "")) != SUCCESS_CODE:
            raise self._error(response, body, mutating=True, what="reversal")
        conversation_id = _text(body.get("ConversationID"))
        self._learn(transaction.reference, "reversal_conversation_id", conversation_id)
        self._learn(
            transaction.reference, "reversal_originator_id", _text(body.get("OriginatorConversationID"))
        )
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

    def parse_callback(
        self, body: bytes, headers: Mapping[str, str], *, path_kind: str, path_reference: str | None
    ) -> CallbackHint | None:
        """What one Daraja callback claims (Daraja signs nothing: `authenticated` is False).

        Shapes: the STK callback (`Body.stkCallback`), and `Result` for B2C, reversals and
        Transaction Status queries (told apart by their ResultParameters, the echoed Occasion,
        and whose OriginatorConversationID they carry). Account Balance results and C2B
        confirmations say nothing about our payments: None.

        Raises:
            MalformedCallback: not JSON, not an object, or neither Daraja shape.
        """
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedCallback("M-Pesa callback: the body is not JSON") from exc
        if not isinstance(document, dict):
            raise MalformedCallback("M-Pesa callback: the body is not a JSON object")
        reference = _path_reference(path_reference)
        envelope = document.get("Body")
        if envelope is not None:
            stk = envelope.get("stkCallback") if isinstance(envelope, Mapping) else None
            if not isinstance(stk, Mapping):
                raise MalformedCallback("M-Pesa callback: Body.stkCallback is missing")
            return self._stk_hint(stk, reference)
        result = document.get("Result")
        if isinstance(result, Mapping):
            return self._result_hint(result, reference, path_kind)
        if "TransID" in document and "TransactionType" in document:
            return None  # a C2B confirmation or validation: not one of our payments
        raise MalformedCallback("M-Pesa callback: expected Body.stkCallback or Result")

    @staticmethod
    def _stk_hint(stk: Mapping[str, Any], reference: str | None) -> CallbackHint:
        checkout_id = _text(stk.get("CheckoutRequestID"))
        if checkout_id is None:
            raise MalformedCallback("M-Pesa STK callback: CheckoutRequestID is missing")
        code = _result_code(stk, "stkCallback")
        metadata = _items(stk.get("CallbackMetadata"), "Item")
        extras = {"channel": "stk"}
        merchant_request_id = _text(stk.get("MerchantRequestID"))
        if merchant_request_id:
            extras["merchant_request_id"] = merchant_request_id
        receipt = _text(metadata.get("MpesaReceiptNumber"))
        if receipt:
            extras["receipt"] = receipt
        transaction_date = _text(metadata.get("TransactionDate"))
        if transaction_date:
            extras["transaction_date"] = transaction_date
        if code == SUCCESS_CODE:
            status = TransactionStatus.SUCCEEDED
        elif code in STK_PENDING_RESULT_CODES:
            status = TransactionStatus.PENDING
        else:
            status = TransactionStatus.FAILED
        return CallbackHint(
            provider=PROVIDER,
            reference=reference,
            provider_reference=checkout_id,
            operation=Operation.COLLECT,
            status=status,
            money=_kes(metadata.get("Amount"), "CallbackMetadata Amount"),
            payer=_phone(metadata.get("PhoneNumber")),
            provider_code=code,
            provider_message=short(stk.get("ResultDesc") or ""),
            extras=extras,
            authenticated=False,
        )

    def _result_hint(
        self, result: Mapping[str, Any], reference: str | None, path_kind: str
    ) -> CallbackHint | None:
        code = _result_code(result, "Result")
        conversation_id = _text(result.get("ConversationID"))
        originator_id = _text(result.get("OriginatorConversationID"))
        if conversation_id is None and originator_id is None:
            raise MalformedCallback("M-Pesa Result: ConversationID and OriginatorConversationID are missing")
        parameters = _items(result.get("ResultParameters"), "ResultParameter")
        if UNRELATED_RESULT_MARKERS & parameters.keys():
            return None  # an Account Balance result
        reference_data = _items(result.get("ReferenceData"), "ReferenceItem")
        occasion = _text(reference_data.get("Occasion"))
        description = str(result.get("ResultDesc") or "")
        says_not_found = any(word in description.lower() for word in NOT_FOUND_WORDS)
        channel = "timeout" if path_kind == "timeout" else "result"
        if TS_MARKERS & parameters.keys() or occasion == STATUS_QUERY_OCCASION:
            kind = "status_query"
        elif "OriginalTransactionID" in parameters:
            kind = "reversal"
        elif B2C_MARKERS & parameters.keys():
            kind = "b2c"
        elif originator_id and (originator_id == reference or REFERENCE_RE.match(originator_id)):
            kind = "b2c"  # a failed B2C result: its OriginatorConversationID is our reference
        elif code in REVERSAL_RESULT_CODES:
            kind = "reversal"
        elif says_not_found:
            kind = "status_query"
        else:
            kind = "unknown"
        if kind == "status_query":
            return self._status_query_hint(result, parameters, reference, code, description, says_not_found)
        ok = code == SUCCESS_CODE
        extras = {"channel": channel, "result_kind": kind}
        if conversation_id:
            extras["conversation_id"] = conversation_id
        if channel == "timeout":
            # Daraja documents no body for a queue timeout: the request's fate is not known.
            status = TransactionStatus.UNKNOWN
        elif kind == "unknown":
            status = TransactionStatus.UNKNOWN
        else:
            status = TransactionStatus.SUCCEEDED if ok else TransactionStatus.FAILED
        money: Money | None = None
        payer: str | None = None
        operation: Operation | None = None
        if kind == "b2c":
            operation = Operation.PAYOUT
            reference = reference or originator_id
            money = _kes(parameters.get("TransactionAmount"), "TransactionAmount")
            payer = _phone(parameters.get("ReceiverPartyPublicName"))
            receipt = _text(parameters.get("TransactionReceipt")) or (
                _text(result.get("TransactionID")) if ok else None
            )
            if ok and receipt:
                extras["receipt"] = receipt
        elif kind == "reversal":
            operation = Operation.REFUND
            money = _kes(parameters.get("Amount"), "Amount")
            original_receipt = _text(parameters.get("OriginalTransactionID"))
            if original_receipt:
                extras["original_receipt"] = original_receipt
            if originator_id:
                extras["originator_conversation_id"] = originator_id
            receipt = _text(result.get("TransactionID"))
            if ok and receipt:
                extras["receipt"] = receipt
        # B2C and reversal results reuse STK's numbers for the merchant's side (1: the merchant's
        # account is short, 2001: the initiator is wrong): a failed one is named in its own space.
        provider_code = f"{kind}:{code}" if kind in ("b2c", "reversal") and not ok else code
        return CallbackHint(
            provider=PROVIDER,
            reference=reference,
            provider_reference=conversation_id,
            operation=operation,
            status=status,
            money=money,
            payer=payer,
            provider_code=provider_code,
            provider_message=short(description),
            extras=extras,
            authenticated=False,
        )

    @staticmethod
    def _status_query_hint(
        result: Mapping[str, Any],
        parameters: Mapping[str, Any],
        reference: str | None,
        code: str,
        description: str,
        says_not_found: bool,
    ) -> CallbackHint:
        """A Transaction Status result: the outer ids are the query's, the parameters the payment's."""
        extras = {"channel": "status_query"}
        query_conversation = _text(result.get("ConversationID"))
        if query_conversation:
            extras["status_query"] = query_conversation
        original_originator = _text(parameters.get("OriginatorConversationID"))
        reason_type = _text(parameters.get("ReasonType")) or ""
        operation: Operation | None = None
        lowered_reason = reason_type.lower()
        if "reversal" in lowered_reason:
            operation = Operation.REFUND
        elif any(word in lowered_reason for word in ("business payment", "salary", "promotion", "b2c")):
            operation = Operation.PAYOUT
        elif any(word in lowered_reason for word in ("pay bill", "buy goods", "paybill")):
            operation = Operation.COLLECT
        if reason_type:
            extras["reason_type"] = short(reason_type)
        if code != SUCCESS_CODE:
            # The query itself failed: it says nothing about the payment's outcome.
            extras["query_result"] = "not_found" if says_not_found else "error"
            return CallbackHint(
                provider=PROVIDER,
                reference=reference,
                provider_reference=None,
                operation=operation,
                status=TransactionStatus.UNKNOWN,
                provider_code=code,
                provider_message=short(description),
                extras=extras,
                authenticated=False,
            )
        transaction_status = _text(parameters.get("TransactionStatus")) or ""
        lowered = transaction_status.lower()
        if lowered in TS_COMPLETED:
            status = TransactionStatus.SUCCEEDED
        elif lowered in TS_FAILED:
            status = TransactionStatus.FAILED
        elif lowered == "reversed":
            status = TransactionStatus.REVERSED
        elif lowered in TS_PENDING:
            status = TransactionStatus.PENDING
        else:
            status = TransactionStatus.UNKNOWN
        extras["query_result"] = "found"
        if transaction_status:
            extras["transaction_status"] = short(transaction_status)
        receipt = _text(parameters.get("ReceiptNo"))
        if receipt:
            extras["receipt"] = receipt
        finalised = _text(parameters.get("FinalisedTime"))
        if finalised:
            extras["finalised_time"] = finalised
        payer = _phone(parameters.get("CreditPartyName")) or _phone(parameters.get("DebitPartyName"))
        if reference is None and original_originator and REFERENCE_RE.match(original_originator):
            reference = original_originator  # a B2C's OriginatorConversationID is our reference
        return CallbackHint(
            provider=PROVIDER,
            reference=reference,
            provider_reference=_text(parameters.get("ConversationID")),
            operation=operation,
            status=status,
            money=_kes(parameters.get("Amount"), "Amount"),
            payer=payer,
            provider_code=transaction_status or code,
            provider_message=short(description),
            extras=extras,
            authenticated=False,
        )
