//! The broker's counters, as STATS and monitoring report them: broker-wide counters, each on a
//! cache line of its own, what publishers sent in (per publisher, see `tally.rs`), and what
//! was given up on the way out.

use crate::tally::Tallies;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A counter on a cache line of its own, so that a publisher and a subscriber on different
/// cores counting different things do not fight over one line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counter(AtomicU64);

impl std::ops::Deref for Counter {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Broker-wide counters, as STATS and monitoring report them.
        #[derive(Debug, Default)]
        pub(crate) struct Stats {
            $(pub(crate) $name: Counter,)*
            /// What publishers sent in, reported as `msgs_in` and `bytes_in`: counted per
            /// publisher without a shared counter (see [`Tallies`]).
            pub(crate) ins: Arc<Tallies>,
            /// Messages given up on their way out, counted by the mailboxes.
            pub(crate) losses: Arc<Losses>,
        }
        impl Stats {
            pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
                let mut m = BTreeMap::new();
                $(m.insert(stringify!($name).to_owned(), self.$name.load(Ordering::Relaxed));)*
                let (msgs, bytes) = self.ins.sum();
                m.insert("msgs_in".to_owned(), msgs);
                m.insert("bytes_in".to_owned(), bytes);
                let l = &self.losses;
                m.insert("oversize_skips".to_owned(), l.oversize.load(Ordering::Relaxed));
                m.insert("msgs_expired".to_owned(), l.expired.load(Ordering::Relaxed));
                m.insert("orphan_drops".to_owned(), l.orphaned.load(Ordering::Relaxed));
                m.insert("payload_copies".to_owned(), l.copied.load(Ordering::Relaxed));
                m
            }
        }
    };
}

counters!(
    connections_total,
    connections_open,
    connections_refused,
    auth_failures,
    msgs_out,
    bytes_out,
    subscriptions,
    slow_consumer_drops,
    slow_consumer_disconnects,
    publish_rejections,
    acks,
    nacks,
    publish_acks,
    sessions_detached,
    sessions_resumed,
    sessions_expired,
    // Detached sessions ended early to keep within their bounds, and what the rest hold.
    sessions_evicted,
    detached_session_bytes,
    redeliveries,
    redeliveries_given_up,
    requests,
    services,
    service_calls,
    no_responders,
    request_timeouts,
    requests_cancelled,
    late_replies,
    stray_responses,
    permission_denials,
    protocol_errors,
    shutdown_undelivered,
    // Connection budgets (budget.rs, guard.rs).
    slow_connections_closed,
    handshakes_failed,
    handshakes_evicted,
    handshake_timeouts,
    auth_failure_delay_ms,
    subjects_tracked,
    subjects_evicted,
);

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Messages given up for a reason of the subscriber's or of their own, broker-wide (STATS).
#[derive(Debug, Default)]
pub(crate) struct Losses {
    /// Over the `max_payload` or `max_headers` the subscriber agreed: skipped for it.
    pub(crate) oversize: AtomicU64,
    /// Their `ttl` or `deadline` ran out while they waited in the broker.
    pub(crate) expired: AtomicU64,
    /// Left behind by a subscription that ended with no queue group member and no durable
    /// name to take them over (or whose durable name expired).
    pub(crate) orphaned: AtomicU64,
    /// Not a loss, counted beside them: small messages copied out of their publisher's read
    /// buffer so that a waiting subscription does not keep the buffer alive (`pin.rs`).
    pub(crate) copied: AtomicU64,
}

impl Losses {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_holds_every_counter_the_tallies_and_the_losses() {
        let s = Stats::default();
        bump(&s.acks);
        bump(&s.acks);
        s.ins.add(10);
        let mut h = s.ins.join();
        h.add(5);
        Losses::add(&s.losses.orphaned, 3);
        Losses::add(&s.losses.copied, 0);
        let m = s.snapshot();
        assert_eq!(m["acks"], 2);
        assert_eq!((m["msgs_in"], m["bytes_in"]), (2, 15));
        assert_eq!(m["orphan_drops"], 3);
        assert_eq!(m["payload_copies"], 0);
        assert_eq!(m["sessions_evicted"], 0);
    }
}
