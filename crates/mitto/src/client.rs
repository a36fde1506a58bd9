//! The RPC client: one connection multiplexing many calls by id, with deadlines, cancel on drop,
//! streams with credit-based flow control, automatic reconnect, and retries of idempotent calls.

use crate::calls::Calls;
use crate::codec::{decode_proto, encode_proto, Codec, PROTOBUF};
use crate::conn::{Ctx, Driver, DriverConfig, Lane, Reactor};
use crate::deadlines::Deadlines;
use crate::error::{Error, Result};
use crate::handshake;
use crate::pubsub::{Message, SubRecord};
use crate::queue::CmdTx;
use crate::transport::{self, Endpoint, TlsClientConfig};
use crate::INITIAL_STREAM_CREDIT;
use bytes::Bytes;
use futures_core::Stream;
use futures_util::future::BoxFuture;
use mitto_proto::negotiate::{Features, Negotiated};
use mitto_proto::{
    Flags, Frame, FrameRef, FrameType, Headers, HealthReport, Hello, Limits, MsgKind, StatsReport,
    Status, Subject, Version, WellKnown,
};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;

/// Options of a [`Client`], a by-value builder.
///
/// ```
/// use mitto::ClientOptions;
/// use std::time::Duration;
/// let opts = ClientOptions::new()
///     .name("orders-svc")
///     .timeout(Duration::from_secs(2))
///     .keepalive(Some(Duration::from_secs(10)));
/// ```
#[derive(Clone)]
pub struct ClientOptions {
    pub(crate) name: String,
    pub(crate) client_id: String,
    pub(crate) user: String,
    pub(crate) auth: Bytes,
    pub(crate) tls: Option<TlsClientConfig>,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) reconnect: bool,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) max_retries: u32,
    pub(crate) queue_capacity: usize,
    pub(crate) max_payload: u32,
    pub(crate) codec: Codec,
    pub(crate) middleware: Vec<Arc<dyn ClientMiddleware>>,
    pub(crate) busy_poll: Option<Arc<crate::BusyPoll>>,
    pub(crate) spin: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            name: String::new(),
            client_id: String::new(),
            user: String::new(),
            auth: Bytes::new(),
            tls: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            keepalive: Some(Duration::from_secs(30)),
            reconnect: true,
            backoff: (Duration::from_millis(50), Duration::from_secs(5)),
            max_retries: 3,
            queue_capacity: 1024,
            max_payload: Limits::DEFAULT_MAX_PAYLOAD,
            codec: Codec::Json,
            middleware: Vec::new(),
            busy_poll: None,
            spin: crate::conn::DEFAULT_SPIN,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("keepalive", &self.keepalive)
            .field("reconnect", &self.reconnect)
            .finish_non_exhaustive()
    }
}

impl ClientOptions {
    /// Defaults: 30 s call deadline, 10 s connect timeout, 30 s keepalive, reconnect on with
    /// 50 ms to 5 s backoff, 3 retries of idempotent calls, JSON for typed calls.
    pub fn new() -> Self {
        Self::default()
    }
    /// The name sent in HELLO (shows up in the server's logs and stats).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// A stable client id (for session resume).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }
    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<Bytes>) -> Self {
        self.auth = token.into();
        self
    }
    /// Authenticates with a user name and a password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<Bytes>) -> Self {
        self.user = user.into();
        self.auth = password.into();
        self
    }
    /// TLS settings for `tls://` URLs.
    pub fn tls(mut self, tls: TlsClientConfig) -> Self {
        self.tls = Some(tls);
        self
    }
    /// The deadline of calls that set none.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// How long connecting (TCP, TLS, HELLO) may take.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }
    /// Keepalive PING interval (`None` turns it off); a peer silent for two intervals is dead.
    pub fn keepalive(mut self, k: Option<Duration>) -> Self {
        self.keepalive = k;
        self
    }
    /// Latency mode: the connection's reads keep `poller` polling (see [`crate::BusyPoll`];
    /// spawn its `run()` on the runtime the client runs on, one for all its clients).
    pub fn busy_poll(mut self, poller: Arc<crate::BusyPoll>) -> Self {
        self.busy_poll = Some(poller);
        self
    }
    /// Spin-then-park window of socket connections ([`crate::DEFAULT_SPIN`], 100 µs, by
    /// default; zero turns it off): while a connection's reads come less than this apart, its
    /// driver polls the runtime's sockets instead of sleeping between them, for at most this
    /// long after the last read. Dense traffic (many calls in flight) then costs no thread
    /// wake-ups; sparse traffic and an idle connection cost no CPU.
    pub fn spin(mut self, window: Duration) -> Self {
        self.spin = window;
        self
    }
    /// Whether to reconnect after the connection is lost.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }
    /// Reconnect backoff: from `min`, doubling with jitter, up to `max`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max.max(min));
        self
    }
    /// How many times an idempotent call is retried after its connection was lost.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
    /// Bound of the queue of frames waiting for the connection (backpressure beyond it).
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }
    /// Largest payload this client accepts (negotiated down with the server's).
    pub fn max_payload(mut self, n: u32) -> Self {
        self.max_payload = n;
        self
    }
    /// Codec of typed calls.
    pub fn codec(mut self, c: Codec) -> Self {
        self.codec = c;
        self
    }
    /// Adds a middleware around every unary call (first added runs first).
    pub fn middleware(mut self, m: impl ClientMiddleware) -> Self {
        self.middleware.push(Arc::new(m));
        self
    }
}

/// Per-call options.
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Deadline of this call (else the client's default).
    pub timeout: Option<Duration>,
    /// Extra headers.
    pub headers: Option<Headers>,
    /// Whether the call may run twice: then it is retried after a lost connection.
    pub idempotent: bool,
    /// Sends the call URGENT (overtakes queued normal frames).
    pub urgent: bool,
    /// Message kind.
    pub kind: MsgKind,
}

impl CallOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the deadline.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Sets the headers.
    pub fn headers(mut self, h: Headers) -> Self {
        self.headers = Some(h);
        self
    }
    /// Marks the call idempotent.
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }
    /// Marks the call URGENT.
    pub fn urgent(mut self) -> Self {
        self.urgent = true;
        self
    }
}

/// A successful answer.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Response headers.
    pub headers: Headers,
    /// Response payload.
    pub payload: Bytes,
}

/// A unary call on its way through client middleware.
#[derive(Clone, Debug)]
pub struct OutgoingCall {
    /// The method (subject).
    pub method: String,
    /// Per-call options (headers included).
    pub options: CallOptions,
    /// The request payload.
    pub payload: Bytes,
}

/// Client middleware: wraps every unary call (auth headers, metrics, logging, ...).
pub trait ClientMiddleware: Send + Sync + 'static {
    /// Handles the call, usually by passing it on with `next.run(call)`.
    fn call<'a>(&'a self, call: OutgoingCall, next: ClientNext<'a>)
        -> BoxFuture<'a, Result<Reply>>;
}

