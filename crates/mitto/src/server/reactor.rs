//! The server side of a connection's driver: requests to handlers, stream items and credit,
//! cancellation, deadlines, drain.

use super::call::{error_response, run_call, Call, CallFuture, CallTask, Finishing};
use super::cmd::Cmd;
use super::middleware::{Ended, HandlerEnd};
use super::router::{Route, Shape};
use super::shared::Shared;
use super::stats::bump;
use super::{PeerInfo, Request, RequestStream, StreamSender};
use crate::conn::{Ctx, Reactor};
use crate::deadlines::Deadlines;
use crate::error::Error;
use crate::INITIAL_STREAM_CREDIT;
use bytes::Bytes;
use futures_util::future::{AbortHandle, Abortable, Aborted};
use futures_util::stream::{FuturesUnordered, StreamExt};
use mitto_proto::{Flags, Frame, FrameType, HealthReport, HealthState, Status};
use rustc_hash::FxHashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

pub(super) struct ServerReactor {
    pub(super) shared: Arc<Shared>,
    /// The time of this turn of the driver, read when a call first needs it.
    pub(super) now: Option<Instant>,
    pub(super) peer: Arc<PeerInfo>,
    pub(super) calls: FxHashMap<u64, Call>,
    pub(super) running: FuturesUnordered<CallFuture>,
    /// Deadlines of the calls that have one, earliest first; one timer for all of them.
    pub(super) deadlines: Deadlines,
    pub(super) tx: mpsc::Sender<Cmd>,
    pub(super) ctl: mpsc::UnboundedSender<Cmd>,
    pub(super) draining: bool,
    pub(super) max_payload: u32,
    pub(super) compression: bool,
}

/// What a request this connection may start now runs: its route, or, for a request that fits
/// no route (an unknown method, the wrong call shape), the error the end of the middleware
/// chain answers.
enum Admitted<'a> {
    Route(&'a Route),
    Misfit(Error),
}

/// What a request this connection may start now runs, or why it may not start.
fn admit<'a>(
    shared: &'a Shared,
    f: &Frame,
    in_flight: usize,
    draining: bool,
) -> Result<Admitted<'a>, Error> {
    if draining {
        return Err(Error::new(Status::UNAVAILABLE, "server is shutting down").retryable());
    }
    if in_flight >= shared.server.opts.max_calls_per_connection {
        return Err(Error::new(
            Status::BACKPRESSURE_REJECTION,
            format!("{in_flight} calls in flight on this connection"),
        )
        .retryable());
    }
    let Some(route) = shared.server.route_of(&f.subject) else {
        return Ok(Admitted::Misfit(Error::new(
            Status::METHOD_NOT_FOUND,
            format!("no method {:?} on this server", f.subject.as_str()),
        )));
    };
    let opened_stream = f.flags.contains(Flags::START);
    if opened_stream != route.shape.client_streams() {
        return Ok(Admitted::Misfit(Error::new(
            Status::BAD_REQUEST,
            if opened_stream {
                format!("{} takes no request stream", f.subject.as_str())
            } else {
                format!(
                    "{} is client-streaming: open it with START",
                    f.subject.as_str()
                )
            },
        )));
    }
    Ok(Admitted::Route(route))
}

/// The route a request that fits none runs through the middleware: its handler answers `e`.
/// Its shape follows the request, so that the items of a stream it opened are taken (and
/// dropped), not refused.
fn misfit_route(e: Error, f: &Frame) -> Route {
    Route {
        shape: if f.flags.contains(Flags::START) {
            Shape::ClientStream
        } else {
            Shape::Unary
        },
        handler: Arc::new(move |_req| Box::pin(std::future::ready(Err(e.clone())))),
        name: None,
    }
}

impl ServerReactor {
    fn reject(&self, id: u64, e: Error, cx: &mut Ctx<'_>) {
        bump(&self.shared.stats.calls_rejected);
        cx.send(&error_response(id, &e));
    }

