//! Transports behind one small abstraction, chosen by URL:
//!
//! | URL | transport |
//! |---|---|
//! | `mem://name` (or `inproc://name`) | in-process [`Link`]: frames move by reference, never encoded |
//! | `tcp://host:port`, or just `host:port` | TCP with `TCP_NODELAY` and keepalive |
//! | `unix:///path/to/socket` | Unix domain socket |
//! | `tls://host:port` | TLS 1.2/1.3 over TCP (rustls) |
//! | `ws://host:port/path` | WebSocket (subprotocol `mitto.v1`, binary messages of whole frames) |
//! | `wss://host:port/path` | WebSocket over TLS |
//!
//! User code names a URL; nothing else changes between transports.

mod link;
mod tls;
mod ws;

pub use link::{Link, PortSlot};
pub use tls::{TlsClientConfig, TlsServerConfig};
pub use ws::{WsIo, SUBPROTOCOL};

use crate::error::{Error, Result};
use link::mem_registry;
use mitto_proto::Status;
use rustls::pki_types::ServerName;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;

/// Where to connect or listen, parsed from a URL.
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `mem://name`: an in-process pipe registered under `name`.
    Mem(String),
    /// `inproc://name`: the same pipe as `mem://name`, under the name the user wrote.
    Inproc(String),
    /// `tcp://host:port`, or a bare `host:port`.
    Tcp(String),
    /// `unix:///path`.
    Unix(PathBuf),
    /// `tls://host:port`; the host is also the server name checked against the certificate.
    Tls(String),
    /// `ws://host:port/path` (port 80 when left out).
    Ws(WsAddr),
    /// `wss://host:port/path` (port 443 when left out): WebSocket over TLS, the host checked
    /// against the certificate.
    Wss(WsAddr),
}

/// Where a WebSocket endpoint is: the TCP address and the request path.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct WsAddr {
    /// `host:port`.
    pub addr: String,
    /// The request target, starting with `/` (a query string included).
    pub path: String,
}

impl WsAddr {
    fn parse(rest: &str, default_port: u16, bad: impl Fn(&str) -> Error) -> Result<WsAddr> {
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().ok()),
            _ => (authority, Some(default_port)),
        };
        let (false, Some(port)) = (host.is_empty(), port) else {
            return Err(bad("expected host[:port][/path] with a numeric port"));
        };
        let addr = format!("{host}:{port}");
        Ok(WsAddr { addr, path })
    }
}

/// Every scheme a URL may have (a bare `host:port` is `tcp`).
pub const SCHEMES: &[&str] = &["mem", "inproc", "tcp", "unix", "tls", "ws", "wss"];

