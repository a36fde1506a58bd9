//! End to end: a real broker on 127.0.0.1:0 and real clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use mitto::{
    CallOptions, Client, ClientOptions, Message, Policy, PublishOptions, Status, SubscribeOptions,
    Subscription,
};
use mitto_broker::{Broker, BrokerConfig, User};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The transport the clients of a test reach the broker by.
#[derive(Clone, Copy, Debug)]
enum Net {
    Tcp,
    Ws,
}

fn config(net: Net) -> BrokerConfig {
    let listen = match net {
        Net::Tcp => "tcp://127.0.0.1:0",
        Net::Ws => "ws://127.0.0.1:0",
    };
    BrokerConfig {
        listen: vec![listen.into()],
        monitor: "127.0.0.1:0".into(),
        ..BrokerConfig::default()
    }
}

async fn start(cfg: BrokerConfig) -> (Broker, String) {
    let b = Broker::start(cfg).await.unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

fn opts() -> ClientOptions {
    ClientOptions::new()
        .timeout(Duration::from_secs(5))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
}

async fn client(url: &str) -> Client {
    Client::connect(url, opts()).await.unwrap()
}

async fn next(sub: &mut Subscription) -> Message {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a message within 5 s")
        .expect("subscription open")
}

/// Nothing more arrives within a short while.
async fn quiet(sub: &mut Subscription) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(150), sub.next()).await {
        panic!("unexpected message: {m:?}");
    }
}

