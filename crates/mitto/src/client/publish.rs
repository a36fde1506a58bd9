//! Publishing: the in-process port, the connection's buffer, the command queue.

use super::calls::MAX_BUFFERED_PAYLOAD;
use super::cmd::{CallCmd, Slot};
use super::frames::headers_too_large;
use super::message::PublishOptions;
use super::{Client, Cmd, Conn, State};
use crate::error::{Error, Result};
use crate::local::{LocalPort, Published};
use bytes::Bytes;
use mitto_proto::{Flags, Frame, Subject};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Queues a fire-and-forget PUBLISH for the connection, waiting (boxed) only when its queue
/// is full.
pub(super) fn queue_now(c: &Conn, f: Frame) -> Now<'static> {
    let lost = || Error::connection_lost("connection closed before the publish was sent");
    match c.cmds.try_send(Cmd::Send(f)) {
        Ok(()) => Now::Done(Ok(())),
        Err(mpsc::error::TrySendError::Full(cmd)) => {
            let cmds = c.cmds.clone();
            Now::Later(Box::pin(
                async move { cmds.send(cmd).await.map_err(|_| lost()) },
            ))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Now::Done(Err(lost())),
    }
}

/// Publishes `f` on connection `c` without waiting when it can: through an in-process
/// server's port, or into the connection's queue (a fire-and-forget publish of bytes within the
/// limit); otherwise gives the frame back.
// The frame comes back by value (128 bytes, moved, never cloned) for the caller's other path.
#[allow(clippy::result_large_err)]
pub(super) fn publish_on(
    c: &Conn,
    f: Frame,
    ack: bool,
    timeout: Duration,
) -> std::result::Result<Now<'static>, Frame> {
    let headers = f.headers.as_bytes().len();
    if headers > c.agreed.limits.max_headers as usize {
        let e = headers_too_large(headers, c.agreed.limits.max_headers);
        return Ok(Now::Done(Err(e)));
    }
    let max = c.agreed.limits.max_payload;
    if let Some(port) = &c.port {
        let mut f = f;
        if ack {
            // As on a socket: the flag tells the broker to answer once it has the message
            // (stored, where a stream captures it).
            f.flags.insert(Flags::ACK_REQUIRED);
        }
        return Ok(publish_local(port, max, f, timeout));
    }
    if !ack && !c.cmds.is_closed() && f.value.is_none() && f.payload.len() <= max as usize {
        // A small publish on a socket is written straight for the driver, in order with calls
        // (see `crate::client::calls`); a large one, or one that finds the buffer full, takes the queue.
        let buffered = f.payload.len() <= MAX_BUFFERED_PAYLOAD
            && c.calls.as_ref().is_some_and(|t| t.publish(f.as_ref()));
        if buffered {
            return Ok(Now::Done(Ok(())));
        }
        return Ok(queue_now(c, f));
    }
    Err(f)
}

/// Routes a publish through an in-process server's port, in the caller's task; waits (boxed)
/// only for subscribers that block publishers, up to `timeout`.
pub(super) fn publish_local(
    port: &Arc<dyn LocalPort>,
    max: u32,
    f: Frame,
    timeout: Duration,
) -> Now<'static> {
    if f.payload.len() > max as usize {
        return Now::Done(Err(too_large(f.payload.len(), max)));
    }
    match port.publish(f) {
        Ok(Published::Done) => Now::Done(Ok(())),
        Ok(Published::Blocked(wait)) => Now::Later(Box::pin(async move {
            match tokio::time::timeout(timeout, wait).await {
                Ok(r) => r,
                Err(_) => Err(Error::new(
                    mitto_proto::Status::BACKPRESSURE_REJECTION,
                    format!("the subscribers stayed full for {timeout:?}"),
                )
                .retryable()),
            }
        })),
        Err(e) => Now::Done(Err(e)),
    }
}

/// Which of a thread's last-subject caches [`cached_subject`] uses: the subject last published
/// to, or the method last called (kept apart so that a task doing both misses neither).
#[derive(Clone, Copy)]
pub(crate) enum SubjectUse {
    Publish,
    Method,
}

thread_local! {
    /// The last subject published to and the last method called on this thread.
    static LAST_SUBJECTS: std::cell::RefCell<[Option<Subject>; 2]> =
        const { std::cell::RefCell::new([None, None]) };
}

/// `subject` as a checked literal subject. The last one of each [`SubjectUse`] is kept per
/// thread, so that a caller repeating its subject (a publisher, a client calling one method)
/// neither validates nor allocates it again and takes no lock (a per-client cache behind a
/// mutex cost two locked instructions per message); subjects used often are interned (see
/// [`Subject::interned`]) so that copies of them cost no reference count.
pub(crate) fn cached_subject(slot: SubjectUse, subject: &str) -> Result<Subject> {
    let hit = LAST_SUBJECTS.try_with(|cache| {
        let mut cache = cache.try_borrow_mut().ok()?;
        let last = &mut cache[slot as usize];
        if let Some(s) = last {
            if s.as_bytes()[..] == *subject.as_bytes() {
                return Some(Ok(s.clone()));
            }
        }
        Some(
            Subject::interned(subject)
                .map_err(Error::from)
                .inspect(|s| *last = Some(s.clone())),
        )
    });
    match hit {
        Ok(Some(r)) => r,
        // The thread is ending, or the cache is in use further up this stack.
        _ => Ok(Subject::literal(subject)?),
    }
}

