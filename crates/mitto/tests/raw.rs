//! Bad input and odd peers, spoken to the server as raw bytes on a TCP socket: every case gets the
//! ERROR frame and the close the spec asks for, and the server keeps serving everyone else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{BufMut, Bytes, BytesMut};
use mitto::proto::negotiate::Features;
use mitto::proto::{Decoder, Frame, FrameType, Hello, Subject, Version};
use mitto::{Client, ClientOptions, Request, RequestStream, Server, Status};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Raw {
    s: TcpStream,
    dec: Decoder,
    buf: BytesMut,
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        let addr = url.trim_start_matches("tcp://");
        Raw {
            s: TcpStream::connect(addr).await.unwrap(),
            dec: Decoder::default(),
            buf: BytesMut::new(),
        }
    }

    async fn hello(url: &str) -> Raw {
        let mut r = Raw::connect(url).await;
        r.send(&Frame::hello(&offer(), false).unwrap()).await;
        let f = r.recv().await.expect("HELLO reply");
        assert_eq!(f.frame_type, FrameType::Hello);
        r
    }

    async fn send(&mut self, f: &Frame) {
        self.s.write_all(&f.to_bytes().unwrap()).await.unwrap();
    }

    async fn send_bytes(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    /// The next frame, or `None` at end of stream. Fails the test after 5 s of silence.
    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read_buf(&mut self.buf))
                .await
                .expect("a frame within 5 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Skips PINGs from the server's keepalive.
    async fn recv_not_ping(&mut self) -> Option<Frame> {
        loop {
            match self.recv().await {
                Some(f) if f.frame_type == FrameType::Ping => continue,
                other => return other,
            }
        }
    }

    async fn still_alive(&mut self) {
        self.send(&Frame::ping(4242)).await;
        let f = self.recv_not_ping().await.expect("PONG");
        assert_eq!((f.frame_type, f.id), (FrameType::Pong, 4242));
    }
}

fn offer() -> Hello {
    Hello {
        version: Version::CURRENT,
        flags: 0,
        features: Features::supported(),
        max_payload: 0,
        max_headers: 0,
        keepalive_ms: 0,
        name: "raw-test".into(),
        client_id: String::new(),
        session: String::new(),
        user: String::new(),
        auth: Bytes::new(),
    }
}

async fn server() -> mitto::RunningServer {
    Server::with_options(mitto::ServerOptions::new().max_payload(1024))
        .route("echo", |r: Request| async move { Ok(r.payload().clone()) })
        .route("big", |_r: Request| async move {
            Ok(Bytes::from(vec![b'x'; 100]))
        })
        .route("block", |_r: Request| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Bytes::new())
        })
        .route_client_stream("hold", |_r: Request, items: RequestStream| async move {
            let _unread = items;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Bytes::new())
        })
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap()
}

/// A well-behaved client on the same server still gets answers.
async fn others_unaffected(url: &str) {
    let c = Client::connect(url, ClientOptions::new()).await.unwrap();
    assert_eq!(c.call("echo", "ok").await.unwrap(), Bytes::from("ok"));
    c.close().await;
}

#[tokio::test]
async fn garbage_instead_of_hello_gets_error_and_close() {
    let srv = server().await;
    let mut r = Raw::connect(srv.local_url()).await;
    r.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n...........")
        .await;
    let f = r.recv().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::PROTOCOL_ERROR, 0)
    );
    let f = r.recv().await.expect("CLOSE");
    assert_eq!(
        (f.frame_type, f.status),
        (FrameType::Close, Status::PROTOCOL_ERROR)
    );
    assert!(r.recv().await.is_none());
    others_unaffected(srv.local_url()).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn requests_pipelined_behind_hello_are_answered() {
    let srv = server().await;
    let mut r = Raw::connect(srv.local_url()).await;
    let mut b = Frame::hello(&offer(), false)
        .unwrap()
        .to_bytes()
        .unwrap()
        .to_vec();
    let req = Frame::request(3, Subject::literal("echo").unwrap(), "early");
    b.extend_from_slice(&req.to_bytes().unwrap());
    r.send_bytes(&b).await;
    assert_eq!(r.recv().await.map(|f| f.frame_type), Some(FrameType::Hello));
    let f = r.recv_not_ping().await.expect("RESPONSE");
    assert_eq!(
        (f.frame_type, f.id, &f.payload[..]),
        (FrameType::Response, 3, &b"early"[..])
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let srv = server().await;
    let mut r = Raw::connect(srv.local_url()).await;
    r.send(&Frame::request(1, Subject::literal("echo").unwrap(), "x"))
        .await;
    let f = r.recv().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::UNEXPECTED_FRAME, 1)
    );
    assert_eq!(r.recv().await.map(|f| f.frame_type), Some(FrameType::Close));
    assert!(r.recv().await.is_none());
    srv.shutdown().await;
}

