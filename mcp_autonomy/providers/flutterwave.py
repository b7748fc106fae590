"""Flutterwave (v3) adapter: mobile-money direct charges, verification, transfers, refunds, webhooks.

Facts this module is built on (developer.flutterwave.com v3 pages and the official Node-v3 SDK:
its services, joi schemas and documentation samples):

- Every call carries `Authorization: Bearer FLWSECK-...` (`FLWSECK_TEST-...` in test mode);
  every answer is the envelope `{status: "success"|"error", message, data}`; a bad key is 401
  "Invalid authorization key".
- Mobile-money charge: `POST /v3/charges?type=<type>` `{tx_ref, amount, currency, email,
  phone_number, fullname, network?, country?}` with `type` per market: `mpesa` (KES),
  `mobile_money_ghana` (GHS, network MTN / VODAFONE / AIRTELTIGO), `mobile_money_uganda` (UGX,
  MTN / AIRTEL), `mobile_money_rwanda` (RWF), `mobile_money_zambia` (ZMW),
  `mobile_money_tanzania` (TZS), `mobile_money_franco` (XAF / XOF, with `country`). The answer
  is "Charge initiated" with either `data` (`status: "pending"`, the customer approves on the
  phone) or `meta.authorization {mode: "redirect", redirect}` (the customer authorises at that
  URL first; there is no transaction id yet).
- Verify (a pull, every time; the operation in the engine's `PaymentContext` picks the endpoint):
  `GET /v3/transactions/{id}/verify` once the transaction id is learnt, else
  `GET /v3/transactions/verify_by_reference?tx_ref=` -> `data.status` successful / failed /
  pending, amount (major units), currency, `customer.phone_number`, `flw_ref`, `id`. Lookups
  are eventually consistent: "No transaction was found for this id" also answers a transaction
  created moments ago, so it raises `ProviderError(code="not_found")` and the engine weighs it
  with `money_truth` (it never proves a payment absent).
- Transfers: `POST /v3/transfers` `{account_bank, account_number, amount, currency, narration,
  reference, beneficiary_name}` -> "Transfer Queued Successfully", `data.status` NEW; then
  PENDING, SUCCESSFUL or FAILED (`complete_message`) at `GET /v3/transfers/{id}` (the id is
  learnt from the first answer) or `GET /v3/transfers?reference=`. Mobile-money wallets use
  `account_bank` MPS (M-Pesa Kenya and the MPS wallets of Uganda, Rwanda, Zambia), the network
  name in Ghana, FMM in francophone markets, and the phone number as `account_number`.
- Refund: `POST /v3/transactions/{id}/refund` `{amount}` -> "Transaction refund initiated",
  `data {id, amount_refunded, status}`; `GET /v3/refunds/{id}`. Verify does not show refunds:
  a charge is reported reversed once its learnt refunds cover it.
- Reconciliation: `GET /v3/transactions?from=YYYY-MM-DD&to=YYYY-MM-DD&page=N`
  (`meta.page_info.total_pages`); rows carry no phone; exact times are filtered here.
- Webhooks (dashboard URL): `charge.completed` and `transfer.completed` with
  `data {id, tx_ref | reference, flw_ref, amount, currency, status, customer.phone_number |
  account_number, processor_response | complete_message}`, header `verif-hash` equal to the
  secret hash set on the dashboard (`FLUTTERWAVE_WEBHOOK_HASH`): it proves the sender knows the
  secret, it does not sign the body.
- Probe: `GET /v3/balances` (read-only).
- Classification: `ERROR_RULES` (citing Flutterwave's error pages) is the table `_error` reads:
  auth messages are `auth`, a 2xx `status: "error"` is `invalid_request`, a 5xx ("Application
  error") stays `ambiguous` (nothing says it was not processed). A failed charge whose
  `processor_response` is the customer's (insufficient funds, aborted, M-Pesa's "Request
  cancelled by user", ...) carries it as `provider_code`; `customer_codes` lists them. A
  transfer's "Insufficient funds in customer wallet" is the merchant's balance, not a customer's.

v3 documents `tx_ref` as unique but promises no replay of the first answer (that is v4's
`X-Idempotency-Key`). So before re-sending a reference it already tried, this adapter asks
Flutterwave whether the first attempt exists, and answers with it if it does.

Identifier kinds reported to the engine (`identifier_sink`): `transaction_id` (the charge's
numeric id), `flw_ref`, `transfer_id`, `refund_ids` (comma-separated refund ids of a charge).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_autonomy.clock import Clock, to_datetime
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
from mcp_autonomy.providers.http import NO_SOURCE, build_client, short

PROVIDER = "flutterwave"


@dataclass(frozen=True)
class Market:
    """How Flutterwave moves one currency to and from mobile-money wallets."""

    charge_type: str
    countries: frozenset[str]
    networks: frozenset[str] = frozenset()  # empty: no `network` field
    default_network: str | None = None
    transfer_bank: str | None = None  # None: no mobile-money payouts documented for it
    national_phone: bool = False  # Ghana's examples use 0XXXXXXXXX


MARKETS: dict[str, Market] = {
    "KES": Market("mpesa", frozenset({"KE"}), transfer_bank="MPS"),
    "GHS": Market(
        "mobile_money_ghana",
        frozenset({"GH"}),
        frozenset({"MTN", "VODAFONE", "AIRTELTIGO"}),
        "MTN",
        transfer_bank="network",
        national_phone=True,
    ),
    "UGX": Market(
        "mobile_money_uganda", frozenset({"UG"}), frozenset({"MTN", "AIRTEL"}), "MTN", transfer_bank="MPS"
    ),
    "RWF": Market(
        "mobile_money_rwanda", frozenset({"RW"}), frozenset({"MTN", "AIRTEL"}), "MTN", transfer_bank="MPS"
    ),
    "ZMW": Market(
        "mobile_money_zambia",
        frozenset({"ZM"}),
        frozenset({"MTN", "ZAMTEL", "AIRTEL"}),
        "MTN",
        transfer_bank="MPS",
    ),
    "TZS": Market(
        "mobile_money_tanzania",
        frozenset({"TZ"}),
        frozenset({"AIRTEL", "TIGO", "HALOPESA", "VODAFONE"}),
        "AIRTEL",
    ),
    "XAF": Market("mobile_money_franco", frozenset({"CM"}), transfer_bank="FMM"),
    "XOF": Market("mobile_money_franco", frozenset({"CI", "SN", "ML"}), transfer_bank="FMM"),
}
"""Currency -> charge type, countries, networks and transfer bank code (Node-v3 SDK schemas)."""
EXTRA_DIAL_CODES = {"ML": "223", "SN": "221", "CI": "225", "CM": "237"}
NATIONAL_DIAL_OF_CURRENCY = {"GHS": "233"}
"""Ghana's numbers travel in national form (0550...): a pull or webhook phone is read with this."""
MINOR_UNIT_EXPONENTS = {"UGX": 0, "RWF": 0, "XAF": 0, "XOF": 0}
HASH_HEADER = "verif-hash"
MAX_LIST_PAGES = 10_000
"""A reconciliation window never walks more pages than this (v3 lists 10 rows a page)."""

