//! Taking a session over from a connection that still holds it (PROTOCOL.md 8.5). A client
//! that reconnects before the broker noticed its old connection die names a session that is
//! still attached. As MQTT brokers and NATS do with a client id, the HELLO claims it: the old
//! connection is told to hand it over, closes with ALREADY_EXISTS, and the session is resumed
//! on the new connection as after a lost connection. Claims are by user and client id (the
//! session's key) and by session id compared in constant time, so another user's HELLO never
//! touches a session.

use crate::sessions::{Detached, Session, SessionKey};
use crate::shared::{BrokerCmd, Waker};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

/// The reason the old connection's CLOSE gives.
pub(crate) const TAKEN_OVER: &str = "session taken over by a new connection";

/// Where an attached session is between its connection and a claimant.
enum State {
    /// Its connection holds it.
    Live,
    /// A new connection claimed it and waits for it.
    Claimed,
    /// Handed over, for the claimant to take.
    Handed(Detached),
    /// The claimant stopped waiting (or took it).
    Abandoned,
    /// Its connection ended it or kept it detached: no claim reaches it any more.
    Ended,
}

/// An attached session, shared by the connection that holds it and one that claims it.
pub(crate) struct Claim {
    pub(crate) key: SessionKey,
    state: Mutex<State>,
    ready: Notify,
}

impl Claim {
    fn state(&self) -> MutexGuard<'_, State> {
        // A plain value: a panic elsewhere cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a claimant waits for the session (its holder must hand it over).
    pub(crate) fn claimed(&self) -> bool {
        matches!(*self.state(), State::Claimed)
    }

    /// The holding connection ends: `true` if a claimant waits (hand the session over);
    /// otherwise runs `otherwise` (the session's usual ending) under the claim's lock, so that
    /// a HELLO claims it before, or resumes it after, never in between.
    pub(crate) fn end(&self, otherwise: impl FnOnce()) -> bool {
        let mut s = self.state();
        if matches!(*s, State::Claimed) {
            return true;
        }
        otherwise();
        *s = State::Ended;
        false
    }

    /// Hands the session to the claimant; gives it back if the claimant stopped waiting.
    pub(crate) fn give(&self, d: Detached) -> Result<(), Detached> {
        let mut s = self.state();
        if !matches!(*s, State::Claimed) {
            return Err(d);
        }
        *s = State::Handed(d);
        self.ready.notify_one();
        Ok(())
    }

    /// The claimant waits up to `within` for the session; after that it stops waiting.
    pub(crate) async fn take(&self, within: Duration) -> Option<Detached> {
        let _ = tokio::time::timeout(within, self.ready.notified()).await;
        self.abandon()
    }

    /// The claimant stops waiting: the session if it was handed over already.
    pub(crate) fn abandon(&self) -> Option<Detached> {
        match std::mem::replace(&mut *self.state(), State::Abandoned) {
            State::Handed(d) => Some(d),
            _ => None,
        }
    }
}

/// What a HELLO's claim found.
pub(crate) enum Claimed {
    /// The session's connection was told to hand it over.
    Pending(Arc<Claim>),
    /// Its connection ended meanwhile: the session may be detached now.
    Ended,
    /// No live connection holds that session of that user.
    Nothing,
}

struct Live {
    token: String,
    ctl: Waker,
    claim: Arc<Claim>,
}

/// The attached sessions, by user and client id (the latest connection of a client id).
#[derive(Default)]
pub(crate) struct Attached(Mutex<HashMap<SessionKey, Live>>);

impl Attached {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionKey, Live>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Session `s` is attached to the connection whose driver listens on `ctl`.
    pub(crate) fn enter(&self, s: &Session, ctl: Waker) -> Arc<Claim> {
        let claim = Arc::new(Claim {
            key: s.key.clone(),
            state: Mutex::new(State::Live),
            ready: Notify::new(),
        });
        let live = Live {
            token: s.token.clone(),
            ctl,
            claim: claim.clone(),
        };
        self.lock().insert(s.key.clone(), live);
        claim
    }

