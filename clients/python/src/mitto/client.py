"""The client: one connection to a broker or an RPC server, multiplexing publishes,
subscriptions, requests, services and streaming calls, with keepalive and a reconnect that
resumes the session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ._base import (
    _ACK_REQUIRED,
    _COPY_MAX,
    _PUBLISH,
    _REQUEST,
    _U32,
    _URGENT,
    HeadersArg,
    Options,
)
from ._dispatch import Dispatcher
from .calls import StreamCall
from .codec import JSON, Codec
from .errors import (
    ConnectionClosedError,
    InvalidSubjectError,
    MittoError,
    TimeoutError,
    remote_error,
)
from .message import Msg, Payload, to_bytes
from .proto import (
    Delivery,
    Flag,
    Frame,
    FrameType,
    Headers,
    HealthReport,
    Policy,
    StatsReport,
    SubscribeOptions,
    pack,
    subject_error,
)
from .proto.status import Status
from .service import Handler, Service
from .subscription import Callback, Subscription

log = logging.getLogger("mitto")


async def connect(url: str = "tcp://127.0.0.1:4747", **options: Any) -> Client:
    """Connects to a mitto broker or RPC server and shakes hands.

    ``url``: ``tcp://host:port`` (or ``host:port``), ``tls://host:port``, ``unix:///path``.
    Keyword options: ``name``, ``client_id`` (keeps a session across reconnects), ``token`` or
    ``user`` + ``password``, ``tls`` (an ``ssl.SSLContext``) and ``tls_hostname``, ``timeout``
    (default deadline of requests and acks, seconds), ``connect_timeout``, ``keepalive``
    (seconds, ``None`` for none), ``reconnect``, ``max_reconnect_attempts`` (-1: forever),
    ``reconnect_backoff`` ((min, max) seconds), ``max_payload``, ``subscription_credit``,
    ``error_cb``, ``disconnected_cb``, ``reconnected_cb``. The first connection is made here,
    so a wrong address or a refused login fails at once."""
    c = Client(url, Options(**options))
    await c._connect_first()
    return c


class Client(Dispatcher):
    """A connection to a mitto broker or server. Create it with ``await mitto.connect(url)``."""

    def __repr__(self) -> str:
        return f"Client({self._endpoint}, connected={self.is_connected})"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ---- publish / subscribe

    async def publish(
        self,
        subject: str,
        payload: Payload = b"",
        *,
        headers: HeadersArg = None,
        kind: int = 0,
        urgent: bool = False,
        ack: bool = False,
        timeout: float | None = None,
        compress: bool = False,
    ) -> None:
        """Publishes a message to a literal subject. Fire and forget unless `ack`: then waits
        for the broker to accept it (or raises its refusal: FORBIDDEN, BACKPRESSURE_REJECTION,
        ...). Waits while reconnecting and while the socket's buffer is full."""
        conn = self._conn
        if (
            conn is not None
            and headers is None
            and type(payload) is bytes
            and not (kind or urgent or ack or compress)
        ):
            pre = self._pub_prefix.get(subject)
            n = len(payload)
            if pre is not None and n <= self._fast_max:
                # A plain publish: one header of cached bytes, no checks left to make.
                if n <= _COPY_MAX:
                    conn.write_one(pre[0] + _U32.pack(n) + pre[1] + payload)
                else:
                    conn.write(pre[0] + _U32.pack(n) + pre[1], payload)
                self.msgs_out += 1
                paused = conn._paused
                if paused is not None and not paused.done():
                    await conn.writable(self._opts.timeout if timeout is None else timeout)
                return
        await self._publish(subject, to_bytes(payload), headers, kind, urgent, ack, timeout, compress)

    async def _publish(
        self,
        subject: str,
        p: bytes,
        headers: HeadersArg,
        kind: int,
        urgent: bool,
        ack: bool,
        timeout: float | None,
        compress: bool,
    ) -> None:
        sb = self._literals.get(subject) or self._literal(subject)
        conn = self._conn or await self._conn_ready(timeout)
        self._check_size(len(p))
        hb = self._headers_block(headers) if headers is not None else b""
        flags = _URGENT if urgent else 0
        if compress:
            p, flags = self._maybe_compress(p, flags, True)
        self.msgs_out += 1
        if not ack:
            conn.write(pack(_PUBLISH, flags, kind, 0, 0, 0, sb, hb, len(p)), p)
            await conn.writable(self._opts.timeout if timeout is None else timeout)
            return
        fid = self._new_id()
        fut: asyncio.Future[Frame] = self._loop.create_future()
        self._pending[fid] = fut
        conn.write(pack(_PUBLISH, flags | _ACK_REQUIRED, kind, fid, 0, 0, sb, hb, len(p)), p)
        await self._await(fid, fut, timeout, f"PUBLISH to {subject!r}")

    async def publish_json(self, subject: str, value: Any, **kw: Any) -> None:
        """Publishes `value` as JSON (``content-type: application/json``)."""
        await self.publish_encoded(subject, value, JSON, **kw)

    async def publish_encoded(
        self, subject: str, value: Any, codec: Codec, *, headers: HeadersArg = None, **kw: Any
    ) -> None:
        """Publishes `value` encoded with `codec` (``mitto.JSON``, ``mitto.MSGPACK``), with
        its ``content-type``."""
        h = Headers(headers)
        h.set("content-type", codec.content_type)
        await self.publish(subject, codec.encode(value), headers=h, **kw)

    async def subscribe(
        self,
        subject: str,
        queue: str | None = None,
        *,
        cb: Callback | None = None,
        ack: bool = False,
        ack_wait: float | None = None,
        max_deliver: int = 0,
        policy: Policy = Policy.SERVER_DEFAULT,
        max_pending: int = 0,
        credit: int | None = None,
        durable: str | None = None,
        timeout: float | None = None,
    ) -> Subscription:
        """Subscribes to a subject filter (``*`` one token, ``>`` the rest), in queue group
        `queue` if given. Iterate the subscription, or pass `cb` (an async function called for
        each message in turn). `ack`: at-least-once delivery (acknowledge each message with
        ``msg.ack()``; one not acknowledged within `ack_wait` seconds, or nacked, comes again,
        up to `max_deliver` times). `policy` / `max_pending`: what the broker does when this
        subscriber falls behind. `credit`: messages in flight before this client grants more.
        `durable` (protocol 1.1): a name under which what the subscription has not had
        acknowledged is kept, when it ends, for the next subscriber of that name. Returns once
        the broker confirmed it."""
        why = subject_error(subject, literal=False)
        if why is not None:
            raise InvalidSubjectError(Status.INVALID_SUBJECT, f"invalid subject filter {subject!r}: {why}")
        await self._conn_ready(timeout)
        limit = credit or self._opts.subscription_credit
        opts = SubscribeOptions(
            delivery=Delivery.AT_LEAST_ONCE if ack else Delivery.AT_MOST_ONCE,
            policy=policy,
            max_pending=max_pending,
            ack_wait_ms=int(ack_wait * 1000) if ack_wait else 0,
            max_deliver=max_deliver,
            credit=limit if self._flow_control else 0,
            queue=queue or None,
            durable=durable or None,
        )
        if durable and self._agreed is not None and self._agreed.minor < 1:
            raise MittoError(
                Status.UNSUPPORTED_FEATURE, "durable subscriptions need protocol 1.1; the peer agreed 1.0"
            )
        sid = self._new_sid()
        sub = Subscription(self, sid, subject, opts, limit, cb)
        self._subs[sid] = sub
        try:
            await self._send_acked(
                Frame(FrameType.SUBSCRIBE, aux=sid, subject=subject, payload=opts.encode()), timeout
            )
        except BaseException:
            sub._end()
            sub._cancel_callback()
            raise
        return sub

    # ---- request / reply and RPC

    async def request(
        self,
        subject: str,
        payload: Payload = b"",
        *,
        timeout: float | None = None,
        headers: HeadersArg = None,
        kind: int = 0,
        urgent: bool = False,
        compress: bool = False,
    ) -> Msg:
        """Sends a request (a REQUEST frame: through a broker to a service or a subscriber, or
        straight to an RPC server) and returns the answer. Raises ``NoRespondersError`` at once
        when nobody answers, ``TimeoutError`` after `timeout` seconds (the callee is told with
        CANCEL), and the callee's error otherwise. Cancelling the awaiting task sends CANCEL."""
        t = self._opts.timeout if timeout is None else timeout
        sb = self._literals.get(subject) or self._literal(subject)
        p = payload if isinstance(payload, bytes) else to_bytes(payload)
        conn = self._conn or await self._conn_ready(t)
        self._check_size(len(p))
        hb = self._headers_block(headers, t)
        flags = _URGENT if urgent else 0
        if compress:
            p, flags = self._maybe_compress(p, flags, True)
        fid = self._new_id()
        fut: asyncio.Future[Frame] = self._loop.create_future()
        self._pending[fid] = fut
        conn.write(pack(_REQUEST, flags, kind, fid, 0, 0, sb, hb, len(p)), p)
        timer = self._loop.call_later(t, self._expire, fid, subject, t)
        try:
            f = await fut
        except asyncio.CancelledError:
            if self._pending.pop(fid, None) is not None:
                self._send(Frame(FrameType.CANCEL, id=fid))
            raise
        finally:
            timer.cancel()
        if f.status:
            raise remote_error(f.status, f.payload)
        return Msg(subject, f.payload, f.headers, f.kind, f.flags, status=f.status)

    def _expire(self, fid: int, subject: str, t: float) -> None:
        fut = self._pending.pop(fid, None)
        if fut is not None and not fut.done():
            self._send(Frame(FrameType.CANCEL, id=fid))
            fut.set_exception(
                TimeoutError(Status.TIMEOUT, f"no answer from {subject!r} within {t}s", retryable=True)
            )

    call = request

    async def request_json(self, subject: str, value: Any, **kw: Any) -> Any:
        """Sends `value` as JSON and returns the answer decoded (by its ``content-type``,
        JSON when it names none)."""
        return await self.request_encoded(subject, value, JSON, **kw)

    async def request_encoded(
        self, subject: str, value: Any, codec: Codec, *, headers: HeadersArg = None, **kw: Any
    ) -> Any:
        """Sends `value` encoded with `codec` and returns the answer decoded."""
        h = Headers(headers)
        h.set("content-type", codec.content_type)
        reply = await self.request(subject, codec.encode(value), headers=h, **kw)
        return reply.decode(codec)

    async def _open_call(
        self, subject: str, payload: Payload, start: bool, timeout: float | None, headers: HeadersArg
    ) -> StreamCall:
        t = self._opts.timeout if timeout is None else timeout
        sb = self._literal(subject)
        p = to_bytes(payload)
        conn = await self._conn_ready(t)
        self._check_size(len(p))
        hb = self._headers_block(headers, t)
        fid = self._new_id()
        call = StreamCall(self, fid, subject, start)
        self._calls[fid] = call
        call._timer = self._loop.call_later(t, call._expire)
        conn.write(pack(FrameType.REQUEST, Flag.START if start else 0, 0, fid, 0, 0, sb, hb, len(p)), p)
        return call

    async def server_stream(
        self,
        subject: str,
        payload: Payload = b"",
        *,
        timeout: float | None = None,
        headers: HeadersArg = None,
    ) -> StreamCall:
        """Calls a server-streaming method: iterate the result for the items."""
        return await self._open_call(subject, payload, False, timeout, headers)

    async def client_stream(
        self, subject: str, *, timeout: float | None = None, headers: HeadersArg = None
    ) -> StreamCall:
        """Calls a client-streaming method: ``send()`` items, ``finish()``, then ``response()``."""
        return await self._open_call(subject, b"", True, timeout, headers)

    async def bidi(
        self, subject: str, *, timeout: float | None = None, headers: HeadersArg = None
    ) -> StreamCall:
        """Calls a bidirectional method: ``send()`` and iterate at will, ``finish()`` to
        half-close."""
        return await self._open_call(subject, b"", True, timeout, headers)

    # ---- services

    async def service(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str | None = None,
        max_pending: int = 0,
        timeout: float | None = None,
    ) -> Service:
        """Registers a service: the broker routes each REQUEST whose subject matches the filter
        to one instance per queue group. `handler(request)` returns the answer (bytes, ``str``,
        ``None`` or a ``mitto.Response``), may ``await request.send(item)`` to stream, or is an
        async generator whose items are streamed; raising ``MittoError`` answers with its
        status, any other exception with EXECUTION_ERROR. It is cancelled when the caller
        cancels or the deadline passes."""
        why = subject_error(subject, literal=False)
        if why is not None:
            raise InvalidSubjectError(Status.INVALID_SUBJECT, f"invalid subject filter {subject!r}: {why}")
        await self._conn_ready(timeout)
        sid = self._new_sid()
        svc = Service(self, sid, subject, handler, queue, max_pending)
        self._services[sid] = svc
        opts = SubscribeOptions(queue=queue or None, max_pending=max_pending)
        try:
            await self._send_acked(
                Frame(FrameType.REGISTER, aux=sid, subject=subject, payload=opts.encode()), timeout
            )
        except BaseException:
            self._services.pop(sid, None)
            raise
        return svc

    # ---- queries, flush, drain, close

    async def _query(self, t: FrameType, timeout: float | None) -> Frame:
        await self._conn_ready(timeout)
        fut: asyncio.Future[Frame] = self._loop.create_future()
        fid = self._new_id()
        self._pending[fid] = fut
        self._send(Frame(t, id=fid))
        return await self._await(fid, fut, timeout, t.name)

    async def health(self, timeout: float | None = None) -> HealthReport:
        """The peer's HEALTH report."""
        f = await self._query(FrameType.HEALTH, timeout)
        assert isinstance(f.body, HealthReport)
        return f.body

    async def stats(self, timeout: float | None = None) -> dict[str, int]:
        """The peer's STATS counters."""
        f = await self._query(FrameType.STATS, timeout)
        assert isinstance(f.body, StatsReport)
        return f.body.values

    async def flush(self, timeout: float | None = None) -> None:
        """Waits until the peer has processed everything sent before (a HEALTH round trip).
        Messages a broker routes back to this client may still be on their way."""
        await self._query(FrameType.HEALTH, timeout)

    async def drain(self, timeout: float = 10.0) -> None:
        """Stops taking work and closes: unsubscribes (letting callbacks handle what they
        received), unregisters services and lets their calls in flight finish, flushes, then
        closes. Bounded by `timeout` seconds."""
        deadline = self._loop.time() + timeout

        def left() -> float:
            return max(0.01, deadline - self._loop.time())

        with contextlib.suppress(MittoError):
            for svc in list(self._services.values()):
                await svc.stop()
        for sub in list(self._subs.values()):
            await sub.drain(left())
        tasks = [r._task for r in self._incoming.values() if r._task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=left())
        with contextlib.suppress(MittoError):
            await self.flush(left())
        await self.close()

    async def close(self) -> None:
        """Closes the connection (CLOSE, then the socket); everything waiting fails with
        ``ConnectionClosedError``; subscriptions end."""
        if self._closing and self._conn is None:
            return
        err = ConnectionClosedError(Status.UNAVAILABLE, "the client was closed")
        self._closing = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        conn = self._conn
        if conn is not None:
            conn.send(Frame(FrameType.CLOSE, status=Status.OK))
            conn.close(err)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.lost), 2.0)
        self._conn = None
        self._ready.clear()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        for call in list(self._calls.values()):
            call._fail(err)
        for req in list(self._incoming.values()):
            req._abandon()
        self._incoming.clear()
        self._shut(err)
