//! The subscriptions: the subject index, queue groups (one member picked per message, in
//! turn) and the table of published subjects with the match each one last got. A publisher
//! routes through [`Subscriptions::targets`] with a memo of its own ([`Route`]): a repeated
//! subject takes no lock and no hash while the subscriptions do not change.

use crate::fabric::Scope;
use crate::groups::{self, QueueGroup};
use crate::index::Index;
use crate::mailbox::Mailbox;
use crate::stats::Stats;
use crate::subjects::SubjectTable;
use crate::tally::{Tallies, TallyHandle};
use mitto::proto::Subject;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// One subscription in the index.
#[derive(Clone, Debug)]
pub(crate) struct SubRef {
    pub(crate) conn: u64,
    pub(crate) sid: u32,
    pub(crate) queue: Option<Arc<QueueGroup>>,
    /// The durable name's key, for a durable subscription.
    pub(crate) durable: Option<Arc<str>>,
    pub(crate) mailbox: Arc<Mailbox>,
}

/// A publisher's memo of where its last subject goes: the subscriptions it matched, valid
/// while the subscription generation is unchanged, and the subject's counters. A stale memo is
/// replaced at the publisher's next publish; until then it keeps the mailboxes it matched
/// alive (not their messages: a subscription that ends frees its queue).
#[derive(Default)]
pub(crate) struct Route(Option<CachedRoute>);

struct CachedRoute {
    subject: Subject,
    generation: u64,
    all: Arc<[SubRef]>,
    /// Some subscriptions are in queue groups: one member of each is picked per message.
    grouped: bool,
    counts: Option<SubjectTally>,
}

/// How a memo counts its subject's messages.
enum SubjectTally {
    /// In the subject's set, through a tally of its own.
    Own(TallyHandle),
    /// In the subject's set, with a shared (locked) add.
    Shared(Arc<Tallies>),
}

/// The subscriptions a message goes to: the cached list itself, or a list picked for it.
pub(crate) enum Targets<'a> {
    Cached(&'a [SubRef]),
    Picked(Arc<[SubRef]>),
}

impl std::ops::Deref for Targets<'_> {
    type Target = [SubRef];
    #[inline]
    fn deref(&self) -> &[SubRef] {
        match self {
            Targets::Cached(t) => t,
            Targets::Picked(t) => t,
        }
    }
}

/// Whether two subjects are the same: one comparison of pointers for the interned subjects
/// publishers reuse, else of bytes.
#[inline]
fn same_subject(a: &Subject, b: &Subject) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a[..] == b[..]
}

/// The subscriptions (see the module documentation).
pub(crate) struct Subscriptions {
    index: RwLock<Index<SubRef>>,
    /// Published subjects: their subscribers and counts (bounded, aged: `subjects.rs`).
    subjects: Mutex<SubjectTable<SubRef>>,
    /// Bumped whenever the subscriptions change: a match computed before a change is not
    /// used after it.
    generation: AtomicU64,
    /// Turns of queue groups and service instances.
    rr: AtomicUsize,
}

impl Subscriptions {
    /// Keeps at most `max_subjects` published subjects, `max_subject_bytes` of names.
    pub(crate) fn new(max_subjects: usize, max_subject_bytes: usize) -> Subscriptions {
        Subscriptions {
            index: RwLock::new(Index::default()),
            subjects: Mutex::new(SubjectTable::new(max_subjects, max_subject_bytes)),
            generation: AtomicU64::new(0),
            rr: AtomicUsize::new(0),
        }
    }

    /// The subscriptions changed: every cached match is stale (the counts stay). A match is
    /// kept with the generation it was computed for, so this is one increment, whatever the
    /// number of subjects.
    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Adds subscription `r` to `filter`.
    pub(crate) fn insert(&self, filter: &str, r: SubRef) {
        if let Ok(mut idx) = self.index.write() {
            idx.insert(filter, r);
        }
        self.invalidate();
    }

    /// Removes subscription `sid` of connection `conn` from `filter`; returns how many went.
    pub(crate) fn remove(&self, filter: &str, conn: u64, sid: u32) -> usize {
        let n = match self.index.write() {
            Ok(mut idx) => idx.remove(filter, |r| r.conn == conn && r.sid == sid),
            Err(_) => 0,
        };
        self.invalidate();
        n
    }

    /// How many subscriptions the index holds.
    pub(crate) fn len(&self) -> usize {
        self.index.read().map(|i| i.len()).unwrap_or(0)
    }

