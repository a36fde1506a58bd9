//! The scenario registry. A scenario is a name, a one-line description, the systems it reports
//! on, and a function from a [`Config`] to a [`ScenarioReport`].
//!
//! To add one: write a module with a
//! `run(&Config, &Progress) -> anyhow::Result<ScenarioReport>`, and add a [`Scenario`] entry to
//! [`REGISTRY`]. The CLI, `all`, the JSON output and the quick test (`tests/quick.rs`) pick it
//! up from there.

use crate::config::Config;
use crate::progress::Progress;
use crate::report::ScenarioReport;

pub mod bridges;
pub mod bus;
pub mod codec;
pub mod conn_memory;
mod fan;
mod fan_deployed;
mod fan_embedded;
pub mod fanout;
mod goals;
pub mod pubsub;
pub mod reqrep;
mod reqrep_systems;
pub mod rpc_latency;
pub mod rpc_throughput;
pub mod store_engines;
mod store_kv;
pub mod streams;

/// One benchmark scenario.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// The CLI name.
    pub name: &'static str,
    /// One line for `--help` and the error listing.
    pub about: &'static str,
    /// Every system the scenario reports a row for (mitto first).
    pub systems: &'static [&'static str],
    /// Those of `systems` that need something outside the suite (the nats-server binary, the
    /// mosquitto already running): when it is missing their rows are left out, with a note
    /// saying so, instead of failing the run.
    pub external: &'static [&'static str],
    /// Runs it.
    pub run: fn(&Config, &Progress) -> anyhow::Result<ScenarioReport>,
}

/// Every implemented scenario, in the order `all` runs them.
pub const REGISTRY: &[Scenario] = &[
    Scenario {
        name: "codec",
        about: "frame encode/decode ns/op at 16 B, 1 KiB, 64 KiB beside a memcpy floor",
        systems: &["mitto", "memcpy"],
        external: &[],
        run: codec::run,
    },
    Scenario {
        name: "rpc-latency",
        about: "sequential 32 B round trips over TCP and Unix sockets beside raw ping-pongs, \
                sleeping and busy-polling",
        systems: &[
            "mitto",
            "mitto-no-spin",
            "mitto-busy-poll",
            "raw-tcp",
            "raw-unix",
            "raw-tcp-spin",
            "raw-unix-spin",
        ],
        external: &[],
        run: rpc_latency::run,
    },
    Scenario {
        name: "rpc-throughput",
        about: "256 calls in flight on one TCP connection: mitto, tarpc, tonic, protosocket-rpc",
        systems: &[
            "mitto",
            "mitto-no-spin",
            "mitto-busy-poll",
            "tarpc",
            "tonic",
            "protosocket-rpc",
        ],
        external: &[],
        run: rpc_throughput::run,
    },
    Scenario {
        name: "pubsub",
        about: "1 publisher -> 1 subscriber, 16 B and 128 B, msgs/s end to end, CPU per message \
                and losses, each broker and client a process of its own: mitto server, \
                nats-server, Zenoh (router and peer-to-peer), mosquitto; mitto embedded beside",
        systems: &[
            "mitto",
            "mitto-block",
            "nats",
            "nats-4mi",
            "zenoh-router",
            "zenoh-peer",
            "mosquitto",
            "mitto-embedded",
        ],
        external: &["nats", "nats-4mi", "mosquitto"],
        run: pubsub::run,
    },
    Scenario {
        name: "fanout",
        about: "1 publisher -> 10 subscribers, 16 B, msgs/s delivered and CPU per message, \
                deployed as in pubsub: mitto server, nats-server, Zenoh; mitto embedded beside",
        systems: &[
            "mitto",
            "mitto-block",
            "nats",
            "nats-4mi",
            "zenoh-router",
            "zenoh-peer",
            "mitto-embedded",
        ],
        external: &["nats", "nats-4mi"],
        run: fanout::run,
    },
    Scenario {
        name: "reqrep",
        about: "sequential request/reply through the broker, 32 B: p50/p99, msgs/s and CPU per \
                round trip, deployed: mitto server, nats-server, Zenoh (router and \
                peer-to-peer); mitto embedded beside",
        systems: &[
            "mitto",
            "mitto-busy-poll",
            "nats",
            "zenoh-router",
            "zenoh-peer",
            "mitto-embedded",
        ],
        external: &["nats"],
        run: reqrep::run,
    },
    Scenario {
        name: "conn-memory",
        about: "broker resident memory per idle connection (10,000 connections): mitto, \
                nats-server",
        systems: &["mitto", "nats"],
        external: &["nats"],
        run: conn_memory::run,
    },
    Scenario {
        name: "bus",
        about: "in-process 16 B messages, 1 -> 1 and 1 -> 8, delivered msgs/s: mitto's embedded \
                broker (bytes and typed) beside bounded tokio mpsc and flume channels",
        systems: &["mitto", "mitto-typed", "tokio-mpsc", "flume"],
        external: &[],
        run: bus::run,
    },
    Scenario {
        name: "bridges",
        about: "a NATS bridge (mitto client -> broker -> bridge -> nats-server -> async-nats) \
                beside async-nats alone; two brokers federated over a two-node NATS cluster \
                beside the cluster's own clients: msgs/s, publish-to-receive and request p50/p99",
        systems: &["mitto", "nats", "nats-cluster"],
        external: &["mitto", "nats", "nats-cluster"],
        run: bridges::run,
    },
    Scenario {
        name: "streams",
        about: "durable streams beside NATS JetStream (file storage): acked 128 B publishes from \
                1 and 8 publishers, publish-ack p50/p99, consumer replay; equal sync policy \
                stated (mitto embedded, clients over TCP)",
        systems: &["mitto", "mitto-fsync-always", "jetstream"],
        external: &["jetstream"],
        run: streams::run,
    },
    Scenario {
        name: "store-engines",
        about: "the storage under streams: mitto-store's log beside fjall and redb, 128 B \
                appends acknowledged after fdatasync (group commit) from 1 and 8 appenders, \
                p50/p99, then a replay of the whole log (set MITTO_BENCH_DIR for the disk)",
        systems: &store_engines::SYSTEMS,
        external: &[],
        run: store_engines::run,
    },
];

