//! Version and feature negotiation (the majors must match, the lower minor wins, the features
//! are those both sides offer) and the limits both sides then enforce.

use crate::body::Hello;
use crate::status::Status;
use thiserror::Error;

// Defined apart so that the HELLO body can carry them without depending on this module.
pub use crate::version::{Features, Version};

/// Size limits a receiver enforces before it allocates anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload in bytes (default 64 MiB).
    pub max_payload: u32,
    /// Largest headers block in bytes (default 64 KiB).
    pub max_headers: u32,
    /// Longest subject in bytes (default 4 KiB).
    pub max_subject: u16,
}

impl Limits {
    /// The default payload limit: 64 MiB.
    pub const DEFAULT_MAX_PAYLOAD: u32 = 64 * 1024 * 1024;
    /// The default headers limit: 64 KiB.
    pub const DEFAULT_MAX_HEADERS: u32 = 64 * 1024;
    /// The default subject limit: 4 KiB.
    pub const DEFAULT_MAX_SUBJECT: u16 = 4096;

    /// The limits both sides decode with until the handshake completes (PROTOCOL.md 8.1): a
    /// HELLO is small (a 20-byte fixed part and five short strings), so a peer that has not
    /// yet authenticated may make the other side buffer at most 5,408 bytes of one frame.
    /// 4 KiB of payload, like nats-server's limit on its CONNECT line, leaves room for a
    /// bearer token of about 3 KiB beside the names.
    pub const HANDSHAKE: Limits = Limits {
        max_payload: 4096,
        max_headers: 1024,
        max_subject: 256,
    };

    /// The largest frame these limits let through, header included.
    pub const fn max_frame(&self) -> u64 {
        crate::header::HEADER_LEN as u64
            + self.max_subject as u64
            + self.max_headers as u64
            + self.max_payload as u64
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
            max_headers: Self::DEFAULT_MAX_HEADERS,
            max_subject: Self::DEFAULT_MAX_SUBJECT,
        }
    }
}

/// What both sides agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The common version: the shared major, the lower minor.
    pub version: Version,
    /// The features both offered.
    pub features: Features,
    /// The limits both enforce (the smaller of each).
    pub limits: Limits,
    /// Keepalive interval in ms (the smaller non-zero proposal; 0 if neither wants one).
    pub keepalive_ms: u32,
}

/// Negotiation failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NegotiationError {
    /// The majors differ.
    #[error("unsupported version {remote}: this side speaks {local}")]
    UnsupportedVersion {
        /// This side's version.
        local: Version,
        /// The peer's version.
        remote: Version,
    },
}

impl NegotiationError {
    /// The status of the ERROR frame that reports it.
    pub fn status(&self) -> Status {
        Status::UNSUPPORTED_VERSION
    }
}

fn or_default(v: u32, d: u32) -> u32 {
    if v == 0 {
        d
    } else {
        v
    }
}

/// Negotiates a version: same major, the lower minor.
///
/// ```
/// use mitto_proto::negotiate::{negotiate_version, Version};
/// let v = negotiate_version(Version { major: 1, minor: 4 }, Version { major: 1, minor: 2 });
/// assert_eq!(v.unwrap(), Version { major: 1, minor: 2 });
/// assert!(negotiate_version(Version { major: 1, minor: 0 }, Version { major: 2, minor: 0 }).is_err());
/// ```
pub fn negotiate_version(local: Version, remote: Version) -> Result<Version, NegotiationError> {
    if local.major != remote.major {
        return Err(NegotiationError::UnsupportedVersion { local, remote });
    }
    Ok(Version {
        major: local.major,
        minor: local.minor.min(remote.minor),
    })
}

/// Negotiates everything a HELLO carries. `local` is this side's offer and limits.
pub fn negotiate(local: &Hello, remote: &Hello) -> Result<Negotiated, NegotiationError> {
    let version = negotiate_version(local.version, remote.version)?;
    let features = local.features.intersection(remote.features);
    let max_payload = or_default(local.max_payload, Limits::DEFAULT_MAX_PAYLOAD)
        .min(or_default(remote.max_payload, Limits::DEFAULT_MAX_PAYLOAD));
    let max_headers = or_default(local.max_headers, Limits::DEFAULT_MAX_HEADERS)
        .min(or_default(remote.max_headers, Limits::DEFAULT_MAX_HEADERS));
    let keepalive_ms = match (local.keepalive_ms, remote.keepalive_ms) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    };
    Ok(Negotiated {
        version,
        features,
        limits: Limits {
            max_payload,
            max_headers,
            max_subject: Limits::DEFAULT_MAX_SUBJECT,
        },
        keepalive_ms,
    })
}

impl Negotiated {
    /// The HELLO a server sends back (with the REPLY flag on the frame): the agreed values and the
    /// server's identity. The auth field is left empty.
    pub fn reply(&self, name: &str, client_id: &str, session: &str, resumed: bool) -> Hello {
        Hello {
            version: self.version,
            flags: if resumed { Hello::RESUMED } else { 0 },
            features: self.features,
            max_payload: self.limits.max_payload,
            max_headers: self.limits.max_headers,
            keepalive_ms: self.keepalive_ms,
            name: name.into(),
            client_id: client_id.into(),
            session: session.into(),
            user: String::new(),
            auth: bytes::Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(minor: u8, features: Features, max_payload: u32, keepalive_ms: u32) -> Hello {
        Hello {
            version: Version { major: 1, minor },
            features,
            max_payload,
            keepalive_ms,
            ..Hello::default()
        }
    }

    #[test]
    fn lower_minor_and_feature_and() {
        let a = hello(
            3,
            Features::STREAMING | Features::ACKS | Features::from_bits(1 << 30),
            0,
            0,
        );
        let b = hello(
            1,
            Features::STREAMING | Features::PRIORITY | Features::from_bits(1 << 30),
            1024,
            500,
        );
        let n = negotiate(&a, &b).unwrap();
        assert_eq!(n.version, Version { major: 1, minor: 1 });
        assert_eq!(
            n.features,
            Features::STREAMING | Features::from_bits(1 << 30)
        );
        assert_eq!(n.limits.max_payload, 1024);
        assert_eq!(n.limits.max_headers, Limits::DEFAULT_MAX_HEADERS);
        assert_eq!(n.keepalive_ms, 500);
        assert_eq!(negotiate(&b, &a).unwrap().version, n.version);
    }

    #[test]
    fn default_limit_is_64_mib_and_majors_must_match() {
        let n = negotiate(
            &hello(0, Features::empty(), 0, 0),
            &hello(0, Features::empty(), 0, 0),
        );
        assert_eq!(n.unwrap().limits.max_payload, 67_108_864);
        let mut other = hello(0, Features::empty(), 0, 0);
        other.version.major = 2;
        let e = negotiate(&hello(0, Features::empty(), 0, 0), &other).unwrap_err();
        assert_eq!(e.status(), Status::UNSUPPORTED_VERSION);
    }

    #[test]
    fn reply_carries_agreement() {
        let n = negotiate(
            &hello(0, Features::ACKS, 10, 20),
            &hello(0, Features::ACKS, 30, 40),
        )
        .unwrap();
        let r = n.reply("broker", "c-1", "s-1", true);
        assert_eq!(r.flags, Hello::RESUMED);
        assert_eq!(r.max_payload, 10);
        assert_eq!(r.keepalive_ms, 20);
        assert!(r.auth.is_empty());
    }
}
