//! Broker configuration: embedded defaults, a TOML file, environment variables and flags (the
//! CLI layers them in that order, flags winning).

use mitto::proto::SlowConsumerPolicy;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The default client-facing listener.
pub const DEFAULT_LISTEN: &str = "tcp://127.0.0.1:4747";
/// The default monitoring address.
pub const DEFAULT_MONITOR: &str = "127.0.0.1:8747";

/// The default bound of what is queued for one connection: one frame of the default largest
/// size (64 MiB payload, 64 KiB headers, 4 KiB subject, 32-byte header) with room to spare.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 72 * 1024 * 1024;

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
///
/// In a TOML file the `*_ms` settings of this table (not yet those of its bridges and
/// federation) take milliseconds or a duration such as `"5s"`, `"100ms"` or `"1m 30s"`.
///
/// What one connection may make the broker hold is derived from these values in one place
/// (`budget.rs`) and documented in `docs/SECURITY.md`, "Memory bounds": before its HELLO is
/// accepted, a connection is held to the handshake limits (PROTOCOL.md 8.1),
/// `handshake_timeout_ms` and `max_handshakes`; after it, to the negotiated frame limits,
/// `max_pending_bytes` and `write_deadline_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Name in HELLO, HEALTH and monitoring.
    pub name: String,
    /// Listener URLs (`tcp://`, `unix://`, `tls://`, `ws://`, `wss://`, `mem://`).
    pub listen: Vec<String>,
    /// Browser origins (`https://app.example.com`, `*` for any) a WebSocket listener lets in
    /// besides those always let in: requests without an `Origin` header (programs) and pages
    /// of the host the request names when that host is an IP address or `localhost`.
    pub ws_allowed_origins: Vec<String>,
    /// Monitoring HTTP address; empty turns it off. An address beyond loopback needs
    /// `monitor_token`.
    pub monitor: String,
    /// A token the monitoring endpoint requires (`Authorization: Bearer <token>`); none: open
    /// to whoever reaches its (loopback) address.
    pub monitor_token: Option<String>,
    /// Host names (and `host:port`) the monitoring endpoint answers to besides the loopback
    /// names (`localhost`, `127.0.0.1`, `[::1]`); a request whose `Host` (or `Origin`, when
    /// present) names another host is refused, so that a web page cannot reach it through
    /// DNS rebinding.
    pub monitor_hosts: Vec<String>,
    /// Largest payload accepted, bytes.
    pub max_payload: u32,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
    /// Most bytes queued for one connection across its subscriptions (encoded frames). Never
    /// less than one frame of the largest size the broker accepts ([`BrokerConfig::max_frame_len`]),
    /// so that a message of `max_payload` bytes always reaches an idle subscriber. Default
    /// [`DEFAULT_MAX_PENDING_BYTES`] (72 MiB). The frames other connections send it
    /// (responses, forwarded requests, stream items, errors) have a budget of the same size of
    /// their own.
    pub max_pending_bytes: usize,
    /// Most bytes one connection's at-least-once subscriptions may have delivered and not yet
    /// acknowledged (encoded frames; default [`DEFAULT_MAX_PENDING_BYTES`]). At the bound
    /// those subscriptions send nothing more until acknowledgements make room: their messages
    /// wait in their queues (bounded by `max_pending_bytes`), none is dropped for it.
    pub max_unacked_bytes: usize,
    /// Default bound of a subscription's queue, messages.
    pub max_pending_msgs: u32,
    /// Default slow-consumer policy.
    pub slow_consumer: PolicyName,
    /// Deadline of requests that carry none, milliseconds.
    #[serde(deserialize_with = "crate::millis::deserialize")]
    pub request_timeout_ms: u64,
    /// Most requests and service calls one connection may have in flight through the broker;
    /// past it a REQUEST is answered QUOTA_EXCEEDED. Bounds the broker's table of requests
    /// (about 200 bytes each) per connection.
    pub max_requests_per_connection: u32,
    /// How long a publisher may be held back by full `block` subscriptions before its
    /// message is refused with BACKPRESSURE_REJECTION, milliseconds. While held, the broker
    /// reads nothing more from that connection, so TCP slows the publisher down.
    #[serde(deserialize_with = "crate::millis::deserialize")]
    pub max_block_ms: u64,
    /// How long a disconnected client's session (subscriptions, queued and unacknowledged
    /// messages) is kept for it to resume, milliseconds.
    #[serde(deserialize_with = "crate::millis::deserialize")]
    pub session_ttl_ms: u64,
    /// Most detached sessions kept at once (default 4,096); past it the oldest ends.
    pub max_detached_sessions: usize,
    /// Most detached sessions of one user (default 256; on a broker without users every
    /// client is the same user); past it that user's oldest ends.
    pub max_detached_sessions_per_user: usize,
    /// Most bytes all detached sessions together may hold queued and unacknowledged (default
    /// 256 MiB); past it the oldest sessions end (checked every 20 ms; between checks each
    /// holds no more than a connection may).
    pub max_detached_bytes: usize,
    /// How long a durable subscription's messages are kept after its last subscriber ended,
    /// waiting for the next subscriber of the same durable name and user, milliseconds
    /// (default 3,600,000: one hour).
    #[serde(deserialize_with = "crate::millis::deserialize")]
    pub durable_ttl_ms: u64,
    /// Most durable subscriptions one user may have, with or without a subscriber (default
    /// 100). What one user's kept durable subscriptions hold is bounded by this times
    /// `max_pending_bytes`.
    pub max_durables: usize,
    /// On shutdown, how long the broker keeps sending connections what it holds for them (and
    /// waiting for the acknowledgements of at-least-once deliveries) before it closes them,
    /// milliseconds (default 10,000).
    #[serde(deserialize_with = "crate::millis::deserialize")]
    pub shutdown_drain_ms: u64,
    /// Keepalive interval, milliseconds: the longest a client may ask for (it may ask for a
    /// shorter one). 0 proposes none: a client's interval applies, and keepalive is off only
    /// for clients that propose none either.
    #[serde(deserialize_with = "crate::millis::deserialize")]
    pub keepalive_ms: u32,
    /// How long a new connection may take to set up its transport (a TLS handshake) and send
    /// HELLO, milliseconds; a connection still silent then is closed.
    #[serde(deserialize_with = "crate::millis::deserialize")]
    pub handshake_timeout_ms: u64,
    /// Most connections at once that have not completed their HELLO; a new connection beyond
    /// it closes the oldest of them (a flood of silent sockets cannot lock clients out).
    pub max_handshakes: usize,
    /// How long a connection's outgoing data may stay over its bound (the broker then reads
    /// nothing more from it) before the connection is closed as a slow consumer,
    /// milliseconds.
    #[serde(deserialize_with = "crate::millis::deserialize")]
    pub write_deadline_ms: u64,
    /// The pause before a refused HELLO (wrong token or password) is answered, doubled with
    /// each refusal from the same address, milliseconds; 0 turns it off.
    #[serde(deserialize_with = "crate::millis::deserialize")]
    pub auth_failure_delay_ms: u64,
    /// The longest such pause, milliseconds (at most half of `handshake_timeout_ms`);
    /// refusals to one address are at least this far apart once it is reached.
    #[serde(deserialize_with = "crate::millis::deserialize")]
    pub auth_failure_delay_max_ms: u64,
    /// Most published subjects whose message counts (and subscriber lists) the broker keeps;
    /// the least recently published go first.
    pub max_tracked_subjects: usize,
    /// Most bytes of subject names in that table.
    pub max_tracked_subject_bytes: usize,
    /// A token every client must present (instead of users).
    pub token: Option<String>,
    /// A file holding that token (its first line), so that it does not appear in a process
    /// list or a configuration file.
    pub token_file: Option<PathBuf>,
    /// Users with passwords and permissions.
    pub users: Vec<User>,
    /// TLS for `tls://` and `wss://` listeners.
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
    /// Bridges to AMQP, MQTT and NATS, and work-queue services (`[[bridge]]` tables; see
    /// `docs/BRIDGES.md`).
    #[serde(rename = "bridge")]
    pub bridges: Vec<mitto_bridge::BridgeConfig>,
    /// Federation with other brokers over a NATS cluster (`[federation]`; see
    /// `docs/BRIDGES.md`).
    pub federation: Option<mitto_bridge::FederationConfig>,
    /// Where streams keep their files; none: streams are off (`mitto server` always sets one:
    /// `mitto-data` beside the configuration file, or the platform's data folder).
    pub data_dir: Option<PathBuf>,
    /// Streams created (or updated to this configuration) at start-up (`[[stream]]` tables).
    #[serde(rename = "stream")]
    pub streams: Vec<crate::stream_spec::StreamSpec>,
    /// Most streams (default 100).
    pub max_streams: usize,
    /// Most durable consumers over all streams (default 1000).
    pub max_consumers: usize,
    /// Most deliveries one consumer may have awaiting an ack (default 10,000; a consumer may
    /// ask for fewer).
    pub max_ack_pending: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            name: format!("mitto-broker/{}", env!("CARGO_PKG_VERSION")),
            listen: vec![DEFAULT_LISTEN.to_owned()],
            ws_allowed_origins: Vec::new(),
            monitor: DEFAULT_MONITOR.to_owned(),
            monitor_token: None,
            monitor_hosts: Vec::new(),
            max_payload: mitto::proto::Limits::DEFAULT_MAX_PAYLOAD,
            max_connections: 65_536,
            max_subscriptions: 100_000,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_unacked_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_pending_msgs: 65_536,
            slow_consumer: PolicyName::DropOldest,
            request_timeout_ms: 30_000,
            max_requests_per_connection: 10_000,
            max_block_ms: 5_000,
            session_ttl_ms: 60_000,
            max_detached_sessions: 4096,
            max_detached_sessions_per_user: 256,
            max_detached_bytes: 256 * 1024 * 1024,
            durable_ttl_ms: 3_600_000,
            max_durables: 100,
            shutdown_drain_ms: 10_000,
            keepalive_ms: 30_000,
            handshake_timeout_ms: 10_000,
            max_handshakes: 1024,
            write_deadline_ms: 10_000,
            auth_failure_delay_ms: 100,
            auth_failure_delay_max_ms: 2_000,
            max_tracked_subjects: 16_384,
            max_tracked_subject_bytes: 4 * 1024 * 1024,
            token: None,
            token_file: None,
            users: Vec::new(),
            tls: None,
            busy_poll_us: 0,
            spin_us: mitto::DEFAULT_SPIN.as_micros() as u64,
            bridges: Vec::new(),
            federation: None,
            data_dir: None,
            streams: Vec::new(),
            max_streams: 100,
            max_consumers: 1000,
            max_ack_pending: 10_000,
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

