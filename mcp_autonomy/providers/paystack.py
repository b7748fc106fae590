"""Paystack adapter: mobile-money charges, verification, transfers, refunds, webhooks.

Built on Paystack's OpenAPI description and error list (`shared/specs/paystack/`) and its
documentation snippets (PaystackOSS/doc-code-snippets):

- Every call carries `Authorization: Bearer sk_...`; every answer is the envelope
  `{status, message, data}`; errors are `{status: false, message, meta.nextStep, type, code}`
  (`type` validation_error / processor_error / api_error); a bad key is HTTP 401 "Invalid key".
  `ERROR_RULES` classifies Paystack's documented messages (api-errors.json; each rule cites its
  entry): the merchant's balance too low is `not_processed` ("Topup your Paystack Balance and try
  again"), a customer's decline, shortfall or closed account is `customer`, a 5xx is `ambiguous`
  (nothing says it was not processed). `customer_codes` are the customer's final results: a
  failed charge's or transfer's `gateway_response` (reported as its `provider_code`) and
  `abandoned` once final.
- Collect: `POST /charge` with `email`, `amount` (subunits), `currency`, our `reference` and
  `mobile_money: {phone, provider}` answers "Charge attempted" with `data.status` `pay_offline`
  (approve on the phone) or `send_otp` (`POST /charge/submit_otp`), later `success` / `failed`.
  A pending charge's body is only `{reference, status, display_text}`: no transaction id yet.
  Mobile money is offered for GHS (providers mtn, atl, vod) and KES (mpesa).
- The caller's reference is the idempotency key on Paystack's side: reusing it is refused with
  `code: duplicate_reference` ("Duplicate Transaction Reference"). This adapter derives the
  reference from the idempotency key, so a retry either creates the charge once or meets the
  duplicate, which it answers by verifying the existing transaction: a replay returns the first.
- Status (a pull, every time; the operation in the engine's `PaymentContext` picks the endpoint):
  charges `GET /transaction/verify/{reference}` (`data.status` success, failed, abandoned,
  ongoing, pending, processing, queued, reversed; amount in subunits, currency, customer phone,
  `gateway_response`, `id`); transfers `GET /transfer/verify/{reference}` (pending, otp,
  received, queued, success, failed, reversed, abandoned, blocked, rejected; the recipient's
  account number); refunds `GET /refund/{id}` (pending, processing, needs-attention, processed,
  failed). Unknown references answer "Transaction reference not found" / "Transfer not found"
  (400 or 404): `ProviderError(code="not_found")`, which the engine weighs with `money_truth`.
  `abandoned` is not final while the customer may still complete: it reads as pending until
  `ABANDONED_FINAL_AFTER_S` after the transaction was created, then as failed (the customer's:
  `provider_code` "abandoned").
- Reconciliation: `GET /transaction?from=&to=&perPage=&page=` (pagination in `meta.pageCount`).
- Payout: `POST /transferrecipient` (type `mobile_money`, an existing account returns the same
  recipient) then `POST /transfer` (`source: balance`, a unique lowercase `reference`, >= 16
  characters; a reused reference is refused). A transfer may stop at `otp` when the business
  requires transfer confirmation: the OTP goes to the merchant's phone, and the transfer reads
  as `needs_operator_otp` (from the `POST /transfer` answer and from verify alike). Nothing here
  finalises it: an operator's audited tool calls `finalize_transfer(context, otp)`
  (`POST /transfer/finalize_transfer {transfer_code, otp}`); a wrong OTP is `invalid_request`,
  and the OTP never appears in an error or a result.
- Refund: `POST /refund` with the transaction reference, "Refund has been queued for processing".
- Webhooks (dashboard URL): `charge.success`, `transfer.success` / `transfer.failed` /
  `transfer.reversed`, `refund.pending` / `refund.processing` / `refund.processed` /
  `refund.failed` / `refund.needs-attention`; header `x-paystack-signature` = hex HMAC-SHA512 of
  the raw body keyed by the secret key. A refund event's `amount` may be a string.
- Probe: `GET /balance` (read-only, cheap).

Identifier kinds reported to the engine (`identifier_sink`): `transaction_id` (the charge's
numeric id), `recipient_code` (learnt by the first payout call, before the transfer),
`transfer_code` and `transfer_id`, `refund_id`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_autonomy.clock import Clock, iso
from mcp_autonomy.providers.adapter import AdapterBase, RecentMap
from mcp_autonomy.providers.base import (
    DIAL_CODES,
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
    normalize_msisdn,
)
from mcp_autonomy.providers.error_table import customer_codes_of, final_result
from mcp_autonomy.providers.http import (
    NO_SOURCE,
    build_client,
    classify_http_status,
    short,
)

PROVIDER = "paystack"

MOBILE_MONEY_PROVIDERS: dict[str, frozenset[str]] = {
    "GHS": frozenset({"mtn", "atl", "vod"}),
    "KES": frozenset({"mpesa"}),
}
"""Paystack `mobile_money.provider` values per currency."""
DEFAULT_MOBILE_MONEY_PROVIDER = {"GHS": "mtn", "KES": "mpesa"}
TRANSFER_BANK_CODES = {
    ("GHS", "mtn"): "MTN",
    ("GHS", "atl"): "ATL",
    ("GHS", "vod"): "VOD",
    ("KES", "mpesa"): "MPESA",
}
"""Transfer-recipient `bank_code` of each mobile-money wallet (see `GET /bank?type=mobile_money`)."""
COUNTRY_OF_CURRENCY = {"GHS": "GH", "KES": "KE"}
PHONE_COUNTRY_OF_CURRENCY = {**COUNTRY_OF_CURRENCY, "NGN": "NG", "ZAR": "ZA"}
"""Where a national phone number in a pull or webhook comes from, by the payment's currency."""
NATIONAL_FORMAT_COUNTRIES = frozenset({"GH"})
"""Ghanaian numbers go in national form (0551234987), as in Paystack's examples; others as E.164."""

CHARGE_PENDING = frozenset(
    {"pay_offline", "send_otp", "pending", "ongoing", "processing", "queued", "send_pin", "abandoned"}
)
CHARGE_FAILED = frozenset({"failed"})
TRANSFER_PENDING = frozenset({"pending", "received", "queued", "processing", "abandoned"})
TRANSFER_FAILED = frozenset({"failed", "blocked", "rejected"})
REFUND_PENDING = frozenset({"pending", "processing", "needs-attention"})
ABANDONED_FINAL_AFTER_S = 3600.0
"""`abandoned` means the customer has not completed yet, and they still may: it reads as pending
for this long after the transaction was created (Paystack documents no bound; chosen generously
against a failover that would charge the customer twice), then as failed."""
ABANDONED = "abandoned"
DUPLICATE_CODE = "duplicate_reference"
NOT_FOUND_ERROR_CODE = "transaction_not_found"
TRANSFER_OTP = "otp"
"""A transfer's status while Paystack waits for the OTP it sent the merchant."""
MAX_OTP_CHARS = 32
PAYSTACK_ERRORS = "Paystack API errors (shared/specs/paystack/api-errors.json)"
PAYSTACK_OPENAPI = "Paystack OpenAPI (shared/specs/paystack/openapi.yaml)"


