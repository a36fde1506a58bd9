//! Appending, reading, reopening, rollover, retention and purge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use mitto_store::{
    AppendError, Discard, ManualClock, Retention, StartAt, StoreError, StreamConfig,
};

#[test]
fn appends_read_back_in_order_with_fields_intact() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = store.create_stream(cfg("orders")).unwrap();
    let hdr = Bytes::from_static(b"\x01\x02headers");
    let a = s
        .append("orders.created", hdr.clone(), Bytes::from_static(b"one"))
        .unwrap()
        .wait()
        .unwrap();
    let b = s
        .append("orders.paid", Bytes::new(), Bytes::from_static(b"two"))
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
    assert!(b.timestamp_ns >= a.timestamp_ns);
    let m = s.get(1).unwrap().unwrap();
    assert_eq!(
        (m.subject(), m.headers(), m.payload()),
        ("orders.created", &hdr[..], &b"one"[..])
    );
    assert_eq!(m.timestamp_ns, a.timestamp_ns);
    assert_eq!(s.get(2).unwrap().unwrap().subject(), "orders.paid");
    assert_eq!(s.get(3).unwrap(), None);
    let i = s.info();
    assert_eq!((i.msgs, i.first_seq, i.last_seq), (2, 1, 2));
}

#[test]
fn refused_appends_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = store.create_stream(cfg("a").max_record_size(1024)).unwrap();
    assert!(matches!(
        s.append("b.x", Bytes::new(), Bytes::new()),
        Err(AppendError::SubjectNotCaptured(_))
    ));
    assert!(matches!(
        s.append("a.*", Bytes::new(), Bytes::new()),
        Err(AppendError::SubjectNotCaptured(_))
    ));
    assert!(matches!(
        s.append("a.x", Bytes::new(), Bytes::from(vec![0; 1024])),
        Err(AppendError::TooLarge { limit: 1024, .. })
    ));
    assert_eq!(s.info().last_seq, 0);
}

#[test]
fn reopening_keeps_messages_and_the_sequence_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let s = store.create_stream(cfg("s").segment_size(4096)).unwrap();
        fill(&s, 0, 300);
        assert!(s.info().segments > 3, "{:?}", s.info());
    }
    let store = open(dir.path());
    let s = store.stream("s").unwrap();
    assert!(s.recovery().is_clean(), "{:?}", s.recovery());
    assert_eq!(s.recovery().records, 300);
    assert_eq!(fill(&s, 300, 1), vec![301]);
    let p = payloads(&s);
    assert_eq!(p.len(), 301);
    assert!(p.iter().enumerate().all(|(i, m)| *m == format!("m{i}")));
}

#[test]
fn readers_start_first_last_new_at_a_sequence_or_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = open_with(dir.path(), None, Some(clock.clone()));
    let s = store.create_stream(cfg("s").segment_size(8192)).unwrap();
    for i in 0..500 {
        clock.advance(Duration::from_millis(1));
        fill(&s, i, 1);
    }
    let first = |start| s.reader(start).next_message().unwrap().map(|m| m.seq);
    assert_eq!(first(StartAt::First), Some(1));
    assert_eq!(first(StartAt::Last), Some(500));
    assert_eq!(first(StartAt::New), None);
    assert_eq!(first(StartAt::Seq(377)), Some(377));
    assert_eq!(first(StartAt::Seq(0)), Some(1));
    // Message i was stored at 1 ms + (i + 1) ms.
    let t = 1_000_000 + 250 * 1_000_000;
    assert_eq!(first(StartAt::Time(t)), Some(250));
    assert_eq!(first(StartAt::Time(t - 1)), Some(250));
    assert_eq!(first(StartAt::Time(t + 1)), Some(251));
    assert_eq!(first(StartAt::Time(u64::MAX)), None);
    assert_eq!(first(StartAt::Time(0)), Some(1));

    // A caught-up reader sees what comes later; a New reader sees only that.
    let mut all = s.reader(StartAt::First);
    assert_eq!(all.by_ref().count(), 500);
    let mut new = s.reader(StartAt::New);
    fill(&s, 500, 2);
    assert_eq!(all.next_message().unwrap().unwrap().seq, 501);
    assert_eq!(new.next_message().unwrap().unwrap().seq, 501);
    assert_eq!(new.next_message().unwrap().unwrap().seq, 502);
    assert_eq!(new.next_message().unwrap(), None);
}

#[test]
fn large_records_cross_read_chunks_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let c = cfg("big").max_record_size(2 << 20).segment_size(3 << 20);
    let s = store.create_stream(c).unwrap();
    let sizes = [10, 300_000, 1_500_000, 7, 900_000, 2_000_000, 1];
    for (i, n) in sizes.iter().enumerate() {
        s.append("big.x", Bytes::new(), Bytes::from(vec![i as u8; *n]))
            .unwrap()
            .wait()
            .unwrap();
    }
    let got: Vec<_> = s.reader(StartAt::First).map(|m| m.unwrap()).collect();
    assert_eq!(got.len(), sizes.len());
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m.payload().len(), sizes[i]);
        assert!(m.payload().iter().all(|&b| b == i as u8));
    }
    assert_eq!(s.info().segments, 2);
}

