//! Connection-level limits: what a peer can make the broker hold before its HELLO is accepted,
//! how long a silent socket lives whatever its transport, what a peer that does not read gets,
//! and the smaller tables and doors (published subjects, monitoring, credential guessing).
//!
//! Options these tests set are given as TOML, as an operator writes them. Memory is read from
//! /proc for the whole process, so the tests that measure it take turns.

use bytes::{Bytes, BytesMut};
use mitto::proto::negotiate::Features;
use mitto::proto::{Decoder, Flags, Frame, FrameType, Hello, Limits, Subject, Version};
use mitto::{Client, ClientOptions, Status, Subscription};
use mitto_broker::{Broker, BrokerConfig};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tests that read the process's memory run one at a time.
static MEASURED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: u64 = 1 << 20;

/// A broker configuration: loopback TCP, no monitoring, then `extra` (TOML).
fn config(extra: &str) -> BrokerConfig {
    let text = format!("listen = [\"tcp://127.0.0.1:0\"]\nmonitor = \"\"\n{extra}");
    BrokerConfig::from_toml(&text).unwrap()
}

async fn start(cfg: BrokerConfig) -> (Broker, String) {
    let b = Broker::start(cfg).await.unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

fn stat(b: &Broker, key: &str) -> u64 {
    b.stats().get(key).copied().unwrap_or(0)
}

/// Waits (at most 10 s) until `ok` holds for the broker's counters.
async fn until(b: &Broker, what: &str, ok: impl Fn(&Broker) -> bool) {
    for _ in 0..1000 {
        if ok(b) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}; counters: {:?}", b.stats());
}

/// This process's resident memory now, and its peak since [`reset_peak`], bytes.
fn memory() -> (u64, u64) {
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
    (field("VmRSS:"), field("VmHWM:"))
}

/// Starts measuring the peak from the current resident memory; returns it.
fn reset_peak() -> u64 {
    // "5" resets the peak resident set size (proc(5), /proc/pid/clear_refs).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    memory().0
}

/// How far the peak rose above `base`.
fn peak_growth(base: u64) -> u64 {
    memory().1.saturating_sub(base)
}

fn offer(auth: &str, features: Features) -> Hello {
    Hello {
        version: Version::CURRENT,
        flags: 0,
        features,
        max_payload: 0,
        max_headers: 0,
        keepalive_ms: 0,
        name: "adversary".into(),
        client_id: String::new(),
        session: String::new(),
        user: String::new(),
        auth: Bytes::copy_from_slice(auth.as_bytes()),
    }
}

/// A peer speaking frames on a plain socket.
struct Raw {
    s: TcpStream,
    dec: Decoder,
    buf: BytesMut,
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        Raw {
            s: TcpStream::connect(url.trim_start_matches("tcp://"))
                .await
                .unwrap(),
            dec: Decoder::default(),
            buf: BytesMut::new(),
        }
    }

    /// Connected and admitted.
    async fn hello(url: &str, auth: &str) -> Raw {
        let mut r = Raw::connect(url).await;
        r.send(&Frame::hello(&offer(auth, Features::supported()), false).unwrap())
            .await;
        let f = r.recv(Duration::from_secs(5)).await.expect("HELLO reply");
        assert_eq!(f.frame_type, FrameType::Hello, "{f:?}");
        r
    }

    async fn send(&mut self, f: &Frame) {
        self.s.write_all(&f.to_bytes().unwrap()).await.unwrap();
    }

    /// The next frame other than PING; `None` at the end of the stream or after `wait` of
    /// silence.
    async fn recv(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            match self.dec.decode(&mut self.buf) {
                Ok(Some(f)) if f.frame_type == FrameType::Ping => continue,
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(e) => panic!("undecodable answer: {e}"),
            }
            match tokio::time::timeout(wait, self.s.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }
}

/// A well-behaved client with a subscription, to show the broker still serves others.
async fn bystander(url: &str, token: Option<&str>) -> (Client, Subscription) {
    let mut o = ClientOptions::new().timeout(Duration::from_secs(5));
    if let Some(t) = token {
        o = o.token(t.to_owned());
    }
    let c = Client::connect(url, o).await.unwrap();
    let sub = c.subscribe("calm.>").await.unwrap();
    (c, sub)
}

/// The bystander still publishes and receives.
async fn unaffected(c: &Client, sub: &mut Subscription) {
    c.publish("calm.check", "ok").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the bystander's message within 5 s")
        .unwrap();
    assert_eq!(m.payload(), "ok");
}

/// The 32-byte header of a client HELLO declaring `len` bytes of body.
fn hello_header(len: u32) -> Bytes {
    let mut b = BytesMut::new();
    Frame::hello(&offer("", Features::supported()), false)
        .unwrap()
        .encode(&mut b)
        .unwrap();
    b.truncate(32);
    b[28..32].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

/// Class 3: memory before authentication. The largest HELLO the frame limits would allow is
/// refused at its header, before any buffer grows for it; HELLOs within the handshake limits
/// that stall cost each a small, fixed part of memory; the broker serves others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_hello_a_peer_gets_a_small_fixed_budget() {
    let _m = MEASURED.lock().await;
    let (b, url) = start(config("token = \"s3cret\"")).await;
    let (c, mut sub) = bystander(&url, Some("s3cret")).await;
    let addr = url.trim_start_matches("tcp://").to_owned();
    let base = reset_peak();
    // 200 sockets each declare a 64 MiB HELLO and send 256 KiB of it.
    const N: usize = 200;
    let head = hello_header(Limits::DEFAULT_MAX_PAYLOAD);
    let body = Bytes::from(vec![0u8; 256 * 1024]);
    let (written_tx, mut written_rx) = tokio::sync::mpsc::channel::<()>(N);
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut peers = tokio::task::JoinSet::new();
    for _ in 0..N {
        let (addr, head, body) = (addr.clone(), head.clone(), body.clone());
        let (written_tx, mut go_rx) = (written_tx.clone(), go_rx.clone());
        peers.spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let _ = s.write_all(&head).await;
            let _ = tokio::time::timeout(Duration::from_secs(3), s.write_all(&body)).await;
            let _ = written_tx.send(()).await;
            // Held open until the memory is read.
            let _ = go_rx.wait_for(|go| *go).await;
            let mut r = Raw {
                s,
                dec: Decoder::default(),
                buf: BytesMut::new(),
            };
            let mut got = Vec::new();
            while let Some(f) = r.recv(Duration::from_secs(5)).await {
                got.push((f.frame_type, f.status));
            }
            got
        });
    }
    for _ in 0..N {
        written_rx.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = peak_growth(base);
    go_tx.send_replace(true);
    // The refusal: ERROR PAYLOAD_TOO_LARGE, then CLOSE, then the end of the stream.
    while let Some(got) = peers.join_next().await {
        assert_eq!(
            got.unwrap(),
            [
                (FrameType::Error, Status::PAYLOAD_TOO_LARGE),
                (FrameType::Close, Status::PAYLOAD_TOO_LARGE)
            ]
        );
    }
    assert!(
        grown < 24 * MIB,
        "200 refused HELLOs grew the process by {} MiB",
        grown / MIB
    );
    assert!(stat(&b, "handshakes_failed") >= N as u64);
    // Within the handshake limits: 4,000-byte HELLOs of which 2,000 bytes came, then nothing.
    let base = reset_peak();
    let mut stalled = Vec::new();
    for _ in 0..N {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(&hello_header(4000)).await.unwrap();
        s.write_all(&[0u8; 2000]).await.unwrap();
        stalled.push(s);
    }
    until(&b, "200 handshakes waiting", |b| {
        stat(b, "handshakes_open") >= N as u64
    })
    .await;
    unaffected(&c, &mut sub).await;
    let grown = peak_growth(base);
    assert!(
        grown < 16 * MIB,
        "200 stalled HELLOs grew the process by {} MiB",
        grown / MIB
    );
    drop(stalled);
    until(&b, "the stalled handshakes gone", |b| {
        stat(b, "handshakes_open") == 0
    })
    .await;
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

/// A self-signed certificate for 127.0.0.1, written to a fresh directory.
fn certificate(tag: &str) -> (std::path::PathBuf, rcgen::CertifiedKey<rcgen::KeyPair>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("mitto-adv-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    (dir, ck)
}

/// Class 4: a silent socket is closed when the handshake time is up, whatever the transport
/// (a TLS handshake that never starts included), and a real client gets in meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_closed_whatever_the_transport() {
    let _m = MEASURED.lock().await;
    let (dir, ck) = certificate("silent");
    // (A tcp:// listener serves TLS too when TLS is configured: the plain one is Unix.)
    let sock = dir.join("broker.sock");
    let cfg = BrokerConfig::from_toml(&format!(
        "listen = [\"tls://127.0.0.1:0\", \"unix://{}\"]\nmonitor = \"\"\n\
         handshake_timeout_ms = 1000\n[tls]\ncert = {:?}\nkey = {:?}\n",
        sock.display(),
        dir.join("cert.pem"),
        dir.join("key.pem")
    ))
    .unwrap();
    let b = Broker::start(cfg).await.unwrap();
    let (tls_url, unix_url) = (b.urls()[0].clone(), b.urls()[1].clone());
    let (c, mut sub) = bystander(&unix_url, None).await;
    let base = reset_peak();
    let tls_addr = tls_url.trim_start_matches("tls://");
    let mut silent_tls = Vec::new();
    for _ in 0..300 {
        silent_tls.push(TcpStream::connect(tls_addr).await.unwrap());
    }
    let mut silent_unix = Vec::new();
    for _ in 0..100 {
        silent_unix.push(tokio::net::UnixStream::connect(&sock).await.unwrap());
    }
    // A real client over TLS gets in and is served while they wait.
    let ca = mitto::TlsClientConfig::with_ca_pem(ck.cert.pem().as_bytes()).unwrap();
    let over_tls = Client::connect(
        &tls_url,
        ClientOptions::new()
            .tls(ca)
            .timeout(Duration::from_secs(5))
            .reconnect(false),
    )
    .await
    .unwrap();
    over_tls.publish("calm.tls", "ok").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload(), "ok");
    // Every silent socket is closed by the broker: the end of the stream, or a reset.
    let mut byte = [0u8; 1];
    for (i, s) in silent_tls.iter_mut().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "TLS socket {i}: {r:?}");
    }
    for (i, s) in silent_unix.iter_mut().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "Unix socket {i}: {r:?}"
        );
    }
    assert!(stat(&b, "handshake_timeouts") >= 400, "{:?}", b.stats());
    assert_eq!(stat(&b, "handshakes_open"), 0);
    let grown = peak_growth(base);
    assert!(grown < 32 * MIB, "grew by {} MiB", grown / MIB);
    unaffected(&c, &mut sub).await;
    over_tls.close().await;
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Class 4: more silent sockets than `max_handshakes` cannot lock clients out: the oldest are
/// closed for the new ones, and the count of those waiting stays at the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_sockets_cannot_lock_clients_out() {
    let (b, url) = start(config("max_handshakes = 50\nhandshake_timeout_ms = 60000")).await;
    let addr = url.trim_start_matches("tcp://");
    let mut silent = Vec::new();
    for _ in 0..150 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    until(&b, "100 evicted", |b| stat(b, "handshakes_evicted") >= 100).await;
    assert!(stat(&b, "handshakes_open") <= 50);
    // The oldest went first.
    let mut byte = [0u8; 1];
    let first = tokio::time::timeout(Duration::from_secs(5), silent[0].read(&mut byte)).await;
    assert!(matches!(first, Ok(Ok(0)) | Ok(Err(_))), "{first:?}");
    // A client connecting now is served.
    let (c, mut sub) = bystander(&url, None).await;
    unaffected(&c, &mut sub).await;
    assert!(stat(&b, "handshakes_open") <= 50);
    drop(silent);
    b.shutdown().await;
}

