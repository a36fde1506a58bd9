//! Durable subscriptions (the `durable` name of SUBSCRIBE's options, protocol 1.1), as NATS
//! JetStream durable consumers and RabbitMQ named queues are: the name, with the user that
//! subscribed, identifies a queue the broker keeps. While a subscription holds the name, the
//! messages go to it; when it ends without a session to keep it (its connection closed or
//! crashed, it unsubscribed), the broker keeps what it held (deliveries not yet acknowledged
//! first) and what keeps arriving, under the same bounds and policy, for `durable_ttl_ms`, and
//! the next subscription of the same name and user takes all of it over. One subscription holds
//! a name at a time.
//!
//! This table only says who holds each name; the messages are in mailboxes, moved by the
//! core (`rehome.rs`).

use crate::mailbox::Mailbox;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// The subscription id a kept durable subscription has in its mailbox.
pub(crate) const KEPT_SID: u32 = 1;

/// The key of a durable name: the user's and the name, which cannot contain a NUL.
pub(crate) fn key(user: &str, name: &str) -> Arc<str> {
    format!("{user}\u{0}{name}").into()
}

enum State {
    /// A subscription holds the name (its connection may be a detached session).
    Bound { conn: u64, sid: u32 },
    /// No subscription holds it: the broker keeps its messages in `mailbox`, subscribed in the
    /// index as connection `conn`, subscription [`KEPT_SID`], until `expires`.
    Kept {
        conn: u64,
        mailbox: Arc<Mailbox>,
        expires: Instant,
    },
}

struct Entry {
    filter: String,
    user: String,
    state: State,
}

/// What a SUBSCRIBE naming a durable subscription gets.
pub(crate) enum Bind {
    /// A new durable name.
    Fresh,
    /// The name's kept messages, to take over: unsubscribe `conn`'s [`KEPT_SID`] and take its
    /// queue out of `mailbox`.
    TakeOver { conn: u64, mailbox: Arc<Mailbox> },
}

/// Why a SUBSCRIBE cannot hold a durable name.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Another subscription holds it.
    InUse,
    /// The name was made with another filter.
    OtherFilter(String),
    /// The user has this many durable names already.
    TooMany(usize),
}

impl Refused {
    /// The ERROR status and reason answering a SUBSCRIBE for durable name `name`.
    pub(crate) fn answer(&self, name: &str) -> (mitto::proto::Status, String) {
        use mitto::proto::Status;
        match self {
            Refused::InUse => (
                Status::ALREADY_EXISTS,
                format!("durable subscription {name} has a subscriber"),
            ),
            Refused::OtherFilter(other) => (
                Status::ALREADY_EXISTS,
                format!("durable subscription {name} exists for {other}"),
            ),
            Refused::TooMany(n) => (
                Status::QUOTA_EXCEEDED,
                format!("this user has its maximum of {n} durable subscriptions"),
            ),
        }
    }
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<Arc<str>, Entry>,
    per_user: HashMap<String, usize>,
}

impl Inner {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.by_key.remove(key)?;
        if let Some(n) = self.per_user.get_mut(&e.user) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&e.user);
            }
        }
        Some(e)
    }
}

/// Who holds each durable name.
#[derive(Default)]
pub(crate) struct Durables(Mutex<Inner>);

impl Durables {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscription `sid` of connection `conn` asks for durable name `key` of `user` with
    /// `filter`; at most `max` names per user.
    pub(crate) fn bind(
        &self,
        key: &Arc<str>,
        user: &str,
        filter: &str,
        conn: u64,
        sid: u32,
        max: usize,
    ) -> Result<Bind, Refused> {
        let mut m = self.lock();
        match m.by_key.get_mut(key) {
            Some(e) if e.filter != filter => Err(Refused::OtherFilter(e.filter.clone())),
            Some(Entry {
                state: State::Bound { .. },
                ..
            }) => Err(Refused::InUse),
            Some(e) => {
                let old = std::mem::replace(&mut e.state, State::Bound { conn, sid });
                match old {
                    State::Kept { conn, mailbox, .. } => Ok(Bind::TakeOver { conn, mailbox }),
                    State::Bound { .. } => Ok(Bind::Fresh),
                }
            }
            None => {
                let n = m.per_user.get(user).copied().unwrap_or(0);
                if n >= max {
                    return Err(Refused::TooMany(n));
                }
                *m.per_user.entry(user.to_owned()).or_default() += 1;
                m.by_key.insert(
                    key.clone(),
                    Entry {
                        filter: filter.to_owned(),
                        user: user.to_owned(),
                        state: State::Bound { conn, sid },
                    },
                );
                Ok(Bind::Fresh)
            }
        }
    }

