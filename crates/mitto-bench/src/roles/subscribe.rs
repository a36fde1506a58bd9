//! The subscriber process: one connection (or Zenoh session) with one subscription, counting
//! what arrives in a [`Sink`].

use super::sink::Sink;
use super::{arg, commands, say, ClientArgs, ClientSystem};
use crate::runtime::ServerRuntime;
use crate::systems::{mqtt_peer, nats_peer};
use futures::StreamExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The payload's first byte and length.
fn tag(p: &[u8]) -> (u8, usize) {
    (p.first().copied().unwrap_or(0), p.len())
}

/// Subscribes on `rt` and spawns the task that feeds `sink`; returns once the broker has the
/// subscription (mitto: SUBSCRIBE answered; nats: a flush; MQTT: SUBACK).
fn subscribe_async(a: &ClientArgs, rt: &ServerRuntime, sink: Arc<Sink>) -> anyhow::Result<()> {
    let a = a.clone();
    rt.block_on(async move {
        match a.system {
            ClientSystem::Mitto => {
                let client = mitto::Client::connect(&a.url, mitto::ClientOptions::new()).await?;
                let mut sub = client.subscribe(&a.subject).await?;
                tokio::spawn(async move {
                    let _client = client;
                    while let Some(m) = sub.next().await {
                        let (t, l) = tag(m.payload());
                        sink.on_message(t, l);
                    }
                });
            }
            ClientSystem::Nats => {
                let client = nats_peer::connect_with(&a.url, a.capacity).await?;
                let mut sub = client.subscribe(a.subject.clone()).await?;
                client.flush().await?;
                tokio::spawn(async move {
                    let _client = client;
                    while let Some(m) = sub.next().await {
                        let (t, l) = tag(&m.payload);
                        sink.on_message(t, l);
                    }
                });
            }
            ClientSystem::Mqtt => {
                let (host, port) = a.mqtt_addr()?;
                let id = format!("mitto-bench-{}-sub", std::process::id());
                let (client, mut events) = mqtt_peer::connect(&id, &host, port).await?;
                let topic = mqtt_peer::topic(&a.subject);
                mqtt_peer::subscribe(&client, &mut events, &topic).await?;
                tokio::spawn(async move {
                    let _client = client;
                    while let Ok((t, l)) = mqtt_peer::next_publish(&mut events).await {
                        sink.on_message(t, l);
                    }
                });
            }
            other => anyhow::bail!("{other:?} is not an async client"),
        }
        Ok(())
    })
}

/// Runs the subscriber role.
pub(super) fn run(a: &ClientArgs) -> anyhow::Result<()> {
    let sink = Arc::new(Sink::default());
    let zenoh_mode = matches!(
        a.system,
        ClientSystem::ZenohClient | ClientSystem::ZenohPeer
    );
    let rt = if zenoh_mode {
        None
    } else {
        let rt = ServerRuntime::start()?;
        subscribe_async(a, &rt, sink.clone())?;
        Some(rt)
    };
    // Kept until the end (the subscriber, then the session, are dropped in that order).
    let mut zenoh_parts = None;
    if zenoh_mode {
        use zenoh::Wait as _;
        let session = a.zenoh_session()?;
        let s = sink.clone();
        let subscriber = session
            .declare_subscriber(a.subject.clone())
            .callback(move |sample| {
                let p = sample.payload();
                let first = p.slices().next().and_then(|b| b.first().copied());
                s.on_message(first.unwrap_or(0), p.len());
            })
            .wait()
            .map_err(|e| anyhow::anyhow!("declaring a zenoh subscriber: {e}"))?;
        zenoh_parts = Some((subscriber, session));
    }
    say("ready")?;
    let mut cmds = commands();
    while let Some(words) = cmds.next() {
        match words[0].as_str() {
            "probed?" => say(if sink.probed() {
                "probed yes"
            } else {
                "probed no"
            })?,
            "burst" => {
                let tag: u8 = arg(&words, 1)?;
                let n: u64 = arg(&words, 2)?;
                let len: usize = arg(&words, 3)?;
                let hard = Instant::now() + Duration::from_millis(arg(&words, 4)?);
                let stall = Duration::from_millis(arg(&words, 5)?);
                sink.arm(tag, len, n);
                say("ok")?;
                let end = cmds
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("stdin closed during a burst"))?;
                anyhow::ensure!(end[0] == "end", "expected end SENT, got {end:?}");
                let sent: u64 = arg(&end, 1)?;
                let c = sink.finish(sent, stall, hard);
                say(&format!("done {} {} {}", c.got, c.stale, c.last_ns))?;
            }
            other => anyhow::bail!("unknown command {other:?}"),
        }
    }
    drop(zenoh_parts);
    drop(rt);
    Ok(())
}
