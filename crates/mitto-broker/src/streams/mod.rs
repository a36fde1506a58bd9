//! Durable streams in the broker: publishes a stream captures are appended to its log on disk
//! (`mitto-store`) before they are acknowledged; an admin API on `$MITTO.STREAM.*` subjects;
//! durable consumers that deliver a stream to bound subscriptions (PROTOCOL.md section 19).
//!
//! The rest of the broker reaches this module through a few calls: [`capture`] and
//! [`answer_when_stored`] on the publish path, [`admin::is_admin`] / [`admin::handle`] for
//! requests, and the consumer binding calls of `bind.rs` for SUBSCRIBE, ACK, NACK,
//! UNSUBSCRIBE and a connection's end.

mod admin;
mod bind;
mod consumers;
mod engine;

pub(crate) use crate::stream_spec::StreamSpec;
pub(crate) use admin::{handle as admin_request, is_admin};
pub(crate) use bind::{
    is_bound, is_consumer_subject, on_ack, on_gone, on_nack, on_resume, on_subscribe,
    on_unsubscribe,
};

use crate::core::Core;
use crate::mailbox::Mailbox;
use bytes::Bytes;
use mitto::proto::{Flags, Frame};
use mitto::{Error, Status};
use mitto_store::{AppendError, Completion, RecoveryReport, Store, StoreError, StoreOptions};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The broker's streams: the store, what recovery found, the running consumers.
pub(crate) struct Streams {
    pub(crate) store: Store,
    /// The data directory.
    pub(crate) dir: std::path::PathBuf,
    pub(crate) max_streams: usize,
    pub(crate) max_consumers: usize,
    pub(crate) max_ack_pending: u32,
    max_payload: u32,
    /// What recovery repaired in each stream at start-up.
    recovered: Mutex<BTreeMap<String, RecoveryReport>>,
    /// Consumers with at least one bound subscription: (stream, consumer) -> engine.
    pub(crate) engines: Mutex<HashMap<(String, String), Arc<engine::Engine>>>,
    /// Bound subscriptions: (connection, sid) -> engine.
    pub(crate) bound: Mutex<HashMap<(u64, u32), Arc<engine::Engine>>>,
    /// The data directory's lock, held until shutdown: one broker per data directory.
    dir_lock: Mutex<Option<std::fs::File>>,
}

/// The streams' state, once the data directory is open (kept untyped in [`Core`]).
pub(crate) fn of(core: &Core) -> Option<&Streams> {
    core.streams.get()?.downcast_ref()
}

