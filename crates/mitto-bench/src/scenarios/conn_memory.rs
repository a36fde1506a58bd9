//! `conn-memory`: resident memory per idle connection. mitto's broker runs alone in a child
//! process (`mitto-bench --serve-broker`, a current-thread runtime, defaults); nats-server runs
//! as a child process too (`nats-server -a 127.0.0.1 -p PORT`, defaults) when its binary is
//! installed, so that both start from a fresh heap every repetition. Without the binary, the
//! nats-server already running at 127.0.0.1:4222 (found through `/proc`) is measured once: a Go
//! heap that grew for earlier connections is reused by later ones, so only the first
//! measurement in a server's life says anything. For each, `VmRSS` of the broker's process is
//! read before and after this process opens N idle client connections (mitto `Client`s,
//! `async-nats` clients, 64 handshakes at a time), and the difference is divided by N.

use crate::config::Config;
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport, MITTO};
use crate::runtime::client_runtime;
use crate::systems::broker_sys::ChildBroker;
use crate::systems::{nats_peer, procfs};
use anyhow::Context as _;
use futures::stream::{FuturesUnordered, StreamExt as _};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NAME: &str = "conn-memory";
const NATS: &str = "nats";
/// Handshakes in flight while opening the connections.
const CONCURRENCY: usize = 64;
/// Time left for the broker to finish with the new connections before RSS is read again.
const SETTLE: Duration = Duration::from_millis(500);

/// One measurement.
#[derive(Clone, Copy, Debug)]
struct Measured {
    before: u64,
    after: u64,
    opened: usize,
}

impl Measured {
    fn per_conn(&self) -> f64 {
        self.after.saturating_sub(self.before) as f64 / self.opened.max(1) as f64
    }

    fn describe(&self, what: &str) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        format!(
            "{what} VmRSS {:.1} MiB -> {:.1} MiB with {} connections",
            mib(self.before),
            mib(self.after),
            self.opened
        )
    }
}

/// Opens up to `n` connections, [`CONCURRENCY`] handshakes at a time, for at most `max`.
async fn open_many<T, F, Fut>(n: usize, max: Duration, mut connect: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let start = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut out = Vec::with_capacity(n);
    let mut issued = 0usize;
    while issued < n && pending.len() < CONCURRENCY {
        pending.push(connect());
        issued += 1;
    }
    while let Some(r) = pending.next().await {
        out.push(r.with_context(|| format!("opening connection {}", out.len() + 1))?);
        if issued < n && start.elapsed() < max {
            pending.push(connect());
            issued += 1;
        }
    }
    Ok(out)
}

async fn measure_mitto(broker: &ChildBroker, n: usize, max: Duration) -> anyhow::Result<Measured> {
    let pid = broker.pid();
    let before = procfs::vm_rss(pid)?;
    let url = broker.url.clone();
    let clients = open_many(n, max, || {
        let url = url.clone();
        async move {
            let opts = mitto::ClientOptions::new().reconnect(false);
            Ok(mitto::Client::connect(&url, opts).await?)
        }
    })
    .await?;
    tokio::time::sleep(SETTLE).await;
    let after = procfs::vm_rss(pid)?;
    let opened = clients.len();
    futures::future::join_all(clients.iter().map(|c| c.close())).await;
    Ok(Measured {
        before,
        after,
        opened,
    })
}

async fn measure_nats(addr: &str, pid: u32, n: usize, max: Duration) -> anyhow::Result<Measured> {
    nats_peer::reachable(addr).await?;
    let before = procfs::vm_rss(pid)?;
    let clients = open_many(n, max, || nats_peer::connect_to(addr)).await?;
    tokio::time::sleep(SETTLE).await;
    let after = procfs::vm_rss(pid)?;
    let opened = clients.len();
    drop(clients);
    // Let the server see the connections go before anything else reads its memory.
    tokio::time::sleep(SETTLE).await;
    Ok(Measured {
        before,
        after,
        opened,
    })
}

