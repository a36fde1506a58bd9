//! The federation's traffic: announcements, local messages to NATS (the mirror), NATS messages
//! to the local broker, and requests both ways.

use super::interest::{self, first_copy, Group, Held, ANNOUNCE_SUBJECT};
use super::{FederationConfig, Shared, FED_GROUP_HEADER, FED_HEADER};
use crate::envelope::Envelope;
use crate::nats::{envelope, headers};
use crate::stats::{add, bump, State, Stats};
use crate::BridgeError;
use async_nats::client::RequestErrorKind;
use futures_util::StreamExt;
use mitto::{CallOptions, Error, Headers, Message, PublishOptions, Status};
use std::sync::Arc;
use std::time::Duration;

/// The NATS header carrying a request's time left, in milliseconds.
const DEADLINE_HEADER: &str = "mitto-deadline-ms";
/// The NATS header naming (by their NATS queue groups, space-separated) the queue groups the
/// message's own broker gave it to already: a broker NATS picks for one of those drops it.
const SERVED_HEADER: &str = "mitto-fed-served";
/// The NATS subjects of service calls: this prefix and the service's subject.
const CALL_PREFIX: &str = "_MITTO.SVC.";
/// The NATS queue group of every broker serving a subject: each call goes to one.
const CALL_GROUP: &str = "mitto";
/// A request's time left when it says nothing.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// The longest time left carried.
const MAX_DEADLINE: Duration = Duration::from_secs(300);

fn mark(env: &mut Envelope, id: &str) {
    env.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case(FED_HEADER));
    env.headers
        .push((FED_HEADER.to_owned(), id.as_bytes().to_vec()));
}

fn marked(h: &Headers) -> bool {
    h.get_custom(FED_HEADER).is_some()
}

/// A NATS client that fails over between the nodes of `cfg.url` by itself and makes its
/// subscriptions again; it does not get its own messages back (`no_echo`).
pub(super) async fn connect_nats(
    cfg: &FederationConfig,
    id: &str,
    stats: Arc<Stats>,
) -> Result<async_nats::Client, BridgeError> {
    stats.set_state(State::Connecting);
    let events = stats.clone();
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = async_nats::ConnectOptions::new()
        .name(format!("mitto-federation {id}"))
        .no_echo()
        .retry_on_initial_connect()
        // This broker's node first; the others only when it is down.
        .retain_servers_order()
        .max_reconnects(None)
        .event_callback(move |ev| {
            let (stats, lost) = (events.clone(), lost.clone());
            async move {
                use std::sync::atomic::Ordering;
                match ev {
                    async_nats::Event::Connected => {
                        if lost.swap(false, Ordering::Relaxed) {
                            bump(&stats.reconnects);
                        }
                        stats.set_state(State::Up);
                    }
                    async_nats::Event::Disconnected => {
                        lost.store(true, Ordering::Relaxed);
                        stats.set_state(State::Down);
                    }
                    other => stats.error(format!("nats: {other}")),
                }
            }
        });
    let addrs: Vec<async_nats::ServerAddr> = cfg
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| BridgeError::Backend(format!("federation: {e}")))?;
    opts.connect(addrs)
        .await
        .map_err(|e| BridgeError::Backend(format!("federation: {e}")))
}

/// Announces `held` as this broker's interest.
pub(super) async fn announce(shared: &Shared, held: &Held) {
    let payload = interest::encode(&shared.id, held);
    if let Err(e) = shared.nats.publish(ANNOUNCE_SUBJECT, payload.into()).await {
        shared.stats.error(format!("announce: {e}"));
    }
}

