"""The WebSocket binding (PROTOCOL.md section 18) against a fake server made with the
``websockets`` package, which sends what a mitto server never would, and against a real
``mitto server`` for what its listener decides (the path)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

import mitto
from conftest import BrokerFactory
from mitto import Status
from mitto.proto import HANDSHAKE_MAX_FRAME, HEADER_LEN, MAX_SUBJECT, Decoder, Flag, Frame, FrameType, Hello

Script = Callable[["WsFake", ServerConnection], Awaitable[None]]

# The fake servers live on the loop their fixture tears down on.
pytestmark = pytest.mark.asyncio(loop_scope="module")


class WsFake:
    """One WebSocket connection at a time; records the client's messages and its close code."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[bytes | str] = asyncio.Queue()
        self.offered: str | None = None
        self.close_code: int | None = None
        self.done = asyncio.Event()
        self.server: Server | None = None

    async def start(self, script: Script, subprotocol: bool = True) -> str:
        async def handler(ws: ServerConnection) -> None:
            assert ws.request is not None
            self.offered = ws.request.headers.get("Sec-WebSocket-Protocol")

            async def read() -> None:
                try:
                    async for m in ws:
                        self.messages.put_nowait(m)
                except ConnectionClosed:
                    pass

            reader = asyncio.ensure_future(read())
            try:
                await script(self, ws)
                await asyncio.wait_for(ws.wait_closed(), 5)
            except (ConnectionClosed, asyncio.TimeoutError):
                pass
            finally:
                reader.cancel()
                self.close_code = ws.close_code
                self.done.set()

        def select(conn: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
            return Subprotocol("mitto.v1") if subprotocol else None

        self.server = await serve(handler, "127.0.0.1", 0, select_subprotocol=select, compression=None)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/"

    async def message(self) -> bytes:
        m = await asyncio.wait_for(self.messages.get(), 5)
        assert isinstance(m, bytes), "the client sent a text message"
        return m

    async def hello(self) -> Frame:
        """The client's first message: its HELLO, alone."""
        frames = decode(await self.message())
        assert [f.type for f in frames] == [FrameType.HELLO]
        return frames[0]

    async def closed(self) -> int | None:
        await asyncio.wait_for(self.done.wait(), 10)
        return self.close_code


@pytest.fixture
async def fake() -> AsyncIterator[WsFake]:
    s = WsFake()
    yield s
    if s.server is not None:
        s.server.close()
        await s.server.wait_closed()


def decode(message: bytes) -> list[Frame]:
    """A message's frames; it must hold whole frames only."""
    d = Decoder()
    d.feed(message)
    frames = []
    while (f := d.next()) is not None:
        frames.append(f)
    assert d.buffered == 0, "a message ended inside a frame"
    return frames


def reply(max_payload: int = 0, max_headers: int = 0) -> bytes:
    body = Hello(features=0x7F, max_payload=max_payload, max_headers=max_headers, name="fake").encode()
    return Frame(FrameType.HELLO, flags=Flag.REPLY, payload=body).encode()


def ws_frame(data: bytes, opcode: int = 2) -> bytes:
    """A server's (unmasked) WebSocket frame, written raw to control what shares a segment."""
    n = len(data)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 126]) + struct.pack(">H", n)
    else:
        head = bytes([0x80 | opcode, 127]) + struct.pack(">Q", n)
    return head + data


def raw(ws: ServerConnection, data: bytes) -> None:
    ws.transport.write(data)


async def connect(url: str, **kw: object) -> mitto.Client:
    return await asyncio.wait_for(mitto.connect(url, reconnect=False, connect_timeout=3, **kw), 10)


async def test_limits_widen_as_soon_as_hello_completes_and_close_ends_with_1000(fake: WsFake) -> None:
    ping = Frame(FrameType.PING, id=7, payload=b"p" * 6000).encode()
    assert len(ping) > HANDSHAKE_MAX_FRAME
    ponged = asyncio.Event()

    async def script(f: WsFake, ws: ServerConnection) -> None:
        await f.hello()
        # The reply and a message over the handshake limit in one write: the second is read
        # under the agreed limits.
        raw(ws, ws_frame(reply()) + ws_frame(ping))
        pong = decode(await f.message())
        assert [(p.type, p.id, p.payload) for p in pong] == [(FrameType.PONG, 7, b"p" * 6000)]
        ponged.set()
        # The client's close: a CLOSE frame, then the WebSocket close handshake.
        assert [c.type for c in decode(await f.message())] == [FrameType.CLOSE]

    url = await fake.start(script)
    nc = await connect(url)
    assert fake.offered == "mitto.v1"
    await asyncio.wait_for(ponged.wait(), 5)
    await nc.close()
    assert await fake.closed() == 1000


