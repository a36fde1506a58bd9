"""Bodies of control frames (PROTOCOL.md section 7): HELLO, SUBSCRIBE / REGISTER options, the
u32 bodies, reasons, and the MessagePack HEALTH / STATS reports."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .constants import VERSION_MAJOR, VERSION_MINOR
from .errors import EncodeError
from .subject import FORBIDDEN_CHARS


class MalformedBody(ValueError):
    """A body breaks section 7 (the reason is the spec's, e.g. ``"truncated"``)."""


_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_HELLO_FIXED = struct.Struct(">BBHIIII")
_SUB_FIXED = struct.Struct(">BBHIIII")


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise MalformedBody("truncated")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def bytes16(self) -> bytes:
        (n,) = _U16.unpack(self.take(2))
        return self.take(n)

    def str16(self, what: str) -> str:
        try:
            return self.bytes16().decode()
        except UnicodeDecodeError:
            raise MalformedBody(f"{what} is not UTF-8") from None


def _put16(out: bytearray, b: bytes, what: str) -> None:
    if len(b) > 0xFFFF:
        raise EncodeError(f"{what} is longer than 65535 bytes")
    out += _U16.pack(len(b))
    out += b


@dataclass
class Hello:
    """The HELLO body: the client's offer, or the server's agreed values (REPLY)."""

    major: int = VERSION_MAJOR
    minor: int = VERSION_MINOR
    flags: int = 0
    features: int = 0
    max_payload: int = 0
    max_headers: int = 0
    keepalive_ms: int = 0
    name: str = ""
    client_id: str = ""
    session: str = ""
    user: str = ""
    auth: bytes = b""

    #: HELLO flag: the server resumed the session the client named.
    RESUMED = 0x0001

    def encode(self) -> bytes:
        out = bytearray(
            _HELLO_FIXED.pack(
                self.major,
                self.minor,
                self.flags,
                self.features,
                self.max_payload,
                self.max_headers,
                self.keepalive_ms,
            )
        )
        _put16(out, self.name.encode(), "name")
        _put16(out, self.client_id.encode(), "client id")
        _put16(out, self.session.encode(), "session")
        _put16(out, self.user.encode(), "user")
        _put16(out, bytes(self.auth), "auth")
        return bytes(out)

    @classmethod
    def decode(cls, b: bytes) -> Hello:
        r = _Reader(b)
        major, minor, flags, features, max_payload, max_headers, keepalive_ms = _HELLO_FIXED.unpack(
            r.take(_HELLO_FIXED.size)
        )
        return cls(
            major,
            minor,
            flags,
            features,
            max_payload,
            max_headers,
            keepalive_ms,
            name=r.str16("name"),
            client_id=r.str16("client id"),
            session=r.str16("session"),
            user=r.str16("user"),
            auth=r.bytes16(),
        )


class Delivery(enum.IntEnum):
    """Delivery mode of a subscription."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1


class Policy(enum.IntEnum):
    """Slow-consumer policy of a subscription."""

    SERVER_DEFAULT = 0
    BLOCK = 1
    DROP_OLDEST = 2
    DROP_NEWEST = 3
    DISCONNECT = 4


DELIVERY_NAMES = {Delivery.AT_MOST_ONCE: "AtMostOnce", Delivery.AT_LEAST_ONCE: "AtLeastOnce"}
POLICY_NAMES = {
    Policy.SERVER_DEFAULT: "ServerDefault",
    Policy.BLOCK: "Block",
    Policy.DROP_OLDEST: "DropOldest",
    Policy.DROP_NEWEST: "DropNewest",
    Policy.DISCONNECT: "Disconnect",
}


@dataclass
class SubscribeOptions:
    """SUBSCRIBE / REGISTER options (section 7.2); all defaults encode as an empty body."""

    delivery: Delivery = Delivery.AT_MOST_ONCE
    policy: Policy = Policy.SERVER_DEFAULT
    max_pending: int = 0
    ack_wait_ms: int = 0
    max_deliver: int = 0
    credit: int = 0
    queue: str | None = None
    #: (1.1) durable name: what the subscription has not had acknowledged is kept for the next
    #: subscriber of the same name and user.
    durable: str | None = None

    #: The longest durable name, in bytes.
    MAX_DURABLE = 255

    def is_default(self) -> bool:
        return self == SubscribeOptions()

    def encode(self) -> bytes:
        if self.is_default():
            return b""
        q = (self.queue or "").encode()
        if FORBIDDEN_CHARS.search(self.queue or ""):
            raise EncodeError("a queue group has no whitespace or control characters")
        out = bytearray(
            _SUB_FIXED.pack(
                int(self.delivery),
                int(self.policy),
                0,
                self.max_pending,
                self.ack_wait_ms,
                self.max_deliver,
                self.credit,
            )
        )
        _put16(out, q, "queue group")
        if self.durable:
            d = self.durable.encode()
            if len(d) > self.MAX_DURABLE or FORBIDDEN_CHARS.search(self.durable):
                raise EncodeError("a durable name is 1 to 255 bytes without whitespace or control characters")
            _put16(out, d, "durable name")
        return bytes(out)

    @classmethod
    def decode(cls, b: bytes) -> SubscribeOptions:
        if not b:
            return cls()
        r = _Reader(b)
        d, p, _, max_pending, ack_wait_ms, max_deliver, credit = _SUB_FIXED.unpack(r.take(_SUB_FIXED.size))
        if d > 1:
            raise MalformedBody("unknown delivery mode")
        if p > 4:
            raise MalformedBody("unknown slow-consumer policy")
        queue = r.str16("queue group")
        if FORBIDDEN_CHARS.search(queue):
            raise MalformedBody("queue group has whitespace or control characters")
        # 1.1: a durable name may follow; when anything follows, it is a whole string16.
        durable = r.str16("durable name") if r.pos < len(r.buf) else ""
        if FORBIDDEN_CHARS.search(durable):
            raise MalformedBody("durable name has whitespace or control characters")
        if len(durable.encode()) > cls.MAX_DURABLE:
            raise MalformedBody("durable name is longer than 255 bytes")
        return cls(
            Delivery(d),
            Policy(p),
            max_pending,
            ack_wait_ms,
            max_deliver,
            credit,
            queue or None,
            durable or None,
        )


def encode_u32(n: int) -> bytes:
    return _U32.pack(n)


def decode_credit(b: bytes) -> int:
    """The u32 of a CREDIT body (exactly 4 bytes)."""
    if len(b) != 4:
        raise MalformedBody("body must be 4 bytes")
    return int(_U32.unpack(b)[0])


def decode_opt_u32(b: bytes) -> int | None:
    """UNSUBSCRIBE's ``after`` / NACK's ``delay_ms``: empty or exactly 4 bytes."""
    if not b:
        return None
    if len(b) != 4:
        raise MalformedBody("body must be empty or 4 bytes")
    return int(_U32.unpack(b)[0])


def decode_reason(b: bytes) -> str:
    """The UTF-8 reason of an ERROR or CLOSE."""
    try:
        return bytes(b).decode()
    except UnicodeDecodeError:
        raise MalformedBody("reason is not UTF-8") from None


HEALTH_STATES = ("serving", "not_serving", "draining")


@dataclass
class HealthReport:
    """A HEALTH reply."""

    state: str
    uptime_ms: int
    server: str
    detail: str | None = None

    def encode(self) -> bytes:
        m: dict[str, Any] = {"state": self.state, "uptime_ms": self.uptime_ms, "server": self.server}
        if self.detail is not None:
            m["detail"] = self.detail
        return bytes(msgpack.packb(m, use_bin_type=True))

    @classmethod
    def decode(cls, b: bytes) -> HealthReport:
        m = _unpack_map(b, "not a health report map")
        state, uptime, server, detail = (m.get(k) for k in ("state", "uptime_ms", "server", "detail"))
        if (
            state not in HEALTH_STATES
            or not _is_u64(uptime)
            or not isinstance(server, str)
            or not (detail is None or isinstance(detail, str))
        ):
            raise MalformedBody("not a health report map")
        return cls(str(state), uptime if isinstance(uptime, int) else 0, server, detail)


@dataclass
class StatsReport:
    """A STATS reply: counter name -> value."""

    values: dict[str, int] = field(default_factory=dict)

    def encode(self) -> bytes:
        m = {k: self.values[k] for k in sorted(self.values, key=lambda k: k.encode())}
        return bytes(msgpack.packb(m, use_bin_type=True))

    @classmethod
    def decode(cls, b: bytes) -> StatsReport:
        m = _unpack_map(b, "not a map of counters")
        if not all(_is_u64(v) for v in m.values()):
            raise MalformedBody("not a map of counters")
        return cls(dict(m))


def _is_u64(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 64


def _unpack_map(b: bytes, why: str) -> dict[str, Any]:
    try:
        m = msgpack.unpackb(bytes(b), raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError):
        raise MalformedBody(why) from None
    if not isinstance(m, dict) or not all(isinstance(k, str) for k in m):
        raise MalformedBody(why)
    return m
