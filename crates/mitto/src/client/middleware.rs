//! Client middleware: the chain every unary call passes through.

use super::call_parts::{OutgoingCall, Reply};
use super::Client;
use crate::error::Result;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// Client middleware: wraps every unary call (auth headers, metrics, logging, ...). For a
/// change or check that needs no `await`, [`ClientOptions::interceptor`](crate::ClientOptions::interceptor) takes a closure.
pub trait ClientMiddleware: Send + Sync + 'static {
    /// Handles the call, usually by passing it on with `next.run(call)`.
    fn call<'a>(&'a self, call: OutgoingCall, next: ClientNext<'a>)
        -> BoxFuture<'a, Result<Reply>>;
}

/// The rest of the client middleware chain.
pub struct ClientNext<'a> {
    pub(super) client: &'a Client,
    pub(super) rest: &'a [Arc<dyn ClientMiddleware>],
}

impl<'a> ClientNext<'a> {
    /// Passes the call on.
    pub fn run(self, call: OutgoingCall) -> BoxFuture<'a, Result<Reply>> {
        match self.rest.split_first() {
            Some((m, rest)) => m.call(
                call,
                ClientNext {
                    client: self.client,
                    rest,
                },
            ),
            None => Box::pin(self.client.unary(call)),
        }
    }
}

/// A closure run before every unary call (see [`ClientOptions::interceptor`](crate::ClientOptions::interceptor)).
pub(super) struct ClientInterceptor<F>(pub(super) F);

impl<F> ClientMiddleware for ClientInterceptor<F>
where
    F: Fn(&mut OutgoingCall) -> Result<()> + Send + Sync + 'static,
{
    fn call<'a>(
        &'a self,
        mut call: OutgoingCall,
        next: ClientNext<'a>,
    ) -> BoxFuture<'a, Result<Reply>> {
        match (self.0)(&mut call) {
            Ok(()) => next.run(call),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}