/// Which nats-server is measured.
enum NatsTarget {
    /// A fresh one every repetition, from this binary.
    Fresh(PathBuf),
    /// The one already running (its pid): measured once.
    Running(u32),
}

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let rt = client_runtime()?;
    let exe = config.bench_exe()?;
    let n = config.idle_connections.max(1);
    let case = format!("idle-{n}");
    let mut report = ScenarioReport {
        scenario: NAME.to_owned(),
        ..ScenarioReport::default()
    };
    let nats = match nats_peer::find_binary() {
        Some(exe) => Ok(NatsTarget::Fresh(exe)),
        None => match procfs::pid_listening_on(nats_peer::PORT, "nats-server") {
            Some(pid) => Ok(NatsTarget::Running(pid)),
            None => Err(format!(
                "skipped, no nats-server binary found and no process seen listening on {}",
                nats_peer::ADDR
            )),
        },
    };
    let mut nats_failed = nats.as_ref().err().cloned();
    let mut mitto_vals = Vec::new();
    let mut nats_vals = Vec::new();
    let mut first: Vec<String> = Vec::new();
    for rep in 0..config.reps {
        progress.step(format!(
            "conn-memory mitto {n} connections rep {}/{}",
            rep + 1,
            config.reps
        ));
        let broker = ChildBroker::spawn(&exe)?;
        let m = rt.block_on(measure_mitto(&broker, n, config.connect_time))?;
        drop(broker);
        mitto_vals.push(m.per_conn());
        if rep == 0 {
            first.push(m.describe("mitto broker process"));
        }
        let target = match (&nats, &nats_failed) {
            (Ok(NatsTarget::Running(_)), _) if rep > 0 => continue,
            (Ok(t), None) => t,
            _ => continue,
        };
        progress.step(format!(
            "conn-memory nats {n} connections rep {}/{}",
            rep + 1,
            config.reps
        ));
        let measured = rt.block_on(async {
            match target {
                NatsTarget::Fresh(bin) => {
                    let server = nats_peer::ChildNats::spawn(bin).await?;
                    let m = measure_nats(&server.addr, server.pid(), n, config.connect_time).await;
                    drop(server);
                    m.map(|m| (m, format!("nats-server process (own, {})", bin.display())))
                }
                NatsTarget::Running(pid) => {
                    measure_nats(nats_peer::ADDR, *pid, n, config.connect_time)
                        .await
                        .map(|m| (m, format!("running nats-server (pid {pid})")))
                }
            }
        });
        match measured {
            Ok((m, what)) => {
                nats_vals.push(m.per_conn());
                if rep == 0 {
                    first.push(m.describe(&what));
                }
            }
            Err(e) => nats_failed = Some(format!("left out, {e:#}")),
        }
    }
    report.rows.push(super::row_from(
        NAME,
        &case,
        MITTO,
        Metric::BytesPerConn,
        0,
        &mitto_vals,
    ));
    match &nats_failed {
        None => report.rows.push(super::row_from(
            NAME,
            &case,
            NATS,
            Metric::BytesPerConn,
            0,
            &nats_vals,
        )),
        Some(why) => report.notes.push(format!("{NATS}: {why}")),
    }
    if let Some(x) = report
        .rows
        .iter()
        .find(|r| r.system == NATS)
        .and_then(|r| report.mitto_ratio(r))
    {
        report.notes.insert(
            0,
            format!("mitto / nats bytes per idle connection: {x:.2}x (below 1: mitto uses less)"),
        );
    }
    report
        .notes
        .push(format!("first repetition: {}", first.join("; ")));
    let nats_how = match &nats {
        Ok(NatsTarget::Fresh(_)) => "a fresh nats-server process each repetition too",
        Ok(NatsTarget::Running(_)) => {
            "the running nats-server, first repetition only (a Go heap grown by earlier \
             connections is reused, so its figure can only be too low)"
        }
        Err(_) => "no nats-server",
    };
    report.notes.push(format!(
        "bytes per connection = (VmRSS with the connections - VmRSS before) / connections, \
         read {} ms after the last handshake; mitto's broker is a fresh process each \
         repetition, {nats_how}.",
        SETTLE.as_millis()
    ));
    Ok(report)
}
