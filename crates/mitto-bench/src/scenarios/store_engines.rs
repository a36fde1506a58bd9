//! `store-engines`: the storage under mitto's durable streams, mitto-store's segmented log
//! (the `mitto` rows), beside two embedded engines from crates.io, fjall (LSM) and redb
//! (B-tree), in one process, one after the other, on the same disk.
//!
//! Durability is equal on every row: an append is acknowledged only after the `fdatasync`
//! that covers it, and concurrent appenders share syncs (group commit). mitto-store does it
//! with its own writer thread (policy `always`); fjall and redb sit behind a writer thread with
//! the same batching rule, committing each batch once: one fjall `WriteBatch` with
//! `PersistMode::SyncData`, one redb write transaction with `Durability::Immediate`.
//!
//! Workload: 128 B records under subject `bench.x`. `acked-append-1`: one appender, each
//! append waited for before the next; `acked-append-8`: eight threads doing the same (as acked
//! publishers do). Then more records are appended (many in flight, not measured) and
//! `replay` reads the whole log from the first record. Every phase stops at its count or its
//! time bound. Data goes to `MITTO_BENCH_DIR` if set, else the system's temporary folder, else
//! the current folder: the first that is not in memory (tmpfs), since there a sync costs
//! nothing.

use super::row_from;
use super::store_kv::{Engine, GroupKv, MittoStore};
use crate::config::{Config, Mode};
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport, MITTO};
use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NAME: &str = "store-engines";
/// Payload bytes per record.
pub const PAYLOAD: usize = 128;
/// Appenders of the concurrent case.
pub const WRITERS: usize = 8;
/// The systems, in the order they run: mitto (mitto-store), fjall, redb.
pub const SYSTEMS: [&str; 3] = [MITTO, "fjall", "redb"];
/// The environment variable that names the folder to write in.
pub const DIR_VAR: &str = "MITTO_BENCH_DIR";

/// One repetition of one engine.
#[derive(Default)]
struct Sample {
    one: f64,
    one_p50: f64,
    one_p99: f64,
    many: f64,
    many_p50: f64,
    many_p99: f64,
    replay: f64,
    /// Appends per sync with eight appenders.
    per_sync: f64,
}

/// Counts and time bounds: (acked appends per case, their time, records added for the
/// replay, time to add them, time to replay).
fn bounds(config: &Config) -> (u64, Duration, u64, Duration, Duration) {
    match config.mode {
        Mode::Tiny => (
            200,
            Duration::from_secs(1),
            2_000,
            Duration::from_secs(2),
            secs(5),
        ),
        Mode::Quick => (
            config.throughput_count,
            config.throughput_time,
            100_000,
            secs(5),
            secs(10),
        ),
        Mode::Full => (
            config.throughput_count,
            config.throughput_time,
            500_000,
            secs(20),
            secs(20),
        ),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let root = data_root()?;
    let mut samples: Vec<Vec<Sample>> = SYSTEMS.iter().map(|_| Vec::new()).collect();
    for rep in 0..config.reps {
        for (i, system) in SYSTEMS.iter().enumerate() {
            progress.step(format!("{NAME} rep {}/{}: {system}", rep + 1, config.reps));
            let s = one_engine(config, &root.path, system).with_context(|| system.to_string())?;
            samples[i].push(s);
        }
    }
    let mut report = ScenarioReport {
        scenario: NAME.into(),
        ..ScenarioReport::default()
    };
    for (system, s) in SYSTEMS.iter().zip(&samples) {
        let col = |f: fn(&Sample) -> f64| s.iter().map(f).collect::<Vec<f64>>();
        let cases: [(&str, Metric, Vec<f64>); 7] = [
            ("acked-append-1", Metric::MsgsPerS, col(|s| s.one)),
            ("acked-append-1", Metric::P50Us, col(|s| s.one_p50)),
            ("acked-append-1", Metric::P99Us, col(|s| s.one_p99)),
            ("acked-append-8", Metric::MsgsPerS, col(|s| s.many)),
            ("acked-append-8", Metric::P50Us, col(|s| s.many_p50)),
            ("acked-append-8", Metric::P99Us, col(|s| s.many_p99)),
            ("replay", Metric::MsgsPerS, col(|s| s.replay)),
        ];
        for (case, metric, values) in cases {
            report
                .rows
                .push(row_from(NAME, case, system, metric, PAYLOAD, &values));
        }
    }
    let per_sync: Vec<String> = SYSTEMS
        .iter()
        .zip(&samples)
        .map(|(system, s)| {
            let v: Vec<f64> = s.iter().map(|x| x.per_sync).collect();
            format!("{system} {:.1}", crate::measure::spread(&v).median)
        })
        .collect();
    report.notes.extend([
        "mitto = mitto-store's segmented log (policy always); fjall 3 (one WriteBatch per group, \
         PersistMode::SyncData) and redb 5 (one write transaction per group, \
         Durability::Immediate) behind a writer thread with mitto-store's batching rule: every \
         append acknowledged after the fdatasync that covers it, concurrent appenders sharing \
         syncs."
            .into(),
        format!(
            "appends per sync with {WRITERS} appenders (group commit; {WRITERS} at best): {}",
            per_sync.join(", ")
        ),
        format!(
            "data in {} ({}); replay reads what the acked cases and a fill wrote, page cache warm \
             for every engine alike",
            root.path.display(),
            root.fs
        ),
        "goal (issue 20): the store must carry acked publishes >= 2x JetStream (1 and 8 \
         publishers, fsync always) and replay >= 3x; a crate is used unless it cannot."
            .into(),
    ]);
    Ok(report)
}

/// A fresh folder for one engine, removed afterwards.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn one_engine(config: &Config, root: &Path, system: &str) -> anyhow::Result<Sample> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = Scratch(root.join(format!(
        "mitto-bench-store-{system}-{}-{nanos:x}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
    let engine: Box<dyn Engine> = match system {
        MITTO => Box::new(MittoStore::open(&dir.0)?),
        "fjall" => Box::new(GroupKv::fjall(&dir.0)?),
        _ => Box::new(GroupKv::redb(&dir.0)?),
    };
    let payload = Bytes::from(vec![0x5a; PAYLOAD]);
    let (count, time, fill, fill_time, replay_time) = bounds(config);
    // Warm-up: files created, first syncs done.
    for _ in 0..20 {
        engine.append_acked(&payload)?;
    }
    let (n1, one, h1) = acked(&*engine, 1, count, time, &payload)?;
    let syncs = engine.syncs();
    let (n8, many, h8) = acked(&*engine, WRITERS, count, time, &payload)?;
    let per_sync = n8 as f64 / (engine.syncs() - syncs).max(1) as f64;
    let filled = engine.fill(fill, Instant::now() + fill_time, &payload)?;
    let written = 20 + n1 + n8 + filled;
    let start = Instant::now();
    let read = engine.replay(start + replay_time)?;
    let replay = read as f64 / start.elapsed().as_secs_f64().max(1e-9);
    anyhow::ensure!(
        read == written || start.elapsed() >= replay_time,
        "replay read {read} records of {written}"
    );
    drop(engine);
    Ok(Sample {
        one,
        one_p50: h1.value_at_quantile(0.5) as f64,
        one_p99: h1.value_at_quantile(0.99) as f64,
        many,
        many_p50: h8.value_at_quantile(0.5) as f64,
        many_p99: h8.value_at_quantile(0.99) as f64,
        replay,
        per_sync,
    })
}

