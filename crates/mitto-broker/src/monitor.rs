//! The HTTP monitoring endpoint: JSON for people and scripts, Prometheus text for scrapers.
//!
//! It answers only requests whose `Host` (and `Origin`, when present) names a loopback host, the
//! address it is bound to or one of `monitor_hosts` (a web page cannot read it through DNS
//! rebinding), and, when `monitor_token` is set, that carry `Authorization: Bearer <token>`.
//! It is bound beyond loopback only with a token. `/healthz` needs neither (it tells nothing
//! but whether the broker serves).
//!
//! | path | what |
//! |---|---|
//! | `/varz` | server info and every counter |
//! | `/connz` | connections: peer, client name, user, subscriptions |
//! | `/subsz` | subscriptions: filter, queue group, durable name, delivered, dropped (slow consumer), skipped (over the subscriber's agreed limits) |
//! | `/subjectz` | per-subject message and byte counts, and rates since start |
//! | `/streamz` | streams: messages, bytes, sequences, counters, what recovery repaired at start-up, consumers |
//! | `/bridgez` | bridges: state, messages in/out, errors, reconnects, bytes buffered, drops |
//! | `/metrics` | Prometheus exposition of the counters |
//! | `/healthz` | `ok` while serving, 503 while draining |

use crate::core::Core;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mitto::{Error, Status};
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub(crate) async fn start(
    core: Arc<Core>,
    addr: &str,
    bridges: Arc<mitto_bridge::Bridges>,
) -> Result<SocketAddr, Error> {
    let sa: SocketAddr = addr.parse().map_err(|e| {
        Error::new(
            Status::BAD_REQUEST,
            format!("monitor address {addr:?}: {e} (use IP:PORT)"),
        )
    })?;
    if !sa.ip().is_loopback() && core.cfg.monitor_token.as_deref().is_none_or(str::is_empty) {
        return Err(Error::new(
            Status::BAD_REQUEST,
            format!("monitor address {addr} is not loopback: set monitor_token to serve it there"),
        ));
    }
    let l = tokio::net::TcpListener::bind(sa)
        .await
        .map_err(|e| Error::new(Status::UNAVAILABLE, format!("bind monitor {addr}: {e}")))?;
    let local = l
        .local_addr()
        .map_err(|e| Error::new(Status::UNAVAILABLE, format!("monitor address: {e}")))?;
    let mut stop = core.shutdown.subscribe();
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return,
                r = l.accept() => match r {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
            };
            let (core, bridges) = (core.clone(), bridges.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (core, bridges) = (core.clone(), bridges.clone());
                    async move {
                        let r = match refused(&core, &req, local) {
                            Some(no) => no,
                            None => handle(&core, &bridges, &req),
                        };
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

fn reply(code: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_reply(v: serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
    reply(StatusCode::OK, "application/json", body)
}

/// The host part of a `Host` value or of an origin's authority (`[::1]:80` -> `[::1]`).
fn host_of(authority: &str) -> &str {
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map(|i| &authority[..=i])
            .unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Whether a request may be answered: its host names this endpoint, and it has the token.
fn refused(
    core: &Core,
    req: &Request<Incoming>,
    local: SocketAddr,
) -> Option<Response<Full<Bytes>>> {
    if req.uri().path() == "/healthz" {
        return None;
    }
    let allowed = |authority: &str| {
        let host = host_of(authority).to_ascii_lowercase();
        let bound = match local.ip() {
            ip if ip.is_unspecified() => None,
            std::net::IpAddr::V6(ip) => Some(format!("[{ip}]")),
            ip => Some(ip.to_string()),
        };
        host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback())
            || bound.as_deref() == Some(host.as_str())
            || core
                .cfg
                .monitor_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(&host) || h.eq_ignore_ascii_case(authority))
    };
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
    };
    let host = header(hyper::header::HOST).or_else(|| req.uri().authority().map(|a| a.as_str()));
    let origin = header(hyper::header::ORIGIN).map(|o| {
        o.split_once("://")
            .map_or(o, |(_, rest)| rest)
            .trim_end_matches('/')
    });
    for (what, v) in [("Host", host), ("Origin", origin)] {
        match v {
            Some(v) if allowed(v) => {}
            None if what == "Origin" => {}
            _ => {
                return Some(reply(
                    StatusCode::FORBIDDEN,
                    "text/plain",
                    format!(
                        "{what} {:?} is not this endpoint's (add it to monitor_hosts)\n",
                        v.unwrap_or("")
                    ),
                ))
            }
        }
    }
    let token = core
        .cfg
        .monitor_token
        .as_deref()
        .filter(|t| !t.is_empty())?;
    let given = header(hyper::header::AUTHORIZATION)
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        return None;
    }
    let mut r = reply(
        StatusCode::UNAUTHORIZED,
        "text/plain",
        "a monitor token is required: Authorization: Bearer <token>\n".into(),
    );
    if let Ok(v) = "Bearer".parse() {
        r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, v);
    }
    Some(r)
}

/// The pages, as the index and the 404 page list them (docs/MONITORING.md describes them).
const PAGES: &[(&str, &str)] = &[
    (
        "/varz",
        "the broker: version, uptime, listeners, limits, memory bounds, counters (JSON)",
    ),
    ("/connz", "the client connections and their queues (JSON)"),
    (
        "/subsz",
        "the subscriptions and what each was delivered (JSON)",
    ),
    ("/subjectz", "messages and bytes per subject (JSON)"),
    ("/bridgez", "the bridges to other systems (JSON)"),
    (
        "/streamz",
        "the durable streams, their consumers and what recovery repaired (JSON)",
    ),
    ("/metrics", "the counters in Prometheus text format"),
    (
        "/healthz",
        "ok (200) while serving, draining (503) while shutting down",
    ),
];

