//! One client connection at the broker: the HELLO (`hello.rs`), then a reactor on the
//! runtime's connection driver that turns frames into calls on the shared core and moves the
//! connection's mailbox to its socket.

mod control;
mod hello;
mod parked;

use crate::connections::ConnInfo;
use crate::core::Core;
use crate::fabric::Scope;
use crate::groups::QueueGroup;
use crate::mailbox::{Drained, Mailbox, SubQueue};
use crate::permissions::Permissions;
use crate::requests::{ServiceRef, BROKER_CALL_BIT};
use crate::sessions::Session;
use crate::shared::{BrokerCmd, Waker};
use crate::stats::bump;
use crate::subscriptions::SubRef;
use crate::takeover::Claim;
use hello::Admitted;
use parked::Parked;

use mitto::__private::conn::{Ctx, Driver, DriverConfig, Reactor};
use mitto::__private::transport::Incoming;
use mitto::proto::body::{decode_credit, decode_opt_u32};
use mitto::proto::negotiate::Features;
use mitto::proto::{Delivery, Flags, Frame, FrameType, Status, SubscribeOptions};
use mitto::Error;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Serves one connection: its handshake, then its driver, then what it leaves behind.
pub(crate) async fn serve(core: Arc<Core>, inc: Incoming, conn: u64) {
    let peer = inc.peer.clone();
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let Some(mut a) = hello::handshake(&core, inc, conn, &ctl_tx).await else {
        return;
    };
    if !hello::take_over(&core, &mut a).await {
        // Answered RESUMED, but the session did not come: the client must reconnect.
        let why = "the session could not be taken over in time; reconnect to resume it";
        let _ = ctl_tx.send(BrokerCmd::Close(Status::UNAVAILABLE, why));
    }
    let (conn, mailbox) = attach(&core, conn, &mut a, &ctl_tx);
    let backlog = register(&core, conn, &mailbox, &ctl_tx, peer, &a.hello);
    let live = a
        .session
        .as_ref()
        .map(|s| core.attached.enter(s, ctl_tx.clone()));
    run(&core, conn, mailbox, a, backlog, ctl_rx, live).await;
    core.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
    // A resumed session may already have taken this id over: then its entry stays.
    core.conns.remove(conn, &ctl_tx);
}

/// The connection's id and mailbox: its resumed session's, or new ones.
fn attach(core: &Arc<Core>, conn: u64, a: &mut Admitted, wake: &Waker) -> (u64, Arc<Mailbox>) {
    let peer = crate::fit::Peer::of(&a.agreed);
    let max_payload = core.cfg.max_payload;
    match a.resumed.take() {
        Some(d) => {
            tracing::debug!(old = d.conn, "session resumed");
            d.mailbox.set_local(a.is_local);
            d.mailbox.set_peer(peer, max_payload);
            d.mailbox.set_waker(wake.clone());
            crate::streams::on_resume(core, d.conn, &a.perms, &d.mailbox);
            (d.conn, d.mailbox)
        }
        None => {
            let m = a
                .fresh
                .take()
                .unwrap_or_else(|| hello::new_mailbox(core, wake.clone()));
            m.set_peer(peer, max_payload);
            (conn, m)
        }
    }
}

/// Enters the connection in the broker's table (shutdown and monitoring reach it there);
/// returns where its driver counts its outbox.
fn register(
    core: &Core,
    conn: u64,
    mailbox: &Arc<Mailbox>,
    wake: &Waker,
    peer: String,
    hello: &mitto::proto::Hello,
) -> Arc<AtomicUsize> {
    let backlog = Arc::new(AtomicUsize::new(0));
    let info = ConnInfo {
        ctl: wake.clone(),
        mailbox: mailbox.clone(),
        backlog: backlog.clone(),
        peer,
        name: hello.name.clone(),
        user: hello.user.clone(),
    };
    core.conns.insert(conn, info);
    bump(&core.stats.connections_total);
    bump(&core.stats.connections_open);
    if core.draining() {
        let _ = wake.send(BrokerCmd::Drain);
    }
    backlog
}

