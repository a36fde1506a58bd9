//! The operations of this side awaiting an answer, and the one allocator of their ids.
//!
//! A client's id names its operation's slot in the table in its low 20 bits (finding an
//! answer's operation costs no hashing); the bits above count the ids given so far, so that no
//! id is ever given twice in the connection's life, even when its slot is (a late answer to an
//! operation that ended never reaches the slot's next one). A server's ids are bit 63 and 63
//! bits from a cryptographic random generator, drawn afresh for each operation and redrawn if
//! one in flight has it, so that its peer learns nothing from them about the server's other
//! calls (spec section 10.1); they are found through a map.

use super::error::CommandError;
use super::outbound::Pos;
use super::streams::{Recv, Send};
use crate::header::FrameType;
use rustc_hash::FxHashMap;
use std::time::Instant;

const SLOT_BITS: u32 = 20;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// The slot number of ids given to frames that await no answer (UNSUBSCRIBE, UNREGISTER).
const NO_SLOT: u64 = SLOT_MASK;
/// Set on the ids of operations the accepting side opens.
const SERVER_BIT: u64 = 1 << 63;
/// Ids a connection gives in its life, at most.
const MAX_IDS: u64 = 1 << (63 - SLOT_BITS);
/// Operations awaiting answers at once, at most.
pub(crate) const MAX_SLOTS: usize = NO_SLOT as usize;

/// The shape of a call (spec section 10.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Shape {
    /// One request, one response.
    #[default]
    Unary,
    /// One request, a stream of response items, then the response.
    ServerStream,
    /// A stream of request items (REQUEST with START), then one response.
    ClientStream,
    /// Both directions stream.
    Bidi,
}

impl Shape {
    /// Whether the caller streams (the REQUEST carries START).
    pub fn client_streams(self) -> bool {
        matches!(self, Shape::ClientStream | Shape::Bidi)
    }

    /// Whether the callee streams.
    pub fn server_streams(self) -> bool {
        matches!(self, Shape::ServerStream | Shape::Bidi)
    }
}

/// A call of this side in flight.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) urgent: bool,
    /// Where its REQUEST was queued.
    pub(crate) request: Pos,
    pub(crate) send: Send,
    pub(crate) recv: Recv,
}

/// What an operation awaits.
#[derive(Debug)]
pub(crate) enum Kind {
    /// A RESPONSE.
    Call(Call),
    /// The ACK of a PUBLISH.
    Publish,
    /// The ACK of a SUBSCRIBE of this subscription.
    Subscribe(u32),
    /// The ACK of a REGISTER of this instance.
    Register(u32),
    /// The REPLY to a HEALTH or STATS query.
    Query(FrameType),
}

/// One operation.
pub(crate) struct Op<C> {
    pub(crate) id: u64,
    /// What the application attached; `None` for operations the connection starts itself
    /// (the subscriptions it makes again after a reconnect).
    pub(crate) ctx: Option<C>,
    pub(crate) kind: Kind,
    pub(crate) deadline: Option<Instant>,
}

/// The table.
pub(crate) struct Ops<C> {
    slots: Vec<Option<Op<C>>>,
    free: Vec<u32>,
    /// Ids given so far.
    given: u64,
    /// A server's random ids, to their slots (`None` for a client).
    random: Option<FxHashMap<u64, u32>>,
    live: usize,
}

impl<C> Ops<C> {
    pub(crate) fn new(server: bool) -> Ops<C> {
        Ops {
            slots: Vec::new(),
            free: Vec::new(),
            given: 0,
            random: server.then(FxHashMap::default),
            live: 0,
        }
    }

    fn id(&mut self, slot: u64) -> Result<u64, CommandError> {
        if let Some(index) = &self.random {
            loop {
                let id = SERVER_BIT | rand::random::<u64>() >> 1;
                if !index.contains_key(&id) {
                    return Ok(id);
                }
            }
        }
        if self.given + 1 >= MAX_IDS {
            return Err(CommandError::TooManyPending);
        }
        self.given += 1;
        Ok(self.given << SLOT_BITS | slot)
    }

    /// A fresh id for a frame no answer is awaited for.
    pub(crate) fn bare_id(&mut self) -> Result<u64, CommandError> {
        self.id(NO_SLOT)
    }

