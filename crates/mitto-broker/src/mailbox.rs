//! A connection's outgoing queues at the broker: one bounded queue per subscription (with its
//! credit and slow-consumer policy, URGENT messages first) and a control queue (responses,
//! errors). Publishers push into them from their own connection tasks; the owning connection's
//! driver moves them to its socket when it has room, round robin over the subscriptions.

use mitto::conn::Ctx;
use mitto::proto::{Flags, Frame, SlowConsumerPolicy};
use rustc_hash::FxHashMap;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Wakes the owning connection's driver.
pub(crate) type Waker = mpsc::UnboundedSender<crate::conn::BrokerCmd>;

/// What happened to a pushed message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued for delivery.
    Queued,
    /// Queued; an older message of the subscription was dropped to make room.
    DroppedOldest,
    /// Not queued: the subscription is full and drops new messages.
    DroppedNewest,
    /// Not queued: the subscription is full and pushes back on publishers (the message is
    /// given back).
    Rejected(Frame),
    /// Not queued: the subscription was full and has been ended (its filter is returned).
    Disconnected(String),
    /// The subscription no longer exists.
    Gone,
}

/// At-least-once state of a subscription: deliveries waiting for ACK.
#[derive(Debug)]
pub(crate) struct AckState {
    wait: Duration,
    max_deliver: u32,
    /// Delivered, not acknowledged: delivery id -> (message, redelivery due).
    unacked: HashMap<u64, (Frame, Instant)>,
    /// Deliveries so far of messages not yet acknowledged.
    attempts: HashMap<u64, u32>,
}

impl AckState {
    pub(crate) fn new(wait: Duration, max_deliver: u32) -> AckState {
        AckState {
            wait,
            max_deliver,
            unacked: HashMap::new(),
            attempts: HashMap::new(),
        }
    }
}

/// What a redelivery sweep did.
#[derive(Debug, Default)]
pub(crate) struct Swept {
    pub(crate) redelivered: u64,
    pub(crate) given_up: u64,
}

/// A subscription's queue and settings.
#[derive(Debug)]
pub(crate) struct SubQueue {
    pub(crate) filter: String,
    pub(crate) queue: Option<String>,
    urgent: VecDeque<Frame>,
    normal: VecDeque<Frame>,
    /// Messages the client has room for; `None`: no credit flow control.
    credit: Option<u32>,
    max_pending: usize,
    policy: SlowConsumerPolicy,
    /// Auto-unsubscribe after this many more deliveries.
    remaining: Option<u32>,
    ready: bool,
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
    ack: Option<AckState>,
    /// An in-process subscriber waiting for messages (local mailboxes only).
    waker: Option<std::task::Waker>,
}

impl SubQueue {
    pub(crate) fn new(
        filter: String,
        queue: Option<String>,
        credit: u32,
        max_pending: usize,
        policy: SlowConsumerPolicy,
    ) -> SubQueue {
        SubQueue {
            filter,
            queue,
            urgent: VecDeque::new(),
            normal: VecDeque::new(),
            credit: (credit > 0).then_some(credit),
            max_pending: max_pending.max(1),
            policy,
            remaining: None,
            ready: false,
            delivered: 0,
            dropped: 0,
            ack: None,
            waker: None,
        }
    }

    /// Makes the subscription at-least-once.
    pub(crate) fn with_acks(mut self, ack: AckState) -> SubQueue {
        self.ack = Some(ack);
        self
    }

    fn len(&self) -> usize {
        self.urgent.len() + self.normal.len()
    }

    /// Queued plus delivered-but-unacknowledged: what counts against `max_pending`.
    fn held(&self) -> usize {
        self.len() + self.ack.as_ref().map_or(0, |a| a.unacked.len())
    }

    fn sendable(&self) -> bool {
        self.len() > 0 && self.credit != Some(0)
    }

