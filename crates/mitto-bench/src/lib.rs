//! The mitto benchmark comparison suite.
//!
//! Every scenario measures mitto beside a floor (what the machine does with no protocol at all:
//! a `memcpy`, a raw length-prefixed ping-pong on the same socket kind) or beside other RPC
//! systems doing exactly the same work, in the same process and the same run, so that the
//! ratios mean something even on a noisy machine. The broker scenarios (`pubsub`, `fanout`,
//! `reqrep`, `conn-memory`) put mitto's broker beside the nats-server and mosquitto already
//! running on 127.0.0.1, each driven by its own client library; a peer that cannot be reached
//! is left out with a note. The `bus` scenario puts mitto's broker embedded in the process
//! (`inproc://`) beside bounded `tokio::sync::mpsc` and `flume` channels.
//!
//! The binary (`cargo run --release -p mitto-bench -- all`) is a thin wrapper over this library:
//! [`scenarios::REGISTRY`] lists the scenarios, [`Config`] says how long to run them, and
//! [`report`] prints the table and writes the JSON. Tests call the same functions with
//! [`Config::tiny`].
//!
//! Threads: every server runs on one dedicated server thread (a current-thread tokio runtime,
//! see `runtime::ServerRuntime`), every client on the calling thread's own current-thread
//! runtime. Each system gets the same split: one core's worth of runtime each side. `bus` is
//! the exception: every system runs on one tokio multi-thread runtime with two workers.

pub mod config;
mod measure;
pub mod progress;
pub mod report;
mod runtime;
pub mod scenarios;
mod systems;

pub use config::{Config, Mode};
pub use progress::Progress;
pub use report::{Metric, Row, ScenarioReport};
pub use scenarios::{find, run_scenario, Scenario, REGISTRY};
pub use systems::broker_sys::{serve_child as serve_broker_child, SERVE_FLAG};
