//! Durable streams through a real broker: acknowledged publishes stored before their ACK,
//! retention, the admin API and its permissions, durable consumers (positions across
//! disconnects and restarts, sharing, NACK, dead letters, start positions).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mitto::streams::{
    ConsumerConfig, DeliverFrom, Discard, StreamConfig, StreamMeta, MSG_ID_HEADER,
};
use mitto::{Client, ClientOptions, Headers, Message, PublishOptions, Status};
use mitto_broker::{Broker, BrokerConfig, StreamSpec, User};
use std::path::Path;
use std::time::Duration;

fn config(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: "127.0.0.1:0".into(),
        data_dir: Some(dir.to_owned()),
        ..BrokerConfig::default()
    }
}

fn spec(name: &str, subjects: &[&str]) -> StreamSpec {
    StreamSpec {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..StreamSpec::default()
    }
}

async fn start(cfg: BrokerConfig) -> (Broker, Client) {
    let b = Broker::start(cfg).await.unwrap();
    let c = client(&b.urls()[0], "", "").await;
    (b, c)
}

async fn client(url: &str, user: &str, password: &str) -> Client {
    let mut o = ClientOptions::new().timeout(Duration::from_secs(5));
    if !user.is_empty() {
        o = o.user_password(user, password.to_owned());
    }
    Client::connect(url, o).await.unwrap()
}

async fn publish(c: &Client, subject: &str, payload: &str) -> mitto::Result<()> {
    c.publish_with(subject, payload.to_owned(), PublishOptions::new().ack())
        .await
}

async fn next(c: &mut mitto::streams::Consumer) -> Message {
    tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .expect("a message within 5 s")
        .expect("consumer open")
}

async fn quiet(c: &mut mitto::streams::Consumer) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(200), c.next()).await {
        panic!("unexpected message: {m:?}");
    }
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.payload()).into_owned()
}

#[tokio::test]
async fn acknowledged_publishes_survive_a_restart_and_replay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.streams = vec![spec("orders", &["orders.>"])];
    let (b, c) = start(cfg.clone()).await;
    for i in 1..=5 {
        publish(&c, "orders.created", &format!("#{i}"))
            .await
            .unwrap();
    }
    // Not captured: routed as before, not stored.
    publish(&c, "other.x", "no").await.unwrap();
    assert_eq!(c.stream("orders").info().await.unwrap().state.msgs, 5);
    c.close().await;
    b.shutdown().await;

    let (b, c) = start(cfg).await;
    let info = c.stream("orders").info().await.unwrap();
    assert_eq!((info.state.msgs, info.state.last_seq), (5, 5));
    let mut con = c
        .consumer("orders", "all", ConsumerConfig::new())
        .await
        .unwrap();
    for i in 1..=5u64 {
        let m = next(&mut con).await;
        assert_eq!((m.stream_seq(), text(&m)), (Some(i), format!("#{i}")));
        assert_eq!(m.stream_name(), Some("orders"));
        assert_eq!(m.subject(), "orders.created");
        con.ack(&m);
    }
    quiet(&mut con).await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_full_stream_that_discards_new_refuses_with_backpressure() {
    let dir = tempfile::tempdir().unwrap();
    let (b, c) = start(config(dir.path())).await;
    let cfg = StreamConfig::new(["jobs.*"])
        .max_msgs(2)
        .discard(Discard::New);
    c.stream("jobs").create(cfg).await.unwrap();
    publish(&c, "jobs.a", "1").await.unwrap();
    publish(&c, "jobs.a", "2").await.unwrap();
    let e = publish(&c, "jobs.a", "3").await.unwrap_err();
    assert_eq!(e.status(), Status::BACKPRESSURE_REJECTION, "{e}");
    assert!(e.message().contains("jobs"), "{e}");
    assert_eq!(c.stream("jobs").info().await.unwrap().state.msgs, 2);
    b.shutdown().await;
}

