"""Reconnecting: a broker restarted under the client, subscriptions and services restored (over
TCP and WebSocket)."""

from __future__ import annotations

import asyncio

import pytest

import mitto
from conftest import BrokerFactory
from mitto import Request


async def test_reconnect_after_the_broker_restarts_restores_subscriptions(
    start_broker: BrokerFactory, scheme: str
) -> None:
    b = start_broker(listen=[f"{scheme}://127.0.0.1:0"])
    lost = asyncio.Event()
    back = asyncio.Event()
    nc = await mitto.connect(
        b.url, reconnect_backoff=(0.02, 0.2), disconnected_cb=lost.set, reconnected_cb=back.set
    )
    svc_conn = await mitto.connect(b.url, reconnect_backoff=(0.02, 0.2))
    try:
        sub = await nc.subscribe("rc.>")
        gate = asyncio.Event()

        async def handler(req: Request) -> bytes:
            await gate.wait()
            return b"pong"

        await svc_conn.service("rc.svc", handler)
        in_flight = asyncio.ensure_future(nc.request("rc.svc", b"", timeout=30))
        await asyncio.sleep(0.2)
        b.restart()
        with pytest.raises(mitto.UnavailableError) as ei:
            await in_flight
        assert ei.value.retryable
        await asyncio.wait_for(lost.wait(), 10)
        await asyncio.wait_for(back.wait(), 20)
        gate.set()
        # The subscription was made again on the new broker.
        await nc.flush()
        for _ in range(100):
            if (await nc.stats())["subscriptions"] >= 1 and (await nc.stats())["services"] >= 1:
                break
            await asyncio.sleep(0.05)
        await nc.publish("rc.after", b"hello again")
        m = await sub.next_msg(timeout=5)
        assert (m.subject, m.data) == ("rc.after", b"hello again")
        assert (await nc.request("rc.svc", b"", timeout=5)).data == b"pong"
        assert nc.reconnects == 1
    finally:
        await nc.close()
        await svc_conn.close()


async def test_publish_waits_for_the_reconnect(start_broker: BrokerFactory, scheme: str) -> None:
    b = start_broker(listen=[f"{scheme}://127.0.0.1:0"])
    nc = await mitto.connect(b.url, reconnect_backoff=(0.02, 0.2))
    try:
        sub = await nc.subscribe("rc2.x")
        b.stop()
        for _ in range(200):
            if not nc.is_connected:
                break
            await asyncio.sleep(0.01)
        assert not nc.is_connected
        with pytest.raises(mitto.TimeoutError):
            await nc.publish("rc2.x", b"nobody", timeout=0.2)
        b.start()
        await nc.publish("rc2.x", b"after", timeout=20)
        assert (await sub.next_msg(timeout=5)).data == b"after"
    finally:
        await nc.close()


async def test_without_reconnect_the_client_closes_and_subscriptions_end(
    start_broker: BrokerFactory, scheme: str
) -> None:
    b = start_broker(listen=[f"{scheme}://127.0.0.1:0"])
    nc = await mitto.connect(b.url, reconnect=False)
    sub = await nc.subscribe("rc3.x")
    b.stop()
    with pytest.raises(mitto.UnavailableError):
        await sub.next_msg(timeout=10)
    with pytest.raises(mitto.UnavailableError):
        await nc.publish("rc3.x", b"")
    await nc.close()
