//! mosquitto (already running at 127.0.0.1:1883, not started by the suite), driven by the
//! `rumqttc` client, MQTT 3.1.1, QoS 0, clean sessions, defaults otherwise. A rumqttc
//! connection is an `AsyncClient` (requests go into a channel) and an `EventLoop` that must
//! be polled to move anything over the socket.

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::time::Duration;

/// Where mosquitto listens.
pub(crate) const ADDR: &str = "127.0.0.1:1883";
/// Its port, to find its process in `/proc`.
pub(crate) const PORT: u16 = 1883;

/// The MQTT topic for a subject (`bench.1.pubsub` -> `bench/1/pubsub`).
pub(crate) fn topic(subject: &str) -> String {
    subject.replace('.', "/")
}

/// Connects to the broker at `host:port` as `id` and waits for CONNACK.
pub(crate) async fn connect(
    id: &str,
    host: &str,
    port: u16,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let mut o = MqttOptions::new(id, host, port);
    // Long enough that a connection left unpolled while the other systems take their turn
    // is not dropped by the broker.
    o.set_keep_alive(Duration::from_secs(600));
    o.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(o, 1024);
    wait_for(&mut events, |p| matches!(p, Packet::ConnAck(_)))
        .await
        .with_context(|| format!("connecting to mosquitto at {host}:{port}"))?;
    Ok((client, events))
}

/// Subscribes `client` to `topic` at QoS 0 and waits for SUBACK.
pub(crate) async fn subscribe(
    client: &AsyncClient,
    events: &mut EventLoop,
    topic: &str,
) -> anyhow::Result<()> {
    client.subscribe(topic, QoS::AtMostOnce).await?;
    wait_for(events, |p| matches!(p, Packet::SubAck(_)))
        .await
        .context("subscribing on mosquitto")
}

/// Polls `events` until an incoming packet matches, for at most 5 s.
async fn wait_for(events: &mut EventLoop, want: impl Fn(&Packet) -> bool) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Event::Incoming(p) = events.poll().await? {
                if want(&p) {
                    return anyhow::Ok(());
                }
            }
        }
    })
    .await
    .context("no answer from mosquitto in 5 s")?
}

/// The next incoming PUBLISH: its payload's first byte and length. Drives the connection
/// while it waits.
pub(crate) async fn next_publish(events: &mut EventLoop) -> anyhow::Result<(u8, usize)> {
    loop {
        if let Event::Incoming(Packet::Publish(p)) = events.poll().await? {
            return Ok((p.payload.first().copied().unwrap_or(0), p.payload.len()));
        }
    }
}

/// One QoS 0 publish (queued for the event loop).
pub(crate) async fn publish(
    client: &AsyncClient,
    topic: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    client
        .publish(topic, QoS::AtMostOnce, false, payload.to_vec())
        .await?;
    Ok(())
}
