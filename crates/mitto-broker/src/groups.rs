//! Queue groups. Subscriptions (and service instances) with the same queue group name **and the
//! same filter** form one group, as in NATS: the same name on another filter is another group.
//! A message goes to one member of each matching group; a service call, which can have only one
//! answer, to one member of one group, the matching groups taking turns (PROTOCOL.md 11.1, 11.5).

use std::sync::Arc;

/// A queue group's identity: its filter and its name.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct QueueGroup {
    filter: Box<str>,
    name: Box<str>,
}

impl QueueGroup {
    /// The group `name` of subscriptions to `filter`; `None` for no (or an empty) name.
    pub(crate) fn of(filter: &str, name: Option<String>) -> Option<Arc<QueueGroup>> {
        let name = name.filter(|n| !n.is_empty())?;
        Some(Arc::new(QueueGroup::new(filter, &name)))
    }

    /// The group `name` of subscriptions to `filter`.
    pub(crate) fn new(filter: &str, name: &str) -> QueueGroup {
        QueueGroup {
            filter: filter.into(),
            name: name.into(),
        }
    }
}

/// The members of `all` a message goes to: every one outside groups, and the member of each
/// group whose turn it is (`turn` counts up by one per message).
pub(crate) fn pick<T: Clone>(
    all: &[T],
    group: impl Fn(&T) -> Option<&QueueGroup>,
    turn: usize,
) -> Vec<T> {
    let mut out = Vec::with_capacity(all.len());
    let mut groups: Vec<(&QueueGroup, Vec<&T>)> = Vec::new();
    for r in all {
        match group(r) {
            None => out.push(r.clone()),
            Some(g) => match groups.iter_mut().find(|(k, _)| *k == g) {
                Some((_, members)) => members.push(r),
                None => groups.push((g, vec![r])),
            },
        }
    }
    for (_, members) in groups {
        out.push(members[turn % members.len()].clone());
    }
    out
}

/// The one member of `all` a call goes to: the matching groups take turns (an instance outside
/// groups is a group of its own), then the members of the chosen group, skipping those without
/// `room`; the next group is tried when a whole group is full. `None`: every member is full.
pub(crate) fn choose<T>(
    all: &[T],
    group: impl Fn(&T) -> Option<&QueueGroup>,
    room: impl Fn(&T) -> bool,
    turn: usize,
) -> Option<&T> {
    let mut groups: Vec<(Option<&QueueGroup>, Vec<&T>)> = Vec::new();
    for r in all {
        let g = group(r);
        match groups.iter_mut().find(|(k, _)| g.is_some() && *k == g) {
            Some((_, members)) => members.push(r),
            None => groups.push((g, vec![r])),
        }
    }
    let n = groups.len();
    (0..n).find_map(|i| {
        let members = &groups[(turn + i) % n].1;
        let m = members.len();
        (0..m)
            .map(|j| members[(turn / n + j) % m])
            .find(|r| room(r))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Member = (&'static str, Option<Arc<QueueGroup>>);

    fn member(name: &'static str, filter: &str, group: &str) -> Member {
        (name, QueueGroup::of(filter, Some(group.to_owned())))
    }

    fn group_of(m: &Member) -> Option<&QueueGroup> {
        m.1.as_deref()
    }

    #[test]
    fn the_same_name_on_another_filter_is_another_group() {
        let all = [
            member("a", "q.a", "g"),
            member("b", "q.a", "g"),
            member("star", "q.*", "g"),
            member("plain", "q.a", ""),
        ];
        let mut counts = std::collections::BTreeMap::new();
        for turn in 0..10 {
            for m in pick(&all, group_of, turn) {
                *counts.entry(m.0).or_insert(0) += 1;
            }
        }
        assert_eq!(counts["star"], 10);
        assert_eq!(counts["plain"], 10);
        assert_eq!((counts["a"], counts["b"]), (5, 5));
    }

    #[test]
    fn calls_take_turns_over_groups_then_members_and_skip_full_ones() {
        let all = [
            member("x1", "svc.a", "g"),
            member("x2", "svc.a", "g"),
            member("y", "svc.*", "g"),
        ];
        let mut counts = std::collections::BTreeMap::new();
        for turn in 0..12 {
            let m = choose(&all, group_of, |_| true, turn).unwrap();
            *counts.entry(m.0).or_insert(0) += 1;
        }
        assert_eq!((counts["x1"], counts["x2"], counts["y"]), (3, 3, 6));
        // A full member is skipped; a full group hands over to the next.
        for turn in 0..6 {
            let m = choose(&all, group_of, |m| m.0 != "x1", turn).unwrap();
            assert_ne!(m.0, "x1");
            let m = choose(&all, group_of, |m| m.0 == "y", turn).unwrap();
            assert_eq!(m.0, "y");
        }
        assert!(choose(&all, group_of, |_| false, 0).is_none());
        // Instances outside groups are groups of one each.
        let solo = [member("s1", "svc.a", ""), member("s2", "svc.a", "")];
        let firsts: Vec<_> = (0..4)
            .map(|t| choose(&solo, group_of, |_| true, t).unwrap().0)
            .collect();
        assert_eq!(firsts, ["s1", "s2", "s1", "s2"]);
    }
}
