//! A mailbox's at-least-once side: acknowledgements, negative ones, redelivery when an ACK is
//! overdue, and the bound on what is delivered and not yet acknowledged (past it the
//! subscriptions that wait for ACKs are held back, see `release_paused`).

use super::{Mailbox, Queues, Swept};
use std::time::Duration;
use tokio::time::Instant;

impl Mailbox {
    /// Acknowledges delivery `id` of subscription `sid`. False if nothing was pending.
    pub(crate) fn ack(&self, sid: u32, id: u64) -> bool {
        let mut guard = self.lock();
        let q = &mut *guard;
        let Some(s) = q.subs.get_mut(&sid) else {
            return false;
        };
        let known = s.unacked_take(id, &mut q.unacked_bytes).is_some();
        if known {
            self.release_paused(q);
        }
        known
    }

    /// Acknowledges deliveries `ids` of subscription `sid` under one lock; how many were
    /// pending.
    pub(crate) fn ack_all(&self, sid: u32, ids: &[u64]) -> usize {
        let mut guard = self.lock();
        let q = &mut *guard;
        let Some(s) = q.subs.get_mut(&sid) else {
            return 0;
        };
        let known = ids
            .iter()
            .filter(|id| s.unacked_take(**id, &mut q.unacked_bytes).is_some())
            .count();
        if known > 0 {
            self.release_paused(q);
        }
        known
    }

    /// Subscriptions held back by the unacknowledged bound go on once it has room.
    pub(super) fn release_paused(&self, q: &mut Queues) {
        if q.paused.is_empty() || q.unacked_bytes >= self.max_unacked {
            return;
        }
        for sid in std::mem::take(&mut q.paused) {
            let Some(s) = q.subs.get_mut(&sid) else {
                continue;
            };
            if q.local {
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            } else if !s.ready && s.sendable() {
                s.ready = true;
                q.ready.push_back(sid);
            }
        }
        if !q.local && !q.ready.is_empty() {
            self.wake_if_idle(q);
        }
    }

    /// Encoded bytes delivered by at-least-once subscriptions and not yet acknowledged.
    pub(crate) fn unacked_bytes(&self) -> usize {
        self.lock().unacked_bytes
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
            Some(d) if !d.is_zero() => entry.due = Instant::now() + d,
            _ => {
                let Some(u) = s.unacked_take(id, &mut q.unacked_bytes) else {
                    return false;
                };
                if let Some(a) = s.ack.as_mut() {
                    a.attempts.insert(id, u.attempts);
                }
                q.bytes += u.f.encoded_len();
                if let Some(t) = u.born {
                    s.born.insert(id, t);
                }
                s.normal.push_front(u.f);
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
            let Some(a) = s.ack.as_ref() else { continue };
            let due: Vec<u64> = a
                .unacked
                .iter()
                .filter(|(_, u)| u.due <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in due {
                let Some(u) = s.unacked_take(id, &mut q.unacked_bytes) else {
                    continue;
                };
                let Some(a) = s.ack.as_mut() else { continue };
                if a.max_deliver > 0 && u.attempts >= a.max_deliver {
                    out.given_up += 1;
                    continue;
                }
                a.attempts.insert(id, u.attempts);
                q.bytes += u.f.encoded_len();
                if let Some(t) = u.born {
                    s.born.insert(id, t);
                }
                s.normal.push_front(u.f);
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
        self.release_paused(q);
        out
    }
}