/// Reads a secret from the first line of a file (trailing spaces and line ends dropped).
pub(crate) fn read_secret(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let line = text.lines().next().unwrap_or("").trim_end();
    if line.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "{}: the file holds no token",
            path.display()
        )));
    }
    Ok(line.to_owned())
}

impl BrokerConfig {
    /// Reads a TOML file over the defaults.
    ///
    /// ```no_run
    /// use mitto_broker::BrokerConfig;
    ///
    /// let cfg = BrokerConfig::from_file(std::path::Path::new("/etc/mitto/broker.toml"))?;
    /// # Ok::<(), mitto_broker::ConfigError>(())
    /// ```
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
    ///
    /// ```
    /// use mitto_broker::BrokerConfig;
    ///
    /// let cfg = BrokerConfig::from_toml(r#"
    ///     listen = ["tcp://0.0.0.0:4747"]
    ///     max_block_ms = "2s"
    /// "#)?;
    /// assert_eq!(cfg.max_block_ms, 2000);
    /// assert_eq!(cfg.max_payload, BrokerConfig::default().max_payload); // the rest: defaults
    /// # Ok::<(), String>(())
    /// ```
    pub fn from_toml(text: &str) -> Result<BrokerConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The longest frame the broker accepts from a client: header, the longest subject, the
    /// default headers limit and `max_payload`. What is queued for one connection may always
    /// reach this much (see `max_pending_bytes`).
    pub fn max_frame_len(&self) -> usize {
        let l = mitto::proto::Limits::default();
        mitto::proto::HEADER_LEN
            + usize::from(l.max_subject)
            + l.max_headers as usize
            + self.max_payload as usize
    }

