//! The admin API: requests on `$MITTO.STREAM.<OP>[.<stream>]` and
//! `$MITTO.CONSUMER.<OP>.<stream>[.<consumer>]`, JSON bodies (PROTOCOL.md section 19). Each is
//! answered with a RESPONSE: OK and a JSON body, or an error status with the reason.
//!
//! The request itself needs publish permission on its subject (checked like any request);
//! a stream, and its consumers, are visible only to users who may subscribe to every subject
//! the stream captures.

use super::{lock, of, store_error, StreamSpec, Streams};
use crate::core::Core;
use crate::mailbox::Mailbox;
use crate::permissions::Permissions;
use bytes::Bytes;
use mitto::proto::Frame;
use mitto::{Error, Status};
use mitto_store::Stream;
use serde_json::{json, Value};
use std::sync::Arc;

/// Stream admin subjects start with this.
pub(crate) const STREAM_PREFIX: &str = "$MITTO.STREAM.";
/// Consumer admin subjects (and the subjects consumers deliver on) start with this.
pub(crate) const CONSUMER_PREFIX: &str = "$MITTO.CONSUMER.";

/// Whether a request subject is for the admin API.
pub(crate) fn is_admin(subject: &str) -> bool {
    subject.starts_with(STREAM_PREFIX) || subject.starts_with(CONSUMER_PREFIX)
}

/// Answers an admin request (off the connection's thread: it may fsync) by queueing the
/// RESPONSE on `mailbox`.
pub(crate) fn handle(core: &Arc<Core>, perms: &Permissions, mailbox: &Arc<Mailbox>, f: &Frame) {
    let (core, perms, mailbox) = (core.clone(), perms.clone(), mailbox.clone());
    let (id, subject, body) = (f.id, f.subject.as_str().to_owned(), f.payload.clone());
    tokio::task::spawn_blocking(move || {
        let answer = match of(&core) {
            None => Err(Error::new(
                Status::UNAVAILABLE,
                "streams are off: the broker has no data directory",
            )),
            Some(s) => dispatch(s, &perms, &subject, &body),
        };
        let r = match answer {
            Ok(v) => Frame::response(id, Status::OK, v.to_string()),
            Err(e) => Frame::response(id, e.status(), e.message().to_owned()),
        };
        mailbox.push_control(r);
    });
}

fn bad(why: impl Into<String>) -> Error {
    Error::new(Status::BAD_REQUEST, why.into())
}

fn parse<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> Result<T, Error> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))
}

fn dispatch(s: &Streams, perms: &Permissions, subject: &str, body: &Bytes) -> Result<Value, Error> {
    if let Some(rest) = subject.strip_prefix(STREAM_PREFIX) {
        let (op, name) = rest.split_once('.').unwrap_or((rest, ""));
        return match (op, name) {
            ("LIST", "") => Ok(list(s, perms)),
            ("LIST", _) => Err(bad("LIST takes no stream name")),
            (_, "") => Err(bad(format!("{subject}: no stream name"))),
            ("CREATE", n) => create(s, perms, n, parse(body)?, false),
            ("UPDATE", n) => create(s, perms, n, parse(body)?, true),
            ("INFO", n) => Ok(info(&visible(s, perms, n)?)),
            ("DELETE", n) => delete(s, perms, n),
            ("PURGE", n) => purge(s, perms, n, body),
            _ => Err(Error::new(
                Status::NOT_FOUND,
                format!("no admin operation {op}"),
            )),
        };
    }
    let rest = subject.strip_prefix(CONSUMER_PREFIX).unwrap_or("");
    let mut t = rest.split('.');
    match (t.next(), t.next(), t.next(), t.next()) {
        (Some("LIST"), Some(st), None, None) => {
            let st = visible(s, perms, st)?;
            Ok(json!({"consumers": st.consumer_names().map_err(store_error)?}))
        }
        (Some("CREATE"), Some(st), Some(c), None) => {
            let st = visible(s, perms, st)?;
            super::consumers::create(s, perms, &st, c, parse(body)?)
        }
        (Some("INFO"), Some(st), Some(c), None) => {
            let st = visible(s, perms, st)?;
            super::consumers::info(s, &st, c)
        }
        (Some("DELETE"), Some(st), Some(c), None) => {
            let st = visible(s, perms, st)?;
            super::consumers::delete(s, &st, c)
        }
        (Some("DELIVER"), ..) => Err(bad("DELIVER subjects are subscribed to, not requested")),
        _ => Err(Error::new(
            Status::NOT_FOUND,
            format!("{subject}: no such consumer operation"),
        )),
    }
}