/// The rest of the client middleware chain.
pub struct ClientNext<'a> {
    client: &'a Client,
    rest: &'a [Arc<dyn ClientMiddleware>],
}

impl<'a> ClientNext<'a> {
    /// Passes the call on.
    pub fn run(self, call: OutgoingCall) -> BoxFuture<'a, Result<Reply>> {
        match self.rest.split_first() {
            Some((m, rest)) => m.call(
                call,
                ClientNext {
                    client: self.client,
                    rest,
                },
            ),
            None => Box::pin(self.client.unary(call)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// connection state

pub(crate) enum Cmd {
    /// A call (boxed: unary calls on a socket go through the call table, so this is the rarer
    /// command, and a small `Cmd` keeps a publish's trip through the command queue cheap).
    Call(Box<CallCmd>),
    /// Registers the local end of subscription `sid` (its SUBSCRIBE goes as a `Call`).
    Subscribe {
        sid: u32,
        tx: crate::inbox::InboxTx,
    },
    /// Forgets subscription `sid` locally.
    DropSub(u32),
    Send(Frame),
    /// Frames written into the call table before a command entered the queue (see
    /// [`crate::queue`]).
    Encoded(Bytes),
    Cancel(u64),
    Close,
}

/// A call for the connection's driver.
pub(crate) struct CallCmd {
    pub(crate) id: u64,
    pub(crate) frame: Frame,
    pub(crate) slot: Slot,
    /// When the reactor fails the call with TIMEOUT (and sends CANCEL).
    pub(crate) deadline: Option<Due>,
}

impl Cmd {
    pub(crate) fn call(c: CallCmd) -> Cmd {
        Cmd::Call(Box::new(c))
    }
}

/// When a call times out.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Due {
    /// At this instant.
    At(Instant),
    /// This long after the connection's driver takes the call (at most one turn of the driver
    /// after it was made): the caller then reads no clock per call.
    After(Duration),
}

pub(crate) enum Slot {
    Unary(oneshot::Sender<Result<Reply>>),
    Stream {
        items: Option<mpsc::Sender<Result<Bytes>>>,
        done: Option<oneshot::Sender<Result<Reply>>>,
        credit: Option<Arc<Semaphore>>,
    },
}

impl Slot {
    fn fail(self, e: Error) {
        match self {
            Slot::Unary(tx) => {
                let _ = tx.send(Err(e));
            }
            Slot::Stream {
                items,
                done,
                credit,
            } => {
                if let Some(c) = credit {
                    c.close();
                }
                if let Some(tx) = items {
                    let _ = tx.try_send(Err(e.clone()));
                }
                if let Some(tx) = done {
                    let _ = tx.send(Err(e));
                }
            }
        }
    }
}

#[derive(Clone)]
pub(crate) struct Conn {
    /// Commands, in order with what is written into the call table (see [`crate::queue`]).
    pub(crate) cmds: CmdTx,
    /// Unary calls on an in-process link, handed to the driver in batches (see [`Lane`]).
    pub(crate) lane: Option<Arc<Lane<Cmd>>>,
    pub(crate) ctl: mpsc::UnboundedSender<Cmd>,
    pub(crate) agreed: Arc<Negotiated>,
    /// Direct entry points of a server in this process (in-process links to a broker).
    pub(crate) port: Option<Arc<dyn crate::local::LocalPort>>,
    /// Unary calls written straight for the driver (byte-stream connections).
    pub(crate) calls: Option<Arc<Calls>>,
}

#[derive(Clone)]
pub(crate) enum State {
    Connecting,
    Up(Conn),
    Closed(Error),
}

/// The client's live subscriptions, shared with the connection's reactor.
pub(crate) type SubTable = Arc<std::sync::Mutex<HashMap<u32, SubRecord>>>;

pub(crate) struct Shared {
    endpoint: Endpoint,
    pub(crate) opts: ClientOptions,
    pub(crate) state: watch::Sender<State>,
    closing: AtomicBool,
    /// Live subscriptions, re-made on every new connection.
    pub(crate) subs: SubTable,
    /// The session token the server gave, offered again on reconnect (session resume).
    session: std::sync::Mutex<String>,
    pub(crate) next_sid: std::sync::atomic::AtomicU32,
    /// Subjects whose Rust type this client already declared to an in-process broker.
    pub(crate) bound_types: std::sync::Mutex<
        std::collections::HashMap<std::any::TypeId, std::collections::HashSet<String>>,
    >,
    /// The `deadline` header of a call with the default timeout, made once.
    default_deadline: Headers,
}

struct ClientReactor {
    /// The time of this turn of the driver, read when a call first needs it.
    now: Option<Instant>,
    /// Calls waiting for their answer, with their deadlines.
    pending: FxHashMap<u64, (Slot, Option<Instant>)>,
    /// The earliest deadline of the pending calls; one timer for all.
    deadlines: Deadlines,
    subs: FxHashMap<u32, crate::inbox::InboxTx>,
    table: SubTable,
    /// The connection's unary calls written straight by their callers (see [`Calls`]).
    calls: Option<Arc<Calls>>,
}

/// The error of a call whose payload is over the negotiated limit.
fn payload_too_large(len: usize, max: u32) -> Error {
    Error::new(
        Status::PAYLOAD_TOO_LARGE,
        format!("payload of {len} bytes exceeds the negotiated limit of {max}"),
    )
}

/// A RESPONSE (or HEALTH / STATS answer) as a call's result.
fn reply_of(f: Frame) -> Result<Reply> {
    if f.status.is_ok() {
        Ok(Reply {
            headers: f.headers,
            payload: f.payload,
        })
    } else {
        Err(remote_error(&f))
    }
}

fn remote_error(f: &Frame) -> Error {
    let e = Error::from_remote(f.status, &f.payload);
    match f.headers.get_custom(crate::server::ERROR_DETAILS_HEADER) {
        Some(d) => e.with_details(Bytes::copy_from_slice(d)),
        None => e,
    }
}

/// A headers block holding only a `deadline`, built in one allocation (the common case).
fn deadline_only(left: Duration) -> Headers {
    use bytes::BufMut;
    let mut b = bytes::BytesMut::with_capacity(11);
    b.put_u8(WellKnown::Deadline as u8);
    b.put_u16(8);
    b.put_u64(u64::try_from(left.as_micros()).unwrap_or(u64::MAX));
    Headers::from_wire(b.freeze()).unwrap_or_default()
}

/// The REQUEST frame of call `id`.
fn request_of(
    id: u64,
    subject: Subject,
    headers: Headers,
    payload: Bytes,
    opts: &CallOptions,
) -> Frame {
    let mut f = Frame::request(id, subject, payload)
        .with_headers(headers)
        .with_kind(opts.kind);
    if opts.urgent {
        f.flags.insert(Flags::URGENT);
    }
    f
}

/// The headers block of a call with the client's default timeout: kept for the life of the
/// process (one per distinct timeout, at most [`KEPT_DEADLINES`]), so that the copy every call
/// takes and drops costs no reference count.
fn default_deadline(timeout: Duration) -> Headers {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static KEPT: OnceLock<Mutex<HashMap<Duration, Headers>>> = OnceLock::new();
    let fresh = deadline_only(timeout);
    let Ok(mut kept) = KEPT.get_or_init(Default::default).lock() else {
        return fresh;
    };
    match kept.get(&timeout) {
        Some(h) => h.clone(),
        None if kept.len() < KEPT_DEADLINES => {
            let h = kept_for_the_process(fresh);
            kept.insert(timeout, h.clone());
            h
        }
        None => fresh,
    }
}

/// `h` in bytes kept for the life of the process, so that its copies and drops touch no
/// reference count (for the few blocks every call or message of a kind carries; callers bound
/// how many they make).
pub(crate) fn kept_for_the_process(h: Headers) -> Headers {
    let kept: &'static [u8] = Box::leak(h.as_bytes().to_vec().into_boxed_slice());
    Headers::from_wire(Bytes::from_static(kept)).unwrap_or(h)
}

/// Distinct default timeouts whose headers [`default_deadline`] keeps.
const KEPT_DEADLINES: usize = 64;

impl ClientReactor {
    /// Removes a pending call (and its deadline).
    fn take(&mut self, id: u64) -> Option<Slot> {
        self.pending.remove(&id).map(|(slot, _)| slot)
    }
}

impl Reactor for ClientReactor {
    type Cmd = Cmd;

    fn on_frame(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        match f.frame_type {
            FrameType::Response | FrameType::Health | FrameType::Stats => {
                let f = match &self.calls {
                    Some(calls) if f.frame_type == FrameType::Response => {
                        match calls.answer(f, reply_of) {
                            Ok(()) => return,
                            Err(f) => f,
                        }
                    }
                    _ => f,
                };
                let Some(slot) = self.take(f.id) else {
                    return;
                };
                let result = reply_of(f);
                match slot {
                    Slot::Unary(tx) => {
                        let _ = tx.send(result);
                    }
                    Slot::Stream {
                        items,
                        done,
                        credit,
                    } => {
                        if let Some(c) = credit {
                            c.close();
                        }
                        if let Some(tx) = done {
                            let _ = tx.send(result);
                        } else if let (Some(tx), Err(e)) = (items, result) {
                            let _ = tx.try_send(Err(e));
                        }
                    }
                }
            }
            FrameType::Stream => {
                let mut violation = None;
                // An empty STREAM with END carries no item; the RESPONSE ends the call.
                let end_only = f.flags.contains(Flags::END) && f.payload.is_empty();
                if let (
                    Some(Slot::Stream {
                        items: Some(tx), ..
                    }),
                    false,
                ) = (self.pending.get(&f.id).map(|(s, _)| s), end_only)
                {
                    match tx.try_send(Ok(f.payload.clone())) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            violation = Some(Error::new(
                                Status::PROTOCOL_ERROR,
                                "server sent stream items beyond its credit",
                            ));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            violation = Some(Error::new(Status::CANCELLED, "stream dropped"));
                        }
                    }
                }
                if let Some(e) = violation {
                    if let Some(slot) = self.take(f.id) {
                        cx.send(&Frame::cancel(f.id));
                        slot.fail(e);
                    }
                }
            }
            FrameType::Ack => {
                if let Some(Slot::Unary(tx)) = self.take(f.id) {
                    let _ = tx.send(Ok(Reply {
                        headers: Headers::new(),
                        payload: Bytes::new(),
                    }));
                }
            }
            FrameType::Event => match self.subs.get(&f.aux) {
                Some(tx) => {
                    let sid = f.aux;
                    if let Err(crate::inbox::Refused::Full) = tx.try_send(Message::from_event(f)) {
                        tracing::warn!(
                            sid,
                            "the server sent an EVENT beyond the subscription's credit; dropped"
                        );
                    }
                }
                None => tracing::trace!(sid = f.aux, "EVENT for a subscription that is gone"),
            },
            FrameType::Credit if f.aux == 0 => {
                if let Some(Slot::Stream {
                    credit: Some(c), ..
                }) = self.pending.get(&f.id).map(|(s, _)| s)
                {
                    let n = mitto_proto::body::decode_credit(&f.payload).unwrap_or(0) as usize;
                    c.add_permits(n.min(Semaphore::MAX_PERMITS - c.available_permits()));
                }
            }
            FrameType::Error if f.id == 0 && f.aux != 0 => {
                // The broker ended a subscription (slow consumer, permissions changed): its
                // stream ends after what was already received.
                tracing::warn!(
                    sid = f.aux,
                    status = %f.status,
                    reason = %String::from_utf8_lossy(&f.payload),
                    "subscription ended by the server"
                );
                self.subs.remove(&f.aux);
                if let Ok(mut t) = self.table.lock() {
                    t.remove(&f.aux);
                }
            }
            FrameType::Error => {
                let f = match &self.calls {
                    Some(calls) => match calls.answer(f, |f| Err(remote_error(&f))) {
                        Ok(()) => return,
                        Err(f) => f,
                    },
                    None => f,
                };
                if let Some(slot) = self.take(f.id) {
                    slot.fail(remote_error(&f));
                } else {
                    tracing::warn!(status = %f.status, reason = %String::from_utf8_lossy(&f.payload), "error from server");
                }
            }
            FrameType::Close => {
                let reason = String::from_utf8_lossy(&f.payload);
                let e = Error::connection_lost(format!(
                    "the server closed the connection ({}: {reason})",
                    f.status
                ));
                self.deadlines.clear();
                for (_, (slot, _)) in self.pending.drain() {
                    slot.fail(e.clone());
                }
                if let Some(calls) = &self.calls {
                    calls.close(&e);
                }
                cx.close(Status::OK, "closing after the server's CLOSE");
            }
            other => {
                cx.send(&Frame::error(
                    f.id,
                    Status::UNEXPECTED_FRAME,
                    &format!("a client does not accept {}", other.name()),
                ));
            }
        }
    }

