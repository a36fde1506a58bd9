//! The connection driver: one task per connection that owns the socket and the protocol state.
//!
//! Inbound bytes go through the [`Decoder`] to a [`Reactor`] that receives `&mut self` with each
//! frame (protosocket's reactor). Outbound frames come from a bounded command channel (and a
//! small control channel for cancels, credits and URGENT frames, which is drained first), are
//! encoded into an outbox and leave in vectored writes of many frames at once. While the
//! outbox holds more than its high-water mark, the driver stops taking commands, so a slow peer
//! pushes back on the senders instead of growing memory.

use crate::error::Error;
use crate::transport::Io;
use bytes::{Buf, Bytes, BytesMut};
use mitto_proto::{Decoder, EncodeError, Frame, FrameType, Limits, Status};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// Payloads at least this long are written from their own `Bytes`, not copied into the buffer.
const INLINE_PAYLOAD_MAX: usize = 8 * 1024;
/// Stop taking commands while this many bytes wait to be written.
const OUTBOX_HIGH_WATER: usize = 1024 * 1024;
/// At most this many slices per vectored write.
const MAX_IOVECS: usize = 64;
/// While handling a long run of received frames, the outbox is written every this many of
/// them...
const EARLY_FLUSH_FRAMES: u32 = 64;
/// ...when it holds at least this many bytes.
const EARLY_FLUSH_BYTES: usize = 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// Room the outbox makes at once for runs of small frames.
const OUT_CHUNK: usize = 64 * 1024;

/// Bytes waiting to be written, in frame order, URGENT frames first.
#[derive(Default)]
pub(crate) struct Outbox {
    /// The chunk being written (possibly partly).
    front: Bytes,
    /// Encoded URGENT frames: written as soon as the front chunk is done.
    urgent: BytesMut,
    /// Frame-aligned chunks: runs of small frames, and large payloads on their own.
    queue: VecDeque<Bytes>,
    /// Small frames being collected.
    cur: BytesMut,
    len: usize,
    /// On an in-process link: frames are handed over as they are, URGENT ones first.
    link: bool,
    frames: Vec<Frame>,
    urgent_frames: Vec<Frame>,
}

impl Outbox {
    fn for_link() -> Outbox {
        Outbox {
            link: true,
            ..Outbox::default()
        }
    }

    /// Queues a frame. A frame whose attached value encodes over `max_payload` is dropped
    /// (and logged): the peer's decoder would refuse it.
    pub(crate) fn push_checked(&mut self, f: &Frame, max_payload: u32) -> Result<(), EncodeError> {
        if f.value.is_some() && !self.link {
            let mut m = f.clone();
            if let Err(e) = m.materialize() {
                tracing::warn!(error = %e, subject = m.subject.as_str(), "cannot encode an attached value; frame dropped");
                return Ok(());
            }
            if m.payload.len() > max_payload as usize {
                tracing::warn!(
                    len = m.payload.len(),
                    max_payload,
                    subject = m.subject.as_str(),
                    "an attached value encodes over the peer's payload limit; frame dropped"
                );
                return Ok(());
            }
            m.value = None;
            return self.push(&m);
        }
        self.push(f)
    }

    /// Queues a frame.
    pub(crate) fn push(&mut self, f: &Frame) -> Result<(), EncodeError> {
        if self.link {
            self.len += f.encoded_len();
            if f.is_urgent() {
                self.urgent_frames.push(f.clone());
            } else {
                self.frames.push(f.clone());
            }
            return Ok(());
        }
        if f.value.is_some() {
            // A value attached in this process: its encoded form goes on the wire.
            let mut m = f.clone();
            if let Err(e) = m.materialize() {
                tracing::warn!(error = %e, subject = m.subject.as_str(), "cannot encode an attached value; frame dropped");
                return Ok(());
            }
            m.value = None;
            return self.push(&m);
        }
        if f.is_urgent() {
            f.encode(&mut self.urgent)?;
        } else if f.payload.len() >= INLINE_PAYLOAD_MAX {
            f.encode_head(&mut self.cur)?;
            self.queue.push_back(self.cur.split().freeze());
            self.queue.push_back(f.payload.clone());
        } else {
            let need = f.encoded_len();
            if self.cur.capacity() - self.cur.len() < need {
                // Full: what it holds becomes a chunk of its own and a new one starts, instead
                // of growing (and copying) the one being filled.
                if !self.cur.is_empty() {
                    self.queue.push_back(self.cur.split().freeze());
                }
                self.cur.reserve(need.max(OUT_CHUNK));
            }
            f.encode(&mut self.cur)?;
        }
        self.len += f.encoded_len();
        Ok(())
    }

