//! Middleware and interceptors over a real server: closures that check or change calls on both
//! sides, middleware that answers before METHOD_NOT_FOUND, and middleware that sees how a
//! cancelled or timed-out call ended.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{client_options, serve, server_options, Kind};
use mitto::{
    BoxFuture, CallOptions, Client, Error, Headers, Middleware, Next, OutgoingCall, Request,
    RequestStream, Response, Result, Server, Status,
};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Sets a flag when dropped: shows that a handler was stopped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn tenant() -> CallOptions {
    CallOptions::new().headers(Headers::new().with("tenant", "acme"))
}

/// Refuses calls without a `tenant` header; names the tenant for the handler.
fn require_tenant(req: &mut Request) -> Result<()> {
    let Some(t) = req.headers().get_str("tenant") else {
        return Err(Error::new(Status::UNAUTHORIZED, "no tenant"));
    };
    let seen = format!("checked {t}");
    let h = req.headers().clone().with("checked", seen);
    req.set_headers(h);
    Ok(())
}

/// A server whose calls need a tenant: `whoami` answers what the interceptor wrote, `sum` is
/// client-streaming.
fn guarded(kind: Kind, handled: Arc<AtomicU32>) -> Server {
    Server::with_options(server_options(kind))
        .interceptor(require_tenant)
        .route("whoami", move |req: Request| {
            handled.fetch_add(1, Ordering::SeqCst);
            async move {
                let checked = req.headers().get_str("checked").unwrap_or("").to_owned();
                Ok(Response::new(checked.clone()).with_headers(Headers::new().with("by", checked)))
            }
        })
        .route_client_stream(
            "sum",
            |_req: Request, mut items: RequestStream| async move {
                let mut n = 0u32;
                while items.next().await.is_some() {
                    n += 1;
                }
                Ok(n.to_string())
            },
        )
}

async fn interceptor_refuses_before_the_handler(kind: Kind) {
    let handled = Arc::new(AtomicU32::new(0));
    let srv = serve(kind, guarded(kind, handled.clone())).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let e = c.call("whoami", "").await.unwrap_err();
    assert_eq!(e.status(), Status::UNAUTHORIZED);
    assert_eq!(e.message(), "no tenant");
    assert_eq!(handled.load(Ordering::SeqCst), 0, "the handler never ran");
    let r = c.call_with("whoami", "", tenant()).await.unwrap();
    assert_eq!(r.payload, "checked acme");
    assert_eq!(r.headers.get_str("by"), Some("checked acme"));
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    srv.shutdown().await;
}

async fn middleware_answers_before_method_not_found(kind: Kind) {
    let srv = serve(kind, guarded(kind, Arc::default())).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    // Unknown methods: the interceptor answers first; past it, METHOD_NOT_FOUND.
    let e = c.call("no.such", "").await.unwrap_err();
    assert_eq!(e.status(), Status::UNAUTHORIZED, "{e}");
    let e = c.call_with("no.such", "", tenant()).await.unwrap_err();
    assert_eq!(e.status(), Status::METHOD_NOT_FOUND, "{e}");
    // The same for a stream opened on an unknown method; its items are taken, not refused.
    let (mut sink, reply) = c.client_stream("no.such.stream").await.unwrap();
    let _ = sink.send("x").await;
    assert_eq!(reply.await.unwrap_err().status(), Status::UNAUTHORIZED);
    // And for the wrong call shape, which would say that the method exists.
    let e = c.call("sum", "").await.unwrap_err();
    assert_eq!(e.status(), Status::UNAUTHORIZED, "{e}");
    let e = c.call_with("sum", "", tenant()).await.unwrap_err();
    assert_eq!(e.status(), Status::BAD_REQUEST, "{e}");
    // The connection goes on serving.
    assert_eq!(
        c.call_with("whoami", "", tenant()).await.unwrap().payload,
        "checked acme"
    );
    srv.shutdown().await;
}

/// Reports the status every call ended with, as `next.run` answered it.
struct Outcomes(mpsc::Sender<Status>);
impl Middleware for Outcomes {
    fn call<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Result<Response>> {
        Box::pin(async move {
            let r = next.run(req).await;
            let status = r.as_ref().map_or_else(|e| e.status(), |_| Status::OK);
            let _ = self.0.send(status).await;
            r
        })
    }
}

/// A server whose `block` handler never answers, with [`Outcomes`] around it.
fn observed(
    kind: Kind,
    started: Arc<Notify>,
    dropped: Arc<AtomicBool>,
) -> (Server, mpsc::Receiver<Status>) {
    let (tx, rx) = mpsc::channel(8);
    let server = Server::with_options(server_options(kind))
        .middleware(Outcomes(tx))
        .route("block", move |_req: Request| {
            let started = started.clone();
            let flag = DropFlag(dropped.clone());
            async move {
                let _flag = flag;
                started.notify_one();
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Bytes::new())
            }
        })
        .route(
            "echo",
            |req: Request| async move { Ok(req.payload().clone()) },
        );
    (server, rx)
}

async fn next_outcome(rx: &mut mpsc::Receiver<Status>) -> Status {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the middleware saw the call end")
        .unwrap()
}

