//! Typed messages: publish a Rust value, subscribe for values of one type.
//!
//! One rule on every transport, as on NATS: a subject carries whatever is published on it, and
//! a publish never fails because of what a subscriber expects. Each typed subscriber reads each
//! message as its own type, and a message that does not decode as that type is an `Err` item
//! of its subscription, which goes on. With a broker in the same process (`inproc://`), a
//! value reaches a subscriber of its very type as the publisher's own `Arc<T>`, never
//! serialized; a subscriber of another type, or one over a socket, gets it encoded with the
//! publisher's codec (once, for all of them) and decodes it, exactly as over the network.

use crate::client::Client;
use crate::client::{Message, PublishOptions, Subscription};
use crate::codec::Codec;
use crate::error::Result;
use crate::local::Typed;
use bytes::Bytes;
use futures_core::Stream;
use mitto_proto::local::Attachment;
use mitto_proto::{Frame, Headers, WellKnown};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// The `content-type` header of `codec`, built once and kept for the process (one per codec),
/// so that the copy every typed message carries costs no reference count: a publisher and its
/// subscribers on different cores would otherwise contend on it for every message.
pub(super) fn codec_headers(codec: Codec) -> Headers {
    static H: [OnceLock<Headers>; 2] = [OnceLock::new(), OnceLock::new()];
    let i = match codec {
        Codec::Json => 0,
        Codec::MsgPack => 1,
    };
    H[i].get_or_init(|| {
        crate::client::kept_for_the_process(
            Headers::builder()
                .insert(WellKnown::ContentType, codec.content_type())
                .map(|b| b.build())
                .unwrap_or_default(),
        )
    })
    .clone()
}

impl Client {
    /// Publishes a Rust value to `subject`, encoded with the client's codec (see
    /// [`crate::ClientOptions::codec`]) for whoever needs bytes.
    ///
    /// The publish never fails because of what subscribers expect: a typed subscriber of
    /// another type gets an `Err` item if the value does not decode as its type (see
    /// [`TypedSubscription`]), on every transport. Subscribers of `T` in this process receive
    /// the value itself, never serialized.
    ///
    /// ```no_run
    /// # async fn demo(client: mitto::Client) -> mitto::Result<()> {
    /// #[derive(serde::Serialize)]
    /// struct Created {
    ///     id: u64,
    /// }
    /// // By value: the future borrows nothing but the client and the subject.
    /// let publish = client.publish_typed("orders.eu.created", Created { id: 7 });
    /// publish.await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_typed<T: Serialize + Send + Sync + 'static>(
        &self,
        subject: &str,
        value: T,
    ) -> Result<()> {
        self.publish_shared(subject, Arc::new(value)).await
    }

    /// [`Client::publish_typed`] with a value already shared.
    pub async fn publish_shared<T: Serialize + Send + Sync + 'static>(
        &self,
        subject: &str,
        value: Arc<T>,
    ) -> Result<()> {
        let codec = self.opts().codec;
        if self.inner.first_port().is_none() && self.local_port_only().is_none() {
            let payload = codec.encode(&*value)?;
            let opts = PublishOptions::new().headers(codec_headers(codec));
            return self.publish_with(subject, payload, opts).await;
        }
        let mut f = Frame::publish(self.subject_of(subject)?, Bytes::new())
            .with_headers(codec_headers(codec));
        f.value = Some(Attachment::new(Typed::new(value, codec)));
        let timeout = self.opts().timeout;
        self.send_frame_publish(f, false, timeout).await
    }

    /// Subscribes to values of type `T` on `filter` (wildcards included: `orders.>` may carry
    /// several types). Each message is read as a `T`: the publisher's own value when it was
    /// published as a `T` in this process, else the payload decoded with the codec its
    /// `content-type` names (a value of another Rust type published in this process is
    /// encoded first, as it would be for a socket). A message that does not decode as a `T`
    /// is an `Err` item naming `T`, and the subscription goes on; see [`TypedSubscription`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct OrderPlaced {
    ///     id: u64,
    /// }
    /// let mut placed = client.subscribe_typed::<OrderPlaced>("orders.placed").await?;
    /// client.publish_typed("orders.placed", OrderPlaced { id: 7 }).await?;
    /// let event = placed.next().await.unwrap()?; // an error when a message holds no OrderPlaced
    /// assert_eq!(event.id, 7);
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_typed<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        filter: &str,
    ) -> Result<TypedSubscription<T>> {
        let inner = self.subscribe(filter).await?;
        Ok(TypedSubscription {
            inner,
            codec: self.opts().codec,
            _t: PhantomData,
        })
    }
}

/// One typed message: the value (shared) and the message it came in.
pub struct Event<T> {
    value: Arc<T>,
    message: Message,
}

impl<T> Event<T> {
    /// The value.
    pub fn value(&self) -> &Arc<T> {
        &self.value
    }
    /// Takes the value.
    pub fn into_value(self) -> Arc<T> {
        self.value
    }
    /// The message (subject, headers, reply-to).
    pub fn message(&self) -> &Message {
        &self.message
    }
}

impl<T> Deref for Event<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Event<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("subject", &self.message.subject())
            .field("value", &self.value)
            .finish()
    }
}

/// A subscription to values of one type: a [`Stream`] of `Result<Event<T>>`.
///
/// The same on every transport: an item is `Ok` when the message decodes as a `T` (or is a `T`
/// published in this process, handed over without serializing), and an `Err` (BAD_REQUEST,
/// naming the subject and `T`) when it does not; the subscription goes on after it. A value of
/// another Rust type published in this process is encoded with the publisher's codec and
/// decoded as a `T`, as it would be over a socket, so it is `Ok` wherever the encodings agree.
/// Messages without a `content-type` are decoded with the client's codec.
///
/// [`Stream`]: https://docs.rs/futures-core/0.3/futures_core/stream/trait.Stream.html
pub struct TypedSubscription<T> {
    inner: Subscription,
    codec: Codec,
    _t: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for TypedSubscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedSubscription")
            .field("type", &std::any::type_name::<T>())
            .field("sid", &self.inner.sid())
            .finish()
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> TypedSubscription<T> {
    /// The next value; `None` once unsubscribed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let mut prices = client.subscribe_typed::<f64>("prices.eur").await?;
    /// client.publish_typed("prices.eur", 1.5_f64).await?;
    /// client.publish("prices.eur", "not JSON").await?; // from elsewhere, say
    /// assert_eq!(*prices.next().await.unwrap()?, 1.5);
    /// assert!(prices.next().await.unwrap().is_err()); // and the subscription goes on
    /// # Ok(()) }
    /// ```
    pub async fn next(&mut self) -> Option<Result<Event<T>>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The untyped subscription underneath (ack, nack, unsubscribe).
    pub fn subscription(&mut self) -> &mut Subscription {
        &mut self.inner
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> Stream for TypedSubscription<T> {
    type Item = Result<Event<T>>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let codec = self.codec;
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(m)) => Poll::Ready(Some(
                m.decode::<T>(codec)
                    .map(|value| Event { value, message: m }),
            )),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