    /// Queues encoded frames as one chunk, after everything queued before.
    pub(crate) fn push_encoded(&mut self, b: Bytes) {
        if b.is_empty() || self.link {
            return;
        }
        if !self.cur.is_empty() {
            self.queue.push_back(self.cur.split().freeze());
        }
        self.len += b.len();
        self.queue.push_back(b);
    }

    /// Bytes waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
            && self.urgent_frames.is_empty()
            && self.front.is_empty()
            && self.urgent.is_empty()
            && self.queue.is_empty()
            && self.cur.is_empty()
    }

    fn over_high_water(&self) -> bool {
        self.len > OUTBOX_HIGH_WATER
    }

    /// Writes until empty or the socket is full.
    fn poll_flush(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Io::Link(l) = io {
            if self.frames.is_empty() && self.urgent_frames.is_empty() {
                return Poll::Ready(Ok(()));
            }
            std::task::ready!(l.poll_reserve(cx))?;
            let mut batch = std::mem::take(&mut self.urgent_frames);
            if batch.is_empty() {
                batch = std::mem::take(&mut self.frames);
            } else {
                batch.append(&mut self.frames);
            }
            self.len = 0;
            return Poll::Ready(l.send_reserved(batch));
        }
        loop {
            if self.front.is_empty() {
                self.front = if !self.urgent.is_empty() {
                    self.urgent.split().freeze()
                } else if let Some(c) = self.queue.pop_front() {
                    c
                } else if !self.cur.is_empty() {
                    self.cur.split().freeze()
                } else {
                    // Everything went to the stream; a TLS stream may still hold records it
                    // accepted while the socket was full, and nothing else would write them.
                    return Pin::new(&mut *io).poll_flush(cx);
                };
            }
            let n = if self.queue.is_empty() && self.cur.is_empty() && self.urgent.is_empty() {
                std::task::ready!(Pin::new(&mut *io).poll_write(cx, &self.front))?
            } else {
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(MAX_IOVECS);
                slices.push(IoSlice::new(&self.front));
                if !self.urgent.is_empty() {
                    slices.push(IoSlice::new(&self.urgent));
                }
                for c in self.queue.iter().take(MAX_IOVECS - 3) {
                    slices.push(IoSlice::new(c));
                }
                if !self.cur.is_empty() && self.queue.len() <= MAX_IOVECS - 3 {
                    slices.push(IoSlice::new(&self.cur));
                }
                std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(n);
        }
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n.min(self.len);
        let k = n.min(self.front.len());
        self.front.advance(k);
        n -= k;
        if n == 0 {
            return;
        }
        let k = n.min(self.urgent.len());
        self.urgent.advance(k);
        n -= k;
        while n > 0 {
            match self.queue.front_mut() {
                Some(c) if c.len() <= n => {
                    n -= c.len();
                    self.queue.pop_front();
                }
                Some(c) => {
                    c.advance(n);
                    return;
                }
                None => {
                    self.cur.advance(n);
                    return;
                }
            }
        }
    }
}

/// What the driver offers a reactor while it handles a frame or command.
pub struct Ctx<'a> {
    waker: &'a Waker,
    out: &'a mut Outbox,
    close: &'a mut Option<(Status, String)>,
    limits: &'a Limits,
    /// The driver's (bounded) command queue.
    queue: &'a dyn CommandQueue,
}