/// Waits until the broker has written `n` EVENTs to sockets.
async fn sent_out(b: &Broker, n: u64) {
    for _ in 0..500 {
        if b.stats()["msgs_out"] >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the broker did not send {n} messages");
}

fn text(m: &Message) -> String {
    String::from_utf8(m.payload().to_vec()).unwrap()
}

async fn wildcards_route_to_every_matching_subscription(net: Net) {
    let (b, url) = start(config(net)).await;
    let c = client(&url).await;
    let mut star = c.subscribe("orders.*").await.unwrap();
    let mut rest = c.subscribe("orders.>").await.unwrap();
    let mut created = c.subscribe("*.created").await.unwrap();
    let mut exact = c.subscribe("orders.created").await.unwrap();
    let p = client(&url).await;
    p.publish("orders.created", "a").await.unwrap();
    p.publish("orders.eu.paid", "b").await.unwrap();
    p.publish("users.created", "c").await.unwrap();
    p.publish("orders", "d").await.unwrap();
    p.flush().await.unwrap();
    assert_eq!(text(&next(&mut star).await), "a");
    assert_eq!(text(&next(&mut rest).await), "a");
    assert_eq!(text(&next(&mut rest).await), "b");
    assert_eq!(text(&next(&mut created).await), "a");
    assert_eq!(text(&next(&mut created).await), "c");
    let m = next(&mut exact).await;
    assert_eq!((m.subject(), text(&m).as_str()), ("orders.created", "a"));
    for s in [&mut star, &mut rest, &mut created, &mut exact] {
        quiet(s).await;
    }
    // Publishing to a wildcard is refused clearly.
    let e = p.publish("orders.*", "x").await.unwrap_err();
    assert_eq!(e.status(), Status::INVALID_SUBJECT);
    // Headers and kind pass through.
    let h = mitto::Headers::builder()
        .insert_custom("tenant", "acme")
        .unwrap()
        .build();
    p.publish_with(
        "orders.created",
        "h",
        PublishOptions::new().headers(h).kind(mitto::MsgKind::EVENT),
    )
    .await
    .unwrap();
    let m = next(&mut exact).await;
    assert_eq!(m.headers().get_custom("tenant"), Some(&b"acme"[..]));
    assert_eq!(m.kind(), mitto::MsgKind::EVENT);
    assert_eq!(b.stats()["msgs_in"], 5);
    b.shutdown().await;
}

/// What one client sends on a connection arrives in the order it was sent, whatever path each
/// frame takes inside the client (publishes and requests written straight for the connection,
/// subscriptions, flushes and large publishes through its command queue): a responder that
/// answers `t.get` with the last `t.state` it saw always answers with the one published just
/// before the request.
async fn a_publish_then_a_request_arrive_in_that_order(net: Net) {
    let (b, url) = start(config(net)).await;
    let responder = client(&url).await;
    // One subscription for both subjects: one stream, in the broker's order.
    let mut sub = responder.subscribe("t.>").await.unwrap();
    let r2 = responder.clone();
    tokio::spawn(async move {
        let mut last = Bytes::new();
        while let Some(m) = sub.next().await {
            if m.subject() == "t.state" {
                last = m.payload().clone();
            } else {
                r2.respond(&m, last.clone()).await.unwrap();
            }
        }
    });
    let c = Client::connect(&url, opts().queue_capacity(16))
        .await
        .unwrap();
    for i in 0..300u32 {
        let mut state = i.to_string().into_bytes();
        if i % 10 == 3 {
            // A large publish takes the command queue: the request after it, written straight
            // for the connection, must not overtake it.
            state.resize(64 * 1024, b'.');
        }
        let state = Bytes::from(state);
        if i % 10 == 5 {
            // A burst that fills the connection's buffer (16 frames with this client's queue
            // capacity, before its driver can take any on this one thread): the request after
            // it takes the command queue, behind what the buffer held.
            for k in 0..15u32 {
                c.publish("t.state", format!("{i}.{k}")).await.unwrap();
            }
        }
        c.publish("t.state", state.clone()).await.unwrap();
        if i % 50 == 7 {
            c.flush().await.unwrap();
        }
        let got = c.request("t.get", "?").await.unwrap();
        assert_eq!(got, state, "request {i} saw an older state");
    }
    b.shutdown().await;
}

async fn queue_groups_deliver_each_message_to_one_member(net: Net) {
    let (b, url) = start(config(net)).await;
    let members: Vec<Client> = vec![client(&url).await, client(&url).await, client(&url).await];
    let mut subs = Vec::new();
    for m in &members {
        subs.push(m.queue_subscribe("jobs.*", "workers").await.unwrap());
    }
    let watcher = client(&url).await;
    let mut all = watcher.subscribe("jobs.>").await.unwrap();
    let p = client(&url).await;
    for i in 0..30 {
        p.publish("jobs.resize", format!("{i}")).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut seen = Vec::new();
    for s in subs.iter_mut() {
        let mut mine = 0;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), s.next()).await {
            seen.push(text(&m).parse::<u32>().unwrap());
            mine += 1;
        }
        assert!(mine > 0, "every member gets a share");
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..30).collect::<Vec<_>>(),
        "each message exactly once across the group"
    );
    for _ in 0..30 {
        next(&mut all).await;
    }
    b.shutdown().await;
}