    /// Adds an operation (at most `max` at once); its id.
    pub(crate) fn insert(
        &mut self,
        max: usize,
        ctx: Option<C>,
        kind: Kind,
        deadline: Option<Instant>,
    ) -> Result<u64, CommandError> {
        if self.live >= max.min(MAX_SLOTS) {
            return Err(CommandError::TooManyPending);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let id = match self.id(slot.into()) {
            Ok(id) => id,
            Err(e) => {
                self.free.push(slot);
                return Err(e);
            }
        };
        if let Some(index) = &mut self.random {
            index.insert(id, slot);
        }
        self.slots[slot as usize] = Some(Op {
            id,
            ctx,
            kind,
            deadline,
        });
        self.live += 1;
        Ok(id)
    }

    /// The slot `id` names, whether or not it holds that operation.
    fn slot(&self, id: u64) -> Option<usize> {
        match &self.random {
            None => Some((id & SLOT_MASK) as usize),
            Some(index) => index.get(&id).map(|s| *s as usize),
        }
    }

    /// Operation `id`, if it awaits its answer.
    pub(crate) fn get(&self, id: u64) -> Option<&Op<C>> {
        self.slots
            .get(self.slot(id)?)?
            .as_ref()
            .filter(|o| o.id == id)
    }

    /// Operation `id`, if it awaits its answer.
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Op<C>> {
        let slot = self.slot(id)?;
        self.slots.get_mut(slot)?.as_mut().filter(|o| o.id == id)
    }

    /// Takes operation `id` out (it got its answer).
    pub(crate) fn remove(&mut self, id: u64) -> Option<Op<C>> {
        let slot = self.slot(id)?;
        let e = self.slots.get_mut(slot)?;
        if e.as_ref().is_none_or(|o| o.id != id) {
            return None;
        }
        if let Some(index) = &mut self.random {
            index.remove(&id);
        }
        self.free.push(slot as u32);
        self.live -= 1;
        e.take()
    }

    /// Takes every operation out.
    pub(crate) fn drain(&mut self) -> Vec<Op<C>> {
        self.free.clear();
        self.live = 0;
        if let Some(index) = &mut self.random {
            index.clear();
        }
        let ops: Vec<Op<C>> = self.slots.drain(..).flatten().collect();
        ops
    }

    /// The ids of the operations awaiting answers.
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.slots.iter().flatten().map(|o| o.id).collect()
    }

    /// Operations awaiting answers.
    pub(crate) fn len(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_never_given_twice_and_name_their_slot() {
        let mut ops = Ops::<()>::new(false);
        let mut seen = HashSet::new();
        let mut live = Vec::new();
        for i in 0..200_000u64 {
            let id = ops.insert(usize::MAX, None, Kind::Publish, None).unwrap();
            assert!(seen.insert(id), "id {id} given twice");
            assert_eq!(id >> 63, 0, "the connecting side's ids have bit 63 clear");
            assert!(ops.get(id).is_some());
            live.push(id);
            if i % 3 != 0 {
                let done = live.swap_remove((i as usize * 7) % live.len());
                assert!(ops.remove(done).is_some());
                assert!(ops.get(done).is_none(), "an ended id finds nothing");
            }
        }
        assert!(ops.slots.len() < 100_000, "slots are reused");
        let bare = ops.bare_id().unwrap();
        assert!(ops.get(bare).is_none() && seen.insert(bare));
        let mut server = Ops::<()>::new(true);
        assert_eq!(
            server.insert(1, None, Kind::Publish, None).unwrap() >> 63,
            1
        );
        assert_eq!(
            server.insert(1, None, Kind::Publish, None),
            Err(CommandError::TooManyPending)
        );
    }

    #[test]
    fn a_servers_ids_are_random_and_still_find_their_operations() {
        let mut ops = Ops::<u32>::new(true);
        let ids: Vec<u64> = (0..1000)
            .map(|i| {
                ops.insert(usize::MAX, Some(i), Kind::Publish, None)
                    .unwrap()
            })
            .collect();
        assert!(ids.iter().all(|id| id >> 63 == 1));
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000);
        // Nothing of a counter or a slot number shows: about half of each bit below 63 is set.
        for bit in 0..63 {
            let ones = ids.iter().filter(|id| *id >> bit & 1 == 1).count();
            assert!((350..650).contains(&ones), "bit {bit}: {ones} of 1000");
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(ops.get(*id).and_then(|o| o.ctx), Some(i as u32));
        }
        let gone = ops.remove(ids[7]).unwrap();
        assert_eq!(gone.ctx, Some(7));
        assert!(ops.get(ids[7]).is_none() && ops.remove(ids[7]).is_none());
        assert!(ops.get(ids[7] ^ 1).is_none(), "a guessed id finds nothing");
    }
}
