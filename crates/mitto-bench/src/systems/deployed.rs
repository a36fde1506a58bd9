//! The systems of the deployed layout and how each is started: its broker as a process of its
//! own (`mitto server`, a nats-server of the suite's own, a Zenoh router; the mosquitto already
//! running; none for Zenoh peer-to-peer) and the command line of its client processes.

use crate::report::{MITTO, MITTO_BUSY_POLL};
use crate::systems::procs::{self, Exes, Proc};
use crate::systems::{mqtt_peer, procfs};
use clap::ValueEnum;
use std::time::Duration;

/// Which client library, and how it reaches the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ClientSystem {
    /// `mitto::Client` to a mitto broker (`--url tcp://...`).
    Mitto,
    /// `async-nats` to a nats-server (`--url 127.0.0.1:PORT`).
    Nats,
    /// `rumqttc`, MQTT 3.1.1 QoS 0, to mosquitto (`--url 127.0.0.1:PORT`).
    Mqtt,
    /// A Zenoh session in client mode connected to a router (`--url tcp/127.0.0.1:PORT`).
    ZenohClient,
    /// A Zenoh session in peer mode (`--listen` and/or `--url`).
    ZenohPeer,
}

/// The latency mode's window in `mitto-busy-poll` rows, microseconds.
const BUSY_POLL_US: u64 = crate::report::BUSY_POLL.as_micros() as u64;
/// The async-nats subscription capacity of `nats-4mi` rows: large enough that its client
/// never drops (async-nats drops what does not fit, without telling the application).
pub(crate) const NATS_LOSSLESS_CAPACITY: usize = 4 * 1024 * 1024;

/// A system as the deployed layout runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deployed {
    /// `mitto server` with its defaults.
    Mitto,
    /// `mitto server --slow-consumer block`: a full subscription holds the publisher.
    MittoBlock,
    /// `mitto server --busy-poll-us 200`, its clients in latency mode too.
    MittoBusyPoll,
    /// nats-server with its defaults, async-nats with its defaults.
    Nats,
    /// nats-server with its defaults, async-nats with a 4 Mi subscription capacity.
    Nats4Mi,
    /// A Zenoh router, its clients in client mode.
    ZenohRouter,
    /// Zenoh sessions in peer mode, connected directly.
    ZenohPeer,
    /// The mosquitto already running at 127.0.0.1:1883, rumqttc clients.
    Mosquitto,
}

impl Deployed {
    /// The rows' system name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Deployed::Mitto => MITTO,
            Deployed::MittoBlock => "mitto-block",
            Deployed::MittoBusyPoll => MITTO_BUSY_POLL,
            Deployed::Nats => "nats",
            Deployed::Nats4Mi => "nats-4mi",
            Deployed::ZenohRouter => "zenoh-router",
            Deployed::ZenohPeer => "zenoh-peer",
            Deployed::Mosquitto => "mosquitto",
        }
    }

    /// Whether it is mitto (whose failure fails the scenario; a peer's only leaves it out).
    pub(crate) fn is_mitto(self) -> bool {
        matches!(
            self,
            Deployed::Mitto | Deployed::MittoBlock | Deployed::MittoBusyPoll
        )
    }

    /// How it is configured, for the notes.
    pub(crate) fn describe(self) -> String {
        match self {
            Deployed::Mitto => "mitto: `mitto server` (its defaults: slow-consumer drop-oldest, \
                                spin-then-park 100 µs) on a free port without monitoring, \
                                `mitto::Client` defaults"
                .into(),
            Deployed::MittoBlock => "mitto-block: `mitto server --slow-consumer block`, \
                                     otherwise as mitto"
                .into(),
            Deployed::MittoBusyPoll => format!(
                "{MITTO_BUSY_POLL}: `mitto server --busy-poll-us {BUSY_POLL_US}` (latency mode: \
                 one thread polling its sockets {BUSY_POLL_US} µs after each read), its clients \
                 with `ClientOptions::busy_poll` of the same window"
            ),
            Deployed::Nats => "nats: a nats-server of the suite's own (defaults, no JetStream), \
                               async-nats 0.51 with its defaults (64 Ki messages of \
                               subscription capacity)"
                .into(),
            Deployed::Nats4Mi => format!(
                "nats-4mi: the same nats-server, async-nats with a subscription capacity of \
                 {NATS_LOSSLESS_CAPACITY} messages"
            ),
            Deployed::ZenohRouter => "zenoh-router: a Zenoh 1.x session in router mode \
                                      (`mitto-bench child zenoh-router`), clients in client mode \
                                      connected to it"
                .into(),
            Deployed::ZenohPeer => "zenoh-peer: Zenoh sessions in peer mode, the publisher \
                                    (responder) listening, the others connected to it directly"
                .into(),
            Deployed::Mosquitto => {
                "mosquitto: the mosquitto at 127.0.0.1:1883, rumqttc 0.25, QoS 0".into()
            }
        }
    }
}

/// A running system: its broker (if any) and what its clients are told.
pub(crate) struct Backend {
    broker: Option<Proc>,
    /// A broker that is not the suite's own (mosquitto), if its process could be found.
    external_pid: Option<u32>,
    external: bool,
    client: ClientSystem,
    /// Where clients connect (for Zenoh peers: where the listening end listens).
    url: String,
    capacity: Option<usize>,
    busy_poll_us: u64,
}

