//! Durable streams through the `mitto` binary: the `stream` and `sub --stream` commands, and
//! the broker killed with SIGKILL again and again while publishers wait for ACKs and a durable
//! consumer reads: no acknowledged message is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mitto::streams::{ConsumerConfig, StreamMeta};
use mitto::{Client, ClientOptions, PublishOptions};
use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

const BIN: &str = env!("CARGO_BIN_EXE_mitto");

/// A broker on the configuration file `cfg` (port 0); its URL.
async fn start(cfg: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--config",
            cfg.to_str().unwrap(),
            "--log",
            "error",
        ])
        .env_remove("MITTO_DATA_DIR")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
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
    (child, url)
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("mitto.toml");
    let text = "listen = [\"tcp://127.0.0.1:0\"]\nmonitor = \"\"\n\n[[stream]]\nname = \"chaos\"\nsubjects = [\"chaos.>\"]\nfsync = \"always\"\n";
    std::fs::write(&cfg, text).unwrap();
    cfg
}

async fn cli(args: &[&str], url: &str) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(BIN).args(args).args(["--url", url]).output(),
    )
    .await
    .expect("the command finishes")
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), text + &err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_commands_and_a_durable_consumer_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = start(&write_config(dir.path())).await;
    // The data directory defaults to mitto-data beside the configuration file.
    assert!(dir.path().join("mitto-data/streams/chaos").is_dir());
    let (ok, out) = cli(
        &[
            "stream",
            "add",
            "logs",
            "--subjects",
            "logs.>",
            "--max-msgs",
            "5",
        ],
        &url,
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = cli(&["pub", "logs.a", "hi", "--ack", "--count", "7"], &url).await;
    assert!(ok, "{out}");
    let (ok, out) = cli(&["stream", "info", "logs", "--json"], &url).await;
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(ok);
    assert_eq!(
        (
            v["state"]["msgs"].as_u64(),
            v["state"]["first_seq"].as_u64()
        ),
        (Some(5), Some(3))
    );
    let (ok, out) = cli(&["stream", "ls"], &url).await;
    assert!(
        ok && out.contains("chaos:") && out.contains("logs: 5 message(s)"),
        "{out}"
    );
    let sub = [
        "sub",
        "--stream",
        "logs",
        "--durable",
        "d",
        "--count",
        "2",
        "--json",
    ];
    let (ok, out) = cli(&sub, &url).await;
    assert!(ok, "{out}");
    let seqs: Vec<u64> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4]);
    // The consumer goes on where it was.
    let (ok, out) = cli(&sub, &url).await;
    assert!(
        ok && out.contains("\"seq\":5") && out.contains("\"seq\":6"),
        "{out}"
    );
    let (ok, out) = cli(&["stream", "purge", "logs"], &url).await;
    assert!(ok && out.contains("purged 5"), "{out}");
    let (ok, _) = cli(&["stream", "rm", "logs"], &url).await;
    assert!(ok);
    let (ok, out) = cli(&["stream", "info", "logs"], &url).await;
    assert!(!ok && out.contains("not_found"), "{out}");
    child.kill().await.unwrap();
}

/// What the publishers had acknowledged, per publisher (their counters, in order).
type Acked = Arc<Mutex<Vec<Vec<u64>>>>;

/// Publishes `p<i>-<k>` with k = 0, 1, ... each waiting for its ACK, to whichever broker runs;
/// a publish that fails (the broker was killed) is sent again to the next one.
async fn publisher(i: usize, url: watch::Receiver<String>, acked: Acked, stop: Arc<Mutex<bool>>) {
    let mut k = 0u64;
    let opts = ClientOptions::new().timeout(Duration::from_secs(2));
    while !*stop.lock().unwrap() {
        let u = url.borrow().clone();
        let Ok(c) = Client::connect(&u, opts.clone()).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        while !*stop.lock().unwrap() && *url.borrow() == u {
            let payload = format!("p{i}-{k}");
            let sent = c.publish_with("chaos.p", payload, PublishOptions::new().ack());
            match tokio::time::timeout(Duration::from_secs(2), sent).await {
                Ok(Ok(())) => {
                    acked.lock().unwrap()[i].push(k);
                    k += 1;
                }
                _ => break,
            }
        }
        c.close().await;
    }
}

