//! The broker against every vector of `spec/vectors/`, over a socket (spec section 17).
//!
//! Each valid frame gets the answer the spec prescribes for it at a broker: an ACK, a PONG, a
//! RESPONSE, a report, an EVENT at a subscriber, a call at a service, or nothing where the spec
//! says to ignore it. Each invalid input gets the ERROR of the spec's error table (section
//! 14.3), and after a fatal one a CLOSE with the same status and the end of the connection.
//! Every vector is sent after the handshake and as the first frame of a connection, where every
//! refusal is ERROR, CLOSE, close (section 8.1). What the broker sends is decoded with the limits
//! it agreed to, so an answer over them fails the test as well (section 14.5).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use mitto::proto::body::decode_opt_u32;
use mitto::proto::negotiate::Features;
use mitto::proto::{
    Decoder, Delivery, Flags, Frame, FrameType, HeaderKey, HealthReport, HealthState, Hello,
    Limits, StatsReport, Status, Subject, SubscribeOptions, Version, WellKnown,
};
use mitto_broker::{Broker, BrokerConfig};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

/// How long one answer may take before the check reports a hang (not a timing assertion).
const PATIENCE: Duration = Duration::from_secs(5);
/// The PING whose PONG marks the end of the answers to what was sent before it.
const BARRIER: u64 = 0xC0FF_EE00_0000_0001;

struct Vector {
    name: String,
    bytes: Vec<u8>,
    limits: Limits,
    json: Value,
}

impl Vector {
    /// The frame of a valid vector.
    fn frame(&self) -> Frame {
        let mut b = BytesMut::from(&self.bytes[..]);
        Decoder::new(self.limits).decode(&mut b).unwrap().unwrap()
    }

    /// The status, ERROR id and fatality of an invalid vector.
    fn error(&self) -> (Status, u64, bool) {
        let e = &self.json["error"];
        let status = Status(e["status"].as_u64().unwrap() as u16);
        let id = e["id"].as_str().unwrap().parse().unwrap();
        (status, id, e["fatal"].as_bool().unwrap())
    }

    fn eof(&self) -> bool {
        self.json["eof"].as_bool() == Some(true)
    }

    fn has_limits(&self) -> bool {
        self.json.get("limits").is_some()
    }

    /// Whether the vector's frame is over the handshake limits (section 8.1): as a
    /// connection's first frame it is refused from its header with PAYLOAD_TOO_LARGE.
    fn over_handshake_limits(&self) -> bool {
        let mut b = BytesMut::from(&self.bytes[..]);
        let first = Decoder::new(Limits::HANDSHAKE).decode(&mut b);
        matches!(first, Err(e) if e.status() == Status::PAYLOAD_TOO_LARGE)
    }

    /// The length of the frame its header declares (what it holds, if not even a header).
    fn declared_len(&self) -> u64 {
        let b = &self.bytes;
        if b.len() < 32 {
            return b.len() as u64;
        }
        let n = |r: std::ops::Range<usize>| b[r].iter().fold(0u64, |a, x| a << 8 | u64::from(*x));
        32 + n(22..24) + n(24..28) + n(28..32)
    }
}

fn load(file: &str) -> Vec<Vector> {
    let path = format!("{}/../../spec/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let vectors: Vec<Vector> = doc["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let mut limits = Limits::default();
            let l = &v["limits"];
            if let Some(n) = l["max_payload"].as_u64() {
                limits.max_payload = n as u32;
            }
            if let Some(n) = l["max_headers"].as_u64() {
                limits.max_headers = n as u32;
            }
            if let Some(n) = l["max_subject"].as_u64() {
                limits.max_subject = n as u16;
            }
            Vector {
                name: v["name"].as_str().unwrap().to_owned(),
                bytes: hex::decode(v["hex"].as_str().unwrap()).unwrap(),
                limits,
                json: v.clone(),
            }
        })
        .collect();
    assert!(vectors.len() >= 40, "{file}: {} vectors", vectors.len());
    vectors
}

/// A client written from the spec: raw frames on a socket.
struct Peer {
    s: TcpStream,
    dec: Decoder,
    buf: BytesMut,
}

impl Peer {
    async fn connect(url: &str) -> Peer {
        let s = TcpStream::connect(url.trim_start_matches("tcp://"))
            .await
            .unwrap();
        Peer {
            s,
            dec: Decoder::default(),
            buf: BytesMut::new(),
        }
    }

