//! nats-server (already running at 127.0.0.1:4222, not started by the suite), driven by the
//! official `async-nats` client with its defaults (one connection per client, 64 Ki messages
//! of subscription capacity, 2 Ki commands of client capacity). `conn-memory` also starts
//! nats-servers of its own, when the binary is installed (see [`ChildNats`]).

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the nats-server listens.
pub(crate) const ADDR: &str = "127.0.0.1:4222";
/// Its port, to find its process in `/proc`.
pub(crate) const PORT: u16 = 4222;

/// One connection to the running nats-server.
pub(crate) async fn connect() -> anyhow::Result<async_nats::Client> {
    connect_to(ADDR).await
}

/// One connection to the nats-server at `addr`.
pub(crate) async fn connect_to(addr: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(addr)
        .await
        .with_context(|| format!("connecting to nats-server at {addr}"))
}

/// The `nats-server` binary: on `PATH`, else in `/usr/sbin`, `/usr/local/bin`.
pub(crate) fn find_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/local/bin".into()])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// A nats-server of the suite's own on a free port of 127.0.0.1 (defaults, no JetStream, no
/// monitoring), killed when dropped.
pub(crate) struct ChildNats {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub(crate) addr: String,
}

impl ChildNats {
    /// Starts `exe -a 127.0.0.1 -p PORT` and waits (up to 10 s) until it accepts connections.
    pub(crate) async fn spawn(exe: &Path) -> anyhow::Result<ChildNats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let child = Command::new(exe)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut me = ChildNats {
            child,
            addr: format!("127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(&me.addr).await.is_ok() {
                return Ok(me);
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                anyhow::bail!("{} exited at start: {status}", exe.display());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{} did not listen on {} within 10 s",
                    exe.display(),
                    me.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether something accepts TCP connections at `addr` within a second.
pub(crate) async fn reachable(addr: &str) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("{addr} unreachable: {e}")),
        Err(_) => Err(anyhow::anyhow!("{addr} unreachable: no answer in 1 s")),
    }
}
