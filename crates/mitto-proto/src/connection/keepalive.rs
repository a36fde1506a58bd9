//! Keepalive (spec section 9.1): with an agreed interval `k`, a PING every `k` (numbered 1,
//! 2, 3, ...) whatever the traffic, and a peer from which no byte at all came for more than
//! `2k` is gone: the connection ends without CLOSE.

use super::events::{Closed, Closer};
use super::Connection;
use crate::frame::Frame;
use crate::status::Status;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct Keepalive {
    interval: Option<Duration>,
    next_ping: Option<Instant>,
    last_rx: Option<Instant>,
    pings: u64,
}

impl Keepalive {
    /// The handshake agreed `ms` (0: off).
    pub(crate) fn start(&mut self, now: Instant, ms: u32) {
        if ms == 0 {
            return;
        }
        let k = Duration::from_millis(ms.into());
        self.interval = Some(k);
        self.next_ping = now.checked_add(k);
        self.last_rx = Some(now);
    }

    /// Bytes (or a frame) arrived.
    pub(crate) fn received(&mut self, now: Instant) {
        if self.interval.is_some() {
            self.last_rx = Some(now);
        }
    }

    /// The first instant at which the peer counts as gone: more than `2k` after the last
    /// input.
    fn dead_at(&self) -> Option<Instant> {
        let k = self.interval?;
        self.last_rx?
            .checked_add(k * 2)?
            .checked_add(Duration::from_nanos(1))
    }

    /// When something is due.
    pub(crate) fn next(&self) -> Option<Instant> {
        match (self.next_ping, self.dead_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<C> Connection<C> {
    /// Sends the PING that is due, or ends a connection whose peer fell silent.
    pub(super) fn keepalive_due(&mut self, now: Instant) {
        if self.keepalive.dead_at().is_some_and(|d| now >= d) {
            let k = self.keepalive.interval.unwrap_or_default();
            return self.close_now(Closed {
                by: Closer::Transport,
                status: Status::UNAVAILABLE,
                reason: format!("nothing from the peer for more than {:?}", k * 2),
            });
        }
        let (Some(k), Some(at)) = (self.keepalive.interval, self.keepalive.next_ping) else {
            return;
        };
        if now < at {
            return;
        }
        self.keepalive.pings += 1;
        self.out
            .push(Frame::ping(self.keepalive.pings), None, false);
        // Every `k` from the first; one PING however late the call (no burst after a stall).
        self.keepalive.next_ping = match at.checked_add(k) {
            Some(n) if n > now => Some(n),
            _ => now.checked_add(k),
        };
    }
}
