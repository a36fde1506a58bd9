//! A running consumer: one task per consumer with at least one bound subscription. It reads
//! the stream from the consumer's position, hands each message to one bound subscription
//! (round robin) while that subscription's queue has room and credit, records deliveries,
//! ACKs and NACKs in the store, sends again what was not acknowledged within `ack_wait`, and
//! after `max_deliver` deliveries publishes a message to the dead-letter subject and gives it
//! up. It ends when its last subscription does.

use super::consumers::{state_json, ConsumerSpec, Replay};
use super::{lock, of, Streams};
use crate::core::{Core, RouteCache};
use crate::mailbox::{Mailbox, Pushed};
use mitto::proto::{Flags, Frame, Headers, Status, Subject};
use mitto::Error;
use mitto_store::{Consumer, StoreError, StoredMessage, Stream};
use serde_json::Value;
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Commands a consumer's task takes; bounded: a flood of ACKs beyond it is dropped, and those
/// messages are sent again (at least once).
const COMMANDS: usize = 64 * 1024;
/// The longest a consumer's operations wait in memory before they are written.
const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Redeliveries considered per turn.
const DUE_BATCH: usize = 256;

/// A subscription bound to a consumer.
pub(crate) struct Sub {
    pub(crate) conn: u64,
    pub(crate) sid: u32,
    pub(crate) mailbox: Arc<Mailbox>,
}

pub(crate) enum Cmd {
    Bind(Sub),
    Unbind(u64, u32),
    Ack(u64),
    Nak(u64, Option<Duration>),
    /// End now, telling the subscribers why.
    Stop(Status, String),
}

/// The handle of a running consumer.
pub(crate) struct Engine {
    pub(crate) key: (String, String),
    tx: mpsc::Sender<Cmd>,
    snap: Mutex<Value>,
}

impl Engine {
    /// Queues a command; false if the task is gone or too far behind.
    pub(crate) fn send(&self, c: Cmd) -> bool {
        self.tx.try_send(c).is_ok()
    }

    /// Position and counts as of the last turn.
    pub(crate) fn snapshot(&self) -> Value {
        lock(&self.snap).clone()
    }
}

/// Starts the task of consumer `name` of `stream` (the caller holds the engines lock and
/// registers it).
pub(crate) fn start(
    core: &Arc<Core>,
    stream: Stream,
    name: &str,
    spec: ConsumerSpec,
) -> Arc<Engine> {
    let (tx, rx) = mpsc::channel(COMMANDS);
    let e = Arc::new(Engine {
        key: (stream.name().to_owned(), name.to_owned()),
        tx,
        snap: Mutex::new(Value::Null),
    });
    tokio::spawn(run(core.clone(), e.clone(), stream, spec, rx));
    e
}

/// Stops every running consumer of a stream (it is being updated or deleted).
pub(crate) fn stop_stream(s: &Streams, stream: &str) {
    let engines: Vec<_> = lock(&s.engines)
        .iter()
        .filter(|(k, _)| k.0 == stream)
        .map(|(_, e)| e.clone())
        .collect();
    for e in engines {
        let why = format!("stream {stream} was changed or deleted: subscribe again");
        let _ = e.tx.try_send(Cmd::Stop(Status::UNAVAILABLE, why));
    }
}

fn now_ns() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn run(
    core: Arc<Core>,
    me: Arc<Engine>,
    st: Stream,
    spec: ConsumerSpec,
    mut rx: mpsc::Receiver<Cmd>,
) {
    let mut subs = Vec::new();
    let outcome = drive(&core, &me, &st, &spec, &mut rx, &mut subs).await;
    let Some(streams) = of(&core) else {
        return;
    };
    {
        let mut engines = lock(&streams.engines);
        if engines.get(&me.key).is_some_and(|e| Arc::ptr_eq(e, &me)) {
            engines.remove(&me.key);
        }
        rx.close();
    }
    while let Ok(c) = rx.try_recv() {
        if let Cmd::Bind(s) = c {
            subs.push(s);
        }
    }
    let (status, why) = match outcome {
        Ok(()) => return,
        Err(e) => (e.status(), e.message().to_owned()),
    };
    tracing::warn!(stream = %me.key.0, consumer = %me.key.1, error = %why, "consumer stopped");
    let mut bound = lock(&streams.bound);
    for s in subs {
        bound.remove(&(s.conn, s.sid));
        s.mailbox.remove_sub(s.sid);
        let mut err = Frame::error(0, status, &why);
        err.aux = s.sid;
        s.mailbox.push_control(err);
    }
}

fn store_err(e: StoreError) -> Error {
    super::store_error(e)
}

