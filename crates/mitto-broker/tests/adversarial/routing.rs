//! Who may act on what: an authenticated user with narrow permissions tries to answer other
//! users' calls and requests, to take over their sessions and to act on their ids. Each attempt
//! is refused (or ignored, where the spec says a frame may have crossed), the legitimate answer
//! still arrives, and other clients see nothing of it.

use crate::raw::{offer, subject, Raw, GUARD};
use bytes::Bytes;
use mitto::proto::negotiate::Features;
use mitto::proto::{
    Delivery, Flags, Frame, FrameType, Headers, Hello, SubscribeOptions, WellKnown,
};
use mitto::{Client, ClientOptions, Status};
use mitto_broker::{Broker, BrokerConfig, User};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const BIT63: u64 = 1 << 63;

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn user(name: &str, publish: &[&str], subscribe: &[&str]) -> User {
    User {
        name: name.into(),
        password: format!("{name}-pw"),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
    }
}

/// A broker on TCP and in-process, with a service user, a caller, an unrestricted user and
/// mallory, who may only publish and subscribe under `m.>`.
async fn broker() -> (Broker, String, String) {
    let name = format!(
        "adv-routing-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let cfg = BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into(), format!("inproc://{name}")],
        monitor: String::new(),
        users: vec![
            user("svc", &["none.>"], &["svc.>"]),
            user("bob", &["svc.>", "news.>"], &["news.>"]),
            user("eve", &[], &[]),
            user("mallory", &["m.>"], &["m.>"]),
        ],
        ..BrokerConfig::default()
    };
    let b = Broker::start(cfg).await.unwrap();
    let (tcp, mem) = (b.urls()[0].clone(), b.urls()[1].clone());
    (b, tcp, mem)
}

async fn login(url: &str, name: &str) -> Raw {
    Raw::login(url, name, &format!("{name}-pw")).await
}

fn opts(name: &str) -> ClientOptions {
    ClientOptions::new()
        .timeout(GUARD)
        .user_password(name, format!("{name}-pw"))
}

fn stat(b: &Broker, name: &str) -> u64 {
    b.stats().get(name).copied().unwrap_or(0)
}

/// Another client's pub/sub and requests on the same broker still work.
async fn others_unaffected(url: &str) {
    let c = Client::connect(url, opts("eve")).await.unwrap();
    let mut s = c.subscribe("other.x").await.unwrap();
    c.publish("other.x", "fine").await.unwrap();
    let m = tokio::time::timeout(GUARD, s.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload(), "fine");
    c.close().await;
}

/// Finding 1: a RESPONSE, STREAM or CREDIT naming a call the broker forwarded counts only from
/// the connection the call was forwarded to; from anyone else it is ignored as a frame for no
/// call in flight (PROTOCOL.md 3.12, 10.1), and the real answer reaches the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_instance_a_call_went_to_can_answer_it() {
    let (b, url, _) = broker().await;
    let mut inst = login(&url, "svc").await;
    inst.join(true, 1, "svc.echo", &SubscribeOptions::default())
        .await;
    let mut caller = login(&url, "bob").await;
    caller
        .send(&Frame::request(7, subject("svc.echo"), "question"))
        .await;
    let fwd = inst.recv().await;
    assert_eq!(fwd.frame_type, FrameType::Request, "{fwd:?}");
    assert_ne!(fwd.id & BIT63, 0, "broker call ids carry bit 63");
    let mut mallory = login(&url, "mallory").await;
    // The exact id (a perfect guess), then the counter space a guess would sweep.
    mallory
        .send(&Frame::stream(fwd.id, "forged item", false))
        .await;
    mallory.send(&Frame::credit_stream(fwd.id, 1_000)).await;
    mallory
        .send(&Frame::response(fwd.id, Status::OK, "forged"))
        .await;
    for n in 1..=64u64 {
        mallory
            .send(&Frame::response(BIT63 | n, Status::OK, "forged"))
            .await;
    }
    assert!(
        mallory.sync().await.is_empty(),
        "ignored, as a frame for a call not in flight: no oracle"
    );
    assert!(stat(&b, "stray_responses") >= 67, "{:?}", b.stats());
    // The real answer is the first thing the caller gets for its call.
    inst.send(&Frame::response(fwd.id, Status::OK, "real"))
        .await;
    let r = caller.recv().await;
    assert_eq!(
        (r.frame_type, r.id, r.status, &r.payload[..]),
        (FrameType::Response, 7, Status::OK, &b"real"[..]),
        "{r:?}"
    );
    // Broker call ids are not a sequence: the next call's id says nothing about the last.
    caller
        .send(&Frame::request(8, subject("svc.echo"), "again"))
        .await;
    let fwd2 = inst.recv().await;
    assert_ne!(fwd2.id & BIT63, 0);
    assert!(
        fwd2.id.abs_diff(fwd.id) > 1 << 20,
        "{:x} then {:x}",
        fwd.id,
        fwd2.id
    );
    inst.send(&Frame::response(fwd2.id, Status::OK, "real 2"))
        .await;
    assert_eq!(&caller.recv().await.payload[..], b"real 2");
    others_unaffected(&url).await;
    b.shutdown().await;
}

