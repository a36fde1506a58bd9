//! What a connection's user may publish and subscribe to. Replies to the broker's inboxes are
//! not governed by these lists but by the requests a connection received (see
//! `Core::admit_publish`), as nats-server's `allow_responses`.

use crate::config::User;
use mitto::proto::subject::matches;

/// Whether `allowed` (a filter) covers every subject `requested` (a filter) can match.
fn covers(allowed: &str, requested: &str) -> bool {
    let mut a = allowed.split('.');
    let mut r = requested.split('.');
    loop {
        match (a.next(), r.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A user's subject filters; empty lists allow everything.
#[derive(Debug, Default, Clone)]
pub(crate) struct Permissions {
    publish: Vec<String>,
    subscribe: Vec<String>,
}

impl Permissions {
    pub(crate) fn of(user: Option<&User>) -> Permissions {
        user.map(|u| Permissions {
            publish: u.publish.clone(),
            subscribe: u.subscribe.clone(),
        })
        .unwrap_or_default()
    }

    /// Whether publishing is limited to some subjects.
    pub(crate) fn restricts_publish(&self) -> bool {
        !self.publish.is_empty()
    }

    pub(crate) fn may_publish(&self, subject: &str) -> bool {
        self.publish.is_empty() || self.publish.iter().any(|f| matches(f, subject))
    }

    pub(crate) fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe.is_empty() || self.subscribe.iter().any(|f| covers(f, filter))
    }
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn permission_filters_cover_requested_filters() {
        assert!(covers("orders.>", "orders.eu.created"));
        assert!(covers("orders.>", "orders.*"));
        assert!(covers("orders.>", "orders.>"));
        assert!(covers("orders.*", "orders.eu"));
        assert!(covers("orders.*", "orders.*"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(!covers("orders.*", "orders.eu.x"));
        assert!(!covers("orders.eu", "orders.*"));
        assert!(!covers("orders.>", "orders"));
        assert!(covers(">", "anything.at.all"));
    }
}
