//! Durable streams of a mitto broker, from a client: the admin API (`$MITTO.STREAM.*`,
//! PROTOCOL.md section 19) through [`Client::stream`], and durable consumers through
//! [`Client::consumer`]. Built on the public request and subscribe calls only.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> mitto::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("mitto-doc-{}", std::process::id()));
//! # let cfg = mitto_broker::BrokerConfig {
//! #     listen: vec!["inproc://app".into()], monitor: String::new(), data_dir: Some(dir.clone()),
//! #     ..Default::default()
//! # };
//! # let broker = mitto_broker::Broker::start(cfg).await?;
//! use mitto::streams::{ConsumerConfig, StreamConfig, StreamMeta};
//!
//! let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
//! client.stream("orders").create(StreamConfig::new(["orders.>"])).await?;
//! let ack = mitto::PublishOptions::new().ack();
//! client.publish_with("orders.created", "#1", ack).await?; // acknowledged once fsynced
//! let mut c = client.consumer("orders", "billing", ConsumerConfig::new()).await?;
//! let m = c.next().await.unwrap();
//! assert_eq!(m.stream_seq(), Some(1));
//! c.ack(&m);
//! # broker.shutdown().await;
//! # let _ = std::fs::remove_dir_all(dir);
//! # Ok(()) }
//! ```

use crate::{Client, Error, Message, Result, Status, SubscribeOptions, Subscription};
use mitto_proto::Delivery;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a full stream does with a new message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Discard {
    /// Remove the oldest messages (default).
    #[default]
    Old,
    /// Refuse the new one: an acknowledged publish gets BACKPRESSURE_REJECTION.
    New,
}

/// When the broker acknowledges a publish the stream stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fsync {
    /// After `fsync` (default; concurrent publishes share one).
    #[default]
    Always,
    /// After the write; an `fsync` at least this often.
    Interval(Duration),
    /// After the write; the operating system flushes when it wants.
    Os,
}

/// The header naming a message for a stream's deduplication: a publish that repeats an id the
/// stream stored within its duplicate window is acknowledged and not stored again, so a
/// publisher may retry an acknowledged publish whose answer it lost.
pub const MSG_ID_HEADER: &str = "mitto-msg-id";

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// A stream's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConfig {
    /// Subjects it captures (wildcards allowed).
    pub subjects: Vec<String>,
    /// At most this many messages.
    pub max_msgs: Option<u64>,
    /// At most this many bytes as stored.
    pub max_bytes: Option<u64>,
    /// Messages older than this are removed.
    pub max_age: Option<Duration>,
    /// What to do at `max_msgs` or `max_bytes`.
    pub discard: Discard,
    /// When acknowledged publishes are acknowledged.
    pub fsync: Fsync,
    /// How long a `mitto-msg-id` is remembered (`None`: the broker's default, 2 minutes; zero
    /// turns deduplication off).
    pub duplicate_window: Option<Duration>,
}

impl StreamConfig {
    /// A stream capturing `subjects`: unlimited, discard old, fsync always.
    pub fn new(subjects: impl IntoIterator<Item = impl Into<String>>) -> Self {
        StreamConfig {
            subjects: subjects.into_iter().map(Into::into).collect(),
            ..StreamConfig::default()
        }
    }
    /// Keeps at most `n` messages.
    pub fn max_msgs(mut self, n: u64) -> Self {
        self.max_msgs = Some(n);
        self
    }
    /// Keeps at most `n` bytes.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = Some(n);
        self
    }
    /// Removes messages older than `d`.
    pub fn max_age(mut self, d: Duration) -> Self {
        self.max_age = Some(d);
        self
    }
    /// Sets the discard policy.
    pub fn discard(mut self, d: Discard) -> Self {
        self.discard = d;
        self
    }
    /// Sets the fsync policy.
    pub fn fsync(mut self, f: Fsync) -> Self {
        self.fsync = f;
        self
    }
    /// A publish whose [`MSG_ID_HEADER`] repeats one the stream stored within `d` is
    /// acknowledged without being stored again (zero: no deduplication).
    pub fn duplicate_window(mut self, d: Duration) -> Self {
        self.duplicate_window = Some(d);
        self
    }

    fn body(&self) -> serde_json::Value {
        let (fsync, interval) = match self.fsync {
            Fsync::Always => ("always", None),
            Fsync::Interval(d) => ("interval", Some(ms(d))),
            Fsync::Os => ("os", None),
        };
        let mut v =
            serde_json::json!({"subjects": self.subjects, "discard": self.discard, "fsync": fsync});
        let put = |v: &mut serde_json::Value, k: &str, x: serde_json::Value| {
            if !x.is_null() {
                v[k] = x;
            }
        };
        put(&mut v, "max_msgs", serde_json::json!(self.max_msgs));
        put(&mut v, "max_bytes", serde_json::json!(self.max_bytes));
        put(&mut v, "max_age", serde_json::json!(self.max_age.map(ms)));
        put(&mut v, "fsync_interval", serde_json::json!(interval));
        put(
            &mut v,
            "duplicate_window",
            serde_json::json!(self.duplicate_window.map(ms)),
        );
        v
    }
}

