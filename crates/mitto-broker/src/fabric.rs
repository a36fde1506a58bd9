//! Messages the broker's own federation brings in from the other brokers
//! (`mitto_bridge::federation`, docs/BRIDGES.md). A queue group spans the brokers: the fabric
//! picks one broker per group, so a message from the fabric goes to this broker's plain
//! subscriptions with one copy, and to one member of a group the fabric chose this broker for
//! with another. Only the federation's in-process connections are heard so: from any other
//! connection these headers are ordinary ones.

use crate::groups::QueueGroup;
use mitto::proto::{Frame, Headers};
use mitto_bridge::federation::{CLIENT_PREFIX, FED_GROUP_HEADER, FED_HEADER};

/// Which of the subscriptions matching a message it goes to.
#[derive(Debug)]
pub(crate) enum Scope {
    /// Every subscription outside queue groups and one member of each group.
    All,
    /// The subscriptions outside queue groups only.
    Plain,
    /// One member of this group only.
    Group(QueueGroup),
}

/// Whether a connection is the broker's own federation: in-process and so named.
pub(crate) fn is_federation(is_local: bool, name: &str) -> bool {
    is_local && name.starts_with(CLIENT_PREFIX)
}

/// The scope of PUBLISH or REQUEST `f` from the federation; a copy for a queue group loses the
/// header naming it (its member sees what a plain subscriber of the fabric sees).
pub(crate) fn take(f: &mut Frame) -> Scope {
    if f.headers.get_custom(FED_HEADER).is_none() {
        return Scope::All;
    }
    let Some(v) = f.headers.get_custom(FED_GROUP_HEADER) else {
        return Scope::Plain;
    };
    // Neither a filter nor a group name holds a space; a value that is not the two names no
    // group (no member matches it).
    let (filter, name) = std::str::from_utf8(v)
        .ok()
        .and_then(|v| v.split_once(' '))
        .unwrap_or_default();
    let group = QueueGroup::new(filter, name);
    f.headers = without(&f.headers, FED_GROUP_HEADER);
    Scope::Group(group)
}

/// `h` without header `key`.
fn without(h: &Headers, key: &str) -> Headers {
    let mut b = Headers::builder();
    for (k, v) in h.iter() {
        if matches!(k, mitto::proto::HeaderKey::Custom(c) if c.eq_ignore_ascii_case(key)) {
            continue;
        }
        b = b.clone().insert(k, v).unwrap_or(b);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mitto::proto::Subject;

    fn publish(h: Headers) -> Frame {
        Frame::publish(Subject::new("a.b").unwrap(), &b"x"[..]).with_headers(h)
    }

    #[test]
    fn the_fabric_marks_choose_plain_subscribers_or_one_group() {
        let mut f = publish(Headers::default());
        assert!(matches!(take(&mut f), Scope::All));
        let mut f = publish(Headers::builder().with(FED_HEADER, "b1").build());
        assert!(matches!(take(&mut f), Scope::Plain));
        let h = Headers::builder()
            .with(FED_HEADER, "b1")
            .with(FED_GROUP_HEADER, "a.* workers")
            .with("tenant", "t")
            .build();
        let mut f = publish(h);
        match take(&mut f) {
            Scope::Group(g) => assert_eq!(g, QueueGroup::new("a.*", "workers")),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.headers.get_custom(FED_GROUP_HEADER), None, "removed");
        assert_eq!(f.headers.get_custom(FED_HEADER), Some(&b"b1"[..]));
        assert_eq!(f.headers.get_custom("tenant"), Some(&b"t"[..]));
        // A group header without the mark is an ordinary header.
        let mut f = publish(Headers::builder().with(FED_GROUP_HEADER, "a.* w").build());
        assert!(matches!(take(&mut f), Scope::All));
        assert!(is_federation(true, "mitto-federation/b0.1"));
        assert!(!is_federation(false, "mitto-federation/b0.1"));
        assert!(!is_federation(true, "app"));
    }
}
