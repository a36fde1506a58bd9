"""Errors of the protocol core: what a received byte stream did wrong (``DecodeError``, with
the spec's error code), and what a caller asked that cannot be encoded (``EncodeError``)."""

from __future__ import annotations

from .status import Status

#: The spec's decode error codes (section 14.3) and the status each is answered with.
CODE_STATUS: dict[str, int] = {
    "bad_magic": Status.PROTOCOL_ERROR,
    "unsupported_version": Status.UNSUPPORTED_VERSION,
    "truncated": Status.PROTOCOL_ERROR,
    "payload_too_large": Status.PAYLOAD_TOO_LARGE,
    "headers_too_large": Status.PAYLOAD_TOO_LARGE,
    "subject_too_long": Status.PAYLOAD_TOO_LARGE,
    "unknown_frame_type": Status.UNSUPPORTED_FEATURE,
    "reserved_flags": Status.BAD_REQUEST,
    "flag_not_allowed": Status.BAD_REQUEST,
    "reserved_kind": Status.BAD_REQUEST,
    "missing_subscription_id": Status.BAD_REQUEST,
    "missing_subject": Status.BAD_REQUEST,
    "unexpected_subject": Status.BAD_REQUEST,
    "subject_not_utf8": Status.INVALID_SUBJECT,
    "invalid_subject": Status.INVALID_SUBJECT,
    "malformed_headers": Status.BAD_REQUEST,
    "malformed_body": Status.BAD_REQUEST,
    "decompression": Status.BAD_REQUEST,
}

_FATAL = frozenset({"bad_magic", "unsupported_version", "truncated"})


class DecodeError(Exception):
    """A received frame (or the byte stream) is malformed.

    ``code`` is the spec's error code (``"flag_not_allowed"``), ``status`` the status of the
    ERROR frame that answers it, ``id`` that frame's id, ``fatal`` whether the stream can no
    longer be trusted (send ERROR, CLOSE, close)."""

    def __init__(self, code: str, reason: str, frame_id: int = 0) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.id = frame_id
        self.status = CODE_STATUS[code]
        self.fatal = code in _FATAL

    def __repr__(self) -> str:
        return f"DecodeError({self.code!r}, {self.reason!r}, id={self.id})"


class EncodeError(ValueError):
    """A frame cannot be encoded as asked (a field too long, an invalid subject or key).

    ``status`` says which status an operation that fails this way reports."""

    def __init__(self, reason: str, status: int = Status.BAD_REQUEST) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
