//! What a bridge is told: one `[[bridge]]` table of the broker's configuration file.

use crate::mapping::{filters_overlap, Rule, Syntax};
use serde::{Deserialize, Serialize};

/// The backend a bridge talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Kind {
    /// AMQP 0-9-1 (RabbitMQ): a topic exchange out, a durable queue bound to it in.
    Amqp,
    /// MQTT 5 (user properties carry headers).
    Mqtt,
    /// MQTT 3.1.1 (payload only: no headers).
    Mqtt3,
    /// NATS core, or JetStream for the way out (`jetstream = true`).
    Nats,
    /// A mitto service whose requests go to a durable RabbitMQ queue that workers share (see
    /// the `worker` module).
    AmqpService,
}

impl Kind {
    /// The naming rules of the backend.
    pub fn syntax(self) -> Syntax {
        match self {
            Kind::Amqp | Kind::AmqpService => Syntax::Amqp,
            Kind::Mqtt | Kind::Mqtt3 => Syntax::Mqtt,
            Kind::Nats => Syntax::Nats,
        }
    }
    /// The name used in monitoring.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Amqp => "amqp",
            Kind::Mqtt => "mqtt",
            Kind::Mqtt3 => "mqtt3",
            Kind::Nats => "nats",
            Kind::AmqpService => "amqp_service",
        }
    }
}

/// Which way messages cross.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Direction {
    /// From the backend into mitto.
    In,
    /// From mitto out to the backend.
    Out,
    /// Both ways (loops are cut by the origin header).
    #[default]
    Both,
}

impl Direction {
    pub(crate) fn inbound(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
    pub(crate) fn outbound(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
}

/// One subject mapping (`[[bridge.map]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapConfig {
    /// The mitto filter (`orders.>`).
    pub mitto: String,
    /// The backend filter; by default the mitto filter by the mapping rules.
    #[serde(default)]
    pub remote: Option<String>,
    /// This mapping's direction; by default the bridge's.
    #[serde(default)]
    pub direction: Option<Direction>,
}

/// One bridge (`[[bridge]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Unique name, in monitoring and in the origin header.
    pub name: String,
    /// The backend.
    pub kind: Kind,
    /// The backend's URL, credentials included: `amqp://user:pass@host:5672/%2f`,
    /// `mqtt://user:pass@host:1883`, `nats://user:pass@host:4222`. For `amqp_service`,
    /// `?queue=NAME` names the work queue.
    pub url: String,
    /// Default direction of the mappings.
    #[serde(default)]
    pub direction: Direction,
    /// Subject mappings.
    #[serde(default)]
    pub map: Vec<MapConfig>,
    /// AMQP: the topic exchange messages are published to and bound from.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// AMQP: the durable queue the way in consumes (default `mitto.bridge.NAME`).
    #[serde(default)]
    pub queue: Option<String>,
    /// MQTT: QoS of publishes and subscriptions, 0 or 1 (1 confirms with PUBACK).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// MQTT: client id (default `mitto-bridge-NAME`); its session persists between connections.
    #[serde(default)]
    pub client_id: Option<String>,
    /// NATS: publish through JetStream and wait for its ack (a stream must cover the subjects).
    #[serde(default)]
    pub jetstream: bool,
    /// `amqp_service`: the mitto subject served (default: the queue's name).
    #[serde(default)]
    pub subject: Option<String>,
    /// Messages held for the backend while it is down or slow; past it the oldest is dropped,
    /// counted.
    #[serde(default = "default_buffer_msgs")]
    pub buffer_msgs: u32,
    /// Bytes held for the backend at most (payloads).
    #[serde(default = "default_buffer_bytes")]
    pub buffer_bytes: u64,
    /// Messages sent to the backend and not yet confirmed, at most.
    #[serde(default = "default_window")]
    pub window: u32,
    /// How long a confirm may take before the link is deemed broken, milliseconds.
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout_ms: u64,
    /// First wait before reconnecting, milliseconds (doubling up to `backoff_max_ms`).
    #[serde(default = "default_backoff_min")]
    pub backoff_min_ms: u64,
    /// Longest wait between reconnects, milliseconds.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// The bridge's own token at the broker, when the broker asks for one.
    #[serde(default)]
    pub mitto_token: Option<String>,
    /// The bridge's user at the broker, when the broker has users.
    #[serde(default)]
    pub mitto_user: Option<String>,
    /// That user's password.
    #[serde(default)]
    pub mitto_password: Option<String>,
}

