//! The WebSocket binding (PROTOCOL.md, "WebSocket binding"): subprotocol `mitto.v1`, each
//! binary message one frame or a batch of whole frames, text messages refused with close code
//! 1003, a message no larger than the largest frame the limits allow (the handshake's until
//! HELLO completes, then the agreed ones).
//!
//! [`WsIo`] presents the messages as a byte stream, so the connection driver and the HELLO
//! exchange read and write it as they do TCP: reads hand out each message's bytes in turn;
//! writes collect bytes and send the whole frames among them as messages.

mod bridge;
mod upgrade;

pub(crate) use upgrade::{connect, Upgrade};

use bridge::SyncIo;
use bytes::{Buf, Bytes, BytesMut};
use mitto_proto::{Limits, HEADER_LEN};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// The WebSocket subprotocol of this protocol version.
pub const SUBPROTOCOL: &str = "mitto.v1";

/// What tungstenite reads from the socket at once (and allocates for it up front).
const READ_BUFFER: usize = 8 * 1024;

/// Bytes collected before writing waits for the socket.
const WRITE_HIGH: usize = 256 * 1024;

/// A URL's path as shown after the address (nothing for `/`).
pub(crate) fn shown_path(path: &str) -> &str {
    if path == "/" {
        ""
    } else {
        path
    }
}

/// The settings a WebSocket starts with: messages of at most one handshake-sized frame.
fn config() -> WebSocketConfig {
    let max = usize::try_from(Limits::HANDSHAKE.max_frame()).unwrap_or(usize::MAX);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// The length of the frame whose header starts `b` (at least [`HEADER_LEN`] bytes).
fn frame_len(b: &[u8]) -> u64 {
    let u32_at = |i: usize| u64::from(u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
    HEADER_LEN as u64 + u64::from(u16::from_be_bytes([b[22], b[23]])) + u32_at(24) + u32_at(28)
}

/// How many leading bytes of `b` are whole frames, stopping before the first frame that would
/// take the count past `max` (the first frame always counts).
fn whole_frames(b: &[u8], max: usize) -> usize {
    let mut at = 0usize;
    while b.len() - at >= HEADER_LEN {
        let len = frame_len(&b[at..]);
        let end = at as u64 + len;
        if end > b.len() as u64 || (at > 0 && end > max as u64) {
            break;
        }
        at = end as usize;
    }
    at
}

/// A WebSocket connection as a byte stream of mitto frames.
pub struct WsIo {
    ws: WebSocket<SyncIo>,
    /// The rest of the message being read.
    rd: Bytes,
    /// The last message ended inside a frame.
    split: bool,
    /// Bytes written and not yet sent: whole frames, then the start of the next one.
    wr: BytesMut,
    /// How many leading bytes of `wr` are whole frames.
    whole: usize,
    /// The largest message sent or accepted.
    max_message: usize,
}

impl std::fmt::Debug for WsIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsIo")
    }
}

impl WsIo {
    fn new(ws: WebSocket<SyncIo>) -> WsIo {
        let max_message = ws.get_config().max_message_size.unwrap_or(usize::MAX);
        WsIo {
            ws,
            rd: Bytes::new(),
            split: false,
            wr: BytesMut::new(),
            whole: 0,
            max_message,
        }
    }

    /// Messages of up to `max_frame` bytes from now on, both ways.
    pub(crate) fn set_max_message(&mut self, max_frame: u64) {
        let max = usize::try_from(max_frame).unwrap_or(usize::MAX);
        self.max_message = max;
        self.ws.set_config(|c| {
            c.max_message_size = Some(max);
            c.max_frame_size = Some(max);
        });
    }

    /// Ends the connection over what the peer sent: a close frame with `code` and `why`
    /// (best effort), and an error for the reader.
    fn fail(&mut self, code: CloseCode, why: String) -> io::Error {
        let close = CloseFrame {
            code,
            reason: why.as_str().into(),
        };
        if self.ws.close(Some(close)).is_ok() {
            let _ = self.ws.flush();
        }
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// Reads the next message into `rd`; `Ok(false)` at the end of the stream.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        self.ws.get_mut().set_waker(cx.waker());
        loop {
            return Poll::Ready(match self.ws.read() {
                Ok(Message::Binary(b)) => {
                    self.split = whole_frames(&b, usize::MAX) != b.len();
                    self.rd = b;
                    Ok(true)
                }
                Ok(Message::Text(_)) => Err(self.fail(
                    CloseCode::Unsupported,
                    "mitto frames travel in binary messages, not text".into(),
                )),
                Ok(Message::Close(_)) => {
                    let _ = self.ws.flush();
                    Ok(false)
                }
                // Pings are answered by tungstenite (on this read or the next write).
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Poll::Pending
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    Ok(false)
                }
                Err(tungstenite::Error::Capacity(e)) => Err(self.fail(
                    CloseCode::Size,
                    format!("{e} (the message limit is {} bytes)", self.max_message),
                )),
                Err(tungstenite::Error::Io(e)) => Err(e),
                Err(e) => Err(self.fail(CloseCode::Protocol, e.to_string())),
            });
        }
    }

    /// Sends the whole frames collected, as messages of at most `max_message` bytes, and
    /// flushes.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.get_mut().set_waker(cx.waker());
        while self.whole > 0 {
            let n = whole_frames(&self.wr[..self.whole], self.max_message);
            let msg = self.wr.split_to(n).freeze();
            self.whole -= n;
            match self.ws.write(Message::Binary(msg)) {
                Ok(()) => {}
                // Queued; the socket is full.
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Poll::Pending
                }
                Err(e) => return Poll::Ready(Err(to_io(e))),
            }
        }
        match self.ws.flush() {
            Ok(()) => Poll::Ready(Ok(())),
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }

    fn collect(&mut self, buf: &[u8]) {
        self.wr.extend_from_slice(buf);
        self.whole += whole_frames(&self.wr[self.whole..], usize::MAX);
    }
}

fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        e => io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()),
    }
}

impl AsyncRead for WsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // An empty message carries nothing (and must not read as the end of the stream).
        while this.rd.is_empty() {
            if this.split {
                let why = "a message ended inside a mitto frame (frames are never split)";
                return Poll::Ready(Err(this.fail(CloseCode::Protocol, why.into())));
            }
            if !std::task::ready!(this.poll_message(cx))? {
                return Poll::Ready(Ok(()));
            }
        }
        let n = this.rd.len().min(buf.remaining());
        buf.put_slice(&this.rd[..n]);
        this.rd.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.wr.len() >= WRITE_HIGH && this.whole > 0 {
            std::task::ready!(this.poll_send(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            this.collect(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_send(cx))?;
        if this.ws.can_write() {
            let _ = this.ws.close(None);
        }
        match this.ws.flush() {
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return Poll::Pending
            }
            _ => {}
        }
        this.ws.get_mut().poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mitto_proto::Frame;

    #[test]
    fn whole_frames_counts_complete_frames_within_the_bound() {
        let mut b = BytesMut::new();
        let a = Frame::publish(
            mitto_proto::Subject::new("a.b").unwrap(),
            Bytes::from_static(b"12345"),
        );
        a.encode(&mut b).unwrap();
        let one = b.len();
        a.encode(&mut b).unwrap();
        assert_eq!(whole_frames(&b, usize::MAX), 2 * one);
        assert_eq!(whole_frames(&b, one), one);
        // The first frame counts even over the bound.
        assert_eq!(whole_frames(&b, 1), one);
        assert_eq!(whole_frames(&b[..one + 10], usize::MAX), one);
        assert_eq!(whole_frames(&b[..10], usize::MAX), 0);
    }
}
