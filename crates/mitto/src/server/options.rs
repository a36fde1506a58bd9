//! Options of a server.

use crate::error::{Error, Result};
use crate::options::ConnOptions;
use crate::transport::TlsServerConfig;
use bytes::Bytes;
use mitto_proto::{Hello, Status};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

pub(super) type AuthFn = Arc<dyn Fn(&Hello) -> Result<()> + Send + Sync>;

/// Options of a [`Server`](crate::Server), a by-value builder.
#[derive(Clone)]
pub struct ServerOptions {
    pub(super) conn: ConnOptions,
    pub(super) tls: Option<TlsServerConfig>,
    pub(super) auth: Option<AuthFn>,
    pub(super) handshake_timeout: Duration,
    pub(super) write_deadline: Duration,
    pub(super) max_calls_per_connection: usize,
    pub(super) drain_timeout: Duration,
    pub(super) group: Option<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            conn: ConnOptions::new(format!("mitto/{}", env!("CARGO_PKG_VERSION"))),
            tls: None,
            auth: None,
            handshake_timeout: Duration::from_secs(10),
            write_deadline: Duration::from_secs(10),
            max_calls_per_connection: 10_000,
            drain_timeout: Duration::from_secs(10),
            group: None,
        }
    }
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("name", &self.conn.name)
            .field("tls", &self.tls.is_some())
            .field("auth", &self.auth.is_some())
            .field("max_payload", &self.conn.max_payload)
            .finish_non_exhaustive()
    }
}

impl ServerOptions {
    /// Defaults: 30 s keepalive, 10 s handshake timeout, 64 MiB max payload, 10,000 calls in
    /// flight per connection, 10 s drain on shutdown, no auth, no TLS.
    pub fn new() -> Self {
        Self::default()
    }
    /// The name sent in HELLO and HEALTH.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.conn.name = name.into();
        self
    }
    /// TLS for `tls://` listeners.
    pub fn tls(mut self, tls: TlsServerConfig) -> Self {
        self.tls = Some(tls);
        self
    }
    /// Requires every client to present this token in HELLO.
    pub fn token(self, token: impl Into<Bytes>) -> Self {
        let token: Bytes = token.into();
        self.auth(move |h: &Hello| {
            if bool::from(h.auth[..].ct_eq(&token[..])) {
                Ok(())
            } else {
                Err(Error::new(Status::UNAUTHORIZED, "invalid or missing token"))
            }
        })
    }
    /// Checks every client's HELLO (user, auth, name); an error refuses the connection with the
    /// error's status.
    pub fn auth(mut self, check: impl Fn(&Hello) -> Result<()> + Send + Sync + 'static) -> Self {
        self.auth = Some(Arc::new(check));
        self
    }
    /// Keepalive PING interval; a peer silent for two intervals is dropped. The shorter of the
    /// two sides' intervals applies; `None` proposes none, so a client's applies, and keepalive
    /// is off only if the client proposes none either (spec section 8.2).
    pub fn keepalive(mut self, k: Option<Duration>) -> Self {
        self.conn.keepalive = k;
        self
    }
    /// Latency mode: every connection's reads keep `poller` polling (see
    /// [`crate::BusyPoll`]; spawn its `run()` on the runtime the server runs on).
    pub fn busy_poll(mut self, poller: Arc<crate::BusyPoll>) -> Self {
        self.conn.busy_poll = Some(poller);
        self
    }
    /// Spin-then-park window of socket connections ([`crate::DEFAULT_SPIN`], 100 µs, by
    /// default; zero turns it off): while a connection's reads come less than this apart, its
    /// driver polls the runtime's sockets instead of sleeping between them, for at most this
    /// long after the last read. Dense traffic (many calls in flight) then costs no thread
    /// wake-ups; sparse traffic and an idle connection cost no CPU.
    pub fn spin(mut self, window: Duration) -> Self {
        self.conn.spin = window;
        self
    }
    /// How long a new connection may take to set up its transport (a TLS handshake) and send
    /// HELLO; a connection still silent then is closed.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }
    /// How long a client may leave its answers unread: while more than
    /// [`crate::conn::OUTBOX_HIGH_WATER`] bytes wait to be written to a connection, the server
    /// reads nothing more from it, and when they stay above that for this long (10 s by
    /// default) the connection is closed (SLOW_CONSUMER, counted as `slow_connections_closed`).
    pub fn write_deadline(mut self, t: Duration) -> Self {
        self.write_deadline = t;
        self
    }
    /// Largest request payload accepted (negotiated down with the client's).
    pub fn max_payload(mut self, n: u32) -> Self {
        self.conn.max_payload = n;
        self
    }
    /// Calls in flight per connection beyond which new ones get BACKPRESSURE_REJECTION.
    pub fn max_calls_per_connection(mut self, n: usize) -> Self {
        self.max_calls_per_connection = n.max(1);
        self
    }
    /// Bound of each connection's queue of outgoing frames from handlers.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.conn.queue_capacity = n.max(1);
        self
    }
    /// The queue group under which [`Server::attach`](crate::Server::attach) registers the methods (default: each
    /// method's name, so that every instance of a method shares its calls).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }
    /// How long shutdown waits for calls in flight before it aborts them.
    pub fn drain_timeout(mut self, t: Duration) -> Self {
        self.drain_timeout = t;
        self
    }
}
