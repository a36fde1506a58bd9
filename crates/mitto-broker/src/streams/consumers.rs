//! Durable consumers as the admin API sees them: their configuration (kept by the broker in
//! `<data dir>/consumers/<stream>/<consumer>.json`; the store keeps their position), and
//! CREATE, INFO, DELETE.

use super::store_error;
use super::{lock, Streams};
use crate::permissions::Permissions;
use mitto::{Error, Status};
use mitto_store::{ConsumerConfig, StartAt, Stream};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// Where a new consumer starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeliverFrom {
    /// The oldest message kept.
    #[default]
    All,
    /// The newest message stored at creation.
    Last,
    /// Only messages stored after creation.
    New,
    /// `start_seq`.
    Seq,
    /// The first message stored at or after `start_time`.
    Time,
}

/// How fast stored messages are replayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Replay {
    /// As fast as the subscribers take them.
    #[default]
    Instant,
    /// With the gaps between their timestamps.
    Original,
}

/// A consumer's configuration: the body of `$MITTO.CONSUMER.CREATE.<stream>.<consumer>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ConsumerSpec {
    pub(crate) deliver: DeliverFrom,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) start_seq: Option<u64>,
    /// RFC 3339, e.g. `2026-12-05T08:00:00Z`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) start_time: Option<String>,
    /// Only subjects matching this filter are delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) filter: Option<String>,
    /// How long a delivery waits for its ACK before it is sent again (humantime).
    pub(crate) ack_wait: String,
    /// Deliveries of one message before it goes to `dead_letter` (and is given up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_deliver: Option<u32>,
    /// Where a message given up after `max_deliver` deliveries is published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) dead_letter: Option<String>,
    /// Deliveries awaiting an ACK at most (capped by the broker's `max_ack_pending`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_ack_pending: Option<u32>,
    pub(crate) replay: Replay,
}

impl ConsumerSpec {
    pub(crate) fn new() -> ConsumerSpec {
        ConsumerSpec {
            deliver: DeliverFrom::All,
            start_seq: None,
            start_time: None,
            filter: None,
            ack_wait: "30s".into(),
            max_deliver: None,
            dead_letter: None,
            max_ack_pending: None,
            replay: Replay::Instant,
        }
    }

    pub(crate) fn ack_wait(&self) -> Result<Duration, String> {
        humantime::parse_duration(&self.ack_wait).map_err(|e| format!("ack_wait: {e}"))
    }

    /// The store's configuration, the pending bound capped at `cap`.
    pub(crate) fn to_store(&self, name: &str, cap: u32) -> Result<ConsumerConfig, String> {
        let start = match self.deliver {
            DeliverFrom::All => StartAt::First,
            DeliverFrom::Last => StartAt::Last,
            DeliverFrom::New => StartAt::New,
            DeliverFrom::Seq => StartAt::Seq(self.start_seq.ok_or("deliver seq needs start_seq")?),
            DeliverFrom::Time => {
                let t = self
                    .start_time
                    .as_deref()
                    .ok_or("deliver time needs start_time")?;
                let at =
                    humantime::parse_rfc3339_weak(t).map_err(|e| format!("start_time: {e}"))?;
                let ns = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
                StartAt::Time(u64::try_from(ns).unwrap_or(u64::MAX))
            }
        };
        let pending = self.max_ack_pending.unwrap_or(cap).min(cap);
        let mut c = ConsumerConfig::new(name)
            .start(start)
            .ack_wait(self.ack_wait()?)
            .max_ack_pending(pending);
        if let Some(n) = self.max_deliver {
            c = c.max_deliver(n);
        }
        if let Some(f) = &self.filter {
            c = c.filter(f.clone());
        }
        if let Some(d) = &self.dead_letter {
            if d.starts_with('$') || mitto::proto::Subject::literal(d).is_err() {
                return Err(format!(
                    "dead_letter {d:?} is not a literal subject outside $"
                ));
            }
        }
        Ok(c)
    }
}

impl Default for ConsumerSpec {
    fn default() -> Self {
        ConsumerSpec::new()
    }
}

fn folder(s: &Streams, stream: &str) -> PathBuf {
    s.dir.join("consumers").join(stream)
}

fn file(s: &Streams, stream: &str, name: &str) -> PathBuf {
    folder(s, stream).join(format!("{name}.json"))
}

/// The configuration of consumer `name` of `stream`, if it was created.
pub(crate) fn load(s: &Streams, stream: &str, name: &str) -> Result<Option<ConsumerSpec>, Error> {
    let p = file(s, stream, name);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::new(Status::INTERNAL, format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::new(
            Status::UNAVAILABLE,
            format!("{}: {e}", p.display()),
        )),
    }
}

