//! The RPC server: handlers registered by method name, run concurrently per connection, with
//! deadlines, cancellation, streams under credit-based flow control, middleware, health and
//! stats, and a graceful drain on shutdown.

use crate::codec::{decode_proto, encode_proto, Codec, PROTOBUF};
use crate::conn::{Ctx, Driver, DriverConfig, Reactor};
use crate::deadlines::Deadlines;
use crate::error::{Error, Result};
use crate::handshake;
use crate::transport::{Endpoint, Incoming, Listener, TlsServerConfig};
use crate::INITIAL_STREAM_CREDIT;
use bytes::Bytes;
use futures_core::Stream;
use futures_util::future::BoxFuture;
use futures_util::future::{AbortHandle, Abortable, Aborted};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use mitto_proto::negotiate::Features;
use mitto_proto::{
    Flags, Frame, FrameType, Headers, HealthReport, HealthState, Hello, Limits, MsgKind,
    StatsReport, Status, Subject, Version, WellKnown,
};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

/// The custom header that carries an error's machine-readable details.
pub(crate) const ERROR_DETAILS_HEADER: &str = "error-details";

// ---------------------------------------------------------------------------------------------
// requests and responses

/// Who is calling: what the peer said in HELLO, and where it connected from.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    /// The transport address of the peer.
    pub addr: String,
    /// The name the client gave in HELLO.
    pub name: String,
    /// The client id (given by the client, or assigned by the server).
    pub client_id: String,
    /// The user the client authenticated as (empty with token or no auth).
    pub user: String,
}

/// One incoming call, as a handler and the middleware before it see it.
pub struct Request {
    method: Subject,
    headers: Headers,
    payload: Bytes,
    kind: MsgKind,
    deadline: Option<Instant>,
    peer: Arc<PeerInfo>,
    items: Option<RequestStream>,
    sink: Option<StreamSender>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method.as_str())
            .field("payload_len", &self.payload.len())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// The method name (the REQUEST frame's subject).
    pub fn method(&self) -> &str {
        self.method.as_str()
    }
    /// The request headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// Replaces the headers (middleware can add to them).
    pub fn set_headers(&mut self, headers: Headers) {
        self.headers = headers;
    }
    /// The request payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
    /// The message kind.
    pub fn kind(&self) -> MsgKind {
        self.kind
    }
    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    /// Who is calling.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
    /// The codec the caller used, from its `content-type` (JSON when absent).
    pub fn codec(&self) -> Result<Codec> {
        Codec::from_content_type(self.headers.content_type())
    }
    /// Decodes the payload with the caller's codec.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.codec()?.decode(&self.payload)
    }
}

/// What a handler answers: payload and headers.
#[derive(Clone, Debug, Default)]
pub struct Response {
    /// Response headers.
    pub headers: Headers,
    /// Response payload.
    pub payload: Bytes,
}

impl Response {
    /// A response with a payload and no headers.
    pub fn new(payload: impl Into<Bytes>) -> Response {
        Response {
            headers: Headers::new(),
            payload: payload.into(),
        }
    }
    /// Sets the headers.
    pub fn with_headers(mut self, headers: Headers) -> Response {
        self.headers = headers;
        self
    }
    /// A value encoded with `codec`, with its content type set.
    pub fn encode<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Response> {
        let headers = Headers::builder().insert(WellKnown::ContentType, codec.content_type())?;
        Ok(Response {
            headers: headers.build(),
            payload: codec.encode(value)?,
        })
    }
}

impl From<Bytes> for Response {
    fn from(b: Bytes) -> Response {
        Response::new(b)
    }
}
impl From<Vec<u8>> for Response {
    fn from(b: Vec<u8>) -> Response {
        Response::new(b)
    }
}
impl From<&'static [u8]> for Response {
    fn from(b: &'static [u8]) -> Response {
        Response::new(b)
    }
}
impl From<&'static str> for Response {
    fn from(b: &'static str) -> Response {
        Response::new(b)
    }
}
impl From<String> for Response {
    fn from(b: String) -> Response {
        Response::new(b)
    }
}
impl From<()> for Response {
    fn from(_: ()) -> Response {
        Response::default()
    }
}

/// The items a client streams to a handler. Grants the client more credit as they are consumed.
pub struct RequestStream {
    id: u64,
    rx: mpsc::Receiver<Bytes>,
    ctl: mpsc::UnboundedSender<Cmd>,
    consumed: u32,
}

impl fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestStream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RequestStream {
    /// The next item; `None` once the client has finished its side.
    pub async fn next(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for RequestStream {
    type Item = Bytes;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => {
                self.consumed += 1;
                if self.consumed >= INITIAL_STREAM_CREDIT / 2 {
                    let n = std::mem::take(&mut self.consumed);
                    let _ = self.ctl.send(Cmd::Out(Frame::credit_stream(self.id, n)));
                }
                Poll::Ready(Some(b))
            }
            other => other,
        }
    }
}

/// Sends a handler's stream items to the client, waiting for the client's credit.
#[derive(Clone)]
pub struct StreamSender {
    id: u64,
    cmds: mpsc::Sender<Cmd>,
    credit: Arc<Semaphore>,
}

impl fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSender")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl StreamSender {
    /// Sends one item; waits while the client has granted no credit. Fails with CANCELLED once
    /// the call has ended.
    pub async fn send(&self, item: impl Into<Bytes>) -> Result<()> {
        let ended = || Error::new(Status::CANCELLED, "the call has ended");
        self.credit.acquire().await.map_err(|_| ended())?.forget();
        self.cmds
            .send(Cmd::Item(Frame::stream(self.id, item, false)))
            .await
            .map_err(|_| ended())
    }

    /// Sends a value encoded with `codec`.
    pub async fn send_typed<T: Serialize + ?Sized>(&self, codec: Codec, value: &T) -> Result<()> {
        self.send(codec.encode(value)?).await
    }
}

