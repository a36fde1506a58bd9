"""The streaming decoder (PROTOCOL.md section 14.2): bytes in, frames or typed errors out.

Limits are checked on the 32-byte header alone, before anything of the frame is waited for;
an oversize frame's bytes are skipped as they arrive, never buffered. Only what has arrived is
ever held."""

from __future__ import annotations

import struct

from .bodies import (
    HealthReport,
    Hello,
    MalformedBody,
    StatsReport,
    SubscribeOptions,
    decode_credit,
    decode_opt_u32,
    decode_reason,
)
from .constants import (
    DEFAULT_MAX_HEADERS,
    DEFAULT_MAX_PAYLOAD,
    FLAG_NAMES,
    FRAME_RULES,
    HEADER_LEN,
    MAGIC,
    MAX_SUBJECT,
    RESERVED_FLAGS,
    Flag,
    FrameType,
    SubjectRule,
    type_name,
)
from .errors import DecodeError
from .frame import HEADER, Frame
from .headers import Headers, MalformedHeaders
from .subject import subject_error

_U32 = struct.Struct(">I")
#: Subject, headers and payload lengths, at offset 22 of the header.
_LENGTHS = struct.Struct(">HII")
_SUBJECT_CACHE_MAX = 4096


class Decoder:
    """Decodes a byte stream into frames.

    ``feed(data)`` adds received bytes; ``next()`` returns the next frame, ``None`` when more
    bytes are needed, or raises ``DecodeError``. After a non-fatal error the offending frame is
    consumed and ``next()`` goes on with the following one; after a fatal one the decoder stays
    failed. ``eof()`` reports a stream that ended inside a frame."""

    __slots__ = (
        "_buf",
        "_discard",
        "_failed",
        "_pos",
        "_subjects",
        "max_headers",
        "max_payload",
        "max_subject",
    )

    def __init__(
        self,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_subject: int = MAX_SUBJECT,
    ) -> None:
        self.max_payload = max_payload
        self.max_headers = max_headers
        self.max_subject = max_subject
        self._buf = bytearray()
        self._pos = 0
        self._discard = 0
        self._failed: DecodeError | None = None
        # Literal subjects already checked, by their bytes.
        self._subjects: dict[bytes, str] = {}

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded."""
        return len(self._buf) - self._pos

    @property
    def at_boundary(self) -> bool:
        """Whether what is buffered is whole frames only (a WebSocket message must end on a
        frame boundary, section 18)."""
        if self._discard:
            return False
        buf = self._buf
        at = self._pos
        end = len(buf)
        while end - at >= HEADER_LEN:
            sl, hl, pl = _LENGTHS.unpack_from(buf, at + 22)
            at += HEADER_LEN + sl + hl + pl
        return at == end

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Adds received bytes."""
        if self._failed is not None:
            return
        if self._discard:
            n = min(self._discard, len(data))
            self._discard -= n
            if n == len(data):
                return
            data = memoryview(data)[n:]
        if self._pos:
            if self._pos == len(self._buf):
                self._buf.clear()
            else:
                del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def _fail(self, e: DecodeError) -> DecodeError:
        self._failed = e
        self._buf = bytearray()
        self._pos = 0
        return e

    def next(self) -> Frame | None:
        """The next frame; ``None`` when more bytes are needed. Raises ``DecodeError``."""
        if self._failed is not None:
            raise self._failed
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < HEADER_LEN:
            if avail and buf[pos : pos + min(4, avail)] != MAGIC[: min(4, avail)]:
                raise self._fail(DecodeError("bad_magic", "bad magic: not a mitto frame"))
            return None
        magic, version, flags, ftype, kind, fid, aux, status, sl, hl, pl = HEADER.unpack_from(buf, pos)
        if magic != MAGIC:
            raise self._fail(DecodeError("bad_magic", "bad magic: not a mitto frame"))
        if version != 1:
            raise self._fail(
                DecodeError("unsupported_version", f"unsupported protocol version {version}", fid)
            )
        if pl > self.max_payload or hl > self.max_headers or sl > self.max_subject:
            total = HEADER_LEN + sl + hl + pl
            take = min(total, avail)
            self._pos = pos + take
            self._discard = total - take
            if pl > self.max_payload:
                raise DecodeError(
                    "payload_too_large", f"payload of {pl} bytes exceeds the limit of {self.max_payload}", fid
                )
            if hl > self.max_headers:
                raise DecodeError(
                    "headers_too_large",
                    f"headers block of {hl} bytes exceeds the limit of {self.max_headers}",
                    fid,
                )
            raise DecodeError(
                "subject_too_long", f"subject of {sl} bytes exceeds the limit of {self.max_subject}", fid
            )
        total = HEADER_LEN + sl + hl + pl
        if avail < total:
            return None
        a = pos + HEADER_LEN
        b = a + sl
        c = b + hl
        end = c + pl
        self._pos = end
        subject_b = bytes(buf[a:b]) if sl else b""
        headers_b = bytes(buf[b:c]) if hl else b""
        if pl <= 4096:
            payload = bytes(buf[c:end])
        else:
            with memoryview(buf) as mv:
                payload = bytes(mv[c:end])
        return self._check(ftype, flags, kind, fid, aux, status, subject_b, headers_b, payload)

    def _check(
        self,
        ftype: int,
        flags: int,
        kind: int,
        fid: int,
        aux: int,
        status: int,
        subject_b: bytes,
        headers_b: bytes,
        payload: bytes,
    ) -> Frame:
        rules = FRAME_RULES.get(ftype)
        if rules is None:
            raise DecodeError("unknown_frame_type", f"unknown frame type 0x{ftype:02x}", fid)
        rule, needs_sid, allowed = rules
        if flags & ~allowed:
            if flags & RESERVED_FLAGS:
                raise DecodeError(
                    "reserved_flags", f"reserved flag bits set: 0x{flags & RESERVED_FLAGS:02x}", fid
                )
            low = next(n for bit, n in FLAG_NAMES if flags & ~allowed & bit)
            raise DecodeError("flag_not_allowed", f"flag {low} is not valid on {type_name(ftype)}", fid)
        if 6 <= kind <= 127:
            raise DecodeError("reserved_kind", f"reserved message kind {kind}", fid)
        if needs_sid and aux == 0:
            raise DecodeError(
                "missing_subscription_id", f"{type_name(ftype)} requires a non-zero subscription id", fid
            )
        subject = ""
        if rule is SubjectRule.NONE:
            if subject_b:
                raise DecodeError("unexpected_subject", f"{type_name(ftype)} must not carry a subject", fid)
        elif not subject_b:
            raise DecodeError("missing_subject", f"{type_name(ftype)} requires a subject", fid)
        else:
            literal = rule is _LITERAL
            cached = self._subjects.get(subject_b) if literal else None
            if cached is not None:
                subject = cached
            else:
                try:
                    subject = subject_b.decode()
                except UnicodeDecodeError:
                    raise DecodeError("subject_not_utf8", "subject is not valid UTF-8", fid) from None
                why = subject_error(subject, literal=literal)
                if why is not None:
                    raise DecodeError("invalid_subject", f"invalid subject: {why}", fid)
                if literal:
                    if len(self._subjects) >= _SUBJECT_CACHE_MAX:
                        self._subjects.clear()
                    self._subjects[subject_b] = subject
        headers = None
        if headers_b:
            try:
                headers = Headers.decode(headers_b)
            except MalformedHeaders as e:
                raise DecodeError("malformed_headers", f"malformed headers: {e}", fid) from None
        body: object = None
        if ftype not in _NO_BODY:
            try:
                body = _body(ftype, flags, payload)
            except MalformedBody as e:
                raise DecodeError("malformed_body", f"malformed {type_name(ftype)} body: {e}", fid) from None
        if flags & _COMPRESSED:
            if len(payload) < 4:
                raise DecodeError(
                    "decompression", "compressed payload is corrupt: missing length prefix", fid
                )
            (n,) = _U32.unpack_from(payload)
            if n > self.max_payload:
                raise DecodeError(
                    "payload_too_large", f"payload of {n} bytes exceeds the limit of {self.max_payload}", fid
                )
        return Frame(ftype, flags, kind, fid, aux, status, subject, headers, payload, body)

    def eof(self) -> None:
        """The stream ended: raises ``truncated`` if it ended inside a frame."""
        if self._failed is not None:
            raise self._failed
        left = len(self._buf) - self._pos + self._discard
        if left:
            raise self._fail(
                DecodeError("truncated", f"stream ended inside a frame ({left} bytes left over)")
            )