    /// A peer past the handshake that offered every feature and `limits`.
    async fn hello(url: &str, limits: Limits) -> Result<Peer, String> {
        let mut p = Peer::connect(url).await;
        let offer = Hello {
            version: Version::CURRENT,
            flags: 0,
            features: Features::supported(),
            max_payload: limits.max_payload,
            max_headers: limits.max_headers,
            keepalive_ms: 0,
            name: "conformance".into(),
            client_id: String::new(),
            session: String::new(),
            user: String::new(),
            auth: Bytes::new(),
        };
        p.send_frame(&Frame::hello(&offer, false).unwrap()).await;
        let f = p.next().await?;
        ensure!(
            f.frame_type == FrameType::Hello && f.flags.contains(Flags::REPLY),
            "expected the HELLO reply, got {}",
            brief(&f)
        );
        let agreed = Hello::decode(&f.payload).map_err(|e| e.to_string())?;
        ensure!(
            (agreed.max_payload, agreed.max_headers) == (limits.max_payload, limits.max_headers),
            "agreed limits {} / {}",
            agreed.max_payload,
            agreed.max_headers
        );
        p.dec.set_limits(limits);
        Ok(p)
    }

    async fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }

    async fn send_frame(&mut self, f: &Frame) {
        self.send(&f.to_bytes().unwrap()).await;
    }

    /// Ends this side's sending direction (the peer reads end of stream; this side still reads).
    async fn half_close(&mut self) {
        self.s.shutdown().await.unwrap();
    }

    /// The next frame other than the broker's keepalive PINGs; `None` at the end of the stream.
    async fn recv(&mut self) -> Result<Option<Frame>, String> {
        loop {
            match self.dec.decode(&mut self.buf) {
                Ok(Some(f)) if f.frame_type == FrameType::Ping => continue,
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => {
                    return Err(format!(
                        "the broker sent what the agreed limits refuse: {e}"
                    ))
                }
            }
            let read = tokio::time::timeout(PATIENCE, self.s.read_buf(&mut self.buf))
                .await
                .map_err(|_| format!("no answer within {PATIENCE:?}"))?;
            if read.unwrap_or(0) == 0 {
                ensure!(
                    self.buf.is_empty(),
                    "the stream ended inside a frame ({} bytes)",
                    self.buf.len()
                );
                return Ok(None);
            }
        }
    }

    /// The next frame, which must come.
    async fn next(&mut self) -> Result<Frame, String> {
        self.recv()
            .await?
            .ok_or_else(|| "the connection ended".to_owned())
    }

    /// The broker's answers to what was sent so far: the frames before the PONG to a PING sent
    /// now (a broker answers a connection's frames in order).
    async fn answers(&mut self) -> Result<Vec<Frame>, String> {
        self.send_frame(&Frame::ping(BARRIER)).await;
        let mut got = Vec::new();
        loop {
            match self.recv().await? {
                Some(f) if f.frame_type == FrameType::Pong && f.id == BARRIER => return Ok(got),
                Some(f) => got.push(f),
                None => return Err(format!("the connection ended after {}", briefs(&got))),
            }
        }
    }

    /// Everything until the broker ends the connection.
    async fn until_closed(&mut self) -> Result<Vec<Frame>, String> {
        let mut got = Vec::new();
        while let Some(f) = self.recv().await? {
            got.push(f);
        }
        Ok(got)
    }
}

fn brief(f: &Frame) -> String {
    format!(
        "{} id={} aux={} status={}",
        f.frame_type.name(),
        f.id,
        f.aux,
        f.status.0
    )
}

fn briefs(fs: &[Frame]) -> String {
    let all: Vec<String> = fs.iter().map(brief).collect();
    format!("[{}]", all.join(", "))
}

/// `got` is exactly these frames, by type, id and status.
fn exactly(got: &[Frame], want: &[(FrameType, u64, Status)]) -> Check {
    let seen: Vec<(FrameType, u64, Status)> =
        got.iter().map(|f| (f.frame_type, f.id, f.status)).collect();
    ensure!(seen == want, "expected {want:?}, got {}", briefs(got));
    Ok(())
}

