//! The protocol version and the feature bits a HELLO offers: what the HELLO body carries and
//! negotiation compares, kept apart from both so that neither module needs the other's.

use crate::header::{VERSION_MAJOR, VERSION_MINOR};
use std::fmt;

/// A protocol version.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version {
    /// Incompatible changes.
    pub major: u8,
    /// Compatible additions.
    pub minor: u8,
}

impl Version {
    /// The version this implementation speaks.
    pub const CURRENT: Version = Version {
        major: VERSION_MAJOR,
        minor: VERSION_MINOR,
    };
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Feature bits offered in HELLO. Bits a side does not know are dropped by the AND.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(u32);

impl Features {
    /// STREAM frames: streaming calls.
    pub const STREAMING: Features = Features(1 << 0);
    /// Many frames per write (every receiver accepts it; the bit is still offered for peers that
    /// look for it).
    pub const BATCHING: Features = Features(1 << 1);
    /// URGENT frames overtake normal ones.
    pub const PRIORITY: Features = Features(1 << 2);
    /// LZ4-compressed payloads (the COMPRESSED flag).
    pub const COMPRESSION_LZ4: Features = Features(1 << 3);
    /// Acknowledged delivery: ACK/NACK of EVENTs, ACK_REQUIRED on PUBLISH.
    pub const ACKS: Features = Features(1 << 4);
    /// CREDIT frames for streams and subscriptions.
    pub const FLOW_CONTROL: Features = Features(1 << 5);
    /// Session resume on reconnect.
    pub const SESSION_RESUME: Features = Features(1 << 6);
    /// W3C trace context headers are propagated.
    pub const TRACE_CONTEXT: Features = Features(1 << 7);

    const NAMES: [(&'static str, Features); 8] = [
        ("STREAMING", Features::STREAMING),
        ("BATCHING", Features::BATCHING),
        ("PRIORITY", Features::PRIORITY),
        ("COMPRESSION_LZ4", Features::COMPRESSION_LZ4),
        ("ACKS", Features::ACKS),
        ("FLOW_CONTROL", Features::FLOW_CONTROL),
        ("SESSION_RESUME", Features::SESSION_RESUME),
        ("TRACE_CONTEXT", Features::TRACE_CONTEXT),
    ];

    /// Every feature this build supports.
    pub const fn supported() -> Features {
        let all = Features::STREAMING.0
            | Features::BATCHING.0
            | Features::PRIORITY.0
            | Features::ACKS.0
            | Features::FLOW_CONTROL.0
            | Features::SESSION_RESUME.0
            | Features::TRACE_CONTEXT.0;
        if cfg!(feature = "lz4") {
            Features(all | Features::COMPRESSION_LZ4.0)
        } else {
            Features(all)
        }
    }
    /// No feature.
    pub const fn empty() -> Features {
        Features(0)
    }
    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }
    /// From raw bits (unknown bits kept; negotiation drops them).
    pub const fn from_bits(b: u32) -> Features {
        Features(b)
    }
    /// Whether all of `other` is set.
    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
    /// Bits set in both.
    pub const fn intersection(self, other: Features) -> Features {
        Features(self.0 & other.0)
    }
    /// The names of the known set bits.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(_, f)| self.contains(*f))
            .map(|(n, _)| *n)
            .collect()
    }
    /// Parses one feature name.
    pub fn from_name(name: &str) -> Option<Features> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }
}

impl std::ops::BitOr for Features {
    type Output = Features;
    fn bitor(self, rhs: Features) -> Features {
        Features(self.0 | rhs.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Features({})", self.names().join("|"))
    }
}
