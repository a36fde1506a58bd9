//! Transports behind one small abstraction, chosen by URL:
//!
//! | URL | transport |
//! |---|---|
//! | `mem://name` (or `inproc://name`) | in-process [`Link`]: frames move by reference, never encoded |
//! | `tcp://host:port` | TCP with `TCP_NODELAY` and keepalive |
//! | `unix:///path/to/socket` | Unix domain socket |
//! | `tls://host:port` | TLS 1.2/1.3 over TCP (rustls) |
//!
//! User code names a URL; nothing else changes between transports.

use crate::error::{Error, Result};
use crate::local::LocalPort;
use mitto_proto::Frame;
use mitto_proto::Status;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
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
    /// `tcp://host:port`.
    Tcp(String),
    /// `unix:///path`.
    Unix(PathBuf),
    /// `tls://host:port`; the host is also the server name checked against the certificate.
    Tls(String),
}

impl FromStr for Endpoint {
    type Err = Error;
    fn from_str(url: &str) -> Result<Endpoint> {
        let bad =
            |why: &str| Error::new(Status::BAD_REQUEST, format!("invalid URL {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://address"))?;
        if rest.is_empty() {
            return Err(bad("empty address"));
        }
        let host_port = |rest: &str| {
            let (h, p) = rest
                .rsplit_once(':')
                .ok_or_else(|| bad("expected host:port"))?;
            if h.is_empty() || p.parse::<u16>().is_err() {
                return Err(bad("expected host:port with a numeric port"));
            }
            Ok(rest.to_owned())
        };
        match scheme {
            "mem" | "inproc" => Ok(Endpoint::Mem(rest.to_owned())),
            "tcp" => host_port(rest).map(Endpoint::Tcp),
            "tls" => host_port(rest).map(Endpoint::Tls),
            "unix" => Ok(Endpoint::Unix(PathBuf::from(rest))),
            other => Err(bad(&format!(
                "unknown scheme {other:?} (mem, tcp, unix, tls)"
            ))),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Mem(n) => write!(f, "mem://{n}"),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tls(a) => write!(f, "tls://{a}"),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// TLS settings of a client: the roots it trusts.
#[derive(Clone)]
pub struct TlsClientConfig(Arc<rustls::ClientConfig>);

impl TlsClientConfig {
    /// Trusts the CA certificates in `pem` (and nothing else).
    pub fn with_ca_pem(pem: &[u8]) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::new(Status::BAD_REQUEST, format!("CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::new(Status::BAD_REQUEST, format!("CA cert: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::new(
                Status::BAD_REQUEST,
                "CA PEM holds no certificate",
            ));
        }
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(Status::INTERNAL, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClientConfig(Arc::new(cfg)))
    }

    /// Uses a rustls configuration as it is.
    pub fn from_rustls(cfg: Arc<rustls::ClientConfig>) -> Self {
        TlsClientConfig(cfg)
    }
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsClientConfig")
    }
}

/// TLS settings of a server: its certificate chain and key.
#[derive(Clone)]
pub struct TlsServerConfig(Arc<rustls::ServerConfig>);

impl TlsServerConfig {
    /// From a PEM certificate chain and a PEM private key.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self> {
        let certs = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::new(Status::BAD_REQUEST, format!("certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::new(
                Status::BAD_REQUEST,
                "certificate PEM holds no certificate",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| Error::new(Status::BAD_REQUEST, format!("key PEM: {e}")))?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::new(Status::INTERNAL, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| Error::new(Status::BAD_REQUEST, format!("certificate/key: {e}")))?;
        Ok(TlsServerConfig(Arc::new(cfg)))
    }

    /// Uses a rustls configuration as it is.
    pub fn from_rustls(cfg: Arc<rustls::ServerConfig>) -> Self {
        TlsServerConfig(cfg)
    }
}

impl fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsServerConfig")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Frames each direction of a [`Link`] may hold (in batches) before the sender waits.
const LINK_BATCHES: usize = 64;

/// An in-process connection: each side sends batches of [`Frame`]s that the other receives as
/// they are (payloads and attached values shared, nothing encoded). One end may also offer the
/// other a [`LocalPort`] for direct calls.
pub struct Link {
    tx: tokio_util::sync::PollSender<Vec<Frame>>,
    rx: mpsc::Receiver<Vec<Frame>>,
    pending: VecDeque<Frame>,
    port: Arc<OnceLock<Arc<dyn LocalPort>>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Link")
    }
}