_NO_BODY = frozenset(
    int(t)
    for t in (
        FrameType.PUBLISH,
        FrameType.EVENT,
        FrameType.ACK,
        FrameType.PING,
        FrameType.PONG,
        FrameType.REQUEST,
        FrameType.RESPONSE,
        FrameType.STREAM,
        FrameType.CANCEL,
        FrameType.UNREGISTER,
    )
)
_COMPRESSED = int(Flag.COMPRESSED)
_LITERAL = SubjectRule.LITERAL


def _body(ftype: int, flags: int, payload: bytes) -> object:
    if ftype == FrameType.HELLO:
        return Hello.decode(payload)
    if ftype == FrameType.SUBSCRIBE or ftype == FrameType.REGISTER:
        return SubscribeOptions.decode(payload)
    if ftype == FrameType.UNSUBSCRIBE or ftype == FrameType.NACK:
        return decode_opt_u32(payload)
    if ftype == FrameType.CREDIT:
        return decode_credit(payload)
    if ftype == FrameType.ERROR or ftype == FrameType.CLOSE:
        return decode_reason(payload)
    if ftype == FrameType.HEALTH or ftype == FrameType.STATS:
        if not flags & Flag.REPLY:
            if payload:
                raise MalformedBody("a query carries no body")
            return None
        if ftype == FrameType.HEALTH:
            return HealthReport.decode(payload)
        return StatsReport.decode(payload)
    return None