/// What a [`Ctx`] can ask of the driver's command queue.
trait CommandQueue {
    fn is_empty(&self) -> bool;
}

impl<T> CommandQueue for mpsc::Receiver<T> {
    fn is_empty(&self) -> bool {
        mpsc::Receiver::is_empty(self)
    }
}

impl Ctx<'_> {
    /// The connection task's waker: a reactor that polls futures of its own (handlers, timers)
    /// polls them with it, so that they wake the driver.
    pub fn waker(&self) -> &Waker {
        self.waker
    }

    /// The limits negotiated for this connection.
    pub fn limits(&self) -> &Limits {
        self.limits
    }

    /// Whether the outbox holds more than its high-water mark: a reactor that produces frames
    /// on its own (from [`Reactor::poll_outbound`]) should stop until it is called again.
    pub fn backlogged(&self) -> bool {
        self.out.over_high_water()
    }

    /// Queues a frame for sending.
    pub fn send(&mut self, f: &Frame) {
        if let Err(e) = self.out.push_checked(f, self.limits.max_payload) {
            // Frames built here always fit the header; a caller's oversize frame was refused
            // before it reached the driver. Report instead of panicking all the same.
            tracing::error!(error = %e, "dropping a frame that cannot be encoded");
        }
    }

    /// Whether commands are waiting in the driver's queue (the driver takes them before it
    /// next asks the reactor for frames of its own).
    pub(crate) fn commands_waiting(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Queues frames already encoded (whole frames, in order) as they are, without a copy.
    /// Only on byte streams: an in-process link carries frames.
    pub(crate) fn send_encoded(&mut self, b: Bytes) {
        self.out.push_encoded(b);
    }

    /// Starts a graceful close: CLOSE is sent after what is queued, then the socket shuts down.
    pub fn close(&mut self, status: Status, reason: impl Into<String>) {
        if self.close.is_none() {
            *self.close = Some((status, reason.into()));
        }
    }
}

/// Receives inbound frames and commands, with `&mut self`.
pub trait Reactor: Send + 'static {
    /// What other tasks send this connection.
    type Cmd: Send + 'static;
    /// A frame arrived.
    fn on_frame(&mut self, f: Frame, cx: &mut Ctx<'_>);
    /// A command arrived. `None`: every command sender is gone.
    fn on_command(&mut self, c: Option<Self::Cmd>, cx: &mut Ctx<'_>);
    /// The connection ended (cleanly or not); fail whatever is pending.
    fn on_closed(&mut self, why: &Error);
    /// Called on every turn of the driver while the outbox is below its high-water mark: a
    /// reactor with its own queue of outgoing frames (a broker's per-subscription queues) moves
    /// them to the outbox here. Returns whether it queued anything. Wake the driver (send it a
    /// command) when such frames appear while it is idle.
    fn poll_outbound(&mut self, _cx: &mut Ctx<'_>) -> bool {
        false
    }

    /// Whether the driver should stop reading from the peer for now (a broker holding back a
    /// publisher). The driver asks on every turn; a reactor that pauses must wake it (from
    /// [`Reactor::poll_outbound`], with [`Ctx::waker`]) when reading may resume.
    fn read_paused(&self) -> bool {
        false
    }

    /// Called when the driver starts a turn (before it handles any command or frame), e.g. to
    /// read the clock once for everything the turn handles.
    fn on_turn(&mut self) {}
}

/// Settings of one driver.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The negotiated limits.
    pub limits: Limits,
    /// Keepalive PING interval; a peer silent for two intervals is dropped.
    pub keepalive: Option<Duration>,
    /// Latency mode: every read of the connection keeps this poller polling (see
    /// [`crate::BusyPoll`]).
    pub busy_poll: Option<Arc<crate::BusyPoll>>,
    /// Spin-then-park window of a socket connection: while its reads come less than this
    /// apart, the driver polls instead of sleeping, for at most this long after the last read;
    /// zero never spins.
    pub spin: Duration,
}