/// Runs the connection's driver until it ends.
async fn run(
    core: &Arc<Core>,
    conn: u64,
    mailbox: Arc<Mailbox>,
    a: Admitted,
    backlog: Arc<AtomicUsize>,
    ctl: mpsc::UnboundedReceiver<BrokerCmd>,
    live: Option<Arc<Claim>>,
) {
    let agreed = &a.agreed;
    let keepalive =
        (agreed.keepalive_ms > 0).then(|| Duration::from_millis(agreed.keepalive_ms.into()));
    let config = DriverConfig {
        limits: agreed.limits,
        keepalive,
        busy_poll: core.busy_poll.clone(),
        spin: core.spin,
        // A client that does not read is held by its transport, then closed.
        slow_reader: Some(core.budget.slow_reader()),
        backlog: Some(backlog),
    };
    let reactor = BrokerReactor {
        core: core.clone(),
        conn,
        mailbox,
        perms: a.perms,
        acks: agreed.features.contains(Features::ACKS),
        lz4: agreed.features.contains(Features::COMPRESSION_LZ4),
        user: a.hello.user.clone(),
        draining: false,
        services: HashMap::new(),
        session: a.session,
        live,
        taken_over: false,
        closed_by_client: false,
        parked: None,
        routes: crate::core::RouteCache::publisher(),
        held: Default::default(),
        fabric: crate::fabric::is_federation(a.is_local, &a.hello.name),
    };
    // The broker drives the connection through `ctl` alone: its command queue is closed from
    // the start (the driver reads that once, as no command).
    let (_, cmds) = mpsc::channel(1);
    let driver = Driver::new(a.io, a.leftover, config, reactor, cmds, ctl);
    if let Err(e) = driver.run().await {
        if e.status() == Status::SLOW_CONSUMER {
            bump(&core.stats.slow_connections_closed);
            tracing::info!(error = %e, "slow consumer closed");
        } else {
            tracing::debug!(error = %e, "connection ended");
        }
    }
}

struct BrokerReactor {
    core: Arc<Core>,
    conn: u64,
    mailbox: Arc<Mailbox>,
    perms: Permissions,
    acks: bool,
    /// COMPRESSION_LZ4 was negotiated.
    lz4: bool,
    /// The authenticated user (empty without users): durable names are per user.
    user: String,
    draining: bool,
    /// Registered service instances: id -> filter.
    services: HashMap<u32, String>,
    /// The session, when the client can resume it.
    session: Option<Session>,
    /// The session's entry among the attached ones, through which a new connection of the
    /// same client takes it over.
    live: Option<Arc<Claim>>,
    /// The session went to a new connection: this one only closes, and touches nothing of it.
    taken_over: bool,
    /// The client sent CLOSE: its session ends with the connection (only a lost connection
    /// keeps it, PROTOCOL.md 8.5).
    closed_by_client: bool,
    /// A PUBLISH waiting for full `block` subscriptions to make room.
    parked: Option<Parked>,
    /// PUBLISH and REQUEST frames read behind the held one (reading is paused meanwhile, so
    /// only what one read brought in).
    held: std::collections::VecDeque<Frame>,
    /// Where this connection's last published subject goes.
    routes: crate::core::RouteCache,
    /// The broker's own federation: its PUBLISH and REQUEST frames say which subscriptions
    /// they go to (`fabric.rs`).
    fabric: bool,
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