    fn on_request(&mut self, mut f: Frame, cx: &mut Ctx<'_>) {
        let id = f.id;
        let stats = &self.shared.stats;
        bump(&stats.calls_total);
        if self.calls.contains_key(&id) {
            bump(&stats.protocol_errors);
            cx.send(&Frame::error(
                id,
                Status::PROTOCOL_ERROR,
                "a call with this id is in flight",
            ));
            return;
        }
        // Calls that ended while their middleware still runs count too (`super::middleware`).
        let in_flight = self.calls.len().max(self.running.len());
        let misfit;
        let route = match admit(&self.shared, &f, in_flight, self.draining) {
            Ok(Admitted::Route(route)) => route,
            // With middleware, it answers first (an auth check before METHOD_NOT_FOUND).
            Ok(Admitted::Misfit(e)) if !self.shared.server.middleware.is_empty() => {
                misfit = misfit_route(e, &f);
                &misfit
            }
            Ok(Admitted::Misfit(e)) | Err(e) => return self.reject(id, e, cx),
        };
        let payload = match self.request_payload(&mut f) {
            Ok(p) => p,
            Err(e) => return self.reject(id, e, cx),
        };
        let left = f.headers.deadline();
        let deadline = left.map(|d| *self.now.get_or_insert_with(Instant::now) + d);
        if left.is_some_and(|d| d.is_zero()) {
            bump(&stats.calls_timed_out);
            let e = Error::new(
                Status::TIMEOUT,
                "the deadline passed before the call started",
            );
            return cx.send(&error_response(id, &e));
        }
        let (items, items_tx) = self.request_stream(id, route.shape);
        let (sink, credit) = self.response_stream(id, route.shape);
        let method = route.name.clone().unwrap_or(f.subject);
        let req = Request {
            method,
            headers: f.headers,
            payload,
            kind: f.kind,
            deadline,
            peer: self.peer.clone(),
            items,
            sink,
        };
        let method = req.method.clone();
        let Some((task, handler_end)) = self.start(route, req, id, cx) else {
            return;
        };
        bump(&stats.calls_in_flight);
        let (abort, registration) = AbortHandle::new_pair();
        self.running.push(Abortable::new(task, registration));
        if let Some(d) = deadline {
            self.deadlines.note(d);
        }
        // With middleware an early end stops the handler, not the chain.
        let (abort, ended) = match handler_end {
            Some((handler, ended)) => (handler, Some(ended)),
            None => (abort, None),
        };
        self.calls.insert(
            id,
            Call {
                abort,
                ended,
                items: items_tx,
                credit,
                deadline,
                method,
            },
        );
    }

    /// The request's payload, decompressed if it came compressed.
    fn request_payload(&self, f: &mut Frame) -> Result<Bytes, Error> {
        if !f.flags.contains(Flags::COMPRESSED) {
            return Ok(std::mem::take(&mut f.payload));
        }
        if !self.compression {
            return Err(Error::new(
                Status::UNSUPPORTED_FEATURE,
                "compression was not negotiated",
            ));
        }
        f.decompressed_payload(self.max_payload)
            .map_err(|e| Error::new(e.status(), e.to_string()))
    }

    /// The handler's end of a client-streaming call, and the driver's.
    fn request_stream(
        &self,
        id: u64,
        shape: Shape,
    ) -> (Option<RequestStream>, Option<mpsc::Sender<Bytes>>) {
        if !shape.client_streams() {
            return (None, None);
        }
        let (tx, rx) = mpsc::channel(INITIAL_STREAM_CREDIT as usize);
        let items = RequestStream {
            id,
            rx,
            ctl: self.ctl.clone(),
            consumed: 0,
        };
        (Some(items), Some(tx))
    }

    /// The handler's sender of a server-streaming call, and the client's credit for it.
    fn response_stream(
        &self,
        id: u64,
        shape: Shape,
    ) -> (Option<StreamSender>, Option<Arc<Semaphore>>) {
        if !shape.server_streams() {
            return (None, None);
        }
        let credit = Arc::new(Semaphore::new(INITIAL_STREAM_CREDIT as usize));
        let sink = StreamSender {
            id,
            cmds: self.tx.clone(),
            credit: credit.clone(),
        };
        (Some(sink), Some(credit))
    }

    /// Starts a call's handler (through the middleware, if any) and polls it once; a unary
    /// call that finishes then is answered at once (no entry in the call table, no abort
    /// handle, no place in the running set), else its task comes back for the running set,
    /// with, under middleware, what stops its handler.
    fn start(
        &self,
        route: &Route,
        req: Request,
        id: u64,
        cx: &mut Ctx<'_>,
    ) -> Option<(CallTask, Option<(AbortHandle, Ended)>)> {
        // Handlers run on this connection's task, polled by the driver (no task spawned per
        // call); they wake the driver when they make progress.
        let method = req.method.clone();
        let mut tcx = Context::from_waker(cx.waker());
        if self.shared.server.middleware.is_empty() {
            // The handler's future is made here, so the call's future holds no request.
            let mut f = Finishing::new((route.handler)(req), id, method);
            if route.shape == Shape::Unary {
                if let Poll::Ready((_, frame)) = f.poll_with(&self.shared, &mut tcx) {
                    cx.send(&frame);
                    return None;
                }
            }
            f.shared = Some(self.shared.clone());
            return Some((CallTask::Direct(f), None));
        }
        let (handler, registration) = AbortHandle::new_pair();
        let ended = Ended::default();
        let end = HandlerEnd {
            registration,
            ended: ended.clone(),
        };
        let mut task = CallTask::Chain(Box::pin(run_call(
            self.shared.clone(),
            route.handler.clone(),
            req,
            id,
            end,
        )));
        if route.shape == Shape::Unary {
            if let Poll::Ready((_, frame)) = Pin::new(&mut task).poll(&mut tcx) {
                cx.send(&frame);
                return None;
            }
        }
        Some((task, Some((handler, ended))))
    }

