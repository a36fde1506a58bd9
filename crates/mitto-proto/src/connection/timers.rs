//! One timer structure for every deadline of a connection: this side's operations and the
//! peer's calls.
//!
//! Entries are never removed when their operation ends (lazy deletion): the connection checks
//! each due entry against its tables and drops stale ones. Deadlines that come in order (most
//! calls share a timeout) go to a queue, in O(1); the others to a binary heap. When more than
//! half of the entries are stale the structure is rebuilt, so it never holds much more than the
//! live deadlines.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

/// What a deadline belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Key {
    /// An operation of this side, by its id.
    Op(u64),
    /// A call the peer opened: its id and the number the connection gave it when it arrived
    /// (the peer may reuse an id once a call ended).
    Incoming(u64, u64),
}

/// Deadlines, earliest first.
#[derive(Default)]
pub(crate) struct Timers {
    /// Deadlines pushed in non-decreasing order.
    fifo: VecDeque<(Instant, Key)>,
    /// The others.
    heap: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Entries whose operation ended before their deadline.
    stale: usize,
}

impl Timers {
    /// Adds a deadline.
    pub(crate) fn insert(&mut self, at: Instant, key: Key) {
        match self.fifo.back() {
            Some((last, _)) if at < *last => self.heap.push(Reverse((at, key))),
            _ => self.fifo.push_back((at, key)),
        }
    }

    /// The earliest deadline (possibly of an operation that has ended since).
    pub(crate) fn next(&self) -> Option<Instant> {
        let a = self.fifo.front().map(|e| e.0);
        let b = self.heap.peek().map(|e| e.0 .0);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns an entry due at `now`, if any.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, Key)> {
        let a = self.fifo.front().filter(|e| e.0 <= now).map(|e| e.0);
        let b = self.heap.peek().filter(|e| e.0 .0 <= now).map(|e| e.0 .0);
        match (a, b) {
            (Some(a), Some(b)) if b < a => self.heap.pop().map(|e| e.0),
            (Some(_), _) => self.fifo.pop_front(),
            (None, Some(_)) => self.heap.pop().map(|e| e.0),
            (None, None) => None,
        }
    }

    /// Notes that an operation with a deadline ended before it; drops stale entries from the
    /// front while `live` says they are, and rebuilds when stale entries are the majority.
    pub(crate) fn ended(&mut self, live: impl Fn(&Key) -> bool) {
        self.stale += 1;
        while self.fifo.front().is_some_and(|e| !live(&e.1)) {
            self.fifo.pop_front();
            self.stale = self.stale.saturating_sub(1);
        }
        while self.heap.peek().is_some_and(|e| !live(&e.0 .1)) {
            self.heap.pop();
            self.stale = self.stale.saturating_sub(1);
        }
        if self.stale > 1024 && self.stale * 2 > self.len() {
            self.fifo.retain(|e| live(&e.1));
            self.heap.retain(|e| live(&e.0 .1));
            self.stale = 0;
        }
    }

    /// A due entry was popped and found stale.
    pub(crate) fn popped_stale(&mut self) {
        self.stale = self.stale.saturating_sub(1);
    }

    /// Entries held, stale ones included.
    pub(crate) fn len(&self) -> usize {
        self.fifo.len() + self.heap.len()
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.fifo.clear();
        self.heap.clear();
        self.stale = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn due_entries_come_out_in_deadline_order_whatever_the_insertion_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::default();
        for (i, d) in [5, 9, 9, 3, 12, 1, 7].into_iter().enumerate() {
            t.insert(ms(d), Key::Op(i as u64));
        }
        assert_eq!(t.next(), Some(ms(1)));
        assert!(t.pop_due(ms(0)).is_none(), "nothing is due before its time");
        let due: Vec<Instant> = std::iter::from_fn(|| t.pop_due(ms(9)).map(|e| e.0)).collect();
        assert_eq!(due, [1, 3, 5, 7, 9, 9].map(ms));
        assert_eq!(t.next(), Some(ms(12)));
    }

    #[test]
    fn stale_entries_never_outnumber_live_ones_for_long() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mut live = HashSet::new();
        // A million calls answered in order, a few out of order, each with the same timeout.
        for i in 0..1_000_000u64 {
            t.insert(t0 + Duration::from_micros(i), Key::Op(i));
            live.insert(i);
            if i >= 10 {
                let done = if i % 97 == 0 { i - 3 } else { i - 10 };
                if live.remove(&done) {
                    t.ended(|k| matches!(k, Key::Op(id) if live.contains(id)));
                }
            }
            assert!(
                t.len() <= 2 * live.len() + 1100,
                "{} for {}",
                t.len(),
                live.len()
            );
        }
    }
}
