//! Group commit, and what write and sync errors do: a typed error to the appender, nothing
//! acknowledged lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use mitto_store::{AppendError, FaultyFs, StoreError};

fn segment_path(dir: &std::path::Path, name: &str) -> PathBuf {
    dir.join("streams")
        .join(name)
        .join("segments")
        .join("00000000000000000001.seg")
}

#[test]
fn concurrent_appends_share_fsyncs_and_complete_only_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FaultyFs::new());
    // A slow disk, so that appends queue while a sync runs (as on a real one).
    fs.set_sync_delay(Duration::from_millis(2));
    let store = open_with(dir.path(), Some(fs.clone()), None);
    let s = store.create_stream(cfg("g")).unwrap();
    let seg = segment_path(dir.path(), "g");
    let syncs_before = fs.syncs();
    const THREADS: usize = 8;
    const EACH: usize = 150;
    // Every record is the same size: 34 framing + "g.x" + 8-byte payload.
    let size = 34 + 3 + 8;
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let (s, fs, seg) = (&s, &fs, &seg);
            sc.spawn(move || {
                for i in 0..EACH {
                    let p = Bytes::from(format!("{t:02}{i:06}"));
                    let a = s.append("g.x", Bytes::new(), p).unwrap().wait().unwrap();
                    let end = 40 + a.seq * size;
                    let durable = fs.synced_len(seg);
                    assert!(
                        durable >= end,
                        "seq {} completed with {durable} of {end} bytes synced",
                        a.seq
                    );
                }
            });
        }
    });
    let appends = (THREADS * EACH) as u64;
    let syncs = fs.syncs() - syncs_before;
    let info = s.info();
    assert_eq!(info.appended, appends);
    assert_eq!(info.fsyncs, syncs);
    assert!(syncs * 3 < appends, "{syncs} fsyncs for {appends} appends");
    // Per appender, its messages are in its order.
    let mut last = [None::<usize>; THREADS];
    for p in payloads(&s) {
        let t: usize = p[..2].parse().unwrap();
        let i: usize = p[2..].parse().unwrap();
        assert!(last[t].is_none_or(|l| l + 1 == i));
        last[t] = Some(i);
    }
}

#[test]
fn a_full_disk_refuses_the_batch_with_a_typed_error_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FaultyFs::new());
    let store = open_with(dir.path(), Some(fs.clone()), None);
    let s = store.create_stream(cfg("f")).unwrap();
    fill(&s, 0, 10);
    fs.set_write_budget(60); // one record and a half
    let done: Vec<_> = (10..20)
        .map(|i| {
            s.append("f.x", Bytes::new(), Bytes::from(format!("m{i}")))
                .unwrap()
        })
        .collect();
    let mut acked = 10;
    for d in done {
        match d.wait() {
            Ok(_) => acked += 1,
            Err(e) => {
                assert!(e.is_backpressure(), "{e}");
                assert!(
                    matches!(&e, AppendError::Store(se) if se.is_storage_full()),
                    "{e}"
                );
            }
        }
    }
    assert!(acked < 20);
    let info = s.info();
    assert_eq!(info.msgs, acked as u64);
    assert!(info.append_errors > 0 && !info.failed);
    // The partial write was cut: the file ends at the last acknowledged record.
    let len = std::fs::metadata(segment_path(dir.path(), "f"))
        .unwrap()
        .len();
    assert_eq!(len, 40 + info.bytes);
    // Space again: appends go on with the next sequence.
    fs.set_write_budget(u64::MAX);
    assert_eq!(fill(&s, 100, 1), vec![acked as u64 + 1]);
    drop((s, store));
    let store = open(dir.path());
    let s = store.stream("f").unwrap();
    assert!(s.recovery().is_clean());
    let p = payloads(&s);
    assert_eq!(p.len(), acked + 1);
    assert_eq!(
        p[..10],
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
}

#[test]
fn a_failed_fsync_stops_the_stream_until_it_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FaultyFs::new());
    let store = open_with(dir.path(), Some(fs.clone()), None);
    let s = store.create_stream(cfg("y")).unwrap();
    fill(&s, 0, 5);
    fs.set_fail_sync(true);
    let e = s
        .append("y.x", Bytes::new(), Bytes::new())
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(
        matches!(
            e,
            AppendError::Store(StoreError::Io {
                op: "sync segment",
                ..
            })
        ),
        "{e}"
    );
    fs.set_fail_sync(false);
    let e = s
        .append("y.x", Bytes::new(), Bytes::new())
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(
        matches!(e, AppendError::Store(StoreError::Failed(_))),
        "{e}"
    );
    assert!(s.info().failed);
    assert_eq!(s.info().last_seq, 5);
    drop((s, store));
    let store = open(dir.path());
    let s = store.stream("y").unwrap();
    assert_eq!(seqs(&s), vec![1, 2, 3, 4, 5]);
    assert_eq!(fill(&s, 5, 1), vec![6]);
}

/// A real full file system: a 256 KiB tmpfs, where the machine lets this test mount one (it
/// needs root); otherwise it says so and passes.
#[test]
fn a_real_full_filesystem_gives_enospc_and_keeps_what_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIPPED: cannot mount a small tmpfs here (needs root); the FaultyFs tests cover ENOSPC");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let mut acked = Vec::new();
    let mut error = None;
    {
        let store = open(&mnt);
        let s = store
            .create_stream(cfg("d").segment_size(64 * 1024))
            .unwrap();
        for i in 0..1000u32 {
            let p = Bytes::from(vec![(i % 251) as u8; 900]);
            match s.append("d.x", Bytes::new(), p).unwrap().wait() {
                Ok(a) => acked.push(a.seq),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
    }
    let e = error.expect("a 256 KiB file system filled up");
    assert!(e.is_backpressure(), "{e}");
    assert!(acked.len() > 100, "{} acked", acked.len());
    let store = open(&mnt);
    let s = store.stream("d").unwrap();
    let got = seqs(&s);
    assert_eq!(got, acked);
    // Deleting the stream frees the space.
    drop(s);
    store.delete_stream("d").unwrap();
}

#[test]
fn interval_and_os_policies_acknowledge_before_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FaultyFs::new());
    let store = open_with(dir.path(), Some(fs.clone()), None);
    let os = store
        .create_stream(cfg("o").sync(mitto_store::SyncPolicy::Os))
        .unwrap();
    let iv = store
        .create_stream(cfg("i").sync(mitto_store::SyncPolicy::Interval(Duration::from_millis(20))))
        .unwrap();
    let base = fs.syncs();
    fill(&os, 0, 50);
    assert_eq!(fs.syncs(), base, "page cache only");
    assert_eq!(os.info().fsyncs, 0);
    os.sync().unwrap();
    assert_eq!(os.info().fsyncs, 1);

    // The interval stream syncs by itself once the interval passes, with no further append.
    fill(&iv, 0, 50);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fs.synced_len(&segment_path(dir.path(), "i")) < 40 + iv.info().bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "no interval fsync in 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(iv.info().fsyncs >= 1);
}