/// The ACK an ACK_REQUIRED frame gets; nothing otherwise.
fn acks(f: &Frame) -> Vec<(FrameType, u64, Status)> {
    if f.flags.contains(Flags::ACK_REQUIRED) {
        vec![(FrameType::Ack, f.id, Status::OK)]
    } else {
        Vec::new()
    }
}

/// ERROR with `status` and `id`, then CLOSE with the same status, then the end of the stream.
async fn refused(p: &mut Peer, id: u64, status: Status) -> Check {
    exactly(
        &p.until_closed().await?,
        &[
            (FrameType::Error, id, status),
            (FrameType::Close, 0, status),
        ],
    )
}

/// A literal subject that `filter` matches.
fn literal_in(filter: &str) -> Subject {
    let tokens: Vec<&str> = filter
        .split('.')
        .map(|t| if t == "*" || t == ">" { "x" } else { t })
        .collect();
    Subject::literal(&tokens.join(".")).unwrap()
}

/// `got` carries `sent`'s headers in order; a deadline or ttl only less the time in the broker.
fn same_headers(got: &Frame, sent: &Frame) -> Check {
    let g: Vec<(HeaderKey<'_>, &[u8])> = got.headers.iter().collect();
    let s: Vec<(HeaderKey<'_>, &[u8])> = sent.headers.iter().collect();
    ensure!(g.len() == s.len(), "headers {g:?}, sent {s:?}");
    for ((gk, gv), (sk, sv)) in g.iter().zip(&s) {
        ensure!(gk == sk, "header {gk:?} where {sk:?} was sent");
        let timed = matches!(
            sk,
            HeaderKey::Known(WellKnown::Deadline) | HeaderKey::Known(WellKnown::Ttl)
        );
        let num = |v: &[u8]| v.iter().fold(0u64, |a, x| a << 8 | u64::from(*x));
        if timed {
            ensure!(num(gv) <= num(sv), "{sk:?} grew: {} > {}", num(gv), num(sv));
        } else {
            ensure!(gv == sv, "{sk:?} changed: {gv:?} != {sv:?}");
        }
    }
    Ok(())
}

/// A broker with a data directory of its own (for the streams' vectors).
async fn broker() -> (Broker, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: String::new(),
        data_dir: Some(dir.path().to_owned()),
        ..BrokerConfig::default()
    })
    .await
    .unwrap();
    let url = b.urls()[0].clone();
    (b, url, dir)
}

/// Runs `check` on every vector, each against a broker of its own (so that nothing one vector
/// leaves behind, a subscription or a service, changes another's answer); fails with every
/// vector that did not get its answer.
async fn every<'v, F, Fut>(vectors: &'v [Vector], check: F)
where
    F: Fn(String, &'v Vector) -> Fut,
    Fut: std::future::Future<Output = Check>,
{
    let mut failed = Vec::new();
    for v in vectors {
        let (b, url, _dir) = broker().await;
        match tokio::time::timeout(PATIENCE * 4, check(url, v)).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failed.push(format!("{}: {why}", v.name)),
            Err(_) => failed.push(format!("{}: no verdict within {:?}", v.name, PATIENCE * 4)),
        }
        b.shutdown().await;
    }
    assert!(
        failed.is_empty(),
        "{} of {} vectors:\n{}",
        failed.len(),
        vectors.len(),
        failed.join("\n")
    );
}

