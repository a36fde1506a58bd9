//! The connection driver: one task per connection that owns the socket and the protocol state.
//!
//! Inbound bytes go through the [`Decoder`] to a [`Reactor`] that receives `&mut self` with each
//! frame (protosocket's reactor). Outbound frames come from a bounded command channel (and a
//! small control channel for cancels, credits and URGENT frames, which is drained first), are
//! encoded into an outbox and leave in vectored writes of many frames at once. While the
//! outbox holds more than its high-water mark, the driver stops taking commands, so a slow peer
//! pushes back on the senders instead of growing memory. On the accepting side
//! ([`DriverConfig::slow_reader`]) it also stops reading from the peer meanwhile, so that a peer
//! that sends (PINGs, requests) without reading the answers is slowed by its transport instead
//! of filling this side's memory, and it closes a connection whose outbox stays over the mark
//! too long (PROTOCOL.md 9.4).

use crate::error::Error;
use crate::transport::Io;
use bytes::{Bytes, BytesMut};
use mitto_proto::{Decoder, Frame, FrameType, Limits, Status};
use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

pub(crate) use crate::lane::Lane;
use crate::outbox::Outbox;
pub use crate::outbox::OUTBOX_HIGH_WATER;

/// While handling a long run of received frames, the outbox is written every this many of
/// them...
const EARLY_FLUSH_FRAMES: u32 = 64;
/// ...when it holds at least this many bytes.
const EARLY_FLUSH_BYTES: usize = 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

/// What the driver offers a reactor while it handles a frame or command.
pub struct Ctx<'a> {
    waker: &'a Waker,
    out: &'a mut Outbox,
    close: &'a mut Option<(Status, String)>,
    abort: &'a mut Option<Error>,
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

    /// Queues a frame for sending. An answer that carries a status (ERROR, CLOSE, a failed
    /// RESPONSE) goes shortened to the peer's limits rather than not at all.
    pub fn send(&mut self, f: &Frame) {
        let fitted = f.fit_answer(self.limits);
        let f = fitted.as_ref().unwrap_or(f);
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
        if let Err(e) = self.out.push_encoded(b) {
            // Bytes encoded in this process always decode; report instead of panicking.
            tracing::error!(error = %e, "dropping encoded frames that do not decode");
        }
    }

    /// Starts a graceful close: CLOSE is sent after what is queued, then the socket shuts down.
    pub fn close(&mut self, status: Status, reason: impl Into<String>) {
        if self.close.is_none() {
            *self.close = Some((status, reason.into()));
        }
    }

    /// Ends the connection at once, without writing what is queued (for a peer that does not
    /// read: nothing would reach it); the driver ends with `why`.
    pub fn fail(&mut self, why: Error) {
        if self.abort.is_none() {
            *self.abort = Some(why);
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
    /// The accepting side's hold on a peer that does not read ([`SlowReader`]); `None` on the
    /// connecting side, which must keep reading whatever it has to write (PROTOCOL.md 9.4).
    pub slow_reader: Option<SlowReader>,
    /// Where the driver publishes how many bytes wait in its outbox (for monitoring).
    pub backlog: Option<Arc<AtomicUsize>>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            limits: Limits::default(),
            keepalive: None,
            busy_poll: None,
            spin: DEFAULT_SPIN,
            slow_reader: None,
            backlog: None,
        }
    }
}

