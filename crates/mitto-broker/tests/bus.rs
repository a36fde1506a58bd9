//! One behavioural suite for the two ways into an embedded broker: the in-process bus
//! (`inproc://`: no socket, no encoding, publishes routed in the caller's task, subscriptions
//! read straight from the broker's queues) and TCP. Every `case_*` body runs unchanged on both:
//! [`Env`] starts a broker listening on both transports and hands out clients of the transport
//! under test, and `on_both_transports!` makes a `*_inproc` and a `*_tcp` test of each case
//! (both in `support/bus_env.rs`, shared with `typed.rs`, the suite of typed events). The
//! tests after the cases are about the in-process bus alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "support/bus_env.rs"]
mod bus_env;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use mitto::{
    CallOptions, Client, ClientMiddleware, ClientNext, Codec, Delivery, Error, Headers,
    OutgoingCall, Policy, PublishOptions, Reply, Request, Response, Server, Status,
    SubscribeOptions, Subscription, WellKnown,
};
use mitto_broker::{Broker, BrokerConfig, User};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_env::*;

on_both_transports! {
    case_wildcards => wildcards_inproc, wildcards_tcp;
    case_queue_groups => queue_groups_inproc, queue_groups_tcp;
    case_request_reply => request_reply_inproc, request_reply_tcp;
    case_drop_newest => slow_consumer_drop_newest_inproc, slow_consumer_drop_newest_tcp;
    case_drop_oldest => slow_consumer_drop_oldest_inproc, slow_consumer_drop_oldest_tcp;
    case_disconnect => slow_consumer_disconnect_inproc, slow_consumer_disconnect_tcp;
    case_block => slow_consumer_block_inproc, slow_consumer_block_tcp;
    case_block_gives_up with short_block => block_gives_up_inproc, block_gives_up_tcp;
    case_unsubscribe_on_drop => unsubscribe_on_drop_inproc, unsubscribe_on_drop_tcp;
    case_unsubscribe_after => unsubscribe_after_inproc, unsubscribe_after_tcp;
    case_subscribe_while_publishing => subscribe_while_publishing_inproc, subscribe_while_publishing_tcp;
    case_client_middleware => client_middleware_inproc, client_middleware_tcp;
    case_at_least_once => at_least_once_inproc, at_least_once_tcp;
    case_ack_all => ack_all_inproc, ack_all_tcp;
    case_urgent => urgent_overtakes_inproc, urgent_overtakes_tcp;
    case_services => services_inproc, services_tcp;
    case_permissions with users => permissions_inproc, permissions_tcp;
    case_publish_when_polled => publish_when_polled_inproc, publish_when_polled_tcp;
    case_publish_after_close => publish_after_close_inproc, publish_after_close_tcp;
}

// ---------------------------------------------------------------------------------------------
// 1. wildcards

/// Reads `sub` up to the message `end`, as `subject=payload`.
async fn until_end(sub: &mut Subscription) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let m = next(sub).await;
        let t = text(&m);
        if t == "end" {
            return out;
        }
        out.push(format!("{}={t}", m.subject()));
    }
}

async fn case_wildcards(env: &Env) {
    let c = env.client().await;
    let mut star = c.subscribe("orders.*").await.unwrap();
    let mut rest = c.subscribe("orders.>").await.unwrap();
    let mut created = c.subscribe("*.created").await.unwrap();
    let mut exact = c.subscribe("orders.created").await.unwrap();
    let mut all = c.subscribe(">").await.unwrap();
    let p = env.client().await;
    let subjects = [
        "orders.created",
        "orders.eu.paid",
        "users.created",
        "orders",
        "orders.paid",
        "users.eu.created",
        "orders.done",
        "billing.created",
    ];
    for (i, s) in subjects.iter().enumerate() {
        p.publish(s, i.to_string()).await.unwrap();
    }
    // Matches every filter: whatever a subscription got before it is all it got (a
    // subscription's messages keep their order).
    p.publish("orders.created", "end").await.unwrap();
    let of = |ids: &[usize]| -> Vec<String> {
        ids.iter()
            .map(|&i| format!("{}={i}", subjects[i]))
            .collect()
    };
    assert_eq!(until_end(&mut star).await, of(&[0, 4, 6]), "orders.*");
    assert_eq!(until_end(&mut rest).await, of(&[0, 1, 4, 6]), "orders.>");
    assert_eq!(until_end(&mut created).await, of(&[0, 2, 7]), "*.created");
    assert_eq!(until_end(&mut exact).await, of(&[0]), "orders.created");
    assert_eq!(
        until_end(&mut all).await,
        of(&[0, 1, 2, 3, 4, 5, 6, 7]),
        ">"
    );
    // Publishing to a filter is refused.
    let e = p.publish("orders.*", "x").await.unwrap_err();
    assert_eq!(e.status(), Status::INVALID_SUBJECT);
    // Headers pass through.
    let h = Headers::builder()
        .insert_custom("tenant", "acme")
        .unwrap()
        .build();
    p.publish_with("orders.created", "h", PublishOptions::new().headers(h))
        .await
        .unwrap();
    let m = next(&mut exact).await;
    assert_eq!(text(&m), "h");
    assert_eq!(m.headers().get_custom("tenant"), Some(&b"acme"[..]));
}

