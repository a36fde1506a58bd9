//! The RPC server: handlers registered by method name, run concurrently per connection, with
//! deadlines, cancellation, streams under credit-based flow control, middleware, health and
//! stats, and a graceful drain on shutdown.

mod attach;
mod call;
mod cmd;
mod middleware;
mod options;
mod reactor;
mod request;
mod router;
mod running;
mod shared;
mod stats;
mod typed;

pub use middleware::{Middleware, Next};
pub use options::ServerOptions;
pub use request::{PeerInfo, Request, RequestStream, Response, StreamSender};
pub use running::RunningServer;
pub use typed::TypedRequest;

use self::attach::{attach_connect, attach_loop};
use self::router::Route;
use self::shared::Shared;
use self::stats::Stats;
use crate::error::Result;
use crate::transport::Endpoint;
use mitto_proto::Subject;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tokio::time::Instant;

/// An RPC server: routes by method name, then [`Server::bind`] to serve.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> mitto::Result<()> {
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
    /// The route of method `subject`: the one that names it, else the first filter (in byte
    /// order) that matches it.
    #[inline]
    fn route_of(&self, subject: &Subject) -> Option<&Route> {
        if let Some(r) = self.routes.get(&subject.as_bytes()[..]) {
            return Some(r);
        }
        let subject = subject.as_str();
        self.routes
            .iter()
            .filter(|(k, r)| {
                r.name.is_none()
                    && std::str::from_utf8(k).is_ok_and(|k| {
                        k.split('.').any(|t| t == "*" || t == ">")
                            && mitto_proto::subject::matches(k, subject)
                    })
            })
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(_, r)| r)
    }

    /// A server with default options and no routes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Request, Server};
    ///
    /// let server = Server::new()
    ///     .route("echo", |req: Request| async move { Ok(req.payload().clone()) })
    ///     .bind("mem://echo")
    ///     .await?;
    /// # server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn new() -> Server {
        Server::default()
    }

    /// A server with options.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Server, ServerOptions};
    /// use std::time::Duration;
    ///
    /// let opts = ServerOptions::new().name("calc").drain_timeout(Duration::from_secs(2));
    /// let server = Server::with_options(opts).bind("tcp://127.0.0.1:0").await?;
    /// println!("listening on {}", server.local_url());
    /// # server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn with_options(opts: ServerOptions) -> Server {
        Server {
            opts,
            ..Server::default()
        }
    }

    /// Adds a middleware around every call (first added runs first).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use futures_util::future::BoxFuture;
    /// use mitto::{Middleware, Next, Request, Response, Result, Server};
    ///
    /// /// Counts the calls.
    /// struct Count(std::sync::atomic::AtomicU64);
    /// impl Middleware for Count {
    ///     fn call<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Result<Response>> {
    ///         self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ///         next.run(req)
    ///     }
    /// }
    ///
    /// let server = Server::new()
    ///     .middleware(Count(Default::default()))
    ///     .route("ping", |_req: Request| async move { Ok("pong") });
    /// # let _ = server;
    /// # Ok(()) }
    /// ```
    pub fn middleware(mut self, m: impl Middleware) -> Server {
        self.middleware.push(Arc::new(m));
        self
    }

    /// Sets the options.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Server, ServerOptions};
    ///
    /// let server = Server::new().options(ServerOptions::new().max_calls_per_connection(64));
    /// # let _ = server;
    /// # Ok(()) }
    /// ```
    pub fn options(mut self, opts: ServerOptions) -> Server {
        self.opts = opts;
        self
    }

    /// Binds `url` (`mem://`, `inproc://`, `tcp://`, `unix://`, `tls://`, `ws://`, `wss://`; a
    /// bare `host:port` is `tcp://`) and starts serving in the background.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Client, ClientOptions, Request, Server};
    ///
    /// let server = Server::new()
    ///     .route("echo", |req: Request| async move { Ok(req.payload().clone()) })
    ///     .bind("tcp://127.0.0.1:0") // port 0: any free port
    ///     .await?;
    /// let client = Client::connect(server.local_url(), ClientOptions::new()).await?;
    /// assert_eq!(client.call("echo", "hi").await?, "hi");
    /// # server.shutdown().await;
    /// # Ok(()) }
    /// ```
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// use mitto::{Client, ClientOptions, Request, Server};
    ///
    /// // The broker at "inproc://app" routes calls of "svc.echo" to this server.
    /// let service = Server::new()
    ///     .route("svc.echo", |req: Request| async move { Ok(req.payload().clone()) })
    ///     .attach("inproc://app", ClientOptions::new())
    ///     .await?;
    /// let client = Client::connect("inproc://app", ClientOptions::new()).await?;
    /// assert_eq!(client.call("svc.echo", "hi").await?, "hi");
    /// service.shutdown().await;
    /// # Ok(()) }
    /// ```
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
