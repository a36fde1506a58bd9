//! `rpc-latency`: sequential round trips of a 32 B request and a 32 B response, one at a time
//! on one connection, over TCP and over a Unix socket: mitto's `Client::call` to a `Server`
//! route beside the raw ping-pong floor on the same socket kind (see `systems::raw`).
//! Inside every repetition the two take turns slice by slice ([`Config::slices`]), so a change
//! in background load hits both alike.

use crate::config::Config;
use crate::measure::{sequential, slice, LatencyAcc, LatencySample};
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport, BUSY_POLL, MITTO, MITTO_BUSY_POLL, MITTO_NO_SPIN};
use crate::runtime::{client_runtime, ServerRuntime};
use crate::systems::{mitto_sys, raw, SocketPath};
use bytes::Bytes;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

const NAME: &str = "rpc-latency";
/// The target reported beside the ratio: mitto's p50 round trip at most this times the floor's.
pub const TARGET_RATIO: f64 = 1.2;

enum Floor {
    Tcp(raw::RawClient<tokio::net::TcpStream>),
    Unix(raw::RawClient<tokio::net::UnixStream>),
}

async fn measure_raw<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut raw::RawClient<S>,
    acc: &mut LatencyAcc,
    count: u64,
    max: Duration,
) -> anyhow::Result<()> {
    sequential(acc, count, max, async || c.round_trip().await).await
}

impl Floor {
    async fn measure(&mut self, acc: &mut LatencyAcc, n: u64, max: Duration) -> anyhow::Result<()> {
        match self {
            Floor::Tcp(c) => measure_raw(c, acc, n, max).await,
            Floor::Unix(c) => measure_raw(c, acc, n, max).await,
        }
    }
}

async fn measure_mitto(
    client: &mitto::Client,
    payload: &Bytes,
    acc: &mut LatencyAcc,
    count: u64,
    max: Duration,
) -> anyhow::Result<()> {
    sequential(acc, count, max, async || {
        mitto_sys::call(client, payload.clone()).await
    })
    .await
}

#[derive(Default)]
struct Samples {
    p50: Vec<f64>,
    p99: Vec<f64>,
    rate: Vec<f64>,
    cpu: Vec<f64>,
}

impl Samples {
    fn push(&mut self, s: LatencySample) {
        self.p50.push(s.p50_us);
        self.p99.push(s.p99_us);
        self.rate.push(s.msgs_per_s);
        self.cpu.push(s.cpu_us);
    }

    fn of(&self, metric: Metric) -> &[f64] {
        match metric {
            Metric::P50Us => &self.p50,
            Metric::P99Us => &self.p99,
            Metric::CpuUsPerMsg => &self.cpu,
            _ => &self.rate,
        }
    }
}

/// What one transport measured: mitto, mitto without spinning, mitto in latency mode, the
/// floor.
struct Measured {
    mitto: Samples,
    calm: Samples,
    busy: Samples,
    floor: Samples,
}