/// The default spin-then-park window of socket connections ([`DriverConfig::spin`]).
pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);

/// Spin-then-park for a connection with dense traffic.
///
/// Waking a sleeping thread costs the waker a system call and the sleeper its trip through the
/// scheduler: on a virtual machine tens of microseconds, more than a small message's whole
/// handling. When a connection's reads come less than `window` apart, the driver, once it has
/// nothing left to do, yields to the runtime instead of waiting to be woken: the runtime
/// checks its sockets without sleeping, runs whatever else is ready and comes back. It keeps
/// doing so until `window` has passed since the last read, then waits as usual. A connection
/// whose reads come further apart than `window` never spins, so sparse traffic and an idle
/// connection cost no CPU; dense traffic costs at most one `window` of polling after it stops.
#[derive(Debug)]
struct Spin {
    window: Duration,
    last_read: Instant,
    /// The last two reads came less than `window` apart.
    dense: bool,
}

impl Spin {
    fn new(window: Duration, now: Instant) -> Spin {
        Spin {
            window,
            last_read: now,
            dense: false,
        }
    }

    /// A read at `now`.
    #[inline]
    fn read(&mut self, now: Instant) {
        self.dense = now.saturating_duration_since(self.last_read) < self.window;
        self.last_read = now;
    }

    /// Whether to poll again at `now` instead of waiting to be woken.
    #[inline]
    fn keep_polling(&self, now: Instant) -> bool {
        self.dense && now.saturating_duration_since(self.last_read) < self.window
    }
}

/// A bounded queue of commands that the driver takes whole: a sender pushes under a lock
/// (waking the driver only when the queue was empty), the driver swaps the queue for an empty
/// one. Cheaper per command than a channel when many commands arrive between two turns of the
/// driver (pipelined calls); a sender that finds it full or closed uses the channel instead.
pub(crate) struct Lane<T> {
    items: std::sync::Mutex<LaneItems<T>>,
    waker: futures_util::task::AtomicWaker,
    cap: usize,
}

struct LaneItems<T> {
    queued: Vec<T>,
    closed: bool,
}

impl<T> Lane<T> {
    pub(crate) fn new(cap: usize) -> Lane<T> {
        Lane {
            items: std::sync::Mutex::new(LaneItems {
                queued: Vec::new(),
                closed: false,
            }),
            waker: futures_util::task::AtomicWaker::new(),
            cap: cap.max(1),
        }
    }

    /// Queues `item`; gives it back if the lane is full or closed.
    pub(crate) fn push(&self, item: T) -> Result<(), T> {
        let Ok(mut q) = self.items.lock() else {
            return Err(item);
        };
        if q.closed || q.queued.len() >= self.cap {
            return Err(item);
        }
        let was_empty = q.queued.is_empty();
        q.queued.push(item);
        drop(q);
        if was_empty {
            self.waker.wake();
        }
        Ok(())
    }

    /// Swaps everything queued into `out` (which must be empty); `waker` is woken by the next
    /// push into the emptied lane.
    fn take(&self, waker: &Waker, out: &mut Vec<T>) {
        self.waker.register(waker);
        if let Ok(mut q) = self.items.lock() {
            std::mem::swap(&mut q.queued, out);
        }
    }

    /// Refuses further pushes; returns what was still queued.
    fn close(&self) -> Vec<T> {
        match self.items.lock() {
            Ok(mut q) => {
                q.closed = true;
                std::mem::take(&mut q.queued)
            }
            Err(_) => Vec::new(),
        }
    }
}

