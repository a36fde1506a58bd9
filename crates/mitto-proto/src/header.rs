//! The fixed 32-byte frame header and the small types in it.

use crate::error::{DecodeError, DecodeErrorKind};
use std::fmt;

/// The four magic bytes that open every frame: `"MITO"`.
pub const MAGIC: [u8; 4] = *b"MITO";
/// The protocol major version carried in every header.
pub const VERSION_MAJOR: u8 = 1;
/// The protocol minor version this implementation speaks (negotiated in HELLO).
pub const VERSION_MINOR: u8 = 1;
/// The size of the fixed header in bytes.
pub const HEADER_LEN: usize = 32;

macro_rules! frame_types {
    ($( $(#[$doc:meta])* $name:ident = $value:expr, $text:expr; )*) => {
        /// The frame type (byte 6 of the header).
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        #[non_exhaustive]
        #[repr(u8)]
        pub enum FrameType {
            $( $(#[$doc])* $name = $value, )*
        }

        impl FrameType {
            /// Parses the wire value; `None` for a value this version does not define.
            pub const fn from_u8(v: u8) -> Option<FrameType> {
                match v {
                    $( $value => Some(FrameType::$name), )*
                    _ => None,
                }
            }

            /// The upper-case name used in the spec and the conformance vectors.
            pub const fn name(self) -> &'static str {
                match self {
                    $( FrameType::$name => $text, )*
                }
            }

            /// Looks a frame type up by its upper-case name.
            pub fn from_name(name: &str) -> Option<FrameType> {
                match name {
                    $( $text => Some(FrameType::$name), )*
                    _ => None,
                }
            }

            /// Every frame type, in numeric order.
            pub const ALL: &'static [FrameType] = &[$( FrameType::$name, )*];
        }
    };
}

frame_types! {
    /// Opens a connection: version, features, limits, identity, auth, session resume.
    Hello = 0x01, "HELLO";
    /// Subscribes a subscription id to a subject filter.
    Subscribe = 0x02, "SUBSCRIBE";
    /// Ends a subscription.
    Unsubscribe = 0x03, "UNSUBSCRIBE";
    /// Publishes a message to a subject.
    Publish = 0x04, "PUBLISH";
    /// Delivers a published message to a subscription.
    Event = 0x05, "EVENT";
    /// Positive acknowledgement of a frame that asked for one, or of a delivered EVENT.
    Ack = 0x06, "ACK";
    /// Reports a failure with a status code and a reason.
    Error = 0x07, "ERROR";
    /// Keepalive probe; the receiver answers PONG with the same id and payload.
    Ping = 0x08, "PING";
    /// Answer to PING.
    Pong = 0x09, "PONG";
    /// Graceful close with a status and a reason.
    Close = 0x0A, "CLOSE";
    /// Opens an RPC call or a broker request.
    Request = 0x0B, "REQUEST";
    /// Completes an RPC call with its final status.
    Response = 0x0C, "RESPONSE";
    /// One item of a request or response stream.
    Stream = 0x0D, "STREAM";
    /// Cancels an RPC call or a request in flight.
    Cancel = 0x0E, "CANCEL";
    /// Grants flow-control credit to a stream or a subscription.
    Credit = 0x0F, "CREDIT";
    /// Negative acknowledgement of a delivered EVENT: redeliver.
    Nack = 0x10, "NACK";
    /// Health check query or reply.
    Health = 0x11, "HEALTH";
    /// Statistics query or reply.
    Stats = 0x12, "STATS";
    /// Registers a service instance that answers requests on a subject filter.
    Register = 0x13, "REGISTER";
    /// Unregisters a service instance.
    Unregister = 0x14, "UNREGISTER";
}

/// The message kind (byte 7 of the header): what the application means by a message (an event,
/// a command, a state, a log record, a metric), beside the frame type, which says what the
/// protocol does with it.
///
/// 0 to 5 are defined, 6 to 127 are reserved (a receiver answers BAD_REQUEST), 128 to 255 are
/// free for applications.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MsgKind(pub u8);

impl MsgKind {
    /// No kind given.
    pub const NONE: MsgKind = MsgKind(0);
    /// Something happened.
    pub const EVENT: MsgKind = MsgKind(1);
    /// Do something.
    pub const COMMAND: MsgKind = MsgKind(2);
    /// The current state of something.
    pub const STATE: MsgKind = MsgKind(3);
    /// A log record.
    pub const LOG: MsgKind = MsgKind(4);
    /// A metric sample.
    pub const METRIC: MsgKind = MsgKind(5);
    /// First value free for applications.
    pub const APPLICATION_MIN: u8 = 128;

    /// Whether the value is defined or application-defined (not reserved).
    pub const fn is_valid(self) -> bool {
        self.0 <= 5 || self.0 >= Self::APPLICATION_MIN
    }

    /// The lower-case name of a defined kind.
    pub const fn name(self) -> Option<&'static str> {
        match self.0 {
            0 => Some("none"),
            1 => Some("event"),
            2 => Some("command"),
            3 => Some("state"),
            4 => Some("log"),
            5 => Some("metric"),
            _ => None,
        }
    }

    /// Parses a defined kind's name, or a number.
    pub fn from_name(name: &str) -> Option<MsgKind> {
        (0u8..=5)
            .map(MsgKind)
            .find(|k| k.name() == Some(name))
            .or_else(|| name.parse().ok().map(MsgKind).filter(|k| k.is_valid()))
    }
}

impl fmt::Debug for MsgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "MsgKind({n})"),
            None => write!(f, "MsgKind({})", self.0),
        }
    }
}

