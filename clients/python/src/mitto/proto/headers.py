"""The headers block: ordered entries with compact ids for well-known keys (PROTOCOL.md
section 6)."""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Union

from .errors import EncodeError
from .subject import FORBIDDEN_CHARS


class WellKnown(enum.IntEnum):
    """The well-known keys and their compact ids."""

    CONTENT_TYPE = 1
    CORRELATION_ID = 2
    REPLY_TO = 3
    DEADLINE = 4
    TRACEPARENT = 5
    TRACESTATE = 6
    TTL = 7
    AUTH = 8
    #: (1.1) how many times the broker has delivered this message to the subscription, this
    #: delivery included; on redeliveries only.
    DELIVERY_COUNT = 9


WELL_KNOWN_NAMES: dict[int, str] = {
    1: "content-type",
    2: "correlation-id",
    3: "reply-to",
    4: "deadline",
    5: "traceparent",
    6: "tracestate",
    7: "ttl",
    8: "auth",
    9: "delivery-count",
}
_BY_NAME: dict[str, int] = {v: k for k, v in WELL_KNOWN_NAMES.items()}
_FIXED_8 = frozenset({WellKnown.DEADLINE, WellKnown.TTL})
_FIXED_4 = frozenset({WellKnown.DELIVERY_COUNT})

HeaderValue = Union[str, bytes, bytearray, memoryview, int]
HeadersLike = Union["Headers", Mapping[str, HeaderValue], Iterable[tuple[str, HeaderValue]]]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class MalformedHeaders(ValueError):
    """A received headers block breaks section 6.1 (the reason is the spec's)."""


def well_known_id(name: str) -> int | None:
    """The compact id of a well-known key name, in any ASCII case."""
    if name.isascii():
        return _BY_NAME.get(name.lower())
    return None


def _value_bytes(key_id: int, value: HeaderValue) -> bytes:
    if isinstance(value, int):
        if key_id in _FIXED_4:
            if not 0 <= value < 1 << 32:
                raise EncodeError("delivery-count values are u32")
            return _U32.pack(value)
        if key_id not in _FIXED_8:
            raise EncodeError("only deadline, ttl and delivery-count take integer values")
        if not 0 <= value < 1 << 64:
            raise EncodeError("deadline and ttl values are u64")
        return _U64.pack(value)
    try:
        b = value.encode() if isinstance(value, str) else bytes(value)
    except UnicodeEncodeError:
        raise EncodeError("a header value is not valid UTF-8 (a lone surrogate)") from None
    if key_id in _FIXED_8 and len(b) != 8:
        raise EncodeError("deadline and ttl values must be 8 bytes")
    if key_id in _FIXED_4 and len(b) != 4:
        raise EncodeError("delivery-count values must be 4 bytes")
    if len(b) > 0xFFFF:
        raise EncodeError("a header value is at most 65535 bytes")
    return b


