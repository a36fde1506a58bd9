//! Interest: which subject filters each broker's clients hold. Every broker announces its own
//! over NATS (on change, and again every `announce_ms` as a heartbeat); the others keep the
//! latest announcement of each until it is older than three heartbeats.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The NATS subject of interest announcements.
pub(crate) const ANNOUNCE_SUBJECT: &str = "_MITTO.FED.interest";

/// A broker's interest: the filters its clients subscribe to and the subjects of the services
/// registered with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) subs: BTreeSet<String>,
    pub(crate) services: BTreeSet<String>,
}

/// An announcement: the broker's id, then one filter a line, services after a space (which no
/// subject holds).
pub(crate) fn encode(id: &str, held: &Held) -> Vec<u8> {
    let mut out = id.as_bytes().to_vec();
    let lines = held.subs.iter().map(|f| ("", f));
    for (mark, f) in lines.chain(held.services.iter().map(|f| (" ", f))) {
        out.push(b'\n');
        out.extend_from_slice(mark.as_bytes());
        out.extend_from_slice(f.as_bytes());
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
        }
    }

    #[test]
    fn announcements_round_trip_and_bad_filters_are_left_out() {
        let h = held(&["a.>", "b.*.c"], &["svc.sum"]);
        assert_eq!(decode(&encode("x1", &h)), Some(("x1".into(), h)));
        assert_eq!(decode(b"x2"), Some(("x2".into(), Held::default())));
        assert_eq!(
            decode(b"x3\na..b\nok\n svc\n  bad"),
            Some(("x3".into(), held(&["ok"], &["svc"])))
        );
        assert_eq!(decode(b""), None);
        assert_eq!(decode(&[0xff, 0xfe]), None);
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
