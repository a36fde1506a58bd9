//! Request routing as PROTOCOL.md states it: deadlines end requests and service calls (a
//! deadline of 0 at once, without forwarding), REGISTER's `max_pending` bounds the calls in
//! flight to an instance, queue groups are keyed by filter and name, and a session is kept only
//! for a connection that was lost, not one the client closed. States and counters are asserted,
//! never wall time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/raw.rs"]
mod raw;

use mitto::proto::{Frame, FrameType, Headers, Hello, SubscribeOptions};
use mitto::Status;
use mitto_broker::{Broker, BrokerConfig};
use raw::{offer, subject, Raw, GUARD};
use std::time::Duration;

async fn broker() -> (Broker, String) {
    let b = Broker::start(BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: String::new(),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

fn stat(b: &Broker, name: &str) -> u64 {
    b.stats().get(name).copied().unwrap_or(0)
}

async fn wait_for(b: &Broker, counter: &str, n: u64) {
    let t0 = std::time::Instant::now();
    while stat(b, counter) < n {
        assert!(
            t0.elapsed() < GUARD,
            "{counter} never reached {n}: {:?}",
            b.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn request(id: u64, to: &str, payload: &'static str, deadline: Duration) -> Frame {
    Frame::request(id, subject(to), payload)
        .with_headers(Headers::builder().deadline(deadline).build())
}

fn group(name: &str, max_pending: u32) -> SubscribeOptions {
    SubscribeOptions {
        queue: (!name.is_empty()).then(|| name.to_owned()),
        max_pending,
        ..SubscribeOptions::default()
    }
}

/// A request whose deadline has already passed is answered TIMEOUT at once and reaches no
/// service instance and no subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_of_zero_is_answered_timeout_without_forwarding() {
    let (b, url) = broker().await;
    let mut inst = Raw::login(&url, "", "").await;
    inst.join(true, 1, "svc.z", &SubscribeOptions::default())
        .await;
    let mut sub = Raw::login(&url, "", "").await;
    sub.join(false, 1, "sub.z", &SubscribeOptions::default())
        .await;
    let mut caller = Raw::login(&url, "", "").await;
    for (to, peer) in [("svc.z", &mut inst), ("sub.z", &mut sub)] {
        caller
            .send(&request(1, to, "expired", Duration::ZERO))
            .await;
        let r = caller.recv().await;
        assert_eq!(
            (r.frame_type, r.id, r.status),
            (FrameType::Response, 1, Status::TIMEOUT),
            "{to}: {r:?}"
        );
        caller.send(&request(2, to, "live", GUARD)).await;
        let first = peer.recv().await;
        assert_eq!(
            &first.payload[..],
            b"live",
            "{to}: the expired one never arrived"
        );
        let answered = match first.frame_type {
            FrameType::Request => Frame::response(first.id, Status::OK, "ok"),
            _ => {
                let inbox = first.headers.reply_to().unwrap().to_owned();
                Frame::publish(subject(&inbox), "ok")
            }
        };
        peer.send(&answered).await;
        let r = caller.recv().await;
        assert_eq!((r.id, r.status), (2, Status::OK), "{r:?}");
    }
    assert_eq!(stat(&b, "request_timeouts"), 2);
    b.shutdown().await;
}

/// A service call whose instance stays silent ends with TIMEOUT from the broker, which cancels
/// the call at the instance; a request to a silent subscriber ends the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_end_silent_calls_and_cancel_them_at_the_instance() {
    let (b, url) = broker().await;
    let mut inst = Raw::login(&url, "", "").await;
    inst.join(true, 1, "svc.silent", &SubscribeOptions::default())
        .await;
    let mut sub = Raw::login(&url, "", "").await;
    sub.join(false, 1, "sub.silent", &SubscribeOptions::default())
        .await;
    let mut caller = Raw::login(&url, "", "").await;
    let left = Duration::from_millis(300);
    caller.send(&request(5, "svc.silent", "q", left)).await;
    let fwd = inst.recv().await;
    assert_eq!(fwd.frame_type, FrameType::Request);
    let r = caller.recv().await;
    assert_eq!(
        (r.frame_type, r.id, r.status),
        (FrameType::Response, 5, Status::TIMEOUT),
        "{r:?}"
    );
    let c = inst.recv().await;
    assert_eq!((c.frame_type, c.id), (FrameType::Cancel, fwd.id), "{c:?}");
    caller.send(&request(6, "sub.silent", "q", left)).await;
    assert_eq!(sub.recv().await.frame_type, FrameType::Event);
    let r = caller.recv().await;
    assert_eq!((r.id, r.status), (6, Status::TIMEOUT), "{r:?}");
    assert_eq!(stat(&b, "request_timeouts"), 2);
    // The instance's answer after the deadline is for a call no longer in flight: ignored.
    inst.send(&Frame::response(fwd.id, Status::OK, "late"))
        .await;
    assert!(inst.sync().await.is_empty());
    assert_eq!(stat(&b, "stray_responses"), 1);
    b.shutdown().await;
}

/// REGISTER's `max_pending` bounds the calls in flight to that instance (PROTOCOL.md 7.2): with
/// 1, a second call while the first is in flight is refused at once, and a call after the first
/// is answered goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_max_pending_bounds_the_calls_in_flight_to_an_instance() {
    let (b, url) = broker().await;
    let mut inst = Raw::login(&url, "", "").await;
    inst.join(true, 1, "svc.one", &group("", 1)).await;
    let mut caller = Raw::login(&url, "", "").await;
    caller.send(&request(1, "svc.one", "a", GUARD)).await;
    let first = inst.recv().await;
    caller.send(&request(2, "svc.one", "b", GUARD)).await;
    let r = caller.recv().await;
    assert_eq!(
        (r.frame_type, r.id, r.status),
        (FrameType::Response, 2, Status::BACKPRESSURE_REJECTION),
        "{r:?}"
    );
    inst.send(&Frame::response(first.id, Status::OK, "a done"))
        .await;
    assert_eq!(caller.recv().await.id, 1);
    caller.send(&request(3, "svc.one", "c", GUARD)).await;
    let third = inst.recv().await;
    assert_eq!(&third.payload[..], b"c");
    inst.send(&Frame::response(third.id, Status::OK, "c done"))
        .await;
    let r = caller.recv().await;
    assert_eq!((r.id, r.status), (3, Status::OK));
    b.shutdown().await;
}

/// Queue groups are keyed by filter and name (as in NATS): the same name on another filter is
/// another group, which gets its own copy of every message; for services, each call goes to
/// one instance and the groups that match take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_groups_are_keyed_by_filter_and_name() {
    let (b, url) = broker().await;
    let mut a = Raw::login(&url, "", "").await;
    a.join(false, 1, "q.a", &group("g", 0)).await;
    let mut c = Raw::login(&url, "", "").await;
    c.join(false, 1, "q.a", &group("g", 0)).await;
    let mut star = Raw::login(&url, "", "").await;
    star.join(false, 1, "q.*", &group("g", 0)).await;
    let mut p = Raw::login(&url, "", "").await;
    for _ in 0..10 {
        p.send(&Frame::publish(subject("q.a"), "m")).await;
    }
    p.sync().await;
    wait_for(&b, "msgs_out", 20).await;
    let (na, nc, ns) = (
        a.sync().await.len(),
        c.sync().await.len(),
        star.sync().await.len(),
    );
    assert_eq!(ns, 10, "the q.* group gets every message");
    assert_eq!(
        na + nc,
        10,
        "the q.a group gets each message once: {na} + {nc}"
    );
    assert!(
        na > 0 && nc > 0,
        "both members of q.a take turns: {na}, {nc}"
    );
    // Services: two instances in (svc.a, g), one in (svc.*, g): two groups. Each instance
    // answers with its number.
    for (n, filter) in ["svc.a", "svc.a", "svc.*"].into_iter().enumerate() {
        let mut i = Raw::login(&url, "", "").await;
        i.join(true, 1, filter, &group("g", 0)).await;
        tokio::spawn(async move {
            while let Some(f) = i.try_recv().await {
                if f.frame_type == FrameType::Request {
                    i.send(&Frame::response(f.id, Status::OK, vec![n as u8]))
                        .await;
                }
            }
        });
    }
    let mut caller = Raw::login(&url, "", "").await;
    let mut served = [0usize; 3];
    for id in 1..=12u64 {
        caller.send(&request(id, "svc.a", "x", GUARD)).await;
        let r = caller.recv().await;
        assert_eq!((r.id, r.status), (id, Status::OK), "{r:?}");
        served[usize::from(r.payload[0])] += 1;
    }
    assert_eq!(
        served[2], 6,
        "the svc.* group gets half the calls: {served:?}"
    );
    assert_eq!(served[0] + served[1], 6, "{served:?}");
    b.shutdown().await;
}

fn resume_offer(client_id: &str, session: &str) -> Hello {
    Hello {
        client_id: client_id.into(),
        session: session.into(),
        ..offer("", "")
    }
}

/// A session is kept for a lost connection only (PROTOCOL.md 8.5): a client that sends CLOSE
/// has ended it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_a_lost_connection_but_not_a_close() {
    let (b, url) = broker().await;
    let (mut s, reply) = Raw::open(&url, &resume_offer("closer", "")).await;
    s.join(false, 1, "news.>", &SubscribeOptions::default())
        .await;
    s.send(&Frame::close(Status::OK, "bye")).await;
    while s.try_recv().await.is_some() {}
    let (_again, r) = Raw::open(&url, &resume_offer("closer", &reply.session)).await;
    assert_eq!(r.flags & Hello::RESUMED, 0, "closed, so nothing to resume");
    assert_eq!(stat(&b, "sessions_detached"), 0);
    let (mut s, reply) = Raw::open(&url, &resume_offer("loser", "")).await;
    s.join(false, 1, "news.>", &SubscribeOptions::default())
        .await;
    drop(s);
    wait_for(&b, "sessions_detached", 1).await;
    let (_back, r) = Raw::open(&url, &resume_offer("loser", &reply.session)).await;
    assert_ne!(r.flags & Hello::RESUMED, 0, "lost, so resumed");
    b.shutdown().await;
}
