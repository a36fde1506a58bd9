//! tonic (gRPC over HTTP/2): a unary `Echo` service generated from `proto/echo.proto` by
//! `tonic-prost-build` (see `build.rs`), one `Channel` (one HTTP/2 connection), `bytes` fields
//! as `Bytes`.

use crate::runtime::ServerRuntime;
use anyhow::Context as _;
use bytes::Bytes;
use std::net::SocketAddr;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
mod pb {
    tonic::include_proto!("mittobench");
}

pub(crate) use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::EchoMsg;

struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(
        &self,
        request: tonic::Request<EchoMsg>,
    ) -> Result<tonic::Response<EchoMsg>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}

/// Starts the tonic echo server on `srt`; returns its address. HTTP/2 allows 1024 concurrent
/// streams so 256 calls in flight are never queued by the server.
pub(crate) async fn start(srt: &ServerRuntime) -> anyhow::Result<SocketAddr> {
    srt.run(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(
            Server::builder()
                .max_concurrent_streams(1024)
                .add_service(EchoServer::new(EchoService))
                .serve_with_incoming(incoming),
        );
        Ok(addr)
    })
    .await
}

/// A client on one channel (one HTTP/2 connection; its tasks run on the caller's runtime).
pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<EchoClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the tonic server")?;
    Ok(EchoClient::new(channel))
}

/// One call, checking the echoed length. tonic clients take `&mut self`; cloning one is how
/// tonic runs calls concurrently on the same channel.
pub(crate) async fn call(client: &EchoClient<Channel>, payload: Bytes) -> anyhow::Result<()> {
    let n = payload.len();
    let mut client = client.clone();
    let reply = client.echo(EchoMsg { payload }).await?.into_inner();
    anyhow::ensure!(reply.payload.len() == n, "tonic echo mismatch");
    Ok(())
}
