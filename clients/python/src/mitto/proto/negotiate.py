"""HELLO negotiation (PROTOCOL.md section 8.2): what both sides agree on."""

from __future__ import annotations

from dataclasses import dataclass

from .bodies import Hello
from .constants import DEFAULT_MAX_HEADERS, DEFAULT_MAX_PAYLOAD, VERSION_MAJOR


class VersionMismatch(ValueError):
    """The peers speak different major versions."""


@dataclass(frozen=True)
class Agreed:
    """The values both sides enforce after the handshake."""

    major: int
    minor: int
    features: int
    max_payload: int
    max_headers: int
    keepalive_ms: int
    resumed: bool
    session: str
    client_id: str
    server_name: str


def _d(v: int, default: int) -> int:
    return default if v == 0 else v


def negotiate(offer: Hello, reply: Hello) -> Agreed:
    """The client's view: its offer and the server's reply, combined by the rules of 8.2."""
    if offer.major != reply.major or offer.major != VERSION_MAJOR:
        raise VersionMismatch(
            f"the server speaks protocol {reply.major}.{reply.minor}, this client {offer.major}.{offer.minor}"
        )
    if offer.keepalive_ms == 0 or reply.keepalive_ms == 0:
        keepalive = offer.keepalive_ms or reply.keepalive_ms
    else:
        keepalive = min(offer.keepalive_ms, reply.keepalive_ms)
    return Agreed(
        major=offer.major,
        minor=min(offer.minor, reply.minor),
        features=offer.features & reply.features,
        max_payload=min(
            _d(offer.max_payload, DEFAULT_MAX_PAYLOAD), _d(reply.max_payload, DEFAULT_MAX_PAYLOAD)
        ),
        max_headers=min(
            _d(offer.max_headers, DEFAULT_MAX_HEADERS), _d(reply.max_headers, DEFAULT_MAX_HEADERS)
        ),
        keepalive_ms=keepalive,
        resumed=bool(offer.session) and bool(reply.flags & Hello.RESUMED),
        session=reply.session,
        client_id=reply.client_id,
        server_name=reply.name,
    )