/// In process as over TCP: an acknowledged publish waits for the store and hears its refusal;
/// a fire-and-forget one does not wait for the store.
#[tokio::test]
async fn only_acknowledged_publishes_wait_for_the_store_on_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.listen.push("inproc://streams-ack".into());
    let (b, tcp) = start(cfg).await;
    let local = client("inproc://streams-ack", "", "").await;
    let full = StreamConfig::new(["jobs.*"])
        .max_msgs(1)
        .discard(Discard::New);
    tcp.stream("jobs").create(full).await.unwrap();
    publish(&tcp, "jobs.a", "1").await.unwrap();
    for c in [&tcp, &local] {
        let e = publish(c, "jobs.a", "refused").await.unwrap_err();
        assert_eq!(e.status(), Status::BACKPRESSURE_REJECTION, "{e}");
        c.publish("jobs.a", "not waited for").await.unwrap();
    }
    assert_eq!(tcp.stream("jobs").info().await.unwrap().state.msgs, 1);
    b.shutdown().await;
}

#[tokio::test]
async fn retention_by_count_and_bytes_removes_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let (b, c) = start(config(dir.path())).await;
    c.stream("m")
        .create(StreamConfig::new(["m.>"]).max_msgs(3))
        .await
        .unwrap();
    c.stream("y")
        .create(StreamConfig::new(["y.>"]).max_bytes(200))
        .await
        .unwrap();
    for i in 0..10 {
        publish(&c, "m.x", &format!("{i}")).await.unwrap();
        publish(&c, "y.x", &"z".repeat(50)).await.unwrap();
    }
    let m = c.stream("m").info().await.unwrap().state;
    assert_eq!((m.msgs, m.first_seq, m.last_seq), (3, 8, 10));
    let y = c.stream("y").info().await.unwrap().state;
    assert!(y.bytes <= 200 && y.msgs >= 1 && y.last_seq == 10, "{y:?}");
    let mut con = c.consumer("m", "c", ConsumerConfig::new()).await.unwrap();
    assert_eq!(text(&next(&mut con).await), "7");
    b.shutdown().await;
}

#[tokio::test]
async fn admin_api_creates_lists_purges_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (b, c) = start(config(dir.path())).await;
    let s = c.stream("ev");
    let info = s.create(StreamConfig::new(["ev.>"])).await.unwrap();
    assert_eq!(info.name(), "ev");
    assert_eq!(info.config["fsync"], "always");
    // The same again is fine; another configuration is not.
    s.create(StreamConfig::new(["ev.>"])).await.unwrap();
    let e = s.create(StreamConfig::new(["ev.x"])).await.unwrap_err();
    assert_eq!(e.status(), Status::ALREADY_EXISTS);
    // Overlapping subjects are refused.
    let e = c
        .stream("ev2")
        .create(StreamConfig::new(["ev.a"]))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::BAD_REQUEST, "{e}");
    for i in 0..4 {
        publish(&c, "ev.a", &i.to_string()).await.unwrap();
    }
    assert_eq!(c.streams().await.unwrap().len(), 1);
    assert_eq!(s.purge(Some(3)).await.unwrap(), 2);
    assert_eq!(s.info().await.unwrap().state.first_seq, 3);
    let u = s
        .update(StreamConfig::new(["ev.>"]).max_msgs(1))
        .await
        .unwrap();
    assert_eq!(u.config["max_msgs"], 1);
    assert_eq!(s.info().await.unwrap().state.msgs, 1);
    s.delete().await.unwrap();
    assert_eq!(s.info().await.unwrap_err().status(), Status::NOT_FOUND);
    assert!(c.streams().await.unwrap().is_empty());
    let e = c
        .request("$MITTO.STREAM.CREATE.bad", "{not json")
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::BAD_REQUEST);
    // The monitoring page lists what there is.
    b.shutdown().await;
}