/// `subscribe()`, tried again (every second) until it works or the federation stops; `None`
/// when it stopped.
async fn until_subscribed<T, E: std::fmt::Display, F>(
    shared: &Shared,
    what: &str,
    mut subscribe: impl FnMut() -> F,
) -> Option<T>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    loop {
        match subscribe().await {
            Ok(s) => return Some(s),
            Err(e) => shared.stats.error(format!("subscribe {what}: {e}")),
        }
        tokio::select! {
            _ = shared.stopped() => return None,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Takes the other brokers' announcements; answers a broker seen for the first time with this
/// one's interest at once.
pub(super) async fn announcements(shared: Arc<Shared>) {
    let Some(mut sub) = until_subscribed(&shared, ANNOUNCE_SUBJECT, || {
        shared.nats.subscribe(ANNOUNCE_SUBJECT)
    })
    .await
    else {
        return;
    };
    loop {
        let m = tokio::select! {
            _ = shared.stopped() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Some((id, held)) = interest::decode(&m.payload) else {
            continue;
        };
        if id == shared.id {
            continue;
        }
        let new = shared
            .remote
            .lock()
            .map(|mut r| r.announce(id, held, std::time::Instant::now()))
            .unwrap_or(false);
        if new {
            let own = Held {
                subs: shared.local.lock().map(|l| l.clone()).unwrap_or_default(),
                groups: shared.groups.lock().map(|l| l.clone()).unwrap_or_default(),
                services: shared
                    .services
                    .lock()
                    .map(|l| l.clone())
                    .unwrap_or_default(),
            };
            announce(&shared, &own).await;
        }
    }
}

/// The mirror of one filter other brokers hold: local messages on it go to NATS once.
pub(super) async fn outbound(shared: Arc<Shared>, filter: String) {
    let Some(mut sub) =
        until_subscribed(&shared, &filter, || shared.mitto.subscribe(&filter)).await
    else {
        return;
    };
    while let Some(m) = sub.next().await {
        let first = shared
            .mirror
            .lock()
            .map(|f| first_copy(&f, &filter, m.subject()))
            .unwrap_or(true);
        if marked(m.headers()) || !first {
            bump(&shared.stats.loops_prevented);
            continue;
        }
        let mut env =
            Envelope::from_mitto(m.subject().to_owned(), m.payload().clone(), m.headers());
        mark(&mut env, &shared.id);
        note_served(&shared, &mut env);
        if m.reply_to().is_some() {
            match shared.requests.clone().try_acquire_owned() {
                Ok(permit) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        ask_remote(&shared, m, env).await;
                        drop(permit);
                    });
                }
                Err(_) => bump(&shared.stats.drops),
            }
            continue;
        }
        let len = env.payload.len();
        match shared
            .nats
            .publish_with_headers(env.name.clone(), headers(&env), env.payload)
            .await
        {
            Ok(()) => {
                bump(&shared.stats.msgs_out);
                add(&shared.stats.bytes_out, len);
            }
            Err(e) => {
                bump(&shared.stats.drops);
                shared.stats.error(format!("publish {}: {e}", env.name));
            }
        }
    }
}

/// Names on `env` the queue groups of this broker it matches: the broker gave it to one member
/// of each (a NATS queue group prefers the member nearest the publisher, and so does this).
fn note_served(shared: &Shared, env: &mut Envelope) {
    env.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case(SERVED_HEADER));
    let Ok(groups) = shared.groups.lock() else {
        return;
    };
    let mut served = Vec::new();
    for g in groups.iter() {
        if mitto::proto::subject::matches(&g.filter, &env.name) {
            if !served.is_empty() {
                served.push(b' ');
            }
            served.extend_from_slice(g.queue.as_bytes());
        }
    }
    if !served.is_empty() {
        env.headers.push((SERVED_HEADER.to_owned(), served));
    }
}

/// Whether `env`'s own broker gave it to a member of the group of NATS queue group `queue`.
fn served_at_origin(env: &Envelope, queue: &str) -> bool {
    env.origin_of(SERVED_HEADER)
        .is_some_and(|v| v.split(|b| *b == b' ').any(|q| q == queue.as_bytes()))
}

/// A local request to other brokers: the first reply goes back to the caller; none (no
/// broker took it, or its time ran out) leaves the caller's deadline to answer.
async fn ask_remote(shared: &Shared, req: Message, mut env: Envelope) {
    let left = req
        .headers()
        .deadline()
        .unwrap_or(DEFAULT_DEADLINE)
        .min(MAX_DEADLINE);
    env.headers.push((
        DEADLINE_HEADER.to_owned(),
        left.as_millis().to_string().into_bytes(),
    ));
    let r = shared
        .nats
        .send_request(
            env.name.clone(),
            async_nats::Request::new()
                .payload(env.payload.clone())
                .headers(headers(&env))
                .timeout(Some(left)),
        )
        .await;
    let reply = match r {
        Ok(reply) => reply,
        Err(e) => {
            tracing::debug!(subject = %env.name, error = %e, "no reply from the fabric");
            return;
        }
    };
    bump(&shared.stats.msgs_out);
    let back = envelope(&reply);
    let Some(to) = req.reply_to() else { return };
    let h = back.mitto_headers_without_origin();
    if let Err(e) = shared
        .mitto
        .publish_with(to, back.payload, PublishOptions::new().headers(h))
        .await
    {
        shared.stats.error(format!("reply to {to}: {e}"));
    }
}