/// A stream's state, as INFO answers it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct StreamState {
    /// Messages kept.
    pub msgs: u64,
    /// Their bytes as stored.
    pub bytes: u64,
    /// The first sequence kept (`last_seq + 1` when empty).
    pub first_seq: u64,
    /// The last sequence stored.
    pub last_seq: u64,
    /// Whether a failed fsync stopped the stream (it refuses publishes until the broker restarts).
    #[serde(default)]
    pub failed: bool,
}

/// A stream as the broker describes it: its configuration (JSON, as in PROTOCOL.md) and state.
#[derive(Clone, Debug, Deserialize)]
#[non_exhaustive]
pub struct StreamInfo {
    /// The configuration, as the broker holds it.
    pub config: serde_json::Value,
    /// Counts and sequences.
    pub state: StreamState,
}

impl StreamInfo {
    /// The stream's name.
    pub fn name(&self) -> &str {
        self.config["name"].as_str().unwrap_or_default()
    }
}

/// Admin operations on one stream ([`Client::stream`]).
#[derive(Clone, Debug)]
pub struct StreamAdmin {
    client: Client,
    name: String,
}

async fn admin<T: serde::de::DeserializeOwned>(
    c: &Client,
    subject: &str,
    body: Option<serde_json::Value>,
) -> Result<T> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = c.request(subject, body).await?;
    serde_json::from_slice(&r)
        .map_err(|e| Error::new(Status::INTERNAL, format!("answer to {subject}: {e}")))
}

impl StreamAdmin {
    /// Creates the stream (the same configuration again is accepted; another is
    /// ALREADY_EXISTS).
    pub async fn create(&self, cfg: StreamConfig) -> Result<StreamInfo> {
        let s = format!("$MITTO.STREAM.CREATE.{}", self.name);
        admin(&self.client, &s, Some(cfg.body())).await
    }
    /// Changes its configuration (running consumers are ended: their subscribers subscribe
    /// again).
    pub async fn update(&self, cfg: StreamConfig) -> Result<StreamInfo> {
        let s = format!("$MITTO.STREAM.UPDATE.{}", self.name);
        admin(&self.client, &s, Some(cfg.body())).await
    }
    /// Its configuration and state.
    pub async fn info(&self) -> Result<StreamInfo> {
        admin(
            &self.client,
            &format!("$MITTO.STREAM.INFO.{}", self.name),
            None,
        )
        .await
    }
    /// Deletes it, its messages and its consumers.
    pub async fn delete(&self) -> Result<()> {
        let s = format!("$MITTO.STREAM.DELETE.{}", self.name);
        admin::<serde_json::Value>(&self.client, &s, None)
            .await
            .map(drop)
    }
    /// Removes its messages (those below `before` only, if given); returns how many went.
    pub async fn purge(&self, before: Option<u64>) -> Result<u64> {
        let s = format!("$MITTO.STREAM.PURGE.{}", self.name);
        let body = before.map(|b| serde_json::json!({ "before": b }));
        let v: serde_json::Value = admin(&self.client, &s, body).await?;
        Ok(v["purged"].as_u64().unwrap_or(0))
    }
}

/// Where a new consumer starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliverFrom {
    /// The oldest message kept (default).
    #[default]
    All,
    /// The newest message when the consumer is created.
    Last,
    /// Only messages stored after the consumer is created.
    New,
    /// This sequence (or the next one kept).
    Seq(u64),
    /// The first message stored at or after this time.
    Time(SystemTime),
}

/// A durable consumer's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// Where it starts when created.
    pub deliver: DeliverFrom,
    /// Only subjects matching this filter.
    pub filter: Option<String>,
    /// How long a delivery waits for its ACK before it is sent again.
    pub ack_wait: Duration,
    /// Deliveries of one message before it goes to `dead_letter` and is given up.
    pub max_deliver: Option<u32>,
    /// Where a message given up is published.
    pub dead_letter: Option<String>,
    /// Deliveries awaiting an ACK at most (the broker caps it).
    pub max_ack_pending: Option<u32>,
    /// Replay stored messages with the gaps between their timestamps instead of at once.
    pub original_pace: bool,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            deliver: DeliverFrom::All,
            filter: None,
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            dead_letter: None,
            max_ack_pending: None,
            original_pace: false,
        }
    }
}

