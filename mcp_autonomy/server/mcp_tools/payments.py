"""Payment tools: collect and pay out, look up, list, resolve by hand, OTPs, provider callbacks."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.payments import CallbackState, PaymentRecord
from mcp_autonomy.pii import mask_phone
from mcp_autonomy.providers.base import (
    DIAL_CODES,
    Money,
    Operation,
    PaymentRequest,
    TransactionStatus,
    normalize_msisdn,
)
from mcp_autonomy.server.mcp_tools.errors import EngineErrors, echo
from mcp_autonomy.server.mcp_tools.models import (
    READ_ONLY,
    AmountMinor,
    CallbackList,
    Country,
    Currency,
    IdempotencyKey,
    PaymentList,
    Phone,
    Reason,
)
from mcp_autonomy.server.mcp_tools.tool import ToolSet, check_provider, client_of

__all__ = ["register"]

MONEY_ANNOTATIONS = ToolAnnotations(
    read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True
)
SUBMIT_ERRORS = EngineErrors(
    store_hint="nothing was sent to any provider; retry later with the same idempotency_key"
)
BY_KEY_ERRORS = EngineErrors(field="idempotency_key", unknown="no payment {value}")


def payment_request(
    operation: Operation,
    idempotency_key: str,
    amount_minor: int,
    currency: str,
    phone: str,
    country: str,
    description: str,
) -> PaymentRequest:
    """The engine's request, with the phone number in E.164 (a number that cannot be is refused)."""
    try:
        e164 = normalize_msisdn(phone, DIAL_CODES.get(country))
    except ValueError as exc:
        raise ToolError(f"phone: {exc}") from None
    return PaymentRequest(
        idempotency_key=idempotency_key,
        operation=operation,
        money=Money(amount_minor=amount_minor, currency=currency),
        phone=e164,
        country=country,
        description=description,
    )


async def submit_audited(
    system: AutonomousSystem, tool: str, request: PaymentRequest, caller: str
) -> PaymentRecord:
    """Submit a payment and audit who asked (the payer's phone masked, never in full)."""
    arguments = {
        "idempotency_key": request.idempotency_key,
        "amount_minor": request.money.amount_minor,
        "currency": request.money.currency,
        "country": request.country,
        "phone": mask_phone(request.phone),
    }
    with system.audited(tool, arguments, caller=caller, reason=None) as action:
        record = await system.submit_payment(request)
        action.result = {"status": record.status.value, "provider": record.provider}
    return record