async fn request_reply_no_responders_deadline_and_cancel(net: Net) {
    let (b, url) = start(config(net)).await;
    let responder = client(&url).await;
    let mut svc = responder.subscribe("svc.echo").await.unwrap();
    let r2 = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            let mut out = b"echo:".to_vec();
            out.extend_from_slice(m.payload());
            r2.respond(&m, out).await.unwrap();
        }
    });
    let c = client(&url).await;
    assert_eq!(
        c.request("svc.echo", "hi").await.unwrap(),
        Bytes::from("echo:hi")
    );
    // Nobody listens: NO_RESPONDERS at once, not a timeout.
    let t0 = std::time::Instant::now();
    let e = c.request("svc.nobody", "x").await.unwrap_err();
    assert_eq!(e.status(), Status::NO_RESPONDERS);
    assert!(t0.elapsed() < Duration::from_secs(1));
    // A responder that never answers: the deadline ends the request.
    let silent = client(&url).await;
    let _hold = silent.subscribe("svc.silent").await.unwrap();
    let e = c
        .request_with(
            "svc.silent",
            "x",
            CallOptions::new().timeout(Duration::from_millis(150)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::TIMEOUT);
    // Dropping a request cancels it at the broker.
    let c2 = c.clone();
    let pending = tokio::spawn(async move { c2.request("svc.silent", "y").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    pending.abort();
    for _ in 0..200 {
        let s = b.stats();
        if s["requests_cancelled"] + s["request_timeouts"] >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = b.stats();
    assert!(s["requests_cancelled"] >= 1, "{s:?}");
    assert_eq!(s["no_responders"], 1);
    b.shutdown().await;
}

async fn acked_publish_and_block_policy_push_back(net: Net) {
    let (b, url) = start(BrokerConfig {
        max_block_ms: 200,
        ..config(net)
    })
    .await;
    let slow = client(&url).await;
    let so = SubscribeOptions {
        policy: Policy::Block,
        max_pending: 2,
        credit: 1,
        ..SubscribeOptions::default()
    };
    let mut sub = slow.subscribe_with("metrics.cpu", so).await.unwrap();
    let p = client(&url).await;
    let ack = PublishOptions::new().ack();
    // One goes out on the credit, two wait in the queue, the fourth is held for max_block_ms
    // and then refused.
    p.publish_with("metrics.cpu", "0", ack.clone())
        .await
        .unwrap();
    sent_out(&b, 1).await;
    for i in 1..3 {
        p.publish_with("metrics.cpu", format!("{i}"), ack.clone())
            .await
            .unwrap();
    }
    let e = p
        .publish_with("metrics.cpu", "3", ack.clone())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::BACKPRESSURE_REJECTION);
    assert!(e.is_retryable());
    // Nothing accepted was lost.
    for i in 0..3 {
        assert_eq!(text(&next(&mut sub).await), format!("{i}"));
    }
    // Room again: the publish goes through.
    p.publish_with("metrics.cpu", "4", ack).await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "4");
    assert_eq!(b.stats()["publish_rejections"], 1);
    b.shutdown().await;
}

async fn slow_consumer(
    net: Net,
    policy: Policy,
) -> (Vec<String>, std::collections::BTreeMap<String, u64>) {
    let (b, url) = start(config(net)).await;
    let slow = client(&url).await;
    let so = SubscribeOptions {
        policy,
        max_pending: 3,
        credit: 1,
        ..SubscribeOptions::default()
    };
    let mut sub = slow.subscribe_with("feed", so).await.unwrap();
    let p = client(&url).await;
    p.publish("feed", "0").await.unwrap();
    sent_out(&b, 1).await;
    for i in 1..10 {
        p.publish("feed", format!("{i}")).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut got = Vec::new();
    let mut ended = false;
    loop {
        match tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            Ok(Some(m)) => got.push(text(&m)),
            Ok(None) => {
                ended = true;
                break;
            }
            Err(_) => break,
        }
    }
    assert_eq!(
        ended,
        policy == Policy::Disconnect,
        "only a disconnected subscription ends"
    );
    let stats = b.stats();
    b.shutdown().await;
    (got, stats)
}

async fn slow_consumer_drop_oldest_keeps_the_newest_and_counts(net: Net) {
    let (got, stats) = slow_consumer(net, Policy::DropOldest).await;
    assert_eq!(got, ["0", "7", "8", "9"]);
    assert_eq!(stats["slow_consumer_drops"], 6);
}

async fn slow_consumer_drop_newest_keeps_the_oldest_and_counts(net: Net) {
    let (got, stats) = slow_consumer(net, Policy::DropNewest).await;
    assert_eq!(got, ["0", "1", "2", "3"]);
    assert_eq!(stats["slow_consumer_drops"], 6);
}

async fn slow_consumer_disconnect_ends_the_subscription(net: Net) {
    let (got, stats) = slow_consumer(net, Policy::Disconnect).await;
    assert_eq!(got, ["0"], "what was queued went with the subscription");
    assert_eq!(stats["slow_consumer_disconnects"], 1);
    assert_eq!(stats["subscriptions"], 0);
}

async fn urgent_messages_overtake_queued_ones(net: Net) {
    let (b, url) = start(config(net)).await;
    let s = client(&url).await;
    let so = SubscribeOptions {
        credit: 1,
        ..SubscribeOptions::default()
    };
    let mut sub = s.subscribe_with("ops", so).await.unwrap();
    let p = client(&url).await;
    p.publish("ops", "n1").await.unwrap();
    sent_out(&b, 1).await;
    for i in 2..=4 {
        p.publish("ops", format!("n{i}")).await.unwrap();
    }
    p.publish_with("ops", "URGENT", PublishOptions::new().urgent())
        .await
        .unwrap();
    p.flush().await.unwrap();
    let order: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(text(&next(&mut sub).await));
        }
        v
    };
    assert_eq!(order, ["n1", "URGENT", "n2", "n3", "n4"]);
    b.shutdown().await;
}