    fn on_command(&mut self, c: Option<Cmd>, cx: &mut Ctx<'_>) {
        match c {
            Some(Cmd::Call(c)) => {
                let CallCmd {
                    id,
                    frame,
                    slot,
                    deadline,
                } = *c;
                if frame.payload.len() > cx.limits().max_payload as usize {
                    slot.fail(payload_too_large(
                        frame.payload.len(),
                        cx.limits().max_payload,
                    ));
                    return;
                }
                cx.send(&frame);
                let deadline = deadline.map(|d| match d {
                    Due::At(t) => t,
                    Due::After(left) => *self.now.get_or_insert_with(Instant::now) + left,
                });
                self.pending.insert(id, (slot, deadline));
                if let Some(d) = deadline {
                    self.deadlines.note(d);
                }
            }
            Some(Cmd::Send(f)) => {
                if f.frame_type != FrameType::Stream || self.pending.contains_key(&f.id) {
                    cx.send(&f);
                }
            }
            Some(Cmd::Encoded(b)) => {
                cx.send_encoded(b);
                // Calls among these frames count their deadlines from now.
                if let Some(d) = self.calls.as_ref().and_then(|c| c.stamp()) {
                    self.deadlines.note(d);
                }
            }
            Some(Cmd::Cancel(id)) => {
                if let Some(slot) = self.take(id) {
                    cx.send(&Frame::cancel(id));
                    slot.fail(Error::new(Status::CANCELLED, "cancelled by the caller"));
                }
            }
            Some(Cmd::Subscribe { sid, tx }) => {
                self.subs.insert(sid, tx);
            }
            Some(Cmd::DropSub(sid)) => {
                self.subs.remove(&sid);
            }
            Some(Cmd::Close) | None => cx.close(Status::OK, "client closed"),
        }
    }

