"""The WebSocket transport (PROTOCOL.md section 18) on the sans-I/O core of the ``websockets``
package, driven from an asyncio protocol of its own so that the connection sees an ordinary
asyncio transport.

Rules: subprotocol ``mitto.v1`` offered and required; every message binary and made of whole
frames; a message is at most the largest frame the limits allow (the handshake's until HELLO
completes, then the agreed ones), refused from its header with close 1009 before its payload is
read; a text message closes with 1003, one that ends inside a frame with 1002."""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus, PayloadTooBig
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import CLOSED, OPEN, SEND_EOF
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from .errors import MittoError, ProtocolError, UnavailableError
from .proto import HANDSHAKE_MAX_FRAME, HEADER_LEN
from .proto.status import Status

SUBPROTOCOL = Subprotocol("mitto.v1")
#: How long the peer has to finish the close handshake before the socket is dropped.
CLOSE_TIMEOUT = 2.0

_LENGTHS = struct.Struct(">HII")
_DATA = (Opcode.BINARY, Opcode.TEXT, Opcode.CONT)
_CLEAN = (CloseCode.NORMAL_CLOSURE, CloseCode.NO_STATUS_RCVD)


@runtime_checkable
class MessageSink(Protocol):
    """What this transport needs of the connection besides ``asyncio.Protocol``: the frame size
    limits each way, whole messages in, and a close that carries its reason."""

    max_frame_in: int
    max_frame_out: int

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def message_received(self, data: bytes) -> bool: ...
    def close(self, why: MittoError | None = None) -> None: ...


class _Client(ClientProtocol):
    """``ClientProtocol`` that hands each complete message over as soon as it is parsed, so that
    the size limit for the next one can change before its header is read (the parser reads
    ``max_message_size`` afresh for every frame)."""

    on_message_end: Callable[[], None]

    def recv_frame(self, frame: Frame) -> None:
        super().recv_frame(frame)
        if frame.fin and frame.opcode in _DATA:
            self.on_message_end()


