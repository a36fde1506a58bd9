//! Sessions of clients whose connection was lost, kept for them to resume (PROTOCOL.md 8.5).
//! A session belongs to the user that created it: sessions are looked up by user and client
//! id, so another user with the same client id never sees, resumes or replaces it, and the
//! session id is compared in constant time.
//!
//! What is kept is bounded: at most `max_detached_sessions` sessions, at most
//! `max_detached_sessions_per_user` of one user, and at most `max_detached_bytes` queued for
//! them all; past a bound the oldest session goes first (as an expired one does).

use crate::mailbox::Mailbox;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;
use tokio::time::Instant;

/// Whose session: the authenticated user (empty on a broker without users) and the client id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey {
    pub(crate) user: String,
    pub(crate) client_id: String,
}

/// A live connection's session: its key and id.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) key: SessionKey,
    pub(crate) token: String,
}

impl Session {
    /// A new session with a fresh id: 128 bits from a cryptographic generator, so that one
    /// session id says nothing about another.
    pub(crate) fn fresh(key: SessionKey) -> Session {
        Session {
            key,
            token: format!("{:032x}", rand::random::<u128>()),
        }
    }
}

/// A session whose connection went away, kept for resumption.
pub(crate) struct Detached {
    pub(crate) conn: u64,
    pub(crate) token: String,
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) expires: Instant,
}

/// How many detached sessions may be kept, and how much they may hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SessionLimits {
    pub(crate) max: usize,
    pub(crate) max_per_user: usize,
    pub(crate) max_bytes: usize,
}

/// The detached sessions, each with its age (a counter: the lowest was detached first).
pub(crate) struct Sessions {
    kept: Mutex<HashMap<SessionKey, (u64, Detached)>>,
    next: std::sync::atomic::AtomicU64,
    limits: SessionLimits,
}

impl Sessions {
    pub(crate) fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            kept: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
            limits,
        }
    }

    /// Keeps `d` under `key`; returns the sessions that go for it: the one it replaces (the
    /// same user's, same client id), then the oldest past the count bounds.
    pub(crate) fn keep(&self, key: SessionKey, d: Detached) -> (Option<Detached>, Vec<Detached>) {
        let Ok(mut kept) = self.kept.lock() else {
            return (None, Vec::new());
        };
        let age = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let user = key.user.clone();
        let replaced = kept.insert(key, (age, d)).map(|(_, d)| d);
        let mut evicted = Vec::new();
        let of_user = |k: &SessionKey| k.user == user;
        while kept.keys().filter(|k| of_user(k)).count() > self.limits.max_per_user {
            evicted.extend(oldest(&mut kept, of_user));
        }
        while kept.len() > self.limits.max {
            evicted.extend(oldest(&mut kept, |_| true));
        }
        (replaced, evicted)
    }

    /// Ends the oldest sessions while what they all hold is over `max_bytes`; returns them and
    /// what the rest hold.
    pub(crate) fn trim(&self) -> (Vec<Detached>, usize) {
        let Ok(mut kept) = self.kept.lock() else {
            return (Vec::new(), 0);
        };
        let mut by_age: Vec<(u64, SessionKey, usize)> = kept
            .iter()
            .map(|(k, (age, d))| (*age, k.clone(), d.mailbox.held_bytes()))
            .collect();
        by_age.sort_by_key(|e| e.0);
        let mut total: usize = by_age.iter().map(|e| e.2).sum();
        let mut evicted = Vec::new();
        for (_, key, bytes) in by_age {
            if total <= self.limits.max_bytes {
                break;
            }
            total -= bytes;
            evicted.extend(kept.remove(&key).map(|(_, d)| d));
        }
        (evicted, total)
    }

    /// How many sessions are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.kept.lock().map(|k| k.len()).unwrap_or(0)
    }

    /// Takes the session back if `token` is its id and it has not expired.
    pub(crate) fn take(&self, key: &SessionKey, token: &str, now: Instant) -> Option<Detached> {
        let mut kept = self.kept.lock().ok()?;
        let (_, d) = kept.get(key)?;
        let same = bool::from(d.token.as_bytes().ct_eq(token.as_bytes()));
        if !same || d.expires <= now {
            return None;
        }
        kept.remove(key).map(|(_, d)| d)
    }

    /// Messages the kept sessions hold (what a broker that stops now loses).
    pub(crate) fn outstanding(&self) -> usize {
        self.kept
            .lock()
            .map(|k| k.values().map(|(_, d)| d.mailbox.outstanding()).sum())
            .unwrap_or(0)
    }

    /// Removes and returns the sessions that expired by `now`.
    pub(crate) fn expired(&self, now: Instant) -> Vec<Detached> {
        let Ok(mut kept) = self.kept.lock() else {
            return Vec::new();
        };
        let gone: Vec<SessionKey> = kept
            .iter()
            .filter(|(_, (_, d))| d.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        gone.iter()
            .filter_map(|k| kept.remove(k).map(|(_, d)| d))
            .collect()
    }
}

