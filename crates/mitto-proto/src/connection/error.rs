//! What a command returns when it cannot be done ([`CommandError`], the caller's business:
//! nothing went on the wire), and how an operation ended when it did not succeed
//! ([`Failure`]).

use crate::error::EncodeError;
use crate::frame::Frame;
use crate::negotiate::Features;
use crate::status::Status;
use thiserror::Error;

/// Why a command that would block was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Blocked {
    /// The outbound buffer holds [`Config::max_outbound`](super::Config::max_outbound) bytes:
    /// wait for [`Event::Writable`](super::Event::Writable).
    Buffer,
    /// The stream has no credit left: wait for
    /// [`Event::CreditAvailable`](super::Event::CreditAvailable).
    Credit,
}

/// A command the connection refused. Nothing was queued for the peer.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Try again after the event [`Blocked`] names.
    #[error("would block ({0:?})")]
    WouldBlock(Blocked),
    /// The handshake has not completed yet.
    #[error("the handshake has not completed")]
    NotReady,
    /// The connection is closing or closed.
    #[error("the connection is closed")]
    Closed,
    /// A part of the frame exceeds what the peer agreed to receive (spec section 14.4).
    #[error("{what} of {len} bytes exceeds the negotiated limit of {max}")]
    TooLarge {
        /// Which part.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The agreed limit.
        max: u64,
    },
    /// The operation needs a feature the peer did not agree to.
    #[error("{0:?} was not negotiated")]
    NotNegotiated(Features),
    /// No call of this side has that id in flight.
    #[error("no call {0} in flight")]
    UnknownCall(u64),
    /// No call of the peer's has that id in flight (answered, cancelled, or never received).
    #[error("no request {0} from the peer in flight")]
    UnknownRequest(u64),
    /// No subscription or registration has that id.
    #[error("no subscription {0}")]
    UnknownSubscription(u32),
    /// That delivery is not awaiting an ACK or NACK.
    #[error("delivery {delivery} of subscription {sid} awaits no acknowledgement")]
    UnknownDelivery {
        /// The subscription.
        sid: u32,
        /// The delivery id.
        delivery: u64,
    },
    /// The stream in that direction has ended, or the call never had one.
    #[error("no open stream in that direction")]
    NoStream,
    /// [`Config::max_pending`](super::Config::max_pending) operations await answers already.
    #[error("too many operations awaiting an answer")]
    TooManyPending,
    /// The frame is not one this command sends, or it is one the connection sends itself.
    #[error("{0}")]
    Misuse(&'static str),
    /// The frame cannot be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Where a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// The peer answered with a failure (a RESPONSE with a status other than OK, or ERROR).
    Peer,
    /// This side ended the operation (deadline, flow-control breach, the connection ended).
    Local,
}

/// How an operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    status: Status,
    origin: Origin,
    reason: &'static str,
    frame: Option<Frame>,
}

impl Failure {
    /// A failure decided here.
    pub(crate) fn local(status: Status, reason: &'static str) -> Failure {
        Failure {
            status,
            origin: Origin::Local,
            reason,
            frame: None,
        }
    }

    /// The peer's answer: a failed RESPONSE or an ERROR.
    pub(crate) fn peer(frame: Frame) -> Failure {
        Failure {
            status: frame.status,
            origin: Origin::Peer,
            reason: "",
            frame: Some(frame),
        }
    }

    /// The status the operation failed with.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Where it failed.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The reason: the peer's UTF-8 reason (lossy) or this side's.
    pub fn reason(&self) -> std::borrow::Cow<'_, str> {
        match &self.frame {
            Some(f) => String::from_utf8_lossy(&f.payload),
            None => self.reason.into(),
        }
    }

    /// The peer's frame (its headers may carry details), if the peer answered.
    pub fn frame(&self) -> Option<&Frame> {
        self.frame.as_ref()
    }

    /// Whether the same operation may succeed if tried again (spec section 13).
    pub fn is_retryable(&self) -> bool {
        self.status.is_retryable()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.reason())
    }
}

impl std::error::Error for Failure {}
