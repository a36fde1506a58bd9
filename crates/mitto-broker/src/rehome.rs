//! Where a subscription's messages go when it ends without a session to keep it (its
//! connection closed or crashed, it unsubscribed, its session expired): as RabbitMQ returns a
//! dead consumer's unacknowledged messages to its queue, they go, deliveries not yet
//! acknowledged first, to another member of its queue group, or to its durable name's keeping
//! until the next subscriber of that name takes them over; otherwise they are dropped and
//! counted (`orphan_drops`). Messages still on their way to a subscription that just ended
//! follow the same path.

use crate::core::Core;
use crate::durable::{Bind, Refused, KEPT_SID};
use crate::groups::QueueGroup;
use crate::mailbox::{Held, Mailbox, SubQueue};
use crate::stats::Losses;
use crate::subscriptions::SubRef;
use mitto::proto::{Frame, Subject};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Where an ending subscription's queue is.
enum Source<'a> {
    /// Still in its mailbox.
    In(&'a Mailbox),
    /// Already taken out.
    Taken(Box<SubQueue>),
}

impl Source<'_> {
    /// An empty queue with the same settings.
    fn like(&self, sid: u32) -> Option<SubQueue> {
        match self {
            Source::In(m) => m.like(sid),
            Source::Taken(sq) => Some(sq.empty_like()),
        }
    }

    fn take(self, sid: u32) -> Option<SubQueue> {
        match self {
            Source::In(m) => m.remove_sub(sid),
            Source::Taken(sq) => Some(*sq),
        }
    }
}

impl Core {
    /// Subscription `sid` of connection `conn` ends now (UNSUBSCRIBE, or its slow-consumer
    /// policy); returns its filter, `None` if unknown.
    pub(crate) fn end_subscription(
        &self,
        conn: u64,
        mailbox: &Mailbox,
        sid: u32,
    ) -> Option<String> {
        let info = mailbox.subs().into_iter().find(|s| s.sid == sid)?;
        self.settle(conn, sid, &info.filter, info.durable, Source::In(mailbox));
        Some(info.filter)
    }

    /// Every subscription of a connection that went away ends.
    pub(crate) fn end_all(&self, conn: u64, mailbox: &Mailbox) {
        for info in mailbox.subs() {
            self.settle(
                conn,
                info.sid,
                &info.filter,
                info.durable,
                Source::In(mailbox),
            );
        }
    }

    /// A subscription already taken out of its mailbox ended (it reached its auto-unsubscribe
    /// count).
    pub(crate) fn end_taken(&self, conn: u64, sid: u32, sq: Box<SubQueue>) {
        let (filter, durable) = (sq.filter.clone(), sq.durable.clone());
        self.settle(conn, sid, &filter, durable, Source::Taken(sq));
    }

    /// Takes subscription `sid` out of the index and out of its mailbox, in the order that
    /// loses nothing in between, and rehomes what it held.
    fn settle(
        &self,
        conn: u64,
        sid: u32,
        filter: &str,
        durable: Option<Arc<str>>,
        src: Source<'_>,
    ) {
        if let (Some(key), Some(like)) = (durable, src.like(sid)) {
            // The keeping mailbox is subscribed before the ending subscription is unsubscribed,
            // so that a message published meanwhile reaches one of them.
            let kept_conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
            let (tx, _) = tokio::sync::mpsc::unbounded_channel();
            let kept = Arc::new(Mailbox::new(
                tx,
                self.cfg.max_pending_bytes,
                self.stats.losses.clone(),
            ));
            kept.add_sub(KEPT_SID, like);
            let kept_ref = SubRef {
                conn: kept_conn,
                sid: KEPT_SID,
                queue: None,
                durable: Some(key.clone()),
                mailbox: kept.clone(),
            };
            self.subscribe(filter, kept_ref);
            let expires = Instant::now() + Duration::from_millis(self.cfg.durable_ttl_ms);
            if self
                .durables
                .keep(&key, (conn, sid), kept_conn, kept.clone(), expires)
            {
                self.unsubscribe(filter, conn, sid);
                if let Some(sq) = src.take(sid) {
                    if let Err(back) = kept.absorb(KEPT_SID, sq.into_held()) {
                        // Taken over already: the new holder gets them.
                        for h in back {
                            self.to_durable(&key, h);
                        }
                    }
                }
                return;
            }
            // It did not hold the name (another subscription took it over meanwhile).
            self.unsubscribe(filter, kept_conn, KEPT_SID);
        }
        self.unsubscribe(filter, conn, sid);
        let Some(sq) = src.take(sid) else {
            return;
        };
        let queue = QueueGroup::of(filter, sq.queue.clone());
        let held = sq.into_held();
        if held.is_empty() {
            return;
        }
        let Some(queue) = queue else {
            Losses::add(&self.stats.losses.orphaned, held.len() as u64);
            return;
        };
        let mut members: Vec<SubRef> = Vec::new();
        let mut last: Option<Subject> = None;
        for h in held {
            // One lookup per subject, not per message.
            if last
                .as_ref()
                .is_none_or(|l| l.as_bytes() != h.f.subject.as_bytes())
            {
                members = self.group_members(h.f.subject.as_str(), &queue, conn, sid);
                last = Some(h.f.subject.clone());
            }
            self.hand_to(&members, h);
        }
    }

