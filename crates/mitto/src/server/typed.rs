//! Typed handlers that see the call's metadata: [`TypedRequest`], the decoded value with the
//! method, headers, deadline and caller of its call.

use super::request::PeerInfo;
use super::router::boxed;
use super::router::Shape;
use super::{Request, Response, Server};
use crate::codec::Codec;
use mitto_proto::{Headers, MsgKind, Subject};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use tokio::time::Instant;

/// A decoded request with the metadata of its call, as a handler of
/// [`Server::route_typed_request`] sees it: the value, and the method, headers, deadline and
/// caller that [`Request`] gives raw handlers. An example is on
/// [`Server::route_typed_request`].
pub struct TypedRequest<T> {
    value: T,
    method: Subject,
    headers: Headers,
    kind: MsgKind,
    deadline: Option<Instant>,
    peer: Arc<PeerInfo>,
    codec: Codec,
}

impl<T> TypedRequest<T> {
    /// The value.
    pub fn get_ref(&self) -> &T {
        &self.value
    }
    /// The value, to change.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.value
    }
    /// Takes the value, leaving the metadata.
    pub fn into_inner(self) -> T {
        self.value
    }
    /// The method name (the REQUEST frame's subject).
    pub fn method(&self) -> &str {
        self.method.as_str()
    }
    /// The request headers (custom ones included).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// The message kind.
    pub fn kind(&self) -> MsgKind {
        self.kind
    }
    /// When the caller stops waiting, if it set a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    /// Who is calling: address, client name and id, authenticated user.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
    /// The codec the caller used (the answer is encoded with it too).
    pub fn codec(&self) -> Codec {
        self.codec
    }
}

impl<T: fmt::Debug> fmt::Debug for TypedRequest<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedRequest")
            .field("method", &self.method.as_str())
            .field("value", &self.value)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A unary handler over serde values that also sees the call's metadata: the handler gets
    /// a [`TypedRequest`] (value, headers, deadline, caller), as tonic's `Request<T>`. The value
    /// is decoded, and the answer encoded, with the codec the caller's `content-type` names;
    /// [`Server::route_typed`] is the same for handlers that need only the value.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{CallOptions, Client, ClientOptions, Headers, Server, TypedRequest};
    /// use std::time::Duration;
    ///
    /// let server = Server::new()
    ///     .route_typed_request("whoami", |req: TypedRequest<u32>| async move {
    ///         let left = req.deadline().map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
    ///         assert!(left.is_some_and(|l| l <= Duration::from_secs(3)));
    ///         let trace = req.headers().get_custom("trace").unwrap_or_default().to_vec();
    ///         let caller = req.peer().name.clone();
    ///         Ok(format!("{caller} #{} {}", req.into_inner(), String::from_utf8_lossy(&trace)))
    ///     })
    ///     .bind("mem://route-typed-request-doc")
    ///     .await?;
    /// let client = Client::connect(server.local_url(), ClientOptions::new().name("billing")).await?;
    /// let options = CallOptions::new()
    ///     .timeout(Duration::from_secs(3))
    ///     .headers(Headers::builder().insert_custom("trace", "t-1")?.build());
    /// let who: String = client.call_typed_with("whoami", 7u32, options).await?;
    /// assert_eq!(who, "billing #7 t-1");
    /// client.close().await;
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn route_typed_request<Req, Resp, F, Fut>(self, method: &str, f: F) -> Server
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(TypedRequest<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = crate::Result<Resp>> + Send + 'static,
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
                    let typed = TypedRequest {
                        value,
                        method: req.method,
                        headers: req.headers,
                        kind: req.kind,
                        deadline: req.deadline,
                        peer: req.peer,
                        codec,
                    };
                    Response::encode(codec, &f(typed).await?)
                }
            }),
        )
    }
}
