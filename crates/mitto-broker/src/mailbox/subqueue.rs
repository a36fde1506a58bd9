//! One subscription's queue at the broker: its messages (URGENT first), credit, bound and
//! slow-consumer policy, and the at-least-once deliveries waiting for their ACK.

use crate::config::BrokerConfig;
use crate::fit::{fit, Peer, Unfit};
use crate::stats::Losses;
use mitto::proto::{Delivery, Flags, Frame, SlowConsumerPolicy, SubscribeOptions};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long an at-least-once delivery may stay unacknowledged unless the subscription says.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);

/// A message taken out of a subscription that ended, with what its next subscription needs:
/// when a timed message arrived, and how many times it was delivered already.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) f: Frame,
    pub(crate) born: Option<Instant>,
    pub(crate) attempts: u32,
}

/// A delivery waiting for its ACK: the message as it was queued (so that a redelivery is
/// charged from its arrival again), when it is due again, when it arrived, and how many times
/// it was delivered.
#[derive(Debug)]
pub(super) struct Unacked {
    pub(super) f: Frame,
    pub(super) due: Instant,
    pub(super) born: Option<Instant>,
    pub(super) attempts: u32,
}

/// At-least-once state of a subscription: deliveries waiting for ACK.
#[derive(Debug)]
pub(crate) struct AckState {
    pub(super) wait: Duration,
    pub(super) max_deliver: u32,
    /// Delivered, not acknowledged, by delivery id (each with its delivery count).
    pub(super) unacked: FxHashMap<u64, Unacked>,
    /// Deliveries so far of queued messages delivered before (NACKed or overdue): a first
    /// delivery adds nothing here.
    pub(super) attempts: FxHashMap<u64, u32>,
    /// Encoded bytes of `unacked` (counted in the mailbox's unacknowledged bound).
    pub(super) bytes: usize,
}

impl AckState {
    pub(crate) fn new(wait: Duration, max_deliver: u32) -> AckState {
        AckState {
            wait,
            max_deliver,
            unacked: FxHashMap::default(),
            attempts: FxHashMap::default(),
            bytes: 0,
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
    /// The durable name's key, for a durable subscription.
    pub(crate) durable: Option<Arc<str>>,
    pub(super) urgent: VecDeque<Frame>,
    pub(super) normal: VecDeque<Frame>,
    /// Messages the client has room for; `None`: no credit flow control.
    pub(super) credit: Option<u32>,
    /// The credit the SUBSCRIBE granted: what `credit` is set back to on resumption.
    pub(super) window: Option<u32>,
    pub(super) max_pending: usize,
    pub(super) policy: SlowConsumerPolicy,
    /// Auto-unsubscribe after this many more deliveries.
    pub(super) remaining: Option<u32>,
    pub(super) ready: bool,
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
    /// Messages over what this subscriber agreed to receive, skipped.
    pub(crate) skipped: u64,
    /// When the queued messages that carry a `deadline` or `ttl` arrived, by delivery id.
    pub(super) born: FxHashMap<u64, Instant>,
    pub(super) ack: Option<AckState>,
    /// An in-process subscriber waiting for messages (local mailboxes only).
    pub(super) waker: Option<std::task::Waker>,
    /// Where the bytes of the last message queued end (see `pin.rs`).
    pub(super) last_end: usize,
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
            durable: None,
            urgent: VecDeque::new(),
            normal: VecDeque::new(),
            credit: (credit > 0).then_some(credit),
            window: (credit > 0).then_some(credit),
            max_pending: max_pending.max(1),
            policy,
            remaining: None,
            ready: false,
            delivered: 0,
            dropped: 0,
            skipped: 0,
            born: FxHashMap::default(),
            ack: None,
            waker: None,
            last_end: 0,
        }
    }

    /// An empty queue with the same settings (a durable subscription's, kept while it has no
    /// subscriber). A kept queue has no subscriber to disconnect: when full, it refuses new
    /// messages instead (counted).
    pub(crate) fn empty_like(&self) -> SubQueue {
        let policy = match self.policy {
            SlowConsumerPolicy::Disconnect => SlowConsumerPolicy::DropNewest,
            p => p,
        };
        let mut q = SubQueue::new(
            self.filter.clone(),
            self.queue.clone(),
            0,
            self.max_pending,
            policy,
        );
        q.durable = self.durable.clone();
        if let Some(a) = &self.ack {
            q.ack = Some(AckState::new(a.wait, a.max_deliver));
        }
        q
    }

    /// Everything it holds, oldest first: deliveries not yet acknowledged (in delivery order),
    /// then what was not sent yet (URGENT first).
    pub(crate) fn into_held(mut self) -> Vec<Held> {
        let mut out = Vec::with_capacity(self.held());
        let mut attempts = FxHashMap::default();
        if let Some(a) = self.ack.take() {
            let mut unacked: Vec<(u64, Unacked)> = a.unacked.into_iter().collect();
            unacked.sort_by_key(|(id, _)| *id);
            attempts = a.attempts;
            for (_, u) in unacked {
                out.push(Held {
                    f: u.f,
                    born: u.born,
                    attempts: u.attempts,
                });
            }
        }
        for f in self.urgent.drain(..).chain(self.normal.drain(..)) {
            out.push(Held {
                born: self.born.remove(&f.id),
                attempts: attempts.remove(&f.id).unwrap_or(0),
                f,
            });
        }
        out
    }

    /// Queues messages of a subscription that ended, ahead of what this one holds (they are
    /// older), whatever the bound: they only move from one queue to another.
    pub(super) fn absorb(&mut self, older: Vec<Held>) -> usize {
        let mut bytes = 0;
        for h in older.into_iter().rev() {
            bytes += h.f.encoded_len();
            self.remember(&h);
            if h.f.is_urgent() {
                self.urgent.push_front(h.f);
            } else {
                self.normal.push_front(h.f);
            }
        }
        bytes
    }

