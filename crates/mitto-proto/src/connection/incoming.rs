//! Calls the peer opens (the callee's side of spec section 10): each REQUEST becomes an
//! [`Event::Request`] with its deadline, and this side may answer only calls it received and
//! has not finished. CANCEL, a deadline passing or a flow-control breach end a call with the
//! RESPONSE the spec prescribes and an [`Event::RequestEnded`].

use super::calls::set_urgent;
use super::error::CommandError;
use super::events::{Event, RequestEnd, RequestId};
use super::streams::{Recv, Send};
use super::timers::Key;
use super::Connection;
use crate::body::decode_credit;
use crate::frame::Frame;
use crate::header::{Flags, FrameType};
use crate::negotiate::Features;
use crate::status::Status;
use rustc_hash::FxHashMap;
use std::time::Instant;

/// A call of the peer in flight.
struct InCall {
    /// The number the connection gave it (the peer may reuse an id after a call ends).
    seq: u64,
    urgent: bool,
    deadline: Option<Instant>,
    send: Send,
    recv: Recv,
}

/// The peer's calls in flight, by id.
#[derive(Default)]
pub(crate) struct Incoming {
    calls: FxHashMap<u64, InCall>,
    seq: u64,
}

impl Incoming {
    pub(crate) fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether call `id` is the one numbered `seq`, still in flight.
    pub(crate) fn is_live(&self, id: u64, seq: u64) -> bool {
        self.calls.get(&id).is_some_and(|c| c.seq == seq)
    }

    /// Whether call `id` numbered `seq` is due at `at`.
    pub(crate) fn is_due(&self, id: u64, seq: u64, at: Instant) -> bool {
        self.calls
            .get(&id)
            .is_some_and(|c| c.seq == seq && c.deadline == Some(at))
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.calls.contains_key(&id)
    }

    /// Takes every call out; their ids.
    pub(crate) fn drain(&mut self) -> Vec<(u64, bool)> {
        self.calls.drain().map(|(id, c)| (id, c.urgent)).collect()
    }
}

impl<C> Connection<C> {
    /// A REQUEST from the peer.
    pub(super) fn on_request(&mut self, now: Instant, f: Frame) {
        let urgent = f.is_urgent();
        if self.opens_calls && self.role == super::Role::Server && f.id >> 63 == 1 {
            // This side opens calls with bit 63 set: the ids would be ambiguous (spec 10.1).
            let why = "a REQUEST from the connecting peer must have bit 63 of its id clear";
            return self.refuse_frame(&f, Status::PROTOCOL_ERROR, why);
        }
        if self.incoming.contains(f.id) {
            return self.refuse_frame(
                &f,
                Status::PROTOCOL_ERROR,
                "a call with this id is in flight",
            );
        }
        if self.incoming.len() >= self.cfg.max_incoming_calls {
            let why = format!("{} calls in flight on this connection", self.incoming.len());
            return self.owe_response(f.id, urgent, Status::BACKPRESSURE_REJECTION, &why);
        }
        let left = f.headers.deadline();
        if left.is_some_and(|d| d.is_zero()) {
            let why = "the deadline passed before the call started";
            return self.owe_response(f.id, urgent, Status::TIMEOUT, why);
        }
        let deadline = left.and_then(|d| now.checked_add(d));
        self.incoming.seq += 1;
        let seq = self.incoming.seq;
        let streams = self.has(Features::STREAMING);
        self.incoming.calls.insert(
            f.id,
            InCall {
                seq,
                urgent,
                deadline,
                send: Send::new(streams),
                recv: Recv::new(f.flags.contains(Flags::START)),
            },
        );
        if let Some(d) = deadline {
            self.timers.insert(d, Key::Incoming(f.id, seq));
        }
        self.events.push_back(Event::Request {
            id: RequestId(f.id),
            frame: f,
            deadline,
        });
    }

    /// Answers RESPONSE `status` to a call that never got in (owed).
    fn owe_response(&mut self, id: u64, urgent: bool, status: Status, reason: &str) {
        self.stats.refused_frames += 1;
        let mut r = Frame::response(id, status, bytes::Bytes::copy_from_slice(reason.as_bytes()));
        set_urgent(&mut r, urgent);
        self.send_owed(r);
    }

    /// Completes a call the peer opened with `response` (a RESPONSE frame: status, payload,
    /// headers; its id is set here). A result over the peer's limits becomes RESPONSE
    /// PAYLOAD_TOO_LARGE, a reason is shortened (spec section 14.5). Never refused for a full
    /// buffer: it ends a call the peer waits for.
    pub fn respond(&mut self, id: RequestId, mut response: Frame) -> Result<(), CommandError> {
        self.check_open()?;
        if response.frame_type != FrameType::Response {
            return Err(CommandError::Misuse(
                "a call is answered with a RESPONSE frame",
            ));
        }
        if response.flags.contains(Flags::COMPRESSED) {
            self.check_feature(Features::COMPRESSION_LZ4)?;
        }
        self.prepare(&mut response, Flags::URGENT | Flags::COMPRESSED)?;
        let call = self
            .incoming
            .calls
            .remove(&id.0)
            .ok_or(CommandError::UnknownRequest(id.0))?;
        self.op_ended(call.deadline.is_some());
        response.id = id.0;
        set_urgent(&mut response, call.urgent);
        self.send_answer(response);
        Ok(())
    }

