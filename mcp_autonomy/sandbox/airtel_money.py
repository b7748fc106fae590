"""Airtel Money (Airtel Africa Open API), emulated: OAuth, USSD push, enquiry, refund, disbursement.

Mounted at `/airtel_money`; paths match `openapiuat.airtel.africa`. Shapes follow Airtel's
portal examples as quoted by integrators and the 121 platform's Airtel mock:

- `POST /auth/oauth2/token` `{client_id, client_secret, grant_type}` -> `{access_token,
  expires_in: "180", token_type: "bearer"}`; wrong credentials -> 401 `{error: "invalid_client",
  error_description: "Invalid client authentication"}`. A rejected bearer (unknown, expired,
  or revoked by a `credential_expiry` fault) -> 401 `{error: "invalid_token",
  error_description: "The access token is invalid or has expired"}`.
- `X-Country` missing -> 400 `{status_code: "ROUTER110", status_message}`; a country this
  merchant is not configured for -> `ESB000039`; `X-Currency` not the country's -> `ESB000035`.
- `POST /merchant/v2/payments/`: business refusals come inside HTTP 200 with `status.success:
  false` and `status.code: "400"` (ESB000008 field validation, ESB000033 msisdn length,
  ESB000041 "External Transaction ID already exists"); accepted -> `status.response_code
  DP00800001006` "in process". The customer (see `CustomerBehavior`) enters the PIN (TS), declines
  (TF with their decline code, default DP00800001008 refused), or ignores the push (TF,
  DP00800001024 timed out, after `push_timeout_s`). A decline code `DP00800001000` leaves the
  transaction ambiguous (TA) - as Airtel sometimes does. Airtel documents no synchronous answer
  for a busy subscriber: a `busy` customer (or a synchronous `customer_errors` victim) gets the
  usual DP00800001006 and fails TF DP00800001008 (refused) within `BUSY_RESULT_DELAY_S`. A
  storm's victims fail with its code (`CUSTOMER_CODES`; default DP00800001024, at the timeout).
- `GET /standard/v1/payments/{id}` -> `data.transaction {airtel_money_id, id, message, status}`
  (no amount, no payer: neither does Airtel's); unknown id -> `success: false`, `ESB000045` /
  `DP00800001025`, and so is a known one asked with another `X-Country`, or for
  `Realism.lookup_lag_s` after its push.
- Collection callback: when the merchant's callback URL is set (`ctx.webhooks["airtel_money"]`,
  a dashboard setting at Airtel), a TS or TF result is POSTed there through the outbox (loss,
  duplication, delay) as `{"transaction": {id, message, status_code, airtel_money_id}}`, plus
  `hash` (base64 HMAC-SHA256 of `{"transaction": {...}}` with `callback_private_key`) when
  callback authentication is configured. A TA result sends nothing (Airtel does not know yet).
- `POST /standard/v1/payments/refund` `{transaction: {airtel_money_id}}`: full refund of a TS
  collection; a second refund is refused.
- `POST /standard/v2/disbursements/` with the PIN RSA-encrypted (PKCS#1 v1.5) under the key in
  `sandbox_pin_public_key()`; wrong PIN -> `DP00900001013` "Incorrect Encrypted Pin"; reused id ->
  `DP00900001011`; accepted -> TIP `DP00900001006`, final after `disbursement_delay_s`.
  `GET /standard/v2/disbursements/{id}` (and the v1 `GET /standard/v1/disbursements/{id}`) -> TS
  `DP00900001001` / TF; unknown (or not visible yet) -> `DP00900001015`.
- `GET /standard/v1/users/balance`; the gateway's 429 `{message: "API rate limit exceeded"}`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mcp_autonomy.sandbox.core import (
    BUSY_RESULT_DELAY_S,
    SandboxContext,
    json_response,
    read_json_object,
)
from mcp_autonomy.sandbox.faults import EndpointKind, Rejection
from mcp_autonomy.sandbox.ledger import LedgerEntry, LedgerOperation, LedgerStatus

NAME = "airtel_money"
ID_RE = re.compile(r"^[A-Za-z0-9]{4,64}$")
MINOR_UNIT_EXPONENTS = {"UGX": 0, "RWF": 0, "XAF": 0, "XOF": 0}
DIAL_CODES = {"UG": "256", "KE": "254", "TZ": "255", "RW": "250", "ZM": "260", "MW": "265", "NG": "234"}
DESCRIPTIONS = {
    "DP00800001000": "The transaction is still processing and is in ambiguous state.",
    "DP00800001001": "Transaction is successful.",
    "DP00800001002": "Incorrect pin has been entered.",
    "DP00800001003": "The User has exceeded their wallet allowed transaction limit.",
    "DP00800001005": "User didn't enter the pin.",
    "DP00800001006": "Transaction in pending state. Please check after sometime.",
    "DP00800001007": "User wallet does not have enough money to cover the payable amount.",
    "DP00800001008": "The transaction was refused.",
    "DP00800001024": "The transaction was timed out.",
    "DP00800001029": "The transaction has expired.",
}
DECLINE_CODE = "DP00800001008"
NO_ANSWER_CODE = "DP00800001024"
CUSTOMER_CODES = {
    code: DESCRIPTIONS[code]
    for code in (
        "DP00800001002",
        "DP00800001003",
        "DP00800001005",
        "DP00800001007",
        "DP00800001008",
        "DP00800001024",
        "DP00800001029",
    )
}
"""Collection result codes that are the customer's: wrong PIN, wallet limit, PIN not entered,
insufficient funds, refused, timed out, expired."""


@cache
def _sandbox_pin_key() -> Any:
    # One key pair per process, made on first use: 2048-bit RSA costs tens of milliseconds and
    # most sandboxes never pay out. Process-wide so that code building adapters for a sandbox
    # (the embedded one) can configure the public key without reaching into the emulator.
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sandbox_pin_public_key() -> str:
    """The public key (base64 DER) every emulated Airtel in this process decrypts disbursement PINs with."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    der = _sandbox_pin_key().public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