impl ConsumerConfig {
    /// From the first message, ACKs within 30 s, no delivery limit.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets where it starts.
    pub fn deliver(mut self, d: DeliverFrom) -> Self {
        self.deliver = d;
        self
    }
    /// Delivers only subjects matching `filter`.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.filter = Some(filter.into());
        self
    }
    /// Sets the ACK wait.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }
    /// After `n` deliveries a message goes to `subject` and is given up.
    pub fn max_deliver(mut self, n: u32, dead_letter: impl Into<String>) -> Self {
        self.max_deliver = Some(n);
        self.dead_letter = Some(dead_letter.into());
        self
    }
    /// Sets the most deliveries awaiting an ACK.
    pub fn max_ack_pending(mut self, n: u32) -> Self {
        self.max_ack_pending = Some(n);
        self
    }
    /// Replays at the original pace.
    pub fn original_pace(mut self) -> Self {
        self.original_pace = true;
        self
    }

    fn body(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "ack_wait": ms(self.ack_wait),
            "replay": if self.original_pace { "original" } else { "instant" },
        });
        match self.deliver {
            DeliverFrom::All => v["deliver"] = "all".into(),
            DeliverFrom::Last => v["deliver"] = "last".into(),
            DeliverFrom::New => v["deliver"] = "new".into(),
            DeliverFrom::Seq(n) => {
                v["deliver"] = "seq".into();
                v["start_seq"] = n.into();
            }
            DeliverFrom::Time(t) => {
                v["deliver"] = "time".into();
                v["start_time"] = rfc3339(t).into();
            }
        }
        if let Some(f) = &self.filter {
            v["filter"] = f.clone().into();
        }
        if let Some(n) = self.max_deliver {
            v["max_deliver"] = n.into();
        }
        if let Some(d) = &self.dead_letter {
            v["dead_letter"] = d.clone().into();
        }
        if let Some(n) = self.max_ack_pending {
            v["max_ack_pending"] = n.into();
        }
        v
    }
}

/// RFC 3339 in UTC with nanoseconds (civil date from days since the epoch, Howard Hinnant's
/// algorithm).
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// A subscription bound to a durable consumer ([`Client::consumer`]): each message comes
/// with ACK required; unacknowledged ones come again after the consumer's `ack_wait`, also
/// after a disconnect or a broker restart. Several of them on one consumer share it (each
/// message goes to one).
pub struct Consumer {
    sub: Subscription,
    client: Client,
    stream: String,
    name: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stream", &self.stream)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// The next message; `None` once the subscription ended (the broker says why in its log
    /// and with an ERROR, e.g. when the stream was deleted).
    pub async fn next(&mut self) -> Option<Message> {
        self.sub.next().await
    }
    /// Acknowledges a message: the consumer's position moves past it for good.
    pub fn ack(&self, m: &Message) {
        self.sub.ack(m)
    }
    /// Asks for a message again, after `delay` if given.
    pub fn nack(&self, m: &Message, delay: Option<Duration>) {
        self.sub.nack(m, delay)
    }
    /// The consumer's configuration and position (JSON, as in PROTOCOL.md).
    pub async fn info(&self) -> Result<serde_json::Value> {
        let s = format!("$MITTO.CONSUMER.INFO.{}.{}", self.stream, self.name);
        admin(&self.client, &s, None).await
    }
}

/// The stream metadata of a message a consumer delivered.
pub trait StreamMeta {
    /// Its sequence in the stream.
    fn stream_seq(&self) -> Option<u64>;
    /// The stream's name.
    fn stream_name(&self) -> Option<&str>;
    /// When the stream stored it (ns since the Unix epoch).
    fn stream_time_ns(&self) -> Option<u64>;
}

impl StreamMeta for Message {
    fn stream_seq(&self) -> Option<u64> {
        let v = self.headers().get_custom("mitto-stream-seq")?;
        std::str::from_utf8(v).ok()?.parse().ok()
    }
    fn stream_name(&self) -> Option<&str> {
        std::str::from_utf8(self.headers().get_custom("mitto-stream")?).ok()
    }
    fn stream_time_ns(&self) -> Option<u64> {
        let v = self.headers().get_custom("mitto-stream-time-ns")?;
        std::str::from_utf8(v).ok()?.parse().ok()
    }
}

