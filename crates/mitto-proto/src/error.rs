//! Errors: what a peer sent wrong ([`DecodeError`]) and what a caller asked for wrong
//! ([`EncodeError`]). They are different types because the first comes from the network and is
//! answered with an ERROR frame, the second is a bug or bad input on this side.

use crate::status::Status;
use thiserror::Error;

/// What was wrong with received bytes.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The frame does not start with `"MITO"`: the stream is not mitto or lost sync.
    #[error("bad magic: not a mitto frame")]
    BadMagic,
    /// The header's major version is not one this side speaks.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A frame type this version does not define.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    /// Flag bits that no version defines are set.
    #[error("reserved flag bits set: {0:#04x}")]
    ReservedFlags(u8),
    /// A defined flag that is not valid on this frame type.
    #[error("flag {flag} is not valid on {frame}")]
    FlagNotAllowed {
        /// The flag's name.
        flag: &'static str,
        /// The frame type's name.
        frame: &'static str,
    },
    /// A message kind in the reserved range 6..=127.
    #[error("reserved message kind {0}")]
    ReservedKind(u8),
    /// The payload is longer than the negotiated maximum.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The headers block is longer than the limit.
    #[error("headers block of {len} bytes exceeds the limit of {max}")]
    HeadersTooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The subject is longer than the limit.
    #[error("subject of {len} bytes exceeds the limit of {max}")]
    SubjectTooLong {
        /// Declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// This frame type needs a subject and has none.
    #[error("{0} requires a subject")]
    MissingSubject(&'static str),
    /// This frame type carries no subject and one was sent.
    #[error("{0} must not carry a subject")]
    UnexpectedSubject(&'static str),
    /// The subject is not valid UTF-8.
    #[error("subject is not valid UTF-8")]
    SubjectNotUtf8,
    /// The subject is UTF-8 but breaks the token rules.
    #[error("invalid subject: {0}")]
    InvalidSubject(&'static str),
    /// The headers block is malformed (an entry overruns it, a bad key, ...).
    #[error("malformed headers: {0}")]
    MalformedHeaders(&'static str),
    /// A frame-type-specific body is malformed.
    #[error("malformed {frame} body: {reason}")]
    MalformedBody {
        /// The frame type's name.
        frame: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// This frame type needs a non-zero subscription id in `aux`.
    #[error("{0} requires a non-zero subscription id")]
    MissingSubscriptionId(&'static str),
    /// A compressed payload could not be decompressed.
    #[error("compressed payload is corrupt: {0}")]
    Decompression(&'static str),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
}

/// An error decoding received bytes, with the id of the offending frame (0 if unknown) and whether
/// the byte stream can still be trusted.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{kind}")]
pub struct DecodeError {
    kind: DecodeErrorKind,
    id: u64,
}

impl DecodeError {
    pub(crate) fn new(kind: DecodeErrorKind, id: u64) -> Self {
        DecodeError { kind, id }
    }

    /// What was wrong.
    pub fn kind(&self) -> &DecodeErrorKind {
        &self.kind
    }

    /// The id of the offending frame, 0 if the header could not be read.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the byte stream can no longer be trusted: the receiver sends ERROR, then closes.
    ///
    /// Only framing failures are fatal (bad magic, unsupported version, truncation). Every other
    /// error concerns one frame whose extent is known; the decoder skips it and the connection
    /// goes on after an ERROR frame.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self.kind,
            DecodeErrorKind::BadMagic
                | DecodeErrorKind::UnsupportedVersion(_)
                | DecodeErrorKind::Truncated(_)
        )
    }

    /// The status code the ERROR frame answering this carries.
    pub fn status(&self) -> Status {
        use DecodeErrorKind::*;
        match self.kind {
            BadMagic | Truncated(_) => Status::PROTOCOL_ERROR,
            UnsupportedVersion(_) => Status::UNSUPPORTED_VERSION,
            PayloadTooLarge { .. } | HeadersTooLarge { .. } | SubjectTooLong { .. } => {
                Status::PAYLOAD_TOO_LARGE
            }
            SubjectNotUtf8 | InvalidSubject(_) => Status::INVALID_SUBJECT,
            UnknownFrameType(_) => Status::UNSUPPORTED_FEATURE,
            _ => Status::BAD_REQUEST,
        }
    }

    /// A short stable name for the kind, as used in the conformance vectors.
    pub fn code(&self) -> &'static str {
        use DecodeErrorKind::*;
        match self.kind {
            BadMagic => "bad_magic",
            UnsupportedVersion(_) => "unsupported_version",
            UnknownFrameType(_) => "unknown_frame_type",
            ReservedFlags(_) => "reserved_flags",
            FlagNotAllowed { .. } => "flag_not_allowed",
            ReservedKind(_) => "reserved_kind",
            PayloadTooLarge { .. } => "payload_too_large",
            HeadersTooLarge { .. } => "headers_too_large",
            SubjectTooLong { .. } => "subject_too_long",
            MissingSubject(_) => "missing_subject",
            UnexpectedSubject(_) => "unexpected_subject",
            SubjectNotUtf8 => "subject_not_utf8",
            InvalidSubject(_) => "invalid_subject",
            MalformedHeaders(_) => "malformed_headers",
            MalformedBody { .. } => "malformed_body",
            MissingSubscriptionId(_) => "missing_subscription_id",
            Decompression(_) => "decompression",
            Truncated(_) => "truncated",
        }
    }
}

/// A caller asked to build or encode something the protocol cannot carry.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A subject or subject filter breaks the token rules.
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The offending subject.
        subject: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A header key is not allowed (empty, too long, control characters, a well-known name).
    #[error("invalid header key {key:?}: {reason}")]
    InvalidHeaderKey {
        /// The offending key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A header value is longer than 65,535 bytes or has the wrong size for its key.
    #[error("invalid header value for {key}: {reason}")]
    InvalidHeaderValue {
        /// The key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A length does not fit its header field or exceeds the given limit.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// A string in a body is longer than its 16-bit length prefix allows.
    #[error("{0} is longer than 65,535 bytes")]
    FieldTooLong(&'static str),
}
