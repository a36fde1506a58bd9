//! What a [`Connection`](super::Connection) is told when it is made: its own HELLO, its bounds
//! and how its link carries frames.

use crate::body::Hello;
use crate::negotiate::{Features, Version};
use std::time::Duration;

/// Which end of the transport this connection is (spec section 1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Opened the transport and sends the first HELLO; its call ids have bit 63 clear.
    Client,
    /// Accepted the transport (an RPC server, a broker); its call ids have bit 63 set.
    Server,
}

/// How the link under the connection carries frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Link {
    /// A byte stream (TCP, TLS, Unix socket): the driver takes encoded bytes with
    /// [`Connection::poll_transmit`](super::Connection::poll_transmit).
    #[default]
    Bytes,
    /// Frames handed over as values inside one process: the driver takes frames with
    /// [`Connection::poll_transmit_frames`](super::Connection::poll_transmit_frames), and
    /// values attached to frames are never encoded.
    Frames,
}

/// A connection's settings. [`Config::client`] and [`Config::server`] give the defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// This side's HELLO: the offer of a client (name, client id, session, credentials,
    /// features, limits, keepalive), or a server's own settings (name, features, limits,
    /// keepalive) that it negotiates each client's offer against.
    pub hello: Hello,
    /// The link's form.
    pub link: Link,
    /// How long the handshake may take before the connection is closed (spec section 8.1,
    /// step 5).
    pub handshake_timeout: Duration,
    /// Bytes of frames queued and not yet taken by the driver past which new operations
    /// (calls, publishes, subscriptions, stream items) are refused with
    /// [`CommandError::WouldBlock`](super::CommandError::WouldBlock).
    pub max_outbound: usize,
    /// Bytes of answers the connection owes the peer on its own (PONG, ERROR, refusals of
    /// requests) that may wait for the driver; past it, received input is left unread until the
    /// driver takes what is queued (a server), or the connection ends (a client, which must
    /// keep reading, spec section 9.4).
    pub max_owed: usize,
    /// Events that may wait for [`Connection::poll_event`](super::Connection::poll_event);
    /// past it, received input is left unread until the application takes them.
    pub max_events: usize,
    /// Operations of this side awaiting an answer (calls, acknowledged publishes,
    /// subscriptions, queries) at once; at most 2^20 - 1.
    pub max_pending: usize,
    /// Calls opened by the peer in flight at once; more are answered RESPONSE
    /// BACKPRESSURE_REJECTION.
    pub max_incoming_calls: usize,
    /// A server that opens calls on the connection (a broker forwarding them to a service
    /// instance): a REQUEST with bit 63 set from the client is refused with PROTOCOL_ERROR
    /// (spec section 10.1). A server's first call sets it too.
    pub opens_calls: bool,
    /// How long a SUBSCRIBE, REGISTER or query waits for its answer; `None` waits until the
    /// connection ends.
    pub op_timeout: Option<Duration>,
    /// Unacknowledged at-least-once deliveries one subscription may hold beyond its credit;
    /// more EVENTs are not surfaced (the broker redelivers them, so nothing is lost).
    pub max_unacked: u32,
}

impl Config {
    /// The defaults of a client offering `hello` (see [`Config::offer`] for a typical one).
    pub fn client(hello: Hello) -> Config {
        Config {
            hello,
            link: Link::Bytes,
            handshake_timeout: Duration::from_secs(10),
            max_outbound: 1 << 20,
            max_owed: 256 << 10,
            max_events: 4096,
            max_pending: (1 << 20) - 1,
            max_incoming_calls: 4096,
            opens_calls: false,
            op_timeout: Some(Duration::from_secs(10)),
            max_unacked: 1 << 16,
        }
    }

    /// The defaults of a server whose own settings are `hello`.
    pub fn server(hello: Hello) -> Config {
        Config::client(hello)
    }

    /// A HELLO offering every feature this build implements, the default limits and the
    /// given keepalive, under `name`.
    pub fn offer(name: &str, keepalive: Option<Duration>) -> Hello {
        Hello {
            version: Version::CURRENT,
            features: Features::supported(),
            keepalive_ms: keepalive.map_or(0, |k| k.as_millis().min(u32::MAX.into()) as u32),
            name: name.into(),
            ..Hello::default()
        }
    }

    /// The link's form.
    pub fn link(mut self, link: Link) -> Config {
        self.link = link;
        self
    }
}

/// Items each side of a streamed call may send before the other grants more (spec section
/// 10.5).
pub const INITIAL_STREAM_CREDIT: u32 = 64;
