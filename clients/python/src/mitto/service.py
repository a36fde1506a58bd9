"""Services: the broker routes REQUESTs whose subject matches a registered filter to this
client (PROTOCOL.md sections 3.18 and 11.5); a handler answers each, unary or streaming, under
the caller's deadline, and is cancelled when the caller cancels."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .codec import JSON, Codec, codec_for
from .errors import CallCancelledError, MittoError
from .message import Payload, Response, to_bytes
from .proto import INITIAL_STREAM_CREDIT, Flag, Frame, FrameType, Headers, encode_u32
from .proto.status import Status

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("mitto")

Handler = Callable[["Request"], Awaitable[Any] | AsyncIterator[Any]]

CREDIT_BATCH = INITIAL_STREAM_CREDIT // 2


class Service:
    """A registered service instance; ``stop()`` unregisters it."""

    def __init__(
        self, client: Client, sid: int, subject: str, handler: Handler, queue: str | None, max_pending: int
    ) -> None:
        self._client = client
        self.sid = sid
        self.subject = subject
        self.handler = handler
        self.queue = queue
        self.max_pending = max_pending
        self.stopped = False
        self.handled = 0

    def __repr__(self) -> str:
        return f"Service(sid={self.sid}, subject={self.subject!r}, queue={self.queue!r})"

    async def stop(self) -> None:
        """Unregisters: the broker routes no new call here; calls in flight complete."""
        if self.stopped:
            return
        self.stopped = True
        self._client._services.pop(self.sid, None)
        await self._client._send_acked(Frame(FrameType.UNREGISTER, aux=self.sid))


class Request:
    """A call routed to a service. ``data`` is the request payload; iterate the request for a
    streamed request's items; ``send()`` streams response items before the handler returns."""

    def __init__(self, client: Client, f: Frame, service: Service) -> None:
        self._client = client
        self.id = f.id
        self.subject = f.subject
        self.data = f.payload
        self.headers = f.headers or Headers()
        self.kind = f.kind
        self.service = service
        self.streaming = bool(f.flags & Flag.START)
        us = self.headers.deadline_us
        #: Seconds left for the call when it arrived (``None``: no deadline).
        self.deadline = us / 1e6 if us is not None else None
        self._items: collections.deque[bytes] = collections.deque()
        self._ended = not self.streaming
        self._waiter: asyncio.Future[None] | None = None
        self._received = 0
        self._granted = INITIAL_STREAM_CREDIT
        self._consumed = 0
        self._send_credit = INITIAL_STREAM_CREDIT
        self._credit_waiter: asyncio.Future[None] | None = None
        self._answered = False
        self._stop_status = 0
        self._stop_reason = ""
        self._task: asyncio.Task[None] | None = None
        self._running = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def payload(self) -> bytes:
        return self.data

    def decode(self, codec: Codec | None = None) -> Any:
        return codec_for(self.headers.get_str("content-type"), codec or JSON).decode(self.data)

    def json(self) -> Any:
        return JSON.decode(self.data)

    # ---- the request stream

    def __aiter__(self) -> Request:
        return self

    async def __anext__(self) -> bytes:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        self._consumed += 1
        if self._consumed >= CREDIT_BATCH:
            self._granted += self._consumed
            self._client._send(Frame(FrameType.CREDIT, id=self.id, payload=encode_u32(self._consumed)))
            self._consumed = 0
        return item

    def _wake(self) -> None:
        for w in (self._waiter, self._credit_waiter):
            if w is not None and not w.done():
                w.set_result(None)

    def _on_stream(self, f: Frame) -> None:
        if self._ended:
            return
        if f.payload or not f.flags & Flag.END:
            self._received += 1
            if self._received > self._granted:
                self._stop(Status.PROTOCOL_ERROR, "the caller sent stream items beyond its credit")
                return
            self._items.append(f.payload)
        if f.flags & Flag.END:
            self._ended = True
        self._wake()

    def _on_credit(self, n: int) -> None:
        self._send_credit += n
        self._wake()

    # ---- the response stream

    async def send(self, item: Payload, *, headers: Headers | None = None) -> None:
        """Sends one response stream item, waiting for the caller's credit."""
        while self._send_credit <= 0 and not self._answered:
            self._credit_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._credit_waiter
            finally:
                self._credit_waiter = None
        if self._answered:
            raise CallCancelledError(Status.CANCELLED, "the call has ended")
        self._send_credit -= 1
        await self._client._send_checked(
            Frame(FrameType.STREAM, id=self.id, headers=headers, payload=to_bytes(item))
        )

    # ---- running

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        if self.deadline is not None:
            self._timer = loop.call_later(
                max(self.deadline, 0.0), self._stop, Status.TIMEOUT, "deadline exceeded"
            )

    def _stop(self, status: int, reason: str) -> None:
        """Ends the call with `status` (CANCEL, deadline, a broken stream): the handler is
        cancelled and the caller gets that status."""
        if self._answered or self._stop_status:
            return
        self._stop_status = status
        self._stop_reason = reason
        self._ended = True
        self._wake()
        if self._task is not None and self._running:
            self._task.cancel()

    async def _run(self) -> None:
        status: int = Status.OK
        payload: bytes = b""
        headers: Headers | None = None
        self._running = True
        try:
            if self._stop_status:
                raise asyncio.CancelledError
            h = self.service.handler
            out = h(self)
            result: Any = None
            if isinstance(out, AsyncIterator):
                async for item in out:
                    await self.send(item)
            else:
                result = await out
            if isinstance(result, Response):
                payload, headers = result.data, result.headers
            else:
                payload = to_bytes(result)
        except asyncio.CancelledError:
            if not self._stop_status:
                self._finish()
                return
            status, payload = self._stop_status, self._stop_reason.encode()
        except MittoError as e:
            status, payload = e.status or Status.INTERNAL, e.reason.encode()
        except Exception as e:
            log.debug("mitto: service %s failed", self.subject, exc_info=True)
            status, payload = Status.EXECUTION_ERROR, f"{type(e).__name__}: {e}".encode()
        if self._stop_status and status == Status.OK:
            status, payload = self._stop_status, self._stop_reason.encode()
        self._finish()
        self._client._send(
            Frame(FrameType.RESPONSE, id=self.id, status=status, headers=headers, payload=payload)
        )
        self.service.handled += 1

    def _finish(self) -> None:
        self._answered = True
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
        self._client._incoming.pop(self.id, None)

    def _abandon(self) -> None:
        """The connection is gone: stop without answering."""
        self._answered = True
        self._wake()
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
