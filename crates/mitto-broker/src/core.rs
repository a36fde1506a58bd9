//! The broker's shared state: the subject index, connections' mailboxes, requests in flight and
//! the counters. Connection tasks call into it; nothing here awaits.

use crate::config::BrokerConfig;
use crate::connections::Connections;
use crate::durable::Durables;
use crate::fabric::Scope;
use crate::fit::timed;
use crate::index::Index;
use crate::mailbox::{Mailbox, Pushed};
use crate::requests::{Requests, ServiceRef};
use crate::sessions::{Detached, SessionKey, SessionLimits, Sessions};
use crate::stats::{bump, Stats};
use crate::subscriptions::SubRef;
use crate::subscriptions::{Route, Subscriptions};
use crate::tally::TallyHandle;
use mitto::proto::{Flags, Frame, FrameType, Headers, Status, Subject};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// A publisher's memo: where its last subject goes ([`Route`]) and, for a long-lived publisher
/// ([`RouteCache::publisher`]), its own tallies of what it publishes (see `tally.rs`) and a
/// block of delivery ids, so that a publish touches no counter other publishers write. A
/// one-off memo (`default`) adds to the shared counters.
#[derive(Default)]
pub(crate) struct RouteCache {
    route: Route,
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

/// Delivery ids a long-lived publisher takes from the broker's counter at a time.
const ID_BLOCK: u64 = 1024;

pub(crate) struct Core {
    pub(crate) cfg: BrokerConfig,
    /// What one connection may make the broker hold.
    pub(crate) budget: crate::budget::Budget,
    /// Connections in their handshake, and refused HELLOs per address.
    pub(crate) handshakes: crate::guard::Handshakes,
    pub(crate) failures: crate::guard::Failures,
    /// Subscriptions: the index, queue groups and the published subjects.
    subs: Subscriptions,
    /// Registered service instances, by filter.
    services: RwLock<Index<ServiceRef>>,
    /// Requests and service calls in flight, with their deadlines.
    pub(crate) requests: Requests,
    sessions: Sessions,
    /// Sessions attached to a live connection, for a HELLO to take over.
    pub(crate) attached: crate::takeover::Attached,
    /// Who holds each durable subscription name.
    pub(crate) durables: Durables,
    pub(crate) stats: Stats,
    pub(crate) started: Instant,
    /// The open connections.
    pub(crate) conns: Connections,
    pub(crate) next_conn: AtomicU64,
    next_token: AtomicU64,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Mirrors `shutdown` for lock-free reads on the publish path.
    stopping: std::sync::atomic::AtomicBool,
    /// Latency mode (`busy_poll_us`): the poller every connection keeps awake.
    pub(crate) busy_poll: Option<Arc<mitto::BusyPoll>>,
    /// Spin-then-park window of socket connections (`spin_us`).
    pub(crate) spin: Duration,
    /// What else sees every published message (see [`Sink`]).
    sink: Option<Arc<dyn Sink>>,
    /// Durable streams, once the data directory is open: `streams/` keeps its state here and
    /// reads it with `streams::of`. Untyped, so that the core does not depend on the streams
    /// module that depends on it.
    pub(crate) streams: std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
}

/// The extension point of the publish path: a part of the broker that sees every message
/// published to it besides the subscribers (durable streams capture their subjects here).
/// Called in the publisher's task, over a socket or in-process, once the message was admitted
/// (permissions, replies, shutdown) and checked, before it is delivered; a refusal is answered
/// to the publisher and the message goes nowhere. `f` is the PUBLISH as it arrived (its
/// `value`, from an in-process publisher, may not be encoded yet: `Frame::materialize`).
/// It must not block: the publisher's connection waits for it.
pub(crate) trait Sink: Send + Sync {
    fn on_publish(&self, f: &Frame) -> Result<(), mitto::Error>;
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
    /// When it arrived, if it carries a `deadline` or `ttl`.
    pub(crate) born: Option<Instant>,
}

impl Routed {
    fn block(&mut self, t: &SubRef, back: Frame, born: Option<Instant>) {
        self.rejected += 1;
        match &mut self.blocked {
            Some(b) => b.targets.push(t.clone()),
            None => {
                self.blocked = Some(Box::new(Blocked {
                    targets: vec![t.clone()],
                    event: back,
                    born,
                }))
            }
        }
    }
}

impl Core {
    pub(crate) fn new(cfg: BrokerConfig) -> Core {
        let (shutdown, _) = watch::channel(false);
        let budget = crate::budget::Budget::of(&cfg);
        Core {
            handshakes: crate::guard::Handshakes::new(budget.pre_auth.max_handshakes),
            failures: crate::guard::Failures::new(
                budget.pre_auth.failure_delay.0,
                budget.pre_auth.failure_delay.1,
            ),
            budget,
            subs: Subscriptions::new(cfg.max_tracked_subjects, cfg.max_tracked_subject_bytes),
            services: RwLock::new(Index::default()),
            requests: Requests::new(cfg.max_requests_per_connection),
            sessions: Sessions::new(SessionLimits {
                max: cfg.max_detached_sessions,
                max_per_user: cfg.max_detached_sessions_per_user,
                max_bytes: cfg.max_detached_bytes,
            }),
            attached: Default::default(),
            durables: Durables::default(),
            stats: Stats::default(),
            started: Instant::now(),
            conns: Connections::default(),
            next_conn: AtomicU64::new(1),
            next_token: AtomicU64::new(1),
            shutdown,
            stopping: std::sync::atomic::AtomicBool::new(false),
            busy_poll: (cfg.busy_poll_us > 0)
                .then(|| mitto::BusyPoll::new(Duration::from_micros(cfg.busy_poll_us))),
            spin: Duration::from_micros(cfg.spin_us),
            sink: None,
            streams: std::sync::OnceLock::new(),
            cfg,
        }
    }

