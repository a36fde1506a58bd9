//! The mitto broker: subject-based publish/subscribe with `*` and `>` wildcards, queue groups,
//! request/reply routed through the broker (NO_RESPONDERS at once, deadlines, cancel),
//! acknowledged publishes, bounded per-subscription queues with credit and slow-consumer
//! policies, URGENT messages first, limits, token or user/password authentication with
//! per-subject permissions, and HEALTH/STATS.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mitto_broker::{Broker, BrokerConfig};
//! let mut cfg = BrokerConfig::default();
//! cfg.listen = vec!["tcp://127.0.0.1:0".into()];
//! cfg.monitor = String::new();
//! let broker = Broker::start(cfg).await?;
//! let url = broker.urls()[0].clone();
//! let a = mitto::Client::connect(&url, mitto::ClientOptions::new()).await?;
//! let mut sub = a.subscribe("orders.*").await?;
//! a.publish("orders.created", "#1").await?;
//! assert_eq!(sub.next().await.unwrap().payload(), "#1");
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

/// The examples of the newcomer's guide (`docs/GUIDE.md`), compiled and run as doctests here,
/// where both the client and the broker are at hand.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/GUIDE.md")]
pub struct Guide;

// The modules, in layers: each uses only modules of the layers below it (`use crate::` says
// which), so that no two depend on each other.
//
//   lib                     Broker: listeners, background loops, bridges
//   conn (hello, control,   one connection: HELLO, then frames into calls on Core
//        parked), monitor
//   drain, local            shutdown; in-process clients' entry points
//   calls, rehome           the request and subscription-ending halves of Core's methods
//   core                    Core: the parts below, the connections' table, delivery, Sink
//   subscriptions           index, queue groups, published subjects, publishers' memos
//   requests, sessions,     requests in flight (one timer queue), detached sessions and
//   takeover, durable,      the attached ones a HELLO may take over, durable names, the
//   connections             table of open connections
//   mailbox (acks,          a connection's outgoing queues and their bounds
//           subqueue)
//   fit, pin, subjects,     what leaves for a peer, read-buffer pinning, the subject table,
//   index, groups, guard,   the subject trie, queue groups, handshake gate, budgets,
//   budget, permissions,    permissions, counters
//   stats (tally)
//   config, shared          leaves: configuration; types every part speaks in

mod budget;
mod calls;
mod config;
mod conn;
mod connections;
mod core;
mod drain;
mod durable;
mod fabric;
mod fit;
mod groups;
mod guard;
mod index;
mod local;
mod mailbox;
mod millis;
mod monitor;
mod permissions;
mod pin;
mod rehome;
mod requests;
mod sessions;
mod shared;
mod stats;
mod stream_spec;
mod streams;
mod subjects;
mod subscriptions;
mod takeover;
mod tally;

pub use config::{
    BrokerConfig, ConfigError, PolicyName, TlsFiles, User, DEFAULT_LISTEN,
    DEFAULT_MAX_PENDING_BYTES, DEFAULT_MONITOR,
};
pub use stream_spec::{DiscardName, FsyncName, StreamSpec};

