//! Unary calls on a socket connection, shared by the callers and the connection's driver.
//!
//! A call through a command queue costs a command (built, moved and matched), an answer
//! channel (allocated, with its own state machine and reference counts) and a map entry in the
//! driver. Here the caller encodes its REQUEST straight into a buffer the driver takes whole
//! (one chunk of the outbox per batch, no copy), and the answer is left in the call's entry of
//! one table under the same lock: per call, one lock to start, one for the driver to answer,
//! one for the caller to take the answer, and no allocation.
//!
//! Fire-and-forget publishes are written into the same buffer ([`Calls::publish`]), so that
//! everything a client writes straight for the driver leaves in the order it was written; the
//! command queue keeps its commands in that order too (see [`crate::client::queue`]).
//!
//! The table is per connection. When the connection ends, every waiting call fails with its
//! reason and the table refuses new calls, which then take the general path (that waits for a
//! reconnect). In-process links carry frames, not bytes, and do not use it.

use crate::client::{Due, Reply};
use crate::error::{Error, Result};
use bytes::{Bytes, BytesMut};
use mitto_proto::{Frame, FrameRef, Status};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;

/// Room the request buffer makes at once.
const CHUNK: usize = 64 * 1024;
/// Bytes of publishes the buffer takes, at most (more wait in the command queue, which has
/// room for a bounded number of frames and makes its senders wait).
const MAX_PUBLISH_BYTES: usize = 256 * 1024;
/// Payloads larger than this are not copied into the buffer: they take the command queue, where
/// the driver writes them from the publisher's own bytes.
pub(crate) const MAX_BUFFERED_PAYLOAD: usize = 4 * 1024;

/// The low bits of a table id name the call's slot in the table (so that finding a call costs
/// no hashing); the bits above count the calls started, so that an id is never given twice even
/// when its slot is (a late answer to a cancelled call never reaches the slot's next call).
const SLOT_BITS: u32 = 20;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Calls a table holds at once, at most (more take the general path).
const MAX_SLOTS: usize = 1 << SLOT_BITS;

/// The unary calls of one connection.
pub(crate) struct Calls {
    state: Mutex<State>,
    /// Frames written and not yet taken by the driver, at most (more calls take the general
    /// path and more publishes the command queue, which wait for room).
    cap: usize,
}

pub(crate) struct State {
    /// Encoded REQUEST, CANCEL and PUBLISH frames the driver has not taken yet.
    out: BytesMut,
    /// Frames in `out`.
    queued: usize,
    /// The slots of the calls started since the driver last took `out`: their deadlines count
    /// from that take (one clock reading for the batch instead of one per call).
    fresh: Vec<u32>,
    /// The calls, by slot (see [`SLOT_BITS`]).
    slots: Vec<Option<Entry>>,
    /// Slots free for the next calls (the last freed first, still in cache).
    free: Vec<u32>,
    /// The driver, when it waits for calls.
    driver: Option<Waker>,
    /// The connection ended: no more calls.
    closed: bool,
    /// Calls started so far (see [`FIRST_ID`]).
    started: u64,
}

/// Ids of calls started through a table (see [`super::ids`]): given under the table's lock
/// instead of from a shared counter.
const FIRST_ID: u64 = super::ids::TABLE_IDS;
/// Calls a table starts in its life, at most (ids stay below [`super::ids::RESUBSCRIBE_IDS`]).
const MAX_STARTED: u64 = (1 << (61 - SLOT_BITS)) - 1;

struct Entry {
    id: u64,
    due: Due,
    answer: Answer,
}

enum Answer {
    /// On the wire; the caller's waker.
    Waiting(Waker),
    Done(Result<Reply>),
}

impl Entry {
    /// Leaves `r` as the answer of a call still waiting (made by `r` only then); the caller's
    /// waker, to wake once the lock is released. `None` for an answered call.
    fn settle(&mut self, r: impl FnOnce() -> Result<Reply>) -> Option<Waker> {
        if !matches!(self.answer, Answer::Waiting(_)) {
            return None;
        }
        match std::mem::replace(&mut self.answer, Answer::Done(r())) {
            Answer::Waiting(w) => Some(w),
            Answer::Done(_) => None,
        }
    }
}

impl State {
    /// Whether anything was written since the driver last took the buffer.
    pub(crate) fn has_written(&self) -> bool {
        !self.out.is_empty()
    }