/// `writers` threads appending until `count` in all or `time` is up, each waiting for every
/// acknowledgement before its next append: (appends, appends/s, acknowledgement times in µs).
fn acked(
    engine: &dyn Engine,
    writers: usize,
    count: u64,
    time: Duration,
    payload: &Bytes,
) -> anyhow::Result<(u64, f64, Histogram<u64>)> {
    let per = (count / writers as u64).max(1);
    let start = Instant::now();
    let deadline = start + time;
    let results = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                sc.spawn(move || {
                    let mut h = Histogram::<u64>::new(3)?;
                    let mut n = 0u64;
                    while n < per && Instant::now() < deadline {
                        let t0 = Instant::now();
                        engine.append_acked(payload)?;
                        h.record(t0.elapsed().as_micros().max(1) as u64)?;
                        n += 1;
                    }
                    anyhow::Ok((n, h))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("appender panicked"))?)
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    let mut total = 0;
    let mut hist = Histogram::<u64>::new(3)?;
    for (n, h) in results {
        total += n;
        hist.add(h)?;
    }
    Ok((total, total as f64 / secs, hist))
}

/// The folder the engines write in, and its file system.
pub(crate) struct Root {
    pub(crate) path: PathBuf,
    pub(crate) fs: String,
}

/// `MITTO_BENCH_DIR` if set (as it is), else the first of the temporary folder and the current
/// folder whose file system is not in memory.
pub(crate) fn data_root() -> anyhow::Result<Root> {
    if let Some(dir) = std::env::var_os(DIR_VAR) {
        let path = PathBuf::from(dir);
        std::fs::create_dir_all(&path)?;
        let fs = fs_type(&path).unwrap_or_else(|| "file system unknown".into());
        return Ok(Root { path, fs });
    }
    let mut seen = Vec::new();
    for path in [std::env::temp_dir(), std::env::current_dir()?] {
        match fs_type(&path) {
            Some(fs) if in_memory(&fs) => seen.push(format!("{} is {fs}", path.display())),
            fs => {
                let fs = fs.unwrap_or_else(|| "file system unknown".into());
                return Ok(Root { path, fs });
            }
        }
    }
    anyhow::bail!(
        "no folder on a disk to write in ({}): set {DIR_VAR}",
        seen.join(", ")
    )
}

fn in_memory(fs: &str) -> bool {
    matches!(fs, "tmpfs" | "ramfs")
}

/// The type of the file system `path` is on, from the longest mount point above it in
/// `/proc/self/mounts` (None where there is no such file).
pub fn fs_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(mnt), Some(fs)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let mnt = mnt.replace("\\040", " ");
        let len = mnt.len();
        if path.starts_with(&mnt) && best.as_ref().is_none_or(|(l, _)| len >= *l) {
            best = Some((len, fs.to_owned()));
        }
    }
    best.map(|(_, fs)| fs)
}
