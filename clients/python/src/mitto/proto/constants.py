"""Protocol constants: frame types, flags, message kinds, features and limits (PROTOCOL.md
sections 1.4, 3, 4 and 8.3)."""

from __future__ import annotations

import enum

MAGIC = b"MITO"
VERSION_MAJOR = 1
VERSION_MINOR = 1
HEADER_LEN = 32

DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024
DEFAULT_MAX_HEADERS = 64 * 1024
MAX_SUBJECT = 4096
#: Limits until HELLO completes (section 8.1), and the largest frame they allow.
HANDSHAKE_MAX_PAYLOAD = 4096
HANDSHAKE_MAX_HEADERS = 1024
HANDSHAKE_MAX_SUBJECT = 256
HANDSHAKE_MAX_FRAME = HEADER_LEN + HANDSHAKE_MAX_SUBJECT + HANDSHAKE_MAX_HEADERS + HANDSHAKE_MAX_PAYLOAD
INITIAL_STREAM_CREDIT = 64

#: The most significant bit of a call id: set on calls opened by the accepting peer.
SERVER_CALL_BIT = 1 << 63
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1


class FrameType(enum.IntEnum):
    """Frame types (header byte 6)."""

    HELLO = 0x01
    SUBSCRIBE = 0x02
    UNSUBSCRIBE = 0x03
    PUBLISH = 0x04
    EVENT = 0x05
    ACK = 0x06
    ERROR = 0x07
    PING = 0x08
    PONG = 0x09
    CLOSE = 0x0A
    REQUEST = 0x0B
    RESPONSE = 0x0C
    STREAM = 0x0D
    CANCEL = 0x0E
    CREDIT = 0x0F
    NACK = 0x10
    HEALTH = 0x11
    STATS = 0x12
    REGISTER = 0x13
    UNREGISTER = 0x14


class Flag(enum.IntFlag):
    """Flag bits (header byte 5)."""

    NONE = 0
    ACK_REQUIRED = 0x01
    COMPRESSED = 0x02
    URGENT = 0x04
    START = 0x08
    END = 0x10
    REPLY = 0x20


RESERVED_FLAGS = 0xC0

FLAG_NAMES: tuple[tuple[int, str], ...] = (
    (0x01, "ACK_REQUIRED"),
    (0x02, "COMPRESSED"),
    (0x04, "URGENT"),
    (0x08, "START"),
    (0x10, "END"),
    (0x20, "REPLY"),
)


class Kind(enum.IntEnum):
    """Message kinds (header byte 7); 128..=255 belong to applications."""

    NONE = 0
    EVENT = 1
    COMMAND = 2
    STATE = 3
    LOG = 4
    METRIC = 5


class Feature(enum.IntFlag):
    """HELLO feature bits (section 8.3)."""

    NONE = 0
    STREAMING = 0x01
    BATCHING = 0x02
    PRIORITY = 0x04
    COMPRESSION_LZ4 = 0x08
    ACKS = 0x10
    FLOW_CONTROL = 0x20
    SESSION_RESUME = 0x40
    TRACE_CONTEXT = 0x80


FEATURE_NAMES: tuple[tuple[int, str], ...] = tuple((int(f), f.name or "") for f in Feature if f)

_MSG = Flag.ACK_REQUIRED | Flag.COMPRESSED | Flag.URGENT
_BODY = Flag.COMPRESSED | Flag.URGENT


class SubjectRule(enum.Enum):
    """Whether a frame type carries a subject (table 3.1)."""

    NONE = 0
    LITERAL = 1
    FILTER = 2


# type -> (subject rule, sid required, allowed flags)
_RULES: dict[int, tuple[SubjectRule, bool, int]] = {
    FrameType.HELLO: (SubjectRule.NONE, False, Flag.REPLY),
    FrameType.SUBSCRIBE: (SubjectRule.FILTER, True, Flag.ACK_REQUIRED),
    FrameType.UNSUBSCRIBE: (SubjectRule.NONE, True, Flag.ACK_REQUIRED),
    FrameType.PUBLISH: (SubjectRule.LITERAL, False, _MSG),
    FrameType.EVENT: (SubjectRule.LITERAL, True, _MSG),
    FrameType.ACK: (SubjectRule.NONE, False, 0),
    FrameType.ERROR: (SubjectRule.NONE, False, 0),
    FrameType.PING: (SubjectRule.NONE, False, 0),
    FrameType.PONG: (SubjectRule.NONE, False, 0),
    FrameType.CLOSE: (SubjectRule.NONE, False, 0),
    FrameType.REQUEST: (SubjectRule.LITERAL, False, _BODY | Flag.START),
    FrameType.RESPONSE: (SubjectRule.NONE, False, _BODY),
    FrameType.STREAM: (SubjectRule.NONE, False, _BODY | Flag.END),
    FrameType.CANCEL: (SubjectRule.NONE, False, 0),
    FrameType.CREDIT: (SubjectRule.NONE, False, 0),
    FrameType.NACK: (SubjectRule.NONE, False, 0),
    FrameType.HEALTH: (SubjectRule.NONE, False, Flag.REPLY),
    FrameType.STATS: (SubjectRule.NONE, False, Flag.REPLY),
    FrameType.REGISTER: (SubjectRule.FILTER, True, Flag.ACK_REQUIRED),
    FrameType.UNREGISTER: (SubjectRule.NONE, True, Flag.ACK_REQUIRED),
}
# Plain ints: enum arithmetic costs microseconds per frame on the hot path.
FRAME_RULES: dict[int, tuple[SubjectRule, bool, int]] = {
    int(t): (r, s, int(a)) for t, (r, s, a) in _RULES.items()
}


def flag_names(flags: int) -> list[str]:
    """The names of the defined flags set in `flags`, in bit order."""
    return [name for bit, name in FLAG_NAMES if flags & bit]


def feature_names(features: int) -> list[str]:
    """The names of the known features set in `features`, in bit order."""
    return [name for bit, name in FEATURE_NAMES if features & bit]


def type_name(t: int) -> str:
    """The upper-case name of frame type `t`, or its hex value when undefined."""
    try:
        return FrameType(t).name
    except ValueError:
        return f"0x{t:02x}"