// ---------------------------------------------------------------------------------------------
// 2. queue groups

async fn case_queue_groups(env: &Env) {
    const N: usize = 30;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut members = Vec::new();
    let mut readers = Vec::new();
    for id in 0..3usize {
        let c = env.client().await;
        let mut sub = c.queue_subscribe("jobs.*", "workers").await.unwrap();
        let tx = tx.clone();
        readers.push(tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if tx.send((id, text(&m))).is_err() {
                    break;
                }
            }
        }));
        members.push(c);
    }
    let watcher = env.client().await;
    let mut plain = watcher.subscribe("jobs.>").await.unwrap();
    let p = env.client().await;
    for i in 0..N {
        p.publish("jobs.resize", i.to_string()).await.unwrap();
    }
    p.flush().await.unwrap();
    for i in 0..N {
        assert_eq!(
            text(&next(&mut plain).await),
            i.to_string(),
            "a plain subscriber beside the group gets every message, in order"
        );
    }
    let mut per_member = [0usize; 3];
    let mut seen = Vec::new();
    while seen.len() < N {
        let (id, t) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} reached the group: {seen:?}", seen.len()))
            .expect("the readers run");
        per_member[id] += 1;
        seen.push(t.parse::<usize>().unwrap());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    if let Ok(extra) = rx.try_recv() {
        panic!("a message reached the group twice: {extra:?}");
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..N).collect::<Vec<_>>(),
        "each message exactly once across the group"
    );
    assert!(
        per_member.iter().all(|&n| n > 0),
        "every member gets a share: {per_member:?}"
    );
    quiet(&mut plain, Duration::from_millis(20)).await;
    for r in readers {
        r.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// 3. request/reply

async fn case_request_reply(env: &Env) {
    let responder = env.client().await;
    let mut svc = responder.subscribe("svc.echo").await.unwrap();
    let r2 = responder.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            let mut out = b"echo:".to_vec();
            out.extend_from_slice(m.payload());
            r2.respond(&m, out).await.unwrap();
        }
    });
    let c = env.client().await;
    assert_eq!(
        c.request("svc.echo", "hi").await.unwrap(),
        Bytes::from("echo:hi")
    );
    // Concurrent requests: each gets its own reply, and its correlation id back.
    let mut calls = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        calls.push(tokio::spawn(async move {
            let h = Headers::builder()
                .insert(WellKnown::CorrelationId, format!("corr-{i}"))
                .unwrap()
                .build();
            c.request_with("svc.echo", i.to_string(), CallOptions::new().headers(h))
                .await
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let r = call.await.unwrap().unwrap();
        assert_eq!(r.payload, Bytes::from(format!("echo:{i}")));
        assert_eq!(
            r.headers.get(WellKnown::CorrelationId),
            Some(format!("corr-{i}").as_bytes()),
            "the correlation id comes back with the reply"
        );
    }
    // Nobody listens: NO_RESPONDERS at once, not a timeout.
    let t0 = Instant::now();
    let e = c.request("svc.nobody", "x").await.unwrap_err();
    assert_eq!(e.status(), Status::NO_RESPONDERS, "{e}");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    // A responder that never answers: the deadline ends the request.
    let silent = env.client().await;
    let mut held = silent.subscribe("svc.silent").await.unwrap();
    let t0 = Instant::now();
    let c1 = c.clone();
    let call = tokio::spawn(async move {
        c1.request_with(
            "svc.silent",
            "x",
            CallOptions::new().timeout(Duration::from_millis(100)),
        )
        .await
    });
    // Read before the deadline: a request still waiting in the broker when its deadline
    // passes is dropped, not delivered late.
    assert_eq!(text(&next(&mut held).await), "x", "the responder got it");
    let e = call.await.unwrap().unwrap_err();
    let took = t0.elapsed();
    assert_eq!(e.status(), Status::TIMEOUT, "{e}");
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_secs(1),
        "TIMEOUT after {took:?}"
    );
    // Dropping a request's future cancels it at the broker.
    let before = c.stats().await.unwrap().values["requests_cancelled"];
    let c2 = c.clone();
    let pending = tokio::spawn(async move { c2.request("svc.silent", "y").await });
    assert_eq!(
        text(&next(&mut held).await),
        "y",
        "the request is at the responder"
    );
    pending.abort();
    assert!(pending.await.unwrap_err().is_cancelled());
    let t0 = Instant::now();
    let cancelled = loop {
        let n = c.stats().await.unwrap().values["requests_cancelled"];
        if n > before || t0.elapsed() > WAIT {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(cancelled, before + 1, "one request cancelled");
    echo.abort();
}

// ---------------------------------------------------------------------------------------------
// 4. slow consumers

/// Messages published to a subscriber that reads none of them meanwhile.
const FLOOD: usize = 10;
/// The subscriber's queue bound.
const MAX_PENDING: usize = 3;

/// A subscriber with `policy` that reads nothing while [`FLOOD`] messages are published to it.
/// Its credit is 1: over TCP at most one message is on its way to the client besides what the
/// broker queues; in-process the client reads the broker's queue itself, so none is.
async fn flooded(env: &Env, policy: Policy) -> (Client, Subscription, Client) {
    let s = env.client().await;
    let so = SubscribeOptions {
        policy,
        max_pending: MAX_PENDING as u32,
        credit: 1,
        ..SubscribeOptions::default()
    };
    let sub = s.subscribe_with("feed", so).await.unwrap();
    let p = env.client().await;
    for i in 0..FLOOD {
        p.publish("feed", i.to_string()).await.unwrap();
    }
    p.flush().await.unwrap();
    (s, sub, p)
}

/// What `sub` yields until it stays quiet, and whether it ended.
async fn read_all(sub: &mut Subscription) -> (Vec<String>, bool) {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(150), sub.next()).await {
            Ok(Some(m)) => got.push(text(&m)),
            Ok(None) => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

async fn case_drop_newest(env: &Env) {
    let (_s, mut sub, p) = flooded(env, Policy::DropNewest).await;
    let (got, ended) = read_all(&mut sub).await;
    assert!(!ended, "dropping does not end the subscription");
    let k = got.len();
    assert!(
        (MAX_PENDING..=MAX_PENDING + 1).contains(&k),
        "a full queue (and at most one message in flight): {got:?}"
    );
    assert_eq!(got, strings(0..k), "the first messages are kept, in order");
    assert_eq!(env.stat("slow_consumer_drops"), (FLOOD - k) as u64);
    p.publish("feed", "after").await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "after");
}

async fn case_drop_oldest(env: &Env) {
    let (_s, mut sub, p) = flooded(env, Policy::DropOldest).await;
    let (got, ended) = read_all(&mut sub).await;
    assert!(!ended, "dropping does not end the subscription");
    let k = got.len();
    assert!(
        (MAX_PENDING..=MAX_PENDING + 1).contains(&k),
        "a full queue (and at most one message in flight): {got:?}"
    );
    assert_eq!(
        got[k - MAX_PENDING..],
        strings(FLOOD - MAX_PENDING..FLOOD),
        "the newest messages are kept: {got:?}"
    );
    let n: Vec<usize> = got.iter().map(|s| s.parse().unwrap()).collect();
    assert!(n.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert_eq!(env.stat("slow_consumer_drops"), (FLOOD - k) as u64);
    p.publish("feed", "after").await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "after");
}

async fn case_disconnect(env: &Env) {
    let (_s, mut sub, p) = flooded(env, Policy::Disconnect).await;
    let (got, ended) = read_all(&mut sub).await;
    assert!(ended, "the subscription ends: {got:?}");
    assert!(
        got.is_empty() || got == ["0"],
        "what was queued went with the subscription (at most one was in flight): {got:?}"
    );
    // The broker ended it with SLOW_CONSUMER (which the client logs) and counted it.
    assert_eq!(env.stat("slow_consumer_disconnects"), 1);
    assert_eq!(env.broker.subscription_count(), 0);
    assert_eq!(env.stat("subscriptions"), 0);
    assert_eq!(env.stat("slow_consumer_drops"), 0);
    p.publish_with("feed", "later", PublishOptions::new().ack())
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .is_none(),
        "nothing after the end"
    );
}

async fn case_block(env: &Env) {
    let s = env.client().await;
    let so = SubscribeOptions {
        policy: Policy::Block,
        max_pending: 2,
        credit: 1,
        ..SubscribeOptions::default()
    };
    let mut sub = s.subscribe_with("metrics.cpu", so).await.unwrap();
    let p = env.client().await;
    let ack = PublishOptions::new().ack();
    // The publisher is held while the queue is full (in-process it waits in its own task; over
    // a socket the broker stops reading its connection) and nothing is lost.
    let done = Arc::new(AtomicUsize::new(0));
    let d2 = done.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..10 {
            p.publish_with("metrics.cpu", i.to_string(), ack.clone())
                .await?;
            d2.fetch_add(1, Ordering::SeqCst);
        }
        Ok::<_, Error>(())
    });
    eventually("publishes filling the queue", || {
        done.load(Ordering::SeqCst) >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Two fill the queue; over a socket one more may be on its way to the subscriber (its
    // one credit).
    let held_at = done.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&held_at),
        "the publisher waits while the queue is full ({held_at} acknowledged)"
    );
    assert!(!publisher.is_finished());
    for i in 0..10 {
        assert_eq!(
            text(&next(&mut sub).await),
            i.to_string(),
            "no loss, in order"
        );
    }
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publisher finishes once the subscriber reads")
        .unwrap()
        .unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 10);
    assert_eq!(env.stat("slow_consumer_drops"), 0);
    assert_eq!(env.stat("publish_rejections"), 0);
}

