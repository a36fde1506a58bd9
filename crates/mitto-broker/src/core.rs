//! The broker's shared state: the subject index, connections' mailboxes, requests in flight and
//! the counters. Connection tasks call into it; nothing here awaits.

use crate::config::BrokerConfig;
use crate::index::Index;
use crate::mailbox::{Mailbox, Pushed};
use crate::tally::{Tallies, TallyHandle};
use bytes::Bytes;
use mitto::proto::{Flags, Frame, FrameType, HeaderKey, Headers, Status, Subject, WellKnown};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// One subscription in the index.
#[derive(Clone, Debug)]
pub(crate) struct SubRef {
    pub(crate) conn: u64,
    pub(crate) sid: u32,
    pub(crate) queue: Option<Arc<str>>,
    pub(crate) mailbox: Arc<Mailbox>,
}

/// A counter on a cache line of its own, so that a publisher and a subscriber on different
/// cores counting different things do not fight over one line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counter(AtomicU64);

impl std::ops::Deref for Counter {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// Broker-wide counters, as STATS and monitoring report them.
        #[derive(Debug, Default)]
        pub(crate) struct Stats {
            $(pub(crate) $name: Counter,)*
            /// What publishers sent in, reported as `msgs_in` and `bytes_in`: counted per
            /// publisher without a shared counter (see [`Tallies`]).
            pub(crate) ins: Arc<Tallies>,
        }
        impl Stats {
            pub(crate) fn snapshot(&self) -> BTreeMap<String, u64> {
                let mut m = BTreeMap::new();
                $(m.insert(stringify!($name).to_owned(), self.$name.load(Ordering::Relaxed));)*
                let (msgs, bytes) = self.ins.sum();
                m.insert("msgs_in".to_owned(), msgs);
                m.insert("bytes_in".to_owned(), bytes);
                m
            }
        }
    };
}

counters!(
    connections_total,
    connections_open,
    connections_refused,
    auth_failures,
    msgs_out,
    bytes_out,
    subscriptions,
    slow_consumer_drops,
    slow_consumer_disconnects,
    publish_rejections,
    acks,
    nacks,
    sessions_detached,
    sessions_resumed,
    sessions_expired,
    redeliveries,
    redeliveries_given_up,
    requests,
    services,
    service_calls,
    no_responders,
    request_timeouts,
    requests_cancelled,
    late_replies,
    permission_denials,
    protocol_errors,
);

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A request routed to subscribers, waiting for its first reply.
struct Pending {
    caller: Arc<Mailbox>,
    caller_conn: u64,
    caller_id: u64,
    /// The deadline's timer task, stopped as soon as the request ends.
    timer: Option<tokio::task::AbortHandle>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }
}

/// A call routed to a registered service instance.
struct Route {
    caller: Arc<Mailbox>,
    caller_conn: u64,
    caller_id: u64,
    inst: Arc<Mailbox>,
    inst_conn: u64,
    /// The safety-net timer task, stopped as soon as the call ends.
    timer: Option<tokio::task::AbortHandle>,
}

impl Drop for Route {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }
}

#[derive(Default)]
struct Routes {
    by_broker: HashMap<u64, Route>,
    by_caller: HashMap<(u64, u64), u64>,
    per_instance: HashMap<u64, usize>,
}

impl Routes {
    fn remove(&mut self, broker_id: u64) -> Option<Route> {
        let r = self.by_broker.remove(&broker_id)?;
        self.by_caller.remove(&(r.caller_conn, r.caller_id));
        if let Some(n) = self.per_instance.get_mut(&r.inst_conn) {
            *n -= 1;
            if *n == 0 {
                self.per_instance.remove(&r.inst_conn);
            }
        }
        Some(r)
    }
}

/// A session whose connection went away, kept for resumption.
pub(crate) struct Detached {
    pub(crate) conn: u64,
    pub(crate) token: String,
    pub(crate) mailbox: Arc<Mailbox>,
    expires: Instant,
}

/// Bit 63 marks ids of calls the broker opens on an instance's connection (PROTOCOL.md 10.1).
pub(crate) const BROKER_CALL_BIT: u64 = 1 << 63;

#[derive(Default)]
struct Requests {
    by_token: HashMap<u64, Pending>,
    by_caller: HashMap<(u64, u64), u64>,
}

/// Per-subject counts for monitoring, bounded in size.
const MAX_TRACKED_SUBJECTS: usize = 65_536;

/// What the broker keeps per published subject: the subscribers it matched (until the
/// subscriptions change) and the counts monitoring reports.
struct SubjectEntry {
    targets: Option<Arc<[SubRef]>>,
    counts: Arc<Tallies>,
}