    /// Every subscription matching `subject` (all members of every queue group).
    pub(crate) fn matching(&self, subject: &str) -> Vec<SubRef> {
        let mut v = Vec::new();
        if let Ok(idx) = self.index.read() {
            idx.matches(subject, &mut v);
        }
        v
    }

    /// The subscriptions matching `subject` within `scope` (one per queue group); counts the
    /// message of `bytes` for monitoring. `route` is the publisher's memo of its last subject;
    /// `long_lived`: the publisher counts its subject in a tally of its own.
    #[inline]
    pub(crate) fn targets<'c>(
        &self,
        subject: &Subject,
        bytes: usize,
        route: &'c mut Route,
        long_lived: bool,
        stats: &Stats,
        scope: &Scope,
    ) -> Targets<'c> {
        let route = &mut route.0;
        let generation = self.generation.load(Ordering::SeqCst);
        if !route
            .as_ref()
            .is_some_and(|c| c.generation == generation && same_subject(&c.subject, subject))
        {
            *route = None;
        }
        let c = route.get_or_insert_with(|| {
            let (all, counts, generation) = self.lookup(subject, stats);
            CachedRoute {
                subject: subject.clone(),
                generation,
                grouped: all.iter().any(|r| r.queue.is_some()),
                all,
                counts: counts.map(|set| match long_lived {
                    true => SubjectTally::Own(set.join()),
                    false => SubjectTally::Shared(set),
                }),
            }
        });
        match &mut c.counts {
            Some(SubjectTally::Own(t)) => t.add(bytes as u64),
            Some(SubjectTally::Shared(set)) => set.add(bytes as u64),
            None => {}
        }
        match scope {
            Scope::All | Scope::Plain if !c.grouped => Targets::Cached(&c.all),
            Scope::All => Targets::Picked(self.pick(&c.all)),
            Scope::Plain => Targets::Picked(
                c.all
                    .iter()
                    .filter(|r| r.queue.is_none())
                    .cloned()
                    .collect(),
            ),
            Scope::Group(g) => Targets::Picked(self.pick_in(&c.all, g)),
        }
    }

    /// The subscriptions matching `subject` (every member of every queue group), its counters
    /// and the subscription generation the list is valid for.
    #[cold]
    fn lookup(
        &self,
        subject: &Subject,
        stats: &Stats,
    ) -> (Arc<[SubRef]>, Option<Arc<Tallies>>, u64) {
        let known = self.subjects.lock().ok().map(|mut t| {
            let generation = self.generation.load(Ordering::SeqCst);
            let (hit, counts) = t.with_entry(subject.as_bytes(), |e| {
                let hit = match &e.targets {
                    Some((g, v)) if *g == generation => Some(v.clone()),
                    _ => None,
                };
                (hit, e.counts.clone())
            });
            stats
                .subjects_tracked
                .store(t.len() as u64, Ordering::Relaxed);
            stats.subjects_evicted.store(t.evicted(), Ordering::Relaxed);
            (hit, counts, generation)
        });
        let counts = match known {
            Some((Some(hit), counts, generation)) => return (hit, Some(counts), generation),
            Some((None, counts, _)) => Some(counts),
            None => None,
        };
        let seen = self.generation.load(Ordering::SeqCst);
        let mut v = Vec::new();
        if let Ok(idx) = self.index.read() {
            idx.matches(subject.as_str(), &mut v);
        }
        let v: Arc<[SubRef]> = v.into();
        if let Ok(mut t) = self.subjects.lock() {
            // Kept for the generation it was read in: stale at once if the subscriptions
            // changed since.
            if let Some(e) = t.get_mut(subject.as_bytes()) {
                e.targets = Some((seen, v.clone()));
            }
        }
        (v, counts, seen)
    }

    /// One subscription per queue group (in turn), and every subscription outside groups.
    fn pick(&self, all: &[SubRef]) -> Arc<[SubRef]> {
        groups::pick(all, |r| r.queue.as_deref(), self.turn()).into()
    }

    /// One member of group `g` (in turn), if it has any.
    fn pick_in(&self, all: &[SubRef], g: &QueueGroup) -> Arc<[SubRef]> {
        let members: Vec<&SubRef> = all
            .iter()
            .filter(|r| r.queue.as_deref() == Some(g))
            .collect();
        if members.is_empty() {
            return Arc::from([]);
        }
        Arc::from([members[self.turn() % members.len()].clone()])
    }

    /// The next turn of queue groups and service instances.
    pub(crate) fn turn(&self) -> usize {
        self.rr.fetch_add(1, Ordering::Relaxed)
    }

    /// Per-subject message and byte counts (for monitoring).
    pub(crate) fn subject_counts(&self) -> Vec<(String, u64, u64)> {
        let mut v: Vec<(String, u64, u64)> = match self.subjects.lock() {
            Ok(t) => t
                .iter()
                .map(|(k, e)| {
                    let (msgs, bytes) = e.counts.sum();
                    (String::from_utf8_lossy(k).into_owned(), msgs, bytes)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(conn: u64, filter: &str, group: Option<&str>) -> SubRef {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        SubRef {
            conn,
            sid: 1,
            queue: QueueGroup::of(filter, group.map(str::to_owned)),
            durable: None,
            mailbox: Arc::new(Mailbox::new(tx, 1024, Default::default())),
        }
    }

    fn conns(s: &Subscriptions, subject: &Subject, route: &mut Route, stats: &Stats) -> Vec<u64> {
        let mut v: Vec<u64> = s
            .targets(subject, 10, route, true, stats, &Scope::All)
            .iter()
            .map(|r| r.conn)
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_memo_serves_until_the_subscriptions_change() {
        let (s, stats) = (Subscriptions::new(100, 1 << 20), Stats::default());
        let subject = Subject::new("a.x").unwrap();
        let mut route = Route::default();
        s.insert("a.*", sub(1, "a.*", None));
        assert_eq!(conns(&s, &subject, &mut route, &stats), [1]);
        s.insert("a.>", sub(2, "a.>", None));
        assert_eq!(conns(&s, &subject, &mut route, &stats), [1, 2], "a new one");
        assert_eq!(s.remove("a.*", 1, 1), 1);
        assert_eq!(conns(&s, &subject, &mut route, &stats), [2], "one gone");
        assert_eq!(s.remove("a.*", 1, 1), 0);
        assert_eq!(s.len(), 1);
        // Every message was counted for its subject, memo or not.
        assert_eq!(s.subject_counts(), [("a.x".to_owned(), 3, 30)]);
        assert_eq!(stats.subjects_tracked.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn one_member_per_queue_group_in_turn_and_every_other_subscription() {
        let (s, stats) = (Subscriptions::new(100, 1 << 20), Stats::default());
        let subject = Subject::new("jobs").unwrap();
        s.insert("jobs", sub(1, "jobs", Some("q")));
        s.insert("jobs", sub(2, "jobs", Some("q")));
        s.insert("jobs", sub(3, "jobs", None));
        let mut route = Route::default();
        let mut members = Vec::new();
        for _ in 0..4 {
            let got = conns(&s, &subject, &mut route, &stats);
            assert_eq!(got.len(), 2, "{got:?}");
            assert!(got.contains(&3));
            members.push(got[0]);
        }
        members.sort_unstable();
        assert_eq!(members, [1, 1, 2, 2], "members take turns");
        assert_eq!(s.matching("jobs").len(), 3);
    }

    #[test]
    fn the_fabric_s_copies_go_to_plain_subscribers_or_to_one_member_of_one_group() {
        let (s, stats) = (Subscriptions::new(100, 1 << 20), Stats::default());
        let subject = Subject::new("jobs.a").unwrap();
        s.insert("jobs.a", sub(1, "jobs.a", Some("q")));
        s.insert("jobs.a", sub(2, "jobs.a", Some("q")));
        s.insert("jobs.*", sub(3, "jobs.*", Some("q")));
        s.insert("jobs.a", sub(4, "jobs.a", None));
        let mut route = Route::default();
        let mut scoped = |scope: &Scope| -> Vec<u64> {
            let t = s.targets(&subject, 10, &mut route, true, &stats, scope);
            let mut v: Vec<u64> = t.iter().map(|r| r.conn).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(scoped(&Scope::Plain), [4]);
        let q = Scope::Group(QueueGroup::new("jobs.a", "q"));
        let mut members: Vec<u64> = (0..4).flat_map(|_| scoped(&q)).collect();
        members.sort_unstable();
        assert_eq!(members, [1, 1, 2, 2], "one member of that group, in turn");
        let star = Scope::Group(QueueGroup::new("jobs.*", "q"));
        assert_eq!(scoped(&star), [3]);
        assert!(scoped(&Scope::Group(QueueGroup::new("jobs.a", "none"))).is_empty());
        assert_eq!(
            scoped(&Scope::All).len(),
            3,
            "one per group and the plain one"
        );
    }
}
