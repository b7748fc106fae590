"""Reading an ASGI request body up to a limit, so a middleware can inspect it and replay it."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Message, Receive

__all__ = ["BufferedBody", "read_body"]


@dataclass(slots=True)
class BufferedBody:
    """The messages received so far (to replay to the app, in order) and what they add up to."""

    messages: list[Message]
    size: int
    complete: bool  # the whole body arrived within the limit

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages)


async def read_body(receive: Receive, limit_bytes: int) -> BufferedBody:
    """Receive body messages until the body ends or passes `limit_bytes` (or the client leaves)."""
    messages: list[Message] = []
    size = 0
    while size <= limit_bytes:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return BufferedBody(messages, size, size <= limit_bytes)
    return BufferedBody(messages, size, False)
