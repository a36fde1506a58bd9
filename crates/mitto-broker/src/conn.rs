//! One client connection at the broker: the HELLO (limits, auth), then a reactor on the
//! runtime's connection driver that turns frames into calls on the shared core and moves the
//! connection's mailbox to its socket.

use crate::config::User;
use crate::core::{bump, Core, SubRef};
use crate::mailbox::{AckState, Drained, Mailbox, SubQueue};

/// How long an at-least-once delivery may stay unacknowledged unless the subscription says.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
use bytes::Bytes;
use mitto::conn::{Ctx, Driver, DriverConfig, Reactor};
use mitto::proto::body::{decode_credit, decode_opt_u32};
use mitto::proto::negotiate::Features;
use mitto::proto::subject::matches;
use mitto::proto::{
    Delivery, Flags, Frame, FrameType, HealthReport, HealthState, Hello, SlowConsumerPolicy,
    StatsReport, Status, SubscribeOptions, Version,
};
use mitto::transport::{Incoming, Io};
use mitto::Error;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

/// Commands a connection's driver takes besides frames.
#[derive(Debug)]
pub(crate) enum BrokerCmd {
    /// The mailbox has something to send.
    Wake,
    /// Shutdown: close after what is queued.
    Drain,
}

/// What the core knows of a connection (for shutdown and monitoring).
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) ctl: mpsc::UnboundedSender<BrokerCmd>,
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) peer: String,
    pub(crate) name: String,
    pub(crate) user: String,
}

