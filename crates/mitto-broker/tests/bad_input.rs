//! Raw garbage, truncated frames, oversize lengths and frames out of order, written on a socket
//! to the broker: each gets its ERROR frame (and the close where the stream cannot be trusted),
//! and another client on the same broker is unaffected.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use mitto::proto::negotiate::Features;
use mitto::proto::{Decoder, Flags, Frame, FrameType, Hello, Limits, Subject, Version};
use mitto::{Client, ClientOptions, Status};
use mitto_broker::{Broker, BrokerConfig};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Raw {
    s: TcpStream,
    dec: Decoder,
    buf: BytesMut,
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        let s = TcpStream::connect(url.trim_start_matches("tcp://"))
            .await
            .unwrap();
        Raw {
            s,
            dec: Decoder::default(),
            buf: BytesMut::new(),
        }
    }
    async fn hello(url: &str) -> Raw {
        Raw::hello_limited(url, 0).await
    }
    /// Past the handshake, having agreed to receive payloads of at most `max_payload` bytes (0:
    /// the default); what the broker sends is decoded under that limit.
    async fn hello_limited(url: &str, max_payload: u32) -> Raw {
        let mut r = Raw::connect(url).await;
        let h = Hello {
            version: Version::CURRENT,
            flags: 0,
            features: Features::supported(),
            max_payload,
            max_headers: 0,
            keepalive_ms: 0,
            name: "raw".into(),
            client_id: String::new(),
            session: String::new(),
            user: String::new(),
            auth: Bytes::new(),
        };
        r.send(&Frame::hello(&h, false).unwrap()).await;
        assert_eq!(r.recv().await.unwrap().frame_type, FrameType::Hello);
        if max_payload > 0 {
            r.dec.set_limits(Limits {
                max_payload,
                ..Limits::default()
            });
        }
        r
    }
    async fn send(&mut self, f: &Frame) {
        self.s.write_all(&f.to_bytes().unwrap()).await.unwrap();
    }
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            let next = self.dec.decode(&mut self.buf);
            if let Some(f) = next.expect("a frame within the agreed limits") {
                if f.frame_type == FrameType::Ping {
                    continue;
                }
                return Some(f);
            }
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read_buf(&mut self.buf))
                .await
                .expect("an answer within 5 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }
    async fn expect_error(&mut self, status: Status, id: u64) {
        let f = self.recv().await.expect("ERROR");
        assert_eq!(
            (f.frame_type, f.status, f.id),
            (FrameType::Error, status, id),
            "{f:?}"
        );
    }
    async fn alive(&mut self) {
        self.send(&Frame::ping(99)).await;
        let f = self.recv().await.expect("PONG");
        assert_eq!((f.frame_type, f.id), (FrameType::Pong, 99));
    }
}

async fn broker() -> (Broker, String, Client, mitto::Subscription) {
    let cfg = BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: String::new(),
        max_payload: 4096,
        ..BrokerConfig::default()
    };
    let b = Broker::start(cfg).await.unwrap();
    let url = b.urls()[0].clone();
    let bystander = Client::connect(&url, ClientOptions::new()).await.unwrap();
    let sub = bystander.subscribe("calm.>").await.unwrap();
    (b, url, bystander, sub)
}

