//! What the connection tells the application, one [`Event`] at a time from
//! [`Connection::poll_event`](super::Connection::poll_event).

use super::error::Failure;
use crate::body::Hello;
use crate::frame::Frame;
use crate::negotiate::Negotiated;
use crate::status::Status;
use std::time::Instant;

/// The id of an operation of this side awaiting an answer: a call (REQUEST), an acknowledged
/// PUBLISH, a SUBSCRIBE or REGISTER, a HEALTH or STATS query. It is the id the frame carries on
/// the wire; no two operations of one connection ever get the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub(crate) u64);

impl OpId {
    /// The id on the wire.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// The id of a call the peer opened (its REQUEST's id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// The answer to an operation: the frame that completed it, or how it failed.
pub type Answer = Result<Frame, Failure>;

/// Why a call the peer opened ended without this side's RESPONSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestEnd {
    /// The peer sent CANCEL; the connection answered RESPONSE CANCELLED.
    Cancelled,
    /// Its deadline passed; the connection answered RESPONSE TIMEOUT.
    Timeout,
    /// The peer broke the call's request stream: items beyond the credit it was granted
    /// (answered RESPONSE PROTOCOL_ERROR), or items after its END or on a call opened without
    /// START (answered RESPONSE UNEXPECTED_FRAME).
    StreamViolation,
    /// The connection ended.
    ConnectionLost,
}

/// Who ended the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Closer {
    /// This side ([`Connection::close`](super::Connection::close)), after its CLOSE was taken.
    Local,
    /// The peer sent CLOSE (or refused the handshake).
    Peer,
    /// The peer broke the protocol: a fatal decode error or a bad handshake (this side sent
    /// ERROR and CLOSE), or, to a client, answers it never reads (nothing more is sent).
    Protocol,
    /// The transport ended or failed without CLOSE, or the peer fell silent (keepalive, the
    /// handshake timeout).
    Transport,
}

/// How the connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// Who ended it.
    pub by: Closer,
    /// The status (of the CLOSE, or of the failure).
    pub status: Status,
    /// Why, for humans.
    pub reason: String,
}

/// Something the application must know or act on.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<C> {
    /// Client: the server accepted the HELLO.
    Connected {
        /// What both sides agreed.
        agreed: Negotiated,
        /// The server's reply (its name, the client id and session it assigned).
        reply: Box<Hello>,
        /// The server resumed the session the client named.
        resumed: bool,
    },
    /// Server: a client's HELLO, for the application to [`accept`](super::Connection::accept)
    /// or [`refuse`](super::Connection::refuse). No further input is read until it does.
    Hello(Box<Hello>),
    /// An operation of this side ended: exactly once per operation, with the context it was
    /// started with.
    Answer {
        /// The operation.
        id: OpId,
        /// What the caller attached to it.
        ctx: C,
        /// The RESPONSE, ACK or REPLY that completed it, or its failure.
        answer: Answer,
    },
    /// A STREAM frame of a call of this side: its payload is one item, and END marks the
    /// callee's last (an END with an empty payload carries no item).
    Item {
        /// The call.
        id: OpId,
        /// The STREAM frame.
        frame: Frame,
    },
    /// A call of this side may send stream items again.
    CreditAvailable {
        /// The call.
        id: OpId,
    },
    /// The peer opened a call.
    Request {
        /// Its id, for [`respond`](super::Connection::respond).
        id: RequestId,
        /// The REQUEST frame.
        frame: Frame,
        /// When the call's `deadline` header runs out, on this side's clock.
        deadline: Option<Instant>,
    },
    /// A STREAM frame of a call the peer opened: one item, END marking the caller's last (an
    /// END with an empty payload carries no item).
    RequestItem {
        /// The call.
        id: RequestId,
        /// The STREAM frame.
        frame: Frame,
    },
    /// A call the peer opened may send stream items again.
    ResponseCreditAvailable {
        /// The call.
        id: RequestId,
    },
    /// A call the peer opened ended without this side's answer.
    RequestEnded {
        /// The call.
        id: RequestId,
        /// Why.
        why: RequestEnd,
    },
    /// An EVENT delivered to a subscription.
    Message {
        /// The subscription.
        sid: u32,
        /// The EVENT frame (its id is the delivery id).
        frame: Frame,
    },
    /// The server ended a subscription (SLOW_CONSUMER, permissions), or its
    /// `unsubscribe_after` count was reached (status OK).
    SubscriptionEnded {
        /// The subscription.
        sid: u32,
        /// Why.
        status: Status,
    },
    /// A frame this connection does not act on in its role (a broker's PUBLISH, SUBSCRIBE,
    /// ACK of an EVENT, HEALTH query, ...), for the application.
    Frame(Frame),
    /// An ERROR from the peer that names nothing of this side's.
    PeerError(Frame),
    /// The outbound buffer went below [`Config::max_outbound`](super::Config::max_outbound)
    /// after a command was refused for it.
    Writable,
    /// The connection ended; nothing more is sent or read. Every operation got its answer
    /// before this event.
    Closed(Closed),
}