/// Whether `allowed` (a filter) covers every subject `requested` (a filter) can match.
fn covers(allowed: &str, requested: &str) -> bool {
    let mut a = allowed.split('.');
    let mut r = requested.split('.');
    loop {
        match (a.next(), r.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Permissions {
    publish: Vec<String>,
    subscribe: Vec<String>,
}

impl Permissions {
    fn of(user: Option<&User>) -> Permissions {
        user.map(|u| Permissions {
            publish: u.publish.clone(),
            subscribe: u.subscribe.clone(),
        })
        .unwrap_or_default()
    }
    /// Whether publishing is limited to some subjects.
    pub(crate) fn restricts_publish(&self) -> bool {
        !self.publish.is_empty()
    }

    pub(crate) fn may_publish(&self, subject: &str) -> bool {
        self.publish.is_empty() || self.publish.iter().any(|f| matches(f, subject))
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        self.subscribe.is_empty() || self.subscribe.iter().any(|f| covers(f, filter))
    }
}

/// Checks HELLO's credentials; returns the user, if users are configured.
fn authenticate<'a>(core: &'a Core, h: &Hello) -> Result<Option<&'a User>, Error> {
    let denied = |why: &str| Error::new(Status::UNAUTHORIZED, why.to_owned());
    if let Some(t) = &core.cfg.token {
        return if bool::from(h.auth[..].ct_eq(t.as_bytes())) {
            Ok(None)
        } else {
            Err(denied("invalid or missing token"))
        };
    }
    if core.cfg.users.is_empty() {
        return Ok(None);
    }
    core.cfg
        .users
        .iter()
        .find(|u| u.name == h.user && bool::from(h.auth[..].ct_eq(u.password.as_bytes())))
        .map(Some)
        .ok_or_else(|| denied("unknown user or wrong password"))
}

pub(crate) async fn serve(core: Arc<Core>, inc: Incoming, conn: u64) {
    let peer = inc.peer.clone();
    let mut io = match inc.establish().await {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!(error = %e, "connection setup failed");
            return;
        }
    };
    let cfg = &core.cfg;
    let local = Hello {
        version: Version::CURRENT,
        flags: 0,
        features: Features::supported(),
        max_payload: cfg.max_payload,
        max_headers: 0,
        keepalive_ms: cfg.keepalive_ms,
        name: cfg.name.clone(),
        client_id: String::new(),
        session: String::new(),
        user: String::new(),
        auth: Bytes::new(),
    };
    let mut perms = Permissions::default();
    let mut resumed: Option<crate::core::Detached> = None;
    let mut session: Option<(String, String)> = None;
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    // A client in this process gets direct entry points, offered before the HELLO reply.
    let slot = match &io {
        Io::Link(l) => Some(l.port_slot()),
        _ => None,
    };
    let is_local = slot.is_some();
    let mut fresh: Option<Arc<Mailbox>> = None;
    let admit = |h: &Hello| {
        let decided = (|| {
            if core.draining() {
                return Err(Error::new(Status::UNAVAILABLE, "broker is shutting down").retryable());
            }
            let open = core.stats.connections_open.load(Ordering::Relaxed);
            if open >= cfg.max_connections as u64 {
                bump(&core.stats.connections_refused);
                return Err(Error::new(
                    Status::QUOTA_EXCEEDED,
                    format!(
                        "the broker has its maximum of {} connections",
                        cfg.max_connections
                    ),
                )
                .retryable());
            }
            let user = authenticate(&core, h).inspect_err(|_| bump(&core.stats.auth_failures))?;
            perms = Permissions::of(user);
            if h.client_id.is_empty() || !h.features.contains(Features::SESSION_RESUME) {
                return Ok((format!("c{conn}"), String::new(), false));
            }
            let id = h.client_id.clone();
            if !h.session.is_empty() {
                if let Some(d) = core.resume(&id, &h.session) {
                    let token = d.token.clone();
                    resumed = Some(d);
                    session = Some((id.clone(), token.clone()));
                    return Ok((id, token, true));
                }
            }
            let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
            session = Some((id.clone(), token.clone()));
            Ok((id, token, false))
        })()?;
        if let Some(slot) = &slot {
            let (id, mailbox) = match &resumed {
                Some(d) => (d.conn, d.mailbox.clone()),
                None => {
                    let m = Arc::new(Mailbox::new(ctl_tx.clone(), cfg.max_pending_bytes));
                    fresh = Some(m.clone());
                    (conn, m)
                }
            };
            mailbox.set_local(true);
            slot.offer(Arc::new(crate::local::Port {
                core: core.clone(),
                conn: id,
                mailbox,
                perms: perms.clone(),
                uid: crate::local::Port::next_uid(),
            }));
        }
        Ok(decided)
    };
    let timeout = Duration::from_millis(cfg.handshake_timeout_ms);
    let (agreed, hello, leftover) =
        match mitto::handshake::server(&mut io, &local, timeout, admit).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "handshake refused");
                return;
            }
        };
    let (cmd_tx, cmd_rx) = mpsc::channel(1);
    let (conn, mailbox) = match resumed {
        Some(d) => {
            tracing::debug!(old = d.conn, "session resumed");
            d.mailbox.set_local(is_local);
            d.mailbox.set_waker(ctl_tx.clone());
            (d.conn, d.mailbox)
        }
        None => (
            conn,
            fresh
                .take()
                .unwrap_or_else(|| Arc::new(Mailbox::new(ctl_tx.clone(), cfg.max_pending_bytes))),
        ),
    };
    if let Ok(mut c) = core.conns.lock() {
        c.insert(
            conn,
            ConnInfo {
                ctl: ctl_tx.clone(),
                mailbox: mailbox.clone(),
                peer,
                name: hello.name.clone(),
                user: hello.user.clone(),
            },
        );
    }
    bump(&core.stats.connections_total);
    bump(&core.stats.connections_open);
    if core.draining() {
        let _ = ctl_tx.send(BrokerCmd::Drain);
    }
    let keepalive =
        (agreed.keepalive_ms > 0).then(|| Duration::from_millis(agreed.keepalive_ms.into()));
    let reactor = BrokerReactor {
        core: core.clone(),
        conn,
        mailbox: mailbox.clone(),
        perms,
        acks: agreed.features.contains(Features::ACKS),
        _cmd_tx: cmd_tx,
        draining: false,
        services: HashMap::new(),
        session,
        parked: None,
        routes: crate::core::RouteCache::publisher(),
        held: Default::default(),
    };
    let driver = Driver::new(
        io,
        leftover,
        DriverConfig {
            limits: agreed.limits,
            keepalive,
            busy_poll: core.busy_poll.clone(),
            spin: core.spin,
        },
        reactor,
        cmd_rx,
        ctl_rx,
    );
    if let Err(e) = driver.run().await {
        tracing::debug!(error = %e, "connection ended");
    }
    core.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
    if let Ok(mut c) = core.conns.lock() {
        // A resumed session may already have taken this id over.
        if c.get(&conn).is_some_and(|i| i.ctl.same_channel(&ctl_tx)) {
            c.remove(&conn);
        }
    }
}