FLW_ERRORS = "developer.flutterwave.com, docs/integration-guides/errors"
FLW_SUPPORT = "flutterwave.com support, 'Common bank transaction errors' / 'Common card transaction errors'"
DARAJA_RESULTS = "Daraja 3.0 docs, M-Pesa Express result descriptions (a type=mpesa charge relays M-Pesa's)"


def _normal(text: str) -> str:
    """A message as the rules compare it: case, spacing and a final full stop ignored."""
    return " ".join(text.casefold().split()).rstrip(".").strip()


_NOT_FOUND_RULES: tuple[ErrorRule, ...] = tuple(
    ErrorRule(
        match=phrase,
        error_class=ErrorClass.NOT_PROCESSED,
        meaning="a read (verify, transfer): raised as not_found, which the engine weighs with "
        "money_truth's grace (Flutterwave answers it for payments that exist, so it never proves one absent)",
        source="a read moves no money (http.TRANSPORT_RULES); Flutterwave/Node-v3 issues #32 and #136",
    )
    for phrase in ("No transaction was found", "Transaction not found", "Transfer not found")
)
"""Status reads that found nothing (the phrase anywhere in the message, with HTTP 404 or any 4xx)."""
_DUPLICATE_RULES: tuple[ErrorRule, ...] = tuple(
    ErrorRule(
        match=phrase,
        error_class=ErrorClass.AMBIGUOUS,
        meaning="a transfer refused because its reference exists: answered with that transfer, "
        "ambiguous while its lookup cannot see it (never paid twice)",
        source="developer.flutterwave.com, Transfers: the reference must be unique",
    )
    for phrase in ("duplicate", "already exists")
)
"""A resend meeting the first transfer (the phrase anywhere in the message)."""

_ANSWER_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(
        match="Authorization required",
        error_class=ErrorClass.AUTH,
        meaning="no secret key was sent (HTTP 401)",
        source=f"{FLW_ERRORS}: authorization errors, 401",
    ),
    ErrorRule(
        match="Invalid authorization key",
        error_class=ErrorClass.AUTH,
        meaning="the secret key is wrong (HTTP 401)",
        source=f"{FLW_ERRORS}: authorization errors, 401",
    ),
    ErrorRule(
        match="merchant secret key required",
        error_class=ErrorClass.AUTH,
        meaning="no secret key was sent (answered HTTP 400)",
        source=f"{FLW_ERRORS}: 'merchant secret key required'",
    ),
    ErrorRule(
        match="HTTP 2xx with status error (any other message)",
        error_class=ErrorClass.INVALID_REQUEST,
        meaning="Flutterwave refused the request inside a success status, without processing it",
        source=f"{FLW_ERRORS}: every error is {{status: 'error', message, data}}",
    ),
    ErrorRule(
        match="HTTP 5xx (e.g. 'Application error. Please contact support', code app_error)",
        error_class=ErrorClass.AMBIGUOUS,
        meaning="'something goes wrong on our end': nothing says the request was not processed",
        source=f"{NO_SOURCE} ({FLW_ERRORS}: server errors, 'retry after a while')",
    ),
)
"""Flutterwave's documented messages (matched whole, case ignored) and envelope answers."""
_REFUSED_2XX, _HTTP_5XX = _ANSWER_RULES[-2:]

