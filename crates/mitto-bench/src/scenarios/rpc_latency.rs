//! `rpc-latency`: sequential round trips of a 32 B request and a 32 B response, one at a time
//! on one connection, over TCP and over a Unix socket: mitto's `Client::call` to a `Server`
//! route beside the raw ping-pong floors on the same socket kind, one sleeping between
//! messages (`raw-tcp`, `raw-unix`: `systems::raw`) and one busy-polling (`raw-tcp-spin`,
//! `raw-unix-spin`: `systems::raw_spin`), so that mitto's default and its latency mode each
//! have a floor of their own mode. Inside every repetition they all take turns slice by slice
//! ([`Config::slices`]), so a change in background load hits them alike.

use crate::config::Config;
use crate::measure::{sequential, slice, LatencyAcc, LatencySample};
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport, BUSY_POLL, MITTO, MITTO_BUSY_POLL, MITTO_NO_SPIN};
use crate::runtime::{client_runtime, ServerRuntime};
use crate::systems::{mitto_sys, raw, raw_spin, SocketPath};
use bytes::Bytes;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

const NAME: &str = "rpc-latency";
/// The target reported beside the ratio (DESIGN.md): mitto's p50 round trip at most this times
/// the floor's of the same mode.
pub const TARGET_RATIO: f64 = 1.1;
/// WebSocket round trip / TCP round trip, at most.
pub const WS_TARGET_RATIO: f64 = 1.3;

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

/// The spinning floor's client (its server is a thread of its own).
enum SpinFloor {
    Tcp(raw_spin::SpinClient<std::net::TcpStream>),
    Unix(raw_spin::SpinClient<std::os::unix::net::UnixStream>),
}