struct BrokerReactor {
    core: Arc<Core>,
    conn: u64,
    mailbox: Arc<Mailbox>,
    perms: Permissions,
    acks: bool,
    /// Keeps the command channel open; the broker drives everything through `ctl`.
    _cmd_tx: mpsc::Sender<BrokerCmd>,
    draining: bool,
    /// Registered service instances: id -> filter.
    services: HashMap<u32, String>,
    /// Client id and session token, when the client can resume its session.
    session: Option<(String, String)>,
    /// A PUBLISH waiting for full `block` subscriptions to make room.
    parked: Option<Parked>,
    /// PUBLISH and REQUEST frames read behind the held one (reading is paused meanwhile, so
    /// only what one read brought in).
    held: std::collections::VecDeque<Frame>,
    /// Where this connection's last published subject goes.
    routes: crate::core::RouteCache,
}

/// A message held for subscriptions that block publishers while full.
struct Parked {
    /// Those still to take it (the last first).
    targets: Vec<SubRef>,
    event: Frame,
    id: u64,
    ack: bool,
    subject: String,
    room: Option<std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl BrokerReactor {
    fn refuse(&self, cx: &mut Ctx<'_>, f: &Frame, status: Status, why: &str) {
        if status == Status::FORBIDDEN {
            bump(&self.core.stats.permission_denials);
        }
        let mut e = Frame::error(f.id, status, why);
        if matches!(f.frame_type, FrameType::Subscribe | FrameType::Unsubscribe) {
            e.aux = f.aux;
        }
        cx.send(&e);
    }

    fn on_publish(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        if self.perms.restricts_publish() {
            let subject = f.subject.as_str();
            if !self.core.is_inbox(subject) && !self.perms.may_publish(subject) {
                return self.refuse(
                    cx,
                    &f,
                    Status::FORBIDDEN,
                    &format!("may not publish to {subject}"),
                );
            }
        }
        let (id, ack) = (f.id, f.flags.contains(Flags::ACK_REQUIRED));
        // The frame itself becomes the EVENT (no copy of its parts), as for an in-process
        // publisher.
        let mut routed = match self.core.publish_owned(f, &mut self.routes) {
            Ok(r) => r,
            Err(e) => return cx.send(&Frame::error(id, e.status(), e.message())),
        };
        if let Some(b) = routed.blocked.take() {
            // Full `block` subscriptions: hold the publisher (stop reading its connection)
            // until they make room, instead of refusing.
            let crate::core::Blocked { targets, event } = *b;
            self.parked = Some(Parked {
                targets,
                id,
                ack,
                subject: event.subject.as_str().to_owned(),
                event,
                room: None,
                deadline: Box::pin(tokio::time::sleep(Duration::from_millis(
                    self.core.cfg.max_block_ms,
                ))),
            });
            return;
        }
        // Only subscriptions that block publishers refuse a message, and those park it above.
        debug_assert_eq!(routed.rejected, 0);
        if ack {
            cx.send(&Frame::ack(id, 0));
        }
    }

    fn on_subscribe(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        let filter = f.subject.as_str().to_owned();
        if self.core.is_inbox(&filter) || filter.starts_with("_INBOX.>") {
            return self.refuse(
                cx,
                &f,
                Status::FORBIDDEN,
                "broker inboxes are not subscribable",
            );
        }
        if !self.perms.may_subscribe(&filter) {
            return self.refuse(
                cx,
                &f,
                Status::FORBIDDEN,
                &format!("may not subscribe to {filter}"),
            );
        }
        let opts = match SubscribeOptions::decode(&f.payload, "SUBSCRIBE") {
            Ok(o) => o,
            Err(e) => return self.refuse(cx, &f, Status::BAD_REQUEST, &e.to_string()),
        };
        if opts.delivery == Delivery::AtLeastOnce && !self.acks {
            return self.refuse(
                cx,
                &f,
                Status::UNSUPPORTED_FEATURE,
                "ACKS was not negotiated",
            );
        }
        let max = self.core.cfg.max_subscriptions;
        if self.mailbox.sub_count() >= max {
            return self.refuse(
                cx,
                &f,
                Status::QUOTA_EXCEEDED,
                &format!("this connection has its maximum of {max} subscriptions"),
            );
        }
        let policy = match opts.policy {
            SlowConsumerPolicy::ServerDefault => self.core.cfg.slow_consumer.policy(),
            p => p,
        };
        let max_pending = match opts.max_pending {
            0 => self.core.cfg.max_pending_msgs,
            n => n.min(self.core.cfg.max_pending_msgs),
        } as usize;
        // An in-process subscriber reads its queue itself: no credit to grant.
        let credit = if self.mailbox.is_local() {
            0
        } else {
            opts.credit
        };
        let mut sq = SubQueue::new(
            filter.clone(),
            opts.queue.clone(),
            credit,
            max_pending,
            policy,
        );
        if opts.delivery == Delivery::AtLeastOnce {
            let wait = match opts.ack_wait_ms {
                0 => DEFAULT_ACK_WAIT,
                ms => Duration::from_millis(ms.into()),
            };
            sq = sq.with_acks(AckState::new(wait, opts.max_deliver));
        }
        if !self.mailbox.add_sub(f.aux, sq) {
            return self.refuse(
                cx,
                &f,
                Status::ALREADY_EXISTS,
                &format!("subscription id {} is in use", f.aux),
            );
        }
        let r = SubRef {
            conn: self.conn,
            sid: f.aux,
            queue: opts.queue.map(Into::into),
            mailbox: self.mailbox.clone(),
        };
        self.core.subscribe(&filter, r);
        if f.flags.contains(Flags::ACK_REQUIRED) {
            cx.send(&Frame::ack(f.id, 0));
        }
    }

    fn on_register(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        let filter = f.subject.as_str().to_owned();
        if self.core.is_inbox(&filter) || !self.perms.may_subscribe(&filter) {
            let why = format!("may not serve {filter}");
            return self.refuse(cx, &f, Status::FORBIDDEN, &why);
        }
        let opts = match SubscribeOptions::decode(&f.payload, "REGISTER") {
            Ok(o) => o,
            Err(e) => return self.refuse(cx, &f, Status::BAD_REQUEST, &e.to_string()),
        };
        if self.services.contains_key(&f.aux) || self.mailbox.has_sub(f.aux) {
            let why = format!("id {} is in use", f.aux);
            return self.refuse(cx, &f, Status::ALREADY_EXISTS, &why);
        }
        if self.services.len() + self.mailbox.sub_count() >= self.core.cfg.max_subscriptions {
            let why = "this connection has its maximum of subscriptions and services";
            return self.refuse(cx, &f, Status::QUOTA_EXCEEDED, why);
        }
        self.services.insert(f.aux, filter.clone());
        let r = SubRef {
            conn: self.conn,
            sid: f.aux,
            queue: opts.queue.map(Into::into),
            mailbox: self.mailbox.clone(),
        };
        self.core.register(&filter, r);
        if f.flags.contains(Flags::ACK_REQUIRED) {
            cx.send(&Frame::ack(f.id, 0));
        }
    }

    fn on_unsubscribe(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        let after = match decode_opt_u32(&f.payload, "UNSUBSCRIBE") {
            Ok(a) => a,
            Err(e) => return self.refuse(cx, &f, Status::BAD_REQUEST, &e.to_string()),
        };
        let known = match after {
            Some(n) if n > 0 => self.mailbox.unsubscribe_after(f.aux, n),
            _ => match self.mailbox.remove_sub(f.aux) {
                Some(filter) => {
                    self.core.unsubscribe(&filter, self.conn, f.aux);
                    true
                }
                None => false,
            },
        };
        if !known {
            return self.refuse(
                cx,
                &f,
                Status::NOT_FOUND,
                &format!("no subscription {}", f.aux),
            );
        }
        if f.flags.contains(Flags::ACK_REQUIRED) {
            cx.send(&Frame::ack(f.id, 0));
        }
    }

    fn on_request(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        let subject = f.subject.as_str();
        if self.draining {
            let r = Frame::response(f.id, Status::UNAVAILABLE, "broker is shutting down");
            return cx.send(&r);
        }
        if self.core.is_inbox(subject) || !self.perms.may_publish(subject) {
            bump(&self.core.stats.permission_denials);
            let r = Frame::response(
                f.id,
                Status::FORBIDDEN,
                format!("may not request {subject}"),
            );
            return cx.send(&r);
        }
        if let Some(answer) = self.core.request(self.conn, &self.mailbox, &f) {
            cx.send(&answer);
        }
    }
}

impl Reactor for BrokerReactor {
    type Cmd = BrokerCmd;

