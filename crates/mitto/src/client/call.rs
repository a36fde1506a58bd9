//! Unary calls: the call futures, the fast path through the call table, the general path
//! (middleware, retries), Protobuf calls (serde calls are in `typed_call.rs`).

use super::call_parts::{CallOptions, OutgoingCall, Reply};
use super::calls::Calls;
use super::cmd::{CallCmd, Slot};
use super::frames::{deadline_only, headers_too_large, payload_too_large, request_of};
use super::publish::{cached_subject, SubjectUse};
use super::{Client, ClientNext, Cmd, Due, State};
use crate::codec::{decode_proto, encode_proto, PROTOBUF};
use crate::error::{Error, Result};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use mitto_proto::{Flags, Frame, FrameRef, FrameType, Headers, Status, Subject, WellKnown};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// The future of [`Client::call`]: the answer's payload.
#[must_use = "a call is sent when its future is first polled"]
pub struct Call<'a>(CallWith<'a>);

impl Future for Call<'_> {
    type Output = Result<Bytes>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Bytes>> {
        Pin::new(&mut self.0).poll(cx).map_ok(|r| r.payload)
    }
}

impl fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The future of [`Client::call_with`]: the answer's headers and payload. Small (it holds
/// the call's id and the receiving end of its answer), so that many calls in flight cost
/// little to keep and to move.
#[must_use = "a call is sent when its future is first polled"]
pub struct CallWith<'a> {
    client: &'a Client,
    method: &'a str,
    state: CallState<'a>,
}

pub(super) enum CallState<'a> {
    /// Not polled yet.
    Start(Bytes, CallOptions),
    /// Written for the connection's driver, the answer left in its table; CANCEL goes out if
    /// the future is dropped in this state.
    Table {
        id: u64,
        calls: TableRef<'a>,
        timeout: Duration,
    },
    /// On the connection; CANCEL goes out if the future is dropped in this state.
    Sent {
        id: u64,
        rx: oneshot::Receiver<Result<Reply>>,
        timeout: Duration,
    },
    /// The general path (middleware, reconnecting, a full queue, retries).
    Slow(BoxFuture<'a, Result<Reply>>),
    Done,
}

impl fmt::Debug for CallWith<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            CallState::Start(..) => "not sent",
            CallState::Sent { .. } | CallState::Table { .. } => "sent",
            CallState::Slow(_) => "in progress",
            CallState::Done => "done",
        };
        f.debug_struct("Call")
            .field("method", &self.method)
            .field("state", &state)
            .finish()
    }
}

impl Future for CallWith<'_> {
    type Output = Result<Reply>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Reply>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                CallState::Start(..) => {
                    let CallState::Start(payload, options) =
                        std::mem::replace(&mut this.state, CallState::Done)
                    else {
                        continue;
                    };
                    this.state = this.client.start_call(this.method, payload, options, cx);
                    if let CallState::Table { .. } = this.state {
                        // Sent, with this task's waker in the table: nothing to look at yet.
                        return Poll::Pending;
                    }
                }
                CallState::Table { id, calls, timeout } => {
                    let answer = ready!(calls.poll(*id, cx));
                    let timeout = *timeout;
                    this.state = CallState::Done;
                    return Poll::Ready(named_timeout(answer, this.method, timeout));
                }
                CallState::Sent { rx, timeout, .. } => {
                    let answer = ready!(Pin::new(rx).poll(cx)).unwrap_or_else(|_| {
                        Err(Error::connection_lost("connection closed during the call"))
                    });
                    let timeout = *timeout;
                    this.state = CallState::Done;
                    return Poll::Ready(named_timeout(answer, this.method, timeout));
                }
                CallState::Slow(f) => {
                    let r = ready!(f.as_mut().poll(cx));
                    this.state = CallState::Done;
                    return Poll::Ready(r);
                }
                CallState::Done => {
                    return Poll::Ready(Err(Error::new(
                        Status::INTERNAL,
                        "a call's future was polled after it finished",
                    )))
                }
            }
        }
    }
}

impl Drop for CallWith<'_> {
    fn drop(&mut self) {
        if let CallState::Table { id, calls, .. } = &self.state {
            calls.cancel(*id);
            return;
        }
        if let CallState::Sent { id, .. } = self.state {
            // The call went out on the connection that is up now, or on one that is gone
            // (whose calls failed with it; the new one ignores an unknown id).
            if let State::Up(c) = &*self.client.inner.shared.state.borrow() {
                let _ = c.ctl.send(Cmd::Cancel(id));
            }
        }
    }
}

