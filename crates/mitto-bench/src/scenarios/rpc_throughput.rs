//! `rpc-throughput`: 256 unary calls in flight on ONE TCP connection, 32 B echoed, for mitto,
//! tarpc (bincode serde transport), tonic (gRPC, HTTP/2) and protosocket-rpc (prost). Every
//! system's server runs on the same dedicated server thread, every client on the same
//! current-thread client runtime, and the calls are issued and refilled by the same driver
//! (`measure::pipelined`). Inside every repetition the systems take turns slice by slice
//! ([`Config::slices`]), so a change in background load hits all of them alike.

use crate::config::Config;
use crate::measure::{pipelined, slice, ThroughputAcc};
use crate::progress::Progress;
use crate::report::{Metric, ScenarioReport, BUSY_POLL, MITTO, MITTO_BUSY_POLL, MITTO_NO_SPIN};
use crate::runtime::{client_runtime, ServerRuntime};
use crate::systems::{mitto_sys, protosocket_peer, tarpc_peer, tonic_peer};
use bytes::Bytes;
use std::time::Duration;

const NAME: &str = "rpc-throughput";

/// The peers' names in the rows.
pub const PEERS: [&str; 3] = ["tarpc", "tonic", "protosocket-rpc"];

enum System {
    Mitto(mitto_sys::MittoEcho),
    MittoNoSpin(mitto_sys::MittoEcho),
    MittoBusy(mitto_sys::MittoEcho),
    Tarpc(tarpc_peer::EchoClient),
    Tonic(tonic_peer::EchoClient<tonic::transport::Channel>),
    Protosocket(protosocket_peer::PsClient),
}

impl System {
    fn name(&self) -> &'static str {
        match self {
            System::Mitto(_) => MITTO,
            System::MittoNoSpin(_) => MITTO_NO_SPIN,
            System::MittoBusy(_) => MITTO_BUSY_POLL,
            System::Tarpc(_) => PEERS[0],
            System::Tonic(_) => PEERS[1],
            System::Protosocket(_) => PEERS[2],
        }
    }

    async fn run(
        &self,
        acc: &mut ThroughputAcc,
        count: u64,
        max: Duration,
        payload: &Bytes,
        in_flight: usize,
    ) -> anyhow::Result<()> {
        let k = in_flight;
        match self {
            System::Mitto(m) | System::MittoNoSpin(m) | System::MittoBusy(m) => {
                let c = &m.client;
                pipelined(acc, k, count, max, || mitto_sys::call(c, payload.clone())).await
            }
            System::Tarpc(c) => {
                pipelined(acc, k, count, max, || tarpc_peer::call(c, payload)).await
            }
            System::Tonic(c) => {
                pipelined(acc, k, count, max, || tonic_peer::call(c, payload.clone())).await
            }
            System::Protosocket(c) => {
                pipelined(acc, k, count, max, || {
                    protosocket_peer::call(c, payload.clone())
                })
                .await
            }
        }
    }
}