    fn on_frame(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        if self.parked.is_some() && matches!(f.frame_type, FrameType::Publish | FrameType::Request)
        {
            // In order, after the message being held.
            self.held.push_back(f);
            return;
        }
        match f.frame_type {
            FrameType::Publish => {
                if f.flags.contains(Flags::ACK_REQUIRED) && !self.acks {
                    return self.refuse(
                        cx,
                        &f,
                        Status::UNSUPPORTED_FEATURE,
                        "ACKS was not negotiated",
                    );
                }
                self.on_publish(f, cx)
            }
            FrameType::Subscribe => self.on_subscribe(f, cx),
            FrameType::Unsubscribe => self.on_unsubscribe(f, cx),
            FrameType::Request => self.on_request(f, cx),
            FrameType::Register => self.on_register(f, cx),
            FrameType::Unregister => match self.services.remove(&f.aux) {
                Some(filter) => {
                    self.core.unregister(&filter, self.conn, f.aux);
                    if f.flags.contains(Flags::ACK_REQUIRED) {
                        cx.send(&Frame::ack(f.id, 0));
                    }
                }
                None => {
                    let why = format!("no service instance {}", f.aux);
                    self.refuse(cx, &f, Status::NOT_FOUND, &why)
                }
            },
            FrameType::Response => {
                if !self.core.forward_to_caller(&f) {
                    self.refuse(
                        cx,
                        &f,
                        Status::UNEXPECTED_FRAME,
                        "no call of the broker's has this id",
                    );
                }
            }
            FrameType::Stream | FrameType::Credit if f.aux == 0 => {
                // Calls the broker opened carry bit 63; the others are this client's own calls.
                if !self.core.forward_to_caller(&f) {
                    self.core.forward_to_instance(self.conn, &f);
                }
            }
            FrameType::Cancel if self.core.forward_to_instance(self.conn, &f) => {}
            FrameType::Cancel => {
                if self.core.cancel(self.conn, f.id) {
                    cx.send(&Frame::response(
                        f.id,
                        Status::CANCELLED,
                        "cancelled by the caller",
                    ));
                }
            }
            FrameType::Credit if f.aux != 0 => match decode_credit(&f.payload) {
                Ok(n) => self.mailbox.grant(f.aux, n),
                Err(e) => self.refuse(cx, &f, Status::BAD_REQUEST, &e.to_string()),
            },
            FrameType::Credit => {}
            FrameType::Health => {
                let report = HealthReport {
                    state: if self.draining {
                        HealthState::Draining
                    } else {
                        HealthState::Serving
                    },
                    uptime_ms: self.core.started.elapsed().as_millis().min(u64::MAX.into()) as u64,
                    server: self.core.cfg.name.clone(),
                    detail: None,
                };
                match Frame::health_reply(f.id, &report) {
                    Ok(r) => cx.send(&r),
                    Err(e) => cx.send(&Frame::error(f.id, Status::INTERNAL, &e.to_string())),
                }
            }
            FrameType::Stats => {
                let mut values = self.core.stats.snapshot();
                values.insert(
                    "uptime_ms".into(),
                    self.core.started.elapsed().as_millis().min(u64::MAX.into()) as u64,
                );
                match Frame::stats_reply(f.id, &StatsReport { values }) {
                    Ok(r) => cx.send(&r),
                    Err(e) => cx.send(&Frame::error(f.id, Status::INTERNAL, &e.to_string())),
                }
            }
            // An ACK or NACK that matches nothing pending is ignored (it may have crossed a
            // redelivery or the end of the subscription).
            FrameType::Ack if f.aux != 0 => {
                if self.mailbox.ack(f.aux, f.id) {
                    bump(&self.core.stats.acks);
                }
            }
            FrameType::Nack if f.aux != 0 => {
                let delay = decode_opt_u32(&f.payload, "NACK")
                    .ok()
                    .flatten()
                    .map(|ms| Duration::from_millis(ms.into()));
                if self.mailbox.nack(f.aux, f.id, delay) {
                    bump(&self.core.stats.nacks);
                }
            }
            FrameType::Ack | FrameType::Nack => {}
            FrameType::Error => tracing::debug!(
                status = %f.status,
                reason = %String::from_utf8_lossy(&f.payload),
                "error from client"
            ),
            FrameType::Close => cx.close(Status::OK, "closing after the client's CLOSE"),
            other => {
                bump(&self.core.stats.protocol_errors);
                self.refuse(
                    cx,
                    &f,
                    Status::UNEXPECTED_FRAME,
                    &format!("a broker does not accept {}", other.name()),
                );
            }
        }
    }