async def test_batches_are_cut_into_messages_of_whole_frames_within_the_peer_limit(fake: WsFake) -> None:
    limit = HEADER_LEN + MAX_SUBJECT + 100 + 1000
    got: list[bytes] = []
    all_in = asyncio.Event()

    async def script(f: WsFake, ws: ServerConnection) -> None:
        await f.hello()
        await ws.send(reply(max_payload=1000, max_headers=100))
        n = 0
        while n < 20:
            m = await f.message()
            got.append(m)
            n += sum(1 for x in decode(m) if x.type == FrameType.PUBLISH)
        all_in.set()

    url = await fake.start(script)
    async with await connect(url) as nc:
        for i in range(20):
            await nc.publish("batch.x", bytes([i]) * 900)
        await asyncio.wait_for(all_in.wait(), 10)
    assert all(len(m) <= limit for m in got), [len(m) for m in got]
    assert max(len(decode(m)) for m in got) > 1, "no message held several frames"
    payloads = [x.payload for m in got for x in decode(m) if x.type == FrameType.PUBLISH]
    assert payloads == [bytes([i]) * 900 for i in range(20)]


async def test_a_message_over_the_handshake_limit_is_refused_from_its_header(fake: WsFake) -> None:
    async def script(f: WsFake, ws: ServerConnection) -> None:
        await f.hello()
        # A header announcing one byte more than the handshake allows, and no payload at all.
        raw(ws, bytes([0x82, 126]) + struct.pack(">H", HANDSHAKE_MAX_FRAME + 1))

    url = await fake.start(script)
    with pytest.raises(mitto.MittoError) as ei:
        await connect(url)
    assert ei.value.status == Status.PAYLOAD_TOO_LARGE
    assert await fake.closed() == 1009


async def test_after_hello_the_agreed_limit_is_enforced_from_the_header(fake: WsFake) -> None:
    limit = HEADER_LEN + MAX_SUBJECT + 100 + 1000

    async def script(f: WsFake, ws: ServerConnection) -> None:
        await f.hello()
        await ws.send(reply(max_payload=1000, max_headers=100))
        raw(ws, bytes([0x82, 126]) + struct.pack(">H", limit + 1))

    url = await fake.start(script)
    nc = await connect(url, max_payload=1000)
    try:
        assert await fake.closed() == 1009
        for _ in range(500):
            if not nc.is_connected:
                break
            await asyncio.sleep(0.01)
        assert not nc.is_connected
    finally:
        await nc.close()


async def test_a_text_message_closes_with_1003(fake: WsFake) -> None:
    async def script(f: WsFake, ws: ServerConnection) -> None:
        await f.hello()
        await ws.send("not a frame")

    url = await fake.start(script)
    with pytest.raises(mitto.ProtocolError, match="text message"):
        await connect(url)
    assert await fake.closed() == 1003


@pytest.mark.parametrize(
    "message",
    [
        reply()[:20],
        # The reply, then a frame that goes on in the next message.
        reply() + Frame(FrameType.PING, id=1, payload=b"x" * 10).encode()[:40],
    ],
    ids=["inside-the-reply", "after-the-reply"],
)
async def test_a_message_that_ends_inside_a_frame_closes_with_1002(fake: WsFake, message: bytes) -> None:
    async def script(f: WsFake, ws: ServerConnection) -> None:
        await f.hello()
        await ws.send(message)
        await ws.send(Frame(FrameType.PING, id=1, payload=b"x" * 10).encode()[40:])

    url = await fake.start(script)
    with pytest.raises(mitto.MittoError, match="ended inside a frame") as ei:
        nc = await connect(url)
        # A client that took the broken message in notices it at once.
        await nc.flush(timeout=5)
    assert ei.value.status == Status.PROTOCOL_ERROR
    assert await fake.closed() == 1002


async def test_a_server_that_does_not_select_mitto_v1_is_refused(fake: WsFake) -> None:
    async def script(f: WsFake, ws: ServerConnection) -> None:
        await ws.wait_closed()

    url = await fake.start(script, subprotocol=False)
    with pytest.raises(mitto.ProtocolError, match="subprotocol"):
        await connect(url)
    assert fake.offered == "mitto.v1"
    assert await fake.closed() == 1002


async def test_a_close_code_other_than_1000_is_the_reason_given(fake: WsFake) -> None:
    async def script(f: WsFake, ws: ServerConnection) -> None:
        await f.hello()
        await ws.send(reply())
        assert [x.type for x in decode(await f.message())] == [FrameType.SUBSCRIBE]
        await ws.close(1001, "going away")

    url = await fake.start(script)
    nc = await connect(url)
    with pytest.raises(mitto.UnavailableError, match="1001: going away"):
        await nc.subscribe("x")
    await nc.close()


async def test_a_listener_path_is_part_of_the_url(start_broker: BrokerFactory) -> None:
    b = start_broker(listen=["ws://127.0.0.1:0/mitto"])
    assert b.url.startswith("ws://") and b.url.endswith("/mitto")
    async with await mitto.connect(b.url) as nc:
        sub = await nc.subscribe("path.x")
        await nc.publish("path.x", b"here")
        assert (await sub.next_msg(timeout=5)).data == b"here"
    with pytest.raises(mitto.UnavailableError, match="404"):
        await connect(b.url.replace("/mitto", "/elsewhere"))
