"""Transports chosen by URL: ``tcp://host:port`` (or a bare ``host:port``), ``tls://host:port``,
``unix:///path``, ``ws://host:port/path`` and ``wss://host:port/path``. Each opener returns an
asyncio transport wired to the connection's protocol, so a new scheme plugs in with
``register_transport``."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ._websocket import open_websocket
from .errors import MittoError, UnavailableError
from .proto.status import Status

DEFAULT_PORT = 4747
_DEFAULT_PORTS = {"ws": 80, "wss": 443}


@dataclass(frozen=True)
class Endpoint:
    """A parsed URL."""

    scheme: str
    host: str = ""
    port: int = 0
    #: A Unix socket's path, or a WebSocket URL's path and query.
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


@dataclass(frozen=True)
class TransportOptions:
    """What an opener may need besides the endpoint."""

    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None


ProtocolFactory = Callable[[], asyncio.Protocol]
Opener = Callable[[Endpoint, TransportOptions, ProtocolFactory], Awaitable[asyncio.BaseTransport]]

_OPENERS: dict[str, Opener] = {}


def register_transport(scheme: str, opener: Opener) -> None:
    """Makes ``scheme://`` URLs open with `opener`."""
    _OPENERS[scheme] = opener


def parse_url(url: str) -> Endpoint:
    """Parses a broker or server URL; a bare ``host:port`` means ``tcp://``."""
    if "://" not in url:
        url = "tcp://" + url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "unix":
        path = parts.netloc + parts.path
        if not path:
            raise MittoError(Status.BAD_REQUEST, f"{url!r}: a unix:// URL needs a path")
        return Endpoint("unix", path=path)
    if scheme not in _OPENERS:
        raise MittoError(
            Status.BAD_REQUEST,
            f"{url!r}: unsupported scheme {scheme!r} (expected {', '.join(sorted(_OPENERS))})",
        )
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme, DEFAULT_PORT)
    except ValueError:
        raise MittoError(Status.BAD_REQUEST, f"{url!r}: invalid port") from None
    if not parts.hostname:
        raise MittoError(Status.BAD_REQUEST, f"{url!r}: no host")
    path = ""
    if scheme in _DEFAULT_PORTS:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Endpoint(scheme, host=parts.hostname, port=port, path=path)


async def open_transport(
    ep: Endpoint, opts: TransportOptions, factory: ProtocolFactory
) -> asyncio.BaseTransport:
    """Opens a transport to `ep`; failures are ``UnavailableError``-class ``MittoError``s."""
    opener = _OPENERS.get(ep.scheme)
    if opener is None:
        raise MittoError(Status.BAD_REQUEST, f"unsupported scheme {ep.scheme!r}")
    try:
        return await opener(ep, opts, factory)
    except ssl.SSLError as e:
        raise UnavailableError(
            Status.UNAVAILABLE, f"TLS handshake with {ep} failed: {e}", retryable=False
        ) from e
    except OSError as e:
        raise UnavailableError(Status.UNAVAILABLE, f"cannot connect to {ep}: {e}", retryable=True) from e


async def _tcp(ep: Endpoint, opts: TransportOptions, factory: ProtocolFactory) -> asyncio.BaseTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(factory, ep.host, ep.port)
    return transport


async def _tls(ep: Endpoint, opts: TransportOptions, factory: ProtocolFactory) -> asyncio.BaseTransport:
    loop = asyncio.get_running_loop()
    ctx = opts.tls or ssl.create_default_context()
    transport, _ = await loop.create_connection(
        factory, ep.host, ep.port, ssl=ctx, server_hostname=opts.tls_hostname or ep.host
    )
    return transport


async def _unix(ep: Endpoint, opts: TransportOptions, factory: ProtocolFactory) -> asyncio.BaseTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_unix_connection(factory, ep.path)
    return transport


async def _ws(ep: Endpoint, opts: TransportOptions, factory: ProtocolFactory) -> asyncio.BaseTransport:
    return await open_websocket(ep.host, ep.port, ep.path, None, None, factory, str(ep))


async def _wss(ep: Endpoint, opts: TransportOptions, factory: ProtocolFactory) -> asyncio.BaseTransport:
    ctx = opts.tls or ssl.create_default_context()
    return await open_websocket(ep.host, ep.port, ep.path, ctx, opts.tls_hostname, factory, str(ep))


register_transport("tcp", _tcp)
register_transport("tls", _tls)
register_transport("unix", _unix)
register_transport("ws", _ws)
register_transport("wss", _wss)
