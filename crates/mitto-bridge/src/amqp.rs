//! AMQP 0-9-1 (RabbitMQ) through `lapin`: out to a topic exchange with publisher confirms, in
//! from a durable queue bound to it, acknowledged once mitto accepted each message.

use crate::envelope::Envelope;
use crate::inbound::{deliver, Fate};
use crate::link::{Backend, Confirm, Ctx, Link, Session, Trip};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use std::sync::Arc;
use std::time::Duration;

/// The longest AMQP short string (content type, correlation id, header names).
const SHORT: usize = 255;

/// The AMQP properties of `env`: persistent, its content type and correlation id, its other
/// headers as long strings.
pub(crate) fn properties(env: &Envelope) -> BasicProperties {
    let mut p = BasicProperties::default().with_delivery_mode(2);
    if let Some(ct) = env.content_type.as_ref().filter(|c| c.len() <= SHORT) {
        p = p.with_content_type(ct.as_str().into());
    }
    if let Some(c) = env.correlation_id.as_ref().filter(|c| c.len() <= SHORT) {
        p = p.with_correlation_id(String::from_utf8_lossy(c).into_owned().into());
    }
    let mut table = FieldTable::default();
    for (k, v) in env.headers.iter().filter(|(k, _)| k.len() <= SHORT) {
        table.insert(k.as_str().into(), AMQPValue::LongString(v.clone().into()));
    }
    if !table.inner().is_empty() {
        p = p.with_headers(table);
    }
    p
}

/// The envelope of a delivery named `name`: content type, correlation id and the headers whose
/// values are strings.
pub(crate) fn envelope(name: String, payload: &[u8], p: &BasicProperties) -> Envelope {
    let mut env = Envelope {
        name,
        payload: bytes::Bytes::copy_from_slice(payload),
        content_type: p.content_type().as_ref().map(|c| c.to_string()),
        correlation_id: p
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().as_bytes().to_vec()),
        headers: Vec::new(),
    };
    if let Some(t) = p.headers() {
        for (k, v) in t.inner() {
            let v = match v {
                AMQPValue::LongString(s) => s.as_bytes().to_vec(),
                AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
                // Numbers and the rest travel as their text.
                AMQPValue::Boolean(b) => b.to_string().into_bytes(),
                AMQPValue::LongInt(n) => n.to_string().into_bytes(),
                AMQPValue::LongLongInt(n) => n.to_string().into_bytes(),
                _ => continue,
            };
            env.headers.push((k.to_string(), v));
        }
    }
    env
}

pub(crate) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Closes a connection when its session ends, however it ends.
pub(crate) struct CloseOnDrop(pub(crate) Option<Connection>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = c.close(200, "bye".into()).await;
                });
            }
        }
    }
}

/// Connects to `url` with a name RabbitMQ shows in its management views.
pub(crate) async fn connect(url: &str, name: &str) -> Result<Connection, String> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props).await.map_err(err)
}

/// A publishing channel in confirm mode.
#[derive(Clone)]
pub(crate) struct AmqpLink {
    ch: Channel,
    exchange: ShortString,
    trip: Trip,
}

impl Link for AmqpLink {
    async fn send(&self, batch: &[Envelope]) -> Result<Confirm, String> {
        let mut confirms = Vec::with_capacity(batch.len());
        for env in batch {
            let c = self
                .ch
                .basic_publish(
                    self.exchange.clone(),
                    env.name.as_str().into(),
                    BasicPublishOptions::default(),
                    &env.payload,
                    properties(env),
                )
                .await
                .map_err(err)?;
            confirms.push(c);
        }
        Ok(async move {
            for c in confirms {
                match c.await {
                    Ok(c) if c.is_ack() => {}
                    Ok(_) => return Err("the broker refused it (nack)".to_owned()),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        }
        .boxed())
    }

    fn trip(&self) {
        self.trip.trip();
    }
}

/// The AMQP bridge backend.
pub(crate) struct Amqp;

impl Backend for Amqp {
    type Link = AmqpLink;

    async fn connect(&self, ctx: Arc<Ctx>) -> Result<(AmqpLink, Session), String> {
        let cfg = &ctx.cfg;
        let conn = connect(&cfg.url, &format!("mitto-bridge {}", cfg.name)).await?;
        let out = conn.create_channel().await.map_err(err)?;
        out.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err)?;
        let exchange: ShortString = cfg.exchange.as_str().into();
        if !cfg.exchange.starts_with("amq.") {
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            out.exchange_declare(
                exchange.clone(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        }
        let consumer = if ctx.inbound.is_empty() {
            None
        } else {
            let ch = conn.create_channel().await.map_err(err)?;
            let queue: ShortString = cfg
                .queue
                .clone()
                .unwrap_or_else(|| format!("mitto.bridge.{}", cfg.name))
                .into();
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            ch.queue_declare(queue.clone(), durable, FieldTable::default())
                .await
                .map_err(err)?;
            for r in &ctx.inbound {
                ch.queue_bind(
                    queue.clone(),
                    exchange.clone(),
                    r.remote_filter().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(err)?;
            }
            let prefetch = u16::try_from(cfg.window).unwrap_or(u16::MAX);
            ch.basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(err)?;
            let c = ch
                .basic_consume(
                    queue,
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(err)?;
            Some(c)
        };
        let trip = Trip::default();
        let link = AmqpLink {
            ch: out,
            exchange,
            trip: trip.clone(),
        };
        let events = conn.events_listener();
        let guard = CloseOnDrop(Some(conn));
        Ok((link, run(ctx, guard, events, consumer, trip).boxed()))
    }
}

async fn next(c: &mut Option<Consumer>) -> Option<lapin::Result<lapin::message::Delivery>> {
    match c {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

async fn run(
    ctx: Arc<Ctx>,
    _conn: CloseOnDrop,
    events: impl futures_util::Stream<Item = lapin::Event> + Send + 'static,
    mut consumer: Option<Consumer>,
    trip: Trip,
) -> String {
    let mut events = std::pin::pin!(events);
    loop {
        let d = tokio::select! {
            _ = trip.tripped() => return "a publish failed".into(),
            e = events.next() => match e {
                Some(lapin::Event::Error(e)) => return e.to_string(),
                Some(_) => continue,
                None => return "connection ended".into(),
            },
            d = next(&mut consumer) => d,
        };
        let d = match d {
            Some(Ok(d)) => d,
            Some(Err(e)) => return e.to_string(),
            None => return "the consumer was cancelled".into(),
        };
        let env = envelope(d.routing_key.to_string(), &d.data, &d.properties);
        let acked = match deliver(&ctx, env).await {
            Fate::Accepted | Fate::Skipped => d.ack(BasicAckOptions::default()).await,
            Fate::Refused => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                };
                let r = d.nack(requeue).await;
                // Not straight back into a broker that just refused it.
                tokio::time::sleep(Duration::from_millis(ctx.cfg.backoff_min_ms)).await;
                r
            }
        };
        if let Err(e) = acked {
            return e.to_string();
        }
    }
}