    fn on_turn(&mut self) {
        self.now = None;
    }

    fn on_closed(&mut self, why: &Error) {
        let e = Error::connection_lost(why.message());
        self.deadlines.clear();
        for (_, (slot, _)) in self.pending.drain() {
            slot.fail(e.clone());
        }
        if let Some(calls) = &self.calls {
            calls.close(&e);
        }
    }

    fn poll_outbound(&mut self, cx: &mut Ctx<'_>) -> bool {
        let mut progress = false;
        // The queue is asked under the table's lock: see `crate::queue` on order.
        if let Some(t) = self
            .calls
            .as_ref()
            .and_then(|c| c.take(cx.waker(), || cx.commands_waiting()))
        {
            cx.send_encoded(t.bytes);
            if let Some(d) = t.earliest {
                self.deadlines.note(d);
            }
            progress = true;
        }
        let Some(now) = self.deadlines.due(cx.waker()) else {
            return progress;
        };
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (_, d))| d.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            if let Some(slot) = self.take(*id) {
                cx.send(&Frame::cancel(*id));
                slot.fail(Error::new(Status::TIMEOUT, "deadline exceeded"));
            }
        }
        let mut next = self.pending.values().filter_map(|(_, d)| *d).min();
        if let Some(calls) = &self.calls {
            let (expired, later) = calls.expire(now);
            for id in expired {
                cx.send(&Frame::cancel(id));
            }
            next = match (next, later) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        self.deadlines.swept(next);
        true
    }
}

pub(crate) fn hello(opts: &ClientOptions) -> Hello {
    Hello {
        version: Version::CURRENT,
        flags: 0,
        features: Features::supported(),
        max_payload: opts.max_payload,
        max_headers: 0,
        keepalive_ms: opts
            .keepalive
            .map(|k| k.as_millis().min(u32::MAX.into()) as u32)
            .unwrap_or(0),
        name: opts.name.clone(),
        client_id: opts.client_id.clone(),
        session: String::new(),
        user: opts.user.clone(),
        auth: opts.auth.clone(),
    }
}

/// Connects, shakes hands, and returns the driver to run and the handle to it.
async fn open(
    endpoint: &Endpoint,
    opts: &ClientOptions,
    table: &SubTable,
    session: &std::sync::Mutex<String>,
) -> Result<(Driver<ClientReactor>, Conn, bool)> {
    let setup = async {
        let mut io = transport::connect(endpoint, opts.tls.as_ref()).await?;
        let mut offer = hello(opts);
        if let Ok(s) = session.lock() {
            offer.session = s.clone();
        }
        let (agreed, server, leftover) =
            handshake::client(&mut io, &offer, opts.connect_timeout).await?;
        let resumed = !offer.session.is_empty() && server.flags & Hello::RESUMED != 0;
        if let Ok(mut s) = session.lock() {
            *s = server.session.clone();
        }
        Ok::<_, Error>((io, agreed, leftover, resumed))
    };
    let (io, agreed, leftover, resumed) = tokio::time::timeout(opts.connect_timeout, setup)
        .await
        .map_err(|_| {
            Error::new(
                Status::TIMEOUT,
                format!("connecting to {endpoint} timed out"),
            )
            .retryable()
        })??;
    // At least two: a command and the publishes buffered before it enter together.
    let (cmds_tx, cmds_rx) = mpsc::channel(opts.queue_capacity.max(2));
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let port = match &io {
        transport::Io::Link(l) => l.port(),
        _ => None,
    };
    let bytes = !matches!(io, transport::Io::Link(_));
    let calls = bytes.then(|| Arc::new(Calls::new(opts.queue_capacity)));
    let keepalive =
        (agreed.keepalive_ms > 0).then(|| Duration::from_millis(agreed.keepalive_ms.into()));
    let cfg = DriverConfig {
        limits: agreed.limits,
        keepalive,
        busy_poll: opts.busy_poll.clone(),
        spin: opts.spin,
    };
    let driver = Driver::new(
        io,
        leftover,
        cfg,
        ClientReactor {
            now: None,
            pending: FxHashMap::default(),
            deadlines: Deadlines::new(),
            subs: FxHashMap::default(),
            table: table.clone(),
            calls: calls.clone(),
        },
        cmds_rx,
        ctl_rx,
    );
    // A socket's unary calls go through the call table; only an in-process link has a lane
    // (so a socket's driver locks no lane on each turn).
    let lane = calls
        .is_none()
        .then(|| Arc::new(Lane::new(opts.queue_capacity)));
    let driver = match &lane {
        Some(l) => driver.with_lane(l.clone()),
        None => driver,
    };
    Ok((
        driver,
        Conn {
            cmds: CmdTx::new(cmds_tx, calls.clone()),
            lane,
            ctl: ctl_tx,
            agreed: Arc::new(agreed),
            port,
            calls,
        },
        resumed,
    ))
}

async fn supervise(shared: Arc<Shared>, mut driver: Driver<ClientReactor>) {
    loop {
        let outcome = driver.run().await;
        let lost = match outcome {
            Ok(()) => Error::connection_lost("connection closed"),
            Err(e) => e,
        };
        if shared.closing.load(Ordering::Acquire) || !shared.opts.reconnect {
            shared.state.send_replace(State::Closed(lost));
            return;
        }
        tracing::info!(endpoint = %shared.endpoint, error = %lost, "connection lost, reconnecting");
        shared.state.send_replace(State::Connecting);
        let (min, max) = shared.opts.backoff;
        let mut wait = min;
        driver = loop {
            if shared.closing.load(Ordering::Acquire) {
                shared.state.send_replace(State::Closed(Error::new(
                    Status::CANCELLED,
                    "client closed",
                )));
                return;
            }
            match open(
                &shared.endpoint,
                &shared.opts,
                &shared.subs,
                &shared.session,
            )
            .await
            {
                Ok((d, conn, resumed)) => {
                    crate::pubsub::resubscribe(&shared, &conn, resumed);
                    shared.state.send_replace(State::Up(conn));
                    break d;
                }
                Err(e) => {
                    tracing::debug!(endpoint = %shared.endpoint, error = %e, ?wait, "reconnect failed");
                    let jitter = wait.mul_f64(fastrand::f64() * 0.5);
                    tokio::time::sleep(wait + jitter).await;
                    wait = (wait * 2).min(max);
                }
            }
        };
    }
}