fn short_block(cfg: &mut BrokerConfig) {
    cfg.max_block_ms = 150;
}

async fn case_block_gives_up(env: &Env) {
    let s = env.client().await;
    let so = SubscribeOptions {
        policy: Policy::Block,
        max_pending: 1,
        credit: 1,
        ..SubscribeOptions::default()
    };
    let _sub = s.subscribe_with("stuck", so).await.unwrap();
    let p = env.client().await;
    let ack = PublishOptions::new().ack();
    // Nobody reads: after the broker's max_block_ms the publisher gets a clear refusal.
    let mut refused = None;
    for i in 0..4 {
        if let Err(e) = p.publish_with("stuck", i.to_string(), ack.clone()).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("a publish is refused once the wait is over");
    assert_eq!(e.status(), Status::BACKPRESSURE_REJECTION, "{e}");
    assert!(e.is_retryable());
    assert!(env.stat("publish_rejections") >= 1);
    // The publisher's connection still works.
    p.flush().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// 5. unsubscribing: on drop, explicitly, after n messages

async fn case_unsubscribe_on_drop(env: &Env) {
    let c = env.client().await;
    let p = env.client().await;
    let base = env.broker.subscription_count();
    // A subscription that would push back on publishers if it stayed: it reads nothing.
    let so = SubscribeOptions {
        policy: Policy::Block,
        max_pending: 1,
        credit: 1,
        ..SubscribeOptions::default()
    };
    let blocker = c.subscribe_with("t.drop", so).await.unwrap();
    assert_eq!(env.broker.subscription_count(), base + 1);
    p.publish("t.drop", "unread").await.unwrap();
    p.flush().await.unwrap();
    drop(blocker);
    c.flush().await.unwrap();
    assert_eq!(
        env.broker.subscription_count(),
        base,
        "dropped, unsubscribed"
    );
    // Nothing is queued for it any more: publishes that it would have blocked go through.
    let quick = PublishOptions {
        timeout: Some(Duration::from_millis(500)),
        ..PublishOptions::new().ack()
    };
    for i in 0..5 {
        p.publish_with("t.drop", i.to_string(), quick.clone())
            .await
            .unwrap_or_else(|e| panic!("publish {i} after the drop: {e}"));
    }
    // A new subscriber gets the new messages only.
    let mut fresh = c.subscribe("t.drop").await.unwrap();
    assert_eq!(env.broker.subscription_count(), base + 1);
    p.publish("t.drop", "again").await.unwrap();
    assert_eq!(text(&next(&mut fresh).await), "again");
    // An explicit unsubscribe ends the stream.
    fresh.unsubscribe();
    c.flush().await.unwrap();
    assert_eq!(env.broker.subscription_count(), base);
    p.publish("t.drop", "gone").await.unwrap();
    p.flush().await.unwrap();
    assert!(
        tokio::time::timeout(WAIT, fresh.next())
            .await
            .expect("the stream ends")
            .is_none(),
        "nothing after unsubscribe"
    );
}

/// `unsubscribe_after(n)`: n more messages, then the subscription is over, at the broker and
/// for the subscriber (its stream ends, as after `unsubscribe()`).
async fn case_unsubscribe_after(env: &Env) {
    let c = env.client().await;
    let base = env.broker.subscription_count();
    let mut sub = c.subscribe("t.after").await.unwrap();
    sub.unsubscribe_after(2);
    c.flush().await.unwrap();
    for i in 0..5 {
        c.publish("t.after", i.to_string()).await.unwrap();
    }
    c.flush().await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "0");
    assert_eq!(text(&next(&mut sub).await), "1");
    eventually("the broker to end the subscription", || {
        env.broker.subscription_count() == base
    })
    .await;
    let end = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "after its last message the stream ends (Subscription::next: None once unsubscribed), \
         got {end:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5b. subscribing while others publish

/// A subscription made while others publish to its subject gets what is published after the
/// broker confirmed it. Tried again and again for a while: the broker caches, per subject, which
/// subscriptions match, and a publish racing a subscribe must not leave a stale match list.
async fn case_subscribe_while_publishing(env: &Env) {
    const PUBLISHERS: usize = 4;
    const BURST: usize = 4;
    // Small queues and credit: no subscriber builds a backlog, over TCP either, so a first
    // message comes within milliseconds whenever the broker routes it.
    let small = || SubscribeOptions {
        max_pending: 16,
        credit: 8,
        ..SubscribeOptions::default()
    };
    let p = env.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let (p, stop) = (p.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..BURST {
                        p.publish("hot.subject", "m").await.unwrap();
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let w = env.client().await;
    let mut witness = w.subscribe_with("hot.subject", small()).await.unwrap();
    let c = env.client().await;
    let t0 = Instant::now();
    let mut round = 0;
    while t0.elapsed() < Duration::from_millis(800) {
        let mut s = c.subscribe_with("hot.subject", small()).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(1), s.next()).await;
        if !matches!(first, Ok(Some(_))) {
            // Tell a stale match list from a slow machine.
            let mut flowing = 0;
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(100), witness.next()).await
            {
                flowing += 1;
                if flowing == 50 {
                    break;
                }
            }
            let still = tokio::time::timeout(Duration::from_millis(100), s.next()).await;
            // Any subscription change drops the broker's cached matches.
            let _unrelated = c.subscribe("unrelated.subject").await.unwrap();
            let after = tokio::time::timeout(Duration::from_millis(500), s.next()).await;
            stop.store(true, Ordering::Relaxed);
            panic!(
                "round {round}: a confirmed subscription got nothing for 1 s while its subject \
                 was being published to; meanwhile an older subscriber got {flowing} messages, \
                 the new one then got {still:?}; after an unrelated subscribe it got {after:?}"
            );
        }
        drop(s);
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// 6. client middleware

/// Counts calls, tags them with a tenant, and refuses `secret.*` itself.
struct Gate(Arc<AtomicUsize>);

impl ClientMiddleware for Gate {
    fn call<'a>(
        &'a self,
        mut call: OutgoingCall,
        next: ClientNext<'a>,
    ) -> BoxFuture<'a, mitto::Result<Reply>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        if call.method.starts_with("secret.") {
            let e = Error::new(
                Status::FORBIDDEN,
                format!("middleware refuses {}", call.method),
            );
            return Box::pin(async move { Err(e) });
        }
        let h = call.options.headers.take().unwrap_or_default();
        call.options.headers = Some(
            h.to_builder()
                .insert_custom("tenant", "acme")
                .unwrap()
                .build(),
        );
        next.run(call)
    }
}

/// Answers every request on `sub` with its `tenant` header (or "none").
fn answer_tenant(c: Client, mut sub: Subscription) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let t = m.headers().get_custom("tenant").unwrap_or(b"none").to_vec();
            c.respond(&m, t).await.unwrap();
        }
    })
}

