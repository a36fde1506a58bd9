//! Messaging through a broker, on the same [`Client`]: publish, subscribe, queue groups,
//! request/reply, flush and drain. Subscriptions are flow-controlled with credit, so a slow
//! subscriber makes the broker queue (under the subscription's slow-consumer policy) instead of
//! this process buffering without bound; they are made again after a reconnect.

use crate::calls::MAX_BUFFERED_PAYLOAD;
use crate::client::{CallCmd, Client, Cmd, Conn, Shared, Slot, State};
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::local::{LocalPort, LocalQueue, Published};
use bytes::Bytes;
use futures_core::Stream;
use mitto_proto::local::Attachment;
use mitto_proto::{Flags, Frame, Headers, MsgKind, Subject, SubscribeOptions, WellKnown};
use serde::de::DeserializeOwned;
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub use mitto_proto::{Delivery, SlowConsumerPolicy as Policy};

/// Messages a subscription may have in flight to this client before it grants more credit.
pub const DEFAULT_SUBSCRIPTION_CREDIT: u32 = 65_536;

/// One message delivered to a subscription.
#[derive(Clone)]
pub struct Message {
    subject: Subject,
    headers: Headers,
    payload: Bytes,
    kind: MsgKind,
    flags: Flags,
    sid: u32,
    delivery: u64,
    /// The publisher's value, when it was published typed in this process (it keeps its
    /// encoded form once made, for [`Message::payload`]).
    value: Option<Attachment>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("subject", &self.subject.as_str())
            .field("payload_len", &self.payload.len())
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Message {
    pub(crate) fn from_event(f: Frame) -> Message {
        Message {
            subject: f.subject,
            headers: f.headers,
            payload: f.payload,
            kind: f.kind,
            flags: f.flags,
            sid: f.aux,
            delivery: f.id,
            value: f.value,
        }
    }
    /// The subject it was published to.
    pub fn subject(&self) -> &str {
        self.subject.as_str()
    }
    /// Its headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// Its payload. For a value published typed in this process, its encoding with the
    /// publisher's codec, made on first use and shared with every other receiver.
    pub fn payload(&self) -> &Bytes {
        static NONE: Bytes = Bytes::new();
        match &self.value {
            Some(v) if self.payload.is_empty() => v.0.encoded().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot encode a published value");
                &NONE
            }),
            _ => &self.payload,
        }
    }

    /// The value itself when the message was published typed in this process as a `T`
    /// (no decoding); `None` otherwise (decode [`Message::payload`] instead).
    pub fn value<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        crate::local::take_typed::<T>(self.value.as_ref(), || self.subject())
            .ok()
            .flatten()
    }

    /// The value as a `T`: the publisher's own value when it was published typed in this
    /// process, else the payload decoded with the codec its `content-type` names (or `codec`
    /// when it names none). A value of another type is an error naming both types.
    pub fn decode<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        codec: Codec,
    ) -> Result<Arc<T>> {
        if let Some(v) = crate::local::take_typed::<T>(self.value.as_ref(), || self.subject())? {
            return Ok(v);
        }
        let codec = match self.headers.content_type() {
            Some(ct) => Codec::from_content_type(Some(ct))?,
            None => codec,
        };
        codec
            .decode::<T>(self.payload())
            .map(Arc::new)
            .map_err(|e| {
                Error::new(
                    e.status(),
                    format!(
                        "{} does not carry a {}: {}",
                        self.subject(),
                        std::any::type_name::<T>(),
                        e.message()
                    ),
                )
            })
    }
    /// Its message kind.
    pub fn kind(&self) -> MsgKind {
        self.kind
    }
    /// Whether it was published URGENT.
    pub fn is_urgent(&self) -> bool {
        self.flags.contains(Flags::URGENT)
    }
    /// Whether the broker waits for an ACK of it (at-least-once subscriptions).
    pub fn needs_ack(&self) -> bool {
        self.flags.contains(Flags::ACK_REQUIRED)
    }
    /// Where a reply goes, for requests.
    pub fn reply_to(&self) -> Option<&str> {
        self.headers.reply_to()
    }
}

/// Options of one publish.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// Headers to send.
    pub headers: Option<Headers>,
    /// Message kind.
    pub kind: MsgKind,
    /// Overtakes normal messages in every queue.
    pub urgent: bool,
    /// Waits for the broker's ACK: the publish returns once the broker accepted the message, or
    /// fails with the broker's reason (BACKPRESSURE_REJECTION, FORBIDDEN, ...).
    pub ack: bool,
    /// How long to wait for the ACK (else the client's default timeout).
    pub timeout: Option<Duration>,
}