/// What a broker answers each valid frame with, from a client past the handshake.
async fn valid_after_handshake(url: &str, v: &Vector) -> Check {
    let f = v.frame();
    if f.subject.as_str().starts_with("$MITTO.") {
        return streams_vector(url, v, &f).await;
    }
    let mut p = Peer::hello(url, v.limits).await?;
    match f.frame_type {
        FrameType::Publish => return published(url, v, &f).await,
        FrameType::Request => return requested(url, v, &f).await,
        FrameType::Unsubscribe => return unsubscribed(p, v, &f).await,
        FrameType::Unregister => return unregistered(url, p, v, &f).await,
        _ => {}
    }
    p.send(&v.bytes).await;
    let got = p.answers().await?;
    match f.frame_type {
        FrameType::Subscribe => {
            exactly(&got, &acks(&f))?;
            subscribed(&mut p, &f).await
        }
        FrameType::Register => {
            exactly(&got, &acks(&f))?;
            registered(url, p, v, &f).await
        }
        FrameType::Ping => {
            exactly(&got, &[(FrameType::Pong, f.id, Status::OK)])?;
            ensure!(got[0].payload == f.payload, "PONG payload differs");
            Ok(())
        }
        FrameType::Health | FrameType::Stats if !f.flags.contains(Flags::REPLY) => {
            exactly(&got, &[(f.frame_type, f.id, Status::OK)])?;
            report(&got[0])
        }
        // Not accepted from a client (sections 3.1, 3.2, 3.17): HELLO after the handshake, an
        // EVENT, a reply to a query the broker never sent.
        FrameType::Hello | FrameType::Event | FrameType::Health | FrameType::Stats => {
            exactly(&got, &[(FrameType::Error, f.id, Status::UNEXPECTED_FRAME)])
        }
        // A RESPONSE to a call the broker did not forward to this client: ignored (section
        // 3.12) or refused as unexpected (section 3.1); which one is still to be settled, and
        // until then either passes.
        FrameType::Response => exactly(&got, &[])
            .or_else(|_| exactly(&got, &[(FrameType::Error, f.id, Status::UNEXPECTED_FRAME)])),
        // Ignored (sections 3.7 to 3.9, 3.13 to 3.16): an ERROR, a PONG, and an ACK, NACK,
        // STREAM, CANCEL or CREDIT that matches nothing pending.
        FrameType::Ack
        | FrameType::Nack
        | FrameType::Error
        | FrameType::Pong
        | FrameType::Stream
        | FrameType::Cancel
        | FrameType::Credit => exactly(&got, &[]),
        other => Err(format!("no expectation for {}", other.name())),
    }
}

/// The durable streams' requests and binding (PROTOCOL.md 19): answered OK once what they
/// need exists (the stream `orders`, its consumer `billing`). Admin answers come when the
/// operation is done, possibly after answers to later frames: waited for by id.
async fn streams_vector(url: &str, v: &Vector, f: &Frame) -> Check {
    let mut p = Peer::hello(url, v.limits).await?;
    let admin = |id: u64, subject: &str, body: &'static str| {
        Frame::request(id, Subject::new(subject).unwrap(), body)
    };
    if v.name != "stream_create_request" {
        let create = r#"{"subjects":["orders.>"]}"#;
        p.send_frame(&admin(1, "$MITTO.STREAM.CREATE.orders", create))
            .await;
        answer_to(&mut p, FrameType::Response, 1).await?;
    }
    if f.frame_type == FrameType::Subscribe {
        p.send_frame(&admin(2, "$MITTO.CONSUMER.CREATE.orders.billing", "{}"))
            .await;
        answer_to(&mut p, FrameType::Response, 2).await?;
    }
    p.send(&v.bytes).await;
    let want = match f.frame_type {
        FrameType::Subscribe => FrameType::Ack,
        _ => FrameType::Response,
    };
    answer_to(&mut p, want, f.id).await
}

/// Waits for the frame of type `t` answering `id`, which must say OK.
async fn answer_to(p: &mut Peer, t: FrameType, id: u64) -> Check {
    loop {
        let g = p.next().await?;
        if g.frame_type == t && g.id == id {
            let why = String::from_utf8_lossy(&g.payload).into_owned();
            ensure!(g.status == Status::OK, "{} to {id}: {why}", g.status);
            return Ok(());
        }
        ensure!(
            g.frame_type != FrameType::Error,
            "ERROR {}: {}",
            g.status,
            String::from_utf8_lossy(&g.payload)
        );
    }
}

/// CLOSE from the client: the broker answers CLOSE OK and ends the connection (section 9.3).
async fn closed(url: &str, v: &Vector) -> Check {
    let mut p = Peer::hello(url, v.limits).await?;
    p.send(&v.bytes).await;
    exactly(
        &p.until_closed().await?,
        &[(FrameType::Close, 0, Status::OK)],
    )
}

/// A HEALTH or STATS report that parses, from this broker.
fn report(r: &Frame) -> Check {
    ensure!(
        r.flags.contains(Flags::REPLY),
        "no REPLY flag on {}",
        brief(r)
    );
    if r.frame_type == FrameType::Health {
        let h = HealthReport::decode(&r.payload).map_err(|e| e.to_string())?;
        ensure!(h.state == HealthState::Serving, "state {:?}", h.state);
        ensure!(
            h.server == BrokerConfig::default().name,
            "server {}",
            h.server
        );
    } else {
        let s = StatsReport::decode(&r.payload).map_err(|e| e.to_string())?;
        ensure!(s.values.contains_key("msgs_in"), "counters {:?}", s.values);
    }
    Ok(())
}

