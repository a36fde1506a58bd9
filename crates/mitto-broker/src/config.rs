//! Broker configuration: embedded defaults, a TOML file, environment variables and flags (the
//! CLI layers them in that order, flags winning).

use mitto::proto::SlowConsumerPolicy;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The default client-facing listener.
pub const DEFAULT_LISTEN: &str = "tcp://127.0.0.1:4747";
/// The default monitoring address.
pub const DEFAULT_MONITOR: &str = "127.0.0.1:8747";

/// What a slow subscriber's full queue does, by default (subscriptions may choose their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// Push back on publishers (BACKPRESSURE_REJECTION).
    Block,
    /// Drop the oldest queued message, counted.
    #[default]
    DropOldest,
    /// Drop the new message, counted.
    DropNewest,
    /// End the subscription with SLOW_CONSUMER.
    Disconnect,
}

impl PolicyName {
    pub(crate) fn policy(self) -> SlowConsumerPolicy {
        match self {
            PolicyName::Block => SlowConsumerPolicy::Block,
            PolicyName::DropOldest => SlowConsumerPolicy::DropOldest,
            PolicyName::DropNewest => SlowConsumerPolicy::DropNewest,
            PolicyName::Disconnect => SlowConsumerPolicy::Disconnect,
        }
    }
}

