//! Three mitto brokers federated over a three-node NATS cluster of the test's own: messages
//! cross brokers once, without echo; a queue group spread over brokers gets each message once;
//! requests are answered across brokers and NO_RESPONDERS comes at once where no broker
//! listens; a NATS node killed mid-traffic, traffic resumes through the survivors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use mitto::{Client, Status, Subscription};
use mitto_bridge::FederationConfig;
use mitto_broker::{Broker, BrokerConfig};
use std::time::Duration;
use support::nats_server::{self, NatsServer};
use support::*;

/// Broker `i` federated through node `i` first, the other nodes to fail over to.
async fn federated(nodes: &[NatsServer], i: usize) -> (Broker, Client) {
    let mut urls = vec![nodes[i].url()];
    urls.extend(
        nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.url()),
    );
    let mut fed = FederationConfig::new(&urls.join(","));
    fed.name = format!("b{i}");
    fed.interest_ms = 20;
    fed.announce_ms = 200;
    let cfg = BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: String::new(),
        federation: Some(fed),
        ..BrokerConfig::default()
    };
    let b = Broker::start(cfg).await.unwrap();
    let c = Client::connect(&b.urls()[0], client_opts()).await.unwrap();
    (b, c)
}

/// The payloads `sub` gets until it has been quiet for `quiet`.
async fn drain(sub: &mut Subscription, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, sub.next()).await {
        out.push(String::from_utf8_lossy(m.payload()).into_owned());
    }
    out
}

