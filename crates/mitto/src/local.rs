//! The in-process side of mitto: what a server running in this process (the broker, embedded)
//! offers clients attached to it over an in-process link, and typed values that travel without
//! being serialized.
//!
//! A `mem://` or `inproc://` connection is a `Link` (in the transport module): frames move
//! between the two tasks by reference, never encoded. A server may also hand the client a
//! [`LocalPort`] during the handshake; the client then publishes by routing in its own task and
//! reads its subscriptions straight from the server's queues, with no connection task in
//! between. Acknowledgements of several deliveries at once ([`Subscription::ack_all`]) go to
//! that queue directly too. Everything else (requests, services, single acknowledgements) still
//! goes through the link as frames, so the semantics are those of the broker whatever the
//! transport.
//!
//! [`Subscription::ack_all`]: crate::Subscription::ack_all

use crate::codec::Codec;
use crate::error::Result;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use mitto_proto::local::LocalPayload;
use mitto_proto::Frame;
use std::any::Any;
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
    /// Acknowledges deliveries `ids` of this subscription at once, exactly as an ACK frame for
    /// each would (one that matches nothing pending is ignored).
    fn ack(&self, ids: &[u64]);
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

/// The value attached to a frame, if it is a `T` (no decoding): `None` when no value is
/// attached or it is of another type.
pub(crate) fn take_typed<T: Send + Sync + 'static>(
    a: Option<&mitto_proto::local::Attachment>,
) -> Option<Arc<T>> {
    a?.0.as_any()
        .downcast_ref::<Typed<T>>()
        .map(|t| t.value.clone())
}
