//! The error every fallible operation returns: a status code a caller can match on, a message,
//! optional details, and whether trying again may help.

use bytes::Bytes;
use mitto_proto::{DecodeError, EncodeError, Status};
use std::fmt;
use std::sync::Arc;

/// A failed operation.
///
/// ```
/// use mitto::{Error, Status};
/// let e = Error::new(Status::TIMEOUT, "calc.add took longer than 250ms");
/// assert_eq!(e.status(), Status::TIMEOUT);
/// assert!(e.is_timeout());
/// assert!(e.is_retryable());
/// ```
#[derive(Clone)]
pub struct Error(Box<Inner>);

/// Boxed, so that an `Error` (and every `Result` and future that holds one) is one pointer
/// wide: results and futures on the hot paths stay small enough to move without `memcpy`.
#[derive(Clone)]
struct Inner {
    status: Status,
    message: String,
    details: Option<Bytes>,
    retryable: bool,
    remote: bool,
    /// Set on the errors of a client that is closed for good: why it closed.
    closed: Option<CloseReason>,
    /// The lower-level error this one came from (an I/O error, a decoding error), shared so
    /// that an `Error` stays `Clone`.
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The custom header that carries an error's machine-readable details.
pub(crate) const ERROR_DETAILS_HEADER: &str = "error-details";

/// `Result<T, mitto::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with a status and a message; retryable as the status says.
    pub fn new(status: Status, message: impl Into<String>) -> Error {
        Error(Box::new(Inner {
            status,
            message: message.into(),
            details: None,
            retryable: status.is_retryable(),
            remote: false,
            closed: None,
            source: None,
        }))
    }

    /// A handler failure (EXECUTION_ERROR), the usual error a handler returns.
    pub fn execution(message: impl Into<String>) -> Error {
        Error::new(Status::EXECUTION_ERROR, message)
    }

    /// The error a peer reported in a RESPONSE or ERROR frame.
    pub(crate) fn from_remote(status: Status, reason: &[u8]) -> Error {
        let mut e = Error::new(status, String::from_utf8_lossy(reason).into_owned());
        e.0.remote = true;
        e
    }

    /// The connection was lost or closed before the operation finished.
    pub(crate) fn connection_lost(why: impl fmt::Display) -> Error {
        Error::new(Status::UNAVAILABLE, format!("connection lost: {why}")).retryable()
    }

    /// The error every operation of a client closed for good fails with (UNAVAILABLE).
    pub(crate) fn client_closed(reason: CloseReason, message: impl Into<String>) -> Error {
        let mut e = Error::new(Status::UNAVAILABLE, message);
        e.0.closed = Some(reason);
        e
    }

    /// Marks the error as worth retrying.
    pub fn retryable(mut self) -> Error {
        self.0.retryable = true;
        self
    }

    /// Attaches machine-readable details (sent as the ERROR/RESPONSE payload's companion).
    pub fn with_details(mut self, details: impl Into<Bytes>) -> Error {
        self.0.details = Some(details.into());
        self
    }

    /// Keeps `source` as the cause of this error ([`std::error::Error::source`]).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.0.source = Some(Arc::new(source));
        self
    }

    /// The status code.
    pub fn status(&self) -> Status {
        self.0.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The details, if any.
    pub fn details(&self) -> Option<&Bytes> {
        self.0.details.as_ref()
    }

    /// Whether the same operation may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        self.0.retryable
    }

    /// Whether the status is TIMEOUT.
    pub fn is_timeout(&self) -> bool {
        self.0.status == Status::TIMEOUT
    }

    /// Whether the status is CANCELLED.
    pub fn is_cancelled(&self) -> bool {
        self.0.status == Status::CANCELLED
    }

    /// Whether the peer reported this error (rather than this side detecting it).
    pub fn is_remote(&self) -> bool {
        self.0.remote
    }

    /// Why the client is closed for good, if this error comes from a closed client (its
    /// status is then UNAVAILABLE). `None` for every other error, a connection lost while the
    /// client reconnects included: calls on a closed client fail with this at once, and no
    /// retry on that client can succeed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new().bind("mem://closed-doc").await?;
    /// use mitto::{Client, ClientOptions, CloseReason};
    ///
    /// let client = Client::connect("mem://closed-doc", ClientOptions::new()).await?;
    /// client.close().await;
    /// let e = client.call("echo", "hi").await.unwrap_err();
    /// assert_eq!(e.close_reason(), Some(CloseReason::ByCaller));
    /// # Ok(()) }
    /// ```
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.0.closed
    }
}

/// Why a [`Client`](crate::Client) is closed for good, as its errors tell
/// ([`Error::close_reason`]) and [`Client::closed`](crate::Client::closed) returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// [`Client::close`](crate::Client::close) was called, or every handle was dropped.
    ByCaller,
    /// The connection was lost and reconnecting is off
    /// ([`ClientOptions::reconnect`](crate::ClientOptions::reconnect)).
    ReconnectOff,
    /// As many reconnect attempts in a row as
    /// [`ClientOptions::max_reconnects`](crate::ClientOptions::max_reconnects) allows failed.
    ReconnectsExhausted,
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("status", &self.0.status)
            .field("message", &self.0.message);
        if self.0.retryable {
            d.field("retryable", &true);
        }
        if self.0.remote {
            d.field("remote", &true);
        }
        if let Some(r) = self.0.closed {
            d.field("closed", &r);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.message.is_empty() {
            write!(f, "{}", self.0.status)
        } else {
            write!(f, "{}: {}", self.0.status, self.0.message)
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let e: &(dyn std::error::Error + 'static) = self.0.source.as_deref()?;
        Some(e)
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Error {
        Error::new(e.status(), e.to_string()).with_source(e)
    }
}

impl From<EncodeError> for Error {
    fn from(e: EncodeError) -> Error {
        let status = match e {
            EncodeError::InvalidSubject { .. } => Status::INVALID_SUBJECT,
            EncodeError::TooLarge { .. } => Status::PAYLOAD_TOO_LARGE,
            _ => Status::BAD_REQUEST,
        };
        Error::new(status, e.to_string()).with_source(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::connection_lost(&e).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_one_pointer_wide_and_keeps_its_parts() {
        // Results and futures on the hot paths hold one: it must stay small to move.
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Result<()>>(),
            std::mem::size_of::<usize>()
        );
        let e = Error::new(Status::NOT_FOUND, "no such thing")
            .retryable()
            .with_details(&b"d"[..]);
        assert_eq!(e.status(), Status::NOT_FOUND);
        assert_eq!(e.message(), "no such thing");
        assert_eq!(e.details().map(|d| &d[..]), Some(&b"d"[..]));
        assert!(e.is_retryable() && !e.is_remote());
        assert!(Error::from_remote(Status::TIMEOUT, b"late").is_remote());
        assert_eq!(
            e.to_string(),
            format!("{}: no such thing", Status::NOT_FOUND)
        );
    }

    #[test]
    fn an_io_error_stays_the_source() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = Error::from(io);
        assert_eq!(e.status(), Status::UNAVAILABLE);
        let source = e.source().expect("the io::Error is kept");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("as an io::Error, not text");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);
        assert!(e.clone().source().is_some(), "clones keep it");
        assert!(Error::new(Status::NOT_FOUND, "x").source().is_none());
    }
}