/// Runs the scenario.
pub fn run(config: &Config, progress: &Progress) -> anyhow::Result<ScenarioReport> {
    let srt = ServerRuntime::start()?;
    let rt = client_runtime()?;
    let payload = Bytes::from(vec![0x5Au8; config.rpc_payload]);
    let case = format!("pipelined-{}", config.in_flight);
    let samples = rt.block_on(async {
        progress.step("rpc-throughput: starting servers");
        let mut systems = Vec::new();
        if config.runs(MITTO) {
            systems.push(System::Mitto(
                mitto_sys::MittoEcho::start(&srt, "tcp://127.0.0.1:0").await?,
            ));
        }
        if config.runs(MITTO_NO_SPIN) {
            systems.push(System::MittoNoSpin(
                mitto_sys::MittoEcho::start_no_spin(&srt, "tcp://127.0.0.1:0").await?,
            ));
        }
        if config.runs(MITTO_BUSY_POLL) {
            systems.push(System::MittoBusy(
                mitto_sys::MittoEcho::start_busy_poll(&srt, "tcp://127.0.0.1:0", BUSY_POLL).await?,
            ));
        }
        if config.runs(PEERS[0]) {
            systems.push(System::Tarpc(
                tarpc_peer::connect(tarpc_peer::start(&srt).await?).await?,
            ));
        }
        if config.runs(PEERS[1]) {
            systems.push(System::Tonic(
                tonic_peer::connect(tonic_peer::start(&srt).await?).await?,
            ));
        }
        if config.runs(PEERS[2]) {
            systems.push(System::Protosocket(
                protosocket_peer::connect(protosocket_peer::start(&srt).await?).await?,
            ));
        }
        let k = config.in_flight;
        for s in &systems {
            progress.step(format!("rpc-throughput {} warm-up", s.name()));
            let mut acc = ThroughputAcc::default();
            let (n, max) = (config.throughput_warmup, config.throughput_time);
            s.run(&mut acc, n, max, &payload, k).await?;
        }
        let (n, max) = slice(
            config.throughput_count,
            config.throughput_time,
            config.slices,
        );
        // Per system: calls per second, CPU microseconds per call.
        let mut samples: Vec<(&'static str, Vec<f64>, Vec<f64>)> = systems
            .iter()
            .map(|s| (s.name(), Vec::new(), Vec::new()))
            .collect();
        for rep in 0..config.reps {
            let mut accs = vec![ThroughputAcc::default(); systems.len()];
            for part in 0..config.slices.max(1) {
                for (s, acc) in systems.iter().zip(accs.iter_mut()) {
                    progress.step(format!(
                        "rpc-throughput {} rep {}/{} slice {}/{}",
                        s.name(),
                        rep + 1,
                        config.reps,
                        part + 1,
                        config.slices
                    ));
                    s.run(acc, n, max, &payload, k).await?;
                }
            }
            for ((_, rate, cpu), acc) in samples.iter_mut().zip(&accs) {
                rate.push(acc.msgs_per_s()?);
                cpu.push(acc.cpu_us_per_msg());
            }
        }
        for s in systems {
            if let System::Mitto(m) | System::MittoNoSpin(m) | System::MittoBusy(m) = s {
                m.stop(&srt).await?;
            }
        }
        anyhow::Ok(samples)
    })?;
    let mut report = ScenarioReport {
        scenario: NAME.to_owned(),
        ..ScenarioReport::default()
    };
    for metric in [Metric::MsgsPerS, Metric::CpuUsPerMsg] {
        for (system, rate, cpu) in &samples {
            let values = if metric == Metric::MsgsPerS {
                rate
            } else {
                cpu
            };
            report.rows.push(super::row_from(
                NAME,
                &case,
                system,
                metric,
                config.rpc_payload,
                values,
            ));
        }
    }
    let best = report
        .rows
        .iter()
        .filter(|r| r.metric == Metric::MsgsPerS && PEERS.contains(&r.system.as_str()))
        .max_by(|a, b| a.value.total_cmp(&b.value));
    if let Some(best) = best {
        if let Some(x) = report.mitto_ratio(best) {
            report.notes.push(format!(
                "mitto / best peer ({}): {x:.2}x (msgs/s; above 1 means mitto is faster)",
                best.system
            ));
        }
        let rate_of = |system: &str| {
            report
                .rows
                .iter()
                .find(|r| r.metric == Metric::MsgsPerS && r.system == system)
        };
        if let Some(calm) = rate_of(MITTO_NO_SPIN) {
            if best.value > 0.0 {
                report.notes.push(format!(
                    "mitto-no-spin / best peer ({}): {:.2}x. mitto-no-spin is mitto with \
                     spin-then-park off at both ends (each sleeps until woken, as the peers do); \
                     mitto's default keeps polling a connection for {} µs after a read while \
                     its reads come closer together than that.",
                    best.system,
                    calm.value / best.value,
                    mitto::DEFAULT_SPIN.as_micros()
                ));
            }
        }
        if let Some(busy) = rate_of(MITTO_BUSY_POLL) {
            if best.value > 0.0 {
                report.notes.push(format!(
                    "mitto-busy-poll / best peer ({}): {:.2}x. mitto-busy-poll is mitto with \
                     both ends in latency mode (each runtime polls its sockets {} µs after each \
                     read instead of sleeping, so both CPUs stay busy); no peer has such a \
                     mode, and the target is for mitto's default.",
                    best.system,
                    busy.value / best.value,
                    BUSY_POLL.as_micros()
                ));
            }
        }
    }
    report.notes.push(
        "CPU µs/msg: CPU time of the whole process (client and server threads together) while \
         the system ran, per call."
            .to_owned(),
    );
    report.notes.push(format!(
        "{} calls in flight on one connection, {} B echoed, servers on one dedicated thread, \
         clients on one current-thread runtime; the systems take turns in {} slices per \
         repetition.",
        config.in_flight, config.rpc_payload, config.slices
    ));
    Ok(report)
}
