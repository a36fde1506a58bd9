//! How a connection ends (spec sections 9.3 and 14.1): a graceful CLOSE either way, a fatal
//! protocol error (ERROR, then CLOSE), or a transport that ends or falls silent. Whichever it
//! is, every operation still waiting gets its one answer and every call of the peer's its end
//! before [`Event::Closed`].

use super::calls::set_urgent;
use super::error::{CommandError, Failure};
use super::events::{Closed, Closer, Event, OpId, RequestEnd, RequestId};
use super::ops::Kind;
use super::{Connection, State};
use crate::frame::Frame;
use crate::status::Status;

impl<C> Connection<C> {
    /// Closes the connection gracefully: calls of this side are cancelled (CANCEL) and fail
    /// with UNAVAILABLE, calls of the peer's are answered UNAVAILABLE, and CLOSE `status`
    /// goes after everything already queued. [`Event::Closed`] follows once the driver took
    /// the CLOSE. To let operations finish first, wait for their answers before closing.
    pub fn close(&mut self, status: Status, reason: &str) -> Result<(), CommandError> {
        match self.state {
            State::Closing(_) | State::Closed => return Err(CommandError::Closed),
            State::Open => {
                for id in self.ops.ids() {
                    if let Some(Kind::Call(c)) = self.ops.get(id).map(|o| &o.kind) {
                        self.out.cancel(c.request, id);
                    }
                }
                for (id, urgent) in self.incoming.drain() {
                    let mut r =
                        Frame::response(id, Status::UNAVAILABLE, "the connection is closing");
                    set_urgent(&mut r, urgent);
                    self.send_answer(r);
                    self.events.push_back(Event::RequestEnded {
                        id: RequestId(id),
                        why: RequestEnd::ConnectionLost,
                    });
                }
            }
            State::Hello | State::AwaitHello | State::Deciding { .. } => {}
        }
        self.fail_all(
            Status::UNAVAILABLE,
            "the connection was closed by this side",
        );
        let close = Frame::close(status, reason);
        self.out
            .push_close(close.fit_answer(&self.limits).unwrap_or(close));
        self.state = State::Closing(Closed {
            by: Closer::Local,
            status,
            reason: reason.into(),
        });
        Ok(())
    }

    /// The transport failed or ended (after [`Connection::handle_eof`] for a clean end): every
    /// operation fails with UNAVAILABLE and the connection is closed.
    pub fn transport_lost(&mut self, reason: &str) {
        match self.state {
            State::Closed => {}
            State::Closing(_) => {
                // Whatever of the CLOSE was not written is lost with the transport.
                self.out.clear();
                if let State::Closing(c) = std::mem::replace(&mut self.state, State::Closed) {
                    self.events.push_back(Event::Closed(c));
                }
            }
            _ => self.close_now(Closed {
                by: Closer::Transport,
                status: Status::UNAVAILABLE,
                reason: reason.into(),
            }),
        }
    }

    /// The peer's CLOSE: its operations fail with its status (UNAVAILABLE for OK), and this
    /// side answers with its own CLOSE.
    pub(super) fn on_peer_close(&mut self, f: Frame) {
        let status = if f.status.is_ok() {
            Status::UNAVAILABLE
        } else {
            f.status
        };
        self.fail_all(status, "the peer closed the connection");
        self.out.push_close(Frame::close(Status::OK, ""));
        self.state = State::Closing(Closed {
            by: Closer::Peer,
            status: f.status,
            reason: String::from_utf8_lossy(&f.payload).into_owned(),
        });
    }

    /// The peer broke the protocol beyond repair: ERROR naming `id`, then CLOSE (spec section
    /// 14.1); everything in flight fails.
    pub(super) fn protocol_failure(&mut self, id: u64, status: Status, reason: &str) {
        self.send_owed(Frame::error(id, status, reason));
        self.fail_all(Status::UNAVAILABLE, "the peer broke the protocol");
        let close = Frame::close(status, "the byte stream can no longer be trusted");
        self.out.push_close(close);
        self.state = State::Closing(Closed {
            by: Closer::Protocol,
            status,
            reason: reason.into(),
        });
    }

    /// Ends the connection at once, sending nothing more.
    pub(super) fn close_now(&mut self, c: Closed) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.fail_all(Status::UNAVAILABLE, "the connection was lost");
        self.out.clear();
        self.state = State::Closed;
        self.events.push_back(Event::Closed(c));
    }

    /// Every operation of this side fails with `status`, every call of the peer's ends.
    pub(super) fn fail_all(&mut self, status: Status, reason: &'static str) {
        for op in self.ops.drain() {
            if let (Kind::Subscribe(sid) | Kind::Register(sid), Some(_)) = (&op.kind, &op.ctx) {
                // The application hears that it failed: not a subscription to restore.
                self.subs.remove(*sid);
            }
            if let Some(ctx) = op.ctx {
                self.events.push_back(Event::Answer {
                    id: OpId(op.id),
                    ctx,
                    answer: Err(Failure::local(status, reason)),
                });
            }
        }
        for (id, _) in self.incoming.drain() {
            self.events.push_back(Event::RequestEnded {
                id: RequestId(id),
                why: RequestEnd::ConnectionLost,
            });
        }
        self.timers.clear();
    }
}