    /// The first of the limits that must be positive and is 0.
    fn first_zero(&self) -> Option<&'static str> {
        let limits = [
            ("max_payload", u64::from(self.max_payload)),
            ("max_pending_msgs", u64::from(self.max_pending_msgs)),
            ("max_connections", self.max_connections as u64),
            (
                "max_requests_per_connection",
                u64::from(self.max_requests_per_connection),
            ),
            ("max_unacked_bytes", self.max_unacked_bytes as u64),
            ("max_durables", self.max_durables as u64),
            ("max_detached_sessions", self.max_detached_sessions as u64),
            (
                "max_detached_sessions_per_user",
                self.max_detached_sessions_per_user as u64,
            ),
            ("max_handshakes", self.max_handshakes as u64),
            ("write_deadline_ms", self.write_deadline_ms),
            ("max_tracked_subjects", self.max_tracked_subjects as u64),
            (
                "max_tracked_subject_bytes",
                self.max_tracked_subject_bytes as u64,
            ),
        ];
        limits.iter().find(|(_, v)| *v == 0).map(|(name, _)| *name)
    }

    /// Checks values that the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.is_empty() {
            return bad("at least one listen URL is needed".into());
        }
        for url in &self.listen {
            if let Err(e) = url.parse::<mitto::__private::transport::Endpoint>() {
                return bad(format!("listen: {}", e.message()));
            }
            for scheme in ["tls://", "wss://"] {
                if url.starts_with(scheme) && self.tls.is_none() {
                    return bad(format!("listen {url}: {scheme} needs [tls] cert and key"));
                }
            }
        }
        for o in &self.ws_allowed_origins {
            if o != "*" && o != "null" && !o.contains("://") {
                return bad(format!(
                    "ws_allowed_origins: {o:?} is not an origin (scheme://host[:port], null or *)"
                ));
            }
        }
        if let Some(name) = self.first_zero() {
            return bad(format!("{name} must be positive"));
        }
        validate_streams(self).map_err(ConfigError::Invalid)?;
        if self.max_pending_bytes < self.max_frame_len() {
            return bad(format!(
                "max_pending_bytes ({}) is less than one frame of the largest size accepted ({} bytes: max_payload {} plus headers, subject and header); raise it or lower max_payload",
                self.max_pending_bytes,
                self.max_frame_len(),
                self.max_payload
            ));
        }
        if self.busy_poll_us > 1_000_000 {
            return bad("busy_poll_us is at most 1000000 (one second)".into());
        }
        if self.spin_us > 10_000 {
            return bad("spin_us is at most 10000 (ten milliseconds)".into());
        }
        if (self.token.is_some() || self.token_file.is_some()) && !self.users.is_empty() {
            return bad("use either token or users, not both".into());
        }
        if self.token.is_some() && self.token_file.is_some() {
            return bad("use either token or token_file, not both".into());
        }
        if let Ok(sa) = self.monitor.parse::<std::net::SocketAddr>() {
            if !sa.ip().is_loopback() && self.monitor_token.as_deref().is_none_or(str::is_empty) {
                return bad(format!(
                    "monitor {}: an address beyond loopback needs monitor_token",
                    self.monitor
                ));
            }
        }
        for u in &self.users {
            for f in u.publish.iter().chain(&u.subscribe) {
                if mitto::proto::Subject::new(f).is_err() {
                    return bad(format!("user {}: invalid permission filter {f:?}", u.name));
                }
            }
        }
        if let Err(e) = mitto_bridge::validate_all(&self.bridges) {
            return bad(e.to_string());
        }
        if let Some(Err(e)) = self.federation.as_ref().map(|f| f.validate()) {
            return bad(e.to_string());
        }
        for b in &self.bridges {
            let held = u64::from(b.buffer_msgs) + u64::from(b.window);
            if held > u64::from(self.max_pending_msgs) {
                return bad(format!(
                    "bridge {:?}: buffer_msgs + window ({held}) is over max_pending_msgs ({})",
                    b.name, self.max_pending_msgs
                ));
            }
        }
        Ok(())
    }
}