/// One connection's task.
pub struct Driver<R: Reactor> {
    io: Io,
    rbuf: BytesMut,
    dec: Decoder,
    out: Outbox,
    cmds: mpsc::Receiver<R::Cmd>,
    ctl: mpsc::UnboundedReceiver<R::Cmd>,
    cmds_done: bool,
    /// Commands handed over in batches (see [`Lane`]), and the buffer they are swapped into.
    lane: Option<Arc<Lane<R::Cmd>>>,
    lane_buf: Vec<R::Cmd>,
    reactor: R,
    keepalive: Option<Duration>,
    timer: Pin<Box<Sleep>>,
    last_rx: Instant,
    ping_id: u64,
    close: Option<(Status, String)>,
    close_sent: bool,
    limits: Limits,
    /// Bytes read past the handshake have not been decoded yet.
    leftover: bool,
    busy_poll: Option<Arc<crate::BusyPoll>>,
    /// Spin-then-park (socket connections with a non-zero window only).
    spin: Option<Spin>,
}

/// How a driver ended.
pub type Outcome = Result<(), Error>;

impl<R: Reactor> Driver<R> {
    /// A driver over `io` (with `leftover` bytes read past the handshake), feeding `reactor`
    /// with frames and with commands from `cmds` (bounded: paused while the outbox is full) and
    /// `ctl` (always taken first).
    pub fn new(
        io: Io,
        leftover: BytesMut,
        cfg: DriverConfig,
        reactor: R,
        cmds: mpsc::Receiver<R::Cmd>,
        ctl: mpsc::UnboundedReceiver<R::Cmd>,
    ) -> Self {
        let now = Instant::now();
        let first_tick = cfg
            .keepalive
            .map(|k| now + k)
            .unwrap_or(now + Duration::from_secs(3600));
        let link = matches!(io, Io::Link(_));
        Driver {
            io,
            out: if link {
                Outbox::for_link()
            } else {
                Outbox::default()
            },
            rbuf: leftover,
            dec: Decoder::new(cfg.limits),
            cmds,
            ctl,
            cmds_done: false,
            lane: None,
            lane_buf: Vec::new(),
            reactor,
            keepalive: cfg.keepalive,
            timer: Box::pin(tokio::time::sleep_until(first_tick)),
            last_rx: now,
            ping_id: 0,
            close: None,
            close_sent: false,
            limits: cfg.limits,
            leftover: true,
            busy_poll: cfg.busy_poll,
            spin: (!link && !cfg.spin.is_zero()).then(|| Spin::new(cfg.spin, now)),
        }
    }

    /// Also takes commands from `lane` (in batches, while the outbox is below its high-water
    /// mark); the lane is closed when the driver ends.
    pub(crate) fn with_lane(mut self, lane: Arc<Lane<R::Cmd>>) -> Self {
        self.lane = Some(lane);
        self
    }

    /// Runs the connection to its end.
    pub async fn run(mut self) -> Outcome {
        let outcome = poll_fn(|cx| self.poll(cx)).await;
        if let Some(lane) = &self.lane {
            // Commands left in it fail (their answer channels close with them).
            drop(lane.close());
        }
        let why = match &outcome {
            Ok(()) => Error::new(Status::UNAVAILABLE, "connection closed").retryable(),
            Err(e) => e.clone(),
        };
        self.reactor.on_closed(&why);
        outcome
    }