_RESULT_RULES: tuple[ErrorRule, ...] = tuple(
    ErrorRule(match=final_result(code), error_class=ErrorClass.CUSTOMER, meaning=meaning, source=source)
    for code, meaning, source in (
        ("ABORTED", "the customer aborted the payment", FLW_SUPPORT),
        ("Insufficient funds", "the customer's account does not have enough funds", FLW_SUPPORT),
        ("No sufficient funds", "the customer's account does not have enough funds", FLW_SUPPORT),
        ("Daily transaction limit exceeded", "the customer's account hit its daily limit", FLW_SUPPORT),
        ("Request cancelled by user", "M-Pesa: the customer cancelled the prompt (1032)", DARAJA_RESULTS),
        (
            "DS timeout user cannot be reached",
            "M-Pesa: the customer's handset did not answer (1037)",
            DARAJA_RESULTS,
        ),
        (
            "The balance is insufficient for the transaction",
            "M-Pesa: the customer's balance is short (1)",
            DARAJA_RESULTS,
        ),
    )
)
"""A failed charge's `processor_response` that is the customer's (reported as its `provider_code`
in this spelling). A transfer's "DISBURSE FAILED: Insufficient funds in customer wallet" is the
merchant's Flutterwave balance (Flutterwave's "customer" is the merchant): never listed here."""

ERROR_RULES: tuple[ErrorRule, ...] = _NOT_FOUND_RULES + _DUPLICATE_RULES + _ANSWER_RULES + _RESULT_RULES
CUSTOMER_CODES = customer_codes_of(_RESULT_RULES)
NOT_FOUND_MESSAGES = tuple(_normal(rule.match) for rule in _NOT_FOUND_RULES)
DUPLICATE_MESSAGES = tuple(_normal(rule.match) for rule in _DUPLICATE_RULES)
_MESSAGE_RULES = {_normal(rule.match): rule for rule in _ANSWER_RULES if not rule.match.startswith("HTTP")}
_CUSTOMER_CODE_OF = {_normal(code): code for code in CUSTOMER_CODES}


def customer_code(text: Any) -> str | None:
    """A failed result's reason in `customer_codes` spelling, if it is the customer's."""
    return _CUSTOMER_CODE_OF.get(_normal(text)) if isinstance(text, str) else None


class FlutterwaveSettings(BaseSettings):
    """Flutterwave credentials and endpoint, from `FLUTTERWAVE_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="FLUTTERWAVE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    secret_key: SecretStr
    base_url: str = "https://api.flutterwave.com"
    customer_email_domain: str | None = Field(
        None, description="charges need an email: <msisdn>@<domain> when the payment carries none"
    )
    redirect_url: str | None = Field(None, description="where a redirect-mode charge returns the customer")
    webhook_hash: SecretStr | None = Field(
        None,
        description="the secret hash set on the Flutterwave dashboard, sent back as the verif-hash "
        "header of every webhook; unset: webhooks are parsed but not authenticated",
    )
    timeout_s: float = Field(15.0, ge=0.5, le=120.0)
    probe_min_interval_s: float = Field(0.0, ge=0.0, le=3600.0)

    @field_validator("secret_key")
    @classmethod
    def _is_secret_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("FLWSECK"):
            raise ValueError(
                "FLUTTERWAVE_SECRET_KEY must be a v3 secret key (FLWSECK-... or FLWSECK_TEST-...)"
            )
        return value

    @field_validator("webhook_hash")
    @classmethod
    def _no_empty_hash(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty variable means "not configured", never "accept an empty verif-hash".
        return value if value is not None and value.get_secret_value() else None


def amount_value(money: Money) -> int | float:
    """Flutterwave's amount in major units (an integer whenever it is whole)."""
    exponent = MINOR_UNIT_EXPONENTS.get(money.currency, 2)
    whole, part = divmod(money.amount_minor, 10**exponent)
    return whole if part == 0 else float(Decimal(money.amount_minor) / (10**exponent))


def money_of(amount: Any, currency: Any) -> Money | None:
    """A Flutterwave amount in major units as `Money`, or None."""
    if isinstance(amount, bool) or not isinstance(amount, int | float | str):
        return None
    if not isinstance(currency, str) or len(currency) != 3:
        return None
    try:
        minor = Decimal(str(amount)) * (10 ** MINOR_UNIT_EXPONENTS.get(currency, 2))
    except (InvalidOperation, ValueError):
        return None
    if not minor.is_finite() or minor <= 0 or minor != minor.to_integral_value():
        return None
    try:
        return Money(amount_minor=int(minor), currency=currency)
    except ValueError:
        return None


def payer_of(phone: Any, currency: Any) -> str | None:
    """A phone as Flutterwave reports it (international digits, or national in Ghana) in E.164."""
    if not isinstance(phone, str) or not phone.strip() or phone.strip().upper() == "N/A":
        return None
    dial = NATIONAL_DIAL_OF_CURRENCY.get(currency) if isinstance(currency, str) else None
    try:
        return normalize_msisdn(phone, dial)
    except ValueError:
        return None


