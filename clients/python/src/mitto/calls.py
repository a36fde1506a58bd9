"""Outgoing streaming calls (PROTOCOL.md section 10.3): server streaming, client streaming and
bidirectional, with 64 items of initial credit each way, CREDIT grants every 32 items taken,
a deadline and CANCEL."""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any

from .errors import (
    CallCancelledError,
    MittoError,
    ProtocolError,
    TimeoutError,
    UnavailableError,
    remote_error,
)
from .message import Msg, Payload, to_bytes
from .proto import INITIAL_STREAM_CREDIT, Flag, Frame, FrameType, encode_u32
from .proto.status import Status

if TYPE_CHECKING:
    from .client import Client

#: Items taken between two CREDIT grants.
CREDIT_BATCH = INITIAL_STREAM_CREDIT // 2


class StreamCall:
    """A streaming call in flight. Iterate it for the callee's stream items (``bytes``);
    ``send()`` / ``finish()`` stream the request (client streaming and bidirectional calls);
    ``response()`` waits for the RESPONSE that ends the call. Leaving ``async with`` or calling
    ``cancel()`` before the end sends CANCEL."""

    def __init__(self, client: Client, call_id: int, subject: str, sends: bool) -> None:
        self._client = client
        self.id = call_id
        self.subject = subject
        self._sends = sends
        loop = asyncio.get_running_loop()
        self._result: asyncio.Future[Frame] = loop.create_future()
        self._result.add_done_callback(_consume)
        self._items: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._received = 0
        self._granted = INITIAL_STREAM_CREDIT
        self._consumed = 0
        self._send_credit = INITIAL_STREAM_CREDIT if sends else 0
        self._credit_waiter: asyncio.Future[None] | None = None
        self._finished = not sends
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"StreamCall(id={self.id}, subject={self.subject!r})"

    @property
    def done(self) -> bool:
        return self._result.done()

    # ---- from the connection

    def _wake(self) -> None:
        for w in (self._waiter, self._credit_waiter):
            if w is not None and not w.done():
                w.set_result(None)

    def _on_stream(self, f: Frame) -> None:
        if self._result.done():
            return
        if f.payload or not f.flags & Flag.END:
            self._received += 1
            if self._received > self._granted:
                self._client._send(Frame(FrameType.CANCEL, id=self.id))
                self._fail(
                    ProtocolError(Status.PROTOCOL_ERROR, "the callee sent stream items beyond its credit")
                )
                return
            self._items.append(f.payload)
        self._wake()

    def _on_response(self, f: Frame) -> None:
        self._end()
        if not self._result.done():
            self._result.set_result(f)
        self._wake()

    def _on_credit(self, n: int) -> None:
        self._send_credit += n
        self._wake()

    def _fail(self, e: MittoError) -> None:
        self._end()
        if not self._result.done():
            self._result.set_exception(e)
        self._wake()

    def _end(self) -> None:
        self._client._calls.pop(self.id, None)
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        if not self._result.done():
            self._client._send(Frame(FrameType.CANCEL, id=self.id))
            self._fail(TimeoutError(Status.TIMEOUT, f"{self.subject}: deadline exceeded"))

    # ---- the callee's stream

    def __aiter__(self) -> StreamCall:
        return self

    async def __anext__(self) -> bytes:
        while not self._items:
            if self._result.done():
                f = self._result.result()  # raises the call's failure
                if f.status:
                    raise remote_error(f.status, f.payload)
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        self._consumed += 1
        if self._consumed >= CREDIT_BATCH and not self._result.done():
            self._granted += self._consumed
            self._client._send(Frame(FrameType.CREDIT, id=self.id, payload=encode_u32(self._consumed)))
            self._consumed = 0
        return item

    async def items(self) -> list[bytes]:
        """Every remaining item of the callee's stream."""
        return [x async for x in self]

    # ---- the caller's stream

    async def send(self, item: Payload) -> None:
        """Sends one request item, waiting for credit."""
        if self._finished:
            raise MittoError(Status.BAD_REQUEST, "the request stream is finished")
        while self._send_credit <= 0:
            if self._result.done():
                break
            self._credit_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._credit_waiter
            finally:
                self._credit_waiter = None
        if self._result.done():
            exc = self._result.exception()
            if exc is not None:
                raise exc
            raise MittoError(Status.BAD_REQUEST, "the callee already ended the call")
        self._send_credit -= 1
        await self._client._send_checked(Frame(FrameType.STREAM, id=self.id, payload=to_bytes(item)))

    async def finish(self) -> None:
        """Ends the request stream (half-close)."""
        if self._finished:
            return
        self._finished = True
        if not self._result.done():
            self._client._send(Frame(FrameType.STREAM, id=self.id, flags=Flag.END))

    # ---- the end

    async def response(self) -> Msg:
        """The RESPONSE (its payload is the result, or a stream's trailer); raises the call's
        failure."""
        f = await asyncio.shield(self._result)
        if f.status:
            raise remote_error(f.status, f.payload)
        return Msg(self.subject, f.payload, f.headers, f.kind, f.flags, status=f.status)

    async def cancel(self) -> None:
        """Abandons the call: sends CANCEL and fails it here with CANCELLED."""
        if not self._result.done():
            self._client._send(Frame(FrameType.CANCEL, id=self.id))
            self._fail(CallCancelledError(Status.CANCELLED, "cancelled by the caller"))

    def _lost(self, e: UnavailableError) -> None:
        self._fail(e)

    async def __aenter__(self) -> StreamCall:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.cancel()


def _consume(f: asyncio.Future[Frame]) -> None:
    # A failure nobody asked for is not worth a "never retrieved" warning.
    if not f.cancelled():
        f.exception()
