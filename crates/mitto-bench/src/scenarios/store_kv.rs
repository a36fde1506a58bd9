//! The engines of `store-engines`: mitto-store's segmented log, and fjall and redb behind a
//! group-commit writer thread that follows the same rule as mitto-store's own writer.

use anyhow::Context as _;
use bytes::Bytes;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The subject every record is stored under.
pub(crate) const SUBJECT: &str = "bench.x";
/// Appends in flight while filling the log for the replay.
const WINDOW: usize = 1024;
/// As mitto-store's writer: a batch holds at most this many appends, and waits at most this
/// long (and at most one sync's time) for the appenders expected back.
const MAX_BATCH: usize = 8192;
const MAX_GATHER: Duration = Duration::from_millis(2);

/// A log under test: durable appends, then a replay from the first record.
pub(crate) trait Engine: Send + Sync {
    /// Appends one record and returns once it is durable.
    fn append_acked(&self, payload: &Bytes) -> anyhow::Result<()>;
    /// Appends up to `n` records with [`WINDOW`] in flight, stopping at `until`; returns how
    /// many were stored.
    fn fill(&self, n: u64, until: Instant, payload: &Bytes) -> anyhow::Result<u64>;
    /// Reads every record from the first (each payload touched) until `until`; returns how
    /// many were read.
    fn replay(&self, until: Instant) -> anyhow::Result<u64>;
    /// Durable syncs (group commits) so far.
    fn syncs(&self) -> u64;
}

/// mitto-store, policy `always` (its default): one `fdatasync` per batch of its writer thread.
pub(crate) struct MittoStore {
    _store: mitto_store::Store,
    stream: mitto_store::Stream,
}

impl MittoStore {
    pub(crate) fn open(dir: &Path) -> anyhow::Result<MittoStore> {
        let store = mitto_store::Store::open(dir, mitto_store::StoreOptions::new())?;
        let cfg = mitto_store::StreamConfig::new("bench", ["bench.>"])
            .sync(mitto_store::SyncPolicy::Always);
        let stream = store.create_stream(cfg)?;
        Ok(MittoStore {
            _store: store,
            stream,
        })
    }
}

impl Engine for MittoStore {
    fn append_acked(&self, payload: &Bytes) -> anyhow::Result<()> {
        self.stream
            .append(SUBJECT, Bytes::new(), payload.clone())?
            .wait()?;
        Ok(())
    }

