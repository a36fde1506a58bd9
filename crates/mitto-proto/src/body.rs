//! Bodies of the control frames: HELLO, SUBSCRIBE/REGISTER options, CREDIT, NACK, UNSUBSCRIBE,
//! and the HEALTH and STATS replies (MessagePack maps).
//!
//! Fixed fields are big-endian. A string is a u16 BE length and that many bytes. Receivers ignore
//! bytes after the last field they know, so that a later minor version can append fields.

use crate::error::{DecodeErrorKind, EncodeError};
use crate::version::{Features, Version};
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

fn malformed(frame: &'static str, reason: &'static str) -> DecodeErrorKind {
    DecodeErrorKind::MalformedBody { frame, reason }
}

struct Reader<'a> {
    buf: &'a [u8],
    frame: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeErrorKind> {
        if self.buf.len() < n {
            return Err(malformed(self.frame, "truncated"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeErrorKind> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeErrorKind> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeErrorKind> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes16(&mut self) -> Result<&'a [u8], DecodeErrorKind> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
    fn str16(&mut self, what: &'static str) -> Result<String, DecodeErrorKind> {
        let b = self.bytes16()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| malformed(self.frame, what))
    }
}

fn put_bytes16(dst: &mut BytesMut, b: &[u8], what: &'static str) -> Result<(), EncodeError> {
    let n = u16::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong(what))?;
    dst.put_u16(n);
    dst.put_slice(b);
    Ok(())
}

/// The HELLO body. The client sends its proposal; the server answers with a HELLO carrying the
/// REPLY flag and the negotiated values (negotiation rules: the `negotiate` module).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Hello {
    /// Protocol version (major must match the header's).
    pub version: Version,
    /// HELLO flags: [`Hello::RESUMED`].
    pub flags: u16,
    /// Feature bits offered (client) or agreed (server reply).
    pub features: Features,
    /// Largest payload accepted, in bytes; 0 means the default (64 MiB).
    pub max_payload: u32,
    /// Largest headers block accepted, in bytes; 0 means the default (64 KiB).
    pub max_headers: u32,
    /// Keepalive interval proposed, in milliseconds; 0 disables PING from this side.
    pub keepalive_ms: u32,
    /// Human-readable name of the client or server.
    pub name: String,
    /// Stable client id (client) or the id the server assigned (reply).
    pub client_id: String,
    /// Session to resume (client; empty for a new session) or the session's id (reply).
    pub session: String,
    /// User name for user/password authentication; empty for token authentication.
    pub user: String,
    /// Password or token; never echoed in the reply.
    pub auth: Bytes,
}

impl Hello {
    /// Reply flag: the server resumed the session the client named.
    pub const RESUMED: u16 = 1;
    const FIXED: usize = 20;

    /// Encodes the body.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        dst.reserve(Self::FIXED + 10);
        dst.put_u8(self.version.major);
        dst.put_u8(self.version.minor);
        dst.put_u16(self.flags);
        dst.put_u32(self.features.bits());
        dst.put_u32(self.max_payload);
        dst.put_u32(self.max_headers);
        dst.put_u32(self.keepalive_ms);
        put_bytes16(dst, self.name.as_bytes(), "name")?;
        put_bytes16(dst, self.client_id.as_bytes(), "client id")?;
        put_bytes16(dst, self.session.as_bytes(), "session")?;
        put_bytes16(dst, self.user.as_bytes(), "user")?;
        put_bytes16(dst, &self.auth, "auth")?;
        Ok(())
    }

    /// Decodes the body.
    pub fn decode(b: &[u8]) -> Result<Hello, DecodeErrorKind> {
        let mut r = Reader {
            buf: b,
            frame: "HELLO",
        };
        let version = Version {
            major: r.u8()?,
            minor: r.u8()?,
        };
        let flags = r.u16()?;
        let features = Features::from_bits(r.u32()?);
        let max_payload = r.u32()?;
        let max_headers = r.u32()?;
        let keepalive_ms = r.u32()?;
        Ok(Hello {
            version,
            flags,
            features,
            max_payload,
            max_headers,
            keepalive_ms,
            name: r.str16("name is not UTF-8")?,
            client_id: r.str16("client id is not UTF-8")?,
            session: r.str16("session is not UTF-8")?,
            user: r.str16("user is not UTF-8")?,
            auth: Bytes::copy_from_slice(r.bytes16()?),
        })
    }
}