/// A call's answer, its connection's own TIMEOUT (not a remote one) named after the method and
/// the deadline it missed.
pub(super) fn named_timeout(
    answer: Result<Reply>,
    method: &str,
    timeout: Duration,
) -> Result<Reply> {
    match answer {
        Err(e) if e.status() == Status::TIMEOUT && !e.is_remote() => Err(Error::new(
            Status::TIMEOUT,
            format!("{method} exceeded its deadline of {timeout:?}"),
        )),
        r => r,
    }
}

/// The table a call was started in: the first connection's (borrowed from the client, no
/// reference count per call) or a later one's.
pub(super) enum TableRef<'a> {
    First(&'a Calls),
    Later(Arc<Calls>),
}

impl std::ops::Deref for TableRef<'_> {
    type Target = Calls;
    fn deref(&self) -> &Calls {
        match self {
            TableRef::First(c) => c,
            TableRef::Later(c) => c,
        }
    }
}

/// Fails a call's pending state (sends CANCEL) if the call's future is dropped before its end.
pub(super) struct CancelGuard {
    pub(super) id: u64,
    pub(super) ctl: mpsc::UnboundedSender<Cmd>,
    pub(super) armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.ctl.send(Cmd::Cancel(self.id));
        }
    }
}

impl Client {
    /// The REQUEST of call `id`, with `left` as its deadline. The method's subject comes from
    /// the client's last-called cache, and the common headers (only the default deadline) are
    /// made once per client.
    pub(super) fn request_frame(
        &self,
        id: u64,
        method: &str,
        payload: Bytes,
        opts: &CallOptions,
        left: Duration,
    ) -> Result<Frame> {
        let (subject, headers) = self.request_parts(method, opts, left)?;
        Ok(request_of(id, subject, headers, payload, opts))
    }

    /// The subject and headers of a REQUEST calling `method` with `left` until its deadline.
    fn request_parts(
        &self,
        method: &str,
        opts: &CallOptions,
        left: Duration,
    ) -> Result<(Subject, Headers)> {
        let subject = cached_subject(SubjectUse::Method, method)?;
        let headers = match &opts.headers {
            Some(h) => h.to_builder().deadline(left).build(),
            None if left == self.opts().timeout => self.inner.shared.default_deadline.clone(),
            None => deadline_only(left),
        };
        Ok((subject, headers))
    }

    /// Calls `method` with raw bytes and returns the response payload.
    ///
    /// Nothing is sent until the future is first polled; dropping it before the answer sends
    /// CANCEL.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new()
    /// #     .route("echo", |req: mitto::Request| async move { Ok(req.payload().clone()) })
    /// #     .bind("mem://app")
    /// #     .await?;
    /// let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// assert_eq!(client.call("echo", "hello").await?, "hello");
    /// # Ok(()) }
    /// ```
    pub fn call<'a>(&'a self, method: &'a str, payload: impl Into<Bytes>) -> Call<'a> {
        Call(self.call_with(method, payload, CallOptions::default()))
    }