/// Flushes the consumer's operations off the runtime's threads (an fsync under `always`).
async fn flush(c: Consumer) -> Result<Consumer, Error> {
    let (c, r) = tokio::task::spawn_blocking(move || {
        let mut c = c;
        let r = c.flush();
        (c, r)
    })
    .await
    .map_err(|e| Error::new(Status::INTERNAL, e.to_string()))?;
    r.map_err(store_err)?;
    Ok(c)
}

/// Opens the consumer's state; a task of the same consumer that is ending may still hold it
/// for a moment (its last flush).
async fn open(st: &Stream, cfg: mitto_store::ConsumerConfig) -> Result<Consumer, Error> {
    let mut tries = 0;
    loop {
        let (st2, cfg2) = (st.clone(), cfg.clone());
        let r = tokio::task::spawn_blocking(move || st2.consumer(cfg2))
            .await
            .map_err(|e| Error::new(Status::INTERNAL, e.to_string()))?;
        match r {
            Err(StoreError::AlreadyExists(_)) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r.map_err(store_err),
        }
    }
}

/// Where a turn left off.
#[derive(Default)]
struct Turn {
    /// Operations to flush.
    dirty: bool,
    /// Every bound subscription was full.
    full: bool,
    /// The next message is held for its original pace until then.
    paced: Option<Instant>,
}

struct State {
    c: Consumer,
    reader: mitto_store::Reader,
    max_pending: usize,
    /// Pending when the consumer was opened: nobody holds them, send them again at once.
    first: BTreeSet<u64>,
    stalled: Option<StoredMessage>,
    pace: Option<(u64, Instant)>,
    rr: usize,
    /// Operations buffered since the last flush, and when that was.
    unflushed: bool,
    flushed: Instant,
    /// No pending delivery is due before this (ns since the epoch; may be early, never late):
    /// saves a pass over every pending delivery on each turn.
    next_due: u64,
    ack_wait_ns: u64,
}

/// When the first pending delivery is due (`u64::MAX`: none).
fn next_due(c: &Consumer) -> u64 {
    let pending = c.state().pending.values();
    pending.map(|p| p.redeliver_at_ns).min().unwrap_or(u64::MAX)
}