def _epoch_of(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _data(body: Mapping[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    return dict(data) if isinstance(data, Mapping) else {}


def _charge_status(raw: str) -> TransactionStatus:
    if raw == "successful":
        return TransactionStatus.SUCCEEDED
    if raw == "failed":
        return TransactionStatus.FAILED
    if raw in ("pending", "processing"):
        return TransactionStatus.PENDING
    return TransactionStatus.UNKNOWN


def _transfer_status(raw: str) -> TransactionStatus:
    if raw == "SUCCESSFUL":
        return TransactionStatus.SUCCEEDED
    if raw == "FAILED":
        return TransactionStatus.FAILED
    if raw in ("NEW", "PENDING"):
        return TransactionStatus.PENDING
    return TransactionStatus.UNKNOWN


def _failure_code(status: TransactionStatus, reason: Any, raw_status: str) -> str | None:
    """A result's `provider_code`: a failed one's customer reason (`customer_codes` spelling) when
    it is the customer's, so the engine can tell it from the provider's; else the raw status."""
    if status is TransactionStatus.FAILED:
        code = customer_code(reason)
        if code is not None:
            return code
    return raw_status or None


def _id_of(value: Any) -> str | None:
    """A Flutterwave numeric id (sent as a number or a string) as a string."""
    if isinstance(value, bool) or value is None:
        return None
    text = str(value)
    return text if text.isdigit() else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name, from any mapping (a plain dict is case-sensitive)."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


class FlutterwaveAdapter(AdapterBase[FlutterwaveSettings]):
    """Speaks Flutterwave v3 for mobile money: charges, verify, transfers, refunds, webhooks."""

    name = PROVIDER
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT, Operation.PAYOUT, Operation.REFUND}),
        currencies=frozenset(MARKETS),
        countries=frozenset(c for market in MARKETS.values() for c in market.countries),
        refunds=True,
    )
    error_rules = ERROR_RULES
    """Every Flutterwave answer this adapter classifies, with its class and source (README table)."""
    customer_codes = CUSTOMER_CODES
    """A failed charge's `processor_response` that is the customer's (reported as `provider_code`)."""
    money_truth = MoneyTruth(
        not_found_grace_s=900.0,
        not_found_is_final_after_grace=False,
        pending_bound_s=86_400.0,
        pull_carries=frozenset({"status", "amount", "currency", "payer", "provider_reference", "reason"}),
        callback_carries=frozenset({"status", "amount", "currency", "payer", "provider_reference", "reason"}),
        callback_auth="shared_secret",
        pull_path=(
            "Every charge is pulled by our tx_ref (GET /v3/transactions/verify_by_reference, redirect-mode "
            "charges included) or by its learnt id (GET /v3/transactions/{id}/verify); a transfer by its "
            "learnt id (GET /v3/transfers/{id}) or by reference (GET /v3/transfers?reference=); a "
            "refund by its learnt id (GET /v3/refunds/{id}), else it has no pull path."
        ),
        sources=(
            "Flutterwave v3 docs: Verify transaction, Transfers (statuses NEW, PENDING, SUCCESSFUL, "
            "FAILED), Refunds, Webhooks (verif-hash = the dashboard's secret hash; charge.completed, "
            "transfer.completed)",
            "Flutterwave/Node-v3 documentation/transactions.md (list: from, to, page, meta.page_info; "
            "verify and refund samples) and documentation/transfers.md",
            "Flutterwave/Node-v3 issues #32 and #136: 'No transaction was found for this id' for "
            "transactions that exist",
            "not_found_grace_s: Flutterwave documents no lookup lag; 900 s chosen conservatively, and "
            "'not found' is never taken as 'not processed' (lookups answer it for existing payments)",
            "pending_bound_s: Flutterwave documents no bound for pending charges or NEW/PENDING "
            "transfers; 24 h chosen conservatively",
        ),
    )

    def __init__(
        self,
        settings: FlutterwaveSettings,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        settings_loader: Callable[[], FlutterwaveSettings] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            settings, clock, timeout_s=timeout_s, settings_loader=settings_loader, transport=transport
        )
        # reference -> "charge" | "transfer": sent at least once by this instance. v3 does not
        # deduplicate tx_ref, so a resend by this instance first asks whether the first exists.
        self._attempted = RecentMap()

    # --- identity and plumbing -----------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """`FLW-` + 28 hex characters of the key's SHA-256: the charge `tx_ref`, the transfer `reference`."""
        return "FLW-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:28]

    def _new_client(self) -> httpx.AsyncClient:
        # The key travels per request (see `_call`), so a reloaded key applies without a new client.
        return build_client(self._base_url(), self._timeout_s, transport=self._transport)

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._settings.secret_key.get_secret_value()}"}

    @staticmethod
    def _ok(response: httpx.Response, body: Mapping[str, Any]) -> bool:
        return response.status_code < 400 and body.get("status") == "success"

    @staticmethod
    def _says(body: Mapping[str, Any], phrases: tuple[str, ...]) -> bool:
        message = _normal(str(body.get("message") or ""))
        return any(phrase in message for phrase in phrases)

    def _is_not_found(self, response: httpx.Response, body: Mapping[str, Any]) -> bool:
        return response.status_code == 404 or (
            response.status_code >= 400 and self._says(body, NOT_FOUND_MESSAGES)
        )

    def _error(
        self, response: httpx.Response, body: dict[str, Any], *, mutating: bool, what: str
    ) -> ProviderError:
        message = str(body.get("message") or f"HTTP {response.status_code}")
        rule = _MESSAGE_RULES.get(_normal(message))
        if rule is None and response.status_code < 400:
            rule = _REFUSED_2XX
        elif rule is None and response.status_code >= 500:
            rule = _HTTP_5XX
        error_class = rule.error_class if rule is not None else None  # None: http.py's table
        if error_class is ErrorClass.AMBIGUOUS and not mutating:
            error_class = ErrorClass.NOT_PROCESSED  # a read moves no money
        return self._provider_error(
            response,
            error_class,
            f"{what}: {message}",
            code=str(body.get("code") or body.get("status") or "") or None,
            mutating=mutating,
        )

    @staticmethod
    def _not_found(what: str, reference: str) -> ProviderError:
        return ProviderError(
            PROVIDER, ErrorClass.NOT_PROCESSED, f"no {what} {reference}", code=NOT_FOUND_CODE
        )

    def _market(self, request: PaymentRequest) -> Market:
        market = MARKETS.get(request.money.currency)
        if market is None:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"Flutterwave mobile money takes {', '.join(sorted(MARKETS))}, not {request.money.currency}",
            )
        if request.country not in market.countries:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"{request.money.currency} mobile money is not offered in {request.country}",
            )
        return market

    def _phone(self, request: PaymentRequest, market: Market) -> str:
        dial = DIAL_CODES.get(request.country) or EXTRA_DIAL_CODES.get(request.country, "")
        if not request.phone.startswith(f"+{dial}"):
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, f"not a {request.country} number (+{dial}...)"
            )
        if market.national_phone:
            return "0" + request.phone[len(dial) + 1 :]
        return request.phone[1:]

    def _network(self, request: PaymentRequest, market: Market) -> str | None:
        if not market.networks:
            return None
        network = request.metadata.get("network", market.default_network or "").upper()
        if network not in market.networks:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"network {network!r} is not offered for {request.money.currency} ({', '.join(sorted(market.networks))})",
            )
        return network

    def _refund_ids(self, reference: str, context: PaymentContext | None = None) -> list[str]:
        known = self._identifier(reference, "refund_ids", context) or ""
        return [refund_id for refund_id in known.split(",") if refund_id]

    # --- probe ---------------------------------------------------------------------------

    async def _probe_once(self) -> str:
        """`GET /v3/balances`: authenticated, read-only, cheap."""
        response, body = await self._request("GET", "/v3/balances", mutating=False, what="balances")
        if not self._ok(response, body):
            raise self._error(response, body, mutating=False, what="balances")
        balances = body.get("data")
        return f"{len(balances) if isinstance(balances, list) else 0} balance(s)"

    # --- collect -------------------------------------------------------------------------

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        """A mobile-money direct charge; pending until the customer authorises it."""
        market = self._market(request)
        phone = self._phone(request, market)
        network = self._network(request, market)
        email = request.metadata.get("email")
        if not email:
            if not self._settings.customer_email_domain:
                raise ProviderError(
                    PROVIDER,
                    ErrorClass.INVALID_REQUEST,
                    "Flutterwave needs the customer's email: pass metadata.email or set FLUTTERWAVE_CUSTOMER_EMAIL_DOMAIN",
                )
            email = f"{request.phone.lstrip('+')}@{self._settings.customer_email_domain}"
        reference = self.reference_for(request.idempotency_key)
        if reference in self._attempted:
            existing = await self._existing(reference, request.money, Operation.COLLECT)
            if existing is not None:
                return existing
        payload: dict[str, Any] = {
            "tx_ref": reference,
            "amount": amount_value(request.money),
            "currency": request.money.currency,
            "email": email,
            "phone_number": phone,
            "fullname": request.metadata.get("fullname", request.phone),
        }
        if network:
            payload["network"] = network
        if market.charge_type == "mobile_money_franco":
            payload["country"] = request.country
        if self._settings.redirect_url:
            payload["redirect_url"] = self._settings.redirect_url
        self._attempted.remember(reference, "charge")
        response, body = await self._request(
            "POST",
            "/v3/charges",
            mutating=True,
            what="charge",
            payload=payload,
            params={"type": market.charge_type},
        )
        if not self._ok(response, body):
            raise self._error(response, body, mutating=True, what="charge")
        data = _data(body)
        meta = body.get("meta")
        authorization = meta.get("authorization") if isinstance(meta, Mapping) else None
        if not data and isinstance(authorization, Mapping):
            # Redirect mode (Ghana, Uganda, ...): no transaction id until the customer authorises;
            # the charge is still pulled by its tx_ref.
            return ProviderTransaction(
                provider=PROVIDER,
                reference=reference,
                status=TransactionStatus.PENDING,
                money=request.money,
                provider_message=short(f"customer must authorise at {authorization.get('redirect', '?')}"),
                raw_status=f"authorization:{authorization.get('mode', '?')}",
                raw={"authorization": dict(authorization)},
            )
        return self._charge_transaction(reference, data, fallback=request.money)

    async def _existing(
        self, reference: str, money: Money, operation: Operation
    ) -> ProviderTransaction | None:
        """The transaction already under this reference, if Flutterwave has one."""
        try:
            if operation is Operation.PAYOUT:
                existing = await self._transfer_status(reference, None)
            else:
                existing = await self._charge_status(reference, None)
        except ProviderError as exc:
            if exc.code == NOT_FOUND_CODE:
                return None
            raise
        if existing.money is not None and existing.money != money:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"reference {reference} already holds a different payment",
                code="duplicate",
            )
        return existing

    def _charge_transaction(
        self, reference: str, data: dict[str, Any], fallback: Money | None = None
    ) -> ProviderTransaction:
        tx_id = _id_of(data.get("id"))
        self._learn(reference, "transaction_id", tx_id)
        self._learn(reference, "flw_ref", str(data["flw_ref"]) if data.get("flw_ref") else None)
        raw_status = str(data.get("status") or "").lower()
        customer = data.get("customer")
        payer = payer_of(
            customer.get("phone_number") if isinstance(customer, Mapping) else None, data.get("currency")
        )
        raw = {**data, "payer": payer} if payer else data
        status = _charge_status(raw_status)
        reason = data.get("processor_response")
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=tx_id,
            status=status,
            money=money_of(data.get("amount"), data.get("currency")) or fallback,
            provider_code=_failure_code(status, reason, raw_status),
            provider_message=short(reason or raw_status),
            raw_status=raw_status or None,
            raw=raw,
        )

    # --- status --------------------------------------------------------------------------

    async def status(
        self, reference: str, provider_reference: str | None = None, *, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        """Ask Flutterwave where a payment stands (always a fresh pull).

        The context's operation picks the endpoint (a charge's verify, a transfer, a refund);
        ids come from this instance's memory or the context. Without a context, a charge is
        tried, then a transfer. Raises `ProviderError(code="not_found")` when Flutterwave answers
        that it knows no such payment (which may be its lookup lag: see `money_truth`).
        """
        operation = context.operation if context is not None else None
        if operation is None:
            attempted = self._attempted.get(reference)
            operation = {"charge": Operation.COLLECT, "transfer": Operation.PAYOUT}.get(attempted or "")
        if operation is Operation.REFUND:
            refund_ids = self._refund_ids(reference, context)
            refund_id = provider_reference or (refund_ids[-1] if refund_ids else None)
            if not refund_id:
                return ProviderTransaction(
                    provider=PROVIDER,
                    reference=reference,
                    status=TransactionStatus.UNKNOWN,
                    provider_message="no refund id was learnt: Flutterwave fetches a refund only by its id",
                )
            return await self.refund_status(refund_id, reference)
        if operation is Operation.PAYOUT:
            return await self._transfer_status(reference, provider_reference, context)
        if operation is Operation.COLLECT:
            return await self._charge_status(reference, provider_reference, context)
        try:
            return await self._charge_status(reference, provider_reference, context)
        except ProviderError as exc:
            if exc.code != NOT_FOUND_CODE:
                raise
        try:
            return await self._transfer_status(reference, None, context)
        except ProviderError as exc:
            if exc.code != NOT_FOUND_CODE:
                raise
        raise self._not_found("charge or transfer", reference)

    async def _charge_status(
        self, reference: str, provider_reference: str | None, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        tx_id = self._identifier(reference, "transaction_id", context) or _id_of(provider_reference)
        if tx_id:
            response, body = await self._request(
                "GET", f"/v3/transactions/{tx_id}/verify", mutating=False, what="verify"
            )
        else:
            response, body = await self._request(
                "GET",
                "/v3/transactions/verify_by_reference",
                mutating=False,
                what="verify",
                params={"tx_ref": reference},
            )
        if not self._ok(response, body):
            if self._is_not_found(response, body):
                raise self._not_found("charge", reference)
            raise self._error(response, body, mutating=False, what="verify")
        data = _data(body)
        if tx_id and data.get("tx_ref") not in (None, reference):
            # The learnt id belongs to another payment: never report its money as this one's.
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"transaction {tx_id} carries another tx_ref than {reference}",
            )
        txn = self._charge_transaction(reference, data)
        refund_ids = self._refund_ids(reference, context)
        if txn.status is TransactionStatus.SUCCEEDED and refund_ids:
            return await self._with_refunds(txn, refund_ids)
        return txn

    async def _transfer_status(
        self, reference: str, provider_reference: str | None, context: PaymentContext | None = None
    ) -> ProviderTransaction:
        transfer_id = self._identifier(reference, "transfer_id", context) or _id_of(provider_reference)
        if transfer_id:
            response, body = await self._request(
                "GET", f"/v3/transfers/{transfer_id}", mutating=False, what="transfer"
            )
            if not self._ok(response, body):
                if self._is_not_found(response, body):
                    raise self._not_found("transfer", reference)
                raise self._error(response, body, mutating=False, what="transfer")
            data = _data(body)
        else:
            # No id learnt (the create call's answer was lost): the list by reference still finds it.
            response, body = await self._request(
                "GET", "/v3/transfers", mutating=False, what="transfers", params={"reference": reference}
            )
            if not self._ok(response, body):
                if self._is_not_found(response, body):
                    raise self._not_found("transfer", reference)
                raise self._error(response, body, mutating=False, what="transfers")
            rows = body.get("data")
            data = dict(rows[0]) if isinstance(rows, list) and rows and isinstance(rows[0], Mapping) else {}
            if not data:
                raise self._not_found("transfer", reference)
        if data.get("reference") not in (None, reference):
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"transfer {transfer_id} carries another reference than {reference}",
            )
        return self._transfer_transaction(reference, data)

    def _transfer_transaction(
        self, reference: str, data: dict[str, Any], fallback: Money | None = None
    ) -> ProviderTransaction:
        raw_status = str(data.get("status") or "").upper()
        transfer_id = _id_of(data.get("id"))
        if transfer_id is not None:
            self._learn(reference, "transfer_id", transfer_id)
            self._attempted.remember(reference, "transfer")
        payer = payer_of(data.get("account_number"), data.get("currency"))
        raw = {**data, "payer": payer} if payer else data
        status = _transfer_status(raw_status)
        reason = data.get("complete_message")
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=transfer_id,
            status=status,
            money=money_of(data.get("amount"), data.get("currency")) or fallback,
            provider_code=_failure_code(status, reason, raw_status),
            provider_message=short(reason or raw_status),
            raw_status=raw_status or None,
            raw=raw,
        )

    # --- reconciliation ------------------------------------------------------------------

    async def list_transactions(
        self, since_epoch_s: float, until_epoch_s: float
    ) -> list[ProviderTransaction]:
        """Every charge Flutterwave created in `[since, until)` (reconciliation).

        v3 filters by day (`from`/`to` dates); the exact bounds are applied here. Pure reading:
        nothing is learnt (rows may not be ours, and one tx_ref may carry several charges).
        List rows carry no phone, so no `raw["payer"]`.
        """
        found: list[ProviderTransaction] = []
        params = {
            "from": to_datetime(since_epoch_s).date().isoformat(),
            "to": to_datetime(until_epoch_s).date().isoformat(),
        }
        for page in range(1, MAX_LIST_PAGES + 1):
            response, body = await self._request(
                "GET",
                "/v3/transactions",
                mutating=False,
                what="list transactions",
                params={**params, "page": str(page)},
            )
            if not self._ok(response, body):
                raise self._error(response, body, mutating=False, what="list transactions")
            rows = body.get("data")
            rows = rows if isinstance(rows, list) else []
            for row in rows:
                if not isinstance(row, Mapping) or not isinstance(row.get("tx_ref"), str):
                    continue
                created = _epoch_of(row.get("created_at"))
                if created is not None and not since_epoch_s <= created < until_epoch_s:
                    continue
                raw_status = str(row.get("status") or "").lower()
                status = _charge_status(raw_status)
                found.append(
                    ProviderTransaction(
                        provider=PROVIDER,
                        reference=str(row["tx_ref"]),
                        provider_reference=_id_of(row.get("id")),
                        status=status,
                        money=money_of(row.get("amount"), row.get("currency")),
                        provider_code=_failure_code(status, row.get("processor_response"), raw_status),
                        provider_message=short(row.get("processor_response") or raw_status),
                        raw_status=raw_status or None,
                        raw=dict(row),
                    )
                )
            meta = body.get("meta")
            page_info = meta.get("page_info") if isinstance(meta, Mapping) else None
            total_pages = page_info.get("total_pages") if isinstance(page_info, Mapping) else None
            if not rows or not isinstance(total_pages, int) or page >= total_pages:
                break
        return found

    # --- payout --------------------------------------------------------------------------

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        """A transfer from the Flutterwave balance to the customer's mobile-money wallet."""
        market = self._market(request)
        if market.transfer_bank is None:
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                f"no mobile-money transfers documented for {request.money.currency}",
            )
        bank = self._network(request, market) if market.transfer_bank == "network" else market.transfer_bank
        reference = self.reference_for(request.idempotency_key)
        if reference in self._attempted:
            existing = await self._existing(reference, request.money, Operation.PAYOUT)
            if existing is not None:
                return existing
        payload = {
            "account_bank": bank,
            "account_number": request.phone[1:],
            "amount": amount_value(request.money),
            "currency": request.money.currency,
            "narration": request.description[:100],
            "reference": reference,
            "beneficiary_name": request.metadata.get("recipient_name", request.phone),
        }
        self._attempted.remember(reference, "transfer")
        response, body = await self._request(
            "POST", "/v3/transfers", mutating=True, what="transfer", payload=payload
        )
        if not self._ok(response, body):
            if self._says(body, DUPLICATE_MESSAGES):  # an earlier attempt got through: report it
                existing = await self._existing(reference, request.money, Operation.PAYOUT)
                if existing is not None:
                    return existing
                # The refusal proves the transfer exists; a lookup that cannot see it yet must
                # never read as "not processed", or the engine could pay out twice.
                raise ProviderError(
                    PROVIDER,
                    ErrorClass.AMBIGUOUS,
                    f"transfer {reference} exists (duplicate reference) but its lookup does not see it yet",
                    code="duplicate",
                    http_status=response.status_code,
                )
            raise self._error(response, body, mutating=True, what="transfer")
        return self._transfer_transaction(reference, _data(body), fallback=request.money)

    # --- refund --------------------------------------------------------------------------

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Refund a successful charge, fully or partly; the answer describes the refund.

        A repeat of the same refund (same amount, an earlier refund of this charge) is answered
        with the existing one, never a second refund. Each refund id is learnt (`refund_ids`).
        """
        if transaction.status is not TransactionStatus.SUCCEEDED:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only a successful charge")
        reference = transaction.reference
        tx_id = (
            _id_of(transaction.provider_reference)
            or _id_of(transaction.raw.get("id"))
            or self._identifier(reference, "transaction_id")
        )
        if not tx_id or self._attempted.get(reference) == "transfer":
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, "refund: the charge's transaction id is unknown"
            )
        amount = money or transaction.money
        if amount is None:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: the amount is unknown")
        if transaction.money is not None and (
            amount.currency != transaction.money.currency
            or amount.amount_minor > transaction.money.amount_minor
        ):
            raise ProviderError(
                PROVIDER,
                ErrorClass.INVALID_REQUEST,
                "refund: more than, or another currency than, the charge",
            )
        known = self._refund_ids(reference)
        for earlier_id in known:
            earlier = await self.refund_status(earlier_id, reference)
            if earlier.money == amount:
                return earlier
        response, body = await self._request(
            "POST",
            f"/v3/transactions/{tx_id}/refund",
            mutating=True,
            what="refund",
            payload={"amount": amount_value(amount)},
        )
        data = _data(body)
        new_id = _id_of(data.get("id"))
        if not self._ok(response, body) or new_id is None:
            raise self._error(response, body, mutating=True, what="refund")
        self._learn(reference, "refund_ids", ",".join([*known, new_id]))
        return self._refund_transaction(reference, data, amount)

    async def refund_status(self, refund_id: str, reference: str | None = None) -> ProviderTransaction:
        """Where one refund stands (`GET /v3/refunds/{id}`)."""
        response, body = await self._request("GET", f"/v3/refunds/{refund_id}", mutating=False, what="refund")
        if not self._ok(response, body):
            if self._is_not_found(response, body):
                raise self._not_found("refund", refund_id)
            raise self._error(response, body, mutating=False, what="refund")
        return self._refund_transaction(reference or refund_id, _data(body), None)

    def _refund_transaction(
        self, reference: str, data: dict[str, Any], amount: Money | None
    ) -> ProviderTransaction:
        raw_status = str(data.get("status") or "").lower()
        if raw_status in ("completed", "successful"):
            status = TransactionStatus.SUCCEEDED
        elif raw_status == "failed":
            status = TransactionStatus.FAILED
        else:
            status = (
                TransactionStatus.PENDING
                if raw_status in ("pending", "new", "")
                else TransactionStatus.UNKNOWN
            )
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=_id_of(data.get("id")),
            status=status,
            money=money_of(data.get("amount_refunded"), data.get("currency")) or amount,
            provider_code=raw_status or None,
            provider_message=short(raw_status),
            raw_status=raw_status or None,
            raw=data,
        )

    async def _with_refunds(self, txn: ProviderTransaction, refund_ids: list[str]) -> ProviderTransaction:
        refunded_minor = 0
        for refund_id in refund_ids:
            refund = await self.refund_status(refund_id, txn.reference)
            if refund.status is TransactionStatus.SUCCEEDED and refund.money is not None:
                refunded_minor += refund.money.amount_minor
        if txn.money is not None and refunded_minor >= txn.money.amount_minor:
            return txn.model_copy(
                update={"status": TransactionStatus.REVERSED, "raw_status": "successful (refunded)"}
            )
        return txn

    # --- webhooks ------------------------------------------------------------------------

    def parse_callback(
        self, body: bytes, headers: Mapping[str, str], *, path_kind: str, path_reference: str | None
    ) -> CallbackHint | None:
        """What one Flutterwave webhook claims.

        Pure: no state changes. With `FLUTTERWAVE_WEBHOOK_HASH` set, the `verif-hash` header must
        equal it (`CallbackAuthError` otherwise) and the hint is `authenticated`; unset, the
        webhook is parsed unauthenticated. `MalformedCallback` for a body that is not
        Flutterwave's shape; None for events about no payment.
        """
        configured = self._settings.webhook_hash
        authenticated = False
        if configured is not None:
            sent = _header(headers, HASH_HEADER)
            if not sent:
                raise CallbackAuthError(f"missing {HASH_HEADER} header")
            if not hmac.compare_digest(sent.encode(), configured.get_secret_value().encode()):
                raise CallbackAuthError(f"{HASH_HEADER} does not match the configured secret hash")
            authenticated = True
        try:
            event = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedCallback("Flutterwave webhook: the body is not JSON") from exc
        if not isinstance(event, dict):
            raise MalformedCallback("Flutterwave webhook: the body is not a JSON object")
        name = event.get("event")
        if not isinstance(name, str) or not name:
            raise MalformedCallback("Flutterwave webhook: missing event")
        if name == "charge.completed":
            return self._hint(name, event.get("data"), Operation.COLLECT, path_reference, authenticated)
        if name == "transfer.completed":
            return self._hint(name, event.get("data"), Operation.PAYOUT, path_reference, authenticated)
        return None

    def _hint(
        self,
        event: str,
        data: Any,
        operation: Operation,
        path_reference: str | None,
        authenticated: bool,
    ) -> CallbackHint:
        if not isinstance(data, dict):
            raise MalformedCallback(f"Flutterwave {event}: missing data")
        field = "tx_ref" if operation is Operation.COLLECT else "reference"
        reference = data.get(field)
        from_path = path_reference if path_reference not in (None, "", "-") else None
        if reference is not None and not isinstance(reference, str):
            raise MalformedCallback(f"Flutterwave {event}: data.{field} is not a string")
        if reference and from_path and reference != from_path:
            raise MalformedCallback(f"Flutterwave {event}: data.{field} differs from the URL's")
        reference = reference or from_path
        if not reference:
            raise MalformedCallback(f"Flutterwave {event}: missing data.{field}")
        raw_status = data.get("status")
        if not isinstance(raw_status, str) or not raw_status:
            raise MalformedCallback(f"Flutterwave {event}: missing data.status")
        currency = data.get("currency")
        money: Money | None = None
        if data.get("amount") is not None:
            money = money_of(data.get("amount"), currency)
            if money is None:
                raise MalformedCallback(f"Flutterwave {event}: data.amount/currency is not an amount")
        extras = {"flw_ref": str(data["flw_ref"])} if data.get("flw_ref") else {}
        if operation is Operation.COLLECT:
            customer = data.get("customer")
            phone = customer.get("phone_number") if isinstance(customer, Mapping) else None
            status = _charge_status(raw_status.lower())
            reason = data.get("processor_response")
        else:
            phone = data.get("account_number")
            status = _transfer_status(raw_status.upper())
            reason = data.get("complete_message")
        message = reason or raw_status
        return CallbackHint(
            provider=PROVIDER,
            reference=reference,
            provider_reference=_id_of(data.get("id")),
            operation=operation,
            status=status,
            money=money,
            payer=payer_of(phone, currency),
            provider_code=short(_failure_code(status, reason, raw_status) or raw_status),
            provider_message=short(message),
            extras=extras,
            authenticated=authenticated,
        )
