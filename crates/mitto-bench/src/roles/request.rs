//! The request/reply processes: a responder answering every request with its payload, and a
//! requester timing sequential round trips (one request at a time) into an HDR histogram.
//! mitto: `Client::respond` / `Client::request`; nats: publish to the reply subject /
//! `Client::request`; Zenoh: a queryable's callback replying / `get` on a querier.

use super::{arg, commands, say, ClientArgs, ClientSystem};
use crate::measure::{LatencyAcc, Sequential};
use crate::runtime::ServerRuntime;
use crate::systems::nats_peer;
use bytes::Bytes;
use futures::StreamExt as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a requester tries to get its first reply (the responder's subscription or
/// queryable may take a moment to reach it).
const FIRST_REPLY: Duration = Duration::from_secs(20);

/// mitto's options for this role: latency mode when asked, with its poller on `rt`.
fn mitto_options(a: &ClientArgs) -> (mitto::ClientOptions, Option<Arc<mitto::BusyPoll>>) {
    if a.busy_poll_us == 0 {
        return (mitto::ClientOptions::new(), None);
    }
    let p = mitto::BusyPoll::new(Duration::from_micros(a.busy_poll_us));
    tokio::spawn(p.clone().run());
    (mitto::ClientOptions::new().busy_poll(p.clone()), Some(p))
}

fn is_zenoh(a: &ClientArgs) -> bool {
    matches!(
        a.system,
        ClientSystem::ZenohClient | ClientSystem::ZenohPeer
    )
}

/// Runs the responder role.
pub(super) fn run_responder(a: &ClientArgs) -> anyhow::Result<()> {
    if is_zenoh(a) {
        use zenoh::Wait as _;
        let session = a.zenoh_session()?;
        let queryable = session
            .declare_queryable(a.subject.clone())
            .callback(|query| {
                let payload = query.payload().cloned().unwrap_or_default();
                let _ = query.reply(query.key_expr().clone(), payload).wait();
            })
            .wait()
            .map_err(|e| anyhow::anyhow!("declaring a zenoh queryable: {e}"))?;
        say("ready")?;
        for _ in commands() {}
        drop(queryable);
        let _ = session.close().wait();
        return Ok(());
    }
    let rt = ServerRuntime::start()?;
    let a2 = a.clone();
    rt.block_on(async move {
        match a2.system {
            ClientSystem::Mitto => {
                let (opts, poller) = mitto_options(&a2);
                let client = mitto::Client::connect(&a2.url, opts).await?;
                let mut sub = client.subscribe(&a2.subject).await?;
                tokio::spawn(async move {
                    let _poller = poller;
                    while let Some(m) = sub.next().await {
                        if client.respond(&m, m.payload().clone()).await.is_err() {
                            break;
                        }
                    }
                });
            }
            ClientSystem::Nats => {
                let client = nats_peer::connect_with(&a2.url, a2.capacity).await?;
                let mut sub = client.subscribe(a2.subject.clone()).await?;
                client.flush().await?;
                tokio::spawn(async move {
                    while let Some(m) = sub.next().await {
                        if let Some(reply) = m.reply {
                            if client.publish(reply, m.payload).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
            other => anyhow::bail!("{other:?} has no request/reply here"),
        }
        Ok(())
    })?;
    say("ready")?;
    for _ in commands() {}
    Ok(())
}

/// One requesting end.
enum Requester {
    Mitto {
        rt: ServerRuntime,
        client: mitto::Client,
        poller: Option<Arc<mitto::BusyPoll>>,
    },
    Nats {
        rt: ServerRuntime,
        client: async_nats::Client,
    },
    Zenoh {
        querier: zenoh::query::Querier<'static>,
        _session: zenoh::Session,
    },
}

/// One request through a Zenoh querier: the first reply is the answer, and its arrival ends the
/// round trip (the query's end, which follows it, is left to Zenoh: the receiver is dropped).
fn zenoh_request(
    querier: &zenoh::query::Querier<'_>,
    payload: &zenoh::bytes::ZBytes,
    want: usize,
) -> anyhow::Result<()> {
    use zenoh::Wait as _;
    let replies = querier
        .get()
        .payload(payload.clone())
        .wait()
        .map_err(|e| anyhow::anyhow!("zenoh get: {e}"))?;
    let reply = replies
        .recv()
        .map_err(|_| anyhow::anyhow!("zenoh get: no reply"))?;
    let n = match reply.result() {
        Ok(sample) => sample.payload().len(),
        Err(e) => anyhow::bail!("zenoh get: error reply {:?}", e.payload()),
    };
    anyhow::ensure!(n == want, "zenoh replied {n} of {want} bytes");
    Ok(())
}

impl Requester {
    fn connect(a: &ClientArgs) -> anyhow::Result<Requester> {
        if is_zenoh(a) {
            use zenoh::Wait as _;
            let session = a.zenoh_session()?;
            let querier = session
                .declare_querier(a.subject.clone())
                .consolidation(zenoh::query::ConsolidationMode::None)
                .wait()
                .map_err(|e| anyhow::anyhow!("declaring a zenoh querier: {e}"))?;
            return Ok(Requester::Zenoh {
                querier,
                _session: session,
            });
        }
        let rt = ServerRuntime::start()?;
        let a2 = a.clone();
        match a.system {
            ClientSystem::Mitto => {
                let (client, poller) = rt.block_on(async move {
                    let (opts, poller) = mitto_options(&a2);
                    Ok((mitto::Client::connect(&a2.url, opts).await?, poller))
                })?;
                Ok(Requester::Mitto { rt, client, poller })
            }
            ClientSystem::Nats => {
                let client = rt
                    .block_on(async move { nats_peer::connect_with(&a2.url, a2.capacity).await })?;
                Ok(Requester::Nats { rt, client })
            }
            other => anyhow::bail!("{other:?} has no request/reply here"),
        }
    }

    /// Runs up to `n` sequential requests (for at most `max`) into `acc`.
    fn measure(
        &self,
        subject: &str,
        payload: &Bytes,
        acc: LatencyAcc,
        n: u64,
        max: Duration,
    ) -> anyhow::Result<LatencyAcc> {
        let (subject, payload) = (subject.to_owned(), payload.clone());
        let want = payload.len();
        let check = move |got: usize, who: &str| {
            anyhow::ensure!(got == want, "{who} replied {got} of {want} bytes");
            Ok(())
        };
        match self {
            Requester::Mitto { rt, client, .. } => {
                let client = client.clone();
                rt.block_on(async move {
                    let mut acc = acc;
                    let mut s = Sequential::new(n, max);
                    while s.more() {
                        let t0 = Instant::now();
                        let r = client.request(&subject, payload.clone()).await?;
                        check(r.len(), "mitto")?;
                        if !s.record(&mut acc, t0) {
                            break;
                        }
                    }
                    s.finish(&mut acc);
                    Ok(acc)
                })
            }
            Requester::Nats { rt, client } => {
                let client = client.clone();
                let subject = async_nats::Subject::from(subject);
                rt.block_on(async move {
                    let mut acc = acc;
                    let mut s = Sequential::new(n, max);
                    while s.more() {
                        let t0 = Instant::now();
                        let r = client.request(subject.clone(), payload.clone()).await?;
                        check(r.payload.len(), "nats")?;
                        if !s.record(&mut acc, t0) {
                            break;
                        }
                    }
                    s.finish(&mut acc);
                    Ok(acc)
                })
            }
            Requester::Zenoh { querier, .. } => {
                let zp = zenoh::bytes::ZBytes::from(payload);
                let mut acc = acc;
                let mut s = Sequential::new(n, max);
                while s.more() {
                    let t0 = Instant::now();
                    zenoh_request(querier, &zp, want)?;
                    if !s.record(&mut acc, t0) {
                        break;
                    }
                }
                s.finish(&mut acc);
                Ok(acc)
            }
        }
    }
}

/// Runs the requester role.
pub(super) fn run_requester(a: &ClientArgs) -> anyhow::Result<()> {
    let r = Requester::connect(a)?;
    let payload = Bytes::from(vec![0x5Au8; a.payload.max(1)]);
    // The first reply proves the path; retried while the responder's interest propagates.
    let deadline = Instant::now() + FIRST_REPLY;
    loop {
        match r.measure(&a.subject, &payload, LatencyAcc::new()?, 1, FIRST_REPLY) {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context("no reply within 20 s"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    say("ready")?;
    let mut acc = LatencyAcc::new()?;
    for words in commands() {
        match words[0].as_str() {
            "run" => {
                let n: u64 = arg(&words, 1)?;
                let max = Duration::from_millis(arg(&words, 2)?);
                acc = r.measure(&a.subject, &payload, acc, n, max)?;
                say(&format!("ok {}", acc.done()))?;
            }
            "sample" => {
                let s = acc.sample()?;
                say(&format!(
                    "sample {} {} {} {}",
                    s.p50_us,
                    s.p99_us,
                    s.msgs_per_s,
                    acc.done()
                ))?;
                acc = LatencyAcc::new()?;
            }
            other => anyhow::bail!("unknown command {other:?}"),
        }
    }
    match r {
        Requester::Mitto { rt, client, poller } => {
            let _ = rt.block_on(async move {
                client.close().await;
                Ok(())
            });
            if let Some(p) = poller {
                p.stop();
            }
        }
        Requester::Nats { .. } | Requester::Zenoh { .. } => {}
    }
    Ok(())
}
