//! The `mitto` binary end to end: a real broker started with `mitto server`, and the client
//! subcommands against it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_mitto");

struct Server {
    child: Child,
    url: String,
}

async fn server(extra: &[&str]) -> Server {
    let mut child = Command::new(BIN)
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
    Server { child, url }
}

/// Sends SIGTERM to the server and checks that it exits cleanly within 10 s.
async fn terminate_gracefully(s: &mut Server) {
    let pid = s.child.id().unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), s.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

async fn run(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(BIN)
            .args(args)
            .env_remove("MITTO_URL")
            .output(),
    )
    .await
    .expect("the command finishes")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_req_reply_stats() {
    let s = server(&[]).await;
    let url = s.url.as_str();
    let sub = tokio::spawn({
        let url = url.to_owned();
        async move { run(&["sub", "orders.>", "--count", "2", "--json", "--url", &url]).await }
    });
    // Wait until the subscription is in place.
    for _ in 0..100 {
        let (_, out, _) = run(&["stats", "--json", "--url", url]).await;
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        if v["subscriptions"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out, _) = run(&[
        "pub",
        "orders.created",
        "hello",
        "--count",
        "2",
        "-H",
        "tenant=acme",
        "--url",
        url,
    ])
    .await;
    assert_eq!(code, 0);
    assert!(
        out.contains("published 2 message(s) to orders.created"),
        "{out}"
    );
    let (code, out, _) = sub.await.unwrap();
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["subject"], "orders.created");
    assert_eq!(lines[0]["payload"], "hello");
    assert_eq!(lines[0]["headers"]["tenant"], "acme");

    let reply = tokio::spawn({
        let url = url.to_owned();
        async move {
            run(&[
                "reply",
                "svc.upper",
                "--command",
                "tr a-z A-Z",
                "--count",
                "1",
                "--url",
                &url,
            ])
            .await
        }
    });
    let mut answer = String::new();
    for _ in 0..100 {
        let (code, out, _) = run(&["req", "svc.upper", "hello", "--url", url]).await;
        if code == 0 {
            answer = out;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer.trim(), "HELLO");
    assert_eq!(reply.await.unwrap().0, 0);

    let (code, out, err) = run(&["req", "svc.nobody", "x", "--url", url]).await;
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("no_responders"), "{err}");

    let (code, out, _) = run(&["stats", "--url", url]).await;
    assert_eq!(code, 0);
    let msgs_in: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("msgs_in"))
        .map(|v| v.trim().parse().unwrap())
        .expect("msgs_in in the table");
    // 2 publishes, the answered request and its reply, and the unanswered request (plus any
    // request tried before the replier was subscribed).
    assert!(msgs_in >= 5, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_and_a_nonzero_exit() {
    let (code, _, err) = run(&[
        "pub",
        "a",
        "b",
        "--url",
        "tcp://127.0.0.1:1",
        "--timeout",
        "1s",
    ])
    .await;
    assert_eq!(code, 1);
    assert!(err.starts_with("mitto: error: "), "{err}");
    let (code, _, err) = run(&["pub", "a.*", "b", "--url", "nonsense"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("invalid URL"), "{err}");
    let dir = std::env::temp_dir().join(format!("mitto-cli-{}.toml", std::process::id()));
    std::fs::write(&dir, "max_paylod = 5\n").unwrap();
    let (code, _, err) = run(&["server", "--config", dir.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("unknown field"), "{err}");
    let _ = std::fs::remove_file(dir);
    let (code, _, err) = run(&["server", "--slow-consumer", "sometimes"]).await;
    assert_eq!(code, 2, "clap usage error");
    assert!(err.contains("drop-oldest"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_and_graceful_sigterm() {
    let mut s = server(&["--token", "s3cret"]).await;
    let (code, _, err) = run(&["stats", "--url", &s.url]).await;
    assert_eq!(code, 1);
    assert!(err.contains("unauthorized"), "{err}");
    let (code, _, _) = run(&["stats", "--url", &s.url, "--token", "s3cret"]).await;
    assert_eq!(code, 0);
    terminate_gracefully(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_what_it_sent_and_received() {
    let s = server(&[]).await;
    let url = s.url.as_str();
    let (code, out, err) = run(&[
        "bench", "pub", "bench.x", "--count", "500", "--subs", "1", "--json", "--url", url,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(
        (rows[0]["kind"].as_str(), rows[0]["msgs"].as_u64()),
        (Some("pub"), Some(500))
    );
    assert_eq!(
        (rows[1]["kind"].as_str(), rows[1]["msgs"].as_u64()),
        (Some("sub"), Some(500))
    );
    assert!(rows[0]["msgs_per_s"].as_f64().unwrap() > 0.0);
    let (code, out, err) = run(&[
        "bench",
        "req",
        "bench.echo",
        "--serve",
        "--count",
        "200",
        "--json",
        "--url",
        url,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let row: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(row["msgs"], 200);
    assert!(row["p50_us"].as_f64().unwrap() > 0.0);
    assert!(row["p99_us"].as_f64().unwrap() >= row["p50_us"].as_f64().unwrap());
}

/// `mitto server --busy-poll-us` (latency mode, one thread) serves requests and stops on
/// SIGTERM; an out-of-range window is one clear error line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_mode_serves_and_stops() {
    let mut s = server(&["--busy-poll-us", "200"]).await;
    let url = s.url.clone();
    let (code, out, err) = run(&[
        "bench", "req", "bp.echo", "--serve", "--count", "200", "--json", "--url", &url,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let row: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(row["msgs"], 200);
    terminate_gracefully(&mut s).await;
    let (code, _, err) = run(&["server", "--busy-poll-us", "5000000"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("busy_poll_us"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = run(&["server", "--spin-us", "50000"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("spin_us is at most 10000"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
