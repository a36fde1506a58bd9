//! nats-server, driven by the official `async-nats` client (one connection per client, its
//! defaults otherwise unless told: 64 Ki messages of subscription capacity, 2 Ki commands of
//! client capacity). The suite starts nats-servers of its own where the binary is installed
//! (the deployed layout, and `conn-memory`'s [`ChildNats`]); `conn-memory` falls back on the
//! one already running at 127.0.0.1:4222.

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the nats-server listens.
pub(crate) const ADDR: &str = "127.0.0.1:4222";
/// Its port, to find its process in `/proc`.
pub(crate) const PORT: u16 = 4222;

/// One connection to the nats-server at `addr`.
pub(crate) async fn connect_to(addr: &str) -> anyhow::Result<async_nats::Client> {
    connect_with(addr, None).await
}

/// One connection to the nats-server at `addr`, with a subscription capacity of `capacity`
/// messages (async-nats' default, 64 Ki, if None).
pub(crate) async fn connect_with(
    addr: &str,
    capacity: Option<usize>,
) -> anyhow::Result<async_nats::Client> {
    let mut o = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2));
    if let Some(n) = capacity {
        o = o.subscription_capacity(n);
    }
    o.connect(addr)
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
        Self::spawn_with(exe, &[]).await
    }

    /// As [`ChildNats::spawn`], with `extra` arguments (cluster routes, for one).
    pub(crate) async fn spawn_with(exe: &Path, extra: &[String]) -> anyhow::Result<ChildNats> {
        let port = free_port()?;
        let child = Command::new(exe)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
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

/// A free TCP port of 127.0.0.1.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port())
}

/// `n` nats-servers of the suite's own clustered over loopback routes.
pub(crate) async fn spawn_cluster(exe: &Path, n: usize) -> anyhow::Result<Vec<ChildNats>> {
    let routes: Vec<u16> = (0..n).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let all = routes
        .iter()
        .map(|r| format!("nats://127.0.0.1:{r}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut out = Vec::with_capacity(n);
    for (i, r) in routes.iter().enumerate() {
        let args = [
            "-n".to_owned(),
            format!("bench-{i}"),
            "--cluster_name".to_owned(),
            "bench".to_owned(),
            "--cluster".to_owned(),
            format!("nats://127.0.0.1:{r}"),
            "--routes".to_owned(),
            all.clone(),
        ];
        out.push(ChildNats::spawn_with(exe, &args).await?);
    }
    Ok(out)
}

/// Whether something accepts TCP connections at `addr` within a second.
pub(crate) async fn reachable(addr: &str) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("{addr} unreachable: {e}")),
        Err(_) => Err(anyhow::anyhow!("{addr} unreachable: no answer in 1 s")),
    }
}