// ---------------------------------------------------------------------------------------------
// the client handle

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    /// Unique in the process (never reused, unlike an address).
    pub(crate) id: u64,
    next_id: AtomicU64,
    /// The first connection, used while it is up without reading the connection state (a
    /// read lock per call or publish); after a reconnect the state is read.
    first: Conn,
}

impl Inner {
    /// The first connection, while it is up (its driver has not ended).
    #[inline]
    pub(crate) fn first_conn(&self) -> Option<&Conn> {
        (!self.first.cmds.is_closed()).then_some(&self.first)
    }

    /// The first connection's in-process port, while that connection is up.
    #[inline]
    pub(crate) fn first_port(&self) -> Option<(&Arc<dyn crate::local::LocalPort>, u32)> {
        let c = self.first_conn()?;
        Some((c.port.as_ref()?, c.agreed.limits.max_payload))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        if let State::Up(c) = &*self.shared.state.borrow() {
            let _ = c.ctl.send(Cmd::Close);
        }
    }
}

/// An RPC client. Cheap to clone: clones share one connection.
///
/// ```no_run
/// # async fn f() -> mitto::Result<()> {
/// let client = mitto::Client::connect("tcp://127.0.0.1:4747", mitto::ClientOptions::new()).await?;
/// let sum: i64 = client.call_typed("calc.add", &(2, 3)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.inner.shared.endpoint)
            .finish_non_exhaustive()
    }
}

/// The future of [`Client::call`]: the answer's payload.
#[must_use = "a call is sent when its future is first polled"]
pub struct Call<'a>(CallWith<'a>);

impl Future for Call<'_> {
    type Output = Result<Bytes>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Bytes>> {
        Pin::new(&mut self.0).poll(cx).map_ok(|r| r.payload)
    }
}

impl fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The future of [`Client::call_with`]: the answer's headers and payload. Small (it holds
/// the call's id and the receiving end of its answer), so that many calls in flight cost
/// little to keep and to move.
#[must_use = "a call is sent when its future is first polled"]
pub struct CallWith<'a> {
    client: &'a Client,
    method: &'a str,
    state: CallState<'a>,
}

enum CallState<'a> {
    /// Not polled yet.
    Start(Bytes, CallOptions),
    /// Written for the connection's driver, the answer left in its table; CANCEL goes out if
    /// the future is dropped in this state.
    Table {
        id: u64,
        calls: TableRef<'a>,
        timeout: Duration,
    },
    /// On the connection; CANCEL goes out if the future is dropped in this state.
    Sent {
        id: u64,
        rx: oneshot::Receiver<Result<Reply>>,
        timeout: Duration,
    },
    /// The general path (middleware, reconnecting, a full queue, retries).
    Slow(BoxFuture<'a, Result<Reply>>),
    Done,
}

impl fmt::Debug for CallWith<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            CallState::Start(..) => "not sent",
            CallState::Sent { .. } | CallState::Table { .. } => "sent",
            CallState::Slow(_) => "in progress",
            CallState::Done => "done",
        };
        f.debug_struct("Call")
            .field("method", &self.method)
            .field("state", &state)
            .finish()
    }
}

impl Future for CallWith<'_> {
    type Output = Result<Reply>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Reply>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                CallState::Start(..) => {
                    let CallState::Start(payload, options) =
                        std::mem::replace(&mut this.state, CallState::Done)
                    else {
                        continue;
                    };
                    this.state = this.client.start_call(this.method, payload, options, cx);
                    if let CallState::Table { .. } = this.state {
                        // Sent, with this task's waker in the table: nothing to look at yet.
                        return Poll::Pending;
                    }
                }
                CallState::Table { id, calls, timeout } => {
                    let answer = ready!(calls.poll(*id, cx));
                    let timeout = *timeout;
                    this.state = CallState::Done;
                    return Poll::Ready(named_timeout(answer, this.method, timeout));
                }
                CallState::Sent { rx, timeout, .. } => {
                    let answer = ready!(Pin::new(rx).poll(cx)).unwrap_or_else(|_| {
                        Err(Error::connection_lost("connection closed during the call"))
                    });
                    let timeout = *timeout;
                    this.state = CallState::Done;
                    return Poll::Ready(named_timeout(answer, this.method, timeout));
                }
                CallState::Slow(f) => {
                    let r = ready!(f.as_mut().poll(cx));
                    this.state = CallState::Done;
                    return Poll::Ready(r);
                }
                CallState::Done => {
                    return Poll::Ready(Err(Error::new(
                        Status::INTERNAL,
                        "a call's future was polled after it finished",
                    )))
                }
            }
        }
    }
}

impl Drop for CallWith<'_> {
    fn drop(&mut self) {
        if let CallState::Table { id, calls, .. } = &self.state {
            calls.cancel(*id);
            return;
        }
        if let CallState::Sent { id, .. } = self.state {
            // The call went out on the connection that is up now, or on one that is gone
            // (whose calls failed with it; the new one ignores an unknown id).
            if let State::Up(c) = &*self.client.inner.shared.state.borrow() {
                let _ = c.ctl.send(Cmd::Cancel(id));
            }
        }
    }
}

/// A call's answer, its connection's own TIMEOUT (not a remote one) named after the method and
/// the deadline it missed.
fn named_timeout(answer: Result<Reply>, method: &str, timeout: Duration) -> Result<Reply> {
    match answer {
        Err(e) if e.status() == Status::TIMEOUT && !e.is_remote() => Err(Error::new(
            Status::TIMEOUT,
            format!("{method} exceeded its deadline of {timeout:?}"),
        )),
        r => r,
    }
}

/// The table a call was started in: the first connection's (borrowed from the client, no
/// reference count per call) or a later one's.
enum TableRef<'a> {
    First(&'a Calls),
    Later(Arc<Calls>),
}

impl std::ops::Deref for TableRef<'_> {
    type Target = Calls;
    fn deref(&self) -> &Calls {
        match self {
            TableRef::First(c) => c,
            TableRef::Later(c) => c,
        }
    }
}

/// Fails a call's pending state (sends CANCEL) if the call's future is dropped before its end.
struct CancelGuard {
    id: u64,
    ctl: mpsc::UnboundedSender<Cmd>,
    armed: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.ctl.send(Cmd::Cancel(self.id));
        }
    }
}

