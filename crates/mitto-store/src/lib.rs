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
//! The `storage_choice` bench (`cargo bench -p mitto-store --bench storage_choice`) runs this
//! crate's log beside [`fjall`](https://crates.io/crates/fjall) 3.1 and
//! [`redb`](https://crates.io/crates/redb) 5.0 in one process on one disk; the key-value
//! engines sit behind the same writer-thread group commit (one `WriteBatch` with
//! `PersistMode::SyncData`, or one write transaction with `Durability::Immediate`, per batch).
//! Workload: 128 B payloads, every append waited for (fsync always); then 300 000 more, and a
//! replay of the whole log. Three runs on a shared 2-core VM under a load average of 6 to 9
//! (other builds running): min to max, so only gross differences mean anything.
//!
//! | engine | 1 appender, acked appends/s | 8 appenders, acked appends/s | replay, msgs/s |
//! |---|---|---|---|
//! | mitto-store (segmented log) | 176 - 250 | 1 741 - 3 229 | 2.39 M - 6.67 M |
//! | fjall 3.1 (LSM) | 217 - 314 | 2 013 - 10 665 | 1.02 M - 1.81 M |
//! | redb 5.0 (B-tree) | 190 - 291 | 2 008 - 3 384 | 2.95 M - 5.03 M |
//!
//! Acknowledged appends are bound by `fdatasync` (3 to 5 ms on this disk) for all three: with
//! the same group commit they are equal within the noise. Replay is where they differ: the log
//! reads 256 KiB at a time and hands out slices of it (about 10 M msgs/s measured alone on
//! the same machine), fjall reads 2 to 4 times slower. The log is the choice because, at
//! equal acked throughput, it also gives what a stream needs and a key-value store does not:
//! retention from the head by count, bytes and age without tombstones or compaction, a time
//! index, recovery that reports the torn tail it cut and the damaged records it skipped (and
//! opens), records read without a copy per field, and full-disk errors per batch with
//! nothing acknowledged lost. To rerun on a quiet machine beside NATS JetStream before the
//! figures go to BENCHMARKS.md.
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
