//! RPC behaviour over every transport: the same test bodies run on mem, tcp, unix and tls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{client_options, serve, server_options, Kind};
use futures_util::future::{join_all, BoxFuture};
use mitto::{
    CallOptions, Client, ClientMiddleware, ClientNext, Codec, Error, Headers, Middleware, Next,
    OutgoingCall, Reply, Request, RequestStream, Response, Server, ServerOptions, Status,
    StreamSender,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Pair {
    a: i64,
    b: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Num {
    #[prost(int64, tag = "1")]
    v: i64,
}

/// Sets a flag when dropped: shows that a handler was aborted.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn calc(kind: Kind) -> Server {
    Server::with_options(server_options(kind))
        .route(
            "echo",
            |req: Request| async move { Ok(req.payload().clone()) },
        )
        .route_typed("calc.add", |p: Pair| async move { Ok(p.a + p.b) })
        .route_typed("calc.div", |p: Pair| async move {
            if p.b == 0 {
                Err(Error::execution("division by zero").with_details("b=0"))
            } else {
                Ok(p.a / p.b)
            }
        })
        .route_proto(
            "calc.square",
            |n: Num| async move { Ok(Num { v: n.v * n.v }) },
        )
        .route("boom", |_req: Request| async move {
            if true {
                panic!("kaboom");
            }
            Ok(Bytes::new())
        })
        .route_server_stream("calc.count", |req: Request, out: StreamSender| async move {
            let n: u32 = req.decode()?;
            for i in 0..n {
                out.send_typed(Codec::Json, &i).await?;
            }
            Ok(())
        })
        .route_client_stream(
            "calc.sum",
            |_req: Request, mut items: RequestStream| async move {
                let mut sum = 0i64;
                while let Some(b) = items.next().await {
                    sum += Codec::Json.decode::<i64>(&b)?;
                }
                Response::encode(Codec::Json, &sum)
            },
        )
        .route_bidi(
            "calc.double",
            |_req: Request, mut items: RequestStream, out: StreamSender| async move {
                while let Some(b) = items.next().await {
                    let v: i64 = Codec::Json.decode(&b)?;
                    out.send_typed(Codec::Json, &(v * 2)).await?;
                }
                Ok(())
            },
        )
}

async fn unary(kind: Kind) {
    let srv = serve(kind, calc(kind)).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    assert_eq!(c.call("echo", "hello").await.unwrap(), Bytes::from("hello"));
    assert_eq!(c.call("echo", Bytes::new()).await.unwrap(), Bytes::new());
    let sum: i64 = c
        .call_typed("calc.add", Pair { a: 2, b: 40 })
        .await
        .unwrap();
    assert_eq!(sum, 42);
    let sq: Num = c.call_proto("calc.square", Num { v: -12 }).await.unwrap();
    assert_eq!(sq.v, 144);
    // MessagePack, chosen by the client's codec and answered in kind.
    let mp = Client::connect(srv.local_url(), client_options(kind).codec(Codec::MsgPack))
        .await
        .unwrap();
    let sum: i64 = mp
        .call_typed("calc.add", Pair { a: -5, b: 3 })
        .await
        .unwrap();
    assert_eq!(sum, -2);
    // A handler's error comes back typed, with its details.
    let e = c
        .call_typed::<_, i64>("calc.div", Pair { a: 1, b: 0 })
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::EXECUTION_ERROR);
    assert_eq!(e.message(), "division by zero");
    assert_eq!(e.details().map(|d| &d[..]), Some(&b"b=0"[..]));
    assert!(e.is_remote() && !e.is_retryable());
    // Bad input to a typed handler is the caller's error.
    let e = c.call("calc.add", "not json").await.unwrap_err();
    assert_eq!(e.status(), Status::BAD_REQUEST);
    let n = c.negotiated().unwrap();
    assert_eq!(n.version.major, 1);
    c.close().await;
    srv.shutdown().await;
}

async fn unknown_method_and_panic(kind: Kind) {
    let srv = serve(kind, calc(kind)).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let e = c.call("nope.nothing", "x").await.unwrap_err();
    assert_eq!(e.status(), Status::METHOD_NOT_FOUND);
    assert!(e.message().contains("nope.nothing"), "{e}");
    let e = c.call("boom", "x").await.unwrap_err();
    assert_eq!(e.status(), Status::EXECUTION_ERROR);
    assert!(e.message().contains("kaboom"), "{e}");
    // The server and the connection keep serving.
    assert_eq!(
        c.call("echo", "still here").await.unwrap(),
        Bytes::from("still here")
    );
    let stats = c.stats().await.unwrap();
    assert_eq!(stats.values["handler_panics"], 1);
    assert!(stats.values["calls_ok"] >= 1);
    let health = c.health().await.unwrap();
    assert_eq!(health.state, mitto::HealthState::Serving);
    srv.shutdown().await;
}

