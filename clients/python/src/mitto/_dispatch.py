"""Frames in: what the client does with each frame the peer sends after the handshake."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, cast

from ._base import (
    _ACK,
    _COMPRESSED,
    _CREDIT,
    _EVENT,
    _REQUEST,
    _RESPONSE,
    _STREAM,
    MAX_INCOMING_CALLS,
    ClientBase,
)
from ._version import __version__
from .calls import StreamCall
from .errors import (
    ProtocolError,
    remote_error,
)
from .proto import (
    SERVER_CALL_BIT,
    Flag,
    Frame,
    FrameType,
    HealthReport,
    StatsReport,
    decompress,
    matches,
)
from .proto.status import Status
from .service import Request

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("mitto")


class Dispatcher(ClientBase):
    """Routes received frames to subscriptions, calls, services and pending operations."""

    # ---- frames in

    def _on_frame(self, f: Frame) -> None:
        t = f.type
        if t == _EVENT:
            sub = self._subs.get(f.aux)
            if sub is not None:
                self.msgs_in += 1
                if f.flags & _COMPRESSED and not self._inflate(f):
                    return
                sub._deliver(f)
            return
        fid = f.id
        if t == _RESPONSE:
            if fid & SERVER_CALL_BIT:
                # Not an id this client could have opened (section 10.1): not a stray answer.
                self._unexpected(f, "a RESPONSE with bit 63 of its id set answers no call of a client")
                return
            if f.flags & _COMPRESSED and not self._inflate(f):
                return
            fut = self._pending.pop(fid, None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(f)
                return
            call = self._calls.get(fid)
            if call is not None:
                call._on_response(f)
            return
        if t == _ACK:
            fut = self._pending.pop(fid, None)
            if fut is not None and not fut.done():
                fut.set_result(f)
            return
        if t == _STREAM:
            if f.flags & _COMPRESSED and not self._inflate(f):
                return
            target: StreamCall | Request | None = (
                self._incoming.get(fid) if fid & SERVER_CALL_BIT else self._calls.get(fid)
            )
            if target is not None:
                target._on_stream(f)
            return
        if t == _CREDIT:
            if f.aux == 0:
                assert isinstance(f.body, int)
                target = self._incoming.get(fid) if fid & SERVER_CALL_BIT else self._calls.get(fid)
                if target is not None:
                    target._on_credit(f.body)
            return
        if t == _REQUEST:
            self._incoming_call(f)
            return
        if t == FrameType.CANCEL:
            req = self._incoming.get(fid)
            if req is not None:
                req._stop(Status.CANCELLED, "cancelled by the caller")
            return
        if t == FrameType.ERROR:
            self._on_error(f)
            return
        if t == FrameType.CLOSE:
            reason = f.body if isinstance(f.body, str) else ""
            err = remote_error(f.status or Status.UNAVAILABLE, reason or "the peer closed the connection")
            err.retryable = True
            if self._conn is not None:
                self._conn.close(err)
            return
        if t in (FrameType.HEALTH, FrameType.STATS):
            if f.flags & Flag.REPLY:
                fut = self._pending.pop(fid, None)
                if fut is not None and not fut.done():
                    fut.set_result(f)
            else:
                self._answer_query(f)
            return
        self._unexpected(f, f"a client does not accept {FrameType(t).name}")

    def _unexpected(self, f: Frame, why: str) -> None:
        self._send(Frame(FrameType.ERROR, id=f.id, status=Status.UNEXPECTED_FRAME, payload=why.encode()))

    def _inflate(self, f: Frame) -> bool:
        try:
            f.payload = decompress(f.payload, self.max_payload, f.id)
        except Exception as e:
            reason = getattr(e, "reason", str(e))
            self._send(Frame(FrameType.ERROR, id=f.id, status=Status.BAD_REQUEST, payload=reason.encode()))
            self._report(
                ProtocolError(Status.BAD_REQUEST, f"dropped a frame with a corrupt payload: {reason}")
            )
            return False
        f.flags &= ~Flag.COMPRESSED
        return True

    def _on_error(self, f: Frame) -> None:
        reason = f.body if isinstance(f.body, str) else ""
        err = remote_error(f.status, reason)
        fid = f.id
        if fid:
            fut = self._pending.pop(fid, None)
            if fut is not None:
                if not fut.done():
                    fut.set_exception(err)
                return
            call = self._calls.get(fid)
            if call is not None:
                call._fail(err)
                return
        if f.aux:
            sub = self._subs.get(f.aux)
            if sub is not None:
                sub._end(err)
        self._report(err)

    def _answer_query(self, f: Frame) -> None:
        if f.type == FrameType.HEALTH:
            body = HealthReport(
                "serving", int((time.monotonic() - self._started) * 1000), f"mitto-python {__version__}"
            )
            payload = body.encode()
        else:
            conn = self._conn
            payload = StatsReport(
                {
                    "bytes_in": conn.bytes_in if conn else 0,
                    "bytes_out": conn.bytes_out if conn else 0,
                    "msgs_in": self.msgs_in,
                    "msgs_out": self.msgs_out,
                    "reconnects": self.reconnects,
                    "subscriptions": len(self._subs),
                }
            ).encode()
        self._send(Frame(f.type, flags=Flag.REPLY, id=f.id, payload=payload))

    def _incoming_call(self, f: Frame) -> None:
        def refuse(status: int, why: str) -> None:
            self._send(Frame(FrameType.RESPONSE, id=f.id, status=status, payload=why.encode()))

        if not f.id & SERVER_CALL_BIT:
            # As a broker answers a REQUEST from the wrong half of the ids (section 10.1).
            reason = b"calls opened by the accepting peer must have bit 63 of the id set"
            self._send(Frame(FrameType.ERROR, id=f.id, status=Status.PROTOCOL_ERROR, payload=reason))
            return
        if f.id in self._incoming:
            refuse(Status.PROTOCOL_ERROR, "a call with this id is in flight")
            return
        if len(self._incoming) >= MAX_INCOMING_CALLS:
            refuse(Status.BACKPRESSURE_REJECTION, f"{MAX_INCOMING_CALLS} calls are in flight here")
            return
        if f.flags & Flag.COMPRESSED and not self._inflate(f):
            return
        for svc in self._services.values():
            if matches(svc.subject, f.subject):
                req = Request(cast("Client", self), f, svc)
                self._incoming[f.id] = req
                req._start()
                return
        refuse(Status.METHOD_NOT_FOUND, f"no service for {f.subject!r} here")