#[test]
fn retention_by_count_removes_the_oldest_and_deletes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ret = Retention {
        max_msgs: Some(50),
        ..Default::default()
    };
    let s = store
        .create_stream(cfg("r").retention(ret).segment_size(2048))
        .unwrap();
    fill(&s, 0, 400);
    let i = s.info();
    assert_eq!(
        (i.msgs, i.first_seq, i.last_seq, i.removed),
        (50, 351, 400, 350)
    );
    assert_eq!(seqs(&s), (351..=400).collect::<Vec<_>>());
    let files = std::fs::read_dir(dir.path().join("streams/r/segments"))
        .unwrap()
        .count();
    assert_eq!(files, i.segments);
    assert!(
        files <= 2, // 50 records of 40 bytes: 2000 bytes, in 2048-byte segments
        "{files} segment files for 50 small messages"
    );
    // The same after reopening.
    drop((s, store));
    let store = open(dir.path());
    let s = store.stream("r").unwrap();
    assert_eq!(seqs(&s), (351..=400).collect::<Vec<_>>());
    assert_eq!(s.get(350).unwrap(), None);
}

#[test]
fn retention_by_bytes_counts_stored_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Each record: 34 framing + 3 subject ("b.x") + payload "m<i>".
    let ret = Retention {
        max_bytes: Some(1000),
        ..Default::default()
    };
    let s = store.create_stream(cfg("b").retention(ret)).unwrap();
    fill(&s, 100, 100); // payloads m100..m199: 4 bytes, records of 41 bytes
    let i = s.info();
    assert_eq!(i.bytes, i.msgs * 41);
    assert_eq!(i.msgs, 1000 / 41);
    assert_eq!(i.first_seq, 100 - 1000 / 41 + 1);
}

#[test]
fn retention_by_age_with_an_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let store = open_with(dir.path(), None, Some(clock.clone()));
    let ret = Retention {
        max_age: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let s = store.create_stream(cfg("t").retention(ret)).unwrap();
    fill(&s, 0, 10);
    clock.advance(Duration::from_secs(30));
    fill(&s, 10, 10);
    clock.advance(Duration::from_secs(30));
    s.enforce_retention().unwrap();
    assert_eq!((s.info().msgs, s.info().first_seq), (10, 11));
    clock.advance(Duration::from_secs(29));
    s.enforce_retention().unwrap();
    assert_eq!(s.info().msgs, 10);
    clock.advance(Duration::from_secs(1));
    s.enforce_retention().unwrap();
    let i = s.info();
    assert_eq!((i.msgs, i.first_seq, i.last_seq), (0, 21, 20));
    assert_eq!(fill(&s, 20, 1), vec![21]);
    // A clock that goes backwards does not make timestamps go backwards.
    clock.set(0);
    let a = s
        .append("t.x", Bytes::new(), Bytes::new())
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(a.timestamp_ns, 1_000_000_000 + 90_000_000_000);
}

#[test]
fn discard_new_refuses_with_a_typed_error_and_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ret = Retention {
        max_msgs: Some(5),
        ..Default::default()
    };
    let s = store
        .create_stream(cfg("n").retention(ret).discard(Discard::New))
        .unwrap();
    fill(&s, 0, 5);
    let e = s
        .append("n.x", Bytes::new(), Bytes::new())
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(e, AppendError::StreamFull { limit: "max_msgs" }));
    assert!(e.is_backpressure());
    assert_eq!(payloads(&s), ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(s.info().rejected_full, 1);
    // Room made by a purge is usable, and sequences go on.
    s.purge(Some(3)).unwrap();
    assert_eq!(fill(&s, 5, 2), vec![6, 7]);
}

#[test]
fn purge_is_durable_and_the_sequence_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let s = store.create_stream(cfg("p").segment_size(2048)).unwrap();
        fill(&s, 0, 100);
        assert_eq!(s.purge(Some(41)).unwrap(), 40);
        assert_eq!(s.info().first_seq, 41);
        assert_eq!(s.purge(Some(10)).unwrap(), 0);
    }
    {
        let store = open(dir.path());
        let s = store.stream("p").unwrap();
        assert_eq!(seqs(&s), (41..=100).collect::<Vec<_>>());
        assert_eq!(s.purge(None).unwrap(), 60);
        let i = s.info();
        assert_eq!(
            (i.msgs, i.first_seq, i.last_seq, i.segments),
            (0, 101, 100, 1)
        );
    }
    let store = open(dir.path());
    let s = store.stream("p").unwrap();
    assert_eq!(s.info().msgs, 0);
    assert_eq!(fill(&s, 0, 1), vec![101]);
    assert_eq!(seqs(&s), vec![101]);
}