async fn limits_are_enforced_with_clear_errors(net: Net) {
    let cfg = BrokerConfig {
        max_payload: 1024,
        max_connections: 2,
        max_subscriptions: 2,
        ..config(net)
    };
    let (b, url) = start(cfg).await;
    let c = client(&url).await;
    let e = c.publish("big", vec![0u8; 2000]).await.unwrap_err();
    assert_eq!(e.status(), Status::PAYLOAD_TOO_LARGE);
    let _s1 = c.subscribe("a").await.unwrap();
    let _s2 = c.subscribe("b").await.unwrap();
    let e = c.subscribe("c").await.unwrap_err();
    assert_eq!(e.status(), Status::QUOTA_EXCEEDED);
    let _c2 = client(&url).await;
    let e = Client::connect(&url, opts().reconnect(false))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::QUOTA_EXCEEDED);
    // The first client still works.
    c.publish("a", "still fine").await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(b.stats()["connections_refused"], 1);
    b.shutdown().await;
}

async fn users_passwords_and_permissions(net: Net) {
    let cfg = BrokerConfig {
        users: vec![User {
            name: "alice".into(),
            password: "pw".into(),
            publish: vec!["orders.>".into()],
            subscribe: vec!["orders.*".into()],
        }],
        ..config(net)
    };
    let (b, url) = start(cfg).await;
    let e = Client::connect(&url, opts().user_password("alice", "nope"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::UNAUTHORIZED);
    let e = Client::connect(&url, opts()).await.unwrap_err();
    assert_eq!(e.status(), Status::UNAUTHORIZED);
    let a = Client::connect(&url, opts().user_password("alice", "pw"))
        .await
        .unwrap();
    let mut ok = a.subscribe("orders.*").await.unwrap();
    assert_eq!(
        a.subscribe("orders.>").await.unwrap_err().status(),
        Status::FORBIDDEN
    );
    assert_eq!(
        a.subscribe("users.x").await.unwrap_err().status(),
        Status::FORBIDDEN
    );
    let e = a
        .publish_with("users.x", "no", PublishOptions::new().ack())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::FORBIDDEN);
    a.publish_with("orders.new", "yes", PublishOptions::new().ack())
        .await
        .unwrap();
    assert_eq!(text(&next(&mut ok).await), "yes");
    assert_eq!(
        a.request("users.get", "x").await.unwrap_err().status(),
        Status::FORBIDDEN
    );
    assert!(b.stats()["permission_denials"] >= 4);
    b.shutdown().await;
}

async fn subscriptions_come_back_after_a_broker_restart(net: Net) {
    let (b, url) = start(config(net)).await;
    let s = client(&url).await;
    let mut sub = s.subscribe("news.>").await.unwrap();
    b.shutdown().await;
    for _ in 0..200 {
        if !s.is_connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cfg = BrokerConfig {
        listen: vec![url.clone()],
        ..config(net)
    };
    let (b, _) = start(cfg).await;
    for _ in 0..300 {
        if s.is_connected() && b.subscription_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.subscription_count(), 1, "the client re-subscribed");
    let p = client(&url).await;
    p.publish("news.eu", "back").await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "back");
    b.shutdown().await;
}