/// Whether `name` can name a consumer (and a file): 1 to 64 of `A-Z a-z 0-9 _ -`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn save(path: &Path, spec: &ConsumerSpec) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(spec).unwrap_or_default())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn count_all(s: &Streams) -> usize {
    let root = s.dir.join("consumers");
    let Ok(dirs) = std::fs::read_dir(root) else {
        return 0;
    };
    dirs.flatten()
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .map(|files| {
            files
                .flatten()
                .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
                .count()
        })
        .sum()
}

/// CREATE: the same configuration again is accepted; another one replaces it while the
/// consumer has no subscriber (its position is kept).
pub(crate) fn create(
    s: &Streams,
    perms: &Permissions,
    st: &Stream,
    name: &str,
    spec: ConsumerSpec,
) -> Result<Value, Error> {
    let bad = |w: String| Error::new(Status::BAD_REQUEST, w);
    if !valid_name(name) {
        return Err(bad(format!(
            "consumer name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -"
        )));
    }
    let cfg = spec.to_store(name, s.max_ack_pending).map_err(bad)?;
    if let Some(d) = &spec.dead_letter {
        if !perms.may_publish(d) {
            return Err(Error::new(
                Status::FORBIDDEN,
                format!("may not publish to {d}"),
            ));
        }
    }
    let old = load(s, st.name(), name)?;
    if old.as_ref() == Some(&spec) {
        return info(s, st, name);
    }
    if old.is_none() && count_all(s) >= s.max_consumers {
        return Err(Error::new(
            Status::QUOTA_EXCEEDED,
            format!(
                "the broker has its maximum of {} consumers",
                s.max_consumers
            ),
        ));
    }
    if lock(&s.engines).contains_key(&(st.name().to_owned(), name.to_owned())) {
        return Err(Error::new(
            Status::ALREADY_EXISTS,
            format!("consumer {name} has subscribers: unsubscribe them to change it"),
        ));
    }
    // Opening it fixes its start position now ("new", "last").
    drop(open_briefly(st, cfg)?);
    save(&file(s, st.name(), name), &spec)
        .map_err(|e| Error::new(Status::UNAVAILABLE, format!("consumer {name}: {e}")))?;
    info(s, st, name)
}

/// INFO: configuration and position.
pub(crate) fn info(s: &Streams, st: &Stream, name: &str) -> Result<Value, Error> {
    let Some(spec) = load(s, st.name(), name)? else {
        return Err(Error::new(Status::NOT_FOUND, format!("no consumer {name}")));
    };
    let running = lock(&s.engines)
        .get(&(st.name().to_owned(), name.to_owned()))
        .cloned();
    let state = match running {
        Some(e) => e.snapshot(),
        None => {
            let cfg = spec
                .to_store(name, s.max_ack_pending)
                .map_err(|e| Error::new(Status::INTERNAL, e))?;
            state_json(open_briefly(st, cfg)?.state(), 0)
        }
    };
    Ok(json!({"stream": st.name(), "name": name, "config": spec, "state": state}))
}

/// Opens a consumer that has no subscriber, to read its state; its task may be finishing (its
/// last flush holds it open for a moment).
fn open_briefly(st: &Stream, cfg: ConsumerConfig) -> Result<mitto_store::Consumer, Error> {
    let mut tries = 0;
    loop {
        match st.consumer(cfg.clone()) {
            Err(mitto_store::StoreError::AlreadyExists(_)) if tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r.map_err(store_error),
        }
    }
}

pub(crate) fn state_json(c: &mitto_store::ConsumerState, subscribers: usize) -> Value {
    json!({"delivered": c.delivered, "ack_floor": c.ack_floor(), "pending": c.pending.len(),
           "terminated": c.terminated, "subscribers": subscribers})
}

/// DELETE: only a consumer without subscribers.
pub(crate) fn delete(s: &Streams, st: &Stream, name: &str) -> Result<Value, Error> {
    if load(s, st.name(), name)?.is_none() {
        return Err(Error::new(Status::NOT_FOUND, format!("no consumer {name}")));
    }
    if lock(&s.engines).contains_key(&(st.name().to_owned(), name.to_owned())) {
        return Err(Error::new(
            Status::UNAVAILABLE,
            format!("consumer {name} has subscribers: unsubscribe them first"),
        ));
    }
    match st.delete_consumer(name) {
        Ok(()) | Err(mitto_store::StoreError::NotFound(_)) => {}
        Err(e) => return Err(store_error(e)),
    }
    let p = file(s, st.name(), name);
    std::fs::remove_file(&p)
        .map_err(|e| Error::new(Status::UNAVAILABLE, format!("{}: {e}", p.display())))?;
    Ok(json!({"deleted": name}))
}

/// Removes the configurations of a deleted stream's consumers.
pub(crate) fn forget_stream(s: &Streams, stream: &str) {
    let dir = folder(s, stream);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "consumer configurations not removed");
        }
    }
}
