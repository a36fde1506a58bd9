"""One connection: the asyncio protocol that feeds received bytes to the decoder and hands
frames to the client, batches outgoing frames into few writes, answers PINGs and keeps the
connection alive. It knows nothing of subscriptions or calls."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .errors import MittoError, ProtocolError, TimeoutError, connection_lost, remote_error
from .proto import (
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_PAYLOAD,
    HANDSHAKE_MAX_FRAME,
    HEADER_LEN,
    MAX_SUBJECT,
    DecodeError,
    Decoder,
    Flag,
    Frame,
    FrameType,
    Hello,
    VersionMismatch,
    fit_answer,
    negotiate,
    pack,
)
from .proto.status import Status

log = logging.getLogger("mitto")

#: Bytes buffered before they are written at once instead of at the end of the loop's turn.
WRITE_BATCH = 64 * 1024
#: Transport buffer above which writers wait (asyncio's high-water mark).
WRITE_HIGH_WATER = 1024 * 1024
#: Beyond the high-water mark, what may still pile up for a peer that does not read (answers to
#: its PINGs, acks, credit) besides two frames of the agreed size; past it the connection is
#: dropped rather than this process growing without bound.
WRITE_SLACK = 16 * 1024 * 1024

_PING = int(FrameType.PING)
_PONG = int(FrameType.PONG)
#: Answers fitted to the peer's limits before they are sent (section 14.5).
_ANSWERS = frozenset(
    int(t) for t in (FrameType.ERROR, FrameType.CLOSE, FrameType.RESPONSE, FrameType.HEALTH, FrameType.STATS)
)


class Connection(asyncio.Protocol):
    """The byte side of one connection. ``on_frame`` receives every frame after the handshake;
    ``on_lost`` is called once, with the reason, when the connection ends."""

    def __init__(self, on_frame: Callable[[Frame], None], on_lost: Callable[[MittoError], None]) -> None:
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.decoder = Decoder()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        self._out_len = 0
        self._flush_scheduled = False
        self._paused: asyncio.Future[None] | None = None
        self._first: asyncio.Future[Frame] = self.loop.create_future()
        self._handshaken = False
        self._held = False
        self._lost: MittoError | None = None
        self._connected: asyncio.Future[None] = self.loop.create_future()
        #: Done once the transport is gone.
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self.last_rx = time.monotonic()
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_id = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: What the peer agreed to receive (the defaults until the handshake completes).
        self.peer_max_payload = DEFAULT_MAX_PAYLOAD
        self.peer_max_headers = DEFAULT_MAX_HEADERS
        #: The most bytes the transport may hold unsent before the peer counts as gone.
        self.write_limit = WRITE_HIGH_WATER + WRITE_SLACK + 2 * 64 * 1024 * 1024
        #: The largest frame the limits allow each way: the handshake's until the server's
        #: HELLO arrives, then the agreed ones (a message transport cuts its messages by them).
        self.max_frame_in = HANDSHAKE_MAX_FRAME
        self.max_frame_out = HANDSHAKE_MAX_FRAME
        self._offer: Hello | None = None

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        if not self._connected.done():
            self._connected.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        self.bytes_in += len(data)
        self.decoder.feed(data)
        self._frames()

    def message_received(self, data: bytes) -> bool:
        """One message of a message transport (WebSocket): whole frames only. False when it
        ended inside a frame, which the transport answers by closing (section 18)."""
        self.data_received(data)
        return self._lost is not None or self.decoder.at_boundary

    def _frames(self) -> None:
        dec = self.decoder
        while self._lost is None and not self._held:
            try:
                f = dec.next()
            except DecodeError as e:
                self._decode_error(e)
                continue
            if f is None:
                return
            if not self._handshaken:
                # Frames after the server's first are held until the client has taken in what
                # was agreed (limits, the connection's state): see ``release``.
                self._handshaken = True
                self._held = True
                self._agree_frame_size(f)
                if not self._first.done():
                    self._first.set_result(f)
                return
            t = f.type
            if t == _PING:
                self.send(Frame(_PONG, id=f.id, payload=f.payload))
            elif t != _PONG:
                self.on_frame(f)

    def _agree_frame_size(self, reply: Frame) -> None:
        # Known at once, before the transport reads the next message's header (section 18).
        if self._offer is None or not reply.flags & Flag.REPLY or not isinstance(reply.body, Hello):
            return
        try:
            a = negotiate(self._offer, reply.body)
        except VersionMismatch:
            return
        self.max_frame_in = self.max_frame_out = HEADER_LEN + MAX_SUBJECT + a.max_headers + a.max_payload

    def eof_received(self) -> bool | None:
        if self._held:
            # Whole frames may wait behind the handshake: they are not a broken stream.
            return None
        try:
            self.decoder.eof()
        except DecodeError as e:
            self._decode_error(e)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        if self._lost is None:
            try:
                if not self._held:
                    self.decoder.eof()
                err: MittoError = connection_lost(str(exc) if exc else "the peer closed the connection")
            except DecodeError as e:
                err = ProtocolError(e.status, f"the peer's byte stream broke off: {e.reason}")
            self._lost = err
        if not self._first.done():
            self._first.set_exception(self._lost)
            self._first.exception()
        if not self.lost.done():
            self.lost.set_result(None)
        self.on_lost(self._lost)

    def pause_writing(self) -> None:
        if self._paused is None or self._paused.done():
            self._paused = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)

    # ---- errors

    def _decode_error(self, e: DecodeError) -> None:
        if e.fatal:
            log.warning("mitto: the peer's byte stream can no longer be trusted: %s", e.reason)
            self.send(Frame(FrameType.ERROR, id=e.id, status=e.status, payload=e.reason.encode()))
            self.send(
                Frame(FrameType.CLOSE, status=e.status, payload=b"the byte stream can no longer be trusted")
            )
            what = (
                "the peer's byte stream broke off"
                if e.code == "truncated"
                else "the peer sent bytes that are not mitto"
            )
            self.close(ProtocolError(e.status, f"{what}: {e.reason}"))
            return
        log.warning("mitto: dropped a malformed frame from the peer: %s", e.reason)
        self.send(Frame(FrameType.ERROR, id=e.id, status=e.status, payload=e.reason.encode()))

    # ---- writing

    @property
    def is_open(self) -> bool:
        return self._lost is None and self.transport is not None and not self.transport.is_closing()

    def send(self, f: Frame) -> None:
        """Queues one frame; an answer that carries a status is first fitted to the peer's
        limits."""
        if f.type in _ANSWERS:
            f = fit_answer(f, self.peer_max_payload, self.peer_max_headers) or f
        parts = f.encode_parts()
        self.write(parts[0], parts[1])

    def write(self, head: bytes, payload: bytes = b"") -> None:
        """Queues encoded bytes; they leave at the end of this turn of the loop, or at once
        when a batch is full."""
        if self._lost is not None:
            return
        self._out.append(head)
        n = len(head)
        if payload:
            self._out.append(payload)
            n += len(payload)
        self._out_len += n
        if self._out_len >= WRITE_BATCH:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def write_one(self, data: bytes) -> None:
        """``write`` of one piece (the publish fast path)."""
        if self._lost is not None:
            return
        self._out.append(data)
        self._out_len += len(data)
        if self._out_len >= WRITE_BATCH:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Writes everything queued."""
        self._flush_scheduled = False
        if not self._out or self.transport is None or self._lost is not None:
            self._out.clear()
            self._out_len = 0
            return
        out = self._out
        self.bytes_out += self._out_len
        self._out = []
        self._out_len = 0
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)
        if self.transport.get_write_buffer_size() > self.write_limit:
            self.abort(
                connection_lost(
                    f"the peer reads nothing: over {self.write_limit} bytes wait to be sent to it"
                )
            )

    async def writable(self, timeout: float) -> None:
        """Waits while the transport's buffer is over its high-water mark; raises
        ``TimeoutError`` when the peer has read nothing for `timeout` seconds."""
        p = self._paused
        if p is not None and not p.done():
            try:
                await asyncio.wait_for(asyncio.shield(p), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(
                    Status.TIMEOUT, f"the peer read nothing for {timeout}s: its socket buffer stays full"
                ) from None

    def close(self, why: MittoError | None = None) -> None:
        """Writes what is queued and closes the transport."""
        self.flush()
        if why is not None and self._lost is None:
            self._lost = why
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self, why: MittoError) -> None:
        """Drops the connection at once."""
        if self._lost is None:
            self._lost = why
        if self.transport is not None:
            self.transport.abort()

    # ---- handshake and keepalive

    async def wait_connected(self) -> None:
        await self._connected

    async def handshake(self, offer: Hello) -> Hello:
        """Sends HELLO and returns the server's reply; raises the server's refusal."""
        self._offer = offer
        self.send(Frame(FrameType.HELLO, payload=offer.encode()))
        f = await self._first
        if f.type == FrameType.HELLO and f.flags & Flag.REPLY:
            assert isinstance(f.body, Hello)
            return f.body
        if f.type in (FrameType.ERROR, FrameType.CLOSE):
            raise remote_error(f.status or Status.UNAVAILABLE, f.payload)
        raise ProtocolError(
            Status.UNEXPECTED_FRAME, f"expected the server's HELLO, got {FrameType(f.type).name}"
        )

    def release(self) -> None:
        """Goes on with the frames that followed the handshake."""
        self._held = False
        self._frames()

    def start_keepalive(self, interval_ms: int) -> None:
        if interval_ms <= 0:
            return
        interval = interval_ms / 1000

        def tick() -> None:
            if self._lost is not None:
                return
            if time.monotonic() - self.last_rx > 2 * interval:
                self.abort(connection_lost(f"nothing received for {2 * interval_ms} ms (keepalive)"))
                return
            self._ping_id += 1
            self.write(pack(FrameType.PING, 0, 0, self._ping_id, 0, 0, b"", b"", 0))
            self._keepalive = self.loop.call_later(interval, tick)

        self._keepalive = self.loop.call_later(interval, tick)
