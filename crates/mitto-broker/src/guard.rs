//! What holds back peers that have not been admitted: a bound on connections in their
//! handshake (a new one beyond it closes the oldest) and a growing pause before a refused
//! HELLO is answered, per peer address.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Connections in their handshake, oldest first.
#[derive(Debug)]
pub(crate) struct Handshakes {
    max: usize,
    inner: Mutex<HandshakesInner>,
}

#[derive(Debug, Default)]
struct HandshakesInner {
    next: u64,
    open: BTreeMap<u64, Arc<Notify>>,
}

/// One connection's place among those in their handshake; it leaves when dropped.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    gate: &'a Handshakes,
    id: u64,
    evicted: Arc<Notify>,
}

impl Handshakes {
    pub(crate) fn new(max: usize) -> Handshakes {
        Handshakes {
            max: max.max(1),
            inner: Mutex::new(HandshakesInner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HandshakesInner> {
        // Two plain maps: nothing a panic could leave half-changed that matters.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection enters; returns its ticket and whether the oldest one was closed to
    /// make room.
    pub(crate) fn enter(&self) -> (Ticket<'_>, bool) {
        let mut g = self.lock();
        let mut evicted_one = false;
        while g.open.len() >= self.max {
            match g.open.pop_first() {
                Some((_, oldest)) => {
                    oldest.notify_one();
                    evicted_one = true;
                }
                None => break,
            }
        }
        g.next += 1;
        let id = g.next;
        let evicted = Arc::new(Notify::new());
        g.open.insert(id, evicted.clone());
        (
            Ticket {
                gate: self,
                id,
                evicted,
            },
            evicted_one,
        )
    }

    /// How many connections are in their handshake (an evicted one has left already, even
    /// before its task has run).
    pub(crate) fn open(&self) -> usize {
        self.lock().open.len()
    }
}

impl Ticket<'_> {
    /// Completes when a newer connection took this one's place.
    pub(crate) async fn evicted(&self) {
        self.evicted.notified().await
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.gate.lock().open.remove(&self.id);
    }
}

/// Addresses whose failures are remembered at most.
const MAX_ADDRESSES: usize = 4096;
/// An address without a failure for this long (after its last pause) starts over.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// Refused HELLOs per peer address, and when the next refusal may be answered.
#[derive(Debug)]
pub(crate) struct Failures {
    first: Duration,
    max: Duration,
    inner: Mutex<HashMap<String, Failed>>,
}

#[derive(Debug, Clone, Copy)]
struct Failed {
    count: u32,
    /// No refusal to this address is answered before this.
    next_free: Instant,
}

/// The address part of a peer (`ip:port` -> `ip`); other peers (Unix, in-process) as they are.
fn address(peer: &str) -> String {
    match peer.parse::<SocketAddr>() {
        Ok(sa) => sa.ip().to_string(),
        Err(_) => peer.to_owned(),
    }
}

impl Failures {
    pub(crate) fn new(first: Duration, max: Duration) -> Failures {
        Failures {
            first,
            max: max.max(first),
            inner: Mutex::new(HashMap::new()),
        }
    }

    /// Records a refused HELLO from `peer` at `now`; returns how long to wait before
    /// answering it: `first`, doubled with each failure of the address, at most `max`, and
    /// after the address's previous refusal (so that parallel guesses from one address are
    /// answered one at a time).
    pub(crate) fn refused(&self, peer: &str, now: Instant) -> Duration {
        if self.first.is_zero() {
            return Duration::ZERO;
        }
        let key = address(peer);
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(&key) && m.len() >= MAX_ADDRESSES {
            m.retain(|_, f| now.saturating_duration_since(f.next_free) < FORGET_AFTER);
            if m.len() >= MAX_ADDRESSES {
                // Still full of recent failures: the one that can next answer goes.
                if let Some(k) = m
                    .iter()
                    .min_by_key(|(_, f)| f.next_free)
                    .map(|(k, _)| k.clone())
                {
                    m.remove(&k);
                }
            }
        }
        let f = m.entry(key).or_insert(Failed {
            count: 0,
            next_free: now,
        });
        if now.saturating_duration_since(f.next_free) >= FORGET_AFTER {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        let step = self
            .first
            .saturating_mul(1u32 << (f.count - 1).min(20))
            .min(self.max);
        let at = f.next_free.max(now) + step;
        f.next_free = at;
        at.saturating_duration_since(now)
    }

    /// Addresses remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_gate_closes_its_oldest_connection_for_a_new_one() {
        let gate = Handshakes::new(2);
        let (a, e) = gate.enter();
        assert!(!e);
        let (b, e) = gate.enter();
        assert!(!e);
        let (c, e) = gate.enter();
        assert!(e, "the third evicts one");
        assert_eq!(gate.open(), 2);
        // The oldest was told (the permit waits for it); the others were not.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            a.evicted().await;
            let quiet = tokio::time::timeout(Duration::from_millis(20), b.evicted()).await;
            assert!(quiet.is_err(), "b stays");
        });
        drop(b);
        assert_eq!(gate.open(), 1, "a left at eviction, b when dropped");
        drop(a);
        drop(c);
        assert_eq!(gate.open(), 0);
    }

    #[test]
    fn refusals_to_one_address_wait_longer_each_time_up_to_the_cap() {
        let f = Failures::new(Duration::from_millis(100), Duration::from_millis(350));
        let t0 = Instant::now();
        // One at a time (each answered before the next): 100, 200, then the cap.
        let mut now = t0;
        let mut got = Vec::new();
        for _ in 0..4 {
            let d = f.refused("10.0.0.1:5000", now);
            got.push(d.as_millis());
            now += d;
        }
        assert_eq!(got, [100, 200, 350, 350]);
        // Another port of the same address is the same address; another address starts over.
        assert_eq!(f.refused("10.0.0.1:6000", now).as_millis(), 350);
        assert_eq!(f.refused("10.0.0.2:5000", now).as_millis(), 100);
        // Guesses in parallel are answered one after the other.
        let par: Vec<u128> = (0..3)
            .map(|_| f.refused("10.0.0.3:1", t0).as_millis())
            .collect();
        assert_eq!(par, [100, 300, 650]);
        // A quiet minute later, the address starts over.
        let later = t0 + Duration::from_secs(120);
        assert_eq!(f.refused("10.0.0.1:5000", later).as_millis(), 100);
        // Off when the first pause is zero.
        let off = Failures::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(off.refused("10.0.0.1:1", t0), Duration::ZERO);
    }

    #[test]
    fn the_address_table_stays_bounded() {
        let f = Failures::new(Duration::from_millis(1), Duration::from_millis(2));
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES + 500) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32);
            f.refused(&format!("{ip}:1"), t0);
        }
        assert_eq!(f.len(), MAX_ADDRESSES);
    }
}
