//! The embedded layout of `pubsub` and `fanout` (rows `mitto-embedded`): mitto's broker inside
//! the benchmark process on the server thread (a current-thread runtime), the publisher and
//! subscriber connections on the calling thread's current-thread runtime, over TCP on
//! 127.0.0.1, subscriptions with the `block` policy. Embedding the broker is a real use of
//! mitto; it is not how a broker is usually deployed, which the deployed layout measures.

use super::fan::Burst;
use crate::measure::process_cpu;
use crate::runtime::{client_runtime, ServerRuntime};
use crate::systems::broker_sys::InProcBroker;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The rows' system name.
pub(crate) const SYSTEM: &str = "mitto-embedded";

/// How long after the publishing time bound a burst may still wait for deliveries.
const DRAIN: Duration = Duration::from_secs(5);

/// A subscribing connection.
struct Subscriber {
    client: mitto::Client,
    sub: mitto::Subscription,
}

/// Shared by the publisher and the subscribers of one burst.
struct BurstState {
    /// Messages each subscriber should get: lowered to the count actually published when the
    /// time bound stopped the publisher early.
    expected: AtomicU64,
    done: AtomicBool,
}

/// What one subscriber got in a burst.
struct Received {
    got: u64,
    stale: u64,
    last: Option<Instant>,
}

async fn receive(
    mut s: Subscriber,
    tag: u8,
    len: usize,
    st: Arc<BurstState>,
    hard: Instant,
    stall_for: Duration,
) -> (Subscriber, anyhow::Result<Received>) {
    let mut r = Received {
        got: 0,
        stale: 0,
        last: None,
    };
    let stall = tokio::time::sleep(stall_for);
    tokio::pin!(stall);
    let mut at_tick = 0u64;
    let result = loop {
        if r.got >= st.expected.load(Ordering::Acquire) {
            r.last = Some(Instant::now());
            break Ok(());
        }
        tokio::select! {
            biased;
            m = s.sub.next() => match m {
                Some(m) if m.payload().first() == Some(&tag) && m.payload().len() == len => {
                    r.got += 1;
                    // A clock read every 64 messages is enough for the end of the burst.
                    if r.got < 64 || r.got.is_multiple_of(64) {
                        r.last = Some(Instant::now());
                    }
                }
                Some(_) => r.stale += 1,
                None => break Err(anyhow::anyhow!("the subscription ended")),
            },
            () = &mut stall => {
                let now = Instant::now();
                if now >= hard || (r.got == at_tick && st.done.load(Ordering::Acquire)) {
                    break Ok(());
                }
                at_tick = r.got;
                stall.as_mut().reset(tokio::time::Instant::from_std(now + stall_for));
            }
        }
    };
    (s, result.map(|()| r))
}

/// The publisher and subscribers of the embedded broker.
struct Ends {
    publisher: mitto::Client,
    subject: String,
    subscribers: Vec<Subscriber>,
    next_tag: u8,
}

impl Ends {
    async fn connect(url: &str, subject: &str, subscribers: usize) -> anyhow::Result<Ends> {
        let mut subs = Vec::with_capacity(subscribers);
        for _ in 0..subscribers {
            let client = mitto::Client::connect(url, mitto::ClientOptions::new()).await?;
            // `block`: the broker holds the publisher while a subscription is full instead of
            // dropping, so every message is counted.
            let opts = mitto::SubscribeOptions {
                policy: mitto::Policy::Block,
                ..mitto::SubscribeOptions::default()
            };
            let sub = client.subscribe_with(subject, opts).await?;
            subs.push(Subscriber { client, sub });
        }
        Ok(Ends {
            publisher: mitto::Client::connect(url, mitto::ClientOptions::new()).await?,
            subject: subject.to_owned(),
            subscribers: subs,
            next_tag: 0,
        })
    }

