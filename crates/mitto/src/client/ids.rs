//! The ids of the calls a client opens on one connection, all in one place. A client's ids
//! have bit 63 clear (PROTOCOL.md 10.1: the accepting side's have it set); below it, three
//! ranges that never meet:
//! - from 1, counted by the client: calls the driver keeps a slot for (streams, queries, calls
//!   through the command queue or the lane);
//! - from [`TABLE_IDS`]: unary calls through the call table, given under its lock (see
//!   [`super::calls`]);
//! - [`RESUBSCRIBE_IDS`] with a subscription's id: the SUBSCRIBE a reconnect makes again.

/// The first id of the calls started through a call table.
pub(crate) const TABLE_IDS: u64 = 1 << 61;
/// The bit of the ids of re-subscriptions.
pub(crate) const RESUBSCRIBE_IDS: u64 = 1 << 62;

/// The id of the SUBSCRIBE that makes subscription `sid` again on a new connection (one per
/// sid per connection, so the sid makes it unique).
pub(crate) fn resubscribe_id(sid: u32) -> u64 {
    RESUBSCRIBE_IDS | u64::from(sid)
}

/// Whether `id` is one the peer opened (bit 63 set): no call of this client has it.
pub(crate) fn opened_by_peer(id: u64) -> bool {
    id >> 63 == 1
}