impl FromStr for Endpoint {
    type Err = Error;
    fn from_str(url: &str) -> Result<Endpoint> {
        let bad =
            |why: &str| Error::new(Status::BAD_REQUEST, format!("invalid URL {url:?}: {why}"));
        // A bare `host:port` is TCP, as users of nats-server and redis type it.
        let (scheme, rest) = url.split_once("://").unwrap_or(("tcp", url));
        if rest.is_empty() {
            return Err(bad("empty address"));
        }
        let host_port = |rest: &str| {
            let (h, p) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected host:port or scheme://address"))?;
            if h.is_empty() || h.contains('/') || p.parse::<u16>().is_err() {
                return Err(bad("expected host:port with a numeric port"));
            }
            Ok(rest.to_owned())
        };
        match scheme {
            "mem" => Ok(Endpoint::Mem(rest.to_owned())),
            "inproc" => Ok(Endpoint::Inproc(rest.to_owned())),
            "tcp" => host_port(rest).map(Endpoint::Tcp),
            "tls" => host_port(rest).map(Endpoint::Tls),
            "unix" => Ok(Endpoint::Unix(PathBuf::from(rest))),
            "ws" => WsAddr::parse(rest, 80, bad).map(Endpoint::Ws),
            "wss" => WsAddr::parse(rest, 443, bad).map(Endpoint::Wss),
            other => Err(bad(&format!(
                "unknown scheme {other:?} (one of {})",
                SCHEMES.join(", ")
            ))),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Mem(n) => write!(f, "mem://{n}"),
            Endpoint::Inproc(n) => write!(f, "inproc://{n}"),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tls(a) => write!(f, "tls://{a}"),
            Endpoint::Ws(w) => write!(f, "ws://{}{}", w.addr, ws::shown_path(&w.path)),
            Endpoint::Wss(w) => write!(f, "wss://{}{}", w.addr, ws::shown_path(&w.path)),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// A connected stream of any transport.
#[non_exhaustive]
pub enum Io {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
    /// In-process link (frames, not bytes).
    Link(Link),
    /// TLS client side.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS server side.
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// WebSocket, over TCP or TLS.
    Ws(Box<WsIo>),
}

impl Io {
    /// Sets the largest message a WebSocket sends and accepts to `max_frame`, the largest
    /// frame the agreed limits allow (until then it is the handshake's); other transports
    /// have no messages.
    pub fn set_frame_limit(&mut self, max_frame: u64) {
        if let Io::Ws(w) = self {
            w.set_max_message(max_frame);
        }
    }
}

impl fmt::Debug for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Io::Tcp(_) => "Io::Tcp",
            Io::Unix(_) => "Io::Unix",
            Io::Link(_) => "Io::Link",
            Io::TlsClient(_) => "Io::TlsClient",
            Io::TlsServer(_) => "Io::TlsServer",
            Io::Ws(_) => "Io::Ws",
        })
    }
}

fn not_bytes<T>() -> Poll<io::Result<T>> {
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "an in-process link carries frames, not bytes",
    )))
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Tcp($s) => $e,
            Io::Unix($s) => $e,
            Io::Link(_) => not_bytes(),
            Io::TlsClient($s) => $e,
            Io::TlsServer($s) => $e,
            Io::Ws($s) => $e,
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Unix(s) => s.is_write_vectored(),
            Io::Link(_) => false,
            Io::TlsClient(s) => s.is_write_vectored(),
            Io::TlsServer(s) => s.is_write_vectored(),
            Io::Ws(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

fn unavailable(e: impl fmt::Display, what: &str) -> Error {
    Error::new(Status::UNAVAILABLE, format!("{what}: {e}")).retryable()
}

/// TCP_NODELAY (frames are batched by the driver, Nagle would only add latency) and TCP keepalive
/// (dead peers are found even when the protocol keepalive is off).
fn tune_tcp(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(10));
    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&keepalive);
}

/// Opens a connection to `ep`.
pub async fn connect(ep: &Endpoint, tls: Option<&TlsClientConfig>) -> Result<Io> {
    match ep {
        Endpoint::Mem(name) | Endpoint::Inproc(name) => {
            let tx = mem_registry()
                .lock()
                .map_err(|_| Error::new(Status::INTERNAL, "mem registry poisoned"))?
                .get(name)
                .cloned()
                .ok_or_else(|| unavailable("no listener", &ep.to_string()))?;
            let (a, b) = Link::pair();
            tx.send(b)
                .await
                .map_err(|_| unavailable("listener closed", &ep.to_string()))?;
            Ok(Io::Link(a))
        }
        Endpoint::Tcp(addr) => connect_tcp(addr, "tcp").await,
        Endpoint::Unix(path) => {
            let s = UnixStream::connect(path)
                .await
                .map_err(|e| unavailable(e, &format!("unix://{}", path.display())))?;
            Ok(Io::Unix(s))
        }
        Endpoint::Tls(addr) => connect_tls(addr, tls, "tls").await,
        Endpoint::Ws(w) => {
            let io = connect_tcp(&w.addr, "ws").await?;
            ws::connect(io, "ws", w).await.map(|w| Io::Ws(Box::new(w)))
        }
        Endpoint::Wss(w) => {
            let io = connect_tls(&w.addr, tls, "wss").await?;
            ws::connect(io, "wss", w).await.map(|w| Io::Ws(Box::new(w)))
        }
    }
}

