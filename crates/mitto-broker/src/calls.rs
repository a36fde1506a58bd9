//! Requests and service calls through the broker, the core's side: who may answer what, and
//! what each party is told (PROTOCOL.md 10.1, 11.5). One rule for every connection, over a
//! socket or in-process:
//!
//! - a RESPONSE, STREAM or CREDIT about a call the broker forwarded counts only from the
//!   connection it was forwarded to; from any other it names no call in flight there and is
//!   ignored (and counted), as a frame that crossed a CANCEL would be;
//! - a PUBLISH to one of the broker's inboxes is a reply, taken only from a connection the
//!   request was delivered to, once, while the request waits; any other is refused with
//!   FORBIDDEN, whatever the publisher's permissions;
//! - the caller alone reaches its call (CANCEL, STREAM, CREDIT), by its own id;
//! - every deadline is kept by one timer task.

use crate::core::Core;
use crate::fabric::Scope;
use crate::mailbox::Mailbox;
use crate::permissions::Permissions;
use crate::requests::{Caller, Ended, Refused, ReplyRefused, ServiceRef, ToCallee};
use crate::stats::bump;
use crate::subscriptions::SubRef;
use mitto::proto::{Flags, Frame, FrameType, HeaderKey, Headers, Status, WellKnown};
use mitto::Error;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The farthest deadline the broker arms: a peer's deadline (up to 2^64 microseconds) may reach
/// past what the clock can represent.
const FARTHEST: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl Core {
    /// What a PUBLISH from connection `conn` is, over a socket or in-process alike: a message
    /// to route (given back), or a reply to one of the broker's inboxes (taken here, even while
    /// the broker shuts down: the request waits for it). A refusal is the error to answer; a
    /// publish refused because the broker shuts down is not accepted, so the publisher keeps
    /// it (retryable).
    #[inline]
    pub(crate) fn admit_publish(
        &self,
        conn: u64,
        perms: &Permissions,
        f: Frame,
    ) -> Result<Option<Frame>, Error> {
        if let Some(token) = self.requests.inbox_token(f.subject.as_bytes()) {
            return self.reply(conn, token, &f).map(|()| None);
        }
        if self.draining() {
            return Err(Error::new(
                Status::UNAVAILABLE,
                "broker is shutting down: publish elsewhere or later",
            )
            .retryable());
        }
        if perms.restricts_publish() && !perms.may_publish(f.subject.as_str()) {
            bump(&self.stats.permission_denials);
            return Err(Error::new(
                Status::FORBIDDEN,
                format!("may not publish to {}", f.subject.as_str()),
            ));
        }
        Ok(Some(f))
    }

    /// Takes connection `conn`'s reply to inbox `token` as the request's RESPONSE.
    fn reply(&self, conn: u64, token: Option<u128>, f: &Frame) -> Result<(), Error> {
        let taken = match token {
            Some(t) => self.requests.take_reply(t, conn),
            None => Err(ReplyRefused::NoRequest),
        };
        match taken {
            Ok(caller) => {
                self.stats.ins.add(f.payload.len() as u64);
                let resp = Frame::response(caller.id, Status::OK, f.payload.clone())
                    .with_headers(f.headers.clone());
                caller.mailbox.push_control(resp);
                Ok(())
            }
            Err(why) => {
                match why {
                    ReplyRefused::NoRequest => bump(&self.stats.late_replies),
                    ReplyRefused::NotDelivered => bump(&self.stats.permission_denials),
                }
                Err(Error::new(
                    Status::FORBIDDEN,
                    format!(
                        "may not publish to {}: no request delivered to this connection waits \
                         for a reply there (a reply is taken once, before the request ends)",
                        f.subject.as_str()
                    ),
                ))
            }
        }
    }

    /// Routes a REQUEST from connection `conn`: to one registered service instance, else to
    /// the subscribers of its subject within `scope` (`Scope::All` but for the federation's
    /// copies; the first reply to the request's inbox becomes the RESPONSE). Returns the
    /// immediate answer, if any.
    pub(crate) fn request(
        self: &Arc<Self>,
        conn: u64,
        mailbox: &Arc<Mailbox>,
        f: &Frame,
        scope: &Scope,
    ) -> Option<Frame> {
        bump(&self.stats.requests);
        self.stats.ins.add(f.payload.len() as u64);
        let targets = self.targets_once(&f.subject, f.payload.len(), scope);
        let left = f
            .headers
            .deadline()
            .unwrap_or(Duration::from_millis(self.cfg.request_timeout_ms));
        if left.is_zero() {
            bump(&self.stats.request_timeouts);
            return Some(Frame::response(
                f.id,
                Status::TIMEOUT,
                "the deadline had passed when the request reached the broker",
            ));
        }
        let now = Instant::now();
        let due = now
            .checked_add(left.min(FARTHEST))
            .unwrap_or(now + Duration::from_secs(3600));
        let caller = Caller {
            conn,
            id: f.id,
            mailbox: mailbox.clone(),
        };
        let mut found = self.service_instances(f.subject.as_str());
        if found.iter().any(|r| r.fabric) {
            // The federation's proxies of other brokers' services take only calls no instance
            // here can, and never one from the fabric (it would go round between brokers).
            let from_fabric = !matches!(scope, Scope::All);
            if from_fabric || found.iter().any(|r| !r.fabric) {
                found.retain(|r| !r.fabric);
            }
        }
        if !found.is_empty() {
            return self.call_service(caller, found, f, due);
        }
        self.request_subscribers(caller, &targets, f, due, left)
    }

    /// Forwards REQUEST `f` to one of the service instances `found`; the immediate answer, if
    /// any.
    fn call_service(
        &self,
        caller: Caller,
        mut found: Vec<ServiceRef>,
        f: &Frame,
        due: Instant,
    ) -> Option<Frame> {
        // An instance that has not read what it was sent gets no more (PROTOCOL.md 9.4).
        let len = f.encoded_len();
        found.retain(|r| r.mailbox.has_control_room(len));
        let unread = || {
            Frame::response(
                f.id,
                Status::BACKPRESSURE_REJECTION,
                format!(
                    "no instance of {} has read the calls it was sent",
                    f.subject.as_str()
                ),
            )
        };
        if found.is_empty() {
            bump(&self.stats.publish_rejections);
            return Some(unread());
        }
        let opened = self.requests.open_call(caller, &found, self.turn(), due);
        match opened {
            Ok((inst, id)) => {
                let mut fwd = f.clone();
                fwd.id = id;
                if !inst.mailbox.push_request(fwd) {
                    // It filled up meanwhile: the call ends before it began.
                    self.requests.to_caller(inst.conn, id, true);
                    bump(&self.stats.publish_rejections);
                    return Some(unread());
                }
                bump(&self.stats.service_calls);
                None
            }
            Err(Refused::InstancesFull) => {
                bump(&self.stats.publish_rejections);
                Some(Frame::response(
                    f.id,
                    Status::BACKPRESSURE_REJECTION,
                    format!(
                        "every instance of {} has its maximum of calls in flight",
                        f.subject.as_str()
                    ),
                ))
            }
            Err(e) => Some(refused(f.id, e)),
        }
    }

    /// Offers REQUEST `f` to the subscribers `targets` of its subject, with an inbox for the
    /// reply; the immediate answer, if any. `left`: the time the request has.
    fn request_subscribers(
        &self,
        caller: Caller,
        targets: &[SubRef],
        f: &Frame,
        due: Instant,
        left: Duration,
    ) -> Option<Frame> {
        if f.flags.contains(Flags::START) || targets.is_empty() {
            bump(&self.stats.no_responders);
            let why = match f.flags.contains(Flags::START) {
                true => "no service registered for the streaming call",
                false => "no responders for",
            };
            return Some(Frame::response(
                f.id,
                Status::NO_RESPONDERS,
                format!("{why} {}", f.subject.as_str()),
            ));
        }
        // Every connection offered the request may answer it (one that could not take it never
        // learns the inbox), so they are named before any of them can have it.
        let recipients = targets.iter().map(|t| t.conn).collect();
        let (token, inbox) = match self.requests.open_inbox(caller, recipients, due) {
            Ok(x) => x,
            Err(e) => return Some(refused(f.id, e)),
        };
        let headers = match reply_headers(&f.headers, &inbox, left) {
            Ok(h) => h,
            Err(e) => {
                self.requests.forget_inbox(token);
                return Some(Frame::response(f.id, Status::BAD_REQUEST, e.to_string()));
            }
        };
        let routed = self.deliver(targets, self.event_of(f, headers));
        self.stats
            .publish_rejections
            .fetch_add(routed.rejected as u64, Ordering::Relaxed);
        if routed.delivered > 0 {
            return None;
        }
        self.requests.forget_inbox(token);
        bump(&self.stats.no_responders);
        let (status, why) = if routed.rejected > 0 {
            (
                Status::BACKPRESSURE_REJECTION,
                "every responder's queue is full",
            )
        } else {
            (Status::NO_RESPONDERS, "no responder could take the request")
        };
        Some(Frame::response(f.id, status, why))
    }

    /// A RESPONSE, STREAM or stream CREDIT from connection `conn` about a call the broker
    /// opened (bit 63): to the caller, if the call is in flight on `conn`; otherwise ignored.
    pub(crate) fn instance_frame(&self, conn: u64, f: &Frame) {
        let ends = f.frame_type == FrameType::Response;
        match self.requests.to_caller(conn, f.id, ends) {
            Some(caller) => {
                let mut back = f.clone();
                back.id = caller.id;
                caller.mailbox.push_control(back);
            }
            None => bump(&self.stats.stray_responses),
        }
    }

    /// A CANCEL, STREAM or stream CREDIT from connection `conn` about its own call `f.id`:
    /// forwarded to the instance; returns the answer to a CANCEL.
    pub(crate) fn caller_frame(&self, conn: u64, f: &Frame) -> Option<Frame> {
        let cancel = f.frame_type == FrameType::Cancel;
        let to = self.requests.to_callee(conn, f.id, cancel)?;
        if let ToCallee::Instance { inst, id } = to {
            let mut fwd = f.clone();
            fwd.id = id;
            inst.push_control(fwd);
        }
        if !cancel {
            return None;
        }
        bump(&self.stats.requests_cancelled);
        Some(Frame::response(
            f.id,
            Status::CANCELLED,
            "cancelled by the caller",
        ))
    }

    /// Answers TIMEOUT for what is due by `now` (and cancels service calls at the instance).
    pub(crate) fn expire_requests(&self, now: Instant) {
        for ended in self.requests.expire(now) {
            bump(&self.stats.request_timeouts);
            let caller = match ended {
                Ended::Call {
                    caller, inst, id, ..
                } => {
                    inst.push_control(Frame::cancel(id));
                    caller
                }
                Ended::Inbox { caller } => caller,
            };
            caller.mailbox.push_control(Frame::response(
                caller.id,
                Status::TIMEOUT,
                "no answer within the request's deadline",
            ));
        }
    }

    /// Ends the calls, requests and services of a connection that went away.
    pub(crate) fn release_calls(&self, conn: u64, services: &[(u32, String)]) {
        for (sid, filter) in services {
            self.unregister(filter, conn, *sid);
        }
        for ended in self.requests.release(conn) {
            let Ended::Call {
                caller,
                inst,
                inst_conn,
                id,
            } = ended
            else {
                continue;
            };
            if caller.conn == conn && inst_conn != conn {
                inst.push_control(Frame::cancel(id));
            } else if caller.conn != conn {
                caller.mailbox.push_control(Frame::response(
                    caller.id,
                    Status::UNAVAILABLE,
                    "the service instance went away",
                ));
            }
        }
    }
}