/// This broker's interest in one filter, in NATS: messages on it come to the local broker
/// once, for its subscriptions outside queue groups. With `group`, this broker's membership of
/// the group's NATS queue group: a message NATS gives this broker for the group goes to one of
/// its members here, unless the message's own broker gave it to a member already.
pub(super) async fn inbound(shared: Arc<Shared>, filter: String, group: Option<Group>) {
    let Some(mut sub) = until_subscribed(&shared, &filter, || async {
        match &group {
            Some(g) => {
                let q = g.queue.clone();
                shared.nats.queue_subscribe(filter.clone(), q).await
            }
            None => shared.nats.subscribe(filter.clone()).await,
        }
    })
    .await
    else {
        return;
    };
    while let Some(m) = sub.next().await {
        let first = group.is_some()
            || shared
                .local
                .lock()
                .map(|f| first_copy(&f, &filter, &m.subject))
                .unwrap_or(true);
        if !first {
            bump(&shared.stats.loops_prevented);
            continue;
        }
        let mut env = envelope(&m);
        if env.origin_of(FED_HEADER) == Some(shared.id.as_bytes())
            || group
                .as_ref()
                .is_some_and(|g| served_at_origin(&env, &g.queue))
        {
            bump(&shared.stats.loops_prevented);
            continue;
        }
        env.headers.retain(|(k, _)| {
            !k.eq_ignore_ascii_case(SERVED_HEADER) && !k.eq_ignore_ascii_case(FED_GROUP_HEADER)
        });
        if let Some(g) = &group {
            let to = format!("{} {}", g.filter, g.name);
            env.headers
                .push((FED_GROUP_HEADER.to_owned(), to.into_bytes()));
        }
        match m.reply.clone() {
            Some(reply) => match shared.requests.clone().try_acquire_owned() {
                Ok(permit) => {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        ask_local(&shared, env, reply.to_string()).await;
                        drop(permit);
                    });
                }
                Err(_) => bump(&shared.stats.drops),
            },
            None => deliver(&shared, env).await,
        }
    }
}

/// A message from another broker, published here with its mark.
async fn deliver(shared: &Shared, mut env: Envelope) {
    if env.origin_of(FED_HEADER).is_none() {
        // Not from a federated broker (another NATS client): marked as from the fabric.
        mark(&mut env, "nats");
    }
    let len = env.payload.len();
    let h = env.mitto_headers_without_origin();
    match shared
        .mitto
        .publish_with(&env.name, env.payload, PublishOptions::new().headers(h))
        .await
    {
        Ok(()) => {
            bump(&shared.stats.msgs_in);
            add(&shared.stats.bytes_in, len);
        }
        Err(e) => {
            bump(&shared.stats.drops);
            shared
                .stats
                .error(format!("mitto refused {}: {e}", env.name));
        }
    }
}

/// Another broker's request, asked of this broker's clients; the reply (if any) goes back.
async fn ask_local(shared: &Shared, mut env: Envelope, reply: String) {
    let left = time_left(&mut env);
    if env.origin_of(FED_HEADER).is_none() {
        mark(&mut env, "nats");
    }
    let opts = CallOptions::new()
        .timeout(left)
        .headers(env.mitto_headers_without_origin());
    match shared
        .mitto
        .request_with(&env.name, env.payload, opts)
        .await
    {
        Ok(r) => {
            bump(&shared.stats.msgs_in);
            let back = Envelope::from_mitto(env.name, r.payload, &r.headers);
            if let Err(e) = shared
                .nats
                .publish_with_headers(reply, headers(&back), back.payload)
                .await
            {
                shared.stats.error(format!("reply: {e}"));
            }
        }
        // Nobody here after all (the interest changed meanwhile): another broker may answer.
        Err(e) if e.status() == Status::NO_RESPONDERS => {}
        Err(e) => tracing::debug!(subject = %env.name, error = %e, "request not answered here"),
    }
}

