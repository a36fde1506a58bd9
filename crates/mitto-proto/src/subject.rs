//! Subjects and subject filters, as NATS users know them.
//!
//! A subject is one or more non-empty tokens separated by `.` (`orders.eu.created`). Tokens are
//! UTF-8 without whitespace or control characters. A *filter* may also use two wildcard tokens:
//! `*` matches exactly one token, `>` matches one or more tokens and must be the last token.
//! `*` and `>` are not allowed anywhere else: not inside a token, never in a literal subject.

use crate::error::{DecodeErrorKind, EncodeError};
use bytes::Bytes;
use std::fmt;

/// Bytes of subjects kept for the life of the process by [`Subject::interned`], at most.
pub const INTERN_BYTES: usize = 1 << 20;

/// The literal subjects one decoder sees over and over (a subscriber's few subjects, a
/// broker's publishers'), decoded as [`Subject::interned`] copies: no check and no reference
/// to the read buffer per frame. A subject is kept once it comes twice within the last
/// [`RECENT`] distinct ones it saw, so a stream of one-off subjects (reply inboxes) keeps
/// nothing; at most [`HOT`] are held at once.
#[derive(Clone, Debug, Default)]
pub(crate) struct SubjectCache {
    hot: [Option<Subject>; HOT],
    next_hot: usize,
    recent: [u64; RECENT],
    next_recent: usize,
}

/// Subjects a [`SubjectCache`] holds.
const HOT: usize = 4;
/// Subjects (hashes) a [`SubjectCache`] remembers seeing.
const RECENT: usize = 8;

impl SubjectCache {
    /// The kept copy of `b`, if this decoder keeps it.
    #[inline]
    pub(crate) fn get(&self, b: &[u8]) -> Option<Subject> {
        self.hot
            .iter()
            .flatten()
            .find(|s| s.0.len() == b.len() && s.0[..] == *b)
            .cloned()
    }

    /// A literal subject decoded the long way: counted, and kept when it came recently; the
    /// kept copy, to use in its place.
    pub(crate) fn saw(&mut self, s: &Subject) -> Option<Subject> {
        use std::hash::BuildHasher;
        // Never 0, the value of an empty place.
        let h = rustc_hash::FxBuildHasher.hash_one(&s.0[..]) | 1;
        if !self.recent.contains(&h) {
            self.recent[self.next_recent] = h;
            self.next_recent = (self.next_recent + 1) % RECENT;
            return None;
        }
        // A copy of its own in any case: a kept subject holds nothing of the read buffer.
        let k = Subject::interned(s.as_str()).ok()?;
        self.hot[self.next_hot] = Some(k.clone());
        self.next_hot = (self.next_hot + 1) % HOT;
        Some(k)
    }
}

/// A validated subject or subject filter, held as shared bytes (no copy when decoded).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Subject(Bytes);

/// Why a subject is invalid; `Ok(true)` when it is a filter with wildcards. ASCII subjects
/// (nearly all) are checked in one pass over the bytes; others by [`check_chars`].
fn check(s: &str) -> Result<bool, &'static str> {
    if is_plain(s.as_bytes()) {
        return Ok(false);
    }
    if s.is_ascii() {
        check_ascii(s.as_bytes())
    } else {
        check_chars(s)
    }
}

/// Whether `b` is a valid literal subject of printable ASCII (nearly every subject on the
/// wire), in one pass without a branch per byte; `false` sends it to the full check (which also
/// gives the reason when it is invalid).
#[inline]
fn is_plain(b: &[u8]) -> bool {
    let mut odd = false;
    let mut empty_token = false;
    let mut prev_dot = true;
    for &c in b {
        let dot = c == b'.';
        odd |= !(0x21..0x7f).contains(&c) | (c == b'*') | (c == b'>');
        empty_token |= dot & prev_dot;
        prev_dot = dot;
    }
    !b.is_empty() && !odd && !empty_token && !prev_dot
}

/// [`check`] for ASCII bytes, in one pass.
fn check_ascii(b: &[u8]) -> Result<bool, &'static str> {
    if b.is_empty() {
        return Err("empty subject");
    }
    let n = b.len();
    let mut wildcard = false;
    let mut start = 0;
    let mut i = 0;
    while i < n {
        match b[i] {
            b'.' => {
                if i == start {
                    return Err("empty token");
                }
                start = i + 1;
            }
            c @ (b'*' | b'>') => {
                let alone = i == start && (i + 1 == n || b[i + 1] == b'.');
                if !alone {
                    return Err("wildcard inside a token");
                }
                if c == b'>' && i + 1 != n {
                    return Err("'>' must be the last token");
                }
                wildcard = true;
            }
            c if c <= b' ' || c == 0x7f => return Err("whitespace or control character"),
            _ => {}
        }
        i += 1;
    }
    if start == n {
        return Err("empty token");
    }
    Ok(wildcard)
}

