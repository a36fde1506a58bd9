//! The client side of a connection's driver: answers matched to calls, stream items and
//! credit, events to subscriptions, deadlines.

use super::call_parts::Reply;
use super::calls::Calls;
use super::cmd::{CallCmd, Slot};
use super::frames::{headers_too_large, payload_too_large, remote_error, reply_of};
use super::message::Message;
use super::{Cmd, Due, SubTable};
use crate::conn::{Ctx, Reactor};
use crate::deadlines::Deadlines;
use crate::error::Error;
use bytes::Bytes;
use mitto_proto::{Flags, Frame, FrameType, Headers, Status};
use rustc_hash::FxHashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

pub(super) struct ClientReactor {
    /// The time of this turn of the driver, read when a call first needs it.
    now: Option<Instant>,
    /// Calls waiting for their answer, with their deadlines.
    pending: FxHashMap<u64, (Slot, Option<Instant>)>,
    /// The earliest deadline of the pending calls; one timer for all.
    deadlines: Deadlines,
    subs: FxHashMap<u32, crate::client::inbox::InboxTx>,
    table: SubTable,
    /// The connection's unary calls written straight by their callers (see [`Calls`]).
    calls: Option<Arc<Calls>>,
}

impl ClientReactor {
    pub(super) fn new(table: SubTable, calls: Option<Arc<Calls>>) -> Self {
        ClientReactor {
            now: None,
            pending: FxHashMap::default(),
            deadlines: Deadlines::new(),
            subs: FxHashMap::default(),
            table,
            calls,
        }
    }

    /// Removes a pending call (and its deadline).
    fn take(&mut self, id: u64) -> Option<Slot> {
        self.pending.remove(&id).map(|(slot, _)| slot)
    }

    /// A RESPONSE, HEALTH or STATS answer: to its call in the table, or to its pending slot.
    fn on_answer(&mut self, f: Frame) {
        let f = match &self.calls {
            Some(calls) if f.frame_type == FrameType::Response => match calls.answer(f, reply_of) {
                Ok(()) => return,
                Err(f) => f,
            },
            _ => f,
        };
        let Some(slot) = self.take(f.id) else {
            return;
        };
        let result = reply_of(f);
        match slot {
            Slot::Unary(tx) => {
                let _ = tx.send(result);
            }
            Slot::Stream {
                items,
                done,
                credit,
            } => {
                if let Some(c) = credit {
                    c.close();
                }
                if let Some(tx) = done {
                    let _ = tx.send(result);
                } else if let (Some(tx), Err(e)) = (items, result) {
                    let _ = tx.try_send(Err(e));
                }
            }
        }
    }

    /// A STREAM item of a call: to its stream, within the credit this side granted.
    fn on_stream_item(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        let mut violation = None;
        // An empty STREAM with END carries no item; the RESPONSE ends the call.
        let end_only = f.flags.contains(Flags::END) && f.payload.is_empty();
        if let (
            Some(Slot::Stream {
                items: Some(tx), ..
            }),
            false,
        ) = (self.pending.get(&f.id).map(|(s, _)| s), end_only)
        {
            match tx.try_send(Ok(f.payload.clone())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    violation = Some(Error::new(
                        Status::PROTOCOL_ERROR,
                        "server sent stream items beyond its credit",
                    ));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    violation = Some(Error::new(Status::CANCELLED, "stream dropped"));
                }
            }
        }
        if let Some(e) = violation {
            if let Some(slot) = self.take(f.id) {
                cx.send(&Frame::cancel(f.id));
                slot.fail(e);
            }
        }
    }

    /// An EVENT: to its subscription's inbox.
    fn on_event(&mut self, f: Frame) {
        match self.subs.get(&f.aux) {
            Some(tx) => {
                let sid = f.aux;
                if let Err(crate::client::inbox::Refused::Full) =
                    tx.try_send(Message::from_event(f))
                {
                    tracing::warn!(
                        sid,
                        "no room for an EVENT (beyond the subscription's credit, or one window extra after a resumption); dropped"
                    );
                }
            }
            None => tracing::trace!(sid = f.aux, "EVENT for a subscription that is gone"),
        }
    }

    /// CREDIT for a request stream: permits for its sink.
    fn on_credit(&mut self, f: &Frame) {
        if let Some(Slot::Stream {
            credit: Some(c), ..
        }) = self.pending.get(&f.id).map(|(s, _)| s)
        {
            let n = mitto_proto::body::decode_credit(&f.payload).unwrap_or(0) as usize;
            c.add_permits(n.min(Semaphore::MAX_PERMITS - c.available_permits()));
        }
    }

    /// The broker ended a subscription (slow consumer, permissions changed): its stream ends
    /// after what was already received.
    fn on_subscription_ended(&mut self, f: &Frame) {
        tracing::warn!(
            sid = f.aux,
            status = %f.status,
            reason = %String::from_utf8_lossy(&f.payload),
            "subscription ended by the server"
        );
        self.subs.remove(&f.aux);
        if let Ok(mut t) = self.table.lock() {
            t.remove(&f.aux);
        }
    }

    /// An ERROR answering a call (or reporting on the connection).
    fn on_error(&mut self, f: Frame) {
        let f = match &self.calls {
            Some(calls) => match calls.answer(f, |f| Err(remote_error(&f))) {
                Ok(()) => return,
                Err(f) => f,
            },
            None => f,
        };
        if let Some(slot) = self.take(f.id) {
            slot.fail(remote_error(&f));
        } else {
            tracing::warn!(status = %f.status, reason = %String::from_utf8_lossy(&f.payload), "error from server");
        }
    }

    /// The server's CLOSE: every call fails, the connection closes.
    fn on_close(&mut self, f: &Frame, cx: &mut Ctx<'_>) {
        let reason = String::from_utf8_lossy(&f.payload);
        let e = Error::connection_lost(format!(
            "the server closed the connection ({}: {reason})",
            f.status
        ));
        self.deadlines.clear();
        for (_, (slot, _)) in self.pending.drain() {
            slot.fail(e.clone());
        }
        if let Some(calls) = &self.calls {
            calls.close(&e);
        }
        cx.close(Status::OK, "closing after the server's CLOSE");
    }
}

