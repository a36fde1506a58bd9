//! Shared set-up of the integration tests: a server on each transport, and a client for it.

#![allow(dead_code, clippy::expect_used)]

use mitto::{
    ClientOptions, RunningServer, Server, ServerOptions, TlsClientConfig, TlsServerConfig,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// A transport under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Mem,
    Tcp,
    Unix,
    Tls,
    /// WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

struct Certs {
    cert: String,
    key: String,
}

fn certs() -> &'static Certs {
    static C: OnceLock<Certs> = OnceLock::new();
    C.get_or_init(|| {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("self-signed certificate");
        Certs {
            cert: ck.cert.pem(),
            key: ck.signing_key.serialize_pem(),
        }
    })
}

/// A fresh URL for `kind` (port 0 for TCP and TLS, a unique name or path otherwise).
pub(crate) fn fresh_url(kind: Kind) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    match kind {
        Kind::Mem => format!("mem://test-{}-{n}", std::process::id()),
        Kind::Tcp => "tcp://127.0.0.1:0".into(),
        Kind::Tls => "tls://127.0.0.1:0".into(),
        Kind::Ws => "ws://127.0.0.1:0/mitto".into(),
        Kind::Wss => "wss://127.0.0.1:0".into(),
        Kind::Unix => {
            let p =
                std::env::temp_dir().join(format!("mitto-test-{}-{n}.sock", std::process::id()));
            format!("unix://{}", p.display())
        }
    }
}

/// Server options with TLS set when `kind` needs it.
pub(crate) fn server_options(kind: Kind) -> ServerOptions {
    let o = ServerOptions::new();
    if matches!(kind, Kind::Tls | Kind::Wss) {
        let c = certs();
        o.tls(TlsServerConfig::from_pem(c.cert.as_bytes(), c.key.as_bytes()).expect("server TLS"))
    } else {
        o
    }
}

/// Client options that trust the test CA; short backoff so reconnect tests are quick.
pub(crate) fn client_options(kind: Kind) -> ClientOptions {
    let o = ClientOptions::new()
        .timeout(Duration::from_secs(10))
        .backoff(Duration::from_millis(10), Duration::from_millis(200));
    if matches!(kind, Kind::Tls | Kind::Wss) {
        o.tls(TlsClientConfig::with_ca_pem(certs().cert.as_bytes()).expect("client TLS"))
    } else {
        o
    }
}

/// Binds `server` (whose options must come from [`server_options`]) on a fresh URL of `kind`.
pub(crate) async fn serve(kind: Kind, server: Server) -> RunningServer {
    server.bind(&fresh_url(kind)).await.expect("bind")
}
