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
    /// Its data directory (each server its own: a data directory takes one broker).
    _data: tempfile::TempDir,
}

async fn server(extra: &[&str]) -> Server {
    server_on("tcp://127.0.0.1:0", extra).await
}

async fn server_on(listen: &str, extra: &[&str]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .env("MITTO_DATA_DIR", data.path())
        .args([
            "server",
            "--listen",
            listen,
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

/// Waits (at most 5 s) until the broker at `url` counts `n` subscriptions.
async fn subscriptions_reach(url: &str, n: u64) {
    for _ in 0..100 {
        let (_, out, _) = run(&["stats", "--json", "--url", url]).await;
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        if v["subscriptions"] == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    subscriptions_reach(url, 1).await;
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
    assert_eq!(code, 4, "no responders: {err}");
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

/// A bare host:port is a tcp:// URL, for the server's listener and for a client's broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_host_port_is_tcp() {
    let s = server_on("127.0.0.1:0", &[]).await;
    let bare = s.url.strip_prefix("tcp://").expect("listening on tcp://");
    assert!(bare.starts_with("127.0.0.1:"), "{}", s.url);
    let (code, out, err) = run(&["stats", "--json", "--server", bare]).await;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["connections_total"].as_u64().unwrap() >= 1, "{out}");
    let (code, _, err) = run(&["stats", "--url", "127.0.0.1"]).await;
    assert_eq!(code, 2, "a malformed URL is a usage error");
    assert!(
        err.contains("expected host:port or scheme://address"),
        "{err}"
    );
}

/// Exit codes: 1 other failures, 2 usage, 3 the broker cannot be reached, 4 timeout or no
/// responders (as `mitto --help` says).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_and_exit_codes_tell_them_apart() {
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
    assert_eq!(code, 3, "connection refused: {err}");
    assert!(err.starts_with("mitto: error: "), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (code, _, err) = run(&["pub", "a.*", "b", "--url", "nonsense"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid URL"), "{err}");
    let (code, _, err) = run(&["pub", "a"]).await;
    assert_eq!(code, 2, "missing argument: {err}");
    let (code, _, err) = run(&["reply", "svc.x"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--echo or --command"), "{err}");
    let (code, help, _) = run(&["--help"]).await;
    assert_eq!(code, 0);
    assert!(help.contains("Exit codes:"), "{help}");
    for line in [
        "  2  usage",
        "  3  the broker could not be reached",
        "  4  a request timed out",
    ] {
        assert!(help.contains(line), "{line:?} in {help}");
    }
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

/// Secrets can come from files, so that they show in no process list: the server's token,
/// and a client's token or password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_passwords_can_come_from_files() {
    let dir = std::env::temp_dir().join(format!("mitto-cli-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (good, bad, empty) = (dir.join("good"), dir.join("bad"), dir.join("empty"));
    std::fs::write(&good, "fi1e-token\n").unwrap();
    std::fs::write(&bad, "wrong\n").unwrap();
    std::fs::write(&empty, "").unwrap();
    let mut s = server(&["--token-file", good.to_str().unwrap()]).await;
    let stats = |file: &std::path::Path| {
        let url = s.url.clone();
        let file = file.to_str().unwrap().to_owned();
        async move { run(&["stats", "--url", &url, "--token-file", &file]).await }
    };
    assert_eq!(stats(&good).await.0, 0);
    let (code, _, err) = stats(&bad).await;
    assert_eq!(code, 1);
    assert!(err.contains("unauthorized"), "{err}");
    let (code, _, err) = stats(&empty).await;
    assert_eq!(code, 1);
    assert!(err.contains("no secret"), "{err}");
    let (code, _, err) = run(&[
        "stats",
        "--url",
        &s.url,
        "--token",
        "x",
        "--token-file",
        "y",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    terminate_gracefully(&mut s).await;
    // A user's password from a file.
    let cfg = dir.join("users.toml");
    std::fs::write(
        &cfg,
        "[[users]]\nname = \"alice\"\npassword = \"fi1e-token\"\n",
    )
    .unwrap();
    let mut s = server(&["--config", cfg.to_str().unwrap()]).await;
    let as_alice = |file: &std::path::Path| {
        let url = s.url.clone();
        let file = file.to_str().unwrap().to_owned();
        async move {
            run(&[
                "stats",
                "--url",
                &url,
                "--user",
                "alice",
                "--password-file",
                &file,
            ])
            .await
        }
    };
    assert_eq!(as_alice(&good).await.0, 0);
    assert_eq!(as_alice(&bad).await.0, 1);
    terminate_gracefully(&mut s).await;
    let _ = std::fs::remove_dir_all(dir);
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

/// Lines of a child's output, as they come.
fn lines_of(
    r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (at most 15 s) for a line that contains `what`, doing `poke` between waits.
async fn wait_for_line<F: std::future::Future>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &str,
    mut poke: impl FnMut() -> F,
) -> String {
    let seen = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            poke().await;
            let wait = tokio::time::sleep(Duration::from_millis(200));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    l = rx.recv() => match l {
                        Some(l) if l.contains(what) => return l,
                        Some(_) => {}
                        None => panic!("the output ended before {what:?}"),
                    },
                    _ = &mut wait => break,
                }
            }
        }
    })
    .await;
    seen.unwrap_or_else(|_| panic!("no line with {what:?} within 15 s"))
}

/// `mitto sub` and `mitto reply` outlive a broker restart on the same address: they say on
/// stderr that the connection went and came back, and go on printing and answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_and_reply_survive_a_broker_restart() {
    let mut s = server(&[]).await;
    let url = s.url.clone();
    let spawn = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--url", &url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut sub = spawn(&["sub", "news.>"]);
    let mut replier = spawn(&["reply", "svc.echo", "--echo"]);
    let mut sub_out = lines_of(sub.stdout.take().unwrap());
    let mut sub_err = lines_of(sub.stderr.take().unwrap());
    let mut rep_err = lines_of(replier.stderr.take().unwrap());
    let _rep_out = lines_of(replier.stdout.take().unwrap());
    let publish = |data: &'static str| {
        let url = url.clone();
        move || {
            let url = url.clone();
            async move {
                run(&["pub", "news.today", data, "--url", &url]).await;
            }
        }
    };
    wait_for_line(&mut sub_out, "news.today: before", publish("before")).await;
    // The replier too must be answering before the broker goes: a broker lost before its first
    // SUBSCRIBE was answered ends `mitto reply` with exit code 3 (nothing to keep yet).
    wait_for_line(&mut rep_err, "answering svc.echo", || async {}).await;

    s.child.kill().await.unwrap();
    let noop = || async {};
    wait_for_line(&mut sub_err, "disconnected from", noop).await;
    wait_for_line(&mut rep_err, "disconnected from", noop).await;
    let _s = server_on(&url, &[]).await;
    wait_for_line(&mut sub_err, "reconnected to", noop).await;
    wait_for_line(&mut rep_err, "reconnected to", noop).await;

    wait_for_line(&mut sub_out, "news.today: after", publish("after")).await;
    let answered = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let (code, out, _) = run(&["req", "svc.echo", "ping", "--url", &url]).await;
            if code == 0 {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the replier answers again");
    assert_eq!(answered.trim(), "ping");
    assert!(sub.try_wait().unwrap().is_none(), "mitto sub still runs");
    assert!(
        replier.try_wait().unwrap().is_none(),
        "mitto reply still runs"
    );
}

/// `mitto sub --max-reconnects N` and `mitto reply --max-reconnects N` give up once the broker
/// is gone for good: after N failed attempts they exit with code 3 and say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_and_reply_give_up_after_max_reconnects() {
    let mut s = server(&[]).await;
    let url = s.url.clone();
    let spawn = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--url", &url, "--max-reconnects", "3"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut sub = spawn(&["sub", "news.>"]);
    let mut replier = spawn(&["reply", "svc.echo", "--echo"]);
    let mut sub_err = lines_of(sub.stderr.take().unwrap());
    let mut rep_err = lines_of(replier.stderr.take().unwrap());
    let noop = || async {};
    wait_for_line(&mut sub_err, "listening on news.>", noop).await;
    wait_for_line(&mut rep_err, "answering svc.echo", noop).await;
    s.child.kill().await.unwrap();
    for (what, child, err) in [
        ("sub", &mut sub, &mut sub_err),
        ("reply", &mut replier, &mut rep_err),
    ] {
        let line = wait_for_line(err, "gave up after 3 failed reconnect attempts", noop).await;
        assert!(line.starts_with("mitto: error:"), "{what}: {line}");
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap_or_else(|_| panic!("mitto {what} exits once it gave up"))
            .unwrap();
        assert_eq!(status.code(), Some(3), "mitto {what}: {status:?}");
    }
}

/// `mitto sub --headers` prints each header under its message; `--json` shows the deadline as
/// a duration. A request nobody answers in time exits 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_shows_headers_and_readable_deadlines() {
    let s = server(&[]).await;
    let url = s.url.as_str();
    let sub = |extra: &'static str| {
        let url = url.to_owned();
        tokio::spawn(
            async move { run(&["sub", "hdr.>", "--count", "1", extra, "--url", &url]).await },
        )
    };
    let (plain, json) = (sub("--headers"), sub("--json"));
    subscriptions_reach(url, 2).await;
    // The subscribers get the request, but none answers it.
    let (code, _, err) = run(&[
        "req",
        "hdr.x",
        "hi",
        "-H",
        "tenant=acme",
        "--timeout",
        "1s",
        "--url",
        url,
    ])
    .await;
    assert_eq!(code, 4, "timed out: {err}");
    let (code, out, err) = plain.await.unwrap();
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with("hdr.x: hi"), "{out}");
    assert!(lines.contains(&"  tenant: acme"), "{out}");
    let deadline = lines
        .iter()
        .find_map(|l| l.strip_prefix("  deadline: "))
        .expect("the deadline header");
    assert!(
        !deadline.starts_with("0x") && deadline.contains('s'),
        "{out}"
    );
    let (code, out, err) = json.await.unwrap();
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["headers"]["tenant"], "acme");
    let deadline = v["headers"]["deadline"].as_str().unwrap();
    // At most the 1 s the request gave, as a person writes it ("999ms 870us").
    assert!(!deadline.starts_with("0x"), "{deadline}");
    assert!(deadline == "1s" || deadline.contains("ms"), "{deadline}");
}

/// The broker's log to a file or a pipe is plain text: no terminal colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_logs_without_colour_codes_when_not_a_terminal() {
    let mut child = Command::new(BIN)
        .args(["server", "--listen", "tcp://127.0.0.1:0", "--monitor", ""])
        .args(["--log", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut err = lines_of(child.stderr.take().unwrap());
    let line = wait_for_line(&mut err, "broker listening", || async {}).await;
    assert!(line.contains("INFO"), "{line}");
    assert!(!line.contains('\u{1b}'), "{line:?}");
}
