//! The data directory: its streams, created, found again at start-up, updated and deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::clock::{Clock, SystemClock};
use crate::config::{check_name, StreamConfig};
use crate::error::{Result, StoreError};
use crate::fs::{OsFs, StoreFs};
use crate::stream::{read_meta, write_meta, Env, Stream, META_FILE};

/// How a [`Store`] reaches its disk and clock, and how much its streams may queue.
#[derive(Clone)]
pub struct StoreOptions {
    env: Env,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("queue_depth", &self.env.queue_depth)
            .field("queue_bytes", &self.env.queue_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            env: Env {
                fs: Arc::new(OsFs),
                clock: Arc::new(SystemClock),
                queue_depth: 16 * 1024,
                queue_bytes: 64 * 1024 * 1024,
            },
        }
    }
}

impl StoreOptions {
    /// The real disk, the system clock, 16 Ki appends or 64 MiB queued per stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Files through `fs` (tests inject failures with [`FaultyFs`](crate::FaultyFs)).
    pub fn fs(mut self, fs: Arc<dyn StoreFs>) -> Self {
        self.env.fs = fs;
        self
    }

    /// Timestamps and age retention from `clock`.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.env.clock = clock;
        self
    }

    /// At most this many appends queued per stream before `append` answers `QueueFull`.
    pub fn queue_depth(mut self, n: usize) -> Self {
        self.env.queue_depth = n;
        self
    }

    /// At most this many bytes of records queued per stream before `append` answers `QueueFull`.
    pub fn queue_bytes(mut self, n: u64) -> Self {
        self.env.queue_bytes = n;
        self
    }
}