/// Starts mitto (as it is and in latency mode) and the floor on `transport`, measures them in
/// turn, stops them.
async fn measure_transport(
    transport: &str,
    srt: &ServerRuntime,
    config: &Config,
    progress: &Progress,
) -> anyhow::Result<Measured> {
    let payload = Bytes::from(vec![0x5Au8; config.rpc_payload]);
    // The socket files are removed when these drop, after the servers stop.
    let mut paths = Vec::new();
    let (mitto, calm, busy, mut floor) = if transport == "tcp" {
        let url = "tcp://127.0.0.1:0";
        let mitto = mitto_sys::MittoEcho::start(srt, url).await?;
        let calm = mitto_sys::MittoEcho::start_no_spin(srt, url).await?;
        let busy = mitto_sys::MittoEcho::start_busy_poll(srt, url, BUSY_POLL).await?;
        let addr = raw::start_tcp(srt).await?;
        (
            mitto,
            calm,
            busy,
            Floor::Tcp(raw::connect_tcp(addr, &payload).await?),
        )
    } else {
        let mp = SocketPath::new("mitto");
        let cp = SocketPath::new("mitto-calm");
        let bp = SocketPath::new("mitto-busy");
        let rp = SocketPath::new("raw");
        let mitto = mitto_sys::MittoEcho::start(srt, &format!("unix://{}", mp.0.display())).await?;
        let calm =
            mitto_sys::MittoEcho::start_no_spin(srt, &format!("unix://{}", cp.0.display())).await?;
        let busy = mitto_sys::MittoEcho::start_busy_poll(
            srt,
            &format!("unix://{}", bp.0.display()),
            BUSY_POLL,
        )
        .await?;
        raw::start_unix(srt, rp.0.clone()).await?;
        let floor = Floor::Unix(raw::connect_unix(&rp.0, &payload).await?);
        paths.extend([mp, cp, bp, rp]);
        (mitto, calm, busy, floor)
    };
    progress.step(format!("rpc-latency {transport} warm-up"));
    let warm = (config.latency_warmup, config.latency_time);
    for m in [&mitto, &calm, &busy] {
        measure_mitto(&m.client, &payload, &mut LatencyAcc::new()?, warm.0, warm.1).await?;
    }
    floor
        .measure(&mut LatencyAcc::new()?, warm.0, warm.1)
        .await?;
    let (n, max) = slice(config.latency_count, config.latency_time, config.slices);
    let mut out = Measured {
        mitto: Samples::default(),
        calm: Samples::default(),
        busy: Samples::default(),
        floor: Samples::default(),
    };
    for rep in 0..config.reps {
        progress.step(format!(
            "rpc-latency {transport} rep {}/{}",
            rep + 1,
            config.reps
        ));
        let mut m = LatencyAcc::new()?;
        let mut c = LatencyAcc::new()?;
        let mut b = LatencyAcc::new()?;
        let mut f = LatencyAcc::new()?;
        for _ in 0..config.slices.max(1) {
            measure_mitto(&mitto.client, &payload, &mut m, n, max).await?;
            measure_mitto(&calm.client, &payload, &mut c, n, max).await?;
            measure_mitto(&busy.client, &payload, &mut b, n, max).await?;
            floor.measure(&mut f, n, max).await?;
        }
        out.mitto.push(m.sample()?);
        out.calm.push(c.sample()?);
        out.busy.push(b.sample()?);
        out.floor.push(f.sample()?);
    }
    drop(floor);
    mitto.stop(srt).await?;
    calm.stop(srt).await?;
    busy.stop(srt).await?;
    drop(paths);
    Ok(out)
}

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let srt = ServerRuntime::start()?;
    let rt = client_runtime()?;
    let mut report = ScenarioReport {
        scenario: NAME.to_owned(),
        ..ScenarioReport::default()
    };
    for transport in ["tcp", "unix"] {
        let floor = format!("raw-{transport}");
        let m = rt.block_on(measure_transport(transport, &srt, config, progress))?;
        for metric in [
            Metric::P50Us,
            Metric::P99Us,
            Metric::MsgsPerS,
            Metric::CpuUsPerMsg,
        ] {
            let n = config.rpc_payload;
            for (system, samples) in [
                (MITTO, &m.mitto),
                (MITTO_NO_SPIN, &m.calm),
                (MITTO_BUSY_POLL, &m.busy),
                (floor.as_str(), &m.floor),
            ] {
                report.rows.push(super::row_from(
                    NAME,
                    transport,
                    system,
                    metric,
                    n,
                    samples.of(metric),
                ));
            }
        }
    }
    // p50 of `sys` / p50 of the floor, per transport.
    let vs_floor = |sys: &str| -> Vec<(&'static str, f64)> {
        ["tcp", "unix"]
            .into_iter()
            .filter_map(|transport| {
                let floor = format!("raw-{transport}");
                let p50 = |s: &str| {
                    report
                        .rows
                        .iter()
                        .find(|r| r.case == transport && r.system == s && r.metric == Metric::P50Us)
                        .map(|r| r.value)
                        .filter(|v| *v > 0.0)
                };
                p50(sys).zip(p50(&floor)).map(|(a, f)| (transport, a / f))
            })
            .collect()
    };
    let verdicts: Vec<String> = vs_floor(MITTO_NO_SPIN)
        .into_iter()
        .map(|(t, x)| {
            let v = if x <= TARGET_RATIO { "met" } else { "MISSED" };
            format!("{t} {x:.2}x ({v})")
        })
        .collect();
    report.notes.push(format!(
        "{MITTO_NO_SPIN} p50 round trip / raw ping-pong p50 (target ≤ {TARGET_RATIO}x; both ends \
         of both sleep until woken): {}",
        verdicts.join(", ")
    ));
    let ratios = |sys: &str| {
        vs_floor(sys)
            .into_iter()
            .map(|(t, x)| format!("{t} {x:.2}x"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.notes.push(format!(
        "mitto p50 / raw ping-pong p50: {} (mitto's default spin-then-park keeps polling a \
         connection for {} µs after a read while its reads come closer together than that, so \
         a round trip costs no thread wake-up; the floor sleeps between messages, so this row \
         is below the floor by design; see the CPU µs/msg rows for what the polling costs)",
        ratios(MITTO),
        mitto::DEFAULT_SPIN.as_micros()
    ));
    report.notes.push(format!(
        "{MITTO_BUSY_POLL} p50 / raw ping-pong p50: {} ({MITTO_BUSY_POLL}: server and client in \
         latency mode, each runtime polling its sockets {} µs after each read instead of \
         sleeping)",
        ratios(MITTO_BUSY_POLL),
        BUSY_POLL.as_micros()
    ));
    report.notes.push(
        "CPU µs/msg: CPU time of the whole process (client and server threads together) while \
         the system ran, per round trip."
            .to_owned(),
    );
    report.notes.push(format!(
        "{} B each way, one call at a time on one connection; mitto, {MITTO_NO_SPIN}, \
         {MITTO_BUSY_POLL} and the floor take turns in {} slices per repetition.",
        config.rpc_payload, config.slices
    ));
    Ok(report)
}