async fn server_streaming(kind: Kind) {
    let srv = serve(kind, calc(kind)).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    // More items than the initial credit: the stream only completes if credit is granted.
    let mut s = c
        .server_stream("calc.count", Codec::Json.encode(&300u32).unwrap())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(item) = s.next().await {
        got.push(Codec::Json.decode::<u32>(&item.unwrap()).unwrap());
    }
    assert_eq!(got, (0..300).collect::<Vec<_>>());
    // A failing stream ends with the error.
    let mut s = c.server_stream("calc.count", "garbage").await.unwrap();
    let e = s.next().await.unwrap().unwrap_err();
    assert_eq!(e.status(), Status::BAD_REQUEST);
    assert!(s.next().await.is_none());
    srv.shutdown().await;
}

async fn client_streaming(kind: Kind) {
    let srv = serve(kind, calc(kind)).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let (mut sink, reply) = c.client_stream("calc.sum").await.unwrap();
    for i in 1..=500i64 {
        sink.send(Codec::Json.encode(&i).unwrap()).await.unwrap();
    }
    sink.finish().await.unwrap();
    let r = reply.await.unwrap();
    assert_eq!(
        Codec::Json.decode::<i64>(&r.payload).unwrap(),
        500 * 501 / 2
    );
    // Opening a unary method as a stream is refused clearly.
    let (_sink, reply) = c.client_stream("echo").await.unwrap();
    assert_eq!(reply.await.unwrap_err().status(), Status::BAD_REQUEST);
    srv.shutdown().await;
}

async fn bidi(kind: Kind) {
    let srv = serve(kind, calc(kind)).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let (mut sink, mut stream) = c.bidi("calc.double").await.unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..200i64 {
            sink.send(Codec::Json.encode(&i).unwrap()).await.unwrap();
        }
        sink.finish().await.unwrap();
    });
    let mut got = Vec::new();
    while let Some(item) = stream.next().await {
        got.push(Codec::Json.decode::<i64>(&item.unwrap()).unwrap());
    }
    writer.await.unwrap();
    assert_eq!(got, (0..200).map(|i| i * 2).collect::<Vec<_>>());
    srv.shutdown().await;
}

fn blocking_server(kind: Kind, started: Arc<Notify>, dropped: Arc<AtomicBool>) -> Server {
    Server::with_options(server_options(kind)).route("block", move |_req: Request| {
        let started = started.clone();
        let flag = DropFlag(dropped.clone());
        async move {
            let _flag = flag;
            started.notify_one();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Bytes::new())
        }
    })
}

async fn cancel_on_drop(kind: Kind) {
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let srv = serve(
        kind,
        blocking_server(kind, started.clone(), dropped.clone()),
    )
    .await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let c2 = c.clone();
    let call = tokio::spawn(async move { c2.call("block", "x").await });
    started.notified().await;
    call.abort();
    wait_for("the handler to be aborted", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    wait_for("the cancel to be counted", || {
        srv.stats().values["calls_cancelled"] == 1
    })
    .await;
    assert_eq!(srv.stats().values["calls_in_flight"], 0);
    srv.shutdown().await;
}

/// A call goes out when its future is first polled, not when it is made; a future dropped
/// before that sends nothing (no call, no CANCEL).
async fn call_is_sent_when_polled(kind: Kind) {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let server = Server::with_options(server_options(kind)).route("count", move |_req: Request| {
        let r = r.clone();
        async move { Ok(Bytes::from(r.fetch_add(1, Ordering::SeqCst).to_string())) }
    });
    let srv = serve(kind, server).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let later = c.call("count", "x");
    let never = c.call("count", "y");
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "nothing sent before a poll");
    drop(never);
    assert_eq!(later.await.unwrap(), Bytes::from("0"));
    assert_eq!(c.call("count", "z").await.unwrap(), Bytes::from("1"));
    let stats = srv.stats();
    assert_eq!(stats.values["calls_total"], 2);
    assert_eq!(stats.values["calls_cancelled"], 0);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    srv.shutdown().await;
}

