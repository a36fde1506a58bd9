//! The RPC client: one connection multiplexing many calls by id, with deadlines, cancel on drop,
//! streams with credit-based flow control, automatic reconnect, and retries of idempotent calls.

mod call;
mod call_parts;
mod calls;
mod cmd;
mod connect;
mod frames;
mod ids;
mod inbox;
mod message;
mod middleware;
mod options;
mod pool;
mod publish;
mod query;
mod queue;
mod reactor;
mod reconnect;
mod request;
mod stream;
mod subscribe;
mod typed;
mod typed_call;

pub use call::{Call, CallWith};
pub use call_parts::{CallOptions, OutgoingCall, Reply};
pub(crate) use cmd::{Cmd, Due};
pub(crate) use connect::hello;
pub(crate) use frames::kept_for_the_process;
pub use message::{Delivery, Message, Policy, PublishOptions, DEFAULT_SUBSCRIPTION_CREDIT};
pub use middleware::{ClientMiddleware, ClientNext};
pub use options::ClientOptions;
pub use pool::Pool;
pub use publish::Publish;
pub use stream::{PendingReply, RequestSink, ResponseStream};
pub(crate) use subscribe::SubRecord;
pub use subscribe::Subscription;
pub use typed::{Event, TypedSubscription};

use self::calls::Calls;
use self::connect::open;
use self::frames::default_deadline;
use self::queue::CmdTx;
use self::reconnect::supervise;
use crate::conn::Lane;
use crate::error::{CloseReason, Error, Result};
use crate::transport::Endpoint;
use mitto_proto::negotiate::Negotiated;
use mitto_proto::{Headers, Status};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Clone)]
pub(crate) struct Conn {
    /// Commands, in order with what is written into the call table (see [`crate::client::queue`]).
    pub(crate) cmds: CmdTx,
    /// Unary calls on an in-process link, handed to the driver in batches (see [`Lane`]).
    pub(crate) lane: Option<Arc<Lane<Cmd>>>,
    pub(crate) ctl: mpsc::UnboundedSender<Cmd>,
    pub(crate) agreed: Arc<Negotiated>,
    /// Direct entry points of a server in this process (in-process links to a broker).
    pub(crate) port: Option<Arc<dyn crate::local::LocalPort>>,
    /// Unary calls written straight for the driver (byte-stream connections).
    pub(crate) calls: Option<Arc<Calls>>,
}

#[derive(Clone)]
pub(crate) enum State {
    Connecting,
    Up(Conn),
    Closed(Error),
}

/// The client's live subscriptions, shared with the connection's reactor.
pub(crate) type SubTable = Arc<std::sync::Mutex<HashMap<u32, SubRecord>>>;

pub(crate) struct Shared {
    endpoint: Endpoint,
    pub(crate) opts: ClientOptions,
    pub(crate) state: watch::Sender<State>,
    closing: AtomicBool,
    /// Live subscriptions, re-made on every new connection.
    pub(crate) subs: SubTable,
    /// The session token the server gave, offered again on reconnect (session resume).
    session: std::sync::Mutex<String>,
    pub(crate) next_sid: std::sync::atomic::AtomicU32,
    /// The `deadline` header of a call with the default timeout, made once.
    default_deadline: Headers,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    next_id: AtomicU64,
    /// The first connection, used while it is up without reading the connection state (a
    /// read lock per call or publish); after a reconnect the state is read.
    first: Conn,
}

impl Inner {
    /// The first connection, while it is up (its driver has not ended).
    #[inline]
    pub(crate) fn first_conn(&self) -> Option<&Conn> {
        (!self.first.cmds.is_closed()).then_some(&self.first)
    }

    /// The first connection's in-process port, while that connection is up.
    #[inline]
    pub(crate) fn first_port(&self) -> Option<(&Arc<dyn crate::local::LocalPort>, u32)> {
        let c = self.first_conn()?;
        Some((c.port.as_ref()?, c.agreed.limits.max_payload))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        if let State::Up(c) = &*self.shared.state.borrow() {
            let _ = c.ctl.send(Cmd::Close);
        }
    }
}

