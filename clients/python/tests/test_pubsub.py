"""Publish/subscribe against a real ``mitto server``."""

from __future__ import annotations

import asyncio

import pytest

import mitto
from conftest import Broker, BrokerFactory
from mitto import MSGPACK, Kind, Policy


async def test_publish_subscribe_with_headers_kind_and_urgent(broker: Broker) -> None:
    async with await mitto.connect(broker.url, name="t") as nc:
        sub = await nc.subscribe("orders.created")
        await nc.publish(
            "orders.created",
            b'{"id":1}',
            headers={"content-type": "application/json", "tenant": "acme", "Tenant": "two"},
            kind=Kind.EVENT,
            urgent=True,
        )
        m = await sub.next_msg(timeout=5)
        assert m.subject == "orders.created"
        assert m.data == b'{"id":1}'
        assert m.kind == Kind.EVENT
        assert m.urgent
        assert m.headers.get("Content-Type") == b"application/json"
        assert m.headers.get("tenant") == b"acme"
        assert m.headers.get("Tenant") == b"two"
        assert m.json() == {"id": 1}


async def test_wildcards_deliver_once_per_matching_subscription(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:
        star = await nc.subscribe("w.*.created")
        rest = await nc.subscribe("w.>")
        exact = await nc.subscribe("w.eu.created")
        for s in ("w.eu.created", "w.us.created", "w.eu.deleted", "w.a.b.c"):
            await nc.publish(s, s.encode())
        await nc.flush()
        got_star = [(await star.next_msg(timeout=5)).subject for _ in range(2)]
        got_rest = [(await rest.next_msg(timeout=5)).subject for _ in range(4)]
        got_exact = [(await exact.next_msg(timeout=5)).subject]
        assert got_star == ["w.eu.created", "w.us.created"]
        assert got_rest == ["w.eu.created", "w.us.created", "w.eu.deleted", "w.a.b.c"]
        assert got_exact == ["w.eu.created"]
        assert star.pending == rest.pending == exact.pending == 0


async def test_queue_group_members_share_the_messages(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as a, await mitto.connect(broker.url) as b:
        sa = await a.subscribe("jobs.run", queue="workers")
        sb = await b.subscribe("jobs.run", queue="workers")
        plain = await a.subscribe("jobs.run")
        n = 200
        for i in range(n):
            await a.publish("jobs.run", str(i).encode())
        await a.flush()
        got = [(await plain.next_msg(timeout=5)).data for _ in range(n)]
        assert got == [str(i).encode() for i in range(n)]
        for _ in range(500):
            if sa.pending + sb.pending == n:
                break
            await asyncio.sleep(0.01)
        seen = [m.data for m in list(sa._q) + list(sb._q)]
        assert sorted(seen, key=int) == got, "every message goes to exactly one member"
        assert sa.pending > 0 and sb.pending > 0


async def test_callback_subscription_and_unsubscribe(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:
        got: list[bytes] = []
        done = asyncio.Event()

        async def cb(m: mitto.Msg) -> None:
            got.append(m.data)
            if len(got) == 3:
                done.set()

        sub = await nc.subscribe("cb.x", cb=cb)
        for i in range(3):
            await nc.publish("cb.x", bytes([i]))
        await asyncio.wait_for(done.wait(), 5)
        assert got == [b"\x00", b"\x01", b"\x02"]
        await sub.unsubscribe()
        await nc.publish("cb.x", b"late")
        await nc.flush()
        assert got == [b"\x00", b"\x01", b"\x02"]
        assert (await nc.stats())["subscriptions"] >= 0


async def test_auto_unsubscribe_after_n(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:
        sub = await nc.subscribe("auto.x")
        await sub.unsubscribe(limit=2)
        for i in range(5):
            await nc.publish("auto.x", bytes([i]))
        await nc.flush()
        got = [m.data async for m in sub]
        assert got == [b"\x00", b"\x01"]
        # Messages already received count toward the limit.
        sub2 = await nc.subscribe("auto.y")
        await nc.publish("auto.y", b"queued")
        for _ in range(200):
            if sub2.pending:
                break
            await asyncio.sleep(0.01)
        assert sub2.pending == 1
        await sub2.unsubscribe(limit=3)
        for i in range(5):
            await nc.publish("auto.y", bytes([i]))
        await nc.flush()
        assert [m.data async for m in sub2] == [b"queued", b"\x00", b"\x01"]
        sub3 = await nc.subscribe("auto.z")
        for i in range(3):
            await nc.publish("auto.z", bytes([i]))
        for _ in range(200):
            if sub3.pending == 3:
                break
            await asyncio.sleep(0.01)
        await sub3.unsubscribe(limit=2)
        assert [m.data async for m in sub3] == [b"\x00", b"\x01"]


async def test_acked_publish_and_typed_helpers(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:
        sub = await nc.subscribe("typed.>")
        await nc.publish("typed.ack", b"x", ack=True)
        await nc.publish_json("typed.json", {"a": [1, 2]})
        await nc.publish_encoded("typed.mp", {"b": 3}, MSGPACK)
        m1, m2, m3 = [await sub.next_msg(timeout=5) for _ in range(3)]
        assert m1.data == b"x"
        assert m2.headers.get_str("content-type") == "application/json"
        assert m2.decode() == {"a": [1, 2]}
        assert m3.headers.get_str("content-type") == "application/msgpack"
        assert m3.decode() == {"b": 3}


async def test_invalid_subjects_are_refused_locally(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:
        with pytest.raises(mitto.InvalidSubjectError):
            await nc.publish("a.*", b"")
        with pytest.raises(mitto.InvalidSubjectError):
            await nc.subscribe("a..b")
        with pytest.raises(mitto.InvalidSubjectError):
            await nc.request("a b", b"")


async def test_large_payloads_within_the_negotiated_limit(start_broker: BrokerFactory) -> None:
    limit = 4 * 1024 * 1024
    b = start_broker("--max-payload", str(limit))
    async with await mitto.connect(b.url) as nc:
        assert nc.max_payload == limit
        sub = await nc.subscribe("big")
        big = bytes(range(256)) * (limit // 256)
        assert len(big) == limit
        await nc.publish("big", big, ack=True)
        m = await sub.next_msg(timeout=20)
        assert m.data == big
        with pytest.raises(mitto.PayloadTooLargeError):
            await nc.publish("big", big + b"!")
        # Nothing was sent: the connection is still good.
        await nc.publish("big", b"small")
        assert (await sub.next_msg(timeout=5)).data == b"small"


async def test_compressed_publish_is_delivered_decompressed(broker: Broker) -> None:
    async with await mitto.connect(broker.url) as nc:
        assert nc.agreed is not None
        if not nc.agreed.features & mitto.proto.Feature.COMPRESSION_LZ4:
            pytest.skip("the broker does not offer LZ4")
        sub = await nc.subscribe("lz")
        data = b"mitto " * 1000
        await nc.publish("lz", data, compress=True)
        assert (await sub.next_msg(timeout=5)).data == data


async def test_drop_newest_policy_counts_what_a_full_subscriber_loses(start_broker: BrokerFactory) -> None:
    b = start_broker()
    async with await mitto.connect(b.url) as pub, await mitto.connect(b.url) as slow:
        # Two messages of credit, two of queue: the rest is dropped at the broker and counted.
        sub = await slow.subscribe("slow.x", policy=Policy.DROP_NEWEST, max_pending=2, credit=2)
        for i in range(20):
            await pub.publish("slow.x", bytes([i]))
        await pub.flush()
        await slow.flush()
        stats = await pub.stats()
        assert stats["slow_consumer_drops"] > 0
        got = [(await sub.next_msg(timeout=5)).data for _ in range(2)]
        assert got == [b"\x00", b"\x01"], "the oldest were kept"
        assert sub.dropped == 0, "the client never holds more than its credit"


async def test_disconnect_policy_ends_the_subscription_with_slow_consumer(
    start_broker: BrokerFactory,
) -> None:
    b = start_broker()
    errors: list[mitto.MittoError] = []
    async with await mitto.connect(b.url) as pub, await mitto.connect(b.url, error_cb=errors.append) as slow:
        sub = await slow.subscribe("dc.x", policy=Policy.DISCONNECT, max_pending=2, credit=1)
        for i in range(10):
            await pub.publish("dc.x", bytes([i]))
        await pub.flush()
        with pytest.raises(mitto.SlowConsumerError):
            for _ in range(10):
                await sub.next_msg(timeout=5)
        assert sub.closed
        assert any(e.status == mitto.Status.SLOW_CONSUMER for e in errors)
        # The connection itself is fine.
        await slow.flush()


async def test_flush_health_and_drain(broker: Broker) -> None:
    nc = await mitto.connect(broker.url)
    h = await nc.health()
    assert h.state == "serving"
    got: list[bytes] = []

    async def slow_cb(m: mitto.Msg) -> None:
        await asyncio.sleep(0.01)
        got.append(m.data)

    sub = await nc.subscribe("drain.x", cb=slow_cb)
    for i in range(20):
        await nc.publish("drain.x", bytes([i]))
    # Received, not yet handled: the callback sleeps on each.
    for _ in range(500):
        if sub.delivered == 20:
            break
        await asyncio.sleep(0.01)
    assert len(got) < 20
    await nc.drain()
    assert got == [bytes([i]) for i in range(20)], "drain lets the callback finish what it received"
    assert nc.is_closed
    with pytest.raises(mitto.ConnectionClosedError):
        await nc.publish("drain.x", b"after")
