//! Every system the scenarios drive: mitto itself, the raw-socket floors, and the RPC peers.
//! Each RPC module starts its server on the [`ServerRuntime`](crate::runtime::ServerRuntime)
//! and gives a client whose calls echo a payload and check the echo. The broker scenarios run
//! each system in the deployed layout (`deployed`: its broker and clients as processes of their
//! own, `procs`), with mitto's broker also embedded in the process (`broker_sys`); the peers are
//! nats-server (`nats_peer`), Zenoh (`zenoh_peer`) and mosquitto (`mqtt_peer`); `/proc` gives
//! memory and CPU time (`procfs`). The in-process `bus` scenario's ends (embedded broker, tokio
//! mpsc, flume) are in `bus_sys`.

pub(crate) mod broker_sys;
pub(crate) mod bus_sys;
pub(crate) mod deployed;
pub(crate) mod mitto_sys;
pub(crate) mod mqtt_peer;
pub(crate) mod nats_peer;
pub(crate) mod procfs;
pub(crate) mod procs;
pub(crate) mod protosocket_peer;
pub(crate) mod raw;
pub(crate) mod raw_spin;
pub(crate) mod tarpc_peer;
pub(crate) mod tonic_peer;
pub(crate) mod zenoh_peer;

pub(crate) use deployed::ClientSystem;

/// A unique socket path in the temp directory; the file is removed when this is dropped.
pub(crate) struct SocketPath(pub(crate) std::path::PathBuf);

impl SocketPath {
    pub(crate) fn new(tag: &str) -> SocketPath {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("mitto-bench-{}-{tag}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        SocketPath(path)
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