// ---------------------------------------------------------------------------------------------
// handlers and middleware

type Handler = Arc<dyn Fn(Request) -> BoxFuture<'static, Result<Response>> + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Unary,
    ServerStream,
    ClientStream,
    Bidi,
}

impl Shape {
    fn client_streams(self) -> bool {
        matches!(self, Shape::ClientStream | Shape::Bidi)
    }
    fn server_streams(self) -> bool {
        matches!(self, Shape::ServerStream | Shape::Bidi)
    }
}

#[derive(Clone)]
struct Route {
    shape: Shape,
    handler: Handler,
    /// The method name, interned when it is a valid subject (a request's copy of it then
    /// costs no reference count).
    name: Option<Subject>,
}

/// Server middleware: wraps every call (auth checks, logging, metrics, ...), as IMITTO's pipeline.
///
/// ```
/// use futures_util::future::BoxFuture;
/// use mitto::{Middleware, Next, Request, Response, Result};
///
/// struct Log;
/// impl Middleware for Log {
///     fn call<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Result<Response>> {
///         Box::pin(async move {
///             let method = req.method().to_owned();
///             let r = next.run(req).await;
///             tracing::info!(%method, ok = r.is_ok(), "call");
///             r
///         })
///     }
/// }
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Handles the call, usually by passing it on with `next.run(req)`.
    fn call<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Result<Response>>;
}

/// The rest of the server middleware chain, ending at the handler.
pub struct Next<'a> {
    handler: &'a Handler,
    rest: &'a [Arc<dyn Middleware>],
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("remaining", &self.rest.len())
            .finish()
    }
}

impl<'a> Next<'a> {
    /// Passes the call on.
    pub fn run(self, req: Request) -> BoxFuture<'a, Result<Response>> {
        match self.rest.split_first() {
            Some((m, rest)) => m.call(
                req,
                Next {
                    handler: self.handler,
                    rest,
                },
            ),
            None => (self.handler)(req),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// options and the server builder

type AuthFn = Arc<dyn Fn(&Hello) -> Result<()> + Send + Sync>;

/// Options of a [`Server`], a by-value builder.
#[derive(Clone)]
pub struct ServerOptions {
    name: String,
    tls: Option<TlsServerConfig>,
    auth: Option<AuthFn>,
    keepalive: Option<Duration>,
    handshake_timeout: Duration,
    max_payload: u32,
    max_calls_per_connection: usize,
    queue_capacity: usize,
    drain_timeout: Duration,
    group: Option<String>,
    busy_poll: Option<Arc<crate::BusyPoll>>,
    spin: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            name: format!("mitto/{}", env!("CARGO_PKG_VERSION")),
            tls: None,
            auth: None,
            keepalive: Some(Duration::from_secs(30)),
            handshake_timeout: Duration::from_secs(10),
            max_payload: Limits::DEFAULT_MAX_PAYLOAD,
            max_calls_per_connection: 10_000,
            queue_capacity: 1024,
            drain_timeout: Duration::from_secs(10),
            group: None,
            busy_poll: None,
            spin: crate::conn::DEFAULT_SPIN,
        }
    }
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("name", &self.name)
            .field("tls", &self.tls.is_some())
            .field("auth", &self.auth.is_some())
            .field("max_payload", &self.max_payload)
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
        self.name = name.into();
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
    /// Keepalive PING interval (`None` turns it off); a peer silent for two intervals is dropped.
    pub fn keepalive(mut self, k: Option<Duration>) -> Self {
        self.keepalive = k;
        self
    }
    /// Latency mode: every connection's reads keep `poller` polling (see
    /// [`crate::BusyPoll`]; spawn its `run()` on the runtime the server runs on).
    pub fn busy_poll(mut self, poller: Arc<crate::BusyPoll>) -> Self {
        self.busy_poll = Some(poller);
        self
    }
    /// Spin-then-park window of socket connections ([`crate::DEFAULT_SPIN`], 100 µs, by
    /// default; zero turns it off): while a connection's reads come less than this apart, its
    /// driver polls the runtime's sockets instead of sleeping between them, for at most this
    /// long after the last read. Dense traffic (many calls in flight) then costs no thread
    /// wake-ups; sparse traffic and an idle connection cost no CPU.
    pub fn spin(mut self, window: Duration) -> Self {
        self.spin = window;
        self
    }
    /// How long a new connection may take to send HELLO.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }
    /// Largest request payload accepted (negotiated down with the client's).
    pub fn max_payload(mut self, n: u32) -> Self {
        self.max_payload = n;
        self
    }
    /// Calls in flight per connection beyond which new ones get BACKPRESSURE_REJECTION.
    pub fn max_calls_per_connection(mut self, n: usize) -> Self {
        self.max_calls_per_connection = n.max(1);
        self
    }
    /// Bound of each connection's queue of outgoing frames from handlers.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }
    /// The queue group under which [`Server::attach`] registers the methods (default: each
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

fn boxed<F, Fut, R>(f: F) -> Handler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R>> + Send + 'static,
    R: Into<Response>,
{
    Arc::new(move |req| {
        let fut = f(req);
        Box::pin(async move { fut.await.map(Into::into) })
    })
}

fn missing(what: &str) -> Error {
    Error::new(Status::INTERNAL, format!("the call has no {what}"))
}

/// An RPC server: routes by method name, then [`Server::bind`] to serve.
///
/// ```
/// # async fn f() -> mitto::Result<()> {
/// use mitto::{Server, Request};
/// let server = Server::new()
///     .route("echo", |req: Request| async move { Ok(req.payload().clone()) })
///     .route_typed("calc.add", |(a, b): (i64, i64)| async move { Ok(a + b) });
/// let running = server.bind("tcp://127.0.0.1:0").await?;
/// println!("serving on {}", running.local_url());
/// running.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Server {
    /// By method name, as bytes: a request's subject is looked up without reading it as text.
    routes: FxHashMap<Box<[u8]>, Route>,
    middleware: Vec<Arc<dyn Middleware>>,
    opts: ServerOptions,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<_> = self
            .routes
            .keys()
            .map(|k| String::from_utf8_lossy(k))
            .collect();
        methods.sort();
        f.debug_struct("Server")
            .field("methods", &methods)
            .field("opts", &self.opts)
            .finish()
    }
}