impl Backend {
    /// Starts the system's broker.
    pub(crate) fn start(kind: Deployed, exes: &Exes) -> anyhow::Result<Backend> {
        let mut b = Backend {
            broker: None,
            external_pid: None,
            external: false,
            client: ClientSystem::Mitto,
            url: String::new(),
            capacity: None,
            busy_poll_us: 0,
        };
        match kind {
            Deployed::Mitto | Deployed::MittoBlock | Deployed::MittoBusyPoll => {
                let busy = format!("{BUSY_POLL_US}");
                let extra: &[&str] = match kind {
                    Deployed::MittoBlock => &["--slow-consumer", "block"],
                    Deployed::MittoBusyPoll => &["--busy-poll-us", &busy],
                    _ => &[],
                };
                anyhow::ensure!(
                    exes.mitto.is_file(),
                    "{} not found (build it: cargo build --release -p mitto-cli)",
                    exes.mitto.display()
                );
                let (p, url) = procs::mitto_server(&exes.mitto, extra)?;
                b.broker = Some(p);
                b.url = url;
                if kind == Deployed::MittoBusyPoll {
                    b.busy_poll_us = BUSY_POLL_US;
                }
            }
            Deployed::Nats | Deployed::Nats4Mi => {
                let exe = exes
                    .nats
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("nats-server is not installed"))?;
                let (p, addr) = procs::nats_server(exe)?;
                b.broker = Some(p);
                b.url = addr;
                b.client = ClientSystem::Nats;
                if kind == Deployed::Nats4Mi {
                    b.capacity = Some(NATS_LOSSLESS_CAPACITY);
                }
            }
            Deployed::ZenohRouter => {
                let (p, endpoint) = procs::zenoh_router(&exes.bench)?;
                b.broker = Some(p);
                b.url = endpoint;
                b.client = ClientSystem::ZenohClient;
            }
            Deployed::ZenohPeer => {
                b.url = format!("tcp/127.0.0.1:{}", procs::free_port()?);
                b.client = ClientSystem::ZenohPeer;
            }
            Deployed::Mosquitto => {
                std::net::TcpStream::connect_timeout(
                    &mqtt_peer::ADDR.parse()?,
                    Duration::from_secs(1),
                )
                .map_err(|e| anyhow::anyhow!("{} unreachable: {e}", mqtt_peer::ADDR))?;
                b.external = true;
                b.external_pid = procfs::pid_listening_on(mqtt_peer::PORT, "mosquitto");
                b.url = mqtt_peer::ADDR.into();
                b.client = ClientSystem::Mqtt;
            }
        }
        Ok(b)
    }

    /// The arguments of a client role on `subject`; `listener`: this end is the one the others
    /// connect to (Zenoh peers only: the publisher, or the responder).
    pub(crate) fn client_args(&self, subject: &str, listener: bool) -> Vec<String> {
        let system = match self.client {
            ClientSystem::Mitto => "mitto",
            ClientSystem::Nats => "nats",
            ClientSystem::Mqtt => "mqtt",
            ClientSystem::ZenohClient => "zenoh-client",
            ClientSystem::ZenohPeer => "zenoh-peer",
        };
        let mut a = vec![
            "--system".into(),
            system.into(),
            "--subject".into(),
            subject.into(),
        ];
        if self.client == ClientSystem::ZenohPeer && listener {
            a.extend(["--listen".into(), self.url.clone()]);
        } else {
            a.extend(["--url".into(), self.url.clone()]);
        }
        if let Some(n) = self.capacity {
            a.extend(["--capacity".into(), n.to_string()]);
        }
        if self.busy_poll_us > 0 {
            a.extend(["--busy-poll-us".into(), self.busy_poll_us.to_string()]);
        }
        a
    }

    /// CPU time of the broker so far: None if there is none (Zenoh peers); an error where it
    /// cannot be read (a broker that is not the suite's own and whose process is not visible).
    pub(crate) fn broker_cpu(&self) -> Option<anyhow::Result<Duration>> {
        if let Some(p) = &self.broker {
            return Some(p.cpu());
        }
        if self.external {
            return Some(match self.external_pid {
                Some(pid) => procfs::cpu_time(pid),
                None => Err(anyhow::anyhow!("the broker's process is not visible")),
            });
        }
        None
    }
}

/// CPU time of a system's processes together: its broker and `clients`; None if one of them
/// cannot be read.
pub(crate) fn group_cpu(backend: &Backend, clients: &[&Proc]) -> Option<Duration> {
    let mut total = match backend.broker_cpu() {
        Some(Ok(t)) => t,
        Some(Err(_)) => return None,
        None => Duration::ZERO,
    };
    for p in clients {
        total += p.cpu().ok()?;
    }
    Some(total)
}

/// The binaries the deployed layout runs: `bench` (else the running executable), `mitto`
/// (else `mitto` beside `bench`), nats-server where installed.
pub(crate) fn exes(
    bench: Option<&std::path::Path>,
    mitto: Option<&std::path::Path>,
) -> anyhow::Result<Exes> {
    let bench = match bench {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?,
    };
    let mitto = match mitto {
        Some(p) => p.to_path_buf(),
        None => bench.with_file_name(format!("mitto{}", std::env::consts::EXE_SUFFIX)),
    };
    Ok(Exes {
        bench,
        mitto,
        nats: crate::systems::nats_peer::find_binary(),
    })
}
