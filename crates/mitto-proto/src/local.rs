//! A Rust value that travels with a frame inside one process.
//!
//! An in-process link moves frames by reference, so a publisher can attach the value itself
//! instead of its encoded payload: local receivers take the value (no serialization at all),
//! and the payload is encoded from it only when the frame has to reach a byte transport, once,
//! whatever the number of remote receivers. The attachment never goes on the wire.

use bytes::Bytes;
use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// What an attached value offers: its type for receivers, and its encoded payload for remote
/// ones (the implementation caches it, so it is computed at most once).
pub trait LocalPayload: Any + Send + Sync {
    /// The value's Rust type name, for error messages.
    fn type_name(&self) -> &'static str;
    /// The value encoded with its codec; computed on first use and kept with the value.
    fn encoded(&self) -> Result<&Bytes, &str>;
    /// The value as `Any`, for a typed receiver to downcast.
    fn as_any(&self) -> &(dyn Any + Send + Sync);
}

/// A shared attached value. Two attachments are equal when they are the same value.
///
/// One pointer wide (the value is boxed behind the `Arc`), so that a [`crate::Frame`] stays
/// within 128 bytes: frames are moved by value through every in-process hop, and moves up to
/// that size are inlined register copies where larger ones call `memcpy` (BENCHMARKS.md, the
/// in-process bus).
#[derive(Clone)]
pub struct Attachment(pub Arc<Box<dyn LocalPayload>>);

impl Attachment {
    /// Wraps a value.
    pub fn new(v: impl LocalPayload) -> Attachment {
        Attachment(Arc::new(Box::new(v)))
    }
}

impl PartialEq for Attachment {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.0), Arc::as_ptr(&other.0))
    }
}

impl Eq for Attachment {}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attachment({})", self.0.type_name())
    }
}
