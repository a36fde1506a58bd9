//! NATS through `async-nats`: out confirmed by a marker's return (core NATS: the server
//! processed the batch before it) or a JetStream ack (stored), in from core subscriptions.
//!
//! Core NATS has no acknowledgement on the way in: a message mitto refuses is counted as a drop.
//! A lost connection ends the link at once (its unconfirmed messages go back to the buffer) and
//! the bridge reconnects with its own backoff, so the buffer bound and the drop count hold for
//! NATS as for the other backends.

use crate::envelope::Envelope;
use crate::inbound::{deliver, Fate};
use crate::link::{Backend, Confirm, Ctx, Link, Session, Trip};
use crate::mqtt::AbortOnDrop;
use crate::stats::{bump, State};
use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use futures_util::future::BoxFuture;
use futures_util::stream::select_all;
use futures_util::{FutureExt, StreamExt};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

const CONTENT_TYPE: &str = "content-type";
const CORRELATION_ID: &str = "correlation-id";

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The NATS headers of `env`; names or values NATS cannot carry (non-ASCII names, line breaks,
/// bytes that are not UTF-8) are left out.
pub(crate) fn headers(env: &Envelope) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |k: &str, v: &[u8]| {
        let (Ok(k), Some(v)) = (
            HeaderName::from_str(k),
            std::str::from_utf8(v)
                .ok()
                .and_then(|v| HeaderValue::from_str(v).ok()),
        ) else {
            return;
        };
        h.append(k, v);
    };
    if let Some(ct) = &env.content_type {
        put(CONTENT_TYPE, ct.as_bytes());
    }
    if let Some(c) = &env.correlation_id {
        put(CORRELATION_ID, c);
    }
    for (k, v) in &env.headers {
        put(k, v);
    }
    h
}

/// The envelope of a NATS message.
pub(crate) fn envelope(m: &async_nats::Message) -> Envelope {
    let mut env = Envelope {
        name: m.subject.to_string(),
        payload: m.payload.clone(),
        ..Envelope::default()
    };
    if let Some(h) = &m.headers {
        for (k, vs) in h.iter() {
            for v in vs {
                let (k, v): (&str, &str) = (k.as_ref(), v.as_str());
                if k.eq_ignore_ascii_case(CONTENT_TYPE) {
                    env.content_type = Some(v.to_owned());
                } else if k.eq_ignore_ascii_case(CORRELATION_ID) {
                    env.correlation_id = Some(v.as_bytes().to_vec());
                } else {
                    env.headers.push((k.to_owned(), v.as_bytes().to_vec()));
                }
            }
        }
    }
    env
}

/// Where a bridge's confirm markers go: `CONFIRM_PREFIX` and a random part.
const CONFIRM_PREFIX: &str = "_MITTO.confirm.";

/// A batch this large (dense traffic) gets its marker at once.
const DENSE: usize = 64;

/// How long a smaller batch waits for its marker at most (the timer's granularity: up to about
/// twice that): batches of sparse traffic share a marker, so that a marker's return is not one
/// more wake-up per message beside the subscribers' delivery.
const MARK_AFTER: std::time::Duration = std::time::Duration::from_millis(1);

/// Confirms core NATS publishes. `flush` only writes to the socket; the server delivers a
/// message to a subscription of the publishing connection only after it processed every
/// publish sent before it on that connection. So after batches the bridge publishes a marker
/// (the number of the last batch) to a subject only it subscribes to, and the marker's return
/// confirms every batch up to it. (A request to a subject nobody serves would do too, but its
/// no-responders answer held the subscribers' deliveries back by tens of microseconds, and any
/// `>` subscriber on the server kept it from ever coming.)
struct Marks {
    subject: async_nats::Subject,
    /// Batches published so far (each numbered by this count).
    batches: AtomicU64,
    /// The number of the last batch a marker was sent after.
    marked: AtomicU64,
    /// Messages published since the last marker.
    unmarked: AtomicUsize,
    /// Past this many unmarked messages a marker goes at once (a quarter of the window).
    at_once: usize,
    /// Tells the marker task that a batch waits for a marker.
    wake: Notify,
    /// The highest marker back.
    back: watch::Sender<u64>,
}

impl Marks {
    /// Sends a marker after every batch published so far, unless one went already.
    async fn mark(&self, client: &async_nats::Client) -> Result<(), String> {
        let n = self.batches.load(Ordering::Acquire);
        if self.marked.fetch_max(n, Ordering::AcqRel) >= n {
            return Ok(());
        }
        self.unmarked.store(0, Ordering::Relaxed);
        client
            .publish(self.subject.clone(), n.to_be_bytes().to_vec().into())
            .await
            .map_err(err)
    }

    /// Resolves once marker `n` (or a later one) came back.
    fn confirm(&self, n: u64) -> BoxFuture<'static, Result<(), String>> {
        let mut back = self.back.subscribe();
        async move {
            back.wait_for(|b| *b >= n)
                .await
                .map(|_| ())
                .map_err(|_| "the connection ended".to_owned())
        }
        .boxed()
    }

    /// Takes a marker that came back.
    fn returned(&self, payload: &[u8]) {
        if let Ok(n) = <[u8; 8]>::try_from(payload).map(u64::from_be_bytes) {
            self.back.send_if_modified(|b| {
                let newer = n > *b;
                *b = (*b).max(n);
                newer
            });
        }
    }
}

#[derive(Clone)]
pub(crate) struct NatsLink {
    client: async_nats::Client,
    js: Option<async_nats::jetstream::Context>,
    marks: Arc<Marks>,
    trip: Trip,
}

