//! The two ends of a broker measurement for every broker: one publishing connection and one
//! or more subscribing connections, each system driven through its own client library.

use crate::systems::{mqtt_peer, nats_peer};
use bytes::Bytes;
use futures::StreamExt as _;

/// Which broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BrokerKind {
    /// mitto's broker, in process on the server runtime.
    Mitto,
    /// The nats-server at 127.0.0.1:4222, through `async-nats`.
    Nats,
    /// The mosquitto at 127.0.0.1:1883, through `rumqttc`, QoS 0.
    Mosquitto,
}

impl BrokerKind {
    /// The system's name in the rows.
    pub(crate) fn name(self) -> &'static str {
        match self {
            BrokerKind::Mitto => crate::report::MITTO,
            BrokerKind::Nats => "nats",
            BrokerKind::Mosquitto => "mosquitto",
        }
    }

    /// Where an external broker listens (None for mitto's own).
    pub(crate) fn external_addr(self) -> Option<&'static str> {
        match self {
            BrokerKind::Mitto => None,
            BrokerKind::Nats => Some(nats_peer::ADDR),
            BrokerKind::Mosquitto => Some(mqtt_peer::ADDR),
        }
    }
}

/// A publishing connection.
pub(crate) enum Publisher {
    Mitto {
        client: mitto::Client,
        subject: String,
    },
    Nats {
        client: async_nats::Client,
        subject: async_nats::Subject,
    },
    Mqtt {
        client: rumqttc::AsyncClient,
        topic: String,
        /// Polls the publisher's event loop (which does the writing) until aborted.
        driver: tokio::task::JoinHandle<()>,
    },
}

impl Publisher {
    /// Publishes one message, fire and forget.
    pub(crate) async fn publish(&self, payload: &Bytes) -> anyhow::Result<()> {
        match self {
            Publisher::Mitto { client, subject } => {
                client.publish(subject, payload.clone()).await?;
            }
            Publisher::Nats { client, subject } => {
                client.publish(subject.clone(), payload.clone()).await?;
            }
            Publisher::Mqtt { client, topic, .. } => {
                mqtt_peer::publish(client, topic, payload).await?;
            }
        }
        Ok(())
    }

    /// Waits until everything published went out (mitto: a round trip through the broker;
    /// nats: the client's flush; rumqttc flushes every publish itself).
    pub(crate) async fn flush(&self) -> anyhow::Result<()> {
        match self {
            Publisher::Mitto { client, .. } => client.flush().await?,
            Publisher::Nats { client, .. } => client.flush().await?,
            Publisher::Mqtt { .. } => {}
        }
        Ok(())
    }

    /// Closes the connection.
    pub(crate) async fn close(self) {
        match self {
            Publisher::Mitto { client, .. } => client.close().await,
            Publisher::Nats { client, .. } => drop(client),
            Publisher::Mqtt { driver, .. } => driver.abort(),
        }
    }
}

/// A subscribing connection with one subscription.
pub(crate) enum Subscriber {
    Mitto {
        client: mitto::Client,
        sub: mitto::Subscription,
    },
    Nats {
        _client: async_nats::Client,
        sub: async_nats::Subscriber,
    },
    Mqtt {
        _client: rumqttc::AsyncClient,
        /// Boxed: a rumqttc event loop is large.
        events: Box<rumqttc::EventLoop>,
    },
}

impl Subscriber {
    /// The next message: its payload's first byte (the burst tag) and its length; None once
    /// the subscription ended.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<(u8, usize)>> {
        let tag = |p: &Bytes| (p.first().copied().unwrap_or(0), p.len());
        Ok(match self {
            Subscriber::Mitto { sub, .. } => sub.next().await.map(|m| tag(m.payload())),
            Subscriber::Nats { sub, .. } => sub.next().await.map(|m| tag(&m.payload)),
            Subscriber::Mqtt { events, .. } => Some(mqtt_peer::next_publish(events).await?),
        })
    }

    /// Closes the connection.
    pub(crate) async fn close(self) {
        match self {
            Subscriber::Mitto { client, sub } => {
                drop(sub);
                client.close().await;
            }
            Subscriber::Nats { .. } | Subscriber::Mqtt { .. } => {}
        }
    }
}

/// The MQTT topic for a subject (`bench.1.pubsub` -> `bench/1/pubsub`).
fn topic(subject: &str) -> String {
    subject.replace('.', "/")
}

/// Connects one publisher and `subscribers` subscribers of `subject` to `kind` (mitto's broker
/// at `mitto_url`); returns once every subscription is in place at the broker.
pub(crate) async fn connect_fan(
    kind: BrokerKind,
    mitto_url: &str,
    subject: &str,
    subscribers: usize,
) -> anyhow::Result<(Publisher, Vec<Subscriber>)> {
    let mut subs = Vec::with_capacity(subscribers);
    match kind {
        BrokerKind::Mitto => {
            let opts = mitto::ClientOptions::new;
            for _ in 0..subscribers {
                let client = mitto::Client::connect(mitto_url, opts()).await?;
                // SUBSCRIBE returns once the broker confirmed it. `block`: the broker holds the
                // publisher while a subscription is full instead of dropping (nats-server, too,
                // delivers everything here), so every message is counted.
                let opts = mitto::SubscribeOptions {
                    policy: mitto::Policy::Block,
                    ..mitto::SubscribeOptions::default()
                };
                let sub = client.subscribe_with(subject, opts).await?;
                subs.push(Subscriber::Mitto { client, sub });
            }
            let client = mitto::Client::connect(mitto_url, opts()).await?;
            let publisher = Publisher::Mitto {
                client,
                subject: subject.to_owned(),
            };
            Ok((publisher, subs))
        }
        BrokerKind::Nats => {
            for _ in 0..subscribers {
                let client = nats_peer::connect().await?;
                let sub = client.subscribe(subject.to_owned()).await?;
                // A PING/PONG: the server has the subscription.
                client.flush().await?;
                subs.push(Subscriber::Nats {
                    _client: client,
                    sub,
                });
            }
            let client = nats_peer::connect().await?;
            let publisher = Publisher::Nats {
                client,
                subject: async_nats::Subject::from(subject),
            };
            Ok((publisher, subs))
        }
        BrokerKind::Mosquitto => {
            let topic = topic(subject);
            let pid = std::process::id();
            for i in 0..subscribers {
                let (client, mut events) =
                    mqtt_peer::connect(&format!("mitto-bench-{pid}-sub{i}")).await?;
                mqtt_peer::subscribe(&client, &mut events, &topic).await?;
                subs.push(Subscriber::Mqtt {
                    _client: client,
                    events: Box::new(events),
                });
            }
            let (client, mut events) =
                mqtt_peer::connect(&format!("mitto-bench-{pid}-pub")).await?;
            let driver = tokio::spawn(async move { while events.poll().await.is_ok() {} });
            Ok((
                Publisher::Mqtt {
                    client,
                    topic,
                    driver,
                },
                subs,
            ))
        }
    }
}
