"""Answers that carry a status reach the peer whatever limits it agreed to (PROTOCOL.md section
14.5): their reason is shortened to fit, never the answer dropped."""

from __future__ import annotations

import struct

from .constants import Flag, FrameType
from .frame import Frame
from .status import Status

_U32 = struct.Struct(">I")


def utf8_prefix(b: bytes, limit: int) -> bytes:
    """The longest prefix of `b` at most `limit` bytes long that is valid UTF-8 (a cut inside a
    character drops the whole character)."""
    cut = b[: max(0, limit)]
    try:
        cut.decode()
    except UnicodeDecodeError as e:
        return cut[: e.start]
    return cut


def _compressed_over(payload: bytes, max_payload: int) -> bool:
    return len(payload) < 4 or _U32.unpack_from(payload)[0] > max_payload


def _shortened(f: Frame, payload: bool, headers: bool, max_payload: int) -> Frame:
    g = Frame(f.type, f.flags, f.kind, f.id, f.aux, f.status, f.subject, f.headers, f.payload)
    if headers:
        g.headers = None
    if payload:
        if g.flags & Flag.COMPRESSED:
            # A compressed reason cannot be cut: the status says enough.
            g.flags &= ~Flag.COMPRESSED
            g.payload = b""
        else:
            g.payload = utf8_prefix(g.payload, max_payload)
    return g


def fit_answer(f: Frame, max_payload: int, max_headers: int) -> Frame | None:
    """The frame to send in place of `f` to a peer that agreed to these limits, or ``None`` when
    `f` may go as it is. ERROR, CLOSE and failed RESPONSEs keep id, ``aux`` and status with the
    reason cut at a UTF-8 boundary and oversize headers left out; a RESPONSE OK that does not fit
    becomes RESPONSE PAYLOAD_TOO_LARGE, a HEALTH / STATS report ERROR PAYLOAD_TOO_LARGE."""
    hb = len(f.headers.encode()) if f.headers else 0
    payload_over = len(f.payload) > max_payload or bool(
        f.flags & Flag.COMPRESSED and _compressed_over(f.payload, max_payload)
    )
    headers_over = hb > max_headers
    if not payload_over and not headers_over:
        return None
    t = f.type

    def refused(what: str) -> bytes:
        return (
            f"the {what} ({len(f.payload)} bytes of payload, {hb} of headers) exceeds your limits "
            f"({max_payload} and {max_headers})"
        ).encode()

    if t in (FrameType.ERROR, FrameType.CLOSE) or (t == FrameType.RESPONSE and f.status != Status.OK):
        return _shortened(f, payload_over, headers_over, max_payload)
    if t == FrameType.RESPONSE:
        r = Frame(FrameType.RESPONSE, id=f.id, status=Status.PAYLOAD_TOO_LARGE, payload=refused("result"))
        return _shortened(r, True, False, max_payload)
    if t in (FrameType.HEALTH, FrameType.STATS) and f.flags & Flag.REPLY:
        e = Frame(FrameType.ERROR, id=f.id, status=Status.PAYLOAD_TOO_LARGE, payload=refused("report"))
        return _shortened(e, True, False, max_payload)
    return None
