//! Status codes carried in the `status` field of RESPONSE, ERROR, CLOSE, NACK and REPLY frames.

use std::fmt;

/// A protocol status code (a 16-bit value on the wire).
///
/// This is a newtype rather than an enum so that codes defined by a later protocol version pass
/// through untouched: [`Status::is_known`] tells whether this implementation knows the code.
/// The codes cover what an RPC call, a broker and a stream can answer: success, the handler's
/// failure, missing services and methods, deadlines, quotas, back-pressure, auth and more.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Status(pub u16);

macro_rules! statuses {
    ($( $(#[$doc:meta])* $name:ident = $value:expr, $text:expr; )*) => {
        impl Status {
            $( $(#[$doc])* pub const $name: Status = Status($value); )*

            /// The canonical lower-case name of the code (`"method_not_found"`), or `None` for a
            /// code this implementation does not know.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some($text), )*
                    _ => None,
                }
            }

            /// Looks a code up by its canonical name.
            pub fn from_name(name: &str) -> Option<Status> {
                match name {
                    $( $text => Some(Status($value)), )*
                    _ => None,
                }
            }

            /// Every code this implementation knows, in numeric order.
            pub const ALL: &'static [Status] = &[$( Status($value), )*];
        }
    };
}

statuses! {
    /// The operation completed.
    OK = 0, "ok";
    /// The addressed module, service or subject does not exist.
    NOT_FOUND = 1, "not_found";
    /// The service exists but has no such method.
    METHOD_NOT_FOUND = 2, "method_not_found";
    /// The handler ran and failed.
    EXECUTION_ERROR = 3, "execution_error";
    /// The deadline passed before the operation completed.
    TIMEOUT = 4, "timeout";
    /// A resource quota was exceeded (connections, subscriptions, pending bytes).
    QUOTA_EXCEEDED = 5, "quota_exceeded";
    /// The receiver is overloaded and refused the message; retry later.
    BACKPRESSURE_REJECTION = 6, "backpressure_rejection";
    /// Authentication failed or is missing.
    UNAUTHORIZED = 7, "unauthorized";
    /// The authenticated peer may not do this (publish/subscribe permission).
    FORBIDDEN = 8, "forbidden";
    /// The caller cancelled the operation.
    CANCELLED = 9, "cancelled";
    /// A request was published to a subject nobody answers.
    NO_RESPONDERS = 10, "no_responders";
    /// The frame is well formed but its content is invalid (bad flags, body, header).
    BAD_REQUEST = 11, "bad_request";
    /// A length exceeds the negotiated limit.
    PAYLOAD_TOO_LARGE = 12, "payload_too_large";
    /// The peer speaks a protocol major version this side does not.
    UNSUPPORTED_VERSION = 13, "unsupported_version";
    /// The byte stream is not mitto (bad magic) or cannot be framed any more.
    PROTOCOL_ERROR = 14, "protocol_error";
    /// The service is shutting down, draining, or the connection was lost.
    UNAVAILABLE = 15, "unavailable";
    /// An unexpected failure inside the receiver.
    INTERNAL = 16, "internal";
    /// A subject or subject filter is syntactically invalid.
    INVALID_SUBJECT = 17, "invalid_subject";
    /// A frame type or feature was used that was not negotiated.
    UNSUPPORTED_FEATURE = 18, "unsupported_feature";
    /// A subscriber fell too far behind and its policy disconnected or dropped it.
    SLOW_CONSUMER = 19, "slow_consumer";
    /// Something with that identity already exists (subscription id, service instance).
    ALREADY_EXISTS = 20, "already_exists";
    /// A frame arrived that is not valid in the connection's current state.
    UNEXPECTED_FRAME = 21, "unexpected_frame";
}

impl Status {
    /// Whether the code means success.
    pub const fn is_ok(self) -> bool {
        self.0 == 0
    }

    /// Whether this implementation knows the code.
    pub const fn is_known(self) -> bool {
        self.name().is_some()
    }

    /// Whether the same operation may succeed if tried again later, unchanged.
    ///
    /// Retryable: `TIMEOUT`, `QUOTA_EXCEEDED`, `BACKPRESSURE_REJECTION`, `NO_RESPONDERS`,
    /// `UNAVAILABLE`, `SLOW_CONSUMER`. A retry of a non-idempotent operation after `TIMEOUT` may
    /// run it twice; callers decide that, this only classifies the code.
    pub const fn is_retryable(self) -> bool {
        matches!(self.0, 4 | 5 | 6 | 10 | 15 | 19)
    }

    /// Whether the code blames the sender's input (retrying unchanged cannot help).
    pub const fn is_caller_error(self) -> bool {
        matches!(
            self.0,
            1 | 2 | 7 | 8 | 11 | 12 | 13 | 14 | 17 | 18 | 20 | 21
        )
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "Status({}: {n})", self.0),
            None => write!(f, "Status({}: unknown)", self.0),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "status {}", self.0),
        }
    }
}

impl From<u16> for Status {
    fn from(v: u16) -> Self {
        Status(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for s in Status::ALL {
            let name = s.name().unwrap();
            assert!(seen.insert(name), "duplicate name {name}");
            assert_eq!(Status::from_name(name), Some(*s));
        }
        assert_eq!(Status::ALL.len(), 22);
    }

    #[test]
    fn classification() {
        assert!(Status::OK.is_ok());
        assert!(!Status::TIMEOUT.is_ok());
        assert!(Status::BACKPRESSURE_REJECTION.is_retryable());
        assert!(Status::UNAVAILABLE.is_retryable());
        assert!(!Status::BAD_REQUEST.is_retryable());
        assert!(Status::BAD_REQUEST.is_caller_error());
        assert!(!Status::EXECUTION_ERROR.is_caller_error());
        assert!(!Status::EXECUTION_ERROR.is_retryable());
        for s in Status::ALL {
            assert!(!(s.is_retryable() && s.is_caller_error()), "{s:?}");
        }
    }

    #[test]
    fn unknown_codes_pass_through() {
        let s = Status(4000);
        assert!(!s.is_known());
        assert_eq!(s.to_string(), "status 4000");
        assert_eq!(format!("{:?}", Status::CANCELLED), "Status(9: cancelled)");
    }
}
