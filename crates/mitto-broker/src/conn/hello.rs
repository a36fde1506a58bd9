//! A connection's way in: the transport's setup and the HELLO, within one timeout and a place
//! among the connections in their handshake; the checks that admit it (shutdown, the
//! connection bound, credentials with a growing pause after a refusal) and its session, new
//! or resumed. A client in this process gets its direct entry points here, before the HELLO
//! reply.

use crate::config::User;
use crate::core::Core;
use crate::local::Port;
use crate::mailbox::Mailbox;
use crate::permissions::Permissions;
use crate::sessions::{Detached, Session, SessionKey};
use crate::shared::Waker;
use crate::stats::bump;
use crate::takeover::{Claim, Claimed};
use bytes::{Bytes, BytesMut};
use mitto::__private::transport::{Incoming, Io, PortSlot};
use mitto::proto::negotiate::{Features, Negotiated};
use mitto::proto::{Hello, Status, Version};
use mitto::Error;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// An admitted connection: its transport, what was agreed, its HELLO, the bytes read past it,
/// and what admitting it decided.
pub(super) struct Admitted {
    pub(super) io: Io,
    pub(super) agreed: Negotiated,
    pub(super) hello: Hello,
    pub(super) leftover: BytesMut,
    pub(super) perms: Permissions,
    pub(super) session: Option<Session>,
    /// The detached session it took back.
    pub(super) resumed: Option<Detached>,
    /// The attached session it claimed from another connection, still to be handed over.
    pub(super) takeover: Option<Arc<Claim>>,
    /// The mailbox already given to an in-process client's entry points.
    pub(super) fresh: Option<Arc<Mailbox>>,
    pub(super) is_local: bool,
}

/// What admitting a HELLO decides besides the answer.
#[derive(Default)]
struct Decision {
    perms: Permissions,
    session: Option<Session>,
    resumed: Option<Detached>,
    takeover: Option<Arc<Claim>>,
    fresh: Option<Arc<Mailbox>>,
}

/// A new connection's mailbox, with the budgets of `budget.rs`.
pub(super) fn new_mailbox(core: &Core, wake: Waker) -> Arc<Mailbox> {
    let b = &core.budget.post_auth;
    Arc::new(
        Mailbox::new(wake, b.pending_bytes, core.stats.losses.clone())
            .with_max_unacked(b.unacked_bytes),
    )
}

/// Sets up the transport and takes the HELLO of connection `conn`; `None` if it was refused or
/// failed (counted).
pub(super) async fn handshake(
    core: &Arc<Core>,
    inc: Incoming,
    conn: u64,
    wake: &Waker,
) -> Option<Admitted> {
    let peer = inc.peer.clone();
    let slot = inc.port_slot();
    let is_local = slot.is_some();
    // Until its HELLO is accepted a socket holds a place among the connections in their
    // handshake (in-process peers are this program's own).
    let ticket = (!is_local).then(|| {
        let (t, evicted) = core.handshakes.enter();
        if evicted {
            bump(&core.stats.handshakes_evicted);
        }
        t
    });
    let mut d = Decision::default();
    let admit = |h: &Hello| {
        let answer = decide(core, conn, h, is_local, &mut d)?;
        if let Some(slot) = &slot {
            let fabric = crate::fabric::is_federation(is_local, &h.name);
            offer_port(core, conn, slot, wake, fabric, &mut d);
        }
        Ok(answer)
    };
    let refused = |e: &Error| refusal_delay(core, &peer, e);
    // The transport's setup (TLS) and the HELLO, within one timeout.
    let timeout = core.budget.pre_auth.timeout;
    let local = server_hello(core);
    let accepting = mitto::__private::handshake::accept(inc, &local, timeout, admit, refused);
    let outcome = match &ticket {
        Some(t) => tokio::select! {
            r = accepting => r,
            () = t.evicted() => Err(Error::new(
                Status::UNAVAILABLE,
                "closed for a newer connection: too many connections in their handshake",
            )),
        },
        None => accepting.await,
    };
    drop(ticket);
    match outcome {
        Ok((io, agreed, hello, leftover)) => Some(Admitted {
            io,
            agreed,
            hello,
            leftover,
            perms: d.perms,
            session: d.session,
            resumed: d.resumed,
            takeover: d.takeover,
            fresh: d.fresh,
            is_local,
        }),
        Err(e) => {
            if let Some(claim) = d.takeover.take() {
                // Claimed, then the reply failed: the session stays for a later resumption.
                if let Some(back) = claim.abandon() {
                    let key = claim.key.clone();
                    core.detach(back.conn, key, back.token, back.mailbox, &[]);
                }
            }
            bump(&core.stats.handshakes_failed);
            if e.status() == Status::TIMEOUT {
                bump(&core.stats.handshake_timeouts);
            }
            tracing::debug!(error = %e, "handshake refused");
            None
        }
    }
}