/// The deadline a handler sees: the client's default timeout (10 s in these tests), a per-call
/// timeout, and the default again when the call carries headers of its own.
async fn deadline_reaches_the_handler(kind: Kind) {
    let server =
        Server::with_options(server_options(kind)).route("left", |req: Request| async move {
            let left = req
                .deadline()
                .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            Ok(Bytes::from(format!(
                "{}",
                left.map_or(0, |l| l.as_millis())
            )))
        });
    let srv = serve(kind, server).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let ms = |b: Bytes| {
        String::from_utf8(b.to_vec())
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    for _ in 0..2 {
        let left = ms(c.call("left", "").await.unwrap());
        assert!(
            (9_000..=10_000).contains(&left),
            "default timeout: {left} ms"
        );
    }
    let one_s = CallOptions::new().timeout(Duration::from_secs(1));
    let left = ms(c.call_with("left", "", one_s).await.unwrap().payload);
    assert!((500..=1_000).contains(&left), "per-call timeout: {left} ms");
    let with_headers = CallOptions::new().headers(
        Headers::builder()
            .insert_custom("x-trace", "t1")
            .unwrap()
            .build(),
    );
    let left = ms(c.call_with("left", "", with_headers).await.unwrap().payload);
    assert!(
        (9_000..=10_000).contains(&left),
        "default with headers: {left} ms"
    );
    srv.shutdown().await;
}

async fn deadline(kind: Kind) {
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let srv = serve(
        kind,
        blocking_server(kind, started.clone(), dropped.clone()),
    )
    .await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let e = c
        .call_with(
            "block",
            "x",
            CallOptions::new().timeout(Duration::from_millis(150)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::TIMEOUT);
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The server stopped working on it too.
    wait_for("the handler to be aborted", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    wait_for("the call to end", || {
        srv.stats().values["calls_in_flight"] == 0
    })
    .await;
    srv.shutdown().await;
}

async fn many_concurrent(kind: Kind) {
    let srv = serve(kind, calc(kind)).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let calls = (0..1000i64).map(|i| {
        let c = c.clone();
        async move {
            c.call_typed::<_, i64>("calc.add", Pair { a: i, b: i })
                .await
        }
    });
    let results = join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), 2 * i as i64);
    }
    assert_eq!(srv.stats().values["connections_total"], 1);
    srv.shutdown().await;
}

/// Large payloads both ways, many at once: the sockets fill up and drain again many times.
async fn large_concurrent(kind: Kind) {
    let srv = serve(kind, calc(kind)).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let calls = (0..16u8).map(|i| {
        let c = c.clone();
        async move {
            let payload = Bytes::from(vec![i; 768 * 1024]);
            let back = c.call("echo", payload.clone()).await;
            (payload, back)
        }
    });
    for (sent, back) in join_all(calls).await {
        assert_eq!(back.unwrap(), sent);
    }
    srv.shutdown().await;
}

async fn oversize(kind: Kind) {
    let opts = server_options(kind).max_payload(1024);
    let srv = serve(kind, calc(kind).options(opts)).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    assert_eq!(c.negotiated().unwrap().limits.max_payload, 1024);
    let e = c.call("echo", vec![7u8; 2000]).await.unwrap_err();
    assert_eq!(e.status(), Status::PAYLOAD_TOO_LARGE);
    assert!(!e.is_retryable());
    // A headers block over the agreed limit (64 KiB) is not sent either, on any transport.
    let max = c.negotiated().unwrap().limits.max_headers as usize;
    let big = Headers::new()
        .with("a", vec![b'x'; max / 2])
        .with("b", vec![b'x'; max / 2]);
    let e = c
        .call_with("echo", "x", CallOptions::new().headers(big))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::PAYLOAD_TOO_LARGE, "{e}");
    assert!(!e.is_remote(), "refused before it was sent: {e}");
    assert_eq!(
        srv.stats().values["calls_total"],
        0,
        "neither call reached the server"
    );
    // The connection survives.
    assert_eq!(c.call("echo", vec![1u8; 1024]).await.unwrap().len(), 1024);
    srv.shutdown().await;
}

