//! The ends of the in-process `bus` scenario: mitto's broker embedded in this process
//! (`inproc://`, bytes and typed values), and bounded `tokio::sync::mpsc` and `flume` channels.
//!
//! Every system is one publishing end and `k` receiving ends, each with a queue bounded at
//! [`CAPACITY`] messages that makes the publisher wait when full (lossless). A burst publishes
//! data messages, then one end marker (an empty payload, or a typed value with [`END_SEQ`]);
//! every receiving end counts the data messages until it sees the marker, so a lost message
//! shows as a short count, and a stuck one as a burst that does not end.

use anyhow::Context as _;
use bytes::Bytes;
use mitto::{Client, ClientOptions, Policy, SubscribeOptions, Subscription, TypedSubscription};
use mitto_broker::{Broker, BrokerConfig, PolicyName};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The bound of every queue: the channels' capacity, and `max_pending` of mitto's
/// subscriptions (with [`Policy::Block`]).
pub(crate) const CAPACITY: usize = 1024;
/// Payload of the byte messages.
pub(crate) const PAYLOAD: usize = 16;
/// `Small::seq` of the typed end marker.
const END_SEQ: u64 = u64::MAX;

/// The value `mitto-typed` publishes: 16 bytes of plain data, moved as an `Arc`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct Small {
    seq: u64,
    value: u64,
}

/// The systems, in row order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BusKind {
    /// `Client::publish` of `Bytes`, `Subscription` with `Policy::Block`.
    Mitto,
    /// `Client::publish_shared` of an `Arc<Small>`, `subscribe_typed::<Small>`.
    MittoTyped,
    /// `tokio::sync::mpsc::channel(CAPACITY)` of `Bytes`, one per receiver.
    TokioMpsc,
    /// `flume::bounded(CAPACITY)` of `Bytes` (async send and receive), one per receiver.
    Flume,
}

impl BusKind {
    /// Every system.
    pub(crate) const ALL: [BusKind; 4] = [
        BusKind::Mitto,
        BusKind::MittoTyped,
        BusKind::TokioMpsc,
        BusKind::Flume,
    ];

    /// The name in the rows.
    pub(crate) fn name(self) -> &'static str {
        match self {
            BusKind::Mitto => "mitto",
            BusKind::MittoTyped => "mitto-typed",
            BusKind::TokioMpsc => "tokio-mpsc",
            BusKind::Flume => "flume",
        }
    }
}

/// mitto's broker, embedded: its only listener is `inproc://`, its subscriptions block
/// publishers by default with a bound of [`CAPACITY`] (what `subscribe_typed` gets, since it
/// takes no options).
pub(crate) struct EmbeddedBroker {
    broker: Broker,
    /// Where clients connect (`inproc://...`).
    pub(crate) url: String,
}

impl EmbeddedBroker {
    /// Starts a broker whose tasks run on the current runtime.
    pub(crate) async fn start() -> anyhow::Result<EmbeddedBroker> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let cfg = BrokerConfig {
            listen: vec![format!(
                "inproc://mitto-bench-bus-{}-{n}",
                std::process::id()
            )],
            monitor: String::new(),
            max_pending_msgs: CAPACITY as u32,
            slow_consumer: PolicyName::Block,
            ..BrokerConfig::default()
        };
        let broker = Broker::start(cfg)
            .await
            .context("starting the embedded broker")?;
        let url = broker
            .urls()
            .first()
            .cloned()
            .context("the embedded broker has no listener")?;
        Ok(EmbeddedBroker { broker, url })
    }

    /// One of the broker's counters (`slow_consumer_drops`, ...); 0 if unknown.
    pub(crate) fn stat(&self, name: &str) -> u64 {
        self.broker.stats().get(name).copied().unwrap_or(0)
    }

    /// Shuts the broker down.
    pub(crate) async fn stop(self) {
        self.broker.shutdown().await;
    }
}

