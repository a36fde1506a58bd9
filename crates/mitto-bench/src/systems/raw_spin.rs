//! The spinning floor for round trips (`raw-tcp-spin`, `raw-unix-spin`): the raw ping-pong of
//! `raw` with both ends busy-polling instead of sleeping, as mitto's latency mode does. Each
//! end keeps its socket non-blocking and retries a read that finds nothing for up to a window
//! after its last read or write; only when the window passes without data does it block in
//! `read` (and goes back to polling once something arrives). The server is one thread serving
//! one connection; it ends when the client closes.

use anyhow::Context as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

const MAX_FRAME: usize = 1 << 20;

/// A stream whose blocking mode can be switched.
pub(crate) trait Spinnable: Read + Write + Send + 'static {
    /// `set_nonblocking` of the std stream.
    fn nonblocking(&self, on: bool) -> std::io::Result<()>;
}

impl Spinnable for TcpStream {
    fn nonblocking(&self, on: bool) -> std::io::Result<()> {
        self.set_nonblocking(on)
    }
}

impl Spinnable for UnixStream {
    fn nonblocking(&self, on: bool) -> std::io::Result<()> {
        self.set_nonblocking(on)
    }
}

/// Reads at least `want` bytes into `buf[*filled..]` (more if they are there), polling for
/// `window` before blocking.
fn read_spin<S: Spinnable>(
    s: &mut S,
    buf: &mut [u8],
    filled: &mut usize,
    want: usize,
    window: Duration,
) -> std::io::Result<()> {
    let since = Instant::now();
    let mut blocking = false;
    while *filled < want {
        match s.read(&mut buf[*filled..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => *filled += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if since.elapsed() >= window {
                    s.nonblocking(false)?;
                    blocking = true;
                } else {
                    std::hint::spin_loop();
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if blocking {
        s.nonblocking(true)?;
    }
    Ok(())
}

/// Writes all of `buf` on a non-blocking stream.
fn write_spin<S: Spinnable>(s: &mut S, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                std::hint::spin_loop();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Echoes length-prefixed frames until the client closes.
fn serve<S: Spinnable>(mut s: S, window: Duration) -> std::io::Result<()> {
    s.nonblocking(true)?;
    let mut buf = vec![0u8; 4 + MAX_FRAME];
    let mut filled = 0usize;
    loop {
        match read_spin(&mut s, &mut buf, &mut filled, 4, window) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if n > MAX_FRAME {
            return Err(std::io::Error::other("frame too large"));
        }
        read_spin(&mut s, &mut buf, &mut filled, 4 + n, window)?;
        write_spin(&mut s, &buf[..4 + n])?;
        buf.copy_within(4 + n..filled, 0);
        filled -= 4 + n;
    }
}

/// Serves the first connection `accept` gives on a thread of its own.
fn spawn_server<S: Spinnable>(
    accept: impl FnOnce() -> std::io::Result<S> + Send + 'static,
    window: Duration,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("raw-spin-server".into())
        .spawn(move || {
            if let Ok(s) = accept() {
                let _ = serve(s, window);
            }
        })
        .context("spawning the spinning floor's server")?;
    Ok(())
}

/// A spinning ping-pong client.
pub(crate) struct SpinClient<S> {
    stream: S,
    out: Vec<u8>,
    back: Vec<u8>,
    window: Duration,
}

impl<S: Spinnable> SpinClient<S> {
    fn new(stream: S, payload: &[u8], window: Duration) -> anyhow::Result<SpinClient<S>> {
        stream.nonblocking(true)?;
        let len = u32::try_from(payload.len()).context("payload too large")?;
        let mut out = Vec::with_capacity(4 + payload.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        let back = vec![0u8; out.len()];
        Ok(SpinClient {
            stream,
            out,
            back,
            window,
        })
    }

    /// One round trip: write the frame, poll for the echo, check it.
    pub(crate) fn round_trip(&mut self) -> anyhow::Result<()> {
        write_spin(&mut self.stream, &self.out)?;
        let mut filled = 0;
        let want = self.back.len();
        read_spin(
            &mut self.stream,
            &mut self.back,
            &mut filled,
            want,
            self.window,
        )?;
        anyhow::ensure!(self.back[..4] == self.out[..4], "raw echo mismatch");
        Ok(())
    }
}

/// A TCP server on a free port of 127.0.0.1 and a client connected to it (`TCP_NODELAY` on
/// both ends), each polling for `window`.
pub(crate) fn tcp(payload: &[u8], window: Duration) -> anyhow::Result<SpinClient<TcpStream>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr: SocketAddr = listener.local_addr()?;
    spawn_server(
        move || {
            let (s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            Ok(s)
        },
        window,
    )?;
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    SpinClient::new(s, payload, window)
}

/// A Unix-socket server at `path` and a client connected to it, each polling for `window`.
pub(crate) fn unix(
    path: &Path,
    payload: &[u8],
    window: Duration,
) -> anyhow::Result<SpinClient<UnixStream>> {
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    spawn_server(move || listener.accept().map(|(s, _)| s), window)?;
    SpinClient::new(UnixStream::connect(path)?, payload, window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_over_tcp_and_unix() {
        let window = Duration::from_micros(50);
        let mut c = tcp(&[7u8; 32], window).unwrap_or_else(|e| panic!("{e:#}"));
        for _ in 0..100 {
            c.round_trip().unwrap_or_else(|e| panic!("{e:#}"));
        }
        assert_eq!(c.back, c.out);
        let path =
            std::env::temp_dir().join(format!("mitto-bench-spin-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut u = unix(&path, &[9u8; 100], window).unwrap_or_else(|e| panic!("{e:#}"));
        // A gap longer than the window: both ends fall back to blocking reads, then poll again.
        u.round_trip().unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..100 {
            u.round_trip().unwrap_or_else(|e| panic!("{e:#}"));
        }
        assert_eq!(u.back, u.out);
        drop(u);
        let _ = std::fs::remove_file(&path);
    }
}
