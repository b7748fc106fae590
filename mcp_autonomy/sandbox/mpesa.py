"""Safaricom Daraja (M-Pesa), emulated: OAuth, STK push and query, B2C v3, reversal.

Mounted at `/mpesa`, so an adapter's base URL is `http://host:port/mpesa` and the paths below
match the real host's. Shapes follow the Daraja 3.0 documentation:

- `GET /oauth/v1/generate?grant_type=client_credentials`, Basic key:secret ->
  `{"access_token": "...", "expires_in": "3599"}` (a string, as the real one sends it);
  bad credentials `400.008.01`, bad grant type `400.008.02`.
- Every other call needs `Authorization: Bearer <token>`: missing/garbled header `404.001.04`,
  unknown, expired or revoked token `404.001.03` (HTTP 404, as in Daraja's error table).
  A `credential_expiry` fault revokes tokens issued before its cutoff.
- `POST /mpesa/stkpush/v1/processrequest`: field validation `400.002.02 Bad Request - Invalid X`;
  unknown shortcode or wrong Password (base64(shortcode+passkey+timestamp)) `500.001.1001`;
  a second push to a number with one in flight, or to a `busy` customer (or a synchronous
  `customer_errors` victim), is refused with HTTP 500 `500.001.1001` "Unable to lock subscriber,
  a transaction is already in process for the current subscriber" and never reaches the ledger.
  The customer (see `CustomerBehavior`) answers after their delay: ResultCode 0, or their
  decline code (1032 cancelled, the default; 1 insufficient funds; 2001 wrong PIN; 17, 1019,
  1001: `CUSTOMER_CODES`), or 1037 when they ignore the prompt (or are declined with 1037) for
  `stk_timeout_s`. A `customer_errors` storm picks its victims here and fails them the same way.
  The result is POSTed to CallBackURL (`Body.stkCallback`).
- `POST /mpesa/stkpushquery/v1/query`: HTTP 500 `500.001.1001` "The transaction is being
  processed" while pending, then `{ResponseCode "0", ResultCode "<code>", ResultDesc}` (no
  amount, payer or receipt, as on Daraja). While the provider's `Realism.lookup_lag_s` holds
  after the push it answers `400.002.02` "Bad Request - Invalid CheckoutRequestID", as Daraja
  does for an id it has just issued.
- `POST /mpesa/b2c/v3/paymentrequest`: a reused OriginatorConversationID is refused
  (`500.002.1001` "Duplicate OriginatorConversationID."); initiator problems surface in the
  asynchronous Result (2001), as on the real platform; the Result goes to ResultURL.
- `POST /mpesa/reversal/v1/request`: reverses an STK receipt; Result R000001 already reversed,
  R000002 unknown receipt.
- `POST /mpesa/transactionstatus/v1/query` (CommandID TransactionStatusQuery, TransactionID (a
  receipt) or OriginalConversationID, PartyA, IdentifierType, ResultURL, QueueTimeOutURL,
  Remarks, Occasion): answers acceptance only (`{OriginatorConversationID, ConversationID,
  ResponseCode "0", ResponseDescription}`) and posts the Result to ResultURL, answered from the
  ledger: ResultCode 0 with ResultParameters (ReceiptNo, TransactionStatus Completed / Declined /
  Authorized, Amount, DebitPartyName, CreditPartyName, FinalisedTime, ReasonType, the original
  OriginatorConversationID and ConversationID), and ReferenceData echoing the Occasion. An id
  it does not know (or not yet, within the lookup lag) gets ResultCode 1 "The transaction could
  not be found." (Daraja documents only 0 and SFC_IC0003 for this API; 1 with that text is what
  integrators report), a wrong initiator 2001.
"""

from __future__ import annotations

import base64
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from mcp_autonomy.sandbox.core import SandboxContext, json_response, read_json_object
from mcp_autonomy.sandbox.faults import EndpointKind, Rejection
from mcp_autonomy.sandbox.ledger import LedgerEntry, LedgerOperation, LedgerStatus

NAME = "mpesa"
EAT = timezone(timedelta(hours=3), "EAT")
STK_MAX_KES = 250_000
B2C_MIN_KES = 10
PHONE_RE = re.compile(r"^254(7|1)\d{8}$")
SHORTCODE_RE = re.compile(r"^\d{5,7}$")
TIMESTAMP_RE = re.compile(r"^\d{14}$")
STK_TRANSACTION_TYPES = frozenset({"CustomerPayBillOnline", "CustomerBuyGoodsOnline"})
B2C_COMMANDS = frozenset({"BusinessPayment", "SalaryPayment", "PromotionPayment"})

