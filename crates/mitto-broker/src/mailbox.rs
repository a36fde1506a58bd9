//! A connection's outgoing queues at the broker: one bounded queue per subscription (with its
//! credit and slow-consumer policy, URGENT messages first) and a control queue (responses,
//! errors, forwarded requests), bounded in bytes too. Publishers push into them from their own
//! connection tasks; the owning connection's driver moves them to its socket when it has room,
//! round robin over the subscriptions.

mod acks;
mod subqueue;
#[cfg(test)]
mod tests;

use subqueue::Unacked;
pub(crate) use subqueue::{Held, SubQueue, Swept};

use crate::fit::Peer;
use crate::shared::{BrokerCmd, Waker};
use crate::stats::Losses;
use mitto::__private::conn::Ctx;
use mitto::proto::{Flags, Frame, SlowConsumerPolicy};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

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
    /// Not queued: the subscription is full and is to be ended (the message is given back, to
    /// follow what it holds: see `rehome.rs`).
    Disconnected(Frame),
    /// The subscription no longer exists (the message is given back, for a queue group or a
    /// durable name to take).
    Gone(Frame),
}

/// What an in-process subscriber took from its queue.
#[derive(Debug)]
pub(crate) enum LocalPop {
    /// Messages moved (count, payload bytes); the subscription's queue if that finished it.
    Got(u64, u64, Option<Box<SubQueue>>),
    /// The subscription no longer exists.
    Ended,
}

#[derive(Debug)]
struct Queues {
    control: VecDeque<Frame>,
    /// Encoded bytes in `control`.
    control_bytes: usize,
    /// A control frame did not fit: the connection does not read and is to be closed.
    overflowed: bool,
    subs: FxHashMap<u32, SubQueue>,
    /// Subscriptions with something to send and credit to send it, in turn.
    ready: VecDeque<u32>,
    bytes: usize,
    /// Encoded bytes delivered by at-least-once subscriptions and not yet acknowledged.
    unacked_bytes: usize,
    /// At-least-once subscriptions held back while `unacked_bytes` is at its bound: they go on
    /// when acknowledgements make room (backpressure: nothing is dropped for it).
    paused: Vec<u32>,
    /// The driver has nothing queued and waits for a wake-up.
    idle: bool,
    /// The client is in this process and reads its subscriptions itself: events are never
    /// moved to the connection, the subscriber is woken instead.
    local: bool,
    /// What the connection agreed to receive.
    peer: Peer,
    /// Every message goes to it as it is ([`Peer::takes_all`]).
    takes_all: bool,
}

/// Counters a drain reports.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    /// Subscriptions that reached their auto-unsubscribe count: sid and what they still hold.
    pub(crate) finished: Vec<(u32, SubQueue)>,
}

/// What monitoring and clean-up know of one subscription.
#[derive(Debug, Clone)]
pub(crate) struct SubInfo {
    pub(crate) sid: u32,
    pub(crate) filter: String,
    pub(crate) queue: Option<String>,
    pub(crate) durable: Option<Arc<str>>,
    pub(crate) delivered: u64,
    /// Dropped by the slow-consumer policy.
    pub(crate) dropped: u64,
    /// Skipped: over what the subscriber agreed to receive.
    pub(crate) skipped: u64,
}

/// One connection's mailbox.
#[derive(Debug)]
pub(crate) struct Mailbox {
    q: Mutex<Queues>,
    wake: Mutex<Waker>,
    max_bytes: usize,
    /// Bound of `Queues::unacked_bytes`: past it at-least-once subscriptions send nothing more.
    max_unacked: usize,
    /// Publishers blocked by a full subscription wait here for room.
    space: std::sync::Arc<tokio::sync::Notify>,
    space_wanted: std::sync::atomic::AtomicBool,
    /// Mirrors `Queues::local` for lock-free reads.
    local: std::sync::atomic::AtomicBool,
    /// Where messages skipped or dropped on their way out are counted, broker-wide.
    losses: Arc<Losses>,
    /// Mirrors `Queues::overflowed` for lock-free reads (the driver asks on every turn).
    overflow: std::sync::atomic::AtomicBool,
}

