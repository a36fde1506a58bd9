//! Brokers federated over a NATS cluster: each broker's federation is a client of its broker
//! and of one NATS node; together the brokers act as one fabric.
//!
//! - **Interest.** Each broker announces the filters its clients subscribe to (excluding the
//!   federation's own) on `interest::ANNOUNCE_SUBJECT`, and subscribes in NATS to exactly
//!   those. It subscribes locally (the *mirror*) to the filters the other brokers announced.
//! - **Out.** A local message the mirror receives goes to NATS once, marked with
//!   [`FED_HEADER`] naming this broker; NATS carries it only where a broker subscribed.
//! - **In.** A message from NATS is published to the local broker once (whatever number of
//!   this broker's filters match it), keeping the mark, so the mirror does not send it on; the
//!   broker gives a marked message to its subscriptions outside queue groups only.
//! - **Queue groups.** A broker with members of a queue group joins a NATS queue group for it;
//!   the copy NATS gives it goes to one of those members only ([`FED_GROUP_HEADER`]), unless
//!   the publisher's broker, which serves its own members first, named the group as served.
//! - **Requests.** A local request the mirror receives becomes a NATS request with the time
//!   left; the broker that takes it asks its own clients and sends the first reply back. A
//!   request no broker is interested in is answered NO_RESPONDERS by the local broker at once.
//! - **Services.** Each broker announces its services' subjects (or filters) too and serves
//!   them in one NATS queue group; a broker without an instance of another broker's service
//!   registers a proxy that carries each call to one broker serving it (so each call runs
//!   once). Its broker gives the proxy only calls none of its own instances takes, and none
//!   from the fabric.

mod interest;
mod route;

use crate::stats::{State, Stats};
use crate::BridgeError;
use interest::{Group, Held, Remote};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The header that marks a message carried by the federation: the id of the broker it came
/// from. A marked message is never carried again, and its broker delivers it to plain
/// subscriptions only (queue groups get theirs through [`FED_GROUP_HEADER`]).
pub const FED_HEADER: &str = "mitto-fed";

/// On a message the federation publishes to its broker: `<filter> <name>`, the one queue group
/// (of this broker) it goes to, to one member; the broker removes the header.
pub const FED_GROUP_HEADER: &str = "mitto-fed-group";

/// How the names of the federation's connections to its broker begin: the broker hears
/// [`FED_HEADER`] and [`FED_GROUP_HEADER`] only from its in-process connections so named.
pub const CLIENT_PREFIX: &str = "mitto-federation/";

/// The federation of a broker (`[federation]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// The NATS node(s), comma-separated: this broker's node first, others to fail over to.
    pub url: String,
    /// This broker's name in the fabric (in monitoring; a random part is added).
    #[serde(default = "default_name")]
    pub name: String,
    /// How often the broker's interest is read and, when it changed, announced.
    #[serde(default = "default_interest_ms")]
    pub interest_ms: u64,
    /// How often it is announced anyway; a broker not heard from for three of these is
    /// forgotten.
    #[serde(default = "default_announce_ms")]
    pub announce_ms: u64,
    /// Requests carried to other brokers at once, at most; more are not carried (counted in
    /// `drops`; the caller's deadline passes).
    #[serde(default = "default_max_requests")]
    pub max_requests: usize,
    /// The federation's token at the broker, when the broker asks for one.
    #[serde(default)]
    pub mitto_token: Option<String>,
    /// The federation's user at the broker, when the broker has users.
    #[serde(default)]
    pub mitto_user: Option<String>,
    /// That user's password.
    #[serde(default)]
    pub mitto_password: Option<String>,
}

fn default_name() -> String {
    "broker".into()
}
fn default_interest_ms() -> u64 {
    50
}
fn default_announce_ms() -> u64 {
    1_000
}
fn default_max_requests() -> usize {
    1_024
}

impl FederationConfig {
    /// A federation over the NATS node(s) at `url`, defaults for the rest.
    pub fn new(url: &str) -> FederationConfig {
        FederationConfig {
            url: url.into(),
            name: default_name(),
            interest_ms: default_interest_ms(),
            announce_ms: default_announce_ms(),
            max_requests: default_max_requests(),
            mitto_token: None,
            mitto_user: None,
            mitto_password: None,
        }
    }

    /// Checks that it can work.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        let bad = |reason: String| crate::ConfigError {
            name: "federation".into(),
            reason,
        };
        for u in self.url.split(',') {
            if !u.trim().starts_with("nats://") {
                return Err(bad(format!("{u:?} is not a nats:// URL")));
            }
        }
        if self.interest_ms == 0 || self.announce_ms == 0 || self.max_requests == 0 {
            return Err(bad(
                "interest_ms, announce_ms and max_requests must be over 0".into(),
            ));
        }
        Ok(())
    }
}

/// What a broker's clients hold.
#[derive(Clone, Debug, Default)]
pub struct Interest {
    /// The filters of their subscriptions outside queue groups.
    pub subscriptions: Vec<String>,
    /// The queue groups of their other subscriptions: filter and group name.
    pub groups: Vec<(String, String)>,
    /// The subjects (filters) of the services registered with it.
    pub services: Vec<String>,
}

