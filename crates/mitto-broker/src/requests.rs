//! Requests and service calls in flight through the broker, and the one timer queue that ends
//! them at their deadlines.
//!
//! [`Timers`] is sans-IO: deadlines go in, [`Timers::poll_timeout`] says when the next one is
//! due and [`Timers::expire`] takes those due by a given time, so it is tested with virtual
//! time. [`Requests`] is the table of what is in flight, keyed so that a connection reaches only
//! its own (PROTOCOL.md 10.1, 11.5): a call forwarded to a service instance by (instance
//! connection, call id), a request delivered to subscribers by the random token of its inbox
//! (with the connections it was delivered to, the only ones whose reply is taken), and both by
//! (caller connection, caller's id) for the caller's CANCEL, STREAM and CREDIT. One task sleeps
//! until the next deadline (see `calls::deadline_loop`); nothing is spawned per request.

use crate::groups::{self, QueueGroup};
use crate::mailbox::Mailbox;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Bit 63 marks ids of calls the broker opens on an instance's connection (PROTOCOL.md 10.1).
pub(crate) const BROKER_CALL_BIT: u64 = 1 << 63;

/// A registered service instance.
#[derive(Clone, Debug)]
pub(crate) struct ServiceRef {
    pub(crate) conn: u64,
    pub(crate) sid: u32,
    /// Most calls in flight to this instance (REGISTER's `max_pending`).
    pub(crate) max_pending: u32,
    pub(crate) queue: Option<Arc<QueueGroup>>,
    pub(crate) mailbox: Arc<Mailbox>,
    /// Registered by the broker's federation: a proxy of another broker's service.
    pub(crate) fabric: bool,
}

/// A timer's place in [`Timers`]: its deadline and a sequence number (for equal deadlines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerId(Instant, u64);

/// Deadlines in order, each with a key; no clock of its own.
#[derive(Debug)]
pub(crate) struct Timers<K> {
    due: BTreeMap<TimerId, K>,
    next: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            due: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<K> Timers<K> {
    /// Adds `key`, due at `at`.
    pub(crate) fn insert(&mut self, at: Instant, key: K) -> TimerId {
        let id = TimerId(at, self.next);
        self.next += 1;
        self.due.insert(id, key);
        id
    }

    /// Removes a timer that has not fired.
    pub(crate) fn cancel(&mut self, id: TimerId) -> Option<K> {
        self.due.remove(&id)
    }

    /// When the next timer is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.due.first_key_value().map(|(id, _)| id.0)
    }

    /// Removes and returns the keys due by `now`, earliest first.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<K> {
        let mut out = Vec::new();
        while let Some(e) = self.due.first_entry() {
            if e.key().0 > now {
                break;
            }
            out.push(e.remove());
        }
        out
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.due.len()
    }
}

/// Who waits for an answer: the caller's connection, its call id and its mailbox.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) conn: u64,
    pub(crate) id: u64,
    pub(crate) mailbox: Arc<Mailbox>,
}

/// A call forwarded to a service instance.
struct Call {
    caller: Caller,
    inst: Arc<Mailbox>,
    inst_sid: u32,
    timer: TimerId,
}

/// A request delivered to subscribers, waiting for the first reply to its inbox.
struct Waiting {
    caller: Caller,
    /// The connections it was delivered to, sorted: the only ones whose reply is taken.
    recipients: Box<[u64]>,
    timer: TimerId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    /// (instance connection, broker's call id).
    Call(u64, u64),
    /// An inbox's token.
    Inbox(u128),
}

/// A request or call that ended without an answer (deadline, a party gone): what the broker
/// tells the parties.
pub(crate) enum Ended {
    /// A service call: the caller, and the instance with the broker's id for the call.
    Call {
        caller: Caller,
        inst: Arc<Mailbox>,
        inst_conn: u64,
        id: u64,
    },
    /// A request to subscribers.
    Inbox { caller: Caller },
}

/// Why a request is not let in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The caller has a call with this id in flight.
    Duplicate,
    /// The caller has its maximum of requests in flight.
    CallerFull(u32),
    /// Every matching instance has its maximum of calls in flight.
    InstancesFull,
}

