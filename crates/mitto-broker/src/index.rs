//! The subject index: a token trie (as nats-server's sublist) mapping subscription filters to
//! subscribers, matched against literal subjects in time proportional to the subject's depth,
//! not to the number of subscriptions.

use std::collections::HashMap;

/// Filters and their values.
#[derive(Debug)]
pub(crate) struct Index<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug)]
struct Node<T> {
    literal: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    /// Filters that end at this node.
    here: Vec<T>,
    /// Filters that end with `>` after this node.
    rest: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            star: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

impl<T: Clone> Default for Index<T> {
    fn default() -> Self {
        Index {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: Clone> Index<T> {
    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `v` under `filter` (a valid subject filter).
    pub(crate) fn insert(&mut self, filter: &str, v: T) {
        let mut node = &mut self.root;
        for tok in filter.split('.') {
            node = match tok {
                ">" => {
                    node.rest.push(v);
                    self.len += 1;
                    return;
                }
                "*" => node.star.get_or_insert_with(Box::default),
                lit => node.literal.entry(lit.into()).or_default(),
            };
        }
        node.here.push(v);
        self.len += 1;
    }

    /// Removes the entries under `filter` for which `pred` holds; returns how many.
    pub(crate) fn remove(&mut self, filter: &str, pred: impl Fn(&T) -> bool) -> usize {
        let toks: Vec<&str> = filter.split('.').collect();
        let n = remove_in(&mut self.root, &toks, &pred);
        self.len -= n;
        n
    }

    /// Appends every value whose filter matches the literal `subject`.
    /// Every filter with its values (for the federation's announcements).
    pub(crate) fn entries(&self) -> Vec<(String, T)> {
        let mut out = Vec::new();
        entries_in(&self.root, &mut Vec::new(), &mut out);
        out
    }

    pub(crate) fn matches(&self, subject: &str, out: &mut Vec<T>) {
        let toks: Vec<&str> = subject.split('.').collect();
        match_in(&self.root, &toks, out);
    }
}

/// Every filter under `node` (whose tokens are `path`) with its values.
fn entries_in<T: Clone>(node: &Node<T>, path: &mut Vec<String>, out: &mut Vec<(String, T)>) {
    for v in &node.here {
        out.push((path.join("."), v.clone()));
    }
    for v in &node.rest {
        let mut p = path.clone();
        p.push(">".into());
        out.push((p.join("."), v.clone()));
    }
    let children = node.literal.iter().map(|(k, n)| (k.to_string(), n));
    let star = node.star.iter().map(|n| ("*".to_owned(), &**n));
    for (tok, n) in children.chain(star) {
        path.push(tok);
        entries_in(n, path, out);
        path.pop();
    }
}

fn remove_in<T>(node: &mut Node<T>, toks: &[&str], pred: &impl Fn(&T) -> bool) -> usize {
    let Some((first, rest)) = toks.split_first() else {
        let before = node.here.len();
        node.here.retain(|v| !pred(v));
        return before - node.here.len();
    };
    match *first {
        ">" => {
            let before = node.rest.len();
            node.rest.retain(|v| !pred(v));
            before - node.rest.len()
        }
        "*" => {
            let Some(child) = node.star.as_deref_mut() else {
                return 0;
            };
            let n = remove_in(child, rest, pred);
            if child.is_empty() {
                node.star = None;
            }
            n
        }
        lit => {
            let Some(child) = node.literal.get_mut(lit) else {
                return 0;
            };
            let n = remove_in(child, rest, pred);
            if child.is_empty() {
                node.literal.remove(lit);
            }
            n
        }
    }
}

fn match_in<T: Clone>(node: &Node<T>, toks: &[&str], out: &mut Vec<T>) {
    let Some((first, rest)) = toks.split_first() else {
        out.extend(node.here.iter().cloned());
        return;
    };
    // `>` needs at least one more token, which there is.
    out.extend(node.rest.iter().cloned());
    if let Some(child) = node.literal.get(*first) {
        match_in(child, rest, out);
    }
    if let Some(child) = node.star.as_deref() {
        match_in(child, rest, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mitto::proto::subject::matches;
    use proptest::prelude::*;

    fn matched(idx: &Index<u32>, s: &str) -> Vec<u32> {
        let mut v = Vec::new();
        idx.matches(s, &mut v);
        v.sort_unstable();
        v
    }

    #[test]
    fn entries_give_back_every_filter() {
        let mut idx = Index::default();
        for (i, f) in ["a.b", "a.*", "a.>", "x", "*.y.>", "a.b"]
            .iter()
            .enumerate()
        {
            idx.insert(f, i as u32);
        }
        let mut got = idx.entries();
        got.sort();
        let want: Vec<(String, u32)> = [
            ("*.y.>", 4),
            ("a.*", 1),
            ("a.>", 2),
            ("a.b", 0),
            ("a.b", 5),
            ("x", 3),
        ]
        .iter()
        .map(|(f, i)| ((*f).to_owned(), *i))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn wildcards_match_as_nats_users_expect() {
        let mut idx = Index::default();
        idx.insert("orders.created", 1);
        idx.insert("orders.*", 2);
        idx.insert("orders.>", 3);
        idx.insert(">", 4);
        idx.insert("*.created", 5);
        idx.insert("orders.*.eu", 6);
        assert_eq!(matched(&idx, "orders.created"), [1, 2, 3, 4, 5]);
        assert_eq!(matched(&idx, "orders.paid.eu"), [3, 4, 6]);
        assert_eq!(
            matched(&idx, "orders"),
            [4],
            "`>` needs one token, and `orders` is one"
        );
        assert_eq!(matched(&idx, "users.created"), [4, 5]);
        assert_eq!(idx.len(), 6);
        assert_eq!(idx.remove("orders.>", |v| *v == 3), 1);
        assert_eq!(idx.remove("orders.*", |v| *v == 99), 0);
        assert_eq!(matched(&idx, "orders.paid.eu"), [4, 6]);
        assert_eq!(idx.remove("orders.*.eu", |_| true), 1);
        assert_eq!(idx.len(), 4);
        for (f, v) in [
            ("orders.created", 1),
            ("orders.*", 2),
            (">", 4),
            ("*.created", 5),
        ] {
            idx.remove(f, |x| *x == v);
        }
        assert!(idx.root.is_empty(), "removal prunes empty nodes");
    }

    proptest! {
        /// The trie agrees with the reference matcher of mitto-proto for any filters.
        #[test]
        fn trie_agrees_with_subject_matches(
            filters in prop::collection::vec(
                prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("*")], 1..4), 1..12),
            tail in prop::collection::vec(any::<bool>(), 12),
            subject in prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..5),
        ) {
            let mut idx = Index::default();
            let mut fs = Vec::new();
            for (i, toks) in filters.iter().enumerate() {
                let mut f = toks.join(".");
                if tail[i] { f.push_str(".>"); }
                idx.insert(&f, i);
                fs.push(f);
            }
            let s = subject.join(".");
            let mut got = Vec::new();
            idx.matches(&s, &mut got);
            got.sort_unstable();
            let want: Vec<usize> = fs.iter().enumerate()
                .filter(|(_, f)| matches(f, &s))
                .map(|(i, _)| i).collect();
            prop_assert_eq!(got, want);
        }
    }
}
