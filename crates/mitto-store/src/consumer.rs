//! Durable consumers: a named position in a stream, its ack floor and its pending deliveries,
//! kept across restarts.
//!
//! Each consumer has a snapshot file (`<name>.json`, replaced atomically) and an operation log
//! (`<name>.<generation>.log`) of fixed 32-byte checksummed records: delivered, acked, nacked,
//! terminated, passed over. Opening loads the snapshot and replays the log; once the log passes
//! 1 MiB the state is written as a new snapshot with the next generation and the old log goes.
//! A log rather than a state file per change: an ack costs 32 bytes appended, not a file
//! rewritten, fsynced and renamed. Operations are buffered until [`Consumer::flush`], which
//! syncs them as the stream's [`SyncPolicy`] says; operations lost to a crash before a flush
//! only make messages be delivered again (at least once), never skipped, because a position
//! only moves forward through a logged operation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::config::{check_name, SyncPolicy};
use crate::error::{Result, StoreError};
use crate::fs::{read_full_at, read_small, write_all_at, write_atomic, StoreFile, StoreFs};
use crate::stream::{Inner, StartAt, Stream};

const OP_LEN: usize = 32;
/// The log is folded into a new snapshot past this size.
const COMPACT_AT: u64 = 1024 * 1024;
/// Buffered operations are written once they reach this size, flush or not.
const BUF_MAX: usize = 64 * 1024;
/// The largest snapshot read back.
const SNAPSHOT_MAX: u64 = 256 * 1024 * 1024;
const FOLDER: &str = "consumers";

/// A durable consumer's configuration (what the broker needs to drive it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// 1 to 64 of `A-Z a-z 0-9 _ -`.
    pub name: String,
    /// Where a new consumer starts.
    pub start: StartAt,
    /// Only subjects matching this filter (wildcards allowed) are delivered.
    pub filter: Option<String>,
    /// How long a delivery waits for its ack before it is due again.
    #[serde(with = "millis")]
    pub ack_wait: Duration,
    /// Deliveries of one message before it is terminated (dead-lettered); `None`: no limit.
    pub max_deliver: Option<u32>,
    /// At most this many deliveries awaiting an ack.
    pub max_ack_pending: u32,
}

impl ConsumerConfig {
    /// A consumer from the first message, acks within 30 s, 1000 pending at most.
    pub fn new(name: impl Into<String>) -> Self {
        ConsumerConfig {
            name: name.into(),
            start: StartAt::First,
            filter: None,
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            max_ack_pending: 1000,
        }
    }

    /// Sets where a new consumer starts.
    pub fn start(mut self, start: StartAt) -> Self {
        self.start = start;
        self
    }

