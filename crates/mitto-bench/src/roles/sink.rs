//! Where a subscriber process counts what arrives, whatever the system: the receiving path (a
//! task reading a subscription, or Zenoh's callback) calls [`Sink::on_message`] with the
//! payload's first byte (the burst's tag) and length; the control thread arms a burst, waits
//! for it to complete, and reads the counts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The tag of probe messages, which only say that the path from publisher to subscriber is
/// in place; never the tag of a burst.
pub(crate) const PROBE_TAG: u8 = 0;

/// The `CLOCK_MONOTONIC` reading in nanoseconds: the same clock in every process of the
/// machine, so a subscriber's last receive and a publisher's first publish compare.
pub(crate) fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

/// What one burst delivered to this subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Count {
    /// Messages of the burst's tag and length.
    pub(crate) got: u64,
    /// Messages of another tag or length (late from an earlier burst).
    pub(crate) stale: u64,
    /// [`now_ns`] at the last counted message (every 64th is timed, and the last expected one).
    pub(crate) last_ns: u64,
}

/// The counters of one subscriber.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    /// `tag << 32 | length` of the burst being counted; 0 between bursts.
    want: AtomicU64,
    expected: AtomicU64,
    got: AtomicU64,
    stale: AtomicU64,
    last_ns: AtomicU64,
    probed: AtomicBool,
    lock: Mutex<()>,
    done: Condvar,
}

fn key(tag: u8, len: usize) -> u64 {
    (u64::from(tag) << 32) | (len as u64 & 0xFFFF_FFFF)
}

impl Sink {
    /// Counts one message.
    pub(crate) fn on_message(&self, first: u8, len: usize) {
        if first == PROBE_TAG {
            self.probed.store(true, Ordering::Release);
            return;
        }
        if self.want.load(Ordering::Acquire) != key(first, len) {
            self.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let got = self.got.fetch_add(1, Ordering::AcqRel) + 1;
        let expected = self.expected.load(Ordering::Acquire);
        // A clock read every 64 messages is enough for the end of a burst.
        if got < 64 || got.is_multiple_of(64) || got >= expected {
            self.last_ns.fetch_max(now_ns(), Ordering::AcqRel);
        }
        if got == expected {
            let _g = self.lock.lock();
            self.done.notify_all();
        }
    }

    /// Whether a probe message arrived.
    pub(crate) fn probed(&self) -> bool {
        self.probed.load(Ordering::Acquire)
    }

    /// Starts counting a burst of `expected` messages tagged `tag`, `len` bytes each.
    pub(crate) fn arm(&self, tag: u8, len: usize, expected: u64) {
        self.want.store(0, Ordering::Release);
        self.got.store(0, Ordering::Release);
        self.stale.store(0, Ordering::Release);
        self.last_ns.store(0, Ordering::Release);
        self.expected.store(expected, Ordering::Release);
        self.want.store(key(tag, len), Ordering::Release);
    }

    /// Once the publisher is done (it published `sent`): waits until every message it sent
    /// arrived, or none came for `stall`, or `hard` passed; then stops counting.
    pub(crate) fn finish(&self, sent: u64, stall: Duration, hard: Instant) -> Count {
        let expected = self.expected.load(Ordering::Acquire).min(sent);
        self.expected.store(expected, Ordering::Release);
        let mut seen = self.got.load(Ordering::Acquire);
        let mut since = Instant::now();
        let mut guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let got = self.got.load(Ordering::Acquire);
            let now = Instant::now();
            if got >= expected || now >= hard {
                break;
            }
            if got != seen {
                seen = got;
                since = now;
            } else if now - since >= stall {
                break;
            }
            let wait = stall.min(Duration::from_millis(50));
            guard = match self.done.wait_timeout(guard, wait) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        drop(guard);
        self.want.store(0, Ordering::Release);
        Count {
            got: self.got.load(Ordering::Acquire),
            stale: self.stale.load(Ordering::Acquire),
            last_ns: self.last_ns.load(Ordering::Acquire),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_armed_burst_only() {
        let s = Sink::default();
        s.on_message(7, 16);
        assert!(!s.probed());
        s.on_message(PROBE_TAG, 16);
        assert!(s.probed());
        s.arm(3, 16, 5);
        for _ in 0..4 {
            s.on_message(3, 16);
        }
        s.on_message(2, 16); // an earlier burst
        s.on_message(3, 128); // another size
        let t0 = now_ns();
        s.on_message(3, 16);
        let c = s.finish(
            5,
            Duration::from_millis(10),
            Instant::now() + Duration::from_secs(5),
        );
        assert_eq!((c.got, c.stale), (5, 2));
        assert!(c.last_ns >= t0);
        // Counting stopped.
        s.on_message(3, 16);
        assert_eq!(s.got.load(Ordering::Acquire), 5);
    }

    #[test]
    fn a_short_burst_ends_after_the_stall() {
        let s = Sink::default();
        s.arm(9, 16, 100);
        for _ in 0..10 {
            s.on_message(9, 16);
        }
        // The publisher sent 40 of 100; 30 never arrive.
        let c = s.finish(
            40,
            Duration::from_millis(20),
            Instant::now() + Duration::from_secs(5),
        );
        assert_eq!(c.got, 10);
    }
}
