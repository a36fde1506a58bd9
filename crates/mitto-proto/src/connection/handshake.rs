//! The HELLO exchange, both ways (spec section 8): a client queues its HELLO and takes the
//! server's answer; a server takes the client's first frame, refuses it by the one rule of
//! section 8.1 when it is not an acceptable HELLO, and otherwise leaves the decision (who the
//! peer is, whether it may connect) to the application.

use super::events::{Closed, Closer, Event};
use super::{CommandError, Connection, State};
use crate::body::Hello;
use crate::frame::Frame;
use crate::header::{Flags, FrameType};
use crate::negotiate::{negotiate, Features, Negotiated};
use crate::status::Status;
use std::time::Instant;

impl<C> Connection<C> {
    /// Queues this side's HELLO (client).
    pub(super) fn send_hello(&mut self) {
        match Frame::hello(&self.cfg.hello, false) {
            Ok(f) if f.payload.len() <= self.limits.max_payload as usize => {
                self.out.push(f, None, false);
            }
            Ok(f) => self.close_now(Closed {
                by: Closer::Local,
                status: Status::PAYLOAD_TOO_LARGE,
                reason: format!(
                    "this side's HELLO of {} bytes exceeds the handshake limit of {}",
                    f.payload.len(),
                    self.limits.max_payload
                ),
            }),
            Err(e) => self.close_now(Closed {
                by: Closer::Local,
                status: Status::BAD_REQUEST,
                reason: format!("this side's HELLO cannot be encoded: {e}"),
            }),
        }
    }

    /// Client: the server's first frame.
    pub(super) fn on_server_hello(&mut self, now: Instant, f: Frame) {
        match f.frame_type {
            FrameType::Hello if f.flags.contains(Flags::REPLY) => {
                let agreed = Hello::decode(&f.payload)
                    .map_err(|k| (Status::BAD_REQUEST, k.to_string()))
                    .and_then(|reply| {
                        let agreed = negotiate(&self.cfg.hello, &reply)
                            .map_err(|e| (e.status(), e.to_string()))?;
                        Ok((reply, agreed))
                    });
                match agreed {
                    Ok((reply, agreed)) => self.connected(now, reply, agreed),
                    Err((status, reason)) => self.refuse_handshake(f.id, status, &reason),
                }
            }
            FrameType::Error | FrameType::Close => self.close_now(Closed {
                by: Closer::Peer,
                status: f.status,
                reason: String::from_utf8_lossy(&f.payload).into_owned(),
            }),
            other => {
                let why = format!("expected the server's HELLO, got {}", other.name());
                self.refuse_handshake(f.id, Status::UNEXPECTED_FRAME, &why);
            }
        }
    }

    fn connected(&mut self, now: Instant, reply: Hello, agreed: Negotiated) {
        let resumed =
            reply.flags & Hello::RESUMED != 0 && agreed.features.contains(Features::SESSION_RESUME);
        self.session.client_id.clone_from(&reply.client_id);
        self.session.token.clone_from(&reply.session);
        self.open(now, agreed.clone());
        self.events.push_back(Event::Connected {
            agreed,
            reply: Box::new(reply),
            resumed,
        });
        self.restore(now, resumed);
    }

    /// Server: the client's first frame.
    pub(super) fn on_client_hello(&mut self, f: Frame) {
        if f.frame_type != FrameType::Hello || f.flags.contains(Flags::REPLY) {
            let name = match f.frame_type {
                FrameType::Hello => "HELLO with REPLY",
                t => t.name(),
            };
            let why = format!("the first frame must be HELLO, not {name}");
            return self.refuse_handshake(f.id, Status::UNEXPECTED_FRAME, &why);
        }
        let hello = match Hello::decode(&f.payload) {
            Ok(h) => h,
            Err(k) => return self.refuse_handshake(f.id, Status::BAD_REQUEST, &k.to_string()),
        };
        let ours = self.cfg.hello.version;
        if hello.version.major != ours.major {
            let why = format!(
                "unsupported version {}: this side speaks {ours}",
                hello.version
            );
            return self.refuse_handshake(f.id, Status::UNSUPPORTED_VERSION, &why);
        }
        self.events.push_back(Event::Hello(Box::new(hello.clone())));
        self.state = State::Deciding {
            id: f.id,
            hello: Box::new(hello),
        };
    }

    /// Server: accepts the HELLO the application was given, with the client id and session
    /// it assigned or confirmed; `resumed` when it restored the session the client named (only
    /// said when SESSION_RESUME was agreed). The reply is queued and frames the client sent
    /// after its HELLO are read from now on.
    pub fn accept(
        &mut self,
        now: Instant,
        client_id: &str,
        session: &str,
        resumed: bool,
    ) -> Result<(), CommandError> {
        let State::Deciding { id, hello } = &self.state else {
            return Err(CommandError::Misuse("no HELLO awaits a decision"));
        };
        let (id, hello) = (*id, hello.clone());
        let agreed = negotiate(&self.cfg.hello, &hello)
            .map_err(|_| CommandError::Misuse("the HELLO's version was refused already"))?;
        let resumed = resumed && agreed.features.contains(Features::SESSION_RESUME);
        let reply = agreed.reply(&self.cfg.hello.name, client_id, session, resumed);
        let frame = Frame::hello(&reply, true)?.with_id(id);
        // The client reads it with the handshake limits.
        self.check_limits(&frame, 0)?;
        self.out.push(frame, None, false);
        self.session.client_id = client_id.into();
        self.session.token = session.into();
        self.open(now, agreed);
        Ok(())
    }

    /// Server: refuses the HELLO the application was given (UNAUTHORIZED, QUOTA_EXCEEDED,
    /// UNAVAILABLE, ...): ERROR, then CLOSE, then the connection ends (spec section 8.1).
    pub fn refuse(&mut self, status: Status, reason: &str) -> Result<(), CommandError> {
        let State::Deciding { id, .. } = self.state else {
            return Err(CommandError::Misuse("no HELLO awaits a decision"));
        };
        self.refuse_handshake(id, status, reason);
        if let State::Closing(c) = &mut self.state {
            c.by = Closer::Local;
        }
        Ok(())
    }

    /// The one refusal of a handshake: ERROR naming `id`, then CLOSE with the same status.
    pub(super) fn refuse_handshake(&mut self, id: u64, status: Status, reason: &str) {
        self.stats.refused_frames += 1;
        self.send_owed(Frame::error(id, status, reason));
        self.out.push_close(Frame::close(status, reason));
        self.state = State::Closing(Closed {
            by: Closer::Protocol,
            status,
            reason: reason.into(),
        });
    }

    /// The handshake completed: the agreed limits apply both ways and keepalive starts.
    fn open(&mut self, now: Instant, agreed: Negotiated) {
        self.limits = agreed.limits;
        self.decoder.set_limits(agreed.limits);
        self.keepalive.start(now, agreed.keepalive_ms);
        self.agreed = Some(agreed);
        self.state = State::Open;
    }

    /// The handshake took longer than the configured timeout.
    pub(super) fn handshake_timed_out(&mut self) {
        let reason = match self.role {
            super::Role::Client => "no answer to HELLO within the handshake timeout",
            _ => "no HELLO accepted within the handshake timeout",
        };
        self.close_now(Closed {
            by: Closer::Transport,
            status: Status::TIMEOUT,
            reason: reason.into(),
        });
    }
}