    /// Delivers only subjects matching `filter`.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// Sets the ack wait.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    /// Sets the most deliveries of one message.
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = Some(n);
        self
    }

    /// Sets the most deliveries awaiting an ack.
    pub fn max_ack_pending(mut self, n: u32) -> Self {
        self.max_ack_pending = n;
        self
    }

    fn validate(&self) -> Result<()> {
        check_name(&self.name)?;
        if let Some(f) = &self.filter {
            mitto_proto::Subject::new(f)
                .map_err(|e| StoreError::InvalidConfig(format!("filter {f:?}: {e}")))?;
        }
        if self.max_ack_pending == 0 || self.max_deliver == Some(0) {
            return Err(StoreError::InvalidConfig(
                "max_ack_pending and max_deliver must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// A delivery awaiting its ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// How many times the message was delivered.
    pub deliveries: u32,
    /// When it is due again if not acked (ns since the Unix epoch).
    pub redeliver_at_ns: u64,
}

/// Where a consumer is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerState {
    /// The highest stream sequence delivered or passed over: new deliveries start after it.
    pub delivered: u64,
    /// Deliveries awaiting an ack, by stream sequence.
    pub pending: BTreeMap<u64, Pending>,
    /// Messages terminated after `max_deliver` deliveries (or by the broker).
    pub terminated: u64,
}

impl ConsumerState {
    /// Every sequence at or below it is acked (or terminated, or passed over).
    pub fn ack_floor(&self) -> u64 {
        self.pending
            .keys()
            .next()
            .map_or(self.delivered, |&s| s.saturating_sub(1))
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Deliver { seq, count, at } => {
                self.pending.insert(
                    seq,
                    Pending {
                        deliveries: count,
                        redeliver_at_ns: at,
                    },
                );
                self.delivered = self.delivered.max(seq);
            }
            Op::Ack { seq } => {
                self.pending.remove(&seq);
            }
            Op::Nak { seq, at } => {
                if let Some(p) = self.pending.get_mut(&seq) {
                    p.redeliver_at_ns = at;
                }
            }
            Op::Term { seq } => {
                if self.pending.remove(&seq).is_some() {
                    self.terminated += 1;
                }
            }
            Op::Skip { seq } => self.delivered = self.delivered.max(seq),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Deliver { seq: u64, count: u32, at: u64 },
    Ack { seq: u64 },
    Nak { seq: u64, at: u64 },
    Term { seq: u64 },
    Skip { seq: u64 },
}

impl Op {
    fn encode(self, out: &mut Vec<u8>) {
        let (kind, count, seq, arg) = match self {
            Op::Deliver { seq, count, at } => (1u8, count, seq, at),
            Op::Ack { seq } => (2, 0, seq, 0),
            Op::Nak { seq, at } => (3, 0, seq, at),
            Op::Term { seq } => (4, 0, seq, 0),
            Op::Skip { seq } => (5, 0, seq, 0),
        };
        let mut r = [0u8; OP_LEN];
        r[8] = kind;
        r[12..16].copy_from_slice(&count.to_le_bytes());
        r[16..24].copy_from_slice(&seq.to_le_bytes());
        r[24..32].copy_from_slice(&arg.to_le_bytes());
        let h = xxh3_64(&r[8..]);
        r[..8].copy_from_slice(&h.to_le_bytes());
        out.extend_from_slice(&r);
    }

    fn decode(r: &[u8]) -> Option<Op> {
        let word = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap_or_default());
        if r.len() != OP_LEN || xxh3_64(&r[8..]) != word(0) {
            return None;
        }
        let count = u32::from_le_bytes(r[12..16].try_into().unwrap_or_default());
        let (seq, arg) = (word(16), word(24));
        Some(match r[8] {
            1 => Op::Deliver {
                seq,
                count,
                at: arg,
            },
            2 => Op::Ack { seq },
            3 => Op::Nak { seq, at: arg },
            4 => Op::Term { seq },
            5 => Op::Skip { seq },
            _ => return None,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    generation: u64,
    config: ConsumerConfig,
    state: ConsumerState,
}

/// A durable consumer's state, owned by one task at a time (opening an open consumer again is
/// refused). Dropping it flushes what is buffered.
pub struct Consumer {
    stream: Arc<Inner>,
    cfg: ConsumerConfig,
    state: ConsumerState,
    dir: PathBuf,
    generation: u64,
    log: Arc<dyn StoreFile>,
    log_len: u64,
    buf: Vec<u8>,
    last_sync: Instant,
    skipped_ops: u64,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.cfg.name)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn log_name(name: &str, generation: u64) -> String {
    format!("{name}.{generation}.log")
}

impl Stream {
    /// Opens the durable consumer `cfg.name`, creating it at `cfg.start` if new; an existing
    /// consumer keeps its state and takes `cfg` as its new configuration.
    pub fn consumer(&self, cfg: ConsumerConfig) -> Result<Consumer> {
        cfg.validate()?;
        {
            let mut open = self
                .inner
                .open_consumers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !open.insert(cfg.name.clone()) {
                return Err(StoreError::AlreadyExists(format!(
                    "consumer {} (open)",
                    cfg.name
                )));
            }
        }
        let name = cfg.name.clone();
        Consumer::open(self, cfg).inspect_err(|_| self.release(&name))
    }

    fn release(&self, name: &str) {
        let mut open = self
            .inner
            .open_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.remove(name);
    }

    /// The names of this stream's durable consumers.
    pub fn consumer_names(&self) -> Result<Vec<String>> {
        let dir = self.inner.dir.join(FOLDER);
        let fs = &*self.inner.env.fs;
        let mut names: Vec<String> = match fs.list(&dir) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io("list consumers", &dir, e)),
        }
        .into_iter()
        .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
        .filter(|n| check_name(n).is_ok())
        .collect();
        names.sort();
        Ok(names)
    }

    /// Removes a durable consumer that is not open.
    pub fn delete_consumer(&self, name: &str) -> Result<()> {
        check_name(name)?;
        if self
            .inner
            .open_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
        {
            return Err(StoreError::AlreadyExists(format!("consumer {name} (open)")));
        }
        let dir = self.inner.dir.join(FOLDER);
        let fs = &*self.inner.env.fs;
        let snap = dir.join(format!("{name}.json"));
        if !snap.exists() {
            return Err(StoreError::NotFound(format!("consumer {name}")));
        }
        fs.remove_file(&snap)
            .map_err(|e| StoreError::io("remove consumer", &snap, e))?;
        remove_logs(fs, &dir, name, None)?;
        fs.sync_dir(&dir)
            .map_err(|e| StoreError::io("sync folder", &dir, e))
    }
}

/// Removes `name`'s operation logs other than generation `keep`.
fn remove_logs(fs: &dyn StoreFs, dir: &Path, name: &str, keep: Option<u64>) -> Result<()> {
    let names = fs
        .list(dir)
        .map_err(|e| StoreError::io("list consumers", dir, e))?;
    for n in names {
        let Some(g) = n
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|g| g.parse::<u64>().ok())
        else {
            continue;
        };
        if Some(g) != keep {
            let p = dir.join(&n);
            fs.remove_file(&p)
                .map_err(|e| StoreError::io("remove consumer log", &p, e))?;
        }
    }
    Ok(())
}

impl Consumer {
    fn open(stream: &Stream, cfg: ConsumerConfig) -> Result<Consumer> {
        let inner = stream.inner.clone();
        let fs = inner.env.fs.clone();
        let dir = inner.dir.join(FOLDER);
        fs.create_dir_all(&dir)
            .map_err(|e| StoreError::io("create folder", &dir, e))?;
        let snap_path = dir.join(format!("{}.json", cfg.name));
        let existing = if snap_path.exists() {
            let bytes = read_small(&*fs, &snap_path, SNAPSHOT_MAX)
                .map_err(|e| StoreError::io("read consumer", &snap_path, e))?;
            let snap: Snapshot =
                serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    path: snap_path.clone(),
                    reason: e.to_string(),
                })?;
            Some(snap)
        } else {
            None
        };
        let (generation, mut state, config_changed) = match existing {
            Some(s) => (s.generation, s.state, s.config != cfg),
            None => (0, initial_state(stream, cfg.start), true),
        };
        let log = {
            let p = dir.join(log_name(&cfg.name, generation));
            fs.open(&p, true)
                .map_err(|e| StoreError::io("open consumer log", &p, e))?
        };
        let mut c = Consumer {
            stream: inner,
            cfg,
            state: ConsumerState::default(),
            dir,
            generation,
            log,
            log_len: 0,
            buf: Vec::new(),
            last_sync: Instant::now(),
            skipped_ops: 0,
        };
        if generation > 0 {
            c.replay(&mut state)?;
        }
        c.state = state;
        if config_changed || generation == 0 {
            // New generation: a snapshot of the state, an empty log.
            c.compact()?;
        }
        Ok(c)
    }

    /// Loads this generation's log into `state`: a torn tail is cut, a damaged record skipped.
    fn replay(&mut self, state: &mut ConsumerState) -> Result<()> {
        let fs = &*self.stream.env.fs;
        let path = self.dir.join(log_name(&self.cfg.name, self.generation));
        let log = fs
            .open(&path, true)
            .map_err(|e| StoreError::io("open consumer log", &path, e))?;
        let len = log
            .size()
            .map_err(|e| StoreError::io("stat consumer log", &path, e))?;
        let whole = len - len % OP_LEN as u64;
        let mut off = 0u64;
        let mut good_end = 0u64;
        let mut chunk = vec![0u8; 64 * 1024];
        while off < whole {
            let n = ((whole - off) as usize).min(chunk.len());
            let got = read_full_at(&*log, &mut chunk[..n], off)
                .map_err(|e| StoreError::io("read consumer log", &path, e))?;
            if got < n {
                break;
            }
            for (i, r) in chunk[..n].chunks_exact(OP_LEN).enumerate() {
                match Op::decode(r) {
                    Some(op) => {
                        state.apply(op);
                        good_end = off + ((i + 1) * OP_LEN) as u64;
                    }
                    None => self.skipped_ops += 1,
                }
            }
            off += n as u64;
        }
        if good_end < len {
            // Whatever follows the last good operation is torn: never flushed whole.
            let torn = (len - good_end) / OP_LEN as u64;
            self.skipped_ops -= torn.min(self.skipped_ops);
            log.set_len(good_end)
                .and_then(|()| log.sync_data())
                .map_err(|e| StoreError::io("truncate consumer log", &path, e))?;
        }
        if self.skipped_ops > 0 {
            tracing::warn!(consumer = %self.cfg.name, skipped = self.skipped_ops, "damaged consumer log records skipped");
        }
        self.log = log;
        self.log_len = good_end;
        Ok(())
    }

    /// Writes the state as a snapshot of the next generation with an empty log, then removes
    /// the older logs. A crash at any point leaves one snapshot with its complete log.
    fn compact(&mut self) -> Result<()> {
        let fs = &*self.stream.env.fs;
        let next = self.generation + 1;
        let log_path = self.dir.join(log_name(&self.cfg.name, next));
        let log = fs
            .open(&log_path, true)
            .map_err(|e| StoreError::io("create consumer log", &log_path, e))?;
        log.set_len(0)
            .and_then(|()| log.sync_data())
            .map_err(|e| StoreError::io("create consumer log", &log_path, e))?;
        let snap = Snapshot {
            generation: next,
            config: self.cfg.clone(),
            state: self.state.clone(),
        };
        let path = self.dir.join(format!("{}.json", self.cfg.name));
        let bytes = serde_json::to_vec(&snap).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(fs, &path, &bytes).map_err(|e| StoreError::io("write consumer", &path, e))?;
        self.generation = next;
        self.log = log;
        self.log_len = 0;
        remove_logs(fs, &self.dir, &self.cfg.name, Some(next))
    }

    fn push(&mut self, op: Op) -> Result<()> {
        self.state.apply(op);
        op.encode(&mut self.buf);
        if self.buf.len() >= BUF_MAX {
            self.write_buf()?;
        }
        Ok(())
    }

    fn write_buf(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = || self.dir.join(log_name(&self.cfg.name, self.generation));
        if let Err(e) = write_all_at(&*self.log, &self.buf, self.log_len) {
            let _ = self.log.set_len(self.log_len);
            return Err(StoreError::io("write consumer log", path(), e));
        }
        self.log_len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes the buffered operations and syncs them as the stream's sync policy says
    /// (`Always`: now); compacts the log when it has grown.
    pub fn flush(&mut self) -> Result<()> {
        self.write_buf()?;
        let sync = match self.stream.cfg.sync {
            SyncPolicy::Always => true,
            SyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
            _ => false,
        };
        if sync {
            let path = self.dir.join(log_name(&self.cfg.name, self.generation));
            self.log
                .sync_data()
                .map_err(|e| StoreError::io("sync consumer log", path, e))?;
            self.last_sync = Instant::now();
        }
        if self.log_len > COMPACT_AT {
            self.compact()?;
        }
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &ConsumerConfig {
        &self.cfg
    }

    /// The state.
    pub fn state(&self) -> &ConsumerState {
        &self.state
    }

    /// The next stream sequence to consider for a first delivery.
    pub fn next_seq(&self) -> u64 {
        self.state.delivered + 1
    }

    /// Damaged log records skipped when the consumer was opened.
    pub fn skipped_ops(&self) -> u64 {
        self.skipped_ops
    }

    /// Whether `subject` passes the consumer's filter.
    pub fn wants(&self, subject: &str) -> bool {
        self.cfg
            .filter
            .as_deref()
            .is_none_or(|f| mitto_proto::subject::matches(f, subject))
    }

    /// Records a delivery (first or again) of `seq` at `now_ns`; returns how many times it has
    /// now been delivered. A first delivery beyond `max_ack_pending` is refused.
    pub fn on_delivered(&mut self, seq: u64, now_ns: u64) -> Result<u32> {
        let count = match self.state.pending.get(&seq) {
            Some(p) => p.deliveries.saturating_add(1),
            None => {
                if self.state.pending.len() >= self.cfg.max_ack_pending as usize {
                    return Err(StoreError::LimitReached("max_ack_pending"));
                }
                1
            }
        };
        let wait = u64::try_from(self.cfg.ack_wait.as_nanos()).unwrap_or(u64::MAX);
        self.push(Op::Deliver {
            seq,
            count,
            at: now_ns.saturating_add(wait),
        })?;
        Ok(count)
    }

    /// Records an ack; `false` if `seq` was not pending (a late or repeated ack).
    pub fn on_ack(&mut self, seq: u64) -> Result<bool> {
        if !self.state.pending.contains_key(&seq) {
            return Ok(false);
        }
        self.push(Op::Ack { seq })?;
        Ok(true)
    }

    /// Records a nack: `seq` is due again at `redeliver_at_ns` (now, or later for a nack with
    /// delay). `false` if it was not pending.
    pub fn on_nak(&mut self, seq: u64, redeliver_at_ns: u64) -> Result<bool> {
        if !self.state.pending.contains_key(&seq) {
            return Ok(false);
        }
        self.push(Op::Nak {
            seq,
            at: redeliver_at_ns,
        })?;
        Ok(true)
    }

    /// Gives up on `seq` (after `max_deliver`, once the broker has sent it to the dead-letter
    /// subject). `false` if it was not pending.
    pub fn on_terminated(&mut self, seq: u64) -> Result<bool> {
        if !self.state.pending.contains_key(&seq) {
            return Ok(false);
        }
        self.push(Op::Term { seq })?;
        Ok(true)
    }

    /// Moves the position past `seq` without delivering (messages the filter does not want, or
    /// that retention removed).
    pub fn skip_to(&mut self, seq: u64) -> Result<()> {
        if seq > self.state.delivered {
            self.push(Op::Skip { seq })?;
        }
        Ok(())
    }

    /// Up to `max` pending sequences due for redelivery at `now_ns`, oldest first.
    pub fn due(&self, now_ns: u64, max: usize) -> Vec<u64> {
        self.state
            .pending
            .iter()
            .filter(|(_, p)| p.redeliver_at_ns <= now_ns)
            .map(|(&s, _)| s)
            .take(max)
            .collect()
    }
}

/// Where a new consumer starts: the position just before its first message.
fn initial_state(stream: &Stream, start: StartAt) -> ConsumerState {
    let info = stream.info();
    let delivered = match start {
        StartAt::First => info.first_seq.saturating_sub(1),
        StartAt::Last => info.last_seq.max(info.first_seq).saturating_sub(1),
        StartAt::New => info.last_seq,
        StartAt::Seq(n) => n.max(1) - 1,
        StartAt::Time(_) => {
            let mut r = stream.reader(start);
            loop {
                match r.next_message() {
                    Ok(Some(m)) => break m.seq - 1,
                    Ok(None) => break info.last_seq,
                    Err(_) => continue,
                }
            }
        }
    };
    ConsumerState {
        delivered,
        ..ConsumerState::default()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(consumer = %self.cfg.name, error = %e, "consumer state not flushed");
        }
        let mut open = self
            .stream
            .open_consumers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.remove(&self.cfg.name);
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip_and_damage_is_caught() {
        let ops = [
            Op::Deliver {
                seq: 7,
                count: 3,
                at: 99,
            },
            Op::Ack { seq: 7 },
            Op::Nak { seq: 8, at: 5 },
            Op::Term { seq: 9 },
            Op::Skip { seq: u64::MAX },
        ];
        for op in ops {
            let mut b = Vec::new();
            op.encode(&mut b);
            assert_eq!(b.len(), OP_LEN);
            assert_eq!(Op::decode(&b), Some(op));
            for i in 0..OP_LEN {
                let mut d = b.clone();
                d[i] ^= 0x10;
                assert_eq!(Op::decode(&d), None, "{op:?} byte {i}");
            }
        }
        assert_eq!(Op::decode(&[0u8; 31]), None);
    }

    #[test]
    fn state_follows_operations_and_the_floor_trails_the_oldest_pending() {
        let mut s = ConsumerState::default();
        for seq in 1..=5 {
            s.apply(Op::Deliver {
                seq,
                count: 1,
                at: 0,
            });
        }
        s.apply(Op::Ack { seq: 1 });
        s.apply(Op::Ack { seq: 3 });
        assert_eq!((s.delivered, s.ack_floor()), (5, 1));
        s.apply(Op::Term { seq: 2 });
        s.apply(Op::Term { seq: 2 });
        assert_eq!((s.ack_floor(), s.terminated), (3, 1));
        s.apply(Op::Ack { seq: 4 });
        s.apply(Op::Ack { seq: 5 });
        s.apply(Op::Skip { seq: 9 });
        assert_eq!((s.delivered, s.ack_floor()), (9, 9));
        s.apply(Op::Deliver {
            seq: 0,
            count: 1,
            at: 0,
        });
        assert_eq!(s.ack_floor(), 0);
    }
}
