//! Subscriptions bound to consumers: a SUBSCRIBE to `$MITTO.CONSUMER.DELIVER.<stream>.<consumer>`
//! (at-least-once) makes the subscription one of the consumer's subscribers; its ACKs, NACKs,
//! UNSUBSCRIBE and the end of its connection go to the consumer's task.

use super::admin::{visible, CONSUMER_PREFIX};
use super::engine::{self, Cmd, Sub};
use super::{consumers, lock, of};
use crate::core::Core;
use crate::mailbox::{Mailbox, SubQueue};
use crate::permissions::Permissions;
use mitto::proto::{Delivery, Frame, SlowConsumerPolicy, Status, SubscribeOptions};
use mitto::Error;
use std::sync::Arc;
use std::time::Duration;

/// Most messages queued at once for one bound subscription (the consumer holds the rest).
const QUEUE: u32 = 1024;

/// Whether a SUBSCRIBE filter names a consumer to bind to.
pub(crate) fn is_consumer_subject(filter: &str) -> bool {
    filter.starts_with(CONSUMER_PREFIX)
}

/// The stream and consumer a `$MITTO.CONSUMER.DELIVER.<stream>.<consumer>` filter names.
fn consumer_of(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix(CONSUMER_PREFIX)?;
    let mut t = rest.split('.');
    match (t.next(), t.next(), t.next(), t.next()) {
        (Some("DELIVER"), Some(stream), Some(name), None) => Some((stream, name)),
        _ => None,
    }
}

/// Binds subscription `f.aux` to the consumer its subject names. The caller checked the
/// subscribe permission on the subject and the connection's subscription limit.
pub(crate) fn on_subscribe(
    core: &Arc<Core>,
    conn: u64,
    perms: &Permissions,
    mailbox: &Arc<Mailbox>,
    f: &Frame,
    opts: &SubscribeOptions,
) -> Result<(), Error> {
    let filter = f.subject.as_str();
    let bad = |w: &str| Error::new(Status::BAD_REQUEST, w.to_owned());
    let Some((stream, name)) = consumer_of(filter) else {
        return Err(bad(
            "subscribe to $MITTO.CONSUMER.DELIVER.<stream>.<consumer>",
        ));
    };
    if opts.delivery != Delivery::AtLeastOnce {
        return Err(bad("a consumer's subscription is at-least-once (it ACKs)"));
    }
    if opts.durable.is_some() || opts.queue.is_some() {
        return Err(bad(
            "a consumer's subscription takes no durable name or queue group: the consumer is both",
        ));
    }
    let q = SubscribeOptions {
        delivery: Delivery::AtMostOnce,
        policy: SlowConsumerPolicy::Block,
        max_pending: match opts.max_pending {
            0 => QUEUE,
            n => n.min(QUEUE),
        },
        ..opts.clone()
    };
    // Checked before the queue is added, so that a refusal leaves nothing behind.
    let (st, spec) = find(core, perms, stream, name)?;
    let sq = SubQueue::for_options(filter.to_owned(), &q, &core.cfg, mailbox.is_local(), None);
    if !mailbox.add_sub(f.aux, sq) {
        return Err(Error::new(
            Status::ALREADY_EXISTS,
            format!("subscription id {} is in use", f.aux),
        ));
    }
    bind(core, conn, mailbox, f.aux, st, name, spec).inspect_err(|_| {
        mailbox.remove_sub(f.aux);
    })
}

/// The stream (visible to `perms`) and the configuration of consumer `name`.
fn find(
    core: &Core,
    perms: &Permissions,
    stream: &str,
    name: &str,
) -> Result<(mitto_store::Stream, consumers::ConsumerSpec), Error> {
    let streams = of(core)
        .ok_or_else(|| Error::new(Status::UNAVAILABLE, "streams are off: no data directory"))?;
    let st = visible(streams, perms, stream)?;
    // A small file read: the consumer must have been created.
    let spec = consumers::load(streams, stream, name)?.ok_or_else(|| {
        Error::new(
            Status::NOT_FOUND,
            format!("no consumer {name} in stream {stream}: create it first"),
        )
    })?;
    Ok((st, spec))
}