    /// The subscription holding `key` (`conn`, `sid`) ended: its messages are kept in
    /// `mailbox` (subscribed as `kept_conn`) until `expires`. False if that subscription did
    /// not hold the name.
    pub(crate) fn keep(
        &self,
        key: &str,
        (conn, sid): (u64, u32),
        kept_conn: u64,
        mailbox: Arc<Mailbox>,
        expires: Instant,
    ) -> bool {
        let mut m = self.lock();
        match m.by_key.get_mut(key) {
            Some(e) if matches!(e.state, State::Bound { conn: c, sid: s } if c == conn && s == sid) =>
            {
                e.state = State::Kept {
                    conn: kept_conn,
                    mailbox,
                    expires,
                };
                true
            }
            _ => false,
        }
    }

    /// Removes the kept names whose time ran out: their filter, connection and mailbox.
    pub(crate) fn expire(&self, now: Instant) -> Vec<(String, u64, Arc<Mailbox>)> {
        let mut m = self.lock();
        let due: Vec<Arc<str>> = m
            .by_key
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Kept { expires, .. } if expires <= now))
            .map(|(k, _)| k.clone())
            .collect();
        due.iter()
            .filter_map(|k| m.remove(k))
            .filter_map(|e| match e.state {
                State::Kept { conn, mailbox, .. } => Some((e.filter, conn, mailbox)),
                State::Bound { .. } => None,
            })
            .collect()
    }

    /// The mailboxes of every kept name.
    pub(crate) fn kept(&self) -> Vec<Arc<Mailbox>> {
        self.lock()
            .by_key
            .values()
            .filter_map(|e| match &e.state {
                State::Kept { mailbox, .. } => Some(mailbox.clone()),
                State::Bound { .. } => None,
            })
            .collect()
    }

    /// How many durable names exist.
    pub(crate) fn len(&self) -> usize {
        self.lock().by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Losses;
    use std::time::Duration;

    fn mailbox() -> Arc<Mailbox> {
        let (tx, _) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Mailbox::new(tx, 1 << 20, Arc::new(Losses::default())))
    }

    #[test]
    fn one_holder_per_name_and_user_then_kept_then_taken_over_or_expired() {
        let d = Durables::default();
        let k = key("alice", "billing");
        assert!(matches!(
            d.bind(&k, "alice", "orders.>", 1, 1, 10),
            Ok(Bind::Fresh)
        ));
        assert!(matches!(
            d.bind(&k, "alice", "orders.>", 2, 1, 10),
            Err(Refused::InUse)
        ));
        assert!(matches!(
            d.bind(&k, "alice", "orders.*", 2, 1, 10),
            Err(Refused::OtherFilter(_))
        ));
        // Another user's name of the same spelling is another durable subscription.
        let other = key("bob", "billing");
        assert!(matches!(
            d.bind(&other, "bob", "x", 3, 1, 10),
            Ok(Bind::Fresh)
        ));
        assert!(
            !d.keep(&k, (9, 9), 100, mailbox(), Instant::now()),
            "not the holder"
        );
        let later = Instant::now() + Duration::from_secs(60);
        assert!(d.keep(&k, (1, 1), 100, mailbox(), later));
        assert_eq!(d.kept().len(), 1);
        match d.bind(&k, "alice", "orders.>", 2, 5, 10) {
            Ok(Bind::TakeOver { conn, .. }) => assert_eq!(conn, 100),
            _ => panic!("the kept messages are taken over"),
        }
        assert!(d.kept().is_empty());
        assert!(d.keep(&k, (2, 5), 101, mailbox(), Instant::now()));
        let gone = d.expire(Instant::now() + Duration::from_millis(1));
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].0.as_str(), gone[0].1), ("orders.>", 101));
        assert_eq!(d.len(), 1, "bob's remains");
        // At most `max` names per user.
        assert!(matches!(
            d.bind(&key("bob", "b2"), "bob", "x", 3, 2, 1),
            Err(Refused::TooMany(1))
        ));
        assert!(d.keep(&other, (3, 1), 102, mailbox(), Instant::now()));
        assert_eq!(d.expire(Instant::now() + Duration::from_millis(1)).len(), 1);
        assert_eq!(d.len(), 0);
        assert!(matches!(
            d.bind(&key("bob", "b2"), "bob", "x", 3, 2, 1),
            Ok(Bind::Fresh)
        ));
    }
}