impl PublishOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the headers.
    pub fn headers(mut self, h: Headers) -> Self {
        self.headers = Some(h);
        self
    }
    /// Sets the kind.
    pub fn kind(mut self, k: MsgKind) -> Self {
        self.kind = k;
        self
    }
    /// Marks the message URGENT.
    pub fn urgent(mut self) -> Self {
        self.urgent = true;
        self
    }
    /// Asks for the broker's ACK.
    pub fn ack(mut self) -> Self {
        self.ack = true;
        self
    }
}

/// What a subscription needs to be made again on a new connection.
pub(crate) struct SubRecord {
    filter: Subject,
    opts: SubscribeOptions,
    tx: crate::inbox::InboxTx,
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

fn current_ctl(shared: &Shared) -> Option<mpsc::UnboundedSender<Cmd>> {
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
                let id = RESUBSCRIBE_IDS | u64::from(sid);
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

/// Ids of the SUBSCRIBE calls a reconnect makes (apart from the client's call ids).
const RESUBSCRIBE_IDS: u64 = 1 << 62;

const NO_LIMIT: u32 = u32::MAX;

/// Messages an in-process subscriber takes from its queue at once.
const LOCAL_BATCH: usize = 64;

/// A live subscription: a [`Stream`] of [`Message`]s. Dropping it unsubscribes.
pub struct Subscription {
    sid: u32,
    rx: crate::inbox::InboxRx,
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
    pub fn ack(&self, m: &Message) {
        if m.needs_ack() {
            self.send(Frame::ack(m.delivery, m.sid));
        }
    }

    /// Asks the broker to deliver a message again, after `delay` if given.
    pub fn nack(&self, m: &Message, delay: Option<Duration>) {
        if m.needs_ack() {
            let ms = delay.map(|d| d.as_millis().min(u32::MAX.into()) as u32);
            self.send(Frame::nack(m.delivery, m.sid, ms));
        }
    }

    /// Ends the subscription after `n` more messages: the stream yields `n` more (if they
    /// come) and then `None`; the broker stops delivering after as many.
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

/// Queues a fire-and-forget PUBLISH for the connection, waiting (boxed) only when its queue
/// is full.
fn queue_now(c: &Conn, f: Frame) -> Now<'static> {
    let lost = || Error::connection_lost("connection closed before the publish was sent");
    match c.cmds.try_send(Cmd::Send(f)) {
        Ok(()) => Now::Done(Ok(())),
        Err(mpsc::error::TrySendError::Full(cmd)) => {
            let cmds = c.cmds.clone();
            Now::Later(Box::pin(
                async move { cmds.send(cmd).await.map_err(|_| lost()) },
            ))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Now::Done(Err(lost())),
    }
}

/// Publishes `f` on connection `c` without waiting when it can: through an in-process
/// server's port, or into the connection's queue (a fire-and-forget publish of bytes within the
/// limit); otherwise gives the frame back.
// The frame comes back by value (128 bytes, moved, never cloned) for the caller's other path.
#[allow(clippy::result_large_err)]
fn publish_on(
    c: &Conn,
    f: Frame,
    ack: bool,
    timeout: Duration,
) -> std::result::Result<Now<'static>, Frame> {
    let max = c.agreed.limits.max_payload;
    if let Some(port) = &c.port {
        return Ok(publish_local(port, max, f, timeout));
    }
    if !ack && !c.cmds.is_closed() && f.value.is_none() && f.payload.len() <= max as usize {
        // A small publish on a socket is written straight for the driver, in order with calls
        // (see `crate::calls`); a large one, or one that finds the buffer full, takes the queue.
        let buffered = f.payload.len() <= MAX_BUFFERED_PAYLOAD
            && c.calls.as_ref().is_some_and(|t| t.publish(f.as_ref()));
        if buffered {
            return Ok(Now::Done(Ok(())));
        }
        return Ok(queue_now(c, f));
    }
    Err(f)
}

/// Routes a publish through an in-process server's port, in the caller's task; waits (boxed)
/// only for subscribers that block publishers, up to `timeout`.
fn publish_local(port: &Arc<dyn LocalPort>, max: u32, f: Frame, timeout: Duration) -> Now<'static> {
    if f.payload.len() > max as usize {
        return Now::Done(Err(too_large(f.payload.len(), max)));
    }
    match port.publish(f) {
        Ok(Published::Done) => Now::Done(Ok(())),
        Ok(Published::Blocked(wait)) => Now::Later(Box::pin(async move {
            match tokio::time::timeout(timeout, wait).await {
                Ok(r) => r,
                Err(_) => Err(Error::new(
                    mitto_proto::Status::BACKPRESSURE_REJECTION,
                    format!("the subscribers stayed full for {timeout:?}"),
                )
                .retryable()),
            }
        })),
        Err(e) => Now::Done(Err(e)),
    }
}

/// Which of a thread's last-subject caches [`cached_subject`] uses: the subject last published
/// to, or the method last called (kept apart so that a task doing both misses neither).
#[derive(Clone, Copy)]
pub(crate) enum SubjectUse {
    Publish,
    Method,
}

thread_local! {
    /// The last subject published to and the last method called on this thread.
    static LAST_SUBJECTS: std::cell::RefCell<[Option<Subject>; 2]> =
        const { std::cell::RefCell::new([None, None]) };
}

/// `subject` as a checked literal subject. The last one of each [`SubjectUse`] is kept per
/// thread, so that a caller repeating its subject (a publisher, a client calling one method)
/// neither validates nor allocates it again and takes no lock (a per-client cache behind a
/// mutex cost two locked instructions per message); subjects used often are interned (see
/// [`Subject::interned`]) so that copies of them cost no reference count.
pub(crate) fn cached_subject(slot: SubjectUse, subject: &str) -> Result<Subject> {
    let hit = LAST_SUBJECTS.try_with(|cache| {
        let mut cache = cache.try_borrow_mut().ok()?;
        let last = &mut cache[slot as usize];
        if let Some(s) = last {
            if s.as_bytes()[..] == *subject.as_bytes() {
                return Some(Ok(s.clone()));
            }
        }
        Some(
            Subject::interned(subject)
                .map_err(Error::from)
                .inspect(|s| *last = Some(s.clone())),
        )
    });
    match hit {
        Ok(Some(r)) => r,
        // The thread is ending, or the cache is in use further up this stack.
        _ => Ok(Subject::literal(subject)?),
    }
}

/// The future of [`Client::publish`]. Small (a few words, moved without `memcpy`), since a
/// publishing loop creates one per message.
#[must_use = "a publish happens when its future is first polled"]
pub struct Publish<'a> {
    client: &'a Client,
    state: PublishState<'a>,
}

