"""Authentication, permissions, TLS (tls:// and wss://) and Unix sockets against a real
``mitto server``."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
import trustme

import mitto
from conftest import BrokerFactory
from mitto import Status


async def test_token_auth(start_broker: BrokerFactory) -> None:
    b = start_broker("--token", "s3cret")
    async with await mitto.connect(b.url, token="s3cret") as nc:
        await nc.flush()
    with pytest.raises(mitto.AuthorizationError) as ei:
        await mitto.connect(b.url, token="wrong", reconnect=False)
    assert ei.value.status == Status.UNAUTHORIZED and ei.value.remote
    with pytest.raises(mitto.AuthorizationError):
        await mitto.connect(b.url, reconnect=False)


USERS = """
[[users]]
name = "alice"
password = "pw-alice"
publish = ["orders.>"]
subscribe = ["orders.>", "status.*"]

[[users]]
name = "bob"
password = "pw-bob"
"""


async def test_user_password_and_a_denied_subject(start_broker: BrokerFactory) -> None:
    b = start_broker(config=USERS)
    errors: list[mitto.MittoError] = []
    async with await mitto.connect(b.url, user="alice", password="pw-alice", error_cb=errors.append) as alice:
        sub = await alice.subscribe("orders.>")
        await alice.publish("orders.new", b"1", ack=True)
        assert (await sub.next_msg(timeout=5)).data == b"1"
        with pytest.raises(mitto.ForbiddenError):
            await alice.publish("admin.reset", b"", ack=True)
        with pytest.raises(mitto.ForbiddenError):
            await alice.subscribe("admin.>")
        with pytest.raises(mitto.ForbiddenError):
            await alice.request("admin.svc", b"", timeout=5)
        # A fire-and-forget publish that is refused is reported to the error callback.
        await alice.publish("admin.reset", b"")
        await alice.flush()
        for _ in range(200):
            if errors:
                break
            await asyncio.sleep(0.01)
        assert any(e.status == Status.FORBIDDEN for e in errors)
    with pytest.raises(mitto.AuthorizationError):
        await mitto.connect(b.url, user="alice", password="nope", reconnect=False)
    async with await mitto.connect(b.url, user="bob", password="pw-bob") as bob:
        await bob.publish("admin.reset", b"", ack=True)


async def test_tls_with_a_generated_certificate(start_broker: BrokerFactory, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_pem))
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    b = start_broker(
        listen=["tls://127.0.0.1:0"],
        config=f'[tls]\ncert = "{cert_pem}"\nkey = "{key_pem}"\n',
    )
    assert b.url.startswith("tls://")
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    async with await mitto.connect(b.url, tls=ctx) as nc:
        sub = await nc.subscribe("tls.x")
        await nc.publish("tls.x", b"secret")
        assert (await sub.next_msg(timeout=5)).data == b"secret"
    # A client that does not trust the certificate is refused before any frame.
    with pytest.raises(mitto.UnavailableError, match="TLS"):
        await mitto.connect(b.url, reconnect=False)
    # Plain TCP against the TLS port: no mitto answer, a clear error rather than a hang.
    plain = b.url.replace("tls://", "tcp://")
    with pytest.raises(mitto.MittoError):
        await mitto.connect(plain, reconnect=False, connect_timeout=3)


async def test_wss_with_a_custom_ca_and_server_name(start_broker: BrokerFactory, tmp_path: Path) -> None:
    ca = trustme.CA()
    # Issued to a name only: the URL's address matches it only through ``tls_hostname``.
    cert = ca.issue_cert("mitto.test")
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_pem))
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    b = start_broker(
        listen=["wss://127.0.0.1:0"],
        config=f'[tls]\ncert = "{cert_pem}"\nkey = "{key_pem}"\n',
    )
    assert b.url.startswith("wss://")
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    async with await mitto.connect(b.url, tls=ctx, tls_hostname="mitto.test") as nc:
        sub = await nc.subscribe("wss.x")
        await nc.publish("wss.x", b"secret")
        assert (await sub.next_msg(timeout=5)).data == b"secret"
    # The certificate does not name the address, and the system's CAs do not know this one.
    with pytest.raises(mitto.UnavailableError, match="TLS"):
        await mitto.connect(b.url, tls=ctx, reconnect=False)
    with pytest.raises(mitto.UnavailableError, match="TLS"):
        await mitto.connect(b.url, tls_hostname="mitto.test", reconnect=False)
    # Plain ws:// against the wss:// port: a clear error rather than a hang.
    with pytest.raises(mitto.MittoError):
        await mitto.connect(b.url.replace("wss://", "ws://"), reconnect=False, connect_timeout=3)


async def test_unix_socket(start_broker: BrokerFactory, tmp_path: Path) -> None:
    path = tmp_path / "mitto.sock"
    b = start_broker(listen=[f"unix://{path}"])
    async with await mitto.connect(f"unix://{path}") as nc:

        async def echo(req: mitto.Request) -> bytes:
            return req.data

        await nc.service("unix.echo", echo)
        assert (await nc.request("unix.echo", b"over a socket file", timeout=5)).data == b"over a socket file"
    assert b.url.startswith("unix://")
