//! The way out: messages from mitto's at-least-once subscriptions to the backend, each ACKed to
//! the broker only once the backend confirmed it, held in a bounded buffer while the backend is
//! down.
//!
//! Messages go out in batches: whatever is buffered when the link has room is handed to the
//! backend at once, and one confirm settles the whole batch (a NATS round trip after it, every
//! AMQP confirm or MQTT PUBACK of it). Confirms settle in the order the batches were sent; a
//! failed one puts its batch and every later one back at the head of the buffer, in order,
//! nothing of them ACKed, to be sent again on the next link.

use crate::envelope::{Envelope, ORIGIN_HEADER};
use crate::link::{Ctx, Link};
use crate::stats::{add, bump};
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, SelectAll};
use futures_util::{FutureExt, StreamExt};
use mitto::{Message, Subscription};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Messages taken from the subscriptions in one turn before they are sent: keeps a turn short
/// when the broker has a long backlog for the bridge.
const TAKE_PER_TURN: usize = 4096;

/// A message held for the backend.
struct Held {
    msg: Message,
    env: Envelope,
}

/// Messages sent together and settled by one confirm.
#[derive(Default)]
struct Batch {
    msgs: Vec<Message>,
    envs: Vec<Envelope>,
}

impl Batch {
    fn len(&self) -> usize {
        self.msgs.len()
    }
}

/// Where a confirm settles.
type Settle = BoxFuture<'static, Result<(), String>>;

/// The state of the way out, apart from the link.
pub(crate) struct Out {
    ctx: Arc<Ctx>,
    subs: SelectAll<Subscription>,
    /// Buffered, not sent yet, oldest first.
    buf: VecDeque<Held>,
    /// Sent and not yet confirmed, in the order sent; `confirms` holds their confirms in the
    /// same order.
    inflight: VecDeque<Batch>,
    confirms: FuturesOrdered<Settle>,
    inflight_msgs: usize,
    held_bytes: usize,
}

impl Out {
    pub(crate) fn new(ctx: Arc<Ctx>, subs: Vec<Subscription>) -> Out {
        Out {
            ctx,
            subs: futures_util::stream::select_all(subs),
            buf: VecDeque::new(),
            inflight: VecDeque::new(),
            confirms: FuturesOrdered::new(),
            inflight_msgs: 0,
            held_bytes: 0,
        }
    }

    /// ACKs `msgs` to the broker (confirmed, skipped or given up), each subscription its own
    /// at once.
    fn ack(&self, msgs: &[Message]) {
        for s in self.subs.iter() {
            s.ack_all(msgs);
        }
    }

    fn held(&self) -> usize {
        self.buf.len() + self.inflight_msgs
    }

    /// Whether the buffer can take more.
    fn room(&self) -> bool {
        self.held() < self.ctx.cfg.buffer_msgs as usize
            && (self.held_bytes as u64) < self.ctx.cfg.buffer_bytes
    }

    fn gauges(&self) {
        let s = &self.ctx.stats;
        s.buffered_msgs.store(self.held() as u64, Ordering::Relaxed);
        s.buffered_bytes
            .store(self.held_bytes as u64, Ordering::Relaxed);
    }

    /// Takes a message from mitto: skipped when it came from this bridge or cannot be named on
    /// the backend, else buffered (the oldest buffered one given up past the bound).
    pub(crate) fn admit(&mut self, m: Message) {
        let ctx = &self.ctx;
        if m.headers().get_custom(ORIGIN_HEADER) == Some(ctx.origin.as_bytes()) {
            bump(&ctx.stats.loops_prevented);
            self.ack(std::slice::from_ref(&m));
            return;
        }
        let found = ctx.outbound.iter().find_map(|(r, mark)| {
            r.to_remote(m.subject())
                .transpose()
                .map(|n| n.map(|n| (n, *mark)))
        });
        let (name, mark) = match found {
            Some(Ok(n)) => n,
            other => {
                bump(&ctx.stats.unmappable);
                if let Some(Err(e)) = other {
                    tracing::debug!(bridge = %ctx.cfg.name, error = %e, "not sent");
                }
                self.ack(std::slice::from_ref(&m));
                return;
            }
        };
        let mut env = Envelope::from_mitto(name, m.payload().clone(), m.headers());
        if mark {
            env.set_origin(&ctx.origin);
        } else {
            // Nothing of this bridge takes the name back in: no mark needed, and none of
            // another bridge's passed on.
            env.clear_origin();
        }
        self.held_bytes += env.payload.len();
        self.buf.push_back(Held { msg: m, env });
        let mut given_up = Vec::new();
        while self.held() > self.ctx.cfg.buffer_msgs as usize
            || self.held_bytes as u64 > self.ctx.cfg.buffer_bytes
        {
            let Some(old) = self.buf.pop_front() else {
                break;
            };
            self.held_bytes -= old.env.payload.len();
            bump(&self.ctx.stats.drops);
            given_up.push(old.msg);
        }
        // Given up: ACKed so that the broker does not deliver them again.
        if !given_up.is_empty() {
            self.ack(&given_up);
        }
    }

