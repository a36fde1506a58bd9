//! A stream: the handle the broker appends to and reads from.

mod dedup;
mod reader;
mod state;
mod waiters;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use dedup::{MAX_MSG_IDS, MSG_ID_HEADER};
pub use reader::{Reader, StartAt};
use state::Shared;
pub use waiters::SeqWaiter;
use waiters::Waiters;
use writer::{AppendReq, Cmd, Writer};

use crate::clock::Clock;
use crate::config::StreamConfig;
use crate::error::{AppendError, Result, StoreError};
use crate::fs::{read_small, write_atomic, StoreFs};
use crate::record::{self, StoredMessage};
use crate::segment::{self, ScanReport, Segment};

/// Where an append went: its sequence and the timestamp stored with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The message's sequence number.
    pub seq: u64,
    /// The time stored with it (ns since the Unix epoch).
    pub timestamp_ns: u64,
    /// The append repeated the message id of one stored within the duplicate window: `seq`
    /// and `timestamp_ns` are that one's, and nothing new was stored.
    pub duplicate: bool,
}

/// Fires once an append is stored as the stream's [`SyncPolicy`](crate::SyncPolicy) says
/// (after its fsync under `Always`), or with the reason it was not.
#[derive(Debug)]
#[must_use = "an append is acknowledged only once its completion fires"]
pub struct Completion {
    rx: flume::Receiver<Result<Appended, AppendError>>,
}

impl Completion {
    /// Blocks until the append is stored or refused.
    pub fn wait(self) -> Result<Appended, AppendError> {
        self.rx.recv().unwrap_or(Err(StoreError::Closed.into()))
    }

    /// Waits without blocking a thread (from async code).
    pub async fn wait_async(self) -> Result<Appended, AppendError> {
        self.rx
            .recv_async()
            .await
            .unwrap_or(Err(StoreError::Closed.into()))
    }

    /// The outcome if it is known already.
    pub fn try_result(&self) -> Option<Result<Appended, AppendError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(flume::TryRecvError::Empty) => None,
            Err(flume::TryRecvError::Disconnected) => Some(Err(StoreError::Closed.into())),
        }
    }
}

/// What recovery found when a stream was opened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files opened.
    pub segments: usize,
    /// Records found intact.
    pub records: u64,
    /// Bytes cut from the end of the last segment (a write torn by a crash: never acknowledged
    /// under `SyncPolicy::Always`).
    pub truncated_bytes: u64,
    /// Damaged stretches skipped inside segments (each logged).
    pub damaged_ranges: u64,
    /// Bytes in those stretches.
    pub damaged_bytes: u64,
    /// Sequence numbers missing between intact records (lost to damage).
    pub missing_seqs: u64,
    /// Segment files removed because a crash tore them while they were created (no records).
    pub removed_files: Vec<PathBuf>,
    /// Segment files without a usable header, renamed to `*.damaged` and left for an operator.
    pub quarantined_files: Vec<PathBuf>,
}

impl RecoveryReport {
    /// Whether recovery found nothing to repair.
    pub fn is_clean(&self) -> bool {
        self.truncated_bytes == 0
            && self.damaged_ranges == 0
            && self.removed_files.is_empty()
            && self.quarantined_files.is_empty()
    }
}

/// A stream's counts and counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamInfo {
    /// Messages kept.
    pub msgs: u64,
    /// Their bytes as stored.
    pub bytes: u64,
    /// The first kept sequence (`last_seq + 1` when empty).
    pub first_seq: u64,
    /// The last sequence stored (0 before the first).
    pub last_seq: u64,
    /// Timestamp of the first kept message (0 when empty).
    pub first_ts: u64,
    /// Timestamp of the last message stored.
    pub last_ts: u64,
    /// Segment files.
    pub segments: usize,
    /// Appends stored since open.
    pub appended: u64,
    /// Appends refused by a write or sync error since open.
    pub append_errors: u64,
    /// Appends refused because the stream was full (discard new).
    pub rejected_full: u64,
    /// Appends not stored because their message id repeated one within the duplicate window.
    pub duplicates: u64,
    /// Messages removed by retention or purge since open.
    pub removed: u64,
    /// Segment fsyncs since open (group commit: far fewer than appends).
    pub fsyncs: u64,
    /// Write batches since open.
    pub batches: u64,
    /// Whether a failed sync stopped the stream's writes (reopen it).
    pub failed: bool,
}