/// [`check`] token by token and char by char, for subjects with non-ASCII characters.
fn check_chars(s: &str) -> Result<bool, &'static str> {
    if s.is_empty() {
        return Err("empty subject");
    }
    let mut wildcard = false;
    let mut tokens = s.split('.').peekable();
    while let Some(tok) = tokens.next() {
        match tok {
            "" => return Err("empty token"),
            "*" => wildcard = true,
            ">" => {
                if tokens.peek().is_some() {
                    return Err("'>' must be the last token");
                }
                wildcard = true;
            }
            _ => {
                for c in tok.chars() {
                    if c == '*' || c == '>' {
                        return Err("wildcard inside a token");
                    }
                    if c.is_whitespace() || c.is_control() {
                        return Err("whitespace or control character");
                    }
                }
            }
        }
    }
    Ok(wildcard)
}

impl Subject {
    /// Validates a subject or a filter (wildcards allowed).
    pub fn new(s: &str) -> Result<Subject, EncodeError> {
        Self::check_len(s)?;
        check(s).map_err(|reason| EncodeError::InvalidSubject {
            subject: s.to_owned(),
            reason,
        })?;
        Ok(Subject(Bytes::copy_from_slice(s.as_bytes())))
    }

    /// Validates a literal subject (no wildcards), as PUBLISH, EVENT and REQUEST need.
    pub fn literal(s: &str) -> Result<Subject, EncodeError> {
        Self::check_len(s)?;
        match check(s) {
            Ok(false) => Ok(Subject(Bytes::copy_from_slice(s.as_bytes()))),
            Ok(true) => Err(EncodeError::InvalidSubject {
                subject: s.to_owned(),
                reason: "wildcards are only allowed in subscriptions",
            }),
            Err(reason) => Err(EncodeError::InvalidSubject {
                subject: s.to_owned(),
                reason,
            }),
        }
    }

    /// Validates a `'static` subject or filter without copying it.
    pub fn from_static(s: &'static str) -> Result<Subject, EncodeError> {
        Self::check_len(s)?;
        check(s).map_err(|reason| EncodeError::InvalidSubject {
            subject: s.to_owned(),
            reason,
        })?;
        Ok(Subject(Bytes::from_static(s.as_bytes())))
    }

    fn check_len(s: &str) -> Result<(), EncodeError> {
        if s.len() > usize::from(u16::MAX) {
            return Err(EncodeError::TooLarge {
                what: "subject",
                len: s.len() as u64,
                max: u64::from(u16::MAX),
            });
        }
        Ok(())
    }

    /// `s` as a checked literal subject backed by a copy kept for the life of the process, so
    /// that its clones and drops touch no shared counter (a publisher and its subscribers on
    /// different cores would otherwise contend on it for every message). Meant for the few
    /// subjects a process uses over and over: the copies are bounded by [`INTERN_BYTES`] in
    /// all, past which subjects are plain copies; reply subjects (`_INBOX.`), used once, are
    /// never kept.
    pub fn interned(s: &str) -> Result<Subject, EncodeError> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        type Table = (HashMap<&'static str, Subject>, usize);
        static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
        if s.starts_with("_INBOX.") {
            return Subject::literal(s);
        }
        let table = TABLE.get_or_init(|| Mutex::new((HashMap::new(), 0)));
        let Ok(mut t) = table.lock() else {
            return Subject::literal(s);
        };
        if let Some(k) = t.0.get(s) {
            return Ok(k.clone());
        }
        // Checked before anything is kept.
        let checked = Subject::literal(s)?;
        if t.1 + s.len() > INTERN_BYTES {
            return Ok(checked);
        }
        let kept: &'static str = Box::leak(s.to_owned().into_boxed_str());
        let k = Subject(Bytes::from_static(kept.as_bytes()));
        t.1 += s.len();
        t.0.insert(kept, k.clone());
        Ok(k)
    }

    /// The empty subject, for frames that carry none.
    pub const fn empty() -> Subject {
        Subject(Bytes::new())
    }

    /// Validates received bytes. Returns whether the subject has wildcards.
    pub(crate) fn from_wire(b: Bytes) -> Result<(Subject, bool), DecodeErrorKind> {
        let checked = if is_plain(&b) {
            Ok(false)
        } else if b.is_ascii() {
            check_ascii(&b)
        } else {
            let s = std::str::from_utf8(&b).map_err(|_| DecodeErrorKind::SubjectNotUtf8)?;
            check_chars(s)
        };
        let wildcard = checked.map_err(DecodeErrorKind::InvalidSubject)?;
        Ok((Subject(b), wildcard))
    }

    /// The subject as text.
    pub fn as_str(&self) -> &str {
        // Every constructor validated UTF-8; an empty subject is "".
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The subject's bytes, shared.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this is the empty subject.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether this is a filter with `*` or `>` tokens.
    pub fn has_wildcards(&self) -> bool {
        self.as_str().split('.').any(|t| t == "*" || t == ">")
    }

    /// Whether this filter matches the literal subject `subject`.
    pub fn matches(&self, subject: &str) -> bool {
        matches(self.as_str(), subject)
    }

    /// The tokens.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.as_str().split('.')
    }
}