/// A user that authenticates with a password, and what it may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// User name (HELLO's user field).
    pub name: String,
    /// Password (HELLO's auth field).
    pub password: String,
    /// Subject filters this user may publish (and send requests) to; empty: everything.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Subject filters this user may subscribe to; empty: everything.
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// TLS for the listeners.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Everything the broker can be told.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Name in HELLO, HEALTH and monitoring.
    pub name: String,
    /// Listener URLs (`tcp://`, `unix://`, `tls://`, `mem://`).
    pub listen: Vec<String>,
    /// Monitoring HTTP address (loopback); empty turns it off.
    pub monitor: String,
    /// Largest payload accepted, bytes.
    pub max_payload: u32,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
    /// Most bytes queued for one connection across its subscriptions.
    pub max_pending_bytes: usize,
    /// Default bound of a subscription's queue, messages.
    pub max_pending_msgs: u32,
    /// Default slow-consumer policy.
    pub slow_consumer: PolicyName,
    /// Deadline of requests that carry none, milliseconds.
    pub request_timeout_ms: u64,
    /// How long a publisher may be held back by full `block` subscriptions before its
    /// message is refused with BACKPRESSURE_REJECTION, milliseconds. While held, the broker
    /// reads nothing more from that connection, so TCP slows the publisher down.
    pub max_block_ms: u64,
    /// How long a disconnected client's session (subscriptions, queued and unacknowledged
    /// messages) is kept for it to resume, milliseconds.
    pub session_ttl_ms: u64,
    /// Keepalive interval, milliseconds (0: off).
    pub keepalive_ms: u32,
    /// How long a new connection may take to send HELLO, milliseconds.
    pub handshake_timeout_ms: u64,
    /// A token every client must present (instead of users).
    pub token: Option<String>,
    /// Users with passwords and permissions.
    pub users: Vec<User>,
    /// TLS for `tls://` listeners.
    pub tls: Option<TlsFiles>,
    /// Latency mode: after each read, the broker's runtime keeps polling its sockets for this
    /// many microseconds instead of sleeping (0: off). Saves the wake-up of a sleeping thread on
    /// every hop of a message, at the price of one CPU kept busy while traffic flows; meant for
    /// a broker on a current-thread runtime (`mitto server --busy-poll-us` runs it on one).
    pub busy_poll_us: u64,
    /// Spin-then-park window of each socket connection, in microseconds (0: off): while a
    /// connection's reads come less than this apart, its driver polls the sockets instead of
    /// sleeping between them, for at most this long after the last read (see
    /// `mitto::ClientOptions::spin`). Sparse traffic and idle connections cost no CPU.
    pub spin_us: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            name: format!("mitto-broker/{}", env!("CARGO_PKG_VERSION")),
            listen: vec![DEFAULT_LISTEN.to_owned()],
            monitor: DEFAULT_MONITOR.to_owned(),
            max_payload: mitto::proto::Limits::DEFAULT_MAX_PAYLOAD,
            max_connections: 65_536,
            max_subscriptions: 100_000,
            max_pending_bytes: 64 * 1024 * 1024,
            max_pending_msgs: 65_536,
            slow_consumer: PolicyName::DropOldest,
            request_timeout_ms: 30_000,
            max_block_ms: 5_000,
            session_ttl_ms: 60_000,
            keepalive_ms: 30_000,
            handshake_timeout_ms: 10_000,
            token: None,
            users: Vec::new(),
            tls: None,
            busy_poll_us: 0,
            spin_us: mitto::DEFAULT_SPIN.as_micros() as u64,
        }
    }
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("invalid configuration in {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl BrokerConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        BrokerConfig::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML over the defaults.
    pub fn from_toml(text: &str) -> Result<BrokerConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks values that the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.is_empty() {
            return bad("at least one listen URL is needed".into());
        }
        for url in &self.listen {
            if let Err(e) = url.parse::<mitto::transport::Endpoint>() {
                return bad(format!("listen: {}", e.message()));
            }
            if url.starts_with("tls://") && self.tls.is_none() {
                return bad(format!("listen {url}: tls:// needs [tls] cert and key"));
            }
        }
        if self.max_payload == 0 || self.max_pending_msgs == 0 || self.max_connections == 0 {
            return bad(
                "max_payload, max_pending_msgs and max_connections must be positive".into(),
            );
        }
        if self.busy_poll_us > 1_000_000 {
            return bad("busy_poll_us is at most 1000000 (one second)".into());
        }
        if self.spin_us > 10_000 {
            return bad("spin_us is at most 10000 (ten milliseconds)".into());
        }
        if self.token.is_some() && !self.users.is_empty() {
            return bad("use either token or users, not both".into());
        }
        for u in &self.users {
            for f in u.publish.iter().chain(&u.subscribe) {
                if mitto::proto::Subject::new(f).is_err() {
                    return bad(format!("user {}: invalid permission filter {f:?}", u.name));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_over_defaults_and_validation() {
        let c = BrokerConfig::from_toml(
            r#"
            listen = ["tcp://127.0.0.1:5000", "unix:///tmp/m.sock"]
            max_payload = 1024
            slow_consumer = "disconnect"
            [[users]]
            name = "alice"
            password = "pw"
            publish = ["orders.>"]
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.max_payload, 1024);
        assert_eq!(c.slow_consumer, PolicyName::Disconnect);
        assert_eq!(c.max_connections, BrokerConfig::default().max_connections);
        c.validate().unwrap();
        let e = BrokerConfig::from_toml("max_paylod = 3").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let mut c = BrokerConfig {
            listen: vec!["tls://127.0.0.1:1".into()],
            ..Default::default()
        };
        assert!(c.validate().is_err());
        c.listen = vec!["ftp://x".into()];
        assert!(c.validate().is_err());
        let c = BrokerConfig::from_toml("busy_poll_us = 250").unwrap();
        assert_eq!(c.busy_poll_us, 250);
        c.validate().unwrap();
        let c = BrokerConfig::from_toml("busy_poll_us = 2000000").unwrap();
        assert!(c.validate().is_err(), "over a second of polling is refused");
        assert_eq!(
            BrokerConfig::default().spin_us,
            mitto::DEFAULT_SPIN.as_micros() as u64
        );
        let c = BrokerConfig::from_toml("spin_us = 0").unwrap();
        assert_eq!(c.spin_us, 0);
        c.validate().unwrap();
        let e = BrokerConfig::from_toml("spin_us = 20000")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("spin_us"), "{e}");
    }
}
