"""mitto for asyncio: publish, subscribe, request, answer requests and call RPC methods over
mitto's binary protocol (``spec/PROTOCOL.md``), against a mitto broker or a Rust ``mitto::Server``.

    import mitto

    nc = await mitto.connect("tcp://127.0.0.1:4747")
    sub = await nc.subscribe("orders.>")
    await nc.publish("orders.created", b'{"id": 1}')
    msg = await sub.next_msg(timeout=1)
    await nc.close()
"""

from ._base import DEFAULT_SUBSCRIPTION_CREDIT, Options
from ._version import __version__
from .calls import StreamCall
from .client import Client, connect
from .codec import JSON, MSGPACK, Codec, codec_for
from .errors import (
    AuthorizationError,
    CallCancelledError,
    ConnectionClosedError,
    ForbiddenError,
    InvalidSubjectError,
    MittoError,
    NoRespondersError,
    PayloadTooLargeError,
    ProtocolError,
    SlowConsumerError,
    TimeoutError,
    UnavailableError,
)
from .message import Msg, Response
from .proto import Delivery, Headers, Kind, Policy, Status
from .service import Request, Service
from .subscription import Subscription
from .transport import Endpoint, parse_url, register_transport

__all__ = [
    "DEFAULT_SUBSCRIPTION_CREDIT",
    "JSON",
    "MSGPACK",
    "AuthorizationError",
    "CallCancelledError",
    "Client",
    "Codec",
    "ConnectionClosedError",
    "Delivery",
    "Endpoint",
    "ForbiddenError",
    "Headers",
    "InvalidSubjectError",
    "Kind",
    "MittoError",
    "Msg",
    "NoRespondersError",
    "Options",
    "PayloadTooLargeError",
    "Policy",
    "ProtocolError",
    "Request",
    "Response",
    "Service",
    "SlowConsumerError",
    "Status",
    "StreamCall",
    "Subscription",
    "TimeoutError",
    "UnavailableError",
    "__version__",
    "codec_for",
    "connect",
    "parse_url",
    "register_transport",
]
