"""Callbacks end to end for every provider that posts them: the real callback route, the real
adapters parsing them, confirmation by real status pulls to the sandbox over HTTP.

The sandbox sends each provider's genuine callbacks and webhooks (signed as that provider signs
them) to a port nothing listens on, so they are recorded but not delivered; the test then posts
them, and forged, mismatched, duplicated, malformed and unknown-payment variants of them,
through the server's own route. Nothing may change a payment wrongly, and nothing answers 500.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from mcp_autonomy.autonomy.system import AutonomousSystem
from mcp_autonomy.clock import ManualClock
from mcp_autonomy.config import load_settings
from mcp_autonomy.payments import CallbackState
from mcp_autonomy.providers.base import DIAL_CODES, Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.sandbox import CustomerBehavior, PaystackSandboxConfig
from mcp_autonomy.sandbox.core import CallbackRecord
from mcp_autonomy.sandbox.embedded import embedded_sandbox
from mcp_autonomy.server.callbacks import callback_routes

pytestmark = pytest.mark.anyio
PROVIDERS = ("mpesa", "paystack", "mtn_momo", "airtel_money", "intasend", "flutterwave")
TOKEN = "e2e-callback-token-0001"
NOWHERE = f"http://127.0.0.1:9/callbacks/{TOKEN}"  # port 9 (discard): refused, so only recorded


def market(system: AutonomousSystem, provider: str) -> tuple[str, str]:
    caps = system.providers.get(provider).adapter.capabilities
    country = "KE" if "KE" in caps.countries else sorted(caps.countries)[0]
    currency = "KES" if "KES" in caps.currencies else sorted(caps.currencies)[0]
    return currency, country


def request(provider: str, name: str, currency: str, country: str, number: int) -> PaymentRequest:
    dial = DIAL_CODES[country]
    subscriber = f"7{number:08d}"
    return PaymentRequest(
        idempotency_key=f"cb-{provider}-{name}",
        operation=Operation.COLLECT,
        money=Money(amount_minor=15_000, currency=currency),
        phone=f"+{dial}{subscriber}",
        country=country,
        description="callback test",
    )


def doubled_amounts(value: Any) -> Any:
    """The same body with every amount it carries doubled (numbers and numeric strings)."""
    if isinstance(value, list):
        return [doubled_amounts(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        amount_key = key.lower() in ("amount", "value", "charged_amount") or (
            key == "Value" and value.get("Name") == "Amount"
        )
        if amount_key and isinstance(item, int | float) and not isinstance(item, bool):
            out[key] = item * 2
        elif amount_key and isinstance(item, str) and item.replace(".", "", 1).isdigit():
            out[key] = str(float(item) * 2).removesuffix(".0")
        else:
            out[key] = doubled_amounts(item)
    return out


def resigned(provider: str, raw: bytes, headers: dict[str, str]) -> dict[str, str]:
    """Headers for a changed body: Paystack signs the body, so a test that wants to get past the
    signature (a leaked key, a provider bug) signs it as Paystack would."""
    if provider != "paystack":
        return headers
    secret = PaystackSandboxConfig().secret_keys[0].encode()
    return {**headers, "x-paystack-signature": hmac.new(secret, raw, hashlib.sha512).hexdigest()}


class Poster:
    def __init__(self, client: httpx.AsyncClient, provider: str) -> None:
        self.client, self.provider = client, provider

    async def post(self, record: CallbackRecord, raw: bytes | None = None, **headers: str) -> httpx.Response:
        path = record.url.removeprefix("http://127.0.0.1:9")
        sent_headers = {**record.headers, **headers}
        response = await self.client.post(
            path, content=record.raw if raw is None else raw, headers=sent_headers
        )
        assert response.status_code != 500, response.text
        return response


def records_for(sandbox_records: list[CallbackRecord], *ids: str) -> list[CallbackRecord]:
    wanted = [i for i in ids if i]
    return [r for r in sandbox_records if any(i in r.url or i in r.raw.decode() for i in wanted)]


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_callbacks_never_change_a_payment_wrongly(
    provider: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    clock = ManualClock()
    settings = load_settings(state_dir=tmp_path / "state")
    with anyio.fail_after(60):
        async with embedded_sandbox(clock, callback_base=NOWHERE, realism=None) as sandbox:
            system = AutonomousSystem(settings, clock=clock)
            system.register_provider(sandbox.adapters[provider])
            app = Starlette(routes=callback_routes(system, f"/callbacks/{TOKEN}"))
            async with (
                system.running(),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine") as client,
            ):
                currency, country = market(system, provider)
                paid = request(provider, "paid", currency, country, 1)
                declined = request(provider, "declined", currency, country, 2)
                waiting = request(provider, "waiting", currency, country, 3)
                customers = sandbox.state.customers
                customers.set(CustomerBehavior(msisdn=paid.phone, action="accept", delay_s=1.0))
                customers.set(CustomerBehavior(msisdn=declined.phone, action="decline", delay_s=1.0))
                customers.set(CustomerBehavior(msisdn=waiting.phone, action="ignore"))
                for wanted in (paid, declined, waiting):
                    record = await system.submit_payment(wanted)
                    assert record.status is TransactionStatus.PENDING, (wanted.idempotency_key, record)
                await clock.advance(5)  # the customers answer; the sandbox records its callbacks

                adapter: Any = sandbox.adapters[provider]
                sent = sandbox.state.outbox.records(provider)

                async def ids(key: str) -> list[str]:
                    record = await system.payments.get_payment(key)
                    assert record is not None and record.reference is not None
                    learnt = await system.payments.identifiers(provider, record.reference)
                    return [record.reference, record.provider_reference or "", *learnt.values()]

                paid_cb = records_for(sent, *await ids(paid.idempotency_key))
                declined_cb = records_for(sent, *await ids(declined.idempotency_key))
                # Paystack has no webhook for a failed charge (there is no charge.failed event).
                assert paid_cb and (declined_cb or provider == "paystack"), [r.url for r in sent]
                poster = Poster(client, provider)

                # Genuine: confirmed by a pull, and the payment takes the pull's answer.
                genuine = await poster.post(paid_cb[0])
                assert genuine.status_code == 200 and genuine.json()["state"] == "confirmed", genuine.text
                assert (
                    await system.payments.get_payment(paid.idempotency_key)
                ).status is TransactionStatus.SUCCEEDED  # type: ignore[union-attr]
                if declined_cb:
                    assert (await poster.post(declined_cb[0])).json()["state"] == "confirmed"
                else:
                    await system.get_payment(declined.idempotency_key)  # learnt by a pull instead
                assert (
                    await system.payments.get_payment(declined.idempotency_key)
                ).status is TransactionStatus.FAILED  # type: ignore[union-attr]

                # Duplicated: kept as a duplicate, nothing changes.
                again = await poster.post(paid_cb[0])
                assert again.status_code == 200 and again.json()["state"] == "duplicate"

                # Mismatched amount: refused (a provider whose callback carries no amount cannot
                # be caught this way; the pull decides for it), or 401 where the body is signed.
                body = json.loads(paid_cb[0].raw)
                mismatched_raw = json.dumps(doubled_amounts(body)).encode()
                if doubled_amounts(body) != body:
                    if provider == "paystack":
                        assert (await poster.post(paid_cb[0], mismatched_raw)).status_code == 401
                    mismatched = await poster.post(
                        paid_cb[0], mismatched_raw, **resigned(provider, mismatched_raw, {})
                    )
                    assert mismatched.json()["state"] == "refused", mismatched.text

                # Forged: the paid customer's success callback rewritten for the payment whose
                # customer never answered. The pull says pending: the payment does not move.
                waiting_ids = await ids(waiting.idempotency_key)
                paid_ids = await ids(paid.idempotency_key)
                forged_text = paid_cb[0].raw.decode()
                forged_url = paid_cb[0].url
                for old, new in zip(paid_ids, waiting_ids, strict=False):
                    if old and new:
                        forged_text = forged_text.replace(old, new)
                        forged_url = forged_url.replace(old, new)
                forged_record = CallbackRecord(0, provider, forged_url, {}, 0.0, headers=paid_cb[0].headers)
                forged_raw = forged_text.encode()
                forged = await poster.post(forged_record, forged_raw, **resigned(provider, forged_raw, {}))
                assert forged.status_code == 200 and forged.json()["state"] in ("pending", "refused"), (
                    forged.text
                )
                waiting_now = await system.payments.get_payment(waiting.idempotency_key)
                assert waiting_now is not None and waiting_now.status is TransactionStatus.PENDING

                # Unknown payment: kept, unmatched.
                unknown_text = paid_cb[0].raw.decode()
                unknown_url = paid_cb[0].url
                for old in paid_ids:
                    if old:
                        # Another id of the same kind (a number stays a number in JSON).
                        new = f"9{old}" if old.isdigit() else (f"ZZ{old[2:]}" if len(old) > 4 else old)
                        unknown_text = unknown_text.replace(old, new)
                        unknown_url = unknown_url.replace(old, new)
                unknown_raw = unknown_text.encode()
                unknown_record = CallbackRecord(0, provider, unknown_url, {}, 0.0, headers=paid_cb[0].headers)
                unknown = await poster.post(
                    unknown_record, unknown_raw, **resigned(provider, unknown_raw, {})
                )
                assert unknown.status_code == 200 and unknown.json()["state"] == "unmatched", unknown.text

                # Malformed: 400, never 500.
                for bad in (b"{", b"[]", b"{}", b"\xff\xfe"):
                    response = await poster.post(paid_cb[0], bad, **resigned(provider, bad, {}))
                    assert response.status_code in (400, 401), (bad, response.text)

                # Nothing moved that should not have, and every decision is on record.
                final = {
                    key: (await system.payments.get_payment(key)).status  # type: ignore[union-attr]
                    for key in (paid.idempotency_key, declined.idempotency_key, waiting.idempotency_key)
                }
                assert final == {
                    paid.idempotency_key: TransactionStatus.SUCCEEDED,
                    declined.idempotency_key: TransactionStatus.FAILED,
                    waiting.idempotency_key: TransactionStatus.PENDING,
                }
                states = {c.state for c in await system.payments.list_callbacks(provider=provider, limit=100)}
                assert CallbackState.CONFIRMED in states and CallbackState.DUPLICATE in states
                assert adapter.name == provider
