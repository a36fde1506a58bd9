//! The storage choice, measured: mitto-store's segmented log beside fjall and redb behind the
//! same group-commit writer thread, for the streams workload (128 B acknowledged appends under
//! fsync-always, 1 and 8 concurrent appenders; replay of the whole log).
//!
//! `cargo bench -p mitto-store --bench storage_choice` (add `-- --quick` for a smoke run).
//! Set `MITTO_STORE_BENCH_DIR` to measure on another disk (default: the system temp folder).
//! All three run in one process, one after the other, on the same disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mitto_store::{StartAt, Store, StoreOptions, StreamConfig};

const PAYLOAD: usize = 128;
const SUBJECT: &str = "bench.x";

/// A key-value engine behind the group-commit writer: one durable commit per batch.
trait Engine: Send + Sync + 'static {
    fn commit(&self, batch: &[(u64, Vec<u8>)]);
    /// Reads every record back; returns (records, payload bytes).
    fn replay(&self) -> (u64, u64);
}

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let db = fjall::Database::builder(dir).open().unwrap();
        let ks = db
            .keyspace("stream", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        Fjall { db, ks }
    }
}

impl Engine for Fjall {
    fn commit(&self, batch: &[(u64, Vec<u8>)]) {
        let mut b = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        for (k, v) in batch {
            b.insert(&self.ks, k.to_be_bytes(), v.as_slice());
        }
        b.commit().unwrap();
    }

    fn replay(&self) -> (u64, u64) {
        let (mut n, mut bytes) = (0, 0);
        for g in self.ks.iter() {
            let (_, v) = g.into_inner().unwrap();
            n += 1;
            bytes += v.len() as u64;
        }
        (n, bytes)
    }
}

const TABLE: redb::TableDefinition<'static, u64, &[u8]> = redb::TableDefinition::new("stream");

struct Redb(redb::Database);

impl Engine for Redb {
    fn commit(&self, batch: &[(u64, Vec<u8>)]) {
        let mut tx = self.0.begin_write().unwrap();
        tx.set_durability(redb::Durability::Immediate).unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for (k, v) in batch {
                t.insert(*k, v.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    fn replay(&self) -> (u64, u64) {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.0.begin_read().unwrap();
        let t = tx.open_table(TABLE).unwrap();
        let (mut n, mut bytes) = (0, 0);
        for r in t.range(0u64..).unwrap() {
            let (_, v) = r.unwrap();
            n += 1;
            bytes += v.value().len() as u64;
        }
        (n, bytes)
    }
}

/// The same writer-thread group commit mitto-store uses, in front of an engine.
struct GroupWriter {
    tx: flume::Sender<(Vec<u8>, flume::Sender<u64>)>,
}

impl GroupWriter {
    fn start(engine: Arc<dyn Engine>) -> Self {
        let (tx, rx) = flume::bounded::<(Vec<u8>, flume::Sender<u64>)>(16 * 1024);
        std::thread::spawn(move || {
            let mut seq = 0u64;
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < 8192 {
                    match rx.try_recv() {
                        Ok(x) => batch.push(x),
                        Err(_) => break,
                    }
                }
                let records: Vec<(u64, Vec<u8>)> = batch
                    .iter_mut()
                    .map(|(v, _)| {
                        seq += 1;
                        (seq, std::mem::take(v))
                    })
                    .collect();
                engine.commit(&records);
                for ((_, done), (s, _)) in batch.into_iter().zip(records) {
                    let _ = done.send(s);
                }
            }
        });
        GroupWriter { tx }
    }

    fn append(&self, value: Vec<u8>) -> flume::Receiver<u64> {
        let (done, rx) = flume::bounded(1);
        self.tx.send((value, done)).unwrap();
        rx
    }
}

/// What a key-value engine stores per message: timestamp, subject, payload.
fn kv_value(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + 2 + SUBJECT.len() + payload.len());
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&(SUBJECT.len() as u16).to_le_bytes());
    v.extend_from_slice(SUBJECT.as_bytes());
    v.extend_from_slice(payload);
    v
}

