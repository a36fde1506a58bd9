//! Interest: which subject filters each broker's clients hold. Every broker announces its own
//! over NATS (on change, and again every `announce_ms` as a heartbeat); the others keep the
//! latest announcement of each until it is older than three heartbeats.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The NATS subject of interest announcements.
pub(crate) const ANNOUNCE_SUBJECT: &str = "_MITTO.FED.interest";

/// A queue group of subscribers: its filter and name (the same name on another filter is
/// another group, as at one broker).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Group {
    pub(crate) filter: String,
    pub(crate) name: String,
    /// The NATS queue group of the brokers with members of it ([`Group::queue_of`]).
    pub(crate) queue: String,
}

impl Group {
    pub(crate) fn new(filter: &str, name: &str) -> Group {
        Group {
            filter: filter.to_owned(),
            name: name.to_owned(),
            queue: Group::queue_of(filter, name),
        }
    }

    /// `mitto:<filter in hex>:<name>`: one NATS queue group per filter and name (NATS would
    /// merge the same name on two filters), with no wildcard or space in it.
    fn queue_of(filter: &str, name: &str) -> String {
        let mut q = String::with_capacity(7 + 2 * filter.len() + name.len());
        q.push_str("mitto:");
        for b in filter.bytes() {
            q.push_str(&format!("{b:02x}"));
        }
        q.push(':');
        q.push_str(name);
        q
    }

    /// A group as announced: the name of a mitto queue group holds no whitespace or control
    /// character (PROTOCOL.md 7.2).
    fn valid(filter: &str, name: &str) -> bool {
        mitto::proto::Subject::new(filter).is_ok()
            && !name.is_empty()
            && !name.chars().any(|c| c.is_whitespace() || c.is_control())
    }
}

/// A broker's interest: the filters its clients subscribe to outside queue groups, its queue
/// groups and the subjects of the services registered with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) subs: BTreeSet<String>,
    pub(crate) groups: BTreeSet<Group>,
    pub(crate) services: BTreeSet<String>,
}

/// An announcement: the broker's id, then one filter a line, services after a space (which no
/// subject holds), queue groups after a tab as `<filter> <name>` (a broker that does not know
/// groups leaves those lines out as invalid filters).
pub(crate) fn encode(id: &str, held: &Held) -> Vec<u8> {
    let mut out = id.as_bytes().to_vec();
    let lines = held.subs.iter().map(|f| ("", f.as_str(), ""));
    let services = held.services.iter().map(|f| (" ", f.as_str(), ""));
    let groups = held
        .groups
        .iter()
        .map(|g| ("\t", g.filter.as_str(), g.name.as_str()));
    for (mark, f, name) in lines.chain(services).chain(groups) {
        out.push(b'\n');
        out.extend_from_slice(mark.as_bytes());
        out.extend_from_slice(f.as_bytes());
        if !name.is_empty() {
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
        }
    }
    out
}

/// An announcement's id and what it holds (invalid filters left out); `None` when it is not
/// one.
pub(crate) fn decode(payload: &[u8]) -> Option<(String, Held)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut lines = text.split('\n');
    let id = lines.next().filter(|id| !id.is_empty())?.to_owned();
    let mut held = Held::default();
    for line in lines {
        if let Some(g) = line.strip_prefix('\t') {
            if let Some((f, name)) = g.split_once(' ').filter(|(f, n)| Group::valid(f, n)) {
                held.groups.insert(Group::new(f, name));
            }
            continue;
        }
        let (set, f) = match line.strip_prefix(' ') {
            Some(f) => (&mut held.services, f),
            None => (&mut held.subs, line),
        };
        if mitto::proto::Subject::new(f).is_ok() {
            set.insert(f.to_owned());
        }
    }
    Some((id, held))
}

/// The other brokers' interest.
#[derive(Debug, Default)]
pub(crate) struct Remote {
    brokers: BTreeMap<String, (Held, Instant)>,
}

impl Remote {
    /// Takes an announcement; true when the broker was not known.
    pub(crate) fn announce(&mut self, id: String, held: Held, now: Instant) -> bool {
        self.brokers.insert(id, (held, now)).is_none()
    }

