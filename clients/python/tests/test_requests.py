"""Request/reply and services through a real ``mitto server``: no responders, deadlines,
cancellation reaching the responder, errors, and every streaming kind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import mitto
from conftest import Broker
from mitto import Request, Response, Status


async def test_request_reaches_a_service_and_gets_headers_back(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as svc_conn, await mitto.connect(broker.url) as nc:

        async def upper(req: Request) -> Response:
            assert req.deadline is not None and 0 < req.deadline <= 30
            return Response(req.data.upper(), headers={"x-served-by": "py"})

        await svc_conn.service("svc.upper", upper)
        r = await nc.request("svc.upper", b"hello", timeout=5)
        assert r.data == b"HELLO"
        assert r.headers.get_str("x-served-by") == "py"
        assert await nc.request_json("svc.upper", "abc") == "ABC"


async def test_no_responders_is_raised_at_once(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(mitto.NoRespondersError) as ei:
            await nc.request("nobody.home", b"?", timeout=30)
        assert ei.value.status == Status.NO_RESPONDERS
        assert ei.value.remote and ei.value.retryable
        # Not the 30 s deadline: the broker answered (a bound, not a timing assertion).
        assert loop.time() - t0 < 25


async def test_a_service_error_comes_back_with_its_status(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:

        async def fails(req: Request) -> bytes:
            if req.data == b"forbidden":
                raise mitto.MittoError(Status.FORBIDDEN, "not you")
            raise ValueError("boom")

        await nc.service("svc.fails", fails)
        with pytest.raises(mitto.ForbiddenError, match="not you"):
            await nc.request("svc.fails", b"forbidden", timeout=5)
        with pytest.raises(mitto.MittoError) as ei:
            await nc.request("svc.fails", b"x", timeout=5)
        assert ei.value.status == Status.EXECUTION_ERROR
        assert "ValueError: boom" in ei.value.reason


async def test_deadline_fails_the_call_and_cancels_the_handler(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as svc_conn, await mitto.connect(broker.url) as nc:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def slow(req: Request) -> bytes:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return b"late"

        await svc_conn.service("svc.slow", slow)
        with pytest.raises(mitto.TimeoutError):
            await nc.request("svc.slow", b"", timeout=0.3)
        assert started.is_set()
        await asyncio.wait_for(cancelled.wait(), 10)


async def test_cancelling_the_caller_cancels_the_responder(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as svc_conn, await mitto.connect(broker.url) as nc:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def slow(req: Request) -> bytes:
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return b"late"

        await svc_conn.service("svc.cancel", slow)
        task = asyncio.ensure_future(nc.request("svc.cancel", b"", timeout=30))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(cancelled.wait(), 10)
        assert not nc._pending, "the call is forgotten"


async def test_subscribers_answer_requests_with_respond(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:

        async def answer(m: mitto.Msg) -> None:
            assert m.reply_to is not None
            await m.respond(b"echo:" + m.data)

        await nc.subscribe("inbox.echo", cb=answer)
        r = await nc.request("inbox.echo", b"hi", timeout=5)
        assert r.data == b"echo:hi"


async def test_queue_group_services_share_the_calls(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as a, await mitto.connect(broker.url) as b:
        await a.service("svc.who", lambda req: _const(b"a"), queue="g")
        await b.service("svc.who", lambda req: _const(b"b"), queue="g")
        got = {(await a.request("svc.who", timeout=5)).data for _ in range(20)}
        assert got == {b"a", b"b"}


async def _const(b: bytes) -> bytes:
    return b


async def test_server_streaming_through_the_broker(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as svc_conn, await mitto.connect(broker.url) as nc:

        async def count(req: Request) -> AsyncIterator[bytes]:
            for i in range(int(req.data)):
                yield str(i).encode()

        await svc_conn.service("svc.count", count)
        # More items than the initial credit: the caller's CREDIT grants keep it flowing.
        call = await nc.server_stream("svc.count", b"300", timeout=10)
        items = await call.items()
        assert items == [str(i).encode() for i in range(300)]
        assert (await call.response()).data == b""


async def test_client_and_bidi_streaming_through_the_broker(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as svc_conn, await mitto.connect(broker.url) as nc:

        async def total(req: Request) -> bytes:
            assert req.streaming
            return str(sum([int(x) async for x in req])).encode()

        async def running(req: Request) -> bytes:
            t = 0
            async for x in req:
                t += int(x)
                await req.send(str(t).encode())
            return b"done"

        await svc_conn.service("svc.total", total)
        await svc_conn.service("svc.running", running)
        call = await nc.client_stream("svc.total", timeout=10)
        for i in range(200):
            await call.send(str(i).encode())
        await call.finish()
        assert (await call.response()).data == str(sum(range(200))).encode()

        call = await nc.bidi("svc.running", timeout=10)
        got = []
        for i in (5, 10, 20):
            await call.send(str(i).encode())
            got.append(await call.__anext__())
        await call.finish()
        assert got == [b"5", b"15", b"35"]
        assert [x async for x in call] == []
        assert (await call.response()).data == b"done"


async def test_a_stream_deadline_ends_every_wait(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as svc_conn, await mitto.connect(broker.url) as nc:

        async def never(req: Request) -> bytes:
            await asyncio.sleep(30)
            return b""

        await svc_conn.service("svc.never", never)
        call = await nc.server_stream("svc.never", timeout=0.3)
        with pytest.raises(mitto.TimeoutError):
            await call.items()
        async with await nc.client_stream("svc.never", timeout=5) as c2:
            await c2.send(b"x")
        with pytest.raises(mitto.CallCancelledError):
            await c2.response()


async def test_stopped_service_gets_no_more_calls(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:
        svc = await nc.service("svc.stop", lambda req: _const(b"ok"))
        assert (await nc.request("svc.stop", timeout=5)).data == b"ok"
        await svc.stop()
        with pytest.raises(mitto.NoRespondersError):
            await nc.request("svc.stop", timeout=5)