enum Subject {
    Log(mitto_store::Stream),
    Kv(GroupWriter, Arc<dyn Engine>),
}

impl Subject {
    fn append_wait(&self, payload: &Bytes) {
        match self {
            Subject::Log(s) => {
                s.append(SUBJECT, Bytes::new(), payload.clone())
                    .unwrap()
                    .wait()
                    .unwrap();
            }
            Subject::Kv(w, _) => {
                w.append(kv_value(payload)).recv().unwrap();
            }
        }
    }

    /// Appends `n` without waiting for each, then waits for all.
    fn append_burst(&self, n: usize, payload: &Bytes) {
        match self {
            Subject::Log(s) => {
                let mut pending = Vec::with_capacity(1024);
                for _ in 0..n {
                    loop {
                        match s.append(SUBJECT, Bytes::new(), payload.clone()) {
                            Ok(c) => break pending.push(c),
                            Err(_) => {
                                for c in pending.drain(..) {
                                    c.wait().unwrap();
                                }
                            }
                        }
                    }
                }
                for c in pending {
                    c.wait().unwrap();
                }
            }
            Subject::Kv(w, _) => {
                let done: Vec<_> = (0..n).map(|_| w.append(kv_value(payload))).collect();
                for d in done {
                    d.recv().unwrap();
                }
            }
        }
    }

    fn replay(&self) -> (u64, u64) {
        match self {
            Subject::Log(s) => {
                let (mut n, mut bytes) = (0, 0);
                for m in s.reader(StartAt::First) {
                    let m = m.unwrap();
                    n += 1;
                    bytes += (m.payload().len() + m.subject().len() + 8) as u64;
                }
                (n, bytes)
            }
            Subject::Kv(_, e) => e.replay(),
        }
    }
}

fn open(kind: &str, dir: &Path) -> (Subject, Option<Store>) {
    match kind {
        "mitto-store" => {
            let store = Store::open(dir, StoreOptions::new()).unwrap();
            let s = store
                .create_stream(StreamConfig::new("bench", ["bench.>"]))
                .unwrap();
            (Subject::Log(s), Some(store))
        }
        "fjall" => {
            let e: Arc<dyn Engine> = Arc::new(Fjall::open(dir));
            (Subject::Kv(GroupWriter::start(e.clone()), e), None)
        }
        _ => {
            let db = redb::Database::create(dir.join("stream.redb")).unwrap();
            let e: Arc<dyn Engine> = Arc::new(Redb(db));
            (Subject::Kv(GroupWriter::start(e.clone()), e), None)
        }
    }
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (one, each8, replay_n) = if quick {
        (200, 50, 20_000)
    } else {
        (3_000, 1_000, 300_000)
    };
    let base = std::env::var_os("MITTO_STORE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let payload = Bytes::from(vec![0x5a; PAYLOAD]);
    println!(
        "128 B acked appends, fsync per commit (group commit), then replay of {replay_n} records"
    );
    println!(
        "{:<12} {:>14} {:>14} {:>16}",
        "engine", "1 appender/s", "8 appenders/s", "replay msgs/s"
    );
    for kind in ["mitto-store", "fjall", "redb"] {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let (subject, _store) = open(kind, dir.path());
        let t = Instant::now();
        for _ in 0..one {
            subject.append_wait(&payload);
        }
        let r1 = rate(one as u64, t.elapsed());
        let t = Instant::now();
        std::thread::scope(|sc| {
            for _ in 0..8 {
                sc.spawn(|| {
                    for _ in 0..each8 {
                        subject.append_wait(&payload);
                    }
                });
            }
        });
        let r8 = rate(8 * each8 as u64, t.elapsed());
        subject.append_burst(replay_n, &payload);
        let t = Instant::now();
        let (n, _) = subject.replay();
        let rr = rate(n, t.elapsed());
        assert_eq!(n, (one + 8 * each8 + replay_n) as u64);
        println!("{kind:<12} {r1:>14.0} {r8:>14.0} {rr:>16.0}");
    }
}