/// A store error as the status its caller can act on.
pub(crate) fn store_error(e: StoreError) -> Error {
    let status = match &e {
        StoreError::NotFound(_) => Status::NOT_FOUND,
        StoreError::AlreadyExists(_) => Status::ALREADY_EXISTS,
        StoreError::InvalidConfig(_) | StoreError::InvalidName(_) => Status::BAD_REQUEST,
        StoreError::LimitReached(_) => Status::QUOTA_EXCEEDED,
        e if e.is_storage_full() => Status::QUOTA_EXCEEDED,
        _ => Status::UNAVAILABLE,
    };
    Error::new(status, e.to_string())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens the data directory (recovering every stream, which may take a while: off the
/// runtime's threads) and creates or updates the configured streams.
pub(crate) async fn open(core: &Arc<Core>) -> Result<(), Error> {
    let Some(dir) = core.cfg.data_dir.clone() else {
        return Ok(());
    };
    let specs = core.cfg.streams.clone();
    let (store, dir_lock) = tokio::task::spawn_blocking(move || open_store(&dir, &specs))
        .await
        .map_err(|e| Error::new(Status::INTERNAL, e.to_string()))??;
    let mut recovered = BTreeMap::new();
    for s in store.streams() {
        let r = s.recovery().clone();
        if !r.is_clean() {
            tracing::warn!(
                stream = s.name(),
                truncated_bytes = r.truncated_bytes,
                damaged_ranges = r.damaged_ranges,
                damaged_bytes = r.damaged_bytes,
                missing_seqs = r.missing_seqs,
                removed_files = r.removed_files.len(),
                quarantined_files = r.quarantined_files.len(),
                "stream recovered: damage dropped (see /streamz)"
            );
        }
        tracing::info!(
            stream = s.name(),
            msgs = s.info().msgs,
            records = r.records,
            "stream open"
        );
        recovered.insert(s.name().to_owned(), r);
    }
    let streams = Streams {
        store,
        dir: core.cfg.data_dir.clone().unwrap_or_default(),
        max_streams: core.cfg.max_streams,
        max_consumers: core.cfg.max_consumers,
        max_ack_pending: core.cfg.max_ack_pending,
        max_payload: core.cfg.max_payload,
        recovered: Mutex::new(recovered),
        engines: Mutex::new(HashMap::new()),
        bound: Mutex::new(HashMap::new()),
        dir_lock: Mutex::new(Some(dir_lock)),
    };
    let _ = core.streams.set(Arc::new(streams));
    Ok(())
}

fn open_store(
    dir: &std::path::Path,
    specs: &[StreamSpec],
) -> Result<(Store, std::fs::File), Error> {
    let unavailable = |e: StoreError| {
        Error::new(
            Status::UNAVAILABLE,
            format!("data directory {}: {e}", dir.display()),
        )
    };
    let dir_lock = lock_dir(dir)?;
    let store = Store::open(dir, StoreOptions::new()).map_err(unavailable)?;
    tracing::info!(dir = %dir.display(), "data directory open");
    for spec in specs {
        let cfg = spec
            .to_store()
            .map_err(|e| Error::new(Status::BAD_REQUEST, e))?;
        match store.stream(&cfg.name) {
            Some(s) if s.config() == &cfg => {}
            Some(_) => {
                store.update_stream(cfg).map_err(unavailable)?;
            }
            None => {
                store.create_stream(cfg).map_err(unavailable)?;
            }
        }
    }
    Ok((store, dir_lock))
}

/// Takes `<dir>/LOCK` (an advisory lock the operating system drops with the process): two
/// brokers writing one stream would corrupt it.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File, Error> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::new(
            Status::UNAVAILABLE,
            format!("data directory {}: {what}: {e}", dir.display()),
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| fail("cannot create it", &e))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(|e| fail("cannot open LOCK", &e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::new(
            Status::ALREADY_EXISTS,
            format!(
                "data directory {} is in use by another broker: give this one another --data-dir",
                dir.display()
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(fail("cannot lock LOCK", &e)),
    }
}

/// At shutdown: ends the running consumers (their state flushed), closes every stream
/// (what is queued written and synced) and lets the data directory go.
pub(crate) async fn close(core: &Core) {
    let Some(s) = of(core) else {
        return;
    };
    let engines: Vec<_> = lock(&s.engines).values().cloned().collect();
    for e in &engines {
        e.send(engine::Cmd::Stop(
            Status::UNAVAILABLE,
            "broker is shutting down".into(),
        ));
    }
    for _ in 0..200 {
        if lock(&s.engines).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let streams = s.store.streams();
    let _ = tokio::task::spawn_blocking(move || {
        for st in streams {
            if let Err(e) = st.close() {
                tracing::warn!(stream = st.name(), error = %e, "stream not closed cleanly");
            }
        }
    })
    .await;
    lock(&s.dir_lock).take();
}

/// [`capture`] of a publish routed within `scope`: a copy the federation brings for a queue
/// group is the second copy of a message this broker may also get for its plain
/// subscriptions, so a stream stores only the plain one.
pub(crate) fn capture_in(
    core: &Core,
    f: &Frame,
    scope: &crate::fabric::Scope,
) -> Result<Option<Stored>, Error> {
    match scope {
        crate::fabric::Scope::Group(_) => Ok(None),
        _ => capture(core, f),
    }
}

/// Appends a PUBLISH that a stream captures; `None` when no stream does (or streams are off).
/// A refusal known at once (a full queue, a record too large, a stopped stream) is an error
/// for the publisher; a later one comes through the completion.
pub(crate) fn capture(core: &Core, f: &Frame) -> Result<Option<Stored>, Error> {
    let Some(streams) = of(core) else {
        return Ok(None);
    };
    let subject = f.subject.as_str();
    if subject.starts_with('$') {
        return Ok(None);
    }
    let Some(stream) = streams.store.stream_for_subject(subject) else {
        return Ok(None);
    };
    let payload = if f.flags.contains(Flags::COMPRESSED) {
        f.decompressed_payload(streams.max_payload)
            .map_err(|e| Error::new(e.status(), e.to_string()))?
    } else if f.value.is_some() {
        let mut g = f.clone();
        g.materialize()
            .map_err(|e| Error::new(Status::INTERNAL, e))?;
        g.payload
    } else {
        f.payload.clone()
    };
    let headers: Bytes = f.headers.as_bytes().clone();
    match stream.append(subject, headers, payload) {
        Ok(done) => Ok(Some(Stored {
            done,
            stream: stream.name().to_owned(),
        })),
        Err(e) => Err(append_error(stream.name(), &e)),
    }
}

/// An append on its way to the disk.
pub(crate) struct Stored {
    done: Completion,
    stream: String,
}

impl Stored {
    /// Waits until it is stored (as the stream's fsync policy says) or refused.
    pub(crate) async fn wait(self) -> Result<(), Error> {
        match self.done.wait_async().await {
            Ok(_) => Ok(()),
            Err(e) => Err(append_error(&self.stream, &e)),
        }
    }
}

/// Sends the publisher its one answer once the append is stored as the stream's fsync policy
/// says: an ERROR saying why it was not stored, else `routed`'s (a refusal by subscriptions
/// that stayed full), else ACK.
pub(crate) fn answer_when_stored(
    stored: Stored,
    id: u64,
    routed: Result<(), Error>,
    mailbox: Arc<Mailbox>,
) {
    tokio::spawn(async move {
        let f = match stored.wait().await.and(routed) {
            Ok(()) => Frame::ack(id, 0),
            Err(e) => Frame::error(id, e.status(), e.message()),
        };
        mailbox.push_control(f);
    });
}

/// The status and reason an append refusal is reported with.
pub(crate) fn append_error(stream: &str, e: &AppendError) -> Error {
    let status = match e {
        AppendError::StreamFull { .. } | AppendError::QueueFull => Status::BACKPRESSURE_REJECTION,
        AppendError::TooLarge { .. } => Status::PAYLOAD_TOO_LARGE,
        AppendError::Store(s) if s.is_storage_full() => Status::QUOTA_EXCEEDED,
        AppendError::Store(_) => Status::UNAVAILABLE,
        _ => Status::INTERNAL,
    };
    let why = match e {
        AppendError::Store(s) if s.is_storage_full() => {
            format!("stream {stream}: disk full, message not stored: {s}")
        }
        AppendError::Store(s) => {
            format!("stream {stream}: storage failed, message not stored: {s}")
        }
        e => format!("stream {stream}: {e}"),
    };
    Error::new(status, why)
}

/// `/streamz`: each stream's counts, counters, recovery report and consumers.
pub(crate) fn monitor_page(core: &Core) -> serde_json::Value {
    let Some(streams) = of(core) else {
        return json!({"enabled": false, "streams": 0, "list": []});
    };
    let recovered = lock(&streams.recovered).clone();
    let list: Vec<_> = streams
        .store
        .streams()
        .iter()
        .map(|s| {
            let i = s.info();
            let r = recovered.get(s.name());
            json!({
                "name": s.name(), "config": StreamSpec::of(s.config()),
                "msgs": i.msgs, "bytes": i.bytes, "first_seq": i.first_seq, "last_seq": i.last_seq,
                "appended": i.appended, "append_errors": i.append_errors,
                "rejected_full": i.rejected_full, "duplicates": i.duplicates, "removed": i.removed, "fsyncs": i.fsyncs,
                "failed": i.failed,
                "consumers": s.consumer_names().unwrap_or_default(),
                "recovery": r.map(|r| json!({
                    "records": r.records, "truncated_bytes": r.truncated_bytes,
                    "damaged_ranges": r.damaged_ranges, "damaged_bytes": r.damaged_bytes,
                    "missing_seqs": r.missing_seqs,
                    "removed_files": r.removed_files.len(),
                    "quarantined_files": r.quarantined_files.len(),
                })),
            })
        })
        .collect();
    json!({"enabled": true, "streams": list.len(), "list": list})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_refusals_say_what_and_whether_to_retry() {
        let full = AppendError::Store(StoreError::Io {
            op: "write",
            path: "s/1.seg".into(),
            source: std::io::Error::from_raw_os_error(28),
        });
        let e = append_error("orders", &full);
        assert_eq!(e.status(), Status::QUOTA_EXCEEDED);
        assert!(
            e.message()
                .contains("orders: disk full, message not stored"),
            "{e}"
        );
        let failed = AppendError::Store(StoreError::Failed("orders".into()));
        let e = append_error("orders", &failed);
        assert_eq!(e.status(), Status::UNAVAILABLE);
        assert!(e.message().contains("storage failed"), "{e}");
        let full_stream = AppendError::StreamFull { limit: "max_msgs" };
        let e = append_error("orders", &full_stream);
        assert_eq!(e.status(), Status::BACKPRESSURE_REJECTION);
        assert!(e.message().contains("max_msgs"), "{e}");
    }
}
