//! mitto's broker: in-process on the server runtime (the embedded layout of `pubsub`, `fanout`
//! and `reqrep`), or alone in a child process (`mitto-bench --serve-broker`) for `conn-memory`,
//! whose resident memory must be the broker's only.

use crate::runtime::{client_runtime, ServerRuntime};
use anyhow::Context as _;
use mitto_broker::{Broker, BrokerConfig};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The hidden flag that makes `mitto-bench` host a broker (see [`serve_child`]).
pub const SERVE_FLAG: &str = "--serve-broker";

/// Defaults, one TCP listener on a free port of 127.0.0.1, no monitoring endpoint.
fn config() -> BrokerConfig {
    BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: String::new(),
        ..BrokerConfig::default()
    }
}

/// A broker running on the server runtime.
pub(crate) struct InProcBroker {
    broker: Option<Broker>,
    /// Where clients connect.
    pub(crate) url: String,
}

impl InProcBroker {
    /// Starts a broker on `srt` (its listener and connection tasks live there).
    pub(crate) async fn start(srt: &ServerRuntime) -> anyhow::Result<InProcBroker> {
        InProcBroker::start_with(srt, config()).await
    }

    async fn start_with(srt: &ServerRuntime, cfg: BrokerConfig) -> anyhow::Result<InProcBroker> {
        let (broker, url) = srt
            .run(async {
                let broker = Broker::start(cfg).await?;
                let url = broker
                    .urls()
                    .first()
                    .cloned()
                    .context("the broker has no listener")?;
                Ok((broker, url))
            })
            .await?;
        Ok(InProcBroker {
            broker: Some(broker),
            url,
        })
    }

    /// One of the broker's counters (`slow_consumer_drops`, `msgs_out`, ...); 0 if unknown.
    pub(crate) fn stat(&self, name: &str) -> u64 {
        self.broker
            .as_ref()
            .and_then(|b| b.stats().get(name).copied())
            .unwrap_or(0)
    }

    /// Shuts the broker down (on the server runtime).
    pub(crate) async fn stop(mut self, srt: &ServerRuntime) -> anyhow::Result<()> {
        if let Some(broker) = self.broker.take() {
            srt.run(async move {
                broker.shutdown().await;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

/// Hosts a broker in this process for `conn-memory`: starts it on a current-thread runtime,
/// prints its URL on stdout, and serves until stdin is closed (so it ends with its parent).
pub fn serve_child() -> anyhow::Result<()> {
    let rt = client_runtime()?;
    rt.block_on(async {
        let broker = Broker::start(config()).await?;
        let url = broker
            .urls()
            .first()
            .cloned()
            .context("the broker has no listener")?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{url}")?;
            out.flush()?;
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("stdin-watch".into())
            .spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                let _ = tx.send(());
            })
            .context("spawning the stdin watcher")?;
        let _ = rx.await;
        broker.shutdown().await;
        anyhow::Ok(())
    })
}

/// A broker in a child process (`exe --serve-broker`); it stops when this is dropped.
pub(crate) struct ChildBroker {
    child: Child,
    /// Where clients connect.
    pub(crate) url: String,
}

impl ChildBroker {
    /// Starts `exe --serve-broker` and reads the URL it prints.
    pub(crate) fn spawn(exe: &Path) -> anyhow::Result<ChildBroker> {
        let mut child = Command::new(exe)
            .arg(SERVE_FLAG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} {SERVE_FLAG}", exe.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let url = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(line)) if line.trim().starts_with("tcp://") => line.trim().to_owned(),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!(
                    "{} {SERVE_FLAG} printed no broker URL: {other:?}",
                    exe.display()
                );
            }
        };
        Ok(ChildBroker { child, url })
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        // End of stdin tells it to shut down; kill it if it has not within 5 s.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
