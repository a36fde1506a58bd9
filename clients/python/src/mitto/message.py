"""What a subscriber or a requester receives: ``Msg``; and what a service handler may return
besides bytes: ``Response``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

from .codec import JSON, Codec, codec_for
from .proto import Flag, Headers

if TYPE_CHECKING:
    from .subscription import Subscription

Payload = Union[bytes, bytearray, memoryview, str]


def to_bytes(p: Payload | None) -> bytes:
    if p is None:
        return b""
    if isinstance(p, bytes):
        return p
    if isinstance(p, str):
        return p.encode()
    return bytes(p)


class Msg:
    """One message: a delivery on a subscription, or the answer to a request.

    ``data`` (alias ``payload``) is the payload; ``headers`` the headers; ``kind`` the message
    kind. A delivery of an at-least-once subscription must be acknowledged with ``ack()`` (or
    ``nack()``); a request received on a subscription is answered with ``respond()``."""

    __slots__ = ("_headers", "_sub", "data", "delivery_id", "flags", "kind", "sid", "status", "subject")

    def __init__(
        self,
        subject: str,
        data: bytes,
        headers: Headers | None = None,
        kind: int = 0,
        flags: int = 0,
        sid: int = 0,
        delivery_id: int = 0,
        sub: Subscription | None = None,
        status: int = 0,
    ) -> None:
        self.subject = subject
        self.data = data
        self._headers = headers
        self.kind = kind
        self.flags = flags
        self.sid = sid
        self.delivery_id = delivery_id
        self._sub = sub
        self.status = status

    def __repr__(self) -> str:
        return f"Msg(subject={self.subject!r}, data={self.data[:64]!r}{'...' if len(self.data) > 64 else ''})"

    @property
    def payload(self) -> bytes:
        return self.data

    @property
    def headers(self) -> Headers:
        if self._headers is None:
            self._headers = Headers()
        return self._headers

    @property
    def reply_to(self) -> str | None:
        """Where an answer goes (the ``reply-to`` header)."""
        return self._headers.get_str("reply-to") if self._headers else None

    @property
    def delivery_count(self) -> int:
        """Which delivery of the message this is (the ``delivery-count`` header a 1.1 broker
        puts on redeliveries; 1 without it)."""
        n = self._headers.get_u32("delivery-count") if self._headers else None
        return n or 1

    @property
    def urgent(self) -> bool:
        return bool(self.flags & Flag.URGENT)

    @property
    def needs_ack(self) -> bool:
        """Whether the broker waits for ``ack()`` / ``nack()`` (at-least-once)."""
        return bool(self.flags & Flag.ACK_REQUIRED)

    def decode(self, codec: Codec | None = None) -> Any:
        """The payload decoded with the codec its ``content-type`` names (else `codec`, else
        JSON)."""
        ct = self._headers.get_str("content-type") if self._headers else None
        return codec_for(ct, codec or JSON).decode(self.data)

    def json(self) -> Any:
        """The payload as JSON."""
        return JSON.decode(self.data)

    async def ack(self) -> None:
        """Acknowledges a delivery of an at-least-once subscription (nothing otherwise)."""
        if self._sub is not None and self.needs_ack:
            self._sub._ack(self)

    async def nack(self, delay: float | None = None) -> None:
        """Asks for redelivery, no sooner than `delay` seconds from now if given."""
        if self._sub is not None and self.needs_ack:
            self._sub._nack(self, delay)

    async def respond(self, data: Payload = b"", *, headers: Headers | dict[str, Any] | None = None) -> None:
        """Answers a request received on a subscription: publishes to its ``reply-to``, with
        its ``correlation-id``."""
        if self._sub is None:
            raise ValueError("only a message received on a subscription can be answered")
        await self._sub._respond(self, data, headers)


class Response:
    """A service handler's answer with headers (a handler may also return bytes or ``str``)."""

    __slots__ = ("data", "headers")

    def __init__(self, data: Payload = b"", headers: Headers | dict[str, Any] | None = None) -> None:
        self.data = to_bytes(data)
        self.headers = (
            Headers(headers) if headers is not None and not isinstance(headers, Headers) else headers
        )
