//! The broker side of a work queue: a mitto service whose requests go into a durable RabbitMQ
//! queue and whose replies come back on a queue of its own.

use crate::amqp::{connect, envelope, err, properties, CloseOnDrop};
use crate::envelope::Envelope;
use crate::link::{supervise, Backend, Ctx, Session, Trip};
use crate::stats::{add, bump};
use crate::worker::{amqp_url, queue_of, METHOD_HEADER, REASON_HEADER, STATUS_HEADER};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use mitto::{ClientOptions, Error, Request, Response, RunningServer, Server, Status};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Envelope>>>>;

/// A connection's publishing channel and the queue its replies come to.
#[derive(Clone)]
pub(crate) struct Forwarder {
    ch: Channel,
    replies: ShortString,
}

struct Queue {
    url: String,
    queue: ShortString,
    waiters: Waiters,
}

impl Backend for Queue {
    type Link = Forwarder;

    async fn connect(&self, ctx: Arc<Ctx>) -> Result<(Forwarder, Session), String> {
        let conn = connect(&self.url, &format!("mitto-bridge {}", ctx.cfg.name)).await?;
        let ch = conn.create_channel().await.map_err(err)?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err)?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(self.queue.clone(), durable, FieldTable::default())
            .await
            .map_err(err)?;
        // Replies come to a queue of this connection's own, gone with it.
        let own = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let replies = ch
            .queue_declare("".into(), own, FieldTable::default())
            .await
            .map_err(err)?
            .name()
            .clone();
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut consumer = ch
            .basic_consume(replies.clone(), "".into(), no_ack, FieldTable::default())
            .await
            .map_err(err)?;
        let events = conn.events_listener();
        let guard = CloseOnDrop(Some(conn));
        let waiters = self.waiters.clone();
        let session = async move {
            let _conn = guard;
            let mut events = std::pin::pin!(events);
            let trip = Trip::default();
            let reason = loop {
                let d = tokio::select! {
                    _ = trip.tripped() => break "tripped".to_owned(),
                    e = events.next() => match e {
                        Some(lapin::Event::Error(e)) => break e.to_string(),
                        Some(_) => continue,
                        None => break "connection ended".to_owned(),
                    },
                    d = consumer.next() => d,
                };
                let d = match d {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => break e.to_string(),
                    None => break "the reply consumer was cancelled".to_owned(),
                };
                let Some(corr) = d.properties.correlation_id().as_ref() else {
                    continue;
                };
                let w = waiters
                    .lock()
                    .ok()
                    .and_then(|mut w| w.remove(corr.as_str()));
                match w {
                    Some(w) => {
                        let env = envelope(String::new(), &d.data, &d.properties);
                        bump(&ctx.stats.msgs_in);
                        add(&ctx.stats.bytes_in, env.payload.len());
                        let _ = w.send(env);
                    }
                    // Its caller gave up (deadline or cancel): the reply is dropped.
                    None => bump(&ctx.stats.drops),
                }
            };
            // Replies to this connection's queue can no longer come: their callers are told now
            // rather than at their deadlines.
            if let Ok(mut w) = waiters.lock() {
                w.clear();
            }
            reason
        };
        Ok((Forwarder { ch, replies }, session.boxed()))
    }
}

/// Removes a caller's waiter when its call ends, however it ends.
struct Forget(Waiters, String);

impl Drop for Forget {
    fn drop(&mut self) {
        if let Ok(mut w) = self.0.lock() {
            w.remove(&self.1);
        }
    }
}

/// What the service does with one request.
struct Service {
    ctx: Arc<Ctx>,
    queue: ShortString,
    waiters: Waiters,
    links: watch::Receiver<Option<Forwarder>>,
}

fn unavailable(why: impl std::fmt::Display) -> Error {
    Error::new(Status::UNAVAILABLE, format!("work queue: {why}"))
}