    /// Gives a message to whoever holds durable name `key` now.
    fn to_durable(&self, key: &str, h: Held) {
        let holders: Vec<SubRef> = self
            .matching(h.f.subject.as_str())
            .into_iter()
            .filter(|r| r.durable.as_deref() == Some(key))
            .collect();
        self.hand_to(&holders, h);
    }

    /// The members of queue group `queue` that a message on `subject` may go to, other than
    /// subscription `sid` of `conn`.
    fn group_members(&self, subject: &str, queue: &QueueGroup, conn: u64, sid: u32) -> Vec<SubRef> {
        self.matching(subject)
            .into_iter()
            .filter(|r| r.queue.as_deref() == Some(queue) && !(r.conn == conn && r.sid == sid))
            .collect()
    }

    /// Gives a moved message to one of `members` (in turn); counts it lost if none is left.
    fn hand_to(&self, members: &[SubRef], mut h: Held) {
        let start = self.turn();
        for i in 0..members.len() {
            let r = &members[(start + i) % members.len()];
            match r.mailbox.push_held(r.sid, h) {
                Ok(()) => return,
                Err(back) => h = *back,
            }
        }
        Losses::add(&self.stats.losses.orphaned, 1);
    }

    /// A message was on its way to subscription `t` when it ended: another member of its queue
    /// group, or whoever holds its durable name now, takes it.
    pub(crate) fn reroute(&self, t: &SubRef, f: Frame, born: Option<Instant>) {
        if t.queue.is_none() && t.durable.is_none() {
            return;
        }
        let others: Vec<SubRef> = self
            .matching(f.subject.as_str())
            .into_iter()
            .filter(|r| !(r.conn == t.conn && r.sid == t.sid))
            .filter(|r| match (&t.durable, &t.queue) {
                (Some(k), _) => r.durable.as_deref() == Some(&**k),
                (None, q) => r.queue == *q,
            })
            .collect();
        self.hand_to(
            &others,
            Held {
                f,
                born,
                attempts: 0,
            },
        );
    }

    /// Subscription `sid` (already in `mailbox`, not yet in the index) takes durable name
    /// `key`: a new name, or one whose messages were kept, which it takes over.
    pub(crate) fn bind_durable(
        &self,
        r: SubRef,
        key: &Arc<str>,
        user: &str,
        filter: &str,
    ) -> Result<(), Refused> {
        let bind = self
            .durables
            .bind(key, user, filter, r.conn, r.sid, self.cfg.max_durables)?;
        let (mailbox, sid) = (r.mailbox.clone(), r.sid);
        // Subscribed before the kept subscription is unsubscribed: nothing published meanwhile
        // is lost, and what was on its way to the kept one comes here.
        self.subscribe(filter, r);
        if let Bind::TakeOver {
            conn,
            mailbox: kept,
        } = bind
        {
            self.unsubscribe(filter, conn, KEPT_SID);
            if let Some(sq) = kept.remove_sub(KEPT_SID) {
                if let Err(back) = mailbox.absorb(sid, sq.into_held()) {
                    for h in back {
                        self.to_durable(key, h);
                    }
                }
            }
        }
        Ok(())
    }

    /// Drops the durable names kept past `durable_ttl_ms`, and their messages (counted).
    pub(crate) fn expire_durables(&self, now: Instant) {
        for (filter, conn, mailbox) in self.durables.expire(now) {
            self.unsubscribe(&filter, conn, KEPT_SID);
            if let Some(sq) = mailbox.remove_sub(KEPT_SID) {
                Losses::add(&self.stats.losses.orphaned, sq.into_held().len() as u64);
            }
        }
    }
}