    /// The connection of `claim` ended: its entry goes, if still its own.
    pub(crate) fn leave(&self, claim: &Arc<Claim>) {
        let mut m = self.lock();
        if m.get(&claim.key)
            .is_some_and(|l| Arc::ptr_eq(&l.claim, claim))
        {
            m.remove(&claim.key);
        }
    }

    /// Claims session `token` of `key` from the live connection that holds it.
    pub(crate) fn claim(&self, key: &SessionKey, token: &str) -> Claimed {
        let mut m = self.lock();
        let Some(live) = m.get(key) else {
            return Claimed::Nothing;
        };
        if !bool::from(live.token.as_bytes().ct_eq(token.as_bytes())) {
            return Claimed::Nothing;
        }
        {
            let mut s = live.claim.state();
            if !matches!(*s, State::Live) {
                return Claimed::Ended;
            }
            *s = State::Claimed;
        }
        let Some(live) = m.remove(key) else {
            return Claimed::Nothing;
        };
        // A driver that already ended hands the session over from its `on_closed`.
        let _ = live.ctl.send(BrokerCmd::TakenOver);
        Claimed::Pending(live.claim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::Mailbox;

    fn key(user: &str) -> SessionKey {
        SessionKey {
            user: user.into(),
            client_id: "c1".into(),
        }
    }

    fn detached(token: &str) -> Detached {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        Detached {
            conn: 1,
            token: token.into(),
            mailbox: Arc::new(Mailbox::new(tx, 1024, Default::default())),
            expires: tokio::time::Instant::now(),
        }
    }

    fn attach(
        a: &Attached,
        user: &str,
    ) -> (Arc<Claim>, tokio::sync::mpsc::UnboundedReceiver<BrokerCmd>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let s = Session {
            key: key(user),
            token: "t1".into(),
        };
        (a.enter(&s, tx), rx)
    }

    #[tokio::test]
    async fn only_the_same_user_with_the_session_id_claims_it_and_gets_it_handed_over() {
        let a = Attached::default();
        let (held, mut ctl) = attach(&a, "alice");
        assert!(matches!(a.claim(&key("eve"), "t1"), Claimed::Nothing));
        assert!(matches!(a.claim(&key("alice"), "t2"), Claimed::Nothing));
        assert!(!held.claimed());
        let Claimed::Pending(claim) = a.claim(&key("alice"), "t1") else {
            panic!("not claimed");
        };
        assert!(matches!(ctl.try_recv(), Ok(BrokerCmd::TakenOver)));
        assert!(
            matches!(a.claim(&key("alice"), "t1"), Claimed::Nothing),
            "once"
        );
        assert!(held.end(|| panic!("a claimed session is handed over, not ended")));
        assert!(held.give(detached("t1")).is_ok());
        let got = claim.take(Duration::from_secs(5)).await;
        assert_eq!(got.map(|d| d.token).as_deref(), Some("t1"));
    }

    #[tokio::test]
    async fn a_claimant_that_stopped_waiting_gives_the_session_back_to_be_kept() {
        let a = Attached::default();
        let (held, _ctl) = attach(&a, "alice");
        let Claimed::Pending(claim) = a.claim(&key("alice"), "t1") else {
            panic!("not claimed");
        };
        assert!(claim.take(Duration::from_millis(1)).await.is_none());
        assert!(!held.claimed());
        assert!(held.give(detached("t1")).is_err(), "kept detached instead");
    }

    #[test]
    fn a_session_ended_by_its_connection_is_no_longer_claimed() {
        let a = Attached::default();
        let (held, _ctl) = attach(&a, "alice");
        let mut ended = false;
        assert!(!held.end(|| ended = true));
        assert!(ended);
        assert!(matches!(a.claim(&key("alice"), "t1"), Claimed::Ended));
        a.leave(&held);
        assert!(matches!(a.claim(&key("alice"), "t1"), Claimed::Nothing));
    }
}
