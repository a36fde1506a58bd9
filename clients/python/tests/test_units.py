"""Small pieces without a broker: URLs and pluggable transports, the headers API, codecs."""

from __future__ import annotations

import asyncio

import pytest

import mitto
from mitto import JSON, MSGPACK, Headers, codec_for, parse_url
from mitto.proto import EncodeError
from mitto.transport import Endpoint, TransportOptions, register_transport


def test_urls() -> None:
    assert parse_url("tcp://127.0.0.1:4747") == Endpoint("tcp", "127.0.0.1", 4747)
    assert parse_url("127.0.0.1:5000") == Endpoint("tcp", "127.0.0.1", 5000)
    assert parse_url("localhost") == Endpoint("tcp", "localhost", 4747)
    assert parse_url("tls://[::1]:9") == Endpoint("tls", "::1", 9)
    assert parse_url("unix:///tmp/m.sock") == Endpoint("unix", path="/tmp/m.sock")
    assert str(parse_url("tls://[::1]:9")) == "tls://[::1]:9"
    # WebSocket URLs keep their path and query; their default ports are HTTP's.
    assert parse_url("ws://h") == Endpoint("ws", "h", 80, "/")
    assert parse_url("wss://h/mitto?x=1") == Endpoint("wss", "h", 443, "/mitto?x=1")
    assert str(parse_url("ws://[::1]:9/p")) == "ws://[::1]:9/p"
    for bad in ("ftp://x:1", "tcp://:1", "tcp://h:notaport", "unix://"):
        with pytest.raises(mitto.MittoError):
            parse_url(bad)


async def test_a_transport_plugs_in_by_scheme() -> None:
    opened: list[Endpoint] = []

    async def opener(ep: Endpoint, opts: TransportOptions, factory: object) -> asyncio.BaseTransport:
        opened.append(ep)
        raise OSError("no such network in a unit test")

    register_transport("fake", opener)
    with pytest.raises(mitto.UnavailableError, match="no such network"):
        await mitto.connect("fake://h:1", reconnect=False)
    assert opened == [Endpoint("fake", "h", 1)]


def test_headers_api() -> None:
    h = Headers([("Content-Type", "a/b"), ("x", b"\x00\x01")])
    h.add("x", "second").add("deadline", 250_000).add("TTL", 5)
    assert h.get("content-type") == b"a/b"
    assert h.get_all("x") == [b"\x00\x01", b"second"]
    assert h.deadline_us == 250_000 and h.get_u64("ttl") == 5
    assert "X" not in h and "x" in h
    assert Headers.decode(h.encode()) == h
    # Well-known keys go by compact id: content-type is one byte of key.
    assert h.encode()[:3] == b"\x01\x00\x03"
    h.set("x", "only")
    assert h.get_all("x") == [b"only"]
    h.remove("content-type")
    assert h.get("Content-Type") is None
    with pytest.raises(EncodeError):
        Headers({"bad key": "v"})
    with pytest.raises(EncodeError):
        Headers({"deadline": b"short"})
    with pytest.raises(EncodeError):
        Headers({"x": 5})
    with pytest.raises(EncodeError):
        Headers({"x": "\ud800"})


def test_a_lone_surrogate_is_not_a_subject() -> None:
    from mitto.proto import is_valid_filter, is_valid_literal

    assert not is_valid_literal("a.\ud800") and not is_valid_filter("\ud800")


def test_codecs_follow_content_type() -> None:
    assert codec_for(None) is JSON
    assert codec_for("application/json; charset=utf-8") is JSON
    assert codec_for("application/x-msgpack") is MSGPACK
    assert MSGPACK.decode(MSGPACK.encode({"a": [1, "b"]})) == {"a": [1, "b"]}
    with pytest.raises(mitto.MittoError) as ei:
        codec_for("text/xml")
    assert ei.value.status == mitto.Status.BAD_REQUEST
    with pytest.raises(mitto.MittoError):
        JSON.decode(b"\xff not json")