async fn drive(
    core: &Arc<Core>,
    me: &Arc<Engine>,
    st: &Stream,
    spec: &ConsumerSpec,
    rx: &mut mpsc::Receiver<Cmd>,
    subs: &mut Vec<Sub>,
) -> Result<(), Error> {
    let streams = of(core).ok_or_else(|| Error::new(Status::INTERNAL, "no streams"))?;
    let cfg = spec
        .to_store(&me.key.1, streams.max_ack_pending)
        .map_err(|e| Error::new(Status::INTERNAL, e))?;
    let (max_pending, cfg_wait) = (cfg.max_ack_pending as usize, cfg.ack_wait);
    let c = open(st, cfg).await?;
    let mut s = State {
        reader: st.reader(mitto_store::StartAt::Seq(c.next_seq())),
        first: c.state().pending.keys().copied().collect(),
        c,
        max_pending,
        stalled: None,
        pace: None,
        rr: 0,
        unflushed: false,
        flushed: Instant::now(),
        next_due: 0,
        ack_wait_ns: u64::try_from(cfg_wait.as_nanos()).unwrap_or(u64::MAX),
    };
    let mut rooms: Option<Vec<Pin<Box<OwnedNotified>>>> = None;
    loop {
        while let Ok(cmd) = rx.try_recv() {
            apply(&mut s, cmd, subs)?;
        }
        if subs.is_empty() {
            if retire(streams, me, rx) {
                s.c = flush(s.c).await?;
                return Ok(());
            }
            continue;
        }
        let turn = deliver(core, me, st, spec, &mut s, subs)?;
        s.unflushed |= turn.dirty;
        // Operations are written at most every FLUSH_EVERY: one write (and under `always` one
        // fsync) for many deliveries and ACKs. Those lost to a crash are only sent again.
        if s.unflushed && s.flushed.elapsed() >= FLUSH_EVERY {
            s.c = flush(s.c).await?;
            s.unflushed = false;
            s.flushed = Instant::now();
        }
        *lock(&me.snap) = state_json(s.c.state(), subs.len());
        if turn.full && rooms.is_none() {
            // Armed before trying again, so that room made meanwhile is not missed.
            rooms = Some(subs.iter().map(|x| x.mailbox.room_owned()).collect());
            continue;
        }
        let at_limit = s.c.state().pending.len() >= s.max_pending;
        let caught_up = !turn.full && !at_limit && s.stalled.is_none() && turn.paced.is_none();
        let wait = next_wait(&s, &turn);
        let waiter = caught_up.then(|| st.wait_for(s.reader.next_seq()));
        let mut room = rooms.take();
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => apply(&mut s, cmd, subs)?,
                None => return Ok(()),
            },
            r = async { match waiter { Some(w) => w.wait_async().await, None => std::future::pending().await } }, if caught_up => {
                r.map_err(store_err)?;
            }
            _ = std::future::poll_fn(|cx| {
                let Some(list) = room.as_mut() else {
                    return Poll::Pending;
                };
                match list.iter_mut().any(|r| r.as_mut().poll(cx).is_ready()) {
                    true => Poll::Ready(()),
                    false => Poll::Pending,
                }
            }) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Leaves the running consumers if no command is waiting; under the engines lock, so that a
/// new subscriber either finds this task running (and its Bind is read) or starts a new one.
fn retire(streams: &Streams, me: &Arc<Engine>, rx: &mpsc::Receiver<Cmd>) -> bool {
    let mut engines = lock(&streams.engines);
    if !rx.is_empty() {
        return false;
    }
    if engines.get(&me.key).is_some_and(|e| Arc::ptr_eq(e, me)) {
        engines.remove(&me.key);
    }
    true
}

/// How long to sleep at most: until the next redelivery is due, the paced message's time, or
/// a short poll while subscriptions are full.
fn next_wait(s: &State, turn: &Turn) -> Duration {
    let now = now_ns();
    let mut wait = match s.next_due {
        u64::MAX => Duration::from_secs(3600),
        t => Duration::from_nanos(t.saturating_sub(now)),
    };
    if turn.full {
        wait = wait.min(Duration::from_millis(50));
    }
    if let Some(at) = turn.paced {
        wait = wait.min(at.saturating_duration_since(Instant::now()));
    }
    if s.unflushed {
        wait = wait.min(FLUSH_EVERY.saturating_sub(s.flushed.elapsed()));
    }
    wait
}

fn apply(s: &mut State, cmd: Cmd, subs: &mut Vec<Sub>) -> Result<(), Error> {
    match cmd {
        Cmd::Bind(x) => {
            // Once, also if its Unbind was lost (a full queue) before its session resumed.
            subs.retain(|y| (y.conn, y.sid) != (x.conn, x.sid));
            subs.push(x);
        }
        Cmd::Unbind(conn, sid) => subs.retain(|x| (x.conn, x.sid) != (conn, sid)),
        Cmd::Ack(seq) => {
            s.unflushed |= s.c.on_ack(seq).map_err(store_err)?;
        }
        Cmd::Nak(seq, delay) => {
            let ns = delay.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            let at = now_ns().saturating_add(ns);
            s.unflushed |= s.c.on_nak(seq, at).map_err(store_err)?;
            s.next_due = s.next_due.min(at);
        }
        Cmd::Stop(status, why) => return Err(Error::new(status, why)),
    }
    Ok(())
}

/// One turn: redeliveries that are due, then new messages while there is room.
fn deliver(
    core: &Core,
    me: &Engine,
    st: &Stream,
    spec: &ConsumerSpec,
    s: &mut State,
    subs: &mut Vec<Sub>,
) -> Result<Turn, Error> {
    let mut turn = Turn::default();
    let now = now_ns();
    let mut due: BTreeSet<u64> = std::mem::take(&mut s.first);
    // A pass over the pending deliveries only when one may be due.
    let check = now >= s.next_due;
    if check {
        due.extend(s.c.due(now, DUE_BATCH));
    }
    let mut due = due.into_iter();
    for seq in due.by_ref() {
        let Some(p) = s.c.state().pending.get(&seq).copied() else {
            continue;
        };
        if spec.max_deliver.is_some_and(|m| p.deliveries >= m) {
            dead_letter(core, spec, st, seq, p.deliveries);
            s.c.on_terminated(seq).map_err(store_err)?;
            turn.dirty = true;
            continue;
        }
        let Some(m) = st.get(seq).map_err(store_err)? else {
            // Removed by retention or purge meanwhile: nothing left to deliver.
            s.c.on_terminated(seq).map_err(store_err)?;
            turn.dirty = true;
            continue;
        };
        if !push(s, subs, &event(&m, &me.key.0, p.deliveries + 1)?) {
            turn.full = true;
            break;
        }
        s.c.on_delivered(seq, now).map_err(store_err)?;
        s.next_due = s.next_due.min(now.saturating_add(s.ack_wait_ns));
        turn.dirty = true;
    }
    // Those not reached wait for the next turn.
    s.first.extend(due);
    if check {
        s.next_due = next_due(&s.c);
    }
    while !turn.full && s.c.state().pending.len() < s.max_pending {
        let m = match s.stalled.take() {
            Some(m) => m,
            None => match s.reader.next_message().map_err(store_err)? {
                Some(m) => m,
                None => break,
            },
        };
        if m.seq < s.c.next_seq() {
            continue;
        }
        if !s.c.wants(m.subject()) {
            s.c.skip_to(m.seq).map_err(store_err)?;
            turn.dirty = true;
            continue;
        }
        if spec.replay == Replay::Original {
            let (ts0, t0) = *s.pace.get_or_insert((m.timestamp_ns, Instant::now()));
            let at = t0 + Duration::from_nanos(m.timestamp_ns.saturating_sub(ts0));
            if at > Instant::now() {
                turn.paced = Some(at);
                s.stalled = Some(m);
                break;
            }
        }
        if !push(s, subs, &event(&m, &me.key.0, 1)?) {
            s.stalled = Some(m);
            turn.full = true;
            break;
        }
        s.c.on_delivered(m.seq, now).map_err(store_err)?;
        s.next_due = s.next_due.min(now.saturating_add(s.ack_wait_ns));
        turn.dirty = true;
    }
    Ok(turn)
}

/// Offers `ev` to the bound subscriptions, round robin; false if every one is full. Those
/// that ended are dropped.
fn push(s: &mut State, subs: &mut Vec<Sub>, ev: &Frame) -> bool {
    let mut tries = subs.len();
    while tries > 0 && !subs.is_empty() {
        let k = s.rr % subs.len();
        let mut f = ev.clone();
        f.aux = subs[k].sid;
        match subs[k].mailbox.push_event(subs[k].sid, f, None) {
            Pushed::Queued | Pushed::DroppedOldest => {
                s.rr = k + 1;
                return true;
            }
            Pushed::Gone(_) | Pushed::Disconnected(_) => {
                subs.swap_remove(k);
            }
            Pushed::Rejected(_) | Pushed::DroppedNewest => s.rr = k + 1,
        }
        tries -= 1;
    }
    false
}

/// The EVENT of a stored message: id = stream sequence (what the subscriber ACKs), ACK
/// required, the stream, sequence and time in headers.
fn event(m: &StoredMessage, stream: &str, count: u32) -> Result<Frame, Error> {
    let subject =
        Subject::literal(m.subject()).map_err(|e| Error::new(Status::INTERNAL, e.to_string()))?;
    let headers = stream_headers(m, stream, count)?;
    let mut f = Frame::event(0, m.seq, subject, m.payload_bytes()).with_headers(headers);
    f.flags.insert(Flags::ACK_REQUIRED);
    Ok(f)
}

fn stream_headers(m: &StoredMessage, stream: &str, count: u32) -> Result<Headers, Error> {
    let base = Headers::from_wire(m.headers_bytes()).unwrap_or_default();
    let enc = |e: mitto::proto::EncodeError| Error::new(Status::INTERNAL, e.to_string());
    let mut b = base
        .to_builder()
        .insert_custom("mitto-stream", stream)
        .map_err(enc)?
        .insert_custom("mitto-stream-seq", m.seq.to_string())
        .map_err(enc)?
        .insert_custom("mitto-stream-time-ns", m.timestamp_ns.to_string())
        .map_err(enc)?;
    if count > 1 {
        b = b.delivery_count(count);
    }
    Ok(b.build())
}

/// Publishes a message given up after `deliveries` to the consumer's dead-letter subject (a
/// stream that captures that subject stores it), with the original subject in a header.
fn dead_letter(core: &Core, spec: &ConsumerSpec, st: &Stream, seq: u64, deliveries: u32) {
    let Some(dl) = spec.dead_letter.as_deref() else {
        return;
    };
    let (Ok(Some(m)), Ok(subject)) = (st.get(seq), Subject::literal(dl)) else {
        return;
    };
    let Ok(h) = stream_headers(&m, st.name(), deliveries) else {
        return;
    };
    let h = h
        .to_builder()
        .insert_custom("mitto-subject", m.subject())
        .map(|b| b.build())
        .unwrap_or(h);
    let f = Frame::publish(subject, m.payload_bytes()).with_headers(h);
    if let Err(e) = super::capture(core, &f) {
        tracing::warn!(subject = dl, error = %e.message(), "dead letter not stored");
    }
    if let Err(e) = core.publish_owned(f, &mut RouteCache::default(), &crate::fabric::Scope::All) {
        tracing::warn!(subject = dl, error = %e.message(), "dead letter not published");
    }
}
