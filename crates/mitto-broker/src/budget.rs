//! What one connection may make the broker hold, derived from the configuration in one place:
//! the budget of a connection whose HELLO is not yet accepted, and the budget after it. Every
//! limit that bounds a connection's memory is read from here, and `docs/SECURITY.md`
//! ("Memory bounds") explains the same formulas.

use crate::config::BrokerConfig;
use mitto::__private::conn::{SlowReader, OUTBOX_HIGH_WATER};
use mitto::proto::{Decoder, Limits};
use std::time::Duration;

/// Bookkeeping of one subscription besides its filter (queue, counters, index entry).
pub(crate) const SUBSCRIPTION_OVERHEAD: u64 = 512;

/// The most a connection's read buffer asks for at once (the driver's read step).
const READ_STEP: u64 = 64 * 1024;

/// A connection's budgets.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    /// Before HELLO is accepted.
    pub(crate) pre_auth: PreAuth,
    /// After it.
    pub(crate) post_auth: PostAuth,
}

/// The fixed budget of a peer that has not yet been admitted.
#[derive(Clone, Debug)]
pub(crate) struct PreAuth {
    /// What the first frame may be (PROTOCOL.md 8.1).
    pub(crate) limits: Limits,
    /// Transport setup (TLS) and HELLO together.
    pub(crate) timeout: Duration,
    /// Connections at once in that state; a new one beyond it closes the oldest.
    pub(crate) max_handshakes: usize,
    /// First and longest pause before a refused HELLO is answered.
    pub(crate) failure_delay: (Duration, Duration),
}

/// The budget of an admitted connection.
#[derive(Clone, Debug)]
pub(crate) struct PostAuth {
    /// The broker's side of the frame limits (a client may negotiate them lower).
    pub(crate) limits: Limits,
    /// Encoded bytes the driver's outbox holds before the broker stops reading.
    pub(crate) outbox: usize,
    /// Encoded bytes of EVENTs queued for the connection's subscriptions.
    pub(crate) pending_bytes: usize,
    /// Encoded bytes of at-least-once deliveries sent and not yet acknowledged.
    pub(crate) unacked_bytes: usize,
    /// Encoded bytes of frames other connections send it (responses, forwarded requests,
    /// stream items, errors).
    pub(crate) control_bytes: usize,
    /// How long the outbox may stay over its bound.
    pub(crate) write_deadline: Duration,
    /// Subscriptions (and service registrations) at once.
    pub(crate) max_subscriptions: usize,
}

impl Budget {
    pub(crate) fn of(cfg: &BrokerConfig) -> Budget {
        let timeout = Duration::from_millis(cfg.handshake_timeout_ms);
        // A refusal is answered within the handshake's time, or not at all.
        let longest = Duration::from_millis(cfg.auth_failure_delay_max_ms).min(timeout / 2);
        Budget {
            pre_auth: PreAuth {
                limits: Limits::HANDSHAKE,
                timeout,
                max_handshakes: cfg.max_handshakes,
                failure_delay: (
                    Duration::from_millis(cfg.auth_failure_delay_ms).min(longest),
                    longest,
                ),
            },
            post_auth: PostAuth {
                limits: Limits {
                    max_payload: cfg.max_payload,
                    ..Limits::default()
                },
                outbox: OUTBOX_HIGH_WATER,
                pending_bytes: cfg.max_pending_bytes,
                unacked_bytes: cfg.max_unacked_bytes,
                control_bytes: cfg.max_pending_bytes,
                write_deadline: Duration::from_millis(cfg.write_deadline_ms),
                max_subscriptions: cfg.max_subscriptions,
            },
        }
    }

    /// The driver's hold on an admitted peer that does not read.
    pub(crate) fn slow_reader(&self) -> SlowReader {
        SlowReader {
            write_deadline: self.post_auth.write_deadline,
        }
    }
}

