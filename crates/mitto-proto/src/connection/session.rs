//! The session a client keeps across connections (spec section 8.5): the client id and
//! session token the server gave, and the subscriptions to restore on the next connection
//! (with their ids and the credit the application can still take) when the server does not
//! resume the session. Calls are never carried over: they failed with UNAVAILABLE when the
//! connection was lost, and retrying them is the application's choice.

use super::config::Config;
use super::Connection;
use crate::body::SubscribeOptions;
use crate::negotiate::Features;
use crate::status::Status;
use crate::subject::Subject;
use std::time::Instant;

/// Who this client is to the server.
#[derive(Clone, Debug, Default)]
pub(crate) struct Identity {
    pub(crate) client_id: String,
    pub(crate) token: String,
}

/// One subscription or registration as a session keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionState {
    /// Its id, kept on the next connection.
    pub sid: u32,
    /// Its filter.
    pub filter: Subject,
    /// Its options (their `credit` is the initial credit it was made with).
    pub options: SubscribeOptions,
    /// A service registration rather than a subscription.
    pub registration: bool,
    /// EVENTs the application can still take (the credit to ask for when it is made again);
    /// 0 when credit is off.
    pub room: u32,
    /// Deliveries not acknowledged yet (a resumed session redelivers them).
    pub unacked: Vec<u64>,
}

/// What a client carries from one connection to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Session {
    /// The client id the server assigned or confirmed.
    pub client_id: String,
    /// The session token the server gave (empty if it keeps no sessions).
    pub token: String,
    /// The live subscriptions and registrations, by id.
    pub subscriptions: Vec<SubscriptionState>,
}

impl<C> Connection<C> {
    /// The session as it stands: call it when the connection was lost, and pass it to
    /// [`Connection::resume`] on the next one.
    pub fn session(&self) -> Session {
        let mut subscriptions: Vec<SubscriptionState> = self
            .subs
            .map
            .iter()
            .map(|(&sid, s)| SubscriptionState {
                sid,
                filter: s.filter.clone(),
                options: s.opts.clone(),
                registration: s.register,
                room: s.room(),
                unacked: s.unacked.iter().copied().collect(),
            })
            .collect();
        subscriptions.sort_by_key(|s| s.sid);
        Session {
            client_id: self.session.client_id.clone(),
            token: self.session.token.clone(),
            subscriptions,
        }
    }

    /// A client connection that offers to resume `session` (its client id and token go in the
    /// HELLO). Once the server answers, registrations are made again; subscriptions are made
    /// again with their ids and remaining credit unless the server resumed the session, in
    /// which case it still has them and nothing is sent.
    pub fn resume(mut cfg: Config, now: Instant, session: Session) -> Self {
        if !session.client_id.is_empty() {
            cfg.hello.client_id = session.client_id.clone();
        }
        cfg.hello.session = session.token.clone();
        let mut c = Connection::client(cfg, now);
        for s in session.subscriptions {
            let mut sub = super::subscriptions::Sub::new(s.filter, s.options, s.registration);
            if sub.window.is_some() {
                sub.window = Some(s.room);
            }
            sub.unacked = s.unacked.into_iter().collect();
            c.subs.map.insert(s.sid, sub);
        }
        c.session.client_id = session.client_id;
        c.session.token = session.token;
        c
    }

    /// The handshake completed: makes the kept subscriptions and registrations again.
    pub(super) fn restore(&mut self, now: Instant, resumed: bool) {
        let mut sids: Vec<u32> = self.subs.map.keys().copied().collect();
        sids.sort_unstable();
        let flow = self.has(Features::FLOW_CONTROL);
        for sid in sids {
            let Some(sub) = self.subs.map.get(&sid) else {
                continue;
            };
            if resumed && !sub.register {
                continue;
            }
            let mut opts = sub.opts.clone();
            if !sub.register {
                // Credit for what the application can still take. Zero would turn credit
                // off, so at least one.
                opts.credit = if opts.credit > 0 && flow {
                    sub.room().max(1)
                } else {
                    0
                };
            }
            let (filter, register) = (sub.filter.clone(), sub.register);
            self.subs.remove(sid);
            if let Err(e) = self.open_sub(now, Some(sid), filter, opts, register, None) {
                // The new peer cannot take it (a feature it did not agree to).
                let status = match e {
                    super::CommandError::NotNegotiated(_) => Status::UNSUPPORTED_FEATURE,
                    _ => Status::BAD_REQUEST,
                };
                self.events
                    .push_back(super::Event::SubscriptionEnded { sid, status });
            }
        }
    }
}
