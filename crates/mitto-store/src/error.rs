//! Typed errors: what the appender, a reader and the operator can each match on.

use std::io;
use std::path::PathBuf;

/// An error from opening, reading or managing a stream or a consumer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The operating system refused an operation on a file of the store.
    #[error("{op} {path}: {source}")]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A configuration the store cannot accept (the caller's mistake).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A stream or consumer name that is not 1 to 64 of `A-Z a-z 0-9 _ -`.
    #[error("invalid name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ -")]
    InvalidName(String),
    /// No stream or consumer of that name.
    #[error("{0} not found")]
    NotFound(String),
    /// A stream or consumer of that name exists already with another configuration.
    #[error("{0} exists already")]
    AlreadyExists(String),
    /// A file of the store does not hold what the store wrote (not a torn tail, which recovery
    /// repairs, but a damaged metadata file or a record that no longer checks).
    #[error("corrupt {path}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The stream stopped accepting writes after a failed fsync (its page cache can no longer be
    /// trusted); reopen it to recover from what is on disk.
    #[error("stream {0} failed and must be reopened")]
    Failed(String),
    /// A configured limit refuses the operation (such as `max_ack_pending`).
    #[error("limit reached: {0}")]
    LimitReached(&'static str),
    /// The stream was closed.
    #[error("stream closed")]
    Closed,
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether the error is the disk being full (ENOSPC or a quota).
    pub fn is_storage_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if is_full(source))
    }
}

/// Why an append was not stored. Nothing of a refused append is visible to readers, and nothing
/// acknowledged before it is lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The stream is at a retention limit and its discard policy is `New`: the broker answers
    /// BACKPRESSURE_REJECTION.
    #[error("stream full ({limit} limit reached, discard policy new)")]
    StreamFull {
        /// Which limit: `"max_msgs"` or `"max_bytes"`.
        limit: &'static str,
    },
    /// The record is larger than the stream's `max_record_size` (or its `max_bytes`).
    #[error("record of {size} bytes over the limit of {limit}")]
    TooLarge {
        /// The record's size as stored.
        size: u64,
        /// The limit it exceeded.
        limit: u64,
    },
    /// The subject is not one the stream captures, or not a valid literal subject.
    #[error("subject {0:?} is not captured by this stream")]
    SubjectNotCaptured(String),
    /// The writer's queue is full (`try_append` only): the broker answers BACKPRESSURE_REJECTION.
    #[error("append queue full")]
    QueueFull,
    /// Writing or syncing the record failed (disk full, I/O error); the record is not stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AppendError {
    /// Whether the error means "try later" (a full stream, queue or disk) rather than a bad record.
    pub fn is_backpressure(&self) -> bool {
        match self {
            AppendError::StreamFull { .. } | AppendError::QueueFull => true,
            AppendError::Store(e) => e.is_storage_full(),
            _ => false,
        }
    }
}

pub(crate) fn is_full(e: &io::Error) -> bool {
    // ENOSPC, or EDQUOT (a quota).
    e.kind() == io::ErrorKind::StorageFull || matches!(e.raw_os_error(), Some(28 | 122))
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