#[tokio::test]
async fn unsupported_major_version_is_refused() {
    let srv = server().await;
    let mut r = Raw::connect(srv.local_url()).await;
    let mut h = offer();
    h.version = Version { major: 9, minor: 0 };
    r.send(&Frame::hello(&h, false).unwrap().with_id(12)).await;
    let f = r.recv().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::UNSUPPORTED_VERSION, 12)
    );
    let f = r.recv().await.expect("CLOSE");
    assert_eq!(
        (f.frame_type, f.status),
        (FrameType::Close, Status::UNSUPPORTED_VERSION)
    );
    assert!(r.recv().await.is_none());
    srv.shutdown().await;
}

#[tokio::test]
async fn oversize_frame_is_refused_and_connection_survives() {
    let srv = server().await;
    let mut r = Raw::hello(srv.local_url()).await;
    let big = Frame::request(7, Subject::literal("echo").unwrap(), vec![0u8; 5000]);
    r.send(&big).await;
    let f = r.recv_not_ping().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::PAYLOAD_TOO_LARGE, 7)
    );
    r.still_alive().await;
    r.send(&Frame::request(
        8,
        Subject::literal("echo").unwrap(),
        "fine",
    ))
    .await;
    let f = r.recv_not_ping().await.expect("RESPONSE");
    assert_eq!(
        (f.frame_type, f.id, &f.payload[..]),
        (FrameType::Response, 8, &b"fine"[..])
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn unknown_frame_type_is_refused_and_connection_survives() {
    let srv = server().await;
    let mut r = Raw::hello(srv.local_url()).await;
    let mut b = BytesMut::new();
    Frame::ping(3).encode(&mut b).unwrap();
    b[6] = 0x7f; // frame type
    r.send_bytes(&b).await;
    let f = r.recv_not_ping().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::UNSUPPORTED_FEATURE, 3)
    );
    r.still_alive().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn bad_magic_mid_stream_closes_the_connection() {
    let srv = server().await;
    let mut r = Raw::hello(srv.local_url()).await;
    let mut b = BytesMut::new();
    b.put_slice(b"NOPE");
    b.put_bytes(0, 28);
    r.send_bytes(&b).await;
    let f = r.recv_not_ping().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status),
        (FrameType::Error, Status::PROTOCOL_ERROR)
    );
    assert_eq!(
        r.recv_not_ping().await.map(|f| f.frame_type),
        Some(FrameType::Close)
    );
    assert!(r.recv().await.is_none());
    others_unaffected(srv.local_url()).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_malformed_first_frame_is_refused_with_its_id_then_closed() {
    let srv = server().await;
    let mut r = Raw::connect(srv.local_url()).await;
    // A HELLO whose body is too short: not fatal to the decoder, but the handshake failed.
    let mut hello = Frame::hello(&offer(), false).unwrap().with_id(4);
    hello.payload = Bytes::from_static(&[1, 0, 0, 0]);
    r.send(&hello).await;
    let f = r.recv().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::BAD_REQUEST, 4)
    );
    let f = r.recv().await.expect("CLOSE");
    assert_eq!(
        (f.frame_type, f.status),
        (FrameType::Close, Status::BAD_REQUEST)
    );
    assert!(r.recv().await.is_none());
    // A stream that ends inside the first frame.
    let mut r = Raw::connect(srv.local_url()).await;
    let b = Frame::hello(&offer(), false).unwrap().to_bytes().unwrap();
    r.send_bytes(&b[..b.len() - 1]).await;
    r.s.shutdown().await.unwrap();
    let f = r.recv().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::PROTOCOL_ERROR, 0)
    );
    let f = r.recv().await.expect("CLOSE");
    assert_eq!(f.frame_type, FrameType::Close);
    assert!(r.recv().await.is_none());
    srv.shutdown().await;
}

