//! A server that is serving: listeners, accepted connections, graceful shutdown.

use super::cmd::Cmd;
use super::reactor::ServerReactor;
use super::shared::Shared;
use super::stats::bump;
use super::PeerInfo;
use crate::conn::{Driver, DriverConfig, SlowReader};
use crate::deadlines::Deadlines;
use crate::error::{Error, Result};
use crate::handshake;
use crate::transport::{Endpoint, Incoming, Listener};
use futures_util::stream::FuturesUnordered;
use mitto_proto::negotiate::Features;
use mitto_proto::{Hello, StatsReport, Status};
use rustc_hash::FxHashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

/// A server that is serving. Dropping it leaves the server running; call
/// [`RunningServer::shutdown`] to stop it.
pub struct RunningServer {
    pub(super) shared: Arc<Shared>,
    pub(super) urls: Vec<String>,
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
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::Server;
    ///
    /// let server = Server::new()
    ///     .route_typed("calc.add", |(a, b): (i64, i64)| async move { Ok(a + b) })
    ///     .bind("mem://calc")
    ///     .await?
    ///     .listen("tcp://127.0.0.1:0")
    ///     .await?;
    /// assert_eq!(server.urls().len(), 2);
    /// # server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn listen(mut self, url: &str) -> Result<RunningServer> {
        let ep: Endpoint = url.parse()?;
        let listener = Listener::bind(&ep, self.shared.server.opts.tls.clone()).await?;
        self.urls.push(listener.local_url().to_owned());
        tokio::spawn(accept_loop(self.shared.clone(), listener));
        Ok(self)
    }

    /// The URL of the first listener (with the real port when bound to port 0).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// let server = mitto::Server::new().bind("tcp://127.0.0.1:0").await?;
    /// let url = server.local_url(); // "tcp://127.0.0.1:<the port it got>"
    /// assert!(!url.ends_with(":0"));
    /// # server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn local_url(&self) -> &str {
        self.urls.first().map(String::as_str).unwrap_or("")
    }

    /// Every listener's URL.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The server's counters, as STATS reports them.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Client, ClientOptions, Request, Server};
    ///
    /// let server = Server::new()
    ///     .route("echo", |req: Request| async move { Ok(req.payload().clone()) })
    ///     .bind("mem://echo")
    ///     .await?;
    /// let client = Client::connect(server.local_url(), ClientOptions::new()).await?;
    /// client.call("echo", "hi").await?;
    /// assert_eq!(server.stats().values["calls_ok"], 1);
    /// # server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> StatsReport {
        self.shared.stats.report(self.shared.started.elapsed())
    }

    /// Stops accepting, lets calls in flight finish (up to the drain timeout; new calls get
    /// UNAVAILABLE), sends CLOSE on every connection and waits for them to end.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Client, ClientOptions, Server};
    ///
    /// let server = Server::new().bind("mem://app").await?;
    /// let client = Client::connect("mem://app", ClientOptions::new().reconnect(false)).await?;
    /// server.shutdown().await; // calls in flight finish first, then each client gets CLOSE
    /// assert!(client.health().await.is_err());
    /// # Ok(()) }
    /// ```
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

pub(super) async fn accept_loop(shared: Arc<Shared>, mut listener: Listener) {
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

pub(super) async fn serve_conn(shared: Arc<Shared>, inc: Incoming, conn_id: u64) {
    let opts = &shared.server.opts;
    let addr = inc.peer.clone();
    let local = opts.conn.hello();
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
    // The transport's setup (TLS) and the HELLO, within one timeout.
    let accepted = handshake::accept(inc, &local, opts.handshake_timeout, admit, |_| {
        Duration::ZERO
    });
    let (io, agreed, hello, leftover) = match accepted.await {
        Ok(x) => x,
        Err(e) => {
            bump(&shared.stats.handshakes_failed);
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
    run_connection(&shared, io, agreed, leftover, peer, conn_id, true).await;
}

/// Runs one established connection (accepted, or to a broker) until it ends.
pub(super) async fn run_connection(
    shared: &Arc<Shared>,
    io: crate::transport::Io,
    agreed: mitto_proto::Negotiated,
    leftover: bytes::BytesMut,
    peer: Arc<PeerInfo>,
    conn_id: u64,
    accepted: bool,
) {
    let opts = &shared.server.opts;
    let (tx, rx) = mpsc::channel(opts.conn.queue_capacity);
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
        // A client that pipelines calls and never reads the answers is held by its transport,
        // then closed. Attached to a broker, this side connected: it always reads.
        slow_reader: accepted.then_some(SlowReader {
            write_deadline: opts.write_deadline,
        }),
        backlog: None,
        ..opts.conn.driver_config(&agreed)
    };
    let driver = Driver::new(io, leftover, cfg, reactor, rx, ctl_rx);
    if let Err(e) = driver.run().await {
        if e.status() == Status::SLOW_CONSUMER {
            bump(&shared.stats.slow_connections_closed);
        }
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
