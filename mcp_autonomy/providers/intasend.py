"""IntaSend adapter: M-Pesa STK push collections, send-money (B2C) payouts, chargeback refunds.

Facts this module is built on (IntaSend's documentation repository and its official SDKs,
IntaSend/intasend-python and intasend-node, and the community Rust SDK):

- Hosts: `https://sandbox.intasend.com` (test) and `https://payment.intasend.com` (live), every
  path under `/api/v1/`. Authenticated calls carry `Authorization: Bearer <secret key>`; the
  publishable key travels as `public_key` in collection bodies (and the
  `INTASEND_PUBLIC_API_KEY` header the Python SDK sends).
- Collect: `POST /api/v1/payment/mpesa-stk-push/` `{public_key, currency: "KES", method:
  "M-PESA", amount, phone_number: "2547...", api_ref, narrative}` -> `{id, invoice: {invoice_id,
  state, api_ref, value, currency, failed_reason, failed_code, ...}, ...}`.
- Status: `POST /api/v1/payment/status/` `{invoice_id, public_key}` -> `{invoice: {state, ...},
  meta}` with `state` PENDING / PROCESSING / RETRY (not final), COMPLETE, FAILED
  (`failed_reason`, `failed_code`). Webhooks carry the same invoice plus our `api_ref`, and
  report COMPLETED (see `ingest_webhook`).
- Payout: `POST /api/v1/send-money/initiate/` `{provider: "MPESA-B2C", currency,
  transactions: [{name, account, amount, narrative}], requires_approval}` returns a batch
  `{tracking_id, status, status_code, nonce, transactions}`; nothing moves until the batch is
  sent back to `POST /api/v1/send-money/approve/`. `POST /api/v1/send-money/status/`
  `{tracking_id}`: batch codes BP1xx in progress, BF102/BF105/BF107 failed, BC100 complete,
  BE111 cancelled; item codes TS100 success, TF103/TF106 failed, TC108 cancelled, TF105
  undetermined, TP101/TP102/TH107/TR109 in progress.
- Refund: `POST /api/v1/chargebacks/` `{invoice, amount, reason, reason_details}` -> a
  chargeback `{id or chargeback_id, status: PENDING, ...}`; `GET /api/v1/chargebacks/{id}/`.
- Errors: `{detail}` in older answers, `{type, errors: [{code, detail, attr}]}` in current ones;
  401 bad key, 403 forbidden, 404 unknown, 429 throttled (with `Retry-After`), 5xx.
- Probe: `GET /api/v1/wallets/` (read-only).

IntaSend documents no idempotency key and no lookup by `api_ref`. So the adapter guards on its
own side: it remembers the invoice (or tracking id) of every reference it sent, answers a repeat
with the existing transaction instead of pushing again, and refuses to resend a push whose first
attempt has an unknown outcome. Such an outcome resolves through the status query once the
invoice id is known, or through the webhook (which carries `api_ref`).
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr
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

PROVIDER = "intasend"
API = "/api/v1"
KENYAN_MSISDN_RE = re.compile(r"^\+254(7|1)\d{8}$")
MAX_REMEMBERED = 100_000

INVOICE_PENDING = frozenset({"PENDING", "PROCESSING", "RETRY"})
INVOICE_DONE = frozenset({"COMPLETE", "COMPLETED"})
BATCH_FAILED = frozenset({"BF102", "BF105", "BF107", "BE111"})
BATCH_AWAITING_APPROVAL = "BP103"
ITEM_SUCCEEDED = "TS100"
ITEM_FAILED = frozenset({"TF103", "TF106", "TC108"})
ITEM_UNDETERMINED = "TF105"
CHARGEBACK_DONE = frozenset({"COMPLETED", "COMPLETE", "APPROVED", "REFUNDED", "PROCESSED"})
CHARGEBACK_FAILED = frozenset({"REJECTED", "DECLINED", "CANCELLED", "FAILED"})
UNRESOLVED_CODE = "unresolved_previous_attempt"


class IntaSendSettings(BaseSettings):
    """IntaSend keys and endpoint, from `INTASEND_*` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="INTASEND_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    secret_key: SecretStr = Field(description="ISSecretKey_test_... or ISSecretKey_live_...")
    public_key: str = Field(description="ISPubKey_test_... or ISPubKey_live_... (publishable)")
    base_url: str = Field("https://sandbox.intasend.com", description="live: https://payment.intasend.com")
    payout_provider: Literal["MPESA-B2C"] = "MPESA-B2C"
    wallet_id: str | None = Field(
        None, description="settle into / pay from this wallet (default: the main one)"
    )
    timeout_s: float = Field(15.0, ge=0.5, le=120.0)
    probe_min_interval_s: float = Field(0.0, ge=0.0, le=3600.0)


