//! Subject mapping between mitto and a backend's names, as pure functions.
//!
//! | mitto | MQTT topic | AMQP topic routing key | NATS subject |
//! |---|---|---|---|
//! | `a.b.c` | `a/b/c` | `a.b.c` | `a.b.c` |
//! | `*` (one token) | `+` | `*` | `*` |
//! | `>` (one or more, last) | `#` | `#` | `>` |
//!
//! A [`Rule`] pairs a mitto filter with a backend filter. Wildcards pair up in order (the first
//! `*` with the first `+`, `>` with `#`); literal tokens may differ, so a rule can rename
//! (`orders.>` with `legacy/orders/#`). A concrete name is carried across by matching it against
//! its own side's pattern and putting the captured tokens into the other side's.
//!
//! MQTT's and AMQP's `#` also match zero levels (`orders/#` matches `orders`); mitto's `>` does
//! not, so such a name matches no rule here and is counted as unmappable by the bridge rather
//! than renamed to something its mitto filter does not cover.

use mitto::proto::Subject;

/// A backend's naming rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Syntax {
    /// MQTT topics: `/` between levels, `+` and `#`.
    Mqtt,
    /// AMQP topic-exchange routing keys: `.` between words, `*` and `#`.
    Amqp,
    /// NATS subjects: the same as mitto's.
    Nats,
}

impl Syntax {
    fn sep(self) -> char {
        match self {
            Syntax::Mqtt => '/',
            Syntax::Amqp | Syntax::Nats => '.',
        }
    }
    fn one(self) -> &'static str {
        match self {
            Syntax::Mqtt => "+",
            Syntax::Amqp | Syntax::Nats => "*",
        }
    }
    fn rest(self) -> &'static str {
        match self {
            Syntax::Mqtt | Syntax::Amqp => "#",
            Syntax::Nats => ">",
        }
    }
    /// The longest name the backend accepts, bytes.
    fn max_len(self) -> usize {
        match self {
            Syntax::Mqtt => 65_535,
            Syntax::Amqp => 255,
            Syntax::Nats => usize::MAX,
        }
    }
}

/// A name or filter that cannot be carried across.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// A filter in a rule is malformed.
    #[error("invalid filter {filter:?}: {reason}")]
    InvalidFilter {
        /// The filter.
        filter: String,
        /// Why.
        reason: String,
    },
    /// The two filters of a rule do not have the same wildcards in the same order.
    #[error("filters {mitto:?} and {remote:?} do not have the same wildcards in the same order")]
    WildcardsDiffer {
        /// The mitto filter.
        mitto: String,
        /// The backend filter.
        remote: String,
    },
    /// A concrete name matched the rule but is not a valid name on the other side.
    #[error("{name:?} cannot be carried across: {reason}")]
    Unmappable {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Lit(String),
    One,
    Rest,
}

/// One mapping between a mitto filter and a backend filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    syntax: Syntax,
    mitto: Vec<Tok>,
    remote: Vec<Tok>,
    /// The backend name of a subject is the subject itself (same tokens, `.` between them).
    identity: bool,
}

/// The backend filter that corresponds to the mitto filter `filter` by the table above.
pub fn remote_filter_for(filter: &str, syntax: Syntax) -> String {
    let toks: Vec<&str> = filter
        .split('.')
        .map(|t| match t {
            "*" => syntax.one(),
            ">" => syntax.rest(),
            t => t,
        })
        .collect();
    toks.join(&syntax.sep().to_string())
}

