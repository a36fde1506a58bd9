//! The connection state machine: everything one end of a mitto connection does, without I/O
//! and without a clock (quinn-proto's `Connection` is the model).
//!
//! A [`Connection`] owns the handshake, the ids and deadlines of this side's operations (calls,
//! acknowledged publishes, subscriptions, queries) in one table and one timer structure, stream
//! credit, the calls the peer opens, subscriptions and the session, keepalive and close, and
//! one ordered outbound queue. A driver feeds it what arrives ([`Connection::handle_input`] for
//! bytes, [`Connection::handle_frame`] for an in-process link that carries frames), takes what
//! it must send ([`Connection::poll_transmit`], [`Connection::poll_transmit_frames`]), calls
//! [`Connection::handle_timeout`] at [`Connection::poll_timeout`], and hands the application
//! [`Connection::poll_event`]'s events. Every method that needs the time takes it.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use mitto_proto::connection::{CallOptions, Config, Connection, Event, Transmit};
//! use mitto_proto::{Frame, Status, Subject};
//! use std::time::Instant;
//!
//! let now = Instant::now();
//! let mut client: Connection<&str> =
//!     Connection::client(Config::client(Config::offer("app", None)), now);
//! let mut server: Connection = Connection::server(Config::server(Config::offer("svc", None)), now);
//! // Move whatever one side queued to the other, as a socket would.
//! fn pass<A, B>(from: &mut Connection<A>, to: &mut Connection<B>, now: Instant) {
//!     let mut t = Transmit::new();
//!     from.poll_transmit(now, &mut t);
//!     let mut wire = BytesMut::new();
//!     t.drain_into(&mut wire);
//!     to.handle_input(now, &mut wire);
//! }
//! pass(&mut client, &mut server, now);
//! let Some(Event::Hello(hello)) = server.poll_event() else { panic!() };
//! server.accept(now, &hello.client_id, "", false)?;
//! pass(&mut server, &mut client, now);
//! assert!(matches!(client.poll_event(), Some(Event::Connected { .. })));
//!
//! let req = Frame::request(0, Subject::literal("calc.add")?, "[1,2]");
//! client.call(now, req, CallOptions::default(), "my waiter")?;
//! pass(&mut client, &mut server, now);
//! let Some(Event::Request { id, .. }) = server.poll_event() else { panic!() };
//! server.respond(id, Frame::response(0, Status::OK, "3"))?;
//! pass(&mut server, &mut client, now);
//! let Some(Event::Answer { ctx, answer, .. }) = client.poll_event() else { panic!() };
//! assert_eq!((ctx, &answer.unwrap().payload[..]), ("my waiter", &b"3"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod calls;
mod close;
mod config;
mod error;
mod events;
mod handshake;
mod inbound;
mod incoming;
mod keepalive;
mod ops;
mod outbound;
mod publish;
mod session;
mod streams;
mod subscriptions;
mod timers;

pub use calls::CallOptions;
pub use config::{Config, Link, Role, INITIAL_STREAM_CREDIT};
pub use error::{Blocked, CommandError, Failure, Origin};
pub use events::{Answer, Closed, Closer, Event, OpId, RequestEnd, RequestId};
pub use ops::Shape;
pub use outbound::Transmit;
pub use session::{Session, SubscriptionState};

use crate::body::Hello;
use crate::codec::Decoder;
use crate::frame::Frame;
use crate::header::Flags;
use crate::negotiate::{Features, Limits, Negotiated};
use crate::status::Status;
use std::collections::VecDeque;
use std::time::Instant;

/// Whether `s` is a literal subject: a valid subject holds `*` or `>` only as wildcard tokens.
fn is_literal(s: &crate::subject::Subject) -> bool {
    let b: &[u8] = s.as_bytes();
    let mut wild = false;
    for &c in b {
        wild |= (c == b'*') | (c == b'>');
    }
    !b.is_empty() && !wild
}

/// Where the connection is in its life.
enum State {
    /// Client: HELLO queued, waiting for the server's answer.
    Hello,
    /// Server: waiting for the client's HELLO.
    AwaitHello,
    /// Server: the client's HELLO is with the application.
    Deciding {
        id: u64,
        hello: Box<Hello>,
    },
    Open,
    /// This side's CLOSE is queued; the connection is closed once the driver takes it.
    Closing(Closed),
    Closed,
}

/// Counters of what the connection threw away or refused, for the application's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Frames received that could not be decoded (answered with ERROR).
    pub decode_errors: u64,
    /// Frames refused in this role or state (answered with ERROR).
    pub refused_frames: u64,
    /// EVENTs for subscriptions this side no longer has (discarded, spec section 3.4).
    pub events_unknown_sid: u64,
    /// EVENTs beyond the subscription's credit (discarded).
    pub events_over_credit: u64,
    /// At-least-once EVENTs beyond the unacknowledged bound (not surfaced; redelivered).
    pub events_over_unacked: u64,
    /// Answers and stream items for operations that had ended (ignored, spec section 3.12).
    pub late_answers: u64,
}

