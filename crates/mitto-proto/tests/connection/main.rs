//! The connection state machine, driven deterministically: two [`Connection`]s back to back
//! (or one fed raw bytes), virtual time, no sockets, no sleeps.
//!
//! [`Connection`]: mitto_proto::connection::Connection
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod pair;

mod calls;
mod cancel;
mod close;
mod deadlines;
mod errors;
mod handshake;
mod keepalive;
mod ordering;
mod props;
mod pubsub;
mod robust;
mod session;
mod streams;