/// Whether the filter `filter` matches the literal subject `subject` (both assumed valid).
///
/// ```
/// use mitto_proto::subject::matches;
/// assert!(matches("orders.*.created", "orders.eu.created"));
/// assert!(matches("orders.>", "orders.eu.created"));
/// assert!(!matches("orders.>", "orders"));
/// assert!(!matches("orders.*", "orders.eu.created"));
/// ```
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subject({:?})", self.as_str())
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<&str> for Subject {
    type Error = EncodeError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Subject::new(s)
    }
}

impl TryFrom<String> for Subject {
    type Error = EncodeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::check_len(&s)?;
        check(&s).map_err(|reason| EncodeError::InvalidSubject {
            subject: s.clone(),
            reason,
        })?;
        Ok(Subject(Bytes::from(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_and_invalid() {
        for ok in [
            "a",
            "a.b",
            "orders.eu.created",
            "*",
            ">",
            "a.*.c",
            "a.>",
            "*.*",
            "_INBOX.x1",
        ] {
            Subject::new(ok).unwrap();
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a b", "a.>.b", "a*", "a.b>", "tab\t", "x\u{7}",
        ] {
            assert!(Subject::new(bad).is_err(), "{bad:?} should be invalid");
        }
        assert!(Subject::literal("a.*").is_err());
        assert!(Subject::literal("a.>").is_err());
        assert!(Subject::literal("a.b").is_ok());
        assert!(Subject::new("a.*").unwrap().has_wildcards());
        assert!(!Subject::new("a.b").unwrap().has_wildcards());
        assert!(Subject::new(&"a".repeat(70_000)).is_err());
    }

    #[test]
    fn wire_validation() {
        assert_eq!(
            Subject::from_wire(Bytes::from_static(b"\xff")).unwrap_err(),
            DecodeErrorKind::SubjectNotUtf8
        );
        assert!(Subject::from_wire(Bytes::from_static(b"a..b")).is_err());
        assert!(Subject::from_wire(Bytes::from_static(b"a.>")).unwrap().1);
    }

    #[test]
    fn matching_table() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.b.c", "a.b", false),
            ("a.b", "a.b.c", false),
            ("a.*.c", "a.x.c", true),
            ("a.*.c", "a.x.y.c", false),
            ("a.*", "a", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c.d", true),
            ("a.>", "a", false),
            (">", "a", true),
            (">", "a.b", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("*.>", "a.b", true),
            ("*.>", "a", false),
            ("a.*.>", "a.b.c", true),
            ("a.*.>", "a.b", false),
        ];
        for (f, s, want) in cases {
            assert_eq!(matches(f, s), want, "{f} vs {s}");
        }
    }

    fn token() -> impl Strategy<Value = String> {
        "[a-z0-9_]{1,4}"
    }

    proptest! {
        #[test]
        fn literal_matches_itself(toks in prop::collection::vec(token(), 1..6)) {
            let s = toks.join(".");
            prop_assert!(matches(&s, &s));
            prop_assert!(matches(">", &s));
        }

        #[test]
        fn star_replaces_any_token(toks in prop::collection::vec(token(), 1..6), i in 0usize..6) {
            let i = i % toks.len();
            let mut f = toks.clone();
            f[i] = "*".into();
            prop_assert!(matches(&f.join("."), &toks.join(".")));
            let mut g = toks.clone();
            g.truncate(i);
            g.push(">".into());
            prop_assert!(matches(&g.join("."), &toks.join(".")));
            // a filter with one more token never matches
            let longer = format!("{}.*", toks.join("."));
            prop_assert!(!matches(&longer, &toks.join(".")));
        }

        /// The one-pass ASCII check gives the same verdict and reason as the token-by-token
        /// one, which non-ASCII subjects use.
        #[test]
        fn ascii_check_agrees_with_char_check(s in "[a-c.*> \t\x7f\x01]{0,12}") {
            prop_assert_eq!(check(&s), check_chars(&s));
            prop_assert_eq!(check_ascii(s.as_bytes()), check_chars(&s));
            if is_plain(s.as_bytes()) {
                prop_assert_eq!(check_chars(&s), Ok(false));
            }
        }

        /// The branch-free pass for plain subjects never accepts what the full check refuses or
        /// reads as a filter, whatever the characters (non-ASCII included).
        #[test]
        fn plain_subjects_are_valid_literals(s in "\\PC{0,16}|[a-z0-9._*>-]{0,16}") {
            if is_plain(s.as_bytes()) {
                prop_assert_eq!(check_chars(&s), Ok(false));
            }
            prop_assert_eq!(check(&s), check_chars(&s));
            let wire = Subject::from_wire(Bytes::copy_from_slice(s.as_bytes()));
            match check_chars(&s) {
                Ok(w) => prop_assert_eq!(wire.map(|(_, wild)| wild), Ok(w)),
                Err(_) => prop_assert!(wire.is_err()),
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,20}") {
            let _ = Subject::new(&s);
            let _ = Subject::from_wire(Bytes::from(s.into_bytes()));
        }
    }
}
