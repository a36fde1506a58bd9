//! The HTTP monitoring endpoint (loopback only): JSON for people and scripts, Prometheus text
//! for scrapers.
//!
//! | path | what |
//! |---|---|
//! | `/varz` | server info and every counter |
//! | `/connz` | connections: peer, client name, user, subscriptions |
//! | `/subsz` | subscriptions: filter, queue group, delivered, dropped (slow consumer) |
//! | `/subjectz` | per-subject message and byte counts, and rates since start |
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
use std::sync::Arc;

pub(crate) async fn start(core: Arc<Core>, addr: &str) -> Result<SocketAddr, Error> {
    let sa: SocketAddr = addr.parse().map_err(|e| {
        Error::new(
            Status::BAD_REQUEST,
            format!("monitor address {addr:?}: {e} (use IP:PORT)"),
        )
    })?;
    if !sa.ip().is_loopback() {
        return Err(Error::new(
            Status::BAD_REQUEST,
            format!(
                "monitor address {addr} is not loopback; monitoring is served on loopback only"
            ),
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
            let core = core.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let core = core.clone();
                    async move { Ok::<_, Infallible>(handle(&core, &req)) }
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

fn handle(core: &Core, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let uptime = core.started.elapsed();
    let secs = uptime.as_secs_f64().max(1e-9);
    match req.uri().path() {
        "/" | "/varz" => json_reply(json!({
            "server": core.cfg.name,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_ms": uptime.as_millis() as u64,
            "listen": core.cfg.listen,
            "max_payload": core.cfg.max_payload,
            "max_connections": core.cfg.max_connections,
            "subscriptions_indexed": core.subscription_count(),
            "draining": core.draining(),
            "stats": core.stats.snapshot(),
        })),
        "/connz" => {
            let conns = core.conns.lock().map(|c| c.clone()).unwrap_or_default();
            let mut list: Vec<_> = conns
                .iter()
                .map(|(id, c)| {
                    json!({"id": id, "peer": c.peer, "name": c.name, "user": c.user,
                           "subscriptions": c.mailbox.sub_count()})
                })
                .collect();
            list.sort_by_key(|v| v["id"].as_u64());
            json_reply(json!({"connections": list.len(), "list": list}))
        }
        "/subsz" => {
            let conns = core.conns.lock().map(|c| c.clone()).unwrap_or_default();
            let mut list = Vec::new();
            for (id, c) in &conns {
                for (sid, filter, queue, delivered, dropped) in c.mailbox.subs() {
                    list.push(json!({"connection": id, "sid": sid, "filter": filter,
                        "queue": queue, "delivered": delivered, "slow_consumer_drops": dropped}));
                }
            }
            json_reply(json!({"subscriptions": list.len(), "list": list}))
        }
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
        "/metrics" => {
            let mut out = String::new();
            for (k, v) in core.stats.snapshot() {
                let kind = if k.ends_with("_open") || k == "subscriptions" {
                    "gauge"
                } else {
                    "counter"
                };
                out.push_str(&format!("# TYPE mitto_{k} {kind}\nmitto_{k} {v}\n"));
            }
            out.push_str(&format!(
                "# TYPE mitto_uptime_seconds gauge\nmitto_uptime_seconds {:.3}\n",
                uptime.as_secs_f64()
            ));
            reply(StatusCode::OK, "text/plain; version=0.0.4", out)
        }
        "/healthz" if core.draining() => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".into(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        other => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no page {other}\n"),
        ),
    }
}
