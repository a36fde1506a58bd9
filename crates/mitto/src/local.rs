//! The in-process side of mitto: what a server running in this process (the broker, embedded)
//! offers clients attached to it over an in-process link, and typed values that travel without
//! being serialized.
//!
//! A `mem://` or `inproc://` connection is a [`Link`](crate::transport::Link): frames move
//! between the two tasks by reference, never encoded. A server may also hand the client a
//! [`LocalPort`] during the handshake; the client then publishes by routing in its own task and
//! reads its subscriptions straight from the server's queues, with no connection task in
//! between. Everything else (requests, services, acknowledgements) still goes through the link
//! as frames, so the semantics are those of the broker whatever the transport.

use crate::codec::Codec;
use crate::error::{Error, Result};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use mitto_proto::local::LocalPayload;
use mitto_proto::Frame;
use std::any::{Any, TypeId};
use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// What routing a publish did.
pub enum Published {
    /// Delivered (or dropped under the subscribers' policies), nothing left to do.
    Done,
    /// Some subscribers block publishers while their queue is full: await this to finish the
    /// delivery to them.
    Blocked(BoxFuture<'static, Result<()>>),
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Published::Done => "Done",
            Published::Blocked(_) => "Blocked",
        })
    }
}

/// A server's direct entry points for one in-process connection.
pub trait LocalPort: Send + Sync + 'static {
    /// Routes a PUBLISH now, in the caller's task, with the same checks (permissions, limits)
    /// and the same slow-consumer policies as a PUBLISH frame from a socket.
    fn publish(&self, f: Frame) -> Result<Published>;
    /// The queue of subscription `sid` of this connection, once the server confirmed it.
    fn subscription(&self, sid: u32) -> Option<Arc<dyn LocalQueue>>;
    /// Declares that `filter` carries values of Rust type `ty` (named `name`). Fails with
    /// TYPE_MISMATCH when a subject the filter can match already carries another type.
    fn bind_type(&self, filter: &str, ty: TypeId, name: &'static str) -> Result<()>;
}

/// A subscription's queue at an in-process server, read by the subscriber's own task.
pub trait LocalQueue: Send + Sync + 'static {
    /// Moves queued EVENT frames to `out`: up to `max`, or all of them at once where no
    /// per-message bookkeeping is needed (`out` is then swapped with the queue, so pass it
    /// empty). `Ready(true)`: some were moved;
    /// `Ready(false)`: the subscription has ended; `Pending`: nothing queued, `cx` is woken when
    /// something arrives.
    fn poll_batch(&self, cx: &mut Context<'_>, out: &mut VecDeque<Frame>, max: usize)
        -> Poll<bool>;
}

/// A Rust value published by reference; encoded with `codec` only if a remote receiver needs it.
pub(crate) struct Typed<T> {
    pub(crate) value: Arc<T>,
    codec: Codec,
    encoded: OnceLock<std::result::Result<Bytes, String>>,
}

impl<T: serde::Serialize + Send + Sync + 'static> Typed<T> {
    pub(crate) fn new(value: Arc<T>, codec: Codec) -> Typed<T> {
        Typed {
            value,
            codec,
            encoded: OnceLock::new(),
        }
    }
}

impl<T: serde::Serialize + Send + Sync + 'static> LocalPayload for Typed<T> {
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn encoded(&self) -> std::result::Result<&Bytes, &str> {
        self.encoded
            .get_or_init(|| {
                self.codec
                    .encode(&*self.value)
                    .map_err(|e| e.message().to_owned())
            })
            .as_ref()
            .map_err(String::as_str)
    }
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
}

/// The value attached to a frame, if it is a `T`: `Ok(None)` when no value is attached,
/// `Err` (BAD_REQUEST, naming both types) when it is another type.
pub(crate) fn take_typed<'s, T: Send + Sync + 'static>(
    a: Option<&mitto_proto::local::Attachment>,
    subject: impl FnOnce() -> &'s str,
) -> Result<Option<Arc<T>>> {
    let Some(a) = a else { return Ok(None) };
    if let Some(t) = a.0.as_any().downcast_ref::<Typed<T>>() {
        return Ok(Some(t.value.clone()));
    }
    // The subject is read (checked as text) only for the error.
    Err(type_mismatch(
        subject(),
        a.0.type_name(),
        std::any::type_name::<T>(),
    ))
}

/// The error of a value of type `got` reaching a place that expects `want`.
pub fn type_mismatch(subject: &str, got: &str, want: &str) -> Error {
    Error::new(
        mitto_proto::Status::BAD_REQUEST,
        format!("type mismatch: {subject} carries {got}, not {want}"),
    )
}