    /// A STREAM item of a client-streaming call: to the handler, within the credit granted.
    fn on_stream_item(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        let Some(call) = self.calls.get_mut(&f.id) else {
            // The call ended while the client was still streaming: not an error.
            return;
        };
        let end = f.flags.contains(Flags::END);
        let violation = match &call.items {
            None => Some(Error::new(
                Status::UNEXPECTED_FRAME,
                "this call takes no stream",
            )),
            Some(_) if end && f.payload.is_empty() => None,
            Some(tx) => match tx.try_send(f.payload) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(_)) => Some(Error::new(
                    Status::PROTOCOL_ERROR,
                    "stream items beyond the granted credit",
                )),
                Err(mpsc::error::TrySendError::Closed(_)) => None,
            },
        };
        if end {
            call.items = None;
        }
        if let Some(e) = violation {
            bump(&self.shared.stats.protocol_errors);
            self.end_early(f.id, &e);
            cx.send(&error_response(f.id, &e));
            self.maybe_close(cx);
        }
    }

    /// A HEALTH query: the report of this server.
    fn on_health(&self, f: &Frame, cx: &mut Ctx<'_>) {
        let report = HealthReport {
            state: if self.draining {
                HealthState::Draining
            } else {
                HealthState::Serving
            },
            uptime_ms: self
                .shared
                .started
                .elapsed()
                .as_millis()
                .min(u64::MAX.into()) as u64,
            server: self.shared.server.opts.conn.name.clone(),
            detail: None,
        };
        match Frame::health_reply(f.id, &report) {
            Ok(r) => cx.send(&r),
            Err(e) => cx.send(&Frame::error(f.id, Status::INTERNAL, &e.to_string())),
        }
    }

    /// Ends a call that finished.
    fn end_call(&mut self, id: u64) -> bool {
        self.end_with(id, None)
    }

    /// Ends a call before its handler finished; `why` is what its caller is sent (and what
    /// `next.run(req)` answers its middleware).
    fn end_early(&mut self, id: u64, why: &Error) -> bool {
        self.end_with(id, Some(why))
    }

    fn end_with(&mut self, id: u64, why: Option<&Error>) -> bool {
        match self.calls.remove(&id) {
            Some(call) => {
                call.end(why);
                self.shared
                    .stats
                    .calls_in_flight
                    .fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    fn maybe_close(&self, cx: &mut Ctx<'_>) {
        if self.draining && self.calls.is_empty() {
            cx.close(Status::OK, "server shutting down");
        }
    }
}

impl Reactor for ServerReactor {
    type Cmd = Cmd;

    fn on_frame(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        match f.frame_type {
            FrameType::Request => self.on_request(f, cx),
            FrameType::Stream => self.on_stream_item(f, cx),
            FrameType::Cancel => {
                let e = Error::new(Status::CANCELLED, "cancelled by the caller");
                if self.end_early(f.id, &e) {
                    bump(&self.shared.stats.calls_cancelled);
                    cx.send(&error_response(f.id, &e));
                    self.maybe_close(cx);
                }
            }
            FrameType::Credit if f.aux == 0 => {
                if let Some(Call {
                    credit: Some(c), ..
                }) = self.calls.get(&f.id)
                {
                    let n = mitto_proto::body::decode_credit(&f.payload).unwrap_or(0) as usize;
                    c.add_permits(n.min(Semaphore::MAX_PERMITS - c.available_permits()));
                }
            }
            FrameType::Health | FrameType::Stats if f.flags.contains(Flags::REPLY) => {
                // The server asks no queries: a report answers nothing of its own.
                bump(&self.shared.stats.protocol_errors);
                cx.send(&Frame::error(
                    f.id,
                    Status::UNEXPECTED_FRAME,
                    &format!("the server sent no {} query", f.frame_type.name()),
                ));
            }
            FrameType::Health => self.on_health(&f, cx),
            FrameType::Stats => {
                let report = self.shared.stats.report(self.shared.started.elapsed());
                match Frame::stats_reply(f.id, &report) {
                    Ok(r) => cx.send(&r),
                    Err(e) => cx.send(&Frame::error(f.id, Status::INTERNAL, &e.to_string())),
                }
            }
            FrameType::Error => {
                tracing::debug!(
                    status = %f.status,
                    reason = %String::from_utf8_lossy(&f.payload),
                    "error from client"
                );
                let e = Error::new(
                    Status::CANCELLED,
                    format!("the caller ended the call with {}", f.status),
                );
                if self.end_early(f.id, &e) {
                    self.maybe_close(cx);
                }
            }
            FrameType::Close => {
                for id in self.calls.keys().copied().collect::<Vec<_>>() {
                    self.end_call(id);
                }
                cx.close(Status::OK, "closing after the client's CLOSE");
            }
            FrameType::Subscribe
            | FrameType::Unsubscribe
            | FrameType::Publish
            | FrameType::Register
            | FrameType::Unregister
            | FrameType::Ack
            | FrameType::Nack
            | FrameType::Credit => {
                bump(&self.shared.stats.protocol_errors);
                cx.send(&Frame::error(
                    f.id,
                    Status::UNSUPPORTED_FEATURE,
                    &format!(
                        "{} needs a broker; this endpoint serves RPC only",
                        f.frame_type.name()
                    ),
                ));
            }
            other => {
                bump(&self.shared.stats.protocol_errors);
                cx.send(&Frame::error(
                    f.id,
                    Status::UNEXPECTED_FRAME,
                    &format!("a server does not accept {}", other.name()),
                ));
            }
        }
    }

    fn on_command(&mut self, c: Option<Cmd>, cx: &mut Ctx<'_>) {
        match c {
            Some(Cmd::Item(f)) if self.calls.contains_key(&f.id) => cx.send(&f),
            Some(Cmd::Item(_)) => {}
            Some(Cmd::Finish(id, f)) => {
                if self.end_call(id) {
                    cx.send(&f);
                }
                self.maybe_close(cx);
            }
            Some(Cmd::Out(f)) => cx.send(&f),
            Some(Cmd::Drain) => {
                self.draining = true;
                self.maybe_close(cx);
            }
            Some(Cmd::Abort) => {
                let e = Error::new(Status::UNAVAILABLE, "server shut down").retryable();
                for id in self.calls.keys().copied().collect::<Vec<_>>() {
                    self.end_early(id, &e);
                    cx.send(&error_response(id, &e));
                }
                cx.close(Status::UNAVAILABLE, "server shut down");
            }
            None => {}
        }
    }

    fn on_turn(&mut self) {
        self.now = None;
    }

    fn poll_outbound(&mut self, cx: &mut Ctx<'_>) -> bool {
        let mut progress = false;
        // Deadlines: one timer for the connection, one sweep when the earliest passes.
        if let Some(now) = self.deadlines.due(cx.waker()) {
            let expired: Vec<u64> = self
                .calls
                .iter()
                .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                let Some(call) = self.calls.get(&id) else {
                    continue;
                };
                let e = Error::new(
                    Status::TIMEOUT,
                    format!(
                        "{} did not finish before its deadline",
                        call.method.as_str()
                    ),
                );
                if self.end_early(id, &e) {
                    bump(&self.shared.stats.calls_timed_out);
                    cx.send(&error_response(id, &e));
                }
            }
            self.deadlines
                .swept(self.calls.values().filter_map(|c| c.deadline).min());
            progress = true;
        }
        // Handlers.
        loop {
            let next = {
                let mut tcx = Context::from_waker(cx.waker());
                self.running.poll_next_unpin(&mut tcx)
            };
            match next {
                Poll::Ready(Some(Ok((id, frame)))) => {
                    let streams = self.calls.get(&id).is_some_and(|c| c.credit.is_some());
                    if streams {
                        // The RESPONSE goes behind the stream items still in the queue.
                        match self.tx.try_send(Cmd::Finish(id, frame)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(cmd)) => {
                                let tx = self.tx.clone();
                                tokio::spawn(async move {
                                    let _ = tx.send(cmd).await;
                                });
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        }
                    } else if self.end_call(id) {
                        cx.send(&frame);
                    }
                    progress = true;
                }
                Poll::Ready(Some(Err(Aborted))) => progress = true,
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if progress {
            self.maybe_close(cx);
        }
        progress
    }

    fn on_closed(&mut self, _why: &Error) {
        for id in self.calls.keys().copied().collect::<Vec<_>>() {
            self.end_call(id);
        }
    }
}