async fn reconnect(kind: Kind) {
    let url = common::fresh_url(kind);
    let srv = calc(kind).bind(&url).await.unwrap();
    let url = srv.local_url().to_owned();
    let c = Client::connect(&url, client_options(kind)).await.unwrap();
    assert_eq!(c.call("echo", "1").await.unwrap(), Bytes::from("1"));
    srv.shutdown().await;
    wait_for("the client to notice", || !c.is_connected()).await;
    // A call that is not idempotent fails clearly while the server is gone...
    let e = c
        .call_with(
            "echo",
            "2",
            CallOptions::new().timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    // ...and once the server is back, the client reconnects by itself.
    let srv = calc(kind).bind(&url).await.unwrap();
    let r = c
        .call_with("echo", "3", CallOptions::new().idempotent())
        .await
        .unwrap();
    assert_eq!(r.payload, Bytes::from("3"));
    srv.shutdown().await;
}

async fn graceful_shutdown(kind: Kind) {
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (r2, s2) = (release.clone(), started.clone());
    let server = calc(kind).route("slow", move |_req: Request| {
        let (release, started) = (r2.clone(), s2.clone());
        async move {
            started.notify_one();
            release.notified().await;
            Ok("done")
        }
    });
    let srv = serve(kind, server).await;
    let c = Client::connect(srv.local_url(), client_options(kind).reconnect(false))
        .await
        .unwrap();
    let c2 = c.clone();
    let slow = tokio::spawn(async move { c2.call("slow", "").await });
    started.notified().await;
    let shutdown = tokio::spawn(srv.shutdown());
    // New calls are refused while the one in flight finishes.
    let mut refused = None;
    for _ in 0..200 {
        match c.call("echo", "x").await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("calls are refused during the drain");
    assert_eq!(refused.status(), Status::UNAVAILABLE);
    assert!(refused.is_retryable());
    release.notify_one();
    assert_eq!(slow.await.unwrap().unwrap(), Bytes::from("done"));
    shutdown.await.unwrap();
}

struct RequireHeader;
impl Middleware for RequireHeader {
    fn call<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, mitto::Result<Response>> {
        Box::pin(async move {
            if req.headers().get_custom("tenant").is_none() {
                return Err(Error::new(Status::FORBIDDEN, "no tenant"));
            }
            next.run(req).await
        })
    }
}

struct AddTenant(Arc<AtomicU32>);
impl ClientMiddleware for AddTenant {
    fn call<'a>(
        &'a self,
        mut call: OutgoingCall,
        next: ClientNext<'a>,
    ) -> BoxFuture<'a, mitto::Result<Reply>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let h = call.options.headers.take().unwrap_or_default();
        call.options.headers = Some(
            h.to_builder()
                .insert_custom("tenant", "acme")
                .map(|b| b.build())
                .unwrap_or_default(),
        );
        next.run(call)
    }
}

