//! Options of a client and of one call.

use super::ClientMiddleware;
use crate::codec::Codec;
use crate::options::ConnOptions;
use crate::transport::TlsClientConfig;
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Options of a [`Client`](crate::Client), a by-value builder.
///
/// ```
/// use mitto::ClientOptions;
/// use std::time::Duration;
/// let opts = ClientOptions::new()
///     .name("orders-svc")
///     .timeout(Duration::from_secs(2))
///     .keepalive(Some(Duration::from_secs(10)));
/// ```
#[derive(Clone)]
pub struct ClientOptions {
    pub(crate) conn: ConnOptions,
    pub(crate) client_id: String,
    pub(crate) user: String,
    pub(crate) auth: Bytes,
    pub(crate) tls: Option<TlsClientConfig>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect: bool,
    pub(crate) max_reconnects: Option<u32>,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) max_retries: u32,
    pub(crate) codec: Codec,
    pub(crate) middleware: Vec<Arc<dyn ClientMiddleware>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            conn: ConnOptions::new(String::new()),
            client_id: String::new(),
            user: String::new(),
            auth: Bytes::new(),
            tls: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect: true,
            max_reconnects: None,
            backoff: (Duration::from_millis(50), Duration::from_secs(5)),
            max_retries: 3,
            codec: Codec::Json,
            middleware: Vec::new(),
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("name", &self.conn.name)
            .field("timeout", &self.timeout)
            .field("keepalive", &self.conn.keepalive)
            .field("reconnect", &self.reconnect)
            .field("max_reconnects", &self.max_reconnects)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Defaults: 30 s call deadline, 10 s connect timeout, 30 s keepalive, reconnect on with
    /// 50 ms to 5 s backoff and no limit on attempts, 3 retries of idempotent calls, JSON for
    /// typed calls.
    pub fn new() -> Self {
        Self::default()
    }
    /// The name sent in HELLO (shows up in the server's logs and stats).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.conn.name = name.into();
        self
    }
    /// A stable client id (for session resume).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }
    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<Bytes>) -> Self {
        self.auth = token.into();
        self
    }
    /// Authenticates with a user name and a password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<Bytes>) -> Self {
        self.user = user.into();
        self.auth = password.into();
        self
    }
    /// TLS settings for `tls://` URLs.
    pub fn tls(mut self, tls: TlsClientConfig) -> Self {
        self.tls = Some(tls);
        self
    }
    /// The deadline of calls that set none.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// How long connecting (TCP, TLS, HELLO) may take.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// Keepalive PING interval proposed to the server; a peer silent for two intervals is dead.
    /// The shorter of the two sides' intervals applies; `None` proposes none, so the server's
    /// applies, and keepalive is off only if the server has none either (spec section 8.2).
    pub fn keepalive(mut self, k: Option<Duration>) -> Self {
        self.conn.keepalive = k;
        self
    }
    /// Latency mode: the connection's reads keep `poller` polling (see [`crate::BusyPoll`];
    /// spawn its `run()` on the runtime the client runs on, one for all its clients).
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
    /// Whether to reconnect after the connection is lost (on by default). Off, the client is
    /// closed for good when its connection is lost ([`CloseReason::ReconnectOff`]).
    ///
    /// [`CloseReason::ReconnectOff`]: crate::CloseReason::ReconnectOff
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }
    /// How many reconnect attempts in a row may fail before the client gives up (nats.go's
    /// `MaxReconnects`). `None`, the default, tries forever; `Some(n)`: once `n` attempts after
    /// a loss have failed, the client is closed for good: calls waiting for the connection and
    /// every later one fail with UNAVAILABLE and [`CloseReason::ReconnectsExhausted`],
    /// subscriptions end (`next()` returns `None` after what was already received), and
    /// [`Client::closed`] returns the error. A successful reconnect starts the count again.
    /// `Some(0)` gives up at the first loss, like `reconnect(false)`.
    ///
    /// An attempt takes at most [`connect_timeout`](Self::connect_timeout), and the attempts
    /// are apart by the [`backoff`](Self::backoff): that bounds how long a client whose server
    /// is gone for good keeps trying.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Client, ClientOptions, CloseReason, Server};
    /// use std::time::Duration;
    ///
    /// let server = Server::new().bind("tcp://127.0.0.1:0").await?;
    /// let opts = ClientOptions::new()
    ///     .max_reconnects(Some(3))
    ///     .backoff(Duration::from_millis(10), Duration::from_millis(50));
    /// let client = Client::connect(server.local_url(), opts).await?;
    /// server.shutdown().await; // gone for good
    /// let why = client.closed().await;
    /// assert_eq!(why.close_reason(), Some(CloseReason::ReconnectsExhausted));
    /// let e = client.call("echo", "hi").await.unwrap_err();
    /// assert_eq!(e.close_reason(), Some(CloseReason::ReconnectsExhausted));
    /// # Ok(()) }
    /// ```
    ///
    /// [`CloseReason::ReconnectsExhausted`]: crate::CloseReason::ReconnectsExhausted
    /// [`Client::closed`]: crate::Client::closed
    pub fn max_reconnects(mut self, n: Option<u32>) -> Self {
        self.max_reconnects = n;
        self
    }
    /// Reconnect backoff: from `min`, doubling with jitter, up to `max`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max.max(min));
        self
    }
    /// How many times an idempotent call is retried after its connection was lost.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
    /// Bound of the queue of frames waiting for the connection (backpressure beyond it).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.conn.queue_capacity = n.max(1);
        self
    }
    /// Largest payload this client accepts (negotiated down with the server's).
    pub fn max_payload(mut self, n: u32) -> Self {
        self.conn.max_payload = n;
        self
    }
    /// Codec of typed calls.
    pub fn codec(mut self, c: Codec) -> Self {
        self.codec = c;
        self
    }
    /// Adds a middleware around every unary call (first added runs first).
    pub fn middleware(mut self, m: impl ClientMiddleware) -> Self {
        self.middleware.push(Arc::new(m));
        self
    }

    /// Adds a closure that sees every unary call before it is sent, as middleware that needs
    /// no `await`: it may change the call (add headers, set a deadline) or refuse it with an
    /// [`Error`](crate::Error), which the caller gets instead of an answer (nothing is sent).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Client, ClientOptions, Error, OutgoingCall, Request, Server, Status};
    ///
    /// let server = Server::new()
    ///     .route("whoami", |req: Request| async move {
    ///         Ok(req.headers().get_str("tenant").unwrap_or("nobody").to_owned())
    ///     })
    ///     .bind("mem://client-interceptor-doc")
    ///     .await?;
    /// let opts = ClientOptions::new().interceptor(|call: &mut OutgoingCall| {
    ///     if call.method.starts_with("admin.") {
    ///         return Err(Error::new(Status::FORBIDDEN, "not from this client"));
    ///     }
    ///     let headers = call.options.headers.take().unwrap_or_default();
    ///     call.options.headers = Some(headers.with("tenant", "acme"));
    ///     Ok(())
    /// });
    /// let client = Client::connect(server.local_url(), opts).await?;
    /// assert_eq!(client.call("whoami", "").await?, "acme");
    /// let e = client.call("admin.reset", "").await.unwrap_err();
    /// assert_eq!(e.status(), Status::FORBIDDEN);
    /// client.close().await;
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn interceptor<F>(self, f: F) -> Self
    where
        F: Fn(&mut super::OutgoingCall) -> crate::Result<()> + Send + Sync + 'static,
    {
        self.middleware(super::middleware::ClientInterceptor(f))
    }
}