/// Why a reply to an inbox is not taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReplyRefused {
    /// No request is waiting there (it ended, or never was).
    NoRequest,
    /// The request was not delivered to the replying connection.
    NotDelivered,
}

/// A caller's frame about one of its calls: where it goes.
pub(crate) enum ToCallee {
    /// To the instance, under the broker's id.
    Instance { inst: Arc<Mailbox>, id: u64 },
    /// The request went to subscribers (nothing to forward).
    Subscribers,
}

#[derive(Default)]
struct Table {
    calls: HashMap<(u64, u64), Call>,
    inboxes: HashMap<u128, Waiting>,
    by_caller: HashMap<(u64, u64), Key>,
    per_instance: HashMap<(u64, u32), u32>,
    per_caller: HashMap<u64, u32>,
    timers: Timers<Key>,
}

fn decrement<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: K) {
    if let Some(n) = m.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            m.remove(&k);
        }
    }
}

impl Table {
    fn admit(&self, caller: &Caller, max: u32) -> Result<(), Refused> {
        if self.by_caller.contains_key(&(caller.conn, caller.id)) {
            return Err(Refused::Duplicate);
        }
        if self.per_caller.get(&caller.conn).copied().unwrap_or(0) >= max {
            return Err(Refused::CallerFull(max));
        }
        Ok(())
    }

    fn open(&mut self, caller: &Caller, key: Key, due: Instant) -> TimerId {
        self.by_caller.insert((caller.conn, caller.id), key);
        *self.per_caller.entry(caller.conn).or_default() += 1;
        self.timers.insert(due, key)
    }

    fn remove(&mut self, key: Key) -> Option<Ended> {
        let (caller, timer, ended) = match key {
            Key::Call(inst_conn, id) => {
                let c = self.calls.remove(&(inst_conn, id))?;
                decrement(&mut self.per_instance, (inst_conn, c.inst_sid));
                let ended = Ended::Call {
                    caller: c.caller.clone(),
                    inst: c.inst,
                    inst_conn,
                    id,
                };
                (c.caller, c.timer, ended)
            }
            Key::Inbox(token) => {
                let w = self.inboxes.remove(&token)?;
                let ended = Ended::Inbox {
                    caller: w.caller.clone(),
                };
                (w.caller, w.timer, ended)
            }
        };
        self.timers.cancel(timer);
        self.by_caller.remove(&(caller.conn, caller.id));
        decrement(&mut self.per_caller, caller.conn);
        Some(ended)
    }
}

/// Everything in flight, and the timer queue.
pub(crate) struct Requests {
    table: Mutex<Table>,
    /// Wakes the deadline task when a new deadline comes before the ones it sleeps for.
    wake: Notify,
    /// `_INBOX.<random>.`: what every broker inbox starts with (the random token follows).
    inbox_prefix: String,
    max_per_connection: u32,
}