    /// Keeps a moved message's arrival and delivery count.
    pub(super) fn remember(&mut self, h: &Held) {
        if let Some(t) = h.born {
            self.born.insert(h.f.id, t);
        }
        if let Some(a) = self.ack.as_mut() {
            if h.attempts > 0 {
                a.attempts.insert(h.f.id, h.attempts);
            }
        }
    }

    /// The queue of a SUBSCRIBE with `opts`, the broker's defaults filled in (`local`: the
    /// subscriber is in the broker's process and reads its queue itself, so needs no credit).
    pub(crate) fn for_options(
        filter: String,
        opts: &SubscribeOptions,
        cfg: &BrokerConfig,
        local: bool,
        durable: Option<Arc<str>>,
    ) -> SubQueue {
        let policy = match opts.policy {
            SlowConsumerPolicy::ServerDefault => cfg.slow_consumer.policy(),
            p => p,
        };
        let max_pending = match opts.max_pending {
            0 => cfg.max_pending_msgs,
            n => n.min(cfg.max_pending_msgs),
        } as usize;
        let credit = if local { 0 } else { opts.credit };
        let mut sq = SubQueue::new(filter, opts.queue.clone(), credit, max_pending, policy);
        if opts.delivery == Delivery::AtLeastOnce {
            let wait = match opts.ack_wait_ms {
                0 => DEFAULT_ACK_WAIT,
                ms => Duration::from_millis(ms.into()),
            };
            sq = sq.with_acks(AckState::new(wait, opts.max_deliver));
        }
        sq.durable = durable;
        sq
    }

    /// Makes the subscription at-least-once.
    pub(crate) fn with_acks(mut self, ack: AckState) -> SubQueue {
        self.ack = Some(ack);
        self
    }

    pub(super) fn len(&self) -> usize {
        self.urgent.len() + self.normal.len()
    }

    /// Takes delivery `id` out of the unacknowledged ones; `unacked` is the mailbox's count.
    pub(super) fn unacked_take(&mut self, id: u64, unacked: &mut usize) -> Option<Unacked> {
        let a = self.ack.as_mut()?;
        let u = a.unacked.remove(&id)?;
        let len = u.f.encoded_len();
        a.bytes -= len.min(a.bytes);
        *unacked -= len.min(*unacked);
        Some(u)
    }

    /// Encoded bytes delivered and not yet acknowledged.
    pub(super) fn unacked_bytes(&self) -> usize {
        self.ack.as_ref().map_or(0, |a| a.bytes)
    }

    /// Whether this subscription waits for acknowledgements.
    pub(super) fn acked(&self) -> bool {
        self.ack.is_some()
    }

    /// Queued plus delivered-but-unacknowledged: what counts against `max_pending`.
    pub(super) fn held(&self) -> usize {
        self.len() + self.ack.as_ref().map_or(0, |a| a.unacked.len())
    }

    /// On resumption the credit is the window again, not what was left (PROTOCOL.md 11.3):
    /// EVENTs written to the lost connection spent credit, and a client that never received
    /// them never grants it back.
    pub(super) fn refill(&mut self) {
        self.credit = self.window;
    }

    pub(super) fn sendable(&self) -> bool {
        self.len() > 0 && self.credit != Some(0)
    }

    /// Takes the next message to deliver (URGENT first), made fit for `peer` (those that do not
    /// fit are skipped and counted in `losses`), with the at-least-once, credit and
    /// auto-unsubscribe bookkeeping. Returns it and whether the subscription is now finished.
    /// `bytes` counts the mailbox's queued bytes, `unacked` its unacknowledged ones.
    pub(super) fn take(
        &mut self,
        bytes: &mut usize,
        unacked: &mut usize,
        peer: &Peer,
        losses: &Losses,
    ) -> Option<(Frame, bool)> {
        let f = loop {
            let f = self
                .urgent
                .pop_front()
                .or_else(|| self.normal.pop_front())?;
            *bytes -= f.encoded_len().min(*bytes);
            let born = match self.born.is_empty() {
                true => None,
                false => self.born.remove(&f.id),
            };
            let Some(a) = self.ack.as_mut() else {
                match fit(f, peer, born, 1) {
                    Ok(f) => break f,
                    Err(why) => {
                        self.unfit(why, losses);
                        continue;
                    }
                }
            };
            let before = match a.attempts.is_empty() {
                true => 0,
                false => a.attempts.remove(&f.id).unwrap_or(0),
            };
            let attempts = before + 1;
            match fit(f.clone(), peer, born, attempts) {
                Ok(mut out) => {
                    out.flags.insert(Flags::ACK_REQUIRED);
                    let due = Instant::now() + a.wait;
                    let len = f.encoded_len();
                    a.bytes += len;
                    *unacked += len;
                    let u = Unacked {
                        f,
                        due,
                        born,
                        attempts,
                    };
                    a.unacked.insert(u.f.id, u);
                    break out;
                }
                Err(why) => self.unfit(why, losses),
            }
        };
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

    pub(super) fn unfit(&mut self, why: Unfit, losses: &Losses) {
        match why {
            Unfit::TooLarge => {
                self.skipped += 1;
                Losses::add(&losses.oversize, 1);
            }
            Unfit::Expired => Losses::add(&losses.expired, 1),
        }
    }

    pub(super) fn queued_bytes(&self) -> usize {
        self.normal
            .iter()
            .chain(&self.urgent)
            .map(Frame::encoded_len)
            .sum()
    }
}
