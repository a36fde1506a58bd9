//! The WebSocket opening handshake (RFC 6455 section 4) on both sides: the subprotocol, the
//! listener's path and the `Origin` rule, within the pre-HELLO budget.

use super::bridge::SyncIo;
use super::{WsIo, SUBPROTOCOL};
use crate::error::{Error, Result};
use crate::transport::{Io, WsAddr};
use mitto_proto::Status;
use std::task::Poll;
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::handshake::{HandshakeError, HandshakeRole};
use tungstenite::http::{header, HeaderValue, StatusCode};

/// The most an upgrade request may be (a browser's is under 1 KiB, cookies aside): a peer
/// that is not yet admitted makes the server buffer no more.
pub(crate) const UPGRADE_REQUEST_MAX: usize = 8192;

/// A WebSocket listener's rules for accepting the upgrade.
#[derive(Debug, Clone)]
pub(crate) struct Upgrade {
    /// The only path answered; `None`: any.
    path: Option<String>,
    /// Origins let in besides same-host ones (`*`: any).
    origins: Vec<String>,
}

impl Upgrade {
    pub(crate) fn new(path: &str) -> Upgrade {
        let path = path.split('?').next().unwrap_or("/");
        Upgrade {
            path: (path != "/").then(|| path.to_owned()),
            origins: Vec::new(),
        }
    }

    pub(crate) fn with_origins(&self, origins: Vec<String>) -> Upgrade {
        Upgrade {
            path: self.path.clone(),
            origins: origins
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
        }
    }

    /// Accepts the upgrade on `io` (after TLS, if any).
    #[allow(clippy::result_large_err)] // tungstenite's callback type
    pub(crate) async fn accept(&self, io: Io) -> Result<WsIo> {
        let stream = SyncIo::new(io, Some(UPGRADE_REQUEST_MAX));
        let check = |req: &Request, resp: Response| self.check(req, resp);
        let first = tungstenite::accept_hdr_with_config(stream, check, Some(super::config()));
        let mut ws = finish(first)
            .await
            .map_err(|e| refused(e, "WebSocket upgrade"))?;
        ws.get_mut().unbound();
        Ok(WsIo::new(ws))
    }

    /// Path, `Origin`, subprotocol; the answer names `mitto.v1` when the client offered it.
    #[allow(clippy::result_large_err)] // tungstenite's callback type
    fn check(
        &self,
        req: &Request,
        mut resp: Response,
    ) -> std::result::Result<Response, ErrorResponse> {
        if self.path.as_deref().is_some_and(|p| p != req.uri().path()) {
            return Err(deny(
                StatusCode::NOT_FOUND,
                "no mitto endpoint at this path",
            ));
        }
        let text = |h| {
            req.headers()
                .get(h)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        if !self.origin_allowed(text(header::ORIGIN), text(header::HOST)) {
            return Err(deny(StatusCode::FORBIDDEN, "origin not allowed"));
        }
        let offered: Vec<&str> = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if offered.contains(&SUBPROTOCOL) {
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        } else if !offered.is_empty() {
            return Err(deny(
                StatusCode::BAD_REQUEST,
                "this endpoint speaks the subprotocol mitto.v1 only",
            ));
        }
        Ok(resp)
    }

    /// No `Origin` (not a browser), a listed one, or a page of the host the request names when
    /// that host is an IP address or `localhost`: a page can send those only from that very
    /// host, whereas a page of any name could have made that name point here (DNS rebinding).
    fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        let origin = origin.trim_end_matches('/');
        if self
            .origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        let origin_host = origin.split_once("://").map(|(_, rest)| host_only(rest));
        match (origin_host, host.map(host_only)) {
            (Some(a), Some(b)) => {
                let fixed =
                    b.eq_ignore_ascii_case("localhost") || b.parse::<std::net::IpAddr>().is_ok();
                fixed && a.eq_ignore_ascii_case(b)
            }
            _ => false,
        }
    }
}

/// `host[:port]` or `[v6]:port` -> the host.
fn host_only(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

fn deny(status: StatusCode, why: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why.to_owned()));
    *r.status_mut() = status;
    r
}

