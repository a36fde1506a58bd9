//! What arrives: bytes through the decoder (under the agreed limits, the handshake limits
//! before), or frames from an in-process link; decode errors answered by the table of spec
//! section 14; features that were not agreed refused (section 8.3); and each frame handed to
//! the part of the connection that owns it in this role, or to the application.

use super::events::Event as Ev;
use super::ops::Kind;
use super::{Connection, Role, State};
use crate::error::DecodeError;
use crate::frame::Frame;
use crate::header::{Flags, FrameType};
use crate::negotiate::Features;
use crate::status::Status;
use bytes::BytesMut;
use std::time::Instant;

impl<C> Connection<C> {
    /// Reads every whole frame in `buf` (bytes the driver just read, after any it left there),
    /// leaving a partial frame, and anything after the point where reading must pause (see
    /// [`Connection::can_read`]), in `buf` for the next call.
    pub fn handle_input(&mut self, now: Instant, buf: &mut BytesMut) {
        if matches!(self.state, State::Closing(_) | State::Closed) {
            buf.clear();
            return;
        }
        if !buf.is_empty() {
            self.keepalive.received(now);
        }
        while self.can_read() {
            match self.decoder.decode(buf) {
                Ok(Some(f)) => {
                    self.on_frame(now, f);
                    self.check_owed();
                }
                Ok(None) => break,
                Err(e) => self.on_decode_error(e),
            }
        }
        if self.decoder.is_failed() || matches!(self.state, State::Closing(_) | State::Closed) {
            // Nothing more is read from this peer.
            buf.clear();
        }
    }

    /// The transport ended cleanly (EOF): a frame left unfinished in `buf` is answered ERROR
    /// `truncated` then CLOSE (the peer may still read, spec section 14.1); otherwise the
    /// connection ends, and operations in flight fail with UNAVAILABLE, unless CLOSE was
    /// exchanged.
    pub fn handle_eof(&mut self, now: Instant, buf: &mut BytesMut) {
        self.handle_input(now, buf);
        match self.state {
            State::Closing(_) | State::Closed => {}
            State::Hello | State::AwaitHello | State::Open => match self.decoder.decode_eof(buf) {
                Err(e) => self.on_decode_error(e),
                Ok(_) => self.transport_lost("the peer ended the connection without CLOSE"),
            },
            State::Deciding { .. } => self.transport_lost("the peer ended the connection"),
        }
    }

    /// Takes one frame from an in-process link. While [`Connection::can_read`] is false the
    /// frame is given back: pass it again later.
    #[must_use = "a frame given back was not read"]
    pub fn handle_frame(&mut self, now: Instant, f: Frame) -> Option<Frame> {
        if matches!(self.state, State::Closing(_) | State::Closed) {
            return None;
        }
        if !self.can_read() {
            return Some(f);
        }
        self.keepalive.received(now);
        self.on_frame(now, f);
        self.check_owed();
        None
    }

    /// A client must keep reading (spec section 9.4): one whose answers pile up because its
    /// peer sends without reading them ends the connection instead.
    fn check_owed(&mut self) {
        if self.role == Role::Client && self.out.owed() > self.cfg.max_owed {
            self.close_now(super::Closed {
                by: super::Closer::Protocol,
                status: Status::PROTOCOL_ERROR,
                reason: "the peer sends without reading what it is answered".into(),
            });
        }
    }

    fn on_decode_error(&mut self, e: DecodeError) {
        self.stats.decode_errors += 1;
        let reason = e.to_string();
        match self.state {
            // Before the handshake completed, any decode error ends it (spec section 8.1).
            State::Hello | State::AwaitHello => self.refuse_handshake(e.id(), e.status(), &reason),
            State::Open if e.is_fatal() => self.protocol_failure(e.id(), e.status(), &reason),
            State::Open => {
                self.send_owed(Frame::error(e.id(), e.status(), &reason));
                // A broken answer to a call of this side: nothing else will come for it.
                if matches!(self.ops.get(e.id()).map(|o| &o.kind), Some(Kind::Call(_))) {
                    self.broken_call(e.id(), "the peer's answer could not be decoded");
                }
            }
            _ => {}
        }
    }

    fn on_frame(&mut self, now: Instant, f: Frame) {
        match self.state {
            State::AwaitHello => self.on_client_hello(f),
            State::Hello => self.on_server_hello(now, f),
            State::Open => self.on_open_frame(now, f),
            _ => {}
        }
    }