fn default_exchange() -> String {
    "amq.topic".into()
}
fn default_qos() -> u8 {
    1
}
fn default_buffer_msgs() -> u32 {
    10_000
}
fn default_buffer_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_window() -> u32 {
    // Enough in flight to keep a backend a few hundred microseconds away busy at a million
    // messages a second; confirms come per batch, not per message.
    4096
}
fn default_confirm_timeout() -> u64 {
    10_000
}
fn default_backoff_min() -> u64 {
    100
}
fn default_backoff_max() -> u64 {
    10_000
}

/// A bridge configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bridge {name:?}: {reason}")]
pub struct ConfigError {
    /// The bridge.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

/// A mapping made ready: its rule and direction.
#[derive(Clone, Debug)]
pub(crate) struct Mapping {
    pub(crate) rule: Rule,
    pub(crate) direction: Direction,
}

impl BridgeConfig {
    /// A bridge of `kind` to `url` with defaults for the rest.
    pub fn new(name: &str, kind: Kind, url: &str) -> BridgeConfig {
        BridgeConfig {
            name: name.into(),
            kind,
            url: url.into(),
            direction: Direction::Both,
            map: Vec::new(),
            exchange: default_exchange(),
            queue: None,
            qos: default_qos(),
            client_id: None,
            jetstream: false,
            subject: None,
            buffer_msgs: default_buffer_msgs(),
            buffer_bytes: default_buffer_bytes(),
            window: default_window(),
            confirm_timeout_ms: default_confirm_timeout(),
            backoff_min_ms: default_backoff_min(),
            backoff_max_ms: default_backoff_max(),
            mitto_token: None,
            mitto_user: None,
            mitto_password: None,
        }
    }

    /// Adds a mapping (builder style).
    pub fn map(mut self, mitto: &str, remote: Option<&str>, direction: Option<Direction>) -> Self {
        self.map.push(MapConfig {
            mitto: mitto.into(),
            remote: remote.map(Into::into),
            direction,
        });
        self
    }

    fn err(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            name: self.name.clone(),
            reason: reason.into(),
        }
    }

