//! The client and router processes of the deployed layout: `mitto-bench child ROLE ...`. Each
//! is one process driving one connection (or session) of one system, told what to do line by
//! line on stdin and answering on stdout (see `systems::procs::Proc` for the parent's side):
//!
//! - `pub`: `ready`; `probe` -> publishes one probe message, `ok`; `burst TAG N LEN MAX_MS` ->
//!   publishes up to N messages (for at most MAX_MS), then `done SENT FIRST_NS BLOCKED`.
//! - `sub`: `ready`; `probed?` -> `probed yes|no`; `burst TAG N LEN HARD_MS STALL_MS` -> `ok`,
//!   then `end SENT` -> `done GOT STALE LAST_NS` once it has every message the publisher sent,
//!   or nothing came for STALL_MS, or HARD_MS passed (see [`sink::Sink`]).
//! - `requester`: `ready` once a request got its reply; `run N MAX_MS` -> `ok DONE`;
//!   `sample` -> `sample P50_US P99_US MSGS_PER_S DONE`, and the counts start again.
//! - `responder`: `ready` once it answers; then answers until stdin closes.
//! - `zenoh-router`: `ready`; routes until stdin closes.
//!
//! Times are `CLOCK_MONOTONIC` nanoseconds ([`sink::now_ns`]), one clock for every process.
//! A role that fails prints `error WHY` and exits non-zero. Every role ends when stdin closes.

mod publish;
mod request;
pub(crate) mod sink;
mod subscribe;

use crate::systems::zenoh_peer;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::io::{BufRead as _, Write as _};

/// `mitto-bench child ROLE`.
#[derive(Debug, Parser)]
#[command(name = "mitto-bench child", about = "A process of the deployed layout")]
struct ChildCli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// One publishing connection.
    Pub(ClientArgs),
    /// One subscribing connection.
    Sub(ClientArgs),
    /// One requesting connection, measuring sequential round trips.
    Requester(ClientArgs),
    /// One connection answering requests with their payload.
    Responder(ClientArgs),
    /// A Zenoh session in router mode.
    ZenohRouter {
        /// Endpoint to listen on (`tcp/127.0.0.1:PORT`).
        #[arg(long)]
        listen: String,
    },
}

pub(crate) use crate::systems::ClientSystem;

/// What a client role is told on its command line.
#[derive(Clone, Debug, Args)]
pub(crate) struct ClientArgs {
    /// The client library.
    #[arg(long, value_enum)]
    pub(crate) system: ClientSystem,
    /// Where to connect (a broker URL or address, or a Zenoh endpoint).
    #[arg(long, default_value = "")]
    pub(crate) url: String,
    /// Zenoh peer mode: the endpoint to listen on.
    #[arg(long)]
    pub(crate) listen: Option<String>,
    /// Subject (Zenoh key expression, MQTT topic) to use.
    #[arg(long)]
    pub(crate) subject: String,
    /// nats: the client's subscription capacity in messages (async-nats' default otherwise).
    #[arg(long)]
    pub(crate) capacity: Option<usize>,
    /// mitto: latency mode on this client's runtime (a `mitto::BusyPoll` with this window).
    #[arg(long, default_value_t = 0)]
    pub(crate) busy_poll_us: u64,
    /// Requester: the payload size.
    #[arg(long, default_value_t = 32)]
    pub(crate) payload: usize,
}

impl ClientArgs {
    /// Opens the Zenoh session this role's `system` names.
    pub(crate) fn zenoh_session(&self) -> anyhow::Result<zenoh::Session> {
        let listen: Vec<String> = self.listen.iter().cloned().collect();
        let connect: Vec<String> = Some(self.url.clone())
            .filter(|u| !u.is_empty())
            .into_iter()
            .collect();
        let mode = match self.system {
            ClientSystem::ZenohClient => zenoh_peer::Mode::Client,
            ClientSystem::ZenohPeer => zenoh_peer::Mode::Peer,
            other => anyhow::bail!("{other:?} is not a Zenoh system"),
        };
        zenoh_peer::open(mode, &listen, &connect)
    }

    /// The MQTT host and port in `url`.
    pub(crate) fn mqtt_addr(&self) -> anyhow::Result<(String, u16)> {
        let (host, port) = self
            .url
            .rsplit_once(':')
            .ok_or_else(|| anyhow::anyhow!("--url {:?}: expected HOST:PORT", self.url))?;
        Ok((host.to_owned(), port.parse()?))
    }
}

/// Prints one answer line (stdout is the protocol; nothing else is printed there).
pub(crate) fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// The commands on stdin, one per line, until it closes.
pub(crate) fn commands() -> impl Iterator<Item = Vec<String>> {
    std::io::stdin()
        .lock()
        .lines()
        .map_while(Result::ok)
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
}

/// Parses word `i` of a command.
pub(crate) fn arg<T: std::str::FromStr>(words: &[String], i: usize) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    let w = words
        .get(i)
        .ok_or_else(|| anyhow::anyhow!("{words:?}: argument {i} missing"))?;
    w.parse()
        .map_err(|e| anyhow::anyhow!("{words:?}: argument {i}: {e}"))
}

/// Runs the role named by `args` (the words after `child`). Its failure is also printed as
/// `error WHY` for the parent.
pub fn main(args: Vec<OsString>) -> anyhow::Result<()> {
    let cli = ChildCli::parse_from(std::iter::once(OsString::from("child")).chain(args));
    let result = match cli.role {
        Role::Pub(a) => publish::run(&a),
        Role::Sub(a) => subscribe::run(&a),
        Role::Requester(a) => request::run_requester(&a),
        Role::Responder(a) => request::run_responder(&a),
        Role::ZenohRouter { listen } => zenoh_router(&listen),
    };
    if let Err(e) = &result {
        let _ = say(&format!("error {}", format!("{e:#}").replace('\n', " ")));
    }
    result
}

/// A router until stdin closes.
fn zenoh_router(listen: &str) -> anyhow::Result<()> {
    let session = zenoh_peer::open(zenoh_peer::Mode::Router, &[listen.to_owned()], &[])?;
    say("ready")?;
    for _ in commands() {}
    use zenoh::Wait as _;
    let _ = session.close().wait();
    Ok(())
}
