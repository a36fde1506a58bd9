//! The WebSocket binding at the broker, from a plain WebSocket peer (tungstenite, blocking, on
//! its own thread) that sends what a mitto client never would: text, oversize messages, frames
//! split across messages, foreign origins and subprotocols, silence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use mitto::proto::{Decoder, Frame, FrameType, Hello, Subject, SubscribeOptions, Version};
use mitto_broker::{Broker, BrokerConfig};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::{header, HeaderValue};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// How long a peer waits for an answer it expects (a guard against hanging, not a timing
/// assertion).
const GUARD: Duration = Duration::from_secs(10);

async fn broker(cfg: BrokerConfig) -> (Broker, String) {
    let cfg = BrokerConfig {
        listen: vec!["ws://127.0.0.1:0/mitto".into()],
        monitor: String::new(),
        ..cfg
    };
    let b = Broker::start(cfg).await.unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

fn addr(url: &str) -> String {
    let rest = url.trim_start_matches("ws://");
    rest.split('/').next().unwrap().to_owned()
}

type Ws = WebSocket<TcpStream>;

/// Opens a WebSocket to `url` with these request headers (`Sec-WebSocket-Protocol`,
/// `Origin`, ...); the HTTP refusal as an error.
fn open(url: &str, headers: &[(header::HeaderName, &str)]) -> Result<Ws, tungstenite::Error> {
    let s = TcpStream::connect(addr(url)).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut()
            .insert(k.clone(), HeaderValue::from_str(v).unwrap());
    }
    match tungstenite::client::client(req, s) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => unreachable!("blocking socket"),
    }
}

fn mitto(url: &str) -> Ws {
    open(url, &[(header::SEC_WEBSOCKET_PROTOCOL, "mitto.v1")]).unwrap()
}

fn bytes(frames: &[Frame]) -> Bytes {
    let mut b = BytesMut::new();
    for f in frames {
        f.encode(&mut b).unwrap();
    }
    b.freeze()
}

fn hello() -> Frame {
    let h = Hello {
        version: Version::CURRENT,
        name: "ws-peer".into(),
        ..Hello::default()
    };
    Frame::hello(&h, false).unwrap()
}

/// The frames of the next binary message.
fn frames(ws: &mut Ws) -> Vec<Frame> {
    loop {
        match ws.read().unwrap() {
            Message::Binary(b) => {
                let mut buf = BytesMut::from(&b[..]);
                let mut dec = Decoder::default();
                let mut out = Vec::new();
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    out.push(f);
                }
                assert!(buf.is_empty(), "a message holds whole frames");
                return out;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a binary message, got {other:?}"),
        }
    }
}

/// Says HELLO and reads the reply.
fn admitted(url: &str) -> Ws {
    let mut ws = mitto(url);
    ws.send(Message::Binary(bytes(&[hello()]))).unwrap();
    let reply = frames(&mut ws);
    assert_eq!(reply[0].frame_type, FrameType::Hello, "{reply:?}");
    ws
}