/// A client of a broker or a [`Server`](crate::Server): publishes, subscribes, sends requests and
/// calls methods over one connection, which it reconnects when it is lost (subscriptions
/// included). Cheap to clone: clones share the connection.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> mitto::Result<()> {
/// # let _server = mitto::Server::new()
/// #     .route_typed("calc.add", |(a, b): (i64, i64)| async move { Ok(a + b) })
/// #     .bind("mem://calc")
/// #     .await?;
/// let client = mitto::Client::connect("mem://calc", mitto::ClientOptions::new()).await?;
/// let sum: i64 = client.call_typed("calc.add", (2, 3)).await?;
/// assert_eq!(sum, 5);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.shared.endpoint)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` (`mem://`, `inproc://`, `tcp://`, `unix://`, `tls://`, `ws://`,
    /// `wss://`; a bare `host:port` is `tcp://`) and shakes hands. The first connection is made
    /// here, so a wrong address fails at once; later losses reconnect in the background.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new().bind("mem://app").await?;
    /// use mitto::{Client, ClientOptions};
    /// use std::time::Duration;
    ///
    /// let options = ClientOptions::new().name("billing").timeout(Duration::from_secs(5));
    /// let client = Client::connect("mem://app", options).await?; // or "tcp://host:4747", ...
    /// assert!(client.is_connected());
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str, opts: ClientOptions) -> Result<Client> {
        let endpoint: Endpoint = url.parse()?;
        let table = SubTable::default();
        let session = std::sync::Mutex::new(String::new());
        let (driver, conn, _) = open(&endpoint, &opts, &table, &session).await?;
        let first = conn.clone();
        let (state, _) = watch::channel(State::Up(conn));
        let opts_timeout = opts.timeout;
        let shared = Arc::new(Shared {
            endpoint,
            opts,
            state,
            closing: AtomicBool::new(false),
            subs: table,
            session,
            next_sid: std::sync::atomic::AtomicU32::new(1),
            default_deadline: default_deadline(opts_timeout),
        });
        tokio::spawn(supervise(shared.clone(), driver));
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                next_id: AtomicU64::new(1),
                first,
            }),
        })
    }

    pub(crate) fn opts(&self) -> &ClientOptions {
        &self.inner.shared.opts
    }

    /// What HELLO agreed on for the current connection, if connected.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new()
    /// #     .bind("mem://app")
    /// #     .await?;
    /// let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// let agreed = client.negotiated().expect("connected");
    /// println!("protocol {}, payloads up to {} bytes", agreed.version, agreed.limits.max_payload);
    /// # Ok(()) }
    /// ```
    pub fn negotiated(&self) -> Option<Negotiated> {
        match &*self.inner.shared.state.borrow() {
            State::Up(c) => Some((*c.agreed).clone()),
            _ => None,
        }
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.inner.shared.state.borrow(), State::Up(_))
    }

    /// The error every call fails with once the client is closed for good (by
    /// [`close`](Self::close), a lost connection with reconnect off, or
    /// [`max_reconnects`](ClientOptions::max_reconnects) failed attempts); its
    /// [`close_reason`](Error::close_reason) says which. `None` while the client is open,
    /// connected or reconnecting.
    pub fn close_error(&self) -> Option<Error> {
        match &*self.inner.shared.state.borrow() {
            State::Closed(e) => Some(e.clone()),
            _ => None,
        }
    }

    /// Waits until the client is closed for good, and returns why (as
    /// [`close_error`](Self::close_error)). A client that reconnects without limit closes
    /// only when [`close`](Self::close) is called.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new().bind("mem://closed-wait-doc").await?;
    /// use mitto::{Client, ClientOptions, CloseReason};
    ///
    /// let client = Client::connect("mem://closed-wait-doc", ClientOptions::new()).await?;
    /// let watcher = client.clone();
    /// let why = tokio::spawn(async move { watcher.closed().await });
    /// client.close().await;
    /// assert_eq!(why.await.unwrap().close_reason(), Some(CloseReason::ByCaller));
    /// # Ok(()) }
    /// ```
    pub async fn closed(&self) -> Error {
        let mut rx = self.inner.shared.state.subscribe();
        let closed = rx.wait_for(|s| matches!(s, State::Closed(_))).await;
        match closed.as_deref() {
            Ok(State::Closed(e)) => e.clone(),
            // The sender lives in `Shared`, which this client holds: not reached.
            _ => Error::client_closed(CloseReason::ByCaller, "client is closed"),
        }
    }

    /// Waits for a connection until `deadline`.
    /// The connection, at once when it is up; otherwise waits for it (boxed, so that callers'
    /// futures stay small on the fast path).
    pub(crate) async fn conn_fast(&self, timeout: Duration) -> Result<Conn> {
        if let State::Up(c) = &*self.inner.shared.state.borrow() {
            if !c.cmds.is_closed() {
                return Ok(c.clone());
            }
        }
        Box::pin(self.conn(Instant::now() + timeout)).await
    }

    pub(crate) async fn conn(&self, deadline: Instant) -> Result<Conn> {
        let mut rx = self.inner.shared.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                State::Up(c) if !c.cmds.is_closed() => return Ok(c.clone()),
                State::Closed(e) => return Err(e.clone()),
                _ => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(Error::client_closed(
                        CloseReason::ByCaller,
                        "client is closed",
                    ))
                }
                Err(_) => {
                    return Err(
                        Error::new(Status::TIMEOUT, "deadline passed while reconnecting")
                            .retryable(),
                    )
                }
            }
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Closes the connection gracefully (CLOSE, then the socket) and stops reconnecting. Calls
    /// still in flight fail with UNAVAILABLE, later ones with [`CloseReason::ByCaller`], and
    /// subscriptions end.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new()
    /// #     .bind("mem://app")
    /// #     .await?;
    /// let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// client.close().await;
    /// assert!(!client.is_connected());
    /// assert!(client.call("echo", "hi").await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        let shared = &self.inner.shared;
        shared.closing.store(true, Ordering::Release);
        let mut rx = shared.state.subscribe();
        if let State::Up(c) = &*rx.borrow_and_update() {
            let _ = c.ctl.send(Cmd::Close);
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| matches!(s, State::Closed(_))),
        )
        .await;
    }
}
