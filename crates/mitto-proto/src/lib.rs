//! The sans-IO core of the mitto protocol.
//!
//! This crate turns bytes into [`Frame`]s and frames into bytes. It holds the fixed 32-byte
//! [`Header`], the frame types, flags and message kinds, the key/value [`Headers`] block with
//! compact ids for well-known keys, [`Subject`]s with `*` and `>` wildcards, [`Status`] codes,
//! HELLO [negotiation](negotiate), the control-frame [bodies](body), LZ4 payload compression, and a
//! streaming [`Decoder`] that checks every declared length against the configured [`Limits`]
//! before it allocates and hands out payloads as [`bytes::Bytes`] slices without copying. Above
//! them, [`connection::Connection`] is the state machine of one end of a connection: the
//! handshake, calls and streams with their ids, deadlines and credit, subscriptions, the
//! session, keepalive, close, and one ordered outbound queue.
//!
//! It does no I/O and reads no clock: the `mitto` runtime drives it over sockets, and tests drive
//! it over plain buffers. The wire format is specified in `spec/PROTOCOL.md`; the conformance
//! vectors in `spec/vectors/` are read by this crate's tests and by the other languages' clients.
//!
//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use mitto_proto::{Decoder, Frame, FrameType, Headers, Status, Subject, WellKnown};
//!
//! // Batch two frames into one buffer (one write on a socket).
//! let mut out = BytesMut::new();
//! let headers = Headers::builder().insert(WellKnown::ContentType, "text/plain")?.build();
//! Frame::publish(Subject::literal("demo.hello")?, "hi")
//!     .with_headers(headers)
//!     .encode(&mut out)?;
//! Frame::response(7, Status::OK, "done").encode(&mut out)?;
//!
//! // Decode them back as the bytes arrive.
//! let mut dec = Decoder::default();
//! let a = dec.decode(&mut out)?.unwrap();
//! let b = dec.decode(&mut out)?.unwrap();
//! assert_eq!(a.headers.content_type(), Some("text/plain"));
//! assert_eq!((b.frame_type, b.id, b.status), (FrameType::Response, 7, Status::OK));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Optional features
//!
//! - `lz4` (default): LZ4 compression of payloads, advertised as
//!   [`Features::COMPRESSION_LZ4`](negotiate::Features::COMPRESSION_LZ4).
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod body;
mod codec;
pub mod compress;
pub mod connection;
mod error;
mod fit;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod header;
pub mod headers;
pub mod local;
pub mod negotiate;
mod status;
pub mod subject;
mod version;

pub use body::{
    Delivery, HealthReport, HealthState, Hello, SlowConsumerPolicy, StatsReport, SubscribeOptions,
};
pub use codec::Decoder;
pub use error::{DecodeError, DecodeErrorKind, EncodeError};
pub use frame::{Frame, FrameRef};
pub use header::{
    Flags, FrameType, Header, MsgKind, HEADER_LEN, MAGIC, VERSION_MAJOR, VERSION_MINOR,
};
pub use headers::{HeaderKey, Headers, HeadersBuilder, WellKnown};
pub use negotiate::{Features, Limits, Negotiated, Version};
pub use status::Status;
pub use subject::Subject;