/// The subscription is in place: a message published to a subject it matches comes back as
/// its EVENT (with ACK_REQUIRED when it is at-least-once).
async fn subscribed(p: &mut Peer, f: &Frame) -> Check {
    let subject = literal_in(f.subject.as_str());
    p.send_frame(&Frame::publish(subject.clone(), "probe"))
        .await;
    let e = p.next().await?;
    ensure!(
        (e.frame_type, e.aux, e.subject.as_str(), &e.payload[..])
            == (FrameType::Event, f.aux, subject.as_str(), &b"probe"[..]),
        "expected the EVENT for sid {}, got {}",
        f.aux,
        brief(&e)
    );
    let opts = SubscribeOptions::decode(&f.payload, "SUBSCRIBE").map_err(|e| e.to_string())?;
    let acked = opts.delivery == Delivery::AtLeastOnce;
    ensure!(
        e.flags.contains(Flags::ACK_REQUIRED) == acked,
        "ACK_REQUIRED {} on an EVENT of a {:?} subscription",
        !acked,
        opts.delivery
    );
    Ok(())
}

/// UNSUBSCRIBE of a subscription this client has: answered (ACK if asked), and the subscription
/// ends at once or after `after` more messages.
async fn unsubscribed(mut p: Peer, v: &Vector, f: &Frame) -> Check {
    let subject = Subject::literal("conf.unsub").unwrap();
    let sub = Frame::subscribe(f.aux, subject.clone(), &SubscribeOptions::default())
        .unwrap()
        .with_id(70)
        .with_flags(Flags::ACK_REQUIRED);
    p.send_frame(&sub).await;
    exactly(&p.answers().await?, &[(FrameType::Ack, 70, Status::OK)])?;
    p.send(&v.bytes).await;
    exactly(&p.answers().await?, &acks(f))?;
    let after = decode_opt_u32(&f.payload, "UNSUBSCRIBE")
        .map_err(|e| e.to_string())?
        .unwrap_or(0);
    for i in 0..=after {
        p.send_frame(&Frame::publish(subject.clone(), i.to_string()))
            .await;
    }
    for i in 0..after {
        let e = p.next().await?;
        ensure!(
            (e.frame_type, e.aux, &e.payload[..])
                == (FrameType::Event, f.aux, i.to_string().as_bytes()),
            "expected EVENT {i} of {after}, got {}",
            brief(&e)
        );
    }
    // Gone: unsubscribing again finds nothing.
    p.send_frame(&Frame::unsubscribe(f.aux, None).with_id(71))
        .await;
    exactly(
        &p.answers().await?,
        &[(FrameType::Error, 71, Status::NOT_FOUND)],
    )
}

/// PUBLISH: answered (ACK if asked), and delivered to a subscriber of `>` as an EVENT with the
/// same subject, kind, URGENT flag, headers and payload.
async fn published(url: &str, v: &Vector, f: &Frame) -> Check {
    let mut sub = Peer::hello(url, v.limits).await?;
    let all = Frame::subscribe(1, Subject::new(">").unwrap(), &SubscribeOptions::default())
        .unwrap()
        .with_id(50)
        .with_flags(Flags::ACK_REQUIRED);
    sub.send_frame(&all).await;
    exactly(&sub.answers().await?, &[(FrameType::Ack, 50, Status::OK)])?;
    let mut p = Peer::hello(url, v.limits).await?;
    p.send(&v.bytes).await;
    exactly(&p.answers().await?, &acks(f))?;
    let e = sub.next().await?;
    ensure!(
        (e.frame_type, e.aux, &e.subject, e.kind) == (FrameType::Event, 1, &f.subject, f.kind),
        "expected the EVENT of {}, got {}",
        f.subject.as_str(),
        brief(&e)
    );
    ensure!(
        e.flags.contains(Flags::URGENT) == f.flags.contains(Flags::URGENT)
            && !e.flags.contains(Flags::ACK_REQUIRED),
        "EVENT flags {:?} for PUBLISH flags {:?}",
        e.flags.names(),
        f.flags.names()
    );
    let payload = |x: &Frame| {
        if x.flags.contains(Flags::COMPRESSED) {
            x.decompressed_payload(v.limits.max_payload).unwrap()
        } else {
            x.payload.clone()
        }
    };
    ensure!(payload(&e) == payload(f), "the payload changed on the way");
    same_headers(&e, f)
}

