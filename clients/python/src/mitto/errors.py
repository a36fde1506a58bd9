"""The exceptions the client raises: each carries the protocol status, its name, the reason,
and whether trying again may help."""

from __future__ import annotations

import builtins

from .proto.status import Status, is_retryable, status_name


class MittoError(Exception):
    """A failed operation: ``status`` (an int, see ``mitto.Status``), ``reason``, ``retryable``,
    and ``remote`` (the peer reported it, rather than this side detecting it)."""

    def __init__(
        self, status: int, reason: str = "", *, remote: bool = False, retryable: bool | None = None
    ) -> None:
        super().__init__(f"{status_name(status)}: {reason}" if reason else status_name(status))
        self.status = status
        self.reason = reason
        self.remote = remote
        self.retryable = is_retryable(status) if retryable is None else retryable

    @property
    def status_name(self) -> str:
        """The status's canonical name (``"no_responders"``)."""
        return status_name(self.status)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status_name}, {self.reason!r})"


class TimeoutError(MittoError, builtins.TimeoutError):
    """A deadline passed (TIMEOUT)."""


class NoRespondersError(MittoError):
    """Nobody answers the subject (NO_RESPONDERS)."""


class UnavailableError(MittoError):
    """The connection was lost or closed, or the peer is draining (UNAVAILABLE)."""


class ConnectionClosedError(UnavailableError):
    """The client was closed."""


class ProtocolError(MittoError):
    """The peer broke the protocol (PROTOCOL_ERROR, UNSUPPORTED_VERSION, UNEXPECTED_FRAME)."""


class AuthorizationError(MittoError):
    """Authentication failed or is missing (UNAUTHORIZED)."""


class ForbiddenError(MittoError):
    """The authenticated user may not do this (FORBIDDEN)."""


class SlowConsumerError(MittoError):
    """A subscription fell too far behind (SLOW_CONSUMER)."""


class PayloadTooLargeError(MittoError):
    """A length exceeds the negotiated limit (PAYLOAD_TOO_LARGE)."""


class InvalidSubjectError(MittoError):
    """A subject or filter is syntactically invalid (INVALID_SUBJECT)."""


class CallCancelledError(MittoError):
    """The call was cancelled (CANCELLED)."""


_BY_STATUS: dict[int, type[MittoError]] = {
    Status.TIMEOUT: TimeoutError,
    Status.NO_RESPONDERS: NoRespondersError,
    Status.UNAVAILABLE: UnavailableError,
    Status.PROTOCOL_ERROR: ProtocolError,
    Status.UNSUPPORTED_VERSION: ProtocolError,
    Status.UNEXPECTED_FRAME: ProtocolError,
    Status.UNAUTHORIZED: AuthorizationError,
    Status.FORBIDDEN: ForbiddenError,
    Status.SLOW_CONSUMER: SlowConsumerError,
    Status.PAYLOAD_TOO_LARGE: PayloadTooLargeError,
    Status.INVALID_SUBJECT: InvalidSubjectError,
    Status.CANCELLED: CallCancelledError,
}


def error_for(
    status: int, reason: str = "", *, remote: bool = False, retryable: bool | None = None
) -> MittoError:
    """The exception of the class that matches `status`."""
    cls = _BY_STATUS.get(status, MittoError)
    return cls(status, reason, remote=remote, retryable=retryable)


def remote_error(status: int, reason: bytes | str) -> MittoError:
    """The error a peer reported in an ERROR, RESPONSE or CLOSE frame."""
    text = reason if isinstance(reason, str) else bytes(reason).decode(errors="replace")
    return error_for(status, text, remote=True)


def connection_lost(why: str) -> UnavailableError:
    return UnavailableError(Status.UNAVAILABLE, f"connection lost: {why}", retryable=True)
