//! Durable streams where a connection comes and goes: a subscription bound to a consumer kept
//! by a session and bound again when the session resumes, and one answer for each acknowledged
//! publish to a stream, also when subscriptions that block publishers hold it back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/raw.rs"]
mod raw;
#[path = "support/relay.rs"]
mod relay;

use mitto::proto::{Flags, Frame, FrameType, SlowConsumerPolicy, SubscribeOptions};
use mitto::streams::{ConsumerConfig, StreamMeta};
use mitto::{Client, ClientOptions, Message, PublishOptions, Status};
use mitto_broker::{Broker, BrokerConfig, StreamSpec};
use raw::{subject, Raw};
use relay::relay;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn config(dir: &Path, stream: &str, subjects: &str) -> BrokerConfig {
    BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: "127.0.0.1:0".into(),
        data_dir: Some(dir.to_owned()),
        streams: vec![StreamSpec {
            name: stream.into(),
            subjects: vec![subjects.into()],
            ..StreamSpec::default()
        }],
        ..BrokerConfig::default()
    }
}

fn opts() -> ClientOptions {
    ClientOptions::new()
        .timeout(Duration::from_secs(5))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
}

async fn publish(c: &Client, subject: &str, payload: &str) {
    c.publish_with(subject, payload.to_owned(), PublishOptions::new().ack())
        .await
        .unwrap();
}

async fn next(c: &mut mitto::streams::Consumer) -> Message {
    tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .expect("a message within 5 s")
        .expect("consumer open")
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.payload()).into_owned()
}

async fn until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 5 s: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_keeps_its_consumer_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(config(dir.path(), "jobs", "jobs.*"))
        .await
        .unwrap();
    let url = b.urls()[0].clone();
    let r = relay(&url).await;
    let w = Client::connect(&r.url, opts().client_id("worker-1"))
        .await
        .unwrap();
    let p = Client::connect(&url, opts()).await.unwrap();
    // A long ack_wait: what comes again after the resume does not wait for it.
    let cfg = ConsumerConfig::new().ack_wait(Duration::from_secs(60));
    let mut con = w.consumer("jobs", "workers", cfg).await.unwrap();
    publish(&p, "jobs.a", "1").await;
    publish(&p, "jobs.a", "2").await;
    let one = next(&mut con).await;
    assert_eq!(text(&one), "1");
    con.ack(&one);
    assert_eq!(
        text(&next(&mut con).await),
        "2",
        "delivered, not acknowledged"
    );
    until("the ACK of 1 is recorded", async || {
        con.info().await.unwrap()["state"]["ack_floor"] == 1
    })
    .await;

    r.shut.store(true, Ordering::SeqCst);
    r.cut.notify_waiters();
    until("the session is detached", async || {
        b.stats()["sessions_detached"] == 1
    })
    .await;
    publish(&p, "jobs.a", "3").await;
    publish(&p, "jobs.a", "4").await;
    r.shut.store(false, Ordering::SeqCst);

    // After the resume: 2 again (counted), then 3 and 4 from the consumer's position; never 1.
    let two = next(&mut con).await;
    assert_eq!((text(&two), two.delivery_count()), ("2".into(), 2));
    assert_eq!(two.stream_seq(), Some(2));
    con.ack(&two);
    for want in ["3", "4"] {
        let m = next(&mut con).await;
        assert_eq!((text(&m), m.delivery_count()), (want.into(), 1));
        con.ack(&m);
    }
    publish(&p, "jobs.a", "5").await;
    let five = next(&mut con).await;
    assert_eq!(text(&five), "5");
    con.ack(&five);
    assert_eq!(b.stats()["sessions_resumed"], 1);
    until("everything acknowledged, one subscriber", async || {
        let s = &con.info().await.unwrap()["state"];
        s["ack_floor"] == 5 && s["pending"] == 0 && s["subscribers"] == 1
    })
    .await;
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), con.next()).await {
        panic!("nothing more was due: {m:?}");
    }
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_while_its_session_is_away_ends_the_resumed_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start(config(dir.path(), "jobs", "jobs.*"))
        .await
        .unwrap();
    let url = b.urls()[0].clone();
    let r = relay(&url).await;
    let w = Client::connect(&r.url, opts().client_id("worker-2"))
        .await
        .unwrap();
    let admin = Client::connect(&url, opts()).await.unwrap();
    let mut con = w
        .consumer("jobs", "gone", ConsumerConfig::new())
        .await
        .unwrap();
    r.shut.store(true, Ordering::SeqCst);
    r.cut.notify_waiters();
    until("the session is detached", async || {
        b.stats()["sessions_detached"] == 1
    })
    .await;
    // Away, the subscription no longer holds the consumer: it may be deleted.
    let del = "$MITTO.CONSUMER.DELETE.jobs.gone";
    let mut last = None;
    for _ in 0..100 {
        match admin.request(del, "").await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last.is_none(), "not deleted: {last:?}");
    r.shut.store(false, Ordering::SeqCst);
    // The resumed session cannot bind it again: the subscription ends.
    let end = tokio::time::timeout(Duration::from_secs(5), con.next()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert_eq!(b.stats()["sessions_resumed"], 1);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_held_by_a_full_blocking_subscriber_is_answered_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BrokerConfig {
        max_block_ms: 200,
        ..config(dir.path(), "s", "s.*")
    };
    let b = Broker::start(cfg).await.unwrap();
    let url = b.urls()[0].clone();
    // Takes one message (its credit) and holds one more, then blocks publishers.
    let mut sub = Raw::login(&url, "", "").await;
    let held = SubscribeOptions {
        policy: SlowConsumerPolicy::Block,
        max_pending: 1,
        credit: 1,
        ..SubscribeOptions::default()
    };
    sub.join(false, 1, "s.*", &held).await;
    let mut publisher = Raw::login(&url, "", "").await;
    for id in 1..=4u64 {
        let f = Frame::publish(subject("s.x"), format!("{id}"))
            .with_id(id)
            .with_flags(Flags::ACK_REQUIRED);
        publisher.send(&f).await;
    }
    // Past max_block_ms and every fsync: all answers are in.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut answers: HashMap<u64, Vec<Frame>> = HashMap::new();
    for f in publisher.sync().await {
        assert!(
            matches!(f.frame_type, FrameType::Ack | FrameType::Error),
            "{f:?}"
        );
        answers.entry(f.id).or_default().push(f);
    }
    for id in 1..=4u64 {
        let a = answers.get(&id).map_or(0, Vec::len);
        assert_eq!(a, 1, "publish {id}: {:?}", answers.get(&id));
    }
    let refused: Vec<_> = answers
        .values()
        .flatten()
        .filter(|f| f.frame_type == FrameType::Error)
        .collect();
    assert!(!refused.is_empty(), "{answers:?}");
    for f in refused {
        assert_eq!(f.status, Status::BACKPRESSURE_REJECTION, "{f:?}");
    }
    // The stream stored each of them all the same.
    let c = Client::connect(&url, opts()).await.unwrap();
    assert_eq!(c.stream("s").info().await.unwrap().state.msgs, 4);
    // Gone before the shutdown, which would wait for it to read what it holds.
    drop(sub);
    b.shutdown().await;
}
