//! Messaging through a broker, on the same [`Client`]: publish, subscribe, queue groups,
//! request/reply, flush and drain. Subscriptions are flow-controlled with credit, so a slow
//! subscriber makes the broker queue (under the subscription's slow-consumer policy) instead of
//! this process buffering without bound; they are made again after a reconnect.
//!
//! This file: subscriptions, and making them again after a reconnect.

use super::cmd::{CallCmd, Slot};
use super::message::{Message, DEFAULT_SUBSCRIPTION_CREDIT};
use super::{Client, Cmd, Conn, Shared, State};
use crate::error::{Error, Result};
use crate::local::LocalQueue;
use futures_core::Stream;
use mitto_proto::{Flags, Frame, Subject, SubscribeOptions};
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// What a subscription needs to be made again on a new connection.
pub(crate) struct SubRecord {
    filter: Subject,
    opts: SubscribeOptions,
    tx: crate::client::inbox::InboxTx,
    /// Where a reconnect to an in-process server leaves the subscription's new queue.
    reattach: Arc<Reattach>,
}

/// A subscription's queue at an in-process server, handed over after a reconnect made the
/// subscription there again (its old queue ended with the old connection).
#[derive(Default)]
pub(crate) struct Reattach(std::sync::Mutex<Option<Arc<dyn LocalQueue>>>);

impl Reattach {
    fn put(&self, q: Arc<dyn LocalQueue>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(q);
        }
    }

    fn take(&self) -> Option<Arc<dyn LocalQueue>> {
        self.0.lock().ok()?.take()
    }
}

pub(super) fn current_ctl(shared: &Shared) -> Option<mpsc::UnboundedSender<Cmd>> {
    match &*shared.state.borrow() {
        State::Up(c) => Some(c.ctl.clone()),
        _ => None,
    }
}

/// Re-subscribes every live subscription on a fresh connection; after a resumed session the
/// server still has them, and only the local ends are attached again.
pub(crate) fn resubscribe(shared: &Shared, conn: &Conn, resumed: bool) {
    let ctl = &conn.ctl;
    let Ok(subs) = shared.subs.lock() else { return };
    // An in-process server's queues are read directly: once the server has made each
    // subscription again, its new queue is handed to the subscriber.
    let mut attach = Vec::new();
    for (&sid, rec) in subs.iter() {
        if resumed {
            let _ = ctl.send(Cmd::Subscribe {
                sid,
                tx: rec.tx.clone(),
            });
            continue;
        }
        let mut opts = rec.opts.clone();
        // Credit for what the local queue can still take.
        opts.credit = u32::try_from(rec.tx.capacity()).unwrap_or(u32::MAX).max(1);
        match Frame::subscribe(sid, rec.filter.clone(), &opts) {
            Ok(f) => {
                let _ = ctl.send(Cmd::Subscribe {
                    sid,
                    tx: rec.tx.clone(),
                });
                if conn.port.is_none() {
                    let _ = ctl.send(Cmd::Send(f));
                    continue;
                }
                // One SUBSCRIBE per sid on a fresh connection: the sid makes the id unique.
                let id = super::ids::resubscribe_id(sid);
                let (done, answer) = oneshot::channel();
                let mut f = f.with_id(id);
                f.flags.insert(Flags::ACK_REQUIRED);
                let _ = ctl.send(Cmd::call(CallCmd {
                    id,
                    frame: f,
                    slot: Slot::Unary(done),
                    deadline: None,
                }));
                attach.push((sid, answer, rec.reattach.clone(), rec.tx.clone()));
            }
            Err(e) => tracing::warn!(sid, error = %e, "cannot re-subscribe"),
        }
    }
    let Some(port) = conn.port.clone() else {
        return;
    };
    if attach.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for (sid, answer, reattach, tx) in attach {
            match answer.await {
                Ok(Ok(_)) => {
                    if let Some(q) = port.subscription(sid) {
                        reattach.put(q);
                        tx.wake();
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(sid, error = %e, "the server refused a re-subscription")
                }
                Err(_) => {}
            }
        }
    });
}

pub(super) const NO_LIMIT: u32 = u32::MAX;

/// Messages an in-process subscriber takes from its queue at once.
pub(super) const LOCAL_BATCH: usize = 64;