impl Requests {
    pub(crate) fn new(max_per_connection: u32) -> Requests {
        Requests {
            table: Mutex::new(Table::default()),
            wake: Notify::new(),
            inbox_prefix: format!("_INBOX.{:016x}.", rand::random::<u64>()),
            max_per_connection,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent at every step, so a panic elsewhere does not spoil it.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a timer; wakes the deadline task if it is now the first.
    fn arm(&self, t: &mut Table, caller: &Caller, key: Key, due: Instant) -> TimerId {
        let id = t.open(caller, key, due);
        if t.timers.poll_timeout() == Some(due) {
            self.wake.notify_one();
        }
        id
    }

    /// Whether `subject` is under the broker's inbox prefix.
    pub(crate) fn is_inbox(&self, subject: &str) -> bool {
        subject.starts_with(&self.inbox_prefix)
    }

    /// For a subject under the broker's inbox prefix, its token (`None` inside if it names no
    /// possible inbox); `None` for any other subject.
    #[inline]
    pub(crate) fn inbox_token(&self, subject: &[u8]) -> Option<Option<u128>> {
        if subject.first() != Some(&b'_') || !subject.starts_with(self.inbox_prefix.as_bytes()) {
            return None;
        }
        let token = &subject[self.inbox_prefix.len()..];
        let parsed = (token.len() == 32 && token.iter().all(u8::is_ascii_hexdigit))
            .then(|| std::str::from_utf8(token).ok())
            .flatten()
            .and_then(|s| u128::from_str_radix(s, 16).ok());
        Some(parsed)
    }

    /// Opens a call to one instance of `found` (groups in turn, members with room); returns
    /// the instance and the broker's id for the call: bit 63 and 63 random bits.
    pub(crate) fn open_call(
        &self,
        caller: Caller,
        found: &[ServiceRef],
        turn: usize,
        due: Instant,
    ) -> Result<(ServiceRef, u64), Refused> {
        let mut t = self.lock();
        t.admit(&caller, self.max_per_connection)?;
        let room = |r: &ServiceRef| {
            t.per_instance.get(&(r.conn, r.sid)).copied().unwrap_or(0) < r.max_pending.max(1)
        };
        let inst = groups::choose(found, |r| r.queue.as_deref(), room, turn)
            .cloned()
            .ok_or(Refused::InstancesFull)?;
        let id = loop {
            let id = BROKER_CALL_BIT | (rand::random::<u64>() >> 1);
            if !t.calls.contains_key(&(inst.conn, id)) {
                break id;
            }
        };
        let key = Key::Call(inst.conn, id);
        let timer = self.arm(&mut t, &caller, key, due);
        *t.per_instance.entry((inst.conn, inst.sid)).or_default() += 1;
        t.calls.insert(
            (inst.conn, id),
            Call {
                caller,
                inst: inst.mailbox.clone(),
                inst_sid: inst.sid,
                timer,
            },
        );
        Ok((inst, id))
    }

    /// Opens a request to subscribers on the connections `recipients`; returns its inbox's
    /// token and subject (a fresh 128-bit random token).
    pub(crate) fn open_inbox(
        &self,
        caller: Caller,
        mut recipients: Vec<u64>,
        due: Instant,
    ) -> Result<(u128, String), Refused> {
        recipients.sort_unstable();
        recipients.dedup();
        let recipients = recipients.into_boxed_slice();
        let mut t = self.lock();
        t.admit(&caller, self.max_per_connection)?;
        let token = loop {
            let token = rand::random::<u128>();
            if !t.inboxes.contains_key(&token) {
                break token;
            }
        };
        let timer = self.arm(&mut t, &caller, Key::Inbox(token), due);
        t.inboxes.insert(
            token,
            Waiting {
                caller,
                recipients,
                timer,
            },
        );
        Ok((token, format!("{}{token:032x}", self.inbox_prefix)))
    }

    /// Ends a request that no subscriber took.
    pub(crate) fn forget_inbox(&self, token: u128) {
        self.lock().remove(Key::Inbox(token));
    }

    /// Takes connection `conn`'s reply to inbox `token`: the request ends, its caller is
    /// returned.
    pub(crate) fn take_reply(&self, token: u128, conn: u64) -> Result<Caller, ReplyRefused> {
        let mut t = self.lock();
        let w = t.inboxes.get(&token).ok_or(ReplyRefused::NoRequest)?;
        if w.recipients.binary_search(&conn).is_err() {
            return Err(ReplyRefused::NotDelivered);
        }
        match t.remove(Key::Inbox(token)) {
            Some(Ended::Inbox { caller }) => Ok(caller),
            _ => Err(ReplyRefused::NoRequest),
        }
    }

    /// An instance's RESPONSE (`ends`), STREAM or CREDIT about call `id`: its caller, if the
    /// call is in flight on the instance's connection `conn`.
    pub(crate) fn to_caller(&self, conn: u64, id: u64, ends: bool) -> Option<Caller> {
        let mut t = self.lock();
        let caller = t.calls.get(&(conn, id))?.caller.clone();
        if ends {
            t.remove(Key::Call(conn, id));
        }
        Some(caller)
    }

    /// A caller's CANCEL (`ends`), STREAM or CREDIT about its call `id`: where it goes, if the
    /// call is in flight for connection `conn`.
    pub(crate) fn to_callee(&self, conn: u64, id: u64, ends: bool) -> Option<ToCallee> {
        let mut t = self.lock();
        let key = *t.by_caller.get(&(conn, id))?;
        let to = match key {
            Key::Call(inst_conn, bid) => ToCallee::Instance {
                inst: t.calls.get(&(inst_conn, bid))?.inst.clone(),
                id: bid,
            },
            Key::Inbox(_) => ToCallee::Subscribers,
        };
        if ends {
            t.remove(key);
        }
        Some(to)
    }

    /// When the next deadline is due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.lock().timers.poll_timeout()
    }

    /// Ends what is due by `now`.
    pub(crate) fn expire(&self, now: Instant) -> Vec<Ended> {
        let mut t = self.lock();
        let due = t.timers.expire(now);
        due.into_iter().filter_map(|k| t.remove(k)).collect()
    }

    /// Completes when a deadline earlier than the known ones was added.
    pub(crate) fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Ends everything connection `conn` called or was called for.
    pub(crate) fn release(&self, conn: u64) -> Vec<Ended> {
        let mut t = self.lock();
        let calls = t
            .calls
            .iter()
            .filter(|((inst, _), c)| *inst == conn || c.caller.conn == conn)
            .map(|((inst, id), _)| Key::Call(*inst, *id));
        let inboxes = t
            .inboxes
            .iter()
            .filter(|(_, w)| w.caller.conn == conn)
            .map(|(token, _)| Key::Inbox(*token));
        let keys: Vec<Key> = calls.chain(inboxes).collect();
        keys.into_iter().filter_map(|k| t.remove(k)).collect()
    }

    /// Requests and calls in flight, and timers armed (equal unless the table is broken).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.calls.len() + t.inboxes.len(), t.timers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timers_fire_at_their_deadline_in_order_in_virtual_time() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        assert_eq!(t.poll_timeout(), None);
        t.insert(t0 + ms(300), "b");
        let a = t.insert(t0 + ms(100), "a");
        t.insert(t0 + ms(300), "c");
        let gone = t.insert(t0 + ms(200), "cancelled");
        assert_eq!(t.poll_timeout(), Some(t0 + ms(100)));
        assert_eq!(t.cancel(gone), Some("cancelled"));
        assert_eq!(t.cancel(gone), None);
        // Nothing is due a microsecond early; everything due fires at its deadline exactly.
        assert!(t.expire(t0 + ms(100) - Duration::from_micros(1)).is_empty());
        assert_eq!(t.expire(t0 + ms(100)), vec!["a"]);
        assert_eq!(t.cancel(a), None, "fired timers are gone");
        assert_eq!(t.poll_timeout(), Some(t0 + ms(300)));
        assert!(t.expire(t0 + ms(299)).is_empty());
        assert_eq!(
            t.expire(t0 + ms(1000)),
            vec!["b", "c"],
            "equal deadlines in order"
        );
        assert_eq!((t.poll_timeout(), t.len()), (None, 0));
        // A deadline already past fires at the next expiry.
        t.insert(t0, "past");
        assert_eq!(t.expire(t0 + ms(1)), vec!["past"]);
    }