/// The broker's HELLO.
fn server_hello(core: &Core) -> Hello {
    let cfg = &core.cfg;
    Hello {
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
    }
}

/// Admits HELLO `h` of connection `conn`, or refuses it: its client id, session id and
/// whether the session was resumed (or taken over).
fn decide(
    core: &Core,
    conn: u64,
    h: &Hello,
    is_local: bool,
    d: &mut Decision,
) -> Result<(String, String, bool), Error> {
    if core.draining() {
        return Err(Error::new(Status::UNAVAILABLE, "broker is shutting down").retryable());
    }
    let max = core.cfg.max_connections;
    if core.stats.connections_open.load(Ordering::Relaxed) >= max as u64 {
        bump(&core.stats.connections_refused);
        let why = format!("the broker has its maximum of {max} connections");
        return Err(Error::new(Status::QUOTA_EXCEEDED, why).retryable());
    }
    let user = authenticate(core, h).inspect_err(|_| bump(&core.stats.auth_failures))?;
    d.perms = Permissions::of(user);
    if h.client_id.is_empty() || !h.features.contains(Features::SESSION_RESUME) {
        return Ok((format!("c{conn}"), String::new(), false));
    }
    // Sessions belong to the user: another user's client id is another session.
    let key = SessionKey {
        user: user.map(|u| u.name.clone()).unwrap_or_default(),
        client_id: h.client_id.clone(),
    };
    let id = h.client_id.clone();
    if !h.session.is_empty() {
        let mut back = core.resume(&key, &h.session);
        // Still attached to a connection the broker did not see die: taken over (an
        // in-process client's entry points are handed out here, before any hand-over).
        if back.is_none() && !is_local {
            match core.attached.claim(&key, &h.session) {
                Claimed::Pending(claim) => d.takeover = Some(claim),
                Claimed::Ended => back = core.resume(&key, &h.session),
                Claimed::Nothing => {}
            }
        }
        if back.is_some() || d.takeover.is_some() {
            let token = h.session.clone();
            d.resumed = back;
            d.session = Some(Session {
                key,
                token: token.clone(),
            });
            return Ok((id, token, true));
        }
    }
    let s = Session::fresh(key);
    let token = s.token.clone();
    d.session = Some(s);
    Ok((id, token, false))
}

/// Waits for the connection that held the session `a` claimed to hand it over; `false` if it
/// did not within the handshake's time (the session is then kept detached for a later try).
pub(super) async fn take_over(core: &Core, a: &mut Admitted) -> bool {
    let Some(claim) = a.takeover.take() else {
        return true;
    };
    let Some(d) = claim.take(core.budget.pre_auth.timeout).await else {
        a.session = None;
        return false;
    };
    bump(&core.stats.sessions_resumed);
    a.resumed = Some(d);
    true
}

/// Gives an in-process client its entry points (on its resumed mailbox, or a new one).
fn offer_port(
    core: &Arc<Core>,
    conn: u64,
    slot: &PortSlot,
    wake: &Waker,
    fabric: bool,
    d: &mut Decision,
) {
    let (id, mailbox) = match &d.resumed {
        Some(back) => (back.conn, back.mailbox.clone()),
        None => {
            let m = new_mailbox(core, wake.clone());
            d.fresh = Some(m.clone());
            (conn, m)
        }
    };
    mailbox.set_local(true);
    slot.offer(Arc::new(Port {
        core: core.clone(),
        conn: id,
        mailbox,
        perms: d.perms.clone(),
        uid: Port::next_uid(),
        fabric,
    }));
}

/// A wrong token or password is answered after a pause that grows per address.
fn refusal_delay(core: &Core, peer: &str, e: &Error) -> Duration {
    if e.status() != Status::UNAUTHORIZED {
        return Duration::ZERO;
    }
    let d = core.failures.refused(peer, tokio::time::Instant::now());
    let ms = d.as_millis().min(u64::MAX.into()) as u64;
    core.stats
        .auth_failure_delay_ms
        .fetch_add(ms, Ordering::Relaxed);
    d
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