/// The flag bits (byte 5 of the header).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u8);

impl Flags {
    /// The sender wants an ACK (or an ERROR) for this frame.
    pub const ACK_REQUIRED: Flags = Flags(1 << 0);
    /// The payload is LZ4-compressed (see the spec for its layout).
    pub const COMPRESSED: Flags = Flags(1 << 1);
    /// High priority: overtakes normal frames in every queue.
    pub const URGENT: Flags = Flags(1 << 2);
    /// On REQUEST: the request body continues as STREAM frames.
    pub const START: Flags = Flags(1 << 3);
    /// On STREAM: the last item of this side's stream.
    pub const END: Flags = Flags(1 << 4);
    /// This frame answers a frame of the same type with the same id (HELLO, HEALTH, STATS).
    pub const REPLY: Flags = Flags(1 << 5);
    /// Bits no version defines; a receiver answers BAD_REQUEST if any is set.
    pub const RESERVED_MASK: u8 = 0b1100_0000;

    const NAMES: [(&'static str, Flags); 6] = [
        ("ACK_REQUIRED", Flags::ACK_REQUIRED),
        ("COMPRESSED", Flags::COMPRESSED),
        ("URGENT", Flags::URGENT),
        ("START", Flags::START),
        ("END", Flags::END),
        ("REPLY", Flags::REPLY),
    ];

    /// No flag set.
    pub const fn empty() -> Flags {
        Flags(0)
    }
    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// Builds flags from a raw byte, reserved bits included (the decoder rejects those).
    pub const fn from_bits(bits: u8) -> Flags {
        Flags(bits)
    }
    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Sets the bits of `other`.
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }
    /// Clears the bits of `other`.
    pub fn remove(&mut self, other: Flags) {
        self.0 &= !other.0;
    }
    /// The union of two flag sets.
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The names of the set flags, in bit order.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(_, f)| self.contains(*f))
            .map(|(n, _)| *n)
            .collect()
    }
    /// Parses one flag name.
    pub fn from_name(name: &str) -> Option<Flags> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.union(rhs)
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags({})", self.names().join("|"))?;
        if self.0 & Self::RESERVED_MASK != 0 {
            write!(f, "+reserved({:#04x})", self.0 & Self::RESERVED_MASK)?;
        }
        Ok(())
    }
}

/// The fixed header, decoded. Big-endian on the wire:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `"MITO"` |
/// | 4 | 1 | version (major) |
/// | 5 | 1 | flags |
/// | 6 | 1 | frame type |
/// | 7 | 1 | message kind |
/// | 8 | 8 | id |
/// | 16 | 4 | aux |
/// | 20 | 2 | status |
/// | 22 | 2 | subject length |
/// | 24 | 4 | headers length |
/// | 28 | 4 | payload length |
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Header {
    /// Protocol major version.
    pub version: u8,
    /// Flag bits.
    pub flags: Flags,
    /// Raw frame type byte (see [`FrameType::from_u8`]).
    pub frame_type: u8,
    /// Message kind.
    pub kind: MsgKind,
    /// Message or correlation id.
    pub id: u64,
    /// Frame-type-specific 32-bit field (subscription id on SUBSCRIBE/EVENT/...).
    pub aux: u32,
    /// Status code.
    pub status: u16,
    /// Length of the subject that follows the header.
    pub subject_len: u16,
    /// Length of the headers block that follows the subject.
    pub headers_len: u32,
    /// Length of the payload that follows the headers block.
    pub payload_len: u32,
}