    /// Admits what the subscriptions have ready now, so that it goes in the same batch: while
    /// the buffer has room, or regardless when the backend is away (`overflow`).
    pub(crate) fn admit_ready(&mut self, overflow: bool) {
        for _ in 1..TAKE_PER_TURN {
            if !overflow && !self.room() {
                break;
            }
            match self.subs.next().now_or_never() {
                Some(Some(m)) => self.admit(m),
                _ => break,
            }
        }
    }

    /// Sends what is buffered on `link` while the window has room, one batch; false when the
    /// link turned out broken (the batch is back in the buffer).
    pub(crate) async fn send<L: Link>(&mut self, link: &L) -> bool {
        let window = self.ctx.cfg.window as usize;
        let n = window
            .saturating_sub(self.inflight_msgs)
            .min(self.buf.len());
        if n == 0 {
            return true;
        }
        let mut batch = Batch {
            msgs: Vec::with_capacity(n),
            envs: Vec::with_capacity(n),
        };
        for h in self.buf.drain(..n) {
            batch.msgs.push(h.msg);
            batch.envs.push(h.env);
        }
        match link.send(&batch.envs).await {
            Ok(confirm) => {
                let link = link.clone();
                let wait = Duration::from_millis(self.ctx.cfg.confirm_timeout_ms);
                self.confirms.push_back(
                    async move {
                        let r = match tokio::time::timeout(wait, confirm).await {
                            Ok(r) => r,
                            Err(_) => Err("no confirm in time".to_owned()),
                        };
                        if r.is_err() {
                            link.trip();
                        }
                        r
                    }
                    .boxed(),
                );
                self.inflight_msgs += batch.len();
                self.inflight.push_back(batch);
                true
            }
            Err(e) => {
                self.ctx.stats.error(format!("publish: {e}"));
                link.trip();
                self.inflight.push_back(batch);
                self.requeue();
                false
            }
        }
    }

    /// Settles the confirm of the oldest batch in flight; false when it failed (the link is
    /// broken, and everything in flight is back in the buffer).
    pub(crate) fn settled(&mut self, r: Result<(), String>) -> bool {
        match r {
            Ok(()) => {
                let Some(b) = self.inflight.pop_front() else {
                    return true;
                };
                self.inflight_msgs -= b.len();
                let bytes: usize = b.envs.iter().map(|e| e.payload.len()).sum();
                self.held_bytes -= bytes;
                add(&self.ctx.stats.msgs_out, b.len());
                add(&self.ctx.stats.bytes_out, bytes);
                self.ack(&b.msgs);
                true
            }
            Err(e) => {
                self.ctx.stats.error(format!("not confirmed: {e}"));
                self.requeue();
                false
            }
        }
    }