/// Delivery guarantee of a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// Fire and forget: a message is delivered at most once.
    #[default]
    AtMostOnce,
    /// Every EVENT carries ACK_REQUIRED; unacknowledged ones are redelivered after `ack_wait`.
    AtLeastOnce,
}

/// What the broker does when a subscriber's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Whatever the server is configured to do.
    #[default]
    ServerDefault,
    /// Push back on the publisher (it waits or gets BACKPRESSURE_REJECTION).
    Block,
    /// Drop the oldest queued message, count it.
    DropOldest,
    /// Drop the new message, count it.
    DropNewest,
    /// Close the subscription with SLOW_CONSUMER.
    Disconnect,
}

impl SlowConsumerPolicy {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::ServerDefault,
            1 => Self::Block,
            2 => Self::DropOldest,
            3 => Self::DropNewest,
            4 => Self::Disconnect,
            _ => return None,
        })
    }
    fn to_u8(self) -> u8 {
        match self {
            Self::ServerDefault => 0,
            Self::Block => 1,
            Self::DropOldest => 2,
            Self::DropNewest => 3,
            Self::Disconnect => 4,
        }
    }
}

/// Options of a SUBSCRIBE or REGISTER. An empty body means all defaults.
///
/// Layout: delivery u8, policy u8, reserved u16 (0), max_pending u32, ack_wait_ms u32,
/// max_deliver u32, credit u32, queue group (u16 length + UTF-8; empty for none), then, since
/// protocol 1.1 and only when set, the durable name (u16 length + UTF-8): a 1.0 encoder's body
/// ends after the queue group and still decodes the same.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SubscribeOptions {
    /// Delivery guarantee.
    pub delivery: Delivery,
    /// Slow-consumer policy.
    pub policy: SlowConsumerPolicy,
    /// Queue bound in messages; 0 for the server default.
    pub max_pending: u32,
    /// How long an unacknowledged EVENT waits before redelivery, in ms; 0 for the default.
    pub ack_wait_ms: u32,
    /// Deliveries before a message is given up; 0 for unlimited.
    pub max_deliver: u32,
    /// Initial flow-control credit in messages; 0 disables credit (queue bound only).
    pub credit: u32,
    /// Queue group: each message goes to one member of the group.
    pub queue: Option<String>,
    /// Durable name (protocol 1.1): the broker keeps the subscription's messages, those not
    /// yet acknowledged included, for the next subscriber of the same name and user when this
    /// one ends (PROTOCOL.md 11.2). At most [`SubscribeOptions::MAX_DURABLE`] bytes.
    pub durable: Option<String>,
}

/// Whether a queue group or durable name has a character it may not have.
fn bad_name(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl SubscribeOptions {
    /// The longest durable name, in bytes.
    pub const MAX_DURABLE: usize = 255;

    /// Whether every field has its default (encodes as an empty body).
    pub fn is_default(&self) -> bool {
        *self == SubscribeOptions::default()
    }

    /// Encodes the body (nothing for all defaults).
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        if self.is_default() {
            return Ok(());
        }
        dst.put_u8(match self.delivery {
            Delivery::AtMostOnce => 0,
            Delivery::AtLeastOnce => 1,
        });
        dst.put_u8(self.policy.to_u8());
        dst.put_u16(0);
        dst.put_u32(self.max_pending);
        dst.put_u32(self.ack_wait_ms);
        dst.put_u32(self.max_deliver);
        dst.put_u32(self.credit);
        put_bytes16(
            dst,
            self.queue.as_deref().unwrap_or("").as_bytes(),
            "queue group",
        )?;
        match self.durable.as_deref() {
            Some(d) if !d.is_empty() => {
                if d.len() > Self::MAX_DURABLE {
                    return Err(EncodeError::FieldTooLong("durable name"));
                }
                put_bytes16(dst, d.as_bytes(), "durable name")
            }
            _ => Ok(()),
        }
    }

    /// Decodes the body of a SUBSCRIBE (or REGISTER, with `frame` naming it).
    pub fn decode(b: &[u8], frame: &'static str) -> Result<SubscribeOptions, DecodeErrorKind> {
        if b.is_empty() {
            return Ok(SubscribeOptions::default());
        }
        let mut r = Reader { buf: b, frame };
        let delivery = match r.u8()? {
            0 => Delivery::AtMostOnce,
            1 => Delivery::AtLeastOnce,
            _ => return Err(malformed(frame, "unknown delivery mode")),
        };
        let policy = SlowConsumerPolicy::from_u8(r.u8()?)
            .ok_or_else(|| malformed(frame, "unknown slow-consumer policy"))?;
        r.u16()?;
        let max_pending = r.u32()?;
        let ack_wait_ms = r.u32()?;
        let max_deliver = r.u32()?;
        let credit = r.u32()?;
        let queue = r.str16("queue group is not UTF-8")?;
        if bad_name(&queue) {
            return Err(malformed(
                frame,
                "queue group has whitespace or control characters",
            ));
        }
        // 1.1: a durable name may follow; when anything follows, it is a whole string16.
        let durable = if r.buf.is_empty() {
            String::new()
        } else {
            r.str16("durable name is not UTF-8")?
        };
        if bad_name(&durable) {
            return Err(malformed(
                frame,
                "durable name has whitespace or control characters",
            ));
        }
        if durable.len() > Self::MAX_DURABLE {
            return Err(malformed(frame, "durable name is longer than 255 bytes"));
        }
        Ok(SubscribeOptions {
            delivery,
            policy,
            max_pending,
            ack_wait_ms,
            max_deliver,
            credit,
            queue: (!queue.is_empty()).then_some(queue),
            durable: (!durable.is_empty()).then_some(durable),
        })
    }
}