impl Link {
    /// Two connected ends.
    pub fn pair() -> (Link, Link) {
        let (atx, arx) = mpsc::channel(LINK_BATCHES);
        let (btx, brx) = mpsc::channel(LINK_BATCHES);
        let port = Arc::new(OnceLock::new());
        (
            Link {
                tx: tokio_util::sync::PollSender::new(atx),
                rx: brx,
                pending: VecDeque::new(),
                port: port.clone(),
            },
            Link {
                tx: tokio_util::sync::PollSender::new(btx),
                rx: arx,
                pending: VecDeque::new(),
                port,
            },
        )
    }

    /// Sends a batch, waiting while the peer's queue is full.
    pub async fn send(&mut self, frames: Vec<Frame>) -> Result<()> {
        std::future::poll_fn(|cx| self.tx.poll_reserve(cx))
            .await
            .map_err(|_| Error::connection_lost("the in-process peer went away"))?;
        self.tx
            .send_item(frames)
            .map_err(|_| Error::connection_lost("the in-process peer went away"))
    }

    /// Waits until a batch can be sent.
    pub fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx
            .poll_reserve(cx)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Sends a batch after [`Link::poll_reserve`] said there is room.
    pub fn send_reserved(&mut self, frames: Vec<Frame>) -> io::Result<()> {
        self.tx
            .send_item(frames)
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Ends this side's sending: the peer reads the end of the stream.
    pub fn close(&mut self) {
        self.tx.close();
    }

    /// The next frame; `None` once the peer is gone.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame>> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Poll::Ready(Some(f));
            }
            match std::task::ready!(self.rx.poll_recv(cx)) {
                Some(batch) => self.pending.extend(batch),
                None => return Poll::Ready(None),
            }
        }
    }

    /// Waits for the next frame.
    pub async fn recv(&mut self) -> Option<Frame> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Where the accepting side offers the peer direct calls; offer before the handshake
    /// reply, so that the client finds it as soon as it is connected.
    pub fn port_slot(&self) -> PortSlot {
        PortSlot(self.port.clone())
    }

    /// The port the peer offered, if any.
    pub fn port(&self) -> Option<Arc<dyn LocalPort>> {
        self.port.get().cloned()
    }
}

/// The place on a [`Link`] where the accepting side offers a [`LocalPort`].
#[derive(Clone)]
pub struct PortSlot(Arc<OnceLock<Arc<dyn LocalPort>>>);

impl PortSlot {
    /// Offers `port` (the first offer stands).
    pub fn offer(&self, port: Arc<dyn LocalPort>) {
        let _ = self.0.set(port);
    }
}

impl fmt::Debug for PortSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PortSlot")
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
}

impl fmt::Debug for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Io::Tcp(_) => "Io::Tcp",
            Io::Unix(_) => "Io::Unix",
            Io::Link(_) => "Io::Link",
            Io::TlsClient(_) => "Io::TlsClient",
            Io::TlsServer(_) => "Io::TlsServer",
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
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

type MemRegistry = Mutex<HashMap<String, mpsc::Sender<Link>>>;