/// Publishes "warm" on `subject` from `c` until each of `subs` got one (interest has
/// propagated), then empties them.
async fn warm_up(c: &Client, subject: &str, subs: &mut [&mut Subscription]) {
    let mut seen = vec![false; subs.len()];
    for _ in 0..400 {
        c.publish(subject, "warm").await.unwrap();
        for (i, s) in subs.iter_mut().enumerate() {
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(5), s.next()).await {
                seen[i] = true;
            }
        }
        if seen.iter().all(|s| *s) {
            for s in subs.iter_mut() {
                drain(s, Duration::from_millis(300)).await;
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("interest did not propagate: {seen:?}");
}

fn count(v: &[String], prefix: &str) -> usize {
    v.iter().filter(|p| p.starts_with(prefix)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_brokers_over_three_nats_nodes() {
    if !nats_server::available() {
        return;
    }
    let p = unique("fed");
    let mut nodes = NatsServer::cluster(3, &p);
    let (b0, c0) = federated(&nodes, 0).await;
    let (b1, c1) = federated(&nodes, 1).await;
    let (b2, c2) = federated(&nodes, 2).await;

    // Pub/sub: overlapping filters on one broker, a local subscriber beside remote ones.
    let mut s0 = c0.subscribe(&format!("{p}.a")).await.unwrap();
    let mut s1 = c1.subscribe(&format!("{p}.>")).await.unwrap();
    let mut s2a = c2.subscribe(&format!("{p}.a")).await.unwrap();
    let mut s2b = c2.subscribe(&format!("{p}.*")).await.unwrap();
    warm_up(
        &c0,
        &format!("{p}.a"),
        &mut [&mut s0, &mut s1, &mut s2a, &mut s2b],
    )
    .await;
    for i in 0..20 {
        c0.publish(&format!("{p}.a"), format!("m{i}"))
            .await
            .unwrap();
    }
    c2.publish(&format!("{p}.b"), "from2").await.unwrap();
    let quiet = Duration::from_millis(700);
    let (g0, g1) = (drain(&mut s0, quiet).await, drain(&mut s1, quiet).await);
    let (g2a, g2b) = (drain(&mut s2a, quiet).await, drain(&mut s2b, quiet).await);
    // Each subscription once per message: no copy from the fabric back to where it was
    // published, none twice for overlapping filters.
    assert_eq!((count(&g0, "m"), g0.len()), (20, 20), "broker 0: {g0:?}");
    assert_eq!(
        (count(&g1, "m"), count(&g1, "from2"), g1.len()),
        (20, 1, 21),
        "{g1:?}"
    );
    assert_eq!((count(&g2a, "m"), g2a.len()), (20, 20), "{g2a:?}");
    assert_eq!(
        (count(&g2b, "m"), count(&g2b, "from2"), g2b.len()),
        (20, 1, 21),
        "{g2b:?}"
    );
    let order: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let got: Vec<String> = g1.iter().filter(|m| m.starts_with('m')).cloned().collect();
    assert_eq!(got, order, "in order from one publisher across brokers");

    // Request/reply across brokers; NO_RESPONDERS at once where nobody listens anywhere.
    let mut svc = c2.subscribe(&format!("{p}.svc")).await.unwrap();
    let responder = c2.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            let body = format!("re:{}", String::from_utf8_lossy(m.payload()));
            let _ = responder.respond(&m, body).await;
        }
    });
    let svc_subject = format!("{p}.svc");
    let mut answered = false;
    for _ in 0..200 {
        match c0.request(&svc_subject, "x").await {
            Ok(r) => {
                assert_eq!(&r[..], b"re:x");
                answered = true;
                break;
            }
            Err(e) if e.status() == Status::NO_RESPONDERS => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(answered, "the request never crossed");
    for i in 0..10 {
        let r = c1.request(&svc_subject, format!("q{i}")).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&r), format!("re:q{i}"));
    }
    let t = std::time::Instant::now();
    // (Broker 1 holds `{p}.>`: a request there waits for a reply; this subject is nobody's.)
    let e = c0.request(&format!("{p}-none.x"), "x").await.unwrap_err();
    assert_eq!(e.status(), Status::NO_RESPONDERS, "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "at once: {:?}",
        t.elapsed()
    );

    // Broker 1's NATS node dies: its federation fails over, and messages reach it again.
    nodes[1].kill();
    let mut back = false;
    for i in 0..300 {
        c0.publish(&format!("{p}.a"), format!("after{i}"))
            .await
            .unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), s1.next()).await {
            if m.payload().starts_with(b"after") {
                back = true;
                break;
            }
        }
    }
    assert!(back, "no traffic reached broker 1 after its node died");
    wait_for("broker 1's federation to count its reconnect", || {
        b1.bridges()
            .into_iter()
            .any(|s| s.kind == "federation" && s.reconnects >= 1)
    })
    .await;
    // The other brokers' subscribers still get each message once.
    drain(&mut s1, quiet).await;
    drain(&mut s2a, quiet).await;
    c0.publish(&format!("{p}.a"), "last").await.unwrap();
    assert_eq!(drain(&mut s2a, quiet).await, ["last"]);
    assert_eq!(drain(&mut s1, quiet).await, ["last"]);

    for b in [b0, b1, b2] {
        b.shutdown().await;
    }
}