class WebSocketTransport(asyncio.Transport, asyncio.Protocol):
    """An asyncio transport for the connection (``sink``) and, below it, the asyncio protocol of
    the TCP or TLS socket that carries the WebSocket."""

    def __init__(self, sink: MessageSink, uri: str, where: str) -> None:
        super().__init__()
        self.sink = sink
        self.where = where
        self.ws = _Client(parse_uri(uri), subprotocols=[SUBPROTOCOL], max_size=HANDSHAKE_MAX_FRAME)
        if not hasattr(self.ws, "max_message_size"):
            raise RuntimeError("this version of websockets has no max_message_size: mitto needs 16 or newer")
        self.ws.on_message_end = self._drain
        self.sock: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._message = bytearray()
        self._open = False
        self._closing = False
        self._lost = False
        self._timer: asyncio.TimerHandle | None = None

    # ---- the socket's side (asyncio.Protocol)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.sock = transport
        self.ws.send_request(self.ws.connect())
        self._send_pending()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self._drain()
        exc = self.ws.parser_exc
        if exc is not None and not self._closing:
            self._parser_failed(exc)
        self._send_pending()
        if self.ws.close_expected():
            self._expect_close()

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._drain()
        self._send_pending()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
        if not self.opened.done():
            why = self.ws.handshake_exc or exc or "the server closed the connection"
            self.opened.set_exception(
                UnavailableError(
                    Status.UNAVAILABLE, f"WebSocket upgrade with {self.where} failed: {why}", retryable=True
                )
            )
            return
        if not self._open:
            return
        rcvd = self.ws.close_rcvd
        if exc is None and rcvd is not None and rcvd.code not in _CLEAN:
            exc = ConnectionError(
                f"WebSocket closed with code {rcvd.code}{': ' + rcvd.reason if rcvd.reason else ''}"
            )
        elif exc is None and rcvd is None and not self._closing:
            exc = ConnectionError("the peer ended the stream without a WebSocket close")
        self.sink.connection_lost(exc)

    # ---- received events

    def _drain(self) -> None:
        for ev in self.ws.events_received():
            if isinstance(ev, Response):
                self._upgraded()
            elif isinstance(ev, Frame) and ev.opcode in _DATA:
                self._data(ev)

    def _upgraded(self) -> None:
        if self.opened.done():
            return
        err = self.ws.handshake_exc
        if err is not None:
            if isinstance(err, InvalidStatus):
                why = f"HTTP {err.response.status_code} {err.response.reason_phrase}"
            else:
                why = str(err)
            self.opened.set_exception(
                UnavailableError(
                    Status.UNAVAILABLE, f"WebSocket upgrade refused by {self.where}: {why}", retryable=False
                )
            )
        elif self.ws.subprotocol != SUBPROTOCOL:
            self._fail(CloseCode.PROTOCOL_ERROR, "subprotocol mitto.v1 required")
            self.opened.set_exception(
                ProtocolError(
                    Status.PROTOCOL_ERROR,
                    f"{self.where} did not accept the WebSocket subprotocol {SUBPROTOCOL}",
                )
            )
        else:
            self._open = True
            self.opened.set_result(None)
            self.sink.connection_made(self)

    def _data(self, f: Frame) -> None:
        if self._closing or not self._open:
            return
        if f.opcode is Opcode.TEXT:
            # Failing stops the parser: no fragment of this message follows.
            self._reject(
                CloseCode.UNSUPPORTED_DATA,
                "text messages are not mitto frames",
                "the peer sent a WebSocket text message; mitto frames travel in binary messages",
            )
            return
        if not f.fin:
            self._message += f.data
            return
        if self._message:
            self._message += f.data
            data = bytes(self._message)
            self._message.clear()
        else:
            data = bytes(f.data)
        if not self.sink.message_received(data):
            self._reject(
                CloseCode.PROTOCOL_ERROR,
                "message ended inside a frame",
                "a WebSocket message from the peer ended inside a frame",
            )
            return
        # The next message may be as large as the limits now in force (the agreed ones once the
        # server's HELLO was in this one).
        self.ws.max_message_size = self.sink.max_frame_in

    def _parser_failed(self, exc: Exception) -> None:
        if isinstance(exc, PayloadTooBig):
            self._closing = True
            self.sink.close(
                ProtocolError(
                    Status.PAYLOAD_TOO_LARGE,
                    f"the peer sent a WebSocket message over the limit of {self.ws.max_message_size} bytes",
                )
            )
        else:
            self._closing = True
            self.sink.close(ProtocolError(Status.PROTOCOL_ERROR, f"WebSocket protocol error: {exc}"))
        self._expect_close()

    def _reject(self, code: int, reason: str, message: str) -> None:
        self._fail(code, reason)
        self.sink.close(ProtocolError(Status.PROTOCOL_ERROR, message))

    def _fail(self, code: int, reason: str) -> None:
        self._closing = True
        if self.ws.state is OPEN:
            self.ws.fail(code, reason)
        self._send_pending()
        self._expect_close()

    # ---- the connection's side (asyncio.Transport)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self.sock is None or self.ws.state is not OPEN:
            return
        limit = self.sink.max_frame_out
        n = len(data)
        if n <= limit:
            self.ws.send_binary(data)
        else:
            # Several frames: as many messages as the peer's limit needs, each of whole frames.
            view = memoryview(data)
            start = at = 0
            while at < n:
                if n - at < HEADER_LEN:
                    at = n
                    break
                sl, hl, pl = _LENGTHS.unpack_from(view, at + 22)
                end = at + HEADER_LEN + sl + hl + pl
                if end - start > limit and at > start:
                    self.ws.send_binary(view[start:at])
                    start = at
                at = end
            self.ws.send_binary(view[start:n])
        self._send_pending()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def _send_pending(self) -> None:
        sock = self.sock
        if sock is None:
            return
        out = self.ws.data_to_send()
        if not out:
            return
        if out[-1] == SEND_EOF:
            out.pop()
            if out:
                sock.writelines(out)
            if sock.can_write_eof():
                sock.write_eof()
            return
        sock.writelines(out)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self.ws.state is OPEN:
            self.ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._send_pending()
        self._expect_close()

    def _expect_close(self) -> None:
        # The server closes the TCP connection after the close handshake; a peer that does not
        # is cut off.
        if self._timer is None and self.sock is not None and not self._lost:
            self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.abort)

    def drop(self) -> None:
        """Closes the socket after what was written (a failed upgrade: nothing to wait for)."""
        self._closing = True
        if self.sock is not None and not self._lost:
            self.sock.close()
            self._expect_close()

    def abort(self) -> None:
        self._closing = True
        if self.sock is not None:
            self.sock.abort()

    def is_closing(self) -> bool:
        return self._closing or self.ws.state is CLOSED or self.sock is None or self.sock.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.sock.get_write_buffer_size() if self.sock is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.sock is not None:
            self.sock.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.sock.get_write_buffer_limits() if self.sock is not None else (0, 0)

    def pause_writing(self) -> None:
        self.sink.pause_writing()

    def resume_writing(self) -> None:
        self.sink.resume_writing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock.get_extra_info(name, default) if self.sock is not None else default

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        if self.sock is not None:
            self.sock.pause_reading()

    def resume_reading(self) -> None:
        if self.sock is not None:
            self.sock.resume_reading()

    def is_reading(self) -> bool:
        return self.sock is not None and self.sock.is_reading()


async def open_websocket(
    host: str,
    port: int,
    path: str,
    tls: ssl.SSLContext | None,
    server_hostname: str | None,
    factory: Callable[[], asyncio.Protocol],
    where: str,
) -> asyncio.Transport:
    """Connects, upgrades to a WebSocket with subprotocol ``mitto.v1`` and returns the
    transport, already wired to the connection ``factory()`` makes. ``tls`` set: ``wss://``."""
    sink = factory()
    if not isinstance(sink, MessageSink):
        raise TypeError("a WebSocket needs a protocol that takes whole messages (mitto's Connection)")
    scheme = "wss" if tls is not None else "ws"
    shown = f"[{host}]" if ":" in host else host
    t = WebSocketTransport(sink, f"{scheme}://{shown}:{port}{path}", where)
    loop = asyncio.get_running_loop()
    if tls is None:
        await loop.create_connection(lambda: t, host, port)
    else:
        await loop.create_connection(lambda: t, host, port, ssl=tls, server_hostname=server_hostname or host)
    try:
        await t.opened
    except BaseException:
        t.drop()
        raise
    return t


__all__ = ["SUBPROTOCOL", "MessageSink", "WebSocketTransport", "open_websocket"]