async fn middleware_and_auth(kind: Kind) {
    let opts: ServerOptions = server_options(kind).token("s3cret");
    let srv = serve(kind, calc(kind).options(opts).middleware(RequireHeader)).await;
    let e = Client::connect(srv.local_url(), client_options(kind).token("wrong"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::UNAUTHORIZED);
    let plain = Client::connect(srv.local_url(), client_options(kind).token("s3cret"))
        .await
        .unwrap();
    assert_eq!(
        plain.call("echo", "x").await.unwrap_err().status(),
        Status::FORBIDDEN
    );
    let counter = Arc::new(AtomicU32::new(0));
    let c = Client::connect(
        srv.local_url(),
        client_options(kind)
            .token("s3cret")
            .middleware(AddTenant(counter.clone())),
    )
    .await
    .unwrap();
    assert_eq!(c.call("echo", "x").await.unwrap(), Bytes::from("x"));
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    let _ = Headers::new();
    srv.shutdown().await;
}

macro_rules! transport_tests {
    ($($m:ident => $kind:expr),* $(,)?) => {$(
        mod $m {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unary() { super::unary($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unknown_method_and_panic() { super::unknown_method_and_panic($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn server_streaming() { super::server_streaming($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn client_streaming() { super::client_streaming($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bidi() { super::bidi($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancel_on_drop() { super::cancel_on_drop($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn deadline() { super::deadline($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn deadline_reaches_the_handler() { super::deadline_reaches_the_handler($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn call_is_sent_when_polled() { super::call_is_sent_when_polled($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn many_concurrent() { super::many_concurrent($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn oversize() { super::oversize($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn large_concurrent() { super::large_concurrent($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reconnect() { super::reconnect($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn graceful_shutdown() { super::graceful_shutdown($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn middleware_and_auth() { super::middleware_and_auth($kind).await }
        }
    )*};
}

transport_tests!(
    mem => Kind::Mem,
    tcp => Kind::Tcp,
    unix => Kind::Unix,
    tls => Kind::Tls,
    ws => Kind::Ws,
    wss => Kind::Wss,
);

/// Latency mode: a server and a client whose connections keep one poller polling answer calls
/// as usual; the poller polls while calls flow and sleeps once they stop.
#[tokio::test(flavor = "current_thread")]
async fn busy_polling_connections_serve_calls_and_the_poller_sleeps_when_quiet() {
    let poller = mitto::BusyPoll::new(Duration::from_millis(5));
    let task = tokio::spawn(poller.clone().run());
    let srv =
        mitto::Server::with_options(mitto::ServerOptions::default().busy_poll(poller.clone()))
            .route("echo", |req: mitto::Request| async move {
                Ok(req.payload().clone())
            })
            .bind("tcp://127.0.0.1:0")
            .await
            .unwrap();
    let c = Client::connect(
        srv.local_url(),
        mitto::ClientOptions::new().busy_poll(poller.clone()),
    )
    .await
    .unwrap();
    for i in 0..200u32 {
        let p = Bytes::from(i.to_string());
        assert_eq!(c.call("echo", p.clone()).await.unwrap(), p);
        assert!(poller.is_polling(), "polling while calls flow");
    }
    wait_for("the poller to sleep", || !poller.is_polling()).await;
    // A read wakes it again.
    assert_eq!(c.call("echo", "again").await.unwrap(), Bytes::from("again"));
    c.close().await;
    srv.shutdown().await;
    poller.stop();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the poller stops")
        .unwrap();
}

/// CPU time this process has used so far, all threads together.
fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Spin-then-park: dense traffic keeps the connections polling, and once it stops they go back
/// to sleep within a window, so an idle process burns no CPU. A window of zero turns it off;
/// calls flow the same either way. (A window far wider than the default, so that the traffic
/// of this unoptimized build counts as dense.)
#[tokio::test(flavor = "current_thread")]
async fn spinning_connections_sleep_once_traffic_stops() {
    for spin in [Duration::from_millis(5), Duration::ZERO] {
        let srv = mitto::Server::with_options(mitto::ServerOptions::default().spin(spin))
            .route("echo", |req: mitto::Request| async move {
                Ok(req.payload().clone())
            })
            .bind("tcp://127.0.0.1:0")
            .await
            .unwrap();
        let c = Client::connect(srv.local_url(), mitto::ClientOptions::new().spin(spin))
            .await
            .unwrap();
        // Dense traffic: 64 calls in flight at a time.
        for round in 0..50u32 {
            let calls = (0..64u32).map(|i| {
                let p = Bytes::from(format!("{round}.{i}"));
                let c = &c;
                async move { (c.call("echo", p.clone()).await.unwrap(), p) }
            });
            for (got, sent) in futures_util::future::join_all(calls).await {
                assert_eq!(got, sent);
            }
        }
        // Idle: both connections (on this one thread) must be asleep, not polling.
        let before = process_cpu();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let used = process_cpu().saturating_sub(before);
        assert!(
            used < Duration::from_millis(100),
            "spin {spin:?}: {used:?} of CPU over 300 ms of idle connections"
        );
        c.close().await;
        srv.shutdown().await;
    }
}

#[tokio::test]
async fn a_method_named_with_wildcards_takes_the_calls_its_filter_matches() {
    let server = Server::new()
        .route("orders.*", |req: Request| async move {
            Ok(format!("star:{}", req.method()))
        })
        .route("orders.>", |req: Request| async move {
            Ok(format!("rest:{}", req.method()))
        })
        .route("orders.new", |_req: Request| async move { Ok("exact") });
    let running = server.bind("mem://rpc-wildcard-routes").await.unwrap();
    let c = Client::connect("mem://rpc-wildcard-routes", mitto::ClientOptions::new())
        .await
        .unwrap();
    assert_eq!(c.call("orders.new", "").await.unwrap(), "exact");
    // Both filters match: the first in byte order ('*' < '>').
    assert_eq!(c.call("orders.old", "").await.unwrap(), "star:orders.old");
    assert_eq!(c.call("orders.a.b", "").await.unwrap(), "rest:orders.a.b");
    let e = c.call("invoices.a", "").await.unwrap_err();
    assert_eq!(e.status(), Status::METHOD_NOT_FOUND);
    running.shutdown().await;
}