class AirtelMoneySandboxConfig(BaseModel):
    """What the emulated Airtel accepts (all fake), its markets, and timing knobs."""

    model_config = ConfigDict(frozen=True)

    client_id: str = "sandbox-airtel-client"
    client_secret: str = "sandbox-airtel-secret"
    markets: dict[str, tuple[str, int]] = Field(
        default_factory=lambda: {
            "UG": ("UGX", 9),
            "KE": ("KES", 9),
            "TZ": ("TZS", 9),
            "RW": ("RWF", 9),
            "ZM": ("ZMW", 9),
            "MW": ("MWK", 9),
        },
        description="configured countries -> (currency, national msisdn length)",
    )
    disbursement_pin: str = "1234"
    callback_private_key: str | None = Field(
        None, description="set: callbacks carry Airtel's `hash` (the app's callback authentication)"
    )
    merchant_name: str = "SANDBOX MERCHANT"
    token_ttl_s: int = Field(180, ge=1)
    push_timeout_s: float = Field(60.0, gt=0, description="an ignored push times out after this")
    disbursement_delay_s: float = Field(3.0, ge=0)
    balance_minor: int = Field(10**12, ge=0)


@dataclass
class _Token:
    issued_at_s: float
    expires_at_s: float


@dataclass
class _Txn:
    kind: Literal["collection", "disbursement"]
    entry: LedgerEntry
    accepted_at_s: float  # clock.monotonic() of acceptance: enquiries lag it (see `Realism`)
    status: str = "TIP"
    code: str = "DP00800001006"
    airtel_money_id: str = ""
    refunded: bool = False