impl Client {
    /// Admin operations on stream `name`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("mitto-doc-{}", std::process::id()));
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), data_dir: Some(dir.clone()),
    /// #     ..Default::default()
    /// # };
    /// # let broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// use mitto::streams::StreamConfig;
    /// use std::time::Duration;
    ///
    /// let orders = client.stream("orders");
    /// orders.create(StreamConfig::new(["orders.>"]).max_age(Duration::from_secs(86_400))).await?;
    /// assert_eq!(orders.info().await?.name(), "orders");
    /// # broker.shutdown().await;
    /// # let _ = std::fs::remove_dir_all(dir);
    /// # Ok(()) }
    /// ```
    pub fn stream(&self, name: &str) -> StreamAdmin {
        StreamAdmin {
            client: self.clone(),
            name: name.to_owned(),
        }
    }

    /// The streams this client's user may see.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("mitto-doc-{}", std::process::id()));
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), data_dir: Some(dir.clone()),
    /// #     ..Default::default()
    /// # };
    /// # let broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// # client.stream("orders").create(mitto::streams::StreamConfig::new(["orders.>"])).await?;
    /// for info in client.streams().await? {
    ///     println!("{}", info.name());
    /// }
    /// # broker.shutdown().await;
    /// # let _ = std::fs::remove_dir_all(dir);
    /// # Ok(()) }
    /// ```
    pub async fn streams(&self) -> Result<Vec<StreamInfo>> {
        #[derive(Deserialize)]
        struct List {
            streams: Vec<StreamInfo>,
        }
        let l: List = admin(self, "$MITTO.STREAM.LIST", None).await?;
        Ok(l.streams)
    }

    /// Creates consumer `name` of `stream` with `cfg` (or finds it with the same
    /// configuration) and subscribes to it. A consumer keeps its position across disconnects
    /// and broker restarts.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("mitto-doc-{}", std::process::id()));
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), data_dir: Some(dir.clone()),
    /// #     ..Default::default()
    /// # };
    /// # let broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// use mitto::streams::{ConsumerConfig, DeliverFrom, StreamConfig};
    ///
    /// client.stream("orders").create(StreamConfig::new(["orders.>"])).await?;
    /// client.publish_with("orders.created", "#1", mitto::PublishOptions::new().ack()).await?;
    /// let cfg = ConsumerConfig::new().deliver(DeliverFrom::All);
    /// let mut billing = client.consumer("orders", "billing", cfg).await?;
    /// let m = billing.next().await.unwrap();
    /// billing.ack(&m);
    /// # broker.shutdown().await;
    /// # let _ = std::fs::remove_dir_all(dir);
    /// # Ok(()) }
    /// ```
    pub async fn consumer(
        &self,
        stream: &str,
        name: &str,
        cfg: ConsumerConfig,
    ) -> Result<Consumer> {
        let s = format!("$MITTO.CONSUMER.CREATE.{stream}.{name}");
        admin::<serde_json::Value>(self, &s, Some(cfg.body())).await?;
        self.bind(stream, name).await
    }

    /// Subscribes to consumer `name` of `stream`, which must exist (created by
    /// [`Client::consumer`] or `mitto stream`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let dir = std::env::temp_dir().join(format!("mitto-doc-{}", std::process::id()));
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), data_dir: Some(dir.clone()),
    /// #     ..Default::default()
    /// # };
    /// # let broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// use mitto::streams::{ConsumerConfig, StreamConfig};
    ///
    /// client.stream("orders").create(StreamConfig::new(["orders.>"])).await?;
    /// drop(client.consumer("orders", "billing", ConsumerConfig::new()).await?);
    /// // Later, or in another process: the consumer goes on where it was.
    /// let mut billing = client.bind("orders", "billing").await?;
    /// # let _ = &mut billing;
    /// # broker.shutdown().await;
    /// # let _ = std::fs::remove_dir_all(dir);
    /// # Ok(()) }
    /// ```
    pub async fn bind(&self, stream: &str, name: &str) -> Result<Consumer> {
        let opts = SubscribeOptions {
            delivery: Delivery::AtLeastOnce,
            ..SubscribeOptions::default()
        };
        let sub = self
            .subscribe_with(&format!("$MITTO.CONSUMER.DELIVER.{stream}.{name}"), opts)
            .await?;
        Ok(Consumer {
            sub,
            client: self.clone(),
            stream: stream.to_owned(),
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_780_000_000, 5);
        assert_eq!(rfc3339(t), "2026-05-28T20:26:40.000000005Z");
    }

    #[test]
    fn bodies_name_only_what_is_set() {
        let b = StreamConfig::new(["a.>"]).max_msgs(3).body();
        assert_eq!(b["max_msgs"], 3);
        assert!(b.get("max_bytes").is_none());
        let c = ConsumerConfig::new()
            .deliver(DeliverFrom::Seq(9))
            .max_deliver(2, "dead")
            .body();
        assert_eq!(
            (c["deliver"].as_str(), c["start_seq"].as_u64()),
            (Some("seq"), Some(9))
        );
        assert_eq!(c["dead_letter"], "dead");
    }
}
