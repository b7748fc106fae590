"""Phone numbers masked everywhere but the one-payment view: the masking itself, payment records,
callbacks, events and log lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from mcp_autonomy.clock import ManualClock
from mcp_autonomy.events import EventBus, EventType
from mcp_autonomy.payments import (
    REVEAL_PAYER,
    AttemptOutcome,
    InboxCallback,
    PaymentAttempt,
    PaymentRecord,
    RevealedPaymentRecord,
)
from mcp_autonomy.pii import (
    MAX_LOG_MESSAGE_CHARS,
    PhoneMaskingFilter,
    install_log_masking,
    mask_phone,
    mask_text,
)
from mcp_autonomy.providers.base import CallbackHint, Money, Operation, TransactionStatus

PAYER = "+254712340002"
MASKED = "+2547****0002"


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        (PAYER, MASKED),
        ("254712340002", "2547****0002"),  # as providers write it
        ("+255712345678", "+2557****5678"),
        ("+201012345678", "+201*****5678"),  # a two-digit country code
        ("+14155550123", "+14*****0123"),  # a one-digit country code
        ("+2547123456", "+25****3456"),  # too short for the whole head: less of it shown
        ("+25471234", "+********"),  # short: masked whole, length kept
        ("+1234", "+****"),
        ("0712 345", "********"),  # not phone-shaped: masked whole
        ("", ""),
    ],
)
def test_mask_phone(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked
    assert len(mask_phone(phone)) == len(phone)


def test_mask_text_masks_phone_numbers_and_leaves_ids_times_and_amounts() -> None:
    text = (
        "payer +254712340002 / 254712340003, key order-254712340004, timestamp 20240101123456, "
        "epoch 1796607938.9, amount 15000 KES, ref ws_CO_191220191020363925"
    )
    assert mask_text(text) == (
        "payer +2547****0002 / 2547****0003, key order-254712340004, timestamp 20240101123456, "
        "epoch 1796607938.9, amount 15000 KES, ref ws_CO_191220191020363925"
    )
    plain = "nothing to mask"
    assert mask_text(plain) is plain


def _record() -> PaymentRecord:
    return PaymentRecord(
        idempotency_key="order-0001",
        operation=Operation.COLLECT,
        money=Money(amount_minor=15000, currency="KES"),
        phone=PAYER,
        country="KE",
        description="for 254712340002",
        status=TransactionStatus.FAILED,
        provider="mpesa",
        provider_message="ReceiverPartyPublicName 254712340002 - JOHN",
        status_reason=f"payer {PAYER} refused",
        attempts=[
            PaymentAttempt(
                provider="mpesa",
                started_at=1.0,
                latency_ms=2.0,
                outcome=AttemptOutcome.CUSTOMER,
                detail=f"{PAYER} cancelled",
            )
        ],
        created_at=1.0,
        updated_at=2.0,
        metadata={"notify": [PAYER]},
    )


def test_a_payment_record_serialises_masked_and_keeps_the_real_phone() -> None:
    record = _record()
    text = record.model_dump_json()
    assert "712340002" not in text, text
    dumped = record.model_dump()
    assert dumped["phone"] == MASKED
    assert dumped["attempts"][0]["detail"] == f"{MASKED} cancelled"
    assert dumped["metadata"] == {"notify": [MASKED]}
    assert record.phone == PAYER  # the attribute, as the stores write it
    assert record.metadata == {"notify": [PAYER]}


def test_only_the_revealed_view_shows_the_payer() -> None:
    record = _record()
    assert record.model_dump(context={REVEAL_PAYER: True})["phone"] == PAYER
    revealed = record.revealed()
    assert isinstance(revealed, RevealedPaymentRecord)
    assert json.loads(revealed.model_dump_json())["phone"] == PAYER
    # Its free text stays masked: only the payer field is the one-payment view's.
    assert "712340002" not in json.loads(revealed.model_dump_json())["provider_message"]
    # Serialised as the declared type (how the MCP SDK validates a tool's result), it still shows it.
    from pydantic import TypeAdapter

    validated = TypeAdapter(PaymentRecord).validate_python(revealed)
    assert validated.model_dump(mode="json")["phone"] == PAYER
    assert record.masked().phone == MASKED


def test_masking_leaves_the_json_schemas_as_they_were() -> None:
    schema = PaymentRecord.model_json_schema(mode="serialization")
    assert schema["properties"]["phone"] == {"title": "Phone", "type": "string"}
    assert schema["properties"]["description"]["default"] == ""
    assert schema["properties"]["metadata"]["type"] == "object"
    assert InboxCallback.model_json_schema(mode="serialization")["properties"]["hint"] == {
        "$ref": "#/$defs/CallbackHint"
    }


def test_a_callback_serialises_its_payer_masked() -> None:
    callback = InboxCallback(
        provider="mpesa",
        path_kind="stk",
        received_at=1.0,
        hint=CallbackHint(provider="mpesa", status=TransactionStatus.SUCCEEDED, payer=PAYER),
        body_sha256="0" * 64,
        body="{}",
        detail="the callback names another payer than +254712340009",
    )
    dumped = json.loads(callback.model_dump_json())
    assert dumped["hint"]["payer"] == MASKED
    assert dumped["detail"] == "the callback names another payer than +2547****0009"
    assert callback.hint.payer == PAYER


def test_events_are_masked_when_emitted() -> None:
    bus = EventBus(ManualClock())
    event = bus.emit(
        EventType.PAYMENT_RESOLVED,
        component="operator",
        message=f"payment order-0001 of {PAYER} resolved",
        data={"payer": PAYER, "nested": {"list": [f"to {PAYER}"]}, "count": 3},
    )
    assert event.message == f"payment order-0001 of {MASKED} resolved"
    assert event.data == {"payer": MASKED, "nested": {"list": [f"to {MASKED}"]}, "count": 3}
    assert PAYER not in event.model_dump_json()


@pytest.fixture
def masked_logs(caplog: pytest.LogCaptureFixture) -> Iterator[PhoneMaskingFilter]:
    caplog.set_level(logging.INFO)
    installed = install_log_masking()
    assert installed in caplog.handler.filters
    yield installed
    for handler in logging.getLogger().handlers:
        handler.removeFilter(installed)


def test_log_lines_are_masked_and_bounded(
    caplog: pytest.LogCaptureFixture, masked_logs: PhoneMaskingFilter
) -> None:
    log = logging.getLogger("mcp_autonomy.test_pii")
    log.info("payment for %s refused", PAYER)
    log.info("provider said: ReceiverPartyPublicName 254712340002 - JOHN")
    log.warning("huge: %s", "x" * (2 * MAX_LOG_MESSAGE_CHARS))
    try:
        raise ValueError(f"bad payer {PAYER}")
    except ValueError:
        log.exception("failed")
    text = caplog.text
    assert "712340002" not in text, text
    assert f"payment for {MASKED} refused" in text
    assert "ReceiverPartyPublicName 2547****0002 - JOHN" in text
    assert f"bad payer {MASKED}" in text
    huge = caplog.records[2].getMessage()
    assert len(huge) < MAX_LOG_MESSAGE_CHARS + 100 and huge.endswith("more characters cut)")


def test_install_is_idempotent(masked_logs: PhoneMaskingFilter, caplog: pytest.LogCaptureFixture) -> None:
    install_log_masking()
    assert sum(isinstance(f, PhoneMaskingFilter) for f in caplog.handler.filters) == 1


def test_the_filter_refuses_a_tiny_limit() -> None:
    with pytest.raises(ValueError, match="max_message_chars must be >= 100, got 10"):
        PhoneMaskingFilter(max_message_chars=10)


def test_the_servers_logging_masks_phone_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    """`configure_logging` (what `serve` uses) puts the filter on its stderr handler."""
    import logging

    from mcp_autonomy.cli import configure_logging

    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure_logging("INFO")
        logging.getLogger("mcp_autonomy.test").info("payer +254712340002 refused")
        err = capsys.readouterr().err
        assert "+2547****0002" in err and "+254712340002" not in err
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