    /// Everything written so far, for the command queue (ahead of a command); the calls it
    /// starts are stamped when the driver takes it from there ([`Calls::stamp`]).
    pub(crate) fn drain(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        self.queued = 0;
        Some(self.out.split().freeze())
    }

    /// Encodes `f` behind what was written; `false` (nothing written) when it cannot be
    /// encoded.
    fn write(&mut self, f: FrameRef<'_>) -> bool {
        let need = f.encoded_len();
        if self.out.capacity() - self.out.len() < need {
            self.out.reserve(need.max(CHUNK));
        }
        if f.encode(&mut self.out).is_err() {
            return false;
        }
        self.queued += 1;
        true
    }

    /// Deadlines of the fresh calls from now; the earliest.
    fn stamp(&mut self) -> Option<Instant> {
        if self.fresh.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        // Nearly every call of a batch has the same timeout: one addition for all of them.
        let mut last: Option<(Duration, Instant)> = None;
        let State { fresh, slots, .. } = self;
        for slot in fresh.drain(..) {
            // A slot freed and taken again in the same batch shows twice: stamped once.
            if let Some(Some(e)) = slots.get_mut(slot as usize) {
                if let Due::After(t) = e.due {
                    let at = match last {
                        Some((lt, at)) if lt == t => at,
                        _ => {
                            let at = now + t;
                            last = Some((t, at));
                            earliest = Some(earliest.map_or(at, |x| x.min(at)));
                            at
                        }
                    };
                    e.due = Due::At(at);
                }
            }
        }
        earliest
    }

    /// The slot index `id` names, whether or not it holds that call.
    fn slot_of(id: u64) -> usize {
        (id & SLOT_MASK) as usize
    }

    /// Call `id`'s entry, if it is in the table.
    fn get_mut(&mut self, id: u64) -> Option<&mut Entry> {
        self.slots
            .get_mut(Self::slot_of(id))
            .and_then(Option::as_mut)
            .filter(|e| e.id == id)
    }

    /// Takes call `id` out of the table (its slot is free again).
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let slot = Self::slot_of(id);
        let e = self.slots.get_mut(slot)?;
        if e.as_ref().is_some_and(|e| e.id == id) {
            self.free.push(slot as u32);
            e.take()
        } else {
            None
        }
    }

    /// A free slot, if the table has room.
    fn alloc(&mut self) -> Option<u32> {
        if let Some(slot) = self.free.pop() {
            return Some(slot);
        }
        if self.slots.len() >= MAX_SLOTS {
            return None;
        }
        self.slots.push(None);
        Some((self.slots.len() - 1) as u32)
    }
}

/// Releases the table, then wakes the driver if it waits for what was just written.
fn wake_driver(mut s: MutexGuard<'_, State>) {
    let driver = s.driver.take();
    drop(s);
    if let Some(w) = driver {
        w.wake();
    }
}

/// What the driver takes from the table.
pub(crate) struct Taken {
    /// Encoded frames, in order.
    pub(crate) bytes: Bytes,
    /// The earliest deadline among the calls they start.
    pub(crate) earliest: Option<Instant>,
}