RESULT_DESCRIPTIONS = {
    "0": "The service request is processed successfully.",
    "1": "The balance is insufficient for the transaction.",
    "17": "Rule limited.",
    "1001": "Unable to lock subscriber, a transaction is already in process for the current subscriber",
    "1019": "Transaction has expired",
    "1025": "An error occurred while sending a push request",
    "1032": "Request cancelled by user",
    "1037": "DS timeout user cannot be reached",
    "2001": "The initiator information is invalid.",
    "2028": "The request is not permitted according to product assignment.",
    "2040": "Credit Party customer type (Unregistered or Registered Customer) can't be supported by the service.",
    "SFC_IC0003": "The operator does not exist.",
    "R000001": "The transaction has already been reversed",
    "R000002": "The OriginalTransactionID is invalid.",
}
TS_NOT_FOUND_CODE = "1"
TS_NOT_FOUND_DESC = "The transaction could not be found."
TS_IDENTIFIER_TYPES = frozenset({"1", "2", "4"})
REASON_TYPES = {
    "BusinessPayment": "Business Payment to Customer via API",
    "SalaryPayment": "Salary Payment via API",
    "PromotionPayment": "Promotion Payment via API",
}
NEVER_A_TRANSACTION_CODES = frozenset({"2001", "2028"})
"""B2C refused in its Result for the initiator or the product: M-Pesa never made a transaction."""
DEFAULT_DECLINE_CODE = "1032"
TIMEOUT_CODE = "1037"
BUSY_CODE = "1001"
CUSTOMER_CODES = {
    code: RESULT_DESCRIPTIONS[code] for code in ("1", "17", "1001", "1019", "1032", "1037", "2001")
}
"""STK ResultCodes that are the customer's (Daraja's STK result codes): insufficient funds, the
same-amount rule, a subscriber locked in another transaction, an expired prompt, cancelled, no
answer from the handset, wrong PIN (Daraja words it as invalid initiator information)."""


class MpesaSandboxConfig(BaseModel):
    """The credentials the emulated Daraja accepts, and its timing knobs (all fake)."""

    model_config = ConfigDict(frozen=True)

    consumer_key: str = "sandbox-consumer-key"
    consumer_secret: str = "sandbox-consumer-secret"
    shortcode: str = "174379"
    passkey: str = "sandbox-passkey"
    b2c_shortcode: str = "600997"
    initiator_name: str = "testapi"
    security_credential: str = "sandbox-security-credential"
    token_ttl_s: int = Field(3599, ge=1)
    new_token_revokes_previous: bool = Field(
        False, description="the portal says minting a token invalidates the previous one; off by default"
    )
    stk_timeout_s: float = Field(60.0, gt=0, description="an ignored prompt fails with 1037 after this")
    b2c_delay_s: float = Field(3.0, ge=0)
    reversal_delay_s: float = Field(3.0, ge=0)
    status_query_delay_s: float = Field(
        0.0, ge=0, description="how long M-Pesa takes to answer a Transaction Status query"
    )


@dataclass
class _Token:
    issued_at_s: float
    expires_at_s: float


@dataclass
class _Stk:
    entry: LedgerEntry
    merchant_request_id: str
    callback_url: str
    result_code: str
    accepted_at_s: float  # clock.monotonic() of the push: lookups lag it (Realism.lookup_lag_s)


@dataclass
class _Reversal:
    """A reversal request as M-Pesa holds it (its ledger refund exists only once it succeeded)."""

    originator_id: str
    conversation_id: str
    receipt: str
    amount_kes: int
    accepted_at_s: float
    created_at: float  # clock.now() of the request
    msisdn: str | None = None
    status: LedgerStatus = LedgerStatus.PENDING
    result_code: str | None = None
    reversal_receipt: str | None = None
    finished_at: float | None = None