impl Client {
    /// Connects to `url` (`mem://`, `tcp://`, `unix://`, `tls://`) and shakes hands. The first
    /// connection is made here, so a wrong address fails at once; later losses reconnect in the
    /// background.
    pub async fn connect(url: &str, opts: ClientOptions) -> Result<Client> {
        let endpoint: Endpoint = url.parse()?;
        let table = SubTable::default();
        let session = std::sync::Mutex::new(String::new());
        let (driver, conn, _) = open(&endpoint, &opts, &table, &session).await?;
        let first = conn.clone();
        let (state, _) = watch::channel(State::Up(conn));
        let opts_timeout = opts.timeout;
        let shared = Arc::new(Shared {
            endpoint,
            opts,
            state,
            closing: AtomicBool::new(false),
            subs: table,
            session,
            next_sid: std::sync::atomic::AtomicU32::new(1),
            bound_types: Default::default(),
            default_deadline: default_deadline(opts_timeout),
        });
        tokio::spawn(supervise(shared.clone(), driver));
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                id: {
                    static CLIENTS: AtomicU64 = AtomicU64::new(1);
                    CLIENTS.fetch_add(1, Ordering::Relaxed)
                },
                next_id: AtomicU64::new(1),
                first,
            }),
        })
    }

    pub(crate) fn opts(&self) -> &ClientOptions {
        &self.inner.shared.opts
    }

    /// What HELLO agreed on for the current connection, if connected.
    pub fn negotiated(&self) -> Option<Negotiated> {
        match &*self.inner.shared.state.borrow() {
            State::Up(c) => Some((*c.agreed).clone()),
            _ => None,
        }
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.inner.shared.state.borrow(), State::Up(_))
    }

    /// Waits for a connection until `deadline`.
    /// The connection, at once when it is up; otherwise waits for it (boxed, so that callers'
    /// futures stay small on the fast path).
    pub(crate) async fn conn_fast(&self, timeout: Duration) -> Result<Conn> {
        if let State::Up(c) = &*self.inner.shared.state.borrow() {
            if !c.cmds.is_closed() {
                return Ok(c.clone());
            }
        }
        Box::pin(self.conn(Instant::now() + timeout)).await
    }

    pub(crate) async fn conn(&self, deadline: Instant) -> Result<Conn> {
        let mut rx = self.inner.shared.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                State::Up(c) if !c.cmds.is_closed() => return Ok(c.clone()),
                State::Closed(e) => {
                    return Err(Error::new(
                        Status::UNAVAILABLE,
                        format!("client is closed: {}", e.message()),
                    ))
                }
                _ => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::new(Status::UNAVAILABLE, "client is closed")),
                Err(_) => {
                    return Err(
                        Error::new(Status::TIMEOUT, "deadline passed while reconnecting")
                            .retryable(),
                    )
                }
            }
        }
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The REQUEST of call `id`, with `left` as its deadline. The method's subject comes from
    /// the client's last-called cache, and the common headers (only the default deadline) are
    /// made once per client.
    fn request_frame(
        &self,
        id: u64,
        method: &str,
        payload: Bytes,
        opts: &CallOptions,
        left: Duration,
    ) -> Result<Frame> {
        let (subject, headers) = self.request_parts(method, opts, left)?;
        Ok(request_of(id, subject, headers, payload, opts))
    }

    /// The subject and headers of a REQUEST calling `method` with `left` until its deadline.
    fn request_parts(
        &self,
        method: &str,
        opts: &CallOptions,
        left: Duration,
    ) -> Result<(Subject, Headers)> {
        let subject = crate::pubsub::cached_subject(crate::pubsub::SubjectUse::Method, method)?;
        let headers = match &opts.headers {
            Some(h) => h.to_builder().deadline(left).build(),
            None if left == self.opts().timeout => self.inner.shared.default_deadline.clone(),
            None => deadline_only(left),
        };
        Ok((subject, headers))
    }

    /// Calls `method` with raw bytes and returns the response payload.
    ///
    /// Nothing is sent until the future is first polled; dropping it before the answer sends
    /// CANCEL.
    pub fn call<'a>(&'a self, method: &'a str, payload: impl Into<Bytes>) -> Call<'a> {
        Call(self.call_with(method, payload, CallOptions::default()))
    }

    /// Calls `method` with per-call options; returns headers and payload.
    ///
    /// Nothing is sent until the future is first polled; dropping it before the answer sends
    /// CANCEL.
    pub fn call_with<'a>(
        &'a self,
        method: &'a str,
        payload: impl Into<Bytes>,
        options: CallOptions,
    ) -> CallWith<'a> {
        CallWith {
            client: self,
            method,
            state: CallState::Start(payload.into(), options),
        }
    }

    /// The first step of a call: sends it on the connection now when nothing stands in the
    /// way (connected, room in the queue, no middleware, no retries); otherwise the general
    /// path, boxed.
    fn start_call<'a>(
        &'a self,
        method: &'a str,
        payload: Bytes,
        options: CallOptions,
        cx: &Context<'_>,
    ) -> CallState<'a> {
        let mut payload = payload;
        if self.opts().middleware.is_empty() && !options.idempotent {
            let state;
            let up = match self.inner.first_conn() {
                Some(c) => Some(c),
                None => {
                    state = self.inner.shared.state.borrow();
                    match &*state {
                        State::Up(c) => Some(c),
                        _ => None,
                    }
                }
            };
            if let Some(c) = up {
                let timeout = options.timeout.unwrap_or(self.opts().timeout);
                // The id comes from the call table, or from the client's counter below.
                let (subject, headers) = match self.request_parts(method, &options, timeout) {
                    Ok(parts) => parts,
                    Err(e) => return CallState::Slow(Box::pin(std::future::ready(Err(e)))),
                };
                if let Some(calls) = c.calls.as_ref().filter(|_| !options.urgent) {
                    let max = c.agreed.limits.max_payload;
                    if payload.len() > max as usize {
                        let e = payload_too_large(payload.len(), max);
                        return CallState::Slow(Box::pin(std::future::ready(Err(e))));
                    }
                    // Encoded from its parts, without a frame built and dropped.
                    let request = FrameRef {
                        frame_type: FrameType::Request,
                        flags: Flags::empty(),
                        kind: options.kind,
                        id: 0,
                        aux: 0,
                        status: Status::OK,
                        subject: &subject,
                        headers: &headers,
                        payload: &payload,
                    };
                    if let Some(id) = calls.start(request, timeout, cx) {
                        let calls = match self.inner.first.calls.as_deref() {
                            Some(first) if std::ptr::eq(first, &**calls) => TableRef::First(first),
                            _ => TableRef::Later(calls.clone()),
                        };
                        return CallState::Table { id, calls, timeout };
                    }
                }
                let mut frame = request_of(0, subject, headers, payload, &options);
                let id = self.next_id();
                frame.id = id;
                let (tx, rx) = oneshot::channel();
                let cmd = Cmd::call(CallCmd {
                    id,
                    frame,
                    slot: Slot::Unary(tx),
                    deadline: Some(Due::After(timeout)),
                });
                // On an in-process link the lane; on a socket (a call the table refused: full,
                // or URGENT) the command queue, behind what was written into the table before
                // it (see `crate::queue`).
                let sent = match &c.lane {
                    Some(lane) => match lane.push(cmd) {
                        Ok(()) => Ok(()),
                        Err(cmd) => c.cmds.try_send(cmd),
                    },
                    None => c.cmds.try_send(cmd),
                };
                match sent {
                    Ok(()) => return CallState::Sent { id, rx, timeout },
                    Err(
                        mpsc::error::TrySendError::Full(Cmd::Call(c))
                        | mpsc::error::TrySendError::Closed(Cmd::Call(c)),
                    ) => payload = c.frame.payload,
                    Err(_) => {
                        return CallState::Slow(Box::pin(std::future::ready(Err(Error::new(
                            Status::INTERNAL,
                            "the call was lost on its way",
                        )))))
                    }
                }
            }
        }
        CallState::Slow(Box::pin(self.call_slow(method, payload, options)))
    }

    /// A call through the middleware, or one that waits for the connection or for room in
    /// its queue, or one that is retried.
    async fn call_slow(&self, method: &str, payload: Bytes, options: CallOptions) -> Result<Reply> {
        if self.opts().middleware.is_empty() {
            return self.unary_parts(method, payload, &options).await;
        }
        let call = OutgoingCall {
            method: method.to_owned(),
            options,
            payload,
        };
        ClientNext {
            client: self,
            rest: &self.opts().middleware,
        }
        .run(call)
        .await
    }

    async fn unary(&self, call: OutgoingCall) -> Result<Reply> {
        self.unary_parts(&call.method, call.payload, &call.options)
            .await
    }

    async fn unary_parts(
        &self,
        method: &str,
        payload: Bytes,
        options: &CallOptions,
    ) -> Result<Reply> {
        let timeout = options.timeout.unwrap_or(self.opts().timeout);
        let deadline = Instant::now() + timeout;
        let mut attempt = 0;
        loop {
            let conn = if attempt == 0 {
                self.conn_fast(timeout).await?
            } else {
                self.conn(deadline).await?
            };
            let id = self.next_id();
            let left = if attempt == 0 {
                timeout
            } else {
                deadline.saturating_duration_since(Instant::now())
            };
            let frame = self.request_frame(id, method, payload.clone(), options, left)?;
            let (tx, rx) = oneshot::channel();
            let mut guard = CancelGuard {
                id,
                ctl: conn.ctl.clone(),
                armed: true,
            };
            // The connection's reactor enforces the deadline (one timer per connection), so
            // the common path arms no timer per call.
            let cmd = Cmd::call(CallCmd {
                id,
                frame,
                slot: Slot::Unary(tx),
                deadline: Some(Due::At(deadline)),
            });
            let sent = match conn.cmds.try_send(cmd) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(false),
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    let wait = Box::pin(tokio::time::timeout_at(deadline, conn.cmds.send(cmd)));
                    match wait.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err(false),
                        Err(_) => Err(true),
                    }
                }
            };
            let outcome = match sent {
                Err(true) => {
                    guard.armed = false;
                    return Err(Error::new(
                        Status::TIMEOUT,
                        format!("{method} timed out waiting to be sent"),
                    )
                    .retryable());
                }
                Err(false) => Err(Error::connection_lost(
                    "connection closed before the call was sent",
                )),
                Ok(()) => match rx.await {
                    Ok(Err(e)) if e.status() == Status::TIMEOUT && !e.is_remote() => {
                        guard.armed = false;
                        return Err(Error::new(
                            Status::TIMEOUT,
                            format!("{method} exceeded its deadline of {timeout:?}"),
                        ));
                    }
                    Ok(r) => r,
                    Err(_) => Err(Error::connection_lost("connection closed during the call")),
                },
            };
            guard.armed = false;
            match outcome {
                Err(e)
                    if e.status() == Status::UNAVAILABLE
                        && !e.is_remote()
                        && options.idempotent
                        && attempt < self.opts().max_retries =>
                {
                    attempt += 1;
                    tracing::debug!(%method, attempt, "retrying idempotent call after a lost connection");
                }
                other => return other,
            }
        }
    }

    /// Calls `method` with a serde value encoded with the client's codec, and decodes the answer.
    pub async fn call_typed<Req: Serialize + ?Sized, Resp: DeserializeOwned>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp> {
        let codec = self.opts().codec;
        let headers = Headers::builder()
            .insert(WellKnown::ContentType, codec.content_type())?
            .build();
        let reply = self
            .call_with(
                method,
                codec.encode(req)?,
                CallOptions::new().headers(headers),
            )
            .await?;
        let codec = Codec::from_content_type(reply.headers.content_type()).unwrap_or(codec);
        codec.decode(&reply.payload)
    }

    /// Calls `method` with a Protobuf message and decodes the Protobuf answer.
    pub async fn call_proto<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &Req,
    ) -> Result<Resp> {
        let headers = Headers::builder()
            .insert(WellKnown::ContentType, PROTOBUF)?
            .build();
        let reply = self
            .call_with(
                method,
                encode_proto(req),
                CallOptions::new().headers(headers),
            )
            .await?;
        decode_proto(&reply.payload)
    }

    async fn open_stream(
        &self,
        method: &str,
        payload: Bytes,
        client_streams: bool,
        server_streams: bool,
    ) -> Result<(
        RequestSink,
        ResponseStream,
        Option<oneshot::Receiver<Result<Reply>>>,
    )> {
        let deadline = Instant::now() + self.opts().timeout;
        let conn = self.conn(deadline).await?;
        let id = self.next_id();
        let mut frame = self.request_frame(
            id,
            method,
            payload,
            &CallOptions::default(),
            self.opts().timeout,
        )?;
        if client_streams {
            frame.flags.insert(Flags::START);
        }
        let (items_tx, items_rx) = if server_streams {
            let (tx, rx) = mpsc::channel(INITIAL_STREAM_CREDIT as usize);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let (done_tx, done_rx) = if server_streams {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        let credit =
            client_streams.then(|| Arc::new(Semaphore::new(INITIAL_STREAM_CREDIT as usize)));
        let slot = Slot::Stream {
            items: items_tx,
            done: done_tx,
            credit: credit.clone(),
        };
        conn.cmds
            .send(Cmd::call(CallCmd {
                id,
                frame,
                slot,
                deadline: None,
            }))
            .await
            .map_err(|_| Error::connection_lost("connection closed"))?;
        let sink = RequestSink {
            id,
            cmds: conn.cmds.clone(),
            credit,
            finished: !client_streams,
        };
        let stream = ResponseStream {
            id,
            rx: items_rx,
            ctl: conn.ctl.clone(),
            consumed: 0,
            done: !server_streams,
        };
        Ok((sink, stream, done_rx))
    }

    /// Opens a server-streaming call: one request, a stream of responses.
    pub async fn server_stream(
        &self,
        method: &str,
        payload: impl Into<Bytes>,
    ) -> Result<ResponseStream> {
        let (_sink, stream, _) = self
            .open_stream(method, payload.into(), false, true)
            .await?;
        Ok(stream)
    }

    /// Opens a client-streaming call: send items with the sink, then await the one response.
    pub async fn client_stream(&self, method: &str) -> Result<(RequestSink, PendingReply)> {
        let (sink, stream, done) = self.open_stream(method, Bytes::new(), true, false).await?;
        let done = done.ok_or_else(|| Error::new(Status::INTERNAL, "missing reply channel"))?;
        Ok((
            sink,
            PendingReply {
                rx: done,
                _cancel: stream,
            },
        ))
    }

    /// Opens a bidirectional stream.
    pub async fn bidi(&self, method: &str) -> Result<(RequestSink, ResponseStream)> {
        let (sink, stream, _) = self.open_stream(method, Bytes::new(), true, true).await?;
        Ok((sink, stream))
    }

    async fn query(&self, frame_of: fn(u64) -> Frame) -> Result<Bytes> {
        let deadline = Instant::now() + self.opts().timeout;
        let conn = self.conn(deadline).await?;
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        conn.cmds
            .send(Cmd::call(CallCmd {
                id,
                frame: frame_of(id),
                slot: Slot::Unary(tx),
                deadline: None,
            }))
            .await
            .map_err(|_| Error::connection_lost("connection closed"))?;
        let mut guard = CancelGuard {
            id,
            ctl: conn.ctl.clone(),
            armed: true,
        };
        let r = tokio::time::timeout_at(deadline, rx).await;
        guard.armed = false;
        match r {
            Ok(Ok(r)) => r.map(|r| r.payload),
            Ok(Err(_)) => Err(Error::connection_lost("connection closed")),
            Err(_) => Err(Error::new(Status::TIMEOUT, "no answer in time")),
        }
    }

    /// Asks the server for its health (memlink's HealthCheck).
    pub async fn health(&self) -> Result<HealthReport> {
        let b = self.query(Frame::health_query).await?;
        HealthReport::decode(&b).map_err(|k| Error::new(Status::PROTOCOL_ERROR, k.to_string()))
    }

    /// Asks the server for its counters (memlink's Stats).
    pub async fn stats(&self) -> Result<StatsReport> {
        let b = self.query(Frame::stats_query).await?;
        StatsReport::decode(&b).map_err(|k| Error::new(Status::PROTOCOL_ERROR, k.to_string()))
    }

    /// Closes the connection gracefully (CLOSE, then the socket) and stops reconnecting. Calls
    /// still in flight fail with UNAVAILABLE.
    pub async fn close(&self) {
        let shared = &self.inner.shared;
        shared.closing.store(true, Ordering::Release);
        let mut rx = shared.state.subscribe();
        if let State::Up(c) = &*rx.borrow_and_update() {
            let _ = c.ctl.send(Cmd::Close);
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| matches!(s, State::Closed(_))),
        )
        .await;
    }
}

