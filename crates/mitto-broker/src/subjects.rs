//! The table of published subjects: per subject, the subscriptions it matched (valid for one
//! subscription generation) and the message counts monitoring reports. Bounded in entries and
//! in bytes, and aged: entries live in two generations, the current one and the previous one;
//! a subject used again moves to the current one, and when the current one is full the
//! previous one is dropped whole. So a flood of distinct subjects costs at most the bounds,
//! every operation is O(1) (amortized), and subjects in use stay.

use crate::tally::Tallies;
use bytes::Bytes;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// What an entry costs besides its subject's bytes (map slot, counts, list pointer).
const ENTRY_OVERHEAD: usize = 160;

/// One published subject; `T` is what a subscription is.
pub(crate) struct SubjectEntry<T> {
    /// The subscriptions it matched, and the generation of the subscriptions they are valid for.
    pub(crate) targets: Option<(u64, Arc<[T]>)>,
    pub(crate) counts: Arc<Tallies>,
}

impl<T> Default for SubjectEntry<T> {
    fn default() -> Self {
        SubjectEntry {
            targets: None,
            counts: Arc::default(),
        }
    }
}

/// The table (see the module documentation).
pub(crate) struct SubjectTable<T> {
    /// Each generation holds at most half of these.
    max_entries: usize,
    max_bytes: usize,
    current: FxHashMap<Bytes, SubjectEntry<T>>,
    previous: FxHashMap<Bytes, SubjectEntry<T>>,
    current_bytes: usize,
    previous_bytes: usize,
    /// Entries dropped with their generation, so far.
    evicted: u64,
}

fn cost(subject: &[u8]) -> usize {
    subject.len() + ENTRY_OVERHEAD
}

impl<T> SubjectTable<T> {
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> SubjectTable<T> {
        SubjectTable {
            max_entries: max_entries.max(2),
            max_bytes: max_bytes.max(2 * cost(&[])),
            current: FxHashMap::default(),
            previous: FxHashMap::default(),
            current_bytes: 0,
            previous_bytes: 0,
            evicted: 0,
        }
    }

    /// Runs `f` on the entry of `subject`, made if new (its key is a copy: never a view of a
    /// connection's read buffer, which it would keep alive).
    pub(crate) fn with_entry<R>(
        &mut self,
        subject: &[u8],
        f: impl FnOnce(&mut SubjectEntry<T>) -> R,
    ) -> R {
        if let Some(e) = self.current.get_mut(subject) {
            return f(e);
        }
        let e = match self.previous.remove(subject) {
            Some(e) => {
                self.previous_bytes -= cost(subject).min(self.previous_bytes);
                e
            }
            None => SubjectEntry::default(),
        };
        if self.current.len() + 1 > self.max_entries / 2
            || self.current_bytes + cost(subject) > self.max_bytes / 2
        {
            self.turn();
        }
        self.current_bytes += cost(subject);
        f(self
            .current
            .entry(Bytes::copy_from_slice(subject))
            .or_insert(e))
    }

    /// The entry of `subject`, if the table has it.
    pub(crate) fn get_mut(&mut self, subject: &[u8]) -> Option<&mut SubjectEntry<T>> {
        match self.current.get_mut(subject) {
            Some(e) => Some(e),
            None => self.previous.get_mut(subject),
        }
    }

    /// The current generation becomes the previous one; the previous one is dropped.
    fn turn(&mut self) {
        self.evicted += self.previous.len() as u64;
        self.previous = std::mem::take(&mut self.current);
        self.previous_bytes = std::mem::take(&mut self.current_bytes);
    }

    /// Subjects held.
    pub(crate) fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// What the held subjects cost, by the table's count.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.current_bytes + self.previous_bytes
    }

    /// Subjects dropped so far.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Every held subject with its counts.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Bytes, &SubjectEntry<T>)> {
        self.current.iter().chain(self.previous.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table whose subscriptions are numbers.
    type Table = SubjectTable<u32>;

    fn touch(t: &mut Table, s: &str) {
        t.with_entry(s.as_bytes(), |e| e.counts.add(1));
    }

    #[test]
    fn a_flood_of_distinct_subjects_stays_within_the_bounds_and_used_ones_stay() {
        let mut t = Table::new(100, 1 << 20);
        for i in 0..10_000 {
            touch(&mut t, &format!("flood.{i}"));
            // A subject in use, once per 20 new ones, is never aged out.
            if i % 20 == 0 {
                touch(&mut t, "orders.created");
            }
            assert!(t.len() <= 100, "{} entries", t.len());
        }
        assert!(t.get_mut(b"orders.created").is_some());
        assert!(t.get_mut(b"flood.0").is_none(), "old one-off subjects went");
        assert!(t.evicted() > 9_000);
        let (msgs, _) = t
            .iter()
            .find(|(k, _)| &k[..] == b"orders.created")
            .map(|(_, e)| e.counts.sum())
            .unwrap_or_default();
        assert_eq!(msgs, 500, "its counts moved with it");
    }

    #[test]
    fn long_subjects_are_bounded_by_bytes() {
        let mut t = Table::new(1_000_000, 64 * 1024);
        let long = "x".repeat(4000);
        for i in 0..1000 {
            touch(&mut t, &format!("{long}.{i}"));
            assert!(t.bytes() <= 64 * 1024 + cost(long.as_bytes()) + 8);
        }
        assert!(t.len() < 40, "{} entries of 4 KB", t.len());
    }

    #[test]
    fn keys_are_copies_not_views_of_the_frame() {
        let frame = Bytes::from(vec![b'a'; 4096]);
        let mut t = Table::new(10, 1 << 20);
        t.with_entry(&frame[..3], |_| ());
        assert!(frame.is_unique(), "the table keeps nothing of the buffer");
    }
}
