//! Taking a session over (PROTOCOL.md 8.5): a client that reconnects before the broker noticed
//! its old connection die names its session while that connection still holds it. The new
//! connection resumes it (RESUMED, credit set to the window, unacknowledged deliveries first)
//! and the old one is closed with the reason; another user's HELLO never touches it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/raw.rs"]
mod raw;

use mitto::proto::{Decoder, Delivery, Frame, FrameType, Hello, Status, SubscribeOptions};
use mitto::{Client, ClientOptions};
use mitto_broker::{Broker, BrokerConfig, User};
use raw::{offer, Raw};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

fn user(name: &str) -> User {
    User {
        name: name.into(),
        password: "pw".into(),
        publish: Vec::new(),
        subscribe: Vec::new(),
    }
}

async fn start() -> (Broker, String) {
    let b = Broker::start(BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: "127.0.0.1:0".into(),
        users: vec![user("alice"), user("eve")],
        shutdown_drain_ms: 100,
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

fn opts() -> ClientOptions {
    ClientOptions::new()
        .timeout(Duration::from_secs(5))
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .user_password("alice", "pw")
}

async fn until(what: &str, ok: impl Fn() -> bool) {
    for _ in 0..500 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5 s: {what}");
}

/// A raw connection of `user` as client `id`, naming `session` when not empty.
async fn session(url: &str, user: &str, id: &str, session: &str) -> (Raw, Hello) {
    let mut h = offer(user, "pw");
    h.client_id = id.into();
    h.session = session.into();
    Raw::open(url, &h).await
}

async fn event(s: &mut Raw) -> (String, Frame) {
    let f = s.recv().await;
    assert_eq!(f.frame_type, FrameType::Event, "{f:?}");
    (String::from_utf8_lossy(&f.payload).into_owned(), f)
}

async fn publish(p: &Client, payload: &str) {
    p.publish("t.a", payload.to_owned()).await.unwrap();
    p.flush().await.unwrap();
}

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_naming_the_session_takes_it_over() {
    let (b, url) = start().await;
    let p = Client::connect(&url, opts()).await.unwrap();
    let (mut old, reply) = session(&url, "alice", "c1", "").await;
    let sub = SubscribeOptions {
        credit: 2,
        delivery: Delivery::AtLeastOnce,
        ack_wait_ms: 60_000,
        ..SubscribeOptions::default()
    };
    old.join(false, 1, "t.>", &sub).await;
    for n in ["1", "2", "3"] {
        publish(&p, n).await;
    }
    // Both credits spent, nothing acknowledged; "3" waits at the broker.
    assert_eq!(event(&mut old).await.0, "1");
    assert_eq!(event(&mut old).await.0, "2");

    // The old connection is still open when the client comes back.
    let (mut new, back) = session(&url, "alice", "c1", &reply.session).await;
    assert_ne!(back.flags & Hello::RESUMED, 0, "taken over: {back:?}");
    assert_eq!(back.session, reply.session);
    let close = old.recv().await;
    assert_eq!(close.frame_type, FrameType::Close, "{close:?}");
    assert_eq!(close.status, Status::ALREADY_EXISTS);
    let why = String::from_utf8_lossy(&close.payload).into_owned();
    assert!(why.contains("taken over by a new connection"), "{why}");
    assert!(
        old.try_recv().await.is_none(),
        "the old connection is closed"
    );

    // Unacknowledged deliveries first, within the window set again; then what was queued.
    for want in ["1", "2"] {
        let (got, f) = event(&mut new).await;
        assert_eq!(got, want);
        assert_eq!(f.headers.delivery_count(), Some(2));
        new.send(&Frame::ack(f.id, 1)).await;
    }
    assert!(
        tokio::time::timeout(SHORT, new.recv()).await.is_err(),
        "beyond the window"
    );
    new.send(&Frame::credit_subscription(1, 1)).await;
    let (got, f) = event(&mut new).await;
    assert_eq!((got.as_str(), f.headers.delivery_count()), ("3", None));
    assert_eq!(b.stats()["sessions_resumed"], 1);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_hello_never_takes_a_session_over() {
    let (b, url) = start().await;
    let p = Client::connect(&url, opts()).await.unwrap();
    let (mut alice, reply) = session(&url, "alice", "c1", "").await;
    alice
        .join(false, 1, "t.>", &SubscribeOptions::default())
        .await;

    // Same client id, alice's session id: a session of eve's own, alice's untouched.
    let (_eve, got) = session(&url, "eve", "c1", &reply.session).await;
    assert_eq!(got.flags & Hello::RESUMED, 0, "{got:?}");
    assert_ne!(got.session, reply.session);
    publish(&p, "1").await;
    assert_eq!(event(&mut alice).await.0, "1", "alice still holds it");

    // Alice herself still takes it over, with its subscription.
    let (mut again, back) = session(&url, "alice", "c1", &reply.session).await;
    assert_ne!(back.flags & Hello::RESUMED, 0);
    assert_eq!(alice.recv().await.frame_type, FrameType::Close);
    publish(&p, "2").await;
    assert_eq!(event(&mut again).await.0, "2");
    b.shutdown().await;
}

/// A TCP relay to the broker: on `cut` it drops its clients' side of each connection but keeps
/// the broker's side open and read (the broker sees nothing wrong), recording what comes on it;
/// it refuses new connections while `shut`.
struct Relay {
    url: String,
    cut: Arc<tokio::sync::Notify>,
    shut: Arc<AtomicBool>,
    /// What the broker sent on each cut connection afterwards, and whether it then closed it.
    after_cut: Recorded,
}

/// Per cut connection: the bytes the broker sent on it after the cut, and whether it closed.
type Recorded = Arc<Mutex<Vec<(Vec<u8>, bool)>>>;

async fn relay(target: &str) -> Relay {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let target = target.trim_start_matches("tcp://").to_owned();
    let r = Relay {
        url,
        cut: Arc::default(),
        shut: Arc::default(),
        after_cut: Arc::default(),
    };
    let (cut, shut, after) = (r.cut.clone(), r.shut.clone(), r.after_cut.clone());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            if shut.load(Ordering::SeqCst) {
                continue;
            }
            let target = target.clone();
            let (cut, after) = (cut.clone(), after.clone());
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                    _ = cut.notified() => {}
                }
                drop(inbound);
                let slot = {
                    let mut a = after.lock().unwrap();
                    a.push((Vec::new(), false));
                    a.len() - 1
                };
                let mut buf = [0u8; 4096];
                loop {
                    match outbound.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => after.lock().unwrap()[slot].0.extend_from_slice(&buf[..n]),
                    }
                }
                after.lock().unwrap()[slot].1 = true;
            });
        }
    });
    r
}

