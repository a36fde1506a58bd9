//! What the bridge tests share: the real services, a broker with bridges, unique names.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub(crate) mod nats_server;
pub(crate) mod proxy;

use mitto_bridge::BridgeConfig;
use mitto_broker::{Broker, BrokerConfig};
use std::time::Duration;

/// Whether a service answers on 127.0.0.1:`port`; prints a loud SKIPPED line when it does not.
pub(crate) fn up(name: &str, port: u16) -> bool {
    let ok = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .is_ok();
    if !ok {
        eprintln!(
            "\n*** SKIPPED: {name} is not reachable on 127.0.0.1:{port} (scripts/services starts it) ***\n"
        );
    }
    ok
}

/// A name no other test run uses.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}{:012x}", rand_u64() & 0xffff_ffff_ffff)
}

pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// A broker on loopback with `bridges`, monitoring on.
pub(crate) async fn broker(bridges: Vec<BridgeConfig>) -> (Broker, String) {
    let cfg = BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: "127.0.0.1:0".into(),
        bridges,
        ..BrokerConfig::default()
    };
    let b = Broker::start(cfg).await.unwrap();
    let url = b.urls()[0].clone();
    (b, url)
}

pub(crate) fn client_opts() -> mitto::ClientOptions {
    mitto::ClientOptions::new().timeout(Duration::from_secs(10))
}

/// Waits (at most 20 s) until `f` holds.
pub(crate) async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The one bridge's snapshot.
pub(crate) fn snap(b: &Broker) -> mitto_bridge::Snapshot {
    b.bridges().into_iter().next().expect("one bridge")
}

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Returns once the NATS server processed everything `c` sent before (`flush` only writes to
/// the socket): a request nobody serves is answered after the ones before it were handled.
pub(crate) async fn nats_sync(c: &async_nats::Client) {
    match c.request("_MITTO_TEST.sync", "".into()).await {
        Ok(_) => {}
        Err(e) => assert_eq!(
            e.kind(),
            async_nats::client::RequestErrorKind::NoResponders,
            "{e}"
        ),
    }
}