/// Writes `frame` up to `times` times, each within 10 s; returns the bytes written.
async fn write_until_refused(s: &mut TcpStream, frame: &Bytes, times: usize) -> u64 {
    let mut written = 0;
    for _ in 0..times {
        match tokio::time::timeout(Duration::from_secs(10), s.write_all(frame)).await {
            Ok(Ok(())) => written += frame.len() as u64,
            _ => break,
        }
    }
    written
}

/// Class 5: a peer that sends PINGs (1 MiB payloads) and never reads its PONGs is slowed by
/// its own socket (the broker stops reading it), then closed as a slow consumer, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_pings_and_never_reads_is_slowed_then_closed() {
    let _m = MEASURED.lock().await;
    let (b, url) = start(config("write_deadline_ms = 500")).await;
    let (c, mut sub) = bystander(&url, None).await;
    let base = reset_peak();
    let mut r = Raw::hello(&url, "").await;
    let ping = Frame::ping(1)
        .with_payload(vec![7u8; MIB as usize])
        .to_bytes()
        .unwrap();
    let written = write_until_refused(&mut r.s, &ping, 128).await;
    assert!(
        written < 96 * MIB,
        "the broker took {} MiB of PINGs from a peer that reads nothing",
        written / MIB
    );
    until(&b, "the peer closed as a slow consumer", |b| {
        stat(b, "slow_connections_closed") == 1
    })
    .await;
    let grown = peak_growth(base);
    assert!(grown < 40 * MIB, "grew by {} MiB", grown / MIB);
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

