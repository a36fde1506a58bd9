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

mod config;
mod conn;
mod core;
mod index;
mod local;
mod mailbox;
mod monitor;
mod tally;

pub use config::{
    BrokerConfig, ConfigError, PolicyName, TlsFiles, User, DEFAULT_LISTEN, DEFAULT_MONITOR,
};

use crate::core::Core;
use mitto::transport::{Endpoint, Listener};
use mitto::{Error, Status, TlsServerConfig};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// A running broker.
pub struct Broker {
    core: Arc<Core>,
    urls: Vec<String>,
    monitor: Option<std::net::SocketAddr>,
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
    pub async fn start(cfg: BrokerConfig) -> Result<Broker, Error> {
        cfg.validate()
            .map_err(|e| Error::new(Status::BAD_REQUEST, e.to_string()))?;
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
        let mut urls = Vec::new();
        for url in &core.cfg.listen {
            let ep: Endpoint = url.parse()?;
            let l = Listener::bind(&ep, tls.clone()).await?;
            urls.push(l.local_url().to_owned());
            tokio::spawn(accept_loop(core.clone(), l));
        }
        tokio::spawn(redelivery_loop(core.clone()));
        if let Some(b) = &core.busy_poll {
            tokio::spawn(b.clone().run());
        }
        let monitor = match core.cfg.monitor.as_str() {
            "" => None,
            addr => Some(monitor::start(core.clone(), addr).await?),
        };
        tracing::info!(?urls, ?monitor, "broker listening");
        Ok(Broker {
            core,
            urls,
            monitor,
        })
    }

    /// The URLs clients connect to (real ports when bound to port 0).
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The monitoring endpoint's address, if enabled.
    pub fn monitor_addr(&self) -> Option<std::net::SocketAddr> {
        self.monitor
    }

    /// The broker's counters (as STATS reports them).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        self.core.stats.snapshot()
    }

    /// How many service instances are registered (one per method per instance).
    pub fn service_count(&self) -> usize {
        self.core.service_count()
    }

    /// How many subscriptions the subject index holds.
    pub fn subscription_count(&self) -> usize {
        self.core.subscription_count()
    }

    /// Stops accepting, sends every client what is queued for it and CLOSE, and waits (up to
    /// 10 s) for the connections to end.
    pub async fn shutdown(self) {
        let core = &self.core;
        core.stop();
        let conns: Vec<_> = core
            .conns
            .lock()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        for c in &conns {
            let _ = c.ctl.send(conn::BrokerCmd::Drain);
        }
        for _ in 0..2000 {
            if core.stats.connections_open.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tracing::info!("broker stopped");
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