impl Header {
    /// Writes the header into a 32-byte array.
    #[inline]
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        // Four big-endian words: the compiler turns them into four byte-swapped stores.
        let w0 = u64::from(u32::from_be_bytes(MAGIC)) << 32
            | u64::from(self.version) << 24
            | u64::from(self.flags.bits()) << 16
            | u64::from(self.frame_type) << 8
            | u64::from(self.kind.0);
        let w2 =
            u64::from(self.aux) << 32 | u64::from(self.status) << 16 | u64::from(self.subject_len);
        let w3 = u64::from(self.headers_len) << 32 | u64::from(self.payload_len);
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&w0.to_be_bytes());
        b[8..16].copy_from_slice(&self.id.to_be_bytes());
        b[16..24].copy_from_slice(&w2.to_be_bytes());
        b[24..32].copy_from_slice(&w3.to_be_bytes());
        b
    }

    /// Reads a header, checking only what makes the byte stream untrustworthy: the magic and the
    /// major version. Everything else is checked by the [`Decoder`](crate::Decoder) once the
    /// frame's extent is known, so that a bad frame can be skipped without closing.
    #[inline]
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(w)
        };
        let (w0, id, w2, w3) = (word(0), word(8), word(16), word(24));
        if (w0 >> 32) as u32 != u32::from_be_bytes(MAGIC) {
            return Err(DecodeError::new(DecodeErrorKind::BadMagic, 0));
        }
        let version = (w0 >> 24) as u8;
        if version != VERSION_MAJOR {
            return Err(DecodeError::new(
                DecodeErrorKind::UnsupportedVersion(version),
                id,
            ));
        }
        Ok(Header {
            version,
            flags: Flags((w0 >> 16) as u8),
            frame_type: (w0 >> 8) as u8,
            kind: MsgKind(w0 as u8),
            id,
            aux: (w2 >> 32) as u32,
            status: (w2 >> 16) as u16,
            subject_len: w2 as u16,
            headers_len: (w3 >> 32) as u32,
            payload_len: w3 as u32,
        })
    }

    /// The length of the whole frame, header included.
    #[inline]
    pub fn frame_len(&self) -> u64 {
        HEADER_LEN as u64
            + u64::from(self.subject_len)
            + u64::from(self.headers_len)
            + u64::from(self.payload_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: VERSION_MAJOR,
            flags: Flags::ACK_REQUIRED | Flags::URGENT,
            frame_type: FrameType::Publish as u8,
            kind: MsgKind::EVENT,
            id: 0x0102_0304_0506_0708,
            aux: 0x0A0B_0C0D,
            status: 0x1234,
            subject_len: 5,
            headers_len: 7,
            payload_len: 0x0001_0000,
        }
    }

    #[test]
    fn layout_is_big_endian_and_fixed() {
        let b = sample().to_bytes();
        assert_eq!(&b[0..4], b"MITO");
        assert_eq!(b[4], 1);
        assert_eq!(b[5], 0b101);
        assert_eq!(b[6], 0x04);
        assert_eq!(b[7], 1);
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[16..20], &[0x0A, 0x0B, 0x0C, 0x0D]);
        assert_eq!(&b[20..22], &[0x12, 0x34]);
        assert_eq!(&b[22..24], &[0, 5]);
        assert_eq!(&b[24..28], &[0, 0, 0, 7]);
        assert_eq!(&b[28..32], &[0, 1, 0, 0]);
        assert_eq!(Header::from_bytes(&b).unwrap(), sample());
        assert_eq!(sample().frame_len(), 32 + 5 + 7 + 65536);
    }

    #[test]
    fn bad_magic_and_version_are_rejected() {
        let mut b = sample().to_bytes();
        b[0] = b'X';
        assert_eq!(
            Header::from_bytes(&b).unwrap_err().kind(),
            &DecodeErrorKind::BadMagic
        );
        let mut b = sample().to_bytes();
        b[4] = 2;
        assert_eq!(
            Header::from_bytes(&b).unwrap_err().kind(),
            &DecodeErrorKind::UnsupportedVersion(2)
        );
    }

    #[test]
    fn frame_type_names_round_trip() {
        for t in FrameType::ALL {
            assert_eq!(FrameType::from_u8(*t as u8), Some(*t));
            assert_eq!(FrameType::from_name(t.name()), Some(*t));
        }
        assert_eq!(FrameType::from_u8(0), None);
        assert_eq!(FrameType::from_u8(0x15), None);
    }

    #[test]
    fn kinds_and_flags() {
        assert!(MsgKind(5).is_valid());
        assert!(!MsgKind(6).is_valid());
        assert!(!MsgKind(127).is_valid());
        assert!(MsgKind(128).is_valid());
        assert_eq!(MsgKind::from_name("metric"), Some(MsgKind::METRIC));
        assert_eq!(MsgKind::from_name("200"), Some(MsgKind(200)));
        assert_eq!(MsgKind::from_name("7"), None);
        let f = Flags::START | Flags::END;
        assert_eq!(f.names(), vec!["START", "END"]);
        assert_eq!(Flags::from_name("REPLY"), Some(Flags::REPLY));
    }
}
