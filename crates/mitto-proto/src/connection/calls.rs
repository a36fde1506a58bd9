//! Calls this side opens (spec section 10): the REQUEST, the request stream within the
//! peer's credit, the response stream within this side's, CANCEL, and the answer; and the
//! deadlines of every operation of this side.

use super::error::{CommandError, Failure};
use super::events::{Event, OpId};
use super::ops::{Call, Kind, Shape};
use super::streams::{Recv, Send};
use super::timers::Key;
use super::Connection;
use crate::body::decode_credit;
use crate::frame::Frame;
use crate::header::{Flags, FrameType};
use crate::negotiate::Features;
use crate::status::Status;
use std::time::{Duration, Instant};

/// Bytes the connection adds to a REQUEST with a deadline (its `deadline` header entry).
const DEADLINE_ENTRY: usize = 11;

/// How a call is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// Which directions stream.
    pub shape: Shape,
    /// Time the call may take: it is sent in the `deadline` header (the time left when the
    /// driver takes the REQUEST), and when it passes the call fails with TIMEOUT and CANCEL is
    /// sent. `None`: no deadline.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// A unary call without a deadline.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// With a shape.
    pub fn shape(mut self, shape: Shape) -> CallOptions {
        self.shape = shape;
        self
    }

    /// With a timeout.
    pub fn timeout(mut self, timeout: Duration) -> CallOptions {
        self.timeout = Some(timeout);
        self
    }
}

impl<C> Connection<C> {
    /// Opens a call with `request` (a REQUEST frame: subject, headers, payload, kind, URGENT
    /// or COMPRESSED as wanted; its id is set here). `ctx` comes back in the call's
    /// [`Event::Answer`]. A REQUEST with URGENT makes every frame of the call urgent.
    pub fn call(
        &mut self,
        now: Instant,
        mut request: Frame,
        opts: CallOptions,
        ctx: C,
    ) -> Result<OpId, CommandError> {
        self.check_open()?;
        self.opens_calls |= self.role == super::Role::Server;
        if request.frame_type != FrameType::Request {
            return Err(CommandError::Misuse("a call opens with a REQUEST frame"));
        }
        if !super::is_literal(&request.subject) {
            return Err(CommandError::Misuse("a call needs a literal subject"));
        }
        if opts.shape != Shape::Unary {
            self.check_feature(Features::STREAMING)?;
        }
        if request.flags.contains(Flags::COMPRESSED) {
            self.check_feature(Features::COMPRESSION_LZ4)?;
        }
        self.prepare(
            &mut request,
            Flags::URGENT | Flags::COMPRESSED | Flags::START,
        )?;
        let deadline = opts.timeout.and_then(|t| now.checked_add(t));
        let extra = if deadline.is_some() {
            DEADLINE_ENTRY
        } else {
            0
        };
        self.check_limits(&request, extra)?;
        self.check_room(request.encoded_len() + extra)?;
        request.flags.remove(Flags::START);
        if opts.shape.client_streams() {
            request.flags.insert(Flags::START);
        }
        let call = Call {
            urgent: request.is_urgent(),
            request: Default::default(),
            send: Send::new(opts.shape.client_streams()),
            recv: Recv::new(opts.shape.server_streams()),
        };
        let id = self
            .ops
            .insert(self.cfg.max_pending, Some(ctx), Kind::Call(call), deadline)?;
        request.id = id;
        let pos = self.out.push(request, deadline, false);
        if let Some(Kind::Call(c)) = self.ops.get_mut(id).map(|o| &mut o.kind) {
            c.request = pos;
        }
        if let Some(d) = deadline {
            self.timers.insert(d, Key::Op(id));
        }
        Ok(OpId(id))
    }