fn mem_registry() -> &'static MemRegistry {
    static R: OnceLock<MemRegistry> = OnceLock::new();
    R.get_or_init(Default::default)
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
        Endpoint::Mem(name) => {
            let tx = mem_registry()
                .lock()
                .map_err(|_| Error::new(Status::INTERNAL, "mem registry poisoned"))?
                .get(name)
                .cloned()
                .ok_or_else(|| unavailable("no listener", &format!("mem://{name}")))?;
            let (a, b) = Link::pair();
            tx.send(b)
                .await
                .map_err(|_| unavailable("listener closed", &format!("mem://{name}")))?;
            Ok(Io::Link(a))
        }
        Endpoint::Tcp(addr) => {
            let s = TcpStream::connect(addr)
                .await
                .map_err(|e| unavailable(e, &format!("tcp://{addr}")))?;
            tune_tcp(&s);
            Ok(Io::Tcp(s))
        }
        Endpoint::Unix(path) => {
            let s = UnixStream::connect(path)
                .await
                .map_err(|e| unavailable(e, &format!("unix://{}", path.display())))?;
            Ok(Io::Unix(s))
        }
        Endpoint::Tls(addr) => {
            let cfg = tls.ok_or_else(|| {
                Error::new(
                    Status::BAD_REQUEST,
                    "tls:// needs a TLS client configuration (ClientOptions::tls)",
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
            let s = TcpStream::connect(addr)
                .await
                .map_err(|e| unavailable(e, &format!("tls://{addr}")))?;
            tune_tcp(&s);
            let t = tokio_rustls::TlsConnector::from(cfg.0.clone())
                .connect(name, s)
                .await
                .map_err(|e| unavailable(e, &format!("TLS handshake with {addr}")))?;
            Ok(Io::TlsClient(Box::new(t)))
        }
    }
}

/// Accepts connections on an endpoint.
#[derive(Debug)]
pub struct Listener {
    inner: ListenerInner,
    tls: Option<TlsServerConfig>,
    url: String,
}

#[derive(Debug)]
enum ListenerInner {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    Mem(mpsc::Receiver<Link>, String),
}

/// A connection accepted but not yet set up (TLS handshake pending). Finish it in the
/// connection's own task with [`Incoming::establish`] so a slow handshake never stalls accepting.
#[derive(Debug)]
pub struct Incoming {
    io: Io,
    tls: Option<TlsServerConfig>,
    /// The peer's address, for logs.
    pub peer: String,
}

impl Incoming {
    /// Completes the TLS handshake if the listener has TLS.
    pub async fn establish(self) -> Result<Io> {
        match (self.io, self.tls) {
            (Io::Tcp(s), Some(cfg)) => {
                let t = tokio_rustls::TlsAcceptor::from(cfg.0)
                    .accept(s)
                    .await
                    .map_err(|e| unavailable(e, "TLS handshake"))?;
                Ok(Io::TlsServer(Box::new(t)))
            }
            (io, _) => Ok(io),
        }
    }
}

impl Listener {
    /// Binds `ep`. `tls://` needs `tls`; `tcp://` with `tls` also serves TLS.
    pub async fn bind(ep: &Endpoint, tls: Option<TlsServerConfig>) -> Result<Listener> {
        let bind_err =
            |e: io::Error, what: &str| Error::new(Status::UNAVAILABLE, format!("bind {what}: {e}"));
        let (inner, url) = match ep {
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
            Endpoint::Mem(name) => {
                let mut reg = mem_registry()
                    .lock()
                    .map_err(|_| Error::new(Status::INTERNAL, "mem registry poisoned"))?;
                if reg.get(name).is_some_and(|tx| !tx.is_closed()) {
                    return Err(Error::new(
                        Status::ALREADY_EXISTS,
                        format!("mem://{name} is already bound"),
                    ));
                }
                let (tx, rx) = mpsc::channel(128);
                reg.insert(name.clone(), tx);
                (
                    ListenerInner::Mem(rx, name.clone()),
                    format!("mem://{name}"),
                )
            }
        };
        if matches!(ep, Endpoint::Tls(_)) && tls.is_none() {
            return Err(Error::new(
                Status::BAD_REQUEST,
                "tls:// needs a TLS server configuration",
            ));
        }
        Ok(Listener { inner, tls, url })
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
        assert_eq!(
            "inproc://bus".parse::<Endpoint>().unwrap(),
            Endpoint::Mem("bus".into())
        );
        assert_eq!(
            "unix:///tmp/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "tls://localhost:443".parse::<Endpoint>().unwrap(),
            Endpoint::Tls("localhost:443".into())
        );
        for bad in [
            "127.0.0.1:1",
            "tcp://",
            "tcp://host",
            "tcp://host:x",
            "ftp://a:1",
            "tcp://:80",
        ] {
            let e = bad.parse::<Endpoint>().unwrap_err();
            assert_eq!(e.status(), Status::BAD_REQUEST, "{bad}");
        }
        assert_eq!(Endpoint::Unix("/a".into()).to_string(), "unix:///a");
    }
}
