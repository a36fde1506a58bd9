//! Message and byte counters that publishers bump on every message without a locked
//! instruction.
//!
//! A counter every publisher adds to (`fetch_add` on one shared word) costs a locked
//! read-modify-write per message, and with publishers on several cores the word's cache line
//! moves between them on every message. Here each long-lived publisher (a connection, an
//! in-process client) owns a [`TallyHandle`] of its own, which only it writes, with plain loads
//! and stores; readers (STATS, monitoring) sum a [`Tallies`] set: the live publishers' counts
//! plus what publishers that ended (or one-off publishes) counted. The sum is exact: a
//! publisher's count is visible once its store is, and an ending publisher moves its count into
//! the set's total under the same lock readers take, so it is never counted twice or lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One publisher's counts. Written only through the [`TallyHandle`] that owns it.
#[derive(Debug, Default)]
struct Tally {
    msgs: AtomicU64,
    bytes: AtomicU64,
}

/// A set of counts summed on read (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Tallies {
    /// Counts of ended publishers and of one-off additions.
    msgs: AtomicU64,
    bytes: AtomicU64,
    /// The live publishers' tallies.
    live: Mutex<Vec<Arc<Tally>>>,
}

impl Tallies {
    /// Adds one message of `bytes` bytes (a locked add: for publishes that own no handle).
    pub(crate) fn add(&self, bytes: u64) {
        self.msgs.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A handle of a new publisher, counted in this set until it is dropped.
    pub(crate) fn join(self: &Arc<Self>) -> TallyHandle {
        let tally = Arc::new(Tally::default());
        self.lock().push(tally.clone());
        TallyHandle {
            tally,
            set: self.clone(),
        }
    }

    /// Messages and bytes counted so far.
    pub(crate) fn sum(&self) -> (u64, u64) {
        let live = self.lock();
        let mut msgs = self.msgs.load(Ordering::Relaxed);
        let mut bytes = self.bytes.load(Ordering::Relaxed);
        for t in live.iter() {
            msgs = msgs.wrapping_add(t.msgs.load(Ordering::Relaxed));
            bytes = bytes.wrapping_add(t.bytes.load(Ordering::Relaxed));
        }
        (msgs, bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Tally>>> {
        // The list holds no invariant a panic could break half-way.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One publisher's place in a [`Tallies`] set. Adding through it takes `&mut self`: one writer,
/// so a plain load and store are an exact count.
#[derive(Debug)]
pub(crate) struct TallyHandle {
    tally: Arc<Tally>,
    set: Arc<Tallies>,
}

impl TallyHandle {
    /// Adds one message of `bytes` bytes.
    #[inline]
    pub(crate) fn add(&mut self, bytes: u64) {
        let t = &self.tally;
        t.msgs.store(
            t.msgs.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        t.bytes.store(
            t.bytes.load(Ordering::Relaxed).wrapping_add(bytes),
            Ordering::Relaxed,
        );
    }
}

impl Drop for TallyHandle {
    fn drop(&mut self) {
        let mut live = self.set.lock();
        if let Some(i) = live.iter().position(|t| Arc::ptr_eq(t, &self.tally)) {
            live.swap_remove(i);
        }
        // Under the lock readers take: a reader sees this count either live or in the total.
        let set = &self.set;
        set.msgs
            .fetch_add(self.tally.msgs.load(Ordering::Relaxed), Ordering::Relaxed);
        set.bytes
            .fetch_add(self.tally.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_ended_publishers_and_one_off_adds_sum_exactly() {
        let set = Arc::new(Tallies::default());
        let mut a = set.join();
        let mut b = set.join();
        for _ in 0..3 {
            a.add(10);
        }
        b.add(7);
        set.add(5);
        assert_eq!(set.sum(), (5, 42));
        drop(a);
        assert_eq!(set.sum(), (5, 42), "an ended publisher's count stays");
        assert_eq!(set.lock().len(), 1, "and it leaves the live list");
        b.add(1);
        drop(b);
        assert_eq!(set.sum(), (6, 43));
        assert!(set.lock().is_empty());
    }

    #[test]
    fn concurrent_publishers_and_readers_never_see_a_count_twice_or_lose_one() {
        let set = Arc::new(Tallies::default());
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let set = set.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let mut h = set.join();
                        for _ in 0..100 {
                            h.add(2);
                        }
                    }
                })
            })
            .collect();
        let reader = {
            let set = set.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                for _ in 0..2_000 {
                    let (m, b) = set.sum();
                    assert!(m >= last, "a sum never goes back: {m} after {last}");
                    assert!(m <= 4 * 50 * 100, "never counted twice: {m}");
                    assert!(b <= 2 * 4 * 50 * 100, "never counted twice: {b} bytes");
                    last = m;
                }
            })
        };
        for w in writers {
            w.join().expect("writer");
        }
        reader.join().expect("reader");
        assert_eq!(set.sum(), (20_000, 40_000));
    }
}