    /// Sends one item of a call's request stream (`item`: a STREAM frame; with END, the last
    /// one; an END with an empty payload ends the stream without an item and needs no credit).
    pub fn send_item(&mut self, id: OpId, mut item: Frame) -> Result<(), CommandError> {
        self.check_open()?;
        if item.frame_type != FrameType::Stream {
            return Err(CommandError::Misuse("stream items are STREAM frames"));
        }
        if item.flags.contains(Flags::COMPRESSED) {
            self.check_feature(Features::COMPRESSION_LZ4)?;
        }
        let urgent = match self.ops.get(id.0).map(|o| &o.kind) {
            Some(Kind::Call(c)) if c.send.is_open() => c.urgent,
            Some(Kind::Call(_)) => return Err(CommandError::NoStream),
            _ => return Err(CommandError::UnknownCall(id.0)),
        };
        self.prepare(&mut item, Flags::URGENT | Flags::COMPRESSED | Flags::END)?;
        self.check_limits(&item, 0)?;
        let end = item.flags.contains(Flags::END);
        let carries = !(end && item.payload.is_empty());
        if carries {
            self.check_room(item.encoded_len())?;
        }
        if let Some(Kind::Call(c)) = self.ops.get_mut(id.0).map(|o| &mut o.kind) {
            if carries {
                c.send.spend()?;
            }
            if end {
                c.send.end()?;
            }
        }
        item.id = id.0;
        set_urgent(&mut item, urgent);
        self.out.push(item, None, false);
        Ok(())
    }

    /// Ends a call's request stream (STREAM with END, no item).
    pub fn finish(&mut self, id: OpId) -> Result<(), CommandError> {
        self.send_item(id, Frame::stream(0, bytes::Bytes::new(), true))
    }

    /// The application consumed `n` items of a call's response stream: CREDIT is granted
    /// after every 32 (spec section 10.5).
    pub fn items_consumed(&mut self, id: OpId, n: u32) -> Result<(), CommandError> {
        self.check_open()?;
        let grant = match self.ops.get_mut(id.0).map(|o| &mut o.kind) {
            Some(Kind::Call(c)) => c.recv.consumed(n),
            _ => return Err(CommandError::UnknownCall(id.0)),
        };
        if let Some(g) = grant {
            self.out.push(Frame::credit_stream(id.0, g), None, false);
        }
        Ok(())
    }

    /// Stops waiting for operation `id` and gives its context back. A call's CANCEL is sent
    /// once (or its REQUEST withdrawn if the driver has not taken it); an answer that still
    /// arrives is ignored (spec section 10.4). No [`Event::Answer`] follows.
    pub fn cancel(&mut self, id: OpId) -> Result<Option<C>, CommandError> {
        let op = self
            .ops
            .remove(id.0)
            .ok_or(CommandError::UnknownCall(id.0))?;
        self.op_ended(op.deadline.is_some());
        match op.kind {
            Kind::Call(c) => {
                self.out.cancel(c.request, id.0);
            }
            Kind::Subscribe(sid) | Kind::Register(sid) => self.drop_subscription(sid),
            Kind::Publish | Kind::Query(_) => {}
        }
        Ok(op.ctx)
    }

    /// A RESPONSE: the answer of a call of this side, or a late one.
    pub(super) fn on_response(&mut self, f: Frame) {
        if !matches!(self.ops.get(f.id).map(|o| &o.kind), Some(Kind::Call(_))) {
            if (f.id >> 63 == 1) != (self.role == super::Role::Server) {
                // In the peer's half of the ids: it cannot answer a call of this side (spec
                // section 3.12).
                let why = "this RESPONSE's id is in the half of the ids the peer opens calls in";
                return self.refuse_frame(&f, Status::UNEXPECTED_FRAME, why);
            }
            // Ended, cancelled, or never opened here: ignored without a word.
            self.stats.late_answers += 1;
            return;
        }
        let answer = if f.status.is_ok() {
            Ok(f)
        } else {
            Err(Failure::peer(f))
        };
        let id = match &answer {
            Ok(f) => f.id,
            Err(e) => e.frame().map_or(0, |f| f.id),
        };
        self.finish_op(id, answer);
    }