/// One publisher's memo of where its last subject goes: the subscriptions it matched, valid
/// while the broker's subscription generation is unchanged, and the subject's counters. A
/// publisher repeating its subject (nearly all of them) then routes without the broker-wide
/// subject table, its lock or a hash. A stale memo is replaced at the publisher's next publish;
/// until then it keeps the mailboxes it matched alive (not their messages: a subscription that
/// ends frees its queue).
///
/// A long-lived publisher's memo ([`RouteCache::publisher`]) also counts what it publishes in
/// tallies of its own (see [`Tallies`]) and takes delivery ids in blocks, so that a publish
/// touches no counter other publishers write. A one-off memo (`default`) adds to the shared
/// counters.
#[derive(Default)]
pub(crate) struct RouteCache {
    route: Option<CachedRoute>,
    /// Counts its subjects and the broker's `msgs_in` in tallies of its own.
    long_lived: bool,
    /// This publisher's part of the broker's `msgs_in` / `bytes_in`.
    ins: Option<TallyHandle>,
    /// Delivery ids taken from the broker's counter, not yet used: next and end.
    ids: (u64, u64),
}

impl RouteCache {
    /// The memo of a publisher that publishes many messages (a connection, an in-process
    /// client).
    pub(crate) fn publisher() -> RouteCache {
        RouteCache {
            long_lived: true,
            ..RouteCache::default()
        }
    }
}

struct CachedRoute {
    subject: Subject,
    generation: u64,
    all: Arc<[SubRef]>,
    /// Some subscriptions are in queue groups: one member of each is picked per message.
    grouped: bool,
    counts: Option<SubjectTally>,
}

/// How a memo counts its subject's messages.
enum SubjectTally {
    /// In the subject's set, through a tally of its own.
    Own(TallyHandle),
    /// In the subject's set, with a shared (locked) add.
    Shared(Arc<Tallies>),
}

/// Delivery ids a long-lived publisher takes from the broker's counter at a time.
const ID_BLOCK: u64 = 1024;

/// The subscriptions a message goes to: the cached list itself, or a list picked for it.
pub(crate) enum Targets<'a> {
    Cached(&'a [SubRef]),
    Picked(Arc<[SubRef]>),
}

impl std::ops::Deref for Targets<'_> {
    type Target = [SubRef];
    #[inline]
    fn deref(&self) -> &[SubRef] {
        match self {
            Targets::Cached(t) => t,
            Targets::Picked(t) => t,
        }
    }
}

/// Whether two subjects are the same: one comparison of pointers for the interned subjects
/// publishers reuse, else of bytes.
#[inline]
fn same_subject(a: &Subject, b: &Subject) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a[..] == b[..]
}