    /// Puts everything in flight back at the head of the buffer, in the order it was sent, and
    /// forgets its confirms: it is sent again on the next link (at least once).
    pub(crate) fn requeue(&mut self) {
        self.confirms = FuturesOrdered::new();
        self.inflight_msgs = 0;
        for b in self.inflight.drain(..).rev() {
            for (msg, env) in b.msgs.into_iter().zip(b.envs).rev() {
                self.buf.push_front(Held { msg, env });
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
    let mut out = Out::new(ctx.clone(), subs);
    let stop = ctx.stopped();
    tokio::pin!(stop);
    let mut link = links.borrow_and_update().clone();
    // The current link failed: nothing more is sent on it until the next one.
    let mut dead = false;
    loop {
        if let Some(l) = &link {
            if !dead && !out.send(l).await {
                dead = true;
            }
        }
        out.gauges();
        // While the backend is up, a full buffer pushes back on the subscription (the broker
        // queues); while it is down, the oldest messages are given up, counted.
        let overflow = link.is_none() || dead;
        let take = out.room() || overflow;
        tokio::select! {
            biased;
            _ = &mut stop => break,
            // Confirms first: a batch's confirm (a NATS round trip) is under way only once
            // polled.
            Some(r) = out.confirms.next(), if !out.confirms.is_empty() => {
                if !out.settled(r) {
                    dead = true;
                }
            }
            r = links.changed() => match r {
                Ok(()) => {
                    // What the old link did not confirm goes again on the next one.
                    out.requeue();
                    link = links.borrow_and_update().clone();
                    dead = false;
                }
                Err(_) => break,
            },
            m = out.subs.next(), if take => match m {
                Some(m) => {
                    out.admit(m);
                    out.admit_ready(overflow);
                }
                None => break,
            },
        }
    }
    out.gauges();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::config::{BridgeConfig, Direction, Kind};
    use crate::link::Confirm;
    use crate::stats::Stats;
    use mitto::{Delivery, SubscribeOptions};
    use mitto_broker::{Broker, BrokerConfig};
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    /// A batch sent: its names, and the way to settle it.
    type Sent = (Vec<String>, oneshot::Sender<Result<(), String>>);

    /// A backend whose confirms the test gives: it records each batch (its names) and hands
    /// the test the way to settle it.
    #[derive(Clone, Default)]
    struct Scripted {
        sent: Arc<Mutex<Vec<Sent>>>,
        tripped: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Scripted {
        fn take(&self) -> Vec<Sent> {
            std::mem::take(&mut *self.sent.lock().unwrap())
        }
    }

    impl Link for Scripted {
        async fn send(&self, batch: &[Envelope]) -> Result<Confirm, String> {
            let (tx, rx) = oneshot::channel();
            let names = batch.iter().map(|e| e.name.clone()).collect();
            self.sent.lock().unwrap().push((names, tx));
            Ok(async move { rx.await.unwrap_or_else(|_| Err("dropped".into())) }.boxed())
        }
        fn trip(&self) {
            self.tripped.store(true, Ordering::Relaxed);
        }
    }

    struct Setup {
        broker: Broker,
        app: mitto::Client,
        out: Out,
        _stop: watch::Sender<bool>,
    }

    /// A broker in this process, a bridge context whose subscription takes `t.>` at least
    /// once, and `n` messages published and admitted.
    async fn setup(window: u32, n: u32) -> Setup {
        let url = format!("inproc://outbound-test-{:016x}", rand::random::<u64>());
        let broker = Broker::start(BrokerConfig {
            listen: vec![url.clone()],
            monitor: String::new(),
            ..BrokerConfig::default()
        })
        .await
        .unwrap();
        let mut cfg = BridgeConfig::new("t", Kind::Nats, "nats://127.0.0.1:1").map(
            "t.>",
            None,
            Some(Direction::Out),
        );
        cfg.window = window;
        let mitto = mitto::Client::connect(&url, mitto::ClientOptions::new())
            .await
            .unwrap();
        let opts = SubscribeOptions {
            delivery: Delivery::AtLeastOnce,
            ack_wait_ms: 600_000,
            ..SubscribeOptions::default()
        };
        let sub = mitto.subscribe_with("t.>", opts).await.unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let outbound = cfg
            .mappings()
            .unwrap()
            .into_iter()
            .map(|m| (m.rule, false))
            .collect();
        let ctx = Arc::new(Ctx {
            origin: "t.0".into(),
            cfg,
            stats: Arc::new(Stats::default()),
            mitto,
            inbound: Vec::new(),
            outbound,
            stop: stop_rx,
        });
        let app = mitto::Client::connect(&url, mitto::ClientOptions::new())
            .await
            .unwrap();
        let mut out = Out::new(ctx, vec![sub]);
        for i in 0..n {
            app.publish(&format!("t.{i}"), "x").await.unwrap();
            let m = out.subs.next().await.unwrap();
            out.admit(m);
        }
        Setup {
            broker,
            app,
            out,
            _stop: stop,
        }
    }

    fn acks(b: &Broker) -> u64 {
        b.stats().get("acks").copied().unwrap_or(0)
    }

    fn buffered(out: &Out) -> Vec<String> {
        out.buf.iter().map(|h| h.env.name.clone()).collect()
    }

    fn names(r: std::ops::Range<u32>) -> Vec<String> {
        r.map(|i| format!("t.{i}")).collect()
    }

    /// Lets the broker take what the client sent (ACKs travel as frames).
    async fn settle_broker(b: &Broker, want: u64) {
        for _ in 0..200 {
            if acks(b) >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test]
    async fn a_failed_confirm_puts_its_batch_and_the_later_ones_back_in_order_unacked() {
        let mut s = setup(8, 3).await;
        let link = Scripted::default();
        assert!(s.out.send(&link).await);
        for i in 3..5 {
            s.app.publish(&format!("t.{i}"), "x").await.unwrap();
            let m = s.out.subs.next().await.unwrap();
            s.out.admit(m);
        }
        assert!(s.out.send(&link).await);
        let mut sent = link.take();
        assert_eq!(sent.len(), 2, "two batches");
        assert_eq!(sent[0].0, names(0..3));
        assert_eq!(sent[1].0, names(3..5));
        // The second batch's confirm comes first: it waits for the first's.
        sent.pop().unwrap().1.send(Ok(())).unwrap();
        let first = tokio::time::timeout(Duration::from_millis(100), s.out.confirms.next()).await;
        assert!(first.is_err(), "settled out of order");
        sent.pop().unwrap().1.send(Err("nack".into())).unwrap();
        let r = s.out.confirms.next().await.unwrap();
        assert!(!s.out.settled(r));
        assert!(link.tripped.load(Ordering::Relaxed));
        // Both batches are back, in the order sent, and nothing was ACKed.
        assert_eq!(buffered(&s.out), names(0..5));
        assert_eq!(s.out.inflight_msgs, 0);
        assert!(s.out.confirms.is_empty());
        settle_broker(&s.broker, 1).await;
        assert_eq!(acks(&s.broker), 0);
        assert_eq!(s.out.ctx.stats.msgs_out.load(Ordering::Relaxed), 0);

        // On the next link they go again, and are ACKed once confirmed.
        let next = Scripted::default();
        assert!(s.out.send(&next).await);
        let mut sent = next.take();
        assert_eq!(sent[0].0, names(0..5));
        settle_broker(&s.broker, 1).await;
        assert_eq!(acks(&s.broker), 0, "nothing ACKed before its confirm");
        sent.pop().unwrap().1.send(Ok(())).unwrap();
        let r = s.out.confirms.next().await.unwrap();
        assert!(s.out.settled(r));
        settle_broker(&s.broker, 5).await;
        assert_eq!(acks(&s.broker), 5);
        assert_eq!(s.out.ctx.stats.msgs_out.load(Ordering::Relaxed), 5);
        assert_eq!(s.out.held(), 0);
        assert_eq!(s.out.held_bytes, 0);
    }

    #[tokio::test]
    async fn a_batch_confirmed_before_a_failed_one_stays_acked_and_the_window_bounds_batches() {
        let mut s = setup(2, 5).await;
        let link = Scripted::default();
        assert!(s.out.send(&link).await);
        // The window (2) is full: nothing more goes until a confirm.
        assert!(s.out.send(&link).await);
        let mut sent = link.take();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, names(0..2));
        sent.pop().unwrap().1.send(Ok(())).unwrap();
        let r = s.out.confirms.next().await.unwrap();
        assert!(s.out.settled(r));
        assert!(s.out.send(&link).await);
        let mut sent = link.take();
        assert_eq!(sent[0].0, names(2..4));
        sent.pop().unwrap().1.send(Err("lost".into())).unwrap();
        let r = s.out.confirms.next().await.unwrap();
        assert!(!s.out.settled(r));
        assert_eq!(buffered(&s.out), names(2..5));
        settle_broker(&s.broker, 2).await;
        assert_eq!(acks(&s.broker), 2);
    }

    #[tokio::test]
    async fn a_link_lost_with_batches_in_flight_gives_them_back() {
        let mut s = setup(16, 4).await;
        let link = Scripted::default();
        assert!(s.out.send(&link).await);
        assert_eq!(s.out.held(), 4);
        s.out.requeue();
        assert_eq!(buffered(&s.out), names(0..4));
        assert_eq!(s.out.held(), 4);
        // A confirm of the old link that comes late settles nothing.
        let (_, tx) = link.take().pop().unwrap();
        assert!(tx.send(Ok(())).is_err(), "its confirm is forgotten");
        settle_broker(&s.broker, 1).await;
        assert_eq!(acks(&s.broker), 0);
    }
}