/// Class 5: acknowledged publishes whose ACKs are never read: the same hold, then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_publishes_whose_acks_are_never_read_are_bounded() {
    let _m = MEASURED.lock().await;
    let (b, url) = start(config("write_deadline_ms = 500")).await;
    let (c, mut sub) = bystander(&url, None).await;
    let base = reset_peak();
    let mut r = Raw::hello(&url, "").await;
    let mut batch = BytesMut::new();
    for i in 0..2000u64 {
        Frame::publish(Subject::literal("acks.x").unwrap(), Bytes::new())
            .with_id(i + 1)
            .with_flags(Flags::ACK_REQUIRED)
            .encode(&mut batch)
            .unwrap();
    }
    let batch = batch.freeze();
    // Up to 40 MiB of publishes: as many ACKs.
    let times = (40 * MIB / batch.len() as u64) as usize;
    write_until_refused(&mut r.s, &batch, times).await;
    until(&b, "the peer closed as a slow consumer", |b| {
        stat(b, "slow_connections_closed") == 1
    })
    .await;
    let grown = peak_growth(base);
    assert!(grown < 16 * MIB, "grew by {} MiB", grown / MIB);
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

/// Class 5: a service instance that never reads the calls forwarded to it: calls beyond its
/// budget are refused at once (BACKPRESSURE_REJECTION), the instance is closed as a slow
/// consumer, and the calls it held fail (UNAVAILABLE) instead of waiting for their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_reads_its_calls_is_bounded() {
    let _m = MEASURED.lock().await;
    let (b, url) = start(config(
        "max_payload = 1048576\nmax_pending_bytes = 4194304\nwrite_deadline_ms = 1500",
    ))
    .await;
    let (c, mut sub) = bystander(&url, None).await;
    let base = reset_peak();
    let mut inst = Raw::hello(&url, "").await;
    let reg = Frame::register(1, Subject::new("svc.slow").unwrap(), &Default::default())
        .unwrap()
        .with_id(1)
        .with_flags(Flags::ACK_REQUIRED);
    inst.send(&reg).await;
    let ack = inst.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!((ack.frame_type, ack.id), (FrameType::Ack, 1));
    // 200 calls of 256 KiB: 50 MiB for an instance that reads nothing.
    let mut caller = Raw::hello(&url, "").await;
    let payload = Bytes::from(vec![3u8; 256 * 1024]);
    for id in 1..=200u64 {
        let f = Frame::request(id, Subject::literal("svc.slow").unwrap(), payload.clone());
        caller.send(&f).await;
    }
    let mut answers = std::collections::BTreeMap::<Status, u32>::new();
    for _ in 0..200 {
        let f = caller
            .recv(Duration::from_secs(15))
            .await
            .expect("every call answered");
        assert_eq!(f.frame_type, FrameType::Response, "{f:?}");
        *answers.entry(f.status).or_default() += 1;
    }
    let refused = answers
        .get(&Status::BACKPRESSURE_REJECTION)
        .copied()
        .unwrap_or(0);
    let lost = answers.get(&Status::UNAVAILABLE).copied().unwrap_or(0);
    assert!(refused >= 100, "{answers:?}");
    assert_eq!(refused + lost, 200, "{answers:?}");
    assert_eq!(stat(&b, "slow_connections_closed"), 1);
    let grown = peak_growth(base);
    assert!(grown < 24 * MIB, "grew by {} MiB", grown / MIB);
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