pub(crate) struct Core {
    pub(crate) cfg: BrokerConfig,
    index: RwLock<Index<SubRef>>,
    services: RwLock<Index<SubRef>>,
    routes: Mutex<Routes>,
    next_call: AtomicU64,
    sessions: Mutex<HashMap<String, Detached>>,
    subjects: Mutex<FxHashMap<Bytes, SubjectEntry>>,
    pub(crate) stats: Stats,
    pub(crate) started: Instant,
    pub(crate) conns: Mutex<HashMap<u64, crate::conn::ConnInfo>>,
    pub(crate) next_conn: AtomicU64,
    requests: Mutex<Requests>,
    next_token: AtomicU64,
    inbox_prefix: String,
    rr: AtomicUsize,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Mirrors `shutdown` for lock-free reads on the publish path.
    stopping: std::sync::atomic::AtomicBool,
    /// Rust types bound to subject filters by typed in-process publishers and subscribers.
    types: Mutex<Vec<(String, std::any::TypeId, &'static str)>>,
    /// Bumped (under the `subjects` lock) whenever the subscriptions change: a match computed
    /// before a change is not cached after it.
    generation: AtomicU64,
    /// Latency mode (`busy_poll_us`): the poller every connection keeps awake.
    pub(crate) busy_poll: Option<Arc<mitto::BusyPoll>>,
    /// Spin-then-park window of socket connections (`spin_us`).
    pub(crate) spin: Duration,
}

/// Result of a publish.
#[derive(Debug, Default)]
pub(crate) struct Routed {
    pub(crate) delivered: usize,
    pub(crate) rejected: usize,
    /// The subscriptions that refused the message because they block publishers while full,
    /// and the message (for a publisher that waits for room instead of being refused). Boxed:
    /// rare, and it keeps the result of every publish small.
    pub(crate) blocked: Option<Box<Blocked>>,
}

/// Subscriptions that were full and block publishers, and the message they refused.
#[derive(Debug)]
pub(crate) struct Blocked {
    pub(crate) targets: Vec<SubRef>,
    pub(crate) event: Frame,
}

impl Routed {
    fn block(&mut self, t: &SubRef, back: Frame) {
        self.rejected += 1;
        match &mut self.blocked {
            Some(b) => b.targets.push(t.clone()),
            None => {
                self.blocked = Some(Box::new(Blocked {
                    targets: vec![t.clone()],
                    event: back,
                }))
            }
        }
    }
}

/// Most filter/type bindings kept for typed in-process publishing.
const MAX_TYPE_BINDINGS: usize = 4096;

/// Whether two subject filters can match a common subject.
pub(crate) fn filters_intersect(a: &str, b: &str) -> bool {
    fn go(a: &[&str], b: &[&str]) -> bool {
        match (a.first(), b.first()) {
            (None, None) => true,
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => true,
            (Some(x), Some(y)) => (*x == "*" || *y == "*" || x == y) && go(&a[1..], &b[1..]),
            _ => false,
        }
    }
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    go(&a, &b)
}

impl Core {
    pub(crate) fn new(cfg: BrokerConfig) -> Core {
        let (shutdown, _) = watch::channel(false);
        Core {
            index: RwLock::new(Index::default()),
            services: RwLock::new(Index::default()),
            routes: Mutex::new(Routes::default()),
            sessions: Mutex::new(HashMap::new()),
            next_call: AtomicU64::new(1),
            subjects: Mutex::new(FxHashMap::default()),
            stats: Stats::default(),
            started: Instant::now(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            requests: Mutex::new(Requests::default()),
            next_token: AtomicU64::new(1),
            inbox_prefix: format!("_INBOX.{:016x}.", fastrand::u64(..)),
            rr: AtomicUsize::new(0),
            shutdown,
            stopping: std::sync::atomic::AtomicBool::new(false),
            types: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            busy_poll: (cfg.busy_poll_us > 0)
                .then(|| mitto::BusyPoll::new(Duration::from_micros(cfg.busy_poll_us))),
            spin: Duration::from_micros(cfg.spin_us),
            cfg,
        }
    }

    pub(crate) fn draining(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Starts the shutdown: no new connections or publishes, connections drain.
    pub(crate) fn stop(&self) {
        if let Some(b) = &self.busy_poll {
            b.stop();
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }

    /// The subscriptions changed: every cached match is stale (the counts stay).
    fn invalidate(&self) {
        if let Ok(mut m) = self.subjects.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            for e in m.values_mut() {
                e.targets = None;
            }
        }
    }

    pub(crate) fn subscribe(&self, filter: &str, r: SubRef) {
        if let Ok(mut idx) = self.index.write() {
            idx.insert(filter, r);
        }
        bump(&self.stats.subscriptions);
        self.invalidate();
    }

    pub(crate) fn unsubscribe(&self, filter: &str, conn: u64, sid: u32) {
        let n = match self.index.write() {
            Ok(mut idx) => idx.remove(filter, |r| r.conn == conn && r.sid == sid),
            Err(_) => 0,
        };
        self.stats
            .subscriptions
            .fetch_sub(n as u64, Ordering::Relaxed);
        self.invalidate();
    }

    pub(crate) fn register(&self, filter: &str, r: SubRef) {
        if let Ok(mut idx) = self.services.write() {
            idx.insert(filter, r);
        }
        bump(&self.stats.services);
    }

    pub(crate) fn unregister(&self, filter: &str, conn: u64, sid: u32) {
        let n = match self.services.write() {
            Ok(mut idx) => idx.remove(filter, |r| r.conn == conn && r.sid == sid),
            Err(_) => 0,
        };
        self.stats.services.fetch_sub(n as u64, Ordering::Relaxed);
    }

    /// Routes a REQUEST to one registered instance. `None`: no instance matches; otherwise the
    /// immediate answer, if any.
    fn route_to_service(
        self: &Arc<Self>,
        conn: u64,
        caller: &Arc<Mailbox>,
        f: &Frame,
    ) -> Option<Option<Frame>> {
        let mut found = Vec::new();
        if let Ok(idx) = self.services.read() {
            idx.matches(f.subject.as_str(), &mut found);
        }
        if found.is_empty() {
            return None;
        }
        let turn = self.rr.fetch_add(1, Ordering::Relaxed);
        let limit = self.cfg.max_pending_msgs as usize;
        let broker_id = BROKER_CALL_BIT | self.next_call.fetch_add(1, Ordering::Relaxed);
        let inst = {
            let Ok(mut routes) = self.routes.lock() else {
                let e = Frame::response(f.id, Status::INTERNAL, "routing table unavailable");
                return Some(Some(e));
            };
            if routes.by_caller.contains_key(&(conn, f.id)) {
                let e = Frame::error(
                    f.id,
                    Status::PROTOCOL_ERROR,
                    "a call with this id is in flight",
                );
                return Some(Some(e));
            }
            // The next instance in turn that has room.
            let pick = (0..found.len())
                .map(|i| &found[(turn + i) % found.len()])
                .find(|r| routes.per_instance.get(&r.conn).copied().unwrap_or(0) < limit);
            let Some(inst) = pick.cloned() else {
                bump(&self.stats.publish_rejections);
                return Some(Some(Frame::response(
                    f.id,
                    Status::BACKPRESSURE_REJECTION,
                    format!(
                        "every instance of {} has {limit} calls in flight",
                        f.subject.as_str()
                    ),
                )));
            };
            routes.by_broker.insert(
                broker_id,
                Route {
                    caller: caller.clone(),
                    caller_conn: conn,
                    caller_id: f.id,
                    inst: inst.mailbox.clone(),
                    inst_conn: inst.conn,
                    timer: None,
                },
            );
            routes.by_caller.insert((conn, f.id), broker_id);
            *routes.per_instance.entry(inst.conn).or_default() += 1;
            inst
        };
        bump(&self.stats.service_calls);
        let mut fwd = f.clone();
        fwd.id = broker_id;
        inst.mailbox.push_control(fwd);
        // A safety net for instances that never answer: the caller's deadline (or the default),
        // plus a grace period for the instance's own TIMEOUT to arrive first.
        let left = f
            .headers
            .deadline()
            .unwrap_or(Duration::from_millis(self.cfg.request_timeout_ms));
        let core = Arc::clone(self);
        let timer = tokio::spawn(async move {
            tokio::time::sleep(left + Duration::from_secs(1)).await;
            let gone = core
                .routes
                .lock()
                .ok()
                .and_then(|mut r| r.remove(broker_id));
            if let Some(r) = gone {
                bump(&core.stats.request_timeouts);
                r.inst.push_control(Frame::cancel(broker_id));
                r.caller.push_control(Frame::response(
                    r.caller_id,
                    Status::TIMEOUT,
                    "the service did not answer in time",
                ));
            }
        });
        match self.routes.lock().ok().and_then(|mut r| {
            r.by_broker
                .get_mut(&broker_id)
                .map(|x| x.timer = Some(timer.abort_handle()))
        }) {
            Some(()) => {}
            None => timer.abort(),
        }
        Some(None)
    }

    /// A frame from a service instance about a call the broker routed to it (RESPONSE, STREAM,
    /// stream CREDIT). False if it is not about such a call.
    pub(crate) fn forward_to_caller(&self, f: &Frame) -> bool {
        if f.id & BROKER_CALL_BIT == 0 {
            return false;
        }
        let caller = match self.routes.lock() {
            Ok(mut routes) if f.frame_type == FrameType::Response => {
                routes.remove(f.id).map(|r| (r.caller.clone(), r.caller_id))
            }
            Ok(routes) => routes
                .by_broker
                .get(&f.id)
                .map(|r| (r.caller.clone(), r.caller_id)),
            Err(_) => None,
        };
        if let Some((mb, id)) = caller {
            let mut back = f.clone();
            back.id = id;
            mb.push_control(back);
        }
        true
    }

    /// A CANCEL, STREAM or stream CREDIT from a caller about a call routed to an instance.
    /// False if the call is not routed to an instance.
    pub(crate) fn forward_to_instance(&self, conn: u64, f: &Frame) -> bool {
        let target = match self.routes.lock() {
            Ok(mut routes) => {
                let Some(&broker_id) = routes.by_caller.get(&(conn, f.id)) else {
                    return false;
                };
                let inst = if f.frame_type == FrameType::Cancel {
                    routes.remove(broker_id).map(|r| r.inst.clone())
                } else {
                    routes.by_broker.get(&broker_id).map(|r| r.inst.clone())
                };
                inst.map(|i| (i, broker_id))
            }
            Err(_) => return false,
        };
        if let Some((inst, broker_id)) = target {
            if f.frame_type == FrameType::Cancel {
                bump(&self.stats.requests_cancelled);
            }
            let mut fwd = f.clone();
            fwd.id = broker_id;
            inst.push_control(fwd);
        }
        true
    }

    pub(crate) fn service_count(&self) -> usize {
        self.services.read().map(|i| i.len()).unwrap_or(0)
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.index.read().map(|i| i.len()).unwrap_or(0)
    }

    /// The subscriptions matching `subject`, one per queue group; counts the message of
    /// `bytes` for monitoring. `cache` is the publisher's memo of its last subject.
    #[inline]
    fn targets<'c>(
        &self,
        subject: &Subject,
        bytes: usize,
        route: &'c mut Option<CachedRoute>,
        long_lived: bool,
    ) -> Targets<'c> {
        let generation = self.generation.load(Ordering::SeqCst);
        if !route
            .as_ref()
            .is_some_and(|c| c.generation == generation && same_subject(&c.subject, subject))
        {
            *route = None;
        }
        let c = route.get_or_insert_with(|| {
            let (all, counts, generation) = self.lookup(subject);
            CachedRoute {
                subject: subject.clone(),
                generation,
                grouped: all.iter().any(|r| r.queue.is_some()),
                all,
                counts: counts.map(|set| match long_lived {
                    true => SubjectTally::Own(set.join()),
                    false => SubjectTally::Shared(set),
                }),
            }
        });
        match &mut c.counts {
            Some(SubjectTally::Own(t)) => t.add(bytes as u64),
            Some(SubjectTally::Shared(set)) => set.add(bytes as u64),
            None => {}
        }
        if c.grouped {
            Targets::Picked(self.pick(&c.all))
        } else {
            Targets::Cached(&c.all)
        }
    }

