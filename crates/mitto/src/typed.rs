//! Typed messages: publish a Rust value, subscribe for values of one type.
//!
//! With a broker in the same process (`inproc://`), a value published typed reaches local
//! subscribers as the publisher's own `Arc<T>`: never serialized. It is encoded with the
//! client's codec only if a subscriber over a socket needs it, once for all of them. Over a
//! socket the same calls encode and decode. A subject carries one type: subscribing to, or
//! publishing on, a subject bound to another type fails with an error naming both types.

use crate::client::Client;
use crate::codec::Codec;
use crate::error::Result;
use crate::local::{LocalPort, Typed};
use crate::pubsub::{Message, PublishOptions, Subscription};
use bytes::Bytes;
use futures_core::Stream;
use mitto_proto::local::Attachment;
use mitto_proto::{Frame, Headers, WellKnown};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::TypeId;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// The `content-type` header of `codec`, built once and kept for the process (one per codec),
/// so that the copy every typed message carries costs no reference count: a publisher and its
/// subscribers on different cores would otherwise contend on it for every message.
fn codec_headers(codec: Codec) -> Headers {
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
    /// Publishes a Rust value to `subject`. Subscribers in this process receive the value
    /// itself (see [`Client::subscribe_typed`]); others receive it encoded with the client's
    /// codec (see [`crate::ClientOptions::codec`]).
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
        let port = match self.inner.first_port() {
            Some((p, _)) => p.clone(),
            None => match self.local_port_only() {
                Some(p) => p,
                None => {
                    let payload = codec.encode(&*value)?;
                    let opts = PublishOptions::new().headers(codec_headers(codec));
                    return self.publish_with(subject, payload, opts).await;
                }
            },
        };
        self.bind_type::<T>(&port, subject)?;
        let mut f = Frame::publish(self.subject_of(subject)?, Bytes::new())
            .with_headers(codec_headers(codec));
        f.value = Some(Attachment::new(Typed::new(value, codec)));
        let timeout = self.opts().timeout;
        self.send_frame_publish(f, false, timeout).await
    }

    /// Subscribes to values of type `T` on `filter`: each item is the publisher's own value
    /// when it was published typed in this process, else the payload decoded with the codec
    /// its `content-type` names. With a broker in this process, a filter that can match a
    /// subject already carrying another type is refused at once.
    pub async fn subscribe_typed<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        filter: &str,
    ) -> Result<TypedSubscription<T>> {
        if let Some(port) = self.local_port_only() {
            self.bind_type::<T>(&port, filter)?;
        }
        let inner = self.subscribe(filter).await?;
        Ok(TypedSubscription {
            inner,
            codec: self.opts().codec,
            _t: PhantomData,
        })
    }

    fn bind_type<T: 'static>(&self, port: &Arc<dyn LocalPort>, filter: &str) -> Result<()> {
        thread_local! {
            /// The binding this thread made or checked last: client, type and filter (a
            /// publishing loop then takes no lock to learn it is already bound).
            static LAST: std::cell::RefCell<Option<(u64, TypeId, String)>> =
                const { std::cell::RefCell::new(None) };
        }
        let ty = TypeId::of::<T>();
        let client = self.inner.id;
        let seen = |l: &Option<(u64, TypeId, String)>| {
            l.as_ref()
                .is_some_and(|(c, t, f)| *c == client && *t == ty && f == filter)
        };
        if LAST.try_with(|l| l.try_borrow().is_ok_and(|l| seen(&l))) == Ok(true) {
            return Ok(());
        }
        self.bind_type_shared::<T>(port, filter)?;
        let _ = LAST.try_with(|l| {
            if let Ok(mut l) = l.try_borrow_mut() {
                match &mut *l {
                    Some((c, t, f)) => {
                        (*c, *t) = (client, ty);
                        f.clear();
                        f.push_str(filter);
                    }
                    None => *l = Some((client, ty, filter.to_owned())),
                }
            }
        });
        Ok(())
    }

    /// Declares `T` on `filter` to the broker once per client.
    fn bind_type_shared<T: 'static>(&self, port: &Arc<dyn LocalPort>, filter: &str) -> Result<()> {
        let ty = TypeId::of::<T>();
        let shared = &self.inner.shared;
        let known = |b: &std::collections::HashMap<TypeId, std::collections::HashSet<String>>| {
            b.get(&ty).is_some_and(|filters| filters.contains(filter))
        };
        if shared.bound_types.lock().is_ok_and(|b| known(&b)) {
            return Ok(());
        }
        port.bind_type(filter, ty, std::any::type_name::<T>())?;
        if let Ok(mut b) = shared.bound_types.lock() {
            b.entry(ty).or_default().insert(filter.to_owned());
        }
        Ok(())
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

/// A subscription to values of one type: a [`Stream`] of `Result<Event<T>>`. An item is an
/// error when a message does not carry a `T` (another type published in this process, or a
/// payload that does not decode); the subscription goes on.
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