/// The answer to a request the table did not let in.
fn refused(id: u64, why: Refused) -> Frame {
    match why {
        Refused::Duplicate => Frame::error(
            id,
            Status::PROTOCOL_ERROR,
            "a call with this id is in flight",
        ),
        Refused::CallerFull(n) => Frame::response(
            id,
            Status::QUOTA_EXCEEDED,
            format!("this connection has its maximum of {n} requests in flight"),
        ),
        Refused::InstancesFull => Frame::response(
            id,
            Status::BACKPRESSURE_REJECTION,
            "every instance has its maximum of calls in flight",
        ),
    }
}

/// The request's headers for its subscribers: `reply-to` the inbox and the deadline left, the
/// rest as the caller sent them.
fn reply_headers(
    h: &Headers,
    inbox: &str,
    left: Duration,
) -> Result<Headers, mitto::proto::EncodeError> {
    let mut b = Headers::builder();
    for (k, v) in h.iter() {
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
    Ok(b.insert(WellKnown::ReplyTo, inbox)?.deadline(left).build())
}

/// Ends requests and calls at their deadlines, until shutdown: one task for the whole broker,
/// asleep until the next deadline or a new earlier one.
pub(crate) async fn deadline_loop(core: Arc<Core>) {
    let mut stop = core.shutdown.subscribe();
    loop {
        // Created before the next deadline is read: a deadline added meanwhile wakes it.
        let woken = core.requests.woken();
        let next = core.requests.poll_timeout();
        let sleep = async move {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = woken => {}
            _ = sleep => {}
        }
        core.expire_requests(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;

    fn caller(id: u64) -> Caller {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        Caller {
            conn: 1,
            id,
            mailbox: Arc::new(Mailbox::new(tx, 1 << 20, Default::default())),
        }
    }

    fn publish(subject: &str) -> Frame {
        Frame::publish(mitto::proto::Subject::new(subject).unwrap(), "x")
    }

    /// One rule for every entry point: permissions, then shutdown, and replies to inboxes
    /// taken whatever else holds (the request waits for them).
    #[tokio::test]
    async fn admit_publish_refuses_forbidden_and_late_publishes_but_takes_replies() {
        let core = Core::new(BrokerConfig::default());
        let user = crate::config::User {
            name: "u".into(),
            publish: vec!["ok.>".into()],
            ..Default::default()
        };
        let perms = Permissions::of(Some(&user));
        assert!(core
            .admit_publish(5, &perms, publish("ok.1"))
            .unwrap()
            .is_some());
        let e = core.admit_publish(5, &perms, publish("no.1")).unwrap_err();
        assert_eq!(e.status(), Status::FORBIDDEN);
        let far = Instant::now() + Duration::from_secs(60);
        let (_, inbox) = core.requests.open_inbox(caller(1), vec![5], far).unwrap();
        core.stop();
        let e = core.admit_publish(5, &perms, publish("ok.2")).unwrap_err();
        assert_eq!(e.status(), Status::UNAVAILABLE);
        assert!(e.is_retryable(), "the publisher keeps it");
        let reply = core.admit_publish(5, &perms, publish(&inbox));
        assert!(reply.unwrap().is_none(), "taken as the reply");
        let again = core.admit_publish(5, &perms, publish(&inbox)).unwrap_err();
        assert_eq!(again.status(), Status::FORBIDDEN, "once");
    }

    /// In virtual time: the deadline task sleeping for a far deadline wakes for an earlier one
    /// added meanwhile, and answers each at its deadline, not later.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_task_keeps_every_deadline_on_time() {
        let core = Arc::new(Core::new(BrokerConfig::default()));
        tokio::spawn(deadline_loop(core.clone()));
        let timeouts = || core.stats.request_timeouts.load(Ordering::Relaxed);
        let t0 = Instant::now();
        core.requests
            .open_inbox(caller(1), vec![2], t0 + Duration::from_secs(10))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await; // the task now sleeps for 10 s
        core.requests
            .open_inbox(caller(2), vec![2], t0 + Duration::from_millis(300))
            .unwrap();
        tokio::time::sleep_until(t0 + Duration::from_millis(299)).await;
        assert_eq!(timeouts(), 0);
        tokio::time::sleep_until(t0 + Duration::from_millis(301)).await;
        assert_eq!(timeouts(), 1, "at 300 ms, not at the far deadline");
        tokio::time::sleep_until(t0 + Duration::from_millis(9_999)).await;
        assert_eq!(timeouts(), 1);
        tokio::time::sleep_until(t0 + Duration::from_millis(10_001)).await;
        assert_eq!(timeouts(), 2);
        core.stop();
    }
}
