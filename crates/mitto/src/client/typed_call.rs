//! Unary calls over serde values: the request encoded with the client's codec, the answer
//! decoded with the codec its `content-type` names.

use super::call_parts::CallOptions;
use super::typed::codec_headers;
use super::Client;
use crate::codec::Codec;
use crate::error::Result;
use mitto_proto::WellKnown;
use serde::de::DeserializeOwned;
use serde::Serialize;

impl Client {
    /// Calls `method` with a serde value encoded with the client's codec (see
    /// [`crate::ClientOptions::codec`]), and decodes the answer. The request is taken by value,
    /// so the future borrows only the client and the method name: it can be kept, raced in
    /// `select!`, or spawned (with an owned client). For a deadline or headers of this call
    /// only, see [`Client::call_typed_with`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{Client, ClientOptions, Server};
    ///
    /// let server = Server::new()
    ///     .route_typed("calc.add", |(a, b): (i64, i64)| async move { Ok(a + b) })
    ///     .bind("mem://call-typed-doc")
    ///     .await?;
    /// let client = Client::connect(server.local_url(), ClientOptions::new()).await?;
    /// let sum: i64 = client.call_typed("calc.add", (2, 3)).await?;
    /// assert_eq!(sum, 5);
    /// client.close().await;
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn call_typed<Req, Resp>(&self, method: &str, req: Req) -> Result<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned,
    {
        self.call_typed_with(method, req, CallOptions::new()).await
    }

    /// [`Client::call_typed`] with options of this call: its deadline
    /// ([`CallOptions::timeout`]), headers, idempotence, urgency. The request is encoded with
    /// the codec the headers' `content-type` names when they name one (JSON or MessagePack),
    /// else with the client's codec, whose `content-type` is then added.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mitto::Result<()> {
    /// use mitto::{CallOptions, Client, ClientOptions, Headers, Server, Status, TypedRequest};
    /// use std::time::Duration;
    ///
    /// let server = Server::new()
    ///     .route_typed_request("greet", |req: TypedRequest<String>| async move {
    ///         let tenant = req.headers().get_custom("tenant").unwrap_or_default().to_vec();
    ///         Ok(format!("{}: hello {}", String::from_utf8_lossy(&tenant), req.into_inner()))
    ///     })
    ///     .route_typed("slow", |_: ()| async move {
    ///         tokio::time::sleep(Duration::from_secs(10)).await;
    ///         Ok(())
    ///     })
    ///     .bind("mem://call-typed-with-doc")
    ///     .await?;
    /// let client = Client::connect(server.local_url(), ClientOptions::new()).await?;
    /// let headers = Headers::builder().insert_custom("tenant", "acme")?.build();
    /// let options = CallOptions::new().headers(headers).timeout(Duration::from_secs(2));
    /// // The future owns its request: it can be stored and raced.
    /// let call = client.call_typed_with::<_, String>("greet", "ada".to_string(), options);
    /// let greeting = tokio::select! {
    ///     r = call => r?,
    ///     _ = tokio::time::sleep(Duration::from_secs(5)) => unreachable!(),
    /// };
    /// assert_eq!(greeting, "acme: hello ada");
    /// // A deadline for this call only.
    /// let short = CallOptions::new().timeout(Duration::from_millis(50));
    /// let e = client.call_typed_with::<_, ()>("slow", (), short).await.unwrap_err();
    /// assert_eq!(e.status(), Status::TIMEOUT);
    /// client.close().await;
    /// server.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub async fn call_typed_with<Req, Resp>(
        &self,
        method: &str,
        req: Req,
        mut options: CallOptions,
    ) -> Result<Resp>
    where
        Req: Serialize + Send + 'static,
        Resp: DeserializeOwned,
    {
        let codec = match options.headers.as_ref().and_then(|h| h.content_type()) {
            Some(ct) => Codec::from_content_type(Some(ct))?,
            None => {
                let codec = self.opts().codec;
                options.headers = Some(match options.headers.take() {
                    None => codec_headers(codec),
                    Some(h) => h
                        .to_builder()
                        .insert(WellKnown::ContentType, codec.content_type())?
                        .build(),
                });
                codec
            }
        };
        let payload = codec.encode(&req)?;
        let reply = self.call_with(method, payload, options).await?;
        let codec = Codec::from_content_type(reply.headers.content_type()).unwrap_or(codec);
        codec.decode(&reply.payload)
    }
}
