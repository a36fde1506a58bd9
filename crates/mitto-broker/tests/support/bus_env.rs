//! The environment of the bus suites (`bus.rs`, `typed.rs`): a broker listening on
//! `inproc://` and `tcp://` at once, clients of either, and `on_both_transports!`, which runs a
//! case's body once on each.

#![allow(dead_code)]

use mitto::{Client, ClientOptions, Event, Message, Subscription, TypedSubscription};
use mitto_broker::{Broker, BrokerConfig};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Which way the clients of a test reach the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `inproc://`: the same process, no socket, frames by reference.
    Inproc,
    /// `tcp://127.0.0.1`: a real socket, every frame encoded.
    Tcp,
}

/// A broker listening on `inproc://` and `tcp://` at once, and clients of one of them.
pub(crate) struct Env {
    pub(crate) transport: Transport,
    pub(crate) broker: Broker,
    pub(crate) inproc_url: String,
    pub(crate) tcp_url: String,
}

/// Makes every test's in-process listener name unique.
pub(crate) static NEXT_BUS: AtomicUsize = AtomicUsize::new(0);

/// Upper bound of one test body: a bug fails the test instead of hanging it.
pub(crate) const TEST_LIMIT: Duration = Duration::from_secs(10);

/// Upper bound of one wait for something that should happen at once.
pub(crate) const WAIT: Duration = Duration::from_secs(2);

impl Env {
    pub(crate) async fn start(transport: Transport) -> Env {
        Env::start_with(transport, defaults).await
    }

    /// A broker whose configuration `configure` changed first.
    pub(crate) async fn start_with(transport: Transport, configure: fn(&mut BrokerConfig)) -> Env {
        let name = format!(
            "bus-test-{}-{}",
            std::process::id(),
            NEXT_BUS.fetch_add(1, Ordering::Relaxed)
        );
        let mut cfg = BrokerConfig {
            listen: vec![format!("inproc://{name}"), "tcp://127.0.0.1:0".into()],
            monitor: String::new(),
            ..BrokerConfig::default()
        };
        configure(&mut cfg);
        let broker = Broker::start(cfg).await.expect("the broker starts");
        let urls = broker.urls().to_vec();
        assert_eq!(urls.len(), 2, "{urls:?}");
        assert_eq!(
            urls[0],
            format!("inproc://{name}"),
            "inproc:// reads back as written"
        );
        assert!(urls[1].starts_with("tcp://127.0.0.1:"), "{urls:?}");
        Env {
            transport,
            broker,
            inproc_url: urls[0].clone(),
            tcp_url: urls[1].clone(),
        }
    }

    /// The URL of the transport under test.
    pub(crate) fn url(&self) -> &str {
        match self.transport {
            Transport::Inproc => &self.inproc_url,
            Transport::Tcp => &self.tcp_url,
        }
    }

    /// A client of the transport under test.
    pub(crate) async fn client(&self) -> Client {
        self.client_with(opts()).await
    }

    pub(crate) async fn client_with(&self, o: ClientOptions) -> Client {
        connect(self.url(), o).await
    }

    pub(crate) async fn inproc_client(&self) -> Client {
        connect(&self.inproc_url, opts()).await
    }

    pub(crate) async fn tcp_client(&self) -> Client {
        connect(&self.tcp_url, opts()).await
    }

    /// One of the broker's counters.
    pub(crate) fn stat(&self, key: &str) -> u64 {
        let s = self.broker.stats();
        *s.get(key)
            .unwrap_or_else(|| panic!("no counter {key} in {s:?}"))
    }

    pub(crate) async fn shutdown(self) {
        bounded("the broker's shutdown", self.broker.shutdown()).await;
    }
}

/// The broker's defaults (with both listeners and no monitoring).
pub(crate) fn defaults(_: &mut BrokerConfig) {}

pub(crate) async fn connect(url: &str, o: ClientOptions) -> Client {
    Client::connect(url, o)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

pub(crate) fn opts() -> ClientOptions {
    ClientOptions::new()
        .timeout(Duration::from_secs(5))
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
}

/// Runs `f`, failing the test if it takes longer than [`TEST_LIMIT`].
pub(crate) async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {TEST_LIMIT:?}"))
}

/// Makes, for each `case => inproc_test, tcp_test;`, two tests running the case's body against
/// a fresh broker, one with in-process clients and one with TCP clients. `case with f => ...`
/// changes the broker's configuration with `f` first.
macro_rules! on_both_transports {
    (@cfg) => { defaults };
    (@cfg $cfg:path) => { $cfg };
    ($($case:ident $(with $cfg:path)? => $inproc:ident, $tcp:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $inproc() {
            let cfg = on_both_transports!(@cfg $($cfg)?);
            let env = Env::start_with(Transport::Inproc, cfg).await;
            bounded(stringify!($inproc), $case(&env)).await;
            env.shutdown().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $tcp() {
            let cfg = on_both_transports!(@cfg $($cfg)?);
            let env = Env::start_with(Transport::Tcp, cfg).await;
            bounded(stringify!($tcp), $case(&env)).await;
            env.shutdown().await;
        }
    )*};
}

// ---------------------------------------------------------------------------------------------
// helpers

pub(crate) async fn next(sub: &mut Subscription) -> Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message within 2 s")
        .expect("the subscription is open")
}

pub(crate) async fn next_typed<T: DeserializeOwned + Send + Sync + 'static>(
    sub: &mut TypedSubscription<T>,
) -> mitto::Result<Event<T>> {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message within 2 s")
        .expect("the subscription is open")
}

/// Nothing arrives on `sub` for `d`.
pub(crate) async fn quiet(sub: &mut Subscription, d: Duration) {
    if let Ok(m) = tokio::time::timeout(d, sub.next()).await {
        panic!("unexpected: {m:?}");
    }
}

/// Polls `f` until it holds; fails after [`WAIT`].
pub(crate) async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) fn text(m: &Message) -> String {
    String::from_utf8(m.payload().to_vec()).expect("a UTF-8 payload")
}

pub(crate) fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).expect("a JSON payload")
}

pub(crate) fn strings(v: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    v.into_iter().map(|x| x.to_string()).collect()
}