    /// Forgets brokers not heard from since `now - max_age`.
    pub(crate) fn expire(&mut self, now: Instant, max_age: Duration) {
        self.brokers
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) <= max_age);
    }

    /// Every filter and service some other broker holds.
    pub(crate) fn union(&self) -> Held {
        let mut all = Held::default();
        for (h, _) in self.brokers.values() {
            all.subs.extend(h.subs.iter().cloned());
            all.groups.extend(h.groups.iter().cloned());
            all.services.extend(h.services.iter().cloned());
        }
        all
    }

    /// How many other brokers are known.
    pub(crate) fn len(&self) -> usize {
        self.brokers.len()
    }
}

/// Whether a message on `subject` that arrived through the subscription to `filter` is the
/// one copy to act on: several of one side's filters may match one subject (`a.>` and `a.b`),
/// and each subscription gets a copy; only the copy of the first matching filter (in the
/// set's order) counts.
pub(crate) fn first_copy(filters: &BTreeSet<String>, filter: &str, subject: &str) -> bool {
    filters
        .iter()
        .find(|f| mitto::proto::subject::matches(f, subject))
        .is_none_or(|f| f == filter)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn held(subs: &[&str], services: &[&str]) -> Held {
        Held {
            subs: set(subs),
            services: set(services),
            groups: BTreeSet::new(),
        }
    }

    #[test]
    fn announcements_round_trip_and_bad_filters_are_left_out() {
        let mut h = held(&["a.>", "b.*.c"], &["svc.sum"]);
        h.groups.insert(Group::new("a.*", "workers"));
        h.groups.insert(Group::new("a.*", "audit"));
        assert_eq!(decode(&encode("x1", &h)), Some(("x1".into(), h)));
        let mut g = held(&[], &[]);
        g.groups.insert(Group::new("q.>", "w"));
        assert_eq!(
            decode(b"x4\n\tq.> w\n\tq..x w\n\tq.y\n\tq.z a b"),
            Some(("x4".into(), g)),
            "groups with a bad filter, no name or a name with a space are left out"
        );
        assert_eq!(decode(b"x2"), Some(("x2".into(), Held::default())));
        assert_eq!(
            decode(b"x3\na..b\nok\n svc\n  bad"),
            Some(("x3".into(), held(&["ok"], &["svc"])))
        );
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[0xff, 0xfe]), None);
    }

    #[test]
    fn one_nats_queue_per_filter_and_name() {
        let q = |f: &str, n: &str| Group::new(f, n).queue;
        assert_eq!(q("a.*", "w"), "mitto:612e2a:w");
        assert_ne!(q("a.*", "w"), q("a.>", "w"));
        assert_ne!(q("a.*", "w"), q("a.*", "v"));
        assert!(!q("a b.>", "w").contains([' ', '*', '>']));
    }

    #[test]
    fn brokers_expire_and_their_interest_goes() {
        let t0 = Instant::now();
        let mut r = Remote::default();
        assert!(r.announce("a".into(), held(&["x.>"], &[]), t0));
        assert!(!r.announce("a".into(), held(&["x.>", "y"], &["s1"]), t0));
        let t2 = t0 + Duration::from_secs(2);
        assert!(r.announce("b".into(), held(&["z"], &["s2"]), t2));
        assert_eq!(r.union(), held(&["x.>", "y", "z"], &["s1", "s2"]));
        r.expire(t0 + Duration::from_secs(3), Duration::from_millis(1500));
        assert_eq!(r.union(), held(&["z"], &["s2"]));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn one_copy_among_overlapping_filters() {
        let f = set(&["a.*", "a.>", "*.b"]);
        // "*.b" < "a.*" < "a.>" in the set's order.
        assert!(first_copy(&f, "*.b", "a.b"));
        assert!(!first_copy(&f, "a.*", "a.b"));
        assert!(!first_copy(&f, "a.>", "a.b"));
        assert!(first_copy(&f, "a.*", "a.c"));
        assert!(first_copy(&f, "a.>", "a.c.d"));
        // A filter no longer held: the copy counts if nothing else matches.
        assert!(first_copy(&f, "q.>", "q.r"));
    }
}