/// How the store opens streams.
#[derive(Clone)]
pub(crate) struct Env {
    pub(crate) fs: Arc<dyn StoreFs>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) queue_depth: usize,
    pub(crate) queue_bytes: u64,
}

pub(crate) struct Inner {
    pub(crate) cfg: StreamConfig,
    pub(crate) dir: PathBuf,
    pub(crate) seg_dir: PathBuf,
    pub(crate) env: Env,
    shared: Arc<RwLock<Shared>>,
    tx: flume::Sender<Cmd>,
    writer: Mutex<Option<JoinHandle<()>>>,
    queued_bytes: Arc<AtomicU64>,
    waiters: Waiters,
    recovery: RecoveryReport,
    pub(crate) open_consumers: Mutex<HashSet<String>>,
}

impl Inner {
    pub(crate) fn shared(&self) -> RwLockReadGuard<'_, Shared> {
        self.shared.read().unwrap_or_else(|e| e.into_inner())
    }

    fn call<T>(&self, make: impl FnOnce(writer::Reply<T>) -> Cmd) -> Result<T> {
        let (tx, rx) = flume::bounded(1);
        self.tx.send(make(tx)).map_err(|_| StoreError::Closed)?;
        rx.recv().unwrap_or(Err(StoreError::Closed))
    }

    fn close(&self) -> Result<()> {
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(handle) = handle else {
            return Ok(());
        };
        let r = self.call(|done| Cmd::Close { done });
        let _ = handle.join();
        match r {
            Err(StoreError::Closed) => Ok(()),
            r => r,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// A durable stream: a cheap handle to clone and share between threads. The last handle (and
/// the last [`Reader`] and [`Consumer`](crate::Consumer)) closing stops its writer thread.
#[derive(Clone)]
pub struct Stream {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("name", &self.inner.cfg.name)
            .finish_non_exhaustive()
    }
}

/// The stream's metadata file: its configuration and the purge floor.
#[derive(Serialize, Deserialize)]
pub(crate) struct MetaFile {
    pub(crate) config: StreamConfig,
    #[serde(default)]
    pub(crate) floor: u64,
}

pub(crate) const META_FILE: &str = "stream.json";
const SEGMENTS: &str = "segments";

pub(crate) fn write_meta(
    fs: &dyn StoreFs,
    dir: &Path,
    cfg: &StreamConfig,
    floor: u64,
) -> Result<()> {
    let path = dir.join(META_FILE);
    let meta = MetaFile {
        config: cfg.clone(),
        floor,
    };
    let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| StoreError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_atomic(fs, &path, &bytes).map_err(|e| StoreError::io("write stream metadata", path, e))
}

pub(crate) fn read_meta(fs: &dyn StoreFs, dir: &Path) -> Result<MetaFile> {
    let path = dir.join(META_FILE);
    let bytes = read_small(fs, &path, 1 << 20)
        .map_err(|e| StoreError::io("read stream metadata", &path, e))?;
    let meta: MetaFile = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    meta.config.validate()?;
    Ok(meta)
}

impl Stream {
    /// Opens the stream in `dir` (its metadata written already), recovering its segments.
    pub(crate) fn open(dir: &Path, cfg: StreamConfig, floor: u64, env: Env) -> Result<Stream> {
        let fs = &*env.fs;
        let seg_dir = dir.join(SEGMENTS);
        fs.create_dir_all(&seg_dir)
            .map_err(|e| StoreError::io("create folder", &seg_dir, e))?;
        let mut bases: Vec<u64> = fs
            .list(&seg_dir)
            .map_err(|e| StoreError::io("list segments", &seg_dir, e))?
            .iter()
            .filter_map(|n| segment::parse_name(n))
            .collect();
        bases.sort_unstable();
        let mut report = RecoveryReport::default();
        let mut scan = ScanReport::default();
        let mut segs: Vec<Segment> = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            let path = seg_dir.join(segment::file_name(base));
            let is_last = i + 1 == bases.len();
            let seg = Segment::recover(fs, &path, cfg.max_record_size, is_last, &mut scan)?;
            let follows = |s: &Segment| segs.last().is_none_or(|p| s.base_seq > p.last_seq);
            match seg {
                Some(s) if s.base_seq == base && follows(&s) => segs.push(s),
                _ => {
                    let len = fs.open(&path, false).and_then(|f| f.size()).unwrap_or(0);
                    if is_last && len <= segment::HEADER_LEN as u64 {
                        // Torn while being created: it never held a record.
                        fs.remove_file(&path)
                            .map_err(|e| StoreError::io("remove segment", &path, e))?;
                        report.removed_files.push(path);
                    } else {
                        let to = path.with_extension("damaged");
                        tracing::error!(segment = %path.display(), "segment without a usable header set aside");
                        fs.rename(&path, &to)
                            .map_err(|e| StoreError::io("set segment aside", &path, e))?;
                        report.quarantined_files.push(to);
                    }
                }
            }
        }
        report.segments = segs.len();
        report.records = segs.iter().map(|s| s.msgs).sum();
        report.truncated_bytes = scan.truncated_bytes;
        report.damaged_ranges = scan.damaged_ranges;
        report.damaged_bytes = scan.damaged_bytes;
        report.missing_seqs = scan.missing_seqs;
        if segs.is_empty() {
            let base = floor.max(bases.last().copied().unwrap_or(1)).max(1);
            segs.push(Segment::create(fs, &seg_dir, base)?);
        }
        let mut shared = Shared::new(segs, floor);
        let delete = shared
            .enforce(&cfg.retention, env.clock.now_ns())
            .map_err(|e| StoreError::io("read segment", &seg_dir, e))?;
        for p in delete {
            fs.remove_file(&p)
                .map_err(|e| StoreError::io("remove segment", &p, e))?;
        }
        if !report.is_clean() {
            tracing::warn!(stream = %cfg.name, ?report, "stream recovered with repairs");
        }
        let shared = Arc::new(RwLock::new(shared));
        let (tx, rx) = flume::bounded(env.queue_depth.max(1));
        let queued_bytes = Arc::new(AtomicU64::new(0));
        let waiters = Waiters::default();
        let w = Writer::new(
            cfg.clone(),
            &env,
            seg_dir.clone(),
            shared.clone(),
            rx,
            queued_bytes.clone(),
            waiters.clone(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("mitto-store-{}", cfg.name))
            .spawn(move || w.run())
            .map_err(|e| StoreError::io("start writer thread", dir, e))?;
        let stream = Stream {
            inner: Arc::new(Inner {
                cfg,
                dir: dir.to_owned(),
                seg_dir,
                env,
                shared,
                tx,
                writer: Mutex::new(Some(handle)),
                queued_bytes,
                waiters,
                recovery: report,
                open_consumers: Mutex::new(HashSet::new()),
            }),
        };
        stream.remember_ids()?;
        Ok(stream)
    }

    /// Gives the writer the message ids of the records within the duplicate window, so that a
    /// publisher retrying across a restart is still recognised. Runs before the stream is
    /// handed out: no append can come first.
    fn remember_ids(&self) -> Result<()> {
        let cfg = &self.inner.cfg;
        if cfg.duplicate_window.is_zero() {
            return Ok(());
        }
        let window = u64::try_from(cfg.duplicate_window.as_nanos()).unwrap_or(u64::MAX);
        let from = self.inner.env.clock.now_ns().saturating_sub(window);
        let mut r = self.reader(StartAt::Time(from));
        let mut ids = Vec::new();
        while let Some(m) = r.next_message()? {
            if let Some(id) = dedup::msg_id(&m.headers_bytes()) {
                ids.push((id, m.seq, m.timestamp_ns));
            }
        }
        // The table keeps the newest ones anyway.
        let skip = ids.len().saturating_sub(MAX_MSG_IDS);
        ids.drain(..skip);
        if !ids.is_empty() {
            self.inner
                .tx
                .send(Cmd::Remember(ids))
                .map_err(|_| StoreError::Closed)?;
        }
        Ok(())
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    /// Its configuration.
    pub fn config(&self) -> &StreamConfig {
        &self.inner.cfg
    }

    /// What recovery repaired when it was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// Queues one message; the [`Completion`] fires once it is stored. Never blocks: a full
    /// queue (by count or bytes) is [`AppendError::QueueFull`]. `headers` is the encoded headers
    /// block, kept as it is.
    pub fn append(
        &self,
        subject: &str,
        headers: Bytes,
        payload: Bytes,
    ) -> Result<Completion, AppendError> {
        let cfg = &self.inner.cfg;
        if mitto_proto::Subject::literal(subject).is_err() || !cfg.captures(subject) {
            return Err(AppendError::SubjectNotCaptured(subject.to_owned()));
        }
        let size = record::stored_size(subject.len(), headers.len(), payload.len());
        let limit = cfg
            .retention
            .max_bytes
            .unwrap_or(u64::MAX)
            .min(u64::from(cfg.max_record_size));
        if size > limit || headers.len() > u32::MAX as usize {
            return Err(AppendError::TooLarge { size, limit });
        }
        let queued = &self.inner.queued_bytes;
        if queued.fetch_add(size, Ordering::Relaxed) + size > self.inner.env.queue_bytes {
            queued.fetch_sub(size, Ordering::Relaxed);
            return Err(AppendError::QueueFull);
        }
        let id = if cfg.duplicate_window.is_zero() {
            None
        } else {
            dedup::msg_id(&headers)
        };
        let (done, rx) = flume::bounded(1);
        let req = AppendReq {
            subject: Bytes::copy_from_slice(subject.as_bytes()),
            headers,
            payload,
            size,
            id,
            done,
        };
        match self.inner.tx.try_send(Cmd::Append(req)) {
            Ok(()) => Ok(Completion { rx }),
            Err(e) => {
                queued.fetch_sub(size, Ordering::Relaxed);
                Err(match e {
                    flume::TrySendError::Full(_) => AppendError::QueueFull,
                    flume::TrySendError::Disconnected(_) => StoreError::Closed.into(),
                })
            }
        }
    }

    /// The message with sequence `seq`, if kept.
    pub fn get(&self, seq: u64) -> Result<Option<StoredMessage>> {
        let mut r = Reader::for_lookup(self.inner.clone(), StartAt::Seq(seq));
        Ok(r.next_message()?.filter(|m| m.seq == seq))
    }

    /// A reader from `start`.
    pub fn reader(&self, start: StartAt) -> Reader {
        Reader::new(self.inner.clone(), start)
    }

    /// Fires once sequence `seq` is durable (at once if it is already): a reader that caught
    /// up waits with `wait_for(reader.next_seq())` instead of polling.
    pub fn wait_for(&self, seq: u64) -> SeqWaiter {
        self.inner.waiters.register(seq, || {
            let s = self.inner.shared();
            (s.last_seq, s.closed)
        })
    }

    /// Counts and counters.
    pub fn info(&self) -> StreamInfo {
        let s = self.inner.shared();
        let c = s.counters;
        StreamInfo {
            msgs: s.msgs,
            bytes: s.bytes,
            first_seq: s.first_seq,
            last_seq: s.last_seq,
            first_ts: s.first_ts,
            last_ts: s.last_ts,
            segments: s.segs.len(),
            appended: c.appended,
            append_errors: c.append_errors,
            rejected_full: c.rejected_full,
            duplicates: c.duplicates,
            removed: c.removed,
            fsyncs: c.fsyncs,
            batches: c.batches,
            failed: s.failed,
        }
    }

    /// Removes the messages below `before` (all of them with `None`); returns how many went.
    /// The new floor is durable before this returns; the sequence goes on where it was.
    pub fn purge(&self, before: Option<u64>) -> Result<u64> {
        self.inner.call(|done| Cmd::Purge { before, done })
    }

    /// Forces an fsync of the segment being written (for `Interval` and `Os` streams).
    pub fn sync(&self) -> Result<()> {
        self.inner.call(|done| Cmd::Sync { done })
    }

    /// Applies the retention limits now (the writer also does after each batch, and about once
    /// a second for `max_age`).
    pub fn enforce_retention(&self) -> Result<()> {
        self.inner.call(|done| Cmd::Enforce { done })
    }

    /// Writes what is queued, syncs it and stops the writer; later appends get
    /// [`StoreError::Closed`]. Other handles see the stream closed too.
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.inner.dir
    }
}