/// What the broker's clients hold now, given the name of the federation's own connections
/// (left out).
pub type LocalInterest = Arc<dyn Fn(&str) -> Interest + Send + Sync>;

/// What the federation's tasks share.
pub(crate) struct Shared {
    pub(crate) cfg: FederationConfig,
    /// This broker's id in the fabric.
    pub(crate) id: String,
    pub(crate) stats: Arc<Stats>,
    pub(crate) mitto: mitto::Client,
    /// The broker's URL and the options of the federation's connections to it.
    pub(crate) mitto_url: String,
    pub(crate) client: mitto::ClientOptions,
    pub(crate) nats: async_nats::Client,
    /// The filters subscribed in NATS (this broker's interest outside queue groups).
    pub(crate) local: Mutex<BTreeSet<String>>,
    /// This broker's queue groups, each a NATS queue subscription.
    pub(crate) groups: Mutex<BTreeSet<Group>>,
    /// This broker's services, as last announced.
    pub(crate) services: Mutex<BTreeSet<String>>,
    /// The filters of the mirror (the other brokers' interest).
    pub(crate) mirror: Mutex<BTreeSet<String>>,
    pub(crate) remote: Mutex<Remote>,
    pub(crate) requests: Arc<tokio::sync::Semaphore>,
    pub(crate) stop: watch::Receiver<bool>,
}

impl Shared {
    pub(crate) async fn stopped(&self) {
        let mut stop = self.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
    }
}

/// A running federation.
pub struct Federation {
    name: String,
    url: String,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl Federation {
    /// Connects to the broker at `mitto_url` and to NATS (in the background: a NATS that is
    /// down is retried), and starts following `interest`.
    pub async fn start(
        cfg: FederationConfig,
        mitto_url: &str,
        interest: LocalInterest,
    ) -> Result<Federation, BridgeError> {
        cfg.validate()?;
        let id = format!("{}.{:016x}", cfg.name, rand::random::<u64>());
        let client_name = format!("{CLIENT_PREFIX}{id}");
        let o = crate::with_credentials(
            mitto::ClientOptions::new()
                .name(client_name.clone())
                .reconnect(true),
            cfg.mitto_token.as_deref(),
            cfg.mitto_user.as_deref(),
            cfg.mitto_password.as_deref(),
        );
        let mitto = mitto::Client::connect(mitto_url, o.clone())
            .await
            .map_err(|source| BridgeError::Mitto {
                name: "federation".into(),
                source,
            })?;
        let stats = Arc::new(Stats::default());
        let nats = route::connect_nats(&cfg, &id, stats.clone()).await?;
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            requests: Arc::new(tokio::sync::Semaphore::new(cfg.max_requests)),
            cfg: cfg.clone(),
            id,
            stats,
            mitto,
            mitto_url: mitto_url.to_owned(),
            client: o,
            nats,
            local: Mutex::new(BTreeSet::new()),
            groups: Mutex::new(BTreeSet::new()),
            services: Mutex::new(BTreeSet::new()),
            mirror: Mutex::new(BTreeSet::new()),
            remote: Mutex::new(Remote::default()),
            stop: stop_rx,
        });
        let tasks = vec![
            tokio::spawn(route::announcements(shared.clone())),
            tokio::spawn(follow(shared.clone(), interest, client_name)),
        ];
        Ok(Federation {
            name: cfg.name,
            url: cfg.url,
            shared,
            stop,
            tasks: Mutex::new(tasks),
        })
    }

    /// Its state and counters now (`msgs_out`: to NATS; `msgs_in`: from NATS to the broker;
    /// `loops_prevented`: copies not carried again, and copies for a queue group the
    /// publisher's broker served).
    pub fn snapshot(&self) -> crate::Snapshot {
        self.shared
            .stats
            .snapshot(&self.name, "federation", &self.url)
    }

    /// This broker's id in the fabric.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// How many other brokers it knows.
    pub fn peers(&self) -> usize {
        self.shared.remote.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Leaves the fabric: disconnects from NATS and the broker.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
        // Bounded: a NATS that is away would hold the drain up.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.shared.nats.drain()).await;
        self.shared.mitto.close().await;
        self.shared.stats.set_state(State::Stopped);
    }
}

/// A subscription task per filter (or queue group), kept in step with a set of them.
struct Subs<K>(HashMap<K, JoinHandle<()>>);

impl<K> Default for Subs<K> {
    fn default() -> Self {
        Subs(HashMap::new())
    }
}

impl<K: Clone + Eq + Ord + std::hash::Hash> Subs<K> {
    /// Starts `start(key)` for each new key of `want` and stops the ones not in it.
    fn sync(&mut self, want: &BTreeSet<K>, mut start: impl FnMut(&K) -> JoinHandle<()>) {
        self.0.retain(|f, t| {
            let keep = want.contains(f);
            if !keep {
                t.abort();
            }
            keep
        });
        for f in want {
            if !self.0.contains_key(f) {
                let t = start(f);
                self.0.insert(f.clone(), t);
            }
        }
    }
}