/// One end of a mitto connection. `C` is what the application attaches to each operation it
/// starts, and gets back in that operation's [`Event::Answer`] (a waker slot, a channel), so
/// that it finds the waiting task without a map of its own.
pub struct Connection<C = ()> {
    role: Role,
    cfg: Config,
    state: State,
    agreed: Option<Negotiated>,
    /// What the peer agreed to receive (the defaults until the handshake completes).
    limits: Limits,
    decoder: Decoder,
    out: outbound::Outbound,
    events: VecDeque<Event<C>>,
    ops: ops::Ops<C>,
    timers: timers::Timers,
    incoming: incoming::Incoming,
    subs: subscriptions::Subscriptions,
    keepalive: keepalive::Keepalive,
    session: session::Identity,
    handshake_deadline: Option<Instant>,
    /// This side has asked HEALTH or STATS (a reply from the peer may answer something).
    asked: bool,
    /// A server that opens calls on this connection (see [`Config::opens_calls`]).
    opens_calls: bool,
    stats: Stats,
}

impl<C> Connection<C> {
    fn new(role: Role, cfg: Config, now: Instant, state: State) -> Self {
        Connection {
            role,
            // Both sides read the peer's first frame, and fit what they send before the
            // handshake completes, with the handshake limits (spec section 8.1).
            decoder: Decoder::new(Limits::HANDSHAKE),
            limits: Limits::HANDSHAKE,
            state,
            agreed: None,
            out: outbound::Outbound::default(),
            events: VecDeque::new(),
            ops: ops::Ops::new(role == Role::Server),
            timers: timers::Timers::default(),
            incoming: incoming::Incoming::default(),
            subs: subscriptions::Subscriptions::default(),
            keepalive: keepalive::Keepalive::default(),
            session: session::Identity::default(),
            handshake_deadline: now.checked_add(cfg.handshake_timeout),
            asked: false,
            opens_calls: cfg.opens_calls,
            stats: Stats::default(),
            cfg,
        }
    }

    /// The end that connected: queues the HELLO of `cfg.hello` at once.
    pub fn client(cfg: Config, now: Instant) -> Self {
        let mut c = Self::new(Role::Client, cfg, now, State::Hello);
        c.send_hello();
        c
    }

    /// The end that accepted the transport: waits for the client's HELLO, decoding it with the
    /// handshake limits.
    pub fn server(cfg: Config, now: Instant) -> Self {
        Self::new(Role::Server, cfg, now, State::AwaitHello)
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// What both sides agreed, once the handshake completed.
    pub fn agreed(&self) -> Option<&Negotiated> {
        self.agreed.as_ref()
    }

    /// Whether the handshake completed and the connection is not closing.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// Whether the connection ended: nothing more is sent or read, and the driver may close
    /// the transport.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Counters of what was discarded or refused.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Operations of this side awaiting answers.
    pub fn pending(&self) -> usize {
        self.ops.len()
    }

    /// Calls of the peer in flight.
    pub fn incoming_calls(&self) -> usize {
        self.incoming.len()
    }

    /// Bytes queued for the driver.
    pub fn queued_bytes(&self) -> usize {
        self.out.bytes()
    }

    /// Whether the driver should read (and pass on) more input now. It should not while the
    /// application decides on a HELLO, while events or owed answers wait over their bounds,
    /// or once the connection is closing; [`Connection::handle_input`] leaves input it does not
    /// read in the buffer.
    pub fn can_read(&self) -> bool {
        // A client keeps reading while its answers wait (spec section 9.4).
        matches!(self.state, State::Hello | State::AwaitHello | State::Open)
            && (self.role == Role::Client || self.out.owed() <= self.cfg.max_owed)
            && self.events.len() < self.cfg.max_events
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event<C>> {
        self.events.pop_front()
    }

    /// When [`Connection::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let handshake = match self.state {
            State::Hello | State::AwaitHello | State::Deciding { .. } => self.handshake_deadline,
            _ => None,
        };
        let open = matches!(self.state, State::Open);
        [
            handshake,
            open.then(|| self.keepalive.next()).flatten(),
            open.then(|| self.timers.next()).flatten(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Acts on every deadline due at `now`: the handshake's, keepalive, this side's operations
    /// (failed with TIMEOUT, a call's CANCEL sent) and the peer's calls (answered TIMEOUT).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Hello | State::AwaitHello | State::Deciding { .. } => {
                if self.handshake_deadline.is_some_and(|d| now >= d) {
                    self.handshake_timed_out();
                }
            }
            State::Open => {
                self.keepalive_due(now);
                self.expire(now);
            }
            State::Closing(_) | State::Closed => {}
        }
    }

    /// Encodes everything queued into `t`; the number of bytes added. Call it again only once
    /// `t` is written (or nearly): what stays queued here is what new operations are refused
    /// for ([`Config::max_outbound`]).
    ///
    /// Frames leave in the order they were queued, with one exception, the overtaking rule: a
    /// frame with the URGENT flag, and the CANCEL of a call whose REQUEST was already taken,
    /// go ahead of the frames queued before them that the driver has not taken yet (in their
    /// own order). Every frame of a call carries the URGENT flag of its REQUEST, so none
    /// overtakes another of the same call; a call cancelled before its REQUEST was taken is
    /// withdrawn, and nothing is sent for it. CLOSE is always the last frame.
    pub fn poll_transmit(&mut self, now: Instant, t: &mut Transmit) -> usize {
        let before = t.len();
        if !self.out.is_empty() {
            let room = self.out.take_bytes(now, t);
            self.taken(room);
        }
        t.len() - before
    }