class MpesaEmulator:
    """The emulated Daraja API (see the module docstring for its behaviour)."""

    name = NAME
    customer_codes = CUSTOMER_CODES
    no_answer_code = TIMEOUT_CODE

    def __init__(self, ctx: SandboxContext) -> None:
        self.ctx = ctx
        given = ctx.credentials.get(NAME)
        self.config = given if isinstance(given, MpesaSandboxConfig) else MpesaSandboxConfig()
        self._rng = random.Random(f"{ctx.seed}:{NAME}")
        self._tokens: dict[str, _Token] = {}
        self._stk: dict[str, _Stk] = {}
        self._locked_phones: dict[str, str] = {}  # msisdn -> CheckoutRequestID in flight
        self._b2c: dict[str, LedgerEntry] = {}  # OriginatorConversationID -> entry
        self._receipts: dict[str, LedgerEntry] = {}  # MpesaReceiptNumber -> collection
        self._b2c_receipts: dict[str, LedgerEntry] = {}  # B2C TransactionReceipt -> payout
        self._reversals: dict[str, _Reversal] = {}  # reversal OriginatorConversationID -> request
        self._accepted_at: dict[int, float] = {}  # ledger entry id -> clock.monotonic() accepted
        self.tokens_issued = 0
        """OAuth tokens minted so far (tests check refresh behaviour with it)."""

    def routes(self) -> list[BaseRoute]:
        """Daraja's paths, relative to the `/mpesa` mount."""
        return [
            Route("/oauth/v1/generate", self._oauth, methods=["GET"]),
            Route("/mpesa/stkpush/v1/processrequest", self._stk_push, methods=["POST"]),
            Route("/mpesa/stkpushquery/v1/query", self._stk_query, methods=["POST"]),
            Route("/mpesa/b2c/v3/paymentrequest", self._b2c_request, methods=["POST"]),
            Route("/mpesa/reversal/v1/request", self._reversal, methods=["POST"]),
            Route("/mpesa/transactionstatus/v1/query", self._transaction_status, methods=["POST"]),
        ]

    # --- shapes --------------------------------------------------------------------------

    def _request_id(self) -> str:
        return f"{self._rng.randint(1000, 99999)}-{self._rng.randint(10**7, 10**8 - 1)}-1"

    def _error(
        self, http_status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        body = {"requestId": self._request_id(), "errorCode": code, "errorMessage": message}
        return json_response(body, http_status, headers)

    def _bad(self, field_name: str) -> Response:
        return self._error(400, "400.002.02", f"Bad Request - Invalid {field_name}")

    def rejection_response(self, rejection: Rejection, endpoint: EndpointKind) -> Response:
        """Apigee's 503 fault at the edge; spike arrest `500.003.02`; `500.003.1001` otherwise."""
        if rejection.kind == "unavailable":
            fault = {
                "fault": {
                    "faultstring": "The Service is temporarily unavailable",
                    "detail": {"errorcode": "messaging.adaptors.http.flow.ServiceUnavailable"},
                }
            }
            return json_response(fault, 503)
        if rejection.kind == "throttled":
            headers = {"Retry-After": f"{rejection.retry_after_s:g}"} if rejection.retry_after_s else None
            return self._error(rejection.http_status or 500, "500.003.02", "Spike arrest violation", headers)
        return self._error(rejection.http_status or 500, "500.003.1001", "Internal Server Error")

    def _now_eat(self) -> datetime:
        return datetime.fromtimestamp(self.ctx.clock.now(), tz=UTC).astimezone(EAT)

    # --- auth ----------------------------------------------------------------------------

    async def _oauth(self, request: Request) -> Response:
        return await self.ctx.guarded(
            self, request, EndpointKind.AUTH, lambda: self._issue_token(request), also=(EndpointKind.PROBE,)
        )

    async def _issue_token(self, request: Request) -> Response:
        if request.query_params.get("grant_type") != "client_credentials":
            return self._error(400, "400.008.02", "Invalid grant type passed")
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            decoded = ""
        key, _, secret = decoded.partition(":")
        if scheme.lower() != "basic" or (key, secret) != (
            self.config.consumer_key,
            self.config.consumer_secret,
        ):
            return self._error(400, "400.008.01", "Invalid Authentication passed")
        now = self.ctx.clock.monotonic()
        if self.config.new_token_revokes_previous:
            self._tokens.clear()
        token = base64.b64encode(self._rng.randbytes(21)).decode().replace("+", "x").replace("/", "y")
        self._tokens[token] = _Token(now, now + self.config.token_ttl_s)
        self.tokens_issued += 1
        return json_response({"access_token": token, "expires_in": str(self.config.token_ttl_s)})

    def _check_bearer(self, request: Request, endpoint: EndpointKind) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return self._error(400, "404.001.04", "Invalid Authentication Header")
        issued = self._tokens.get(token)
        now = self.ctx.clock.monotonic()
        expiry = self.ctx.faults.credential_cutoff(NAME, endpoint)
        revoked = expiry is not None and issued is not None and issued.issued_at_s < expiry.issued_before_s
        if issued is None or now >= issued.expires_at_s or revoked:
            return self._error(404, "404.001.03", "Invalid Access Token")
        return None

    async def _authorized_json(
        self, request: Request, endpoint: EndpointKind
    ) -> tuple[dict[str, Any] | None, Response | None]:
        refused = self._check_bearer(request, endpoint)
        if refused is not None:
            return None, refused
        body = await read_json_object(request)
        if body is None:
            return None, self._error(400, "400.002.02", "Bad Request - Invalid JSON")
        return body, None

    # --- field checks ----------------------------------------------------------------------

    @staticmethod
    def _text(value: Any) -> str | None:
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, int):
            return str(value)
        return value if isinstance(value, str) else None

    def _whole(self, value: Any) -> int | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        text = self._text(value)
        return int(text) if text is not None and text.isdigit() else None

    @staticmethod
    def _url(value: Any) -> bool:
        return isinstance(value, str) and re.match(r"^https?://[^\s/]+", value) is not None

    def _password_ok(self, shortcode: str, timestamp: str, password: Any) -> bool:
        expected = base64.b64encode(f"{shortcode}{self.config.passkey}{timestamp}".encode()).decode()
        return isinstance(password, str) and password == expected

    # --- STK push --------------------------------------------------------------------------

    async def _stk_push(self, request: Request) -> Response:
        return await self.ctx.guarded(self, request, EndpointKind.COLLECT, lambda: self._accept_stk(request))

    async def _accept_stk(self, request: Request) -> Response:
        body, refused = await self._authorized_json(request, EndpointKind.COLLECT)
        if refused is not None or body is None:
            return refused or self._bad("JSON")
        shortcode = self._text(body.get("BusinessShortCode"))
        timestamp = self._text(body.get("Timestamp"))
        amount = self._whole(body.get("Amount"))
        party_a = self._text(body.get("PartyA"))
        party_b = self._text(body.get("PartyB"))
        phone = self._text(body.get("PhoneNumber"))
        account = self._text(body.get("AccountReference"))
        desc = body.get("TransactionDesc")
        checks = [
            ("BusinessShortCode", shortcode is not None and SHORTCODE_RE.match(shortcode) is not None),
            ("Password", isinstance(body.get("Password"), str) and bool(body.get("Password"))),
            ("Timestamp", timestamp is not None and self._valid_timestamp(timestamp)),
            ("TransactionType", body.get("TransactionType") in STK_TRANSACTION_TYPES),
            ("Amount", amount is not None and 1 <= amount <= STK_MAX_KES),
            ("PartyA", party_a is not None and PHONE_RE.match(party_a) is not None),
            ("PartyB", party_b is not None and party_b.isdigit()),
            ("PhoneNumber", phone is not None and PHONE_RE.match(phone) is not None),
            ("CallBackURL", self._url(body.get("CallBackURL"))),
            ("AccountReference", account is not None and 1 <= len(account) <= 12),
            ("TransactionDesc", desc is None or (isinstance(desc, str) and len(desc) <= 13)),
        ]
        for field_name, ok in checks:
            if not ok:
                return self._bad(field_name)
        assert shortcode and timestamp and amount and phone and account is not None
        if shortcode != self.config.shortcode:
            return self._error(500, "500.001.1001", "Merchant does not exist")
        if not self._password_ok(shortcode, timestamp, body.get("Password")):
            return self._error(500, "500.001.1001", "[MerchantValidate] - Wrong credentials")
        msisdn = f"+{phone}"
        if msisdn in self._locked_phones:
            return self._error(500, "500.001.1001", RESULT_DESCRIPTIONS[BUSY_CODE])
        behavior = self.ctx.customer_for(NAME, msisdn, no_answer_code=TIMEOUT_CODE)
        if behavior.action == "busy":
            # Daraja refuses a locked subscriber before creating anything: no CheckoutRequestID.
            return self._error(500, "500.001.1001", RESULT_DESCRIPTIONS[BUSY_CODE])
        stamp = self._now_eat().strftime("%d%m%Y%H%M%S")
        checkout_id = f"ws_CO_{stamp}{self._rng.randint(10**9, 10**10 - 1)}"
        merchant_request_id = f"{self._rng.randint(1000, 9999)}-{self._rng.randint(10**6, 10**7 - 1)}-1"
        entry = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.COLLECT,
            provider_reference=checkout_id,
            reference=account,
            msisdn=msisdn,
            amount_minor=amount * 100,
            currency="KES",
            extra={"callback_url": body["CallBackURL"], "merchant_request_id": merchant_request_id},
        )
        if behavior.action == "accept":
            result_code, delay_s = "0", behavior.delay_s
        elif behavior.action == "decline":
            result_code, delay_s = behavior.decline_code or DEFAULT_DECLINE_CODE, behavior.delay_s
        else:
            result_code, delay_s = TIMEOUT_CODE, self.config.stk_timeout_s
        accepted_at = self.ctx.clock.monotonic()
        self._accepted_at[entry.entry_id] = accepted_at
        self._stk[checkout_id] = _Stk(
            entry, merchant_request_id, str(body["CallBackURL"]), result_code, accepted_at
        )
        self._locked_phones[msisdn] = checkout_id
        self.ctx.scheduler.after(delay_s, lambda: self._complete_stk(checkout_id))
        message = "Success. Request accepted for processing"
        return json_response(
            {
                "MerchantRequestID": merchant_request_id,
                "CheckoutRequestID": checkout_id,
                "ResponseCode": "0",
                "ResponseDescription": message,
                "CustomerMessage": message,
            }
        )

    @staticmethod
    def _valid_timestamp(value: str) -> bool:
        if not TIMESTAMP_RE.match(value):
            return False
        try:
            datetime.strptime(value, "%Y%m%d%H%M%S")
        except ValueError:
            return False
        return True

    def _receipt(self) -> str:
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        return "S" + "".join(self._rng.choice(letters) for _ in range(9))

    def _complete_stk(self, checkout_id: str) -> None:
        stk = self._stk[checkout_id]
        entry = stk.entry
        if entry.status is not LedgerStatus.PENDING:
            return
        self._locked_phones.pop(entry.msisdn, None)
        code = stk.result_code
        desc = RESULT_DESCRIPTIONS.get(code, "The transaction has failed.")
        callback: dict[str, Any] = {
            "MerchantRequestID": stk.merchant_request_id,
            "CheckoutRequestID": checkout_id,
            "ResultCode": int(code) if code.isdigit() else code,
            "ResultDesc": desc,
        }
        if code == "0":
            receipt = self._receipt()
            self.ctx.ledger.settle(
                entry, LedgerStatus.SUCCEEDED, result_code=code, result_desc=desc, receipt=receipt
            )
            self._receipts[receipt] = entry
            callback["CallbackMetadata"] = {
                "Item": [
                    {"Name": "Amount", "Value": entry.amount_minor / 100},
                    {"Name": "MpesaReceiptNumber", "Value": receipt},
                    {"Name": "TransactionDate", "Value": int(self._now_eat().strftime("%Y%m%d%H%M%S"))},
                    {"Name": "PhoneNumber", "Value": int(entry.msisdn[1:])},
                ]
            }
        else:
            self.ctx.ledger.settle(entry, LedgerStatus.FAILED, result_code=code, result_desc=desc)
        self.ctx.outbox.send(NAME, stk.callback_url, {"Body": {"stkCallback": callback}})

    # --- STK query -------------------------------------------------------------------------

    async def _stk_query(self, request: Request) -> Response:
        return await self.ctx.guarded(self, request, EndpointKind.STATUS, lambda: self._answer_query(request))

    async def _answer_query(self, request: Request) -> Response:
        body, refused = await self._authorized_json(request, EndpointKind.STATUS)
        if refused is not None or body is None:
            return refused or self._bad("JSON")
        shortcode = self._text(body.get("BusinessShortCode"))
        timestamp = self._text(body.get("Timestamp"))
        checkout_id = body.get("CheckoutRequestID")
        if shortcode is None or not SHORTCODE_RE.match(shortcode):
            return self._bad("BusinessShortCode")
        if timestamp is None or not self._valid_timestamp(timestamp):
            return self._bad("Timestamp")
        if not isinstance(checkout_id, str) or checkout_id not in self._stk:
            return self._bad("CheckoutRequestID")
        if not self.ctx.visible(NAME, self._stk[checkout_id].accepted_at_s):
            # Daraja's lookups lag its pushes: a just-issued id is "invalid" for a while.
            return self._bad("CheckoutRequestID")
        if shortcode != self.config.shortcode or not self._password_ok(
            shortcode, timestamp, body.get("Password")
        ):
            return self._error(500, "500.001.1001", "[MerchantValidate] - Wrong credentials")
        stk = self._stk[checkout_id]
        if stk.entry.status is LedgerStatus.PENDING:
            return self._error(500, "500.001.1001", "The transaction is being processed")
        code = stk.entry.result_code or "0"
        return json_response(
            {
                "ResponseCode": "0",
                "ResponseDescription": "The service request has been accepted successfully",
                "MerchantRequestID": stk.merchant_request_id,
                "CheckoutRequestID": checkout_id,
                "ResultCode": code,
                "ResultDesc": stk.entry.result_desc or RESULT_DESCRIPTIONS.get(code, ""),
            }
        )

    # --- B2C -------------------------------------------------------------------------------

    def _conversation_id(self) -> str:
        return f"AG_{self._now_eat():%Y%m%d}_{self._rng.getrandbits(80):020x}"

    async def _b2c_request(self, request: Request) -> Response:
        return await self.ctx.guarded(self, request, EndpointKind.PAYOUT, lambda: self._accept_b2c(request))

    async def _accept_b2c(self, request: Request) -> Response:
        body, refused = await self._authorized_json(request, EndpointKind.PAYOUT)
        if refused is not None or body is None:
            return refused or self._bad("JSON")
        originator_id = body.get("OriginatorConversationID")
        amount = self._whole(body.get("Amount"))
        party_a = self._text(body.get("PartyA"))
        party_b = self._text(body.get("PartyB"))
        remarks = body.get("Remarks")
        checks = [
            ("OriginatorConversationID", isinstance(originator_id, str) and 0 < len(originator_id) <= 100),
            ("InitiatorName", isinstance(body.get("InitiatorName"), str) and bool(body.get("InitiatorName"))),
            ("SecurityCredential", isinstance(body.get("SecurityCredential"), str)),
            ("CommandID", body.get("CommandID") in B2C_COMMANDS),
            ("Amount", amount is not None and B2C_MIN_KES <= amount <= STK_MAX_KES),
            ("PartyA", party_a is not None and SHORTCODE_RE.match(party_a) is not None),
            ("PartyB", party_b is not None and PHONE_RE.match(party_b) is not None),
            ("Remarks", isinstance(remarks, str) and 2 <= len(remarks) <= 100),
            ("QueueTimeOutURL", self._url(body.get("QueueTimeOutURL"))),
            ("ResultURL", self._url(body.get("ResultURL"))),
        ]
        for field_name, ok in checks:
            if not ok:
                return self._bad(field_name)
        assert isinstance(originator_id, str) and amount is not None and party_a and party_b
        if originator_id in self._b2c:
            return self._error(500, "500.002.1001", "Duplicate OriginatorConversationID.")
        conversation_id = self._conversation_id()
        entry = self.ctx.ledger.record(
            provider=NAME,
            operation=LedgerOperation.PAYOUT,
            provider_reference=conversation_id,
            reference=originator_id,
            msisdn=f"+{party_b}",
            amount_minor=amount * 100,
            currency="KES",
            extra={"result_url": body["ResultURL"]},
        )
        self._b2c[originator_id] = entry
        self._accepted_at[entry.entry_id] = self.ctx.clock.monotonic()
        entry.extra["command_id"] = body["CommandID"]
        if (body.get("InitiatorName"), body.get("SecurityCredential")) != (
            self.config.initiator_name,
            self.config.security_credential,
        ):
            code = "2001"
        elif party_a != self.config.b2c_shortcode:
            code = "2028"
        else:
            code = self.ctx.customers.get(NAME, entry.msisdn).payout_result_code or "0"
        self.ctx.scheduler.after(self.config.b2c_delay_s, lambda: self._complete_b2c(entry, code))
        return json_response(
            {
                "ConversationID": conversation_id,
                "OriginatorConversationID": originator_id,
                "ResponseCode": "0",
                "ResponseDescription": "Accept the service request successfully.",
            }
        )

    def _complete_b2c(self, entry: LedgerEntry, code: str) -> None:
        desc = RESULT_DESCRIPTIONS.get(code, "The transaction has failed.")
        result: dict[str, Any] = {
            "ResultType": 0,
            "ResultCode": int(code) if code.isdigit() else code,
            "ResultDesc": desc,
            "OriginatorConversationID": entry.reference,
            "ConversationID": entry.provider_reference,
            "TransactionID": self._receipt() if code == "0" else "SAK0000000",
            "ReferenceData": {"ReferenceItem": {"Key": "QueueTimeoutURL", "Value": "sandbox/b2cresults"}},
        }
        if code == "0":
            self.ctx.ledger.settle(
                entry,
                LedgerStatus.SUCCEEDED,
                result_code=code,
                result_desc=desc,
                receipt=result["TransactionID"],
            )
            self._b2c_receipts[result["TransactionID"]] = entry
            result["ResultParameters"] = {
                "ResultParameter": [
                    {"Key": "TransactionAmount", "Value": entry.amount_minor // 100},
                    {"Key": "TransactionReceipt", "Value": result["TransactionID"]},
                    {"Key": "ReceiverPartyPublicName", "Value": f"{entry.msisdn[1:]} - SANDBOX CUSTOMER"},
                    {
                        "Key": "TransactionCompletedDateTime",
                        "Value": self._now_eat().strftime("%d.%m.%Y %H:%M:%S"),
                    },
                    {"Key": "B2CRecipientIsRegisteredCustomer", "Value": "Y"},
                ]
            }
        else:
            self.ctx.ledger.settle(entry, LedgerStatus.FAILED, result_code=code, result_desc=desc)
        self.ctx.outbox.send(NAME, str(entry.extra["result_url"]), {"Result": result})

    # --- reversal ----------------------------------------------------------------------------

    async def _reversal(self, request: Request) -> Response:
        return await self.ctx.guarded(
            self, request, EndpointKind.REFUND, lambda: self._accept_reversal(request)
        )

    async def _accept_reversal(self, request: Request) -> Response:
        body, refused = await self._authorized_json(request, EndpointKind.REFUND)
        if refused is not None or body is None:
            return refused or self._bad("JSON")
        amount = self._whole(body.get("Amount"))
        receiver = self._text(body.get("ReceiverParty"))
        checks = [
            ("Initiator", isinstance(body.get("Initiator"), str) and bool(body.get("Initiator"))),
            ("SecurityCredential", isinstance(body.get("SecurityCredential"), str)),
            ("CommandID", body.get("CommandID") == "TransactionReversal"),
            ("TransactionID", isinstance(body.get("TransactionID"), str) and bool(body.get("TransactionID"))),
            ("Amount", amount is not None and amount >= 1),
            ("ReceiverParty", receiver is not None and SHORTCODE_RE.match(receiver) is not None),
            ("RecieverIdentifierType", self._text(body.get("RecieverIdentifierType")) == "11"),
            ("ResultURL", self._url(body.get("ResultURL"))),
            ("QueueTimeOutURL", self._url(body.get("QueueTimeOutURL"))),
            ("Remarks", isinstance(body.get("Remarks"), str) and 2 <= len(body["Remarks"]) <= 100),
        ]
        for field_name, ok in checks:
            if not ok:
                return self._bad(field_name)
        conversation_id = self._conversation_id()
        originator_id = (
            f"{self._rng.getrandbits(16):04x}-{self._rng.getrandbits(16):04x}-{self._rng.getrandbits(32)}"
        )
        initiator_ok = (body.get("Initiator"), body.get("SecurityCredential")) == (
            self.config.initiator_name,
            self.config.security_credential,
        )
        reversal = _Reversal(
            originator_id,
            conversation_id,
            str(body["TransactionID"]),
            amount or 0,
            self.ctx.clock.monotonic(),
            self.ctx.clock.now(),
        )
        self._reversals[originator_id] = reversal
        self.ctx.scheduler.after(
            self.config.reversal_delay_s,
            lambda: self._complete_reversal(reversal, str(body["ResultURL"]), initiator_ok),
        )
        return json_response(
            {
                "OriginatorConversationID": originator_id,
                "ConversationID": conversation_id,
                "ResponseCode": "0",
                "ResponseDescription": "Accept the service request successfully.",
            }
        )

    def _complete_reversal(self, reversal: _Reversal, result_url: str, initiator_ok: bool) -> None:
        receipt, amount_kes = reversal.receipt, reversal.amount_kes
        conversation_id, originator_id = reversal.conversation_id, reversal.originator_id
        original = self._receipts.get(receipt)
        if not initiator_ok:
            code = "2001"
        elif original is None or original.amount_minor != amount_kes * 100:
            code = "R000002"
        elif original.status is LedgerStatus.REVERSED:
            code = "R000001"
        else:
            code = "0"
        result: dict[str, Any] = {
            "ResultType": 0,
            "ResultCode": int(code) if code.isdigit() else code,
            "ResultDesc": RESULT_DESCRIPTIONS.get(code, "The transaction has failed."),
            "OriginatorConversationID": originator_id,
            "ConversationID": conversation_id,
            "TransactionID": self._receipt() if code == "0" else "SKE0000000",
            "ReferenceData": {
                "ReferenceItem": {"Key": "QueueTimeoutURL", "Value": "sandbox/reversalresults"}
            },
        }
        reversal.result_code = code
        reversal.finished_at = self.ctx.clock.now()
        reversal.status = LedgerStatus.SUCCEEDED if code == "0" else LedgerStatus.FAILED
        if original is not None:
            reversal.msisdn = original.msisdn
        if code == "0" and original is not None:
            reversal.reversal_receipt = str(result["TransactionID"])
            self.ctx.ledger.settle(original, LedgerStatus.REVERSED)
            refund = self.ctx.ledger.record(
                provider=NAME,
                operation=LedgerOperation.REFUND,
                provider_reference=conversation_id,
                reference=original.reference,
                msisdn=original.msisdn,
                amount_minor=original.amount_minor,
                currency=original.currency,
                extra={"original_receipt": receipt},
            )
            self.ctx.ledger.settle(
                refund, LedgerStatus.SUCCEEDED, result_code=code, receipt=result["TransactionID"]
            )
            result["ResultParameters"] = {
                "ResultParameter": [
                    {"Key": "Amount", "Value": amount_kes},
                    {"Key": "OriginalTransactionID", "Value": receipt},
                    {"Key": "TransCompletedTime", "Value": int(self._now_eat().strftime("%Y%m%d%H%M%S"))},
                    {"Key": "CreditPartyPublicName", "Value": f"{original.msisdn[1:]} - SANDBOX CUSTOMER"},
                ]
            }
        self.ctx.outbox.send(NAME, result_url, {"Result": result})

    # --- transaction status ------------------------------------------------------------------

    async def _transaction_status(self, request: Request) -> Response:
        return await self.ctx.guarded(
            self, request, EndpointKind.STATUS, lambda: self._accept_status_query(request)
        )

    async def _accept_status_query(self, request: Request) -> Response:
        body, refused = await self._authorized_json(request, EndpointKind.STATUS)
        if refused is not None or body is None:
            return refused or self._bad("JSON")
        transaction_id = self._text(body.get("TransactionID"))
        original_id = self._text(body.get("OriginalConversationID"))
        party_a = self._text(body.get("PartyA"))
        remarks, occasion = body.get("Remarks"), body.get("Occasion")
        checks = [
            ("Initiator", isinstance(body.get("Initiator"), str) and bool(body.get("Initiator"))),
            ("SecurityCredential", isinstance(body.get("SecurityCredential"), str)),
            ("CommandID", body.get("CommandID") == "TransactionStatusQuery"),
            ("TransactionID", bool(transaction_id) or bool(original_id)),
            (
                "PartyA",
                party_a is not None and (SHORTCODE_RE.match(party_a) or PHONE_RE.match(party_a)) is not None,
            ),
            ("IdentifierType", self._text(body.get("IdentifierType")) in TS_IDENTIFIER_TYPES),
            ("ResultURL", self._url(body.get("ResultURL"))),
            ("QueueTimeOutURL", self._url(body.get("QueueTimeOutURL"))),
            ("Remarks", isinstance(remarks, str) and 1 <= len(remarks) <= 100),
            ("Occasion", occasion is None or (isinstance(occasion, str) and len(occasion) <= 100)),
        ]
        for field_name, ok in checks:
            if not ok:
                return self._bad(field_name)
        query_conversation = self._conversation_id()
        query_originator = (
            f"{self._rng.getrandbits(16):04x}-{self._rng.getrandbits(16):04x}-{self._rng.getrandbits(32)}"
        )
        initiator_ok = (body.get("Initiator"), body.get("SecurityCredential")) == (
            self.config.initiator_name,
            self.config.security_credential,
        )
        result_url = str(body["ResultURL"])
        # Daraja answers the query later, by callback: the lookup runs when the job does.
        occasion_text = occasion if isinstance(occasion, str) else None

        def answer() -> None:
            # Daraja answers the query later, by callback: the lookup runs when this job does.
            result = self._status_result(
                transaction_id, original_id, query_originator, query_conversation, occasion_text, initiator_ok
            )
            self.ctx.outbox.send(NAME, result_url, {"Result": result})

        self.ctx.scheduler.after(self.config.status_query_delay_s, answer)
        return json_response(
            {
                "OriginatorConversationID": query_originator,
                "ConversationID": query_conversation,
                "ResponseCode": "0",
                "ResponseDescription": "Accept the service request successfully.",
            }
        )

    def _status_result(
        self,
        transaction_id: str | None,
        original_id: str | None,
        query_originator: str,
        query_conversation: str,
        occasion: str | None,
        initiator_ok: bool,
    ) -> dict[str, Any]:
        """The Transaction Status Result for one query, answered from the ledger."""
        reference_item: dict[str, Any] = {"Key": "Occasion"}
        if occasion:
            reference_item["Value"] = occasion
        result: dict[str, Any] = {
            "ResultType": 0,
            "OriginatorConversationID": query_originator,
            "ConversationID": query_conversation,
            "TransactionID": transaction_id or "",
            "ReferenceData": {"ReferenceItem": reference_item},
        }
        view = self._lookup(transaction_id, original_id) if initiator_ok else None
        if not initiator_ok:
            code, desc = "2001", RESULT_DESCRIPTIONS["2001"]
        elif view is None:
            code, desc = TS_NOT_FOUND_CODE, TS_NOT_FOUND_DESC
        else:
            code, desc = "0", RESULT_DESCRIPTIONS["0"]
        result.update(ResultCode=int(code), ResultDesc=desc)
        if view is None:
            return result
        if view.get("receipt"):
            result["TransactionID"] = view["receipt"]
        parameters: list[dict[str, Any]] = [
            {"Key": "DebitPartyName", "Value": view["debit"]},
            {"Key": "CreditPartyName", "Value": view["credit"]},
            {"Key": "OriginatorConversationID", "Value": view["originator"]},
            {"Key": "InitiatedTime", "Value": view["initiated"]},
            {"Key": "DebitAccountType", "Value": view["account_type"]},
            {"Key": "ReasonType", "Value": view["reason_type"]},
            {"Key": "TransactionStatus", "Value": view["status"]},
            {"Key": "Amount", "Value": view["amount"]},
            {"Key": "ConversationID", "Value": view["conversation"]},
        ]
        if view.get("finalised") is not None:
            parameters.append({"Key": "FinalisedTime", "Value": view["finalised"]})
        if view.get("receipt"):
            parameters.append({"Key": "ReceiptNo", "Value": view["receipt"]})
        result["ResultParameters"] = {"ResultParameter": parameters}
        return result

    def _stamp(self, epoch_s: float) -> int:
        return int(datetime.fromtimestamp(epoch_s, tz=UTC).astimezone(EAT).strftime("%Y%m%d%H%M%S"))

    @staticmethod
    def _ts_status(status: LedgerStatus) -> str:
        if status is LedgerStatus.PENDING:
            return "Authorized"
        if status in (LedgerStatus.SUCCEEDED, LedgerStatus.REVERSED):
            return "Completed"  # a reversal is its own transaction; the original stays completed
        return "Declined"

    def _lookup(self, transaction_id: str | None, original_id: str | None) -> dict[str, Any] | None:
        """What M-Pesa knows about a transaction by receipt or OriginatorConversationID, as the
        Transaction Status result reports it; None when unknown or not yet visible."""
        entry: LedgerEntry | None = None
        if original_id:
            entry = self._b2c.get(original_id)
            reversal = self._reversals.get(original_id)
            if entry is None and reversal is not None:
                return self._reversal_view(reversal)
        if entry is None and transaction_id:
            entry = self._receipts.get(transaction_id) or self._b2c_receipts.get(transaction_id)
            if entry is None:
                for reversal in self._reversals.values():
                    if reversal.reversal_receipt == transaction_id:
                        return self._reversal_view(reversal)
        if entry is None:
            return None
        accepted_at = self._accepted_at.get(entry.entry_id, self.ctx.clock.monotonic())
        if not self.ctx.visible(NAME, accepted_at):
            return None
        if entry.status is LedgerStatus.FAILED and entry.result_code in NEVER_A_TRANSACTION_CODES:
            return None
        final = entry.status is not LedgerStatus.PENDING
        customer = f"{entry.msisdn[1:]} - SANDBOX CUSTOMER"
        if entry.operation is LedgerOperation.PAYOUT:
            debit = f"{self.config.b2c_shortcode} - Sandbox Organisation"
            credit, account = customer, "Utility Account"
            reason = REASON_TYPES.get(str(entry.extra.get("command_id")), REASON_TYPES["BusinessPayment"])
            originator, conversation = entry.reference, entry.provider_reference
        else:
            debit = customer
            credit = f"{self.config.shortcode} - Sandbox Organisation"
            account, reason = "MMF Account For Customer", "Pay Bill Online"
            originator = str(entry.extra.get("merchant_request_id", ""))
            conversation = entry.provider_reference
        return {
            "debit": debit,
            "credit": credit,
            "originator": originator,
            "conversation": conversation,
            "account_type": account,
            "reason_type": reason,
            "status": self._ts_status(entry.status),
            "amount": entry.amount_minor // 100,
            "receipt": entry.receipt if entry.moved_money else None,
            "initiated": self._stamp(entry.created_at),
            "finalised": self._stamp(entry.updated_at) if final else None,
        }

    def _reversal_view(self, reversal: _Reversal) -> dict[str, Any] | None:
        if not self.ctx.visible(NAME, reversal.accepted_at_s):
            return None
        if reversal.status is LedgerStatus.FAILED and reversal.result_code in NEVER_A_TRANSACTION_CODES:
            return None
        customer = f"{reversal.msisdn[1:]} - SANDBOX CUSTOMER" if reversal.msisdn else "unknown"
        return {
            "debit": f"{self.config.shortcode} - Sandbox Organisation",
            "credit": customer,
            "originator": reversal.originator_id,
            "conversation": reversal.conversation_id,
            "account_type": "Utility Account",
            "reason_type": "Reversal",
            "status": self._ts_status(reversal.status),
            "amount": reversal.amount_kes,
            "receipt": reversal.reversal_receipt,
            "initiated": self._stamp(reversal.created_at),
            "finalised": None if reversal.finished_at is None else self._stamp(reversal.finished_at),
        }