class Headers:
    """An ordered list of header entries. Keys may repeat; lookups return the first entry.

    Well-known keys (``content-type``, ``reply-to``, ``deadline``, ...) are given by name in any
    ASCII case and go on the wire by compact id; other keys are free-form and case-sensitive.
    Values are ``str`` (UTF-8), bytes, or an ``int`` for ``deadline`` (microseconds) and ``ttl``
    (milliseconds)."""

    __slots__ = ("_entries", "_wire")

    def __init__(self, items: HeadersLike | None = None) -> None:
        # (compact id or 0, key name, value); "#<id>" names a reserved compact id.
        self._entries: list[tuple[int, str, bytes]] = []
        self._wire: bytes | None = None
        if items is None:
            return
        if isinstance(items, Headers):
            self._entries = list(items._entries)
            self._wire = items._wire
            return
        pairs = items.items() if isinstance(items, Mapping) else items
        for k, v in pairs:
            self.add(k, v)

    def add(self, key: str, value: HeaderValue) -> Headers:
        """Appends an entry (and returns ``self``)."""
        kid = well_known_id(key)
        if kid is not None:
            self._entries.append((kid, WELL_KNOWN_NAMES[kid], _value_bytes(kid, value)))
        else:
            try:
                kb = key.encode()
            except UnicodeEncodeError:
                raise EncodeError(f"header key {key!r} is not valid UTF-8") from None
            if not kb or len(kb) > 255:
                raise EncodeError(f"header key {key!r} must be 1 to 255 bytes")
            if FORBIDDEN_CHARS.search(key):
                raise EncodeError(f"header key {key!r} has whitespace or control characters")
            self._entries.append((0, key, _value_bytes(0, value)))
        self._wire = None
        return self

    def add_reserved(self, key_id: int, value: bytes) -> Headers:
        """Appends an entry with a reserved compact id (10..=255), as a relay forwards it."""
        if not 10 <= key_id <= 255:
            raise EncodeError("reserved compact ids are 10..=255")
        self._entries.append((key_id, f"#{key_id}", _value_bytes(key_id, value)))
        self._wire = None
        return self

    def set(self, key: str, value: HeaderValue) -> Headers:
        """Replaces every entry of `key` with one entry (and returns ``self``)."""
        self.remove(key)
        return self.add(key, value)

    def remove(self, key: str) -> None:
        """Removes every entry of `key`."""
        kid = well_known_id(key)
        if kid is not None:
            self._entries = [e for e in self._entries if e[0] != kid]
        else:
            self._entries = [e for e in self._entries if e[0] != 0 or e[1] != key]
        self._wire = None

    def _find(self, key: str) -> Iterator[bytes]:
        kid = well_known_id(key)
        for i, name, value in self._entries:
            if (kid is not None and i == kid) or (kid is None and i == 0 and name == key):
                yield value

    def get(self, key: str) -> bytes | None:
        """The first value of `key`, or ``None``."""
        return next(self._find(key), None)

    def get_str(self, key: str) -> str | None:
        """The first value of `key` as text; ``None`` when absent or not UTF-8."""
        v = self.get(key)
        if v is None:
            return None
        try:
            return v.decode()
        except UnicodeDecodeError:
            return None

    def get_all(self, key: str) -> list[bytes]:
        """Every value of `key`, in order."""
        return list(self._find(key))

    def get_u32(self, key: str) -> int | None:
        """The first value of `key` as a u32 (``delivery-count``)."""
        v = self.get(key)
        return int(_U32.unpack(v)[0]) if v is not None and len(v) == 4 else None

    def get_u64(self, key: str) -> int | None:
        """The first value of `key` as a u64 (``deadline``, ``ttl``)."""
        v = self.get(key)
        return _U64.unpack(v)[0] if v is not None and len(v) == 8 else None

    @property
    def deadline_us(self) -> int | None:
        """The ``deadline`` header: microseconds left."""
        return self.get_u64("deadline")

    def entries(self) -> list[tuple[int, str, bytes]]:
        """The raw entries: (compact id, or 0 for a free-form key; name; value)."""
        return list(self._entries)

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        return ((name, value) for _, name, value in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._entries == other._entries

    def __hash__(self) -> int:
        return hash(tuple(self._entries))

    def __repr__(self) -> str:
        return f"Headers({[(k, v) for k, v in self]!r})"

    def encode(self) -> bytes:
        """The block's wire form."""
        if self._wire is not None:
            return self._wire
        out = bytearray()
        for kid, name, value in self._entries:
            out.append(kid)
            if kid == 0:
                kb = name.encode()
                out.append(len(kb))
                out += kb
            out += _U16.pack(len(value))
            out += value
        self._wire = bytes(out)
        return self._wire

    @classmethod
    def decode(cls, block: bytes) -> Headers:
        """Parses and validates a received block; raises ``MalformedHeaders``."""
        h = cls()
        if len(block) == 11 and block[:3] == b"\x04\x00\x08":
            # The block nearly every call carries: a lone deadline.
            h._entries.append((4, "deadline", bytes(block[3:])))
            h._wire = bytes(block)
            return h
        n = len(block)
        pos = 0
        entries = h._entries
        while pos < n:
            kid = block[pos]
            pos += 1
            if kid == 0:
                if pos >= n:
                    raise MalformedHeaders("truncated key length")
                klen = block[pos]
                pos += 1
                if klen == 0:
                    raise MalformedHeaders("empty key")
                if pos + klen > n:
                    raise MalformedHeaders("key overruns the block")
                try:
                    name = block[pos : pos + klen].decode()
                except UnicodeDecodeError:
                    raise MalformedHeaders("key is not UTF-8") from None
                pos += klen
                if FORBIDDEN_CHARS.search(name):
                    raise MalformedHeaders("whitespace or control character in key")
                if well_known_id(name) is not None:
                    raise MalformedHeaders("well-known key sent in free form")
            else:
                name = WELL_KNOWN_NAMES.get(kid) or f"#{kid}"
            if pos + 2 > n:
                raise MalformedHeaders("truncated value length")
            vlen = (block[pos] << 8) | block[pos + 1]
            pos += 2
            if pos + vlen > n:
                raise MalformedHeaders("value overruns the block")
            if kid in _FIXED_8 and vlen != 8:
                raise MalformedHeaders("deadline and ttl values must be 8 bytes")
            if kid in _FIXED_4 and vlen != 4:
                raise MalformedHeaders("delivery-count values must be 4 bytes")
            entries.append((kid, name, bytes(block[pos : pos + vlen])))
            pos += vlen
        h._wire = bytes(block)
        return h