/// Class 5: a caller that sends requests and never reads the answers: the answers other
/// connections send it fill its budget (`max_pending_bytes`), and the next one closes it as a
/// slow consumer at once (here long before its write deadline); the responder is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_never_reads_its_answers_is_closed_when_they_overflow() {
    let _m = MEASURED.lock().await;
    let (b, url) = start(config(
        "max_payload = 1048576\nmax_pending_bytes = 4194304\nwrite_deadline_ms = 60000",
    ))
    .await;
    let (c, mut sub) = bystander(&url, None).await;
    let mut calls = c.subscribe("svc.big").await.unwrap();
    let responder = c.clone();
    // One answer, shared: the memory read is the broker's, not this responder's.
    let answer = Bytes::from(vec![9u8; 256 * 1024]);
    tokio::spawn(async move {
        while let Some(m) = calls.next().await {
            if responder.respond(&m, answer.clone()).await.is_err() {
                break;
            }
        }
    });
    let base = reset_peak();
    let mut caller = Raw::hello(&url, "").await;
    let mut run = BytesMut::new();
    for id in 1..=200u64 {
        Frame::request(id, Subject::literal("svc.big").unwrap(), Bytes::new())
            .encode(&mut run)
            .unwrap();
    }
    caller.s.write_all(&run).await.unwrap();
    until(&b, "the caller closed as a slow consumer", |b| {
        stat(b, "slow_connections_closed") == 1
    })
    .await;
    let grown = peak_growth(base);
    assert!(grown < 24 * MIB, "grew by {} MiB", grown / MIB);
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