async fn unsubscribe_after_n_and_on_drop(net: Net) {
    let (b, url) = start(config(net)).await;
    let c = client(&url).await;
    let mut sub = c.subscribe("t").await.unwrap();
    sub.unsubscribe_after(2);
    c.flush().await.unwrap();
    for i in 0..5 {
        c.publish("t", format!("{i}")).await.unwrap();
    }
    c.flush().await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "0");
    assert_eq!(text(&next(&mut sub).await), "1");
    let end = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(end.unwrap().is_none(), "the stream ends after 2 messages");
    assert_eq!(b.subscription_count(), 0);
    let sub2 = c.subscribe("u").await.unwrap();
    assert_eq!(b.subscription_count(), 1);
    drop(sub2);
    c.flush().await.unwrap();
    assert_eq!(b.subscription_count(), 0);
    b.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_endpoint_reports_json_and_prometheus() {
    let (b, url) = start(config(Net::Tcp)).await;
    let c = client(&url).await;
    let _s = c.subscribe("m.*").await.unwrap();
    c.publish("m.x", "1").await.unwrap();
    let mut acked = mitto::PublishOptions::new();
    acked.ack = true;
    c.publish_with("m.x", "2", acked).await.unwrap();
    c.flush().await.unwrap();
    let addr = b.monitor_addr().unwrap();
    let varz = http_get(addr, "/varz").await;
    assert!(
        varz.starts_with("HTTP/1.0 200") || varz.starts_with("HTTP/1.1 200"),
        "{varz}"
    );
    let body = varz.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["stats"]["msgs_in"], 2);
    assert_eq!(v["stats"]["publish_acks"], 1, "the acknowledged publish");
    assert_eq!(v["stats"]["acks"], 0, "no subscriber acknowledged anything");
    assert_eq!(v["subscriptions_indexed"], 1);
    let metrics = http_get(addr, "/metrics").await;
    assert!(metrics.contains("mitto_msgs_in 2"), "{metrics}");
    let subsz = http_get(addr, "/subsz").await;
    assert!(subsz.contains("\"filter\": \"m.*\""), "{subsz}");
    let subj = http_get(addr, "/subjectz").await;
    assert!(subj.contains("\"subject\": \"m.x\""), "{subj}");
    // The index and the 404 page list every page.
    let index = http_get(addr, "/").await;
    let missing = http_get(addr, "/nope").await;
    assert!(missing.contains("404"), "{missing}");
    for page in [
        "/varz",
        "/connz",
        "/subsz",
        "/subjectz",
        "/bridgez",
        "/streamz",
        "/metrics",
        "/healthz",
    ] {
        assert!(index.contains(page), "{page} in {index}");
        assert!(missing.contains(page), "{page} in {missing}");
        // The status line, not the body: a counter in a page may well contain "404".
        let page_out = http_get(addr, page).await;
        let status = page_out.lines().next().unwrap_or_default();
        assert!(status.contains(" 200 "), "{page} exists: {status}");
    }
    b.shutdown().await;
}

/// Messages and bytes per subject, as the monitor's `/subjectz` reports them.
async fn subject_counts(b: &Broker) -> std::collections::HashMap<String, (u64, u64)> {
    let resp = http_get(b.monitor_addr().unwrap(), "/subjectz").await;
    let body = resp.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let n = |k: &str| e[k].as_u64().unwrap();
            (
                e["subject"].as_str().unwrap().to_owned(),
                (n("msgs"), n("bytes")),
            )
        })
        .collect()
}

/// The per-subject counts of `/subjectz` are exact for publishers over a socket and in the
/// broker's process alike (each keeps a memo of where its last subject goes, and counts through
/// it), across a change of the subscriptions and a change of subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_subject_counts_are_exact_for_socket_and_in_process_publishers() {
    let mut cfg = config(Net::Tcp);
    cfg.listen.push("inproc://subject-counts".into());
    let (b, url) = start(cfg).await;
    let remote = client(&url).await;
    let local = client("inproc://subject-counts").await;
    let watcher = client(&url).await;
    let mut all = watcher.subscribe("cnt.>").await.unwrap();
    for i in 0..10 {
        remote.publish("cnt.a", "12345").await.unwrap();
        local.publish("cnt.a", "123").await.unwrap();
        if i == 4 {
            // A new subscription in the middle: every memo is stale from here on.
            let _late = watcher.subscribe("cnt.a").await.unwrap();
        }
        local.publish("cnt.b", "1").await.unwrap();
    }
    remote.flush().await.unwrap();
    for _ in 0..30 {
        next(&mut all).await;
    }
    let counts = subject_counts(&b).await;
    assert_eq!(
        counts.get("cnt.a"),
        Some(&(20, 10 * 5 + 10 * 3)),
        "{counts:?}"
    );
    assert_eq!(counts.get("cnt.b"), Some(&(10, 10)), "{counts:?}");
    b.shutdown().await;
}