    /// Publishes up to `n` messages (or for `max`) while every subscriber receives them.
    async fn burst(
        &mut self,
        n: u64,
        max: Duration,
        size: usize,
        stall: Duration,
    ) -> anyhow::Result<Burst> {
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        let tag = self.next_tag;
        let mut body = vec![0x5Au8; size.max(1)];
        body[0] = tag;
        let payload = Bytes::from(body);
        let st = Arc::new(BurstState {
            expected: AtomicU64::new(n),
            done: AtomicBool::new(false),
        });
        let cpu = process_cpu();
        let start = Instant::now();
        let hard = start + max + DRAIN.max(stall);
        let tasks: Vec<_> = self
            .subscribers
            .drain(..)
            .map(|s| tokio::spawn(receive(s, tag, payload.len(), st.clone(), hard, stall)))
            .collect();
        let mut sent = 0u64;
        let publishing = async {
            while sent < n {
                self.publisher
                    .publish(&self.subject, payload.clone())
                    .await?;
                sent += 1;
                if sent.is_multiple_of(64) && start.elapsed() >= max {
                    break;
                }
            }
            self.publisher.flush().await?;
            anyhow::Ok(())
        };
        let mut blocked = false;
        let mut result = match tokio::time::timeout(max + DRAIN, publishing).await {
            Ok(r) => r,
            Err(_) => {
                blocked = true;
                Ok(())
            }
        };
        st.expected.store(sent, Ordering::Release);
        st.done.store(true, Ordering::Release);
        let mut out = Burst {
            published: sent,
            blocked,
            ..Burst::default()
        };
        let mut last = None;
        for t in tasks {
            let (sub, r) = t
                .await
                .map_err(|e| anyhow::anyhow!("a subscriber task failed: {e}"))?;
            self.subscribers.push(sub);
            match r {
                Ok(r) => {
                    out.delivered += r.got;
                    out.stale += r.stale;
                    last = last.max(r.last);
                }
                Err(e) => result = result.and(Err(e)),
            }
        }
        result?;
        out.cpu = Some(process_cpu().saturating_sub(cpu));
        out.elapsed = last.map(|l| l - start).unwrap_or_default();
        Ok(out)
    }

    async fn close(self) {
        self.publisher.close().await;
        for s in self.subscribers {
            drop(s.sub);
            s.client.close().await;
        }
    }
}

/// The embedded layout's broker and ends, between bursts.
pub(crate) struct EmbeddedFan {
    // Field order is drop order: the ends, the broker, then the runtimes.
    ends: Option<Ends>,
    broker: Option<InProcBroker>,
    drops_before: u64,
    rt: tokio::runtime::Runtime,
    srt: ServerRuntime,
}

impl EmbeddedFan {
    /// Starts the broker and connects the publisher and `subscribers` subscribers of `subject`.
    pub(crate) fn start(subject: &str, subscribers: usize) -> anyhow::Result<EmbeddedFan> {
        let srt = ServerRuntime::start()?;
        let rt = client_runtime()?;
        let (broker, ends) = rt.block_on(async {
            let broker = InProcBroker::start(&srt).await?;
            let ends = tokio::time::timeout(
                Duration::from_secs(30),
                Ends::connect(&broker.url, subject, subscribers),
            )
            .await
            .map_err(|_| anyhow::anyhow!("connecting took over 30 s"))??;
            anyhow::Ok((broker, ends))
        })?;
        let drops_before = broker.stat("slow_consumer_drops");
        Ok(EmbeddedFan {
            ends: Some(ends),
            broker: Some(broker),
            drops_before,
            rt,
            srt,
        })
    }

    /// One burst: up to `n` messages of `size` bytes, for at most `max`; a subscriber that got
    /// nothing for `stall` after the publisher finished is done.
    pub(crate) fn burst(
        &mut self,
        n: u64,
        max: Duration,
        size: usize,
        stall: Duration,
    ) -> anyhow::Result<Burst> {
        let ends = self
            .ends
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("{SYSTEM} is stopped"))?;
        self.rt.block_on(ends.burst(n, max, size, stall))
    }

    /// The broker's `slow_consumer_drops` since the start.
    pub(crate) fn drops(&self) -> u64 {
        self.broker
            .as_ref()
            .map(|b| b.stat("slow_consumer_drops") - self.drops_before)
            .unwrap_or(0)
    }

    /// Closes the ends and stops the broker.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let (ends, broker) = (self.ends.take(), self.broker.take());
        let srt = &self.srt;
        self.rt.block_on(async {
            if let Some(e) = ends {
                e.close().await;
            }
            if let Some(b) = broker {
                b.stop(srt).await?;
            }
            anyhow::Ok(())
        })
    }
}
