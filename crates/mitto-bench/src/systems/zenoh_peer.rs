//! Zenoh (the `zenoh` crate, 1.x), in the three modes the deployed layout runs: a router (what
//! `zenohd` is, without plugins), clients that reach each other through it, and peers that
//! connect to each other directly. Every session is configured the same way apart from its
//! mode and endpoints: multicast scouting off, gossip scouting off (the topology is exactly the
//! endpoints given), TCP on 127.0.0.1 only, Zenoh's defaults otherwise (batching on, express
//! off, the router's default timestamping on). Publishers use congestion control `Block` so
//! nothing is dropped; subscribers take each sample in a callback (Zenoh's fastest subscriber
//! path); requests are `get`s on a declared querier with consolidation off (each reply is
//! handed over as it arrives) answered by a queryable's callback.

use anyhow::Context as _;

/// A session's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Routes between clients (the `zenohd` role).
    Router,
    /// Talks only to the router it connects to.
    Client,
    /// Talks directly to the peers it connects to or that connect to it.
    Peer,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Router => "router",
            Mode::Client => "client",
            Mode::Peer => "peer",
        }
    }
}

/// The configuration of one session: `listen` and `connect` are endpoints such as
/// `tcp/127.0.0.1:7447`.
pub(crate) fn config(
    mode: Mode,
    listen: &[String],
    connect: &[String],
) -> anyhow::Result<zenoh::Config> {
    let mut c = zenoh::Config::default();
    let list = |v: &[String]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    let set = |c: &mut zenoh::Config, key: &str, value: &str| {
        c.insert_json5(key, value)
            .map_err(|e| anyhow::anyhow!("zenoh config {key} = {value}: {e}"))
    };
    set(&mut c, "mode", &format!("\"{}\"", mode.name()))?;
    set(&mut c, "scouting/multicast/enabled", "false")?;
    set(&mut c, "scouting/gossip/enabled", "false")?;
    set(&mut c, "listen/endpoints", &list(listen))?;
    set(&mut c, "connect/endpoints", &list(connect))?;
    Ok(c)
}

/// Opens a session (blocking; Zenoh runs its own runtime threads).
pub(crate) fn open(
    mode: Mode,
    listen: &[String],
    connect: &[String],
) -> anyhow::Result<zenoh::Session> {
    use zenoh::Wait as _;
    zenoh::open(config(mode, listen, connect)?)
        .wait()
        .map_err(|e| anyhow::anyhow!("opening a zenoh {} session: {e}", mode.name()))
        .context("zenoh")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_loopback_only_without_scouting() {
        let c = config(
            Mode::Peer,
            &["tcp/127.0.0.1:7447".into()],
            &["tcp/127.0.0.1:7448".into()],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let get = |k: &str| c.get_json(k).unwrap_or_else(|e| panic!("{k}: {e}"));
        assert_eq!(get("mode"), "\"peer\"");
        assert_eq!(get("scouting/multicast/enabled"), "false");
        assert_eq!(get("scouting/gossip/enabled"), "false");
        assert_eq!(get("listen/endpoints"), "[\"tcp/127.0.0.1:7447\"]");
        assert_eq!(get("connect/endpoints"), "[\"tcp/127.0.0.1:7448\"]");
        let r = config(Mode::Router, &[], &[]).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(r.get_json("listen/endpoints").ok().as_deref(), Some("[]"));
    }
}
