//! The mitto benchmark comparison suite.
//!
//! Every scenario measures mitto beside a floor (what the machine does with no protocol at all:
//! a `memcpy`, a raw length-prefixed ping-pong on the same socket kind, sleeping or
//! busy-polling) or beside other systems doing exactly the same work, in the same run, so that
//! the ratios mean something even on a noisy machine. The broker scenarios (`pubsub`, `fanout`,
//! `reqrep`) run every system in the deployed layout: its broker a process of its own (`mitto
//! server`, a nats-server the suite starts, a Zenoh router, the mosquitto already running; none
//! for Zenoh peer-to-peer) and every client a process of its own (`mitto-bench child ROLE`),
//! with the CPU time of all of them per message; mitto's broker embedded in the benchmark
//! process is a row of its own (`mitto-embedded`). `conn-memory` puts mitto's broker beside
//! nats-server; `bus` puts mitto's broker embedded in the process (`inproc://`) beside bounded
//! `tokio::sync::mpsc` and `flume` channels; `store-engines` puts the storage under durable
//! streams (mitto-store) beside the fjall and redb engines, with equal durability.
//!
//! The binary (`mitto-bench all`) is a thin wrapper over this library: [`scenarios::REGISTRY`]
//! lists the scenarios, [`Config`] says how long to run them, [`report`] prints the tables and
//! [`Results`] writes the JSON of a run. Tests call the same functions with [`Config::tiny`].
//!
//! Threads: in the RPC scenarios and the embedded layout every server runs on one dedicated
//! server thread (a current-thread tokio runtime, see `runtime::ServerRuntime`), every client
//! on the calling thread's own current-thread runtime: one core's worth of runtime each side.
//! `bus` runs every system on one tokio multi-thread runtime with two workers.

pub mod config;
mod measure;
pub mod progress;
pub mod report;
pub mod results;
mod roles;
mod runtime;
pub mod scenarios;
mod systems;

pub use config::{Config, Mode};
pub use progress::Progress;
pub use report::{Metric, Row, ScenarioReport};
pub use results::Results;
pub use roles::main as child_main;
pub use scenarios::{find, run_scenario, Scenario, REGISTRY};
pub use systems::broker_sys::{serve_child as serve_broker_child, SERVE_FLAG};
pub use systems::procs::CHILD;