/// Checks the `[[stream]]` tables and limits of a configuration.
fn validate_streams(cfg: &BrokerConfig) -> Result<(), String> {
    if !cfg.streams.is_empty() && cfg.data_dir.is_none() {
        return Err("[[stream]] tables need data_dir".into());
    }
    if cfg.streams.len() > cfg.max_streams {
        return Err(format!(
            "{} streams configured, over max_streams {}",
            cfg.streams.len(),
            cfg.max_streams
        ));
    }
    if cfg.max_ack_pending == 0 {
        return Err("max_ack_pending must be positive".into());
    }
    let mut names = std::collections::HashSet::new();
    for s in &cfg.streams {
        s.to_store()
            .map_err(|e| format!("stream {:?}: {e}", s.name))?;
        if !names.insert(&s.name) {
            return Err(format!("stream {:?} configured twice", s.name));
        }
    }
    Ok(())
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
        c.listen = vec!["127.0.0.1:4747".into()];
        c.validate().expect("a bare host:port is tcp://");
        c.listen = vec!["wss://127.0.0.1:1".into()];
        assert!(c.validate().is_err(), "wss:// needs [tls]");
        let c = BrokerConfig::from_toml(
            r#"
            listen = ["tcp://127.0.0.1:0", "ws://127.0.0.1:4748/mitto"]
            ws_allowed_origins = ["https://app.example", "*"]
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.ws_allowed_origins, ["https://app.example", "*"]);
        let c = BrokerConfig::from_toml(r#"ws_allowed_origins = ["app.example"]"#).unwrap();
        assert!(c.validate().is_err(), "an origin has a scheme");
        let c = BrokerConfig::from_toml(
            "session_ttl_ms = \"1m 30s\"\nkeepalive_ms = \"5s\"\nmax_block_ms = 250\n\
             write_deadline_ms = \"100ms\"",
        )
        .unwrap();
        assert_eq!(
            (
                c.session_ttl_ms,
                c.keepalive_ms,
                c.max_block_ms,
                c.write_deadline_ms
            ),
            (90_000, 5_000, 250, 100)
        );
        let e = BrokerConfig::from_toml("session_ttl_ms = \"soon\"").unwrap_err();
        assert!(e.contains("\"5s\""), "{e}");
        let e = BrokerConfig::from_toml("keepalive_ms = \"100 days\"").unwrap_err();
        assert!(e.contains("too long"), "{e}");
        let e = BrokerConfig::from_toml("max_block_ms = -1").unwrap_err();
        assert!(e.contains("negative"), "{e}");
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
        let d = BrokerConfig::default();
        d.validate().unwrap();
        assert!(
            d.max_pending_bytes >= d.max_frame_len(),
            "the defaults queue one largest message for an idle subscriber"
        );
        let e = BrokerConfig::from_toml("max_pending_bytes = 1048576")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("max_pending_bytes"), "{e}");
        let small =
            BrokerConfig::from_toml("max_payload = 1000000\nmax_pending_bytes = 1069664").unwrap();
        assert_eq!(small.max_frame_len(), 1_069_664);
        small.validate().unwrap();
        let e = BrokerConfig::from_toml("spin_us = 20000")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("spin_us"), "{e}");
    }

    #[test]
    fn bridge_tables() {
        let c = BrokerConfig::from_toml(
            r#"
            [[bridge]]
            name = "rabbit"
            kind = "amqp"
            url = "amqp://guest:guest@127.0.0.1:5672/%2f"
            [[bridge.map]]
            mitto = "orders.>"
            [[bridge]]
            name = "work"
            kind = "amqp_service"
            url = "amqp://guest:guest@127.0.0.1:5672/%2f?queue=svc.work"
            "#,
        )
        .unwrap();
        assert_eq!(c.bridges.len(), 2);
        assert_eq!(c.bridges[0].map[0].mitto, "orders.>");
        c.validate().unwrap();
        let mut twice = c.clone();
        twice.bridges[1].name = "rabbit".into();
        let e = twice.validate().unwrap_err().to_string();
        assert!(e.contains("two bridges"), "{e}");
        let mut big = c.clone();
        big.bridges[0].buffer_msgs = big.max_pending_msgs;
        let e = big.validate().unwrap_err().to_string();
        assert!(e.contains("max_pending_msgs"), "{e}");
        let e = BrokerConfig::from_toml(
            "[[bridge]]\nname = 'x'\nkind = 'amqp'\nurl = 'amqp://h'\nbogus = 1",
        )
        .unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn federation_table() {
        let c = BrokerConfig::from_toml(
            "[federation]\nurl = 'nats://127.0.0.1:4222,nats://127.0.0.1:4223'\nname = 'eu1'",
        )
        .unwrap();
        let f = c.federation.as_ref().unwrap();
        assert_eq!((f.name.as_str(), f.announce_ms), ("eu1", 1_000));
        c.validate().unwrap();
        let e = BrokerConfig::from_toml("[federation]\nurl = 'amqp://h'")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("nats://"), "{e}");
        let e = BrokerConfig::from_toml("[federation]\nurl = 'nats://h'\nbogus = 1").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn a_zero_bound_is_refused_by_name() {
        for name in [
            "max_unacked_bytes",
            "max_detached_sessions",
            "max_detached_sessions_per_user",
            "max_detached_bytes",
            "max_durables",
        ] {
            let c = BrokerConfig::from_toml(&format!("{name} = 0")).unwrap();
            match c.validate() {
                Err(e) => assert!(e.to_string().contains(name), "{e}"),
                // A byte bound of 0 keeps nothing: allowed, every session goes at once.
                Ok(()) => assert_eq!(name, "max_detached_bytes"),
            }
        }
    }
}