    /// Moves everything queued into `out` as frames, for an in-process link; the number of
    /// frames added.
    pub fn poll_transmit_frames(&mut self, now: Instant, out: &mut Vec<Frame>) -> usize {
        let before = out.len();
        if !self.out.is_empty() {
            let room = self.out.take_frames(now, out);
            self.taken(room);
        }
        out.len() - before
    }

    /// The driver took the outbound queue.
    fn taken(&mut self, room: bool) {
        if room && self.is_open() {
            self.events.push_back(Event::Writable);
        }
        if matches!(self.state, State::Closing(_)) && self.out.is_closed() {
            if let State::Closing(c) = std::mem::replace(&mut self.state, State::Closed) {
                self.events.push_back(Event::Closed(c));
            }
        }
    }

    /// Refuses a command unless the connection is open.
    fn check_open(&self) -> Result<(), CommandError> {
        match self.state {
            State::Open => Ok(()),
            State::Hello | State::AwaitHello | State::Deciding { .. } => {
                Err(CommandError::NotReady)
            }
            State::Closing(_) | State::Closed => Err(CommandError::Closed),
        }
    }

    /// Refuses a command that needs a feature the peer did not agree to.
    fn check_feature(&self, f: Features) -> Result<(), CommandError> {
        match &self.agreed {
            Some(a) if a.features.contains(f) => Ok(()),
            _ => Err(CommandError::NotNegotiated(f)),
        }
    }

    /// Whether the peer agreed to `f`.
    fn has(&self, f: Features) -> bool {
        self.agreed.as_ref().is_some_and(|a| a.features.contains(f))
    }

    /// Refuses a new operation of `len` bytes while the outbound buffer is full.
    fn check_room(&mut self, len: usize) -> Result<(), CommandError> {
        if self.out.has_room(len, self.cfg.max_outbound) {
            Ok(())
        } else {
            Err(CommandError::WouldBlock(Blocked::Buffer))
        }
    }

    /// Refuses a frame over what the peer agreed to receive (`extra` header bytes the
    /// connection adds: a `deadline`).
    fn check_limits(&self, f: &Frame, extra: usize) -> Result<(), CommandError> {
        let l = &self.limits;
        let too = |what, len: usize, max: u32| CommandError::TooLarge {
            what,
            len: len as u64,
            max: max.into(),
        };
        if f.payload.len() > l.max_payload as usize {
            return Err(too("payload", f.payload.len(), l.max_payload));
        }
        if f.flags.contains(Flags::COMPRESSED) {
            crate::compress::check_prefix(&f.payload, l.max_payload).map_err(|_| {
                CommandError::Misuse(
                    "a compressed payload needs its length prefix, within max_payload",
                )
            })?;
        }
        let headers = f.headers.as_bytes().len() + extra;
        if headers > l.max_headers as usize {
            return Err(too("headers block", headers, l.max_headers));
        }
        if f.subject.len() > usize::from(l.max_subject) {
            return Err(too("subject", f.subject.len(), l.max_subject.into()));
        }
        Ok(())
    }

    /// Checks a frame the application built before it is queued: its kind is not reserved,
    /// it carries no flag outside `allowed` (the peer would refuse it), and a value attached
    /// in this process is encoded into its payload when the link carries bytes.
    fn prepare(&self, f: &mut Frame, allowed: Flags) -> Result<(), CommandError> {
        if !f.kind.is_valid() {
            return Err(CommandError::Misuse("message kinds 6 to 127 are reserved"));
        }
        if f.flags.bits() & !allowed.bits() != 0 {
            return Err(CommandError::Misuse(
                "a flag this frame type does not carry",
            ));
        }
        if f.value.is_some() && self.cfg.link == Link::Bytes {
            f.materialize()
                .map_err(|_| CommandError::Misuse("the attached value cannot be encoded"))?;
            f.value = None;
        }
        Ok(())
    }

    /// Queues an answer this side owes on its own (PONG, ERROR, a refusal), fitted to the
    /// peer's limits (spec section 14.5).
    fn send_owed(&mut self, f: Frame) {
        let f = f.fit_answer(&self.limits).unwrap_or(f);
        self.out.push(f, None, true);
    }

    /// Queues an answer the application gives (RESPONSE, ACK, ...), fitted to the peer's
    /// limits.
    fn send_answer(&mut self, f: Frame) {
        let f = f.fit_answer(&self.limits).unwrap_or(f);
        self.out.push(f, None, false);
    }

    /// Answers a frame with ERROR `status` (owed).
    fn refuse_frame(&mut self, f: &Frame, status: Status, reason: &str) {
        self.stats.refused_frames += 1;
        self.send_owed(Frame::error(f.id, status, reason));
    }
}