/// Reads consumer `d` of the stream from whichever broker runs, acknowledging each message;
/// records every payload in the order received.
async fn consumer(
    url: watch::Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<Mutex<bool>>,
) {
    let opts = ClientOptions::new().timeout(Duration::from_secs(2));
    let cfg = ConsumerConfig::new().ack_wait(Duration::from_millis(500));
    while !*stop.lock().unwrap() {
        let u = url.borrow().clone();
        let Ok(c) = Client::connect(&u, opts.clone()).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if let Ok(mut con) = c.consumer("chaos", "d", cfg.clone()).await {
            loop {
                let m = tokio::time::timeout(Duration::from_millis(200), con.next()).await;
                match m {
                    Ok(Some(m)) => {
                        assert!(m.stream_seq().is_some());
                        seen.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(m.payload()).into());
                        con.ack(&m);
                    }
                    Ok(None) => break,
                    Err(_) if *url.borrow() != u || *stop.lock().unwrap() => break,
                    Err(_) => {}
                }
            }
        }
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_loop_loses_no_acknowledged_message() {
    const PUBLISHERS: usize = 4;
    const KILLS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path());
    let (mut child, first) = start(&cfg).await;
    let (url_tx, url_rx) = watch::channel(first);
    let acked: Acked = Arc::new(Mutex::new(vec![Vec::new(); PUBLISHERS]));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop_pub = Arc::new(Mutex::new(false));
    let stop_con = Arc::new(Mutex::new(false));
    let mut tasks = Vec::new();
    for i in 0..PUBLISHERS {
        tasks.push(tokio::spawn(publisher(
            i,
            url_rx.clone(),
            acked.clone(),
            stop_pub.clone(),
        )));
    }
    let con = tokio::spawn(consumer(url_rx.clone(), seen.clone(), stop_con.clone()));
    let began = Instant::now();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(50..400))).await;
        child.start_kill().unwrap(); // SIGKILL
        child.wait().await.unwrap();
        let (c, u) = start(&cfg).await;
        child = c;
        url_tx.send(u).unwrap();
        assert!(
            began.elapsed() < Duration::from_secs(50),
            "kills took too long"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    *stop_pub.lock().unwrap() = true;
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 0, "nothing was acknowledged");
    // The consumer catches up with everything acknowledged.
    let want: std::collections::HashSet<String> = acked
        .iter()
        .enumerate()
        .flat_map(|(i, ks)| ks.iter().map(move |k| format!("p{i}-{k}")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: std::collections::HashSet<String> = seen.lock().unwrap().iter().cloned().collect();
        let missing = want.difference(&got).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged message(s) never delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    *stop_con.lock().unwrap() = true;
    con.await.unwrap();
    // In order per publisher (by first delivery); duplicates counted.
    let seen = seen.lock().unwrap().clone();
    let mut last: HashMap<usize, u64> = HashMap::new();
    let mut first_seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    for p in &seen {
        if !first_seen.insert(p.clone()) {
            duplicates += 1;
            continue;
        }
        let (i, k) = p[1..].split_once('-').unwrap();
        let (i, k): (usize, u64) = (i.parse().unwrap(), k.parse().unwrap());
        if let Some(prev) = last.insert(i, k) {
            assert!(k > prev, "publisher {i}: {k} delivered after {prev}");
        }
    }
    eprintln!(
        "{KILLS} kills: {total} acknowledged, {} delivered, {duplicates} duplicate(s), {:?}",
        seen.len(),
        began.elapsed()
    );
    child.kill().await.unwrap();
}

/// `mitto server` without a configuration file, its data directory from the environment's
/// platform data folder.
async fn start_default(data_home: &Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["server", "--listen", "tcp://127.0.0.1:0", "--monitor", ""])
        .env_remove("MITTO_DATA_DIR")
        .env_remove("MITTO_CONFIG")
        .env("XDG_DATA_HOME", data_home)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut url = String::new();
    let mut kept = None;
    while let Some(l) = lines.next_line().await.unwrap() {
        if let Some(u) = l.strip_prefix("mitto broker listening on ") {
            url = u.to_owned();
        }
        if let Some(d) = l.strip_prefix("streams kept in ") {
            kept = Some(d.to_owned());
        }
        if kept.is_some() || l.starts_with("streams off") {
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert!(!url.is_empty());
    (child, kept.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_side_by_side_share_no_default_data_directory() {
    let home = tempfile::tempdir().unwrap();
    let (mut a, dir_a) = tokio::time::timeout(Duration::from_secs(20), start_default(home.path()))
        .await
        .unwrap();
    assert_eq!(Path::new(&dir_a), home.path().join("mitto"));
    // The second one finds the folder taken: it runs, without streams.
    let (mut b, dir_b) = tokio::time::timeout(Duration::from_secs(20), start_default(home.path()))
        .await
        .unwrap();
    assert_eq!(dir_b, "");
    a.kill().await.unwrap();
    b.kill().await.unwrap();
}
