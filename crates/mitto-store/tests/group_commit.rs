//! Group commit under `SyncPolicy::Always` with appenders that each wait for their
//! acknowledgement and then take a while to send the next append, as a broker's publishers do
//! (a network round trip between the ACK and the next PUBLISH).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use mitto_store::FaultyFs;

#[test]
fn appenders_with_a_round_trip_between_appends_share_one_fsync_per_round() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FaultyFs::new());
    fs.set_sync_delay(Duration::from_millis(3));
    let store = open_with(dir.path(), Some(fs.clone()), None);
    let s = store.create_stream(cfg("g")).unwrap();
    let before = s.info().fsyncs;
    const THREADS: usize = 8;
    const ROUNDS: usize = 50;
    std::thread::scope(|sc| {
        for t in 0..THREADS {
            let s = &s;
            sc.spawn(move || {
                for i in 0..ROUNDS {
                    let p = Bytes::from(format!("{t:02}{i:06}"));
                    s.append("g.x", Bytes::new(), p).unwrap().wait().unwrap();
                    // The round trip (0.2 to 0.4 ms) is shorter than a sync (3 ms): every
                    // appender is back while a sync runs, and all eight belong in one batch.
                    std::thread::sleep(Duration::from_micros(200 + 30 * t as u64));
                }
            });
        }
    });
    let info = s.info();
    let (appends, syncs) = (info.appended, info.fsyncs - before);
    assert_eq!(appends, (THREADS * ROUNDS) as u64);
    eprintln!("{appends} appends, {syncs} fsyncs");
    // Without waiting for the appenders just acknowledged, those that came back during a sync
    // are synced alone while the others come back: two half batches alternating, 4 per fsync
    // (8 with the wait; more than 4.5 leaves room for a loaded machine's late threads).
    assert!(
        syncs * 9 < appends * 2,
        "{syncs} fsyncs for {appends} appends"
    );
    let mut last = [None::<usize>; THREADS];
    for p in payloads(&s) {
        let (t, i): (usize, usize) = (p[..2].parse().unwrap(), p[2..].parse().unwrap());
        assert!(
            last[t].is_none_or(|l| l + 1 == i),
            "appender {t} out of order"
        );
        last[t] = Some(i);
    }
}
