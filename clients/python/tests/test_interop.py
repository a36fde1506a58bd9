"""Rust <-> Python on the same bytes, in one test run: the ``mitto`` command (pub, sub, req,
reply) and the Rust ``interop`` example (an RPC server with every streaming kind, served
directly or attached to the broker as a service, and a Rust caller of every kind)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import pytest

import mitto
from conftest import Broker, Process
from mitto import Request, Status


async def run(*argv: str, timeout: float = 30) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await asyncio.wait_for(p.communicate(), timeout)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


async def wait_for_subscriptions(nc: mitto.Client, n: int) -> None:
    for _ in range(200):
        if (await nc.stats())["subscriptions"] >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{n} subscriptions never appeared")


async def test_rust_publishes_python_receives(broker: Broker, mitto_bin: str) -> None:
    async with await mitto.connect(broker.url) as nc:
        sub = await nc.subscribe("interop.r2p.>")
        code, _, err = await run(
            mitto_bin, "pub", "interop.r2p.created", "héllo", "--count", "3",
            "-H", "content-type=text/plain", "-H", "tenant=acme", "--url", broker.url,
        )  # fmt: skip
        assert code == 0, err
        got = [await sub.next_msg(timeout=10) for _ in range(3)]
        for m in got:
            assert m.subject == "interop.r2p.created"
            assert m.data == "héllo".encode()
            assert m.headers.get_str("content-type") == "text/plain"
            assert m.headers.get_str("tenant") == "acme"


async def test_python_publishes_rust_receives(broker: Broker, mitto_bin: str) -> None:
    async with await mitto.connect(broker.url) as nc:
        before = (await nc.stats())["subscriptions"]
        p = await asyncio.create_subprocess_exec(
            mitto_bin, "sub", "interop.p2r.>", "--count", "2", "--json", "--url", broker.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await wait_for_subscriptions(nc, before + 1)
            await nc.publish("interop.p2r.a", b"one", headers={"content-type": "text/plain", "k": "v"})
            await nc.publish_json("interop.p2r.b", {"two": 2}, urgent=True)
            out, _ = await asyncio.wait_for(p.communicate(), 30)
        finally:
            if p.returncode is None:
                p.kill()
        # The URGENT one may overtake (PRIORITY): compare by subject.
        lines = sorted((json.loads(x) for x in out.decode().splitlines()), key=lambda x: str(x["subject"]))
        assert [x["subject"] for x in lines] == ["interop.p2r.a", "interop.p2r.b"]
        assert lines[0]["payload"] == "one"
        assert lines[0]["headers"] == {"content-type": "text/plain", "k": "v"}
        assert json.loads(lines[1]["payload"]) == {"two": 2}
        assert lines[1]["urgent"] is True


async def test_python_service_answers_a_rust_requester(broker: Broker, mitto_bin: str) -> None:
    async with await mitto.connect(broker.url) as nc:

        async def upper(req: Request) -> bytes:
            return req.data.upper()

        await nc.service("interop.upper", upper)
        code, out, err = await run(mitto_bin, "req", "interop.upper", "hello rust", "--url", broker.url)
        assert code == 0, err
        assert out.strip() == "HELLO RUST"


async def test_rust_subscriber_answers_a_python_request(broker: Broker, mitto_bin: str) -> None:
    async with await mitto.connect(broker.url) as nc:
        before = (await nc.stats())["subscriptions"]
        p = await asyncio.create_subprocess_exec(
            mitto_bin, "reply", "interop.echo", "--echo", "--count", "1", "--url", broker.url,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_for_subscriptions(nc, before + 1)
            r = await nc.request("interop.echo", b"ping from python", timeout=10)
            assert r.data == b"ping from python"
        finally:
            await asyncio.wait_for(p.wait(), 30)


async def test_rust_calls_python_services_of_every_kind(broker: Broker, interop_bin: str) -> None:
    async with await mitto.connect(broker.url) as nc:

        async def fib(req: Request) -> AsyncIterator[bytes]:
            a, b = 0, 1
            for _ in range(int(req.data)):
                yield str(a).encode()
                a, b = b, a + b

        async def total(req: Request) -> bytes:
            return str(sum([int(x) async for x in req])).encode()

        async def running(req: Request) -> None:
            t = 0
            async for x in req:
                t += int(x)
                await req.send(str(t).encode())

        await nc.service("py.fib", fib)
        await nc.service("py.total", total)
        await nc.service("py.running", running)
        await nc.service("py.echo", lambda req: _echo(req))

        code, out, err = await run(interop_bin, "call", broker.url, "py.echo", "unary", "hi")
        assert (code, out.splitlines()) == (0, ["response hi"]), err
        code, out, err = await run(interop_bin, "call", broker.url, "py.fib", "server", "100")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[:5] == ["item 0", "item 1", "item 1", "item 2", "item 3"]
        assert len(lines) == 101 and lines[-1] == "response "
        items = [str(i) for i in range(150)]
        code, out, err = await run(interop_bin, "call", broker.url, "py.total", "client", *items)
        assert (code, out.splitlines()) == (0, [f"response {sum(range(150))}"]), err
        code, out, err = await run(interop_bin, "call", broker.url, "py.running", "bidi", "5", "10", "20")
        assert (code, out.splitlines()) == (0, ["item 5", "item 15", "item 35", "response "]), err


async def _echo(req: Request) -> bytes:
    return req.data


@pytest.fixture(scope="module")
def rust_server(interop_bin: str, scheme: str) -> Iterator[str]:
    p = Process([interop_bin, "serve", f"{scheme}://127.0.0.1:0"])
    url = p.wait_line("listening on ")
    yield url
    assert p.proc.stdin is not None
    p.proc.stdin.close()
    p.stop()


async def test_python_calls_a_rust_server_directly(rust_server: str) -> None:
    async with await mitto.connect(rust_server) as c:
        assert await c.request_json("calc.add", {"a": 2, "b": 40}) == 42.0
        assert await c.request_encoded("calc.add", {"a": 1.5, "b": 1}, mitto.MSGPACK) == 2.5
        with pytest.raises(mitto.MittoError, match="division by zero") as ei:
            await c.request_json("calc.div", {"a": 1, "b": 0})
        assert ei.value.status == Status.EXECUTION_ERROR
        with pytest.raises(mitto.MittoError) as ei:
            await c.request("calc.nope", b"", timeout=5)
        assert ei.value.status == Status.METHOD_NOT_FOUND
        r = await c.request("test.echo", b"bytes", headers={"x-trace": "1"}, timeout=5)
        assert (r.data, r.headers.get_str("x-trace")) == (b"bytes", "1")
        left = await c.request_json("test.deadline", None, timeout=2)
        assert 0 < left <= 2000


async def test_python_streams_with_a_rust_server(rust_server: str) -> None:
    async with await mitto.connect(rust_server) as c:
        call = await c.server_stream("calc.fib", b"90", timeout=10)
        fib = [json.loads(x) async for x in call]
        assert fib[:6] == [0, 1, 1, 2, 3, 5] and len(fib) == 90
        assert fib[-1] == 1779979416004714189

        call = await c.client_stream("calc.mean", timeout=10)
        for n in range(1, 201):
            await call.send(json.dumps(float(n)))
        await call.finish()
        assert (await call.response()).json() == 100.5

        call = await c.bidi("calc.running_total", timeout=10)
        got = []
        for x in (5.0, 10.0, 20.0):
            await call.send(json.dumps(x))
            got.append(json.loads(await call.__anext__()))
        await call.finish()
        assert got == [5.0, 15.0, 35.0]
        await call.response()


async def test_deadline_and_cancel_reach_the_rust_server(rust_server: str) -> None:
    async with await mitto.connect(rust_server) as c:
        before = await c.request_json("test.cancelled", None)
        with pytest.raises(mitto.TimeoutError):
            await c.request_json("test.sleep", 10_000, timeout=0.2)
        task = asyncio.ensure_future(c.request_json("test.sleep", 10_000, timeout=30))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if await c.request_json("test.cancelled", None) >= before + 2:
                break
            await asyncio.sleep(0.05)
        assert await c.request_json("test.cancelled", None) == before + 2


async def test_python_calls_a_rust_server_attached_to_the_broker(broker: Broker, interop_bin: str) -> None:
    p = Process([interop_bin, "attach", broker.url])
    try:
        p.wait_line("attached")
        async with await mitto.connect(broker.url) as c:
            assert await c.request_json("calc.add", {"a": 1, "b": 2}) == 3.0
            call = await c.server_stream("calc.fib", b"10", timeout=10)
            assert [json.loads(x) async for x in call] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
            call = await c.bidi("calc.running_total", timeout=10)
            await call.send(b"1")
            assert await call.__anext__() == b"1.0"
            await call.finish()
            await call.response()
    finally:
        assert p.proc.stdin is not None
        p.proc.stdin.close()
        p.stop()