/// A live subscription: a [`Stream`] of [`Message`]s. Dropping it unsubscribes.
///
/// [`Stream`]: https://docs.rs/futures-core/0.3/futures_core/stream/trait.Stream.html
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> mitto::Result<()> {
/// # let cfg = mitto_broker::BrokerConfig {
/// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
/// # };
/// # let _broker = mitto_broker::Broker::start(cfg).await?;
/// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
/// use futures_util::StreamExt;
///
/// let mut sub = client.subscribe("ticks").await?;
/// for n in 0..3 {
///     client.publish("ticks", n.to_string()).await?;
/// }
/// let first_two: Vec<_> = sub.by_ref().take(2).collect().await;
/// assert_eq!(first_two.len(), 2);
/// # Ok(()) }
/// ```
pub struct Subscription {
    sid: u32,
    rx: crate::client::inbox::InboxRx,
    shared: Arc<Shared>,
    credit: u32,
    consumed: u32,
    closed: bool,
    /// The broker's queue of this subscription, read directly when the broker is in-process.
    local: Option<Arc<dyn LocalQueue>>,
    /// The in-process queue ended: the subscription is waiting for a new one (see
    /// [`Reattach`]) or for its end (its record dropped, which ends `rx`).
    detached: bool,
    reattach: Arc<Reattach>,
    batch: VecDeque<Frame>,
    /// Messages still to yield after [`Subscription::unsubscribe_after`]; `u32::MAX`: no limit.
    remaining: std::sync::atomic::AtomicU32,
    /// The limit was reached: the stream has ended.
    finished: bool,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("sid", &self.sid)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next message; `None` once unsubscribed (or the client closed).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let mut sub = client.subscribe("ticks").await?;
    /// client.publish("ticks", "1").await?;
    /// while let Some(m) = sub.next().await {
    ///     println!("{}: {:?}", m.subject(), m.payload());
    /// #   break;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The subscription id on the wire.
    pub fn sid(&self) -> u32 {
        self.sid
    }

    fn send(&self, f: Frame) {
        if let Some(ctl) = current_ctl(&self.shared) {
            let _ = ctl.send(Cmd::Send(f));
        }
    }

    /// Acknowledges a message of an at-least-once subscription.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// use mitto::{Delivery, SubscribeOptions};
    ///
    /// let opts = SubscribeOptions { delivery: Delivery::AtLeastOnce, ..Default::default() };
    /// let mut sub = client.subscribe_with("payments", opts).await?;
    /// client.publish("payments", "42").await?;
    /// let m = sub.next().await.unwrap();
    /// // ... handle it, then:
    /// sub.ack(&m);
    /// # Ok(()) }
    /// ```
    pub fn ack(&self, m: &Message) {
        if m.needs_ack() {
            self.send(Frame::ack(m.delivery, m.sid));
        }
    }

    /// Acknowledges, at once, the messages of `msgs` that this (at-least-once) subscription
    /// delivered; the others are left for their own subscriptions' `ack_all`. With the broker
    /// in this process they are handed to the subscription's queue in one step instead of one
    /// ACK frame each; otherwise each goes as [`Subscription::ack`] sends it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// use mitto::{Delivery, SubscribeOptions};
    ///
    /// let opts = SubscribeOptions { delivery: Delivery::AtLeastOnce, ..Default::default() };
    /// let mut sub = client.subscribe_with("payments", opts).await?;
    /// client.publish("payments", "41").await?;
    /// client.publish("payments", "42").await?;
    /// let batch = vec![sub.next().await.unwrap(), sub.next().await.unwrap()];
    /// // ... hand them on, then:
    /// sub.ack_all(&batch);
    /// # Ok(()) }
    /// ```
    pub fn ack_all<'a>(&self, msgs: impl IntoIterator<Item = &'a Message>) {
        let mine = msgs
            .into_iter()
            .filter(|m| m.sid == self.sid && m.needs_ack());
        match &self.local {
            Some(q) => {
                let ids: Vec<u64> = mine.map(|m| m.delivery).collect();
                if !ids.is_empty() {
                    q.ack(&ids);
                }
            }
            None => {
                for m in mine {
                    self.send(Frame::ack(m.delivery, m.sid));
                }
            }
        }
    }

    /// Asks the broker to deliver a message again, after `delay` if given.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// use mitto::{Delivery, SubscribeOptions};
    ///
    /// let opts = SubscribeOptions { delivery: Delivery::AtLeastOnce, ..Default::default() };
    /// let mut sub = client.subscribe_with("payments", opts).await?;
    /// client.publish("payments", "42").await?;
    /// let m = sub.next().await.unwrap();
    /// sub.nack(&m, None); // not now: deliver it again
    /// let again = sub.next().await.unwrap();
    /// assert!(again.is_redelivered());
    /// sub.ack(&again);
    /// # Ok(()) }
    /// ```
    pub fn nack(&self, m: &Message, delay: Option<Duration>) {
        if m.needs_ack() {
            let ms = delay.map(|d| d.as_millis().min(u32::MAX.into()) as u32);
            self.send(Frame::nack(m.delivery, m.sid, ms));
        }
    }

    /// Ends the subscription after `n` more messages: the stream yields `n` more (if they
    /// come) and then `None`; the broker stops delivering after as many.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let mut sub = client.subscribe("ticks").await?;
    /// sub.unsubscribe_after(2);
    /// for n in 0..3 {
    ///     client.publish("ticks", n.to_string()).await?;
    /// }
    /// assert!(sub.next().await.is_some());
    /// assert!(sub.next().await.is_some());
    /// assert!(sub.next().await.is_none());
    /// # Ok(()) }
    /// ```
    pub fn unsubscribe_after(&self, n: u32) {
        if n == 0 {
            self.remaining.store(0, Ordering::Relaxed);
            self.send(Frame::unsubscribe(self.sid, None));
            return;
        }
        self.remaining.store(n.min(NO_LIMIT - 1), Ordering::Relaxed);
        self.send(Frame::unsubscribe(self.sid, Some(n)));
    }

    /// Counts a yielded message against [`Subscription::unsubscribe_after`]'s limit; ends the
    /// subscription here when it is reached.
    fn count_yield(&mut self) {
        let left = self.remaining.load(Ordering::Relaxed);
        if left == NO_LIMIT {
            return;
        }
        let left = left.saturating_sub(1);
        self.remaining.store(left, Ordering::Relaxed);
        if left == 0 {
            self.finished = true;
            // The broker ends it on its own count; only the local ends are dropped.
            self.closed = true;
            if let Ok(mut subs) = self.shared.subs.lock() {
                subs.remove(&self.sid);
            }
            if let Some(ctl) = current_ctl(&self.shared) {
                let _ = ctl.send(Cmd::DropSub(self.sid));
            }
        }
    }

    /// Ends the subscription now. Messages already received stay readable.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let mut sub = client.subscribe("ticks").await?;
    /// sub.unsubscribe(); // dropping it does the same
    /// assert!(sub.next().await.is_none());
    /// # Ok(()) }
    /// ```
    pub fn unsubscribe(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        if let Ok(mut subs) = self.shared.subs.lock() {
            subs.remove(&self.sid);
        }
        if let Some(ctl) = current_ctl(&self.shared) {
            let _ = ctl.send(Cmd::DropSub(self.sid));
            let _ = ctl.send(Cmd::Send(Frame::unsubscribe(self.sid, None)));
        }
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        if self.finished || self.remaining.load(Ordering::Relaxed) == 0 {
            return Poll::Ready(None);
        }
        // Each message spends the task's cooperative budget, as a tokio channel's receive does:
        // a subscriber reading a long backlog yields now and then instead of holding its worker.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let this = &mut *self;
        loop {
            while let Some(q) = &this.local {
                if let Some(f) = this.batch.pop_front() {
                    coop.made_progress();
                    this.count_yield();
                    return Poll::Ready(Some(Message::from_event(f)));
                }
                match q.poll_batch(cx, &mut this.batch, LOCAL_BATCH) {
                    Poll::Ready(true) => {}
                    Poll::Ready(false) if this.closed => return Poll::Ready(None),
                    Poll::Ready(false) => {
                        // The server ended it, or the connection went away: wait on the inbox,
                        // which ends with the subscription's record and is woken when a
                        // reconnect hands over a new queue.
                        this.local = None;
                        this.detached = true;
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            // Only a subscription whose in-process queue ended looks for a new one.
            match this.detached.then(|| this.reattach.take()).flatten() {
                Some(q) => {
                    this.local = Some(q);
                    this.detached = false;
                }
                None => break,
            }
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(m)) => {
                coop.made_progress();
                self.consumed += 1;
                if self.consumed >= (self.credit / 2).max(1) {
                    let n = std::mem::take(&mut self.consumed);
                    self.send(Frame::credit_subscription(self.sid, n));
                }
                self.count_yield();
                Poll::Ready(Some(m))
            }
            other => other,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}

impl Client {
    /// Subscribes to `filter` (`*` matches one token, `>` the rest).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// // `*`: one token; `>`: one or more at the end.
    /// let mut sub = client.subscribe("orders.*").await?;
    /// client.publish("orders.eu.created", "not this one").await?;
    /// client.publish("orders.paid", "#1").await?;
    /// let m = sub.next().await.unwrap();
    /// assert_eq!(m.subject(), "orders.paid");
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, filter: &str) -> Result<Subscription> {
        self.subscribe_with(filter, SubscribeOptions::default())
            .await
    }

    /// Subscribes as a member of queue group `group`: each message goes to one member.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let mut a = client.queue_subscribe("jobs", "workers").await?;
    /// let mut b = client.queue_subscribe("jobs", "workers").await?;
    /// client.publish("jobs", "job 1").await?;
    /// // One of the two gets it.
    /// let job = tokio::select! { Some(m) = a.next() => m, Some(m) = b.next() => m };
    /// assert_eq!(job.payload(), "job 1");
    /// # Ok(()) }
    /// ```
    pub async fn queue_subscribe(&self, filter: &str, group: &str) -> Result<Subscription> {
        let opts = SubscribeOptions {
            queue: Some(group.to_owned()),
            ..SubscribeOptions::default()
        };
        self.subscribe_with(filter, opts).await
    }

    /// Subscribes with options: delivery (at-least-once), slow-consumer policy, max pending,
    /// credit (default [`DEFAULT_SUBSCRIPTION_CREDIT`]), queue group. Returns once the broker
    /// confirmed the subscription, or its refusal (INVALID_SUBJECT, FORBIDDEN, QUOTA_EXCEEDED).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// use mitto::{Delivery, SubscribeOptions};
    ///
    /// let opts = SubscribeOptions {
    ///     delivery: Delivery::AtLeastOnce, // redelivered until acknowledged
    ///     ..Default::default()
    /// };
    /// let mut sub = client.subscribe_with("payments", opts).await?;
    /// client.publish("payments", "42").await?;
    /// let m = sub.next().await.unwrap();
    /// sub.ack(&m);
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with(
        &self,
        filter: &str,
        mut opts: SubscribeOptions,
    ) -> Result<Subscription> {
        let deadline = Instant::now() + self.opts().timeout;
        let conn = self.conn(deadline).await?;
        let shared = &self.inner.shared;
        let sid = shared.next_sid.fetch_add(1, Ordering::Relaxed);
        if opts.credit == 0 {
            opts.credit = DEFAULT_SUBSCRIPTION_CREDIT;
        }
        let filter = Subject::new(filter)?;
        let (tx, rx) = crate::client::inbox::inbox(opts.credit as usize);
        let reattach = Arc::new(Reattach::default());
        let id = self.next_id();
        let mut frame = Frame::subscribe(sid, filter.clone(), &opts)?.with_id(id);
        frame.flags.insert(Flags::ACK_REQUIRED);
        let closed = |_| Error::connection_lost("connection closed");
        conn.cmds
            .send(Cmd::Subscribe {
                sid,
                tx: tx.clone(),
            })
            .await
            .map_err(closed)?;
        if let Ok(mut subs) = shared.subs.lock() {
            subs.insert(
                sid,
                SubRecord {
                    filter,
                    opts: opts.clone(),
                    tx,
                    reattach: reattach.clone(),
                },
            );
        }
        let (done_tx, done_rx) = oneshot::channel();
        let mut sub = Subscription {
            sid,
            rx,
            shared: shared.clone(),
            credit: opts.credit,
            consumed: 0,
            closed: false,
            local: None,
            detached: false,
            reattach,
            batch: VecDeque::new(),
            remaining: std::sync::atomic::AtomicU32::new(NO_LIMIT),
            finished: false,
        };
        conn.cmds
            .send(Cmd::call(CallCmd {
                id,
                frame,
                slot: Slot::Unary(done_tx),
                deadline: None,
            }))
            .await
            .map_err(closed)?;
        match tokio::time::timeout_at(deadline, done_rx).await {
            Ok(Ok(Ok(_))) => {
                sub.local = conn.port.as_ref().and_then(|p| p.subscription(sid));
                Ok(sub)
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::connection_lost(
                "connection closed while subscribing",
            )),
            Err(_) => Err(Error::new(
                mitto_proto::Status::TIMEOUT,
                "no answer to SUBSCRIBE",
            )),
        }
    }
}
