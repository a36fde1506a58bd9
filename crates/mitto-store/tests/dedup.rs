//! Deduplication by `mitto-msg-id`: a retried append is answered with the first one's sequence
//! and stored once, within the window, across a reopen, and not when the first was refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use mitto_store::{Appended, FaultyFs, ManualClock, Stream, MSG_ID_HEADER};

fn with_id(id: &str) -> Bytes {
    mitto_proto::Headers::builder()
        .insert_custom(MSG_ID_HEADER, id)
        .unwrap()
        .build()
        .as_bytes()
        .clone()
}

fn put(s: &Stream, id: &str, body: &str) -> Appended {
    s.append("d.x", with_id(id), Bytes::from(body.to_owned()))
        .unwrap()
        .wait()
        .unwrap()
}

#[test]
fn a_repeated_id_is_answered_with_the_first_sequence_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = store.create_stream(cfg("d")).unwrap();
    let a = put(&s, "order-1", "first");
    let b = put(&s, "order-2", "second");
    let again = put(&s, "order-1", "retry");
    assert_eq!((a.seq, b.seq), (1, 2));
    assert!(!a.duplicate && !b.duplicate);
    assert_eq!((again.seq, again.timestamp_ns), (1, a.timestamp_ns));
    assert!(again.duplicate);
    assert_eq!(payloads(&s), ["first", "second"]);
    assert_eq!(s.info().duplicates, 1);
    // Messages without an id are never deduplicated.
    fill(&s, 0, 2);
    fill(&s, 0, 2);
    assert_eq!(s.info().msgs, 6);
}

#[test]
fn repeats_queued_in_one_batch_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = store.create_stream(cfg("d")).unwrap();
    let done: Vec<_> = (0..50)
        .map(|i| {
            s.append("d.x", with_id(&format!("k{}", i % 5)), Bytes::from("m"))
                .unwrap()
        })
        .collect();
    let got: Vec<_> = done.into_iter().map(|c| c.wait().unwrap()).collect();
    assert_eq!(s.info().msgs, 5);
    for (i, a) in got.iter().enumerate() {
        assert_eq!(a.seq, got[i % 5].seq, "append {i}");
        assert_eq!(a.duplicate, i >= 5, "append {i}");
    }
}

#[test]
fn the_window_ends_and_a_zero_window_turns_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    let store = open_with(dir.path(), None, Some(clock.clone()));
    let s = store
        .create_stream(cfg("d").duplicate_window(Duration::from_secs(10)))
        .unwrap();
    put(&s, "a", "1");
    clock.advance(Duration::from_secs(9));
    assert!(put(&s, "a", "2").duplicate);
    clock.advance(Duration::from_secs(2));
    let late = put(&s, "a", "3");
    assert!(!late.duplicate);
    assert_eq!(late.seq, 2);

    let off = store
        .create_stream(
            mitto_store::StreamConfig::new("o", ["o.>"]).duplicate_window(Duration::ZERO),
        )
        .unwrap();
    for _ in 0..2 {
        off.append("o.x", with_id("a"), Bytes::from("m"))
            .unwrap()
            .wait()
            .unwrap();
    }
    assert_eq!(off.info().msgs, 2);
}

#[test]
fn ids_within_the_window_are_remembered_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000_000));
    {
        let store = open_with(dir.path(), None, Some(clock.clone()));
        let s = store
            .create_stream(cfg("d").duplicate_window(Duration::from_secs(60)))
            .unwrap();
        put(&s, "old", "1");
        clock.advance(Duration::from_secs(50));
        put(&s, "recent", "2");
        s.close().unwrap();
    }
    clock.advance(Duration::from_secs(20));
    let store = open_with(dir.path(), None, Some(clock.clone()));
    let s = store.stream("d").unwrap();
    let r = put(&s, "recent", "retry after restart");
    assert!(r.duplicate);
    assert_eq!(r.seq, 2);
    // "old" left the window before the restart: stored again.
    assert!(!put(&s, "old", "3").duplicate);
    assert_eq!(payloads(&s), ["1", "2", "3"]);
}

#[test]
fn an_append_that_failed_does_not_shadow_its_retry() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FaultyFs::new());
    let store = open_with(dir.path(), Some(fs.clone()), None);
    let s = store.create_stream(cfg("d")).unwrap();
    fs.set_write_budget(0);
    let first = s.append("d.x", with_id("k"), Bytes::from("m")).unwrap();
    let repeat = s.append("d.x", with_id("k"), Bytes::from("m")).unwrap();
    assert!(first.wait().is_err());
    // The repeat was either in the failed batch (refused with it) or staged after it (stored).
    let repeat = repeat.wait();
    fs.set_write_budget(u64::MAX);
    let retry = put(&s, "k", "m");
    match repeat {
        Err(_) => assert_eq!((retry.seq, retry.duplicate), (1, false)),
        Ok(r) => {
            assert_eq!((r.seq, r.duplicate), (1, false));
            assert!(retry.duplicate);
        }
    }
    assert_eq!(s.info().msgs, 1);
}
