//! Request/reply through a broker, flush and drain.

use super::message::{Message, PublishOptions};
use super::subscribe::current_ctl;
use super::{Client, Cmd};
use crate::error::{Error, Result};
use bytes::Bytes;
use mitto_proto::{Frame, Headers, WellKnown};

impl Client {
    /// Sends a request to `subject` through the broker and waits for the first reply; fails at
    /// once with NO_RESPONDERS when nobody listens. Dropping the future cancels it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let mut requests = client.subscribe("svc.upper").await?;
    /// let responder = client.clone();
    /// tokio::spawn(async move {
    ///     while let Some(req) = requests.next().await {
    ///         let _ = responder.respond(&req, req.payload().to_ascii_uppercase()).await;
    ///     }
    /// });
    /// assert_eq!(client.request("svc.upper", "hi").await?, "HI");
    /// # Ok(()) }
    /// ```
    pub async fn request(&self, subject: &str, payload: impl Into<Bytes>) -> Result<Bytes> {
        self.call(subject, payload).await
    }

    /// [`Client::request`] with per-call options (deadline, headers).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// # let mut requests = client.subscribe("svc.upper").await?;
    /// # let responder = client.clone();
    /// # tokio::spawn(async move {
    /// #     while let Some(req) = requests.next().await {
    /// #         let _ = responder.respond(&req, req.payload().to_ascii_uppercase()).await;
    /// #     }
    /// # });
    /// use mitto::CallOptions;
    /// use std::time::Duration;
    ///
    /// let opts = CallOptions::new().timeout(Duration::from_millis(500));
    /// let reply = client.request_with("svc.upper", "hi", opts).await?;
    /// assert_eq!(reply.payload, "HI");
    /// # Ok(()) }
    /// ```
    pub async fn request_with(
        &self,
        subject: &str,
        payload: impl Into<Bytes>,
        opts: crate::CallOptions,
    ) -> Result<crate::Reply> {
        self.call_with(subject, payload, opts).await
    }

    /// [`Client::request`], answered with the reply's headers as well as its payload (what a
    /// responder set with [`Client::respond_with`], or an RPC handler in its [`crate::Response`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Client, ClientOptions, Headers, Request, Response, Server};
    ///
    /// let server = Server::new()
    ///     .route("inventory.count", |_req: Request| async move {
    ///         Ok(Response::new("12").with_headers(Headers::new().with("warehouse", "north")))
    ///     })
    ///     .bind("mem://request-reply-doc")
    ///     .await?;
    /// let client = Client::connect(server.local_url(), ClientOptions::new()).await?;
    /// let reply = client.request_reply("inventory.count", "keyboard").await?;
    /// assert_eq!(reply.payload, "12");
    /// assert_eq!(reply.headers.get_str("warehouse"), Some("north"));
    /// client.close().await;
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn request_reply(
        &self,
        subject: &str,
        payload: impl Into<Bytes>,
    ) -> Result<crate::Reply> {
        self.call_with(subject, payload, crate::CallOptions::default())
            .await
    }

    /// Answers a request received on a subscription (publishes to its `reply-to`, with its
    /// `correlation-id`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let mut requests = client.subscribe("svc.time").await?;
    /// # let caller = client.clone();
    /// # let call = tokio::spawn(async move { caller.request("svc.time", "").await });
    /// while let Some(req) = requests.next().await {
    ///     client.respond(&req, "noon").await?;
    /// #   break;
    /// }
    /// # assert_eq!(call.await.unwrap()?, "noon");
    /// # Ok(()) }
    /// ```
    pub async fn respond(&self, request: &Message, payload: impl Into<Bytes>) -> Result<()> {
        self.respond_with(request, payload, Headers::new()).await
    }

    /// [`Client::respond`] with headers: the requester reads them from
    /// [`Client::request_reply`] (or [`Client::request_with`]). The request's `correlation-id`
    /// is added unless `headers` has one.
    ///
    /// ```no_run
    /// # async fn f(client: mitto::Client) -> mitto::Result<()> {
    /// use mitto::Headers;
    /// // Needs a broker: requests reach subscribers through one (see `mitto-broker`).
    /// let mut requests = client.subscribe("inventory.count").await?;
    /// while let Some(req) = requests.next().await {
    ///     let headers = Headers::new().with("warehouse", "north");
    ///     client.respond_with(&req, "12", headers).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn respond_with(
        &self,
        request: &Message,
        payload: impl Into<Bytes>,
        headers: Headers,
    ) -> Result<()> {
        let to = request.reply_to().ok_or_else(|| {
            Error::new(
                mitto_proto::Status::BAD_REQUEST,
                "the message has no reply-to header",
            )
        })?;
        let mut headers = headers;
        if let Some(c) = request.headers().get(WellKnown::CorrelationId) {
            if headers.get(WellKnown::CorrelationId).is_none() {
                headers = headers.try_with(WellKnown::CorrelationId, c)?;
            }
        }
        let mut opts = PublishOptions::default();
        if !headers.is_empty() {
            opts.headers = Some(headers);
        }
        self.publish_with(to, payload, opts).await
    }

    /// Waits until the server has processed everything sent before.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// client.publish("audit", "logged in").await?;
    /// client.flush().await?; // the broker has taken the publish
    /// # Ok(()) }
    /// ```
    pub async fn flush(&self) -> Result<()> {
        self.health().await.map(|_| ())
    }

    /// Unsubscribes everything, flushes, and closes.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// # let cfg = mitto_broker::BrokerConfig {
    /// #     listen: vec!["inproc://app".into()], monitor: String::new(), ..Default::default()
    /// # };
    /// # let _broker = mitto_broker::Broker::start(cfg).await?;
    /// let client = mitto::Client::connect("inproc://app", mitto::ClientOptions::new()).await?;
    /// let _sub = client.subscribe("orders.>").await?;
    /// client.publish("orders.created", "#1").await?;
    /// client.drain().await?;
    /// assert!(!client.is_connected());
    /// # Ok(()) }
    /// ```
    pub async fn drain(&self) -> Result<()> {
        let sids: Vec<u32> = match self.inner.shared.subs.lock() {
            Ok(mut s) => s.drain().map(|(k, _)| k).collect(),
            Err(_) => Vec::new(),
        };
        if let Some(ctl) = current_ctl(&self.inner.shared) {
            for sid in sids {
                let _ = ctl.send(Cmd::DropSub(sid));
                let _ = ctl.send(Cmd::Send(Frame::unsubscribe(sid, None)));
            }
        }
        let flushed = self.flush().await;
        self.close().await;
        flushed
    }
}