/// How the accepting side of a connection treats a peer that does not read what it is sent.
///
/// While more than [`OUTBOX_HIGH_WATER`] bytes wait to be written, the driver reads and
/// decodes nothing more from the peer (its transport then slows it down). If the outbox stays
/// above the mark, without once falling below it, for `write_deadline`, the connection ends
/// with SLOW_CONSUMER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowReader {
    /// How long the outbox may stay above its mark.
    pub write_deadline: Duration,
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
    /// The reactor asked to end the connection at once.
    abort: Option<Error>,
    limits: Limits,
    /// The read buffer may hold frames not decoded yet: bytes read past the handshake, or
    /// frames left while the outbox was over its mark.
    undecoded: bool,
    slow_reader: Option<SlowReader>,
    /// Armed while the outbox is over its mark (with a slow-reader hold).
    stall: Option<Pin<Box<Sleep>>>,
    backlog: Option<Arc<AtomicUsize>>,
    /// The peer ended its sending side inside a frame; the driver only writes what answers it.
    eof: bool,
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
        let out = Outbox::for_io(&io);
        Driver {
            io,
            out,
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
            abort: None,
            limits: cfg.limits,
            undecoded: true,
            slow_reader: cfg.slow_reader,
            stall: None,
            backlog: cfg.backlog,
            eof: false,
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
                abort: &mut self.abort,
                limits: &self.limits,
                queue: &self.cmds,
            },
        )
    }

    /// Whether reading (and decoding) waits for the outbox to drain below its mark.
    fn reading_held(&self) -> bool {
        self.slow_reader.is_some() && self.out.over_high_water()
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
            if self.undecoded && !self.rbuf.is_empty() && !self.reading_held() {
                // Frames the peer sent right behind its HELLO, after the commands queued before
                // the driver started (a resumed session's subscriptions) are in place; or
                // frames left undecoded while the outbox was over its mark.
                progress |= self.handle_buffered(cx.waker());
            }
            if !self.out.over_high_water() && self.close.is_none() {
                let (r, mut ctx) = self.ctx(cx.waker());
                progress |= r.poll_outbound(&mut ctx);
            }
            let read = if self.reactor.read_paused() || self.reading_held() {
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
            if let Some(e) = self.abort.take() {
                return Poll::Ready(Err(e));
            }
            if let Some(r) = self.write_step(cx, &mut progress) {
                return Poll::Ready(r);
            }
            if !progress {
                budget_left = true;
                break;
            }
        }
        if let Some(b) = &self.backlog {
            b.store(self.out.len(), Ordering::Relaxed);
        }
        if let Poll::Ready(r) = self.poll_stall(cx) {
            return Poll::Ready(r);
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

    /// Queues CLOSE once a close was asked for, then writes what is queued; the connection's
    /// outcome once CLOSE is out (or writing failed).
    fn write_step(&mut self, cx: &mut Context<'_>, progress: &mut bool) -> Option<Outcome> {
        if let Some((status, reason)) = &self.close {
            if !self.close_sent {
                let f = Frame::close(*status, reason);
                self.push_answer(&f);
                self.close_sent = true;
            }
        }
        let was_high = self.out.over_high_water();
        let flushed = self.out.poll_flush(&mut self.io, cx);
        if was_high && !self.out.over_high_water() {
            // Below the mark again: commands, the reactor's own queue and reading may move
            // on, and nothing else would wake this task for them.
            *progress = true;
            self.stall = None;
        }
        match flushed {
            Poll::Ready(Err(e)) => Some(Err(Error::from(e))),
            Poll::Ready(Ok(())) if self.close_sent => {
                match &mut self.io {
                    Io::Link(l) => l.close(),
                    io => {
                        let _ = Pin::new(io).poll_shutdown(cx);
                    }
                }
                Some(Ok(()))
            }
            _ => None,
        }
    }

    /// Ends the connection when its outbox has stayed over the mark for the write deadline.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let Some(slow) = self.slow_reader else {
            return Poll::Pending;
        };
        if !self.out.over_high_water() {
            self.stall = None;
            return Poll::Pending;
        }
        let deadline = slow.write_deadline;
        let timer = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(Err(Error::new(
            Status::SLOW_CONSUMER,
            format!(
                "the peer read too little of the {} bytes waiting for it for {deadline:?}",
                self.out.len()
            ),
        )))
    }

    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        if let Poll::Ready(r) = self.poll_stall(cx) {
            return Poll::Ready(r);
        }
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
        if self.eof {
            return Poll::Pending;
        }
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let n = match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::from(e))),
            Poll::Ready(Ok(n)) => n,
        };
        if n == 0 {
            while !self.dec.is_failed() {
                match self.dec.decode_eof(&mut self.rbuf) {
                    Ok(Some(f)) => self.on_frame(f, cx.waker()),
                    Ok(None) => break,
                    Err(e) => {
                        // Ended inside a frame: the peer may have shut down only its sending
                        // side, so it hears why (ERROR, CLOSE) before the connection closes.
                        tracing::debug!(error = %e, "peer closed inside a frame");
                        self.eof = true;
                        self.refuse_bytes(&e, cx.waker());
                        return Poll::Ready(Ok(true));
                    }
                }
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

    /// Decodes and handles the frames in the read buffer; on the accepting side, only until
    /// the outbox is over its mark (the rest waits for it to drain). Whether it handled
    /// any.
    fn handle_buffered(&mut self, waker: &Waker) -> bool {
        let mut n = 0u32;
        self.undecoded = false;
        loop {
            if self.reading_held() {
                self.undecoded = true;
                return n > 0;
            }
            match self.dec.decode(&mut self.rbuf) {
                Ok(Some(f)) => {
                    self.on_frame(f, waker);
                    n += 1;
                    if n.is_multiple_of(EARLY_FLUSH_FRAMES) {
                        self.flush_early(waker);
                    }
                }
                Ok(None) => return n > 0,
                Err(e) => {
                    tracing::debug!(error = %e, id = e.id(), "bad frame from peer");
                    self.refuse_bytes(&e, waker);
                    if e.is_fatal() {
                        return true;
                    }
                }
            }
        }
    }

    /// Answers a decode error with ERROR; after a fatal one, drops what is buffered and closes
    /// (CLOSE with the same status).
    fn refuse_bytes(&mut self, e: &mitto_proto::DecodeError, waker: &Waker) {
        self.push_answer(&Frame::error(e.id(), e.status(), &e.to_string()));
        if e.is_fatal() {
            self.rbuf.clear();
            let (_, mut ctx) = self.ctx(waker);
            ctx.close(e.status(), "the byte stream can no longer be trusted");
        }
    }

    /// Queues a frame of the driver's own, shortened to the peer's limits if it must be.
    fn push_answer(&mut self, f: &Frame) {
        let fitted = f.fit_answer(&self.limits);
        let _ = self.out.push(fitted.as_ref().unwrap_or(f));
    }

    /// Writes what the outbox holds now, in the middle of a run of received frames, so that the
    /// peer works on the first answers while this side handles the rest of the requests (two
    /// ends of a pipelined connection then run side by side instead of taking turns). Not on
    /// in-process links, where a handover costs no system call. (Doing the same in a run of
    /// commands measured slower: the sender's batch is better written whole.)
    fn flush_early(&mut self, waker: &Waker) {
        if self.out.len() >= EARLY_FLUSH_BYTES && !matches!(self.io, Io::Link(_)) {
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
}
