//! The publisher process: one connection (or Zenoh session) publishing bursts of tagged,
//! fire-and-forget messages as fast as the client library takes them.

use super::sink::{now_ns, PROBE_TAG};
use super::{arg, commands, say, ClientArgs, ClientSystem};
use crate::runtime::ServerRuntime;
use crate::systems::{mqtt_peer, nats_peer};
use bytes::Bytes;
use std::time::{Duration, Instant};

/// How long after its time bound a burst may still take to get its messages out (a publish
/// held by a full subscriber, the final flush).
const DRAIN: Duration = Duration::from_secs(5);

/// A publishing end driven from the client runtime.
#[derive(Clone)]
enum AsyncEnd {
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
    },
}

impl AsyncEnd {
    async fn publish(&self, payload: &Bytes) -> anyhow::Result<()> {
        match self {
            AsyncEnd::Mitto { client, subject } => client.publish(subject, payload.clone()).await?,
            AsyncEnd::Nats { client, subject } => {
                client.publish(subject.clone(), payload.clone()).await?;
            }
            AsyncEnd::Mqtt { client, topic } => mqtt_peer::publish(client, topic, payload).await?,
        }
        Ok(())
    }

    /// Waits until everything published went out (mitto: a round trip through the broker;
    /// nats: the client's flush; rumqttc writes every publish itself).
    async fn flush(&self) -> anyhow::Result<()> {
        match self {
            AsyncEnd::Mitto { client, .. } => client.flush().await?,
            AsyncEnd::Nats { client, .. } => client.flush().await?,
            AsyncEnd::Mqtt { .. } => {}
        }
        Ok(())
    }
}

/// What a burst did: messages published, when the first went, whether the publisher was
/// still held at the time bound.
struct Sent {
    sent: u64,
    first_ns: u64,
    blocked: bool,
}

async fn burst_async(end: AsyncEnd, payload: Bytes, n: u64, max: Duration) -> anyhow::Result<Sent> {
    let first_ns = now_ns();
    let start = Instant::now();
    let mut sent = 0u64;
    let publishing = async {
        while sent < n {
            end.publish(&payload).await?;
            sent += 1;
            if sent.is_multiple_of(64) && start.elapsed() >= max {
                break;
            }
        }
        end.flush().await
    };
    let blocked = match tokio::time::timeout(max + DRAIN, publishing).await {
        Ok(r) => {
            r?;
            false
        }
        Err(_) => true,
    };
    Ok(Sent {
        sent,
        first_ns,
        blocked,
    })
}

fn burst_zenoh(
    publisher: &zenoh::pubsub::Publisher<'_>,
    payload: &zenoh::bytes::ZBytes,
    n: u64,
    max: Duration,
) -> anyhow::Result<Sent> {
    use zenoh::Wait as _;
    let first_ns = now_ns();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        publisher
            .put(payload.clone())
            .wait()
            .map_err(|e| anyhow::anyhow!("zenoh put: {e}"))?;
        sent += 1;
        if sent.is_multiple_of(64) && start.elapsed() >= max {
            break;
        }
    }
    Ok(Sent {
        sent,
        first_ns,
        blocked: false,
    })
}

/// A payload of `len` bytes (at least one) whose first byte is `tag`.
fn payload(tag: u8, len: usize) -> Bytes {
    let mut body = vec![0x5Au8; len.max(1)];
    body[0] = tag;
    Bytes::from(body)
}

/// Connects the async end of `a` on `rt`.
fn connect_async(a: &ClientArgs, rt: &ServerRuntime) -> anyhow::Result<AsyncEnd> {
    let a = a.clone();
    rt.block_on(async move {
        Ok(match a.system {
            ClientSystem::Mitto => AsyncEnd::Mitto {
                client: mitto::Client::connect(&a.url, mitto::ClientOptions::new()).await?,
                subject: a.subject.clone(),
            },
            ClientSystem::Nats => AsyncEnd::Nats {
                client: nats_peer::connect_with(&a.url, a.capacity).await?,
                subject: async_nats::Subject::from(a.subject.as_str()),
            },
            ClientSystem::Mqtt => {
                let (host, port) = a.mqtt_addr()?;
                let id = format!("mitto-bench-{}-pub", std::process::id());
                let (client, mut events) = mqtt_peer::connect(&id, &host, port).await?;
                // Polls the event loop (which does the writing) until the process ends.
                tokio::spawn(async move { while events.poll().await.is_ok() {} });
                AsyncEnd::Mqtt {
                    client,
                    topic: mqtt_peer::topic(&a.subject),
                }
            }
            other => anyhow::bail!("{other:?} is not an async client"),
        })
    })
}

/// Runs the publisher role.
pub(super) fn run(a: &ClientArgs) -> anyhow::Result<()> {
    let zenoh_mode = matches!(
        a.system,
        ClientSystem::ZenohClient | ClientSystem::ZenohPeer
    );
    // Zenoh runs on its own runtime threads; the others on one current-thread runtime.
    let rt = if zenoh_mode {
        None
    } else {
        Some(ServerRuntime::start()?)
    };
    let end = match &rt {
        Some(rt) => Some(connect_async(a, rt)?),
        None => None,
    };
    let session = if zenoh_mode {
        Some(a.zenoh_session()?)
    } else {
        None
    };
    let publisher = match &session {
        Some(s) => {
            use zenoh::Wait as _;
            Some(
                s.declare_publisher(a.subject.clone())
                    .congestion_control(zenoh::qos::CongestionControl::Block)
                    .wait()
                    .map_err(|e| anyhow::anyhow!("declaring a zenoh publisher: {e}"))?,
            )
        }
        None => None,
    };
    let go = |p: Bytes, n: u64, max: Duration| -> anyhow::Result<Sent> {
        match (&rt, &end, &publisher) {
            (Some(rt), Some(end), _) => rt.block_on(burst_async(end.clone(), p, n, max)),
            (_, _, Some(z)) => burst_zenoh(z, &zenoh::bytes::ZBytes::from(p), n, max),
            _ => anyhow::bail!("no publisher"),
        }
    };
    say("ready")?;
    for words in commands() {
        match words[0].as_str() {
            "probe" => {
                go(payload(PROBE_TAG, 16), 1, DRAIN)?;
                say("ok")?;
            }
            "burst" => {
                let tag: u8 = arg(&words, 1)?;
                anyhow::ensure!(tag != PROBE_TAG, "tag {PROBE_TAG} is the probe's");
                let n: u64 = arg(&words, 2)?;
                let len: usize = arg(&words, 3)?;
                let max = Duration::from_millis(arg(&words, 4)?);
                let s = go(payload(tag, len), n, max)?;
                say(&format!(
                    "done {} {} {}",
                    s.sent,
                    s.first_ns,
                    u8::from(s.blocked)
                ))?;
            }
            other => anyhow::bail!("unknown command {other:?}"),
        }
    }
    if let (Some(rt), Some(AsyncEnd::Mitto { client, .. })) = (&rt, end) {
        let _ = rt.block_on(async move {
            client.close().await;
            Ok(())
        });
    }
    Ok(())
}