use crate::core::Core;
use mitto::__private::transport::{Endpoint, Listener};
use mitto::{Error, Status, TlsServerConfig};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// A running broker.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mitto_broker::{Broker, BrokerConfig};
///
/// let broker = Broker::start(BrokerConfig {
///     listen: vec!["inproc://app".into(), "tcp://127.0.0.1:0".into()],
///     monitor: String::new(), // no monitoring HTTP endpoint
///     ..Default::default()
/// })
/// .await?;
/// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
/// let mut sub = client.subscribe("orders.>").await?;
/// client.publish("orders.created", "#1").await?;
/// assert_eq!(sub.next().await.unwrap().payload(), "#1");
/// broker.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Broker {
    core: Arc<Core>,
    urls: Vec<String>,
    monitor: Option<std::net::SocketAddr>,
    bridges: Arc<mitto_bridge::Bridges>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Validates `cfg`, binds every listener (and the monitoring endpoint) and starts serving.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use mitto_broker::{Broker, BrokerConfig};
    ///
    /// let cfg = BrokerConfig::from_toml(r#"
    ///     listen = ["tcp://127.0.0.1:0", "inproc://app"]
    ///     monitor = "127.0.0.1:0"
    ///     max_payload = 1048576
    /// "#)?;
    /// let broker = Broker::start(cfg).await?;
    /// println!("clients: {:?}, monitoring: {:?}", broker.urls(), broker.monitor_addr());
    /// # broker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn start(mut cfg: BrokerConfig) -> Result<Broker, Error> {
        cfg.validate()
            .map_err(|e| Error::new(Status::BAD_REQUEST, e.to_string()))?;
        if let Some(path) = &cfg.token_file {
            let token = config::read_secret(path)
                .map_err(|e| Error::new(Status::BAD_REQUEST, e.to_string()))?;
            cfg.token = Some(token);
        }
        let tls = match &cfg.tls {
            Some(files) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).map_err(|e| {
                        Error::new(
                            Status::BAD_REQUEST,
                            format!("cannot read {}: {e}", p.display()),
                        )
                    })
                };
                Some(TlsServerConfig::from_pem(
                    &read(&files.cert)?,
                    &read(&files.key)?,
                )?)
            }
            None => None,
        };
        let core = Arc::new(Core::new(cfg));
        streams::open(&core).await?;
        let mut urls = Vec::new();
        for url in &core.cfg.listen {
            let ep: Endpoint = url.parse()?;
            let mut l = Listener::bind(&ep, tls.clone()).await?;
            l.allow_origins(core.cfg.ws_allowed_origins.clone());
            urls.push(l.local_url().to_owned());
            tokio::spawn(accept_loop(core.clone(), l));
        }
        tokio::spawn(redelivery_loop(core.clone()));
        tokio::spawn(calls::deadline_loop(core.clone()));
        if let Some(b) = &core.busy_poll {
            tokio::spawn(b.clone().run());
        }
        let bridges = Arc::new(start_bridges(&core).await?);
        let monitor = match core.cfg.monitor.as_str() {
            "" => None,
            addr => Some(monitor::start(core.clone(), addr, bridges.clone()).await?),
        };
        tracing::info!(?urls, ?monitor, "broker listening");
        Ok(Broker {
            core,
            urls,
            monitor,
            bridges,
        })
    }

    /// The URLs clients connect to (real ports when bound to port 0).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use mitto_broker::{Broker, BrokerConfig};
    ///
    /// let cfg = BrokerConfig {
    ///     listen: vec!["tcp://127.0.0.1:0".into()],
    ///     monitor: String::new(),
    ///     ..Default::default()
    /// };
    /// let broker = Broker::start(cfg).await?;
    /// let url = &broker.urls()[0]; // the port it got
    /// let client = mitto::Client::connect(url, mitto::ClientOptions::new()).await?;
    /// # client.close().await;
    /// # broker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The monitoring endpoint's address, if enabled.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use mitto_broker::{Broker, BrokerConfig};
    ///
    /// let cfg = BrokerConfig {
    ///     listen: vec!["inproc://app".into()],
    ///     monitor: "127.0.0.1:0".into(),
    ///     ..Default::default()
    /// };
    /// let broker = Broker::start(cfg).await?;
    /// let addr = broker.monitor_addr().expect("monitoring is on");
    /// println!("curl http://{addr}/varz");
    /// # broker.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn monitor_addr(&self) -> Option<std::net::SocketAddr> {
        self.monitor
    }

    /// The broker's counters (as STATS reports them).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cfg = BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let broker = Broker::start(cfg).await?;
    /// use mitto_broker::{Broker, BrokerConfig};
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// client.publish("orders.created", "#1").await?;
    /// client.flush().await?;
    /// for (name, value) in broker.stats() {
    ///     println!("{name} = {value}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> BTreeMap<String, u64> {
        self.core.snapshot()
    }

    /// Each bridge's state and counters (as `/bridgez` shows them).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cfg = BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let broker = Broker::start(cfg).await?;
    /// use mitto_broker::{Broker, BrokerConfig};
    /// assert!(broker.bridges().is_empty()); // none configured ([[bridge]] in the config file)
    /// # Ok(()) }
    /// ```
    pub fn bridges(&self) -> Vec<mitto_bridge::Snapshot> {
        self.bridges.snapshots()
    }

    /// How many service instances are registered (one per method per instance).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cfg = BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let broker = Broker::start(cfg).await?;
    /// use mitto_broker::{Broker, BrokerConfig};
    /// let service = mitto::Server::new()
    ///     .route("svc.echo", |req: mitto::Request| async move { Ok(req.payload().clone()) })
    ///     .attach("inproc://app", mitto::ClientOptions::new())
    ///     .await?;
    /// assert_eq!(broker.service_count(), 1);
    /// # service.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn service_count(&self) -> usize {
        self.core.service_count()
    }

    /// How many durable subscription names exist (with a subscriber or kept for the next).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cfg = BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let broker = Broker::start(cfg).await?;
    /// use mitto_broker::{Broker, BrokerConfig};
    /// use mitto::SubscribeOptions;
    ///
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let opts = SubscribeOptions { durable: Some("billing".into()), ..Default::default() };
    /// let _sub = client.subscribe_with("orders.>", opts).await?;
    /// assert_eq!(broker.durable_count(), 1);
    /// # Ok(()) }
    /// ```
    pub fn durable_count(&self) -> usize {
        self.core.durables.len()
    }

    /// How many subscriptions the subject index holds.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cfg = BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let broker = Broker::start(cfg).await?;
    /// use mitto_broker::{Broker, BrokerConfig};
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let _sub = client.subscribe("orders.>").await?;
    /// assert_eq!(broker.subscription_count(), 1);
    /// # Ok(()) }
    /// ```
    pub fn subscription_count(&self) -> usize {
        self.core.subscription_count()
    }

    /// Stops accepting connections and publishes, sends every client what the broker holds for
    /// it (and waits for the acknowledgements of at-least-once deliveries) within
    /// `shutdown_drain_ms`, then CLOSE: OK when everything went, UNAVAILABLE naming how many
    /// messages did not (also logged and counted in `shutdown_undelivered`). Bridges stop first:
    /// what they hold unconfirmed stays with the broker.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let cfg = BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let broker = Broker::start(cfg).await?;
    /// use mitto_broker::{Broker, BrokerConfig};
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let mut sub = client.subscribe("orders.>").await?;
    /// let reader = tokio::spawn(async move { sub.next().await });
    /// client.publish("orders.created", "#1").await?;
    /// broker.shutdown().await; // the subscriber gets "#1" before its connection closes
    /// assert_eq!(reader.await.unwrap().unwrap().payload(), "#1");
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) {
        self.bridges.stop().await;
        drain::shutdown(&self.core).await;
        streams::close(&self.core).await;
    }
}