    /// A feature `f` uses that the peer did not agree to.
    fn not_agreed(&self, f: &Frame) -> Option<Features> {
        let need = |feature| (!self.has(feature)).then_some(feature);
        if f.flags.contains(Flags::COMPRESSED) && !self.has(Features::COMPRESSION_LZ4) {
            return Some(Features::COMPRESSION_LZ4);
        }
        match f.frame_type {
            FrameType::Request if f.flags.contains(Flags::START) => need(Features::STREAMING),
            FrameType::Stream => need(Features::STREAMING),
            FrameType::Credit if f.aux == 0 => need(Features::STREAMING),
            FrameType::Credit => need(Features::FLOW_CONTROL),
            FrameType::Publish | FrameType::Event if f.flags.contains(Flags::ACK_REQUIRED) => {
                need(Features::ACKS)
            }
            FrameType::Nack => need(Features::ACKS),
            _ => None,
        }
    }

    fn on_open_frame(&mut self, now: Instant, f: Frame) {
        if let Some(feature) = self.not_agreed(&f) {
            let why = format!("{feature:?} was not negotiated");
            self.refuse_frame(&f, Status::UNSUPPORTED_FEATURE, &why);
            if matches!(f.frame_type, FrameType::Response | FrameType::Stream) {
                if let Some(Kind::Call(_)) = self.ops.get(f.id).map(|o| &o.kind) {
                    self.broken_call(f.id, "the peer answered with a feature not agreed");
                }
            }
            return;
        }
        let mine = |c: &Self| matches!(c.ops.get(f.id).map(|o| &o.kind), Some(Kind::Call(_)));
        match f.frame_type {
            FrameType::Ping => self.send_owed(Frame::pong(&f)),
            FrameType::Pong => {}
            FrameType::Close => self.on_peer_close(f),
            FrameType::Request => self.on_request(now, f),
            FrameType::Response => self.on_response(f),
            // Both peers may open calls: this side's ids first (spec section 10.1).
            FrameType::Stream if mine(self) => self.on_call_item(f),
            FrameType::Stream => self.on_request_item(f),
            FrameType::Credit if f.aux == 0 && mine(self) => self.on_call_credit(&f),
            FrameType::Credit if f.aux == 0 => self.on_request_credit(&f),
            FrameType::Cancel => self.on_cancel(&f),
            FrameType::Ack if f.aux == 0 && self.ops.get(f.id).is_some() => self.on_ack(f),
            FrameType::Error => self.on_error(f),
            FrameType::Event if self.role == Role::Client => self.on_event(f),
            FrameType::Health | FrameType::Stats if f.flags.contains(Flags::REPLY) => {
                self.on_reply(f)
            }
            _ => self.not_mine(f),
        }
    }

    /// An ERROR: the failure of an operation of this side, the end of a subscription, or
    /// something for the application to log.
    fn on_error(&mut self, f: Frame) {
        if f.id != 0 {
            if let Some(op) = self.ops.get(f.id) {
                if let Kind::Subscribe(sid) | Kind::Register(sid) = op.kind {
                    self.subs.remove(sid);
                }
                let id = f.id;
                return self.finish_op(id, Err(super::Failure::peer(f)));
            }
        } else if f.aux != 0 && self.role == Role::Client && self.on_subscription_error(&f) {
            return;
        }
        self.events.push_back(Ev::PeerError(f));
    }

    /// A frame no part of the connection acts on in this role: refused as unexpected, ignored,
    /// or handed to the application.
    fn not_mine(&mut self, f: Frame) {
        use FrameType::*;
        let t = f.frame_type;
        match self.role {
            Role::Client => match t {
                // An ACK that matches nothing pending is ignored (spec section 3.7).
                Ack => self.stats.late_answers += 1,
                // A server may ask the client for reports.
                Health | Stats => self.events.push_back(Ev::Frame(f)),
                _ => {
                    let why = format!("a client does not accept {}", t.name());
                    self.refuse_frame(&f, Status::UNEXPECTED_FRAME, &why);
                }
            },
            _ => match t {
                Hello | Event => {
                    let why = match t {
                        Hello => "HELLO after the handshake".to_owned(),
                        _ => format!("a server does not accept {}", t.name()),
                    };
                    self.refuse_frame(&f, Status::UNEXPECTED_FRAME, &why);
                }
                Ack if f.aux == 0 => self.stats.late_answers += 1,
                _ => self.events.push_back(Ev::Frame(f)),
            },
        }
    }
}
