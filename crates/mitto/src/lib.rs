//! mitto's runtime on tokio: transports chosen by URL, one driver task per connection over the
//! sans-IO [`mitto_proto`] core, and RPC with multiplexing, deadlines, cancellation and
//! streaming.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mitto::Result<()> {
//! use mitto::{Client, ClientOptions, Server};
//!
//! let server = Server::new()
//!     .route_typed("calc.add", |(a, b): (i64, i64)| async move { Ok(a + b) })
//!     .bind("mem://calc-doc")
//!     .await?;
//! let client = Client::connect(server.local_url(), ClientOptions::new()).await?;
//! let sum: i64 = client.call_typed("calc.add", &(2, 3)).await?;
//! assert_eq!(sum, 5);
//! client.close().await;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The same code runs over `tcp://host:port`, `unix:///path` and `tls://host:port`: only the
//! URL changes.

#![forbid(unsafe_code)]

mod busy_poll;
mod calls;
mod client;
mod codec;
pub mod conn;
mod deadlines;
mod error;
pub mod handshake;
mod inbox;
pub mod local;
mod pubsub;
mod queue;
mod server;
pub mod transport;
mod typed;

pub use busy_poll::BusyPoll;
pub use client::{
    Call, CallOptions, CallWith, Client, ClientMiddleware, ClientNext, ClientOptions, OutgoingCall,
    PendingReply, Pool, Reply, RequestSink, ResponseStream,
};
pub use codec::{decode_proto, encode_proto, Codec, OCTET_STREAM, PROTOBUF};
pub use conn::DEFAULT_SPIN;
pub use error::{Error, Result};
pub use mitto_proto as proto;
pub use mitto_proto::SubscribeOptions;
pub use mitto_proto::{
    Headers, HealthReport, HealthState, MsgKind, StatsReport, Status, WellKnown,
};
pub use pubsub::{
    Delivery, Message, Policy, Publish, PublishOptions, Subscription, DEFAULT_SUBSCRIPTION_CREDIT,
};
pub use server::{
    Middleware, Next, PeerInfo, Request, RequestStream, Response, RunningServer, Server,
    ServerOptions, StreamSender,
};
pub use transport::{TlsClientConfig, TlsServerConfig};
pub use typed::{Event, TypedSubscription};

/// Stream items each side may send on a streaming call before the receiver grants more with
/// CREDIT frames (see `spec/PROTOCOL.md`).
pub const INITIAL_STREAM_CREDIT: u32 = 64;
