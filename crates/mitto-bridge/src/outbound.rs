//! The way out: messages from mitto's at-least-once subscriptions to the backend, each ACKed to
//! the broker only once the backend confirmed it, held in a bounded buffer while the backend is
//! down.

use crate::envelope::{Envelope, ORIGIN_HEADER};
use crate::link::{Ctx, Link};
use crate::stats::{add, bump};
use futures_util::future::BoxFuture;
use futures_util::stream::{select_all, FuturesUnordered, SelectAll};
use futures_util::{FutureExt, StreamExt};
use mitto::{Message, Subscription};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A message held for the backend.
struct Held {
    msg: Message,
    env: Envelope,
}

impl Held {
    fn len(&self) -> usize {
        self.env.payload.len()
    }
}

/// A message sent, with the generation of the link it went on, and its confirm.
type InFlight = BoxFuture<'static, (Held, u64, Result<(), String>)>;

struct Out {
    ctx: Arc<Ctx>,
    subs: SelectAll<Subscription>,
    buf: VecDeque<Held>,
    inflight: FuturesUnordered<InFlight>,
    held_bytes: usize,
    /// Counts links: a failed confirm marks broken only the link it was sent on.
    generation: u64,
}

impl Out {
    /// ACKs a message to the broker (confirmed, skipped or given up).
    fn ack(&self, m: &Message) {
        // Any subscription of the client ACKs by the message's own subscription id.
        if let Some(s) = self.subs.iter().next() {
            s.ack(m);
        }
    }

    fn held(&self) -> usize {
        self.buf.len() + self.inflight.len()
    }

    fn gauges(&self) {
        let s = &self.ctx.stats;
        s.buffered_msgs.store(self.held() as u64, Ordering::Relaxed);
        s.buffered_bytes
            .store(self.held_bytes as u64, Ordering::Relaxed);
    }

    /// Takes a message from mitto: skipped when it came from this bridge or cannot be named on
    /// the backend, else buffered (the oldest buffered one given up past the bound).
    fn admit(&mut self, m: Message) {
        let ctx = self.ctx.clone();
        if m.headers().get_custom(ORIGIN_HEADER) == Some(ctx.origin.as_bytes()) {
            bump(&ctx.stats.loops_prevented);
            self.ack(&m);
            return;
        }
        let name = match ctx
            .outbound
            .iter()
            .find_map(|r| r.to_remote(m.subject()).transpose())
        {
            Some(Ok(n)) => n,
            other => {
                bump(&ctx.stats.unmappable);
                if let Some(Err(e)) = other {
                    tracing::debug!(bridge = %ctx.cfg.name, error = %e, "not sent");
                }
                self.ack(&m);
                return;
            }
        };
        let mut env = Envelope::from_mitto(name, m.payload().clone(), m.headers());
        env.set_origin(&ctx.origin);
        let h = Held { msg: m, env };
        self.held_bytes += h.len();
        self.buf.push_back(h);
        while self.held() > ctx.cfg.buffer_msgs as usize
            || self.held_bytes as u64 > ctx.cfg.buffer_bytes
        {
            let Some(old) = self.buf.pop_front() else {
                break;
            };
            self.held_bytes -= old.len();
            bump(&ctx.stats.drops);
            // Given up: ACKed so that the broker does not deliver it again.
            self.ack(&old.msg);
        }
    }

    /// Sends buffered messages on `link` while the window has room; false when the link
    /// turned out broken.
    async fn send<L: Link>(&mut self, link: &L) -> bool {
        let window = self.ctx.cfg.window as usize;
        let wait = Duration::from_millis(self.ctx.cfg.confirm_timeout_ms);
        while self.inflight.len() < window {
            let Some(h) = self.buf.pop_front() else {
                return true;
            };
            match link.send(h.env.clone()).await {
                Ok(confirm) => {
                    let link = link.clone();
                    let generation = self.generation;
                    self.inflight.push(
                        async move {
                            let r = match tokio::time::timeout(wait, confirm).await {
                                Ok(r) => r,
                                Err(_) => Err("no confirm in time".to_owned()),
                            };
                            if r.is_err() {
                                link.trip();
                            }
                            (h, generation, r)
                        }
                        .boxed(),
                    );
                }
                Err(e) => {
                    self.buf.push_front(h);
                    self.ctx.stats.error(format!("publish: {e}"));
                    link.trip();
                    return false;
                }
            }
        }
        true
    }

    /// Settles a confirm; false when it failed (the link is broken).
    fn confirmed(&mut self, h: Held, r: Result<(), String>) -> bool {
        match r {
            Ok(()) => {
                self.held_bytes -= h.len();
                bump(&self.ctx.stats.msgs_out);
                add(&self.ctx.stats.bytes_out, h.len());
                self.ack(&h.msg);
                true
            }
            Err(e) => {
                self.ctx.stats.error(format!("not confirmed: {e}"));
                // Sent again on the next link: at least once.
                self.buf.push_front(h);
                false
            }
        }
    }
}

/// Runs the way out until the bridge stops.
pub(crate) async fn run<L: Link>(
    ctx: Arc<Ctx>,
    subs: Vec<Subscription>,
    mut links: watch::Receiver<Option<L>>,
) {
    let mut out = Out {
        ctx: ctx.clone(),
        subs: select_all(subs),
        buf: VecDeque::new(),
        inflight: FuturesUnordered::new(),
        held_bytes: 0,
        generation: 0,
    };
    // The current link failed: nothing more is sent on it until the next one.
    let mut dead = false;
    loop {
        let link = links.borrow().clone();
        if let Some(link) = &link {
            if !dead && !out.send(link).await {
                dead = true;
            }
        }
        out.gauges();
        let room = out.held() < ctx.cfg.buffer_msgs as usize
            && (out.held_bytes as u64) < ctx.cfg.buffer_bytes;
        // While the backend is up, a full buffer pushes back on the subscription (the broker
        // queues); while it is down, the oldest messages are given up, counted.
        let take = room || link.is_none() || dead;
        tokio::select! {
            _ = ctx.stopped() => break,
            m = out.subs.next(), if take => match m {
                Some(m) => out.admit(m),
                None => break,
            },
            Some((h, generation, r)) = out.inflight.next(), if !out.inflight.is_empty() => {
                if !out.confirmed(h, r) && generation == out.generation {
                    dead = true;
                }
            }
            r = links.changed() => match r {
                Ok(()) => {
                    dead = false;
                    out.generation += 1;
                }
                Err(_) => break,
            },
        }
    }
    out.gauges();
}