    /// Takes the next message to deliver (URGENT first), with the at-least-once, credit and
    /// auto-unsubscribe bookkeeping. Returns it and whether the subscription is now finished.
    fn take(&mut self, bytes: &mut usize) -> Option<(Frame, bool)> {
        let mut f = self
            .urgent
            .pop_front()
            .or_else(|| self.normal.pop_front())?;
        *bytes -= f.encoded_len().min(*bytes);
        if let Some(a) = self.ack.as_mut() {
            f.flags.insert(Flags::ACK_REQUIRED);
            *a.attempts.entry(f.id).or_insert(0) += 1;
            a.unacked.insert(f.id, (f.clone(), Instant::now() + a.wait));
        }
        if let Some(c) = self.credit.as_mut() {
            *c = c.saturating_sub(1);
        }
        self.delivered += 1;
        let mut done = false;
        if let Some(r) = self.remaining.as_mut() {
            *r = r.saturating_sub(1);
            done = *r == 0;
        }
        Some((f, done))
    }

    fn queued_bytes(&self) -> usize {
        self.normal
            .iter()
            .chain(&self.urgent)
            .map(Frame::encoded_len)
            .sum()
    }
}

/// What an in-process subscriber took from its queue.
#[derive(Debug)]
pub(crate) enum LocalPop {
    /// Messages moved (count, payload bytes); `Some(filter)` if that finished the subscription.
    Got(u64, u64, Option<String>),
    /// The subscription no longer exists.
    Ended,
}

#[derive(Debug, Default)]
struct Queues {
    control: VecDeque<Frame>,
    subs: FxHashMap<u32, SubQueue>,
    /// Subscriptions with something to send and credit to send it, in turn.
    ready: VecDeque<u32>,
    bytes: usize,
    /// The driver has nothing queued and waits for a wake-up.
    idle: bool,
    /// The client is in this process and reads its subscriptions itself: events are never
    /// moved to the connection, the subscriber is woken instead.
    local: bool,
}

/// Counters a drain reports.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    /// Subscriptions that reached their auto-unsubscribe count: (sid, filter).
    pub(crate) finished: Vec<(u32, String)>,
}

/// One connection's mailbox.
#[derive(Debug)]
pub(crate) struct Mailbox {
    q: Mutex<Queues>,
    wake: Mutex<Waker>,
    max_bytes: usize,
    /// Publishers blocked by a full subscription wait here for room.
    space: std::sync::Arc<tokio::sync::Notify>,
    space_wanted: std::sync::atomic::AtomicBool,
    /// Mirrors `Queues::local` for lock-free reads.
    local: std::sync::atomic::AtomicBool,
}