async fn connect_tcp(addr: &str, scheme: &str) -> Result<Io> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| unavailable(e, &format!("{scheme}://{addr}")))?;
    tune_tcp(&s);
    Ok(Io::Tcp(s))
}

async fn connect_tls(addr: &str, tls: Option<&TlsClientConfig>, scheme: &str) -> Result<Io> {
    let cfg = tls.ok_or_else(|| {
        Error::new(
            Status::BAD_REQUEST,
            format!("{scheme}:// needs a TLS client configuration (ClientOptions::tls)"),
        )
    })?;
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned()).map_err(|e| {
        Error::new(
            Status::BAD_REQUEST,
            format!("TLS server name {host:?}: {e}"),
        )
    })?;
    let Io::Tcp(s) = connect_tcp(addr, scheme).await? else {
        return Err(Error::new(
            Status::INTERNAL,
            "TCP connect gave another stream",
        ));
    };
    let t = tokio_rustls::TlsConnector::from(cfg.0.clone())
        .connect(name, s)
        .await
        .map_err(|e| unavailable(e, &format!("TLS handshake with {addr}")))?;
    Ok(Io::TlsClient(Box::new(t)))
}

/// Accepts connections on an endpoint.
#[derive(Debug)]
pub struct Listener {
    inner: ListenerInner,
    tls: Option<TlsServerConfig>,
    /// The WebSocket upgrade, on `ws://` and `wss://`.
    ws: Option<Arc<ws::Upgrade>>,
    url: String,
}

#[derive(Debug)]
enum ListenerInner {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    Mem(mpsc::Receiver<Link>, String),
}

/// A connection accepted but not yet set up (TLS handshake, WebSocket upgrade pending). Finish
/// it in the connection's own task with [`Incoming::establish`] so a slow handshake never
/// stalls accepting.
#[derive(Debug)]
pub struct Incoming {
    io: Io,
    tls: Option<TlsServerConfig>,
    ws: Option<Arc<ws::Upgrade>>,
    /// The peer's address, for logs.
    pub peer: String,
}

impl Incoming {
    /// Where an in-process connection's accepting side offers the peer direct calls (see
    /// [`Link::port_slot`]); `None` on byte streams.
    pub fn port_slot(&self) -> Option<PortSlot> {
        match &self.io {
            Io::Link(l) => Some(l.port_slot()),
            _ => None,
        }
    }

    /// Completes the TLS handshake if the listener has TLS, then the WebSocket upgrade if it
    /// is a WebSocket listener.
    pub async fn establish(self) -> Result<Io> {
        let io = match (self.io, self.tls) {
            (Io::Tcp(s), Some(cfg)) => {
                let t = tokio_rustls::TlsAcceptor::from(cfg.0)
                    .accept(s)
                    .await
                    .map_err(|e| unavailable(e, "TLS handshake"))?;
                Io::TlsServer(Box::new(t))
            }
            (io, _) => io,
        };
        match self.ws {
            Some(up) => up.accept(io).await.map(|w| Io::Ws(Box::new(w))),
            None => Ok(io),
        }
    }
}