/// One task publishing through more in-process clients than a thread keeps route memos for,
/// in turn, to two subjects, across a subscription change: every message is delivered once, and
/// the broker's counts (kept per memo) add up exactly, also after clients are dropped.
#[tokio::test(flavor = "current_thread")]
async fn in_process_publishers_taking_turns_on_one_thread_count_and_deliver_exactly() {
    let mut cfg = config(Net::Tcp);
    cfg.listen.push("inproc://turns".into());
    let (b, url) = start(cfg).await;
    let watcher = client(&url).await;
    let mut all = watcher.subscribe("turn.>").await.unwrap();
    let mut publishers = Vec::new();
    for _ in 0..6 {
        publishers.push(client("inproc://turns").await);
    }
    let mut sent = 0u64;
    for round in 0..20 {
        if round == 10 {
            let _late = watcher.subscribe("turn.b").await.unwrap();
        }
        for (i, p) in publishers.iter().enumerate() {
            let subject = if i % 2 == 0 { "turn.a" } else { "turn.b" };
            p.publish(subject, format!("{round}.{i}")).await.unwrap();
            sent += 1;
        }
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..sent {
        let m = next(&mut all).await;
        assert!(seen.insert(text(&m)), "delivered twice: {}", text(&m));
    }
    drop(publishers.split_off(3));
    assert_eq!(b.stats()["msgs_in"], sent);
    let counts = subject_counts(&b).await;
    assert_eq!(
        counts.get("turn.a").map(|c| c.0),
        Some(sent / 2),
        "{counts:?}"
    );
    assert_eq!(
        counts.get("turn.b").map(|c| c.0),
        Some(sent / 2),
        "{counts:?}"
    );
    b.shutdown().await;
}

/// Latency mode (`busy_poll_us`) on a broker running on a current-thread runtime: requests are
/// answered as usual, and the broker shuts down (its poller with it).
#[tokio::test(flavor = "current_thread")]
async fn a_busy_polling_broker_answers_requests_and_shuts_down() {
    let mut cfg = config(Net::Tcp);
    cfg.busy_poll_us = 500;
    let (b, url) = start(cfg).await;
    let responder = client(&url).await;
    let mut svc = responder.subscribe("bp.echo").await.unwrap();
    let r2 = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            r2.respond(&m, m.payload().clone()).await.unwrap();
        }
    });
    let c = client(&url).await;
    for i in 0..100u32 {
        let p = Bytes::from(i.to_string());
        assert_eq!(c.request("bp.echo", p.clone()).await.unwrap(), p);
    }
    tokio::time::timeout(Duration::from_secs(10), b.shutdown())
        .await
        .expect("the broker shuts down while polling");
}

fn at_least_once(ack_wait_ms: u32, max_deliver: u32) -> SubscribeOptions {
    SubscribeOptions {
        delivery: mitto::Delivery::AtLeastOnce,
        ack_wait_ms,
        max_deliver,
        ..SubscribeOptions::default()
    }
}

async fn at_least_once_redelivers_until_acked(net: Net) {
    let (b, url) = start(config(net)).await;
    let s = client(&url).await;
    let mut sub = s
        .subscribe_with("jobs", at_least_once(100, 0))
        .await
        .unwrap();
    let p = client(&url).await;
    p.publish("jobs", "j1").await.unwrap();
    p.publish("jobs", "j2").await.unwrap();
    let first = next(&mut sub).await;
    assert!(first.needs_ack());
    assert_eq!(text(&first), "j1");
    let second = next(&mut sub).await;
    sub.ack(&second);
    // j1 was not acknowledged: it comes again after the ack wait; j2 does not.
    let again = next(&mut sub).await;
    assert_eq!(text(&again), "j1");
    sub.ack(&again);
    quiet(&mut sub).await;
    let st = b.stats();
    assert_eq!(st["acks"], 2);
    assert!(st["redeliveries"] >= 1);
    b.shutdown().await;
}