fn parse_mitto(filter: &str) -> Result<Vec<Tok>, MapError> {
    Subject::new(filter).map_err(|e| MapError::InvalidFilter {
        filter: filter.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(filter
        .split('.')
        .map(|t| match t {
            "*" => Tok::One,
            ">" => Tok::Rest,
            t => Tok::Lit(t.to_owned()),
        })
        .collect())
}

fn parse_remote(filter: &str, syntax: Syntax) -> Result<Vec<Tok>, MapError> {
    let bad = |reason: &str| MapError::InvalidFilter {
        filter: filter.to_owned(),
        reason: reason.to_owned(),
    };
    if filter.is_empty() || filter.len() > syntax.max_len() {
        return Err(bad("empty or too long"));
    }
    let parts: Vec<&str> = filter.split(syntax.sep()).collect();
    let mut out = Vec::with_capacity(parts.len());
    for (i, t) in parts.iter().enumerate() {
        let tok = if *t == syntax.one() {
            Tok::One
        } else if *t == syntax.rest() {
            if i + 1 != parts.len() {
                return Err(bad("the multi-level wildcard must be last"));
            }
            Tok::Rest
        } else {
            check_remote_token(t, syntax).map_err(bad)?;
            Tok::Lit((*t).to_owned())
        };
        out.push(tok);
    }
    Ok(out)
}

/// Whether `t` may be one literal level or word of a backend name.
fn check_remote_token(t: &str, syntax: Syntax) -> Result<(), &'static str> {
    if t.is_empty() {
        return Err("empty level");
    }
    match syntax {
        Syntax::Mqtt if t.contains(['+', '#']) => Err("MQTT wildcard inside a level"),
        Syntax::Mqtt if t.contains('/') => Err("'/' inside a token (it separates MQTT levels)"),
        Syntax::Mqtt if t.contains('.') => {
            Err("'.' inside an MQTT level (it separates mitto tokens)")
        }
        Syntax::Amqp | Syntax::Nats if t.contains(['*', '#', '>']) => {
            Err("wildcard character inside a word")
        }
        Syntax::Nats if t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Err("whitespace in a NATS subject")
        }
        _ => Ok(()),
    }
}

fn wildcards(toks: &[Tok]) -> Vec<&Tok> {
    toks.iter().filter(|t| !matches!(t, Tok::Lit(_))).collect()
}

/// Matches concrete `parts` against `pattern`, returning the range of `parts` each wildcard
/// matched.
fn capture(pattern: &[Tok], parts: &[&str]) -> Option<Vec<std::ops::Range<usize>>> {
    let mut caps = Vec::new();
    let mut i = 0;
    for (k, tok) in pattern.iter().enumerate() {
        match tok {
            Tok::Lit(l) => {
                if parts.get(i) != Some(&l.as_str()) {
                    return None;
                }
                i += 1;
            }
            Tok::One => {
                parts.get(i)?;
                caps.push(i..i + 1);
                i += 1;
            }
            Tok::Rest => {
                debug_assert_eq!(k + 1, pattern.len());
                if i >= parts.len() {
                    return None;
                }
                caps.push(i..parts.len());
                i = parts.len();
            }
        }
    }
    (i == parts.len()).then_some(caps)
}

/// Whether the mitto subject `subject` matches `pattern` (as [`capture`] would).
fn matches(pattern: &[Tok], subject: &str) -> bool {
    let mut parts = subject.split('.');
    for tok in pattern {
        match tok {
            Tok::Lit(l) => {
                if parts.next() != Some(l.as_str()) {
                    return false;
                }
            }
            Tok::One => {
                if parts.next().is_none() {
                    return false;
                }
            }
            Tok::Rest => return parts.next().is_some(),
        }
    }
    parts.next().is_none()
}

/// `pattern` with its wildcards filled in by the captured `parts`, joined by `sep`.
fn fill(pattern: &[Tok], parts: &[&str], caps: &[std::ops::Range<usize>], sep: char) -> String {
    let mut caps = caps.iter();
    let mut out = String::new();
    let mut first = true;
    let mut push = |t: &str| {
        if !first {
            out.push(sep);
        }
        first = false;
        out.push_str(t);
    };
    for tok in pattern {
        match tok {
            Tok::Lit(l) => push(l),
            Tok::One | Tok::Rest => {
                for t in caps.next().map_or(&[][..], |r| &parts[r.clone()]) {
                    push(t);
                }
            }
        }
    }
    out
}

