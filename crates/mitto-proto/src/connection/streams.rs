//! Stream flow control of one call, per direction (spec section 10.5): the credit this side
//! may spend sending items, and the window it granted the peer.

use super::config::INITIAL_STREAM_CREDIT;
use super::error::{Blocked, CommandError};

/// CREDIT is granted once the application has consumed this many items.
const GRANT_EVERY: u32 = INITIAL_STREAM_CREDIT / 2;

/// This side's sending direction of a call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Send {
    /// Items this side may still send.
    left: u32,
    /// A send was refused for lack of credit: the next grant is reported.
    blocked: bool,
    /// Open: this direction streams and has not ended.
    open: bool,
}

impl Send {
    /// A direction that streams (`open`) or not.
    pub(crate) fn new(open: bool) -> Send {
        Send {
            left: INITIAL_STREAM_CREDIT,
            blocked: false,
            open,
        }
    }

    /// Whether items may still be sent at all.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// Spends one credit for an item.
    pub(crate) fn spend(&mut self) -> Result<(), CommandError> {
        if !self.open {
            return Err(CommandError::NoStream);
        }
        if self.left == 0 {
            self.blocked = true;
            return Err(CommandError::WouldBlock(Blocked::Credit));
        }
        self.left -= 1;
        Ok(())
    }

    /// Ends the direction (END sent); END itself needs no credit.
    pub(crate) fn end(&mut self) -> Result<(), CommandError> {
        if !self.open {
            return Err(CommandError::NoStream);
        }
        self.open = false;
        Ok(())
    }

    /// The peer granted `n` more; whether a refused sender should hear of it.
    pub(crate) fn grant(&mut self, n: u32) -> bool {
        self.left = self.left.saturating_add(n);
        let wake = self.blocked && self.open && n > 0;
        if wake {
            self.blocked = false;
        }
        wake
    }
}

/// The peer's sending direction of a call, as this side granted it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Recv {
    /// Items the peer may still send.
    window: u32,
    /// Items the application consumed and this side has not granted again yet.
    consumed: u32,
    /// Open: the peer streams and has not ended.
    open: bool,
}

/// The peer sent an item it had no credit for.
#[derive(Debug)]
pub(crate) struct OverCredit;

impl Recv {
    /// A direction the peer streams in (`open`) or not.
    pub(crate) fn new(open: bool) -> Recv {
        Recv {
            window: INITIAL_STREAM_CREDIT,
            consumed: 0,
            open,
        }
    }

    /// Whether the peer may still send items.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// One item arrived.
    pub(crate) fn receive(&mut self) -> Result<(), OverCredit> {
        if self.window == 0 {
            return Err(OverCredit);
        }
        self.window -= 1;
        Ok(())
    }

    /// The peer ended its stream.
    pub(crate) fn end(&mut self) {
        self.open = false;
    }

    /// The application consumed `n` items; the credit to grant now, if any.
    pub(crate) fn consumed(&mut self, n: u32) -> Option<u32> {
        if !self.open {
            return None;
        }
        self.consumed = self.consumed.saturating_add(n);
        if self.consumed < GRANT_EVERY {
            return None;
        }
        let grant = std::mem::take(&mut self.consumed);
        self.window = self.window.saturating_add(grant);
        Some(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_spends_its_initial_credit_then_waits_for_a_grant() {
        let mut s = Send::new(true);
        for _ in 0..INITIAL_STREAM_CREDIT {
            s.spend().unwrap();
        }
        assert_eq!(
            s.spend(),
            Err(CommandError::WouldBlock(Blocked::Credit)),
            "no credit left"
        );
        assert!(!s.grant(0), "a grant of nothing wakes nobody");
        assert!(s.grant(2), "the refused sender hears of the grant");
        assert!(!s.grant(1), "once");
        s.spend().unwrap();
        s.end().unwrap();
        assert_eq!(s.spend(), Err(CommandError::NoStream), "after END");
        assert_eq!(Send::new(false).spend(), Err(CommandError::NoStream));
    }

    #[test]
    fn a_receiver_grants_after_every_32_consumed_and_catches_items_beyond_credit() {
        let mut r = Recv::new(true);
        for _ in 0..INITIAL_STREAM_CREDIT {
            r.receive().unwrap();
        }
        assert!(r.receive().is_err(), "the 65th item had no credit");
        assert_eq!(r.consumed(31), None);
        assert_eq!(r.consumed(1), Some(32));
        for _ in 0..32 {
            r.receive().unwrap();
        }
        assert!(r.receive().is_err());
        r.end();
        assert_eq!(r.consumed(64), None, "nothing to grant to an ended stream");
    }
}
