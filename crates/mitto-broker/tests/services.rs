//! Services registered at the broker (`Server::attach`): calls load-balanced over instances,
//! streams in both directions, and the caller's deadline and CANCEL reaching the responder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use mitto::{
    CallOptions, Client, ClientOptions, Codec, Request, RequestStream, Response, Server, Status,
    StreamSender,
};
use mitto_broker::{Broker, BrokerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A broker listening on `listen` (`tcp://127.0.0.1:0` or `ws://127.0.0.1:0`): instances and
/// callers reach it by that transport.
async fn broker(listen: &str) -> (Broker, String) {
    let cfg = BrokerConfig {
        listen: vec![listen.into()],
        monitor: String::new(),
        ..BrokerConfig::default()
    };
    let b = Broker::start(cfg).await.unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

fn opts() -> ClientOptions {
    ClientOptions::new()
        .timeout(Duration::from_secs(5))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
}

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

fn instance(name: &'static str, started: Arc<Notify>, dropped: Arc<AtomicBool>) -> Server {
    Server::new()
        .route("who", move |_r: Request| async move { Ok(name) })
        .route_server_stream("count", |req: Request, out: StreamSender| async move {
            let n: u32 = req.decode()?;
            for i in 0..n {
                out.send_typed(Codec::Json, &i).await?;
            }
            Ok(())
        })
        .route_client_stream("sum", |_r: Request, mut items: RequestStream| async move {
            let mut sum = 0i64;
            while let Some(b) = items.next().await {
                sum += Codec::Json.decode::<i64>(&b)?;
            }
            Response::encode(Codec::Json, &sum)
        })
        .route("block", move |_r: Request| {
            let (started, flag) = (started.clone(), DropFlag(dropped.clone()));
            async move {
                let _flag = flag;
                started.notify_one();
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Bytes::new())
            }
        })
}

async fn calls_are_balanced_over_instances_with_streams(listen: &str) {
    let (b, url) = broker(listen).await;
    let n = Arc::new(Notify::new());
    let d = Arc::new(AtomicBool::new(false));
    let a = instance("a", n.clone(), d.clone())
        .attach(&url, opts())
        .await
        .unwrap();
    let bb = instance("b", n.clone(), d.clone())
        .attach(&url, opts())
        .await
        .unwrap();
    let c = Client::connect(&url, opts()).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(c.request("who", "").await.unwrap());
    }
    assert_eq!(seen.len(), 2, "both instances answered: {seen:?}");
    // Server streaming through the broker, beyond the initial credit.
    let mut s = c
        .server_stream("count", Codec::Json.encode(&200u32).unwrap())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(x) = s.next().await {
        got.push(Codec::Json.decode::<u32>(&x.unwrap()).unwrap());
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    // Client streaming through the broker.
    let (mut sink, reply) = c.client_stream("sum").await.unwrap();
    for i in 1..=150i64 {
        sink.send(Codec::Json.encode(&i).unwrap()).await.unwrap();
    }
    sink.finish().await.unwrap();
    let r = reply.await.unwrap();
    assert_eq!(
        Codec::Json.decode::<i64>(&r.payload).unwrap(),
        150 * 151 / 2
    );
    // Unknown service: NO_RESPONDERS at once.
    assert_eq!(
        c.request("nope", "").await.unwrap_err().status(),
        Status::NO_RESPONDERS
    );
    assert_eq!(b.service_count(), 8);
    a.shutdown().await;
    bb.shutdown().await;
    b.shutdown().await;
}

async fn cancel_and_deadline_reach_the_responder(listen: &str) {
    let (b, url) = broker(listen).await;
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let inst = instance("a", started.clone(), dropped.clone())
        .attach(&url, opts())
        .await
        .unwrap();
    let c = Client::connect(&url, opts()).await.unwrap();
    // Drop the caller's future: the handler behind the broker is aborted.
    let c2 = c.clone();
    let call = tokio::spawn(async move { c2.request("block", "").await });
    started.notified().await;
    call.abort();
    wait_for("the responder to be cancelled", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    wait_for("the cancel counted", || {
        inst.stats().values["calls_cancelled"] == 1
    })
    .await;
    // A deadline: the caller gets TIMEOUT and the responder stops.
    dropped.store(false, Ordering::SeqCst);
    let e = c
        .request_with(
            "block",
            "",
            CallOptions::new().timeout(Duration::from_millis(150)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::TIMEOUT);
    wait_for("the responder to stop at the deadline", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    inst.shutdown().await;
    b.shutdown().await;
}

async fn instance_vanishing_mid_call_fails_the_call_as_retryable(listen: &str) {
    let (b, url) = broker(listen).await;
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let server = instance("a", started.clone(), dropped.clone())
        .options(mitto::ServerOptions::new().drain_timeout(Duration::from_millis(50)));
    let inst = server.attach(&url, opts().reconnect(false)).await.unwrap();
    let c = Client::connect(&url, opts()).await.unwrap();
    let c2 = c.clone();
    let call = tokio::spawn(async move { c2.request("block", "").await });
    started.notified().await;
    inst.shutdown().await;
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(e.status(), Status::UNAVAILABLE);
    assert!(e.is_retryable());
    b.shutdown().await;
}

/// The tests above on each transport.
macro_rules! on_each_transport {
    ($($m:ident => $listen:expr),* $(,)?) => {$(
        mod $m {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn calls_are_balanced_over_instances_with_streams() {
                super::calls_are_balanced_over_instances_with_streams($listen).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancel_and_deadline_reach_the_responder() {
                super::cancel_and_deadline_reach_the_responder($listen).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn instance_vanishing_mid_call_fails_the_call_as_retryable() {
                super::instance_vanishing_mid_call_fails_the_call_as_retryable($listen).await
            }
        }
    )*};
}

on_each_transport!(tcp => "tcp://127.0.0.1:0", ws => "ws://127.0.0.1:0");
