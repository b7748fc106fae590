"""The Paystack emulator tells the truth: signed webhooks through the outbox, lagging lookups, the
list's paging, transfers held at `otp`, and charges abandoned but still completable. (Its answers
against Paystack's OpenAPI description: `test_paystack_openapi.py`.)"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import httpx
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.providers.base import Money, Operation, PaymentRequest, TransactionStatus
from mcp_autonomy.providers.paystack import PaystackAdapter, PaystackSettings
from mcp_autonomy.sandbox import (
    CredentialExpirySpec,
    CustomerBehavior,
    LedgerStatus,
    PaystackSandboxConfig,
    Sandbox,
    SandboxAddress,
    SandboxCredentials,
    sandbox_of,
    serve_sandbox,
)
from mcp_autonomy.sandbox.paystack import PaystackEmulator

pytestmark = pytest.mark.anyio

SECRET = PaystackSandboxConfig().secret_keys[0]
KE_PHONE = "+254700000051"
Served = Callable[..., AbstractAsyncContextManager[tuple[Starlette, SandboxAddress, httpx.AsyncClient]]]


@dataclass
class WebhookReceiver:
    """The merchant's webhook endpoint: records each POST's raw body and headers."""

    received: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.received.append((await request.body(), dict(request.headers)))
            self._arrived.set()
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/hooks/paystack", hook, methods=["POST"])])

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[tuple[bytes, dict[str, str]]]:
        """Wait (wall clock) until `count` webhooks arrived."""
        with anyio.fail_after(timeout_s):
            while len(self.received) < count:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.received


@dataclass
class Env:
    clock: ManualClock
    sandbox: Sandbox
    control: httpx.AsyncClient
    adapter: PaystackAdapter
    receiver: WebhookReceiver
    hook_url: str


@asynccontextmanager
async def _env(served: Served, clock: ManualClock) -> AsyncIterator[Env]:
    receiver = WebhookReceiver()
    async with served(seed=3) as (app, address, control), anyio.create_task_group() as tg:
        hooks: SandboxAddress = await tg.start(partial(serve_sandbox, receiver.app(), gated=False))
        settings = PaystackSettings(
            secret_key=SecretStr(SECRET),
            base_url=address.url("paystack"),
            customer_email_domain="customers.example.com",
        )
        adapter = PaystackAdapter(settings, clock, timeout_s=2.0)
        try:
            yield Env(clock, sandbox_of(app), control, adapter, receiver, f"{hooks.base_url}/hooks/paystack")
        finally:
            await adapter.close()
            tg.cancel_scope.cancel()


@pytest.fixture
def env(served: Served, clock: ManualClock) -> Callable[[], AbstractAsyncContextManager[Env]]:
    return partial(_env, served, clock)


def payment(key: str, amount_minor: int = 15_000, operation: Operation = Operation.COLLECT) -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key,
        operation=operation,
        money=Money(amount_minor=amount_minor, currency="KES"),
        phone=KE_PHONE,
        country="KE",
    )


def signature(raw: bytes, key: str = SECRET) -> str:
    return hmac.new(key.encode(), raw, hashlib.sha512).hexdigest()


async def set_webhook(env: Env) -> None:
    answer = await env.control.put("/_control/webhooks", json={"provider": "paystack", "url": env.hook_url})
    assert answer.status_code == 200, answer.text


async def test_webhooks_are_signed_and_sent_to_the_dashboard_url(
    env: Callable[[], AbstractAsyncContextManager[Env]],
) -> None:
    async with env() as e:
        await set_webhook(e)
        await e.control.put("/_control/realism", json={"provider": "paystack", "callback_loss": 0.0})
        charge = await e.adapter.collect(payment("ps-hook-charge"))
        payout = await e.adapter.payout(payment("ps-hook-payout", 4_000, Operation.PAYOUT))
        await e.clock.advance(5)
        hooks = await e.receiver.wait_for(2)
        paid = await e.adapter.status(charge.reference)
        refund = await e.adapter.refund(paid, Money(amount_minor=5_000, currency="KES"))
        await e.clock.advance(5)
        hooks = await e.receiver.wait_for(4)

        hints = []
        for raw, headers in hooks:
            assert headers["content-type"] == "application/json"
            assert hmac.compare_digest(headers["x-paystack-signature"], signature(raw))
            hints.append(e.adapter.parse_callback(raw, headers, path_kind="webhook", path_reference="-"))
        events = [json.loads(raw)["event"] for raw, _ in hooks]
        assert sorted(events[:2]) == ["charge.success", "transfer.success"]
        assert events[2:] == ["refund.pending", "refund.processed"]
        by_event = dict(zip(events, hints, strict=True))
        got = by_event["charge.success"]
        assert got is not None and got.authenticated
        assert (got.reference, got.status, got.money, got.payer, got.provider_reference) == (
            charge.reference,
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=15_000, currency="KES"),
            KE_PHONE,
            paid.provider_reference,
        )
        sent = by_event["transfer.success"]
        assert sent is not None
        assert (sent.reference, sent.operation, sent.money, sent.payer) == (
            payout.reference,
            Operation.PAYOUT,
            Money(amount_minor=4_000, currency="KES"),
            KE_PHONE,
        )
        refunded = by_event["refund.processed"]
        assert refunded is not None
        assert (refunded.reference, refunded.operation, refunded.status, refunded.money) == (
            charge.reference,
            Operation.REFUND,
            TransactionStatus.SUCCEEDED,
            Money(amount_minor=5_000, currency="KES"),
        )
        assert refund.provider_reference is not None
        records = e.sandbox.outbox.records("paystack")
        assert [r.delivered for r in records] == [True] * 4 and {r.url for r in records} == {e.hook_url}


async def test_a_declined_charge_sends_no_webhook_and_no_url_means_none(
    env: Callable[[], AbstractAsyncContextManager[Env]],
) -> None:
    async with env() as e:
        await e.adapter.collect(payment("ps-hook-nourl"))
        await e.clock.advance(5)
        assert e.sandbox.outbox.records("paystack") == []  # no dashboard URL: nothing to send to
        await set_webhook(e)
        await e.control.post(
            "/_control/customers", json={"msisdn": "+254700000052", "action": "decline", "delay_s": 1}
        )
        declined = payment("ps-hook-declined").model_copy(update={"phone": "+254700000052"})
        await e.adapter.collect(declined)
        await e.clock.advance(2)
        assert e.sandbox.outbox.records("paystack") == []  # Paystack has no charge.failed event


async def test_callback_loss_sends_none(env: Callable[[], AbstractAsyncContextManager[Env]]) -> None:
    async with env() as e:
        await set_webhook(e)
        realism = await e.control.put(
            "/_control/realism", json={"provider": "paystack", "callback_loss": 1.0}
        )
        assert realism.status_code == 200
        await e.adapter.collect(payment("ps-hook-lost"))
        await e.adapter.payout(payment("ps-hook-lost-payout", 1_000, Operation.PAYOUT))
        await e.clock.advance(5)
        records = e.sandbox.outbox.records("paystack")
        assert len(records) == 2 and all(r.lost and r.delivered is False for r in records)
        assert e.receiver.received == []
        # The ledger, not the webhooks, is the truth of what moved.
        assert len(e.sandbox.ledger.successful_charges_for(KE_PHONE)) == 1


async def test_a_rotated_key_signs_webhooks_once_its_rotation_starts(
    env: Callable[[], AbstractAsyncContextManager[Env]],
) -> None:
    rotated = "sk_test_rotated_2222222222222222222222"
    async with env() as e:
        await set_webhook(e)
        e.sandbox.faults.add("paystack", CredentialExpirySpec(replacement_secret=rotated))
        e.adapter._settings = e.adapter._settings.model_copy(update={"secret_key": SecretStr(rotated)})
        await e.adapter.collect(payment("ps-hook-rotated"))
        await e.clock.advance(5)
        [(raw, headers)] = await e.receiver.wait_for(1)
        assert headers["x-paystack-signature"] == signature(raw, rotated)


async def test_lookups_lag_acceptance_like_an_unknown_reference(
    env: Callable[[], AbstractAsyncContextManager[Env]],
) -> None:
    async with env() as e:
        lag = await e.control.put("/_control/realism", json={"provider": "paystack", "lookup_lag_s": 3})
        assert lag.status_code == 200
        charge = await e.adapter.collect(payment("ps-lag-shape"))
        auth = {"Authorization": f"Bearer {SECRET}"}
        async with httpx.AsyncClient(base_url=e.adapter._settings.base_url, headers=auth) as client:
            lagging = await client.get(f"/transaction/verify/{charge.reference}")
            unknown = await client.get("/transaction/verify/ps-never-sent")
            assert (lagging.status_code, lagging.json()) == (unknown.status_code, unknown.json())
            assert (
                lagging.status_code == 404 and lagging.json()["message"] == "Transaction reference not found"
            )
            listed = await client.get("/transaction", params={"perPage": 10})
            assert listed.json()["data"] == [] and listed.json()["meta"]["total"] == 0
            await e.clock.advance(3)
            visible = await client.get(f"/transaction/verify/{charge.reference}")
            assert visible.status_code == 200 and visible.json()["data"]["reference"] == charge.reference
            assert (await client.get("/transaction")).json()["meta"]["total"] == 1


async def test_the_list_filters_by_time_and_pages(
    env: Callable[[], AbstractAsyncContextManager[Env]],
) -> None:
    async with env() as e:
        first = await e.adapter.collect(payment("ps-list-a"))
        await e.clock.advance(86_400)  # the next day
        second = await e.adapter.collect(payment("ps-list-b"))
        auth = {"Authorization": f"Bearer {SECRET}"}
        async with httpx.AsyncClient(base_url=e.adapter._settings.base_url, headers=auth) as client:
            day_one = e.clock.now() - 86_400
            only_first = await client.get(
                "/transaction",
                params={"from": f"{_day(day_one)}", "to": f"{_day(day_one)}"},  # a date: the whole day
            )
            assert [r["reference"] for r in only_first.json()["data"]] == [first.reference]
            both = await client.get("/transaction", params={"perPage": 1, "page": 2})
            assert [r["reference"] for r in both.json()["data"]] == [first.reference]  # newest first
            meta = both.json()["meta"]
            assert (meta["total"], meta["skipped"], meta["perPage"], meta["page"], meta["pageCount"]) == (
                2,
                1,
                1,
                2,
                2,
            )
            assert meta["total_volume"] == 30_000
            newest = await client.get("/transaction", params={"perPage": 1})
            assert newest.json()["data"][0]["reference"] == second.reference
            bad = await client.get("/transaction", params={"from": "yesterday"})
            assert bad.status_code == 400 and bad.json()["status"] is False


def _day(epoch_s: float) -> str:
    from mcp_autonomy.clock import to_datetime

    return to_datetime(epoch_s).date().isoformat()


# --- transfers held at `otp` -------------------------------------------------------------------------


async def _recipient(client: httpx.AsyncClient, account: str = "0700000071") -> str:
    created = await client.post(
        "/transferrecipient",
        json={
            "type": "mobile_money",
            "name": "Payee",
            "account_number": account,
            "bank_code": "MPESA",
            "currency": "KES",
        },
    )
    assert created.status_code == 201, created.text
    code: str = created.json()["data"]["recipient_code"]
    return code


def _transfer(recipient: str, reference: str, amount: int = 4_000) -> dict[str, Any]:
    return {
        "source": "balance",
        "amount": amount,
        "currency": "KES",
        "recipient": recipient,
        "reference": reference,
        "reason": "payout",
    }


async def _kes_balance(client: httpx.AsyncClient) -> int:
    rows = (await client.get("/balance")).json()["data"]
    return int(next(row["balance"] for row in rows if row["currency"] == "KES"))


async def test_a_transfer_waits_at_otp_until_the_merchant_finalizes_it(
    env: Callable[[], AbstractAsyncContextManager[Env]],
) -> None:
    async with env() as e:
        await set_webhook(e)
        emulator = e.sandbox.emulators["paystack"]
        assert isinstance(emulator, PaystackEmulator)
        emulator.transfer_otp_required = True
        auth = {"Authorization": f"Bearer {SECRET}"}
        async with httpx.AsyncClient(base_url=e.adapter._settings.base_url, headers=auth) as client:
            before = await _kes_balance(client)
            held = await client.post(
                "/transfer", json=_transfer(await _recipient(client), "ps-otp-transfer-0001")
            )
            body = held.json()
            assert (held.status_code, body["message"], body["data"]["status"]) == (
                200,
                "Transfer requires OTP to continue",
                "otp",
            )
            code = body["data"]["transfer_code"]
            await e.clock.advance(3600)  # nobody finalizes: it waits, paying nothing
            verify = await client.get("/transfer/verify/ps-otp-transfer-0001")
            assert verify.json()["data"]["status"] == "otp"
            [entry] = e.sandbox.ledger.entries(reference="ps-otp-transfer-0001")
            assert entry.status is LedgerStatus.PENDING and not entry.moved_money
            assert await _kes_balance(client) == before and e.sandbox.outbox.records("paystack") == []

            wrong = await client.post(
                "/transfer/finalize_transfer", json={"transfer_code": code, "otp": "000000"}
            )
            assert (wrong.status_code, wrong.json()["status"], wrong.json()["message"]) == (
                400,
                False,
                "Invalid OTP",
            )
            stranger = await client.post(
                "/transfer/finalize_transfer", json={"transfer_code": "TRF_nobody", "otp": "123456"}
            )
            assert stranger.json()["message"] == "Transfer ID/code specified is invalid."
            assert (await client.get("/transfer/verify/ps-otp-transfer-0001")).json()["data"][
                "status"
            ] == "otp"

            final = await client.post(
                "/transfer/finalize_transfer",
                json={"transfer_code": code, "otp": PaystackSandboxConfig().transfer_otp},
            )
            assert (final.status_code, final.json()["message"], final.json()["data"]["status"]) == (
                200,
                "Transfer has been queued",
                "pending",
            )
            again = await client.post(
                "/transfer/finalize_transfer", json={"transfer_code": code, "otp": "123456"}
            )
            assert again.status_code == 400  # not awaiting an OTP any more: one payment, not two
            await e.clock.advance(PaystackSandboxConfig().transfer_delay_s)
            assert (await client.get("/transfer/verify/ps-otp-transfer-0001")).json()["data"][
                "status"
            ] == "success"
            settled = e.sandbox.ledger.entries(reference="ps-otp-transfer-0001")
            assert [x.status for x in settled] == [LedgerStatus.SUCCEEDED]
            assert await _kes_balance(client) == before - 4_000
        [(raw, headers)] = await e.receiver.wait_for(1)
        assert json.loads(raw)["event"] == "transfer.success"
        assert headers["x-paystack-signature"] == signature(raw)


async def test_the_transfer_otp_setting_follows_paystacks_own_endpoints(
    served: Served, clock: ManualClock
) -> None:
    config = PaystackSandboxConfig(transfer_otp_required=True)
    async with (
        served(credentials=SandboxCredentials(paystack=config)) as (_, address, _),
        httpx.AsyncClient(
            base_url=address.url("paystack"), headers={"Authorization": f"Bearer {SECRET}"}
        ) as client,
    ):
        recipient = await _recipient(client)

        async def status_of(reference: str) -> str:
            answer = await client.post("/transfer", json=_transfer(recipient, reference))
            status: str = answer.json()["data"]["status"]
            return status

        assert await status_of("ps-otp-setting-0001") == "otp"
        sent = await client.post("/transfer/disable_otp")
        assert sent.json() == {
            "status": True,
            "message": "OTP has been sent to mobile number ending with 0000",
        }
        wrong = await client.post("/transfer/disable_otp_finalize", json={"otp": "000000"})
        assert wrong.status_code == 400
        assert await status_of("ps-otp-setting-0002") == "otp"  # still required
        done = await client.post("/transfer/disable_otp_finalize", json={"otp": config.transfer_otp})
        assert done.json() == {"status": True, "message": "OTP requirement for transfers has been disabled"}
        assert await status_of("ps-otp-setting-0003") == "pending"
        enabled = await client.post("/transfer/enable_otp")
        assert enabled.json()["message"] == "OTP requirement for transfers has been enabled"
        assert await status_of("ps-otp-setting-0004") == "otp"


# --- abandoned is not final inside its window ----------------------------------------------------------


async def test_an_abandoned_charge_can_still_be_completed_inside_its_window(
    env: Callable[[], AbstractAsyncContextManager[Env]],
) -> None:
    config = PaystackSandboxConfig()
    late, never, too_late = "+254700000081", "+254700000082", "+254700000083"
    async with env() as e:
        await set_webhook(e)
        e.sandbox.customers.set(CustomerBehavior(msisdn=late, action="accept", delay_s=900))
        e.sandbox.customers.set(CustomerBehavior(msisdn=never, action="ignore"))
        e.sandbox.customers.set(
            CustomerBehavior(msisdn=too_late, action="accept", delay_s=config.abandoned_final_after_s + 60)
        )
        auth = {"Authorization": f"Bearer {SECRET}"}
        async with httpx.AsyncClient(base_url=e.adapter._settings.base_url, headers=auth) as client:
            for reference, msisdn in (("ps-late", late), ("ps-never", never), ("ps-too-late", too_late)):
                charged = await client.post(
                    "/charge",
                    json={
                        "email": "payer@example.com",
                        "amount": 2_000,
                        "currency": "KES",
                        "reference": reference,
                        "mobile_money": {"phone": msisdn, "provider": "mpesa"},
                    },
                )
                assert charged.json()["data"]["status"] == "pay_offline"

            async def shown() -> dict[str, str]:
                return {
                    ref: (await client.get(f"/transaction/verify/{ref}")).json()["data"]["status"]
                    for ref in ("ps-late", "ps-never", "ps-too-late")
                }

            await e.clock.advance(config.abandon_after_s)
            assert await shown() == {
                "ps-late": "abandoned",
                "ps-never": "abandoned",
                "ps-too-late": "abandoned",
            }
            assert {x.status for x in e.sandbox.ledger.entries(provider="paystack")} == {LedgerStatus.PENDING}
            await e.clock.advance(900 - config.abandon_after_s)  # the late customer approves
            assert (await shown())["ps-late"] == "success"
            [(raw, _)] = await e.receiver.wait_for(1)
            assert json.loads(raw)["event"] == "charge.success"
            await e.clock.advance(config.abandoned_final_after_s)  # past the window: over
            assert await shown() == {
                "ps-late": "success",
                "ps-never": "abandoned",
                "ps-too-late": "abandoned",
            }
            outcomes = {x.reference: x.status for x in e.sandbox.ledger.entries(provider="paystack")}
            assert outcomes == {
                "ps-late": LedgerStatus.SUCCEEDED,
                "ps-never": LedgerStatus.FAILED,
                "ps-too-late": LedgerStatus.FAILED,
            }