impl PreAuth {
    /// The most one connection's handshake buffers hold before its HELLO is accepted: the
    /// first frame, one read step past it, and the doubling of a growing buffer. (TLS adds
    /// rustls's own buffers; `docs/SECURITY.md` counts them.)
    pub(crate) fn read_buffer_bytes(&self) -> u64 {
        2 * (self.limits.max_frame() + 4096)
    }

    /// The most all connections not yet admitted hold in read buffers together.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.max_handshakes as u64 * self.read_buffer_bytes()
    }
}

impl PostAuth {
    /// The read buffer: one whole frame being received, a read step past it, and the doubling
    /// of a growing buffer (the decoder never reserves more than
    /// [`Decoder::RESERVE_AHEAD`] ahead of what arrived).
    pub(crate) fn read_buffer_bytes(&self) -> u64 {
        let ahead = READ_STEP.max(Decoder::RESERVE_AHEAD as u64);
        2 * (self.limits.max_frame() + ahead)
    }

    /// The outbox: its bound, plus the answer to the one frame handled while it crossed the
    /// bound (at most a frame: a PONG echoes its PING), plus a chunk of small frames.
    pub(crate) fn outbox_bytes(&self) -> u64 {
        self.outbox as u64 + self.limits.max_frame() + READ_STEP
    }

    /// Unacknowledged deliveries: the bound, plus the one frame sent while below it.
    pub(crate) fn unacked_bound(&self) -> u64 {
        self.unacked_bytes as u64 + self.limits.max_frame()
    }

    /// Everything but subscriptions' bookkeeping: read buffer, outbox, queued EVENTs,
    /// unacknowledged deliveries and queued frames from other connections.
    pub(crate) fn queues_bytes(&self) -> u64 {
        self.read_buffer_bytes()
            + self.outbox_bytes()
            + self.pending_bytes as u64
            + self.unacked_bound()
            + self.control_bytes as u64
    }

    /// The bookkeeping of the most subscriptions a connection may hold, each with a filter of
    /// the longest subject (kept in the queue and in the index).
    pub(crate) fn subscriptions_bytes(&self) -> u64 {
        let filter = u64::from(self.limits.max_subject);
        self.max_subscriptions as u64 * (2 * filter + SUBSCRIPTION_OVERHEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budgets_add_up_as_documented() {
        let b = Budget::of(&BrokerConfig::default());
        // Before HELLO: the handshake limits, 5,408-byte frames; 1,024 connections at once.
        assert_eq!(b.pre_auth.limits.max_frame(), 5_408);
        assert_eq!(b.pre_auth.read_buffer_bytes(), 19_008);
        assert!(b.pre_auth.total_bytes() < 20 << 20, "under 20 MiB in all");
        // After: a 64 MiB frame read, a 1 MiB outbox, 72 MiB of events, 72 MiB (and a frame)
        // unacknowledged, 72 MiB of control.
        let p = &b.post_auth;
        let frame = 32 + 4096 + 65_536 + (64 << 20);
        assert_eq!(p.limits.max_frame(), frame);
        assert_eq!(p.read_buffer_bytes(), 2 * (frame + 65_536));
        assert_eq!(p.outbox_bytes(), (1 << 20) + frame + 65_536);
        assert_eq!(
            p.queues_bytes(),
            p.read_buffer_bytes() + p.outbox_bytes() + (216 << 20) + frame
        );
        assert_eq!(p.subscriptions_bytes(), 100_000 * (2 * 4096 + 512));
    }

    #[test]
    fn a_smaller_max_payload_shrinks_the_read_and_outbox_bounds() {
        let cfg = BrokerConfig {
            max_payload: 1 << 20,
            max_pending_bytes: 8 << 20,
            max_unacked_bytes: 8 << 20,
            ..BrokerConfig::default()
        };
        let p = Budget::of(&cfg).post_auth;
        assert_eq!(p.limits.max_frame(), 32 + 4096 + 65_536 + (1 << 20));
        assert!(p.queues_bytes() < 33 << 20, "{}", p.queues_bytes());
    }
}
