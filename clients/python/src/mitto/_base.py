"""The client's connection side: state, connecting and reconnecting (the session resumed or
subscriptions and services made again), and the helpers that put frames on the connection."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from .calls import StreamCall
from .connection import WRITE_HIGH_WATER, WRITE_SLACK, Connection
from .errors import (
    ConnectionClosedError,
    InvalidSubjectError,
    MittoError,
    PayloadTooLargeError,
    ProtocolError,
    TimeoutError,
    UnavailableError,
    connection_lost,
    error_for,
)
from .message import to_bytes
from .proto import (
    SERVER_CALL_BIT,
    Agreed,
    Feature,
    Flag,
    Frame,
    FrameType,
    Headers,
    Hello,
    SubscribeOptions,
    VersionMismatch,
    compress,
    lz4_available,
    negotiate,
    pack,
    subject_error,
)
from .proto.status import Status
from .service import Request, Service
from .subscription import Subscription
from .transport import Endpoint, TransportOptions, open_transport, parse_url

log = logging.getLogger("mitto")

HeadersArg = Union[Headers, Mapping[str, Any], None]
ErrorCallback = Callable[[MittoError], Awaitable[None] | None]
EventCallback = Callable[[], Awaitable[None] | None]

#: Deliveries a subscription may have in flight to this client before it grants more credit.
DEFAULT_SUBSCRIPTION_CREDIT = 65_536
#: Calls routed to this client's services that may run at once; more are refused.
MAX_INCOMING_CALLS = 4096

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
#: Payloads up to this size are copied into the frame's one buffer; larger ones are written
#: as they are.
_COPY_MAX = 4096
# Plain ints for the hot paths (an enum member costs a descriptor call per use).
_EVENT = int(FrameType.EVENT)
_RESPONSE = int(FrameType.RESPONSE)
_ACK = int(FrameType.ACK)
_STREAM = int(FrameType.STREAM)
_CREDIT = int(FrameType.CREDIT)
_REQUEST = int(FrameType.REQUEST)
_PUBLISH = int(FrameType.PUBLISH)
_COMPRESSED = int(Flag.COMPRESSED)
_URGENT = int(Flag.URGENT)
_ACK_REQUIRED = int(Flag.ACK_REQUIRED)
_ID_MASK = SERVER_CALL_BIT - 1
_LITERAL_CACHE = 1024


def _features() -> int:
    f = (
        Feature.STREAMING
        | Feature.BATCHING
        | Feature.ACKS
        | Feature.FLOW_CONTROL
        | Feature.SESSION_RESUME
        | Feature.TRACE_CONTEXT
    )
    if lz4_available():
        f |= Feature.COMPRESSION_LZ4
    return int(f)


@dataclass
class Options:
    """Everything ``connect`` can be told (see its keyword arguments)."""

    name: str = "mitto-python"
    client_id: str = ""
    token: str | bytes | None = None
    user: str | None = None
    password: str | bytes | None = None
    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    timeout: float = 30.0
    connect_timeout: float = 10.0
    keepalive: float | None = 30.0
    reconnect: bool = True
    max_reconnect_attempts: int = -1
    reconnect_backoff: tuple[float, float] = (0.05, 5.0)
    max_payload: int = 0
    subscription_credit: int = DEFAULT_SUBSCRIPTION_CREDIT
    error_cb: ErrorCallback | None = None
    disconnected_cb: EventCallback | None = None
    reconnected_cb: EventCallback | None = None


class ClientBase:
    """What every part of the client shares; ``mitto.Client`` is the public face."""

    def __init__(self, url: str, opts: Options) -> None:
        self._endpoint: Endpoint = parse_url(url)
        self._opts = opts
        self._loop = asyncio.get_running_loop()
        self._conn: Connection | None = None
        self._agreed: Agreed | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._closed_error: MittoError | None = None
        self._session = ""
        self._next_id = 1
        self._next_sid = 1
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._calls: dict[int, StreamCall] = {}
        self._incoming: dict[int, Request] = {}
        self._subs: dict[int, Subscription] = {}
        self._services: dict[int, Service] = {}
        self._literals: dict[str, bytes] = {}
        # subject -> (the first 28 bytes of a plain PUBLISH to it, the subject's bytes)
        self._pub_prefix: dict[str, tuple[bytes, bytes]] = {}
        self._deadline_blocks: dict[float, bytes] = {}
        self._reconnect_task: asyncio.Task[None] | None = None
        self._fast_max = 0
        self._started = time.monotonic()
        self.reconnects = 0
        self.msgs_in = 0
        self.msgs_out = 0

    # ---- state

    @property
    def is_connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    @property
    def is_closed(self) -> bool:
        return self._closing

    @property
    def agreed(self) -> Agreed | None:
        """What HELLO agreed on for the current connection."""
        return self._agreed

    @property
    def max_payload(self) -> int:
        return self._agreed.max_payload if self._agreed else 0

    @property
    def session(self) -> str:
        return self._session

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id = (i + 1) & _ID_MASK or 1
        return i

    def _new_sid(self) -> int:
        s = self._next_sid
        self._next_sid = (s + 1) & 0xFFFFFFFF or 1
        return s

    def _report(self, e: MittoError) -> None:
        cb = self._opts.error_cb
        if cb is None:
            log.warning("mitto: %s", e)
            return
        r = cb(e)
        if inspect.isawaitable(r):
            self._loop.create_task(_quiet(r))

    def _event(self, cb: EventCallback | None) -> None:
        if cb is not None:
            r = cb()
            if inspect.isawaitable(r):
                self._loop.create_task(_quiet(r))

    # ---- connecting

    def _offer(self) -> Hello:
        o = self._opts
        auth = o.password if o.user is not None else o.token
        return Hello(
            features=_features(),
            max_payload=o.max_payload,
            keepalive_ms=int(o.keepalive * 1000) if o.keepalive else 0,
            name=o.name,
            client_id=o.client_id,
            session=self._session,
            user=o.user or "",
            auth=to_bytes(auth),
        )

    async def _open(self) -> None:
        conn = Connection(self._on_frame, lambda e: self._on_lost(conn, e))
        offer = self._offer()
        t = TransportOptions(self._opts.tls, self._opts.tls_hostname)

        async def run() -> Agreed:
            await open_transport(self._endpoint, t, lambda: conn)
            reply = await conn.handshake(offer)
            try:
                return negotiate(offer, reply)
            except VersionMismatch as e:
                raise ProtocolError(Status.UNSUPPORTED_VERSION, str(e)) from None

        try:
            agreed = await asyncio.wait_for(run(), self._opts.connect_timeout)
        except asyncio.TimeoutError:
            conn.abort(connection_lost("handshake timed out"))
            raise TimeoutError(
                Status.TIMEOUT, f"no HELLO from {self._endpoint} within {self._opts.connect_timeout}s"
            ) from None
        except BaseException:
            conn.abort(connection_lost("handshake failed"))
            raise
        conn.decoder.max_payload = agreed.max_payload
        conn.decoder.max_headers = agreed.max_headers
        conn.write_limit = WRITE_HIGH_WATER + WRITE_SLACK + 2 * agreed.max_payload
        conn.peer_max_payload = agreed.max_payload
        conn.peer_max_headers = agreed.max_headers
        conn.start_keepalive(agreed.keepalive_ms)
        self._agreed = agreed
        self._fast_max = agreed.max_payload
        self._session = agreed.session
        self._conn = conn
        self._restore(agreed.resumed)
        self._ready.set()
        conn.release()

    async def _connect_first(self) -> None:
        await self._open()

    def _restore(self, resumed: bool) -> None:
        """Makes subscriptions (unless the session was resumed) and registrations again."""
        if not resumed:
            for sub in list(self._subs.values()):
                opts = SubscribeOptions(**{**sub.opts.__dict__})
                opts.credit = sub._resubscribe_credit()
                if not self._flow_control:
                    opts.credit = 0
                self._restore_one(
                    Frame(FrameType.SUBSCRIBE, aux=sub.sid, subject=sub.subject, payload=opts.encode())
                )
        for svc in list(self._services.values()):
            opts = SubscribeOptions(queue=svc.queue, max_pending=svc.max_pending)
            self._restore_one(
                Frame(FrameType.REGISTER, aux=svc.sid, subject=svc.subject, payload=opts.encode())
            )

    def _restore_one(self, f: Frame) -> None:
        fut = self._acked_future(f)

        def done(fut: asyncio.Future[Frame]) -> None:
            if not fut.cancelled() and fut.exception() is not None:
                e = fut.exception()
                assert isinstance(e, MittoError)
                self._report(
                    error_for(e.status, f"could not restore {f.subject!r} after a reconnect: {e.reason}")
                )
                sub = self._subs.get(f.aux)
                if sub is not None:
                    sub._end(e)

        fut.add_done_callback(done)

    @property
    def _flow_control(self) -> bool:
        return bool(self._agreed and self._agreed.features & Feature.FLOW_CONTROL)

    def _on_lost(self, conn: Connection, err: MittoError) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._ready.clear()
        lost = err
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(lost)
        self._pending.clear()
        for call in list(self._calls.values()):
            call._fail(lost)
        for req in list(self._incoming.values()):
            req._abandon()
        self._incoming.clear()
        if self._closing:
            return
        if not self._opts.reconnect:
            self._shut(err)
            return
        log.info("mitto: connection to %s lost (%s), reconnecting", self._endpoint, err)
        self._event(self._opts.disconnected_cb)
        self._reconnect_task = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        lo, hi = self._opts.reconnect_backoff
        wait = lo
        attempts = 0
        while not self._closing:
            await asyncio.sleep(wait + random.random() * wait / 2)
            try:
                await self._open()
            except MittoError as e:
                attempts += 1
                log.debug("mitto: reconnect to %s failed: %s", self._endpoint, e)
                if 0 <= self._opts.max_reconnect_attempts < attempts:
                    self._shut(e)
                    return
                wait = min(wait * 2, hi)
                continue
            self.reconnects += 1
            self._event(self._opts.reconnected_cb)
            return

    def _shut(self, err: MittoError) -> None:
        """The client is done for good: everything still waiting fails with `err`."""
        self._closing = True
        self._closed_error = err
        self._ready.set()
        for sub in list(self._subs.values()):
            sub._end(None if isinstance(err, ConnectionClosedError) else err)
            sub._cancel_callback()
        self._services.clear()

    async def _conn_ready(self, timeout: float | None = None) -> Connection:
        conn = self._conn
        if conn is not None:
            return conn
        if self._closing:
            raise self._closed()
        try:
            await asyncio.wait_for(self._ready.wait(), self._opts.timeout if timeout is None else timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(Status.TIMEOUT, "deadline passed while reconnecting") from None
        if self._conn is None:
            raise self._closed()
        return self._conn

    def _closed(self) -> MittoError:
        e = self._closed_error
        if e is None or isinstance(e, ConnectionClosedError):
            return ConnectionClosedError(Status.UNAVAILABLE, "the client is closed")
        return UnavailableError(e.status, f"the client gave up: {e.reason}")

    # ---- frames out

    def _send(self, f: Frame) -> None:
        """Sends a frame if connected (acks, credit, cancels: nothing to do otherwise)."""
        conn = self._conn
        if conn is not None:
            conn.send(f)

    async def _send_checked(self, f: Frame) -> None:
        """Sends a frame within the agreed limits, waiting for the connection and for room."""
        conn = await self._conn_ready()
        self._check_size(len(f.payload))
        conn.send(f)
        await conn.writable(self._opts.timeout)

    def _check_size(self, n: int) -> None:
        mp = self.max_payload
        if mp and n > mp:
            raise PayloadTooLargeError(
                Status.PAYLOAD_TOO_LARGE, f"payload of {n} bytes exceeds the negotiated limit of {mp}"
            )

    def _acked_future(self, f: Frame) -> asyncio.Future[Frame]:
        fut: asyncio.Future[Frame] = self._loop.create_future()
        conn = self._conn
        if conn is None:
            fut.set_exception(connection_lost("not connected"))
            return fut
        f.id = self._new_id()
        f.flags |= Flag.ACK_REQUIRED
        self._pending[f.id] = fut
        conn.send(f)
        return fut

    async def _await(self, fid: int, fut: asyncio.Future[Frame], timeout: float | None, what: str) -> Frame:
        """Waits for the answer to frame `fid`; gives up (and forgets it) after `timeout`."""
        t = self._opts.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(fut), t)
        except asyncio.TimeoutError:
            self._pending.pop(fid, None)
            raise TimeoutError(Status.TIMEOUT, f"no answer to {what} within {t}s") from None
        except asyncio.CancelledError:
            self._pending.pop(fid, None)
            raise

    async def _send_acked(self, f: Frame, timeout: float | None = None) -> Frame:
        await self._conn_ready(timeout)
        fut = self._acked_future(f)
        return await self._await(f.id, fut, timeout, FrameType(f.type).name)

    def _literal(self, subject: str) -> bytes:
        b = self._literals.get(subject)
        if b is not None:
            return b
        why = subject_error(subject, literal=True)
        if why is not None:
            raise InvalidSubjectError(Status.INVALID_SUBJECT, f"invalid subject {subject!r}: {why}")
        if len(self._literals) >= _LITERAL_CACHE:
            self._literals.clear()
            self._pub_prefix.clear()
        b = self._literals[subject] = subject.encode()
        self._pub_prefix[subject] = (pack(_PUBLISH, 0, 0, 0, 0, 0, b, b"", 0)[:28], b)
        return b

    def _headers_block(self, headers: HeadersArg, deadline_s: float | None = None) -> bytes:
        if deadline_s is not None:
            if headers is None:
                b = self._deadline_blocks.get(deadline_s)
                if b is None:
                    if len(self._deadline_blocks) > 64:
                        self._deadline_blocks.clear()
                    b = self._deadline_blocks[deadline_s] = b"\x04\x00\x08" + _U64.pack(_micros(deadline_s))
                return b
            h = Headers(headers)
            h.set("deadline", _micros(deadline_s))
            hb = h.encode()
        elif headers is None:
            return b""
        else:
            hb = (headers if isinstance(headers, Headers) else Headers(headers)).encode()
        limit = self._agreed.max_headers if self._agreed else 0
        if limit and len(hb) > limit:
            raise PayloadTooLargeError(
                Status.PAYLOAD_TOO_LARGE,
                f"headers block of {len(hb)} bytes exceeds the negotiated limit of {limit}",
            )
        return hb

    def _maybe_compress(self, p: bytes, flags: int, want: bool) -> tuple[bytes, int]:
        if not want:
            return p, flags
        if not (self._agreed and self._agreed.features & Feature.COMPRESSION_LZ4):
            raise MittoError(
                Status.UNSUPPORTED_FEATURE, "compression was not negotiated (install mitto[lz4])"
            )
        return compress(p), flags | Flag.COMPRESSED

    def _forget_sub(self, sid: int) -> None:
        self._subs.pop(sid, None)

    def _on_frame(self, f: Frame) -> None:
        raise NotImplementedError


def _micros(seconds: float) -> int:
    return max(0, min(int(seconds * 1_000_000), (1 << 64) - 1))


async def _quiet(aw: Awaitable[None]) -> None:
    try:
        await aw
    except Exception:
        log.exception("mitto: a callback failed")