    /// Sends one item of the response stream of a call the peer opened (`item`: a STREAM
    /// frame; END marks the last one, which the RESPONSE must still follow).
    pub fn send_stream_item(&mut self, id: RequestId, mut item: Frame) -> Result<(), CommandError> {
        self.check_open()?;
        self.check_feature(Features::STREAMING)?;
        if item.frame_type != FrameType::Stream {
            return Err(CommandError::Misuse("stream items are STREAM frames"));
        }
        if item.flags.contains(Flags::COMPRESSED) {
            self.check_feature(Features::COMPRESSION_LZ4)?;
        }
        let urgent = match self.incoming.calls.get(&id.0) {
            Some(c) if c.send.is_open() => c.urgent,
            Some(_) => return Err(CommandError::NoStream),
            None => return Err(CommandError::UnknownRequest(id.0)),
        };
        self.prepare(&mut item, Flags::URGENT | Flags::COMPRESSED | Flags::END)?;
        self.check_limits(&item, 0)?;
        let end = item.flags.contains(Flags::END);
        let carries = !(end && item.payload.is_empty());
        if carries {
            self.check_room(item.encoded_len())?;
        }
        if let Some(c) = self.incoming.calls.get_mut(&id.0) {
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

    /// Ends the response stream of a call the peer opened (STREAM with END, no item); the
    /// RESPONSE still ends the call.
    pub fn end_stream(&mut self, id: RequestId) -> Result<(), CommandError> {
        self.send_stream_item(id, Frame::stream(0, bytes::Bytes::new(), true))
    }

    /// The application consumed `n` items of the request stream of a call the peer opened:
    /// CREDIT is granted after every 32.
    pub fn request_consumed(&mut self, id: RequestId, n: u32) -> Result<(), CommandError> {
        self.check_open()?;
        let c = self
            .incoming
            .calls
            .get_mut(&id.0)
            .ok_or(CommandError::UnknownRequest(id.0))?;
        if let Some(g) = c.recv.consumed(n) {
            self.out.push(Frame::credit_stream(id.0, g), None, false);
        }
        Ok(())
    }

    /// A STREAM item of a call the peer opened.
    pub(super) fn on_request_item(&mut self, f: Frame) {
        let Some(c) = self.incoming.calls.get_mut(&f.id) else {
            // The call ended while the peer was still streaming: not an error (spec 3.13).
            self.stats.late_answers += 1;
            return;
        };
        let end = f.flags.contains(Flags::END);
        if !c.recv.is_open() {
            let why = "this call takes no more stream items";
            return self.end_request(
                f.id,
                Status::UNEXPECTED_FRAME,
                why,
                RequestEnd::StreamViolation,
                false,
            );
        }
        if !(end && f.payload.is_empty()) && c.recv.receive().is_err() {
            let why = "stream items beyond the granted credit";
            return self.end_request(
                f.id,
                Status::PROTOCOL_ERROR,
                why,
                RequestEnd::StreamViolation,
                false,
            );
        }
        if end {
            c.recv.end();
        }
        self.events.push_back(Event::RequestItem {
            id: RequestId(f.id),
            frame: f,
        });
    }

    /// A CREDIT for the response stream of a call the peer opened.
    pub(super) fn on_request_credit(&mut self, f: &Frame) {
        let n = decode_credit(&f.payload).unwrap_or(0);
        if let Some(c) = self.incoming.calls.get_mut(&f.id) {
            if c.send.grant(n) {
                self.events.push_back(Event::ResponseCreditAvailable {
                    id: RequestId(f.id),
                });
            }
        }
    }

    /// The peer cancelled one of its calls (unknown or finished ones are ignored, spec 3.14).
    pub(super) fn on_cancel(&mut self, f: &Frame) {
        if self.incoming.contains(f.id) {
            let why = "cancelled by the caller";
            self.end_request(f.id, Status::CANCELLED, why, RequestEnd::Cancelled, false);
        }
    }

    /// A call of the peer's reached its deadline.
    pub(super) fn expire_request(&mut self, id: u64) {
        let why = "the call did not finish before its deadline";
        self.end_request(id, Status::TIMEOUT, why, RequestEnd::Timeout, true);
    }

    /// Ends a call of the peer's with RESPONSE `status` and tells the application
    /// (`timer_taken`: its deadline's entry has just been taken from the timers).
    fn end_request(
        &mut self,
        id: u64,
        status: Status,
        reason: &str,
        why: RequestEnd,
        timer_taken: bool,
    ) {
        let Some(c) = self.incoming.calls.remove(&id) else {
            return;
        };
        self.op_ended(c.deadline.is_some() && !timer_taken);
        self.owe_response(id, c.urgent, status, reason);
        self.events.push_back(Event::RequestEnded {
            id: RequestId(id),
            why,
        });
    }
}