#[tokio::test]
async fn truncated_frame_then_half_close_gets_error_and_close() {
    let srv = server().await;
    let mut r = Raw::hello(srv.local_url()).await;
    let b = Frame::request(1, Subject::literal("echo").unwrap(), "abcdef")
        .to_bytes()
        .unwrap();
    r.send_bytes(&b[..b.len() - 3]).await;
    r.s.shutdown().await.unwrap();
    let f = r.recv_not_ping().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::PROTOCOL_ERROR, 0)
    );
    let f = r.recv_not_ping().await.expect("CLOSE");
    assert_eq!(
        (f.frame_type, f.status),
        (FrameType::Close, Status::PROTOCOL_ERROR)
    );
    assert!(r.recv().await.is_none());
    others_unaffected(srv.local_url()).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_report_sent_to_the_server_is_refused_not_answered() {
    let srv = server().await;
    let mut r = Raw::hello(srv.local_url()).await;
    let stats = Frame::stats_reply(31, &Default::default()).unwrap();
    r.send(&stats).await;
    let f = r.recv_not_ping().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::UNEXPECTED_FRAME, 31)
    );
    r.send(&Frame::stats_query(32)).await;
    let f = r.recv_not_ping().await.expect("STATS reply");
    assert_eq!((f.frame_type, f.id), (FrameType::Stats, 32));
    r.still_alive().await;
    srv.shutdown().await;
}

/// A client that agreed to 16-byte payloads gets its call's end even when the result or the
/// failure's reason is longer (its decoder refuses anything over 16 bytes).
#[tokio::test]
async fn answers_fit_a_small_agreed_payload_limit() {
    let srv = server().await;
    let mut r = Raw::connect(srv.local_url()).await;
    let mut h = offer();
    h.max_payload = 16;
    r.send(&Frame::hello(&h, false).unwrap()).await;
    assert_eq!(r.recv().await.unwrap().frame_type, FrameType::Hello);
    r.dec.set_limits(mitto::proto::Limits {
        max_payload: 16,
        ..Default::default()
    });
    r.send(&Frame::request(5, Subject::literal("big").unwrap(), ""))
        .await;
    let f = r.recv_not_ping().await.expect("RESPONSE");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Response, Status::PAYLOAD_TOO_LARGE, 5)
    );
    assert!(f.payload.len() <= 16 && std::str::from_utf8(&f.payload).is_ok());
    r.send(&Frame::request(
        6,
        Subject::literal("no.such.method").unwrap(),
        "",
    ))
    .await;
    let f = r.recv_not_ping().await.expect("RESPONSE");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Response, Status::METHOD_NOT_FOUND, 6)
    );
    assert!(f.payload.len() <= 16);
    r.still_alive().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_bare_host_port_is_tcp() {
    let srv = Server::new()
        .route("echo", |r: Request| async move { Ok(r.payload().clone()) })
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let url = srv.local_url();
    assert!(url.starts_with("tcp://127.0.0.1:"), "{url}");
    let bare = url.trim_start_matches("tcp://");
    let c = Client::connect(bare, ClientOptions::new()).await.unwrap();
    assert_eq!(c.call("echo", "ok").await.unwrap(), Bytes::from("ok"));
    c.close().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn truncated_frame_then_eof_does_not_hurt_the_server() {
    let srv = server().await;
    let mut r = Raw::hello(srv.local_url()).await;
    let b = Frame::request(1, Subject::literal("echo").unwrap(), "abcdef")
        .to_bytes()
        .unwrap();
    r.send_bytes(&b[..b.len() - 3]).await;
    drop(r);
    others_unaffected(srv.local_url()).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn server_enforces_the_deadline_header() {
    let srv = server().await;
    let mut r = Raw::hello(srv.local_url()).await;
    let h = mitto::Headers::builder()
        .deadline(Duration::from_millis(50))
        .build();
    r.send(&Frame::request(5, Subject::literal("block").unwrap(), "").with_headers(h))
        .await;
    let f = r.recv_not_ping().await.expect("RESPONSE");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Response, Status::TIMEOUT, 5)
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn duplicate_call_id_is_a_protocol_error() {
    let srv = server().await;
    let mut r = Raw::hello(srv.local_url()).await;
    r.send(&Frame::request(9, Subject::literal("block").unwrap(), ""))
        .await;
    r.send(&Frame::request(9, Subject::literal("block").unwrap(), ""))
        .await;
    let f = r.recv_not_ping().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::PROTOCOL_ERROR, 9)
    );
    // CANCEL ends the first one.
    r.send(&Frame::cancel(9)).await;
    let f = r.recv_not_ping().await.expect("RESPONSE");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Response, Status::CANCELLED, 9)
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn stream_items_beyond_credit_are_refused() {
    let srv = server().await;
    let mut r = Raw::hello(srv.local_url()).await;
    let open = Frame::request(11, Subject::literal("hold").unwrap(), "");
    r.send(&open.with_flags(mitto::proto::Flags::START)).await;
    for _ in 0..=mitto::INITIAL_STREAM_CREDIT {
        r.send(&Frame::stream(11, "item", false)).await;
    }
    let f = r.recv_not_ping().await.expect("RESPONSE");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Response, Status::PROTOCOL_ERROR, 11)
    );
    r.still_alive().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn pubsub_frames_on_an_rpc_server_are_refused() {
    let srv = server().await;
    let mut r = Raw::hello(srv.local_url()).await;
    r.send(&Frame::publish(Subject::literal("a.b").unwrap(), "x").with_id(77))
        .await;
    let f = r.recv_not_ping().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::UNSUPPORTED_FEATURE, 77)
    );
    r.still_alive().await;
    srv.shutdown().await;
}

