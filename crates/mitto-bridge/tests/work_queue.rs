//! Services on a RabbitMQ work queue: three worker processes share one queue; one is killed
//! with SIGKILL while it holds a request, and every request is still answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use mitto::{CallOptions, Client, Request, Server, Status};
use mitto_bridge::{BridgeConfig, Kind, State};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Set (to the queue URL) in the worker processes this test starts.
const WORKER: &str = "MITTO_TEST_QUEUE_WORKER";
/// Set in the one worker that holds its first request until it is killed.
const HOLD: &str = "MITTO_TEST_QUEUE_HOLD";
const SUBJECT: &str = "MITTO_TEST_QUEUE_SUBJECT";

/// The worker process (run only by `three_workers_one_killed_every_request_answered`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a worker process started by three_workers_one_killed_every_request_answered"]
async fn queue_worker_process() {
    let (Ok(url), Ok(subject)) = (std::env::var(WORKER), std::env::var(SUBJECT)) else {
        return;
    };
    let hold = std::env::var(HOLD).is_ok();
    let pid = std::process::id();
    let server = Server::new().route(&subject, move |req: Request| async move {
        if req.payload().as_ref() == b"fail" {
            return Err(mitto::Error::new(Status::BAD_REQUEST, "asked to fail"));
        }
        if hold {
            println!("HOLDING");
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(format!("{pid}:{}", String::from_utf8_lossy(req.payload())))
    });
    let _w = mitto_bridge::worker::serve(&url, server).await.unwrap();
    println!("READY");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

struct Worker {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Worker {
    fn start(url: &str, subject: &str, hold: bool) -> Worker {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "queue_worker_process",
            "--ignored",
            "--nocapture",
        ])
        .env(WORKER, url)
        .env(SUBJECT, subject)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if hold {
            cmd.env(HOLD, "1");
        }
        let mut child = cmd.spawn().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Worker { child, lines }
    }

    fn wait_line(&self, want: &str) {
        loop {
            let l = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("a worker did not print {want}"));
            if l.contains(want) {
                return;
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_one_killed_every_request_answered() {
    if !up("RabbitMQ", 5672) {
        return;
    }
    let queue = unique("mitto.test.work.");
    let url = format!("{URL}?queue={queue}&prefetch=1");
    let cfg = BridgeConfig::new("work", Kind::AmqpService, &url);
    let (broker, mitto_url) = broker(vec![cfg]).await;
    wait_for("the service to connect", || {
        snap(&broker).state == State::Up
    })
    .await;

    let holder = Worker::start(&url, &queue, true);
    let others = [
        Worker::start(&url, &queue, false),
        Worker::start(&url, &queue, false),
    ];
    for w in others.iter().chain([&holder]) {
        w.wait_line("READY");
    }

    let app = Client::connect(&mitto_url, client_opts()).await.unwrap();
    // A worker's failure comes back to the caller as its status and reason.
    let e = app
        .call_with(
            &queue,
            "fail",
            CallOptions::new().timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Status::BAD_REQUEST, "{e}");
    assert!(e.message().contains("asked to fail"), "{e}");

    const N: usize = 30;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..N {
        let (app, queue) = (app.clone(), queue.clone());
        calls.spawn(async move {
            app.call_with(
                &queue,
                i.to_string(),
                CallOptions::new().timeout(Duration::from_secs(30)),
            )
            .await
            .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        });
    }
    // The holder takes one request and keeps it; killed, it never acknowledges it.
    let holder_pid = holder.child.id();
    tokio::task::spawn_blocking(move || {
        holder.wait_line("HOLDING");
        drop(holder); // SIGKILL
    })
    .await
    .unwrap();

    let mut answered = std::collections::BTreeSet::new();
    while let Some(r) = calls.join_next().await {
        let reply = r.unwrap().expect("every request is answered");
        let (pid, i) = reply.split_once(':').unwrap();
        assert_ne!(
            pid,
            holder_pid.to_string(),
            "the killed worker answered nothing"
        );
        answered.insert(i.parse::<usize>().unwrap());
    }
    assert_eq!(
        answered,
        (0..N).collect(),
        "requests sent = requests answered"
    );
    let s = snap(&broker);
    assert_eq!(s.msgs_out as usize, N + 1, "{s:?}");
    assert_eq!(s.msgs_in as usize, N + 1, "{s:?}");

    broker.shutdown().await;
    drop(others);
    let conn = Connection::connect(URL, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}