/// Whether `perms` may see a stream: subscribe permission on every subject it captures.
pub(crate) fn may_see(perms: &Permissions, subjects: &[String]) -> bool {
    subjects.iter().all(|f| perms.may_subscribe(f))
}

/// The stream `name` if it exists and `perms` may see it (NOT_FOUND either way otherwise, so
/// that names are not disclosed).
pub(crate) fn visible(s: &Streams, perms: &Permissions, name: &str) -> Result<Stream, Error> {
    s.store
        .stream(name)
        .filter(|st| may_see(perms, &st.config().subjects))
        .ok_or_else(|| Error::new(Status::NOT_FOUND, format!("no stream {name}")))
}

fn list(s: &Streams, perms: &Permissions) -> Value {
    let list: Vec<Value> = s
        .store
        .streams()
        .iter()
        .filter(|st| may_see(perms, &st.config().subjects))
        .map(info)
        .collect();
    json!({"streams": list})
}

/// A stream's configuration and state, as INFO, LIST and CREATE answer it.
fn info(st: &Stream) -> Value {
    let i = st.info();
    json!({
        "config": StreamSpec::of(st.config()),
        "state": {"msgs": i.msgs, "bytes": i.bytes, "first_seq": i.first_seq,
                  "last_seq": i.last_seq, "first_ts": i.first_ts, "last_ts": i.last_ts,
                  "failed": i.failed},
    })
}

fn create(
    s: &Streams,
    perms: &Permissions,
    name: &str,
    mut spec: StreamSpec,
    update: bool,
) -> Result<Value, Error> {
    if !spec.name.is_empty() && spec.name != name {
        return Err(bad(format!(
            "body names stream {:?}, subject {name:?}",
            spec.name
        )));
    }
    spec.name = name.to_owned();
    if !may_see(perms, &spec.subjects) {
        return Err(Error::new(
            Status::FORBIDDEN,
            "a stream may capture only subjects its creator may subscribe to",
        ));
    }
    let cfg = spec.to_store().map_err(bad)?;
    let st = if update {
        visible(s, perms, name)?;
        s.store.update_stream(cfg).map_err(store_error)?
    } else {
        if s.store.stream(name).is_none() && s.store.streams().len() >= s.max_streams {
            return Err(Error::new(
                Status::QUOTA_EXCEEDED,
                format!("the broker has its maximum of {} streams", s.max_streams),
            ));
        }
        s.store.create_stream(cfg).map_err(store_error)?
    };
    // An update reopens the stream: running consumers follow the new handle when they restart.
    if update {
        super::engine::stop_stream(s, name);
    }
    Ok(info(&st))
}

fn delete(s: &Streams, perms: &Permissions, name: &str) -> Result<Value, Error> {
    visible(s, perms, name)?;
    super::engine::stop_stream(s, name);
    s.store.delete_stream(name).map_err(store_error)?;
    super::consumers::forget_stream(s, name);
    lock(&s.recovered).remove(name);
    Ok(json!({"deleted": name}))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    /// Remove only the messages below this sequence.
    before: Option<u64>,
}

fn purge(s: &Streams, perms: &Permissions, name: &str, body: &Bytes) -> Result<Value, Error> {
    let st = visible(s, perms, name)?;
    let b: PurgeBody = parse(body)?;
    let n = st.purge(b.before).map_err(store_error)?;
    Ok(json!({"purged": n}))
}