    fn mailbox() -> Arc<Mailbox> {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Mailbox::new(tx, 1 << 20, Default::default()))
    }

    fn caller(conn: u64, id: u64) -> Caller {
        Caller {
            conn,
            id,
            mailbox: mailbox(),
        }
    }

    fn instance(conn: u64, max_pending: u32) -> ServiceRef {
        ServiceRef {
            conn,
            sid: 1,
            max_pending,
            queue: None,
            mailbox: mailbox(),
            fabric: false,
        }
    }

    #[test]
    fn a_call_is_reached_only_from_its_instance_and_its_caller() {
        let r = Requests::new(100);
        let due = Instant::now() + ms(1000);
        let (inst, id) = r
            .open_call(caller(1, 7), &[instance(2, 10)], 0, due)
            .unwrap();
        assert_eq!(inst.conn, 2);
        assert_ne!(id & BROKER_CALL_BIT, 0);
        let again = r.open_call(caller(1, 7), &[instance(2, 10)], 0, due);
        assert_eq!(again.unwrap_err(), Refused::Duplicate);
        // Another connection naming the id reaches nothing.
        assert!(r.to_caller(3, id, true).is_none());
        assert!(r.to_callee(3, 7, true).is_none());
        assert!(r.to_caller(1, id, false).is_none(), "not the caller either");
        // The instance's stream items go to the caller; its RESPONSE ends the call.
        assert_eq!(r.to_caller(2, id, false).unwrap().id, 7);
        assert_eq!(r.to_caller(2, id, true).unwrap().id, 7);
        assert!(r.to_caller(2, id, true).is_none());
        assert_eq!(r.counts(), (0, 0));
    }

    #[test]
    fn max_pending_and_the_per_connection_bound_are_kept() {
        let r = Requests::new(3);
        let due = Instant::now() + ms(1000);
        let one = [instance(2, 1)];
        let (_, first) = r.open_call(caller(1, 1), &one, 0, due).unwrap();
        assert_eq!(
            r.open_call(caller(1, 2), &one, 0, due).unwrap_err(),
            Refused::InstancesFull
        );
        r.to_caller(2, first, true);
        r.open_call(caller(1, 2), &one, 0, due).unwrap();
        r.open_inbox(caller(1, 3), vec![5], due).unwrap();
        r.open_inbox(caller(1, 4), vec![5], due).unwrap();
        assert_eq!(
            r.open_inbox(caller(1, 5), vec![5], due).unwrap_err(),
            Refused::CallerFull(3)
        );
        r.open_inbox(caller(9, 5), vec![5], due).unwrap();
        assert_eq!(r.release(1).len(), 3);
        assert_eq!(r.counts(), (1, 1));
    }

    #[test]
    fn an_inbox_takes_one_reply_from_a_recipient() {
        let r = Requests::new(100);
        let due = Instant::now() + ms(1000);
        let (token, subject) = r.open_inbox(caller(1, 9), vec![4, 5], due).unwrap();
        assert_eq!(r.inbox_token(subject.as_bytes()), Some(Some(token)));
        assert_eq!(r.inbox_token(b"_INBOX.x.y"), None);
        let bad = format!("{}zz", &subject[..subject.len() - 2]);
        assert_eq!(r.inbox_token(bad.as_bytes()), Some(None));
        let (other, _) = r.open_inbox(caller(1, 10), vec![4], due).unwrap();
        assert_ne!(token, other);
        assert!((token.abs_diff(other)) > 1 << 64, "not a counter");
        assert_eq!(
            r.take_reply(token, 6).unwrap_err(),
            ReplyRefused::NotDelivered
        );
        assert_eq!(
            r.take_reply(token, 1).unwrap_err(),
            ReplyRefused::NotDelivered
        );
        assert_eq!(r.take_reply(token, 5).unwrap().id, 9);
        assert_eq!(r.take_reply(token, 4).unwrap_err(), ReplyRefused::NoRequest);
        assert!(matches!(
            r.to_callee(1, 10, true),
            Some(ToCallee::Subscribers)
        ));
        assert_eq!(r.take_reply(other, 4).unwrap_err(), ReplyRefused::NoRequest);
        assert_eq!(r.counts(), (0, 0));
    }

    #[test]
    fn deadlines_end_requests_and_calls_exactly_when_due() {
        let r = Requests::new(100);
        let t0 = Instant::now();
        r.open_inbox(caller(1, 1), vec![2], t0 + ms(300)).unwrap();
        r.open_call(caller(1, 2), &[instance(2, 10)], 0, t0 + ms(100))
            .unwrap();
        let (answered, _) = r.open_inbox(caller(1, 3), vec![2], t0 + ms(50)).unwrap();
        r.take_reply(answered, 2).unwrap();
        assert_eq!(
            r.poll_timeout(),
            Some(t0 + ms(100)),
            "the answered one is gone"
        );
        assert!(r.expire(t0 + ms(99)).is_empty());
        let ended = r.expire(t0 + ms(100));
        assert!(matches!(&ended[..], [Ended::Call { caller, inst_conn: 2, .. }] if caller.id == 2));
        assert_eq!(r.poll_timeout(), Some(t0 + ms(300)));
        let ended = r.expire(t0 + ms(300));
        assert!(matches!(&ended[..], [Ended::Inbox { caller }] if caller.id == 1));
        assert_eq!((r.poll_timeout(), r.counts()), (None, (0, 0)));
    }
}