/// The items of a response stream. Grants the server more credit as it is consumed; dropping it
/// before the end cancels the call.
pub struct ResponseStream {
    id: u64,
    rx: Option<mpsc::Receiver<Result<Bytes>>>,
    ctl: mpsc::UnboundedSender<Cmd>,
    consumed: u32,
    done: bool,
}

impl fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseStream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ResponseStream {
    /// The next item; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<Bytes>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for ResponseStream {
    type Item = Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.consumed += 1;
                if self.consumed >= INITIAL_STREAM_CREDIT / 2 {
                    let n = std::mem::take(&mut self.consumed);
                    let _ = self.ctl.send(Cmd::Send(Frame::credit_stream(self.id, n)));
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                self.rx = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.ctl.send(Cmd::Cancel(self.id));
        }
    }
}

/// Sends the items of a request stream, waiting for the server's credit.
pub struct RequestSink {
    id: u64,
    cmds: CmdTx,
    credit: Option<Arc<Semaphore>>,
    finished: bool,
}

impl fmt::Debug for RequestSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSink")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RequestSink {
    /// Sends one item, waiting while the server has granted no credit.
    pub async fn send(&mut self, item: impl Into<Bytes>) -> Result<()> {
        if self.finished {
            return Err(Error::new(
                Status::BAD_REQUEST,
                "the request stream is finished",
            ));
        }
        if let Some(c) = &self.credit {
            c.acquire()
                .await
                .map_err(|_| Error::new(Status::CANCELLED, "the call has ended"))?
                .forget();
        }
        self.cmds
            .send(Cmd::Send(Frame::stream(self.id, item, false)))
            .await
            .map_err(|_| Error::connection_lost("connection closed"))
    }

    /// Ends the request stream (STREAM with END).
    pub async fn finish(mut self) -> Result<()> {
        self.finished = true;
        self.cmds
            .send(Cmd::Send(Frame::stream(self.id, Bytes::new(), true)))
            .await
            .map_err(|_| Error::connection_lost("connection closed"))
    }
}

