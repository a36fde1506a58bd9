//! `store-engines` alone, tiny: every engine stores and replays what it acknowledged (the
//! scenario fails on a short replay), and every case has its rows and its ratio to mitto-store.

use mitto_bench::scenarios::store_engines::{fs_type, SYSTEMS, WRITERS};
use mitto_bench::{run_scenario, Config, Metric, Progress};

#[test]
fn store_engines_reports_every_engine_and_case() {
    let scenario = mitto_bench::find("store-engines").unwrap_or_else(|| panic!("registered"));
    let report = run_scenario(scenario, &Config::tiny(), &Progress::hidden())
        .unwrap_or_else(|e| panic!("store-engines failed: {e:#}"));
    let cases = [
        ("acked-append-1", Metric::MsgsPerS),
        ("acked-append-1", Metric::P50Us),
        ("acked-append-1", Metric::P99Us),
        ("acked-append-8", Metric::MsgsPerS),
        ("acked-append-8", Metric::P50Us),
        ("acked-append-8", Metric::P99Us),
        ("replay", Metric::MsgsPerS),
    ];
    for system in SYSTEMS {
        for (case, metric) in cases {
            let row = report
                .rows
                .iter()
                .find(|r| r.system == system && r.case == case && r.metric == metric)
                .unwrap_or_else(|| panic!("no {case} {metric:?} row for {system}"));
            assert!(row.value > 0.0 && row.value.is_finite(), "{row:?}");
            assert_eq!(row.payload_bytes, 128);
            if system != "mitto" {
                assert!(report.mitto_ratio(row).is_some_and(|x| x > 0.0), "{row:?}");
            }
        }
    }
    let per_sync = report
        .notes
        .iter()
        .find(|n| n.starts_with(&format!("appends per sync with {WRITERS} appenders")))
        .unwrap_or_else(|| panic!("no group-commit note: {:?}", report.notes));
    for system in SYSTEMS {
        assert!(per_sync.contains(&format!("{system} ")), "{per_sync}");
    }
    let table = mitto_bench::report::render(&report);
    assert!(table.contains("store-engines  replay"), "{table}");
}

#[test]
fn the_file_system_of_a_folder_is_read_from_the_mount_table() {
    if !std::path::Path::new("/proc/self/mounts").exists() {
        return;
    }
    assert_eq!(
        fs_type(std::path::Path::new("/proc/self")).as_deref(),
        Some("proc")
    );
    assert!(fs_type(&std::env::temp_dir()).is_some());
}