/// The same for a streamed call: items and credit from a stranger never reach the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_inject_into_a_streamed_call() {
    let (b, url, _) = broker().await;
    let mut inst = login(&url, "svc").await;
    inst.join(true, 1, "svc.feed", &SubscribeOptions::default())
        .await;
    let mut caller = login(&url, "bob").await;
    caller
        .send(&Frame::request(3, subject("svc.feed"), "").with_flags(Flags::START))
        .await;
    let fwd = inst.recv().await;
    let mut mallory = login(&url, "mallory").await;
    mallory.send(&Frame::stream(fwd.id, "forged", true)).await;
    assert!(mallory.sync().await.is_empty());
    inst.send(&Frame::stream(fwd.id, "item 1", false)).await;
    inst.send(&Frame::response(fwd.id, Status::OK, "")).await;
    let first = caller.recv().await;
    assert_eq!(
        (first.frame_type, first.id, &first.payload[..]),
        (FrameType::Stream, 3, &b"item 1"[..]),
        "{first:?}"
    );
    assert_eq!(caller.recv().await.frame_type, FrameType::Response);
    b.shutdown().await;
}

fn reply_to(f: &Frame) -> String {
    f.headers
        .get(WellKnown::ReplyTo)
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
        .expect("a reply-to header")
}

/// Finding 2: a reply to the broker's inbox is taken only from a connection the request was
/// delivered to, once, while the request is in flight; every other publish to an inbox is
/// refused with FORBIDDEN, whatever the publisher's permissions, and inbox names are not a
/// sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_takes_one_reply_from_a_connection_the_request_reached() {
    let (b, url, mem) = broker().await;
    // The responder may publish nothing but `none.>`: replying needs no publish permission.
    let mut responder = login(&url, "svc").await;
    responder
        .join(false, 1, "svc.ask", &SubscribeOptions::default())
        .await;
    let mut caller = login(&url, "bob").await;
    caller
        .send(&Frame::request(9, subject("svc.ask"), "q1"))
        .await;
    let ev = responder.recv().await;
    assert_eq!(ev.frame_type, FrameType::Event, "{ev:?}");
    let inbox = reply_to(&ev);
    let denied = stat(&b, "permission_denials");
    // Mallory (narrow permissions) and eve (none) learnt the inbox: neither may answer.
    for who in ["mallory", "eve"] {
        let mut forger = login(&url, who).await;
        forger
            .send(
                &Frame::publish(subject(&inbox), "forged")
                    .with_id(33)
                    .with_flags(Flags::ACK_REQUIRED),
            )
            .await;
        let e = forger.recv().await;
        assert_eq!(
            (e.frame_type, e.id, e.status),
            (FrameType::Error, 33, Status::FORBIDDEN),
            "{who}: {e:?}"
        );
    }
    // Nor an in-process client.
    let local = Client::connect(&mem, opts("eve")).await.unwrap();
    let e = local.publish(&inbox, "forged").await.unwrap_err();
    assert_eq!(e.status(), Status::FORBIDDEN, "{e}");
    assert_eq!(stat(&b, "permission_denials"), denied + 3);
    // The responder's reply is taken and is what the caller gets.
    responder
        .send(
            &Frame::publish(subject(&inbox), "real")
                .with_id(40)
                .with_flags(Flags::ACK_REQUIRED),
        )
        .await;
    let a = responder.recv().await;
    assert_eq!((a.frame_type, a.id), (FrameType::Ack, 40), "{a:?}");
    let r = caller.recv().await;
    assert_eq!(
        (r.frame_type, r.id, r.status, &r.payload[..]),
        (FrameType::Response, 9, Status::OK, &b"real"[..]),
        "{r:?}"
    );
    // Once: the request has ended, a second reply is refused.
    responder
        .send(
            &Frame::publish(subject(&inbox), "again")
                .with_id(41)
                .with_flags(Flags::ACK_REQUIRED),
        )
        .await;
    let e = responder.recv().await;
    assert_eq!(
        (e.frame_type, e.id, e.status),
        (FrameType::Error, 41, Status::FORBIDDEN),
        "{e:?}"
    );
    // Every request gets a fresh random inbox: nothing to learn from one about the next.
    caller
        .send(&Frame::request(10, subject("svc.ask"), "q2"))
        .await;
    let ev2 = responder.recv().await;
    let inbox2 = reply_to(&ev2);
    let token = |s: &str| s.rsplit('.').next().unwrap().to_owned();
    let (t1, t2) = (token(&inbox), token(&inbox2));
    assert!(
        t1.len() >= 32 && t2.len() >= 32,
        "128-bit tokens: {inbox}, {inbox2}"
    );
    let (n1, n2) = (
        u128::from_str_radix(&t1, 16).unwrap(),
        u128::from_str_radix(&t2, 16).unwrap(),
    );
    assert!(n1.abs_diff(n2) > 1 << 64, "{inbox} then {inbox2}");
    responder
        .send(&Frame::publish(subject(&inbox2), "real 2"))
        .await;
    assert_eq!(&caller.recv().await.payload[..], b"real 2");
    others_unaffected(&url).await;
    b.shutdown().await;
}