    fn on_publish(&mut self, mut f: Frame, cx: &mut Ctx<'_>) {
        let (id, ack) = (f.id, f.flags.contains(Flags::ACK_REQUIRED));
        let scope = match self.fabric {
            true => crate::fabric::take(&mut f),
            false => Scope::All,
        };
        // A reply to an inbox is taken here; anything else is routed.
        let f = match self.core.admit_publish(self.conn, &self.perms, f) {
            Ok(Some(f)) => f,
            Ok(None) if ack => return self.ack_publish(id, cx),
            Ok(None) => return,
            Err(e) => return cx.send(&Frame::error(id, e.status(), e.message())),
        };
        // A stream that captures the subject stores it; the publish's one answer then waits for
        // the store as well as for the routing.
        let (ack, stored) = match crate::streams::capture_in(&self.core, &f, &scope) {
            Ok(Some(stored)) if ack => (false, Some(stored)),
            Ok(_) => (ack, None),
            Err(e) => return cx.send(&Frame::error(id, e.status(), e.message())),
        };
        // The frame itself becomes the EVENT (no copy of its parts), as for an in-process
        // publisher.
        let (mut routed, stored) =
            match (self.core.publish_owned(f, &mut self.routes, &scope), stored) {
                (Ok(r), stored) => (r, stored),
                (Err(e), Some(stored)) => {
                    let mb = self.mailbox.clone();
                    return crate::streams::answer_when_stored(stored, id, Err(e), mb);
                }
                (Err(e), None) => return cx.send(&Frame::error(id, e.status(), e.message())),
            };
        if let Some(b) = routed.blocked.take() {
            // Full `block` subscriptions: hold the publisher (stop reading its connection)
            // until they make room, instead of refusing.
            let crate::core::Blocked {
                targets,
                event,
                born,
            } = *b;
            self.parked = Some(Parked {
                targets,
                born,
                id,
                ack,
                stored,
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
        if let Some(stored) = stored {
            crate::streams::answer_when_stored(stored, id, Ok(()), self.mailbox.clone());
        } else if ack {
            self.ack_publish(id, cx);
        }
    }

    /// Tells a publisher its message is taken.
    fn ack_publish(&self, id: u64, cx: &mut Ctx<'_>) {
        bump(&self.core.stats.publish_acks);
        cx.send(&Frame::ack(id, 0));
    }

    fn on_subscribe(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        let filter = f.subject.as_str().to_owned();
        let opts = match self.subscribe_options(&f, &filter) {
            Ok(o) => o,
            Err((status, why)) => return self.refuse(cx, &f, status, &why),
        };
        if crate::streams::is_consumer_subject(&filter) {
            let (core, mb) = (&self.core, &self.mailbox);
            if let Err(e) =
                crate::streams::on_subscribe(core, self.conn, &self.perms, mb, &f, &opts)
            {
                return self.refuse(cx, &f, e.status(), e.message());
            }
            if f.flags.contains(Flags::ACK_REQUIRED) {
                cx.send(&Frame::ack(f.id, 0));
            }
            return;
        }
        let durable = opts
            .durable
            .as_deref()
            .map(|name| crate::durable::key(&self.user, name));
        let sq = SubQueue::for_options(
            filter.clone(),
            &opts,
            &self.core.cfg,
            self.mailbox.is_local(),
            durable.clone(),
        );
        if !self.mailbox.add_sub(f.aux, sq) {
            let why = format!("subscription id {} is in use", f.aux);
            return self.refuse(cx, &f, Status::ALREADY_EXISTS, &why);
        }
        let r = SubRef {
            conn: self.conn,
            sid: f.aux,
            queue: QueueGroup::of(&filter, opts.queue),
            durable: durable.clone(),
            mailbox: self.mailbox.clone(),
        };
        match &durable {
            None => self.core.subscribe(&filter, r),
            Some(key) => {
                if let Err(why) = self.core.bind_durable(r, key, &self.user, &filter) {
                    self.mailbox.remove_sub(f.aux);
                    let (status, reason) = why.answer(opts.durable.as_deref().unwrap_or_default());
                    return self.refuse(cx, &f, status, &reason);
                }
            }
        }
        if f.flags.contains(Flags::ACK_REQUIRED) {
            cx.send(&Frame::ack(f.id, 0));
        }
    }

    /// The options of SUBSCRIBE `f` to `filter`, if this connection may subscribe so; else
    /// the refusal.
    fn subscribe_options(
        &self,
        f: &Frame,
        filter: &str,
    ) -> Result<SubscribeOptions, (Status, String)> {
        if self.core.is_inbox(filter) || filter.starts_with("_INBOX.>") {
            return Err((
                Status::FORBIDDEN,
                "broker inboxes are not subscribable".into(),
            ));
        }
        if !self.perms.may_subscribe(filter) {
            return Err((Status::FORBIDDEN, format!("may not subscribe to {filter}")));
        }
        let opts = SubscribeOptions::decode(&f.payload, "SUBSCRIBE")
            .map_err(|e| (Status::BAD_REQUEST, e.to_string()))?;
        if opts.delivery == Delivery::AtLeastOnce && !self.acks {
            return Err((
                Status::UNSUPPORTED_FEATURE,
                "ACKS was not negotiated".into(),
            ));
        }
        if opts.durable.is_some() && opts.queue.is_some() {
            let why = "a durable subscription cannot be in a queue group";
            return Err((Status::BAD_REQUEST, why.into()));
        }
        let max = self.core.budget.post_auth.max_subscriptions;
        if self.mailbox.sub_count() >= max {
            let why = format!("this connection has its maximum of {max} subscriptions");
            return Err((Status::QUOTA_EXCEEDED, why));
        }
        Ok(opts)
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
        if self.services.len() + self.mailbox.sub_count()
            >= self.core.budget.post_auth.max_subscriptions
        {
            let why = "this connection has its maximum of subscriptions and services";
            return self.refuse(cx, &f, Status::QUOTA_EXCEEDED, why);
        }
        self.services.insert(f.aux, filter.clone());
        let limit = self.core.cfg.max_pending_msgs;
        let r = ServiceRef {
            conn: self.conn,
            sid: f.aux,
            max_pending: match opts.max_pending {
                0 => limit,
                n => n.min(limit),
            },
            queue: QueueGroup::of(&filter, opts.queue),
            mailbox: self.mailbox.clone(),
            fabric: self.fabric,
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
        crate::streams::on_unsubscribe(&self.core, self.conn, f.aux);
        let known = match after {
            Some(n) if n > 0 => self.mailbox.unsubscribe_after(f.aux, n),
            _ => self
                .core
                .end_subscription(self.conn, &self.mailbox, f.aux)
                .is_some(),
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

    fn on_request(&mut self, mut f: Frame, cx: &mut Ctx<'_>) {
        let subject = f.subject.as_str();
        if f.id & BROKER_CALL_BIT != 0 {
            bump(&self.core.stats.protocol_errors);
            let why = "a connecting peer's call ids have bit 63 clear (PROTOCOL.md 10.1)";
            return self.refuse(cx, &f, Status::PROTOCOL_ERROR, why);
        }
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
        if crate::streams::is_admin(subject) {
            return crate::streams::admin_request(&self.core, &self.perms, &self.mailbox, &f);
        }
        let scope = match self.fabric {
            true => crate::fabric::take(&mut f),
            false => Scope::All,
        };
        if let Some(answer) = self.core.request(self.conn, &self.mailbox, &f, &scope) {
            cx.send(&answer);
        }
    }
}

impl Reactor for BrokerReactor {
    type Cmd = BrokerCmd;

    fn on_frame(&mut self, f: Frame, cx: &mut Ctx<'_>) {
        if self.taken_over {
            return;
        }
        if self.parked.is_some() && matches!(f.frame_type, FrameType::Publish | FrameType::Request)
        {
            // In order, after the message being held.
            self.held.push_back(f);
            return;
        }
        if f.flags.contains(Flags::COMPRESSED) && !self.compressed_ok(&f, cx) {
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
            FrameType::Unregister => self.on_unregister(f, cx),
            FrameType::Response | FrameType::Cancel => self.on_call_frame(f, cx),
            FrameType::Stream | FrameType::Credit if f.aux == 0 => self.on_call_frame(f, cx),
            FrameType::Credit => match decode_credit(&f.payload) {
                Ok(n) => self.mailbox.grant(f.aux, n),
                Err(e) => self.refuse(cx, &f, Status::BAD_REQUEST, &e.to_string()),
            },
            FrameType::Health | FrameType::Stats => self.on_query(f, cx),
            FrameType::Ack | FrameType::Nack => self.on_ack(f),
            FrameType::Error => tracing::debug!(
                status = %f.status,
                reason = %String::from_utf8_lossy(&f.payload),
                "error from client"
            ),
            FrameType::Close => {
                self.closed_by_client = true;
                cx.close(Status::OK, "closing after the client's CLOSE")
            }
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
        if self.taken_over {
            return;
        }
        match c {
            Some(BrokerCmd::Wake) => self.check_overflow(cx),
            None => {}
            Some(BrokerCmd::Drain) => {
                // What is queued goes out first (poll_outbound), then CLOSE.
                self.draining = true;
                crate::drain::close_if_drained(&self.mailbox, self.parked.is_some(), cx);
            }
            Some(BrokerCmd::DrainDeadline) => {
                crate::drain::close_undrained(&self.core, self.conn, &self.mailbox, cx)
            }
            Some(BrokerCmd::TakenOver) => self.hand_over(cx),
            Some(BrokerCmd::Close(status, why)) => cx.close(status, why),
        }
    }

    fn on_closed(&mut self, _why: &Error) {
        if self.taken_over {
            // Its session went to the connection that took it over.
            return;
        }
        let Some(claim) = self.live.take() else {
            return self.end_session();
        };
        // A HELLO claims the session before this ends it or keeps it, or resumes it after.
        if claim.end(|| self.end_session()) {
            self.give_session(&claim);
        }
        self.core.attached.leave(&claim);
    }

    fn read_paused(&self) -> bool {
        self.parked.is_some()
    }

    fn poll_outbound(&mut self, cx: &mut Ctx<'_>) -> bool {
        self.check_overflow(cx);
        let unparked = self.retry_parked(cx);
        let mut d = Drained::default();
        let progress = self.mailbox.drain_into(cx, 256, &mut d);
        self.account(d);
        if self.draining {
            crate::drain::close_if_drained(&self.mailbox, self.parked.is_some(), cx);
        }
        progress || unparked
    }
}

impl BrokerReactor {
    /// The connection ended: its session is kept if the connection was lost, else it ends.
    fn end_session(&mut self) {
        let services: Vec<(u32, String)> = self.services.drain().collect();
        // Only a lost connection keeps its session: not one the client closed, nor one the
        // broker closed to shut down.
        let lost = !self.closed_by_client && !self.draining && !self.core.draining();
        let kept = lost && self.session.is_some();
        crate::streams::on_gone(&self.core, self.conn, &self.mailbox, kept);
        match self.session.take() {
            Some(s) if lost => {
                self.core
                    .detach(self.conn, s.key, s.token, self.mailbox.clone(), &services)
            }
            _ => self
                .core
                .connection_gone(self.conn, &self.mailbox, &services),
        }
    }

    /// A new connection of the same client claimed the session (PROTOCOL.md 8.5): it goes
    /// there now, and this connection closes saying why, touching nothing of it any more.
    fn hand_over(&mut self, cx: &mut Ctx<'_>) {
        let Some(claim) = self.live.take() else {
            return;
        };
        if !claim.claimed() {
            // The claimant stopped waiting: this connection keeps its session.
            self.live = Some(claim);
            return;
        }
        cx.close(Status::ALREADY_EXISTS, crate::takeover::TAKEN_OVER);
        self.give_session(&claim);
    }

    /// Hands the session over to the connection that claimed it.
    fn give_session(&mut self, claim: &Claim) {
        self.taken_over = true;
        let services: Vec<(u32, String)> = self.services.drain().collect();
        if let Some(s) = self.session.take() {
            crate::streams::on_gone(&self.core, self.conn, &self.mailbox, true);
            let mb = self.mailbox.clone();
            self.core.hand_over(claim, self.conn, s, mb, &services);
        }
    }

    /// Ends a connection whose mailbox could not take what other connections sent it (it
    /// reads nothing): everything it waits for fails with the connection.
    fn check_overflow(&self, cx: &mut Ctx<'_>) {
        if self.mailbox.overflowed() {
            let (_, control) = self.mailbox.queued_bytes();
            cx.fail(Error::new(
                Status::SLOW_CONSUMER,
                format!(
                    "{control} bytes of answers and calls wait for this connection, which does \
                     not read them (max_pending_bytes {})",
                    self.core.cfg.max_pending_bytes
                ),
            ));
        }
    }

    fn account(&self, d: Drained) {
        let s = &self.core.stats;
        s.msgs_out.fetch_add(d.events, Ordering::Relaxed);
        s.bytes_out.fetch_add(d.bytes, Ordering::Relaxed);
        for (sid, sq) in d.finished {
            self.core.end_taken(self.conn, sid, Box::new(sq));
        }
    }

    /// A COMPRESSED frame this connection may not send, or whose block is corrupt, is refused.
    fn compressed_ok(&self, f: &Frame, cx: &mut Ctx<'_>) -> bool {
        match crate::fit::check_compressed(f, self.lz4, cx.limits().max_payload) {
            Ok(()) => true,
            Err((status, why)) => {
                self.refuse(cx, f, status, &why);
                false
            }
        }
    }
}