impl Calls {
    pub(crate) fn new(cap: usize) -> Calls {
        Calls {
            state: Mutex::new(State {
                out: BytesMut::new(),
                queued: 0,
                fresh: Vec::new(),
                slots: Vec::new(),
                free: Vec::new(),
                driver: None,
                closed: false,
                started: 0,
            }),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change below leaves the table whole before it can panic (encoding into a
        // buffer, vector operations): keep going after a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a call (a REQUEST) that times out `timeout` after the driver takes it: gives it
    /// an id (set in `f`, and returned), encodes it for the driver and waits for its answer
    /// with `cx`'s waker. `None` when the table refuses it (the connection ended, too many
    /// calls waiting for the driver or in the table, a frame that cannot be encoded): nothing
    /// was sent.
    pub(crate) fn start(
        &self,
        mut f: FrameRef<'_>,
        timeout: Duration,
        cx: &Context<'_>,
    ) -> Option<u64> {
        let mut s = self.lock();
        if s.closed || s.queued >= self.cap || s.started >= MAX_STARTED {
            return None;
        }
        let slot = s.alloc()?;
        f.id = FIRST_ID + (s.started << SLOT_BITS) + u64::from(slot);
        if !s.write(f) {
            s.free.push(slot);
            return None;
        }
        s.started += 1;
        s.slots[slot as usize] = Some(Entry {
            id: f.id,
            due: Due::After(timeout),
            answer: Answer::Waiting(cx.waker().clone()),
        });
        s.fresh.push(slot);
        wake_driver(s);
        Some(f.id)
    }

    /// The answer of call `id`, once it is there (the entry is then gone).
    pub(crate) fn poll(&self, id: u64, cx: &Context<'_>) -> Poll<Result<Reply>> {
        let mut s = self.lock();
        let Some(e) = s.get_mut(id) else {
            return Poll::Ready(Err(Error::connection_lost(
                "the call was lost with its connection",
            )));
        };
        if let Answer::Waiting(w) = &mut e.answer {
            if !w.will_wake(cx.waker()) {
                w.clone_from(cx.waker());
            }
            return Poll::Pending;
        }
        match s.remove(id).map(|e| e.answer) {
            Some(Answer::Done(r)) => Poll::Ready(r),
            _ => Poll::Pending,
        }
    }

    /// The caller gave up on call `id` (dropped its future): forgets it and, if its answer has
    /// not come, sends CANCEL.
    pub(crate) fn cancel(&self, id: u64) {
        let mut s = self.lock();
        let waiting = matches!(
            s.remove(id),
            Some(Entry {
                answer: Answer::Waiting(_),
                ..
            })
        );
        if !waiting || s.closed {
            return;
        }
        s.write(Frame::cancel(id).as_ref());
        wake_driver(s);
    }

    /// Writes a fire-and-forget frame (a PUBLISH) for the driver, behind what was written
    /// before it; `false` when the buffer is full or the connection ended (nothing was written:
    /// the caller takes the command queue).
    pub(crate) fn publish(&self, f: FrameRef<'_>) -> bool {
        let mut s = self.lock();
        if s.closed || s.queued >= self.cap || s.out.len() + f.encoded_len() > MAX_PUBLISH_BYTES {
            return false;
        }
        if !s.write(f) {
            return false;
        }
        wake_driver(s);
        true
    }

    /// The driver takes what callers wrote (the deadlines of the calls it starts count from
    /// now), unless commands queued after some of it are still in the command queue
    /// (`queue_waiting`, asked under the table's lock): those go first (see [`crate::client::queue`]).
    /// `waker` is woken when more comes.
    pub(crate) fn take(
        &self,
        waker: &Waker,
        queue_waiting: impl FnOnce() -> bool,
    ) -> Option<Taken> {
        let mut s = self.lock();
        if !s.driver.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.driver = Some(waker.clone());
        }
        if !s.has_written() || queue_waiting() {
            return None;
        }
        let earliest = s.stamp();
        s.drain().map(|bytes| Taken { bytes, earliest })
    }

    /// The calls whose REQUEST reached the driver through the command queue count their
    /// deadlines from now; the earliest of them.
    pub(crate) fn stamp(&self) -> Option<Instant> {
        self.lock().stamp()
    }

    /// Holds the table while a command enters the command queue behind what was written.
    pub(crate) fn hold(&self) -> MutexGuard<'_, State> {
        self.lock()
    }

    /// Answers call `id` with what `answer` makes of `f`; gives `f` back when `id` is not a
    /// call of this table (or is no longer waiting).
    // The frame comes back by value (moved, never cloned) for the caller's other tables.
    #[allow(clippy::result_large_err)]
    pub(crate) fn answer(
        &self,
        f: Frame,
        answer: impl FnOnce(Frame) -> Result<Reply>,
    ) -> std::result::Result<(), Frame> {
        let mut s = self.lock();
        match s.get_mut(f.id) {
            Some(e) if matches!(e.answer, Answer::Waiting(_)) => {
                let w = e.settle(|| answer(f));
                drop(s);
                w.into_iter().for_each(Waker::wake);
                Ok(())
            }
            _ => Err(f),
        }
    }

    /// Fails the calls sent with a deadline at or before `now` (TIMEOUT); returns their ids
    /// (for CANCEL) and the earliest deadline still waiting.
    pub(crate) fn expire(&self, now: Instant) -> (Vec<u64>, Option<Instant>) {
        let mut s = self.lock();
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        let mut woken = Vec::new();
        for e in s.slots.iter_mut().flatten() {
            let Due::At(at) = e.due else {
                // Not taken by the driver yet: its deadline starts with the take.
                continue;
            };
            if !matches!(e.answer, Answer::Waiting(_)) {
                continue;
            }
            if at <= now {
                expired.push(e.id);
                woken.extend(e.settle(|| Err(Error::new(Status::TIMEOUT, "deadline exceeded"))));
            } else if next.is_none_or(|n| at < n) {
                next = Some(at);
            }
        }
        drop(s);
        for w in woken {
            w.wake();
        }
        (expired, next)
    }

    /// The connection ended: every waiting call fails with `why`, later calls are refused.
    pub(crate) fn close(&self, why: &Error) {
        let mut s = self.lock();
        s.closed = true;
        s.out.clear();
        s.queued = 0;
        s.fresh.clear();
        let woken: Vec<Waker> = s
            .slots
            .iter_mut()
            .flatten()
            .filter_map(|e| e.settle(|| Err(why.clone())))
            .collect();
        let driver = s.driver.take();
        drop(s);
        woken.into_iter().chain(driver).for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_ranges_of_a_client_never_meet() {
        use crate::client::ids;
        let last_table_id = FIRST_ID + (MAX_STARTED << SLOT_BITS) + ((1 << SLOT_BITS) - 1);
        assert!(last_table_id < ids::RESUBSCRIBE_IDS);
        assert!(ids::resubscribe_id(0) > last_table_id);
        assert!(!ids::opened_by_peer(ids::resubscribe_id(u32::MAX)));
        assert!(ids::opened_by_peer(1 << 63));
    }
    use bytes::Bytes;
    use mitto_proto::{Decoder, FrameType, Subject};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    fn request() -> Frame {
        Frame::request(0, Subject::literal("m").unwrap(), Bytes::from_static(b"x"))
    }

    fn frames(b: Bytes) -> Vec<Frame> {
        let mut buf = BytesMut::from(&b[..]);
        let mut d = Decoder::default();
        let mut out = Vec::new();
        while let Some(f) = d.decode(&mut buf).unwrap() {
            out.push(f);
        }
        out
    }

    fn reply(p: &'static [u8]) -> impl FnOnce(Frame) -> Result<Reply> {
        move |_| {
            Ok(Reply {
                headers: Default::default(),
                payload: Bytes::from_static(p),
            })
        }
    }

    #[test]
    fn requests_go_out_in_order_and_answers_reach_their_callers() {
        let calls = Calls::new(8);
        let (caller, cw) = waker();
        let (driver, dw) = waker();
        let cx = Context::from_waker(&cw);
        let later = Duration::from_secs(5);
        assert!(
            calls.take(&dw, || false).is_none(),
            "nothing yet; the driver waits"
        );
        let one = calls.start(request().as_ref(), later, &cx).unwrap();
        assert_eq!(
            driver.0.load(Ordering::SeqCst),
            1,
            "the driver is woken once"
        );
        let two = calls
            .start(request().as_ref(), later - Duration::from_secs(1), &cx)
            .unwrap();
        assert!(
            two > one && one >= FIRST_ID,
            "ids count up, apart: {one} {two}"
        );
        let before = Instant::now();
        let taken = calls.take(&dw, || false).expect("two requests");
        let after = Instant::now();
        let ids: Vec<u64> = frames(taken.bytes).iter().map(|f| f.id).collect();
        assert_eq!(ids, [one, two]);
        let earliest = taken.earliest.expect("deadlines counted from the take");
        assert!(
            earliest >= before + Duration::from_secs(4)
                && earliest <= after + Duration::from_secs(4),
            "the shorter timeout, from the take"
        );
        assert!(calls.poll(two, &cx).is_pending());
        let answer = Frame::response(two, Status::OK, Bytes::new());
        assert!(calls.answer(answer, reply(b"two")).is_ok());
        assert_eq!(caller.0.load(Ordering::SeqCst), 1, "the caller is woken");
        match calls.poll(two, &cx) {
            Poll::Ready(Ok(r)) => assert_eq!(&r.payload[..], b"two"),
            other => panic!("{:?}", other.map(|r| r.map(|r| r.payload))),
        }
        let unknown = Frame::response(9, Status::OK, Bytes::new());
        assert!(
            calls.answer(unknown, reply(b"")).is_err(),
            "not a call here"
        );
    }

    #[test]
    fn a_dropped_call_sends_cancel_and_a_late_answer_is_not_taken() {
        let calls = Calls::new(8);
        let (_, w) = waker();
        let cx = Context::from_waker(&w);
        let later = Duration::from_secs(5);
        let id = calls.start(request().as_ref(), later, &cx).unwrap();
        let _ = calls.take(&w, || false);
        calls.cancel(id);
        let sent = frames(calls.take(&w, || false).expect("a CANCEL").bytes);
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].frame_type, sent[0].id), (FrameType::Cancel, id));
        let late = Frame::response(id, Status::OK, Bytes::new());
        assert!(calls.answer(late, reply(b"")).is_err());
    }

    #[test]
    fn deadlines_fail_calls_with_timeout_and_the_next_one_is_reported() {
        let calls = Calls::new(8);
        let (_, w) = waker();
        let cx = Context::from_waker(&w);
        let due = calls
            .start(request().as_ref(), Duration::ZERO, &cx)
            .unwrap();
        calls
            .start(request().as_ref(), Duration::from_secs(9), &cx)
            .unwrap();
        let (expired, next) = calls.expire(Instant::now() + Duration::from_secs(60));
        assert!(
            expired.is_empty() && next.is_none(),
            "a call the driver has not taken has no deadline yet"
        );
        let taken = calls.take(&w, || false).expect("two requests").earliest;
        let now = Instant::now();
        let (expired, next) = calls.expire(now);
        assert_eq!(expired, [due]);
        assert!(
            taken.is_some_and(|t| t <= now),
            "the first one's, at the take"
        );
        let next = next.expect("the second is waiting");
        assert!(next > now + Duration::from_secs(8) && next <= now + Duration::from_secs(9));
        match calls.poll(due, &cx) {
            Poll::Ready(Err(e)) => assert_eq!(e.status(), Status::TIMEOUT),
            _ => panic!("the first call timed out"),
        }
    }

    #[test]
    fn a_closed_table_fails_waiting_calls_and_refuses_new_ones() {
        let calls = Calls::new(1);
        let (caller, w) = waker();
        let cx = Context::from_waker(&w);
        let later = Duration::from_secs(5);
        let id = calls.start(request().as_ref(), later, &cx).unwrap();
        assert!(
            calls.start(request().as_ref(), later, &cx).is_none(),
            "over capacity"
        );
        calls.close(&Error::connection_lost("gone"));
        assert_eq!(caller.0.load(Ordering::SeqCst), 1);
        match calls.poll(id, &cx) {
            Poll::Ready(Err(e)) => assert!(e.message().contains("gone"), "{e}"),
            _ => panic!("the call failed"),
        }
        assert!(
            calls.start(request().as_ref(), later, &cx).is_none(),
            "closed"
        );
        assert!(calls.take(&w, || false).is_none(), "nothing left to send");
    }

    #[test]
    fn a_slot_is_used_again_under_a_new_id_and_a_late_answer_misses_it() {
        let calls = Calls::new(8);
        let (caller, w) = waker();
        let cx = Context::from_waker(&w);
        let t = Duration::from_secs(5);
        let old = calls.start(request().as_ref(), t, &cx).unwrap();
        let _ = calls.take(&w, || false);
        calls.cancel(old);
        let new = calls.start(request().as_ref(), t, &cx).unwrap();
        assert_eq!(
            State::slot_of(old),
            State::slot_of(new),
            "the freed slot is used again"
        );
        assert_ne!(old, new, "under another id");
        let late = Frame::response(old, Status::OK, Bytes::new());
        assert!(
            calls.answer(late, reply(b"old")).is_err(),
            "not the new call's"
        );
        assert!(calls.poll(new, &cx).is_pending());
        let woken = caller.0.load(Ordering::SeqCst);
        let answer = Frame::response(new, Status::OK, Bytes::new());
        assert!(calls.answer(answer, reply(b"new")).is_ok());
        assert_eq!(caller.0.load(Ordering::SeqCst), woken + 1);
        match calls.poll(new, &cx) {
            Poll::Ready(Ok(r)) => assert_eq!(&r.payload[..], b"new"),
            _ => panic!("the new call has its own answer"),
        }
        // Ids a peer makes up name no call, whatever slot their low bits point at.
        for id in [0, 1, u64::MAX, FIRST_ID, new + (1 << SLOT_BITS)] {
            assert!(calls
                .answer(Frame::response(id, Status::OK, Bytes::new()), reply(b""))
                .is_err());
        }
    }
}
