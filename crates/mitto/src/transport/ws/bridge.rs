//! tungstenite's sync API over an async stream: a read or write that would wait returns
//! `WouldBlock`, having registered the waker of the task that polls (set before each call).

use super::super::Io;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A byte stream (TCP or TLS) seen as `Read + Write`.
#[derive(Debug)]
pub(super) struct SyncIo {
    io: Io,
    waker: Waker,
    /// Bytes it may still read (the upgrade request's bound); `None`: no bound.
    budget: Option<usize>,
}

impl SyncIo {
    pub(super) fn new(io: Io, budget: Option<usize>) -> SyncIo {
        SyncIo {
            io,
            waker: Waker::noop().clone(),
            budget,
        }
    }

    /// The waker the next read or write registers.
    pub(super) fn set_waker(&mut self, w: &Waker) {
        self.waker.clone_from(w);
    }

    /// Lifts the read bound (the upgrade is done).
    pub(super) fn unbound(&mut self) {
        self.budget = None;
    }

    fn poll<T>(
        &mut self,
        f: impl FnOnce(Pin<&mut Io>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T> {
        match f(
            Pin::new(&mut self.io),
            &mut Context::from_waker(&self.waker),
        ) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Shuts the byte stream down (after the WebSocket close).
    pub(super) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Read for SyncIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = match self.budget {
            Some(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the WebSocket upgrade request is too large",
                ))
            }
            Some(b) => b.min(buf.len()),
            None => buf.len(),
        };
        let mut rb = ReadBuf::new(&mut buf[..room]);
        self.poll(|io, cx| io.poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if let Some(b) = &mut self.budget {
            *b -= n;
        }
        Ok(n)
    }
}

impl Write for SyncIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.poll(|io, cx| io.poll_write(cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.poll(|io, cx| io.poll_flush(cx))
    }
}
