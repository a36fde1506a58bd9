//! Bridges between a mitto broker and the messaging systems users already run: AMQP 0-9-1
//! (RabbitMQ, through `lapin`), MQTT 5 and 3.1.1 (Mosquitto, through `rumqttc`) and NATS
//! (through `async-nats`); and services whose requests wait in a RabbitMQ queue that many
//! workers share ([`worker`]).
//!
//! A bridge is a client of the broker like any other: it connects by URL (the broker's
//! in-process `inproc://` listener when the broker starts it), subscribes at least once to the
//! subjects it carries out, and publishes with the broker's ACK what it carries in. So:
//!
//! - **out**: a message is ACKed to the broker only after the backend confirmed it (AMQP
//!   publisher confirm, MQTT PUBACK, a NATS round trip or JetStream ack; one confirm settles
//!   a batch); a crash before that makes
//!   the broker deliver it again. A publisher's own ACK (ACK_REQUIRED) means the broker holds
//!   the message for the bridge, not that the backend has it.
//! - **in**: a message is acknowledged to the backend only after the broker ACKed its publish.
//! - **loops**: a message carried in, or carried out where a way in of the same bridge could
//!   take it back, carries the `mitto-origin` header naming the bridge; a bridge never carries a
//!   message back the way it came.
//! - **backend down**: the bridge reconnects with backoff and holds up to `buffer_msgs` /
//!   `buffer_bytes` for it; past that the oldest are given up and counted (`drops`). Other
//!   bridges and the broker's own clients are not held up.
//!
//! `docs/BRIDGES.md` has the mapping rules, the configuration and the guarantees.
//!
//! ```no_run
//! # async fn run() -> Result<(), mitto_bridge::BridgeError> {
//! use mitto_bridge::{Bridge, BridgeConfig, Kind};
//! let cfg = BridgeConfig::new("rabbit", Kind::Amqp, "amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .map("orders.>", None, None);
//! let bridge = Bridge::start(cfg, "tcp://127.0.0.1:4747").await?;
//! println!("{:?}", bridge.snapshot());
//! bridge.stop().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod amqp;
mod config;
mod envelope;
pub mod federation;
mod inbound;
mod link;
pub mod mapping;
mod mqtt;
mod mqtt3;
mod nats;
mod outbound;
mod queue_url;
mod stats;
pub mod worker;

pub use config::{BridgeConfig, ConfigError, Direction, Kind, MapConfig};
pub use envelope::ORIGIN_HEADER;
pub use federation::{Federation, FederationConfig, Interest, LocalInterest};
pub use stats::{Snapshot, State};

use link::{supervise, Backend, Ctx};
use mitto::{Client, ClientOptions, Delivery, Policy, SubscribeOptions};
use stats::Stats;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a bridge could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// Its configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker refused it (connection, authentication, a subscription).
    #[error("bridge {name:?}: mitto: {source}")]
    Mitto {
        /// The bridge.
        name: String,
        /// The broker's answer.
        source: mitto::Error,
    },
    /// The backend refused it (a worker's first connection).
    #[error("{0}")]
    Backend(String),
}

/// How long an unconfirmed message stays with the bridge before the broker delivers it again:
/// long, since the bridge holds messages through a backend's outage.
const ACK_WAIT_MS: u32 = 600_000;

/// `url` with its password hidden.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((creds, host)) => {
            let user = creds.split_once(':').map_or(creds, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{}", &rest[end..])
        }
        None => url.to_owned(),
    }
}

fn client_options(cfg: &BridgeConfig) -> ClientOptions {
    let o = ClientOptions::new()
        .name(format!("mitto-bridge/{}", cfg.name))
        .reconnect(true)
        .backoff(
            Duration::from_millis(cfg.backoff_min_ms),
            Duration::from_millis(cfg.backoff_max_ms),
        );
    with_credentials(
        o,
        cfg.mitto_token.as_deref(),
        cfg.mitto_user.as_deref(),
        cfg.mitto_password.as_deref(),
    )
}

/// `o` with the broker credentials given (a token, or a user and password).
pub(crate) fn with_credentials(
    mut o: ClientOptions,
    token: Option<&str>,
    user: Option<&str>,
    password: Option<&str>,
) -> ClientOptions {
    if let Some(t) = token {
        o = o.token(t.as_bytes().to_vec());
    }
    if let (Some(u), Some(p)) = (user, password) {
        o = o.user_password(u.to_owned(), p.as_bytes().to_vec());
    }
    o
}

