//! Durable consumers keep their position, ack floor and pending deliveries across reopening.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use mitto_store::{ConsumerConfig, StartAt, StoreError};

#[test]
fn position_acks_and_pending_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let s = store.create_stream(cfg("c")).unwrap();
        fill(&s, 0, 10);
        let mut c = s
            .consumer(ConsumerConfig::new("worker").ack_wait(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(c.next_seq(), 1);
        for seq in 1..=6 {
            assert_eq!(c.on_delivered(seq, 1_000).unwrap(), 1);
        }
        for seq in [1, 2, 4] {
            assert!(c.on_ack(seq).unwrap());
        }
        assert!(!c.on_ack(4).unwrap(), "a repeated ack");
        assert_eq!(c.on_delivered(3, 2_000).unwrap(), 2, "a redelivery");
        assert!(c.on_nak(5, 9_000).unwrap());
        assert!(c.on_terminated(6).unwrap());
        c.flush().unwrap();
        // Opening it twice at once is refused.
        assert!(matches!(
            s.consumer(ConsumerConfig::new("worker")),
            Err(StoreError::AlreadyExists(_))
        ));
    }
    let store = open(dir.path());
    let s = store.stream("c").unwrap();
    assert_eq!(s.consumer_names().unwrap(), ["worker"]);
    let c = s
        .consumer(ConsumerConfig::new("worker").ack_wait(Duration::from_secs(5)))
        .unwrap();
    let st = c.state();
    assert_eq!((st.delivered, st.ack_floor(), st.terminated), (6, 2, 1));
    assert_eq!(st.pending.keys().copied().collect::<Vec<_>>(), [3, 5]);
    assert_eq!(st.pending[&3].deliveries, 2);
    assert_eq!(st.pending[&3].redeliver_at_ns, 2_000 + 5_000_000_000);
    assert_eq!(st.pending[&5].redeliver_at_ns, 9_000);
    assert_eq!(c.next_seq(), 7);
    assert_eq!(c.due(10_000, 10), [5]);
    assert_eq!(c.due(u64::MAX, 10), [3, 5]);
}

#[test]
fn new_consumers_start_where_told() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = store.create_stream(cfg("c")).unwrap();
    fill(&s, 0, 10);
    s.purge(Some(3)).unwrap();
    let next = |name: &str, start| {
        s.consumer(ConsumerConfig::new(name).start(start))
            .unwrap()
            .next_seq()
    };
    assert_eq!(next("a", StartAt::First), 3);
    assert_eq!(next("b", StartAt::Last), 10);
    assert_eq!(next("c", StartAt::New), 11);
    assert_eq!(next("d", StartAt::Seq(7)), 7);
    let t = s.get(5).unwrap().unwrap().timestamp_ns;
    assert_eq!(next("e", StartAt::Time(t)), 5);
    // An existing consumer keeps its position whatever start it is opened with.
    assert_eq!(next("d", StartAt::First), 7);
}

#[test]
fn the_log_is_compacted_into_snapshots_and_stays_correct() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = store
        .create_stream(cfg("c").sync(mitto_store::SyncPolicy::Os))
        .unwrap();
    {
        let mut c = s
            .consumer(ConsumerConfig::new("busy").max_ack_pending(100))
            .unwrap();
        // 40 000 deliveries and acks: 2.5 MiB of operations, past two compactions.
        for seq in 1..=40_000u64 {
            c.on_delivered(seq, seq).unwrap();
            if seq % 1000 != 0 {
                c.on_ack(seq).unwrap();
            }
            if seq % 100 == 0 {
                c.flush().unwrap();
            }
        }
        c.skip_to(40_010).unwrap();
    }
    let files: Vec<String> = std::fs::read_dir(dir.path().join("streams/c/consumers"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files.len(), 2, "one snapshot and one log: {files:?}");
    let c = s
        .consumer(ConsumerConfig::new("busy").max_ack_pending(100))
        .unwrap();
    assert_eq!(c.state().delivered, 40_010);
    assert_eq!(c.state().pending.len(), 40);
    assert_eq!(c.state().ack_floor(), 999);
}

#[test]
fn max_ack_pending_bounds_first_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = store.create_stream(cfg("c")).unwrap();
    let mut c = s
        .consumer(ConsumerConfig::new("w").max_ack_pending(2))
        .unwrap();
    c.on_delivered(1, 0).unwrap();
    c.on_delivered(2, 0).unwrap();
    assert!(matches!(
        c.on_delivered(3, 0),
        Err(StoreError::LimitReached(_))
    ));
    assert_eq!(
        c.on_delivered(1, 0).unwrap(),
        2,
        "redeliveries are not first deliveries"
    );
    c.on_ack(1).unwrap();
    assert_eq!(c.on_delivered(3, 0).unwrap(), 1);
}

#[test]
fn a_torn_or_damaged_consumer_log_loses_only_those_operations() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let s = store.create_stream(cfg("c")).unwrap();
        let mut c = s.consumer(ConsumerConfig::new("w")).unwrap();
        for seq in 1..=10 {
            c.on_delivered(seq, 0).unwrap();
        }
        for seq in 1..=10 {
            c.on_ack(seq).unwrap();
        }
    }
    let log = std::fs::read_dir(dir.path().join("streams/c/consumers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let mut b = std::fs::read(&log).unwrap();
    assert_eq!(b.len(), 20 * 32);
    b[32 * 12 + 20] ^= 1; // the ack of 3
    b.truncate(b.len() - 7); // the ack of 10, torn
    std::fs::write(&log, &b).unwrap();
    let store = open(dir.path());
    let s = store.stream("c").unwrap();
    let c = s.consumer(ConsumerConfig::new("w")).unwrap();
    assert_eq!(c.skipped_ops(), 1);
    assert_eq!(
        c.state().pending.keys().copied().collect::<Vec<_>>(),
        [3, 10]
    );
    assert_eq!(c.state().ack_floor(), 2);
    drop(c);
    s.delete_consumer("w").unwrap();
    assert!(s.consumer_names().unwrap().is_empty());
}