impl NatsLink {
    /// `confirm`, or an error as soon as the connection is lost.
    fn until_lost(&self, confirm: BoxFuture<'static, Result<(), String>>) -> Confirm {
        let trip = self.trip.clone();
        async move {
            tokio::select! {
                r = confirm => r,
                _ = trip.tripped() => Err("connection lost".to_owned()),
            }
        }
        .boxed()
    }
}

impl Link for NatsLink {
    async fn send(&self, batch: &[Envelope]) -> Result<Confirm, String> {
        match &self.js {
            Some(js) => {
                let mut acks = Vec::with_capacity(batch.len());
                for env in batch {
                    let ack = js
                        .publish_with_headers(env.name.clone(), headers(env), env.payload.clone())
                        .await
                        .map_err(err)?;
                    acks.push(ack);
                }
                Ok(self.until_lost(
                    async move {
                        for ack in acks {
                            ack.await.map_err(err)?;
                        }
                        Ok(())
                    }
                    .boxed(),
                ))
            }
            None => {
                for env in batch {
                    let (name, payload) = (env.name.clone(), env.payload.clone());
                    // Without headers, a plain PUB: nothing for the server or the subscribers
                    // to parse.
                    let sent = if env.has_headers() {
                        self.client
                            .publish_with_headers(name, headers(env), payload)
                            .await
                    } else {
                        self.client.publish(name, payload).await
                    };
                    sent.map_err(err)?;
                }
                let m = &self.marks;
                // Numbered once its messages are queued: a marker for it goes after them.
                let n = m.batches.fetch_add(1, Ordering::AcqRel) + 1;
                let unmarked = m.unmarked.fetch_add(batch.len(), Ordering::Relaxed) + batch.len();
                if batch.len() >= DENSE || unmarked >= m.at_once {
                    m.mark(&self.client).await?;
                } else {
                    m.wake.notify_one();
                }
                Ok(self.until_lost(m.confirm(n)))
            }
        }
    }

    fn trip(&self) {
        self.trip.trip();
    }
}

/// The NATS bridge backend.
pub(crate) struct Nats;

impl Backend for Nats {
    type Link = NatsLink;

    async fn connect(&self, ctx: Arc<Ctx>) -> Result<(NatsLink, Session), String> {
        let stats = ctx.stats.clone();
        let lost = Arc::new(AtomicBool::new(false));
        let trip = Trip::default();
        let servers = ctx.cfg.url.split(',').count();
        let opts = async_nats::ConnectOptions::new()
            .name(format!("mitto-bridge {}", ctx.cfg.name))
            // The bridge reconnects by itself; the client's own attempts end the old connection.
            .max_reconnects(servers)
            .event_callback({
                let (lost, trip) = (lost.clone(), trip.clone());
                move |ev| {
                    let (stats, lost, trip) = (stats.clone(), lost.clone(), trip.clone());
                    async move {
                        match ev {
                            async_nats::Event::Disconnected => {
                                lost.store(true, Ordering::Relaxed);
                                stats.set_state(State::Down);
                                trip.trip();
                            }
                            async_nats::Event::Connected => {}
                            other => stats.error(format!("nats: {other}")),
                        }
                    }
                }
            });
        let client = opts.connect(ctx.cfg.url.as_str()).await.map_err(err)?;
        let marks = Arc::new(Marks {
            subject: format!("{CONFIRM_PREFIX}{:016x}", rand::random::<u64>()).into(),
            batches: AtomicU64::new(0),
            marked: AtomicU64::new(0),
            unmarked: AtomicUsize::new(0),
            at_once: (ctx.cfg.window as usize / 4).max(1),
            wake: Notify::new(),
            back: watch::Sender::new(0),
        });
        // Markers come back on a task of their own, so that confirms go on while the way in
        // waits for mitto.
        let mut returned = client.subscribe(marks.subject.clone()).await.map_err(err)?;
        let marker_task = AbortOnDrop(tokio::spawn({
            let marks = marks.clone();
            async move {
                while let Some(m) = returned.next().await {
                    marks.returned(&m.payload);
                }
            }
        }));
        // A small batch waits a little for its marker (MARK_AFTER).
        let mark_task = AbortOnDrop(tokio::spawn({
            let (marks, client) = (marks.clone(), client.clone());
            async move {
                loop {
                    marks.wake.notified().await;
                    tokio::time::sleep(MARK_AFTER).await;
                    if marks.mark(&client).await.is_err() {
                        return;
                    }
                }
            }
        }));
        let mut subs = Vec::new();
        for r in &ctx.inbound {
            subs.push(client.subscribe(r.remote_filter()).await.map_err(err)?);
        }
        let js = ctx
            .cfg
            .jetstream
            .then(|| async_nats::jetstream::new(client.clone()));
        let link = NatsLink {
            client: client.clone(),
            js,
            marks,
            trip: trip.clone(),
        };
        let session = async move {
            let _client = client;
            let _markers = (marker_task, mark_task);
            let mut subs = select_all(subs);
            loop {
                let m = tokio::select! {
                    _ = trip.tripped() => return if lost.load(Ordering::Relaxed) {
                        "disconnected".to_owned()
                    } else {
                        "a publish failed".to_owned()
                    },
                    m = subs.next(), if !subs.is_empty() => m,
                };
                let Some(m) = m else {
                    return "the subscriptions ended".to_owned();
                };
                if m.subject.starts_with(CONFIRM_PREFIX) {
                    // A bridge's confirm marker, not a message.
                    continue;
                }
                if deliver(&ctx, envelope(&m)).await == Fate::Refused {
                    // Core NATS cannot take it back.
                    bump(&ctx.stats.drops);
                }
            }
        };
        Ok((link, session.boxed()))
    }
}