/// Starts the configured bridges, each a client of this broker over an in-process listener of
/// their own (no socket).
async fn start_bridges(core: &Arc<Core>) -> Result<mitto_bridge::Bridges, Error> {
    if core.cfg.bridges.is_empty() && core.cfg.federation.is_none() {
        return Ok(mitto_bridge::Bridges::default());
    }
    let ep: Endpoint = format!("inproc://mitto-bridges-{:016x}", rand::random::<u64>()).parse()?;
    let l = Listener::bind(&ep, None).await?;
    let url = l.local_url().to_owned();
    tokio::spawn(accept_loop(core.clone(), l));
    let started = match &core.cfg.federation {
        Some(f) => {
            let interest = Arc::new(federation_interest(core.clone()));
            mitto_bridge::Bridges::start_federated(&core.cfg.bridges, f.clone(), interest, &url)
                .await
        }
        None => mitto_bridge::Bridges::start(&core.cfg.bridges, &url).await,
    };
    started.map_err(|e| Error::new(Status::BAD_REQUEST, e.to_string()))
}

/// The filters this broker's clients subscribe to (outside queue groups), its queue groups
/// and the subjects of its services, the federation's own connections (by their name) left
/// out: what the federation announces to the other brokers.
fn federation_interest(core: Arc<Core>) -> impl Fn(&str) -> mitto_bridge::Interest + Send + Sync {
    move |own: &str| {
        // A copy, so that no mailbox is locked under the connections' lock.
        let conns: std::collections::HashMap<u64, _> = core.conns.list().into_iter().collect();
        let (mut subscriptions, mut groups) = (Vec::new(), Vec::new());
        for s in conns
            .values()
            .filter(|c| c.name != own)
            .flat_map(|c| c.mailbox.subs())
        {
            match s.queue.filter(|q| !q.is_empty()) {
                Some(q) => groups.push((s.filter, q)),
                None => subscriptions.push(s.filter),
            }
        }
        let services = core
            .service_entries()
            .into_iter()
            .filter(|(_, conn)| conns.get(conn).is_some_and(|c| c.name != own))
            .map(|(f, _)| f)
            .collect();
        mitto_bridge::Interest {
            subscriptions,
            groups,
            services,
        }
    }
}

/// Redelivers overdue at-least-once messages, until shutdown.
async fn redelivery_loop(core: Arc<Core>) {
    let mut stop = core.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => core.redeliver(),
        }
    }
}

async fn accept_loop(core: Arc<Core>, mut l: Listener) {
    let mut stop = core.shutdown.subscribe();
    loop {
        let inc = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            r = l.accept() => r,
        };
        match inc {
            Ok(inc) => {
                let id = core.next_conn.fetch_add(1, Ordering::Relaxed);
                let span = tracing::info_span!("mitto.broker.conn", id, peer = %inc.peer);
                tokio::spawn(conn::serve(core.clone(), inc, id).instrument(span));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
