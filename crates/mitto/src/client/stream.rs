//! Streaming calls: server, client and bidirectional streams with credit.

use super::call_parts::{CallOptions, Reply};
use super::cmd::{CallCmd, Slot};
use super::queue::CmdTx;
use super::{Client, Cmd};
use crate::error::{Error, Result};
use crate::INITIAL_STREAM_CREDIT;
use bytes::Bytes;
use futures_core::Stream;
use mitto_proto::{Flags, Frame, Status};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

impl Client {
    async fn open_stream(
        &self,
        method: &str,
        payload: Bytes,
        client_streams: bool,
        server_streams: bool,
    ) -> Result<(
        RequestSink,
        ResponseStream,
        Option<oneshot::Receiver<Result<Reply>>>,
    )> {
        let deadline = Instant::now() + self.opts().timeout;
        let conn = self.conn(deadline).await?;
        let id = self.next_id();
        let mut frame = self.request_frame(
            id,
            method,
            payload,
            &CallOptions::default(),
            self.opts().timeout,
        )?;
        if client_streams {
            frame.flags.insert(Flags::START);
        }
        let (items_tx, items_rx) = if server_streams {
            let (tx, rx) = mpsc::channel(INITIAL_STREAM_CREDIT as usize);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let (done_tx, done_rx) = if server_streams {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        let credit =
            client_streams.then(|| Arc::new(Semaphore::new(INITIAL_STREAM_CREDIT as usize)));
        let slot = Slot::Stream {
            items: items_tx,
            done: done_tx,
            credit: credit.clone(),
        };
        conn.cmds
            .send(Cmd::call(CallCmd {
                id,
                frame,
                slot,
                deadline: None,
            }))
            .await
            .map_err(|_| Error::connection_lost("connection closed"))?;
        let sink = RequestSink {
            id,
            cmds: conn.cmds.clone(),
            credit,
            finished: !client_streams,
        };
        let stream = ResponseStream {
            id,
            rx: items_rx,
            ctl: conn.ctl.clone(),
            consumed: 0,
            done: !server_streams,
        };
        Ok((sink, stream, done_rx))
    }

    /// Opens a server-streaming call: one request, a stream of responses.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new()
    /// #     .route_server_stream("count", |_req, items| async move {
    /// #         for i in 0..3u8 { items.send(vec![i]).await?; }
    /// #         Ok(())
    /// #     })
    /// #     .bind("mem://app")
    /// #     .await?;
    /// let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// let mut items = client.server_stream("count", "").await?;
    /// let mut n = 0;
    /// while let Some(item) = items.next().await {
    ///     let _bytes = item?;
    ///     n += 1;
    /// }
    /// assert_eq!(n, 3);
    /// # Ok(()) }
    /// ```
    pub async fn server_stream(
        &self,
        method: &str,
        payload: impl Into<Bytes>,
    ) -> Result<ResponseStream> {
        let (_sink, stream, _) = self
            .open_stream(method, payload.into(), false, true)
            .await?;
        Ok(stream)
    }

    /// Opens a client-streaming call: send items with the sink, then await the one response.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new()
    /// #     .route_client_stream("size", |_req, mut items: mitto::RequestStream| async move {
    /// #         let mut total = 0;
    /// #         while let Some(b) = items.next().await { total += b.len(); }
    /// #         Ok(total.to_string())
    /// #     })
    /// #     .bind("mem://app")
    /// #     .await?;
    /// let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// let (mut sink, reply) = client.client_stream("size").await?;
    /// sink.send("ab").await?;
    /// sink.send("cde").await?;
    /// sink.finish().await?;
    /// assert_eq!(reply.await?.payload, "5");
    /// # Ok(()) }
    /// ```
    pub async fn client_stream(&self, method: &str) -> Result<(RequestSink, PendingReply)> {
        let (sink, stream, done) = self.open_stream(method, Bytes::new(), true, false).await?;
        let done = done.ok_or_else(|| Error::new(Status::INTERNAL, "missing reply channel"))?;
        Ok((
            sink,
            PendingReply {
                rx: done,
                _cancel: stream,
            },
        ))
    }

    /// Opens a bidirectional stream.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new()
    /// #     .route_bidi("upper", |_req, mut items: mitto::RequestStream, out| async move {
    /// #         while let Some(b) = items.next().await { out.send(b.to_ascii_uppercase()).await?; }
    /// #         Ok(())
    /// #     })
    /// #     .bind("mem://app")
    /// #     .await?;
    /// let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// let (mut sink, mut replies) = client.bidi("upper").await?;
    /// sink.send("a").await?;
    /// assert_eq!(replies.next().await.unwrap()?, "A");
    /// sink.send("b").await?;
    /// assert_eq!(replies.next().await.unwrap()?, "B");
    /// sink.finish().await?;
    /// # Ok(()) }
    /// ```
    pub async fn bidi(&self, method: &str) -> Result<(RequestSink, ResponseStream)> {
        let (sink, stream, _) = self.open_stream(method, Bytes::new(), true, true).await?;
        Ok((sink, stream))
    }
}

/// The items of a response stream. Grants the server more credit as it is consumed; dropping it
/// before the end cancels the call.
pub struct ResponseStream {
    id: u64,
    rx: Option<mpsc::Receiver<Result<Bytes>>>,
    ctl: mpsc::UnboundedSender<Cmd>,
    consumed: u32,
    done: bool,
}

impl fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseStream")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ResponseStream {
    /// The next item; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Result<Bytes>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for ResponseStream {
    type Item = Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.consumed += 1;
                if self.consumed >= INITIAL_STREAM_CREDIT / 2 {
                    let n = std::mem::take(&mut self.consumed);
                    let _ = self.ctl.send(Cmd::Send(Frame::credit_stream(self.id, n)));
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                self.rx = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.ctl.send(Cmd::Cancel(self.id));
        }
    }
}

/// Sends the items of a request stream, waiting for the server's credit.
pub struct RequestSink {
    id: u64,
    cmds: CmdTx,
    credit: Option<Arc<Semaphore>>,
    finished: bool,
}

impl fmt::Debug for RequestSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSink")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl RequestSink {
    /// Sends one item, waiting while the server has granted no credit.
    pub async fn send(&mut self, item: impl Into<Bytes>) -> Result<()> {
        if self.finished {
            return Err(Error::new(
                Status::BAD_REQUEST,
                "the request stream is finished",
            ));
        }
        if let Some(c) = &self.credit {
            c.acquire()
                .await
                .map_err(|_| Error::new(Status::CANCELLED, "the call has ended"))?
                .forget();
        }
        self.cmds
            .send(Cmd::Send(Frame::stream(self.id, item, false)))
            .await
            .map_err(|_| Error::connection_lost("connection closed"))
    }

    /// Ends the request stream (STREAM with END).
    pub async fn finish(mut self) -> Result<()> {
        self.finished = true;
        self.cmds
            .send(Cmd::Send(Frame::stream(self.id, Bytes::new(), true)))
            .await
            .map_err(|_| Error::connection_lost("connection closed"))
    }
}

impl Drop for RequestSink {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self
                .cmds
                .try_send(Cmd::Send(Frame::stream(self.id, Bytes::new(), true)));
        }
    }
}

/// The one response of a client-streaming call.
pub struct PendingReply {
    rx: oneshot::Receiver<Result<Reply>>,
    _cancel: ResponseStream,
}

impl fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PendingReply")
    }
}

impl std::future::Future for PendingReply {
    type Output = Result<Reply>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Reply>> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(r) => {
                self._cancel.done = true;
                Poll::Ready(r.unwrap_or_else(|_| Err(Error::connection_lost("connection closed"))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