/// REQUEST: NO_RESPONDERS while nobody serves its subject; once a service is registered, the
/// call reaches it under an id of the broker's (bit 63 set) and its RESPONSE comes back under
/// the caller's id. A call id with bit 63 set is in the broker's half of the ids (PROTOCOL.md
/// 10.1): refused with PROTOCOL_ERROR, never routed.
async fn requested(url: &str, v: &Vector, f: &Frame) -> Check {
    let mut caller = Peer::hello(url, v.limits).await?;
    if f.id >> 63 == 1 {
        caller.send(&v.bytes).await;
        let refused = [(FrameType::Error, f.id, Status::PROTOCOL_ERROR)];
        return exactly(&caller.answers().await?, &refused);
    }
    caller.send(&v.bytes).await;
    exactly(
        &caller.answers().await?,
        &[(FrameType::Response, f.id, Status::NO_RESPONDERS)],
    )?;
    let mut svc = Peer::hello(url, v.limits).await?;
    let reg = Frame::register(40, f.subject.clone(), &SubscribeOptions::default())
        .unwrap()
        .with_id(41)
        .with_flags(Flags::ACK_REQUIRED);
    svc.send_frame(&reg).await;
    exactly(&svc.answers().await?, &[(FrameType::Ack, 41, Status::OK)])?;
    caller.send(&v.bytes).await;
    let call = svc.next().await?;
    ensure!(
        (call.frame_type, &call.subject, &call.payload)
            == (FrameType::Request, &f.subject, &f.payload)
            && call.flags.contains(Flags::START) == f.flags.contains(Flags::START)
            && call.id >> 63 == 1,
        "expected the forwarded call, got {}",
        brief(&call)
    );
    same_headers(&call, f)?;
    svc.send_frame(&Frame::response(call.id, Status::OK, "done"))
        .await;
    let r = caller.next().await?;
    ensure!(
        (r.frame_type, r.id, r.status, &r.payload[..])
            == (FrameType::Response, f.id, Status::OK, &b"done"[..]),
        "expected the service's RESPONSE, got {}",
        brief(&r)
    );
    Ok(())
}

/// REGISTER (answered before this is called): requests to a matching subject reach it.
async fn registered(url: &str, mut p: Peer, v: &Vector, f: &Frame) -> Check {
    let subject = literal_in(f.subject.as_str());
    let mut caller = Peer::hello(url, v.limits).await?;
    caller
        .send_frame(&Frame::request(9, subject.clone(), "ping"))
        .await;
    let call = p.next().await?;
    ensure!(
        (call.frame_type, &call.subject) == (FrameType::Request, &subject),
        "expected the call, got {}",
        brief(&call)
    );
    p.send_frame(&Frame::response(call.id, Status::OK, "pong"))
        .await;
    let r = caller.next().await?;
    ensure!(
        (r.frame_type, r.id, &r.payload[..]) == (FrameType::Response, 9, &b"pong"[..]),
        "expected the RESPONSE, got {}",
        brief(&r)
    );
    Ok(())
}

/// UNREGISTER of a registered instance: answered (ACK if asked), and no request reaches it.
async fn unregistered(url: &str, mut p: Peer, v: &Vector, f: &Frame) -> Check {
    let subject = Subject::literal("conf.unreg").unwrap();
    let reg = Frame::register(f.aux, subject.clone(), &SubscribeOptions::default())
        .unwrap()
        .with_id(42)
        .with_flags(Flags::ACK_REQUIRED);
    p.send_frame(&reg).await;
    exactly(&p.answers().await?, &[(FrameType::Ack, 42, Status::OK)])?;
    p.send(&v.bytes).await;
    exactly(&p.answers().await?, &acks(f))?;
    let mut caller = Peer::hello(url, v.limits).await?;
    caller.send_frame(&Frame::request(9, subject, "x")).await;
    exactly(
        &caller.answers().await?,
        &[(FrameType::Response, 9, Status::NO_RESPONDERS)],
    )
}