/// A publishing end, with the data message and the end marker it sends.
pub(crate) enum Publisher {
    Mitto {
        client: Client,
        subject: String,
        data: Bytes,
        end: Bytes,
    },
    MittoTyped {
        client: Client,
        subject: String,
        data: Arc<Small>,
        end: Arc<Small>,
    },
    TokioMpsc {
        txs: Vec<mpsc::Sender<Bytes>>,
        data: Bytes,
        end: Bytes,
    },
    Flume {
        txs: Vec<flume::Sender<Bytes>>,
        data: Bytes,
        end: Bytes,
    },
}

/// A receiving end. mitto's keep their own client (one per subscriber).
pub(crate) enum Receiver {
    Mitto {
        client: Client,
        sub: Subscription,
    },
    MittoTyped {
        client: Client,
        sub: TypedSubscription<Small>,
    },
    TokioMpsc(mpsc::Receiver<Bytes>),
    Flume(flume::Receiver<Bytes>),
}

/// What a publisher did in a burst.
pub(crate) struct Sent {
    /// Data messages published (the end marker not counted).
    pub(crate) sent: u64,
    /// Just before the first publish.
    pub(crate) start: Instant,
}

/// What a receiver got in a burst.
pub(crate) struct Got {
    /// Data messages received (the end marker not counted).
    pub(crate) got: u64,
    /// When the end marker arrived.
    pub(crate) last: Instant,
}

/// The payload of the byte systems' data messages.
fn data_payload() -> Bytes {
    Bytes::from(vec![0x5Au8; PAYLOAD])
}

/// Opens one publishing end and `k` receiving ends of `kind` on `subject` (mitto: one client
/// for the publisher and one per subscriber, every subscription confirmed by the broker).
pub(crate) async fn connect(
    kind: BusKind,
    broker: &EmbeddedBroker,
    subject: &str,
    k: usize,
) -> anyhow::Result<(Publisher, Vec<Receiver>)> {
    let client = |role: String| {
        let url = broker.url.clone();
        async move {
            Client::connect(&url, ClientOptions::new().name(format!("bench-bus-{role}")))
                .await
                .with_context(|| format!("connecting {role} to {url}"))
        }
    };
    let mut receivers = Vec::with_capacity(k);
    let publisher = match kind {
        BusKind::Mitto => {
            for i in 0..k {
                let c = client(format!("sub-{i}")).await?;
                let opts = SubscribeOptions {
                    policy: Policy::Block,
                    max_pending: CAPACITY as u32,
                    ..SubscribeOptions::default()
                };
                let sub = c.subscribe_with(subject, opts).await?;
                receivers.push(Receiver::Mitto { client: c, sub });
            }
            Publisher::Mitto {
                client: client("pub".into()).await?,
                subject: subject.to_owned(),
                data: data_payload(),
                end: Bytes::new(),
            }
        }
        BusKind::MittoTyped => {
            for i in 0..k {
                let c = client(format!("typed-sub-{i}")).await?;
                let sub = c.subscribe_typed::<Small>(subject).await?;
                receivers.push(Receiver::MittoTyped { client: c, sub });
            }
            Publisher::MittoTyped {
                client: client("typed-pub".into()).await?,
                subject: subject.to_owned(),
                data: Arc::new(Small {
                    seq: 0,
                    value: 0x5A5A_5A5A_5A5A_5A5A,
                }),
                end: Arc::new(Small {
                    seq: END_SEQ,
                    value: 0,
                }),
            }
        }
        BusKind::TokioMpsc => {
            let mut txs = Vec::with_capacity(k);
            for _ in 0..k {
                let (tx, rx) = mpsc::channel(CAPACITY);
                txs.push(tx);
                receivers.push(Receiver::TokioMpsc(rx));
            }
            Publisher::TokioMpsc {
                txs,
                data: data_payload(),
                end: Bytes::new(),
            }
        }
        BusKind::Flume => {
            let mut txs = Vec::with_capacity(k);
            for _ in 0..k {
                let (tx, rx) = flume::bounded(CAPACITY);
                txs.push(tx);
                receivers.push(Receiver::Flume(rx));
            }
            Publisher::Flume {
                txs,
                data: data_payload(),
                end: Bytes::new(),
            }
        }
    };
    Ok((publisher, receivers))
}