/// A server that answers HELLO, takes one REQUEST, and vanishes.
#[tokio::test]
async fn peer_vanishing_mid_call_fails_the_call_as_retryable() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let fake = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut r = Raw {
            s,
            dec: Decoder::default(),
            buf: BytesMut::new(),
        };
        let hello = r.recv().await.unwrap();
        let reply =
            mitto::proto::negotiate::negotiate(&offer(), &Hello::decode(&hello.payload).unwrap())
                .unwrap()
                .reply("fake", "c1", "", false);
        r.send(&Frame::hello(&reply, true).unwrap()).await;
        let req = r.recv().await.unwrap();
        assert_eq!(req.frame_type, FrameType::Request);
        // vanish: the socket drops with the call unanswered
    });
    let c = Client::connect(&url, ClientOptions::new().reconnect(false))
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let e = c.call("anything", "x").await.unwrap_err();
    assert_eq!(e.status(), Status::UNAVAILABLE);
    assert!(e.is_retryable() && !e.is_remote(), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    fake.await.unwrap();
}

/// A long run of requests read at once is answered in parts: the answers to the first 64 go out
/// while the server is still busy with the rest, so a pipelining peer can work on them. Here
/// the 65th handler holds the server's thread for 400 ms (the server runs on a runtime of its
/// own, so this test's client keeps reading meanwhile); the first 64 answers must arrive
/// before it lets go.
#[tokio::test]
async fn answers_to_a_long_run_of_requests_go_out_before_the_run_is_done() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let released = Arc::new(AtomicBool::new(false));
    let r2 = released.clone();
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let srv = Server::new()
                .route("echo", |r: Request| async move { Ok(r.payload().clone()) })
                .route("stall", move |_r: Request| {
                    let released = r2.clone();
                    async move {
                        // Holds the connection's task (and its thread) as a busy handler would.
                        std::thread::sleep(Duration::from_millis(400));
                        released.store(true, Ordering::SeqCst);
                        Ok(Bytes::new())
                    }
                })
                .bind("tcp://127.0.0.1:0")
                .await
                .unwrap();
            url_tx.send(srv.local_url().to_owned()).unwrap();
            let _ = stop_rx.await;
            srv.shutdown().await;
        });
    });
    let url = url_rx.recv().unwrap();
    let mut r = Raw::hello(&url).await;
    let mut run = BytesMut::new();
    for id in 1..=64u64 {
        run.put(
            Frame::request(id, Subject::new("echo").unwrap(), Bytes::from("x"))
                .to_bytes()
                .unwrap(),
        );
    }
    run.put(
        Frame::request(65, Subject::new("stall").unwrap(), Bytes::new())
            .to_bytes()
            .unwrap(),
    );
    r.send_bytes(&run).await;
    for id in 1..=64u64 {
        let f = r.recv_not_ping().await.expect("an answer");
        assert_eq!((f.frame_type, f.id), (FrameType::Response, id));
        assert!(
            !released.load(Ordering::SeqCst),
            "answer {id} waited for the whole run"
        );
    }
    let f = r.recv_not_ping().await.expect("the stalled call's answer");
    assert_eq!((f.frame_type, f.id), (FrameType::Response, 65));
    assert!(released.load(Ordering::SeqCst));
    stop_tx.send(()).unwrap();
    server_thread.join().unwrap();
}

