//! At-least-once delivery with real processes: the broker is `mitto server` in a process of its
//! own, consumers are `mitto sub --ack` processes killed with SIGKILL, and the broker itself is
//! stopped with SIGTERM while a consumer lags. Every message whose publish was acknowledged must
//! be delivered and acknowledged somewhere: none is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mitto::{Client, ClientOptions, Delivery, PublishOptions, SubscribeOptions};
use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_mitto");

/// Messages each test publishes.
const N: usize = 3000;

struct Server {
    child: Child,
    url: String,
    /// Its data directory (each server its own: a data directory takes one broker).
    _data: tempfile::TempDir,
}

async fn server(extra: &[&str]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .env("MITTO_DATA_DIR", data.path())
        .args([
            "server",
            "--listen",
            "tcp://127.0.0.1:0",
            "--monitor",
            "",
            "--log",
            "warn",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(u) = l.strip_prefix("mitto broker listening on ") {
                return u.to_owned();
            }
        }
        panic!("server exited before listening");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server {
        child,
        url,
        _data: data,
    }
}

/// A `mitto sub --ack --json` process and the payloads it printed (each printed before it is
/// acknowledged).
struct Consumer {
    child: Child,
    got: Arc<Mutex<Vec<String>>>,
}

impl Consumer {
    fn start(url: &str, extra: &[&str]) -> Consumer {
        let mut child = Command::new(BIN)
            .args(["sub", "jobs", "--ack", "--json", "--url", url])
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let into = got.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                into.lock()
                    .unwrap()
                    .push(v["payload"].as_str().unwrap().to_owned());
            }
        });
        Consumer { child, got }
    }

    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    fn payloads(&self) -> BTreeSet<String> {
        self.got.lock().unwrap().iter().cloned().collect()
    }

    /// `kill -9`.
    async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

async fn client(url: &str) -> Client {
    let o = ClientOptions::new()
        .timeout(Duration::from_secs(5))
        .reconnect(false);
    Client::connect(url, o).await.unwrap()
}

/// Waits (at most 8 s) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..800 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting until {what}");
}

async fn stat(c: &Client, name: &str) -> u64 {
    c.stats().await.unwrap().values[name]
}

/// Waits (at most 8 s) until the broker's counter `name` is `n`.
async fn stat_reaches(c: &Client, name: &str, n: u64) -> u64 {
    for _ in 0..800 {
        let v = stat(c, name).await;
        if v >= n {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stat(c, name).await
}

/// Publishes `N` acknowledged messages ("0" to "2999") in the background.
fn publish_all(p: Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..N {
            p.publish_with("jobs", i.to_string(), PublishOptions::new().ack())
                .await
                .unwrap();
        }
    })
}

fn all() -> BTreeSet<String> {
    (0..N).map(|i| i.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_consumer_killed_with_sigkill_loses_no_acknowledged_message() {
    let s = server(&[]).await;
    let p = client(&s.url).await;
    let mut a = Consumer::start(&s.url, &["--durable", "work"]);
    stat_reaches(&p, "subscriptions", 1).await;
    let publishing = publish_all(p.clone());
    until("the first consumer got 300", || a.count() >= 300).await;
    a.kill().await;
    // The broker noticed (only the publisher is connected): the durable name's messages, those
    // the killed consumer had not acknowledged included, are kept for the next consumer.
    for _ in 0..800 {
        if stat(&p, "connections_open").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut b = Consumer::start(&s.url, &["--durable", "work"]);
    publishing.await.unwrap();
    let seen = || {
        a.payloads()
            .union(&b.payloads())
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    until("every message was delivered", || seen() == all()).await;
    assert_eq!(
        stat_reaches(&p, "acks", N as u64).await,
        N as u64,
        "each acknowledged once"
    );
    assert_eq!(stat(&p, "orphan_drops").await, 0);
    assert!(a.count() < N, "the kill happened mid-stream");
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_member_killed_with_sigkill_loses_no_acknowledged_message() {
    let s = server(&[]).await;
    let p = client(&s.url).await;
    let mut a = Consumer::start(&s.url, &["--queue", "workers"]);
    let mut b = Consumer::start(&s.url, &["--queue", "workers"]);
    stat_reaches(&p, "subscriptions", 2).await;
    let publishing = publish_all(p.clone());
    until("member a got 300", || a.count() >= 300).await;
    a.kill().await;
    publishing.await.unwrap();
    let seen = || {
        a.payloads()
            .union(&b.payloads())
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    until("every message was delivered", || seen() == all()).await;
    assert_eq!(
        stat_reaches(&p, "acks", N as u64).await,
        N as u64,
        "each acknowledged once"
    );
    assert_eq!(stat(&p, "orphan_drops").await, 0);
    assert!(
        b.count() > N / 2,
        "the survivor took over the killed member's share"
    );
    b.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_lagging_consumer_loses_no_acknowledged_message() {
    let mut s = server(&["--shutdown-drain-ms", "8000"]).await;
    // A consumer that takes 100 messages at a time and is slow with them, so that the broker
    // holds a backlog for it when it is told to stop.
    let consumer = client(&s.url).await;
    let opts = SubscribeOptions {
        delivery: Delivery::AtLeastOnce,
        credit: 100,
        ..SubscribeOptions::default()
    };
    let mut sub = consumer.subscribe_with("jobs", opts).await.unwrap();
    let received = Arc::new(Mutex::new(BTreeSet::new()));
    let into = received.clone();
    let reading = tokio::spawn(async move {
        let mut n = 0u32;
        while let Some(m) = sub.next().await {
            into.lock()
                .unwrap()
                .insert(String::from_utf8(m.payload().to_vec()).unwrap());
            sub.ack(&m);
            n += 1;
            if n.is_multiple_of(50) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    // The publisher keeps publishing through the shutdown; what the broker acknowledged is
    // what must arrive.
    let p = client(&s.url).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let published = Arc::new(AtomicUsize::new(0));
    let (into, count) = (acked.clone(), published.clone());
    let publishing = tokio::spawn(async move {
        for i in 0..20_000 {
            let m = i.to_string();
            match p
                .publish_with("jobs", m.clone(), PublishOptions::new().ack())
                .await
            {
                Ok(()) => into.lock().unwrap().push(m),
                Err(_) => break,
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
    });
    until("the consumer lags behind 500 acknowledged messages", || {
        published.load(Ordering::Relaxed) >= 2000
            && received.lock().unwrap().len() + 500 < published.load(Ordering::Relaxed)
    })
    .await;
    let pid = s.child.id().unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), s.child.wait())
        .await
        .expect("the broker drains and exits within 10 s")
        .unwrap();
    assert!(status.success(), "{status:?}");
    publishing.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 2000);
    // What the broker sent before its CLOSE is read from the consumer's own queue.
    let lost = || {
        let received = received.lock().unwrap();
        acked.iter().filter(|m| !received.contains(*m)).count()
    };
    for _ in 0..500 {
        if lost() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reading.abort();
    assert_eq!(lost(), 0, "acknowledged messages lost, of {}", acked.len());
}
