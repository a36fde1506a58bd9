//! Durable stream storage for the mitto broker.
//!
//! A [`Store`] keeps [`Stream`]s under a data directory. A stream captures subjects (wildcards
//! allowed) into an append-only log of segment files; every record carries its subject, the
//! encoded headers block, the payload, a sequence number, a timestamp and a 64-bit checksum.
//! Appends go to one writer thread per stream, which writes each batch with one `write` and,
//! under [`SyncPolicy::Always`] (the default), one `fsync` shared by every append in the batch
//! (group commit); an append's [`Completion`] fires only once its record is durable. Readers
//! ([`Stream::reader`]) start from the first, the last, a sequence or a time, find their place
//! through a sparse index per segment, and get payloads as slices of one read buffer.
//! [`Consumer`]s keep a durable consumer's position, ack floor and pending deliveries across
//! restarts.
//!
//! At open, recovery replays every segment: a torn tail is cut and reported, a damaged record in
//! the middle is skipped, counted and logged ([`RecoveryReport`]); no length read from disk is
//! trusted beyond the segment's size and the stream's `max_record_size`.
//!
//! The crate does no networking and holds no async runtime: the broker calls it (appends never
//! block; [`Completion::wait_async`] and [`SeqWaiter::wait_async`] await from async code). It
//! does not route messages to streams or deliver to consumers: the broker does, with
//! [`Store::stream_for_subject`], [`Reader`]s, [`Stream::wait_for`] and [`Consumer`].
//!
//! # On disk
//!
//! ```text
//! <data dir>/streams/<name>/stream.json                 configuration and purge floor (atomic replace)
//! <data dir>/streams/<name>/segments/<first seq>.seg     40-byte header (random hash seed), records
//! <data dir>/streams/<name>/consumers/<consumer>.json    snapshot of a consumer (atomic replace)
//! <data dir>/streams/<name>/consumers/<consumer>.<gen>.log  its operations since the snapshot
//! ```
//!
//! A record is 34 bytes of framing (xxh3-64 hash seeded per segment, length, sequence,
//! timestamp, subject and headers lengths) then the subject, the headers block and the payload.
//!
//! # Durability
//!
//! - [`SyncPolicy::Always`]: a completion fires after the `fdatasync` that covers its record;
//!   appends queued while a sync runs go into the next batch and share its sync. That batch
//!   also waits (at most one sync's time, 2 ms at most) until it holds as many appends as the
//!   last one acknowledged plus those queued meanwhile: appenders that wait for each
//!   acknowledgement come back a round trip later, and without the wait they would split into
//!   two half batches, each with a sync of its own. A lone appender never waits. A new
//!   segment's header and folder entry are synced before records go in.
//! - [`SyncPolicy::Interval`]: after the write; an `fdatasync` at least every interval.
//! - [`SyncPolicy::Os`]: after the write.
//! - A failed write (disk full) refuses its whole batch with a typed error, cuts the file back
//!   and leaves the stream writable; a failed `fdatasync` refuses the batch and stops the stream
//!   ([`StoreError::Failed`]) until it is reopened, since the page cache can no longer be trusted.
//!
//! # Storage choice, measured
//!
//! The `store-engines` scenario of the benchmark suite (`mitto-bench store-engines`, data in
//! `MITTO_BENCH_DIR`) runs this log beside [`fjall`](https://crates.io/crates/fjall) and
//! [`redb`](https://crates.io/crates/redb) in one process on one disk, durability equal: the
//! key-value engines sit behind a writer thread with this crate's group-commit rule (one
//! `WriteBatch` with `PersistMode::SyncData`, or one write transaction with
//! `Durability::Immediate`, per batch). Workload: 128 B appends acknowledged after their
//! fdatasync from 1 and 8 appenders, then a replay of the whole log; its figures go in
//! BENCHMARKS.md. An earlier run on a loaded 2-core VM found acknowledged appends bound by
//! `fdatasync` for all three (equal within the noise) and replay 2 to 4 times faster here than
//! in fjall. Beyond throughput the log gives what a stream needs and a key-value store does
//! not: retention from the head by count, bytes and age without tombstones or compaction, a
//! time index, recovery that reports the torn tail it cut and the damaged records it skipped,
//! records read without a copy per field, and full-disk errors per batch with nothing
//! acknowledged lost.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use mitto_store::{StartAt, Store, StoreOptions, StreamConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(dir.path(), StoreOptions::new())?;
//! let orders = store.create_stream(StreamConfig::new("orders", ["orders.>"]))?;
//! let done = orders.append("orders.created", Bytes::new(), Bytes::from_static(b"{\"id\":1}"))?;
//! let stored = done.wait()?; // fsynced
//! assert_eq!(stored.seq, 1);
//!
//! let mut reader = orders.reader(StartAt::First);
//! let msg = reader.next_message()?.unwrap();
//! assert_eq!((msg.seq, msg.subject(), msg.payload()), (1, "orders.created", &b"{\"id\":1}"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod clock;
mod config;
mod consumer;
mod error;
pub mod fs;
mod record;
mod segment;
mod store;
mod stream;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Discard, Retention, StreamConfig, SyncPolicy};
pub use consumer::{Consumer, ConsumerConfig, ConsumerState, Pending};
pub use error::{AppendError, Result, StoreError};
pub use fs::{FaultyFs, OsFs};
pub use record::StoredMessage;
pub use store::{Store, StoreOptions};
pub use stream::{
    Appended, Completion, Reader, RecoveryReport, SeqWaiter, StartAt, Stream, StreamInfo,
    MAX_MSG_IDS, MSG_ID_HEADER,
};