/// Opens a WebSocket on `io` (after TLS, for `wss://`), offering `mitto.v1`.
pub(crate) async fn connect(io: Io, scheme: &str, w: &WsAddr) -> Result<WsIo> {
    let url = format!("{scheme}://{}{}", w.addr, w.path);
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::new(Status::BAD_REQUEST, format!("{url}: {e}")))?;
    req.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let first =
        tungstenite::client::client_with_config(req, SyncIo::new(io, None), Some(super::config()));
    let (ws, _) = finish(first)
        .await
        .map_err(|e| refused(e, &format!("WebSocket upgrade with {url}")))?;
    // tungstenite failed the handshake if the answer named another subprotocol or none.
    Ok(WsIo::new(ws))
}

/// Runs a handshake that stopped for I/O to its end, in this task.
async fn finish<R>(
    first: std::result::Result<R::FinalResult, HandshakeError<R>>,
) -> std::result::Result<R::FinalResult, tungstenite::Error>
where
    R: HandshakeRole<InternalStream = SyncIo>,
{
    let mut mid = match first {
        Ok(done) => return Ok(done),
        Err(HandshakeError::Failure(e)) => return Err(e),
        Err(HandshakeError::Interrupted(m)) => Some(m),
    };
    std::future::poll_fn(|cx| {
        let Some(mut m) = mid.take() else {
            return Poll::Ready(Err(tungstenite::Error::AlreadyClosed));
        };
        // The step that stopped registered no waker of this task: retry it with one.
        m.get_mut().get_mut().set_waker(cx.waker());
        match m.handshake() {
            Ok(done) => Poll::Ready(Ok(done)),
            Err(HandshakeError::Interrupted(m)) => {
                mid = Some(m);
                Poll::Pending
            }
            Err(HandshakeError::Failure(e)) => Poll::Ready(Err(e)),
        }
    })
    .await
}

/// A failed upgrade as a mitto error: the HTTP refusal's status and reason when there is one.
fn refused(e: tungstenite::Error, what: &str) -> Error {
    match e {
        tungstenite::Error::Http(resp) => {
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let status = match resp.status() {
                StatusCode::FORBIDDEN => Status::FORBIDDEN,
                StatusCode::NOT_FOUND => Status::NOT_FOUND,
                StatusCode::BAD_REQUEST => Status::PROTOCOL_ERROR,
                _ => Status::UNAVAILABLE,
            };
            Error::new(status, format!("{what}: HTTP {}: {body}", resp.status()))
        }
        tungstenite::Error::Io(e) => {
            Error::new(Status::UNAVAILABLE, format!("{what}: {e}")).retryable()
        }
        e => Error::new(Status::PROTOCOL_ERROR, format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_same_host_listed_or_none() {
        let up = Upgrade::new("/");
        assert!(up.origin_allowed(None, Some("127.0.0.1:4748")));
        assert!(up.origin_allowed(Some("http://127.0.0.1:8080"), Some("127.0.0.1:4748")));
        assert!(up.origin_allowed(Some("http://LOCALHOST:3000"), Some("localhost:4748")));
        // A name could point anywhere: it is let in only when listed.
        assert!(!up.origin_allowed(Some("https://example.com"), Some("example.com")));
        assert!(up.origin_allowed(Some("http://[::1]:1"), Some("[::1]:4748")));
        assert!(!up.origin_allowed(Some("http://evil.example"), Some("127.0.0.1:4748")));
        assert!(!up.origin_allowed(Some("null"), Some("127.0.0.1:4748")));
        assert!(!up.origin_allowed(Some("http://127.0.0.1"), None));
        let listed = up.with_origins(vec!["https://app.example/".into()]);
        assert!(listed.origin_allowed(Some("https://app.example"), Some("127.0.0.1:1")));
        assert!(listed.origin_allowed(Some("https://APP.example"), Some("app.example")));
        assert!(!listed.origin_allowed(Some("https://other.example"), Some("127.0.0.1:1")));
        let any = up.with_origins(vec!["*".into()]);
        assert!(any.origin_allowed(Some("null"), Some("127.0.0.1:1")));
    }

    #[test]
    fn a_path_restricts_requests_and_ignores_the_query() {
        assert_eq!(Upgrade::new("/").path, None);
        assert_eq!(Upgrade::new("/mitto?x=1").path.as_deref(), Some("/mitto"));
    }
}