    /// The mappings as rules, checked.
    pub(crate) fn mappings(&self) -> Result<Vec<Mapping>, ConfigError> {
        self.map
            .iter()
            .map(|m| {
                let rule = Rule::new(&m.mitto, m.remote.as_deref(), self.kind.syntax())
                    .map_err(|e| self.err(e.to_string()))?;
                Ok(Mapping {
                    rule,
                    direction: m.direction.unwrap_or(self.direction),
                })
            })
            .collect()
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.err("name must be 1-64 ASCII letters, digits, '-' or '_'"));
        }
        if self.buffer_msgs == 0 || self.window == 0 || self.buffer_bytes == 0 {
            return Err(self.err("buffer_msgs, buffer_bytes and window must be positive"));
        }
        if self.window > u32::from(u16::MAX) {
            return Err(self.err("window is at most 65535"));
        }
        if self.qos > 1 {
            return Err(self.err("qos is 0 or 1"));
        }
        if self.backoff_min_ms == 0 || self.backoff_max_ms < self.backoff_min_ms {
            return Err(self.err("backoff_min_ms must be positive and at most backoff_max_ms"));
        }
        if self.mitto_password.is_some() != self.mitto_user.is_some() {
            return Err(self.err("mitto_user and mitto_password go together"));
        }
        let scheme_ok = match self.kind {
            Kind::Amqp | Kind::AmqpService => {
                self.url.starts_with("amqp://") || self.url.starts_with("amqps://")
            }
            Kind::Mqtt | Kind::Mqtt3 => self.url.starts_with("mqtt://"),
            Kind::Nats => self.url.starts_with("nats://"),
        };
        if !scheme_ok {
            return Err(self.err(format!(
                "url {} does not fit kind {}",
                crate::redact(&self.url),
                self.kind.name()
            )));
        }
        if self.kind == Kind::AmqpService {
            if !self.map.is_empty() {
                return Err(self.err("amqp_service takes no [[bridge.map]]; it serves `subject`"));
            }
            let queue = crate::queue_url::queue_of(&self.url).map_err(|e| self.err(e))?;
            let subject = self.subject.clone().unwrap_or(queue);
            mitto::proto::Subject::literal(&subject)
                .map_err(|e| self.err(format!("subject {subject:?}: {e}")))?;
            return Ok(());
        }
        let maps = self.mappings()?;
        if maps.is_empty() {
            return Err(self.err("no [[bridge.map]] subjects"));
        }
        if self.kind == Kind::Mqtt3 {
            // MQTT 3.1.1 has no headers, so no origin header: what goes out must not come back.
            for a in maps.iter().filter(|m| m.direction.outbound()) {
                for b in maps.iter().filter(|m| m.direction.inbound()) {
                    let (fa, fb) = (a.rule.mitto_filter(), b.rule.mitto_filter());
                    if filters_overlap(&fa, &fb) {
                        return Err(self.err(format!(
                            "mqtt3 cannot mark origins, so {fa:?} out and {fb:?} in would loop; \
                             use kind = \"mqtt\" (MQTT 5) or subjects that do not overlap"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_table_reads_with_defaults_and_is_checked() {
        let c: BridgeConfig = toml::from_str(
            r#"
            name = "rabbit"
            kind = "amqp"
            url = "amqp://guest:guest@127.0.0.1:5672/%2f"
            [[map]]
            mitto = "orders.>"
            [[map]]
            mitto = "audit.*"
            remote = "legacy.audit.*"
            direction = "out"
            "#,
        )
        .unwrap();
        assert_eq!(c.exchange, "amq.topic");
        assert_eq!(c.direction, Direction::Both);
        assert_eq!(c.buffer_msgs, 10_000);
        c.validate().unwrap();
        let m = c.mappings().unwrap();
        assert_eq!(m[1].rule.remote_filter(), "legacy.audit.*");
        assert_eq!(m[1].direction, Direction::Out);

        let bad = |f: &dyn Fn(&mut BridgeConfig)| {
            let mut c = c.clone();
            f(&mut c);
            c.validate().unwrap_err().reason
        };
        assert!(bad(&|c| c.url = "mqtt://x:1".into()).contains("does not fit"));
        assert!(bad(&|c| c.map.clear()).contains("no [[bridge.map]]"));
        assert!(bad(&|c| c.name = "a b".into()).contains("name"));
        assert!(bad(&|c| c.qos = 2).contains("qos"));
        assert!(bad(&|c| c.map[0].remote = Some("orders.*".into())).contains("wildcards"));
        assert!(toml::from_str::<BridgeConfig>("name = 'x'\nkind = 'kafka'\nurl = ''").is_err());
    }

    #[test]
    fn mqtt3_refuses_overlapping_ways_it_cannot_mark() {
        let c = BridgeConfig::new("m", Kind::Mqtt3, "mqtt://127.0.0.1:1883").map("a.>", None, None);
        assert!(c.validate().unwrap_err().reason.contains("loop"));
        let c = BridgeConfig::new("m", Kind::Mqtt3, "mqtt://127.0.0.1:1883")
            .map("a.>", None, Some(Direction::Out))
            .map("b.>", None, Some(Direction::In));
        c.validate().unwrap();
        // MQTT 5 marks origins, so both ways on one subject is fine.
        let c = BridgeConfig::new("m", Kind::Mqtt, "mqtt://127.0.0.1:1883").map("a.>", None, None);
        c.validate().unwrap();
    }

    #[test]
    fn a_service_names_its_queue() {
        let c = BridgeConfig::new(
            "work",
            Kind::AmqpService,
            "amqp://guest:guest@127.0.0.1:5672/%2f?queue=svc.work",
        );
        c.validate().unwrap();
        let c = BridgeConfig::new("work", Kind::AmqpService, "amqp://127.0.0.1:5672/%2f");
        assert!(c.validate().unwrap_err().reason.contains("queue"));
    }
}
