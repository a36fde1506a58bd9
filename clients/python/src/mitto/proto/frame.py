"""One frame: the 32-byte header's fields, the subject, the headers block and the payload
(PROTOCOL.md sections 1.2 and 2), and its encoding."""

from __future__ import annotations

import struct

from .constants import HEADER_LEN, MAGIC, MAX_SUBJECT, U32_MAX, flag_names, type_name
from .errors import EncodeError
from .headers import Headers
from .status import Status

#: magic, version, flags, type, kind, id, aux, status, subject_len, headers_len, payload_len
HEADER = struct.Struct(">4sBBBBQIHHII")
_HEAD = HEADER

assert HEADER.size == HEADER_LEN


class Frame:
    """A decoded (or to be encoded) frame.

    ``headers`` is ``None`` for an empty headers block. ``body`` holds the parsed body of a
    control frame after decoding (``Hello``, ``SubscribeOptions``, an ``int``, a reason, a
    report), else ``None``."""

    __slots__ = ("aux", "body", "flags", "headers", "id", "kind", "payload", "status", "subject", "type")

    def __init__(
        self,
        type: int,
        flags: int = 0,
        kind: int = 0,
        id: int = 0,
        aux: int = 0,
        status: int = 0,
        subject: str = "",
        headers: Headers | None = None,
        payload: bytes = b"",
        body: object = None,
    ) -> None:
        self.type = type
        self.flags = flags
        self.kind = kind
        self.id = id
        self.aux = aux
        self.status = status
        self.subject = subject
        self.headers = headers
        self.payload = payload
        self.body = body

    def __repr__(self) -> str:
        parts = [type_name(self.type), f"id={self.id}"]
        if self.flags:
            parts.append("|".join(flag_names(self.flags)))
        if self.aux:
            parts.append(f"aux={self.aux}")
        if self.status:
            parts.append(f"status={self.status}")
        if self.subject:
            parts.append(repr(self.subject))
        if self.headers:
            parts.append(repr(self.headers))
        parts.append(f"{len(self.payload)}B")
        return f"Frame({', '.join(parts)})"

    def encode(self) -> bytes:
        """The frame's bytes."""
        return b"".join(self.encode_parts())

    def encode_parts(self) -> list[bytes]:
        """The frame's bytes in pieces (header with subject and headers, then the payload), so
        that a large payload is written without being copied into one buffer."""
        subject = self.subject.encode() if self.subject else b""
        hb = self.headers.encode() if self.headers else b""
        return [
            pack(
                self.type,
                self.flags,
                self.kind,
                self.id,
                self.aux,
                self.status,
                subject,
                hb,
                len(self.payload),
            ),
            self.payload,
        ]


def pack(
    type: int,
    flags: int,
    kind: int,
    id: int,
    aux: int,
    status: int,
    subject: bytes,
    headers: bytes,
    payload_len: int,
) -> bytes:
    """The header, subject and headers block of a frame whose payload follows."""
    if len(subject) > MAX_SUBJECT:
        raise EncodeError(
            f"subject of {len(subject)} bytes exceeds the limit of {MAX_SUBJECT}", Status.PAYLOAD_TOO_LARGE
        )
    if len(headers) > U32_MAX or payload_len > U32_MAX:
        raise EncodeError("a section is longer than 4 GiB", Status.PAYLOAD_TOO_LARGE)
    try:
        head = _HEAD.pack(
            MAGIC, 1, flags, type, kind, id, aux, status, len(subject), len(headers), payload_len
        )
    except struct.error as e:
        raise EncodeError(f"a header field is out of range: {e}") from None
    if subject or headers:
        return head + subject + headers
    return head