/// Reads the u32 count of a CREDIT body (exactly 4 bytes).
pub fn decode_credit(b: &[u8]) -> Result<u32, DecodeErrorKind> {
    let a: [u8; 4] = b
        .try_into()
        .map_err(|_| malformed("CREDIT", "body must be 4 bytes"))?;
    Ok(u32::from_be_bytes(a))
}

/// Reads an optional u32 body (UNSUBSCRIBE's auto-unsubscribe count, NACK's redelivery delay):
/// empty or exactly 4 bytes.
pub fn decode_opt_u32(b: &[u8], frame: &'static str) -> Result<Option<u32>, DecodeErrorKind> {
    match b.len() {
        0 => Ok(None),
        4 => Ok(Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
        _ => Err(malformed(frame, "body must be empty or 4 bytes")),
    }
}

/// Reads the UTF-8 reason of an ERROR or CLOSE.
pub fn decode_reason<'a>(b: &'a [u8], frame: &'static str) -> Result<&'a str, DecodeErrorKind> {
    std::str::from_utf8(b).map_err(|_| malformed(frame, "reason is not UTF-8"))
}

/// Serving state reported by HEALTH.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HealthState {
    /// Accepting and serving work.
    Serving,
    /// Up, but not accepting new work (starting, overloaded).
    NotServing,
    /// Shutting down: finishing work in flight, accepting nothing new.
    Draining,
}

/// The HEALTH reply body, a MessagePack map with these keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The serving state.
    pub state: HealthState,
    /// Milliseconds since the responder started.
    pub uptime_ms: u64,
    /// Responder name and version.
    pub server: String,
    /// Free-form detail (why it is not serving, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The STATS reply body: a MessagePack map from counter name to value, sorted by name.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StatsReport {
    /// Counters and gauges (`msgs_in`, `bytes_out`, `slow_consumer_drops`, ...).
    pub values: BTreeMap<String, u64>,
}

fn to_msgpack<T: Serialize>(v: &T, what: &'static str) -> Result<Bytes, EncodeError> {
    rmp_serde::to_vec_named(v)
        .map(Bytes::from)
        .map_err(|_| EncodeError::FieldTooLong(what))
}

impl HealthReport {
    /// Encodes the MessagePack body.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        to_msgpack(self, "health report")
    }
    /// Decodes the MessagePack body.
    pub fn decode(b: &[u8]) -> Result<HealthReport, DecodeErrorKind> {
        rmp_serde::from_slice(b).map_err(|_| malformed("HEALTH", "not a health report map"))
    }
}