#[tokio::test]
async fn streams_are_seen_and_managed_only_with_permission() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.users = vec![
        User {
            name: "admin".into(),
            password: "a".into(),
            ..User::default()
        },
        User {
            name: "eu".into(),
            password: "e".into(),
            publish: vec!["$MITTO.>".into(), "eu.>".into()],
            subscribe: vec!["eu.>".into(), "$MITTO.>".into()],
        },
        User {
            name: "reader".into(),
            password: "r".into(),
            publish: vec!["eu.>".into()],
            subscribe: vec![">".into()],
        },
    ];
    cfg.streams = vec![spec("all", &["orders.>"]), spec("eu", &["eu.>"])];
    let b = Broker::start(cfg).await.unwrap();
    let url = b.urls()[0].clone();
    let eu = client(&url, "eu", "e").await;
    let names: Vec<String> = eu
        .streams()
        .await
        .unwrap()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    assert_eq!(names, ["eu"]);
    assert_eq!(
        eu.stream("all").info().await.unwrap_err().status(),
        Status::NOT_FOUND
    );
    assert_eq!(
        eu.stream("all").delete().await.unwrap_err().status(),
        Status::NOT_FOUND
    );
    let e = eu
        .stream("x")
        .create(StreamConfig::new(["us.>"]))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::FORBIDDEN);
    let e = eu
        .consumer("all", "c", ConsumerConfig::new())
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::NOT_FOUND);
    // No publish permission on the admin subjects: refused like any request.
    let r = client(&url, "reader", "r").await;
    assert_eq!(r.streams().await.unwrap_err().status(), Status::FORBIDDEN);
    let admin = client(&url, "admin", "a").await;
    assert_eq!(admin.streams().await.unwrap().len(), 2);
    b.shutdown().await;
}

#[tokio::test]
async fn a_consumer_resumes_where_it_was_and_gets_unacknowledged_messages_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.streams = vec![spec("s", &["s.>"])];
    let (b, c) = start(cfg.clone()).await;
    for i in 1..=5 {
        publish(&c, "s.x", &i.to_string()).await.unwrap();
    }
    let mut con = c.consumer("s", "d", ConsumerConfig::new()).await.unwrap();
    let m1 = next(&mut con).await;
    let m2 = next(&mut con).await;
    con.ack(&m1);
    assert_eq!(text(&m2), "2");
    // Make sure the ACK went before the subscription ends.
    let info = loop {
        let i = con.info().await.unwrap();
        if i["state"]["ack_floor"] == 1 {
            break i;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(info["config"]["deliver"], "all");
    drop(con);
    c.close().await;
    b.shutdown().await;

    // After a restart: 2 (not acknowledged) comes again first, then 3.
    let (b, c) = start(cfg).await;
    let mut con = c.bind("s", "d").await.unwrap();
    let again = next(&mut con).await;
    assert_eq!((text(&again), again.delivery_count()), ("2".into(), 2));
    let mut rest = Vec::new();
    for _ in 0..3 {
        let m = next(&mut con).await;
        rest.push(text(&m));
        con.ack(&m);
    }
    assert_eq!(rest, ["3", "4", "5"]);
    b.shutdown().await;
}

#[tokio::test]
async fn subscribers_of_one_consumer_share_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.streams = vec![spec("q", &["q.>"])];
    let (b, c) = start(cfg).await;
    let mut a = c.consumer("q", "w", ConsumerConfig::new()).await.unwrap();
    let c2 = client(&b.urls()[0], "", "").await;
    let mut z = c2.bind("q", "w").await.unwrap();
    for i in 0..20 {
        publish(&c, "q.job", &i.to_string()).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        tokio::select! {
            Some(m) = a.next() => { a.ack(&m); seen.push(m.stream_seq().unwrap()); }
            Some(m) = z.next() => { z.ack(&m); seen.push(m.stream_seq().unwrap()); }
            _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("only {seen:?}"),
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=20).collect::<Vec<u64>>());
    quiet(&mut a).await;
    quiet(&mut z).await;
    b.shutdown().await;
}