/// The time left that a NATS request from another broker carries (removed from `env`).
fn time_left(env: &mut Envelope) -> Duration {
    let left = env
        .origin_of(DEADLINE_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        .map_or(DEFAULT_DEADLINE, Duration::from_millis)
        .min(MAX_DEADLINE);
    env.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case(DEADLINE_HEADER));
    left
}

/// This broker's service on `filter`, offered in NATS to the other brokers' proxies: each
/// call goes to one broker serving it (a NATS queue group), which calls it here.
pub(super) async fn serve_calls(shared: Arc<Shared>, filter: String) {
    let subject = format!("{CALL_PREFIX}{filter}");
    let Some(mut sub) = until_subscribed(&shared, &subject, || {
        shared
            .nats
            .queue_subscribe(subject.clone(), CALL_GROUP.into())
    })
    .await
    else {
        return;
    };
    while let Some(m) = sub.next().await {
        let Some(reply) = m.reply.clone() else {
            continue;
        };
        let Ok(permit) = shared.requests.clone().try_acquire_owned() else {
            bump(&shared.stats.drops);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            call_here(&shared, m, reply.to_string()).await;
            drop(permit);
        });
    }
}

/// Another broker's call of a service of this broker; the answer (or the failure's status)
/// goes back.
async fn call_here(shared: &Shared, m: async_nats::Message, reply: String) {
    let mut env = envelope(&m);
    let Some(subject) = env.name.strip_prefix(CALL_PREFIX).map(str::to_owned) else {
        return;
    };
    let left = time_left(&mut env);
    let opts = CallOptions::new()
        .timeout(left)
        .headers(env.mitto_headers_without_origin());
    let back = match shared.mitto.request_with(&subject, env.payload, opts).await {
        Ok(r) => {
            bump(&shared.stats.msgs_in);
            Envelope::from_mitto(subject, r.payload, &r.headers)
        }
        Err(e) => crate::worker::failure(&e),
    };
    if let Err(e) = shared
        .nats
        .publish_with_headers(reply, headers(&back), back.payload)
        .await
    {
        shared.stats.error(format!("reply: {e}"));
    }
}

/// A service here that forwards each call on `subject` to a broker that serves it.
pub(super) async fn proxy(
    shared: Arc<Shared>,
    subject: &str,
) -> Result<mitto::RunningServer, Error> {
    let s = shared.clone();
    mitto::Server::new()
        .route(subject, move |req: mitto::Request| {
            let shared = s.clone();
            async move { call_remote(&shared, req).await }
        })
        .attach(&shared.mitto_url, shared.client.clone())
        .await
}

/// A call carried to the broker serving it, with the caller's time left.
async fn call_remote(shared: &Shared, req: mitto::Request) -> mitto::Result<mitto::Response> {
    let left = req
        .deadline()
        .map_or(DEFAULT_DEADLINE, |d| {
            d.saturating_duration_since(tokio::time::Instant::now())
        })
        .min(MAX_DEADLINE);
    let mut env = Envelope::from_mitto(
        req.method().to_owned(),
        req.payload().clone(),
        req.headers(),
    );
    mark(&mut env, &shared.id);
    env.headers.push((
        DEADLINE_HEADER.to_owned(),
        left.as_millis().to_string().into_bytes(),
    ));
    let r = shared
        .nats
        .send_request(
            format!("{CALL_PREFIX}{}", env.name),
            async_nats::Request::new()
                .payload(env.payload.clone())
                .headers(headers(&env))
                .timeout(Some(left)),
        )
        .await;
    match r {
        Ok(reply) => {
            bump(&shared.stats.msgs_out);
            crate::worker::forward::reply_of(envelope(&reply))
        }
        Err(e) => Err(match e.kind() {
            RequestErrorKind::NoResponders => Error::new(
                Status::NO_RESPONDERS,
                format!("no broker serves {} now", env.name),
            ),
            RequestErrorKind::TimedOut => Error::new(
                Status::TIMEOUT,
                format!("{} was not answered in time", env.name),
            ),
            _ => Error::new(Status::UNAVAILABLE, e.to_string()),
        }),
    }
}
