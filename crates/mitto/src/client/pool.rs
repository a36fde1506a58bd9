//! A pool of clients.

use super::options::ClientOptions;
use super::Client;
use crate::error::{Error, Result};
use mitto_proto::Status;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A pool of clients: round robin, or the same client for the same key.
#[derive(Clone, Debug)]
pub struct Pool {
    clients: Arc<[Client]>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    /// Opens `size` connections to each URL.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let _server = mitto::Server::new()
    /// #     .route("echo", |req: mitto::Request| async move { Ok(req.payload().clone()) })
    /// #     .bind("mem://app")
    /// #     .await?;
    /// use mitto::{ClientOptions, Pool};
    ///
    /// let pool = Pool::connect(&["mem://app"], 4, ClientOptions::new()).await?;
    /// assert_eq!(pool.len(), 4);
    /// assert_eq!(pool.pick().call("echo", "hi").await?, "hi");
    /// # Ok(()) }
    /// ```
    pub async fn connect(urls: &[&str], size: usize, opts: ClientOptions) -> Result<Pool> {
        let mut clients = Vec::new();
        for url in urls {
            for _ in 0..size.max(1) {
                clients.push(Client::connect(url, opts.clone()).await?);
            }
        }
        Pool::from_clients(clients)
    }

    /// A pool over existing clients.
    pub fn from_clients(clients: Vec<Client>) -> Result<Pool> {
        if clients.is_empty() {
            return Err(Error::new(
                Status::BAD_REQUEST,
                "a pool needs at least one client",
            ));
        }
        Ok(Pool {
            clients: clients.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The next client in round-robin order, skipping disconnected ones when it can.
    pub fn pick(&self) -> &Client {
        let n = self.clients.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.clients[(start + i) % n])
            .find(|c| c.is_connected())
            .unwrap_or(&self.clients[start % n])
    }

    /// The client for `key`: the same key always maps to the same client (key affinity).
    pub fn pick_for(&self, key: &[u8]) -> &Client {
        // FNV-1a: cheap, and stable across processes and versions.
        let h = key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        &self.clients[(h % self.clients.len() as u64) as usize]
    }

    /// How many clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether the pool is empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}