impl Server {
    /// A server with default options and no routes.
    pub fn new() -> Server {
        Server::default()
    }

    /// A server with options.
    pub fn with_options(opts: ServerOptions) -> Server {
        Server {
            opts,
            ..Server::default()
        }
    }

    fn add(mut self, method: &str, shape: Shape, handler: Handler) -> Server {
        let name = Subject::interned(method).ok();
        self.routes.insert(
            method.as_bytes().into(),
            Route {
                shape,
                handler,
                name,
            },
        );
        self
    }

    /// A unary handler over raw requests: it sees headers, payload, deadline and peer, and
    /// answers anything that converts into a [`Response`] (`Bytes`, `Vec<u8>`, `String`, ...).
    pub fn route<F, Fut, R>(self, method: &str, f: F) -> Server
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Response>,
    {
        self.add(method, Shape::Unary, boxed(f))
    }

    /// A unary handler over serde values, decoded and encoded with the codec the caller's
    /// `content-type` names (JSON when absent, MessagePack).
    pub fn route_typed<Req, Resp, F, Fut>(self, method: &str, f: F) -> Server
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            Shape::Unary,
            boxed(move |req: Request| {
                let f = f.clone();
                async move {
                    let codec = req.codec()?;
                    let value: Req = codec.decode(&req.payload)?;
                    Response::encode(codec, &f(value).await?)
                }
            }),
        )
    }

    /// A unary handler over Protobuf messages (prost).
    pub fn route_proto<Req, Resp, F, Fut>(self, method: &str, f: F) -> Server
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            Shape::Unary,
            boxed(move |req: Request| {
                let f = f.clone();
                async move {
                    let value: Req = decode_proto(&req.payload)?;
                    let out = f(value).await?;
                    let headers = Headers::builder().insert(WellKnown::ContentType, PROTOBUF)?;
                    Ok(Response {
                        headers: headers.build(),
                        payload: encode_proto(&out),
                    })
                }
            }),
        )
    }

    /// A server-streaming handler: one request in, items out through the [`StreamSender`]; the
    /// call ends (RESPONSE) when the handler returns.
    pub fn route_server_stream<F, Fut>(self, method: &str, f: F) -> Server
    where
        F: Fn(Request, StreamSender) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            Shape::ServerStream,
            boxed(move |mut req: Request| {
                let f = f.clone();
                async move {
                    let sink = req.sink.take().ok_or_else(|| missing("response stream"))?;
                    f(req, sink).await
                }
            }),
        )
    }

    /// A client-streaming handler: items in through the [`RequestStream`], one response out.
    pub fn route_client_stream<F, Fut, R>(self, method: &str, f: F) -> Server
    where
        F: Fn(Request, RequestStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Response>,
    {
        let f = Arc::new(f);
        self.add(
            method,
            Shape::ClientStream,
            boxed(move |mut req: Request| {
                let f = f.clone();
                async move {
                    let items = req.items.take().ok_or_else(|| missing("request stream"))?;
                    f(req, items).await
                }
            }),
        )
    }

    /// A bidirectional handler: items in and items out, concurrently.
    pub fn route_bidi<F, Fut>(self, method: &str, f: F) -> Server
    where
        F: Fn(Request, RequestStream, StreamSender) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            Shape::Bidi,
            boxed(move |mut req: Request| {
                let f = f.clone();
                async move {
                    let items = req.items.take().ok_or_else(|| missing("request stream"))?;
                    let sink = req.sink.take().ok_or_else(|| missing("response stream"))?;
                    f(req, items, sink).await
                }
            }),
        )
    }

    /// Adds a middleware around every call (first added runs first).
    pub fn middleware(mut self, m: impl Middleware) -> Server {
        self.middleware.push(Arc::new(m));
        self
    }

    /// Sets the options.
    pub fn options(mut self, opts: ServerOptions) -> Server {
        self.opts = opts;
        self
    }

    /// Binds `url` and starts serving in the background.
    pub async fn bind(self, url: &str) -> Result<RunningServer> {
        let running = RunningServer {
            shared: self.into_shared(),
            urls: Vec::new(),
        };
        running.listen(url).await
    }

    /// Serves this server's methods through a broker instead of a listener: connects to
    /// `broker_url` (with `client`'s TLS, auth and timeouts), registers every method as a service
    /// subject, and answers the calls the broker routes here, streaming, deadlines and cancel
    /// included. Instances in the same group share the calls. Reconnects and registers again if
    /// the broker goes away, until [`RunningServer::shutdown`].
    pub async fn attach(
        self,
        broker_url: &str,
        client: crate::ClientOptions,
    ) -> Result<RunningServer> {
        let ep: Endpoint = broker_url.parse()?;
        let shared = self.into_shared();
        let first = attach_connect(&shared, &ep, &client).await?;
        tokio::spawn(attach_loop(shared.clone(), ep, client, first));
        Ok(RunningServer {
            shared,
            urls: vec![broker_url.to_owned()],
        })
    }

    fn into_shared(self) -> Arc<Shared> {
        let (shutdown, _) = watch::channel(false);
        Arc::new(Shared {
            server: self,
            stats: Stats::default(),
            started: Instant::now(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            shutdown,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// the running server

#[derive(Default)]
struct Stats {
    connections_total: AtomicU64,
    connections_open: AtomicU64,
    calls_total: AtomicU64,
    calls_in_flight: AtomicU64,
    calls_ok: AtomicU64,
    calls_failed: AtomicU64,
    calls_cancelled: AtomicU64,
    calls_timed_out: AtomicU64,
    calls_rejected: AtomicU64,
    handler_panics: AtomicU64,
    protocol_errors: AtomicU64,
}

impl Stats {
    fn report(&self, uptime: Duration) -> StatsReport {
        let mut values = BTreeMap::new();
        let mut put = |k: &str, v: &AtomicU64| {
            values.insert(k.to_owned(), v.load(Ordering::Relaxed));
        };
        put("connections_total", &self.connections_total);
        put("connections_open", &self.connections_open);
        put("calls_total", &self.calls_total);
        put("calls_in_flight", &self.calls_in_flight);
        put("calls_ok", &self.calls_ok);
        put("calls_failed", &self.calls_failed);
        put("calls_cancelled", &self.calls_cancelled);
        put("calls_timed_out", &self.calls_timed_out);
        put("calls_rejected", &self.calls_rejected);
        put("handler_panics", &self.handler_panics);
        put("protocol_errors", &self.protocol_errors);
        values.insert(
            "uptime_ms".to_owned(),
            uptime.as_millis().min(u64::MAX.into()) as u64,
        );
        StatsReport { values }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    server: Server,
    stats: Stats,
    started: Instant,
    conns: Mutex<HashMap<u64, mpsc::UnboundedSender<Cmd>>>,
    next_conn: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// A server that is serving. Dropping it leaves the server running; call
/// [`RunningServer::shutdown`] to stop it.
pub struct RunningServer {
    shared: Arc<Shared>,
    urls: Vec<String>,
}

impl fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningServer")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// Also serves on `url` (another transport, say).
    pub async fn listen(mut self, url: &str) -> Result<RunningServer> {
        let ep: Endpoint = url.parse()?;
        let listener = Listener::bind(&ep, self.shared.server.opts.tls.clone()).await?;
        self.urls.push(listener.local_url().to_owned());
        tokio::spawn(accept_loop(self.shared.clone(), listener));
        Ok(self)
    }

    /// The URL of the first listener (with the real port when bound to port 0).
    pub fn local_url(&self) -> &str {
        self.urls.first().map(String::as_str).unwrap_or("")
    }

    /// Every listener's URL.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The server's counters, as STATS reports them.
    pub fn stats(&self) -> StatsReport {
        self.shared.stats.report(self.shared.started.elapsed())
    }

    /// Stops accepting, lets calls in flight finish (up to the drain timeout; new calls get
    /// UNAVAILABLE), sends CLOSE on every connection and waits for them to end.
    pub async fn shutdown(self) {
        let shared = &self.shared;
        shared.shutdown.send_replace(true);
        let senders: Vec<_> = match shared.conns.lock() {
            Ok(c) => c.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        for tx in &senders {
            let _ = tx.send(Cmd::Drain);
        }
        let deadline = Instant::now() + shared.server.opts.drain_timeout;
        loop {
            let open = shared.conns.lock().map(|c| c.len()).unwrap_or(0);
            if open == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    open,
                    "drain timeout: closing connections with calls in flight"
                );
                for tx in &senders {
                    let _ = tx.send(Cmd::Abort);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, mut listener: Listener) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            r = listener.accept() => r,
        };
        match incoming {
            Ok(inc) => {
                let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                let span = tracing::info_span!("mitto.conn", id, peer = %inc.peer);
                tokio::spawn(serve_conn(shared.clone(), inc, id).instrument(span));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn serve_conn(shared: Arc<Shared>, inc: Incoming, conn_id: u64) {
    let opts = &shared.server.opts;
    let addr = inc.peer.clone();
    let mut io = match inc.establish().await {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!(error = %e, "connection setup failed");
            return;
        }
    };
    let local = Hello {
        version: Version::CURRENT,
        flags: 0,
        features: Features::supported(),
        max_payload: opts.max_payload,
        max_headers: 0,
        keepalive_ms: opts
            .keepalive
            .map(|k| k.as_millis().min(u32::MAX.into()) as u32)
            .unwrap_or(0),
        name: opts.name.clone(),
        client_id: String::new(),
        session: String::new(),
        user: String::new(),
        auth: Bytes::new(),
    };
    let auth = opts.auth.clone();
    let admit = |h: &Hello| {
        if shared.draining() {
            return Err(Error::new(Status::UNAVAILABLE, "server is shutting down").retryable());
        }
        if let Some(check) = &auth {
            check(h)?;
        }
        let client_id = if h.client_id.is_empty() {
            format!("c{conn_id}")
        } else {
            h.client_id.clone()
        };
        Ok((client_id, String::new(), false))
    };
    let (agreed, hello, leftover) =
        match handshake::server(&mut io, &local, opts.handshake_timeout, admit).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "handshake refused");
                return;
            }
        };
    let peer = Arc::new(PeerInfo {
        addr,
        name: hello.name.clone(),
        client_id: if hello.client_id.is_empty() {
            format!("c{conn_id}")
        } else {
            hello.client_id
        },
        user: hello.user,
    });
    tracing::debug!(client = %peer.name, "connection up");
    run_connection(&shared, io, agreed, leftover, peer, conn_id).await;
}

/// Runs one established connection (accepted, or to a broker) until it ends.
async fn run_connection(
    shared: &Arc<Shared>,
    io: crate::transport::Io,
    agreed: mitto_proto::Negotiated,
    leftover: bytes::BytesMut,
    peer: Arc<PeerInfo>,
    conn_id: u64,
) {
    let opts = &shared.server.opts;
    let (tx, rx) = mpsc::channel(opts.queue_capacity);
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    if let Ok(mut c) = shared.conns.lock() {
        c.insert(conn_id, ctl_tx.clone());
    }
    if shared.draining() {
        // Shutdown began during the handshake, after the drain was broadcast.
        let _ = ctl_tx.send(Cmd::Drain);
    }
    bump(&shared.stats.connections_total);
    bump(&shared.stats.connections_open);
    let keepalive =
        (agreed.keepalive_ms > 0).then(|| Duration::from_millis(agreed.keepalive_ms.into()));
    let reactor = ServerReactor {
        shared: shared.clone(),
        now: None,
        peer,
        calls: FxHashMap::default(),
        running: FuturesUnordered::new(),
        deadlines: Deadlines::new(),
        tx,
        ctl: ctl_tx,
        draining: shared.draining(),
        max_payload: agreed.limits.max_payload,
        compression: agreed.features.contains(Features::COMPRESSION_LZ4),
    };
    let cfg = DriverConfig {
        limits: agreed.limits,
        keepalive,
        busy_poll: shared.server.opts.busy_poll.clone(),
        spin: shared.server.opts.spin,
    };
    let driver = Driver::new(io, leftover, cfg, reactor, rx, ctl_rx);
    if let Err(e) = driver.run().await {
        tracing::debug!(error = %e, "connection ended");
    }
    shared
        .stats
        .connections_open
        .fetch_sub(1, Ordering::Relaxed);
    if let Ok(mut c) = shared.conns.lock() {
        c.remove(&conn_id);
    }
}

type Attached = (
    crate::transport::Io,
    mitto_proto::Negotiated,
    bytes::BytesMut,
);

/// Connects to a broker and registers every method.
async fn attach_connect(
    shared: &Shared,
    ep: &Endpoint,
    client: &crate::ClientOptions,
) -> Result<Attached> {
    let setup = async {
        let mut io = crate::transport::connect(ep, client.tls.as_ref()).await?;
        let offer = crate::client::hello(client);
        let (agreed, _, mut buf) =
            handshake::client(&mut io, &offer, client.connect_timeout).await?;
        // Keys were made from `&str`s.
        let mut methods: Vec<String> = shared
            .server
            .routes
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        methods.sort();
        let mut wire = Vec::with_capacity(methods.len());
        for (i, m) in methods.iter().enumerate() {
            let group = shared
                .server
                .opts
                .group
                .clone()
                .unwrap_or_else(|| m.clone());
            let opts = mitto_proto::SubscribeOptions {
                queue: Some(group),
                ..Default::default()
            };
            let n = i as u64 + 1;
            let mut f = Frame::register(n as u32, Subject::new(m)?, &opts)?.with_id(n);
            f.flags.insert(Flags::ACK_REQUIRED);
            wire.push(f);
        }
        handshake::write_frames(&mut io, wire).await?;
        let mut dec = mitto_proto::Decoder::new(agreed.limits);
        let mut acked = 0;
        while acked < methods.len() {
            let f = handshake::read_frame(&mut io, &mut dec, &mut buf).await?;
            match f.frame_type {
                FrameType::Ack => acked += 1,
                FrameType::Error | FrameType::Close => {
                    let method = methods
                        .get((f.id as usize).wrapping_sub(1))
                        .map(|m| m.as_str());
                    let e = Error::from_remote(f.status, &f.payload);
                    return Err(Error::new(
                        e.status(),
                        format!(
                            "registering {} failed: {}",
                            method.unwrap_or("?"),
                            e.message()
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok((io, agreed, buf))
    };
    tokio::time::timeout(client.connect_timeout, setup)
        .await
        .map_err(|_| {
            Error::new(Status::TIMEOUT, format!("attaching to {ep} timed out")).retryable()
        })?
}

async fn attach_loop(
    shared: Arc<Shared>,
    ep: Endpoint,
    client: crate::ClientOptions,
    first: Attached,
) {
    let mut next = Some(first);
    let (min, max) = client.backoff;
    let mut wait = min;
    loop {
        if let Some((io, agreed, leftover)) = next.take() {
            wait = min;
            let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
            let peer = Arc::new(PeerInfo {
                addr: ep.to_string(),
                name: "broker".into(),
                ..PeerInfo::default()
            });
            let span = tracing::info_span!("mitto.attach", id, broker = %ep);
            run_connection(&shared, io, agreed, leftover, peer, id)
                .instrument(span)
                .await;
        }
        if shared.draining() || !client.reconnect {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(max);
        match attach_connect(&shared, &ep, &client).await {
            Ok(a) => next = Some(a),
            Err(e) => tracing::debug!(broker = %ep, error = %e, "re-attaching failed"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the per-connection reactor

pub(crate) enum Cmd {
    /// A stream item from a handler (dropped if the call has ended).
    Item(Frame),
    /// The end of a streaming call: its RESPONSE, behind its items.
    Finish(u64, Frame),
    /// A frame to send as is (credit grants).
    Out(Frame),
    /// Shutdown: refuse new calls, close once the calls in flight are done.
    Drain,
    /// Shutdown timed out: abort what is left and close.
    Abort,
}

struct Call {
    abort: AbortHandle,
    items: Option<mpsc::Sender<Bytes>>,
    credit: Option<Arc<Semaphore>>,
    deadline: Option<Instant>,
    method: Subject,
}

/// A call's handler, run on the connection's task; yields the call's RESPONSE.
type CallFuture = Abortable<CallTask>;

/// A call in progress: the handler's own future (no middleware), or the middleware chain.
/// Both are `Unpin`, so a call can be polled once where it arrives and moved to the running
/// set only if it did not finish at once.
enum CallTask {
    Direct(Finishing),
    Chain(Pin<Box<dyn Future<Output = (u64, Frame)> + Send>>),
}

impl Future for CallTask {
    type Output = (u64, Frame);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(u64, Frame)> {
        match self.get_mut() {
            CallTask::Direct(f) => match f.shared.take() {
                Some(shared) => {
                    let r = f.poll_with(&shared, cx);
                    f.shared = Some(shared);
                    r
                }
                // Only a call polled in place has no server of its own; it is never here.
                None => Poll::Ready((
                    f.id,
                    error_response(f.id, &Error::new(Status::INTERNAL, "call lost its server")),
                )),
            },
            CallTask::Chain(f) => f.as_mut().poll(cx),
        }
    }
}

/// A handler's future with what its RESPONSE needs; a panic inside it becomes an
/// EXECUTION_ERROR response.
struct Finishing {
    /// Set when the call joins the running set; a call answered at its first poll, in place,
    /// is polled with the reactor's.
    shared: Option<Arc<Shared>>,
    fut: futures_util::future::CatchUnwind<AssertUnwindSafe<BoxFuture<'static, Result<Response>>>>,
    id: u64,
    method: Subject,
}

impl Finishing {
    fn new(fut: BoxFuture<'static, Result<Response>>, id: u64, method: Subject) -> Finishing {
        Finishing {
            shared: None,
            fut: AssertUnwindSafe(fut).catch_unwind(),
            id,
            method,
        }
    }

    fn poll_with(&mut self, shared: &Shared, cx: &mut Context<'_>) -> Poll<(u64, Frame)> {
        let outcome = ready!(self.fut.poll_unpin(cx));
        let id = self.id;
        Poll::Ready((id, call_frame(shared, outcome, id, &self.method)))
    }
}

impl Call {
    fn end(self) {
        self.abort.abort();
        if let Some(c) = self.credit {
            c.close();
        }
    }
}

struct ServerReactor {
    shared: Arc<Shared>,
    /// The time of this turn of the driver, read when a call first needs it.
    now: Option<Instant>,
    peer: Arc<PeerInfo>,
    calls: FxHashMap<u64, Call>,
    running: FuturesUnordered<CallFuture>,
    /// Deadlines of the calls that have one, earliest first; one timer for all of them.
    deadlines: Deadlines,
    tx: mpsc::Sender<Cmd>,
    ctl: mpsc::UnboundedSender<Cmd>,
    draining: bool,
    max_payload: u32,
    compression: bool,
}

fn error_response(id: u64, e: &Error) -> Frame {
    let mut f = Frame::response(id, e.status(), e.message().to_owned());
    if let Some(d) = e.details() {
        if let Ok(h) = Headers::builder().insert_custom(ERROR_DETAILS_HEADER, d) {
            f = f.with_headers(h.build());
        }
    }
    f
}

impl ServerReactor {
    fn reject(&self, id: u64, e: Error, cx: &mut Ctx<'_>) {
        bump(&self.shared.stats.calls_rejected);
        cx.send(&error_response(id, &e));
    }

    fn on_request(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        let id = f.id;
        let stats = &self.shared.stats;
        bump(&stats.calls_total);
        if self.calls.contains_key(&id) {
            bump(&stats.protocol_errors);
            cx.send(&Frame::error(
                id,
                Status::PROTOCOL_ERROR,
                "a call with this id is in flight",
            ));
            return;
        }
        if self.draining {
            let e = Error::new(Status::UNAVAILABLE, "server is shutting down").retryable();
            return self.reject(id, e, cx);
        }
        let Some(route) = self.shared.server.routes.get(&f.subject.as_bytes()[..]) else {
            let e = Error::new(
                Status::METHOD_NOT_FOUND,
                format!("no method {:?} on this server", f.subject.as_str()),
            );
            return self.reject(id, e, cx);
        };
        let opened_stream = f.flags.contains(Flags::START);
        if opened_stream != route.shape.client_streams() {
            let e = Error::new(
                Status::BAD_REQUEST,
                if opened_stream {
                    format!("{} takes no request stream", f.subject.as_str())
                } else {
                    format!(
                        "{} is client-streaming: open it with START",
                        f.subject.as_str()
                    )
                },
            );
            return self.reject(id, e, cx);
        }
        if self.calls.len() >= self.shared.server.opts.max_calls_per_connection {
            let e = Error::new(
                Status::BACKPRESSURE_REJECTION,
                format!("{} calls in flight on this connection", self.calls.len()),
            )
            .retryable();
            return self.reject(id, e, cx);
        }
        let payload = if f.flags.contains(Flags::COMPRESSED) {
            if !self.compression {
                let e = Error::new(
                    Status::UNSUPPORTED_FEATURE,
                    "compression was not negotiated",
                );
                return self.reject(id, e, cx);
            }
            match f.decompressed_payload(self.max_payload) {
                Ok(p) => p,
                Err(e) => return self.reject(id, Error::new(e.status(), e.to_string()), cx),
            }
        } else {
            f.payload
        };
        let left = f.headers.deadline();
        let deadline = left.map(|d| *self.now.get_or_insert_with(Instant::now) + d);
        if left.is_some_and(|d| d.is_zero()) {
            bump(&stats.calls_timed_out);
            let e = Error::new(
                Status::TIMEOUT,
                "the deadline passed before the call started",
            );
            return cx.send(&error_response(id, &e));
        }
        let (items, items_tx) = if route.shape.client_streams() {
            let (tx, rx) = mpsc::channel(INITIAL_STREAM_CREDIT as usize);
            (
                Some(RequestStream {
                    id,
                    rx,
                    ctl: self.ctl.clone(),
                    consumed: 0,
                }),
                Some(tx),
            )
        } else {
            (None, None)
        };
        let (sink, credit) = if route.shape.server_streams() {
            let credit = Arc::new(Semaphore::new(INITIAL_STREAM_CREDIT as usize));
            let sink = StreamSender {
                id,
                cmds: self.tx.clone(),
                credit: credit.clone(),
            };
            (Some(sink), Some(credit))
        } else {
            (None, None)
        };
        let method = route.name.clone().unwrap_or(f.subject);
        let req = Request {
            method,
            headers: f.headers,
            payload,
            kind: f.kind,
            deadline,
            peer: self.peer.clone(),
            items,
            sink,
        };
        // Handlers run on this connection's task, polled by the driver (no task spawned per
        // call); they wake the driver when they make progress.
        let method = req.method.clone();
        let mut task = if self.shared.server.middleware.is_empty() {
            // The handler's future is made here, so the call's future holds no request.
            CallTask::Direct(Finishing::new((route.handler)(req), id, method.clone()))
        } else {
            CallTask::Chain(Box::pin(run_call(
                self.shared.clone(),
                route.handler.clone(),
                req,
                id,
            )))
        };
        let mut tcx = Context::from_waker(cx.waker());
        if let CallTask::Direct(f) = &mut task {
            if route.shape == Shape::Unary {
                // A unary handler that finishes at its first poll answers at once: no entry
                // in the call table, no abort handle, no place in the running set.
                if let Poll::Ready((_, frame)) = f.poll_with(&self.shared, &mut tcx) {
                    cx.send(&frame);
                    return;
                }
            }
            f.shared = Some(self.shared.clone());
        } else if route.shape == Shape::Unary {
            if let Poll::Ready((_, frame)) = Pin::new(&mut task).poll(&mut tcx) {
                cx.send(&frame);
                return;
            }
        }
        bump(&stats.calls_in_flight);
        let (abort, registration) = AbortHandle::new_pair();
        self.running.push(Abortable::new(task, registration));
        if let Some(d) = deadline {
            self.deadlines.note(d);
        }
        self.calls.insert(
            id,
            Call {
                abort,
                items: items_tx,
                credit,
                deadline,
                method,
            },
        );
    }

    /// Ends a call; its method name if it was in flight (for messages).
    fn end_call_named(&mut self, id: u64) -> Option<Subject> {
        let method = self.calls.get(&id)?.method.clone();
        self.end_call(id).then_some(method)
    }

    fn end_call(&mut self, id: u64) -> bool {
        match self.calls.remove(&id) {
            Some(call) => {
                call.end();
                self.shared
                    .stats
                    .calls_in_flight
                    .fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    fn maybe_close(&self, cx: &mut Ctx<'_>) {
        if self.draining && self.calls.is_empty() {
            cx.close(Status::OK, "server shutting down");
        }
    }
}

async fn run_call(shared: Arc<Shared>, handler: Handler, req: Request, id: u64) -> (u64, Frame) {
    let method = req.method.clone();
    let server = &shared.server;
    let chain = Next {
        handler: &handler,
        rest: &server.middleware,
    }
    .run(req);
    let outcome = AssertUnwindSafe(chain).catch_unwind().await;
    (id, call_frame(&shared, outcome, id, &method))
}

/// The RESPONSE of a finished call: its result, its error, or its panic.
fn call_frame(
    shared: &Shared,
    outcome: std::thread::Result<Result<Response>>,
    id: u64,
    method: &Subject,
) -> Frame {
    let stats = &shared.stats;
    match outcome {
        Ok(Ok(resp)) => {
            bump(&stats.calls_ok);
            Frame::response(id, Status::OK, resp.payload).with_headers(resp.headers)
        }
        Ok(Err(e)) => {
            bump(&stats.calls_failed);
            error_response(id, &e)
        }
        Err(panic) => {
            bump(&stats.handler_panics);
            bump(&stats.calls_failed);
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(method = %method.as_str(), panic = %msg, "handler panicked");
            let e = Error::execution(format!("handler for {} panicked: {msg}", method.as_str()));
            error_response(id, &e)
        }
    }
}

impl Reactor for ServerReactor {
    type Cmd = Cmd;

    fn on_frame(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        match f.frame_type {
            FrameType::Request => self.on_request(f, cx),
            FrameType::Stream => {
                let Some(call) = self.calls.get_mut(&f.id) else {
                    // The call ended while the client was still streaming: not an error.
                    return;
                };
                let end = f.flags.contains(Flags::END);
                let violation = match &call.items {
                    None => Some(Error::new(
                        Status::UNEXPECTED_FRAME,
                        "this call takes no stream",
                    )),
                    Some(_) if end && f.payload.is_empty() => None,
                    Some(tx) => match tx.try_send(f.payload) {
                        Ok(()) => None,
                        Err(mpsc::error::TrySendError::Full(_)) => Some(Error::new(
                            Status::PROTOCOL_ERROR,
                            "stream items beyond the granted credit",
                        )),
                        Err(mpsc::error::TrySendError::Closed(_)) => None,
                    },
                };
                if end {
                    call.items = None;
                }
                if let Some(e) = violation {
                    bump(&self.shared.stats.protocol_errors);
                    self.end_call(f.id);
                    cx.send(&error_response(f.id, &e));
                    self.maybe_close(cx);
                }
            }
            FrameType::Cancel => {
                if self.end_call(f.id) {
                    bump(&self.shared.stats.calls_cancelled);
                    let e = Error::new(Status::CANCELLED, "cancelled by the caller");
                    cx.send(&error_response(f.id, &e));
                    self.maybe_close(cx);
                }
            }
            FrameType::Credit if f.aux == 0 => {
                if let Some(Call {
                    credit: Some(c), ..
                }) = self.calls.get(&f.id)
                {
                    let n = mitto_proto::body::decode_credit(&f.payload).unwrap_or(0) as usize;
                    c.add_permits(n.min(Semaphore::MAX_PERMITS - c.available_permits()));
                }
            }
            FrameType::Health => {
                let report = HealthReport {
                    state: if self.draining {
                        HealthState::Draining
                    } else {
                        HealthState::Serving
                    },
                    uptime_ms: self
                        .shared
                        .started
                        .elapsed()
                        .as_millis()
                        .min(u64::MAX.into()) as u64,
                    server: self.shared.server.opts.name.clone(),
                    detail: None,
                };
                match Frame::health_reply(f.id, &report) {
                    Ok(r) => cx.send(&r),
                    Err(e) => cx.send(&Frame::error(f.id, Status::INTERNAL, &e.to_string())),
                }
            }
            FrameType::Stats => {
                let report = self.shared.stats.report(self.shared.started.elapsed());
                match Frame::stats_reply(f.id, &report) {
                    Ok(r) => cx.send(&r),
                    Err(e) => cx.send(&Frame::error(f.id, Status::INTERNAL, &e.to_string())),
                }
            }
            FrameType::Error => {
                tracing::debug!(
                    status = %f.status,
                    reason = %String::from_utf8_lossy(&f.payload),
                    "error from client"
                );
                if self.end_call(f.id) {
                    self.maybe_close(cx);
                }
            }
            FrameType::Close => {
                for id in self.calls.keys().copied().collect::<Vec<_>>() {
                    self.end_call(id);
                }
                cx.close(Status::OK, "closing after the client's CLOSE");
            }
            FrameType::Subscribe
            | FrameType::Unsubscribe
            | FrameType::Publish
            | FrameType::Register
            | FrameType::Unregister
            | FrameType::Ack
            | FrameType::Nack
            | FrameType::Credit => {
                bump(&self.shared.stats.protocol_errors);
                cx.send(&Frame::error(
                    f.id,
                    Status::UNSUPPORTED_FEATURE,
                    &format!(
                        "{} needs a broker; this endpoint serves RPC only",
                        f.frame_type.name()
                    ),
                ));
            }
            other => {
                bump(&self.shared.stats.protocol_errors);
                cx.send(&Frame::error(
                    f.id,
                    Status::UNEXPECTED_FRAME,
                    &format!("a server does not accept {}", other.name()),
                ));
            }
        }
    }

    fn on_command(&mut self, c: Option<Cmd>, cx: &mut Ctx<'_>) {
        match c {
            Some(Cmd::Item(f)) if self.calls.contains_key(&f.id) => cx.send(&f),
            Some(Cmd::Item(_)) => {}
            Some(Cmd::Finish(id, f)) => {
                if self.end_call(id) {
                    cx.send(&f);
                }
                self.maybe_close(cx);
            }
            Some(Cmd::Out(f)) => cx.send(&f),
            Some(Cmd::Drain) => {
                self.draining = true;
                self.maybe_close(cx);
            }
            Some(Cmd::Abort) => {
                for id in self.calls.keys().copied().collect::<Vec<_>>() {
                    self.end_call(id);
                    let e = Error::new(Status::UNAVAILABLE, "server shut down").retryable();
                    cx.send(&error_response(id, &e));
                }
                cx.close(Status::UNAVAILABLE, "server shut down");
            }
            None => {}
        }
    }

    fn on_turn(&mut self) {
        self.now = None;
    }

    fn poll_outbound(&mut self, cx: &mut Ctx<'_>) -> bool {
        let mut progress = false;
        // Deadlines: one timer for the connection, one sweep when the earliest passes.
        if let Some(now) = self.deadlines.due(cx.waker()) {
            let expired: Vec<u64> = self
                .calls
                .iter()
                .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                if let Some(method) = self.end_call_named(id) {
                    bump(&self.shared.stats.calls_timed_out);
                    let e = Error::new(
                        Status::TIMEOUT,
                        format!("{} did not finish before its deadline", method.as_str()),
                    );
                    cx.send(&error_response(id, &e));
                }
            }
            self.deadlines
                .swept(self.calls.values().filter_map(|c| c.deadline).min());
            progress = true;
        }
        // Handlers.
        loop {
            let next = {
                let mut tcx = Context::from_waker(cx.waker());
                self.running.poll_next_unpin(&mut tcx)
            };
            match next {
                Poll::Ready(Some(Ok((id, frame)))) => {
                    let streams = self.calls.get(&id).is_some_and(|c| c.credit.is_some());
                    if streams {
                        // The RESPONSE goes behind the stream items still in the queue.
                        match self.tx.try_send(Cmd::Finish(id, frame)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(cmd)) => {
                                let tx = self.tx.clone();
                                tokio::spawn(async move {
                                    let _ = tx.send(cmd).await;
                                });
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        }
                    } else if self.end_call(id) {
                        cx.send(&frame);
                    }
                    progress = true;
                }
                Poll::Ready(Some(Err(Aborted))) => progress = true,
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if progress {
            self.maybe_close(cx);
        }
        progress
    }

    fn on_closed(&mut self, _why: &Error) {
        for id in self.calls.keys().copied().collect::<Vec<_>>() {
            self.end_call(id);
        }
    }
}