/// The CLOSE frames in `bytes` (recorded from a frame boundary: the connection was idle when
/// it was cut).
fn closes(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = bytes::BytesMut::from(bytes);
    let mut dec = Decoder::default();
    let mut out = Vec::new();
    while let Ok(Some(f)) = dec.decode(&mut buf) {
        if f.frame_type == FrameType::Close {
            out.push(f);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_before_its_old_connection_is_noticed_loses_nothing() {
    let (b, url) = start().await;
    let r = relay(&url).await;
    let s = Client::connect(&r.url, opts().client_id("steady-1"))
        .await
        .unwrap();
    let sub_opts = SubscribeOptions {
        delivery: Delivery::AtLeastOnce,
        ack_wait_ms: 60_000,
        ..SubscribeOptions::default()
    };
    let mut sub = s.subscribe_with("t.>", sub_opts).await.unwrap();
    let p = Client::connect(&url, opts()).await.unwrap();
    let got = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = got.clone();
    let reading = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            seen.lock()
                .unwrap()
                .insert(String::from_utf8_lossy(m.payload()).into_owned());
            sub.ack(&m);
        }
    });
    for i in 0..5 {
        publish(&p, &i.to_string()).await;
    }
    until("the first five", || got.lock().unwrap().len() == 5).await;

    // The client's side goes; the broker's stays open and takes what is published meanwhile.
    r.shut.store(true, Ordering::SeqCst);
    r.cut.notify_waiters();
    for i in 5..10 {
        publish(&p, &i.to_string()).await;
    }
    until("written to the old connection", || {
        b.stats()["msgs_out"] >= 10
    })
    .await;
    r.shut.store(false, Ordering::SeqCst);
    until("all ten", || got.lock().unwrap().len() == 10).await;
    assert_eq!(b.stats()["sessions_resumed"], 1, "{:?}", b.stats());
    for i in 10..15 {
        publish(&p, &i.to_string()).await;
    }
    until("all fifteen", || got.lock().unwrap().len() == 15).await;
    until("the old connection is closed", || {
        r.after_cut.lock().unwrap().first().is_some_and(|c| c.1)
    })
    .await;
    let (bytes, _) = r.after_cut.lock().unwrap()[0].clone();
    let close = closes(&bytes);
    assert_eq!(close.len(), 1, "one CLOSE on the old connection");
    assert_eq!(close[0].status, Status::ALREADY_EXISTS);
    reading.abort();
    b.shutdown().await;
}
