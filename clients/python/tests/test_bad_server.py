"""A fake server written here sends what a real one never would: garbage, truncated frames,
oversize lengths, a wrong version. The client raises a clear error, answers as the spec says,
and never hangs."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import mitto
from mitto import Status
from mitto.proto import Decoder, Flag, Frame, FrameType, Hello

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[Frame]], Awaitable[None]]


class FakeServer:
    def __init__(self, read: bool = True) -> None:
        self.read = read
        self.received: list[Frame] = []
        self.server: asyncio.Server | None = None
        self.done = asyncio.Event()

    async def start(self, script: Script) -> str:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            reader = asyncio.ensure_future(self._read(r) if self.read else asyncio.sleep(0))
            try:
                await script(r, w, self.received)
                await asyncio.sleep(0.2)
            except (asyncio.CancelledError, ConnectionError):
                pass
            finally:
                reader.cancel()
                w.close()
                self.done.set()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"tcp://127.0.0.1:{port}"

    async def _read(self, r: asyncio.StreamReader) -> None:
        d = Decoder()
        try:
            while data := await r.read(65536):
                d.feed(data)
                while (f := d.next()) is not None:
                    self.received.append(f)
        except ConnectionError:
            pass

    async def hello_received(self) -> Frame:
        for _ in range(200):
            if self.received:
                return self.received[0]
            await asyncio.sleep(0.01)
        raise AssertionError("no HELLO")

    def types(self) -> list[int]:
        return [f.type for f in self.received]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    s = FakeServer()
    yield s
    await s.stop()


def reply(keepalive_ms: int = 0, max_payload: int = 0) -> bytes:
    body = Hello(features=0x7F, max_payload=max_payload, keepalive_ms=keepalive_ms, name="fake").encode()
    return Frame(FrameType.HELLO, flags=Flag.REPLY, payload=body).encode()


def header(ftype: int, fid: int, payload_len: int, version: int = 1) -> bytes:
    return struct.pack(">4sBBBBQIHHII", b"MITO", version, 0, ftype, 0, fid, 0, 0, 0, 0, payload_len)


async def connect(url: str, **kw: object) -> mitto.Client:
    return await asyncio.wait_for(mitto.connect(url, reconnect=False, connect_timeout=3, **kw), 10)


async def test_garbage_instead_of_hello(fake: FakeServer) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        w.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await w.drain()

    url = await fake.start(script)
    with pytest.raises(mitto.ProtocolError) as ei:
        await connect(url)
    assert ei.value.status == Status.PROTOCOL_ERROR
    assert "not mitto" in ei.value.reason
    await asyncio.wait_for(fake.done.wait(), 5)
    # HELLO, then the fatal sequence: ERROR (id 0, PROTOCOL_ERROR) and CLOSE.
    assert fake.types() == [FrameType.HELLO, FrameType.ERROR, FrameType.CLOSE]
    assert fake.received[1].status == Status.PROTOCOL_ERROR and fake.received[1].id == 0


async def test_truncated_frame_then_eof(fake: FakeServer) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        w.write(reply()[:20])
        await w.drain()
        w.write_eof()

    url = await fake.start(script)
    with pytest.raises(mitto.ProtocolError, match="broke off"):
        await connect(url)


async def test_wrong_version(fake: FakeServer) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        w.write(header(FrameType.HELLO, 9, 0, version=2))
        await w.drain()

    url = await fake.start(script)
    with pytest.raises(mitto.ProtocolError) as ei:
        await connect(url)
    assert ei.value.status == Status.UNSUPPORTED_VERSION
    await asyncio.wait_for(fake.done.wait(), 5)
    err = [f for f in fake.received if f.type == FrameType.ERROR]
    assert err and err[0].id == 9 and err[0].status == Status.UNSUPPORTED_VERSION


async def test_oversize_length_is_refused_from_the_header_and_skipped(fake: FakeServer) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        w.write(reply(max_payload=1024))
        # An EVENT declaring 1 MiB, over the agreed 1 KiB: refused at its header; its bytes
        # are skipped as they come, and the connection goes on.
        w.write(header(FrameType.EVENT, 41, 1 << 20))
        await w.drain()
        for _ in range(16):
            w.write(b"\0" * 65536)
        w.write(Frame(FrameType.PING, id=7, payload=b"still there?").encode())
        await w.drain()
        await asyncio.sleep(0.5)

    url = await fake.start(script)
    nc = await connect(url, max_payload=1024)
    try:
        assert nc.max_payload == 1024
        for _ in range(200):
            if FrameType.PONG in fake.types():
                break
            await asyncio.sleep(0.01)
        err = [f for f in fake.received if f.type == FrameType.ERROR]
        assert err[0].id == 41 and err[0].status == Status.PAYLOAD_TOO_LARGE
        pong = [f for f in fake.received if f.type == FrameType.PONG]
        assert pong[0].id == 7 and pong[0].payload == b"still there?"
        assert nc._conn is not None and nc._conn.decoder.buffered == 0
    finally:
        await nc.close()


async def test_a_silent_server_times_out(fake: FakeServer) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        await asyncio.sleep(5)

    url = await fake.start(script)
    with pytest.raises(mitto.TimeoutError):
        await asyncio.wait_for(mitto.connect(url, reconnect=False, connect_timeout=0.3), 10)


async def test_refusal_and_unexpected_first_frame(fake: FakeServer) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        w.write(Frame(FrameType.ERROR, status=Status.UNAUTHORIZED, payload=b"who are you").encode())
        w.write(Frame(FrameType.CLOSE, status=Status.UNAUTHORIZED).encode())
        await w.drain()

    url = await fake.start(script)
    with pytest.raises(mitto.AuthorizationError, match="who are you"):
        await connect(url)

    other = FakeServer()

    async def script2(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        w.write(Frame(FrameType.PING, id=1).encode())
        await w.drain()

    url = await other.start(script2)
    try:
        with pytest.raises(mitto.ProtocolError) as ei:
            await connect(url)
        assert ei.value.status == Status.UNEXPECTED_FRAME
    finally:
        await other.stop()


async def test_garbage_after_the_handshake_fails_calls_in_flight(fake: FakeServer) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        w.write(reply())
        await w.drain()
        for _ in range(200):
            if any(f.type == FrameType.REQUEST for f in got):
                break
            await asyncio.sleep(0.01)
        w.write(b"\x00garbage" * 10)
        await w.drain()

    url = await fake.start(script)
    nc = await connect(url)
    with pytest.raises(mitto.ProtocolError):
        await asyncio.wait_for(nc.request("x.y", b"", timeout=30), 10)
    await asyncio.wait_for(fake.done.wait(), 5)
    assert fake.types()[-2:] == [FrameType.ERROR, FrameType.CLOSE]
    with pytest.raises(mitto.UnavailableError):
        await nc.publish("x.y", b"")
    await nc.close()


async def test_a_malformed_frame_is_answered_and_skipped(fake: FakeServer) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        w.write(reply())
        # A RESPONSE with an undefined kind (6): BAD_REQUEST, skipped; then a good RESPONSE.
        bad = bytearray(Frame(FrameType.RESPONSE, id=1, payload=b"bad").encode())
        bad[7] = 6
        w.write(bytes(bad))
        for _ in range(200):
            if any(f.type == FrameType.REQUEST for f in got):
                break
            await asyncio.sleep(0.01)
        w.write(Frame(FrameType.RESPONSE, id=1, payload=b"good").encode())
        await w.drain()
        await asyncio.sleep(0.3)

    url = await fake.start(script)
    nc = await connect(url)
    try:
        r = await nc.request("x.y", b"", timeout=5)
        assert r.data == b"good"
        err = [f for f in fake.received if f.type == FrameType.ERROR]
        assert err[0].id == 1 and err[0].status == Status.BAD_REQUEST
    finally:
        await nc.close()


async def test_keepalive_drops_a_peer_that_went_silent(fake: FakeServer) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        w.write(reply(keepalive_ms=100))
        await w.drain()
        await asyncio.sleep(3)

    url = await fake.start(script)
    lost = asyncio.Event()
    nc = await mitto.connect(url, keepalive=0.1, reconnect=False, error_cb=lambda e: None)
    nc._opts.disconnected_cb = lost.set
    sub = await asyncio.wait_for(_subscribe_quietly(nc), 5)
    with pytest.raises(mitto.UnavailableError, match="keepalive"):
        await sub.next_msg(timeout=5)
    pings = [f for f in fake.received if f.type == FrameType.PING]
    assert pings, "the client pinged the silent peer before giving up"
    await nc.close()


async def _subscribe_quietly(nc: mitto.Client) -> mitto.Subscription:
    # The fake server never ACKs: put the subscription in place by hand.
    from mitto.proto import SubscribeOptions
    from mitto.subscription import Subscription

    sub = Subscription(nc, 1, "a", SubscribeOptions(), 10)
    nc._subs[1] = sub
    return sub


async def test_a_peer_that_never_reads_cannot_grow_the_client_without_bound() -> None:
    mib = 1024 * 1024
    fake = FakeServer(read=False)

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        # Read the HELLO, answer, then only write: 1 MiB PINGs whose PONGs pile up unread.
        await r.read(4096)
        w.write(reply(max_payload=mib))
        ping = Frame(FrameType.PING, id=1, payload=b"p" * (mib - 64)).encode()
        for _ in range(64):
            w.write(ping)
            await w.drain()
        await asyncio.sleep(20)

    url = await fake.start(script)
    lost: list[mitto.MittoError] = []
    nc = await mitto.connect(url, max_payload=mib, reconnect=False, error_cb=lost.append)
    try:
        conn = nc._conn
        assert conn is not None
        limit = conn.write_limit
        assert limit < 32 * mib
        for _ in range(400):
            if not nc.is_connected:
                break
            await asyncio.sleep(0.02)
        assert not nc.is_connected, "the client gave up on a peer that reads nothing"
        assert nc._closed_error is not None and "reads nothing" in nc._closed_error.reason
        assert conn.transport is not None and conn.transport.get_write_buffer_size() <= limit + 2 * mib
        assert lost == [], "a lost connection is not reported as an error"
    finally:
        await nc.close()
        await fake.stop()


async def test_answers_to_the_server_fit_its_limits(fake: FakeServer) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        w.write(reply(max_payload=16))
        # A HEALTH query (the report does not fit 16 bytes) and a frame with a reserved kind
        # (its ERROR reason does not fit either).
        w.write(Frame(FrameType.HEALTH, id=21).encode())
        bad = bytearray(Frame(FrameType.PING, id=22).encode())
        bad[7] = 100
        w.write(bytes(bad))
        await w.drain()
        await asyncio.sleep(0.5)

    url = await fake.start(script)
    nc = await connect(url, max_payload=16)
    try:
        for _ in range(200):
            if len([f for f in fake.received if f.type == FrameType.ERROR]) >= 2:
                break
            await asyncio.sleep(0.01)
        errs = {f.id: f for f in fake.received if f.type == FrameType.ERROR}
        assert errs[21].status == Status.PAYLOAD_TOO_LARGE and len(errs[21].payload) <= 16
        assert errs[22].status == Status.BAD_REQUEST and len(errs[22].payload) <= 16
    finally:
        await nc.close()


async def test_a_publisher_waiting_on_a_peer_that_never_reads_times_out() -> None:
    fake = FakeServer(read=False)

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        await r.read(4096)
        w.write(reply())
        await w.drain()
        await asyncio.sleep(20)

    url = await fake.start(script)
    nc = await connect(url)
    try:
        chunk = b"m" * (1024 * 1024)
        with pytest.raises(mitto.TimeoutError, match="read nothing"):
            for _ in range(200):
                await nc.publish("a.b", chunk, timeout=0.3)
    finally:
        await nc.close()
        await fake.stop()


async def test_stray_responses_are_ignored_and_impossible_ones_refused(fake: FakeServer) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, got: list[Frame]) -> None:
        w.write(reply())
        # A RESPONSE for a call the client never opened (ignored: it may have crossed a CANCEL),
        # one from the server's half of the ids (UNEXPECTED_FRAME), a REQUEST from the client's
        # half (PROTOCOL_ERROR, no call opened) and a NACK, which a client never receives.
        w.write(Frame(FrameType.RESPONSE, id=99, payload=b"stray").encode())
        w.write(Frame(FrameType.RESPONSE, id=(1 << 63) | 5, payload=b"impossible").encode())
        w.write(Frame(FrameType.REQUEST, id=6, subject="svc.x").encode())
        w.write(Frame(FrameType.NACK, id=7, aux=1).encode())
        w.write(Frame(FrameType.PING, id=8).encode())
        await w.drain()
        await asyncio.sleep(0.5)

    url = await fake.start(script)
    nc = await connect(url)
    try:
        for _ in range(200):
            if FrameType.PONG in fake.types():
                break
            await asyncio.sleep(0.01)
        answers = [(f.type, f.id, f.status) for f in fake.received[1:] if f.type != FrameType.PONG]
        assert answers == [
            (FrameType.ERROR, (1 << 63) | 5, Status.UNEXPECTED_FRAME),
            (FrameType.ERROR, 6, Status.PROTOCOL_ERROR),
            (FrameType.ERROR, 7, Status.UNEXPECTED_FRAME),
        ]
        assert nc.is_connected
    finally:
        await nc.close()