/// The bystander still publishes and receives.
async fn unaffected(c: &Client, sub: &mut mitto::Subscription) {
    c.publish("calm.check", "ok").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_error_and_close() {
    let (b, url, c, mut sub) = broker().await;
    let mut r = Raw::hello(&url).await;
    r.s.write_all(b"\x00\x01garbage that is not a mitto frame at all.....")
        .await
        .unwrap();
    r.expect_error(Status::PROTOCOL_ERROR, 0).await;
    assert_eq!(r.recv().await.map(|f| f.frame_type), Some(FrameType::Close));
    assert!(r.recv().await.is_none());
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_length_is_refused_without_reading_it_into_memory() {
    let (b, url, c, mut sub) = broker().await;
    let mut r = Raw::hello(&url).await;
    let big = Frame::publish(Subject::literal("calm.big").unwrap(), vec![1u8; 10_000]).with_id(5);
    r.send(&big).await;
    r.expect_error(Status::PAYLOAD_TOO_LARGE, 5).await;
    r.alive().await;
    // A header claiming 4 GiB: refused at once from the header alone.
    let mut head = BytesMut::new();
    Frame::publish(Subject::literal("calm.x").unwrap(), "")
        .with_id(6)
        .encode(&mut head)
        .unwrap();
    head[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
    r.s.write_all(&head).await.unwrap();
    r.expect_error(Status::PAYLOAD_TOO_LARGE, 6).await;
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_hang_up() {
    let (b, url, c, mut sub) = broker().await;
    let mut r = Raw::hello(&url).await;
    let f = Frame::publish(Subject::literal("calm.t").unwrap(), "abcdef")
        .to_bytes()
        .unwrap();
    r.s.write_all(&f[..f.len() - 2]).await.unwrap();
    drop(r);
    unaffected(&c, &mut sub).await;
    // Nothing of the truncated frame was delivered.
    assert!(tokio::time::timeout(Duration::from_millis(100), sub.next())
        .await
        .is_err());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_out_of_order_and_bad_bodies() {
    let (b, url, c, mut sub) = broker().await;
    let mut r = Raw::hello(&url).await;
    r.send(&Frame::response(7, Status::OK, "who asked?")).await;
    r.expect_error(Status::UNEXPECTED_FRAME, 7).await;
    // SUBSCRIBE with an options body of the wrong size.
    let mut s = Frame::subscribe(4, Subject::new("calm.*").unwrap(), &Default::default()).unwrap();
    s.id = 8;
    s.payload = Bytes::from_static(b"xyz");
    r.send(&s).await;
    r.expect_error(Status::BAD_REQUEST, 8).await;
    // UNSUBSCRIBE of a subscription that does not exist.
    r.send(&Frame::unsubscribe(77, None).with_id(9)).await;
    r.expect_error(Status::NOT_FOUND, 9).await;
    // The same sid twice.
    let s = Frame::subscribe(5, Subject::new("calm.*").unwrap(), &Default::default()).unwrap();
    r.send(&s.clone().with_id(10)).await;
    r.send(&s.with_id(11)).await;
    r.expect_error(Status::ALREADY_EXISTS, 11).await;
    // After all that, an acknowledged publish is still answered.
    let mut p = Frame::publish(Subject::literal("other.p").unwrap(), "x").with_id(12);
    p.flags.insert(Flags::ACK_REQUIRED);
    r.send(&p).await;
    assert_eq!(
        r.recv().await.map(|f| (f.frame_type, f.id)),
        Some((FrameType::Ack, 12))
    );
    r.alive().await;
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_half_close_gets_error_and_close() {
    let (b, url, c, mut sub) = broker().await;
    let mut r = Raw::hello(&url).await;
    let f = Frame::publish(Subject::literal("calm.t").unwrap(), "abcdef")
        .with_id(3)
        .to_bytes()
        .unwrap();
    r.s.write_all(&f[..f.len() - 2]).await.unwrap();
    // The client is done sending but still reads: it hears why the broker closes.
    r.s.shutdown().await.unwrap();
    r.expect_error(Status::PROTOCOL_ERROR, 0).await;
    let close = r.recv().await.expect("CLOSE");
    assert_eq!(
        (close.frame_type, close.status),
        (FrameType::Close, Status::PROTOCOL_ERROR)
    );
    assert!(r.recv().await.is_none());
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_sent_to_the_broker_is_refused_not_answered() {
    let (b, url, c, mut sub) = broker().await;
    let mut r = Raw::hello(&url).await;
    let mut health = Frame::health_query(21);
    health.flags.insert(Flags::REPLY);
    health.payload = Frame::health_reply(
        21,
        &mitto::proto::HealthReport {
            state: mitto::proto::HealthState::Serving,
            uptime_ms: 1,
            server: "not a broker".into(),
            detail: None,
        },
    )
    .unwrap()
    .payload;
    r.send(&health).await;
    r.expect_error(Status::UNEXPECTED_FRAME, 21).await;
    let stats = Frame::stats_reply(22, &Default::default()).unwrap();
    r.send(&stats).await;
    r.expect_error(Status::UNEXPECTED_FRAME, 22).await;
    // A query is still answered.
    r.send(&Frame::health_query(23)).await;
    let f = r.recv().await.expect("HEALTH reply");
    assert_eq!((f.frame_type, f.id), (FrameType::Health, 23));
    assert!(f.flags.contains(Flags::REPLY));
    r.alive().await;
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

/// A client that agreed to payloads of 16 bytes still gets every answer, with its status and
/// id: reasons are cut to fit, a report or a result that cannot fit becomes PAYLOAD_TOO_LARGE.
/// (Its decoder refuses anything over 16 bytes, so an answer sent whole fails the test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_fit_a_small_agreed_payload_limit() {
    let (b, url, c, mut sub) = broker().await;
    let mut r = Raw::hello_limited(&url, 16).await;
    let reason_fits = |f: &Frame| {
        assert!(f.payload.len() <= 16, "{f:?}");
        std::str::from_utf8(&f.payload).expect("UTF-8 reason");
    };
    // Refusals of the broker's own.
    r.send(&Frame::unsubscribe(77, None).with_id(9)).await;
    let e = r.recv().await.unwrap();
    assert_eq!(
        (e.frame_type, e.status, e.id),
        (FrameType::Error, Status::NOT_FOUND, 9)
    );
    assert_eq!(&e.payload[..], b"no subscription ");
    let mut s = Frame::subscribe(4, Subject::new("calm.*").unwrap(), &Default::default()).unwrap();
    s.id = 8;
    s.payload = Bytes::from_static(b"xyz");
    r.send(&s).await;
    let e = r.recv().await.unwrap();
    assert_eq!(
        (e.frame_type, e.status, e.id),
        (FrameType::Error, Status::BAD_REQUEST, 8)
    );
    reason_fits(&e);
    // A decode error of the driver's.
    let big = Frame::publish(Subject::literal("calm.big").unwrap(), vec![1u8; 17]).with_id(5);
    r.send(&big).await;
    let e = r.recv().await.unwrap();
    assert_eq!(
        (e.frame_type, e.status, e.id),
        (FrameType::Error, Status::PAYLOAD_TOO_LARGE, 5)
    );
    reason_fits(&e);
    // NO_RESPONDERS for a call.
    r.send(&Frame::request(
        6,
        Subject::literal("nobody.home").unwrap(),
        "",
    ))
    .await;
    let a = r.recv().await.unwrap();
    assert_eq!(
        (a.frame_type, a.status, a.id),
        (FrameType::Response, Status::NO_RESPONDERS, 6)
    );
    reason_fits(&a);
    // A STATS report is far over 16 bytes.
    r.send(&Frame::stats_query(7)).await;
    let e = r.recv().await.unwrap();
    assert_eq!(
        (e.frame_type, e.status, e.id),
        (FrameType::Error, Status::PAYLOAD_TOO_LARGE, 7)
    );
    reason_fits(&e);
    // A service's result over the caller's limit.
    let service = mitto::Server::new()
        .route("calm.big", |_r: mitto::Request| async move {
            Ok(Bytes::from(vec![b'x'; 100]))
        })
        .attach(&url, ClientOptions::new())
        .await
        .unwrap();
    r.send(&Frame::request(
        10,
        Subject::literal("calm.big").unwrap(),
        "",
    ))
    .await;
    let a = r.recv().await.unwrap();
    assert_eq!(
        (a.frame_type, a.status, a.id),
        (FrameType::Response, Status::PAYLOAD_TOO_LARGE, 10)
    );
    reason_fits(&a);
    r.alive().await;
    unaffected(&c, &mut sub).await;
    service.shutdown().await;
    // The broker's CLOSE at shutdown fits too.
    b.shutdown().await;
    let close = r.recv().await.expect("CLOSE");
    assert_eq!(
        (close.frame_type, close.status),
        (FrameType::Close, Status::OK)
    );
    reason_fits(&close);
}
