//! Publish deduplication by message id (JetStream's `Nats-Msg-Id`): an append whose headers
//! carry `mitto-msg-id` with a value the stream stored within its duplicate window is answered
//! with the first one's sequence and not stored again, so a publisher may retry an append whose
//! answer it lost. The writer thread owns the table: no lock on the append path.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

/// The header naming a message for deduplication.
pub const MSG_ID_HEADER: &str = "mitto-msg-id";

/// Ids remembered per stream at most (about 48 bytes each): past it the oldest are forgotten
/// before their window ends, so a peer cannot grow the table without bound.
pub const MAX_MSG_IDS: usize = 65_536;

/// An id as remembered: a 128-bit hash of the header's value (a fixed size whatever the
/// publisher sent).
pub(crate) type MsgId = u128;

/// The message id in an encoded headers block, if any.
pub(crate) fn msg_id(headers: &Bytes) -> Option<MsgId> {
    if headers.is_empty() {
        return None;
    }
    let h = mitto_proto::Headers::from_wire(headers.clone()).ok()?;
    h.get_custom(MSG_ID_HEADER).map(xxhash_rust::xxh3::xxh3_128)
}

/// The ids stored within the window: id -> (sequence, timestamp), oldest first in `order`.
pub(crate) struct Dedup {
    window_ns: u64,
    ids: HashMap<MsgId, (u64, u64)>,
    order: VecDeque<(u64, MsgId)>,
}

impl Dedup {
    pub(crate) fn new(window: Duration) -> Self {
        Dedup {
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            ids: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.window_ns > 0
    }

    /// The sequence and timestamp of the append (stored or staged) with `id` within the window.
    pub(crate) fn find(&mut self, id: MsgId, now_ns: u64) -> Option<(u64, u64)> {
        let horizon = now_ns.saturating_sub(self.window_ns);
        while let Some(&(ts, old)) = self.order.front() {
            if ts >= horizon {
                break;
            }
            self.order.pop_front();
            if self.ids.get(&old).is_some_and(|&(_, t)| t == ts) {
                self.ids.remove(&old);
            }
        }
        self.ids.get(&id).copied()
    }

    /// Remembers an append that was staged with `id`.
    pub(crate) fn remember(&mut self, id: MsgId, seq: u64, ts: u64) {
        if !self.enabled() {
            return;
        }
        self.ids.insert(id, (seq, ts));
        self.order.push_back((ts, id));
        // Entries left behind by `forget_from` count against the bound too.
        while self.ids.len() > MAX_MSG_IDS || self.order.len() > 2 * MAX_MSG_IDS {
            let Some((ts, old)) = self.order.pop_front() else {
                break;
            };
            if self.ids.get(&old).is_some_and(|&(_, t)| t == ts) {
                self.ids.remove(&old);
            }
        }
    }

    /// Forgets the ids of appends from `seq` on (a batch that was not stored).
    pub(crate) fn forget_from(&mut self, seq: u64) {
        self.ids.retain(|_, &mut (s, _)| s < seq);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn id(s: &str) -> MsgId {
        xxhash_rust::xxh3::xxh3_128(s.as_bytes())
    }

    #[test]
    fn an_id_is_found_within_its_window_and_not_after() {
        let mut d = Dedup::new(Duration::from_secs(2));
        d.remember(id("a"), 1, 10 * S);
        assert_eq!(d.find(id("a"), 11 * S), Some((1, 10 * S)));
        assert_eq!(d.find(id("b"), 11 * S), None);
        assert_eq!(d.find(id("a"), 13 * S), None);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn a_batch_not_stored_is_forgotten() {
        let mut d = Dedup::new(Duration::from_secs(60));
        d.remember(id("a"), 1, S);
        d.remember(id("b"), 2, S);
        d.remember(id("c"), 3, S);
        d.forget_from(2);
        assert_eq!(d.find(id("a"), S), Some((1, S)));
        assert_eq!(d.find(id("b"), S), None);
        d.remember(id("b"), 2, S);
        assert_eq!(d.find(id("b"), S), Some((2, S)));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut d = Dedup::new(Duration::from_secs(3600));
        for i in 0..(MAX_MSG_IDS as u64 + 10) {
            d.remember(MsgId::from(i), i + 1, S + i);
        }
        assert_eq!(d.len(), MAX_MSG_IDS);
        assert_eq!(d.find(0, 2 * S), None, "the oldest went first");
        assert!(d.find(MAX_MSG_IDS as u128 + 9, 2 * S).is_some());
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let mut d = Dedup::new(Duration::ZERO);
        d.remember(id("a"), 1, S);
        assert_eq!(d.find(id("a"), S), None);
    }

    #[test]
    fn the_id_is_read_from_the_headers_block() {
        let h = mitto_proto::Headers::builder()
            .insert_custom(MSG_ID_HEADER, "order-7")
            .unwrap()
            .build();
        assert_eq!(msg_id(h.as_bytes()), Some(id("order-7")));
        assert_eq!(msg_id(&Bytes::new()), None);
        assert_eq!(msg_id(&Bytes::from_static(b"\xff\xff")), None);
    }
}
