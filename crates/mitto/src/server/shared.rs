//! What a server's connections share: the routes, the counters, the live connections.

use super::cmd::Cmd;
use super::stats::Stats;
use super::Server;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The server as its connections see it.
pub(super) struct Shared {
    pub(super) server: Server,
    pub(super) stats: Stats,
    pub(super) started: Instant,
    pub(super) conns: Mutex<HashMap<u64, mpsc::UnboundedSender<Cmd>>>,
    pub(super) next_conn: AtomicU64,
    pub(super) shutdown: watch::Sender<bool>,
}

impl Shared {
    pub(super) fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }
}