#[tokio::test]
async fn nack_with_delay_then_dead_letter_after_max_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.streams = vec![spec("t", &["t.>"]), spec("dead", &["dead.t"])];
    let (b, c) = start(cfg).await;
    let mut dl = c.subscribe("dead.t").await.unwrap();
    let cc = ConsumerConfig::new().max_deliver(2, "dead.t");
    let mut con = c.consumer("t", "n", cc).await.unwrap();
    publish(&c, "t.x", "poison").await.unwrap();
    let m = next(&mut con).await;
    let t0 = std::time::Instant::now();
    con.nack(&m, Some(Duration::from_millis(300)));
    let m = next(&mut con).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(m.delivery_count(), 2);
    con.nack(&m, None);
    let d = tokio::time::timeout(Duration::from_secs(5), dl.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.payload(), "poison");
    assert_eq!(d.headers().get_custom("mitto-subject"), Some(&b"t.x"[..]));
    quiet(&mut con).await;
    // The dead-letter stream stored it too.
    assert_eq!(c.stream("dead").info().await.unwrap().state.msgs, 1);
    let info = con.info().await.unwrap();
    assert_eq!(info["state"]["terminated"], 1);
    b.shutdown().await;
}

#[tokio::test]
async fn consumers_start_from_a_sequence_the_last_or_new_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.streams = vec![spec("p", &["p.*"])];
    let (b, c) = start(cfg).await;
    for i in 1..=4 {
        publish(&c, "p.a", &i.to_string()).await.unwrap();
    }
    let mut s = c
        .consumer("p", "s", ConsumerConfig::new().deliver(DeliverFrom::Seq(3)))
        .await
        .unwrap();
    let mut l = c
        .consumer("p", "l", ConsumerConfig::new().deliver(DeliverFrom::Last))
        .await
        .unwrap();
    let mut n = c
        .consumer("p", "n", ConsumerConfig::new().deliver(DeliverFrom::New))
        .await
        .unwrap();
    let mut f = c
        .consumer("p", "f", ConsumerConfig::new().filter("p.b"))
        .await
        .unwrap();
    assert_eq!(text(&next(&mut s).await), "3");
    assert_eq!(text(&next(&mut l).await), "4");
    quiet(&mut n).await;
    publish(&c, "p.b", "5").await.unwrap();
    assert_eq!(text(&next(&mut n).await), "5");
    assert_eq!(text(&next(&mut f).await), "5");
    let e = c.bind("p", "nope").await.unwrap_err();
    assert_eq!(e.status(), Status::NOT_FOUND);
    b.shutdown().await;
}

#[tokio::test]
async fn the_monitoring_page_shows_streams_and_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.streams = vec![spec("w", &["w"])];
    let (b, c) = start(cfg).await;
    publish(&c, "w", "x").await.unwrap();
    let addr = b.monitor_addr().unwrap();
    let page = http_get(addr, "/streamz").await;
    let v: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(v["list"][0]["name"], "w");
    assert_eq!(v["list"][0]["msgs"], 1);
    assert_eq!(v["list"][0]["recovery"]["truncated_bytes"], 0);
    b.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn replay_at_the_original_pace_and_from_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.streams = vec![spec("r", &["r.*"])];
    let (b, c) = start(cfg).await;
    publish(&c, "r.a", "0").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let middle = std::time::SystemTime::now();
    for i in 1..=2 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        publish(&c, "r.a", &i.to_string()).await.unwrap();
    }
    // Stored 200 ms apart: replayed 200 ms apart.
    let paced = ConsumerConfig::new()
        .deliver(DeliverFrom::Time(middle))
        .original_pace();
    let mut con = c.consumer("r", "paced", paced).await.unwrap();
    let first = next(&mut con).await;
    let t0 = std::time::Instant::now();
    assert_eq!(text(&first), "1");
    let second = next(&mut con).await;
    assert_eq!(text(&second), "2");
    let gap = t0.elapsed();
    assert!(gap >= Duration::from_millis(150), "{gap:?}");
    // At full speed, all at once.
    let mut fast = c
        .consumer("r", "fast", ConsumerConfig::new())
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    for i in 0..3 {
        assert_eq!(text(&next(&mut fast).await), i.to_string());
    }
    assert!(
        t0.elapsed() < Duration::from_millis(150),
        "{:?}",
        t0.elapsed()
    );
    b.shutdown().await;
}

