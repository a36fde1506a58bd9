//! NATS through `async-nats`: out confirmed by a round trip (core NATS: the server processed
//! the message) or a JetStream ack (stored), in from core subscriptions.
//!
//! Core NATS has no acknowledgement on the way in: a message mitto refuses is counted as a drop.
//! A lost connection ends the link at once (its unconfirmed messages go back to the buffer) and
//! the bridge reconnects with its own backoff, so the buffer bound and the drop count hold for
//! NATS as for the other backends.

use crate::envelope::Envelope;
use crate::inbound::{deliver, Fate};
use crate::link::{Backend, Confirm, Ctx, Link, Session, Trip};
use crate::stats::{bump, State};
use async_nats::client::RequestErrorKind;
use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use futures_util::future::{BoxFuture, Shared};
use futures_util::stream::select_all;
use futures_util::{FutureExt, StreamExt};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

type RoundTrip = Shared<BoxFuture<'static, Result<(), String>>>;

/// Confirms core NATS publishes. `flush` only writes to the socket; a request on a subject
/// nobody serves is answered (no responders) only after the server processed every publish
/// sent before it on the connection. One round trip covers every message sent before it.
struct RoundTrips {
    client: async_nats::Client,
    subject: String,
    sent: AtomicU64,
    current: Mutex<Option<(u64, RoundTrip)>>,
}

impl RoundTrips {
    /// The confirm of the `n`th message sent.
    fn confirm(self: &Arc<Self>, n: u64) -> BoxFuture<'static, Result<(), String>> {
        let me = self.clone();
        async move {
            let rt = {
                let mut cur = me.current.lock().map_err(err)?;
                match &*cur {
                    Some((covers, rt)) if *covers >= n => rt.clone(),
                    _ => {
                        let covers = me.sent.load(Ordering::Acquire);
                        let (c, s) = (me.client.clone(), me.subject.clone());
                        let rt = async move {
                            match c.request(s, bytes::Bytes::new()).await {
                                Ok(_) => Ok(()),
                                Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
                                Err(e) => Err(err(e)),
                            }
                        }
                        .boxed()
                        .shared();
                        *cur = Some((covers, rt.clone()));
                        rt
                    }
                }
            };
            rt.await
        }
        .boxed()
    }
}

#[derive(Clone)]
pub(crate) struct NatsLink {
    client: async_nats::Client,
    js: Option<async_nats::jetstream::Context>,
    round_trips: Arc<RoundTrips>,
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
    async fn send(&self, env: Envelope) -> Result<Confirm, String> {
        let h = headers(&env);
        match &self.js {
            Some(js) => {
                let ack = js
                    .publish_with_headers(env.name, h, env.payload)
                    .await
                    .map_err(err)?;
                Ok(self.until_lost(async move { ack.await.map(|_| ()).map_err(err) }.boxed()))
            }
            None => {
                self.client
                    .publish_with_headers(env.name, h, env.payload)
                    .await
                    .map_err(err)?;
                let n = self.round_trips.sent.fetch_add(1, Ordering::AcqRel) + 1;
                Ok(self.until_lost(self.round_trips.confirm(n)))
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
        let mut subs = Vec::new();
        for r in &ctx.inbound {
            subs.push(client.subscribe(r.remote_filter()).await.map_err(err)?);
        }
        let js = ctx
            .cfg
            .jetstream
            .then(|| async_nats::jetstream::new(client.clone()));
        let round_trips = Arc::new(RoundTrips {
            client: client.clone(),
            subject: format!("_MITTO.confirm.{:016x}", rand::random::<u64>()),
            sent: AtomicU64::new(0),
            current: Mutex::new(None),
        });
        let link = NatsLink {
            client: client.clone(),
            js,
            round_trips,
            trip: trip.clone(),
        };
        let session = async move {
            let _client = client;
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
                if deliver(&ctx, envelope(&m)).await == Fate::Refused {
                    // Core NATS cannot take it back.
                    bump(&ctx.stats.drops);
                }
            }
        };
        Ok((link, session.boxed()))
    }
}