async fn case_client_middleware(env: &Env) {
    let responder = env.client().await;
    let a = answer_tenant(
        responder.clone(),
        responder.subscribe("svc.tenant").await.unwrap(),
    );
    let b = answer_tenant(
        responder.clone(),
        responder.subscribe("secret.>").await.unwrap(),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let c = env
        .client_with(opts().middleware(Gate(calls.clone())))
        .await;
    assert_eq!(c.request("svc.tenant", "").await.unwrap(), "acme");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let r = c
        .request_with(
            "svc.tenant",
            "",
            CallOptions::new().timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    assert_eq!(r.payload, "acme");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let e = c.request("svc.none", "").await.unwrap_err();
    assert_eq!(e.status(), Status::NO_RESPONDERS, "{e}");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let e = c.request("secret.plans", "").await.unwrap_err();
    assert_eq!(e.status(), Status::FORBIDDEN, "{e}");
    assert_eq!(e.message(), "middleware refuses secret.plans");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        env.stat("requests"),
        3,
        "the refused call never reached the broker"
    );
    // Without the middleware: no tenant, and secret.* has a responder.
    let plain = env.client().await;
    assert_eq!(plain.request("svc.tenant", "").await.unwrap(), "none");
    assert_eq!(plain.request("secret.plans", "").await.unwrap(), "none");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    a.abort();
    b.abort();
}

// ---------------------------------------------------------------------------------------------
// 7. at-least-once

async fn case_at_least_once(env: &Env) {
    let s = env.client().await;
    let so = SubscribeOptions {
        delivery: Delivery::AtLeastOnce,
        ack_wait_ms: 150,
        ..SubscribeOptions::default()
    };
    let mut sub = s.subscribe_with("work", so).await.unwrap();
    let p = env.client().await;
    let t0 = Instant::now();
    p.publish("work", "j1").await.unwrap();
    p.publish("work", "j2").await.unwrap();
    let first = next(&mut sub).await;
    assert!(first.needs_ack());
    assert_eq!(text(&first), "j1");
    let second = next(&mut sub).await;
    assert_eq!(text(&second), "j2");
    sub.ack(&second);
    // j1 was not acknowledged: it comes again after the ack wait; j2 does not.
    let again = next(&mut sub).await;
    assert_eq!(text(&again), "j1");
    assert!(again.needs_ack());
    assert!(
        t0.elapsed() >= Duration::from_millis(140),
        "redelivered only after the ack wait, not after {:?}",
        t0.elapsed()
    );
    sub.ack(&again);
    quiet(&mut sub, Duration::from_millis(400)).await;
    assert_eq!(env.stat("acks"), 2);
    assert_eq!(env.stat("redeliveries"), 1);
}

/// `ack_all` acknowledges, at once, what its own subscription delivered and leaves the rest.
async fn case_ack_all(env: &Env) {
    let s = env.client().await;
    let so = SubscribeOptions {
        delivery: Delivery::AtLeastOnce,
        ack_wait_ms: 150,
        ..SubscribeOptions::default()
    };
    let mut a = s.subscribe_with("batch.a", so.clone()).await.unwrap();
    let mut b = s.subscribe_with("batch.b", so).await.unwrap();
    let p = env.client().await;
    for j in ["j1", "j2", "j3"] {
        p.publish("batch.a", j).await.unwrap();
    }
    p.publish("batch.b", "k1").await.unwrap();
    let mut got = vec![next(&mut a).await, next(&mut a).await, next(&mut a).await];
    got.push(next(&mut b).await);
    assert_eq!(
        strings(got.iter().map(text)),
        strings(["j1", "j2", "j3", "k1"])
    );
    a.ack_all(&got);
    // k1 was b's: left unacknowledged, it comes again (its second delivery); a's do not.
    let again = next(&mut b).await;
    assert_eq!((text(&again), again.delivery_count()), ("k1".into(), 2));
    b.ack_all([&again]);
    quiet(&mut a, Duration::from_millis(400)).await;
    quiet(&mut b, Duration::from_millis(100)).await;
    assert_eq!(env.stat("acks"), 4);
    assert_eq!(env.stat("redeliveries"), 1);
}

// ---------------------------------------------------------------------------------------------
// 8. URGENT

async fn case_urgent(env: &Env) {
    let s = env.client().await;
    let so = SubscribeOptions {
        credit: 1,
        ..SubscribeOptions::default()
    };
    let mut sub = s.subscribe_with("ops", so).await.unwrap();
    let p = env.client().await;
    for i in 1..=6 {
        p.publish("ops", format!("n{i}")).await.unwrap();
    }
    p.publish_with("ops", "URGENT", PublishOptions::new().urgent())
        .await
        .unwrap();
    p.flush().await.unwrap();
    let mut order = Vec::new();
    for _ in 0..7 {
        let m = next(&mut sub).await;
        assert_eq!(m.is_urgent(), text(&m) == "URGENT");
        order.push(text(&m));
    }
    // Over TCP one normal message may already be on its way (credit 1) when URGENT arrives.
    let pos = order.iter().position(|m| m == "URGENT").unwrap();
    assert!(pos <= 1, "URGENT overtakes what is queued: {order:?}");
    order.remove(pos);
    assert_eq!(order, strings((1..=6).map(|i| format!("n{i}"))));
}

// ---------------------------------------------------------------------------------------------
// 9. services

async fn case_services(env: &Env) {
    let srv = Server::new()
        .route("calc.add", |req: Request| async move {
            let (a, b): (i64, i64) = req.decode()?;
            Response::encode(Codec::Json, &(a + b))
        })
        .attach(env.url(), opts())
        .await
        .unwrap();
    assert_eq!(env.broker.service_count(), 1);
    let c = env.client().await;
    let sum: i64 = c.call_typed("calc.add", (2, 3)).await.unwrap();
    assert_eq!(sum, 5);
    assert_eq!(
        c.request("calc.add", "[40, 2]").await.unwrap(),
        Bytes::from("42")
    );
    let e = c.request("calc.add", "not json").await.unwrap_err();
    assert_eq!(e.status(), Status::BAD_REQUEST, "{e}");
    assert_eq!(env.stat("service_calls"), 3);
    srv.shutdown().await;
    eventually("the instance unregistered", || {
        env.broker.service_count() == 0
    })
    .await;
    let e = c.request("calc.add", "[1, 1]").await.unwrap_err();
    assert_eq!(e.status(), Status::NO_RESPONDERS, "{e}");
}

// ---------------------------------------------------------------------------------------------
// 9b. users and permissions

fn users(cfg: &mut BrokerConfig) {
    cfg.users = vec![
        User {
            name: "alice".into(),
            password: "pw".into(),
            publish: vec!["orders.>".into()],
            subscribe: vec!["orders.*".into()],
        },
        User {
            name: "admin".into(),
            password: "root".into(),
            ..User::default()
        },
    ];
}

async fn case_permissions(env: &Env) {
    for o in [opts().user_password("alice", "nope"), opts()] {
        let e = Client::connect(env.url(), o.reconnect(false))
            .await
            .unwrap_err();
        assert_eq!(e.status(), Status::UNAUTHORIZED, "{e}");
    }
    let admin = env.client_with(opts().user_password("admin", "root")).await;
    let mut everything = admin.subscribe(">").await.unwrap();
    let alice = env.client_with(opts().user_password("alice", "pw")).await;
    let mut mine = alice.subscribe("orders.*").await.unwrap();
    for filter in ["orders.>", "users.x"] {
        let e = alice.subscribe(filter).await.unwrap_err();
        assert_eq!(e.status(), Status::FORBIDDEN, "{filter}: {e}");
    }
    let ack = PublishOptions::new().ack();
    let e = alice
        .publish_with("users.x", "no", ack.clone())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::FORBIDDEN, "{e}");
    // Fire and forget: in-process the refusal comes back at once, over TCP the client only
    // logs it. Either way nobody gets the message (checked below).
    let _ = alice.publish("users.y", "no").await;
    let e = alice.request("users.get", "x").await.unwrap_err();
    assert_eq!(e.status(), Status::FORBIDDEN, "{e}");
    alice.publish_with("orders.new", "yes", ack).await.unwrap();
    assert_eq!(text(&next(&mut mine).await), "yes");
    let m = next(&mut everything).await;
    assert_eq!(
        (m.subject(), text(&m).as_str()),
        ("orders.new", "yes"),
        "nothing refused was delivered"
    );
    assert_eq!(env.stat("permission_denials"), 5);
    assert_eq!(env.stat("auth_failures"), 2);
}

