//! Commands from a call's handler (and from shutdown) to its connection's driver.

use mitto_proto::Frame;

/// A command for a connection's driver.
pub(crate) enum Cmd {
    /// A stream item from a handler (dropped if the call has ended).
    Item(Frame),
    /// The end of a streaming call: its RESPONSE, behind its items.
    Finish(u64, Frame),
    /// A frame to send as is (credit grants).
    Out(Frame),
    /// Shutdown: refuse new calls, close once the calls in flight are done.
    Drain,
    /// Shutdown timed out: abort what is left and close.
    Abort,
}
