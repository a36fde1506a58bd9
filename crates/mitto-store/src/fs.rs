//! The file operations the store uses, behind a small trait so that tests can inject write and
//! sync failures ([`FaultyFs`]) where a real full disk is not at hand.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One open file, read and written at explicit offsets (so readers and the writer share it).
pub trait StoreFile: Send + Sync + 'static {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes up to `buf.len()` bytes at `offset`, returning how many.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Makes every written byte and the file's length durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn size(&self) -> io::Result<u64>;
}

/// Folder and file operations on the data directory.
pub trait StoreFs: Send + Sync + 'static {
    /// Opens `path` for reading and writing, creating it if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StoreFile>>;
    /// Creates a folder and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of a folder.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a folder and all it holds.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to` atomically.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes a folder's entries (created, renamed, removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

impl StoreFile for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        FileExt::write_at(self, buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl StoreFs for OsFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StoreFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(f))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir)? {
            if let Some(name) = e?.file_name().to_str() {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// Writes `buf` whole at `offset`.
pub(crate) fn write_all_at(f: &dyn StoreFile, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match f.write_at(buf, offset) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
pub(crate) fn read_full_at(f: &dyn StoreFile, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes a small file atomically: a temporary beside it, fsync, rename over, fsync the folder.
pub(crate) fn write_atomic(fs: &dyn StoreFs, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let f = fs.open(&tmp, true)?;
    f.set_len(0)?;
    write_all_at(&*f, bytes, 0)?;
    f.sync_data()?;
    drop(f);
    fs.rename(&tmp, path)?;
    fs.sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Reads a small file whole, refusing one over `max` bytes.
pub(crate) fn read_small(fs: &dyn StoreFs, path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = fs.open(path, false)?;
    let len = f.size()?;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, over the limit of {max}"),
        ));
    }
    let mut buf = vec![0; len as usize];
    let n = read_full_at(&*f, &mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

/// A file system that fails on command: writes past a byte budget fail with "no space left on
/// device" (after writing what fits, as a real full disk does), and syncs fail while
/// told to. Counts syncs and bytes read, and tells how many bytes of each file the last sync
/// covered.
#[derive(Debug, Default)]
pub struct FaultyFs {
    state: Arc<FaultState>,
}

#[derive(Debug)]
struct FaultState {
    budget: AtomicU64,
    fail_sync: AtomicBool,
    syncs: AtomicU64,
    sync_delay_us: AtomicU64,
    synced: Mutex<HashMap<PathBuf, u64>>,
    bytes_read: AtomicU64,
}

impl Default for FaultState {
    fn default() -> Self {
        FaultState {
            budget: AtomicU64::new(u64::MAX),
            fail_sync: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            sync_delay_us: AtomicU64::new(0),
            synced: Mutex::new(HashMap::new()),
            bytes_read: AtomicU64::new(0),
        }
    }
}

impl FaultyFs {
    /// A file system that fails nothing until told.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets only `bytes` more bytes be written, in all files together.
    pub fn set_write_budget(&self, bytes: u64) {
        self.state.budget.store(bytes, Ordering::SeqCst);
    }

    /// Makes every sync fail (`true`) or succeed.
    pub fn set_fail_sync(&self, fail: bool) {
        self.state.fail_sync.store(fail, Ordering::SeqCst);
    }

    /// Makes every sync take at least this long (a slow disk).
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.state.sync_delay_us.store(us, Ordering::SeqCst);
    }

    /// How many file syncs succeeded.
    pub fn syncs(&self) -> u64 {
        self.state.syncs.load(Ordering::SeqCst)
    }

    /// How many bytes were read from files, in all.
    pub fn bytes_read(&self) -> u64 {
        self.state.bytes_read.load(Ordering::SeqCst)
    }

    /// How many bytes of `path` the last successful sync covered (0 if never synced).
    pub fn synced_len(&self, path: &Path) -> u64 {
        let synced = self.state.synced.lock().unwrap_or_else(|e| e.into_inner());
        synced.get(path).copied().unwrap_or(0)
    }
}

struct FaultyFile {
    inner: File,
    path: PathBuf,
    state: Arc<FaultState>,
}

impl StoreFile for FaultyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = FileExt::read_at(&self.inner, buf, offset)?;
        self.state.bytes_read.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let want = buf.len() as u64;
        let mut granted = 0;
        let _ = self
            .state
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                granted = b.min(want);
                Some(b - granted)
            });
        if granted == 0 && want > 0 {
            return Err(io::Error::from_raw_os_error(28));
        }
        FileExt::write_at(&self.inner, &buf[..granted as usize], offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        let delay = self.state.sync_delay_us.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_micros(delay));
        }
        if self.state.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        let len = self.inner.metadata()?.len();
        self.inner.sync_data()?;
        self.state.syncs.fetch_add(1, Ordering::SeqCst);
        let mut synced = self.state.synced.lock().unwrap_or_else(|e| e.into_inner());
        synced.insert(self.path.clone(), len);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.inner.metadata()?.len())
    }
}

impl StoreFs for FaultyFs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn StoreFile>> {
        let inner = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(FaultyFile {
            inner,
            path: path.to_owned(),
            state: self.state.clone(),
        }))
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        OsFs.create_dir_all(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        OsFs.list(dir)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsFs.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        OsFs.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsFs.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.state.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5));
        }
        OsFs.sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faulty_fs_writes_what_fits_then_fails_like_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new();
        let f = fs.open(&dir.path().join("x"), true).unwrap();
        fs.set_write_budget(5);
        let e = write_all_at(&*f, b"0123456789", 0).unwrap_err();
        assert!(crate::error::is_full(&e));
        assert_eq!(f.size().unwrap(), 5);
        fs.set_fail_sync(true);
        assert!(f.sync_data().is_err());
        assert_eq!(fs.syncs(), 0);
    }

    #[test]
    fn atomic_write_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.json");
        write_atomic(&OsFs, &p, b"first version, long").unwrap();
        write_atomic(&OsFs, &p, b"second").unwrap();
        assert_eq!(read_small(&OsFs, &p, 100).unwrap(), b"second");
        assert!(read_small(&OsFs, &p, 3).is_err());
        assert!(!p.with_extension("tmp").exists());
    }
}