/// Reads until the broker's close frame; returns its code and reason.
fn close_of(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(c))) => return (c.code, c.reason.to_string()),
            Ok(Message::Close(None)) => panic!("closed without a code"),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Runs `peer` on its own thread against a broker with `cfg` on a WebSocket listener (its URL
/// given), then shuts the broker down.
async fn against(cfg: BrokerConfig, peer: impl FnOnce(String) + Send + 'static) {
    let (b, url) = broker(cfg).await;
    blocking(move || peer(url)).await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_message_is_refused_with_close_1003_before_and_after_hello() {
    against(BrokerConfig::default(), |url| {
        for say_hello in [false, true] {
            let mut ws = if say_hello {
                admitted(&url)
            } else {
                mitto(&url)
            };
            ws.send(Message::Text("SUB x 1".into())).unwrap();
            let (code, reason) = close_of(&mut ws);
            assert_eq!(code, CloseCode::Unsupported, "{reason}");
            assert!(reason.contains("binary"), "{reason}");
        }
    })
    .await;
}

/// A WebSocket frame header from the client (masked) announcing `len` payload bytes.
fn ws_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[1, 2, 3, 4]);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_refused_from_its_header_before_and_after_hello() {
    against(
        BrokerConfig {
            max_payload: 1024,
            ..BrokerConfig::default()
        },
        |url| {
            for say_hello in [false, true] {
                let mut ws = if say_hello {
                    admitted(&url)
                } else {
                    mitto(&url)
                };
                // 1 GiB announced, none of it sent: refused at once, nothing held for it.
                ws.get_mut().write_all(&ws_header(1 << 30)).unwrap();
                let (code, reason) = close_of(&mut ws);
                assert_eq!(code, CloseCode::Size, "{reason}");
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_hello_a_message_is_held_to_the_handshake_frame_then_to_the_agreed_one() {
    against(BrokerConfig::default(), |url| {
        // Before HELLO: one handshake-sized frame (5,408 bytes) at most, as on TCP.
        let mut ws = mitto(&url);
        ws.send(Message::Binary(vec![0u8; 5409].into())).unwrap();
        let (code, reason) = close_of(&mut ws);
        assert_eq!(code, CloseCode::Size, "{reason}");
        assert!(reason.contains("5408"), "{reason}");
        // After it: a 100 KiB publish goes through, to a subscriber on the same socket.
        let mut ws = admitted(&url);
        let sub = Frame::subscribe(
            1,
            Subject::new("big").unwrap(),
            &SubscribeOptions::default(),
        )
        .unwrap();
        let publish = Frame::publish(Subject::new("big").unwrap(), vec![7u8; 100 << 10]);
        // Frames may be batched: both in one message.
        ws.send(Message::Binary(bytes(&[sub, publish]))).unwrap();
        let got = frames(&mut ws);
        let event = got.iter().find(|f| f.frame_type == FrameType::Event);
        assert_eq!(
            event.expect("the EVENT").payload.len(),
            100 << 10,
            "{got:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_split_across_messages_closes_with_1002() {
    against(BrokerConfig::default(), |url| {
        let mut ws = admitted(&url);
        let publish = bytes(&[Frame::publish(Subject::new("a").unwrap(), "split")]);
        ws.send(Message::Binary(publish.slice(..20))).unwrap();
        ws.send(Message::Binary(publish.slice(20..))).unwrap();
        let (code, reason) = close_of(&mut ws);
        assert_eq!(code, CloseCode::Protocol, "{reason}");
        assert!(reason.contains("split"), "{reason}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_message_is_nothing_and_a_ping_is_answered_with_a_pong() {
    against(BrokerConfig::default(), |url| {
        let mut ws = admitted(&url);
        ws.send(Message::Ping(Bytes::from_static(b"are you there")))
            .unwrap();
        match ws.read().unwrap() {
            Message::Pong(p) => assert_eq!(&p[..], b"are you there"),
            other => panic!("expected a pong, got {other:?}"),
        }
    })
    .await;
}

fn refusal(r: Result<Ws, tungstenite::Error>) -> u16 {
    match r {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade went through"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_subprotocols_and_paths() {
    against(
        BrokerConfig {
            ws_allowed_origins: vec!["https://app.example".into()],
            ..BrokerConfig::default()
        },
        |url| {
            let proto = (header::SEC_WEBSOCKET_PROTOCOL, "mitto.v1");
            // A page of another site is refused; a page of this host or a listed one is not.
            let evil = open(
                &url,
                &[proto.clone(), (header::ORIGIN, "http://evil.example")],
            );
            assert_eq!(refusal(evil), 403);
            open(
                &url,
                &[proto.clone(), (header::ORIGIN, "http://127.0.0.1:8080")],
            )
            .unwrap();
            open(
                &url,
                &[proto.clone(), (header::ORIGIN, "https://app.example")],
            )
            .unwrap();
            // No subprotocol: accepted (simple tools); others only: refused; mitto.v1 among them.
            let mut plain = open(&url, &[]).unwrap();
            plain.send(Message::Binary(bytes(&[hello()]))).unwrap();
            assert_eq!(frames(&mut plain)[0].frame_type, FrameType::Hello);
            let other = open(&url, &[(header::SEC_WEBSOCKET_PROTOCOL, "mqtt")]);
            assert_eq!(refusal(other), 400);
            open(&url, &[(header::SEC_WEBSOCKET_PROTOCOL, "mqtt, mitto.v1")]).unwrap();
            // Another path than the listener's.
            let elsewhere = url.replace("/mitto", "/other");
            assert_eq!(refusal(open(&elsewhere, &[proto])), 404);
        },
    )
    .await;
}

/// The upgrade counts as the handshake: a silent socket is closed at the handshake timeout,
/// and a new one beyond `max_handshakes` closes the oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_is_held_to_the_handshake_timeout_and_bound() {
    let (b, url) = broker(BrokerConfig {
        handshake_timeout_ms: 300,
        max_handshakes: 2,
        ..BrokerConfig::default()
    })
    .await;
    let a = addr(&url);
    let stats = blocking(move || {
        let silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&a).unwrap()).collect();
        let mut n = 0;
        for mut s in silent {
            s.set_read_timeout(Some(GUARD)).unwrap();
            let mut buf = [0u8; 64];
            // Closed without an answer: end of stream (or a reset).
            n += matches!(s.read(&mut buf), Ok(0) | Err(_)) as usize;
        }
        n
    })
    .await;
    assert_eq!(stats, 3);
    // The broker counts a handshake's end just after closing its socket.
    let mut s = b.stats();
    for _ in 0..200 {
        if s["handshakes_open"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        s = b.stats();
    }
    assert_eq!(s["handshakes_evicted"], 1, "{s:?}");
    assert_eq!(s["handshake_timeouts"], 2, "{s:?}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_over_8_kib_is_refused() {
    against(BrokerConfig::default(), |url| {
        let mut s = TcpStream::connect(addr(&url)).unwrap();
        s.set_read_timeout(Some(GUARD)).unwrap();
        let pad = "a".repeat(9000);
        let req = format!(
            "GET /mitto HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             X-Pad: {pad}\r\n\r\n"
        );
        // The broker may close while this is still being written.
        let _ = s.write_all(req.as_bytes());
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains(" 101 "), "{answer}");
    })
    .await;
}