async fn middleware_sees_a_cancelled_call_end(kind: Kind) {
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let (server, mut outcomes) = observed(kind, started.clone(), dropped.clone());
    let srv = serve(kind, server).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    assert_eq!(c.call("echo", "x").await.unwrap(), "x");
    assert_eq!(next_outcome(&mut outcomes).await, Status::OK);
    let c2 = c.clone();
    let call = tokio::spawn(async move { c2.call("block", "x").await });
    started.notified().await;
    call.abort();
    assert_eq!(next_outcome(&mut outcomes).await, Status::CANCELLED);
    assert!(dropped.load(Ordering::SeqCst), "the handler was stopped");
    assert_eq!(srv.stats().values["calls_cancelled"], 1);
    assert_eq!(srv.stats().values["calls_in_flight"], 0);
    // The connection goes on serving.
    assert_eq!(c.call("echo", "y").await.unwrap(), "y");
    assert_eq!(next_outcome(&mut outcomes).await, Status::OK);
    srv.shutdown().await;
}

async fn middleware_sees_a_timed_out_call_end(kind: Kind) {
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let (server, mut outcomes) = observed(kind, started, dropped.clone());
    let srv = serve(kind, server).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    // The server sees a 200 ms deadline (the first `deadline` entry counts) while the client
    // waits longer, so that the server's deadline, not the client's CANCEL, ends the call.
    let short = Headers::builder()
        .deadline(Duration::from_millis(200))
        .build();
    let e = c
        .call_with(
            "block",
            "x",
            CallOptions::new()
                .timeout(Duration::from_secs(5))
                .headers(short),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::TIMEOUT);
    assert!(e.is_remote(), "the server's deadline ended it: {e}");
    assert_eq!(next_outcome(&mut outcomes).await, Status::TIMEOUT);
    assert!(dropped.load(Ordering::SeqCst), "the handler was stopped");
    assert_eq!(srv.stats().values["calls_in_flight"], 0);
    srv.shutdown().await;
}

/// After a call fails, waits for `release` before answering.
struct Linger(Arc<Notify>);
impl Middleware for Linger {
    fn call<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Result<Response>> {
        Box::pin(async move {
            let r = next.run(req).await;
            if r.is_err() {
                self.0.notified().await;
            }
            r
        })
    }
}

/// Middleware still running after its call was cancelled counts against the connection's
/// limit of calls in flight, so that lingering chains cannot pile up.
async fn lingering_middleware_counts_as_in_flight(kind: Kind) {
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (server, outcomes) = observed(kind, started.clone(), Arc::default());
    drop(outcomes);
    let server = server
        .middleware(Linger(release.clone()))
        .options(server_options(kind).max_calls_per_connection(1));
    let srv = serve(kind, server).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let c2 = c.clone();
    let call = tokio::spawn(async move { c2.call("block", "x").await });
    started.notified().await;
    call.abort();
    for _ in 0..500 {
        if srv.stats().values["calls_cancelled"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(srv.stats().values["calls_in_flight"], 0);
    let e = c.call("echo", "y").await.unwrap_err();
    assert_eq!(e.status(), Status::BACKPRESSURE_REJECTION, "{e}");
    release.notify_one();
    let mut answered = false;
    for _ in 0..500 {
        if c.call("echo", "y").await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered, "the limit frees once the middleware returns");
    srv.shutdown().await;
}

async fn client_interceptor_changes_and_refuses_calls(kind: Kind) {
    let srv = serve(kind, guarded(kind, Arc::default())).await;
    let opts = client_options(kind).interceptor(|call: &mut OutgoingCall| {
        if call.method.starts_with("admin.") {
            return Err(Error::new(Status::FORBIDDEN, "not from this client"));
        }
        let h = call.options.headers.take().unwrap_or_default();
        call.options.headers = Some(h.with("tenant", "acme"));
        Ok(())
    });
    let c = Client::connect(srv.local_url(), opts).await.unwrap();
    assert_eq!(c.call("whoami", "").await.unwrap(), "checked acme");
    let e = c.call("admin.reset", "").await.unwrap_err();
    assert_eq!(e.status(), Status::FORBIDDEN);
    assert_eq!(e.message(), "not from this client");
    // The refused call never reached the server.
    assert_eq!(srv.stats().values["calls_total"], 1);
    srv.shutdown().await;
}

macro_rules! transport_tests {
    ($($m:ident => $kind:expr),* $(,)?) => {$(
        mod $m {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn interceptor_refuses_before_the_handler() {
                super::interceptor_refuses_before_the_handler($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn middleware_answers_before_method_not_found() {
                super::middleware_answers_before_method_not_found($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn middleware_sees_a_cancelled_call_end() {
                super::middleware_sees_a_cancelled_call_end($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn middleware_sees_a_timed_out_call_end() {
                super::middleware_sees_a_timed_out_call_end($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn lingering_middleware_counts_as_in_flight() {
                super::lingering_middleware_counts_as_in_flight($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn client_interceptor_changes_and_refuses_calls() {
                super::client_interceptor_changes_and_refuses_calls($kind).await
            }
        }
    )*};
}

transport_tests!(mem => Kind::Mem, tcp => Kind::Tcp);