    /// The subscriptions matching `subject` (every member of every queue group), its counters
    /// (none once [`MAX_TRACKED_SUBJECTS`] are tracked) and the subscription generation the
    /// list is valid for.
    #[cold]
    fn lookup(&self, subject: &Subject) -> (Arc<[SubRef]>, Option<Arc<Tallies>>, u64) {
        let known = self.subjects.lock().ok().and_then(|mut m| {
            // Read under the lock: `invalidate` clears the lists and bumps it under the lock.
            let generation = self.generation.load(Ordering::SeqCst);
            if let Some(e) = m.get(subject.as_bytes()) {
                return Some((e.targets.clone(), Some(e.counts.clone()), generation));
            }
            if m.len() >= MAX_TRACKED_SUBJECTS {
                return None;
            }
            let counts = Arc::new(Tallies::default());
            m.insert(
                subject.as_bytes().clone(),
                SubjectEntry {
                    targets: None,
                    counts: counts.clone(),
                },
            );
            Some((None, Some(counts), generation))
        });
        let counts = match known {
            Some((Some(hit), counts, generation)) => return (hit, counts, generation),
            Some((None, counts, _)) => counts,
            None => None,
        };
        let seen = self.generation.load(Ordering::SeqCst);
        let mut v = Vec::new();
        if let Ok(idx) = self.index.read() {
            idx.matches(subject.as_str(), &mut v);
        }
        let v: Arc<[SubRef]> = v.into();
        if let Ok(mut m) = self.subjects.lock() {
            // Not if the subscriptions changed since the index was read.
            if self.generation.load(Ordering::SeqCst) == seen {
                if let Some(e) = m.get_mut(subject.as_bytes()) {
                    e.targets = Some(v.clone());
                }
            }
        }
        (v, counts, seen)
    }