    fn ctx<'s>(&'s mut self, waker: &'s Waker) -> (&'s mut R, Ctx<'s>) {
        (
            &mut self.reactor,
            Ctx {
                waker,
                out: &mut self.out,
                close: &mut self.close,
                limits: &self.limits,
                queue: &self.cmds,
            },
        )
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        self.reactor.on_turn();
        if let Poll::Ready(r) = self.poll_timer(cx) {
            return Poll::Ready(r);
        }
        let mut budget_left = false;
        for _ in 0..8 {
            let mut progress = false;
            progress |= self.poll_commands(cx);
            if std::mem::take(&mut self.leftover) && !self.rbuf.is_empty() {
                // Frames the peer sent right behind its HELLO, after the commands queued before
                // the driver started (a resumed session's subscriptions) are in place.
                self.handle_buffered(cx.waker());
                progress = true;
            }
            if !self.out.over_high_water() && self.close.is_none() {
                let (r, mut ctx) = self.ctx(cx.waker());
                progress |= r.poll_outbound(&mut ctx);
            }
            let read = if self.reactor.read_paused() {
                // Held back on purpose: not the peer's silence.
                self.last_rx = Instant::now();
                Poll::Pending
            } else {
                self.poll_read(cx)
            };
            match read {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(true)) => progress = true,
                Poll::Ready(Ok(false)) => {
                    // EOF: what was queued can no longer matter to the peer.
                    return Poll::Ready(if self.close_sent || self.close.is_some() {
                        Ok(())
                    } else {
                        Err(Error::connection_lost("peer closed the connection"))
                    });
                }
                Poll::Pending => {}
            }
            if let Some((status, reason)) = &self.close {
                if !self.close_sent {
                    let f = Frame::close(*status, reason);
                    let _ = self.out.push(&f);
                    self.close_sent = true;
                }
            }
            let was_high = self.out.over_high_water();
            let flushed = self.out.poll_flush(&mut self.io, cx);
            if was_high && !self.out.over_high_water() {
                // Below the mark again: commands and the reactor's own queue may move on, and
                // nothing else would wake this task for them.
                progress = true;
            }
            match flushed {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::connection_lost(e))),
                Poll::Ready(Ok(())) if self.close_sent => {
                    match &mut self.io {
                        Io::Link(l) => l.close(),
                        io => {
                            let _ = Pin::new(io).poll_shutdown(cx);
                        }
                    }
                    return Poll::Ready(Ok(()));
                }
                _ => {}
            }
            if !progress {
                budget_left = true;
                break;
            }
        }
        if !budget_left {
            // Still work to do: yield to other tasks, then come back.
            cx.waker().wake_by_ref();
        } else if self
            .spin
            .as_ref()
            .is_some_and(|s| s.keep_polling(Instant::now()))
        {
            // Back of the queue, behind a check of the runtime's sockets (see [`Spin`]).
            let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
        }
        Poll::Pending
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(k) = self.keepalive else {
            return Poll::Pending;
        };
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now.duration_since(self.last_rx) > k * 2 {
                return Poll::Ready(Err(Error::connection_lost(format!(
                    "no traffic from the peer for {:?} (keepalive {k:?})",
                    now.duration_since(self.last_rx)
                ))));
            }
            self.ping_id += 1;
            let _ = self.out.push(&Frame::ping(self.ping_id));
            self.timer.as_mut().reset(now + k);
        }
        Poll::Pending
    }

    /// Takes commands while the outbox is below its high-water mark.
    fn poll_commands(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let mut n = 0;
        while n < 256 {
            match self.ctl.poll_recv(cx) {
                Poll::Ready(Some(c)) => {
                    let (r, mut ctx) = self.ctx(cx.waker());
                    r.on_command(Some(c), &mut ctx);
                    progress = true;
                    n += 1;
                }
                _ => break,
            }
        }
        if let Some(lane) = &self.lane {
            if !self.out.over_high_water() && self.close.is_none() {
                lane.take(cx.waker(), &mut self.lane_buf);
                let mut batch = std::mem::take(&mut self.lane_buf);
                for c in batch.drain(..) {
                    let (r, mut ctx) = self.ctx(cx.waker());
                    r.on_command(Some(c), &mut ctx);
                    progress = true;
                    n += 1;
                }
                self.lane_buf = batch;
            }
        }
        while n < 256 && !self.cmds_done && !self.out.over_high_water() && self.close.is_none() {
            match self.cmds.poll_recv(cx) {
                Poll::Ready(Some(c)) => {
                    let (r, mut ctx) = self.ctx(cx.waker());
                    r.on_command(Some(c), &mut ctx);
                    progress = true;
                    n += 1;
                }
                Poll::Ready(None) => {
                    self.cmds_done = true;
                    let (r, mut ctx) = self.ctx(cx.waker());
                    r.on_command(None, &mut ctx);
                    progress = true;
                }
                Poll::Pending => break,
            }
        }
        progress
    }

    /// Reads once and handles every complete frame. `Ok(false)` at end of stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        if matches!(self.io, Io::Link(_)) {
            return self.poll_read_link(cx);
        }
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let n = match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::connection_lost(e))),
            Poll::Ready(Ok(n)) => n,
        };
        if n == 0 {
            let left = self.rbuf.len();
            if left > 0 && !self.dec.is_failed() {
                tracing::debug!(left, "peer closed inside a frame");
            }
            return Poll::Ready(Ok(false));
        }
        let now = Instant::now();
        self.last_rx = now;
        if let Some(s) = &mut self.spin {
            s.read(now);
        }
        if let Some(b) = &self.busy_poll {
            b.touch();
        }
        self.handle_buffered(cx.waker());
        Poll::Ready(Ok(true))
    }

    /// Takes frames from an in-process link (a bounded number per turn).
    fn poll_read_link(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        let mut n = 0;
        while n < 256 {
            let Io::Link(l) = &mut self.io else {
                break;
            };
            match l.poll_recv(cx) {
                Poll::Ready(Some(f)) => {
                    n += 1;
                    self.on_frame(f, cx.waker());
                }
                Poll::Ready(None) if n == 0 => return Poll::Ready(Ok(false)),
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if n == 0 {
            return Poll::Pending;
        }
        self.last_rx = Instant::now();
        Poll::Ready(Ok(true))
    }

    fn handle_buffered(&mut self, waker: &Waker) {
        let mut n = 0u32;
        loop {
            match self.dec.decode(&mut self.rbuf) {
                Ok(Some(f)) => {
                    self.on_frame(f, waker);
                    n += 1;
                    if n % EARLY_FLUSH_FRAMES == 0 {
                        self.flush_early(waker);
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, id = e.id(), "bad frame from peer");
                    let _ = self
                        .out
                        .push(&Frame::error(e.id(), e.status(), &e.to_string()));
                    if e.is_fatal() {
                        self.rbuf.clear();
                        let (_, mut ctx) = self.ctx(waker);
                        ctx.close(e.status(), "the byte stream can no longer be trusted");
                        return;
                    }
                }
            }
        }
    }

    /// Writes what the outbox holds now, in the middle of a run of received frames, so that the
    /// peer works on the first answers while this side handles the rest of the requests (two
    /// ends of a pipelined connection then run side by side instead of taking turns). Not on
    /// in-process links, where a handover costs no system call. (Doing the same in a run of
    /// commands measured slower: the sender's batch is better written whole.)
    fn flush_early(&mut self, waker: &Waker) {
        if self.out.len >= EARLY_FLUSH_BYTES && !matches!(self.io, Io::Link(_)) {
            // A write error shows again at the driver's own flush, which handles it.
            let _ = self
                .out
                .poll_flush(&mut self.io, &mut Context::from_waker(waker));
        }
    }

    fn on_frame(&mut self, f: Frame, waker: &Waker) {
        match f.frame_type {
            FrameType::Ping => {
                let _ = self.out.push(&Frame::pong(&f));
            }
            FrameType::Pong => {}
            _ => {
                let (r, mut ctx) = self.ctx(waker);
                r.on_frame(f, &mut ctx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mitto_proto::Subject;

    #[test]
    fn spin_polls_only_between_dense_reads_and_for_one_window() {
        let w = Duration::from_micros(100);
        let t0 = Instant::now();
        let mut s = Spin::new(w, t0);
        assert!(!s.keep_polling(t0), "no read yet: sleep");
        // Reads further apart than the window: sparse traffic never spins.
        s.read(t0 + Duration::from_millis(1));
        assert!(!s.keep_polling(t0 + Duration::from_millis(1)));
        s.read(t0 + Duration::from_millis(2));
        assert!(!s.keep_polling(t0 + Duration::from_millis(2)));
        // Two reads closer together than the window: poll until one window after the last.
        let last = t0 + Duration::from_millis(2) + Duration::from_micros(40);
        s.read(last);
        assert!(s.keep_polling(last));
        assert!(s.keep_polling(last + Duration::from_micros(99)));
        assert!(!s.keep_polling(last + w), "a quiet window ends it");
        // A read after a long silence is sparse again.
        s.read(last + Duration::from_millis(5));
        assert!(!s.keep_polling(last + Duration::from_millis(5)));
    }

    /// Counts its wakes.
    struct CountWake(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn lane_hands_over_in_order_wakes_once_per_batch_and_refuses_when_full_or_closed() {
        let lane = Lane::new(3);
        let count = Arc::new(CountWake(std::sync::atomic::AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let wakes = || count.0.load(std::sync::atomic::Ordering::SeqCst);
        let mut out = Vec::new();
        lane.take(&waker, &mut out);
        assert!(out.is_empty());
        assert_eq!(lane.push(1), Ok(()));
        assert_eq!(
            wakes(),
            1,
            "the first push into an empty lane wakes the driver"
        );
        assert_eq!(lane.push(2), Ok(()));
        assert_eq!(lane.push(3), Ok(()));
        assert_eq!(wakes(), 1, "pushes behind it do not");
        assert_eq!(lane.push(4), Err(4), "full at its capacity");
        lane.take(&waker, &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        out.clear();
        assert_eq!(lane.push(5), Ok(()));
        assert_eq!(wakes(), 2, "the emptied lane wakes again");
        assert_eq!(lane.close(), vec![5], "closing gives back what was queued");
        assert_eq!(lane.push(6), Err(6), "a closed lane refuses");
    }

    fn drain(out: &mut Outbox) -> Vec<u8> {
        let mut v = Vec::new();
        loop {
            if out.front.is_empty() {
                out.front = if !out.urgent.is_empty() {
                    out.urgent.split().freeze()
                } else if let Some(c) = out.queue.pop_front() {
                    c
                } else if !out.cur.is_empty() {
                    out.cur.split().freeze()
                } else {
                    return v;
                };
            }
            // write 7 bytes at a time, as a slow socket would
            let n = out.front.len().min(7);
            v.extend_from_slice(&out.front[..n]);
            out.consume(n);
        }
    }

    #[test]
    fn outbox_keeps_frame_order_and_puts_urgent_first() {
        let mut out = Outbox::default();
        let a = Frame::publish(Subject::literal("a").unwrap(), "1");
        let big = Frame::publish(Subject::literal("b").unwrap(), vec![9u8; 20_000]);
        let u = Frame::publish(Subject::literal("u").unwrap(), "!")
            .with_flags(mitto_proto::Flags::URGENT);
        out.push(&a).unwrap();
        out.push(&big).unwrap();
        out.push(&u).unwrap();
        out.push(&a).unwrap();
        assert_eq!(
            out.len(),
            a.encoded_len() * 2 + big.encoded_len() + u.encoded_len()
        );
        let bytes = drain(&mut out);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut dec = Decoder::default();
        let mut got = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            got.push(f.subject.as_str().to_owned());
        }
        assert_eq!(got, ["u", "a", "b", "a"]);
        assert!(out.is_empty());
    }

    #[test]
    fn small_frames_past_a_chunk_start_a_new_chunk_in_order_without_copying() {
        let mut out = Outbox::default();
        let n = 3 * OUT_CHUNK / 160;
        for i in 0..n {
            let f =
                Frame::publish(Subject::literal("s").unwrap(), vec![0u8; 128]).with_id(i as u64);
            out.push(&f).unwrap();
        }
        assert!(
            out.queue.len() >= 2,
            "full chunks were set aside, not grown: {}",
            out.queue.len()
        );
        let bytes = drain(&mut out);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut dec = Decoder::default();
        let mut ids = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            ids.push(f.id);
        }
        assert_eq!(ids, (0..n as u64).collect::<Vec<_>>());
        assert!(out.is_empty());
    }
}
