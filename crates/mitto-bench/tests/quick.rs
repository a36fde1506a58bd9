//! Runs every registered scenario with tiny counts and checks that each produced positive rows
//! for mitto and for every peer and floor it names. Peers that need something outside the
//! suite (the nats-server binary, the running mosquitto: `Scenario::external`) may be missing,
//! but then a note must say so. The broker scenarios run every system here, Zenoh and
//! nats-server included, each broker and client a process of its own.

mod common;

use mitto_bench::report::MITTO;
use mitto_bench::{run_scenario, Metric, Progress, REGISTRY};

#[test]
fn every_scenario_reports_every_system() {
    let config = common::tiny();
    let progress = Progress::hidden();
    for scenario in REGISTRY {
        let report = run_scenario(scenario, &config, &progress)
            .unwrap_or_else(|e| panic!("scenario {} failed: {e:#}", scenario.name));
        assert_eq!(report.scenario, scenario.name);
        assert!(
            scenario.systems.contains(&MITTO),
            "{} does not measure mitto",
            scenario.name
        );
        for system in scenario.systems {
            let rows: Vec<_> = report.rows_of(system).collect();
            if rows.is_empty() && scenario.external.contains(system) {
                assert!(
                    report
                        .notes
                        .iter()
                        .any(|n| n.starts_with(&format!("{system}: "))),
                    "{}: no row and no note for {system}",
                    scenario.name
                );
                eprintln!("{}: {system} left out (unreachable)", scenario.name);
                continue;
            }
            assert!(!rows.is_empty(), "{}: no row for {system}", scenario.name);
            for r in rows {
                // Counts of lost messages may be 0, and so may a CPU time read in clock ticks.
                let may_be_zero = matches!(r.metric, Metric::LostMsgs | Metric::CpuUsPerMsg);
                assert!(
                    (r.value > 0.0 || (may_be_zero && r.value == 0.0)) && r.value.is_finite(),
                    "{}: {system} {} {:?} = {}",
                    scenario.name,
                    r.case,
                    r.metric,
                    r.value
                );
                if *system != MITTO && !may_be_zero {
                    let ratio = report.mitto_ratio(r);
                    assert!(
                        ratio.is_some_and(|x| x > 0.0),
                        "{}: no mitto ratio for {system} {}",
                        scenario.name,
                        r.case
                    );
                }
            }
        }
        let table = mitto_bench::report::render(&report);
        assert!(table.contains(scenario.name));
    }
}

#[test]
fn codec_decode_is_zero_copy() {
    for size in mitto_bench::scenarios::codec::SIZES {
        assert!(
            mitto_bench::scenarios::codec::decode_is_zero_copy(size).unwrap_or(false),
            "decode copied a {size} B payload"
        );
    }
}

#[test]
fn bus_reports_every_system_in_both_cases_and_loses_nothing() {
    let bus = mitto_bench::find("bus").unwrap_or_else(|| panic!("bus is registered"));
    let report = run_scenario(bus, &common::tiny(), &Progress::hidden())
        .unwrap_or_else(|e| panic!("bus failed: {e:#}"));
    for (case, _) in mitto_bench::scenarios::bus::CASES {
        for system in bus.systems {
            let row = report
                .rows
                .iter()
                .find(|r| r.case == case && r.system == *system)
                .unwrap_or_else(|| panic!("bus: no {case} row for {system}"));
            assert_eq!(
                row.payload_bytes,
                mitto_bench::scenarios::bus::PAYLOAD as u64
            );
            assert!(row.value > 0.0, "bus {case} {system}: {}", row.value);
        }
    }
    // The run fails on a short count; the note also states the broker dropped nothing.
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.contains("slow_consumer_drops: 0")),
        "{:?}",
        report.notes
    );
}

#[test]
fn json_has_the_documented_fields() {
    let report = run_scenario(
        mitto_bench::find("codec").unwrap_or_else(|| panic!("codec is registered")),
        &common::tiny(),
        &Progress::hidden(),
    )
    .unwrap_or_else(|e| panic!("codec failed: {e:#}"));
    let dir = std::env::temp_dir().join(format!("mitto-bench-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("out.json");
    mitto_bench::Results::new(Some("T".into()), &common::tiny(), &[report])
        .write(&path)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["run"], "T");
    assert_eq!(v["mode"], "tiny");
    assert_eq!(v["reconstructed"], false);
    assert_eq!(v["scenarios"][0], "codec");
    assert!(v["date"]
        .as_str()
        .is_some_and(|d| d.ends_with('Z') && d.len() == 20));
    assert!(v["machine"]["cpus"].as_u64().is_some_and(|n| n > 0));
    assert!(v["machine"]["rustc"]
        .as_str()
        .is_some_and(|r| r.starts_with("rustc ")));
    // The tests run in a git checkout.
    assert!(
        v["commit"].as_str().is_some_and(|c| c.len() == 40),
        "{}",
        v["commit"]
    );
    let rows = v["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows array"));
    assert!(!rows.is_empty());
    for r in rows {
        for key in [
            "scenario",
            "case",
            "system",
            "metric",
            "value",
            "unit",
            "payload_bytes",
            "min",
            "max",
            "reps",
        ] {
            assert!(r.get(key).is_some(), "missing {key} in {r}");
        }
        let metric = r["metric"].as_str().unwrap_or_default();
        assert!(
            [
                "msgs_per_s",
                "p50_us",
                "p99_us",
                "ns_per_op",
                "bytes_per_s",
                "bytes_per_conn",
                "cpu_us_per_msg",
                "lost_msgs"
            ]
            .contains(&metric),
            "{metric}"
        );
    }
}

#[test]
fn only_names_a_system_of_a_scenario_run_or_is_refused() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mitto-bench"))
            .args(args)
            .output()
            .expect("mitto-bench runs")
    };
    let out = run(&["rpc-throughput", "--tiny", "--only", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--only nope") && err.contains("protosocket-rpc"),
        "{err}"
    );
    let out = run(&["codec", "--tiny", "--only", "mitto"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rpc-throughput, pubsub, fanout, reqrep"),
        "{err}"
    );
    let out = run(&["reqrep", "--tiny", "--only", "tonic"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--only tonic") && err.contains("zenoh-peer"),
        "{err}"
    );
    let out = run(&["rpc-throughput", "--tiny", "--only", "mitto"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("pipelined-256  mitto"), "{table}");
    assert!(!table.contains("protosocket-rpc  32 B"), "{table}");
}