    /// One subscription per queue group (in turn), and every subscription outside groups.
    fn pick(&self, all: &[SubRef]) -> Arc<[SubRef]> {
        let mut out: Vec<SubRef> = Vec::with_capacity(all.len());
        let mut groups: BTreeMap<&str, Vec<&SubRef>> = BTreeMap::new();
        for r in all.iter() {
            match &r.queue {
                None => out.push(r.clone()),
                Some(q) => groups.entry(q).or_default().push(r),
            }
        }
        let turn = self.rr.fetch_add(1, Ordering::Relaxed);
        for members in groups.values() {
            out.push(members[turn % members.len()].clone());
        }
        out.into()
    }

    /// Per-subject message and byte counts (for monitoring).
    pub(crate) fn subject_counts(&self) -> Vec<(String, u64, u64)> {
        let mut v: Vec<(String, u64, u64)> = match self.subjects.lock() {
            Ok(m) => m
                .iter()
                .map(|(k, e)| {
                    let (msgs, bytes) = e.counts.sum();
                    (String::from_utf8_lossy(k).into_owned(), msgs, bytes)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }

    /// Binds Rust type `ty` to `filter`; refuses a type other than the one already bound to a
    /// filter that can match the same subjects.
    pub(crate) fn bind_type(
        &self,
        filter: &str,
        ty: std::any::TypeId,
        name: &'static str,
    ) -> Result<(), mitto::Error> {
        let mut types = self
            .types
            .lock()
            .map_err(|_| mitto::Error::new(Status::INTERNAL, "type table unavailable"))?;
        let mut same = false;
        for (f, t, n) in types.iter() {
            if *t != ty && filters_intersect(f, filter) {
                return Err(mitto::local::type_mismatch(filter, n, name));
            }
            same |= *t == ty && f == filter;
        }
        if !same && types.len() < MAX_TYPE_BINDINGS {
            types.push((filter.to_owned(), ty, name));
        }
        Ok(())
    }

    /// Offers `f` to one subscription; gives it back if the subscription's queue is full and
    /// it blocks publishers.
    #[inline]
    pub(crate) fn offer(&self, t: &SubRef, mut f: Frame, r: &mut Routed) -> Option<Frame> {
        f.aux = t.sid;
        match t.mailbox.push_event(t.sid, f) {
            Pushed::Queued => r.delivered += 1,
            Pushed::DroppedOldest => {
                r.delivered += 1;
                bump(&self.stats.slow_consumer_drops);
            }
            Pushed::DroppedNewest => bump(&self.stats.slow_consumer_drops),
            Pushed::Rejected(f) => return Some(f),
            Pushed::Disconnected(filter) => {
                bump(&self.stats.slow_consumer_disconnects);
                self.unsubscribe(&filter, t.conn, t.sid);
                let mut err = Frame::error(
                    0,
                    Status::SLOW_CONSUMER,
                    &format!("subscription {} to {filter} fell too far behind", t.sid),
                );
                err.aux = t.sid;
                t.mailbox.push_control(err);
            }
            Pushed::Gone => {}
        }
        None
    }

    /// Offers `event` to every target: copies for all but the last, which takes it.
    #[inline]
    fn deliver(&self, targets: &[SubRef], event: Frame) -> Routed {
        let mut r = Routed::default();
        let Some((last, rest)) = targets.split_last() else {
            return r;
        };
        for t in rest {
            if let Some(back) = self.offer(t, event.clone(), &mut r) {
                r.block(t, back);
            }
        }
        if let Some(back) = self.offer(last, event, &mut r) {
            r.block(last, back);
        }
        r
    }

    fn event_of(&self, f: &Frame, headers: Headers) -> Frame {
        let id = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut e = Frame::event(1, id, f.subject.clone(), f.payload.clone())
            .with_headers(headers)
            .with_kind(f.kind);
        e.value = f.value.clone();
        for flag in [Flags::URGENT, Flags::COMPRESSED] {
            if f.flags.contains(flag) {
                e.flags.insert(flag);
            }
        }
        e
    }

    /// Routes a PUBLISH (or a reply to an inbox) handed over by value, from a connection or an
    /// in-process publisher: the frame itself becomes the EVENT, moved into the last target's
    /// queue; `cache` is the publisher's route memo.
    /// A value attached in-process is encoded here (once) when a subscriber over a socket
    /// needs it, so that one too large for the wire is refused to the publisher, not lost.
    pub(crate) fn publish_owned(
        &self,
        mut f: Frame,
        cache: &mut RouteCache,
    ) -> Result<Routed, mitto::Error> {
        let RouteCache {
            route,
            long_lived,
            ins,
            ids,
        } = cache;
        let inbox = f.subject.as_bytes().first() == Some(&b'_')
            && f.subject
                .as_bytes()
                .starts_with(self.inbox_prefix.as_bytes());
        if let Some(token) = inbox
            .then(|| f.subject.as_str().strip_prefix(&self.inbox_prefix))
            .flatten()
        {
            self.count_in(&f, *long_lived, ins);
            self.reply(token, &f);
            return Ok(Routed {
                delivered: 1,
                ..Routed::default()
            });
        }
        let targets = self.targets(&f.subject, f.payload.len(), route, *long_lived);
        if f.value.is_some() && targets.iter().any(|t| !t.mailbox.is_local()) {
            f.materialize().map_err(|e| {
                mitto::Error::new(
                    Status::INTERNAL,
                    format!("cannot encode the value for remote subscribers: {e}"),
                )
            })?;
            let max = self.cfg.max_payload as usize;
            if f.payload.len() > max {
                return Err(mitto::Error::new(
                    Status::PAYLOAD_TOO_LARGE,
                    format!(
                        "the value encodes to {} bytes, over the limit of {max} for subscribers of {} over the network",
                        f.payload.len(),
                        f.subject.as_str()
                    ),
                ));
            }
        }
        self.count_in(&f, *long_lived, ins);
        if targets.is_empty() {
            return Ok(Routed::default());
        }
        f.frame_type = FrameType::Event;
        f.id = self.delivery_id(*long_lived, ids);
        let mut keep = Flags::empty();
        for flag in [Flags::URGENT, Flags::COMPRESSED] {
            if f.flags.contains(flag) {
                keep.insert(flag);
            }
        }
        f.flags = keep;
        f.status = Status::OK;
        Ok(self.deliver(&targets, f))
    }

    /// Counts a published message in `msgs_in` / `bytes_in`: in the publisher's own tally when
    /// it is long-lived, else in the shared total.
    #[inline]
    fn count_in(&self, f: &Frame, long_lived: bool, ins: &mut Option<TallyHandle>) {
        let bytes = f.payload.len() as u64;
        if !long_lived {
            return self.stats.ins.add(bytes);
        }
        match ins {
            Some(t) => t.add(bytes),
            None => ins.insert(self.stats.ins.join()).add(bytes),
        }
    }

    /// A delivery id: from the publisher's block of ids when it is long-lived (unique all the
    /// same: each block is taken whole from the broker's counter), else from the counter.
    #[inline]
    fn delivery_id(&self, long_lived: bool, ids: &mut (u64, u64)) -> u64 {
        if !long_lived {
            return self.next_token.fetch_add(1, Ordering::Relaxed);
        }
        if ids.0 == ids.1 {
            let start = self.next_token.fetch_add(ID_BLOCK, Ordering::Relaxed);
            *ids = (start, start + ID_BLOCK);
        }
        let id = ids.0;
        ids.0 += 1;
        id
    }

    pub(crate) fn is_inbox(&self, subject: &str) -> bool {
        subject.starts_with(&self.inbox_prefix)
    }

    fn reply(&self, token: &str, f: &Frame) {
        let pending = token.parse::<u64>().ok().and_then(|t| {
            let mut r = self.requests.lock().ok()?;
            let p = r.by_token.remove(&t)?;
            r.by_caller.remove(&(p.caller_conn, p.caller_id));
            Some(p)
        });
        match pending {
            Some(p) => {
                let resp = Frame::response(p.caller_id, Status::OK, f.payload.clone())
                    .with_headers(f.headers.clone());
                p.caller.push_control(resp);
            }
            None => bump(&self.stats.late_replies),
        }
    }

    /// Routes a REQUEST from connection `conn` to the subscribers of its subject; the first
    /// reply to the inbox becomes the RESPONSE. Returns the immediate answer, if any.
    pub(crate) fn request(
        self: &Arc<Self>,
        conn: u64,
        caller: &Arc<Mailbox>,
        f: &Frame,
    ) -> Option<Frame> {
        bump(&self.stats.requests);
        self.stats.ins.add(f.payload.len() as u64);
        let mut once = None;
        let targets = self.targets(&f.subject, f.payload.len(), &mut once, false);
        if let Some(answer) = self.route_to_service(conn, caller, f) {
            return answer;
        }
        if f.flags.contains(Flags::START) {
            bump(&self.stats.no_responders);
            return Some(Frame::response(
                f.id,
                Status::NO_RESPONDERS,
                format!(
                    "no service registered for the streaming call {}",
                    f.subject.as_str()
                ),
            ));
        }
        if targets.is_empty() {
            bump(&self.stats.no_responders);
            return Some(Frame::response(
                f.id,
                Status::NO_RESPONDERS,
                format!("no responders for {}", f.subject.as_str()),
            ));
        }
        let left = f
            .headers
            .deadline()
            .unwrap_or(Duration::from_millis(self.cfg.request_timeout_ms));
        let deadline = Instant::now() + left;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let reply_to = format!("{}{token}", self.inbox_prefix);
        let mut b = Headers::builder();
        for (k, v) in f.headers.iter() {
            let ok = match k {
                HeaderKey::Known(WellKnown::ReplyTo) | HeaderKey::Known(WellKnown::Deadline) => {
                    continue
                }
                HeaderKey::Known(w) => b.clone().insert(w, v),
                HeaderKey::Custom(c) => b.clone().insert_custom(c, v),
                HeaderKey::Reserved(id) => b.clone().insert_reserved(id, v),
            };
            if let Ok(next) = ok {
                b = next;
            }
        }
        let headers = match b.insert(WellKnown::ReplyTo, &reply_to) {
            Ok(b) => b.deadline(left).build(),
            Err(e) => {
                return Some(Frame::response(f.id, Status::BAD_REQUEST, e.to_string()));
            }
        };
        if let Ok(mut r) = self.requests.lock() {
            r.by_token.insert(
                token,
                Pending {
                    caller: caller.clone(),
                    caller_conn: conn,
                    caller_id: f.id,
                    timer: None,
                },
            );
            r.by_caller.insert((conn, f.id), token);
        }
        let routed = self.deliver(&targets, self.event_of(f, headers));
        self.stats
            .publish_rejections
            .fetch_add(routed.rejected as u64, Ordering::Relaxed);
        if routed.delivered == 0 {
            self.forget(token);
            let (status, why) = if routed.rejected > 0 {
                (
                    Status::BACKPRESSURE_REJECTION,
                    "every responder's queue is full",
                )
            } else {
                (Status::NO_RESPONDERS, "no responder could take the request")
            };
            bump(&self.stats.no_responders);
            return Some(Frame::response(f.id, status, why));
        }
        let core = Arc::clone(self);
        let timer = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(p) = core.forget(token) {
                bump(&core.stats.request_timeouts);
                p.caller.push_control(Frame::response(
                    p.caller_id,
                    Status::TIMEOUT,
                    format!("no reply within {left:?}"),
                ));
            }
        });
        match self.requests.lock().ok().and_then(|mut r| {
            r.by_token
                .get_mut(&token)
                .map(|p| p.timer = Some(timer.abort_handle()))
        }) {
            Some(()) => {}
            None => timer.abort(),
        }
        None
    }

    fn forget(&self, token: u64) -> Option<Pending> {
        let mut r = self.requests.lock().ok()?;
        let p = r.by_token.remove(&token)?;
        r.by_caller.remove(&(p.caller_conn, p.caller_id));
        Some(p)
    }

    /// The caller gave up on request `id`. True if it was pending.
    pub(crate) fn cancel(&self, conn: u64, id: u64) -> bool {
        let token = self
            .requests
            .lock()
            .ok()
            .and_then(|mut r| r.by_caller.remove(&(conn, id)));
        match token {
            Some(t) => {
                self.forget(t);
                bump(&self.stats.requests_cancelled);
                true
            }
            None => false,
        }
    }

    /// Queues again the at-least-once deliveries whose ACK is overdue, on every connection.
    pub(crate) fn redeliver(&self) {
        let mailboxes: Vec<Arc<Mailbox>> = match self.conns.lock() {
            Ok(c) => c.values().map(|i| i.mailbox.clone()).collect(),
            Err(_) => return,
        };
        let now = Instant::now();
        self.expire_sessions(now);
        for m in mailboxes {
            let s = m.redeliver_due(now);
            self.stats
                .redeliveries
                .fetch_add(s.redelivered, Ordering::Relaxed);
            self.stats
                .redeliveries_given_up
                .fetch_add(s.given_up, Ordering::Relaxed);
        }
    }

    /// Keeps a disconnected client's subscriptions and queued messages for the session TTL, so
    /// that it can resume them; its calls and services end now.
    pub(crate) fn detach(
        &self,
        conn: u64,
        client_id: String,
        token: String,
        mailbox: Arc<Mailbox>,
        services: &[(u32, String)],
    ) {
        self.release_calls(conn, services);
        let expires = Instant::now() + Duration::from_millis(self.cfg.session_ttl_ms);
        let old = self.sessions.lock().ok().and_then(|mut s| {
            s.insert(
                client_id,
                Detached {
                    conn,
                    token,
                    mailbox,
                    expires,
                },
            )
        });
        if let Some(old) = old {
            self.drop_subscriptions(old.conn, &old.mailbox);
        }
        bump(&self.stats.sessions_detached);
    }

    /// Takes a detached session back, if the token matches and it has not expired.
    pub(crate) fn resume(&self, client_id: &str, token: &str) -> Option<Detached> {
        let mut s = self.sessions.lock().ok()?;
        let d = s.get(client_id)?;
        if d.token != token || d.expires <= Instant::now() {
            return None;
        }
        let d = s.remove(client_id)?;
        bump(&self.stats.sessions_resumed);
        Some(d)
    }

    fn expire_sessions(&self, now: Instant) {
        let expired: Vec<Detached> = match self.sessions.lock() {
            Ok(mut s) => {
                let ids: Vec<String> = s
                    .iter()
                    .filter(|(_, d)| d.expires <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                ids.into_iter().filter_map(|k| s.remove(&k)).collect()
            }
            Err(_) => Vec::new(),
        };
        for d in expired {
            bump(&self.stats.sessions_expired);
            self.drop_subscriptions(d.conn, &d.mailbox);
        }
    }

    fn drop_subscriptions(&self, conn: u64, mailbox: &Mailbox) {
        for (sid, filter, ..) in mailbox.subs() {
            self.unsubscribe(&filter, conn, sid);
        }
    }

    /// Forgets everything of a connection that went away.
    pub(crate) fn connection_gone(&self, conn: u64, mailbox: &Mailbox, services: &[(u32, String)]) {
        self.drop_subscriptions(conn, mailbox);
        mailbox.end_all();
        self.release_calls(conn, services);
    }

    /// Ends the calls, requests and services of a connection that went away.
    fn release_calls(&self, conn: u64, services: &[(u32, String)]) {
        for (sid, filter) in services {
            self.unregister(filter, conn, *sid);
        }
        let lost: Vec<(u64, Route)> = match self.routes.lock() {
            Ok(mut r) => {
                let ids: Vec<u64> = r
                    .by_broker
                    .iter()
                    .filter(|(_, x)| x.inst_conn == conn || x.caller_conn == conn)
                    .map(|(id, _)| *id)
                    .collect();
                ids.into_iter()
                    .filter_map(|id| r.remove(id).map(|x| (id, x)))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for (id, r) in lost {
            if r.caller_conn == conn {
                r.inst.push_control(Frame::cancel(id));
            } else {
                r.caller.push_control(Frame::response(
                    r.caller_id,
                    Status::UNAVAILABLE,
                    "the service instance went away",
                ));
            }
        }
        if let Ok(mut r) = self.requests.lock() {
            let mine: Vec<(u64, u64)> = r
                .by_caller
                .keys()
                .filter(|(c, _)| *c == conn)
                .copied()
                .collect();
            for k in mine {
                if let Some(t) = r.by_caller.remove(&k) {
                    r.by_token.remove(&t);
                }
            }
        }
    }
}