impl Reactor for ClientReactor {
    type Cmd = Cmd;

    fn on_frame(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        match f.frame_type {
            // A client's calls have bit 63 clear (PROTOCOL.md 10.1): this answers none of them.
            FrameType::Response if super::ids::opened_by_peer(f.id) => cx.send(&Frame::error(
                f.id,
                Status::UNEXPECTED_FRAME,
                "a client opens no call with bit 63 set",
            )),
            FrameType::Response | FrameType::Health | FrameType::Stats => self.on_answer(f),
            FrameType::Stream => self.on_stream_item(f, cx),
            FrameType::Ack => {
                if let Some(Slot::Unary(tx)) = self.take(f.id) {
                    let _ = tx.send(Ok(Reply {
                        headers: Headers::new(),
                        payload: Bytes::new(),
                    }));
                }
            }
            FrameType::Event => self.on_event(f),
            FrameType::Credit if f.aux == 0 => self.on_credit(&f),
            FrameType::Error if f.id == 0 && f.aux != 0 => self.on_subscription_ended(&f),
            FrameType::Error => self.on_error(f),
            FrameType::Close => self.on_close(&f, cx),
            other => {
                cx.send(&Frame::error(
                    f.id,
                    Status::UNEXPECTED_FRAME,
                    &format!("a client does not accept {}", other.name()),
                ));
            }
        }
    }

    fn on_command(&mut self, c: Option<Cmd>, cx: &mut Ctx<'_>) {
        match c {
            Some(Cmd::Call(c)) => {
                let CallCmd {
                    id,
                    frame,
                    slot,
                    deadline,
                } = *c;
                if frame.payload.len() > cx.limits().max_payload as usize {
                    slot.fail(payload_too_large(
                        frame.payload.len(),
                        cx.limits().max_payload,
                    ));
                    return;
                }
                let headers = frame.headers.as_bytes().len();
                if headers > cx.limits().max_headers as usize {
                    slot.fail(headers_too_large(headers, cx.limits().max_headers));
                    return;
                }
                cx.send(&frame);
                let deadline = deadline.map(|d| match d {
                    Due::At(t) => t,
                    Due::After(left) => *self.now.get_or_insert_with(Instant::now) + left,
                });
                self.pending.insert(id, (slot, deadline));
                if let Some(d) = deadline {
                    self.deadlines.note(d);
                }
            }
            Some(Cmd::Send(f)) => {
                if f.frame_type != FrameType::Stream || self.pending.contains_key(&f.id) {
                    cx.send(&f);
                }
            }
            Some(Cmd::Encoded(b)) => {
                cx.send_encoded(b);
                // Calls among these frames count their deadlines from now.
                if let Some(d) = self.calls.as_ref().and_then(|c| c.stamp()) {
                    self.deadlines.note(d);
                }
            }
            Some(Cmd::Cancel(id)) => {
                if let Some(slot) = self.take(id) {
                    cx.send(&Frame::cancel(id));
                    slot.fail(Error::new(Status::CANCELLED, "cancelled by the caller"));
                }
            }
            Some(Cmd::Subscribe { sid, tx }) => {
                self.subs.insert(sid, tx);
            }
            Some(Cmd::DropSub(sid)) => {
                self.subs.remove(&sid);
            }
            Some(Cmd::Close) | None => cx.close(Status::OK, "client closed"),
        }
    }

    fn on_turn(&mut self) {
        self.now = None;
    }

    fn on_closed(&mut self, why: &Error) {
        let e = Error::connection_lost(why.message());
        self.deadlines.clear();
        for (_, (slot, _)) in self.pending.drain() {
            slot.fail(e.clone());
        }
        if let Some(calls) = &self.calls {
            calls.close(&e);
        }
    }

    fn poll_outbound(&mut self, cx: &mut Ctx<'_>) -> bool {
        let mut progress = false;
        // The queue is asked under the table's lock: see `crate::client::queue` on order.
        if let Some(t) = self
            .calls
            .as_ref()
            .and_then(|c| c.take(cx.waker(), || cx.commands_waiting()))
        {
            cx.send_encoded(t.bytes);
            if let Some(d) = t.earliest {
                self.deadlines.note(d);
            }
            progress = true;
        }
        let Some(now) = self.deadlines.due(cx.waker()) else {
            return progress;
        };
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, d))| d.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            if let Some(slot) = self.take(*id) {
                cx.send(&Frame::cancel(*id));
                slot.fail(Error::new(Status::TIMEOUT, "deadline exceeded"));
            }
        }
        let mut next = self.pending.values().filter_map(|(_, d)| *d).min();
        if let Some(calls) = &self.calls {
            let (expired, later) = calls.expire(now);
            for id in expired {
                cx.send(&Frame::cancel(id));
            }
            next = match (next, later) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.deadlines.swept(next);
        true
    }
}
