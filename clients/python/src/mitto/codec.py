"""Payload codecs, chosen by the ``content-type`` header with the same values as the Rust
client: JSON (``application/json``) and MessagePack (``application/msgpack``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from .errors import MittoError
from .proto.status import Status


@dataclass(frozen=True)
class Codec:
    """A named way to turn values into payloads and back."""

    content_type: str
    _encode: Callable[[Any], bytes]
    _decode: Callable[[bytes], Any]

    def encode(self, value: Any) -> bytes:
        try:
            return self._encode(value)
        except (TypeError, ValueError, OverflowError) as e:
            raise MittoError(Status.INTERNAL, f"cannot encode {self.content_type}: {e}") from e

    def decode(self, payload: bytes) -> Any:
        try:
            return self._decode(payload)
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise MittoError(Status.BAD_REQUEST, f"cannot decode {self.content_type}: {e}") from e


def _json_encode(v: Any) -> bytes:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()


def _msgpack_decode(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False)


def _msgpack_encode(v: Any) -> bytes:
    return bytes(msgpack.packb(v, use_bin_type=True))


JSON = Codec("application/json", _json_encode, json.loads)
MSGPACK = Codec("application/msgpack", _msgpack_encode, _msgpack_decode)

_BY_TYPE = {
    "application/json": JSON,
    "application/msgpack": MSGPACK,
    "application/x-msgpack": MSGPACK,
    "application/vnd.msgpack": MSGPACK,
}


def codec_for(content_type: str | None, default: Codec = JSON) -> Codec:
    """The codec a ``content-type`` value names (parameters after ``;`` ignored); `default`
    when there is none."""
    if content_type is None:
        return default
    c = _BY_TYPE.get(content_type.split(";")[0].strip())
    if c is None:
        raise MittoError(Status.BAD_REQUEST, f"unsupported content type {content_type!r}")
    return c
