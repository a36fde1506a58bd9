//! The stream's writer thread: takes appends off a queue, writes each batch with one write and
//! (policy `always`) one fsync shared by every append in it, then publishes the batch to readers
//! and fires its completions. It is the only code that changes a stream's files.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::dedup::{Dedup, MsgId};
use super::state::Shared;
use super::waiters::Waiters;
use super::{write_meta, Appended};
use crate::clock::Clock;
use crate::config::{Discard, StreamConfig, SyncPolicy};
use crate::error::{AppendError, StoreError};
use crate::fs::{write_all_at, StoreFile, StoreFs};
use crate::record::{self, Meta};
use crate::segment::{Segment, HEADER_LEN};

/// A batch is written once it holds this many bytes or appends.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
const MAX_BATCH: usize = 8192;
/// The longest a batch waits for appenders expected back (see [`Writer::gather`]).
const MAX_GATHER: Duration = Duration::from_millis(2);
/// How often age retention runs at most, when the stream has a `max_age`.
const AGE_TICK: Duration = Duration::from_secs(1);

pub(crate) type Reply<T> = flume::Sender<Result<T, StoreError>>;

/// What the writer is asked to do.
pub(crate) enum Cmd {
    Append(AppendReq),
    Purge {
        before: Option<u64>,
        done: Reply<u64>,
    },
    Sync {
        done: Reply<()>,
    },
    Enforce {
        done: Reply<()>,
    },
    Close {
        done: Reply<()>,
    },
    /// The message ids of the records within the duplicate window, read at open.
    Remember(Vec<(MsgId, u64, u64)>),
}

pub(crate) struct AppendReq {
    pub(crate) subject: Bytes,
    pub(crate) headers: Bytes,
    pub(crate) payload: Bytes,
    pub(crate) size: u64,
    /// The hash of its `mitto-msg-id` header, where the stream deduplicates.
    pub(crate) id: Option<MsgId>,
    pub(crate) done: flume::Sender<Result<Appended, AppendError>>,
}

struct Staged {
    meta: Meta,
    off: u64,
    done: flume::Sender<Result<Appended, AppendError>>,
}

pub(crate) struct Writer {
    pub(crate) cfg: StreamConfig,
    pub(crate) fs: Arc<dyn StoreFs>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) dir: PathBuf,
    pub(crate) shared: Arc<RwLock<Shared>>,
    pub(crate) rx: flume::Receiver<Cmd>,
    pub(crate) queued_bytes: Arc<AtomicU64>,
    waiters: Waiters,
    buf: Vec<u8>,
    batch: Vec<Staged>,
    batch_bytes: u64,
    dedup: Dedup,
    /// Repeats of appends staged in this batch: answered with it.
    dups: Vec<(Appended, flume::Sender<Result<Appended, AppendError>>)>,
    file: Arc<dyn StoreFile>,
    path: PathBuf,
    seed: u64,
    write_off: u64,
    next_seq: u64,
    last_ts: u64,
    msgs: u64,
    bytes: u64,
    failed: bool,
    dirty: bool,
    last_sync: Instant,
    /// Policy `always`: appends expected in the next batch, and how long a sync takes (moving
    /// average), which bounds the wait for them.
    expect: usize,
    sync_time: Duration,
    /// When the staged batch's first append was staged.
    batch_start: Instant,
}

fn wlock(shared: &RwLock<Shared>) -> std::sync::RwLockWriteGuard<'_, Shared> {
    shared.write().unwrap_or_else(|e| e.into_inner())
}

