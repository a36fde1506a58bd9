//! What a handler sees and answers: the request, the response, the streams of a call.

use super::cmd::Cmd;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::INITIAL_STREAM_CREDIT;
use bytes::Bytes;
use futures_core::Stream;
use mitto_proto::{Frame, Headers, MsgKind, Status, Subject, WellKnown};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

/// Who is calling: what the peer said in HELLO, and where it connected from.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    /// The transport address of the peer.
    pub addr: String,
    /// The name the client gave in HELLO.
    pub name: String,
    /// The client id (given by the client, or assigned by the server).
    pub client_id: String,
    /// The user the client authenticated as (empty with token or no auth).
    pub user: String,
}

/// One incoming call, as a handler and the middleware before it see it.
pub struct Request {
    pub(super) method: Subject,
    pub(super) headers: Headers,
    pub(super) payload: Bytes,
    pub(super) kind: MsgKind,
    pub(super) deadline: Option<Instant>,
    pub(super) peer: Arc<PeerInfo>,
    pub(super) items: Option<RequestStream>,
    pub(super) sink: Option<StreamSender>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method.as_str())
            .field("payload_len", &self.payload.len())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// The method name (the REQUEST frame's subject).
    pub fn method(&self) -> &str {
        self.method.as_str()
    }
    /// The request headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// Replaces the headers (middleware can add to them).
    pub fn set_headers(&mut self, headers: Headers) {
        self.headers = headers;
    }
    /// The request payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
    /// The message kind.
    pub fn kind(&self) -> MsgKind {
        self.kind
    }
    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    /// Who is calling.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
    /// The codec the caller used, from its `content-type` (JSON when absent).
    pub fn codec(&self) -> Result<Codec> {
        Codec::from_content_type(self.headers.content_type())
    }
    /// Decodes the payload with the caller's codec.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        self.codec()?.decode(&self.payload)
    }
}

/// What a handler answers: payload and headers.
#[derive(Clone, Debug, Default)]
pub struct Response {
    /// Response headers.
    pub headers: Headers,
    /// Response payload.
    pub payload: Bytes,
}

impl Response {
    /// A response with a payload and no headers.
    pub fn new(payload: impl Into<Bytes>) -> Response {
        Response {
            headers: Headers::new(),
            payload: payload.into(),
        }
    }
    /// Sets the headers.
    pub fn with_headers(mut self, headers: Headers) -> Response {
        self.headers = headers;
        self
    }
    /// A value encoded with `codec`, with its content type set.
    pub fn encode<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Response> {
        let headers = Headers::builder().insert(WellKnown::ContentType, codec.content_type())?;
        Ok(Response {
            headers: headers.build(),
            payload: codec.encode(value)?,
        })
    }
}

impl From<Bytes> for Response {
    fn from(b: Bytes) -> Response {
        Response::new(b)
    }
}
impl From<Vec<u8>> for Response {
    fn from(b: Vec<u8>) -> Response {
        Response::new(b)
    }
}
impl From<&'static [u8]> for Response {
    fn from(b: &'static [u8]) -> Response {
        Response::new(b)
    }
}
impl From<&'static str> for Response {
    fn from(b: &'static str) -> Response {
        Response::new(b)
    }
}
impl From<String> for Response {
    fn from(b: String) -> Response {
        Response::new(b)
    }
}
impl From<()> for Response {
    fn from(_: ()) -> Response {
        Response::default()
    }
}

/// The items a client streams to a handler. Grants the client more credit as they are consumed.
pub struct RequestStream {
    pub(super) id: u64,
    pub(super) rx: mpsc::Receiver<Bytes>,
    pub(super) ctl: mpsc::UnboundedSender<Cmd>,
    pub(super) consumed: u32,
}

impl fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestStream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RequestStream {
    /// The next item; `None` once the client has finished its side.
    pub async fn next(&mut self) -> Option<Bytes> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for RequestStream {
    type Item = Bytes;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => {
                self.consumed += 1;
                if self.consumed >= INITIAL_STREAM_CREDIT / 2 {
                    let n = std::mem::take(&mut self.consumed);
                    let _ = self.ctl.send(Cmd::Out(Frame::credit_stream(self.id, n)));
                }
                Poll::Ready(Some(b))
            }
            other => other,
        }
    }
}

/// Sends a handler's stream items to the client, waiting for the client's credit.
#[derive(Clone)]
pub struct StreamSender {
    pub(super) id: u64,
    pub(super) cmds: mpsc::Sender<Cmd>,
    pub(super) credit: Arc<Semaphore>,
}

impl fmt::Debug for StreamSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSender")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl StreamSender {
    /// Sends one item; waits while the client has granted no credit. Fails with CANCELLED once
    /// the call has ended.
    pub async fn send(&self, item: impl Into<Bytes>) -> Result<()> {
        let ended = || Error::new(Status::CANCELLED, "the call has ended");
        self.credit.acquire().await.map_err(|_| ended())?.forget();
        self.cmds
            .send(Cmd::Item(Frame::stream(self.id, item, false)))
            .await
            .map_err(|_| ended())
    }

    /// Sends a value encoded with `codec`.
    pub async fn send_typed<T: Serialize + ?Sized>(&self, codec: Codec, value: &T) -> Result<()> {
        self.send(codec.encode(value)?).await
    }
}