    /// Sets what sees every published message besides the subscribers.
    #[cfg_attr(not(test), allow(dead_code))] // The extension point for durable streams.
    pub(crate) fn with_sink(mut self, sink: Arc<dyn Sink>) -> Core {
        self.sink = Some(sink);
        self
    }

    /// The broker's counters, as STATS and monitoring report them, with the gauges read from
    /// the parts that keep them.
    pub(crate) fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        let mut m = self.stats.snapshot();
        m.insert("handshakes_open".to_owned(), self.handshakes.open() as u64);
        m
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

    pub(crate) fn subscribe(&self, filter: &str, r: SubRef) {
        self.subs.insert(filter, r);
        bump(&self.stats.subscriptions);
    }

    pub(crate) fn unsubscribe(&self, filter: &str, conn: u64, sid: u32) {
        let n = self.subs.remove(filter, conn, sid);
        self.stats
            .subscriptions
            .fetch_sub(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn register(&self, filter: &str, r: ServiceRef) {
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

    /// The service instances registered for `subject` (every member of every group).
    pub(crate) fn service_instances(&self, subject: &str) -> Vec<ServiceRef> {
        let mut found = Vec::new();
        if let Ok(idx) = self.services.read() {
            idx.matches(subject, &mut found);
        }
        found
    }

    /// Every registered service instance: its filter and connection.
    pub(crate) fn service_entries(&self) -> Vec<(String, u64)> {
        self.services
            .read()
            .map(|i| i.entries())
            .unwrap_or_default()
            .into_iter()
            .map(|(f, r)| (f, r.conn))
            .collect()
    }

    pub(crate) fn service_count(&self) -> usize {
        self.services.read().map(|i| i.len()).unwrap_or(0)
    }

    pub(crate) fn subscription_count(&self) -> usize {
        self.subs.len()
    }

    /// Every subscription matching `subject` (all members of every queue group).
    pub(crate) fn matching(&self, subject: &str) -> Vec<SubRef> {
        self.subs.matching(subject)
    }

    /// The subscriptions a one-off message on `subject` of `bytes` goes to within `scope` (one
    /// member per queue group), counted for monitoring.
    pub(crate) fn targets_once(
        &self,
        subject: &Subject,
        bytes: usize,
        scope: &Scope,
    ) -> Vec<SubRef> {
        let mut once = Route::default();
        self.subs
            .targets(subject, bytes, &mut once, false, &self.stats, scope)
            .to_vec()
    }

    /// The next turn of queue groups and service instances.
    pub(crate) fn turn(&self) -> usize {
        self.subs.turn()
    }

    /// Per-subject message and byte counts (for monitoring).
    pub(crate) fn subject_counts(&self) -> Vec<(String, u64, u64)> {
        self.subs.subject_counts()
    }

    /// Offers `f` to one subscription (`born`: when a timed message arrived); gives it back if
    /// the subscription's queue is full and it blocks publishers.
    #[inline]
    pub(crate) fn offer(
        &self,
        t: &SubRef,
        mut f: Frame,
        born: Option<Instant>,
        r: &mut Routed,
    ) -> Option<Frame> {
        f.aux = t.sid;
        match t.mailbox.push_event(t.sid, f, born) {
            Pushed::Queued => r.delivered += 1,
            Pushed::DroppedOldest => {
                r.delivered += 1;
                bump(&self.stats.slow_consumer_drops);
            }
            Pushed::DroppedNewest => bump(&self.stats.slow_consumer_drops),
            Pushed::Rejected(f) => return Some(f),
            Pushed::Disconnected(f) => {
                // It ends as if unsubscribed: what it holds, delivered and unacknowledged
                // included, goes to its queue group or stays with its durable name, and so
                // does this message.
                if let Some(filter) = self.end_subscription(t.conn, &t.mailbox, t.sid) {
                    bump(&self.stats.slow_consumer_disconnects);
                    let mut err = Frame::error(
                        0,
                        Status::SLOW_CONSUMER,
                        &format!("subscription {} to {filter} fell too far behind", t.sid),
                    );
                    err.aux = t.sid;
                    t.mailbox.push_control(err);
                }
                self.reroute(t, f, born);
            }
            Pushed::Gone(f) => {
                self.reroute(t, f, born);
                r.delivered += 1;
            }
        }
        None
    }

    /// Offers `event` to every target: copies for all but the last, which takes it. A message
    /// with a `deadline` or `ttl` is stamped with its arrival, so that the time it waits is
    /// charged when it leaves.
    #[inline]
    pub(crate) fn deliver(&self, targets: &[SubRef], event: Frame) -> Routed {
        let mut r = Routed::default();
        let Some((last, rest)) = targets.split_last() else {
            return r;
        };
        let born = timed(&event.headers).then(Instant::now);
        for t in rest {
            if let Some(back) = self.offer(t, event.clone(), born, &mut r) {
                r.block(t, back, born);
            }
        }
        if let Some(back) = self.offer(last, event, born, &mut r) {
            r.block(last, back, born);
        }
        r
    }

    pub(crate) fn event_of(&self, f: &Frame, headers: Headers) -> Frame {
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

    /// Routes a PUBLISH handed over by value (admitted by [`Core::admit_publish`]), from a
    /// connection or an in-process publisher: the frame itself becomes the EVENT, moved into the
    /// last target's queue; `cache` is the publisher's route memo; `scope`: which of the
    /// subscriptions (`Scope::All` but for the federation's copies).
    /// A value attached in-process is encoded here (once) when a subscriber over a socket
    /// needs it, so that one too large for the wire is refused to the publisher, not lost.
    pub(crate) fn publish_owned(
        &self,
        mut f: Frame,
        cache: &mut RouteCache,
        scope: &Scope,
    ) -> Result<Routed, mitto::Error> {
        let RouteCache {
            route,
            long_lived,
            ins,
            ids,
        } = cache;
        if f.flags.contains(Flags::COMPRESSED) {
            // Checked once here, so that no subscriber gets a block it cannot read.
            if let Err(e) = f.decompressed_payload(self.cfg.max_payload) {
                return Err(mitto::Error::new(e.status(), e.to_string()));
            }
        }
        if let Some(sink) = &self.sink {
            sink.on_publish(&f)?;
        }
        let targets = self.subs.targets(
            &f.subject,
            f.payload.len(),
            route,
            *long_lived,
            &self.stats,
            scope,
        );
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
        self.requests.is_inbox(subject)
    }

    /// Queues again the at-least-once deliveries whose ACK is overdue, on every connection.
    pub(crate) fn redeliver(&self) {
        let mailboxes = self.conns.mailboxes();
        let now = Instant::now();
        self.expire_sessions(now);
        self.expire_durables(now);
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
        key: SessionKey,
        token: String,
        mailbox: Arc<Mailbox>,
        services: &[(u32, String)],
    ) {
        self.release_calls(conn, services);
        let expires = Instant::now() + Duration::from_millis(self.cfg.session_ttl_ms);
        let d = Detached {
            conn,
            token,
            mailbox,
            expires,
        };
        let (replaced, evicted) = self.sessions.keep(key, d);
        if let Some(old) = replaced {
            self.end_all(old.conn, &old.mailbox);
        }
        self.evict_sessions(evicted);
        bump(&self.stats.sessions_detached);
    }

    /// A connection taken over hands its session to the claimant (or keeps it detached, if the
    /// claimant stopped waiting), as a lost connection detaches it (its streams' consumers
    /// were let go, kept, by the caller).
    pub(crate) fn hand_over(
        &self,
        claim: &crate::takeover::Claim,
        conn: u64,
        session: crate::sessions::Session,
        mailbox: Arc<crate::mailbox::Mailbox>,
        services: &[(u32, String)],
    ) {
        self.release_calls(conn, services);
        let d = Detached {
            conn,
            token: session.token.clone(),
            mailbox: mailbox.clone(),
            expires: Instant::now() + Duration::from_millis(self.cfg.session_ttl_ms),
        };
        match claim.give(d) {
            Ok(()) => bump(&self.stats.sessions_detached),
            // Kept for a later resumption (the calls are released already).
            Err(_) => self.detach(conn, session.key, session.token, mailbox, &[]),
        }
    }

    /// Ends sessions taken out to keep the detached ones within their bounds.
    fn evict_sessions(&self, evicted: Vec<Detached>) {
        for d in evicted {
            bump(&self.stats.sessions_evicted);
            self.end_all(d.conn, &d.mailbox);
        }
    }

    /// Takes a detached session back: the same user and client id, the same session id, not
    /// expired.
    pub(crate) fn resume(&self, key: &SessionKey, token: &str) -> Option<Detached> {
        let d = self.sessions.take(key, token, Instant::now())?;
        bump(&self.stats.sessions_resumed);
        Some(d)
    }

    /// Ends the sessions that expired, then the oldest while they hold more than their bound
    /// (messages keep arriving for them after they were detached).
    fn expire_sessions(&self, now: Instant) {
        for d in self.sessions.expired(now) {
            bump(&self.stats.sessions_expired);
            self.end_all(d.conn, &d.mailbox);
        }
        let (evicted, held) = self.sessions.trim();
        self.evict_sessions(evicted);
        self.stats
            .detached_session_bytes
            .store(held as u64, Ordering::Relaxed);
    }

    /// What detached sessions hold (at shutdown, lost with the broker).
    pub(crate) fn detached_outstanding(&self) -> usize {
        self.sessions.outstanding()
    }

    /// Forgets everything of a connection that went away: its subscriptions end (their
    /// messages go to their queue group or durable name, see `rehome.rs`).
    pub(crate) fn connection_gone(&self, conn: u64, mailbox: &Mailbox, services: &[(u32, String)]) {
        self.end_all(conn, mailbox);
        self.release_calls(conn, services);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Takes every message but those to `full`.
    #[derive(Default)]
    struct Capture(AtomicUsize);

    impl Sink for Capture {
        fn on_publish(&self, f: &Frame) -> Result<(), mitto::Error> {
            if f.subject.as_str() == "full" {
                return Err(mitto::Error::new(Status::QUOTA_EXCEEDED, "stream full"));
            }
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    fn publish(subject: &str) -> Frame {
        Frame::publish(Subject::new(subject).unwrap(), "x")
    }

    #[test]
    fn the_sink_sees_every_publish_subscribers_or_not_and_may_refuse_it() {
        let sink = Arc::new(Capture::default());
        let core = Core::new(BrokerConfig::default()).with_sink(sink.clone());
        let mut routes = RouteCache::publisher();
        let r = core
            .publish_owned(publish("a"), &mut routes, &Scope::All)
            .unwrap();
        assert_eq!(r.delivered, 0, "nobody subscribes");
        assert_eq!(sink.0.load(Ordering::Relaxed), 1);
        let e = core
            .publish_owned(publish("full"), &mut routes, &Scope::All)
            .unwrap_err();
        assert_eq!(e.status(), Status::QUOTA_EXCEEDED);
        assert_eq!(sink.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn deliver_moves_the_message_to_the_last_target_and_copies_for_the_others() {
        let core = Core::new(BrokerConfig::default());
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let mailbox = Arc::new(Mailbox::new(tx, 1 << 20, core.stats.losses.clone()));
        let q = |f: &str| {
            crate::mailbox::SubQueue::new(
                f.into(),
                None,
                0,
                10,
                mitto::proto::SlowConsumerPolicy::DropOldest,
            )
        };
        let target = |sid| SubRef {
            conn: 1,
            sid,
            queue: None,
            durable: None,
            mailbox: mailbox.clone(),
        };
        mailbox.add_sub(1, q("t"));
        mailbox.add_sub(2, q("t"));
        core.subscribe("t", target(1));
        core.subscribe("t", target(2));
        core.subscribe("t", target(3)); // its queue is gone: counted as rerouted, nowhere to go
        let mut routes = RouteCache::publisher();
        let r = core
            .publish_owned(publish("t"), &mut routes, &Scope::All)
            .unwrap();
        assert_eq!((r.delivered, r.rejected), (3, 0));
        assert_eq!(mailbox.outstanding(), 2);
        assert_eq!(core.stats.snapshot()["msgs_in"], 1);
    }
}