    /// Calls `method` with per-call options; returns headers and payload.
    ///
    /// Nothing is sent until the future is first polled; dropping it before the answer sends
    /// CANCEL.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new()
    /// #     .route("whoami", |req: mitto::Request| async move {
    /// #         Ok(req.headers().get_custom("tenant").unwrap_or_default().to_vec())
    /// #     })
    /// #     .bind("mem://app")
    /// #     .await?;
    /// let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// use mitto::{CallOptions, Headers};
    /// use std::time::Duration;
    ///
    /// let headers = Headers::builder().insert_custom("tenant", "acme")?.build();
    /// let opts = CallOptions::new().timeout(Duration::from_secs(2)).headers(headers);
    /// let reply = client.call_with("whoami", "", opts).await?;
    /// assert_eq!(reply.payload, "acme");
    /// # Ok(()) }
    /// ```
    pub fn call_with<'a>(
        &'a self,
        method: &'a str,
        payload: impl Into<Bytes>,
        options: CallOptions,
    ) -> CallWith<'a> {
        CallWith {
            client: self,
            method,
            state: CallState::Start(payload.into(), options),
        }
    }

    /// The first step of a call: sends it on the connection now when nothing stands in the
    /// way (connected, room in the queue, no middleware, no retries); otherwise the general
    /// path, boxed.
    // Over 80 lines: the call table, the lane and the command queue are chosen here, in one
    // place, with the frame's parts moved (not copied) to whichever takes it.
    fn start_call<'a>(
        &'a self,
        method: &'a str,
        payload: Bytes,
        options: CallOptions,
        cx: &Context<'_>,
    ) -> CallState<'a> {
        let mut payload = payload;
        if self.opts().middleware.is_empty() && !options.idempotent {
            let state;
            let up = match self.inner.first_conn() {
                Some(c) => Some(c),
                None => {
                    state = self.inner.shared.state.borrow();
                    match &*state {
                        State::Up(c) => Some(c),
                        _ => None,
                    }
                }
            };
            if let Some(c) = up {
                let timeout = options.timeout.unwrap_or(self.opts().timeout);
                // The id comes from the call table, or from the client's counter below.
                let (subject, headers) = match self.request_parts(method, &options, timeout) {
                    Ok(parts) => parts,
                    Err(e) => return CallState::Slow(Box::pin(std::future::ready(Err(e)))),
                };
                if let Some(calls) = c.calls.as_ref().filter(|_| !options.urgent) {
                    let max = c.agreed.limits.max_payload;
                    if payload.len() > max as usize {
                        let e = payload_too_large(payload.len(), max);
                        return CallState::Slow(Box::pin(std::future::ready(Err(e))));
                    }
                    let (len, max) = (headers.as_bytes().len(), c.agreed.limits.max_headers);
                    if len > max as usize {
                        let e = headers_too_large(len, max);
                        return CallState::Slow(Box::pin(std::future::ready(Err(e))));
                    }
                    // Encoded from its parts, without a frame built and dropped.
                    let request = FrameRef {
                        frame_type: FrameType::Request,
                        flags: Flags::empty(),
                        kind: options.kind,
                        id: 0,
                        aux: 0,
                        status: Status::OK,
                        subject: &subject,
                        headers: &headers,
                        payload: &payload,
                    };
                    if let Some(id) = calls.start(request, timeout, cx) {
                        let calls = match self.inner.first.calls.as_deref() {
                            Some(first) if std::ptr::eq(first, &**calls) => TableRef::First(first),
                            _ => TableRef::Later(calls.clone()),
                        };
                        return CallState::Table { id, calls, timeout };
                    }
                }
                let mut frame = request_of(0, subject, headers, payload, &options);
                let id = self.next_id();
                frame.id = id;
                let (tx, rx) = oneshot::channel();
                let cmd = Cmd::call(CallCmd {
                    id,
                    frame,
                    slot: Slot::Unary(tx),
                    deadline: Some(Due::After(timeout)),
                });
                // On an in-process link the lane; on a socket (a call the table refused: full,
                // or URGENT) the command queue, behind what was written into the table before
                // it (see `crate::client::queue`).
                let sent = match &c.lane {
                    Some(lane) => match lane.push(cmd) {
                        Ok(()) => Ok(()),
                        Err(cmd) => c.cmds.try_send(cmd),
                    },
                    None => c.cmds.try_send(cmd),
                };
                match sent {
                    Ok(()) => return CallState::Sent { id, rx, timeout },
                    Err(
                        mpsc::error::TrySendError::Full(Cmd::Call(c))
                        | mpsc::error::TrySendError::Closed(Cmd::Call(c)),
                    ) => payload = c.frame.payload,
                    Err(_) => {
                        return CallState::Slow(Box::pin(std::future::ready(Err(Error::new(
                            Status::INTERNAL,
                            "the call was lost on its way",
                        )))))
                    }
                }
            }
        }
        CallState::Slow(Box::pin(self.call_slow(method, payload, options)))
    }

    /// A call through the middleware, or one that waits for the connection or for room in
    /// its queue, or one that is retried.
    async fn call_slow(&self, method: &str, payload: Bytes, options: CallOptions) -> Result<Reply> {
        if self.opts().middleware.is_empty() {
            return self.unary_parts(method, payload, &options).await;
        }
        let call = OutgoingCall {
            method: method.to_owned(),
            options,
            payload,
        };
        ClientNext {
            client: self,
            rest: &self.opts().middleware,
        }
        .run(call)
        .await
    }

    pub(super) async fn unary(&self, call: OutgoingCall) -> Result<Reply> {
        self.unary_parts(&call.method, call.payload, &call.options)
            .await
    }

    // Over 80 lines: one attempt (wait for the connection, send, await the answer, cancel on
    // drop) and the retry of an idempotent call after a lost connection, in one loop.
    async fn unary_parts(
        &self,
        method: &str,
        payload: Bytes,
        options: &CallOptions,
    ) -> Result<Reply> {
        let timeout = options.timeout.unwrap_or(self.opts().timeout);
        let deadline = Instant::now() + timeout;
        let mut attempt = 0;
        loop {
            let conn = if attempt == 0 {
                self.conn_fast(timeout).await?
            } else {
                self.conn(deadline).await?
            };
            let id = self.next_id();
            let left = if attempt == 0 {
                timeout
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let frame = self.request_frame(id, method, payload.clone(), options, left)?;
            let (tx, rx) = oneshot::channel();
            let mut guard = CancelGuard {
                id,
                ctl: conn.ctl.clone(),
                armed: true,
            };
            // The connection's reactor enforces the deadline (one timer per connection), so
            // the common path arms no timer per call.
            let cmd = Cmd::call(CallCmd {
                id,
                frame,
                slot: Slot::Unary(tx),
                deadline: Some(Due::At(deadline)),
            });
            let sent = match conn.cmds.try_send(cmd) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(false),
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    let wait = Box::pin(tokio::time::timeout_at(deadline, conn.cmds.send(cmd)));
                    match wait.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err(false),
                        Err(_) => Err(true),
                    }
                }
            };
            let outcome = match sent {
                Err(true) => {
                    guard.armed = false;
                    return Err(Error::new(
                        Status::TIMEOUT,
                        format!("{method} timed out waiting to be sent"),
                    )
                    .retryable());
                }
                Err(false) => Err(Error::connection_lost(
                    "connection closed before the call was sent",
                )),
                Ok(()) => match rx.await {
                    Ok(Err(e)) if e.status() == Status::TIMEOUT && !e.is_remote() => {
                        guard.armed = false;
                        return Err(Error::new(
                            Status::TIMEOUT,
                            format!("{method} exceeded its deadline of {timeout:?}"),
                        ));
                    }
                    Ok(r) => r,
                    Err(_) => Err(Error::connection_lost("connection closed during the call")),
                },
            };
            guard.armed = false;
            match outcome {
                Err(e)
                    if e.status() == Status::UNAVAILABLE
                        && !e.is_remote()
                        && options.idempotent
                        && attempt < self.opts().max_retries =>
                {
                    attempt += 1;
                    tracing::debug!(%method, attempt, "retrying idempotent call after a lost connection");
                }
                other => return other,
            }
        }
    }

    /// Calls `method` with a Protobuf message and decodes the Protobuf answer. The request is
    /// taken by value, as in [`Client::call_typed`], so the future borrows only the client and
    /// the method name.
    ///
    /// ```
    /// # #[derive(Clone, PartialEq, prost::Message)]
    /// # struct Num {
    /// #     #[prost(int64, tag = "1")]
    /// #     n: i64,
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new()
    /// #     .route_proto("num.double", |x: Num| async move { Ok(Num { n: x.n * 2 }) })
    /// #     .bind("mem://app")
    /// #     .await?;
    /// let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// // Num: a prost message (#[derive(prost::Message)]) with an int64 field `n`.
    /// let doubled: Num = client.call_proto("num.double", Num { n: 21 }).await?;
    /// assert_eq!(doubled.n, 42);
    /// # Ok(()) }
    /// ```
    pub async fn call_proto<Req, Resp>(&self, method: &str, req: Req) -> Result<Resp>
    where
        Req: prost::Message + 'static,
        Resp: prost::Message + Default,
    {
        let headers = Headers::builder()
            .insert(WellKnown::ContentType, PROTOBUF)?
            .build();
        let reply = self
            .call_with(
                method,
                encode_proto(&req),
                CallOptions::new().headers(headers),
            )
            .await?;
        decode_proto(&reply.payload)
    }
}