enum PublishState<'a> {
    /// Not polled yet.
    Start(&'a str, Bytes),
    /// Published; spending the task's budget before the result.
    Budget(Option<Result<()>>),
    /// Waiting for room.
    Later(Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>),
    /// Finished.
    Done,
}

impl std::future::Future for Publish<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                PublishState::Start(..) => {
                    let PublishState::Start(subject, payload) =
                        std::mem::replace(&mut this.state, PublishState::Done)
                    else {
                        continue;
                    };
                    let c = this.client;
                    let f = match c.subject_of(subject) {
                        Ok(s) => Frame::publish(s, payload),
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    this.state = match c.publish_now(f, false, c.opts().timeout) {
                        Now::Done(r) if c.spends_budget() => PublishState::Budget(Some(r)),
                        Now::Done(r) => return Poll::Ready(r),
                        Now::Later(wait) => PublishState::Later(wait),
                    };
                }
                PublishState::Budget(r) => {
                    let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
                    coop.made_progress();
                    let r = r.take().unwrap_or(Ok(()));
                    this.state = PublishState::Done;
                    return Poll::Ready(r);
                }
                PublishState::Later(wait) => {
                    let r = std::task::ready!(wait.as_mut().poll(cx));
                    this.state = PublishState::Done;
                    return Poll::Ready(r);
                }
                PublishState::Done => {
                    return Poll::Ready(Err(Error::new(
                        mitto_proto::Status::INTERNAL,
                        "publish polled after it finished",
                    )))
                }
            }
        }
    }
}

impl fmt::Debug for Publish<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish").finish_non_exhaustive()
    }
}

/// What [`Client::publish_now`] did.
enum Now<'a> {
    Done(Result<()>),
    Later(Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>),
}

fn too_large(len: usize, max: u32) -> Error {
    Error::new(
        mitto_proto::Status::PAYLOAD_TOO_LARGE,
        format!("payload of {len} bytes exceeds the negotiated limit of {max}"),
    )
}