#[test]
fn streams_are_created_updated_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = store.create_stream(cfg("a")).unwrap();
    assert!(store.create_stream(cfg("a")).is_ok(), "same config again");
    assert!(matches!(
        store.create_stream(cfg("a").segment_size(1 << 20)),
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        store.create_stream(StreamConfig::new("b", ["a.x.>"])),
        Err(StoreError::InvalidConfig(_))
    ));
    assert!(matches!(
        store.create_stream(StreamConfig::new("../b", ["b"])),
        Err(StoreError::InvalidName(_))
    ));
    fill(&a, 0, 3);
    assert_eq!(store.stream_for_subject("a.q").unwrap().name(), "a");
    assert!(store.stream_for_subject("b.q").is_none());

    let ret = Retention {
        max_msgs: Some(2),
        ..Default::default()
    };
    let a2 = store.update_stream(cfg("a").retention(ret)).unwrap();
    assert_eq!(seqs(&a2), vec![2, 3]);
    assert!(matches!(
        a.append("a.x", Bytes::new(), Bytes::new()),
        Err(AppendError::Store(StoreError::Closed))
    ));
    drop(a);
    store.delete_stream("a").unwrap();
    assert!(store.stream("a").is_none());
    assert!(!dir.path().join("streams/a").exists());
    drop(store);
    assert!(open(dir.path()).streams().is_empty());
}

#[test]
fn a_full_queue_answers_queue_full() {
    let dir = tempfile::tempdir().unwrap();
    let opts = mitto_store::StoreOptions::new().queue_bytes(100);
    let store = mitto_store::Store::open(dir.path(), opts).unwrap();
    let s = store.create_stream(cfg("q")).unwrap();
    let e = s
        .append("q.x", Bytes::new(), Bytes::from(vec![0; 200]))
        .unwrap_err();
    assert!(matches!(e, AppendError::QueueFull));
    assert!(e.is_backpressure());
}

#[test]
fn a_caught_up_reader_waits_for_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = store.create_stream(cfg("w")).unwrap();
    fill(&s, 0, 2);
    assert_eq!(s.wait_for(2).wait().unwrap(), 2, "already there");
    let mut r = s.reader(StartAt::First);
    assert_eq!(r.by_ref().count(), 2);
    let w = s.wait_for(r.next_seq());
    assert_eq!(w.wait_timeout(Duration::from_millis(1)).unwrap(), None);
    let t = std::thread::spawn({
        let s = s.clone();
        move || fill(&s, 2, 1)
    });
    assert_eq!(w.wait().unwrap(), 3);
    assert_eq!(r.next_message().unwrap().unwrap().seq, 3);
    t.join().unwrap();
    // Closing ends the waits.
    let w = s.wait_for(10);
    s.close().unwrap();
    assert!(matches!(w.wait(), Err(StoreError::Closed)));
    assert!(matches!(s.wait_for(10).wait(), Err(StoreError::Closed)));
}

#[test]
fn lookups_read_near_the_record_not_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(mitto_store::FaultyFs::new());
    let clock = Arc::new(ManualClock::new(1));
    let store = open_with(dir.path(), Some(fs.clone()), Some(clock.clone()));
    let s = store
        .create_stream(cfg("l").sync(mitto_store::SyncPolicy::Os))
        .unwrap();
    // 8 MiB of 512-byte records in one segment.
    let payload = Bytes::from(vec![7u8; 512 - 37]);
    let mut done = Vec::new();
    for _ in 0..16_384 {
        clock.advance(Duration::from_micros(1));
        done.push(s.append("l.x", Bytes::new(), payload.clone()).unwrap());
    }
    for d in done {
        d.wait().unwrap();
    }
    assert_eq!(s.info().segments, 1);
    let before = fs.bytes_read();
    assert_eq!(s.get(12_345).unwrap().unwrap().seq, 12_345);
    let read = fs.bytes_read() - before;
    assert!(read <= 64 * 1024, "a lookup read {read} bytes");
    let before = fs.bytes_read();
    let t = s.get(9_000).unwrap().unwrap().timestamp_ns;
    let m = s.reader(StartAt::Time(t)).next_message().unwrap().unwrap();
    let read = fs.bytes_read() - before;
    // The first record stored at or after `t` (appends staged together share a timestamp).
    assert!(m.seq <= 9_000 && m.timestamp_ns == t);
    assert!(s.get(m.seq - 1).unwrap().unwrap().timestamp_ns < t);
    assert!(
        read <= 64 * 1024 + 256 * 1024,
        "a lookup by time read {read} bytes"
    );
}