async fn nack_redelivers_at_once_and_max_deliver_gives_up(net: Net) {
    let (b, url) = start(config(net)).await;
    let s = client(&url).await;
    let mut sub = s
        .subscribe_with("jobs", at_least_once(60_000, 2))
        .await
        .unwrap();
    let p = client(&url).await;
    p.publish("jobs", "x").await.unwrap();
    let m = next(&mut sub).await;
    sub.nack(&m, None);
    let m2 = next(&mut sub).await;
    assert_eq!(text(&m2), "x", "NACK without delay redelivers at once");
    sub.ack(&m2);
    quiet(&mut sub).await;
    // A message never acknowledged is given up after max_deliver deliveries, and counted.
    let mut short = s
        .subscribe_with("once", at_least_once(50, 2))
        .await
        .unwrap();
    p.publish("once", "y").await.unwrap();
    assert_eq!(text(&next(&mut short).await), "y");
    assert_eq!(text(&next(&mut short).await), "y");
    quiet(&mut short).await;
    for _ in 0..100 {
        if b.stats()["redeliveries_given_up"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.stats()["redeliveries_given_up"], 1);
    assert_eq!(b.stats()["nacks"], 1);
    b.shutdown().await;
}

/// A TCP relay in front of the broker whose connections the test can cut.
struct Relay {
    url: String,
    cut: Arc<tokio::sync::Notify>,
}

async fn relay(target: &str) -> Relay {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let target = target.trim_start_matches("tcp://").to_owned();
    let cut = Arc::new(tokio::sync::Notify::new());
    let c2 = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            let target = target.clone();
            let cut = c2.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.notified() => {}
                }
            });
        }
    });
    Relay { url, cut }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resume_delivers_what_was_published_while_disconnected() {
    let (b, url) = start(config(Net::Tcp)).await;
    let r = relay(&url).await;
    let s = Client::connect(&r.url, opts().client_id("reporter-1"))
        .await
        .unwrap();
    let mut sub = s.subscribe("news.>").await.unwrap();
    let p = client(&url).await;
    p.publish("news.a", "before").await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "before");
    r.cut.notify_waiters();
    for _ in 0..300 {
        if b.stats()["sessions_detached"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.stats()["sessions_detached"], 1);
    // Published while the subscriber is away: kept in its session.
    p.publish("news.b", "during").await.unwrap();
    p.flush().await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "during");
    p.publish("news.c", "after").await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "after");
    let st = b.stats();
    assert_eq!(st["sessions_resumed"], 1);
    assert_eq!(st["subscriptions"], 1, "resumed, not subscribed twice");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_unix_and_websocket_listeners_serve_the_same_subjects() {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("mitto-broker-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let sock = dir.join("broker.sock");
    let cfg = BrokerConfig {
        listen: vec![
            "tls://127.0.0.1:0".into(),
            format!("unix://{}", sock.display()),
            "wss://127.0.0.1:0/mitto".into(),
            "ws://127.0.0.1:0".into(),
        ],
        tls: Some(mitto_broker::TlsFiles { cert, key }),
        ..config(Net::Tcp)
    };
    let (b, tls_url) = start(cfg).await;
    let unix_url = b.urls()[1].clone();
    let ca = mitto::TlsClientConfig::with_ca_pem(ck.cert.pem().as_bytes()).unwrap();
    let (wss_url, ws_url) = (b.urls()[2].clone(), b.urls()[3].clone());
    assert!(wss_url.starts_with("wss://127.0.0.1:") && wss_url.ends_with("/mitto"));
    let over_tls = Client::connect(&tls_url, opts().tls(ca.clone()))
        .await
        .unwrap();
    let mut sub = over_tls.subscribe("x.>").await.unwrap();
    let over_wss = Client::connect(&wss_url, opts().tls(ca)).await.unwrap();
    let mut wss_sub = over_wss.subscribe("x.>").await.unwrap();
    let over_unix = client(&unix_url).await;
    over_unix.publish("x.y", "across transports").await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "across transports");
    assert_eq!(text(&next(&mut wss_sub).await), "across transports");
    let over_ws = client(&ws_url).await;
    over_ws.publish("x.ws", "from ws").await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "from ws");
    assert_eq!(text(&next(&mut wss_sub).await), "from ws");
    // A plain client on the TLS port does not get in.
    let plain = tls_url.replace("tls://", "tcp://");
    let e = Client::connect(
        &plain,
        opts()
            .reconnect(false)
            .connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.status(), Status::PROTOCOL_ERROR);
    assert!(e.message().contains("tls://"), "{e}");
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A publisher far faster than its socket keeps going: the driver takes commands again as soon
/// as its outbox drains below the high-water mark (it used to wait for the keepalive timer).
async fn a_publisher_past_the_outbox_high_water_mark_does_not_stall(net: Net) {
    let (b, url) = start(config(net)).await;
    let p = client(&url).await;
    let s = client(&url).await;
    let mut sub = s.subscribe("bulk").await.unwrap();
    let payload = Bytes::from(vec![7u8; 16 * 1024]);
    let t0 = std::time::Instant::now();
    for _ in 0..3000 {
        p.publish("bulk", payload.clone()).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut got = 0;
    while got < 3000 {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(_)) => got += 1,
            _ => break,
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(got + b.stats()["slow_consumer_drops"], 3000);
    b.shutdown().await;
}

/// A request's deadline timer ends with the request: answered requests leave no task behind.
async fn answered_requests_leave_no_timer_tasks_behind(net: Net) {
    let (b, url) = start(config(net)).await;
    let responder = client(&url).await;
    let mut svc = responder.subscribe("svc.t").await.unwrap();
    let r2 = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            r2.respond(&m, "ok").await.unwrap();
        }
    });
    let c = client(&url).await;
    c.request("svc.t", "warm").await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    for _ in 0..300 {
        c.request("svc.t", "x").await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = metrics.num_alive_tasks();
    assert!(
        after < before + 30,
        "{before} tasks before, {after} after 300 requests"
    );
    b.shutdown().await;
}

