//! Routes: handlers registered by method name and call shape.

use super::{Request, RequestStream, Response, Server, StreamSender};
use crate::codec::{decode_proto, encode_proto, PROTOBUF};
use crate::error::{Error, Result};
use futures_util::future::BoxFuture;
use mitto_proto::{Headers, Status, Subject, WellKnown};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

pub(super) type Handler =
    Arc<dyn Fn(Request) -> BoxFuture<'static, Result<Response>> + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Unary,
    ServerStream,
    ClientStream,
    Bidi,
}

impl Shape {
    pub(super) fn client_streams(self) -> bool {
        matches!(self, Shape::ClientStream | Shape::Bidi)
    }
    pub(super) fn server_streams(self) -> bool {
        matches!(self, Shape::ServerStream | Shape::Bidi)
    }
}

#[derive(Clone)]
pub(super) struct Route {
    pub(super) shape: Shape,
    pub(super) handler: Handler,
    /// The method name, interned when it is a valid subject (a request's copy of it then
    /// costs no reference count).
    pub(super) name: Option<Subject>,
}

pub(super) fn boxed<F, Fut, R>(f: F) -> Handler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R>> + Send + 'static,
    R: Into<Response>,
{
    Arc::new(move |req| {
        let fut = f(req);
        Box::pin(async move { fut.await.map(Into::into) })
    })
}

pub(super) fn missing(what: &str) -> Error {
    Error::new(Status::INTERNAL, format!("the call has no {what}"))
}

impl Server {
    pub(super) fn add(mut self, method: &str, shape: Shape, handler: Handler) -> Server {
        // A filter's calls are named by their own subjects.
        let name = Subject::interned(method)
            .ok()
            .filter(|s| !s.has_wildcards());
        self.routes.insert(
            method.as_bytes().into(),
            Route {
                shape,
                handler,
                name,
            },
        );
        self
    }

    /// A unary handler over raw requests: it sees headers, payload, deadline and peer, and
    /// answers anything that converts into a [`Response`] (`Bytes`, `Vec<u8>`, `String`, ...).
    ///
    /// A method named with wildcards (`"orders.*"`, `"orders.>"`) takes every call its filter
    /// matches that no route names exactly (the first such filter in byte order when several
    /// match); [`Request::method`] is then the call's own subject. Attached to a broker, it
    /// registers the filter.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Error, Request, Server};
    ///
    /// let server = Server::new().route("greet", |req: Request| async move {
    ///     let name = std::str::from_utf8(req.payload()).map_err(|_| Error::execution("not UTF-8"))?;
    ///     Ok(format!("hello, {name}"))
    /// });
    /// # let server = server.bind("mem://app").await?;
    /// # let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// # assert_eq!(client.call("greet", "ann").await?, "hello, ann");
    /// # Ok(()) }
    /// ```
    pub fn route<F, Fut, R>(self, method: &str, f: F) -> Server
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Response>,
    {
        self.add(method, Shape::Unary, boxed(f))
    }

