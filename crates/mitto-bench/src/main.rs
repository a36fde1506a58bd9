//! `mitto-bench`: runs benchmark scenarios and prints tables of mitto beside its floors and
//! peers. See the `mitto_bench` library for the scenarios.

use anyhow::Context as _;
use clap::Parser;
use mitto_bench::{report, scenarios, Config, Progress, Results};
use std::path::PathBuf;

/// Benchmark comparison suite: mitto beside memcpy, raw sockets, tarpc, tonic,
/// protosocket-rpc, nats-server, Zenoh, mosquitto, and tokio mpsc and flume channels. Full mode
/// runs several repetitions and reports the median and min–max.
#[derive(Debug, Parser)]
#[command(name = "mitto-bench", version)]
struct Cli {
    /// Scenarios to run: codec, rpc-latency, rpc-throughput, pubsub, fanout, reqrep,
    /// conn-memory, bus, bridges, streams, store-engines, or all. (`mitto-bench child ROLE` is
    /// a process of the deployed layout, started by the suite itself.)
    #[arg(
        required_unless_present = "serve_broker",
        value_name = "SCENARIO",
        value_parser = scenarios::parse_name
    )]
    scenarios: Vec<String>,

    /// Hosts a broker for conn-memory: prints its URL, serves until stdin closes.
    #[arg(long, hide = true)]
    serve_broker: bool,

    /// One repetition with small counts (a few seconds per scenario).
    #[arg(long)]
    quick: bool,

    /// A few hundred operations per measurement (smoke test).
    #[arg(long, conflicts_with = "quick")]
    tiny: bool,

    /// Overrides the number of repetitions.
    #[arg(long, value_name = "N")]
    reps: Option<usize>,

    /// Runs only this system (a row name, e.g. `protosocket-rpc`, `zenoh-peer`; repeatable)
    /// where the scenario supports it (rpc-throughput, pubsub, fanout, reqrep): for profiling
    /// one system at a time.
    #[arg(long, value_name = "SYSTEM")]
    only: Vec<String>,

    /// The `mitto` CLI whose `mitto server` the broker scenarios run (default: `mitto` beside
    /// this executable, e.g. target/release/mitto).
    #[arg(long, value_name = "PATH")]
    mitto: Option<PathBuf>,

    /// Also writes the results to FILE as JSON: the run (commit, machine, mode) and its rows,
    /// ready to add to benchmarks/results/.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// The run's name, recorded in the `--json` file (e.g. `T`).
    #[arg(long, value_name = "NAME", requires = "json")]
    run: Option<String>,
}

/// The scenarios whose systems `--only` can pick.
const ONLY_SCENARIOS: [&str; 4] = ["rpc-throughput", "pubsub", "fanout", "reqrep"];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os();
    let _ = args.next();
    if args.next().is_some_and(|a| a == mitto_bench::CHILD) {
        return mitto_bench::child_main(args.collect());
    }
    let cli = Cli::parse();
    if cli.serve_broker {
        return mitto_bench::serve_broker_child();
    }
    let list = scenarios::resolve(&cli.scenarios).map_err(anyhow::Error::msg)?;
    let mut config = if cli.tiny {
        Config::tiny()
    } else if cli.quick {
        Config::quick()
    } else {
        Config::full()
    };
    if let Some(n) = cli.reps {
        config = config.with_reps(n);
    }
    if !cli.only.is_empty() {
        let picks: Vec<_> = list
            .iter()
            .filter(|s| ONLY_SCENARIOS.contains(&s.name))
            .collect();
        anyhow::ensure!(
            !picks.is_empty(),
            "--only applies to {}, none of which is run",
            ONLY_SCENARIOS.join(", ")
        );
        for name in &cli.only {
            anyhow::ensure!(
                picks.iter().any(|s| s.systems.contains(&name.as_str())),
                "--only {name}: no scenario run has such a system (they have {})",
                picks
                    .iter()
                    .map(|s| format!("{}: {}", s.name, s.systems.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
    }
    config.mitto_exe = cli.mitto;
    config.only = cli.only;
    println!(
        "mitto-bench: mode {:?}, {} repetition(s){}",
        config.mode,
        config.reps,
        if config.reps > 1 {
            ", value = median, min–max over repetitions"
        } else {
            ""
        }
    );
    let progress = Progress::auto();
    let mut reports = Vec::new();
    for s in list {
        let r = scenarios::run_scenario(s, &config, &progress)
            .with_context(|| format!("scenario {}", s.name))?;
        progress.suspend(|| println!("\n== {} ==\n{}", s.name, report::render(&r)));
        reports.push(r);
    }
    progress.finish();
    if let Some(path) = &cli.json {
        Results::new(cli.run, &config, &reports).write(path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