    /// Ends operation `id` with `answer` (the operation must be in the table).
    pub(super) fn finish_op(&mut self, id: u64, answer: super::Answer) {
        let Some(op) = self.ops.remove(id) else {
            return;
        };
        self.op_ended(op.deadline.is_some());
        if let Some(ctx) = op.ctx {
            self.events.push_back(Event::Answer {
                id: OpId(id),
                ctx,
                answer,
            });
        } else if let (Kind::Subscribe(sid) | Kind::Register(sid), Err(e)) = (&op.kind, &answer) {
            // A subscription the connection made again on its own: the refusal ends it.
            let sid = *sid;
            self.subs.remove(sid);
            self.events.push_back(Event::SubscriptionEnded {
                sid,
                status: e.status(),
            });
        }
    }

    /// A STREAM item of a call of this side.
    pub(super) fn on_call_item(&mut self, f: Frame) {
        let Some(Kind::Call(c)) = self.ops.get_mut(f.id).map(|o| &mut o.kind) else {
            self.stats.late_answers += 1;
            return;
        };
        if !c.recv.is_open() {
            // A unary call, or items after the callee's END: nothing waits for them.
            self.stats.late_answers += 1;
            return;
        }
        let end = f.flags.contains(Flags::END);
        if !(end && f.payload.is_empty()) && c.recv.receive().is_err() {
            return self.broken_call(f.id, "the peer sent stream items beyond its credit");
        }
        if end {
            c.recv.end();
        }
        self.events.push_back(Event::Item {
            id: OpId(f.id),
            frame: f,
        });
    }

    /// A CREDIT for a call of this side's request stream.
    pub(super) fn on_call_credit(&mut self, f: &Frame) {
        let n = decode_credit(&f.payload).unwrap_or(0);
        if let Some(Kind::Call(c)) = self.ops.get_mut(f.id).map(|o| &mut o.kind) {
            if c.send.grant(n) {
                self.events
                    .push_back(Event::CreditAvailable { id: OpId(f.id) });
            }
        }
    }

    /// The peer broke a call of this side (flow control, an undecodable answer): CANCEL, and
    /// the call fails with PROTOCOL_ERROR (spec section 10.5).
    pub(super) fn broken_call(&mut self, id: u64, reason: &'static str) {
        if let Some(Kind::Call(c)) = self.ops.get(id).map(|o| &o.kind) {
            self.out.cancel(c.request, id);
        }
        self.finish_op(id, Err(Failure::local(Status::PROTOCOL_ERROR, reason)));
    }

    /// Acts on every deadline due at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some((at, key)) = self.timers.pop_due(now) {
            match key {
                Key::Op(id) if self.ops.get(id).is_some_and(|o| o.deadline == Some(at)) => {
                    self.expire_op(id)
                }
                Key::Incoming(id, seq) if self.incoming.is_due(id, seq, at) => {
                    self.expire_request(id)
                }
                _ => self.timers.popped_stale(),
            }
        }
    }

    fn expire_op(&mut self, id: u64) {
        match self.ops.get(id).map(|o| &o.kind) {
            Some(Kind::Call(c)) => {
                self.out.cancel(c.request, id);
            }
            Some(Kind::Subscribe(sid) | Kind::Register(sid)) => {
                let sid = *sid;
                self.drop_subscription(sid);
            }
            _ => {}
        }
        // Its timer entry was just taken: not a stale one.
        let Some(op) = self.ops.remove(id) else {
            return;
        };
        if let Some(ctx) = op.ctx {
            let answer = Err(Failure::local(Status::TIMEOUT, "the deadline passed"));
            self.events.push_back(Event::Answer {
                id: OpId(id),
                ctx,
                answer,
            });
        }
    }

    /// An operation that had a deadline ended before it: its timer entry is stale.
    pub(super) fn op_ended(&mut self, had_deadline: bool) {
        if had_deadline {
            let (ops, incoming) = (&self.ops, &self.incoming);
            self.timers.ended(|k| match *k {
                Key::Op(id) => ops.get(id).is_some(),
                Key::Incoming(id, seq) => incoming.is_live(id, seq),
            });
        }
    }
}

/// Gives a frame of a call the URGENT flag of the frame that opened it (see the overtaking
/// rule in `outbound`).
pub(super) fn set_urgent(f: &mut Frame, urgent: bool) {
    if urgent {
        f.flags.insert(Flags::URGENT);
    } else {
        f.flags.remove(Flags::URGENT);
    }
}