    /// A unary handler over serde values, decoded and encoded with the codec the caller's
    /// `content-type` names (JSON when absent, MessagePack). The handler sees the value only;
    /// [`Server::route_typed_request`] gives it the call's headers, deadline and caller too.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::Server;
    ///
    /// let server =
    ///     Server::new().route_typed("calc.add", |(a, b): (i64, i64)| async move { Ok(a + b) });
    /// # let server = server.bind("mem://app").await?;
    /// # let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// # assert_eq!(client.call_typed::<_, i64>("calc.add", (2, 3)).await?, 5);
    /// # Ok(()) }
    /// ```
    pub fn route_typed<Req, Resp, F, Fut>(self, method: &str, f: F) -> Server
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            Shape::Unary,
            boxed(move |req: Request| {
                let f = f.clone();
                async move {
                    let codec = req.codec()?;
                    let value: Req = codec.decode(&req.payload)?;
                    Response::encode(codec, &f(value).await?)
                }
            }),
        )
    }

    /// A unary handler over Protobuf messages (prost).
    ///
    /// ```
    /// #[derive(Clone, PartialEq, prost::Message)]
    /// struct Num {
    ///     #[prost(int64, tag = "1")]
    ///     n: i64,
    /// }
    ///
    /// let server = mitto::Server::new()
    ///     .route_proto("num.double", |x: Num| async move { Ok(Num { n: x.n * 2 }) });
    /// ```
    pub fn route_proto<Req, Resp, F, Fut>(self, method: &str, f: F) -> Server
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            Shape::Unary,
            boxed(move |req: Request| {
                let f = f.clone();
                async move {
                    let value: Req = decode_proto(&req.payload)?;
                    let out = f(value).await?;
                    let headers = Headers::builder().insert(WellKnown::ContentType, PROTOBUF)?;
                    Ok(Response {
                        headers: headers.build(),
                        payload: encode_proto(&out),
                    })
                }
            }),
        )
    }

    /// A server-streaming handler: one request in, items out through the [`StreamSender`]; the
    /// call ends (RESPONSE) when the handler returns.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Request, Server, StreamSender};
    ///
    /// let server = Server::new().route_server_stream(
    ///     "count",
    ///     |_req: Request, out: StreamSender| async move {
    ///         for i in 1..=3 {
    ///             out.send(i.to_string()).await?; // waits while the caller grants no credit
    ///         }
    ///         Ok(())
    ///     },
    /// );
    /// # let server = server.bind("mem://app").await?;
    /// # let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// # let mut items = client.server_stream("count", "").await?;
    /// # assert_eq!(items.next().await.unwrap()?, "1");
    /// # Ok(()) }
    /// ```
    pub fn route_server_stream<F, Fut>(self, method: &str, f: F) -> Server
    where
        F: Fn(Request, StreamSender) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            Shape::ServerStream,
            boxed(move |mut req: Request| {
                let f = f.clone();
                async move {
                    let sink = req.sink.take().ok_or_else(|| missing("response stream"))?;
                    f(req, sink).await
                }
            }),
        )
    }

    /// A client-streaming handler: items in through the [`RequestStream`], one response out.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Request, RequestStream, Server};
    ///
    /// let server = Server::new().route_client_stream(
    ///     "size",
    ///     |_req: Request, mut items: RequestStream| async move {
    ///         let mut total = 0;
    ///         while let Some(item) = items.next().await {
    ///             total += item.len();
    ///         }
    ///         Ok(total.to_string())
    ///     },
    /// );
    /// # let server = server.bind("mem://app").await?;
    /// # let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// # let (mut sink, reply) = client.client_stream("size").await?;
    /// # sink.send("abc").await?;
    /// # sink.finish().await?;
    /// # assert_eq!(reply.await?.payload, "3");
    /// # Ok(()) }
    /// ```
    pub fn route_client_stream<F, Fut, R>(self, method: &str, f: F) -> Server
    where
        F: Fn(Request, RequestStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Response>,
    {
        let f = Arc::new(f);
        self.add(
            method,
            Shape::ClientStream,
            boxed(move |mut req: Request| {
                let f = f.clone();
                async move {
                    let items = req.items.take().ok_or_else(|| missing("request stream"))?;
                    f(req, items).await
                }
            }),
        )
    }

    /// A bidirectional handler: items in and items out, concurrently.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Request, RequestStream, Server, StreamSender};
    ///
    /// let server = Server::new().route_bidi(
    ///     "upper",
    ///     |_req: Request, mut items: RequestStream, out: StreamSender| async move {
    ///         while let Some(item) = items.next().await {
    ///             out.send(item.to_ascii_uppercase()).await?;
    ///         }
    ///         Ok(())
    ///     },
    /// );
    /// # let server = server.bind("mem://app").await?;
    /// # let client = mitto::Client::connect("mem://app", mitto::ClientOptions::new()).await?;
    /// # let (mut sink, mut replies) = client.bidi("upper").await?;
    /// # sink.send("a").await?;
    /// # assert_eq!(replies.next().await.unwrap()?, "A");
    /// # Ok(()) }
    /// ```
    pub fn route_bidi<F, Fut>(self, method: &str, f: F) -> Server
    where
        F: Fn(Request, RequestStream, StreamSender) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let f = Arc::new(f);
        self.add(
            method,
            Shape::Bidi,
            boxed(move |mut req: Request| {
                let f = f.clone();
                async move {
                    let items = req.items.take().ok_or_else(|| missing("request stream"))?;
                    let sink = req.sink.take().ok_or_else(|| missing("response stream"))?;
                    f(req, items, sink).await
                }
            }),
        )
    }
}