def register(tools: ToolSet) -> None:
    """Register the payment tools."""
    system: AutonomousSystem = tools.system

    @tools.tool(
        title="Request a payment (collect)",
        description=(
            "Ask a customer to pay (M-Pesa STK push, MoMo request-to-pay, mobile-money charge) through the "
            "best healthy provider for the currency and country, failing over along the backup map only when "
            "the provider certainly did not process it. Moves real money: always pass a unique "
            "idempotency_key and reuse it when retrying. Returns the payment record: status is usually "
            "`pending` until the customer confirms (poll get_payment); `unknown` means the provider may have "
            "it and it was not sent elsewhere."
        ),
        annotations=MONEY_ANNOTATIONS,
        errors=SUBMIT_ERRORS,
    )
    async def request_payment(
        idempotency_key: IdempotencyKey,
        amount_minor: AmountMinor,
        currency: Currency,
        phone: Phone,
        country: Country,
        ctx: Context,
        description: Annotated[str, Field(max_length=100, description="Shown to the customer")] = "payment",
    ) -> PaymentRecord:
        request = payment_request(
            Operation.COLLECT, idempotency_key, amount_minor, currency, phone, country, description
        )
        return await submit_audited(system, "request_payment", request, client_of(ctx))

    @tools.tool(
        title="Send a payment (payout)",
        description=(
            "Send money to a customer's mobile wallet (M-Pesa B2C, MoMo disbursement, transfer) with the same "
            "routing and no-double-payment rules as request_payment. Moves real money: pass a unique "
            "idempotency_key and reuse it when retrying."
        ),
        annotations=MONEY_ANNOTATIONS,
        errors=SUBMIT_ERRORS,
    )
    async def send_payment(
        idempotency_key: IdempotencyKey,
        amount_minor: AmountMinor,
        currency: Currency,
        phone: Phone,
        country: Country,
        ctx: Context,
        description: Annotated[str, Field(max_length=100, description="Shown to the customer")] = "payout",
    ) -> PaymentRecord:
        request = payment_request(
            Operation.PAYOUT, idempotency_key, amount_minor, currency, phone, country, description
        )
        return await submit_audited(system, "send_payment", request, client_of(ctx))

    @tools.tool(
        title="Get a payment",
        description=(
            "A payment by its idempotency key, our reference or the provider's reference, with every provider "
            "attempt it took. A pending or unknown payment is re-queried at its provider first."
        ),
        annotations=READ_ONLY,
    )
    async def get_payment(
        key_or_reference: Annotated[
            str, Field(min_length=1, max_length=200, description="Idempotency key or a reference")
        ],
    ) -> PaymentRecord:
        record = await system.get_payment(key_or_reference)
        if record is None:
            raise ToolError(f"key_or_reference: no payment with key or reference {echo(key_or_reference)}")
        return record.revealed()  # the one view that shows the payer in full

    @tools.tool(
        title="List payments",
        description=(
            "Payments newest first, optionally only one status and provider. `needs_reconciliation` lists "
            "the payments whose outcome the engine could not establish within their provider's bound "
            "(status_reason says why): resolve each with resolve_payment after checking the provider's "
            "portal. Also returns, per provider, the age of its oldest payment not yet final."
        ),
        annotations=READ_ONLY,
    )
    async def list_payments(
        status: Annotated[TransactionStatus | None, Field(description="Only this status")] = None,
        provider: Annotated[str | None, Field(description="Only this provider")] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="At most this many")] = 50,
    ) -> PaymentList:
        check_provider(system, provider)
        return PaymentList(
            payments=await system.list_payments(status=status, provider=provider, limit=limit),
            oldest_open_age_s=await system.reconciler.oldest_open_age_s(),
        )

    @tools.tool(
        title="Resolve a payment by hand",
        description=(
            "Record an operator's verdict on a payment left `needs_reconciliation` (or `unknown`) after "
            "checking the provider's own records: `succeeded` (the customer was charged / paid) or "
            "`failed` (nothing moved). Never sends anything to a provider. Give the provider's reference "
            "(receipt) you found when there is one. Audited."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
        ),
        errors=BY_KEY_ERRORS,
    )
    async def resolve_payment(
        idempotency_key: Annotated[str, Field(min_length=1, max_length=100, description="The payment's key")],
        outcome: Annotated[
            Literal["succeeded", "failed"], Field(description="What the provider's records show")
        ],
        reason: Reason,
        ctx: Context,
        provider_reference: Annotated[
            str | None, Field(max_length=100, description="The provider's id or receipt, if found")
        ] = None,
    ) -> PaymentRecord:
        return await system.resolve_payment(
            idempotency_key,
            TransactionStatus(outcome),
            reason=reason,
            provider_reference=provider_reference,
            caller=client_of(ctx),
        )

    @tools.tool(
        title="Submit a transfer's OTP",
        description=(
            "Finalise a payout its provider holds for the merchant's one-time password (status "
            "`needs_operator_otp`: Paystack sends the OTP to the merchant's phone or email when OTP is on for "
            "transfers). The engine never finalises one by itself. The OTP is sent to the provider only and "
            "never stored, logged or echoed. Audited."
        ),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True
        ),
        errors=EngineErrors(field="idempotency_key", unknown="no payment {value}", provider_field="otp"),
    )
    async def submit_transfer_otp(
        idempotency_key: Annotated[str, Field(min_length=1, max_length=100, description="The payout's key")],
        otp: Annotated[
            str, Field(min_length=4, max_length=12, pattern=r"^[0-9A-Za-z]+$", description="The OTP")
        ],
        reason: Reason,
        ctx: Context,
    ) -> PaymentRecord:
        return await system.submit_transfer_otp(idempotency_key, otp, reason=reason, caller=client_of(ctx))

    @tools.tool(
        title="Get provider callbacks",
        description=(
            "Callbacks the providers posted, newest first: what each claimed (status, amount, payer), whether "
            "its signature verified, and what became of it: confirmed by a status pull, pending (the pull "
            "said pending or not found yet; re-checked), refused (it contradicted the payment or the "
            "provider: audited), unmatched (no payment yet), or duplicate."
        ),
        annotations=READ_ONLY,
    )
    async def get_callbacks(
        provider: Annotated[str | None, Field(description="Only this provider")] = None,
        state: Annotated[CallbackState | None, Field(description="Only this state")] = None,
        idempotency_key: Annotated[
            str | None, Field(max_length=100, description="Only this payment's callbacks")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="At most this many")] = 50,
    ) -> CallbackList:
        check_provider(system, provider)
        return CallbackList(
            callbacks=await system.list_callbacks(
                provider=provider, state=state, idempotency_key=idempotency_key, limit=limit
            )
        )
