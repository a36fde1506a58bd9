//! mitto's runtime on tokio: clients and servers of one binary protocol, for programs that talk
//! within a process, across processes and across machines.
//!
//! - **Publish/subscribe** through a broker: subjects with `*` and `>` wildcards, queue groups
//!   that share the work, acknowledged delivery ([`Client::publish`], [`Client::subscribe`],
//!   [`Client::queue_subscribe`]).
//! - **Request/reply** through a broker: a request goes to one subscriber, which answers it
//!   ([`Client::request`], [`Client::respond`]).
//! - **Services (RPC)**: a [`Server`] runs handlers by method name, with deadlines,
//!   cancellation, streaming, headers and middleware; clients reach it directly
//!   ([`Server::bind`]) or through a broker ([`Server::attach`]) with [`Client::call`].
//! - **Typed values**: [`Client::publish_typed`], [`Client::subscribe_typed`],
//!   [`Client::call_typed`] and [`Server::route_typed`] carry serde values (within a process,
//!   the value itself, never encoded); **durable streams** are in [`streams`].
//!
//! The broker is the `mitto server` command (crate `mitto-cli`) or, embedded in a program,
//! `mitto_broker::Broker` (crate `mitto-broker`). The examples below embed one in the process.
//!
//! # Publish and subscribe
//!
//! A subject is made of tokens separated by dots. A filter's `*` matches one token, `>` the
//! rest of the subject. Every subscription whose filter matches gets the message, except that
//! the members of one queue group share it: one member gets each message.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mitto::Result<()> {
//! # let cfg = mitto_broker::BrokerConfig {
//! #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
//! # };
//! # let broker = mitto_broker::Broker::start(cfg).await?;
//! use mitto::{Client, ClientOptions};
//!
//! let client = Client::connect("inproc://app", ClientOptions::new()).await?;
//! let mut all = client.subscribe("orders.>").await?;
//! let mut created = client.subscribe("orders.*.created").await?;
//! let mut worker = client.queue_subscribe("orders.>", "billing").await?;
//!
//! client.publish("orders.eu.created", "#1").await?;
//! assert_eq!(all.next().await.unwrap().payload(), "#1");
//! assert_eq!(created.next().await.unwrap().subject(), "orders.eu.created");
//! assert_eq!(worker.next().await.unwrap().payload(), "#1"); // one member of "billing"
//! # broker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Request and reply
//!
//! A request goes through the broker to one subscriber of its subject, which answers with
//! [`Client::respond`]. With nobody subscribed, it fails at once with NO_RESPONDERS.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mitto::Result<()> {
//! # let cfg = mitto_broker::BrokerConfig {
//! #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
//! # };
//! # let broker = mitto_broker::Broker::start(cfg).await?;
//! use mitto::{Client, ClientOptions, Status};
//!
//! let client = Client::connect("inproc://app", ClientOptions::new()).await?;
//! let mut requests = client.subscribe("svc.upper").await?;
//! let responder = client.clone();
//! tokio::spawn(async move {
//!     while let Some(req) = requests.next().await {
//!         let text = String::from_utf8_lossy(req.payload()).to_uppercase();
//!         let _ = responder.respond(&req, text).await;
//!     }
//! });
//! assert_eq!(client.request("svc.upper", "hello").await?, "HELLO");
//! let err = client.request("svc.nobody", "hello").await.unwrap_err();
//! assert_eq!(err.status(), Status::NO_RESPONDERS);
//! # broker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Services: calls with deadlines and cancellation
//!
//! A [`Server`] routes each method to a handler; [`Client::call`] calls it. Every call carries
//! a deadline (the client's timeout, or [`CallOptions::timeout`]): the handler sees it
//! ([`Request::deadline`]), the server stops the handler when it passes, and the caller gets
//! TIMEOUT. Dropping a call's future cancels it: the server drops the handler's future.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mitto::Result<()> {
//! use mitto::{CallOptions, Client, ClientOptions, Request, Server};
//! use std::time::Duration;
//!
//! let server = Server::new()
//!     .route("echo", |req: Request| async move { Ok(req.payload().clone()) })
//!     .route("slow", |_req: Request| async move {
//!         tokio::time::sleep(Duration::from_secs(60)).await;
//!         Ok("late")
//!     })
//!     .bind("mem://services")
//!     .await?;
//! let client = Client::connect(server.local_url(), ClientOptions::new()).await?;
//! assert_eq!(client.call("echo", "hi").await?, "hi");
//!
//! let quick = CallOptions::new().timeout(Duration::from_millis(50));
//! assert!(client.call_with("slow", "", quick).await.unwrap_err().is_timeout());
//!
//! // Giving up on a call (here with a timeout of our own) drops it: the server is told.
//! let gave_up = tokio::time::timeout(Duration::from_millis(50), client.call("slow", "")).await;
//! assert!(gave_up.is_err());
//! # server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Calls carry [`Headers`] both ways ([`CallOptions::headers`], [`Request::headers`],
//! [`Response::with_headers`]), and a [`Middleware`] wraps every call of a server (auth checks,
//! logging, metrics). A server attached to a broker ([`Server::attach`]) serves its methods as
//! broker subjects: callers need only the broker's URL, and instances share the calls.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mitto::Result<()> {
//! # let cfg = mitto_broker::BrokerConfig {
//! #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
//! # };
//! # let broker = mitto_broker::Broker::start(cfg).await?;
//! use futures_util::future::BoxFuture;
//! use mitto::{Client, ClientOptions, Error, Middleware, Next, Request, Response, Result};
//! use mitto::{Server, Status};
//!
//! /// Refuses calls without an `authorization` header.
//! struct NeedsAuth;
//! impl Middleware for NeedsAuth {
//!     fn call<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Result<Response>> {
//!         match req.headers().get_custom("authorization") {
//!             Some(_) => next.run(req),
//!             None => Box::pin(async { Err(Error::new(Status::UNAUTHORIZED, "no credentials")) }),
//!         }
//!     }
//! }
//!
//! let service = Server::new()
//!     .middleware(NeedsAuth)
//!     .route("svc.time", |_req: Request| async move { Ok("noon") })
//!     .attach("inproc://app", ClientOptions::new())
//!     .await?;
//! let client = Client::connect("inproc://app", ClientOptions::new()).await?;
//! let err = client.call("svc.time", "").await.unwrap_err();
//! assert_eq!(err.status(), Status::UNAUTHORIZED);
//! # service.shutdown().await;
//! # broker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # URLs: in the process or over the network
//!
//! Clients, servers and the broker take the same URLs, and the code around them does not
//! change with the transport:
//!
//! | URL | transport |
//! |---|---|
//! | `mem://name`, `inproc://name` | in this process: no socket, frames handed over by reference (to a broker in the process, typed values are not even encoded) |
//! | `tcp://host:port` (or `host:port`) | TCP |
//! | `unix:///path/to/socket` | Unix domain socket |
//! | `tls://host:port` | TLS over TCP ([`ClientOptions::tls`], [`ServerOptions::tls`]) |
//! | `ws://host:port/path`, `wss://host:port/path` | WebSocket, plain or over TLS (browsers) |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mitto::Result<()> {
//! use mitto::{Client, ClientOptions, Server};
//!
//! let server = Server::new()
//!     .route_typed("calc.add", |(a, b): (i64, i64)| async move { Ok(a + b) })
//!     .bind("mem://calc")
//!     .await?
//!     .listen("tcp://127.0.0.1:0") // port 0: any free port; urls() has the real one
//!     .await?;
//! for url in server.urls() {
//!     let client = Client::connect(url, ClientOptions::new()).await?;
//!     let sum: i64 = client.call_typed("calc.add", (2, 3)).await?;
//!     assert_eq!(sum, 5);
//!     client.close().await;
//! }
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Losing the connection
//!
//! A client whose connection is lost reconnects with backoff ([`ClientOptions::backoff`]) and
//! makes its subscriptions again; calls made meanwhile wait for the new connection within their
//! deadline. By default it tries forever. [`ClientOptions::max_reconnects`] bounds the failed
//! attempts in a row and [`ClientOptions::reconnect`]`(false)` makes none: the client is then
//! closed for good when the limit is reached, as after [`Client::close`]. Its calls fail with
//! UNAVAILABLE and an [`Error::close_reason`] ([`CloseReason`]), its subscriptions end after
//! what they already received, and [`Client::closed`] returns the error.

