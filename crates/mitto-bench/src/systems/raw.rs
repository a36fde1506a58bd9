//! The floor for round trips: a raw tokio ping-pong over the same socket kind. The client writes
//! a 4-byte big-endian length and the payload in one write; the server reads it through a
//! buffer (one read for the whole frame) and writes it back in one write; the client reads
//! the echo with `read_exact`. No protocol, no ids, no headers: what is left is the sockets and
//! the runtime.

use crate::runtime::ServerRuntime;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

const MAX_FRAME: usize = 1 << 20;

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> std::io::Result<()> {
    let mut s = BufReader::new(stream);
    let mut buf = vec![0u8; 4 + MAX_FRAME];
    loop {
        match s.read_exact(&mut buf[..4]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if n > MAX_FRAME {
            return Err(std::io::Error::other("frame too large"));
        }
        s.read_exact(&mut buf[4..4 + n]).await?;
        s.write_all(&buf[..4 + n]).await?;
    }
}

/// Starts the TCP echo floor on `srt`; returns its address.
pub(crate) async fn start_tcp(srt: &ServerRuntime) -> anyhow::Result<SocketAddr> {
    srt.run(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve_conn(s));
            }
        });
        Ok(addr)
    })
    .await
}

/// Starts the Unix-socket echo floor on `srt` at `path`.
pub(crate) async fn start_unix(srt: &ServerRuntime, path: PathBuf) -> anyhow::Result<()> {
    srt.run(async move {
        let listener =
            UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve_conn(s));
            }
        });
        Ok(())
    })
    .await
}

/// A ping-pong client over a stream.
pub(crate) struct RawClient<S> {
    stream: S,
    out: Vec<u8>,
    back: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    fn new(stream: S, payload: &[u8]) -> anyhow::Result<RawClient<S>> {
        let len = u32::try_from(payload.len()).context("payload too large")?;
        let mut out = Vec::with_capacity(4 + payload.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        let back = vec![0u8; out.len()];
        Ok(RawClient { stream, out, back })
    }

    /// One round trip: write the frame, read the echo, check it.
    pub(crate) async fn round_trip(&mut self) -> anyhow::Result<()> {
        self.stream.write_all(&self.out).await?;
        self.stream.read_exact(&mut self.back).await?;
        anyhow::ensure!(self.back[..4] == self.out[..4], "raw echo mismatch");
        Ok(())
    }
}

/// Connects a TCP ping-pong client (`TCP_NODELAY` on, as mitto sets it).
pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    payload: &[u8],
) -> anyhow::Result<RawClient<TcpStream>> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    RawClient::new(s, payload)
}

/// Connects a Unix-socket ping-pong client.
pub(crate) async fn connect_unix(
    path: &std::path::Path,
    payload: &[u8],
) -> anyhow::Result<RawClient<UnixStream>> {
    RawClient::new(UnixStream::connect(path).await?, payload)
}
