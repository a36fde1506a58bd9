//! Server middleware: the chain every call passes through before its handler.
//!
//! With middleware, a call that ends before its handler finishes (the caller's CANCEL, its
//! deadline, a broken request stream) stops the handler only: the handler's future is dropped
//! and `next.run(req)` answers the error the caller was sent, so that the middleware sees how
//! the call ended. Its own answer then goes nowhere (the caller has one already), and until it
//! returns it counts against the connection's `max_calls_per_connection`. Without middleware
//! the handler's future is simply dropped. When the connection itself closes, every call's
//! future is dropped with it (there is nobody left to answer).

use super::router::Handler;
use super::{Request, Response, Server};
use crate::error::{Error, Result};
use futures_util::future::{AbortRegistration, Abortable, Aborted, BoxFuture};
use mitto_proto::Status;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// Server middleware: wraps every call (auth checks, logging, metrics, ...); each middleware
/// runs the rest of the chain, and finally the handler, through [`Next::run`].
///
/// It runs for every REQUEST the server admits, a method it does not serve included (the end
/// of the chain then answers METHOD_NOT_FOUND), so an auth check answers before a caller learns
/// which methods exist. When the call is cancelled or its deadline passes, `next.run(req)`
/// answers CANCELLED or TIMEOUT (the handler is stopped) rather than the middleware's future
/// being dropped. For a check that needs no `await`, [`Server::interceptor`] takes a closure.
///
/// ```
/// use mitto::{BoxFuture, Middleware, Next, Request, Response, Result};
///
/// struct Log;
/// impl Middleware for Log {
///     fn call<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Result<Response>> {
///         Box::pin(async move {
///             let method = req.method().to_owned();
///             let r = next.run(req).await;
///             tracing::info!(%method, status = ?r.as_ref().err().map(|e| e.status()), "call");
///             r
///         })
///     }
/// }
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Handles the call, usually by passing it on with `next.run(req)`.
    fn call<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Result<Response>>;
}

/// How a call ended before its handler finished: the error its caller was sent.
pub(super) type Ended = Arc<OnceLock<Error>>;

/// What stops the handler at the end of the chain when its call ends early.
pub(super) struct HandlerEnd {
    pub(super) registration: AbortRegistration,
    pub(super) ended: Ended,
}

/// The rest of the server middleware chain, ending at the handler.
pub struct Next<'a> {
    pub(super) handler: &'a Handler,
    pub(super) rest: &'a [Arc<dyn Middleware>],
    pub(super) end: Option<HandlerEnd>,
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("remaining", &self.rest.len())
            .finish()
    }
}

impl<'a> Next<'a> {
    /// Passes the call on. Answers the handler's result, or the error the caller was sent when
    /// the call ended first (CANCELLED, TIMEOUT, ...).
    pub fn run(self, req: Request) -> BoxFuture<'a, Result<Response>> {
        match self.rest.split_first() {
            Some((m, rest)) => m.call(
                req,
                Next {
                    handler: self.handler,
                    rest,
                    end: self.end,
                },
            ),
            None => {
                let handler = (self.handler)(req);
                let Some(end) = self.end else {
                    return handler;
                };
                Box::pin(async move {
                    match Abortable::new(handler, end.registration).await {
                        Ok(r) => r,
                        Err(Aborted) => Err(end.ended.get().cloned().unwrap_or_else(|| {
                            Error::new(Status::CANCELLED, "the call ended before its handler")
                        })),
                    }
                })
            }
        }
    }
}

/// A closure run before the handler (see [`Server::interceptor`]).
struct Interceptor<F>(F);

impl<F> Middleware for Interceptor<F>
where
    F: Fn(&mut Request) -> Result<()> + Send + Sync + 'static,
{
    fn call<'a>(&'a self, mut req: Request, next: Next<'a>) -> BoxFuture<'a, Result<Response>> {
        match (self.0)(&mut req) {
            Ok(()) => next.run(req),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl Server {
    /// Adds a closure that sees every call before its handler, as middleware that needs no
    /// `await` (tonic's interceptor): it may refuse the call with an [`Error`] (its status and
    /// message go to the caller, and the handler does not run) or change the request (its
    /// headers). Like all middleware it also runs for methods the server does not serve, so a
    /// caller that fails the check never learns which methods exist.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{CallOptions, Client, ClientOptions, Error, Headers, Request, Server, Status};
    ///
    /// let server = Server::new()
    ///     .interceptor(|req: &mut Request| match req.headers().get_str("tenant") {
    ///         Some(_) => Ok(()),
    ///         None => Err(Error::new(Status::UNAUTHORIZED, "no tenant")),
    ///     })
    ///     .route("echo", |req: Request| async move { Ok(req.payload().clone()) })
    ///     .bind("mem://interceptor-doc")
    ///     .await?;
    /// let client = Client::connect(server.local_url(), ClientOptions::new()).await?;
    /// let refused = client.call("echo", "hi").await.unwrap_err();
    /// assert_eq!(refused.status(), Status::UNAUTHORIZED);
    /// let unknown = client.call("no.such.method", "hi").await.unwrap_err();
    /// assert_eq!(unknown.status(), Status::UNAUTHORIZED);
    ///
    /// let tenant = CallOptions::new().headers(Headers::new().with("tenant", "acme"));
    /// let reply = client.call_with("echo", "hi", tenant).await?;
    /// assert_eq!(reply.payload, "hi");
    /// client.close().await;
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn interceptor<F>(self, f: F) -> Server
    where
        F: Fn(&mut Request) -> Result<()> + Send + Sync + 'static,
    {
        self.middleware(Interceptor(f))
    }
}