/// A well-behaved responder on the default client API still answers, over a socket and
/// in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responders_on_the_client_api_still_answer() {
    let (b, url, mem) = broker().await;
    for responder_url in [&url, &mem] {
        let responder = Client::connect(responder_url, opts("svc")).await.unwrap();
        let mut sub = responder.subscribe("svc.hello").await.unwrap();
        let r2 = responder.clone();
        let task = tokio::spawn(async move {
            let m = sub.next().await.unwrap();
            r2.respond(&m, "hi").await.unwrap();
        });
        let caller = Client::connect(&url, opts("bob")).await.unwrap();
        assert_eq!(
            caller.request("svc.hello", "").await.unwrap(),
            Bytes::from("hi")
        );
        tokio::time::timeout(GUARD, task).await.unwrap().unwrap();
        responder.close().await;
        caller.close().await;
    }
    b.shutdown().await;
}

fn resume_offer(name: &str, client_id: &str, session: &str) -> Hello {
    Hello {
        client_id: client_id.into(),
        session: session.into(),
        ..offer(name, &format!("{name}-pw"))
    }
}

/// Finding 8: a session belongs to the user that created it. Another user connecting with the
/// same client id, even holding the session id, neither resumes nor ends it; its owner resumes
/// it with everything that arrived meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_can_neither_take_nor_destroy_a_session() {
    let (b, url, _) = broker().await;
    let (mut alice, reply) = Raw::open(&url, &resume_offer("bob", "shared-id", "")).await;
    assert!(reply.features.contains(Features::SESSION_RESUME));
    let token = reply.session.clone();
    assert!(token.len() >= 32, "a 128-bit session id: {token}");
    alice
        .join(false, 5, "news.>", &SubscribeOptions::default())
        .await;
    drop(alice); // the connection is lost: the session is kept
    wait_for(&b, "sessions_detached", 1).await;
    // Eve uses the same client id and the stolen session id.
    let (eve, reply) = Raw::open(&url, &resume_offer("eve", "shared-id", &token)).await;
    assert_eq!(
        reply.flags & Hello::RESUMED,
        0,
        "not resumed by another user"
    );
    assert_ne!(reply.session, token);
    drop(eve); // and loses her own connection: her session must not replace bob's
    wait_for(&b, "sessions_detached", 2).await;
    // Published while bob is away.
    let p = Client::connect(&url, opts("bob")).await.unwrap();
    p.publish("news.one", "while away").await.unwrap();
    p.flush().await.unwrap();
    let (mut back, reply) = Raw::open(&url, &resume_offer("bob", "shared-id", &token)).await;
    assert_ne!(
        reply.flags & Hello::RESUMED,
        0,
        "the owner resumes: {reply:?}"
    );
    let ev = back.recv().await;
    assert_eq!(
        (ev.frame_type, ev.aux, &ev.payload[..]),
        (FrameType::Event, 5, &b"while away"[..]),
        "{ev:?}"
    );
    assert_eq!(stat(&b, "sessions_resumed"), 1);
    others_unaffected(&url).await;
    b.shutdown().await;
}