impl StatsReport {
    /// Encodes the MessagePack body.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        to_msgpack(self, "stats report")
    }
    /// Decodes the MessagePack body.
    pub fn decode(b: &[u8]) -> Result<StatsReport, DecodeErrorKind> {
        rmp_serde::from_slice(b).map_err(|_| malformed("STATS", "not a map of counters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_trailing_bytes() {
        let h = Hello {
            version: Version { major: 1, minor: 3 },
            flags: 0,
            features: Features::STREAMING | Features::ACKS,
            max_payload: 1 << 20,
            max_headers: 4096,
            keepalive_ms: 30_000,
            name: "svc".into(),
            client_id: "c1".into(),
            session: String::new(),
            user: "u".into(),
            auth: Bytes::from_static(b"pw"),
        };
        let mut b = BytesMut::new();
        h.encode(&mut b).unwrap();
        assert_eq!(Hello::decode(&b).unwrap(), h);
        b.extend_from_slice(b"future");
        assert_eq!(Hello::decode(&b).unwrap(), h);
        assert!(Hello::decode(&b[..25]).is_err());
    }

    #[test]
    fn subscribe_options() {
        let o = SubscribeOptions {
            delivery: Delivery::AtLeastOnce,
            policy: SlowConsumerPolicy::DropOldest,
            max_pending: 10,
            ack_wait_ms: 500,
            max_deliver: 3,
            credit: 64,
            queue: Some("workers".into()),
            durable: None,
        };
        let mut b = BytesMut::new();
        o.encode(&mut b).unwrap();
        assert_eq!(b.len(), 20 + 2 + 7, "no durable name: the 1.0 layout");
        assert_eq!(SubscribeOptions::decode(&b, "SUBSCRIBE").unwrap(), o);
        // A durable name follows the queue group; a 1.0 decoder would ignore it.
        let d = SubscribeOptions {
            durable: Some("billing".into()),
            ..o.clone()
        };
        let mut db = BytesMut::new();
        d.encode(&mut db).unwrap();
        assert_eq!(&db[..b.len()], &b[..]);
        assert_eq!(&db[b.len()..], b"\x00\x07billing");
        assert_eq!(SubscribeOptions::decode(&db, "SUBSCRIBE").unwrap(), d);
        assert!(
            SubscribeOptions::decode(&db[..db.len() - 1], "SUBSCRIBE").is_err(),
            "a durable name cut short is truncated"
        );
        let mut trailing = db.clone();
        trailing.extend_from_slice(b"later");
        assert_eq!(
            SubscribeOptions::decode(&trailing, "SUBSCRIBE").unwrap(),
            d,
            "bytes after the durable name are ignored"
        );
        let mut spaced = b.clone();
        spaced.extend_from_slice(b"\x00\x03a b");
        assert!(SubscribeOptions::decode(&spaced, "SUBSCRIBE").is_err());
        let long = SubscribeOptions {
            durable: Some("d".repeat(256)),
            ..o.clone()
        };
        assert!(long.encode(&mut BytesMut::new()).is_err());
        let mut long_wire = b.clone();
        long_wire.extend_from_slice(&256u16.to_be_bytes());
        long_wire.extend_from_slice(&[b'd'; 256]);
        assert!(SubscribeOptions::decode(&long_wire, "SUBSCRIBE").is_err());
        let mut empty = BytesMut::new();
        SubscribeOptions::default().encode(&mut empty).unwrap();
        assert!(empty.is_empty());
        let mut bad = b.clone();
        bad[1] = 9;
        assert!(SubscribeOptions::decode(&bad, "SUBSCRIBE").is_err());
        assert!(SubscribeOptions::decode(&b[..10], "SUBSCRIBE").is_err());
    }

    #[test]
    fn small_bodies() {
        assert_eq!(decode_credit(&[0, 0, 1, 0]).unwrap(), 256);
        assert!(decode_credit(&[0, 1]).is_err());
        assert_eq!(decode_opt_u32(&[], "NACK").unwrap(), None);
        assert!(decode_opt_u32(&[1, 2, 3], "NACK").is_err());
        assert!(decode_reason(b"\xff", "ERROR").is_err());
    }

    #[test]
    fn reports_round_trip() {
        let h = HealthReport {
            state: HealthState::Draining,
            uptime_ms: 5,
            server: "mitto 0.1".into(),
            detail: None,
        };
        assert_eq!(HealthReport::decode(&h.encode().unwrap()).unwrap(), h);
        let mut s = StatsReport::default();
        s.values.insert("msgs_in".into(), 7);
        assert_eq!(StatsReport::decode(&s.encode().unwrap()).unwrap(), s);
        assert!(HealthReport::decode(b"\xc1").is_err());
    }
}