impl Mailbox {
    pub(crate) fn new(wake: Waker, max_bytes: usize) -> Mailbox {
        Mailbox {
            q: Mutex::new(Queues {
                idle: true,
                ..Queues::default()
            }),
            wake: Mutex::new(wake),
            max_bytes,
            space: std::sync::Arc::new(tokio::sync::Notify::new()),
            space_wanted: std::sync::atomic::AtomicBool::new(false),
            local: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Makes the mailbox's subscriptions read in-process (`true`) or sent to the connection.
    pub(crate) fn set_local(&self, local: bool) {
        let mut guard = self.lock();
        let q = &mut *guard;
        if q.local == local {
            return;
        }
        q.local = local;
        self.local
            .store(local, std::sync::atomic::Ordering::Relaxed);
        if !local {
            for (sid, s) in q.subs.iter_mut() {
                if !s.ready && s.sendable() {
                    s.ready = true;
                    q.ready.push_back(*sid);
                }
            }
            self.wake_if_idle(q);
        }
    }

    /// Whether the subscriptions are read in-process.
    pub(crate) fn is_local(&self) -> bool {
        self.local.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A future that completes when a subscription of this mailbox makes room (or goes away).
    /// Create it, then try again, then await it.
    pub(crate) fn room(&self) -> tokio::sync::futures::Notified<'_> {
        let n = self.space.notified();
        self.space_wanted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        n
    }

    /// [`Mailbox::room`], owned (for a connection task to keep across turns), armed.
    pub(crate) fn room_owned(&self) -> std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>> {
        let mut n = Box::pin(self.space.clone().notified_owned());
        n.as_mut().enable();
        self.space_wanted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        n
    }

    fn made_room(&self) {
        if self.space_wanted.load(std::sync::atomic::Ordering::SeqCst) {
            self.space_wanted
                .store(false, std::sync::atomic::Ordering::SeqCst);
            self.space.notify_waiters();
        }
    }

    /// Moves up to `max` messages of in-process subscription `sid` to `out`; registers `cx`'s
    /// waker when there are none.
    pub(crate) fn pop_local(
        &self,
        sid: u32,
        cx: &mut std::task::Context<'_>,
        out: &mut VecDeque<Frame>,
        max: usize,
    ) -> std::task::Poll<LocalPop> {
        let mut guard = self.lock();
        let q = &mut *guard;
        let Some(s) = q.subs.get_mut(&sid) else {
            return std::task::Poll::Ready(LocalPop::Ended);
        };
        if s.ack.is_none()
            && s.remaining.is_none()
            && s.credit.is_none()
            && s.urgent.is_empty()
            && out.is_empty()
            && !s.normal.is_empty()
        {
            // Nothing to track per message: hand the whole queue over in one swap, so that
            // the publisher waits on this lock as briefly as possible.
            let n = s.normal.len();
            let (wire, payload) = s.normal.iter().fold((0usize, 0u64), |(w, p), f| {
                (w + f.encoded_len(), p + f.payload.len() as u64)
            });
            std::mem::swap(&mut s.normal, out);
            s.delivered += n as u64;
            q.bytes -= wire.min(q.bytes);
            drop(guard);
            self.made_room();
            return std::task::Poll::Ready(LocalPop::Got(n as u64, payload, None));
        }
        let (mut n, mut bytes, mut finished) = (0u64, 0u64, None);
        while (n as usize) < max {
            let Some((f, done)) = s.take(&mut q.bytes) else {
                break;
            };
            n += 1;
            bytes += f.payload.len() as u64;
            out.push_back(f);
            if done {
                finished = Some(s.filter.clone());
                break;
            }
        }
        if let Some(filter) = &finished {
            let rest = s.queued_bytes();
            q.bytes -= rest.min(q.bytes);
            q.subs.remove(&sid);
            let _ = filter;
        } else if n == 0 {
            match &s.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => s.waker = Some(cx.waker().clone()),
            }
            return std::task::Poll::Pending;
        }
        drop(guard);
        self.made_room();
        std::task::Poll::Ready(LocalPop::Got(n, bytes, finished))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        // A panic while holding the lock cannot leave the queues inconsistent in a way that
        // matters more than losing the connection; keep serving.
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_if_idle(&self, q: &mut Queues) {
        if q.idle {
            q.idle = false;
            if let Ok(w) = self.wake.lock() {
                let _ = w.send(crate::conn::BrokerCmd::Wake);
            }
        }
    }

    /// Hands the mailbox to a new connection (a resumed session) and wakes it.
    pub(crate) fn set_waker(&self, wake: Waker) {
        if let Ok(mut w) = self.wake.lock() {
            *w = wake;
        }
        let mut q = self.lock();
        q.idle = true;
        self.wake_if_idle(&mut q);
    }

    /// Adds a subscription's queue.
    pub(crate) fn add_sub(&self, sid: u32, sq: SubQueue) -> bool {
        let mut q = self.lock();
        if q.subs.contains_key(&sid) {
            return false;
        }
        q.subs.insert(sid, sq);
        true
    }

    /// Removes a subscription's queue and what it still held; returns its filter.
    pub(crate) fn remove_sub(&self, sid: u32) -> Option<String> {
        let mut q = self.lock();
        let mut sq = q.subs.remove(&sid)?;
        let freed = sq.queued_bytes();
        q.bytes -= freed.min(q.bytes);
        drop(q);
        if let Some(w) = sq.waker.take() {
            w.wake();
        }
        self.made_room();
        Some(sq.filter)
    }

    /// Ends every subscription (the connection is gone): queued messages are freed and
    /// in-process readers see their queue end.
    pub(crate) fn end_all(&self) {
        let sids: Vec<u32> = self.lock().subs.keys().copied().collect();
        for sid in sids {
            self.remove_sub(sid);
        }
    }

    /// The filters and queue groups of every subscription (for clean-up and monitoring).
    pub(crate) fn subs(&self) -> Vec<(u32, String, Option<String>, u64, u64)> {
        let q = self.lock();
        q.subs
            .iter()
            .map(|(sid, s)| {
                (
                    *sid,
                    s.filter.clone(),
                    s.queue.clone(),
                    s.delivered,
                    s.dropped,
                )
            })
            .collect()
    }

    /// Whether subscription `sid` exists.
    pub(crate) fn has_sub(&self, sid: u32) -> bool {
        self.lock().subs.contains_key(&sid)
    }

    /// How many subscriptions.
    pub(crate) fn sub_count(&self) -> usize {
        self.lock().subs.len()
    }

    /// Sets a subscription to end after `n` more deliveries. False if unknown.
    pub(crate) fn unsubscribe_after(&self, sid: u32, n: u32) -> bool {
        let mut q = self.lock();
        match q.subs.get_mut(&sid) {
            Some(s) => {
                s.remaining = Some(n);
                true
            }
            None => false,
        }
    }

    /// Grants a subscription more credit.
    pub(crate) fn grant(&self, sid: u32, n: u32) {
        let mut q = self.lock();
        let Some(s) = q.subs.get_mut(&sid) else {
            return;
        };
        if let Some(c) = s.credit.as_mut() {
            *c = c.saturating_add(n);
        }
        if s.sendable() && !s.ready {
            s.ready = true;
            q.ready.push_back(sid);
            self.wake_if_idle(&mut q);
        }
    }

    /// Queues a control frame (RESPONSE, ERROR, ACK): never dropped.
    pub(crate) fn push_control(&self, f: Frame) {
        let mut q = self.lock();
        q.bytes += f.encoded_len();
        q.control.push_back(f);
        self.wake_if_idle(&mut q);
    }

    /// Queues an EVENT for subscription `sid`, applying its policy when it is full.
    #[inline]
    pub(crate) fn push_event(&self, sid: u32, f: Frame) -> Pushed {
        let mut guard = self.lock();
        let q = &mut *guard;
        let Some(s) = q.subs.get_mut(&sid) else {
            return Pushed::Gone;
        };
        let len = f.encoded_len();
        let full = s.held() >= s.max_pending || q.bytes + len > self.max_bytes;
        let mut outcome = Pushed::Queued;
        if full {
            match s.policy {
                SlowConsumerPolicy::DropNewest => {
                    s.dropped += 1;
                    return Pushed::DroppedNewest;
                }
                SlowConsumerPolicy::Block => return Pushed::Rejected(f),
                SlowConsumerPolicy::Disconnect => {
                    let filter = s.filter.clone();
                    drop(guard);
                    self.remove_sub(sid);
                    return Pushed::Disconnected(filter);
                }
                // DropOldest, and ServerDefault (resolved to DropOldest at subscribe time).
                _ => {
                    let old = s.normal.pop_front().or_else(|| s.urgent.pop_front());
                    match old {
                        Some(o) => {
                            q.bytes -= o.encoded_len().min(q.bytes);
                            s.dropped += 1;
                            outcome = Pushed::DroppedOldest;
                        }
                        None => {
                            s.dropped += 1;
                            return Pushed::DroppedNewest;
                        }
                    }
                }
            }
        }
        if f.is_urgent() {
            s.urgent.push_back(f);
        } else {
            s.normal.push_back(f);
        }
        q.bytes += len;
        if q.local {
            let w = s.waker.take();
            drop(guard);
            if let Some(w) = w {
                w.wake();
            }
            return outcome;
        }
        if !s.ready && s.sendable() {
            s.ready = true;
            q.ready.push_back(sid);
        }
        if !q.ready.is_empty() {
            self.wake_if_idle(q);
        }
        outcome
    }

    /// Acknowledges delivery `id` of subscription `sid`. False if nothing was pending.
    pub(crate) fn ack(&self, sid: u32, id: u64) -> bool {
        let mut q = self.lock();
        let Some(a) = q.subs.get_mut(&sid).and_then(|s| s.ack.as_mut()) else {
            return false;
        };
        a.attempts.remove(&id);
        a.unacked.remove(&id).is_some()
    }

    /// Asks for delivery `id` again: now, or after `delay`. False if nothing was pending.
    pub(crate) fn nack(&self, sid: u32, id: u64, delay: Option<Duration>) -> bool {
        let mut guard = self.lock();
        let q = &mut *guard;
        let Some(s) = q.subs.get_mut(&sid) else {
            return false;
        };
        let Some(a) = s.ack.as_mut() else {
            return false;
        };
        let Some(entry) = a.unacked.get_mut(&id) else {
            return false;
        };
        match delay {
            Some(d) if !d.is_zero() => entry.1 = Instant::now() + d,
            _ => {
                let Some((f, _)) = a.unacked.remove(&id) else {
                    return false;
                };
                q.bytes += f.encoded_len();
                s.normal.push_front(f);
                if q.local {
                    if let Some(w) = s.waker.take() {
                        w.wake();
                    }
                    return true;
                }
                if !s.ready && s.sendable() {
                    s.ready = true;
                    q.ready.push_back(sid);
                }
                self.wake_if_idle(q);
            }
        }
        true
    }

    /// Queues again every delivery whose acknowledgement is overdue; gives up (and counts) those
    /// delivered `max_deliver` times.
    pub(crate) fn redeliver_due(&self, now: Instant) -> Swept {
        let mut out = Swept::default();
        let mut guard = self.lock();
        let q = &mut *guard;
        let mut woke = false;
        for (sid, s) in q.subs.iter_mut() {
            let Some(a) = s.ack.as_mut() else { continue };
            let due: Vec<u64> = a
                .unacked
                .iter()
                .filter(|(_, (_, t))| *t <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                let Some((f, _)) = a.unacked.remove(&id) else {
                    continue;
                };
                let tries = a.attempts.get(&id).copied().unwrap_or(0);
                if a.max_deliver > 0 && tries >= a.max_deliver {
                    a.attempts.remove(&id);
                    out.given_up += 1;
                    continue;
                }
                q.bytes += f.encoded_len();
                s.normal.push_front(f);
                out.redelivered += 1;
            }
            if q.local {
                if s.len() > 0 {
                    if let Some(w) = s.waker.take() {
                        w.wake();
                    }
                }
                continue;
            }
            if !s.ready && s.sendable() {
                s.ready = true;
                q.ready.push_back(*sid);
                woke = true;
            }
        }
        if woke {
            self.wake_if_idle(q);
        }
        out
    }

    /// Moves queued frames to the connection's outbox until it is backlogged or `budget` frames
    /// went. Marks the mailbox idle when it is empty.
    pub(crate) fn drain_into(&self, cx: &mut Ctx<'_>, budget: usize, out: &mut Drained) -> bool {
        let mut guard = self.lock();
        let q = &mut *guard;
        let mut n = 0;
        while n < budget && !cx.backlogged() {
            if let Some(f) = q.control.pop_front() {
                q.bytes -= f.encoded_len().min(q.bytes);
                cx.send(&f);
                n += 1;
                continue;
            }
            let Some(sid) = q.ready.pop_front() else {
                break;
            };
            let Some(s) = q.subs.get_mut(&sid) else {
                continue;
            };
            s.ready = false;
            let Some((f, done)) = s.take(&mut q.bytes) else {
                continue;
            };
            cx.send(&f);
            out.events += 1;
            out.bytes += f.payload.len() as u64;
            n += 1;
            if done {
                let filter = s.filter.clone();
                let rest = s.queued_bytes();
                q.subs.remove(&sid);
                q.bytes -= rest.min(q.bytes);
                out.finished.push((sid, filter));
            } else if s.sendable() {
                s.ready = true;
                q.ready.push_back(sid);
            }
        }
        let progress = n > 0;
        if progress && !q.local {
            // Subscriptions made room: wake publishers blocked on them (after the lock).
            let wanted = self.space_wanted.load(std::sync::atomic::Ordering::Relaxed);
            if wanted {
                q.idle = q.control.is_empty() && q.ready.is_empty();
                drop(guard);
                self.made_room();
                return progress;
            }
        }
        if q.control.is_empty() && q.ready.is_empty() {
            q.idle = true;
        } else if !progress {
            // Backlogged: the driver calls again once the outbox drains.
            q.idle = false;
        }
        progress
    }
}