/// Publishes "warm" on `subject` from `c` until one of `subs` got it (the group's interest
/// reached `c`'s broker).
async fn warm_any(c: &Client, subject: &str, subs: &mut [&mut Subscription]) {
    for _ in 0..400 {
        c.publish(subject, "warm").await.unwrap();
        for s in subs.iter_mut() {
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(5), s.next()).await {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the group's interest did not propagate to the publisher's broker");
}

/// What the members of one group got, warm-ups left out, sorted.
async fn group_got(members: &mut [&mut Subscription], quiet: Duration) -> Vec<String> {
    let mut all = Vec::new();
    for m in members.iter_mut() {
        all.extend(drain(m, quiet).await.into_iter().filter(|p| p != "warm"));
    }
    all.sort();
    all
}

/// `n` messages `{tag}{k}` published from each of `from` (tagged `b<i>-`), sorted.
async fn publish_from(from: &[(usize, &Client)], subject: &str, n: usize) -> Vec<String> {
    let mut sent = Vec::new();
    for k in 0..n {
        for (i, c) in from {
            let body = format!("b{i}-{k:03}");
            c.publish(subject, body.clone()).await.unwrap();
            sent.push(body);
        }
    }
    sent.sort();
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_groups_span_brokers_each_message_once() {
    if !nats_server::available() {
        return;
    }
    let p = unique("fedq");
    let nodes = NatsServer::cluster(3, &p);
    let (b0, c0) = federated(&nodes, 0).await;
    let (b1, c1) = federated(&nodes, 1).await;
    let (b2, c2) = federated(&nodes, 2).await;
    let (filter, subject) = (format!("{p}.jobs.*"), format!("{p}.jobs.x"));
    // "workers": two members on broker 1, one on broker 2, none on broker 0; "audit": one on
    // broker 0, one on broker 1; plain subscribers on brokers 0 and 2.
    let mut w1a = c1.queue_subscribe(&filter, "workers").await.unwrap();
    let mut w1b = c1.queue_subscribe(&filter, "workers").await.unwrap();
    let mut w2 = c2.queue_subscribe(&filter, "workers").await.unwrap();
    let mut a0 = c0.queue_subscribe(&filter, "audit").await.unwrap();
    let mut a1 = c1.queue_subscribe(&filter, "audit").await.unwrap();
    let mut plain0 = c0.subscribe(&filter).await.unwrap();
    let mut plain2 = c2.subscribe(&subject).await.unwrap();
    warm_any(&c0, &subject, &mut [&mut w1a, &mut w1b, &mut w2]).await;
    warm_any(&c2, &subject, &mut [&mut a0, &mut a1]).await;
    for c in [&c0, &c1, &c2] {
        warm_up(c, &subject, &mut [&mut plain0, &mut plain2]).await;
    }
    let quiet = Duration::from_millis(700);
    group_got(&mut [&mut w1a, &mut w1b, &mut w2, &mut a0, &mut a1], quiet).await;

    // From every broker, members or not: each message once per group, all to each plain one.
    let sent = publish_from(&[(0, &c0), (1, &c1), (2, &c2)], &subject, 30).await;
    let w1 = group_got(&mut [&mut w1a, &mut w1b], quiet).await;
    let w2got = group_got(&mut [&mut w2], quiet).await;
    let mut workers = [w1.clone(), w2got.clone()].concat();
    workers.sort();
    assert_eq!(workers, sent, "workers: each message once across brokers");
    let from0 = |v: &[String]| v.iter().filter(|p| p.starts_with("b0-")).count();
    assert!(
        from0(&w1) > 0 && from0(&w2got) > 0,
        "broker 0's messages went to both brokers with members: {} and {}",
        from0(&w1),
        from0(&w2got)
    );
    assert_eq!(
        (w1.len() - from0(&w1), w2got.len() - from0(&w2got)),
        (30, 30),
        "a broker with members keeps its own publishers' messages"
    );
    let audit = group_got(&mut [&mut a0, &mut a1], quiet).await;
    assert_eq!(audit, sent, "audit: each message once across brokers");
    for (name, s) in [("plain 0", &mut plain0), ("plain 2", &mut plain2)] {
        let mut got = drain(s, quiet).await;
        got.sort();
        assert_eq!(got, sent, "{name} gets every message");
    }

    // Broker 1 (members of both groups) stops: the members elsewhere get every message from
    // then on, once NATS has dropped broker 1's queue subscriptions.
    b1.shutdown().await;
    let mut in_a_row = 0;
    for k in 0..400 {
        c0.publish(&subject, format!("probe{k}")).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(100), w2.next()).await {
            Ok(Some(_)) => in_a_row += 1,
            _ => in_a_row = 0,
        }
        if in_a_row == 5 {
            break;
        }
    }
    assert_eq!(
        in_a_row, 5,
        "broker 0's messages never all reached broker 2's member"
    );
    group_got(&mut [&mut w2, &mut a0], quiet).await;
    drain(&mut plain0, quiet).await;
    drain(&mut plain2, quiet).await;
    let sent = publish_from(&[(0, &c0), (2, &c2)], &subject, 30).await;
    assert_eq!(
        group_got(&mut [&mut w2], quiet).await,
        sent,
        "workers after"
    );
    assert_eq!(group_got(&mut [&mut a0], quiet).await, sent, "audit after");
    let mut got = drain(&mut plain2, quiet).await;
    got.sort();
    assert_eq!(got, sent);
    for b in [b0, b2] {
        b.shutdown().await;
    }
}

/// A member of queue group `group` on `filter` at `c` that answers each request with `tag`
/// and counts them.
async fn responder(
    c: &Client,
    filter: &str,
    group: &str,
    tag: &'static str,
) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut sub = c.queue_subscribe(filter, group).await.unwrap();
    let (c, seen) = (c.clone(), n.clone());
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = c.respond(&m, tag).await;
        }
    });
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_reaches_one_member_of_a_group_spanning_brokers() {
    use std::sync::atomic::Ordering;
    if !nats_server::available() {
        return;
    }
    let p = unique("fedqr");
    let nodes = NatsServer::cluster(3, &p);
    let (b0, c0) = federated(&nodes, 0).await;
    let (b1, c1) = federated(&nodes, 1).await;
    let (b2, c2) = federated(&nodes, 2).await;
    let subject = format!("{p}.ask");
    let on1 = responder(&c1, &subject, "answerers", "one").await;
    let on2 = responder(&c2, &subject, "answerers", "two").await;
    let mut tries = 0;
    while let Err(e) = c0.request(&subject, "warm").await {
        assert_eq!(e.status(), Status::NO_RESPONDERS, "{e}");
        tries += 1;
        assert!(tries < 400, "the group's interest never reached broker 0");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = on1.load(Ordering::SeqCst) + on2.load(Ordering::SeqCst);
    assert_eq!(before, 1, "the warm-up request reached one member");
    // From broker 0 (no member): each request to one member, on either broker.
    let mut answers = std::collections::BTreeMap::new();
    for i in 0..20 {
        let r = c0.request(&subject, format!("{i}")).await.unwrap();
        *answers
            .entry(String::from_utf8_lossy(&r).into_owned())
            .or_insert(0) += 1;
    }
    // From broker 1: its own member answers; broker 2's is not asked.
    let two = on2.load(Ordering::SeqCst);
    for i in 0..10 {
        let r = c1.request(&subject, format!("{i}")).await.unwrap();
        assert_eq!(&r[..], b"one");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (n1, n2) = (on1.load(Ordering::SeqCst), on2.load(Ordering::SeqCst));
    assert_eq!(
        n1 + n2,
        31,
        "each request reached one member: {n1} + {n2}, {answers:?}"
    );
    assert_eq!(n2, two, "broker 1's requests stayed on broker 1");
    for b in [b0, b1, b2] {
        b.shutdown().await;
    }
}

/// A service instance on `broker` for `subject` that counts its calls; `fail`: it answers
/// NOT_FOUND instead.
async fn instance(
    broker: &Broker,
    subject: &str,
    fail: bool,
) -> (
    mitto::RunningServer,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let calls = std::sync::Arc::new(AtomicU64::new(0));
    let n = calls.clone();
    let server = mitto::Server::new()
        .route(subject, move |req: mitto::Request| {
            let n = n.clone();
            async move {
                n.fetch_add(1, Ordering::SeqCst);
                if fail {
                    return Err(mitto::Error::new(Status::NOT_FOUND, "no such item"));
                }
                Ok(format!("sum:{}", String::from_utf8_lossy(req.payload())))
            }
        })
        .attach(&broker.urls()[0], client_opts())
        .await
        .unwrap();
    (server, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_span_brokers_each_call_answered_once() {
    use std::sync::atomic::Ordering;
    if !nats_server::available() {
        return;
    }
    let p = unique("fedsvc");
    let nodes = NatsServer::cluster(3, &p);
    let (b0, c0) = federated(&nodes, 0).await;
    let (b1, c1) = federated(&nodes, 1).await;
    let (b2, _c2) = federated(&nodes, 2).await;
    let sum = format!("{p}.sum");
    let (s1, on1) = instance(&b1, &sum, false).await;
    let (s2, on2) = instance(&b2, &sum, false).await;
    let (s3, fails) = instance(&b2, &format!("{p}.fail"), true).await;

    // Broker 0 has no instance: its calls cross, to one broker each.
    let mut warm = 0u64;
    loop {
        warm += 1;
        match c0.request(&sum, "w").await {
            Ok(r) => {
                assert_eq!(&r[..], b"sum:w");
                break;
            }
            Err(e) if e.status() == Status::NO_RESPONDERS && warm < 400 => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let before = on1.load(Ordering::SeqCst) + on2.load(Ordering::SeqCst);
    assert_eq!(before, 1, "the warm-up call ran once");
    for i in 0..30 {
        let r = c0.request(&sum, format!("{i}")).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&r), format!("sum:{i}"));
    }
    let (n1, n2) = (on1.load(Ordering::SeqCst), on2.load(Ordering::SeqCst));
    assert_eq!(
        n1 + n2,
        31,
        "each call ran once: {n1} on broker 1, {n2} on broker 2"
    );
    assert!(n1 > 0 && n2 > 0, "both brokers served: {n1}, {n2}");

    // Broker 1 has an instance of its own: its calls stay there.
    for i in 0..10 {
        c1.request(&sum, format!("{i}")).await.unwrap();
    }
    assert_eq!(
        on2.load(Ordering::SeqCst),
        n2,
        "broker 1's calls stayed on broker 1"
    );
    assert_eq!(on1.load(Ordering::SeqCst), n1 + 10);

    // A failure crosses with its status; a subject no broker serves is NO_RESPONDERS at once.
    let fail = format!("{p}.fail");
    let e = loop {
        match c0.request(&fail, "x").await {
            Err(e) if e.status() == Status::NO_RESPONDERS => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            other => break other.unwrap_err(),
        }
    };
    assert_eq!(e.status(), Status::NOT_FOUND, "{e}");
    assert!(e.message().contains("no such item"), "{e}");
    assert_eq!(fails.load(Ordering::SeqCst), 1);
    let e = c0.request(&format!("{p}.none"), "x").await.unwrap_err();
    assert_eq!(e.status(), Status::NO_RESPONDERS, "{e}");

    // Broker 2 leaves the fabric mid-traffic: broker 1 answers every call from then on.
    let calls = tokio::spawn({
        let (c0, sum) = (c0.clone(), sum.clone());
        async move {
            let mut answered = 0;
            for i in 0..40 {
                if c0.request(&sum, format!("{i}")).await.is_ok() {
                    answered += 1;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answered
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    b2.shutdown().await;
    let answered = calls.await.unwrap();
    let after = on2.load(Ordering::SeqCst);
    for i in 0..10 {
        c0.request(&sum, format!("{i}")).await.unwrap();
    }
    assert_eq!(
        on2.load(Ordering::SeqCst),
        after,
        "nothing reaches a broker that left"
    );
    eprintln!("while broker 2 left: {answered} of 40 calls answered");

    // The instances go: their interest is withdrawn and calls from broker 0 find no one.
    for s in [s1, s2, s3] {
        s.shutdown().await;
    }
    let mut gone = false;
    for _ in 0..200 {
        match c0.request(&sum, "x").await {
            Err(e) if e.status() == Status::NO_RESPONDERS => {
                gone = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    assert!(
        gone,
        "broker 0 still offers the service of brokers that have none"
    );
    for b in [b0, b1, b2] {
        b.shutdown().await;
    }
}

/// A service on `filter` at `broker` that answers `<tag>:<method>` and counts its calls.
async fn tagged(
    broker: &Broker,
    filter: &str,
    tag: &'static str,
) -> (
    mitto::RunningServer,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let n = calls.clone();
    let server = mitto::Server::new()
        .route(filter, move |req: mitto::Request| {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok(format!("{tag}:{}", req.method())) }
        })
        .attach(&broker.urls()[0], client_opts())
        .await
        .unwrap();
    (server, calls)
}

/// `c`'s call of `method`, retried while no broker offers it yet.
async fn call_when_offered(c: &Client, method: &str) -> String {
    for _ in 0..400 {
        match c.request(method, "x").await {
            Ok(r) => return String::from_utf8_lossy(&r).into_owned(),
            Err(e) if e.status() == Status::NO_RESPONDERS => {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            Err(e) => panic!("{method}: {e}"),
        }
    }
    panic!("{method} was never offered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_services_span_brokers() {
    use std::sync::atomic::Ordering;
    if !nats_server::available() {
        return;
    }
    let p = unique("fedwild");
    let nodes = NatsServer::cluster(3, &p);
    let (b0, c0) = federated(&nodes, 0).await;
    let (b1, c1) = federated(&nodes, 1).await;
    let (b2, c2) = federated(&nodes, 2).await;
    // `calc.*` on broker 1, `calc.add` on broker 2, nothing on broker 0.
    let (s1, star) = tagged(&b1, &format!("{p}.calc.*"), "star").await;
    let (s2, add) = tagged(&b2, &format!("{p}.calc.add"), "add").await;
    let (mul, plus) = (format!("{p}.calc.mul"), format!("{p}.calc.add"));
    assert_eq!(call_when_offered(&c0, &mul).await, format!("star:{mul}"));
    call_when_offered(&c0, &plus).await;
    // Broker 2 has no `calc.*` of its own: its `calc.mul` crosses to broker 1.
    assert_eq!(call_when_offered(&c2, &mul).await, format!("star:{mul}"));
    let (n1, n2) = (star.load(Ordering::SeqCst), add.load(Ordering::SeqCst));
    assert_eq!(n1 + n2, 3, "each call ran once");

    // From broker 0: `calc.add` goes to one of the two brokers that take it, once.
    for i in 0..20 {
        let r = c0.request(&plus, format!("{i}")).await.unwrap();
        let r = String::from_utf8_lossy(&r).into_owned();
        assert!(
            r == format!("star:{plus}") || r == format!("add:{plus}"),
            "{r}"
        );
    }
    let (m1, m2) = (star.load(Ordering::SeqCst), add.load(Ordering::SeqCst));
    assert_eq!(m1 + m2, n1 + n2 + 20, "each call ran once: {m1} + {m2}");
    // A broker with an instance that takes a call keeps it: broker 1's `calc.*` takes its
    // `calc.add`, broker 2's `calc.add` its own (not broker 1's `calc.*` through a proxy).
    for _ in 0..20 {
        assert_eq!(c2.request(&plus, "x").await.unwrap(), format!("add:{plus}"));
    }
    for _ in 0..20 {
        assert_eq!(
            c1.request(&plus, "x").await.unwrap(),
            format!("star:{plus}")
        );
    }
    assert_eq!(star.load(Ordering::SeqCst), m1 + 20);
    assert_eq!(add.load(Ordering::SeqCst), m2 + 20);

    // The wildcard instance goes: `calc.mul` finds no one anywhere.
    s1.shutdown().await;
    let mut gone = false;
    for _ in 0..200 {
        match c0.request(&mul, "x").await {
            Err(e) if e.status() == Status::NO_RESPONDERS => {
                gone = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    assert!(gone, "broker 0 still offers a service no broker has");
    s2.shutdown().await;
    for b in [b0, b1, b2] {
        b.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_nats_is_away_serves_its_clients_and_stops() {
    let cfg = BrokerConfig {
        listen: vec!["tcp://127.0.0.1:0".into()],
        monitor: String::new(),
        federation: Some(FederationConfig::new(&format!(
            "nats://127.0.0.1:{}",
            free_port()
        ))),
        ..BrokerConfig::default()
    };
    let b = tokio::time::timeout(Duration::from_secs(10), Broker::start(cfg))
        .await
        .expect("starts without NATS")
        .unwrap();
    let c = Client::connect(&b.urls()[0], client_opts()).await.unwrap();
    let mut sub = c.subscribe("local.x").await.unwrap();
    c.publish("local.x", "here").await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload(), "here");
    let e = c.request("nobody.x", "?").await.unwrap_err();
    assert_eq!(e.status(), Status::NO_RESPONDERS);
    let fed = b
        .bridges()
        .into_iter()
        .find(|s| s.kind == "federation")
        .unwrap();
    assert_ne!(fed.state, mitto_bridge::State::Up, "{fed:?}");
    tokio::time::timeout(Duration::from_secs(10), b.shutdown())
        .await
        .expect("stops without NATS");
}