/// The future of [`Client::publish`]. Small (a few words, moved without `memcpy`), since a
/// publishing loop creates one per message.
#[must_use = "a publish happens when its future is first polled"]
pub struct Publish<'a> {
    client: &'a Client,
    state: PublishState<'a>,
}

pub(super) enum PublishState<'a> {
    /// Not polled yet.
    Start(&'a str, Bytes),
    /// Published; spending the task's budget before the result.
    Budget(Option<Result<()>>),
    /// Waiting for room.
    Later(Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>),
    /// Finished.
    Done,
}

impl std::future::Future for Publish<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                PublishState::Start(..) => {
                    let PublishState::Start(subject, payload) =
                        std::mem::replace(&mut this.state, PublishState::Done)
                    else {
                        continue;
                    };
                    let c = this.client;
                    let f = match c.subject_of(subject) {
                        Ok(s) => Frame::publish(s, payload),
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    this.state = match c.publish_now(f, false, c.opts().timeout) {
                        Now::Done(r) if c.spends_budget() => PublishState::Budget(Some(r)),
                        Now::Done(r) => return Poll::Ready(r),
                        Now::Later(wait) => PublishState::Later(wait),
                    };
                }
                PublishState::Budget(r) => {
                    let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
                    coop.made_progress();
                    let r = r.take().unwrap_or(Ok(()));
                    this.state = PublishState::Done;
                    return Poll::Ready(r);
                }
                PublishState::Later(wait) => {
                    let r = std::task::ready!(wait.as_mut().poll(cx));
                    this.state = PublishState::Done;
                    return Poll::Ready(r);
                }
                PublishState::Done => {
                    return Poll::Ready(Err(Error::new(
                        mitto_proto::Status::INTERNAL,
                        "publish polled after it finished",
                    )))
                }
            }
        }
    }
}

impl fmt::Debug for Publish<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish").finish_non_exhaustive()
    }
}

/// What [`Client::publish_now`] did.
pub(super) enum Now<'a> {
    Done(Result<()>),
    Later(Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>),
}

pub(super) fn too_large(len: usize, max: u32) -> Error {
    Error::new(
        mitto_proto::Status::PAYLOAD_TOO_LARGE,
        format!("payload of {len} bytes exceeds the negotiated limit of {max}"),
    )
}

impl Client {
    /// Publishes `payload` to the literal `subject` (fire and forget: completes once queued
    /// for the connection, or routed by a broker in this process; waits while the connection's
    /// queue is full, or while subscribers that block publishers are full).
    ///
    /// The publish happens when the returned future is first polled.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let mut sub = client.subscribe("orders.created").await?;
    /// client.publish("orders.created", "#1").await?;
    /// assert_eq!(sub.next().await.unwrap().payload(), "#1");
    /// # Ok(()) }
    /// ```
    pub fn publish<'a>(&'a self, subject: &'a str, payload: impl Into<Bytes>) -> Publish<'a> {
        Publish {
            client: self,
            state: PublishState::Start(subject, payload.into()),
        }
    }

    /// Publishes with options (headers, kind, URGENT, broker ACK).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// use mitto::{Headers, PublishOptions, WellKnown};
    ///
    /// let mut sub = client.subscribe("orders.created").await?;
    /// let headers = Headers::builder().insert(WellKnown::ContentType, "application/json")?.build();
    /// let opts = PublishOptions::new().headers(headers).ack(); // returns once the broker took it
    /// client.publish_with("orders.created", r#"{"id":1}"#, opts).await?;
    /// let m = sub.next().await.unwrap();
    /// assert_eq!(m.headers().content_type(), Some("application/json"));
    /// # Ok(()) }
    /// ```
    pub async fn publish_with(
        &self,
        subject: &str,
        payload: impl Into<Bytes>,
        opts: PublishOptions,
    ) -> Result<()> {
        let timeout = opts.timeout.unwrap_or(self.opts().timeout);
        let mut f = Frame::publish(self.subject_of(subject)?, payload).with_kind(opts.kind);
        if let Some(h) = opts.headers {
            f = f.with_headers(h);
        }
        if opts.urgent {
            f.flags.insert(Flags::URGENT);
        }
        let now = self.publish_now(f, opts.ack, timeout);
        self.finish_publish(now).await
    }