impl Listener {
    /// Binds `ep`. `tls://` and `wss://` need `tls`; `tcp://` with `tls` also serves TLS;
    /// `ws://` is always plain (its URL says so). A WebSocket listener answers requests for its
    /// path only (any path when bound to `/`), from the origins [`Listener::allow_origins`]
    /// lets in.
    pub async fn bind(ep: &Endpoint, tls: Option<TlsServerConfig>) -> Result<Listener> {
        let bind_err =
            |e: io::Error, what: &str| Error::new(Status::UNAVAILABLE, format!("bind {what}: {e}"));
        let mut tls = tls;
        let mut ws = None;
        let (inner, url) = match ep {
            Endpoint::Ws(w) | Endpoint::Wss(w) => {
                let l = TcpListener::bind(&w.addr)
                    .await
                    .map_err(|e| bind_err(e, &w.addr))?;
                let local = l.local_addr().map_err(|e| bind_err(e, &w.addr))?;
                let scheme = if matches!(ep, Endpoint::Wss(_)) {
                    "wss"
                } else {
                    tls = None;
                    "ws"
                };
                ws = Some(Arc::new(ws::Upgrade::new(&w.path)));
                let url = format!("{scheme}://{local}{}", ws::shown_path(&w.path));
                (ListenerInner::Tcp(l), url)
            }
            Endpoint::Tcp(addr) | Endpoint::Tls(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|e| bind_err(e, addr))?;
                let local = l.local_addr().map_err(|e| bind_err(e, addr))?;
                let scheme = if matches!(ep, Endpoint::Tls(_)) {
                    "tls"
                } else {
                    "tcp"
                };
                (ListenerInner::Tcp(l), format!("{scheme}://{local}"))
            }
            Endpoint::Unix(path) => {
                if path.exists() && UnixStream::connect(path).await.is_err() {
                    // A socket file left by a dead process.
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path)
                    .map_err(|e| bind_err(e, &path.display().to_string()))?;
                (
                    ListenerInner::Unix(l, path.clone()),
                    format!("unix://{}", path.display()),
                )
            }
            Endpoint::Mem(name) | Endpoint::Inproc(name) => {
                let mut reg = mem_registry()
                    .lock()
                    .map_err(|_| Error::new(Status::INTERNAL, "mem registry poisoned"))?;
                if reg.get(name).is_some_and(|tx| !tx.is_closed()) {
                    return Err(Error::new(
                        Status::ALREADY_EXISTS,
                        format!("{ep} is already bound"),
                    ));
                }
                let (tx, rx) = mpsc::channel(128);
                reg.insert(name.clone(), tx);
                (ListenerInner::Mem(rx, name.clone()), ep.to_string())
            }
        };
        if matches!(ep, Endpoint::Tls(_) | Endpoint::Wss(_)) && tls.is_none() {
            return Err(Error::new(
                Status::BAD_REQUEST,
                format!("{url}: needs a TLS server configuration"),
            ));
        }
        Ok(Listener {
            inner,
            tls,
            ws,
            url,
        })
    }

    /// On a WebSocket listener, the browser origins let in besides same-host ones (`*`: any);
    /// requests without an `Origin` header (programs, not browsers) are always let in.
    pub fn allow_origins(&mut self, origins: Vec<String>) {
        if let Some(up) = &mut self.ws {
            *up = Arc::new(up.with_origins(origins));
        }
    }

    /// The URL clients use to reach this listener (with the real port when bound to port 0).
    pub fn local_url(&self) -> &str {
        &self.url
    }

    /// Waits for the next connection.
    pub async fn accept(&mut self) -> Result<Incoming> {
        let (io, peer) = match &mut self.inner {
            ListenerInner::Tcp(l) => {
                let (s, addr) = l.accept().await.map_err(|e| unavailable(e, "accept"))?;
                tune_tcp(&s);
                (Io::Tcp(s), addr.to_string())
            }
            ListenerInner::Unix(l, path) => {
                let (s, _) = l.accept().await.map_err(|e| unavailable(e, "accept"))?;
                (Io::Unix(s), format!("unix:{}", path.display()))
            }
            ListenerInner::Mem(rx, name) => {
                let s = rx
                    .recv()
                    .await
                    .ok_or_else(|| unavailable("closed", "accept"))?;
                (Io::Link(s), format!("mem:{name}"))
            }
        };
        Ok(Incoming {
            io,
            tls: self.tls.clone(),
            ws: self.ws.clone(),
            peer,
        })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        match &self.inner {
            ListenerInner::Unix(_, path) => {
                let _ = std::fs::remove_file(path);
            }
            ListenerInner::Mem(_, name) => {
                if let Ok(mut reg) = mem_registry().lock() {
                    if reg
                        .get(name)
                        .is_some_and(|tx| tx.is_closed() || tx.strong_count() <= 1)
                    {
                        reg.remove(name);
                    }
                }
            }
            ListenerInner::Tcp(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            "tcp://127.0.0.1:4747".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:4747".into())
        );
        assert_eq!(
            "mem://bus".parse::<Endpoint>().unwrap(),
            Endpoint::Mem("bus".into())
        );
        // Reported back as written, and the same pipe as mem://bus.
        let inproc = "inproc://bus".parse::<Endpoint>().unwrap();
        assert_eq!(inproc, Endpoint::Inproc("bus".into()));
        assert_eq!(inproc.to_string(), "inproc://bus");
        for scheme in SCHEMES {
            let parsed = format!("{scheme}://localhost:1").parse::<Endpoint>();
            assert!(parsed.is_ok(), "{scheme}: {parsed:?}");
        }
        let e = "ftp://x:1".parse::<Endpoint>().unwrap_err();
        assert!(
            e.message().contains("mem, inproc, tcp, unix, tls, ws, wss"),
            "every scheme listed: {e}"
        );
        assert_eq!(
            "unix:///tmp/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "tls://localhost:443".parse::<Endpoint>().unwrap(),
            Endpoint::Tls("localhost:443".into())
        );
        let ws = |addr: &str, path: &str| WsAddr {
            addr: addr.into(),
            path: path.into(),
        };
        for (url, ep, shown) in [
            (
                "ws://127.0.0.1:4748",
                Endpoint::Ws(ws("127.0.0.1:4748", "/")),
                "ws://127.0.0.1:4748",
            ),
            (
                "ws://h:1/a/b?x=1",
                Endpoint::Ws(ws("h:1", "/a/b?x=1")),
                "ws://h:1/a/b?x=1",
            ),
            ("ws://h?x", Endpoint::Ws(ws("h:80", "/?x")), "ws://h:80/?x"),
            (
                "wss://example.com/m",
                Endpoint::Wss(ws("example.com:443", "/m")),
                "wss://example.com:443/m",
            ),
            (
                "wss://[::1]:9/",
                Endpoint::Wss(ws("[::1]:9", "/")),
                "wss://[::1]:9",
            ),
            (
                "ws://[::1]",
                Endpoint::Ws(ws("[::1]:80", "/")),
                "ws://[::1]:80",
            ),
        ] {
            let got = url.parse::<Endpoint>().unwrap();
            assert_eq!(got, ep, "{url}");
            assert_eq!(got.to_string(), shown, "{url}");
        }
        // A bare host:port is TCP.
        for (bare, addr) in [
            ("127.0.0.1:4747", "127.0.0.1:4747"),
            ("localhost:1", "localhost:1"),
            ("[::1]:4747", "[::1]:4747"),
        ] {
            let ep = bare.parse::<Endpoint>().unwrap();
            assert_eq!(ep, Endpoint::Tcp(addr.into()));
            assert_eq!(ep.to_string(), format!("tcp://{addr}"));
        }
        for bad in [
            "",
            "localhost",
            "127.0.0.1",
            ":4747",
            "host:port",
            "tcp:/host:1",
            "tcp://",
            "tcp://host",
            "tcp://host:x",
            "ftp://a:1",
            "tcp://:80",
            "ws://",
            "ws://:80/x",
            "ws://h:x/",
            "wss://h:99999",
        ] {
            let e = bad.parse::<Endpoint>().unwrap_err();
            assert_eq!(e.status(), Status::BAD_REQUEST, "{bad}");
        }
        assert_eq!(Endpoint::Unix("/a".into()).to_string(), "unix:///a");
    }
}
