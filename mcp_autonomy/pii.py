"""Personal data kept out of places it does not belong: phone numbers masked for display.

A payer's phone number is shown in full by one view only (a single payment asked for by its key:
`get_payment`, `GET /autonomous/payments/{key}`); everywhere else (lists, errors, events, logs,
the dashboard) it reads `+2547****0002`: the country code and the first digit of the subscriber
number say which network, the last four let an operator tell two payers apart.

`mask_phone` masks one number, `mask_text` every phone-like number inside free text (provider
messages, exception texts, log lines), `PhoneMaskingFilter` does it to log records.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from mcp_autonomy.providers.base import DIAL_CODES

__all__ = [
    "MAX_LOG_MESSAGE_CHARS",
    "PhoneMaskingFilter",
    "install_log_masking",
    "mask_data",
    "mask_phone",
    "mask_text",
]

MASK_CHAR = "*"
VISIBLE_TAIL_DIGITS = 4
"""Last digits left visible: enough to tell two payers apart, too few to call anyone."""
MIN_HIDDEN_DIGITS = 4
"""Never fewer digits hidden than this: shorter numbers show less (all of them when short)."""
MAX_LOG_MESSAGE_CHARS = 8192
"""A log message longer than this is cut (a 1 MB value echoed into a log line helps nobody)."""

_KNOWN_CODES = tuple(sorted(set(DIAL_CODES.values()), key=len, reverse=True))
# One-digit country codes (NANP, Russia/Kazakhstan); any other code not in DIAL_CODES is taken
# as three digits, which hides at least as much as the true code would.
_ONE_DIGIT_CODES = ("1", "7")
_THREE_DIGIT_CODES = "|".join(code for code in _KNOWN_CODES if len(code) == 3)
_PHONE_RE = re.compile(
    # E.164 with its plus, not inside a longer run of digits.
    r"(?<![\d+])\+[1-9]\d{7,14}(?!\d)"
    # Or the same without the plus as providers write it (`254712345678`): only a served
    # market's three-digit code plus nine digits, standing alone, so timestamps, amounts and
    # idempotency keys such as `order-2547...` are left as they are.
    rf"|(?<![\w\-.:/+])(?:{_THREE_DIGIT_CODES})\d{{9}}(?![\w\-])"
)


def _country_code_length(digits: str) -> int:
    for code in _KNOWN_CODES:
        if digits.startswith(code):
            return len(code)
    return 1 if digits.startswith(_ONE_DIGIT_CODES) else 3


def mask_phone(phone: str) -> str:
    """`+254712340002` -> `+2547****0002`: country code, the next digit and the last four kept.

    The result has the same length as the input. A number too short to hide `MIN_HIDDEN_DIGITS`
    and show `VISIBLE_TAIL_DIGITS` is masked whole (its plus kept); one too short for the whole
    head shows less of it. Anything that is not a phone-shaped string (letters, spaces) is masked
    whole, length kept.

    >>> mask_phone("+254712340002")
    '+2547****0002'
    >>> mask_phone("254712340002")
    '2547****0002'
    >>> mask_phone("+1234")
    '+****'
    """
    plus = "+" if phone.startswith("+") else ""
    digits = phone[len(plus) :]
    if not digits.isdigit() or not digits.isascii():
        return MASK_CHAR * len(phone)
    if len(digits) <= MIN_HIDDEN_DIGITS + VISIBLE_TAIL_DIGITS:
        return plus + MASK_CHAR * len(digits)
    tail = VISIBLE_TAIL_DIGITS
    head = min(_country_code_length(digits) + 1, len(digits) - MIN_HIDDEN_DIGITS - tail)
    hidden = len(digits) - head - tail
    return plus + digits[:head] + MASK_CHAR * hidden + digits[len(digits) - tail :]


def _mask_match(match: re.Match[str]) -> str:
    return mask_phone(match.group(0))


def mask_text(text: str) -> str:
    """`text` with every phone-like number in it masked by `mask_phone`.

    >>> mask_text("payer +254712340002 refused")
    'payer +2547****0002 refused'
    """
    if _PHONE_RE.search(text) is None:  # the common case: no copy
        return text
    return _PHONE_RE.sub(_mask_match, text)


def mask_data(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with phone-like numbers in its strings masked;
    returns `value` itself when nothing needed masking."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        masked = {key: mask_data(item) for key, item in value.items()}
        return value if all(masked[key] is value[key] for key in value) else masked
    if isinstance(value, list | tuple):
        items = [mask_data(item) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list) else tuple(items)
    return value


class PhoneMaskingFilter(logging.Filter):
    """Masks phone-like numbers in a log record's message and exception text, and cuts a
    message longer than `MAX_LOG_MESSAGE_CHARS`. Never drops a record.

    Put it on handlers (`install_log_masking`), not loggers: a logger's filters do not see the
    records its children propagate to it, a handler's do.
    """

    def __init__(self, max_message_chars: int = MAX_LOG_MESSAGE_CHARS) -> None:
        if max_message_chars < 100:
            raise ValueError(f"max_message_chars must be >= 100, got {max_message_chars}")
        super().__init__()
        self.max_message_chars = max_message_chars

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as usual
            return True
        masked = mask_text(message)
        if len(masked) > self.max_message_chars:
            cut = len(masked) - self.max_message_chars
            masked = f"{masked[: self.max_message_chars]}... ({cut} more characters cut)"
        if masked is not message:
            record.msg = masked
            record.args = None
        if record.exc_info and not record.exc_text:
            # Exception texts carry provider answers and argument values: format it here, masked;
            # formatters reuse `exc_text` when it is set.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        return True


def install_log_masking(logger: logging.Logger | None = None) -> PhoneMaskingFilter:
    """Add one `PhoneMaskingFilter` to every handler of `logger` (the root logger by default)
    that has none yet; returns the filter. Call it once logging is configured."""
    target = logger if logger is not None else logging.getLogger()
    installed = PhoneMaskingFilter()
    for handler in target.handlers:
        if not any(isinstance(f, PhoneMaskingFilter) for f in handler.filters):
            handler.addFilter(installed)
    return installed