/// Makes subscription `sid` (its queue already in `mailbox`) one of the consumer's
/// subscribers, starting the consumer's task if it has none.
fn bind(
    core: &Arc<Core>,
    conn: u64,
    mailbox: &Arc<Mailbox>,
    sid: u32,
    st: mitto_store::Stream,
    name: &str,
    spec: consumers::ConsumerSpec,
) -> Result<(), Error> {
    let streams = of(core)
        .ok_or_else(|| Error::new(Status::UNAVAILABLE, "streams are off: no data directory"))?;
    let sub = Sub {
        conn,
        sid,
        mailbox: mailbox.clone(),
    };
    let mut engines = lock(&streams.engines);
    let key = (st.name().to_owned(), name.to_owned());
    let e = engines
        .entry(key)
        .or_insert_with(|| engine::start(core, st, name, spec))
        .clone();
    if !e.send(Cmd::Bind(sub)) {
        return Err(Error::new(
            Status::UNAVAILABLE,
            "the consumer is busy: try again",
        ));
    }
    // Entered while the engines lock is held: a task that stops meanwhile finds it.
    lock(&streams.bound).insert((conn, sid), e);
    Ok(())
}

fn engine_of(core: &Core, conn: u64, sid: u32) -> Option<Arc<engine::Engine>> {
    let streams = of(core)?;
    lock(&streams.bound).get(&(conn, sid)).cloned()
}

/// Whether subscription `sid` of connection `conn` is bound to a stream consumer.
pub(crate) fn is_bound(core: &Core, conn: u64, sid: u32) -> bool {
    engine_of(core, conn, sid).is_some()
}

/// An ACK of a consumer's delivery (its id is the stream sequence); false if `sid` is not
/// bound to a consumer.
pub(crate) fn on_ack(core: &Core, conn: u64, sid: u32, id: u64) -> bool {
    match engine_of(core, conn, sid) {
        Some(e) => {
            e.send(Cmd::Ack(id));
            true
        }
        None => false,
    }
}

/// A NACK (with its delay); false if `sid` is not bound to a consumer.
pub(crate) fn on_nack(core: &Core, conn: u64, sid: u32, id: u64, delay: Option<Duration>) -> bool {
    match engine_of(core, conn, sid) {
        Some(e) => {
            e.send(Cmd::Nak(id, delay));
            true
        }
        None => false,
    }
}

/// The subscription ends (UNSUBSCRIBE): the consumer keeps what it delivered and was not
/// acknowledged, for its other or next subscribers.
pub(crate) fn on_unsubscribe(core: &Core, conn: u64, sid: u32) {
    let Some(streams) = of(core) else {
        return;
    };
    if let Some(e) = lock(&streams.bound).remove(&(conn, sid)) {
        e.send(Cmd::Unbind(conn, sid));
    }
}

/// The connection ended: its bound subscriptions leave their consumers, whose other
/// subscribers go on. A session that keeps the connection's subscriptions (`kept`) keeps these
/// too, empty (the consumer sends what they held again), for [`on_resume`] to bind again;
/// otherwise they end.
pub(crate) fn on_gone(core: &Core, conn: u64, mailbox: &Mailbox, kept: bool) {
    let Some(streams) = of(core) else {
        return;
    };
    let mine: Vec<_> = {
        let mut bound = lock(&streams.bound);
        let keys: Vec<_> = bound.keys().filter(|k| k.0 == conn).copied().collect();
        keys.into_iter()
            .filter_map(|k| bound.remove(&k).map(|e| (k, e)))
            .collect()
    };
    for ((conn, sid), e) in mine {
        e.send(Cmd::Unbind(conn, sid));
        if kept {
            mailbox.drop_queued(sid);
        } else {
            mailbox.remove_sub(sid);
        }
    }
}

/// A session was resumed: its subscriptions to consumers are bound again (as `perms` allow
/// now). One whose consumer is gone or hidden ends with an ERROR carrying its sid.
pub(crate) fn on_resume(core: &Arc<Core>, conn: u64, perms: &Permissions, mailbox: &Arc<Mailbox>) {
    if of(core).is_none() {
        return;
    }
    for info in mailbox.subs() {
        let Some((stream, name)) = consumer_of(&info.filter) else {
            continue;
        };
        // Sent again by the consumer: anything queued after the connection was lost.
        mailbox.drop_queued(info.sid);
        let allowed = if perms.may_subscribe(&info.filter) {
            Ok(())
        } else {
            Err(Error::new(
                Status::FORBIDDEN,
                format!("may not subscribe to {}", info.filter),
            ))
        };
        let bound = allowed
            .and_then(|()| find(core, perms, stream, name))
            .and_then(|(st, spec)| bind(core, conn, mailbox, info.sid, st, name, spec));
        if let Err(e) = bound {
            mailbox.remove_sub(info.sid);
            let mut err = Frame::error(0, e.status(), e.message());
            err.aux = info.sid;
            mailbox.push_control(err);
        }
    }
}
