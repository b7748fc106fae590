"""Flutterwave (v3) adapter: mobile-money direct charges, verification, transfers, refunds.

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
- Verify: `GET /v3/transactions/verify_by_reference?tx_ref=` (and `/v3/transactions/{id}/verify`)
  -> `data.status` successful / failed / pending; unknown -> "No transaction was found for this id".
- Transfers: `POST /v3/transfers` `{account_bank, account_number, amount, currency, narration,
  reference, beneficiary_name}` -> "Transfer Queued Successfully", `data.status` NEW; then
  PENDING, SUCCESSFUL or FAILED (`complete_message`) at `GET /v3/transfers/{id}` or
  `GET /v3/transfers?reference=`. Mobile-money wallets use `account_bank` MPS (M-Pesa Kenya and
  the MPS wallets of Uganda, Rwanda, Zambia), the network name in Ghana, FMM in francophone
  markets, and the phone number as `account_number`.
- Refund: `POST /v3/transactions/{id}/refund` `{amount}` -> "Transaction refund initiated",
  `data {id, amount_refunded, status}`; `GET /v3/refunds/{id}`.
- Probe: `GET /v3/balances` (read-only).

v3 documents `tx_ref` as unique but promises no replay of the first answer (that is v4's
`X-Idempotency-Key`). So before re-sending a reference it already tried, this adapter asks
Flutterwave whether the first attempt exists, and answers with it if it does.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mcp_autonomy.clock import Clock
from mcp_autonomy.providers.base import (
    DIAL_CODES,
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

PROVIDER = "flutterwave"
MAX_REMEMBERED = 100_000


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
MINOR_UNIT_EXPONENTS = {"UGX": 0, "RWF": 0, "XAF": 0, "XOF": 0}
NOT_FOUND_MESSAGES = ("no transaction was found", "transaction not found", "transfer not found")
DUPLICATE_MESSAGES = ("duplicate", "already exists")


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


class _Recent(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries beyond `MAX_REMEMBERED`."""

    def remember(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_REMEMBERED:
            self.popitem(last=False)


def amount_value(money: Money) -> int | float:
    """Flutterwave's amount in major units (an integer whenever it is whole)."""
    exponent = MINOR_UNIT_EXPONENTS.get(money.currency, 2)
    whole, part = divmod(money.amount_minor, 10**exponent)
    return whole if part == 0 else float(Decimal(money.amount_minor) / (10**exponent))


def money_of(amount: Any, currency: Any) -> Money | None:
    """A Flutterwave amount in major units as `Money`, or None."""
    if not isinstance(currency, str) or len(currency) != 3:
        return None
    try:
        minor = Decimal(str(amount)) * (10 ** MINOR_UNIT_EXPONENTS.get(currency, 2))
    except (InvalidOperation, ValueError):
        return None
    if minor <= 0 or minor != minor.to_integral_value():
        return None
    return Money(amount_minor=int(minor), currency=currency)


def _data(body: Mapping[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    return dict(data) if isinstance(data, Mapping) else {}


class FlutterwaveAdapter(HttpClientOwner):
    """Speaks Flutterwave v3 for mobile money: charges, verify, transfers, refunds, balances."""

    name = PROVIDER
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT, Operation.PAYOUT, Operation.REFUND}),
        currencies=frozenset(MARKETS),
        countries=frozenset(c for market in MARKETS.values() for c in market.countries),
        refunds=True,
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
        self._settings = settings
        self._clock = clock
        self._timeout_s = timeout_s if timeout_s is not None else settings.timeout_s
        make_timeout(self._timeout_s)
        self._settings_loader = settings_loader
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._last_probe: tuple[float, ProbeResult] | None = None
        self._attempted = _Recent()  # reference -> "charge" | "transfer": sent at least once
        self._transfer_ids = _Recent()  # reference -> transfer id
        self._refunds = _Recent()  # reference -> list of (refund id, Money)

    # --- identity and tuning -------------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """`FLW-` + 28 hex characters of the key's SHA-256: the charge `tx_ref`, the transfer `reference`."""
        return "FLW-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:28]

    # --- lifecycle -----------------------------------------------------------------------

    async def initialize(self) -> None:
        """A fresh HTTP client with the current key (v3 keys are static: nothing to fetch)."""
        self._last_probe = None  # a re-initialised adapter is probed afresh, never from the cache
        await self.close()
        if self._settings_loader is not None:
            self._settings = self._settings_loader()
        self._client = self._new_client()

    async def refresh_credentials(self) -> None:
        """Re-read the key (a rotated `FLUTTERWAVE_SECRET_KEY`) and rebuild the client with it."""
        await self.initialize()

    def _new_client(self) -> httpx.AsyncClient:
        return build_client(
            self._settings.base_url,
            self._timeout_s,
            headers={"Authorization": f"Bearer {self._settings.secret_key.get_secret_value()}"},
            transport=self._transport,
        )

    # --- plumbing ------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        mutating: bool,
        what: str,
        payload: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[httpx.Response, dict[str, Any]]:
        response = await send(
            self._http(),
            PROVIDER,
            method,
            path,
            mutating=mutating,
            what=what,
            json_body=payload,
            params=params,
        )
        return response, json_object(response)

    @staticmethod
    def _ok(response: httpx.Response, body: Mapping[str, Any]) -> bool:
        return response.status_code < 400 and body.get("status") == "success"

    @staticmethod
    def _says(body: Mapping[str, Any], phrases: tuple[str, ...]) -> bool:
        message = str(body.get("message") or "").lower()
        return any(phrase in message for phrase in phrases)

    def _error(
        self, response: httpx.Response, body: dict[str, Any], *, mutating: bool, what: str
    ) -> ProviderError:
        message = str(body.get("message") or f"HTTP {response.status_code}")
        error_class = classify_http_status(response.status_code, mutating=mutating)
        if error_class is None:
            # HTTP 2xx with `status: "error"`: Flutterwave refused the request without processing it.
            error_class = ErrorClass.INVALID_REQUEST
        return ProviderError(
            PROVIDER,
            error_class,
            f"{what}: {short(message)}",
            code=str(body.get("code") or body.get("status") or "") or None,
            http_status=response.status_code,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After"), self._clock.now()),
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

    # --- probe ---------------------------------------------------------------------------

    async def probe(self) -> ProbeResult:
        """`GET /v3/balances`: authenticated, read-only, cheap."""
        now = self._clock.monotonic()
        if self._last_probe is not None and now - self._last_probe[0] < self._settings.probe_min_interval_s:
            cached = self._last_probe[1]
            return cached.model_copy(update={"detail": f"{cached.detail} (cached)"})
        started = time.perf_counter()
        response, body = await self._call("GET", "/v3/balances", mutating=False, what="balances")
        if not self._ok(response, body):
            raise self._error(response, body, mutating=False, what="balances")
        balances = body.get("data")
        count = len(balances) if isinstance(balances, list) else 0
        result = ProbeResult(
            ok=True, latency_ms=(time.perf_counter() - started) * 1000, detail=f"{count} balance(s)"
        )
        self._last_probe = (now, result)
        return result

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
            existing = await self._existing(reference, request.money)
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
        response, body = await self._call(
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
            # Redirect mode (Ghana, Uganda, ...): no transaction id until the customer authorises.
            return ProviderTransaction(
                provider=PROVIDER,
                reference=reference,
                status=TransactionStatus.PENDING,
                money=request.money,
                provider_message=short(f"customer must authorise at {authorization.get('redirect', '?')}"),
                raw_status=f"authorization:{authorization.get('mode', '?')}",
                raw={"authorization": dict(authorization)},
            )
        return self._charge_transaction(reference, data, request.money)

    async def _existing(self, reference: str, money: Money) -> ProviderTransaction | None:
        """The transaction already under this reference, if Flutterwave has one."""
        try:
            existing = await self.status(reference)
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
        raw_status = str(data.get("status") or "").lower()
        if raw_status == "successful":
            status = TransactionStatus.SUCCEEDED
        elif raw_status == "failed":
            status = TransactionStatus.FAILED
        elif raw_status in ("pending", "processing"):
            status = TransactionStatus.PENDING
        else:
            status = TransactionStatus.UNKNOWN
        tx_id = data.get("id")
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=str(tx_id) if tx_id is not None else None,
            status=status,
            money=money_of(data.get("amount"), data.get("currency")) or fallback,
            provider_code=raw_status or None,
            provider_message=short(data.get("processor_response") or raw_status),
            raw_status=raw_status or None,
            raw=data,
        )

    # --- status --------------------------------------------------------------------------

    async def status(self, reference: str, provider_reference: str | None = None) -> ProviderTransaction:
        """Verify a charge by `tx_ref`, else look the transfer up by its reference.

        Raises `ProviderError(code="not_found")` when Flutterwave has neither.
        """
        if self._attempted.get(reference) == "transfer":
            return await self._transfer_status(reference)
        response, body = await self._call(
            "GET",
            "/v3/transactions/verify_by_reference",
            mutating=False,
            what="verify",
            params={"tx_ref": reference},
        )
        if self._ok(response, body):
            txn = self._charge_transaction(reference, _data(body))
            if txn.status is TransactionStatus.SUCCEEDED and self._refunds.get(reference):
                return await self._with_refunds(txn)
            return txn
        if not self._says(body, NOT_FOUND_MESSAGES) and response.status_code != 404:
            raise self._error(response, body, mutating=False, what="verify")
        return await self._transfer_status(reference)

    async def _transfer_status(self, reference: str) -> ProviderTransaction:
        transfer_id = self._transfer_ids.get(reference)
        if transfer_id:
            response, body = await self._call(
                "GET", f"/v3/transfers/{transfer_id}", mutating=False, what="transfer"
            )
            data = _data(body) if self._ok(response, body) else {}
        else:
            response, body = await self._call(
                "GET", "/v3/transfers", mutating=False, what="transfers", params={"reference": reference}
            )
            rows = body.get("data") if self._ok(response, body) else None
            data = dict(rows[0]) if isinstance(rows, list) and rows and isinstance(rows[0], Mapping) else {}
            if self._ok(response, body) and not data:
                raise ProviderError(
                    PROVIDER,
                    ErrorClass.NOT_PROCESSED,
                    f"no charge or transfer {reference}",
                    code=NOT_FOUND_CODE,
                )
        if not data:
            if response.status_code == 404 or self._says(body, NOT_FOUND_MESSAGES):
                raise ProviderError(
                    PROVIDER, ErrorClass.NOT_PROCESSED, f"no transfer {reference}", code=NOT_FOUND_CODE
                )
            raise self._error(response, body, mutating=False, what="transfer")
        return self._transfer_transaction(reference, data)

    def _transfer_transaction(self, reference: str, data: dict[str, Any]) -> ProviderTransaction:
        raw_status = str(data.get("status") or "").upper()
        if raw_status == "SUCCESSFUL":
            status = TransactionStatus.SUCCEEDED
        elif raw_status == "FAILED":
            status = TransactionStatus.FAILED
        elif raw_status in ("NEW", "PENDING"):
            status = TransactionStatus.PENDING
        else:
            status = TransactionStatus.UNKNOWN
        transfer_id = data.get("id")
        if transfer_id is not None:
            self._transfer_ids.remember(reference, str(transfer_id))
            self._attempted.remember(reference, "transfer")
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=str(transfer_id) if transfer_id is not None else None,
            status=status,
            money=money_of(data.get("amount"), data.get("currency")),
            provider_code=raw_status or None,
            provider_message=short(data.get("complete_message") or raw_status),
            raw_status=raw_status or None,
            raw=data,
        )

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
            existing = await self._existing(reference, request.money)
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
        response, body = await self._call(
            "POST", "/v3/transfers", mutating=True, what="transfer", payload=payload
        )
        if not self._ok(response, body):
            if self._says(body, DUPLICATE_MESSAGES):  # an earlier attempt got through: report it
                existing = await self._existing(reference, request.money)
                if existing is not None:
                    return existing
            raise self._error(response, body, mutating=True, what="transfer")
        return self._transfer_transaction(reference, _data(body))

    # --- refund --------------------------------------------------------------------------

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Refund a successful charge, fully or partly; the answer describes the refund.

        A repeat of the same refund is answered with the existing one, never a second refund.
        """
        if transaction.status is not TransactionStatus.SUCCEEDED:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only a successful charge")
        tx_id = transaction.provider_reference or transaction.raw.get("id")
        if not tx_id or self._attempted.get(transaction.reference) == "transfer":
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
        known: list[tuple[str, Money]] = list(self._refunds.get(transaction.reference, []))
        for refund_id, refunded in known:
            if refunded == amount:
                return await self.refund_status(refund_id, transaction.reference)
        response, body = await self._call(
            "POST",
            f"/v3/transactions/{tx_id}/refund",
            mutating=True,
            what="refund",
            payload={"amount": amount_value(amount)},
        )
        data = _data(body)
        if not self._ok(response, body) or data.get("id") is None:
            raise self._error(response, body, mutating=True, what="refund")
        known.append((str(data["id"]), amount))
        self._refunds.remember(transaction.reference, known)
        return self._refund_transaction(transaction.reference, data, amount)

    async def refund_status(self, refund_id: str, reference: str | None = None) -> ProviderTransaction:
        """Where one refund stands (`GET /v3/refunds/{id}`)."""
        response, body = await self._call("GET", f"/v3/refunds/{refund_id}", mutating=False, what="refund")
        if not self._ok(response, body):
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
            provider_reference=str(data.get("id")) if data.get("id") is not None else None,
            status=status,
            money=amount or money_of(data.get("amount_refunded"), data.get("currency")),
            provider_code=raw_status or None,
            provider_message=short(raw_status),
            raw_status=raw_status or None,
            raw=data,
        )

    async def _with_refunds(self, txn: ProviderTransaction) -> ProviderTransaction:
        refunded_minor = 0
        for refund_id, refunded in self._refunds.get(txn.reference, []):
            refund = await self.refund_status(refund_id, txn.reference)
            if refund.status is TransactionStatus.SUCCEEDED:
                refunded_minor += refunded.amount_minor
        if txn.money is not None and refunded_minor >= txn.money.amount_minor:
            return txn.model_copy(
                update={"status": TransactionStatus.REVERSED, "raw_status": "successful (refunded)"}
            )
        return txn