#[tokio::test]
async fn a_delivery_not_acknowledged_within_ack_wait_comes_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.streams = vec![spec("w", &["w.*"])];
    let (b, c) = start(cfg).await;
    let wait = ConsumerConfig::new().ack_wait(Duration::from_millis(300));
    let mut con = c.consumer("w", "slow", wait).await.unwrap();
    publish(&c, "w.a", "late").await.unwrap();
    let m = next(&mut con).await;
    let t0 = std::time::Instant::now();
    assert_eq!(m.delivery_count(), 1);
    let again = next(&mut con).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!((text(&again), again.delivery_count()), ("late".into(), 2));
    con.ack(&again);
    quiet(&mut con).await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_torn_tail_is_cut_at_start_up_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.streams = vec![spec("t", &["t"])];
    let (b, c) = start(cfg.clone()).await;
    for i in 0..3 {
        publish(&c, "t", &i.to_string()).await.unwrap();
    }
    c.close().await;
    b.shutdown().await;
    // A write torn by a crash: the start of a record, not all of it.
    let segs = dir.path().join("streams/t/segments");
    let seg = std::fs::read_dir(&segs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[0x5a; 20]);
    std::fs::write(&seg, bytes).unwrap();

    let (b, c) = start(cfg).await;
    let page = http_get(b.monitor_addr().unwrap(), "/streamz").await;
    let v: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(v["list"][0]["recovery"]["truncated_bytes"], 20, "{v}");
    assert_eq!(v["list"][0]["msgs"], 3);
    publish(&c, "t", "3").await.unwrap();
    let mut con = c.consumer("t", "all", ConsumerConfig::new()).await.unwrap();
    for i in 0..4 {
        assert_eq!(text(&next(&mut con).await), i.to_string());
    }
    b.shutdown().await;
}

async fn publish_id(c: &Client, subject: &str, id: &str, payload: &str) -> mitto::Result<()> {
    let h = Headers::new().with(MSG_ID_HEADER, id);
    let o = PublishOptions::new().ack().headers(h);
    c.publish_with(subject, payload.to_owned(), o).await
}

async fn msgs(c: &Client, stream: &str) -> u64 {
    c.stream(stream).info().await.unwrap().state.msgs
}

/// PROTOCOL.md 19.1: a retried publish with the same `mitto-msg-id` is stored once, also
/// across a restart; live subscribers still get every publish.
#[tokio::test]
async fn a_retried_publish_is_acknowledged_and_stored_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.streams = vec![spec("orders", &["orders.>"])];
    let (b, c) = start(cfg.clone()).await;
    let mut live = c.subscribe("orders.>").await.unwrap();
    publish_id(&c, "orders.created", "order-1", "first")
        .await
        .unwrap();
    publish_id(&c, "orders.created", "order-2", "second")
        .await
        .unwrap();
    publish_id(&c, "orders.created", "order-1", "retry")
        .await
        .unwrap();
    assert_eq!(msgs(&c, "orders").await, 2);
    for want in ["first", "second", "retry"] {
        let m = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(text(&m), want);
    }
    c.close().await;
    b.shutdown().await;

    let (b, c) = start(cfg).await;
    publish_id(&c, "orders.created", "order-2", "retry after restart")
        .await
        .unwrap();
    assert_eq!(msgs(&c, "orders").await, 2);
    publish_id(&c, "orders.created", "order-3", "third")
        .await
        .unwrap();
    assert_eq!(msgs(&c, "orders").await, 3);
    c.close().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_stream_created_without_a_window_stores_every_publish() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.streams = vec![spec("orders", &["orders.>"])];
    let (b, c) = start(cfg).await;
    let off = StreamConfig::new(["events.>"]).duplicate_window(Duration::ZERO);
    let info = c.stream("events").create(off).await.unwrap();
    assert_eq!(info.config["duplicate_window"], "0s");
    let orders = c.stream("orders").info().await.unwrap();
    assert_eq!(orders.config["duplicate_window"], "2m");
    for _ in 0..3 {
        publish_id(&c, "events.x", "same", "m").await.unwrap();
    }
    assert_eq!(msgs(&c, "events").await, 3);
    c.close().await;
    b.shutdown().await;
}
