//! How long and how often to measure: [`Config::full`], [`Config::quick`] and [`Config::tiny`].

use std::path::PathBuf;
use std::time::Duration;

/// Which preset a [`Config`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Several repetitions with counts large enough for stable medians.
    Full,
    /// One repetition with small counts: every scenario in a few seconds.
    Quick,
    /// One repetition with a few hundred operations: for tests (debug builds).
    Tiny,
}

/// Counts and time bounds for every scenario. Every measured loop stops at its count or at its
/// time bound, whichever comes first, so a slow system cannot make a run hang.
#[derive(Clone, Debug)]
pub struct Config {
    /// The preset.
    pub mode: Mode,
    /// Repetitions of every measurement; the report shows the median and the min–max.
    pub reps: usize,
    /// Operations per codec measurement (upper bound).
    pub codec_ops: u64,
    /// Time per codec measurement (upper bound).
    pub codec_time: Duration,
    /// Sequential round trips per latency repetition (upper bound).
    pub latency_count: u64,
    /// Time per latency repetition (upper bound).
    pub latency_time: Duration,
    /// Round trips of warm-up before the latency repetitions (not measured).
    pub latency_warmup: u64,
    /// Calls (or published messages, in the broker scenarios) per throughput repetition
    /// (upper bound).
    pub throughput_count: u64,
    /// Time per throughput repetition (upper bound).
    pub throughput_time: Duration,
    /// Calls (messages) of warm-up before the throughput repetitions (not measured).
    pub throughput_warmup: u64,
    /// Each repetition of an RPC scenario is cut into this many slices, and the systems take
    /// turns slice by slice, so that a change in background load hits all of them alike.
    pub slices: u32,
    /// Calls in flight on the one connection in `rpc-throughput`.
    pub in_flight: usize,
    /// Request and response payload size of the RPC scenarios (and `reqrep`), in bytes.
    pub rpc_payload: usize,
    /// Messages published per repetition of `bus` (upper bound; in `1->8` each is delivered
    /// eight times).
    pub bus_count: u64,
    /// Time per `bus` repetition (upper bound on publishing).
    pub bus_time: Duration,
    /// How long a subscriber of `pubsub` and `fanout` waits for more, once the publisher is done
    /// and nothing arrives, before what is missing counts as lost.
    pub stall: Duration,
    /// Messages of warm-up per system and case of `bus` (not measured).
    pub bus_warmup: u64,
    /// Idle connections opened in `conn-memory`.
    pub idle_connections: usize,
    /// Time to open them (upper bound; fewer are measured if it runs out).
    pub connect_time: Duration,
    /// The `mitto-bench` binary: the deployed layout runs its clients and the Zenoh router as
    /// `mitto-bench child ROLE`, and `conn-memory` hosts a broker in `mitto-bench
    /// --serve-broker`. `None`: the running executable, if it is `mitto-bench`.
    pub bench_exe: Option<PathBuf>,
    /// The `mitto` CLI, whose `mitto server` is the broker of the deployed layout. `None`:
    /// `mitto` beside the `mitto-bench` binary (`target/release/mitto` for a release build).
    pub mitto_exe: Option<PathBuf>,
    /// Run only these systems (by row name) where a scenario supports it (`rpc-throughput`,
    /// `pubsub`, `fanout`, `reqrep`); empty: all.
    pub only: Vec<String>,
}

impl Config {
    /// Five repetitions; `all` stays within about 13 minutes (the sum of its time bounds) on
    /// a 2-vCPU machine.
    pub fn full() -> Config {
        Config {
            mode: Mode::Full,
            reps: 5,
            codec_ops: 2_000_000,
            codec_time: Duration::from_millis(250),
            latency_count: 20_000,
            latency_time: Duration::from_secs(2),
            latency_warmup: 2_000,
            throughput_count: 1_000_000,
            throughput_time: Duration::from_secs(2),
            throughput_warmup: 20_000,
            slices: 4,
            in_flight: 256,
            rpc_payload: 32,
            bus_count: 2_000_000,
            bus_time: Duration::from_secs(2),
            stall: Duration::from_millis(500),
            bus_warmup: 50_000,
            idle_connections: 10_000,
            connect_time: Duration::from_secs(60),
            bench_exe: None,
            mitto_exe: None,
            only: Vec::new(),
        }
    }

    /// One repetition with small counts.
    pub fn quick() -> Config {
        Config {
            mode: Mode::Quick,
            reps: 1,
            codec_ops: 500_000,
            codec_time: Duration::from_millis(60),
            latency_count: 3_000,
            latency_time: Duration::from_millis(500),
            latency_warmup: 300,
            throughput_count: 100_000,
            throughput_time: Duration::from_secs(1),
            throughput_warmup: 4_000,
            slices: 2,
            bus_count: 300_000,
            bus_time: Duration::from_millis(500),
            bus_warmup: 10_000,
            idle_connections: 2_000,
            connect_time: Duration::from_secs(20),
            ..Config::full()
        }
    }

    /// A few hundred operations per measurement, for tests in debug builds.
    pub fn tiny() -> Config {
        Config {
            mode: Mode::Tiny,
            reps: 1,
            codec_ops: 2_000,
            codec_time: Duration::from_millis(20),
            latency_count: 200,
            latency_time: Duration::from_millis(500),
            latency_warmup: 20,
            throughput_count: 600,
            throughput_time: Duration::from_secs(1),
            throughput_warmup: 50,
            slices: 1,
            bus_count: 2_000,
            bus_time: Duration::from_secs(1),
            bus_warmup: 100,
            idle_connections: 50,
            connect_time: Duration::from_secs(10),
            ..Config::full()
        }
    }

    /// Names the `mitto-bench` binary (tests pass `env!("CARGO_BIN_EXE_mitto-bench")`).
    pub fn with_bench_exe(mut self, exe: impl Into<PathBuf>) -> Config {
        self.bench_exe = Some(exe.into());
        self
    }

    /// Names the `mitto` CLI binary.
    pub fn with_mitto_exe(mut self, exe: impl Into<PathBuf>) -> Config {
        self.mitto_exe = Some(exe.into());
        self
    }

    /// Runs only `systems` where a scenario supports it (see [`Config::only`]).
    pub fn with_only(mut self, systems: &[&str]) -> Config {
        self.only = systems.iter().map(|s| (*s).to_owned()).collect();
        self
    }

    /// The `mitto-bench` binary: the `bench_exe` field, else the running executable if it is
    /// `mitto-bench`.
    pub fn bench_exe(&self) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.bench_exe {
            return Ok(p.clone());
        }
        let me = std::env::current_exe()?;
        anyhow::ensure!(
            me.file_stem().is_some_and(|s| s == "mitto-bench"),
            "this scenario runs processes of `mitto-bench`, and this is {}: set \
             Config::bench_exe",
            me.display()
        );
        Ok(me)
    }

    /// Whether `system` runs (see [`Config::only`]).
    pub fn runs(&self, system: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == system)
    }

    /// Overrides the number of repetitions (at least one).
    pub fn with_reps(mut self, reps: usize) -> Config {
        self.reps = reps.max(1);
        self
    }
}