/// Runs tests that take a [`Net`] on one transport.
macro_rules! multi_thread_tests {
    ($net:expr; $($name:ident)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            super::$name($net).await
        }
    )*};
}

/// The tests above that take a [`Net`], on each transport.
macro_rules! on_each_transport {
    ($($m:ident => $net:expr),* $(,)?) => {$(
        mod $m {
            use super::Net;
            multi_thread_tests!($net;
                wildcards_route_to_every_matching_subscription
                queue_groups_deliver_each_message_to_one_member
                request_reply_no_responders_deadline_and_cancel
                acked_publish_and_block_policy_push_back
                slow_consumer_drop_oldest_keeps_the_newest_and_counts
                slow_consumer_drop_newest_keeps_the_oldest_and_counts
                slow_consumer_disconnect_ends_the_subscription
                urgent_messages_overtake_queued_ones
                limits_are_enforced_with_clear_errors
                users_passwords_and_permissions
                subscriptions_come_back_after_a_broker_restart
                unsubscribe_after_n_and_on_drop
                at_least_once_redelivers_until_acked
                nack_redelivers_at_once_and_max_deliver_gives_up
                a_publisher_past_the_outbox_high_water_mark_does_not_stall
                answered_requests_leave_no_timer_tasks_behind
            );
            #[tokio::test(flavor = "current_thread")]
            async fn a_publish_then_a_request_arrive_in_that_order() {
                super::a_publish_then_a_request_arrive_in_that_order($net).await
            }
        }
    )*};
}

on_each_transport!(tcp => Net::Tcp, ws => Net::Ws);