/// Calls `send(false)` (a data message) up to `n` times, or until `max` has passed (checked
/// every 64 messages), then `send(true)` (the end marker).
async fn pump<F, Fut>(n: u64, max: Duration, mut send: F) -> anyhow::Result<Sent>
where
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        send(false).await?;
        sent += 1;
        if sent.is_multiple_of(64) && start.elapsed() >= max {
            break;
        }
    }
    send(true).await?;
    Ok(Sent { sent, start })
}

/// Whether a received byte message is data (`true`) or the end marker (`false`); an error for
/// a closed queue or a payload of another size.
fn is_data(len: Option<usize>) -> anyhow::Result<bool> {
    match len {
        Some(PAYLOAD) => Ok(true),
        Some(0) => Ok(false),
        Some(n) => anyhow::bail!("received a {n} B payload, expected {PAYLOAD} B"),
        None => anyhow::bail!("the queue closed before the end marker"),
    }
}

impl Publisher {
    /// Publishes one burst (see [`pump`]); returns itself for the next burst.
    pub(crate) async fn publish(self, n: u64, max: Duration) -> (Publisher, anyhow::Result<Sent>) {
        let r = match &self {
            Publisher::Mitto {
                client,
                subject,
                data,
                end,
            } => {
                pump(n, max, |last| async move {
                    let p = if last { end.clone() } else { data.clone() };
                    client.publish(subject, p).await.map_err(Into::into)
                })
                .await
            }
            Publisher::MittoTyped {
                client,
                subject,
                data,
                end,
            } => {
                pump(n, max, |last| async move {
                    let v = if last { end.clone() } else { data.clone() };
                    client.publish_shared(subject, v).await.map_err(Into::into)
                })
                .await
            }
            Publisher::TokioMpsc { txs, data, end } => {
                pump(n, max, |last| async move {
                    let p = if last { end } else { data };
                    for tx in txs {
                        tx.send(p.clone())
                            .await
                            .map_err(|_| anyhow::anyhow!("a receiver was dropped"))?;
                    }
                    Ok(())
                })
                .await
            }
            Publisher::Flume { txs, data, end } => {
                pump(n, max, |last| async move {
                    let p = if last { end } else { data };
                    for tx in txs {
                        tx.send_async(p.clone())
                            .await
                            .map_err(|_| anyhow::anyhow!("a receiver was dropped"))?;
                    }
                    Ok(())
                })
                .await
            }
        };
        (self, r)
    }

    /// Closes mitto's client.
    pub(crate) async fn close(self) {
        if let Publisher::Mitto { client, .. } | Publisher::MittoTyped { client, .. } = self {
            client.close().await;
        }
    }
}

impl Receiver {
    /// Receives one burst: counts data messages until the end marker; returns itself for the
    /// next burst.
    pub(crate) async fn receive(mut self) -> (Receiver, anyhow::Result<Got>) {
        let mut got = 0u64;
        let r: anyhow::Result<()> = async {
            match &mut self {
                Receiver::Mitto { sub, .. } => {
                    while is_data(sub.next().await.map(|m| m.payload().len()))? {
                        got += 1;
                    }
                }
                Receiver::MittoTyped { sub, .. } => loop {
                    let len = match sub.next().await {
                        Some(ev) => Some(if ev?.seq == END_SEQ { 0 } else { PAYLOAD }),
                        None => None,
                    };
                    if !is_data(len)? {
                        break;
                    }
                    got += 1;
                },
                Receiver::TokioMpsc(rx) => {
                    while is_data(rx.recv().await.map(|b| b.len()))? {
                        got += 1;
                    }
                }
                Receiver::Flume(rx) => {
                    while is_data(rx.recv_async().await.ok().map(|b| b.len()))? {
                        got += 1;
                    }
                }
            }
            Ok(())
        }
        .await;
        let last = Instant::now();
        (self, r.map(|()| Got { got, last }))
    }

    /// Closes mitto's client.
    pub(crate) async fn close(self) {
        match self {
            Receiver::Mitto { client, sub } => {
                drop(sub);
                client.close().await;
            }
            Receiver::MittoTyped { client, sub } => {
                drop(sub);
                client.close().await;
            }
            Receiver::TokioMpsc(_) | Receiver::Flume(_) => {}
        }
    }
}
