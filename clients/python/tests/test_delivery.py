"""Acknowledged delivery against a real ``mitto server``: redelivery of what was not
acknowledged, NACK, and unacknowledged messages coming back after the subscriber's
connection drops and its session resumes."""

from __future__ import annotations

import asyncio

import pytest

import mitto
from conftest import Broker


async def test_unacked_messages_are_redelivered_and_acked_ones_are_not(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as pub, await mitto.connect(broker.url) as nc:
        sub = await nc.subscribe("alo.a", ack=True, ack_wait=1.0)
        await pub.publish("alo.a", b"keep")
        await pub.publish("alo.a", b"ack-me")
        first = [await sub.next_msg(timeout=5) for _ in range(2)]
        assert all(m.needs_ack for m in first)
        await first[1].ack()
        again = await sub.next_msg(timeout=5)
        assert again.data == b"keep", "the unacknowledged one comes back after ack_wait"
        await again.ack()
        await nc.flush()
        with pytest.raises(mitto.TimeoutError):
            await sub.next_msg(timeout=1.5)
        stats = await pub.stats()
        assert stats["redeliveries"] >= 1
        assert stats["acks"] >= 2


async def test_nack_asks_for_redelivery(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:
        sub = await nc.subscribe("alo.n", ack=True, ack_wait=30)
        await nc.publish("alo.n", b"x")
        m1 = await sub.next_msg(timeout=5)
        await m1.nack()
        m2 = await sub.next_msg(timeout=5)
        assert m2.data == b"x"
        assert m2.delivery_id
        await m2.ack()
        with pytest.raises(mitto.TimeoutError):
            await sub.next_msg(timeout=0.3)


async def test_max_deliver_gives_a_message_up(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:
        sub = await nc.subscribe("alo.m", ack=True, ack_wait=0.2, max_deliver=2)
        await nc.publish("alo.m", b"x")
        assert (await sub.next_msg(timeout=5)).data == b"x"
        assert (await sub.next_msg(timeout=5)).data == b"x"
        with pytest.raises(mitto.TimeoutError):
            await sub.next_msg(timeout=0.8)
        assert (await nc.stats())["redeliveries_given_up"] >= 1


async def test_unacked_messages_come_back_after_the_subscriber_drops_and_resumes(broker: Broker) -> None:
    reconnected = asyncio.Event()
    nc = await mitto.connect(
        broker.url,
        client_id="py-resume-1",
        reconnect_backoff=(0.02, 0.2),
        reconnected_cb=reconnected.set,
    )
    pub = await mitto.connect(broker.url)
    try:
        sub = await nc.subscribe("alo.r", ack=True, ack_wait=1.0)
        assert nc.session, "a client id gets a session"
        for i in range(3):
            await pub.publish("alo.r", bytes([i]))
        got = [await sub.next_msg(timeout=5) for _ in range(3)]
        assert [m.data for m in got] == [b"\x00", b"\x01", b"\x02"]
        # (Within the ack wait: whatever comes again below came after the drop.)
        # The connection drops with three deliveries unacknowledged.
        assert nc._conn is not None and nc._conn.transport is not None
        nc._conn.transport.abort()
        await pub.publish("alo.r", b"while away", ack=True)
        await asyncio.wait_for(reconnected.wait(), 10)
        assert nc.agreed is not None and nc.agreed.resumed
        # At least once: each comes back (a copy more is allowed), and once acknowledged stops.
        want = {b"\x00", b"\x01", b"\x02", b"while away"}
        seen: list[bytes] = []
        while set(seen) != want:
            m = await sub.next_msg(timeout=5)
            assert m.data in want
            seen.append(m.data)
            await m.ack()
        await nc.flush()
        extra = 0
        with pytest.raises(mitto.TimeoutError):
            while True:
                m = await sub.next_msg(timeout=2.5)
                assert m.data in want
                await m.ack()
                extra += 1
                assert extra <= len(want), "acknowledged messages keep coming back"
    finally:
        await nc.close()
        await pub.close()


async def test_a_redelivery_says_which_delivery_it_is(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:
        sub = await nc.subscribe("alo.count", ack=True, ack_wait=0.3)
        await nc.publish("alo.count", b"x")
        first = await sub.next_msg(timeout=5)
        assert first.delivery_count == 1 and "delivery-count" not in first.headers
        again = await sub.next_msg(timeout=5)
        assert (again.data, again.delivery_count) == (b"x", 2)
        await again.ack()


async def test_a_durable_name_keeps_what_was_not_acknowledged_for_the_next_subscriber(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as pub:
        a = await mitto.connect(broker.url)
        sub = await a.subscribe("dur.x", ack=True, ack_wait=30, durable="billing")
        for i in range(3):
            await pub.publish("dur.x", bytes([i]), ack=True)
        got = [await sub.next_msg(timeout=5) for _ in range(3)]
        await got[0].ack()
        await a.flush()
        await a.close()  # CLOSE: no session is kept, the durable name keeps the rest
        await pub.publish("dur.x", b"meanwhile", ack=True)
        async with await mitto.connect(broker.url) as b:
            sub_b = await b.subscribe("dur.x", ack=True, ack_wait=30, durable="billing")
            back = [await sub_b.next_msg(timeout=5) for _ in range(3)]
            assert sorted(m.data for m in back) == sorted([b"\x01", b"\x02", b"meanwhile"])
            assert {m.data: m.delivery_count for m in back}[b"\x01"] >= 2
            for m in back:
                await m.ack()