/// A connection acts only on its own calls: another connection's CANCEL, STREAM, CREDIT and
/// ERROR naming the same id reach nothing, and a RESPONSE (a server opens no calls) is refused.
#[tokio::test]
async fn frames_naming_another_connections_call_reach_nothing() {
    let srv = server().await;
    let mut owner = Raw::hello(srv.local_url()).await;
    owner
        .send(&Frame::request(5, Subject::literal("block").unwrap(), ""))
        .await;
    owner.still_alive().await;
    let mut other = Raw::hello(srv.local_url()).await;
    other.send(&Frame::cancel(5)).await;
    other.send(&Frame::stream(5, "x", true)).await;
    other.send(&Frame::credit_stream(5, 10)).await;
    other
        .send(&Frame::error(5, Status::INTERNAL, "not yours"))
        .await;
    other.send(&Frame::response(5, Status::OK, "forged")).await;
    let f = other.recv_not_ping().await.expect("ERROR");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Error, Status::UNEXPECTED_FRAME, 5),
        "{f:?}"
    );
    other.still_alive().await;
    // The owner's call is still in flight: its own CANCEL ends it.
    owner.send(&Frame::cancel(5)).await;
    let f = owner.recv_not_ping().await.expect("RESPONSE");
    assert_eq!(
        (f.frame_type, f.status, f.id),
        (FrameType::Response, Status::CANCELLED, 5)
    );
    srv.shutdown().await;
}

/// A RESPONSE with bit 63 set can answer none of a client's calls (PROTOCOL.md 3.1, 10.1): the
/// client answers UNEXPECTED_FRAME and its own call still gets the real answer.
#[tokio::test]
async fn a_client_refuses_a_response_from_the_servers_half_of_the_ids() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let fake = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut r = Raw {
            s,
            dec: Decoder::default(),
            buf: BytesMut::new(),
        };
        let hello = r.recv().await.unwrap();
        let reply =
            mitto::proto::negotiate::negotiate(&offer(), &Hello::decode(&hello.payload).unwrap())
                .unwrap()
                .reply("fake", "c1", "", false);
        r.send(&Frame::hello(&reply, true).unwrap()).await;
        let req = r.recv_not_ping().await.unwrap();
        let forged = req.id | 1 << 63;
        r.send(&Frame::response(forged, Status::OK, "not yours"))
            .await;
        let e = r.recv_not_ping().await.unwrap();
        assert_eq!(
            (e.frame_type, e.status, e.id),
            (FrameType::Error, Status::UNEXPECTED_FRAME, forged),
            "{e:?}"
        );
        r.send(&Frame::response(req.id, Status::OK, "real")).await;
        r.recv().await; // until the client goes
    });
    let c = Client::connect(&url, ClientOptions::new().reconnect(false))
        .await
        .unwrap();
    assert_eq!(c.call("anything", "x").await.unwrap(), Bytes::from("real"));
    c.close().await;
    fake.await.unwrap();
}

