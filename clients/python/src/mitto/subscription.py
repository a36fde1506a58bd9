"""A subscription: an async iterator of ``Msg`` (or a callback), flow-controlled with credit
so that the broker queues under the subscription's policy instead of this process buffering
without bound."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .errors import ConnectionClosedError, MittoError, SlowConsumerError, TimeoutError
from .message import Msg, Payload
from .proto import Frame, FrameType, Headers, SubscribeOptions, encode_u32
from .proto.status import Status

if TYPE_CHECKING:
    from .client import Client

Callback = Callable[[Msg], Awaitable[None]]


class Subscription:
    """Messages published to a subject filter. Iterate it (``async for msg in sub``), or give
    ``subscribe`` a callback. ``unsubscribe()`` ends it; ``drain()`` ends it after the messages
    already received are handled."""

    def __init__(
        self,
        client: Client,
        sid: int,
        subject: str,
        opts: SubscribeOptions,
        pending_limit: int,
        cb: Callback | None = None,
    ) -> None:
        self._client = client
        self.sid = sid
        self.subject = subject
        self.queue = opts.queue
        self.opts = opts
        self._q: collections.deque[Msg] = collections.deque()
        self._limit = max(1, pending_limit)
        self._waiter: asyncio.Future[None] | None = None
        self._consumed = 0
        self._closed = False
        self._error: MittoError | None = None
        self._remaining = -1
        self.delivered = 0
        self.dropped = 0
        self._cb = cb
        self._task: asyncio.Task[None] | None = None
        if cb is not None:
            self._task = asyncio.get_running_loop().create_task(self._run_callback(cb))

    def __repr__(self) -> str:
        return f"Subscription(sid={self.sid}, subject={self.subject!r}, queue={self.queue!r})"

    @property
    def pending(self) -> int:
        """Messages received and not yet taken."""
        return len(self._q)

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- called by the client

    def _deliver(self, f: Frame) -> None:
        if self._closed:
            return
        q = self._q
        if len(q) >= self._limit:
            # Only a broker that ignores credit gets here; an at-least-once delivery dropped
            # unacknowledged comes back after its ack wait.
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10000 == 0:
                self._client._report(
                    SlowConsumerError(
                        Status.SLOW_CONSUMER, f"subscription {self.subject!r}: {self.dropped} dropped"
                    )
                )
            return
        self.delivered += 1
        q.append(Msg(f.subject, f.payload, f.headers, f.kind, f.flags, f.aux, f.id, self))
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _end(self, error: MittoError | None = None) -> None:
        """Ends the subscription here: the iterator yields what is queued, then stops (or
        raises `error`)."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        self._client._forget_sub(self.sid)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _resubscribe_credit(self) -> int:
        """Credit for a new SUBSCRIBE after a reconnect: what the local queue can still take."""
        self._consumed = 0
        return max(1, self._limit - len(self._q)) if self.opts.credit else 0

    # ---- reading

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Msg:
        while not self._q:
            if self._closed:
                if self._error is not None:
                    e, self._error = self._error, None
                    raise e
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        m = self._q.popleft()
        self._taken()
        return m

    async def next_msg(self, timeout: float | None = None) -> Msg:
        """The next message; raises ``TimeoutError`` after `timeout` seconds, and
        ``ConnectionClosedError`` (or the reason) once the subscription has ended."""
        try:
            if timeout is None:
                return await self.__anext__()
            return await asyncio.wait_for(self.__anext__(), timeout)
        except StopAsyncIteration:
            raise ConnectionClosedError(Status.UNAVAILABLE, "the subscription has ended") from None
        except asyncio.TimeoutError:
            raise TimeoutError(Status.TIMEOUT, f"no message on {self.subject!r} within {timeout}s") from None

    def _taken(self) -> None:
        credit = self.opts.credit
        if credit:
            self._consumed += 1
            if self._consumed >= max(1, credit // 2):
                n, self._consumed = self._consumed, 0
                self._client._send(Frame(FrameType.CREDIT, aux=self.sid, payload=encode_u32(n)))
        if self._remaining > 0:
            self._remaining -= 1
            if self._remaining == 0:
                # The broker ends it on its own count; only this side is dropped.
                self._end()

    async def _run_callback(self, cb: Callback) -> None:
        try:
            while True:
                try:
                    m = await self.__anext__()
                except StopAsyncIteration:
                    return
                except MittoError as e:
                    self._client._report(e)
                    return
                try:
                    await cb(m)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self._client._report(
                        MittoError(Status.EXECUTION_ERROR, f"callback of {self.subject!r} failed: {e!r}")
                    )
        except asyncio.CancelledError:
            return

    # ---- acknowledgements and replies

    def _ack(self, m: Msg) -> None:
        self._client._send(Frame(FrameType.ACK, id=m.delivery_id, aux=self.sid))

    def _nack(self, m: Msg, delay: float | None) -> None:
        body = encode_u32(min(int(delay * 1000), 0xFFFFFFFF)) if delay is not None else b""
        self._client._send(Frame(FrameType.NACK, id=m.delivery_id, aux=self.sid, payload=body))

    async def _respond(self, m: Msg, data: Payload, headers: Headers | dict[str, Any] | None) -> None:
        to = m.reply_to
        if to is None:
            raise MittoError(Status.BAD_REQUEST, "the message has no reply-to header")
        h = Headers(headers) if headers is not None else Headers()
        corr = m.headers.get("correlation-id")
        if corr is not None:
            h.set("correlation-id", corr)
        await self._client.publish(to, data, headers=h or None)

    # ---- ending

    async def unsubscribe(self, limit: int = 0) -> None:
        """Ends the subscription now, or after `limit` more messages (those already received
        count)."""
        if self._closed:
            return
        more = limit - len(self._q)
        if limit > 0 and more > 0:
            # The broker delivers `more`; this side yields `limit`, the queued ones included.
            self._remaining = limit
            self._client._send(Frame(FrameType.UNSUBSCRIBE, aux=self.sid, payload=encode_u32(more)))
            return
        if limit > 0:
            self._q = collections.deque(list(self._q)[:limit])
        self._end()
        self._client._send(Frame(FrameType.UNSUBSCRIBE, aux=self.sid))

    async def drain(self, timeout: float = 10.0) -> None:
        """Unsubscribes, then waits (up to `timeout`) until a callback subscription has handled
        what it had received."""
        if not self._closed:
            self._end()
            self._client._send(Frame(FrameType.UNSUBSCRIBE, aux=self.sid))
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout)

    def _cancel_callback(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