def _errors_entry(tag: str, solution: str) -> str:
    return f"{PAYSTACK_ERRORS}, {tag}: {solution}"


def _normal(text: str) -> str:
    """A message as the rules compare it: case, spacing and a final full stop ignored."""
    return " ".join(text.casefold().split()).rstrip(".").strip()


def _pattern(match: str) -> re.Pattern[str]:
    """A documented message as a pattern: its `X` placeholder stands for a number."""
    return re.compile(
        r"\ ".join(r"\d+" if word == "x" else re.escape(word) for word in _normal(match).split())
    )


_NOT_FOUND_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        match="Transaction reference not found",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="a read (verify): no charge with this reference is visible; raised as not_found, which the "
        "engine weighs with money_truth's grace",
        source=_errors_entry(
            "Transaction", "'No transaction could be found with this transaction reference'"
        ),
    ),
    ErrorRule(
        match="Transaction not found",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="a read: no such transaction is visible; raised as not_found (grace applies)",
        source=_errors_entry(
            "Transaction", "'No transaction could be found with this transaction reference'"
        ),
    ),
    ErrorRule(
        match="Transfer not found",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="a read (transfer verify): no such transfer is visible; raised as not_found (grace applies)",
        source=_errors_entry("Transfer", "'No transfer could be found with this transfer code'"),
    ),
    ErrorRule(
        match="Refund not found",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="a read (GET /refund/{id}): no such refund; raised as not_found",
        source=f"{PAYSTACK_OPENAPI}: GET /refund/{{id}} answers NotFound for an unknown id (a read moves no money)",
    ),
)
"""Status reads that found nothing (matched anywhere in the message, with HTTP 400 or 404, or
`code: transaction_not_found`)."""

_DUPLICATE_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        match="Duplicate Transaction Reference",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="the reference (derived from the idempotency key) exists: answered with that payment "
        "(verify); ambiguous only while its lookup cannot see it yet",
        source=_errors_entry(
            "Transaction", "'This transaction reference has already been used on this integration'"
        ),
    ),
    ErrorRule(
        match="Duplicate charge request for reference",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="the charge reference exists: answered with that charge (ambiguous while unseen)",
        source=_errors_entry("Charge", "'a transaction reference that has previously been used'"),
    ),
    ErrorRule(
        match="Please provide a unique reference. Reference already exists on a transfer",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="the transfer reference exists: answered with that transfer, never a second one",
        source=_errors_entry("Transfer", "'This reference has already been used on a prior transfer'"),
    ),
)
"""A resend meeting the first attempt (or `code: duplicate_reference`): never a second payment."""

_MESSAGE_RULES: tuple[ErrorRule, ...] = (
    # --- refused at the gate ---------------------------------------------------------------
    *(
        ErrorRule(
            match=text,
            error_class=ErrorClass.AUTH,
            meaning=meaning,
            source=_errors_entry("Authentication", solution),
        )
        for text, meaning, solution in (
            (
                "Invalid key",
                "the secret key is wrong (HTTP 401)",
                "'The API key provided is invalid for this call'",
            ),
            (
                "Format is Authorization Bearer [secret key]",
                "malformed Authorization header",
                "'Authorization header is improperly formatted'",
            ),
            (
                "No Authorization Header was found",
                "no key sent",
                "'The authorization header ... is not provided'",
            ),
            ("Authentication token expired", "the token expired", "'Generate a new token'"),
            (
                "Error: You do not have privileges for this action. Kindly contact Admin.",
                "the key lacks the permission",
                "'You do not have the permission for the action'",
            ),
        )
    ),
    ErrorRule(
        match="Invalid Merchant Selected",
        error_class=ErrorClass.AUTH,
        meaning="the business behind the key is disabled: every call is refused",
        source=_errors_entry("Transaction", "'the API key of a disabled business'"),
    ),
    ErrorRule(
        match="Integration has been deactivated",
        error_class=ErrorClass.AUTH,
        meaning="the integration cannot process transactions any more",
        source=_errors_entry("Transaction", "'deactivated on Paystack and cannot process transactions'"),
    ),
    ErrorRule(
        match="You cannot initiate third party payouts as a starter business",
        error_class=ErrorClass.AUTH,
        meaning="transfers are not enabled for this business: refused before any transfer",
        source=_errors_entry(
            "Transfer", "'The Transfers product is only available to Registered businesses'"
        ),
    ),
    # --- rate limited ----------------------------------------------------------------------
    ErrorRule(
        match="Please wait a few minutes and try again.",
        error_class=ErrorClass.RATE_LIMITED,
        meaning="rate limited: too many requests in a short time",
        source=_errors_entry("Charge", "'You've been rate-limited ... try the API call again'"),
    ),
    # --- the merchant's side, certainly not processed --------------------------------------
    ErrorRule(
        match="Your balance is not enough to fulfill this request",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="the merchant's Paystack balance cannot fund the transfer: nothing was sent (another "
        "provider's float may)",
        source=_errors_entry("Transfer", "'Topup your Paystack Balance and try again'"),
    ),
    ErrorRule(
        match="Your balance is not enough to fulfil this request",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="the merchant's balance cannot fund the transfer: nothing was sent",
        source=_errors_entry("Transfer", "'Top Up option on your dashboard to add funds'"),
    ),
    ErrorRule(
        match="Insufficient balance to fulfill this refund. Please top up.",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="the merchant's balance cannot fund the refund: nothing was refunded",
        source=_errors_entry("Refund", "'You need to top up your Paystack balance'"),
    ),
    ErrorRule(
        match="System Malfunction",
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="an unspecified error at the receiving bank or wallet: the transfer did not go through",
        source=_errors_entry("Transfer", "'The transfer should be retried'"),
    ),
    # --- the customer's state --------------------------------------------------------------
    ErrorRule(
        match="Declined",
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer's account or wallet declined the charge",
        source=_errors_entry("Transaction", "'ask your customer to reach out to their bank'"),
    ),
    ErrorRule(
        match="Insufficient Funds",
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer's account cannot cover the amount",
        source=_errors_entry("Transaction", "'ask the customer to ... fund their account'"),
    ),
    ErrorRule(
        match="Denied by fraud system",
        error_class=ErrorClass.CUSTOMER,
        meaning="this customer's transaction was flagged: the customer retries after 24 hours",
        source=_errors_entry("Transaction", "'The customer should retry the transaction after 24 hours'"),
    ),
    ErrorRule(
        match="Unable to process transaction",
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer's transaction was denied by Paystack's fraud system",
        source=_errors_entry("Transaction", "'The customer needs to escalate to Paystack'"),
    ),
    ErrorRule(
        match="Provided registration token is invalid",
        error_class=ErrorClass.CUSTOMER,
        meaning="the OTP the customer gave for a mobile-money charge is wrong",
        source=_errors_entry("Charge", "'Show the error to the customer and ask for correct OTP'"),
    ),
    ErrorRule(
        match="Too many attempts. You have to wait for X minutes to try again",
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer gave a wrong OTP too many times",
        source=_errors_entry(
            "Charge", "'Wait the specified amount of time ... try again with the correct OTP'"
        ),
    ),
    ErrorRule(
        match="Charge attempt cannot be fulfilled until X minutes",
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer's instrument failed too often and is regulated for a while",
        source=_errors_entry("Charge", "'Wait for the indicated time period'"),
    ),
    ErrorRule(
        match="Account number is invalid",
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer's wallet number is not valid at that wallet provider",
        source=_errors_entry("Transfer", "'Please confirm the length and value of the account number'"),
    ),
    ErrorRule(
        match="Cannot resolve account",
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer's number is not an account of that wallet provider",
        source=_errors_entry("Transfer", "'confirm that the account number is correct'"),
    ),
    ErrorRule(
        match="Could not resolve account name. Check parameters or try again.",
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer's number is not an account of that wallet provider",
        source=_errors_entry("Verification", "'confirm that the account number is correct'"),
    ),
    ErrorRule(
        match="Account closed",
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer's account has been closed",
        source=_errors_entry("Transfer", "'The customer should reach out to the bank'"),
    ),
    ErrorRule(
        match="Sorry, we can't make the transfer to this recipient at the moment",
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer's account is on a watchlist: transfers to it are disabled",
        source=_errors_entry("Transfer", "'The customer should reach out to the bank'"),
    ),
    # --- validated and refused -------------------------------------------------------------
    *(
        ErrorRule(
            match=text,
            error_class=ErrorClass.INVALID_REQUEST,
            meaning="validation: our request is wrong, another provider would not change that",
            source=f"{PAYSTACK_ERRORS}, {tag}",
        )
        for tag, text in (
            ("Charge", "Amount must be an integer"),
            ("Transaction", "Invalid Amount Sent"),
            ("Transaction", "Invalid amount passed."),
            ("Transaction", "You must specify a valid amount"),
            ("Transaction", "Transaction amount limit exceeded"),
            ("Charge", "Watch your spending. Amount cannot be processed online... (What did you expect?)."),
            ("Charge", "Currency not supported by merchant"),
            ("Charge", "Email address is required to create charge"),
            ("Transaction", "Email is not allowed to be empty"),
            ("Transaction", "Invalid Email Address Passed"),
            ("Transaction", "Invalid character in transaction reference"),
            ("Transfer", "Your reference contains illegal special characters"),
            ("Transfer", "Invalid entries found"),
            ("Transfer", "Bank code is invalid"),
            ("Transfer Recipient", "Unknown bank code"),
            ("Transfer", "bank_code is required"),
            ("Transfer", "Account number is required"),
            ("Verification", "Account number should be numeric"),
            ("Transfer", "Recipient specified is invalid"),
            ("Transfer", "Transfer ID/code specified is invalid."),
            ("Transfer", "Invalid 'from' date"),
            ("Transaction", "Transaction ID should be numeric."),
            ("Refund", "Transaction has been fully reversed"),
            ("Refund", "Cannot refund less than USD 1"),
        )
    ),
)
"""Paystack's documented error messages this adapter classifies (matched whole, case and a final
full stop ignored; `X` stands for a number of minutes)."""

