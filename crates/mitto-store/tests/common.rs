//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use mitto_store::{Clock, FaultyFs, Store, StoreOptions, Stream, StreamConfig};

pub(crate) fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::new()).unwrap()
}

pub(crate) fn open_with(
    dir: &Path,
    fs: Option<Arc<FaultyFs>>,
    clock: Option<Arc<dyn Clock>>,
) -> Store {
    let mut o = StoreOptions::new();
    if let Some(fs) = fs {
        o = o.fs(fs);
    }
    if let Some(c) = clock {
        o = o.clock(c);
    }
    Store::open(dir, o).unwrap()
}

pub(crate) fn cfg(name: &str) -> StreamConfig {
    StreamConfig::new(name, [format!("{name}.>")]).max_record_size(1024)
}

/// Appends `n` messages `<i>` to `<stream>.x` and waits for each.
pub(crate) fn fill(s: &Stream, from: usize, n: usize) -> Vec<u64> {
    let subject = format!("{}.x", s.name());
    let done: Vec<_> = (from..from + n)
        .map(|i| {
            s.append(&subject, Bytes::new(), Bytes::from(format!("m{i}")))
                .unwrap()
        })
        .collect();
    done.into_iter().map(|c| c.wait().unwrap().seq).collect()
}

/// Every payload in the stream, in order.
pub(crate) fn payloads(s: &Stream) -> Vec<String> {
    s.reader(mitto_store::StartAt::First)
        .map(|m| String::from_utf8(m.unwrap().payload().to_vec()).unwrap())
        .collect()
}

pub(crate) fn seqs(s: &Stream) -> Vec<u64> {
    s.reader(mitto_store::StartAt::First)
        .map(|m| m.unwrap().seq)
        .collect()
}