    fn on_command(&mut self, c: Option<BrokerCmd>, cx: &mut Ctx<'_>) {
        match c {
            Some(BrokerCmd::Wake) | None => {}
            Some(BrokerCmd::Drain) => {
                self.draining = true;
                // What is queued goes first: the driver sends CLOSE after the outbox.
                let mut d = Drained::default();
                while self.mailbox.drain_into(cx, usize::MAX, &mut d) && !cx.backlogged() {}
                self.account(&d);
                cx.close(Status::OK, "broker shutting down");
            }
        }
    }

    fn on_closed(&mut self, _why: &Error) {
        let services: Vec<(u32, String)> = self.services.drain().collect();
        match self.session.take() {
            Some((id, token)) if !self.draining && !self.core.draining() => {
                self.core
                    .detach(self.conn, id, token, self.mailbox.clone(), &services)
            }
            _ => self
                .core
                .connection_gone(self.conn, &self.mailbox, &services),
        }
    }

    fn read_paused(&self) -> bool {
        self.parked.is_some()
    }

    fn poll_outbound(&mut self, cx: &mut Ctx<'_>) -> bool {
        let unparked = self.retry_parked(cx);
        let mut d = Drained::default();
        let progress = self.mailbox.drain_into(cx, 256, &mut d);
        self.account(&d);
        progress || unparked
    }
}

impl BrokerReactor {
    /// Offers the held message again to the subscriptions that were full; true once it is
    /// delivered (or given up), so that reading resumes.
    fn retry_parked(&mut self, cx: &mut Ctx<'_>) -> bool {
        let Some(p) = self.parked.as_mut() else {
            return false;
        };
        let waker = cx.waker().clone();
        let mut task = std::task::Context::from_waker(&waker);
        loop {
            let Some(t) = p.targets.last().cloned() else {
                break;
            };
            if let Some(room) = p.room.as_mut() {
                if room.as_mut().poll(&mut task).is_pending() {
                    if p.deadline.as_mut().poll(&mut task).is_pending() {
                        return false;
                    }
                    // Held too long: refuse, as a publisher would be without blocking.
                    let why = format!(
                        "{} subscriber(s) of {} stayed full for {} ms",
                        p.targets.len(),
                        p.subject,
                        self.core.cfg.max_block_ms
                    );
                    let (id, n) = (p.id, p.targets.len());
                    self.parked = None;
                    self.core
                        .stats
                        .publish_rejections
                        .fetch_add(n as u64, Ordering::Relaxed);
                    cx.send(&Frame::error(id, Status::BACKPRESSURE_REJECTION, &why));
                    self.resume_held(cx);
                    return true;
                }
            }
            // Armed before the attempt, so that room made right after it wakes this task.
            p.room = Some(t.mailbox.room_owned());
            let mut r = crate::core::Routed::default();
            if self.core.offer(&t, p.event.clone(), &mut r).is_some() {
                continue;
            }
            p.targets.pop();
            p.room = None;
        }
        let done = self.parked.take();
        if let Some(p) = done {
            if p.ack {
                cx.send(&Frame::ack(p.id, 0));
            }
        }
        self.resume_held(cx);
        true
    }

    /// Handles the messages that arrived behind a held one, until one is held again.
    fn resume_held(&mut self, cx: &mut Ctx<'_>) {
        while self.parked.is_none() {
            let Some(f) = self.held.pop_front() else {
                return;
            };
            self.on_frame(f, cx);
        }
    }

    fn account(&self, d: &Drained) {
        let s = &self.core.stats;
        s.msgs_out.fetch_add(d.events, Ordering::Relaxed);
        s.bytes_out.fetch_add(d.bytes, Ordering::Relaxed);
        for (sid, filter) in &d.finished {
            self.core.unsubscribe(filter, self.conn, *sid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn permission_filters_cover_requested_filters() {
        assert!(covers("orders.>", "orders.eu.created"));
        assert!(covers("orders.>", "orders.*"));
        assert!(covers("orders.>", "orders.>"));
        assert!(covers("orders.*", "orders.eu"));
        assert!(covers("orders.*", "orders.*"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(!covers("orders.*", "orders.eu.x"));
        assert!(!covers("orders.eu", "orders.*"));
        assert!(!covers("orders.>", "orders"));
        assert!(covers(">", "anything.at.all"));
    }
}
