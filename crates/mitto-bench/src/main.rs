//! `mitto-bench`: runs benchmark scenarios and prints tables of mitto beside its floors and
//! peers. See the `mitto_bench` library for the scenarios.

use anyhow::Context as _;
use clap::Parser;
use mitto_bench::{report, scenarios, Config, Progress};
use std::path::PathBuf;

/// Benchmark comparison suite: mitto beside memcpy, raw sockets, tarpc, tonic,
/// protosocket-rpc, nats-server, mosquitto, and tokio mpsc and flume channels. Full mode runs several repetitions and reports
/// the median and min–max.
#[derive(Debug, Parser)]
#[command(name = "mitto-bench", version)]
struct Cli {
    /// Scenarios to run: codec, rpc-latency, rpc-throughput, pubsub, fanout, reqrep,
    /// conn-memory, bus, or all.
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

    /// Runs only this system (a row name, e.g. `protosocket-rpc`; repeatable) where the scenario
    /// supports it (rpc-throughput): for profiling one system at a time.
    #[arg(long, value_name = "SYSTEM")]
    only: Vec<String>,

    /// Also writes the results as a JSON array to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
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
        // Only `rpc-throughput` runs a subset of its systems.
        let rpc = list
            .iter()
            .find(|s| s.name == "rpc-throughput")
            .ok_or_else(|| anyhow::anyhow!("--only applies to rpc-throughput, which is not run"))?;
        for name in &cli.only {
            anyhow::ensure!(
                rpc.systems.contains(&name.as_str()),
                "--only {name}: rpc-throughput has no such system (it has {})",
                rpc.systems.join(", ")
            );
        }
    }
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
        report::write_json(path, &reports)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
