//! A message delivered to a subscription, and the options of a publish.

use crate::codec::Codec;
use crate::error::{Error, Result};
use bytes::Bytes;
use mitto_proto::local::Attachment;
use mitto_proto::{Flags, Frame, Headers, MsgKind, Subject};
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use mitto_proto::{Delivery, SlowConsumerPolicy as Policy};

/// Messages a subscription may have in flight to this client before it grants more credit.
pub const DEFAULT_SUBSCRIPTION_CREDIT: u32 = 65_536;

/// One message delivered to a subscription.
#[derive(Clone)]
pub struct Message {
    subject: Subject,
    headers: Headers,
    payload: Bytes,
    kind: MsgKind,
    flags: Flags,
    pub(super) sid: u32,
    pub(super) delivery: u64,
    /// The publisher's value, when it was published typed in this process (it keeps its
    /// encoded form once made, for [`Message::payload`]).
    value: Option<Attachment>,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("subject", &self.subject.as_str())
            .field("payload_len", &self.payload.len())
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Message {
    pub(crate) fn from_event(f: Frame) -> Message {
        Message {
            subject: f.subject,
            headers: f.headers,
            payload: f.payload,
            kind: f.kind,
            flags: f.flags,
            sid: f.aux,
            delivery: f.id,
            value: f.value,
        }
    }
    /// The subject it was published to.
    pub fn subject(&self) -> &str {
        self.subject.as_str()
    }
    /// Its headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// Its payload. For a value published typed in this process, its encoding with the
    /// publisher's codec, made on first use and shared with every other receiver.
    pub fn payload(&self) -> &Bytes {
        static NONE: Bytes = Bytes::new();
        match &self.value {
            Some(v) if self.payload.is_empty() => v.0.encoded().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot encode a published value");
                &NONE
            }),
            _ => &self.payload,
        }
    }

    /// The value itself when the message was published typed in this process as a `T`
    /// (no decoding); `None` otherwise (decode [`Message::payload`] instead).
    pub fn value<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        crate::local::take_typed::<T>(self.value.as_ref())
    }

    /// The value as a `T`, as a subscriber over a socket would read it: the payload decoded
    /// with the codec its `content-type` names (or `codec` when it names none). A value
    /// published typed in this process as a `T` is handed over as it is, never serialized; one
    /// of another type is encoded with the publisher's codec and decoded as a `T`. A message
    /// that does not decode as a `T` is a BAD_REQUEST error naming the subject and `T`.
    pub fn decode<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        codec: Codec,
    ) -> Result<Arc<T>> {
        if let Some(v) = crate::local::take_typed::<T>(self.value.as_ref()) {
            return Ok(v);
        }
        let not_a_t = |why: &str| {
            Error::new(
                mitto_proto::Status::BAD_REQUEST,
                format!(
                    "{} does not carry a {}: {why}",
                    self.subject(),
                    std::any::type_name::<T>()
                ),
            )
        };
        let payload = match &self.value {
            Some(v) if self.payload.is_empty() => v.0.encoded().map_err(not_a_t)?,
            _ => &self.payload,
        };
        let codec = match self.headers.content_type() {
            Some(ct) => Codec::from_content_type(Some(ct)).map_err(|e| not_a_t(e.message()))?,
            None => codec,
        };
        codec
            .decode::<T>(payload)
            .map(Arc::new)
            .map_err(|e| not_a_t(e.message()))
    }
    /// Its message kind.
    pub fn kind(&self) -> MsgKind {
        self.kind
    }
    /// Whether it was published URGENT.
    pub fn is_urgent(&self) -> bool {
        self.flags.contains(Flags::URGENT)
    }
    /// Whether the broker waits for an ACK of it (at-least-once subscriptions).
    pub fn needs_ack(&self) -> bool {
        self.flags.contains(Flags::ACK_REQUIRED)
    }
    /// Where a reply goes, for requests.
    pub fn reply_to(&self) -> Option<&str> {
        self.headers.reply_to()
    }
    /// How many times the broker has delivered this message to the subscription, this delivery
    /// included: 1 the first time, more when it comes again (an at-least-once message not
    /// acknowledged in time or NACKed, or one returned by a subscriber that went away).
    pub fn delivery_count(&self) -> u32 {
        self.headers.delivery_count().unwrap_or(1).max(1)
    }
    /// Whether the broker delivered this message before (see [`Message::delivery_count`]).
    pub fn is_redelivered(&self) -> bool {
        self.delivery_count() > 1
    }
}

/// Options of one publish.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// Headers to send.
    pub headers: Option<Headers>,
    /// Message kind.
    pub kind: MsgKind,
    /// Overtakes normal messages in every queue.
    pub urgent: bool,
    /// Waits for the broker's ACK: the publish returns once the broker accepted the message, or
    /// fails with the broker's reason (BACKPRESSURE_REJECTION, FORBIDDEN, ...).
    pub ack: bool,
    /// How long to wait for the ACK (else the client's default timeout).
    pub timeout: Option<Duration>,
}

impl PublishOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the headers.
    pub fn headers(mut self, h: Headers) -> Self {
        self.headers = Some(h);
        self
    }
    /// Sets the kind.
    pub fn kind(mut self, k: MsgKind) -> Self {
        self.kind = k;
        self
    }
    /// Marks the message URGENT.
    pub fn urgent(mut self) -> Self {
        self.urgent = true;
        self
    }
    /// Asks for the broker's ACK.
    pub fn ack(mut self) -> Self {
        self.ack = true;
        self
    }
}
