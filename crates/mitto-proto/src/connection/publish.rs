//! Publishes (acknowledged or not), HEALTH and STATS queries, the answers that complete them,
//! and the frames the application sends itself in a role the connection does not act in (a
//! broker's EVENTs, ACKs and reports).

use super::error::CommandError;
use super::events::OpId;
use super::ops::Kind;
use super::timers::Key;
use super::{Connection, Role};
use crate::frame::Frame;
use crate::header::{Flags, FrameType};
use crate::negotiate::Features;
use crate::status::Status;
use std::time::{Duration, Instant};

impl<C> Connection<C> {
    /// Publishes `frame` (a PUBLISH: literal subject, payload, headers, kind, URGENT or
    /// COMPRESSED as wanted), fire and forget.
    pub fn publish(&mut self, frame: Frame) -> Result<(), CommandError> {
        if frame.flags.contains(Flags::ACK_REQUIRED) {
            return Err(CommandError::Misuse(
                "a PUBLISH with ACK_REQUIRED goes through publish_acked",
            ));
        }
        self.queue_publish(frame, None).map(|_| ())
    }

    /// Publishes `frame` with ACK_REQUIRED (needs ACKS): the broker's ACK or ERROR completes
    /// the operation, with `ctx`, or TIMEOUT after `timeout`.
    pub fn publish_acked(
        &mut self,
        now: Instant,
        frame: Frame,
        timeout: Option<Duration>,
        ctx: C,
    ) -> Result<OpId, CommandError> {
        self.check_open()?;
        self.check_feature(Features::ACKS)?;
        let deadline = timeout.and_then(|t| now.checked_add(t));
        self.queue_publish(frame, Some((ctx, deadline)))
            .map(|id| OpId(id.unwrap_or(0)))
    }

    fn queue_publish(
        &mut self,
        mut f: Frame,
        acked: Option<(C, Option<Instant>)>,
    ) -> Result<Option<u64>, CommandError> {
        self.check_open()?;
        if f.frame_type != FrameType::Publish {
            return Err(CommandError::Misuse("publish takes a PUBLISH frame"));
        }
        if !super::is_literal(&f.subject) {
            return Err(CommandError::Misuse("a PUBLISH needs a literal subject"));
        }
        if f.flags.contains(Flags::COMPRESSED) {
            self.check_feature(Features::COMPRESSION_LZ4)?;
        }
        self.prepare(
            &mut f,
            Flags::URGENT | Flags::COMPRESSED | Flags::ACK_REQUIRED,
        )?;
        self.check_limits(&f, 0)?;
        self.check_room(f.encoded_len())?;
        let id = match acked {
            Some((ctx, deadline)) => {
                let id =
                    self.ops
                        .insert(self.cfg.max_pending, Some(ctx), Kind::Publish, deadline)?;
                if let Some(d) = deadline {
                    self.timers.insert(d, Key::Op(id));
                }
                f.flags.insert(Flags::ACK_REQUIRED);
                Some(id)
            }
            None => None,
        };
        f.id = id.unwrap_or(0);
        self.out.push(f, None, false);
        Ok(id)
    }

    /// Asks the peer for its HEALTH (`stats` false) or STATS report; the REPLY completes the
    /// operation, with `ctx` (decode it with [`crate::HealthReport::decode`] or
    /// [`crate::StatsReport::decode`]).
    pub fn query(&mut self, now: Instant, stats: bool, ctx: C) -> Result<OpId, CommandError> {
        self.check_open()?;
        let t = if stats {
            FrameType::Stats
        } else {
            FrameType::Health
        };
        self.check_room(crate::HEADER_LEN)?;
        let deadline = self.cfg.op_timeout.and_then(|d| now.checked_add(d));
        let id = self
            .ops
            .insert(self.cfg.max_pending, Some(ctx), Kind::Query(t), deadline)?;
        if let Some(d) = deadline {
            self.timers.insert(d, Key::Op(id));
        }
        self.asked = true;
        self.out.push(Frame::new(t).with_id(id), None, false);
        Ok(OpId(id))
    }

    /// Sends a frame the connection does not send itself in this role: a broker's EVENT, an
    /// ACK or ERROR answering a frame it got as [`Event::Frame`](super::Event::Frame), a
    /// HEALTH or STATS REPLY. Answers are fitted to the peer's limits and never refused for a
    /// full buffer; an EVENT is.
    pub fn send_frame(&mut self, mut f: Frame) -> Result<(), CommandError> {
        self.check_open()?;
        if self.owns(&f) {
            return Err(CommandError::Misuse(
                "the connection sends this frame itself: use its command",
            ));
        }
        if f.flags.contains(Flags::COMPRESSED) {
            self.check_feature(Features::COMPRESSION_LZ4)?;
        }
        if f.flags.contains(Flags::ACK_REQUIRED) && f.frame_type == FrameType::Event {
            self.check_feature(Features::ACKS)?;
        }
        let defined = Flags::from_bits(!Flags::RESERVED_MASK);
        self.prepare(&mut f, defined)?;
        let answer = matches!(f.frame_type, FrameType::Ack | FrameType::Error)
            || f.flags.contains(Flags::REPLY);
        if answer {
            self.send_answer(f);
            return Ok(());
        }
        self.check_limits(&f, 0)?;
        self.check_room(f.encoded_len())?;
        self.out.push(f, None, false);
        Ok(())
    }

    /// Whether the connection sends frames like `f` itself, through its commands.
    fn owns(&self, f: &Frame) -> bool {
        use FrameType::*;
        let t = f.frame_type;
        let query = matches!(t, Health | Stats) && !f.flags.contains(Flags::REPLY);
        if matches!(
            t,
            Hello | Ping | Pong | Close | Request | Response | Stream | Cancel
        ) || (t == Credit && f.aux == 0)
            || query
        {
            return true;
        }
        self.role == Role::Client
            && matches!(
                t,
                Subscribe | Unsubscribe | Register | Unregister | Publish | Nack | Credit
            )
            || self.role == Role::Client && t == Ack && f.aux != 0
    }

    /// An ACK (`aux` 0) naming an operation of this side.
    pub(super) fn on_ack(&mut self, f: Frame) {
        match self.ops.get(f.id).map(|o| &o.kind) {
            Some(Kind::Publish | Kind::Subscribe(_) | Kind::Register(_)) => {
                self.finish_op(f.id, Ok(f))
            }
            _ => self.stats.late_answers += 1,
        }
    }

    /// A HEALTH or STATS REPLY.
    pub(super) fn on_reply(&mut self, f: Frame) {
        match self.ops.get(f.id).map(|o| &o.kind) {
            Some(Kind::Query(t)) if *t == f.frame_type => self.finish_op(f.id, Ok(f)),
            _ if !self.asked => {
                let why = format!("this side sent no {} query", f.frame_type.name());
                self.refuse_frame(&f, Status::UNEXPECTED_FRAME, &why);
            }
            // A reply to a query given up on (spec section 3.17).
            _ => self.stats.late_answers += 1,
        }
    }
}