_ANSWER_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        match="HTTP 2xx with status false (any other message)",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Paystack refused the request inside a success status, without processing it",
        source=f"{PAYSTACK_OPENAPI}: Error envelope {{status: false, message}}",
    ),
    ErrorRule(
        match="HTTP 5xx (any message)",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="Paystack (or its edge) failed at an unknown point: resolve by verify before anything else",
        source=NO_SOURCE,
    ),
    ErrorRule(
        match="POST /transfer/finalize_transfer refused (wrong or expired OTP, not awaiting one)",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="the OTP the operator typed is the merchant's, not the customer's: a wrong one is the "
        "request's fault (the transfer stays at otp); auth, rate limits and 5xx keep their class",
        source=f"{PAYSTACK_OPENAPI}: TransferFinalize {{transfer_code, otp}}, 'OTP sent to business "
        "phone to verify transfer'",
    ),
)
_REFUSED_2XX, _HTTP_5XX, _FINALIZE_REFUSED = _ANSWER_RULES

_RESULT_RULES: tuple[ErrorRule, ...] = (
    *(
        ErrorRule(
            match=final_result(rule.match),
            error_class=ErrorClass.CUSTOMER,
            meaning=f"a failed charge or transfer whose gateway_response says so: {rule.meaning}",
            source=rule.source,
        )
        for rule in _MESSAGE_RULES
        if rule.error_class is ErrorClass.CUSTOMER and "X minutes" not in rule.match
    ),
    ErrorRule(
        match=final_result("Transaction cannot be completed. Session timeout exceeded."),
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer did not complete the payment in the time allowed",
        source=_errors_entry("Transaction", "'The transaction was not completed in the time allowed'"),
    ),
    ErrorRule(
        match=final_result("Oooops, your payment has exceeded the time to pay."),
        error_class=ErrorClass.CUSTOMER,
        meaning="the customer did not pay before the session timeout",
        source=_errors_entry(
            "Transaction", "'The transaction was not made before the Payment Session Timeout'"
        ),
    ),
    ErrorRule(
        match=final_result("abandoned"),
        error_class=ErrorClass.CUSTOMER,
        meaning=f"status abandoned past ABANDONED_FINAL_AFTER_S ({ABANDONED_FINAL_AFTER_S:g} s): the customer "
        "never completed it (inside that window it is pending, never final)",
        source="Paystack docs, Verify Transaction: abandoned = the customer has not completed the "
        f"transaction; {PAYSTACK_OPENAPI}: status enum success, failed, abandoned, reversed",
    ),
)
"""Final results that are the customer's: a failed charge's or transfer's `gateway_response`
(reported as `provider_code` in the canonical spelling below), or `abandoned` once final."""

ERROR_RULES: tuple[ErrorRule, ...] = (
    _NOT_FOUND_RULES + _DUPLICATE_RULES + _MESSAGE_RULES + _ANSWER_RULES + _RESULT_RULES
)
CUSTOMER_CODES = customer_codes_of(_RESULT_RULES)
_CUSTOMER_CODE_OF = {_normal(code): code for code in CUSTOMER_CODES}


_MESSAGE_PATTERNS = tuple((_pattern(rule.match), rule) for rule in _MESSAGE_RULES)
_NOT_FOUND_PHRASES = tuple(_normal(rule.match) for rule in _NOT_FOUND_RULES)
_DUPLICATE_PHRASES = tuple(_normal(rule.match) for rule in _DUPLICATE_RULES)


