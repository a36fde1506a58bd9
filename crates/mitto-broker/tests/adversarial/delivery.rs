//! What the broker delivers, and to whom: compressed payloads (checked, decompressed for peers
//! without LZ4), the limits a subscriber agreed (never exceeded), the time a message waits
//! (charged against its deadline and ttl), a resumed session (served at once), a subscriber
//! that goes away (its messages go to another member of its queue group or to the next holder
//! of its durable name), and shutdown (what is queued goes out first). Raw sockets where the
//! bytes matter.

use bytes::{Bytes, BytesMut};
use mitto::proto::compress::compress;
use mitto::proto::negotiate::Features;
use mitto::proto::{
    Decoder, Delivery, Flags, Frame, FrameType, Headers, Hello, Subject, SubscribeOptions, Version,
};
use mitto::{Client, ClientOptions, PublishOptions, Status};
use mitto_broker::{Broker, BrokerConfig, User};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config() -> BrokerConfig {
    BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: String::new(),
        ..BrokerConfig::default()
    }
}

async fn start(cfg: BrokerConfig) -> (Broker, String) {
    let b = Broker::start(cfg).await.unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

fn subject(s: &str) -> Subject {
    Subject::new(s).unwrap()
}

/// A client that speaks frames itself, to choose what it negotiates and see every byte.
struct Raw {
    s: TcpStream,
    dec: Decoder,
    buf: BytesMut,
    /// The server's HELLO reply.
    reply: Hello,
}

fn offer() -> Hello {
    Hello {
        version: Version::CURRENT,
        features: Features::supported(),
        name: "raw".into(),
        ..Hello::default()
    }
}

fn without_lz4() -> Hello {
    let mut h = offer();
    h.features = Features::from_bits(h.features.bits() & !Features::COMPRESSION_LZ4.bits());
    h
}

impl Raw {
    async fn connect(url: &str, h: Hello) -> Raw {
        let s = TcpStream::connect(url.trim_start_matches("tcp://"))
            .await
            .unwrap();
        let mut r = Raw {
            s,
            dec: Decoder::default(),
            buf: BytesMut::new(),
            reply: Hello::default(),
        };
        r.send(&Frame::hello(&h, false).unwrap()).await;
        let f = r.recv().await;
        assert_eq!(f.frame_type, FrameType::Hello, "{f:?}");
        r.reply = Hello::decode(&f.payload).unwrap();
        r
    }

    async fn send(&mut self, f: &Frame) {
        self.s.write_all(&f.to_bytes().unwrap()).await.unwrap();
    }

    /// The next frame within `d` (PINGs skipped); `None` if nothing came or the stream ended.
    async fn recv_for(&mut self, d: Duration) -> Option<Frame> {
        let until = tokio::time::Instant::now() + d;
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                if f.frame_type == FrameType::Ping {
                    continue;
                }
                return Some(f);
            }
            match tokio::time::timeout_at(until, self.s.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn recv(&mut self) -> Frame {
        self.recv_for(Duration::from_secs(5))
            .await
            .expect("a frame within 5 s")
    }

    /// Nothing arrives for a short while.
    async fn quiet(&mut self) {
        if let Some(f) = self.recv_for(Duration::from_millis(200)).await {
            panic!("unexpected {f:?}");
        }
    }

    async fn subscribe(&mut self, sid: u32, filter: &str, opts: &SubscribeOptions) {
        let f = Frame::subscribe(sid, subject(filter), opts)
            .unwrap()
            .with_id(1000 + u64::from(sid))
            .with_flags(Flags::ACK_REQUIRED);
        self.send(&f).await;
        let a = self.recv().await;
        assert_eq!((a.frame_type, a.id), (FrameType::Ack, f.id), "{a:?}");
    }

    /// Sends SUBSCRIBE and returns the ERROR it gets.
    async fn subscribe_refused(
        &mut self,
        sid: u32,
        filter: &str,
        opts: &SubscribeOptions,
    ) -> Frame {
        let f = Frame::subscribe(sid, subject(filter), opts)
            .unwrap()
            .with_id(2000 + u64::from(sid))
            .with_flags(Flags::ACK_REQUIRED);
        self.send(&f).await;
        let e = self.recv().await;
        assert_eq!((e.frame_type, e.id), (FrameType::Error, f.id), "{e:?}");
        e
    }

    /// The next EVENT (other frames are a failure).
    async fn event(&mut self) -> Frame {
        let f = self.recv().await;
        assert_eq!(f.frame_type, FrameType::Event, "{f:?}");
        f
    }

    async fn ack(&mut self, e: &Frame) {
        self.send(&Frame::ack(e.id, e.aux)).await;
    }
}

fn text(f: &Frame) -> String {
    String::from_utf8(f.payload.to_vec()).unwrap()
}

fn reason(f: &Frame) -> String {
    String::from_utf8_lossy(&f.payload).into_owned()
}

fn at_least_once(credit: u32) -> SubscribeOptions {
    SubscribeOptions {
        delivery: Delivery::AtLeastOnce,
        ack_wait_ms: 60_000,
        credit,
        ..SubscribeOptions::default()
    }
}

fn durable(name: &str, credit: u32) -> SubscribeOptions {
    SubscribeOptions {
        durable: Some(name.into()),
        ..at_least_once(credit)
    }
}

async fn client(url: &str) -> Client {
    Client::connect(url, ClientOptions::new().timeout(Duration::from_secs(5)))
        .await
        .unwrap()
}

async fn publish_acked(c: &Client, subject: &str, payload: impl Into<Bytes>) {
    c.publish_with(subject, payload.into(), PublishOptions::new().ack())
        .await
        .unwrap();
}

/// Waits (bounded) until counter `name` reaches `n`, and returns it.
async fn counter(b: &Broker, name: &str, n: u64) -> u64 {
    for _ in 0..500 {
        if b.stats()[name] >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.stats()[name]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_publish_needs_lz4_and_a_block_that_decompresses() {
    let (b, url) = start(config()).await;
    let mut sub = Raw::connect(&url, offer()).await;
    sub.subscribe(1, "z.>", &SubscribeOptions::default()).await;
    let good = compress(&b"mitto ".repeat(16));
    let publish = |id: u64, payload: Bytes| {
        Frame::publish(subject("z.logs"), payload)
            .with_id(id)
            .with_flags(Flags::ACK_REQUIRED | Flags::COMPRESSED)
    };
    // Not negotiated: refused, not acknowledged.
    let mut plain = Raw::connect(&url, without_lz4()).await;
    assert!(!plain.reply.features.contains(Features::COMPRESSION_LZ4));
    plain.send(&publish(1, good.clone())).await;
    let e = plain.recv().await;
    assert_eq!(
        (e.frame_type, e.status, e.id),
        (FrameType::Error, Status::UNSUPPORTED_FEATURE, 1),
        "{e:?}"
    );
    // Negotiated, but the block is corrupt, or holds another length than its prefix says.
    let mut p = Raw::connect(&url, offer()).await;
    let mut corrupt = good.to_vec();
    corrupt.truncate(8);
    corrupt.extend_from_slice(&[0xff; 6]);
    p.send(&publish(2, Bytes::from(corrupt))).await;
    let e = p.recv().await;
    assert_eq!(
        (e.frame_type, e.status, e.id),
        (FrameType::Error, Status::BAD_REQUEST, 2)
    );
    assert!(reason(&e).contains("corrupt"), "{}", reason(&e));
    let mut lying = good.to_vec();
    lying[..4].copy_from_slice(&50u32.to_be_bytes());
    p.send(&publish(3, Bytes::from(lying))).await;
    let e = p.recv().await;
    assert_eq!(
        (e.frame_type, e.status, e.id),
        (FrameType::Error, Status::BAD_REQUEST, 3)
    );
    // A good one is acknowledged and is the only one the subscriber gets.
    p.send(&publish(4, good.clone())).await;
    let a = p.recv().await;
    assert_eq!((a.frame_type, a.id), (FrameType::Ack, 4));
    let ev = sub.event().await;
    assert!(
        ev.flags.contains(Flags::COMPRESSED),
        "an LZ4 peer gets it as sent"
    );
    assert_eq!(ev.payload, good);
    sub.quiet().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_decompresses_for_a_subscriber_without_lz4_within_its_limit() {
    let (b, url) = start(config()).await;
    let mut small = Raw::connect(
        &url,
        Hello {
            max_payload: 64 * 1024,
            ..without_lz4()
        },
    )
    .await;
    small
        .subscribe(1, "logs.>", &SubscribeOptions::default())
        .await;
    let mut lz4 = Raw::connect(&url, offer()).await;
    lz4.subscribe(1, "logs.>", &SubscribeOptions::default())
        .await;
    let mut p = Raw::connect(&url, offer()).await;
    let plain = b"mitto ".repeat(16);
    let z = compress(&plain);
    p.send(
        &Frame::publish(subject("logs.app"), z.clone())
            .with_flags(Flags::COMPRESSED)
            .with_id(1),
    )
    .await;
    let ev = small.event().await;
    assert!(!ev.flags.contains(Flags::COMPRESSED));
    assert_eq!(ev.payload, plain, "decompressed for the peer without LZ4");
    let ev = lz4.event().await;
    assert!(ev.flags.contains(Flags::COMPRESSED));
    assert_eq!(ev.payload, z);
    // A block of 2 MiB of zeros compresses to a few KiB: never expanded beyond what the
    // subscriber agreed, compressed or not.
    let bomb = compress(&vec![0u8; 2 << 20]);
    assert!(bomb.len() < 64 * 1024);
    p.send(
        &Frame::publish(subject("logs.bomb"), bomb.clone())
            .with_flags(Flags::COMPRESSED)
            .with_id(2),
    )
    .await;
    // From the same publisher, so that it is routed after the bomb.
    p.send(&Frame::publish(subject("logs.after"), "small").with_id(3))
        .await;
    assert_eq!(text(&small.event().await), "small", "the bomb was skipped");
    assert_eq!(
        lz4.event().await.payload,
        bomb,
        "a peer that agreed 64 MiB gets it"
    );
    assert_eq!(text(&lz4.event().await), "small");
    assert_eq!(b.stats()["oversize_skips"], 1);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_never_gets_more_than_it_agreed() {
    let (b, url) = start(BrokerConfig {
        monitor: "127.0.0.1:0".into(),
        ..config()
    })
    .await;
    let mut small = Raw::connect(
        &url,
        Hello {
            max_payload: 4096,
            max_headers: 64,
            ..offer()
        },
    )
    .await;
    assert_eq!(
        (small.reply.max_payload, small.reply.max_headers),
        (4096, 64)
    );
    small
        .subscribe(1, "big.>", &SubscribeOptions::default())
        .await;
    small.subscribe(2, "big.>", &at_least_once(0)).await;
    let c = client(&url).await;
    let mut all = c.subscribe("big.>").await.unwrap();
    // What fits the publisher's limits is accepted (ACKed): a publish is not a delivery.
    publish_acked(&c, "big.payload", vec![7u8; 5000]).await;
    let h = Headers::builder()
        .insert_custom("not", "x".repeat(100))
        .unwrap()
        .build();
    assert_eq!(h.as_bytes().len(), 107);
    c.publish_with("big.headers", "h", PublishOptions::new().ack().headers(h))
        .await
        .unwrap();
    publish_acked(&c, "big.fits", vec![1u8; 4096]).await;
    for _ in 0..2 {
        let ev = small.event().await;
        assert_eq!(ev.subject.as_str(), "big.fits", "{ev:?}");
        assert!(ev.payload.len() <= 4096 && ev.headers.as_bytes().len() <= 64);
        small.ack(&ev).await;
    }
    small.quiet().await;
    for subject in ["big.payload", "big.headers", "big.fits"] {
        let m = tokio::time::timeout(Duration::from_secs(5), all.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            m.subject(),
            subject,
            "a subscriber with the default limits gets all"
        );
    }
    // Counted broker-wide and per subscription.
    assert_eq!(b.stats()["oversize_skips"], 4);
    let subsz = http_get(b.monitor_addr().unwrap(), "/subsz").await;
    let v: serde_json::Value =
        serde_json::from_str(subsz.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let skips: Vec<u64> = v["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["oversize_skips"].as_u64().unwrap())
        .collect();
    assert_eq!(skips.iter().filter(|&&n| n == 2).count(), 2, "{v}");
    b.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_the_largest_size_reaches_an_idle_subscriber() {
    let mut cfg = BrokerConfig {
        max_payload: 1 << 20,
        ..config()
    };
    // The pending-bytes limit may not be less than one frame of the largest size...
    cfg.max_pending_bytes = cfg.max_payload as usize;
    let e = Broker::start(cfg.clone()).await.unwrap_err();
    assert!(e.message().contains("max_pending_bytes"), "{e}");
    // ...and one exactly that large is enough for an idle subscriber to get such a frame.
    cfg.max_pending_bytes = cfg.max_frame_len();
    let (b, url) = start(cfg).await;
    let c = client(&url).await;
    let long = format!("big.{}", "s".repeat(4096 - 4));
    let mut sub = c.subscribe(&long).await.unwrap();
    let h = Headers::builder()
        .insert_custom("pad", vec![b'h'; 65_000])
        .unwrap()
        .build();
    c.publish_with(
        &long,
        vec![9u8; 1 << 20],
        PublishOptions::new().ack().headers(h),
    )
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload().len(), 1 << 20);
    assert_eq!(b.stats()["slow_consumer_drops"], 0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_waiting_in_the_broker_is_charged_against_deadline_and_ttl() {
    let (b, url) = start(config()).await;
    let mut sub = Raw::connect(&url, offer()).await;
    let opts = SubscribeOptions {
        credit: 1,
        ..SubscribeOptions::default()
    };
    sub.subscribe(1, "t.>", &opts).await;
    let c = client(&url).await;
    publish_acked(&c, "t.first", "takes the credit").await;
    assert_eq!(text(&sub.event().await), "takes the credit");
    let with = |h: Headers| PublishOptions::new().ack().headers(h);
    let deadline = Duration::from_secs(10);
    let timed = |d: Duration| Headers::builder().deadline(d).build();
    c.publish_with("t.deadline", "d", with(timed(deadline)))
        .await
        .unwrap();
    let ttl = |d: Duration| Headers::builder().ttl(d).build();
    c.publish_with("t.short", "s", with(ttl(Duration::from_millis(100))))
        .await
        .unwrap();
    c.publish_with("t.long", "l", with(ttl(Duration::from_secs(60))))
        .await
        .unwrap();
    // The three wait for credit, at least this long.
    let held = Duration::from_millis(400);
    tokio::time::sleep(held).await;
    sub.send(&Frame::credit_subscription(1, 10)).await;
    let d = sub.event().await;
    assert_eq!(d.subject.as_str(), "t.deadline");
    let left = d.headers.deadline().unwrap();
    assert!(left <= deadline - held && !left.is_zero(), "{left:?}");
    let l = sub.event().await;
    assert_eq!(
        l.subject.as_str(),
        "t.long",
        "the 100 ms one ran out and is not delivered"
    );
    assert!(l.headers.ttl().unwrap() <= Duration::from_secs(60) - held);
    sub.quiet().await;
    assert_eq!(b.stats()["msgs_expired"], 1);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_gets_what_arrived_while_away_at_once() {
    let (b, url) = start(config()).await;
    let with_id = || Hello {
        client_id: "reader-1".into(),
        ..offer()
    };
    let mut r = Raw::connect(&url, with_id()).await;
    let session = r.reply.session.clone();
    assert!(!session.is_empty());
    r.subscribe(1, "news.>", &SubscribeOptions::default()).await;
    r.subscribe(2, "jobs.>", &at_least_once(0)).await;
    let c = client(&url).await;
    publish_acked(&c, "jobs.a", "seen, not acknowledged").await;
    assert_eq!(text(&r.event().await), "seen, not acknowledged");
    drop(r);
    assert_eq!(counter(&b, "sessions_detached", 1).await, 1);
    for i in 0..3 {
        publish_acked(&c, "news.x", format!("while away {i}")).await;
    }
    publish_acked(&c, "jobs.b", "job while away").await;
    let mut back = Raw::connect(
        &url,
        Hello {
            session,
            ..with_id()
        },
    )
    .await;
    assert_ne!(back.reply.flags & Hello::RESUMED, 0);
    // Nothing else is published, and the 60 s ack wait has not passed: what was kept comes on
    // its own, the delivery the lost connection never acknowledged included.
    let mut got = BTreeSet::new();
    for _ in 0..5 {
        let ev = back.event().await;
        if ev.aux == 2 {
            back.ack(&ev).await;
        }
        got.insert((text(&ev), ev.headers.delivery_count().unwrap_or(1)));
    }
    let expect: BTreeSet<(String, u32)> = [
        ("while away 0", 1),
        ("while away 1", 1),
        ("while away 2", 1),
        ("seen, not acknowledged", 2),
        ("job while away", 1),
    ]
    .into_iter()
    .map(|(t, n)| (t.to_owned(), n))
    .collect();
    assert_eq!(got, expect);
    back.quiet().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_member_that_goes_away_hands_its_messages_to_another() {
    let (b, url) = start(config()).await;
    let group = |credit| SubscribeOptions {
        queue: Some("workers".into()),
        ..at_least_once(credit)
    };
    // A takes 2 at a time and acknowledges nothing; B takes all and acknowledges all.
    let mut a = Raw::connect(&url, offer()).await;
    a.subscribe(1, "jobs", &group(2)).await;
    let mut w = Raw::connect(&url, offer()).await;
    w.subscribe(7, "jobs", &group(0)).await;
    let c = client(&url).await;
    for i in 0..20 {
        publish_acked(&c, "jobs", format!("{i}")).await;
    }
    let mut got = BTreeSet::new();
    let mut redelivered = 0;
    for _ in 0..10 {
        let ev = w.event().await;
        got.insert(text(&ev));
        w.ack(&ev).await;
    }
    let first = a.event().await;
    a.event().await;
    // A crashes: its 2 unacknowledged and 8 unsent messages go to B, the former marked.
    drop(a);
    for _ in 0..10 {
        let ev = w.event().await;
        if let Some(n) = ev.headers.delivery_count() {
            assert_eq!(n, 2);
            redelivered += 1;
        }
        got.insert(text(&ev));
        w.ack(&ev).await;
    }
    assert!(got.contains(&text(&first)));
    assert_eq!(got.len(), 20, "every message, once acknowledged: {got:?}");
    assert_eq!(redelivered, 2);
    w.quiet().await;
    assert_eq!(counter(&b, "acks", 20).await, 20);
    assert_eq!(b.stats()["orphan_drops"], 0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscription_keeps_its_messages_for_the_next_subscriber() {
    let (b, url) = start(config()).await;
    let mut a = Raw::connect(&url, offer()).await;
    a.subscribe(1, "bill.>", &durable("billing", 3)).await;
    let c = client(&url).await;
    for i in 0..10 {
        publish_acked(&c, "bill.x", format!("{i:02}")).await;
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(text(&a.event().await));
    }
    // One subscriber per name at a time; a durable name is not a queue group.
    let mut other = Raw::connect(&url, offer()).await;
    let e = other
        .subscribe_refused(1, "bill.>", &durable("billing", 0))
        .await;
    assert_eq!(e.status, Status::ALREADY_EXISTS, "{}", reason(&e));
    let both = SubscribeOptions {
        queue: Some("q".into()),
        ..durable("other", 0)
    };
    assert_eq!(
        other.subscribe_refused(2, "bill.>", &both).await.status,
        Status::BAD_REQUEST
    );
    // A goes away (no session); what it held and what comes meanwhile is kept.
    drop(a);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 10..15 {
        publish_acked(&c, "bill.x", format!("{i:02}")).await;
    }
    assert_eq!(b.durable_count(), 1);
    let e = other
        .subscribe_refused(3, "bill.*", &durable("billing", 0))
        .await;
    assert_eq!(
        e.status,
        Status::ALREADY_EXISTS,
        "another filter: {}",
        reason(&e)
    );
    other.subscribe(4, "bill.>", &durable("billing", 0)).await;
    let mut got = Vec::new();
    for _ in 0..15 {
        let ev = other.event().await;
        let n = ev.headers.delivery_count().unwrap_or(1);
        got.push((text(&ev), n));
        other.ack(&ev).await;
    }
    other.quiet().await;
    let expect: Vec<(String, u32)> = (0..15)
        .map(|i| (format!("{i:02}"), if i < 3 { 2 } else { 1 }))
        .collect();
    assert_eq!(
        got, expect,
        "unacknowledged first (redelivered), then in order"
    );
    assert_eq!(first, ["00", "01", "02"]);
    assert_eq!(counter(&b, "acks", 15).await, 15);
    assert_eq!(b.stats()["orphan_drops"], 0);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_name_belongs_to_its_user_and_expires() {
    let user = |n: &str| User {
        name: n.into(),
        password: "pw".into(),
        ..User::default()
    };
    let (b, url) = start(BrokerConfig {
        users: vec![user("alice"), user("bob")],
        durable_ttl_ms: 500,
        ..config()
    })
    .await;
    let login = |n: &str| Hello {
        user: n.into(),
        auth: Bytes::from_static(b"pw"),
        ..offer()
    };
    let mut a = Raw::connect(&url, login("alice")).await;
    a.subscribe(1, "d.>", &durable("d", 0)).await;
    let p = Client::connect(&url, ClientOptions::new().user_password("alice", "pw"))
        .await
        .unwrap();
    publish_acked(&p, "d.x", "for alice").await;
    assert_eq!(text(&a.event().await), "for alice");
    drop(a);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Bob's "d" is another subscription: alice's message is not his.
    let mut bob = Raw::connect(&url, login("bob")).await;
    bob.subscribe(1, "d.>", &durable("d", 0)).await;
    bob.quiet().await;
    assert_eq!(b.durable_count(), 2);
    // Nobody takes alice's over within durable_ttl_ms: it is dropped, and counted.
    assert_eq!(counter(&b, "orphan_drops", 1).await, 1);
    assert_eq!(b.durable_count(), 1);
    let mut again = Raw::connect(&url, login("alice")).await;
    again.subscribe(1, "d.>", &durable("d", 0)).await;
    again.quiet().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_least_once_subscriber_alone_that_goes_away_counts_what_it_held() {
    let (b, url) = start(config()).await;
    let mut a = Raw::connect(&url, offer()).await;
    a.subscribe(1, "solo", &at_least_once(1)).await;
    let c = client(&url).await;
    for i in 0..4 {
        publish_acked(&c, "solo", format!("{i}")).await;
    }
    a.event().await;
    drop(a);
    assert_eq!(counter(&b, "orphan_drops", 4).await, 4);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_what_is_queued_and_waits_for_acks_before_close() {
    let (b, url) = start(BrokerConfig {
        shutdown_drain_ms: 10_000,
        ..config()
    })
    .await;
    let mut sub = Raw::connect(&url, offer()).await;
    sub.subscribe(1, "s", &at_least_once(10)).await;
    let o = ClientOptions::new()
        .timeout(Duration::from_secs(5))
        .reconnect(false);
    let c = Client::connect(&url, o).await.unwrap();
    for i in 0..100 {
        publish_acked(&c, "s", format!("{i}")).await;
    }
    let mut got = BTreeSet::new();
    let mut unacked = Vec::new();
    for _ in 0..10 {
        let ev = sub.event().await;
        got.insert(text(&ev));
        unacked.push(ev);
    }
    let b = std::sync::Arc::new(b);
    let stopping = tokio::spawn({
        let b = b.clone();
        async move { b.shutdown().await }
    });
    // Publishes are refused from now on (the publisher keeps them); those accepted before
    // the shutdown took effect are delivered like the rest.
    let mut accepted: BTreeSet<String> = (0..100).map(|i| format!("{i}")).collect();
    let mut refused = false;
    for i in 0..100 {
        let late = format!("late {i}");
        match c
            .publish_with("s", late.clone(), PublishOptions::new().ack())
            .await
        {
            Ok(()) => accepted.insert(late),
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                refused = true;
                break;
            }
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused);
    // The lagging subscriber still gets the other 90, then CLOSE OK once all are acked.
    for ev in &unacked {
        sub.ack(ev).await;
    }
    sub.send(&Frame::credit_subscription(1, 1000)).await;
    let close = loop {
        let f = sub.recv().await;
        match f.frame_type {
            FrameType::Event => {
                got.insert(text(&f));
                sub.ack(&f).await;
            }
            _ => break f,
        }
    };
    assert_eq!(
        (close.frame_type, close.status),
        (FrameType::Close, Status::OK),
        "{close:?}"
    );
    assert_eq!(got, accepted, "every accepted message, nothing else");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.stats()["shutdown_undelivered"], 0);
    assert_eq!(b.stats()["acks"], accepted.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_drain_time_runs_out_close_says_how_many_were_not_delivered() {
    let (b, url) = start(BrokerConfig {
        shutdown_drain_ms: 300,
        ..config()
    })
    .await;
    let mut sub = Raw::connect(&url, offer()).await;
    sub.subscribe(1, "s", &at_least_once(5)).await;
    let c = client(&url).await;
    for i in 0..20 {
        publish_acked(&c, "s", format!("{i}")).await;
    }
    for _ in 0..5 {
        sub.event().await;
    }
    b.shutdown().await;
    let close = sub.recv().await;
    assert_eq!(
        (close.frame_type, close.status),
        (FrameType::Close, Status::UNAVAILABLE),
        "{close:?}"
    );
    assert!(
        reason(&close).contains("20 message(s)"),
        "{}",
        reason(&close)
    );
    assert_eq!(b.stats()["shutdown_undelivered"], 20);
}