/// A running bridge.
pub struct Bridge {
    name: String,
    kind: Kind,
    url: String,
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    client: Client,
    server: Mutex<Option<mitto::RunningServer>>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// Checks `cfg`, connects to the broker at `mitto_url`, subscribes to what goes out and
    /// starts connecting to the backend (in the background: a backend that is down does not
    /// stop the bridge from starting; it is retried with backoff).
    pub async fn start(cfg: BridgeConfig, mitto_url: &str) -> Result<Bridge, BridgeError> {
        cfg.validate()?;
        let name = cfg.name.clone();
        let mitto_err = |source| BridgeError::Mitto {
            name: name.clone(),
            source,
        };
        let client = Client::connect(mitto_url, client_options(&cfg))
            .await
            .map_err(mitto_err)?;
        let stats = Arc::new(Stats::default());
        let (stop, stop_rx) = watch::channel(false);
        let maps = cfg.mappings()?;
        let inbound: Vec<_> = maps
            .iter()
            .filter(|m| m.direction.inbound())
            .map(|m| m.rule.clone())
            .collect();
        let outbound: Vec<_> = maps
            .iter()
            .filter(|m| m.direction.outbound())
            .map(|m| {
                let comes_back = inbound.iter().any(|i| m.rule.remote_overlaps(i));
                (m.rule.clone(), comes_back)
            })
            .collect();
        let mut subs = Vec::new();
        for (r, _) in &outbound {
            let opts = SubscribeOptions {
                delivery: Delivery::AtLeastOnce,
                policy: Policy::DropNewest,
                // The broker's own bound (max_pending_msgs), as for its other subscribers: what
                // the bridge holds counts there until it is ACKed, and a burst the bridge has
                // not taken yet waits there (past it, the newest are dropped, counted).
                max_pending: 0,
                ack_wait_ms: ACK_WAIT_MS,
                ..SubscribeOptions::default()
            };
            let s = client
                .subscribe_with(&r.mitto_filter(), opts)
                .await
                .map_err(mitto_err)?;
            subs.push(s);
        }
        let ctx = Arc::new(Ctx {
            origin: format!("{}.{:016x}", cfg.name, rand::random::<u64>()),
            cfg: cfg.clone(),
            stats: stats.clone(),
            mitto: client.clone(),
            inbound,
            outbound,
            stop: stop_rx,
        });
        let mut tasks = Vec::new();
        let mut server = None;
        match cfg.kind {
            Kind::Amqp => spawn(&mut tasks, ctx, amqp::Amqp, subs),
            Kind::Mqtt => spawn(&mut tasks, ctx, mqtt::Mqtt, subs),
            Kind::Mqtt3 => spawn(&mut tasks, ctx, mqtt3::Mqtt3, subs),
            Kind::Nats => spawn(&mut tasks, ctx, nats::Nats, subs),
            Kind::AmqpService => {
                let (s, t) = worker::forward::start(ctx, mitto_url, client_options(&cfg))
                    .await
                    .map_err(mitto_err)?;
                server = Some(s);
                tasks.push(t);
            }
        }
        Ok(Bridge {
            name: cfg.name,
            kind: cfg.kind,
            url: cfg.url,
            stats,
            stop,
            tasks: Mutex::new(tasks),
            client,
            server: Mutex::new(server),
        })
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its state and counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.stats.snapshot(&self.name, self.kind.name(), &self.url)
    }

    /// Stops the bridge: disconnects from the backend and the broker. Messages it held and had
    /// not had confirmed are delivered again by the broker to the next bridge on the subjects.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
        let server = self.server.lock().ok().and_then(|mut s| s.take());
        if let Some(s) = server {
            s.shutdown().await;
        }
        self.client.close().await;
    }
}

fn spawn<B: Backend<Link: link::Link>>(
    tasks: &mut Vec<JoinHandle<()>>,
    ctx: Arc<Ctx>,
    backend: B,
    subs: Vec<mitto::Subscription>,
) {
    let (links, links_rx) = watch::channel(None);
    tasks.push(tokio::spawn(supervise(ctx.clone(), backend, links)));
    tasks.push(tokio::spawn(outbound::run(ctx, subs, links_rx)));
}

/// Every bridge of a broker, and its federation.
#[derive(Debug, Default)]
pub struct Bridges {
    list: Vec<Bridge>,
    federation: Option<Federation>,
}

impl Bridges {
    /// Starts each bridge of `cfgs` against the broker at `mitto_url`; on an error, stops the
    /// ones already started.
    pub async fn start(cfgs: &[BridgeConfig], mitto_url: &str) -> Result<Bridges, BridgeError> {
        let mut list: Vec<Bridge> = Vec::new();
        for c in cfgs {
            match Bridge::start(c.clone(), mitto_url).await {
                Ok(b) => list.push(b),
                Err(e) => {
                    for b in &list {
                        b.stop().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Bridges {
            list,
            federation: None,
        })
    }

    /// As [`Bridges::start`], and the broker's federation over NATS (`interest` reads the
    /// broker's subscriptions).
    pub async fn start_federated(
        cfgs: &[BridgeConfig],
        federation: FederationConfig,
        interest: LocalInterest,
        mitto_url: &str,
    ) -> Result<Bridges, BridgeError> {
        let mut b = Bridges::start(cfgs, mitto_url).await?;
        match Federation::start(federation, mitto_url, interest).await {
            Ok(f) => b.federation = Some(f),
            Err(e) => {
                b.stop().await;
                return Err(e);
            }
        }
        Ok(b)
    }

    /// Each bridge's state and counters, the federation's last.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.list
            .iter()
            .map(Bridge::snapshot)
            .chain(self.federation.as_ref().map(Federation::snapshot))
            .collect()
    }

    /// The federation, if the broker has one.
    pub fn federation(&self) -> Option<&Federation> {
        self.federation.as_ref()
    }

    /// The bridges.
    pub fn iter(&self) -> impl Iterator<Item = &Bridge> {
        self.list.iter()
    }

    /// Stops the federation and every bridge.
    pub async fn stop(&self) {
        if let Some(f) = &self.federation {
            f.stop().await;
        }
        for b in &self.list {
            b.stop().await;
        }
    }
}

/// Checks that bridge names are unique and each configuration can work.
pub fn validate_all(cfgs: &[BridgeConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for c in cfgs {
        c.validate()?;
        if !seen.insert(c.name.as_str()) {
            return Err(ConfigError {
                name: c.name.clone(),
                reason: "two bridges have this name".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f?queue=q"),
            "amqp://guest:***@127.0.0.1:5672/%2f?queue=q"
        );
        assert_eq!(redact("mqtt://127.0.0.1:1883"), "mqtt://127.0.0.1:1883");
        assert_eq!(redact("nats://tok@h:4222"), "nats://tok:***@h:4222");
    }
}