/// An HTTP GET on the monitoring endpoint: the status code and the body.
async fn get(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

/// Class 9: a flood of distinct subjects keeps the table of published subjects within its
/// bounds, and subscribing still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_subjects_keeps_the_subject_table_bounded() {
    let _m = MEASURED.lock().await;
    let mut cfg = config("max_tracked_subjects = 1000\nmax_tracked_subject_bytes = 1048576");
    cfg.monitor = "127.0.0.1:0".into();
    let (b, url) = start(cfg).await;
    let mon = b.monitor_addr().unwrap();
    let (c, mut sub) = bystander(&url, None).await;
    let base = reset_peak();
    let mut r = Raw::hello(&url, "").await;
    let pad = "p".repeat(1000);
    let mut batch = BytesMut::new();
    for i in 0..20_000 {
        let subject = Subject::literal(&format!("flood.{i}.{pad}")).unwrap();
        Frame::publish(subject, "x").encode(&mut batch).unwrap();
        if batch.len() > 64 * 1024 {
            r.s.write_all(&batch.split()).await.unwrap();
        }
    }
    r.s.write_all(&batch).await.unwrap();
    // A round trip: everything before it was handled.
    r.send(&Frame::ping(42)).await;
    loop {
        let f = r.dec.decode(&mut r.buf).unwrap();
        if f.as_ref().is_some_and(|f| f.frame_type == FrameType::Pong) {
            break;
        }
        if f.is_none() {
            let n = tokio::time::timeout(Duration::from_secs(30), r.s.read_buf(&mut r.buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0);
        }
    }
    let (code, body) = get(mon, "/subjectz", &[("Host", "127.0.0.1")]).await;
    assert_eq!(code, 200, "{body}");
    let listed = body.matches("\"subject\"").count();
    assert!(listed <= 1000, "{listed} subjects kept");
    assert!(stat(&b, "subjects_tracked") <= 1000);
    assert!(stat(&b, "subjects_evicted") >= 19_000, "{:?}", b.stats());
    let grown = peak_growth(base);
    assert!(grown < 12 * MIB, "grew by {} MiB", grown / MIB);
    // Subscribing after the flood works.
    let mut after = c.subscribe("after.flood").await.unwrap();
    c.publish("after.flood", "still here").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), after.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload(), "still here");
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