/// Removes the oldest session whose key passes `pick`.
fn oldest(
    kept: &mut HashMap<SessionKey, (u64, Detached)>,
    pick: impl Fn(&SessionKey) -> bool,
) -> Option<Detached> {
    let key = kept
        .iter()
        .filter(|(k, _)| pick(k))
        .min_by_key(|(_, (age, _))| *age)
        .map(|(k, _)| k.clone())?;
    kept.remove(&key).map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(user: &str) -> SessionKey {
        client(user, "c1")
    }

    fn client(user: &str, id: &str) -> SessionKey {
        SessionKey {
            user: user.into(),
            client_id: id.into(),
        }
    }

    const ROOMY: SessionLimits = SessionLimits {
        max: 100,
        max_per_user: 100,
        max_bytes: usize::MAX,
    };

    fn detached(token: &str, expires: Instant) -> Detached {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        Detached {
            conn: 1,
            token: token.into(),
            mailbox: Arc::new(Mailbox::new(tx, 1024, Default::default())),
            expires,
        }
    }

    #[test]
    fn a_session_is_taken_only_by_its_user_with_its_id_before_it_expires() {
        let s = Sessions::new(ROOMY);
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        assert!(s.keep(key("alice"), detached("t1", later)).0.is_none());
        // Another user's session under the same client id is another session.
        assert!(s.keep(key("eve"), detached("t2", later)).0.is_none());
        assert!(s.take(&key("eve"), "t1", now).is_none());
        assert!(s.take(&key("alice"), "t2", now).is_none());
        assert!(s.take(&key("alice"), "", now).is_none());
        assert!(s.take(&key("alice"), "t1", later).is_none(), "expired");
        assert_eq!(s.take(&key("alice"), "t1", now).unwrap().token, "t1");
        assert!(s.take(&key("alice"), "t1", now).is_none(), "taken once");
        assert_eq!(s.expired(later).len(), 1, "eve's");
    }

    #[test]
    fn past_the_count_bounds_the_oldest_session_goes_first() {
        let s = Sessions::new(SessionLimits {
            max: 3,
            max_per_user: 2,
            max_bytes: usize::MAX,
        });
        let later = Instant::now() + Duration::from_secs(60);
        let keep = |u: &str, id: &str, t: &str| s.keep(client(u, id), detached(t, later));
        assert!(keep("a", "1", "a1").1.is_empty());
        assert!(keep("a", "2", "a2").1.is_empty());
        let (_, gone) = keep("a", "3", "a3");
        let tokens: Vec<_> = gone.iter().map(|d| d.token.clone()).collect();
        assert_eq!(tokens, ["a1"], "the user's oldest");
        assert!(keep("b", "1", "b1").1.is_empty());
        let (_, gone) = keep("c", "1", "c1");
        let tokens: Vec<_> = gone.iter().map(|d| d.token.clone()).collect();
        assert_eq!(tokens, ["a2"], "the oldest of all");
        assert_eq!(s.len(), 3);
        // Replacing a session is no eviction.
        let (replaced, gone) = keep("c", "1", "c1'");
        assert_eq!(replaced.map(|d| d.token), Some("c1".into()));
        assert!(gone.is_empty());
    }

    /// A detached session whose mailbox holds one queued message of `payload` bytes.
    fn holding(token: &str, payload: usize) -> (Detached, usize) {
        use crate::mailbox::SubQueue;
        use mitto::proto::{Frame, SlowConsumerPolicy, Subject};
        let d = detached(token, Instant::now() + Duration::from_secs(60));
        let q = SubQueue::new("x".into(), None, 0, 10, SlowConsumerPolicy::DropOldest);
        d.mailbox.add_sub(1, q);
        let f = Frame::event(1, 1, Subject::new("x").unwrap(), vec![0u8; payload]);
        let len = f.encoded_len();
        d.mailbox.push_event(1, f, None);
        (d, len)
    }

    #[test]
    fn past_the_byte_bound_the_oldest_sessions_go_until_the_rest_fit() {
        let (a, len) = holding("a", 500);
        let s = Sessions::new(SessionLimits {
            max_bytes: 2 * len,
            ..ROOMY
        });
        s.keep(client("u", "a"), a);
        s.keep(client("u", "b"), holding("b", 500).0);
        assert!(s.trim().0.is_empty(), "two fit");
        s.keep(client("u", "c"), holding("c", 500).0);
        let (gone, held) = s.trim();
        let tokens: Vec<_> = gone.iter().map(|d| d.token.clone()).collect();
        assert_eq!(tokens, ["a"], "the oldest");
        assert_eq!(held, 2 * len);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn session_ids_are_fresh_128_bit_values() {
        let a = Session::fresh(key("a")).token;
        let b = Session::fresh(key("a")).token;
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
