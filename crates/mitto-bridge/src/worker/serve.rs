//! The worker side of a work queue: an ordinary [`mitto::Server`] answering requests taken from
//! a RabbitMQ queue, each acknowledged only after its reply was confirmed.

use crate::amqp::{connect, envelope, err, properties, CloseOnDrop};
use crate::envelope::Envelope;
use crate::worker::{amqp_url, prefetch_of, queue_of, METHOD_HEADER};
use crate::BridgeError;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::Channel;
use mitto::{CallOptions, Client, ClientOptions, RunningServer, Server};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A worker's counters.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Requests answered (with a result or a failure) and acknowledged.
    pub answered: AtomicU64,
    /// Of those, answered with a failure.
    pub failed: AtomicU64,
    /// Connections to RabbitMQ lost and made again.
    pub reconnects: AtomicU64,
}

/// A worker serving a [`mitto::Server`]'s methods from a RabbitMQ queue.
#[derive(Debug)]
pub struct QueueWorker {
    stats: Arc<WorkerStats>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    server: RunningServer,
}

impl QueueWorker {
    /// The worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// Stops taking requests and ends the server. Requests taken and not yet answered go back
    /// to the queue for another worker.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.server.shutdown().await;
    }
}

/// Serves `server`'s methods on the requests of the queue that `url` names
/// (`amqp://user:pass@host:5672/%2f?queue=svc.work`, and `&prefetch=N` for N requests at once,
/// default 1). The queue is declared durable. Returns once the first connection to RabbitMQ is
/// up; later losses are retried with backoff.
pub async fn serve(url: &str, server: Server) -> Result<QueueWorker, BridgeError> {
    let queue = queue_of(url).map_err(BridgeError::Backend)?;
    let prefetch = prefetch_of(url).map_err(BridgeError::Backend)?;
    let amqp = amqp_url(url);
    let mitto_err = |source| BridgeError::Mitto {
        name: queue.clone(),
        source,
    };
    // The server answers in this process, through a link of its own.
    let local = format!("mem://mitto-queue-worker-{:016x}", rand::random::<u64>());
    let server = server.bind(&local).await.map_err(mitto_err)?;
    let client = Client::connect(server.local_url(), ClientOptions::new())
        .await
        .map_err(mitto_err)?;
    let w = Worker {
        amqp,
        queue,
        prefetch,
        client,
        stats: Arc::new(WorkerStats::default()),
    };
    let first = w.connect().await.map_err(BridgeError::Backend)?;
    let (stop, stop_rx) = watch::channel(false);
    let stats = w.stats.clone();
    let task = tokio::spawn(w.run(first, stop_rx));
    Ok(QueueWorker {
        stats,
        stop,
        task,
        server,
    })
}

struct Worker {
    amqp: String,
    queue: String,
    prefetch: u16,
    client: Client,
    stats: Arc<WorkerStats>,
}

struct Conn {
    _conn: CloseOnDrop,
    ch: Channel,
    consumer: lapin::Consumer,
}

impl Worker {
    async fn connect(&self) -> Result<Conn, String> {
        let conn = connect(&self.amqp, &format!("mitto worker {}", self.queue)).await?;
        let ch = conn.create_channel().await.map_err(err)?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(err)?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(self.queue.as_str().into(), durable, FieldTable::default())
            .await
            .map_err(err)?;
        ch.basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(err)?;
        let consumer = ch
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err)?;
        Ok(Conn {
            _conn: CloseOnDrop(Some(conn)),
            ch,
            consumer,
        })
    }

    async fn run(self, first: Conn, mut stop: watch::Receiver<bool>) {
        let me = Arc::new(self);
        let mut conn = Some(first);
        let mut failures = 0u32;
        loop {
            let Some(mut c) = conn.take() else {
                let wait = Duration::from_millis((100u64 << failures.min(7)).min(10_000));
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                match me.connect().await {
                    Ok(c) => {
                        failures = 0;
                        me.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        conn = Some(c);
                    }
                    Err(e) => {
                        tracing::warn!(queue = %me.queue, error = %e, "work queue: connect failed");
                        failures = failures.saturating_add(1);
                    }
                }
                continue;
            };
            // Requests in hand are answered on tasks of their own (at most `prefetch`, which
            // RabbitMQ enforces); they end with the connection.
            let mut handling = tokio::task::JoinSet::new();
            loop {
                let d = tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    d = c.consumer.next() => d,
                    Some(_) = handling.join_next(), if !handling.is_empty() => continue,
                };
                match d {
                    Some(Ok(d)) => {
                        let (me, ch) = (me.clone(), c.ch.clone());
                        handling.spawn(async move { me.answer(&ch, d).await });
                    }
                    other => {
                        if let Some(Err(e)) = other {
                            tracing::warn!(queue = %me.queue, error = %e, "work queue: connection lost");
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Runs one request and publishes its reply; acknowledges the request only once the reply
    /// is confirmed (or when no one waits for one).
    async fn answer(&self, ch: &Channel, d: Delivery) {
        let req = envelope(String::new(), &d.data, &d.properties);
        let method = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(METHOD_HEADER))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| self.queue.clone());
        let mut opts = CallOptions::new().headers(req.mitto_headers_without_origin());
        // The caller's time left when the request was queued: an upper bound of what is left.
        if let Some(ms) = d
            .properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse::<u64>().ok())
        {
            opts = opts.timeout(Duration::from_millis(ms.max(1)));
        }
        let mut reply = match self.client.call_with(&method, d.data.clone(), opts).await {
            Ok(r) => Envelope::from_mitto(String::new(), r.payload, &r.headers),
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                crate::worker::failure(&e)
            }
        };
        if let Some(to) = d.properties.reply_to().clone() {
            reply.correlation_id = req.correlation_id.clone();
            let published = match ch
                .basic_publish(
                    "".into(),
                    to,
                    BasicPublishOptions::default(),
                    &reply.payload,
                    properties(&reply).with_delivery_mode(1),
                )
                .await
            {
                Ok(confirm) => confirm.await.map(|c| c.is_ack()).unwrap_or(false),
                Err(_) => false,
            };
            if !published {
                // Not acknowledged: RabbitMQ gives the request to a worker again once this
                // connection is gone.
                return;
            }
        }
        if d.ack(BasicAckOptions::default()).await.is_ok() {
            self.stats.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}