impl Client {
    /// Publishes `payload` to the literal `subject` (fire and forget: completes once queued
    /// for the connection, or routed by a broker in this process; waits while the connection's
    /// queue is full, or while subscribers that block publishers are full).
    ///
    /// The publish happens when the returned future is first polled.
    pub fn publish<'a>(&'a self, subject: &'a str, payload: impl Into<Bytes>) -> Publish<'a> {
        Publish {
            client: self,
            state: PublishState::Start(subject, payload.into()),
        }
    }

    /// Publishes with options (headers, kind, URGENT, broker ACK).
    pub async fn publish_with(
        &self,
        subject: &str,
        payload: impl Into<Bytes>,
        opts: PublishOptions,
    ) -> Result<()> {
        let timeout = opts.timeout.unwrap_or(self.opts().timeout);
        let mut f = Frame::publish(self.subject_of(subject)?, payload).with_kind(opts.kind);
        if let Some(h) = opts.headers {
            f = f.with_headers(h);
        }
        if opts.urgent {
            f.flags.insert(Flags::URGENT);
        }
        let now = self.publish_now(f, opts.ack, timeout);
        self.finish_publish(now).await
    }

    /// Publishes without waiting when it can (in-process broker, or room in the connection's
    /// queue for a fire-and-forget publish); otherwise returns the (boxed) rest of the work,
    /// so that the common path builds no large future.
    fn publish_now(&self, f: Frame, ack: bool, timeout: Duration) -> Now<'_> {
        let f = match self.inner.first_conn() {
            Some(c) => match publish_on(c, f, ack, timeout) {
                Ok(now) => return now,
                Err(f) => f,
            },
            None => match &*self.inner.shared.state.borrow() {
                State::Up(c) => match publish_on(c, f, ack, timeout) {
                    Ok(now) => return now,
                    Err(f) => f,
                },
                _ => f,
            },
        };
        Now::Later(Box::pin(self.send_publish(f, ack, timeout)))
    }

    /// Whether this publish, which did not wait, spends the task's cooperative budget: one in
    /// eight on this thread does, so that a publishing loop still yields (after 128 x 8 = 1,024 publishes,
    /// about a quarter of a millisecond here) and the subscribers it wakes run, without paying
    /// a yield every 128 messages as a channel would (see BENCHMARKS.md, run G).
    fn spends_budget(&self) -> bool {
        thread_local! {
            static PUBLISHES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        }
        PUBLISHES
            .try_with(|n| {
                let v = n.get();
                n.set(v.wrapping_add(1));
                v % 8 == 0
            })
            .unwrap_or(true)
    }

    /// `subject` as a checked literal subject, through the thread's last-published cache (see
    /// [`cached_subject`]).
    pub(crate) fn subject_of(&self, subject: &str) -> Result<Subject> {
        cached_subject(SubjectUse::Publish, subject)
    }

    /// The broker's direct entry points when it runs in this process.
    pub(crate) fn local_port_only(&self) -> Option<Arc<dyn LocalPort>> {
        self.local_port().map(|(p, _)| p)
    }

    /// Publishes a built PUBLISH frame (acknowledged by the broker if `ack`): at once when it
    /// can (see [`Client::publish_now`]), else waiting up to `timeout`.
    pub(crate) async fn send_frame_publish(
        &self,
        f: Frame,
        ack: bool,
        timeout: Duration,
    ) -> Result<()> {
        let now = self.publish_now(f, ack, timeout);
        self.finish_publish(now).await
    }

    /// The end of a publish: a publish that never waited still counts against the task's
    /// budget, so that a publishing loop lets the tasks it wakes (its subscribers) run; one that
    /// must wait waits. (Taking the started publish, not the frame, keeps publish futures small.)
    async fn finish_publish(&self, now: Now<'_>) -> Result<()> {
        match now {
            Now::Done(r) => {
                if self.spends_budget() {
                    tokio::task::coop::consume_budget().await;
                }
                r
            }
            Now::Later(wait) => wait.await,
        }
    }

    /// The broker's direct entry points when it runs in this process, with the payload limit.
    fn local_port(&self) -> Option<(Arc<dyn LocalPort>, u32)> {
        match &*self.inner.shared.state.borrow() {
            State::Up(c) => c
                .port
                .as_ref()
                .map(|p| (p.clone(), c.agreed.limits.max_payload)),
            _ => None,
        }
    }

    async fn send_publish(&self, mut f: Frame, ack: bool, timeout: Duration) -> Result<()> {
        // No clock read on the fire-and-forget path: the deadline matters only for an ACK.
        let conn = self.conn_fast(timeout).await?;
        if f.value.is_some() && conn.port.is_none() {
            // A value for a byte transport: encoded here, once.
            f.materialize()
                .map_err(|e| Error::new(mitto_proto::Status::INTERNAL, e))?;
            f.value = None;
        }
        // An in-process server, or a fire-and-forget publish: as on the first connection.
        let mut f = match publish_on(&conn, f, ack, timeout) {
            Ok(Now::Done(r)) => return r,
            Ok(Now::Later(wait)) => return wait.await,
            Err(f) => f,
        };
        let max = conn.agreed.limits.max_payload;
        if f.payload.len() > max as usize {
            return Err(too_large(f.payload.len(), max));
        }
        let closed = || Error::connection_lost("connection closed before the publish was sent");
        if !ack {
            // `publish_on` takes every fire-and-forget publish while the connection is up.
            return Err(closed());
        }
        let id = self.next_id();
        f.id = id;
        f.flags.insert(Flags::ACK_REQUIRED);
        let (tx, rx) = oneshot::channel();
        conn.cmds
            .send(Cmd::call(CallCmd {
                id,
                frame: f,
                slot: Slot::Unary(tx),
                deadline: None,
            }))
            .await
            .map_err(|_| closed())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r.map(|_| ()),
            Ok(Err(_)) => Err(Error::connection_lost("connection closed before the ACK")),
            Err(_) => {
                let _ = conn.ctl.send(Cmd::Cancel(id));
                Err(Error::new(
                    mitto_proto::Status::TIMEOUT,
                    "no ACK from the broker in time",
                )
                .retryable())
            }
        }
    }

    /// Subscribes to `filter` (`*` matches one token, `>` the rest).
    pub async fn subscribe(&self, filter: &str) -> Result<Subscription> {
        self.subscribe_with(filter, SubscribeOptions::default())
            .await
    }

    /// Subscribes as a member of queue group `group`: each message goes to one member.
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
        let (tx, rx) = crate::inbox::inbox(opts.credit as usize);
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

    /// Sends a request to `subject` through the broker and waits for the first reply; fails at
    /// once with NO_RESPONDERS when nobody listens. Dropping the future cancels it.
    pub async fn request(&self, subject: &str, payload: impl Into<Bytes>) -> Result<Bytes> {
        self.call(subject, payload).await
    }

    /// [`Client::request`] with per-call options (deadline, headers).
    pub async fn request_with(
        &self,
        subject: &str,
        payload: impl Into<Bytes>,
        opts: crate::CallOptions,
    ) -> Result<crate::Reply> {
        self.call_with(subject, payload, opts).await
    }

    /// Answers a request received on a subscription (publishes to its `reply-to`, with its
    /// `correlation-id`).
    pub async fn respond(&self, request: &Message, payload: impl Into<Bytes>) -> Result<()> {
        let to = request.reply_to().ok_or_else(|| {
            Error::new(
                mitto_proto::Status::BAD_REQUEST,
                "the message has no reply-to header",
            )
        })?;
        let mut opts = PublishOptions::default();
        if let Some(c) = request.headers().get(WellKnown::CorrelationId) {
            opts.headers = Some(
                Headers::builder()
                    .insert(WellKnown::CorrelationId, c)?
                    .build(),
            );
        }
        self.publish_with(to, payload, opts).await
    }

    /// Waits until the server has processed everything sent before.
    pub async fn flush(&self) -> Result<()> {
        self.health().await.map(|_| ())
    }

    /// Unsubscribes everything, flushes, and closes.
    pub async fn drain(&self) -> Result<()> {
        let sids: Vec<u32> = match self.inner.shared.subs.lock() {
            Ok(mut s) => s.drain().map(|(k, _)| k).collect(),
            Err(_) => Vec::new(),
        };
        if let Some(ctl) = current_ctl(&self.inner.shared) {
            for sid in sids {
                let _ = ctl.send(Cmd::DropSub(sid));
                let _ = ctl.send(Cmd::Send(Frame::unsubscribe(sid, None)));
            }
        }
        let flushed = self.flush().await;
        self.close().await;
        flushed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_future_moves_without_memcpy() {
        // A publishing loop makes one per message; above 128 bytes each move calls memcpy.
        assert!(std::mem::size_of::<Publish<'static>>() <= 128);
    }

    #[test]
    fn a_command_moves_without_memcpy() {
        // A publish that the connection's buffer does not take (a large one, a full buffer, a
        // link without one) goes to the driver as a command, copied into the queue and out:
        // above 128 bytes each of those moves calls memcpy.
        let size = std::mem::size_of::<Cmd>();
        assert!(size <= 128, "{size}");
    }
}