class _Recent(OrderedDict[str, Any]):
    """A dict that forgets its oldest entries beyond `MAX_REMEMBERED`."""

    def remember(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MAX_REMEMBERED:
            self.popitem(last=False)


def _whole_shillings(money: Money) -> int:
    if money.currency != "KES":
        raise ProviderError(
            PROVIDER, ErrorClass.INVALID_REQUEST, f"IntaSend M-Pesa moves KES, not {money.currency}"
        )
    shillings, cents = divmod(money.amount_minor, 100)
    if cents:
        raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "M-Pesa takes whole shillings")
    return shillings


def _kes(value: Any) -> Money | None:
    try:
        minor = Decimal(str(value)) * 100
    except (InvalidOperation, ValueError):
        return None
    if minor <= 0 or minor != minor.to_integral_value():
        return None
    return Money(amount_minor=int(minor), currency="KES")


def _is_tracking_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _details(body: Mapping[str, Any]) -> tuple[str | None, str]:
    """(code, message) from `{detail}`, `{details}` or `{type, errors: [{code, detail}]}`."""
    errors = body.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        first = errors[0]
        attr = first.get("attr")
        detail = str(first.get("detail") or "")
        return (
            str(first.get("code")) if first.get("code") else None,
            f"{attr}: {detail}" if attr else detail,
        )
    plain = body.get("detail") or body.get("details") or body.get("message")
    return None, str(plain or "")


