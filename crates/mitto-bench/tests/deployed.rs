//! The deployed layout with mitto's systems: `mitto server` and the embedded broker, each
//! client a process of its own. Every message is counted (nothing may be lost with the block
//! policy, and every loss is accounted for), and every system reports CPU time per message.
//! Counts are large enough that the CPU time, read in clock ticks from /proc, cannot round to
//! nothing.

mod common;

use mitto_bench::report::{Row, MITTO};
use mitto_bench::{find, run_scenario, Metric, Progress, ScenarioReport};
use std::time::Duration;

fn config(only: &[&str]) -> mitto_bench::Config {
    let mut c = common::tiny().with_only(only);
    c.throughput_count = 20_000;
    c.throughput_time = Duration::from_secs(20);
    c.latency_count = 2_000;
    c.latency_time = Duration::from_secs(20);
    // Nothing is lost with the block policy; however slow the machine, a pause in deliveries
    // must not pass for a loss.
    c.stall = Duration::from_secs(10);
    c
}

fn run(name: &str, only: &[&str]) -> ScenarioReport {
    let s = find(name).unwrap_or_else(|| panic!("{name} is registered"));
    run_scenario(s, &config(only), &Progress::hidden())
        .unwrap_or_else(|e| panic!("{name} failed: {e:#}"))
}

fn row<'a>(r: &'a ScenarioReport, system: &str, metric: Metric, size: u64) -> &'a Row {
    r.rows
        .iter()
        .find(|x| x.system == system && x.metric == metric && x.payload_bytes == size)
        .unwrap_or_else(|| panic!("{}: no {metric:?} row for {system} at {size} B", r.scenario))
}

/// The delivery note's `SYSTEM SIZE B delivered of expected` for one system and size.
fn delivered(r: &ScenarioReport, system: &str, size: u64) -> (u64, u64) {
    let note = r
        .notes
        .iter()
        .find(|n| n.starts_with("delivered / published"))
        .unwrap_or_else(|| panic!("no delivery note in {:?}", r.notes));
    let key = format!("{system} {size} B ");
    let at = [": ", "; "]
        .iter()
        .find_map(|sep| {
            note.find(&format!("{sep}{key}"))
                .map(|i| i + sep.len() + key.len())
        })
        .unwrap_or_else(|| panic!("{key} not in {note}"));
    let words: Vec<&str> = note[at..].split_whitespace().take(3).collect();
    let num = |w: &str| w.replace(',', "").parse::<u64>().unwrap_or(u64::MAX);
    (num(words[0]), num(words[2]))
}

#[test]
fn pubsub_and_fanout_count_every_message_with_cpu_per_message() {
    let systems = ["mitto", "mitto-block", "mitto-embedded"];
    for (name, sizes, subscribers) in [
        ("pubsub", &[16u64, 128][..], 1u64),
        ("fanout", &[16][..], 10),
    ] {
        let r = run(name, &systems);
        for system in systems {
            for &size in sizes {
                let rate = row(&r, system, Metric::MsgsPerS, size);
                assert!(rate.value > 0.0, "{name} {system} {size} B: {}", rate.value);
                let cpu = row(&r, system, Metric::CpuUsPerMsg, size);
                assert!(
                    cpu.value > 0.0 && cpu.value.is_finite(),
                    "{name} {system} {size} B CPU: {}",
                    cpu.value
                );
                let lost = row(&r, system, Metric::LostMsgs, size).value as u64;
                let (got, expected) = delivered(&r, system, size);
                // Each of 20,000 messages (unless the time bound cut a burst) to each subscriber.
                assert!(
                    expected > 0 && expected <= 20_000 * subscribers,
                    "{expected}"
                );
                assert_eq!(got + lost, expected, "{name} {system} {size} B");
                if system != MITTO {
                    // The block policy: a full subscription holds the publisher, nothing drops.
                    assert_eq!(lost, 0, "{name} {system} {size} B lost {lost}");
                }
            }
        }
        // Only the systems asked for ran.
        assert!(r.rows.iter().all(|x| systems.contains(&x.system.as_str())));
    }
}

#[test]
fn reqrep_reports_latency_and_cpu_per_round_trip() {
    let systems = ["mitto", "mitto-busy-poll", "mitto-embedded"];
    let r = run("reqrep", &systems);
    for system in systems {
        let p50 = row(&r, system, Metric::P50Us, 32).value;
        let p99 = row(&r, system, Metric::P99Us, 32).value;
        assert!(p50 > 0.0 && p99 >= p50, "{system}: p50 {p50} p99 {p99}");
        assert!(row(&r, system, Metric::MsgsPerS, 32).value > 0.0);
        let cpu = row(&r, system, Metric::CpuUsPerMsg, 32).value;
        assert!(cpu > 0.0 && cpu.is_finite(), "{system} CPU {cpu}");
    }
    assert!(r
        .notes
        .iter()
        .any(|n| n.starts_with("goal: mitto / nats p50 µs ≤ 0.6x")));
}

#[test]
fn a_child_that_cannot_connect_says_why() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mitto-bench"))
        .args([
            "child",
            "pub",
            "--system",
            "mitto",
            "--url",
            "tcp://127.0.0.1:1",
            "--subject",
            "x",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("mitto-bench runs: {e}"));
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("error "), "{stdout}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mitto-bench"))
        .args([
            "child",
            "pub",
            "--system",
            "carrier-pigeon",
            "--subject",
            "x",
        ])
        .output()
        .unwrap_or_else(|e| panic!("mitto-bench runs: {e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("carrier-pigeon"));
}