fn page_list() -> String {
    let w = PAGES.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    PAGES
        .iter()
        .map(|(p, about)| format!("  {p:<w$}  {about}\n"))
        .collect()
}

fn handle(
    core: &Core,
    bridges: &mitto_bridge::Bridges,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let uptime = core.started.elapsed();
    let secs = uptime.as_secs_f64().max(1e-9);
    match req.uri().path() {
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            format!("mitto broker monitoring; pages:\n{}", page_list()),
        ),
        "/varz" => json_reply(json!({
            "server": core.cfg.name,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_ms": uptime.as_millis() as u64,
            "listen": core.cfg.listen,
            "max_payload": core.cfg.max_payload,
            "max_connections": core.cfg.max_connections,
            "subscriptions_indexed": core.subscription_count(),
            "draining": core.draining(),
            "memory_bounds": memory_bounds(core),
            "stats": core.snapshot(),
        })),
        "/connz" => json_reply(connz(core)),
        "/subsz" => json_reply(subsz(core)),
        "/subjectz" => {
            let list: Vec<_> = core
                .subject_counts()
                .into_iter()
                .map(|(s, n, b)| {
                    json!({"subject": s, "msgs": n, "bytes": b,
                           "msgs_per_s": n as f64 / secs, "bytes_per_s": b as f64 / secs})
                })
                .collect();
            json_reply(json!({"subjects": list}))
        }
        "/streamz" => json_reply(crate::streams::monitor_page(core)),
        "/bridgez" => {
            let list = bridges.snapshots();
            json_reply(json!({"bridges": list.len(), "list": list}))
        }
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", metrics(core)),
        "/healthz" if core.draining() => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".into(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        other => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no page {other}; pages:\n{}", page_list()),
        ),
    }
}

/// Every connection, with what it holds.
fn connz(core: &Core) -> serde_json::Value {
    let conns = core.conns.list();
    let mut list: Vec<_> = conns
        .iter()
        .map(|(id, c)| {
            let (pending, control) = c.mailbox.queued_bytes();
            json!({"id": id, "peer": c.peer, "name": c.name, "user": c.user,
                   "subscriptions": c.mailbox.sub_count(),
                   "pending_bytes": pending, "control_bytes": control,
                   "unacked_bytes": c.mailbox.unacked_bytes(),
                   "outbox_bytes": c.backlog.load(Ordering::Relaxed)})
        })
        .collect();
    list.sort_by_key(|v| v["id"].as_u64());
    json!({"connections": list.len(), "list": list})
}

/// Every subscription of every connection.
fn subsz(core: &Core) -> serde_json::Value {
    let conns = core.conns.list();
    let mut list = Vec::new();
    for (id, c) in &conns {
        for s in c.mailbox.subs() {
            // The durable key is "user\0name": only the name is shown.
            let durable = s.durable.as_deref().and_then(|k| k.split('\0').nth(1));
            list.push(json!({"connection": id, "sid": s.sid, "filter": s.filter,
                "queue": s.queue, "durable": durable, "delivered": s.delivered,
                "slow_consumer_drops": s.dropped, "oversize_skips": s.skipped}));
        }
    }
    json!({"subscriptions": list.len(), "list": list})
}

/// The counters in Prometheus' text format.
fn metrics(core: &Core) -> String {
    let mut out = String::new();
    for (k, v) in core.snapshot() {
        let gauge = k.ends_with("_open")
            || k == "subscriptions"
            || k == "subjects_tracked"
            || k == "detached_session_bytes";
        let kind = if gauge { "gauge" } else { "counter" };
        out.push_str(&format!("# TYPE mitto_{k} {kind}\nmitto_{k} {v}\n"));
    }
    out.push_str(&format!(
        "# TYPE mitto_uptime_seconds gauge\nmitto_uptime_seconds {:.3}\n",
        core.started.elapsed().as_secs_f64()
    ));
    out
}

/// The budgets of `budget.rs`, in bytes, as `docs/SECURITY.md` explains them.
fn memory_bounds(core: &Core) -> serde_json::Value {
    let b = &core.budget;
    let (pre, post) = (&b.pre_auth, &b.post_auth);
    json!({
        "handshake_frame": pre.limits.max_frame(),
        "handshake_read_buffer": pre.read_buffer_bytes(),
        "handshakes_max": pre.max_handshakes,
        "handshakes_all": pre.total_bytes(),
        "read_buffer": post.read_buffer_bytes(),
        "outbox": post.outbox_bytes(),
        "pending_bytes": post.pending_bytes,
        "unacked_bytes": post.unacked_bound(),
        "control_bytes": post.control_bytes,
        "per_connection_queues": post.queues_bytes(),
        "per_connection_subscriptions": post.subscriptions_bytes(),
        "write_deadline_ms": post.write_deadline.as_millis() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_drops_the_port_and_keeps_ipv6_brackets() {
        assert_eq!(host_of("localhost:8747"), "localhost");
        assert_eq!(host_of("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8747"), "[::1]");
        assert_eq!(host_of("user@evil.example:80"), "evil.example");
    }
}