/// The streams under one data directory (`<dir>/streams/<name>/`).
pub struct Store {
    root: PathBuf,
    env: Env,
    streams: Mutex<BTreeMap<String, Stream>>,
    /// How many streams there are, read without the lock: every publish asks
    /// [`Store::stream_for_subject`], and a broker with no streams must not serialize its
    /// publishers on the lock to learn that.
    count: AtomicUsize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating) the data directory and every stream in it, recovering each; see
    /// [`Stream::recovery`] for what was repaired.
    pub fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let env = opts.env;
        let root = dir.as_ref().join("streams");
        env.fs
            .create_dir_all(&root)
            .map_err(|e| StoreError::io("create folder", &root, e))?;
        let mut streams = BTreeMap::new();
        let mut names = env
            .fs
            .list(&root)
            .map_err(|e| StoreError::io("list streams", &root, e))?;
        names.sort();
        for name in names {
            let dir = root.join(&name);
            if check_name(&name).is_err() || !dir.join(META_FILE).exists() {
                continue;
            }
            let meta = read_meta(&*env.fs, &dir)?;
            if meta.config.name != name {
                return Err(StoreError::Corrupt {
                    path: dir.join(META_FILE),
                    reason: format!("names stream {:?}", meta.config.name),
                });
            }
            let s = Stream::open(&dir, meta.config, meta.floor, env.clone())?;
            streams.insert(name, s);
        }
        Ok(Store {
            root,
            env,
            count: AtomicUsize::new(streams.len()),
            streams: Mutex::new(streams),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Stream>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a stream; the same configuration again returns the existing stream. Refuses a
    /// name in use with another configuration, and subjects that overlap another stream's (a
    /// message goes to at most one stream).
    pub fn create_stream(&self, cfg: StreamConfig) -> Result<Stream> {
        cfg.validate()?;
        let mut streams = self.lock();
        if let Some(s) = streams.get(&cfg.name) {
            return if s.config() == &cfg {
                Ok(s.clone())
            } else {
                Err(StoreError::AlreadyExists(format!("stream {}", cfg.name)))
            };
        }
        check_overlap(&streams, &cfg)?;
        let dir = self.root.join(&cfg.name);
        self.env
            .fs
            .create_dir_all(&dir)
            .map_err(|e| StoreError::io("create folder", &dir, e))?;
        write_meta(&*self.env.fs, &dir, &cfg, 0)?;
        let name = cfg.name.clone();
        let s = Stream::open(&dir, cfg, 0, self.env.clone())?;
        streams.insert(name, s.clone());
        self.count.store(streams.len(), Ordering::Release);
        Ok(s)
    }

    /// Changes a stream's subjects, retention, discard or sync policy, or segment size (its
    /// `max_record_size` may only grow: records already stored must stay readable). The stream
    /// is closed and reopened: handles taken before see it closed.
    pub fn update_stream(&self, cfg: StreamConfig) -> Result<Stream> {
        cfg.validate()?;
        let mut streams = self.lock();
        let old = streams
            .get(&cfg.name)
            .ok_or_else(|| StoreError::NotFound(format!("stream {}", cfg.name)))?
            .clone();
        if cfg.max_record_size < old.config().max_record_size {
            return Err(StoreError::InvalidConfig(
                "max_record_size may not shrink below records already stored".into(),
            ));
        }
        let others: BTreeMap<_, _> = streams
            .iter()
            .filter(|(n, _)| **n != cfg.name)
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        check_overlap(&others, &cfg)?;
        old.close()?;
        let dir = old.dir().to_owned();
        let floor = read_meta(&*self.env.fs, &dir)?.floor;
        write_meta(&*self.env.fs, &dir, &cfg, floor)?;
        drop(old);
        let name = cfg.name.clone();
        let s = Stream::open(&dir, cfg, floor, self.env.clone())?;
        streams.insert(name, s.clone());
        Ok(s)
    }

    /// The stream of that name.
    pub fn stream(&self, name: &str) -> Option<Stream> {
        self.lock().get(name).cloned()
    }

    /// Every stream, by name.
    pub fn streams(&self) -> Vec<Stream> {
        self.lock().values().cloned().collect()
    }

    /// The stream that captures `subject`, if any.
    pub fn stream_for_subject(&self, subject: &str) -> Option<Stream> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.lock()
            .values()
            .find(|s| s.config().captures(subject))
            .cloned()
    }

    /// Closes a stream and removes its files and its consumers.
    pub fn delete_stream(&self, name: &str) -> Result<()> {
        let s = {
            let mut streams = self.lock();
            let s = streams
                .remove(name)
                .ok_or_else(|| StoreError::NotFound(format!("stream {name}")))?;
            self.count.store(streams.len(), Ordering::Release);
            s
        };
        s.close()?;
        let dir = s.dir().to_owned();
        self.env
            .fs
            .remove_dir_all(&dir)
            .map_err(|e| StoreError::io("remove stream", &dir, e))?;
        self.env
            .fs
            .sync_dir(&self.root)
            .map_err(|e| StoreError::io("sync folder", &self.root, e))
    }
}

fn check_overlap(streams: &BTreeMap<String, Stream>, cfg: &StreamConfig) -> Result<()> {
    for s in streams.values() {
        for a in &s.config().subjects {
            for b in &cfg.subjects {
                if filters_overlap(a, b) {
                    return Err(StoreError::InvalidConfig(format!(
                        "subject {b:?} overlaps {a:?} of stream {}",
                        s.name()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Whether some literal subject matches both filters.
pub(crate) fn filters_overlap(a: &str, b: &str) -> bool {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::filters_overlap;

    #[test]
    fn overlapping_filters() {
        for (a, b) in [
            ("a.b", "a.b"),
            ("a.*", "a.b"),
            ("a.>", "a.b.c"),
            ("*.b", "a.*"),
            (">", "x"),
        ] {
            assert!(filters_overlap(a, b) && filters_overlap(b, a), "{a} {b}");
        }
        for (a, b) in [
            ("a.b", "a.c"),
            ("a.*", "a.b.c"),
            ("a.>", "a"),
            ("a.*", "b.>"),
        ] {
            assert!(!filters_overlap(a, b) && !filters_overlap(b, a), "{a} {b}");
        }
    }
}