def _message_rule(message: str) -> ErrorRule | None:
    """The rule whose documented message this is, or None."""
    normal = _normal(message)
    for pattern, rule in _MESSAGE_PATTERNS:
        if pattern.fullmatch(normal):
            return rule
    return None


def customer_code(data: Mapping[str, Any]) -> str | None:
    """The customer code of a failed charge or transfer (`customer_codes` spelling), if it is one."""
    if str(data.get("status", "")) == ABANDONED:
        return ABANDONED
    for field in ("gateway_response", "failures"):
        text = data.get(field)
        if isinstance(text, str):
            found = _CUSTOMER_CODE_OF.get(_normal(text))
            if found is not None:
                return found
    return None


SIGNATURE_HEADER = "x-paystack-signature"
LIST_PAGE_SIZE = 100
MAX_LIST_PAGES = 1_000
"""A reconciliation window never walks more pages than this (100 000 transactions)."""


class PaystackSettings(BaseSettings):
    """Paystack credentials and endpoint, from `PAYSTACK_*` environment variables.

    Webhooks need no setting of their own: Paystack signs them with the secret key.
    """

    model_config = SettingsConfigDict(
        env_prefix="PAYSTACK_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    secret_key: SecretStr
    base_url: str = "https://api.paystack.co"
    customer_email_domain: str | None = Field(
        None, description="Charges need an email: <msisdn>@<domain> when the payment carries none"
    )
    timeout_s: float = Field(10.0, ge=0.5, le=120.0)
    probe_min_interval_s: float = Field(0.0, ge=0.0, le=3600.0)

    @field_validator("secret_key")
    @classmethod
    def _is_secret_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("sk_"):
            raise ValueError("PAYSTACK_SECRET_KEY must be a secret key (sk_test_... or sk_live_...)")
        return value


def _data(body: Mapping[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    return dict(data) if isinstance(data, Mapping) else {}


def _status_of(raw: str, pending: frozenset[str], failed: frozenset[str]) -> TransactionStatus:
    if raw == "success":
        return TransactionStatus.SUCCEEDED
    if raw == "reversed":
        return TransactionStatus.REVERSED
    if raw in pending:
        return TransactionStatus.PENDING
    if raw in failed:
        return TransactionStatus.FAILED
    return TransactionStatus.UNKNOWN


def _transfer_status(raw: str) -> TransactionStatus:
    """A transfer at `otp` waits for the merchant's OTP: an operator submits it, never this code."""
    if raw == TRANSFER_OTP:
        return TransactionStatus.NEEDS_OPERATOR_OTP
    return _status_of(raw, TRANSFER_PENDING, TRANSFER_FAILED)


def _refund_status(raw: str) -> TransactionStatus:
    if raw == "processed":
        return TransactionStatus.SUCCEEDED
    if raw == "failed":
        return TransactionStatus.FAILED
    return TransactionStatus.PENDING if raw in REFUND_PENDING else TransactionStatus.UNKNOWN


def _without(text: str | None, secret: str) -> str | None:
    """`text` with every occurrence of `secret` masked (an OTP must never be stored or shown)."""
    if text is None or not secret:
        return text
    return text.replace(secret, "***")


def _epoch_of(value: Any) -> float | None:
    """An ISO 8601 timestamp (`2026-01-01T00:00:00.000Z`) as epoch seconds, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _minor_amount(value: Any) -> int | None:
    """An amount in subunits: an integer, or a string of digits (refund events send strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def money_of(amount: Any, currency: Any) -> Money | None:
    """Paystack's amount (subunits) and currency as `Money`, or None when either is missing/bad."""
    minor = _minor_amount(amount)
    if minor is None or minor <= 0 or not isinstance(currency, str) or len(currency) != 3:
        return None
    try:
        return Money(amount_minor=minor, currency=currency.upper())
    except ValueError:
        return None


def payer_of(phone: Any, currency: Any) -> str | None:
    """A phone number as Paystack reports it (E.164, international digits or national) in E.164."""
    if not isinstance(phone, str) or not phone.strip():
        return None
    country = PHONE_COUNTRY_OF_CURRENCY.get(currency) if isinstance(currency, str) else None
    try:
        return normalize_msisdn(phone, DIAL_CODES.get(country) if country else None)
    except ValueError:
        return None


def _customer_phone(data: Mapping[str, Any]) -> Any:
    customer = data.get("customer")
    if not isinstance(customer, Mapping):
        return None
    return customer.get("international_format_phone") or customer.get("phone")


def _recipient_account(data: Mapping[str, Any]) -> Any:
    recipient = data.get("recipient")
    details = recipient.get("details") if isinstance(recipient, Mapping) else None
    return details.get("account_number") if isinstance(details, Mapping) else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name, from any mapping (a plain dict is case-sensitive)."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


class PaystackAdapter(AdapterBase[PaystackSettings]):
    """Speaks Paystack's REST API for mobile money (GHS, KES) and reads its signed webhooks."""

    name = PROVIDER
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT, Operation.PAYOUT, Operation.REFUND}),
        currencies=frozenset(MOBILE_MONEY_PROVIDERS),
        countries=frozenset(COUNTRY_OF_CURRENCY.values()),
        refunds=True,
    )
    error_rules = ERROR_RULES
    """Every Paystack answer this adapter classifies, with its class and source (README table)."""
    customer_codes = CUSTOMER_CODES
    """Final-result codes that are the customer's: a failed result's gateway response, `abandoned`."""
    money_truth = MoneyTruth(
        not_found_grace_s=300.0,
        not_found_is_final_after_grace=True,
        pending_bound_s=86_400.0,
        pull_carries=frozenset({"status", "amount", "currency", "payer", "provider_reference", "reason"}),
        callback_carries=frozenset({"status", "amount", "currency", "payer", "provider_reference", "reason"}),
        callback_auth="hmac_sha512",
        pull_path=(
            "Every charge and transfer is pulled by our own reference (known before the first call): "
            "GET /transaction/verify/{reference}, GET /transfer/verify/{reference}; a refund by its "
            "id (GET /refund/{id}) once learnt, else it has no pull path."
        ),
        sources=(
            "Paystack OpenAPI (PaystackOSS/openapi, shared/specs/paystack): /transaction/verify, "
            "/transfer/verify, /refund/{id}, /transaction (list), /charge/{reference}",
            "Paystack API errors (api-errors.json): 'Transaction reference not found' = no transaction "
            "with this reference on the integration; 'Transfer not found' likewise",
            "Paystack docs, Webhooks: x-paystack-signature = HMAC SHA512 of the payload with the "
            "secret key; events charge.success, transfer.success/failed/reversed, refund.*",
            "PaystackOSS/doc-code-snippets doc/payments/refunds/events.js (refund event bodies)",
            "Paystack docs, Transfers: statuses pending, otp, success, failed, reversed; "
            "finalize_transfer with the OTP",
            "not_found_grace_s: Paystack documents no lookup lag; 300 s chosen conservatively (the "
            "reference is registered by the synchronous /charge or /transfer call)",
            "pending_bound_s: Paystack documents no bound on ongoing/otp/abandoned; 24 h chosen "
            "conservatively (abandoned reads as pending for 1 h, transfers may wait at otp)",
        ),
    )

    def __init__(
        self,
        settings: PaystackSettings,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        settings_loader: Callable[[], PaystackSettings] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            settings, clock, timeout_s=timeout_s, settings_loader=settings_loader, transport=transport
        )
        # (account, bank code, currency) -> RCP_...: a cache of Paystack's own dedupe of recipients.
        self._recipients = RecentMap()
        # reference -> operation: lets a status() without context try the right endpoint first.
        self._operations = RecentMap()

    # --- identity and plumbing -----------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """`ps-` + 29 hex characters of the key's SHA-256.

        Valid both as a charge reference (alphanumerics, `-`, `.`, `=`) and as a transfer
        reference (lowercase alphanumerics, `-`, `_`, at least 16 characters), and the same on
        every retry, so Paystack's duplicate-reference check guards every resend.
        """
        return "ps-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:29]

    def _new_client(self) -> httpx.AsyncClient:
        # The key travels per request (see `_call`), so a reloaded key applies without a new client.
        return build_client(self._base_url(), self._timeout_s, transport=self._transport)

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._settings.secret_key.get_secret_value()}"}

    @staticmethod
    def _error_class(response: httpx.Response, message: str, *, mutating: bool) -> ErrorClass | None:
        """What an answer means, from `ERROR_RULES`: its documented message first, then the
        envelope (2xx with `status: false`), then 5xx; None leaves other 4xx to http.py's table."""
        rule = _message_rule(message)
        if rule is None and response.status_code < 400:
            rule = _REFUSED_2XX
        elif rule is None and response.status_code >= 500:
            rule = _HTTP_5XX
        if rule is None:
            return None
        if rule.error_class is ErrorClass.AMBIGUOUS and not mutating:
            return ErrorClass.NOT_PROCESSED  # a read moves no money
        return rule.error_class

    def _error(
        self, response: httpx.Response, body: dict[str, Any], *, mutating: bool, what: str
    ) -> ProviderError:
        message = str(body.get("message") or f"HTTP {response.status_code}")
        return self._provider_error(
            response,
            self._error_class(response, message, mutating=mutating),
            f"{what}: {message}",
            code=str(body.get("code") or "") or None,
            mutating=mutating,
        )

    @staticmethod
    def _ok(response: httpx.Response, body: dict[str, Any]) -> bool:
        return response.status_code < 400 and body.get("status") is True

    @staticmethod
    def _is_duplicate(body: dict[str, Any]) -> bool:
        message = _normal(str(body.get("message", "")))
        return body.get("code") == DUPLICATE_CODE or any(phrase in message for phrase in _DUPLICATE_PHRASES)

    @staticmethod
    def _is_not_found(response: httpx.Response, body: dict[str, Any]) -> bool:
        message = _normal(str(body.get("message", "")))
        return response.status_code in (400, 404) and (
            any(phrase in message for phrase in _NOT_FOUND_PHRASES)
            or body.get("code") == NOT_FOUND_ERROR_CODE
        )

    def _not_found(self, what: str, reference: str) -> ProviderError:
        return ProviderError(
            PROVIDER, ErrorClass.NOT_PROCESSED, f"no {what} {reference}", code=NOT_FOUND_CODE
        )

    def _phone(self, phone: str, currency: str) -> str:
        country = COUNTRY_OF_CURRENCY[currency]
        if country in NATIONAL_FORMAT_COUNTRIES:
            dial = DIAL_CODES[country]
            if phone.startswith(f"+{dial}"):
                return "0" + phone[len(dial) + 1 :]
        return phone

    def _check_market(self, request: PaymentRequest) -> tuple[str, str]:
        currency = request.money.currency
        if currency not in MOBILE_MONEY_PROVIDERS:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"Paystack mobile money takes {', '.join(sorted(MOBILE_MONEY_PROVIDERS))}, not {currency}",
            )
        if COUNTRY_OF_CURRENCY[currency] != request.country:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"{currency} mobile money is not offered in {request.country}",
            )
        wallet = request.metadata.get(
            "mobile_money_provider", DEFAULT_MOBILE_MONEY_PROVIDER[currency]
        ).lower()
        if wallet not in MOBILE_MONEY_PROVIDERS[currency]:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"mobile money provider {wallet!r} is not offered for {currency} "
                f"(one of {', '.join(sorted(MOBILE_MONEY_PROVIDERS[currency]))})",
            )
        return currency, wallet

    def _abandoned(self, data: Mapping[str, Any]) -> tuple[TransactionStatus, str]:
        """`abandoned` is final only once the customer can no longer complete (see the constant)."""
        created = _epoch_of(data.get("created_at") or data.get("createdAt"))
        if created is not None and self._clock.now() - created >= ABANDONED_FINAL_AFTER_S:
            return TransactionStatus.FAILED, "abandoned: the customer never completed it"
        return TransactionStatus.PENDING, "abandoned for now: the customer may still complete it"

    def _transaction(
        self,
        reference: str,
        data: dict[str, Any],
        status: TransactionStatus,
        message: str,
        *,
        fallback_money: Money | None = None,
        payer: str | None = None,
        provider_reference: str | None = None,
    ) -> ProviderTransaction:
        """A normalised answer: money only when `data` carried amount and currency (or a caller's
        fallback for its own request), the payer in `raw["payer"]` only when `data` named one."""
        raw_status = str(data.get("status", ""))
        raw = dict(data)
        if payer is not None:
            raw["payer"] = payer
        if provider_reference is None and data.get("id") is not None:
            provider_reference = str(data["id"])
        # A failed result names the customer's reason in `customer_codes` spelling, so the engine
        # can tell a customer's failure from the provider's.
        code = (customer_code(data) if status is TransactionStatus.FAILED else None) or raw_status or None
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=provider_reference,
            status=status,
            money=money_of(data.get("amount"), data.get("currency")) or fallback_money,
            provider_code=code,
            provider_message=short(message) if message else None,
            raw_status=raw_status or None,
            raw=raw,
        )

    # --- probe ---------------------------------------------------------------------------

    async def _probe_once(self) -> str:
        """`GET /balance`: authenticated, read-only, cheap."""
        response, body = await self._request("GET", "/balance", mutating=False, what="balance")
        if not self._ok(response, body):
            raise self._error(response, body, mutating=False, what="balance")
        balances = body.get("data")
        return f"{len(balances) if isinstance(balances, list) else 0} balance(s) retrieved"

    # --- collect -------------------------------------------------------------------------

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        """A mobile-money charge; pending until the customer approves on their phone."""
        currency, wallet = self._check_market(request)
        email = request.metadata.get("email")
        if not email:
            domain = self._settings.customer_email_domain
            if not domain:
                raise ProviderError(
                    PROVIDER,
                    ErrorClass.INVALID_REQUEST,
                    "Paystack needs the customer's email: pass metadata.email or set PAYSTACK_CUSTOMER_EMAIL_DOMAIN",
                )
            email = f"{request.phone.lstrip('+')}@{domain}"
        reference = self.reference_for(request.idempotency_key)
        self._operations.remember(reference, Operation.COLLECT)
        payload = {
            "email": email,
            "amount": request.money.amount_minor,
            "currency": currency,
            "reference": reference,
            "mobile_money": {"phone": self._phone(request.phone, currency), "provider": wallet},
            "metadata": {"description": request.description},
        }
        response, body = await self._request("POST", "/charge", mutating=True, what="charge", payload=payload)
        if not self._ok(response, body):
            if self._is_duplicate(body):
                return await self._replay(reference, request.money, Operation.COLLECT)
            raise self._error(response, body, mutating=True, what="charge")
        return self._charge_step(reference, _data(body), body, request.money)

    def _charge_step(
        self, reference: str, data: dict[str, Any], body: dict[str, Any], money: Money | None
    ) -> ProviderTransaction:
        """The answer of `/charge` or `/charge/submit_otp`: a step (`pay_offline`, ...) or, when the
        charge completed at once, the transaction itself."""
        self._learn(reference, "transaction_id", str(data["id"]) if data.get("id") is not None else None)
        raw_status = str(data.get("status", ""))
        if raw_status == ABANDONED:
            status, note = self._abandoned(data)
        else:
            status, note = _status_of(raw_status, CHARGE_PENDING, CHARGE_FAILED), ""
        message = data.get("display_text") or data.get("gateway_response") or note or body.get("message", "")
        return self._transaction(reference, data, status, str(message), fallback_money=money)

    async def submit_otp(self, reference: str, otp: str) -> ProviderTransaction:
        """Complete a `send_otp` charge (Vodafone Cash) with the OTP the customer received."""
        response, body = await self._request(
            "POST",
            "/charge/submit_otp",
            mutating=True,
            what="submit otp",
            payload={"otp": otp, "reference": reference},
        )
        if not self._ok(response, body):
            raise self._error(response, body, mutating=True, what="submit otp")
        return self._charge_step(reference, _data(body), body, None)

    async def _replay(self, reference: str, money: Money, operation: Operation) -> ProviderTransaction:
        """The reference exists at Paystack: return that transaction if it is the same payment."""
        try:
            if operation is Operation.PAYOUT:
                existing = await self._verify_transfer(reference)
            else:
                existing = await self._verify_charge(reference)
        except ProviderError as exc:
            if exc.code != NOT_FOUND_CODE:
                raise
            # The refusal proves the payment exists; a lookup that cannot see it yet (Paystack's
            # lag) must never read as "not processed", or the engine could charge twice.
            raise ProviderError(
                PROVIDER,
                ErrorClass.AMBIGUOUS,
                f"reference {reference} exists (duplicate_reference) but its lookup does not see it yet",
                code=DUPLICATE_CODE,
            ) from exc
        if existing.money is not None and existing.money != money:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"reference {reference} already holds a different payment ({existing.money.amount_minor} "
                f"{existing.money.currency})",
                code=DUPLICATE_CODE,
            )
        return existing

    # --- status --------------------------------------------------------------------------

    async def status(
        self, reference: str, provider_reference: str | None = None, *, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        """Ask Paystack where a payment stands (always a fresh pull).

        The context's operation picks the endpoint: a charge is verified by reference, a transfer
        by reference, a refund by its learnt id. Without a context, a charge is tried, then a
        transfer. Raises `ProviderError(code="not_found")` when Paystack knows no such payment.
        """
        operation = context.operation if context is not None else self._operations.get(reference)
        if operation is Operation.REFUND:
            refund_id = self._identifier(reference, "refund_id", context) or provider_reference
            if not refund_id:
                return ProviderTransaction(
                    provider=PROVIDER,
                    reference=reference,
                    status=TransactionStatus.UNKNOWN,
                    provider_message="no refund id was learnt: Paystack fetches a refund only by its id",
                )
            return await self.refund_status(refund_id, reference)
        if operation is Operation.PAYOUT:
            return await self._verify_transfer(reference)
        if operation is Operation.COLLECT:
            return await self._verify_charge(reference)
        try:
            return await self._verify_charge(reference)
        except ProviderError as exc:
            if exc.code != NOT_FOUND_CODE:
                raise
        try:
            return await self._verify_transfer(reference)
        except ProviderError as exc:
            if exc.code != NOT_FOUND_CODE:
                raise
        raise self._not_found("transaction or transfer", reference)

    async def _verify_charge(self, reference: str) -> ProviderTransaction:
        response, body = await self._request(
            "GET", f"/transaction/verify/{reference}", mutating=False, what="verify"
        )
        if not self._ok(response, body):
            if self._is_not_found(response, body):
                raise self._not_found("transaction", reference)
            raise self._error(response, body, mutating=False, what="verify")
        data = _data(body)
        return self._charge_transaction(reference, data, str(body.get("message", "")))

    def _charge_transaction(self, reference: str, data: dict[str, Any], message: str) -> ProviderTransaction:
        self._learn(reference, "transaction_id", str(data["id"]) if data.get("id") is not None else None)
        raw_status = str(data.get("status", ""))
        if raw_status == ABANDONED:
            status, note = self._abandoned(data)
            message = f"{note} ({data.get('gateway_response') or 'no response'})"
        else:
            status = _status_of(raw_status, CHARGE_PENDING, CHARGE_FAILED)
            message = str(data.get("gateway_response") or message)
        return self._transaction(
            reference, data, status, message, payer=payer_of(_customer_phone(data), data.get("currency"))
        )

    async def _verify_transfer(self, reference: str) -> ProviderTransaction:
        response, body = await self._request(
            "GET", f"/transfer/verify/{reference}", mutating=False, what="transfer verify"
        )
        if not self._ok(response, body):
            if self._is_not_found(response, body):
                raise self._not_found("transfer", reference)
            raise self._error(response, body, mutating=False, what="transfer verify")
        return self._transfer_transaction(reference, _data(body), str(body.get("message", "")))

    def _transfer_transaction(
        self, reference: str, data: dict[str, Any], message: str, fallback_money: Money | None = None
    ) -> ProviderTransaction:
        transfer_id = str(data["id"]) if data.get("id") is not None else None
        self._learn(reference, "transfer_code", data.get("transfer_code") or None)
        self._learn(reference, "transfer_id", transfer_id)
        raw_status = str(data.get("status", ""))
        if raw_status == ABANDONED:
            status, note = self._abandoned(data)
        else:
            status, note = _transfer_status(raw_status), ""
        if status is TransactionStatus.NEEDS_OPERATOR_OTP:
            note = "the transfer waits for the OTP Paystack sent the merchant (an operator submits it)"
        detail = data.get("gateway_response") or data.get("failures") or note or message
        return self._transaction(
            reference,
            data,
            status,
            str(detail),
            fallback_money=fallback_money,
            payer=payer_of(_recipient_account(data), data.get("currency")),
            provider_reference=transfer_id,
        )

    async def refund_status(self, refund_id: str, reference: str | None = None) -> ProviderTransaction:
        """Where one refund stands (`GET /refund/{id}`)."""
        response, body = await self._request("GET", f"/refund/{refund_id}", mutating=False, what="refund")
        if not self._ok(response, body):
            if self._is_not_found(response, body):
                raise self._not_found("refund", refund_id)
            raise self._error(response, body, mutating=False, what="refund")
        data = _data(body)
        transaction = data.get("transaction")
        reference = reference or str(
            data.get("transaction_reference")
            or (transaction.get("reference") if isinstance(transaction, Mapping) else None)
            or refund_id
        )
        raw_status = str(data.get("status", ""))
        return self._transaction(
            reference,
            data,
            _refund_status(raw_status),
            str(body.get("message", "")),
            provider_reference=refund_id,
        )

    # --- reconciliation ------------------------------------------------------------------

    async def list_transactions(
        self, since_epoch_s: float, until_epoch_s: float
    ) -> list[ProviderTransaction]:
        """Every transaction Paystack created in `[since, until)`, page by page (reconciliation).

        Pure reading: nothing is learnt (rows may not be ours). Each row carries its reference,
        id, status, money and, when the customer has a phone, `raw["payer"]`.
        """
        found: list[ProviderTransaction] = []
        for page in range(1, MAX_LIST_PAGES + 1):
            params = {
                "from": iso(since_epoch_s),
                "to": iso(until_epoch_s),
                "perPage": str(LIST_PAGE_SIZE),
                "page": str(page),
            }
            response, body = await self._request(
                "GET", "/transaction", mutating=False, what="list transactions", params=params
            )
            if not self._ok(response, body):
                raise self._error(response, body, mutating=False, what="list transactions")
            rows = body.get("data")
            rows = rows if isinstance(rows, list) else []
            for row in rows:
                txn = self._listed(row, since_epoch_s, until_epoch_s)
                if txn is not None:
                    found.append(txn)
            meta = body.get("meta")
            page_count = meta.get("pageCount") if isinstance(meta, Mapping) else None
            if not rows or not isinstance(page_count, int) or page >= page_count:
                break
        return found

    def _listed(self, row: Any, since_epoch_s: float, until_epoch_s: float) -> ProviderTransaction | None:
        if not isinstance(row, Mapping) or not isinstance(row.get("reference"), str):
            return None
        data = dict(row)
        created = _epoch_of(data.get("created_at") or data.get("createdAt"))
        if created is not None and not since_epoch_s <= created < until_epoch_s:
            return None  # the window is Paystack's; the exact bounds are ours
        raw_status = str(data.get("status", ""))
        if raw_status == ABANDONED:
            status, message = self._abandoned(data)
        else:
            status = _status_of(raw_status, CHARGE_PENDING, CHARGE_FAILED)
            message = str(data.get("gateway_response") or raw_status)
        return self._transaction(
            str(data["reference"]),
            data,
            status,
            message,
            payer=payer_of(_customer_phone(data), data.get("currency")),
        )

    # --- payout --------------------------------------------------------------------------

    async def _recipient(self, request: PaymentRequest, reference: str, currency: str, wallet: str) -> str:
        bank_code = TRANSFER_BANK_CODES[(currency, wallet)]
        account = self._phone(request.phone, currency)
        key = f"{account}|{bank_code}|{currency}"
        cached = self._recipients.get(key)
        if cached:
            self._learn(reference, "recipient_code", str(cached))
            return str(cached)
        payload = {
            "type": "mobile_money",
            "name": request.metadata.get("recipient_name", account),
            "account_number": account,
            "bank_code": bank_code,
            "currency": currency,
        }
        # No money moves here and Paystack returns the existing recipient for a known account,
        # so any failure of this step is safe to retry anywhere: read it as non-mutating.
        response, body = await self._request(
            "POST", "/transferrecipient", mutating=False, what="recipient", payload=payload
        )
        data = _data(body)
        code = data.get("recipient_code")
        if not self._ok(response, body) or not isinstance(code, str) or not code:
            raise self._error(response, body, mutating=False, what="recipient")
        # Learnt before the transfer call, which may fail: the engine holds it either way.
        self._learn(reference, "recipient_code", code)
        self._recipients.remember(key, code)
        return code

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        """A transfer from the Paystack balance to the customer's wallet (recipient, then transfer)."""
        currency, wallet = self._check_market(request)
        reference = self.reference_for(request.idempotency_key)
        self._operations.remember(reference, Operation.PAYOUT)
        recipient = await self._recipient(request, reference, currency, wallet)
        payload = {
            "source": "balance",
            "amount": request.money.amount_minor,
            "recipient": recipient,
            "reference": reference,
            "reason": request.description,
            "currency": currency,
        }
        response, body = await self._request(
            "POST", "/transfer", mutating=True, what="transfer", payload=payload
        )
        if not self._ok(response, body):
            if self._is_duplicate(body):
                return await self._replay(reference, request.money, Operation.PAYOUT)
            raise self._error(response, body, mutating=True, what="transfer")
        return self._transfer_transaction(
            reference, _data(body), str(body.get("message", "")), fallback_money=request.money
        )

    async def finalize_transfer(self, context: PaymentContext, otp: str) -> ProviderTransaction:
        """Submit the OTP Paystack sent the merchant for a transfer held at `otp`.

        `POST /transfer/finalize_transfer {transfer_code, otp}`, the transfer code taken from the
        context's identifiers (learnt when the transfer was created). Only an operator's audited
        tool calls this: the adapter never finalises on its own. A refusal (a wrong or expired
        OTP) is `invalid_request` and leaves the transfer at `otp`; a 5xx or a lost answer is
        `ambiguous` (the transfer may have been released: verify it). The OTP never appears in an
        error, a message or a result.
        """
        if context.operation is not Operation.PAYOUT:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "finalize transfer: only a payout")
        transfer_code = context.identifiers.get("transfer_code") or self._identifier(
            context.reference, "transfer_code"
        )
        if not transfer_code:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                "finalize transfer: no transfer_code known for this payout (it comes with the transfer)",
            )
        if not otp.strip() or len(otp) > MAX_OTP_CHARS:
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, "finalize transfer: the OTP is malformed"
            )
        self._operations.remember(context.reference, Operation.PAYOUT)
        response, body = await self._request(
            "POST",
            "/transfer/finalize_transfer",
            mutating=True,
            what="finalize transfer",
            payload={"transfer_code": transfer_code, "otp": otp},
        )
        if not self._ok(response, body):
            raise self._finalize_error(response, body, otp)
        data = {key: value for key, value in _data(body).items() if key != "otp"}
        txn = self._transfer_transaction(
            context.reference, data, str(body.get("message", "")), fallback_money=context.money
        )
        # Paystack's own words never carry the OTP; this is belt and braces for what is stored.
        return txn.model_copy(update={"provider_message": _without(txn.provider_message, otp)})

    def _finalize_error(self, response: httpx.Response, body: dict[str, Any], otp: str) -> ProviderError:
        """A refused finalize: auth, rate limits and 5xx keep their class, the rest is the
        request's (`_FINALIZE_REFUSED`). The OTP is cut out of whatever Paystack said."""
        message = _without(str(body.get("message") or f"HTTP {response.status_code}"), otp) or ""
        error_class = self._error_class(response, message, mutating=True)
        if error_class is None:
            error_class = classify_http_status(response.status_code, mutating=True)
        if error_class not in (ErrorClass.AUTH, ErrorClass.RATE_LIMITED, ErrorClass.AMBIGUOUS):
            error_class = _FINALIZE_REFUSED.error_class
        return self._provider_error(
            response,
            error_class,
            f"finalize transfer: {message}",
            code=_without(str(body.get("code") or ""), otp) or None,
            mutating=True,
        )

    # --- refund --------------------------------------------------------------------------

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Refund a succeeded charge, fully or partly; the answer describes the refund.

        `pending` until Paystack processes it, then `succeeded`; the charge itself then verifies
        as `reversed` (full refunds). The refund id is learnt as `refund_id` under the charge's
        reference.
        """
        if transaction.status is not TransactionStatus.SUCCEEDED:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only a succeeded charge")
        payload: dict[str, Any] = {"transaction": transaction.reference}
        if money is not None:
            if transaction.money is not None and money.currency != transaction.money.currency:
                raise ProviderError(
                    PROVIDER, ErrorClass.INVALID_REQUEST, "refund: currency differs from the charge"
                )
            payload["amount"] = money.amount_minor
            payload["currency"] = money.currency
        response, body = await self._request("POST", "/refund", mutating=True, what="refund", payload=payload)
        if not self._ok(response, body):
            raise self._error(response, body, mutating=True, what="refund")
        data = _data(body)
        refund_id = str(data["id"]) if data.get("id") is not None else None
        self._learn(transaction.reference, "refund_id", refund_id)
        return self._transaction(
            transaction.reference,
            data,
            _refund_status(str(data.get("status", ""))),
            str(body.get("message", "")),
            fallback_money=money or transaction.money,
            provider_reference=refund_id,
        )

    # --- webhooks ------------------------------------------------------------------------

    def parse_callback(
        self, body: bytes, headers: Mapping[str, str], *, path_kind: str, path_reference: str | None
    ) -> CallbackHint | None:
        """What one Paystack webhook claims, once its HMAC-SHA512 signature verified.

        Pure: no state changes. Raises `CallbackAuthError` for a missing or wrong
        `x-paystack-signature`, `MalformedCallback` for a body that is not Paystack's shape;
        returns None for events about no payment (disputes, subscriptions, ...).
        """
        signature = _header(headers, SIGNATURE_HEADER)
        if not signature:
            raise CallbackAuthError(f"missing {SIGNATURE_HEADER} header")
        key = self._settings.secret_key.get_secret_value().encode()
        expected = hmac.new(key, body, hashlib.sha512).hexdigest()
        if not hmac.compare_digest(expected.encode(), signature.strip().lower().encode()):
            raise CallbackAuthError(f"{SIGNATURE_HEADER} does not match the body")
        try:
            event = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedCallback("Paystack webhook: the body is not JSON") from exc
        if not isinstance(event, dict):
            raise MalformedCallback("Paystack webhook: the body is not a JSON object")
        name = event.get("event")
        if not isinstance(name, str) or not name:
            raise MalformedCallback("Paystack webhook: missing event")
        data = event.get("data")
        if name == "charge.success":
            return self._hint(name, data, Operation.COLLECT, "reference", path_reference)
        if name in ("transfer.success", "transfer.failed", "transfer.reversed"):
            return self._hint(name, data, Operation.PAYOUT, "reference", path_reference)
        if name.startswith("refund."):
            return self._hint(name, data, Operation.REFUND, "transaction_reference", path_reference)
        return None

    def _hint(
        self, event: str, data: Any, operation: Operation, reference_field: str, path_reference: str | None
    ) -> CallbackHint:
        if not isinstance(data, dict):
            raise MalformedCallback(f"Paystack {event}: missing data")
        reference = data.get(reference_field)
        from_path = path_reference if path_reference not in (None, "", "-") else None
        if reference is not None and not isinstance(reference, str):
            raise MalformedCallback(f"Paystack {event}: data.{reference_field} is not a string")
        if reference and from_path and reference != from_path:
            raise MalformedCallback(f"Paystack {event}: data.{reference_field} differs from the URL's")
        reference = reference or from_path
        if not reference:
            raise MalformedCallback(f"Paystack {event}: missing data.{reference_field}")
        raw_status = data.get("status")
        if raw_status is None:
            raw_status = event.split(".", 1)[1]  # the event names the outcome when the body does not
        raw_status = str(raw_status)
        if operation is Operation.REFUND:
            status = _refund_status(raw_status)
        elif operation is Operation.PAYOUT:
            status = _transfer_status(raw_status)
        else:
            status = _status_of(raw_status, CHARGE_PENDING, CHARGE_FAILED)
        currency = data.get("currency")
        money: Money | None = None
        if data.get("amount") is not None:
            money = money_of(data.get("amount"), currency)
            if money is None:
                raise MalformedCallback(
                    f"Paystack {event}: data.amount/currency is not an amount in subunits"
                )
        if operation is Operation.PAYOUT:
            payer = payer_of(_recipient_account(data), currency)
            message = data.get("gateway_response") or data.get("failures") or raw_status
            extras = {"transfer_code": str(data["transfer_code"])} if data.get("transfer_code") else {}
        elif operation is Operation.REFUND:
            payer = None  # refund events name the customer, not their phone
            message = data.get("processor") or raw_status
            extras = (
                {"refund_reference": str(data["refund_reference"])} if data.get("refund_reference") else {}
            )
        else:
            payer = payer_of(_customer_phone(data), currency)
            message = data.get("gateway_response") or raw_status
            extras = {}
        return CallbackHint(
            provider=PROVIDER,
            reference=reference,
            provider_reference=str(data["id"]) if data.get("id") is not None else None,
            operation=operation,
            status=status,
            money=money,
            payer=payer,
            provider_code=short(
                (customer_code(data) if status is TransactionStatus.FAILED else None) or raw_status
            ),
            provider_message=short(message),
            extras=extras,
            authenticated=True,
        )