/// This process's (virtual size, resident size, peak resident size since the last reset),
/// bytes. The peak is reset by writing "5" to /proc/self/clear_refs (proc(5)).
fn memory(reset_peak: bool) -> (u64, u64, u64) {
    if reset_peak {
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmSize:"), field("VmRSS:"), field("VmHWM:"))
}

/// A client that pipelines calls and never reads the answers: the server stops reading from
/// it once its answers pile up (1 MiB), then closes it when they stay unread past the write
/// deadline; its memory stays bounded and other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_calls_and_never_reads_is_slowed_then_closed() {
    let srv = Server::with_options(
        mitto::ServerOptions::new().write_deadline(Duration::from_millis(300)),
    )
    .route("big", |_r: Request| async move {
        // A fresh 64 KiB answer each time, as a real handler's would be.
        Ok(Bytes::from(vec![1u8; 64 * 1024]))
    })
    .route("echo", |r: Request| async move { Ok(r.payload().clone()) })
    .bind("tcp://127.0.0.1:0")
    .await
    .unwrap();
    let url = srv.local_url().to_owned();
    let (_, base, _) = memory(true);
    let mut r = Raw::hello(&url).await;
    // 3,000 calls (192 MiB of answers) in one write.
    let mut run = BytesMut::new();
    for id in 1..=3000u64 {
        Frame::request(id, Subject::new("big").unwrap(), Bytes::new())
            .encode(&mut run)
            .unwrap();
    }
    r.send_bytes(&run).await;
    let mut closed = false;
    for _ in 0..1000 {
        if srv.stats().values.get("slow_connections_closed") == Some(&1) {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "{:?}", srv.stats().values);
    let grown = memory(false).2.saturating_sub(base);
    assert!(grown < 32 << 20, "grew by {} MiB", grown >> 20);
    others_unaffected(&url).await;
    srv.shutdown().await;
}

/// A client never reserves what a server declares: a HELLO reply over the handshake limits is
/// refused from its header, and after the handshake a frame's buffer grows only with the bytes
/// that actually arrive.
#[tokio::test]
async fn a_client_does_not_reserve_what_a_server_declares() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    let fake = tokio::spawn(async move {
        // First client: a HELLO reply declaring 64 MiB.
        let (s, _) = l.accept().await.unwrap();
        let mut r = Raw {
            s,
            dec: Decoder::default(),
            buf: BytesMut::new(),
        };
        r.recv().await.unwrap();
        let mut head = Frame::hello(&offer(), true).unwrap().to_bytes().unwrap()[..32].to_vec();
        head[28..32].copy_from_slice(&(64u32 << 20).to_be_bytes());
        r.send_bytes(&head).await;
        // Second client: a fair handshake, then a RESPONSE declaring 60 MiB of which 1 MiB
        // comes.
        let (s, _) = l.accept().await.unwrap();
        let mut r = Raw {
            s,
            dec: Decoder::default(),
            buf: BytesMut::new(),
        };
        let hello = r.recv().await.unwrap();
        let reply =
            mitto::proto::negotiate::negotiate(&offer(), &Hello::decode(&hello.payload).unwrap())
                .unwrap()
                .reply("fake", "c1", "", false);
        r.send(&Frame::hello(&reply, true).unwrap()).await;
        let mut head = Frame::response(1, Status::OK, Bytes::new())
            .to_bytes()
            .unwrap()
            .to_vec();
        head[28..32].copy_from_slice(&(60u32 << 20).to_be_bytes());
        r.send_bytes(&head).await;
        r.send_bytes(&vec![0u8; 1 << 20]).await;
        // Held open until the client is done.
        let _ = r.s.read(&mut [0u8; 1]).await;
    });
    let opts = || {
        ClientOptions::new()
            .reconnect(false)
            .connect_timeout(Duration::from_secs(5))
    };
    let e = Client::connect(&url, opts()).await.unwrap_err();
    assert_eq!(e.status(), Status::PAYLOAD_TOO_LARGE, "{e}");
    let (size, _, _) = memory(false);
    let c = Client::connect(&url, opts()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = memory(false).0.saturating_sub(size);
    assert!(
        grown < 16 << 20,
        "the client reserved {} MiB for a frame of which 1 MiB came",
        grown >> 20
    );
    drop(c);
    fake.abort();
}
