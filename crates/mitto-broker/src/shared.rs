//! Types every part of the broker speaks in, with no dependency on any of them (the leaf of
//! the module graph drawn in `lib.rs`).

use tokio::sync::mpsc;

/// Commands a connection's driver takes besides frames.
#[derive(Debug)]
pub(crate) enum BrokerCmd {
    /// The mailbox has something to send.
    Wake,
    /// Shutdown: send what is queued (and wait for the acknowledgements of at-least-once
    /// deliveries), then close.
    Drain,
    /// Shutdown: the drain time ran out; close now, saying what was not delivered.
    DrainDeadline,
    /// A new connection took this connection's session over: hand it over and close.
    TakenOver,
    /// Close with this status and reason.
    Close(mitto::proto::Status, &'static str),
}

/// Wakes a connection's driver (its control queue).
pub(crate) type Waker = mpsc::UnboundedSender<BrokerCmd>;
