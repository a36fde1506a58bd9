//! `kill -9` in a loop: a child process appends from four threads and prints each append whose
//! completion fired; it is killed at a random moment, the stream is reopened, and every
//! acknowledged append must be there, in order per appender.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

const CHILD_DIR: &str = "MITTO_STORE_CRASH_DIR";
const CHILD_ROUND: &str = "MITTO_STORE_CRASH_ROUND";
const APPENDERS: usize = 4;

fn stream_cfg() -> mitto_store::StreamConfig {
    cfg("k").segment_size(64 * 1024)
}

/// The child: appends until killed (or 10 s pass).
#[test]
#[ignore = "the child process of kill9_loses_no_acknowledged_append"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let store = open(std::path::Path::new(&dir));
    let s = store.create_stream(stream_cfg()).unwrap();
    let out = std::sync::Mutex::new(std::io::stdout());
    let until = Instant::now() + Duration::from_secs(10);
    std::thread::scope(|sc| {
        for a in 0..APPENDERS {
            let (s, out) = (&s, &out);
            sc.spawn(move || {
                let mut i = 0u64;
                while Instant::now() < until {
                    let p = Bytes::from(format!("{round}:{a}:{i}"));
                    let seq = match s.append("k.x", Bytes::new(), p) {
                        Ok(c) => c.wait().unwrap().seq,
                        Err(_) => continue, // queue full
                    };
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {round} {a} {i} {seq}").unwrap();
                    o.flush().unwrap();
                    i += 1;
                }
            });
        }
    });
}

/// A small xorshift for kill times (no dependency; determinism does not matter).
fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn kill9_loses_no_acknowledged_append() {
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut rng = started.elapsed().as_nanos() as u64 | 1;
    let mut acked_total = 0usize;
    let mut rounds = 0u64;
    // At least 20 kills; more while time allows, at most 30 or ~20 s.
    while rounds < 20 || (rounds < 30 && started.elapsed() < Duration::from_secs(20)) {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_ROUND, rounds.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter(|l| l.starts_with("ack "))
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(30 + next_rand(&mut rng) % 170));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = lines.join().unwrap();

        let store = open(dir.path());
        let s = store.stream("k").expect("the stream survives");
        let mut last_seq = [0u64; APPENDERS];
        for l in &lines {
            let f: Vec<u64> = l[4..].split(' ').map(|x| x.parse().unwrap()).collect();
            let (round, a, i, seq) = (f[0], f[1] as usize, f[2], f[3]);
            let m = s
                .get(seq)
                .unwrap()
                .unwrap_or_else(|| panic!("round {rounds}: acknowledged seq {seq} lost"));
            assert_eq!(
                m.payload(),
                format!("{round}:{a}:{i}").as_bytes(),
                "seq {seq}"
            );
            assert!(seq > last_seq[a], "appender {a} out of order");
            last_seq[a] = seq;
        }
        // Whatever was torn is cut, and the stream takes appends again.
        assert_eq!(s.recovery().damaged_ranges, 0, "{:?}", s.recovery());
        acked_total += lines.len();
        rounds += 1;
    }
    assert!(rounds >= 20);
    assert!(acked_total > 0, "no append was acknowledged before a kill");
    eprintln!("{rounds} kills, {acked_total} acknowledged appends all found");
}
