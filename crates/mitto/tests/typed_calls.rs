//! Typed calls with the metadata of RPC on both sides: `call_typed_with` (a deadline and
//! headers for one call, the request taken by value) and `route_typed_request` (a handler that
//! sees the value with its headers, deadline and caller), over mem and tcp.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client_options, serve, server_options, Kind};
use mitto::{CallOptions, Client, Codec, Headers, Server, Status, TypedRequest, WellKnown};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Pair {
    a: i64,
    b: i64,
}

/// What a typed handler saw of its call.
#[derive(Serialize, Deserialize, Debug)]
struct Seen {
    sum: i64,
    method: String,
    /// Milliseconds left before the caller's deadline.
    left_ms: Option<u64>,
    tenant: Option<String>,
    content_type: Option<String>,
    codec: String,
    peer_name: String,
    peer_id: String,
    peer_addr: String,
}

fn server(kind: Kind) -> Server {
    Server::with_options(server_options(kind))
        .route_typed_request("calc.seen", |req: TypedRequest<Pair>| async move {
            let left = req
                .deadline()
                .map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            let tenant = req.headers().get_custom("tenant");
            let peer = req.peer().clone();
            Ok(Seen {
                method: req.method().to_owned(),
                left_ms: left.map(|l| l.as_millis() as u64),
                tenant: tenant.map(|t| String::from_utf8_lossy(t).into_owned()),
                content_type: req.headers().content_type().map(str::to_owned),
                codec: req.codec().content_type().to_owned(),
                peer_name: peer.name,
                peer_id: peer.client_id,
                peer_addr: peer.addr,
                sum: {
                    let p = req.into_inner();
                    p.a + p.b
                },
            })
        })
        .route_typed("calc.add", |p: Pair| async move { Ok(p.a + p.b) })
        .route_typed("slow", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
}

fn tenant(t: &str) -> Headers {
    Headers::builder()
        .insert_custom("tenant", t)
        .unwrap()
        .build()
}

/// Deadline, a custom header, the caller's identity and the codec reach a typed handler; the
/// per-call deadline is the one it sees.
async fn metadata_reaches_the_typed_handler(kind: Kind) {
    let srv = serve(kind, server(kind)).await;
    let c = Client::connect(
        srv.local_url(),
        client_options(kind).name("billing").client_id("billing-1"),
    )
    .await
    .unwrap();
    let options = CallOptions::new()
        .timeout(Duration::from_secs(2))
        .headers(tenant("acme"));
    let seen: Seen = c
        .call_typed_with("calc.seen", Pair { a: 2, b: 40 }, options)
        .await
        .unwrap();
    assert_eq!(seen.sum, 42);
    assert_eq!(seen.method, "calc.seen");
    let left = seen.left_ms.expect("a deadline");
    assert!(
        (1_000..=2_000).contains(&left),
        "per-call deadline: {left} ms"
    );
    assert_eq!(seen.tenant.as_deref(), Some("acme"));
    assert_eq!(seen.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        (seen.peer_name.as_str(), seen.peer_id.as_str()),
        ("billing", "billing-1")
    );
    assert!(!seen.peer_addr.is_empty(), "{seen:?}");
    // Without options: the client's default deadline (10 s in these tests), no tenant.
    let seen: Seen = c
        .call_typed("calc.seen", Pair { a: 1, b: 1 })
        .await
        .unwrap();
    let left = seen.left_ms.expect("a deadline");
    assert!(
        (9_000..=10_000).contains(&left),
        "default deadline: {left} ms"
    );
    assert_eq!(seen.tenant, None);
    // A content type in the caller's headers chooses the codec of this call.
    let msgpack = Headers::builder()
        .insert(WellKnown::ContentType, Codec::MsgPack.content_type())
        .unwrap()
        .build();
    let seen: Seen = c
        .call_typed_with(
            "calc.seen",
            Pair { a: 3, b: 4 },
            CallOptions::new().headers(msgpack),
        )
        .await
        .unwrap();
    assert_eq!((seen.sum, seen.codec.as_str()), (7, "application/msgpack"));
    let text = Headers::builder()
        .insert(WellKnown::ContentType, "text/plain")
        .unwrap()
        .build();
    let e = c
        .call_typed_with::<_, Seen>(
            "calc.seen",
            Pair { a: 0, b: 0 },
            CallOptions::new().headers(text),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::BAD_REQUEST, "{e}");
    c.close().await;
    srv.shutdown().await;
}

/// A per-call deadline bounds a typed call.
async fn per_call_deadline(kind: Kind) {
    let srv = serve(kind, server(kind)).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let short = CallOptions::new().timeout(Duration::from_millis(100));
    let e = c
        .call_typed_with::<_, u64>("slow", 5_000u64, short)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::TIMEOUT, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let ok: u64 = c
        .call_typed_with(
            "slow",
            10u64,
            CallOptions::new().timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(ok, 10);
    c.close().await;
    srv.shutdown().await;
}

fn sendable<T: Send>(t: T) -> T {
    t
}

/// Typed call futures own their request: built from temporaries, kept in variables, raced in
/// `select!`, spawned with an owned client.
async fn call_futures_own_their_request(kind: Kind) {
    let srv = serve(kind, server(kind)).await;
    let c = Client::connect(srv.local_url(), client_options(kind))
        .await
        .unwrap();
    let n = 20;
    let add = sendable(c.call_typed::<_, i64>("calc.add", Pair { a: n, b: 1 }));
    let slow = c.call_typed_with::<_, u64>(
        "slow",
        5_000u64,
        CallOptions::new().headers(tenant(&format!("t{n}"))),
    );
    let first = tokio::select! {
        r = add => r.unwrap(),
        _ = slow => unreachable!("the slow call answers last"),
    };
    assert_eq!(first, 21);
    let owned = c.clone();
    let task = tokio::spawn(async move {
        owned
            .call_typed::<_, i64>("calc.add", Pair { a: n, b: n })
            .await
    });
    assert_eq!(task.await.unwrap().unwrap(), 40);
    c.close().await;
    srv.shutdown().await;
}

macro_rules! transport_tests {
    ($($m:ident => $kind:expr),* $(,)?) => {$(
        mod $m {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn metadata_reaches_the_typed_handler() {
                super::metadata_reaches_the_typed_handler($kind).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn per_call_deadline() { super::per_call_deadline($kind).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn call_futures_own_their_request() {
                super::call_futures_own_their_request($kind).await
            }
        }
    )*};
}

transport_tests!(mem => Kind::Mem, tcp => Kind::Tcp);
