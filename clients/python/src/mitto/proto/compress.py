"""LZ4 payload compression (PROTOCOL.md section 12), with the optional ``lz4`` package
(``pip install mitto[lz4]``). Without it COMPRESSION_LZ4 is not offered."""

from __future__ import annotations

import struct
from types import ModuleType

from .errors import DecodeError

_lz4_block: ModuleType | None
try:
    import lz4.block

    _lz4_block = lz4.block
except ImportError:  # pragma: no cover - depends on the environment
    _lz4_block = None

_U32 = struct.Struct(">I")


def available() -> bool:
    """Whether LZ4 is installed (and COMPRESSION_LZ4 can be offered)."""
    return _lz4_block is not None


def compress(data: bytes) -> bytes:
    """A compressed payload: the u32 original length, then one raw LZ4 block."""
    if _lz4_block is None:
        raise RuntimeError("LZ4 compression needs the lz4 package: pip install mitto[lz4]")
    block: bytes = _lz4_block.compress(data, store_size=False)
    return _U32.pack(len(data)) + block


def decompress(payload: bytes, max_payload: int, frame_id: int = 0) -> bytes:
    """The original bytes of a compressed payload, exactly ``uncompressed_len`` long."""
    if len(payload) < 4:
        raise DecodeError("decompression", "compressed payload is corrupt: missing length prefix", frame_id)
    (n,) = _U32.unpack_from(payload)
    if n > max_payload:
        raise DecodeError(
            "payload_too_large", f"payload of {n} bytes exceeds the limit of {max_payload}", frame_id
        )
    if _lz4_block is None:
        raise RuntimeError("LZ4 decompression needs the lz4 package: pip install mitto[lz4]")
    if n == 0 and len(payload) == 4:
        return b""
    try:
        out: bytes = _lz4_block.decompress(bytes(payload[4:]), uncompressed_size=n)
    except Exception:  # lz4 raises LZ4BlockError, a plain Exception subclass
        raise DecodeError(
            "decompression", "compressed payload is corrupt: invalid LZ4 block", frame_id
        ) from None
    if len(out) != n:
        raise DecodeError(
            "decompression",
            "compressed payload is corrupt: length prefix does not match the block",
            frame_id,
        )
    return out
