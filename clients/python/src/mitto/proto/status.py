"""Status codes (PROTOCOL.md section 13): names, and which are retryable or caller errors."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """The status codes 1.0 defines. A frame's status is a plain ``int``: codes this version
    does not define are passed through unchanged."""

    OK = 0
    NOT_FOUND = 1
    METHOD_NOT_FOUND = 2
    EXECUTION_ERROR = 3
    TIMEOUT = 4
    QUOTA_EXCEEDED = 5
    BACKPRESSURE_REJECTION = 6
    UNAUTHORIZED = 7
    FORBIDDEN = 8
    CANCELLED = 9
    NO_RESPONDERS = 10
    BAD_REQUEST = 11
    PAYLOAD_TOO_LARGE = 12
    UNSUPPORTED_VERSION = 13
    PROTOCOL_ERROR = 14
    UNAVAILABLE = 15
    INTERNAL = 16
    INVALID_SUBJECT = 17
    UNSUPPORTED_FEATURE = 18
    SLOW_CONSUMER = 19
    ALREADY_EXISTS = 20
    UNEXPECTED_FRAME = 21


_RETRYABLE = frozenset(
    {
        Status.TIMEOUT,
        Status.QUOTA_EXCEEDED,
        Status.BACKPRESSURE_REJECTION,
        Status.NO_RESPONDERS,
        Status.UNAVAILABLE,
        Status.SLOW_CONSUMER,
    }
)

_CALLER_ERROR = frozenset(
    {
        Status.NOT_FOUND,
        Status.METHOD_NOT_FOUND,
        Status.UNAUTHORIZED,
        Status.FORBIDDEN,
        Status.BAD_REQUEST,
        Status.PAYLOAD_TOO_LARGE,
        Status.UNSUPPORTED_VERSION,
        Status.PROTOCOL_ERROR,
        Status.INVALID_SUBJECT,
        Status.UNSUPPORTED_FEATURE,
        Status.ALREADY_EXISTS,
        Status.UNEXPECTED_FRAME,
    }
)


def status_name(code: int) -> str:
    """The canonical lower-case name (``"no_responders"``), or ``"status_<n>"`` when undefined."""
    try:
        return Status(code).name.lower()
    except ValueError:
        return f"status_{code}"


def is_retryable(code: int) -> bool:
    """Whether the same operation may succeed if tried again later."""
    return code in _RETRYABLE


def is_caller_error(code: int) -> bool:
    """Whether the sender's input is at fault (retrying unchanged cannot help)."""
    return code in _CALLER_ERROR