fn copy_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl Writer {
    pub(crate) fn new(
        cfg: StreamConfig,
        env: &super::Env,
        dir: PathBuf,
        shared: Arc<RwLock<Shared>>,
        rx: flume::Receiver<Cmd>,
        queued_bytes: Arc<AtomicU64>,
        waiters: Waiters,
    ) -> Self {
        let (file, path, seed, write_off, next_seq, last_ts, msgs, bytes) = {
            let s = shared.read().unwrap_or_else(|e| e.into_inner());
            let a = s.active();
            (
                a.file.clone(),
                a.path.clone(),
                a.seed,
                a.end,
                s.last_seq + 1,
                s.last_ts,
                s.msgs,
                s.bytes,
            )
        };
        let window = cfg.duplicate_window;
        Writer {
            cfg,
            fs: env.fs.clone(),
            clock: env.clock.clone(),
            dir,
            shared,
            rx,
            queued_bytes,
            waiters,
            buf: Vec::with_capacity(64 * 1024),
            batch: Vec::new(),
            batch_bytes: 0,
            dedup: Dedup::new(window),
            dups: Vec::new(),
            file,
            path,
            seed,
            write_off,
            next_seq,
            last_ts,
            msgs,
            bytes,
            failed: false,
            dirty: false,
            last_sync: Instant::now(),
            expect: 1,
            sync_time: Duration::ZERO,
            batch_start: Instant::now(),
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let cmd = match self.deadline() {
                Some(at) => match self.rx.recv_deadline(at) {
                    Ok(c) => c,
                    Err(flume::RecvTimeoutError::Timeout) => {
                        self.on_timer();
                        continue;
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
            };
            let mut next = Some(cmd);
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Append(req) => self.stage(req),
                    other => {
                        self.commit();
                        if self.handle(other) {
                            return;
                        }
                    }
                }
                if self.buf.len() < MAX_BATCH_BYTES && self.batch.len() < MAX_BATCH {
                    next = self.rx.try_recv().ok().or_else(|| self.gather());
                }
            }
            self.commit();
        }
        self.close();
    }

    /// Policy `always`: waits (at most one sync's time) for the appends expected in this batch.
    /// Appenders that wait for their acknowledgement come back a round trip after it; those
    /// that came back during the last sync are queued, the ones it acknowledged are not yet.
    /// Without this wait the queued ones are synced alone and the others arrive during that
    /// sync: two half batches, alternating, one sync each.
    fn gather(&mut self) -> Option<Cmd> {
        if self.cfg.sync != SyncPolicy::Always
            || self.batch.is_empty()
            || self.batch.len() >= self.expect
        {
            return None;
        }
        let until = self.batch_start + self.sync_time.min(MAX_GATHER);
        self.rx.recv_deadline(until).ok()
    }

    /// When the writer must wake without a command: an interval sync or age retention.
    fn deadline(&self) -> Option<Instant> {
        let mut at = None;
        if let SyncPolicy::Interval(d) = self.cfg.sync {
            if self.dirty {
                at = self.last_sync.checked_add(d);
            }
        }
        if let Some(age) = self.cfg.retention.max_age {
            if self.msgs > 0 {
                let first = self.shared.read().map_or(0, |s| s.first_ts);
                let expires =
                    first.saturating_add(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX));
                let wait = Duration::from_nanos(expires.saturating_sub(self.clock.now_ns()));
                let t = Instant::now() + wait.clamp(Duration::from_millis(10), AGE_TICK);
                at = Some(at.map_or(t, |a: Instant| a.min(t)));
            }
        }
        at
    }

    fn on_timer(&mut self) {
        if let SyncPolicy::Interval(d) = self.cfg.sync {
            if self.dirty && self.last_sync.elapsed() >= d {
                self.sync_interval();
            }
        }
        self.enforce();
    }

    fn sync_interval(&mut self) {
        match self.file.sync_data() {
            Ok(()) => {
                wlock(&self.shared).counters.fsyncs += 1;
                self.dirty = false;
                self.last_sync = Instant::now();
            }
            Err(e) => {
                // The page cache may have dropped acknowledged writes: stop writing.
                tracing::error!(segment = %self.path.display(), error = %e, "interval fsync failed; stream stops writing");
                self.failed = true;
                wlock(&self.shared).failed = true;
            }
        }
    }

    fn stage(&mut self, req: AppendReq) {
        self.queued_bytes.fetch_sub(req.size, Ordering::Relaxed);
        if self.failed {
            let _ = req
                .done
                .send(Err(StoreError::Failed(self.cfg.name.clone()).into()));
            return;
        }
        if let Some(id) = req.id {
            if let Some((seq, ts)) = self.dedup.find(id, self.clock.now_ns()) {
                let first = Appended {
                    seq,
                    timestamp_ns: ts,
                    duplicate: true,
                };
                wlock(&self.shared).counters.duplicates += 1;
                if self.batch.first().is_some_and(|f| seq >= f.meta.seq) {
                    self.dups.push((first, req.done));
                } else {
                    let _ = req.done.send(Ok(first));
                }
                return;
            }
        }
        if self.cfg.discard == Discard::New {
            let full = if self
                .cfg
                .retention
                .max_msgs
                .is_some_and(|m| self.msgs + self.batch.len() as u64 >= m)
            {
                Some("max_msgs")
            } else if self
                .cfg
                .retention
                .max_bytes
                .is_some_and(|b| self.bytes + self.batch_bytes + req.size > b)
            {
                Some("max_bytes")
            } else {
                None
            };
            if let Some(limit) = full {
                wlock(&self.shared).counters.rejected_full += 1;
                let _ = req.done.send(Err(AppendError::StreamFull { limit }));
                return;
            }
        }
        if self.write_off + req.size > self.cfg.segment_size && self.write_off > HEADER_LEN as u64 {
            self.commit();
            if let Err(e) = self.roll() {
                wlock(&self.shared).counters.append_errors += 1;
                let _ = req.done.send(Err(e.into()));
                return;
            }
        }
        let ts = self.clock.now_ns().max(self.last_ts);
        let seq = self.next_seq;
        let (s, h, p) = (&req.subject, &req.headers, &req.payload);
        record::encode(&mut self.buf, self.seed, seq, ts, s, h, p);
        let meta = Meta::new(seq, ts, s.len(), h.len(), req.size);
        if self.batch.is_empty() {
            self.batch_start = Instant::now();
        }
        self.batch.push(Staged {
            meta,
            off: self.write_off,
            done: req.done,
        });
        self.batch_bytes += req.size;
        self.write_off += req.size;
        self.next_seq += 1;
        self.last_ts = ts;
        if let Some(id) = req.id {
            self.dedup.remember(id, seq, ts);
        }
    }

    /// Writes, syncs and publishes the staged batch, then fires its completions.
    fn commit(&mut self) {
        let Some(first) = self.batch.first() else {
            return;
        };
        let start = first.off;
        if let Err(e) = write_all_at(&*self.file, &self.buf, start) {
            self.fail_batch(&e, "write segment", false);
            return;
        }
        let mut synced = false;
        match self.cfg.sync {
            SyncPolicy::Always => {
                let t0 = Instant::now();
                if let Err(e) = self.file.sync_data() {
                    self.fail_batch(&e, "sync segment", true);
                    return;
                }
                synced = true;
                self.last_sync = Instant::now();
                let took = self.last_sync - t0;
                self.sync_time = if self.sync_time.is_zero() {
                    took
                } else {
                    (self.sync_time * 7 + took) / 8
                };
            }
            SyncPolicy::Interval(d) => {
                self.dirty = true;
                if self.last_sync.elapsed() >= d {
                    self.sync_interval();
                }
            }
            SyncPolicy::Os => {}
        }
        let now = self.clock.now_ns();
        let delete = {
            let mut s = wlock(&self.shared);
            for st in &self.batch {
                s.active_mut().note(&st.meta, st.off);
            }
            let last = &self.batch[self.batch.len() - 1].meta;
            s.last_seq = last.seq;
            s.last_ts = last.ts;
            s.msgs += self.batch.len() as u64;
            s.bytes += self.batch_bytes;
            s.counters.appended += self.batch.len() as u64;
            s.counters.batches += 1;
            if synced {
                s.counters.fsyncs += 1;
            }
            let delete = s.enforce(&self.cfg.retention, now);
            self.msgs = s.msgs;
            self.bytes = s.bytes;
            delete
        };
        self.delete_files(delete);
        self.waiters.fire(self.next_seq - 1);
        // Those just acknowledged and those that came back meanwhile make the next batch.
        self.expect = (self.batch.len() + self.rx.len()).min(MAX_BATCH);
        for st in self.batch.drain(..) {
            let _ = st.done.send(Ok(Appended {
                seq: st.meta.seq,
                timestamp_ns: st.meta.ts,
                duplicate: false,
            }));
        }
        for (first, done) in self.dups.drain(..) {
            let _ = done.send(Ok(first));
        }
        self.buf.clear();
        self.batch_bytes = 0;
    }

    /// A write or sync failed: nothing of the batch is acknowledged, the file is cut back to
    /// where the batch began, and after a failed sync the stream stops writing.
    fn fail_batch(&mut self, e: &io::Error, op: &'static str, after_sync: bool) {
        let start = self.batch[0].off;
        tracing::error!(segment = %self.path.display(), error = %e, op, "append batch failed");
        let cut = self.file.set_len(start);
        if after_sync || cut.is_err() {
            self.failed = true;
        }
        self.next_seq = self.batch[0].meta.seq;
        self.write_off = start;
        self.last_ts = self.shared.read().map_or(self.last_ts, |s| s.last_ts);
        {
            let mut s = wlock(&self.shared);
            s.counters.append_errors += self.batch.len() as u64;
            s.failed |= self.failed;
        }
        self.dedup.forget_from(self.next_seq);
        let dups = self.dups.drain(..).map(|(_, done)| done);
        for done in self.batch.drain(..).map(|st| st.done).chain(dups) {
            let err = StoreError::io(op, &self.path, copy_err(e));
            let _ = done.send(Err(err.into()));
        }
        self.buf.clear();
        self.batch_bytes = 0;
    }

    /// Starts a new segment at the next sequence.
    fn roll(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.sync_interval();
        }
        let seg = Segment::create(&*self.fs, &self.dir, self.next_seq).inspect_err(|_| {
            let _ = self
                .fs
                .remove_file(&self.dir.join(crate::segment::file_name(self.next_seq)));
        })?;
        self.file = seg.file.clone();
        self.path = seg.path.clone();
        self.seed = seg.seed;
        self.write_off = seg.end;
        wlock(&self.shared).segs.push(seg);
        Ok(())
    }

    fn enforce(&mut self) {
        let now = self.clock.now_ns();
        let delete = {
            let mut s = wlock(&self.shared);
            let d = s.enforce(&self.cfg.retention, now);
            self.msgs = s.msgs;
            self.bytes = s.bytes;
            d
        };
        self.delete_files(delete);
    }

    fn delete_files(&self, delete: io::Result<Vec<PathBuf>>) {
        match delete {
            Ok(paths) => {
                for p in paths {
                    if let Err(e) = self.fs.remove_file(&p) {
                        tracing::warn!(segment = %p.display(), error = %e, "could not delete segment");
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "retention could not read the head of the stream")
            }
        }
    }

    /// Handles a command other than an append (the batch before it is committed); `true` stops.
    fn handle(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Append(_) => {}
            Cmd::Purge { before, done } => {
                let _ = done.send(self.purge(before));
            }
            Cmd::Sync { done } => {
                let r = self
                    .file
                    .sync_data()
                    .map_err(|e| StoreError::io("sync segment", &self.path, e));
                if r.is_ok() {
                    self.dirty = false;
                    self.last_sync = Instant::now();
                    wlock(&self.shared).counters.fsyncs += 1;
                }
                let _ = done.send(r);
            }
            Cmd::Enforce { done } => {
                self.enforce();
                let _ = done.send(Ok(()));
            }
            Cmd::Close { done } => {
                self.close();
                let _ = done.send(Ok(()));
                return true;
            }
            Cmd::Remember(ids) => {
                for (id, seq, ts) in ids {
                    self.dedup.remember(id, seq, ts);
                }
            }
        }
        false
    }

    fn purge(&mut self, before: Option<u64>) -> Result<u64, StoreError> {
        if self.failed {
            return Err(StoreError::Failed(self.cfg.name.clone()));
        }
        let floor = before.unwrap_or(self.next_seq).min(self.next_seq);
        let (old_floor, msgs_before) = {
            let s = self.shared.read().unwrap_or_else(|e| e.into_inner());
            (s.floor, s.msgs)
        };
        if floor <= old_floor {
            return Ok(0);
        }
        // The floor is durable before any file goes, so a crash cannot bring purged records back.
        write_meta(&*self.fs, meta_dir(&self.dir), &self.cfg, floor)?;
        if floor == self.next_seq && self.write_off > HEADER_LEN as u64 {
            self.roll()?;
        }
        wlock(&self.shared).floor = floor;
        self.enforce();
        Ok(msgs_before.saturating_sub(self.msgs))
    }

    fn close(&mut self) {
        self.commit();
        if self.dirty {
            self.sync_interval();
        }
        wlock(&self.shared).closed = true;
        self.waiters.close();
        // Answer what is still queued: the stream is closed.
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Cmd::Append(req) => {
                    let _ = req.done.send(Err(StoreError::Closed.into()));
                }
                Cmd::Purge { done, .. } => {
                    let _ = done.send(Err(StoreError::Closed));
                }
                Cmd::Sync { done } | Cmd::Enforce { done } | Cmd::Close { done } => {
                    let _ = done.send(Err(StoreError::Closed));
                }
                Cmd::Remember(_) => {}
            }
        }
    }
}

/// The stream's folder, from its segments folder.
fn meta_dir(segments: &Path) -> &Path {
    segments.parent().unwrap_or(segments)
}
