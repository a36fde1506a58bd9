//! What client and server options share: this side's part of HELLO and of its connections'
//! drivers.

use crate::conn::{DriverConfig, DEFAULT_SPIN};
use crate::BusyPoll;
use mitto_proto::negotiate::{Features, Negotiated};
use mitto_proto::{Hello, Limits, Version};
use std::sync::Arc;
use std::time::Duration;

/// The options a client and a server both have.
#[derive(Clone)]
pub(crate) struct ConnOptions {
    /// The name sent in HELLO.
    pub(crate) name: String,
    /// The keepalive interval proposed in HELLO.
    pub(crate) keepalive: Option<Duration>,
    /// The largest payload accepted (negotiated down with the peer's).
    pub(crate) max_payload: u32,
    /// Bound of each connection's queue of commands.
    pub(crate) queue_capacity: usize,
    /// Latency mode: what keeps polling after reads.
    pub(crate) busy_poll: Option<Arc<BusyPoll>>,
    /// Spin-then-park window of socket connections.
    pub(crate) spin: Duration,
}

impl ConnOptions {
    /// Defaults: 30 s keepalive, 64 MiB payloads, 1,024 queued commands, the default spin.
    pub(crate) fn new(name: String) -> ConnOptions {
        ConnOptions {
            name,
            keepalive: Some(Duration::from_secs(30)),
            max_payload: Limits::DEFAULT_MAX_PAYLOAD,
            queue_capacity: 1024,
            busy_poll: None,
            spin: DEFAULT_SPIN,
        }
    }

    /// This side's HELLO, without identity or credentials.
    pub(crate) fn hello(&self) -> Hello {
        Hello {
            version: Version::CURRENT,
            flags: 0,
            features: Features::supported(),
            max_payload: self.max_payload,
            max_headers: 0,
            keepalive_ms: self
                .keepalive
                .map(|k| k.as_millis().min(u32::MAX.into()) as u32)
                .unwrap_or(0),
            name: self.name.clone(),
            client_id: String::new(),
            session: String::new(),
            user: String::new(),
            auth: Default::default(),
        }
    }

    /// The driver settings of a connection that agreed on `agreed`.
    pub(crate) fn driver_config(&self, agreed: &Negotiated) -> DriverConfig {
        let keepalive =
            (agreed.keepalive_ms > 0).then(|| Duration::from_millis(agreed.keepalive_ms.into()));
        DriverConfig {
            limits: agreed.limits,
            keepalive,
            busy_poll: self.busy_poll.clone(),
            spin: self.spin,
            ..DriverConfig::default()
        }
    }
}