impl Service {
    async fn call(&self, req: Request) -> mitto::Result<Response> {
        let Some(link) = self.links.borrow().clone() else {
            return Err(unavailable("RabbitMQ is unreachable"));
        };
        let max = self.ctx.cfg.buffer_msgs as usize;
        let corr = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = oneshot::channel();
        {
            let mut w = self.waiters.lock().map_err(|_| unavailable("poisoned"))?;
            if w.len() >= max {
                return Err(Error::new(
                    Status::BACKPRESSURE_REJECTION,
                    format!("work queue: {max} requests already wait for replies"),
                ));
            }
            w.insert(corr.clone(), tx);
        }
        let _forget = Forget(self.waiters.clone(), corr.clone());
        let mut env = Envelope::from_mitto(String::new(), req.payload().clone(), req.headers());
        env.correlation_id = None;
        env.headers
            .push((METHOD_HEADER.to_owned(), req.method().as_bytes().to_vec()));
        let mut props = properties(&env)
            .with_reply_to(link.replies.clone())
            .with_correlation_id(corr.into());
        if let Some(d) = req.deadline() {
            let left = d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .max(1);
            props = props.with_expiration(left.to_string().into());
        }
        let len = env.payload.len();
        let confirm = link
            .ch
            .basic_publish(
                "".into(),
                self.queue.clone(),
                BasicPublishOptions::default(),
                &env.payload,
                props,
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        if !confirm.is_ack() {
            return Err(unavailable("RabbitMQ refused the request (nack)"));
        }
        bump(&self.ctx.stats.msgs_out);
        add(&self.ctx.stats.bytes_out, len);
        // The caller's deadline and cancel end this wait (the server drops the handler).
        let reply = rx
            .await
            .map_err(|_| unavailable("the connection to RabbitMQ was lost before the reply"))?;
        reply_of(reply)
    }
}

/// A worker's reply (or another broker's, through the federation) as the caller's answer.
pub(crate) fn reply_of(env: Envelope) -> mitto::Result<Response> {
    let get = |k: &str| {
        env.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    if let Some(code) = get(STATUS_HEADER) {
        let code = code.trim().parse::<u16>().unwrap_or(Status::INTERNAL.0);
        return Err(Error::new(
            Status(code),
            get(REASON_HEADER).unwrap_or_default(),
        ));
    }
    let mut env = env;
    env.headers.retain(|(k, _)| {
        !k.eq_ignore_ascii_case(STATUS_HEADER) && !k.eq_ignore_ascii_case(REASON_HEADER)
    });
    let headers = env.mitto_headers_without_origin();
    Ok(Response::new(env.payload).with_headers(headers))
}

/// Starts the service: the RabbitMQ connection (kept up with backoff) and the mitto service on
/// the configured subject, attached to the broker at `mitto_url`.
pub(crate) async fn start(
    ctx: Arc<Ctx>,
    mitto_url: &str,
    opts: ClientOptions,
) -> Result<(RunningServer, JoinHandle<()>), mitto::Error> {
    let bad = |e: String| Error::new(Status::BAD_REQUEST, e);
    let queue = queue_of(&ctx.cfg.url).map_err(bad)?;
    let subject = ctx.cfg.subject.clone().unwrap_or_else(|| queue.clone());
    let waiters = Waiters::default();
    let backend = Queue {
        url: amqp_url(&ctx.cfg.url),
        queue: queue.as_str().into(),
        waiters: waiters.clone(),
    };
    let (links, links_rx) = watch::channel(None);
    let task = tokio::spawn(supervise(ctx.clone(), backend, links));
    let svc = Arc::new(Service {
        ctx,
        queue: queue.as_str().into(),
        waiters,
        links: links_rx,
    });
    let server = Server::new()
        .route(&subject, move |req: Request| {
            let svc = svc.clone();
            async move { svc.call(req).await }
        })
        .attach(mitto_url, opts)
        .await?;
    Ok((server, task))
}