/// Each valid frame as a connection's first: a client HELLO opens the connection (or is refused
/// with UNSUPPORTED_VERSION for another major); anything else is refused with
/// UNEXPECTED_FRAME. A refusal is ERROR, CLOSE, close (section 8.1).
async fn valid_first(url: &str, v: &Vector) -> Check {
    let f = v.frame();
    let mut p = Peer::connect(url).await;
    p.send(&v.bytes).await;
    if v.over_handshake_limits() {
        return refused(&mut p, f.id, Status::PAYLOAD_TOO_LARGE).await;
    }
    if f.frame_type != FrameType::Hello || f.flags.contains(Flags::REPLY) {
        return refused(&mut p, f.id, Status::UNEXPECTED_FRAME).await;
    }
    let offer = Hello::decode(&f.payload).map_err(|e| e.to_string())?;
    if offer.version.major != Version::CURRENT.major {
        return refused(&mut p, f.id, Status::UNSUPPORTED_VERSION).await;
    }
    let r = p.next().await?;
    ensure!(
        r.frame_type == FrameType::Hello && r.flags.contains(Flags::REPLY) && r.id == f.id,
        "expected the HELLO reply to id {}, got {}",
        f.id,
        brief(&r)
    );
    let agreed = Hello::decode(&r.payload).map_err(|e| e.to_string())?;
    let minor = offer.version.minor.min(Version::CURRENT.minor);
    ensure!(
        agreed.version == Version { major: 1, minor },
        "agreed version {}",
        agreed.version
    );
    ensure!(
        agreed.features == offer.features.intersection(Features::supported()),
        "agreed features {:?}",
        agreed.features.names()
    );
    ensure!(
        agreed.user.is_empty() && agreed.auth.is_empty(),
        "credentials echoed"
    );
    exactly(&p.answers().await?, &[])
}

/// Each invalid input after the handshake: ERROR with the listed status and id; after a fatal
/// error CLOSE and the end of the connection, after any other the connection goes on (the bad
/// frame consumed exactly, or an oversize one skipped as its bytes arrive).
async fn invalid_after_handshake(url: &str, v: &Vector) -> Check {
    let (status, id, fatal) = v.error();
    let mut p = Peer::hello(url, v.limits).await?;
    p.send(&v.bytes).await;
    if v.eof() {
        p.half_close().await;
    }
    if fatal {
        return refused(&mut p, id, status).await;
    }
    let missing = v.declared_len().saturating_sub(v.bytes.len() as u64);
    if missing == 0 {
        return exactly(&p.answers().await?, &[(FrameType::Error, id, status)]);
    }
    // Refused from the header alone, before the declared bytes come.
    let e = p.next().await?;
    exactly(&[e], &[(FrameType::Error, id, status)])?;
    if missing <= 1 << 20 {
        p.send(&vec![0u8; missing as usize]).await;
        exactly(&p.answers().await?, &[])?;
    }
    Ok(())
}

/// Each invalid input as a connection's first bytes: ERROR with the listed status and id, CLOSE,
/// close, whether the error is fatal or not (section 8.1).
async fn invalid_first(url: &str, v: &Vector) -> Check {
    let (mut status, id, _) = v.error();
    if v.has_limits() && v.limits != Limits::HANDSHAKE {
        // Over a negotiated limit only: before the handshake the handshake limits apply, which
        // the frame is within, and it is well formed but not HELLO.
        status = Status::UNEXPECTED_FRAME;
    }
    let mut p = Peer::connect(url).await;
    p.send(&v.bytes).await;
    if v.eof() {
        p.half_close().await;
    }
    refused(&mut p, id, status).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_vectors_after_the_handshake() {
    every(&load("frames.json"), |url, v| async move {
        if v.frame().frame_type == FrameType::Close {
            closed(&url, v).await
        } else {
            valid_after_handshake(&url, v).await
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_vectors_as_the_first_frame() {
    every(&load("frames.json"), |url, v| async move {
        valid_first(&url, v).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_vectors_after_the_handshake() {
    every(&load("invalid.json"), |url, v| async move {
        invalid_after_handshake(&url, v).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_vectors_as_the_first_bytes() {
    every(&load("invalid.json"), |url, v| async move {
        invalid_first(&url, v).await
    })
    .await;
}