#![forbid(unsafe_code)]

mod busy_poll;
mod client;
mod codec;
mod conn;
mod deadlines;
mod error;
mod handshake;
mod lane;
mod local;
mod options;
mod outbox;
mod server;
pub mod streams;
mod transport;

/// Runtime plumbing the broker builds on (the connection driver, the handshake, the in-process
/// port, the transports). Public only so that `mitto-broker` can use it: not part of mitto's
/// API, and no semver promise.
#[doc(hidden)]
pub mod __private {
    /// The connection driver.
    pub mod conn {
        pub use crate::conn::*;
    }
    /// HELLO, both sides.
    pub mod handshake {
        pub use crate::handshake::*;
    }
    /// The in-process port of a server in this process.
    pub mod local {
        pub use crate::local::*;
    }
    /// Transports chosen by URL.
    pub mod transport {
        pub use crate::transport::*;
    }
}

pub use busy_poll::BusyPoll;
pub use client::{
    Call, CallOptions, CallWith, Client, ClientMiddleware, ClientNext, ClientOptions, Delivery,
    Event, Message, OutgoingCall, PendingReply, Policy, Pool, Publish, PublishOptions, Reply,
    RequestSink, ResponseStream, Subscription, TypedSubscription, DEFAULT_SUBSCRIPTION_CREDIT,
};
pub use codec::{decode_proto, encode_proto, Codec, OCTET_STREAM, PROTOBUF};
pub use conn::DEFAULT_SPIN;
pub use error::{CloseReason, Error, Result};
/// The boxed future [`Middleware`] and [`ClientMiddleware`] return (`futures`' `BoxFuture`).
pub use futures_util::future::BoxFuture;
pub use mitto_proto as proto;
pub use mitto_proto::SubscribeOptions;
pub use mitto_proto::{
    HeaderKey, Headers, HeadersBuilder, HealthReport, HealthState, MsgKind, StatsReport, Status,
    WellKnown,
};
pub use server::{
    Middleware, Next, PeerInfo, Request, RequestStream, Response, RunningServer, Server,
    ServerOptions, StreamSender, TypedRequest,
};
pub use transport::{TlsClientConfig, TlsServerConfig};

/// Stream items each side may send on a streaming call before the receiver grants more with
/// CREDIT frames (see `spec/PROTOCOL.md`).
pub const INITIAL_STREAM_CREDIT: u32 = 64;