/// The name that selects every scenario.
pub const ALL: &str = "all";

/// The scenario called `name`.
pub fn find(name: &str) -> Option<&'static Scenario> {
    REGISTRY.iter().find(|s| s.name == name)
}

/// The known names, `all` included, comma-separated.
pub fn known_names() -> String {
    REGISTRY
        .iter()
        .map(|s| s.name)
        .chain([ALL])
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks one CLI name (a clap value parser).
pub fn parse_name(name: &str) -> Result<String, String> {
    if name == ALL || find(name).is_some() {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "unknown scenario '{name}'; known scenarios: {}",
            known_names()
        ))
    }
}

/// Resolves CLI names to scenarios in registry order, `all` expanded, duplicates removed.
pub fn resolve<S: AsRef<str>>(names: &[S]) -> Result<Vec<&'static Scenario>, String> {
    let mut wanted = Vec::new();
    for n in names {
        parse_name(n.as_ref())?;
        wanted.push(n.as_ref());
    }
    Ok(REGISTRY
        .iter()
        .filter(|s| wanted.iter().any(|w| *w == ALL || *w == s.name))
        .collect())
}

/// Runs one scenario.
pub fn run_scenario(
    scenario: &Scenario,
    config: &Config,
    progress: &Progress,
) -> anyhow::Result<ScenarioReport> {
    (scenario.run)(config, progress)
}

/// A row from the values of every repetition.
pub(crate) fn row_from(
    scenario: &str,
    case: &str,
    system: &str,
    metric: crate::report::Metric,
    payload_bytes: usize,
    values: &[f64],
) -> crate::report::Row {
    let s = crate::measure::spread(values);
    crate::report::Row {
        scenario: scenario.to_owned(),
        case: case.to_owned(),
        system: system.to_owned(),
        metric,
        payload_bytes: payload_bytes as u64,
        value: s.median,
        min: s.min,
        max: s.max,
        reps: s.reps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve() {
        let all = resolve(&["all"]).unwrap_or_default();
        assert_eq!(all.len(), REGISTRY.len());
        let one = resolve(&["rpc-latency", "rpc-latency"]).unwrap_or_default();
        assert_eq!(one.len(), 1);
        let err = resolve(&["nope"]).err().unwrap_or_default();
        assert!(err.contains("unknown scenario 'nope'"), "{err}");
        assert!(
            err.contains(
                "codec, rpc-latency, rpc-throughput, pubsub, fanout, reqrep, conn-memory, bus, bridges, streams, store-engines, all"
            ),
            "{err}"
        );
        for s in REGISTRY {
            assert!(
                s.external.iter().all(|e| s.systems.contains(e)),
                "{}",
                s.name
            );
        }
    }
}