/// Class 9: the monitoring endpoint asks for its token, answers only its own host names (a web
/// page cannot reach it by DNS rebinding), and is served beyond loopback only with a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_wants_its_token_and_its_own_host_name() {
    let mut open = config("");
    open.monitor = "0.0.0.0:0".into();
    let e = Broker::start(open).await.unwrap_err();
    assert!(e.message().contains("monitor_token"), "{e}");
    let mut cfg = config("monitor_token = \"m0n\"");
    cfg.monitor = "127.0.0.1:0".into();
    let (b, url) = start(cfg).await;
    let (c, mut sub) = bystander(&url, None).await;
    let mon = b.monitor_addr().unwrap();
    let host = ("Host", "127.0.0.1");
    let token = ("Authorization", "Bearer m0n");
    assert_eq!(get(mon, "/varz", &[host]).await.0, 401, "no token");
    let wrong = ("Authorization", "Bearer m0m");
    assert_eq!(
        get(mon, "/connz", &[host, wrong]).await.0,
        401,
        "wrong token"
    );
    let (code, body) = get(mon, "/varz", &[host, token]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("memory_bounds"), "{body}");
    let evil = ("Host", "evil.example");
    assert_eq!(
        get(mon, "/varz", &[evil, token]).await.0,
        403,
        "foreign Host"
    );
    let origin = ("Origin", "http://evil.example");
    assert_eq!(get(mon, "/connz", &[host, token, origin]).await.0, 403);
    let local = ("Origin", "http://localhost:3000");
    assert_eq!(get(mon, "/connz", &[host, token, local]).await.0, 200);
    assert_eq!(get(mon, "/healthz", &[evil]).await.0, 200, "health is open");
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
    // Beyond loopback with a token: served, to loopback names too.
    let mut wide = config("monitor_token = \"m0n\"");
    wide.monitor = "0.0.0.0:0".into();
    let (w, _) = start(wide).await;
    let port = w.monitor_addr().unwrap().port();
    let at = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(at, "/varz", &[host]).await.0, 401);
    assert_eq!(get(at, "/varz", &[host, token]).await.0, 200);
    w.shutdown().await;
}

/// Class 9: each wrong password from one address is answered later than the last (growing,
/// capped); the right one is not delayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_a_password_waits_longer_each_time() {
    let (b, url) = start(config(
        "auth_failure_delay_ms = 20\nauth_failure_delay_max_ms = 80\n\
         [[users]]\nname = \"alice\"\npassword = \"right\"\n",
    ))
    .await;
    let try_as = |password: &'static str| {
        let url = url.clone();
        async move {
            let o = ClientOptions::new()
                .user_password("alice", password)
                .reconnect(false)
                .connect_timeout(Duration::from_secs(5));
            Client::connect(&url, o).await
        }
    };
    for _ in 0..6 {
        let e = try_as("guess").await.unwrap_err();
        assert_eq!(e.status(), Status::UNAUTHORIZED, "{e}");
    }
    assert_eq!(stat(&b, "auth_failures"), 6);
    // One at a time: 20, 40, then 80 ms each.
    assert_eq!(
        stat(&b, "auth_failure_delay_ms"),
        20 + 40 + 80 + 80 + 80 + 80
    );
    let c = try_as("right").await.unwrap();
    let mut sub = c.subscribe("calm.>").await.unwrap();
    assert_eq!(
        stat(&b, "auth_failure_delay_ms"),
        380,
        "success is not delayed"
    );
    // Guesses in parallel are answered one after the other.
    let tries: Vec<_> = (0..4).map(|_| tokio::spawn(try_as("guess"))).collect();
    for t in tries {
        assert_eq!(t.await.unwrap().unwrap_err().status(), Status::UNAUTHORIZED);
    }
    assert!(stat(&b, "auth_failure_delay_ms") >= 380 + 80 + 160 + 240 + 320 - 40);
    unaffected(&c, &mut sub).await;
    b.shutdown().await;
}

/// Class 9: the token can live in a file (off the command line and out of the configuration).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_can_come_from_a_file() {
    let dir = std::env::temp_dir().join(format!("mitto-adv-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "t0ken-from-file\n").unwrap();
    let (b, url) = start(config(&format!("token_file = {file:?}"))).await;
    let e = Client::connect(
        &url,
        ClientOptions::new()
            .token("nope")
            .reconnect(false)
            .connect_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap_err();
    assert_eq!(e.status(), Status::UNAUTHORIZED);
    let (c, mut sub) = bystander(&url, Some("t0ken-from-file")).await;
    unaffected(&c, &mut sub).await;
    let both = config(&format!("token = \"x\"\ntoken_file = {file:?}"));
    assert!(Broker::start(both).await.is_err(), "token and token_file");
    b.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
