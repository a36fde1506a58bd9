//! One incoming call in progress: its handler's future and the RESPONSE it yields.

use super::middleware::{Ended, HandlerEnd};
use super::router::Handler;
use super::shared::Shared;
use super::stats::bump;
use super::{Next, Request, Response};
use crate::error::ERROR_DETAILS_HEADER;
use crate::error::{Error, Result};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::FutureExt;
use mitto_proto::{Frame, Headers, Status, Subject};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

pub(super) struct Call {
    /// Stops the call's task, or with middleware only its handler (see `super::middleware`).
    pub(super) abort: AbortHandle,
    /// With middleware: set to the error the caller was sent when the call ends early.
    pub(super) ended: Option<Ended>,
    pub(super) items: Option<mpsc::Sender<Bytes>>,
    pub(super) credit: Option<Arc<Semaphore>>,
    pub(super) deadline: Option<Instant>,
    pub(super) method: Subject,
}

/// A call's handler, run on the connection's task; yields the call's RESPONSE.
pub(super) type CallFuture = Abortable<CallTask>;

/// A call in progress: the handler's own future (no middleware), or the middleware chain.
/// Both are `Unpin`, so a call can be polled once where it arrives and moved to the running
/// set only if it did not finish at once.
pub(super) enum CallTask {
    Direct(Finishing),
    Chain(Pin<Box<dyn Future<Output = (u64, Frame)> + Send>>),
}

impl Future for CallTask {
    type Output = (u64, Frame);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(u64, Frame)> {
        match self.get_mut() {
            CallTask::Direct(f) => match f.shared.take() {
                Some(shared) => {
                    let r = f.poll_with(&shared, cx);
                    f.shared = Some(shared);
                    r
                }
                // Only a call polled in place has no server of its own; it is never here.
                None => Poll::Ready((
                    f.id,
                    error_response(f.id, &Error::new(Status::INTERNAL, "call lost its server")),
                )),
            },
            CallTask::Chain(f) => f.as_mut().poll(cx),
        }
    }
}

/// A handler's future with what its RESPONSE needs; a panic inside it becomes an
/// EXECUTION_ERROR response.
pub(super) struct Finishing {
    /// Set when the call joins the running set; a call answered at its first poll, in place,
    /// is polled with the reactor's.
    pub(super) shared: Option<Arc<Shared>>,
    pub(super) fut:
        futures_util::future::CatchUnwind<AssertUnwindSafe<BoxFuture<'static, Result<Response>>>>,
    pub(super) id: u64,
    pub(super) method: Subject,
}

impl Finishing {
    pub(super) fn new(
        fut: BoxFuture<'static, Result<Response>>,
        id: u64,
        method: Subject,
    ) -> Finishing {
        Finishing {
            shared: None,
            fut: AssertUnwindSafe(fut).catch_unwind(),
            id,
            method,
        }
    }

    pub(super) fn poll_with(
        &mut self,
        shared: &Shared,
        cx: &mut Context<'_>,
    ) -> Poll<(u64, Frame)> {
        let outcome = ready!(self.fut.poll_unpin(cx));
        let id = self.id;
        Poll::Ready((id, call_frame(shared, outcome, id, &self.method)))
    }
}

impl Call {
    /// Ends the call; `why` is what its caller was sent, when it ended before its handler.
    pub(super) fn end(self, why: Option<&Error>) {
        if let (Some(ended), Some(e)) = (&self.ended, why) {
            let _ = ended.set(e.clone());
        }
        self.abort.abort();
        if let Some(c) = self.credit {
            c.close();
        }
    }
}

pub(super) fn error_response(id: u64, e: &Error) -> Frame {
    let mut f = Frame::response(id, e.status(), e.message().to_owned());
    if let Some(d) = e.details() {
        if let Ok(h) = Headers::builder().insert_custom(ERROR_DETAILS_HEADER, d) {
            f = f.with_headers(h.build());
        }
    }
    f
}

pub(super) async fn run_call(
    shared: Arc<Shared>,
    handler: Handler,
    req: Request,
    id: u64,
    end: HandlerEnd,
) -> (u64, Frame) {
    let method = req.method.clone();
    let server = &shared.server;
    let chain = Next {
        handler: &handler,
        rest: &server.middleware,
        end: Some(end),
    }
    .run(req);
    let outcome = AssertUnwindSafe(chain).catch_unwind().await;
    (id, call_frame(&shared, outcome, id, &method))
}

/// The RESPONSE of a finished call: its result, its error, or its panic.
pub(super) fn call_frame(
    shared: &Shared,
    outcome: std::thread::Result<Result<Response>>,
    id: u64,
    method: &Subject,
) -> Frame {
    let stats = &shared.stats;
    match outcome {
        Ok(Ok(resp)) => {
            bump(&stats.calls_ok);
            Frame::response(id, Status::OK, resp.payload).with_headers(resp.headers)
        }
        Ok(Err(e)) => {
            bump(&stats.calls_failed);
            error_response(id, &e)
        }
        Err(panic) => {
            bump(&stats.handler_panics);
            bump(&stats.calls_failed);
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(method = %method.as_str(), panic = %msg, "handler panicked");
            let e = Error::execution(format!("handler for {} panicked: {msg}", method.as_str()));
            error_response(id, &e)
        }
    }
}