/// A publish happens when its future is first polled: one created and not yet awaited sends
/// nothing, and one dropped unpolled is never sent; a bad subject fails at the await.
async fn case_publish_when_polled(env: &Env) {
    let c = env.client().await;
    let mut sub = c.subscribe("lazy.x").await.unwrap();
    let first = c.publish("lazy.x", "1");
    quiet(&mut sub, Duration::from_millis(100)).await;
    first.await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "1");
    drop(c.publish("lazy.x", "2"));
    c.publish("lazy.x", "3").await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "3");
    let bad = c.publish("lazy.*", "4").await.unwrap_err();
    assert_eq!(bad.status(), Status::INVALID_SUBJECT, "{bad}");
    quiet(&mut sub, Duration::from_millis(50)).await;
}

/// A client that was closed refuses to publish with a clear error, and nothing it tried to
/// publish reaches a subscriber (an in-process client must not keep routing through the
/// broker's port of the connection it closed).
async fn case_publish_after_close(env: &Env) {
    let (p, s) = (env.client().await, env.client().await);
    let mut sub = s.subscribe("closing.x").await.unwrap();
    s.flush().await.unwrap();
    p.publish("closing.x", "before").await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "before");
    p.close().await;
    let e = p.publish("closing.x", "after").await.unwrap_err();
    assert_eq!(e.status(), Status::UNAVAILABLE, "{e}");
    assert!(e.message().contains("closed"), "{e}");
    quiet(&mut sub, Duration::from_millis(100)).await;
    assert_eq!(
        env.stat("msgs_in"),
        1,
        "only the first publish reached the broker"
    );
}

