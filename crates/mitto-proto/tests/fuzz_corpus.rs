//! Replays the committed fuzz corpus (`fuzz/corpus/`) through the fuzz targets' code on stable
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Rust, so every input a fuzzer ever found interesting stays a regression test.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "fuzz input {} fails", path.display());
        n += 1;
    }
    assert!(n >= 10, "corpus for {target} has only {n} inputs");
}

#[test]
fn decode_corpus_replays_clean() {
    replay("decode", mitto_proto::fuzzing::decode);
}

#[test]
fn round_trip_corpus_replays_clean() {
    replay("round_trip", mitto_proto::fuzzing::round_trip);
}