impl Mailbox {
    pub(crate) fn new(wake: Waker, max_bytes: usize, losses: Arc<Losses>) -> Mailbox {
        Mailbox {
            q: Mutex::new(Queues {
                control: VecDeque::new(),
                control_bytes: 0,
                overflowed: false,
                subs: FxHashMap::default(),
                ready: VecDeque::new(),
                bytes: 0,
                unacked_bytes: 0,
                paused: Vec::new(),
                idle: true,
                local: false,
                peer: Peer::ANY,
                takes_all: true,
            }),
            wake: Mutex::new(wake),
            max_bytes,
            max_unacked: max_bytes,
            space: std::sync::Arc::new(tokio::sync::Notify::new()),
            space_wanted: std::sync::atomic::AtomicBool::new(false),
            local: std::sync::atomic::AtomicBool::new(false),
            losses,
            overflow: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Bounds the bytes delivered and not yet acknowledged (by default `max_bytes`): past it,
    /// at-least-once subscriptions wait for acknowledgements before they send more.
    pub(crate) fn with_max_unacked(mut self, n: usize) -> Mailbox {
        self.max_unacked = n.max(1);
        self
    }

    /// Sets what the connection reading this mailbox agreed to receive (`broker_max_payload`:
    /// the largest payload the broker accepts).
    pub(crate) fn set_peer(&self, peer: Peer, broker_max_payload: u32) {
        let mut q = self.lock();
        q.peer = peer;
        q.takes_all = peer.takes_all(broker_max_payload);
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
            && s.born.is_empty()
            && q.takes_all
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
        let mut done = false;
        while (n as usize) < max {
            if s.acked() && q.unacked_bytes >= self.max_unacked {
                if !q.paused.contains(&sid) {
                    q.paused.push(sid);
                }
                break;
            }
            let Some((f, last)) = s.take(&mut q.bytes, &mut q.unacked_bytes, &q.peer, &self.losses)
            else {
                break;
            };
            n += 1;
            bytes += f.payload.len() as u64;
            out.push_back(f);
            if last {
                done = true;
                break;
            }
        }
        if done {
            let rest = s.queued_bytes();
            q.bytes -= rest.min(q.bytes);
            q.unacked_bytes -= s.unacked_bytes().min(q.unacked_bytes);
            finished = q.subs.remove(&sid).map(Box::new);
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
                let _ = w.send(BrokerCmd::Wake);
            }
        }
    }

    /// Hands the mailbox to a new connection (a resumed session) and wakes it. Deliveries the
    /// lost connection did not acknowledge are queued again at once (ahead of what arrived
    /// meanwhile): it cannot acknowledge them any more, so there is no point in waiting for
    /// their `ack_wait`.
    /// An overflow that closed the old connection is not held against the new one, nor is the
    /// credit its EVENTs spent.
    pub(crate) fn set_waker(&self, wake: Waker) {
        if let Ok(mut w) = self.wake.lock() {
            *w = wake;
        }
        let mut guard = self.lock();
        let q = &mut *guard;
        for s in q.subs.values_mut() {
            let Some(a) = s.ack.as_mut() else { continue };
            a.bytes = 0;
            let mut back: Vec<(u64, Unacked)> = a.unacked.drain().collect();
            back.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
            for (id, u) in back {
                q.bytes += u.f.encoded_len();
                if let Some(t) = u.born {
                    s.born.insert(id, t);
                }
                a.attempts.insert(id, u.attempts);
                s.normal.push_front(u.f);
            }
        }
        q.unacked_bytes = 0;
        q.paused.clear();
        // What arrived while no connection read the mailbox is sent at once, within a whole
        // window of credit.
        for (sid, s) in q.subs.iter_mut() {
            s.refill();
            if !s.ready && s.sendable() {
                s.ready = true;
                q.ready.push_back(*sid);
            }
        }
        q.overflowed = false;
        self.overflow
            .store(false, std::sync::atomic::Ordering::Relaxed);
        q.idle = true;
        self.wake_if_idle(q);
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

    /// Removes a subscription's queue, with what it still holds.
    pub(crate) fn remove_sub(&self, sid: u32) -> Option<SubQueue> {
        let mut q = self.lock();
        let mut sq = q.subs.remove(&sid)?;
        let freed = sq.queued_bytes();
        q.bytes -= freed.min(q.bytes);
        q.unacked_bytes -= sq.unacked_bytes().min(q.unacked_bytes);
        self.release_paused(&mut q);
        drop(q);
        if let Some(w) = sq.waker.take() {
            w.wake();
        }
        self.made_room();
        Some(sq)
    }

    /// Drops what subscription `sid` queued and did not send, keeping the subscription: for a
    /// subscription bound to a consumer, which holds those messages and sends them again.
    pub(crate) fn drop_queued(&self, sid: u32) {
        let mut guard = self.lock();
        let q = &mut *guard;
        let Some(s) = q.subs.get_mut(&sid) else {
            return;
        };
        let freed = s.queued_bytes();
        s.urgent.clear();
        s.normal.clear();
        s.born.clear();
        q.bytes -= freed.min(q.bytes);
        drop(guard);
        self.made_room();
    }

    /// An empty queue with the settings of subscription `sid`.
    pub(crate) fn like(&self, sid: u32) -> Option<SubQueue> {
        self.lock().subs.get(&sid).map(SubQueue::empty_like)
    }

    /// Puts messages of a subscription that ended ahead of what subscription `sid` holds, and
    /// makes them ready to send. Gives them back if `sid` is gone.
    pub(crate) fn absorb(&self, sid: u32, older: Vec<Held>) -> Result<(), Vec<Held>> {
        let mut guard = self.lock();
        let q = &mut *guard;
        let Some(s) = q.subs.get_mut(&sid) else {
            return Err(older);
        };
        let older = older
            .into_iter()
            .map(|mut h| {
                h.f.aux = sid;
                h
            })
            .collect();
        q.bytes += s.absorb(older);
        self.make_ready(q, sid);
        Ok(())
    }

    /// Queues one message moved from a subscription that ended (another member of the same
    /// queue group went away), whatever the bound. Gives it back if `sid` is gone.
    pub(crate) fn push_held(&self, sid: u32, h: Held) -> Result<(), Box<Held>> {
        let mut guard = self.lock();
        let q = &mut *guard;
        let Some(s) = q.subs.get_mut(&sid) else {
            return Err(Box::new(h));
        };
        let mut h = h;
        h.f.aux = sid;
        q.bytes += h.f.encoded_len();
        s.remember(&h);
        if h.f.is_urgent() {
            s.urgent.push_back(h.f);
        } else {
            s.normal.push_back(h.f);
        }
        self.make_ready(q, sid);
        Ok(())
    }

    /// Subscription `sid` got messages: wake its reader.
    fn make_ready(&self, q: &mut Queues, sid: u32) {
        let Some(s) = q.subs.get_mut(&sid) else {
            return;
        };
        if q.local {
            if let Some(w) = s.waker.take() {
                w.wake();
            }
            return;
        }
        if !s.ready && s.sendable() {
            s.ready = true;
            q.ready.push_back(sid);
        }
        self.wake_if_idle(q);
    }

    /// Messages queued or sent and not yet acknowledged, in every subscription, and control
    /// frames not yet sent: what a connection closed now would not deliver.
    pub(crate) fn outstanding(&self) -> usize {
        let q = self.lock();
        q.control.len() + q.subs.values().map(SubQueue::held).sum::<usize>()
    }

    /// Every subscription of this mailbox (for clean-up and monitoring).
    pub(crate) fn subs(&self) -> Vec<SubInfo> {
        let q = self.lock();
        q.subs
            .iter()
            .map(|(sid, s)| SubInfo {
                sid: *sid,
                filter: s.filter.clone(),
                queue: s.queue.clone(),
                durable: s.durable.clone(),
                delivered: s.delivered,
                dropped: s.dropped,
                skipped: s.skipped,
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

    /// Queues a control frame (RESPONSE, STREAM, ERROR, CANCEL) from another connection.
    /// Control frames have a budget of `max_bytes` of their own; one that does not fit is not
    /// queued and marks the mailbox overflowed: the connection is not reading what it is sent,
    /// and its reactor closes it as a slow consumer (its operations then fail with the
    /// connection, never silently). False if it was not queued.
    pub(crate) fn push_control(&self, mut f: Frame) -> bool {
        let mut q = self.lock();
        if f.flags.contains(Flags::COMPRESSED) && !q.peer.lz4 {
            // A forwarded call or answer, for a peer that reads no compressed payloads.
            let (id, t) = (f.id, f.frame_type);
            match crate::fit::fit(f, &q.peer, None, 1) {
                Ok(plain) => f = plain,
                Err(_) if t == mitto::proto::FrameType::Response => {
                    Losses::add(&self.losses.oversize, 1);
                    f = Frame::response(
                        id,
                        mitto::proto::Status::PAYLOAD_TOO_LARGE,
                        "the answer is over the agreed max_payload once decompressed",
                    );
                }
                Err(_) => {
                    Losses::add(&self.losses.oversize, 1);
                    return false;
                }
            }
        }
        let len = f.encoded_len();
        if q.control_bytes + len > self.max_bytes {
            if !q.overflowed {
                q.overflowed = true;
                self.overflow
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                q.idle = false;
                // The driver may be waiting on a full socket: tell it whatever it is doing.
                if let Ok(w) = self.wake.lock() {
                    let _ = w.send(BrokerCmd::Wake);
                }
            }
            return false;
        }
        q.control_bytes += len;
        q.control.push_back(f);
        self.wake_if_idle(&mut q);
        true
    }

    /// Queues a REQUEST forwarded to this service instance if its control budget has room;
    /// false otherwise (the caller is refused, the instance is not blamed).
    pub(crate) fn push_request(&self, f: Frame) -> bool {
        let mut q = self.lock();
        let len = f.encoded_len();
        if q.overflowed || q.control_bytes + len > self.max_bytes {
            return false;
        }
        q.control_bytes += len;
        q.control.push_back(f);
        self.wake_if_idle(&mut q);
        true
    }

    /// Whether a control frame of `len` bytes fits now.
    pub(crate) fn has_control_room(&self, len: usize) -> bool {
        let q = self.lock();
        !q.overflowed && q.control_bytes + len <= self.max_bytes
    }

    /// Whether a control frame did not fit (see [`Mailbox::push_control`]).
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Encoded bytes queued: EVENTs of the subscriptions, and control frames.
    pub(crate) fn queued_bytes(&self) -> (usize, usize) {
        let q = self.lock();
        (q.bytes, q.control_bytes)
    }

    /// Queues an EVENT for subscription `sid`, applying its policy when it is full; `born`:
    /// when a message with a `deadline` or `ttl` arrived.
    #[inline]
    pub(crate) fn push_event(&self, sid: u32, f: Frame, born: Option<Instant>) -> Pushed {
        let mut guard = self.lock();
        let q = &mut *guard;
        let Some(s) = q.subs.get_mut(&sid) else {
            return Pushed::Gone(f);
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
                SlowConsumerPolicy::Disconnect => return Pushed::Disconnected(f),
                // DropOldest, and ServerDefault (resolved to DropOldest at subscribe time).
                _ => {
                    let old = s.normal.pop_front().or_else(|| s.urgent.pop_front());
                    match old {
                        Some(o) => {
                            q.bytes -= o.encoded_len().min(q.bytes);
                            if !s.born.is_empty() {
                                s.born.remove(&o.id);
                            }
                            if let Some(a) = s.ack.as_mut() {
                                a.attempts.remove(&o.id);
                            }
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
        if let Some(t) = born {
            s.born.insert(f.id, t);
        }
        let lagging = s.len() > 0;
        let f = crate::pin::settle(f, &mut s.last_end, lagging, &self.losses.copied);
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

    /// Everything it holds, encoded bytes: queued, unacknowledged and control frames.
    pub(crate) fn held_bytes(&self) -> usize {
        let q = self.lock();
        q.bytes + q.unacked_bytes + q.control_bytes
    }

    /// Moves queued frames to the connection's outbox until it is backlogged or `budget` frames
    /// went. Marks the mailbox idle when it is empty.
    pub(crate) fn drain_into(&self, cx: &mut Ctx<'_>, budget: usize, out: &mut Drained) -> bool {
        let mut guard = self.lock();
        let q = &mut *guard;
        let mut n = 0;
        while n < budget && !cx.backlogged() {
            if let Some(f) = q.control.pop_front() {
                q.control_bytes -= f.encoded_len().min(q.control_bytes);
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
            if s.acked() && q.unacked_bytes >= self.max_unacked {
                // Backpressure: it waits for acknowledgements (see `release_paused`).
                if !q.paused.contains(&sid) {
                    q.paused.push(sid);
                }
                continue;
            }
            let Some((f, done)) = s.take(&mut q.bytes, &mut q.unacked_bytes, &q.peer, &self.losses)
            else {
                continue;
            };
            cx.send(&f);
            out.events += 1;
            out.bytes += f.payload.len() as u64;
            n += 1;
            if done {
                let rest = s.queued_bytes();
                q.bytes -= rest.min(q.bytes);
                q.unacked_bytes -= s.unacked_bytes().min(q.unacked_bytes);
                if let Some(sq) = q.subs.remove(&sid) {
                    out.finished.push((sid, sq));
                }
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