class IntaSendAdapter(HttpClientOwner):
    """Speaks IntaSend's REST API for M-Pesa (KES): STK push, send money, chargebacks."""

    name = PROVIDER
    capabilities = ProviderCapabilities(
        operations=frozenset({Operation.COLLECT, Operation.PAYOUT, Operation.REFUND}),
        currencies=frozenset({"KES"}),
        countries=frozenset({"KE"}),
        refunds=True,
    )

    def __init__(
        self,
        settings: IntaSendSettings,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        settings_loader: Callable[[], IntaSendSettings] | None = None,
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
        self._invoices = _Recent()  # reference -> invoice_id
        self._invoice_refs = _Recent()  # invoice_id -> reference
        self._batches = _Recent()  # reference -> the send-money batch as IntaSend returned it
        self._unresolved = _Recent()  # reference -> True: sent, outcome unknown, no id came back
        self._money = _Recent()  # reference -> Money
        self._results = _Recent()  # reference -> final ProviderTransaction from a webhook
        self._chargebacks = _Recent()  # reference -> list of (chargeback id, Money)

    # --- identity and tuning -------------------------------------------------------------

    @staticmethod
    def reference_for(idempotency_key: str) -> str:
        """`IS-` + 29 hex characters of the key's SHA-256: the `api_ref` and batch reference."""
        return "IS-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:29]

    # --- lifecycle -----------------------------------------------------------------------

    async def initialize(self) -> None:
        """A fresh HTTP client with the current keys (static keys: nothing to fetch)."""
        self._last_probe = None  # a re-initialised adapter is probed afresh, never from the cache
        await self.close()
        if self._settings_loader is not None:
            self._settings = self._settings_loader()
        self._client = self._new_client()

    async def refresh_credentials(self) -> None:
        """Re-read the keys (a rotated `INTASEND_SECRET_KEY`) and rebuild the client with them."""
        await self.initialize()

    def _new_client(self) -> httpx.AsyncClient:
        return build_client(
            self._settings.base_url,
            self._timeout_s,
            headers={
                "Authorization": f"Bearer {self._settings.secret_key.get_secret_value()}",
                "INTASEND_PUBLIC_API_KEY": self._settings.public_key,
            },
            transport=self._transport,
        )

    # --- plumbing ------------------------------------------------------------------------

    async def _call(
        self, method: str, path: str, *, mutating: bool, what: str, payload: dict[str, Any] | None = None
    ) -> tuple[httpx.Response, dict[str, Any]]:
        response = await send(
            self._http(), PROVIDER, method, f"{API}{path}", mutating=mutating, what=what, json_body=payload
        )
        return response, json_object(response)

    def _error(
        self, response: httpx.Response, body: dict[str, Any], *, mutating: bool, what: str
    ) -> ProviderError:
        code, message = _details(body)
        error_class = classify_http_status(response.status_code, mutating=mutating)
        if error_class is None:  # a 2xx without what was asked for
            error_class = ErrorClass.AMBIGUOUS if mutating else ErrorClass.NOT_PROCESSED
        return ProviderError(
            PROVIDER,
            error_class,
            f"{what}: {short(message or f'HTTP {response.status_code}')}",
            code=code,
            http_status=response.status_code,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After"), self._clock.now()),
        )

    @staticmethod
    def _msisdn(phone: str) -> str:
        if not KENYAN_MSISDN_RE.match(phone):
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "IntaSend M-Pesa needs a Kenyan number")
        return phone[1:]

    def _check(self, request: PaymentRequest) -> tuple[int, str]:
        if request.country != "KE":
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, f"IntaSend M-Pesa serves KE, not {request.country}"
            )
        return _whole_shillings(request.money), self._msisdn(request.phone)

    # --- probe ---------------------------------------------------------------------------

    async def probe(self) -> ProbeResult:
        """`GET /api/v1/wallets/`: authenticated, read-only."""
        now = self._clock.monotonic()
        if self._last_probe is not None and now - self._last_probe[0] < self._settings.probe_min_interval_s:
            cached = self._last_probe[1]
            return cached.model_copy(update={"detail": f"{cached.detail} (cached)"})
        started = time.perf_counter()
        response, body = await self._call("GET", "/wallets/", mutating=False, what="wallets")
        if response.status_code != 200:
            raise self._error(response, body, mutating=False, what="wallets")
        # Answered as a bare list or a page `{count, results}`; json_object() keeps only objects.
        results = body.get("results")
        count = body.get("count", len(results) if isinstance(results, list) else 0)
        result = ProbeResult(
            ok=True, latency_ms=(time.perf_counter() - started) * 1000, detail=f"{count} wallet(s)"
        )
        self._last_probe = (now, result)
        return result

    # --- collect -------------------------------------------------------------------------

    async def collect(self, request: PaymentRequest) -> ProviderTransaction:
        """M-Pesa STK push through IntaSend; pending until the customer enters their PIN.

        A repeat of a known reference is answered with the existing invoice; a repeat whose
        first attempt has an unknown outcome is refused as ambiguous (pushing again could
        charge twice - IntaSend does not deduplicate).
        """
        shillings, msisdn = self._check(request)
        reference = self.reference_for(request.idempotency_key)
        if reference in self._invoices:
            return await self.status(reference)
        if reference in self._unresolved:
            raise ProviderError(
                PROVIDER,
                ErrorClass.AMBIGUOUS,
                "collect: an earlier push under this reference has an unknown outcome; not pushing again",
                code=UNRESOLVED_CODE,
            )
        payload: dict[str, Any] = {
            "public_key": self._settings.public_key,
            "currency": "KES",
            "method": "M-PESA",
            "amount": shillings,
            "phone_number": msisdn,
            "api_ref": reference,
            "narrative": request.description,
        }
        if request.metadata.get("email"):
            payload["email"] = request.metadata["email"]
        if self._settings.wallet_id:
            payload["wallet_id"] = self._settings.wallet_id
        self._money.remember(reference, request.money)
        try:
            response, body = await self._call(
                "POST", "/payment/mpesa-stk-push/", mutating=True, what="stk push", payload=payload
            )
        except ProviderError as exc:
            if exc.error_class is ErrorClass.AMBIGUOUS:
                self._unresolved.remember(reference, True)
            raise
        invoice = body.get("invoice")
        if response.status_code >= 400 or not isinstance(invoice, Mapping):
            error = self._error(response, body, mutating=True, what="stk push")
            if error.error_class is ErrorClass.AMBIGUOUS:
                self._unresolved.remember(reference, True)
            raise error
        invoice_id = str(invoice.get("invoice_id") or invoice.get("id") or "")
        if not invoice_id:
            self._unresolved.remember(reference, True)
            raise ProviderError(PROVIDER, ErrorClass.AMBIGUOUS, "stk push: accepted without an invoice id")
        self._learn_invoice(reference, invoice_id)
        return self._invoice_transaction(reference, dict(invoice))

    def _learn_invoice(self, reference: str, invoice_id: str) -> None:
        self._invoices.remember(reference, invoice_id)
        self._invoice_refs.remember(invoice_id, reference)
        self._unresolved.pop(reference, None)

    def _invoice_transaction(self, reference: str, invoice: dict[str, Any]) -> ProviderTransaction:
        state = str(invoice.get("state") or "").upper()
        if state in INVOICE_DONE:
            status = TransactionStatus.SUCCEEDED
        elif state in INVOICE_PENDING:
            status = TransactionStatus.PENDING
        elif state == "FAILED":
            status = TransactionStatus.FAILED
        else:
            status = TransactionStatus.UNKNOWN
        money = _kes(invoice.get("value")) if invoice.get("currency", "KES") == "KES" else None
        failed_code = invoice.get("failed_code")
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=str(invoice.get("invoice_id") or self._invoices.get(reference) or "") or None,
            status=status,
            money=money or self._money.get(reference),
            provider_code=str(failed_code) if failed_code else state or None,
            provider_message=short(invoice.get("failed_reason") or state),
            raw_status=state or None,
            raw=invoice,
        )

    # --- webhook -------------------------------------------------------------------------

    def ingest_webhook(self, body: Mapping[str, Any]) -> ProviderTransaction:
        """Fold one collection webhook in (IntaSend posts the invoice with our `api_ref`).

        This is how a push whose answer never arrived gets its invoice id, and so its status.

        Raises:
            ValueError: not a collection event (no `invoice_id` and `state`).
        """
        invoice_id, state = body.get("invoice_id"), body.get("state")
        if not isinstance(invoice_id, str) or not invoice_id or not isinstance(state, str):
            raise ValueError("not an IntaSend collection event: expected invoice_id and state")
        api_ref = body.get("api_ref")
        reference = (
            api_ref
            if isinstance(api_ref, str) and api_ref
            else self._invoice_refs.get(invoice_id, invoice_id)
        )
        self._learn_invoice(reference, invoice_id)
        txn = self._invoice_transaction(reference, dict(body))
        if txn.status.is_final:
            self._results.remember(reference, txn)
        return txn

    # --- status --------------------------------------------------------------------------

    async def status(self, reference: str, provider_reference: str | None = None) -> ProviderTransaction:
        """Where a payment stands: its invoice, else its send-money batch.

        Raises `ProviderError(code="not_found")` when IntaSend does not know the invoice or
        tracking id. A reference with no id known (the push's answer was lost) is `unknown`:
        IntaSend cannot be asked by `api_ref`, only its webhook can tell.
        """
        if reference in self._batches:
            return await self._payout_status(reference)
        if provider_reference and _is_tracking_id(provider_reference):
            # Batches are tracked by UUID, invoices by short codes: a fresh process can tell them apart.
            return await self._payout_status(reference, provider_reference)
        invoice_id = provider_reference or self._invoices.get(reference)
        if not invoice_id:
            known = self._results.get(reference)
            if isinstance(known, ProviderTransaction):
                return known
            return ProviderTransaction(
                provider=PROVIDER,
                reference=reference,
                status=TransactionStatus.UNKNOWN,
                money=self._money.get(reference),
                provider_message="no invoice id known: IntaSend reports this push only by webhook",
                raw_status="awaiting_webhook" if reference in self._unresolved else "unknown_reference",
            )
        response, body = await self._call(
            "POST",
            "/payment/status/",
            mutating=False,
            what="payment status",
            payload={"invoice_id": invoice_id, "public_key": self._settings.public_key},
        )
        invoice = body.get("invoice")
        if response.status_code == 404 or (
            response.status_code == 400 and "not found" in _details(body)[1].lower()
        ):
            raise ProviderError(
                PROVIDER,
                ErrorClass.NOT_PROCESSED,
                f"payment status: no invoice {invoice_id}",
                code=NOT_FOUND_CODE,
                http_status=response.status_code,
            )
        if response.status_code != 200 or not isinstance(invoice, Mapping):
            raise self._error(response, body, mutating=False, what="payment status")
        txn = self._invoice_transaction(reference, dict(invoice))
        if txn.status is TransactionStatus.SUCCEEDED and self._chargebacks.get(reference):
            return await self._with_chargebacks(txn)
        return txn

    # --- payout --------------------------------------------------------------------------

    async def payout(self, request: PaymentRequest) -> ProviderTransaction:
        """M-Pesa B2C via send money: initiate a one-item batch, then approve it.

        Initiating moves no money (a batch waits for approval), so only the approval is a
        mutating call. A repeat of a known reference re-approves the same batch if it still
        waits for approval (one batch is paid at most once), else reports its status.
        """
        shillings, msisdn = self._check(request)
        reference = self.reference_for(request.idempotency_key)
        batch = self._batches.get(reference)
        if batch is None:
            payload: dict[str, Any] = {
                "provider": self._settings.payout_provider,
                "currency": "KES",
                "batch_reference": reference,
                "requires_approval": "YES",
                "transactions": [
                    {
                        "name": request.metadata.get("recipient_name", msisdn),
                        "account": msisdn,
                        "amount": shillings,
                        "narrative": (request.description or "payout")[:22],
                    }
                ],
            }
            if self._settings.wallet_id:
                payload["wallet_id"] = self._settings.wallet_id
            response, body = await self._call(
                "POST", "/send-money/initiate/", mutating=False, what="send money initiate", payload=payload
            )
            if response.status_code >= 400 or not body.get("tracking_id"):
                raise self._error(response, body, mutating=False, what="send money initiate")
            batch = body
            self._batches.remember(reference, batch)
            self._money.remember(reference, request.money)
        elif str(batch.get("status_code") or "") != BATCH_AWAITING_APPROVAL:
            return await self._payout_status(reference)
        response, body = await self._call(
            "POST", "/send-money/approve/", mutating=True, what="send money approve", payload=dict(batch)
        )
        if response.status_code >= 400:
            if "already" in _details(body)[1].lower():  # approved by an earlier attempt
                return await self._payout_status(reference)
            raise self._error(response, body, mutating=True, what="send money approve")
        self._batches.remember(reference, {**batch, **body})
        return self._batch_transaction(reference, {**batch, **body})

    async def _payout_status(self, reference: str, tracking_id: str | None = None) -> ProviderTransaction:
        batch = self._batches.get(reference) or {}
        tracking_id = tracking_id or str(batch.get("tracking_id") or reference)
        response, body = await self._call(
            "POST",
            "/send-money/status/",
            mutating=False,
            what="send money status",
            payload={"tracking_id": tracking_id},
        )
        if response.status_code == 404:
            raise ProviderError(
                PROVIDER,
                ErrorClass.NOT_PROCESSED,
                f"no send-money batch {tracking_id}",
                code=NOT_FOUND_CODE,
                http_status=404,
            )
        if response.status_code != 200 or not body.get("tracking_id"):
            raise self._error(response, body, mutating=False, what="send money status")
        self._batches.remember(reference, {**batch, **body})
        return self._batch_transaction(reference, body)

    def _batch_transaction(self, reference: str, batch: Mapping[str, Any]) -> ProviderTransaction:
        batch_code = str(batch.get("status_code") or "")
        items = batch.get("transactions")
        item = items[0] if isinstance(items, list) and items and isinstance(items[0], Mapping) else {}
        item_code = str(item.get("status_code") or "")
        if batch_code in BATCH_FAILED or item_code in ITEM_FAILED:
            status = TransactionStatus.FAILED
        elif item_code == ITEM_SUCCEEDED:
            status = TransactionStatus.SUCCEEDED
        elif item_code == ITEM_UNDETERMINED:
            status = TransactionStatus.UNKNOWN  # "cannot be determined": never a retry, ask again
        else:
            status = TransactionStatus.PENDING
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=str(batch.get("tracking_id") or "") or None,
            status=status,
            money=_kes(item.get("amount")) or self._money.get(reference),
            provider_code=item_code or batch_code or None,
            provider_message=short(
                item.get("failed_reason") or item.get("status") or batch.get("status") or ""
            ),
            raw_status=f"{batch_code}/{item_code}" if item_code else batch_code or None,
            raw=dict(batch),
        )

    # --- refund --------------------------------------------------------------------------

    async def refund(
        self, transaction: ProviderTransaction, money: Money | None = None
    ) -> ProviderTransaction:
        """Refund (IntaSend chargeback) of a completed collection, fully or partly.

        The answer describes the chargeback (pending until IntaSend processes it); a repeat of
        the same refund is answered with the existing chargeback, never a second one.
        """
        if transaction.status is not TransactionStatus.SUCCEEDED:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only a completed collection")
        invoice_id = self._invoices.get(transaction.reference) or transaction.provider_reference
        if not invoice_id or transaction.reference in self._batches:
            raise ProviderError(
                PROVIDER, ErrorClass.INVALID_REQUEST, "refund: only collections with an invoice"
            )
        original = transaction.money or self._money.get(transaction.reference)
        amount = money or original
        if not isinstance(amount, Money):
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: the amount is unknown")
        if isinstance(original, Money) and amount.amount_minor > original.amount_minor:
            raise ProviderError(PROVIDER, ErrorClass.INVALID_REQUEST, "refund: more than the payment")
        shillings = _whole_shillings(amount)
        known: list[tuple[str, Money]] = list(self._chargebacks.get(transaction.reference, []))
        for chargeback_id, refunded in known:
            if refunded == amount:  # already asked for: report that chargeback
                return await self.refund_status(chargeback_id, transaction.reference)
        response, body = await self._call(
            "POST",
            "/chargebacks/",
            mutating=True,
            what="chargeback",
            payload={
                "invoice": invoice_id,
                "amount": str(shillings),
                "reason": "Other",
                "reason_details": "refund",
            },
        )
        chargeback_id = str(body.get("chargeback_id") or body.get("id") or "")
        if response.status_code >= 400 or not chargeback_id:
            raise self._error(response, body, mutating=True, what="chargeback")
        known.append((chargeback_id, amount))
        self._chargebacks.remember(transaction.reference, known)
        return self._chargeback_transaction(transaction.reference, body, amount)

    async def refund_status(self, chargeback_id: str, reference: str | None = None) -> ProviderTransaction:
        """Where one chargeback stands (`GET /api/v1/chargebacks/{id}/`)."""
        response, body = await self._call(
            "GET", f"/chargebacks/{chargeback_id}/", mutating=False, what="chargeback"
        )
        if response.status_code != 200:
            raise self._error(response, body, mutating=False, what="chargeback")
        return self._chargeback_transaction(reference or chargeback_id, body, None)

    def _chargeback_transaction(
        self, reference: str, body: Mapping[str, Any], amount: Money | None
    ) -> ProviderTransaction:
        raw_status = str(body.get("status") or "").upper()
        if raw_status in CHARGEBACK_DONE:
            status = TransactionStatus.SUCCEEDED
        elif raw_status in CHARGEBACK_FAILED:
            status = TransactionStatus.FAILED
        else:
            status = (
                TransactionStatus.PENDING
                if raw_status in ("PENDING", "IN-REVIEW", "")
                else TransactionStatus.UNKNOWN
            )
        return ProviderTransaction(
            provider=PROVIDER,
            reference=reference,
            provider_reference=str(body.get("chargeback_id") or body.get("id") or "") or None,
            status=status,
            money=amount or _kes(body.get("amount")),
            provider_code=raw_status or None,
            provider_message=short(body.get("resolution") or raw_status),
            raw_status=raw_status or None,
            raw=dict(body),
        )

    async def _with_chargebacks(self, txn: ProviderTransaction) -> ProviderTransaction:
        refunded_minor = 0
        for chargeback_id, _ in self._chargebacks.get(txn.reference, []):
            chargeback = await self.refund_status(chargeback_id, txn.reference)
            if chargeback.status is TransactionStatus.SUCCEEDED and chargeback.money is not None:
                refunded_minor += chargeback.money.amount_minor
        if txn.money is not None and refunded_minor >= txn.money.amount_minor:
            return txn.model_copy(
                update={"status": TransactionStatus.REVERSED, "raw_status": "COMPLETE (refunded)"}
            )
        return txn