async fn wait_for(b: &Broker, counter: &str, n: u64) {
    let t0 = std::time::Instant::now();
    while stat(b, counter) < n {
        assert!(t0.elapsed() < GUARD, "{counter} never reached {n}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The rest of the class: ids that belong to another connection (its calls, subscriptions,
/// deliveries, service instances) act on nothing, and a connecting peer may not open calls in
/// the broker's half of the id space (PROTOCOL.md 10.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_other_connections_act_on_nothing() {
    let (b, url, _) = broker().await;
    let mut inst = login(&url, "svc").await;
    inst.join(true, 2, "svc.slow", &SubscribeOptions::default())
        .await;
    let mut victim = login(&url, "bob").await;
    let acked = SubscribeOptions {
        delivery: Delivery::AtLeastOnce,
        credit: 1,
        ..SubscribeOptions::default()
    };
    victim.join(false, 4, "news.>", &acked).await;
    victim
        .send(&Frame::request(11, subject("svc.slow"), "work"))
        .await;
    let fwd = inst.recv().await;
    let p = Client::connect(&url, opts("bob")).await.unwrap();
    p.publish("news.a", "first").await.unwrap();
    let ev = victim.recv().await;
    assert_eq!((ev.frame_type, ev.aux), (FrameType::Event, 4), "{ev:?}");
    // Mallory uses every id the victim has: its call, its subscription, its delivery, the
    // instance's registration.
    let mut mallory = login(&url, "mallory").await;
    mallory.send(&Frame::cancel(11)).await;
    mallory.send(&Frame::stream(11, "x", true)).await;
    mallory.send(&Frame::credit_subscription(4, 0)).await;
    mallory.send(&Frame::ack(ev.id, 4)).await;
    mallory.send(&Frame::nack(ev.id, 4, None)).await;
    mallory
        .send(
            &Frame::unsubscribe(4, None)
                .with_id(50)
                .with_flags(Flags::ACK_REQUIRED),
        )
        .await;
    mallory
        .send(
            &Frame::unregister(2)
                .with_id(51)
                .with_flags(Flags::ACK_REQUIRED),
        )
        .await;
    let answers = mallory.sync().await;
    let got: Vec<(FrameType, u64, Status)> = answers
        .iter()
        .map(|f| (f.frame_type, f.id, f.status))
        .collect();
    assert_eq!(
        got,
        vec![
            (FrameType::Error, 50, Status::NOT_FOUND),
            (FrameType::Error, 51, Status::NOT_FOUND)
        ],
        "only its own (absent) subscription and instance: {answers:?}"
    );
    assert_eq!(b.service_count(), 1);
    // A REQUEST with bit 63 set would be a call in the broker's id space: refused.
    mallory
        .send(&Frame::request(BIT63 | 5, subject("m.x"), ""))
        .await;
    let e = mallory.recv().await;
    assert_eq!(
        (e.frame_type, e.id, e.status),
        (FrameType::Error, BIT63 | 5, Status::PROTOCOL_ERROR),
        "{e:?}"
    );
    // The victim's call is still in flight, its subscription and delivery untouched.
    inst.send(&Frame::response(fwd.id, Status::OK, "done"))
        .await;
    let r = victim.recv().await;
    assert_eq!(
        (r.frame_type, r.id, &r.payload[..]),
        (FrameType::Response, 11, &b"done"[..])
    );
    victim.send(&Frame::ack(ev.id, 4)).await;
    victim.send(&Frame::credit_subscription(4, 1)).await;
    p.publish("news.b", "second").await.unwrap();
    let ev2 = victim.recv().await;
    assert_eq!(&ev2.payload[..], b"second", "{ev2:?}");
    assert_eq!(stat(&b, "acks"), 1, "only the victim's own ACK counted");
    assert_eq!(stat(&b, "requests_cancelled"), 0);
    b.shutdown().await;
}

/// A deadline too far away for the clock (the largest the header can carry) is served like any
/// other: the broker's timers never overflow on a peer's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_past_the_clock_is_served() {
    let (b, url, _) = broker().await;
    let mut responder = login(&url, "svc").await;
    responder
        .join(false, 1, "svc.far", &SubscribeOptions::default())
        .await;
    let mut caller = login(&url, "bob").await;
    let far = Headers::builder().deadline(Duration::MAX).build();
    caller
        .send(&Frame::request(1, subject("svc.far"), "q").with_headers(far))
        .await;
    let ev = responder.recv().await;
    responder
        .send(&Frame::publish(subject(&reply_to(&ev)), "a"))
        .await;
    let r = caller.recv().await;
    assert_eq!(
        (r.frame_type, r.status),
        (FrameType::Response, Status::OK),
        "{r:?}"
    );
    b.shutdown().await;
}
