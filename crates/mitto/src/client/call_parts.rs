//! What a call is made of: its options, the call as client middleware sees it, its answer.

use bytes::Bytes;
use mitto_proto::{Headers, MsgKind};
use std::time::Duration;

/// Per-call options.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Deadline of this call (else the client's default).
    pub timeout: Option<Duration>,
    /// Extra headers.
    pub headers: Option<Headers>,
    /// Whether the call may run twice: then it is retried after a lost connection.
    pub idempotent: bool,
    /// Sends the call URGENT (overtakes queued normal frames).
    pub urgent: bool,
    /// Message kind.
    pub kind: MsgKind,
}

impl CallOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the deadline.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Sets the headers.
    pub fn headers(mut self, h: Headers) -> Self {
        self.headers = Some(h);
        self
    }
    /// Marks the call idempotent.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }
    /// Marks the call URGENT.
    pub fn urgent(mut self) -> Self {
        self.urgent = true;
        self
    }
}

/// A unary call on its way through client middleware.
#[derive(Clone, Debug)]
pub struct OutgoingCall {
    /// The method (subject).
    pub method: String,
    /// Per-call options (headers included).
    pub options: CallOptions,
    /// The request payload.
    pub payload: Bytes,
}

/// A successful answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Response headers.
    pub headers: Headers,
    /// Response payload.
    pub payload: Bytes,
}
