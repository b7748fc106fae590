"""A merchant asking each emulated provider to collect from a customer, in raw HTTP as that
provider's API takes it: what the fault and customer-error tests send, with no adapter between
(the adapters change on their own schedule; these requests pin the wire)."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

import httpx

from mcp_autonomy.sandbox.airtel_money import AirtelMoneySandboxConfig
from mcp_autonomy.sandbox.flutterwave import FlutterwaveSandboxConfig
from mcp_autonomy.sandbox.intasend import IntaSendSandboxConfig
from mcp_autonomy.sandbox.ledger import LedgerEntry
from mcp_autonomy.sandbox.mpesa import MpesaSandboxConfig
from mcp_autonomy.sandbox.mtn_momo import MtnMomoSandboxConfig
from mcp_autonomy.sandbox.paystack import PaystackSandboxConfig

PROVIDERS = ("mpesa", "paystack", "mtn_momo", "airtel_money", "intasend", "flutterwave")
MPESA = MpesaSandboxConfig()
PAYSTACK = PaystackSandboxConfig()
MOMO = MtnMomoSandboxConfig()
AIRTEL = AirtelMoneySandboxConfig()
INTASEND = IntaSendSandboxConfig()
FLUTTERWAVE = FlutterwaveSandboxConfig()
CALLBACK_URL = "https://merchant.example.com/callback"  # recorded by the outbox, never called


def phone(provider: str, n: int) -> str:
    """The n-th test customer of a provider, in E.164 as its ledger records them."""
    if provider == "mtn_momo":
        return f"+2567720{n:05d}"
    if provider == "airtel_money":
        return f"+2567000{n:05d}"
    return f"+2547000{n:05d}"


def ledger_reference(provider: str, reference: str) -> str:
    """The reference the provider's ledger keeps for ours (MoMo's is the X-Reference-Id)."""
    if provider == "mtn_momo":
        return str(uuid.UUID(hashlib.md5(reference.encode()).hexdigest(), version=4))
    return reference


def reported_code(entry: LedgerEntry) -> str | None:
    """The customer-facing code the provider ended a collection with, as its API reports it:
    a ResultCode or result code, or (MoMo, Flutterwave, Paystack) the reason text of a failure."""
    if entry.result_code in ("FAILED", "failed"):
        return entry.result_desc
    return entry.result_code


def answered_normally(provider: str, response: httpx.Response) -> bool:
    """The provider accepted the request (Airtel refuses inside HTTP 200)."""
    if not response.is_success:
        return False
    return provider != "airtel_money" or response.json()["status"]["success"] is True


def own_error_shape(provider: str, body: Any) -> bool:
    """A 5xx body in the provider's own error shape (not a generic one)."""
    if provider == "mpesa":
        return {"requestId", "errorCode", "errorMessage"} <= set(body) or "fault" in body
    if provider == "paystack":
        return body["status"] is False and body["type"] == "api_error"
    if provider == "mtn_momo":
        return set(body) == {"code", "message"}
    if provider == "airtel_money":
        return body == {"message": "Service Unavailable"} or body["status"]["success"] is False
    if provider == "intasend":
        return body["type"] == "server_error" and bool(body["errors"])
    return bool(body["status"] == "error" and body["data"] is None)


async def collect(client: httpx.AsyncClient, provider: str, reference: str, msisdn: str) -> httpx.Response:
    """Ask `provider` (on the sandbox's own port, `client.base_url`) to collect 10 units from
    `msisdn` under our `reference` (alphanumeric, at most 12 characters: M-Pesa's bound)."""
    digits = msisdn.removeprefix("+")
    if provider == "mpesa":
        basic = base64.b64encode(f"{MPESA.consumer_key}:{MPESA.consumer_secret}".encode()).decode()
        token = await client.get(
            "/mpesa/oauth/v1/generate",
            params={"grant_type": "client_credentials"},
            headers={"Authorization": f"Basic {basic}"},
        )
        timestamp = "20260101030000"
        password = base64.b64encode(f"{MPESA.shortcode}{MPESA.passkey}{timestamp}".encode()).decode()
        return await client.post(
            "/mpesa/mpesa/stkpush/v1/processrequest",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            json={
                "BusinessShortCode": MPESA.shortcode,
                "Password": password,
                "Timestamp": timestamp,
                "TransactionType": "CustomerPayBillOnline",
                "Amount": 10,
                "PartyA": digits,
                "PartyB": MPESA.shortcode,
                "PhoneNumber": digits,
                "CallBackURL": CALLBACK_URL,
                "AccountReference": reference,
                "TransactionDesc": "order",
            },
        )
    if provider == "paystack":
        return await client.post(
            "/paystack/charge",
            headers={"Authorization": f"Bearer {PAYSTACK.secret_keys[0]}"},
            json={
                "email": "payer@example.com",
                "amount": 1_000,
                "currency": "KES",
                "reference": reference,
                "mobile_money": {"phone": msisdn, "provider": "mpesa"},
            },
        )
    if provider == "mtn_momo":
        key = {"Ocp-Apim-Subscription-Key": MOMO.collection_subscription_key}
        basic = base64.b64encode(f"{MOMO.api_user}:{MOMO.api_key}".encode()).decode()
        token = await client.post(
            "/mtn_momo/collection/token/", headers={**key, "Authorization": f"Basic {basic}"}
        )
        return await client.post(
            "/mtn_momo/collection/v1_0/requesttopay",
            headers={
                **key,
                "Authorization": f"Bearer {token.json()['access_token']}",
                "X-Reference-Id": ledger_reference(provider, reference),
                "X-Target-Environment": MOMO.target_environment,
            },
            json={
                "amount": "10",
                "currency": MOMO.currency,
                "externalId": reference,
                "payer": {"partyIdType": "MSISDN", "partyId": digits},
                "payerMessage": "order",
                "payeeNote": "order",
            },
        )
    if provider == "airtel_money":
        token = await client.post(
            "/airtel_money/auth/oauth2/token",
            json={
                "client_id": AIRTEL.client_id,
                "client_secret": AIRTEL.client_secret,
                "grant_type": "client_credentials",
            },
        )
        return await client.post(
            "/airtel_money/merchant/v2/payments/",
            headers={
                "Authorization": f"Bearer {token.json()['access_token']}",
                "X-Country": "UG",
                "X-Currency": "UGX",
            },
            json={
                "reference": reference,
                "subscriber": {"country": "UG", "currency": "UGX", "msisdn": digits.removeprefix("256")},
                "transaction": {"amount": 10, "country": "UG", "currency": "UGX", "id": reference},
            },
        )
    if provider == "intasend":
        return await client.post(
            "/intasend/api/v1/payment/mpesa-stk-push/",
            headers={"Authorization": f"Bearer {INTASEND.secret_keys[0]}"},
            json={
                "public_key": INTASEND.public_key,
                "currency": "KES",
                "method": "M-PESA",
                "phone_number": digits,
                "amount": 10,
                "api_ref": reference,
            },
        )
    assert provider == "flutterwave", provider
    return await client.post(
        "/flutterwave/v3/charges",
        params={"type": "mpesa"},
        headers={"Authorization": f"Bearer {FLUTTERWAVE.secret_keys[0]}"},
        json={
            "tx_ref": reference,
            "amount": 10,
            "currency": "KES",
            "email": "payer@example.com",
            "phone_number": digits,
        },
    )