    fn fill(&self, n: u64, until: Instant, payload: &Bytes) -> anyhow::Result<u64> {
        let mut pending = VecDeque::with_capacity(WINDOW);
        let mut done = 0;
        let mut sent = 0;
        while sent < n && Instant::now() < until {
            if pending.len() >= WINDOW {
                let c: mitto_store::Completion = pending.pop_front().context("window")?;
                c.wait()?;
                done += 1;
            }
            match self.stream.append(SUBJECT, Bytes::new(), payload.clone()) {
                Ok(c) => {
                    pending.push_back(c);
                    sent += 1;
                }
                Err(mitto_store::AppendError::QueueFull) => {
                    if let Some(c) = pending.pop_front() {
                        c.wait()?;
                        done += 1;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        for c in pending {
            c.wait()?;
            done += 1;
        }
        Ok(done)
    }

    fn replay(&self, until: Instant) -> anyhow::Result<u64> {
        let mut n = 0u64;
        let mut bytes = 0usize;
        for m in self.stream.reader(mitto_store::StartAt::First) {
            let m = m?;
            bytes += m.payload().len() + m.subject().len();
            n += 1;
            if n.is_multiple_of(4096) && Instant::now() >= until {
                break;
            }
        }
        std::hint::black_box(bytes);
        Ok(n)
    }

    fn syncs(&self) -> u64 {
        self.stream.info().fsyncs
    }
}

/// A key-value engine's side: one durable commit of a batch, and a scan.
trait Kv: Send + Sync + 'static {
    fn commit(&self, batch: &[(u64, Vec<u8>)]) -> anyhow::Result<()>;
    fn replay(&self, until: Instant) -> anyhow::Result<u64>;
}

/// fjall (LSM): one `WriteBatch` per group with `PersistMode::SyncData` (the journal is
/// written and `fdatasync`ed before `commit` returns).
struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}

impl Kv for Fjall {
    fn commit(&self, batch: &[(u64, Vec<u8>)]) -> anyhow::Result<()> {
        let mut b = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        for (k, v) in batch {
            b.insert(&self.ks, k.to_be_bytes(), v.as_slice());
        }
        b.commit()?;
        Ok(())
    }

    fn replay(&self, until: Instant) -> anyhow::Result<u64> {
        let (mut n, mut bytes) = (0u64, 0usize);
        for g in self.ks.iter() {
            let (_, v) = g.into_inner()?;
            bytes += v.len();
            n += 1;
            if n.is_multiple_of(4096) && Instant::now() >= until {
                break;
            }
        }
        std::hint::black_box(bytes);
        Ok(n)
    }
}

const TABLE: redb::TableDefinition<'static, u64, &[u8]> = redb::TableDefinition::new("stream");

/// redb (copy-on-write B-tree): one write transaction per group with
/// `Durability::Immediate` (synced before `commit` returns).
struct Redb(redb::Database);

impl Kv for Redb {
    fn commit(&self, batch: &[(u64, Vec<u8>)]) -> anyhow::Result<()> {
        let mut tx = self.0.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        {
            let mut t = tx.open_table(TABLE)?;
            for (k, v) in batch {
                t.insert(*k, v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn replay(&self, until: Instant) -> anyhow::Result<u64> {
        use redb::{ReadableDatabase as _, ReadableTable as _};
        let tx = self.0.begin_read()?;
        let t = tx.open_table(TABLE)?;
        let (mut n, mut bytes) = (0u64, 0usize);
        for r in t.range(0u64..)? {
            let (_, v) = r?;
            bytes += v.value().len();
            n += 1;
            if n.is_multiple_of(4096) && Instant::now() >= until {
                break;
            }
        }
        std::hint::black_box(bytes);
        Ok(n)
    }
}

type Reply = flume::Sender<Result<u64, String>>;

/// A key-value engine behind one writer thread: it takes every queued append into one batch
/// (waiting, as mitto-store does, for as many as the last batch acknowledged plus those that
/// queued meanwhile, at most a sync's time), commits it durably once, then answers each.
pub(crate) struct GroupKv {
    kv: Arc<dyn Kv>,
    tx: Option<flume::Sender<(Vec<u8>, Reply)>>,
    syncs: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl GroupKv {
    pub(crate) fn fjall(dir: &Path) -> anyhow::Result<GroupKv> {
        let db = fjall::Database::builder(dir).open()?;
        let ks = db.keyspace("stream", fjall::KeyspaceCreateOptions::default)?;
        Ok(Self::start(Arc::new(Fjall { db, ks })))
    }

    pub(crate) fn redb(dir: &Path) -> anyhow::Result<GroupKv> {
        let db = redb::Database::create(dir.join("stream.redb"))?;
        Ok(Self::start(Arc::new(Redb(db))))
    }

    fn start(kv: Arc<dyn Kv>) -> GroupKv {
        let (tx, rx) = flume::bounded::<(Vec<u8>, Reply)>(16 * 1024);
        let syncs = Arc::new(AtomicU64::new(0));
        let (kv2, syncs2) = (kv.clone(), syncs.clone());
        let thread = std::thread::spawn(move || writer(&*kv2, &rx, &syncs2));
        GroupKv {
            kv,
            tx: Some(tx),
            syncs,
            thread: Some(thread),
        }
    }

    fn send(&self, payload: &Bytes) -> anyhow::Result<flume::Receiver<Result<u64, String>>> {
        let (done, rx) = flume::bounded(1);
        let tx = self.tx.as_ref().context("writer stopped")?;
        tx.send((kv_value(payload), done))
            .map_err(|_| anyhow::anyhow!("writer stopped"))?;
        Ok(rx)
    }
}

fn wait(rx: &flume::Receiver<Result<u64, String>>) -> anyhow::Result<()> {
    match rx.recv() {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("commit failed: {e}")),
        Err(_) => Err(anyhow::anyhow!("writer stopped")),
    }
}

impl Engine for GroupKv {
    fn append_acked(&self, payload: &Bytes) -> anyhow::Result<()> {
        wait(&self.send(payload)?)
    }

    fn fill(&self, n: u64, until: Instant, payload: &Bytes) -> anyhow::Result<u64> {
        let mut pending = VecDeque::with_capacity(WINDOW);
        let mut done = 0;
        let mut sent = 0;
        while sent < n && Instant::now() < until {
            if pending.len() >= WINDOW {
                wait(&pending.pop_front().context("window")?)?;
                done += 1;
            }
            pending.push_back(self.send(payload)?);
            sent += 1;
        }
        for rx in pending {
            wait(&rx)?;
            done += 1;
        }
        Ok(done)
    }

    fn replay(&self, until: Instant) -> anyhow::Result<u64> {
        self.kv.replay(until)
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

impl Drop for GroupKv {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer(kv: &dyn Kv, rx: &flume::Receiver<(Vec<u8>, Reply)>, syncs: &AtomicU64) {
    let mut seq = 0u64;
    let mut expect = 1usize;
    let mut sync_time = Duration::ZERO;
    while let Ok(first) = rx.recv() {
        let start = Instant::now();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let next = match rx.try_recv() {
                Ok(x) => Some(x),
                Err(_) if batch.len() < expect => {
                    rx.recv_deadline(start + sync_time.min(MAX_GATHER)).ok()
                }
                Err(_) => None,
            };
            match next {
                Some(x) => batch.push(x),
                None => break,
            }
        }
        let records: Vec<(u64, Vec<u8>)> = batch
            .iter_mut()
            .map(|(v, _)| {
                seq += 1;
                (seq, std::mem::take(v))
            })
            .collect();
        let t0 = Instant::now();
        let r = kv.commit(&records).map_err(|e| format!("{e:#}"));
        let took = t0.elapsed();
        sync_time = if sync_time.is_zero() {
            took
        } else {
            (sync_time * 7 + took) / 8
        };
        syncs.fetch_add(1, Ordering::Relaxed);
        expect = (batch.len() + rx.len()).min(MAX_BATCH);
        for ((_, done), (s, _)) in batch.into_iter().zip(records) {
            let _ = done.send(r.clone().map(|()| s));
        }
    }
}

/// What a key-value engine stores per message beside its sequence (the key): timestamp,
/// subject and payload, as a stream needs them back.
fn kv_value(payload: &[u8]) -> Vec<u8> {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut v = Vec::with_capacity(8 + 2 + SUBJECT.len() + payload.len());
    v.extend_from_slice(&ts.to_le_bytes());
    v.extend_from_slice(&(SUBJECT.len() as u16).to_le_bytes());
    v.extend_from_slice(SUBJECT.as_bytes());
    v.extend_from_slice(payload);
    v
}