impl<K> Drop for Subs<K> {
    fn drop(&mut self) {
        for t in self.0.values() {
            t.abort();
        }
    }
}

/// The proxies of other brokers' services, one per subject: services of this broker that
/// forward each call to the broker that serves it.
#[derive(Default)]
struct Proxies(HashMap<String, mitto::RunningServer>);

impl Proxies {
    /// Serves here each subject (or filter) of `remote` this broker has no service on; stops
    /// the others. The broker gives a proxy only the calls no instance of its own takes, and
    /// no call from the fabric.
    async fn sync(&mut self, shared: &Arc<Shared>, remote: &BTreeSet<String>) {
        let local = shared
            .services
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        let want: BTreeSet<&String> = remote.iter().filter(|s| !local.contains(*s)).collect();
        let gone: Vec<String> = self
            .0
            .keys()
            .filter(|s| !want.contains(s))
            .cloned()
            .collect();
        for s in gone {
            if let Some(p) = self.0.remove(&s) {
                tokio::spawn(async move { p.shutdown().await });
            }
        }
        for s in want {
            if self.0.contains_key(s) {
                continue;
            }
            match route::proxy(shared.clone(), s).await {
                Ok(p) => {
                    self.0.insert(s.clone(), p);
                }
                Err(e) => shared.stats.error(format!("proxy {s}: {e}")),
            }
        }
    }

    async fn stop(&mut self) {
        for (_, p) in self.0.drain() {
            p.shutdown().await;
        }
    }
}

/// Reads the broker's interest every `interest_ms`: announces it when it changed (and every
/// `announce_ms` anyway), keeps the NATS subscriptions, the mirror and the service proxies in
/// step with the interest of each side, and forgets brokers gone silent.
async fn follow(shared: Arc<Shared>, interest: LocalInterest, own: String) {
    let mut tick = tokio::time::interval(Duration::from_millis(shared.cfg.interest_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat = Duration::from_millis(shared.cfg.announce_ms);
    let mut last_announce = tokio::time::Instant::now() - heartbeat;
    let (mut nats_subs, mut call_subs) = (Subs::default(), Subs::default());
    let mut group_subs = Subs::default();
    let (mut mirror_subs, mut proxies) = (Subs::default(), Proxies::default());
    let (mut last_remote, mut mirror) = (Held::default(), BTreeSet::new());
    loop {
        tokio::select! {
            _ = shared.stopped() => break,
            _ = tick.tick() => {}
        }
        let i = interest(&own);
        let ours = |f: &String| !f.starts_with("_MITTO.");
        let own_only =
            |v: Vec<String>| -> BTreeSet<String> { v.into_iter().filter(ours).collect() };
        let now = Held {
            subs: own_only(i.subscriptions),
            groups: i
                .groups
                .iter()
                .filter(|(f, _)| ours(f))
                .map(|(f, name)| Group::new(f, name))
                .collect(),
            services: own_only(i.services),
        };
        let before = Held {
            subs: shared.local.lock().map(|l| l.clone()).unwrap_or_default(),
            groups: shared.groups.lock().map(|l| l.clone()).unwrap_or_default(),
            services: shared
                .services
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default(),
        };
        let changed = now != before;
        if changed {
            if let (Ok(mut l), Ok(mut g), Ok(mut s)) = (
                shared.local.lock(),
                shared.groups.lock(),
                shared.services.lock(),
            ) {
                l.clone_from(&now.subs);
                g.clone_from(&now.groups);
                s.clone_from(&now.services);
            }
            nats_subs.sync(&now.subs, |f| {
                tokio::spawn(route::inbound(shared.clone(), f.to_owned(), None))
            });
            group_subs.sync(&now.groups, |g| {
                tokio::spawn(route::inbound(
                    shared.clone(),
                    g.filter.clone(),
                    Some(g.clone()),
                ))
            });
            call_subs.sync(&now.services, |f| {
                tokio::spawn(route::serve_calls(shared.clone(), f.to_owned()))
            });
        }
        let Ok(remote) = shared.remote.lock().map(|mut r| {
            r.expire(std::time::Instant::now(), heartbeat * 3);
            r.union()
        }) else {
            continue;
        };
        if changed || last_announce.elapsed() >= heartbeat {
            route::announce(&shared, &now).await;
            last_announce = tokio::time::Instant::now();
        }
        // The mirror takes what any other broker subscribes to, in a queue group or not.
        let want: BTreeSet<String> = (remote.subs.iter().cloned())
            .chain(remote.groups.iter().map(|g| g.filter.clone()))
            .collect();
        if want != mirror {
            if let Ok(mut m) = shared.mirror.lock() {
                m.clone_from(&want);
            }
            mirror_subs.sync(&want, |f| {
                tokio::spawn(route::outbound(shared.clone(), f.to_owned()))
            });
            mirror = want;
        }
        if changed || remote.services != last_remote.services {
            proxies.sync(&shared, &remote.services).await;
        }
        last_remote = remote;
    }
    proxies.stop().await;
}