impl Drop for RequestSink {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self
                .cmds
                .try_send(Cmd::Send(Frame::stream(self.id, Bytes::new(), true)));
        }
    }
}

/// The one response of a client-streaming call.
pub struct PendingReply {
    rx: oneshot::Receiver<Result<Reply>>,
    _cancel: ResponseStream,
}

impl fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingReply")
    }
}

impl std::future::Future for PendingReply {
    type Output = Result<Reply>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Reply>> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(r) => {
                self._cancel.done = true;
                Poll::Ready(r.unwrap_or_else(|_| Err(Error::connection_lost("connection closed"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A pool of clients: round robin, or the same client for the same key.
#[derive(Clone, Debug)]
pub struct Pool {
    clients: Arc<[Client]>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    /// Opens `size` connections to each URL.
    pub async fn connect(urls: &[&str], size: usize, opts: ClientOptions) -> Result<Pool> {
        let mut clients = Vec::new();
        for url in urls {
            for _ in 0..size.max(1) {
                clients.push(Client::connect(url, opts.clone()).await?);
            }
        }
        Pool::from_clients(clients)
    }

    /// A pool over existing clients.
    pub fn from_clients(clients: Vec<Client>) -> Result<Pool> {
        if clients.is_empty() {
            return Err(Error::new(
                Status::BAD_REQUEST,
                "a pool needs at least one client",
            ));
        }
        Ok(Pool {
            clients: clients.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The next client in round-robin order, skipping disconnected ones when it can.
    pub fn pick(&self) -> &Client {
        let n = self.clients.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.clients[(start + i) % n])
            .find(|c| c.is_connected())
            .unwrap_or(&self.clients[start % n])
    }

    /// The client for `key`: the same key always maps to the same client (key affinity).
    pub fn pick_for(&self, key: &[u8]) -> &Client {
        // FNV-1a, as memlink hashes method names.
        let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        &self.clients[(h % self.clients.len() as u64) as usize]
    }

    /// How many clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether the pool is empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}