/// Whether some concrete name matches both patterns.
fn patterns_overlap(a: &[Tok], b: &[Tok]) -> bool {
    match (a.first(), b.first()) {
        (None, None) => true,
        (Some(Tok::Rest), _) => !b.is_empty(),
        (_, Some(Tok::Rest)) => !a.is_empty(),
        (None, _) | (_, None) => false,
        (Some(x), Some(y)) => {
            let tok_ok = match (x, y) {
                (Tok::Lit(x), Tok::Lit(y)) => x == y,
                _ => true,
            };
            tok_ok && patterns_overlap(&a[1..], &b[1..])
        }
    }
}

fn render(toks: &[Tok], syntax: Option<Syntax>) -> String {
    let (sep, one, rest) = match syntax {
        Some(s) => (s.sep(), s.one(), s.rest()),
        None => ('.', "*", ">"),
    };
    toks.iter()
        .map(|t| match t {
            Tok::Lit(l) => l.as_str(),
            Tok::One => one,
            Tok::Rest => rest,
        })
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

impl Rule {
    /// A rule between the mitto filter `mitto` and the backend filter `remote` (by default the
    /// one [`remote_filter_for`] gives).
    pub fn new(mitto: &str, remote: Option<&str>, syntax: Syntax) -> Result<Rule, MapError> {
        let m = parse_mitto(mitto)?;
        let default;
        let remote_text = match remote {
            Some(r) => r,
            None => {
                default = remote_filter_for(mitto, syntax);
                &default
            }
        };
        let r = parse_remote(remote_text, syntax)?;
        if wildcards(&m) != wildcards(&r) {
            return Err(MapError::WildcardsDiffer {
                mitto: mitto.to_owned(),
                remote: remote_text.to_owned(),
            });
        }
        Ok(Rule {
            identity: m == r && syntax.sep() == '.',
            syntax,
            mitto: m,
            remote: r,
        })
    }

    /// The mitto filter, as text.
    pub fn mitto_filter(&self) -> String {
        render(&self.mitto, None)
    }

    /// The backend filter, as text (what the bridge subscribes or binds to).
    pub fn remote_filter(&self) -> String {
        render(&self.remote, Some(self.syntax))
    }

    /// The backend name for the mitto subject `subject`: `Ok(None)` when the rule does not
    /// cover it.
    pub fn to_remote(&self, subject: &str) -> Result<Option<String>, MapError> {
        let unmappable = |reason| MapError::Unmappable {
            name: subject.to_owned(),
            reason,
        };
        if self.identity {
            // The common case, without splitting into a list: the name is the subject.
            if !matches(&self.mitto, subject) {
                return Ok(None);
            }
            for t in subject.split('.') {
                check_remote_token(t, self.syntax).map_err(unmappable)?;
            }
            if subject.len() > self.syntax.max_len() {
                return Err(unmappable("longer than the backend allows"));
            }
            return Ok(Some(subject.to_owned()));
        }
        let parts: Vec<&str> = subject.split('.').collect();
        let Some(caps) = capture(&self.mitto, &parts) else {
            return Ok(None);
        };
        for r in &caps {
            for t in &parts[r.clone()] {
                check_remote_token(t, self.syntax).map_err(|reason| MapError::Unmappable {
                    name: subject.to_owned(),
                    reason,
                })?;
            }
        }
        let name = fill(&self.remote, &parts, &caps, self.syntax.sep());
        if name.len() > self.syntax.max_len() {
            return Err(MapError::Unmappable {
                name: subject.to_owned(),
                reason: "longer than the backend allows",
            });
        }
        Ok(Some(name))
    }

    /// Whether some backend name is covered by both this rule and `other` (of the same
    /// backend): what one carries out, the other could carry back in.
    pub fn remote_overlaps(&self, other: &Rule) -> bool {
        patterns_overlap(&self.remote, &other.remote)
    }

    /// The mitto subject for the backend name `name`: `Ok(None)` when the rule does not cover it.
    pub fn to_mitto(&self, name: &str) -> Result<Option<String>, MapError> {
        let parts: Vec<&str> = name.split(self.syntax.sep()).collect();
        let Some(caps) = capture(&self.remote, &parts) else {
            return Ok(None);
        };
        // One backend level is one mitto token: a level with a '.' would become two.
        if caps
            .iter()
            .flat_map(|r| &parts[r.clone()])
            .any(|t| t.contains('.'))
        {
            return Err(MapError::Unmappable {
                name: name.to_owned(),
                reason: "a level holds '.', which separates mitto tokens",
            });
        }
        let subject = fill(&self.mitto, &parts, &caps, '.');
        match Subject::literal(&subject) {
            Ok(_) => Ok(Some(subject)),
            Err(_) => Err(MapError::Unmappable {
                name: name.to_owned(),
                reason: "not a valid mitto subject (an empty level, '.', whitespace or a wildcard)",
            }),
        }
    }
}

/// Whether some subject matches both mitto filters `a` and `b`.
pub fn filters_overlap(a: &str, b: &str) -> bool {
    fn go(a: &[&str], b: &[&str]) -> bool {
        match (a.first(), b.first()) {
            (None, None) => true,
            (Some(&">"), _) => !b.is_empty(),
            (_, Some(&">")) => !a.is_empty(),
            (None, _) | (_, None) => false,
            (Some(x), Some(y)) => (*x == "*" || *y == "*" || x == y) && go(&a[1..], &b[1..]),
        }
    }
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    go(&a, &b)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_filters_follow_the_table() {
        assert_eq!(remote_filter_for("a.b.c", Syntax::Mqtt), "a/b/c");
        assert_eq!(remote_filter_for("a.*.c.>", Syntax::Mqtt), "a/+/c/#");
        assert_eq!(remote_filter_for("a.*.>", Syntax::Amqp), "a.*.#");
        assert_eq!(remote_filter_for("a.*.>", Syntax::Nats), "a.*.>");
    }

    #[test]
    fn names_cross_both_ways_with_the_default_rule() {
        let r = Rule::new("sensors.*.temp", None, Syntax::Mqtt).unwrap();
        assert_eq!(r.remote_filter(), "sensors/+/temp");
        assert_eq!(
            r.to_remote("sensors.k1.temp").unwrap().as_deref(),
            Some("sensors/k1/temp")
        );
        assert_eq!(
            r.to_mitto("sensors/k1/temp").unwrap().as_deref(),
            Some("sensors.k1.temp")
        );
        assert_eq!(r.to_remote("sensors.k1.hum").unwrap(), None);
        assert_eq!(r.to_mitto("sensors/k1/k2/temp").unwrap(), None);

        let r = Rule::new("orders.>", None, Syntax::Amqp).unwrap();
        assert_eq!(r.remote_filter(), "orders.#");
        assert_eq!(
            r.to_mitto("orders.eu.created").unwrap().as_deref(),
            Some("orders.eu.created")
        );
        let r = Rule::new("orders.>", None, Syntax::Nats).unwrap();
        assert_eq!(
            r.to_remote("orders.a.b").unwrap().as_deref(),
            Some("orders.a.b")
        );
    }

    #[test]
    fn a_rule_can_rename_around_its_wildcards() {
        let r = Rule::new("plant.*.>", Some("legacy/plants/+/data/#"), Syntax::Mqtt).unwrap();
        assert_eq!(
            r.to_remote("plant.p7.line.3").unwrap().as_deref(),
            Some("legacy/plants/p7/data/line/3")
        );
        assert_eq!(
            r.to_mitto("legacy/plants/p7/data/line/3")
                .unwrap()
                .as_deref(),
            Some("plant.p7.line.3")
        );
        assert!(matches!(
            Rule::new("a.*", Some("b/#"), Syntax::Mqtt),
            Err(MapError::WildcardsDiffer { .. })
        ));
        assert!(matches!(
            Rule::new("a.*.*", Some("b/+"), Syntax::Mqtt),
            Err(MapError::WildcardsDiffer { .. })
        ));
    }

    #[test]
    fn zero_level_hash_matches_are_not_renamed_outside_the_filter() {
        let r = Rule::new("orders.>", None, Syntax::Mqtt).unwrap();
        assert_eq!(r.to_mitto("orders").unwrap(), None);
        let r = Rule::new("orders.>", None, Syntax::Amqp).unwrap();
        assert_eq!(r.to_mitto("orders").unwrap(), None);
    }

    #[test]
    fn names_that_do_not_fit_the_other_side_are_errors() {
        let r = Rule::new("a.>", None, Syntax::Mqtt).unwrap();
        // An MQTT level with a '.', or empty, is no mitto token.
        assert!(matches!(
            r.to_mitto("a/b.c"),
            Err(MapError::Unmappable { .. })
        ));
        assert!(matches!(
            r.to_mitto("a//c"),
            Err(MapError::Unmappable { .. })
        ));
        // A mitto token with '/' or '+' is no MQTT level.
        assert!(matches!(
            r.to_remote("a.b/c"),
            Err(MapError::Unmappable { .. })
        ));
        assert!(matches!(
            r.to_remote("a.b+"),
            Err(MapError::Unmappable { .. })
        ));
        // An AMQP routing key is at most 255 bytes.
        let r = Rule::new("a.>", None, Syntax::Amqp).unwrap();
        let long = format!("a.{}", "x".repeat(300));
        assert!(matches!(
            r.to_remote(&long),
            Err(MapError::Unmappable { .. })
        ));
        // Malformed filters are refused when the rule is made.
        assert!(Rule::new("a..b", None, Syntax::Nats).is_err());
        assert!(Rule::new("a.>", Some("a/#/b"), Syntax::Mqtt).is_err());
        assert!(Rule::new("a.>", Some("a/b#"), Syntax::Mqtt).is_err());
    }

    #[test]
    fn overlap_of_filters() {
        assert!(filters_overlap("a.b", "a.b"));
        assert!(filters_overlap("a.*", "a.b"));
        assert!(filters_overlap("a.>", "*.b.c"));
        assert!(filters_overlap(">", "x"));
        assert!(!filters_overlap("a.>", "a"));
        assert!(!filters_overlap("a.*", "b.*"));
        assert!(!filters_overlap("a.*", "a.b.c"));
        assert!(filters_overlap("*.*.c", "a.>"));
    }

    #[test]
    fn overlap_of_backend_sides() {
        let r = |m: &str, remote: Option<&str>| Rule::new(m, remote, Syntax::Mqtt).unwrap();
        // Renamed: the backend sides are what count, not the mitto filters.
        let out = r("orders.>", Some("legacy/orders/#"));
        assert!(out.remote_overlaps(&r("x.*", Some("legacy/+/eu"))));
        assert!(!out.remote_overlaps(&r("orders.>", Some("new/orders/#"))));
        assert!(!out.remote_overlaps(&r("x", Some("legacy/orders"))));
        assert!(r("a.*", None).remote_overlaps(&r("a.b", None)));
        assert!(!r("a.*", None).remote_overlaps(&r("a.b.c", None)));
    }

    #[test]
    fn identity_rules_match_as_the_general_ones_do() {
        for syntax in [Syntax::Nats, Syntax::Amqp] {
            for filter in ["a.>", "a.*.c", "a.b", ">", "*.*"] {
                let fast = Rule::new(filter, None, syntax).unwrap();
                assert!(fast.identity);
                let mut slow = fast.clone();
                slow.identity = false;
                for subject in ["a", "a.b", "a.b.c", "a.x.c", "b.b", "a.b.c.d", "a.b c"] {
                    assert_eq!(
                        fast.to_remote(subject),
                        slow.to_remote(subject),
                        "{filter} {subject}"
                    );
                }
            }
        }
        // A renaming rule and MQTT's separator are never the identity.
        assert!(
            !Rule::new("a.>", Some("b.>"), Syntax::Nats)
                .unwrap()
                .identity
        );
        assert!(!Rule::new("a.>", None, Syntax::Mqtt).unwrap().identity);
    }
}