impl SpinFloor {
    /// Round trips into `acc`; each busy-polls the calling thread until its echo is back.
    async fn measure(&mut self, acc: &mut LatencyAcc, n: u64, max: Duration) -> anyhow::Result<()> {
        match self {
            SpinFloor::Tcp(c) => sequential(acc, n, max, async || c.round_trip()).await,
            SpinFloor::Unix(c) => sequential(acc, n, max, async || c.round_trip()).await,
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
/// sleeping floor, the spinning floor.
struct Measured {
    mitto: Samples,
    calm: Samples,
    busy: Samples,
    floor: Samples,
    spin: Samples,
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
    let (mitto, calm, busy, mut floor, mut spin) = if transport != "unix" {
        // TCP, or WebSocket over TCP: the floors are TCP's either way.
        let url = &format!("{transport}://127.0.0.1:0");
        let mitto = mitto_sys::MittoEcho::start(srt, url).await?;
        let calm = mitto_sys::MittoEcho::start_no_spin(srt, url).await?;
        let busy = mitto_sys::MittoEcho::start_busy_poll(srt, url, BUSY_POLL).await?;
        let addr = raw::start_tcp(srt).await?;
        (
            mitto,
            calm,
            busy,
            Floor::Tcp(raw::connect_tcp(addr, &payload).await?),
            SpinFloor::Tcp(raw_spin::tcp(&payload, BUSY_POLL)?),
        )
    } else {
        let mp = SocketPath::new("mitto");
        let cp = SocketPath::new("mitto-calm");
        let bp = SocketPath::new("mitto-busy");
        let rp = SocketPath::new("raw");
        let sp = SocketPath::new("raw-spin");
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
        let spin = SpinFloor::Unix(raw_spin::unix(&sp.0, &payload, BUSY_POLL)?);
        paths.extend([mp, cp, bp, rp, sp]);
        (mitto, calm, busy, floor, spin)
    };
    progress.step(format!("rpc-latency {transport} warm-up"));
    let warm = (config.latency_warmup, config.latency_time);
    for m in [&mitto, &calm, &busy] {
        measure_mitto(&m.client, &payload, &mut LatencyAcc::new()?, warm.0, warm.1).await?;
    }
    floor
        .measure(&mut LatencyAcc::new()?, warm.0, warm.1)
        .await?;
    spin.measure(&mut LatencyAcc::new()?, warm.0, warm.1)
        .await?;
    let (n, max) = slice(config.latency_count, config.latency_time, config.slices);
    let mut out = Measured {
        mitto: Samples::default(),
        calm: Samples::default(),
        busy: Samples::default(),
        floor: Samples::default(),
        spin: Samples::default(),
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
        let mut sf = LatencyAcc::new()?;
        for _ in 0..config.slices.max(1) {
            measure_mitto(&mitto.client, &payload, &mut m, n, max).await?;
            measure_mitto(&calm.client, &payload, &mut c, n, max).await?;
            measure_mitto(&busy.client, &payload, &mut b, n, max).await?;
            floor.measure(&mut f, n, max).await?;
            spin.measure(&mut sf, n, max).await?;
        }
        out.mitto.push(m.sample()?);
        out.calm.push(c.sample()?);
        out.busy.push(b.sample()?);
        out.floor.push(f.sample()?);
        out.spin.push(sf.sample()?);
    }
    drop(floor);
    drop(spin);
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
    for transport in ["tcp", "unix", "ws"] {
        let socket = if transport == "ws" { "tcp" } else { transport };
        let floor = format!("raw-{socket}");
        let spin_floor = format!("raw-{socket}-spin");
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
                (spin_floor.as_str(), &m.spin),
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
    let notes = notes(&report, config);
    report.notes.extend(notes);
    Ok(report)
}

/// The ratios to the floors, with the targets, and how it was measured.
fn notes(report: &ScenarioReport, config: &Config) -> Vec<String> {
    let mut notes = Vec::new();
    // p50 of `sys` / p50 of the floor (`raw-TRANSPORT` and `suffix`), per transport.
    let vs_floor = |sys: &str, suffix: &str| -> Vec<(&'static str, f64)> {
        ["tcp", "unix"]
            .into_iter()
            .filter_map(|transport| {
                let floor = format!("raw-{transport}{suffix}");
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
    let verdicts = |sys: &str, suffix: &str| {
        vs_floor(sys, suffix)
            .into_iter()
            .map(|(t, x)| {
                let v = if x <= TARGET_RATIO { "met" } else { "MISSED" };
                format!("{t} {x:.2}x ({v})")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    notes.push(format!(
        "{MITTO_NO_SPIN} p50 round trip / raw ping-pong p50 (target ≤ {TARGET_RATIO}x; both ends \
         of both sleep until woken): {}",
        verdicts(MITTO_NO_SPIN, "")
    ));
    notes.push(format!(
        "{MITTO_BUSY_POLL} p50 round trip / spinning raw ping-pong p50 (target ≤ \
         {TARGET_RATIO}x; both ends of both poll their socket {} µs after each read before \
         sleeping): {}",
        BUSY_POLL.as_micros(),
        verdicts(MITTO_BUSY_POLL, "-spin")
    ));
    let ratios = |sys: &str| {
        vs_floor(sys, "")
            .into_iter()
            .map(|(t, x)| format!("{t} {x:.2}x"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    notes.push(format!(
        "mitto p50 / raw ping-pong p50: {} (mitto's default spin-then-park keeps polling a \
         connection for {} µs after a read while its reads come closer together than that, so \
         a round trip costs no thread wake-up; the floor sleeps between messages, so this row \
         is below the floor by design; see the CPU µs/msg rows for what the polling costs)",
        ratios(MITTO),
        mitto::DEFAULT_SPIN.as_micros()
    ));
    notes.push(format!(
        "{MITTO_BUSY_POLL} p50 / sleeping raw ping-pong p50: {} ({MITTO_BUSY_POLL}: server and \
         client in latency mode, each runtime polling its sockets {} µs after each read instead \
         of sleeping; compare it with the spinning floor above)",
        ratios(MITTO_BUSY_POLL),
        BUSY_POLL.as_micros()
    ));
    let p50 = |case: &str| {
        report
            .rows
            .iter()
            .find(|r| r.case == case && r.system == MITTO_NO_SPIN && r.metric == Metric::P50Us)
            .map(|r| r.value)
            .filter(|v| *v > 0.0)
    };
    if let (Some(ws), Some(tcp)) = (p50("ws"), p50("tcp")) {
        let x = ws / tcp;
        let v = if x <= WS_TARGET_RATIO {
            "met"
        } else {
            "MISSED"
        };
        notes.push(format!(
            "WebSocket: {MITTO_NO_SPIN} p50 over ws:// / over tcp:// {x:.2}x (goal ≤ \
             {WS_TARGET_RATIO}x: {v}); the ws case's floors are TCP's"
        ));
    }
    notes.push(
        "CPU µs/msg: CPU time of the whole process (client and server threads together) while \
         the system ran, per round trip."
            .to_owned(),
    );
    notes.push(format!(
        "{} B each way, one call at a time on one connection; mitto, {MITTO_NO_SPIN}, \
         {MITTO_BUSY_POLL} and the two floors take turns in {} slices per repetition.",
        config.rpc_payload, config.slices
    ));
    notes
}