class AirtelMoneyEmulator:
    """The emulated Airtel Africa Open API (see the module docstring for its behaviour)."""

    name = NAME
    customer_codes = CUSTOMER_CODES
    no_answer_code = NO_ANSWER_CODE

    def __init__(self, ctx: SandboxContext) -> None:
        self.ctx = ctx
        given = ctx.credentials.get(NAME)
        self.config = given if isinstance(given, AirtelMoneySandboxConfig) else AirtelMoneySandboxConfig()
        self._rng = random.Random(f"{ctx.seed}:{NAME}")
        self._tokens: dict[str, _Token] = {}
        self._txns: dict[tuple[str, str], _Txn] = {}  # (kind, partner id)
        self._by_money_id: dict[str, _Txn] = {}
        self._balance_minor = self.config.balance_minor
        self.tokens_issued = 0
        """Tokens minted so far (tests check refresh behaviour with it)."""

    @property
    def pin_public_key_b64(self) -> str:
        """The RSA public key (base64 DER, as Airtel's portal gives it) a merchant encrypts the PIN with."""
        return sandbox_pin_public_key()

    def routes(self) -> list[BaseRoute]:
        """Airtel's paths, relative to the `/airtel_money` mount."""
        return [
            Route("/auth/oauth2/token", self._token, methods=["POST"]),
            Route(
                "/merchant/v2/payments/", self._route(EndpointKind.COLLECT, self._payment), methods=["POST"]
            ),
            Route(
                "/standard/v1/payments/refund",
                self._route(EndpointKind.REFUND, self._refund),
                methods=["POST"],
            ),
            Route(
                "/standard/v1/payments/{txn_id}",
                self._route(EndpointKind.STATUS, self._enquiry("collection")),
                methods=["GET"],
            ),
            Route(
                "/standard/v2/disbursements/",
                self._route(EndpointKind.PAYOUT, self._disbursement),
                methods=["POST"],
            ),
            Route(
                "/standard/v2/disbursements/{txn_id}",
                self._route(EndpointKind.STATUS, self._enquiry("disbursement")),
                methods=["GET"],
            ),
            Route(
                "/standard/v1/disbursements/{txn_id}",
                self._route(EndpointKind.STATUS, self._enquiry("disbursement")),
                methods=["GET"],
            ),
            Route(
                "/standard/v1/users/balance", self._route(EndpointKind.PROBE, self._balance), methods=["GET"]
            ),
        ]

    # --- shapes --------------------------------------------------------------------------

    @staticmethod
    def _status(
        code: str,
        message: str,
        *,
        success: bool,
        result_code: str | None = None,
        response_code: str | None = None,
    ) -> dict[str, Any]:
        status: dict[str, Any] = {"code": code, "message": message, "success": success}
        if result_code:
            status["result_code"] = result_code
        if response_code:
            status["response_code"] = response_code
        return status

    def _refuse(
        self, message: str, *, result_code: str | None = None, response_code: str | None = None
    ) -> Response:
        """A business refusal: HTTP 200, `status.code "400"`, `success: false`."""
        status = self._status(
            "400", message, success=False, result_code=result_code, response_code=response_code
        )
        return json_response({"status": status})

    def rejection_response(self, rejection: Rejection, endpoint: EndpointKind) -> Response:
        """The gateway's 429 and 503, and Airtel's `ESB000001` "Something went wrong." for 5xx."""
        if rejection.kind == "throttled":
            headers = {"Retry-After": f"{rejection.retry_after_s:g}"} if rejection.retry_after_s else None
            return json_response(
                {"message": "API rate limit exceeded"}, rejection.http_status or 429, headers
            )
        if rejection.kind == "unavailable":
            return json_response({"message": "Service Unavailable"}, 503)
        status = self._status("500", "Something went wrong.", success=False, result_code="ESB000001")
        return json_response({"status": status}, rejection.http_status or 500)

    # --- auth ----------------------------------------------------------------------------

    async def _token(self, request: Request) -> Response:
        async def issue() -> Response:
            body = await read_json_object(request) or {}
            if (
                body.get("grant_type") != "client_credentials"
                or body.get("client_id") != self.config.client_id
                or body.get("client_secret") != self.config.client_secret
            ):
                return json_response(
                    {"error_description": "Invalid client authentication", "error": "invalid_client"}, 401
                )
            now = self.ctx.clock.monotonic()
            token = f"{self._rng.getrandbits(160):040x}"
            self._tokens[token] = _Token(now, now + self.config.token_ttl_s)
            self.tokens_issued += 1
            return json_response(
                {"access_token": token, "expires_in": str(self.config.token_ttl_s), "token_type": "bearer"}
            )

        return await self.ctx.guarded(self, request, EndpointKind.AUTH, issue)

    def _check(self, request: Request, endpoint: EndpointKind) -> tuple[str, str] | Response:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        token = self._tokens.get(value.strip()) if scheme.lower() == "bearer" else None
        expiry = self.ctx.faults.credential_cutoff(NAME, endpoint)
        if (
            token is None
            or self.ctx.clock.monotonic() >= token.expires_at_s
            or (expiry is not None and token.issued_at_s < expiry.issued_before_s)
        ):
            return json_response(
                {"error_description": "The access token is invalid or has expired", "error": "invalid_token"},
                401,
            )
        country = request.headers.get("x-country", "")
        if not country:
            return json_response({"status_message": "Partner not found", "status_code": "ROUTER110"}, 400)
        market = self.config.markets.get(country)
        if market is None:
            return self._refuse(
                "Vendor is not configured to do transaction in the country.", result_code="ESB000039"
            )
        if request.headers.get("x-currency") != market[0]:
            return self._refuse("Invalid Currency Code", result_code="ESB000035")
        return country, market[0]

    def _route(self, endpoint: EndpointKind, handler: Any) -> Any:
        async def endpoint_fn(request: Request) -> Response:
            async def authorized() -> Response:
                checked = self._check(request, endpoint)
                if isinstance(checked, Response):
                    return checked
                response: Response = await handler(request, *checked)
                return response

            return await self.ctx.guarded(self, request, endpoint, authorized)

        return endpoint_fn

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def _minor(amount: Any, currency: str) -> int | None:
        if isinstance(amount, bool) or not isinstance(amount, int | float | str):
            return None
        try:
            minor = Decimal(str(amount)) * (10 ** MINOR_UNIT_EXPONENTS.get(currency, 2))
        except (InvalidOperation, ValueError):
            return None
        if minor <= 0 or minor != minor.to_integral_value():
            return None
        return int(minor)

    def _msisdn_ok(self, country: str, msisdn: Any) -> bool:
        length = self.config.markets[country][1]
        return isinstance(msisdn, str) and msisdn.isdigit() and len(msisdn) == length

    def _e164(self, country: str, msisdn: str) -> str:
        return f"+{DIAL_CODES.get(country, '')}{msisdn}"

    def _money_id(self, prefix: str) -> str:
        return f"{prefix}{self._rng.randint(100000, 999999)}.{self._rng.randint(1000, 9999)}.{self._rng.choice('ABCDEFGH')}{self._rng.randint(10000, 99999)}"

    # --- collection ----------------------------------------------------------------------

    async def _payment(self, request: Request, country: str, currency: str) -> Response:
        body = await read_json_object(request)
        if body is None:
            return self._refuse("Field validation.", result_code="ESB000008")
        subscriber, transaction = body.get("subscriber"), body.get("transaction")
        if not isinstance(subscriber, dict) or not isinstance(transaction, dict):
            return self._refuse("Field validation.", result_code="ESB000008")
        txn_id, reference = transaction.get("id"), body.get("reference")
        if not isinstance(txn_id, str) or not ID_RE.match(txn_id):
            return self._refuse("Field validation: transaction.id", result_code="ESB000008")
        if not isinstance(reference, str) or not ID_RE.match(reference):
            return self._refuse("Field validation: reference", result_code="ESB000008")
        msisdn = subscriber.get("msisdn")
        if not self._msisdn_ok(country, msisdn):
            length = self.config.markets[country][1]
            return self._refuse(
                f"Invalid MSISDN Length. MSISDN Length should be {length}", result_code="ESB000033"
            )
        if (
            transaction.get("currency", currency) != currency
            or subscriber.get("currency", currency) != currency
        ):
            return self._refuse("Invalid Currency Code", result_code="ESB000035")
        minor = self._minor(transaction.get("amount"), currency)
        if minor is None:
            return self._refuse("Invalid Amount", response_code="DP00800001004")
        if ("collection", txn_id) in self._txns:
            return self._refuse("External Transaction ID already exists.", result_code="ESB000041")
        assert isinstance(msisdn, str)
        entry = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.COLLECT,
            provider_reference=txn_id,
            reference=txn_id,
            msisdn=self._e164(country, msisdn),
            amount_minor=minor,
            currency=currency,
            extra={"country": country},
        )
        txn = _Txn("collection", entry, self.ctx.clock.monotonic())
        self._txns[("collection", txn_id)] = txn
        behavior = self.ctx.customer_for(NAME, entry.msisdn, no_answer_code=NO_ANSWER_CODE)
        if behavior.action == "accept":
            self.ctx.scheduler.after(behavior.delay_s, lambda: self._finish(txn, "TS", "DP00800001001"))
        elif behavior.action == "decline":
            code = behavior.decline_code or DECLINE_CODE
            final = "TA" if code == "DP00800001000" else "TF"
            self.ctx.scheduler.after(behavior.delay_s, lambda: self._finish(txn, final, code))
        elif behavior.action == "busy":
            self.ctx.scheduler.after(BUSY_RESULT_DELAY_S, lambda: self._finish(txn, "TF", DECLINE_CODE))
        else:
            self.ctx.scheduler.after(
                self.config.push_timeout_s, lambda: self._finish(txn, "TF", NO_ANSWER_CODE)
            )
        status = self._status(
            "200", "SUCCESS", success=True, result_code="ESB000010", response_code="DP00800001006"
        )
        return json_response({"data": {"transaction": {"id": txn_id, "status": "SUCCESS"}}, "status": status})

    def _finish(self, txn: _Txn, final: str, code: str) -> None:
        if txn.status != "TIP":
            return
        txn.status, txn.code = final, code
        if final == "TS":
            txn.airtel_money_id = self._money_id("MP" if txn.kind == "collection" else "CI")
            self._by_money_id[txn.airtel_money_id] = txn
            self.ctx.ledger.settle(
                txn.entry, LedgerStatus.SUCCEEDED, result_code=code, receipt=txn.airtel_money_id
            )
        elif final == "TF":
            self.ctx.ledger.settle(
                txn.entry, LedgerStatus.FAILED, result_code=code, result_desc=DESCRIPTIONS.get(code)
            )
            if txn.kind == "disbursement":
                self._balance_minor += txn.entry.amount_minor
        # TA stays pending in the ledger: nobody knows yet, Airtel included.
        if txn.kind == "collection" and final in ("TS", "TF"):
            self._callback(txn, final, code)

    def _callback(self, txn: _Txn, final: str, code: str) -> None:
        """The collection callback to the dashboard's URL, hashed when authentication is on."""
        url = self.ctx.webhooks.get(NAME)
        if not url:
            return
        entry = txn.entry
        if final == "TS":
            exponent = MINOR_UNIT_EXPONENTS.get(entry.currency, 2)
            amount = Decimal(entry.amount_minor) / (10**exponent)
            message = (
                f"Paid {entry.currency} {amount:,f} to {self.config.merchant_name}, "
                f"Trans ID {txn.airtel_money_id}."
            )
        else:
            message = DESCRIPTIONS.get(code, code)
        transaction = {
            "id": entry.reference,
            "message": message,
            "status_code": final,
            "airtel_money_id": txn.airtel_money_id or None,
        }
        body: dict[str, Any] = {"transaction": transaction}
        if self.config.callback_private_key:
            # Airtel's documented recipe, written here independently of the adapter's check:
            # HmacSHA256 over the payload without the hash, compact JSON, base64.
            signed = json.dumps({"transaction": transaction}, separators=(",", ":"), ensure_ascii=False)
            key = self.config.callback_private_key.encode()
            digest = hmac.new(key, signed.encode(), hashlib.sha256).digest()
            body["hash"] = base64.b64encode(digest).decode()
        self.ctx.outbox.send(NAME, url, body)

    def _enquiry(self, kind: Literal["collection", "disbursement"]) -> Any:
        async def handler(request: Request, country: str, currency: str) -> Response:
            txn_id = request.path_params["txn_id"]
            txn = self._txns.get((kind, txn_id))
            if (
                txn is None
                or txn.entry.extra.get("country") != country  # each country is its own Airtel
                or not self.ctx.visible(NAME, txn.accepted_at_s)  # not registered yet: "unknown"
            ):
                not_found = "DP00800001025" if kind == "collection" else "DP00900001015"
                return self._refuse(
                    "No Transaction Found With Provided Transaction Id.",
                    result_code="ESB000045",
                    response_code=not_found,
                )
            code = txn.code if kind == "collection" else txn.code.replace("DP008", "DP009")
            data: dict[str, Any] = {
                "airtel_money_id": txn.airtel_money_id or None,
                "id": txn_id,
                "message": DESCRIPTIONS.get(txn.code, txn.code),
                "status": txn.status,
            }
            status = self._status("200", "SUCCESS", success=True, result_code="ESB000010", response_code=code)
            return json_response({"data": {"transaction": data}, "status": status})

        return handler

    async def _refund(self, request: Request, country: str, currency: str) -> Response:
        body = await read_json_object(request) or {}
        transaction = body.get("transaction")
        money_id = transaction.get("airtel_money_id") if isinstance(transaction, dict) else None
        txn = self._by_money_id.get(money_id) if isinstance(money_id, str) else None
        if txn is None or txn.kind != "collection":
            return self._refuse("No Transaction Found With Provided Transaction Id.", result_code="ESB000045")
        if txn.refunded:
            return self._refuse("Transaction failed: already refunded.", result_code="ESB000011")
        txn.refunded = True
        entry = txn.entry
        refund = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.REFUND,
            provider_reference=f"refund-{txn.airtel_money_id}",
            reference=entry.reference,
            msisdn=entry.msisdn,
            amount_minor=entry.amount_minor,
            currency=entry.currency,
        )
        self.ctx.ledger.settle(refund, LedgerStatus.SUCCEEDED, result_code="ESB000010")
        self.ctx.ledger.settle(entry, LedgerStatus.REVERSED)
        status = self._status("200", "SUCCESS", success=True, result_code="ESB000010")
        return json_response(
            {
                "data": {"transaction": {"airtel_money_id": txn.airtel_money_id, "status": "SUCCESS"}},
                "status": status,
            }
        )

    # --- disbursement --------------------------------------------------------------------

    def _pin_ok(self, encrypted: Any) -> bool:
        from cryptography.hazmat.primitives.asymmetric import padding

        if not isinstance(encrypted, str):
            return False
        try:
            clear = _sandbox_pin_key().decrypt(base64.b64decode(encrypted, validate=True), padding.PKCS1v15())
        except ValueError:
            return False
        return bool(clear.decode(errors="replace") == self.config.disbursement_pin)

    async def _disbursement(self, request: Request, country: str, currency: str) -> Response:
        body = await read_json_object(request)
        payee = body.get("payee") if body else None
        transaction = body.get("transaction") if body else None
        if body is None or not isinstance(payee, dict) or not isinstance(transaction, dict):
            return self._refuse("Missing header/body params", response_code="DP00900001013")
        txn_id = transaction.get("id")
        if (
            not isinstance(txn_id, str)
            or not ID_RE.match(txn_id)
            or transaction.get("type") not in ("B2C", "B2B")
        ):
            return self._refuse("Missing header/body params", response_code="DP00900001013")
        msisdn = payee.get("msisdn")
        if not self._msisdn_ok(country, msisdn):
            length = self.config.markets[country][1]
            return self._refuse(
                f"Invalid Msisdn Length. Msisdn Length should be {length}", response_code="DP00900001013"
            )
        minor = self._minor(transaction.get("amount"), currency)
        if minor is None:
            return self._refuse("Invalid Amount", response_code="DP00900001004")
        if not self._pin_ok(body.get("pin")):
            return self._refuse("Incorrect Encrypted Pin", response_code="DP00900001013")
        if ("disbursement", txn_id) in self._txns:
            return self._refuse("Duplicate transaction id", response_code="DP00900001011")
        if self._balance_minor < minor:
            return self._refuse("Insufficient balance", response_code="DP00900001007")
        assert isinstance(msisdn, str)
        self._balance_minor -= minor
        entry = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.PAYOUT,
            provider_reference=txn_id,
            reference=txn_id,
            msisdn=self._e164(country, msisdn),
            amount_minor=minor,
            currency=currency,
            extra={"country": country},
        )
        txn = _Txn("disbursement", entry, self.ctx.clock.monotonic())
        self._txns[("disbursement", txn_id)] = txn
        result = self.ctx.customers.get(NAME, entry.msisdn).payout_result_code
        if result in (None, "0", "TS"):
            final, code = "TS", "DP00800001001"
        else:
            final, code = "TF", result
        self.ctx.scheduler.after(self.config.disbursement_delay_s, lambda: self._finish(txn, final, code))
        status = self._status(
            "200", "SUCCESS", success=True, result_code="ESB000010", response_code="DP00900001006"
        )
        data = {"transaction": {"reference_id": None, "airtel_money_id": None, "id": txn_id, "status": "TIP"}}
        return json_response({"data": data, "status": status})

    async def _balance(self, request: Request, country: str, currency: str) -> Response:
        exponent = MINOR_UNIT_EXPONENTS.get(currency, 2)
        balance = Decimal(self._balance_minor) / (10**exponent)
        status = self._status("200", "SUCCESS", success=True, result_code="ESB000010")
        return json_response(
            {
                "data": {"balance": f"{balance:f}", "currency": currency, "account_status": "Active"},
                "status": status,
            }
        )