/// In-process clients whose broker restarts (a new broker under the same `inproc://` name)
/// reconnect: the publisher publishes to the new broker, not into the port of the old one, and
/// the subscription made before the restart goes on with the new broker's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_clients_follow_a_restarted_broker() {
    let name = format!("bus-restart-{}", std::process::id());
    let cfg = || BrokerConfig {
        listen: vec![format!("inproc://{name}")],
        monitor: String::new(),
        ..BrokerConfig::default()
    };
    let old = Broker::start(cfg()).await.unwrap();
    let url = old.urls()[0].clone();
    let p = connect(&url, opts()).await;
    let s = connect(&url, opts()).await;
    let mut sub = s.subscribe("restart.x").await.unwrap();
    p.publish("restart.x", "1").await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "1");
    bounded("the old broker's shutdown", old.shutdown()).await;
    eventually("the publisher notices", || !p.is_connected()).await;
    let new = Broker::start(cfg()).await.unwrap();
    eventually("both clients are back and subscribed", || {
        p.is_connected() && s.is_connected() && new.subscription_count() == 1
    })
    .await;
    p.publish("restart.x", "2").await.unwrap();
    assert_eq!(
        text(&next(&mut sub).await),
        "2",
        "the old subscription goes on"
    );
    let s2 = connect(&url, opts()).await;
    let mut sub2 = s2.subscribe("restart.x").await.unwrap();
    p.publish("restart.x", "3").await.unwrap();
    assert_eq!(text(&next(&mut sub).await), "3");
    assert_eq!(text(&next(&mut sub2).await), "3");
    assert_eq!(new.stats()["msgs_in"], 2, "the new broker routed both");
    bounded("the new broker's shutdown", new.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// in-process publishing stays cooperative

/// A loop of in-process publishes (which never wait while the subscribers have room) still
/// lets other tasks on the same thread run: on a single-threaded runtime, a task spawned before
/// the loop runs while the loop is still going.
#[tokio::test(flavor = "current_thread")]
async fn in_process_publish_loops_let_other_tasks_run() {
    let env = Env::start_with(Transport::Inproc, defaults).await;
    let c = env.client().await;
    let mut sub = c.subscribe("coop.x").await.unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = ran.clone();
    tokio::spawn(async move { r2.store(true, Ordering::SeqCst) });
    let mut seen_during_loop = false;
    for i in 0..2_000u32 {
        c.publish("coop.x", i.to_string()).await.unwrap();
        seen_during_loop |= ran.load(Ordering::SeqCst);
    }
    assert!(
        seen_during_loop,
        "the spawned task ran while the loop published"
    );
    assert_eq!(text(&next(&mut sub).await), "0");
    env.shutdown().await;
}

/// An in-process subscriber reading a long backlog (always ready) still lets other tasks on the
/// same thread run: each message spends the task's cooperative budget, as a tokio channel's
/// receive does.
#[tokio::test(flavor = "current_thread")]
async fn in_process_subscribers_reading_a_backlog_let_other_tasks_run() {
    let env = Env::start_with(Transport::Inproc, defaults).await;
    let c = env.client().await;
    let opts = SubscribeOptions {
        max_pending: 4_096,
        ..SubscribeOptions::default()
    };
    let mut sub = c.subscribe_with("coop.r", opts).await.unwrap();
    for i in 0..2_000u32 {
        c.publish("coop.r", i.to_string()).await.unwrap();
    }
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = ran.clone();
    tokio::spawn(async move { r2.store(true, Ordering::SeqCst) });
    let mut seen_during_loop = false;
    for i in 0..2_000u32 {
        assert_eq!(text(&next(&mut sub).await), i.to_string());
        seen_during_loop |= ran.load(Ordering::SeqCst);
    }
    assert!(
        seen_during_loop,
        "the spawned task ran while the loop read its backlog"
    );
    env.shutdown().await;
}

/// Many distinct subjects from one publisher: every one is delivered (the reuse of the last
/// subject and the process-wide subject copies never mix two subjects up, and stop growing at
/// their bound without failing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_distinct_subjects_are_each_delivered_to_the_right_subscription() {
    let env = Env::start_with(Transport::Inproc, defaults).await;
    let c = env.client().await;
    let mut all = c.subscribe("many.>").await.unwrap();
    // 6,000 subjects of about 200 bytes: more than the 1 MiB kept for subjects.
    let pad = "p".repeat(190);
    for i in 0..6_000u32 {
        let subject = format!("many.{pad}.{i}");
        c.publish(&subject, i.to_string()).await.unwrap();
        let m = next(&mut all).await;
        assert_eq!(m.subject(), subject);
        assert_eq!(text(&m), i.to_string());
    }
    let e = c.publish("many.*", "x").await.unwrap_err();
    assert_eq!(e.status(), Status::INVALID_SUBJECT, "{e}");
    env.shutdown().await;
}