    /// Publishes without waiting when it can (in-process broker, or room in the connection's
    /// queue for a fire-and-forget publish); otherwise returns the (boxed) rest of the work,
    /// so that the common path builds no large future.
    fn publish_now(&self, f: Frame, ack: bool, timeout: Duration) -> Now<'_> {
        let f = match self.inner.first_conn() {
            Some(c) => match publish_on(c, f, ack, timeout) {
                Ok(now) => return now,
                Err(f) => f,
            },
            None => match &*self.inner.shared.state.borrow() {
                State::Up(c) => match publish_on(c, f, ack, timeout) {
                    Ok(now) => return now,
                    Err(f) => f,
                },
                _ => f,
            },
        };
        Now::Later(Box::pin(self.send_publish(f, ack, timeout)))
    }

    /// Whether this publish, which did not wait, spends the task's cooperative budget: one in
    /// eight on this thread does, so that a publishing loop still yields (after 128 x 8 = 1,024 publishes,
    /// about a quarter of a millisecond here) and the subscribers it wakes run, without paying
    /// a yield every 128 messages as a channel would (see BENCHMARKS.md, run G).
    fn spends_budget(&self) -> bool {
        thread_local! {
            static PUBLISHES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
        }
        PUBLISHES
            .try_with(|n| {
                let v = n.get();
                n.set(v.wrapping_add(1));
                v % 8 == 0
            })
            .unwrap_or(true)
    }

    /// `subject` as a checked literal subject, through the thread's last-published cache (see
    /// [`cached_subject`]).
    pub(crate) fn subject_of(&self, subject: &str) -> Result<Subject> {
        cached_subject(SubjectUse::Publish, subject)
    }

    /// The broker's direct entry points when it runs in this process.
    pub(crate) fn local_port_only(&self) -> Option<Arc<dyn LocalPort>> {
        self.local_port().map(|(p, _)| p)
    }

    /// Publishes a built PUBLISH frame (acknowledged by the broker if `ack`): at once when it
    /// can (see [`Client::publish_now`]), else waiting up to `timeout`.
    pub(crate) async fn send_frame_publish(
        &self,
        f: Frame,
        ack: bool,
        timeout: Duration,
    ) -> Result<()> {
        let now = self.publish_now(f, ack, timeout);
        self.finish_publish(now).await
    }

    /// The end of a publish: a publish that never waited still counts against the task's
    /// budget, so that a publishing loop lets the tasks it wakes (its subscribers) run; one that
    /// must wait waits. (Taking the started publish, not the frame, keeps publish futures small.)
    async fn finish_publish(&self, now: Now<'_>) -> Result<()> {
        match now {
            Now::Done(r) => {
                if self.spends_budget() {
                    tokio::task::coop::consume_budget().await;
                }
                r
            }
            Now::Later(wait) => wait.await,
        }
    }

    /// The broker's direct entry points when it runs in this process, with the payload limit.
    fn local_port(&self) -> Option<(Arc<dyn LocalPort>, u32)> {
        match &*self.inner.shared.state.borrow() {
            State::Up(c) => c
                .port
                .as_ref()
                .map(|p| (p.clone(), c.agreed.limits.max_payload)),
            _ => None,
        }
    }

    async fn send_publish(&self, mut f: Frame, ack: bool, timeout: Duration) -> Result<()> {
        // No clock read on the fire-and-forget path: the deadline matters only for an ACK.
        let conn = self.conn_fast(timeout).await?;
        if f.value.is_some() && conn.port.is_none() {
            // A value for a byte transport: encoded here, once.
            f.materialize()
                .map_err(|e| Error::new(mitto_proto::Status::INTERNAL, e))?;
            f.value = None;
        }
        // An in-process server, or a fire-and-forget publish: as on the first connection.
        let mut f = match publish_on(&conn, f, ack, timeout) {
            Ok(Now::Done(r)) => return r,
            Ok(Now::Later(wait)) => return wait.await,
            Err(f) => f,
        };
        let max = conn.agreed.limits.max_payload;
        if f.payload.len() > max as usize {
            return Err(too_large(f.payload.len(), max));
        }
        let closed = || Error::connection_lost("connection closed before the publish was sent");
        if !ack {
            // `publish_on` takes every fire-and-forget publish while the connection is up.
            return Err(closed());
        }
        let id = self.next_id();
        f.id = id;
        f.flags.insert(Flags::ACK_REQUIRED);
        let (tx, rx) = oneshot::channel();
        conn.cmds
            .send(Cmd::call(CallCmd {
                id,
                frame: f,
                slot: Slot::Unary(tx),
                deadline: None,
            }))
            .await
            .map_err(|_| closed())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r.map(|_| ()),
            Ok(Err(_)) => Err(Error::connection_lost("connection closed before the ACK")),
            Err(_) => {
                let _ = conn.ctl.send(Cmd::Cancel(id));
                Err(Error::new(
                    mitto_proto::Status::TIMEOUT,
                    "no ACK from the broker in time",
                )
                .retryable())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_future_moves_without_memcpy() {
        // A publishing loop makes one per message; above 128 bytes each move calls memcpy.
        assert!(std::mem::size_of::<Publish<'static>>() <= 128);
    }

    #[test]
    fn a_command_moves_without_memcpy() {
        // A publish that the connection's buffer does not take (a large one, a full buffer, a
        // link without one) goes to the driver as a command, copied into the queue and out:
        // above 128 bytes each of those moves calls memcpy.
        let size = std::mem::size_of::<Cmd>();
        assert!(size <= 128, "{size}");
    }
}
